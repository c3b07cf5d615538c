//! The daemons' seccomp filters, installed in a child process (a filter
//! cannot be removed, so each case re-runs this test binary with an
//! environment variable that says what to do under the filter).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use sandbox::seccomp::{install, programs};
use sandbox::{Profile, SeccompMode};

const CHILD: &str = "SANDBOX_SECCOMP_CHILD";

fn mode(name: &str) -> SeccompMode {
    match name {
        "kill" => SeccompMode::Kill,
        "log" => SeccompMode::Log,
        "trap" => SeccompMode::Trap,
        _ => SeccompMode::None,
    }
}

/// Runs `action` under the p9d filter with `mode` in a child process.
fn run_child(mode: &str, action: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{mode}:{action}"))
        .output()
        .unwrap()
}

/// The child's side: does nothing unless started by `run_child`.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (m, action) = spec.split_once(':').unwrap();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u32;
    let progs = programs(Profile::P9, mode(m), pid).unwrap();
    install(&progs, mode(m)).unwrap();
    match action {
        "socket" => {
            // Not on any allowlist: a daemon never makes new sockets.
            // SAFETY: plain syscall.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            println!("socket returned {fd}");
        }
        "thread" => {
            let t = std::thread::spawn(|| 42);
            println!("thread returned {}", t.join().unwrap());
        }
        "fork" => {
            // SAFETY: the child exits at once.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(0) };
            }
            println!("fork returned {pid}");
        }
        "exec-mapping" => {
            // SAFETY: an anonymous mapping; no memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            println!("mmap returned {p:?}");
        }
        "uring-setup" => {
            let mut params = [0u8; 120];
            // SAFETY: a zeroed io_uring_params is valid input.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr()) };
            println!("io_uring_setup returned {fd}");
        }
        "prlimit-other" => {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: valid out-pointer; a null new limit only reads.
            let r = unsafe { libc::prlimit(1, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
            println!("prlimit returned {r}");
        }
        "own-limits" => {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: valid out-pointer.
            let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) };
            assert_eq!(r, 0);
            // SAFETY: plain fcntl on stdin.
            let fl = unsafe { libc::fcntl(0, libc::F_GETFL) };
            assert!(fl >= 0);
        }
        "setown" => {
            // SAFETY: plain fcntl on stdin.
            let r = unsafe { libc::fcntl(0, libc::F_SETOWN, 1) };
            println!("F_SETOWN returned {r}");
        }
        other => panic!("unknown action {other}"),
    }
}

fn killed_by_sigsys(out: &Output) -> bool {
    out.status.signal() == Some(libc::SIGSYS)
}

#[test]
fn kill_mode_kills_a_forbidden_syscall() {
    let out = run_child("kill", "socket");
    assert!(
        killed_by_sigsys(&out),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn trap_mode_reports_the_forbidden_syscall_and_survives() {
    let out = run_child("trap", "socket");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert!(
        stderr.contains(&format!("blocked system call {}", libc::SYS_socket)),
        "{stderr}"
    );
    assert!(stdout.contains("socket returned -1"), "{stdout}");
}

#[test]
fn log_mode_lets_the_forbidden_syscall_through() {
    let out = run_child("log", "socket");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}", out.status);
    assert!(!stdout.contains("socket returned -1"), "{stdout}");
}

#[test]
fn none_mode_installs_nothing() {
    assert!(programs(Profile::VirtioFs, SeccompMode::None, 1)
        .unwrap()
        .is_empty());
    let out = run_child("none", "socket");
    assert!(out.status.success());
}

#[test]
fn threads_start_under_the_filter_but_fork_is_killed() {
    let out = run_child("kill", "thread");
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("thread returned 42"));
    let out = run_child("kill", "fork");
    assert!(killed_by_sigsys(&out), "fork: {:?}", out.status);
}

#[test]
fn executable_mappings_are_killed() {
    let out = run_child("kill", "exec-mapping");
    assert!(killed_by_sigsys(&out), "{:?}", out.status);
}

#[test]
fn no_new_io_uring_ring_can_be_made_under_the_filter() {
    let out = run_child("kill", "uring-setup");
    assert!(killed_by_sigsys(&out), "{:?}", out.status);
}

#[test]
fn other_processes_limits_and_sigio_owners_are_out_of_reach() {
    let out = run_child("kill", "prlimit-other");
    assert!(
        killed_by_sigsys(&out),
        "prlimit64 on pid 1: {:?}",
        out.status
    );
    let out = run_child("kill", "setown");
    assert!(killed_by_sigsys(&out), "F_SETOWN: {:?}", out.status);
    let out = run_child("kill", "own-limits");
    assert!(out.status.success(), "own limits: {:?}", out.status);
}
