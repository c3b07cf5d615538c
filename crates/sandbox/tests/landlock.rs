//! Landlock as the daemons apply it, in a child process (a ruleset cannot
//! be lifted): the share stays usable, nothing else on the host opens,
//! not even through `/proc/self/fd/../../1/root`, the path a `--sandbox
//! none` or `chroot` daemon could otherwise take to the host's root.

use std::process::Command;

const CHILD: &str = "SANDBOX_LANDLOCK_SHARE";

/// The child's side: does nothing unless started by the test below.
#[test]
fn child_entry() {
    let Ok(share) = std::env::var(CHILD) else {
        return;
    };
    let share = std::path::Path::new(&share);
    let state = sandbox::landlock::restrict_to(share).unwrap();
    println!("state {state:?}");
    let try_open = |p: &std::path::Path| match std::fs::File::open(p) {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("err {}", e.raw_os_error().unwrap_or(0)),
    };
    std::fs::write(share.join("new"), b"x").unwrap();
    println!("share {}", try_open(&share.join("inside")));
    println!("share-new {}", try_open(&share.join("new")));
    println!("host {}", try_open(std::path::Path::new("/etc/passwd")));
    println!(
        "proc-escape {}",
        try_open(std::path::Path::new(
            "/proc/self/fd/../../1/root/etc/passwd"
        ))
    );
}

#[test]
fn landlock_confines_opens_to_the_share() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inside"), b"in").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("state Full") || stdout.contains("state Partial"),
        "{stdout}"
    );
    assert!(stdout.contains("share ok"), "{stdout}");
    assert!(stdout.contains("share-new ok"), "{stdout}");
    let eacces = libc::EACCES;
    assert!(stdout.contains(&format!("host err {eacces}")), "{stdout}");
    assert!(
        stdout.contains(&format!("proc-escape err {eacces}")),
        "{stdout}"
    );
}
