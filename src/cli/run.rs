//! `tako-vm run`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::exec::classify;
use crate::exec::record::Status;
use crate::exec::runner::{self, CodeRun};
use crate::sandbox::idmap::IdMap;
use crate::sandbox::spec::{Layers, Limits, NetworkSpec, SandboxSpec};
use crate::sandbox::{cgroup, host, HostConfig, RunOptions, Runner};

/// Arguments of `tako-vm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root filesystem to run on (mounted read-only).
    #[arg(long, required_unless_present_any = ["image", "job_type"], conflicts_with_all = ["image", "job_type"])]
    rootfs: Option<PathBuf>,
    /// Run on a pulled image (see `tako-vm pull`); its config `Env` applies.
    #[arg(long, conflicts_with = "job_type")]
    image: Option<String>,
    /// Run on a job type's snapshot (built on first use unless production_mode).
    #[arg(long)]
    job_type: Option<String>,
    #[command(flatten)]
    store: super::images::StoreArgs,
    /// Memory limit (e.g. 512m, 1g); also the memory+swap limit.
    #[arg(long, default_value = "512m")]
    memory: String,
    /// CPU limit in cores.
    #[arg(long, default_value_t = 1.0)]
    cpus: f64,
    /// Maximum number of processes and threads.
    #[arg(long, default_value_t = 100)]
    pids: u64,
    /// Timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Size of the /tmp tmpfs (e.g. 100m).
    #[arg(long, default_value = "100m")]
    tmpfs_size: String,
    /// Python file to run as /code/main.py under the execution contract.
    #[arg(long, conflicts_with = "cmd")]
    code: Option<PathBuf>,
    /// JSON object for /input/data.json (with --code).
    #[arg(long, requires = "code")]
    input: Option<PathBuf>,
    /// Print the execution record as JSON (with --code; the default for --code).
    #[arg(long)]
    json: bool,
    /// Keep the artifacts of /output in this directory (with --code).
    #[arg(long, requires = "code")]
    artifacts_dir: Option<PathBuf>,
    /// Run without cgroup limits when no cgroup is usable (unprivileged hosts).
    #[arg(long, env = "TAKO_VM_ALLOW_UNLIMITED_SANDBOXES")]
    allow_unlimited: bool,
    /// Parent cgroup of the runs.
    #[arg(long, default_value = "tako-vm", env = "TAKO_VM_CGROUP_PARENT")]
    cgroup_parent: String,
    /// Give the run an outbound network (veth + NAT; private ranges and the host stay unreachable).
    #[arg(long)]
    network: bool,
    /// With --network: the IPv4 pool of sandbox addresses (one /30 per run).
    #[arg(long, default_value = "10.200.0.0/16", env = "TAKO_VM_NETWORK_POOL", value_parser = crate::sandbox::net::parse_pool)]
    network_pool: (std::net::Ipv4Addr, u8),
    /// With --network: only these destinations (domain names or CIDRs) are reachable.
    #[arg(long = "allow-host", requires = "network")]
    allow_hosts: Vec<String>,
    /// The command to run (after --).
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// Parses a size like `512m`, `1g`, `100k` or a byte count.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?} (use e.g. 512m or 1g)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

/// The longest `--timeout`: a week.
const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;

fn limits(a: &RunArgs) -> anyhow::Result<Limits> {
    if !(a.cpus > 0.0 && a.cpus <= 1024.0) {
        bail!("--cpus must be between 0 and 1024");
    }
    // A week at most: the deadlines are computed in milliseconds from it.
    if !(1..=MAX_TIMEOUT_S).contains(&a.timeout) {
        bail!("--timeout must be between 1 and {MAX_TIMEOUT_S} seconds");
    }
    // 0 would mean "no limit" to the cgroup and to tmpfs: refused, not passed on. The
    // kernel has at most 2^22 pids.
    if !(1..=1 << 22).contains(&a.pids) {
        bail!("--pids must be between 1 and 4194304");
    }
    let memory = parse_size(&a.memory)?;
    if memory < 1 << 20 {
        bail!("--memory must be at least 1m");
    }
    let tmpfs_bytes = parse_size(&a.tmpfs_size)?;
    if tmpfs_bytes < 1 << 20 {
        bail!("--tmpfs-size must be at least 1m");
    }
    Ok(Limits {
        memory_bytes: Some(memory),
        cpus: Some(a.cpus),
        pids: Some(a.pids),
        tmpfs_bytes,
        ..Limits::default()
    })
}

/// Runs `tako-vm run`; returns the exit code.
pub fn run(config: Option<&std::path::Path>, a: RunArgs) -> anyhow::Result<i32> {
    // Where a manager is built ahead (v1, root): the init first, so that the kernel builds
    // its namespaces meanwhile, then the thread. Elsewhere the init is cloned as the run
    // starts: an unprivileged v2 CLI first moves itself into a leaf of its delegated cgroup,
    // and a process launched before that would stay behind in its parent (EBUSY).
    // There the init is born in its cgroup: the launcher enters it first (`SelfJoin`). A run
    // refused before it starts leaves no launched init and no cgroup behind (`_launched`).
    //
    // A command run without a network (`-- CMD`) also leaves the id maps to the launcher,
    // and hands its spec over as soon as it has it (`hand_spec`): the init then builds its
    // filesystem on another CPU without a round trip through this process, which checks
    // the rootfs, builds the cgroup manager and detects the rest of the host meanwhile. A
    // code run, whose spec is built by the runner, and a network run, whose id map answer
    // carries the veth, send their spec and id maps from the run.
    let id = host::new_run_id();
    let early = a.rootfs.as_ref().is_some_and(|r| r.is_dir()) && cgroup::builds_ahead();
    let hand_over = early && a.code.is_none() && !a.network;
    // Before the launch only where the launcher writes them.
    let early_idmap = hand_over
        .then(IdMap::detect)
        .transpose()
        .map_err(crate::sandbox::SandboxError::from)?;
    let mut _launched = None;
    if early {
        let join = cgroup::SelfJoin::plan(cgroup::v1_mount_points(), &a.cgroup_parent, &id)
            .ok()
            .filter(|j| j.ready().is_ok());
        _launched = Some(crate::sandbox::supervisor::launch_init(
            join,
            early_idmap.clone(),
        ));
    }
    // On a v1 host libcgroups' manager takes ~2 ms to build: on a thread, meanwhile.
    cgroup::prepare(&a.cgroup_parent, &id);
    // `_hold` keeps gc away from a job-type snapshot until the run is over.
    let (rootfs, lower, image_env, _hold) =
        super::run_image::rootfs_for(config, &a.rootfs, &a.image, &a.job_type, &a.store)?;
    if !rootfs.is_dir() {
        bail!("rootfs {} is not a directory", rootfs.display());
    }
    let rootfs = rootfs.canonicalize()?;
    let missing = rootfs_builder::check_layered(&rootfs, &lower);
    if !missing.is_empty() {
        bail!(
            "rootfs {} is not prepared for tako-vm, it lacks: {} (scripts/build-rootfs prepares one)",
            rootfs.display(),
            missing.join(", ")
        );
    }
    let lim = limits(&a)?;
    let host_config = HostConfig {
        cgroup_parent: a.cgroup_parent.clone(),
        allow_unlimited: a.allow_unlimited,
        helper_exe: None,
        net_pool: a.network_pool,
        // With --rootfs no configuration (and so no secret) was loaded.
        clone_init: a.rootfs.is_some(),
        defer_sweep: true,
        ..HostConfig::default()
    };
    let idmap = match early_idmap {
        Some(m) => m,
        None => IdMap::detect().map_err(crate::sandbox::SandboxError::from)?,
    };
    let network = a.network.then(|| NetworkSpec {
        allowed_hosts: a.allow_hosts.clone(),
    });
    if let Some(code_path) = &a.code {
        let code = std::fs::read_to_string(code_path)
            .with_context(|| format!("cannot read {}", code_path.display()))?;
        let input = match &a.input {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", p.display()))?;
                if !v.is_object() {
                    bail!("{} must contain a JSON object", p.display());
                }
                v
            }
            None => serde_json::json!({}),
        };
        if let Some(d) = &a.artifacts_dir {
            std::fs::create_dir_all(d)?;
        }
        let mut run = CodeRun::new(id, rootfs, code);
        run.lower = lower;
        run.input = input;
        run.timeout_s = a.timeout;
        run.limits = lim;
        run.artifacts_dir = a.artifacts_dir.clone();
        run.network = network;
        run.env = image_env;
        let runner = Runner::detect_with_idmap(&host_config, idmap)?;
        let result = runner::execute(&runner, &run);
        use std::io::Write;
        let text = serde_json::to_string_pretty(&result)?;
        // A closed stdout (e.g. `| head`) is not an error of the run.
        let _ = writeln!(std::io::stdout(), "{text}");
        return Ok(if result.status == Status::Succeeded {
            0
        } else {
            1
        });
    }
    if a.cmd.is_empty() {
        bail!("nothing to run: give --code FILE or -- CMD [ARGS...]");
    }
    let spec = SandboxSpec {
        rootfs,
        argv: a.cmd.clone(),
        env: vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), "/home/sandbox".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ]
        .into_iter()
        .filter(|(k, _)| !image_env.iter().any(|(ik, _)| ik == k))
        .chain(image_env.iter().cloned())
        .collect(),
        cwd: "/".into(),
        hostname: "tako-sandbox".into(),
        limits: lim,
        injected: vec![],
        output: None,
        timeout_ms: a.timeout * 1000,
        kill_grace_ms: 1000,
        tmp_dirs: vec![],
        network,
        binds: vec![],
        layers: Layers::under(lower),
    };
    if hand_over {
        crate::sandbox::supervisor::hand_spec(&spec);
    }
    // After the launch where there is one: the rest of the host's detection (the cgroup
    // parents, the sweeps) runs while the init is built on the other CPU.
    let runner = Runner::detect_with_idmap(&host_config, idmap)?;
    let opts = RunOptions {
        run_id: id,
        host_deadline: std::time::Duration::from_secs(a.timeout + 120 + runner::HOST_GRACE_S),
        stdout_keep: 0,
        stderr_keep: 0,
        tee: true,
        artifacts_dir: None,
        cancel: None,
    };
    let o = runner.run(&spec, &opts)?;
    if let Some(e) = &o.setup_error {
        if o.exit.is_none() {
            bail!("sandbox setup failed: {e}");
        }
    }
    Ok(match &o.exit {
        Some(x) if x.timed_out => classify::EXIT_TIMEOUT,
        Some(x) => x.code.or(x.signal.map(|s| 128 + s)).unwrap_or(1),
        None if o.host_timeout => classify::EXIT_TIMEOUT,
        None => classify::EXIT_SIGKILL,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("100k").unwrap(), 100 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }
}
