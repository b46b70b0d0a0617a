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
    for n in plain_components(rel)? {
        p.push(n);
        let create = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => false,
            Ok(_) if want == Want::Replace => {
                fs::remove_file(&p)?;
                true
            }
            Ok(m) => return Err(not_a_directory(&p, rel, &m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && want != Want::Existing => true,
            Err(e) => return Err(e),
        };
        if create {
            make_dir(&p, 0o755, made)?;
        }
    }
    Ok(p)
}

/// The plain components of `rel` (a leading `/` and `.` skipped); `..` is refused.
fn plain_components(rel: &Path) -> io::Result<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{rel:?} is not a plain path"),
                ))
            }
        }
    }
    Ok(out)
}

/// The refusal of `p` (a component of `rel` in an image, with metadata `m`) that is a
/// symlink or not a directory.
fn not_a_directory(p: &Path, rel: &Path, m: &fs::Metadata) -> io::Error {
    let what = match m.file_type().is_symlink() {
        true => "a symlink",
        false => "not a directory",
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is {what} in the image (refused: {} must be a real directory)",
            p.display(),
            rel.display()
        ),
    )
}

/// Makes `layer/rel` and each directory on the way to it, each with the mode of the same
/// directory in `base` (0755 where the base has none), noting each one made in `made`
/// (parents first). A component that the base has as a symlink or a non-directory is
/// refused, as [`dir_within`] does.
pub fn mirror_chain(base: &Path, layer: &Path, rel: &str) -> io::Result<PathBuf> {
    mirror_chain_noting(base, layer, rel, &mut Vec::new())
}

fn mirror_chain_noting(
    base: &Path,
    layer: &Path,
    rel: &str,
    made: &mut Vec<PathBuf>,
) -> io::Result<PathBuf> {
    let (mut b, mut l) = (base.to_path_buf(), layer.to_path_buf());
    for n in plain_components(Path::new(rel))? {
        b.push(n);
        l.push(n);
        let mode = match fs::symlink_metadata(&b) {
            Ok(m) if m.is_dir() => m.mode() & 0o7777,
            Ok(m) => return Err(not_a_directory(&b, Path::new(rel), &m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0o755,
            Err(e) => return Err(e),
        };
        make_dir(&l, mode, made)?;
    }
    Ok(l)
}

/// `mkdir` with `mode` (noted in `made`). An existing directory will do: one made by
/// someone else meanwhile (two builds filling one cache), or one a layer has already.
fn make_dir(p: &Path, mode: u32, made: &mut Vec<PathBuf>) -> io::Result<()> {
    match fs::create_dir(p) {
        Ok(()) => {
            fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
            made.push(p.to_path_buf());
            Ok(())
        }
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// [`mirror_chain`] of `rel`, then every directory the base has below it (same modes,
/// never following a symlink of the base), each noted in `made` (parents first).
pub fn mirror_dirs(
    base: &Path,
    layer: &Path,
    rel: &str,
    made: &mut Vec<PathBuf>,
) -> io::Result<PathBuf> {
    let top = mirror_chain_noting(base, layer, rel, made)?;
    let from = base.join(rel.trim_start_matches('/'));
    if !fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir()) {
        return Ok(top);
    }
    walk(&from, |e, p| {
        let ft = e.file_type()?;
        if !ft.is_dir() {
            return Ok(false);
        }
        let rel = p.strip_prefix(base).unwrap_or(p);
        make_dir(&layer.join(rel), e.metadata()?.mode() & 0o7777, made)?;
        Ok(true)
    })?;
    Ok(top)
}

/// Whether the file system of `dir` takes `user.*` extended attributes, which an overlay
/// in a user namespace keeps its opaque directories in (tmpfs before Linux 6.6 does not).
pub fn takes_user_xattrs(dir: &Path) -> bool {
    let Ok((path, name)) = xattr_args(dir, "user.tako-probe") else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and live across the calls; 1-byte value.
    unsafe {
        if libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) != 0 {
            return false;
        }
        libc::lremovexattr(path.as_ptr(), name.as_ptr());
    }
    true
}

/// `path` and the xattr `name` as the C strings the xattr calls take.
fn xattr_args(path: &Path, name: &str) -> io::Result<(std::ffi::CString, std::ffi::CString)> {
    Ok((
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?,
        std::ffi::CString::new(name)?,
    ))
}

/// The xattr by which overlayfs in a user namespace (`userxattr`) marks an opaque directory.
const OPAQUE: &str = "user.overlay.opaque";

/// Marks `dir` of a layer opaque: nothing of the layers below shows through it.
pub fn set_opaque(dir: &Path) -> io::Result<()> {
    let (path, name) = xattr_args(dir, OPAQUE)?;
    // SAFETY: both strings are NUL-terminated and live across the call; the value is 1 byte.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn is_opaque(dir: &Path) -> bool {
    let Ok((path, name)) = xattr_args(dir, OPAQUE) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks for the size.
    unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Removes the directories of `made` (as [`mirror_dirs`] noted them) that are still empty,
/// children first: in a layer, an empty directory that is not opaque adds nothing to what
/// the base shows. One that is opaque (the build emptied it) stays.
pub fn prune_mirrored(made: &[PathBuf]) -> io::Result<()> {
    for d in made.iter().rev() {
        if is_opaque(d) {
            continue;
        }
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOENT | libc::ENOTDIR)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

    /// A layer gets the base's directories (modes kept, symlinks never followed, files
    /// never copied); those left empty go again, an opaque one stays.
    #[test]
    fn a_layer_mirrors_the_base_directories_and_prunes_the_empty_ones() {
        let t = tempfile::tempdir().unwrap();
        let (base, layer) = (t.path().join("base"), t.path().join("layer"));
        fs::create_dir_all(base.join("usr/local/lib/site/pkg/sub")).unwrap();
        fs::create_dir_all(base.join("usr/local/lib/site/empty")).unwrap();
        fs::set_permissions(base.join("usr/local"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(base.join("usr/local/lib/site/pkg/mod.py"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("usr/local/lib/site/link")).unwrap();
        fs::create_dir(&layer).unwrap();
        let mut made = Vec::new();
        let top = mirror_dirs(&base, &layer, "/usr/local/lib/site", &mut made).unwrap();
        assert_eq!(top, layer.join("usr/local/lib/site"));
        assert!(layer.join("usr/local/lib/site/pkg/sub").is_dir());
        assert!(!layer.join("usr/local/lib/site/pkg/mod.py").exists());
        assert!(fs::symlink_metadata(layer.join("usr/local/lib/site/link")).is_err());
        let mode = fs::metadata(layer.join("usr/local")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        // A directory the base lacks is made (0755); a symlink of the base is refused.
        mirror_dirs(&base, &layer, "/usr/local/bin", &mut made).unwrap();
        assert!(mirror_dirs(&base, &layer, "/usr/local/lib/site/link/x", &mut made).is_err());

        fs::write(layer.join("usr/local/lib/site/pkg/new.py"), "y").unwrap();
        set_opaque(&layer.join("usr/local/lib/site/empty")).unwrap();
        prune_mirrored(&made).unwrap();
        assert!(layer.join("usr/local/lib/site/pkg/new.py").is_file());
        assert!(!layer.join("usr/local/lib/site/pkg/sub").exists());
        assert!(!layer.join("usr/local/bin").exists());
        assert!(
            layer.join("usr/local/lib/site/empty").is_dir(),
            "opaque: it hides the base's"
        );
        assert!(is_opaque(&layer.join("usr/local/lib/site/empty")));
        assert!(!is_opaque(&layer.join("usr/local/lib/site/pkg")));
    }

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
