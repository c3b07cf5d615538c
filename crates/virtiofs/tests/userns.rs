//! `--uid-map` / `--gid-map`: the daemon in a user namespace of its own
//! (libvirt's session mode), driven over vhost-user: guest ids are the
//! namespace's, files land on the host with the mapped ids.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use virtio_driver::fs::FsDriver;
use virtio_driver::fuse::{self as fuse_wire, opcode};
use virtio_driver::process::Backend;

const OURS: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");
/// The host ids the namespace's 0..65536 are (a rootless container's
/// range).
const BASE: u32 = 100_000;
/// The kernel's overflow id: what an unmapped host id shows as.
const OVERFLOW: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

type Driver = FsDriver<virtio_driver::VhostUserDevice>;

/// Connects to the daemon at `sock` (its log at `log`), INITs, and checks
/// its walls name the user namespace.
fn in_namespace(sock: &std::path::Path, log: &std::path::Path) -> Driver {
    let logged = || std::fs::read_to_string(log).unwrap_or_default();
    let mut g = FsDriver::over_vhost_user(sock, 2);
    let init = g.request(opcode::INIT, 0, &fuse_wire::init_body());
    assert_eq!(init.error, 0, "INIT; daemon log: {}", logged());
    assert!(
        logged().contains("walls up: user namespace"),
        "the walls name the namespace: {}",
        logged()
    );
    g
}

/// The owner and group the guest is shown for `name` in the root.
fn guest_ids(g: &mut Driver, name: &[u8]) -> (u32, u32) {
    let attr = g
        .request(opcode::LOOKUP, 1, &fuse_wire::name(name))
        .entry()
        .expect("entry")
        .attr;
    (attr.uid, attr.gid)
}

/// The guest's root creates `name` in the root; the host owner and group.
fn create_as_guest_root(g: &mut Driver, share: &std::path::Path, name: &[u8]) -> (u32, u32) {
    let r = g.request(
        opcode::CREATE,
        1,
        &fuse_wire::create_in(libc::O_RDWR as u32, 0o100644, 0, name),
    );
    assert_eq!(r.error, 0, "CREATE");
    let meta = std::fs::metadata(share.join(std::str::from_utf8(name).unwrap())).unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn ids_are_the_user_namespaces_and_files_land_with_the_mapped_host_ids() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: writing another range's id maps needs root (unprivileged, newuidmap checks /etc/subuid)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // The namespace's root is host BASE, with no power over host-root
    // files: the way to the share must be searchable by others.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::os::unix::fs::chown(&share, Some(BASE), Some(BASE)).unwrap();
    let seven = share.join("seven");
    std::fs::write(&seven, b"7").unwrap();
    std::os::unix::fs::chown(&seven, Some(BASE + 7), Some(BASE + 8)).unwrap();
    let hosts = share.join("hosts");
    std::fs::write(&hosts, b"root's").unwrap();
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644)).unwrap();

    let sock = t.path().join("vfs.sock");
    let log = t.path().join("daemon.log");
    let map = format!("--uid-map=:0:{BASE}:65536:");
    let gmap = format!("--gid-map=:0:{BASE}:65536:");
    let daemon = Backend::start_logged(&[OURS.to_string()], &share, &sock, &[&map, &gmap], &log);
    let mut g = in_namespace(&daemon.socket, &log);
    // Host ids show as the namespace's; an unmapped one as the overflow id.
    assert_eq!(
        guest_ids(&mut g, b"seven"),
        (7, 8),
        "host {BASE}+7 is the guest's 7"
    );
    assert_eq!(
        guest_ids(&mut g, b"hosts"),
        (OVERFLOW, OVERFLOW),
        "host root is unmapped"
    );
    // The guest's root (uid 0) creates: the host sees the mapped ids.
    assert_eq!(create_as_guest_root(&mut g, &share, b"made"), (BASE, BASE));
    assert_eq!(guest_ids(&mut g, b"made"), (0, 0), "and the guest its own");
    drop(g);
}

/// The user scripts/ci-deps.sh makes for this test, with subordinate ids
/// `SUB..SUB+65536` in /etc/subuid and /etc/subgid.
const SESSION_USER: &str = "vfs-session";
const SUB: u32 = 400_000;

/// `SESSION_USER`'s uid and gid, from the passwd database.
fn session_user() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(SESSION_USER).ok()?;
    // SAFETY: NUL-terminated name; getpwnam's result is read before any
    // other passwd call (tests in this file make none).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null, points to getpwnam's static record.
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

#[test]
fn an_unprivileged_daemon_maps_itself_with_newuidmap_as_libvirt_session_mode_runs_it() {
    let missing = if !is_root() {
        Some("starting the daemon as another user needs root".to_string())
    } else if session_user().is_none() {
        Some(format!(
            "no user {SESSION_USER} (scripts/ci-deps.sh makes it)"
        ))
    } else if !std::path::Path::new("/usr/bin/newuidmap").exists() {
        Some("newuidmap is missing (apt-get install uidmap)".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(std::env::var_os("CI").is_none(), "CI has it: {why}");
        eprintln!("SKIP: {why}");
        return;
    }
    let (uid, gid) = session_user().unwrap();
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The user's own directory, for its socket, pid file and share.
    let home = t.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let share = home.join("share");
    std::fs::create_dir(&share).unwrap();
    std::os::unix::fs::chown(&share, Some(uid), Some(gid)).unwrap();
    // The guest's uid 7 is the host's first subordinate id + 6.
    let sub = share.join("sub");
    std::fs::write(&sub, b"s").unwrap();
    std::os::unix::fs::chown(&sub, Some(SUB + 6), Some(SUB + 6)).unwrap();
    let sock = home.join("vfs.sock");
    let log = t.path().join("daemon.log");
    // libvirt's session-mode maps (qemu_virtiofs.c): the user as root, then
    // its subordinate range from 1.
    let args = [
        format!("--uid-map=:0:{uid}:1:"),
        format!("--uid-map=:1:{SUB}:65536:"),
        format!("--gid-map=:0:{gid}:1:"),
        format!("--gid-map=:1:{SUB}:65536:"),
    ];
    let logf = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(OURS)
        .arg("--shared-dir")
        .arg(&share)
        .arg("--socket-path")
        .arg(&sock)
        .args(&args)
        .uid(uid)
        .gid(gid)
        .stdout(std::process::Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    let mut g = in_namespace(&sock, &log);
    assert_eq!(
        guest_ids(&mut g, b"sub"),
        (7, 7),
        "subordinate id {} is the guest's 7",
        SUB + 6
    );
    assert_eq!(
        create_as_guest_root(&mut g, &share, b"made"),
        (uid, gid),
        "the guest's root is the user"
    );
    drop(g);
    let _ = child.kill();
    let _ = child.wait();
}
