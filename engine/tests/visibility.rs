//! Readers see a record only once it is acknowledged: under `always` once it is durable, under
//! `interval` and `never` once it is written to the data file. A consumer must never read a
//! record that a crash could take back (under `always`, not even power loss; under the others,
//! not a crash of the process), since its offset could then be handed out again.

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
        let not_yet = match durability {
            Durability::Always => "not durable yet, so not readable",
            _ => "not written yet, so not readable",
        };
        assert_eq!(log.readable_next(), 0, "{not_yet}");
        assert!(matches!(
            log.read(0).await,
            Err(Error::OffsetOutOfRange {
                offset: 0,
                next: 0,
                ..
            })
        ));
        task.await;
        // A reader parked on the offset is woken by the write or fdatasync that made it
        // readable.
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
fn never_shows_records_once_written() {
    check(Durability::Never);
}

#[test]
fn interval_shows_records_once_written() {
    check(Durability::Interval {
        interval_ms: 60_000,
    });
}

/// Once an owner takes the visible mark, appends (durable or not) stay hidden until the
/// owner raises it; raising it wakes parked readers; it never passes the log's end nor goes
/// down, except that a truncation lowers it with the log.
#[test]
fn an_owner_sets_what_readers_see() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    engine::run_local(tmp.path(), move || async move {
        let log = Log::open(&dir, LogConfig::default(), FileBudget::new(4))
            .await
            .expect("open");
        log.append(&[NewRecord::new(Bytes::from_static(b"a"))])
            .await
            .expect("append");
        log.take_visibility();
        assert_eq!(log.visibility(), engine::Visibility::Owner);
        assert_eq!(log.visible_end(), 1, "what was visible stays visible");
        for v in [b"b", b"c", b"d"] {
            log.append(&[NewRecord::new(Bytes::from_static(v))])
                .await
                .expect("append");
        }
        assert_eq!(log.policy_end(), 4, "durable under always");
        assert_eq!(
            log.visible_end(),
            1,
            "but not visible until the owner says so"
        );
        assert!(matches!(
            log.read(1).await,
            Err(Error::OffsetOutOfRange {
                offset: 1,
                next: 1,
                ..
            })
        ));
        let l2 = Rc::clone(&log);
        let waiter = glommio::spawn_local(async move {
            l2.wait_for(2).await;
            l2.visible_end()
        });
        futures_lite::future::yield_now().await;
        assert_eq!(log.set_visible(2), 2, "not far enough for the waiter");
        assert_eq!(&log.read(1).await.expect("read").value[..], b"b");
        assert_eq!(log.set_visible(99), 4, "never past the end");
        assert_eq!(waiter.await, 4, "the parked reader woke");
        assert_eq!(log.set_visible(3), 4, "never down");
        log.truncate_suffix(1).await.expect("truncate");
        assert_eq!(log.visible_end(), 2, "a truncation lowers it with the log");
        assert_eq!(log.read_range(0, 10, 1 << 20).await.expect("read").len(), 2);
    })
    .expect("executor");
}
