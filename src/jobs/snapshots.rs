//! Job types served from the snapshot store (`rootfs-builder`): `tako-vm-<name>:latest` is
//! the job type's base image (`python:<python_version>-slim`, or `base_image`) with its
//! requirements installed by uv in a builder sandbox on the server's own [`Runner`].
//!
//! * development mode: a missing or outdated snapshot is built on first use (the request
//!   waits; concurrent requests share the build, which the store locks per key);
//! * production mode: only built snapshots are used; otherwise [`EnvError::NotBuilt`]
//!   names `tako-vm build <name>` and `POST /job-types/<name>/build`;
//! * requests without a job type (the hard-coded default of §3.5) run on
//!   `tako-vm-default:latest` if built, else on the `python:3.11-slim` image if it is in
//!   the store, else on `base_rootfs`; they never build or pull;
//! * per-request `requirements` run on an ad-hoc snapshot (job type + requirements) cached
//!   by the same key, so a repeated request installs nothing.
//!
//! The snapshot's environment (image `Env`, `PYTHONPATH` of shared code, the job type's
//! `environment`) is the run's environment.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rootfs_builder::{
    BaseImage, BuildHost, InstallOutcome, InstallRun, JobTypeSpec, Snapshot, SnapshotError,
    SnapshotStore,
};

use super::env::{
    definition_digest, BaseRootfsEnvironments, BuildInfo, EnvError, Environments, ResolvedEnv,
    SnapshotHold, SnapshotState,
};
use super::registry::{valid_environment, JobType};
use crate::config::Config;
use crate::image::builder::{BuilderConfig, SandboxBuildHost};
use crate::image::progress::short;
use crate::image::{unpack, ImageStore, NoProgress, Progress, Registry};
use crate::sandbox::Runner;

/// The base image of requests without a job type.
pub const DEFAULT_BASE_IMAGE: &str = "python:3.11-slim";
/// The job type whose snapshot, when built, serves requests without a job type (§3.5).
pub const DEFAULT_JOB_TYPE: &str = "default";

/// The snapshot input of a job type; `shared_code` paths are relative to `base_dir` (the
/// server's working directory, §3.1).
pub fn spec_of(jt: &JobType, base_dir: &Path) -> JobTypeSpec {
    JobTypeSpec {
        name: jt.name.clone(),
        python_version: jt.python_version.clone(),
        base_image: jt.base_image.clone(),
        requirements: jt.requirements.clone(),
        environment: jt.environment.clone(),
        shared_code: jt.shared_code.iter().map(|p| base_dir.join(p)).collect(),
    }
}

/// Progress of server builds and pulls: one log line per step.
struct LogProgress;

impl Progress for LogProgress {
    fn blob_start(&self, digest: &str, size: u64, _done: u64) {
        eprintln!(
            "tako-vm: downloading {} ({:.1} MB)",
            short(digest),
            size as f64 / 1e6
        );
    }

    fn step(&self, message: &str) {
        eprintln!("tako-vm: {message}");
    }
}

/// [`Environments`] on the snapshot store.
pub struct SnapshotEnvironments {
    images: ImageStore,
    snaps: SnapshotStore,
    registry: Registry,
    runner: Result<Arc<Runner>, String>,
    builder: BuilderConfig,
    base_dir: PathBuf,
    fallback: BaseRootfsEnvironments,
    /// uv and its version, found once (only a success is kept).
    uv: Mutex<Option<(PathBuf, String)>>,
    /// One base-image pull at a time in this process.
    pulls: Mutex<()>,
}

fn env_error(e: SnapshotError) -> EnvError {
    match e {
        SnapshotError::NotBuilt(name) => EnvError::NotBuilt(name),
        e @ (SnapshotError::BuildFailed { .. } | SnapshotError::Invalid(_)) => {
            EnvError::Build(e.to_string())
        }
        e => EnvError::Unavailable(e.to_string()),
    }
}

impl SnapshotEnvironments {
    /// Runs `get` and holds its snapshot against `tako-vm gc` for as long as the returned
    /// environment lives; a snapshot removed in between is resolved once more.
    fn held(
        &self,
        get: impl Fn() -> Result<Snapshot, SnapshotError>,
    ) -> Result<ResolvedEnv, EnvError> {
        for _ in 0..2 {
            let s = get().map_err(env_error)?;
            if let Some(h) = self.snaps.hold(&s.key) {
                return Ok(ResolvedEnv {
                    lower: s.lower.into_iter().collect(),
                    rootfs: s.rootfs,
                    env: s.env,
                    digest: Some(s.key),
                    hold: Some(SnapshotHold(Arc::new(h))),
                });
            }
        }
        Err(EnvError::Unavailable(
            "the snapshot was removed while it was being resolved (tako-vm gc); try again".into(),
        ))
    }

    /// Opens the image store of `cfg` (`image_store`, registry and uv settings); builds run
    /// on `runner`; `shared_code` paths are relative to `base_dir`; `base_rootfs` serves
    /// requests without a job type when no base image is in the store.
    pub fn open(
        cfg: &Config,
        runner: Result<Arc<Runner>, String>,
        base_dir: PathBuf,
    ) -> Result<SnapshotEnvironments, EnvError> {
        let root = cfg.image_store_root();
        let unavailable =
            |e: String| EnvError::Unavailable(format!("image store {}: {e}", root.display()));
        let images = ImageStore::open(&root).map_err(|e| unavailable(e.to_string()))?;
        let snaps = SnapshotStore::open(images.root())
            .map_err(|e| unavailable(e.to_string()))?
            .keep_unnamed(cfg.max_requirement_snapshots.max(1) as usize);
        let registry =
            Registry::new(cfg.registry_config()).map_err(|e| unavailable(e.to_string()))?;
        Ok(SnapshotEnvironments {
            images,
            snaps,
            registry,
            runner,
            builder: cfg.builder_config(),
            base_dir,
            fallback: BaseRootfsEnvironments::new(cfg.base_rootfs()),
            uv: Mutex::new(None),
            pulls: Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        self.images.root()
    }

    fn host(&self) -> Result<Host<'_>, EnvError> {
        let runner = self.runner.as_ref().map_err(|e| {
            EnvError::Unavailable(format!("no builder sandbox (sandboxes unavailable: {e})"))
        })?;
        Ok(Host {
            inner: SandboxBuildHost::new(
                runner,
                &self.images,
                &self.registry,
                self.builder.clone(),
                &LogProgress,
            ),
            envs: self,
        })
    }

    fn spec(&self, jt: &JobType) -> JobTypeSpec {
        spec_of(jt, &self.base_dir)
    }

    /// The default base image's own rootfs and `Env`, when it is in the store.
    fn default_image(&self, jt: &JobType) -> Option<ResolvedEnv> {
        let rec = self.images.lookup(DEFAULT_BASE_IMAGE).ok()??;
        let rootfs = unpack::ensure_rootfs(&self.images, &rec, &NoProgress).ok()?;
        // Its Python byte-compiled once; a run goes ahead without, only slower.
        if !rootfs_builder::bytecode::compiled(&rootfs) {
            let base = BaseImage {
                digest: rec.digest.clone(),
                rootfs: rootfs.clone(),
                env: rec.env_pairs(),
            };
            let done = self.host().map_err(|e| e.to_string()).and_then(|h| {
                rootfs_builder::bytecode::compile_base(&h, &base).map_err(|e| e.to_string())
            });
            if let Err(e) = done {
                eprintln!("tako-vm: byte-compiling {DEFAULT_BASE_IMAGE} failed; runs on it compile at every start: {e}");
            }
        }
        let mut env = rec.env_pairs();
        for (k, v) in valid_environment(jt) {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        // A named image: gc keeps it.
        Some(ResolvedEnv {
            rootfs,
            lower: Vec::new(),
            env,
            digest: Some(rec.digest),
            hold: None,
        })
    }
}

impl Environments for SnapshotEnvironments {
    fn resolve(&self, jt: &JobType, may_build: bool) -> Result<ResolvedEnv, EnvError> {
        if !may_build {
            return self.held(|| {
                self.snaps
                    .status(&jt.name)
                    .ok_or_else(|| SnapshotError::NotBuilt(jt.name.clone()))
            });
        }
        let host = self.host()?;
        let spec = self.spec(jt);
        self.held(|| self.snaps.resolve(&spec, &host, true))
    }

    fn status(&self, jt: &JobType) -> SnapshotState {
        match self.snaps.status(&jt.name) {
            Some(_) => SnapshotState::Built {
                digest: definition_digest(jt),
            },
            None => SnapshotState::NotBuilt,
        }
    }

    fn build(&self, jt: &JobType) -> Result<BuildInfo, EnvError> {
        let host = self.host()?;
        let s = self.snaps.build(&self.spec(jt), &host).map_err(env_error)?;
        Ok(BuildInfo {
            digest: definition_digest(jt),
            snapshot: Some(s.key),
        })
    }

    fn resolve_default(&self, jt: &JobType) -> Result<ResolvedEnv, EnvError> {
        let named = || {
            self.snaps
                .status(DEFAULT_JOB_TYPE)
                .ok_or_else(|| SnapshotError::NotBuilt(DEFAULT_JOB_TYPE.into()))
        };
        if let Ok(env) = self.held(named) {
            return Ok(env);
        }
        match self.default_image(jt) {
            Some(env) => Ok(env),
            None => self.fallback.resolve(jt, false),
        }
    }

    fn resolve_with_requirements(
        &self,
        jt: &JobType,
        extra: &[String],
    ) -> Result<ResolvedEnv, EnvError> {
        let host = self.host()?;
        let spec = self.spec(jt);
        self.held(|| self.snaps.resolve_with_requirements(&spec, extra, &host))
    }
}

/// The sandbox build host with uv found once and base-image pulls serialised.
struct Host<'a> {
    inner: SandboxBuildHost<'a>,
    envs: &'a SnapshotEnvironments,
}

impl BuildHost for Host<'_> {
    fn base_image(&self, reference: &str, may_fetch: bool) -> Result<BaseImage, String> {
        match self.inner.base_image(reference, false) {
            Err(_) if may_fetch => {
                let _one = self.envs.pulls.lock().unwrap_or_else(|p| p.into_inner());
                self.inner.base_image(reference, true)
            }
            local => local,
        }
    }

    fn uv(&self) -> Result<(PathBuf, String), rootfs_builder::SnapshotError> {
        crate::image::builder::kept_uv(&self.envs.uv, || self.inner.uv())
    }

    fn owner(&self) -> &dyn rootfs_builder::SandboxOwner {
        self.inner.owner()
    }

    fn run(&self, run: &InstallRun) -> Result<InstallOutcome, String> {
        self.inner.run(run)
    }

    fn find_links(&self) -> Option<PathBuf> {
        self.inner.find_links()
    }

    fn step(&self, message: &str) {
        self.inner.step(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envs(dir: &Path, base: Option<&Path>) -> SnapshotEnvironments {
        let cfg = Config {
            image_store: Some(dir.join("store")),
            base_rootfs: base.map(Path::to_path_buf),
            ..Config::default()
        };
        SnapshotEnvironments::open(&cfg, Err("none in unit tests".into()), dir.into()).unwrap()
    }

    #[test]
    fn unbuilt_job_types_and_the_default_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let e = envs(dir.path(), Some(&base));
        let mut dp = JobType::named("dp");
        dp.requirements = vec!["numpy".into()];
        dp.environment.insert("A".into(), "1".into());
        assert_eq!(e.status(&dp), SnapshotState::NotBuilt);
        assert_eq!(e.resolve(&dp, false), Err(EnvError::NotBuilt("dp".into())));
        assert_eq!(
            e.resolve(&dp, false).unwrap_err().to_string(),
            "job type 'dp' has no built snapshot: run 'tako-vm build dp' or POST /job-types/dp/build"
        );
        // Building needs the builder sandbox.
        assert!(matches!(
            e.resolve(&dp, true),
            Err(EnvError::Unavailable(_))
        ));
        assert!(matches!(e.build(&dp), Err(EnvError::Unavailable(_))));
        // No default snapshot and no base image in the store: the base rootfs.
        let mut default = JobType::named("default");
        default.environment.insert("A".into(), "1".into());
        let d = e.resolve_default(&default).unwrap();
        assert_eq!(d.rootfs, base);
        assert_eq!(d.env, [("A".to_string(), "1".to_string())]);
        let none = envs(dir.path(), None);
        if none.fallback.resolve(&default, false).is_ok() {
            return; // the rootfs fixture exists on this host (default base_rootfs)
        }
        assert_eq!(none.resolve_default(&default), Err(EnvError::NoBaseRootfs));
    }

    #[test]
    fn spec_paths_are_relative_to_the_base_dir() {
        let mut jt = JobType::named("x");
        jt.shared_code = vec!["lib/helpers.py".into()];
        jt.base_image = Some("registry.local/py:3.12".into());
        let s = spec_of(&jt, Path::new("/srv"));
        assert_eq!(s.shared_code, [PathBuf::from("/srv/lib/helpers.py")]);
        assert_eq!(s.base_reference(), "registry.local/py:3.12");
        assert_eq!(
            spec_of(&JobType::named("y"), Path::new("/")).base_reference(),
            "python:3.11-slim"
        );
    }
}
