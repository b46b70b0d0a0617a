//! Directory-tree helpers: hard-link clones, ownership hand-over for writable binds.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

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
