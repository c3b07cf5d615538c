//! `--record-requests`: every FUSE request the device takes, from any queue
//! and on either I/O engine, appended to a file to seed fuzz corpora (the
//! `fuse_device` target reads this format).
//!
//! One record per request: `len: u16` little-endian, bit 15 set for the
//! hiprio queue (queue 0) and the low 15 bits the byte count, then that
//! many bytes of the request: the chain's device-readable part, FUSE in
//! header and body, WRITE data included. A request longer than
//! [`MAX_RECORD`] bytes is recorded cut there. The chains come from
//! `device_queue`'s serving loop ([`ChainRecorder`]), the one place every
//! engine takes them; [`RecordFile`] keeps records whole and stops (logged
//! once) at its first failure.
//!
//! The recording holds the guest's file names and file data: for test
//! runs only.

use std::io;
use std::path::Path;

use device_queue::{append_readable, Chain, ChainRecorder, MemGuard, RecordFile};

use crate::device::HIPRIO_QUEUE;

/// The most request bytes one record holds (the low 15 bits of its length).
pub const MAX_RECORD: usize = 0x7fff;
/// The bit of a record's length that marks the hiprio queue.
pub const HIPRIO_RECORD: u16 = 0x8000;

/// Records FUSE requests in the format of the [module docs](self); give it
/// to the device with [`crate::QueueDevice::with_recorder`].
#[derive(Debug)]
pub struct FuseRecorder(RecordFile);

impl FuseRecorder {
    /// Records into `path`, created or truncated (mode 0600); call it before
    /// the sandbox goes up.
    pub fn create(path: &Path) -> io::Result<FuseRecorder> {
        RecordFile::create(path).map(FuseRecorder)
    }

    /// Records into `file`.
    pub fn new(file: RecordFile) -> FuseRecorder {
        FuseRecorder(file)
    }
}

impl ChainRecorder for FuseRecorder {
    fn record(&self, queue: usize, mem: &MemGuard, chain: &Chain) {
        if !self.0.is_recording() {
            return;
        }
        let mut record = vec![0u8; 2];
        let n = append_readable(mem, chain, MAX_RECORD, &mut record);
        // n <= MAX_RECORD: it fits the low 15 bits.
        let mut len = n as u16;
        if queue == usize::from(HIPRIO_QUEUE) {
            len |= HIPRIO_RECORD;
        }
        record[..2].copy_from_slice(&len.to_le_bytes());
        self.0.append(&record);
    }
}

/// The records in `recording`, in order: whether each came from the hiprio
/// queue, and its bytes. Stops at a record cut short (a recording that
/// ended in a failed write).
pub fn records(recording: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    let mut rest = recording;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = u16::from_le_bytes(*len);
        let body = tail.get(..usize::from(len & !HIPRIO_RECORD))?;
        rest = &tail[body.len()..];
        Some((len & HIPRIO_RECORD != 0, body))
    })
}

#[cfg(test)]
mod tests {
    use super::records;

    #[test]
    fn records_split_at_their_lengths_and_stop_at_a_cut_one() {
        let rec = [3, 0x00, b'a', b'b', b'c', 1, 0x80, b'h', 5, 0, b'x'];
        let got: Vec<_> = records(&rec).collect();
        assert_eq!(got, [(false, &b"abc"[..]), (true, &b"h"[..])]);
    }
}
