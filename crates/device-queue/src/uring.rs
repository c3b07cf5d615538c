//! The io_uring ring of one request queue: operations submitted with their
//! iovecs pointing straight into guest memory, completions collected, reply
//! headers written by the protocol ([`DataPath`]).
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

use io_uring::register::Restriction;
use io_uring::{opcode, types, IoUring};
use log::{error, warn};
use vhost_user_backend::VringState;

use crate::chain::scatter;
use crate::drain::{put_used, DataPath};
use crate::io::{run_blocking, DataOp, Kind};
use crate::{GuestMem, MemGuard};

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

/// A request queue's ring and what is on it.
pub struct UringQueue {
    pub(crate) ring: IoUring,
    pub(crate) slots: Vec<Option<DataOp>>,
    pub(crate) free: Vec<usize>,
    pub(crate) completed: u64,
    pub(crate) inline_done: u64,
    pub(crate) header: Vec<u8>,
    /// Completions being handled (kept for its allocation).
    pub(crate) done: Vec<(u64, i32)>,
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

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(crate) fn overlaps(&self, op: &DataOp) -> bool {
        // The common case (everything completed inline) scans nothing.
        self.in_flight() > 0 && self.slots.iter().flatten().any(|o| o.overlaps(op))
    }

    /// Puts `op` on the submission queue; gives it back if the ring cannot
    /// take it (the submission queue full and the kernel refusing to take
    /// what is on it), so the caller can do it another way.
    pub(crate) fn push(&mut self, op: DataOp) -> Result<(), DataOp> {
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
    pub(crate) fn submit_or_run(
        &mut self,
        path: &dyn DataPath,
        mem: &MemGuard,
        state: &mut VringState<GuestMem>,
        queue: &str,
        op: DataOp,
    ) {
        if let Err(op) = self.push(op) {
            warn!("{queue}: io_uring refused an operation; doing it synchronously");
            let res = run_blocking(&op);
            self.finish(path, mem, state, queue, &op, res);
        }
    }

    /// Writes `op`'s reply and returns its chain to the used ring (`state`:
    /// its vring's, locked by the serving loop).
    pub(crate) fn finish(
        &mut self,
        path: &dyn DataPath,
        mem: &MemGuard,
        state: &mut VringState<GuestMem>,
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
        put_used(state, queue, op.head, used);
    }

    /// Submits what is queued and reaps every operation in flight, writing
    /// the replies and returning each chain to the used ring. It returns
    /// only once nothing is in flight (or aborts the process: see below).
    pub(crate) fn complete_all(
        &mut self,
        path: &dyn DataPath,
        mem: &MemGuard,
        state: &mut VringState<GuestMem>,
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
                self.finish(path, mem, state, queue, &op, res);
            }
            self.done = done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
}
