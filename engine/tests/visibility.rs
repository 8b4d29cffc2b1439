//! Under `always`, readers see a record only once it is durable: a consumer must never read a
//! record that a crash could take back. Under `never`, appended records are visible at once.

use bytes::Bytes;
use engine::{Durability, Error, FileBudget, Log, LogConfig, NewRecord};
use std::rc::Rc;

fn check(durability: Durability) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    engine::run_local(tmp.path(), move || async move {
        let config = LogConfig {
            durability,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, config, FileBudget::new(4))
            .await
            .expect("open");
        let l2 = Rc::clone(&log);
        let task = glommio::spawn_local(async move {
            l2.append(&[NewRecord::new(Bytes::from_static(b"x"))])
                .await
                .expect("append")
        });
        // Let the append encode its batch and start its write-out.
        futures_lite::future::yield_now().await;
        assert_eq!(log.next_offset(), 1, "the append has taken its offset");
        let waiter = {
            let l3 = Rc::clone(&log);
            glommio::spawn_local(async move { l3.wait_for(0).await })
        };
        match durability {
            Durability::Always => {
                assert_eq!(log.readable_next(), 0, "not durable yet, so not readable");
                assert!(matches!(
                    log.read(0).await,
                    Err(Error::OffsetOutOfRange {
                        offset: 0,
                        next: 0,
                        ..
                    })
                ));
            }
            _ => {
                assert_eq!(log.readable_next(), 1);
                assert_eq!(&log.read(0).await.expect("read").value[..], b"x");
            }
        }
        task.await;
        // A reader parked on the offset is woken by the fdatasync, not only by appends.
        waiter.await;
        assert_eq!(log.readable_next(), 1);
        assert_eq!(&log.read(0).await.expect("read").value[..], b"x");
    })
    .expect("executor");
}

#[test]
fn always_hides_records_until_they_are_durable() {
    check(Durability::Always);
}

#[test]
fn never_shows_records_at_once() {
    check(Durability::Never);
}
