//! One read, write or flush of a host file, and the system calls that do
//! it without the ring: `preadv2`/`pwritev2` with `RWF_NOWAIT` (inline, when
//! it would not block) and their blocking forms (when the ring cannot take
//! an operation).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::chain::Seg;

/// What an operation does with its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// File to guest.
    Read,
    /// Guest to file.
    Write,
    /// Flush the file to stable storage (`fsync`, or `fdatasync` with
    /// `data_only`); no buffers. Always on the ring: it would block.
    Fsync {
        /// Only the data and what is needed to read it back.
        data_only: bool,
    },
}

/// A host file an operation uses; held until the operation completes, so the
/// fd stays open.
pub type OpenFile = Arc<dyn AsRawFd + Send + Sync>;

/// A read or write a protocol planned from one chain.
pub struct DataOp {
    /// The chain's head index.
    pub head: u16,
    /// The protocol's request id (FUSE `unique`, 9P tag), for its reply.
    pub id: u64,
    /// Read or write.
    pub kind: Kind,
    /// Where the reply header goes (the chain's device-writable part).
    pub reply: Vec<Seg>,
    /// The guest buffers the kernel fills or drains: host addresses inside
    /// the memory snapshot the serving loop holds.
    pub iovecs: Box<[libc::iovec]>,
    /// The file; `file.as_raw_fd()` is what is read or written.
    pub file: OpenFile,
    /// File offset.
    pub offset: u64,
    /// The inode, for the overlap check between writes and other I/O.
    pub inode: u64,
}

// SAFETY: the raw pointers in `iovecs` point into guest memory mappings held
// alive by the serving loop's memory snapshot. A DataOp is made, put on the
// ring and completed by the queue's worker within one `drain`, which
// completes every operation before it returns; a `UringQueue` reachable
// from other threads (behind its lock) then holds none.
unsafe impl Send for DataOp {}

impl DataOp {
    /// Bytes the operation moves at most.
    pub fn len(&self) -> u64 {
        self.iovecs.iter().map(|v| v.iov_len as u64).sum()
    }

    /// Whether the operation moves no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn overlaps(&self, other: &DataOp) -> bool {
        if self.inode != other.inode {
            return false;
        }
        // A flush must cover the writes before it, so it waits for those in
        // flight; a write after it waits too (conservative, and rare).
        match (self.kind, other.kind) {
            (Kind::Fsync { .. }, k) | (k, Kind::Fsync { .. }) => return k == Kind::Write,
            _ => {}
        }
        let (a0, b0) = (self.offset, other.offset);
        let (a1, b1) = (a0 + self.len(), b0 + other.len());
        self.inode == other.inode
            && a0 < b1
            && b0 < a1
            && (self.kind == Kind::Write || other.kind == Kind::Write)
    }
}

/// Tries `op` without blocking (`preadv2`/`pwritev2` with `RWF_NOWAIT`).
/// Returns the result to reply with, or `None` when the operation would
/// block (or read only part of what was asked, which a client may take for
/// end of file), so it goes on the ring.
pub fn try_inline(op: &DataOp) -> Option<i32> {
    if let Kind::Fsync { .. } = op.kind {
        return None;
    }
    // SAFETY: the iovecs name guest buffers valid for the duration of the
    // call (the caller holds the memory snapshot); the fd is held open by
    // the op's file.
    unsafe { rw_nowait(op.kind, op.file.as_raw_fd(), &op.iovecs, op.offset) }
}

/// Does `op` with a blocking system call: the bytes moved, or a negated
/// errno. For when the ring cannot take it.
pub(crate) fn run_blocking(op: &DataOp) -> i32 {
    let fd = op.file.as_raw_fd();
    let errno = || {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    match op.kind {
        Kind::Fsync { data_only } => {
            // SAFETY: plain syscalls on an fd the op holds open.
            let r = unsafe {
                if data_only {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                }
            };
            if r == 0 {
                0
            } else {
                errno()
            }
        }
        // SAFETY: the op's iovecs name guest buffers valid while the serving
        // loop holds its memory snapshot, which it does while serving `op`.
        Kind::Write => unsafe { finish_write(fd, &op.iovecs, op.offset, 0) },
        Kind::Read => {
            let (iov, n) = (op.iovecs.as_ptr(), op.iovecs.len() as libc::c_int);
            // SAFETY: as above; preadv2 writes only inside the iovecs.
            let r = unsafe { libc::preadv2(fd, iov, n, op.offset as libc::off_t, 0) };
            if r >= 0 {
                r as i32
            } else {
                errno()
            }
        }
    }
}

/// One read or write of `fd` at `offset` that must not block: the bytes
/// moved (or a negated errno) if it completed, `None` if it would block or a
/// read came back short (the caller then does it where blocking is fine).
/// Files that do not support non-blocking I/O (tmpfs) are read and written
/// here with a plain blocking call: io_uring would only hand them to a
/// worker thread.
///
/// # Safety
/// Every iovec must name memory valid for the access (writable for a read)
/// for the duration of the call.
pub unsafe fn rw_nowait(kind: Kind, fd: i32, iovecs: &[libc::iovec], offset: u64) -> Option<i32> {
    if let Kind::Fsync { .. } = kind {
        return None;
    }
    let want: usize = iovecs.iter().map(|v| v.iov_len).sum();
    let call = |flags: libc::c_int| {
        let (iov, n) = (iovecs.as_ptr(), iovecs.len() as libc::c_int);
        // SAFETY: the caller vouches for the iovecs; a bad fd is an error.
        unsafe {
            match kind {
                Kind::Read => libc::preadv2(fd, iov, n, offset as libc::off_t, flags),
                _ => libc::pwritev2(fd, iov, n, offset as libc::off_t, flags),
            }
        }
    };
    let last_errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    let r = call(libc::RWF_NOWAIT);
    if r >= 0 {
        let r = r as usize;
        return match kind {
            Kind::Read if r == want || r == 0 => Some(r as i32),
            Kind::Read => None,
            Kind::Write if r == want => Some(r as i32),
            // Part was written without blocking: write the rest now (a FUSE
            // client takes a short write for an error, and redoing the whole
            // write elsewhere would append twice to an O_APPEND file).
            // SAFETY: the caller's iovecs, as above.
            Kind::Write if r > 0 => Some(unsafe { finish_write(fd, iovecs, offset, r) }),
            _ => None,
        };
    }
    match last_errno() {
        libc::EAGAIN => None,
        libc::EOPNOTSUPP => {
            let r = call(0);
            Some(if r >= 0 { r as i32 } else { -last_errno() })
        }
        e => Some(-e),
    }
}

/// Writes what is left of `iovecs` after the first `done` bytes, blocking;
/// returns the total written. An error after some bytes were written
/// reports those bytes, as `write(2)` does; an error before any gives its
/// negated errno.
///
/// # Safety
/// As [`rw_nowait`].
unsafe fn finish_write(fd: i32, iovecs: &[libc::iovec], offset: u64, mut done: usize) -> i32 {
    let want: usize = iovecs.iter().map(|v| v.iov_len).sum();
    while done < want {
        let mut rest = Vec::with_capacity(iovecs.len());
        let mut skip = done;
        for v in iovecs {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            rest.push(libc::iovec {
                // SAFETY: `skip` is inside this iovec.
                iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
        let at = (offset + done as u64) as libc::off_t;
        // SAFETY: `rest` names the unwritten tail of the caller's iovecs.
        let r = unsafe { libc::pwritev2(fd, rest.as_ptr(), rest.len() as libc::c_int, at, 0) };
        match r {
            n if n > 0 => done += n as usize,
            0 => break,
            _ => match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                e if done == 0 => return -e.unwrap_or(libc::EIO),
                _ => break,
            },
        }
    }
    done as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    struct File(std::fs::File);
    impl AsRawFd for File {
        fn as_raw_fd(&self) -> i32 {
            self.0.as_raw_fd()
        }
    }

    fn op(kind: Kind, offset: u64, len: usize, file: OpenFile) -> DataOp {
        let buf = Box::leak(vec![0u8; len].into_boxed_slice());
        DataOp {
            head: 0,
            id: 0,
            kind,
            reply: Vec::new(),
            iovecs: vec![libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            }]
            .into_boxed_slice(),
            file,
            offset,
            inode: 1,
        }
    }

    #[test]
    fn overlap_needs_a_write_and_a_shared_range() {
        let f: OpenFile = Arc::new(File(tempfile::tempfile().unwrap()));
        let r1 = op(Kind::Read, 0, 10, f.clone());
        let r2 = op(Kind::Read, 5, 10, f.clone());
        let w = op(Kind::Write, 9, 1, f.clone());
        let w_after = op(Kind::Write, 10, 4, f.clone());
        assert!(!r1.overlaps(&r2), "two reads never conflict");
        assert!(r1.overlaps(&w) && w.overlaps(&r1));
        assert!(!r1.overlaps(&w_after), "adjacent ranges do not overlap");
        let mut other = op(Kind::Write, 0, 10, f.clone());
        other.inode = 2;
        assert!(!r1.overlaps(&other), "another inode");
        let sync = op(Kind::Fsync { data_only: false }, 0, 0, f);
        assert!(
            sync.overlaps(&w) && w.overlaps(&sync),
            "a flush waits for writes"
        );
        assert!(!sync.overlaps(&r1), "not for reads");
        assert!(!sync.overlaps(&other), "nor for another inode");
        assert_eq!(try_inline(&sync), None, "a flush always goes on the ring");
    }

    #[test]
    fn the_rest_of_a_short_write_lands_after_it() {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        let (mut a, mut b) = (*b"abcde", *b"fghij");
        let iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 5,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 5,
            },
        ];
        // As if the non-blocking call had written "abcdef" (6 bytes).
        f.write_all_at(b"abcdef", 100).unwrap();
        // SAFETY: the iovecs name the two local arrays.
        let n = unsafe { finish_write(f.as_raw_fd(), &iov, 100, 6) };
        assert_eq!(n, 10);
        let mut got = Vec::new();
        (&f).read_to_end(&mut got).unwrap();
        assert_eq!(&got[100..], b"abcdefghij");
        assert_eq!(got.len(), 110);
    }

    #[test]
    fn inline_reads_and_writes_a_file() {
        // A memfd: the same non-blocking behaviour on every host, whatever
        // filesystem the temporary directory is on.
        // SAFETY: a NUL-terminated name; the new fd is owned by the File.
        let fd = unsafe { libc::memfd_create(c"inline".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let f: OpenFile = Arc::new(File(unsafe { std::fs::File::from_raw_fd(fd) }));
        let w = op(Kind::Write, 4096, 100, f.clone());
        assert_eq!(try_inline(&w), Some(100));
        let r = op(Kind::Read, 4096, 100, f.clone());
        assert_eq!(try_inline(&r), Some(100));
        // Past the end: 0 bytes, a valid end-of-file reply.
        let eof = op(Kind::Read, 1 << 20, 10, f);
        assert_eq!(try_inline(&eof), Some(0));
    }
}
