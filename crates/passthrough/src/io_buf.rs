//! Byte buffers as the core's zero-copy I/O endpoints: a front end whose
//! wire format lives in plain memory (9P frames, tests) reads file data
//! straight into its reply buffer and writes it straight from its request.

use std::io;

use fuse_backend_rs::api::filesystem::{ZeroCopyReader, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

/// Appends file data to a `Vec` (a reply under construction).
pub struct VecWriter<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> VecWriter<'a> {
    /// Appends to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        VecWriter { buf }
    }
}

impl io::Write for VecWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for VecWriter<'_> {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        self.buf.reserve(count);
        let len = self.buf.len();
        let spare = self.buf.spare_capacity_mut();
        // SAFETY: `spare` is the vector's allocated, unused capacity, at least
        // `count` bytes after `reserve`; the file read only writes into it.
        let slice = unsafe { FileVolatileSlice::from_raw_ptr(spare.as_mut_ptr().cast(), count) };
        let n = f.read_at_volatile(slice, off)?;
        // SAFETY: the read initialised the first `n <= count` spare bytes.
        unsafe { self.buf.set_len(len + n.min(count)) };
        Ok(n)
    }

    fn available_bytes(&self) -> usize {
        usize::MAX - self.buf.len()
    }
}

/// Feeds a byte slice (the data of a write request) to a file.
pub struct SliceReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> SliceReader<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        SliceReader { data, pos: 0 }
    }
}

impl io::Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl ZeroCopyReader for SliceReader<'_> {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(count);
        // SAFETY: `rest[..n]` is valid for reads for the slice's lifetime; the
        // file write only reads from it, so the const-to-mut cast is sound.
        let slice = unsafe { FileVolatileSlice::from_raw_ptr(rest.as_ptr() as *mut u8, n) };
        let written = f.write_at_volatile(slice, off)?;
        self.pos += written;
        Ok(written)
    }
}
