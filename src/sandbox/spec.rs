//! What one sandboxed run needs, as plain data.
//!
//! A [`SandboxSpec`] is built on the host, serialised and sent to the in-namespace side
//! (`child.rs`) over the control socket. It carries everything the inside needs, so the
//! inside never reads host configuration or environment.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// uid and gid the payload runs as inside the sandbox (`sandbox` user of the contract).
pub const SANDBOX_UID: u32 = 1000;
/// gid of the payload inside the sandbox.
pub const SANDBOX_GID: u32 = 1000;

/// Resource limits of one run. `None` means "no limit of that kind".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (also the memory+swap limit: no swap).
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (cfs quota = cores × period).
    pub cpus: Option<f64>,
    /// Maximum number of tasks in the sandbox's cgroup.
    pub pids: Option<u64>,
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: (u64, u64),
    /// RLIMIT_NPROC (soft, hard).
    pub nproc: (u64, u64),
    /// RLIMIT_FSIZE in bytes.
    pub fsize: u64,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmpfs_bytes: u64,
}

impl Limits {
    /// Refuses values that would not limit at all. libcgroups leaves a memory limit of 0
    /// unset and writes a pids limit of 0 as `max`, and a tmpfs of size 0 has no size limit:
    /// each would run the sandbox without that limit, silently.
    pub fn check(&self) -> Result<(), String> {
        if self.memory_bytes == Some(0) {
            return Err("a memory limit of 0 would mean no limit".into());
        }
        if self.pids == Some(0) {
            return Err("a pids limit of 0 would mean no limit".into());
        }
        if self.cpus.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(format!(
                "a CPU limit must be a positive number of cores, not {}",
                self.cpus.unwrap_or_default()
            ));
        }
        if self.tmpfs_bytes == 0 {
            return Err("a /tmp size of 0 would mean no size limit".into());
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Some(512 << 20),
            cpus: Some(1.0),
            pids: Some(100),
            nofile: (256, 256),
            nproc: (50, 50),
            fsize: 104_857_600,
            tmpfs_bytes: 100 << 20,
        }
    }
}

/// A small file placed in a read-only tmpfs directory inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InjectedFile {
    /// File name inside `dir` (no `/`).
    pub name: String,
    /// File contents (base64 on the wire: a JSON array of numbers is ~4× the size and
    /// slow to parse, and code, input and the CA bundle can be large).
    #[serde(with = "base64_bytes")]
    pub contents: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A read-only directory assembled from injected files (e.g. `/code`, `/input`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InjectedDir {
    /// Absolute path inside the sandbox; must exist as a directory in the rootfs.
    pub path: String,
    /// Files in it (mode 0444).
    pub files: Vec<InjectedFile>,
}

/// How `/output` is provided and collected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputSpec {
    /// Size of the `/output` tmpfs in bytes.
    pub tmpfs_bytes: u64,
    /// Per-file artifact limit; larger files are skipped.
    pub max_file_bytes: u64,
    /// Cumulative limit; collection stops at the first file that would exceed it.
    pub max_total_bytes: u64,
    /// At most this many artifacts are collected (then collection stops), and the `/output`
    /// tmpfs holds at most [`OutputSpec::inodes`] entries: without a bound, 100 000 empty
    /// files (no bytes against the size limits) cost the host 35 s, 100 000 files in the
    /// run's artifact directory and a 17 MB record.
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

/// Default of [`OutputSpec::max_files`].
pub const MAX_ARTIFACTS: u32 = 1000;

fn default_max_files() -> u32 {
    MAX_ARTIFACTS
}

impl OutputSpec {
    /// Inodes of the `/output` tmpfs: room for the artifacts plus as many other entries
    /// (subdirectories, hidden files), which are never collected.
    pub fn inodes(&self) -> u64 {
        2 * u64::from(self.max_files) + 16
    }
}

/// Outbound network of a run. Absent: an empty network namespace (loopback only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkSpec {
    /// When non-empty, only these destinations (domain names or CIDRs) are reachable.
    pub allowed_hosts: Vec<String>,
}

/// A host directory or file bind-mounted into the sandbox (e.g. the builder sandbox's
/// install target, uv cache and uv binary). Applied before the rootfs is remounted
/// read-only; the target must already exist in the rootfs and is never reached through a
/// symlink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bind {
    /// Source on the host (trusted: chosen by tako-vm, never by user code).
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Read-write when true (the host side must be writable for the sandbox user's host
    /// uid, `IdMap::host_sandbox_uid`); read-only otherwise. Always `nosuid,nodev`.
    pub writable: bool,
}

/// Everything the inside of a sandbox needs for one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxSpec {
    /// Root filesystem directory on the host (mounted read-only).
    pub rootfs: PathBuf,
    /// argv of the payload; `argv[0]` is resolved against `PATH` from `env`.
    pub argv: Vec<String>,
    /// The complete environment of the payload (nothing is inherited from the host).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Hostname inside the sandbox (own UTS namespace).
    pub hostname: String,
    /// Limits.
    pub limits: Limits,
    /// Read-only injected directories (`/code`, `/input`).
    pub injected: Vec<InjectedDir>,
    /// `/output` collection, when the run follows the execution contract.
    pub output: Option<OutputSpec>,
    /// Execution-phase timeout in milliseconds (SIGTERM, then SIGKILL after `kill_grace_ms`).
    pub timeout_ms: u64,
    /// Grace between SIGTERM and SIGKILL on timeout.
    pub kill_grace_ms: u64,
    /// Directories created in `/tmp` (owned by the sandbox user) before the payload starts.
    pub tmp_dirs: Vec<String>,
    /// Outbound network (`network_enabled`); `None` means loopback only.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// Host paths bind-mounted into the sandbox (empty for user code runs).
    #[serde(default)]
    pub binds: Vec<Bind>,
    /// The rootfs as layers of an overlay (job-type snapshots over their base image, and
    /// their builds); `None`: `rootfs` is the whole tree.
    #[serde(default)]
    pub layers: Option<Layers>,
}

/// A rootfs made of layers: an overlay, mounted read-only (`nosuid,nodev`) on `rootfs`
/// inside the sandbox's own user and mount namespaces, with `userxattr` (whiteouts and
/// opaque directories as the kernel makes them in a user namespace).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Layers {
    /// Read-only layers under the top one, top first (a snapshot's base image).
    pub lower: Vec<PathBuf>,
    /// A build's writable layer and the overlay's work directory (same file system, both
    /// owned by an id mapped in the sandbox). With it, `rootfs` is only the mount point;
    /// without, `rootfs` is the top read-only layer.
    #[serde(default)]
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Directories inside that stay writable when the root is made read-only (a build's
    /// install directories); only with `upper`.
    #[serde(default)]
    pub writable: Vec<String>,
}

impl Layers {
    /// A run's layers: the rootfs over `lower` (top first); `None` when `lower` is empty
    /// (the rootfs is the whole tree).
    pub fn under(lower: Vec<PathBuf>) -> Option<Layers> {
        (!lower.is_empty()).then(|| Layers {
            lower,
            ..Layers::default()
        })
    }

    /// The overlay's mount options for a rootfs at `rootfs`. Paths that the legacy option
    /// syntax cannot carry (`,` `:` `\\` or a newline) are refused, never escaped.
    pub fn options(&self, rootfs: &Path) -> Result<String, String> {
        let mut lower: Vec<&Path> = Vec::new();
        if self.upper.is_none() {
            lower.push(rootfs);
        }
        lower.extend(self.lower.iter().map(PathBuf::as_path));
        if lower.is_empty() {
            return Err("a layered rootfs needs a read-only layer".into());
        }
        let text = |p: &Path| -> Result<String, String> {
            let s = p
                .to_str()
                .filter(|s| s.starts_with('/') && !s.contains([',', ':', '\\', '\n']))
                .ok_or_else(|| {
                    format!(
                        "layer path {} cannot be given to overlayfs (it must be absolute, without ',' ':' or '\\')",
                        p.display()
                    )
                })?;
            Ok(s.to_string())
        };
        let lowers: Result<Vec<String>, String> = lower.into_iter().map(text).collect();
        let mut o = format!("lowerdir={}", lowers?.join(":"));
        if let Some((upper, work)) = &self.upper {
            o.push_str(&format!(
                ",upperdir={},workdir={}",
                text(upper)?,
                text(work)?
            ));
        }
        o.push_str(",userxattr");
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overlay's options: the rootfs itself is the top layer of a run, only the mount
    /// point of a build; paths the option syntax would split are refused, not escaped.
    #[test]
    fn layer_options_are_built_and_unsplittable_paths_refused() {
        let run = Layers {
            lower: vec!["/s/images/ab/rootfs".into()],
            ..Layers::default()
        };
        assert_eq!(
            run.options(Path::new("/s/snapshots/k/rootfs")).unwrap(),
            "lowerdir=/s/snapshots/k/rootfs:/s/images/ab/rootfs,userxattr"
        );
        let build = Layers {
            lower: vec!["/b".into()],
            upper: Some(("/st/rootfs".into(), "/st/work".into())),
            writable: vec!["/usr/local".into()],
        };
        assert_eq!(
            build.options(Path::new("/st/merged")).unwrap(),
            "lowerdir=/b,upperdir=/st/rootfs,workdir=/st/work,userxattr"
        );
        for bad in ["/a,upperdir=/x", "/a:b", "relative", "/a\\b", "/a\nb"] {
            let l = Layers {
                lower: vec![bad.into()],
                ..Layers::default()
            };
            assert!(l.options(Path::new("/r")).is_err(), "{bad:?}");
        }
        assert!(Layers::default().options(Path::new("/r")).is_ok());
        let upper_only = Layers {
            upper: Some(("/u".into(), "/w".into())),
            ..Layers::default()
        };
        assert!(upper_only.options(Path::new("/r")).is_err());
    }

    /// Values that would switch a limit off are refused; the defaults pass.
    #[test]
    fn limits_that_would_not_limit_are_refused() {
        assert_eq!(Limits::default().check(), Ok(()));
        let off = |f: fn(&mut Limits)| {
            let mut l = Limits::default();
            f(&mut l);
            l.check()
        };
        assert!(off(|l| l.memory_bytes = Some(0)).is_err());
        assert!(off(|l| l.pids = Some(0)).is_err());
        assert!(off(|l| l.tmpfs_bytes = 0).is_err());
        assert!(off(|l| l.cpus = Some(0.0)).is_err());
        assert!(off(|l| l.cpus = Some(f64::NAN)).is_err());
        // No limit of a kind is said with None, and stays possible.
        assert_eq!(off(|l| l.memory_bytes = None), Ok(()));
        assert_eq!(off(|l| l.pids = None), Ok(()));
    }
}
