//! What installing the policy costs a sandbox start: the installed filters (seccompiler's
//! programs with a binary-search dispatch) against seccompiler's programs as it lays them out,
//! interleaved in one run, each installed by a freshly forked child.
//!
//! `cargo run --release -p tako-seccomp --example install_cost [-- RUNS]` (default 300).

use std::time::Instant;

use tako_seccomp::{compile_for_host, Arch, CompiledFilters, Policy};

/// Microseconds each of `runs` fresh children spent in `apply`, sorted.
fn install_times(filters: &CompiledFilters, runs: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut fds = [0i32; 2];
        // SAFETY: plain system calls; the child only calls `prctl`, `seccomp` (through
        // `apply`, which does not allocate), `write` and `_exit`.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let start = Instant::now();
                let ok = filters.apply().is_ok();
                let ns: u64 = if ok {
                    start.elapsed().as_nanos() as u64
                } else {
                    u64::MAX
                };
                libc::write(fds[1], (&ns as *const u64).cast(), 8);
                libc::_exit(0);
            }
            let mut ns = 0u64;
            libc::read(fds[0], (&mut ns as *mut u64).cast(), 8);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
            assert_ne!(ns, u64::MAX, "installing the filters failed");
            out.push(ns as f64 / 1000.0);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let arch = Arch::host().expect("a supported architecture");
    let sets = [
        ("installed", compile_for_host().expect("compiles")),
        (
            "seccompiler, linear",
            Policy::builtin()
                .expect("parses")
                .compile_reference(arch)
                .expect("compiles"),
        ),
    ];
    let mut ratios = Vec::new();
    for round in 0..3 {
        let mut p50s = Vec::new();
        for (name, filters) in &sets {
            let t = install_times(filters, runs);
            let (p50, p90) = (t[t.len() / 2], t[t.len() * 9 / 10]);
            p50s.push(p50);
            println!(
                "round {round}  {name:24} {:?} instructions  p50 {p50:7.1} µs  p90 {p90:7.1} µs",
                filters.filter_lengths()
            );
        }
        ratios.push(format!("{:.2}", p50s[0] / p50s[1]));
    }
    println!(
        "installed / seccompiler, linear: p50 ratio per round {}",
        ratios.join(", ")
    );
}
