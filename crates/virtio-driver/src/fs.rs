//! A virtio-fs driver: a hiprio queue and request queues in guest memory,
//! over any [`Link`] to the device (a vhost-user frontend, a VMM's
//! virtio-mmio transport), sending FUSE requests one at a time as a test
//! does.

use std::io;
use std::path::Path;
use std::time::Duration;

use vm_memory::GuestAddress;

use crate::fuse::{self, opcode, Reply};
use crate::memory::GuestRam;
use crate::mmio::{MmioDriver, MmioWindow};
use crate::process::Backend;
use crate::queue::{Buf, SplitQueue};
use crate::vhost_user::VhostUserDevice;

/// How a driver reaches its device: notifications one way, waiting for
/// used buffers the other.
pub trait Link {
    /// Notifies queue `q`.
    fn notify(&mut self, q: usize) -> io::Result<()>;
    /// Waits until `done()` holds, re-checking when queue `q` signals;
    /// false on timeout.
    fn wait(&mut self, q: usize, timeout: Duration, done: &mut dyn FnMut() -> bool) -> bool;
}

impl Link for VhostUserDevice {
    fn notify(&mut self, q: usize) -> io::Result<()> {
        self.kick(q)
    }

    fn wait(&mut self, q: usize, timeout: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        VhostUserDevice::wait(self, q, timeout, done)
    }
}

impl<W: MmioWindow> Link for MmioDriver<W> {
    fn notify(&mut self, q: usize) -> io::Result<()> {
        MmioDriver::notify(self, q as u32);
        Ok(())
    }

    fn wait(&mut self, _q: usize, timeout: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        MmioDriver::wait(self, timeout, done)
    }
}

/// Entries of each queue [`FsDriver::new`] lays out.
pub const QUEUE_SIZE: u16 = 64;
/// Room for one request, and for one reply.
pub const BUF_SIZE: u32 = 1 << 20;

/// A virtio-fs driver over `L`.
pub struct FsDriver<L> {
    /// Guest memory.
    pub ram: GuestRam,
    /// Queue 0 is hiprio; the others are request queues.
    pub queues: Vec<SplitQueue>,
    /// The way to the device.
    pub link: L,
    /// Where requests are written.
    pub req: GuestAddress,
    /// Where replies are written.
    pub reply: GuestAddress,
    /// The last FUSE `unique` used.
    pub unique: u64,
    /// The request queue [`FsDriver::request`] uses.
    pub queue: usize,
}

impl FsDriver<VhostUserDevice> {
    /// [`FsDriver::new`] with `nqueues` queues, connected to the vhost-user
    /// backend at `socket` (VIRTIO_F_VERSION_1 only; the socket may take up
    /// to 10 s to appear, as a backend starts).
    ///
    /// # Panics
    /// When the backend cannot be connected to: the test cannot go on.
    pub fn over_vhost_user(socket: &Path, nqueues: usize) -> Self {
        Self::over_vhost_user_with_layout(socket, nqueues, QUEUE_SIZE, 8 << 20)
    }

    /// [`FsDriver::over_vhost_user`] with [`FsDriver::with_layout`]'s
    /// queue size and memory: room for many requests in flight.
    ///
    /// # Panics
    /// As [`FsDriver::over_vhost_user`] and [`FsDriver::with_layout`].
    pub fn over_vhost_user_with_layout(
        socket: &Path,
        nqueues: usize,
        queue_size: u16,
        ram: usize,
    ) -> Self {
        Self::with_layout(nqueues, queue_size, ram, |ram, queues| {
            VhostUserDevice::connect_within(
                socket,
                ram,
                queues,
                crate::F_VERSION_1,
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("vhost-user setup with {}: {e}", socket.display()))
        })
    }
}

impl<L: Link> FsDriver<L> {
    /// 8 MiB of guest memory with `nqueues` queues (hiprio and
    /// `nqueues - 1` request queues) and the request and reply buffers;
    /// `connect` makes the link to the device from the memory and queues.
    pub fn new(nqueues: usize, connect: impl FnOnce(&GuestRam, &[&SplitQueue]) -> L) -> Self {
        Self::with_layout(nqueues, QUEUE_SIZE, 8 << 20, connect)
    }

    /// [`FsDriver::new`] with `ram` bytes of guest memory and queues of
    /// `queue_size` entries: room for many requests in flight at once.
    ///
    /// # Panics
    /// When the memory cannot be made or the queues and the two buffers
    /// do not fit in it.
    pub fn with_layout(
        nqueues: usize,
        queue_size: u16,
        ram: usize,
        connect: impl FnOnce(&GuestRam, &[&SplitQueue]) -> L,
    ) -> Self {
        let mut ram = GuestRam::new(ram).expect("guest memory");
        let queues: Vec<SplitQueue> = (0..nqueues)
            .map(|_| SplitQueue::new(&mut ram, queue_size))
            .collect();
        let req = ram.alloc(u64::from(BUF_SIZE), 4096);
        let reply = ram.alloc(u64::from(BUF_SIZE), 4096);
        let refs: Vec<&SplitQueue> = queues.iter().collect();
        let link = connect(&ram, &refs);
        FsDriver {
            ram,
            queues,
            link,
            req,
            reply,
            unique: 0,
            queue: 1,
        }
    }

    /// Sends one FUSE request on the current request queue and waits (up
    /// to 10 s) for its reply.
    ///
    /// # Panics
    /// When the device does not answer in time.
    pub fn request(&mut self, op: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let req = fuse::request(op, self.unique, nodeid, 0, body);
        self.request_bytes(&req)
    }

    /// Sends `req`, a whole FUSE request (header included; its unique
    /// should be [`next_unique`](Self::next_unique)'s), on the current
    /// request queue and waits (up to 10 s) for its reply.
    ///
    /// # Panics
    /// When the device does not answer in time, or `req` does not fit the
    /// request buffer.
    pub fn request_bytes(&mut self, req: &[u8]) -> Reply {
        let op = fuse::parse::<fuse::abi::InHeader>(req).map_or(0, |h| h.opcode);
        assert!(
            req.len() as u32 <= BUF_SIZE,
            "request larger than its buffer"
        );
        self.ram.write(self.req, req);
        let bufs = Buf::request_reply(self.req, req.len() as u32, self.reply, BUF_SIZE);
        let used = self.send(self.queue, &bufs, Duration::from_secs(10));
        let (_, len) = used.unwrap_or_else(|| panic!("no reply to opcode {op}"));
        Reply::parse(len, &self.ram.read(self.reply, len as usize))
    }

    /// A unique for the next request built by hand.
    pub fn next_unique(&mut self) -> u64 {
        self.unique += 1;
        self.unique
    }

    /// Publishes `bufs` as one chain on queue `qi`, notifies the device and
    /// waits up to `timeout` for the chain to be used.
    pub fn send(&mut self, qi: usize, bufs: &[Buf], timeout: Duration) -> Option<(u32, u32)> {
        let q = &mut self.queues[qi];
        let head = q.write_chain(&self.ram, bufs);
        q.publish(&self.ram, head);
        self.notify(qi);
        let mut used = None;
        let (ram, q) = (&self.ram, &mut self.queues[qi]);
        // Before each sleep, ask for an interrupt at the next used entry
        // (with event index; without, this only looks again).
        let mut done = || loop {
            used = q.take_used(ram);
            if used.is_some() {
                return true;
            }
            if !q.prepare_wait(ram) {
                return false;
            }
        };
        self.link.wait(qi, timeout, &mut done).then_some(())?;
        used
    }

    /// Notifies queue `qi`.
    ///
    /// # Panics
    /// When the notification cannot be sent.
    pub fn notify(&mut self, qi: usize) {
        self.link.notify(qi).expect("notify the device");
    }

    /// INIT, which must succeed.
    ///
    /// # Panics
    /// When it fails or gets no reply.
    pub fn init(&mut self) {
        let r = self.request(opcode::INIT, 0, &fuse::init_body());
        assert_eq!(r.error, 0, "INIT");
    }

    /// LOOKUP of `name` in `parent`, which must succeed and find it; the
    /// node id.
    ///
    /// # Panics
    /// When it fails, gets no reply, or gets a negative entry (node id 0:
    /// the name does not exist, cacheably).
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> u64 {
        let r = self.request(opcode::LOOKUP, parent, &fuse::name(name));
        assert_eq!(r.error, 0, "LOOKUP {}", String::from_utf8_lossy(name));
        let node = r.nodeid();
        assert_ne!(
            node,
            0,
            "LOOKUP {}: no such name",
            String::from_utf8_lossy(name)
        );
        node
    }

    /// OPEN of `node` with `flags`, which must succeed; the file handle.
    ///
    /// # Panics
    /// When it fails or gets no reply.
    pub fn open(&mut self, node: u64, flags: i32) -> u64 {
        let r = self.request(opcode::OPEN, node, &fuse::u32s(&[flags as u32, 0]));
        assert_eq!(r.error, 0, "OPEN");
        r.fh()
    }

    /// A FORGET of `nlookup` lookups of `nodeid` on the hiprio queue (a
    /// chain with no device-writable part); whether the device returned it.
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> bool {
        self.unique += 1;
        let req = fuse::request(
            opcode::FORGET,
            self.unique,
            nodeid,
            0,
            &nlookup.to_le_bytes(),
        );
        self.ram.write(self.req, &req);
        let buf = Buf::out(self.req, req.len() as u32);
        self.send(0, &[buf], Duration::from_secs(10)) == Some((0, 0))
    }
}

/// What every virtio-fs daemon must do: INIT, LOOKUP, OPEN, READ of a host
/// file (200,000 bytes, into guest memory), then exit with status 0 when
/// the frontend goes away. `cmd` (with `extra` arguments) is started on a
/// fresh share; `connect` makes the driver from the daemon's socket;
/// `more` runs checks of its own before the disconnect.
///
/// # Panics
/// When any of that does not happen: this is a test.
pub fn reads_a_host_file<L: Link>(
    cmd: &[String],
    extra: &[&str],
    connect: impl FnOnce(&Path) -> FsDriver<L>,
    more: impl FnOnce(&mut FsDriver<L>),
) {
    let t = tempfile::tempdir().expect("a scratch directory");
    let share = t.path().join("share");
    std::fs::create_dir(&share).expect("the share");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(share.join("hello"), &data).expect("the file");
    let mut daemon = Backend::start(cmd, &share, &t.path().join("vfs.sock"), extra);
    let mut g = connect(&daemon.socket);
    g.init();
    let node = g.lookup(1, b"hello");
    let fh = g.open(node, libc::O_RDONLY);
    let r = g.request(opcode::READ, node, &fuse::read_in(fh, 0, 200_000));
    assert_eq!(r.error, 0, "READ");
    assert_eq!(r.body, data, "the file's bytes arrive in guest memory");
    more(&mut g);
    drop(g);
    let status = daemon
        .wait_exit()
        .expect("the daemon exits when the frontend disconnects");
    assert!(status.success(), "{cmd:?} exited with {status:?}");
}
