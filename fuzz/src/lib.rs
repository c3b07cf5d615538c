//! What the fuzz targets share: a scratch share with a watched outside, the
//! fd-count oracle, and a reader that turns fuzz input into values.
//!
//! The scratch directory holds the share and, beside it, things a guest
//! must never reach: a file, a directory with a file in it, and (inside
//! the share) a symlink pointing out of it. After every input a target
//! calls [`Scratch::check_outside`], which fails if anything outside the
//! share was created, removed or changed (contents, mode, owner, size,
//! modification time).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The most fds a target may hold between inputs: far above what one
/// input's set-up needs, far below the process limit, so a leak of one fd
/// per request trips it within a few hundred inputs.
pub const MAX_FDS: usize = 256;

/// A scratch share and the watched things beside it.
pub struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    share: PathBuf,
    before: BTreeMap<PathBuf, Entry>,
}

/// What is recorded of one path outside the share.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    contents: Option<Vec<u8>>,
}

impl Scratch {
    /// The process's scratch share (made once): `share/` holds a file
    /// `f`, a directory `d` with a file in it, and a symlink `out` to the
    /// outside file; beside the share are `outside` (a file) and
    /// `outside.d/inner`.
    pub fn get() -> &'static Scratch {
        static S: OnceLock<Scratch> = OnceLock::new();
        S.get_or_init(|| {
            let dir = tempfile::tempdir().expect("scratch directory");
            let root = dir.path().to_path_buf();
            let share = root.join("share");
            std::fs::create_dir(&share).expect("share");
            std::fs::write(share.join("f"), b"data").expect("file");
            std::fs::create_dir(share.join("d")).expect("dir");
            std::fs::write(share.join("d/g"), b"more").expect("file");
            std::os::unix::fs::symlink("../outside", share.join("out")).expect("symlink");
            std::fs::write(root.join("outside"), b"keep").expect("sentinel");
            std::fs::create_dir(root.join("outside.d")).expect("sentinel dir");
            std::fs::write(root.join("outside.d/inner"), b"keep too").expect("sentinel");
            let before = snapshot(&root, &share);
            Scratch {
                _dir: dir,
                root,
                share,
                before,
            }
        })
    }

    /// The shared directory.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// Panics if anything outside the share differs from when it was made.
    pub fn check_outside(&self) {
        let now = snapshot(&self.root, &self.share);
        if now != self.before {
            for (p, e) in &now {
                if self.before.get(p) != Some(e) {
                    eprintln!("outside the share, changed or new: {} {e:?}", p.display());
                }
            }
            for p in self.before.keys().filter(|p| !now.contains_key(*p)) {
                eprintln!("outside the share, removed: {}", p.display());
            }
            panic!("something outside the share changed");
        }
    }
}

/// Every path under `root` except those under `share` (the share
/// directory's own entry is kept: its parent link is outside).
fn snapshot(root: &Path, share: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p == share {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let contents = if m.is_file() {
                std::fs::read(&p).ok()
            } else {
                None
            };
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.insert(
                p,
                Entry {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: m.size(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    contents,
                },
            );
        }
    }
    out
}

/// How many fds the process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Panics if the process holds more than [`MAX_FDS`] fds.
pub fn check_fds() {
    let n = open_fds();
    assert!(n <= MAX_FDS, "fds leak: {n} open");
}

/// Fuzz input read front to back; every read past the end yields zeros,
/// so a target never has to check lengths.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (zero at the end).
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.bytes(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let got = self.bytes(4);
        b[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(b)
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.bytes(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// Ignores SIGPIPE, as the daemons do: libFuzzer's `main` does not run
/// Rust's start-up, which would, so a write to a socket the server closed
/// would kill the fuzzer instead of failing with EPIPE.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory
    // of this process; the previous handler is not needed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The process's open fd numbers.
pub fn fd_numbers() -> std::collections::BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Closes the exit-event fds vhost-user-backend 0.22 leaks: each
/// `VhostUserDaemon` registers every worker's exit-event consumer in the
/// worker's epoll by raw fd (`VringEpollHandler::new`, `into_raw_fd`) and
/// never closes it, so one eventfd per worker thread outlives the daemon.
/// Closes at most `workers` eventfds opened since `before`; any other new
/// fd (or a surplus eventfd) stays, for [`check_fds`] to catch.
pub fn close_upstream_exit_leaks(before: &std::collections::BTreeSet<i32>, workers: usize) {
    let leaked: Vec<i32> = fd_numbers()
        .difference(before)
        .copied()
        .filter(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]")
        })
        .take(workers)
        .collect();
    for fd in leaked {
        // SAFETY: `fd` was opened after `before` was taken and, the daemon
        // being gone (its worker threads joined), nothing refers to it: it
        // is the exit-event consumer the dropped daemon leaked.
        unsafe {
            libc::close(fd);
        }
    }
}

/// The device a selector byte picks, for targets that drive either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// virtio-fs, with this engine.
    Fs(device_queue::IoEngine),
    /// virtio-9p.
    P9,
}

impl Device {
    /// virtio-fs on io_uring, virtio-fs on the sync engine, or virtio-9p,
    /// by `sel` modulo 3.
    pub fn pick(sel: u8) -> Device {
        match sel % 3 {
            0 => Device::Fs(device_queue::IoEngine::IoUring),
            1 => Device::Fs(device_queue::IoEngine::Sync),
            _ => Device::P9,
        }
    }
}
