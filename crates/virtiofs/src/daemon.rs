//! The daemon: a configuration, and `run` to serve it. The `virtiofsd-rs`
//! binary only parses flags into a [`DaemonConfig`] and calls [`run`]; a VMM
//! linking this crate can do the same, or use [`crate::VirtioFsBackend`]
//! directly with its own vhost-user plumbing.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use log::info;
use passthrough::PassthroughFs;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::{DeviceError, VirtioFsBackend};
use crate::fuse_mount::{self, FuseMountError};
use crate::sandbox::{self, SandboxError, SandboxMode};

/// Where the vhost-user frontend connects.
#[derive(Debug, Clone)]
pub enum Listen {
    /// Create and listen on a unix socket at this path.
    SocketPath {
        /// The socket path.
        path: PathBuf,
        /// Give the socket to this group (`--socket-group`).
        group: Option<String>,
    },
    /// Use an inherited, already listening socket (`--fd`).
    Fd(RawFd),
    /// Serve the host's `/dev/fuse` at this mount point instead (`--fuse-mount`).
    FuseMount(PathBuf),
}

/// Everything the daemon needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The filesystem core's configuration.
    pub fs: passthrough::Config,
    /// Where to serve.
    pub listen: Listen,
    /// The tag to report in the device config space, if any.
    pub tag: Option<String>,
    /// Number of request queues offered.
    pub request_queues: usize,
    /// The READ/WRITE engine.
    pub io_engine: crate::device::IoEngine,
    /// How long a request queue's worker polls before it sleeps (zero:
    /// never).
    pub poll: std::time::Duration,
    /// Worker threads (FUSE-mount mode); 0 means one.
    pub thread_pool_size: usize,
    /// The sandbox to enter before serving.
    pub sandbox: SandboxMode,
    /// `RLIMIT_NOFILE` to set; `None` raises it to min(1000000, fs.nr_open),
    /// `Some(0)` leaves it alone.
    pub rlimit_nofile: Option<u64>,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The shared directory is unusable.
    #[error(transparent)]
    Fs(#[from] passthrough::Error),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What vhost said.
        source: VhostUserError,
    },
    /// `--socket-group` could not be applied.
    #[error("socket group {group}: {source}")]
    SocketGroup {
        /// The group name.
        group: String,
        /// What the host said.
        source: io::Error,
    },
    /// The sandbox could not be entered.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The device could not be created.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The vhost-user daemon failed.
    #[error("vhost-user: {0}")]
    VhostUser(vhost_user_backend::Error),
    /// `--rlimit-nofile` could not be applied.
    #[error("cannot set RLIMIT_NOFILE to {limit}: {source}")]
    Rlimit {
        /// The requested limit.
        limit: u64,
        /// What the host said.
        source: io::Error,
    },
    /// Serving the FUSE mount failed.
    #[error(transparent)]
    FuseMount(#[from] FuseMountError),
}

fn set_rlimit_nofile(limit: Option<u64>) -> Result<(), DaemonError> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    if limit == Some(0) {
        return Ok(());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(cur.rlim_max);
    let want = limit.unwrap_or_else(|| nr_open.min(1_000_000));
    if want == cur.rlim_cur {
        return Ok(());
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(cur.rlim_max),
    };
    // SAFETY: valid in-pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } < 0 {
        let source = io::Error::last_os_error();
        if limit.is_some() {
            return Err(DaemonError::Rlimit {
                limit: want,
                source,
            });
        }
    }
    Ok(())
}

fn group_id(name: &str) -> io::Result<libc::gid_t> {
    if let Ok(gid) = name.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated name; the result points into static storage we
    // read immediately, before any other getgr* call on this thread.
    let gr = unsafe { libc::getgrnam(cname.as_ptr()) };
    if gr.is_null() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such group"));
    }
    // SAFETY: `gr` is non-null and valid until the next getgr* call.
    Ok(unsafe { (*gr).gr_gid })
}

fn listener(listen: &Listen) -> Result<Listener, DaemonError> {
    match listen {
        Listen::SocketPath { path, group } => {
            let l = Listener::new(path, true).map_err(|source| DaemonError::Listen {
                path: path.clone(),
                source,
            })?;
            if let Some(group) = group {
                let err = |source| DaemonError::SocketGroup {
                    group: group.clone(),
                    source,
                };
                let gid = group_id(group).map_err(err)?;
                let c = CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
                // SAFETY: NUL-terminated path; plain syscalls.
                if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } < 0
                    || unsafe { libc::chmod(c.as_ptr(), 0o660) } < 0
                {
                    return Err(err(io::Error::last_os_error()));
                }
            }
            Ok(l)
        }
        // SAFETY: the caller promised (with --fd) that this fd is a listening
        // unix socket handed to us; we take ownership of it.
        Listen::Fd(fd) => Ok(unsafe { Listener::from_raw_fd(*fd) }),
        Listen::FuseMount(_) => unreachable!("FUSE mode has no vhost-user listener"),
    }
}

/// Serves `cfg` until the frontend disconnects (vhost-user) or the mount goes
/// away (FUSE mode).
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    set_rlimit_nofile(cfg.rlimit_nofile)?;
    let fs = Arc::new(PassthroughFs::new(cfg.fs.clone())?);

    if let Listen::FuseMount(mnt) = &cfg.listen {
        // The mount point lives outside the share: no pivot_root here.
        return Ok(fuse_mount::serve(
            fs,
            mnt,
            cfg.thread_pool_size,
            cfg.fs.readonly,
        )?);
    }

    let mut listener = listener(&cfg.listen)?;
    sandbox::enter(cfg.sandbox, &cfg.fs.root_dir)?;

    let backend = Arc::new(
        VirtioFsBackend::new(fs, cfg.request_queues, cfg.tag.clone())?
            .with_engine(cfg.io_engine)
            .with_poll(cfg.poll),
    );
    info!(
        "serving up to {} request queues, I/O engine {}, polling up to {:?}",
        cfg.request_queues, cfg.io_engine, cfg.poll
    );
    let mut daemon = VhostUserDaemon::new(
        "virtiofsd-rs".to_string(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(DaemonError::VhostUser)?;
    info!("waiting for a vhost-user frontend");
    daemon
        .start(&mut listener)
        .map_err(DaemonError::VhostUser)?;
    info!("frontend connected");
    let result = daemon.wait();
    // Stop the queue workers whatever the outcome.
    let _ = backend.notify_exit();
    match result {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(VhostUserError::Disconnected))
        | Err(vhost_user_backend::Error::HandleRequest(VhostUserError::PartialMessage)) => Ok(()),
        Err(e) => Err(DaemonError::VhostUser(e)),
    }
    .inspect(|()| info!("frontend disconnected; exiting"))
}
