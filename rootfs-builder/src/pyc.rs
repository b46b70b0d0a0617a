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
/// not compile stays source only (as with any install); the counts go to stdout. Workers
/// are forked (not the forkserver Python 3.14 defaults to, which cannot import a `-c`
/// script's function), at most 4.
pub const COMPILE: &str = r#"import multiprocessing as mp, os, py_compile, sys
files = [os.fsdecode(f) for f in open(sys.argv[1], 'rb').read().split(b'\0') if f]
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
def one(f):
    try:
        py_compile.compile(f, doraise=True, invalidation_mode=mode)
        return 0
    except Exception:
        return 1
workers = min(len(os.sched_getaffinity(0)), 4)
if workers > 1 and len(files) > 64:
    with mp.get_context('fork').Pool(workers) as pool:
        failed = sum(pool.map(one, files, chunksize=16))
else:
    failed = sum(map(one, files))
print('compiled', len(files) - failed, 'failed', failed)
"#;

/// Sources larger than this are compiled but not cached (nor hashed).
const MAX_CACHED: u64 = 16 << 20;

/// An installed source without bytecode.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path relative to the rootfs.
    pub rel: PathBuf,
    /// sha256 hex of the contents; `None` when it is not to be cached.
    pub sha256: Option<String>,
}

/// The file name Python gives the `.pyc` of `py` (`<stem>.<tag>.pyc`), from the raw bytes
/// of the name as Python's own (surrogate-escaped) naming yields.
fn pyc_name(py: &Path, tag: &str) -> std::ffi::OsString {
    let mut name = py.file_stem().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(tag);
    name.push(".pyc");
    name
}

/// Where Python looks for the `.pyc` of `py` (`__pycache__/<stem>.<tag>.pyc`).
pub fn pyc_path(py: &Path, tag: &str) -> PathBuf {
    py.with_file_name("__pycache__").join(pyc_name(py, tag))
}

/// The `.py` files under `dirs` (real directories inside `rootfs`) that have no `.pyc` for
/// `tag` yet. Symlinks are neither followed nor compiled. With `hash`, each gets the sha256
/// of its contents (streamed: a build can leave huge or sparse files).
pub fn uncompiled(
    rootfs: &Path,
    dirs: &[PathBuf],
    tag: &str,
    hash: bool,
) -> io::Result<Vec<Source>> {
    let mut out = Vec::new();
    for d in dirs {
        walk(rootfs, d, tag, hash, &mut out)?;
    }
    Ok(out)
}

fn walk(rootfs: &Path, dir: &Path, tag: &str, hash: bool, out: &mut Vec<Source>) -> io::Result<()> {
    crate::tree::walk(dir, |e, p| {
        let ft = e.file_type()?;
        if ft.is_dir() {
            return Ok(e.file_name() != "__pycache__");
        }
        if ft.is_file()
            && p.extension().is_some_and(|x| x == "py")
            && fs::symlink_metadata(pyc_path(p, tag)).is_err()
        {
            let sha256 = if hash && e.metadata()?.len() <= MAX_CACHED {
                let mut hasher = Sha256::new();
                io::copy(&mut fs::File::open(p)?, &mut hasher)?;
                Some(hex::encode(hasher.finalize()))
            } else {
                None
            };
            let rel = p.strip_prefix(rootfs).unwrap_or(p).to_path_buf();
            out.push(Source { rel, sha256 });
        }
        Ok(false)
    })
}

fn entry(cache: &Path, sha256: &str) -> PathBuf {
    cache.join(&sha256[..2]).join(format!("{sha256}.pyc"))
}

/// Splits `sources` into those the cache has a `.pyc` for and those to compile.
pub fn split_cached(cache: &Path, sources: Vec<Source>) -> (Vec<Source>, Vec<Source>) {
    sources.into_iter().partition(|s| {
        s.sha256
            .as_deref()
            .is_some_and(|h| fs::symlink_metadata(entry(cache, h)).is_ok_and(|m| m.is_file()))
    })
}

/// The `__pycache__` directory of `src` inside `rootfs`, reached from the rootfs without
/// following symlinks (the tree was a builder sandbox's); created when `create`.
fn pycache_dir(rootfs: &Path, src: &Source, create: bool) -> io::Result<PathBuf> {
    let parent = src.rel.parent().unwrap_or(Path::new(""));
    let want = if create {
        tree::Want::Create
    } else {
        tree::Want::Existing
    };
    tree::dir_within(rootfs, &parent.join("__pycache__").to_string_lossy(), want)
}

/// Links the cached `.pyc` of each of `hits` into place (after the tree was handed back
/// to root); returns how many it linked.
pub fn link_cached(rootfs: &Path, cache: &Path, hits: &[Source], tag: &str) -> io::Result<usize> {
    let mut linked = 0;
    for s in hits {
        let Some(h) = &s.sha256 else { continue };
        let dir = pycache_dir(rootfs, s, true)?;
        match fs::hard_link(entry(cache, h), dir.join(pyc_name(&s.rel, tag))) {
            Ok(()) => linked += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(linked)
}

/// Keeps the `.pyc` files compiled for `sources` (after they were handed back to root):
/// hard links in the cache. Only regular files owned by root, read-only to others, and
/// reached from the rootfs without symlinks are kept.
pub fn keep(rootfs: &Path, cache: &Path, sources: &[Source], tag: &str) -> io::Result<usize> {
    let mut kept = 0;
    for s in sources {
        let Some(h) = &s.sha256 else { continue };
        let Ok(dir) = pycache_dir(rootfs, s, false) else {
            continue;
        };
        let pyc = dir.join(pyc_name(&s.rel, tag));
        if !fs::symlink_metadata(&pyc)
            .is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0)
        {
            continue;
        }
        fs::create_dir_all(cache)?;
        tree::dir_within(cache, &h[..2], tree::Want::Create)?;
        match fs::hard_link(&pyc, entry(cache, h)) {
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
        let r = root.path();
        let site = r.join("site");
        let cache_root = r.join("cache");
        let cache = cache_root.join("a70d0d0a");
        fs::create_dir_all(site.join("pkg/__pycache__")).unwrap();
        fs::write(site.join("pkg/__init__.py"), "x = 1\n").unwrap();
        fs::write(site.join("pkg/done.py"), "y = 2\n").unwrap();
        fs::write(site.join("pkg/__pycache__/done.cpython-311.pyc"), "pyc").unwrap();
        fs::write(site.join("pkg/data.txt"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", site.join("pkg/link.py")).unwrap();
        let found = uncompiled(r, std::slice::from_ref(&site), "cpython-311", true).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rel, Path::new("site/pkg/__init__.py"));
        let sha = hex::encode(Sha256::digest(b"x = 1\n"));
        assert_eq!(found[0].sha256.as_deref(), Some(sha.as_str()));
        // Not hashed when there is no cache to use.
        let unhashed = uncompiled(r, std::slice::from_ref(&site), "cpython-311", false).unwrap();
        assert!(unhashed[0].sha256.is_none());
        // Nothing cached yet: all to compile.
        let (hits, todo) = split_cached(&cache, found);
        assert!(hits.is_empty());
        // "Compiled" (the test only keeps files root owns, read-only to others).
        let pyc = site.join("pkg/__pycache__/__init__.cpython-311.pyc");
        fs::write(&pyc, "compiled").unwrap();
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        assert_eq!(keep(r, &cache, &todo, "cpython-311").unwrap(), 1);
        // Another install of the same source gets it linked.
        let other = r.join("other");
        fs::create_dir_all(other.join("pkg")).unwrap();
        fs::write(other.join("pkg/__init__.py"), "x = 1\n").unwrap();
        let found = uncompiled(r, std::slice::from_ref(&other), "cpython-311", true).unwrap();
        let (hits, todo) = split_cached(&cache, found);
        assert_eq!((hits.len(), todo.len()), (1, 0));
        assert_eq!(link_cached(r, &cache, &hits, "cpython-311").unwrap(), 1);
        let linked = other.join("pkg/__pycache__/__init__.cpython-311.pyc");
        assert_eq!(fs::read_to_string(&linked).unwrap(), "compiled");
        // Linked twice: not pruned; once both snapshots are gone, it is.
        assert_eq!(prune(&cache_root).unwrap(), 0);
        fs::remove_file(&linked).unwrap();
        fs::remove_file(&pyc).unwrap();
        assert_eq!(prune(&cache_root).unwrap(), 1);
    }

    /// The tree was a builder sandbox's: a package directory turned into a symlink (to a
    /// host directory) after the walk is never followed by `keep` or `link_cached`.
    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("site/pkg")).unwrap();
        fs::write(r.join("site/pkg/m.py"), "z = 3\n").unwrap();
        let found = uncompiled(r, &[r.join("site")], "cpython-311", true).unwrap();
        fs::create_dir_all(outside.path().join("__pycache__")).unwrap();
        fs::write(outside.path().join("__pycache__/m.cpython-311.pyc"), "host").unwrap();
        fs::remove_dir_all(r.join("site/pkg")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("site/pkg")).unwrap();
        let cache = r.join("cache");
        assert_eq!(keep(r, &cache, &found, "cpython-311").unwrap(), 0);
        assert!(!cache.exists());
        assert!(link_cached(r, &cache, &found, "cpython-311").is_err());
    }

    #[test]
    fn pyc_names_keep_the_raw_bytes_of_the_source_name() {
        use std::os::unix::ffi::OsStrExt;
        let py = Path::new(std::ffi::OsStr::from_bytes(b"d/x\xff.py"));
        assert_eq!(
            pyc_path(py, "cpython-311").as_os_str().as_bytes(),
            b"d/__pycache__/x\xff.cpython-311.pyc"
        );
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
