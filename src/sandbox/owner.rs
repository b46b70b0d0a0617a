//! Ownership hand-over for builds of an unprivileged server with subordinate ids.
//!
//! A builder sandbox writes into directories of the host (the new snapshot's Python install
//! directories, the uv cache, a scratch directory) as its user, uid 1000 inside, which is a
//! subordinate id on the host ([`IdMap::Subordinate`]). The builder hands those directories
//! to that id before the sandbox runs and takes everything back afterwards
//! (`rootfs_builder::SandboxOwner`). A root server does that with `chown(2)`; an unprivileged server may not give files to another host id, nor
//! delete what its subordinate ids wrote.
//!
//! So it asks an owner helper: this binary re-executed (`tako-vm __owner-helper`), which
//! creates a user namespace of its own. The server maps it as its sandboxes are mapped
//! (inside 0 is the server's uid, inside 1.. the subordinate range, via newuidmap and
//! newgidmap), so the helper owns that namespace and holds `CAP_CHOWN`, `CAP_FOWNER` and
//! `CAP_DAC_OVERRIDE` over files of exactly those ids and no others. It shares the
//! server's mount namespace and file system view. It changes nothing else, and only on
//! request: one line per operation on standard input (`hand_over`, `take_back` or
//! `discard`, a tab, an absolute path), one line back (`ok`, or `error: …`). It exits when
//! its input closes.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use rootfs_builder::{DirectOwner, SandboxOwner};

use super::idmap::IdMap;
use super::spec::{SANDBOX_GID, SANDBOX_UID};

/// The first argument that makes this binary an owner helper.
pub const OWNER_HELPER_ARG: &str = "__owner-helper";

/// This process's ownership operations on trees its sandbox user writes: plain system calls
/// where they work (a root server; one without subordinate ids, whose sandbox user is
/// itself), else through an owner helper started at the first operation.
#[derive(Debug)]
pub struct Ownership {
    exe: PathBuf,
    idmap: IdMap,
    helper: Mutex<Option<OwnerHelper>>,
}

impl Ownership {
    /// For sandboxes mapped with `idmap`; `exe` is this binary (the helper).
    pub fn new(exe: &Path, idmap: &IdMap) -> Ownership {
        Ownership {
            exe: exe.to_path_buf(),
            idmap: idmap.clone(),
            helper: Mutex::new(None),
        }
    }

    /// Runs `op` on the helper when one is needed; `None` when plain system calls will do.
    fn via_helper(
        &self,
        op: impl FnOnce(&mut OwnerHelper) -> io::Result<()>,
    ) -> Option<io::Result<()>> {
        if !matches!(self.idmap, IdMap::Subordinate { .. }) {
            return None;
        }
        let mut slot = self.helper.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match OwnerHelper::start(&self.exe, &self.idmap) {
                Ok(h) => *slot = Some(h),
                Err(e) => return Some(Err(e)),
            }
        }
        let res = op(slot.as_mut().expect("started above"));
        if res.is_err() {
            *slot = None; // a fresh helper next time (this one may be gone)
        }
        Some(res)
    }

    /// The plain system calls, where no helper is needed.
    fn direct(&self) -> DirectOwner {
        let (uid, gid) = self.ids();
        DirectOwner(uid, gid)
    }
}

impl SandboxOwner for Ownership {
    fn ids(&self) -> (u32, u32) {
        let uid = self.idmap.host_sandbox_uid();
        (uid, uid)
    }

    fn hand_over(&self, dir: &Path) -> io::Result<()> {
        self.via_helper(|h| h.hand_over(dir))
            .unwrap_or_else(|| self.direct().hand_over(dir))
    }

    fn take_back(&self, dir: &Path) -> io::Result<()> {
        self.via_helper(|h| h.take_back(dir))
            .unwrap_or_else(|| self.direct().take_back(dir))
    }

    fn discard(&self, path: &Path) -> io::Result<()> {
        self.via_helper(|h| h.discard(path))
            .unwrap_or_else(|| self.direct().discard(path))
    }
}

/// A running owner helper (see the module documentation). Dropping it ends the helper.
pub struct OwnerHelper {
    child: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
}

impl std::fmt::Debug for OwnerHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnerHelper(pid {})", self.child.id())
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::other(format!("owner helper: {what}"))
}

impl OwnerHelper {
    /// Starts `exe` as an owner helper and maps its user namespace with `idmap`.
    pub fn start(exe: &Path, idmap: &IdMap) -> io::Result<OwnerHelper> {
        let mut child = Command::new(exe)
            .arg(OWNER_HELPER_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let input = child.stdin.take();
        let output = child.stdout.take().map(BufReader::new);
        let (Some(input), Some(output)) = (input, output) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(protocol("no pipes"));
        };
        let mut helper = OwnerHelper {
            child,
            input: Some(input),
            output,
        };
        // "unshared" once its namespace exists; then the maps, then "mapped".
        helper.expect("unshared")?;
        idmap
            .apply(helper.child.id() as i32)
            .map_err(|e| protocol(&e.to_string()))?;
        helper.send(b"mapped\n")?;
        helper.expect("ready")?;
        Ok(helper)
    }

    fn send(&mut self, line: &[u8]) -> io::Result<()> {
        let input = self.input.as_mut().ok_or_else(|| protocol("closed"))?;
        input.write_all(line)?;
        input.flush()
    }

    fn expect(&mut self, want: &str) -> io::Result<()> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            return Err(protocol(&format!("ended before {want:?}")));
        }
        match line.trim_end() {
            l if l == want => Ok(()),
            l => Err(protocol(l)),
        }
    }

    fn request(&mut self, op: &str, path: &Path) -> io::Result<()> {
        let bytes = path.as_os_str().as_bytes();
        if !path.is_absolute() || bytes.contains(&b'\n') || bytes.contains(&b'\t') {
            return Err(protocol(&format!("unusable path {}", path.display())));
        }
        let mut line = format!("{op}\t").into_bytes();
        line.extend_from_slice(bytes);
        line.push(b'\n');
        self.send(&line)?;
        self.expect("ok")
    }

    /// Gives `dir` and every directory below it to the sandbox user (files stay as they are).
    pub fn hand_over(&mut self, dir: &Path) -> io::Result<()> {
        self.request("hand_over", dir)
    }

    /// Gives everything under `dir` (and `dir`) the sandbox user owns back to the server,
    /// readable by everybody.
    pub fn take_back(&mut self, dir: &Path) -> io::Result<()> {
        self.request("take_back", dir)
    }

    /// Removes `path` (a tree the sandbox user wrote in), however deep.
    pub fn discard(&mut self, path: &Path) -> io::Result<()> {
        self.request("discard", path)
    }
}

impl Drop for OwnerHelper {
    fn drop(&mut self) {
        drop(self.input.take()); // end of input: the helper exits
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.wait();
        }
    }
}

/// The owner helper's `main`: runs before anything else in the process (single-threaded,
/// as `unshare(CLONE_NEWUSER)` requires). Never returns.
pub fn helper_main() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tako-vm owner helper: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)?;
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut out = io::stdout().lock();
    writeln!(out, "unshared")?;
    out.flush()?;
    let mut line = Vec::new();
    if input.read_until(b'\n', &mut line)? == 0 || line != b"mapped\n" {
        return Err(protocol("not mapped"));
    }
    // The maps make this process root of its namespace: the server's own ids.
    if nix::unistd::getuid().as_raw() != 0 || nix::unistd::getgid().as_raw() != 0 {
        return Err(protocol("the server's ids are not 0 in the namespace"));
    }
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let reply = match handle(&line) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}").replace('\n', " "),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
}

fn handle(line: &[u8]) -> io::Result<()> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(2, |b| *b == b'\t');
    let op = parts.next().unwrap_or_default();
    let path = Path::new(std::ffi::OsStr::from_bytes(
        parts.next().unwrap_or_default(),
    ));
    if !path.is_absolute() {
        return Err(io::Error::other("not an absolute path"));
    }
    // In here the sandbox user is 1000 and this process root (checked at the start): the
    // plain system calls of a root server.
    let direct = DirectOwner(SANDBOX_UID, SANDBOX_GID);
    match op {
        b"hand_over" => direct.hand_over(path),
        b"take_back" => direct.take_back(path),
        b"discard" => direct.discard(path),
        _ => Err(io::Error::other("unknown operation")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_other_than_the_three_operations_on_absolute_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rel = format!("hand_over\t{}\n", "relative/dir");
        assert!(handle(rel.as_bytes()).is_err());
        let unknown = format!("chmod\t{}\n", dir.path().display());
        assert!(handle(unknown.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("unknown operation"));
        assert!(handle(b"\n").is_err());
    }

    #[test]
    fn unusable_paths_never_reach_the_helper() {
        // A path that would split the line protocol is refused before anything is sent.
        let mut fake = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = fake.stdin.take();
        let output = BufReader::new(fake.stdout.take().unwrap());
        let mut h = OwnerHelper {
            child: fake,
            input,
            output,
        };
        for p in ["/tmp/a\nb", "/tmp/a\tb", "relative"] {
            let e = h.hand_over(Path::new(p)).unwrap_err();
            assert!(e.to_string().contains("unusable path"), "{e}");
        }
    }
}
