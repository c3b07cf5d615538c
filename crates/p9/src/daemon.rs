//! The `p9d` daemon: listeners on TCP, unix sockets and inherited fds, all
//! serving the same core. The binary only parses flags into a [`P9Config`].

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::thread;

use log::{info, warn};
use passthrough::PassthroughFs;

use crate::server::Server;
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
    pub io_engine: device_queue::uring::IoEngine,
    /// The longest a stream connection's reader polls for the next request
    /// before it sleeps (zero: never).
    pub poll: std::time::Duration,
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
    /// The vhost-user device could not be created.
    #[error(transparent)]
    Backend(#[from] crate::virtio::BackendError),
    /// The vhost-user socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    VhostListen {
        /// The socket path.
        path: PathBuf,
        /// What vhost said.
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon failed.
    #[error("vhost-user: {0}")]
    VhostUser(vhost_user_backend::Error),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
}

fn spawn_conn<R, W>(
    server: Arc<Server>,
    r: R,
    w: W,
    peer: String,
    mode: StreamConfig,
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
        })?;
    Ok(())
}

/// Serves `cfg` until SIGINT or SIGTERM (or, with only `fd:` transports,
/// until those connections close).
pub fn run(cfg: P9Config) -> Result<(), P9Error> {
    if cfg.listen.is_empty() && cfg.vhost_user.is_none() {
        return Err(P9Error::NoListener);
    }
    let fs = Arc::new(PassthroughFs::new(cfg.fs.clone())?);
    let server = Server::new(fs);
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
            ListenAddr::Unix(p) => {
                if p.exists() {
                    let _ = std::fs::remove_file(p);
                }
                unix.push(UnixListener::bind(p).map_err(err)?)
            }
            ListenAddr::Fds(r, w) => {
                // SAFETY: the user handed us these fds (--listen fd:R,W); we
                // take ownership. For one socket, the write side is a dup.
                let rf = unsafe { File::from_raw_fd(*r) };
                let wf = if r == w {
                    rf.try_clone().map_err(err)?
                } else {
                    unsafe { File::from_raw_fd(*w) }
                };
                fd_conns.push((rf, wf));
            }
        }
    }
    let vhost = match &cfg.vhost_user {
        Some(v) => Some((
            vhost::vhost_user::Listener::new(&v.socket, true).map_err(|source| {
                P9Error::VhostListen {
                    path: v.socket.clone(),
                    source,
                }
            })?,
            Arc::new(
                crate::virtio::P9VhostBackend::new(server.clone(), &v.tag)?
                    .with_engine(cfg.io_engine)
                    .with_poll(cfg.poll),
            ),
        )),
        None => None,
    };
    let only_fds = tcp.is_empty() && unix.is_empty();
    let mode = StreamConfig {
        mode: StreamMode::from(cfg.io_engine),
        poll: cfg.poll,
    };
    // Block the termination signals before any thread exists, so every
    // thread inherits the mask and the main thread can wait for them.
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut fd_threads = Vec::new();
    for (rf, wf) in fd_conns {
        let server = server.clone();
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
        let server = server.clone();
        thread::Builder::new()
            .name("9p-tcp".into())
            .spawn(move || {
                for conn in l.incoming() {
                    match conn.and_then(|s| {
                        s.set_nodelay(true)?;
                        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                        let r = s.try_clone()?;
                        spawn_conn(server.clone(), r, s, peer, mode)
                    }) {
                        Ok(()) => {}
                        Err(e) => warn!("accept: {e}"),
                    }
                }
            })
            .map_err(P9Error::Thread)?;
    }
    for l in unix {
        let server = server.clone();
        thread::Builder::new()
            .name("9p-unix".into())
            .spawn(move || {
                for conn in l.incoming() {
                    match conn.and_then(|s| {
                        let r = s.try_clone()?;
                        spawn_conn(server.clone(), r, s, "unix".into(), mode)
                    }) {
                        Ok(()) => {}
                        Err(e) => warn!("accept: {e}"),
                    }
                }
            })
            .map_err(P9Error::Thread)?;
    }
    if let Some((mut listener, backend)) = vhost {
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
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` holds the blocked signals; `sig` is a valid out-pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
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
