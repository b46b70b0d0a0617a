//! The tako-vm seccomp policy and its compilation into BPF with [seccompiler].
//!
//! The policy lives in one reviewed data file, `seccomp/policy.json`, embedded into the crate
//! at build time ([`Policy::builtin`]). tako-vm compiles it in its build script and embeds the
//! BPF ([`CompiledFilters::to_bytes`], [`compile_for_target`]); [`compile_for_host`]
//! compiles it at run time. Every sandboxed child installs it right before `execve`
//! ([`CompiledFilters::apply`]).
//!
//! seccompiler compiles the policy ([`Policy::compile_reference`]): the architecture check, every
//! syscall name's number, every argument test and every action are its code. The installed
//! filters ([`Policy::compile`]) are those programs with one change: seccompiler finds a
//! syscall's rules by comparing its number with every listed number in turn, and the installed
//! programs find them by binary search (the `tree` module), with the same verdicts (checked by
//! the unit tests for every syscall number), a fifth of the instructions, and about 0.85 ms
//! less at every sandbox start (`cargo run --release -p tako-seccomp --example install_cost`).
//!
//! # Policy file format
//!
//! A JSON object; unknown keys are rejected and duplicate object keys are errors.
//!
//! | key | meaning |
//! | --- | --- |
//! | `_comment` | a string or a list of strings, ignored |
//! | `default_errno` | errno for every syscall not allowed (1 = `EPERM`), 1..=4095 |
//! | `groups` | `{group: [syscall names]}` allowed whatever their arguments; groups only organise review |
//! | `arch_only` | `{"x86_64" \| "aarch64": [names]}`: allowed names that exist on that architecture only, left out when compiling for the other one |
//! | `conditional` | list of `{syscall, arg, <test>, comment}`: allowed only if argument `arg` (0..=5, its low 32 bits) passes the test (at most 200 values) |
//! | `enosys` | names that fail with `ENOSYS` instead of `default_errno` |
//! | `denied_explicitly` | documentation list of dangerous syscalls; they fall to `default_errno` like every unlisted name |
//!
//! The tests of `conditional` (exactly one per entry) map labels to values, the labels being
//! documentation (`{"PR_SET_NAME": 15}`):
//!
//! * `allow_if_eq_any`: allowed iff the argument equals one of the values;
//! * `allow_if_ne_all`: allowed iff the argument equals none of the values;
//! * `allow_if_no_bit_of`: allowed iff the argument has none of the bits of the values set.
//!
//! A name may appear only once across `groups`, `conditional` and `enosys`, and a name of
//! `denied_explicitly` in none of them; [`Policy::from_json`] enforces both. Whether a name is a
//! syscall of the architecture is checked by [`Policy::compile`].
//!
//! # The compiled filters
//!
//! seccompiler gives every filter a single match action, so the policy becomes two stacked
//! filters (see [`Policy::compile_reference`]): a default-allow filter that answers the `enosys`
//! names (`clone3`) with `ENOSYS`, so that glibc falls back to `clone(2)`, whose flags the main
//! filter can inspect (the `clone3` flags are behind a pointer), and the main allowlist. The
//! kernel runs all filters and keeps the most restrictive verdict. [`Policy::compile`] gives
//! the same two, each with a binary search over syscall-number intervals in place of its chain
//! of comparisons; the search's leaves return the verdict of a syscall whose verdict does not
//! depend on its arguments, or enter seccompiler's argument tests for it.
//!
//! Architecture handling is seccompiler's prologue, in both programs: a syscall whose audit architecture
//! is not the compiled one (e.g. i386 `int 0x80` on x86_64) kills the process; an x32 syscall
//! (x86_64 audit architecture, number with bit `0x40000000`) is above every allowlisted x86_64
//! number and so fails with `default_errno`.
//!
//! # Example
//!
//! ```no_run
//! // In the parent, once:
//! let filters = tako_seccomp::compile_for_host()?;
//! // In the forked child, after prctl(PR_SET_NO_NEW_PRIVS) and right before execve:
//! filters.apply()?;
//! # Ok::<(), tako_seccomp::SeccompError>(())
//! ```

mod compile;
mod error;
mod policy;
mod tree;

use std::fmt;

use seccompiler::BpfProgram;

pub use error::SeccompError;
pub use policy::{Policy, Verdict};

/// A CPU architecture the policy can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86_64 (the x32 ABI is denied, i386 syscalls kill the process).
    X86_64,
    /// 64-bit ARM (aarch64, little-endian).
    Aarch64,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this crate was built for, if supported.
    pub fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(all(target_arch = "aarch64", target_endian = "little")) {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// The name used in the policy file's `arch_only` section: `x86_64` or `aarch64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The BPF programs of a compiled policy, in installation order.
///
/// Cheap to share between threads; compile once with [`compile_for_host`] and reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledFilters(Vec<BpfProgram>);

impl CompiledFilters {
    /// Installs the filters on the calling thread, in order.
    ///
    /// Meant for a freshly forked, single-threaded child right before `execve`, after the
    /// caller has set `PR_SET_NO_NEW_PRIVS`: it performs only `prctl(PR_SET_NO_NEW_PRIVS)` and
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` syscalls (through [`seccompiler::apply_filter`]) and
    /// does not allocate, neither on success nor on error. The filters are inherited by every
    /// later child and survive `execve`.
    ///
    /// On error, the filters before the failing one stay installed; the child must give up
    /// (`_exit`) rather than run the untrusted program.
    pub fn apply(&self) -> Result<(), SeccompError> {
        let count = self.0.len();
        for (index, program) in self.0.iter().enumerate() {
            seccompiler::apply_filter(program).map_err(|error| SeccompError::Apply {
                index,
                count,
                error,
            })?;
        }
        Ok(())
    }

    /// Total number of BPF instructions over all filters.
    pub fn instruction_count(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    /// Number of BPF instructions of each filter, in installation order.
    pub fn filter_lengths(&self) -> Vec<usize> {
        self.0.iter().map(Vec::len).collect()
    }

    /// A flat encoding (for compiling at build time and embedding in a binary): per filter, a
    /// little-endian u32 instruction count, then its instructions as `code` (u16), `jt`,
    /// `jf` (u8), `k` (u32), little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for program in &self.0 {
            out.extend_from_slice(&(program.len() as u32).to_le_bytes());
            for i in program {
                out.extend_from_slice(&i.code.to_le_bytes());
                out.push(i.jt);
                out.push(i.jf);
                out.extend_from_slice(&i.k.to_le_bytes());
            }
        }
        out
    }

    /// Decodes [`CompiledFilters::to_bytes`]; `None` for a malformed or empty input.
    pub fn from_bytes(mut b: &[u8]) -> Option<CompiledFilters> {
        let mut programs = Vec::new();
        while !b.is_empty() {
            let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            b = &b[4..];
            let body = b.get(..n.checked_mul(8)?)?;
            let program: BpfProgram = body
                .chunks_exact(8)
                .map(|c| seccompiler::sock_filter {
                    code: u16::from_le_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect();
            programs.push(program);
            b = &b[n * 8..];
        }
        (!programs.is_empty()).then_some(CompiledFilters(programs))
    }
}

/// Compiles the builtin policy for the architecture named as in `CARGO_CFG_TARGET_ARCH`
/// (`x86_64`, `aarch64`): what a build script embeds.
pub fn compile_for_target(target_arch: &str) -> Result<CompiledFilters, SeccompError> {
    let arch = Arch::ALL
        .into_iter()
        .find(|a| a.name() == target_arch)
        .ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    Policy::builtin()?.compile(arch)
}

/// Compiles the builtin policy ([`Policy::builtin`]) for the host architecture.
pub fn compile_for_host() -> Result<CompiledFilters, SeccompError> {
    let arch = Arch::host().ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    Policy::builtin()?.compile(arch)
}

#[cfg(test)]
mod tests;
