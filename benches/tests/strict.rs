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

/// fsbench `--quick --strict` with `args`, only git-status, and `env`.
fn fsbench_git(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fsbench"))
        .args(["--quick", "--strict", "--svg", "/dev/null"])
        .args(["--workloads", "git-status"])
        .args(args)
        .env_remove("CI")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Why this machine cannot mount virtiofsd-rs over /dev/fuse and run git,
/// if it cannot.
fn cannot_mount() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if !std::path::Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse")
    } else if Command::new("git").arg("--version").output().is_err() {
        Some("no git")
    } else {
        None
    }
}

#[test]
fn git_status_skipped_is_no_strict_failure_but_missing_git_under_ci_is() {
    let out = fsbench_git(&["--servers", "native"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("git status: skipped: virtiofsd-rs is not among --servers"),
        "{stdout}"
    );
    // No git on the PATH: skipped, except under CI.
    let no_git = ["--servers", "virtiofsd-rs", "--virtiofsd-rs", "/bin/false"];
    let out = fsbench_git(&no_git, &[("PATH", "/nonexistent")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("git status: skipped: git is not"),
        "{stdout}"
    );
    let out = fsbench_git(&no_git, &[("PATH", "/nonexistent"), ("CI", "true")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--strict: git-status: git is not"),
        "{stderr}"
    );
}

#[test]
fn a_git_status_server_that_fails_fails_a_strict_run() {
    if let Some(why) = cannot_mount() {
        eprintln!("SKIP: {why}");
        return;
    }
    let out = fsbench_git(
        &["--servers", "virtiofsd-rs", "--virtiofsd-rs", "/bin/false"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--strict: git-status: virtiofsd-rs cache=auto: virtiofsd-rs exited"),
        "{stderr}"
    );
}

#[test]
fn git_status_measures_native_and_both_policies() {
    let ours = std::path::Path::new(env!("CARGO_BIN_EXE_fsbench")).with_file_name("virtiofsd-rs");
    if let Some(why) = cannot_mount().or((!ours.exists()).then_some("no virtiofsd-rs built")) {
        eprintln!("SKIP: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = fsbench_git(
        &[
            "--servers",
            "virtiofsd-rs",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for row in [
        "native ",
        "virtiofsd-rs cache=auto ",
        "virtiofsd-rs cache=always ",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(row) && l.contains("generated, 1000 files")),
            "{row}: {stdout}"
        );
    }
    let json = std::fs::read_to_string(&json).unwrap();
    assert_eq!(
        json.matches("\"workload\":\"git-status\"").count(),
        3,
        "{json}"
    );
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains("gitstatus-mnt"));
}
