//! vmm-mini: a minimal KVM VMM.
//!
//! The VMM ([`vm::run`] with a [`config::VmConfig`]) boots a Linux kernel
//! (PVH `vmlinux` through [`boot`], or a `bzImage`) in memfd-backed memory
//! ([`memory`]) with one or more vCPUs ([`cpu`], [`mptable`]), an 8250
//! console on stdio ([`serial`]) and virtio-mmio devices ([`virtio_mmio`])
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

pub mod boot;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod kvm_probe;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod serial;
pub mod virtio_mmio;
pub mod vm;
