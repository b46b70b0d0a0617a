//! Job-type snapshots: the base image's rootfs (hard links) + the job type's requirements
//! installed by uv inside a builder sandbox + `shared_code`, content-addressed.
//!
//! ```text
//! <root>/snapshots/<key>/rootfs/          the immutable snapshot (run read-only)
//! <root>/snapshots/<key>/snapshot.json    what it is (base, requirements, env, uv …)
//! <root>/snapshots/names/<name>           `tako-vm-<name>:latest` → key
//! <root>/snapshots/locks/<key>.lock       one build per key (flock, across processes)
//! <root>/snapshots/locks/use-<key>        held shared while sandboxes run on it (gc skips)
//! <root>/snapshots/.staging-<key>-<pid>/  a build in progress (removed on failure)
//! ```
//! The key hashes the base image digest, python version, sorted requirements, uv version,
//! `shared_code` contents and environment: the same key is reused without any work.
//! The sandbox and the images are the caller's ([`BuildHost`]), so this crate knows no
//! namespaces and no registries.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::requirements::{valid_environment, validate_requirements};
use crate::tree;

/// Where the builder sandbox finds its tools (a directory created in the staging rootfs
/// and removed before the snapshot is published).
pub const BUILD_DIR: &str = "/tako-build";
/// `shared_code` files land here (and on `PYTHONPATH`).
pub const SHARED_CODE_DIR: &str = "/app/shared_code";

/// What a snapshot is built from: the job-type fields that matter for its contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTypeSpec {
    /// Job-type name (`tako-vm-<name>:latest`).
    pub name: String,
    /// Python version; selects `python:<version>-slim` unless `base_image` is set.
    pub python_version: String,
    /// Any image reference to build on instead.
    pub base_image: Option<String>,
    /// pip requirements installed with uv.
    pub requirements: Vec<String>,
    /// Environment baked into the snapshot's metadata, applied at run time.
    pub environment: BTreeMap<String, String>,
    /// Host files copied into `/app/shared_code`.
    pub shared_code: Vec<PathBuf>,
}

impl JobTypeSpec {
    /// The base image reference.
    pub fn base_reference(&self) -> String {
        match &self.base_image {
            Some(b) if !b.trim().is_empty() => b.trim().to_string(),
            _ => format!(
                "python:{}-slim",
                if self.python_version.is_empty() {
                    "3.11"
                } else {
                    &self.python_version
                }
            ),
        }
    }
}

/// A base image as the host provides it.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseImage {
    /// Manifest digest.
    pub digest: String,
    /// Its unpacked, sandbox-ready rootfs.
    pub rootfs: PathBuf,
    /// The image config's `Env`.
    pub env: Vec<(String, String)>,
}

/// A host path bind-mounted into the builder sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct BindMount {
    /// Host path.
    pub host: PathBuf,
    /// Path inside the sandbox (exists in the staging rootfs).
    pub target: String,
    /// Read-write.
    pub writable: bool,
}

/// One run in the builder sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallRun {
    /// Rootfs (a base image; with `layers`, the overlay's mount point), mounted read-only
    /// except for `binds` (and the `layers`' writable directories).
    pub rootfs: PathBuf,
    /// Command.
    pub argv: Vec<String>,
    /// Complete environment.
    pub env: Vec<(String, String)>,
    /// Bind mounts.
    pub binds: Vec<BindMount>,
    /// Needs outbound network (PyPI).
    pub network: bool,
    /// Directories made in the sandbox's fresh `/tmp` (mount points for `binds` there).
    pub tmp_dirs: Vec<String>,
    /// A layered rootfs: `rootfs` is then only the mount point of an overlay of `lower`
    /// with `upper` (the layer the build writes, and the overlay's work directory).
    pub layers: Option<BuildLayers>,
}

/// The overlay a build runs on (see [`InstallRun::layers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BuildLayers {
    /// The base image's rootfs.
    pub lower: PathBuf,
    /// The snapshot's layer, written through the overlay.
    pub upper: PathBuf,
    /// The overlay's work directory (same file system as `upper`).
    pub work: PathBuf,
    /// Directories inside that stay writable (the install directories); the rest of the
    /// root is read-only.
    pub writable: Vec<String>,
}

/// How a builder-sandbox run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOutcome {
    /// Exit code 0.
    pub success: bool,
    /// The exit code, when the command exited (not killed, not timed out).
    pub exit_code: Option<i32>,
    /// Human-readable end (exit code, signal, timeout, OOM).
    pub status: String,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr (uv's error).
    pub stderr: String,
}

/// What the snapshot builder needs from its host: images, uv and a sandbox.
pub trait BuildHost: Sync {
    /// The base image; pulled when missing if `may_fetch`. Must be quick when local: it is
    /// called on every resolve.
    fn base_image(&self, reference: &str, may_fetch: bool) -> Result<BaseImage, String>;
    /// The uv binary the builder sandbox gets and its version (`0.13.9`):
    /// [`SnapshotError::Uv`] when there is none.
    fn uv(&self) -> Result<(PathBuf, String), SnapshotError>;
    /// Who the builder sandbox's user is on the host, and how this process hands it the
    /// build's directories and takes them back.
    fn owner(&self) -> &dyn SandboxOwner;
    /// Runs one command in a builder sandbox (limits, startup timeout, network if asked).
    fn run(&self, run: &InstallRun) -> Result<InstallOutcome, String>;
    /// Offline builds: a host directory of wheels and sdists to install from instead of
    /// an index (bound read-only at `/tako-build/find-links`; uv gets `--find-links` and
    /// `--no-index`).
    fn find_links(&self) -> Option<PathBuf> {
        None
    }
    /// Progress messages.
    fn step(&self, _message: &str) {}
}

/// The builder sandbox's user (uid 1000 inside) on the host, and the ownership operations
/// on the directories it writes. The defaults are plain system calls as this process: a
/// root server, or one whose sandbox user is itself ([`DirectOwner`]). An unprivileged
/// server with subordinate ids may do neither and overrides them (tako-vm's owner helper).
pub trait SandboxOwner: Sync {
    /// Host uid and gid the sandbox user stands for (owner of writable binds).
    fn ids(&self) -> (u32, u32);
    /// Gives `dir` and every directory below it to the sandbox user, so that a builder
    /// sandbox may create files there (files are left as they are).
    fn hand_over(&self, dir: &Path) -> io::Result<()> {
        let (uid, gid) = self.ids();
        crate::tree::chown_dirs(dir, uid, gid)
    }
    /// Gives what the sandbox user owns under `dir` (and `dir`) back to this process,
    /// readable by everybody.
    fn take_back(&self, dir: &Path) -> io::Result<()> {
        // SAFETY: geteuid(2) and getegid(2) cannot fail and have no side effects.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        crate::tree::reclaim(dir, self.ids().0, uid, gid)
    }
    /// Removes `path`, a tree the sandbox user may have written in (however deep; a missing
    /// path is fine).
    fn discard(&self, path: &Path) -> io::Result<()> {
        crate::tree::remove(path)
    }
}

/// [`SandboxOwner`] by plain system calls, for a sandbox user of these host ids.
#[derive(Debug, Clone, Copy)]
pub struct DirectOwner(pub u32, pub u32);

impl SandboxOwner for DirectOwner {
    fn ids(&self) -> (u32, u32) {
        (self.0, self.1)
    }
}

/// Which uv cache a build's sandbox gets.
///
/// The cache is writable in the builder sandbox, and a requirement's build code (an sdist's
/// build backend) runs there: it could change what the cache hands to later builds. Job
/// types are the operator's (one trust domain), and their builds share `<root>/snapshots/uv-cache`.
/// Per-request `requirements` come from API callers, so their builds get a cache of their
/// own, removed afterwards: they download what they install, once per requirement set
/// (the snapshot is then cached by key), and never see or touch the shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// `<root>/snapshots/uv-cache`, shared by job-type builds.
    Shared,
    /// A fresh cache in the build's staging directory, removed before it is published.
    Private,
}

/// A built snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Content key (sha256 hex).
    pub key: String,
    /// Job type it was built for (empty for ad-hoc runtime-requirement snapshots).
    pub job_type: String,
    /// Base image reference and digest.
    pub base_reference: String,
    /// Manifest digest of the base image.
    pub base_digest: String,
    /// Python version of the job type.
    pub python_version: String,
    /// Installed requirements (sorted).
    pub requirements: Vec<String>,
    /// uv version used.
    pub uv_version: String,
    /// Environment for runs: image `Env`, then `PYTHONPATH` for shared code, then the job
    /// type's `environment`.
    pub env: Vec<(String, String)>,
    /// Unix time of the build.
    pub created: u64,
    /// The rootfs (filled in when loaded): the whole tree, or with `lower` the snapshot's
    /// own layer (what its build added and changed; removals as overlayfs whiteouts).
    #[serde(skip)]
    pub rootfs: PathBuf,
    /// The base image's rootfs under the snapshot's layer (the sandbox mounts both as an
    /// overlay); `None` for a snapshot that is a whole tree (built before layers). Kept
    /// relative to the store when the base is in it; absolute when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<PathBuf>,
}

impl Snapshot {
    /// The image name of a job type's snapshot.
    pub fn image_name(job_type: &str) -> String {
        format!("tako-vm-{job_type}:latest")
    }

    /// First 12 hex of the key (like the reference's image digests).
    pub fn short_digest(&self) -> &str {
        &self.key[..12]
    }
}

/// Errors of snapshot building and resolution.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Production mode and no snapshot.
    #[error("job type '{0}' is not built and production mode does not build on first use: run `tako-vm build {0}` or POST /job-types/{0}/build")]
    NotBuilt(String),
    /// Invalid input (requirements, shared_code).
    #[error("{0}")]
    Invalid(String),
    /// The base image is unavailable.
    #[error("base image {reference}: {detail}")]
    Base {
        /// Reference.
        reference: String,
        /// Why.
        detail: String,
    },
    /// uv is missing.
    #[error("uv not found: {0} (pip install uv, or set uv_path)")]
    Uv(String),
    /// The disk of the snapshot store is full (what was being written).
    #[error("no space left on device while writing {0}; free disk space (tako-vm gc) and retry")]
    DiskFull(String),
    /// The install failed; `stderr` is uv's.
    #[error("building job type '{name}' failed ({status}): {stderr}")]
    BuildFailed {
        /// Job type.
        name: String,
        /// How the builder ended.
        status: String,
        /// Tail of uv's stderr.
        stderr: String,
    },
    /// The builder sandbox could not run.
    #[error("builder sandbox: {0}")]
    Sandbox(String),
    /// Local I/O.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// Wraps an I/O error, recognising a full disk (or a full quota).
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> SnapshotError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                SnapshotError::DiskFull(path.display().to_string())
            }
            _ => SnapshotError::Io {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::io(op, path, source)
}

/// The snapshot store.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    pub(crate) root: PathBuf,
    /// How many unnamed snapshots (runtime-requirement snapshots, superseded builds) stay
    /// after a runtime-requirement build; see [`SnapshotStore::keep_unnamed`].
    keep_unnamed: usize,
    /// Build whole trees, never layers (see [`SnapshotStore::whole_trees`]).
    pub(crate) whole_trees: bool,
}

/// Default of [`SnapshotStore::keep_unnamed`].
pub const KEEP_UNNAMED: usize = 32;

/// Opens (creating) the lock file `path` and takes `flock(op)` on it; the lock lasts as long
/// as the returned file.
///
/// An existing file is opened read-only (`flock` needs no more), so a lock file another user
/// made (root running `tako-vm gc` on the service's store, say) does not lock the service out.
pub fn locked(path: &Path, op: libc::c_int) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?,
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a lock file",
            path.display()
        )));
    }
    // SAFETY: flock(2) on a descriptor owned by `f`, which outlives the call.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

pub(crate) struct Lock(fs::File);

impl Lock {
    pub(crate) fn acquire(path: &Path) -> Result<Lock, SnapshotError> {
        locked(path, libc::LOCK_EX)
            .map(Lock)
            .map_err(io_err("lock", path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking the descriptor we own; closing it would unlock as well.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// sha256 hex of a file's contents.
fn file_sha256(p: &Path) -> Result<String, SnapshotError> {
    let bytes = fs::read(p).map_err(|e| {
        SnapshotError::Invalid(format!(
            "shared_code file {} cannot be read: {e}",
            p.display()
        ))
    })?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The content key of a snapshot.
pub fn snapshot_key(
    spec: &JobTypeSpec,
    base_digest: &str,
    uv_version: &str,
) -> Result<String, SnapshotError> {
    let mut reqs = spec.requirements.clone();
    reqs.sort();
    reqs.dedup();
    let mut shared = Vec::new();
    for p in &spec.shared_code {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| {
                SnapshotError::Invalid(format!("bad shared_code path {}", p.display()))
            })?;
        shared.push((name, file_sha256(p)?));
    }
    shared.sort();
    let doc = serde_json::json!({
        "base_digest": base_digest,
        "python_version": spec.python_version,
        "requirements": reqs,
        "uv_version": uv_version,
        "shared_code": shared,
        "environment": valid_environment(&spec.environment),
    });
    Ok(hex::encode(Sha256::digest(doc.to_string().as_bytes())))
}

/// A shared hold on a snapshot for as long as sandboxes run on it: `gc` never removes a held
/// snapshot. Released when dropped.
pub struct SnapshotUse {
    _lock: fs::File,
}

impl std::fmt::Debug for SnapshotUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotUse")
    }
}

impl SnapshotStore {
    fn use_lock(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("use-{key}"))
    }

    /// Holds the snapshot of `key` against `gc`; `None` when it does not exist (any more).
    /// The existence check comes after the lock, so a snapshot `gc` removed meanwhile is
    /// never handed out.
    pub fn hold(&self, key: &str) -> Option<SnapshotUse> {
        if key.is_empty() || key.contains(['/', '.']) {
            return None;
        }
        let f = locked(&self.use_lock(key), libc::LOCK_SH).ok()?;
        self.dir(key)
            .join("rootfs")
            .is_dir()
            .then_some(SnapshotUse { _lock: f })
    }

    /// Opens (creating) the store under `root` (the image store's directory).
    pub fn open(root: impl Into<PathBuf>) -> Result<SnapshotStore, SnapshotError> {
        let root = root.into().join("snapshots");
        for d in ["names", "locks"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        Ok(SnapshotStore {
            root,
            keep_unnamed: KEEP_UNNAMED,
            whole_trees: false,
        })
    }

    /// Keeps at most `n` unnamed snapshots (the most recently used) after each
    /// runtime-requirement build: every distinct `requirements` list of an API caller makes
    /// one, and without a bound they would fill the disk until an operator ran `gc`.
    pub fn keep_unnamed(mut self, n: usize) -> SnapshotStore {
        self.keep_unnamed = n;
        self
    }

    /// Builds snapshots as whole trees (hard-link clones of their base), never as layers:
    /// what a build falls back to where layers are not supported
    /// ([`crate::layers_supported`]); tests use it to cover that path on any host.
    pub fn whole_trees(mut self, yes: bool) -> SnapshotStore {
        self.whole_trees = yes;
        self
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Loads the snapshot of `key` when it exists.
    pub fn by_key(&self, key: &str) -> Option<Snapshot> {
        let dir = self.dir(key);
        let bytes = fs::read(dir.join("snapshot.json")).ok()?;
        let mut s: Snapshot = serde_json::from_slice(&bytes).ok()?;
        s.rootfs = dir.join("rootfs");
        if let (Some(l), Some(store)) = (&s.lower, self.root.parent()) {
            s.lower = Some(store.join(l));
        }
        // A layer with nothing in it (a job type without requirements or shared code):
        // runs use the base itself, no overlay.
        if s.lower.is_some() && fs::read_dir(&s.rootfs).ok()?.next().is_none() {
            s.rootfs = s.lower.take()?;
        }
        s.rootfs.is_dir().then_some(s)
    }

    /// The snapshot `tako-vm-<job_type>:latest` currently names.
    pub fn status(&self, job_type: &str) -> Option<Snapshot> {
        let key = fs::read_to_string(self.root.join("names").join(job_type)).ok()?;
        self.by_key(key.trim())
    }

    /// Named snapshots: (job type, snapshot).
    pub fn list(&self) -> Vec<(String, Snapshot)> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("names")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue; // a name being written (crate::durable::write_file)
                }
                if let Some(s) = self.status(&name) {
                    out.push((name, s));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn set_name(&self, job_type: &str, key: &str) -> Result<(), SnapshotError> {
        let p = self.root.join("names").join(job_type);
        if fs::read_to_string(&p).is_ok_and(|k| k.trim() == key) {
            return Ok(());
        }
        // Two threads may name the same snapshot at once; a crash leaves one name whole.
        crate::durable::write_file(&p, key.as_bytes()).map_err(io_err("write", &p))
    }

    /// The snapshot to run a job type on. With `may_build` (development mode) a missing or
    /// outdated snapshot is built now (concurrent callers share the build); without it
    /// (production mode) only an existing build is used.
    pub fn resolve(
        &self,
        spec: &JobTypeSpec,
        host: &dyn BuildHost,
        may_build: bool,
    ) -> Result<Snapshot, SnapshotError> {
        if !may_build {
            return self
                .status(&spec.name)
                .ok_or_else(|| SnapshotError::NotBuilt(spec.name.clone()));
        }
        self.build(spec, host)
    }

    /// Builds the job type's snapshot unless one with the same key exists, and names it
    /// `tako-vm-<name>:latest`.
    pub fn build(
        &self,
        spec: &JobTypeSpec,
        host: &dyn BuildHost,
    ) -> Result<Snapshot, SnapshotError> {
        let (s, _) = self.build_keyed(spec, host, CacheScope::Shared)?;
        self.set_name(&spec.name, &s.key)?;
        Ok(s)
    }

    /// A snapshot of the job type plus per-request `requirements` (validated as in spec
    /// §2.7), cached by the same key: a repeated request installs nothing. Not named.
    pub fn resolve_with_requirements(
        &self,
        spec: &JobTypeSpec,
        extra: &[String],
        host: &dyn BuildHost,
    ) -> Result<Snapshot, SnapshotError> {
        validate_requirements(extra).map_err(SnapshotError::Invalid)?;
        let mut s = spec.clone();
        s.requirements.extend(extra.iter().cloned());
        let (snap, built) = self.build_keyed(&s, host, CacheScope::Private)?;
        // Least recently used goes first: this one was used now.
        let dir = self.dir(&snap.key);
        let _ = nix::sys::stat::utimensat(
            None,
            &dir,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
        // Only a new snapshot can take the count over the bound: a cache hit (every repeated
        // request) costs the touch alone.
        if built {
            if let Err(e) = self.prune_unnamed(self.keep_unnamed, &snap.key) {
                host.step(&format!(
                    "removing old runtime-requirement snapshots failed: {e}"
                ));
            }
        }
        Ok(snap)
    }

    /// Removes unnamed snapshots but the `keep` most recently used (by their directory's
    /// mtime) and `current`; held ones stay. Returns how many were removed.
    pub fn prune_unnamed(&self, keep: usize, current: &str) -> Result<usize, SnapshotError> {
        let named: Vec<String> = self.list().into_iter().map(|(_, s)| s.key).collect();
        let rd = fs::read_dir(&self.root).map_err(io_err("read", &self.root))?;
        let mut unnamed: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let snapshot = !name.starts_with('.')
                    && name.len() == 64
                    && name.bytes().all(|b| b.is_ascii_hexdigit())
                    && !named.contains(&name);
                let md = e.metadata().ok().filter(|m| m.is_dir())?;
                snapshot.then(|| (md.modified().unwrap_or(std::time::UNIX_EPOCH), name))
            })
            .collect();
        unnamed.sort_by_key(|u| std::cmp::Reverse(u.0));
        let mut removed = 0;
        for (_, name) in unnamed
            .into_iter()
            .filter(|(_, n)| n != current)
            .skip(keep.saturating_sub(1))
        {
            removed += usize::from(self.remove_unheld(&name)?);
        }
        Ok(removed)
    }

    /// Removes snapshot `name` unless a sandbox holds it (or its lock cannot be taken).
    fn remove_unheld(&self, name: &str) -> Result<bool, SnapshotError> {
        // The exclusive lock stays while it is removed, so nobody can take a hold on a
        // half-removed tree.
        let Ok(_removing) = locked(&self.use_lock(name), libc::LOCK_EX | libc::LOCK_NB) else {
            return Ok(false);
        };
        let dir = self.dir(name);
        tree::remove(&dir).map_err(io_err("remove", &dir))?;
        let _ = fs::remove_file(self.use_lock(name));
        Ok(true)
    }

    fn build_keyed(
        &self,
        spec: &JobTypeSpec,
        host: &dyn BuildHost,
        cache: CacheScope,
    ) -> Result<(Snapshot, bool), SnapshotError> {
        validate_requirements(&spec.requirements).map_err(SnapshotError::Invalid)?;
        let reference = spec.base_reference();
        let base = host
            .base_image(&reference, true)
            .map_err(|detail| SnapshotError::Base {
                reference: reference.clone(),
                detail,
            })?;
        let (uv, uv_version) = host.uv()?;
        let key = snapshot_key(spec, &base.digest, &uv_version)?;
        if let Some(s) = self.by_key(&key) {
            return Ok((s, false));
        }
        if let Err(e) = crate::bytecode::compile_base(host, &base) {
            // Not fatal: the snapshot works without it, only slower; tried again next time.
            host.step(&format!(
                "byte-compiling the base image's Python failed: {e}"
            ));
        }
        let lock_path = self.root.join("locks").join(format!("{key}.lock"));
        let _lock = Lock::acquire(&lock_path)?;
        if let Some(s) = self.by_key(&key) {
            return Ok((s, false)); // built by whoever held the lock
        }
        let staging = self
            .root
            .join(format!(".staging-{key}-{}", std::process::id()));
        let _ = tree::remove(&staging);
        let res = self.build_into(
            spec,
            host,
            &base,
            &reference,
            &uv,
            &uv_version,
            &key,
            &staging,
            cache,
        );
        if res.is_err() {
            // As the host may: what the sandbox user wrote there, an unprivileged server
            // could not delete itself.
            let _ = host.owner().discard(&staging);
        }
        res?;
        let dest = self.dir(&key);
        // build_into flushed the staging tree (crate::durable).
        crate::durable::rename(&staging, &dest).map_err(io_err("publish", &dest))?;
        self.by_key(&key)
            .map(|s| (s, true))
            .ok_or_else(|| SnapshotError::Sandbox("published snapshot unreadable".into()))
    }

    /// Removes snapshots no name points at, and stale staging directories (what a dead
    /// build's sandbox user wrote, removed through `owner`). Returns the base image digests
    /// the remaining snapshots use (keep them in the image store).
    pub fn gc(&self, owner: &dyn SandboxOwner) -> Result<(usize, Vec<String>), SnapshotError> {
        let named: Vec<String> = self.list().into_iter().map(|(_, s)| s.key).collect();
        let mut removed = 0;
        let mut bases = Vec::new();
        let rd = fs::read_dir(&self.root).map_err(io_err("read", &self.root))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if matches!(name.as_str(), "names" | "locks" | "uv-cache") {
                continue;
            }
            if name == crate::pyc::CACHE_DIR || name == crate::dists::STORE_DIR {
                continue; // pruned below, once the unnamed snapshots are gone
            }
            if named.contains(&name) {
                if let Some(s) = self.by_key(&name) {
                    bases.push(s.base_digest);
                }
                continue;
            }
            if let Some(rest) = name.strip_prefix(".staging-") {
                // Only builds of dead processes.
                let pid = rest.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
                    continue;
                }
            }
            // A snapshot sandboxes run on is held (shared): skip it, as one whose lock cannot
            // be taken at all. Staging trees are never held.
            if name.starts_with('.') {
                owner
                    .discard(&e.path())
                    .map_err(io_err("remove", &e.path()))?;
                removed += 1;
            } else {
                // Read first: a snapshot that stays (held) keeps its base image too.
                let kept = self.by_key(&name);
                match self.remove_unheld(&name)? {
                    true => removed += 1,
                    false => bases.extend(kept.map(|s| s.base_digest)),
                }
            }
        }
        // Pruning the bytecode cache while a build links out of it could take entries from
        // under it: only when no build holds the caches (the next gc prunes otherwise).
        if let Ok(_caches) = locked(&self.caches_lock(), libc::LOCK_EX | libc::LOCK_NB) {
            // The distribution store first: its entries hold `.pyc` files of the cache.
            let dists = self.root.join(crate::dists::STORE_DIR);
            crate::dists::prune(&dists).map_err(io_err("prune", &dists))?;
            let cache = self.root.join(crate::pyc::CACHE_DIR);
            crate::pyc::prune(&cache).map_err(io_err("prune", &cache))?;
        }
        Ok((removed, bases))
    }

    /// `<root>/locks/caches`: held shared by every build that uses the shared build caches
    /// (uv's and the bytecode cache), exclusively while they are pruned or cleared.
    fn caches_lock(&self) -> PathBuf {
        self.root.join("locks").join("caches")
    }

    /// A shared hold on the build caches, for as long as the returned file lives.
    pub fn hold_caches(&self) -> Result<fs::File, SnapshotError> {
        let path = self.caches_lock();
        locked(&path, libc::LOCK_SH).map_err(io_err("lock", &path))
    }

    /// Empties the build caches that job-type builds share: uv's download cache
    /// (`<root>/snapshots/uv-cache`, written by the builder sandboxes' user, so removed
    /// through `owner`) and the bytecode cache. Snapshots keep what they hold; the next build
    /// downloads and compiles again. Refuses while a build uses them. Returns the bytes of
    /// the files that were in no snapshot (what removing them freed).
    pub fn clear_caches(&self, owner: &dyn SandboxOwner) -> Result<u64, SnapshotError> {
        let path = self.caches_lock();
        let _caches = locked(&path, libc::LOCK_EX | libc::LOCK_NB).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                SnapshotError::Invalid(
                    "a job-type build is using the build caches; run this again when it has finished"
                        .into(),
                )
            } else {
                io_err("lock", &path)(e)
            }
        })?;
        let mut freed = 0;
        // Each is removed before the next is counted: a `.pyc` in both the bytecode cache
        // and the distribution store has one link left when the store is counted, so it
        // is counted once; a file a snapshot links never gets to one link.
        for name in ["uv-cache", crate::pyc::CACHE_DIR, crate::dists::STORE_DIR] {
            let dir = self.root.join(name);
            if dir.symlink_metadata().is_err() {
                continue;
            }
            // Best effort: what cannot be read is still removed below.
            let _ = crate::tree::walk(&dir, |e, _| {
                if let Ok(m) = e.metadata() {
                    if m.is_file() && std::os::unix::fs::MetadataExt::nlink(&m) == 1 {
                        freed += m.len();
                    }
                }
                Ok(true)
            });
            owner.discard(&dir).map_err(io_err("remove", &dir))?;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    fn fake_snapshot(store: &SnapshotStore, key: &str) {
        let dir = store.root.join(key);
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let s = Snapshot {
            key: key.into(),
            job_type: String::new(),
            base_reference: "python:3.11-slim".into(),
            base_digest: "sha256:00".into(),
            python_version: "3.11".into(),
            requirements: vec!["six".into()],
            uv_version: "uv 0".into(),
            env: vec![],
            created: 0,
            rootfs: PathBuf::new(),
            lower: None,
        };
        fs::write(dir.join("snapshot.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    }

    #[test]
    fn gc_skips_a_held_snapshot_and_removes_it_once_released() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        fake_snapshot(&store, "aa11");
        fake_snapshot(&store, "bb22");
        let held = store.hold("aa11").expect("exists");
        let (removed, bases) = store.gc(&DirectOwner(0, 0)).unwrap();
        assert_eq!(removed, 1, "only the unheld one");
        // A snapshot is a layer over its base: the image must stay while a run uses it.
        assert_eq!(bases, ["sha256:00"], "the held snapshot's base image");
        assert!(store.by_key("aa11").is_some());
        assert!(store.by_key("bb22").is_none());
        // Another hold of the same snapshot (a second sandbox) is fine.
        let again = store.hold("aa11").expect("shared");
        drop(held);
        assert_eq!(
            store.gc(&DirectOwner(0, 0)).unwrap().0,
            0,
            "still held by the second run"
        );
        drop(again);
        assert_eq!(store.gc(&DirectOwner(0, 0)).unwrap().0, 1);
        assert!(
            store.hold("aa11").is_none(),
            "a removed snapshot is never handed out"
        );
        assert!(store.hold("../x").is_none());
    }

    /// A snapshot whose hold lock cannot be taken at all is kept: gc cannot tell whether a
    /// sandbox runs on it.
    #[test]
    fn gc_keeps_a_snapshot_whose_lock_cannot_be_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        fake_snapshot(&store, "cc33");
        fs::create_dir_all(store.use_lock("cc33")).unwrap();
        assert_eq!(store.gc(&DirectOwner(0, 0)).unwrap().0, 0);
        assert!(store.by_key("cc33").is_some());
    }

    /// Runtime-requirement snapshots are bounded: the least recently used unnamed ones go,
    /// never a named, held or the current one.
    #[test]
    fn prune_keeps_the_most_recently_used_unnamed_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        let k = |n: u64| format!("{n:064x}");
        for n in 0..6 {
            fake_snapshot(&store, &k(n));
            let t = nix::sys::time::TimeSpec::new(1_000_000 + n as i64 * 10, 0);
            nix::sys::stat::utimensat(
                None,
                &store.root.join(k(n)),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        fs::write(store.root.join("names/jt"), k(0)).unwrap(); // named, and the oldest
        let held = store.hold(&k(2)).unwrap();
        // Keep 2: the current one (the oldest unnamed here, just used) and the newest other.
        let removed = store.prune_unnamed(2, &k(1)).unwrap();
        let left: Vec<bool> = (0..6).map(|n| store.by_key(&k(n)).is_some()).collect();
        assert_eq!(
            left,
            [true, true, true, false, false, true],
            "removed {removed}"
        );
        assert_eq!(removed, 2);
        drop(held);
        assert_eq!(store.prune_unnamed(1, &k(1)).unwrap(), 2);
        assert!(store.by_key(&k(0)).is_some() && store.by_key(&k(1)).is_some());
        assert_eq!(store.list().len(), 1);
    }
}
