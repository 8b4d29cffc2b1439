//! Removing a partition no longer held here (`EngineHandle::close_partition` with
//! `remove_data`): all or nothing as any later open sees it. The directory is renamed to its
//! tombstone `<partition>.removing` before the catalog changes, tombstones are swept at start
//! and before a partition is opened again, and a removal that fails before the catalog
//! changes leaves the partition held, to be closed again.

use crate::common;

use common::{records_of_100_bytes, start, t_partition_dir, topic_config};
use engine::Engine;
use futures_lite::future::block_on;
use std::path::{Path, PathBuf};

fn tomb(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("topics/t/{p}.removing"))
}

/// A topic `t` of 4 partitions holding 0 and 1, with records in 1.
fn topic_with_records(dir: &Path) -> Engine {
    let engine = start(dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("t", 4, topic_config(), &[0, 1])).expect("create");
    block_on(h.append("t", 1, records_of_100_bytes(5))).expect("append");
    engine
}

/// Fills `dir` as a partition's directory half removed: a segment and `raft.meta`-like
/// files, no `lost.meta`.
fn fill_like_a_partition(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("00000000000000000000.log"), vec![0x50; 8192]).expect("write");
    std::fs::write(dir.join("raft.meta"), b"META").expect("write");
}

/// Opens partition 1 again and checks that it is empty and not marked lost.
fn opens_empty_again(engine: &Engine, dir: &Path) {
    let h = engine.handle();
    block_on(h.open_partition("t", 1)).expect("open 1 again");
    assert_eq!(h.held_partitions("t").expect("held"), vec![0, 1]);
    let stats = block_on(h.stats("t", 1)).expect("stats");
    assert_eq!(
        (stats.lowest_offset, stats.next_offset),
        (0, 0),
        "placed again, partition 1 starts empty"
    );
    assert!(!t_partition_dir(dir, 1).join("lost.meta").exists());
    assert!(!t_partition_dir(dir, 1).join("raft.meta").exists());
    assert!(!tomb(dir, 1).exists());
}

#[test]
fn a_removed_partition_leaves_no_directory_and_no_tombstone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    let h = engine.handle();
    block_on(h.close_partition("t", 1, true)).expect("close 1, removing it");
    assert_eq!(h.held_partitions("t").expect("held"), vec![0]);
    assert!(!t_partition_dir(&dir, 1).exists() && !tomb(&dir, 1).exists());
    opens_empty_again(&engine, &dir);
    engine.shutdown();
}

#[test]
fn a_tombstone_left_by_a_crash_is_swept_at_start_and_the_partition_placed_again_opens_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    // The catalog changed (no longer held), and the crash came while the tombstone was
    // being deleted: part of it is left.
    block_on(engine.handle().close_partition("t", 1, false)).expect("close 1");
    engine.shutdown();
    std::fs::rename(t_partition_dir(&dir, 1), tomb(&dir, 1)).expect("rename");
    let _ = std::fs::remove_file(tomb(&dir, 1).join("00000000000000000000.index"));
    fill_like_a_partition(&tomb(&dir, 1));

    let engine = start(&dir);
    assert!(!tomb(&dir, 1).exists(), "the tombstone is swept at start");
    assert!(!t_partition_dir(&dir, 1).exists());
    assert_eq!(engine.handle().held_partitions("t").expect("held"), vec![0]);
    opens_empty_again(&engine, &dir);
    engine.shutdown();
}

#[test]
fn a_tombstone_is_swept_before_a_partition_of_its_topic_is_opened_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("t", 4, topic_config(), &[0])).expect("create");
    // Left by a removal whose last step failed while the engine ran.
    fill_like_a_partition(&tomb(&dir, 1));
    fill_like_a_partition(&tomb(&dir, 3));
    opens_empty_again(&engine, &dir);
    assert!(
        !tomb(&dir, 3).exists(),
        "every tombstone of the topic is swept"
    );
    engine.shutdown();
}

#[test]
fn a_directory_renamed_away_before_the_catalog_changed_is_never_opened_as_kept_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    engine.shutdown();
    // A crash between the rename and the catalog update: still held, its directory renamed.
    std::fs::rename(t_partition_dir(&dir, 1), tomb(&dir, 1)).expect("rename");

    let engine = start(&dir);
    let h = engine.handle();
    assert!(!tomb(&dir, 1).exists(), "the tombstone is swept at start");
    assert_eq!(h.held_partitions("t").expect("held"), vec![0, 1]);
    let stats = block_on(h.stats("t", 1)).expect("stats");
    assert_eq!(stats.next_offset, 0, "none of the records renamed away");
    let why = std::fs::read(t_partition_dir(&dir, 1).join("lost.meta")).expect("marked lost");
    assert!(String::from_utf8_lossy(&why).contains("was missing at start"));
    // Closed and removed as it was meant to be, it opens empty and unmarked when placed again.
    block_on(h.close_partition("t", 1, true)).expect("close 1, removing it");
    assert!(!t_partition_dir(&dir, 1).exists() && !tomb(&dir, 1).exists());
    opens_empty_again(&engine, &dir);
    engine.shutdown();
}

#[test]
fn a_failed_rename_leaves_the_partition_held_and_a_second_close_completes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    let h = engine.handle();
    // Not a directory: the rename onto it fails (ENOTDIR), and the engine leaves it alone.
    std::fs::write(tomb(&dir, 1), b"in the way").expect("write");
    let e = block_on(h.close_partition("t", 1, true)).expect_err("the rename fails");
    assert!(e.to_string().contains("renaming"), "{e}");
    assert_eq!(
        h.held_partitions("t").expect("held"),
        vec![0, 1],
        "still held: nothing was removed"
    );
    assert!(t_partition_dir(&dir, 1)
        .join("00000000000000000000.log")
        .exists());
    assert!(block_on(h.stats("t", 1)).is_err(), "its log is closed");
    engine.shutdown();

    // Held, it opens at start with its data.
    let engine = start(&dir);
    let h = engine.handle();
    assert_eq!(block_on(h.stats("t", 1)).expect("stats").next_offset, 5);
    assert!(!t_partition_dir(&dir, 1).join("lost.meta").exists());
    let e = block_on(h.close_partition("t", 1, true)).expect_err("the rename fails again");
    assert!(e.to_string().contains("renaming"), "{e}");
    assert_eq!(h.held_partitions("t").expect("held"), vec![0, 1]);

    // The log closed already, the call made again goes on where it stopped.
    std::fs::remove_file(tomb(&dir, 1)).expect("rm");
    block_on(h.close_partition("t", 1, true)).expect("the second close completes");
    assert_eq!(h.held_partitions("t").expect("held"), vec![0]);
    assert!(!t_partition_dir(&dir, 1).exists() && !tomb(&dir, 1).exists());
    engine.shutdown();

    let engine = start(&dir);
    assert_eq!(engine.handle().held_partitions("t").expect("held"), vec![0]);
    assert!(!t_partition_dir(&dir, 1).exists());
    opens_empty_again(&engine, &dir);
    engine.shutdown();
}

#[test]
fn a_tombstone_of_an_earlier_removal_does_not_stop_the_next_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    let h = engine.handle();
    // Left by an earlier removal of partition 1 (its last step failed), then placed again
    // without a sweep (the tombstone made after the open).
    fill_like_a_partition(&tomb(&dir, 1));
    block_on(h.close_partition("t", 1, true)).expect("close 1, removing it");
    assert!(!t_partition_dir(&dir, 1).exists() && !tomb(&dir, 1).exists());
    assert_eq!(h.held_partitions("t").expect("held"), vec![0]);
    engine.shutdown();
}

#[test]
fn keeping_the_data_leaves_the_directory_as_it_is() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    let h = engine.handle();
    block_on(h.close_partition("t", 1, false)).expect("close 1, keeping it");
    assert!(t_partition_dir(&dir, 1)
        .join("00000000000000000000.log")
        .exists());
    assert!(!tomb(&dir, 1).exists());
    block_on(h.open_partition("t", 1)).expect("open 1 again");
    assert_eq!(block_on(h.stats("t", 1)).expect("stats").next_offset, 5);
    engine.shutdown();
}
