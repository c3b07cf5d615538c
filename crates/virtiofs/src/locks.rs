//! Blocking lock requests (FUSE_SETLKW) without a blocked queue.
//!
//! A SETLKW the host cannot grant at once must wait for another holder (a
//! host process, another guest, another open in this guest) to let go. The
//! worker that took it serves its whole queue, and the holder's unlock may
//! be queued right behind it: waiting there would stall the queue, and
//! could deadlock the guest. So the device tries the lock once
//! (`try_setlk`, never blocking) and, when it conflicts, keeps the chain:
//! [`LockWaiter`]'s thread tries again, every millisecond at first and
//! then backing off to every 20 ms, and answers the chain itself once the
//! lock is granted or fails otherwise (reply, used ring and notification
//! under the queue's lock, and only while the queue is started). Meanwhile
//! the queue goes on.
//!
//! A kept request is dropped, unanswered, when its queue is found stopped
//! (the frontend's GET_VRING_BASE: a pause, or a reset that may hand the
//! ring to a new driver, so the chain is no longer the device's; the guest
//! gets no reply, as for any request in flight across such a stop without
//! inflight tracking), and when the guest sends FUSE_INIT again (a new
//! driver). A lock granted just as its queue stopped is released again, so
//! no one waits on a lock nobody will use. A FUSE_INTERRUPT naming a kept
//! request (on the hiprio queue; Linux's virtio-fs driver does not send
//! them today, other frontends may) answers it with `EINTR`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The FUSE lock owner (a guest process).
    pub owner: u64,
    /// The lock.
    pub lock: FileLock,
    /// `lk_flags` (`FUSE_LK_FLOCK`).
    pub lk_flags: u32,
}

enum Msg {
    Wait(Box<PendingLock>, u64),
    Interrupt(u64),
    Reset,
}

/// The thread that waits for the device's contended locks (started with
/// the first one) and answers them.
pub(crate) struct LockWaiter {
    fs: Arc<PassthroughFs>,
    tx: Mutex<Option<Sender<Msg>>>,
    /// Sessions so far (FUSE_INIT, device reset): a request kept from an
    /// earlier one is dropped.
    epoch: Arc<AtomicU64>,
    /// Requests kept and not yet answered or dropped (slots reserved
    /// before a request is handed over).
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
        let reserved = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WAITING).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
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
            match spawned {
                Ok(_) => *tx = Some(s),
                Err(e) => {
                    warn!("cannot start the lock waiter: {e}; a contended SETLKW gets ENOLCK");
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let sent = tx
            .as_ref()
            .is_some_and(|s| s.send(Msg::Wait(Box::new(p), epoch)).is_ok());
        if !sent {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// A FUSE_INTERRUPT for request `unique`: a waiting lock request with
    /// that unique is answered with `EINTR`.
    pub(crate) fn interrupt(&self, unique: u64) {
        self.send(Msg::Interrupt(unique));
    }

    /// A new session (FUSE_INIT) or a device reset: requests kept from
    /// before are dropped.
    pub(crate) fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.send(Msg::Reset);
    }

    fn send(&self, m: Msg) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = tx.as_ref() {
            let _ = s.send(m);
        }
    }
}

/// The waiter's state: the kept requests, when to try them next.
struct Waiter {
    fs: Arc<PassthroughFs>,
    mem: GuestMem,
    epoch: Arc<AtomicU64>,
    count: Arc<AtomicUsize>,
    kept: Vec<(Box<PendingLock>, u64)>,
    tick: Duration,
    next: Instant,
}

/// The waiter thread: takes new requests and interrupts as they come, and
/// tries the kept locks in rounds, backing off between rounds.
fn run(
    fs: Arc<PassthroughFs>,
    rx: Receiver<Msg>,
    mem: GuestMem,
    epoch: Arc<AtomicU64>,
    count: Arc<AtomicUsize>,
) {
    let mut w = Waiter {
        fs,
        mem,
        epoch,
        count,
        kept: Vec::new(),
        tick: FIRST_TICK,
        next: Instant::now(),
    };
    loop {
        let msg = if w.kept.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(w.next.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        if let Some(m) = msg {
            w.take(m);
        }
        while let Ok(m) = rx.try_recv() {
            w.take(m);
        }
        w.drop_old_sessions();
        if Instant::now() >= w.next {
            w.round();
        }
    }
}

impl Waiter {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Wait(p, e) => {
                self.kept.push((p, e));
                // A new request is tried again soon, then backs off.
                self.tick = FIRST_TICK;
                self.next = self.next.min(Instant::now() + FIRST_TICK);
            }
            Msg::Interrupt(unique) => {
                let mut i = 0;
                while i < self.kept.len() {
                    if self.kept[i].0.unique == unique {
                        let (p, _) = self.kept.swap_remove(i);
                        self.finish(&p, Err(std::io::Error::from_raw_os_error(libc::EINTR)));
                    } else {
                        i += 1;
                    }
                }
            }
            Msg::Reset => {}
        }
    }

    /// Drops the requests of an earlier session, unanswered.
    fn drop_old_sessions(&mut self) {
        let now = self.epoch.load(Ordering::Acquire);
        let before = self.kept.len();
        self.kept.retain(|(p, e)| {
            let keep = *e == now;
            if !keep {
                debug!(
                    "{}: dropping the lock request of chain {}: a new session",
                    p.queue, p.head
                );
            }
            keep
        });
        self.count
            .fetch_sub(before - self.kept.len(), Ordering::AcqRel);
    }

    /// Tries every kept lock once; answers those that are done, drops
    /// those whose queue stopped.
    fn round(&mut self) {
        let kept = std::mem::take(&mut self.kept);
        for (p, e) in kept {
            if !device_queue::is_started(&p.vring) {
                debug!(
                    "{}: stopped; the lock request of chain {} is dropped",
                    p.queue, p.head
                );
                self.count.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            match self
                .fs
                .try_setlk(p.inode, p.handle, p.owner, p.lock, p.lk_flags)
            {
                Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => self.kept.push((p, e)),
                r => self.finish(&p, r),
            }
        }
        self.next = Instant::now() + self.tick;
        self.tick = (self.tick * 2).min(MAX_TICK);
    }

    /// Answers `p` with `result` (a bare header: 0 or the errno), if its
    /// queue is still started; otherwise a granted lock is released again.
    fn finish(&self, p: &PendingLock, result: std::io::Result<()>) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        let granted = result.is_ok();
        let reply = OutHeader {
            len: std::mem::size_of::<OutHeader>() as u32,
            error: match result {
                Ok(()) => 0,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            },
            unique: p.unique,
        };
        let answered = device_queue::answer_deferred(&p.vring, &p.queue, p.head, || {
            let memory = self.mem.memory();
            match scatter(&memory, &p.writable, reply.as_slice()) {
                Ok(()) => reply.len,
                Err(_) => {
                    warn!(
                        "{}: the reply to chain {} no longer fits guest memory",
                        p.queue, p.head
                    );
                    0
                }
            }
        });
        if !answered && granted {
            debug!(
                "{}: stopped; releasing the lock granted to chain {}",
                p.queue, p.head
            );
            let unlock = FileLock {
                lock_type: libc::F_UNLCK as u32,
                ..p.lock
            };
            let _ = self
                .fs
                .try_setlk(p.inode, p.handle, p.owner, unlock, p.lk_flags);
        }
    }
}
