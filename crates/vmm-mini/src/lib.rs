//! vmm-mini: a minimal KVM VMM.
//!
//! The VMM ([`vm::run`] with a [`config::VmConfig`]) boots a Linux kernel
//! (PVH `vmlinux`, or a `bzImage`) in memfd-backed memory ([`Ram`])
//! with one or more vCPUs (up to [`MAX_CPUS`], announced in an MP table),
//! an 8250 console on stdio and virtio-mmio devices ([`virtio_mmio`])
//! announced on the kernel command line. The devices ([`devices`]) are
//! virtio-fs and virtio-9p shares served in-process by this project's own
//! backends or by a vhost-user backend over a socket (through
//! `virtio_driver`'s frontend). [`kvm_probe`] tells whether `/dev/kvm` is
//! hardware-backed, so KVM boot tests can skip with a reason where it is not.
//!
//! The driver side that tests and benchmarks use (guest memory with an
//! allocator, split queues, a virtio-mmio driver, FUSE helpers) is the
//! `virtio-driver` crate.

#![deny(missing_docs)]

mod boot;
pub mod config;
mod cpu;
pub mod devices;
pub mod kvm_probe;
mod layout;
mod memory;
mod mptable;
mod serial;
pub mod virtio_mmio;
pub mod vm;

pub use layout::{BOOT_MARK_PORT, EXIT_PORT, MAX_RAM};
pub use memory::{MemoryError, Ram};
pub use mptable::MAX_CPUS;
