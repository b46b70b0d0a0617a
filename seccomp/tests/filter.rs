//! Real-kernel tests of the builtin policy: a forked child installs the filters and reports
//! what the kernel answered to a list of syscalls; another child runs Python under them.
//!
//! Children of the (multi-threaded) test process only use raw syscalls and libc functions that
//! are safe after `fork`, and leave with `_exit`. Everything that allocates (compiling the
//! filters, building argv) happens in the parent before `fork`.

use std::ffi::CString;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libc::{c_int, c_long, pid_t};
use tako_seccomp::{compile_for_host, CompiledFilters};

/// What a syscall returned: the value, or the errno.
type Outcome = Result<c_long, c_int>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Success,
    Errno(c_int),
}

struct Check {
    name: &'static str,
    expect: Expect,
    run: fn() -> Outcome,
}

/// Bytes of one mismatch report sent from the child: check index, returned value, errno.
const REPORT_LEN: usize = 4 + 8 + 4;
/// Check index of the last report, sent once every check has run.
const DONE: u32 = u32::MAX;

const X32_SYSCALL_BIT: c_long = 0x4000_0000;
const PR_GET_SECCOMP: c_long = 21;
const PR_SET_SECCOMP: c_long = 22;
const PR_SET_MM: c_long = 35;
const KEYCTL_GET_KEYRING_ID: c_long = 0;
const KEY_SPEC_SESSION_KEYRING: c_long = -3;
const SECCOMP_GET_ACTION_AVAIL: c_long = 2;
const TIOCSTI: c_long = 0x5412;
const BPF_PROG_LOAD: c_long = 5;
/// `SECCOMP_RET_ALLOW`, for `SECCOMP_GET_ACTION_AVAIL`.
static ALLOW_ACTION: [u32; 1] = [libc::SECCOMP_RET_ALLOW];

/// A path that does not exist, as a syscall argument.
fn nonexistent() -> c_long {
    c"/nonexistent-tako-seccomp-test".as_ptr() as c_long
}

fn filters() -> &'static CompiledFilters {
    static FILTERS: OnceLock<CompiledFilters> = OnceLock::new();
    FILTERS.get_or_init(|| compile_for_host().expect("the builtin policy compiles for the host"))
}

/// seccompiler's compilation of the same policy (the reference the installed program matches).
fn reference_filters() -> &'static CompiledFilters {
    static FILTERS: OnceLock<CompiledFilters> = OnceLock::new();
    FILTERS.get_or_init(|| {
        let arch = tako_seccomp::Arch::host().expect("supported host");
        tako_seccomp::Policy::builtin()
            .and_then(|p| p.compile_reference(arch))
            .expect("the builtin policy compiles with seccompiler")
    })
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Raw `syscall(2)`.
///
/// # Safety
///
/// Same contract as the syscall itself: pointer arguments must be null or valid for the call,
/// and the call must not break invariants of the (forked, single-threaded) process.
unsafe fn sys(nr: c_long, args: [c_long; 6]) -> Outcome {
    // SAFETY: forwarded to the caller.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if ret == -1 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// If `outcome` comes from a fork-like call: `_exit` in the new child, reap it in the parent.
fn reap_if_forked(outcome: Outcome) -> Outcome {
    match outcome {
        Ok(0) => {
            // SAFETY: we are the new child of a fork-like call; leave at once.
            unsafe { libc::_exit(0) }
        }
        Ok(pid) => {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer; `pid` is our child.
            let reaped = unsafe { libc::waitpid(pid as pid_t, &mut status, 0) };
            if reaped == pid as pid_t && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(pid)
            } else {
                Err(-1)
            }
        }
        Err(errno) => Err(errno),
    }
}

fn pipe_roundtrip() -> Outcome {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    let mut buf = [0u8; 4];
    // SAFETY: the fds were just created; the buffers are valid for their lengths.
    let (written, read) = unsafe {
        let written = libc::write(fds[1], b"ping".as_ptr().cast(), 4);
        let read = libc::read(fds[0], buf.as_mut_ptr().cast(), 4);
        libc::close(fds[0]);
        libc::close(fds[1]);
        (written, read)
    };
    if written == 4 && read == 4 && buf == *b"ping" {
        Ok(0)
    } else {
        Err(errno())
    }
}

/// `ioctl(request)` on a fresh pipe.
fn ioctl_on_pipe(request: c_long) -> Outcome {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    let mut value: c_int = 0;
    // SAFETY: FIONREAD writes an int to `value`; TIOCSTI reads one byte from it. Both fds
    // are ours.
    unsafe {
        let outcome = sys(
            libc::SYS_ioctl,
            [
                fds[0] as c_long,
                request,
                &mut value as *mut c_int as c_long,
                0,
                0,
                0,
            ],
        );
        libc::close(fds[0]);
        libc::close(fds[1]);
        outcome
    }
}

/// A [`Check`] making one raw syscall: `check!(name, expectation, nr, [args], "why harmless")`,
/// or `check!(fork name, ...)` for fork-like calls, whose new child `_exit`s at once.
///
/// Arguments are cast to `c_long` and padded to six with zeros. The last argument says why
/// the call is harmless in the throwaway child even if the filters let it through.
macro_rules! check {
    (fork $name:expr, $expect:expr, $nr:expr, [$($arg:expr),* $(,)?], $why:literal) => {
        check!(@make $name, $expect, $nr, [$($arg),*], $why, reap_if_forked)
    };
    ($name:expr, $expect:expr, $nr:expr, [$($arg:expr),* $(,)?], $why:literal) => {
        check!(@make $name, $expect, $nr, [$($arg),*], $why, std::convert::identity)
    };
    (@make $name:expr, $expect:expr, $nr:expr, [$($arg:expr),*], $why:literal, $finish:expr) => {
        Check {
            name: $name,
            expect: $expect,
            run: || {
                let _why_harmless: &str = $why;
                let given: &[c_long] = &[$($arg as c_long),*];
                let mut args = [0 as c_long; 6];
                args[..given.len()].copy_from_slice(given);
                // SAFETY: the call is harmless (see `$why`): pointers are null or point to
                // static C strings, and nothing done to this throwaway child matters.
                $finish(unsafe { sys($nr, args) })
            },
        }
    };
}

/// The syscalls tried under the filters, with what the builtin policy must answer.
///
/// `ptrace(PTRACE_TRACEME)` must stay after the fork-like checks: in the unfiltered control run
/// it makes the child traced, and a traced child stops on the next SIGCHLD.
#[rustfmt::skip]
fn checks() -> Vec<Check> {
    use libc::{ENOSYS, EPERM};
    use Expect::{Errno, Success};
    use libc::{AT_FDCWD, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, SIGCHLD};
    vec![
        check!("getpid", Success, libc::SYS_getpid, [], "no arguments"),
        Check { name: "pipe2 + write + read", expect: Success, run: pipe_roundtrip },
        Check { name: "getrandom", expect: Success, run: getrandom },
        Check { name: "socket(AF_UNIX)", expect: Success, run: unix_socket },
        Check { name: "ioctl(FIONREAD)", expect: Success, run: || ioctl_on_pipe(libc::FIONREAD as c_long) },
        Check { name: "ioctl(TIOCSTI)", expect: Errno(EPERM), run: || ioctl_on_pipe(TIOCSTI) },
        Check { name: "fork()", expect: Success, run: libc_fork },
        check!(fork "clone(SIGCHLD)", Success, libc::SYS_clone, [SIGCHLD], "fork-like: the child _exits"),
        check!(fork "clone(CLONE_NEWUSER | SIGCHLD)", Errno(EPERM), libc::SYS_clone, [CLONE_NEWUSER | SIGCHLD], "fork-like"),
        check!(fork "clone(CLONE_NEWNET | SIGCHLD)", Errno(EPERM), libc::SYS_clone, [CLONE_NEWNET | SIGCHLD], "fork-like"),
        check!(fork "clone(CLONE_NEWPID | CLONE_NEWNS | SIGCHLD)", Errno(EPERM), libc::SYS_clone, [CLONE_NEWPID | CLONE_NEWNS | SIGCHLD], "fork-like"),
        check!(fork "clone3", Errno(ENOSYS), libc::SYS_clone3, [0, 0], "a null struct of size 0 creates nothing"),
        check!("unshare(CLONE_NEWUSER)", Errno(EPERM), libc::SYS_unshare, [CLONE_NEWUSER], "only this child"),
        check!("unshare(CLONE_NEWNS)", Errno(EPERM), libc::SYS_unshare, [CLONE_NEWNS], "only this child"),
        check!("setns(-1)", Errno(EPERM), libc::SYS_setns, [-1, 0], "invalid fd"),
        check!("mount", Errno(EPERM), libc::SYS_mount, [nonexistent(), nonexistent(), c"tmpfs".as_ptr(), 0, 0], "no such target"),
        check!("umount2", Errno(EPERM), libc::SYS_umount2, [nonexistent(), 0], "no such target"),
        check!("chroot", Errno(EPERM), libc::SYS_chroot, [nonexistent()], "no such directory"),
        check!("pivot_root", Errno(EPERM), libc::SYS_pivot_root, [nonexistent(), nonexistent()], "no such directory"),
        check!("open_tree", Errno(EPERM), libc::SYS_open_tree, [AT_FDCWD, nonexistent(), 0], "no such path"),
        check!("fsopen", Errno(EPERM), libc::SYS_fsopen, [c"tmpfs".as_ptr(), 0], "an fd at most"),
        check!("mknodat", Errno(EPERM), libc::SYS_mknodat, [AT_FDCWD, c"/nonexistent-tako/x".as_ptr(), libc::S_IFIFO | 0o600, 0], "no such directory"),
        check!("ptrace(PTRACE_TRACEME)", Errno(EPERM), libc::SYS_ptrace, [libc::PTRACE_TRACEME], "only this child"),
        check!("process_vm_readv", Errno(EPERM), libc::SYS_process_vm_readv, [1, 0, 0, 0, 0, 0], "zero iovecs"),
        check!("keyctl(KEYCTL_GET_KEYRING_ID)", Errno(EPERM), libc::SYS_keyctl, [KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0], "a query"),
        check!("add_key", Errno(EPERM), libc::SYS_add_key, [0, 0, 0, 0, 0], "null pointers"),
        check!("bpf(BPF_PROG_LOAD)", Errno(EPERM), libc::SYS_bpf, [BPF_PROG_LOAD, 0, 0], "null attributes"),
        check!("perf_event_open", Errno(EPERM), libc::SYS_perf_event_open, [0, 0, -1, -1, 0], "null attributes"),
        check!("userfaultfd", Errno(EPERM), libc::SYS_userfaultfd, [libc::O_CLOEXEC], "an fd at most"),
        check!("io_uring_setup", Errno(EPERM), libc::SYS_io_uring_setup, [1, 0], "null params"),
        check!("init_module", Errno(EPERM), libc::SYS_init_module, [0, 0, c"".as_ptr()], "an empty image"),
        check!("finit_module", Errno(EPERM), libc::SYS_finit_module, [-1, c"".as_ptr(), 0], "invalid fd"),
        check!("seccomp(SECCOMP_GET_ACTION_AVAIL)", Errno(EPERM), libc::SYS_seccomp, [SECCOMP_GET_ACTION_AVAIL, 0, ALLOW_ACTION.as_ptr()], "a query"),
        check!("personality(query)", Errno(EPERM), libc::SYS_personality, [0xffff_ffff_u32], "a query"),
        check!("x32 getpid", Errno(EPERM), X32_SYSCALL_BIT | libc::SYS_getpid, [], "no arguments"),
        check!("prctl(PR_SET_NAME)", Success, libc::SYS_prctl, [libc::PR_SET_NAME, c"tako-test".as_ptr()], "names this child"),
        Check { name: "prctl(PR_GET_NAME)", expect: Success, run: get_name },
        check!("prctl(PR_SET_NO_NEW_PRIVS)", Success, libc::SYS_prctl, [libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0], "only this child"),
        check!("prctl(PR_GET_SECCOMP)", Errno(EPERM), libc::SYS_prctl, [PR_GET_SECCOMP], "a query"),
        check!("prctl(PR_SET_SECCOMP, invalid mode)", Errno(EPERM), libc::SYS_prctl, [PR_SET_SECCOMP, 99], "an invalid mode installs nothing"),
        check!("prctl(PR_SET_MM, invalid)", Errno(EPERM), libc::SYS_prctl, [PR_SET_MM, 9999], "an invalid sub-option"),
        check!("prlimit64(0, RLIMIT_NOFILE, set nothing)", Success, libc::SYS_prlimit64, [0, libc::RLIMIT_NOFILE, 0, 0], "neither reads nor writes"),
        check!("prlimit64(1, RLIMIT_NOFILE, set nothing)", Errno(EPERM), libc::SYS_prlimit64, [1, libc::RLIMIT_NOFILE, 0, 0], "neither reads nor writes"),
    ]
}

fn getrandom() -> Outcome {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for 8 bytes.
    unsafe {
        sys(
            libc::SYS_getrandom,
            [buf.as_mut_ptr() as c_long, 8, 0, 0, 0, 0],
        )
    }
}

fn unix_socket() -> Outcome {
    let (domain, kind) = (libc::AF_UNIX as c_long, libc::SOCK_STREAM as c_long);
    // SAFETY: integer arguments; the new fd is closed right away.
    let fd = unsafe { sys(libc::SYS_socket, [domain, kind, 0, 0, 0, 0]) }?;
    // SAFETY: `fd` was just created by us.
    unsafe { libc::close(fd as c_int) };
    Ok(fd)
}

fn libc_fork() -> Outcome {
    // SAFETY: the new child only calls `_exit` (in `reap_if_forked`).
    let pid = unsafe { libc::fork() };
    reap_if_forked(if pid == -1 {
        Err(errno())
    } else {
        Ok(pid as c_long)
    })
}

fn get_name() -> Outcome {
    let mut name = [0u8; 16];
    let option = libc::PR_GET_NAME as c_long;
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe {
        sys(
            libc::SYS_prctl,
            [option, name.as_mut_ptr() as c_long, 0, 0, 0, 0],
        )
    }
}

/// A check whose outcome differed from its expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mismatch {
    name: &'static str,
    expected: Expect,
    got: Outcome,
}

/// How a forked child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Exited(c_int),
    Signaled(c_int),
}

fn wait_for(pid: pid_t, timeout: Duration) -> End {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; `pid` is our child.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(reaped >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if reaped == pid {
            return if libc::WIFEXITED(status) {
                End::Exited(libc::WEXITSTATUS(status))
            } else {
                End::Signaled(libc::WTERMSIG(status))
            };
        }
        if Instant::now() > deadline {
            // SAFETY: `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let end = wait_for(pid, Duration::from_secs(10));
            panic!("child {pid} timed out after {timeout:?} and was killed ({end:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exit code of a child that could not install the filters.
const APPLY_FAILED: c_int = 90;

/// Forks a child that (if `filters` is given) sets no_new_privs and installs them, then runs
/// every check and reports mismatches through a pipe.
fn run_checks(filters: Option<&CompiledFilters>) -> Vec<Mismatch> {
    let checks = checks();
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let [read_fd, write_fd] = fds;

    // SAFETY: the child only uses raw syscalls, non-allocating code and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: in the single-threaded child: close our copy of the read end, set
        // no_new_privs as the sandbox does, install the filters, then only run the checks.
        unsafe {
            libc::close(read_fd);
            if let Some(filters) = filters {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(APPLY_FAILED);
                }
                if filters.apply().is_err() {
                    libc::_exit(APPLY_FAILED);
                }
            }
            for (index, check) in checks.iter().enumerate() {
                let got = (check.run)();
                let ok = match (check.expect, got) {
                    (Expect::Success, Ok(_)) => true,
                    (Expect::Errno(want), Err(errno)) => want == errno,
                    _ => false,
                };
                if !ok {
                    let mut report = [0u8; REPORT_LEN];
                    report[..4].copy_from_slice(&(index as u32).to_ne_bytes());
                    let (value, errno) = match got {
                        Ok(value) => (value, 0),
                        Err(errno) => (-1, errno),
                    };
                    report[4..12].copy_from_slice(&value.to_ne_bytes());
                    report[12..].copy_from_slice(&errno.to_ne_bytes());
                    libc::write(write_fd, report.as_ptr().cast(), REPORT_LEN);
                }
            }
            let mut done = [0u8; REPORT_LEN];
            done[..4].copy_from_slice(&DONE.to_ne_bytes());
            libc::write(write_fd, done.as_ptr().cast(), REPORT_LEN);
            libc::_exit(0);
        }
    }

    // SAFETY: closing the parent's copy of the write end, which it owns.
    unsafe { libc::close(write_fd) };
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is valid for its length; `read_fd` is ours.
        let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: closing the read end, which the parent owns.
    unsafe { libc::close(read_fd) };
    let end = wait_for(pid, Duration::from_secs(60));
    assert_eq!(
        end,
        End::Exited(0),
        "the check child did not finish cleanly"
    );
    assert_eq!(bytes.len() % REPORT_LEN, 0);
    let (reports, done) = bytes.split_at(bytes.len().saturating_sub(REPORT_LEN));
    assert_eq!(
        done.get(..4),
        Some(&DONE.to_ne_bytes()[..]),
        "the checks did not all run"
    );
    reports
        .chunks(REPORT_LEN)
        .map(|report| {
            let index = u32::from_ne_bytes(report[..4].try_into().unwrap()) as usize;
            let value = i64::from_ne_bytes(report[4..12].try_into().unwrap());
            let errno = i32::from_ne_bytes(report[12..].try_into().unwrap());
            let check = &checks[index];
            Mismatch {
                name: check.name,
                expected: check.expect,
                got: if errno == 0 {
                    Ok(value as c_long)
                } else {
                    Err(errno)
                },
            }
        })
        .collect()
}

#[test]
fn the_kernel_enforces_the_builtin_policy() {
    let mismatches = run_checks(Some(filters()));
    assert!(mismatches.is_empty(), "under the filters: {mismatches:#?}");
}

#[test]
fn the_kernel_gives_the_same_answers_under_seccompilers_filters() {
    let mismatches = run_checks(Some(reference_filters()));
    assert!(
        mismatches.is_empty(),
        "under seccompiler's filters: {mismatches:#?}"
    );
}

#[test]
fn the_checks_detect_an_unfiltered_process() {
    // Control run without filters: every check expected to succeed still succeeds, and the
    // checks on denied syscalls report mismatches, so the filtered test can fail.
    let mismatches = run_checks(None);
    println!("without filters, {} checks differ:", mismatches.len());
    for mismatch in &mismatches {
        println!("  {mismatch:?}");
    }
    assert!(
        mismatches.iter().all(|m| m.expected != Expect::Success),
        "allowed calls failed without any filter: {mismatches:#?}"
    );
    for name in ["clone3", "x32 getpid", "prctl(PR_GET_SECCOMP)", "setns(-1)"] {
        assert!(
            mismatches.iter().any(|m| m.name == name),
            "{name} behaved as under the filters: {mismatches:#?}"
        );
    }
}

#[test]
fn the_filters_are_installed_and_inherited() {
    // The filters survive fork, and cannot be installed a second time once they are on
    // (`seccomp` is denied). The Python test checks `Seccomp_filters: 2` in /proc/self/status.
    let filters = filters();
    // SAFETY: the child only uses raw syscalls and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: single-threaded child; a grandchild created by fork only calls `_exit`.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || filters.apply().is_err() {
                libc::_exit(APPLY_FAILED);
            }
            // Applying a second time is refused: `seccomp` is denied now.
            if filters.apply().is_ok() {
                libc::_exit(2);
            }
            match libc::fork() {
                -1 => libc::_exit(3),
                0 => {
                    // mount is still denied in the grandchild.
                    let ret = libc::syscall(libc::SYS_umount2, c"/".as_ptr(), 0);
                    let ok = ret == -1 && *libc::__errno_location() == libc::EPERM;
                    libc::_exit(if ok { 0 } else { 4 });
                }
                grandchild => {
                    let mut status = 0;
                    libc::waitpid(grandchild, &mut status, 0);
                    libc::_exit(if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        5
                    });
                }
            }
        }
    }
    assert_eq!(wait_for(pid, Duration::from_secs(60)), End::Exited(0));
}

/// Executes `/usr/bin/python3 -c <script> args..` under the filters; returns how it ended.
fn run_python_under_filters(script: &str, args: &[&str]) -> End {
    let filters = filters();
    let python = CString::new("/usr/bin/python3").unwrap();
    let argv: Vec<CString> = ["python3", "-c", script]
        .iter()
        .chain(args)
        .map(|arg| CString::new(*arg).unwrap())
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: Vec<CString> = [
        "PATH=/usr/bin:/bin",
        "LC_ALL=C.UTF-8",
        "PYTHONDONTWRITEBYTECODE=1",
    ]
    .iter()
    .map(|var| CString::new(*var).unwrap())
    .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|v| v.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    // SAFETY: the child only calls prctl, apply (seccomp), execve and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: single-threaded child; argv/env point to NUL-terminated arrays built
        // before fork.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || filters.apply().is_err() {
                libc::_exit(APPLY_FAILED);
            }
            libc::execve(python.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    wait_for(pid, Duration::from_secs(300))
}

#[test]
fn python_runs_under_the_filters() {
    assert!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "/usr/bin/python3 is needed by this test"
    );
    let script = include_str!("python_workload.py");
    // seccompiler's two programs (enosys, main), with the binary search of Policy::compile.
    assert_eq!(filters().filter_lengths().len(), 2);
    assert_eq!(
        run_python_under_filters(script, &["--expect-seccomp-filters=2"]),
        End::Exited(0)
    );
}

#[cfg(target_arch = "x86_64")] // The script uses x86_64 syscall numbers.
#[test]
fn python_sees_the_denials() {
    // Python's own view of the denials: EPERM, and ENOSYS for clone3.
    let script = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return ret, ctypes.get_errno()
assert call(272, 0x10000000) == (-1, errno.EPERM)      # unshare(CLONE_NEWUSER)
assert call(101, 0) == (-1, errno.EPERM)               # ptrace(PTRACE_TRACEME)
assert call(435, 0, 0) == (-1, errno.ENOSYS)           # clone3
try:
    os.chroot("/")
    sys.exit(3)
except PermissionError:
    pass
sys.exit(0)
"#;
    assert_eq!(run_python_under_filters(script, &[]), End::Exited(0));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn i386_syscalls_kill_the_process() {
    /// getpid through `int 0x80` (i386 number 20); returns the raw result.
    fn int80_getpid() -> c_long {
        let mut ret: c_long = 20;
        // SAFETY: a syscall without arguments; `int 0x80` clobbers r8-r11 on x86_64.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("rax") ret,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
            );
        }
        ret
    }
    let filters = filters();
    for filtered in [false, true] {
        // SAFETY: the child only uses raw syscalls and `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: single-threaded child.
            unsafe {
                if filtered
                    && (libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || filters.apply().is_err())
                {
                    libc::_exit(APPLY_FAILED);
                }
                let ok = int80_getpid() == libc::syscall(libc::SYS_getpid);
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let end = wait_for(pid, Duration::from_secs(60));
        if !filtered && end != End::Exited(0) {
            println!("int 0x80 does not work on this kernel ({end:?}): skipping");
            return;
        }
        let expected = if filtered {
            End::Signaled(libc::SIGSYS)
        } else {
            End::Exited(0)
        };
        assert_eq!(end, expected, "filtered: {filtered}");
    }
}
