//! Framing of the control socket between the supervisor (host side) and the sandbox side.
//!
//! A frame is `kind: u8`, `len: u32 (little endian)`, then `len` bytes. Control frames carry
//! JSON; artifact data frames carry raw bytes. The supervisor never trusts sizes from the
//! inside: frames over [`MAX_FRAME`] are a protocol error.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Largest frame accepted (the spec frame carries code and input: ≤ ~8 MiB in practice).
pub const MAX_FRAME: usize = 64 << 20;
/// Size of one artifact data chunk.
pub const CHUNK: usize = 64 << 10;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// supervisor → helper: the [`crate::sandbox::spec::SandboxSpec`] as JSON.
    Spec = 1,
    /// helper → supervisor: namespaces created, write the id maps now.
    Unshared = 2,
    /// supervisor → helper: id maps written (JSON [`Mapped`]).
    Mapped = 3,
    /// helper → supervisor: host pid of the sandbox init (JSON [`InitPid`]).
    InitPid = 4,
    /// sandbox → supervisor: setup failed (JSON [`Failure`]).
    SetupError = 5,
    /// init → supervisor: the payload has been started.
    Started = 6,
    /// init → supervisor: an artifact follows (JSON [`ArtifactHeader`]).
    ArtifactBegin = 7,
    /// init → supervisor: artifact bytes.
    ArtifactData = 8,
    /// init → supervisor: the artifact is complete.
    ArtifactEnd = 9,
    /// init → supervisor: the payload is gone (JSON [`ExitReport`]).
    Exit = 10,
    /// supervisor → cloned init: it is in the run's cgroup and the limits hold; start the
    /// payload.
    Limited = 11,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => Spec,
            2 => Unshared,
            3 => Mapped,
            4 => InitPid,
            5 => SetupError,
            6 => Started,
            7 => ArtifactBegin,
            8 => ArtifactData,
            9 => ArtifactEnd,
            10 => Exit,
            11 => Limited,
            _ => return None,
        })
    }
}

/// Answer to [`Kind::Unshared`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Mapped {
    /// uid inside the sandbox that the sandbox init runs as (0, or 1000 for a single mapping).
    pub init_uid: u32,
    /// The sandbox's `eth0` (a root server's veth) for the init to configure.
    #[serde(default)]
    pub eth0: Option<Eth0>,
}

/// Addresses of the sandbox side of a veth.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Eth0 {
    /// The sandbox's address (a /30).
    pub addr: std::net::Ipv4Addr,
    /// The host side: the default gateway.
    pub gateway: std::net::Ipv4Addr,
    /// IPv6 (when the host has it): the sandbox's address (a /126) and its gateway.
    #[serde(default)]
    pub v6: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
}

/// Host pid of the sandbox's pid-namespace init.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitPid {
    /// pid in the supervisor's pid namespace.
    pub pid: i32,
}

/// A setup failure inside the sandbox.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    /// What failed, lower case, says what to do.
    pub message: String,
}

/// Header of one artifact.
#[derive(Debug, Serialize, Deserialize)]
pub struct ArtifactHeader {
    /// File name (top level of `/output`).
    pub name: String,
    /// Size announced by the inside (the supervisor counts for itself).
    pub size: u64,
}

/// How the payload ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitReport {
    /// Exit status (0–255) when the payload exited.
    pub code: Option<i32>,
    /// Signal number when the payload was killed by a signal.
    pub signal: Option<i32>,
    /// The execution timeout fired.
    pub timed_out: bool,
    /// Milliseconds from payload start to its end.
    pub execution_ms: u64,
    /// Milliseconds of setup inside the sandbox (mounts, pivot_root) before the payload.
    pub setup_ms: u64,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    // One buffer, one write: a frame is never split around another writer's bytes.
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind as u8);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)
}

/// Writes a JSON control frame.
pub fn write_json<T: Serialize>(w: &mut impl Write, kind: Kind, v: &T) -> io::Result<()> {
    let body = serde_json::to_vec(v).map_err(io::Error::other)?;
    write_frame(w, kind, &body)
}

/// Reads one frame (blocking). `Ok(None)` on a clean EOF between frames.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (kind, len) = parse_head(&head)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((kind, body)))
}

fn parse_head(head: &[u8; 5]) -> io::Result<(Kind, usize)> {
    let kind = Kind::from_u8(head[0])
        .ok_or_else(|| io::Error::other(format!("unknown frame kind {}", head[0])))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    Ok((kind, len))
}

/// Incremental decoder for a non-blocking stream: feed bytes, take complete frames.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame, if any.
    pub fn next_frame(&mut self) -> io::Result<Option<(Kind, Vec<u8>)>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let head: [u8; 5] = self.buf[..5].try_into().expect("5 bytes");
        let (kind, len) = parse_head(&head)?;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let body = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, body)))
    }

    /// True when a partial frame is buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_blocking_and_incremental_readers() {
        let mut out = Vec::new();
        write_json(&mut out, Kind::InitPid, &InitPid { pid: 42 }).unwrap();
        write_frame(&mut out, Kind::ArtifactData, &[1, 2, 3]).unwrap();
        let mut cur = io::Cursor::new(out.clone());
        let (k, b) = read_frame(&mut cur).unwrap().unwrap();
        assert_eq!(k, Kind::InitPid);
        assert_eq!(serde_json::from_slice::<InitPid>(&b).unwrap().pid, 42);
        let (k, b) = read_frame(&mut cur).unwrap().unwrap();
        assert_eq!((k, b), (Kind::ArtifactData, vec![1, 2, 3]));
        assert!(read_frame(&mut cur).unwrap().is_none());

        let mut d = FrameDecoder::default();
        for byte in &out {
            d.feed(&[*byte]);
        }
        assert_eq!(d.next_frame().unwrap().unwrap().0, Kind::InitPid);
        assert_eq!(d.next_frame().unwrap().unwrap().1, vec![1, 2, 3]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(!d.has_partial());
    }

    #[test]
    fn oversized_and_unknown_frames_are_rejected() {
        let mut d = FrameDecoder::default();
        d.feed(&[Kind::Exit as u8, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::default();
        d.feed(&[200, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }
}
