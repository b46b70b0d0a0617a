//! Byte-compiled modules, kept across job-type builds.
//!
//! Byte-compiling is most of a build (55–75 % for pandas and numpy, docs/benchmarks.md), and
//! job types share packages (numpy in `data-processing` and `ml-inference`) or are rebuilt
//! after a small change. So uv installs without compiling; every installed source that was
//! compiled before gets its `.pyc` from the cache (keyed by the interpreter's magic number
//! and the sha256 of the source); only the rest is compiled, in the builder sandbox, and kept.
//!
//! The `.pyc` files are unchecked-hash ones (PEP 552): valid whatever the source's mtime,
//! which the read-only rootfs of a snapshot never changes. Python sets `co_filename` to the
//! module's real path when it loads one, so a cached file serves any install path.
//!
//! Trust: the compile runs in the builder sandbox, after a requirement's build code may have
//! run there, so this cache has exactly the uv cache's scope ([`crate::CacheScope`]): builds
//! of job types (the operator's trust domain) share it, per-request builds neither read nor
//! write it. Cache entries are hard links of snapshot files owned by root and read-only to
//! everybody else, so no sandbox can change either. Host-side paths are reached without
//! following symlinks. `gc` removes entries no snapshot links any more.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::tree;

/// The cache's directory under the snapshot store.
pub const CACHE_DIR: &str = "bytecode-cache";

/// Runs in the builder sandbox as `python3 -I -S -c COMPILE LIST`: compiles the
/// NUL-separated paths of LIST to unchecked-hash `.pyc` files next to them. A file that does
/// not compile stays source only (as with any install); the counts go to stdout.
pub const COMPILE: &str = r#"import concurrent.futures as cf, os, py_compile, sys
files = [f for f in open(sys.argv[1], 'rb').read().decode('utf-8', 'surrogateescape').split('\0') if f]
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
def one(f):
    try:
        py_compile.compile(f, doraise=True, invalidation_mode=mode)
        return 0
    except Exception:
        return 1
workers = len(os.sched_getaffinity(0))
if workers > 1 and len(files) > 64:
    with cf.ProcessPoolExecutor(workers) as ex:
        failed = sum(ex.map(one, files, chunksize=16))
else:
    failed = sum(map(one, files))
print('compiled', len(files) - failed, 'failed', failed)
"#;

/// An installed source without bytecode: its host path and the sha256 of its contents.
#[derive(Debug, Clone)]
pub struct Source {
    /// Host path inside the staging rootfs.
    pub path: PathBuf,
    /// sha256 hex of the contents.
    pub sha256: String,
}

/// Where Python looks for the `.pyc` of `py` (`__pycache__/<stem>.<tag>.pyc`).
pub fn pyc_path(py: &Path, tag: &str) -> PathBuf {
    let stem = py.file_stem().unwrap_or_default().to_string_lossy();
    py.with_file_name("__pycache__")
        .join(format!("{stem}.{tag}.pyc"))
}

/// The `.py` files under `dirs` (real directories of the staging rootfs) that have no
/// `.pyc` for `tag` yet. Symlinks are neither followed nor compiled.
pub fn uncompiled(dirs: &[PathBuf], tag: &str) -> io::Result<Vec<Source>> {
    let mut out = Vec::new();
    for d in dirs {
        walk(d, tag, &mut out)?;
    }
    Ok(out)
}

fn walk(dir: &Path, tag: &str, out: &mut Vec<Source>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        let p = e.path();
        if ft.is_dir() {
            if e.file_name() != "__pycache__" {
                walk(&p, tag, out)?;
            }
        } else if ft.is_file()
            && p.extension().is_some_and(|x| x == "py")
            && fs::symlink_metadata(pyc_path(&p, tag)).is_err()
        {
            // Streamed: the file is the builder's (it could be huge, or sparse).
            let mut hasher = Sha256::new();
            io::copy(&mut fs::File::open(&p)?, &mut hasher)?;
            let sha256 = hex::encode(hasher.finalize());
            out.push(Source { path: p, sha256 });
        }
    }
    Ok(())
}

fn entry(cache: &Path, s: &Source) -> PathBuf {
    cache.join(&s.sha256[..2]).join(format!("{}.pyc", s.sha256))
}

/// Links the cached `.pyc` of every source in `sources` that has one into place; returns
/// the sources still to compile.
pub fn link_cached(cache: &Path, sources: Vec<Source>, tag: &str) -> io::Result<Vec<Source>> {
    let mut todo = Vec::new();
    for s in sources {
        let from = entry(cache, &s);
        if !fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
            todo.push(s);
            continue;
        }
        let to = pyc_path(&s.path, tag);
        let parent = s.path.parent().expect("a file has a parent");
        // Ours to make: an image's or a build's own `__pycache__` symlink is replaced.
        tree::dir_within(parent, "__pycache__", tree::Want::Replace)?;
        match fs::hard_link(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => todo.push(s),
        }
    }
    Ok(todo)
}

/// Keeps the `.pyc` files compiled for `sources` (after they were handed back to root):
/// hard links in the cache. Only regular files reached without symlinks are kept.
pub fn keep(cache: &Path, sources: &[Source], tag: &str) -> io::Result<usize> {
    let mut kept = 0;
    for s in sources {
        let parent = s.path.parent().expect("a file has a parent");
        if tree::dir_within(parent, "__pycache__", tree::Want::Existing).is_err() {
            continue;
        }
        let pyc = pyc_path(&s.path, tag);
        if !fs::symlink_metadata(&pyc)
            .is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0)
        {
            continue;
        }
        let to = entry(cache, s);
        fs::create_dir_all(cache)?;
        tree::dir_within(cache, &s.sha256[..2], tree::Want::Create)?;
        match fs::hard_link(&pyc, &to) {
            Ok(()) => kept += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(kept)
}

/// Removes cache entries no snapshot links any more (link count 1); returns how many.
pub fn prune(cache_root: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let Ok(magics) = fs::read_dir(cache_root) else {
        return Ok(0);
    };
    for m in magics.flatten() {
        if !m.file_type()?.is_dir() {
            continue;
        }
        for b in fs::read_dir(m.path())?.flatten() {
            if !b.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(b.path())?.flatten() {
                let md = f.metadata()?;
                if md.is_file() && md.nlink() == 1 {
                    fs::remove_file(f.path())?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// True when `s` can name a directory of the cache (the interpreter's magic number in hex,
/// or a `sys.implementation.cache_tag`): it comes from the image's Python.
pub fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_found_linked_kept_and_pruned() {
        let root = tempfile::tempdir().unwrap();
        let site = root.path().join("site");
        let cache_root = root.path().join("cache");
        let cache = cache_root.join("a70d0d0a");
        fs::create_dir_all(site.join("pkg/__pycache__")).unwrap();
        fs::write(site.join("pkg/__init__.py"), "x = 1\n").unwrap();
        fs::write(site.join("pkg/done.py"), "y = 2\n").unwrap();
        fs::write(site.join("pkg/__pycache__/done.cpython-311.pyc"), "pyc").unwrap();
        fs::write(site.join("pkg/data.txt"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", site.join("pkg/link.py")).unwrap();
        let found = uncompiled(std::slice::from_ref(&site), "cpython-311").unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, site.join("pkg/__init__.py"));
        assert_eq!(found[0].sha256, hex::encode(Sha256::digest(b"x = 1\n")));
        // Nothing cached yet: all to compile.
        let todo = link_cached(&cache, found.clone(), "cpython-311").unwrap();
        assert_eq!(todo.len(), 1);
        // "Compiled" (as root in CI; the test only keeps files root owns, read-only).
        let pyc = pyc_path(&todo[0].path, "cpython-311");
        fs::write(&pyc, "compiled").unwrap();
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        assert_eq!(keep(&cache, &todo, "cpython-311").unwrap(), 1);
        // Another install of the same source gets it linked.
        let other = root.path().join("other");
        fs::create_dir_all(other.join("pkg")).unwrap();
        fs::write(other.join("pkg/__init__.py"), "x = 1\n").unwrap();
        let found = uncompiled(std::slice::from_ref(&other), "cpython-311").unwrap();
        assert!(link_cached(&cache, found, "cpython-311")
            .unwrap()
            .is_empty());
        let linked = other.join("pkg/__pycache__/__init__.cpython-311.pyc");
        assert_eq!(fs::read_to_string(&linked).unwrap(), "compiled");
        // Linked twice: not pruned; once both snapshots are gone, it is.
        assert_eq!(prune(&cache_root).unwrap(), 0);
        fs::remove_file(&linked).unwrap();
        fs::remove_file(&pyc).unwrap();
        assert_eq!(prune(&cache_root).unwrap(), 1);
    }

    #[test]
    fn names_from_the_image_are_checked() {
        assert!(safe_name("a70d0d0a"));
        assert!(safe_name("cpython-311"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "x y"] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
