//! Per-run cgroups through youki's `libcgroups`: memory (no swap), CPU quota and pids limits
//! on cgroup v1 and v2, the OOM verdict and usage read back from the cgroup, kill-all,
//! removal and the start-up sweep.
//!
//! Layout: every run gets `<parent>/<run-id>`; `<parent>` defaults to `tako-vm`. On v1
//! libcgroups' manager puts that path under every mounted controller hierarchy; on v2 it
//! lives under the unified root. An unprivileged server on v2 uses its own delegated cgroup
//! (systemd `Delegate=yes`): it moves itself into a `supervisor` leaf and puts the runs under
//! `<own cgroup>/<parent>`. No freezer: every task of a run but the helper is in the run's pid
//! namespace, which the kernel kills as a whole when its init dies.
//!
//! What is ours: detecting the layout (and preparing `<parent>`), the run names, the sweep's
//! listing, reading the few usage files with libcgroups' parsers (its `stats()` reads every
//! controller's files, which a run's teardown does not need), and, on v1, how a run's first
//! process gets into its cgroup ([`SelfJoin`]): it enters by itself, because moving another
//! task costs one RCU grace period (6–25 ms measured here), more than the floor's whole start.
//! libcgroups applies the limits, lists the tasks and removes the run.
//!
//! Device rules on v1: `<parent>` denies every device but libcgroups' default set (written
//! once, by libcgroups' manager of `<parent>`), and each run inherits that when it is made.
//!
//! Cost: libcgroups' v1 manager looks up all twelve controllers' mount points through
//! hardened procfs opens when it is built, about 2 ms. A CLI run builds it on a thread while
//! the rest of the start-up goes on ([`prepare`]; the init was launched before that thread,
//! `supervisor::launch_init`); a server's pre-started helpers get their cgroups before a
//! request arrives. The v2 manager costs nothing to build.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use libcgroups::common::{
    get_all_pids, read_cgroup_file, write_cgroup_file_str, CgroupManager, ControllerOpt,
};
use libcgroups::stats::{parse_single_value, parse_value};
use libcgroups::{v1, v2};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResources, LinuxResourcesBuilder,
};

use super::spec::Limits;

/// The usual cgroup mount point.
pub const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a run's limits and usage need (`cpuacct` is optional).
pub const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// CPU quota period, microseconds.
const PERIOD_US: u64 = 100_000;

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
    /// libcgroups failed an operation on a run's cgroup.
    #[error("cgroup {op} of run {run}: {message}")]
    Manager {
        /// What we were doing.
        op: &'static str,
        /// The run's name.
        run: String,
        /// libcgroups' error.
        message: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
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
    /// Parent of the run cgroups, relative to a hierarchy's root (v1).
    parent: String,
    /// v2: absolute directory holding the run cgroups (libcgroups' root path for a run).
    v2_base: PathBuf,
    /// v1: every mounted controller hierarchy (controller name → mount point).
    v1_mounts: Vec<(String, PathBuf)>,
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

/// A run name is one path component of ours: never empty, hidden, or with a slash.
fn check_run_id(run_id: &str) -> Result<(), CgroupError> {
    if run_id.is_empty() || run_id.contains('/') || run_id.starts_with('.') {
        return Err(CgroupError::Io {
            op: "name",
            path: run_id.into(),
            source: io::Error::other("invalid run id"),
        });
    }
    Ok(())
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
            Self::detect_v1(v1_mount_points(), parent)
        }
    }

    /// v1: `mounts` maps controller names to their mount points (every mounted controller:
    /// libcgroups places a run in each).
    pub fn detect_v1(mounts: &[(String, PathBuf)], parent: &str) -> Result<Cgroups, CgroupError> {
        let parent = parent.trim_matches('/');
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
        }
        Ok(Cgroups {
            version: Version::V1,
            parent: parent.to_string(),
            v2_base: PathBuf::new(),
            v1_mounts: mounts.to_vec(),
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
            let procs = leaf.join("cgroup.procs");
            fs::write(&procs, me.to_string()).map_err(io_err("write", &procs))?;
            enable_controllers(&own_dir, &needed).map_err(|e| unavailable(e.to_string()))?;
            own_dir.join(parent)
        };
        fs::create_dir_all(&base)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", base.display())))?;
        enable_controllers(&base, &needed).map_err(|e| unavailable(e.to_string()))?;
        Ok(Cgroups {
            version: Version::V2,
            parent: parent.to_string(),
            v2_base: base,
            v1_mounts: Vec::new(),
        })
    }

    /// The cgroup version in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// v1: the run's directory in `controller`'s hierarchy.
    fn v1_dir(&self, controller: &str, run_id: &str) -> Option<PathBuf> {
        self.v1_mounts
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, m)| m.join(&self.parent).join(run_id))
    }

    /// The libcgroups manager of run `run_id` (builds nothing on disk).
    fn manager(&self, run_id: &str) -> Result<Manager, CgroupError> {
        let failed = |e: String| CgroupError::Manager {
            op: "setup",
            run: run_id.into(),
            message: e,
        };
        match self.version {
            Version::V2 => v2::manager::Manager::new(self.v2_base.clone(), run_id.into())
                .map(Manager::V2)
                .map_err(|e| failed(e.to_string())),
            Version::V1 => {
                let rel = Path::new(&self.parent).join(run_id);
                match take_prepared(&rel) {
                    Some(m) => Ok(Manager::V1(m)),
                    None => v1::manager::Manager::new(&rel)
                        .map(Manager::V1)
                        .map_err(|e| failed(e.to_string())),
                }
            }
        }
    }

    /// The cgroup of one run, not created yet: [`RunCgroup::add`] creates it with its first
    /// task, then [`RunCgroup::apply`] sets the limits.
    pub fn create(&self, run_id: &str) -> Result<RunCgroup, CgroupError> {
        check_run_id(run_id)?;
        let (usage_dir, cpuacct_dir) = match self.version {
            Version::V2 => (self.v2_base.join(run_id), None),
            Version::V1 => (
                self.v1_dir("memory", run_id).unwrap_or_default(),
                self.v1_dir("cpuacct", run_id),
            ),
        };
        Ok(RunCgroup {
            name: run_id.to_string(),
            version: self.version,
            manager: self.manager(run_id)?,
            usage_dir,
            cpuacct_dir,
            devices_dir: self.v1_dir("devices", run_id),
            removed: false,
        })
    }

    /// The v1 cgroup of a run whose first process entered it by itself ([`SelfJoin`]):
    /// nothing is moved; [`RunCgroup::apply`] sets the limits. Takes over the removal.
    pub fn create_joined(&self, mut join: SelfJoin) -> Result<RunCgroup, CgroupError> {
        let run = self.create(&join.run_id)?;
        join.armed = false;
        Ok(run)
    }

    /// v1: the [`SelfJoin`] of run `run_id` (`None` on v2, where the first task is moved).
    pub fn self_join(&self, run_id: &str) -> Option<Result<SelfJoin, CgroupError>> {
        (self.version == Version::V1).then(|| SelfJoin::plan(&self.v1_mounts, &self.parent, run_id))
    }

    /// Directories holding run cgroups: each hierarchy's `<parent>` on v1, the base on v2.
    fn parents(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match self.version {
            Version::V2 => vec![self.v2_base.clone()],
            Version::V1 => self
                .v1_mounts
                .iter()
                .map(|(_, m)| m.join(&self.parent))
                .collect(),
        };
        out.sort();
        out.dedup();
        out
    }

    /// Removes leftovers of runs of crashed processes: every run cgroup whose name `is_dead`
    /// accepts is killed and removed (in every hierarchy). Returns how many runs were removed.
    pub fn sweep_dead(&self, is_dead: impl Fn(&str) -> bool) -> usize {
        let mut names: Vec<String> = Vec::new();
        // Each name is judged once, though it appears in every hierarchy.
        let mut judged = std::collections::HashSet::new();
        for parent in self.parents() {
            let Ok(rd) = fs::read_dir(&parent) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && name != "supervisor"
                    && check_run_id(&name).is_ok()
                    && judged.insert(name.clone())
                    && is_dead(&name)
                {
                    names.push(name);
                }
            }
        }
        names
            .iter()
            .filter(|name| self.create(name).is_ok_and(|run| run.remove().is_ok()))
            .count()
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

/// libcgroups' manager of one run's cgroup.
enum Manager {
    V1(v1::manager::Manager),
    V2(v2::manager::Manager),
}

impl Manager {
    fn add_task(&self, pid: Pid) -> Result<(), String> {
        match self {
            Manager::V1(m) => m.add_task(pid).map_err(|e| e.to_string()),
            Manager::V2(m) => m.add_task(pid).map_err(|e| e.to_string()),
        }
    }

    fn apply(&self, opt: &ControllerOpt) -> Result<(), String> {
        match self {
            Manager::V1(m) => m.apply(opt).map_err(|e| e.to_string()),
            Manager::V2(m) => m.apply(opt).map_err(|e| e.to_string()),
        }
    }

    fn remove(&self) -> Result<(), String> {
        match self {
            Manager::V1(m) => m.remove().map_err(|e| e.to_string()),
            Manager::V2(m) => m.remove().map_err(|e| e.to_string()),
        }
    }
}

/// The cgroup of one run. Dropping it kills what is left and removes it.
pub struct RunCgroup {
    name: String,
    version: Version,
    manager: Manager,
    /// Where the memory usage and OOM verdict are read (v2: the run's one directory).
    usage_dir: PathBuf,
    /// v1: the run's `cpuacct` directory, if that controller is mounted.
    cpuacct_dir: Option<PathBuf>,
    /// v1: the run's `devices` directory, if that controller is mounted.
    devices_dir: Option<PathBuf>,
    removed: bool,
}

impl RunCgroup {
    fn failed(&self, op: &'static str) -> impl FnOnce(String) -> CgroupError + '_ {
        move |message| CgroupError::Manager {
            op,
            run: self.name.clone(),
            message,
        }
    }

    /// The run's directory (v2), or its directory in the memory hierarchy (v1).
    pub fn dir(&self) -> &Path {
        &self.usage_dir
    }

    /// The resources libcgroups applies for `limits`.
    fn resources(&self, limits: &Limits) -> Result<LinuxResources, String> {
        let e = |e: oci_spec::OciSpecError| e.to_string();
        let mut res = LinuxResourcesBuilder::default();
        let mut unified = HashMap::new();
        if let Some(m) = limits.memory_bytes {
            let m = i64::try_from(m).map_err(|e| e.to_string())?;
            let mut mem = LinuxMemoryBuilder::default().limit(m);
            match self.version {
                // memory+swap = memory: no swap (needs swap accounting; absent otherwise).
                Version::V1 if self.usage_dir.join("memory.memsw.limit_in_bytes").exists() => {
                    mem = mem.swap(m)
                }
                // libcgroups writes no `memory.swap.max` for a swap equal to the limit, so
                // it is set as a raw unified key.
                Version::V2 if self.usage_dir.join("memory.swap.max").exists() => {
                    unified.insert("memory.swap.max".to_string(), "0".to_string());
                }
                _ => {}
            }
            res = res.memory(mem.build().map_err(e)?);
        }
        if let Some(c) = limits.cpus {
            let quota = ((c * PERIOD_US as f64).round() as i64).max(1000);
            res = res.cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(PERIOD_US)
                    .build()
                    .map_err(e)?,
            );
        }
        if let Some(p) = limits.pids {
            let p = i64::try_from(p).map_err(|e| e.to_string())?;
            res = res.pids(LinuxPidsBuilder::default().limit(p).build().map_err(e)?);
        }
        if !unified.is_empty() {
            res = res.unified(unified);
        }
        // Default deny for devices, as runc does: everything is denied first, then
        // libcgroups allows its default set (null, zero, full, random, urandom, tty, the
        // pty pair, tun). Written on v1; v2 would need libcgroups' eBPF feature, which is not
        // built (the sandbox has no device nodes beyond that set and no CAP_MKNOD anyway).
        // On v1 a run normally inherits both from `<parent>` ([`parent_denies_devices`]):
        // then only the allow rules are written again, so a task already inside (a
        // [`SelfJoin`]) never meets a moment where every device is denied.
        let inherited = self
            .devices_dir
            .as_deref()
            .is_some_and(denies_devices_by_default);
        if !inherited {
            res = res.devices(vec![deny_all_devices().map_err(e)?]);
        }
        res.build().map_err(e)
    }

    /// Applies the limits (after [`RunCgroup::add`], which creates the cgroup).
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let resources = self.resources(limits).map_err(self.failed("limits"))?;
        let opt = ControllerOpt {
            resources: &resources,
            freezer_state: None,
            oom_score_adj: None,
            disable_oom_killer: false,
        };
        self.manager.apply(&opt).map_err(self.failed("limits"))
    }

    /// Moves process `pid` into the cgroup (every hierarchy on v1), creating it first.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(self.failed("move"))
    }

    /// Kills every task of the run.
    pub fn kill_all(&self) {
        if self.version == Version::V2 {
            // Linux 5.14+: one write kills the whole cgroup, forks included.
            let killer = self.usage_dir.join("cgroup.kill");
            if killer.exists() && write_cgroup_file_str(&killer, "1").is_ok() {
                return;
            }
        }
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = kill(p, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Tasks of the run (on v1 as listed in the memory hierarchy, which every task is in).
    fn pids(&self) -> Vec<Pid> {
        get_all_pids(&self.usage_dir).unwrap_or_default()
    }

    /// Reads the OOM verdict and usage. Call after the run's tasks are gone.
    pub fn usage(&self) -> Usage {
        let d = &self.usage_dir;
        let single = |p: PathBuf| parse_single_value(&p).ok();
        let key = |p: PathBuf, k: &str| keyed_value(&p, k);
        match self.version {
            Version::V2 => Usage {
                cpu_time_ms: key(d.join("cpu.stat"), "usage_usec").map(|u| u / 1000),
                max_rss_mb: single(d.join("memory.peak")).map(mib),
                oom_killed: key(d.join("memory.events"), "oom_kill").map(|n| n > 0),
            },
            Version::V1 => Usage {
                cpu_time_ms: self
                    .cpuacct_dir
                    .as_ref()
                    .and_then(|c| single(c.join("cpuacct.usage")))
                    .map(|ns| ns / 1_000_000),
                max_rss_mb: single(d.join("memory.max_usage_in_bytes")).map(mib),
                oom_killed: key(d.join("memory.oom_control"), "oom_kill").map(|n| n > 0),
            },
        }
    }

    /// Kills what is left and removes the cgroup (all hierarchies).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        self.remove_now()
    }

    fn remove_now(&self) -> Result<(), CgroupError> {
        // libcgroups kills what it lists and retries for about 100 ms; a task still exiting
        // (or a fork racing the kill) gets a few more rounds.
        let mut last = String::new();
        for _ in 0..5 {
            match self.manager.remove() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            self.kill_all();
        }
        Err(self.failed("remove")(last))
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.remove_now();
        }
    }
}

/// The device rule that denies everything (libcgroups then allows its default set).
fn deny_all_devices() -> Result<oci_spec::runtime::LinuxDeviceCgroup, oci_spec::OciSpecError> {
    LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
}

/// v1: whether the `devices` cgroup `dir` denies by default (its list lacks `a *:* rwm`).
fn denies_devices_by_default(dir: &Path) -> bool {
    fs::read_to_string(dir.join("devices.list"))
        .is_ok_and(|l| !l.is_empty() && !l.lines().any(|r| r.trim() == "a *:* rwm"))
}

/// v1: whether `<devices mount>/<parent>` (its directory `dir`) denies every device but
/// libcgroups' default set, making it do so first where it does not (libcgroups' manager of
/// `parent` writes the rules; tried once per process and directory, since it costs a
/// manager, ~2 ms). Every run cgroup made below it inherits these rules when it is created.
/// The kernel refuses the change while `parent` has children (runs of a server, say): runs
/// then get the rules one by one ([`RunCgroup::apply`]) and are not self-joined.
fn parent_denies_devices(dir: &Path, parent: &str) -> bool {
    static TRIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    if denies_devices_by_default(dir) {
        return true;
    }
    {
        let mut tried = TRIED.lock().unwrap_or_else(|e| e.into_inner());
        if tried.iter().any(|d| d == dir) {
            return false;
        }
        tried.push(dir.to_path_buf());
    }
    // A failure shows in the file read below (another process may have succeeded).
    let _ = (|| -> Result<(), String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let manager = v1::manager::Manager::new(Path::new(parent)).map_err(|e| e.to_string())?;
        let resources = LinuxResourcesBuilder::default()
            .devices(vec![deny_all_devices().map_err(|e| e.to_string())?])
            .build()
            .map_err(|e| e.to_string())?;
        manager
            .apply(&ControllerOpt {
                resources: &resources,
                freezer_state: None,
                oom_score_adj: None,
                disable_oom_killer: false,
            })
            .map_err(|e| e.to_string())
    })();
    denies_devices_by_default(dir)
}

/// The value of `key` in a flat keyed cgroup file (`key value` lines).
fn keyed_value(path: &Path, key: &str) -> Option<u64> {
    let text = read_cgroup_file(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| parse_value(v.trim()).ok())?
    })
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 100.0).round() / 100.0
}

/// v1 hierarchies a run's tasks are in: its limits (memory, cpu, pids), its CPU time
/// (cpuacct) and its device rules (devices). The others keep the caller's cgroup.
pub const V1_JOINED: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "devices"];

/// A v1 run cgroup that the run's first process enters by itself, before the sandbox's init
/// is forked from it (the init and every later task are born inside).
///
/// Why: moving *another* task into a cgroup (`cgroup.procs`, which libcgroups' `add_task`
/// writes) write-locks the kernel's `cgroup_threadgroup_rwsem`, which waits for a full RCU
/// grace period unless one just passed: 6–25 ms per run measured on this v1 host, more than
/// the whole floor's start. A single-threaded process writing `0` to `tasks` moves only
/// itself and takes no such lock (about 0.1 ms for five hierarchies). libcgroups still
/// builds the manager, applies the limits, reads the tasks and removes the cgroup.
///
/// Dropping an armed `SelfJoin` (a run that never got its [`RunCgroup`]) kills what is in
/// its directories and removes them; [`Cgroups::create_joined`] disarms it.
#[derive(Debug)]
pub struct SelfJoin {
    run_id: String,
    dirs: Vec<PathBuf>,
    tasks: JoinTasks,
    /// The parent's `devices` directory and the parent's name.
    devices_parent: Option<(PathBuf, String)>,
    armed: bool,
}

impl SelfJoin {
    /// The directories of run `run_id` under `parent` in the [`V1_JOINED`] hierarchies of
    /// `mounts` (a hierarchy mounted with two of them counted once). Creates nothing.
    pub fn plan(
        mounts: &[(String, PathBuf)],
        parent: &str,
        run_id: &str,
    ) -> Result<SelfJoin, CgroupError> {
        check_run_id(run_id)?;
        let parent = parent.trim_matches('/');
        let mut dirs: Vec<PathBuf> = Vec::new();
        for c in V1_JOINED {
            if let Some((_, m)) = mounts.iter().find(|(n, _)| n == c) {
                let d = m.join(parent).join(run_id);
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        let c_path = |p: PathBuf| {
            std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).map_err(|e| {
                CgroupError::Io {
                    op: "name",
                    path: run_id.into(),
                    source: io::Error::other(e),
                }
            })
        };
        let tasks = dirs
            .iter()
            .map(|d| Ok((c_path(d.clone())?, c_path(d.join("tasks"))?)))
            .collect::<Result<_, CgroupError>>()
            .map(JoinTasks)?;
        Ok(SelfJoin {
            run_id: run_id.to_string(),
            dirs,
            tasks,
            devices_parent: mounts
                .iter()
                .find(|(c, _)| c == "devices")
                .map(|(_, m)| (m.join(parent), parent.to_string())),
            armed: true,
        })
    }

    /// Readies the join: the parents of the run's directories exist, and the run will
    /// inherit default-deny device rules from its parent (`parent_denies_devices`);
    /// refused otherwise, since rules written after its first task entered would deny every
    /// device for a moment. The run's own directories are made by [`SelfJoin::enter`].
    pub fn ready(&self) -> Result<(), CgroupError> {
        let denies = |(dir, parent): &(PathBuf, String)| parent_denies_devices(dir, parent);
        if !self.devices_parent.as_ref().is_some_and(denies) {
            return Err(CgroupError::Unavailable(
                "the parent cgroup's device rules are not default-deny".into(),
            ));
        }
        for d in self.dirs.iter().filter_map(|d| d.parent()) {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        Ok(())
    }

    /// Makes the run's directories and moves the calling thread into them
    /// ([`JoinTasks::enter`]).
    pub fn enter(&self) -> Result<(), (usize, i32)> {
        self.tasks.enter()
    }

    /// What [`SelfJoin::enter`] needs, for a `pre_exec` closure (which must own its data).
    pub fn tasks(&self) -> JoinTasks {
        self.tasks.clone()
    }

    /// The error of a failed [`SelfJoin::enter`].
    pub fn enter_error(&self, (i, errno): (usize, i32)) -> CgroupError {
        CgroupError::Io {
            op: "join",
            path: self
                .dirs
                .get(i)
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

/// The directories and `tasks` files of a [`SelfJoin`], ready before a fork (no allocation
/// after it).
#[derive(Debug, Clone)]
pub struct JoinTasks(Vec<(std::ffi::CString, std::ffi::CString)>);

impl JoinTasks {
    /// Makes the run's directory in every hierarchy (an existing one is fine; its parent
    /// must exist) and moves the calling thread in (`0` into each `tasks`). Only
    /// async-signal-safe calls, so it may run between fork and exec; call it in a
    /// single-threaded process (its other threads would stay behind). Returns the index of
    /// the hierarchy and the errno of the first failure.
    pub fn enter(&self) -> Result<(), (usize, i32)> {
        for (i, (d, t)) in self.0.iter().enumerate() {
            // SAFETY: mkdir/open/write/close of NUL-terminated paths and a local buffer, and
            // reads of this thread's errno.
            unsafe {
                if libc::mkdir(d.as_ptr(), 0o755) < 0 && *libc::__errno_location() != libc::EEXIST {
                    return Err((i, *libc::__errno_location()));
                }
                let fd = libc::open(t.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err((i, *libc::__errno_location()));
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let errno = *libc::__errno_location();
                libc::close(fd);
                if n != 1 {
                    return Err((i, if n < 0 { errno } else { libc::EIO }));
                }
            }
        }
        Ok(())
    }
}

impl Drop for SelfJoin {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for _ in 0..50 {
            let mut left = false;
            for d in &self.dirs {
                for p in get_all_pids(d).unwrap_or_default() {
                    let _ = kill(p, Signal::SIGKILL);
                }
                if d.exists() && fs::remove_dir(d).is_err() {
                    left = true;
                }
            }
            if !left {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A v1 manager being built ahead of its run ([`prepare`]).
enum Prepared {
    Pending(
        PathBuf,
        std::thread::JoinHandle<Option<v1::manager::Manager>>,
    ),
    Ready(PathBuf, v1::manager::Manager),
}

static PREPARED: Mutex<Option<Prepared>> = Mutex::new(None);

/// Whether [`prepare`] builds a manager ahead: a v1 host, as root. Nothing else moves a
/// process between cgroups before the run then (an unprivileged v2 CLI moves itself into a
/// leaf of its delegated cgroup, which must not hold other processes by that time).
pub fn builds_ahead() -> bool {
    nix::unistd::geteuid().is_root() && !is_cgroup2(Path::new(ROOT))
}

/// Starts building the v1 manager of run `run_id` under `parent` on a thread, so its
/// mount-point look-ups (about 2 ms) overlap the rest of a CLI start. Only on a v1 host and as
/// root (the only v1 case that has limits); the run's [`Cgroups::create`] takes it. A process
/// that forks without exec must call [`settle`] first.
pub fn prepare(parent: &str, run_id: &str) {
    if check_run_id(run_id).is_err() || !builds_ahead() {
        return;
    }
    let rel = Path::new(parent.trim_matches('/')).join(run_id);
    let for_thread = rel.clone();
    let Ok(handle) = std::thread::Builder::new()
        .name("tako-cgroup".into())
        .spawn(move || v1::manager::Manager::new(&for_thread).ok())
    else {
        return;
    };
    *PREPARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Prepared::Pending(rel, handle));
}

/// Waits until a [`prepare`] thread has finished (before a fork without exec, which needs a
/// single-threaded process). Returns true when it joined one.
pub fn settle() -> bool {
    let mut slot = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(Prepared::Pending(rel, handle)) = slot.take() else {
        return false;
    };
    if let Ok(Some(m)) = handle.join() {
        *slot = Some(Prepared::Ready(rel, m));
    }
    true
}

/// The prepared manager of `rel`, if [`prepare`] built one (waits for it).
fn take_prepared(rel: &Path) -> Option<v1::manager::Manager> {
    let mut slot = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    match slot.take()? {
        Prepared::Ready(r, m) if r == rel => Some(m),
        Prepared::Pending(r, h) if r == rel => h.join().ok().flatten(),
        other => {
            *slot = Some(other);
            None
        }
    }
}

/// v1 controller hierarchies of this process's mount namespace, read once per process (a
/// CLI run asks up to three times; each read of `mountinfo` costs ~0.1 ms here).
/// Hierarchies are mounted at boot; one mounted later is seen by the next process.
pub fn v1_mount_points() -> &'static [(String, PathBuf)] {
    static MOUNTS: std::sync::OnceLock<Vec<(String, PathBuf)>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        parse_v1_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    })
}

/// v1 controller hierarchies in `mountinfo` text (controller name → mount point; named
/// hierarchies such as `name=systemd` are left out).
fn parse_v1_mounts(mountinfo: &str) -> Vec<(String, PathBuf)> {
    const KNOWN: [&str; 12] = [
        "memory",
        "cpu",
        "cpuacct",
        "pids",
        "cpuset",
        "devices",
        "freezer",
        "blkio",
        "hugetlb",
        "net_cls",
        "net_prio",
        "perf_event",
    ];
    let mut out = Vec::new();
    for line in mountinfo.lines() {
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
        for o in opts.split(',').filter(|o| KNOWN.contains(o)) {
            out.push((o.to_string(), PathBuf::from(mount)));
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

    fn skip_unless_root_v1() -> bool {
        let v1 =
            !is_cgroup2(Path::new(ROOT)) && v1_mount_points().iter().any(|(c, _)| c == "memory");
        if nix::unistd::geteuid().is_root() && v1 {
            return false;
        }
        let required = std::env::var("TAKO_TEST_REQUIRE").as_deref() == Ok("1") && v1;
        assert!(!required, "root is required on this cgroup v1 host");
        eprintln!("SKIP: needs root and cgroup v1 controllers");
        true
    }

    /// The limits the life-cycle tests apply.
    fn test_limits() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(20),
            ..Limits::default()
        }
    }

    /// Waits up to 5 s for `run` to hold `n` tasks.
    fn wait_for_tasks(run: &RunCgroup, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while run.pids().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A dead owner's leftover with a process inside is killed and removed by the sweep.
    fn sweep_kills_a_dead_owners_leftover(cg: &Cgroups, name: &str) {
        let left = cg.create(name).unwrap();
        let mut orphan = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        left.add(orphan.id() as i32).unwrap();
        std::mem::forget(left);
        assert_eq!(cg.sweep_dead(|n| n.starts_with("999999999.")), 1);
        assert!(
            orphan.wait().unwrap().code().is_none(),
            "killed by the sweep"
        );
        for p in cg.parents() {
            assert!(!p.join(name).exists(), "{} left", p.join(name).display());
        }
    }

    /// The v1 usage files are read with libcgroups' parsers.
    #[test]
    fn v1_usage_files_are_parsed() {
        let dir = tmp("v1-usage");
        fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs::write(dir.join("memory.max_usage_in_bytes"), "1572864\n").unwrap();
        fs::write(dir.join("cpuacct.usage"), "2500000000\n").unwrap();
        let run = RunCgroup {
            name: "r".into(),
            version: Version::V1,
            // Never created: dropping it removes nothing.
            manager: Manager::V2(v2::manager::Manager::new(dir.clone(), "absent".into()).unwrap()),
            usage_dir: dir.clone(),
            cpuacct_dir: Some(dir.clone()),
            devices_dir: None,
            removed: false,
        };
        assert_eq!(
            run.usage(),
            Usage {
                cpu_time_ms: Some(2500),
                max_rss_mb: Some(1.5),
                oom_killed: Some(true),
            }
        );
        drop(run);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `cpu,cpuacct` mounted as one hierarchy (the usual systemd v1 layout): both names map to
    /// that mount, the sweep lists it once, and the CPU time is read there.
    #[test]
    fn v1_controllers_mounted_together_share_one_directory() {
        let info = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
                    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let mounts = parse_v1_mounts(info);
        let both = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(
            mounts,
            vec![
                ("cpu".to_string(), both.clone()),
                ("cpuacct".to_string(), both.clone()),
                ("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory")),
            ]
        );
        let cg = Cgroups {
            version: Version::V1,
            parent: "tako-vm".into(),
            v2_base: PathBuf::new(),
            v1_mounts: mounts,
        };
        assert_eq!(
            cg.parents(),
            vec![
                both.join("tako-vm"),
                PathBuf::from("/sys/fs/cgroup/memory/tako-vm")
            ]
        );
        assert_eq!(cg.v1_dir("cpuacct", "r1"), Some(both.join("tako-vm/r1")));
    }

    /// A run's v1 life cycle on this host's real controllers, with the manager built ahead
    /// ([`prepare`]): limits in the memory, cpu and pids hierarchies, a process and its fork
    /// moved, usage read, everything killed, and the run gone from every hierarchy.
    #[test]
    fn v1_run_life_cycle_with_a_prepared_manager() {
        if skip_unless_root_v1() {
            return;
        }
        let parent = format!("tako-vm-test-v1-{}", std::process::id());
        let id = "999999999.1.v1run";
        prepare(&parent, id);
        assert!(settle(), "a preparation was pending");
        let cg = Cgroups::detect_v1(v1_mount_points(), &parent).unwrap();
        // Another run's name does not take it.
        let other = cg.create("999999999.1.other").unwrap();
        drop(other);
        assert!(matches!(
            &*PREPARED.lock().unwrap(),
            Some(Prepared::Ready(rel, _)) if rel.ends_with(id)
        ));
        let run = cg.create(id).unwrap();
        assert!(
            PREPARED.lock().unwrap().is_none(),
            "the run took the prepared manager"
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; sleep 100 & exec sleep 100"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        run.add(child.id() as i32).unwrap();
        run.apply(&test_limits()).unwrap();
        let dir = |c: &str| cg.v1_dir(c, id).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(
            read(dir("memory").join("memory.limit_in_bytes")),
            "67108864"
        );
        if dir("memory").join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                read(dir("memory").join("memory.memsw.limit_in_bytes")),
                "67108864",
                "no swap"
            );
        }
        assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(dir("cpu").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(dir("pids").join("pids.max")), "20");
        // Devices: default deny, then the default set (the parent allows everything).
        let devices = read(dir("devices").join("devices.list"));
        assert!(!devices.contains("a *:* rwm"), "{devices}");
        for allowed in ["c 1:3 rwm", "c 1:9 rwm", "c 5:2 rwm"] {
            assert!(
                devices.lines().any(|l| l == allowed),
                "{allowed}: {devices}"
            );
        }
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
        wait_for_tasks(&run, 2);
        assert_eq!(run.pids().len(), 2, "the fork is in the run's cgroup");
        let u = run.usage();
        assert!(u.cpu_time_ms.is_some() && u.max_rss_mb.is_some(), "{u:?}");
        assert_eq!(u.oom_killed, Some(false));
        run.kill_all();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()),
            Some(9)
        );
        run.remove().unwrap();
        for p in cg.parents() {
            assert!(!p.join(id).exists(), "{} left", p.join(id).display());
        }
        sweep_kills_a_dead_owners_leftover(&cg, "999999999.2.v1left");
        for p in cg.parents() {
            assert!(!p.join("999999999.2.v1left").exists());
            let _ = fs::remove_dir(&p);
        }
    }

    /// A v1 run whose first process enters its cgroup by itself ([`SelfJoin`]): it is in
    /// the five joined hierarchies and no other, the parent (made so by the join's `ready`)
    /// makes every run default-deny for devices (so no deny rule is written with a task
    /// inside), libcgroups applies the limits and removes the run; an armed `SelfJoin` that
    /// is dropped kills what is inside and removes its directories.
    #[test]
    fn v1_self_join_life_cycle() {
        use std::os::unix::process::CommandExt;
        if skip_unless_root_v1() {
            return;
        }
        let parent = format!("tako-vm-test-join-{}", std::process::id());
        let mounts = v1_mount_points();
        let cg = Cgroups::detect_v1(mounts, &parent).unwrap();
        let spawn_in = |join: &SelfJoin, script: &str| {
            let tasks = join.tasks();
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", script]).stdin(std::process::Stdio::piped());
            // SAFETY: JoinTasks::enter makes only async-signal-safe calls.
            unsafe {
                cmd.pre_exec(move || {
                    tasks
                        .enter()
                        .map_err(|(_, e)| io::Error::from_raw_os_error(e))
                });
            }
            cmd.spawn().unwrap()
        };

        let id = "999999999.3.joined";
        let join = cg.self_join(id).unwrap().unwrap();
        join.ready().unwrap();
        let devices_parent = cg.v1_dir("devices", "").unwrap();
        assert!(
            denies_devices_by_default(&devices_parent),
            "the parent denies by default: {}",
            fs::read_to_string(devices_parent.join("devices.list")).unwrap()
        );
        let mut child = spawn_in(&join, "read go; sleep 100 & exec sleep 100");
        let pid = child.id().to_string();
        let in_tasks = |d: &Path| {
            fs::read_to_string(d.join("tasks")).is_ok_and(|t| t.lines().any(|l| l == pid))
        };
        for c in V1_JOINED {
            if let Some(d) = cg.v1_dir(c, id) {
                assert!(in_tasks(&d), "{c}: the child entered {}", d.display());
            }
        }
        for (c, _) in mounts {
            if !V1_JOINED.contains(&c.as_str()) {
                let d = cg.v1_dir(c, id).unwrap();
                assert!(!d.exists(), "{c}: nothing made in {}", d.display());
            }
        }
        let run = cg.create_joined(join).unwrap();
        run.apply(&test_limits()).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(
            read(
                cg.v1_dir("memory", id)
                    .unwrap()
                    .join("memory.limit_in_bytes")
            ),
            "67108864"
        );
        assert_eq!(read(cg.v1_dir("pids", id).unwrap().join("pids.max")), "20");
        let devices = read(cg.v1_dir("devices", id).unwrap().join("devices.list"));
        assert!(!devices.contains("a *:* rwm"), "{devices}");
        assert!(devices.lines().any(|l| l == "c 1:3 rwm"), "{devices}");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
        wait_for_tasks(&run, 2);
        assert_eq!(run.pids().len(), 2, "the fork was born in the run's cgroup");
        run.remove().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()),
            Some(9)
        );
        for p in cg.parents() {
            assert!(!p.join(id).exists(), "{} left", p.join(id).display());
        }

        // A run that never got its RunCgroup: dropping the join cleans up.
        let id = "999999999.4.abandoned";
        let join = cg.self_join(id).unwrap().unwrap();
        join.ready().unwrap();
        let mut sleeper = spawn_in(&join, "exec sleep 100");
        drop(join);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&sleeper.wait().unwrap()),
            Some(9)
        );
        for p in cg.parents() {
            assert!(!p.join(id).exists(), "{} left", p.join(id).display());
            let _ = fs::remove_dir(&p);
        }
    }

    /// The parent's device rules: refused by the kernel while the parent has children, then
    /// not tried again by this process (each try builds a manager); a parent without
    /// children is made default-deny.
    #[test]
    fn parent_device_rules_are_set_once_and_only_without_children() {
        if skip_unless_root_v1() {
            return;
        }
        let mounts = v1_mount_points();
        let devices = &mounts.iter().find(|(c, _)| c == "devices").unwrap().1;
        let busy = format!("tako-vm-test-devbusy-{}", std::process::id());
        let dir = devices.join(&busy);
        fs::create_dir_all(dir.join("child")).unwrap();
        assert!(
            !parent_denies_devices(&dir, &busy),
            "a parent with children"
        );
        fs::remove_dir(dir.join("child")).unwrap();
        assert!(
            !parent_denies_devices(&dir, &busy),
            "tried once per process"
        );
        assert!(!denies_devices_by_default(&dir));
        fs::remove_dir(&dir).unwrap();
        let free = format!("tako-vm-test-devfree-{}", std::process::id());
        let dir = devices.join(&free);
        assert!(parent_denies_devices(&dir, &free), "made default-deny");
        assert!(denies_devices_by_default(&dir));
        fs::remove_dir(&dir).unwrap();
    }

    /// A join that cannot enter says which file failed and why.
    #[test]
    fn a_failed_self_join_names_its_file() {
        let dir = tmp("join-missing");
        let mounts = vec![("memory".to_string(), dir.clone())];
        let join = SelfJoin::plan(&mounts, "parent", "999999999.5.r").unwrap();
        // Nothing was readied, so the first mkdir fails (no parent) before anything is made.
        let failed = join.enter().unwrap_err();
        let text = join.enter_error(failed).to_string();
        assert!(text.contains("cgroup join"), "{text}");
        assert!(
            text.contains(&dir.join("parent/999999999.5.r").display().to_string()),
            "{text}"
        );
        assert!(text.contains("No such file"), "{text}");
        assert!(SelfJoin::plan(&mounts, "parent", "../escape").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A run writes the deny-everything device rule only when it does not inherit one.
    #[test]
    fn device_deny_rule_only_when_not_inherited() {
        let dir = tmp("devices");
        let run = RunCgroup {
            name: "r".into(),
            version: Version::V1,
            // Never created: dropping it removes nothing.
            manager: Manager::V2(v2::manager::Manager::new(dir.clone(), "absent".into()).unwrap()),
            usage_dir: dir.clone(),
            cpuacct_dir: None,
            devices_dir: Some(dir.clone()),
            removed: false,
        };
        let denies = |run: &RunCgroup| {
            run.resources(&Limits::default())
                .unwrap()
                .devices()
                .as_ref()
                .is_some_and(|d| d.iter().any(|r| !r.allow()))
        };
        fs::write(dir.join("devices.list"), "a *:* rwm\n").unwrap();
        assert!(denies(&run), "allow-all inherited: the run denies first");
        fs::write(dir.join("devices.list"), "c 1:3 rwm\nc 1:5 rwm\n").unwrap();
        assert!(
            !denies(&run),
            "default-deny inherited: nothing is denied again"
        );
        drop(run);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A run's v2 life cycle on a real cgroup2 mount: create, move a process in, read the
    /// CPU usage, kill everything through `cgroup.kill`, remove, and the start-up sweep. This
    /// host is v1 with an empty cgroup2 hierarchy beside it (`/sys/fs/cgroup/unified`, no
    /// memory/cpu/pids controllers), so the limits themselves are covered by
    /// [`v2_limits_and_usage_files`] here and by the VM test. Needs root and that mount.
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
            parent: String::new(),
            v2_base: base.clone(),
            v1_mounts: Vec::new(),
        };
        let run = cg.create("999999999.1.v2run").unwrap();
        // The shell forks its sleeper only once it was moved (it waits for a line first).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; sleep 100 & exec sleep 100"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        run.add(child.id() as i32).unwrap();
        assert!(run.dir().join("cgroup.kill").exists(), "Linux 5.14+");
        let own = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(
            own.lines()
                .any(|l| l.starts_with("0::/") && l.ends_with("/999999999.1.v2run")),
            "{own}"
        );
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
        // The forked sleeper is in the run's cgroup too.
        wait_for_tasks(&run, 2);
        assert_eq!(run.pids().len(), 2);
        assert!(run.usage().cpu_time_ms.is_some(), "cpu.stat usage_usec");
        run.kill_all();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        run.remove().unwrap();
        assert!(!base.join("999999999.1.v2run").exists());
        sweep_kills_a_dead_owners_leftover(&cg, "999999999.2.v2left");
        assert!(!base.join("999999999.2.v2left").exists());
        fs::remove_dir(&base).unwrap();
    }

    /// The v2 files libcgroups writes for our limits, and the usage we read, against a
    /// directory tree standing in for cgroupfs (the kernel side: the VM test).
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
        let base = root.join("tako-vm");
        fs::write(base.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        // What the kernel would show in a fresh run cgroup.
        let d = base.join("r1");
        fs::create_dir(&d).unwrap();
        for f in [
            "cgroup.procs",
            "memory.max",
            "memory.swap.max",
            "cpu.max",
            "pids.max",
        ] {
            fs::write(d.join(f), "").unwrap();
        }
        let run = cg.create("r1").unwrap();
        assert_eq!(run.dir(), d);
        // Above any pid_max: a kill on a failed assertion's drop can hit nobody.
        run.add(999_999_999).unwrap();
        assert_eq!(
            fs::read_to_string(d.join("cgroup.procs")).unwrap(),
            "999999999"
        );
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
        std::mem::forget(run); // the fake tree holds regular files; removed below
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
        assert_eq!(
            fs::read_to_string(own.join("runs/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let run = cg.create("r2").unwrap();
        assert_eq!(run.dir(), own.join("runs/r2"));
        drop(run);
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
