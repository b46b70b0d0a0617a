//! Progress reporting of pulls and builds: a trait the CLI implements with indicatif bars
//! on a terminal (plain lines otherwise), and a no-op for servers and tests.

/// Receives progress events; implementations must be cheap and thread-safe (layers are
/// downloaded in parallel).
pub trait Progress: Sync {
    /// A blob download starts (`done` bytes already present when resuming).
    fn blob_start(&self, _digest: &str, _size: u64, _done: u64) {}
    /// `n` more bytes of a blob arrived.
    fn blob_advance(&self, _digest: &str, _n: u64) {}
    /// A blob is complete and verified (or was already in the store).
    fn blob_done(&self, _digest: &str) {}
    /// A step of the operation (resolving, unpacking, building …).
    fn step(&self, _message: &str) {}
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Short form of a digest for display (`sha256:0123456789ab`).
pub fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(12, |i| i + 13);
    &digest[..end.min(digest.len())]
}
