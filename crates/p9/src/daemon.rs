//! The `p9d` daemon: listeners on TCP, unix sockets and inherited fds, all
//! serving the same core. The binary only parses flags into a [`P9Config`].
//!
//! Hardened by default: unix sockets (`--listen unix:` and the vhost-user
//! socket) are 0600 from the moment they exist (0660 for a chosen group);
//! TCP, where 9P has no authentication, is refused unless
//! [`P9Config::no_auth`] says so; a connection holds at most
//! [`P9Config::max_fids`] fids, and the daemon serves at most
//! [`P9Config::max_connections`] stream connections at once.

use device_queue::QueueDevice;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use log::{info, warn};
use passthrough::PassthroughFs;

use crate::attach_policy::AttachPolicy;
use crate::record::Recorder;
use crate::server::{Server, ServerOptions};
use crate::transport::{serve_connection_with, StreamConfig, StreamMode};

/// Where `p9d` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `tcp:HOST:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `fd:RFD,WFD` (or `fd:FD` for one socket): one inherited connection,
    /// as diod's `-r/-w` and WSL's `trans=fd`.
    Fds(i32, i32),
}

/// Why a listen address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad listen address {0:?}: use tcp:HOST:PORT, unix:PATH or fd:RFD[,WFD]")]
pub struct BadListenAddr(pub String);

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadListenAddr(s.to_string());
        if let Some(a) = s.strip_prefix("tcp:") {
            return a.parse().map(ListenAddr::Tcp).map_err(|_| bad());
        }
        if let Some(p) = s.strip_prefix("unix:") {
            return if p.is_empty() {
                Err(bad())
            } else {
                Ok(ListenAddr::Unix(PathBuf::from(p)))
            };
        }
        if let Some(f) = s.strip_prefix("fd:") {
            let fds: Vec<i32> = f
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            return match fds[..] {
                [fd] if fd >= 0 => Ok(ListenAddr::Fds(fd, fd)),
                [r, w] if r >= 0 && w >= 0 => Ok(ListenAddr::Fds(r, w)),
                _ => Err(bad()),
            };
        }
        Err(bad())
    }
}

/// A vhost-user virtio-9p endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUser {
    /// The socket to listen on for the frontend.
    pub socket: PathBuf,
    /// The mount tag in the config space.
    pub tag: String,
}

/// The most stream connections served at once unless told otherwise
/// (`p9d --max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

pub use crate::fid_table::DEFAULT_MAX_FIDS;

/// Everything `p9d` needs.
#[derive(Debug, Clone)]
pub struct P9Config {
    /// The filesystem core's configuration.
    pub fs: passthrough::Config,
    /// Where to serve byte streams.
    pub listen: Vec<ListenAddr>,
    /// Serve one vhost-user frontend as well; the daemon exits when it
    /// disconnects.
    pub vhost_user: Option<VhostUser>,
    /// How Tread and Twrite reach the host files (default: io_uring where
    /// available).
    pub io_engine: device_queue::IoEngine,
    /// The longest a stream connection's reader polls for the next request
    /// before it sleeps (zero: never).
    pub poll: std::time::Duration,
    /// Give the unix sockets (`unix:` listeners and the vhost-user socket)
    /// to this group (a name or a gid), mode 0660; `None`: 0600, only the
    /// owner (and root) may connect.
    pub socket_group: Option<String>,
    /// Serve `tcp:` listeners although 9P2000.L has no authentication here:
    /// anyone who can reach the port can attach as any uid. Without it a
    /// `tcp:` listener is refused ([`P9Error::NoAuth`]).
    pub no_auth: bool,
    /// Who may attach, and as whom, on every transport.
    pub attach: AttachPolicy,
    /// The most fids one connection may hold ([`DEFAULT_MAX_FIDS`]); a
    /// request that would create another is answered `EMFILE`.
    pub max_fids: usize,
    /// The most stream connections (`tcp:` and `unix:`) served at once
    /// ([`DEFAULT_MAX_CONNECTIONS`]); one more is accepted and closed at
    /// once. Inherited `fd:` connections are not counted.
    pub max_connections: usize,
    /// `RLIMIT_NOFILE` to set (`--rlimit-nofile`, as virtiofsd's): `None`
    /// raises it as far as the host allows, `Some(0)` leaves it alone.
    pub rlimit_nofile: Option<u64>,
    /// The walls to put up before serving (namespace sandbox,
    /// capabilities, Landlock, seccomp), as `virtiofsd-rs`.
    pub sandbox: sandbox::SandboxConfig,
    /// Append every 9P frame received, on every transport, to this file
    /// (`--record-requests`; format in [`crate::record`]). The file is
    /// created, or truncated, mode 0600, before the sandbox goes up. It
    /// holds the clients' file names and data: for test runs only.
    pub record_requests: Option<PathBuf>,
}

impl P9Config {
    /// A configuration serving `fs` on nothing yet, with the defaults: the
    /// io_uring engine, [`crate::transport::DEFAULT_POLL`], private sockets,
    /// no TCP, any uid, [`DEFAULT_MAX_FIDS`] and
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub fn new(fs: passthrough::Config) -> Self {
        P9Config {
            fs,
            listen: Vec::new(),
            vhost_user: None,
            io_engine: device_queue::IoEngine::IoUring,
            poll: crate::transport::DEFAULT_POLL,
            socket_group: None,
            no_auth: false,
            attach: AttachPolicy::default(),
            max_fids: DEFAULT_MAX_FIDS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            rlimit_nofile: None,
            sandbox: sandbox::SandboxConfig::new(sandbox::Profile::P9),
            record_requests: None,
        }
    }
}

/// Why `p9d` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum P9Error {
    /// The shared directory is unusable.
    #[error(transparent)]
    Fs(#[from] passthrough::Error),
    /// An address could not be bound.
    #[error("cannot listen on {addr:?}: {source}")]
    Listen {
        /// The address.
        addr: ListenAddr,
        /// What the host said.
        source: io::Error,
    },
    /// Nothing to serve on.
    #[error("nothing to serve on: give --listen or --socket-path")]
    NoListener,
    /// A `tcp:` listener without [`P9Config::no_auth`].
    #[error(
        "--listen tcp:{0} has no authentication (anyone who can reach the port \
         can act as any uid): give --no-auth to serve it anyway"
    )]
    NoAuth(SocketAddr),
    /// A unix socket could not be created (or given to its group).
    #[error(transparent)]
    Socket(#[from] sandbox::SocketError),
    /// A wall could not be put up.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    /// `--rlimit-nofile` could not be applied.
    #[error("cannot set RLIMIT_NOFILE to {limit}: {source}")]
    Rlimit {
        /// The requested limit.
        limit: u64,
        /// What the host said.
        source: io::Error,
    },
    /// The vhost-user device could not be created.
    #[error(transparent)]
    Backend(#[from] crate::virtio::BackendError),
    /// The vhost-user daemon failed.
    #[error("vhost-user: {0}")]
    VhostUser(vhost_user_backend::Error),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
    /// The `--record-requests` file could not be created.
    #[error("cannot create the request recording {path:?}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
}

/// The stream connections being served, against a limit.
#[derive(Debug)]
struct ConnCount {
    live: AtomicUsize,
    max: usize,
}

/// One connection's place in a [`ConnCount`], given back when dropped.
#[derive(Debug)]
struct ConnSlot(Arc<ConnCount>);

impl ConnCount {
    fn new(max: usize) -> Arc<ConnCount> {
        Arc::new(ConnCount {
            live: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for one more connection, if there is room.
    fn take(self: &Arc<Self>) -> Option<ConnSlot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(self.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a connection beyond the limit: closes it (by dropping it) with
/// one warning.
fn refuse<S>(s: S, peer: &str, count: &ConnCount) {
    warn!(
        "client {peer} refused: {} connections already served (--max-connections)",
        count.max
    );
    drop(s);
}

/// Creates the request recording `cfg` asks for, if any: before the
/// sandbox, which would forbid creating it.
fn recorder(cfg: &P9Config) -> Result<Option<Arc<Recorder>>, P9Error> {
    let Some(path) = &cfg.record_requests else {
        return Ok(None);
    };
    let recorder = Recorder::create(path).map_err(|source| P9Error::Record {
        path: path.clone(),
        source,
    })?;
    warn!(
        "recording every 9P request to {}: the file holds the clients' file names and data",
        path.display()
    );
    Ok(Some(Arc::new(recorder)))
}

/// Serves one connection on its own thread, holding `slot` until it ends.
fn spawn_conn<R, W>(
    server: Arc<Server>,
    r: R,
    w: W,
    peer: String,
    mode: StreamConfig,
    slot: ConnSlot,
) -> io::Result<()>
where
    R: io::Read + std::os::fd::AsRawFd + Send + 'static,
    W: io::Write + Send + 'static,
{
    thread::Builder::new()
        .name("9p-conn".into())
        .spawn(move || {
            info!("client {peer} connected");
            match serve_connection_with(server, r, w, mode) {
                Ok(()) => info!("client {peer} disconnected"),
                Err(e) => warn!("client {peer}: {e}"),
            }
            drop(slot);
        })?;
    Ok(())
}

/// After a failed accept (e.g. out of fds), before the next: no busy loop.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

/// Starts a thread named `name` that takes connections from `accept` (the
/// reading and the writing side, and the peer's name) and serves each on
/// its own thread while `count` has room; a connection beyond it is closed
/// at once.
fn spawn_acceptor<S>(
    name: &str,
    server: Arc<Server>,
    count: Arc<ConnCount>,
    mode: StreamConfig,
    mut accept: impl FnMut() -> io::Result<(S, S, String)> + Send + 'static,
) -> Result<(), P9Error>
where
    S: io::Read + io::Write + std::os::fd::AsRawFd + Send + 'static,
{
    thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let (r, w, peer) = match accept() {
                Ok(c) => c,
                Err(e) => {
                    warn!("accept: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            let Some(slot) = count.take() else {
                refuse(w, &peer, &count);
                continue;
            };
            if let Err(e) = spawn_conn(server.clone(), r, w, peer, mode.clone(), slot) {
                warn!("accept: {e}");
            }
        })
        .map_err(P9Error::Thread)?;
    Ok(())
}

/// Serves `cfg` until SIGINT or SIGTERM (or, with only `fd:` transports,
/// until those connections close).
pub fn run(cfg: P9Config) -> Result<(), P9Error> {
    if cfg.listen.is_empty() && cfg.vhost_user.is_none() {
        return Err(P9Error::NoListener);
    }
    if !cfg.no_auth {
        if let Some(a) = cfg.listen.iter().find_map(|l| match l {
            ListenAddr::Tcp(a) => Some(*a),
            _ => None,
        }) {
            return Err(P9Error::NoAuth(a));
        }
    }
    // A bad share is refused before any socket or sandbox exists.
    cfg.fs.check_root()?;
    let record = recorder(&cfg)?;
    // As many fds as the host allows (virtiofsd's default), and a reserve
    // the guests cannot take that covers every connection p9d may accept
    // (two fds each) besides the daemon's own.
    passthrough::fd_budget::raise_nofile_limit(cfg.rlimit_nofile).map_err(|source| {
        P9Error::Rlimit {
            limit: cfg.rlimit_nofile.unwrap_or(0),
            source,
        }
    })?;
    let mut cfg = cfg;
    let conn_fds = u32::try_from(cfg.max_connections.saturating_mul(2)).unwrap_or(u32::MAX);
    cfg.fs.fd_reserve = cfg.fs.fd_reserve.saturating_add(conn_fds);
    let group = cfg.socket_group.as_deref();
    // Bind everything first so a bad address fails before serving starts.
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    let mut fd_conns = Vec::new();
    for addr in &cfg.listen {
        let err = |source| P9Error::Listen {
            addr: addr.clone(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => tcp.push(TcpListener::bind(a).map_err(err)?),
            ListenAddr::Unix(p) => unix.push(sandbox::bind_private_unix(p, group)?),
            ListenAddr::Fds(r, w) => {
                // SAFETY: the user handed us these fds (--listen fd:R,W); we
                // take ownership. For one socket, the write side is a dup.
                let rf = unsafe { File::from_raw_fd(*r) };
                let wf = if r == w {
                    rf.try_clone().map_err(err)?
                } else {
                    // SAFETY: as for `r`: an fd handed to us, owned from here.
                    unsafe { File::from_raw_fd(*w) }
                };
                fd_conns.push((rf, wf));
            }
        }
    }
    let vhost_listener = match &cfg.vhost_user {
        Some(v) => Some(vhost::vhost_user::Listener::from(
            sandbox::bind_private_unix(&v.socket, group)?,
        )),
        None => None,
    };
    // The host's users, while they can still be read.
    let users = Arc::new(crate::user_db::UserDb::snapshot());
    // Every socket exists: now the walls, and the share opened inside them.
    let mut walls = cfg.sandbox.clone();
    // Handles only where they will work: the walls keep CAP_DAC_READ_SEARCH
    // and open_by_handle_at for a daemon that uses them, and no other.
    let handles = cfg.fs.resolve_file_handles(walls.keeps_read_search())?;
    walls.file_handles = handles != passthrough::InodeFileHandles::Never;
    // The supervisor removes the vhost-user socket, which the walled-in
    // daemon can no longer reach (or would reach inside the share).
    let vhost_socket = cfg.vhost_user.as_ref().map(|v| v.socket.clone());
    let (server, vhost_backend) = sandbox::wall_in(
        &walls,
        &cfg.fs.root_dir,
        move || {
            if let Some(p) = vhost_socket {
                sandbox::socket::remove_socket(&p);
            }
        },
        |root, proc_fd| {
            let fs = passthrough::Config {
                root_dir: root.to_path_buf(),
                inode_file_handles: handles,
                ..cfg.fs.clone()
            };
            let fs = Arc::new(match proc_fd {
                Some(fd) => PassthroughFs::with_proc_self_fd(fs, fd)?,
                None => PassthroughFs::new(fs)?,
            });
            let server = Server::with_options(
                fs,
                ServerOptions {
                    attach: cfg.attach.clone(),
                    max_fids: cfg.max_fids,
                    users: Some(users),
                    export: Some(cfg.fs.root_dir.clone()),
                },
            );
            // The vhost-user queue's ring is made now, before the seccomp
            // filter forbids making rings.
            let backend = match &cfg.vhost_user {
                Some(v) => {
                    let mut b = crate::virtio::P9VhostBackend::new(server.clone(), &v.tag)?
                        .with_engine(cfg.io_engine)
                        .with_poll(cfg.poll);
                    if let Some(r) = &record {
                        b = b.with_recorder(r.clone());
                    }
                    b.prepare_rings();
                    Some(Arc::new(b))
                }
                None => None,
            };
            Ok::<_, P9Error>((server, backend))
        },
    )?;
    let vhost = vhost_listener.zip(vhost_backend);
    let only_fds = tcp.is_empty() && unix.is_empty();
    let count = ConnCount::new(cfg.max_connections);
    let mode = StreamConfig {
        mode: StreamMode::from(cfg.io_engine),
        poll: cfg.poll,
        record,
    };
    // Blocked before any thread exists, so every thread inherits the mask
    // and one thread can wait for them.
    let signals = sandbox::signals::Termination::block();
    let mut fd_threads = Vec::new();
    for (rf, wf) in fd_conns {
        let server = server.clone();
        let mode = mode.clone();
        fd_threads.push(
            thread::Builder::new()
                .name("9p-fd".into())
                .spawn(move || {
                    if let Err(e) = serve_connection_with(server, rf, wf, mode) {
                        warn!("fd transport: {e}");
                    }
                })
                .map_err(P9Error::Thread)?,
        );
    }
    for l in tcp {
        info!(
            "listening on tcp:{}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let mode = mode.clone();
        spawn_acceptor("9p-tcp", server.clone(), count.clone(), mode, move || {
            let (s, peer) = l.accept()?;
            s.set_nodelay(true)?;
            Ok((s.try_clone()?, s, peer.to_string()))
        })?;
    }
    for l in unix {
        let mode = mode.clone();
        spawn_acceptor("9p-unix", server.clone(), count.clone(), mode, move || {
            let (s, _) = l.accept()?;
            Ok((s.try_clone()?, s, "unix".to_string()))
        })?;
    }
    if let Some((mut listener, backend)) = vhost {
        // SIGTERM and SIGINT end a vhost-user p9d too, not only the
        // frontend's disconnect.
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = signals.wait();
                info!("signal {sig}: exiting");
                std::process::exit(0);
            })
            .map_err(P9Error::Thread)?;
        let mut daemon = vhost_user_backend::VhostUserDaemon::new(
            "p9d".to_string(),
            backend.clone(),
            vm_memory::GuestMemoryAtomic::new(vm_memory::GuestMemoryMmap::new()),
        )
        .map_err(P9Error::VhostUser)?;
        daemon.start(&mut listener).map_err(P9Error::VhostUser)?;
        info!("vhost-user frontend connected");
        let result = daemon.wait();
        let _ = backend.notify_exit();
        return match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected,
            ))
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::PartialMessage,
            )) => {
                info!("vhost-user frontend disconnected; exiting");
                Ok(())
            }
            Err(e) => Err(P9Error::VhostUser(e)),
        };
    }
    if only_fds {
        for t in fd_threads {
            let _ = t.join();
        }
        return Ok(());
    }
    let sig = signals.wait();
    info!("signal {sig}: exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "tcp:127.0.0.1:5640".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:5640".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/p9.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/p9.sock".into())
        );
        assert_eq!(
            "fd:3,4".parse::<ListenAddr>().unwrap(),
            ListenAddr::Fds(3, 4)
        );
        assert_eq!("fd:5".parse::<ListenAddr>().unwrap(), ListenAddr::Fds(5, 5));
        for bad in [
            "tcp:nohost",
            "unix:",
            "fd:a",
            "fd:1,2,3",
            "udp:1.2.3.4:5",
            "",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
