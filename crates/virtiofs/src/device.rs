//! The vhost-user virtio-fs device: virtqueues in, FUSE dispatch, replies out.
//!
//! Queue 0 is the hiprio queue (FORGET, BATCH_FORGET, INTERRUPT); queues 1..
//! are request queues. Each available descriptor chain holds one FUSE request
//! (device-readable part) and room for its reply (device-writable part). A
//! chain that cannot be parsed, or whose request is malformed, is logged and
//! returned to the guest with whatever reply the FUSE server could write
//! (often an errno reply, else zero bytes): the device never panics on guest
//! input. Should serving a request panic all the same (a bug), the request
//! is answered with EIO and the queue goes on ([`serve_caught`]). A queue
//! the guest breaks as a whole (an impossible available index) is stopped
//! until the driver resets it, and the worker thread, with the other queues
//! it serves, goes on ([`device_queue::serve_kick_with`]).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use device_queue::{Chain, MemGuard, MemorySlot};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use log::{debug, error};
use passthrough::PassthroughFs;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::fast_path;
use crate::uring::FuseData;
use device_queue::uring::{peek, scatter, segs_len, split_chain, DataPath, QueueEngine};

pub use device_queue::uring::IoEngine;

/// Guest memory as the vhost-user backend sees it.
pub use device_queue::GuestMem;

/// The largest queue the device accepts (the split-ring maximum).
pub const MAX_QUEUE_SIZE: usize = 32768;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: u16 = 0;
/// The longest tag the virtio-fs config space holds.
pub const TAG_LEN: usize = 36;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The tag does not fit the config space.
    #[error("tag {0:?} is longer than {TAG_LEN} bytes")]
    TagTooLong(String),
    /// No request queue was asked for.
    #[error("at least one request queue is needed")]
    NoRequestQueues,
    /// The exit eventfd could not be created.
    #[error("cannot create exit event: {0}")]
    ExitEvent(io::Error),
}

/// The virtio-fs device model served over vhost-user.
///
/// Worker thread 0 serves the hiprio queue and the first request queue;
/// every further request queue has a worker thread of its own. The device
/// state is shared between them without a device-wide lock.
pub struct VirtioFsBackend {
    server: Arc<Server<Arc<PassthroughFs>>>,
    fs: Arc<PassthroughFs>,
    mem: MemorySlot,
    event_idx: AtomicBool,
    request_queues: usize,
    tag: Option<String>,
    /// One exit event per worker thread.
    exits: Vec<(EventConsumer, EventNotifier)>,
    /// Per worker thread, the queues it serves (bit i: queue i).
    thread_queues: Vec<u64>,
    /// The engine, and per queue (index = queue number) its io_uring ring
    /// and polling; hiprio uses neither.
    data: QueueEngine,
}

impl VirtioFsBackend {
    /// A device serving `fs` with `request_queues` request queues. With a
    /// `tag`, the device offers the CONFIG protocol feature and reports the
    /// tag in its config space (for frontends that read it from the device).
    pub fn new(
        fs: Arc<PassthroughFs>,
        request_queues: usize,
        tag: Option<String>,
    ) -> Result<Self, DeviceError> {
        if request_queues == 0 {
            return Err(DeviceError::NoRequestQueues);
        }
        if let Some(t) = &tag {
            if t.len() > TAG_LEN {
                return Err(DeviceError::TagTooLong(t.clone()));
            }
        }
        let exits = (0..request_queues)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(DeviceError::ExitEvent)?;
        Ok(VirtioFsBackend {
            server: Arc::new(Server::new(fs.clone())),
            fs,
            mem: MemorySlot::default(),
            event_idx: AtomicBool::new(false),
            request_queues,
            tag,
            exits,
            // Thread 0: hiprio (queue 0) and request queue 1; thread i:
            // queue i + 1.
            thread_queues: std::iter::once(0b11u64)
                .chain((2..=request_queues).map(|q| 1u64 << q))
                .collect(),
            data: QueueEngine::new(request_queues + 1),
        })
    }

    /// How long a request queue's worker polls for more requests before it
    /// sleeps (adaptive, up to `max`; zero: never). Default
    /// [`device_queue::poll::DEFAULT_POLL`].
    pub fn with_poll(mut self, max: std::time::Duration) -> Self {
        self.data.set_poll(max);
        self
    }

    /// Selects the READ/WRITE engine (default: io_uring where available).
    pub fn with_engine(mut self, engine: IoEngine) -> Self {
        self.data.set_engine(engine);
        self
    }

    /// The engine asked for.
    pub fn engine(&self) -> IoEngine {
        self.data.engine()
    }

    /// With `false`, every READ and WRITE the io_uring engine takes goes
    /// through the ring, even when it would not block (default `true`: try
    /// `RWF_NOWAIT` inline first). For tests and measurements.
    pub fn with_inline_first(mut self, inline_first: bool) -> Self {
        self.data.set_inline_first(inline_first);
        self
    }

    /// Makes every request queue's io_uring ring now (with the io_uring
    /// engine): before the daemon's seccomp filter, which forbids making
    /// rings, goes up. Returns how many queues have one.
    pub fn prepare_rings(&self) -> usize {
        self.data.prepare_rings(1..=self.request_queues);
        self.data.ready_rings()
    }

    /// READs and WRITEs completed through the io_uring rings, all queues.
    pub fn ring_completions(&self) -> u64 {
        self.data.ring_completions()
    }

    /// READs and WRITEs the io_uring engine completed inline (they would
    /// not block), all queues.
    pub fn inline_completions(&self) -> u64 {
        self.data.inline_completions()
    }

    /// Per queue (0 is hiprio, 1.. the request queues): the requests it
    /// has taken so far.
    pub fn requests_per_queue(&self) -> Vec<u64> {
        self.data.requests_per_queue()
    }

    /// One line for the log: the requests each queue served.
    pub fn queue_report(&self) -> String {
        let counts = self.requests_per_queue();
        let used = counts.iter().skip(1).filter(|&&n| n > 0).count();
        let list: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(q, n)| {
                if q == 0 {
                    format!("hiprio {n}")
                } else {
                    format!("{q}: {n}")
                }
            })
            .collect();
        format!(
            "requests per queue: {} ({used} of {} request queues used)",
            list.join(", "),
            self.request_queues
        )
    }

    /// Stops every worker thread.
    pub fn notify_exit(&self) -> io::Result<()> {
        for (_, notifier) in &self.exits {
            notifier.notify()?;
        }
        Ok(())
    }

    /// The filesystem core this device serves.
    pub fn fs(&self) -> &Arc<PassthroughFs> {
        &self.fs
    }

    /// Serves one descriptor chain; returns the number of reply bytes written.
    fn handle_chain(&self, mem: &MemGuard, chain: Chain) -> Result<usize, ChainError> {
        let reader =
            Reader::from_descriptor_chain(&**mem, chain.clone()).map_err(ChainError::Reader)?;
        let writer = VirtioFsWriter::new(&**mem, chain).map_err(ChainError::Writer)?;
        let mut writer: Writer<_> = writer.into();
        if let Some(n) = fast_path::try_handle(&self.fs, reader.clone(), &mut writer)
            .map_err(ChainError::Fuse)?
        {
            return Ok(n);
        }
        self.server
            .handle_message(reader, writer, None, None)
            .map_err(ChainError::Fuse)
    }
}

/// Why one descriptor chain got no regular reply.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The device-readable part is not in guest memory or malformed.
    #[error("bad device-readable descriptors: {0}")]
    Reader(fuse_backend_rs::transport::Error),
    /// The device-writable part is not in guest memory or malformed.
    #[error("bad device-writable descriptors: {0}")]
    Writer(fuse_backend_rs::transport::Error),
    /// The FUSE request could not be decoded or answered.
    #[error("malformed FUSE request: {0}")]
    Fuse(fuse_backend_rs::Error),
    /// Serving the request panicked, and the chain has no room for an
    /// error reply (or no readable FUSE header to answer).
    #[error("serving the request panicked; no room for an error reply")]
    Panicked,
}

/// `struct fuse_in_header` up to `unique`: len, opcode, unique.
const IN_HEADER_UNIQUE: usize = 16;
/// `struct fuse_out_header`.
const OUT_HEADER: usize = 16;

/// Serves `chain` with `serve` (the device's whole per-request path),
/// returning the reply length. A panic while serving it (a bug: no guest
/// input should cause one) is caught and logged, and the request is
/// answered with `EIO` if the chain has a FUSE header and room for a reply
/// header; otherwise it is returned with no reply. Either way the queue,
/// and the worker thread serving it, go on.
pub fn serve_caught(
    mem: &MemGuard,
    chain: Chain,
    serve: impl FnOnce(&MemGuard, Chain) -> Result<usize, ChainError>,
) -> Result<usize, ChainError> {
    let kept = chain.clone();
    catch_unwind(AssertUnwindSafe(|| serve(mem, chain))).unwrap_or_else(|_| {
        error!(
            "virtio-fs: serving the request in chain {} panicked; answering EIO",
            kept.head_index()
        );
        eio_reply(mem, &kept)
    })
}

/// Overwrites whatever reply `chain` holds with a bare `EIO` reply to its
/// request; returns its length.
fn eio_reply(mem: &MemGuard, chain: &Chain) -> Result<usize, ChainError> {
    let header = peek::<IN_HEADER_UNIQUE>(mem, chain).ok_or(ChainError::Panicked)?;
    let (_, writable) = split_chain(chain).ok_or(ChainError::Panicked)?;
    if segs_len(&writable) < OUT_HEADER {
        return Err(ChainError::Panicked);
    }
    let mut reply = Vec::with_capacity(OUT_HEADER);
    reply.extend_from_slice(&(OUT_HEADER as u32).to_le_bytes());
    reply.extend_from_slice(&(-libc::EIO).to_le_bytes());
    reply.extend_from_slice(&header[8..16]);
    scatter(mem, &writable, &reply).map_err(|_| ChainError::Panicked)?;
    Ok(OUT_HEADER)
}

impl VhostUserBackend for VirtioFsBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1 + self.request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        f
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config = [0u8; TAG_LEN + 4];
        if let Some(tag) = &self.tag {
            config[..tag.len()].copy_from_slice(tag.as_bytes());
        }
        config[TAG_LEN..].copy_from_slice(&(self.request_queues as u32).to_le_bytes());
        device_queue::config_window(&config, offset, size)
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        self.mem.set(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.thread_queues.clone()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = self.exits.get(thread_index)?;
        Some((consumer.try_clone().ok()?, notifier.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread: usize,
    ) -> io::Result<()> {
        // Only an event this device never registered is an error: a queue
        // the guest broke is stopped by the serving loop, and this worker
        // thread (thread 0 also serves hiprio) goes on.
        let vring = device_queue::kicked_vring(vrings, device_event, evset)?;
        // `device_event` counts this thread's queues only; the queue's own
        // number decides hiprio or not, and which ring and poller it uses.
        let queue = device_queue::queue_of_event(&self.thread_queues, thread, device_event)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "thread {thread} has no queue for event {device_event}"
                ))
            })?;
        if queue == HIPRIO_QUEUE as usize {
            debug!("hiprio queue kicked");
        }
        let name = format!("virtio-fs queue {queue}");
        let fuse = FuseData(&self.fs);
        let data: Option<&dyn DataPath> = (queue != HIPRIO_QUEUE as usize).then_some(&fuse);
        self.data.serve_kick(
            queue,
            vring,
            self.mem.snapshot(),
            self.event_idx.load(Ordering::Acquire),
            &name,
            data,
            |mem, chain| {
                serve_caught(mem, chain, |mem, chain| self.handle_chain(mem, chain))
                    .map(|n| n as u32)
            },
        );
        Ok(())
    }
}
