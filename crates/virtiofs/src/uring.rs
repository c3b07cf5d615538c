//! The io_uring data path: FUSE READ and WRITE as io_uring submissions whose
//! iovecs point straight into guest memory.
//!
//! One ring per request queue, created on the queue's worker thread at its
//! first kick. A kick is served in one pass over the available ring:
//!
//! 1. Each READ or WRITE whose layout this module understands (header and
//!    arguments in the device-readable part, data buffers in guest RAM, a
//!    known open handle, a writable share for WRITE, at most 1 MiB) becomes
//!    one `IORING_OP_READV`/`WRITEV` on the handle's host fd, its iovecs the
//!    guest's own buffers (past the reply header for READ, past the request
//!    arguments for WRITE). Nothing is copied by the daemon.
//! 2. Every other request, or a READ/WRITE this module does not take, first
//!    waits for the in-flight operations (so requests on one queue keep their
//!    order against everything that is not a plain read or write), then goes
//!    through the synchronous path, which also produces every error reply.
//!    A WRITE that overlaps an in-flight read or write of the same inode waits
//!    the same way.
//! 3. At the end of the pass all submissions go to the kernel in one
//!    `io_uring_enter`, the completions fill in the reply headers, the used
//!    ring gets them in one batch, and the guest gets one notification when
//!    the ring (event-idx) asks for it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use log::warn;
use passthrough::{HandleData, PassthroughFs};
use vhost_user_backend::VringRwLock;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use device_queue::{available, notify, return_chain, Chain, MemGuard, MAX_PASSES, NOTIFY_EVERY};

/// FUSE opcodes taken by the ring.
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// `struct fuse_read_in` / `struct fuse_write_in`.
const RW_IN: usize = 40;
/// `struct fuse_out_header`.
const OUT_HEADER: usize = 16;
/// `struct fuse_write_out`.
const WRITE_OUT: usize = 8;
/// Largest READ/WRITE the ring takes (the synchronous path's limit too).
const MAX_IO: u32 = 1 << 20;
/// Submission queue entries per ring.
pub const RING_ENTRIES: u32 = 256;

/// One guest buffer: address and length.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: u64,
    len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// A request on the ring.
struct InFlight {
    head: u16,
    unique: u64,
    kind: Kind,
    /// Where the reply header (and `fuse_write_out`) goes.
    reply: Vec<Seg>,
    /// The guest buffers the kernel reads or writes; stable until completion.
    iovecs: Box<[libc::iovec]>,
    /// Keeps the host fd open until the operation completes.
    _handle: Arc<HandleData>,
    inode: u64,
    start: u64,
    end: u64,
}

// SAFETY: the raw pointers in `iovecs` point into guest memory mappings held
// alive by the serving loop's memory snapshot; an InFlight only moves
// between the worker thread's own structures.
unsafe impl Send for InFlight {}

/// A request queue's ring and what is on it.
pub struct UringQueue {
    ring: IoUring,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    queued: usize,
    completed: u64,
    inline_done: u64,
    /// Try each operation with `RWF_NOWAIT` before using the ring.
    pub inline_first: bool,
}

impl UringQueue {
    /// A ring of [`RING_ENTRIES`] entries; fails where io_uring is
    /// unavailable (old kernels, `kernel.io_uring_disabled`, seccomp).
    pub fn new() -> io::Result<UringQueue> {
        let ring = IoUring::new(RING_ENTRIES)?;
        Ok(UringQueue {
            ring,
            slots: (0..RING_ENTRIES).map(|_| None).collect(),
            free: (0..RING_ENTRIES as usize).rev().collect(),
            queued: 0,
            completed: 0,
            inline_done: 0,
            inline_first: true,
        })
    }

    /// Operations this ring has completed.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// READs and WRITEs this queue's fast path completed inline, without
    /// the ring (they would not block).
    pub fn inline_done(&self) -> u64 {
        self.inline_done
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn overlaps(&self, op: &InFlight) -> bool {
        // The common case (everything completed inline) scans nothing.
        if self.in_flight() == 0 {
            return false;
        }
        self.slots.iter().flatten().any(|o| {
            o.inode == op.inode
                && o.start < op.end
                && op.start < o.end
                && (o.kind == Kind::Write || op.kind == Kind::Write)
        })
    }

    /// Puts `op` on the submission queue.
    fn push(&mut self, op: InFlight, fd: i32, offset: u64) -> io::Result<()> {
        let slot = self.free.pop().expect("caller checked for room");
        let (ptr, n) = (op.iovecs.as_ptr(), op.iovecs.len() as u32);
        let entry = match op.kind {
            Kind::Read => opcode::Readv::new(types::Fd(fd), ptr, n)
                .offset(offset)
                .build(),
            Kind::Write => opcode::Writev::new(types::Fd(fd), ptr, n)
                .offset(offset)
                .build(),
        }
        .user_data(slot as u64);
        self.slots[slot] = Some(op);
        // SAFETY: the iovecs and the buffers they name stay valid until the
        // completion is reaped: the InFlight (owning the iovec array and the
        // fd's handle) stays in its slot, and the serving loop holds the
        // guest memory snapshot until every operation has completed.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.queued = 0;
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.queued += 1;
        Ok(())
    }

    /// Submits what is queued and reaps every operation in flight, writing
    /// the reply headers and returning each chain to the used ring.
    fn complete_all(&mut self, mem: &MemGuard, vring: &VringRwLock, queue: &str) -> io::Result<()> {
        while self.in_flight() > 0 {
            let want = self.in_flight();
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            self.queued = 0;
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (slot, res) in done {
                let Some(op) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                    warn!("{queue}: io_uring completion for unknown slot {slot}");
                    continue;
                };
                self.free.push(slot as usize);
                self.completed += 1;
                return_chain(vring, queue, op.head, reply(mem, &op, res));
            }
        }
        Ok(())
    }
}

/// Writes the reply for a completed operation; returns the used length.
fn reply(mem: &MemGuard, op: &InFlight, res: i32) -> u32 {
    let mut out = Vec::with_capacity(OUT_HEADER + WRITE_OUT);
    let (error, body_len, data_len) = match (res, op.kind) {
        (r, _) if r < 0 => (r, 0, 0),
        (n, Kind::Read) => (0, 0, n as u32),
        (_, Kind::Write) => (0, WRITE_OUT, 0),
    };
    let len = (OUT_HEADER + body_len) as u32 + data_len;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&op.unique.to_le_bytes());
    if body_len > 0 {
        out.extend_from_slice(&(res as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    if scatter(mem, &op.reply, &out).is_err() {
        warn!("cannot write a reply header (unique {})", op.unique);
        return 0;
    }
    len
}

/// Copies `data` into the start of `segs`.
fn scatter(
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
    Ok(())
}

/// Reads `len` bytes starting `skip` bytes into `segs`.
fn gather(mem: &MemGuard, segs: &[Seg], skip: usize, len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut filled = 0;
    let mut pos = 0usize;
    for s in segs {
        let (start, end) = (pos, pos + s.len as usize);
        pos = end;
        if end <= skip + filled || filled == len {
            continue;
        }
        let from = (skip + filled).max(start) - start;
        let n = (s.len as usize - from).min(len - filled);
        mem.read_slice(
            &mut out[filled..filled + n],
            GuestAddress(s.addr + from as u64),
        )
        .ok()?;
        filled += n;
    }
    (filled == len).then_some(out)
}

/// The host iovecs for `len` bytes starting `skip` bytes into `segs`, or
/// `None` if they are not all in guest RAM.
fn iovecs(mem: &MemGuard, segs: &[Seg], skip: usize, len: usize) -> Option<Box<[libc::iovec]>> {
    let mut out: Vec<libc::iovec> = Vec::new();
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
        let slice = mem.get_slice(GuestAddress(s.addr + from as u64), n).ok()?;
        let base: *mut libc::c_void = slice.ptr_guard_mut().as_ptr().cast();
        // Buffers adjacent in host memory (a guest's pages often are) make
        // one iovec: fewer segments for the kernel to walk.
        match out.last_mut() {
            Some(prev) if (prev.iov_base as usize).wrapping_add(prev.iov_len) == base as usize => {
                prev.iov_len += n
            }
            _ => out.push(libc::iovec {
                iov_base: base,
                iov_len: n,
            }),
        }
        left -= n;
    }
    (left == 0).then(|| out.into_boxed_slice())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Tries `op` without blocking (`preadv2`/`pwritev2` with `RWF_NOWAIT`):
/// data in the page cache, or room in it for a write, is moved at once with
/// one system call and no ring round trip. Returns the result to reply with,
/// or `None` when the operation would block (or read only part of what was
/// asked, which a FUSE client would take for end of file), so it goes on the
/// ring. Files that do not support non-blocking I/O (tmpfs) are read and
/// written inline: io_uring would only hand them to a worker thread.
fn try_inline(op: &InFlight, fd: i32, offset: u64) -> Option<i32> {
    let want: usize = op.iovecs.iter().map(|v| v.iov_len).sum();
    let call = |flags: libc::c_int| {
        let (iov, n) = (op.iovecs.as_ptr(), op.iovecs.len() as libc::c_int);
        // SAFETY: the iovecs name guest buffers valid for the duration of the
        // call (the caller holds the memory snapshot); `fd` is held open by
        // the op's handle.
        unsafe {
            match op.kind {
                Kind::Read => libc::preadv2(fd, iov, n, offset as libc::off_t, flags),
                Kind::Write => libc::pwritev2(fd, iov, n, offset as libc::off_t, flags),
            }
        }
    };
    let r = call(libc::RWF_NOWAIT);
    if r >= 0 {
        let r = r as usize;
        return match op.kind {
            Kind::Read if r == want || r == 0 => Some(r as i32),
            Kind::Read => None,
            // A short write is a valid write reply.
            Kind::Write if r > 0 || want == 0 => Some(r as i32),
            Kind::Write => None,
        };
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => None,
        Some(libc::EOPNOTSUPP) => {
            let r = call(0);
            Some(if r >= 0 {
                r as i32
            } else {
                -io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            })
        }
        Some(e) => Some(-e),
        None => Some(-libc::EIO),
    }
}

/// What to do with one chain.
enum Plan {
    Ring(InFlight, i32, u64),
    Sync,
}

/// Decides whether `chain` goes on the ring, and prepares it if so.
fn plan(fs: &PassthroughFs, mem: &MemGuard, chain: &Chain) -> Plan {
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
            return Plan::Sync; // readable after writable: let the sync path refuse it
        }
    }
    let Some(hdr) = gather(mem, &readable, 0, IN_HEADER + RW_IN) else {
        return Plan::Sync;
    };
    let (len, op, unique, nodeid) = (
        u32_at(&hdr, 0),
        u32_at(&hdr, 4),
        u64_at(&hdr, 8),
        u64_at(&hdr, 16),
    );
    let kind = match op {
        FUSE_READ => Kind::Read,
        FUSE_WRITE => Kind::Write,
        _ => return Plan::Sync,
    };
    let args = &hdr[IN_HEADER..];
    let (fh, offset, size) = (u64_at(args, 0), u64_at(args, 8), u32_at(args, 16));
    if size > MAX_IO
        || offset
            .checked_add(size as u64)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        return Plan::Sync;
    }
    let writable_len: usize = writable.iter().map(|s| s.len as usize).sum();
    let iov = match kind {
        Kind::Read => {
            if writable_len < OUT_HEADER || len as usize != IN_HEADER + RW_IN {
                return Plan::Sync;
            }
            let n = (size as usize).min(writable_len - OUT_HEADER);
            iovecs(mem, &writable, OUT_HEADER, n)
        }
        Kind::Write => {
            // fuse_write_in.write_flags: FUSE_WRITE_KILL_SUIDGID asks the
            // server to drop set-id bits; the synchronous path owns that.
            const WRITE_KILL_SUIDGID: u32 = 1 << 2;
            if u32_at(args, 20) & WRITE_KILL_SUIDGID != 0
                || writable_len < OUT_HEADER + WRITE_OUT
                || len as usize != IN_HEADER + RW_IN + size as usize
                || fs.config().readonly
            {
                return Plan::Sync;
            }
            iovecs(mem, &readable, IN_HEADER + RW_IN, size as usize)
        }
    };
    let Some(iovecs) = iov else {
        return Plan::Sync;
    };
    let Ok(handle) = fs.handle(nodeid, fh) else {
        return Plan::Sync;
    };
    let fd = handle.as_raw_fd();
    let op = InFlight {
        head: chain.head_index(),
        unique,
        kind,
        reply: writable,
        iovecs,
        _handle: handle,
        inode: nodeid,
        start: offset,
        end: offset + size as u64,
    };
    Plan::Ring(op, fd, offset)
}

/// Serves one kick of a request queue through `uq`; `sync` serves what the
/// ring does not take. Same contract as `device_queue::serve_kick`.
pub fn serve_kick<E: std::fmt::Display>(
    vring: &VringRwLock,
    mem: Option<MemGuard>,
    event_idx: bool,
    queue: &str,
    fs: &PassthroughFs,
    uq: &mut UringQueue,
    mut sync: impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) -> io::Result<()> {
    device_queue::serve_kick_with(vring, mem, event_idx, queue, |mem| {
        drain(vring, mem, queue, fs, uq, &mut sync)
    })
}

fn drain<E: std::fmt::Display>(
    vring: &VringRwLock,
    mem: &MemGuard,
    queue: &str,
    fs: &PassthroughFs,
    uq: &mut UringQueue,
    sync: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) -> io::Result<()> {
    // Keep serving while the driver keeps adding chains: it refills as the
    // replies come back, and a pass that finds the ring empty ends the kick.
    for _ in 0..MAX_PASSES {
        let chains = available(vring, mem, queue)?;
        if chains.is_empty() {
            return Ok(());
        }
        let mut unsignalled = 0;
        for chain in chains {
            match plan(fs, mem, &chain) {
                Plan::Ring(op, fd, offset) => {
                    if uq.free.is_empty() || uq.overlaps(&op) {
                        uq.complete_all(mem, vring, queue)?;
                    }
                    let inline = if uq.inline_first {
                        try_inline(&op, fd, offset)
                    } else {
                        None
                    };
                    match inline {
                        Some(res) => {
                            return_chain(vring, queue, op.head, reply(mem, &op, res));
                            uq.inline_done += 1;
                            unsignalled += 1;
                        }
                        None => uq.push(op, fd, offset)?,
                    }
                    if uq.in_flight() + unsignalled >= NOTIFY_EVERY {
                        uq.complete_all(mem, vring, queue)?;
                        notify(vring)?;
                        unsignalled = 0;
                    }
                }
                Plan::Sync => {
                    uq.complete_all(mem, vring, queue)?;
                    device_queue::serve_chain(vring, mem, queue, chain, sync);
                }
            }
        }
        uq.complete_all(mem, vring, queue)?;
        notify(vring)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> MemGuard {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        vm_memory::GuestMemoryAtomic::new(m).memory()
    }

    use vm_memory::GuestAddressSpace;

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
        assert_eq!(gather(&m, &segs, 8, 5).unwrap(), b"ijKLM");
        assert_eq!(gather(&m, &segs, 0, 16).unwrap(), b"abcdefghijKLMNOP");
        assert!(gather(&m, &segs, 10, 7).is_none(), "past the end");
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
        assert!(iovecs(
            &m,
            &[Seg {
                addr: 1 << 20,
                len: 8
            }],
            0,
            8
        )
        .is_none());
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
    }
}
