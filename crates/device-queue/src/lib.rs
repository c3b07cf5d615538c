//! The virtqueue serving loop every vhost-user device of this project shares.
//!
//! A device answers "serve this descriptor chain, return how many bytes you
//! wrote"; this crate does the rest of a kick: take every available chain,
//! return each to the used ring (a chain that fails is logged and returned
//! with zero bytes, so a guest can never wedge a queue), notify the guest when
//! the ring asks for it, and with event-idx keep draining until no chain
//! arrived since notifications were re-enabled, so no kick is lost.
//!
//! A guest can also break a queue as a whole: an available index more than
//! the queue size ahead of the device, rings outside guest memory, a kick on
//! a queue that is not started. Such a queue is stopped (logged once, its
//! ready flag cleared) and its kicks are ignored until the driver restarts
//! it; the kick itself succeeds. A `handle_event` built on this crate
//! therefore returns an error only for an event it never registered, and
//! vhost-user-backend never ends a worker thread (with the other queues it
//! serves) because of what a guest wrote. See [`serve_kick_with`].

#![deny(missing_docs)]

pub mod poll;
pub mod uring;

pub use poll::Poller;

use std::fmt::Display;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::RwLock;

use log::{debug, error, warn};
use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Guest memory as a vhost-user backend receives it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;
/// A snapshot of guest memory for serving one kick.
pub type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;
/// A descriptor chain over such a snapshot.
pub type Chain = DescriptorChain<MemGuard>;

/// The guest memory a device is given by `update_memory`.
#[derive(Default)]
pub struct MemorySlot(RwLock<Option<GuestMem>>);

impl MemorySlot {
    /// Replaces the memory (the frontend's SET_MEM_TABLE).
    pub fn set(&self, mem: GuestMem) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
    }

    /// A snapshot of the current memory, if any was set.
    pub fn snapshot(&self) -> Option<MemGuard> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.memory())
    }
}

/// The `[offset, offset + size)` window of a device's config space, as
/// GET_CONFIG returns it (cut at the end of the space, empty past it).
pub fn config_window(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(config.len());
    let end = start.saturating_add(size as usize).min(config.len());
    config[start..end].to_vec()
}

/// The vring an event is for, checking the event is a plain kick.
pub fn kicked_vring(
    vrings: &[VringRwLock],
    device_event: u16,
    evset: EventSet,
) -> io::Result<&VringRwLock> {
    if evset != EventSet::IN {
        return Err(io::Error::other(format!("unexpected event set {evset:?}")));
    }
    vrings
        .get(device_event as usize)
        .ok_or_else(|| io::Error::other(format!("event for unknown queue {device_event}")))
}

/// The queue number behind `device_event` on worker `thread`.
/// vhost-user-backend hands each worker only the vrings of its mask in
/// `queues_per_thread`, and numbers its events by position in that list:
/// with masks `[0b11, 0b100]`, thread 1's event 0 is queue 2. None for an
/// event the thread has no queue for.
pub fn queue_of_event(
    queues_per_thread: &[u64],
    thread: usize,
    device_event: u16,
) -> Option<usize> {
    let mask = *queues_per_thread.get(thread)?;
    (0..64usize)
        .filter(|b| (mask >> b) & 1 == 1)
        .nth(device_event as usize)
}

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
}

/// Runs `f` on `vring`'s state; if it fails, stops the queue (clears its
/// ready flag) in the same critical section, so a driver restarting the
/// ring meanwhile (which sets the flag again) is never undone by a failure
/// seen on the ring it replaced.
fn or_stop<T, E>(
    vring: &VringRwLock,
    f: impl FnOnce(&mut VringState<GuestMem>) -> Result<T, E>,
) -> Result<T, E> {
    let mut state = vring.get_mut();
    let r = f(&mut state);
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
/// `poller` is the queue's polling state (see [`poll`]). As
/// [`serve_kick_with`], this never fails.
pub fn serve_kick<E: Display>(
    vring: &VringRwLock,
    mem: Option<MemGuard>,
    event_idx: bool,
    queue: &str,
    poller: &mut Poller,
    mut serve: impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
) {
    serve_kick_with(vring, mem, event_idx, queue, poller, |mem| {
        uring::drain(vring, mem, queue, None, None, &mut serve)
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
/// crate's [`available`], [`notify`] and [`uring`] drain, which stop the
/// queue when they fail (under the vring's lock, so a restart racing with
/// the failure is not undone).
pub fn serve_kick_with(
    vring: &VringRwLock,
    mem: Option<MemGuard>,
    event_idx: bool,
    queue: &str,
    poller: &mut Poller,
    mut drain: impl FnMut(&MemGuard) -> Result<(), QueueError>,
) {
    if !is_started(vring) {
        debug!("{queue}: kicked while stopped; ignored");
        return;
    }
    let Some(mem) = mem else {
        warn!("{queue} kicked before guest memory was set");
        return;
    };
    if let Err(e) = kick_protocol(vring, &mem, event_idx, poller, &mut drain) {
        // Every QueueError comes from `or_stop`: the queue is stopped.
        error!("{queue}: {e}; queue stopped until the driver resets it");
    }
}

fn kick_protocol(
    vring: &VringRwLock,
    mem: &MemGuard,
    event_idx: bool,
    poller: &mut Poller,
    drain: &mut impl FnMut(&MemGuard) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
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
        if poller.spin(|| has_available(vring, mem)) {
            continue;
        }
        if !or_stop(vring, |s| s.enable_notification()).map_err(QueueError::Notification)? {
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

/// The chains now available on `vring`; a broken available ring (or a
/// queue not started) stops the queue.
pub fn available(vring: &VringRwLock, mem: &MemGuard) -> Result<Vec<Chain>, QueueError> {
    or_stop(vring, |s| {
        s.get_queue_mut()
            .iter(mem.clone())
            .map(|chains| chains.collect())
    })
    .map_err(QueueError::Avail)
}

/// Serves `chain` with `serve` and returns it to the used ring; a chain that
/// fails is logged and returned with zero bytes.
pub fn serve_chain<E: Display>(
    vring: &VringRwLock,
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
    return_chain(vring, queue, head, used);
}

/// Puts chain `head` on the used ring with `used` bytes written.
pub fn return_chain(vring: &VringRwLock, queue: &str, head: u16, used: u32) {
    if let Err(e) = vring.add_used(head, used) {
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
    or_stop(vring, |s| match s.needs_notification() {
        Ok(true) | Err(_) => s.signal_used_queue(),
        Ok(false) => Ok(()),
    })
    .map_err(QueueError::Signal)
}

#[cfg(test)]
mod tests {
    use super::queue_of_event;

    #[test]
    fn events_are_numbered_per_thread() {
        // virtio-fs with 3 request queues: thread 0 has hiprio and queue 1,
        // threads 1 and 2 one queue each.
        let masks = [0b11, 0b100, 0b1000];
        assert_eq!(queue_of_event(&masks, 0, 0), Some(0));
        assert_eq!(queue_of_event(&masks, 0, 1), Some(1));
        assert_eq!(queue_of_event(&masks, 1, 0), Some(2));
        assert_eq!(queue_of_event(&masks, 2, 0), Some(3));
        assert_eq!(queue_of_event(&masks, 1, 1), None, "thread 1 has one queue");
        assert_eq!(queue_of_event(&masks, 3, 0), None, "no thread 3");
        // Gaps in a mask count by position.
        assert_eq!(queue_of_event(&[0b1010], 0, 1), Some(3));
    }
}
