//! Server processes: started with their output in a log file, watched until
//! their socket appears, and killed when their guard is dropped (and, through
//! `PR_SET_PDEATHSIG`, when fsbench itself dies).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why a server process could not be started or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The log file could not be created.
    #[error("cannot create log {path}: {source}")]
    Log {
        /// The log's path.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// The program could not be executed.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// The process exited before it served.
    #[error("{name} exited with {status} before serving; its log ends: {tail}")]
    Exited {
        /// The server's name.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        tail: String,
    },
    /// The socket never appeared.
    #[error("{name} did not create {socket} within {secs} s; its log ends: {tail}")]
    NoSocket {
        /// The server's name.
        name: String,
        /// The socket expected.
        socket: PathBuf,
        /// How long fsbench waited.
        secs: u64,
        /// The last lines of its log.
        tail: String,
    },
}

/// A running server, killed when dropped.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    exits_alone: bool,
}

impl Daemon {
    /// Starts `program args` as `name`, stdout and stderr to `log`.
    /// `exits_alone`: the server ends by itself when its client goes (a
    /// vhost-user daemon), so dropping the guard first gives it a moment.
    /// `cpus`: the CPUs the server may run on (`None`: fsbench's).
    /// `nofile`: its `RLIMIT_NOFILE`, soft and hard (`None`: fsbench's).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        exits_alone: bool,
        cpus: Option<libc::cpu_set_t>,
        nofile: Option<u64>,
    ) -> Result<Daemon, DaemonError> {
        let out = File::create(log).map_err(|source| DaemonError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| DaemonError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(program);
        // The server's working directory is the log's: a core file (diod
        // 1.0.24 can crash in its SIGTERM teardown, after the figures are
        // taken, and asks for core dumps) stays in the scratch directory.
        if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes async-signal-safe syscalls (prctl, sched_setaffinity,
        // setrlimit) on its own copies of `cpus` and `nofile`, allocating
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(set) = &cpus {
                    let size = std::mem::size_of::<libc::cpu_set_t>();
                    if libc::sched_setaffinity(0, size, set) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(n) = nofile {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| DaemonError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exits_alone,
        })
    }

    /// Waits until `socket` exists (without connecting: a vhost-user daemon
    /// serves only its first connection).
    pub fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) -> Result<(), DaemonError> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if socket.exists() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(DaemonError::NoSocket {
                    name: self.name.clone(),
                    socket: socket.to_path_buf(),
                    secs: timeout.as_secs(),
                    tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The CPU time the server has used so far, all threads, user and
    /// system (`/proc/PID/stat`), with its children's: a daemon that serves
    /// from a child it supervises (virtiofsd-rs and p9d in every sandbox
    /// mode) is measured there. `None` if it cannot be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let mut ticks = process_ticks(pid)?;
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            ticks += process_ticks(c).unwrap_or(0);
        }
        // SAFETY: plain sysconf query.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    /// The daemon's own process id (the process fsbench started; a
    /// daemon that supervises a child serves from [`Daemon::serving_pid`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process that serves: the daemon's first child if it has one
    /// (virtiofsd-rs serves from a child it supervises), else the daemon.
    pub fn serving_pid(&self) -> u32 {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(pid)
    }

    /// The CPU time the daemon and its children have used so far, to the
    /// nanosecond (the sum of their live threads' `/proc/PID/task/TID/
    /// schedstat`), for passes too short for [`Daemon::cpu_time`]'s clock
    /// ticks; that where schedstat is missing.
    pub fn cpu_time_precise(&self) -> Option<Duration> {
        let pid = self.child.id();
        let mut pids = vec![pid];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children_of(pids[i]));
            i += 1;
        }
        let mut ns = 0u64;
        for p in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                match stat.split_whitespace().next().map(str::parse::<u64>) {
                    Some(Ok(v)) => ns += v,
                    _ => return self.cpu_time(),
                }
            }
        }
        Some(Duration::from_nanos(ns))
    }

    /// An error if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), DaemonError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(DaemonError::Exited {
                name: self.name.clone(),
                status,
                tail: self.log_tail(),
            }),
            _ => Ok(()),
        }
    }

    /// The last few lines of the log, on one line.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 4)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A vhost-user daemon exits by itself once its frontend is gone;
        // a 9P server is asked to, with SIGTERM (so a profiler or valgrind
        // wrapped around it can write its data). Whatever is left after a
        // moment is killed.
        let grace = if self.exits_alone {
            Duration::from_millis(200)
        } else {
            // SAFETY: signalling our own child by its pid; it has not been
            // reaped yet (we own the Child), so the pid is still its own.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            Duration::from_secs(5)
        };
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` non-empty lines of `path`, joined with " | ".
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// The first line `program args` prints on stdout (or stderr), if it runs.
pub fn command_line_output(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_string();
    (!line.is_empty()).then_some(line)
}

/// The children of every thread of process `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Resident memory of process `pid` (`VmRSS` of `/proc/PID/status`), in
/// bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The soft `RLIMIT_NOFILE` of process `pid` (`/proc/PID/limits`).
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open file descriptors of process `pid` (entries of `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// User and system clock ticks of process `pid`, all threads
/// (`/proc/PID/stat`).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14 and stime 15, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_exits_early_is_reported_with_its_log() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("log");
        let args: Vec<OsString> = vec![
            "-c".into(),
            "echo starting; echo 'bad flag' >&2; exit 3".into(),
        ];
        let mut d =
            Daemon::spawn("sh", Path::new("/bin/sh"), &args, &log, false, None, None).unwrap();
        let err = d
            .wait_for_socket(&t.path().join("never"), Duration::from_secs(5))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exited with exit status: 3"), "{msg}");
        assert!(msg.contains("starting | bad flag"), "{msg}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let t = tempfile::tempdir().unwrap();
        let r = Daemon::spawn(
            "x",
            Path::new("/no/such/program"),
            &[],
            &t.path().join("log"),
            true,
            None,
            None,
        );
        assert!(matches!(r, Err(DaemonError::Spawn { .. })));
    }

    #[test]
    fn a_daemon_runs_under_its_fd_limit_and_is_measured() {
        let t = tempfile::tempdir().unwrap();
        let args: Vec<OsString> = vec!["-c".into(), "ulimit -n -H; exec sleep 30".into()];
        let log = t.path().join("log");
        let mut d = Daemon::spawn(
            "sh",
            Path::new("/bin/sh"),
            &args,
            &log,
            false,
            None,
            Some(64),
        )
        .unwrap();
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            d.check_alive().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "64");
        let pid = d.serving_pid();
        assert_eq!(pid, d.child.id(), "no child: the daemon serves");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(line.split_whitespace().filter(|w| *w == "64").count(), 2);
        assert_eq!(nofile_limit(pid), Some(64));
        assert!(rss_bytes(pid).is_some_and(|b| b > 0));
        assert!(fd_count(pid).is_some_and(|n| n >= 3));
        assert!(d.cpu_time_precise().is_some());
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
