//! The io_uring data path shared by the virtio-fs and virtio-9p devices:
//! reads and writes whose iovecs point straight into guest memory.
//!
//! A protocol ([`DataPath`]) says which chains are plain reads or writes of
//! an open file and how their replies look; this module does the rest, the
//! same way for FUSE READ/WRITE and 9P Tread/Twrite. One ring per request
//! queue, created on the queue's worker thread at its first kick
//! ([`QueueEngine`]). A kick is served in passes over the available ring:
//!
//! 1. Each chain the protocol plans as a [`DataOp`] is first tried inline
//!    with `preadv2`/`pwritev2(RWF_NOWAIT)`: data in the page cache (or room
//!    in it for a write) moves at once, with one system call and no ring
//!    round trip. What would block becomes one `IORING_OP_READV`/`WRITEV` on
//!    the file's host fd, its iovecs the guest's own buffers. Nothing is
//!    copied by the daemon either way.
//! 2. Every other chain first waits for the operations in flight (so requests
//!    on one queue keep their order against everything that is not a plain
//!    read or write), then goes through the device's synchronous path, which
//!    also produces every error reply. A write that overlaps an in-flight
//!    read or write of the same inode waits the same way.
//! 3. Every [`NOTIFY_EVERY`] requests, the completions fill in the reply
//!    headers, the used ring gets them in one batch, and the guest gets one
//!    notification if the ring (event-idx) asks for it.
//!
//! A ring's operations are not system calls, so a seccomp filter never sees
//! them: an unrestricted ring would let a compromised daemon open, connect
//! or unlink whatever its ring names. Every ring is therefore created
//! disabled, restricted to the three operations the engine submits
//! ([`RING_OPS`]: `READV`, `WRITEV`, `FSYNC`, without SQE flags) and to no
//! `io_uring_register` operation at all, and only then enabled
//! ([`restricted_ring`]). A kernel that cannot restrict rings (before 5.10)
//! gets no ring: the queue is served synchronously, as where io_uring is
//! unavailable.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::register::Restriction;
use io_uring::{opcode, types, IoUring};
use log::{debug, error, warn};
use vhost_user_backend::VringRwLock;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::poll::{QueuePollers, DEFAULT_POLL};
use crate::{
    available, notify, return_chain, Chain, MemGuard, QueueError, MAX_PASSES, NOTIFY_EVERY,
};

/// Submission queue entries per ring.
pub const RING_ENTRIES: u32 = 256;

/// The only operations a ring accepts: what [`UringQueue`] submits for
/// [`Kind::Read`], [`Kind::Write`] and [`Kind::Fsync`]. The kernel fails
/// any other with `EACCES`.
pub const RING_OPS: [u8; 3] = [
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
];

/// Why a ring could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// `io_uring_setup` failed (no io_uring, `kernel.io_uring_disabled`,
    /// seccomp, or a kernel without `IORING_SETUP_R_DISABLED`).
    #[error("io_uring_setup: {0}")]
    Setup(io::Error),
    /// The kernel refused the restrictions.
    #[error("cannot restrict the ring: {0}")]
    Restrict(io::Error),
    /// The restricted ring could not be enabled.
    #[error("cannot enable the ring: {0}")]
    Enable(io::Error),
}

/// A ring of `entries` that accepts only [`RING_OPS`], with no SQE flags,
/// and no `io_uring_register` operation: created disabled, restricted,
/// then enabled, so no operation ever runs on it unrestricted. What
/// [`UringQueue::new`] uses.
pub fn restricted_ring(entries: u32) -> Result<IoUring, RingError> {
    let ring = IoUring::builder()
        .setup_r_disabled()
        .build(entries)
        .map_err(RingError::Setup)?;
    // No register-op restriction: once enabled, every io_uring_register
    // call on the ring (registering files, buffers, more restrictions...)
    // fails with EACCES. No SQE-flag restriction: any flag is refused.
    let mut allowed: Vec<Restriction> =
        RING_OPS.iter().map(|&op| Restriction::sqe_op(op)).collect();
    let submitter = ring.submitter();
    submitter
        .register_restrictions(&mut allowed)
        .map_err(RingError::Restrict)?;
    submitter
        .register_enable_rings()
        .map_err(RingError::Enable)?;
    Ok(ring)
}

/// How reads and writes reach the host files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// io_uring submissions straight into guest memory, one ring per request
    /// queue; falls back to [`IoEngine::Sync`] (logged once) where io_uring
    /// is unavailable.
    #[default]
    IoUring,
    /// `preadv`/`pwritev` on the worker thread, one request at a time.
    Sync,
}

/// An engine name that is neither `io-uring` nor `sync`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O engine '{0}' (io-uring or sync)")]
pub struct UnknownEngine(pub String);

impl std::str::FromStr for IoEngine {
    type Err = UnknownEngine;
    fn from_str(s: &str) -> Result<Self, UnknownEngine> {
        match s {
            "io-uring" | "io_uring" | "uring" => Ok(IoEngine::IoUring),
            "sync" => Ok(IoEngine::Sync),
            _ => Err(UnknownEngine(s.to_string())),
        }
    }
}

impl std::fmt::Display for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoEngine::IoUring => "io-uring",
            IoEngine::Sync => "sync",
        })
    }
}

/// One guest buffer: address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Total length of `segs`.
pub fn segs_len(segs: &[Seg]) -> usize {
    segs.iter().map(|s| s.len as usize).sum()
}

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

    fn overlaps(&self, other: &DataOp) -> bool {
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

/// A protocol's side of the engine.
pub trait DataPath {
    /// The operation `chain` asks for, if it is a read or write this engine
    /// can serve as is; `None` sends the chain through the synchronous path.
    fn plan(&self, mem: &MemGuard, chain: &Chain) -> Option<DataOp>;

    /// Fills `out` with the reply header for `op`, which completed with `res`
    /// (bytes moved, or a negated errno); returns the reply's total length
    /// (the header plus, for a read, the `res` bytes already in place).
    fn reply_header(&self, op: &DataOp, res: i32, out: &mut Vec<u8>) -> u32;
}

/// A request queue's ring and what is on it.
pub struct UringQueue {
    ring: IoUring,
    slots: Vec<Option<DataOp>>,
    free: Vec<usize>,
    completed: u64,
    inline_done: u64,
    header: Vec<u8>,
    /// Completions being handled (kept for its allocation).
    done: Vec<(u64, i32)>,
    /// Try each operation with `RWF_NOWAIT` before using the ring.
    pub inline_first: bool,
}

impl UringQueue {
    /// A ring of [`RING_ENTRIES`] entries, restricted to [`RING_OPS`]
    /// ([`restricted_ring`]); fails where io_uring or its restrictions are
    /// unavailable (old kernels, `kernel.io_uring_disabled`, seccomp).
    pub fn new() -> Result<UringQueue, RingError> {
        let ring = restricted_ring(RING_ENTRIES)?;
        Ok(UringQueue {
            ring,
            slots: (0..RING_ENTRIES).map(|_| None).collect(),
            free: (0..RING_ENTRIES as usize).rev().collect(),
            completed: 0,
            inline_done: 0,
            header: Vec::with_capacity(64),
            done: Vec::with_capacity(RING_ENTRIES as usize),
            inline_first: true,
        })
    }

    /// Operations this ring has completed.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Operations completed inline, without the ring (they would not block).
    pub fn inline_done(&self) -> u64 {
        self.inline_done
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn overlaps(&self, op: &DataOp) -> bool {
        // The common case (everything completed inline) scans nothing.
        self.in_flight() > 0 && self.slots.iter().flatten().any(|o| o.overlaps(op))
    }

    /// Puts `op` on the submission queue; gives it back if the ring cannot
    /// take it (the submission queue full and the kernel refusing to take
    /// what is on it), so the caller can do it another way.
    fn push(&mut self, op: DataOp) -> Result<(), DataOp> {
        let Some(slot) = self.free.pop() else {
            return Err(op);
        };
        let (ptr, n) = (op.iovecs.as_ptr(), op.iovecs.len() as u32);
        let fd = types::Fd(op.file.as_raw_fd());
        let entry = match op.kind {
            Kind::Read => opcode::Readv::new(fd, ptr, n).offset(op.offset).build(),
            Kind::Write => opcode::Writev::new(fd, ptr, n).offset(op.offset).build(),
            Kind::Fsync { data_only } => opcode::Fsync::new(fd)
                .flags(if data_only {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                })
                .build(),
        }
        .user_data(slot as u64);
        self.slots[slot] = Some(op);
        // SAFETY: the iovecs and the buffers they name stay valid until the
        // completion is reaped: the DataOp (owning the iovec array and the
        // file) stays in its slot, and the serving loop holds the guest
        // memory snapshot until every operation has completed.
        let mut pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if !pushed && self.ring.submit().is_ok() {
            // SAFETY: as above.
            pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        }
        if pushed {
            return Ok(());
        }
        self.free.push(slot);
        Err(self.slots[slot].take().expect("just put there"))
    }

    /// Puts `op` on the ring, or, if the ring cannot take it, does it here
    /// with a blocking call and replies.
    fn submit_or_run(
        &mut self,
        path: &dyn DataPath,
        mem: &MemGuard,
        vring: &VringRwLock,
        queue: &str,
        op: DataOp,
    ) {
        if let Err(op) = self.push(op) {
            warn!("{queue}: io_uring refused an operation; doing it synchronously");
            let res = run_blocking(&op);
            self.finish(path, mem, vring, queue, &op, res);
        }
    }

    /// Writes `op`'s reply and returns its chain to the used ring.
    fn finish(
        &mut self,
        path: &dyn DataPath,
        mem: &MemGuard,
        vring: &VringRwLock,
        queue: &str,
        op: &DataOp,
        res: i32,
    ) {
        self.header.clear();
        let len = path.reply_header(op, res, &mut self.header);
        let used = match scatter(mem, &op.reply, &self.header) {
            Ok(()) => len,
            Err(e) => {
                warn!("{queue}: cannot write the reply to chain {}: {e}", op.head);
                0
            }
        };
        return_chain(vring, queue, op.head, used);
    }

    /// Submits what is queued and reaps every operation in flight, writing
    /// the replies and returning each chain to the used ring. It returns
    /// only once nothing is in flight (or aborts the process: see below).
    fn complete_all(
        &mut self,
        path: &dyn DataPath,
        mem: &MemGuard,
        vring: &VringRwLock,
        queue: &str,
    ) {
        let mut warned = false;
        while self.in_flight() > 0 {
            match self.ring.submit_and_wait(self.in_flight()) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    // Operations in flight may still write into guest memory:
                    // this loop must not return before they complete, or the
                    // memory snapshot could go while the kernel uses it.
                    // The kernel's transient failures (EAGAIN, EBUSY, ENOMEM)
                    // are retried; anything else cannot be recovered safely.
                    match e.raw_os_error() {
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOMEM) => {
                            if !warned {
                                warn!("{queue}: io_uring wait failed ({e}); retrying");
                                warned = true;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        _ => {
                            error!(
                                "{queue}: io_uring wait failed ({e}) with {} operations on guest memory in flight; aborting",
                                self.in_flight()
                            );
                            std::process::abort();
                        }
                    }
                }
            }
            let mut done = std::mem::take(&mut self.done);
            done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for (slot, res) in done.drain(..) {
                let slot = slot as usize;
                let Some(op) = self.slots.get_mut(slot).and_then(Option::take) else {
                    warn!("{queue}: io_uring completion for unknown slot {slot}");
                    continue;
                };
                self.free.push(slot);
                self.completed += 1;
                self.finish(path, mem, vring, queue, &op, res);
            }
            self.done = done;
        }
    }
}

/// Copies `data` into the start of `segs`.
pub fn scatter(
    mem: &MemGuard,
    segs: &[Seg],
    mut data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    for s in segs {
        if data.is_empty() {
            break;
        }
        let n = data.len().min(s.len as usize);
        mem.write_slice(&data[..n], GuestAddress(s.addr))?;
        data = &data[n..];
    }
    if !data.is_empty() {
        // The buffers are too short for the reply: the caller must not
        // report bytes it did not write.
        return Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: data.len() + segs.iter().map(|s| s.len as usize).sum::<usize>(),
            completed: segs.iter().map(|s| s.len as usize).sum(),
        });
    }
    Ok(())
}

/// Reads `N` bytes starting at the beginning of `segs`, or `None` if they are
/// shorter or not in guest memory.
pub fn gather<const N: usize>(mem: &MemGuard, segs: &[Seg]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    for s in segs {
        if filled == N {
            break;
        }
        let n = (s.len as usize).min(N - filled);
        mem.read_slice(&mut out[filled..filled + n], GuestAddress(s.addr))
            .ok()?;
        filled += n;
    }
    (filled == N).then_some(out)
}

/// The first `N` bytes of `chain`'s device-readable part, read without
/// allocating: what a [`DataPath::plan`] looks at first to turn away the
/// chains that are not its business (most of them, on a metadata
/// workload). `None` if the readable part is shorter.
pub fn peek<const N: usize>(mem: &MemGuard, chain: &Chain) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    for d in chain.clone() {
        if filled == N || d.is_write_only() {
            break;
        }
        let n = (d.len() as usize).min(N - filled);
        mem.read_slice(&mut out[filled..filled + n], d.addr())
            .ok()?;
        filled += n;
    }
    (filled == N).then_some(out)
}

/// The host iovecs for `len` bytes starting `skip` bytes into `segs`, or
/// `None` if they are not all in guest RAM or need more than `IOV_MAX`
/// segments (the synchronous path serves those). Buffers adjacent in host memory
/// (a guest's pages often are) make one iovec: fewer segments for the kernel
/// to walk.
pub fn iovecs(mem: &MemGuard, segs: &[Seg], skip: usize, len: usize) -> Option<Box<[libc::iovec]>> {
    let mut out: Vec<libc::iovec> = Vec::new();
    // Buffers adjacent in guest memory are translated as one run: one
    // region lookup for a whole run of pages instead of one per page.
    let mut run: Option<(u64, usize)> = None;
    let mut pos = 0usize;
    let mut left = len;
    for s in segs {
        let (start, end) = (pos, pos + s.len as usize);
        pos = end;
        if left == 0 {
            break;
        }
        if end <= skip {
            continue;
        }
        let from = skip.max(start) - start;
        let n = (s.len as usize - from).min(left);
        let addr = s.addr.checked_add(from as u64)?;
        run = match run {
            Some((a, l)) if a.checked_add(l as u64) == Some(addr) => Some((a, l + n)),
            Some((a, l)) => {
                push_host_run(mem, &mut out, a, l)?;
                Some((addr, n))
            }
            None => Some((addr, n)),
        };
        left -= n;
    }
    if let Some((a, l)) = run {
        push_host_run(mem, &mut out, a, l)?;
    }
    // preadv2 and io_uring refuse more than IOV_MAX segments.
    (left == 0 && out.len() <= libc::UIO_MAXIOV as usize).then(|| out.into_boxed_slice())
}

/// Appends the host iovecs of the guest range `addr..addr + len` (which may
/// span memory regions) to `out`, merging with the last one when adjacent
/// in host memory.
fn push_host_run(mem: &MemGuard, out: &mut Vec<libc::iovec>, addr: u64, len: usize) -> Option<()> {
    for slice in mem.get_slices(GuestAddress(addr), len) {
        let slice = slice.ok()?;
        let base: *mut libc::c_void = slice.ptr_guard_mut().as_ptr().cast();
        let n = slice.len();
        match out.last_mut() {
            Some(prev) if (prev.iov_base as usize).wrapping_add(prev.iov_len) == base as usize => {
                prev.iov_len += n
            }
            _ => out.push(libc::iovec {
                iov_base: base,
                iov_len: n,
            }),
        }
    }
    Some(())
}

/// A chain's device-readable and device-writable buffers, or `None` if a
/// readable buffer follows a writable one (the synchronous path refuses it).
pub fn split_chain(chain: &Chain) -> Option<(Vec<Seg>, Vec<Seg>)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for d in chain.clone() {
        let seg = Seg {
            addr: d.addr().0,
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return None;
        }
    }
    Some((readable, writable))
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
fn run_blocking(op: &DataOp) -> i32 {
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

/// Serves what is available on `vring` in passes (up to [`MAX_PASSES`], so a
/// driver refilling as replies arrive is served without another wake-up):
/// with `data`, the chains its path plans go inline or on the ring; every
/// other chain first waits for the ring, then goes to `sync`. The guest is
/// notified every [`NOTIFY_EVERY`] requests and at the end of each pass.
/// Both engines run this one loop.
pub(crate) fn drain<E: std::fmt::Display>(
    vring: &VringRwLock,
    mem: &MemGuard,
    queue: &str,
    mut data: Option<(&dyn DataPath, &mut UringQueue)>,
    taken: Option<&AtomicU64>,
    sync: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) -> Result<(), QueueError> {
    let r = drain_passes(vring, mem, queue, &mut data, taken, sync);
    if r.is_err() {
        // Operations in flight use guest memory: none may outlive the
        // snapshot the caller drops when this returns.
        if let Some((path, uq)) = &mut data {
            uq.complete_all(*path, mem, vring, queue);
        }
    }
    r
}

/// `path`'s plan for `chain`; a plan that panics (a bug: no guest input
/// should make it) is logged and the chain goes the synchronous way, so
/// the panic neither ends the worker nor leaves operations in flight on
/// guest memory the unwinding would release.
fn plan_caught(path: &dyn DataPath, mem: &MemGuard, chain: &Chain, queue: &str) -> Option<DataOp> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| path.plan(mem, chain))).unwrap_or_else(
        |_| {
            error!(
                "{queue}: planning chain {} panicked; serving it synchronously",
                chain.head_index()
            );
            None
        },
    )
}

fn drain_passes<E: std::fmt::Display>(
    vring: &VringRwLock,
    mem: &MemGuard,
    queue: &str,
    data: &mut Option<(&dyn DataPath, &mut UringQueue)>,
    taken: Option<&AtomicU64>,
    sync: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) -> Result<(), QueueError> {
    for _ in 0..MAX_PASSES {
        let chains = available(vring, mem)?;
        if chains.is_empty() {
            return Ok(());
        }
        if let Some(t) = taken {
            t.fetch_add(chains.len() as u64, Ordering::Relaxed);
        }
        let mut unsignalled = 0;
        for chain in chains {
            let planned = match data {
                Some((path, uq)) => match plan_caught(*path, mem, &chain, queue) {
                    Some(op) => Some((*path, &mut **uq, op)),
                    None => {
                        uq.complete_all(*path, mem, vring, queue);
                        None
                    }
                },
                None => None,
            };
            match planned {
                Some((path, uq, op)) => {
                    if uq.free.is_empty() || uq.overlaps(&op) {
                        uq.complete_all(path, mem, vring, queue);
                    }
                    match uq.inline_first.then(|| try_inline(&op)).flatten() {
                        Some(res) => {
                            uq.finish(path, mem, vring, queue, &op, res);
                            uq.inline_done += 1;
                            unsignalled += 1;
                        }
                        None => uq.submit_or_run(path, mem, vring, queue, op),
                    }
                }
                None => {
                    crate::serve_chain(vring, mem, queue, chain, sync);
                    unsignalled += 1;
                }
            }
            let in_flight = data.as_ref().map_or(0, |(_, uq)| uq.in_flight());
            if in_flight + unsignalled >= NOTIFY_EVERY {
                if let Some((path, uq)) = data {
                    uq.complete_all(*path, mem, vring, queue);
                }
                notify(vring)?;
                unsignalled = 0;
            }
        }
        if let Some((path, uq)) = data {
            uq.complete_all(*path, mem, vring, queue);
        }
        notify(vring)?;
    }
    Ok(())
}

/// A request queue's ring: not created yet, working, or unavailable.
enum RingSlot {
    Unset,
    Ready(Box<UringQueue>),
    Unavailable,
}

/// How a device serves its queues' kicks: the engine asked for, each
/// queue's ring (made by [`QueueEngine::prepare_rings`], or else on first
/// use by the queue's worker thread; where
/// io_uring is unavailable the queue is served synchronously, logged once
/// per device) and each queue's polling. Both the virtio-fs and the
/// virtio-9p device hold one.
pub struct QueueEngine {
    engine: IoEngine,
    rings: Vec<Mutex<RingSlot>>,
    /// Per queue: the descriptor chains (requests) taken off its ring.
    taken: Vec<AtomicU64>,
    fallback_logged: AtomicBool,
    inline_first: bool,
    pollers: QueuePollers,
}

impl QueueEngine {
    /// For queues `0..queues`: io_uring where available, polling up to
    /// [`DEFAULT_POLL`].
    pub fn new(queues: usize) -> QueueEngine {
        QueueEngine {
            engine: IoEngine::default(),
            rings: (0..queues).map(|_| Mutex::new(RingSlot::Unset)).collect(),
            taken: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            fallback_logged: AtomicBool::new(false),
            inline_first: true,
            pollers: QueuePollers::new(queues, DEFAULT_POLL),
        }
    }

    /// Selects the engine.
    pub fn set_engine(&mut self, engine: IoEngine) {
        self.engine = engine;
    }

    /// The engine asked for.
    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    /// With `false`, every operation goes through the ring, even when it
    /// would not block (default `true`). For tests and measurements.
    pub fn set_inline_first(&mut self, inline_first: bool) {
        self.inline_first = inline_first;
    }

    /// How long a queue's worker polls before it sleeps (adaptive, up to
    /// `max`; zero: never).
    pub fn set_poll(&mut self, max: std::time::Duration) {
        self.pollers = QueuePollers::new(self.rings.len(), max);
    }

    /// Makes the ring of an unset slot (or marks it unavailable, logged
    /// once per device).
    fn fill(&self, slot: &mut RingSlot, queue: &str) {
        if let RingSlot::Unset = slot {
            *slot = match UringQueue::new() {
                Ok(r) => {
                    debug!("{queue}: io_uring ring ready");
                    RingSlot::Ready(Box::new(r))
                }
                Err(e) => {
                    if !self.fallback_logged.swap(true, Ordering::AcqRel) {
                        warn!("io_uring unavailable ({e}); serving reads and writes synchronously");
                    }
                    RingSlot::Unavailable
                }
            };
        }
    }

    /// Makes the rings of `queues` now, with the io_uring engine, instead
    /// of at each queue's first kick. A daemon calls this before its
    /// seccomp filter goes up: the filter then forbids `io_uring_setup`
    /// and `io_uring_register`, so code running in the daemon cannot make
    /// a ring without restrictions.
    pub fn prepare_rings(&self, queues: impl IntoIterator<Item = usize>) {
        if self.engine != IoEngine::IoUring {
            return;
        }
        for q in queues {
            if let Some(r) = self.rings.get(q) {
                let mut slot = r.lock().unwrap_or_else(|p| p.into_inner());
                self.fill(&mut slot, &format!("queue {q}"));
            }
        }
    }

    /// How many queues have a working ring.
    pub fn ready_rings(&self) -> usize {
        self.rings
            .iter()
            .filter(|r| {
                matches!(
                    &*r.lock().unwrap_or_else(|p| p.into_inner()),
                    RingSlot::Ready(_)
                )
            })
            .count()
    }

    fn counts(&self, count: impl Fn(&UringQueue) -> u64) -> u64 {
        self.rings
            .iter()
            .map(|r| match &*r.lock().unwrap_or_else(|p| p.into_inner()) {
                RingSlot::Ready(uq) => count(uq),
                _ => 0,
            })
            .sum()
    }

    /// Operations completed through the rings, all queues.
    pub fn ring_completions(&self) -> u64 {
        self.counts(UringQueue::completed)
    }

    /// Operations completed inline (they would not block), all queues.
    pub fn inline_completions(&self) -> u64 {
        self.counts(UringQueue::inline_done)
    }

    /// Per queue (index = queue number): how many requests (descriptor
    /// chains) it has taken off its ring so far. Shows how a driver spreads
    /// its requests over the queues (Linux 6.11 and later use one request
    /// queue per vCPU).
    pub fn requests_per_queue(&self) -> Vec<u64> {
        self.taken
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect()
    }

    /// Serves one kick of queue `q` (named `queue` in log lines), with the
    /// kick protocol of [`crate::serve_kick_with`]. With `data`, the queue
    /// polls, and with the io_uring engine and a ring its reads and writes
    /// go through [`drain`]'s inline-then-ring path; every other chain goes
    /// to `sync`. Without `data` (a queue such as virtio-fs's hiprio), every
    /// chain goes to `sync` and the queue never polls. Never fails: a
    /// broken queue is stopped (see [`crate::serve_kick_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn serve_kick<E: std::fmt::Display>(
        &self,
        q: usize,
        vring: &VringRwLock,
        mem: Option<MemGuard>,
        event_idx: bool,
        queue: &str,
        data: Option<&dyn DataPath>,
        mut sync: impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
    ) {
        let taken = self.taken.get(q);
        let Some(path) = data else {
            let mut off = crate::Poller::new(std::time::Duration::ZERO);
            return crate::serve_kick_with(vring, mem, event_idx, queue, &mut off, |mem| {
                drain(vring, mem, queue, None, taken, &mut sync)
            });
        };
        let mut poller = self.pollers.get(q);
        let mut slot = match (self.engine, self.rings.get(q)) {
            (IoEngine::IoUring, Some(r)) => Some(r.lock().unwrap_or_else(|p| p.into_inner())),
            _ => None,
        };
        if let Some(s) = slot.as_deref_mut() {
            self.fill(s, queue);
        }
        let mut uq = match slot.as_deref_mut() {
            Some(RingSlot::Ready(uq)) => {
                uq.inline_first = self.inline_first;
                Some(&mut **uq)
            }
            _ => None,
        };
        crate::serve_kick_with(vring, mem, event_idx, queue, &mut poller, |mem| {
            let data = uq.as_deref_mut().map(|uq| (path, uq));
            drain(vring, mem, queue, data, taken, &mut sync)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

    fn mem() -> MemGuard {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        vm_memory::GuestMemoryAtomic::new(m).memory()
    }

    #[test]
    fn gather_and_iovecs_walk_segments() {
        let m = mem();
        m.write_slice(b"abcdefghij", GuestAddress(0x100)).unwrap();
        m.write_slice(b"KLMNOP", GuestAddress(0x800)).unwrap();
        let segs = [
            Seg {
                addr: 0x100,
                len: 10,
            },
            Seg {
                addr: 0x800,
                len: 6,
            },
        ];
        assert_eq!(&gather::<13>(&m, &segs).unwrap(), b"abcdefghijKLM");
        assert_eq!(&gather::<16>(&m, &segs).unwrap(), b"abcdefghijKLMNOP");
        assert!(gather::<17>(&m, &segs).is_none(), "past the end");
        let iov = iovecs(&m, &segs, 9, 4).unwrap();
        assert_eq!(iov.len(), 2);
        assert_eq!((iov[0].iov_len, iov[1].iov_len), (1, 3));
        // Adjacent buffers merge into one iovec.
        let adjacent = [
            Seg {
                addr: 0x100,
                len: 10,
            },
            Seg {
                addr: 0x10a,
                len: 6,
            },
        ];
        let iov = iovecs(&m, &adjacent, 2, 12).unwrap();
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 12);
        assert!(iovecs(&m, &segs, 0, 17).is_none());
        // Outside guest memory.
        let outside = [Seg {
            addr: 1 << 20,
            len: 8,
        }];
        assert!(iovecs(&m, &outside, 0, 8).is_none());
        assert!(gather::<8>(&m, &outside).is_none());
    }

    #[test]
    fn scatter_spans_segments() {
        let m = mem();
        let segs = [Seg { addr: 0x10, len: 3 }, Seg { addr: 0x40, len: 8 }];
        scatter(&m, &segs, b"12345").unwrap();
        let mut a = [0u8; 3];
        let mut b = [0u8; 2];
        m.read_slice(&mut a, GuestAddress(0x10)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x40)).unwrap();
        assert_eq!((&a, &b), (b"123", b"45"));
        // A reply longer than the buffers is an error, not a silent cut.
        let short = [Seg { addr: 0x10, len: 3 }];
        assert!(scatter(&m, &short, b"12345").is_err());
        assert!(scatter(&m, &short, b"123").is_ok());
    }

    /// A ring as the engine makes it runs what the engine submits (READV,
    /// WRITEV, FSYNC) and nothing else: an OPENAT, which no seccomp filter
    /// would see, fails with EACCES, as does an engine operation with an
    /// SQE flag and every io_uring_register operation.
    #[test]
    fn rings_run_only_the_engines_operations() {
        if let Err(e) = IoUring::new(8) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI's kernel has io_uring: {e}"
            );
            eprintln!("SKIP: io_uring unavailable here ({e})");
            return;
        }
        let mut uq = UringQueue::new().expect("a restricted ring where io_uring works");
        let ring = &mut uq.ring;
        let run = |ring: &mut IoUring, entry: io_uring::squeue::Entry| -> i32 {
            // SAFETY: every buffer and path the entry names lives until the
            // completion is reaped below.
            unsafe { ring.submission().push(&entry.user_data(7)) }.expect("room on the ring");
            ring.submit_and_wait(1).expect("io_uring_enter");
            let cqe = ring.completion().next().expect("a completion");
            assert_eq!(cqe.user_data(), 7);
            cqe.result()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"....").unwrap();
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), cpath.as_ptr())
            .flags(libc::O_RDONLY | libc::O_CLOEXEC)
            .build();
        assert_eq!(run(ring, open), -libc::EACCES, "OPENAT must be refused");

        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let fd = types::Fd(f.as_raw_fd());
        let mut msg = *b"hello";
        let iov = [libc::iovec {
            iov_base: msg.as_mut_ptr().cast(),
            iov_len: msg.len(),
        }];
        let write = opcode::Writev::new(fd, iov.as_ptr(), 1).offset(0).build();
        assert_eq!(run(ring, write), 5, "WRITEV works");
        let mut got = [0u8; 5];
        let iov = [libc::iovec {
            iov_base: got.as_mut_ptr().cast(),
            iov_len: got.len(),
        }];
        let read = opcode::Readv::new(fd, iov.as_ptr(), 1).offset(0).build();
        assert_eq!(run(ring, read), 5, "READV works");
        assert_eq!(&got, b"hello");
        assert_eq!(run(ring, opcode::Fsync::new(fd).build()), 0, "FSYNC works");

        let flagged = opcode::Readv::new(fd, iov.as_ptr(), 1)
            .build()
            .flags(io_uring::squeue::Flags::ASYNC);
        assert_eq!(run(ring, flagged), -libc::EACCES, "no SQE flags");

        let refused = |r: io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        let submitter = ring.submitter();
        assert_eq!(
            refused(submitter.register_files(&[f.as_raw_fd()]).map(drop)),
            Some(libc::EACCES),
            "nothing can be registered"
        );
        let mut more = [Restriction::sqe_op(opcode::OpenAt::CODE)];
        assert!(
            refused(submitter.register_restrictions(&mut more)).is_some(),
            "the restrictions cannot be changed"
        );
    }

    #[test]
    fn engine_names() {
        assert_eq!("io-uring".parse::<IoEngine>(), Ok(IoEngine::IoUring));
        assert_eq!("sync".parse::<IoEngine>(), Ok(IoEngine::Sync));
        assert!("aio".parse::<IoEngine>().is_err());
        assert_eq!(IoEngine::IoUring.to_string(), "io-uring");
    }

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
