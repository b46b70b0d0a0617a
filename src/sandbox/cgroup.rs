//! Per-run cgroups through `libcgroups`: memory (no swap), CPU quota and pids limits on
//! cgroup v1 and v2, the OOM verdict and usage read back from the cgroup.
//!
//! Layout: every run gets `<parent>/<run-id>`; `<parent>` defaults to `tako-vm`. On v1 the
//! same relative path exists under every controller mount; on v2 it lives under the
//! unified root (a delegated subtree for an unprivileged server).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, CgroupSetup,
    ControllerOpt, FreezerState,
};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};

use super::spec::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup hierarchy we may write to.
    #[error("no writable cgroup for resource limits ({0}); run the server as root, give it a delegated cgroup v2 subtree (systemd Delegate=yes), or set allow_unlimited_sandboxes: true to run without limits")]
    Unavailable(String),
    /// libcgroups failed.
    #[error("cgroup {op} failed: {detail}")]
    Op {
        /// What we were doing.
        op: &'static str,
        /// The cause.
        detail: String,
    },
}

fn op_err(op: &'static str) -> impl FnOnce(Box<dyn std::error::Error>) -> CgroupError {
    move |e| CgroupError::Op {
        op,
        detail: e.to_string(),
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
    /// Parent of run cgroups, relative to the hierarchy root(s).
    parent: PathBuf,
    /// v1: mount point of each controller we read statistics from.
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

impl Cgroups {
    /// Detects the hierarchy and checks that `parent` can be created or written.
    pub fn detect(parent: &str) -> Result<Cgroups, CgroupError> {
        let version = match libcgroups::common::get_cgroup_setup() {
            Ok(CgroupSetup::Unified) => Version::V2,
            Ok(_) => Version::V1,
            Err(e) => return Err(CgroupError::Unavailable(e.to_string())),
        };
        let parent = PathBuf::from(parent.trim_start_matches('/'));
        let v1_mounts = if version == Version::V1 {
            v1_mount_points()
        } else {
            Vec::new()
        };
        if version == Version::V1 && !nix::unistd::geteuid().is_root() {
            // libcgroups' v1 manager writes devices.allow for every cgroup, which needs
            // CAP_SYS_ADMIN: v1 limits are for root servers only.
            return Err(CgroupError::Unavailable(
                "cgroup v1 limits need a root server; an unprivileged server needs cgroup v2 with a delegated subtree".into(),
            ));
        }
        let cg = Cgroups {
            version,
            parent,
            v1_mounts,
        };
        cg.check_writable()?;
        Ok(cg)
    }

    /// The cgroup version in use.
    pub fn version(&self) -> Version {
        self.version
    }

    fn controller_dirs(&self, rel: &Path) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![Path::new(ROOT).join(rel)],
            Version::V1 => ["memory", "cpu", "pids"]
                .iter()
                .filter_map(|c| self.mount_of(c))
                .map(|m| m.join(rel))
                .collect(),
        }
    }

    fn mount_of(&self, controller: &str) -> Option<PathBuf> {
        self.v1_mounts
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.clone())
    }

    fn check_writable(&self) -> Result<(), CgroupError> {
        let dirs = self.controller_dirs(&self.parent);
        if self.version == Version::V1 && dirs.len() < 3 {
            return Err(CgroupError::Unavailable(
                "the memory, cpu and pids v1 controllers are not all mounted".into(),
            ));
        }
        for d in dirs {
            if d.is_dir() {
                if nix::unistd::access(&d, nix::unistd::AccessFlags::W_OK).is_err() {
                    return Err(CgroupError::Unavailable(format!(
                        "{} is not writable",
                        d.display()
                    )));
                }
            } else if let Err(e) = fs::create_dir_all(&d) {
                return Err(CgroupError::Unavailable(format!(
                    "cannot create {}: {e}",
                    d.display()
                )));
            }
        }
        Ok(())
    }

    /// Prepares the cgroup of one run; it is created when the first task is added
    /// ([`RunCgroup::add`]), then limits are applied ([`RunCgroup::apply`]).
    pub fn create(&self, run_id: &str) -> Result<RunCgroup, CgroupError> {
        let rel = self.parent.join(run_id);
        let path = match self.version {
            Version::V1 => rel.clone(),
            Version::V2 => Path::new("/").join(&rel),
        };
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: path,
            systemd_cgroup: false,
            container_name: run_id.to_string(),
        })
        .map_err(|e| op_err("create")(Box::new(e)))?;
        let run = RunCgroup {
            manager,
            rel,
            cgroups: self.clone(),
            removed: false,
        };
        Ok(run)
    }

    /// Removes leftovers of runs of crashed processes: every child of `<parent>` whose name
    /// `is_dead` accepts is killed and removed. Returns how many were removed.
    pub fn sweep_dead(&self, is_dead: impl Fn(&str) -> bool) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for d in self.controller_dirs(&self.parent) {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        names.insert(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        let mut n = 0;
        for name in names.into_iter().filter(|n| is_dead(n)) {
            for d in self.controller_dirs(&self.parent.join(&name)) {
                kill_procs(&d);
                if remove_dir_retry(&d) {
                    n += 1;
                }
            }
            if self.version == Version::V1 {
                // libcgroups also created the run in the other v1 controllers.
                for (_, m) in &self.v1_mounts {
                    let d = m.join(&self.parent).join(&name);
                    if d.is_dir() {
                        kill_procs(&d);
                        remove_dir_retry(&d);
                    }
                }
            }
        }
        n
    }
}

/// The cgroup of one run. Dropping it kills what is left and removes it.
pub struct RunCgroup {
    manager: AnyCgroupManager,
    rel: PathBuf,
    cgroups: Cgroups,
    removed: bool,
}

impl RunCgroup {
    /// Applies the limits (after [`RunCgroup::add`] created the cgroup).
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let mut res = LinuxResourcesBuilder::default();
        if let Some(mem) = limits.memory_bytes {
            let mem = mem as i64;
            let m = LinuxMemoryBuilder::default()
                .limit(mem)
                .swap(mem)
                .build()
                .map_err(|e| op_err("memory limit")(Box::new(e)))?;
            res = res.memory(m);
        }
        if let Some(cpus) = limits.cpus {
            let period: u64 = 100_000;
            let quota = ((cpus * period as f64).round() as i64).max(1000);
            let c = LinuxCpuBuilder::default()
                .period(period)
                .quota(quota)
                .build()
                .map_err(|e| op_err("cpu limit")(Box::new(e)))?;
            res = res.cpu(c);
        }
        if let Some(pids) = limits.pids {
            let p = LinuxPidsBuilder::default()
                .limit(pids as i64)
                .build()
                .map_err(|e| op_err("pids limit")(Box::new(e)))?;
            res = res.pids(p);
        }
        let res = res.build().map_err(|e| op_err("resources")(Box::new(e)))?;
        self.manager
            .apply(&ControllerOpt {
                resources: &res,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| op_err("apply limits")(Box::new(e)))
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(|e| op_err("add task")(Box::new(e)))
    }

    fn dir(&self, controller: &str) -> Option<PathBuf> {
        match self.cgroups.version {
            Version::V2 => Some(Path::new(ROOT).join(&self.rel)),
            Version::V1 => self.cgroups.mount_of(controller).map(|m| m.join(&self.rel)),
        }
    }

    /// Kills every task of the run (freezing first on v1 so nothing forks meanwhile).
    pub fn kill_all(&self) {
        match self.cgroups.version {
            Version::V2 => {
                if let Some(d) = self.dir("") {
                    if fs::write(d.join("cgroup.kill"), "1").is_err() {
                        kill_procs(&d);
                    }
                }
            }
            Version::V1 => {
                let _ = self.manager.freeze(FreezerState::Frozen);
                if let Some(d) = self.dir("pids") {
                    kill_procs(&d);
                }
                let _ = self.manager.freeze(FreezerState::Thawed);
            }
        }
    }

    /// Reads the OOM verdict and usage. Call after the run's tasks are gone.
    pub fn usage(&self) -> Usage {
        match self.cgroups.version {
            Version::V2 => {
                let d = self.dir("").unwrap_or_default();
                Usage {
                    cpu_time_ms: read_key(&d.join("cpu.stat"), "usage_usec").map(|u| u / 1000),
                    max_rss_mb: read_u64(&d.join("memory.peak")).map(mib),
                    oom_killed: read_key(&d.join("memory.events"), "oom_kill").map(|n| n > 0),
                }
            }
            Version::V1 => {
                let mem = self.dir("memory").unwrap_or_default();
                let acct = self.dir("cpuacct");
                Usage {
                    cpu_time_ms: acct
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
        self.kill_all();
        self.manager
            .remove()
            .map_err(|e| op_err("remove")(Box::new(e)))
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.removed {
            self.kill_all();
            let _ = self.manager.remove();
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

fn kill_procs(dir: &Path) {
    for _ in 0..50 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove_dir_retry(dir: &Path) -> bool {
    for _ in 0..20 {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

/// v1 controller mount points from `/proc/self/mountinfo` (controller name → mount).
fn v1_mount_points() -> Vec<(String, PathBuf)> {
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
            if matches!(o, "memory" | "cpu" | "cpuacct" | "pids" | "freezer") {
                out.push((o.to_string(), PathBuf::from(mount)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_parsed() {
        let dir = std::env::temp_dir().join(format!("tako-cg-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("memory.oom_control");
        fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(read_key(&f, "oom_kill"), Some(2));
        assert_eq!(read_key(&f, "missing"), None);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mib(1_572_864), 1.5);
    }
}
