//! The `p9d` binary: flags, errors, bad frames over real TCP while another
//! client is being served, and the defaults that keep it hardened: private
//! sockets, TCP only with `--no-auth`, attach policies, bounded fids and
//! connections.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p9::messages::*;

const BIN: &str = env!("CARGO_BIN_EXE_p9d");

/// Runs p9d to completion, or kills it after 10 s (a daemon that should
/// have refused to start, and did not).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
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
            "--no-auth",
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
            "--no-auth",
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

/// The log lines of a running p9d, as they arrive.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// How many lines so far contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits up to 10 s for `n` lines containing `needle`, then a little
    /// longer to see that no more come; returns how many there were.
    fn settle(&self, needle: &str, n: usize) -> usize {
        let start = Instant::now();
        while self.count(needle) < n && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.count(needle)
    }
}

/// Starts p9d with `--no-auth` on an ephemeral loopback port (and `extra`
/// flags) and learns the port from its "listening on tcp:..." log line, so
/// no other process can take it first.
fn start_tcp(share: &Path, extra: &[&str]) -> (Daemon, u16, Log) {
    let mut child = Command::new(BIN)
        .args([
            "--shared-dir",
            share.to_str().unwrap(),
            "--listen",
            "tcp:127.0.0.1:0",
            "--no-auth",
        ])
        .args(extra)
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
    // Keep reading the log so p9d never blocks on a full pipe.
    let log = Log::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            l.0.lock().unwrap().push(line);
        }
    });
    (Daemon(child), port, log)
}

fn start_on_any_port(share: &Path) -> (Daemon, u16) {
    let (d, port, _) = start_tcp(share, &[]);
    (d, port)
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
    let r = rpc(&mut good, common::attach_root(0), 1);
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
        (1, common::attach_root(0)),
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
    use virtio_driver::{Buf, GuestRam, SplitQueue, VhostUserDevice, F_VERSION_1};
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
        rpc(common::attach_root(0)),
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

/// Waits up to 10 s for `p` to exist.
fn wait_for_path(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no {p:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The permission bits and group of `p`.
fn mode_and_gid(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.permissions().mode() & 0o777, m.gid())
}

/// A group other than root's, so that ownership shows it was given: nogroup
/// where it exists, else root's own.
fn other_group() -> (&'static str, u32) {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    match groups
        .lines()
        .find_map(|l| l.strip_prefix("nogroup:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
    {
        Some(gid) => ("nogroup", gid),
        None => ("0", 0),
    }
}

#[test]
fn unix_and_vhost_user_sockets_are_0600_or_0660_for_the_socket_group() {
    let (group, gid) = other_group();
    for with_group in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (unix, vhost) = (t.path().join("p9.sock"), t.path().join("vhost.sock"));
        let unix_arg = format!("unix:{}", unix.display());
        let mut args = vec![
            "--shared-dir",
            t.path().to_str().unwrap(),
            "--listen",
            &unix_arg,
            "--socket-path",
            vhost.to_str().unwrap(),
        ];
        if with_group {
            args.extend(["--socket-group", group]);
        }
        let _d = Daemon(
            Command::new(BIN)
                .args(&args)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_path(&vhost);
        for p in [&unix, &vhost] {
            let (mode, g) = mode_and_gid(p);
            if with_group {
                // The socket is bound 0600, then given to the group, then
                // opened to it (0660): the test may look in between.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let mut now = (mode, g);
                while now != (0o660, gid) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    now = mode_and_gid(p);
                }
                let (mode, g) = now;
                assert_eq!((mode, g), (0o660, gid), "{p:?} given to {group}");
            } else {
                assert_eq!(mode, 0o600, "{p:?} is private");
            }
        }
    }
}

#[test]
fn tcp_without_no_auth_is_refused_at_start_with_a_one_line_error() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().to_str().unwrap();
    let sock = format!("unix:{}", t.path().join("s").display());
    for listen in [
        &["--listen", "tcp:127.0.0.1:0"][..],
        &["--listen", &sock, "--listen", "tcp:127.0.0.1:0"][..],
    ] {
        let mut args = vec!["--shared-dir", share];
        args.extend(listen);
        let out = run(&args);
        assert_one_line_error(&out, "--no-auth");
        assert_eq!(out.status.code(), Some(1));
    }
    // --help says what --no-auth gives away.
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    assert!(help.contains("--no-auth"), "{help}");
    assert!(help.contains("can act as any uid"), "{help}");
}

/// Tversion, then Tattach of fid 0 as `n_uname`.
fn attach_as(s: &mut TcpStream, fid: u32, uname: &[u8], n_uname: u32) -> Rmessage {
    assert!(matches!(
        rpc(
            s,
            Tmessage::Version {
                msize: 65536,
                version: b"9P2000.L"
            },
            NOTAG
        ),
        Rmessage::Version { .. }
    ));
    rpc(
        s,
        Tmessage::Attach {
            fid,
            afid: NOFID,
            uname,
            aname: b"",
            n_uname,
        },
        1,
    )
}

fn errno(r: &Rmessage) -> i32 {
    match r {
        Rmessage::Lerror { ecode } => *ecode as i32,
        _ => 0,
    }
}

#[test]
fn squash_root_creates_as_65534_what_uid_0_asks_for() {
    let t = tempfile::tempdir().unwrap();
    // 65534 must be able to create in the share.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_d, port, _) = start_tcp(t.path(), &["--squash-root"]);
    let mut s = connect(port);
    assert!(matches!(
        attach_as(&mut s, 0, b"root", 0),
        Rmessage::Attach { .. }
    ));
    let r = rpc(
        &mut s,
        Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![],
        },
        2,
    );
    assert!(matches!(r, Rmessage::Walk { .. }), "{r:?}");
    // Every create names gid 0, as root's client would.
    let replies = [
        rpc(
            &mut s,
            Tmessage::Lcreate {
                fid: 1,
                name: b"file",
                flags: libc::O_RDWR as u32,
                mode: 0o644,
                gid: 0,
            },
            3,
        ),
        rpc(
            &mut s,
            Tmessage::Mkdir {
                dfid: 0,
                name: b"dir",
                mode: 0o755,
                gid: 0,
            },
            4,
        ),
        rpc(
            &mut s,
            Tmessage::Symlink {
                fid: 0,
                name: b"link",
                target: b"file",
                gid: 0,
            },
            5,
        ),
        rpc(
            &mut s,
            Tmessage::Mknod {
                dfid: 0,
                name: b"fifo",
                mode: libc::S_IFIFO | 0o644,
                major: 0,
                minor: 0,
                gid: 0,
            },
            6,
        ),
    ];
    for r in &replies {
        assert_eq!(errno(r), 0, "{r:?}");
    }
    for name in ["file", "dir", "link", "fifo"] {
        let m = std::fs::symlink_metadata(t.path().join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name}");
    }
    // Acting as 65534, root's privileges are gone: a root-only file stays
    // closed.
    let secret = t.path().join("secret");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = rpc(
        &mut s,
        Tmessage::Walk {
            fid: 0,
            newfid: 2,
            names: vec![b"secret"],
        },
        7,
    );
    assert!(matches!(r, Rmessage::Walk { .. }), "{r:?}");
    let r = rpc(&mut s, Tmessage::Lopen { fid: 2, flags: 0 }, 8);
    assert_eq!(errno(&r), libc::EACCES, "{r:?}");
}

#[test]
fn allow_uids_refuses_other_uids_with_eperm_and_creates_no_fid() {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_d, port, _) = start_tcp(t.path(), &["--allow-uids", "1000,2000-2999"]);
    let mut s = connect(port);
    let r = attach_as(&mut s, 0, b"", 0);
    assert_eq!(errno(&r), libc::EPERM, "{r:?}");
    // By name (n_uname unset), root is refused too.
    let r = rpc(
        &mut s,
        Tmessage::Attach {
            fid: 0,
            afid: NOFID,
            uname: b"root",
            aname: b"",
            n_uname: NONUNAME,
        },
        2,
    );
    assert_eq!(errno(&r), libc::EPERM, "{r:?}");
    // No fid 0 was created.
    let r = rpc(
        &mut s,
        Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![],
        },
        3,
    );
    assert_eq!(errno(&r), libc::EBADF, "{r:?}");
    for (tag, uid) in [(4, 1000), (5, 2500)] {
        let r = rpc(
            &mut s,
            Tmessage::Attach {
                fid: uid,
                afid: NOFID,
                uname: b"",
                aname: b"",
                n_uname: uid,
            },
            tag,
        );
        assert!(matches!(r, Rmessage::Attach { .. }), "uid {uid}: {r:?}");
    }
    let r = rpc(
        &mut s,
        Tmessage::Attach {
            fid: 7,
            afid: NOFID,
            uname: b"",
            aname: b"",
            n_uname: 3000,
        },
        6,
    );
    assert_eq!(errno(&r), libc::EPERM, "{r:?}");
}

const FID_WARNING: &str = "--max-fids";

#[test]
fn max_fids_answers_emfile_beyond_the_limit_with_one_warning_per_connection() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"x").unwrap();
    let (_d, port, log) = start_tcp(t.path(), &["--max-fids", "8", "--xattr"]);
    let walk = |s: &mut TcpStream, newfid: u32, tag: u16| {
        rpc(
            s,
            Tmessage::Walk {
                fid: 0,
                newfid,
                names: vec![],
            },
            tag,
        )
    };
    for conn in 1..=2 {
        let mut s = connect(port);
        assert!(matches!(
            attach_as(&mut s, 0, b"", 0),
            Rmessage::Attach { .. }
        ));
        for newfid in 1..8 {
            let r = walk(&mut s, newfid, 2);
            assert!(matches!(r, Rmessage::Walk { .. }), "fid {newfid}: {r:?}");
        }
        // Eight fids: every request that would make a ninth is refused.
        for _ in 0..3 {
            assert_eq!(errno(&walk(&mut s, 8, 3)), libc::EMFILE);
        }
        let r = rpc(
            &mut s,
            Tmessage::Attach {
                fid: 8,
                afid: NOFID,
                uname: b"",
                aname: b"",
                n_uname: 0,
            },
            4,
        );
        assert_eq!(errno(&r), libc::EMFILE, "{r:?}");
        let r = rpc(
            &mut s,
            Tmessage::XattrWalk {
                fid: 0,
                newfid: 8,
                name: b"",
            },
            5,
        );
        assert_eq!(errno(&r), libc::EMFILE, "{r:?}");
        // A walk that moves a fid creates none.
        let r = rpc(
            &mut s,
            Tmessage::Walk {
                fid: 7,
                newfid: 7,
                names: vec![b"f"],
            },
            6,
        );
        assert!(matches!(r, Rmessage::Walk { .. }), "{r:?}");
        // A clunk makes room again.
        assert_eq!(rpc(&mut s, Tmessage::Clunk { fid: 1 }, 7), Rmessage::Clunk);
        assert!(matches!(walk(&mut s, 8, 8), Rmessage::Walk { .. }));
        assert_eq!(errno(&walk(&mut s, 9, 9)), libc::EMFILE);
        assert_eq!(
            log.settle(FID_WARNING, conn),
            conn,
            "one warning per connection"
        );
    }
}

/// Whether a server answers a Tversion on `s` (a refused connection is
/// closed: the write or the read fails, or the read sees the end).
fn served(s: &mut TcpStream) -> bool {
    let v = Tmessage::Version {
        msize: 65536,
        version: b"9P2000.L",
    }
    .encode(NOTAG);
    if s.write_all(&v).is_err() {
        return false;
    }
    let mut size = [0u8; 4];
    match s.read_exact(&mut size) {
        Ok(()) => {
            let mut rest = vec![0u8; u32::from_le_bytes(size) as usize - 4];
            s.read_exact(&mut rest).unwrap();
            true
        }
        Err(e) => {
            assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "a refused connection is closed at once, not left hanging"
            );
            false
        }
    }
}

const CONN_WARNING: &str = "--max-connections";

#[test]
fn max_connections_closes_one_more_at_once_and_counts_down_as_they_end() {
    let t = tempfile::tempdir().unwrap();
    let (_d, port, log) = start_tcp(t.path(), &["--max-connections", "2"]);
    let mut a = connect(port);
    let mut b = connect(port);
    assert!(served(&mut a) && served(&mut b));
    let mut c = connect(port);
    assert!(!served(&mut c), "a third connection is closed");
    assert_eq!(log.settle(CONN_WARNING, 1), 1, "with one warning");
    // The others are still served.
    assert!(served(&mut a) && served(&mut b));
    // Once one ends, another is served (the daemon notices the end a moment
    // later: retry for a while).
    drop(a);
    let start = Instant::now();
    let mut refused = 1;
    loop {
        let mut d = connect(port);
        if served(&mut d) {
            break;
        }
        refused += 1;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the count never went down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(log.settle(CONN_WARNING, refused), refused);
    assert!(served(&mut b));
}

/// p9d's default walls, read from the outside once a client attached and
/// was served: alone in a PID namespace under a seccomp filter, with
/// no_new_privs, no dangerous capability, no supplementary group, and a
/// `/proc/self/fd` that leads back into the share.
#[test]
fn the_serving_process_is_walled_in_by_default() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: the default namespace sandbox needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (daemon, port, _log) = start_tcp(t.path(), &[]);
    let mut s = connect(port);
    assert!(matches!(
        attach_as(&mut s, 1, b"root", 0),
        Rmessage::Attach { .. }
    ));
    let r = rpc(
        &mut s,
        Tmessage::Getattr {
            fid: 1,
            mask: 0x7ff,
        },
        2,
    );
    assert!(matches!(r, Rmessage::Getattr { .. }), "{r:?}");
    let bad = sandbox::status::default_walls_violations(daemon.0.id(), t.path());
    assert!(bad.is_empty(), "{bad:?}");
}
