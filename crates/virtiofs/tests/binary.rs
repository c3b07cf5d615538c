//! The `virtiofsd-rs` binary as a user meets it: flags, errors, lifecycle.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run virtiofsd-rs")
}

/// Asserts a failed run printed exactly one error line mentioning `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("virtiofsd-rs: "), "error line: {stderr}");
    assert!(
        first.contains(needle),
        "{first:?} should mention {needle:?}"
    );
    assert!(
        stderr.lines().filter(|l| !l.starts_with("Try ")).count() == 1,
        "one line: {stderr}"
    );
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn wait_for_socket(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_shared_dir_is_a_one_line_error() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("s");
    let out = run(&[
        "--shared-dir",
        "/nonexistent/dir",
        "--socket-path",
        sock.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "/nonexistent/dir");
    assert!(!sock.exists(), "no socket left behind for a bad share");
}

#[test]
fn shared_dir_that_is_a_file_is_a_one_line_error() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let sock = t.path().join("s");
    let out = run(&[
        "--shared-dir",
        f.to_str().unwrap(),
        "--socket-path",
        sock.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "not a directory");
}

#[test]
fn unbindable_socket_path_is_a_one_line_error() {
    let t = tempfile::tempdir().unwrap();
    let out = run(&[
        "--shared-dir",
        t.path().to_str().unwrap(),
        "--socket-path",
        "/nonexistent/dir/vfs.sock",
        "--sandbox",
        "none",
    ]);
    assert_one_line_error(&out, "/nonexistent/dir/vfs.sock");
}

#[test]
fn unknown_flag_is_a_one_line_error() {
    let out = run(&["--shared-dir", "/tmp", "--frobnicate"]);
    assert_one_line_error(&out, "--frobnicate");
    let out = run(&[
        "--shared-dir",
        "/tmp",
        "--socket-path",
        "/tmp/x",
        "--cache",
        "sometimes",
    ]);
    assert_one_line_error(&out, "sometimes");
}

#[test]
fn print_capabilities_prints_json_for_libvirt() {
    let out = run(&["--print-capabilities"]);
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains(r#""type":"fs""#), "{s}");
}

#[test]
fn help_and_version_succeed() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--shared-dir",
        "--socket-path",
        "--fd",
        "--sandbox",
        "--cache",
        "--fuse-mount",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains(env!("CARGO_PKG_VERSION")));
}

fn exits_cleanly_when_the_frontend_disconnects(sandbox: &str) {
    // SAFETY: geteuid cannot fail.
    if sandbox != "none" && unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: --sandbox {sandbox} needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = t.path().join("vfs.sock");
    let mut child = Command::new(BIN)
        .args([
            "--shared-dir",
            share.to_str().unwrap(),
            "--socket-path",
            sock.to_str().unwrap(),
        ])
        .args(["--sandbox", sandbox])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let conn = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        child.try_wait().unwrap().is_none(),
        "serving while connected"
    );
    drop(conn);
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    if status.is_none() {
        child.kill().unwrap();
    }
    let status = status.expect("daemon exits after the frontend disconnects");
    assert!(status.success(), "clean exit, got {status:?}");
}

#[test]
fn exits_cleanly_on_disconnect_without_sandbox() {
    exits_cleanly_when_the_frontend_disconnects("none");
}

#[test]
fn exits_cleanly_on_disconnect_in_namespace_sandbox() {
    exits_cleanly_when_the_frontend_disconnects("namespace");
}

#[test]
fn exits_cleanly_on_disconnect_in_chroot_sandbox() {
    exits_cleanly_when_the_frontend_disconnects("chroot");
}

#[test]
fn inherited_listening_fd_is_served() {
    use std::os::fd::AsRawFd;
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--shared-dir",
        t.path().to_str().unwrap(),
        "--fd",
        &fd.to_string(),
        "--sandbox",
        "none",
    ]);
    // Clear CLOEXEC in the child only, so it inherits the socket under the
    // same number and the daemons other tests spawn meanwhile do not.
    // SAFETY: only async-signal-safe fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let conn = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        child.try_wait().unwrap().is_none(),
        "serving the inherited socket"
    );
    drop(conn);
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits");
    assert!(status.success());
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Starts the daemon on a socket with `extra` flags and returns the
/// socket's mode and group once the socket exists and its mode is `want`
/// (or 5 s have passed: a socket for a group is bound 0600, then given to
/// the group, then opened to it, and the test may look in between).
fn socket_mode_with(extra: &[&str], want: u32) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("vfs.sock");
    let mut child = Command::new(BIN)
        .args(["--shared-dir", t.path().to_str().unwrap()])
        .args(["--socket-path", sock.to_str().unwrap()])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mode_of(&sock) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mode, gid) = (mode_of(&sock), std::fs::metadata(&sock).unwrap().gid());
    child.kill().unwrap();
    child.wait().unwrap();
    (mode, gid)
}

#[test]
fn socket_is_owner_only_from_the_start() {
    let (mode, _) = socket_mode_with(&[], 0o600);
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
}

#[test]
fn socket_group_makes_it_group_connectable() {
    let group = if Command::new("getent")
        .args(["group", "nogroup"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "nogroup"
    } else {
        "0"
    };
    let gid = sandbox::socket::group_id(group).unwrap();
    let (mode, owner) = socket_mode_with(&["--socket-group", group], 0o660);
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    assert_eq!(owner, gid);
}

/// A FUSE mount of a fresh share served by the daemon with `extra` flags
/// (root only); unmounted and the daemon reaped on drop.
struct FuseMount {
    child: Child,
    share: std::path::PathBuf,
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl FuseMount {
    fn start(extra: &[&str]) -> Option<FuseMount> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIP: FUSE mounts and the sandbox need root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let child = Command::new(BIN)
            .args(["--shared-dir", share.to_str().unwrap()])
            .args(["--fuse-mount", mnt.to_str().unwrap(), "--xattr"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            use std::os::unix::fs::MetadataExt;
            let dev = std::fs::metadata(&mnt).map(|m| m.dev());
            if dev.is_ok() && dev.ok() != std::fs::metadata(dir.path()).map(|m| m.dev()).ok() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(FuseMount {
            child,
            share,
            mnt,
            _dir: dir,
        })
    }

    fn serving_pid(&self) -> u32 {
        sandbox::status::serving_pid(self.child.id())
    }

    /// Unmounts and returns the daemon's exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let ok = Command::new("umount").arg(&self.mnt).status().unwrap();
        assert!(ok.success(), "umount");
        let st = wait_timeout(&mut self.child, Duration::from_secs(10));
        st.expect("the daemon exits once unmounted")
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Everyday file operations through the mount, so the daemon runs the
/// core's whole surface under its filters.
fn exercise(mnt: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let f = mnt.join("file");
    std::fs::write(&f, b"hello walls").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"hello walls");
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::rename(&f, mnt.join("dir/moved")).unwrap();
    std::fs::hard_link(mnt.join("dir/moved"), mnt.join("link")).unwrap();
    symlink("dir/moved", mnt.join("sym")).unwrap();
    assert_eq!(
        std::fs::read_link(mnt.join("sym")).unwrap(),
        Path::new("dir/moved")
    );
    std::fs::set_permissions(mnt.join("link"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let ok = Command::new("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(mnt.join("link"))
        .status();
    if let Ok(ok) = ok {
        assert!(ok.success(), "setfattr");
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("link"))
        .unwrap();
    file.set_len(3).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let names: Vec<_> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    std::fs::remove_file(mnt.join("link")).unwrap();
    std::fs::remove_file(mnt.join("sym")).unwrap();
    std::fs::remove_dir_all(mnt.join("dir")).unwrap();
}

#[test]
fn fuse_mount_serves_with_every_wall_up() {
    let Some(m) = FuseMount::start(&[]) else {
        return;
    };
    exercise(&m.mnt);
    let bad = sandbox::status::default_walls_violations(m.child.id(), &m.share);
    assert!(bad.is_empty(), "{bad:?}");
    let w = sandbox::status::ProcessWalls::of(m.serving_pid()).unwrap();
    use sandbox::status::{CAP_CHOWN, CAP_SETUID};
    assert!(
        w.has_cap(CAP_CHOWN) && w.has_cap(CAP_SETUID),
        "keeps what the core needs"
    );
    let status = m.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn seccomp_none_installs_no_filter_and_modcaps_adds() {
    let Some(m) = FuseMount::start(&["--seccomp", "none", "--modcaps", "+sys_admin"]) else {
        return;
    };
    exercise(&m.mnt);
    let w = sandbox::status::ProcessWalls::of(m.serving_pid()).unwrap();
    assert_eq!(w.seccomp, 0);
    assert!(w.has_cap(sandbox::status::CAP_SYS_ADMIN));
    assert!(m.stop().success());
}

#[test]
fn chroot_and_no_sandbox_still_drop_privileges() {
    for mode in ["chroot", "none"] {
        let Some(m) = FuseMount::start(&["--sandbox", mode]) else {
            return;
        };
        exercise(&m.mnt);
        let pid = m.serving_pid();
        // The mode was in effect: chroot roots the server in the share.
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        let expected = match mode {
            "chroot" => m.share.canonicalize().unwrap(),
            _ => std::path::PathBuf::from("/"),
        };
        assert_eq!(root, expected, "{mode}");
        let w = sandbox::status::ProcessWalls::of(pid).unwrap();
        assert_eq!(w.seccomp, 2, "{mode}");
        assert!(w.no_new_privs && w.forbidden_caps().is_empty(), "{mode}");
        assert!(m.stop().success(), "{mode}");
    }
}

/// The mount source of `mnt` in /proc/self/mountinfo, if it is a mount point.
fn mount_source(mnt: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = mnt.to_str().unwrap();
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields[4] == mnt).then(|| (fields[sep + 2].to_owned(), fields[5].to_owned()))
    })
}

/// As mount(8)'s helper (`mount.fuse.virtiofsd-rs SPEC MNT -o OPTIONS`, a
/// link to the binary), the daemon returns once the mount is served, with
/// SPEC as its source and nothing printed; `ro` serves read-only, `remount`
/// changes the mount's flags while the daemon keeps serving; a bad share is
/// one line on stderr and no mount.
#[test]
fn as_a_mount_helper_it_returns_once_the_mount_is_served() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: mounting needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let helper = t.path().join("mount.fuse.virtiofsd-rs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let share = t.path().join("share");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let log = t.path().join("log");
    let opts = format!(
        "source={},allow_other,default_permissions,log={}",
        share.display(),
        log.display()
    );
    let helper_run = |spec: &str, opts: &str| {
        Command::new(&helper)
            .args([spec, mnt.to_str().unwrap(), "-o", opts])
            .output()
            .unwrap()
    };
    let unmount = |mnt: &Path| {
        let ok = Command::new("umount").arg(mnt).status().unwrap();
        assert!(ok.success());
    };

    let out = helper_run("helper_test", &opts);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "silent: {out:?}"
    );
    // Served at once: no waiting after the helper returned.
    let (source, flags) = mount_source(&mnt).expect("mounted when the helper returns");
    assert_eq!(source, "helper_test");
    assert!(flags.starts_with("rw"), "{flags}");
    std::fs::write(mnt.join("f"), b"through the helper").unwrap();
    assert_eq!(
        std::fs::read(share.join("f")).unwrap(),
        b"through the helper"
    );
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("walls up"),
        "the daemon's log went to log="
    );

    let out = helper_run("helper_test", "remount,ro");
    assert!(out.status.success(), "{out:?}");
    assert!(mount_source(&mnt).unwrap().1.starts_with("ro"));
    let e = std::fs::write(mnt.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let out = helper_run("helper_test", "remount,rw");
    assert!(out.status.success(), "{out:?}");
    std::fs::write(mnt.join("g"), b"x").expect("served again read-write");
    unmount(&mnt);

    let out = helper_run("helper_ro", &format!("{opts},ro"));
    assert!(out.status.success(), "{out:?}");
    assert!(mount_source(&mnt).unwrap().1.starts_with("ro"));
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"through the helper");
    unmount(&mnt);

    // Unmounted and mounted again at once (as xfstests does): the first
    // daemon's supervisor, cleaning up after its server ended, must leave
    // the new mount on the same path alone.
    for round in 0..5 {
        let out = helper_run("helper_first", &opts);
        assert!(out.status.success(), "{out:?}");
        unmount(&mnt);
        let out = helper_run("helper_second", &opts);
        assert!(out.status.success(), "{out:?}");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            mount_source(&mnt).map(|m| m.0).as_deref(),
            Some("helper_second"),
            "round {round}: the new mount was unmounted by the old daemon"
        );
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"through the helper");
        unmount(&mnt);
    }

    let out = helper_run("helper_bad", "source=/nonexistent/share");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("mount.fuse.virtiofsd-rs: ") && stderr.contains("/nonexistent/share"),
        "{stderr}"
    );
    assert!(mount_source(&mnt).is_none(), "no mount left behind");
    let out = helper_run("helper_bad", "allow_other");
    assert!(String::from_utf8_lossy(&out.stderr).contains("source=DIR"));
}
