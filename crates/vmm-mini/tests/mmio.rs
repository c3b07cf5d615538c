//! The virtio-mmio transport and the in-process device models, driven from
//! the driver's side the way Linux's virtio_mmio driver drives them: the
//! register protocol, feature negotiation, queue set-up, notifications and
//! interrupts, and requests through in-process virtio-fs and virtio-9p.

use std::sync::Arc;
use std::time::Duration;

use p9::messages::{decode_rframe, Rmessage, Tmessage};
use passthrough::{Config, PassthroughFs};
use virtio_driver::fuse::{self as fuse_wire, opcode, Reply};
use virtio_driver::{
    Buf, GuestRam, MmioDriver, ProbeError, SplitQueue, F_EVENT_IDX, F_INDIRECT_DESC as F_INDIRECT,
};
use virtiofs::QueueDevice;
use vm_memory::GuestAddress;
use vmm_mini::devices::{fs_config, p9_config, InProcess, VIRTIO_ID_9P, VIRTIO_ID_FS};
use vmm_mini::virtio_mmio::{reg, status, MmioTransport, F_VERSION_1, INT_CONFIG, INT_VRING};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const F_MOUNT_TAG: u64 = 1;

fn fs_transport(share: &std::path::Path, ram: &GuestRam, tag: &str) -> MmioTransport {
    fs_transport_with(share, ram, tag, virtiofs::IoEngine::default(), true).0
}

fn fs_transport_with(
    share: &std::path::Path,
    ram: &GuestRam,
    tag: &str,
    engine: virtiofs::IoEngine,
    inline_first: bool,
) -> (MmioTransport, Arc<virtiofs::VirtioFsBackend>) {
    let fs = Arc::new(PassthroughFs::new(Config::new(share)).unwrap());
    let backend = Arc::new(
        virtiofs::VirtioFsBackend::new(fs, 1, Some(tag.into()))
            .unwrap()
            .with_engine(engine)
            .with_inline_first(inline_first),
    );
    let dev = InProcess::new(backend.clone(), VIRTIO_ID_FS, fs_config(tag, 1));
    let line = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(Box::new(dev), ram.atomic(), line).unwrap();
    (t, backend)
}

fn p9_transport(share: &std::path::Path, ram: &GuestRam) -> MmioTransport {
    let fs = Arc::new(PassthroughFs::new(Config::new(share)).unwrap());
    let backend = p9::virtio::P9VhostBackend::new(p9::server::Server::new(fs), "share").unwrap();
    let dev = InProcess::new(Arc::new(backend), VIRTIO_ID_9P, p9_config("share"));
    MmioTransport::new(
        Box::new(dev),
        ram.atomic(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap()
}

/// Guest memory, queues and buffers for one device.
struct Guest {
    ram: GuestRam,
    queues: Vec<SplitQueue>,
    req: GuestAddress,
    reply: GuestAddress,
}

impl Guest {
    fn new(nqueues: usize) -> Guest {
        let mut ram = GuestRam::new(8 << 20).unwrap();
        let queues = (0..nqueues)
            .map(|_| SplitQueue::new(&mut ram, 64))
            .collect();
        let req = ram.alloc(1 << 20, 4096);
        let reply = ram.alloc(1 << 20, 4096);
        Guest {
            ram,
            queues,
            req,
            reply,
        }
    }

    fn refs(&self) -> Vec<&SplitQueue> {
        self.queues.iter().collect()
    }

    /// Puts `req` on queue `q`, notifies, waits for the used element and
    /// returns the reply bytes.
    fn roundtrip(&mut self, d: &mut MmioDriver<MmioTransport>, q: usize, req: &[u8]) -> Vec<u8> {
        self.ram.write(self.req, req);
        let bufs = Buf::request_reply(self.req, req.len() as u32, self.reply, 1 << 20);
        let head = self.queues[q].write_chain(&self.ram, &bufs);
        self.queues[q].publish(&self.ram, head);
        d.notify(q as u32);
        let mut used = None;
        let (ram, queue) = (&self.ram, &mut self.queues[q]);
        assert!(
            d.wait(Duration::from_secs(10), || {
                used = queue.take_used(ram);
                used.is_some()
            }),
            "no reply on queue {q}"
        );
        let (_, len) = used.unwrap();
        self.ram.read(self.reply, len as usize)
    }

    fn fuse(
        &mut self,
        d: &mut MmioDriver<MmioTransport>,
        op: u32,
        nodeid: u64,
        body: &[u8],
    ) -> Reply {
        let req = fuse_wire::request(op, 7, nodeid, 0, body);
        let out = self.roundtrip(d, 1, &req);
        Reply::parse(out.len() as u32, &out)
    }
}

fn share_with_file() -> (tempfile::TempDir, Vec<u8>) {
    let t = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
    std::fs::write(t.path().join("hello"), &data).unwrap();
    (t, data)
}

#[test]
fn in_process_virtio_fs_serves_through_the_transport() {
    use virtiofs::IoEngine::{IoUring, Sync};
    for (engine, inline_first) in [(IoUring, false), (IoUring, true), (Sync, true)] {
        serves_through_the_transport(engine, inline_first);
    }
}

fn serves_through_the_transport(engine: virtiofs::IoEngine, inline_first: bool) {
    let (share, data) = share_with_file();
    let mut g = Guest::new(2);
    let (t, backend) = fs_transport_with(share.path(), &g.ram, "myfs", engine, inline_first);
    let mut d = MmioDriver::probe(t, &g.refs(), F_VERSION_1 | F_INDIRECT | F_EVENT_IDX).unwrap();
    assert_eq!(d.read32(reg::DEVICE_ID), VIRTIO_ID_FS);
    assert!(d.transport.is_active());
    assert_eq!(
        d.features & F_EVENT_IDX,
        F_EVENT_IDX,
        "event idx negotiated"
    );
    let cfg = d.config(40);
    assert_eq!(&cfg[..4], b"myfs");
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);

    assert_eq!(
        g.fuse(&mut d, opcode::INIT, 0, &fuse_wire::init_body())
            .error,
        0
    );
    let node = g
        .fuse(&mut d, opcode::LOOKUP, 1, &fuse_wire::name(b"hello"))
        .nodeid();
    let fh = g
        .fuse(
            &mut d,
            opcode::OPEN,
            node,
            &fuse_wire::u32s(&[libc::O_RDONLY as u32, 0]),
        )
        .fh();
    let read = fuse_wire::read_in(fh, 0, 100_000);
    let r = g.fuse(&mut d, opcode::READ, node, &read);
    assert_eq!(
        (r.error, r.body == data),
        (0, true),
        "READ lands in guest memory"
    );
    for datasync in [false, true] {
        let r = g.fuse(
            &mut d,
            opcode::FSYNC,
            node,
            &fuse_wire::fsync_in(fh, datasync),
        );
        assert_eq!((r.error, r.body.len()), (0, 0), "FSYNC answered");
    }
    let r = g.fuse(
        &mut d,
        opcode::FSYNC,
        node,
        &fuse_wire::fsync_in(fh + 99, false),
    );
    assert_eq!(r.error, -libc::EBADF, "FSYNC of an unknown handle");
    // The READ went through the ring (inline first off), or inline (it
    // was in the page cache), with io_uring, and the two FSYNCs through the
    // ring; with sync, through neither.
    let (ring, inline) = (backend.ring_completions(), backend.inline_completions());
    match (engine, inline_first) {
        (virtiofs::IoEngine::IoUring, false) => assert_eq!((ring, inline), (3, 0)),
        (virtiofs::IoEngine::IoUring, true) => {
            assert!(ring >= 2 && ring + inline == 3, "{ring} {inline}")
        }
        (virtiofs::IoEngine::Sync, _) => assert_eq!((ring, inline), (0, 0)),
    }
    // The edge checks hold behind this transport too.
    assert_eq!(
        g.fuse(&mut d, opcode::LOOKUP, 1, &fuse_wire::name(b"a/b"))
            .error,
        -libc::EINVAL
    );
    assert_eq!(
        g.fuse(&mut d, opcode::LOOKUP, 1, &fuse_wire::name(b".."))
            .nodeid(),
        1
    );
    // The interrupt status was raised and acknowledged along the way.
    assert_eq!(d.read32(reg::INTERRUPT_STATUS) & INT_VRING, 0);
}

#[test]
fn a_reset_device_can_be_probed_again_on_the_same_transport() {
    let (share, _) = share_with_file();
    let mut g = Guest::new(2);
    let t = fs_transport(share.path(), &g.ram, "myfs");
    let mut d = MmioDriver::probe(t, &g.refs(), F_VERSION_1).unwrap();
    assert_eq!(
        g.fuse(&mut d, opcode::INIT, 0, &fuse_wire::init_body())
            .error,
        0
    );
    // Reset stops the device's workers and forgets the queues.
    d.write32(reg::STATUS, 0);
    assert!(!d.transport.is_active());
    assert_eq!(d.read32(reg::STATUS), 0);
    d.write32(reg::QUEUE_SEL, 1);
    assert_eq!(d.read32(reg::QUEUE_READY), 0);
    // The driver sets up fresh rings (the old ones' indices went with the
    // reset) and the same device serves again.
    g.queues = (0..2).map(|_| SplitQueue::new(&mut g.ram, 64)).collect();
    let mut d = MmioDriver::probe(d.transport, &g.refs(), F_VERSION_1).unwrap();
    assert_eq!(
        g.fuse(&mut d, opcode::INIT, 0, &fuse_wire::init_body())
            .error,
        0
    );
}

#[test]
fn in_process_virtio_9p_serves_through_the_transport() {
    let (share, _) = share_with_file();
    let mut g = Guest::new(1);
    let t = p9_transport(share.path(), &g.ram);
    let mut d = MmioDriver::probe(t, &g.refs(), F_VERSION_1 | F_MOUNT_TAG).unwrap();
    assert_eq!(d.read32(reg::DEVICE_ID), VIRTIO_ID_9P);
    assert_eq!(d.features & F_MOUNT_TAG, F_MOUNT_TAG);
    assert_eq!(d.config(7), b"\x05\x00share");
    let v = Tmessage::Version {
        msize: 65536,
        version: b"9P2000.L",
    };
    let out = g.roundtrip(&mut d, 0, &v.encode(0xffff));
    match decode_rframe(&out).unwrap().1 {
        Rmessage::Version { msize, version } => {
            assert_eq!((msize, version.as_slice()), (65536, &b"9P2000.L"[..]))
        }
        other => panic!("expected Rversion, got {other:?}"),
    }
}

#[test]
fn registers_identify_the_device_and_ignore_odd_accesses() {
    let (share, _) = share_with_file();
    let g = Guest::new(2);
    let mut t = fs_transport(share.path(), &g.ram, "myfs");
    let mut b = [0u8; 4];
    t.read(reg::MAGIC, &mut b);
    assert_eq!(&b, b"virt");
    t.read(reg::VERSION, &mut b);
    assert_eq!(u32::from_le_bytes(b), 2);
    // Two-byte and unaligned register accesses read as zero and do nothing.
    let mut two = [0xaau8; 2];
    t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    t.read(reg::MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(reg::STATUS, &[status::ACKNOWLEDGE as u8]);
    assert_eq!(t.status(), 0);
    // Queues beyond the device's read as absent.
    t.write(reg::QUEUE_SEL, &7u32.to_le_bytes());
    t.read(reg::QUEUE_NUM_MAX, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0);
    // Config reads past the end of the config space are zeros.
    let mut tail = [0xffu8; 8];
    t.read(reg::CONFIG + 38, &mut tail);
    assert_eq!(&tail[..2], &[0, 0], "last bytes of num_request_queues");
    assert_eq!(&tail[2..], &[0; 6]);
}

#[test]
fn feature_negotiation_drops_unoffered_bits_and_requires_version_1() {
    let (share, _) = share_with_file();
    let g = Guest::new(2);
    // A driver that does not accept VERSION_1 gets no FEATURES_OK.
    let t = fs_transport(share.path(), &g.ram, "myfs");
    let e = MmioDriver::probe(t, &g.refs(), F_INDIRECT).err().unwrap();
    assert!(matches!(e, ProbeError::FeaturesRefused(_)), "{e:?}");

    // Bits the device did not offer are dropped from what is acked.
    let t = fs_transport(share.path(), &g.ram, "myfs");
    let mut d = MmioDriver::probe(t, &[], F_VERSION_1).unwrap_or_else(|e| panic!("{e}"));
    d.write32(reg::STATUS, 0);
    d.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write_features(F_VERSION_1 | (1 << 40) | (1 << 33));
    d.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(d.read32(reg::STATUS) & status::FEATURES_OK, 0);
    // Writing features after FEATURES_OK changes nothing.
    d.write_features(0);
    d.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(d.transport.is_active(), "VERSION_1 survived the late write");
}

#[test]
fn bad_queues_are_refused() {
    let (share, _) = share_with_file();
    let g = Guest::new(2);
    let mut d = MmioDriver {
        transport: fs_transport(share.path(), &g.ram, "myfs"),
        features: 0,
    };
    let s = status::ACKNOWLEDGE | status::DRIVER;
    d.write32(reg::STATUS, s);
    d.write_features(F_VERSION_1);
    // Queue registers before FEATURES_OK are ignored.
    d.write32(reg::QUEUE_SEL, 0);
    d.write32(reg::QUEUE_NUM, 16);
    d.write32(reg::QUEUE_READY, 1);
    assert_eq!(d.read32(reg::QUEUE_READY), 0);
    d.write32(reg::STATUS, s | status::FEATURES_OK);
    // Sizes that are not powers of two, or too large, are refused.
    d.write32(reg::QUEUE_NUM, 48);
    d.write32(reg::QUEUE_NUM, 1 << 20);
    d.write32(reg::QUEUE_NUM, 0);
    // A ready queue whose ring lies outside guest memory: DRIVER_OK then
    // ends in NEEDS_RESET with a config interrupt, and the device does not
    // start.
    d.write32(reg::QUEUE_DESC_LOW, 0xffff_f000);
    d.write32(reg::QUEUE_DESC_HIGH, 0x10);
    d.write32(reg::QUEUE_READY, 1);
    d.write32(reg::STATUS, s | status::FEATURES_OK | status::DRIVER_OK);
    let st = d.read32(reg::STATUS);
    assert_ne!(st & status::NEEDS_RESET, 0, "status {st:#x}");
    assert!(!d.transport.is_active());
    assert_eq!(d.read32(reg::INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
    // After a reset, a well-formed set-up works.
    d.write32(reg::STATUS, 0);
    assert_eq!(d.read32(reg::INTERRUPT_STATUS), 0);
    let t = d.transport;
    let d = MmioDriver::probe(t, &g.refs(), F_VERSION_1).unwrap();
    assert!(d.transport.is_active());
}

#[test]
fn queue_registers_are_frozen_after_driver_ok_and_stray_notifies_are_ignored() {
    let (share, _) = share_with_file();
    let mut g = Guest::new(2);
    let t = fs_transport(share.path(), &g.ram, "myfs");
    let mut d = MmioDriver::probe(t, &g.refs(), F_VERSION_1).unwrap();
    d.write32(reg::QUEUE_SEL, 1);
    d.write32(reg::QUEUE_DESC_LOW, 0x10);
    d.write32(reg::QUEUE_NUM, 2);
    d.notify(9);
    d.notify(u32::MAX);
    // Clearing status bits without a reset is ignored.
    d.write32(reg::STATUS, status::ACKNOWLEDGE);
    assert!(d.transport.is_active());
    // The queue still works with its original layout.
    assert_eq!(
        g.fuse(&mut d, opcode::INIT, 0, &fuse_wire::init_body())
            .error,
        0
    );
}
