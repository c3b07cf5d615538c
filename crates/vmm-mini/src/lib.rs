//! The minimal VMM and the driver-side virtqueue harness.
//!
//! Today this crate holds the driver-side harness:
//! - [`harness`]: guest memory and split virtqueues driven from the driver's
//!   side, so tests can put any request, well formed or not, in front of any
//!   virtio device;
//! - [`vhost_frontend`]: a vhost-user frontend that hands that memory and
//!   those queues to a backend process (ours or upstream's);
//! - [`fuse_wire`]: FUSE requests and replies as bytes;
//! - [`kvm_probe`]: whether `/dev/kvm` is hardware-backed, so KVM boot tests
//!   can skip with a reason where it is not.
//!
//! The KVM VMM and its virtio-mmio device models are the subject of issue 4
//! and are not written yet.

#![deny(missing_docs)]

pub mod fuse_wire;
pub mod harness;
pub mod kvm_probe;
pub mod vhost_frontend;
