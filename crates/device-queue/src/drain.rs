//! The one serving loop of a kick, for both engines: take every available
//! chain, serve it (inline, on the ring, or through the device's
//! synchronous path), return it to the used ring, notify the guest when the
//! ring asks for it; and the engine choice ([`IoEngine`], [`QueueEngine`]).
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
//! With a recorder set ([`QueueEngine::set_recorder`]), every chain taken
//! off the available ring is first handed to it, whichever of these ways
//! it is served then.
//!
//! A pass holds the vring's lock from taking its chains to answering the
//! last of them. The frontend's GET_VRING_BASE stops the ring under that
//! lock, so it waits for the pass: when it is answered, every chain before
//! the index it returns is in the used ring and the device no longer
//! writes to the ring, as vhost-user requires (the frontend resumes from
//! that index, or migrates with it).
//!

use std::fmt::Display;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, error, warn};
use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{QueueOwnedT, QueueT};

use crate::io::{try_inline, DataOp};
use crate::poll::{Poller, QueuePollers, DEFAULT_POLL};
use crate::record::ChainRecorder;
use crate::uring::UringQueue;
use crate::{Chain, GuestMem, MemGuard};

/// Why a queue was stopped: what the guest (or, for [`QueueError::Signal`],
/// the frontend) got wrong. The queue stays stopped until the driver
/// restarts it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The available ring could not be read or its index is impossible
    /// (more than the queue size ahead of the device), or the queue is not
    /// started.
    #[error("bad available ring: {0}")]
    Avail(virtio_queue::Error),
    /// The notification fields of the rings could not be written.
    #[error("cannot set notifications: {0}")]
    Notification(virtio_queue::Error),
    /// The driver could not be signalled (its call eventfd).
    #[error("cannot signal the driver: {0}")]
    Signal(io::Error),
    /// The descriptor table or a ring is not wholly inside guest memory, or
    /// is misaligned.
    #[error("the descriptor table or a ring is outside guest memory")]
    Rings,
}

/// Where a kick gets guest memory: called again before every pass over the
/// available ring (and every poll of it), so what the frontend's
/// SET_MEM_TABLE installed (and acknowledged) serves every chain taken
/// after it, even within one kick (a worker polling for more requests, or
/// draining pass after pass, keeps going across a table swap). None: no
/// memory was ever set.
pub type MemSource<'a> = &'a dyn Fn() -> Option<MemGuard>;

/// Runs `f` on `vring`'s state; if it fails, stops the queue (clears its
/// ready flag) in the same critical section, so a driver restarting the
/// ring meanwhile (which sets the flag again) is never undone by a failure
/// seen on the ring it replaced.
fn or_stop<T, E>(
    vring: &VringRwLock,
    f: impl FnOnce(&mut VringState<GuestMem>) -> Result<T, E>,
) -> Result<T, E> {
    stop_on_err(&mut vring.get_mut(), f)
}

/// [`or_stop`] on a vring's state already locked.
fn stop_on_err<T, E>(
    state: &mut VringState<GuestMem>,
    f: impl FnOnce(&mut VringState<GuestMem>) -> Result<T, E>,
) -> Result<T, E> {
    let r = f(state);
    if r.is_err() {
        state.get_queue_mut().set_ready(false);
    }
    r
}

/// Whether `vring` is started: the driver set it up, and it was not stopped
/// since (by the driver, or by this crate after a [`QueueError`]).
pub fn is_started(vring: &VringRwLock) -> bool {
    vring.get_ref().get_queue().ready()
}

/// Serves one kick of `vring` named `queue` (for log lines): every available
/// chain goes to `serve`, which returns the reply length or an error.
/// `poller` is the queue's polling state (see [`Poller`]). As
/// [`serve_kick_with`], this never fails.
pub fn serve_kick<E: Display>(
    vring: &VringRwLock,
    mem: MemSource<'_>,
    event_idx: bool,
    queue: &str,
    poller: &mut Poller,
    mut serve: impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) {
    serve_kick_with(vring, mem, event_idx, queue, poller, |mem| {
        drain(vring, mem, queue, None, Intake::default(), &mut serve)
    })
}

/// The kick protocol around a device's own `drain` (which serves what is
/// available): without event-idx one drain; with it, drain with
/// notifications off, poll the available ring for as long as `poller`
/// says (notifications still off, so the guest need not kick), and stop
/// once no chain arrived after notifications were re-enabled, so no kick is
/// lost.
///
/// A kick never fails. If the queue is broken ([`QueueError`]), the queue
/// is stopped and that is logged once: its ready flag is cleared, and
/// kicks of a queue that is not ready are ignored (at debug level). The
/// driver restarts the queue the way it starts one: vhost-user-backend
/// marks a queue ready again when the frontend hands it a kick or call
/// eventfd (SET_VRING_KICK/CALL, what a VMM sends when the guest resets
/// and sets up the device again). `drain`'s errors must be those of this
/// crate's [`available`], [`notify`] and the ring's drain, which stop the
/// queue when they fail (under the vring's lock, so a restart racing with
/// the failure is not undone).
pub fn serve_kick_with(
    vring: &VringRwLock,
    mem: MemSource<'_>,
    event_idx: bool,
    queue: &str,
    poller: &mut Poller,
    mut drain: impl FnMut(MemSource<'_>) -> Result<(), QueueError>,
) {
    if !is_started(vring) {
        debug!("{queue}: kicked while stopped; ignored");
        return;
    }
    if mem().is_none() {
        warn!("{queue} kicked before guest memory was set");
        return;
    }
    match kick_protocol(vring, mem, event_idx, poller, &mut drain) {
        Ok(()) => {}
        // The frontend stopped the queue (GET_VRING_BASE) between two
        // passes of this kick: nothing is wrong.
        Err(QueueError::Avail(virtio_queue::Error::QueueNotReady)) => {
            debug!("{queue}: stopped by the frontend during a kick");
        }
        // Every other QueueError comes from `or_stop`: the queue is stopped.
        Err(e) => error!("{queue}: {e}; queue stopped until the driver resets it"),
    }
}

fn kick_protocol(
    vring: &VringRwLock,
    mem: MemSource<'_>,
    event_idx: bool,
    poller: &mut Poller,
    drain: &mut impl FnMut(MemSource<'_>) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    // `drain` loads guest memory again for every pass (see [`MemSource`]).
    if !event_idx {
        return drain(mem);
    }
    poller.woken();
    let mut drains = 0;
    loop {
        or_stop(vring, |s| s.disable_notification()).map_err(QueueError::Notification)?;
        drain(mem)?;
        drains += 1;
        if drains >= MAX_DRAINS_PER_KICK && kick_self(vring) {
            // Still busy: the thread's other events (its exit event, a
            // queue sharing the thread) go first; our own kick brings the
            // worker back.
            return Ok(());
        }
        if poller.spin(|| mem().is_some_and(|m| has_available(vring, &m))) {
            continue;
        }
        // A queue the frontend stopped meanwhile (GET_VRING_BASE) is not
        // written to again.
        let more = or_stop(vring, |s| {
            if s.get_queue().ready() {
                s.enable_notification()
            } else {
                Ok(false)
            }
        })
        .map_err(QueueError::Notification)?;
        if !more {
            poller.sleeping();
            return Ok(());
        }
    }
}

/// Writes to `vring`'s kick eventfd, as the driver would; false if it has
/// none or the write failed.
fn kick_self(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    let Some(kick) = state.get_kick() else {
        return false;
    };
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd the vring owns.
    let n = unsafe { libc::write(kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    n == one.len() as isize
}

/// Whether the driver has made chains available that are not served yet.
fn has_available(vring: &VringRwLock, mem: &MemGuard) -> bool {
    let state = vring.get_ref();
    let q = state.get_queue();
    q.avail_idx(&**mem, Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != q.next_avail())
}

/// The chains now available on `vring`; a broken available ring, rings
/// outside guest memory (or a queue not started) stop the queue.
pub fn available(vring: &VringRwLock, mem: &MemGuard) -> Result<Vec<Chain>, QueueError> {
    take_available(&mut vring.get_mut(), mem)
}

/// Whether `q`'s descriptor table and rings lie wholly inside guest memory,
/// each aligned as the split-queue layout requires (16, 2 and 4 bytes).
/// Unlike virtio-queue's `is_valid`, a ring ending exactly where a memory
/// region ends is inside.
fn rings_in_memory(q: &virtio_queue::Queue, mem: &MemGuard) -> bool {
    use vm_memory::{GuestAddress, GuestMemory};
    let n = usize::from(q.size());
    [
        (q.desc_table(), 16 * n, 16),
        (q.avail_ring(), 6 + 2 * n, 2),
        (q.used_ring(), 6 + 8 * n, 4),
    ]
    .into_iter()
    .all(|(at, len, align)| at % align == 0 && mem.check_range(GuestAddress(at), len))
}

/// [`available`] on a vring's state already locked.
fn take_available(
    state: &mut VringState<GuestMem>,
    mem: &MemGuard,
) -> Result<Vec<Chain>, QueueError> {
    // Rings partly outside guest memory break the queue as a whole: an
    // available entry the device cannot read would be retried at every
    // poll (virtio-queue's iterator just stops there), an answer it cannot
    // write would be lost.
    let q = state.get_queue_mut();
    if q.ready() && !rings_in_memory(q, mem) {
        q.set_ready(false);
        return Err(QueueError::Rings);
    }
    stop_on_err(state, |s| {
        s.get_queue_mut()
            .iter(mem.clone())
            .map(|chains| chains.collect())
    })
    .map_err(QueueError::Avail)
}

/// Serves `chain` with `serve` and returns it to the used ring; a chain that
/// fails is logged and returned with zero bytes. The vring stays locked
/// meanwhile.
pub fn serve_chain<E: Display>(
    vring: &VringRwLock,
    mem: &MemGuard,
    queue: &str,
    chain: Chain,
    serve: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) {
    serve_locked(&mut vring.get_mut(), mem, queue, chain, serve);
}

/// [`serve_chain`] on a vring's state already locked.
fn serve_locked<E: Display>(
    state: &mut VringState<GuestMem>,
    mem: &MemGuard,
    queue: &str,
    chain: Chain,
    serve: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) {
    let head = chain.head_index();
    let used = serve(mem, chain).unwrap_or_else(|e| {
        warn!("{queue}: dropping request in chain {head}: {e}");
        0
    });
    if used == DEFERRED {
        // The device keeps the chain and answers it later itself.
        return;
    }
    put_used(state, queue, head, used);
}

/// What a device's synchronous path returns for a chain it keeps, to
/// answer later itself with [`return_chain`] and [`notify`] (a request
/// that waits, such as a blocking lock, must not hold its queue): the
/// chain is not put on the used ring now. No reply is that long.
pub const DEFERRED: u32 = u32::MAX;

/// Answers a chain kept with [`DEFERRED`], all under the vring's lock: if
/// the queue is still started, `write` writes the reply into guest memory
/// (returning its length), the chain goes to the used ring and the guest
/// is notified as the ring asks. False, with `write` not called, when the
/// queue was stopped since (by its driver, which may be resetting it, or
/// by the frontend): the chain is no longer the device's to answer.
pub fn answer_deferred(
    vring: &VringRwLock,
    queue: &str,
    head: u16,
    write: impl FnOnce() -> u32,
) -> bool {
    let mut state = vring.get_mut();
    if !state.get_queue().ready() {
        return false;
    }
    let used = write();
    put_used(&mut state, queue, head, used);
    if let Err(e) = notify_locked(&mut state) {
        warn!("{queue}: cannot notify the guest of a deferred reply: {e}");
    }
    true
}

/// Puts chain `head` on the used ring with `used` bytes written.
pub fn return_chain(vring: &VringRwLock, queue: &str, head: u16, used: u32) {
    put_used(&mut vring.get_mut(), queue, head, used);
}

/// [`return_chain`] on a vring's state already locked.
pub(crate) fn put_used(state: &mut VringState<GuestMem>, queue: &str, head: u16, used: u32) {
    if let Err(e) = state.add_used(head, used) {
        warn!("{queue}: cannot return chain {head}: {e}");
    }
}

/// Chains served before the guest is told about them: small enough that a
/// driver with a deep queue gets replies (and refills the ring) while the
/// rest is still being served.
pub const NOTIFY_EVERY: usize = 8;
/// Passes over the available ring per drain: a driver refilling as replies
/// arrive is served without another wake-up.
pub const MAX_PASSES: usize = 64;
/// Drains one kick may do (with event-idx, while polling keeps finding
/// work) before the worker goes back to epoll, kicking itself: a guest
/// that keeps a queue busy cannot starve the other events of its thread.
pub const MAX_DRAINS_PER_KICK: usize = 16;

/// Signals the guest if the ring asks for it (always without event-idx);
/// a failure stops the queue.
pub fn notify(vring: &VringRwLock) -> Result<(), QueueError> {
    notify_locked(&mut vring.get_mut())
}

/// [`notify`] on a vring's state already locked.
fn notify_locked(state: &mut VringState<GuestMem>) -> Result<(), QueueError> {
    stop_on_err(state, |s| match s.needs_notification() {
        Ok(true) | Err(_) => s.signal_used_queue(),
        Ok(false) => Ok(()),
    })
    .map_err(QueueError::Signal)
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

/// What a queue does with every chain it takes, before serving it: count
/// it, and hand it to the device's recorder (with the queue's index).
#[derive(Clone, Copy, Default)]
pub(crate) struct Intake<'a> {
    taken: Option<&'a AtomicU64>,
    record: Option<(&'a dyn ChainRecorder, usize)>,
}

impl Intake<'_> {
    /// Records `chain` if the device records requests. A recorder that
    /// panics (a bug) is logged; the chain is served all the same.
    fn record(&self, mem: &MemGuard, chain: &Chain, queue: &str) {
        let Some((recorder, q)) = self.record else {
            return;
        };
        let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            recorder.record(q, mem, chain)
        }));
        if recorded.is_err() {
            error!(
                "{queue}: recording chain {} panicked; serving it",
                chain.head_index()
            );
        }
    }
}

/// Serves what is available on `vring` in passes (up to [`MAX_PASSES`], so a
/// driver refilling as replies arrive is served without another wake-up):
/// with `data`, the chains its path plans go inline or on the ring; every
/// other chain first waits for the ring, then goes to `sync`. The guest is
/// notified every [`NOTIFY_EVERY`] requests and at the end of each pass.
/// Both engines run this one loop.
pub(crate) fn drain<E: std::fmt::Display>(
    vring: &VringRwLock,
    mem: MemSource<'_>,
    queue: &str,
    mut data: Option<(&dyn DataPath, &mut UringQueue)>,
    intake: Intake<'_>,
    sync: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) -> Result<(), QueueError> {
    for _ in 0..MAX_PASSES {
        // Memory as it is now (a table replaced since the last pass serves
        // this one), held for this pass only: every operation the pass
        // starts is complete when it ends.
        let Some(mem) = mem() else {
            return Ok(());
        };
        // Locked from taking the chains to answering the last of them (see
        // the module's documentation): GET_VRING_BASE waits for the pass.
        let mut state = vring.get_mut();
        let r = drain_pass(&mut state, &mem, queue, &mut data, intake, sync);
        if r.is_err() {
            // Operations in flight use guest memory: none may outlive the
            // snapshot this pass holds, nor the lock.
            if let Some((path, uq)) = &mut data {
                uq.complete_all(*path, &mem, &mut state, queue);
            }
        }
        if !r? {
            return Ok(());
        }
    }
    Ok(())
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

/// One pass over the available ring, on its locked state: every chain
/// available is served and answered. False if there was none.
fn drain_pass<E: std::fmt::Display>(
    state: &mut VringState<GuestMem>,
    mem: &MemGuard,
    queue: &str,
    data: &mut Option<(&dyn DataPath, &mut UringQueue)>,
    intake: Intake<'_>,
    sync: &mut impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) -> Result<bool, QueueError> {
    let chains = take_available(state, mem)?;
    if chains.is_empty() {
        return Ok(false);
    }
    if let Some(t) = intake.taken {
        t.fetch_add(chains.len() as u64, Ordering::Relaxed);
    }
    let mut unsignalled = 0;
    for chain in chains {
        intake.record(mem, &chain, queue);
        let planned = match data {
            Some((path, uq)) => match plan_caught(*path, mem, &chain, queue) {
                Some(op) => Some((*path, &mut **uq, op)),
                None => {
                    uq.complete_all(*path, mem, state, queue);
                    None
                }
            },
            None => None,
        };
        match planned {
            Some((path, uq, op)) => {
                if uq.free.is_empty() || uq.overlaps(&op) {
                    uq.complete_all(path, mem, state, queue);
                }
                match uq.inline_first.then(|| try_inline(&op)).flatten() {
                    Some(res) => {
                        uq.finish(path, mem, state, queue, &op, res);
                        uq.inline_done += 1;
                        unsignalled += 1;
                    }
                    None => uq.submit_or_run(path, mem, state, queue, op),
                }
            }
            None => {
                serve_locked(state, mem, queue, chain, sync);
                unsignalled += 1;
            }
        }
        let in_flight = data.as_ref().map_or(0, |(_, uq)| uq.in_flight());
        if in_flight + unsignalled >= NOTIFY_EVERY {
            if let Some((path, uq)) = data {
                uq.complete_all(*path, mem, state, queue);
            }
            notify_locked(state)?;
            unsignalled = 0;
        }
    }
    if let Some((path, uq)) = data {
        uq.complete_all(*path, mem, state, queue);
    }
    notify_locked(state)?;
    Ok(true)
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
    /// Sees every chain any queue takes (request recording), if set.
    recorder: Option<Arc<dyn ChainRecorder>>,
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
            recorder: None,
        }
    }

    /// Hands every chain any queue takes to `recorder` before it is served
    /// (`None`: records nothing, the default). See [`ChainRecorder`].
    pub fn set_recorder(&mut self, recorder: Option<Arc<dyn ChainRecorder>>) {
        self.recorder = recorder;
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
    /// go through the drain's inline-then-ring path; every other chain goes
    /// to `sync`. Without `data` (a queue such as virtio-fs's hiprio), every
    /// chain goes to `sync` and the queue never polls. Never fails: a
    /// broken queue is stopped (see [`crate::serve_kick_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn serve_kick<E: std::fmt::Display>(
        &self,
        q: usize,
        vring: &VringRwLock,
        mem: MemSource<'_>,
        event_idx: bool,
        queue: &str,
        data: Option<&dyn DataPath>,
        mut sync: impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
    ) {
        let intake = Intake {
            taken: self.taken.get(q),
            record: self.recorder.as_deref().map(|r| (r, q)),
        };
        let Some(path) = data else {
            let mut off = crate::Poller::new(std::time::Duration::ZERO);
            return crate::serve_kick_with(vring, mem, event_idx, queue, &mut off, |mem| {
                drain(vring, mem, queue, None, intake, &mut sync)
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
            drain(vring, mem, queue, data, intake, &mut sync)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names() {
        assert_eq!("io-uring".parse::<IoEngine>(), Ok(IoEngine::IoUring));
        assert_eq!("sync".parse::<IoEngine>(), Ok(IoEngine::Sync));
        assert!("aio".parse::<IoEngine>().is_err());
        assert_eq!(IoEngine::IoUring.to_string(), "io-uring");
    }
}
