//! The inside of a sandbox: the helper process and the pid-namespace init.
//!
//! ```text
//! supervisor (host, maybe multi-threaded)
//!   └─ helper   = `tako-vm __sandbox-helper`, a fresh single-threaded exec of our binary:
//!      unshare(user, mount, pid, ipc, uts, net, cgroup) → id maps written by the supervisor
//!      └─ init  = pid 1 of the new pid namespace: mounts, pivot_root, hostname, lo up,
//!         │       starts the payload, enforces the timeout, kills every leftover,
//!         │       streams /output back, reports the exit
//!         └─ payload: rlimits, uid 1000, no capabilities, no_new_privs, seccomp, execve
//! ```
//!
//! Everything here runs after an `exec`, single-threaded, so forking is safe. The control
//! socket is fd 3; stdout and stderr are the capture pipes of the supervisor.
//!
//! A single-threaded supervisor (the CLI) saves the helper level: it clones the init
//! directly into new user, mount, pid, ipc, uts and net namespaces
//! ([`init_in_namespaces_main`]). While that init builds the filesystem, the supervisor
//! creates the run's cgroup, moves the init into it and applies the limits; the init starts
//! the payload only after that ([`Kind::Limited`]), and then adds its cgroup namespace, so
//! it is rooted at the run's cgroup as in the helper's case.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

use super::spec::SandboxSpec;
use super::wire::{self, ArtifactHeader, ExitReport, Failure, InitPid, Kind, Mapped};
use super::{mounts, privs};

/// `argv[1]` that makes our binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox-helper";
/// The control socket's fd number in the helper.
pub const CTL_FD: i32 = 3;

fn fail(ctl: &mut File, msg: String) -> ! {
    let _ = wire::write_json(ctl, Kind::SetupError, &Failure { message: msg });
    std::process::exit(1)
}

/// The namespaces of a sandbox but its cgroup namespace, which must be created after the move
/// into the run's cgroup (it is rooted at the creator's cgroup).
pub const NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWNET);

/// Why namespaces could not be created, with the usual fix.
pub fn namespaces_error(e: impl std::fmt::Display) -> String {
    format!("cannot create namespaces: {e}; unprivileged user namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)")
}

/// Entry point of `tako-vm __sandbox-helper`. Never returns.
pub fn helper_main() -> ! {
    let (mut ctl, spec) = start();
    if let Err(e) = unshare(NAMESPACES | CloneFlags::CLONE_NEWCGROUP) {
        fail(&mut ctl, namespaces_error(e));
    }
    let mapped = mapped(&mut ctl, true);
    // The helper and the init share the control socket: the init starts writing only after
    // the helper's last frame (InitPid) is out, signalled through this pipe.
    let (go_r, go_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => fail(&mut ctl, format!("pipe: {e}")),
    };
    // SAFETY: this process is single-threaded (fresh exec, no threads started).
    match unsafe { fork() } {
        Err(e) => fail(&mut ctl, format!("fork of the sandbox init: {e}")),
        Ok(ForkResult::Child) => {
            drop(go_w);
            let mut byte = [0u8; 1];
            if File::from(go_r).read_exact(&mut byte).is_err() {
                std::process::exit(1);
            }
            init_main(spec, ctl, mapped.eth0, false)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(go_r);
            let _ = wire::write_json(
                &mut ctl,
                Kind::InitPid,
                &InitPid {
                    pid: child.as_raw(),
                },
            );
            drop(ctl);
            let _ = File::from(go_w).write_all(&[1]);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => std::process::exit(c),
                    Ok(WaitStatus::Signaled(_, s, _)) => std::process::exit(128 + s as i32),
                    Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
                    Err(_) => std::process::exit(1),
                }
            }
        }
    }
}

/// Entry point of an init cloned by the supervisor straight into [`NAMESPACES`] (it is pid 1
/// already, and the supervisor knows its pid). Never returns.
pub fn init_in_namespaces_main() -> ! {
    // Placed on another CPU by the caller to be built there; the payload gets the caller's
    // CPUs.
    super::cpus::restore_caller_mask();
    let (mut ctl, spec) = start();
    // The supervisor maps us without being asked (it made the namespaces).
    let mapped = mapped(&mut ctl, false);
    init_main(spec, ctl, mapped.eth0, true)
}

/// Common start of the helper and of a cloned init: the control socket (fd 3), death with
/// the supervisor, and the spec.
fn start() -> (File, SandboxSpec) {
    // SAFETY: the supervisor passes the control socket as fd 3; nothing else owns it.
    let mut ctl = unsafe { File::from_raw_fd(CTL_FD) };
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() == 1 {
        std::process::exit(1);
    }
    let spec: SandboxSpec = match wire::read_frame(&mut ctl) {
        Ok(Some((Kind::Spec, body))) => match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => fail(&mut ctl, format!("bad sandbox spec: {e}")),
        },
        _ => std::process::exit(1),
    };
    (ctl, spec)
}

/// Reports the namespaces (`report`), waits for the id maps (and the network), and becomes
/// root of the user namespace when the map has one.
fn mapped(ctl: &mut File, report: bool) -> Mapped {
    if report && wire::write_frame(ctl, Kind::Unshared, &[]).is_err() {
        std::process::exit(1);
    }
    // While the supervisor writes the id maps.
    if let Err(e) = privs::shed_inherited() {
        fail(ctl, e);
    }
    let mapped: Mapped = match wire::read_frame(ctl) {
        Ok(Some((Kind::Mapped, body))) => match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => fail(ctl, format!("bad id map answer: {e}")),
        },
        _ => std::process::exit(1),
    };
    if mapped.init_uid == 0 {
        let root = (Uid::from_raw(0), Gid::from_raw(0));
        if let Err(e) = nix::unistd::setresgid(root.1, root.1, root.1)
            .and_then(|_| nix::unistd::setresuid(root.0, root.0, root.0))
        {
            fail(
                ctl,
                format!("cannot become root of the user namespace: {e}"),
            );
        }
        let _ = nix::unistd::setgroups(&[]);
    }
    mapped
}

/// The pid-namespace init. `wait_limited`: a cloned init, which waits for its cgroup
/// ([`Kind::Limited`]) before it starts the payload.
fn init_main(spec: SandboxSpec, mut ctl: File, eth0: Option<wire::Eth0>, wait_limited: bool) -> ! {
    let t0 = Instant::now();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The usual 022, whatever the server's umask: the injected /code and /input files are
    // created here for uid 1000 to read (under systemd's UMask=0027 they were 0440 and
    // /code/main.py unreadable), and the payload inherits it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if let Err(e) = mounts::enter_rootfs(&spec) {
        fail(&mut ctl, e);
    }
    if let Err(e) = nix::unistd::sethostname(&spec.hostname) {
        fail(&mut ctl, format!("sethostname: {e}"));
    }
    if let Err(e) = mounts::loopback_up() {
        fail(&mut ctl, e);
    }
    if let Some(n) = eth0 {
        if let Err(e) = configure_eth0(n) {
            fail(
                &mut ctl,
                format!("network setup: sandbox side of the veth: {e}"),
            );
        }
    }
    // Nobody in the sandbox may ptrace or read the memory of the init.
    let _ = nix::sys::prctl::set_dumpable(false);
    let filters = match super::privs::seccomp_filters() {
        Ok(f) => f,
        Err(e) => fail(&mut ctl, format!("seccomp policy: {e}")),
    };
    if wait_limited {
        match wire::read_frame(&mut ctl) {
            Ok(Some((Kind::Limited, _))) => {}
            _ => std::process::exit(1),
        }
        // In the run's cgroup now: the cgroup namespace is rooted there.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWCGROUP) {
            fail(&mut ctl, namespaces_error(e));
        }
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = chld.thread_block();
    let setup_ms = t0.elapsed().as_millis() as u64;

    // SAFETY: the init is single-threaded.
    let payload = match unsafe { fork() } {
        Err(e) => fail(&mut ctl, format!("fork of the payload: {e}")),
        Ok(ForkResult::Child) => {
            let _ = SigSet::all().thread_unblock();
            let _ = nix::unistd::setsid();
            let err = privs::drop_and_exec(&spec, &filters);
            let _ = writeln!(std::io::stderr(), "tako-vm: {err}");
            // SAFETY: _exit in a forked child skips Rust destructors on purpose.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    let started = Instant::now();
    let _ = wire::write_frame(&mut ctl, Kind::Started, &[]);

    let (status, timed_out) = supervise(payload, &spec, &chld);
    let execution_ms = started.elapsed().as_millis() as u64;
    // The run ends with its main process: nothing it started survives it.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap_all();

    if let Some(out) = &spec.output {
        send_artifacts(
            &mut ctl,
            out.max_file_bytes,
            out.max_total_bytes,
            out.max_files,
        );
    }
    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, None),
    };
    let report = ExitReport {
        code,
        signal,
        timed_out,
        execution_ms,
        setup_ms,
    };
    let _ = wire::write_json(&mut ctl, Kind::Exit, &report);
    std::process::exit(0)
}

/// Address, link up and default route of the veth's sandbox side (our own namespace).
fn configure_eth0(n: wire::Eth0) -> std::io::Result<()> {
    use super::netlink;
    let i = netlink::index_of("eth0")?;
    netlink::add_address(i, n.addr, 30)?;
    netlink::link_up(i)?;
    netlink::add_default_route(i, n.gateway)?;
    if let Some((addr, gateway)) = n.v6 {
        netlink::add_address(i, addr, 126)?;
        netlink::add_default_route(i, gateway)?;
    }
    Ok(())
}

/// Waits for the payload; on timeout SIGTERM to everyone, SIGKILL after the grace.
fn supervise(payload: Pid, spec: &SandboxSpec, chld: &SigSet) -> (Option<WaitStatus>, bool) {
    let deadline = Instant::now() + Duration::from_millis(spec.timeout_ms);
    let mut kill_at: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(s) if s.pid() == Some(payload) => {
                    if matches!(s, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                        return (Some(s), timed_out);
                    }
                }
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return (None, timed_out),
            }
        }
        let now = Instant::now();
        let next = match kill_at {
            None if now >= deadline => {
                timed_out = true;
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
                let at = now + Duration::from_millis(spec.kill_grace_ms);
                kill_at = Some(at);
                at
            }
            None => deadline,
            Some(at) if now >= at => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                now + Duration::from_secs(3600)
            }
            Some(at) => at,
        };
        let wait = next.saturating_duration_since(Instant::now());
        sigtimedwait(chld, wait);
    }
}

fn sigtimedwait(set: &SigSet, d: Duration) {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and ts are valid for the call; the siginfo pointer may be null.
    unsafe {
        libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts);
    }
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Streams the top-level regular files of `/output` (never following symlinks).
fn send_artifacts(ctl: &mut File, max_file: u64, max_total: u64, max_files: u32) {
    let Ok(rd) = std::fs::read_dir("/output") else {
        return;
    };
    let (mut total, mut sent) = (0u64, 0u32);
    for entry in rd.flatten() {
        if sent >= max_files {
            break;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\\') {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.file_type().is_file() || meta.len() > max_file {
            continue;
        }
        if total + meta.len() > max_total {
            break;
        }
        let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(entry.path())
        else {
            continue;
        };
        match f.metadata() {
            Ok(m) if m.file_type().is_file() && m.ino() == meta.ino() => {}
            _ => continue,
        }
        let size = meta.len();
        total += size;
        sent += 1;
        let hdr = ArtifactHeader { name, size };
        if wire::write_json(ctl, Kind::ArtifactBegin, &hdr).is_err() {
            return;
        }
        let mut left = size;
        let mut buf = vec![0u8; wire::CHUNK];
        while left > 0 {
            let want = (left as usize).min(buf.len());
            match f.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if wire::write_frame(ctl, Kind::ArtifactData, &buf[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            }
        }
        if wire::write_frame(ctl, Kind::ArtifactEnd, &[]).is_err() {
            return;
        }
    }
}
