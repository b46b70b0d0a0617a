//! A "public internet" host of our own for network tests (root only).

use std::process::Command;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A "public internet" host of our own: a network namespace with 198.51.100.2 (and, where
/// the host has IPv6, 2a00:ffff::2) serving TCP on port 8080.
pub struct PeerHost {
    server: std::process::Child,
}

impl PeerHost {
    pub fn start() -> PeerHost {
        let _ = sh("ip netns del tako-test-peer 2>/dev/null; ip link del tkt-peer0 2>/dev/null");
        let setup = "set -e
ip netns add tako-test-peer
ip link add tkt-peer0 type veth peer name eth0 netns tako-test-peer
ip addr add 198.51.100.1/24 dev tkt-peer0
ip link set tkt-peer0 up
ip -n tako-test-peer addr add 198.51.100.2/24 dev eth0
ip -n tako-test-peer link set eth0 up
ip -n tako-test-peer link set lo up
ip -n tako-test-peer route add default via 198.51.100.1";
        let st = Command::new("sh").arg("-c").arg(setup).status().unwrap();
        assert!(st.success());
        // IPv6 where the host has it (the test only uses it then).
        let _ = sh(
            "ip -6 addr add 2a00:ffff::1/64 dev tkt-peer0 nodad 2>/dev/null
ip -n tako-test-peer -6 addr add 2a00:ffff::2/64 dev eth0 nodad 2>/dev/null
ip -n tako-test-peer -6 route add default via 2a00:ffff::1 2>/dev/null",
        );
        let server = Command::new("ip")
            .args(["netns", "exec", "tako-test-peer", "python3", "-c"])
            .arg("import socket\ntry:\n    s=socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); addr=('::', 8080)\nexcept OSError:\n    s=socket.socket(); addr=('0.0.0.0', 8080)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(addr); s.listen()\nwhile True:\n    c,_=s.accept(); c.sendall(b'peer-hello'); c.close()")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        PeerHost { server }
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = sh("ip netns del tako-test-peer; ip link del tkt-peer0 2>/dev/null");
    }
}

/// Python that connects to the peer at `addr`: prints `<label> peer-hello` or
/// `<label> blocked`.
pub fn to_peer(addr: &str, label: &str) -> String {
    format!(
        r#"
import socket
try:
    c = socket.create_connection(("{addr}", 8080), timeout=3); print("{label}", c.recv(20).decode())
except OSError as e:
    print("{label} blocked")
"#
    )
}

/// The peer over IPv4: prints `peer peer-hello` or `peer blocked`.
pub fn to_peer4() -> String {
    to_peer("198.51.100.2", "peer")
}

/// The peer over IPv6: prints `peer6 peer-hello` or `peer6 blocked`.
pub fn to_peer6() -> String {
    to_peer("2a00:ffff::2", "peer6")
}

/// Python that fetches PyPI with TLS verification: prints the interfaces and `pypi 200 True`.
pub const FETCH_PYPI: &str = r#"
import urllib.request, socket, ssl
print("ifaces", sorted(n for _, n in socket.if_nameindex()))
r = urllib.request.urlopen("https://pypi.org/simple/six/", timeout=20)
print("pypi", r.status, b"six" in r.read())
try:
    urllib.request.urlopen("https://pypi.org/simple/six/", timeout=20, context=ssl._create_unverified_context())
except Exception as e:
    print("unexpected", e)
"#;
