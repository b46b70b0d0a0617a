//! Outbound network for `network_enabled` runs of an unprivileged server: pasta (Debian
//! `passt`) gives the sandbox's network namespace a tap interface whose traffic it turns
//! into ordinary sockets of the server's user, and an nftables ruleset *inside* that
//! namespace enforces the same policy as the root path's host table.
//!
//! pasta itself has no destination filter, and its sockets are the server user's own, so
//! without a filter a sandbox could reach the host's services on any of its addresses. The
//! filter therefore sits in the sandbox's namespace, on the output hook, installed before
//! pasta creates the interface and before the payload starts. The payload cannot change it:
//! it has no capabilities (and seccomp denies the calls that could give it new ones).
//!
//! Policy (output hook, default drop):
//! 1. loopback (the sandbox's own) is allowed;
//! 2. DNS (port 53) to [`DNS_FORWARD`], which pasta forwards to the host's first resolver;
//! 3. with `allowed_hosts`: only those addresses, everything else dropped;
//! 4. without: private, loopback, link-local/metadata, CGNAT, multicast and reserved IPv4
//!    ranges, every address of the host and every subnet the host is attached to are
//!    dropped; the rest of IPv4 (the public internet) is allowed;
//! 5. IPv6 is dropped (pasta runs with `--ipv4-only`, so the sandbox has no IPv6 address).
//!
//! Input hook: loopback and replies only. pasta runs with every port forwarding off
//! (`-t none -u none -T none -U none`), so nothing reaches into the sandbox, and with
//! `--no-map-gw`, so the gateway address is not the host.
//!
//! pasta daemonizes once the namespace is configured; its pid file lives in a private
//! per-user run directory, named after the run id, so a start-up sweep can end the pasta of
//! a crashed server. Every step runs under a timeout; any failure refuses the run.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::net::{host_has_ipv6, run_tool, Allowed, NetError, BLOCKED_V4, BLOCKED_V6, TABLE};
use super::pidfd;

/// Where the sandbox sends DNS queries; pasta forwards them to the host's first resolver.
pub const DNS_FORWARD: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 53);

/// The pasta binary (`TAKO_VM_PASTA`, else the host's), looked up once per process.
pub fn pasta_program() -> Option<&'static Path> {
    static PASTA: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PASTA
        .get_or_init(|| match std::env::var_os("TAKO_VM_PASTA") {
            Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
            None => super::host::find_program("pasta"),
        })
        .as_deref()
}

/// Why this host cannot give an unprivileged server a filtered network, if it cannot.
pub fn unavailable() -> Option<String> {
    if pasta_program().is_none() {
        return Some("pasta is not installed (Debian/Ubuntu package `passt`)".into());
    }
    if super::host::find_program("nft").is_none() {
        return Some(
            "nft is not installed (package `nftables`); it filters the sandbox's traffic".into(),
        );
    }
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Some(format!(
            "/dev/net/tun cannot be opened by this user ({e}); pasta needs it: `chmod 0666 /dev/net/tun` (the default on most distributions)"
        ));
    }
    None
}

/// The per-user directory of pasta pid files (private to the user).
fn run_dir() -> io::Result<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid))
        .map(|p| p.join("tako-vm"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/tako-vm-{uid}")));
    match fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // Never trust a directory somebody else made (or a symlink to one).
    let m = fs::symlink_metadata(&base)?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of uid {uid}",
            base.display()
        )));
    }
    Ok(base)
}

fn pid_file(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("pasta-{run_id}.pid"))
}

/// The host's own addresses and the subnets it is attached to, IPv4 and IPv6 (loopback
/// and IPv6 link-local left out: blocked anyway).
pub fn host_networks() -> (Vec<String>, Vec<String>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for a in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        if let (Some(ad), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let (ip, m) = (ad.ip(), u32::from(m.ip()));
            if !ip.is_loopback() {
                v4.push(ip.to_string());
                let net = Ipv4Addr::from(u32::from(ip) & m);
                v4.push(format!("{net}/{}", m.count_ones()));
            }
        } else if let (Some(ad), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let (ip, m) = (ad.ip(), u128::from(m.ip()));
            if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                v6.push(ip.to_string());
                let net = std::net::Ipv6Addr::from(u128::from(ip) & m);
                v6.push(format!("{net}/{}", m.count_ones()));
            }
        }
    }
    for v in [&mut v4, &mut v6] {
        v.sort();
        v.dedup();
    }
    (v4, v6)
}

/// The ruleset loaded into the sandbox's own network namespace. `host_nets6` is `Some`
/// when the sandbox gets IPv6 (the host has it).
pub fn policy_script(
    host_nets: &[String],
    host_nets6: Option<&[String]>,
    allowed: Option<&Allowed>,
) -> String {
    let ipv6 = host_nets6.is_some();
    let mut egress = match allowed {
        Some(a) if a.elements.is_empty() => String::new(),
        Some(a) => format!("        ip daddr {{ {} }} accept\n", a.elements.join(", ")),
        None => "        ip daddr @blocked4 drop\n        meta nfproto ipv4 accept\n".into(),
    };
    match allowed {
        Some(a) if ipv6 && !a.elements6.is_empty() => {
            egress.push_str(&format!(
                "        ip6 daddr {{ {} }} accept\n",
                a.elements6.join(", ")
            ));
        }
        None if ipv6 => {
            egress.push_str("        ip6 daddr @blocked6 drop\n        meta nfproto ipv6 accept\n")
        }
        _ => {}
    }
    let mut blocked: Vec<&str> = BLOCKED_V4.to_vec();
    blocked.extend(host_nets.iter().map(String::as_str));
    let (set6, nd_out, nd_in) = match host_nets6 {
        Some(nets) => {
            let mut b6: Vec<&str> = BLOCKED_V6.to_vec();
            b6.extend(nets.iter().map(String::as_str));
            (
                format!(
                    "    set blocked6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {} }} }}\n",
                    b6.join(", ")
                ),
                // Neighbour discovery with pasta's side of the tap.
                "        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept\n",
                "        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept\n",
            )
        }
        None => (String::new(), "", ""),
    };
    format!(
        r#"table inet {TABLE} {{
    set blocked4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {blocked} }} }}
{set6}    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
{nd_out}        ip daddr {DNS_FORWARD} meta l4proto {{ tcp, udp }} th dport 53 accept
{egress}    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
{nd_in}        ct state established,related accept
    }}
}}
"#,
        blocked = blocked.join(", "),
    )
}

/// Runs between fork and exec: joins the user and network namespaces of the sandbox and
/// keeps CAP_NET_ADMIN (there) across the exec as an ambient capability. Raw system calls
/// only: the caller may be multi-threaded.
fn enter_with_net_admin(userns: RawFd, netns: RawFd) -> io::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: plain system calls on descriptors and stack memory we own.
    unsafe {
        if libc::setns(userns, libc::CLONE_NEWUSER) != 0
            || libc::setns(netns, libc::CLONE_NEWNET) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut hdr = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        data[0].inheritable |= 1 << CAP_NET_ADMIN;
        if libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0
            || libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                CAP_NET_ADMIN as libc::c_ulong,
                0,
                0,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Loads `script` with `nft` inside the user and network namespaces of `pid`.
fn nft_inside(pid: i32, script: &str) -> Result<(), NetError> {
    let userns = File::open(format!("/proc/{pid}/ns/user"))?;
    let netns = File::open(format!("/proc/{pid}/ns/net"))?;
    let (u, n) = (userns.as_raw_fd(), netns.as_raw_fd());
    let mut cmd = Command::new(super::host::nft_program());
    cmd.args(["-f", "-"]);
    // SAFETY: the closure makes raw system calls only (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || enter_with_net_admin(u, n));
    }
    run_tool(
        "sandbox firewall (nft in the sandbox namespace)",
        &mut cmd,
        Some(script),
    )?;
    Ok(())
}

/// Opens a pidfd for `pid` if it is a pasta process of our own user.
fn our_pasta(pid: i32) -> Option<OwnedFd> {
    let fd = pidfd::open(pid).ok()?;
    // Checked after the pidfd exists, so the process cannot be swapped in between.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let name_ok = status.lines().any(|l| {
        l.strip_prefix("Name:")
            .is_some_and(|n| n.trim().starts_with("pas"))
    });
    let uid = nix::unistd::geteuid().as_raw().to_string();
    let uid_ok = status.lines().any(|l| {
        l.strip_prefix("Uid:")
            .is_some_and(|u| u.split_whitespace().next() == Some(uid.as_str()))
    });
    (name_ok && uid_ok).then_some(fd)
}

/// The pasta of one run; dropping it ends pasta (and with it the sandbox's interface).
pub struct PastaLease {
    pidfd: Option<OwnedFd>,
    pid_file: PathBuf,
}

impl PastaLease {
    /// Filters and connects the network namespace of `pid` (the sandbox helper).
    pub fn create(
        pid: i32,
        run_id: &str,
        allowed: Option<&Allowed>,
    ) -> Result<PastaLease, NetError> {
        if let Some(why) = unavailable() {
            return Err(NetError::Rootless(why));
        }
        // The filter first: the interface never exists without it.
        let ipv6 = host_has_ipv6();
        let (nets4, nets6) = host_networks();
        let nets6 = ipv6.then_some(nets6);
        nft_inside(pid, &policy_script(&nets4, nets6.as_deref(), allowed))?;
        let dir = run_dir()?;
        let pid_file = pid_file(&dir, run_id);
        let mut lease = PastaLease {
            pidfd: None,
            pid_file,
        };
        let mut cmd = Command::new(pasta_program().unwrap_or(Path::new("pasta")));
        // The sandbox's interface is eth0 whatever the host's is called (as on the veth path).
        cmd.args([
            "--config-net",
            "--no-map-gw",
            "--quiet",
            "--ns-ifname",
            "eth0",
        ])
        .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
        .args(if ipv6 { &[][..] } else { &["--ipv4-only"][..] })
        .arg("--dns-forward")
        .arg(DNS_FORWARD.to_string())
        .arg("--netns")
        .arg(format!("/proc/{pid}/ns/net"))
        .arg("--userns")
        .arg(format!("/proc/{pid}/ns/user"))
        .arg("--pid")
        .arg(&lease.pid_file);
        // Returns once pasta has configured the namespace and gone to the background.
        run_tool("pasta", &mut cmd, None)?;
        let daemon: i32 = fs::read_to_string(&lease.pid_file)?
            .trim()
            .parse()
            .map_err(|_| NetError::Rootless("pasta wrote no pid file".into()))?;
        lease.pidfd = Some(
            our_pasta(daemon)
                .ok_or_else(|| NetError::Rootless("pasta exited right after starting".into()))?,
        );
        Ok(lease)
    }
}

impl Drop for PastaLease {
    fn drop(&mut self) {
        if let Some(fd) = &self.pidfd {
            pidfd::kill(fd);
        }
        let _ = fs::remove_file(&self.pid_file);
    }
}

/// Ends the pasta processes of runs whose owner process is gone (a crashed server or CLI).
pub fn sweep(owner_is_dead: impl Fn(&str) -> bool) {
    let Ok(dir) = run_dir() else {
        return;
    };
    let Ok(rd) = fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(run_id) = name
            .strip_prefix("pasta-")
            .and_then(|n| n.strip_suffix(".pid"))
        else {
            continue;
        };
        if !owner_is_dead(run_id) {
            continue;
        }
        if let Some(fd) = fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .and_then(our_pasta)
        {
            pidfd::kill(&fd);
        }
        let _ = fs::remove_file(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_drops_by_default_and_blocks_the_host() {
        let s = policy_script(&["192.0.2.2".into(), "192.0.2.0/24".into()], None, None);
        assert!(
            s.contains("hook output priority filter; policy drop;"),
            "{s}"
        );
        assert!(
            s.contains("hook input priority filter; policy drop;"),
            "{s}"
        );
        assert!(s.contains("192.0.2.0/24"), "{s}");
        assert!(s.contains("169.254.0.0/16"), "{s}");
        assert!(
            s.contains("ip daddr @blocked4 drop\n        meta nfproto ipv4 accept"),
            "{s}"
        );
        assert!(!s.contains("ipv6 accept"), "{s}");
    }

    #[test]
    fn an_allow_list_replaces_the_open_egress() {
        let a = Allowed {
            elements: vec!["203.0.113.80".into()],
            ..Allowed::default()
        };
        let s = policy_script(&[], None, Some(&a));
        assert!(s.contains("ip daddr { 203.0.113.80 } accept"), "{s}");
        assert!(!s.contains("meta nfproto ipv4 accept"), "{s}");
        // An empty list (no name resolved to IPv4): DNS and loopback only.
        let none = policy_script(&[], None, Some(&Allowed::default()));
        assert!(!none.contains("ip daddr {"), "{none}");
        assert!(!none.contains("nfproto ipv4 accept"), "{none}");
    }

    #[test]
    fn with_ipv6_the_policy_blocks_host_and_non_public_ipv6() {
        let nets6 = vec!["fd00::2".to_string(), "fd00::/64".to_string()];
        let s = policy_script(&[], Some(&nets6), None);
        assert!(
            s.contains("fd00::/64") && s.contains("fe80::/10") && s.contains("fc00::/7"),
            "{s}"
        );
        assert!(
            s.contains("ip6 daddr @blocked6 drop\n        meta nfproto ipv6 accept"),
            "{s}"
        );
        assert!(s.contains("icmpv6 type { nd-neighbor-solicit"), "{s}");
        let a = Allowed {
            elements: vec!["203.0.113.80".into()],
            elements6: vec!["2a00:ffff::2".into()],
            ..Allowed::default()
        };
        let r = policy_script(&[], Some(&nets6), Some(&a));
        assert!(r.contains("ip6 daddr { 2a00:ffff::2 } accept"), "{r}");
        assert!(!r.contains("meta nfproto ipv6 accept"), "{r}");
        // Without IPv6 for the sandbox, no IPv6 rule accepts anything (policy drop).
        assert!(!policy_script(&[], None, None).contains("ipv6 accept"));
    }

    #[test]
    fn host_networks_are_addresses_and_subnets_without_loopback() {
        let (nets, nets6) = host_networks();
        for n in &nets6 {
            assert!(!n.starts_with("fe80") && n != "::1", "{nets6:?}");
            let (ip, len) = n.split_once('/').unwrap_or((n, "128"));
            assert!(
                ip.parse::<std::net::Ipv6Addr>().is_ok() && len.parse::<u8>().unwrap() <= 128,
                "{n}"
            );
        }
        for n in &nets {
            assert!(!n.starts_with("127."), "{nets:?}");
            let (ip, len) = n.split_once('/').unwrap_or((n, "32"));
            assert!(
                ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().unwrap() <= 32,
                "{n}"
            );
        }
    }
}
