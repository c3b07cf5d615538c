//! vmm-mini: a minimal KVM VMM, and the driver-side virtqueue harness.
//!
//! The VMM ([`vm::run`] with a [`config::VmConfig`]) boots a Linux kernel
//! (PVH `vmlinux` through [`boot`], or a `bzImage`) in memfd-backed memory
//! with one or more vCPUs ([`cpu`], [`mptable`]), an 8250 console on stdio
//! ([`serial`]) and virtio-mmio devices ([`virtio_mmio`]) announced on the
//! kernel command line. The devices ([`devices`]) are virtio-fs and
//! virtio-9p shares served in-process by this project's own backends or by a
//! vhost-user backend over a socket ([`vhost_frontend`]).
//!
//! The driver-side harness drives devices without a guest:
//! - [`harness`]: guest memory and split virtqueues driven from the driver's
//!   side, so tests can put any request, well formed or not, in front of any
//!   virtio device;
//! - [`vhost_frontend`]: a vhost-user frontend that hands that memory and
//!   those queues to a backend process (ours or upstream's);
//! - [`fuse_wire`]: FUSE requests and replies as bytes;
//! - [`kvm_probe`]: whether `/dev/kvm` is hardware-backed, so KVM boot tests
//!   can skip with a reason where it is not.

#![deny(missing_docs)]

pub mod boot;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod fuse_wire;
pub mod harness;
pub mod kvm_probe;
pub mod layout;
pub mod mmio_driver;
pub mod mptable;
pub mod serial;
pub mod vhost_frontend;
pub mod virtio_mmio;
pub mod vm;
