//! The `tako-vm` binary.

fn main() {
    // The sandbox helper must run before anything else (no threads, no parsing, no logging).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(tako_vm::sandbox::child::HELPER_ARG))
    {
        tako_vm::sandbox::child::helper_main();
    }
    std::process::exit(tako_vm::cli::main());
}
