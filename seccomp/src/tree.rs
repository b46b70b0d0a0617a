//! The installed form of the policy: one BPF program that finds a syscall's verdict by binary
//! search over syscall-number intervals.
//!
//! seccompiler's program ([`Policy::compile_reference`]) tests the allowed numbers one after
//! another: five instructions per name, 1 206 for the builtin policy on x86_64, in two stacked
//! filters. The kernel converts, JIT-compiles and (for its per-syscall allow cache) emulates
//! every filter when it is installed, which took 1.07 ms of each sandbox start on the
//! development machine; this program has under 200 instructions and installs in 0.13 ms.
//!
//! seccompiler stays the authority: it resolves every syscall name to its number (by
//! compiling a one-rule filter per name), and the unit tests check that this program returns
//! exactly the verdict of seccompiler's filters for every syscall number, architecture value,
//! the x32 range and argument values around every conditional test.

use seccompiler::sock_filter;
use serde_json::json;

use crate::policy::{ArgTest, Policy, MAX_VALUES};
use crate::{Arch, SeccompError};

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const ENOSYS: u32 = 38;
/// `offsetof(struct seccomp_data, nr)`, `arch`, `args`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;
/// The kernel's limit on the length of one classic BPF program.
const BPF_MAXINSNS: usize = 4096;

/// What happens to the syscalls of one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leaf {
    /// A fixed return value.
    Ret(u32),
    /// Allowed iff the low 32 bits of argument `arg` pass `test`; else `default_errno`.
    Cond { arg: u8, test: ArgTest },
}

/// `lo..=hi` of syscall numbers with one leaf.
#[derive(Debug, Clone)]
pub(crate) struct Interval {
    pub(crate) lo: u32,
    pub(crate) hi: u32,
    pub(crate) leaf: Leaf,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn audit_arch(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => 0xc000_003e,
        Arch::Aarch64 => 0xc000_00b7,
    }
}

/// The number of syscall `name` on `arch`, as seccompiler knows it: the constant its program
/// compares the loaded syscall number with.
pub(crate) fn syscall_number(name: &str, arch: Arch) -> Result<u32, SeccompError> {
    let target = match arch {
        Arch::X86_64 => seccompiler::TargetArch::x86_64,
        Arch::Aarch64 => seccompiler::TargetArch::aarch64,
    };
    let input = json!({ "n": {
        "mismatch_action": "allow",
        "match_action": "trap",
        "filter": [{ "syscall": name }],
    }});
    let bytes = serde_json::to_vec(&input).expect("serializing a serde_json::Value cannot fail");
    let mut programs = seccompiler::compile_from_json(bytes.as_slice(), target)
        .map_err(|error| SeccompError::Compile { arch, error })?;
    let program = programs.remove("n").unwrap_or_default();
    program
        .windows(2)
        .find(|w| w[0].code == LD_W_ABS && w[0].k == OFF_NR && w[1].code == JEQ_K)
        .map(|w| w[1].k)
        .ok_or_else(|| {
            SeccompError::Invalid(format!(
                "cannot find the number of {name} on {arch} in seccompiler's program"
            ))
        })
}

impl Policy {
    /// Compiles the policy into the single program tako-vm installs (see the module docs).
    pub(crate) fn compile_tree(&self, arch: Arch) -> Result<Vec<sock_filter>, SeccompError> {
        let deny = RET_ERRNO | self.default_errno;
        let mut leaves: Vec<(u32, Leaf)> = Vec::new();
        for name in self.names_on(&self.unconditional, arch) {
            leaves.push((syscall_number(name, arch)?, Leaf::Ret(RET_ALLOW)));
        }
        for name in self.names_on(&self.enosys, arch) {
            leaves.push((syscall_number(name, arch)?, Leaf::Ret(RET_ERRNO | ENOSYS)));
        }
        for cond in &self.conditional {
            if self.exists_on(&cond.syscall, arch) {
                let leaf = Leaf::Cond {
                    arg: cond.arg,
                    test: cond.test.clone(),
                };
                leaves.push((syscall_number(&cond.syscall, arch)?, leaf));
            }
        }
        leaves.sort_by_key(|(nr, _)| *nr);
        if let Some(w) = leaves.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SeccompError::Invalid(format!(
                "two names have syscall number {} on {arch}",
                w[0].0
            )));
        }
        let intervals = intervals(leaves, deny);
        let mut program = vec![
            insn(LD_W_ABS, 0, 0, OFF_ARCH),
            insn(JEQ_K, 1, 0, audit_arch(arch)),
            insn(RET_K, 0, 0, RET_KILL_PROCESS),
            insn(LD_W_ABS, 0, 0, OFF_NR),
        ];
        program.extend(search(&intervals, deny));
        if program.len() > BPF_MAXINSNS {
            return Err(SeccompError::Invalid(format!(
                "the program for {arch} has {} instructions, more than the kernel's {BPF_MAXINSNS}",
                program.len()
            )));
        }
        Ok(program)
    }
}

/// Intervals covering every `u32`, from sorted, distinct numbers: equal neighbouring `Ret`
/// leaves merge, gaps get `deny`.
pub(crate) fn intervals(leaves: Vec<(u32, Leaf)>, deny: u32) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    let mut push = |lo: u32, hi: u32, leaf: Leaf| {
        if let Some(last) = out.last_mut() {
            if last.hi.checked_add(1) == Some(lo)
                && last.leaf == leaf
                && matches!(leaf, Leaf::Ret(_))
            {
                last.hi = hi;
                return;
            }
        }
        out.push(Interval { lo, hi, leaf });
    };
    let mut next = 0u32;
    for (nr, leaf) in leaves {
        if nr > next {
            push(next, nr - 1, Leaf::Ret(deny));
        }
        push(nr, nr, leaf);
        next = nr.saturating_add(1);
        if nr == u32::MAX {
            return out;
        }
    }
    push(next, u32::MAX, Leaf::Ret(deny));
    out
}

/// Binary search over `ivs` (sorted, contiguous, covering every `u32`) on the loaded number.
pub(crate) fn search(ivs: &[Interval], deny: u32) -> Vec<sock_filter> {
    if let [only] = ivs {
        return leaf_code(&only.leaf, deny);
    }
    let mid = ivs.len() / 2;
    let left = search(&ivs[..mid], deny);
    let right = search(&ivs[mid..], deny);
    let split = ivs[mid].lo;
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match u8::try_from(left.len()) {
        // number >= split: jump over the left half.
        Ok(skip) => out.push(insn(JGE_K, skip, 0, split)),
        // Too far for a conditional jump: go through an unconditional one.
        Err(_) => {
            out.push(insn(JGE_K, 0, 1, split));
            out.push(insn(JA, 0, 0, left.len() as u32));
        }
    }
    out.extend(left);
    out.extend(right);
    out
}

/// The code of one leaf; it always ends in a return.
fn leaf_code(leaf: &Leaf, deny: u32) -> Vec<sock_filter> {
    let (arg, test) = match leaf {
        Leaf::Ret(value) => return vec![insn(RET_K, 0, 0, *value)],
        Leaf::Cond { arg, test } => (*arg, test),
    };
    // The low 32 bits of the argument (both architectures are little-endian).
    let mut out = vec![insn(LD_W_ABS, 0, 0, OFF_ARGS + 8 * u32::from(arg))];
    match test {
        ArgTest::NoBitOf(mask) => {
            // [JSET] [RET deny] [RET allow]
            out.push(insn(JSET_K, 0, 1, *mask));
            out.push(insn(RET_K, 0, 0, deny));
            out.push(insn(RET_K, 0, 0, RET_ALLOW));
        }
        ArgTest::EqAny(values) | ArgTest::NeAll(values) => {
            debug_assert!(values.len() <= MAX_VALUES);
            // [JEQ v0 .. JEQ vn-1] [RET on no match] [RET on a match]
            let n = values.len();
            for (i, &v) in values.iter().enumerate() {
                // Policy validation keeps n <= MAX_VALUES < 256.
                let to_match = u8::try_from(n - i).unwrap_or(u8::MAX);
                out.push(insn(JEQ_K, to_match, 0, v));
            }
            let (no_match, matched) = match test {
                ArgTest::EqAny(_) => (deny, RET_ALLOW),
                _ => (RET_ALLOW, deny),
            };
            out.push(insn(RET_K, 0, 0, no_match));
            out.push(insn(RET_K, 0, 0, matched));
        }
    }
    out
}
