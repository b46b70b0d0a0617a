//! The host side of job-type snapshot builds: base images from the [`ImageStore`] (pulled
//! through the [`Registry`] when missing), uv from the host, and the builder sandbox on the
//! sandbox core (network on, memory/CPU limits, startup timeout, writable binds).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rootfs_builder::{
    BaseImage, BuildHost, InstallOutcome, InstallRun, SandboxOwner, SnapshotError,
};

use super::{client, unpack, ImageStore, Progress, Registry};
use crate::sandbox::owner::Ownership;
use crate::sandbox::spec::{Bind, Layers, Limits, NetworkSpec, SandboxSpec};
use crate::sandbox::{host, RunOptions, Runner};

/// Limits and sources of builder sandboxes.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// uv binary (`uv_path`); default: `TAKO_VM_UV_PATH`, then `uv` on `PATH`.
    pub uv_path: Option<PathBuf>,
    /// Memory limit of a build.
    pub memory_bytes: u64,
    /// CPU limit of a build.
    pub cpus: f64,
    /// Build timeout (the job type's `startup_timeout` scale; installs can be slow).
    pub timeout: Duration,
    /// Offline builds: install only from this directory of wheels (`--find-links DIR
    /// --no-index`), e.g. on air-gapped hosts and in tests.
    pub find_links: Option<PathBuf>,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig {
            uv_path: std::env::var_os("TAKO_VM_UV_PATH").map(PathBuf::from),
            memory_bytes: 2 << 30,
            cpus: 2.0,
            timeout: Duration::from_secs(600),
            find_links: std::env::var_os("TAKO_VM_UV_FIND_LINKS").map(PathBuf::from),
        }
    }
}

/// [`BuildHost`] on the sandbox core and the image store.
pub struct SandboxBuildHost<'a> {
    /// Sandbox runner.
    pub runner: &'a Runner,
    /// Image store (base images).
    pub store: &'a ImageStore,
    /// Registry client for missing base images.
    pub registry: &'a Registry,
    /// Build settings.
    pub config: BuilderConfig,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// The uv found and copied into the store (only a success is kept: a missing uv or a
    /// full disk may be mended while a server runs).
    uv: Mutex<Option<(PathBuf, String)>>,
    /// Hand-over of the build's directories to the sandbox user and back.
    owner: Ownership,
}

impl<'a> SandboxBuildHost<'a> {
    /// A build host.
    pub fn new(
        runner: &'a Runner,
        store: &'a ImageStore,
        registry: &'a Registry,
        config: BuilderConfig,
        progress: &'a dyn Progress,
    ) -> Self {
        SandboxBuildHost {
            runner,
            store,
            registry,
            config,
            progress,
            uv: Mutex::new(None),
            owner: Ownership::new(&runner.helper_exe, &runner.idmap),
        }
    }
}

fn is_script(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| &head == b"#!")
}

/// Finds the uv binary: the configured path, else `uv` on `PATH`; a wrapper script (pyenv
/// shims) is resolved through the `uv` Python package that installed it.
pub fn find_uv(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("uv_path {} does not exist", p.display()))
        };
    }
    let found = crate::sandbox::host::find_program("uv").ok_or("no uv on PATH")?;
    if !is_script(&found) {
        return Ok(found.canonicalize().unwrap_or(found));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import uv; print(uv.find_uv_bin())"])
        .output()
        .map_err(|e| format!("{} is a script and python3 failed: {e}", found.display()))?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && p.is_file() && !is_script(&p) {
        Ok(p)
    } else {
        Err(format!(
            "{} is a wrapper script; set uv_path to the uv binary",
            found.display()
        ))
    }
}

/// uv's copy in the store and its version: the one `kept` while that copy is still there
/// (`tako-vm gc` removes copies of other uv versions than its own idea of the host's),
/// else `find()`'s, kept when found. A failure is not kept: a missing uv or a full disk
/// may be mended while a server runs.
pub fn kept_uv(
    kept: &Mutex<Option<(PathBuf, String)>>,
    find: impl FnOnce() -> Result<(PathBuf, String), SnapshotError>,
) -> Result<(PathBuf, String), SnapshotError> {
    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(uv) = kept.as_ref().filter(|(copy, _)| copy.is_file()) {
        return Ok(uv.clone());
    }
    let uv = find()?;
    *kept = Some(uv.clone());
    Ok(uv)
}

/// The version uv `p` reports (`0.13.9`).
pub fn uv_version(p: &Path) -> Result<String, String> {
    let out = std::process::Command::new(p)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.split_whitespace()
        .nth(1)
        .map(String::from)
        .ok_or_else(|| format!("{} --version printed {v:?}", p.display()))
}

/// Where the store keeps the tools builder sandboxes get (copies of uv, `uv-<version>`).
fn tools_dir(store: &ImageStore) -> PathBuf {
    store.root().join("tools")
}

/// Removes what the store's tools directory holds that no build can use: temporary copies
/// left by processes that are gone (`durable::is_stale_temp`) and, when the host's uv version is
/// known (`current`), the copies of other uv versions (one per uv upgrade, tens of MB
/// each). Without `current` no version is removed. Returns the files and bytes removed.
pub fn gc_tools(store: &ImageStore, current: Option<&str>) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(tools_dir(store)) else {
        return (0, 0);
    };
    let (mut files, mut bytes) = (0, 0);
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let unused = rootfs_builder::durable::is_stale_temp(&name)
            || name
                .strip_prefix("uv-")
                .is_some_and(|v| current.is_some_and(|c| c != v));
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if unused && m.is_file() && std::fs::remove_file(e.path()).is_ok() {
            files += 1;
            bytes += m.len();
        }
    }
    (files, bytes)
}

/// Copies `from` to `to` (mode 0755) atomically and durably (`durable::write_file_mode`: a
/// full disk keeps no partial copy, a crash no torn one under the name).
fn install_copy(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    let dir = to.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(|e| SnapshotError::io("create", dir, e))?;
    let bytes = std::fs::read(from).map_err(|e| SnapshotError::io("read", from, e))?;
    rootfs_builder::durable::write_file_mode(to, &bytes, 0o755)
        .map_err(|e| SnapshotError::io("copy uv to", to, e))
}

impl BuildHost for SandboxBuildHost<'_> {
    fn base_image(&self, reference: &str, may_fetch: bool) -> Result<BaseImage, String> {
        let rec = match self.store.lookup(reference).map_err(|e| e.to_string())? {
            Some(r) => r,
            None if may_fetch => {
                self.progress
                    .step(&format!("pulling base image {reference}"));
                client::pull(self.registry, self.store, reference, self.progress)
                    .map_err(|e| e.to_string())?
            }
            None => return Err(format!("not present locally (tako-vm pull {reference})")),
        };
        let rootfs =
            unpack::ensure_rootfs(self.store, &rec, self.progress).map_err(|e| e.to_string())?;
        Ok(BaseImage {
            digest: rec.digest.clone(),
            rootfs,
            env: rec.env_pairs(),
        })
    }

    fn uv(&self) -> Result<(PathBuf, String), SnapshotError> {
        kept_uv(&self.uv, || {
            let p = find_uv(self.config.uv_path.as_deref()).map_err(SnapshotError::Uv)?;
            let version = uv_version(&p).map_err(SnapshotError::Uv)?;
            // The sandbox's (unprivileged) root must be able to reach the bind source: a
            // copy in the store, not e.g. /root/.local/bin/uv.
            let copy = tools_dir(self.store).join(format!("uv-{version}"));
            if !copy.is_file() {
                install_copy(&p, &copy)?;
            }
            Ok((copy, version))
        })
    }

    fn owner(&self) -> &dyn SandboxOwner {
        &self.owner
    }

    fn find_links(&self) -> Option<PathBuf> {
        self.config.find_links.clone()
    }

    fn step(&self, message: &str) {
        self.progress.step(message);
    }

    fn run(&self, run: &InstallRun) -> Result<InstallOutcome, String> {
        let spec = SandboxSpec {
            rootfs: run.rootfs.clone(),
            argv: run.argv.clone(),
            env: run.env.clone(),
            cwd: "/".into(),
            hostname: "tako-build".into(),
            limits: Limits {
                memory_bytes: Some(self.config.memory_bytes),
                cpus: Some(self.config.cpus),
                pids: Some(1024),
                nofile: (8192, 8192),
                nproc: (4096, 4096),
                fsize: 4 << 30,
                tmpfs_bytes: 512 << 20,
            },
            injected: vec![],
            output: None,
            timeout_ms: self.config.timeout.as_millis() as u64,
            kill_grace_ms: 2000,
            tmp_dirs: run.tmp_dirs.clone(),
            network: run.network.then(NetworkSpec::default),
            binds: run
                .binds
                .iter()
                .map(|b| Bind {
                    host: b.host.clone(),
                    target: b.target.clone(),
                    writable: b.writable,
                })
                .collect(),
            layers: run.layers.as_ref().map(|l| Layers {
                lower: vec![l.lower.clone()],
                upper: Some((l.upper.clone(), l.work.clone())),
                writable: l.writable.clone(),
            }),
        };
        let opts = RunOptions {
            run_id: host::new_run_id(),
            host_deadline: self.config.timeout + Duration::from_secs(60),
            stdout_keep: 256 << 10,
            stderr_keep: 256 << 10,
            tee: false,
            artifacts_dir: None,
            ..RunOptions::default()
        };
        let o = self.runner.run(&spec, &opts).map_err(|e| e.to_string())?;
        if let (Some(e), None) = (&o.setup_error, &o.exit) {
            return Err(format!("setup failed: {e}"));
        }
        let status = match &o.exit {
            Some(x) if x.timed_out => {
                format!("timed out after {} s", self.config.timeout.as_secs())
            }
            _ if o.usage.oom_killed == Some(true) => "out of memory".to_string(),
            Some(x) => match (x.code, x.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(s)) => format!("killed by signal {s}"),
                _ => "ended".into(),
            },
            None => "killed by the host deadline".into(),
        };
        let success = o
            .exit
            .as_ref()
            .is_some_and(|x| x.code == Some(0) && !x.timed_out);
        Ok(InstallOutcome {
            success,
            exit_code: o
                .exit
                .as_ref()
                .filter(|x| !x.timed_out)
                .and_then(|x| x.code),
            status,
            stdout: o.stdout.finish(256 << 10).text,
            stderr: o.stderr.finish(256 << 10).text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept uv is found again when its copy is gone; a failure is never kept.
    #[test]
    fn kept_uv_is_found_again_when_its_copy_is_gone_and_failures_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("uv-1.0.0");
        let kept = Mutex::new(None);
        let calls = std::cell::Cell::new(0);
        let find = || {
            calls.set(calls.get() + 1);
            std::fs::write(&copy, b"uv")
                .map(|_| (copy.clone(), "1.0.0".to_string()))
                .map_err(|e| SnapshotError::io("copy uv to", &copy, e))
        };
        let missing = || Err(SnapshotError::Uv("no uv on PATH".into()));
        assert!(matches!(kept_uv(&kept, missing), Err(SnapshotError::Uv(_))));
        assert_eq!(kept_uv(&kept, find).unwrap().0, copy);
        assert_eq!(kept_uv(&kept, find).unwrap().0, copy);
        assert_eq!(calls.get(), 1, "kept while the copy is there");
        std::fs::remove_file(&copy).unwrap();
        assert_eq!(kept_uv(&kept, find).unwrap().0, copy);
        assert_eq!(calls.get(), 2, "found again once the copy was gone");
        assert!(copy.is_file());
    }
}
