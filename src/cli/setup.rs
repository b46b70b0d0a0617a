//! `tako-vm setup`: checks the host for running sandboxes as a service and says how to fix
//! each failed check. `--systemd` also installs the unit (see `scripts/install`).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use clap::Args;

/// Arguments of `tako-vm setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The service user whose subuid range is checked.
    #[arg(long, default_value = "tako-vm")]
    user: String,
    /// Install the systemd unit, the service user and its subuid range (runs scripts/install).
    #[arg(long)]
    systemd: bool,
    /// Do not pre-pull the default base image.
    #[arg(long)]
    no_pull: bool,
    /// The base image to pre-pull.
    #[arg(long, default_value = "python:3.11-slim")]
    image: String,
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    advice: &'static str,
}

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn has_range(file: &str, user: &str) -> bool {
    let uid = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.to_string());
    read(file).is_some_and(|t| {
        t.lines().any(|l| {
            let first = l.split(':').next().unwrap_or("");
            first == user || Some(first.to_string()) == uid
        })
    })
}

/// The path of a program (`PATH`, then the sbin directories), as the sandbox finds it.
fn which(bin: &str) -> Option<String> {
    crate::sandbox::host::find_program(bin).map(|p| p.display().to_string())
}

fn checks(user: &str, cfg: &crate::config::Config) -> Vec<Check> {
    let mut v = Vec::new();
    let max_ns = read("/proc/sys/user/max_user_namespaces").and_then(|s| s.parse::<u64>().ok());
    let clone = read("/proc/sys/kernel/unprivileged_userns_clone");
    v.push(Check {
        name: "user namespaces",
        ok: max_ns.unwrap_or(0) > 0 && clone.as_deref() != Some("0"),
        detail: format!("max_user_namespaces={max_ns:?} unprivileged_userns_clone={clone:?}"),
        advice: "sysctl -w user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1 (Ubuntu 24.04+: kernel.apparmor_restrict_unprivileged_userns=0)",
    });
    let sub = has_range("/etc/subuid", user) && has_range("/etc/subgid", user);
    v.push(Check {
        name: "subuid/subgid range",
        ok: sub,
        detail: format!("user {user}"),
        advice: "usermod --add-subuids 200000-265535 --add-subgids 200000-265535 tako-vm (scripts/install does it)",
    });
    v.push(Check {
        name: "newuidmap/newgidmap",
        ok: which("newuidmap").is_some() && which("newgidmap").is_some(),
        detail: which("newuidmap").unwrap_or_else(|| "not found".into()),
        advice: "apt-get install uidmap",
    });
    let release = rootfs_builder::kernel_release();
    let overlay = read("/proc/filesystems").is_some_and(|f| {
        f.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    }) || Path::new("/lib/modules")
        .join(&release)
        .join("kernel/fs/overlayfs")
        .is_dir();
    v.push(Check {
        name: "overlayfs in user namespaces",
        ok: overlay && rootfs_builder::kernel_at_least(&release, (5, 11)),
        detail: format!("kernel {release}, overlay available: {overlay}"),
        advice: "Linux 5.11 or later with overlayfs (modprobe overlay): job-type snapshots are then overlay layers over their base image; without, builds make whole copies (hard-link clones) of it",
    });
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let controllers = read("/sys/fs/cgroup/cgroup.subtree_control").unwrap_or_default();
    let delegated = if v2 {
        ["memory", "cpu", "pids"]
            .iter()
            .all(|c| controllers.split_whitespace().any(|x| x == *c))
    } else {
        Path::new("/sys/fs/cgroup/memory").is_dir() && nix::unistd::geteuid().is_root()
    };
    v.push(Check {
        name: "cgroups",
        ok: delegated,
        detail: if v2 {
            format!("v2, subtree_control: {controllers}")
        } else {
            "v1 (limits need a root server)".into()
        },
        advice: "cgroup v2 with a delegated subtree: run the systemd unit (Delegate=yes), or run as root on cgroup v1",
    });
    v.push(Check {
        name: "uv",
        ok: which("uv").is_some(),
        detail: which("uv").unwrap_or_else(|| "not found".into()),
        advice: "pip install uv (needed to bake job-type requirements into snapshots)",
    });
    let reach = "registry-1.docker.io:443"
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok());
    v.push(Check {
        name: "registry reachability",
        ok: reach,
        detail: "registry-1.docker.io:443".into(),
        advice: "allow outbound HTTPS to the registry, or use a local OCI registry / layout (air-gapped hosts)",
    });
    v.push(network_check(user));
    let base = cfg.base_rootfs();
    v.push(Check {
        name: "base rootfs",
        ok: base.as_ref().is_some_and(|b| b.is_dir()),
        detail: base.map_or("none".into(), |b| b.display().to_string()),
        advice: "pull the default base image (python:3.11-slim) or build the fixture: scripts/build-rootfs; set base_rootfs",
    });
    v
}

/// Network-enabled runs of the (unprivileged) service: pasta, nft, and a /dev/net/tun the
/// service user may open (docs/network.md).
fn network_check(user: &str) -> Check {
    use std::os::unix::fs::MetadataExt;
    let tools = ["pasta", "nft"].iter().all(|t| which(t).is_some());
    let gid = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw());
    let tun = std::fs::metadata("/dev/net/tun").ok();
    let tun_ok = tun.as_ref().is_some_and(|m| {
        m.mode() & 0o006 == 0o006 || (Some(m.gid()) == gid && m.mode() & 0o060 == 0o060)
    });
    Check {
        name: "network (network_enabled job types)",
        ok: tools && tun_ok,
        detail: format!(
            "pasta+nft installed: {tools}; /dev/net/tun mode {:o}",
            tun.map_or(0, |m| m.mode() & 0o777)
        ),
        advice: "apt-get install passt nftables; let the service user open /dev/net/tun (scripts/install adds a udev rule: group tako-vm, mode 0660); without it network-enabled runs are refused",
    }
}

/// Runs `tako-vm setup`.
pub fn run(config_path: Option<&Path>, a: SetupArgs) -> anyhow::Result<i32> {
    let cfg = match crate::config::load(config_path) {
        Ok((c, _)) => c,
        Err(e) => {
            println!("[FAIL] configuration: {e}");
            crate::config::Config::default()
        }
    };
    if a.systemd {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
        let status = std::process::Command::new(&script).status();
        match status {
            Ok(s) if s.success() => println!("systemd unit installed"),
            Ok(s) => {
                eprintln!("{} failed: {s}", script.display());
                return Ok(1);
            }
            Err(e) => {
                eprintln!("cannot run {}: {e}", script.display());
                return Ok(1);
            }
        }
    }
    let mut failed = 0;
    for c in checks(&a.user, &cfg) {
        println!(
            "[{}] {}: {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
        if !c.ok {
            println!("       fix: {}", c.advice);
            failed += 1;
        }
    }
    if !a.no_pull {
        println!(
            "\nPre-pulling the default base image {} (`tako-vm pull`)",
            a.image
        );
        let exe = std::env::current_exe()?;
        let pulled = std::process::Command::new(exe)
            .args(["pull", &a.image])
            .status();
        if !pulled.is_ok_and(|s| s.success()) {
            println!(
                "[FAIL] pre-pull of {}\n       fix: check registry reachability above, or pull from a local registry / OCI layout",
                a.image
            );
            failed += 1;
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use rootfs_builder::kernel_at_least;

    /// Snapshots need overlayfs in user namespaces (5.11); releases are read as distributions
    /// spell them.
    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 11)));
        assert!(kernel_at_least("5.11.0", (5, 11)));
        assert!(kernel_at_least("6.18.0", (5, 11)));
        assert!(!kernel_at_least("5.10.209-1", (5, 11)));
        assert!(!kernel_at_least("4.19.0-26-amd64", (5, 11)));
        assert!(!kernel_at_least("", (5, 11)));
        assert!(!kernel_at_least("garbage", (5, 11)));
    }
}
