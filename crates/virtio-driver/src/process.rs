//! Backend processes for tests: a vhost-user daemon started on a share and
//! a socket, and where to find the upstream daemon to compare with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A daemon process with its socket; killed if still running when dropped.
pub struct Backend {
    /// The process.
    pub child: Child,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

impl Backend {
    /// Starts `cmd --shared-dir SHARE --socket-path SOCKET EXTRA...` (output
    /// discarded) and waits up to 20 s for the socket to appear.
    ///
    /// # Panics
    /// When the daemon cannot be started or never creates its socket: the
    /// test cannot go on.
    pub fn start(cmd: &[String], share: &Path, socket: &Path, extra: &[&str]) -> Backend {
        Self::spawn(cmd, share, socket, extra, Stdio::null())
    }

    /// [`Backend::start`], with the daemon's standard error (its log, and
    /// any panic message) written to the file `log` instead of discarded.
    ///
    /// # Panics
    /// As [`Backend::start`], and when `log` cannot be created.
    pub fn start_logged(
        cmd: &[String],
        share: &Path,
        socket: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Backend {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        Self::spawn(cmd, share, socket, extra, Stdio::from(file))
    }

    fn spawn(
        cmd: &[String],
        share: &Path,
        socket: &Path,
        extra: &[&str],
        stderr: Stdio,
    ) -> Backend {
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("--shared-dir")
            .arg(share)
            .arg("--socket-path")
            .arg(socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut backend = Backend {
            child,
            socket: socket.to_path_buf(),
        };
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(st)) = backend.child.try_wait() {
                panic!("{cmd:?} exited ({st}) before creating its socket");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{cmd:?} never created its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    /// Waits up to 10 s for the daemon to exit by itself; its status, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream virtio-fs daemon to compare with: `VIRTIOFSD_UPSTREAM` (a
/// command taking `--shared-dir`/`--socket-path`), else upstream's Rust
/// virtiofsd from `cargo install virtiofsd` (with `--sandbox none`), else
/// QEMU's C virtiofsd behind `tests/e2e/reference-virtiofsd.sh`.
pub fn upstream_virtiofsd() -> Option<Vec<String>> {
    if let Ok(cmd) = std::env::var("VIRTIOFSD_UPSTREAM") {
        return Some(cmd.split_whitespace().map(str::to_owned).collect());
    }
    let cargo_bin =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/virtiofsd");
    if cargo_bin.exists() {
        return Some(vec![
            cargo_bin.display().to_string(),
            "--sandbox".into(),
            "none".into(),
        ]);
    }
    if Path::new("/usr/lib/qemu/virtiofsd").exists() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/reference-virtiofsd.sh");
        return Some(vec![script.display().to_string()]);
    }
    None
}

/// [`upstream_virtiofsd`], or a printed skip where there is none.
///
/// # Panics
/// Where there is none and `VIRTIOFSD_RS_REQUIRE_E2E` is set (CI): a
/// missing prerequisite is a failure there.
pub fn upstream_virtiofsd_or_skip() -> Option<Vec<String>> {
    let found = upstream_virtiofsd();
    if found.is_none() {
        let msg =
            "no upstream virtiofsd (cargo install virtiofsd, or QEMU's /usr/lib/qemu/virtiofsd)";
        assert!(
            std::env::var_os("VIRTIOFSD_RS_REQUIRE_E2E").is_none(),
            "required here: {msg}"
        );
        eprintln!("SKIP: {msg}");
    }
    found
}
