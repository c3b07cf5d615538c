//! What a 6.x guest negotiates in INIT's `flags2` and sends as request
//! extensions, driven over vhost-user as its kernel sends them:
//! `--security-label` (FUSE_SECURITY_CTX), supplementary groups
//! (FUSE_CREATE_SUPP_GROUP) and `--allow-idmap` (FUSE_ALLOW_IDMAP, with
//! its requests that carry no identity). Malformed extensions are refused
//! at the edge and the queue goes on.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use virtio_driver::fs::FsDriver;
use virtio_driver::fuse::{self as fuse_wire, ext, opcode, InitOut, Reply};
use virtio_driver::process::Backend;
use virtio_driver::VhostUserDevice;

const OURS: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");
/// `FUSE_INVALID_UIDGID`.
const NO_ID: u32 = u32::MAX;
const ROOT: (u32, u32) = (0, 0);
/// `FUSE_POSIX_ACL`, which every 6.x guest offers.
const POSIX_ACL: u32 = 1 << 20;
const ALL: u64 =
    ext::SECURITY_CTX | ext::CREATE_SUPP_GROUP | ext::ALLOW_IDMAP | ext::DIRECT_IO_ALLOW_MMAP;
/// The xattr map container hosts use: the guest's `security.*` names live
/// under `user.virtiofs.` on the host.
const MAP: &str = "--xattrmap=:prefix:all:security.:user.virtiofs.::ok:all:::";
const LABEL: &[u8] = b"system_u:object_r:container_file_t:s0\0";

type Driver = FsDriver<VhostUserDevice>;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The running daemon, its share, and a driver that has done INIT.
struct Session {
    t: tempfile::TempDir,
    _daemon: Backend,
    g: Driver,
    /// The `flags2` the daemon accepted (shifted up by 32).
    flags2: u64,
}

impl Session {
    /// The daemon on a fresh share (prepared by `prepare`) with `extra`,
    /// INIT offering `offered` in `flags2`.
    fn start(extra: &[&str], offered: u64, prepare: impl FnOnce(&Path)) -> Session {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join("share");
        std::fs::create_dir(&share).unwrap();
        prepare(&share);
        let sock = t.path().join("vfs.sock");
        let log = t.path().join("daemon.log");
        let mut args = vec!["--sandbox", "none"];
        args.extend_from_slice(extra);
        let daemon = Backend::start_logged(&[OURS.to_string()], &share, &sock, &args, &log);
        let mut s = Session {
            g: FsDriver::over_vhost_user(&daemon.socket, 2),
            t,
            _daemon: daemon,
            flags2: 0,
        };
        s.flags2 = s.init(offered);
        s
    }

    /// A FUSE_INIT (a new session) offering `offered`; what was accepted.
    fn init(&mut self, offered: u64) -> u64 {
        let r = self.g.request(
            opcode::INIT,
            0,
            &fuse_wire::init_body_ext(POSIX_ACL, offered),
        );
        assert_eq!(r.error, 0, "INIT");
        InitOut::parse(&r.body).expect("INIT reply").flags2
    }

    fn share(&self, name: &str) -> std::path::PathBuf {
        self.t.path().join("share").join(name)
    }

    /// `op` on `node` as `ids`, with `body` and extensions `ext`.
    fn send(&mut self, op: u32, node: u64, ids: (u32, u32), body: &[u8], ext: &[u8]) -> Reply {
        let unique = self.g.next_unique();
        let req = fuse_wire::request_ext(op, unique, node, ids, body, ext);
        self.g.request_bytes(&req)
    }

    /// CREATE of `name` in the root as `ids` with `ext`; the errno.
    fn create(&mut self, name: &[u8], ids: (u32, u32), ext: &[u8]) -> i32 {
        let body = fuse_wire::create_in(libc::O_RDWR as u32, 0o100644, 0, name);
        self.send(opcode::CREATE, 1, ids, &body, ext).error
    }

    /// MKDIR of `name` in `parent` as `ids` with `ext`.
    fn mkdir(&mut self, parent: u64, name: &[u8], ids: (u32, u32), ext: &[u8]) -> Reply {
        let body = [fuse_wire::u32s(&[0o755, 0]), fuse_wire::name(name)].concat();
        self.send(opcode::MKDIR, parent, ids, &body, ext)
    }

    /// LOOKUP of `name` in the root as `ids`; the errno.
    fn lookup_as(&mut self, name: &[u8], ids: (u32, u32)) -> i32 {
        self.send(opcode::LOOKUP, 1, ids, &fuse_wire::name(name), &[])
            .error
    }
}

/// The host xattr `name` of `path` (not following a symlink).
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings; `buf` is writable for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

#[test]
fn init_negotiates_what_fuse_backend_rs_drops_from_flags2() {
    let every = ["--security-label=auto", "--allow-idmap", "--allow-mmap"];
    let mut s = Session::start(&every, ALL, |_| {});
    let expected = if is_root() {
        ALL
    } else {
        // Requests run as the requester only under a root daemon.
        ALL & !ext::CREATE_SUPP_GROUP
    };
    assert_eq!(s.flags2, expected, "flags2 with every option");
    assert_eq!(
        s.init(ext::SECURITY_CTX),
        ext::SECURITY_CTX,
        "only what is offered"
    );
    assert_eq!(s.init(0), 0, "nothing offered, nothing taken (auto)");
    // A 7.31 guest (a 6.1 kernel) has no flags2 at all.
    let r = s.g.request(opcode::INIT, 0, &fuse_wire::init_body_flags(0));
    assert_eq!(InitOut::parse(&r.body).unwrap().flags2, 0);

    let mut plain = Session::start(&[], ALL, |_| {});
    let groups = if is_root() { ext::CREATE_SUPP_GROUP } else { 0 };
    assert_eq!(plain.flags2, groups, "without options: the groups alone");
    assert_eq!(plain.mkdir(1, b"d", ROOT, &[]).error, 0);

    // --security-label (always, as upstream) fails a guest that cannot
    // label, rather than serving it unlabelled.
    let mut required = Session::start(&["--security-label"], ALL, |_| {});
    assert_ne!(required.flags2 & ext::SECURITY_CTX, 0);
    let r = required
        .g
        .request(opcode::INIT, 0, &fuse_wire::init_body_ext(0, 0));
    assert_eq!(r.error, -libc::EPROTO, "INIT without SECURITY_CTX");
    let r = required
        .g
        .request(opcode::INIT, 0, &fuse_wire::init_body_flags(0));
    assert_eq!(r.error, -libc::EPROTO, "a 7.31 guest, which has none");
}

#[test]
fn a_security_context_labels_each_new_node_or_its_create_fails() {
    let mut s = Session::start(&["--security-label=auto", MAP], ALL, |_| {});
    assert_ne!(s.flags2 & ext::SECURITY_CTX, 0, "SECURITY_CTX negotiated");
    let label = fuse_wire::secctx_ext(b"security.selinux", LABEL);
    let probe = std::ffi::CString::new(s.t.path().to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a valid value.
    let r = unsafe {
        libc::setxattr(
            probe.as_ptr(),
            c"user.probe".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    if r != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's /tmp has user xattrs"
        );
        eprintln!("SKIP: the temporary directory's filesystem has no user xattrs");
        return;
    }

    assert_eq!(s.create(b"f", ROOT, &label), 0, "CREATE with a context");
    let d = s.mkdir(1, b"d", ROOT, &label);
    assert_eq!(d.error, 0, "MKDIR with a context");
    for name in ["f", "d"] {
        assert_eq!(
            host_xattr(&s.share(name), "user.virtiofs.security.selinux").as_deref(),
            Some(LABEL),
            "{name} carries the context under the mapped name"
        );
        assert_eq!(host_xattr(&s.share(name), "security.selinux"), None);
    }
    // The guest reads it back under its own name.
    let node = d.nodeid();
    let getxattr = [
        fuse_wire::u32s(&[256, 0]),
        fuse_wire::name(b"security.selinux"),
    ]
    .concat();
    let r = s.send(22, node, ROOT, &getxattr, &[]);
    assert_eq!((r.error, r.body.as_slice()), (0, LABEL));

    // A context goes with its request: the next create has none.
    assert_eq!(s.create(b"plain", ROOT, &[]), 0);
    assert_eq!(
        host_xattr(&s.share("plain"), "user.virtiofs.security.selinux"),
        None
    );
    // A guest without an LSM sends an empty header: no label.
    assert_eq!(s.create(b"unlabelled", ROOT, &fuse_wire::u32s(&[8, 0])), 0);
    assert_eq!(
        host_xattr(&s.share("unlabelled"), "user.virtiofs.security.selinux"),
        None
    );

    // The host allows user.* names on regular files and directories only:
    // a FIFO or symlink cannot keep the mapped context, so neither is
    // left behind unlabelled.
    let mknod = [
        fuse_wire::u32s(&[libc::S_IFIFO | 0o644, 0, 0, 0]),
        fuse_wire::name(b"p"),
    ]
    .concat();
    let r = s.send(opcode::MKNOD, 1, ROOT, &mknod, &label);
    assert_eq!(
        r.error,
        -libc::EPERM,
        "MKNOD whose context the host refuses"
    );
    let symlink = [fuse_wire::name(b"l"), fuse_wire::name(b"f")].concat();
    let r = s.send(opcode::SYMLINK, 1, ROOT, &symlink, &label);
    assert_eq!(
        r.error,
        -libc::EPERM,
        "SYMLINK whose context the host refuses"
    );
    for name in ["p", "l"] {
        assert!(
            std::fs::symlink_metadata(s.share(name)).is_err(),
            "{name} was removed again"
        );
    }
    assert_eq!(
        s.send(opcode::MKNOD, 1, ROOT, &mknod, &[]).error,
        0,
        "no context: made"
    );

    // Malformed or unnegotiated extensions: EINVAL, and nothing made.
    let lookup = fuse_wire::name(b"f");
    assert_eq!(
        s.send(opcode::LOOKUP, 1, ROOT, &lookup, &label).error,
        -libc::EINVAL
    );
    let not_security = fuse_wire::secctx_ext(b"trusted.x", LABEL);
    assert_eq!(s.create(b"bad1", ROOT, &not_security), -libc::EINVAL);
    // The daemon sets a context with its own privilege: never file
    // capabilities.
    let caps = fuse_wire::secctx_ext(b"security.capability", &[1, 0, 0, 2]);
    assert_eq!(s.create(b"bad5", ROOT, &caps), -libc::EINVAL);
    assert_eq!(
        s.create(b"bad2", ROOT, &fuse_wire::u32s(&[16, 40])),
        -libc::EINVAL
    );
    let mut beyond =
        fuse_wire::request_ext(opcode::MKDIR, 99, 1, ROOT, &fuse_wire::name(b"bad3"), &[]);
    beyond[32] = 4; // total_extlen: 32 bytes, more than the body holds
    assert_eq!(s.g.request_bytes(&beyond).error, -libc::EINVAL);
    s.init(0);
    assert_eq!(
        s.create(b"bad4", ROOT, &label),
        -libc::EINVAL,
        "not negotiated"
    );
    for name in ["bad1", "bad2", "bad3", "bad4", "bad5"] {
        assert!(!s.share(name).exists(), "{name}");
    }
    assert_eq!(s.lookup_as(b"f", ROOT), 0, "the queue goes on");
}

#[test]
fn a_creates_supplementary_group_reaches_the_host_and_goes_with_the_request() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: acting as other users needs root");
        return;
    }
    const TEAM: u32 = 4242;
    const USER: (u32, u32) = (1000, 1000);
    // Without the DAC-override retry (no guest id acts as host root), a
    // group the request does not carry is a group the host does not see.
    // The groups are the guest's: translated as its gid is.
    let squash = "--translate-uid=squash-guest:0:65534:1";
    let shifted = "--translate-gid=guest:5000:4242:1";
    let forbidden = "--translate-gid=forbid-guest:4242:1";
    let mut s = Session::start(&[squash, shifted, forbidden], ALL, |share| {
        std::fs::set_permissions(share, std::fs::Permissions::from_mode(0o755)).unwrap();
        let team = share.join("team");
        std::fs::create_dir(&team).unwrap();
        std::os::unix::fs::chown(&team, Some(0), Some(TEAM)).unwrap();
        std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o770)).unwrap();
    });
    assert_ne!(
        s.flags2 & ext::CREATE_SUPP_GROUP,
        0,
        "CREATE_SUPP_GROUP negotiated"
    );
    let team = s.g.lookup(1, b"team");
    // Guest gid 5000 is host gid TEAM.
    let in_team = fuse_wire::groups_ext(&[5000]);

    assert_eq!(
        s.mkdir(team, b"a", USER, &[]).error,
        -libc::EACCES,
        "not in the group"
    );
    let r = s.mkdir(team, b"b", USER, &in_team);
    assert_eq!(r.error, 0, "in the group through the extension");
    let meta = std::fs::metadata(s.share("team/b")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), USER, "made as the requester");
    assert_eq!(
        s.mkdir(team, b"c", USER, &[]).error,
        -libc::EACCES,
        "the group went with its request"
    );
    let r = s.mkdir(team, b"d", USER, &fuse_wire::groups_ext(&[TEAM]));
    assert_eq!(r.error, -libc::EPERM, "a forbidden guest group");
    s.init(0);
    let r = s.mkdir(team, b"e", USER, &in_team);
    assert_eq!(r.error, -libc::EINVAL, "not negotiated");
    for name in ["a", "c", "d", "e"] {
        assert!(!s.share("team").join(name).exists(), "{name}");
    }
}

#[test]
fn requests_without_an_identity_are_served_only_under_allow_idmap() {
    let secret = |share: &Path| {
        let f = share.join("secret");
        std::fs::write(&f, b"root only").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    // Without it, no guest kernel sends u32::MAX: refused, never run as
    // the daemon (setresuid would read it as "unchanged").
    let mut s = Session::start(&[], ALL, secret);
    assert_eq!(
        s.flags2 & ext::ALLOW_IDMAP,
        0,
        "not offered without --allow-idmap"
    );
    assert_eq!(s.lookup_as(b"secret", (NO_ID, NO_ID)), -libc::EINVAL);
    assert_eq!(s.lookup_as(b"secret", (1000, NO_ID)), -libc::EINVAL);
    let secret_node = s.g.lookup(1, b"secret");
    let open = fuse_wire::open_in(libc::O_RDONLY as u32);
    let r = s.send(opcode::OPEN, secret_node, (NO_ID, NO_ID), &open, &[]);
    assert_eq!(r.error, -libc::EINVAL, "no identity, no open");
    assert_eq!(
        s.mkdir(1, b"x", (NO_ID, NO_ID), &[]).error,
        -libc::EOVERFLOW
    );

    let mut s = Session::start(&["--allow-idmap"], ALL, secret);
    assert_ne!(s.flags2 & ext::ALLOW_IDMAP, 0, "ALLOW_IDMAP negotiated");
    assert_eq!(
        s.lookup_as(b"secret", (NO_ID, NO_ID)),
        0,
        "the guest checked it"
    );
    let node = s.g.lookup(1, b"secret");
    let r = s.send(opcode::OPEN, node, (NO_ID, NO_ID), &open, &[]);
    assert_eq!(r.error, 0, "served as the guest's root is");
    // Creates carry the (idmapped) owner; one that has none is refused.
    assert_eq!(
        s.mkdir(1, b"x", (NO_ID, NO_ID), &[]).error,
        -libc::EOVERFLOW
    );
    assert!(!s.share("x").exists());
    if is_root() {
        assert_eq!(s.mkdir(1, b"mine", (2000, 3000), &[]).error, 0);
        let meta = std::fs::metadata(s.share("mine")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (2000, 3000),
            "owned as the create said"
        );
    }
    // A new session that does not take it: no identity is refused again.
    s.init(0);
    assert_eq!(s.lookup_as(b"secret", (NO_ID, NO_ID)), -libc::EINVAL);
}

#[test]
fn posix_acl_always_fails_a_guest_without_acls_as_upstream() {
    let init = |s: &mut Session, flags: u32| {
        let r =
            s.g.request(opcode::INIT, 0, &fuse_wire::init_body_flags(flags));
        (r.error, InitOut::parse(&r.body).map_or(0, |o| o.flags))
    };
    let mut always = Session::start(&["--posix-acl"], 0, |_| {});
    assert_eq!(
        init(&mut always, 0).0,
        -libc::EPROTO,
        "no POSIX_ACL offered"
    );
    let (error, flags) = init(&mut always, POSIX_ACL);
    assert_eq!(error, 0);
    assert_ne!(flags & POSIX_ACL, 0, "taken when offered");
    let mut auto = Session::start(&["--posix-acl=auto"], 0, |_| {});
    assert_eq!(init(&mut auto, 0), (0, 0), "auto goes on without");
}
