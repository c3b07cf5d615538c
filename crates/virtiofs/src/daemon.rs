//! The daemon: a configuration, and `run` to serve it. The `virtiofsd-rs`
//! binary only parses flags into a [`DaemonConfig`] and calls [`run`]; a VMM
//! linking this crate can do the same, or use [`crate::VirtioFsBackend`]
//! directly with its own vhost-user plumbing.

use device_queue::QueueDevice;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use log::{info, warn};
use passthrough::PassthroughFs;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::{DeviceError, VirtioFsBackend};
use crate::fuse_mount::{self, FuseMountError};
use crate::mount_helper::Readiness;
use crate::pid_file::{PidFile, PidFileError};
use crate::record::FuseRecorder;
use sandbox::{SandboxConfig, SandboxError, SocketError};

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
    /// Serve the host's `/dev/fuse` at a mount point instead (`--fuse-mount`).
    FuseMount {
        /// The mount point.
        mountpoint: PathBuf,
        /// The mount's source name (`--fuse-source`).
        source: String,
    },
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
    /// Worker threads (FUSE-mount mode); 0 means one per CPU, at most 4.
    pub thread_pool_size: usize,
    /// The walls to put up before serving: namespace sandbox, capabilities,
    /// Landlock, seccomp (see the `sandbox` crate).
    pub sandbox: SandboxConfig,
    /// `RLIMIT_NOFILE` to set; `None` raises it to min(1000000, fs.nr_open),
    /// `Some(0)` leaves it alone.
    pub rlimit_nofile: Option<u64>,
    /// Told once the share is served, walls up (FUSE mode), or why it will
    /// not be: the mount helper's wait ([`crate::mount_helper::detach`]).
    pub ready: Option<Readiness>,
    /// Append every FUSE request the device takes to this file
    /// (`--record-requests`; format in [`crate::record`]). The file is
    /// created, or truncated, mode 0600, before the sandbox goes up. It
    /// holds the guest's file names and data: for test runs only. Not with
    /// [`Listen::FuseMount`].
    pub record_requests: Option<PathBuf>,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The shared directory is unusable.
    #[error(transparent)]
    Fs(#[from] passthrough::Error),
    /// The socket could not be created (or given to its group).
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A wall could not be put up.
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
    /// The `--record-requests` file could not be created.
    #[error("cannot create the request recording {path:?}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// The socket's pid file is locked by another daemon, or unusable.
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    /// `--record-requests` with `--fuse-mount`: only the virtio-fs device
    /// records requests.
    #[error("--record-requests records the virtio-fs device's queues; --fuse-mount has none")]
    RecordFuseMount,
}

/// Creates the request recording `cfg` asks for, if any: before the
/// sandbox, which would forbid creating it.
fn recorder(cfg: &DaemonConfig) -> Result<Option<Arc<FuseRecorder>>, DaemonError> {
    let Some(path) = &cfg.record_requests else {
        return Ok(None);
    };
    if matches!(cfg.listen, Listen::FuseMount { .. }) {
        return Err(DaemonError::RecordFuseMount);
    }
    let recorder = FuseRecorder::create(path).map_err(|source| DaemonError::Record {
        path: path.clone(),
        source,
    })?;
    warn!(
        "recording every FUSE request to {}: the file holds the guest's file names and data",
        path.display()
    );
    Ok(Some(Arc::new(recorder)))
}

fn set_rlimit_nofile(limit: Option<u64>) -> Result<(), DaemonError> {
    passthrough::fd_budget::raise_nofile_limit(limit).map_err(|source| DaemonError::Rlimit {
        limit: limit.unwrap_or(0),
        source,
    })
}

fn listener(listen: &Listen) -> Result<Listener, DaemonError> {
    match listen {
        Listen::SocketPath { path, group } => Ok(Listener::from(sandbox::bind_private_unix(
            path,
            group.as_deref(),
        )?)),
        // SAFETY: the caller promised (with --fd) that this fd is a listening
        // unix socket handed to us; we take ownership of it.
        Listen::Fd(fd) => Ok(unsafe { Listener::from_raw_fd(*fd) }),
        Listen::FuseMount { .. } => unreachable!("FUSE mode has no vhost-user listener"),
    }
}

/// Enters the sandbox of `cfg` (forking a supervisor, into a new PID
/// namespace in the default mode), opens the share from inside it, hands it
/// to `then` (which makes whatever must exist before the walls close, such
/// as io_uring rings), and puts up the remaining walls. `after_child` runs
/// in the supervisor when the server has ended.
fn open_share_walled<T>(
    cfg: &DaemonConfig,
    after_child: impl FnOnce(),
    then: impl FnOnce(Arc<PassthroughFs>) -> Result<T, DaemonError>,
) -> Result<T, DaemonError> {
    let mut walls = cfg.sandbox.clone();
    // Handles only where they will work: the walls keep CAP_DAC_READ_SEARCH
    // and open_by_handle_at for a daemon that uses them, and no other.
    let handles = cfg.fs.resolve_file_handles(walls.keeps_read_search())?;
    walls.file_handles = handles != passthrough::InodeFileHandles::Never;
    sandbox::wall_in(&walls, &cfg.fs.root_dir, after_child, |root, proc_fd| {
        let fs = passthrough::Config {
            root_dir: root.to_path_buf(),
            inode_file_handles: handles,
            ..cfg.fs.clone()
        };
        then(Arc::new(match proc_fd {
            Some(fd) => PassthroughFs::with_proc_self_fd(fs, fd)?,
            None => PassthroughFs::new(fs)?,
        }))
    })
}

/// The line logged (at info) when the daemon is ready for its frontend:
/// upstream virtiofsd's words, which management stacks wait for on stderr
/// (Kata's runtime-rs starts the VM only once it has read it).
pub const READY_LINE: &str = "Waiting for vhost-user socket connection...";

/// Serves `cfg` until the frontend disconnects (vhost-user) or the mount goes
/// away (FUSE mode).
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    set_rlimit_nofile(cfg.rlimit_nofile)?;
    // A bad share is refused before any socket, mount or sandbox exists.
    cfg.fs.check_root()?;
    let recorder = recorder(&cfg)?;

    if let Listen::FuseMount { mountpoint, source } = &cfg.listen {
        // Mount in the host's namespace first; the walls go up after, and
        // the supervisor unmounts.
        let mounted = fuse_mount::mount(mountpoint, source, cfg.thread_pool_size, cfg.fs.readonly)?;
        let (target, id) = (mountpoint.clone(), mounted.id());
        let unmount = move || fuse_mount::unmount(&target, id);
        let fs = open_share_walled(&cfg, unmount, Ok)?;
        if let Some(r) = &cfg.ready {
            r.ready();
        }
        return Ok(mounted.serve(fs, false)?);
    }

    // With a socket path, its pid file first: a second daemon on the same
    // path stops here, before it could replace the first one's socket.
    let socket = match &cfg.listen {
        Listen::SocketPath { path, .. } => Some(path.clone()),
        _ => None,
    };
    let pid_file = socket
        .as_deref()
        .map(PidFile::acquire)
        .transpose()?
        .map(Arc::new);
    // Held here too: without a supervisor the closure below is dropped
    // unrun, and the lock must last as long as the daemon.
    let _pid_lock = pid_file.clone();
    let mut listener = listener(&cfg.listen)?;
    // The supervisor removes the socket and the pid file when the daemon is
    // done: the daemon itself no longer reaches them. Without a supervisor
    // (--sandbox none or chroot) the file stays, unlocked, and the next
    // daemon takes it over.
    let backend = open_share_walled(
        &cfg,
        move || {
            if let Some(p) = socket {
                sandbox::socket::remove_socket(&p);
            }
            if let Some(p) = pid_file {
                p.remove();
            }
        },
        |fs| {
            let mut backend = VirtioFsBackend::new(fs, cfg.request_queues, cfg.tag.clone())?
                .with_engine(cfg.io_engine)
                .with_poll(cfg.poll);
            if let Some(r) = recorder {
                backend = backend.with_recorder(r);
            }
            let rings = backend.prepare_rings();
            info!(
                "serving up to {} request queues, I/O engine {} ({rings} rings), polling up to {:?}",
                cfg.request_queues, cfg.io_engine, cfg.poll
            );
            Ok(Arc::new(backend))
        },
    )?;
    let mut daemon = VhostUserDaemon::new(
        "virtiofsd-rs".to_string(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(DaemonError::VhostUser)?;
    info!("{READY_LINE}");
    daemon
        .start(&mut listener)
        .map_err(DaemonError::VhostUser)?;
    info!("frontend connected");
    let result = daemon.wait();
    // Stop the queue workers whatever the outcome.
    let _ = backend.notify_exit();
    info!("{}", backend.queue_report());
    match result {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(VhostUserError::Disconnected))
        | Err(vhost_user_backend::Error::HandleRequest(VhostUserError::PartialMessage)) => Ok(()),
        Err(e) => Err(DaemonError::VhostUser(e)),
    }
    .inspect(|()| info!("frontend disconnected; exiting"))
}
