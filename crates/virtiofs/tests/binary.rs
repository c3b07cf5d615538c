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

/// Reads `child`'s stderr lines until one contains `needle` (returned with
/// every line before it), or panics after 10 s or at end of stream.
fn stderr_until(child: &mut Child, needle: &str) -> Vec<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no {needle:?} on stderr ({e}); got {seen:#?}"),
        }
    }
}

#[test]
fn says_it_is_ready_as_upstream_does_and_a_second_daemon_on_its_socket_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = t.path().join("vfs.sock");
    let args = [
        "--shared-dir",
        share.to_str().unwrap(),
        "--socket-path",
        sock.to_str().unwrap(),
        "--sandbox",
        "none",
    ];
    let mut first = Command::new(BIN)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kata's runtime-rs starts the VM once it reads upstream's words.
    let lines = stderr_until(&mut first, "Waiting for vhost-user socket connection...");
    for l in &lines {
        // `[2026-12-06T21:30:00.123Z INFO  virtiofsd-rs] text`: one line
        // per event, each with a UTC timestamp.
        let (ts, rest) = l
            .strip_prefix('[')
            .and_then(|l| l.split_once(' '))
            .unwrap_or_else(|| panic!("no timestamp: {l:?}"));
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{l:?}"
        );
        assert!(rest.contains("virtiofsd-rs] "), "{l:?}");
    }
    assert!(sock.exists(), "socket made before the readiness line");
    let pid_file = t.path().join("vfs.sock.pid");
    let text = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        text.trim(),
        first.id().to_string(),
        "the pid file names the daemon"
    );

    let second = run(&args);
    assert_one_line_error(&second, "already served by another daemon");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains(&format!("pid {}", first.id())),
        "names the first daemon"
    );
    // The first one is untouched and still serves its socket.
    assert!(first.try_wait().unwrap().is_none(), "first daemon still up");
    let conn = UnixStream::connect(&sock).expect("the first daemon's socket still answers");
    drop(conn);
    let status = wait_timeout(&mut first, Duration::from_secs(10)).expect("exits on disconnect");
    assert!(status.success(), "{status:?}");
    // The lock died with it: the next daemon on the path starts.
    let mut third = Command::new(BIN)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stderr_until(&mut third, "Waiting for vhost-user socket connection...");
    third.kill().unwrap();
    let _ = third.wait();
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
        FuseMount::start_with(extra, |_| {})
    }

    /// [`start`](Self::start), with `configure` adjusting the daemon's
    /// command before it is spawned.
    fn start_with(extra: &[&str], configure: impl FnOnce(&mut Command)) -> Option<FuseMount> {
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
        let mut cmd = Command::new(BIN);
        cmd.args(["--shared-dir", share.to_str().unwrap()])
            .args(["--fuse-mount", mnt.to_str().unwrap(), "--xattr"])
            .args(extra)
            .stderr(Stdio::null());
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
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

/// The fd limit the daemon runs under in the fd-bound test: soft and hard,
/// so it cannot raise it (it has no CAP_SYS_RESOURCE once walled in).
const FD_LIMIT: u64 = 1024;
/// The tree of the fd-bound test: `TREE_DIRS` directories of `TREE_FILES`
/// files each, three times the fd limit in all.
const TREE_DIRS: usize = 60;
const TREE_FILES: usize = 50;

/// Whether FUSE mounts can be tested here (root, `/dev/fuse`); where they
/// cannot, prints why, or fails where they are required (`CI`,
/// `VIRTIOFSD_RS_REQUIRE_E2E`).
fn fuse_mounts_testable(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let why = if unsafe { libc::geteuid() } != 0 {
        "FUSE mounts need root"
    } else if !Path::new("/dev/fuse").exists() {
        "no /dev/fuse"
    } else {
        return true;
    };
    skip(test, why);
    false
}

/// Prints why `test` is skipped, or fails where end-to-end tests are
/// required (`CI`, `VIRTIOFSD_RS_REQUIRE_E2E`).
fn skip(test: &str, why: &str) {
    let required = std::env::var_os("CI").is_some()
        || std::env::var_os("VIRTIOFSD_RS_REQUIRE_E2E").is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "{test}: required here (CI or VIRTIOFSD_RS_REQUIRE_E2E), but {why}"
    );
    eprintln!("SKIP: {test}: {why}");
}

/// Whether the file system holding `dir` exports file handles
/// (`name_to_handle_at`), which `--inode-file-handles=prefer` needs to hold
/// an inode without an fd (ext4, xfs, btrfs, tmpfs do; overlayfs without
/// `nfs_export` does not).
fn exports_file_handles(dir: &Path) -> bool {
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        f_handle: [u8; 128],
    }
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path; `h` announces the room that follows;
    // `mount_id` is a valid out-pointer.
    unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut libc::c_int,
            0,
        ) == 0
    }
}

/// The contents of file `f` of directory `d` of the fd-bound tree.
fn tree_file_body(d: usize, f: usize) -> String {
    format!("file {f} of dir {d}\n")
}

/// What walking the tree through the mount met.
#[derive(Default)]
struct Walk {
    /// Entries listed, `lstat`ed and held.
    seen: usize,
    /// Sample files opened and read back intact.
    read: usize,
    /// Failures by errno (0: not an OS error, or wrong contents).
    errors: std::collections::BTreeMap<i32, usize>,
    /// An `O_PATH` fd on every entry seen, in walk order: the kernel keeps
    /// the inode of an open file, so the daemon is held to every node it
    /// handed out.
    held: Vec<Held>,
}

/// An entry the walk holds.
struct Held {
    path: std::path::PathBuf,
    is_dir: bool,
    fd: std::fs::File,
}

impl Walk {
    fn failed(&mut self, e: &std::io::Error) {
        *self
            .errors
            .entry(e.raw_os_error().unwrap_or(0))
            .or_default() += 1;
    }

    fn errors_other_than(&self, errno: i32) -> Vec<(i32, usize)> {
        self.errors
            .iter()
            .filter(|(e, _)| **e != errno)
            .map(|(e, n)| (*e, *n))
            .collect()
    }

    /// Lists `dir`, `lstat`s and holds each entry, reads every fifth file
    /// (by name), and descends into directories.
    fn dir(&mut self, dir: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        let entries = match std::fs::read_dir(dir) {
            Ok(it) => it,
            Err(e) => return self.failed(&e),
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => names.push(e.file_name()),
                Err(e) => {
                    self.failed(&e);
                    break;
                }
            }
        }
        for name in names {
            let path = dir.join(&name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.failed(&e);
                    continue;
                }
            };
            let held = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                .open(&path);
            match held {
                Ok(fd) => self.held.push(Held {
                    path: path.clone(),
                    is_dir: meta.is_dir(),
                    fd,
                }),
                Err(e) => {
                    self.failed(&e);
                    continue;
                }
            }
            self.seen += 1;
            if meta.is_dir() {
                self.dir(&path);
                continue;
            }
            // File `f{f}` of directory `d{d}`.
            let number = |p: &Path, prefix: char| -> usize {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.strip_prefix(prefix).unwrap().parse().unwrap()
            };
            let (d, f) = (number(dir, 'd'), number(&path, 'f'));
            if f % 5 == 0 {
                match std::fs::read_to_string(&path) {
                    Ok(body) if body == tree_file_body(d, f) => self.read += 1,
                    Ok(_) => *self.errors.entry(0).or_default() += 1,
                    Err(e) => self.failed(&e),
                }
            }
        }
    }
}

/// The number of fds `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The soft and hard `RLIMIT_NOFILE` of `pid`, from /proc/PID/limits.
fn nofile_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// Serves a tree of `TREE_DIRS * TREE_FILES` files, three times
/// `FD_LIMIT`, with `--inode-file-handles=MODE` under a hard
/// `RLIMIT_NOFILE` of `FD_LIMIT`, and walks it all through the mount
/// holding every entry. Returns the walk and the serving process's open
/// fds at its end (entries still held), with the mount still up.
fn walk_tree_under_fd_limit(mode: &str) -> Option<(FuseMount, Walk, usize)> {
    let limit = FD_LIMIT;
    let m = FuseMount::start_with(
        &[
            "--sandbox",
            "none",
            &format!("--inode-file-handles={mode}"),
            // Explicit, so a daemon with CAP_SYS_RESOURCE does not raise it
            // either; the hard limit below keeps it from going higher.
            "--rlimit-nofile",
            &limit.to_string(),
        ],
        |cmd| {
            // SAFETY: only async-signal-safe setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    )?;
    for d in 0..TREE_DIRS {
        let dir = m.share.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..TREE_FILES {
            std::fs::write(dir.join(format!("f{f}")), tree_file_body(d, f)).unwrap();
        }
    }
    let pid = m.serving_pid();
    assert_eq!(
        nofile_limits(pid),
        (limit, limit),
        "{mode}: the daemon's limit"
    );
    let mut walk = Walk::default();
    walk.dir(&m.mnt);
    let fds = open_fds(pid);
    Some((m, walk, fds))
}

/// Issue 15: a tree larger than the daemon's fd limit is walked through the
/// FUSE mount without EMFILE when inodes are held by file handles, with
/// every inode still known to the guest and the daemon's fds far below the
/// limit; holding them by `O_PATH` fds (`never`), the same walk runs out:
/// the guest gets EMFILE (the daemon's fd reserve), while the daemon keeps
/// answering and exits cleanly.
#[test]
fn a_tree_larger_than_the_fd_limit_is_walked_without_emfile() {
    use std::os::fd::AsRawFd;
    let test = "a_tree_larger_than_the_fd_limit_is_walked_without_emfile";
    if !fuse_mounts_testable(test) {
        return;
    }
    let tmp = std::env::temp_dir();
    if !exports_file_handles(&tmp) {
        skip(test, &format!("{} exports no file handles", tmp.display()));
        return;
    }
    let entries = TREE_DIRS + TREE_DIRS * TREE_FILES;
    let sampled = TREE_DIRS * TREE_FILES.div_ceil(5);
    assert!(entries as u64 > 2 * FD_LIMIT);

    let started = Instant::now();
    let Some((m, walk, fds)) = walk_tree_under_fd_limit("prefer") else {
        return;
    };
    eprintln!(
        "prefer: {} entries seen, {} read, errors {:?}, daemon fds {fds}, {:?}",
        walk.seen,
        walk.read,
        walk.errors,
        started.elapsed()
    );
    assert!(walk.errors.is_empty(), "prefer: {:?}", walk.errors);
    assert_eq!(walk.seen, entries);
    assert_eq!(walk.read, sampled);
    // The fd cache's share (a quarter of the limit less the reserve of 64)
    // and the daemon's own few: far fewer than the inodes held.
    let cache_share = (FD_LIMIT - 64) / 4;
    assert!(
        fds < entries / 10 && (fds as u64) <= cache_share + 32,
        "prefer: {fds} fds open for {entries} inodes held (cache share {cache_share})"
    );
    drop(walk);
    assert!(m.stop().success(), "prefer: clean exit");

    // The same walk holding each inode by an O_PATH fd runs out of fds:
    // the guest's lookups and opens answer EMFILE once the daemon's fds
    // reach its reserve below the limit.
    let started = Instant::now();
    let Some((m, mut walk, fds)) = walk_tree_under_fd_limit("never") else {
        return;
    };
    // The guest forgets the last files it looked up: unlinked through the
    // mount (UNLINK needs no new fd) and no longer held, their inodes are
    // evicted (FORGET) and the daemon closes their fds.
    let forgotten = 20;
    let files: Vec<_> = walk
        .held
        .iter()
        .filter(|h| !h.is_dir)
        .map(|h| h.path.clone())
        .collect();
    let victims = &files[files.len() - forgotten..];
    walk.held.retain(|h| !victims.contains(&h.path));
    for v in victims {
        // Relative to the held parent: no path walk that would revalidate
        // (LOOKUP, needing an fd the daemon has not got) an older dentry.
        let parent = walk.held.iter().find(|h| Some(&*h.path) == v.parent());
        let dirfd = parent.expect("the parent is held").fd.as_raw_fd();
        let name = std::ffi::CString::new(v.file_name().unwrap().as_encoded_bytes()).unwrap();
        // SAFETY: a held fd and a NUL-terminated name.
        let r = unsafe { libc::unlinkat(dirfd, name.as_ptr(), 0) };
        let e = std::io::Error::last_os_error();
        assert_eq!(r, 0, "never: unlink {}: {e}", v.display());
    }
    eprintln!(
        "never: {} entries seen, {} read, errors {:?}, daemon fds {fds}, {:?}",
        walk.seen,
        walk.read,
        walk.errors,
        started.elapsed()
    );
    assert!(
        walk.errors.get(&libc::EMFILE).is_some_and(|n| *n > 0),
        "never: the walk must run out of fds: {:?}",
        walk.errors
    );
    assert!(
        walk.errors_other_than(libc::EMFILE).is_empty(),
        "never: {:?}",
        walk.errors
    );
    assert!(
        walk.seen < entries && walk.seen as u64 > FD_LIMIT / 2,
        "never: {} of {entries} entries seen",
        walk.seen
    );
    assert!(
        (fds as u64) < FD_LIMIT && fds as u64 > FD_LIMIT * 3 / 4,
        "never: {fds} fds open, up to the limit {FD_LIMIT} less the daemon's reserve"
    );
    // The daemon keeps answering: the nodes it holds, and lookups that
    // need no new fd.
    for h in &walk.held {
        h.fd.metadata().expect("never: GETATTR of a held node");
    }
    std::fs::metadata(&m.mnt).expect("never: GETATTR of the root");
    let e = std::fs::symlink_metadata(m.mnt.join("absent")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "never: a lookup");
    // And once the guest forgot some, it serves new nodes and opens again.
    let pid = m.serving_pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > fds - forgotten {
        assert!(
            Instant::now() < deadline,
            "never: the forgotten entries' fds were not closed ({} open)",
            open_fds(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let fresh = m.mnt.join("fresh");
    std::fs::write(&fresh, b"served again").expect("never: create after forgets");
    assert_eq!(std::fs::read(&fresh).unwrap(), b"served again");
    eprintln!(
        "never: {} fds once {forgotten} entries were forgotten",
        open_fds(pid)
    );
    drop(walk);
    assert!(m.stop().success(), "never: clean exit");
}

/// Directory listings are cached in the guest (CACHE_DIR + KEEP_CACHE)
/// where metadata is, yet a listing changed on the host shows once the
/// directory's attributes time out (cache=auto: 1 s), and at once after
/// the guest's own change (the kernel compares the directory's mtime and
/// change counter).
#[test]
fn a_cached_listing_shows_host_changes_after_the_timeout() {
    let Some(m) = FuseMount::start(&["--cache", "auto"]) else {
        return;
    };
    let names = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    std::fs::create_dir(m.share.join("d")).unwrap();
    std::fs::write(m.share.join("d/a"), b"").unwrap();
    let d = m.mnt.join("d");
    assert_eq!(names(&d), ["a"]);
    assert_eq!(names(&d), ["a"], "listed again (from the cache)");
    // The guest's own change: at once.
    std::fs::write(d.join("b"), b"").unwrap();
    assert_eq!(names(&d), ["a", "b"]);
    // The host's: within the attribute timeout.
    std::fs::write(m.share.join("d/c"), b"").unwrap();
    std::fs::remove_file(m.share.join("d/a")).unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(names(&d), ["b", "c"], "a host change past the timeout");
    let status = m.stop();
    assert!(status.success(), "{status:?}");
}
