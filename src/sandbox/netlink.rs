//! The few rtnetlink requests of the network path, made directly (no `ip` process per
//! step): a veth pair with its peer in another network namespace, link up, an IPv4 address,
//! a default route, and link deletion.
//!
//! A netlink socket talks to the network namespace it was created in: the supervisor's
//! requests configure the host, the sandbox init's its own namespace. Every request asks
//! for an acknowledgement and fails with the kernel's errno.

use std::io;
use std::net::IpAddr;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const IFA_F_NODAD: u8 = 0x02;

/// One netlink request being built.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
        Msg(b)
    }

    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }

    /// `struct ifinfomsg` (family unspecified).
    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) {
        self.0.extend_from_slice(&[0, 0, 0, 0]); // family, pad, type
        self.0.extend_from_slice(&index.to_ne_bytes());
        self.0.extend_from_slice(&flags.to_ne_bytes());
        self.0.extend_from_slice(&change.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        self.0
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn name(&mut self, kind: u16, name: &str) {
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        self.attr(kind, &z);
    }

    /// Starts a nested attribute; [`Msg::end`] closes it.
    fn begin(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.attr(kind, &[]);
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn send(mut self) -> io::Result<()> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        request(&self.0)
    }
}

/// Sends one request on a fresh socket and waits for its acknowledgement.
fn request(msg: &[u8]) -> io::Result<()> {
    // SAFETY: socket(2); the fd is closed on every path below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        // SAFETY: sockaddr_nl is plain old data; zero means "the kernel".
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and kernel outlive the call.
        let sent = unsafe {
            libc::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf outlives the call.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                if kind == NLMSG_ERROR && off + 20 <= n {
                    let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                if len < 16 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    })();
    // SAFETY: fd came from socket above.
    unsafe { libc::close(fd) };
    result
}

/// Index of an interface in the caller's network namespace.
pub fn index_of(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i as i32)
}

/// Creates the veth pair `host_name` (here) ↔ `peer_name` (in the network namespace of
/// `pid`). Fails with `EEXIST` when `host_name` is taken.
pub fn create_veth(host_name: &str, peer_name: &str, pid: i32) -> io::Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.ifinfo(0, 0, 0);
    m.name(IFLA_IFNAME, host_name);
    let info = m.begin(IFLA_LINKINFO);
    m.name(IFLA_INFO_KIND, "veth");
    let data = m.begin(IFLA_INFO_DATA);
    let peer = m.begin(VETH_INFO_PEER);
    m.ifinfo(0, 0, 0);
    m.name(IFLA_IFNAME, peer_name);
    m.attr(IFLA_NET_NS_PID, &(pid as u32).to_ne_bytes());
    m.end(peer);
    m.end(data);
    m.end(info);
    m.send()
}

/// Deletes a link by name (`ENODEV` when it is already gone).
pub fn delete_link(name: &str) -> io::Result<()> {
    let mut m = Msg::new(RTM_DELLINK, 0);
    m.ifinfo(0, 0, 0);
    m.name(IFLA_IFNAME, name);
    m.send()
}

/// Sets a link up.
pub fn link_up(index: i32) -> io::Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, 0);
    let up = libc::IFF_UP as u32;
    m.ifinfo(index, up, up);
    m.send()
}

/// The address family byte and the octets of `addr`.
fn family(addr: &IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

/// Adds `addr/prefix` to a link. IPv6 addresses are usable at once (no duplicate address
/// detection: the address is ours alone on a point-to-point veth).
pub fn add_address(index: i32, addr: impl Into<IpAddr>, prefix: u8) -> io::Result<()> {
    let addr = addr.into();
    let (fam, octets) = family(&addr);
    let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    m.0.extend_from_slice(&[fam, prefix, flags, 0]); // ifaddrmsg
    m.0.extend_from_slice(&(index as u32).to_ne_bytes());
    m.attr(IFA_LOCAL, &octets);
    m.attr(IFA_ADDRESS, &octets);
    m.send()
}

/// Adds the default route (of the gateway's family) via `gateway` on link `index`.
pub fn add_default_route(index: i32, gateway: impl Into<IpAddr>) -> io::Result<()> {
    let (fam, octets) = family(&gateway.into());
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // rtmsg: family, dst_len, src_len, tos, table main, protocol boot, scope universe,
    // type unicast, flags.
    m.0.extend_from_slice(&[fam, 0, 0, 0, 254, 3, 0, 1]);
    m.0.extend_from_slice(&0u32.to_ne_bytes());
    m.attr(RTA_GATEWAY, &octets);
    m.attr(RTA_OIF, &(index as u32).to_ne_bytes());
    m.send()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_carry_their_whole_length() {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(0, 0, 0);
        let at = m.begin(IFLA_LINKINFO);
        m.name(IFLA_INFO_KIND, "veth"); // 4 + 5 bytes, padded to 12
        m.end(at);
        let len = u16::from_ne_bytes([m.0[at], m.0[at + 1]]);
        assert_eq!(len, 4 + 12);
        assert_eq!(m.0.len() % 4, 0);
    }

    #[test]
    fn requests_fail_with_the_kernel_errno() {
        // Deleting a link that does not exist: ENODEV from the kernel (also unprivileged:
        // EPERM), never a silent success.
        let e = delete_link("tako-nx0").unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::EPERM)),
            "{e}"
        );
    }
}
