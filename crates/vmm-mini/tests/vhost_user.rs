//! vmm-mini's virtio-mmio device model in front of real vhost-user
//! daemons (`virtiofsd-rs` of the same build, and upstream's), driven
//! through its registers as a guest's driver does, with no guest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use virtio_driver::fs::{reads_a_host_file, FsDriver};
use virtio_driver::fuse::{self as fuse_wire, opcode};
use virtio_driver::process::{upstream_virtiofsd_or_skip, Backend};
use virtio_driver::{Buf, MmioDriver, SplitQueue, F_INDIRECT_DESC, F_VERSION_1};
use vmm_mini::devices::{fs_config, VhostUser, VIRTIO_ID_FS};
use vmm_mini::virtio_mmio::{reg, MmioTransport};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Driver = FsDriver<MmioDriver<MmioTransport>>;

/// `virtiofsd-rs` of the same build (target/<profile>/virtiofsd-rs, next to
/// vmm-mini), or a printed skip (a failure where e2e is required) when it
/// was not built.
fn ours() -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_BIN_EXE_vmm-mini")).with_file_name("virtiofsd-rs");
    if bin.is_file() {
        return Some(bin);
    }
    let msg = format!(
        "{} is not built (cargo build -p virtiofs, same profile)",
        bin.display()
    );
    assert!(
        std::env::var_os("VIRTIOFSD_RS_REQUIRE_E2E").is_none(),
        "required here: {msg}"
    );
    eprintln!("SKIP: {msg}");
    None
}

/// vmm-mini's vhost-user device for the daemon at `socket`, behind its
/// virtio-mmio transport, probed with `nqueues` queues.
fn connect_queues(socket: &Path, nqueues: usize) -> Driver {
    FsDriver::new(nqueues, |ram, queues| {
        let dev = VhostUser::connect(
            socket,
            VIRTIO_ID_FS,
            nqueues,
            fs_config("myfs", nqueues - 1),
        )
        .expect("vhost-user connect");
        let line = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(Box::new(dev), ram.atomic(), line).unwrap();
        MmioDriver::probe(t, queues, F_VERSION_1 | F_INDIRECT_DESC).expect("probe")
    })
}

fn connect(socket: &Path) -> Driver {
    connect_queues(socket, 2)
}

/// What a rebooting guest's driver does: a device reset (the rings stop:
/// GET_VRING_BASE), then a probe with fresh queues (they start again:
/// SET_VRING_*).
fn reset_and_probe(mut g: Driver) -> Driver {
    let features = g.link.features;
    let mut transport = g.link.transport;
    transport.reset();
    let queues: Vec<SplitQueue> = (0..g.queues.len())
        .map(|_| SplitQueue::new(&mut g.ram, virtio_driver::fs::QUEUE_SIZE))
        .collect();
    let refs: Vec<&SplitQueue> = queues.iter().collect();
    let link = MmioDriver::probe(transport, &refs, features).expect("probe after reset");
    FsDriver { queues, link, ..g }
}

/// The guest-side register protocol, then FUSE requests through the
/// backend.
#[test]
fn vmm_minis_mmio_device_drives_virtiofsd_rs() {
    let Some(ours) = ours() else { return };
    reads_a_host_file(&[ours.display().to_string()], &[], connect, |g| {
        let d = &mut g.link;
        assert_eq!(d.read32(reg::DEVICE_ID), 26);
        assert_eq!(&d.config(4), b"myfs", "the tag is vmm-mini's");
        // A guest reset stops the rings (GET_VRING_BASE) without killing
        // the backend.
        d.write32(reg::STATUS, 0);
        assert!(!d.transport.is_active());
    });
}

#[test]
fn vmm_minis_mmio_device_drives_an_upstream_daemon() {
    if let Some(cmd) = upstream_virtiofsd_or_skip() {
        reads_a_host_file(&cmd, &[], connect, |_| {});
    }
}

/// A share holding `f` (with `content`) served by `virtiofsd-rs EXTRA...`.
fn serve(ours: &Path, content: &[u8], extra: &[&str]) -> (tempfile::TempDir, Backend) {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), content).unwrap();
    let sock = t.path().join("vfs.sock");
    let daemon = Backend::start(&[ours.display().to_string()], &share, &sock, extra);
    (t, daemon)
}

/// Every request queue the driver sets up behind vmm-mini's transport is
/// served (the io_uring engine, each queue by its ring).
#[test]
fn every_request_queue_behind_the_transport_is_served() {
    let Some(ours) = ours() else { return };
    let extra = ["--io-engine", "io-uring", "--request-queues", "8"];
    let (_t, daemon) = serve(&ours, b"0123456789", &extra);
    let mut g = connect_queues(&daemon.socket, 4);
    g.init();
    for q in 1..4 {
        g.queue = q;
        let node = g.lookup(1, b"f");
        let fh = g.open(node, libc::O_RDONLY);
        let r = g.request(opcode::READ, node, &fuse_wire::read_in(fh, q as u64, 4));
        assert_eq!(
            (r.error, r.body),
            (0, b"0123456789"[q..q + 4].to_vec()),
            "queue {q}"
        );
    }
}

/// A guest that breaks a request queue (an available index more than the
/// queue size ahead of the device, which no device may serve) gets that
/// queue stopped, not the worker thread serving it: hiprio, served by the
/// same thread (0) as request queue 1, and the other request queues still
/// answer. The broken queue stays stopped until the driver resets the
/// device; then it serves again.
#[test]
fn a_broken_avail_index_stops_its_queue_not_the_worker_thread() {
    let Some(ours) = ours() else { return };
    let (_t, daemon) = serve(&ours, b"data", &["--request-queues", "2"]);
    let mut g = connect_queues(&daemon.socket, 3);
    g.init();
    let node = g.lookup(1, b"f");
    g.lookup(1, b"f");
    g.lookup(1, b"f");

    let q1 = &g.queues[1];
    q1.write_avail_idx(&g.ram, q1.avail_idx().wrapping_add(q1.size() + 1));
    g.notify(1);

    // Request queue 2 has a thread of its own.
    g.queue = 2;
    assert_eq!(g.request(opcode::GETATTR, node, &[0u8; 16]).error, 0);
    // hiprio shares thread 0 with queue 1. Two FORGETs: the second is
    // notified after epoll has reported queue 1's kick to thread 0 for
    // certain, whatever order the first one was handled in.
    assert!(g.forget(node, 1), "hiprio answers after queue 1 broke");
    assert!(g.forget(node, 1), "and goes on answering");
    assert_eq!(g.request(opcode::GETATTR, node, &[0u8; 16]).error, 0);

    // Queue 1 stays stopped, even for a proper request...
    g.unique += 1;
    let req = fuse_wire::request(opcode::GETATTR, g.unique, 1, 0, &[0u8; 16]);
    g.ram.write(g.req, &req);
    let bufs = Buf::request_reply(g.req, req.len() as u32, g.reply, 4096);
    assert_eq!(g.send(1, &bufs, Duration::from_millis(300)), None);

    // ... until the driver resets the device and sets the queues up again.
    let mut g = reset_and_probe(g);
    g.queue = 1;
    assert_eq!(g.request(opcode::GETATTR, 1, &[0u8; 16]).error, 0);
    assert!(g.forget(node, 1), "hiprio after the reset");
}
