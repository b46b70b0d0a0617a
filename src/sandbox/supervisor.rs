//! Host side of one run: cgroup, helper process, id maps, bounded capture, host deadline,
//! artifact intake and clean-up on every path.
//!
//! The helper is started with `std::process::Command` (fork/exec done by std); the only code
//! run between fork and exec is one `dup2`, which is async-signal-safe. So a multi-threaded
//! caller (the server) is safe.

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use super::cgroup::{Cgroups, RunCgroup, SelfJoin, Usage};
use super::child::{CTL_FD, HELPER_ARG};
use super::idmap::IdMap;
use super::net;
use super::spec::SandboxSpec;
use super::wire::{self, ArtifactHeader, ExitReport, Failure, FrameDecoder, InitPid, Kind, Mapped};
use crate::exec::truncate::CappedBuffer;

/// Phase timings with `TAKO_VM_TRACE=1`.
pub use rootfs_builder::trace;

/// Errors that keep a run from producing an outcome at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The helper could not be started.
    #[error("cannot start the sandbox helper {path}: {source}")]
    Spawn {
        /// Helper binary.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// cgroup setup failed.
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
    /// id maps failed.
    #[error(transparent)]
    IdMap(#[from] super::idmap::IdMapError),
    /// The network could not be set up (the run is refused, never run with an open network).
    #[error(transparent)]
    Net(#[from] super::net::NetError),
    /// Local I/O failure (pipes, artifact files).
    #[error("sandbox i/o: {0}")]
    Io(#[from] io::Error),
    /// Limits that would not limit ([`super::spec::Limits::check`]).
    #[error("invalid sandbox limits: {0}")]
    Limits(String),
}

/// How runs are performed on this host (shared by many runs).
#[derive(Debug, Clone)]
pub struct Runner {
    /// Our own binary, re-executed as the helper.
    pub helper_exe: PathBuf,
    /// Id-map strategy.
    pub idmap: IdMap,
    /// cgroups for limits; `None` only when running without limits was allowed explicitly.
    pub cgroups: Option<Cgroups>,
    /// Address pool of network-enabled runs.
    pub net_pool: (std::net::Ipv4Addr, u8),
    /// Keep the nftables table between runs (a server); a CLI run removes it when idle.
    pub keep_net_table: bool,
    /// Pre-started helpers (servers); `None`: every run starts its own.
    pub pool: Option<std::sync::Arc<Pool>>,
    /// The start-up sweep of dead runs' cgroups was left to the first run
    /// ([`HostConfig::defer_sweep`](super::HostConfig::defer_sweep)).
    pub sweep_deferred: bool,
    /// See [`super::HostConfig::clone_init`].
    pub clone_init: bool,
}

/// Per-run options on the host side.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Unique id of the run (cgroup name).
    pub run_id: String,
    /// Hard host deadline for the whole run (setup + execution + grace).
    pub host_deadline: Duration,
    /// Keep at least this many leading bytes of stdout.
    pub stdout_keep: usize,
    /// Keep at least this many leading bytes of stderr.
    pub stderr_keep: usize,
    /// Copy the payload's stdout/stderr to ours as it arrives (CLI).
    pub tee: bool,
    /// Where collected artifacts are written (`None`: hashed, not kept).
    pub artifacts_dir: Option<PathBuf>,
    /// Cancellation: once set, the whole sandbox is killed (checked at least every 100 ms).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// One collected artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedArtifact {
    /// File name.
    pub name: String,
    /// Bytes received.
    pub size: u64,
    /// sha256 hex computed on the host.
    pub sha256: String,
}

/// What one run produced, before any interpretation.
#[derive(Debug)]
pub struct Outcome {
    /// How the payload ended, when the init reported it.
    pub exit: Option<ExitReport>,
    /// The host deadline fired.
    pub host_timeout: bool,
    /// Setup failure reported by the inside.
    pub setup_error: Option<String>,
    /// stdout capture.
    pub stdout: CappedBuffer,
    /// stderr capture.
    pub stderr: CappedBuffer,
    /// Artifacts in collection order.
    pub artifacts: Vec<CollectedArtifact>,
    /// `result.json` contents when it was collected.
    pub result_json: Option<Vec<u8>>,
    /// cgroup usage and OOM verdict.
    pub usage: Usage,
    /// Milliseconds from spawn until the payload started (None if it never did).
    pub startup_ms: Option<u64>,
    /// Milliseconds of the whole run.
    pub total_ms: u64,
}

fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((File::from(r), File::from(w)))
}

fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// A valid artifact name: top-level, not hidden, no separators.
pub fn valid_artifact_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && !n.contains('/')
        && !n.contains('\\')
        && !n.contains('\0')
}

/// The artifact being received: header, running hash, bytes so far, its file, and the
/// kept contents when it is `result.json`.
struct Receiving {
    header: ArtifactHeader,
    hasher: Sha256,
    received: u64,
    file: Option<File>,
    keep: Option<Vec<u8>>,
}

struct Intake<'a> {
    opts: &'a RunOptions,
    max_file: u64,
    max_total: u64,
    max_files: u32,
    total: u64,
    current: Option<Receiving>,
    done: Vec<CollectedArtifact>,
    result_json: Option<Vec<u8>>,
}

impl Intake<'_> {
    fn begin(&mut self, h: ArtifactHeader) -> io::Result<()> {
        self.end_current(false);
        if self.done.len() >= self.max_files as usize {
            return Err(io::Error::other("more artifacts than the limit"));
        }
        if !valid_artifact_name(&h.name) || self.done.iter().any(|a| a.name == h.name) {
            return Err(io::Error::other(format!(
                "invalid artifact name {:?}",
                h.name
            )));
        }
        let file = match &self.opts.artifacts_dir {
            Some(d) => Some(
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(d.join(&h.name))?,
            ),
            None => None,
        };
        let keep = (h.name == "result.json").then(Vec::new);
        self.current = Some(Receiving {
            header: h,
            hasher: Sha256::new(),
            received: 0,
            file,
            keep,
        });
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(r) = self.current.as_mut() else {
            return Err(io::Error::other("artifact data without a header"));
        };
        r.received += bytes.len() as u64;
        self.total += bytes.len() as u64;
        if r.received > self.max_file || self.total > self.max_total {
            return Err(io::Error::other("artifact limits exceeded"));
        }
        r.hasher.update(bytes);
        if let Some(f) = &mut r.file {
            f.write_all(bytes)?;
        }
        if let Some(k) = &mut r.keep {
            k.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn end_current(&mut self, complete: bool) {
        if let Some(r) = self.current.take() {
            if complete {
                if let Some(k) = r.keep {
                    self.result_json = Some(k);
                }
                self.done.push(CollectedArtifact {
                    name: r.header.name,
                    size: r.received,
                    sha256: hex::encode(r.hasher.finalize()),
                });
            } else if let Some(d) = &self.opts.artifacts_dir {
                let _ = fs::remove_file(d.join(&r.header.name));
            }
        }
    }
}

impl Runner {
    /// Runs one sandbox to completion. Cleans up its cgroup on every path.
    pub fn run(&self, spec: &SandboxSpec, opts: &RunOptions) -> Result<Outcome, SandboxError> {
        let t0 = Instant::now();
        spec.limits.check().map_err(SandboxError::Limits)?;
        let mut spec = std::borrow::Cow::Borrowed(spec);
        let mut allowed = None;
        // Read once: what the sandbox is told and what the table lets through are the same.
        let resolvers = if spec.network.is_some() {
            net::Egress::resolvers()
        } else {
            Vec::new()
        };
        if let Some(n) = &spec.network {
            if !n.allowed_hosts.is_empty() {
                match net::resolve_allowed(&n.allowed_hosts) {
                    Ok(a) => allowed = Some(a),
                    Err(e) => return Err(SandboxError::Net(e)),
                }
            }
            net::add_network_files(spec.to_mut(), allowed.as_ref(), &resolvers);
        }
        let spec = spec.as_ref();
        let launched = self
            .clone_init
            .then(|| LAUNCHED.lock().unwrap_or_else(|e| e.into_inner()).take())
            .flatten();
        let mut spawned = match launched {
            Some(l) => l.finish()?,
            None => match self.pool.as_ref().and_then(|p| p.take()) {
                Some(s) => s,
                None => self.spawn_helper(&opts.run_id)?,
            },
        };
        trace(t0, "helper ready");
        // An init launched with id maps is used only with this run's spec queued and
        // `Mapped` sent ([`hand_spec`]); a different spec would run the wrong sandbox, and
        // id maps written without `Mapped` cannot be written again: the init is discarded
        // and a fresh one started.
        let handed_off = match spawned.handed.take() {
            None => false,
            Some(handed) if handed.as_ref() == Some(spec) => true,
            Some(_) => {
                drop(spawned);
                spawned = self.spawn_helper(&opts.run_id)?;
                false
            }
        };
        let mut cgroup = spawned.cgroup;
        let result = self.run_in(
            spec,
            opts,
            &mut cgroup,
            t0,
            NetState {
                wanted: spec.network.is_some(),
                run_id: &opts.run_id,
                allowed: allowed.as_ref(),
                resolvers: &resolvers,
                lease: None,
            },
            Helper {
                child: spawned.child,
                ctl: spawned.ctl,
                out_r: spawned.out_r,
                err_r: spawned.err_r,
                pid: spawned.pid,
                init_is_child: spawned.init_is_child,
                join: spawned.join,
                handed_off,
            },
        );
        trace(t0, "sandbox gone");
        if let Some(c) = cgroup {
            let _ = c.remove();
        }
        trace(t0, "cgroup removed");
        // A run that never started its payload still sweeps.
        self.sweep_if_deferred();
        reap_launchers();
        result.map(|mut o| {
            o.total_ms = t0.elapsed().as_millis() as u64;
            o
        })
    }

    /// The start-up sweep a CLI leaves to its run ([`HostConfig::defer_sweep`]): once per
    /// process, after the run's own cgroup holds its limits (or when the run is over).
    fn sweep_if_deferred(&self) {
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !self.sweep_deferred || DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some(c) = &self.cgroups {
            c.sweep_dead(super::host::owner_is_dead);
        }
    }

    /// Whether the init may be cloned here ([`clone_init`]): a single-threaded process (the
    /// CLI) whose helper binary is itself.
    fn may_clone_init(&self) -> bool {
        if !self.clone_init {
            return false;
        }
        // A cgroup manager built ahead on a thread (`cgroup::prepare`) is finished first.
        let joined = super::cgroup::settle();
        single_threaded(joined)
            && std::env::current_exe().is_ok_and(|me| me == self.helper_exe)
            && std::env::var_os("TAKO_VM_HELPER_EXEC").is_none()
    }

    /// Starts a helper in a fresh cgroup (limits not applied yet); it waits for its spec.
    /// On v1 the helper enters its cgroup itself between fork and exec ([`SelfJoin`]);
    /// elsewhere it is moved in, which costs one RCU grace period on current kernels
    /// (~10-25 ms), one reason why servers keep a few of these ready.
    ///
    /// A cloned init (`clone_init`) gets its cgroup later, while it builds its filesystem
    /// (see [`Runner::run`]).
    pub fn spawn_helper(&self, run_id: &str) -> Result<Spawned, SandboxError> {
        let init_is_child = self.may_clone_init();
        // v1: the new process enters the run's cgroup by itself, nothing is moved
        // ([`SelfJoin`]); where that is refused, it is moved in as on v2.
        let join = match self.cgroups.as_ref().and_then(|c| c.self_join(run_id)) {
            Some(j) => Some(j?).filter(|j| j.ready().is_ok()),
            None => None,
        };
        if init_is_child && join.is_some() {
            // Through a launcher that enters the cgroup and clones the init there.
            return Launch::start(join, None)?.finish();
        }
        let (cgroup, join_tasks) = match (&self.cgroups, join) {
            (Some(c), Some(j)) if !init_is_child => {
                let tasks = j.tasks();
                (Some(c.create_joined(j)?), Some(tasks))
            }
            (Some(c), _) if !init_is_child => (Some(c.create(run_id)?), None),
            _ => (None, None),
        };
        let (ours, theirs) = UnixStream::pair()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let child = if init_is_child {
            // A single-threaded caller (the CLI) clones the init itself into the namespaces,
            // without an exec of this binary (~2 ms) and without a helper level.
            let pid = clone_init(theirs.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd())?;
            HelperGuard::cloned(pid)
        } else {
            let theirs_fd = theirs.as_raw_fd();
            let mut cmd = Command::new(&self.helper_exe);
            cmd.arg(HELPER_ARG)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
            let joined = join_tasks.is_some();
            // SAFETY: the closure runs between fork and exec and only calls dup2(2) and
            // open/write/close (`JoinTasks::enter`, on data allocated before the fork), which
            // are async-signal-safe; dup2 also clears FD_CLOEXEC on the new descriptor.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(theirs_fd, CTL_FD) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(t) = &join_tasks {
                        t.enter()
                            .map_err(|(_, e)| io::Error::from_raw_os_error(e))?;
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
                path: self.helper_exe.display().to_string(),
                source,
            })?;
            drop(cmd); // closes our copies of the child's stdout/stderr write ends
            let guard = HelperGuard {
                pid: child.id() as i32,
                child: Some(child),
                reaped: false,
            };
            if let (Some(c), false) = (&cgroup, joined) {
                // The helper waits for its spec, so it runs nothing before the limits hold.
                c.add(guard.pid)?;
            }
            guard
        };
        drop(theirs);
        let pid = child.pid;
        Ok(Spawned {
            child,
            ctl: ours,
            out_r,
            err_r,
            cgroup,
            pid,
            init_is_child,
            join: None,
            handed: None,
        })
    }

    /// Runs the sandbox of `helper`. A helper comes in its cgroup; a cloned init
    /// (`init_is_child`) gets it once the id maps are written: the supervisor creates the
    /// cgroup, moves the init and applies the limits while the init builds its filesystem
    /// on the other CPU, then sends [`Kind::Limited`], before which the init starts nothing.
    fn run_in(
        &self,
        spec: &SandboxSpec,
        opts: &RunOptions,
        cgroup_slot: &mut Option<RunCgroup>,
        t0: Instant,
        mut net_state: NetState<'_>,
        helper: Helper,
    ) -> Result<Outcome, SandboxError> {
        let Helper {
            mut child,
            mut ctl,
            out_r,
            err_r,
            pid: helper_pid,
            init_is_child,
            mut join,
            handed_off,
        } = helper;
        if let Some(c) = cgroup_slot.as_ref() {
            c.apply(&spec.limits)?;
        }
        if !handed_off {
            wire::write_json(&mut ctl, Kind::Spec, spec)?;
        }
        trace(t0, "limits applied, spec sent");

        let mut out = Outcome {
            exit: None,
            host_timeout: false,
            setup_error: None,
            stdout: CappedBuffer::new(opts.stdout_keep),
            stderr: CappedBuffer::new(opts.stderr_keep),
            artifacts: Vec::new(),
            result_json: None,
            usage: Usage::default(),
            startup_ms: None,
            total_ms: 0,
        };
        // Usage is read when the init reports the exit (every task of the run but the init
        // is gone then), while the init still tears its namespaces down; else at the end.
        let mut usage_read = false;
        let (max_file, max_total, max_files) = spec
            .output
            .as_ref()
            .map(|o| (o.max_file_bytes, o.max_total_bytes, o.max_files))
            .unwrap_or((0, 0, 0));
        let mut intake = Intake {
            opts,
            max_file,
            max_total,
            max_files,
            total: 0,
            current: None,
            done: Vec::new(),
            result_json: None,
        };
        set_nonblocking(&ctl)?;
        set_nonblocking(&out_r)?;
        set_nonblocking(&err_r)?;
        let pidfd = super::pidfd::open(helper_pid)?;
        let deadline = t0 + opts.host_deadline;
        // A cloned init is known from the start; a helper reports its init (InitPid).
        let mut init_pid: Option<i32> = init_is_child.then_some(helper_pid);
        let mut decoder = FrameDecoder::default();
        let (mut ctl_open, mut out_open, mut err_open, mut helper_alive) = (true, true, true, true);
        let mut out_r = out_r;
        let mut err_r = err_r;
        let mut buf = vec![0u8; 64 << 10];
        let mut drain_until: Option<Instant> = None;
        let mut protocol_error = false;
        // A failure of the supervisor's own late set-up (the cloned init's cgroup).
        let mut late_error: Option<SandboxError> = None;

        if init_is_child {
            // A cloned init is in its namespaces already: no round trip for the id maps (its
            // launcher may have written them, [`hand_spec`]). It builds its filesystem while its
            // cgroup is set up here.
            let mut setup = if handed_off {
                trace(t0, "spec and id maps handed over by the launcher");
                Ok(())
            } else {
                self.map_and_connect(&mut ctl, helper_pid, &mut out, &mut net_state)
            };
            if setup.is_ok() {
                trace(t0, "mapped");
                match self.limit_cloned_init(helper_pid, opts, &spec.limits, &mut join) {
                    Ok(c) => {
                        *cgroup_slot = c;
                        hold_limited_for_tests();
                        setup = wire::write_frame(&mut ctl, Kind::Limited, &[]);
                        trace(t0, "cgroup ready, init limited");
                        // While the payload starts on the init's CPU.
                        self.sweep_if_deferred();
                    }
                    Err(e) => {
                        late_error = Some(e);
                        setup = Err(io::Error::other("cgroup"));
                    }
                }
            }
            if setup.is_err() {
                protocol_error = true;
                ctl_open = false;
                kill_tree(init_pid, helper_pid, cgroup_slot.as_ref());
            }
        }

        while ctl_open || out_open || err_open || helper_alive {
            let now = Instant::now();
            if !out.host_timeout && now >= deadline {
                out.host_timeout = true;
                kill_tree(init_pid, helper_pid, cgroup_slot.as_ref());
                drain_until = Some(now + Duration::from_secs(2));
            }
            let cancelled = opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
            if cancelled && drain_until.is_none() {
                kill_tree(init_pid, helper_pid, cgroup_slot.as_ref());
                drain_until = Some(now + Duration::from_secs(2));
            }
            if let Some(d) = drain_until {
                if now >= d {
                    break;
                }
            }
            let until = drain_until.unwrap_or(deadline);
            let cap_ms = if opts.cancel.is_some() { 100 } else { 60_000 };
            let ms = until.saturating_duration_since(now).as_millis().min(cap_ms) as u16;
            let mut fds = Vec::with_capacity(4);
            let mut which = Vec::with_capacity(4);
            if ctl_open {
                fds.push(PollFd::new(ctl.as_fd(), PollFlags::POLLIN));
                which.push(0);
            }
            if out_open {
                fds.push(PollFd::new(out_r.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            if err_open {
                fds.push(PollFd::new(err_r.as_fd(), PollFlags::POLLIN));
                which.push(2);
            }
            if helper_alive {
                fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
                which.push(3);
            }
            match poll(&mut fds, PollTimeout::from(ms.max(1))) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&which)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| *w)
                .collect();
            drop(fds);
            for w in ready {
                match w {
                    0 => match read_some(&mut ctl, &mut buf) {
                        Some(0) => ctl_open = false,
                        Some(n) => {
                            decoder.feed(&buf[..n]);
                            loop {
                                let frame = match decoder.next_frame() {
                                    Ok(Some(f)) => f,
                                    Ok(None) => break,
                                    Err(_) => {
                                        protocol_error = true;
                                        ctl_open = false;
                                        break;
                                    }
                                };
                                let exited_now = frame.0 == Kind::Exit;
                                let r = self.handle_frame(
                                    frame,
                                    &mut ctl,
                                    helper_pid,
                                    &mut init_pid,
                                    &mut out,
                                    &mut intake,
                                    t0,
                                    &mut net_state,
                                );
                                if r.is_ok() && exited_now {
                                    if let Some(c) = cgroup_slot.as_ref() {
                                        out.usage = c.usage();
                                        usage_read = true;
                                    }
                                }
                                if r.is_err() {
                                    protocol_error = true;
                                    ctl_open = false;
                                    break;
                                }
                            }
                            if protocol_error {
                                kill_tree(init_pid, helper_pid, cgroup_slot.as_ref());
                            }
                        }
                        None => {}
                    },
                    1 => match read_some(&mut out_r, &mut buf) {
                        Some(0) => out_open = false,
                        Some(n) => {
                            out.stdout.push(&buf[..n]);
                            if opts.tee {
                                let _ = io::stdout().write_all(&buf[..n]);
                            }
                        }
                        None => {}
                    },
                    2 => match read_some(&mut err_r, &mut buf) {
                        Some(0) => err_open = false,
                        Some(n) => {
                            out.stderr.push(&buf[..n]);
                            if opts.tee {
                                let _ = io::stderr().write_all(&buf[..n]);
                            }
                        }
                        None => {}
                    },
                    _ => {
                        helper_alive = false;
                        child.wait();
                        // Give the pipes a moment to deliver what is buffered.
                        if drain_until.is_none() {
                            drain_until = Some(Instant::now() + Duration::from_secs(2));
                        }
                    }
                }
            }
        }
        if opts.tee {
            let _ = io::stdout().flush();
        }
        if helper_alive {
            kill_tree(init_pid, helper_pid, cgroup_slot.as_ref());
        }
        child.wait();
        if !usage_read {
            if let Some(c) = cgroup_slot.as_ref() {
                out.usage = c.usage();
            }
        }
        intake.end_current(false);
        out.artifacts = intake.done;
        out.result_json = intake.result_json;
        if let Some(e) = late_error {
            return Err(e);
        }
        if protocol_error && out.setup_error.is_none() && out.exit.is_none() {
            out.setup_error = Some("the sandbox broke the control protocol".into());
        }
        Ok(out)
    }

    /// Applies the limits to the cloned init `pid`: in the v1 cgroup it was born in
    /// (`join`), or in a new cgroup it is moved into (`None` when running without limits was
    /// allowed; a `join` then stays with the caller, which removes it after the run).
    fn limit_cloned_init(
        &self,
        pid: i32,
        opts: &RunOptions,
        limits: &super::spec::Limits,
        join: &mut Option<SelfJoin>,
    ) -> Result<Option<RunCgroup>, SandboxError> {
        let Some(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        let c = match join.take() {
            Some(j) => cgroups.create_joined(j)?,
            None => {
                let c = cgroups.create(&opts.run_id)?;
                c.add(pid)?;
                c
            }
        };
        c.apply(limits)?;
        Ok(Some(c))
    }

    /// Writes the id maps of process `pid`'s user namespace, gives its network namespace the
    /// run's network (if any; fail closed), and sends [`Kind::Mapped`].
    fn map_and_connect(
        &self,
        ctl: &mut UnixStream,
        pid: i32,
        out: &mut Outcome,
        net_state: &mut NetState,
    ) -> io::Result<()> {
        if let Err(e) = self.idmap.apply(pid) {
            out.setup_error = Some(e.to_string());
            return Err(io::Error::other("id map"));
        }
        if net_state.wanted {
            // Fail closed: without a working, filtered network the run does not start.
            match net::Egress::create(
                pid,
                net_state.run_id,
                self.net_pool,
                net_state.allowed,
                net_state.resolvers,
                self.keep_net_table,
            ) {
                Ok(l) => net_state.lease = Some(l),
                Err(e) => {
                    out.setup_error = Some(e.to_string());
                    return Err(io::Error::other("network"));
                }
            }
        }
        // The control socket is non-blocking: this small frame fits its buffer.
        let body = serde_json::to_vec(&Mapped {
            init_uid: self.idmap.init_uid(),
            eth0: net_state.lease.as_ref().and_then(|l| l.eth0()),
        })
        .map_err(io::Error::other)?;
        let mut frame = Vec::new();
        wire::write_frame(&mut frame, Kind::Mapped, &body)?;
        write_all_retry(ctl, &frame)
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_frame(
        &self,
        (kind, body): (Kind, Vec<u8>),
        ctl: &mut UnixStream,
        helper_pid: i32,
        init_pid: &mut Option<i32>,
        out: &mut Outcome,
        intake: &mut Intake,
        t0: Instant,
        net_state: &mut NetState,
    ) -> io::Result<()> {
        match kind {
            Kind::Unshared => {
                trace(t0, "namespaces created");
                self.map_and_connect(ctl, helper_pid, out, net_state)
            }
            Kind::InitPid => {
                let p: InitPid = serde_json::from_slice(&body).map_err(io::Error::other)?;
                *init_pid = Some(p.pid);
                Ok(())
            }
            Kind::SetupError => {
                let f: Failure = serde_json::from_slice(&body).map_err(io::Error::other)?;
                out.setup_error = Some(f.message);
                Ok(())
            }
            Kind::Started => {
                trace(t0, "payload started");
                out.startup_ms = Some(t0.elapsed().as_millis() as u64);
                Ok(())
            }
            Kind::ArtifactBegin => {
                let h: ArtifactHeader = serde_json::from_slice(&body).map_err(io::Error::other)?;
                intake.begin(h)
            }
            Kind::ArtifactData => intake.data(&body),
            Kind::ArtifactEnd => {
                intake.end_current(true);
                Ok(())
            }
            Kind::Exit => {
                trace(t0, "payload exited");
                let r: ExitReport = serde_json::from_slice(&body).map_err(io::Error::other)?;
                out.exit = Some(r);
                Ok(())
            }
            Kind::Spec | Kind::Mapped | Kind::Limited => Err(io::Error::other("unexpected frame")),
        }
    }
}

fn write_all_retry(w: &mut UnixStream, mut data: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !data.is_empty() {
        match w.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is available: Some(0) on EOF, None when nothing was ready.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Option<usize> {
    match r.read(buf) {
        Ok(n) => Some(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => None,
        Err(_) => Some(0),
    }
}

/// Kills the whole sandbox: the pid-namespace init (the kernel then kills every process
/// of the namespace), the helper, and whatever the cgroup still holds.
fn kill_tree(init_pid: Option<i32>, helper_pid: i32, cgroup: Option<&RunCgroup>) {
    if let Some(p) = init_pid {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(helper_pid), Signal::SIGKILL);
    if let Some(c) = cgroup {
        c.kill_all();
    }
}

/// A helper started ahead of its run, already inside its (empty-limit) cgroup.
pub struct Spawned {
    child: HelperGuard,
    ctl: UnixStream,
    out_r: File,
    err_r: File,
    cgroup: Option<RunCgroup>,
    pid: i32,
    /// The child is the sandbox's init itself ([`clone_init`]), not a helper.
    init_is_child: bool,
    /// A cloned init born in its v1 cgroup ([`SelfJoin`]): its limits are applied later.
    join: Option<SelfJoin>,
    /// For an init whose launcher was to write its id maps ([`launch_init`]): the spec
    /// queued for it ([`hand_spec`]) once the launcher has also written the id maps and
    /// sent [`Kind::Mapped`]. `Some(None)`: the init is of no use.
    handed: Option<Option<SandboxSpec>>,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned").field("pid", &self.pid).finish()
    }
}

struct Helper {
    child: HelperGuard,
    ctl: UnixStream,
    out_r: File,
    err_r: File,
    pid: i32,
    init_is_child: bool,
    join: Option<SelfJoin>,
    /// The spec was queued and the id maps written by the launcher ([`hand_spec`]).
    handed_off: bool,
}

/// Helpers started ahead of time (each single-use), refilled by a background thread.
pub struct Pool {
    ready: std::sync::Mutex<Vec<Spawned>>,
    wake: std::sync::Condvar,
    size: usize,
    closed: std::sync::atomic::AtomicBool,
    /// The refill thread, joined by [`Pool::close`].
    refill: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("size", &self.size).finish()
    }
}

impl Pool {
    /// Starts a pool of `size` helpers for `runner`, refilled by a dedicated thread (which
    /// lives as long as the process: the helpers' parent-death signal is tied to it).
    pub fn start(runner: Runner, size: usize) -> std::sync::Arc<Pool> {
        let pool = std::sync::Arc::new(Pool {
            ready: std::sync::Mutex::new(Vec::new()),
            wake: std::sync::Condvar::new(),
            size,
            closed: std::sync::atomic::AtomicBool::new(false),
            refill: std::sync::Mutex::new(None),
        });
        let p = pool.clone();
        let handle = std::thread::Builder::new()
            .name("tako-prestart".into())
            .spawn(move || loop {
                {
                    let mut ready = p.ready.lock().unwrap_or_else(|e| e.into_inner());
                    while ready.len() >= p.size && !p.is_closed() {
                        ready = p.wake.wait(ready).unwrap_or_else(|e| e.into_inner());
                    }
                }
                if p.is_closed() {
                    return;
                }
                match runner.spawn_helper(&super::host::new_run_id()) {
                    Ok(s) => {
                        // Checked under the lock `close` drains with: a helper started
                        // while it closed is dropped here, never left in the list.
                        let mut ready = p.ready.lock().unwrap_or_else(|e| e.into_inner());
                        if p.is_closed() {
                            drop(ready);
                            drop(s);
                        } else {
                            ready.push(s);
                        }
                    }
                    Err(e) => {
                        eprintln!("tako-vm: cannot pre-start a sandbox helper: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        *pool.refill.lock().unwrap_or_else(|e| e.into_inner()) = handle.ok();
        pool
    }

    /// Takes a ready helper, if any (the refill thread starts the next one).
    pub fn take(&self) -> Option<Spawned> {
        let s = self.ready.lock().unwrap_or_else(|e| e.into_inner()).pop();
        self.wake.notify_one();
        s
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops refilling and kills the ready helpers, removing their cgroups (at shutdown).
    /// Returns once the refill thread has ended, so a helper it was starting is gone too.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        {
            // Under the lock the refill thread waits with: it cannot miss the wake-up.
            let _ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        let refill = self.refill.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = refill {
            let _ = h.join();
        }
        let drained: Vec<Spawned> =
            std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()));
        drop(drained); // HelperGuard kills and reaps, RunCgroup removes
    }

    /// Helpers ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The network of a run being set up.
struct NetState<'a> {
    wanted: bool,
    run_id: &'a str,
    allowed: Option<&'a net::Allowed>,
    /// The resolvers the sandbox was given (the table's DNS set follows them).
    resolvers: &'a [std::net::Ipv4Addr],
    lease: Option<net::Egress>,
}

/// The helper process; killed and reaped on every path that leaves it behind.
struct HelperGuard {
    pid: i32,
    /// `None` for an init cloned without an exec ([`clone_init`]).
    child: Option<std::process::Child>,
    reaped: bool,
}

impl HelperGuard {
    /// An init this process cloned (directly or through [`launch_init`]): its own child,
    /// reaped with waitpid.
    fn cloned(pid: i32) -> HelperGuard {
        HelperGuard {
            pid,
            child: None,
            reaped: false,
        }
    }

    fn wait(&mut self) {
        if !self.reaped {
            match &mut self.child {
                Some(c) => {
                    let _ = c.wait();
                }
                None => {
                    while let Err(nix::errno::Errno::EINTR) =
                        nix::sys::wait::waitpid(Pid::from_raw(self.pid), None)
                    {}
                }
            }
            self.reaped = true;
        }
    }
}

impl Drop for HelperGuard {
    fn drop(&mut self) {
        if !self.reaped {
            // Not reaped yet, so the pid cannot have been reused.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            self.wait();
        }
    }
}

/// Zeroes every environment string of this process and empties the environment.
fn scrub_environment() {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: single-threaded (forked child); environ is a NULL-terminated array of
    // NUL-terminated strings owned by this process.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let s = *p;
            std::ptr::write_bytes(s, 0, libc::strlen(s));
            p = p.add(1);
        }
        libc::clearenv();
    }
}

/// True when this process has a single thread (then fork without exec is safe). After a
/// thread was `just_joined`, the kernel may count it for a few more microseconds while it
/// ends, so this looks again for up to about 2 ms.
fn single_threaded(just_joined: bool) -> bool {
    let once = || {
        fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.strip_prefix("Threads:").is_some_and(|n| n.trim() == "1"))
        })
    };
    let tries = if just_joined { 200 } else { 1 };
    for i in 0..tries {
        if once() {
            return true;
        }
        if i + 1 < tries {
            std::thread::sleep(Duration::from_micros(10));
        }
    }
    false
}

/// An init being launched by [`launch_init`], for the first run of a cloning runner.
static LAUNCHED: std::sync::Mutex<Option<Launch>> = std::sync::Mutex::new(None);

/// Starts the sandbox's init of a single-threaded caller (the CLI) before anything else, so
/// that the kernel builds its namespaces (~1 ms) while the caller prepares the run on its
/// own CPU (on a cgroup v1 host: libcgroups' manager, ~2 ms, on a thread). Not for a caller
/// that moves itself to another cgroup before the run: the init would stay behind.
///
/// The clone needs a single-threaded process, and the caller starts a thread right after:
/// a short-lived copy of it (fork, while it is single-threaded) clones the init with
/// `CLONE_PARENT`, so that the init is the caller's own child, reports its pid and exits.
/// The init waits for its spec and id maps as a cloned init always does; the next
/// [`Runner::run`] of a runner with `clone_init` takes it. Nothing is launched when the
/// process is not single-threaded, when `TAKO_VM_HELPER_EXEC` asks for the exec'd helper,
/// or when the fork fails: the run then starts its init itself. A failed clone is reported
/// by that run.
///
/// With a `join` (a root caller on a cgroup v1 host), the launcher first enters the run's
/// cgroup, so the init is born in it and nothing has to be moved ([`SelfJoin`]). With
/// `maps` (root's [`IdMap::Direct`]; others are left to the run), the launcher writes the
/// init's id maps right after the clone, and sends [`Kind::Mapped`] once the caller has
/// queued the spec ([`hand_spec`]): the init builds its filesystem at once, without a round
/// trip through the caller, which meanwhile checks the rest of the run and builds the
/// cgroup manager.
///
/// Keep the returned guard until the run is over: if no run took the init by then (the run
/// was refused before it started), dropping the guard kills and reaps the init and removes
/// the cgroup directories its launcher made.
#[must_use = "dropping the guard discards the launched init"]
pub fn launch_init(join: Option<SelfJoin>, maps: Option<IdMap>) -> LaunchGuard {
    if std::env::var_os("TAKO_VM_HELPER_EXEC").is_none() && single_threaded(false) {
        let maps = maps.filter(launcher_writes);
        if let Ok(l) = Launch::start(join, maps) {
            *LAUNCHED.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
        }
    }
    LaunchGuard(())
}

/// See [`launch_init`].
#[derive(Debug)]
pub struct LaunchGuard(());

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        let launched = LAUNCHED.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(l) = launched {
            // The init's guard kills and reaps it, then the join removes its directories.
            drop(l.finish());
        }
        reap_launchers();
    }
}

/// Launchers whose report was read before they had exited ([`Launch::finish`]).
static UNREAPED_LAUNCHERS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Test hook: `TAKO_VM_TEST_HOLD_LIMITED_MS` delays [`Kind::Limited`] (at most 10 s), so a
/// test can look at a run whose payload waits for its limits (`tests/cli.rs`). Unset in
/// production; it only ever delays a start.
fn hold_limited_for_tests() {
    if let Some(ms) = std::env::var("TAKO_VM_TEST_HOLD_LIMITED_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms.min(10_000)));
    }
}

/// Reaps the launchers [`Launch::finish`] left (each exits right after its report).
fn reap_launchers() {
    let pids = std::mem::take(&mut *UNREAPED_LAUNCHERS.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in pids {
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(Pid::from_raw(pid), None)
        {
        }
    }
}

/// Whether a launcher writes id maps `m` itself: root's direct ones (others need
/// `newuidmap`, run by the caller).
fn launcher_writes(m: &IdMap) -> bool {
    matches!(m, IdMap::Direct { .. })
}

/// Queues `spec` for the init [`launch_init`] launched with id maps, and lets its launcher
/// send [`Kind::Mapped`]. Where it cannot be handed over, the run starts a fresh init: a
/// spec with a network (its `Mapped` carries the veth made after the clone), or a spec
/// frame that might not fit the control socket's buffer before the init reads it. Does
/// nothing without such a launched init.
pub fn hand_spec(spec: &SandboxSpec) {
    if let Some(l) = LAUNCHED.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        l.hand(spec);
    }
}

/// The [`Kind::Spec`] frame of `spec` where a launcher can hand it over through a socket
/// with `room` bytes of send buffer (see [`hand_spec`]).
fn handoff_frame(spec: &SandboxSpec, room: usize) -> Option<Vec<u8>> {
    if spec.network.is_some() {
        return None;
    }
    let mut frame = Vec::new();
    wire::write_json(&mut frame, Kind::Spec, spec).ok()?;
    (frame.len() <= HANDOFF_MAX_FRAME && frame.len() * 2 + 4096 <= room).then_some(frame)
}

/// A launcher process (see [`launch_init`]) and the init's ends of the run's channels.
struct Launch {
    launcher: i32,
    /// The launcher writes the init's pid here (or minus the clone's errno), then the index
    /// and errno of a failed cgroup join (0, 0 when it joined or had nothing to join), then
    /// what it did with id maps: 0 none written (or writing them failed), 1 written and
    /// `Mapped` sent, 2 written only. Unless 1, an init launched with id maps is of no use
    /// to a run.
    report: File,
    join: Option<SelfJoin>,
    ctl: UnixStream,
    out_r: File,
    err_r: File,
    /// The launcher writes id maps (and waits on `go`).
    maps: bool,
    /// One byte for the launcher, once: 1 when the spec is queued (it then sends `Mapped`),
    /// 0 when not; closing it unwritten means 0.
    go: Option<File>,
    /// `ctl`'s send buffer (read where the launcher writes id maps).
    room: usize,
    /// The spec [`hand_spec`] queued.
    queued: Option<SandboxSpec>,
}

/// Largest spec frame queued before the init reads: well inside a Unix socket's default
/// send buffer (208 KiB), so the write cannot block.
const HANDOFF_MAX_FRAME: usize = 64 << 10;

impl Launch {
    fn start(join: Option<SelfJoin>, maps: Option<IdMap>) -> io::Result<Launch> {
        let (mut ctl, theirs) = UnixStream::pair()?;
        let (go_r, go_w, room) = match maps {
            Some(_) => {
                let (r, w) = pipe()?;
                let room = nix::sys::socket::getsockopt(&ctl, nix::sys::socket::sockopt::SndBuf)
                    .unwrap_or(0);
                (Some(r), Some(w), room)
            }
            None => (None, None, 0),
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (report, report_w) = pipe()?;
        let _ = io::stdout().flush();
        // Saved before the fork: the init restores it from its copy of this memory.
        let place = super::cpus::save_caller_mask();
        // SAFETY: fork(2) of a single-threaded process (checked by the caller): the copy may
        // run any code. It joins the cgroup, clones (a fork again), may write the init's id
        // maps and one frame, and writes its report before _exit, which runs no destructor
        // and no exit handler of this process.
        let launcher = unsafe { libc::fork() };
        if launcher < 0 {
            return Err(io::Error::last_os_error());
        }
        if launcher == 0 {
            // Only the caller writes `go`: its end of file must reach this process.
            drop(go_w);
            let joined = join.as_ref().map_or(Ok(()), |j| j.enter());
            let v = match joined {
                Err(_) => 0,
                Ok(()) => match clone_init_flags(
                    theirs.as_raw_fd(),
                    out_w.as_raw_fd(),
                    err_w.as_raw_fd(),
                    libc::CLONE_PARENT,
                ) {
                    Ok(pid) => pid,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                },
            };
            // The id maps, and Mapped once the spec is ahead of it on the socket, as the
            // caller would send them after the report.
            let mapped: i32 = match (&maps, &go_r) {
                (Some(m), Some(go)) if v > 0 => {
                    if m.apply(v).is_err() {
                        0
                    } else {
                        let answer = Mapped {
                            init_uid: m.init_uid(),
                            eth0: None,
                        };
                        // End of file (the caller gave up) counts as "not queued".
                        let mut b = [0u8; 1];
                        let queued = (&*go).read_exact(&mut b).is_ok() && b[0] == 1;
                        if queued && wire::write_json(&mut ctl, Kind::Mapped, &answer).is_ok() {
                            1
                        } else {
                            2
                        }
                    }
                }
                _ => 0,
            };
            let (i, errno) = joined.err().unwrap_or((0, 0));
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.to_ne_bytes());
            b[4..8].copy_from_slice(&(i as i32).to_ne_bytes());
            b[8..12].copy_from_slice(&errno.to_ne_bytes());
            b[12..].copy_from_slice(&mapped.to_ne_bytes());
            // SAFETY: a write of a local buffer to a descriptor this process owns.
            unsafe { libc::write(report_w.as_raw_fd(), b.as_ptr().cast(), b.len()) };
            // This copy's exit (its address space torn down) runs on the caller's CPU, off
            // the one the init builds its filesystem on.
            if place {
                super::cpus::place_on_other_cpu(0);
            }
            // SAFETY: _exit runs no destructor (the parent's `join` stays armed there).
            unsafe { libc::_exit(0) }
        }
        // The namespaces and the init's filesystem are built on another CPU while this
        // process prepares the cgroup manager on its own ([`super::cpus`]).
        if place {
            super::cpus::place_on_other_cpu(launcher);
        }
        Ok(Launch {
            launcher,
            report,
            join,
            ctl,
            out_r,
            err_r,
            maps: go_w.is_some(),
            go: go_w,
            room,
            queued: None,
        })
    }

    /// Queues `spec` on the control socket and tells the launcher whether it may send
    /// `Mapped` ([`hand_spec`]); at most once.
    fn hand(&mut self, spec: &SandboxSpec) {
        let Some(mut go) = self.go.take() else {
            return;
        };
        let queued = handoff_frame(spec, self.room).is_some_and(|f| self.ctl.write_all(&f).is_ok());
        let _ = go.write_all(&[u8::from(queued)]);
        if queued {
            self.queued = Some(spec.clone());
        }
    }

    /// Waits for the launcher's report and returns the init. The launcher exits right
    /// after its report; it is reaped here when it is gone already, else later
    /// ([`reap_launchers`]): its exit is not on the run's path.
    fn finish(mut self) -> Result<Spawned, SandboxError> {
        // A spec not handed over by now never will be: the launcher stops waiting.
        drop(self.go.take());
        let mut b = [0u8; 16];
        let read = self.report.read_exact(&mut b);
        let launcher = Pid::from_raw(self.launcher);
        match nix::sys::wait::waitpid(launcher, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {
                UNREAPED_LAUNCHERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(self.launcher);
            }
            _ => {}
        }
        if read.is_err() {
            // No report: the launcher failed; it is gone or going.
            reap_launchers();
        }
        read?;
        let word = |k: usize| i32::from_ne_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
        let (pid, failed_at, errno, mapped) = (word(0), word(4), word(8), word(12));
        if let (Some(j), true) = (&self.join, errno != 0) {
            return Err(j.enter_error((failed_at as usize, errno)).into());
        }
        if pid <= 0 {
            return Err(io::Error::other(super::child::namespaces_error(
                io::Error::from_raw_os_error(-pid),
            ))
            .into());
        }
        Ok(Spawned {
            child: HelperGuard::cloned(pid),
            ctl: self.ctl,
            out_r: self.out_r,
            err_r: self.err_r,
            cgroup: None,
            pid,
            init_is_child: true,
            join: self.join,
            handed: self.maps.then(|| self.queued.filter(|_| mapped == 1)),
        })
    }
}

/// Clones the sandbox's init (no exec) straight into new user, mount, pid, ipc, uts and net
/// namespaces ([`super::child::NAMESPACES`]): fd 0 is /dev/null, 1 and 2 the capture pipes, 3
/// the control socket, every other descriptor closed. Only for a single-threaded caller.
fn clone_init(ctl: i32, out_w: i32, err_w: i32) -> io::Result<i32> {
    clone_init_flags(ctl, out_w, err_w, 0)
        .map_err(|e| io::Error::other(super::child::namespaces_error(e)))
}

/// [`clone_init`] with extra clone flags (`CLONE_PARENT` for [`launch_init`]); a failed
/// clone is its OS error as it is.
fn clone_init_flags(ctl: i32, out_w: i32, err_w: i32, extra: libc::c_int) -> io::Result<i32> {
    // Nothing buffered may be written twice (once by each process).
    let _ = io::stdout().flush();
    let flags =
        (super::child::NAMESPACES.bits() | extra) as libc::c_long | libc::SIGCHLD as libc::c_long;
    // SAFETY: clone(2) without CLONE_VM and without a new stack behaves like fork(2): the
    // child runs on a copy of this (single-threaded, as the caller checked) process, so it
    // may run any code; it never returns from init_in_namespaces_main. glibc's fork-time
    // bookkeeping is not needed: no other thread holds a lock, and raise() asks the kernel
    // for the thread id.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        pid if pid > 0 => Ok(pid as i32),
        _ => {
            // The caller's environment never reaches the sandbox: its strings are zeroed in
            // this copy of the memory (an exec'd helper starts with an empty one).
            scrub_environment();
            // SAFETY: plain descriptor system calls on descriptors this process owns; fds 0-2
            // are open, so ctl, out_w and err_w are all >= 3 and the order below is safe.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                if null < 0
                    || libc::dup2(null, 0) < 0
                    || libc::dup2(out_w, 1) < 0
                    || libc::dup2(err_w, 2) < 0
                    || libc::dup2(ctl, CTL_FD) < 0
                    || libc::syscall(libc::SYS_close_range, CTL_FD + 1, u32::MAX, 0) < 0
                {
                    libc::_exit(1);
                }
            }
            super::child::init_in_namespaces_main()
        }
    }
}

/// Creates a private directory for the artifacts of a run.
pub fn artifacts_dir(base: &Path, run_id: &str) -> io::Result<PathBuf> {
    let d = base.join(run_id).join("artifacts");
    fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::spec::{Limits, NetworkSpec};

    fn spec(argv: Vec<String>) -> SandboxSpec {
        SandboxSpec {
            rootfs: "/r".into(),
            argv,
            env: vec![],
            cwd: "/".into(),
            hostname: "h".into(),
            limits: Limits::default(),
            injected: vec![],
            output: None,
            timeout_ms: 1000,
            kill_grace_ms: 100,
            tmp_dirs: vec![],
            network: None,
            binds: vec![],
            layers: None,
        }
    }

    /// The launcher hands over only what it can: a spec without a network, small enough to
    /// be queued before anyone reads it, with id maps a root caller writes directly.
    #[test]
    fn a_handoff_is_made_only_where_the_launcher_can_do_it() {
        let small = spec(vec!["python3".into(), "-c".into(), "pass".into()]);
        let room = 212_992;
        let frame = handoff_frame(&small, room).expect("handed over");
        let body = serde_json::to_vec(&small).unwrap();
        let mut expected = Vec::new();
        wire::write_frame(&mut expected, Kind::Spec, &body).unwrap();
        assert_eq!(frame, expected);
        assert_eq!(frame[0], Kind::Spec as u8);
        let mut net = small.clone();
        net.network = Some(NetworkSpec {
            allowed_hosts: vec![],
        });
        assert!(handoff_frame(&net, room).is_none(), "the veth comes later");
        let big = spec(vec!["x".repeat(HANDOFF_MAX_FRAME)]);
        assert!(
            handoff_frame(&big, room).is_none(),
            "could block before the init reads"
        );
        assert!(
            handoff_frame(&small, frame.len()).is_none(),
            "a small send buffer keeps the usual order"
        );
    }

    /// Only root's direct id maps are written by a launcher; the others need the caller.
    #[test]
    fn only_direct_maps_are_left_to_a_launcher() {
        let direct = IdMap::Direct {
            uid_base: 100_000,
            gid_base: 100_000,
            count: 65_536,
        };
        let single = IdMap::Single {
            own_uid: 1000,
            own_gid: 1000,
        };
        assert!(launcher_writes(&direct));
        assert!(!launcher_writes(&single));
    }
}
