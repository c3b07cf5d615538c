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

    /// The implementation's error, to look into (`downcast_ref`).
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
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

/// Where a tree workload reports each request it made (one FUSE request,
/// or one system call for native).
pub trait Probe {
    /// The request started at `started` has completed, finishing `units`
    /// entries (0 for requests that only lead up to one: OPENDIR, READDIR,
    /// WRITE).
    fn op(&mut self, started: Instant, units: u64);
}

/// A server connected for the tree workloads ([`crate::tree`]): one pass
/// each, every request reported to a [`Probe`]. The lookups a pass takes
/// (LOOKUP, READDIRPLUS, MKDIR, CREATE) are held, as a guest's inode cache
/// holds them, until [`TreeSession::forget_all`].
pub trait TreeSession {
    /// Walks the tree `root` (a directory of the share) and lstats every
    /// entry below it; returns the entries stat'ed.
    fn tree_stat(&mut self, root: &str, probe: &mut dyn Probe) -> Result<u64, SessionError>;
    /// Creates `tree` in the share's directory `parent`, its root included,
    /// every file with its bytes; returns the entries made.
    fn tree_create(
        &mut self,
        parent: &str,
        tree: &crate::tree::Tree,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError>;
    /// Removes the tree `name` in the share's directory `parent`, as
    /// `rm -rf`; returns the entries removed, its root included.
    fn tree_remove(
        &mut self,
        parent: &str,
        name: &str,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError>;
    /// Looks up every file of `set` (and its directories) and keeps the
    /// lookups; returns the distinct inodes held.
    fn hold_inodes(
        &mut self,
        set: &crate::tree::InodeSet,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError>;
    /// Forgets every lookup held and waits until the server has taken the
    /// forgets; returns the inodes forgotten.
    fn forget_all(&mut self) -> Result<u64, SessionError>;
    /// How directories are listed: `READDIRPLUS` where the server offers
    /// it, else `READDIR+LOOKUP` (a LOOKUP per entry, as Linux then
    /// sends), or `getdents64` for native.
    fn listing(&self) -> &'static str;
}
