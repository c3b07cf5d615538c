//! Helpers to drive a `PassthroughFs` through the `FileSystem` trait.

#![allow(dead_code)]

use std::ffi::CString;
use std::io::{self, Read, Write};

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, Entry, FileSystem, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use passthrough::{Config, PassthroughFs, ROOT_ID};

/// A request context for `uid`/`gid`.
pub fn ctx(uid: u32, gid: u32) -> Context {
    let mut c = Context::new();
    c.uid = uid;
    c.gid = gid;
    c
}

/// The root's context.
pub fn root() -> Context {
    ctx(0, 0)
}

/// A C string from a Rust one (tests only use NUL-free names).
pub fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A core over a fresh temporary directory.
pub fn new_fs() -> (tempfile::TempDir, PassthroughFs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = PassthroughFs::new(Config::new(dir.path())).unwrap();
    (dir, fs)
}

/// Feeds a byte buffer to `FileSystem::write`.
pub struct BufReader {
    data: Vec<u8>,
    pos: usize,
}

impl BufReader {
    /// Wraps `data`.
    pub fn new(data: Vec<u8>) -> Self {
        BufReader { data, pos: 0 }
    }
}

impl Read for BufReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ZeroCopyReader for BufReader {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(self.data.len() - self.pos);
        let chunk = &mut self.data[self.pos..self.pos + n];
        // SAFETY: `chunk` is a live, exclusively borrowed buffer of `n` bytes.
        let slice = unsafe { FileVolatileSlice::from_raw_ptr(chunk.as_mut_ptr(), n) };
        let written = f.write_at_volatile(slice, off)?;
        self.pos += written;
        Ok(written)
    }
}

/// Collects what `FileSystem::read` produces.
#[derive(Default)]
pub struct BufWriter {
    /// Everything written so far.
    pub data: Vec<u8>,
}

impl Write for BufWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for BufWriter {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let mut buf = vec![0u8; count];
        // SAFETY: `buf` is a live buffer of `count` bytes.
        let slice = unsafe { FileVolatileSlice::from_raw_ptr(buf.as_mut_ptr(), count) };
        let n = f.read_at_volatile(slice, off)?;
        self.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn available_bytes(&self) -> usize {
        usize::MAX / 2
    }
}

/// Looks up a `/`-separated relative path from the root, one component at a time.
pub fn walk(fs: &PassthroughFs, path: &str) -> io::Result<Entry> {
    let mut cur = ROOT_ID;
    let mut last = None;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let e = fs.lookup(&root(), cur, &cs(comp))?;
        cur = e.inode;
        last = Some(e);
    }
    last.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Creates `name` in `parent` with `data`, closing the handle.
pub fn create_file(fs: &PassthroughFs, parent: u64, name: &str, data: &[u8]) -> io::Result<Entry> {
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32,
        mode: 0o644 | libc::S_IFREG,
        umask: 0,
        fuse_flags: 0,
    };
    let (entry, handle, _, _) = fs.create(&root(), parent, &cs(name), args)?;
    let handle = handle.expect("create returns a handle");
    if !data.is_empty() {
        let mut r = BufReader::new(data.to_vec());
        fs.write(
            &root(),
            entry.inode,
            handle,
            &mut r,
            data.len() as u32,
            0,
            None,
            false,
            0,
            0,
        )?;
    }
    fs.release(&root(), entry.inode, 0, handle, false, false, None)?;
    Ok(entry)
}
