//! Installed distributions, kept across job-type builds (the distribution store).
//!
//! uv in the builder sandbox has to copy every file out of its cache: it cannot hard-link
//! across the sandbox's bind mounts, and under `protected_hardlinks` a link it made could
//! only be to an inode it may write, so a later build could rewrite an earlier snapshot.
//! Copying pandas and numpy is most of a warm build (docs/benchmarks.md, rounds 12–14).
//!
//! So the host keeps what a build installed: after the build, once every file of the
//! snapshot is the host's (root-owned, read-only to everybody else), each distribution uv
//! installed is recorded here as hard links of its files (its `RECORD`, plus the `.pyc` of
//! each source), under `<name>==<version>`. A later build asks uv first what a fresh install
//! would install (`--dry-run`, in the builder sandbox, with the same resolution as always);
//! the host hard-links each planned distribution the store has into the staging rootfs; uv
//! then finds those installed and installs the rest. Nothing a builder sandbox can write is
//! shared: the linked files stay the host's, the sandbox may only unlink them.
//!
//! Trust: exactly the bytecode cache's ([`crate::pyc`]): job-type builds (the operator's
//! trust domain) record and use it, per-request builds do neither. `RECORD` is written by
//! the install (and a requirement's build code), so every path in it is checked: relative,
//! inside the Python install directories of the image, reached without symlinks, a regular
//! file the host owns. A distribution with one path that fails is not recorded at all.
//! The store is scoped by base image digest, interpreter and uv version.
//! `gc` removes entries no snapshot links any more.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// The store's directory under the snapshot store.
pub const STORE_DIR: &str = "dist-store";

/// A `RECORD` larger than this is not read (pandas' is about 300 KB).
const MAX_RECORD: u64 = 16 << 20;

/// A distribution as uv names it in a plan: normalized name (PEP 503) and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dist {
    pub name: String,
    pub version: String,
}

impl Dist {
    /// `name` normalized; `None` unless both parts are plain (they name a directory).
    pub fn new(name: &str, version: &str) -> Option<Dist> {
        let name = normalize(name);
        let plain = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
        };
        (plain(&name, b"") && plain(version, b"+!")).then(|| Dist {
            name,
            version: version.to_string(),
        })
    }

    fn entry_name(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=={}", self.name, self.version)
    }
}

/// PEP 503: lower case, runs of `-`, `_` and `.` as one `-`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// What uv's `pip install --dry-run` would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The distributions it would install (its ` + name==version` lines).
    pub dists: Vec<Dist>,
    /// False when it would also do what `dists` does not say: install a direct reference
    /// (` + name @ url`, nothing to key it by), or uninstall or reinstall (` - `, ` ~ `).
    pub complete: bool,
}

/// uv's `--dry-run` output read: each change is a line ` <sign> <what>`.
pub fn planned(uv_output: &str) -> Plan {
    let mut plan = Plan {
        dists: Vec::new(),
        complete: true,
    };
    for l in uv_output.lines() {
        let b = l.as_bytes();
        if b.len() < 4 || b[0] != b' ' || b[1] == b' ' || b[2] != b' ' {
            continue;
        }
        let dist = l
            .strip_prefix(" + ")
            .and_then(|x| x.trim().split_once("=="))
            .and_then(|(n, v)| Dist::new(n, v));
        match dist {
            Some(d) => plan.dists.push(d),
            None => plan.complete = false,
        }
    }
    plan.dists.sort();
    plan.dists.dedup();
    plan
}

/// The store of one base image, interpreter and uv version.
#[derive(Debug, Clone)]
pub struct DistStore {
    dir: PathBuf,
}

impl DistStore {
    /// `<snapshots>/dist-store/<sha256 of base digest, magic number, uv version>`.
    pub fn new(snapshots: &Path, base_digest: &str, magic: &str, uv_version: &str) -> DistStore {
        let mut h = Sha256::new();
        for part in [base_digest, magic, uv_version] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        DistStore {
            dir: snapshots
                .join(STORE_DIR)
                .join(&hex::encode(h.finalize())[..32]),
        }
    }

    fn entry(&self, d: &Dist) -> PathBuf {
        self.dir.join(d.entry_name())
    }

    /// Hard-links each of `wanted` the store has into `rootfs`; returns those linked. A
    /// distribution with any of its paths already present in `rootfs`, or in `below` (the
    /// base a layer goes over), or unusable, is left to uv, with whatever was linked of it
    /// removed again. New directories are the host's (mode 0755): give the install
    /// directories to the sandbox user afterwards.
    pub fn populate(
        &self,
        rootfs: &Path,
        below: Option<&Path>,
        install_dirs: &[String],
        wanted: &[Dist],
    ) -> Vec<Linked> {
        let mut linked = Vec::new();
        // Parents known to be real directories of `rootfs` (checked or made by this call;
        // nothing else changes the tree meanwhile): each is checked once, not once per
        // file below it (thousands of files, a dozen components each).
        let mut known: HashSet<PathBuf> = HashSet::new();
        for d in wanted {
            let entry = self.entry(d);
            let Some(paths) = manifest(&entry, install_dirs) else {
                continue;
            };
            let mut done = Linked {
                dist: d.clone(),
                files: Vec::new(),
                dirs: Vec::new(),
            };
            let ok = paths.iter().all(|rel| {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let checked = match known.contains(parent) {
                    true => Ok(()),
                    false => crate::tree::dir_within_noting(
                        rootfs,
                        parent,
                        crate::tree::Want::Create,
                        &mut done.dirs,
                    )
                    .map(|_| {
                        known.extend(parent.ancestors().map(Path::to_path_buf));
                    }),
                };
                let shadowed = below.is_some_and(|b| fs::symlink_metadata(b.join(rel)).is_ok());
                let made = checked
                    .and_then(|_| match shadowed {
                        true => Err(io::ErrorKind::AlreadyExists.into()),
                        false => Ok(()),
                    })
                    .and_then(|_| fs::hard_link(entry.join("tree").join(rel), rootfs.join(rel)));
                if made.is_ok() {
                    done.files.push(rootfs.join(rel));
                }
                made.is_ok()
            });
            if ok {
                linked.push(done);
            } else {
                // Its directories go again (when empty): no longer known.
                for dir in &done.dirs {
                    if let Ok(rel) = dir.strip_prefix(rootfs) {
                        known.remove(rel);
                    }
                }
                done.undo();
            }
        }
        linked
    }

    /// `populate` as far as `rootfs` already has some of `plan` linked (`have`): what is
    /// linked but not planned is removed again, what is planned but not linked is linked.
    pub fn reconcile(
        &self,
        rootfs: &Path,
        below: Option<&Path>,
        install_dirs: &[String],
        have: Vec<Linked>,
        plan: &[Dist],
    ) -> Vec<Linked> {
        let (mut keep, drop): (Vec<Linked>, Vec<Linked>) =
            have.into_iter().partition(|l| plan.contains(&l.dist));
        for l in drop {
            l.undo();
        }
        let missing: Vec<Dist> = plan
            .iter()
            .filter(|d| !keep.iter().any(|l| &l.dist == *d))
            .cloned()
            .collect();
        keep.extend(self.populate(rootfs, below, install_dirs, &missing));
        keep
    }

    fn plan_file(&self, key: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        self.dir.join("plans").join(&h[..32])
    }

    /// What the last build with `key` (its requirements and index) planned: the guess a
    /// build links ahead of its own plan.
    pub fn last_plan(&self, key: &str) -> Vec<Dist> {
        fs::read_to_string(self.plan_file(key))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("=="))
            .filter_map(|(n, v)| Dist::new(n, v))
            .collect()
    }

    /// Keeps `plan` as the last plan of `key`. Only a guess for the next build, so not
    /// flushed (a lost or stale one costs links made and removed again); failures are
    /// ignored.
    pub fn save_plan(&self, key: &str, plan: &[Dist]) {
        let text: String = plan.iter().map(|d| format!("{d}\n")).collect();
        let p = self.plan_file(key);
        if fs::read_to_string(&p).is_ok_and(|t| t == text) {
            return;
        }
        let tmp = p.with_extension(format!("tmp-{}.{}", std::process::id(), next()));
        let saved = fs::create_dir_all(self.dir.join("plans"))
            .and_then(|_| fs::write(&tmp, text))
            .and_then(|_| fs::rename(&tmp, &p));
        if saved.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Records each distribution of `which` installed in `site_dirs` (rootfs-relative), with
    /// its files in `install_dirs` and the `.pyc` (`tag`) of its sources, unless the store
    /// has it. Files must be regular and owned by `uid` (the host, once it has taken the
    /// tree back). Returns how many were recorded.
    pub fn record(
        &self,
        rootfs: &Path,
        site_dirs: &[String],
        install_dirs: &[String],
        which: &[Dist],
        tag: &str,
        uid: u32,
    ) -> io::Result<usize> {
        let mut recorded = 0;
        for site in site_dirs {
            let site_rel = PathBuf::from(site.trim_start_matches('/'));
            let Ok(rd) = fs::read_dir(rootfs.join(&site_rel)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((n, v)) = name
                    .strip_suffix(".dist-info")
                    .and_then(|s| s.rsplit_once('-'))
                else {
                    continue;
                };
                let Some(d) = Dist::new(n, v).filter(|d| which.contains(d)) else {
                    continue;
                };
                if fs::symlink_metadata(self.entry(&d)).is_ok() {
                    continue;
                }
                let info = site_rel.join(&name);
                if let Some(files) = dist_files(rootfs, &site_rel, &info, install_dirs, tag, uid) {
                    recorded += usize::from(self.store(rootfs, &d, &files)?);
                }
            }
        }
        Ok(recorded)
    }

    /// Writes the entry of `d` (hard links of `files` under `rootfs`) whole, or not at all.
    fn store(&self, rootfs: &Path, d: &Dist, files: &BTreeSet<PathBuf>) -> io::Result<bool> {
        let n = next();
        fs::create_dir_all(&self.dir)?;
        // Unique per build, also between builds of one process (a server's).
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}.{n}",
            d.entry_name(),
            std::process::id()
        ));
        crate::tree::remove(&tmp)?;
        let res = (|| {
            let mut manifest = Vec::new();
            for rel in files {
                let to = tmp.join("tree").join(rel);
                if let Some(p) = to.parent() {
                    fs::create_dir_all(p)?;
                }
                fs::hard_link(rootfs.join(rel), &to)?;
                manifest.extend_from_slice(rel.as_os_str().as_encoded_bytes());
                manifest.push(0);
            }
            fs::write(tmp.join("manifest"), manifest)?;
            fs::rename(&tmp, self.entry(d))
        })();
        match res {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = crate::tree::remove(&tmp);
                // Recorded by a concurrent build meanwhile: theirs will do.
                if fs::symlink_metadata(self.entry(d)).is_ok() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// A number no other temporary name of this process has.
fn next() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A distribution linked into a rootfs by [`DistStore::populate`]: what to remove to take
/// it out again.
#[derive(Debug)]
pub struct Linked {
    pub dist: Dist,
    /// The links made (absolute).
    files: Vec<PathBuf>,
    /// The directories made for them (absolute), parents first.
    dirs: Vec<PathBuf>,
}

impl Linked {
    /// Removes the links and the directories made for them (when empty again).
    fn undo(self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// The checked paths of a store entry's manifest; `None` when it has none or any is unusable.
fn manifest(entry: &Path, install_dirs: &[String]) -> Option<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let raw = fs::read(entry.join("manifest")).ok()?;
    let paths: Vec<PathBuf> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect();
    let usable = !paths.is_empty()
        && paths
            .iter()
            .all(|rel| plain_rel(rel) && within(rel, install_dirs));
    usable.then_some(paths)
}

/// The files of the distribution whose `.dist-info` is `info` (rootfs-relative), from its
/// `RECORD`, checked; `None` when any path is unusable (the distribution is not recorded).
fn dist_files(
    rootfs: &Path,
    site: &Path,
    info: &Path,
    install_dirs: &[String],
    tag: &str,
    uid: u32,
) -> Option<BTreeSet<PathBuf>> {
    let record = rootfs.join(info).join("RECORD");
    let md = fs::symlink_metadata(&record).ok()?;
    if !md.is_file() || md.len() > MAX_RECORD {
        return None;
    }
    let text = fs::read_to_string(&record).ok()?;
    let mut files = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let raw = record_path(line)?;
        let rel = resolve(site, Path::new(&raw))?;
        if !within(&rel, install_dirs) || !owned_file(rootfs, &rel, uid) {
            return None;
        }
        if rel.extension().is_some_and(|x| x == "py") {
            let pyc = crate::pyc::pyc_path(&rel, tag);
            if owned_file(rootfs, &pyc, uid) {
                files.insert(pyc);
            }
        }
        files.insert(rel);
    }
    (!files.is_empty()).then_some(files)
}

/// The path field of a `RECORD` line (CSV: quoted when it holds a comma or quote).
fn record_path(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    out.push('"');
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        line.split(',').next().map(str::to_string)
    }
}

/// `site/p` with `.` and `..` resolved by name (never through the file system); `None` for
/// an absolute `p` or one that climbs out of the rootfs.
fn resolve(site: &Path, p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in site.components().chain(p.components()) {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (out.components().next().is_some()).then_some(out)
}

/// Only plain components (what [`resolve`] yields).
fn plain_rel(p: &Path) -> bool {
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Inside one of the install directories (absolute paths of the image's Python).
fn within(rel: &Path, install_dirs: &[String]) -> bool {
    install_dirs.iter().any(|d| {
        let d = Path::new(d.trim_start_matches('/'));
        !d.as_os_str().is_empty() && rel.starts_with(d) && rel != d
    })
}

/// `rootfs/rel` is a regular file owned by `uid`, writable by nobody else and without
/// set-id bits, reached through real directories only. (A group- or world-writable file
/// could be changed by a later build's sandbox through the directories it is given, and
/// with it every snapshot that links it.)
fn owned_file(rootfs: &Path, rel: &Path, uid: u32) -> bool {
    let mut p = rootfs.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        p.push(c);
        let Ok(md) = fs::symlink_metadata(&p) else {
            return false;
        };
        let ok = if i + 1 == n {
            md.is_file() && md.uid() == uid && md.mode() & 0o6022 == 0
        } else {
            md.is_dir()
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Removes entries no snapshot links any more (every file's link count is 1), and what a
/// dead recording left (`.tmp-*`); returns how many entries went.
pub fn prune(store_root: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let Ok(scopes) = fs::read_dir(store_root) else {
        return Ok(0);
    };
    for s in scopes.flatten() {
        if !s.file_type()?.is_dir() {
            continue;
        }
        for e in fs::read_dir(s.path())?.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.contains("==") && !name.starts_with(".tmp-") {
                continue; // `plans`
            }
            let stale = name.starts_with(".tmp-") || {
                let mut used = false;
                // `.pyc` files are linked by the bytecode cache as well: only the others
                // tell whether a snapshot still has the distribution.
                crate::tree::walk(&p.join("tree"), |f, path| {
                    let md = f.metadata()?;
                    let pyc = path.extension().is_some_and(|x| x == "pyc");
                    used |= md.is_file() && !pyc && md.nlink() > 1;
                    Ok(!used)
                })?;
                !used
            };
            if stale {
                crate::tree::remove(&p)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_plan_is_read_from_uvs_lines() {
        let out = "Using Python 3.11.2 environment at: /usr/local\nResolved 6 packages in 172ms\n\
                   Would download 2 packages\nWould install 3 packages\n + numpy==2.1.3\n \
                   + Python_Dateutil==2.9.0.post0\n + local @ file:///x\n + ../evil==1\n - six==1.16.0\n";
        let plan = planned(out);
        assert_eq!(
            plan.dists,
            vec![
                Dist::new("numpy", "2.1.3").unwrap(),
                Dist::new("python-dateutil", "2.9.0.post0").unwrap()
            ]
        );
        assert_eq!(plan.dists[1].to_string(), "python-dateutil==2.9.0.post0");
        assert!(
            !plan.complete,
            "a direct reference and an uninstall are not in it"
        );
        let only = "Resolved 2 packages in 9ms\nWould install 2 packages\n + numpy==2.1.3\n + six==1.17.0\n";
        assert_eq!(
            planned(only),
            Plan {
                dists: planned(only).dists,
                complete: true
            }
        );
        assert_eq!(planned(only).dists.len(), 2);
        assert_eq!(
            planned("Would make no changes\n"),
            Plan {
                dists: vec![],
                complete: true
            }
        );
        assert!(!planned(" ~ numpy==2.1.3\n").complete);
        assert!(Dist::new("a", "1/../2").is_none());
        assert!(Dist::new(".hidden", "1").is_none());
    }

    #[test]
    fn record_paths_resolve_by_name_and_never_leave_the_rootfs() {
        let site = Path::new("usr/local/lib/python3.11/site-packages");
        assert_eq!(
            resolve(site, Path::new("../../../bin/f2py")).unwrap(),
            PathBuf::from("usr/local/bin/f2py")
        );
        assert!(resolve(site, Path::new("../../../../../../etc/passwd")).is_none());
        assert!(resolve(site, Path::new("/etc/passwd")).is_none());
        assert_eq!(
            record_path("\"a,\"\"b\"\".py\",sha256=x,1").unwrap(),
            "a,\"b\".py"
        );
        assert_eq!(record_path("pkg/x.py,sha256=x,1").unwrap(), "pkg/x.py");
        let dirs = [
            "/usr/local/lib/python3.11/site-packages".to_string(),
            "/usr/local/bin".into(),
        ];
        assert!(within(Path::new("usr/local/bin/f2py"), &dirs));
        assert!(!within(Path::new("usr/local/bin"), &dirs));
        assert!(!within(Path::new("usr/local/etc/x"), &dirs));
    }

    const SITE: &str = "/usr/lib/py/site";
    const BIN: &str = "/usr/bin";

    /// A rootfs with `good` (a module, its `.pyc`, a script) and `bad`, whose RECORD has
    /// `bad_path`.
    fn tree(bad_path: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let site = r.join(SITE.trim_start_matches('/'));
        fs::create_dir_all(site.join("good/__pycache__")).unwrap();
        fs::create_dir_all(site.join("good-1.0.dist-info")).unwrap();
        fs::create_dir_all(site.join("bad-2.0.dist-info")).unwrap();
        fs::create_dir_all(site.join("bad")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::write(site.join("good/__init__.py"), "X = 1\n").unwrap();
        fs::write(site.join("good/__pycache__/__init__.tag.pyc"), "pyc").unwrap();
        fs::write(r.join("usr/bin/good"), "#!python\n").unwrap();
        fs::write(
            site.join("good-1.0.dist-info/RECORD"),
            "good/__init__.py,sha256=a,6\n../../../bin/good,sha256=b,9\ngood-1.0.dist-info/RECORD,,\n",
        )
        .unwrap();
        fs::write(site.join("bad/__init__.py"), "").unwrap();
        fs::write(
            site.join("bad-2.0.dist-info/RECORD"),
            format!("bad/__init__.py,,\n{bad_path},,\nbad-2.0.dist-info/RECORD,,\n"),
        )
        .unwrap();
        t
    }

    /// A store under `dir`, the install directories of [`tree`], and its two distributions.
    fn store_in(dir: &Path, digest: &str) -> (DistStore, [String; 2], [Dist; 2]) {
        let store = DistStore::new(dir, digest, "a70d", "0.13");
        let dists = [
            Dist::new("good", "1.0").unwrap(),
            Dist::new("bad", "2.0").unwrap(),
        ];
        (store, [SITE.to_string(), BIN.to_string()], dists)
    }

    fn uid() -> u32 {
        fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn distributions_are_recorded_whole_and_populated_as_links() {
        let t = tree("bad/__init__.py");
        let (r, store_dir) = (t.path(), tempfile::tempdir().unwrap());
        let (store, dirs, both) = store_in(store_dir.path(), "sha256:b");
        assert_eq!(
            store
                .record(r, &[SITE.into()], &dirs, &both, "tag", uid())
                .unwrap(),
            2
        );
        // Recorded once.
        assert_eq!(
            store
                .record(r, &[SITE.into()], &dirs, &both, "tag", uid())
                .unwrap(),
            0
        );

        let fresh = tempfile::tempdir().unwrap();
        let f = fresh.path();
        let got = store.populate(f, None, &dirs, &both[..1]);
        assert_eq!(
            got.iter().map(|l| l.dist.clone()).collect::<Vec<_>>(),
            both[..1]
        );
        for rel in [
            "usr/lib/py/site/good/__init__.py",
            "usr/lib/py/site/good/__pycache__/__init__.tag.pyc",
            "usr/bin/good",
            "usr/lib/py/site/good-1.0.dist-info/RECORD",
        ] {
            let (a, b) = (
                fs::metadata(r.join(rel)).unwrap(),
                fs::metadata(f.join(rel)).unwrap(),
            );
            assert_eq!(a.ino(), b.ino(), "{rel} is a link of the recorded file");
        }
        // Something of it already there: left to uv, nothing half linked.
        let again = tempfile::tempdir().unwrap();
        fs::create_dir_all(again.path().join("usr/bin")).unwrap();
        fs::write(again.path().join("usr/bin/good"), "mine").unwrap();
        assert!(store
            .populate(again.path(), None, &dirs, &both[..1])
            .is_empty());
        assert!(!again
            .path()
            .join("usr/lib/py/site/good/__init__.py")
            .exists());
        assert_eq!(
            fs::read_to_string(again.path().join("usr/bin/good")).unwrap(),
            "mine"
        );

        // A plan without it: taken out again, with the directories made for it.
        assert!(store.reconcile(f, None, &dirs, got, &[]).is_empty());
        assert!(!f.join("usr").exists(), "left behind in the rootfs");
        let again_got = store.reconcile(f, None, &dirs, Vec::new(), &both[..1]);
        assert_eq!(again_got.len(), 1);
        assert!(f.join("usr/bin/good").is_file());
        // The last plan is kept per key.
        store.save_plan("reqs", &both);
        assert_eq!(store.last_plan("reqs"), both);
        assert!(store.last_plan("other").is_empty());

        // Unlinked from every snapshot: pruned.
        assert_eq!(prune(&store_dir.path().join(STORE_DIR)).unwrap(), 0);
        drop((t, fresh));
        assert_eq!(prune(&store_dir.path().join(STORE_DIR)).unwrap(), 2);
    }

    /// A distribution left to uv takes the directories it made with it; a later one that
    /// links into such a directory makes it again (populate remembers checked directories).
    #[test]
    fn a_distribution_left_out_does_not_take_anothers_directories() {
        let t = tree("../../../bin/bad");
        let r = t.path();
        fs::write(r.join("usr/bin/bad"), "#!python\n").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let (store, dirs, both) = store_in(store_dir.path(), "sha256:c");
        assert_eq!(
            store
                .record(r, &[SITE.into()], &dirs, &both, "tag", uid())
                .unwrap(),
            2
        );
        // `good`'s RECORD is there already: it makes /usr/bin, fails, and takes it away.
        let target = tempfile::tempdir().unwrap();
        let info = target.path().join("usr/lib/py/site/good-1.0.dist-info");
        fs::create_dir_all(&info).unwrap();
        fs::write(info.join("RECORD"), "mine").unwrap();
        let got = store.populate(target.path(), None, &dirs, &both);
        assert_eq!(
            got.iter().map(|l| l.dist.clone()).collect::<Vec<_>>(),
            both[1..]
        );
        assert!(target.path().join("usr/bin/bad").is_file());
        assert!(!target.path().join("usr/bin/good").exists());
        assert!(!target.path().join("usr/lib/py/site/good").exists());
        assert_eq!(fs::read_to_string(info.join("RECORD")).unwrap(), "mine");
    }

    /// A RECORD is written by the install and a requirement's build code: a path out of the
    /// install directories, through a symlink, or to a file the host does not own keeps the
    /// whole distribution out of the store.
    #[test]
    fn a_hostile_record_keeps_its_distribution_out() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        for bad in [
            "../../../../../etc/passwd".to_string(),
            "/etc/passwd".into(),
            "../../../../usr/x".into(), // inside the rootfs, outside the install dirs
            "link/secret".into(),
            "bad/missing.py".into(),
        ] {
            let t = tree(&bad);
            let r = t.path();
            fs::write(r.join("usr/x"), "x").unwrap();
            std::os::unix::fs::symlink(outside.path(), r.join("usr/lib/py/site/link")).unwrap();
            let store_dir = tempfile::tempdir().unwrap();
            let (store, dirs, which) = store_in(store_dir.path(), "sha256:b");
            assert_eq!(
                store
                    .record(r, &[SITE.into()], &dirs, &which, "tag", uid())
                    .unwrap(),
                1,
                "{bad}"
            );
            assert!(
                fs::symlink_metadata(store.entry(&which[1])).is_err(),
                "{bad}"
            );
            // Writable by others: out as well.
            let f = r.join("usr/lib/py/site/good/__init__.py");
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
            let writable = DistStore::new(store_dir.path(), "sha256:w", "a70d", "0.13");
            assert_eq!(
                writable
                    .record(r, &[SITE.into()], &dirs, &which[..1], "tag", uid())
                    .unwrap(),
                0
            );
            fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
            // Not the host's file (another owner): out as well.
            if uid() == 0 {
                let f = r.join("usr/lib/py/site/good/__init__.py");
                std::os::unix::fs::chown(&f, Some(12345), None).unwrap();
                let other = DistStore::new(store_dir.path(), "sha256:c", "a70d", "0.13");
                assert_eq!(
                    other
                        .record(r, &[SITE.into()], &dirs, &which[..1], "tag", 0)
                        .unwrap(),
                    0
                );
            }
        }
    }
}
