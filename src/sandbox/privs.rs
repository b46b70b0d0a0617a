//! Last steps of the payload process before `execve`: rlimits, the sandbox user, every
//! capability set emptied, `no_new_privs`, inherited fds closed, then seccomp.
//! Runs in a freshly forked child of the (single-threaded) sandbox init.

use std::ffi::CString;
use std::path::Path;

use caps::CapSet;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};

use super::spec::{SandboxSpec, SANDBOX_GID, SANDBOX_UID};

type R<T> = Result<T, String>;

/// Resolves `argv0` against the `PATH` of the sandbox environment (not the host's).
pub fn resolve_program(argv0: &str, env: &[(String, String)]) -> R<String> {
    if argv0.contains('/') {
        return Ok(argv0.to_string());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(argv0);
        if nix::unistd::access(&p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file() {
            return Ok(p.to_string_lossy().into_owned());
        }
    }
    Err(format!(
        "{argv0}: command not found in the sandbox PATH ({path})"
    ))
}

fn cstr(s: &str) -> R<CString> {
    CString::new(s).map_err(|_| format!("argument contains a NUL byte: {s:?}"))
}

/// The seccomp policy compiled at build time (build.rs) for this architecture.
static SECCOMP_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp.bpf"));

/// The filters every payload gets: decoded from the build-time compilation (no compiling
/// on the start-up path).
pub fn seccomp_filters() -> Result<tako_seccomp::CompiledFilters, String> {
    tako_seccomp::CompiledFilters::from_bytes(SECCOMP_BPF).ok_or_else(|| {
        format!(
            "no seccomp policy compiled for {} (unsupported architecture)",
            std::env::consts::ARCH
        )
    })
}

/// Drops every privilege and execs the payload. Returns only on failure.
pub fn drop_and_exec(spec: &SandboxSpec, filters: &tako_seccomp::CompiledFilters) -> String {
    match try_drop_and_exec(spec, filters) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

/// What the sandbox's processes must not pass on to the payload, shed once by the process
/// that becomes (or forks) the init, while it waits for its id maps, so the payload's start
/// does not pay for it:
///
/// * ignored signals: execve keeps them ignored, and our Rust processes ignore SIGPIPE (so
///   `yes | head` would print "Broken pipe" instead of ending). Every disposition is reset to
///   the default with the raw system call, because libc refuses its own internal signals
///   (32, 33), which an ignoring parent can also pass on; an all-zero kernel `sigaction` is
///   SIG_DFL with no flags and an empty mask on every architecture. The init installs no
///   handler afterwards, so the payload inherits the defaults.
/// * the capability bounding set (it needs CAP_SETPCAP, which the payload's uid change takes
///   away). Dropping it leaves the caller's own effective capabilities, which the init still
///   needs, untouched.
pub fn shed_inherited() -> R<()> {
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: rt_sigaction with a valid, zeroed action; unknown numbers just fail.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                )
            };
        }
    }
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("drop bounding {cap}: {e}"))?;
    }
    Ok(())
}

fn try_drop_and_exec(spec: &SandboxSpec, filters: &tako_seccomp::CompiledFilters) -> R<Never> {
    // The user's code is the preferred OOM victim, never the sandbox init. The init made
    // itself (and so this fork) non-dumpable, which leaves /proc/self owned by the host's
    // root and the write refused (EACCES): dumpable again for the write. Nothing but the
    // init shares the sandbox yet, and the uid change below clears the flag once more.
    let _ = nix::sys::prctl::set_dumpable(true);
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        return Err(format!("oom_score_adj: {e}"));
    }
    // Signal dispositions and the bounding set were shed by the init (shed_inherited).
    let l = &spec.limits;
    let lim = |r: Resource, (s, h): (u64, u64)| {
        setrlimit(r, s, h).map_err(|e| format!("setrlimit {r:?}: {e}"))
    };
    lim(Resource::RLIMIT_NOFILE, l.nofile)?;
    lim(Resource::RLIMIT_NPROC, l.nproc)?;
    lim(Resource::RLIMIT_FSIZE, (l.fsize, l.fsize))?;
    lim(Resource::RLIMIT_CORE, (0, 0))?;

    let program = resolve_program(&spec.argv[0], &spec.env)?;
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect::<R<_>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<R<_>>()?;
    let prog = cstr(&program)?;

    nix::unistd::chdir(spec.cwd.as_str()).map_err(|e| format!("chdir {}: {e}", spec.cwd))?;

    // setgroups is denied in single-id mode (the host's setgroups=deny): nothing to clear then.
    let _ = nix::unistd::setgroups(&[]);
    let (g, u) = (Gid::from_raw(SANDBOX_GID), Uid::from_raw(SANDBOX_UID));
    nix::unistd::setresgid(g, g, g).map_err(|e| format!("setresgid {SANDBOX_GID}: {e}"))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| format!("setresuid {SANDBOX_UID}: {e}"))?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("clear {set:?} capabilities: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;

    // Close everything but stdio; the payload inherits nothing else.
    // SAFETY: close_range(2) on our own descriptor table; no Rust object owns fds >= 3 here
    // that is used afterwards (the seccomp filters and argv live in memory).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }

    filters.apply().map_err(|e| format!("seccomp: {e}"))?;
    let err = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
    Err(format!("exec {program}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_against_the_sandbox_path_only() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin".to_string())];
        assert_eq!(resolve_program("sh", &env).unwrap(), "/bin/sh");
        assert_eq!(resolve_program("/x/y", &env).unwrap(), "/x/y");
        let none = vec![("PATH".to_string(), "/nonexistent".to_string())];
        assert!(resolve_program("sh", &none)
            .unwrap_err()
            .contains("not found"));
    }

    #[test]
    fn the_embedded_filters_are_the_policy_compiled_for_this_host() {
        let embedded = seccomp_filters().unwrap();
        assert_eq!(embedded, tako_seccomp::compile_for_host().unwrap());
        assert_eq!(
            tako_seccomp::CompiledFilters::from_bytes(&embedded.to_bytes()),
            Some(embedded)
        );
    }
}
