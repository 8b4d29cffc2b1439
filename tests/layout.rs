//! Every file of the workspace's integration-test directories is compiled into a test
//! binary: with one binary per crate (`autotests = false`), a file of tests/ that no
//! `main.rs`, `multi_node.rs` or `[[test]]` names would be skipped without a word.

use std::collections::BTreeSet;
use std::path::Path;

/// The `mod NAME;` lines of `file` (one per line, as rustfmt writes them).
fn modules(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// The `.rs` files directly in `dir`, by stem.
fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("reading a tests directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect()
}

/// The `path = "tests/..."` of each `[[test]]` of the crate's Cargo.toml, by stem.
fn test_targets(manifest: &Path) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("path = \"tests/")?
                .strip_suffix(".rs\"")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_file_of_a_tests_directory_is_in_a_test_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in ["", "engine", "consensus", "net"] {
        let dir = root.join(krate).join("tests");
        let targets = test_targets(&root.join(krate).join("Cargo.toml"));
        assert!(
            !targets.is_empty(),
            "{}: no [[test]] entries",
            dir.display()
        );
        let mut named = targets.clone();
        for t in &targets {
            named.extend(modules(&dir.join(format!("{t}.rs"))));
        }
        let missing: Vec<_> = files(&dir).difference(&named).cloned().collect();
        assert!(
            missing.is_empty(),
            "{}: {missing:?} are in no test binary: add each as a `mod` of a [[test]]'s file",
            dir.display()
        );
    }
}
