//! Where the processes of a CLI run start: the launcher (and the init it clones) on another
//! CPU than the caller, so that the kernel builds the namespaces and the init its filesystem
//! while the caller builds the cgroup manager on its own CPU.
//!
//! Why by hand: on a KVM guest the scheduler may treat a halted vCPU as preempted and
//! queue a new child behind its parent. Measured on the 2-vCPU reference VM (docs/
//! benchmarks.md, round 17): a forked child that spins 2 ms next to its parent starts
//! 1.3–2.4 ms after the fork, on the parent's CPU; placed on the other CPU by the parent
//! right after the fork, it starts after 0.35–0.4 ms. On a host whose scheduler spreads by
//! itself, the placement picks the CPU it would have picked anyway.
//!
//! The launcher moves back to the caller's CPU before it exits: its exit tears down its
//! copy of the caller's address space (~0.3 ms), which would otherwise delay the init on
//! the CPU they share. A/B in docs/benchmarks.md, round 18.
//!
//! Nothing stays pinned: the init takes the caller's CPU mask back as its first step
//! ([`restore_caller_mask`]), before it runs anything of the sandbox, so the payload gets
//! exactly the caller's CPUs.

use std::sync::OnceLock;

/// The caller's CPU mask, saved before the launcher is forked (so the launcher and the init
/// inherit it in their copy of this memory).
static CALLER_MASK: OnceLock<libc::cpu_set_t> = OnceLock::new();

const SET_SIZE: usize = std::mem::size_of::<libc::cpu_set_t>();

/// Saves the caller's CPU mask; call before forking the launcher. Returns false when the
/// mask cannot be read (then nothing is placed or restored).
pub fn save_caller_mask() -> bool {
    if CALLER_MASK.get().is_none() {
        // SAFETY: cpu_set_t is plain old data (all zero is the empty set).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: sched_getaffinity writes at most SET_SIZE bytes into the set.
        if unsafe { libc::sched_getaffinity(0, SET_SIZE, &mut set) } != 0 {
            return false;
        }
        let _ = CALLER_MASK.set(set);
    }
    true
}

/// The CPU after `current` in `mask` (wrapping around), if the mask has another one.
fn other_cpu(mask: &libc::cpu_set_t, current: usize) -> Option<usize> {
    let total = 8 * SET_SIZE;
    (1..total)
        .map(|k| (current + k) % total)
        // SAFETY: c < 8 * SET_SIZE, inside the set.
        .find(|&c| unsafe { libc::CPU_ISSET(c, mask) })
}

/// Runs process `pid` (the just-forked launcher, or 0: the calling process) on one allowed
/// CPU other than the caller's current one. Does nothing when the saved mask has a single
/// CPU or none was saved. Returns the CPU chosen.
pub fn place_on_other_cpu(pid: i32) -> Option<usize> {
    let mask = CALLER_MASK.get()?;
    // SAFETY: sched_getcpu has no arguments; -1 on failure.
    let current = unsafe { libc::sched_getcpu() };
    let cpu = other_cpu(mask, usize::try_from(current).ok()?)?;
    // SAFETY: plain old data, as in save_caller_mask.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set (cpu < 8 * SET_SIZE).
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: sched_setaffinity reads SET_SIZE bytes of a valid set; pid is our child.
    (unsafe { libc::sched_setaffinity(pid, SET_SIZE, &one) } == 0).then_some(cpu)
}

/// Gives this process the caller's CPU mask back (the init, first thing). A no-op where
/// nothing was saved. Async-signal-safe (one system call).
pub fn restore_caller_mask() {
    if let Some(mask) = CALLER_MASK.get() {
        // SAFETY: sched_setaffinity reads SET_SIZE bytes of a valid set.
        unsafe { libc::sched_setaffinity(0, SET_SIZE, mask) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(cpus: &[usize]) -> libc::cpu_set_t {
        // SAFETY: plain old data.
        let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            // SAFETY: test CPUs are far below 8 * SET_SIZE.
            unsafe { libc::CPU_SET(c, &mut s) };
        }
        s
    }

    #[test]
    fn the_other_cpu_is_the_next_allowed_one() {
        assert_eq!(other_cpu(&set_of(&[0, 1]), 0), Some(1));
        assert_eq!(other_cpu(&set_of(&[0, 1]), 1), Some(0));
        assert_eq!(other_cpu(&set_of(&[2, 5, 7]), 5), Some(7));
        assert_eq!(other_cpu(&set_of(&[2, 5, 7]), 7), Some(2));
        // The caller runs on a CPU outside the mask (the mask changed meanwhile).
        assert_eq!(other_cpu(&set_of(&[3]), 1), Some(3));
        assert_eq!(other_cpu(&set_of(&[3]), 3), None);
        assert_eq!(other_cpu(&set_of(&[]), 0), None);
    }

    #[test]
    fn a_placed_child_runs_elsewhere_and_gets_the_mask_back() {
        assert!(save_caller_mask());
        let mask = *CALLER_MASK.get().unwrap();
        // SAFETY: counting the bits of a valid set.
        let count = unsafe { libc::CPU_COUNT(&mask) };
        if count < 2 {
            eprintln!("SKIP: one CPU only");
            return;
        }
        // A child that waits for its placement, reports its CPU, restores and reports the
        // mask's size.
        let (r, w) = nix::unistd::pipe().unwrap();
        let (go_r, go_w) = nix::unistd::pipe().unwrap();
        let (mut r, mut go_w) = (std::fs::File::from(r), std::fs::File::from(go_w));
        // SAFETY: the test process may have other threads; the child only calls read,
        // sched_getcpu, sched_setaffinity, sched_getaffinity, write and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            use std::os::fd::AsRawFd;
            // SAFETY: async-signal-safe system calls on descriptors this process owns.
            unsafe {
                let mut b = [0u8; 1];
                libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                let cpu = libc::sched_getcpu() as u32;
                restore_caller_mask();
                let mut now: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, SET_SIZE, &mut now);
                let n = libc::CPU_COUNT(&now) as u32;
                let out = [cpu.to_ne_bytes(), n.to_ne_bytes()].concat();
                libc::write(w.as_raw_fd(), out.as_ptr().cast(), out.len());
                libc::_exit(0);
            }
        }
        drop(w);
        let placed = place_on_other_cpu(pid).expect("placed");
        std::io::Write::write_all(&mut go_w, b"x").unwrap();
        let mut out = [0u8; 8];
        std::io::Read::read_exact(&mut r, &mut out).unwrap();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let cpu = u32::from_ne_bytes(out[..4].try_into().unwrap()) as usize;
        let n = u32::from_ne_bytes(out[4..].try_into().unwrap()) as i32;
        assert_eq!(cpu, placed, "the child ran on the CPU it was placed on");
        assert_eq!(n, count, "the child got the caller's mask back");
    }
}
