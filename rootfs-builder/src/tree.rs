//! Directory-tree helpers: hard-link clones, ownership hand-over for writable binds.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

/// Recreates the tree `src` at `dst`: directories as new directories (same mode), regular
/// files as hard links (copies, with their mtime, when linking fails, e.g. across file
/// systems), symlinks as hard links to the symlink itself (new symlinks when linking
/// fails). Nothing is followed.
///
/// Linking a symlink spares a new inode and, for a target longer than 60 bytes, a data
/// block: the base image of `python:3.11-slim` has about 680 symlinks. A symlink's target
/// cannot be changed in place, and the builder changes the owner or mode only of what the
/// sandbox's user owns, so the base keeps its symlinks as they were.
pub fn clone_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    fs::create_dir(dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    walk(src, |e, from| {
        let to = dst.join(from.strip_prefix(src).unwrap_or(from));
        let ft = e.file_type()?;
        if ft.is_dir() {
            fs::create_dir(&to)?;
            fs::set_permissions(
                &to,
                fs::Permissions::from_mode(e.metadata()?.mode() & 0o7777),
            )?;
            return Ok(true);
        }
        if ft.is_symlink() {
            if fs::hard_link(from, &to).is_err() {
                std::os::unix::fs::symlink(fs::read_link(from)?, &to)?;
            }
        } else if ft.is_file() && fs::hard_link(from, &to).is_err() {
            copy_file(from, &to)?;
        }
        Ok(false)
    })
}

/// Visits every entry below `dir` (not `dir` itself), depth-first, never following a
/// symlink: `visit(entry, path)` says whether to go into a directory. No recursion (one
/// open directory at a time, a list of paths to go): a tree a sandbox nested beyond what
/// the host's stack would take ends in an error (ENAMETOOLONG past PATH_MAX), not in a crash.
pub fn walk(
    dir: &Path,
    mut visit: impl FnMut(&fs::DirEntry, &Path) -> io::Result<bool>,
) -> io::Result<()> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if visit(&e, &p)? && e.file_type()?.is_dir() {
                todo.push(p);
            }
        }
    }
    Ok(())
}

/// What [`dir_within`] does with a component that is missing, or is not a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The directory must exist: missing or not a directory is an error.
    Existing,
    /// Missing components are created; a symlink or other non-directory is an error.
    Create,
    /// Missing components are created; a symlink or other non-directory is removed and
    /// replaced by an empty directory (mount points and our own directories in a rootfs
    /// we own).
    Replace,
}

/// `root/rel` as a real directory inside `root`. No component of `rel` may be a symlink or
/// anything but a directory, so a path that an image (or the Python in it) names cannot
/// lead the host's own file operations outside `root`. New directories get mode 0755.
pub fn dir_within(root: &Path, rel: &str, want: Want) -> io::Result<PathBuf> {
    dir_within_noting(root, Path::new(rel), want, &mut Vec::new())
}

/// [`dir_within`], noting each directory it creates in `made` (parents first).
pub fn dir_within_noting(
    root: &Path,
    rel: &Path,
    want: Want,
    made: &mut Vec<PathBuf>,
) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => p.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{rel:?} is not a plain path"),
                ))
            }
        }
        let create = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => false,
            Ok(_) if want == Want::Replace => {
                fs::remove_file(&p)?;
                true
            }
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {what} in the image (refused: {} must be a real directory)",
                        p.display(),
                        rel.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && want != Want::Existing => true,
            Err(e) => return Err(e),
        };
        if create {
            match fs::create_dir(&p) {
                Ok(()) => {
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
                    made.push(p.clone());
                }
                // Made by someone else meanwhile (two builds filling one cache): a real
                // directory will do.
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(p)
}

/// Copies a regular file keeping its mode and mtime.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    fs::copy(from, to)?;
    let md = fs::metadata(from)?;
    let f = fs::OpenOptions::new().write(true).open(to)?;
    f.set_modified(md.modified()?)?;
    Ok(())
}

/// Gives every directory under (and including) `dir` to `uid:gid` so a sandbox user can
/// create and remove entries; files (hard links shared with the base image) are untouched.
///
/// Walked with directory descriptors (`openat` with `O_NOFOLLOW`, `fchown`), never by
/// path: the shared uv cache is chowned at the start of every job-type build while another
/// build's sandbox may be writing to it, and a directory it swaps for a symlink must not
/// lead the walk out (it is skipped).
pub fn chown_dirs(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let mut top = Dir::open(dir, dir_flags(), Mode::empty())?;
    nix::unistd::fchown(top.as_raw_fd(), uid, gid)?;
    let names = subdirs(&mut top)?;
    // Depth-first without recursion: one open directory and the names of its subdirectories
    // still to visit per level. A sandbox can nest directories far deeper than the host's
    // stack or descriptor limit would allow a recursive walk (the uv cache is written by
    // builds); below CHOWN_DEPTH levels nothing is changed (what a sandbox nests that deep
    // it made itself, so it owns it already).
    let mut stack: Vec<(Dir, Vec<std::ffi::CString>)> = vec![(top, names)];
    while let Some((d, names)) = stack.last_mut() {
        let Some(name) = names.pop() else {
            stack.pop();
            continue;
        };
        let mut sub = match Dir::openat(
            Some(d.as_raw_fd()),
            name.as_c_str(),
            dir_flags(),
            Mode::empty(),
        ) {
            Ok(sub) => sub,
            // Swapped for a symlink, or gone, since it was listed.
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        nix::unistd::fchown(sub.as_raw_fd(), uid, gid)?;
        if stack.len() < CHOWN_DEPTH {
            let names = subdirs(&mut sub)?;
            stack.push((sub, names));
        }
    }
    Ok(())
}

/// How deep [`chown_dirs`] goes (each level holds one open directory).
const CHOWN_DEPTH: usize = 256;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The entries of `d` (without `.` and `..`): names and whether each is a directory (never
/// following a symlink).
fn entries(d: &mut Dir) -> io::Result<Vec<(std::ffi::CString, bool)>> {
    let fd = d.as_raw_fd();
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let is_dir = match e.file_type() {
            Some(t) => t == Type::Directory,
            None => nix::sys::stat::fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
        };
        out.push((name.to_owned(), is_dir));
    }
    Ok(out)
}

fn subdirs(d: &mut Dir) -> io::Result<Vec<std::ffi::CString>> {
    Ok(entries(d)?
        .into_iter()
        .filter_map(|(n, is_dir)| is_dir.then_some(n))
        .collect())
}

/// Removes the directory `dir` and everything in it, never following symlinks, without
/// recursion and with two open directories at most, however deep the tree: every
/// subdirectory met is first renamed to the top level of `dir` (`.tako-rm-N`) and emptied
/// from there. Trees that sandboxes wrote (build scratch space, installed files, snapshots)
/// can be nested far deeper than a recursive removal's stack would survive (std's
/// `remove_dir_all` aborts the process on a tree some ten thousand levels deep), and
/// deeper than PATH_MAX, so nothing here uses a full path below `dir`. Meant for trees
/// nobody else is writing to.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut top = Dir::open(dir, dir_flags(), Mode::empty())?;
    let tfd = top.as_raw_fd();
    // Directories at the top level still to empty and remove.
    let mut pending = Vec::new();
    for (name, is_dir) in entries(&mut top)? {
        if is_dir {
            pending.push(name);
        } else {
            unlink_at(tfd, &name, false)?;
        }
    }
    let mut n: u64 = 0;
    while let Some(name) = pending.pop() {
        let mut d = match Dir::openat(Some(tfd), name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(d) => d,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let dfd = d.as_raw_fd();
        for (ent, is_dir) in entries(&mut d)? {
            if !is_dir {
                unlink_at(dfd, &ent, false)?;
                continue;
            }
            loop {
                n += 1;
                let to = std::ffi::CString::new(format!(".tako-rm-{n}")).expect("no NUL");
                // SAFETY: plain system call on valid descriptors and NUL-terminated names.
                let r = unsafe {
                    libc::renameat2(dfd, ent.as_ptr(), tfd, to.as_ptr(), libc::RENAME_NOREPLACE)
                };
                if r == 0 {
                    pending.push(to);
                    break;
                }
                match Errno::last() {
                    Errno::EEXIST => continue,
                    Errno::ENOENT => break,
                    e => return Err(e.into()),
                }
            }
        }
        drop(d);
        unlink_at(tfd, &name, true)?;
    }
    drop(top);
    fs::remove_dir(dir)
}

fn unlink_at(dirfd: std::os::fd::RawFd, name: &std::ffi::CStr, dir: bool) -> io::Result<()> {
    let flags = if dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    match nix::unistd::unlinkat(Some(dirfd), name, flags) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces every regular file under `dir` that has other hard links by a copy of its own
/// (same mode and mtime), so writing it cannot change the other links. Symlinks are neither
/// followed nor copied.
pub fn unshare_files(dir: &Path) -> io::Result<()> {
    walk(dir, |e, p| {
        let ft = e.file_type()?;
        if ft.is_file() && e.metadata()?.nlink() > 1 {
            let mut tmp = p.to_path_buf().into_os_string();
            tmp.push(".tako-unshare");
            let tmp = PathBuf::from(tmp);
            copy_file(p, &tmp)?;
            fs::rename(&tmp, p)?;
        }
        Ok(ft.is_dir())
    })
}

/// Hands everything under `dir` owned by `from_uid` (what the builder sandbox created, and
/// the directories given to it) back to `uid:gid`, and makes it readable (and, where the
/// owner may execute, executable) for everybody.
pub fn reclaim(dir: &Path, from_uid: u32, uid: u32, gid: u32) -> io::Result<()> {
    let md = fs::symlink_metadata(dir)?;
    reclaim_one(dir, &md, from_uid, uid, gid)?;
    if !md.is_dir() {
        return Ok(());
    }
    walk(dir, |e, p| {
        let md = e.metadata()?;
        reclaim_one(p, &md, from_uid, uid, gid)?;
        Ok(md.is_dir())
    })
}

fn reclaim_one(p: &Path, md: &fs::Metadata, from_uid: u32, uid: u32, gid: u32) -> io::Result<()> {
    if md.uid() != from_uid {
        return Ok(());
    }
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if md.file_type().is_symlink() {
        return Ok(());
    }
    let mut mode = md.mode() & 0o7777 & !0o6000;
    if mode & 0o400 != 0 {
        mode |= 0o044;
    }
    if mode & 0o100 != 0 || md.is_dir() {
        mode |= 0o011;
    }
    mode &= !0o022;
    if md.is_dir() {
        mode |= 0o700;
    }
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

/// Removes a tree (or file) if present, never following symlinks.
pub fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => remove_tree(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_within_never_leaves_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("usr/lib/python3")).unwrap();
        std::os::unix::fs::symlink("/", r.join("srv")).unwrap();
        fs::write(r.join("file"), "").unwrap();
        assert_eq!(
            dir_within(r, "/usr/lib", Want::Existing).unwrap(),
            r.join("usr/lib")
        );
        // Created on demand, as real directories.
        let made = dir_within(r, "/usr/local/lib/python3.11/site-packages", Want::Create).unwrap();
        assert!(fs::symlink_metadata(&made).unwrap().is_dir());
        assert!(dir_within(r, "/opt/x", Want::Existing).is_err());
        // Through a symlink (final or intermediate, relative or absolute): refused.
        for bad in [
            "/usr/lib/python3",
            "/usr/lib/python3/dist-packages",
            "/srv/wheels",
            "/file/x",
            "/usr/../etc",
            "usr/./lib/../../etc",
        ] {
            assert!(dir_within(r, bad, Want::Create).is_err(), "{bad}");
        }
        // Replace: the symlinks give way to real (empty) directories.
        let home = dir_within(r, "/usr/lib/python3/dist-packages", Want::Replace).unwrap();
        assert!(fs::symlink_metadata(&home).unwrap().is_dir());
        assert!(fs::symlink_metadata(r.join("usr/lib/python3"))
            .unwrap()
            .is_dir());
        assert!(dir_within(r, "/file/x", Want::Replace).is_ok());
        assert!(dir_within(r, "/usr/../etc", Want::Replace).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn chown_dirs_walks_directories_only_and_never_a_symlink() {
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        if unsafe { libc::geteuid() } != 0 {
            return; // chown to another uid needs root
        }
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/file"), "").unwrap();
        fs::create_dir(outside.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("a/link")).unwrap();
        chown_dirs(r, 4242, 4242).unwrap();
        let uid = |p: &Path| fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(
            (uid(r), uid(&r.join("a")), uid(&r.join("a/b"))),
            (4242, 4242, 4242)
        );
        assert_eq!(uid(&r.join("a/file")), 0, "files are left alone");
        assert_eq!(
            uid(&outside.path().join("sub")),
            0,
            "the symlink was followed"
        );
        assert_eq!(uid(outside.path()), 0);
        // The top itself must not be a symlink either.
        assert!(chown_dirs(&r.join("a/link"), 4242, 4242).is_err());
    }

    #[test]
    fn unshared_files_are_copies_with_their_mode_and_mtime() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("base")).unwrap();
        fs::write(r.join("base/f"), "image").unwrap();
        fs::set_permissions(r.join("base/f"), fs::Permissions::from_mode(0o751)).unwrap();
        clone_tree(&r.join("base"), &r.join("clone")).unwrap();
        let before = fs::metadata(r.join("clone/f")).unwrap();
        assert_eq!(before.nlink(), 2);
        unshare_files(&r.join("clone")).unwrap();
        let after = fs::metadata(r.join("clone/f")).unwrap();
        assert_eq!(after.nlink(), 1);
        assert_eq!(after.mode() & 0o7777, 0o751);
        assert_eq!(after.mtime(), before.mtime());
        fs::write(r.join("clone/f"), "changed").unwrap();
        assert_eq!(fs::read_to_string(r.join("base/f")).unwrap(), "image");
        assert_eq!(fs::read_dir(r.join("clone")).unwrap().count(), 1);
    }

    #[test]
    fn clones_share_files_and_keep_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("a/l")).unwrap();
        let dst = t.path().join("dst");
        clone_tree(&src, &dst).unwrap();
        let (m1, m2) = (
            fs::metadata(src.join("a/b/f")).unwrap(),
            fs::metadata(dst.join("a/b/f")).unwrap(),
        );
        assert_eq!(m1.ino(), m2.ino());
        assert_eq!(
            fs::read_link(dst.join("a/l")).unwrap(),
            Path::new("/etc/passwd")
        );
        // The symlink itself is shared, never followed.
        let (l1, l2) = (
            fs::symlink_metadata(src.join("a/l")).unwrap(),
            fs::symlink_metadata(dst.join("a/l")).unwrap(),
        );
        assert!(l2.file_type().is_symlink());
        assert_eq!(l1.ino(), l2.ino());
        remove(&dst).unwrap();
        assert!(src.join("a/b/f").exists());
        assert!(fs::symlink_metadata(src.join("a/l")).is_ok());
    }

    /// `depth` nested directories `d` below `top` (made by descriptor, as a sandbox can,
    /// beyond PATH_MAX), each with a file `f`; returns nothing.
    fn nest(top: &Path, depth: usize) {
        let mut d = Dir::open(top, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..depth {
            let fd = d.as_raw_fd();
            nix::sys::stat::mkdirat(Some(fd), c"d", Mode::from_bits_truncate(0o755)).unwrap();
            let f = nix::fcntl::openat(
                Some(fd),
                c"f",
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
            nix::unistd::close(f).unwrap();
            d = Dir::openat(Some(fd), c"d", dir_flags(), Mode::empty()).unwrap();
        }
    }

    /// Runs `f` on a thread with a small stack, as a server's blocking pool would (2 MiB),
    /// only smaller: a recursive walk of the trees below would overflow it and abort.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn remove_survives_a_tree_deeper_than_any_stack_or_path() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let top = t.path().join("tree");
        fs::create_dir(&top).unwrap();
        // 30 000 levels: std's remove_dir_all aborts on this even with a 2 MiB stack.
        nest(&top, 30_000);
        // Symlinks are removed, never followed; a name the removal itself uses is taken.
        std::os::unix::fs::symlink(&outside, top.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("d/d/d/link")).unwrap();
        fs::create_dir(top.join(".tako-rm-1")).unwrap();
        fs::write(top.join(".tako-rm-1/f"), "").unwrap();
        let p = top.clone();
        on_small_stack(move || remove(&p)).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists());
        // A symlink given as the tree is removed itself, not what it points to.
        std::os::unix::fs::symlink(&outside, t.path().join("l")).unwrap();
        remove(&t.path().join("l")).unwrap();
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn chown_dirs_survives_a_deep_tree_and_stops_at_its_depth_limit() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("tree");
        fs::create_dir(&top).unwrap();
        nest(&top, 5_000);
        let root = nix::unistd::geteuid().is_root();
        let to = if root {
            4242
        } else {
            nix::unistd::geteuid().as_raw()
        };
        let p = top.clone();
        on_small_stack(move || chown_dirs(&p, to, to)).unwrap();
        // Levels within CHOWN_DEPTH are changed; deeper ones are left as they are.
        let mut d = top.clone();
        for _ in 0..CHOWN_DEPTH - 1 {
            d.push("d");
        }
        assert_eq!(fs::metadata(&d).unwrap().uid(), to);
        assert_eq!(
            fs::metadata(top.join("d/f")).unwrap().uid(),
            nix::unistd::geteuid().as_raw()
        );
        if root {
            d.push("d");
            d.push("d");
            assert_ne!(fs::metadata(&d).unwrap().uid(), to);
        } else {
            eprintln!("SKIP (part): changing owners needs root");
        }
        on_small_stack(move || remove(&top)).unwrap();
    }
}
