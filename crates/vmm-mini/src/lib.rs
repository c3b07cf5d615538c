//! The minimal VMM and the driver-side virtqueue harness.
//!
//! Today this crate holds [`harness`]: guest memory and split virtqueues
//! driven from the driver's side, so tests can put any request, well formed
//! or not, in front of any in-process virtio device. The KVM VMM, the
//! vhost-user frontend and the virtio-mmio device models are the subject of
//! issue 4 and are not written yet.

#![deny(missing_docs)]

pub mod harness;
