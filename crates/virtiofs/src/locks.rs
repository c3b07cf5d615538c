//! Blocking lock requests (FUSE_SETLKW) without a blocked queue.
//!
//! A SETLKW the host cannot grant at once must wait for another holder (a
//! host process, another guest, another open in this guest) to let go. The
//! worker that took it serves its whole queue, and the holder's unlock may
//! be queued right behind it: waiting there would stall the queue, and
//! could deadlock the guest. So the device tries the lock once
//! (`try_setlk`, never blocking) and, when it conflicts, keeps the chain:
//! [`LockWaiter`]'s thread tries again, every millisecond at first and
//! then backing off to every 20 ms, and answers the chain itself (the
//! reply written into the chain, the chain returned to the used ring, the
//! guest notified) once the lock is granted or fails otherwise. Meanwhile
//! the queue goes on.
//!
//! A FUSE_INTERRUPT naming a waiting request (on the hiprio queue; Linux's
//! virtio-fs driver does not send them today, other frontends may) answers
//! it with `EINTR`. A device reset drops every waiting request unanswered:
//! the driver has abandoned its rings.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_queue::{scatter, GuestMem, Seg};
use fuse_backend_rs::abi::fuse_abi::OutHeader;
use fuse_backend_rs::api::filesystem::FileLock;
use log::{debug, warn};
use passthrough::PassthroughFs;
use vhost_user_backend::VringRwLock;
use vm_memory::{ByteValued, GuestAddressSpace};

/// The first pause between two attempts of a waiting lock.
const FIRST_TICK: Duration = Duration::from_millis(1);
/// The longest pause between two attempts.
const MAX_TICK: Duration = Duration::from_millis(20);
/// The most requests kept waiting at once, all queues together: beyond,
/// a contended SETLKW is answered `ENOLCK` (a guest's rings could
/// otherwise keep the waiter retrying tens of thousands of locks).
pub(crate) const MAX_WAITING: usize = 1024;

/// A SETLKW the device keeps until it can answer it.
pub(crate) struct PendingLock {
    /// The queue it came on, to answer on.
    pub vring: VringRwLock,
    /// For log lines.
    pub queue: String,
    /// The chain's head.
    pub head: u16,
    /// The chain's device-writable part, where the reply goes.
    pub writable: Vec<Seg>,
    /// The request's FUSE unique.
    pub unique: u64,
    /// What to lock.
    pub inode: u64,
    /// The open file it is on.
    pub handle: u64,
    /// The lock.
    pub lock: FileLock,
    /// `lk_flags` (`FUSE_LK_FLOCK`).
    pub lk_flags: u32,
}

enum Msg {
    Wait(Box<PendingLock>, u64),
    Interrupt(u64),
}

/// The thread that waits for the device's contended locks (started with
/// the first one) and answers them.
pub(crate) struct LockWaiter {
    fs: Arc<PassthroughFs>,
    tx: Mutex<Option<Sender<Msg>>>,
    /// Device resets so far: a request kept from before one is dropped.
    epoch: Arc<AtomicU64>,
    /// Requests kept and not yet answered or dropped.
    waiting: Arc<AtomicUsize>,
}

impl LockWaiter {
    /// A waiter for the locks of `fs`.
    pub(crate) fn new(fs: Arc<PassthroughFs>) -> LockWaiter {
        LockWaiter {
            fs,
            tx: Mutex::new(None),
            epoch: Arc::new(AtomicU64::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Keeps `p` and answers it once its lock is granted or fails; memory
    /// for the reply is taken from `mem` at that time. False if
    /// [`MAX_WAITING`] requests already wait or the waiter thread cannot be
    /// started (the caller then answers at once, `ENOLCK`).
    pub(crate) fn wait(&self, p: PendingLock, mem: GuestMem) -> bool {
        if self.waiting.load(Ordering::Acquire) >= MAX_WAITING {
            return false;
        }
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.is_none() {
            let (s, r) = mpsc::channel();
            let fs = self.fs.clone();
            let epoch = self.epoch.clone();
            let waiting = self.waiting.clone();
            let spawned = std::thread::Builder::new()
                .name("lock_waiter".into())
                .spawn(move || run(fs, r, mem, epoch, waiting));
            if let Err(e) = spawned {
                warn!("cannot start the lock waiter: {e}; a contended SETLKW gets ENOLCK");
                return false;
            }
            *tx = Some(s);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let sent = tx
            .as_ref()
            .is_some_and(|s| s.send(Msg::Wait(Box::new(p), epoch)).is_ok());
        if sent {
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
        sent
    }

    /// A FUSE_INTERRUPT for request `unique`: a waiting lock request with
    /// that unique is answered with `EINTR`.
    pub(crate) fn interrupt(&self, unique: u64) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = tx.as_ref() {
            let _ = s.send(Msg::Interrupt(unique));
        }
    }

    /// The device was reset: requests kept from before are dropped.
    pub(crate) fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // Wake the thread so it drops them now.
        self.interrupt(0);
    }
}

/// The waiter thread: takes new requests, tries each waiting lock, answers
/// those that are done, and sleeps between rounds (backing off).
fn run(
    fs: Arc<PassthroughFs>,
    rx: Receiver<Msg>,
    mem: GuestMem,
    epoch: Arc<AtomicU64>,
    count: Arc<AtomicUsize>,
) {
    let mut waiting: Vec<(Box<PendingLock>, u64)> = Vec::new();
    let mut tick = FIRST_TICK;
    loop {
        let msg = if waiting.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut interrupted = Vec::new();
        let mut take = |m: Msg| match m {
            Msg::Wait(p, e) => {
                waiting.push((p, e));
                tick = FIRST_TICK;
            }
            Msg::Interrupt(u) => interrupted.push(u),
        };
        if let Some(m) = msg {
            take(m);
        }
        while let Ok(m) = rx.try_recv() {
            take(m);
        }
        let now = epoch.load(Ordering::Acquire);
        let before = waiting.len();
        waiting.retain(|(p, e)| {
            if *e != now {
                debug!(
                    "{}: dropping the lock request of chain {} after a reset",
                    p.queue, p.head
                );
                return false;
            }
            let result = if interrupted.contains(&p.unique) {
                Err(std::io::Error::from_raw_os_error(libc::EINTR))
            } else {
                match fs.try_setlk(p.inode, p.handle, p.lock, p.lk_flags) {
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return true,
                    r => r,
                }
            };
            answer(p, &mem, result);
            false
        });
        count.fetch_sub(before - waiting.len(), Ordering::AcqRel);
        tick = (tick * 2).min(MAX_TICK);
    }
}

/// Writes the reply to `p` (a bare header: 0 or the errno), returns its
/// chain and notifies the guest.
fn answer(p: &PendingLock, mem: &GuestMem, result: std::io::Result<()>) {
    let reply = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: match result {
            Ok(()) => 0,
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        },
        unique: p.unique,
    };
    let memory = mem.memory();
    let used = match scatter(&memory, &p.writable, reply.as_slice()) {
        Ok(()) => reply.len,
        Err(_) => {
            warn!(
                "{}: the reply to chain {} no longer fits guest memory",
                p.queue, p.head
            );
            0
        }
    };
    if !device_queue::is_started(&p.vring) {
        debug!(
            "{}: stopped; the lock reply of chain {} is dropped",
            p.queue, p.head
        );
        return;
    }
    device_queue::return_chain(&p.vring, &p.queue, p.head, used);
    if let Err(e) = device_queue::notify(&p.vring) {
        warn!(
            "{}: cannot notify the guest of a granted lock: {e}",
            p.queue
        );
    }
}
