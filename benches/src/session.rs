//! What the measuring loops need from a server, whatever the transport:
//! numbered request slots for I/O (submit, send, wait for completions) and
//! the two metadata operations. [`crate::vfs`], [`crate::p9client`] and
//! [`crate::native`] implement it.

use std::time::Instant;

/// Why a server could not serve a request as the workload expects: the
/// error of the implementation ([`crate::vfs::VfsError`],
/// [`crate::p9client::P9ClientError`], [`crate::native::NativeError`]),
/// each of which converts into it. (This module names none of them, so the
/// implementations depend on it and not the other way round.)
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SessionError(Box<dyn std::error::Error + Send + Sync>);

impl SessionError {
    /// Wraps an implementation's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> SessionError {
        SessionError(Box::new(e))
    }
}

/// A server connected and set up for one workload.
///
/// I/O workloads use slots `0..qd`: [`Session::submit`] queues a request in
/// a free slot, [`Session::flush`] hands the queued requests to the server
/// (one kick, one socket write), and [`Session::wait`] blocks until at least
/// one completes and reports every completed slot with the time its
/// completion was seen.
pub trait Session {
    /// The bytes one I/O request moves: the workload's size, or less where
    /// the protocol caps it (9P's msize). `None` outside I/O workloads.
    fn io_len(&self) -> Option<u32>;
    /// Queues the workload's request at `offset` in `slot`.
    fn submit(&mut self, slot: usize, offset: u64) -> Result<(), SessionError>;
    /// Sends what was queued.
    fn flush(&mut self) -> Result<(), SessionError>;
    /// Appends at least one completed `(slot, when)` to `done`.
    fn wait(&mut self, done: &mut Vec<(usize, Instant)>) -> Result<(), SessionError>;
    /// Creates `name` in the create directory, stats it, closes it and
    /// unlinks it.
    fn create_stat_unlink(&mut self, name: &[u8]) -> Result<(), SessionError>;
    /// Lists the 10,000-entry directory; returns the entries seen
    /// (including `.` and `..` where the server returns them).
    fn list_dir(&mut self) -> Result<u64, SessionError>;
}
