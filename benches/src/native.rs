//! The physical limit: the workloads' operations as direct system calls in
//! the benchmark's own thread, on the same files, at the same offsets, into
//! buffers of the same sizes as the guest's.
//!
//! - I/O: `pread`/`pwrite` of the request size; a queue depth of 32 is 32
//!   slots served one after the other by this one thread, so the figure is
//!   what one thread does with plain syscalls (latency: the syscall alone).
//! - `create-stat-unlink`: `openat(O_CREAT|O_EXCL|O_RDWR)`, `fstat`,
//!   `close`, `unlinkat`.
//! - `readdir-10k`: `open(O_DIRECTORY)`, `getdents64` with a 4 KiB buffer
//!   (the FUSE guest's READDIR size) until the end, `close`.
//!
//! - the tree workloads: `tree-stat` opens each directory
//!   (`openat(O_DIRECTORY)`), lists it with `getdents64` (4 KiB) and
//!   `fstatat(AT_SYMLINK_NOFOLLOW)`s each entry, depth first, as `find`;
//!   `tree-create` is `mkdirat` per directory (then `openat` of it, once)
//!   and `openat(O_CREAT|O_EXCL)`, `write`, `close` per file; `tree-remove`
//!   lists each directory as `tree-stat` does, then `unlinkat` per file and
//!   `unlinkat(AT_REMOVEDIR)` per directory, bottom-up, as `rm -rf`.
//!   `inode-memory` has no native counterpart (no daemon holds inodes).
//!
//! The I/O buffers are ordinary heap memory (`native`), or, for
//! `native:memfd`, a shared memfd mapping: the kind of memory a vhost-user
//! guest's RAM is, so the figure is the limit of copying into guest memory.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fixture::{CREATE_DIR, DATA, DIR10K, WDATA};
use crate::session::{Probe, Session, SessionError, TreeSession};
use crate::tree::{contents, InodeSet, Tree};
use crate::workload::{pattern_matches, FileRole, IoSpec, Kind, READDIR_BUF, WRITE_BYTE};

/// Why a native operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// A syscall failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The syscall.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// A read returned other data than the file's.
    #[error("{0}")]
    Data(String),
    /// The workload has no native counterpart.
    #[error("{0} has no native counterpart")]
    Unsupported(&'static str),
}

/// A shared memfd mapping, as a vhost-user guest's RAM is.
struct SharedMem {
    ptr: *mut u8,
    len: usize,
}

impl SharedMem {
    fn new(len: usize, fill: u8) -> io::Result<SharedMem> {
        // SAFETY: memfd_create with a NUL-terminated name; we own the result.
        let fd = unsafe { libc::memfd_create(c"native-buf".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        // SAFETY: a fresh shared mapping of the whole memfd; the fd may be
        // closed afterwards, the mapping keeps the memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut m = SharedMem {
            ptr: ptr.cast(),
            len,
        };
        m.bytes().fill(fill);
        Ok(m)
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, mapped
        // only here (the memfd is not shared), and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One I/O slot's buffer.
enum Buffer {
    Heap(Vec<u8>),
    Shared(SharedMem),
}

impl Buffer {
    fn bytes(&mut self) -> &mut [u8] {
        match self {
            Buffer::Heap(v) => v,
            Buffer::Shared(m) => m.bytes(),
        }
    }
}

/// The share's files, opened for one workload.
pub struct NativeSession {
    file: Option<(File, IoSpec, PathBuf)>,
    bufs: Vec<Buffer>,
    done: Vec<(usize, Instant)>,
    dir: Option<(OwnedFd, PathBuf)>,
    dir10k: PathBuf,
    share: PathBuf,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NativeError + 'a {
    move |source| NativeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn last_err(op: &'static str, path: &Path) -> NativeError {
    err(op, path)(io::Error::last_os_error())
}

fn cstring(p: &[u8], path: &Path) -> Result<CString, NativeError> {
    CString::new(p).map_err(|_| NativeError::Io {
        op: "name",
        path: path.to_path_buf(),
        source: io::ErrorKind::InvalidInput.into(),
    })
}

impl NativeSession {
    /// Opens what `kind` needs in `share`; with `shared_memory`, the I/O
    /// buffers are a shared memfd mapping instead of heap memory.
    pub fn open(
        share: &Path,
        kind: &Kind,
        shared_memory: bool,
    ) -> Result<NativeSession, NativeError> {
        let mut s = NativeSession {
            file: None,
            bufs: Vec::new(),
            done: Vec::new(),
            dir: None,
            dir10k: share.join(DIR10K),
            share: share.to_path_buf(),
        };
        match kind {
            Kind::Io(spec) => {
                let (name, write) = match spec.role {
                    FileRole::Read => (DATA, false),
                    FileRole::Write => (WDATA, true),
                };
                let path = share.join(name);
                let f = OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(&path)
                    .map_err(err("open", &path))?;
                let fill = if write { WRITE_BYTE } else { 0 };
                let len = spec.len as usize;
                s.bufs = (0..spec.qd)
                    .map(|_| {
                        if shared_memory {
                            SharedMem::new(len, fill)
                                .map(Buffer::Shared)
                                .map_err(err("memfd", &path))
                        } else {
                            Ok(Buffer::Heap(vec![fill; len]))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                s.file = Some((f, *spec, path));
            }
            Kind::CreateStatUnlink => {
                let path = share.join(CREATE_DIR);
                let c = cstring(path.as_os_str().as_bytes(), &path)?;
                // SAFETY: a NUL-terminated path; the fd returned is owned below.
                let fd = unsafe {
                    libc::open(
                        c.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(last_err("open", &path));
                }
                // SAFETY: `fd` was just opened and nothing else owns it.
                s.dir = Some((unsafe { OwnedFd::from_raw_fd(fd) }, path));
            }
            Kind::Readdir | Kind::Tree(_) => {}
        }
        Ok(s)
    }
}

/// Opens `path` (an absolute path) as a directory.
fn open_dir(path: &Path) -> Result<OwnedFd, NativeError> {
    let c = cstring(path.as_os_str().as_bytes(), path)?;
    // SAFETY: a NUL-terminated path; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err("open", path));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` in `dir` as a directory (`flags` added), timed.
fn open_at(
    dir: &OwnedFd,
    name: &CString,
    flags: libc::c_int,
    path: &Path,
    probe: &mut dyn Probe,
) -> Result<OwnedFd, NativeError> {
    let t0 = Instant::now();
    // SAFETY: a valid directory fd and a NUL-terminated name; the fd
    // returned is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags,
        )
    };
    if fd < 0 {
        return Err(last_err("openat", path));
    }
    probe.op(t0, 0);
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `close` of `fd`, timed.
fn close_timed(fd: OwnedFd, probe: &mut dyn Probe) {
    let t0 = Instant::now();
    drop(fd);
    probe.op(t0, 0);
}

/// An entry of a directory: its name and `d_type`.
struct NativeEntry {
    name: CString,
    ty: u8,
}

/// Every entry of the open directory `dir` but `.` and `..`, by
/// `getdents64` calls of [`READDIR_BUF`] bytes, each reported to `probe`.
fn list(
    dir: &OwnedFd,
    path: &Path,
    buf: &mut [u8],
    probe: &mut dyn Probe,
) -> Result<Vec<NativeEntry>, NativeError> {
    let mut out = Vec::new();
    loop {
        let t0 = Instant::now();
        // SAFETY: `buf` is writable for its length; `dir` is open.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if got < 0 {
            return Err(last_err("getdents64", path));
        }
        probe.op(t0, 0);
        if got == 0 {
            return Ok(out);
        }
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; name }
        let mut at = 0usize;
        while at + 19 <= got as usize {
            let reclen = usize::from(u16::from_le_bytes([buf[at + 16], buf[at + 17]]));
            if reclen == 0 || at + reclen > got as usize {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                out.push(NativeEntry {
                    name: cstring(name, path)?,
                    ty: buf[at + 18],
                });
            }
            at += reclen;
        }
    }
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)` of `name` in `dir`, timed, counted as
/// `units` entries.
fn lstat_at(
    dir: &OwnedFd,
    name: &CString,
    path: &Path,
    probe: &mut dyn Probe,
    units: u64,
) -> Result<libc::stat, NativeError> {
    // SAFETY: `st` is a plain struct the kernel fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let t0 = Instant::now();
    // SAFETY: a valid directory fd, a NUL-terminated name, `st` writable.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(last_err("fstatat", path));
    }
    probe.op(t0, units);
    Ok(st)
}

/// lstats everything below the open directory `dir` (at `path`), depth
/// first.
fn stat_below(
    dir: &OwnedFd,
    path: &Path,
    buf: &mut Vec<u8>,
    probe: &mut dyn Probe,
) -> Result<u64, NativeError> {
    let mut n = 0;
    for e in list(dir, path, buf, probe)? {
        let st = lstat_at(dir, &e.name, path, probe, 1)?;
        n += 1;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub_path = path.join(std::ffi::OsStr::from_bytes(e.name.as_bytes()));
            let sub = open_at(dir, &e.name, 0, &sub_path, probe)?;
            n += stat_below(&sub, &sub_path, buf, probe)?;
            close_timed(sub, probe);
        }
    }
    Ok(n)
}

/// Removes `name` in the open directory `parent` (at `path`'s parent) and
/// everything below it, as `rm -rf`.
fn remove_below(
    parent: &OwnedFd,
    name: &CString,
    path: &Path,
    buf: &mut Vec<u8>,
    probe: &mut dyn Probe,
) -> Result<u64, NativeError> {
    let dir = open_at(parent, name, 0, path, probe)?;
    let mut n = 0;
    for e in list(&dir, path, buf, probe)? {
        let is_dir = match e.ty {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => {
                lstat_at(&dir, &e.name, path, probe, 0)?.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        if is_dir {
            let sub_path = path.join(std::ffi::OsStr::from_bytes(e.name.as_bytes()));
            n += remove_below(&dir, &e.name, &sub_path, buf, probe)?;
        } else {
            let t0 = Instant::now();
            // SAFETY: a valid directory fd and a NUL-terminated name.
            if unsafe { libc::unlinkat(dir.as_raw_fd(), e.name.as_ptr(), 0) } != 0 {
                return Err(last_err("unlinkat", path));
            }
            probe.op(t0, 1);
            n += 1;
        }
    }
    close_timed(dir, probe);
    let t0 = Instant::now();
    // SAFETY: a valid directory fd and a NUL-terminated name.
    if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(last_err("unlinkat(AT_REMOVEDIR)", path));
    }
    probe.op(t0, 1);
    Ok(n + 1)
}

impl TreeSession for NativeSession {
    fn tree_stat(&mut self, root: &str, probe: &mut dyn Probe) -> Result<u64, SessionError> {
        let share = open_dir(&self.share)?;
        let path = self.share.join(root);
        let dir = open_at(&share, &cstring(root.as_bytes(), &path)?, 0, &path, probe)?;
        let mut buf = vec![0u8; READDIR_BUF as usize];
        let n = stat_below(&dir, &path, &mut buf, probe)?;
        close_timed(dir, probe);
        Ok(n)
    }

    fn tree_create(
        &mut self,
        parent: &str,
        tree: &Tree,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError> {
        let data = contents();
        let base = self.share.join(parent);
        let top = open_dir(&base)?;
        let mut n = 0;
        for i in 0..tree.dirs.len() {
            let rel = tree.path(i);
            let path = base.join(&rel);
            let c = cstring(rel.as_os_str().as_bytes(), &path)?;
            let t0 = Instant::now();
            // SAFETY: a valid directory fd and a NUL-terminated path.
            if unsafe { libc::mkdirat(top.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
                return Err(last_err("mkdirat", &path).into());
            }
            probe.op(t0, 1);
            n += 1;
            let files = &tree.files[tree.files_of(i)];
            if files.is_empty() {
                continue;
            }
            let dir = open_at(&top, &c, libc::O_PATH, &path, probe)?;
            for f in files {
                let name = cstring(f.name.as_bytes(), &path)?;
                let t0 = Instant::now();
                // SAFETY: a valid directory fd and a NUL-terminated name;
                // the fd returned is owned below.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644 as libc::c_uint,
                    )
                };
                if fd < 0 {
                    return Err(last_err("openat(O_CREAT)", &path).into());
                }
                probe.op(t0, 0);
                // SAFETY: `fd` was just opened and nothing else owns it.
                let file = unsafe { OwnedFd::from_raw_fd(fd) };
                if f.size > 0 {
                    let t0 = Instant::now();
                    let bytes = &data[..f.size as usize];
                    // SAFETY: `file` is open; `bytes` is readable for its
                    // length.
                    let wrote = unsafe {
                        libc::write(file.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
                    };
                    if wrote != bytes.len() as isize {
                        return Err(if wrote < 0 {
                            last_err("write", &path)
                        } else {
                            NativeError::Data(format!("wrote {wrote} of {} bytes", f.size))
                        }
                        .into());
                    }
                    probe.op(t0, 0);
                }
                let t0 = Instant::now();
                drop(file);
                probe.op(t0, 1);
                n += 1;
            }
            close_timed(dir, probe);
        }
        Ok(n)
    }

    fn tree_remove(
        &mut self,
        parent: &str,
        name: &str,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError> {
        let base = self.share.join(parent);
        let top = open_dir(&base)?;
        let path = base.join(name);
        let mut buf = vec![0u8; READDIR_BUF as usize];
        Ok(remove_below(
            &top,
            &cstring(name.as_bytes(), &path)?,
            &path,
            &mut buf,
            probe,
        )?)
    }

    fn hold_inodes(
        &mut self,
        _set: &InodeSet,
        _probe: &mut dyn Probe,
    ) -> Result<u64, SessionError> {
        Err(NativeError::Unsupported("inode-memory").into())
    }

    fn forget_all(&mut self) -> Result<u64, SessionError> {
        Ok(0)
    }

    fn listing(&self) -> &'static str {
        "getdents64"
    }
}

impl From<NativeError> for SessionError {
    fn from(e: NativeError) -> SessionError {
        SessionError::new(e)
    }
}

impl Session for NativeSession {
    fn io_len(&self) -> Option<u32> {
        self.file.as_ref().map(|(_, spec, _)| spec.len)
    }

    fn submit(&mut self, slot: usize, offset: u64) -> Result<(), SessionError> {
        let Some((f, spec, path)) = &self.file else {
            return Ok(());
        };
        let buf = self.bufs[slot].bytes();
        let n = if spec.write() {
            f.write_at(buf, offset).map_err(err("pwrite", path))?
        } else {
            f.read_at(buf, offset).map_err(err("pread", path))?
        };
        let now = Instant::now();
        if n != buf.len() {
            return Err(NativeError::Data(format!(
                "{n} of {} bytes at offset {offset}",
                buf.len()
            ))
            .into());
        }
        if !spec.write() && !pattern_matches(buf, offset) {
            return Err(NativeError::Data(format!(
                "the data read at offset {offset} is not the file's"
            ))
            .into());
        }
        self.done.push((slot, now));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SessionError> {
        Ok(())
    }

    fn wait(&mut self, done: &mut Vec<(usize, Instant)>) -> Result<(), SessionError> {
        done.append(&mut self.done);
        Ok(())
    }

    fn create_stat_unlink(&mut self, name: &[u8]) -> Result<(), SessionError> {
        let Some((dir, path)) = &self.dir else {
            return Ok(());
        };
        let c = cstring(name, path)?;
        // SAFETY: a valid directory fd and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(last_err("openat", path).into());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `st` is a plain struct the kernel fills in; `file` is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
            return Err(last_err("fstat", path).into());
        }
        drop(file);
        // SAFETY: a valid directory fd and a NUL-terminated name.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(last_err("unlinkat", path).into());
        }
        Ok(())
    }

    fn list_dir(&mut self) -> Result<u64, SessionError> {
        let dir = open_dir(&self.dir10k)?;
        let mut buf = vec![0u8; READDIR_BUF as usize];
        let mut n = 0u64;
        loop {
            // SAFETY: `buf` is writable for its length; `dir` is open.
            let got = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dir.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if got < 0 {
                return Err(last_err("getdents64", &self.dir10k).into());
            }
            if got == 0 {
                break;
            }
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; name }
            let mut at = 0usize;
            while at + 19 <= got as usize {
                let reclen = u16::from_le_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                n += 1;
                at += reclen;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::Fixture;
    use crate::workload::Workload;

    #[test]
    fn native_runs_every_workload_on_a_fixture() {
        let parent = tempfile::tempdir().unwrap();
        let f = Fixture::create(parent.path(), 2 << 20).unwrap();
        for (w, shared) in Workload::ALL
            .into_iter()
            .flat_map(|w| [(w, false), (w, true)])
        {
            let kind = w.kind(1);
            let mut s = NativeSession::open(&f.share, &kind, shared).unwrap();
            match kind {
                Kind::Io(spec) => {
                    assert_eq!(s.io_len(), Some(spec.len));
                    s.submit(0, 1 << 20).unwrap();
                    let mut done = Vec::new();
                    s.wait(&mut done).unwrap();
                    assert_eq!(done.len(), 1);
                }
                Kind::CreateStatUnlink => {
                    s.create_stat_unlink(b"f1").unwrap();
                    s.create_stat_unlink(b"f1").unwrap();
                    assert_eq!(
                        std::fs::read_dir(f.share.join(CREATE_DIR)).unwrap().count(),
                        0
                    );
                }
                Kind::Readdir => {
                    assert_eq!(
                        s.list_dir().unwrap(),
                        crate::workload::READDIR_ENTRIES as u64 + 2
                    )
                }
                // native_walks_makes_and_removes_trees
                Kind::Tree(_) => {}
            }
        }
    }

    #[test]
    fn native_walks_makes_and_removes_trees() {
        use crate::fixture::{MK_DIR, SMALL_TREE, STAT_TREE};
        use crate::stats::Pass;
        let parent = tempfile::tempdir().unwrap();
        let f = Fixture::create(parent.path(), 1 << 20).unwrap();
        let stat = Tree::generate(STAT_TREE, 400, 5);
        f.add_tree("", &stat).unwrap();
        let mut s =
            NativeSession::open(&f.share, &Kind::Tree(crate::workload::TreeOp::Stat), false)
                .unwrap();
        let mut p = Pass::start();
        assert_eq!(s.tree_stat(STAT_TREE, &mut p).unwrap(), stat.entries() - 1);
        assert_eq!(p.units(), stat.entries() - 1);
        // A getdents64, an fstatat per entry, an openat and close per
        // directory.
        assert!(p.requests() > stat.entries() + stat.dirs.len() as u64);

        let small = Tree::generate(SMALL_TREE, 300, 6);
        let mut p = Pass::start();
        assert_eq!(
            s.tree_create(MK_DIR, &small, &mut p).unwrap(),
            small.entries()
        );
        assert_eq!(p.units(), small.entries());
        let file = &small.files[7];
        let path = f
            .share
            .join(MK_DIR)
            .join(small.path(file.dir))
            .join(&file.name);
        assert_eq!(
            std::fs::read(path).unwrap(),
            crate::tree::contents()[..file.size as usize]
        );
        assert!(
            s.tree_create(MK_DIR, &small, &mut p).is_err(),
            "never over an existing tree"
        );
        let mut p = Pass::start();
        assert_eq!(
            s.tree_remove(MK_DIR, SMALL_TREE, &mut p).unwrap(),
            small.entries()
        );
        assert_eq!(std::fs::read_dir(f.share.join(MK_DIR)).unwrap().count(), 0);
        assert!(s.tree_remove(MK_DIR, SMALL_TREE, &mut p).is_err());
        let set = InodeSet {
            root: "inodes",
            count: 1,
        };
        assert!(
            s.hold_inodes(&set, &mut p).is_err(),
            "no native counterpart"
        );
        assert_eq!(s.forget_all().unwrap(), 0);
    }

    #[test]
    fn a_read_of_the_wrong_data_is_an_error() {
        let parent = tempfile::tempdir().unwrap();
        let f = Fixture::create(parent.path(), 1 << 20).unwrap();
        std::fs::write(f.share.join(DATA), vec![0u8; 1 << 20]).unwrap();
        let mut s = NativeSession::open(&f.share, &Workload::RandRead4kQd1.kind(1), false).unwrap();
        assert!(s.submit(0, 4096).is_err());
    }
}
