//! Per-run cgroups: memory (no swap), CPU quota and pids limits on cgroup v1 and v2, the OOM
//! verdict and usage read back from the cgroup, kill-all, removal and the start-up sweep.
//!
//! Layout: every run gets `<parent>/<run-id>`; `<parent>` defaults to `tako-vm`. On v1 the
//! same relative path exists under the `memory`, `cpu`, `cpuacct` and `pids` mounts (once per
//! hierarchy: `cpu,cpuacct` is often one mount); on v2 it lives under the unified root.
//! No freezer: every task of a run but the helper is in the run's pid namespace, which the
//! kernel kills as a whole when its init dies, so nothing can fork away during a kill. An unprivileged server on v2 uses its own
//! delegated cgroup (systemd `Delegate=yes`): it moves itself into a `supervisor` leaf and
//! puts the runs under `<own cgroup>/<parent>`.
//!
//! Why not libcgroups: the whole layer on youki's libcgroups 0.7 is built and tested on the
//! branch `libcgroups` (docs/benchmarks.md, round 9). On this cgroup-v1 host its v1 manager
//! adds 3.5-4.5 ms to every CLI start (twelve hardened procfs look-ups to build it, eight
//! hierarchies per run, the cpuset copy-down), and it always writes `devices.allow`, which
//! needs CAP_SYS_ADMIN. The few files a run needs are written here directly; every path is
//! built from our own run ids, never from sandbox input.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::spec::Limits;

/// The usual cgroup mount point.
pub const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a run uses.
pub const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup hierarchy we may write to.
    #[error("no writable cgroup for resource limits ({0}); run the server as root, give it a delegated cgroup v2 subtree (systemd Delegate=yes), or set allow_unlimited_sandboxes: true to run without limits")]
    Unavailable(String),
    /// A cgroup file operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// Which cgroup version drives the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy or hybrid hierarchy: one mount per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

/// Detected cgroup layout of this host for this process.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// v2: absolute directory holding the run cgroups.
    v2_base: PathBuf,
    /// v1: absolute directory holding the run cgroups, per controller.
    v1_bases: Vec<(String, PathBuf)>,
}

/// Usage read from a run's cgroup when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time of all tasks, milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// Peak memory in MiB.
    pub max_rss_mb: Option<f64>,
    /// Some(true) when the kernel OOM-killed a task of the run, Some(false) when it did not.
    pub oom_killed: Option<bool>,
}

/// True when `root` is a cgroup2 mount.
fn is_cgroup2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

impl Cgroups {
    /// Detects the hierarchy under [`ROOT`] and prepares `parent` (creating it if needed).
    pub fn detect(parent: &str) -> Result<Cgroups, CgroupError> {
        let root = Path::new(ROOT);
        let root_user = nix::unistd::geteuid().is_root();
        if is_cgroup2(root) {
            let own = own_v2_cgroup().unwrap_or_default();
            Self::detect_v2(root, parent, root_user, &own, std::process::id())
        } else {
            if !root_user {
                return Err(CgroupError::Unavailable(
                    "cgroup v1 limits need a root server; an unprivileged server needs cgroup v2 with a delegated subtree".into(),
                ));
            }
            Self::detect_v1(&v1_mount_points(), parent)
        }
    }

    /// v1: `mounts` maps controller names to their mount points.
    pub fn detect_v1(mounts: &[(String, PathBuf)], parent: &str) -> Result<Cgroups, CgroupError> {
        let parent = parent.trim_matches('/');
        let mut bases = Vec::new();
        for c in V1_CONTROLLERS {
            let Some((_, m)) = mounts.iter().find(|(n, _)| n == c) else {
                if c == "cpuacct" {
                    continue; // optional: the CPU time is then left out
                }
                return Err(CgroupError::Unavailable(format!(
                    "the v1 {c} controller is not mounted"
                )));
            };
            let base = m.join(parent);
            fs::create_dir_all(&base).map_err(|e| {
                CgroupError::Unavailable(format!("cannot create {}: {e}", base.display()))
            })?;
            bases.push((c.to_string(), base));
        }
        Ok(Cgroups {
            version: Version::V1,
            v2_base: PathBuf::new(),
            v1_bases: bases,
        })
    }

    /// v2 under `root`. A root server uses `<root>/<parent>`; an unprivileged one its own
    /// delegated cgroup `own` (from /proc/self/cgroup), moving process `me` into a leaf.
    pub fn detect_v2(
        root: &Path,
        parent: &str,
        root_user: bool,
        own: &str,
        me: u32,
    ) -> Result<Cgroups, CgroupError> {
        let parent = parent.trim_matches('/');
        let unavailable = |what: String| CgroupError::Unavailable(what);
        let needed = ["memory", "cpu", "pids"];
        let base = if root_user {
            let base = root.join(parent);
            enable_controllers(root, &needed).map_err(|e| unavailable(e.to_string()))?;
            base
        } else {
            let own_dir = root.join(own.trim_start_matches('/'));
            let procs = own_dir.join("cgroup.procs");
            if nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK).is_err() {
                return Err(unavailable(format!(
                    "{} is not delegated to this user",
                    own_dir.display()
                )));
            }
            // No internal processes: the server itself moves into a leaf of its own cgroup.
            let leaf = own_dir.join("supervisor");
            fs::create_dir_all(&leaf).map_err(|e| unavailable(e.to_string()))?;
            write(&leaf.join("cgroup.procs"), &me.to_string())?;
            enable_controllers(&own_dir, &needed).map_err(|e| unavailable(e.to_string()))?;
            own_dir.join(parent)
        };
        fs::create_dir_all(&base)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", base.display())))?;
        enable_controllers(&base, &needed).map_err(|e| unavailable(e.to_string()))?;
        Ok(Cgroups {
            version: Version::V2,
            v2_base: base,
            v1_bases: Vec::new(),
        })
    }

    /// The cgroup version in use.
    pub fn version(&self) -> Version {
        self.version
    }

    fn bases(&self) -> Vec<(String, PathBuf)> {
        match self.version {
            Version::V2 => vec![("".into(), self.v2_base.clone())],
            Version::V1 => self.v1_bases.clone(),
        }
    }

    /// Creates the (empty) cgroup of one run; add the first task with [`RunCgroup::add`],
    /// then apply the limits with [`RunCgroup::apply`].
    pub fn create(&self, run_id: &str) -> Result<RunCgroup, CgroupError> {
        if run_id.is_empty() || run_id.contains('/') || run_id.starts_with('.') {
            return Err(CgroupError::Io {
                op: "name",
                path: run_id.into(),
                source: io::Error::other("invalid run id"),
            });
        }
        let dirs: Vec<(String, PathBuf)> = self
            .bases()
            .into_iter()
            .map(|(c, b)| (c, b.join(run_id)))
            .collect();
        let mut run = RunCgroup {
            version: self.version,
            dirs: Vec::new(),
            removed: false,
        };
        for (c, d) in dirs {
            // Controllers mounted together (`cpu,cpuacct`) share one directory.
            if !run.dirs.iter().any(|(_, known)| *known == d) {
                fs::create_dir(&d).map_err(io_err("create", &d))?;
            }
            run.dirs.push((c, d));
        }
        Ok(run)
    }

    /// Removes leftovers of runs of crashed processes: every run cgroup whose name `is_dead`
    /// accepts is killed and removed (in every hierarchy). Returns how many runs were removed.
    ///
    /// Only the first hierarchy (`memory` on v1) is listed: a run's directory there is
    /// created first and removed last, so it exists whenever any of the run's directories
    /// does (one directory listing per start instead of four).
    pub fn sweep_dead(&self, is_dead: impl Fn(&str) -> bool) -> usize {
        let mut bases: Vec<PathBuf> = self.bases().into_iter().map(|(_, b)| b).collect();
        bases.dedup();
        let Some(Ok(rd)) = bases.first().map(fs::read_dir) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(e.file_type().is_ok_and(|t| t.is_dir()) && name != "supervisor" && is_dead(&name))
            {
                continue;
            }
            let mut removed = true;
            for base in bases.iter().rev() {
                let dir = base.join(&name);
                if dir.exists() {
                    kill_procs(&dir);
                    removed &= remove_dir_retry(&dir);
                }
            }
            n += usize::from(removed);
        }
        n
    }
}

/// Enables `controllers` for the children of `dir` (v2 `cgroup.subtree_control`).
fn enable_controllers(dir: &Path, controllers: &[&str]) -> io::Result<()> {
    let ctl = dir.join("cgroup.subtree_control");
    let have = fs::read_to_string(&ctl).unwrap_or_default();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !have.split_whitespace().any(|h| h == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&ctl, missing.join(" "))
}

/// The process's own v2 cgroup path (`0::/path` line of /proc/self/cgroup).
fn own_v2_cgroup() -> Option<String> {
    let s = fs::read_to_string("/proc/self/cgroup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::").map(String::from))
}

/// The cgroup of one run. Dropping it kills what is left and removes it.
pub struct RunCgroup {
    version: Version,
    /// (controller, directory); v2 has one entry with an empty controller name.
    dirs: Vec<(String, PathBuf)>,
    removed: bool,
}

impl RunCgroup {
    /// Each directory once (controllers mounted together share one), in creation order.
    fn unique_dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::with_capacity(self.dirs.len());
        for (_, d) in &self.dirs {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            Version::V1 => self
                .dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path()),
        }
    }

    /// Applies the limits.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let period: u64 = 100_000;
        let quota = limits
            .cpus
            .map(|c| ((c * period as f64).round() as u64).max(1000));
        match self.version {
            Version::V2 => {
                let d = self.dir("").expect("v2 dir");
                if let Some(m) = limits.memory_bytes {
                    write(&d.join("memory.max"), &m.to_string())?;
                    let swap = d.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                if let Some(q) = quota {
                    write(&d.join("cpu.max"), &format!("{q} {period}"))?;
                }
                if let Some(p) = limits.pids {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
            }
            Version::V1 => {
                if let (Some(m), Some(d)) = (limits.memory_bytes, self.dir("memory")) {
                    write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                    // memory+swap = memory: no swap (needs swap accounting; absent otherwise).
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &m.to_string())?;
                    }
                }
                if let (Some(q), Some(d)) = (quota, self.dir("cpu")) {
                    write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                if let (Some(p), Some(d)) = (limits.pids, self.dir("pids")) {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` into the cgroup (every controller on v1).
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for d in self.unique_dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Kills every task of the run.
    pub fn kill_all(&self) {
        match self.version {
            Version::V2 => {
                if let Some(d) = self.dir("") {
                    let killer = d.join("cgroup.kill"); // Linux 5.14+
                    if !killer.exists() || fs::write(&killer, "1").is_err() {
                        kill_procs(d);
                    }
                }
            }
            Version::V1 => {
                if let Some(d) = self.dir("pids").or(self.dir("memory")) {
                    kill_procs(d);
                }
            }
        }
    }

    /// Reads the OOM verdict and usage. Call after the run's tasks are gone.
    pub fn usage(&self) -> Usage {
        match self.version {
            Version::V2 => {
                let d = self.dir("").map(Path::to_path_buf).unwrap_or_default();
                Usage {
                    cpu_time_ms: read_key(&d.join("cpu.stat"), "usage_usec").map(|u| u / 1000),
                    max_rss_mb: read_u64(&d.join("memory.peak")).map(mib),
                    oom_killed: read_key(&d.join("memory.events"), "oom_kill").map(|n| n > 0),
                }
            }
            Version::V1 => {
                let mem = self
                    .dir("memory")
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Usage {
                    cpu_time_ms: self
                        .dir("cpuacct")
                        .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                        .map(|ns| ns / 1_000_000),
                    max_rss_mb: read_u64(&mem.join("memory.max_usage_in_bytes")).map(mib),
                    oom_killed: read_key(&mem.join("memory.oom_control"), "oom_kill")
                        .map(|n| n > 0),
                }
            }
        }
    }

    /// Kills what is left and removes the cgroup (all controllers).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        self.remove_now()
    }

    fn remove_now(&self) -> Result<(), CgroupError> {
        // Usually every task is gone already and the directories go at once; killing only
        // when one is still busy.
        // In reverse creation order, so the first hierarchy's directory, the one the start-up
        // sweep lists, goes last.
        let busy = self
            .unique_dirs()
            .into_iter()
            .rev()
            .any(|d| fs::remove_dir(d).is_err() && d.exists());
        if !busy {
            return Ok(());
        }
        self.kill_all();
        let mut result = Ok(());
        for d in self.unique_dirs().into_iter().rev() {
            if !remove_dir_retry(d) && d.exists() {
                result = Err(CgroupError::Io {
                    op: "remove",
                    path: d.display().to_string(),
                    source: io::Error::other("still busy"),
                });
            }
        }
        result
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.remove_now();
        }
    }
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 100.0).round() / 100.0
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_key(p: &Path, key: &str) -> Option<u64> {
    let s = fs::read_to_string(p).ok()?;
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn kill_procs(dir: &Path) {
    for _ in 0..50 {
        let pids = procs(dir);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove_dir_retry(dir: &Path) -> bool {
    for i in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(_) => std::thread::sleep(Duration::from_millis(if i < 10 { 2 } else { 20 })),
        }
    }
    false
}

/// v1 controller mount points from `/proc/self/mountinfo` (controller name → mount).
pub fn v1_mount_points() -> Vec<(String, PathBuf)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let _src = r.next();
        let opts = r.next().unwrap_or("");
        let mount = left.split_whitespace().nth(4).unwrap_or("");
        for o in opts.split(',') {
            if V1_CONTROLLERS.contains(&o) {
                out.push((o.to_string(), PathBuf::from(mount)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tako-cg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn keyed_files_are_parsed() {
        let dir = tmp("keys");
        let f = dir.join("memory.oom_control");
        fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(read_key(&f, "oom_kill"), Some(2));
        assert_eq!(read_key(&f, "missing"), None);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mib(1_572_864), 1.5);
    }

    /// `cpu,cpuacct` mounted as one hierarchy (the usual systemd v1 layout): one directory per
    /// run there, the run's pid written once, and usage still read from it.
    #[test]
    fn v1_controllers_mounted_together_share_one_directory() {
        let root = tmp("v1-comount");
        let both = root.join("cpu,cpuacct");
        let mounts: Vec<(String, PathBuf)> = vec![
            ("memory".into(), root.join("memory")),
            ("cpu".into(), both.clone()),
            ("cpuacct".into(), both.clone()),
            ("pids".into(), root.join("pids")),
        ];
        for (_, m) in &mounts {
            fs::create_dir_all(m).unwrap();
        }
        let cg = Cgroups::detect_v1(&mounts, "tako-vm").unwrap();
        let run = cg.create("r1").unwrap();
        assert_eq!(run.unique_dirs().len(), 3);
        // Above any pid_max: a kill on a failed assertion's drop can hit nobody.
        run.add(999_999_999).unwrap();
        let shared = both.join("tako-vm/r1");
        assert_eq!(
            fs::read_to_string(shared.join("cgroup.procs")).unwrap(),
            "999999999"
        );
        fs::write(shared.join("cpuacct.usage"), "2500000000\n").unwrap();
        assert_eq!(run.usage().cpu_time_ms, Some(2500));
        // A second run and the sweep see each directory once, too.
        let other = cg.create("r2").unwrap();
        assert_eq!(other.unique_dirs().len(), 3);
        for r in [run, other] {
            std::mem::forget(r); // the fake tree holds regular files; removed below
        }
        fs::remove_dir_all(&root).unwrap();
    }

    /// A run's v2 life cycle on a real cgroup2 mount: create, move a process in, read the
    /// CPU usage, kill everything through `cgroup.kill`, remove, and the start-up sweep. This
    /// host is v1 with an empty cgroup2 hierarchy beside it (`/sys/fs/cgroup/unified`, no
    /// memory/cpu/pids controllers), so the limits themselves are covered by
    /// [`v2_limits_and_usage_files`] only. Needs root and that mount; skips otherwise.
    #[test]
    fn v2_run_life_cycle_on_a_real_cgroup2_mount() {
        let unified = Path::new("/sys/fs/cgroup/unified");
        let root = nix::unistd::geteuid().is_root();
        if !root || !is_cgroup2(unified) {
            let required = std::env::var("TAKO_TEST_REQUIRE").as_deref() == Ok("1")
                && unified.join("cgroup.procs").exists();
            assert!(!required, "root and the cgroup2 mount are required");
            eprintln!(
                "SKIP: needs root and a cgroup2 mount at {}",
                unified.display()
            );
            return;
        }
        let base = unified.join(format!("tako-vm-test-v2-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let cg = Cgroups {
            version: Version::V2,
            v2_base: base.clone(),
            v1_bases: Vec::new(),
        };
        let run = cg.create("999999999.1.v2run").unwrap();
        assert!(
            run.dir("").unwrap().join("cgroup.kill").exists(),
            "Linux 5.14+"
        );
        // The shell forks its sleeper only once it was moved (it waits for a line first).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; sleep 100 & exec sleep 100"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        run.add(child.id() as i32).unwrap();
        let own = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(
            own.lines()
                .any(|l| l.starts_with("0::/") && l.ends_with("/999999999.1.v2run")),
            "{own}"
        );
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
        // The forked sleeper is in the run's cgroup too: cgroup.procs lists both.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while procs(run.dir("").unwrap()).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(procs(run.dir("").unwrap()).len(), 2);
        assert!(run.usage().cpu_time_ms.is_some(), "cpu.stat usage_usec");
        run.kill_all();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        for _ in 0..100 {
            if procs(run.dir("").unwrap()).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        run.remove().unwrap();
        assert!(!base.join("999999999.1.v2run").exists());
        // A dead owner's leftover with a process inside is killed and removed by the sweep.
        let left = cg.create("999999999.2.v2left").unwrap();
        let mut orphan = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        left.add(orphan.id() as i32).unwrap();
        std::mem::forget(left);
        assert_eq!(cg.sweep_dead(|name| name.starts_with("999999999.")), 1);
        assert!(
            orphan.wait().unwrap().code().is_none(),
            "killed by the sweep"
        );
        assert!(!base.join("999999999.2.v2left").exists());
        fs::remove_dir(&base).unwrap();
    }

    /// The v2 file protocol against a directory tree standing in for cgroupfs (the kernel
    /// behaviour itself is covered by the root integration tests on the v1 CI host).
    #[test]
    fn v2_limits_and_usage_files() {
        let root = tmp("v2");
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let cg = Cgroups::detect_v2(&root, "tako-vm", true, "/", 1).unwrap();
        assert_eq!(cg.version(), Version::V2);
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let run = cg.create("r1").unwrap();
        let d = root.join("tako-vm/r1");
        fs::write(d.join("memory.swap.max"), "max").unwrap();
        run.apply(&Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(20),
            ..Limits::default()
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(d.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(fs::read_to_string(d.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "150000 100000"
        );
        assert_eq!(fs::read_to_string(d.join("pids.max")).unwrap(), "20");
        run.add(4242).unwrap();
        assert_eq!(fs::read_to_string(d.join("cgroup.procs")).unwrap(), "4242");
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(d.join("cpu.stat"), "usage_usec 12345\nuser_usec 1\n").unwrap();
        fs::write(d.join("memory.peak"), "2097152\n").unwrap();
        let u = run.usage();
        assert_eq!(u.oom_killed, Some(true));
        assert_eq!(u.cpu_time_ms, Some(12));
        assert_eq!(u.max_rss_mb, Some(2.0));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v2_unprivileged_server_moves_into_a_leaf_of_its_delegated_cgroup() {
        let root = tmp("v2d");
        let own = root.join("system.slice/tako-vm.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.procs"), "").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        let cg =
            Cgroups::detect_v2(&root, "runs", false, "/system.slice/tako-vm.service", 77).unwrap();
        assert_eq!(
            fs::read_to_string(own.join("supervisor/cgroup.procs")).unwrap(),
            "77"
        );
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let run = cg.create("r2").unwrap();
        assert!(own.join("runs/r2").is_dir());
        drop(run);
        assert!(
            !own.join("runs/r2").exists(),
            "dropping a run cgroup removes it"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn run_ids_cannot_escape_the_parent() {
        let root = tmp("esc");
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let cg = Cgroups::detect_v2(&root, "tako-vm", true, "/", 1).unwrap();
        assert!(cg.create("../x").is_err());
        assert!(cg.create(".hidden").is_err());
        assert!(cg.create("").is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
