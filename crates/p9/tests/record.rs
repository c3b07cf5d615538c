//! `--record-requests`: every whole frame the server receives, on a byte
//! stream (either mode) and on virtio-9p (either engine), lands in the
//! recording raw, frames back to back; frames cut short and frames over
//! msize do not; and every request is served as without a recording.
//! And in `p9d`: the file is opened before the walls go up and written
//! behind them.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use device_queue::IoEngine;
use p9::messages::*;
use p9::record::Recorder;
use p9::server::Server;
use p9::transport::{serve_connection_with, StreamConfig, StreamMode};
use p9::virtio::{P9VhostBackend, QueueDevice};
use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_driver::{Buf, GuestRam, SplitQueue};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

fn server(share: &Path) -> Arc<Server> {
    Server::new(Arc::new(PassthroughFs::new(Config::new(share)).unwrap()))
}

/// The requests both transports get: version, attach, a file created,
/// written and read back. `msize` for the version.
fn session_frames(msize: u32) -> Vec<Vec<u8>> {
    vec![
        Tmessage::Version {
            msize,
            version: b"9P2000.L",
        }
        .encode(NOTAG),
        common::attach_root(0).encode(1),
        Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![],
        }
        .encode(2),
        Tmessage::Lcreate {
            fid: 1,
            name: b"f",
            flags: libc::O_RDWR as u32,
            mode: 0o644,
            gid: 0,
        }
        .encode(3),
        Tmessage::Write {
            fid: 1,
            offset: 0,
            data: b"hello",
        }
        .encode(4),
        Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 100,
        }
        .encode(5),
    ]
}

/// Reads one reply frame.
fn recv(s: &mut UnixStream) -> (u16, Rmessage) {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).expect("a reply");
    let mut frame = vec![0u8; u32::from_le_bytes(size) as usize];
    frame[..4].copy_from_slice(&size);
    s.read_exact(&mut frame[4..]).unwrap();
    decode_rframe(&frame).expect("replies decode")
}

/// Checks the reply to request `i` of [`session_frames`]: none is
/// refused, and the Tread gets back what the Twrite wrote.
fn check_session_reply(i: usize, r: &Rmessage) {
    assert!(!matches!(r, Rmessage::Lerror { .. }), "request {i}: {r:?}");
    if i == 5 {
        assert_eq!(
            *r,
            Rmessage::Read {
                data: b"hello".to_vec()
            }
        );
    }
}

/// After a session: the file it wrote holds its bytes, and the recording
/// is `want`.
fn check_recorded(share: &Path, recording: &Path, want: &[u8]) {
    assert_eq!(std::fs::read(share.join("f")).unwrap(), b"hello");
    assert_eq!(std::fs::read(recording).unwrap(), want);
}

fn stream_frames_are_recorded_whole(mode: StreamMode) {
    let share = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let recording = out.path().join("p9.rec");
    let cfg = StreamConfig {
        mode,
        record: Some(Arc::new(Recorder::create(&recording).unwrap())),
        ..StreamConfig::default()
    };
    let (a, mut c) = UnixStream::pair().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let srv = server(share.path());
    let conn =
        std::thread::spawn(move || serve_connection_with(srv, a.try_clone().unwrap(), a, cfg));

    let mut want = Vec::new();
    for (i, frame) in session_frames(8192).iter().enumerate() {
        if i == 4 {
            // The Twrite arrives in two pieces: recorded once, whole.
            c.write_all(&frame[..9]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            c.write_all(&frame[9..]).unwrap();
        } else {
            c.write_all(frame).unwrap();
        }
        let (_, r) = recv(&mut c);
        check_session_reply(i, &r);
        want.extend_from_slice(frame);
    }
    // An R-message is received (and refused): recorded.
    let rmsg = Rmessage::Clunk.encode(6);
    c.write_all(&rmsg).unwrap();
    assert_eq!(
        recv(&mut c).1,
        Rmessage::Lerror {
            ecode: libc::EPROTO as u32
        }
    );
    want.extend_from_slice(&rmsg);
    // Over msize: refused and skipped unread, not recorded.
    let big = Tmessage::Write {
        fid: 1,
        offset: 0,
        data: &[7u8; 9000],
    }
    .encode(7);
    c.write_all(&big).unwrap();
    assert_eq!(
        recv(&mut c).1,
        Rmessage::Lerror {
            ecode: libc::EMSGSIZE as u32
        }
    );
    let clunk = Tmessage::Clunk { fid: 1 }.encode(8);
    c.write_all(&clunk).unwrap();
    assert_eq!(recv(&mut c).1, Rmessage::Clunk);
    want.extend_from_slice(&clunk);
    // Cut short by the end of the stream: not recorded.
    let cut = Tmessage::Clunk { fid: 0 }.encode(9);
    c.write_all(&cut[..cut.len() - 1]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(conn.join().unwrap().is_err(), "the stream ended mid-frame");

    check_recorded(share.path(), &recording, &want);
}

#[test]
fn stream_frames_are_recorded_whole_inline() {
    stream_frames_are_recorded_whole(StreamMode::Inline);
}

#[test]
fn stream_frames_are_recorded_whole_on_workers() {
    stream_frames_are_recorded_whole(StreamMode::Workers);
}

/// Sends `frame` as a chain whose readable part is its first `readable`
/// bytes, in two descriptors, with 64 KiB of room; returns the reply.
fn send_chain(
    dev: &P9VhostBackend,
    ram: &GuestRam,
    q: &mut SplitQueue,
    vrings: &[VringRwLock],
    (req, reply): (GuestAddress, GuestAddress),
    frame: &[u8],
    readable: usize,
) -> Vec<u8> {
    ram.write(req, frame);
    let half = (readable / 2) as u32;
    let bufs = [
        Buf::out(req, half),
        Buf::out(
            GuestAddress(req.0 + u64::from(half)),
            readable as u32 - half,
        ),
        Buf::input(reply, 1 << 16),
    ];
    let head = q.write_chain(ram, &bufs);
    q.publish(ram, head);
    dev.handle_event(0, EventSet::IN, vrings, 0).unwrap();
    let (_, used) = q.take_used(ram).expect("the chain comes back");
    ram.read(reply, used as usize)
}

fn virtio_frames_are_recorded_whole(engine: IoEngine) {
    let share = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let recording = out.path().join("p9.rec");
    let mut ram = GuestRam::new(1 << 20).unwrap();
    let mut q = SplitQueue::new(&mut ram, 16);
    let vrings = vec![q.vring(&ram).unwrap()];
    let bufs = (ram.alloc(1 << 16, 8), ram.alloc(1 << 16, 8));
    let dev = P9VhostBackend::new(server(share.path()), "share")
        .unwrap()
        .with_engine(engine)
        .with_recorder(Arc::new(Recorder::create(&recording).unwrap()));
    let rings = dev.prepare_rings();
    dev.update_memory(ram.atomic()).unwrap();

    let mut want = Vec::new();
    for (i, frame) in session_frames(1 << 16).iter().enumerate() {
        let out = send_chain(&dev, &ram, &mut q, &vrings, bufs, frame, frame.len());
        let (_, r) = decode_rframe(&out).expect("replies decode");
        check_session_reply(i, &r);
        want.extend_from_slice(frame);
    }
    if engine == IoEngine::IoUring && rings {
        assert_eq!(
            dev.inline_completions() + dev.ring_completions(),
            2,
            "Twrite and Tread went through the io_uring engine"
        );
    }
    // The readable part ends before the frame does: not recorded.
    let cut = Tmessage::Clunk { fid: 0 }.encode(6);
    send_chain(&dev, &ram, &mut q, &vrings, bufs, &cut, cut.len() - 1);
    let clunk = Tmessage::Clunk { fid: 1 }.encode(7);
    let out = send_chain(&dev, &ram, &mut q, &vrings, bufs, &clunk, clunk.len());
    assert_eq!(decode_rframe(&out).unwrap().1, Rmessage::Clunk);
    want.extend_from_slice(&clunk);

    check_recorded(share.path(), &recording, &want);
}

#[test]
fn virtio_frames_are_recorded_whole_on_the_io_uring_engine() {
    virtio_frames_are_recorded_whole(IoEngine::IoUring);
}

#[test]
fn virtio_frames_are_recorded_whole_on_the_sync_engine() {
    virtio_frames_are_recorded_whole(IoEngine::Sync);
}

/// `p9d --record-requests` records behind its default walls (as root: the
/// namespace sandbox, where the recording's path no longer exists;
/// otherwise `--sandbox none`, still under seccomp and Landlock).
#[test]
fn p9d_records_behind_its_walls() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = t.path().join("p9.sock");
    let recording = t.path().join("p9.rec");
    let listen = format!("unix:{}", sock.display());
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_p9d"));
    cmd.arg("--shared-dir")
        .arg(&share)
        .args(["--listen", &listen, "--record-requests"])
        .arg(&recording)
        .stderr(std::process::Stdio::null());
    if !root {
        cmd.args(["--sandbox", "none"]);
    }
    let mut daemon = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    let mut c = loop {
        if let Ok(c) = UnixStream::connect(&sock) {
            break c;
        }
        assert!(daemon.try_wait().unwrap().is_none(), "p9d exited");
        assert!(start.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frames = &session_frames(65536)[..2];
    for f in frames {
        c.write_all(f).unwrap();
        let (_, r) = recv(&mut c);
        assert!(!matches!(r, Rmessage::Lerror { .. }), "{r:?}");
    }
    // SAFETY: signals the daemon this test started.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    assert_eq!(std::fs::read(&recording).unwrap(), frames.concat());
}
