//! `--record-requests` at the device: every request any queue takes, on
//! either engine, lands in the recording as `len[2]` (little-endian, bit
//! 15 for the hiprio queue) followed by its bytes, cut at 32767 bytes, and
//! is served exactly as without a recording. And in the daemon: the file is
//! opened before the walls go up and written behind them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_driver::fs::FsDriver;
use virtio_driver::fuse::opcode::*;
use virtio_driver::fuse::{self as fuse_wire, Reply};
use virtio_driver::process::Backend;
use virtio_driver::{Buf, GuestRam, SplitQueue, VhostUserDevice, F_INDIRECT_DESC, F_VERSION_1};
use virtiofs::record::{records, MAX_RECORD};
use virtiofs::{FuseRecorder, IoEngine, QueueDevice, VirtioFsBackend};
use vm_memory::GuestAddress;

const QSIZE: u16 = 16;
/// Requests are handed over one page per descriptor, as Linux does.
const PAGE: u32 = 4096;
const ROOM: u32 = 4096;

/// A device with a hiprio queue and `request_queues` request queues,
/// recording into a file, driven from the driver's side.
struct Device {
    ram: GuestRam,
    queues: Vec<SplitQueue>,
    vrings: Vec<VringRwLock>,
    dev: VirtioFsBackend,
    req: GuestAddress,
    reply: GuestAddress,
}

impl Device {
    fn new(share: &Path, request_queues: usize, engine: IoEngine, recording: &Path) -> Device {
        let mut ram = GuestRam::new(1 << 20).unwrap();
        let queues: Vec<SplitQueue> = (0..=request_queues)
            .map(|_| SplitQueue::new(&mut ram, QSIZE))
            .collect();
        let vrings = queues.iter().map(|q| q.vring(&ram).unwrap()).collect();
        let req = ram.alloc(64 << 10, 8);
        let reply = ram.alloc(u64::from(ROOM), 8);
        let fs = Arc::new(PassthroughFs::new(Config::new(share)).unwrap());
        let recorder = Arc::new(FuseRecorder::create(recording).unwrap());
        let dev = VirtioFsBackend::new(fs, request_queues, None)
            .unwrap()
            .with_engine(engine)
            .with_recorder(recorder);
        dev.update_memory(ram.atomic()).unwrap();
        Device {
            ram,
            queues,
            vrings,
            dev,
            req,
            reply,
        }
    }

    /// Sends `req` on `queue` in page-sized readable descriptors, kicks the
    /// queue as its worker thread would be, and returns the reply.
    fn send(&mut self, queue: usize, req: &[u8]) -> Reply {
        self.ram.write(self.req, req);
        let mut bufs: Vec<Buf> = Buf::pieces(self.req, req.len() as u32, PAGE, false).collect();
        bufs.push(Buf::input(self.reply, ROOM));
        let head = self.queues[queue].write_chain(&self.ram, &bufs);
        self.queues[queue].publish(&self.ram, head);
        common::kick(&self.dev, &self.vrings, queue);
        let (id, used) = self.queues[queue]
            .take_used(&self.ram)
            .expect("the chain comes back");
        assert_eq!(id, u32::from(head));
        Reply::parse(used, &self.ram.read(self.reply, used as usize))
    }
}

fn requests_are_recorded_as_taken(engine: IoEngine) {
    let share = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let recording = out.path().join("fuse.rec");
    let mut d = Device::new(share.path(), 2, engine, &recording);
    let rings = d.dev.prepare_rings();
    // (hiprio, request bytes) in the order they are sent.
    let mut sent: Vec<(bool, Vec<u8>)> = Vec::new();

    let init = fuse_wire::request(INIT, 1, 0, 0, &fuse_wire::init_body());
    assert_eq!(d.send(1, &init).error, 0);
    sent.push((false, init));

    let body = fuse_wire::create_in(libc::O_RDWR as u32, 0o644, 0, b"f");
    let create = fuse_wire::request(CREATE, 2, 1, 0, &body);
    let (entry, open) = d.send(1, &create).created().expect("created");
    sent.push((false, create));

    let mut small = fuse_wire::write_in(open.fh, 0, 5);
    small.extend_from_slice(b"hello");
    let small = fuse_wire::request(WRITE, 3, entry.nodeid, 0, &small);
    assert_eq!(d.send(1, &small).error, 0);
    sent.push((false, small));

    // Longer than a record holds, on the second request queue.
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let mut big = fuse_wire::write_in(open.fh, 5, data.len() as u32);
    big.extend_from_slice(&data);
    let big = fuse_wire::request(WRITE, 4, entry.nodeid, 0, &big);
    assert!(big.len() > MAX_RECORD);
    assert_eq!(d.send(2, &big).error, 0);
    sent.push((false, big));

    let forget = fuse_wire::request(FORGET, 5, entry.nodeid, 0, &fuse_wire::forget_in(1));
    d.send(0, &forget);
    sent.push((true, forget));

    if engine == IoEngine::IoUring && rings > 0 {
        assert_eq!(
            d.dev.inline_completions() + d.dev.ring_completions(),
            2,
            "both writes went through the io_uring engine"
        );
    }
    // Recording read nothing away: the file holds both writes whole.
    let mut want = b"hello".to_vec();
    want.extend_from_slice(&data);
    assert_eq!(std::fs::read(share.path().join("f")).unwrap(), want);

    let rec = std::fs::read(&recording).unwrap();
    // The format itself: INIT's length first, little-endian, no hiprio bit.
    assert_eq!(rec[..2], (sent[0].1.len() as u16).to_le_bytes());
    assert_eq!(rec[2..2 + sent[0].1.len()], sent[0].1[..]);
    let got: Vec<(bool, &[u8])> = records(&rec).collect();
    let want: Vec<(bool, &[u8])> = sent
        .iter()
        .map(|(hiprio, r)| (*hiprio, &r[..r.len().min(MAX_RECORD)]))
        .collect();
    assert_eq!(got, want);
    // The hiprio record's length has bit 15 set (0x80 in its second byte).
    let last = rec.len() - sent[4].1.len() - 2;
    assert_eq!(rec[last + 1] & 0x80, 0x80);
    assert_eq!(
        rec.len(),
        want.iter().map(|(_, r)| 2 + r.len()).sum::<usize>(),
        "nothing else in the file"
    );
}

#[test]
fn requests_are_recorded_as_taken_on_the_io_uring_engine() {
    requests_are_recorded_as_taken(IoEngine::IoUring);
}

#[test]
fn requests_are_recorded_as_taken_on_the_sync_engine() {
    requests_are_recorded_as_taken(IoEngine::Sync);
}

/// The daemon records what a frontend sends, behind its default walls
/// (as root: the namespace sandbox, where the recording's path no longer
/// exists; otherwise `--sandbox none`, still under seccomp and Landlock).
#[test]
fn the_daemon_records_behind_its_walls() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello"), b"recorded").unwrap();
    let recording = t.path().join("fuse.rec");
    let rec_arg = recording.to_str().unwrap();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut extra = vec!["--record-requests", rec_arg];
    if !root {
        extra.extend(["--sandbox", "none"]);
    }
    let ours = env!("CARGO_BIN_EXE_virtiofsd-rs").to_string();
    let mut daemon = Backend::start(&[ours], &share, &t.path().join("vfs.sock"), &extra);
    let mut g = FsDriver::new(2, |ram, queues| {
        VhostUserDevice::connect(&daemon.socket, ram, queues, F_VERSION_1 | F_INDIRECT_DESC)
            .expect("vhost-user setup")
    });
    g.init();
    let node = g.lookup(1, b"hello");
    let fh = g.open(node, libc::O_RDONLY);
    let r = g.request(READ, node, &fuse_wire::read_in(fh, 0, 4096));
    assert_eq!(r.body, b"recorded");
    assert!(g.forget(node, 1));
    drop(g);
    let st = daemon.wait_exit().expect("exits when the frontend leaves");
    assert!(st.success(), "{st:?}");

    // FsDriver numbers its requests from 1.
    let want: Vec<(bool, Vec<u8>)> = vec![
        (
            false,
            fuse_wire::request(INIT, 1, 0, 0, &fuse_wire::init_body()),
        ),
        (
            false,
            fuse_wire::request(LOOKUP, 2, 1, 0, &fuse_wire::name(b"hello")),
        ),
        (
            false,
            fuse_wire::request(
                OPEN,
                3,
                node,
                0,
                &fuse_wire::u32s(&[libc::O_RDONLY as u32, 0]),
            ),
        ),
        (
            false,
            fuse_wire::request(READ, 4, node, 0, &fuse_wire::read_in(fh, 0, 4096)),
        ),
        (
            true,
            fuse_wire::request(FORGET, 5, node, 0, &fuse_wire::forget_in(1)),
        ),
    ];
    let rec = std::fs::read(&recording).expect("the recording exists");
    let got: Vec<(bool, Vec<u8>)> = records(&rec).map(|(h, r)| (h, r.to_vec())).collect();
    assert_eq!(got, want);
    let mode = std::fs::metadata(&recording).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
