//! Compiles the seccomp policy (`seccomp/policy.json`) into BPF for the target architecture
//! at build time, so a sandbox start only decodes it (compiling at run time cost ~1 ms per
//! execution, inside the sandbox's start-up).
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // An unsupported architecture embeds nothing: a sandbox start then reports the error.
    let bytes = match tako_seccomp::compile_for_target(&arch) {
        Ok(f) => f.to_bytes(),
        Err(e) => {
            println!("cargo:warning=seccomp policy not compiled for {arch}: {e}");
            Vec::new()
        }
    };
    std::fs::write(out.join("seccomp.bpf"), bytes).expect("write seccomp.bpf");
    println!("cargo:rerun-if-changed=seccomp/policy.json");
    println!("cargo:rerun-if-changed=build.rs");
}
