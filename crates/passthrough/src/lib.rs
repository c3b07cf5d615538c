//! The host filesystem core shared by every protocol front end.
//!
//! [`PassthroughFs`] serves one host directory through fuse-backend-rs's
//! [`FileSystem`](fuse_backend_rs::api::filesystem::FileSystem) trait. The
//! virtio-fs device hands it decoded FUSE requests; the 9P server maps fids
//! onto the same inodes and handles. It owns:
//!
//! - the inode table (`inode_store`), holding each host inode by an `O_PATH`
//!   fd or a file handle, with FUSE lookup counts;
//! - the handle table (`handle_table`), whose host fds a data-path engine may
//!   borrow;
//! - confinement (`name`, and `openat2(RESOLVE_BENEATH)` in `fs`): every name
//!   is one component, symlinks are never followed on the host, `..` at the
//!   root is the root, and special files are never opened;
//! - credentials (`credentials`): requests run with the requester's uid/gid,
//!   translated between guest and host ids by `idmap` where configured;
//! - a reserve of fds (`fd_budget`) that no number of guest lookups and
//!   opens can use up, and a bounded cache of fds (`fd_cache`) for the
//!   inodes in use among those held by file handle.
//!
//! ```no_run
//! use passthrough::{Config, PassthroughFs};
//! use fuse_backend_rs::api::server::Server;
//! use std::sync::Arc;
//!
//! let fs = PassthroughFs::new(Config::new("/srv/share")).expect("share");
//! let server = Arc::new(Server::new(Arc::new(fs)));
//! // Hand `server` FUSE requests from /dev/fuse or a virtqueue.
//! # let _ = server;
//! ```

#![deny(missing_docs)]

mod config;
pub mod credentials;
mod error;
pub mod fd_budget;
pub mod fd_cache;
mod file_handle;
pub mod fs;
mod handle_table;
pub mod idmap;
mod inode_store;
pub mod io_buf;
pub mod name;
pub mod request_ext;
mod sys;
pub mod xattrmap;

pub use config::{CachePolicy, Config, InodeFileHandles, Negotiation};
pub use error::Error;
pub use fs::{Access, PassthroughFs, LK_FLOCK};
pub use handle_table::HandleData;
pub use idmap::{IdMap, IdMapError};
pub use inode_store::ROOT_ID;
pub use request_ext::{with_create_ext, CreateExt, SecurityContext};
pub use xattrmap::{XattrMap, XattrMapError};
