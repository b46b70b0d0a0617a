//! The sandbox's filesystem view, assembled by the sandbox init inside its own mount
//! namespace (as root of its user namespace), then entered with `pivot_root`.
//!
//! Result: the rootfs read-only `nosuid,nodev`; `/proc` fresh with sensitive paths masked;
//! a minimal read-only `/dev` (null, zero, full, random, urandom, tty bound from the host)
//! with a private `/dev/shm`; `/tmp` and `/output` size-limited `noexec` tmpfs; injected
//! read-only directories (`/code`, `/input`); no `/sys`; the old root detached.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::spec::{Bind, SandboxSpec, SANDBOX_GID, SANDBOX_UID};

/// Device nodes bound from the host into the sandbox's `/dev`.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/proc` entries hidden behind `/dev/null` (files) or an empty read-only tmpfs (dirs).
const MASKED_FILES: [&str; 6] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kallsyms",
];
const MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "driver"];
/// `/proc` entries made read-only.
const READONLY_PROC: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

type R<T> = Result<T, String>;

fn m(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> R<()> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            fstype.or(src).unwrap_or("-"),
            target.display()
        )
    })
}

/// `root/rel` and its metadata, reached through plain components only and without a
/// symlink anywhere on the way: mounts are made before pivot_root, when a symlink of the
/// rootfs would resolve against the host's tree.
fn within(root: &Path, rel: &str) -> R<(std::path::PathBuf, fs::Metadata)> {
    const HINT: &str = "prepare it with rootfs-builder (tako-vm images are prepared automatically)";
    let mut p = root.to_path_buf();
    let mut last = None;
    for c in Path::new(rel.trim_start_matches('/')).components() {
        let std::path::Component::Normal(n) = c else {
            return Err(format!("invalid path {rel:?} in the rootfs"));
        };
        p.push(n);
        let md = fs::symlink_metadata(&p)
            .map_err(|e| format!("the rootfs has no {rel} ({e}); {HINT}"))?;
        if md.file_type().is_symlink() {
            return Err(format!(
                "the rootfs's {rel} goes through a symlink; mount points must be real; {HINT}"
            ));
        }
        last = Some(md);
    }
    let md = last.ok_or_else(|| format!("invalid path {rel:?} in the rootfs"))?;
    Ok((p, md))
}

fn need_dir(root: &Path, rel: &str) -> R<std::path::PathBuf> {
    match within(root, rel)? {
        (p, md) if md.is_dir() => Ok(p),
        _ => Err(format!("the rootfs's {rel} is not a directory")),
    }
}

/// Flags of the mount holding `path` that a user namespace may not clear on remount.
fn locked_flags(path: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(st) = statvfs(path) {
        let fl = st.flags();
        for (s, mflag) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if fl.contains(s) {
                f |= mflag;
            }
        }
    }
    f
}

fn bind_readonly(src: &Path, target: &Path, extra: MsFlags) -> R<()> {
    m(
        src.to_str(),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra | locked_flags(target);
    m(None, target, None, flags, None)
}

fn tmpfs(target: &Path, size: u64, mode: &str, flags: MsFlags) -> R<()> {
    tmpfs_with(target, &format!("size={size},mode={mode}"), flags)
}

fn tmpfs_with(target: &Path, data: &str, flags: MsFlags) -> R<()> {
    m(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data))
}

const SAFE: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const SAFE_NOEXEC: MsFlags = SAFE.union(MsFlags::MS_NOEXEC);

/// Builds the sandbox filesystem under `spec.rootfs` and pivots into it.
/// Must run as the pid-namespace init, inside fresh user and mount namespaces.
pub fn enter_rootfs(spec: &SandboxSpec) -> R<()> {
    let root = spec.rootfs.as_path();
    m(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // The rootfs must be a mount point for pivot_root: itself bound, or its layers'
    // overlay mounted on it.
    match &spec.layers {
        None => m(
            root.to_str(),
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?,
        Some(l) => {
            let options = l.options(root)?;
            m(Some("overlay"), root, Some("overlay"), SAFE, Some(&options))?;
        }
    }

    let proc_dir = need_dir(root, "/proc")?;
    m(Some("proc"), &proc_dir, Some("proc"), SAFE_NOEXEC, None)?;
    setup_dev(root)?;
    mask_proc(&proc_dir)?;

    let tmp = need_dir(root, "/tmp")?;
    tmpfs(&tmp, spec.limits.tmpfs_bytes, "1777", SAFE_NOEXEC)?;
    for d in &spec.tmp_dirs {
        let p = tmp.join(d.trim_start_matches("/tmp/").trim_start_matches('/'));
        fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        let _ = std::os::unix::fs::chown(&p, Some(SANDBOX_UID), Some(SANDBOX_GID));
        // Parents (e.g. /tmp/.cache) too.
        let mut cur = p.parent();
        while let Some(c) = cur {
            if c == tmp {
                break;
            }
            let _ = std::os::unix::fs::chown(c, Some(SANDBOX_UID), Some(SANDBOX_GID));
            cur = c.parent();
        }
    }
    if let Some(out) = &spec.output {
        let dir = need_dir(root, "/output")?;
        let data = format!(
            "size={},nr_inodes={},mode=0777",
            out.tmpfs_bytes,
            out.inodes()
        );
        tmpfs_with(&dir, &data, SAFE_NOEXEC)?;
    }
    for inj in &spec.injected {
        let dir = need_dir(root, &inj.path)?;
        let size: usize = inj
            .files
            .iter()
            .map(|f| f.contents.len() + 4096)
            .sum::<usize>()
            + 4096;
        tmpfs(&dir, size as u64, "0755", SAFE_NOEXEC)?;
        for f in &inj.files {
            if f.name.is_empty() || f.name.contains('/') || f.name.starts_with('.') {
                return Err(format!("invalid injected file name {:?}", f.name));
            }
            let p = dir.join(&f.name);
            let mut fh = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&p)
                .map_err(|e| format!("create {}: {e}", p.display()))?;
            fh.write_all(&f.contents)
                .map_err(|e| format!("write {}: {e}", p.display()))?;
        }
        m(
            None,
            &dir,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | SAFE_NOEXEC,
            None,
        )?;
    }

    // A network-enabled run sees the host's resolvers and its pinned hosts.
    if spec.injected.iter().any(|d| d.path == super::net::META_DIR) {
        let meta = need_dir(root, super::net::META_DIR)?;
        for f in ["resolv.conf", "hosts"] {
            let target = root.join("etc").join(f);
            if meta.join(f).is_file() && target.is_file() {
                bind_readonly(&meta.join(f), &target, SAFE_NOEXEC)?;
            }
        }
    }

    for b in &spec.binds {
        apply_bind(root, b)?;
    }
    // A build's install directories stay writable (each its own mount) when the root
    // goes read-only below; nothing else of its writable layer does.
    if let Some(l) = spec.layers.as_ref().filter(|l| l.upper.is_some()) {
        for w in &l.writable {
            let (dir, md) = within(root, w).map_err(|e| format!("writable layer dir: {e}"))?;
            if !md.is_dir() {
                return Err(format!("writable layer dir {w} is not a directory"));
            }
            // Bound onto itself: its own mount, read-write.
            let bind = Bind {
                host: dir,
                target: w.clone(),
                writable: true,
            };
            apply_bind(root, &bind)?;
        }
    }

    // Root read-only last (submounts keep their own flags).
    let flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | SAFE | locked_flags(root);
    m(None, root, None, flags, None)?;

    nix::unistd::chdir(root).map_err(|e| format!("chdir rootfs: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Bind-mounts `b.host` onto `b.target` (which must exist in the rootfs, reached without
/// symlinks), read-only unless `b.writable`, always `nosuid,nodev`.
fn apply_bind(root: &Path, b: &Bind) -> R<()> {
    let (target, _) = within(root, &b.target).map_err(|e| format!("bind target: {e}"))?;
    m(
        b.host.to_str(),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | SAFE | locked_flags(&target);
    if !b.writable {
        flags |= MsFlags::MS_RDONLY;
    }
    m(None, &target, None, flags, None)
}

fn setup_dev(root: &Path) -> R<()> {
    let dev = need_dir(root, "/dev")?;
    tmpfs(
        &dev,
        1 << 20,
        "0755",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        // No remount to nosuid/noexec: a device node can be neither executed nor setuid, so
        // those flags would change nothing (and each remount is one more mount call).
        m(host.to_str(), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| format!("mkdir /dev/shm: {e}"))?;
    fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777)).ok();
    tmpfs(&shm, 64 << 20, "1777", SAFE_NOEXEC)?;
    m(
        None,
        &dev,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )
}

fn mask_proc(proc_dir: &Path) -> R<()> {
    for f in MASKED_FILES {
        let p = proc_dir.join(f);
        if p.exists() {
            m(Some("/dev/null"), &p, None, MsFlags::MS_BIND, None)?;
        }
    }
    for d in MASKED_DIRS {
        let p = proc_dir.join(d);
        if p.is_dir() {
            tmpfs(&p, 4096, "0555", SAFE_NOEXEC | MsFlags::MS_RDONLY)?;
        }
    }
    for r in READONLY_PROC {
        let p = proc_dir.join(r);
        if p.exists() {
            bind_readonly(&p, &p, SAFE_NOEXEC)?;
        }
    }
    Ok(())
}

/// Brings the loopback interface of the (empty) network namespace up.
pub fn loopback_up() -> R<()> {
    // SAFETY: plain socket(2); the fd is owned below and closed on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq that lives for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd was returned by socket above and is not used afterwards.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(format!("bring lo up: {err}"));
    }
    Ok(())
}
