//! Errors of setting up the core. Per-request errors are errno values
//! (`io::Error`) because that is what both wire protocols carry.

use std::io;
use std::path::PathBuf;

/// Why a [`crate::PassthroughFs`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared directory could not be opened.
    #[error("cannot open shared directory {path}: {source}")]
    OpenRoot {
        /// The path that was given.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// The shared directory is not a directory.
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// `/proc/self/fd` could not be opened (needed to reopen inodes).
    #[error("cannot open /proc/self/fd: {0}")]
    ProcSelfFd(io::Error),
    /// `--inode-file-handles=mandatory` but the host filesystem has none.
    #[error("file handles are mandatory but unsupported for {path}: {source}")]
    FileHandlesUnsupported {
        /// The shared directory.
        path: PathBuf,
        /// What `name_to_handle_at` said.
        source: io::Error,
    },
}
