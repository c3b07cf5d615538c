//! The `p9d` binary: flags, errors, and bad frames over real TCP while
//! another client is being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use p9::messages::*;

const BIN: &str = env!("CARGO_BIN_EXE_p9d");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("p9d: ") && stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
}

#[test]
fn bad_flags_directories_and_addresses_are_one_line_errors() {
    assert_one_line_error(
        &run(&["--shared-dir", "/tmp", "--frobnicate"]),
        "--frobnicate",
    );
    assert_one_line_error(
        &run(&["--shared-dir", "/tmp", "--listen", "udp:1.2.3.4:5"]),
        "udp:1.2.3.4:5",
    );
    assert_one_line_error(
        &run(&[
            "--shared-dir",
            "/nonexistent",
            "--listen",
            "tcp:127.0.0.1:0",
        ]),
        "/nonexistent",
    );
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    assert_one_line_error(
        &run(&[
            "--shared-dir",
            f.to_str().unwrap(),
            "--listen",
            "tcp:127.0.0.1:0",
        ]),
        "not a directory",
    );
    assert_one_line_error(
        &run(&[
            "--shared-dir",
            "/tmp",
            "--listen",
            "unix:/nonexistent/dir/p9.sock",
        ]),
        "/nonexistent/dir/p9.sock",
    );
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts p9d on an ephemeral loopback port and learns the port from its
/// "listening on tcp:..." log line, so no other process can take it first.
fn start_on_any_port(share: &std::path::Path) -> (Daemon, u16) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args([
            "--shared-dir",
            share.to_str().unwrap(),
            "--listen",
            "tcp:127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("p9d logs where it listens").unwrap();
        if let Some(addr) = line.split("listening on tcp:").nth(1) {
            break addr.trim().rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so p9d never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Daemon(child), port)
}

/// Waits up to 10 s for the daemon to exit by itself.
fn wait_for_exit(d: &mut Daemon) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "p9d did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(port: u16) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("p9d did not listen: {e}"),
        }
    }
}

fn rpc(s: &mut TcpStream, m: Tmessage<'_>, tag: u16) -> Rmessage {
    s.write_all(&m.encode(tag)).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut frame = vec![0u8; u32::from_le_bytes(size) as usize];
    frame[..4].copy_from_slice(&size);
    s.read_exact(&mut frame[4..]).unwrap();
    let (rtag, r) = decode_rframe(&frame).unwrap();
    assert_eq!(rtag, tag);
    r
}

#[test]
fn bad_frames_from_one_client_leave_the_daemon_serving_others() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"data").unwrap();
    let (_d, port) = start_on_any_port(t.path());
    let mut good = connect(port);
    assert!(matches!(
        rpc(
            &mut good,
            Tmessage::Version {
                msize: 65536,
                version: b"9P2000.L"
            },
            NOTAG
        ),
        Rmessage::Version { .. }
    ));
    let r = rpc(
        &mut good,
        Tmessage::Attach {
            fid: 0,
            afid: NOFID,
            uname: b"root",
            aname: b"",
            n_uname: 0,
        },
        1,
    );
    assert!(matches!(r, Rmessage::Attach { .. }));

    // Malformed Tversion (diod 1.0.24 aborts on one), truncated frames,
    // garbage, a frame larger than any msize, then a hang-up.
    for garbage in [
        vec![13u8, 0, 0, 0, 100, 0xff, 0xff, 0, 0, 1, 0, 0xff, 0xff],
        vec![9, 0, 0, 0, 110, 1, 0, 0, 0],
        vec![0xff; 64],
        vec![2, 0, 0, 0],
    ] {
        let mut bad = connect(port);
        bad.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        bad.write_all(&garbage).unwrap();
        let _ = bad.read(&mut [0u8; 64]);
    }
    let mut huge = connect(port);
    huge.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
    huge.write_all(&[118, 1, 0]).unwrap();
    drop(huge);

    // The good client is still served.
    let r = rpc(
        &mut good,
        Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![b"f"],
        },
        2,
    );
    assert!(
        matches!(r, Rmessage::Walk { ref qids } if qids.len() == 1),
        "{r:?}"
    );
    assert!(
        matches!(rpc(&mut good, Tmessage::Getattr { fid: 1, mask: !0 }, 3), Rmessage::Getattr(a) if a.size == 4)
    );
}

#[test]
fn serves_an_inherited_socket_as_fd_transport() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"fd transport").unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--shared-dir",
        t.path().to_str().unwrap(),
        "--listen",
        "fd:3",
    ])
    .stderr(Stdio::null());
    // SAFETY: only async-signal-safe dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Daemon(cmd.spawn().unwrap());
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let v = Tmessage::Version {
        msize: 65536,
        version: b"9P2000.L",
    }
    .encode(NOTAG);
    ours.write_all(&v).unwrap();
    let read_reply = |s: &mut UnixStream| {
        let mut size = [0u8; 4];
        s.read_exact(&mut size).unwrap();
        let mut frame = vec![0u8; u32::from_le_bytes(size) as usize];
        frame[..4].copy_from_slice(&size);
        s.read_exact(&mut frame[4..]).unwrap();
        decode_rframe(&frame).unwrap().1
    };
    assert!(matches!(read_reply(&mut ours), Rmessage::Version { .. }));
    for (tag, m) in [
        (
            1,
            Tmessage::Attach {
                fid: 0,
                afid: NOFID,
                uname: b"root",
                aname: b"",
                n_uname: 0,
            },
        ),
        (
            2,
            Tmessage::Walk {
                fid: 0,
                newfid: 1,
                names: vec![b"f"],
            },
        ),
        (3, Tmessage::Lopen { fid: 1, flags: 0 }),
    ] {
        ours.write_all(&m.encode(tag)).unwrap();
        assert!(!matches!(read_reply(&mut ours), Rmessage::Lerror { .. }));
    }
    ours.write_all(
        &Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 100,
        }
        .encode(4),
    )
    .unwrap();
    assert_eq!(
        read_reply(&mut ours),
        Rmessage::Read {
            data: b"fd transport".to_vec()
        }
    );
    // With only fd transports, p9d ends when the connection does.
    drop(ours);
    assert!(wait_for_exit(&mut child).success(), "p9d exits 0 by itself");
}

#[test]
fn serves_virtio_9p_to_a_vhost_user_frontend() {
    use vmm_mini::harness::{Buf, GuestRam, SplitQueue};
    use vmm_mini::vhost_frontend::{VhostUserDevice, F_VERSION_1};
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"over vhost-user").unwrap();
    let sock = t.path().join("p9.sock");
    let mut daemon = Daemon(
        Command::new(BIN)
            .args([
                "--shared-dir",
                t.path().to_str().unwrap(),
                "--socket-path",
                sock.to_str().unwrap(),
                "--tag",
                "hostshare",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ram = GuestRam::new(4 << 20).unwrap();
    let mut q = SplitQueue::new(&mut ram, 16);
    let (req, reply) = (ram.alloc(65536, 8), ram.alloc(65536, 8));
    let mut dev =
        VhostUserDevice::connect(&sock, &ram, &[&q], F_VERSION_1 | 1).expect("vhost-user setup");
    assert_ne!(dev.features & 1, 0, "VIRTIO_9P_MOUNT_TAG negotiated");
    assert_eq!(dev.config(11).unwrap(), b"\x09\x00hostshare".to_vec());
    let mut rpc = |m: Tmessage<'_>| {
        let frame = m.encode(1);
        ram.write(req, &frame);
        let head = q.write_chain(
            &ram,
            &Buf::request_reply(req, frame.len() as u32, reply, 65536),
        );
        q.publish(&ram, head);
        dev.kick(0).unwrap();
        let mut used = None;
        assert!(dev.wait(0, Duration::from_secs(10), || {
            used = q.take_used(&ram);
            used.is_some()
        }));
        let (_, len) = used.unwrap();
        decode_rframe(&ram.read(reply, len as usize)).unwrap().1
    };
    assert!(matches!(
        rpc(Tmessage::Version {
            msize: 65536,
            version: b"9P2000.L"
        }),
        Rmessage::Version { .. }
    ));
    assert!(matches!(
        rpc(Tmessage::Attach {
            fid: 0,
            afid: NOFID,
            uname: b"root",
            aname: b"",
            n_uname: 0
        }),
        Rmessage::Attach { .. }
    ));
    assert!(matches!(
        rpc(Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![b"f"]
        }),
        Rmessage::Walk { .. }
    ));
    assert!(matches!(
        rpc(Tmessage::Lopen { fid: 1, flags: 0 }),
        Rmessage::Lopen { .. }
    ));
    assert_eq!(
        rpc(Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 100
        }),
        Rmessage::Read {
            data: b"over vhost-user".to_vec()
        }
    );
    drop(dev);
    assert!(
        wait_for_exit(&mut daemon).success(),
        "p9d exits 0 by itself"
    );
}
