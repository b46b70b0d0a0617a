//! Root filesystem preparation for tako-vm sandboxes.
//!
//! A rootfs the sandbox can run needs the mount points of the execution contract and the
//! `sandbox` user. [`check`] says what a directory lacks (the sandbox refuses such a rootfs
//! with that list); [`prepare`] adds it to a directory we own (image snapshots, fixtures).
//! [`snapshot`] builds job-type snapshots: a base image rootfs plus the job type's
//! requirements installed by uv in a builder sandbox, content-addressed and immutable.

mod build;
pub mod bytecode;
pub mod requirements;
pub mod snapshot;
mod tree;

pub use snapshot::{
    BaseImage, BindMount, BuildHost, CacheScope, InstallOutcome, InstallRun, JobTypeSpec, Snapshot,
    SnapshotError, SnapshotStore, SnapshotUse,
};

use std::fs;
use std::io;
use std::path::Path;

/// Directories the sandbox mounts over; they must exist in the (read-only) rootfs.
pub const MOUNT_POINTS: [&str; 9] = [
    "proc",
    "dev",
    "tmp",
    "code",
    "input",
    "output",
    "app",
    "home/sandbox",
    "tako",
];

/// `/etc/hosts` of a prepared rootfs (the sandbox's hostname is `tako-sandbox`).
pub const HOSTS: &str =
    "127.0.0.1\tlocalhost tako-sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Files the sandbox may bind over (network runs get their own resolver and hosts files).
pub const MOUNT_FILES: [&str; 2] = ["etc/resolv.conf", "etc/hosts"];

/// The execution contract's user.
pub const SANDBOX_USER: (&str, u32) = ("sandbox", 1000);

/// What `rootfs` lacks to be run by the sandbox (empty when it is ready).
pub fn check(rootfs: &Path) -> Vec<String> {
    let mut missing: Vec<String> = MOUNT_POINTS
        .iter()
        .filter(|d| !rootfs.join(d).is_dir())
        .map(|d| format!("/{d}"))
        .collect();
    for f in MOUNT_FILES {
        let is_file = fs::symlink_metadata(rootfs.join(f)).is_ok_and(|m| m.file_type().is_file());
        if !is_file {
            missing.push(format!("/{f} (a regular file)"));
        }
    }
    if !has_sandbox_user(rootfs) {
        missing.push("user sandbox (uid 1000) in /etc/passwd".into());
    }
    missing
}

fn has_sandbox_user(rootfs: &Path) -> bool {
    fs::read_to_string(rootfs.join("etc/passwd"))
        .map(|p| p.lines().any(|l| l.split(':').nth(2) == Some("1000")))
        .unwrap_or(false)
}

/// Adds the mount points and the `sandbox` user (uid/gid 1000, home `/home/sandbox`).
pub fn prepare(rootfs: &Path) -> io::Result<()> {
    for d in MOUNT_POINTS {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::create_dir_all(rootfs.join("etc"))?;
    for f in MOUNT_FILES {
        let p = rootfs.join(f);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => {
                fs::remove_file(&p)?;
                fs::write(&p, "")?;
            }
            Err(_) => fs::write(&p, "")?,
        }
    }
    let hosts = rootfs.join("etc/hosts");
    if fs::metadata(&hosts)?.len() == 0 {
        fs::write(&hosts, HOSTS)?;
    }
    if !has_sandbox_user(rootfs) {
        append_line(
            &rootfs.join("etc/passwd"),
            "sandbox:x:1000:1000::/home/sandbox:/bin/sh",
        )?;
    }
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    if !group.lines().any(|l| l.split(':').nth(2) == Some("1000")) {
        append_line(&rootfs.join("etc/group"), "sandbox:x:1000:")?;
    }
    std::os::unix::fs::chown(rootfs.join("home/sandbox"), Some(1000), Some(1000)).or_else(|e| {
        // Unprivileged preparation cannot chown; the directory stays readable.
        if e.kind() == io::ErrorKind::PermissionDenied {
            Ok(())
        } else {
            Err(e)
        }
    })
}

fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut text = fs::read_to_string(path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_makes_an_empty_dir_runnable_and_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("rootfs-builder-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh").unwrap();
        assert_eq!(
            check(&dir).len(),
            MOUNT_POINTS.len() + MOUNT_FILES.len() + 1
        );
        prepare(&dir).unwrap();
        prepare(&dir).unwrap();
        assert!(check(&dir).is_empty(), "{:?}", check(&dir));
        let passwd = fs::read_to_string(dir.join("etc/passwd")).unwrap();
        assert_eq!(
            passwd.lines().filter(|l| l.starts_with("sandbox:")).count(),
            1
        );
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
