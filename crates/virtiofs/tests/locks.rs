//! Locks shared with the host (`--posix-lock`, `--flock`), driven over
//! vhost-user as a guest kernel sends them: a lock a host process holds is
//! seen by the guest and the other way round, and a SETLKW that must wait
//! leaves its queue serving until the host lets go, or until it is
//! interrupted.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use virtio_driver::fs::FsDriver;
use virtio_driver::fuse::{self as fuse_wire, opcode, InitOut, Reply, OUT_HEADER};
use virtio_driver::process::Backend;
use virtio_driver::{Buf, VhostUserDevice};
use vm_memory::GuestAddress;

const OURS: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");
const GETLK: u32 = 31;
const SETLK: u32 = 32;
const SETLKW: u32 = 33;
const INTERRUPT: u32 = 36;
/// `FUSE_POSIX_LOCKS` and `FUSE_FLOCK_LOCKS` in INIT's flags.
const POSIX_LOCKS: u32 = 1 << 1;
const FLOCK_LOCKS: u32 = 1 << 10;
/// `FUSE_LK_FLOCK`.
const LK_FLOCK: u32 = 1;
/// A range's end meaning "to the end of the file" (OFFSET_MAX).
const TO_END: u64 = i64::MAX as u64;

type Driver = FsDriver<VhostUserDevice>;

/// `struct fuse_lk_in`.
fn lk_in(fh: u64, owner: u64, ty: i32, lk_flags: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&owner.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&TO_END.to_le_bytes());
    b.extend_from_slice(&(ty as u32).to_le_bytes());
    b.extend_from_slice(&1234u32.to_le_bytes());
    b.extend_from_slice(&lk_flags.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// A request sent on queue `qi` in chain `head` with its own buffers, not
/// waited for; returns its unique and where its reply goes.
fn submit(
    g: &mut Driver,
    qi: usize,
    head: u16,
    op: u32,
    node: u64,
    body: &[u8],
) -> (u64, GuestAddress) {
    g.unique += 1;
    let unique = g.unique;
    let req = fuse_wire::request(op, unique, node, 0, body);
    let at = g.ram.alloc(req.len() as u64, 8);
    let reply = g.ram.alloc(4096, 8);
    g.ram.write(at, &req);
    let bufs = Buf::request_reply(at, req.len() as u32, reply, 4096);
    let q = &mut g.queues[qi];
    q.write_chain_at(&g.ram, head, &bufs);
    q.publish(&g.ram, head);
    g.notify(qi);
    (unique, reply)
}

/// Waits up to `limit` for queue `qi`'s next used entry.
fn used_within(g: &mut Driver, qi: usize, limit: Duration) -> Option<(u32, u32)> {
    let start = Instant::now();
    loop {
        if let Some(u) = g.queues[qi].take_used(&g.ram) {
            return Some(u);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn host_ofd_lock(f: &std::fs::File, ty: i32) -> std::io::Result<()> {
    // SAFETY: flock is plain data; all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a valid flock for an fd the caller holds.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn host_flock(f: &std::fs::File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain syscall on an fd the caller holds.
    if unsafe { libc::flock(f.as_raw_fd(), op) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_rw(p: &Path) -> std::fs::File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// The daemon on a fresh share with `extra`, INIT done with the lock
/// flags offered; the flags it accepted.
fn start(extra: &[&str]) -> (tempfile::TempDir, Backend, Driver, u32) {
    start_with(extra, |sock| FsDriver::over_vhost_user(sock, 2))
}

/// [`start`] with the driver `connect` makes.
fn start_with(
    extra: &[&str],
    connect: impl FnOnce(&Path) -> Driver,
) -> (tempfile::TempDir, Backend, Driver, u32) {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    for name in ["f", "g"] {
        std::fs::write(share.join(name), b"data").unwrap();
    }
    let sock = t.path().join("vfs.sock");
    let log = t.path().join("daemon.log");
    let mut args = vec!["--sandbox", "none"];
    args.extend_from_slice(extra);
    let daemon = Backend::start_logged(&[OURS.to_string()], &share, &sock, &args, &log);
    let mut g = connect(&daemon.socket);
    let r = g.request(
        opcode::INIT,
        0,
        &fuse_wire::init_body_flags(POSIX_LOCKS | FLOCK_LOCKS),
    );
    assert_eq!(r.error, 0, "INIT");
    let flags = InitOut::parse(&r.body).expect("INIT reply").flags;
    (t, daemon, g, flags)
}

#[test]
fn posix_locks_are_shared_with_the_host_and_a_waiting_setlkw_leaves_its_queue_serving() {
    let (t, _daemon, mut g, flags) = start(&["--posix-lock"]);
    assert_ne!(flags & POSIX_LOCKS, 0, "POSIX_LOCKS negotiated");
    assert_eq!(flags & FLOCK_LOCKS, 0, "FLOCK_LOCKS only with --flock");
    let path = t.path().join("share/f");
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);

    // A host process holds a write lock: the guest sees it and cannot take
    // the lock without waiting.
    let host = open_rw(&path);
    host_ofd_lock(&host, libc::F_WRLCK).unwrap();
    let r = g.request(GETLK, node, &lk_in(fh, 7, libc::F_WRLCK, 0));
    assert_eq!(r.error, 0, "GETLK");
    let conflict = u32::from_le_bytes(r.body[16..20].try_into().unwrap());
    assert_eq!(
        conflict,
        libc::F_WRLCK as u32,
        "GETLK reports the host's lock"
    );
    let r = g.request(SETLK, node, &lk_in(fh, 7, libc::F_WRLCK, 0));
    assert_eq!(
        r.error,
        -libc::EAGAIN,
        "SETLK conflicts with the host's lock"
    );

    // SETLKW waits; the queue it came on goes on serving.
    let (_, reply) = submit(&mut g, 1, 10, SETLKW, node, &lk_in(fh, 7, libc::F_WRLCK, 0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !g.queues[1].has_used(&g.ram),
        "SETLKW waits while the host holds the lock"
    );
    let r = g.request(opcode::GETATTR, node, &fuse_wire::getattr_in());
    assert_eq!(r.error, 0, "the queue serves while a SETLKW waits on it");

    // The host lets go: the guest's lock is granted, and the host sees it.
    host_ofd_lock(&host, libc::F_UNLCK).unwrap();
    let (id, len) = used_within(&mut g, 1, Duration::from_secs(5)).expect("SETLKW answered");
    assert_eq!(id, 10, "the SETLKW's chain");
    let r = Reply::parse(len, &g.ram.read(reply, len as usize));
    assert_eq!((r.error, len as usize), (0, OUT_HEADER), "SETLKW granted");
    let other = open_rw(&path);
    let e = host_ofd_lock(&other, libc::F_RDLCK).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EAGAIN),
        "the host sees the guest's lock"
    );
    let r = g.request(SETLK, node, &lk_in(fh, 7, libc::F_UNLCK, 0));
    assert_eq!(r.error, 0, "unlock");
    host_ofd_lock(&other, libc::F_RDLCK).unwrap();
    host_ofd_lock(&other, libc::F_UNLCK).unwrap();

    // flock was not offered: refused, not kept local to the guest.
    let r = g.request(SETLK, node, &lk_in(fh, 7, libc::F_WRLCK, LK_FLOCK));
    assert_eq!(r.error, -libc::ENOSYS);

    // An interrupted SETLKW is answered EINTR.
    let gnode = g.lookup(1, b"g");
    let gfh = g.open(gnode, libc::O_RDWR);
    let ghost = open_rw(&t.path().join("share/g"));
    host_ofd_lock(&ghost, libc::F_WRLCK).unwrap();
    let (unique, reply) = submit(
        &mut g,
        1,
        20,
        SETLKW,
        gnode,
        &lk_in(gfh, 8, libc::F_WRLCK, 0),
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!g.queues[1].has_used(&g.ram));
    submit(&mut g, 0, 0, INTERRUPT, 0, &unique.to_le_bytes());
    let (id, len) =
        used_within(&mut g, 1, Duration::from_secs(5)).expect("interrupted SETLKW answered");
    assert_eq!(id, 20);
    let r = Reply::parse(len, &g.ram.read(reply, len as usize));
    assert_eq!(r.error, -libc::EINTR, "interrupted");
}

#[test]
fn flock_locks_are_shared_with_the_host() {
    let (t, _daemon, mut g, flags) = start(&["--flock"]);
    assert_ne!(flags & FLOCK_LOCKS, 0, "FLOCK_LOCKS negotiated");
    assert_eq!(flags & POSIX_LOCKS, 0);
    let path = t.path().join("share/f");
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);
    let host = open_rw(&path);
    host_flock(&host, libc::LOCK_EX).unwrap();
    let r = g.request(SETLK, node, &lk_in(fh, 7, libc::F_WRLCK, LK_FLOCK));
    assert_eq!(r.error, -libc::EAGAIN, "the host's flock conflicts");
    // A waiting one is granted once the host unlocks.
    let (_, reply) = submit(
        &mut g,
        1,
        10,
        SETLKW,
        node,
        &lk_in(fh, 7, libc::F_WRLCK, LK_FLOCK),
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!g.queues[1].has_used(&g.ram));
    host_flock(&host, libc::LOCK_UN).unwrap();
    let (id, len) = used_within(&mut g, 1, Duration::from_secs(5)).expect("SETLKW answered");
    assert_eq!(id, 10);
    assert_eq!(Reply::parse(len, &g.ram.read(reply, len as usize)).error, 0);
    let e = host_flock(&open_rw(&path), libc::LOCK_EX | libc::LOCK_NB).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EWOULDBLOCK),
        "the host sees the guest's flock"
    );
    // POSIX locks were not offered.
    let r = g.request(SETLK, node, &lk_in(fh, 7, libc::F_WRLCK, 0));
    assert_eq!(r.error, -libc::ENOSYS);
}

#[test]
fn without_the_options_no_locks_are_offered_or_served() {
    let (_t, _daemon, mut g, flags) = start(&[]);
    assert_eq!(flags & (POSIX_LOCKS | FLOCK_LOCKS), 0);
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);
    for lk_flags in [0, LK_FLOCK] {
        let r = g.request(SETLKW, node, &lk_in(fh, 7, libc::F_WRLCK, lk_flags));
        assert_eq!(r.error, -libc::ENOSYS, "answered at once, never parked");
    }
}

#[test]
fn a_waiting_setlkw_is_dropped_when_its_queue_stops_and_takes_no_lock() {
    let (t, _daemon, mut g, _) = start(&["--posix-lock"]);
    let path = t.path().join("share/f");
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);
    let host = open_rw(&path);
    host_ofd_lock(&host, libc::F_WRLCK).unwrap();
    submit(&mut g, 1, 10, SETLKW, node, &lk_in(fh, 7, libc::F_WRLCK, 0));
    std::thread::sleep(Duration::from_millis(100));
    let used_before = g.queues[1].used_idx(&g.ram);
    // The frontend stops the queue (a pause, or a reset that hands the
    // ring to a new driver): the kept request is no longer the device's.
    g.link.stop_queue(1).expect("GET_VRING_BASE");
    host_ofd_lock(&host, libc::F_UNLCK).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        g.queues[1].used_idx(&g.ram),
        used_before,
        "nothing is written to a stopped queue's used ring"
    );
    let other = open_rw(&path);
    host_ofd_lock(&other, libc::F_WRLCK).expect("no lock is left held for a dropped request");
}

#[test]
fn a_new_session_releases_the_locks_of_the_last_one() {
    let (t, _daemon, mut g, _) = start(&["--posix-lock", "--flock"]);
    let path = t.path().join("share/f");
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);
    let r = g.request(SETLK, node, &lk_in(fh, 7, libc::F_WRLCK, 0));
    assert_eq!(r.error, 0);
    let gnode = g.lookup(1, b"g");
    let gfh = g.open(gnode, libc::O_RDWR);
    let r = g.request(SETLK, gnode, &lk_in(gfh, 7, libc::F_WRLCK, LK_FLOCK));
    assert_eq!(r.error, 0);
    let host = open_rw(&path);
    assert!(
        host_ofd_lock(&host, libc::F_WRLCK).is_err(),
        "the guest holds it"
    );
    // The guest reboots: its new driver sends INIT, no DESTROY came.
    let r = g.request(
        opcode::INIT,
        0,
        &fuse_wire::init_body_flags(POSIX_LOCKS | FLOCK_LOCKS),
    );
    assert_eq!(r.error, 0);
    host_ofd_lock(&host, libc::F_WRLCK).expect("the old session's POSIX lock is gone");
    host_flock(
        &open_rw(&t.path().join("share/g")),
        libc::LOCK_EX | libc::LOCK_NB,
    )
    .expect("the old session's flock is gone");
}

/// `struct fuse_flush_in`.
fn flush_in(fh: u64, owner: u64) -> Vec<u8> {
    let mut b = fh.to_le_bytes().to_vec();
    b.extend_from_slice(&[0u8; 8]);
    b.extend_from_slice(&owner.to_le_bytes());
    b
}

#[test]
fn posix_locks_belong_to_their_owner_across_opens_and_go_with_its_close() {
    const FLUSH: u32 = 25;
    let (t, _daemon, mut g, _) = start(&["--posix-lock"]);
    let path = t.path().join("share/f");
    let node = g.lookup(1, b"f");
    let fh1 = g.open(node, libc::O_RDWR);
    let fh2 = g.open(node, libc::O_RDWR);
    // One process (owner 7) locks through two opens: one set of locks.
    assert_eq!(
        g.request(SETLK, node, &lk_in(fh1, 7, libc::F_WRLCK, 0))
            .error,
        0
    );
    assert_eq!(
        g.request(SETLK, node, &lk_in(fh2, 7, libc::F_WRLCK, 0))
            .error,
        0,
        "an owner's locks never conflict with each other"
    );
    // Another process (owner 8), even through the same open, conflicts.
    assert_eq!(
        g.request(SETLK, node, &lk_in(fh1, 8, libc::F_WRLCK, 0))
            .error,
        -libc::EAGAIN
    );
    let held = |g: &mut Driver, owner| {
        let r = g.request(GETLK, node, &lk_in(fh1, owner, libc::F_WRLCK, 0));
        assert_eq!(r.error, 0);
        u32::from_le_bytes(r.body[16..20].try_into().unwrap())
    };
    assert_eq!(
        held(&mut g, 8),
        libc::F_WRLCK as u32,
        "owner 8 sees owner 7's lock"
    );
    assert_eq!(
        held(&mut g, 7),
        libc::F_UNLCK as u32,
        "owner 7 does not see its own"
    );
    // Owner 7 closes either open (FLUSH): its locks go, as locally.
    let host = open_rw(&path);
    assert!(host_ofd_lock(&host, libc::F_WRLCK).is_err());
    assert_eq!(g.request(FLUSH, node, &flush_in(fh2, 7)).error, 0);
    host_ofd_lock(&host, libc::F_WRLCK).expect("released by the owner's close");
    host_ofd_lock(&host, libc::F_UNLCK).unwrap();
    // A write lock needs an open for writing, as locally.
    let ro = g.open(node, libc::O_RDONLY);
    assert_eq!(
        g.request(SETLK, node, &lk_in(ro, 9, libc::F_WRLCK, 0))
            .error,
        -libc::EBADF
    );
    assert_eq!(
        g.request(SETLK, node, &lk_in(ro, 9, libc::F_RDLCK, 0))
            .error,
        0
    );
}

#[test]
fn a_guest_cannot_make_the_daemon_hold_unbounded_lock_owner_files() {
    const FLUSH: u32 = 25;
    const MAX_OWNERS: u64 = 1024;
    let (_t, daemon, mut g, _) = start(&["--posix-lock"]);
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);
    // The serving process: the supervisor's child.
    let sup = daemon.child.id();
    let children = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap();
    let server: u32 = children
        .split_whitespace()
        .next()
        .map_or(sup, |p| p.parse().unwrap());
    let fds = || {
        std::fs::read_dir(format!("/proc/{server}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    // A hostile guest: a new lock owner per request, none ever closing.
    for owner in 0..MAX_OWNERS {
        let r = g.request(SETLK, node, &lk_in(fh, 1000 + owner, libc::F_RDLCK, 0));
        assert_eq!(r.error, 0, "owner {owner}");
    }
    let r = g.request(SETLK, node, &lk_in(fh, 5000, libc::F_RDLCK, 0));
    assert_eq!(
        r.error,
        -libc::ENOLCK,
        "beyond the bound: ENOLCK, not another fd"
    );
    let grown = fds() - before;
    assert!(
        grown <= MAX_OWNERS as usize + 8,
        "the daemon holds {grown} more fds for {MAX_OWNERS} owners"
    );
    // An owner's close gives its slot back.
    assert_eq!(g.request(FLUSH, node, &flush_in(fh, 1000)).error, 0);
    let r = g.request(SETLK, node, &lk_in(fh, 5000, libc::F_RDLCK, 0));
    assert_eq!(r.error, 0, "a freed slot is used again");
}

#[test]
fn at_most_max_waiting_setlkws_are_kept_and_the_next_gets_enolck() {
    /// `virtiofs`'s bound on kept requests.
    const MAX_WAITING: u16 = 1024;
    let (t, _daemon, mut g, _) = start_with(&["--posix-lock"], |sock| {
        FsDriver::over_vhost_user_with_layout(sock, 2, 4096, 32 << 20)
    });
    let node = g.lookup(1, b"f");
    let fh = g.open(node, libc::O_RDWR);
    let host = open_rw(&t.path().join("share/f"));
    host_ofd_lock(&host, libc::F_WRLCK).unwrap();
    // One guest process asking for a read lock again and again (one owner:
    // one open file on the host), each request waiting on the host's lock.
    let mut replies = Vec::new();
    for i in 0..=MAX_WAITING {
        replies.push(
            submit(
                &mut g,
                1,
                2 * i,
                SETLKW,
                node,
                &lk_in(fh, 7, libc::F_RDLCK, 0),
            )
            .1,
        );
    }
    let (id, len) =
        used_within(&mut g, 1, Duration::from_secs(10)).expect("the one over the bound");
    assert_eq!(
        id,
        u32::from(2 * MAX_WAITING),
        "the last request is the one refused"
    );
    let r = Reply::parse(
        len,
        &g.ram.read(replies[MAX_WAITING as usize], len as usize),
    );
    assert_eq!(r.error, -libc::ENOLCK);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!g.queues[1].has_used(&g.ram), "the others wait");
    // The host lets go: every kept request is granted.
    host_ofd_lock(&host, libc::F_UNLCK).unwrap();
    for n in 0..MAX_WAITING {
        let (id, len) = used_within(&mut g, 1, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("kept request {n} answered"));
        let r = Reply::parse(len, &g.ram.read(replies[id as usize / 2], len as usize));
        assert_eq!(r.error, 0, "chain {id}");
    }
}
