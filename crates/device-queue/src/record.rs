//! Request recording: a copy of every request a device takes, appended to a
//! file, to seed fuzz corpora with real guest traffic (the daemons'
//! `--record-requests`).
//!
//! Two pieces, shared by the virtio-fs and the 9P daemon:
//!
//! - [`RecordFile`], the file. It is opened before the sandbox goes up (the
//!   walls forbid opening a host file outside the share afterwards; the
//!   seccomp allowlists permit `write`, which is all it needs then). Each
//!   record is written whole under one lock, so the records of queues
//!   served on different threads never interleave. The first failure is
//!   logged and ends the recording; serving never depends on it.
//! - [`ChainRecorder`], a protocol's record of one descriptor chain.
//!   [`QueueEngine`](crate::QueueEngine) calls it for every chain a queue
//!   takes off its available ring, before the chain is served, whichever
//!   way it is served then (inline, on the io_uring ring or through the
//!   device's synchronous path): one place for every engine and queue.
//!
//! A recording holds whatever the guest sent: file names, file contents
//! (write data), xattr values. It is for test runs only.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::error;
use vm_memory::Bytes;

use crate::{Chain, MemGuard};

/// A file that request records are appended to: opened before the
/// sandbox goes up, each record written whole under one lock, the first
/// failure logged and the recording stopped.
#[derive(Debug)]
pub struct RecordFile {
    file: Mutex<File>,
    /// Set by the first failed write: nothing is written after it.
    stopped: AtomicBool,
}

impl RecordFile {
    /// Creates `path`, or truncates it, for writing (`O_CREAT | O_TRUNC |
    /// O_CLOEXEC`, mode 0600). A regular file that already existed with a
    /// wider mode is made 0600 too: the recording holds guest data. Call it
    /// before the sandbox goes up.
    pub fn create(path: &Path) -> io::Result<RecordFile> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(Permissions::from_mode(0o600))?;
        }
        Ok(RecordFile::from_file(file))
    }

    /// Records into `file` (already open for writing), as it is.
    pub fn from_file(file: File) -> RecordFile {
        RecordFile {
            file: Mutex::new(file),
            stopped: AtomicBool::new(false),
        }
    }

    /// Whether records are still being written (no write has failed).
    pub fn is_recording(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed)
    }

    /// Appends `record` whole: no other record is written in between. On
    /// the first failure, logs it once and stops recording; returns whether
    /// the record was written.
    pub fn append(&self, record: &[u8]) -> bool {
        if !self.is_recording() {
            return false;
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: another thread may have failed.
        if !self.is_recording() {
            return false;
        }
        match file.write_all(record) {
            Ok(()) => true,
            Err(e) => {
                self.stopped.store(true, Ordering::Relaxed);
                error!("recording requests failed ({e}); no further requests are recorded");
                false
            }
        }
    }
}

/// A protocol's record of the request in one descriptor chain.
///
/// [`QueueEngine`](crate::QueueEngine) calls [`ChainRecorder::record`] for
/// every chain a queue takes, before the chain is served. It must only read
/// the chain and guest memory (a clone of the chain, as
/// [`append_readable`] walks), never fail or block for long: what it does
/// not record is lost, the request is served all the same.
pub trait ChainRecorder: Send + Sync {
    /// Records the request in `chain`, taken off queue `queue` (its index in
    /// the device).
    fn record(&self, queue: usize, mem: &MemGuard, chain: &Chain);
}

/// Appends up to `max` bytes of `chain`'s device-readable descriptors to
/// `out`, in chain order, as the synchronous paths read a request; returns
/// how many. Stops early at a descriptor outside guest memory. The chain
/// is not consumed (a clone is walked) and guest memory is only read.
pub fn append_readable(mem: &MemGuard, chain: &Chain, max: usize, out: &mut Vec<u8>) -> usize {
    let mut taken = 0;
    for d in chain.clone() {
        if taken == max {
            break;
        }
        if d.is_write_only() {
            continue;
        }
        let n = (d.len() as usize).min(max - taken);
        let start = out.len();
        out.resize(start + n, 0);
        if mem.read_slice(&mut out[start..], d.addr()).is_err() {
            out.truncate(start);
            break;
        }
        taken += n;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn record_file_is_private_truncated_and_appended_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        std::fs::write(&path, b"old contents").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let rec = RecordFile::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0, "truncated");
        assert!(rec.append(b"one") && rec.append(b"two"));
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"onetwo");
    }

    #[test]
    fn a_failed_write_stops_the_recording() {
        // A file open only for reading: every write fails.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let rec = RecordFile::from_file(File::open(&path).unwrap());
        assert!(rec.is_recording());
        assert!(!rec.append(b"x"));
        assert!(!rec.is_recording());
        assert!(!rec.append(b"y"), "nothing after the first failure");
    }
}
