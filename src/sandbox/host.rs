//! Choosing how this host runs sandboxes, and the start-up sweep of leftovers.

use std::path::{Path, PathBuf};

use super::cgroup::{CgroupError, Cgroups};
use super::idmap::IdMap;
use super::supervisor::{Runner, SandboxError};

/// Host-level sandbox settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Parent of the per-run cgroups (relative to the hierarchy root).
    pub cgroup_parent: String,
    /// Run without cgroup limits when no cgroup is usable (explicit opt-in only).
    pub allow_unlimited: bool,
    /// Our binary, re-executed as the sandbox helper (default: the current executable).
    pub helper_exe: Option<PathBuf>,
    /// Address pool of network-enabled runs (one /30 each).
    pub net_pool: (std::net::Ipv4Addr, u8),
    /// Keep the nftables table for the process lifetime (servers); else removed when idle.
    pub keep_net_table: bool,
    /// Helpers to keep pre-started (each in its cgroup, waiting for a spec); 0 for a CLI.
    pub prestart: usize,
    /// May clone the sandbox init itself, without a helper and without an exec, when
    /// single-threaded (the CLI with `--rootfs`). Only for a process that loaded no secrets
    /// (no configuration file): the cloned init keeps a copy of the caller's memory.
    pub clone_init: bool,
    /// Sweep the cgroups of dead runs during the first run (after its cgroup holds its
    /// limits) instead of before it: a CLI, whose one run waits for nothing the sweep does.
    pub defer_sweep: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cgroup_parent: "tako-vm".into(),
            allow_unlimited: false,
            helper_exe: None,
            net_pool: super::net::DEFAULT_POOL,
            keep_net_table: false,
            prestart: 0,
            clone_init: false,
            defer_sweep: false,
        }
    }
}

/// Finds a host program: `PATH`, then the sbin and bin directories an unprivileged `PATH`
/// may lack (the host tools tako-vm runs: nft, pasta, uv; and `tako-vm setup`'s checks).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `nft` binary, looked up once per process (plain `nft` when it is not found, so the
/// error names it).
pub fn nft_program() -> &'static Path {
    static NFT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    NFT.get_or_init(|| find_program("nft").unwrap_or_else(|| "nft".into()))
}

/// A token naming this process: pid and start time, so a reused pid is not mistaken for us.
pub fn owner_token(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) counted after the ")" that ends the command name.
    let rest = stat.rsplit_once(')')?.1;
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid}.{start}"))
}

/// This process's [`owner_token`], read once (a forked child reads its own).
fn own_token() -> String {
    static OWN: std::sync::OnceLock<(u32, String)> = std::sync::OnceLock::new();
    let me = std::process::id();
    let read = || owner_token(me).unwrap_or_else(|| format!("{me}.0"));
    match OWN.get_or_init(|| (me, read())) {
        (pid, token) if *pid == me => token.clone(),
        _ => read(),
    }
}

/// True when the process that owns a run name (`<pid>.<start>.<rest>`) is gone. This
/// process's own runs are alive without a look at `/proc` (the CLI's sweep meets its own
/// run in every hierarchy).
pub fn owner_is_dead(run_name: &str) -> bool {
    let mut it = run_name.splitn(3, '.');
    let (Some(pid), Some(start)) = (it.next(), it.next()) else {
        return true;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    let token = format!("{pid}.{start}");
    if pid == std::process::id() {
        return own_token() != token;
    }
    owner_token(pid).as_deref() != Some(&token)
}

/// A fresh run id owned by this process.
pub fn new_run_id() -> String {
    format!("{}.{}", own_token(), uuid::Uuid::new_v4().simple())
}

impl Runner {
    /// Detects id maps and cgroups for this host and sweeps leftovers of dead processes.
    pub fn detect(cfg: &HostConfig) -> Result<Runner, SandboxError> {
        Self::detect_with_idmap(cfg, IdMap::detect()?)
    }

    /// [`Runner::detect`] with the id maps detected already (the CLI needs them before the
    /// rest, for a hand-off).
    pub fn detect_with_idmap(cfg: &HostConfig, idmap: IdMap) -> Result<Runner, SandboxError> {
        let cgroups = match Cgroups::detect(&cfg.cgroup_parent) {
            Ok(c) => {
                if !cfg.defer_sweep {
                    c.sweep_dead(owner_is_dead);
                }
                Some(c)
            }
            Err(CgroupError::Unavailable(_)) if cfg.allow_unlimited => None,
            Err(e) => return Err(e.into()),
        };
        let helper_exe = match &cfg.helper_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        if nix::unistd::geteuid().is_root() {
            if cfg.keep_net_table {
                super::net::keep_table_for_this_process()?;
            }
            let _ = super::net::sweep();
            let _ = super::net::remove_table_if_idle();
        } else {
            super::pasta::sweep(owner_is_dead);
        }
        let mut runner = Runner {
            helper_exe,
            idmap,
            cgroups,
            net_pool: cfg.net_pool,
            keep_net_table: cfg.keep_net_table,
            clone_init: cfg.clone_init,
            pool: None,
            sweep_deferred: cfg.defer_sweep,
        };
        if cfg.prestart > 0 {
            runner.pool = Some(super::supervisor::Pool::start(runner.clone(), cfg.prestart));
        }
        Ok(runner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_of_live_owners_are_kept_and_dead_ones_swept() {
        let id = new_run_id();
        assert!(!owner_is_dead(&id), "{id}");
        assert!(owner_is_dead("999999999.1.abc"));
        assert!(owner_is_dead("garbage"));
        let me = std::process::id();
        assert!(
            owner_is_dead(&format!("{me}.1.x")),
            "wrong start time must count as dead"
        );
    }
}
