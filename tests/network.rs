//! Network-enabled sandboxes: egress to the public internet (PyPI) only, fail closed.
//! Traffic goes only to PyPI, loopback and namespaces this test creates.

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::peer::{to_peer4, to_peer6, PeerHost, FETCH_PYPI};
use tako_vm::exec::record::{ExecutionResult, Status};
use tako_vm::exec::runner::{self, CodeRun};
use tako_vm::sandbox::{host, HostConfig, NetworkSpec, Runner};

/// Network tests run one at a time: they share the host's nftables table and interfaces.
static SERIAL: Mutex<()> = Mutex::new(());

/// A runner on `pool`; with `keep_net_table` it keeps the table for this process's
/// lifetime, as a server does.
fn test_runner(pool: (std::net::Ipv4Addr, u8), keep_net_table: bool) -> Runner {
    Runner::detect(&HostConfig {
        cgroup_parent: "tako-vm-test-net".into(),
        helper_exe: Some(common::bin()),
        net_pool: pool,
        keep_net_table,
        ..HostConfig::default()
    })
    .unwrap()
}

fn net_run(runner: &Runner, r: &std::path::Path, code: &str, allowed: &[&str]) -> ExecutionResult {
    let mut run = CodeRun::new(host::new_run_id(), r.to_path_buf(), code);
    run.timeout_s = 30;
    run.network = Some(NetworkSpec {
        allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
    });
    runner::execute(runner, &run)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_string()
}

/// The host's own `ip_forward`, read while no network-enabled run of ours exists.
fn host_ip_forward() -> String {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(ip_forward).clone()
}

fn nothing_of_ours_left() {
    let links = sh("ip -o link show");
    assert!(!links.contains("tako-"), "leftover interfaces:\n{links}");
    let rules = sh("nft list ruleset");
    assert!(
        !rules.contains("tako_vm"),
        "leftover nftables table:\n{rules}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "0"
    );
}

#[test]
fn network_enabled_reaches_pypi_with_tls_verification() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, false);
    let res = net_run(&runner, &r, FETCH_PYPI, &[]);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert!(
        res.stdout.contains("ifaces ['eth0', 'lo']"),
        "{}",
        res.stdout
    );
    assert!(res.stdout.contains("pypi 200 True"), "{}", res.stdout);
    // TLS is verified against the host CA bundle: a bogus bundle must fail verification.
    let res = net_run(
        &runner,
        &r,
        "import ssl, urllib.request\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, but trusts no CA\ntry:\n    urllib.request.urlopen('https://pypi.org/simple/six/', timeout=20, context=ctx); print('NOVERIFY')\nexcept Exception as e:\n    print('verify failed', type(e).__name__)",
        &[],
    );
    assert!(res.stdout.contains("verify failed"), "{res:?}");
    nothing_of_ours_left();
}

#[test]
fn network_enabled_cannot_reach_the_host() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_addrs: Vec<String> = sh("ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1")
        .lines()
        .map(String::from)
        .collect();
    assert!(!host_addrs.is_empty());
    let code = format!(
        r#"
import socket
gw = [l.split()[2] for l in open("/proc/net/route").read().splitlines()[1:] if l.split()[1] == "00000000"][0]
gw = socket.inet_ntoa(bytes.fromhex(gw)[::-1])
for addr in [gw, "127.0.0.1"] + {host_addrs:?}:
    try:
        socket.create_connection((addr, {port}), timeout=2); print("REACHED", addr)
    except OSError as e:
        print("blocked", addr)
"#
    );
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, false);
    let res = net_run(&runner, &r, &code, &[]);
    drop(listener);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert!(!res.stdout.contains("REACHED"), "{}", res.stdout);
    assert_eq!(
        res.stdout.matches("blocked").count(),
        host_addrs.len() + 2,
        "{}",
        res.stdout
    );
    nothing_of_ours_left();
}

#[test]
fn concurrent_sandboxes_cannot_reach_each_other() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    // A pool of exactly two /30s: the two sandboxes are 10.201.0.2 and 10.201.0.6.
    let runner = test_runner(("10.201.0.0".parse().unwrap(), 29), false);
    let server = r#"
import socket
s = socket.socket(); s.bind(("0.0.0.0", 5555)); s.listen(); s.settimeout(8)
try:
    s.accept(); print("ACCEPTED")
except OSError:
    print("nobody came")
"#;
    let client = r#"
import socket, time
time.sleep(2)
for ip in ["10.201.0.2", "10.201.0.6"]:
    try:
        socket.create_connection((ip, 5555), timeout=2); print("REACHED", ip)
    except OSError:
        print("blocked", ip)
"#;
    std::thread::scope(|s| {
        let a = s.spawn(|| net_run(&runner, &r, server, &[]));
        let b = s.spawn(|| net_run(&runner, &r, client, &[]));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(a.status, Status::Succeeded, "{a:?}");
        assert_eq!(b.status, Status::Succeeded, "{b:?}");
        assert!(a.stdout.contains("nobody came"), "{}", a.stdout);
        assert!(!b.stdout.contains("REACHED"), "{}", b.stdout);
    });
    nothing_of_ours_left();
}

#[test]
fn allowed_hosts_limit_egress_to_the_listed_destinations() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, false);
    {
        let _peer = PeerHost::start();
        // Without allowed_hosts, a public destination is reachable…
        let open = net_run(&runner, &r, &to_peer4(), &[]);
        assert!(open.stdout.contains("peer peer-hello"), "{open:?}");
        // …with allowed_hosts [pypi.org] only PyPI is.
        let code = format!("{}\n{FETCH_PYPI}", to_peer4());
        let restricted = net_run(&runner, &r, &code, &["pypi.org"]);
        assert_eq!(restricted.status, Status::Succeeded, "{restricted:?}");
        assert!(
            restricted.stdout.contains("peer blocked"),
            "{}",
            restricted.stdout
        );
        assert!(
            restricted.stdout.contains("pypi 200 True"),
            "{}",
            restricted.stdout
        );
        // A CIDR entry allows the peer again.
        let cidr = net_run(&runner, &r, &to_peer4(), &["198.51.100.0/24"]);
        assert!(cidr.stdout.contains("peer peer-hello"), "{cidr:?}");
    }
    let list = sh("nft list ruleset");
    assert!(!list.contains("run_"), "{list}");
    nothing_of_ours_left();
}

#[test]
fn hundred_network_runs_leave_nothing_behind() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, false);
    let netns_before = sh("ip netns list");
    for i in 0..100 {
        let allowed: &[&str] = if i % 2 == 0 { &[] } else { &["198.51.100.7"] };
        let res = net_run(&runner, &r, "print(1)", allowed);
        assert_eq!(res.status, Status::Succeeded, "run {i}: {res:?}");
    }
    nothing_of_ours_left();
    assert_eq!(sh("ip netns list"), netns_before);
}

#[test]
fn a_kept_table_survives_other_processes_and_goes_when_released() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, true);
    let res = net_run(&runner, &r, "print(1)", &["198.51.100.7"]);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert!(sh("nft list tables").contains("tako_vm"));
    // Another tako-vm process starting up (its sweep and idle clean-up) leaves it alone…
    let (code, _, err) = common::cli(&["run", "--rootfs", r.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, 0, "{err}");
    assert!(sh("nft list tables").contains("tako_vm"));
    // …and the run's allowlist chain and veth go with its run (in the background: a
    // server does not wait for the kernel's veth deletion).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sh("nft list ruleset").contains("run_") || sh("ip -o link show").contains("tako-") {
        assert!(
            std::time::Instant::now() < deadline,
            "the run's chain or veth stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Released by its keeper (a server at shutdown), the idle table goes.
    tako_vm::sandbox::net::finish_teardowns();
    tako_vm::sandbox::net::release_table_for_this_process();
    assert!(tako_vm::sandbox::net::remove_table_if_idle().unwrap());
    nothing_of_ours_left();
}

/// A long-lived server keeps its table while the host's resolvers may change (DHCP, VPN):
/// each run brings the table's `dns4` set back to the resolvers it hands the sandbox.
#[test]
fn a_stale_resolver_set_is_repaired_by_the_next_run() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, true);
    let resolve = "import socket\nprint('resolved', socket.gethostbyname('pypi.org'))";
    let res = net_run(&runner, &r, resolve, &[]);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    let host = tako_vm::sandbox::net::veth_resolvers();
    assert!(
        !host.is_empty(),
        "this host has no resolver a sandbox can reach"
    );
    let dns4 = || sh("nft list set inet tako_vm dns4");
    for h in &host {
        assert!(dns4().contains(&h.to_string()), "{}", dns4());
    }
    // The host's resolvers "change" (TEST-NET-1, nothing answers there) while a sandbox
    // runs: it keeps the resolvers it was given, the new one is added.
    let stale: Vec<std::net::Ipv4Addr> = vec!["192.0.2.53".parse().unwrap()];
    std::thread::scope(|sc| {
        let running = sc.spawn(|| {
            net_run(
                &runner,
                &r,
                "import socket, time\ntime.sleep(2)\nprint('resolved', socket.gethostbyname('pypi.org'))",
                &[],
            )
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !sh("ip -o link show").contains("tako-") {
            assert!(std::time::Instant::now() < deadline, "no sandbox interface");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(tako_vm::sandbox::net::sync_dns(&stale).unwrap());
        assert!(dns4().contains("192.0.2.53"), "{}", dns4());
        assert!(dns4().contains(&host[0].to_string()), "{}", dns4());
        let res = running.join().unwrap();
        assert_eq!(res.status, Status::Succeeded, "{res:?}");
        assert!(res.stdout.starts_with("resolved "), "{}", res.stdout);
    });
    // With no sandbox running, the set is replaced.
    tako_vm::sandbox::net::finish_teardowns();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sh("ip -o link show").contains("tako-") {
        assert!(std::time::Instant::now() < deadline, "the veth stayed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(tako_vm::sandbox::net::sync_dns(&stale).unwrap());
    assert!(dns4().contains("192.0.2.53"), "{}", dns4());
    assert!(!dns4().contains(&host[0].to_string()), "{}", dns4());
    // Unchanged: nothing to do.
    assert!(!tako_vm::sandbox::net::sync_dns(&stale).unwrap());
    // The next run finds the set out of date, repairs it, and resolves.
    let res = net_run(&runner, &r, resolve, &[]);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert!(res.stdout.starts_with("resolved "), "{}", res.stdout);
    assert!(!dns4().contains("192.0.2.53"), "{}", dns4());
    for h in &host {
        assert!(dns4().contains(&h.to_string()), "{}", dns4());
    }
    tako_vm::sandbox::net::finish_teardowns();
    tako_vm::sandbox::net::release_table_for_this_process();
    assert!(tako_vm::sandbox::net::remove_table_if_idle().unwrap());
    nothing_of_ours_left();
}

/// IPv6 where the host has it (an address from our unique-local pool, NAT66, the same
/// fail-closed policy), else cleanly absent (no address, nothing sent).
#[test]
fn ipv6_follows_the_host_and_the_same_policy() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let forwarding6 = || {
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let v6_forward_before = forwarding6();
    let host_v6 = tako_vm::sandbox::net::host_has_ipv6();
    let runner = test_runner(tako_vm::sandbox::net::DEFAULT_POOL, false);
    let peer = PeerHost::start();
    let listener = std::net::TcpListener::bind("[::]:0");
    let port = listener
        .as_ref()
        .map_or(9, |l| l.local_addr().unwrap().port());
    // The host's own IPv6 addresses (the peer gave it 2a00:ffff::1) and its gateway.
    let mut targets: Vec<String> =
        sh("ip -6 -o addr show scope global | awk '{print $4}' | cut -d/ -f1")
            .lines()
            .map(String::from)
            .collect();
    targets.extend(
        sh("ip -6 route show default | awk '{print $3}'")
            .lines()
            .map(String::from),
    );
    let code = format!(
        r#"
import socket
mine = [l.split()[0] for l in open("/proc/net/if_inet6") if l.split()[5] == "eth0" and not l.startswith("fe80")]
print("v6addrs", len(mine))
{to_peer6}
for a in {targets:?}:
    try:
        socket.create_connection((a, {port}), timeout=2); print("REACHED", a)
    except OSError:
        print("blocked6", a)
"#,
        to_peer6 = to_peer6()
    );
    let res = net_run(&runner, &r, &code, &[]);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    let out = &res.stdout;
    assert!(!out.contains("REACHED"), "{out}");
    assert_eq!(out.matches("blocked6").count(), targets.len(), "{out}");
    if host_v6 {
        assert!(out.contains("v6addrs 1"), "{out}");
        assert!(out.contains("peer6 peer-hello"), "{out}");
        // allowed_hosts without an IPv6 entry: no IPv6 egress at all.
        let res = net_run(&runner, &r, &to_peer6(), &["198.51.100.2"]);
        assert!(res.stdout.contains("peer6 blocked"), "{res:?}");
    } else {
        assert!(out.contains("v6addrs 0"), "{out}");
        assert!(out.contains("peer6 blocked"), "{out}");
    }
    drop(listener);
    drop(peer);
    nothing_of_ours_left();
    assert_eq!(forwarding6(), v6_forward_before, "IPv6 forwarding restored");
}

#[test]
fn the_address_pool_is_configurable() {
    let r = need_rootfs!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    host_ip_forward();
    let code = "import socket\nr = [l.split() for l in open('/proc/net/route').read().splitlines()[1:]]\ngw = [x[2] for x in r if x[1] == '00000000'][0]\nprint('gw', socket.inet_ntoa(bytes.fromhex(gw)[::-1]))";
    let (rc, out, err) = common::cli(&[
        "run",
        "--network",
        "--network-pool",
        "10.77.0.0/24",
        "--rootfs",
        r.to_str().unwrap(),
        "--",
        "python3",
        "-c",
        code,
    ]);
    assert_eq!(rc, 0, "{err}");
    let gw: std::net::Ipv4Addr = out.trim().strip_prefix("gw ").unwrap().parse().unwrap();
    assert_eq!(gw.octets()[..3], [10, 77, 0], "{out}");
    let (rc, _, err) = common::cli(&[
        "run",
        "--network",
        "--network-pool",
        "8.8.8.0/24",
        "--rootfs",
        r.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(rc, 2);
    assert!(
        err.contains("network_pool must be a private IPv4 CIDR"),
        "{err}"
    );
    nothing_of_ours_left();
}
