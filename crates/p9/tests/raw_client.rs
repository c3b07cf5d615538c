//! The 9P server attacked by a raw client: walks out of the share, names
//! with `/`, symlinks and special files, fid reuse, oversized walks,
//! truncated and oversized frames, R-messages, a tiny msize. Each is refused
//! and the server keeps serving this and other clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p9::messages::*;
use p9::server::Server;
use p9::transport::{serve_connection_with, StreamConfig, StreamMode};
use p9::wire::{Qid, QTDIR};
use passthrough::{Config, PassthroughFs};

struct Client {
    s: UnixStream,
    tag: u16,
}

impl Client {
    fn connect(server: &Arc<Server>) -> Client {
        Client::connect_with(server, StreamMode::default())
    }

    fn connect_with(server: &Arc<Server>, mode: StreamMode) -> Client {
        let (a, b) = UnixStream::pair().unwrap();
        let server = server.clone();
        std::thread::spawn(move || {
            let cfg = StreamConfig {
                mode,
                ..StreamConfig::default()
            };
            let _ = serve_connection_with(server, a.try_clone().unwrap(), a, cfg);
        });
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s: b, tag: 0 }
    }

    fn send_raw(&mut self, frame: &[u8]) {
        self.s.write_all(frame).unwrap();
    }

    fn recv(&mut self) -> (u16, Rmessage) {
        let mut size = [0u8; 4];
        self.s.read_exact(&mut size).expect("a reply");
        let n = u32::from_le_bytes(size) as usize;
        let mut frame = vec![0u8; n];
        frame[..4].copy_from_slice(&size);
        self.s.read_exact(&mut frame[4..]).unwrap();
        decode_rframe(&frame).expect("the server's replies decode")
    }

    fn rpc(&mut self, m: Tmessage<'_>) -> Rmessage {
        self.tag = self.tag.wrapping_add(1) % 1000;
        let tag = self.tag;
        self.send_raw(&m.encode(tag));
        let (rtag, r) = self.recv();
        assert_eq!(rtag, tag);
        r
    }

    fn version(&mut self, msize: u32) -> Rmessage {
        self.send_raw(
            &Tmessage::Version {
                msize,
                version: b"9P2000.L",
            }
            .encode(NOTAG),
        );
        self.recv().1
    }

    fn attach(&mut self, fid: u32, aname: &[u8]) -> Rmessage {
        self.rpc(Tmessage::Attach {
            fid,
            afid: NOFID,
            uname: b"root",
            aname,
            n_uname: 0,
        })
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Rmessage {
        self.rpc(Tmessage::Walk {
            fid,
            newfid,
            names: names.to_vec(),
        })
    }

    /// A session with fid 0 attached to the share root.
    fn ready(server: &Arc<Server>) -> Client {
        Client::ready_with(server, StreamMode::default())
    }

    fn ready_with(server: &Arc<Server>, mode: StreamMode) -> Client {
        let mut c = Client::connect_with(server, mode);
        assert!(matches!(
            c.version(512 * 1024),
            Rmessage::Version { msize: 524288, .. }
        ));
        assert!(matches!(c.attach(0, b""), Rmessage::Attach { .. }));
        c
    }
}

fn errno(r: &Rmessage) -> i32 {
    match r {
        Rmessage::Lerror { ecode } => *ecode as i32,
        _ => 0,
    }
}

struct Setup {
    _base: tempfile::TempDir,
    share: PathBuf,
    outside: PathBuf,
    server: Arc<Server>,
}

fn setup() -> Setup {
    setup_with(|_| {})
}

/// A share as [`setup`] makes it, served with `tune` applied to its config.
fn setup_with(tune: impl FnOnce(&mut Config)) -> Setup {
    let base = tempfile::tempdir().unwrap();
    let share = base.path().join("share");
    let outside = base.path().join("outside");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    std::fs::write(share.join("inside"), b"guest data").unwrap();
    std::fs::create_dir(share.join("dir")).unwrap();
    let mut cfg = Config::new(&share);
    tune(&mut cfg);
    let fs = Arc::new(PassthroughFs::new(cfg).unwrap());
    Setup {
        _base: base,
        share,
        outside,
        server: Server::new(fs),
    }
}

fn root_qid(c: &mut Client) -> Qid {
    match c.rpc(Tmessage::Getattr { fid: 0, mask: !0 }) {
        Rmessage::Getattr(a) => a.qid,
        r => panic!("getattr: {r:?}"),
    }
}

fn assert_nothing_escaped(s: &Setup) {
    let names: Vec<_> = std::fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("secret")],
        "nothing created outside"
    );
    assert_eq!(
        std::fs::read(s.outside.join("secret")).unwrap(),
        b"host secret"
    );
}

const MODES: [StreamMode; 2] = [StreamMode::Inline, StreamMode::Workers];

#[test]
fn read_write_round_trip_through_fids() {
    for mode in MODES {
        read_write_round_trip(mode);
    }
}

fn read_write_round_trip(mode: StreamMode) {
    let s = setup();
    let mut c = Client::ready_with(&s.server, mode);
    assert!(matches!(c.walk(0, 1, &[]), Rmessage::Walk { ref qids } if qids.is_empty()));
    let r = c.rpc(Tmessage::Lcreate {
        fid: 1,
        name: b"new",
        flags: libc::O_RDWR as u32,
        mode: 0o640,
        gid: 0,
    });
    assert!(matches!(r, Rmessage::Lcreate { .. }), "{r:?}");
    let r = c.rpc(Tmessage::Write {
        fid: 1,
        offset: 3,
        data: b"hello",
    });
    assert_eq!(r, Rmessage::Write { count: 5 });
    let r = c.rpc(Tmessage::Read {
        fid: 1,
        offset: 0,
        count: 100,
    });
    assert_eq!(
        r,
        Rmessage::Read {
            data: b"\0\0\0hello".to_vec()
        }
    );
    assert_eq!(c.rpc(Tmessage::Clunk { fid: 1 }), Rmessage::Clunk);
    assert_eq!(std::fs::read(s.share.join("new")).unwrap(), b"\0\0\0hello");
    // Readdir lists what the host has.
    c.walk(0, 2, &[]);
    assert!(matches!(
        c.rpc(Tmessage::Lopen { fid: 2, flags: 0 }),
        Rmessage::Lopen { .. }
    ));
    let Rmessage::Readdir { data } = c.rpc(Tmessage::Readdir {
        fid: 2,
        offset: 0,
        count: 8192,
    }) else {
        panic!("readdir")
    };
    for name in ["inside", "dir", "new"] {
        assert!(
            data.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} listed"
        );
    }
}

#[test]
fn walk_dotdot_at_root_stays_at_root() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    let root = root_qid(&mut c);
    let r = c.walk(0, 1, &[b"..", b"..", b".."]);
    let Rmessage::Walk { qids } = r else {
        panic!("{r:?}")
    };
    assert_eq!(qids.len(), 3);
    assert!(qids.iter().all(|q| *q == root), "every .. is the root");
    // And from inside: dir/../.. is still the root.
    let Rmessage::Walk { qids } = c.walk(0, 2, &[b"dir", b"..", b".."]) else {
        panic!()
    };
    assert_eq!(qids[2], root);
    assert_eq!(qids[0].ty, QTDIR);
}

#[test]
fn names_with_slash_are_refused_everywhere() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    let evil: &[u8] = b"../outside/pwned";
    assert_eq!(errno(&c.walk(0, 1, &[b"../outside"])), libc::EINVAL);
    assert_eq!(errno(&c.walk(0, 1, &[b"/etc"])), libc::EINVAL);
    c.walk(0, 1, &[]);
    let r = c.rpc(Tmessage::Lcreate {
        fid: 1,
        name: evil,
        flags: 2,
        mode: 0o644,
        gid: 0,
    });
    assert_eq!(errno(&r), libc::EINVAL);
    let r = c.rpc(Tmessage::Mkdir {
        dfid: 0,
        name: evil,
        mode: 0o755,
        gid: 0,
    });
    assert_eq!(errno(&r), libc::EINVAL);
    let r = c.rpc(Tmessage::Symlink {
        fid: 0,
        name: evil,
        target: b"/etc/passwd",
        gid: 0,
    });
    assert_eq!(errno(&r), libc::EINVAL);
    let r = c.rpc(Tmessage::Mknod {
        dfid: 0,
        name: evil,
        mode: libc::S_IFREG | 0o644,
        major: 0,
        minor: 0,
        gid: 0,
    });
    assert_eq!(errno(&r), libc::EINVAL);
    let r = c.rpc(Tmessage::Renameat {
        olddirfid: 0,
        oldname: b"inside",
        newdirfid: 0,
        newname: evil,
    });
    assert_eq!(errno(&r), libc::EINVAL);
    c.walk(0, 3, &[b"inside"]);
    assert_eq!(
        errno(&c.rpc(Tmessage::Rename {
            fid: 3,
            dfid: 0,
            name: evil
        })),
        libc::EINVAL
    );
    assert_eq!(
        errno(&c.rpc(Tmessage::Link {
            dfid: 0,
            fid: 3,
            name: evil
        })),
        libc::EINVAL
    );
    assert_eq!(
        errno(&c.rpc(Tmessage::Unlinkat {
            dirfid: 0,
            name: b"../outside/secret",
            flags: 0
        })),
        libc::EINVAL
    );
    assert_nothing_escaped(&s);
    assert!(s.share.join("inside").exists());
}

#[test]
fn symlinks_out_of_the_share_are_not_followed() {
    let s = setup();
    std::os::unix::fs::symlink(&s.outside, s.share.join("door")).unwrap();
    let mut c = Client::ready(&s.server);
    // Created on the host: walking through it is ENOTDIR, opening it ELOOP.
    let r = c.walk(0, 1, &[b"door", b"secret"]);
    assert!(
        matches!(&r, Rmessage::Walk { qids } if qids.len() == 1) || errno(&r) != 0,
        "the walk stops at the link: {r:?}"
    );
    assert!(!matches!(r, Rmessage::Walk { ref qids } if qids.len() == 2));
    c.walk(0, 2, &[b"door"]);
    assert_eq!(
        errno(&c.rpc(Tmessage::Lopen { fid: 2, flags: 0 })),
        libc::ELOOP
    );
    // Created by the client.
    let r = c.rpc(Tmessage::Symlink {
        fid: 0,
        name: b"etc",
        target: b"/etc",
        gid: 0,
    });
    assert!(matches!(r, Rmessage::Symlink { .. }));
    let r = c.walk(0, 3, &[b"etc", b"passwd"]);
    assert!(
        !matches!(r, Rmessage::Walk { ref qids } if qids.len() == 2),
        "{r:?}"
    );
    assert_eq!(
        c.rpc(Tmessage::Readlink { fid: 2 }),
        Rmessage::Readlink {
            target: s.outside.as_os_str().as_encoded_bytes().to_vec()
        }
    );
}

#[test]
fn fifos_and_devices_made_by_the_client_do_not_block_or_open() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    let r = c.rpc(Tmessage::Mknod {
        dfid: 0,
        name: b"fifo",
        mode: libc::S_IFIFO | 0o666,
        major: 0,
        minor: 0,
        gid: 0,
    });
    assert!(matches!(r, Rmessage::Mknod { .. }), "{r:?}");
    c.walk(0, 1, &[b"fifo"]);
    let start = Instant::now();
    assert_eq!(
        errno(&c.rpc(Tmessage::Lopen { fid: 1, flags: 0 })),
        libc::ENXIO
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let r = c.rpc(Tmessage::Mknod {
        dfid: 0,
        name: b"null",
        mode: libc::S_IFCHR | 0o666,
        major: 1,
        minor: 3,
        gid: 0,
    });
    assert!(matches!(r, Rmessage::Mknod { .. }), "{r:?}");
    c.walk(0, 2, &[b"null"]);
    assert_eq!(
        errno(&c.rpc(Tmessage::Lopen { fid: 2, flags: 2 })),
        libc::ENXIO
    );
}

#[test]
fn fid_reuse_and_unknown_fids_are_ebadf() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    assert_eq!(errno(&c.attach(0, b"")), libc::EBADF, "fid 0 is taken");
    c.walk(0, 1, &[b"inside"]);
    assert_eq!(
        errno(&c.walk(0, 1, &[b"dir"])),
        libc::EBADF,
        "newfid 1 is taken"
    );
    assert_eq!(
        errno(&c.rpc(Tmessage::Getattr { fid: 77, mask: 0 })),
        libc::EBADF
    );
    assert_eq!(errno(&c.rpc(Tmessage::Clunk { fid: 77 })), libc::EBADF);
    assert_eq!(
        errno(&c.rpc(Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 10
        })),
        libc::EBADF,
        "reading an unopened fid"
    );
    assert_eq!(c.rpc(Tmessage::Clunk { fid: 1 }), Rmessage::Clunk);
    assert_eq!(
        errno(&c.rpc(Tmessage::Clunk { fid: 1 })),
        libc::EBADF,
        "double clunk"
    );
}

#[test]
fn partial_walk_returns_the_qids_that_succeeded() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    let r = c.walk(0, 1, &[b"dir", b"missing", b"x"]);
    let Rmessage::Walk { qids } = r else {
        panic!("{r:?}")
    };
    assert_eq!(qids.len(), 1);
    assert_eq!(
        errno(&c.rpc(Tmessage::Getattr { fid: 1, mask: 0 })),
        libc::EBADF,
        "newfid not made"
    );
    assert_eq!(errno(&c.walk(0, 1, &[b"missing"])), libc::ENOENT);
}

#[test]
fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    // 17 names.
    let names: Vec<&[u8]> = vec![b"dir"; 17];
    let r = c.walk(0, 1, &names);
    assert_eq!(errno(&r), libc::E2BIG);
    // A body shorter than the message needs (size field consistent).
    let mut f = Tmessage::Getattr { fid: 0, mask: 0 }.encode(9);
    f.truncate(f.len() - 4);
    let size = f.len() as u32;
    f[..4].copy_from_slice(&size.to_le_bytes());
    c.send_raw(&f);
    assert_eq!(
        c.recv(),
        (
            9,
            Rmessage::Lerror {
                ecode: libc::EINVAL as u32
            }
        )
    );
    // A string whose length runs past the frame.
    let mut f = Tmessage::Walk {
        fid: 0,
        newfid: 5,
        names: vec![b"dir"],
    }
    .encode(10);
    let n = f.len();
    f[n - 5] = 0xff; // the name's length field
    c.send_raw(&f);
    assert_eq!(errno(&c.recv().1), libc::EINVAL);
    // A frame larger than msize is refused without being buffered.
    let mut big = Tmessage::Write {
        fid: 0,
        offset: 0,
        data: &vec![0u8; 600 * 1024],
    }
    .encode(11);
    big.truncate(big.len());
    c.send_raw(&big);
    assert_eq!(
        c.recv(),
        (
            11,
            Rmessage::Lerror {
                ecode: libc::EMSGSIZE as u32
            }
        )
    );
    // An unknown T-type, and an R-message sent to the server.
    c.send_raw(&[7, 0, 0, 0, 250, 12, 0]);
    assert_eq!(
        c.recv(),
        (
            12,
            Rmessage::Lerror {
                ecode: libc::EOPNOTSUPP as u32
            }
        )
    );
    c.send_raw(&Rmessage::Clunk.encode(13));
    assert_eq!(
        c.recv(),
        (
            13,
            Rmessage::Lerror {
                ecode: libc::EPROTO as u32
            }
        )
    );
    c.send_raw(&[7, 0, 0, 0, 124, 14, 0]); // legacy Tstat
    assert_eq!(
        c.recv(),
        (
            14,
            Rmessage::Lerror {
                ecode: libc::EOPNOTSUPP as u32
            }
        )
    );
    // Still serving.
    assert!(matches!(
        c.rpc(Tmessage::Getattr { fid: 0, mask: 0 }),
        Rmessage::Getattr(_)
    ));
}

#[test]
fn tiny_msize_is_refused() {
    let s = setup();
    let mut c = Client::connect(&s.server);
    assert_eq!(errno(&c.version(64)), libc::EINVAL);
    assert!(matches!(
        c.version(8192),
        Rmessage::Version { msize: 8192, .. }
    ));
    assert_eq!(
        c.version(1 << 30),
        Rmessage::Version {
            msize: p9::server::MAX_MSIZE,
            version: b"9P2000.L".to_vec()
        }
    );
}

#[test]
fn broken_connection_does_not_disturb_other_clients() {
    let s = setup();
    let mut good = Client::ready(&s.server);
    let mut bad = Client::ready(&s.server);
    // A size field smaller than a header: the stream cannot be trusted.
    bad.send_raw(&[3, 0, 0, 0, 1, 2, 3]);
    let mut buf = [0u8; 1];
    // End of stream, not a read timeout: a server that never closes fails.
    match bad.s.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the bad connection must be closed, got {other:?}"),
    }
    // A connection that dies mid-frame.
    let mut half = Client::ready(&s.server);
    half.send_raw(&[100, 0, 0, 0, 24]);
    drop(half);
    assert!(matches!(
        good.rpc(Tmessage::Getattr { fid: 0, mask: 0 }),
        Rmessage::Getattr(_)
    ));
}

#[test]
fn flush_answers_after_the_flushed_request() {
    for mode in MODES {
        flush_after(mode);
    }
}

fn flush_after(mode: StreamMode) {
    let s = setup();
    std::fs::write(s.share.join("big"), vec![7u8; 400 * 1024]).unwrap();
    let mut c = Client::ready_with(&s.server, mode);
    c.walk(0, 1, &[b"big"]);
    c.rpc(Tmessage::Lopen { fid: 1, flags: 0 });
    c.send_raw(
        &Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 400 * 1024,
        }
        .encode(500),
    );
    c.send_raw(&Tmessage::Flush { oldtag: 500 }.encode(501));
    let (t1, r1) = c.recv();
    let (t2, r2) = c.recv();
    assert_eq!((t1, t2), (500, 501), "Rread before Rflush");
    assert!(matches!(r1, Rmessage::Read { ref data } if data.len() == 400 * 1024));
    assert_eq!(r2, Rmessage::Flush);
    // Flushing a tag that is not in flight answers at once.
    assert_eq!(c.rpc(Tmessage::Flush { oldtag: 999 }), Rmessage::Flush);
}

#[test]
fn clunk_and_disconnect_release_every_lookup() {
    let s = setup();
    let before = s.server.fs().inodes().len();
    {
        let mut c = Client::ready(&s.server);
        for i in 1..20u32 {
            c.walk(0, i, &[b"dir"]);
        }
        c.walk(0, 30, &[b"inside"]);
        c.rpc(Tmessage::Lopen { fid: 30, flags: 0 });
        assert!(s.server.fs().open_handles() >= 1);
    }
    // The connection closed: wait for the session to be torn down.
    let start = Instant::now();
    while s.server.fs().inodes().len() != before || s.server.fs().open_handles() != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "fids were not released"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn attach_names_the_root_or_a_path_inside() {
    let s = setup();
    let mut c = Client::connect(&s.server);
    c.version(65536);
    let root = match c.attach(0, b"/") {
        Rmessage::Attach { qid } => qid,
        r => panic!("{r:?}"),
    };
    let export = s.share.as_os_str().as_encoded_bytes().to_vec();
    assert_eq!(
        c.attach(1, &export),
        Rmessage::Attach { qid: root },
        "the export path is the root"
    );
    assert!(matches!(c.attach(2, b"dir"), Rmessage::Attach { qid } if qid != root));
    // ".." in an aname is resolved inside the share: "../outside" is the
    // share's (missing) "outside", not the host's.
    assert_eq!(errno(&c.attach(3, b"../outside")), libc::ENOENT);
    let r = c.attach(5, b"../../..");
    assert_eq!(
        r,
        Rmessage::Attach { qid: root },
        "..s in an aname stay inside"
    );
}

#[test]
fn setattr_keeps_nanoseconds_and_times_before_1970() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    c.walk(0, 1, &[b"inside"]);
    let pre_1970 = (-86400i64 * 365) as u64;
    let r = c.rpc(Tmessage::Setattr {
        fid: 1,
        attr: SetAttr {
            valid: (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8),
            atime_sec: pre_1970,
            atime_nsec: 5,
            mtime_sec: 981_173_106,
            mtime_nsec: 123_456_789,
            ..SetAttr::default()
        },
    });
    assert_eq!(r, Rmessage::Setattr);
    let Rmessage::Getattr(a) = c.rpc(Tmessage::Getattr { fid: 1, mask: !0 }) else {
        panic!()
    };
    assert_eq!((a.mtime_sec, a.mtime_nsec), (981_173_106, 123_456_789));
    assert_eq!((a.atime_sec as i64, a.atime_nsec), (-86400 * 365, 5));
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(s.share.join("inside")).unwrap();
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (981_173_106, 123_456_789),
        "on the host too"
    );
}

#[test]
fn attach_uid_and_create_gid_reach_the_host() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: needs root to act as other users");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = setup();
    std::fs::set_permissions(&s.share, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = Client::connect(&s.server);
    c.version(65536);
    let r = c.rpc(Tmessage::Attach {
        fid: 0,
        afid: NOFID,
        uname: b"",
        aname: b"",
        n_uname: 1234,
    });
    assert!(matches!(r, Rmessage::Attach { .. }), "{r:?}");
    c.walk(0, 1, &[]);
    let r = c.rpc(Tmessage::Lcreate {
        fid: 1,
        name: b"mine",
        flags: 2,
        mode: 0o600,
        gid: 5678,
    });
    assert!(matches!(r, Rmessage::Lcreate { .. }), "{r:?}");
    let r = c.rpc(Tmessage::Mkdir {
        dfid: 0,
        name: b"d",
        mode: 0o700,
        gid: 4321,
    });
    assert!(matches!(r, Rmessage::Mkdir { .. }), "{r:?}");
    let md = std::fs::metadata(s.share.join("mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let md = std::fs::metadata(s.share.join("d")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    // And uid 1234 is refused what root's files forbid.
    std::fs::write(s.share.join("rootonly"), b"x").unwrap();
    std::fs::set_permissions(
        s.share.join("rootonly"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    c.walk(0, 2, &[b"rootonly"]);
    assert_eq!(
        errno(&c.rpc(Tmessage::Lopen { fid: 2, flags: 0 })),
        libc::EACCES
    );
}

/// Many requests in one write, as a client with requests in flight sends
/// them: every one is answered once, with its own tag and its own data,
/// including a Twrite frame larger than the reader's first buffer and
/// requests split across writes.
#[test]
fn pipelined_requests_are_each_answered() {
    for mode in MODES {
        let s = setup();
        let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096) as u8).collect();
        std::fs::write(s.share.join("f"), &data).unwrap();
        let mut c = Client::ready_with(&s.server, mode);
        c.walk(0, 1, &[b"f"]);
        c.rpc(Tmessage::Lopen {
            fid: 1,
            flags: libc::O_RDWR as u32,
        });
        let mut burst = Vec::new();
        for i in 0..64u16 {
            let m = Tmessage::Read {
                fid: 1,
                offset: u64::from(i) * 4096,
                count: 4096,
            };
            burst.extend_from_slice(&m.encode(100 + i));
        }
        let big = vec![0xabu8; 300 * 1024];
        burst.extend_from_slice(
            &Tmessage::Write {
                fid: 1,
                offset: 1 << 20,
                data: &big,
            }
            .encode(200),
        );
        burst.extend_from_slice(&Tmessage::Getattr { fid: 1, mask: !0 }.encode(201));
        // Send it in uneven pieces (frames split across reads) from another
        // thread while this one reads the replies: the burst and its
        // replies together are more than the socket buffers hold, and the
        // server's reader writes replies as it goes.
        let mut w = c.s.try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let sender = std::thread::spawn(move || {
            for piece in burst.chunks(10_007) {
                w.write_all(piece).expect("the server keeps reading");
            }
        });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..66 {
            let (tag, r) = c.recv();
            assert!(seen.insert(tag), "{mode:?}: tag {tag} answered twice");
            match (tag, r) {
                (100..=163, Rmessage::Read { data }) => {
                    assert_eq!(data, vec![(tag - 100) as u8; 4096], "{mode:?}: tag {tag}")
                }
                (200, r) => assert_eq!(r, Rmessage::Write { count: 300 * 1024 }, "{mode:?}"),
                // Requests in flight are concurrent: the size may or may not
                // include the write yet.
                (201, Rmessage::Getattr(_)) => {}
                (tag, r) => panic!("{mode:?}: tag {tag}: {r:?}"),
            }
        }
        sender.join().unwrap();
        let on_disk = std::fs::read(s.share.join("f")).unwrap();
        assert_eq!(&on_disk[1 << 20..], &big[..], "{mode:?}");
    }
}

/// The fd transport (`p9d --listen fd:R,W`) may be a pair of pipes: the
/// reader's polling cannot `recv` from a pipe and falls back to `poll`.
#[test]
fn a_pair_of_pipes_is_served() {
    use std::os::fd::FromRawFd;
    let s = setup();
    let pipe = || {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are fresh and owned only here.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    };
    let (server_r, mut client_w) = pipe();
    let (mut client_r, server_w) = pipe();
    let server = s.server.clone();
    let conn = std::thread::spawn(move || {
        serve_connection_with(server, server_r, server_w, StreamConfig::default())
    });
    {
        let mut rpc = |m: Tmessage<'_>, tag: u16| {
            client_w.write_all(&m.encode(tag)).unwrap();
            let mut size = [0u8; 4];
            client_r.read_exact(&mut size).unwrap();
            let mut frame = vec![0u8; u32::from_le_bytes(size) as usize];
            frame[..4].copy_from_slice(&size);
            client_r.read_exact(&mut frame[4..]).unwrap();
            let (rtag, r) = decode_rframe(&frame).unwrap();
            assert_eq!(rtag, tag);
            r
        };
        let v = rpc(
            Tmessage::Version {
                msize: 65536,
                version: b"9P2000.L",
            },
            NOTAG,
        );
        assert!(matches!(v, Rmessage::Version { msize: 65536, .. }), "{v:?}");
        let a = Tmessage::Attach {
            fid: 0,
            afid: NOFID,
            uname: b"root",
            aname: b"",
            n_uname: 0,
        };
        assert!(matches!(rpc(a, 1), Rmessage::Attach { .. }));
        // Several round trips, so the reader polls the pipe between them.
        for tag in 2..50 {
            let w = Tmessage::Walk {
                fid: 0,
                newfid: 1,
                names: vec![b"inside"],
            };
            assert!(matches!(rpc(w, tag), Rmessage::Walk { .. }));
            assert!(matches!(
                rpc(Tmessage::Clunk { fid: 1 }, tag),
                Rmessage::Clunk
            ));
        }
    }
    drop(client_w);
    conn.join().unwrap().unwrap();
}

/// More requests than the workers may hold (p9::transport::MAX_DISPATCHED),
/// sent before any reply is read, with replies that fill the socket: the
/// reader stops taking requests until replies are read (so the client's
/// writes block: the server queues no more), then serves the rest. Every
/// request is answered once, with its own data.
#[test]
fn requests_beyond_the_dispatch_limit_wait_and_are_all_answered() {
    let s = setup();
    let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096) as u8).collect();
    std::fs::write(s.share.join("f"), &data).unwrap();
    let mut c = Client::ready_with(&s.server, StreamMode::Workers);
    c.walk(0, 1, &[b"f"]);
    c.rpc(Tmessage::Lopen { fid: 1, flags: 0 });
    c.walk(0, 2, &[b"f"]);
    c.rpc(Tmessage::Lopen {
        fid: 2,
        flags: libc::O_WRONLY as u32,
    });
    // Reads whose 4 KiB replies fill the socket, then 16 MiB of writes (of
    // what the file holds) the server may not take in until the replies
    // are read.
    let reads = p9::transport::MAX_DISPATCHED as u16 + 64;
    let writes = 64u16;
    let mut burst = Vec::new();
    for tag in 0..reads {
        let m = Tmessage::Read {
            fid: 1,
            offset: u64::from(tag % 64) * 4096,
            count: 4096,
        };
        burst.extend_from_slice(&m.encode(tag));
    }
    for i in 0..writes {
        let m = Tmessage::Write {
            fid: 2,
            offset: 0,
            data: &data,
        };
        burst.extend_from_slice(&m.encode(reads + i));
    }
    let mut w = c.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let sender = std::thread::spawn(move || w.write_all(&burst).expect("the server reads on"));
    // Give the server time to take in all it would; a slow machine can only
    // hide a missing limit here, not report one that is there.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sender.is_finished(),
        "the server took in every request without its replies being read"
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..reads + writes {
        let (tag, r) = c.recv();
        assert!(seen.insert(tag), "tag {tag} answered twice");
        match r {
            Rmessage::Read { data } if tag < reads => {
                assert_eq!(data, vec![(tag % 64) as u8; 4096], "tag {tag}")
            }
            Rmessage::Write { count } if tag >= reads => assert_eq!(count as usize, data.len()),
            r => panic!("tag {tag}: {r:?}"),
        }
    }
    sender.join().unwrap();
    // The connection still serves.
    assert!(matches!(
        c.rpc(Tmessage::Getattr { fid: 1, mask: !0 }),
        Rmessage::Getattr(_)
    ));
}

/// Tflush never holds a worker: flushes of requests that always go to the
/// workers (Tfsync), twice as many as there are workers, sent before the
/// requests they name (answered at once: nothing to wait for) and after
/// them (answered after each request's reply), are all answered, and the
/// connection serves on.
#[test]
fn flushes_of_requests_on_workers_are_answered_after_them() {
    for mode in MODES {
        let s = setup();
        let mut c = Client::ready_with(&s.server, mode);
        c.walk(0, 1, &[b"inside"]);
        c.rpc(Tmessage::Lopen {
            fid: 1,
            flags: libc::O_RDWR as u32,
        });
        let n = p9::transport::WORKERS_PER_CONNECTION as u16 * 2;
        let mut burst = Vec::new();
        for i in 0..n {
            burst.extend_from_slice(&Tmessage::Flush { oldtag: 100 + i }.encode(200 + i));
        }
        for i in 0..n {
            let m = Tmessage::Fsync {
                fid: 1,
                datasync: 0,
            };
            burst.extend_from_slice(&m.encode(100 + i));
        }
        for i in 0..n {
            burst.extend_from_slice(&Tmessage::Flush { oldtag: 100 + i }.encode(300 + i));
        }
        c.send_raw(&burst);
        let mut order = std::collections::HashMap::new();
        for k in 0..3 * n {
            let (tag, r) = c.recv();
            assert!(order.insert(tag, k).is_none(), "{mode:?}: tag {tag} twice");
            match tag {
                100..=199 => assert_eq!(r, Rmessage::Fsync, "{mode:?}: tag {tag}"),
                _ => assert_eq!(r, Rmessage::Flush, "{mode:?}: tag {tag}"),
            }
        }
        for i in 0..n {
            assert!(
                order[&(300 + i)] > order[&(100 + i)],
                "{mode:?}: the Rflush of {} came before its reply",
                100 + i
            );
        }
        assert!(matches!(
            c.rpc(Tmessage::Getattr { fid: 1, mask: !0 }),
            Rmessage::Getattr(_)
        ));
    }
}

/// The variable naming the one test a re-executed test binary runs as a
/// child (see [`run_in_child`]).
const CHILD_ENV: &str = "P9_RAW_CLIENT_TEST_CHILD";

/// Whether this process is the child [`run_in_child`] started for `test`.
fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(test)
}

/// Runs the test `test` again in a child process (this test binary, that
/// test alone) and asserts that it passed: for a check under a process-wide
/// `setrlimit` the other tests must not share.
fn run_in_child(test: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child running {test} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run {test}:\n{stdout}"
    );
}

fn tlcreate(c: &mut Client, fid: u32, name: &[u8], flags: i32) -> Rmessage {
    c.rpc(Tmessage::Lcreate {
        fid,
        name,
        flags: flags as u32,
        mode: 0o644,
        gid: 0,
    })
}

#[test]
fn tlcreate_over_a_device_node_is_refused_and_the_connection_serves_on() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    // /dev/zero's numbers.
    let r = c.rpc(Tmessage::Mknod {
        dfid: 0,
        name: b"zdev",
        mode: libc::S_IFCHR | 0o666,
        major: 1,
        minor: 5,
        gid: 0,
    });
    assert!(matches!(r, Rmessage::Mknod { .. }), "{r:?}");
    c.walk(0, 1, &[]);
    let r = tlcreate(&mut c, 1, b"zdev", libc::O_RDWR);
    if matches!(r, Rmessage::Lcreate { .. }) {
        let read = c.rpc(Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 16,
        });
        panic!("Tlcreate opened the host device: {read:?}");
    }
    assert_eq!(errno(&r), libc::ENXIO);
    // The fid still names the directory, and the connection serves on.
    assert!(matches!(
        c.rpc(Tmessage::Getattr { fid: 1, mask: !0 }),
        Rmessage::Getattr(a) if a.qid.ty == QTDIR
    ));
    assert!(matches!(
        c.rpc(Tmessage::Getattr { fid: 0, mask: !0 }),
        Rmessage::Getattr(_)
    ));
}

#[test]
fn tlcreate_over_a_host_fifo_answers_at_once() {
    let s = setup();
    let path = std::ffi::CString::new(s.share.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let mut c = Client::ready(&s.server);
    c.walk(0, 1, &[]);
    let start = Instant::now();
    // A server blocked in open(O_WRONLY) never answers: the client's 10 s
    // read timeout fails the test.
    let r = tlcreate(&mut c, 1, b"fifo", libc::O_WRONLY);
    assert_eq!(errno(&r), libc::ENXIO, "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        c.rpc(Tmessage::Getattr { fid: 0, mask: !0 }),
        Rmessage::Getattr(_)
    ));
}

const XATTRCREATE_CHILD: &str = "txattrcreate_of_a_2_pow_40_size_is_e2big_without_allocating_it";

#[test]
fn txattrcreate_of_a_2_pow_40_size_is_e2big_without_allocating_it() {
    if !is_child(XATTRCREATE_CHILD) {
        return run_in_child(XATTRCREATE_CHILD);
    }
    let s = setup_with(|cfg| cfg.xattr = true);
    let mut c = Client::ready(&s.server);
    // Any allocation of the client's size now fails (and aborts the child).
    let rl = libc::rlimit {
        rlim_cur: 1 << 30,
        rlim_max: 1 << 30,
    };
    // SAFETY: `rl` is a valid rlimit; setrlimit only reads it.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    c.walk(0, 1, &[b"inside"]);
    let r = c.rpc(Tmessage::XattrCreate {
        fid: 1,
        name: b"user.big",
        size: 1 << 40,
        flags: 0,
    });
    assert_eq!(errno(&r), libc::E2BIG);
    let r = c.rpc(Tmessage::XattrCreate {
        fid: 1,
        name: b"user.big",
        size: 65537,
        flags: 0,
    });
    assert_eq!(errno(&r), libc::E2BIG);
    // The fid is untouched and the connection serves on.
    assert!(matches!(
        c.rpc(Tmessage::Getattr { fid: 1, mask: !0 }),
        Rmessage::Getattr(_)
    ));
    assert_eq!(c.rpc(Tmessage::Clunk { fid: 1 }), Rmessage::Clunk);
}

#[test]
fn txattrwalk_of_an_empty_value_or_list_is_size_0() {
    let s = setup_with(|cfg| cfg.xattr = true);
    let mut c = Client::ready(&s.server);
    c.walk(0, 1, &[b"inside"]);
    // No attributes yet: the list is empty.
    let r = c.rpc(Tmessage::XattrWalk {
        fid: 1,
        newfid: 2,
        name: b"",
    });
    assert_eq!(r, Rmessage::XattrWalk { size: 0 });
    assert_eq!(c.rpc(Tmessage::Clunk { fid: 2 }), Rmessage::Clunk);
    // An attribute with an empty value.
    let path =
        std::ffi::CString::new(s.share.join("inside").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path and name; a zero-length value.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.empty".as_ptr(),
            std::ptr::null(),
            0,
            0,
        )
    };
    assert_eq!(rc, 0);
    let r = c.rpc(Tmessage::XattrWalk {
        fid: 1,
        newfid: 3,
        name: b"user.empty",
    });
    assert_eq!(r, Rmessage::XattrWalk { size: 0 });
    let r = c.rpc(Tmessage::Read {
        fid: 3,
        offset: 0,
        count: 100,
    });
    assert_eq!(r, Rmessage::Read { data: Vec::new() });
}

#[test]
fn tlock_is_served_although_fuse_posix_locks_are_not_offered() {
    let s = setup();
    assert!(!s.server.fs().config().posix_locks);
    let mut c = Client::ready(&s.server);
    for fid in [1, 2] {
        c.walk(0, fid, &[b"inside"]);
        assert!(matches!(
            c.rpc(Tmessage::Lopen {
                fid,
                flags: libc::O_RDWR as u32
            }),
            Rmessage::Lopen { .. }
        ));
    }
    let lock = |ty: i32| Lock {
        ty: ty as u8,
        start: 0,
        length: 0,
        proc_id: 1,
        client_id: b"c".as_slice(),
    };
    let r = c.rpc(Tmessage::Lock {
        fid: 1,
        flags: 0,
        lock: lock(libc::F_WRLCK),
    });
    assert_eq!(r, Rmessage::Lock { status: 0 }, "taken");
    let r = c.rpc(Tmessage::Lock {
        fid: 2,
        flags: 1,
        lock: lock(libc::F_WRLCK),
    });
    assert_eq!(r, Rmessage::Lock { status: 1 }, "blocked, answered at once");
    let r = c.rpc(Tmessage::GetLock {
        fid: 2,
        lock: lock(libc::F_WRLCK),
    });
    assert!(
        matches!(&r, Rmessage::GetLock(l) if l.ty == libc::F_WRLCK as u8),
        "{r:?}"
    );
}

#[test]
fn txattrcreate_and_txattrwalk_without_xattr_are_eopnotsupp_at_once() {
    let s = setup();
    assert!(!s.server.fs().config().xattr);
    let mut c = Client::ready(&s.server);
    c.walk(0, 1, &[b"inside"]);
    let r = c.rpc(Tmessage::XattrCreate {
        fid: 1,
        name: b"user.x",
        size: 65536,
        flags: 0,
    });
    assert_eq!(errno(&r), libc::EOPNOTSUPP, "{r:?}");
    for name in [b"".as_slice(), b"user.x"] {
        let r = c.rpc(Tmessage::XattrWalk {
            fid: 1,
            newfid: 2,
            name,
        });
        assert_eq!(errno(&r), libc::EOPNOTSUPP, "{r:?}");
    }
    assert_eq!(
        errno(&c.rpc(Tmessage::Clunk { fid: 2 })),
        libc::EBADF,
        "no xattr fid was made"
    );
    // Fid 1 holds no pending value: it opens, and its clunk succeeds.
    assert!(matches!(
        c.rpc(Tmessage::Lopen { fid: 1, flags: 0 }),
        Rmessage::Lopen { .. }
    ));
    assert_eq!(c.rpc(Tmessage::Clunk { fid: 1 }), Rmessage::Clunk);
}

fn xattrcreate(c: &mut Client, fid: u32, size: u64) -> Rmessage {
    c.rpc(Tmessage::XattrCreate {
        fid,
        name: b"user.v",
        size,
        flags: 0,
    })
}

/// Fills the session's xattr bound with fids 1..=n, each a pending 64 KiB
/// Txattrcreate on "inside"; returns n.
fn fill_xattr_bytes(c: &mut Client) -> u32 {
    let n = (p9::fid_table::MAX_XATTR_BYTES_PER_SESSION / 65536) as u32;
    for fid in 1..=n {
        assert!(matches!(
            c.walk(0, fid, &[b"inside"]),
            Rmessage::Walk { .. }
        ));
        let r = xattrcreate(c, fid, 65536);
        assert_eq!(r, Rmessage::XattrCreate, "fid {fid}");
    }
    n
}

/// Sets the extended attribute `name` of the share's file `file` on the
/// host.
fn host_setxattr(s: &Setup, file: &str, name: &std::ffi::CStr, value: &[u8]) {
    let path = std::ffi::CString::new(s.share.join(file).as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path and name; `value` is readable for its length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// The bytes pending Txattrcreates and Txattrwalk values of one session
/// hold are bounded (p9::fid_table::MAX_XATTR_BYTES_PER_SESSION): past
/// the bound both are ENOMEM and make no fid; Tclunk, Tremove and the end
/// of the session (here Tversion) give the bytes back. Without the bound
/// every fid could hold 64 KiB: 4 GiB with the default --max-fids.
#[test]
fn xattr_fids_of_a_session_hold_at_most_max_xattr_bytes() {
    let s = setup_with(|cfg| cfg.xattr = true);
    std::fs::write(s.share.join("scratch"), b"").unwrap();
    for file in ["inside", "scratch"] {
        host_setxattr(&s, file, c"user.four_k", &[7u8; 4000]);
    }
    let mut c = Client::ready(&s.server);
    c.walk(0, 100, &[b"scratch"]);
    c.walk(0, 101, &[b"inside"]);
    let walk_value = |c: &mut Client, fid, newfid| {
        c.rpc(Tmessage::XattrWalk {
            fid,
            newfid,
            name: b"user.four_k",
        })
    };
    let n = fill_xattr_bytes(&mut c);
    // Full: another pending value, or a value read, is ENOMEM and makes no
    // fid (nor is the fid it was asked of changed).
    c.walk(0, 1000, &[b"inside"]);
    assert_eq!(errno(&xattrcreate(&mut c, 1000, 65536)), libc::ENOMEM);
    assert_eq!(errno(&xattrcreate(&mut c, 1000, 1)), libc::ENOMEM);
    assert_eq!(errno(&walk_value(&mut c, 101, 1001)), libc::ENOMEM);
    assert_eq!(errno(&c.rpc(Tmessage::Clunk { fid: 1001 })), libc::EBADF);
    // A value of size 0 (a removal) holds nothing.
    assert_eq!(xattrcreate(&mut c, 1000, 0), Rmessage::XattrCreate);
    // Tclunk gives a pending value's bytes back (its value is incomplete,
    // so the clunk is EINVAL, but the fid is gone).
    assert_eq!(errno(&c.rpc(Tmessage::Clunk { fid: 1 })), libc::EINVAL);
    // 64 KiB free, and values read count too: 16 of 4000 bytes leave 1536.
    for newfid in 2000..2015 {
        let r = walk_value(&mut c, 101, newfid);
        assert_eq!(r, Rmessage::XattrWalk { size: 4000 }, "fid {newfid}");
    }
    let r = walk_value(&mut c, 100, 2015);
    assert_eq!(r, Rmessage::XattrWalk { size: 4000 });
    let free = 65536 - 16 * 4000;
    c.walk(0, 1002, &[b"inside"]);
    assert_eq!(errno(&xattrcreate(&mut c, 1002, free + 1)), libc::ENOMEM);
    assert_eq!(xattrcreate(&mut c, 1002, free), Rmessage::XattrCreate);
    assert_eq!(errno(&walk_value(&mut c, 101, 2016)), libc::ENOMEM);
    // Tremove of an xattr fid (it names the file it was read from) gives
    // its bytes back.
    assert_eq!(c.rpc(Tmessage::Remove { fid: 2015 }), Rmessage::Remove);
    assert!(!s.share.join("scratch").exists());
    let r = walk_value(&mut c, 101, 2016);
    assert_eq!(r, Rmessage::XattrWalk { size: 4000 });
    // The end of a session gives everything back: after Tversion the
    // bound is whole again.
    assert!(matches!(c.version(65536), Rmessage::Version { .. }));
    assert!(matches!(c.attach(0, b""), Rmessage::Attach { .. }));
    assert_eq!(fill_xattr_bytes(&mut c), n);
    assert_eq!(errno(&c.rpc(Tmessage::Clunk { fid: n })), libc::EINVAL);
    // A value grown as its Twrites arrive reaches the host whole.
    c.walk(0, 4000, &[b"dir"]);
    assert_eq!(xattrcreate(&mut c, 4000, 3000), Rmessage::XattrCreate);
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut offset = 0;
    for piece in data.chunks(700) {
        let r = c.rpc(Tmessage::Write {
            fid: 4000,
            offset,
            data: piece,
        });
        let count = piece.len() as u32;
        assert_eq!(r, Rmessage::Write { count });
        offset += piece.len() as u64;
    }
    assert_eq!(c.rpc(Tmessage::Clunk { fid: 4000 }), Rmessage::Clunk);
    let dir = std::ffi::CString::new(s.share.join("dir").as_os_str().as_encoded_bytes()).unwrap();
    let mut got = vec![0u8; 4096];
    // SAFETY: NUL-terminated path and name; `got` is writable for its length.
    let len = unsafe {
        libc::getxattr(
            dir.as_ptr(),
            c"user.v".as_ptr(),
            got.as_mut_ptr().cast(),
            got.len(),
        )
    };
    assert_eq!(len, 3000);
    got.truncate(3000);
    assert_eq!(got, data);
}

/// A fid's path from the share root is at most
/// p9::fid_table::MAX_PATH_BYTES (PATH_MAX less its NUL): a chain of
/// directories deeper than that can be made (Tmkdir keeps no path) but no
/// fid stands below it, so no fid copies more than that many bytes of path.
/// Twalk, Tlcreate, Trename and Tattach that would go deeper are
/// ENAMETOOLONG and change nothing; Tremove (which walks the parent from
/// the root) still works at the deepest level allowed.
#[test]
fn a_fid_path_longer_than_path_max_is_enametoolong() {
    let s = setup();
    let mut c = Client::ready(&s.server);
    let name = [b'd'; 200];
    let levels = p9::fid_table::MAX_PATH_BYTES / (name.len() + 1);
    assert_eq!(levels, 20);
    let mkdir = |c: &mut Client, dfid, name: &[u8]| {
        let r = c.rpc(Tmessage::Mkdir {
            dfid,
            name,
            mode: 0o755,
            gid: 0,
        });
        assert!(matches!(r, Rmessage::Mkdir { .. }), "{r:?}");
    };
    let qid = |c: &mut Client, fid| match c.rpc(Tmessage::Getattr { fid, mask: !0 }) {
        Rmessage::Getattr(a) => a.qid,
        r => panic!("getattr: {r:?}"),
    };
    c.walk(0, 1, &[]);
    for _ in 0..levels {
        mkdir(&mut c, 1, &name);
        assert!(matches!(c.walk(1, 1, &[&name]), Rmessage::Walk { .. }));
    }
    let deepest = qid(&mut c, 1);
    // One level more exists, but no fid may stand there.
    mkdir(&mut c, 1, &name);
    assert_eq!(errno(&c.walk(1, 2, &[&name])), libc::ENAMETOOLONG);
    assert_eq!(errno(&c.rpc(Tmessage::Clunk { fid: 2 })), libc::EBADF);
    assert_eq!(errno(&c.walk(1, 1, &[&name])), libc::ENAMETOOLONG);
    assert_eq!(qid(&mut c, 1), deepest, "the fid stayed");
    // Walking through it and back is fine: only where a walk ends counts.
    let r = c.walk(1, 3, &[&name, b".."]);
    assert!(
        matches!(&r, Rmessage::Walk { qids } if qids[1] == deepest),
        "{r:?}"
    );
    // Tlcreate of a name that does not fit creates nothing.
    let long = [b'f'; 80];
    c.walk(1, 4, &[]);
    assert_eq!(
        errno(&tlcreate(&mut c, 4, &long, libc::O_RDWR)),
        libc::ENAMETOOLONG
    );
    assert_eq!(qid(&mut c, 4), deepest, "the fid still names the directory");
    mkdir(&mut c, 1, &long); // EEXIST had Tlcreate made it
                             // Trename to a name that does not fit renames nothing.
    c.walk(0, 5, &[b"inside"]);
    let r = c.rpc(Tmessage::Rename {
        fid: 5,
        dfid: 1,
        name: &long[..79],
    });
    assert_eq!(errno(&r), libc::ENAMETOOLONG);
    assert!(s.share.join("inside").exists());
    // Tattach: the deepest level allowed, and not one more.
    let aname = |n| vec![&name[..]; n].join(&b'/');
    assert_eq!(
        c.attach(6, &aname(levels)),
        Rmessage::Attach { qid: deepest }
    );
    assert_eq!(errno(&c.attach(7, &aname(levels + 1))), libc::ENAMETOOLONG);
    // Tremove at the deepest level: its parent is walked from the root.
    let r = c.rpc(Tmessage::Unlinkat {
        dirfid: 1,
        name: &name,
        flags: libc::AT_REMOVEDIR as u32,
    });
    assert_eq!(r, Rmessage::Unlinkat);
    let r = c.rpc(Tmessage::Unlinkat {
        dirfid: 1,
        name: &long,
        flags: libc::AT_REMOVEDIR as u32,
    });
    assert_eq!(r, Rmessage::Unlinkat);
    for fid in [3, 4, 6] {
        assert_eq!(c.rpc(Tmessage::Clunk { fid }), Rmessage::Clunk);
    }
    assert_eq!(c.rpc(Tmessage::Remove { fid: 1 }), Rmessage::Remove);
    let chain = vec![&name[..]; levels - 1];
    c.walk(0, 8, &[]);
    for part in chain.chunks(16) {
        assert!(matches!(c.walk(8, 8, part), Rmessage::Walk { .. }));
    }
    assert_eq!(errno(&c.walk(8, 9, &[&name])), libc::ENOENT, "removed");
}

/// An aname's `..` takes a component off the path the fid keeps, as a
/// Twalk's does: "dir/.." is the root, so a later `..` stays there and
/// Tremove of that fid (which removes the last component of its path) is
/// EBUSY, not an rmdir of "dir".
#[test]
fn an_aname_with_dotdot_keeps_the_path_it_reaches() {
    let s = setup();
    let mut c = Client::connect(&s.server);
    c.version(65536);
    let root = match c.attach(0, b"") {
        Rmessage::Attach { qid } => qid,
        r => panic!("{r:?}"),
    };
    assert_eq!(c.attach(1, b"dir/.."), Rmessage::Attach { qid: root });
    let r = c.walk(1, 2, &[b".."]);
    assert_eq!(r, Rmessage::Walk { qids: vec![root] });
    assert_eq!(
        errno(&c.rpc(Tmessage::Remove { fid: 2 })),
        libc::EBUSY,
        "the root has no parent in the share"
    );
    assert!(s.share.join("dir").is_dir(), "dir was not removed");
}

/// Sets `name` = `value` on `fid` (walked to a clone first, as the Linux
/// client does): Txattrcreate, Twrite, and the Tclunk that commits it.
fn set_xattr(c: &mut Client, fid: u32, name: &[u8], value: &[u8]) -> Rmessage {
    let tmp = 90;
    assert!(matches!(c.walk(fid, tmp, &[]), Rmessage::Walk { .. }));
    let r = c.rpc(Tmessage::XattrCreate {
        fid: tmp,
        name,
        size: value.len() as u64,
        flags: 0,
    });
    assert_eq!(
        r,
        Rmessage::XattrCreate,
        "{}",
        String::from_utf8_lossy(name)
    );
    let r = c.rpc(Tmessage::Write {
        fid: tmp,
        offset: 0,
        data: value,
    });
    assert_eq!(
        r,
        Rmessage::Write {
            count: value.len() as u32
        }
    );
    c.rpc(Tmessage::Clunk { fid: tmp })
}

/// Reads `name` of `fid` with Txattrwalk and Tread (empty `name`: the list).
fn get_xattr(c: &mut Client, fid: u32, name: &[u8]) -> Result<Vec<u8>, i32> {
    let tmp = 91;
    let size = match c.rpc(Tmessage::XattrWalk {
        fid,
        newfid: tmp,
        name,
    }) {
        Rmessage::XattrWalk { size } => size,
        r => return Err(errno(&r)),
    };
    let r = c.rpc(Tmessage::Read {
        fid: tmp,
        offset: 0,
        count: size as u32,
    });
    assert_eq!(c.rpc(Tmessage::Clunk { fid: tmp }), Rmessage::Clunk);
    match r {
        Rmessage::Read { data } => Ok(data),
        r => Err(errno(&r)),
    }
}

/// Extended attributes through 9P end to end: set, read back, list, on a
/// file and (xfstests generic/062) on a symlink, whose trusted.* xattrs are
/// its own (never its target's) and whose user.* ones Linux refuses.
#[test]
fn xattrs_round_trip_on_files_and_symlinks() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: trusted.* xattrs need root");
        return;
    }
    let s = setup_with(|cfg| cfg.xattr = true);
    std::os::unix::fs::symlink("inside", s.share.join("link")).unwrap();
    let mut c = Client::ready(&s.server);
    assert!(matches!(c.walk(0, 1, &[b"inside"]), Rmessage::Walk { .. }));
    assert!(matches!(c.walk(0, 2, &[b"link"]), Rmessage::Walk { .. }));

    assert_eq!(
        set_xattr(&mut c, 1, b"user.nine", b"p value"),
        Rmessage::Clunk
    );
    assert_eq!(get_xattr(&mut c, 1, b"user.nine").unwrap(), b"p value");
    assert_eq!(get_xattr(&mut c, 1, b"").unwrap(), b"user.nine\0");
    assert_eq!(get_xattr(&mut c, 1, b"user.none"), Err(libc::ENODATA));

    assert_eq!(
        set_xattr(&mut c, 2, b"trusted.nine", b"on the link"),
        Rmessage::Clunk
    );
    assert_eq!(
        get_xattr(&mut c, 2, b"trusted.nine").unwrap(),
        b"on the link"
    );
    let host = |p: &str, follow: bool| {
        let p = std::ffi::CString::new(s.share.join(p).as_os_str().as_encoded_bytes()).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: NUL-terminated strings; `buf` is writable for its length.
        let n = unsafe {
            let f = if follow {
                libc::getxattr
            } else {
                libc::lgetxattr
            };
            f(
                p.as_ptr(),
                c"trusted.nine".as_ptr(),
                buf.as_mut_ptr().cast(),
                64,
            )
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    };
    assert_eq!(host("link", false).as_deref(), Some(&b"on the link"[..]));
    assert_eq!(host("inside", true), None, "the target was not touched");
    assert_eq!(errno(&set_xattr(&mut c, 2, b"user.l", b"x")), libc::EPERM);
    // The connection serves on.
    assert_eq!(get_xattr(&mut c, 1, b"user.nine").unwrap(), b"p value");
}

/// 9P names users, so the server applies their supplementary groups from
/// its user database (as diod does): a file readable through a group the
/// attached user is a member of opens; without that membership it is
/// EACCES, as on the host.
#[test]
fn access_through_a_supplementary_group_from_the_user_database() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: needs root to act as other users");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (user, group, member_of) = (4242, 4242, 4343);
    for with_group in [true, false] {
        let s = setup();
        let f = s.share.join("groupfile");
        std::fs::write(&f, b"for the group").unwrap();
        std::os::unix::fs::chown(&f, Some(0), Some(member_of)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o040)).unwrap();
        let groups: &[u32] = if with_group { &[member_of] } else { &[] };
        let db = p9::user_db::UserDb::default().with_user(b"grouped", user, group, groups);
        let server = Server::with_options(
            s.server.fs().clone(),
            p9::server::ServerOptions {
                users: Some(Arc::new(db)),
                ..Default::default()
            },
        );
        let mut c = Client::connect(&server);
        c.version(65536);
        let r = c.rpc(Tmessage::Attach {
            fid: 0,
            afid: NOFID,
            uname: b"grouped",
            aname: b"",
            n_uname: NONUNAME,
        });
        assert!(matches!(r, Rmessage::Attach { .. }), "{r:?}");
        assert!(matches!(
            c.walk(0, 1, &[b"groupfile"]),
            Rmessage::Walk { .. }
        ));
        let r = c.rpc(Tmessage::Lopen { fid: 1, flags: 0 });
        if with_group {
            assert!(
                matches!(r, Rmessage::Lopen { .. }),
                "member of the group: {r:?}"
            );
            let r = c.rpc(Tmessage::Read {
                fid: 1,
                offset: 0,
                count: 100,
            });
            assert_eq!(
                r,
                Rmessage::Read {
                    data: b"for the group".to_vec()
                }
            );
        } else {
            assert_eq!(errno(&r), libc::EACCES, "not a member");
        }
    }
}
