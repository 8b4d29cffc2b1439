//! A partition directory emptied while it was kept (its files deleted, the directory left):
//! every partition directory holds its mark (`partition.meta`) from before the catalog names
//! it, so a held one found without it was emptied, and it opens marked lost exactly like a
//! missing one. A directory as its creation leaves it (the mark alone) opens unmarked; a
//! catalog of version 1 (before marks) is upgraded, its directories marked as they stand; a
//! catalog of a version this code does not know is refused. A partition held after its
//! topic's creation has its directory built aside (`<p>.creating`) and moved to its name
//! marked: a creation failed or cut short leaves no directory of the partition.

use crate::common;

use common::{engine_config, records_of_100_bytes, start, t_partition_dir, topic_config};
use engine::Engine;
use futures_lite::future::block_on;
use std::path::{Path, PathBuf};

fn lost(dir: &Path, p: u32) -> PathBuf {
    t_partition_dir(dir, p).join("lost.meta")
}

fn mark(dir: &Path, p: u32) -> PathBuf {
    t_partition_dir(dir, p).join("partition.meta")
}

fn unopened(dir: &Path, p: u32) -> PathBuf {
    t_partition_dir(dir, p).join("unopened.meta")
}

/// Deletes every file in `dir`, keeping the directory (`rm -rf dir/*`).
fn empty_out(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("rm -r");
        } else {
            std::fs::remove_file(&path).expect("rm");
        }
    }
}

/// A metadata file (docs/format.md, "Metadata files") holding `payload`.
fn meta_file(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x4154_454Du32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The JSON payload of `catalog.meta`.
fn catalog_json(dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(dir.join("catalog.meta")).expect("catalog");
    serde_json::from_slice(&bytes[16..]).expect("catalog JSON")
}

fn write_catalog_json(dir: &Path, v: &serde_json::Value) {
    let payload = serde_json::to_vec(v).expect("JSON");
    std::fs::write(dir.join("catalog.meta"), meta_file(&payload)).expect("write catalog");
}

/// A topic `t` of 2 partitions, 5 records in each.
fn topic_with_records(dir: &Path) -> Engine {
    let engine = start(dir);
    let h = engine.handle();
    block_on(h.create_topic("t", 2, topic_config())).expect("create");
    for p in 0..2 {
        block_on(h.append("t", p, records_of_100_bytes(5))).expect("append");
    }
    engine
}

#[test]
fn an_emptied_held_partition_directory_opens_marked_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    topic_with_records(&dir).shutdown();
    empty_out(&t_partition_dir(&dir, 1));

    for round in 0..2 {
        let engine = start(&dir);
        let h = engine.handle();
        let why = std::fs::read(lost(&dir, 1))
            .map(|b| String::from_utf8_lossy(&b[16..]).into_owned())
            .unwrap_or_else(|e| panic!("round {round}: partition 1 is not marked lost: {e}"));
        assert!(why.contains("was emptied"), "round {round}: {why}");
        assert!(!lost(&dir, 0).exists(), "round {round}: partition 0 is not");
        assert!(mark(&dir, 1).exists(), "round {round}: marked again");
        // The engine alone (no Raft group to keep out) serves the empty log.
        assert_eq!(block_on(h.stats("t", 1)).expect("stats").next_offset, 0);
        assert_eq!(block_on(h.stats("t", 0)).expect("stats").next_offset, 5);
        engine.shutdown();
    }
}

#[test]
fn a_directory_as_its_creation_leaves_it_opens_unmarked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("t", 3, topic_config(), &[0])).expect("create");
    block_on(h.open_partition("t", 1)).expect("hold 1");
    // Made by topic creation and by a partition held later, each with its mark, and said
    // never opened by a Raft group (none runs here).
    for p in 0..2 {
        assert!(mark(&dir, p).exists(), "partition {p}'s mark");
        assert!(unopened(&dir, p).exists(), "partition {p}'s unopened.meta");
    }
    engine.shutdown();
    // A crash before the first write: the directories hold what their creation wrote and
    // nothing else.
    for p in 0..2 {
        for entry in std::fs::read_dir(t_partition_dir(&dir, p)).expect("list") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .is_some_and(|n| n != "partition.meta" && n != "unopened.meta")
            {
                std::fs::remove_file(&path).expect("rm");
            }
        }
    }

    let engine = start(&dir);
    let h = engine.handle();
    for p in 0..2 {
        assert!(!lost(&dir, p).exists(), "partition {p} is not lost");
        assert_eq!(block_on(h.stats("t", p)).expect("stats").next_offset, 0);
    }
    engine.shutdown();
}

#[test]
fn an_emptied_directory_kept_while_not_held_opens_lost_when_held_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    let h = engine.handle();
    block_on(h.close_partition("t", 1, false)).expect("close 1, keeping its data");
    empty_out(&t_partition_dir(&dir, 1));
    block_on(h.open_partition("t", 1)).expect("hold 1 again");
    assert!(lost(&dir, 1).exists(), "its data kept is gone: lost");
    assert!(mark(&dir, 1).exists());
    engine.shutdown();
}

#[test]
fn a_mark_naming_another_partition_stops_the_start_with_its_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    topic_with_records(&dir).shutdown();
    std::fs::copy(mark(&dir, 0), mark(&dir, 1)).expect("copy");
    let e = Engine::start(engine_config(&dir))
        .err()
        .expect("a directory holding another partition's mark is refused");
    let msg = e.to_string();
    assert!(msg.contains("topics/t/1/partition.meta"), "{msg}");
    assert!(
        msg.contains("holds the mark of topic \"t\" partition 0"),
        "{msg}"
    );
}

#[test]
fn a_version_1_catalog_is_upgraded_and_none_of_its_directories_is_marked_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = topic_with_records(&dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("u", 4, topic_config(), &[2, 3])).expect("create u");
    // Kept while not held: marked too, and held again later it opens with its data.
    block_on(h.close_partition("t", 1, false)).expect("close t/1, keeping its data");
    engine.shutdown();
    // As the previous format left it: no marks, catalog version 1.
    for path in [
        mark(&dir, 0),
        mark(&dir, 1),
        dir.join("topics/u/2/partition.meta"),
        dir.join("topics/u/3/partition.meta"),
    ] {
        std::fs::remove_file(&path).expect("rm mark");
    }
    // A held partition's directory missing: lost, as before.
    std::fs::remove_dir_all(dir.join("topics/u/3")).expect("rm u/3");
    // One moved elsewhere and linked to is the partition's directory as the open sees it.
    let moved = tmp.path().join("moved-t-0");
    std::fs::rename(t_partition_dir(&dir, 0), &moved).expect("move t/0");
    std::os::unix::fs::symlink(&moved, t_partition_dir(&dir, 0)).expect("link t/0");
    let mut cat = catalog_json(&dir);
    assert_eq!(cat["version"], 2, "a new catalog is written as version 2");
    cat["version"] = 1.into();
    write_catalog_json(&dir, &cat);

    for round in 0..2 {
        let engine = start(&dir);
        let h = engine.handle();
        assert_eq!(catalog_json(&dir)["version"], 2, "round {round}: upgraded");
        assert!(mark(&dir, 0).exists() && mark(&dir, 1).exists());
        assert!(dir.join("topics/u/2/partition.meta").exists());
        assert!(!lost(&dir, 0).exists() && !lost(&dir, 1).exists());
        assert!(!dir.join("topics/u/2/lost.meta").exists());
        assert!(dir.join("topics/u/3/lost.meta").exists(), "missing: lost");
        assert_eq!(block_on(h.stats("t", 0)).expect("stats").next_offset, 5);
        if round == 0 {
            block_on(h.open_partition("t", 1)).expect("hold t/1 again");
        }
        assert_eq!(block_on(h.stats("t", 1)).expect("stats").next_offset, 5);
        assert!(!lost(&dir, 1).exists());
        engine.shutdown();
    }
}

#[test]
fn a_catalog_of_a_version_this_code_does_not_know_is_refused_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    topic_with_records(&dir).shutdown();
    let good = catalog_json(&dir);
    for version in [0u32, 3, 4_000_000_000] {
        let mut cat = good.clone();
        cat["version"] = version.into();
        write_catalog_json(&dir, &cat);
        let e = Engine::start(engine_config(&dir))
            .err()
            .unwrap_or_else(|| panic!("version {version}: started"));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("unknown catalog version {version}"))
                && msg.contains("catalog.meta"),
            "{msg}"
        );
        // Refused before anything was changed.
        assert_eq!(catalog_json(&dir)["version"], version);
    }
    write_catalog_json(&dir, &good);
    start(&dir).shutdown();
}

/// `topics/t/<p>.creating`: where a partition held after its topic's creation has its
/// directory built before the directory is moved to its name.
fn creating(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("topics/t/{p}.creating"))
}

#[test]
fn a_partition_held_later_whose_creation_fails_midway_leaves_no_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("t", 2, topic_config(), &[0])).expect("create");
    // A file where the directory of partition 1 is built: the creation fails there.
    std::fs::write(creating(&dir, 1), b"in the way").expect("obstacle");
    let err = block_on(h.open_partition("t", 1)).expect_err("the creation fails");
    println!("hold 1, the creation failing: {err}");
    assert!(
        !t_partition_dir(&dir, 1).exists(),
        "no directory of partition 1 after a failed creation"
    );
    assert!(!h.held_partitions("t").expect("held").contains(&1));
    std::fs::remove_file(creating(&dir, 1)).expect("rm obstacle");

    block_on(h.open_partition("t", 1)).expect("hold 1 again");
    assert!(!lost(&dir, 1).exists(), "made now: not lost");
    assert!(mark(&dir, 1).exists());
    block_on(h.append("t", 1, records_of_100_bytes(5))).expect("append");
    engine.shutdown();
    let engine = start(&dir);
    assert!(!lost(&dir, 1).exists(), "not lost after a restart");
    let next = block_on(engine.handle().stats("t", 1))
        .expect("stats")
        .next_offset;
    println!("partition 1 after a restart: next offset {next}");
    assert_eq!(next, 5);
    engine.shutdown();
}

#[test]
fn a_partition_creation_cut_short_is_swept_and_the_next_hold_opens_it_not_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("t", 3, topic_config(), &[0])).expect("create");
    engine.shutdown();
    // What a crash during the creation of partitions 1 and 2 leaves: the directory being
    // built, its mark written or not, and no directory of the partition.
    for p in 1..3 {
        std::fs::create_dir(creating(&dir, p)).expect("mkdir");
        std::fs::write(creating(&dir, p).join("partition.meta.tmp"), b"cut").expect("tmp");
    }

    // At start: swept.
    let engine = start(&dir);
    let h = engine.handle();
    for p in 1..3 {
        println!(
            "after a restart, {}: {}",
            creating(&dir, p).display(),
            if creating(&dir, p).exists() {
                "there"
            } else {
                "gone"
            }
        );
        assert!(!creating(&dir, p).exists(), "partition {p}: swept at start");
        assert!(!t_partition_dir(&dir, p).exists());
    }
    // Left again while running: the next creation of the partition removes it.
    std::fs::create_dir(creating(&dir, 1)).expect("mkdir");
    std::fs::write(creating(&dir, 1).join("00000000000000000000.log"), b"junk").expect("log");
    for p in 1..3 {
        block_on(h.open_partition("t", p)).expect("hold");
        assert!(!lost(&dir, p).exists(), "partition {p}: not lost");
        assert!(mark(&dir, p).exists());
        assert!(
            !creating(&dir, p).exists(),
            "partition {p}: nothing left being built"
        );
        block_on(h.append("t", p, records_of_100_bytes(3))).expect("append");
        assert_eq!(block_on(h.stats("t", p)).expect("stats").next_offset, 3);
    }
    engine.shutdown();
}
