//! `--strict`: a benchmark step that cannot pass with a broken server.

use std::process::Command;

fn fsbench(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fsbench"))
        .args([
            "--quick",
            "--servers",
            "native,p9d",
            "--workloads",
            "randread-4k-qd1",
        ])
        // A "server" that exits at once.
        .args(["--p9d", "/bin/false"])
        .args(["--svg", "/dev/null"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_failing_server_fails_a_strict_run_only() {
    let lenient = fsbench(&[]);
    assert!(
        lenient.status.success(),
        "without --strict a failing server is reported and skipped: {}",
        String::from_utf8_lossy(&lenient.stderr)
    );
    let strict = fsbench(&["--strict"]);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--strict: p9d"), "{stderr}");
}

/// fsbench with small trees and `args`.
fn fsbench_trees(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fsbench"))
        .args(["--quick", "--strict", "--svg", "/dev/null"])
        .args([
            "--tree-files",
            "300",
            "--create-files",
            "200",
            "--inodes",
            "100",
        ])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn tree_workloads_skipped_on_9p_do_not_fail_a_strict_run() {
    let out = fsbench_trees(&[
        "--servers",
        "native,p9d",
        "--p9d",
        "/bin/false",
        "--workloads",
        "tree-stat,tree-create,tree-remove,inode-memory",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("p9d tree-stat: skipped: the tree workloads are virtio-fs and native only"),
        "{stdout}"
    );
    assert!(stdout.contains("native inode-memory: skipped"), "{stdout}");
    // native's rows in the tree table, with the tree's counts.
    assert!(stdout.contains("tree workloads"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("tree-remove")
            && l.contains("native")
            && l.contains("getdents64")),
        "{stdout}"
    );
}

#[test]
fn a_peer_that_cannot_start_fails_strict_even_under_the_fd_limit() {
    // Only running out of fds is expected of a peer under the limit.
    let out = fsbench_trees(&[
        "--servers",
        "native,virtiofsd",
        "--virtiofsd",
        "/bin/false",
        "--workloads",
        "tree-stat-rlimit1024",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--strict: virtiofsd tree-stat-rlimit1024"),
        "{stderr}"
    );
}
