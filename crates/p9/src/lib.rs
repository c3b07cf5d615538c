//! The 9P2000.L server, on the same filesystem core as the virtio-fs device.
//!
//! - [`wire`] and [`messages`]: the codec. Every length is checked against
//!   the frame and msize, walks carry at most 16 names, strings may not
//!   contain NUL, and nothing may trail a message.
//! - [`server`]: a [`server::Session`] per connection with its fid table
//!   ([`fid_table`], bounded); one method per message, on the shared
//!   [`passthrough::PassthroughFs`] through its `FileSystem` interface.
//! - [`attach_policy`]: who may attach, and as whom (`--squash-root`,
//!   `--allow-uids`), since 9P2000.L's identities come from the client.
//! - [`transport`]: byte streams (TCP, unix, inherited fds) with concurrent
//!   requests and a Tflush that waits for the flushed request.
//! - [`virtio`]: virtio-9p, as a descriptor-chain transport a VMM can run
//!   in-process ([`virtio::serve_chain`]) and as a vhost-user backend
//!   ([`virtio::P9VhostBackend`]).
//! - [`record`]: `--record-requests`, every frame received on any
//!   transport appended to a file (fuzz seeds; it holds guest data).
//! - [`daemon`]: what `p9d` runs.
//!
//! A VMM or test can serve any stream:
//!
//! ```no_run
//! use std::sync::Arc;
//! use p9::{server::Server, transport::serve_connection};
//! use passthrough::{Config, PassthroughFs};
//!
//! let fs = Arc::new(PassthroughFs::new(Config::new("/srv/share")).unwrap());
//! let server = Server::new(fs);
//! let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
//! serve_connection(server, a.try_clone().unwrap(), a).unwrap();
//! ```

#![deny(missing_docs)]

pub mod attach_policy;
pub mod daemon;
pub mod fid_table;
pub mod messages;
pub mod record;
pub mod server;
pub mod transport;
pub mod user_db;
pub mod virtio;
pub mod wire;

pub use daemon::{run, ListenAddr, P9Config, P9Error};
