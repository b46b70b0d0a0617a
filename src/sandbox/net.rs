//! Outbound network for `network_enabled` runs of a root server (unprivileged: [`super::pasta`]): one veth pair per run, NAT and
//! a fail-closed egress policy in our own nftables table `inet tako_vm`.
//!
//! Policy (in this order, for packets from a sandbox interface `tako-*`):
//! 1. nothing reaches the host itself (input hook: drop, except replies);
//! 2. nothing reaches another sandbox, and nothing new enters a sandbox;
//! 3. DNS (port 53) to the host's own resolvers is allowed (they may be private addresses);
//! 4. a run with `allowed_hosts` jumps to its own chain: only those addresses, else drop;
//! 5. private, loopback, link-local/metadata, CGNAT, multicast and reserved IPv4 ranges and
//!    the sandbox pool are dropped; IPv6 is dropped (sandboxes get no IPv6 address);
//! 6. the rest (the public internet) is accepted and masqueraded.
//!
//! The table is created on first use under a host-wide lock and removed when the last
//! sandbox interface is gone (unless a server keeps it for its lifetime). If the host did
//! not forward packets before, the table also drops every forwarded packet that is not
//! ours, so enabling `ip_forward` opens nothing else. Creating an interface and removing the
//! table happen under the same lock, so a sandbox interface never exists without the rules.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use super::host::nft_program;
use super::spec::{InjectedDir, InjectedFile, SandboxSpec};

/// Our nftables table.
pub const TABLE: &str = "tako_vm";
/// Prefix of the host side of every sandbox veth.
pub const IF_PREFIX: &str = "tako-";
const RUN_DIR: &str = "/run/tako-vm";
const FORWARD_FLAG: &str = "/run/tako-vm/ip_forward.was0";
/// Present while our table may exist: lets start-up skip the `nft` calls when it cannot.
const TABLE_FLAG: &str = "/run/tako-vm/nft-table";
/// One empty file per process that keeps the table for its lifetime (a server), named by
/// its owner token: an idle table is not removed while one of them lives.
const KEEPERS_DIR: &str = "/run/tako-vm/keepers";
/// One empty file per allowlist chain (named by slot): the start-up sweep needs `nft` only
/// when one of them belongs to an interface that is gone.
const CHAINS_DIR: &str = "/run/tako-vm/chains";
/// An IPv4 CIDR `a.b.c.d/len` (len ≤ 32).
pub fn parse_cidr4(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip.parse().ok()?, len))
}

/// Parses a sandbox address pool (`network_pool`): an IPv4 CIDR inside 10.0.0.0/8,
/// 172.16.0.0/12 or 192.168.0.0/16, aligned, with room for at least one /30.
pub fn parse_pool(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad =
        || format!("network_pool must be a private IPv4 CIDR such as 10.200.0.0/16, not {s:?}");
    let (ip, len) = parse_cidr4(s.trim()).ok_or_else(bad)?;
    if !(8..=30).contains(&len) || !ip.is_private() {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - len as u32);
    if u32::from(ip) & !mask != 0 {
        return Err(format!(
            "network_pool {s:?} is not aligned to its prefix length"
        ));
    }
    Ok((ip, len))
}

/// Default address pool: one /30 per run.
pub const DEFAULT_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 0, 0), 16);
/// Where the sandbox sees the host CA bundle, resolver and hosts files.
pub const META_DIR: &str = "/tako";
/// Host CA bundle (Debian/Ubuntu).
pub const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// IPv6 addresses of the sandboxes (unique local): one /126 per slot, same index as the /30.
pub const POOL6: Ipv6Addr = Ipv6Addr::new(0xfd74, 0x616b, 0x6f00, 0, 0, 0, 0, 0);
/// Blocked IPv6 destinations: unspecified/loopback, IPv4-mapped and NAT64 (they lead to IPv4
/// addresses), discard, IETF/Teredo, documentation, 6to4, unique local, link-local and
/// multicast.
pub const BLOCKED_V6: [&str; 12] = [
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];
const FORWARD6_FLAG: &str = "/run/tako-vm/ipv6_forward.was0";
/// Interfaces whose `accept_ra` we raised from 1 to 2 (router advertisements stay honoured
/// while IPv6 forwarding is on), one name per line; restored with the forwarding.
const ACCEPT_RA_FILE: &str = "/run/tako-vm/accept_ra.was1";

/// True when the host has IPv6 with a default route, and new interfaces get IPv6 (then
/// sandboxes get IPv6 too).
pub fn host_has_ipv6() -> bool {
    let off = ["all", "default"].iter().any(|c| {
        fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6"))
            .map_or(true, |v| v.trim() != "0")
    });
    !off && fs::read_to_string("/proc/net/ipv6_route").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
        })
    })
}

/// Whether the existing table was made with IPv6 rules (recorded in its flag file).
fn table_has_ipv6() -> bool {
    fs::read_to_string(TABLE_FLAG).is_ok_and(|s| s.contains("ipv6"))
}

/// Blocked IPv4 destinations (RFC 1918, loopback, link-local/metadata, CGNAT, multicast…).
pub const BLOCKED_V4: [&str; 10] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Errors of the network path. Every one of them fails the run: never an open network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool failed.
    #[error("network setup: {what} failed: {detail}")]
    Tool {
        /// The step.
        what: String,
        /// stderr of the tool.
        detail: String,
    },
    /// The rootless path (pasta) is not usable on this host.
    #[error("network-enabled runs of an unprivileged server go through pasta, which is not usable here: {0}; the run is refused (never an open network)")]
    Rootless(String),
    /// A tool did not finish in time.
    #[error("network setup: {0} did not finish within {TOOL_TIMEOUT_S}s and was killed")]
    Timeout(String),
    /// No free address.
    #[error("network setup: no free address in the sandbox pool")]
    PoolExhausted,
    /// An allowed host did not resolve.
    #[error("network setup: allowed host {0:?} does not resolve")]
    Resolve(String),
    /// Local I/O.
    #[error("network setup: {0}")]
    Io(#[from] io::Error),
}

/// Longest time any network tool (nft, pasta) may take.
pub const TOOL_TIMEOUT_S: u64 = 20;

/// Runs a tool to completion under [`TOOL_TIMEOUT_S`] (killed and reaped past it); its
/// stdout, or its stderr as the error.
pub(crate) fn run_tool(
    what: &str,
    cmd: &mut Command,
    stdin: Option<&str>,
) -> Result<String, NetError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| NetError::Tool {
        what: what.into(),
        detail: format!("{e} (are iproute2, nftables and util-linux installed?)"),
    })?;
    // Opened before anything can reap the child, so the kill below never hits a reused pid.
    let pidfd = super::pidfd::open(child.id() as i32).ok();
    if let Some(input) = stdin {
        // A tool that exits early closes its stdin: its status tells what went wrong.
        let _ = child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(std::time::Duration::from_secs(TOOL_TIMEOUT_S)) {
        Ok(r) => r?,
        Err(_) => {
            if let Some(fd) = &pidfd {
                super::pidfd::kill(fd);
            }
            // The waiting thread reaps it.
            let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
            return Err(NetError::Timeout(what.into()));
        }
    };
    if !out.status.success() {
        return Err(NetError::Tool {
            what: what.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tool_error(what: &str, e: io::Error) -> NetError {
    NetError::Tool {
        what: what.into(),
        detail: e.to_string(),
    }
}

fn nft(what: &str, script: &str) -> Result<String, NetError> {
    run_tool(
        what,
        Command::new(nft_program()).arg("-f").arg("-"),
        Some(script),
    )
}

/// A host-wide exclusive lock (flock on a file in /run/tako-vm).
struct HostLock {
    _file: File,
}

impl HostLock {
    fn take() -> Result<HostLock, NetError> {
        fs::create_dir_all(RUN_DIR)?;
        let f = File::create(format!("{RUN_DIR}/net.lock"))?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(HostLock { _file: f })
    }
}

/// IPv4 nameservers of a `resolv.conf`.
pub fn host_resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "nameserver").then(|| it.next()?.parse().ok())?
        })
        .collect()
}

/// Where systemd-resolved lists its upstream servers.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The resolvers a sandbox on the veth path can reach: the non-loopback IPv4 nameservers of
/// `resolv_conf`, or, when it names only loopback ones (a local stub such as
/// systemd-resolved's 127.0.0.53, which a sandbox cannot reach), those of `upstream()`.
pub fn reachable_resolvers(resolv_conf: &str, upstream: impl FnOnce() -> String) -> Vec<Ipv4Addr> {
    let remote = |text: &str| -> Vec<Ipv4Addr> {
        host_resolvers(text)
            .into_iter()
            .filter(|r| !r.is_loopback() && !r.is_unspecified())
            .collect()
    };
    let direct = remote(resolv_conf);
    if direct.is_empty() {
        remote(&upstream())
    } else {
        direct
    }
}

/// [`reachable_resolvers`] of this host, read now.
pub fn veth_resolvers() -> Vec<Ipv4Addr> {
    reachable_resolvers(
        &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        || fs::read_to_string(RESOLVED_UPSTREAM).unwrap_or_default(),
    )
}

/// The resolvers the table's `dns4` set was last filled with.
const DNS_FILE: &str = "/run/tako-vm/nft-dns4";

fn resolver_list(resolvers: &[Ipv4Addr]) -> String {
    let list: Vec<String> = resolvers.iter().map(|r| r.to_string()).collect();
    list.join(", ")
}

/// Brings the existing table's `dns4` set in line with `resolvers` (the host's resolvers
/// can change while a server keeps the table). Costs a file read when nothing changed.
/// Sandboxes that are running keep the resolvers they were given: while any is, the new
/// ones are added and the old ones stay; the set is replaced when none is.
/// Returns true when it changed the set. Call it under the host lock.
fn sync_dns_locked(resolvers: &[Ipv4Addr]) -> Result<bool, NetError> {
    let recorded = fs::read_to_string(DNS_FILE).ok();
    let have: Vec<Ipv4Addr> = recorded
        .as_deref()
        .unwrap_or_default()
        .split(", ")
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    if recorded.is_some() && have == resolvers {
        return Ok(false); // the common case: one file read
    }
    let busy = !our_interfaces().is_empty();
    let mut want: Vec<Ipv4Addr> = if busy { have.clone() } else { Vec::new() };
    for r in resolvers {
        if !want.contains(r) {
            want.push(*r);
        }
    }
    if recorded.is_some() && want == have {
        return Ok(false);
    }
    let list = resolver_list(&want);
    let mut script = format!("flush set inet {TABLE} dns4\n");
    if !want.is_empty() {
        script.push_str(&format!("add element inet {TABLE} dns4 {{ {list} }}\n"));
    }
    nft("update resolvers", &script)?;
    fs::write(DNS_FILE, list)?;
    Ok(true)
}

/// `sync_dns_locked` under the host lock, for a table that exists (false otherwise).
pub fn sync_dns(resolvers: &[Ipv4Addr]) -> Result<bool, NetError> {
    if !std::path::Path::new(TABLE_FLAG).exists() {
        return Ok(false);
    }
    let _lock = HostLock::take()?;
    if !table_exists() {
        return Ok(false);
    }
    sync_dns_locked(resolvers)
}

/// What the table is made for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TableOptions {
    /// The host did not forward IPv4 before: drop every forwarded IPv4 packet not ours.
    pub drop_foreign4: bool,
    /// Sandboxes get IPv6 (the host has it).
    pub ipv6: bool,
    /// The host did not forward IPv6 before: drop every forwarded IPv6 packet not ours.
    pub drop_foreign6: bool,
}

/// The table definition (created once).
pub fn table_script(pool: (Ipv4Addr, u8), resolvers: &[Ipv4Addr], o: TableOptions) -> String {
    let dns = if resolvers.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}", resolver_list(resolvers))
    };
    let pool = format!("{}/{}", pool.0, pool.1);
    let mut foreign = String::new();
    if o.drop_foreign4 {
        foreign.push_str("        meta nfproto ipv4 drop comment \"the host did not forward IPv4 before tako-vm\"\n");
    }
    if o.ipv6 && o.drop_foreign6 {
        foreign.push_str("        meta nfproto ipv6 drop comment \"the host did not forward IPv6 before tako-vm\"\n");
    }
    // Neighbour discovery of the sandbox's gateway (our side of the veth) is the only
    // IPv6 a sandbox may send to the host itself.
    let nd = if o.ipv6 {
        format!("        iifname \"{IF_PREFIX}*\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n")
    } else {
        String::new()
    };
    let (sets6, rules6, nat6) = if o.ipv6 {
        (
            format!(
                "    set blocked6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {}, {POOL6}/64 }} }}\n    map egress6 {{ type ipv6_addr : verdict; }}\n",
                BLOCKED_V6.join(", ")
            ),
            format!(
                "        iifname \"{IF_PREFIX}*\" ip6 saddr vmap @egress6\n        iifname \"{IF_PREFIX}*\" ip6 daddr @blocked6 drop\n"
            ),
            format!("        ip6 saddr {POOL6}/64 oifname != \"{IF_PREFIX}*\" masquerade\n"),
        )
    } else {
        (
            String::new(),
            format!("        iifname \"{IF_PREFIX}*\" meta nfproto ipv6 drop\n"),
            String::new(),
        )
    };
    format!(
        r#"table inet {TABLE} {{
    set blocked4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {blocked}, {pool} }} }}
    set dns4 {{ type ipv4_addr; {dns} }}
    map egress {{ type ipv4_addr : verdict; }}
{sets6}    chain input {{
        type filter hook input priority filter - 5; policy accept;
        iifname "{IF_PREFIX}*" ct state established,related accept
{nd}        iifname "{IF_PREFIX}*" drop
    }}
    chain forward {{
        type filter hook forward priority filter - 5; policy accept;
        iifname "{IF_PREFIX}*" oifname "{IF_PREFIX}*" drop
        oifname "{IF_PREFIX}*" ct state established,related accept
        oifname "{IF_PREFIX}*" drop
        iifname "{IF_PREFIX}*" ip daddr @dns4 meta l4proto {{ tcp, udp }} th dport 53 accept
        iifname "{IF_PREFIX}*" ip saddr vmap @egress
        iifname "{IF_PREFIX}*" ip daddr @blocked4 drop
{rules6}        iifname "{IF_PREFIX}*" accept
{foreign}    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {pool} oifname != "{IF_PREFIX}*" masquerade
{nat6}    }}
}}
"#,
        blocked = BLOCKED_V4.join(", "),
    )
}

/// The nft commands that remove the allowlist chain of slot `name` (`run_<name>`).
fn chain_removal(name: &str) -> String {
    format!("flush chain inet {TABLE} run_{name}\ndelete chain inet {TABLE} run_{name}\n")
}

fn table_exists() -> bool {
    let mut list = Command::new(nft_program());
    list.args(["list", "table", "inet", TABLE]);
    run_tool("list table", &mut list, None).is_ok()
}

fn our_interfaces() -> Vec<String> {
    let Ok(rd) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(IF_PREFIX))
        .collect()
}

fn ensure_table(pool: (Ipv4Addr, u8), resolvers: &[Ipv4Addr]) -> Result<(), NetError> {
    // The flag is written before the table is created and removed after it is deleted
    // (both under the host lock, and /run does not survive a reboot): without it, no table
    // of ours can be in use, and the `nft` call that would check is skipped.
    if std::path::Path::new(TABLE_FLAG).exists() && table_exists() {
        sync_dns_locked(resolvers)?;
        return Ok(());
    }
    let off = |p: &str| fs::read_to_string(p).unwrap_or_default().trim() == "0";
    let was_off = off("/proc/sys/net/ipv4/ip_forward");
    let ipv6 = host_has_ipv6();
    let was6_off = ipv6 && off("/proc/sys/net/ipv6/conf/all/forwarding");
    fs::write(TABLE_FLAG, if ipv6 { "ipv6" } else { "" })?;
    let _ = fs::remove_file(DNS_FILE);
    // One transaction: whatever is left of a table by that name goes, the new one comes.
    nft(
        "create table",
        &format!(
            "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
            table_script(
                pool,
                resolvers,
                TableOptions {
                    drop_foreign4: was_off,
                    ipv6,
                    drop_foreign6: was6_off,
                }
            )
        ),
    )?;
    fs::write(DNS_FILE, resolver_list(resolvers))?;
    if was_off {
        fs::write(FORWARD_FLAG, "")?;
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    if was6_off {
        // With forwarding on, an interface ignores router advertisements unless accept_ra
        // is 2: raise the ones at 1 first, so the host keeps its own IPv6 routes.
        let mut raised = String::new();
        for e in fs::read_dir("/proc/sys/net/ipv6/conf")?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["all", "default", "lo"].contains(&name.as_str()) {
                continue;
            }
            let f = e.path().join("accept_ra");
            if fs::read_to_string(&f).is_ok_and(|v| v.trim() == "1") && fs::write(&f, "2").is_ok() {
                raised.push_str(&name);
                raised.push('\n');
            }
        }
        fs::write(ACCEPT_RA_FILE, raised)?;
        fs::write(FORWARD6_FLAG, "")?;
        fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Removes the table (and restores `ip_forward`) when no sandbox interface is left.
/// Returns true when it removed it.
pub fn remove_table_if_idle() -> Result<bool, NetError> {
    if !std::path::Path::new(TABLE_FLAG).exists() {
        return Ok(false);
    }
    let _lock = HostLock::take()?;
    if !our_interfaces().is_empty() || other_live_keepers() {
        return Ok(false);
    }
    match nft("delete table", &format!("delete table inet {TABLE}\n")) {
        Err(NetError::Tool { detail, .. }) if detail.contains("No such file") => {}
        other => {
            other?;
        }
    }
    let _ = fs::remove_file(TABLE_FLAG);
    let _ = fs::remove_file(DNS_FILE);
    if fs::remove_file(FORWARD_FLAG).is_ok() {
        let _ = fs::write("/proc/sys/net/ipv4/ip_forward", "0");
    }
    if fs::remove_file(FORWARD6_FLAG).is_ok() {
        let _ = fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "0");
        let names = fs::read_to_string(ACCEPT_RA_FILE).unwrap_or_default();
        for name in names.lines().filter(|n| !n.is_empty() && !n.contains('/')) {
            let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "1");
        }
        let _ = fs::remove_file(ACCEPT_RA_FILE);
    }
    Ok(true)
}

/// This process keeps the table for its lifetime (servers): others leave it alone when idle.
pub fn keep_table_for_this_process() -> io::Result<()> {
    let me = super::host::owner_token(std::process::id()).unwrap_or_default();
    fs::create_dir_all(KEEPERS_DIR)?;
    fs::write(format!("{KEEPERS_DIR}/{me}"), "")
}

/// Ends [`keep_table_for_this_process`] (before a final [`remove_table_if_idle`]).
pub fn release_table_for_this_process() {
    let me = super::host::owner_token(std::process::id()).unwrap_or_default();
    let _ = fs::remove_file(format!("{KEEPERS_DIR}/{me}"));
}

/// True when another live process keeps the table; forgets keepers that are gone.
fn other_live_keepers() -> bool {
    let me = super::host::owner_token(std::process::id()).unwrap_or_default();
    let Ok(rd) = fs::read_dir(KEEPERS_DIR) else {
        return false;
    };
    let mut live = false;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if super::host::owner_is_dead(&name) {
            let _ = fs::remove_file(e.path());
        } else if name != me {
            live = true;
        }
    }
    live
}

/// Slots of recorded allowlist chains whose interface is gone.
fn orphaned_chains() -> Vec<String> {
    let live = our_interfaces();
    let Ok(rd) = fs::read_dir(CHAINS_DIR) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|slot| !live.iter().any(|i| *i == ifname(slot)))
        .collect()
}

/// Deletes per-run chains whose interface is gone (left by a crashed process).
pub fn sweep() -> Result<(), NetError> {
    if !std::path::Path::new(TABLE_FLAG).exists() || orphaned_chains().is_empty() {
        return Ok(());
    }
    let _lock = HostLock::take()?;
    let orphans = orphaned_chains();
    if !table_exists() {
        return Ok(());
    }
    let live = our_interfaces();
    let listing = run_tool(
        "list table",
        Command::new(nft_program()).args(["list", "table", "inet", TABLE]),
        None,
    )?;
    let mut script = String::new();
    for line in listing.lines() {
        let Some(rest) = line.trim().strip_prefix("chain run_") else {
            continue;
        };
        let slot: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        if !live.iter().any(|i| *i == ifname(&slot)) {
            script.push_str(&chain_removal(&slot));
        }
    }
    if !script.is_empty() {
        // Map elements pointing at these chains go first.
        let mut pre = String::new();
        let maps: &[&str] = if table_has_ipv6() {
            &["egress", "egress6"]
        } else {
            &["egress"]
        };
        for m in maps {
            let map = run_tool(
                "list map",
                Command::new(nft_program()).args(["list", "map", "inet", TABLE, m]),
                None,
            )?;
            for part in map.split([',', '{', '}', '\n']) {
                if let Some((addr, verdict)) = part.trim().split_once(" : jump run_") {
                    if !live.iter().any(|i| *i == ifname(verdict.trim())) {
                        pre.push_str(&format!(
                            "delete element inet {TABLE} {m} {{ {} }}\n",
                            addr.trim()
                        ));
                    }
                }
            }
        }
        nft("sweep", &(pre + &script))?;
    }
    for slot in orphans {
        let _ = fs::remove_file(format!("{CHAINS_DIR}/{slot}"));
    }
    Ok(())
}

fn ifname(slot: &str) -> String {
    format!("{IF_PREFIX}{slot}")
}

/// The addresses of one run's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index in the pool.
    pub index: u32,
    /// Host side (the sandbox's gateway).
    pub host: Ipv4Addr,
    /// Sandbox side.
    pub sandbox: Ipv4Addr,
    /// Host side, IPv6 (in [`POOL6`]).
    pub host6: Ipv6Addr,
    /// Sandbox side, IPv6.
    pub sandbox6: Ipv6Addr,
}

impl Slot {
    /// Slot `index` of `pool` (None past the pool's end).
    pub fn of(pool: (Ipv4Addr, u8), index: u32) -> Option<Slot> {
        let size = 1u64 << (32 - pool.1 as u32);
        if (index as u64 + 1) * 4 > size {
            return None;
        }
        let base = u32::from(pool.0) + index * 4;
        let base6 = u128::from(POOL6) + u128::from(index) * 4;
        Some(Slot {
            index,
            host: Ipv4Addr::from(base + 1),
            sandbox: Ipv4Addr::from(base + 2),
            host6: Ipv6Addr::from(base6 + 1),
            sandbox6: Ipv6Addr::from(base6 + 2),
        })
    }

    fn name(&self) -> String {
        format!("{:x}", self.index)
    }
}

/// Destinations a run may reach when `allowed_hosts` is set: CIDRs as given, domain names
/// resolved now with the host resolver (and pinned in the sandbox's `/etc/hosts`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Allowed {
    /// nftables address elements (IPv4).
    pub elements: Vec<String>,
    /// IPv6 addresses of resolved names (used when the run has IPv6).
    pub elements6: Vec<String>,
    /// `/etc/hosts` lines for resolved names.
    pub hosts_lines: Vec<String>,
}

/// Resolves `allowed_hosts`.
pub fn resolve_allowed(hosts: &[String]) -> Result<Allowed, NetError> {
    let mut a = Allowed::default();
    let v6 = host_has_ipv6();
    for h in hosts {
        let h = h.trim();
        if h.contains('/') {
            let (ip, len) = parse_cidr4(h).ok_or_else(|| NetError::Resolve(h.into()))?;
            a.elements.push(format!("{ip}/{len}"));
            continue;
        }
        if let Ok(ip) = h.parse::<Ipv4Addr>() {
            a.elements.push(ip.to_string());
            continue;
        }
        let resolved: Vec<std::net::IpAddr> = (h, 443)
            .to_socket_addrs()
            .map_err(|_| NetError::Resolve(h.into()))?
            .map(|s| s.ip())
            .collect();
        let mut any = false;
        for ip in resolved {
            match ip {
                std::net::IpAddr::V4(v4) => a.elements.push(v4.to_string()),
                std::net::IpAddr::V6(v6addr) if v6 => a.elements6.push(v6addr.to_string()),
                std::net::IpAddr::V6(_) => continue,
            }
            any = true;
            a.hosts_lines.push(format!("{ip}\t{h}"));
        }
        if !any {
            return Err(NetError::Resolve(h.into()));
        }
    }
    for v in [&mut a.elements, &mut a.elements6, &mut a.hosts_lines] {
        v.sort();
        v.dedup();
    }
    Ok(a)
}

/// The network of one run; dropping it removes the interface, the run's chain and, when
/// idle and not kept, the table.
pub struct NetLease {
    slot: Slot,
    restricted: bool,
    keep_table: bool,
    /// The run has IPv6 (the host has it and the table was made for it).
    ipv6: bool,
}

impl NetLease {
    /// Creates the veth pair for the network namespace of `pid` and configures both ends.
    pub fn create(
        pid: i32,
        pool: (Ipv4Addr, u8),
        allowed: Option<&Allowed>,
        resolvers: &[Ipv4Addr],
        keep_table: bool,
    ) -> Result<NetLease, NetError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetError::Rootless("the veth path needs root".into()));
        }
        let slots = (1u64 << (32 - pool.1 as u32)) / 4;
        let start = (uuid::Uuid::new_v4().as_u128() % slots as u128) as u32;
        let lock = HostLock::take()?;
        ensure_table(pool, resolvers)?;
        let mut chosen = None;
        for i in 0..slots.min(4096) as u32 {
            let slot = Slot::of(pool, (start + i) % slots as u32).ok_or(NetError::PoolExhausted)?;
            let name = ifname(&slot.name());
            match super::netlink::create_veth(&name, "eth0", pid) {
                Ok(()) => {
                    chosen = Some(slot);
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(tool_error("create veth", e)),
            }
        }
        let slot = chosen.ok_or(NetError::PoolExhausted)?;
        let lease = NetLease {
            slot,
            restricted: allowed.is_some(),
            keep_table,
            ipv6: table_has_ipv6() && host_has_ipv6(),
        };
        drop(lock);
        lease.configure(allowed)?;
        Ok(lease)
    }

    fn configure(&self, allowed: Option<&Allowed>) -> Result<(), NetError> {
        let s = self.slot;
        let name = ifname(&s.name());
        if let Some(a) = allowed {
            fs::create_dir_all(CHAINS_DIR)?;
            fs::write(format!("{CHAINS_DIR}/{}", s.name()), "")?;
            let n = s.name();
            let mut script = format!("add chain inet {TABLE} run_{n}\n");
            if !a.elements.is_empty() {
                script.push_str(&format!(
                    "add rule inet {TABLE} run_{n} ip daddr {{ {} }} accept\n",
                    a.elements.join(", ")
                ));
            }
            if self.ipv6 && !a.elements6.is_empty() {
                script.push_str(&format!(
                    "add rule inet {TABLE} run_{n} ip6 daddr {{ {} }} accept\n",
                    a.elements6.join(", ")
                ));
            }
            script.push_str(&format!(
                "add rule inet {TABLE} run_{n} drop\nadd element inet {TABLE} egress {{ {ip} : jump run_{n} }}\n",
                ip = s.sandbox
            ));
            if self.ipv6 {
                script.push_str(&format!(
                    "add element inet {TABLE} egress6 {{ {ip} : jump run_{n} }}\n",
                    ip = s.sandbox6
                ));
            }
            nft("allowlist", &script)?;
        }
        if !self.ipv6 {
            // No IPv6 on the host side of the pair either.
            let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        }
        let host_side = || -> io::Result<()> {
            let i = super::netlink::index_of(&name)?;
            super::netlink::add_address(i, s.host, 30)?;
            if self.ipv6 {
                super::netlink::add_address(i, s.host6, 126)?;
            }
            super::netlink::link_up(i)
        };
        host_side().map_err(|e| tool_error("host side of the veth", e))?;
        Ok(())
    }

    /// What the sandbox init configures on its side of the veth.
    pub fn eth0(&self) -> super::wire::Eth0 {
        super::wire::Eth0 {
            addr: self.slot.sandbox,
            gateway: self.slot.host,
            v6: self.ipv6.then_some((self.slot.sandbox6, self.slot.host6)),
        }
    }

    /// The run's addresses.
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

/// Teardowns of kept-table runs still in progress (see [`finish_teardowns`]).
static PENDING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits for the background teardowns of finished runs (a server, before it removes the
/// idle table at shutdown).
pub fn finish_teardowns() {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for h in pending {
        let _ = h.join();
    }
}

impl Drop for NetLease {
    fn drop(&mut self) {
        let (slot, restricted, ipv6) = (self.slot, self.restricted, self.ipv6);
        let teardown = move || {
            // The allowlist first, while the interface still holds the slot: a new run
            // cannot take the slot (and its chain name) before both are gone.
            if restricted {
                let six = if ipv6 {
                    format!(
                        "delete element inet {TABLE} egress6 {{ {} }}\n",
                        slot.sandbox6
                    )
                } else {
                    String::new()
                };
                let _ = nft(
                    "remove allowlist",
                    &format!(
                        "delete element inet {TABLE} egress {{ {} }}\n{six}{}",
                        slot.sandbox,
                        chain_removal(&slot.name())
                    ),
                );
                let _ = fs::remove_file(format!("{CHAINS_DIR}/{}", slot.name()));
            }
            // Usually already going with the sandbox's namespace; ENODEV then.
            let _ = super::netlink::delete_link(&ifname(&slot.name()));
        };
        if self.keep_table {
            // A server: the sandbox is gone and nothing can use the veth any more, so its
            // deletion (an RCU grace period or two in the kernel) need not delay the
            // response. A crash in between leaves nothing the namespace's end and the
            // start-up sweep do not remove.
            let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
            pending.retain(|h| !h.is_finished());
            pending.push(std::thread::spawn(teardown));
        } else {
            teardown();
            let _ = remove_table_if_idle();
        }
    }
}

/// The network of one run, whichever path provides it; dropping it tears it down.
pub enum Egress {
    /// Root: a veth pair and our host table.
    Veth(NetLease),
    /// Unprivileged: pasta and a filter inside the sandbox's namespace.
    Pasta(super::pasta::PastaLease),
}

impl Egress {
    /// True when this process provides network through pasta (it is not root).
    pub fn rootless() -> bool {
        !nix::unistd::geteuid().is_root()
    }

    /// What the sandbox init configures itself (the veth's sandbox side), if anything.
    pub fn eth0(&self) -> Option<super::wire::Eth0> {
        match self {
            Egress::Veth(l) => Some(l.eth0()),
            Egress::Pasta(_) => None,
        }
    }

    /// Sets up the network of the sandbox whose helper is `pid`.
    pub fn create(
        pid: i32,
        run_id: &str,
        pool: (Ipv4Addr, u8),
        allowed: Option<&Allowed>,
        resolvers: &[Ipv4Addr],
        keep_table: bool,
    ) -> Result<Egress, NetError> {
        if Egress::rootless() {
            super::pasta::PastaLease::create(pid, run_id, allowed).map(Egress::Pasta)
        } else {
            NetLease::create(pid, pool, allowed, resolvers, keep_table).map(Egress::Veth)
        }
    }

    /// The resolvers the sandbox is given.
    pub fn resolvers() -> Vec<Ipv4Addr> {
        if Egress::rootless() {
            vec![super::pasta::DNS_FORWARD]
        } else {
            veth_resolvers()
        }
    }
}

/// Adds what a network-enabled sandbox needs to see: `/tako/resolv.conf` (`resolvers`),
/// `/tako/hosts` (localhost plus pinned allowed names), the host CA bundle at
/// `/tako/ca-certificates.crt`, and the TLS variables pointing at it.
pub fn add_network_files(
    spec: &mut SandboxSpec,
    allowed: Option<&Allowed>,
    resolvers: &[Ipv4Addr],
) {
    let servers: Vec<String> = resolvers
        .iter()
        .map(|r| format!("nameserver {r}\n"))
        .collect();
    let mut hosts =
        String::from("127.0.0.1\tlocalhost tako-sandbox\n::1\tlocalhost ip6-localhost\n");
    if let Some(a) = allowed {
        for l in &a.hosts_lines {
            hosts.push_str(l);
            hosts.push('\n');
        }
    }
    let mut files = vec![
        InjectedFile {
            name: "resolv.conf".into(),
            contents: servers.concat().into_bytes(),
        },
        InjectedFile {
            name: "hosts".into(),
            contents: hosts.into_bytes(),
        },
    ];
    if let Ok(ca) = fs::read(HOST_CA) {
        files.push(InjectedFile {
            name: "ca-certificates.crt".into(),
            contents: ca,
        });
        for k in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"] {
            spec.env.retain(|(ek, _)| ek != k);
            spec.env
                .push((k.into(), format!("{META_DIR}/ca-certificates.crt")));
        }
    }
    spec.injected.retain(|d| d.path != META_DIR);
    spec.injected.push(InjectedDir {
        path: META_DIR.into(),
        files,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash_30s_inside_the_pool() {
        let p = DEFAULT_POOL;
        let a = Slot::of(p, 0).unwrap();
        assert_eq!(
            (a.host, a.sandbox),
            ("10.200.0.1".parse().unwrap(), "10.200.0.2".parse().unwrap())
        );
        let b = Slot::of(p, 1).unwrap();
        assert_eq!(b.host, "10.200.0.5".parse::<Ipv4Addr>().unwrap());
        assert!(Slot::of(p, 16383).is_some());
        assert!(Slot::of(p, 16384).is_none());
        assert_eq!(Slot::of(p, 255).unwrap().name(), "ff");
    }

    #[test]
    fn resolvers_and_cidrs_parse() {
        let r = host_resolvers("# x\nnameserver 10.255.255.53\nnameserver ::1\nsearch a\n");
        assert_eq!(r, vec!["10.255.255.53".parse::<Ipv4Addr>().unwrap()]);
        let a = resolve_allowed(&["198.51.100.0/24".into(), "203.0.113.7".into()]).unwrap();
        assert_eq!(a.elements, ["198.51.100.0/24", "203.0.113.7"]);
        assert!(resolve_allowed(&["10.0.0.0/40".into()]).is_err());
        assert!(resolve_allowed(&["no-such-host.invalid".into()]).is_err());
    }

    #[test]
    fn a_loopback_stub_resolver_is_replaced_by_its_upstreams() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let upstream =
            || "nameserver 192.0.2.1\nnameserver 127.0.0.1\nnameserver 192.0.2.2\n".to_string();
        // systemd-resolved's stub (Ubuntu's default): a sandbox cannot reach it.
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n";
        assert_eq!(
            reachable_resolvers(stub, upstream),
            [ip("192.0.2.1"), ip("192.0.2.2")]
        );
        // Direct resolvers win; loopback ones among them are dropped.
        let direct = "nameserver 127.0.0.1\nnameserver 10.255.255.53\n";
        assert_eq!(
            reachable_resolvers(direct, || panic!("not needed")),
            [ip("10.255.255.53")]
        );
        // Nothing reachable anywhere: none (DNS fails in the sandbox, nothing else opens).
        assert!(reachable_resolvers("nameserver 127.0.0.1\n", String::new).is_empty());
        assert!(reachable_resolvers("", || "nameserver 0.0.0.0\n".into()).is_empty());
    }

    #[test]
    fn the_table_blocks_private_ranges_and_the_pool() {
        let o = TableOptions {
            drop_foreign4: true,
            ipv6: false,
            drop_foreign6: true,
        };
        let t = table_script(DEFAULT_POOL, &["10.255.255.53".parse().unwrap()], o);
        for r in [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "10.200.0.0/16",
        ] {
            assert!(t.contains(r), "{r}");
        }
        assert!(t.contains("elements = { 10.255.255.53 }"));
        assert!(t.contains("meta nfproto ipv4 drop comment \"the host did not forward IPv4"));
        // Without IPv6 for sandboxes, their IPv6 is dropped and the host's own IPv6
        // forwarding is not ours to judge.
        assert!(t.contains("iifname \"tako-*\" meta nfproto ipv6 drop"));
        assert!(!t.contains("did not forward IPv6"));
        let quiet = TableOptions {
            drop_foreign4: false,
            ..o
        };
        assert!(!table_script(DEFAULT_POOL, &[], quiet).contains("did not forward"));
    }

    #[test]
    fn with_ipv6_the_table_blocks_non_public_ipv6_and_masquerades_the_pool() {
        let o = TableOptions {
            drop_foreign4: false,
            ipv6: true,
            drop_foreign6: true,
        };
        let t = table_script(DEFAULT_POOL, &[], o);
        for r in [
            "fc00::/7",
            "fe80::/10",
            "::ffff:0:0/96",
            "64:ff9b::/96",
            "2002::/16",
            "fd74:616b:6f00::/64",
        ] {
            assert!(t.contains(r), "{r}");
        }
        assert!(t.contains("ip6 saddr vmap @egress6"));
        assert!(t.contains("ip6 daddr @blocked6 drop"));
        assert!(t.contains("ip6 saddr fd74:616b:6f00::/64 oifname != \"tako-*\" masquerade"));
        assert!(t.contains("did not forward IPv6"));
        assert!(!t.contains("meta nfproto ipv6 drop\n        iifname"));
        let s = Slot::of(DEFAULT_POOL, 1).unwrap();
        assert_eq!(s.host6, "fd74:616b:6f00::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(s.sandbox6, "fd74:616b:6f00::6".parse::<Ipv6Addr>().unwrap());
    }
}
