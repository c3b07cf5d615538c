//! `--record-requests`: every 9P frame the server receives, on any
//! transport, appended raw to a file to seed fuzz corpora (the
//! `p9_session` and `p9_stream` targets read this format).
//!
//! Frames are self-delimiting by their `size[4]` field, so the recording is
//! the frames back to back, nothing between them. One [`Recorder`] serves
//! every transport of a daemon: the stream reader hands it each whole frame
//! it cut ([`Recorder::frame`]); virtio-9p's serving loop hands it each
//! chain the queue takes ([`ChainRecorder`]), whichever engine serves it.
//! Only whole frames are recorded: not a frame cut short by the end of a
//! stream or of a chain's readable part, nor one larger than msize (the
//! stream skips those unread), nor a size field smaller than a header.
//! [`RecordFile`] keeps frames whole and stops (logged once) at its first
//! failure.
//!
//! The recording holds the guest's file names and file data: for test
//! runs only.

use std::io;
use std::path::Path;

use device_queue::{append_readable, peek, Chain, ChainRecorder, MemGuard, RecordFile};

use crate::server::MAX_MSIZE;
use crate::wire::FrameHeader;

/// Appends 9P frames to a recording (see the [module docs](self)).
#[derive(Debug)]
pub struct Recorder(RecordFile);

impl Recorder {
    /// Records into `path`, created or truncated (mode 0600); call it before
    /// the sandbox goes up.
    pub fn create(path: &Path) -> io::Result<Recorder> {
        RecordFile::create(path).map(Recorder)
    }

    /// Records into `file`.
    pub fn new(file: RecordFile) -> Recorder {
        Recorder(file)
    }

    /// Appends `frame`, one whole frame as received.
    pub fn frame(&self, frame: &[u8]) {
        self.0.append(frame);
    }
}

impl ChainRecorder for Recorder {
    fn record(&self, _queue: usize, mem: &MemGuard, chain: &Chain) {
        if !self.0.is_recording() {
            return;
        }
        let Some(size) = peek::<4>(mem, chain).map(u32::from_le_bytes) else {
            return;
        };
        if (size as usize) < FrameHeader::SIZE || size > MAX_MSIZE {
            return;
        }
        let size = size as usize;
        // Grown as the descriptors are read: the size field is the guest's.
        let mut frame = Vec::new();
        if append_readable(mem, chain, size, &mut frame) == size {
            self.frame(&frame);
        }
    }
}
