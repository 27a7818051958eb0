//! Every backend passes the same conformance suite.

// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tidepool_store::{conformance, MemoryStore, SqliteStore, Store};

#[test]
fn sqlite_passes_the_conformance_suite() {
    let dir = std::env::temp_dir().join(format!("tidepool-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    let failures = conformance::run(&mut || {
        n += 1;
        Box::new(SqliteStore::open(&dir.join(format!("journal-{n}.db"))).unwrap()) as Box<dyn Store>
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(n, conformance::CHECKS.len());
}

#[test]
fn the_memory_store_passes_the_conformance_suite() {
    let failures = conformance::run(&mut || Box::new(MemoryStore::new()) as Box<dyn Store>);
    assert!(failures.is_empty(), "{failures:#?}");
}
