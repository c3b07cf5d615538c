//! The pid file beside the vhost-user socket (`SOCK.pid`), as upstream
//! virtiofsd keeps one: it holds the daemon's pid and an exclusive `flock`
//! for the daemon's whole life, so a second daemon started on the same
//! socket path fails at once with the first one's pid, instead of
//! replacing the socket under it (which would leave the first running and
//! unreachable).
//!
//! The lock, not the file's existence, is what counts: a file left behind
//! by a daemon that was killed is taken over by the next one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why the pid file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another process holds the lock: a daemon already serves this socket.
    #[error("{socket} is already served by another daemon{} (its pid file {path} is locked)", .pid.map(|p| format!(", pid {p}")).unwrap_or_default())]
    InUse {
        /// The socket path.
        socket: String,
        /// The pid file.
        path: String,
        /// The pid the holder wrote, if readable.
        pid: Option<u32>,
    },
    /// The pid file exists and is not a regular file.
    #[error("pid file {0} exists and is not a regular file")]
    NotAFile(String),
    /// The pid file exists, owned by another user or with other names.
    #[error("pid file {path} belongs to uid {uid} and has {links} link(s): not this daemon's to take over")]
    NotOurs {
        /// The pid file.
        path: String,
        /// Its owner.
        uid: u32,
        /// Its hard link count.
        links: u64,
    },
    /// The pid file could not be opened, locked or written.
    #[error("pid file {path}: {source}")]
    Io {
        /// The pid file.
        path: String,
        /// What the host said.
        source: io::Error,
    },
}

/// A locked pid file; the lock lasts as long as this value (and any
/// process that inherited its fd) lives.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    /// The pid file of the daemon serving `socket`: `SOCK.pid`.
    pub fn path_for_socket(socket: &Path) -> PathBuf {
        let mut p = socket.as_os_str().to_owned();
        p.push(".pid");
        PathBuf::from(p)
    }

    /// Creates or takes over the pid file of `socket`, locks it and writes
    /// this process's pid. Never follows a symlink at the pid file's name.
    pub fn acquire(socket: &Path) -> Result<PidFile, PidFileError> {
        let path = Self::path_for_socket(socket);
        let shown = path.display().to_string();
        let io_err = |source| PidFileError::Io {
            path: shown.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::EISDIR) => PidFileError::NotAFile(shown.clone()),
                _ => io_err(e),
            })?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.file_type().is_file() {
            return Err(PidFileError::NotAFile(shown));
        }
        // In a directory others may write to, a file someone else made (a
        // hard link to a file of ours, which O_NOFOLLOW does not stop, or
        // a decoy whose lock they hold) is not ours to truncate or wait on.
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me || meta.nlink() != 1 {
            return Err(PidFileError::NotOurs {
                path: shown,
                uid: meta.uid(),
                links: meta.nlink(),
            });
        }
        // SAFETY: flock on an fd this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(e));
            }
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(PidFileError::InUse {
                socket: socket.display().to_string(),
                path: shown,
                pid,
            });
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(PidFile { path, _file: file })
    }

    /// The pid file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file while it is still locked (so no second daemon can
    /// have taken it over meanwhile); the lock goes with the last owner.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_on_the_same_socket_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vfs.sock");
        let first = PidFile::acquire(&sock).unwrap();
        assert_eq!(first.path(), dir.path().join("vfs.sock.pid"));
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        let err = PidFile::acquire(&sock).unwrap_err();
        match &err {
            PidFileError::InUse { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            e => panic!("expected InUse, got {e:?}"),
        }
        assert!(err
            .to_string()
            .contains("already served by another daemon, pid "));
        // Released: the next one takes over.
        drop(first);
        let again = PidFile::acquire(&sock).unwrap();
        again.remove();
        assert!(!dir.path().join("vfs.sock.pid").exists());
    }

    #[test]
    fn a_stale_pid_file_is_taken_over_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        std::fs::write(dir.path().join("s.pid"), "999999999 and some old text\n").unwrap();
        let p = PidFile::acquire(&sock).unwrap();
        let text = std::fs::read_to_string(p.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }

    #[test]
    fn a_hard_link_at_the_pid_file_name_is_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::hard_link(&victim, dir.path().join("h.pid")).unwrap();
        let err = PidFile::acquire(&dir.path().join("h")).unwrap_err();
        assert!(
            matches!(err, PidFileError::NotOurs { links: 2, .. }),
            "{err:?}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_symlink_or_directory_at_the_pid_file_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("a.pid")).unwrap();
        let err = PidFile::acquire(&dir.path().join("a")).unwrap_err();
        assert!(matches!(err, PidFileError::NotAFile(_)), "{err:?}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        std::fs::create_dir(dir.path().join("b.pid")).unwrap();
        let err = PidFile::acquire(&dir.path().join("b")).unwrap_err();
        assert!(matches!(err, PidFileError::NotAFile(_)), "{err:?}");
    }
}
