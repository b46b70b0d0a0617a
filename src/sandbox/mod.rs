//! The sandbox: one untrusted process tree in fresh namespaces with limits.
//!
//! Data flow: a [`spec::SandboxSpec`] (what to run, limits, injected files) is handed to
//! [`supervisor::Runner::run`], which creates the run's cgroup, starts the helper
//! ([`child`]), writes the id maps ([`idmap`]), captures output, enforces the host deadline
//! and returns a [`supervisor::Outcome`]. The inside builds its filesystem ([`mounts`]),
//! drops privileges and loads seccomp ([`privs`]) and reports back over [`wire`].

pub mod cgroup;
pub mod child;
pub mod cpus;
pub mod host;
pub mod idmap;
pub mod mounts;
pub mod net;
pub mod netlink;
pub mod owner;
pub mod pasta;
pub mod pidfd;
pub mod privs;
pub mod spec;
pub mod supervisor;
pub mod wire;

pub use host::HostConfig;
pub use spec::{Bind, InjectedDir, InjectedFile, Limits, NetworkSpec, OutputSpec, SandboxSpec};
pub use supervisor::{Outcome, RunOptions, Runner, SandboxError};
