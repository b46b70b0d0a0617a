//! One snapshot build: a layer over the base rootfs (an overlay in the builder sandbox),
//! the Python install directories writable there, uv (and `compileall` for shared code) run
//! in it, the files taken back, and the snapshot's metadata written.
//!
//! The snapshot is its layer, not a copy of its base: what the build added and changed
//! (removals as overlayfs whiteouts), mounted over the base image at run time. The layer
//! holds, besides that, the directories of the base under the install directories (the
//! overlay writes only where the layer has the directory, owned by an id of the sandbox's
//! user namespace; a directory owned by an unmapped id cannot be copied up), and those
//! that stay empty are removed again at the end.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dists::{self, DistStore};
use crate::requirements::valid_environment;
use crate::snapshot::{
    io_err, BaseImage, BindMount, BuildHost, CacheScope, InstallRun, JobTypeSpec, Snapshot,
    SnapshotError, SnapshotStore, BUILD_DIR, SHARED_CODE_DIR,
};
use crate::{pyc, tree};

impl SnapshotStore {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_into(
        &self,
        spec: &JobTypeSpec,
        host: &dyn BuildHost,
        base: &BaseImage,
        reference: &str,
        uv: &Path,
        uv_version: &str,
        key: &str,
        staging: &Path,
        cache_scope: CacheScope,
    ) -> Result<(), SnapshotError> {
        host.step(&format!(
            "building {} on {reference}",
            Snapshot::image_name(&spec.name)
        ));
        let t0 = std::time::Instant::now();
        fs::create_dir_all(staging).map_err(io_err("create", staging))?;
        let rootfs = staging.join("rootfs");
        let owner = host.owner();
        let (suid, _) = owner.ids();
        let euid = nix_euid();

        // A layer over the base where the store's file system can keep an overlay's opaque
        // directories (user xattrs) and the kernel mounts overlays in user namespaces; else
        // (or when the store is told so) a whole tree: a hard-link clone of the base.
        let layered = !self.whole_trees && crate::layers_supported(staging);
        let mut env = base.env.clone();
        let mut reqs = spec.requirements.clone();
        reqs.sort();
        reqs.dedup();

        // Where the image's Python installs, once per build (when anything runs in it).
        let uses_uv = !reqs.is_empty() || !spec.shared_code.is_empty();
        let paths = match uses_uv {
            true => Some(base_paths(host, base)?),
            false => None,
        };
        // The distribution store (crate::dists), for job types, and only where the sandbox
        // user is not the store's own (it could write the files it was given otherwise).
        // uv plans the install on the base image while the layer is made and what the last
        // build of these requirements planned is linked in; then the layer is made to match
        // the plan.
        let dists = match &paths {
            Some(p) if cache_scope == CacheScope::Shared && suid != euid && !reqs.is_empty() => {
                let store = DistStore::new(&self.root, &base.digest, &p.magic, uv_version);
                Some((store, install_dirs(p), p))
            }
            _ => None,
        };
        // The shared caches stay while this build uses them (`clear_caches` waits); uv's
        // cache is shared by job-type builds, or this build's own (CacheScope).
        let _caches = match cache_scope {
            CacheScope::Shared if uses_uv => Some(self.hold_caches()?),
            _ => None,
        };
        let cache = match cache_scope {
            CacheScope::Shared => self.root.join("uv-cache"),
            CacheScope::Private => staging.join("uv-cache"),
        };
        if uses_uv {
            fs::create_dir_all(&cache).map_err(io_err("create", &cache))?;
            owner.hand_over(&cache).map_err(io_err("chown", &cache))?;
        }
        // The layer, with the base's directories where the install writes (`mirrored`).
        let layer = || -> Result<Vec<PathBuf>, SnapshotError> {
            if !layered {
                tree::clone_tree(&base.rootfs, &rootfs)
                    .map_err(io_err("clone base rootfs", &rootfs))?;
                return Ok(Vec::new());
            }
            let md = fs::symlink_metadata(&base.rootfs).map_err(io_err("read", &base.rootfs))?;
            fs::create_dir(&rootfs).map_err(io_err("create", &rootfs))?;
            fs::set_permissions(&rootfs, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(io_err("create", &rootfs))?;
            let mut mirrored = Vec::new();
            for w in paths.as_ref().map(install_dirs).unwrap_or_default() {
                tree::mirror_dirs(&base.rootfs, &rootfs, &w, &mut mirrored).map_err(|e| {
                    SnapshotError::Invalid(format!("python install directory {w}: {e}"))
                })?;
            }
            Ok(mirrored)
        };
        let below = layered.then_some(base.rootfs.as_path());
        let (mut linked, mut plan) = (Vec::new(), None);
        let mirrored = match &dists {
            None => layer()?,
            Some((store, dirs, paths)) => {
                let index = host.find_links().map(|p| p.display().to_string());
                let plan_key = format!("{reqs:?} {index:?}");
                let guess = store.last_plan(&plan_key);
                let (made, planned) = std::thread::scope(|sc| {
                    let ahead = sc.spawn(|| {
                        let mirrored = layer()?;
                        crate::trace(t0, "build: layer made");
                        let linked = store.populate(&rootfs, below, dirs, &guess);
                        crate::trace(t0, "build: last plan linked");
                        Ok((mirrored, linked))
                    });
                    let planned = plan_install(spec, host, base, uv, &cache, paths, &reqs, staging);
                    crate::trace(t0, "build: planned");
                    let made = ahead
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p));
                    (made, planned)
                });
                let (mirrored, ahead) = made?;
                let planned = planned?;
                linked = store.reconcile(&rootfs, below, dirs, ahead, &planned.dists);
                store.save_plan(&plan_key, &planned.dists);
                plan = Some(planned);
                mirrored
            }
        };
        crate::trace(t0, "build: layer made, distributions linked");

        // Every path below the staging rootfs that the host itself creates, writes or
        // chowns is checked to be a real directory of the image (`dir_within`): an image
        // with e.g. `/app` or the site-packages directory as a symlink to a host path
        // must not lead these operations out of the rootfs.
        let shared_dir = rootfs.join(SHARED_CODE_DIR.trim_start_matches('/'));
        if !spec.shared_code.is_empty() {
            let app = Path::new(SHARED_CODE_DIR)
                .parent()
                .unwrap_or(Path::new("/"));
            match layered {
                true => tree::mirror_chain(&base.rootfs, &rootfs, &app.to_string_lossy()),
                false => tree::dir_within(&rootfs, &app.to_string_lossy(), tree::Want::Create),
            }
            .map_err(io_err("create", &shared_dir))?;
            // Whatever the image has there is hidden (an opaque directory of the layer),
            // never written through.
            tree::remove(&shared_dir).map_err(io_err("remove", &shared_dir))?;
            tree::dir_within(&rootfs, SHARED_CODE_DIR, tree::Want::Create)
                .map_err(io_err("create", &shared_dir))?;
            if layered {
                tree::set_opaque(&shared_dir).map_err(io_err("mark opaque", &shared_dir))?;
            }
            for p in &spec.shared_code {
                let to = shared_dir.join(p.file_name().unwrap_or_default());
                tree::copy_file(p, &to).map_err(io_err("copy shared_code", p))?;
            }
            let pp = match env.iter().find(|(k, _)| k == "PYTHONPATH") {
                Some((_, v)) if !v.is_empty() => format!("{SHARED_CODE_DIR}:{v}"),
                _ => SHARED_CODE_DIR.to_string(),
            };
            set_env(&mut env, "PYTHONPATH", &pp);
        }

        // Nothing for uv to do when the store had every distribution of a plan that says
        // all it would do: no install run at all (the linked files have their bytecode).
        let install = !reqs.is_empty()
            && !plan
                .as_ref()
                .is_some_and(|p| p.complete && p.dists.len() == linked.len());
        if !linked.is_empty() {
            host.step(&format!(
                "{} of {} distributions linked from the distribution store",
                linked.len(),
                plan.as_ref().map_or(0, |p| p.dists.len())
            ));
        }
        let runs = paths
            .as_ref()
            .filter(|_| install || !spec.shared_code.is_empty());
        if let Some(paths) = runs {
            let build = rootfs.join(BUILD_DIR.trim_start_matches('/'));
            // Ours alone: an image's own `/tako-build` (a symlink to a host file, say) goes.
            tree::remove(&build).map_err(io_err("remove", &build))?;
            for d in ["cache", "tmp"] {
                fs::create_dir_all(build.join(d)).map_err(io_err("create", &build))?;
            }
            fs::write(build.join("uv"), b"").map_err(io_err("create", &build))?;
            // The scratch dir is this build's.
            let scratch = staging.join("tmp");
            fs::create_dir_all(&scratch).map_err(io_err("create", &scratch))?;
            owner
                .hand_over(&scratch)
                .map_err(io_err("chown", &scratch))?;

            let mut binds = vec![
                bind(uv, "/tako-build/uv", false),
                bind(&cache, "/tako-build/cache", true),
                bind(&scratch, "/tako-build/tmp", true),
            ];
            // Under /tako-build (ours), not at its host path: that could be under a
            // directory the sandbox mounts over (/tmp), or lead through the image's symlinks.
            let mut index = "";
            if let Some(d) = host.find_links() {
                let at = build.join("find-links");
                fs::create_dir(&at).map_err(io_err("create", &at))?;
                binds.push(bind(&d, &format!("{BUILD_DIR}/find-links"), false));
                index = " --find-links /tako-build/find-links --no-index";
            }
            let mut writable = install_dirs(paths);
            if !spec.shared_code.is_empty() {
                writable.push(SHARED_CODE_DIR.to_string());
            }
            let (work, merged) = (staging.join("work"), staging.join("merged"));
            // What the sandbox user may write, and how (after this, the layer is the
            // sandbox user's until it is taken back: nothing of ours is made in it).
            let mut layers = None;
            let mut handed = Vec::new();
            if layered {
                // The layer's directories (and the overlay's work directory) become the
                // sandbox user's: the overlay writes as the sandbox's root, which may only
                // write where the owner is an id of its user namespace. The image's files
                // stay in the base, never written (a change is a copy in the layer). The
                // root of the sandbox is read-only but for the install directories.
                fs::create_dir(&work).map_err(io_err("create", &work))?;
                fs::create_dir(&merged).map_err(io_err("create", &merged))?;
                for d in [&rootfs, &work] {
                    owner.hand_over(d).map_err(io_err("chown", d))?;
                }
                layers = Some(crate::BuildLayers {
                    lower: base.rootfs.clone(),
                    upper: rootfs.clone(),
                    work: work.clone(),
                    writable,
                });
            } else {
                // A whole tree: its install directories (and the shared code's) given to
                // the sandbox user and bound writable over the read-only clone.
                for w in &writable {
                    let host_dir =
                        tree::dir_within(&rootfs, w, tree::Want::Create).map_err(|e| {
                            SnapshotError::Invalid(format!("python install directory {w}: {e}"))
                        })?;
                    if suid == euid {
                        // The sandbox user is the store's own user (no subordinate ids): it
                        // may write every file it owns, so the files it gets writable must
                        // not be the image's (shared with every snapshot on it) but copies.
                        tree::unshare_files(&host_dir).map_err(io_err("copy", &host_dir))?;
                    }
                    owner
                        .hand_over(&host_dir)
                        .map_err(io_err("chown", &host_dir))?;
                    binds.push(bind(&host_dir, w, true));
                    handed.push(host_dir);
                }
            }
            let mut script = String::from("set -e\n");
            if install {
                script.push_str(&format!(
                    "/tako-build/uv pip install --no-config --no-progress --system --break-system-packages --python {}{index} -- \"$@\"\n",
                    paths.executable,
                ));
            }
            if !spec.shared_code.is_empty() {
                script.push_str(&format!(
                    "{} -m compileall -q {SHARED_CODE_DIR}\n",
                    paths.executable
                ));
            }
            let mut argv = vec!["/bin/sh".to_string(), "-c".into(), script, "sh".into()];
            argv.extend(reqs.iter().cloned());
            let mut benv = uv_env(&env, BUILD_DIR);
            set_env(&mut benv, "UV_LINK_MODE", "copy");
            benv.retain(|(k, _)| k != "PYTHONDONTWRITEBYTECODE");
            crate::trace(t0, "build: install directories handed over");
            if install {
                host.step(&format!(
                    "installing {} with uv {uv_version}",
                    reqs.join(" ")
                ));
            }
            let mut run = InstallRun {
                rootfs: match layered {
                    true => merged.clone(),
                    false => rootfs.clone(),
                },
                argv,
                env: benv,
                binds,
                network: install,
                tmp_dirs: vec![],
                layers,
            };
            let out = host.run(&run).map_err(SnapshotError::Sandbox)?;
            if !out.success {
                return Err(build_failed(&spec.name, out));
            }
            crate::trace(t0, "build: uv done");

            // Bytecode: cached (job-type builds) or compiled now (crate::pyc).
            let bytecode_cache = match cache_scope {
                CacheScope::Shared => Some(self.root.join(pyc::CACHE_DIR).join(&paths.magic)),
                CacheScope::Private => None,
            };
            let mut site_dirs = Vec::new();
            for d in [&paths.purelib, &paths.platlib] {
                if let Ok(h) = tree::dir_within(&rootfs, d, tree::Want::Existing) {
                    if !site_dirs.contains(&h) {
                        site_dirs.push(h);
                    }
                }
            }
            let sources = pyc::uncompiled(
                &rootfs,
                &site_dirs,
                &paths.cache_tag,
                bytecode_cache.is_some(),
            )
            .map_err(io_err("list sources", &rootfs))?;
            let found = sources.len();
            // The hits are linked once the tree is root's again (below), so that nothing
            // the compile run needs to write into is root's before it.
            let (hits, todo) = match &bytecode_cache {
                Some(c) => pyc::split_cached(c, sources),
                None => (Vec::new(), sources),
            };
            if !todo.is_empty() {
                host.step(&format!(
                    "byte-compiling {} of {found} installed files ({} from the cache)",
                    todo.len(),
                    found - todo.len()
                ));
                let mut list = Vec::new();
                for s in &todo {
                    let inside = Path::new("/").join(&s.rel);
                    list.extend_from_slice(inside.as_os_str().as_encoded_bytes());
                    list.push(0);
                }
                // The scratch directory was the install sandbox's: a fresh one of ours (an
                // unprivileged server could not write in the old one), so nothing is
                // written through whatever the sandbox left there.
                owner
                    .discard(&scratch)
                    .map_err(io_err("remove", &scratch))?;
                fs::create_dir(&scratch).map_err(io_err("create", &scratch))?;
                let list_path = scratch.join("compile-list");
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&list_path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &list))
                    .map_err(io_err("write", &list_path))?;
                run.argv = vec![
                    paths.executable.clone(),
                    "-I".into(),
                    "-S".into(),
                    "-c".into(),
                    pyc::COMPILE.into(),
                    "/tako-build/tmp/compile-list".into(),
                ];
                run.network = false;
                let out = host.run(&run).map_err(SnapshotError::Sandbox)?;
                if !out.success {
                    return Err(build_failed(&spec.name, out));
                }
            }
            crate::trace(t0, "build: bytecode listed (and compiled)");
            owner
                .discard(&scratch)
                .map_err(io_err("remove", &scratch))?;
            // A build's own cache is removed. The shared one stays the sandbox user's: uv
            // rewrites its lock and index files in place.
            if cache_scope == CacheScope::Private {
                owner.discard(&cache).map_err(io_err("remove", &cache))?;
            }
            if layered {
                // The overlay's work directory holds what its kernel side made as the
                // sandbox's root; the mount point is empty.
                owner.discard(&work).map_err(io_err("remove", &work))?;
                fs::remove_dir(&merged).map_err(io_err("remove", &merged))?;
                owner
                    .take_back(&rootfs)
                    .map_err(io_err("reclaim", &rootfs))?;
            }
            for d in &handed {
                owner.take_back(d).map_err(io_err("reclaim", d))?;
            }
            // Ours again: the mount points of the build's binds go.
            tree::remove(&build).map_err(io_err("remove", &build))?;
            crate::trace(t0, "build: taken back");
            if let Some(c) = &bytecode_cache {
                pyc::link_cached(&rootfs, c, &hits, &paths.cache_tag)
                    .map_err(io_err("link bytecode", c))?;
                pyc::keep(&rootfs, c, &todo, &paths.cache_tag)
                    .map_err(io_err("keep bytecode", c))?;
            }
            crate::trace(t0, "build: bytecode linked");
            if let (Some((store, dirs, _)), Some(plan)) = (&dists, plan.take()) {
                let mut planned = plan.dists;
                planned.retain(|d| !linked.iter().any(|l| &l.dist == d));
                let mut sites: Vec<String> = vec![paths.purelib.clone(), paths.platlib.clone()];
                sites.dedup();
                // A cache: a failure to record costs the next build a copy, not this one.
                if let Err(e) =
                    store.record(&rootfs, &sites, dirs, &planned, &paths.cache_tag, euid)
                {
                    host.step(&format!("distribution store not updated: {e}"));
                }
                crate::trace(t0, "build: distributions recorded");
            }
        }
        // The base's directories that nothing was put in (or taken from) go again.
        tree::prune_mirrored(&mirrored).map_err(io_err("prune", &rootfs))?;
        for (k, v) in valid_environment(&spec.environment) {
            set_env(&mut env, &k, &v);
        }
        let lower = match layered {
            true => vec![base.rootfs.clone()],
            false => Vec::new(),
        };
        let missing = crate::check_layered(&rootfs, &lower);
        if !missing.is_empty() {
            return Err(SnapshotError::Invalid(format!(
                "snapshot rootfs lacks {}",
                missing.join(", ")
            )));
        }
        let snap = Snapshot {
            key: key.to_string(),
            job_type: spec.name.clone(),
            base_reference: reference.to_string(),
            base_digest: base.digest.clone(),
            python_version: spec.python_version.clone(),
            requirements: reqs,
            uv_version: uv_version.to_string(),
            env,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rootfs: PathBuf::new(),
            // Relative to the store when the base is in it (the store can be moved).
            lower: layered.then(|| {
                self.root
                    .parent()
                    .and_then(|store| base.rootfs.strip_prefix(store).ok())
                    .map_or_else(|| base.rootfs.clone(), Path::to_path_buf)
            }),
        };
        let meta = staging.join("snapshot.json");
        fs::write(&meta, serde_json::to_vec_pretty(&snap).expect("serialises"))
            .map_err(io_err("write", &meta))?;
        // On disk before the caller publishes it by rename (crate::durable).
        crate::durable::sync_fs(staging).map_err(io_err("sync", staging))?;
        crate::trace(t0, "build: staged and flushed");
        Ok(())
    }
}

fn build_failed(name: &str, out: crate::InstallOutcome) -> SnapshotError {
    // uv's own words for a full disk (its cache and the staging tree are on the store's):
    // an `error:` or `cause:` line of uv, not whatever a package's build code printed.
    let full = |l: &&str| {
        let l = l.trim_start();
        (l.starts_with("error:") || l.starts_with("cause:") || l.starts_with("Caused by:"))
            && (l.contains("No space left on device") || l.contains("os error 28"))
    };
    if let Some(line) = out.stderr.lines().find(full) {
        return SnapshotError::DiskFull(format!(
            "the snapshot store (job type '{name}'; uv: {})",
            line.trim()
        ));
    }
    let tail: String = out.stderr.trim().chars().rev().take(4000).collect();
    SnapshotError::BuildFailed {
        name: name.to_string(),
        status: out.status,
        stderr: tail.chars().rev().collect(),
    }
}

/// The directories an install writes in (the image's Python's data, purelib, platlib and
/// scripts paths), none below another.
fn install_dirs(paths: &PyPaths) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for p in [&paths.data, &paths.purelib, &paths.platlib, &paths.scripts] {
        if !dirs.iter().any(|w| p.starts_with(w.as_str())) {
            dirs.retain(|w| !w.starts_with(p.as_str()));
            dirs.push(p.clone());
        }
    }
    dirs
}

/// `env` for uv in a builder sandbox whose cache and scratch directory are mounted at
/// `<at>/cache` and `<at>/tmp`.
fn uv_env(env: &[(String, String)], at: &str) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (k, v) in [
        ("HOME", "/home/sandbox"),
        ("UV_CACHE_DIR", &format!("{at}/cache")),
        ("UV_PYTHON_DOWNLOADS", "never"),
        ("TMPDIR", &format!("{at}/tmp")),
    ] {
        set_env(&mut env, k, v);
    }
    env
}

/// What a fresh install of `reqs` would install: uv's `--dry-run`, in a builder sandbox on
/// the base image itself (read-only; it writes only uv's `cache`, handed over already, and
/// a scratch directory, both mounted on the sandbox's `/tmp`).
#[allow(clippy::too_many_arguments)]
fn plan_install(
    spec: &JobTypeSpec,
    host: &dyn BuildHost,
    base: &BaseImage,
    uv: &Path,
    cache: &Path,
    paths: &PyPaths,
    reqs: &[String],
    staging: &Path,
) -> Result<dists::Plan, SnapshotError> {
    let t0 = std::time::Instant::now();
    let owner = host.owner();
    let scratch = staging.join("tmp-plan");
    fs::create_dir(&scratch).map_err(io_err("create", &scratch))?;
    owner
        .hand_over(&scratch)
        .map_err(io_err("chown", &scratch))?;
    crate::trace(t0, "plan: scratch handed over");
    let tools = uv.parent().unwrap_or(Path::new("/"));
    let at = "/tmp/tako-build";
    let mut binds = vec![
        bind(tools, &format!("{at}/tools"), false),
        bind(cache, &format!("{at}/cache"), true),
        bind(&scratch, &format!("{at}/tmp"), true),
    ];
    let mut argv: Vec<String> = [
        &format!(
            "{at}/tools/{}",
            uv.file_name().unwrap_or_default().to_string_lossy()
        ),
        "pip",
        "install",
        "--no-config",
        "--no-progress",
        "--color",
        "never",
        "--dry-run",
        "--system",
        "--break-system-packages",
        "--python",
        &paths.executable,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(d) = host.find_links() {
        binds.push(bind(&d, &format!("{at}/find-links"), false));
        argv.extend([
            "--find-links".into(),
            format!("{at}/find-links"),
            "--no-index".into(),
        ]);
    }
    argv.push("--".into());
    argv.extend(reqs.iter().cloned());
    let env = uv_env(&base.env, at);
    let tmp_dirs = ["tools", "cache", "tmp", "find-links"]
        .iter()
        .map(|d| format!("{at}/{d}"))
        .collect();
    let out = host.run(&InstallRun {
        rootfs: base.rootfs.clone(),
        argv,
        env,
        binds,
        network: true,
        tmp_dirs,
        layers: None,
    });
    owner
        .discard(&scratch)
        .map_err(io_err("remove", &scratch))?;
    let out = out.map_err(SnapshotError::Sandbox)?;
    if !out.success {
        return Err(build_failed(&spec.name, out));
    }
    Ok(dists::planned(&format!("{}\n{}", out.stderr, out.stdout)))
}

/// Where the Python of a base image lives and installs: probed once (a sandbox run of its
/// `python3`) and kept beside its rootfs, since the image never changes. Every build on
/// the image and its once-only byte-compile use it.
pub(crate) fn base_paths(host: &dyn BuildHost, base: &BaseImage) -> Result<PyPaths, SnapshotError> {
    let kept = base.rootfs.parent().map(|d| d.join("python-paths.json"));
    if let Some(p) = kept
        .as_ref()
        .and_then(|k| fs::read_to_string(k).ok())
        .and_then(|t| parse_paths(&t).ok())
    {
        return Ok(p);
    }
    let text = probe_paths(host, &base.rootfs, &base.env)?;
    let p = parse_paths(&text)?;
    if let Some(k) = kept {
        // A cache: another build writing it too, or a failure, only costs a probe later.
        let _ = crate::durable::write_file(&k, text.as_bytes());
    }
    Ok(p)
}

/// Runs the probe in a sandbox on `rootfs`; returns its JSON output.
fn probe_paths(
    host: &dyn BuildHost,
    rootfs: &Path,
    env: &[(String, String)],
) -> Result<String, SnapshotError> {
    let code = "import importlib.util,json,sys,sysconfig;p=sysconfig.get_paths();print(json.dumps({'executable':sys.executable,'cache_tag':sys.implementation.cache_tag,'magic':importlib.util.MAGIC_NUMBER.hex(),'stdlib':p['stdlib'],'data':p['data'],'purelib':p['purelib'],'platlib':p['platlib'],'scripts':p['scripts']}))";
    let out = host
        .run(&InstallRun {
            rootfs: rootfs.to_path_buf(),
            argv: vec!["python3".into(), "-c".into(), code.into()],
            env: env.to_vec(),
            binds: vec![],
            network: false,
            tmp_dirs: vec![],
            layers: None,
        })
        .map_err(SnapshotError::Sandbox)?;
    if !out.success {
        return Err(SnapshotError::Invalid(format!(
            "the base image has no usable python3 ({}): {}",
            out.status,
            out.stderr.trim()
        )));
    }
    Ok(out.stdout.trim().to_string())
}

/// The probe's output, checked: it comes from the image's Python.
fn parse_paths(text: &str) -> Result<PyPaths, SnapshotError> {
    let p: PyPaths = serde_json::from_str(text)
        .map_err(|e| SnapshotError::Invalid(format!("python3 paths of the base image: {e}")))?;
    for d in [
        &p.stdlib,
        &p.data,
        &p.purelib,
        &p.platlib,
        &p.scripts,
        &p.executable,
    ] {
        if !d.starts_with('/') || d.contains("..") || d == "/" {
            return Err(SnapshotError::Invalid(format!("unusable python path {d}")));
        }
    }
    for n in [&p.cache_tag, &p.magic] {
        if !pyc::safe_name(n) {
            return Err(SnapshotError::Invalid(format!(
                "unusable python cache tag {n:?}"
            )));
        }
    }
    Ok(p)
}

#[derive(Debug, Deserialize)]
pub(crate) struct PyPaths {
    pub(crate) executable: String,
    /// `sys.implementation.cache_tag` (`cpython-311`).
    cache_tag: String,
    /// `importlib.util.MAGIC_NUMBER` in hex.
    magic: String,
    pub(crate) stdlib: String,
    data: String,
    purelib: String,
    platlib: String,
    scripts: String,
}

pub(crate) fn bind(host: &Path, target: &str, writable: bool) -> BindMount {
    BindMount {
        host: host.to_path_buf(),
        target: target.to_string(),
        writable,
    }
}

pub(crate) fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    env.retain(|(ek, _)| ek != k);
    env.push((k.to_string(), v.to_string()));
}

pub(crate) fn nix_euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stderr: &str) -> SnapshotError {
        build_failed(
            "dp",
            crate::InstallOutcome {
                success: false,
                exit_code: Some(1),
                status: "exit code 1".into(),
                stdout: String::new(),
                stderr: stderr.into(),
            },
        )
    }

    /// uv's own error about a full disk is the disk-full error; the same words printed by a
    /// package's build code, with uv failing for another reason, are not.
    #[test]
    fn a_full_disk_is_told_by_uvs_own_error_lines() {
        let uv = "Resolved 4 packages\nerror: Failed to download `pandas==3.1.1`\n  \
                  cause: failed to write to file `/tako-build/cache/x.py`: No space left on \
                  device (os error 28)\n";
        let e = failed(uv);
        assert!(matches!(e, SnapshotError::DiskFull(_)), "{e:?}");
        assert!(e.to_string().contains("tako-vm gc"), "{e}");
        let chatty = "checking disk: No space left on device (os error 28) is handled\n\
                      error: Failed to build `pkg==1.0`\n  cause: the build backend returned 1\n";
        assert!(matches!(failed(chatty), SnapshotError::BuildFailed { .. }));
    }
}
