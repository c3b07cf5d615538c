//! virtio-fs daemons driven over their vhost-user socket by
//! `virtio-driver`'s frontend: `virtiofsd-rs`, and an upstream daemon with
//! the very same code. (vmm-mini's virtio-mmio device model in front of
//! them is tested in vmm-mini's own tests.)

use std::path::Path;

use virtio_driver::fs::{reads_a_host_file, FsDriver};
use virtio_driver::fuse::{self as fuse_wire, opcode};
use virtio_driver::process::{upstream_virtiofsd_or_skip, Backend};
use virtio_driver::{VhostUserDevice, F_INDIRECT_DESC, F_VERSION_1};

const OURS: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");

/// A driver with `nqueues` queues (hiprio and `nqueues - 1` request
/// queues) on the daemon at `socket`.
fn connect_queues(socket: &Path, nqueues: usize) -> FsDriver<VhostUserDevice> {
    FsDriver::new(nqueues, |ram, queues| {
        VhostUserDevice::connect(socket, ram, queues, F_VERSION_1 | F_INDIRECT_DESC)
            .expect("vhost-user setup")
    })
}

fn connect(socket: &Path) -> FsDriver<VhostUserDevice> {
    connect_queues(socket, 2)
}

#[test]
fn virtiofsd_rs_serves_the_harness_over_vhost_user() {
    let extra = ["--tag", "myfs", "--request-queues", "3"];
    reads_a_host_file(&[OURS.to_string()], &extra, connect, |g| {
        // CONFIG was negotiated because of --tag: the tag is in config space.
        let cfg = g.link.config(40).expect("GET_CONFIG");
        assert_eq!(&cfg[..4], b"myfs");
        assert_eq!(
            u32::from_le_bytes(cfg[36..40].try_into().unwrap()),
            3,
            "--request-queues is the count in config space"
        );
        // Confinement holds over the real socket too.
        let r = g.request(opcode::LOOKUP, 1, &fuse_wire::name(b"../etc"));
        assert_eq!(r.error, -libc::EINVAL);
        assert_eq!(
            g.request(opcode::LOOKUP, 1, &fuse_wire::name(b".."))
                .nodeid(),
            1
        );
    });
}

#[test]
fn the_same_harness_drives_an_upstream_daemon() {
    if let Some(cmd) = upstream_virtiofsd_or_skip() {
        reads_a_host_file(&cmd, &[], connect, |_| {});
    }
}

/// Several request queues, each served (by its own worker and ring), with
/// either engine.
#[test]
fn every_configured_request_queue_is_served_with_either_engine() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 3) as u8).collect();
    std::fs::write(share.join("f"), &data).unwrap();
    for (i, engine) in ["io-uring", "sync"].into_iter().enumerate() {
        let sock = t.path().join(format!("s{i}.sock"));
        // The daemon serves up to 8; the frontend configures 1 + 3.
        let extra = ["--io-engine", engine, "--request-queues", "8"];
        let _daemon = Backend::start(&[OURS.to_string()], &share, &sock, &extra);
        let mut g = connect_queues(&sock, 4);
        g.init();
        for q in 1..4 {
            g.queue = q;
            let node = g.lookup(1, b"f");
            let fh = g.open(node, libc::O_RDWR);
            // WRITE then READ back through this queue.
            let mut w = fuse_wire::write_in(fh, q as u64 * 4096, 4);
            w.extend_from_slice(b"q#q#");
            let r = g.request(opcode::WRITE, node, &w);
            assert_eq!(
                (r.error, &r.body[..4]),
                (0, &4u32.to_le_bytes()[..]),
                "{engine} queue {q} WRITE"
            );
            let rd = fuse_wire::read_in(fh, q as u64 * 4096, 8);
            let r = g.request(opcode::READ, node, &rd);
            let mut want = b"q#q#".to_vec();
            want.extend_from_slice(&data[q * 4096 + 4..q * 4096 + 8]);
            assert_eq!(
                (r.error, r.body.clone()),
                (0, want),
                "{engine} queue {q} READ"
            );
        }
        // READ with an unknown handle gets an errno reply on the ring path too.
        let rd = fuse_wire::read_in(999, 0, 8);
        assert_eq!(
            g.request(opcode::READ, 1, &rd).error,
            -libc::EBADF,
            "{engine}"
        );
    }
}

/// The default walls, read from the outside once a frontend is connected
/// and a READ went through the io_uring engine: the serving process is
/// alone in a PID namespace under a seccomp filter, with no_new_privs, no
/// dangerous capability and no supplementary group, and its
/// `/proc/self/fd` leads back into the share, not to the host's root.
#[test]
fn the_serving_process_is_walled_in_by_default() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: the default namespace sandbox needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello"), b"walled").unwrap();
    let mut daemon = Backend::start(&[OURS.to_string()], &share, &t.path().join("vfs.sock"), &[]);
    let mut g = connect(&daemon.socket);
    assert_eq!(g.request(opcode::INIT, 0, &fuse_wire::init_body()).error, 0);
    let node = g
        .request(opcode::LOOKUP, 1, &fuse_wire::name(b"hello"))
        .nodeid();
    let fh = g
        .request(
            opcode::OPEN,
            node,
            &fuse_wire::u32s(&[libc::O_RDONLY as u32, 0]),
        )
        .fh();
    let r = g.request(opcode::READ, node, &fuse_wire::read_in(fh, 0, 4096));
    assert_eq!(r.body, b"walled");
    let bad = sandbox::status::default_walls_violations(daemon.child.id(), &share);
    assert!(bad.is_empty(), "{bad:?}");
    drop(g);
    let st = daemon.wait_exit().expect("exits when the frontend leaves");
    assert!(st.success(), "{st:?}");
}
