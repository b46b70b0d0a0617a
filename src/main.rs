//! The `tako-vm` binary.
//!
//! No Rust `main`: the C `main` below skips the Rust runtime's start-up, whose main-thread
//! stack guard reads `/proc/self/maps` (glibc's `pthread_getattr_np`) on every start, a
//! measurable part of a sandbox's start from the CLI. What the runtime would set up and we
//! rely on is done here: SIGPIPE ignored (writes to a closed pipe return EPIPE). Arguments
//! still come from `std::env::args` (glibc hands them to the Rust runtime at load time), and
//! panics work as usual; a stack overflow ends in SIGSEGV without the runtime's message.
//! The test build of this target keeps the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

/// The process entry point (the C `main`).
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    // SAFETY: setting a signal disposition to SIG_IGN; no handler involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The helpers (sandbox, owner) must run before anything else: no threads, no parsing, no
    // logging.
    let first = std::env::args_os().nth(1);
    match first.as_ref().and_then(|a| a.to_str()) {
        Some(tako_vm::sandbox::child::HELPER_ARG) => tako_vm::sandbox::child::helper_main(),
        Some(tako_vm::sandbox::owner::OWNER_HELPER_ARG) => tako_vm::sandbox::owner::helper_main(),
        _ => {}
    }
    std::process::exit(tako_vm::cli::main());
}
