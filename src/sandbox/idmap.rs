//! User-namespace id maps: which host ids the sandbox's ids stand for.
//!
//! The sandbox user (uid/gid 1000 inside) must never be host root. Three strategies:
//!
//! * [`IdMap::Direct`]: the server is host root. It writes `/proc/<pid>/uid_map` itself,
//!   mapping inside `0..count` onto an unprivileged host range: root's `/etc/subuid` entry
//!   when there is one, else [`DEFAULT_HOST_BASE`] (far above ordinary subuid allocations).
//! * [`IdMap::Subordinate`]: an unprivileged server with `/etc/subuid` and `/etc/subgid`
//!   entries. `newuidmap`/`newgidmap` map inside 0 onto the server's own id and inside
//!   `1..` onto the subordinate range.
//! * [`IdMap::Single`]: an unprivileged server without subordinate ids. Only inside 1000
//!   exists, mapped onto the server's own uid.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use super::spec::{SANDBOX_GID, SANDBOX_UID};

/// Host uid/gid base used by a root server without an `/etc/subuid` entry for root.
pub const DEFAULT_HOST_BASE: u32 = 0x7000_0000;
/// Number of ids mapped by a root server.
pub const DEFAULT_COUNT: u32 = 65536;

/// Errors while choosing or writing id maps.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// Writing a map file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// newuidmap/newgidmap failed.
    #[error("{tool} failed ({detail}); check /etc/subuid and /etc/subgid and that the uidmap package is installed")]
    Helper {
        /// The tool.
        tool: &'static str,
        /// Its error output.
        detail: String,
    },
    /// A subordinate range is too small.
    #[error("subordinate id range of {0} ids is too small: tako-vm needs at least 1001 (uid 1000 inside)")]
    RangeTooSmall(u32),
}

/// One subordinate id range from `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First host id.
    pub start: u32,
    /// Number of ids.
    pub count: u32,
}

/// The chosen id-map strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMap {
    /// Host root writes the maps: inside `0..count` → host `uid_base..`, `gid_base..`.
    Direct {
        /// First host uid.
        uid_base: u32,
        /// First host gid.
        gid_base: u32,
        /// Number of ids.
        count: u32,
    },
    /// newuidmap/newgidmap: inside 0 → own id, inside `1..=count` → the subordinate range.
    Subordinate {
        /// The server's uid.
        own_uid: u32,
        /// The server's gid.
        own_gid: u32,
        /// Subordinate uids.
        uids: Range,
        /// Subordinate gids.
        gids: Range,
    },
    /// Inside 1000 → the server's own uid/gid, nothing else.
    Single {
        /// The server's uid.
        own_uid: u32,
        /// The server's gid.
        own_gid: u32,
    },
}

impl IdMap {
    /// Chooses the strategy for the current process from its ids and `/etc/sub{u,g}id`.
    pub fn detect() -> Result<IdMap, IdMapError> {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let name = user_name(uid);
        let subuid = fs::read_to_string("/etc/subuid").unwrap_or_default();
        let subgid = fs::read_to_string("/etc/subgid").unwrap_or_default();
        Self::choose(uid, gid, name.as_deref(), &subuid, &subgid)
    }

    /// Pure decision behind [`IdMap::detect`].
    pub fn choose(
        uid: u32,
        gid: u32,
        name: Option<&str>,
        subuid: &str,
        subgid: &str,
    ) -> Result<IdMap, IdMapError> {
        let su = find_range(subuid, uid, name);
        let sg = find_range(subgid, uid, name);
        if uid == 0 {
            return Ok(match (su, sg) {
                (Some(u), Some(g)) if u.count.min(g.count) > SANDBOX_UID => IdMap::Direct {
                    uid_base: u.start,
                    gid_base: g.start,
                    count: u.count.min(g.count).min(DEFAULT_COUNT),
                },
                _ => IdMap::Direct {
                    uid_base: DEFAULT_HOST_BASE,
                    gid_base: DEFAULT_HOST_BASE,
                    count: DEFAULT_COUNT,
                },
            });
        }
        match (su, sg) {
            (Some(u), Some(g)) => {
                let small = u.count.min(g.count);
                if small < SANDBOX_UID {
                    return Err(IdMapError::RangeTooSmall(small));
                }
                Ok(IdMap::Subordinate {
                    own_uid: uid,
                    own_gid: gid,
                    uids: u,
                    gids: g,
                })
            }
            _ => Ok(IdMap::Single {
                own_uid: uid,
                own_gid: gid,
            }),
        }
    }

    /// The uid the sandbox init has inside once the map is written.
    pub fn init_uid(&self) -> u32 {
        match self {
            IdMap::Single { .. } => SANDBOX_UID,
            _ => 0,
        }
    }

    /// The host uid that the sandbox user (uid 1000 inside) stands for.
    pub fn host_sandbox_uid(&self) -> u32 {
        match self {
            IdMap::Direct { uid_base, .. } => uid_base + SANDBOX_UID,
            IdMap::Subordinate { uids, .. } => uids.start + SANDBOX_UID - 1,
            IdMap::Single { own_uid, .. } => *own_uid,
        }
    }

    /// The `uid_map` and `gid_map` contents (as written by the kernel interface).
    pub fn map_lines(&self) -> (String, String) {
        match self {
            IdMap::Direct {
                uid_base,
                gid_base,
                count,
            } => (
                format!("0 {uid_base} {count}\n"),
                format!("0 {gid_base} {count}\n"),
            ),
            IdMap::Subordinate {
                own_uid,
                own_gid,
                uids,
                gids,
            } => (
                format!(
                    "0 {own_uid} 1\n1 {} {}\n",
                    uids.start,
                    uids.count.min(65535)
                ),
                format!(
                    "0 {own_gid} 1\n1 {} {}\n",
                    gids.start,
                    gids.count.min(65535)
                ),
            ),
            IdMap::Single { own_uid, own_gid } => (
                format!("{SANDBOX_UID} {own_uid} 1\n"),
                format!("{SANDBOX_GID} {own_gid} 1\n"),
            ),
        }
    }

    /// Writes the maps of the user namespace of process `pid`.
    pub fn apply(&self, pid: i32) -> Result<(), IdMapError> {
        let (uid_map, gid_map) = self.map_lines();
        match self {
            IdMap::Direct { .. } => {
                write_proc(pid, "uid_map", &uid_map)?;
                write_proc(pid, "gid_map", &gid_map)
            }
            IdMap::Single { .. } => {
                // An unprivileged writer must deny setgroups before it may write gid_map.
                write_proc(pid, "setgroups", "deny")?;
                write_proc(pid, "uid_map", &uid_map)?;
                write_proc(pid, "gid_map", &gid_map)
            }
            IdMap::Subordinate { .. } => {
                run_helper("newuidmap", pid, &uid_map)?;
                run_helper("newgidmap", pid, &gid_map)
            }
        }
    }
}

fn write_proc(pid: i32, file: &str, data: &str) -> Result<(), IdMapError> {
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, data).map_err(|source| IdMapError::Write { path, source })
}

fn run_helper(tool: &'static str, pid: i32, lines: &str) -> Result<(), IdMapError> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for word in lines.split_whitespace() {
        cmd.arg(word);
    }
    cmd.env_clear();
    let out = cmd.output().map_err(|e| IdMapError::Helper {
        tool,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(IdMapError::Helper {
            tool,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Finds the first range for `uid` (by number or by name) in an `/etc/subuid`-style file.
pub fn find_range(contents: &str, uid: u32, name: Option<&str>) -> Option<Range> {
    contents.lines().find_map(|line| {
        let mut it = line.trim().split(':');
        let who = it.next()?;
        let start = it.next()?.parse().ok()?;
        let count = it.next()?.parse().ok()?;
        let matches = who == uid.to_string() || Some(who) == name;
        (matches && count > 0).then_some(Range { start, count })
    })
}

/// Looks a uid up in `/etc/passwd` (no NSS: sandboxes are set up without it).
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string(Path::new("/etc/passwd")).ok()?;
    passwd.lines().find_map(|l| {
        let mut it = l.split(':');
        let name = it.next()?;
        let _ = it.next()?;
        (it.next()? == uid.to_string()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_without_subuid_uses_the_far_default_range() {
        let m = IdMap::choose(0, 0, Some("root"), "", "").unwrap();
        assert_eq!(m.host_sandbox_uid(), DEFAULT_HOST_BASE + 1000);
        assert_eq!(m.init_uid(), 0);
        assert_eq!(m.map_lines().0, format!("0 {DEFAULT_HOST_BASE} 65536\n"));
    }

    #[test]
    fn root_with_subuid_entry_uses_it() {
        let m = IdMap::choose(
            0,
            0,
            Some("root"),
            "root:200000:65536\n",
            "0:300000:65536\n",
        )
        .unwrap();
        assert_eq!(
            m,
            IdMap::Direct {
                uid_base: 200000,
                gid_base: 300000,
                count: 65536
            }
        );
        assert_ne!(m.host_sandbox_uid(), 0);
    }

    #[test]
    fn unprivileged_user_with_subuid_uses_newuidmap_lines() {
        let m = IdMap::choose(
            1001,
            1001,
            Some("alice"),
            "bob:100000:65536\nalice:165536:65536\n",
            "alice:165536:65536\n",
        )
        .unwrap();
        let (u, g) = m.map_lines();
        assert_eq!(u, "0 1001 1\n1 165536 65535\n");
        assert_eq!(g, "0 1001 1\n1 165536 65535\n");
        assert_eq!(m.host_sandbox_uid(), 165536 + 999);
        assert_eq!(m.init_uid(), 0);
    }

    #[test]
    fn unprivileged_user_without_subuid_maps_only_the_sandbox_user() {
        let m = IdMap::choose(1001, 1002, Some("alice"), "bob:1:2\n", "").unwrap();
        assert_eq!(
            m.map_lines(),
            ("1000 1001 1\n".into(), "1000 1002 1\n".into())
        );
        assert_eq!(m.init_uid(), 1000);
    }

    #[test]
    fn too_small_subordinate_range_is_refused() {
        let e = IdMap::choose(1001, 1001, None, "1001:100000:10\n", "1001:100000:10\n");
        assert!(matches!(e, Err(IdMapError::RangeTooSmall(10))));
    }
}
