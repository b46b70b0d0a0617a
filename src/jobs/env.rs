//! Where a job type's root filesystem comes from.
//!
//! The server only talks to the small [`Environments`] trait. [`super::snapshots`] serves it
//! from the job-type snapshot store (`python:<version>-slim` plus requirements baked with
//! uv); [`BaseRootfsEnvironments`] is the store-less fallback (unit tests, or a server whose
//! image store cannot be opened): job types **without** requirements run on one base rootfs,
//! job types **with** requirements are reported as not built.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::registry::{valid_environment, JobType};
use crate::exec::pyjson;

/// A job type ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedEnv {
    /// Read-only root filesystem of the sandbox (the top layer, when `lower` is not empty).
    pub rootfs: PathBuf,
    /// Layers under `rootfs`, top first (a layered snapshot's base image).
    pub lower: Vec<PathBuf>,
    /// Environment variables of the job type (valid entries only).
    pub env: Vec<(String, String)>,
    /// Snapshot digest, when the rootfs is a built snapshot.
    pub digest: Option<String>,
    /// Keeps `tako-vm gc` away from the snapshot while this environment is in use.
    pub hold: Option<SnapshotHold>,
}

/// A shared hold on a snapshot (see [`rootfs_builder::SnapshotUse`]); clones share it.
#[derive(Debug, Clone)]
pub struct SnapshotHold(pub std::sync::Arc<rootfs_builder::SnapshotUse>);

impl PartialEq for SnapshotHold {
    /// Holds carry no data of their own.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Whether a job type's snapshot exists.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotState {
    /// Built (or nothing to build), with its digest.
    Built {
        /// Full sha256 hex of the job type's definition (§1.5.14).
        digest: String,
    },
    /// Not built yet.
    NotBuilt,
}

/// The result of a build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildInfo {
    /// Full sha256 hex of the job type's definition (§1.5.14).
    pub digest: String,
    /// Content key of the snapshot that serves it, when one was built.
    pub snapshot: Option<String>,
}

/// Why a job type cannot run or be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    /// The job type has requirements and no snapshot.
    #[error("job type '{0}' has no built snapshot: run 'tako-vm build {0}' or POST /job-types/{0}/build")]
    NotBuilt(String),
    /// No base rootfs is configured or present.
    #[error("no base rootfs: set base_rootfs in tako_vm.yaml or TAKO_VM_BASE_ROOTFS (scripts/build-rootfs builds one)")]
    NoBaseRootfs,
    /// A build failed (uv's error, invalid requirements or shared code).
    #[error("{0}")]
    Build(String),
    /// What a build needs is unavailable (base image, registry, uv, builder sandbox).
    #[error("{0}")]
    Unavailable(String),
}

/// Source of job-type root filesystems.
pub trait Environments: Send + Sync {
    /// Rootfs and environment for a job type; may build it first when `may_build`
    /// (development mode).
    fn resolve(&self, jt: &JobType, may_build: bool) -> Result<ResolvedEnv, EnvError>;
    /// Built or not, and the digest.
    fn status(&self, jt: &JobType) -> SnapshotState;
    /// Builds the snapshot (`POST /job-types/{name}/build`). Blocking.
    fn build(&self, jt: &JobType) -> Result<BuildInfo, EnvError>;
    /// The environment of requests without a (known) job type: the hard-coded default of
    /// §3.5. Never builds.
    fn resolve_default(&self, jt: &JobType) -> Result<ResolvedEnv, EnvError> {
        self.resolve(jt, false)
    }
    /// The job type plus per-request `requirements` (already validated, §2.7), from a
    /// cached ad-hoc snapshot. Blocking (may build).
    fn resolve_with_requirements(
        &self,
        _jt: &JobType,
        _extra: &[String],
    ) -> Result<ResolvedEnv, EnvError> {
        Err(EnvError::Unavailable(
            "runtime requirements need the image store".into(),
        ))
    }
}

/// The digest of §1.5.14: sha256 of the job type's definition as sorted-key JSON with
/// Python's default separators.
pub fn definition_digest(jt: &JobType) -> String {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        Value::from(v)
    };
    let mut env = Map::new();
    for (k, v) in &jt.environment {
        env.insert(k.clone(), Value::from(v.clone()));
    }
    let mut ids = jt.gpu.device_ids.clone();
    ids.sort();
    // Keys inserted in sorted order (the map keeps insertion order).
    let mut m = Map::new();
    m.insert("base_image".into(), jt.base_image.clone().into());
    m.insert("environment".into(), Value::Object(env));
    m.insert("gpu_count".into(), jt.gpu.count.into());
    m.insert("gpu_device_ids".into(), Value::from(ids));
    m.insert("gpu_enabled".into(), jt.gpu.enabled.into());
    m.insert("gpu_vendor".into(), jt.gpu.vendor.clone().into());
    m.insert("name".into(), jt.name.clone().into());
    m.insert("python_version".into(), jt.python_version.clone().into());
    m.insert("requirements".into(), sorted(&jt.requirements));
    m.insert("session_enabled".into(), jt.session_enabled.into());
    m.insert("shared_code".into(), sorted(&jt.shared_code));
    pyjson::sha256_hex(pyjson::dumps_ascii(&Value::Object(m)).as_bytes())
}

/// Serves job types without requirements from one base rootfs (no image store).
#[derive(Debug, Clone)]
pub struct BaseRootfsEnvironments {
    base: Option<PathBuf>,
}

impl BaseRootfsEnvironments {
    /// Uses `base` (config `base_rootfs`, `TAKO_VM_BASE_ROOTFS` or the fixture).
    pub fn new(base: Option<PathBuf>) -> Self {
        BaseRootfsEnvironments { base }
    }

    fn base(&self) -> Result<PathBuf, EnvError> {
        match &self.base {
            Some(p) if p.is_dir() => Ok(p.clone()),
            _ => Err(EnvError::NoBaseRootfs),
        }
    }
}

impl Environments for BaseRootfsEnvironments {
    fn resolve(&self, jt: &JobType, _may_build: bool) -> Result<ResolvedEnv, EnvError> {
        if !jt.requirements.is_empty() || !jt.shared_code.is_empty() {
            return Err(EnvError::NotBuilt(jt.name.clone()));
        }
        Ok(ResolvedEnv {
            rootfs: self.base()?,
            lower: Vec::new(),
            env: valid_environment(jt),
            digest: None,
            hold: None,
        })
    }

    fn status(&self, jt: &JobType) -> SnapshotState {
        if jt.requirements.is_empty() && jt.shared_code.is_empty() && self.base().is_ok() {
            SnapshotState::Built {
                digest: definition_digest(jt),
            }
        } else {
            SnapshotState::NotBuilt
        }
    }

    fn build(&self, jt: &JobType) -> Result<BuildInfo, EnvError> {
        if !jt.requirements.is_empty() || !jt.shared_code.is_empty() {
            return Err(EnvError::Unavailable(format!(
                "Failed to build {}: job-type snapshots need the image store",
                jt.name
            )));
        }
        self.base()?;
        Ok(BuildInfo {
            digest: definition_digest(jt),
            snapshot: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_mean_not_built() {
        let dir = tempfile::tempdir().unwrap();
        let e = BaseRootfsEnvironments::new(Some(dir.path().into()));
        let plain = JobType::named("plain");
        assert_eq!(e.resolve(&plain, true).unwrap().rootfs, dir.path());
        assert!(matches!(e.status(&plain), SnapshotState::Built { .. }));
        let mut dp = JobType::named("dp");
        dp.requirements = vec!["numpy".into()];
        let err = e.resolve(&dp, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "job type 'dp' has no built snapshot: run 'tako-vm build dp' or POST /job-types/dp/build"
        );
        assert_eq!(e.status(&dp), SnapshotState::NotBuilt);
        assert!(e.build(&dp).is_err());
        let none = BaseRootfsEnvironments::new(None);
        assert_eq!(none.resolve(&plain, true), Err(EnvError::NoBaseRootfs));
    }

    #[test]
    fn digest_is_stable_and_order_independent() {
        let mut a = JobType::named("x");
        a.requirements = vec!["b".into(), "a".into()];
        let mut b = a.clone();
        b.requirements = vec!["a".into(), "b".into()];
        assert_eq!(definition_digest(&a), definition_digest(&b));
        assert_eq!(definition_digest(&a).len(), 64);
    }
}
