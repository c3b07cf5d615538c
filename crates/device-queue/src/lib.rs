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

//!
//! The crate along its seams: [`drain`](crate::serve_kick_with) (the
//! serving loop and the engine choice), `chain` (descriptor chains as guest
//! segments and host iovecs), `io` (the inline and blocking system calls),
//! `uring` (the restricted io_uring ring), `poll` (adaptive polling),
//! `record` (request recording: [`RecordFile`], [`ChainRecorder`]) and
//! `device` (the plumbing every device shares).

#![deny(missing_docs)]

mod chain;
mod device;
mod drain;
mod io;
mod poll;
mod record;
mod uring;

pub use chain::{gather, gather_obj, iovecs, peek, scatter, segs_len, split_chain, Seg};
pub use device::{
    config_window, device_protocol_features, event_of_queue, kicked_vring, queue_of_event,
    DeviceCore, MemorySlot, QueueDevice, DEVICE_FEATURES,
};
pub use drain::{
    answer_deferred, available, is_started, notify, return_chain, serve_chain, serve_kick,
    serve_kick_with, DataPath, IoEngine, MemSource, QueueEngine, QueueError, UnknownEngine,
    DEFERRED, MAX_DRAINS_PER_KICK, MAX_PASSES, NOTIFY_EVERY,
};
pub use io::{rw_nowait, try_inline, DataOp, Kind, OpenFile};
pub use poll::{readable, Poller, QueuePollers, DEFAULT_POLL};
pub use record::{append_readable, ChainRecorder, RecordFile};
pub use uring::{restricted_ring, RingError, UringQueue, RING_ENTRIES, RING_OPS};

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as a vhost-user backend receives it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;
/// A snapshot of guest memory for serving one kick.
pub type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;
/// A descriptor chain over such a snapshot.
pub type Chain = DescriptorChain<MemGuard>;
