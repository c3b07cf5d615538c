//! Serving the core over the host's `/dev/fuse`, for native-speed testing
//! (pjdfstest, xfstests, fio) without a guest.
//!
//! The mount is made first, in the host's mount namespace, with every
//! privilege; then the daemon puts up its walls (the sandbox crate) and
//! only then serves. A sandboxed daemon cannot unmount (no CAP_SYS_ADMIN,
//! no `umount2` in its seccomp list, a foreign mount namespace), so the
//! supervising parent does it with [`unmount`] once the server has ended.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseChannel, FuseSession};
use log::{info, warn};
use passthrough::PassthroughFs;

/// Why the FUSE mount could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FuseMountError {
    /// Mounting failed.
    #[error("cannot mount FUSE at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What fuse-backend-rs said.
        source: fuse_backend_rs::transport::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start FUSE worker: {0}")]
    Thread(std::io::Error),
}

/// A mounted FUSE filesystem whose requests nobody serves yet.
pub struct Mounted {
    session: FuseSession,
    channels: Vec<FuseChannel>,
    mountpoint: PathBuf,
    id: Option<u64>,
}

/// The id of the mount at `path` (statx; the never-reused
/// STATX_MNT_ID_UNIQUE where the kernel has it, Linux 6.8, else
/// STATX_MNT_ID), without asking a FUSE server anything.
pub fn mount_id(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    for mask in [libc::STATX_MNT_ID_UNIQUE, libc::STATX_MNT_ID] {
        // SAFETY: statx fills this plain-data struct; all zeroes is valid.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: NUL-terminated path and a valid out-pointer.
        let r = unsafe {
            libc::statx(
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_STATX_DONT_SYNC | libc::AT_NO_AUTOMOUNT,
                mask,
                &mut stx,
            )
        };
        if r == 0 && stx.stx_mask & mask != 0 {
            return Some(stx.stx_mnt_id);
        }
    }
    None
}

/// /dev/fuse readers when none are asked for: one per CPU, at most this
/// many. A single reader serialises a guest's parallel lookups (git's
/// preload threads): `git status` of linux-source-6.1 with cache=auto,
/// entries expiring, took 0.92-0.94 s with one reader, 0.29-0.49 s with two
/// and 0.25-0.44 s with four on a 2-CPU machine (native: 0.10 s).
pub const DEFAULT_MAX_READERS: usize = 4;

/// How many readers `threads` asks for (0: one per CPU, at most
/// [`DEFAULT_MAX_READERS`]).
pub fn readers(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, DEFAULT_MAX_READERS)
}

/// Mounts at `mountpoint` with the source name `source` (read-only if
/// `readonly`) and opens `threads` channels to serve it (0: see
/// [`readers`]).
pub fn mount(
    mountpoint: &Path,
    source: &str,
    threads: usize,
    readonly: bool,
) -> Result<Mounted, FuseMountError> {
    let mount_err = |source| FuseMountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let mut session = FuseSession::new(mountpoint, source, "", readonly).map_err(mount_err)?;
    session.mount().map_err(mount_err)?;
    let channels = (0..readers(threads))
        .map(|_| session.new_channel().map_err(mount_err))
        .collect::<Result<_, _>>()?;
    Ok(Mounted {
        session,
        channels,
        mountpoint: mountpoint.to_path_buf(),
        id: mount_id(mountpoint),
    })
}

/// Detaches the mount at `mountpoint` if it is still the mount with id `id`
/// ([`Mounted::id`]; for the supervising parent, once the sandboxed server
/// has ended). Usually the server ended because its mount was unmounted,
/// and by then another mount may be on the same path (a mount helper's
/// caller unmounting and mounting again at once): that one is left alone.
/// A mount already gone is not an error.
pub fn unmount(mountpoint: &Path, id: Option<u64>) {
    let Ok(c) = CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return;
    };
    if id.is_some() && mount_id(mountpoint) != id {
        info!(
            "{} is no longer our mount: not unmounting",
            mountpoint.display()
        );
        return;
    }
    // SAFETY: NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            warn!("unmount {}: {e}", mountpoint.display());
        }
    }
}

impl Mounted {
    /// The mount's id (see [`mount_id`]), for [`unmount`].
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Serves `fs` until the mount goes away or the process gets SIGINT or
    /// SIGTERM. With `unmount`, unmounts at the end; without (a sandboxed
    /// daemon), leaves that to the supervisor.
    pub fn serve(self, fs: Arc<PassthroughFs>, unmount: bool) -> Result<(), FuseMountError> {
        // Blocked in every thread; one thread waits for them.
        let signals = sandbox::signals::Termination::block();
        info!(
            "serving {} at {}",
            fs.config().root_dir.display(),
            self.mountpoint.display()
        );
        let server = Arc::new(Server::new(fs));
        let mut workers = Vec::new();
        for (i, mut channel) in self.channels.into_iter().enumerate() {
            let server = server.clone();
            let worker = thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || loop {
                    match channel.get_request() {
                        Ok(Some((reader, writer))) => {
                            if let Err(e) = server.handle_message(reader, writer.into(), None, None)
                            {
                                warn!("FUSE request failed: {e}");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            info!("FUSE channel closed: {e}");
                            break;
                        }
                    }
                })
                .map_err(FuseMountError::Thread)?;
            workers.push(worker);
        }
        let session = Arc::new(Mutex::new(Some(self.session)));
        let waker = session.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = signals.wait();
                info!("signal {sig}: stopping");
                let s = waker.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(s) = s.as_ref() {
                    let _ = s.wake();
                }
            })
            .map_err(FuseMountError::Thread)?;
        for w in workers {
            let _ = w.join();
        }
        let taken = session.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(mut s) if unmount => {
                if let Err(e) = s.umount() {
                    warn!("unmount: {e}");
                }
            }
            // Its Drop would unmount, which the walls forbid: the
            // supervisor does it.
            other => std::mem::forget(other),
        }
        Ok(())
    }
}
