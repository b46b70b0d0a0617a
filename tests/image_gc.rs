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
        lower: None,
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

#[test]
fn gc_caches_empties_the_build_caches_unless_a_build_holds_them() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let snaps = SnapshotStore::open(root).unwrap();
    let store = root.to_str().unwrap();
    // uv's cache, and a bytecode cache with one entry only the cache has and one a snapshot
    // links (its bytes stay: they are not counted as freed).
    let uv = root.join("snapshots/uv-cache");
    std::fs::create_dir_all(uv.join("archive-v0/abc")).unwrap();
    std::fs::write(uv.join("archive-v0/abc/data"), vec![0u8; 200_000]).unwrap();
    std::fs::write(uv.join(".lock"), "").unwrap();
    let bytecode = root.join("snapshots/bytecode-cache");
    std::fs::create_dir_all(bytecode.join("a70d0d0a/ab")).unwrap();
    let lone = bytecode.join("a70d0d0a/ab/ab01");
    std::fs::write(&lone, vec![1u8; 100_000]).unwrap();
    let shared = bytecode.join("a70d0d0a/ab/ab02");
    std::fs::write(&shared, vec![2u8; 50_000]).unwrap();
    fake_snapshot(root, "eeee05");
    std::fs::write(root.join("snapshots/names/kept"), "eeee05").unwrap();
    let in_snapshot = root.join("snapshots/eeee05/rootfs/usr/bin/x.pyc");
    std::fs::hard_link(&shared, &in_snapshot).unwrap();

    // A build is using the caches: refused, nothing removed; a plain gc does not prune the
    // bytecode cache under it either.
    let hold = snaps.hold_caches().unwrap();
    let (code, out, err) = common::cli(&["gc", "--caches", "--store", store]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("a job-type build is using the build caches"),
        "{err}"
    );
    assert!(uv.join("archive-v0/abc/data").exists() && lone.exists());
    gc(root);
    assert!(lone.exists(), "pruned under a build");

    drop(hold);
    let (code, out, err) = common::cli(&["gc", "--caches", "--store", store]);
    assert_eq!(code, 0, "{err}");
    // Freed: uv's 200 kB and the bytecode entry only the cache had (100 kB), not the one a
    // snapshot links.
    assert!(out.contains("emptied the build caches (0.3 MB)"), "{out}");
    assert!(!uv.exists() && !bytecode.exists());
    // The snapshot keeps its file.
    let m = std::fs::metadata(&in_snapshot).unwrap();
    assert_eq!((m.len(), m.nlink()), (50_000, 1));
    assert!(snaps.by_key("eeee05").is_some());
}

/// The distribution store is a build cache, not a snapshot: `gc` keeps the entries a
/// snapshot still links and removes the others (and a dead recording's leftovers);
/// `gc --caches` empties it.
#[test]
fn gc_prunes_the_distribution_store_to_what_snapshots_link() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    SnapshotStore::open(root).unwrap();
    fake_snapshot(root, "ffff06");
    std::fs::write(root.join("snapshots/names/kept"), "ffff06").unwrap();
    let scope = root.join("snapshots/dist-store/0123456789abcdef0123456789abcdef");
    let entry = |name: &str| {
        let tree = scope.join(name).join("tree/usr/lib/site/pkg");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("__init__.py"), name).unwrap();
        std::fs::write(
            scope.join(name).join("manifest"),
            "usr/lib/site/pkg/__init__.py\0",
        )
        .unwrap();
        tree.join("__init__.py")
    };
    let linked = entry("linked==1.0");
    let in_snapshot = root.join("snapshots/ffff06/rootfs/usr/bin/pkg.py");
    std::fs::hard_link(&linked, &in_snapshot).unwrap();
    entry("unlinked==2.0");
    entry(".tmp-dead==3.0-999999999.0");
    std::fs::create_dir_all(scope.join("plans")).unwrap();
    std::fs::write(scope.join("plans/abc"), "linked==1.0\n").unwrap();

    let out = gc(root);
    assert!(out.starts_with("removed 0 snapshots"), "{out}");
    assert!(linked.is_file(), "linked by a snapshot");
    assert!(!scope.join("unlinked==2.0").exists());
    assert!(!scope.join(".tmp-dead==3.0-999999999.0").exists());
    assert!(scope.join("plans/abc").is_file());

    // A `.pyc` only the caches hold, in the bytecode cache and in the kept entry: freed
    // by `gc --caches` and counted once; the file a snapshot links is not counted.
    let bytecode = root.join("snapshots/bytecode-cache/a70d0d0a/ab");
    std::fs::create_dir_all(&bytecode).unwrap();
    std::fs::write(bytecode.join("ab03"), vec![3u8; 300_000]).unwrap();
    let pycache = linked.parent().unwrap().join("__pycache__");
    std::fs::create_dir_all(&pycache).unwrap();
    std::fs::hard_link(bytecode.join("ab03"), pycache.join("__init__.tag.pyc")).unwrap();
    let store = root.to_str().unwrap();
    let (code, out, err) = common::cli(&["gc", "--caches", "--store", store]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("emptied the build caches (0.3 MB)"), "{out}");
    assert!(!root.join("snapshots/dist-store").exists());
    assert_eq!(
        std::fs::read_to_string(&in_snapshot).unwrap(),
        "linked==1.0"
    );
}

/// `images` and `gc` only read or remove: a mistyped `--store` is reported, not created.
#[test]
fn images_and_gc_do_not_create_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-store");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["images", "--store", m],
        vec!["images", "--json", "--store", m],
    ] {
        let (code, out, err) = common::cli(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.starts_with("NAME") || out.trim() == "[]", "{out}");
        assert!(err.contains("no image store at"), "{err}");
    }
    assert!(gc(&missing).contains("removed 0 snapshots"));
    assert!(!missing.exists(), "a read-only command created the store");
}

/// `gc` removes copies of uv no build uses: a dead process's temporary copy always, and
/// the copies of other uv versions when the host's uv is known. The current copy and a
/// live process's temporary copy stay.
#[test]
fn gc_removes_unused_copies_of_uv() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tools = store.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let configured = tako_vm::image::builder::BuilderConfig::default().uv_path;
    let current = tako_vm::image::builder::find_uv(configured.as_deref())
        .and_then(|p| tako_vm::image::builder::uv_version(&p))
        .ok();
    // Temporary copies as `rootfs_builder::durable::write_file` names them.
    let live = format!(".uv-0.1.tmp.{}.0", std::process::id());
    let mut names = vec![
        "uv-0.0.1".to_string(),
        ".uv-0.0.tmp.999999999.0".to_string(),
        live.clone(),
    ];
    if let Some(v) = &current {
        names.push(format!("uv-{v}"));
    }
    for n in &names {
        std::fs::write(tools.join(n), b"not uv").unwrap();
    }
    let out = gc(&store);
    let left: std::collections::BTreeSet<String> = std::fs::read_dir(&tools)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(!left.contains(".uv-0.0.tmp.999999999.0"), "{left:?}");
    assert!(left.contains(&live), "{left:?}");
    match &current {
        Some(v) => {
            assert!(left.contains(&format!("uv-{v}")), "{left:?}");
            assert!(!left.contains("uv-0.0.1"), "{left:?}");
            assert!(out.contains("removed 2 unused copies of uv"), "{out}");
        }
        None => {
            eprintln!("no uv on this host: only the dead process's copy is removed");
            assert!(left.contains("uv-0.0.1"), "{left:?}");
        }
    }
}
