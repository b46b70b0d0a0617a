//! Job-type snapshots built with uv in a real builder sandbox, on a base image pulled from
//! the local registry fixture. `data-processing` installs pandas and numpy from PyPI
//! through the sandbox's network path (root; PyPI reachable, as in CI).

mod common;
mod image_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image_support::{mirror_config, RegistryProc, SmallDisk};
use rootfs_builder::{
    BaseImage, BuildHost, InstallOutcome, InstallRun, JobTypeSpec, SnapshotError, SnapshotStore,
};
use tako_vm::exec::record::Status;
use tako_vm::image::builder::{find_uv, BuilderConfig, SandboxBuildHost};
use tako_vm::image::{ImageStore, NoProgress, Registry};

/// The sandbox build host, counting the uv installs it runs; `base` replaces the pulled
/// base image (a crafted rootfs).
struct Counting<'a> {
    inner: SandboxBuildHost<'a>,
    installs: AtomicUsize,
    /// Byte-compile runs of a base image's Python.
    compiles: AtomicUsize,
    /// Byte-compile runs of installed packages (what the bytecode cache did not have).
    bytecode_runs: AtomicUsize,
    base: Option<BaseImage>,
}

impl BuildHost for Counting<'_> {
    fn base_image(&self, r: &str, f: bool) -> Result<BaseImage, String> {
        match &self.base {
            Some(b) => Ok(b.clone()),
            None => self.inner.base_image(r, f),
        }
    }
    fn uv(&self) -> Result<(PathBuf, String), SnapshotError> {
        self.inner.uv()
    }
    fn owner(&self) -> &dyn rootfs_builder::SandboxOwner {
        self.inner.owner()
    }
    fn find_links(&self) -> Option<PathBuf> {
        self.inner.find_links()
    }
    fn run(&self, run: &InstallRun) -> Result<InstallOutcome, String> {
        if run.argv[0] == "/bin/sh" {
            self.installs.fetch_add(1, Ordering::SeqCst);
        }
        if run.argv.iter().any(|a| a == "compileall") {
            self.compiles.fetch_add(1, Ordering::SeqCst);
        }
        if run.argv.iter().any(|a| a == rootfs_builder::pyc::COMPILE) {
            self.bytecode_runs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.run(run)
    }
}

fn spec(name: &str, reqs: &[&str]) -> JobTypeSpec {
    JobTypeSpec {
        name: name.into(),
        python_version: "3.11".into(),
        requirements: reqs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Everything one test needs; the registry stops when it is dropped.
struct World {
    _reg: RegistryProc,
    _dir: tempfile::TempDir,
    images: ImageStore,
    snaps: SnapshotStore,
    registry: Registry,
    runner: tako_vm::sandbox::Runner,
    /// A disk of its own, when the store is on one (dropped last).
    _disk: Option<SmallDisk>,
}

fn world() -> Option<World> {
    world_on(None)
}

/// A world whose stores are on `disk`.
fn world_on(disk: Option<SmallDisk>) -> Option<World> {
    let fixture = image_support::fixture()?;
    common::rootfs()?;
    let reg = RegistryProc::start(&fixture, "token", None);
    let dir = tempfile::tempdir().unwrap();
    let root = disk.as_ref().map_or(dir.path(), |d| d.path());
    let images = ImageStore::open(root.join("store")).unwrap();
    Some(World {
        snaps: SnapshotStore::open(images.root()).unwrap(),
        registry: Registry::new(mirror_config(&reg.host)).unwrap(),
        runner: common::runner_in("tako-vm-test-build"),
        images,
        _reg: reg,
        _dir: dir,
        _disk: disk,
    })
}

impl World {
    fn host(&self) -> Counting<'_> {
        self.host_with(BuilderConfig::default())
    }

    fn host_with(&self, config: BuilderConfig) -> Counting<'_> {
        Counting {
            inner: SandboxBuildHost::new(
                &self.runner,
                &self.images,
                &self.registry,
                config,
                &NoProgress,
            ),
            installs: AtomicUsize::new(0),
            compiles: AtomicUsize::new(0),
            bytecode_runs: AtomicUsize::new(0),
            base: None,
        }
    }
}

#[test]
fn data_processing_builds_from_pypi_runs_pandas_and_rebuilds_as_a_no_op() {
    let Some(w) = world() else { return };
    let host = w.host();
    let mut dp = spec("data-processing", &["pandas", "numpy"]);
    dp.environment.insert("OMP_NUM_THREADS".into(), "2".into());
    let snap = w.snaps.build(&dp, &host).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.installs.load(Ordering::SeqCst), 1);
    let lower: Vec<_> = snap.lower.iter().cloned().collect();
    assert!(rootfs_builder::check_layered(&snap.rootfs, &lower).is_empty());
    // A layer over its base image where layers work (else a whole tree, the fallback).
    if rootfs_builder::layers_supported(&w.images.root().join("snapshots")) {
        assert_eq!(lower.len(), 1, "a layer over its base image");
        assert!(
            !snap.rootfs.join("usr/bin/python3.11").exists(),
            "the base image's files stay in the base"
        );
    } else {
        assert!(lower.is_empty(), "a whole tree where layers cannot work");
    }
    assert_eq!(w.snaps.status("data-processing").unwrap().key, snap.key);
    // Byte-compiled at build time (the rootfs is read-only at run time).
    let pycache = std::fs::read_dir(
        snap.rootfs
            .join("usr/local/lib/python3.11/dist-packages/pandas/__pycache__"),
    );
    assert!(pycache.is_ok_and(|mut d| d.next().is_some()));

    let res = common::exec_snapshot(
        &snap,
        "import os, pandas, numpy\nprint(numpy.array([1, 2, 3]).sum(), os.environ['OMP_NUM_THREADS'], os.environ['LANG'])",
        |run| run.limits.memory_bytes = Some(1 << 30),
    );
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.stdout.trim(), "6 2 C.UTF-8");

    // Same key: reused, nothing installed.
    let again = w.snaps.build(&dp, &host).unwrap();
    assert_eq!(again.key, snap.key);
    assert_eq!(host.installs.load(Ordering::SeqCst), 1);
    // A changed environment is another key.
    dp.environment.insert("OMP_NUM_THREADS".into(), "1".into());
    assert_ne!(
        rootfs_builder::snapshot::snapshot_key(&dp, &snap.base_digest, &snap.uv_version).unwrap(),
        snap.key
    );

    // Another job type with numpy: neither installed nor compiled again. uv plans it as a
    // fresh install; the distribution store has that numpy from the first build, so its
    // files and bytecode are hard links of the first snapshot's (root's, read-only), and
    // Python takes the bytecode as valid unchecked-hash bytecode (PEP 552 flags 0b01).
    assert_eq!(host.bytecode_runs.load(Ordering::SeqCst), 1);
    let ml = w
        .snaps
        .build(&spec("ml-inference", &["numpy"]), &host)
        .unwrap();
    assert_eq!(
        host.installs.load(Ordering::SeqCst),
        1,
        "numpy installed again"
    );
    assert_eq!(
        host.bytecode_runs.load(Ordering::SeqCst),
        1,
        "numpy compiled again"
    );
    let pyc = "usr/local/lib/python3.11/dist-packages/numpy/__pycache__/__init__.cpython-311.pyc";
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(snap.rootfs.join(pyc)).unwrap(),
        std::fs::metadata(ml.rootfs.join(pyc)).unwrap(),
    );
    assert_eq!((a.ino(), a.uid(), a.mode() & 0o022), (b.ino(), 0, 0));
    let check = "import numpy, importlib.util\n\
        data = open(numpy.__cached__, 'rb').read(16)\n\
        assert data[:4] == importlib.util.MAGIC_NUMBER\n\
        print(int.from_bytes(data[4:8], 'little'), numpy.array([1, 2]).sum())";
    let res = common::exec_snapshot(&ml, check, |run| {
        run.limits.memory_bytes = Some(1 << 30);
    });
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.stdout.trim(), "1 3");
}

/// A full disk fails a build with the disk-full error, whether it fills while uv is copied
/// into the store or while uv installs in the builder sandbox, and leaves no partial uv copy
/// and no half snapshot. A failed uv copy is not remembered: with room again it is made.
#[test]
fn a_full_disk_is_a_clear_build_error_and_leaves_nothing_behind() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small disk needs root");
        return;
    }
    let Some(w) = world_on(Some(SmallDisk::mount("1g"))) else {
        return;
    };
    let disk = w._disk.as_ref().unwrap();
    let host = w.host();
    let dp = spec("data-processing", &["pandas", "numpy"]);
    host.base_image(&dp.base_reference(), true).unwrap();
    let snapshots = w.images.root().join("snapshots");
    let tools = w.images.root().join("tools");
    let leftovers = |dir: &std::path::Path, mark: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.contains(mark))
                    .collect()
            })
            .unwrap_or_default()
    };
    let check = |err: SnapshotError, names: &str| {
        assert!(matches!(err, SnapshotError::DiskFull(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("no space left on device")
                && msg.contains("tako-vm gc")
                && msg.contains(names),
            "{msg}"
        );
        assert!(w.snaps.status("data-processing").is_none());
        assert_eq!(leftovers(&snapshots, ".staging"), Vec::<String>::new());
        assert_eq!(leftovers(&tools, ".tmp"), Vec::<String>::new());
    };

    // No room for uv's copy (tens of MB).
    disk.resize(disk.used() + (4 << 20));
    check(w.snaps.build(&dp, &host).unwrap_err(), "tools/uv-");

    // Room for uv, not for pandas and numpy (over 100 MB installed).
    let configured = BuilderConfig::default().uv_path;
    let uv_size = std::fs::metadata(find_uv(configured.as_deref()).unwrap())
        .unwrap()
        .len();
    disk.resize(disk.used() + uv_size + (40 << 20));
    check(w.snaps.build(&dp, &host).unwrap_err(), "uv: ");
    assert!(tools.read_dir().unwrap().next().is_some(), "uv was copied");
}

#[test]
fn production_mode_refuses_an_unbuilt_job_type() {
    let Some(w) = world() else { return };
    let host = w.host();
    let err = w
        .snaps
        .resolve(&spec("ml-inference", &["numpy"]), &host, false)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SnapshotError::NotBuilt(_)));
    assert!(msg.contains("tako-vm build ml-inference"), "{msg}");
    assert!(msg.contains("POST /job-types/ml-inference/build"), "{msg}");
    assert_eq!(host.installs.load(Ordering::SeqCst), 0);
    // Built once (development mode), production mode uses it.
    let plain = spec("plain", &[]);
    let built = w.snaps.resolve(&plain, &host, true).unwrap();
    assert_eq!(
        w.snaps.resolve(&plain, &host, false).unwrap().key,
        built.key
    );
}

#[test]
fn runtime_requirements_are_cached_and_failures_leave_nothing() {
    let Some(w) = world() else { return };
    let host = w.host();
    let base = spec("default", &[]);
    let extra = vec!["six==1.16.0".to_string()];
    let a = w
        .snaps
        .resolve_with_requirements(&base, &extra, &host)
        .unwrap();
    assert_eq!(host.installs.load(Ordering::SeqCst), 1);
    let b = w
        .snaps
        .resolve_with_requirements(&base, &extra, &host)
        .unwrap();
    assert_eq!(a.key, b.key);
    assert_eq!(
        host.installs.load(Ordering::SeqCst),
        1,
        "second request installs nothing"
    );
    // Compiled in the snapshot, but nothing kept for job types (an API caller's build).
    assert!(a
        .rootfs
        .join("usr/local/lib/python3.11/dist-packages/__pycache__/six.cpython-311.pyc")
        .is_file());
    let cache = w.images.root().join("snapshots/bytecode-cache");
    assert!(
        !cache.exists(),
        "a per-request build wrote the bytecode cache"
    );

    let bad = vec!["six; rm -rf /".to_string()];
    assert!(matches!(
        w.snaps.resolve_with_requirements(&base, &bad, &host),
        Err(SnapshotError::Invalid(_))
    ));

    let missing = spec("broken", &["tako-vm-no-such-package-4d1c"]);
    let err = w.snaps.build(&missing, &host).unwrap_err();
    assert!(matches!(err, SnapshotError::BuildFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("tako-vm-no-such-package-4d1c"),
        "uv's error: {err}"
    );
    assert!(w.snaps.status("broken").is_none());
    let leftovers: Vec<_> = std::fs::read_dir(w.images.root().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn shared_code_lands_on_pythonpath_and_concurrent_builds_share_one() {
    let Some(w) = world() else { return };
    let host = w.host();
    let src = tempfile::tempdir().unwrap();
    let helper = src.path().join("helpers.py");
    std::fs::write(&helper, "def answer():\n    return 42\n").unwrap();
    let mut s = spec("with-shared", &[]);
    s.shared_code = vec![helper];
    let results = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                let r = w.snaps.build(&s, &host).unwrap();
                results.lock().unwrap().push(r.key);
            });
        }
    });
    let keys = results.into_inner().unwrap();
    assert_eq!(keys[0], keys[1]);
    assert_eq!(
        host.installs.load(Ordering::SeqCst),
        1,
        "one build for both"
    );
    let snap = w.snaps.status("with-shared").unwrap();
    assert!(snap.rootfs.join("app/shared_code/__pycache__").is_dir());
    let res = common::exec_snapshot(&snap, "import helpers\nprint(helpers.answer())", |_| {});
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.stdout.trim(), "42");
}

/// A base image of our own: a hard-link clone of the fixture rootfs in a temporary
/// directory (which stands for the image's directory in the store).
fn crafted_base() -> (tempfile::TempDir, BaseImage) {
    let fixture = common::rootfs().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = scratch.path().join("rootfs");
    common::hardlink_copy(&fixture, &rootfs);
    let base = BaseImage {
        digest: "sha256:".to_string() + &"ab".repeat(32),
        rootfs,
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
    };
    (scratch, base)
}

/// The official python images ship no `.pyc` files; the sandbox's rootfs is read-only, so
/// the base image's standard library is byte-compiled once, in a sandbox, in place, and
/// every snapshot shares it. Nothing in the store is left to the sandbox user.
#[test]
fn a_base_image_without_bytecode_is_compiled_once_in_a_sandbox() {
    let Some(w) = world() else { return };
    let (scratch, base) = crafted_base();
    // Strip the fixture's bytecode, as the official images do (unlinking in our clone).
    let stdlib = base.rootfs.join("usr/lib/python3.11");
    let st = std::process::Command::new("find")
        .arg(&stdlib)
        .args([
            "-name",
            "__pycache__",
            "-type",
            "d",
            "-prune",
            "-exec",
            "rm",
            "-rf",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!stdlib.join("json/__pycache__").exists());
    let mut host = w.host();
    host.base = Some(base.clone());

    let snap = w
        .snaps
        .build(&spec("plain", &[]), &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.compiles.load(Ordering::SeqCst), 1);
    assert!(scratch
        .path()
        .join(rootfs_builder::bytecode::MARKER)
        .is_file());
    assert!(stdlib
        .join("json/__pycache__/__init__.cpython-311.pyc")
        .is_file());
    // Everything the sandbox wrote is ours again, read-only for others.
    let st = std::process::Command::new("find")
        .arg(&stdlib)
        .args([
            "(", "!", "-uid", "0", "-o", "-perm", "/022", ")", "!", "-type", "l", "-print",
        ])
        .output()
        .unwrap();
    assert!(
        st.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );

    // The snapshot shares it, and Python finds the bytecode valid (no compile at import).
    let check = "import json, os, importlib._bootstrap_external as b\n\
        data = open(json.__cached__, 'rb').read()\n\
        st = os.stat(json.__file__)\n\
        b._validate_timestamp_pyc(data[:16], int(st.st_mtime), st.st_size, 'json', {})\n\
        print('valid', json.__cached__)";
    let res = common::exec_snapshot(&snap, check, |_| {});
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert!(
        res.stdout
            .starts_with("valid /usr/lib/python3.11/json/__pycache__/"),
        "{}",
        res.stdout
    );

    // Once per image: another job type on it compiles nothing.
    let mut other = spec("plain-too", &[]);
    other.environment.insert("X".into(), "1".into());
    w.snaps.build(&other, &host).unwrap();
    assert_eq!(host.compiles.load(Ordering::SeqCst), 1);
}

/// A base image is untrusted content: paths in it (and those its Python names) must not
/// lead the builder's own file operations (create, write, chown) out of the rootfs.
#[test]
fn a_hostile_base_image_cannot_lead_the_builder_out_of_its_rootfs() {
    let Some(w) = world() else { return };
    let (_scratch, base) = crafted_base();
    let rootfs = base.rootfs.clone();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), "keep").unwrap();
    std::fs::create_dir(outside.path().join("sub")).unwrap();
    let untouched = || {
        let mut names: Vec<_> = std::fs::read_dir(outside.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["sub", "victim"],
            "the builder wrote outside the rootfs"
        );
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim")).unwrap(),
            "keep"
        );
        use std::os::unix::fs::MetadataExt;
        for p in [outside.path().to_path_buf(), outside.path().join("sub")] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().uid(),
                0,
                "{} chowned",
                p.display()
            );
        }
    };
    let mut host = w.host();
    host.base = Some(base);
    let src = tempfile::tempdir().unwrap();
    let helper = src.path().join("helpers.py");
    std::fs::write(&helper, "X = 1\n").unwrap();
    let mut s = spec("hostile", &[]);
    s.shared_code = vec![helper];

    // The image's `/usr/local` (where its Python installs) is a symlink to a host
    // directory: refused, before anything is created or chowned there.
    let local = rootfs.join("usr/local");
    std::fs::rename(&local, rootfs.join("usr/local.real")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &local).unwrap();
    let err = w.snaps.build(&s, &host).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    untouched();

    // `/tako-build` and `/app/shared_code` of the image lead outside: replaced, never
    // written through; the build succeeds.
    std::fs::remove_file(&local).unwrap();
    std::fs::rename(rootfs.join("usr/local.real"), &local).unwrap();
    std::os::unix::fs::symlink(outside.path(), rootfs.join("tako-build")).unwrap();
    std::os::unix::fs::symlink(outside.path(), rootfs.join("app/shared_code")).unwrap();
    let snap = w.snaps.build(&s, &host).unwrap_or_else(|e| panic!("{e}"));
    untouched();
    assert!(!snap.rootfs.join("tako-build").exists());
    let shared = snap.rootfs.join("app/shared_code");
    assert!(std::fs::symlink_metadata(&shared).unwrap().is_dir());
    assert!(shared.join("helpers.py").is_file());
}

/// A job type's build keeps what it installed in the distribution store (hard links of the
/// snapshot's root-owned files): a later build whose fresh resolution picks the same
/// versions links them instead of copying, console scripts included; a newer version on
/// the index is installed as a fresh build would; per-request builds never use the store.
#[test]
fn builds_link_stored_distributions_and_still_resolve_fresh() {
    use std::os::unix::fs::MetadataExt;
    let Some(w) = world() else { return };
    let links = tempfile::tempdir().unwrap();
    let name = "takostored";
    local_sdist_version(
        links.path(),
        name,
        "1.1",
        &wheel_backend_version(name, "1.1", "pass"),
    );
    let config = BuilderConfig {
        find_links: Some(links.path().to_path_buf()),
        ..BuilderConfig::default()
    };
    let host = w.host_with(config);
    let installs = || host.installs.load(Ordering::SeqCst);
    let build = |job: &str| {
        let mut s = spec(job, &[name]);
        s.environment.insert("JOB".into(), job.into());
        w.snaps.build(&s, &host).unwrap_or_else(|e| panic!("{e}"))
    };
    let site = "usr/local/lib/python3.11/dist-packages";
    let module = format!("{site}/{name}/__init__.py");
    let script = format!("usr/local/bin/{name}");
    let ino = |snap: &rootfs_builder::Snapshot, rel: &str| {
        let m = std::fs::metadata(snap.rootfs.join(rel)).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o022),
            (0, 0),
            "{rel}: root's, read-only"
        );
        m.ino()
    };

    let one = build("store-one");
    assert_eq!(installs(), 1);
    let two = build("store-two");
    assert_ne!(one.key, two.key);
    assert_eq!(
        installs(),
        1,
        "all of it was in the store: nothing to install"
    );
    for rel in [
        &module,
        &script,
        &format!("{site}/{name}-1.1.dist-info/RECORD"),
    ] {
        assert_eq!(
            ino(&one, rel),
            ino(&two, rel),
            "{rel} linked from the store"
        );
    }
    let run = |snap: &rootfs_builder::Snapshot| {
        let res = common::exec_snapshot(
            snap,
            &format!("import subprocess\nsubprocess.run(['{name}'], check=True)"),
            |_| {},
        );
        assert_eq!(res.status, Status::Succeeded, "{res:?}");
        res.stdout.trim().to_string()
    };
    assert_eq!(run(&two), "1.1");

    // A newer release: resolved as a fresh build resolves, not kept at the stored one.
    local_sdist_version(
        links.path(),
        name,
        "2.0",
        &wheel_backend_version(name, "2.0", "pass"),
    );
    let three = build("store-three");
    assert_eq!(installs(), 2);
    assert_ne!(ino(&three, &module), ino(&two, &module));
    assert_eq!(run(&three), "2.0");
    assert!(!three
        .rootfs
        .join(format!("{site}/{name}-1.1.dist-info"))
        .exists());

    // An API caller's requirements: a private cache and no store.
    let adhoc = w
        .snaps
        .resolve_with_requirements(&spec("default", &[]), &[format!("{name}==2.0")], &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(ino(&adhoc, &module), ino(&three, &module));
    assert_eq!(run(&adhoc), "2.0");
    assert_eq!(installs(), 3);
}

/// Writes `<dir>/<name>-1.0.tar.gz`: an sdist whose in-tree build backend (PEP 517
/// `backend-path`) is `backend` (Python source); uv runs it in the builder sandbox.
fn local_sdist(dir: &std::path::Path, name: &str, backend: &str) {
    local_sdist_version(dir, name, "1.0", backend)
}

/// Where layers are not supported (a kernel before 5.11, a store on a file system without
/// user xattrs, such as tmpfs before 6.6: the QEMU test's machine), a build makes a whole
/// tree, as before layers: a hard-link clone of the base with the install on it, run
/// without an overlay.
#[test]
fn without_layers_a_snapshot_is_a_whole_tree_that_runs_the_same() {
    use std::os::unix::fs::MetadataExt;
    let Some(w) = world() else { return };
    let whole = SnapshotStore::open(w.images.root())
        .unwrap()
        .whole_trees(true);
    let host = w.host();
    let src = tempfile::tempdir().unwrap();
    let helper = src.path().join("helpers.py");
    std::fs::write(&helper, "def answer():\n    return 42\n").unwrap();
    let mut s = spec("whole", &["six==1.16.0"]);
    s.shared_code = vec![helper];
    s.environment.insert("WHOLE".into(), "1".into());
    let snap = whole.build(&s, &host).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.lower, None);
    assert!(rootfs_builder::check(&snap.rootfs).is_empty());
    // The base's files are in it, as links of the image's.
    let base = w.images.root().join("images");
    let python = snap.rootfs.join("usr/bin/python3.11");
    let m = std::fs::metadata(&python).unwrap();
    assert!(
        m.nlink() >= 2,
        "a hard link of the image's python3.11 (under {base:?})"
    );
    assert!(snap
        .rootfs
        .join("usr/local/lib/python3.11/dist-packages/six.py")
        .is_file());
    let res = common::exec_snapshot(
        &snap,
        "import six, helpers\nprint(six.__version__, helpers.answer())",
        |_| {},
    );
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.stdout.trim(), "1.16.0 42");
}

/// A snapshot is a layer over its base image. Its build may remove what the image installed
/// (here an upgrade of a distribution the image ships): the layer gets whiteouts, the
/// image's own files are never written, and runs on the snapshot see only the upgrade.
#[test]
fn a_layered_build_upgrades_what_the_image_installed_without_touching_the_image() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Some(w) = world() else { return };
    if !rootfs_builder::layers_supported(&w.images.root().join("snapshots")) {
        eprintln!("skipped: layers are not supported for this store (kernel before 5.11, or no user xattrs); builds make whole trees there (without_layers_… covers that)");
        return;
    }
    let (_scratch, base) = crafted_base();
    let name = "takoimaged";
    let site = "usr/local/lib/python3.11/dist-packages";
    // The image ships takoimaged 1.0, as pip would have installed it.
    let sp = base.rootfs.join(site);
    let info = sp.join(format!("{name}-1.0.dist-info"));
    std::fs::create_dir_all(sp.join(name)).unwrap();
    std::fs::create_dir_all(&info).unwrap();
    let module = sp.join(name).join("__init__.py");
    std::fs::write(&module, "X = 'image'\n").unwrap();
    std::fs::write(
        info.join("METADATA"),
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"),
    )
    .unwrap();
    std::fs::write(info.join("INSTALLER"), "pip\n").unwrap();
    std::fs::write(
        info.join("RECORD"),
        format!(
            "{name}/__init__.py,,\n{name}-1.0.dist-info/METADATA,,\n{name}-1.0.dist-info/INSTALLER,,\n{name}-1.0.dist-info/RECORD,,\n"
        ),
    )
    .unwrap();
    let image_files = || {
        let mut v = Vec::new();
        for p in [&module, &info.join("RECORD"), &info.join("METADATA")] {
            let m = std::fs::metadata(p).unwrap();
            v.push((m.ino(), m.mtime(), m.len(), m.uid()));
        }
        v
    };
    let before = image_files();

    let links = tempfile::tempdir().unwrap();
    local_sdist_version(
        links.path(),
        name,
        "2.0",
        &wheel_backend_version(name, "2.0", "pass"),
    );
    let mut host = w.host_with(BuilderConfig {
        find_links: Some(links.path().to_path_buf()),
        ..BuilderConfig::default()
    });
    host.base = Some(base.clone());
    let snap = w
        .snaps
        .build(&spec("upgrade", &[&format!("{name}==2.0")]), &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.lower.as_deref(), Some(base.rootfs.as_path()));

    // The image is as it was.
    assert_eq!(image_files(), before, "the build wrote the base image");
    // The layer: the old dist-info as a whiteout, the new distribution as files.
    let layer = snap.rootfs.join(site);
    let wo = std::fs::symlink_metadata(layer.join(format!("{name}-1.0.dist-info"))).unwrap();
    assert!(
        wo.file_type().is_char_device() && wo.rdev() == 0,
        "no whiteout for the uninstalled dist-info: {wo:?}"
    );
    assert!(layer.join(format!("{name}-2.0.dist-info/RECORD")).is_file());
    assert!(
        !snap.rootfs.join("usr/lib/python3.11").exists() && !snap.rootfs.join("usr/bin").exists(),
        "the layer holds what the build changed, not the image"
    );
    // A run sees the upgrade and nothing of 1.0.
    let res = common::exec_snapshot(
        &snap,
        &format!(
            "import glob, importlib.metadata as m, {name}\nprint(m.version('{name}'), {name}.X, len(glob.glob('/{site}/{name}-1.0*')))"
        ),
        |_| {},
    );
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.stdout.trim(), "2.0 2.0 0");
}

/// [`local_sdist`] of version `version`.
fn local_sdist_version(dir: &std::path::Path, name: &str, version: &str, backend: &str) {
    let pkg = dir.join(format!("{name}-{version}"));
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(
        pkg.join("pyproject.toml"),
        format!("[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"{name}\"\nversion = \"{version}\"\n"),
    )
    .unwrap();
    std::fs::write(pkg.join("backend.py"), backend).unwrap();
    std::fs::write(
        pkg.join("PKG-INFO"),
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
    )
    .unwrap();
    let st = std::process::Command::new("tar")
        .current_dir(dir)
        .arg("czf")
        .arg(format!("{name}-{version}.tar.gz"))
        .arg(format!("{name}-{version}"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_dir_all(&pkg).unwrap();
}

/// An in-tree build backend that runs `pre` (Python, at the start of `build_wheel`) and then
/// builds a valid wheel of package `name` (`name/__init__.py` with `X = 1`).
fn wheel_backend(name: &str, pre: &str) -> String {
    wheel_backend_version(name, "1.0", pre)
}

/// [`wheel_backend`] of version `version`, whose module has `X = "<version>"`.
fn wheel_backend_version(name: &str, version: &str, pre: &str) -> String {
    let pre = pre.replace('\n', "\n    ");
    // Other versions also have a console script (installed outside site-packages).
    let (x, script) = if version == "1.0" {
        ("1".to_string(), String::new())
    } else {
        (
            format!("\"{version}\"\\ndef main():\\n    print(X)"),
            format!("'{name}-{version}.dist-info/entry_points.txt': b'[console_scripts]\\n{name} = {name}:main\\n',"),
        )
    };
    format!(
        r#"import base64, hashlib, os, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    {pre}
    whl = '{name}-{version}-py3-none-any.whl'
    files = {{
        '{name}/__init__.py': b'X = {x}\n',
        '{name}-{version}.dist-info/METADATA': b'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n',
        '{name}-{version}.dist-info/WHEEL': b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
        {script}
    }}
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, whl), 'w') as z:
        for path, data in files.items():
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
            record.append(f'{{path}},sha256={{digest}},{{len(data)}}')
        record.append('{name}-{version}.dist-info/RECORD,,')
        z.writestr('{name}-{version}.dist-info/RECORD', '\n'.join(record) + '\n')
    return whl
"#
    )
}

/// Per-request `requirements` come from API callers, and an sdist's build backend runs in
/// the builder sandbox: such builds get a uv cache of their own, so they cannot change what
/// the shared cache hands to the job types' builds. The probe: a local sdist whose in-tree
/// build backend writes a file into the cache it was given.
#[test]
fn runtime_requirement_builds_cannot_touch_the_shared_uv_cache() {
    let Some(w) = world() else { return };
    let links = tempfile::tempdir().unwrap();
    local_sdist(
        links.path(),
        "poisoner",
        "import os\nopen(os.path.join(os.environ.get('UV_CACHE_DIR', '/tako-build/cache'), 'POISONED'), 'w').write('x')\n\n\
         def get_requires_for_build_wheel(config_settings=None):\n    return []\n\n\
         def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n    raise RuntimeError('poisoner: no wheel')\n",
    );
    let config = BuilderConfig {
        find_links: Some(links.path().to_path_buf()),
        ..BuilderConfig::default()
    };
    let host = SandboxBuildHost::new(&w.runner, &w.images, &w.registry, config, &NoProgress);
    let shared = w.images.root().join("snapshots/uv-cache");
    let poisoned = || shared.join("POISONED").exists();

    // An API caller's requirement: its build fails (no wheel), the shared cache is untouched.
    let err = w
        .snaps
        .resolve_with_requirements(&spec("default", &[]), &["poisoner".to_string()], &host)
        .unwrap_err();
    assert!(err.to_string().contains("poisoner"), "{err}");
    assert!(
        !poisoned(),
        "a runtime-requirements build wrote into the shared uv cache"
    );

    // Control (the probe works): as a job type's own requirement, the operator's trust
    // domain, the same build code does reach the shared cache.
    let err = w
        .snaps
        .build(&spec("operator", &["poisoner"]), &host)
        .unwrap_err();
    assert!(err.to_string().contains("poisoner"), "{err}");
    assert!(poisoned(), "the probe did not run");
}

/// The host writes the list of sources to compile into the scratch directory the install
/// sandbox had: whatever build code left at that name (a symlink to a host file) is
/// replaced, never written through. The probe: an sdist whose backend plants that symlink
/// and builds a valid wheel.
#[test]
fn build_code_cannot_make_the_host_write_through_its_symlinks() {
    let Some(w) = world() else { return };
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let links = tempfile::tempdir().unwrap();
    let backend = wheel_backend(
        "planter",
        &format!(
            "try:\n    os.symlink({victim:?}, '/tako-build/tmp/compile-list')\nexcept FileExistsError:\n    pass"
        ),
    );
    local_sdist(links.path(), "planter", &backend);
    let config = BuilderConfig {
        find_links: Some(links.path().to_path_buf()),
        ..BuilderConfig::default()
    };
    let host = SandboxBuildHost::new(&w.runner, &w.images, &w.registry, config, &NoProgress);
    let snap = w
        .snaps
        .build(&spec("planted", &["planter"]), &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    let pyc = snap.rootfs.join(
        "usr/local/lib/python3.11/dist-packages/planter/__pycache__/__init__.cpython-311.pyc",
    );
    assert!(pyc.is_file(), "planter was installed and compiled");
}

/// Cached and uncached sources in one directory: the cached `.pyc` files are linked only
/// after the rest was compiled, so the compile run can still write into that
/// `__pycache__` (found in review: it was root's first, and the rest stayed uncompiled).
#[test]
fn a_partly_cached_directory_is_compiled_whole() {
    let Some(w) = world() else { return };
    let host = w.host();
    w.snaps
        .build(&spec("six-only", &["six==1.16.0"]), &host)
        .unwrap_or_else(|e| panic!("{e}"));
    let both = w
        .snaps
        .build(
            &spec(
                "six-and-more",
                &["six==1.16.0", "typing_extensions==4.12.2"],
            ),
            &host,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = both
        .rootfs
        .join("usr/local/lib/python3.11/dist-packages/__pycache__");
    for m in ["six", "typing_extensions"] {
        assert!(
            cache.join(format!("{m}.cpython-311.pyc")).is_file(),
            "{m} has no bytecode"
        );
    }
}

/// The base image's byte-compile is best effort: an image without `python3` still builds
/// a job type without requirements, and the marker records why it was skipped (not tried
/// again for every build or run).
#[test]
fn a_base_image_that_cannot_be_byte_compiled_still_builds() {
    let Some(w) = world() else { return };
    let (scratch, base) = crafted_base();
    for p in [
        "usr/bin/python3",
        "usr/bin/python3.11",
        "usr/local/bin/python3",
    ] {
        let _ = std::fs::remove_file(base.rootfs.join(p));
    }
    let mut host = w.host();
    host.base = Some(base);
    w.snaps
        .build(&spec("no-python", &[]), &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.compiles.load(Ordering::SeqCst), 0);
    let marker =
        std::fs::read_to_string(scratch.path().join(rootfs_builder::bytecode::MARKER)).unwrap();
    assert!(marker.starts_with("skipped: "), "{marker}");
    assert!(marker.contains("python3"), "{marker}");
}

/// Build code can nest directories far deeper than the host's stack (or PATH_MAX) would take
/// in a recursive walk; std's `remove_dir_all` aborts the whole process on such a tree (a
/// server: every job gone). The host's walks over what a build wrote are iterative: a deep
/// tree in the scratch directory is removed and the build succeeds; one in the installed
/// files (per-request requirements: an API caller's build code) fails that build with an
/// error and leaves nothing behind. Run on a thread with the stack of a server's blocking
/// pool (2 MiB).
#[test]
fn build_code_nesting_directories_deeply_cannot_crash_the_host() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(deep_trees_from_build_code)
        .unwrap()
        .join()
        .unwrap();
}

fn deep_trees_from_build_code() {
    let Some(w) = world() else { return };
    let nest = |at: &str| {
        format!("d = os.open({at:?}, os.O_RDONLY)\nfor _ in range(30000):\n    os.mkdir('d', dir_fd=d)\n    n = os.open('d', os.O_RDONLY, dir_fd=d)\n    os.close(d)\n    d = n\nos.close(d)")
    };
    let links = tempfile::tempdir().unwrap();
    local_sdist(
        links.path(),
        "nester",
        &wheel_backend("nester", &nest("/tako-build/tmp")),
    );
    local_sdist(
        links.path(),
        "squatter",
        &wheel_backend(
            "squatter",
            &format!(
                "os.makedirs('/usr/local/lib/python3.11/dist-packages/deep', exist_ok=True)\n{}",
                nest("/usr/local/lib/python3.11/dist-packages/deep")
            ),
        ),
    );
    let config = BuilderConfig {
        find_links: Some(links.path().to_path_buf()),
        ..BuilderConfig::default()
    };
    let host = SandboxBuildHost::new(&w.runner, &w.images, &w.registry, config, &NoProgress);
    let snaps = w.images.root().join("snapshots");
    let leftovers = || {
        std::fs::read_dir(&snaps)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("staging") || n.starts_with('.') || n.starts_with("tmp"))
            .collect::<Vec<_>>()
    };

    let snap = w
        .snaps
        .build(&spec("nested", &["nester"]), &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(snap
        .rootfs
        .join("usr/local/lib/python3.11/dist-packages/nester/__init__.py")
        .is_file());
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    let err = w
        .snaps
        .resolve_with_requirements(&spec("default", &[]), &["squatter".to_string()], &host)
        .unwrap_err();
    eprintln!("the deep installed tree: {err}");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

/// Every distinct per-request `requirements` list makes a snapshot; they are bounded (the
/// store keeps the most recently used, `keep_unnamed`), so API callers cannot fill the disk.
#[test]
fn runtime_requirement_snapshots_are_bounded_least_recently_used_first() {
    let Some(w) = world() else { return };
    let links = tempfile::tempdir().unwrap();
    // Names that are on no index: with --no-index only these local sdists can match.
    for name in ["takolruone", "takolrutwo"] {
        local_sdist(links.path(), name, &wheel_backend(name, "pass"));
    }
    let config = BuilderConfig {
        find_links: Some(links.path().to_path_buf()),
        ..BuilderConfig::default()
    };
    let host = w.host_with(config);
    let snaps = SnapshotStore::open(w.images.root())
        .unwrap()
        .keep_unnamed(1);
    let adhoc = |req: &str| {
        snaps
            .resolve_with_requirements(&spec("default", &[]), &[req.to_string()], &host)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let first = adhoc("takolruone");
    let again = adhoc("takolruone");
    assert_eq!(first.key, again.key);
    assert_eq!(host.installs.load(Ordering::SeqCst), 1, "cached");
    let second = adhoc("takolrutwo");
    assert!(second.rootfs.is_dir());
    assert!(
        snaps.by_key(&first.key).is_none(),
        "the least recently used one was removed"
    );
    assert_eq!(host.installs.load(Ordering::SeqCst), 2);
    // Built again when asked for again; the other one goes.
    let third = adhoc("takolruone");
    assert_eq!(third.key, first.key);
    assert_eq!(host.installs.load(Ordering::SeqCst), 3);
    assert!(snaps.by_key(&second.key).is_none());
}
