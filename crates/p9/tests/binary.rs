//! The `p9d` binary: flags, errors, and bad frames over real TCP while
//! another client is being served.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let port = free_port();
    let _d = Daemon(
        Command::new(BIN)
            .args([
                "--shared-dir",
                t.path().to_str().unwrap(),
                "--listen",
                &format!("tcp:127.0.0.1:{port}"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
