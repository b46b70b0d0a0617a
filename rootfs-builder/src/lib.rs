//! Root filesystem preparation for tako-vm sandboxes.
//!
//! A rootfs the sandbox can run needs the mount points of the execution contract and the
//! `sandbox` user. [`check`] says what a directory lacks (the sandbox refuses such a rootfs
//! with that list); [`prepare`] adds it to a directory we own (image snapshots, fixtures).
//! [`snapshot`] builds job-type snapshots: a base image rootfs plus the job type's
//! requirements installed by uv in a builder sandbox, content-addressed and immutable.

mod build;
pub mod bytecode;
pub mod dists;
pub mod durable;
pub mod pyc;
pub mod requirements;
pub mod snapshot;
mod tree;

/// Removes a file, symlink or directory tree (never following symlinks, however deep the
/// tree: no recursion and no full paths below it); a missing path is fine.
pub use tree::remove as remove_path;

/// `flock` on a lock file (created if missing, opened read-only if it exists).
pub use snapshot::locked as flock_file;
/// Visits every entry below a directory without recursion and without following symlinks
/// (see `tree::walk`); for trees that build code wrote.
pub use tree::walk as walk_tree;

pub use snapshot::{
    BaseImage, BindMount, BuildHost, BuildLayers, CacheScope, DirectOwner, InstallOutcome,
    InstallRun, JobTypeSpec, SandboxOwner, Snapshot, SnapshotError, SnapshotStore, SnapshotUse,
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

/// With `TAKO_VM_TRACE=1`, prints `label` and the time since `t0` to stderr (phase timings
/// of sandbox starts and builds, for measuring).
pub fn trace(t0: std::time::Instant, label: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var("TAKO_VM_TRACE").as_deref() == Ok("1")) {
        eprintln!(
            "tako-vm trace +{:.2}ms {label}",
            t0.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// What `rootfs` lacks to be run by the sandbox (empty when it is ready).
pub fn check(rootfs: &Path) -> Vec<String> {
    let mut missing: Vec<String> = MOUNT_POINTS
        .iter()
        .filter(|d| tree::dir_within(rootfs, d, tree::Want::Existing).is_err())
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

/// [`check`] of a rootfs given as layers: `top` over `lower` (top first; empty: `top` is
/// the whole tree). The bottom layer (a prepared base image) must have everything; a layer
/// above it may not put anything but a directory on a mount point, or anything but a
/// regular file on a file the sandbox binds over (a whiteout is neither).
pub fn check_layered(top: &Path, lower: &[std::path::PathBuf]) -> Vec<String> {
    let Some(bottom) = lower.last() else {
        return check(top);
    };
    let mut missing = check(bottom);
    let above = std::iter::once(top).chain(lower[..lower.len() - 1].iter().map(|p| p.as_path()));
    for layer in above {
        for d in MOUNT_POINTS {
            let mut p = layer.to_path_buf();
            for c in Path::new(d).components() {
                p.push(c);
                if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
                    missing.push(format!("/{d} (hidden by a layer)"));
                    break;
                }
            }
        }
        for f in MOUNT_FILES {
            if fs::symlink_metadata(layer.join(f)).is_ok_and(|m| !m.file_type().is_file()) {
                missing.push(format!("/{f} (hidden by a layer)"));
            }
        }
    }
    missing
}

/// Whether snapshots in `dir` can be layers: the kernel mounts overlayfs in user namespaces
/// (Linux 5.11) and the file system of `dir` takes the `user.*` xattrs such an overlay
/// keeps its opaque directories in (tmpfs only since 6.6). Otherwise builds make whole
/// trees (hard-link clones of the base), as before layers.
pub fn layers_supported(dir: &Path) -> bool {
    kernel_at_least(&kernel_release(), (5, 11)) && tree::takes_user_xattrs(dir)
}

/// The running kernel's release (`uname -r`); empty when it cannot be read.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a kernel release (`uname -r`, e.g. `6.1.0-18-amd64`) is at least `min`.
pub fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

fn has_sandbox_user(rootfs: &Path) -> bool {
    read_regular(&rootfs.join("etc/passwd"))
        .lines()
        .any(|l| l.split(':').nth(2) == Some("1000"))
}

/// Adds the mount points and the `sandbox` user (uid/gid 1000, home `/home/sandbox`).
///
/// `rootfs` is an unpacked image: untrusted content. Nothing here follows a symlink of it
/// (an image whose `/home/sandbox` or `/etc/passwd` is a symlink to a host path must not
/// make the host chown or rewrite that path): mount points and `/etc` must be real
/// directories (symlinks there are replaced by empty ones), and the files written are
/// replaced, never written through.
pub fn prepare(rootfs: &Path) -> io::Result<()> {
    for d in MOUNT_POINTS {
        tree::dir_within(rootfs, d, tree::Want::Replace)?;
    }
    let etc = tree::dir_within(rootfs, "etc", tree::Want::Replace)?;
    for f in MOUNT_FILES {
        let p = rootfs.join(f);
        if !is_regular(&p) {
            write_regular(&p, "")?;
        }
    }
    let hosts = etc.join("hosts");
    if fs::metadata(&hosts)?.len() == 0 {
        write_regular(&hosts, HOSTS)?;
    }
    if !has_sandbox_user(rootfs) {
        append_line(
            &etc.join("passwd"),
            "sandbox:x:1000:1000::/home/sandbox:/bin/sh",
        )?;
    }
    let group = read_regular(&etc.join("group"));
    if !group.lines().any(|l| l.split(':').nth(2) == Some("1000")) {
        append_line(&etc.join("group"), "sandbox:x:1000:")?;
    }
    let home = tree::dir_within(rootfs, "home/sandbox", tree::Want::Replace)?;
    std::os::unix::fs::lchown(home, Some(1000), Some(1000)).or_else(|e| {
        // Unprivileged preparation cannot chown; the directory stays readable.
        if e.kind() == io::ErrorKind::PermissionDenied {
            Ok(())
        } else {
            Err(e)
        }
    })
}

fn is_regular(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// The contents of a regular file; "" for anything else (a symlink is not followed).
fn read_regular(path: &Path) -> String {
    if is_regular(path) {
        fs::read_to_string(path).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Writes `text` to `path`, replacing whatever is there (a symlink is removed, not
/// followed; a regular file is rewritten).
fn write_regular(path: &Path, text: &str) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
        tree::remove(path)?;
    }
    fs::write(path, text)
}

fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut text = read_regular(path);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_regular(path, &text)
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

    /// A layered rootfs: the base must be prepared, and a layer may not hide a mount point
    /// or a file the sandbox binds over.
    #[test]
    fn a_layer_may_not_hide_what_the_sandbox_mounts_on() {
        let t = tempfile::tempdir().unwrap();
        let (base, layer) = (t.path().join("base"), t.path().join("layer"));
        fs::create_dir_all(base.join("etc")).unwrap();
        prepare(&base).unwrap();
        fs::create_dir_all(layer.join("usr/local")).unwrap();
        fs::create_dir_all(layer.join("app/shared_code")).unwrap();
        let lower = [base.clone()];
        assert!(check_layered(&layer, &lower).is_empty());
        assert!(!check(&layer).is_empty(), "the layer alone is no rootfs");
        fs::create_dir_all(layer.join("home")).unwrap();
        fs::write(layer.join("home/sandbox"), "").unwrap();
        fs::create_dir_all(layer.join("etc/hosts")).unwrap();
        let missing = check_layered(&layer, &lower);
        assert_eq!(
            missing,
            [
                "/home/sandbox (hidden by a layer)",
                "/etc/hosts (hidden by a layer)"
            ]
        );
        // Without layers it is `check` of the one tree.
        assert_eq!(check_layered(&base, &[]), check(&base));
    }

    /// An image is untrusted: its symlinks must not lead `prepare` (run as root by a
    /// server) to chown or rewrite host paths.
    #[test]
    fn prepare_never_follows_the_images_symlinks() {
        use std::os::unix::fs::{symlink, MetadataExt};
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let o = outside.path();
        fs::write(o.join("passwd"), "host:x:0:0::/:/bin/sh\n").unwrap();
        fs::create_dir(o.join("dir")).unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("home")).unwrap();
        symlink(o.join("passwd"), r.join("etc/passwd")).unwrap();
        symlink(o.join("passwd"), r.join("etc/group")).unwrap();
        symlink(o.join("passwd"), r.join("etc/hosts")).unwrap();
        symlink(o.join("dir"), r.join("home/sandbox")).unwrap();
        symlink(o, r.join("app")).unwrap();
        symlink("/", r.join("tmp")).unwrap();
        let before = fs::metadata(o.join("dir")).unwrap();
        prepare(r).unwrap();
        assert!(check(r).is_empty(), "{:?}", check(r));
        // The host side is untouched…
        assert_eq!(
            fs::read_to_string(o.join("passwd")).unwrap(),
            "host:x:0:0::/:/bin/sh\n"
        );
        let after = fs::metadata(o.join("dir")).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_eq!(fs::read_dir(o).unwrap().count(), 2);
        // …and the rootfs has real directories and files of its own.
        for d in ["home/sandbox", "app", "tmp"] {
            assert!(fs::symlink_metadata(r.join(d)).unwrap().is_dir(), "{d}");
        }
        for f in ["etc/passwd", "etc/group", "etc/hosts"] {
            assert!(is_regular(&r.join(f)), "{f}");
        }
        assert!(fs::read_to_string(r.join("etc/passwd"))
            .unwrap()
            .starts_with("sandbox:x:1000"));
        if nix_is_root() {
            assert_eq!(fs::metadata(r.join("home/sandbox")).unwrap().uid(), 1000);
        }
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        unsafe { libc::geteuid() == 0 }
    }
}
