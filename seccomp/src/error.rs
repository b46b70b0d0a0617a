//! The crate's error type.

use crate::Arch;

/// Everything that can go wrong while parsing, compiling or installing the policy.
///
/// Messages are lower-case and include the underlying cause, so printing the error alone is
/// enough for a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// The policy is not valid JSON or does not have the expected shape (including unknown keys).
    #[error("cannot parse the seccomp policy: {0}")]
    Parse(serde_json::Error),

    /// The policy parsed but breaks one of the format's rules (see the crate docs).
    #[error("invalid seccomp policy: {0}")]
    Invalid(String),

    /// seccompiler rejected the translated policy, e.g. a syscall name unknown on `arch`.
    #[error("cannot compile the seccomp policy for {arch}: {error}")]
    Compile {
        /// The architecture the policy was compiled for.
        arch: Arch,
        /// seccompiler's error.
        error: seccompiler::Error,
    },

    /// The host is not one of the architectures in [`Arch`].
    #[error("seccomp filtering is not supported on this architecture ({0})")]
    UnsupportedArch(&'static str),

    /// The kernel refused to install one of the filters. Filters before `index` are installed
    /// and stay installed: the caller must treat this as fatal for the process.
    #[error("cannot install seccomp filter {index} of {count}: {error}")]
    Apply {
        /// 0-based position of the failing filter in installation order.
        index: usize,
        /// Number of filters that should have been installed.
        count: usize,
        /// seccompiler's error (holds the errno of `prctl` or `seccomp`).
        error: seccompiler::Error,
    },
}
