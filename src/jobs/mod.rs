//! Jobs: the job-type registry, the environments they run in, the queue and its workers,
//! idempotency, cancel, retries, the dead-letter queue, rerun/fork, restart reconciliation
//! and retention. Nothing here knows about HTTP.

pub mod breaker;
pub mod env;
pub mod lifecycle;
pub mod plan;
pub mod registry;
pub mod service;
pub mod snapshots;
pub mod worker;

pub use env::{
    BaseRootfsEnvironments, BuildInfo, EnvError, Environments, ResolvedEnv, SnapshotState,
};
pub use registry::{JobType, Registry};
pub use service::{Service, SubmitError, SubmitMeta, Submitted};
pub use snapshots::SnapshotEnvironments;
