//! Serving the core over the host's `/dev/fuse`, for native-speed testing
//! (pjdfstest, fio) without a guest.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;
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

/// Mounts `fs` at `mountpoint` and serves it with `threads` workers until the
/// mount goes away or the process gets SIGINT/SIGTERM; then unmounts.
pub fn serve(
    fs: Arc<PassthroughFs>,
    mountpoint: &Path,
    threads: usize,
    readonly: bool,
) -> Result<(), FuseMountError> {
    let mount_err = |source| FuseMountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    // Block the termination signals in every thread; one thread waits for them.
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }

    let mut session =
        FuseSession::new(mountpoint, "virtiofsd-rs", "", readonly).map_err(mount_err)?;
    session.mount().map_err(mount_err)?;
    info!(
        "serving {} at {}",
        fs.config().root_dir.display(),
        mountpoint.display()
    );
    let server = Arc::new(Server::new(fs));
    let mut workers = Vec::new();
    for i in 0..threads.max(1) {
        let mut channel = session.new_channel().map_err(mount_err)?;
        let server = server.clone();
        let worker = thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || loop {
                match channel.get_request() {
                    Ok(Some((reader, writer))) => {
                        if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
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
    let session = Arc::new(Mutex::new(session));
    let waker = session.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` holds the blocked signals; `sig` is a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                info!("signal {sig}: unmounting");
                let s = waker.lock().unwrap_or_else(|e| e.into_inner());
                let _ = s.wake();
            }
        })
        .map_err(FuseMountError::Thread)?;
    for w in workers {
        let _ = w.join();
    }
    let mut s = session.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = s.umount() {
        warn!("unmount: {e}");
    }
    Ok(())
}
