//! `tako-vm gc`: unnamed snapshots and dead builds go, named snapshots and snapshots a run
//! holds stay (a snapshot in use is referenced).

mod common;

use std::path::Path;

use rootfs_builder::{Snapshot, SnapshotStore};

fn fake_snapshot(root: &Path, key: &str) {
    let dir = root.join("snapshots").join(key);
    std::fs::create_dir_all(dir.join("rootfs/usr/bin")).unwrap();
    std::fs::write(dir.join("rootfs/usr/bin/python3"), "").unwrap();
    let s = Snapshot {
        key: key.into(),
        job_type: String::new(),
        base_reference: "python:3.11-slim".into(),
        base_digest: "sha256:0000".into(),
        python_version: "3.11".into(),
        requirements: vec!["six".into()],
        uv_version: "uv 0.0.0".into(),
        env: vec![],
        created: 0,
        rootfs: Default::default(),
    };
    std::fs::write(dir.join("snapshot.json"), serde_json::to_vec(&s).unwrap()).unwrap();
}

fn gc(store: &Path) -> String {
    let (code, out, err) = common::cli(&["gc", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn gc_keeps_named_and_held_snapshots_and_removes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let snaps = SnapshotStore::open(root).unwrap();
    for key in ["aaaa01", "bbbb02", "cccc03"] {
        fake_snapshot(root, key);
    }
    // A job type's current snapshot (named), a build of a process that is gone.
    std::fs::write(root.join("snapshots/names/data-processing"), "aaaa01").unwrap();
    let dead = root.join("snapshots/.staging-dddd04-999999999");
    std::fs::create_dir_all(dead.join("rootfs")).unwrap();
    // A run is using bbbb02 (an ad-hoc requirements snapshot, say).
    let hold = snaps.hold("bbbb02").expect("exists");

    let out = gc(root);
    assert!(out.starts_with("removed 2 snapshots"), "{out}");
    assert!(snaps.by_key("aaaa01").is_some(), "named");
    assert!(snaps.by_key("bbbb02").is_some(), "held by a run");
    assert!(snaps.by_key("cccc03").is_none());
    assert!(!dead.exists());

    drop(hold);
    let out = gc(root);
    assert!(out.starts_with("removed 1 snapshots"), "{out}");
    assert!(snaps.by_key("bbbb02").is_none());
    assert!(snaps.by_key("aaaa01").is_some());
}
