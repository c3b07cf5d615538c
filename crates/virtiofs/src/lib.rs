//! The vhost-user virtio-fs device and the `virtiofsd-rs` daemon.
//!
//! Request flow: the guest's virtiofs driver puts a FUSE request in a split
//! virtqueue -> the vhost-user-backend worker calls
//! [`VirtioFsBackend`]'s `handle_event` -> each descriptor chain becomes a
//! fuse-backend-rs `Reader`/`Writer` over guest memory -> FUSE dispatch into
//! the shared [`passthrough::PassthroughFs`] core -> the reply is written into
//! the chain's device-writable buffers and the chain goes to the used ring.
//!
//! Linking it into a VMM:
//!
//! ```no_run
//! use std::path::PathBuf;
//! use virtiofs::{run, DaemonConfig, Listen, SandboxConfig, SandboxMode};
//!
//! let cfg = DaemonConfig {
//!     fs: passthrough::Config::new("/srv/share"),
//!     listen: Listen::SocketPath { path: PathBuf::from("/run/vfs.sock"), group: None },
//!     tag: None,
//!     request_queues: 1,
//!     io_engine: virtiofs::IoEngine::IoUring,
//!     poll: std::time::Duration::from_micros(50),
//!     thread_pool_size: 0,
//!     sandbox: SandboxConfig {
//!         mode: SandboxMode::None,
//!         ..SandboxConfig::new(sandbox::Profile::VirtioFs)
//!     },
//!     rlimit_nofile: None,
//!     ready: None,
//!     record_requests: None,
//! };
//! run(cfg).expect("virtio-fs daemon");
//! ```

#![deny(missing_docs)]

/// The README's Rust examples, compiled (and type-checked against this
/// crate) as doctests, so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "cli")]
pub mod cli;
mod daemon;
mod device;
pub mod extensions;
mod fast_path;
mod fuse_mount;
mod locks;
#[cfg(feature = "cli")]
pub mod logging;
pub mod mount_helper;
mod pid_file;
pub mod record;
mod uring;

pub use daemon::{run, DaemonConfig, DaemonError, Listen, READY_LINE};
pub use device::{
    serve_caught, ChainError, DeviceError, GuestMem, IoEngine, QueueDevice, VirtioFsBackend,
    HIPRIO_QUEUE, MAX_QUEUE_SIZE, TAG_LEN,
};
pub use fast_path::names_well_formed;
pub use pid_file::{PidFile, PidFileError};
pub use record::FuseRecorder;
pub use sandbox::{SandboxConfig, SandboxMode, SeccompMode};
