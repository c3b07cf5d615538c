//! The 9P2000.L server crate. Its codec, server and transports are the
//! subject of issue 3 and are not written yet; the crate exists so the
//! workspace layout is in place and depends on the shared core it will use.

#![deny(missing_docs)]

pub use passthrough::PassthroughFs;
