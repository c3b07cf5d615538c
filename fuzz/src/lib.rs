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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    /// `outside.d/inner`. Every call gives the share's root its mode back
    /// (0755): a guest may chmod the root (SETATTR of node 1), and with
    /// mode 0 a fuzzer running unprivileged could open nothing after that.
    pub fn get() -> &'static Scratch {
        static S: OnceLock<Scratch> = OnceLock::new();
        let s = Self::make(&S);
        let _ = std::fs::set_permissions(&s.share, std::fs::Permissions::from_mode(0o755));
        s
    }

    fn make(cell: &'static OnceLock<Scratch>) -> &'static Scratch {
        cell.get_or_init(|| {
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

/// A driver's two split queues in guest memory, eight two-descriptor
/// request slots each, and what the "at most once" oracle needs: how often
/// each head was published, and whether the input kept the driver's rules
/// (a target clears [`Guest::lawful`] when it breaks them; a slot reused
/// while it may be in flight breaks them too).
pub struct Guest {
    /// Guest memory (memfd-backed).
    pub ram: virtio_driver::GuestRam,
    /// The queues (virtio-fs: hiprio and a request queue; virtio-9p uses
    /// the first).
    pub queues: [virtio_driver::SplitQueue; 2],
    req: vm_memory::GuestAddress,
    reply: vm_memory::GuestAddress,
    published: [[u32; Guest::QSIZE as usize]; 2],
    next: [u16; 2],
    /// Whether the input kept to the driver's rules so far.
    pub lawful: bool,
}

impl Guest {
    /// Entries per queue.
    pub const QSIZE: u16 = 16;
    const SLOTS: u16 = Self::QSIZE / 2;
    /// Room for a request's bytes per slot.
    const REQ: u64 = 512;
    /// Room for a reply per slot.
    const ROOM: u32 = 4096;

    /// `mem` bytes of guest memory with the queues and slots laid out.
    pub fn new(mem: usize) -> Guest {
        let mut ram = virtio_driver::GuestRam::new(mem).expect("guest memory");
        let queues = [
            virtio_driver::SplitQueue::new(&mut ram, Self::QSIZE),
            virtio_driver::SplitQueue::new(&mut ram, Self::QSIZE),
        ];
        let slots = u64::from(Self::SLOTS) * 2;
        let req = ram.alloc(Self::REQ * slots, 8);
        let reply = ram.alloc(u64::from(Self::ROOM) * slots, 8);
        Guest {
            ram,
            queues,
            req,
            reply,
            published: [[0; Self::QSIZE as usize]; 2],
            next: [0; 2],
            lawful: true,
        }
    }

    /// Publishes `body` (at most 512 bytes) as a request with a 4 KiB
    /// reply buffer on queue `qi`, in its next slot.
    pub fn publish(&mut self, qi: usize, body: &[u8]) {
        let slot = self.next[qi] % Self::SLOTS;
        self.lawful &= self.next[qi] < Self::SLOTS;
        self.next[qi] = self.next[qi].wrapping_add(1);
        let at = u64::from(slot) + u64::from(Self::SLOTS) * qi as u64;
        let r = vm_memory::GuestAddress(self.req.0 + Self::REQ * at);
        let out = vm_memory::GuestAddress(self.reply.0 + u64::from(Self::ROOM) * at);
        let body = &body[..body.len().min(Self::REQ as usize)];
        self.ram.write(r, body);
        let bufs = virtio_driver::Buf::request_reply(r, body.len() as u32, out, Self::ROOM);
        let head = self.queues[qi].write_chain_at(&self.ram, slot * 2, &bufs);
        self.queues[qi].publish(&self.ram, head);
        self.published[qi][usize::from(head)] += 1;
    }

    /// Whether the device has not yet returned everything published on the
    /// first `nq` queues.
    pub fn pending(&self, nq: usize) -> bool {
        (0..nq).any(|q| self.queues[q].used_idx(&self.ram) != self.queues[q].avail_idx())
    }

    /// Once the device is gone: if the input was lawful, panics when a
    /// queue of the first `nq` returned a head it never published, or more
    /// often than it was published.
    pub fn check_returned(&mut self, nq: usize) {
        if !self.lawful {
            return;
        }
        for (qi, q) in self.queues.iter_mut().take(nq).enumerate() {
            while let Some((id, _)) = q.take_used(&self.ram) {
                let n = self.published[qi]
                    .get_mut(id as usize)
                    .expect("only published heads come back");
                assert!(
                    *n > 0,
                    "queue {qi}: head {id} answered more often than published"
                );
                *n -= 1;
            }
        }
    }
}

/// Publishes the chain at `head` on `q`, has `dev` serve its queue event
/// `event` (on worker thread 0, as vhost-user-backend would), and checks
/// what came back: that chain only, at most once, claiming no more than
/// `room` bytes written.
pub fn serve_one<B>(
    dev: &B,
    vrings: &[vhost_user_backend::VringRwLock],
    ram: &virtio_driver::GuestRam,
    q: &mut virtio_driver::SplitQueue,
    event: u16,
    head: u16,
    room: u32,
) where
    B: vhost_user_backend::VhostUserBackend<Bitmap = (), Vring = vhost_user_backend::VringRwLock>,
{
    q.publish(ram, head);
    dev.handle_event(event, vmm_sys_util::epoll::EventSet::IN, vrings, 0)
        .expect("handle_event never fails on guest input");
    let mut returned = 0;
    while let Some((id, used)) = q.take_used(ram) {
        assert_eq!(id, u32::from(head), "only the published chain comes back");
        assert!(used <= room, "wrote {used} bytes into a room of {room}");
        returned += 1;
    }
    assert!(returned <= 1, "a chain answered twice");
}
