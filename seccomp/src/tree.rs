//! The installed form of a seccompiler program: its syscall-number dispatch done by binary
//! search instead of one comparison after another.
//!
//! seccompiler lays a filter out as the architecture check, a load of the syscall number, then,
//! for every syscall of the filter in number order, a comparison with its number followed by
//! its rules (argument checks ending in returns), and the mismatch action at the end. A number
//! is found by testing the numbers before it one by one: the main filter of the builtin policy
//! has about 1 200 instructions on x86_64. The kernel converts, JIT-compiles and, for its
//! per-syscall allow cache, emulates every installed program for every syscall number, which
//! took about 0.9 ms of every sandbox start on the development machine (round 4 and 7 of
//! `docs/benchmarks.md`).
//!
//! [`accelerate`] keeps seccompiler's program and changes only how a syscall number reaches
//! its rules:
//!
//! 1. The prologue (architecture check, number load) is kept as it is.
//! 2. For every interval of numbers on which the program's comparisons of the number all come
//!    out the same, the number's path is followed from the load through the jumps that only
//!    compare the number with constants, to the first other instruction: a return (the
//!    syscall's verdict does not depend on its arguments) or the start of the syscall's rules.
//! 3. A binary search over those intervals replaces the chain of comparisons: its leaves are
//!    that return, or a jump to that instruction.
//! 4. The instructions reachable from those leaves (seccompiler's argument checks and
//!    returns) follow, in their order, with their jumps re-aimed; the comparisons nothing
//!    jumps to any more are left out.
//!
//! Entering an instruction with the same accumulator (the number) as the original path does
//! gives the same verdict, so the result is the same function of `seccomp_data` as
//! seccompiler's program. The unit tests check that too, for every syscall number, the x32
//! range, other architectures and argument values around every conditional test.

use std::collections::BTreeSet;

use seccompiler::sock_filter;

use crate::SeccompError;

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// `BPF_CLASS` of an instruction code.
const CLASS_MASK: u16 = 0x07;
const CLASS_JMP: u16 = 0x05;
const CLASS_RET: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)`, `arch`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The kernel's limit on the length of one classic BPF program.
const BPF_MAXINSNS: usize = 4096;

/// Where the syscall numbers of one interval go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    /// A fixed return value.
    Ret(u32),
    /// Instruction `n` of the body, entered with the syscall number in the accumulator.
    Enter(usize),
}

/// `lo..=hi` of syscall numbers with one leaf.
#[derive(Debug, Clone)]
struct Interval {
    lo: u32,
    hi: u32,
    leaf: Leaf,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn invalid(message: String) -> SeccompError {
    SeccompError::Invalid(format!("seccompiler's program: {message}"))
}

/// The instructions that may run after instruction `pc` (none after a return).
fn successors(program: &[sock_filter], pc: usize) -> Vec<usize> {
    let i = &program[pc];
    match i.code & CLASS_MASK {
        CLASS_RET => vec![],
        CLASS_JMP if i.code == JA => vec![pc + 1 + i.k as usize],
        CLASS_JMP => vec![pc + 1 + usize::from(i.jt), pc + 1 + usize::from(i.jf)],
        _ => vec![pc + 1],
    }
}

/// Follows the path of syscall number `nr` from instruction `start` (the accumulator holding
/// `nr`) through jumps that compare the accumulator with constants, to the first other
/// instruction.
fn walk(program: &[sock_filter], start: usize, nr: u32) -> Result<Leaf, SeccompError> {
    let mut pc = start;
    loop {
        let i = program
            .get(pc)
            .ok_or_else(|| invalid(format!("a jump leaves the program at {pc}")))?;
        let taken = match i.code {
            JA => {
                pc += 1 + i.k as usize;
                continue;
            }
            JEQ_K => nr == i.k,
            JGT_K => nr > i.k,
            JGE_K => nr >= i.k,
            RET_K => return Ok(Leaf::Ret(i.k)),
            _ => return Ok(Leaf::Enter(pc)),
        };
        pc += 1 + usize::from(if taken { i.jt } else { i.jf });
    }
}

/// seccompiler's `program` with its dispatch replaced by a binary search (module docs).
pub(crate) fn accelerate(program: &[sock_filter]) -> Result<Vec<sock_filter>, SeccompError> {
    // 1. The prologue: loads of the architecture, comparisons and returns, up to the load of
    //    the number; its jumps stay inside it.
    let load = program
        .iter()
        .position(|i| i.code == LD_W_ABS && i.k == OFF_NR)
        .ok_or_else(|| invalid("no load of the syscall number".into()))?;
    for (pc, i) in program[..load].iter().enumerate() {
        let known = matches!(i.code, RET_K | JEQ_K | JGT_K | JGE_K | JA)
            || (i.code == LD_W_ABS && i.k == OFF_ARCH);
        if !known || successors(program, pc).iter().any(|&t| t > load) {
            return Err(invalid(format!(
                "unexpected prologue instruction {pc}: {i:?}"
            )));
        }
    }
    let start = load + 1;

    // 2. The intervals on which every comparison of the number with a constant agrees: split
    //    at each constant c and at c + 1.
    let mut bounds = BTreeSet::from([0u32]);
    for i in &program[start..] {
        if matches!(i.code, JEQ_K | JGT_K | JGE_K) {
            bounds.insert(i.k);
            if let Some(next) = i.k.checked_add(1) {
                bounds.insert(next);
            }
        }
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut intervals: Vec<Interval> = Vec::new();
    for (n, &lo) in bounds.iter().enumerate() {
        let hi = bounds.get(n + 1).map_or(u32::MAX, |next| next - 1);
        let leaf = walk(program, start, lo)?;
        match intervals.last_mut() {
            Some(last) if last.leaf == leaf => last.hi = hi,
            _ => intervals.push(Interval { lo, hi, leaf }),
        }
    }

    // 4. The body: what the leaves enter, and everything reachable from there.
    let mut reachable = BTreeSet::new();
    let mut todo: Vec<usize> = intervals
        .iter()
        .filter_map(|iv| match iv.leaf {
            Leaf::Enter(pc) => Some(pc),
            Leaf::Ret(_) => None,
        })
        .collect();
    while let Some(pc) = todo.pop() {
        if pc >= program.len() {
            return Err(invalid(format!("a jump leaves the program at {pc}")));
        }
        if reachable.insert(pc) {
            todo.extend(successors(program, pc));
        }
    }
    let body_pcs: Vec<usize> = reachable.into_iter().collect();
    let index_of = |pc: usize| body_pcs.binary_search(&pc).expect("reachable");
    let mut body = Vec::with_capacity(body_pcs.len());
    for (n, &pc) in body_pcs.iter().enumerate() {
        let mut i = program[pc].clone();
        if i.code == JA {
            i.k = (index_of(pc + 1 + i.k as usize) - n - 1) as u32;
        } else if i.code & CLASS_MASK == CLASS_JMP {
            // Leaving instructions out only shortens a forward jump.
            i.jt = u8::try_from(index_of(pc + 1 + usize::from(i.jt)) - n - 1)
                .expect("a shorter jump fits");
            i.jf = u8::try_from(index_of(pc + 1 + usize::from(i.jf)) - n - 1)
                .expect("a shorter jump fits");
        }
        body.push(i);
    }

    // 3. The search, then the body; leaf jumps are aimed once both are placed.
    let (search, entries) = search(&intervals);
    let mut out = program[..start].to_vec();
    let search_at = out.len();
    out.extend(search);
    let body_at = out.len();
    out.extend(body);
    for (at, pc) in entries {
        let from = search_at + at;
        out[from].k = (body_at + index_of(pc) - from - 1) as u32;
    }
    if out.len() > BPF_MAXINSNS {
        return Err(invalid(format!(
            "{} instructions, more than the kernel's {BPF_MAXINSNS}",
            out.len()
        )));
    }
    Ok(out)
}

/// Binary search over `ivs` (sorted, contiguous, covering every `u32`) on the loaded number.
/// Returns the code and, for every `Enter` leaf, the position of its (not yet aimed) jump and
/// the instruction it enters.
fn search(ivs: &[Interval]) -> (Vec<sock_filter>, Vec<(usize, usize)>) {
    if let [only] = ivs {
        return match only.leaf {
            Leaf::Ret(value) => (vec![insn(RET_K, 0, 0, value)], vec![]),
            Leaf::Enter(pc) => (vec![insn(JA, 0, 0, 0)], vec![(0, pc)]),
        };
    }
    let mid = ivs.len() / 2;
    let (left, left_entries) = search(&ivs[..mid]);
    let (right, right_entries) = search(&ivs[mid..]);
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
    let left_at = out.len();
    out.extend(left);
    let right_at = out.len();
    out.extend(right);
    let entries = left_entries
        .into_iter()
        .map(|(at, pc)| (left_at + at, pc))
        .chain(
            right_entries
                .into_iter()
                .map(|(at, pc)| (right_at + at, pc)),
        )
        .collect();
    (out, entries)
}
