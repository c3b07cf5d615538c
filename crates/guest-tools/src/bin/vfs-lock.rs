//! `vfs-lock`: take a POSIX record lock (`fcntl`) or a `flock(2)` lock on
//! a file, for the e2e tests of locks shared between a guest and the host
//! (busybox has no `flock` applet, and nothing takes `fcntl` locks from a
//! shell). The same binary runs on both sides.
//!
//! ```text
//! vfs-lock try  posix|flock FILE         exit 0: the lock was free (taken and released);
//!                                        exit 1: someone else holds it (EAGAIN)
//! vfs-lock wait posix|flock FILE         waits for the lock (at most 120 s), exit 0
//! vfs-lock hold posix|flock FILE UNTIL [SECONDS]
//!                                        takes the lock (waiting, at most 120 s),
//!                                        creates FILE.held, keeps the lock until
//!                                        the file UNTIL exists, exit 0; exit 4 if
//!                                        it did not within SECONDS (default 300)
//! ```
//!
//! A write lock on the whole file either way. Any other failure is one line
//! on stderr and exit status 2; a wait that times out, 3.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `wait` and `hold` wait for the lock.
const WAIT_LIMIT: u32 = 120;
/// How long `hold` keeps it at most, by default.
const HOLD_LIMIT: u64 = 300;

/// Which kind of lock.
#[derive(Clone, Copy)]
enum Kind {
    /// `fcntl(F_SETLK/F_SETLKW)`, a write lock on the whole file.
    Posix,
    /// `flock(LOCK_EX)`.
    Flock,
}

/// Why the tool failed.
#[derive(Debug)]
enum Error {
    /// The arguments do not parse.
    Usage,
    /// Someone else holds the lock (`try`).
    Held,
    /// The lock was not granted in time (`wait`, `hold`).
    TimedOut,
    /// `hold`: the file that ends it did not appear in time.
    NotReleased,
    /// A call failed.
    Sys(&'static str, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage => write!(
                f,
                "usage: vfs-lock try|wait posix|flock FILE | vfs-lock hold posix|flock FILE UNTIL"
            ),
            Error::Held => write!(f, "the lock is held by someone else"),
            Error::TimedOut => write!(f, "the lock was not granted within {WAIT_LIMIT} s"),
            Error::NotReleased => write!(f, "held the lock, but nobody asked for it back in time"),
            Error::Sys(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// Takes the lock on `file`, waiting (at most [`WAIT_LIMIT`]) or not.
fn lock(file: &File, kind: Kind, wait: bool) -> Result<(), Error> {
    if wait {
        // SIGALRM's default action would kill the process: an empty
        // handler makes the blocked call fail with EINTR instead.
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a valid handler for SIGALRM, without SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as *const () as usize;
            libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
            libc::alarm(WAIT_LIMIT);
        }
    }
    let ret = match kind {
        Kind::Posix => {
            // SAFETY: flock is plain data; all-zero is valid.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
            // SAFETY: a valid flock for an fd this process holds.
            unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) }
        }
        Kind::Flock => {
            let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
            // SAFETY: plain syscall on an fd this process holds.
            unsafe { libc::flock(file.as_raw_fd(), op) }
        }
    };
    if wait {
        // SAFETY: cancels the alarm.
        unsafe { libc::alarm(0) };
    }
    if ret == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => Err(Error::Held),
        Some(libc::EINTR) if wait => Err(Error::TimedOut),
        _ => Err(Error::Sys("taking the lock", e)),
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let (verb, kind, path, until, limit) = match args {
        [v, k, p] => (v.as_str(), k.as_str(), p, None, HOLD_LIMIT),
        [v, k, p, u] if v == "hold" => (v.as_str(), k.as_str(), p, Some(Path::new(u)), HOLD_LIMIT),
        [v, k, p, u, s] if v == "hold" => {
            let limit = s.parse().map_err(|_| Error::Usage)?;
            (v.as_str(), k.as_str(), p, Some(Path::new(u)), limit)
        }
        _ => return Err(Error::Usage),
    };
    let kind = match kind {
        "posix" => Kind::Posix,
        "flock" => Kind::Flock,
        _ => return Err(Error::Usage),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::Sys("opening the file", e))?;
    match (verb, until) {
        ("try", None) => lock(&file, kind, false),
        ("wait", None) => lock(&file, kind, true),
        ("hold", Some(until)) => {
            lock(&file, kind, true)?;
            std::fs::write(format!("{path}.held"), b"")
                .map_err(|e| Error::Sys("creating FILE.held", e))?;
            let start = Instant::now();
            while !until.exists() {
                if start.elapsed() >= Duration::from_secs(limit) {
                    return Err(Error::NotReleased);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Closing the file releases the lock.
            Ok(())
        }
        _ => Err(Error::Usage),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Held) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vfs-lock: {e}");
            ExitCode::from(match e {
                Error::TimedOut => 3,
                Error::NotReleased => 4,
                _ => 2,
            })
        }
    }
}
