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
        eprintln!("skipped: --sandbox {sandbox} needs root");
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
