//! virtio-fs daemons driven over their vhost-user socket by the harness's
//! frontend: `virtiofsd-rs`, and an upstream daemon with the very same code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmm_mini::devices::{fs_config, VhostUser, VIRTIO_ID_FS};
use vmm_mini::fuse_wire::{self, opcode, Reply};
use vmm_mini::harness::{Buf, GuestRam, SplitQueue};
use vmm_mini::mmio_driver::MmioDriver;
use vmm_mini::vhost_frontend::{VhostUserDevice, F_INDIRECT_DESC, F_VERSION_1};
use vmm_mini::virtio_mmio::{reg, MmioTransport};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const OURS: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");

/// A daemon process with its socket; killed if still running when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(cmd: &[String], share: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("--shared-dir")
            .arg(share)
            .arg("--socket-path")
            .arg(socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{cmd:?} never created its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            socket: socket.to_path_buf(),
        }
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the guest side reaches the backend.
enum Link {
    /// The harness's frontend, queues handed over directly.
    Direct(VhostUserDevice),
    /// vmm-mini's device model: a virtio-mmio transport in front of a
    /// vhost-user frontend, driven through its registers like a guest.
    Mmio(Box<MmioDriver>),
}

/// The guest side: memory, hiprio and request queues, and the frontend.
struct Guest {
    ram: GuestRam,
    queues: Vec<SplitQueue>,
    link: Link,
    req: GuestAddress,
    reply: GuestAddress,
    unique: u64,
    /// The request queue requests go to.
    queue: usize,
}

impl Guest {
    fn connect(socket: &Path, mmio: bool) -> Guest {
        Guest::connect_queues(socket, mmio, 2)
    }

    /// `nqueues` queues: hiprio and `nqueues - 1` request queues.
    fn connect_queues(socket: &Path, mmio: bool, nqueues: usize) -> Guest {
        let mut ram = GuestRam::new(8 << 20).unwrap();
        let queues: Vec<SplitQueue> = (0..nqueues)
            .map(|_| SplitQueue::new(&mut ram, 64))
            .collect();
        let req = ram.alloc(1 << 20, 4096);
        let reply = ram.alloc(1 << 20, 4096);
        let refs: Vec<&SplitQueue> = queues.iter().collect();
        let want = F_VERSION_1 | F_INDIRECT_DESC;
        let link = if mmio {
            let dev = VhostUser::connect(
                socket,
                VIRTIO_ID_FS,
                nqueues,
                fs_config("myfs", nqueues - 1),
            )
            .expect("vhost-user connect");
            let line = EventFd::new(EFD_NONBLOCK).unwrap();
            let t = MmioTransport::new(Box::new(dev), ram.atomic(), line).unwrap();
            Link::Mmio(Box::new(MmioDriver::probe(t, &refs, want).expect("probe")))
        } else {
            Link::Direct(
                VhostUserDevice::connect(socket, &ram, &refs, want).expect("vhost-user setup"),
            )
        };
        Guest {
            ram,
            queues,
            link,
            req,
            reply,
            unique: 0,
            queue: 1,
        }
    }

    fn device(&mut self) -> &mut VhostUserDevice {
        match &mut self.link {
            Link::Direct(d) => d,
            Link::Mmio(_) => panic!("not a direct vhost-user link"),
        }
    }

    fn request(&mut self, op: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let req = fuse_wire::request(op, self.unique, nodeid, 0, body);
        self.ram.write(self.req, &req);
        let bufs = Buf::request_reply(self.req, req.len() as u32, self.reply, 1 << 20);
        let used = self.send(self.queue, &bufs, Duration::from_secs(10));
        let (_, len) = used.unwrap_or_else(|| panic!("no reply to opcode {op}"));
        Reply::parse(len, &self.ram.read(self.reply, len as usize))
    }

    /// Publishes `bufs` as one chain on queue `qi`, notifies the device and
    /// waits up to `timeout` for the chain to be used.
    fn send(&mut self, qi: usize, bufs: &[Buf], timeout: Duration) -> Option<(u32, u32)> {
        let q = &mut self.queues[qi];
        let head = q.write_chain(&self.ram, bufs);
        q.publish(&self.ram, head);
        self.notify(qi);
        let mut used = None;
        let (ram, q) = (&self.ram, &mut self.queues[qi]);
        let mut done = || {
            used = q.take_used(ram);
            used.is_some()
        };
        let answered = match &mut self.link {
            Link::Direct(d) => d.wait(qi, timeout, done),
            Link::Mmio(d) => d.wait(timeout, &mut done),
        };
        answered.then(|| used.expect("used when answered"))
    }

    /// Notifies queue `qi`.
    fn notify(&mut self, qi: usize) {
        match &mut self.link {
            Link::Direct(d) => d.kick(qi).unwrap(),
            Link::Mmio(d) => d.notify(qi as u32),
        }
    }

    /// A FORGET of `nlookup` lookups of `nodeid` on the hiprio queue (a
    /// chain with no device-writable part); whether the device returned it.
    fn forget(&mut self, nodeid: u64, nlookup: u64) -> bool {
        self.unique += 1;
        let req = fuse_wire::request(
            opcode::FORGET,
            self.unique,
            nodeid,
            0,
            &nlookup.to_le_bytes(),
        );
        self.ram.write(self.req, &req);
        let buf = Buf {
            addr: self.req,
            len: req.len() as u32,
            writable: false,
        };
        self.send(0, &[buf], Duration::from_secs(10)) == Some((0, 0))
    }

    /// What a rebooting guest's driver does with the mmio link: a device
    /// reset (the rings stop: GET_VRING_BASE), then a probe with fresh
    /// queues (they start again: SET_VRING_*).
    fn reset_and_probe(mut self) -> Guest {
        let Link::Mmio(d) = self.link else {
            panic!("needs the mmio link");
        };
        let mut transport = d.transport;
        transport.reset();
        let queues: Vec<SplitQueue> = (0..self.queues.len())
            .map(|_| SplitQueue::new(&mut self.ram, 64))
            .collect();
        let refs: Vec<&SplitQueue> = queues.iter().collect();
        let d = MmioDriver::probe(transport, &refs, d.features).expect("probe after reset");
        Guest {
            queues,
            link: Link::Mmio(Box::new(d)),
            ..self
        }
    }
}

/// What every virtio-fs daemon must do: INIT, LOOKUP, OPEN, READ of a host
/// file, over real vhost-user, then exit when the frontend goes away.
/// `more` runs daemon-specific checks before the disconnect.
fn reads_a_host_file(cmd: &[String], extra: &[&str], mmio: bool, more: impl FnOnce(&mut Guest)) {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(share.join("hello"), &data).unwrap();
    let mut daemon = Daemon::start(cmd, &share, &t.path().join("vfs.sock"), extra);
    let mut g = Guest::connect(&daemon.socket, mmio);
    assert_eq!(
        g.request(opcode::INIT, 0, &fuse_wire::init_body()).error,
        0,
        "INIT"
    );
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
    let r = g.request(opcode::READ, node, &fuse_wire::read_in(fh, 0, 200_000));
    assert_eq!(r.error, 0, "READ");
    assert_eq!(r.body, data, "the file's bytes arrive in guest memory");
    more(&mut g);
    drop(g);
    let status = daemon
        .wait_exit()
        .expect("the daemon exits when the frontend disconnects");
    assert!(status.success(), "{cmd:?} exited with {status:?}");
}

#[test]
fn virtiofsd_rs_serves_the_harness_over_vhost_user() {
    let extra = ["--tag", "myfs", "--request-queues", "3"];
    reads_a_host_file(&[OURS.to_string()], &extra, false, |g| {
        // CONFIG was negotiated because of --tag: the tag is in config space.
        let cfg = g.device().config(40).expect("GET_CONFIG");
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

/// The upstream daemon to compare with: `VIRTIOFSD_UPSTREAM` (a command
/// taking `--shared-dir`/`--socket-path`), else upstream's Rust virtiofsd
/// from `cargo install virtiofsd`, else QEMU's C virtiofsd behind
/// `tests/e2e/reference-virtiofsd.sh`.
fn upstream() -> Option<Vec<String>> {
    if let Ok(cmd) = std::env::var("VIRTIOFSD_UPSTREAM") {
        return Some(cmd.split_whitespace().map(str::to_owned).collect());
    }
    let cargo_bin =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/virtiofsd");
    if cargo_bin.exists() {
        return Some(vec![
            cargo_bin.display().to_string(),
            "--sandbox".into(),
            "none".into(),
        ]);
    }
    if Path::new("/usr/lib/qemu/virtiofsd").exists() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/reference-virtiofsd.sh");
        return Some(vec![script.display().to_string()]);
    }
    None
}

/// vmm-mini's virtio-mmio device model in front of `virtiofsd-rs`: the
/// guest-side register protocol, then FUSE requests through the backend.
#[test]
fn vmm_minis_mmio_device_drives_virtiofsd_rs() {
    reads_a_host_file(&[OURS.to_string()], &[], true, |g| {
        let Link::Mmio(d) = &mut g.link else {
            unreachable!()
        };
        assert_eq!(d.read32(reg::DEVICE_ID), 26);
        assert_eq!(&d.config(4), b"myfs", "the tag is vmm-mini's");
        // A guest reset stops the rings (GET_VRING_BASE) without killing
        // the backend.
        d.write32(reg::STATUS, 0);
        assert!(!d.transport.is_active());
    });
}

fn upstream_or_skip() -> Option<Vec<String>> {
    let found = upstream();
    if found.is_none() {
        let msg =
            "no upstream virtiofsd (cargo install virtiofsd, or QEMU's /usr/lib/qemu/virtiofsd)";
        assert!(
            std::env::var_os("VIRTIOFSD_RS_REQUIRE_E2E").is_none(),
            "required here: {msg}"
        );
        eprintln!("SKIP: {msg}");
    }
    found
}

#[test]
fn the_same_harness_drives_an_upstream_daemon() {
    if let Some(cmd) = upstream_or_skip() {
        reads_a_host_file(&cmd, &[], false, |_| {});
    }
}

#[test]
fn vmm_minis_mmio_device_drives_an_upstream_daemon() {
    if let Some(cmd) = upstream_or_skip() {
        reads_a_host_file(&cmd, &[], true, |_| {});
    }
}

/// Several request queues, each served (by its own worker and ring), with
/// either engine, directly and behind vmm-mini's transport.
#[test]
fn every_configured_request_queue_is_served_with_either_engine() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 3) as u8).collect();
    std::fs::write(share.join("f"), &data).unwrap();
    for (i, (engine, mmio)) in [("io-uring", false), ("sync", false), ("io-uring", true)]
        .into_iter()
        .enumerate()
    {
        let sock = t.path().join(format!("s{i}.sock"));
        // The daemon serves up to 8; the frontend configures 1 + 3.
        let extra = ["--io-engine", engine, "--request-queues", "8"];
        let _daemon = Daemon::start(&[OURS.to_string()], &share, &sock, &extra);
        let mut g = Guest::connect_queues(&sock, mmio, 4);
        assert_eq!(g.request(opcode::INIT, 0, &fuse_wire::init_body()).error, 0);
        for q in 1..4 {
            g.queue = q;
            let node = g
                .request(opcode::LOOKUP, 1, &fuse_wire::name(b"f"))
                .nodeid();
            let fh = g
                .request(
                    opcode::OPEN,
                    node,
                    &fuse_wire::u32s(&[libc::O_RDWR as u32, 0]),
                )
                .fh();
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

/// A guest that breaks a request queue (an available index more than the
/// queue size ahead of the device, which no device may serve) gets that
/// queue stopped, not the worker thread serving it: hiprio, served by the
/// same thread (0) as request queue 1, and the other request queues still
/// answer. The broken queue stays stopped until the driver resets the
/// device; then it serves again.
#[test]
fn a_broken_avail_index_stops_its_queue_not_the_worker_thread() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), b"data").unwrap();
    let sock = t.path().join("vfs.sock");
    let extra = ["--request-queues", "2"];
    let _daemon = Daemon::start(&[OURS.to_string()], &share, &sock, &extra);
    let mut g = Guest::connect_queues(&sock, true, 3);
    assert_eq!(g.request(opcode::INIT, 0, &fuse_wire::init_body()).error, 0);
    let lookup = |g: &mut Guest| {
        g.request(opcode::LOOKUP, 1, &fuse_wire::name(b"f"))
            .nodeid()
    };
    let node = lookup(&mut g);
    lookup(&mut g);
    lookup(&mut g);

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
    let mut g = g.reset_and_probe();
    g.queue = 1;
    assert_eq!(g.request(opcode::GETATTR, 1, &[0u8; 16]).error, 0);
    assert!(g.forget(node, 1), "hiprio after the reset");
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
    let mut daemon = Daemon::start(&[OURS.to_string()], &share, &t.path().join("vfs.sock"), &[]);
    let mut g = Guest::connect(&daemon.socket, false);
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
