//! What every vhost-user device of this project needs besides its protocol
//! ([`DeviceCore`], with the builders and counters of [`QueueDevice`]): the
//! guest memory it was given, event-idx, exit events, the queue engine;
//! its config space window; which queue an event is for.

use std::fmt::Display;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VringRwLock;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::drain::{DataPath, IoEngine, QueueEngine};
use crate::record::ChainRecorder;
use crate::{Chain, GuestMem, MemGuard};

/// The virtio features every device offers: VERSION_1, INDIRECT_DESC,
/// EVENT_IDX, and vhost-user's PROTOCOL_FEATURES.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The vhost-user protocol features every device offers: MQ, REPLY_ACK and
/// CONFIGURE_MEM_SLOTS (a device with a config space adds CONFIG).
pub fn device_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The state every vhost-user device of this project keeps besides its
/// protocol's: the guest memory the frontend gave it, whether event-idx
/// was negotiated, one exit event per worker thread, and the queue engine
/// (per queue: io_uring ring, polling, counters). A device embeds one and
/// forwards the matching `VhostUserBackend` methods to it.
pub struct DeviceCore {
    mem: MemorySlot,
    event_idx: AtomicBool,
    exits: Vec<(EventConsumer, EventNotifier)>,
    engine: QueueEngine,
}

impl DeviceCore {
    /// For a device of `queues` queues served by `threads` worker threads.
    pub fn new(queues: usize, threads: usize) -> io::Result<DeviceCore> {
        let exits = (0..threads)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(DeviceCore {
            mem: MemorySlot::default(),
            event_idx: AtomicBool::new(false),
            exits,
            engine: QueueEngine::new(queues),
        })
    }

    /// The queue engine.
    pub fn engine(&self) -> &QueueEngine {
        &self.engine
    }

    /// The queue engine, to configure it.
    pub fn engine_mut(&mut self) -> &mut QueueEngine {
        &mut self.engine
    }

    /// `VhostUserBackend::set_event_idx`.
    pub fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    /// `VhostUserBackend::update_memory`.
    pub fn update_memory(&self, mem: GuestMem) {
        self.mem.set(mem);
    }

    /// The guest memory as the frontend last set it (the shared handle:
    /// its `memory()` is always the current table), for answering a chain
    /// kept past its kick ([`DEFERRED`](crate::DEFERRED)).
    pub fn guest_memory(&self) -> Option<GuestMem> {
        self.mem.get()
    }

    /// `VhostUserBackend::exit_event`: worker `thread`'s exit event.
    pub fn exit_event(&self, thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = self.exits.get(thread)?;
        Some((consumer.try_clone().ok()?, notifier.try_clone().ok()?))
    }

    /// Stops every worker thread.
    pub fn notify_exit(&self) -> io::Result<()> {
        for (_, notifier) in &self.exits {
            notifier.notify()?;
        }
        Ok(())
    }

    /// Serves one kick of queue `q` ([`QueueEngine::serve_kick`] with this
    /// device's memory and event-idx): `data` plans the chains the engine
    /// takes, `sync` serves every other one.
    pub fn serve_kick<E: Display>(
        &self,
        q: usize,
        vring: &VringRwLock,
        name: &str,
        data: Option<&dyn DataPath>,
        sync: impl FnMut(&MemGuard, Chain) -> Result<u32, E>,
    ) {
        self.engine.serve_kick(
            q,
            vring,
            &|| self.mem.snapshot(),
            self.event_idx.load(Ordering::Acquire),
            name,
            data,
            sync,
        );
    }
}

/// The builders and counters of a device built on a [`DeviceCore`], written
/// once for all of them.
pub trait QueueDevice: Sized {
    /// The device's core.
    fn core(&self) -> &DeviceCore;

    /// The device's core, to configure it.
    fn core_mut(&mut self) -> &mut DeviceCore;

    /// How long a request queue's worker polls for more requests before it
    /// sleeps (adaptive, up to `max`; zero: never). Default
    /// [`DEFAULT_POLL`](crate::DEFAULT_POLL).
    fn with_poll(mut self, max: Duration) -> Self {
        self.core_mut().engine_mut().set_poll(max);
        self
    }

    /// Selects the engine for reads and writes (default: io_uring where
    /// available).
    fn with_engine(mut self, engine: IoEngine) -> Self {
        self.core_mut().engine_mut().set_engine(engine);
        self
    }

    /// With `false`, every read and write the io_uring engine takes goes
    /// through the ring, even when it would not block (default `true`: try
    /// `RWF_NOWAIT` inline first). For tests and measurements.
    fn with_inline_first(mut self, inline_first: bool) -> Self {
        self.core_mut().engine_mut().set_inline_first(inline_first);
        self
    }

    /// Hands every request (descriptor chain) any queue takes to
    /// `recorder` before it is served: request recording (default: none).
    fn with_recorder(mut self, recorder: Arc<dyn ChainRecorder>) -> Self {
        self.core_mut().engine_mut().set_recorder(Some(recorder));
        self
    }

    /// The engine asked for.
    fn io_engine(&self) -> IoEngine {
        self.core().engine().engine()
    }

    /// Reads and writes completed through the io_uring rings, all queues.
    fn ring_completions(&self) -> u64 {
        self.core().engine().ring_completions()
    }

    /// Reads and writes the io_uring engine completed inline (they would not
    /// block), all queues.
    fn inline_completions(&self) -> u64 {
        self.core().engine().inline_completions()
    }

    /// Per queue: the requests it has taken so far.
    fn requests_per_queue(&self) -> Vec<u64> {
        self.core().engine().requests_per_queue()
    }

    /// Stops every worker thread.
    fn notify_exit(&self) -> io::Result<()> {
        self.core().notify_exit()
    }
}

/// The guest memory a device is given by `update_memory`.
#[derive(Default)]
pub struct MemorySlot(RwLock<Option<GuestMem>>);

impl MemorySlot {
    /// Replaces the memory (the frontend's SET_MEM_TABLE).
    pub fn set(&self, mem: GuestMem) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
    }

    /// The memory handle, if any was set.
    pub fn get(&self) -> Option<GuestMem> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
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

/// The inverse of [`queue_of_event`]: the event number worker `thread`
/// gets for `queue` (its position among the thread's queues), as
/// vhost-user-backend numbers them; what a VMM or test that runs a backend
/// in-process passes to `handle_event`. None if the thread does not serve
/// the queue.
pub fn event_of_queue(queues_per_thread: &[u64], thread: usize, queue: usize) -> Option<u16> {
    let mask = *queues_per_thread.get(thread)?;
    if queue >= 64 || (mask >> queue) & 1 == 0 {
        return None;
    }
    Some((mask & ((1u64 << queue) - 1)).count_ones() as u16)
}

#[cfg(test)]
mod tests {
    use super::{event_of_queue, queue_of_event};

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
        // And back.
        for (thread, mask) in masks.iter().enumerate() {
            for q in 0..4 {
                let e = event_of_queue(&masks, thread, q);
                assert_eq!(e.is_some(), (mask >> q) & 1 == 1);
                if let Some(e) = e {
                    assert_eq!(queue_of_event(&masks, thread, e), Some(q));
                }
            }
        }
        assert_eq!(event_of_queue(&[0b1010], 0, 3), Some(1));
        assert_eq!(event_of_queue(&[u64::MAX], 0, 64), None);
    }
}
