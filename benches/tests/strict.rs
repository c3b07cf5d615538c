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
