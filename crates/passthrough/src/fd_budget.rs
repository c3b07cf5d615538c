//! A reserve of file descriptors the guest cannot exhaust.
//!
//! Every fd the core opens on a guest's behalf (an inode's `O_PATH` fd, an
//! open handle, a file reopened for an xattr call or a truncate) goes through
//! [`FdBudget::admit`] right after it is opened. Linux hands out the lowest
//! free fd number, so an fd numbered at or above
//! `RLIMIT_NOFILE (soft) - reserve` means every number below that line is in
//! use: the new fd is closed again and the request answers `EMFILE`. The
//! `reserve` fds above the line stay free for the daemon's own needs
//! (eventfds, io_uring rings, sockets, accepting a new connection), however
//! many files the guest keeps open or looked up.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::errno;

/// The soft `RLIMIT_NOFILE` of the process (`u64::MAX` if unlimited or unknown).
pub fn soft_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0
        || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    rl.rlim_cur
}

/// The line below which guest-held fds must stay.
#[derive(Debug)]
pub struct FdBudget {
    reserve: u64,
    /// The soft `RLIMIT_NOFILE` as last read.
    limit: AtomicU64,
    /// Fds refused so far (the first refusal is logged).
    refused: AtomicU64,
}

impl FdBudget {
    /// A budget keeping `reserve` fds free, under the current soft limit.
    pub fn new(reserve: u32) -> FdBudget {
        FdBudget {
            reserve: reserve.into(),
            limit: AtomicU64::new(soft_nofile_limit()),
            refused: AtomicU64::new(0),
        }
    }

    /// Re-reads the soft `RLIMIT_NOFILE` (after the daemon changed it).
    pub fn refresh(&self) {
        self.limit.store(soft_nofile_limit(), Ordering::Relaxed);
    }

    /// The lowest fd number a guest-held fd may not have.
    pub fn ceiling(&self) -> u64 {
        self.limit
            .load(Ordering::Relaxed)
            .saturating_sub(self.reserve)
    }

    /// Passes `fd`, just opened for the guest, if its number lies below the
    /// ceiling; otherwise closes it and answers `EMFILE`.
    ///
    /// Before refusing, the soft limit is read again, so a limit raised
    /// since the last read is honoured without an explicit [`refresh`].
    ///
    /// [`refresh`]: FdBudget::refresh
    pub fn admit<T: AsRawFd>(&self, fd: T) -> io::Result<T> {
        if self.fits(fd.as_raw_fd()) {
            return Ok(fd);
        }
        drop(fd);
        Err(errno(libc::EMFILE))
    }

    /// Whether the fd numbered `fd` lies below the ceiling (the soft limit
    /// read again before saying no).
    pub fn fits(&self, fd: RawFd) -> bool {
        let n = fd as u64;
        if n < self.ceiling() {
            return true;
        }
        self.refresh();
        n < self.ceiling()
    }

    /// Counts a guest request refused for want of fds (after the fd cache
    /// gave what it could), logging the first with what lifts the bound.
    pub fn note_refusal(&self) {
        if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "the guest's open files and inodes use all {} fds it may (RLIMIT_NOFILE {} \
                 less a reserve of {}): its lookups and opens get EMFILE until it closes \
                 files or forgets inodes. Inodes held by file handles \
                 (--inode-file-handles=prefer, where the file system supports them) or a \
                 higher --rlimit-nofile lift this",
                self.ceiling(),
                self.limit.load(Ordering::Relaxed),
                self.reserve
            );
        }
    }

    /// How many guest requests were refused for want of fds (for
    /// diagnostics).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Sets `RLIMIT_NOFILE` for a daemon, as virtiofsd's `--rlimit-nofile`:
/// `None` raises the soft limit as far as `min(1000000, fs.nr_open)` and
/// the hard limit allow, quietly keeping what it has where it may not
/// (no `CAP_SYS_RESOURCE`); `Some(0)` leaves it alone; `Some(n)` sets `n`
/// and fails if it cannot.
pub fn raise_nofile_limit(limit: Option<u64>) -> io::Result<()> {
    if limit == Some(0) {
        return Ok(());
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } < 0 {
        return Err(io::Error::last_os_error());
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
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if limit.is_some() {
        return Err(err);
    }
    // Not allowed to raise the hard limit: the soft one up to it.
    if cur.rlim_cur < cur.rlim_max {
        let up = libc::rlimit {
            rlim_cur: want.min(cur.rlim_max),
            rlim_max: cur.rlim_max,
        };
        // SAFETY: valid in-pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) };
    }
    Ok(())
}
