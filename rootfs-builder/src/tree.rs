//! Directory-tree helpers: hard-link clones, ownership hand-over for writable binds.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Recreates the tree `src` at `dst`: directories as new directories (same mode), regular
/// files as hard links (copies, with their mtime, when linking fails, e.g. across file
/// systems), symlinks as symlinks. Nothing is followed.
pub fn clone_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    fs::create_dir(dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_dir() {
            clone_tree(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() && fs::hard_link(&from, &to).is_err() {
            copy_file(&from, &to)?;
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
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
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
                        "{} is {what} in the image (refused: {rel} must be a real directory)",
                        p.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && want != Want::Existing => true,
            Err(e) => return Err(e),
        };
        if create {
            match fs::create_dir(&p) {
                Ok(()) => fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?,
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
/// Directories reached through a symlink are not visited.
pub fn chown_dirs(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_dirs(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Hands everything under `dir` owned by `from_uid` (what the builder sandbox created, and
/// the directories given to it) back to `uid:gid`, and makes it readable (and, where the
/// owner may execute, executable) for everybody.
pub fn reclaim(dir: &Path, from_uid: u32, uid: u32, gid: u32) -> io::Result<()> {
    let md = fs::symlink_metadata(dir)?;
    if md.uid() == from_uid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
        if !md.file_type().is_symlink() {
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
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
        }
    }
    if md.is_dir() {
        for e in fs::read_dir(dir)? {
            reclaim(&e?.path(), from_uid, uid, gid)?;
        }
    }
    Ok(())
}

/// Removes a tree (or file) if present, never following symlinks.
pub fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
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
        remove(&dst).unwrap();
        assert!(src.join("a/b/f").exists());
    }
}
