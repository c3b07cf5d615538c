//! The virtio-fs device attacked from the driver side: crafted FUSE requests
//! no kernel would send, and broken descriptor chains, put into a real split
//! virtqueue in guest memory and served by `VirtioFsBackend::handle_event`.

mod common;

use std::path::Path;
use std::sync::Arc;

use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_driver::queue::{DESC_F_NEXT, DESC_F_WRITE};
use virtio_driver::{Buf, GuestRam, SplitQueue};
use virtiofs::VirtioFsBackend;
use virtiofs::{IoEngine, QueueDevice};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 1 << 20;
const REQ_LEN: u64 = 0x10000;
const REPLY_LEN: u64 = 0x10000;

use virtio_driver::fuse::opcode::*;
use virtio_driver::fuse::{self as fuse_wire, name, u32s, Reply};

/// The device with its two queues (hiprio, one request queue), driven from
/// the driver's side by the shared harness.
struct Driver {
    ram: GuestRam,
    queues: Vec<SplitQueue>,
    dev: VirtioFsBackend,
    vrings: Vec<VringRwLock>,
    req: GuestAddress,
    reply: GuestAddress,
    unique: u64,
}

impl Driver {
    fn new(share: &Path) -> Driver {
        Driver::with_request_queues(share, 1)
    }

    fn with_request_queues(share: &Path, request_queues: usize) -> Driver {
        Driver::with_config(Config::new(share), request_queues, IoEngine::default())
    }

    fn with_config(cfg: Config, request_queues: usize, engine: IoEngine) -> Driver {
        let mut ram = GuestRam::new(MEM_SIZE).unwrap();
        let queues: Vec<SplitQueue> = (0..=request_queues)
            .map(|_| SplitQueue::new(&mut ram, QSIZE))
            .collect();
        let vrings = queues.iter().map(|q| q.vring(&ram).unwrap()).collect();
        let req = ram.alloc(REQ_LEN, 8);
        let reply = ram.alloc(REPLY_LEN, 8);
        let fs = Arc::new(PassthroughFs::new(cfg).unwrap());
        let dev = VirtioFsBackend::new(fs, request_queues, None)
            .unwrap()
            .with_engine(engine);
        dev.update_memory(ram.atomic()).unwrap();
        let mut d = Driver {
            ram,
            queues,
            dev,
            vrings,
            req,
            reply,
            unique: 0,
        };
        // FUSE_INIT 7.31, as a 6.1 kernel would.
        let r = d.request(INIT, 0, &fuse_wire::init_body());
        assert_eq!(r.error, 0, "INIT failed");
        d
    }

    fn write_desc(&self, queue: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.queues[queue].write_desc(&self.ram, idx, addr, len, flags, next);
    }

    /// Publishes the chain at `head` on `queue`, kicks the device as
    /// vhost-user-backend does (the worker thread whose mask has the queue,
    /// with only that thread's vrings, the event numbered among them) and
    /// returns the used element (or `None` if nothing was used).
    fn kick(&mut self, queue: usize, head: u16) -> Option<(u32, u32)> {
        self.queues[queue].publish(&self.ram, head);
        common::kick(&self.dev, &self.vrings, queue);
        self.queues[queue].take_used(&self.ram)
    }

    /// Sends raw request bytes on the request queue with a reply buffer of `reply_len`.
    fn raw(&mut self, req: &[u8], reply_len: u32) -> Reply {
        self.raw_on(1, req, reply_len)
    }

    /// Sends raw request bytes on `queue` with a reply buffer of `reply_len`.
    fn raw_on(&mut self, queue: usize, req: &[u8], reply_len: u32) -> Reply {
        self.ram.write(self.req, req);
        self.ram.write(self.reply, &vec![0xaa; reply_len as usize]);
        let head = self.queues[queue].write_chain(
            &self.ram,
            &Buf::request_reply(self.req, req.len() as u32, self.reply, reply_len),
        );
        let (id, used) = self
            .kick(queue, head)
            .expect("every chain is returned to the guest");
        assert_eq!(id, u32::from(head));
        Reply::parse(used, &self.ram.read(self.reply, used as usize))
    }

    /// A FUSE request with only the header (for tests that corrupt it).
    fn header(&mut self, opcode: u32, nodeid: u64, body_len: usize) -> Vec<u8> {
        self.unique += 1;
        let mut h = fuse_wire::request(opcode, self.unique, nodeid, 0, &vec![0; body_len]);
        h.truncate(fuse_wire::IN_HEADER);
        h
    }

    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.request_on(1, opcode, nodeid, body)
    }

    fn request_on(&mut self, queue: usize, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let req = fuse_wire::request(opcode, self.unique, nodeid, 0, body);
        self.raw_on(queue, &req, 4096)
    }
}

/// With several request queues, vhost-user-backend gives each worker
/// thread its own queues and numbers their events from 0: request queue 3
/// arrives on thread 2 as event 0. Each must still be served as itself: a
/// request queue with the data path (io_uring here), counted as its own, and
/// not as the hiprio queue, whose number 0 is.
#[test]
fn every_request_queue_is_served_as_itself() {
    let (_b, share, _o) = setup();
    let mut d = Driver::with_request_queues(&share, 3);
    assert_eq!(
        d.dev.requests_per_queue(),
        vec![0, 1, 0, 0],
        "INIT on queue 1"
    );
    let inside = d.request_on(2, LOOKUP, 1, &name(b"inside")).nodeid();
    assert_ne!(inside, 0, "LOOKUP on queue 2");
    let fh = d
        .request_on(3, OPEN, inside, &fuse_wire::open_in(libc::O_RDONLY as u32))
        .fh();
    let before = d.dev.ring_completions() + d.dev.inline_completions();
    let r = d.request_on(3, READ, inside, &fuse_wire::read_in(fh, 0, 64));
    assert_eq!(r.error, 0, "READ on queue 3");
    assert_eq!(d.dev.requests_per_queue(), vec![0, 1, 1, 2]);
    if d.dev.io_engine() == virtiofs::IoEngine::IoUring && d.dev.prepare_rings() > 0 {
        assert_eq!(
            d.dev.ring_completions() + d.dev.inline_completions(),
            before + 1,
            "queue 3's READ took the io_uring data path of a request queue"
        );
    }
    // FORGET on hiprio: counted there, no reply.
    d.unique += 1;
    let forget = fuse_wire::request(FORGET, d.unique, inside, 0, &fuse_wire::forget_in(1));
    d.ram.write(d.req, &forget);
    let head = d.queues[0].write_chain(
        &d.ram,
        &Buf::request_reply(d.req, forget.len() as u32, d.reply, 16),
    );
    d.kick(0, head);
    assert_eq!(d.dev.requests_per_queue(), vec![1, 1, 1, 2]);
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let share = base.path().join("share");
    let outside = base.path().join("outside");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    std::fs::write(share.join("inside"), b"guest data").unwrap();
    (base, share, outside)
}

const EINVAL: i32 = -libc::EINVAL;

#[test]
fn lookup_dotdot_at_root_returns_the_root() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    assert_eq!(d.request(LOOKUP, 1, &name(b"..")).nodeid(), 1);
    let inside = d.request(LOOKUP, 1, &name(b"inside")).nodeid();
    assert_ne!(inside, 1);
}

#[test]
fn names_with_slash_are_refused_by_every_operation() {
    let (_b, share, outside) = setup();
    let mut d = Driver::new(&share);
    let evil = b"../outside/pwned";
    assert_eq!(
        d.request(LOOKUP, 1, &name(b"../outside/secret")).error,
        EINVAL
    );
    assert_eq!(d.request(LOOKUP, 1, &name(b"/etc")).error, EINVAL);

    let mut mkdir = u32s(&[0o755, 0]);
    mkdir.extend(name(evil));
    assert_eq!(d.request(MKDIR, 1, &mkdir).error, EINVAL);

    let mut create = u32s(&[
        (libc::O_CREAT | libc::O_RDWR) as u32,
        0o644 | libc::S_IFREG,
        0,
        0,
    ]);
    create.extend(name(evil));
    assert_eq!(d.request(CREATE, 1, &create).error, EINVAL);

    let mut mknod = u32s(&[libc::S_IFREG | 0o644, 0, 0, 0]);
    mknod.extend(name(evil));
    assert_eq!(d.request(MKNOD, 1, &mknod).error, EINVAL);

    let mut symlink = name(evil);
    symlink.extend(name(b"/etc/passwd"));
    assert_eq!(d.request(SYMLINK, 1, &symlink).error, EINVAL);

    let mut rename = 1u64.to_le_bytes().to_vec();
    rename.extend(name(b"inside"));
    rename.extend(name(evil));
    assert_eq!(d.request(RENAME, 1, &rename).error, EINVAL);

    let mut rename2 = 1u64.to_le_bytes().to_vec();
    rename2.extend(u32s(&[0, 0]));
    rename2.extend(name(b"inside"));
    rename2.extend(name(evil));
    assert_eq!(d.request(RENAME2, 1, &rename2).error, EINVAL);

    let inside = d.request(LOOKUP, 1, &name(b"inside")).nodeid();
    let mut link = inside.to_le_bytes().to_vec();
    link.extend(name(evil));
    assert_eq!(d.request(LINK, 1, &link).error, EINVAL);

    assert_eq!(
        d.request(UNLINK, 1, &name(b"../outside/secret")).error,
        EINVAL
    );

    assert!(
        !outside.join("pwned").exists(),
        "nothing was created outside"
    );
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"host secret"
    );
    assert_eq!(std::fs::read(share.join("inside")).unwrap(), b"guest data");
}

#[test]
fn empty_and_nul_embedded_names_are_refused() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    assert_eq!(d.request(LOOKUP, 1, b"\0").error, EINVAL);
    assert_eq!(d.request(LOOKUP, 1, b"ins\0ide\0").error, EINVAL);
    assert_eq!(d.request(LOOKUP, 1, b"no-terminator").error, EINVAL);
}

#[test]
fn symlink_to_the_host_is_not_followed() {
    let (_b, share, outside) = setup();
    std::os::unix::fs::symlink(&outside, share.join("door")).unwrap();
    let mut d = Driver::new(&share);
    let door = d.request(LOOKUP, 1, &name(b"door")).nodeid();
    assert_eq!(
        d.request(LOOKUP, door, &name(b"secret")).error,
        -libc::ENOTDIR
    );
    assert_eq!(
        d.request(OPEN, door, &u32s(&[libc::O_RDONLY as u32, 0]))
            .error,
        -libc::ELOOP
    );
}

#[test]
fn fifo_open_does_not_block_the_queue() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    let mut mknod = u32s(&[libc::S_IFIFO | 0o666, 0, 0, 0]);
    mknod.extend(name(b"fifo"));
    let fifo = d.request(MKNOD, 1, &mknod).nodeid();
    assert_eq!(
        d.request(OPEN, fifo, &u32s(&[libc::O_RDONLY as u32, 0]))
            .error,
        -libc::ENXIO
    );
    // The queue still serves.
    assert_eq!(d.request(GETATTR, 1, &[0u8; 16]).error, 0);
}

#[test]
fn unknown_node_ids_get_errors_not_panics() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    assert_eq!(
        d.request(GETATTR, 0xdead_beef, &[0u8; 16]).error,
        -libc::EBADF
    );
    assert_eq!(d.request(LOOKUP, u64::MAX, &name(b"x")).error, -libc::EBADF);
    assert_eq!(d.request(OPEN, 0, &u32s(&[0, 0])).error, -libc::EBADF);
}

#[test]
fn malformed_requests_get_errors_and_the_device_keeps_serving() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    // Shorter than a FUSE header.
    let r = d.raw(&[1, 2, 3, 4, 5], 4096);
    assert_eq!(r.used, 0, "nothing to reply to");
    // A header whose length claims a gigabyte.
    let mut huge = d.header(LOOKUP, 1, 0);
    huge[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    huge.extend(name(b"inside"));
    let r = d.raw(&huge, 4096);
    assert!(
        r.error < 0 || r.used == 0,
        "oversized request refused: {r:?}"
    );
    // An opcode that does not exist.
    assert_eq!(d.request(9999, 1, &[]).error, -libc::ENOSYS);
    // A body shorter than the opcode needs.
    let r = d.request(MKDIR, 1, &[1, 2]);
    assert!(r.error < 0 || r.used == 0, "short MKDIR refused: {r:?}");
    // A reply buffer too small for any reply.
    let mut req = d.header(LOOKUP, 1, 7);
    req.extend(name(b"inside"));
    let r = d.raw(&req, 8);
    assert!(r.used <= 8);
    // Still serving normal requests.
    assert_ne!(d.request(LOOKUP, 1, &name(b"inside")).nodeid(), 0);
}

#[test]
fn broken_descriptor_chains_are_returned_unserved() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    let (req, reply) = (d.req.0, d.reply.0);
    // A descriptor pointing outside guest memory.
    d.write_desc(1, 0, (MEM_SIZE as u64) * 4, 64, DESC_F_NEXT, 1);
    d.write_desc(1, 1, reply, 4096, DESC_F_WRITE, 0);
    let (_, used) = d.kick(1, 0).expect("chain returned");
    assert_eq!(used, 0);
    // A chain that loops on itself.
    d.write_desc(1, 0, req, 64, DESC_F_NEXT, 0);
    assert_eq!(
        d.kick(1, 0),
        Some((0, 0)),
        "a looping chain is returned empty"
    );
    // A next index beyond the queue.
    d.write_desc(1, 0, req, 64, DESC_F_NEXT, 500);
    assert_eq!(
        d.kick(1, 0),
        Some((0, 0)),
        "a chain out of the queue is returned empty"
    );
    // A readable descriptor after a writable one (the spec forbids it).
    d.write_desc(1, 0, reply, 4096, DESC_F_WRITE | DESC_F_NEXT, 1);
    d.write_desc(1, 1, req, 64, 0, 0);
    // Its buffers are still used only as their flags say: returned, with at
    // most the writable buffer's length used.
    let (id, used) = d.kick(1, 0).expect("a misordered chain is returned");
    assert!(id == 0 && used <= 4096, "({id}, {used})");
    // The device is alive and serves a proper request afterwards.
    assert_eq!(d.request(LOOKUP, 1, &name(b"..")).nodeid(), 1);
}

#[test]
fn hiprio_forgets_with_garbage_counts_are_harmless() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    let inside = d.request(LOOKUP, 1, &name(b"inside")).nodeid();
    let mut req = d.header(FORGET, inside, 8);
    req.extend_from_slice(&u64::MAX.to_le_bytes());
    let buf = d.ram.alloc(req.len() as u64, 8);
    d.ram.write(buf, &req);
    d.write_desc(0, 0, buf.0, req.len() as u32, 0, 0);
    let (_, used) = d.kick(0, 0).expect("forget returned");
    assert_eq!(used, 0, "FORGET has no reply");
    // The forgotten node is gone; the root is not.
    assert_eq!(d.request(GETATTR, inside, &[0u8; 16]).error, -libc::EBADF);
    assert_eq!(d.request(GETATTR, 1, &[0u8; 16]).error, 0);
}

#[test]
fn copy_file_range_is_served_by_the_device() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    let inside = d.request(LOOKUP, 1, &name(b"inside")).nodeid();
    let r = d.request(OPEN, inside, &u32s(&[libc::O_RDONLY as u32, 0]));
    let fh_in = u64::from_le_bytes(r.body[0..8].try_into().unwrap());
    let mut create = u32s(&[
        (libc::O_CREAT | libc::O_RDWR) as u32,
        0o644 | libc::S_IFREG,
        0,
        0,
    ]);
    create.extend(name(b"copy"));
    let r = d.request(CREATE, 1, &create);
    assert_eq!(r.error, 0);
    let out = u64::from_le_bytes(r.body[0..8].try_into().unwrap());
    // entry_out is 128 bytes, then open_out { fh, ... }.
    let fh_out = u64::from_le_bytes(r.body[128..136].try_into().unwrap());
    let mut body = Vec::new();
    for v in [fh_in, 6, out, fh_out, 0, 4, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let r = d.request(COPY_FILE_RANGE, inside, &body);
    assert_eq!(r.error, 0);
    assert_eq!(u32::from_le_bytes(r.body[0..4].try_into().unwrap()), 4);
    assert_eq!(std::fs::read(share.join("copy")).unwrap(), b"data");
    // A truncated COPY_FILE_RANGE body is an EINVAL reply.
    assert_eq!(d.request(COPY_FILE_RANGE, inside, &[0u8; 8]).error, EINVAL);
}

/// Kicks `queue` of `d` without publishing anything; the kick must succeed.
fn kick_only(d: &Driver, queue: u16) {
    d.dev
        .handle_event(queue, EventSet::IN, &d.vrings, 0)
        .expect("a kick never fails on guest input");
}

/// A request queue the guest breaks (an available index more than the queue
/// size ahead of the device), or one kicked while it is not started, makes
/// no error of `handle_event` (vhost-user-backend would end the worker
/// thread, which also serves hiprio): the queue is stopped and its kicks
/// ignored until the driver starts it again, while hiprio goes on.
#[test]
fn a_broken_or_unstarted_queue_is_stopped_not_an_error() {
    let (_b, share, _o) = setup();
    let mut d = Driver::new(&share);
    let inside = d.request(LOOKUP, 1, &name(b"inside")).nodeid();
    d.request(LOOKUP, 1, &name(b"inside"));

    let count = d.queues[1].avail_idx();
    d.queues[1].write_avail_idx(&d.ram, count.wrapping_add(QSIZE + 1));
    kick_only(&d, 1);
    assert_eq!(d.queues[1].take_used(&d.ram), None);

    // hiprio still answers.
    let mut req = d.header(FORGET, inside, 8);
    req.extend_from_slice(&1u64.to_le_bytes());
    let buf = d.ram.alloc(req.len() as u64, 8);
    d.ram.write(buf, &req);
    d.write_desc(0, 0, buf.0, req.len() as u32, 0, 0);
    assert_eq!(d.kick(0, 0), Some((0, 0)), "FORGET returned");

    // The queue stays stopped, even once the index is sane again...
    d.queues[1].write_avail_idx(&d.ram, count);
    kick_only(&d, 1);
    let (req_addr, reply) = (d.req, d.reply);
    let getattr = fuse_wire::request(GETATTR, 99, 1, 0, &[0u8; 16]);
    d.ram.write(req_addr, &getattr);
    let head = d.queues[1].write_chain(
        &d.ram,
        &Buf::request_reply(req_addr, getattr.len() as u32, reply, 4096),
    );
    assert_eq!(d.kick(1, head), None, "a stopped queue serves nothing");
    // ... until the driver starts it again (vhost-user-backend marks it
    // ready on SET_VRING_KICK); then the request waiting there is served.
    d.vrings[1].set_queue_ready(true);
    kick_only(&d, 1);
    let (_, used) = d.queues[1].take_used(&d.ram).expect("served once started");
    assert_eq!(
        Reply::parse(used, &d.ram.read(reply, used as usize)).error,
        0
    );

    // A kick of a queue that is not started is ignored too.
    d.vrings[1].set_queue_ready(false);
    kick_only(&d, 1);
    d.vrings[1].set_queue_ready(true);
    assert_eq!(d.request(GETATTR, 1, &[0u8; 16]).error, 0);
}

/// A panic while serving a request (a bug: no guest input should cause
/// one) is answered with EIO where the chain has room for a reply header,
/// and the kick goes on to the next chains instead of unwinding out of the
/// worker thread. `serve_caught` is what the device wraps its per-chain
/// serving in; here it wraps a request handler that always panics.
#[test]
fn a_panic_serving_a_request_becomes_an_eio_reply_and_the_queue_goes_on() {
    use device_queue::{serve_kick, Poller};
    use virtiofs::serve_caught;

    let mut ram = GuestRam::new(MEM_SIZE).unwrap();
    let mut q = SplitQueue::new(&mut ram, QSIZE);
    let vring = q.vring(&ram).unwrap();
    let mut replies = Vec::new();
    // Two requests with room for a reply, then a FORGET-like chain with none.
    for (i, unique) in [41u64, 42, 43].into_iter().enumerate() {
        let req = fuse_wire::request(GETATTR, unique, 1, 0, &[0u8; 16]);
        let at = ram.alloc(req.len() as u64, 8);
        ram.write(at, &req);
        let reply = ram.alloc(64, 8);
        ram.write(reply, &[0xaa; 64]);
        let d = 2 * i as u16;
        if unique == 43 {
            q.write_desc(&ram, d, at.0, req.len() as u32, 0, 0);
        } else {
            q.write_desc(&ram, d, at.0, req.len() as u32, DESC_F_NEXT, d + 1);
            q.write_desc(&ram, d + 1, reply.0, 64, DESC_F_WRITE, 0);
        }
        q.publish(&ram, d);
        replies.push(reply);
    }
    let mut served = 0;
    serve_kick(
        &vring,
        &|| Some(ram.memory()),
        false,
        "test queue",
        &mut Poller::new(std::time::Duration::ZERO),
        |mem, chain| {
            served += 1;
            serve_caught(mem, chain, |_, _| panic!("a bug while serving")).map(|n| n as u32)
        },
    );
    assert_eq!(served, 3, "every chain was served");
    for (i, unique) in [41u64, 42].into_iter().enumerate() {
        assert_eq!(q.take_used(&ram), Some((2 * i as u32, 16)));
        let out = ram.read(replies[i], 16);
        assert_eq!(&out[0..4], &16u32.to_le_bytes(), "out header len");
        assert_eq!(&out[4..8], &(-libc::EIO).to_le_bytes(), "EIO");
        assert_eq!(&out[8..16], &unique.to_le_bytes(), "the request's unique");
    }
    assert_eq!(q.take_used(&ram), Some((4, 0)), "no room: returned empty");
    assert_eq!(q.take_used(&ram), None);
}

/// A kick loads guest memory again for every pass over the ring, so a
/// chain published after the frontend replaced the memory table is served
/// with the new table, even within the kick that was serving when the
/// table changed. Regression: a kick served all its passes with the memory
/// of its start, and a request whose buffers were only in a region
/// SET_MEM_TABLE had just added was refused (found by
/// crates/virtiofs/tests/frontend_faults.rs under load).
#[test]
fn a_kick_loads_guest_memory_again_for_every_pass() {
    use device_queue::{serve_kick, MemGuard, Poller};
    use std::cell::{Cell, RefCell};
    use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic};

    let mut ram = GuestRam::new(MEM_SIZE).unwrap();
    let q = RefCell::new(SplitQueue::new(&mut ram, QSIZE));
    let vring = q.borrow().vring(&ram).unwrap();
    let buf = ram.alloc(64, 8);
    let bufs = Buf::request_reply(buf, 16, GuestAddress(buf.0 + 16), 48);
    let first = q.borrow().write_chain_at(&ram, 0, &bufs);
    let second = q.borrow().write_chain_at(&ram, 2, &bufs);
    q.borrow_mut().publish(&ram, first);
    // The table before and after the swap: two mappings of the same memfd,
    // told apart by their host addresses.
    let before = ram.memory();
    let after = GuestMemoryAtomic::new(ram.remap(None).unwrap()).memory();
    let host = |m: &MemGuard| m.get_host_address(GuestAddress(0)).unwrap() as usize;
    assert_ne!(host(&before), host(&after));
    let swapped = Cell::new(false);
    let seen = RefCell::new(Vec::new());
    serve_kick(
        &vring,
        &|| {
            Some(if swapped.get() {
                after.clone()
            } else {
                before.clone()
            })
        },
        false,
        "test queue",
        &mut Poller::new(std::time::Duration::ZERO),
        |mem, chain| {
            seen.borrow_mut().push((chain.head_index(), host(mem)));
            if !swapped.get() {
                // While the first chain is served, the frontend swaps the
                // table and the guest publishes another request: the next
                // pass of this same kick takes it.
                swapped.set(true);
                q.borrow_mut().publish(&ram, second);
            }
            Ok::<u32, std::io::Error>(0)
        },
    );
    assert_eq!(
        *seen.borrow(),
        [(first, host(&before)), (second, host(&after))],
        "the second pass ran on the new table"
    );
    let mut q = q.into_inner();
    assert_eq!(q.take_used(&ram), Some((u32::from(first), 0)));
    assert_eq!(q.take_used(&ram), Some((u32::from(second), 0)));
}

/// A descriptor table that ends exactly where guest memory ends is inside
/// it: the queue serves. (virtio-queue's own `is_valid` tests the byte
/// after each part and would have stopped this queue for good.)
#[test]
fn a_descriptor_table_ending_at_the_end_of_memory_is_served() {
    use device_queue::{serve_kick, Poller};

    let mut ram = GuestRam::new(MEM_SIZE).unwrap();
    // (virtio-queue takes an available ring at address 0 for "not set".)
    ram.alloc(4096, 4096);
    let avail = ram.alloc(6 + 2 * u64::from(QSIZE), 2);
    let used = ram.alloc(6 + 8 * u64::from(QSIZE), 4);
    let desc = GuestAddress(MEM_SIZE as u64 - 16 * u64::from(QSIZE));
    let mut q = SplitQueue::at(QSIZE, desc, avail, used);
    let vring = q.vring(&ram).unwrap();
    let buf = ram.alloc(64, 8);
    let head = q.write_chain_at(
        &ram,
        QSIZE - 2,
        &Buf::request_reply(buf, 16, GuestAddress(buf.0 + 16), 48),
    );
    q.publish(&ram, head);
    let mut served = 0;
    serve_kick(
        &vring,
        &|| Some(ram.memory()),
        false,
        "test queue",
        &mut Poller::new(std::time::Duration::ZERO),
        |_, _| {
            served += 1;
            Ok::<u32, std::io::Error>(5)
        },
    );
    assert_eq!(served, 1);
    assert_eq!(q.take_used(&ram), Some((u32::from(head), 5)));
}

/// A WRITE to a read-only share is refused with EROFS by either engine
/// (the io_uring engine hands it to the synchronous path, which answers),
/// even on a handle the guest holds, and the file is unchanged.
#[test]
fn a_write_to_a_read_only_share_is_erofs_on_either_engine() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"kept").unwrap();
    for engine in [IoEngine::IoUring, IoEngine::Sync] {
        let mut cfg = Config::new(t.path());
        cfg.readonly = true;
        let mut d = Driver::with_config(cfg, 1, engine);
        let node = d.request(LOOKUP, 1, &name(b"f")).nodeid();
        let r = d.request(OPEN, node, &u32s(&[libc::O_RDWR as u32, 0]));
        assert_eq!(r.error, -libc::EROFS, "{engine}: OPEN for writing");
        let fh = d
            .request(OPEN, node, &u32s(&[libc::O_RDONLY as u32, 0]))
            .fh();
        let mut w = fuse_wire::write_in(fh, 0, 4);
        w.extend_from_slice(b"lost");
        assert_eq!(
            d.request(WRITE, node, &w).error,
            -libc::EROFS,
            "{engine}: WRITE"
        );
        let r = d.request(READ, node, &fuse_wire::read_in(fh, 0, 4));
        assert_eq!((r.error, r.body), (0, b"kept".to_vec()), "{engine}: READ");
    }
    assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"kept");
}
