//! The driver's side of virtio devices, without a guest: what a guest's
//! drivers do, done by tests, benchmarks and fuzz targets, so they can put
//! any request, well formed or not, in front of any of this project's
//! devices (or a peer's).
//!
//! - [`memory`]: memfd-backed guest memory ([`GuestRam`]) with a bump
//!   allocator, shareable with a vhost-user backend;
//! - [`queue`]: split virtqueues ([`SplitQueue`]) from the driver's side:
//!   direct chains, indirect tables, event index;
//! - [`inflight`]: many chains in flight on a queue ([`InFlight`]), each
//!   used entry checked against them (nothing answered twice or unasked);
//! - [`vhost_user`]: a vhost-user frontend ([`VhostUserConn`], what a VMM
//!   holds; [`VhostUserDevice`], a backend driven from a test);
//! - [`mmio`]: Linux's virtio-mmio driver over a VMM's register window
//!   ([`MmioDriver`]);
//! - [`fuse`]: FUSE requests and replies as bytes; [`fs`]: a virtio-fs
//!   driver over any [`fs::Link`] (either of the two above);
//! - [`process`]: vhost-user daemons started for a test, and the upstream
//!   one to compare with;
//! - [`wait`]: sleeping on call eventfds until the device answered.
//!
//! ```
//! use virtio_driver::{Buf, GuestRam, SplitQueue};
//!
//! let mut ram = GuestRam::new(1 << 20).unwrap();
//! let mut q = SplitQueue::new(&mut ram, 16);
//! let req = ram.alloc(64, 8);
//! let reply = ram.alloc(64, 8);
//! let head = q.write_chain(&ram, &Buf::request_reply(req, 64, reply, 64));
//! q.publish(&ram, head);
//! assert!(q.kick_prepare(&ram)); // now a device would be notified
//! assert_eq!(q.take_used(&ram), None); // and nothing has come back yet
//! ```

#![deny(missing_docs)]

pub mod fs;
pub mod fuse;
pub mod inflight;
pub mod memory;
pub mod mmio;
pub mod process;
pub mod queue;
pub mod vhost_user;
pub mod wait;

pub use fs::{FsDriver, Link};
pub use inflight::{InFlight, UsedError};
pub use memory::{GuestRam, MemoryError};
pub use mmio::{MmioDriver, MmioWindow, ProbeError};
pub use queue::{Buf, SplitQueue};
pub use vhost_user::{FrontendError, RingAddrs, VhostUserConn, VhostUserDevice, VringSetup};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// `VIRTIO_F_VERSION_1`, as a feature mask.
pub const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_INDIRECT_DESC`, as a feature mask.
pub const F_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// `VIRTIO_RING_F_EVENT_IDX`, as a feature mask.
pub const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
