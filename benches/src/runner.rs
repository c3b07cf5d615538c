//! Runs every (target, workload): a fresh server process per run, the same
//! scratch directory for all, a closed loop for I/O and a sequential loop
//! for metadata, a progress line on stderr. A server that cannot start or
//! fails a run is reported and the next run goes on.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::affinity;
use crate::cli::{Config, Engine, Server, Target};
use crate::daemon::{command_line_output, Daemon, DaemonError};
use crate::fixture::{Fixture, FixtureError};
use crate::native::NativeSession;
use crate::p9client::P9Session;
use crate::session::{Session, SessionError};
use crate::stats::{Recorder, Summary, Window};
use crate::vfs::VfsSession;
use crate::workload::{splitmix64, IoSpec, Kind, Offsets, Workload, READDIR_ENTRIES};

/// How long a server gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why fsbench could not start measuring at all.
#[derive(Debug, thiserror::Error)]
pub enum RunSetupError {
    /// The scratch directory could not be made.
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    /// `--pin` cannot be honoured.
    #[error("cannot pin: {0}")]
    Pin(String),
}

/// Why one run produced no figures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scratch directory could not be refreshed.
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    /// The server did not start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The server failed a request.
    #[error("{source}{}", log.as_ref().map(|l| format!("; server log ends: {l}")).unwrap_or_default())]
    Session {
        /// What failed.
        source: SessionError,
        /// The end of the server's log, if it has one.
        log: Option<String>,
    },
    /// The server listed fewer entries than the directory has.
    #[error("listed {got} entries, the directory has {READDIR_ENTRIES} (+ . and ..)")]
    ShortListing {
        /// Entries seen.
        got: u64,
    },
}

/// The figures of one (target, workload).
#[derive(Debug, Clone)]
pub struct Record {
    /// Server and engine.
    pub target: Target,
    /// Workload.
    pub workload: Workload,
    /// Figures.
    pub summary: Summary,
    /// Bytes per I/O request when the protocol capped the workload's size.
    pub capped_len: Option<u32>,
    /// The server's CPU use over the run, warm-up included, in CPUs (1.0:
    /// one CPU busy all the time); `None` for native.
    pub server_cpu: Option<f64>,
    /// With several rounds: the spread of ops/s over them, (max − min) /
    /// median.
    pub spread: Option<f64>,
}

/// One record per (target, workload) out of records measured in several
/// rounds: the round with the median ops/s (the lower of the two middle
/// ones for an even count), with the spread over the rounds. Order: as
/// each pair first appears.
pub fn median_of_rounds(records: Vec<Record>) -> Vec<Record> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for r in records {
        match groups
            .iter_mut()
            .find(|g| g[0].target == r.target && g[0].workload == r.workload)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            g.sort_by(|a, b| a.summary.ops_per_s.total_cmp(&b.summary.ops_per_s));
            let n = g.len();
            let (lo, hi) = (g[0].summary.ops_per_s, g[n - 1].summary.ops_per_s);
            let mut m = g.swap_remove((n - 1) / 2);
            if n > 1 && m.summary.ops_per_s > 0.0 {
                m.spread = Some((hi - lo) / m.summary.ops_per_s);
            }
            m
        })
        .collect()
}

/// A (target, workload) without figures, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Server and engine.
    pub target: Target,
    /// The workload, or `None` when the whole target was skipped.
    pub workload: Option<Workload>,
    /// Why.
    pub reason: String,
}

/// Everything a run of fsbench measured and the context to read it in.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Figures, in run order.
    pub records: Vec<Record>,
    /// What could not be measured.
    pub failures: Vec<Failure>,
    /// `(server, version)` of each target program.
    pub versions: Vec<(String, String)>,
    /// The machine, kernel, scratch filesystem, duration.
    pub context: Vec<String>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// The progress line: `\r`-updated on a terminal, one line per finished run
/// otherwise.
pub struct Progress {
    tty: bool,
    total: usize,
    index: usize,
    label: String,
    last: Option<Instant>,
    per_run: Duration,
}

impl Progress {
    /// A progress line for `total` runs of `per_run` each.
    pub fn new(total: usize, per_run: Duration) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            total,
            index: 0,
            label: String::new(),
            last: None,
            per_run,
        }
    }

    fn start(&mut self, label: String) {
        self.index += 1;
        self.label = label;
        self.last = None;
        if self.tty {
            eprint!(
                "\r\x1b[2K[{}/{}] {}: starting",
                self.index, self.total, self.label
            );
        }
    }

    /// Redraws the line (at most five times a second).
    pub fn tick(&mut self, now: Instant, window: &Window) {
        if !self.tty
            || self
                .last
                .is_some_and(|l| now.duration_since(l) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let rest = (self.total - self.index) as f64 * self.per_run.as_secs_f64();
        eprint!(
            "\r\x1b[2K[{}/{}] {}: {:.1} s left (then about {:.0} s more)",
            self.index,
            self.total,
            self.label,
            window.left(now),
            rest
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&mut self, result: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("[{}/{}] {}: {}", self.index, self.total, self.label, result);
    }
}

/// A program's path if it is an executable file.
fn available(p: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p.to_path_buf()),
        Ok(_) => Err(format!("{} is not an executable file", p.display())),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

fn program(cfg: &Config, server: Server) -> Result<PathBuf, String> {
    match server {
        Server::Native => Ok(PathBuf::new()),
        Server::VirtiofsdRs => available(&cfg.virtiofsd_rs)
            .map_err(|e| format!("{e} (cargo build --release, or --virtiofsd-rs)")),
        Server::Virtiofsd => cfg.virtiofsd.clone().and_then(|p| available(&p)),
        Server::P9d => {
            available(&cfg.p9d).map_err(|e| format!("{e} (cargo build --release, or --p9d)"))
        }
        Server::Diod => cfg.diod.clone().and_then(|p| available(&p)),
    }
}

/// The command line that starts `target` serving `share` on `socket`.
pub fn server_args(cfg: &Config, target: Target, share: &Path, socket: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    match target.server {
        Server::Native => {}
        Server::VirtiofsdRs | Server::Virtiofsd => {
            push("--shared-dir");
            a.push(share.into());
            a.push("--socket-path".into());
            a.push(socket.into());
            // The same options for both daemons: no sandbox (both would
            // build the same namespaces), and cache=never.
            for s in ["--sandbox", "none", "--cache", "never"] {
                a.push(s.into());
            }
            if target.server == Server::VirtiofsdRs {
                a.push("--io-engine".into());
                a.push(target.engine.io_engine().into());
                if target.engine == Engine::IoUringNoSeccomp {
                    a.push("--seccomp".into());
                    a.push("none".into());
                }
                a.push("--request-queues".into());
                a.push("1".into());
                if let Some(us) = cfg.server_poll_us {
                    a.push(format!("--poll-us={us}").into());
                }
            } else {
                a.extend(cfg.virtiofsd_args.iter().map(OsString::from));
            }
        }
        Server::P9d => {
            push("--shared-dir");
            a.push(share.into());
            a.push("--listen".into());
            let mut l = OsString::from("unix:");
            l.push(socket);
            a.push(l);
            if let Some(us) = cfg.server_poll_us {
                a.push(format!("--poll-us={us}").into());
            }
        }
        Server::Diod => {
            // Foreground, no authentication, no user database (any uid may
            // attach), no config file, log to stderr; listen on a unix
            // socket; export the share (tests/e2e/lib-host.sh's invocation).
            for s in [
                "-f",
                "-n",
                "-N",
                "-d",
                "0",
                "-c",
                "/dev/null",
                "-L",
                "stderr",
                "-l",
            ] {
                a.push(s.into());
            }
            a.push(socket.into());
            a.push("-e".into());
            a.push(share.into());
        }
    }
    a
}

/// Runs everything `cfg` asks for.
pub fn run(cfg: &Config) -> Result<Outcome, RunSetupError> {
    let started = Instant::now();
    let load_before = loadavg();
    // Before fsbench binds itself to fewer CPUs.
    let machine = machine();
    let allowed = affinity::allowed().map_err(|e| RunSetupError::Pin(e.to_string()))?;
    let affinity::Placement {
        bench: bench_cpus,
        server: server_cpus,
    } = affinity::plan(cfg.pin, &allowed).map_err(RunSetupError::Pin)?;
    if let Some(c) = &bench_cpus {
        affinity::bind(&affinity::cpu_set(c)).map_err(|e| RunSetupError::Pin(e.to_string()))?;
    }
    let placement = match (&bench_cpus, &server_cpus) {
        (Some(b), Some(s)) => format!(
            "placement --pin {}: fsbench (and native) on CPU {:?}, servers on CPU {:?}",
            cfg.pin.name(),
            b,
            s
        ),
        _ => "placement --pin none: left to the scheduler".to_string(),
    };
    let server_set = server_cpus.as_deref().map(affinity::cpu_set);
    let fx = Fixture::create(&cfg.dir, cfg.file_size)?;
    let logs = fx.scratch().join("logs");
    std::fs::create_dir_all(&logs).map_err(|source| FixtureError::Io {
        what: "cannot create",
        path: logs.clone(),
        source,
    })?;
    let mut records = Vec::new();
    let mut failures = Vec::new();
    let mut programs = Vec::new();
    for &t in &cfg.targets {
        match program(cfg, t.server) {
            Ok(p) => programs.push((t, p)),
            Err(reason) => {
                eprintln!("fsbench: skipping {}: {reason}", t.label());
                failures.push(Failure {
                    target: t,
                    workload: None,
                    reason,
                });
            }
        }
    }
    let rounds = cfg.rounds.max(1) as usize;
    let mut progress = Progress::new(rounds * programs.len() * cfg.workloads.len(), cfg.duration);
    // Workload by workload, every server in turn: the figures compared with
    // each other are measured close together.
    for round in 0..rounds {
        for &w in &cfg.workloads {
            for (target, prog) in &programs {
                if failures
                    .iter()
                    .any(|f: &Failure| f.target == *target && f.workload == Some(w))
                {
                    continue;
                }
                let label = format!("{} {}", target.label(), w.name());
                progress.start(if rounds > 1 {
                    format!("round {}/{rounds}: {label}", round + 1)
                } else {
                    label
                });
                let log = logs.join(format!(
                    "{}-{}-{}{}.log",
                    target.server.name(),
                    target.engine.name().replace('-', ""),
                    w.name(),
                    if rounds > 1 {
                        format!("-{}", round + 1)
                    } else {
                        String::new()
                    }
                ));
                match run_one(cfg, &fx, *target, prog, w, &log, server_set, &mut progress) {
                    Ok(r) => {
                        progress.done(&format!(
                            "{:.0} ops/s, {:.1} MiB/s, p50 {:.1} µs, p99 {:.1} µs",
                            r.summary.ops_per_s,
                            r.summary.mib_per_s,
                            r.summary.p50_us,
                            r.summary.p99_us
                        ));
                        records.push(r);
                    }
                    Err(e) => {
                        progress.done(&format!("FAILED: {e}"));
                        failures.push(Failure {
                            target: *target,
                            workload: Some(w),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
    }
    // A pair that failed in any round is reported as failed, not as the
    // median of the rounds that worked.
    records.retain(|r| {
        !failures
            .iter()
            .any(|f| f.target == r.target && f.workload == Some(r.workload))
    });
    let records = if rounds > 1 {
        median_of_rounds(records)
    } else {
        records
    };
    let context = vec![
        machine,
        format!(
            "scratch directory {} ({}), data files {} MiB",
            fx.scratch().display(),
            fx.fs_type(),
            cfg.file_size >> 20
        ),
        format!(
            "{:.1} s per run, the first {:.1} s not measured; seqread-1m/seqwrite-1m at queue depth {}{}",
            cfg.duration.as_secs_f64(),
            cfg.warmup.as_secs_f64(),
            cfg.seq_qd,
            if cfg.layout == crate::vfs::DataLayout::Flat {
                "; virtio-fs data in one descriptor (--flat-data)"
            } else {
                ""
            }
        ),
        if rounds > 1 {
            format!(
                "{rounds} rounds, each workload run by every server in turn; each figure is the round with the median ops/s, spread = (max - min) / median of ops/s"
            )
        } else {
            "one round, each workload run by every server in turn".to_string()
        },
        format!(
            "{placement}; virtio-fs EVENT_IDX {}; the driver polls up to {} µs for a reply before sleeping{}",
            if cfg.event_idx { "negotiated" } else { "off (--no-event-idx)" },
            cfg.guest_poll.as_micros(),
            if cfg.guest_poll.is_zero() { " (never)" } else { " (as KVM halt polling)" }
        ),
        match cfg.server_poll_us {
            Some(us) => format!("virtiofsd-rs and p9d: --poll-us {us}"),
            None => "virtiofsd-rs and p9d: their default polling (--poll-us 50)".into(),
        },
        format!(
            "load average (1, 5, 15 min) before: {load_before}, after: {}",
            loadavg()
        ),
    ];
    Ok(Outcome {
        records,
        failures,
        versions: versions(cfg),
        context,
        elapsed: started.elapsed(),
    })
}

fn session_err(d: Option<&Daemon>) -> impl FnOnce(SessionError) -> RunError + '_ {
    move |source| RunError::Session {
        source,
        log: d.map(|d| d.log_tail()),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    cfg: &Config,
    fx: &Fixture,
    target: Target,
    prog: &Path,
    w: Workload,
    log: &Path,
    cpus: Option<libc::cpu_set_t>,
    progress: &mut Progress,
) -> Result<Record, RunError> {
    fx.refresh()?;
    let kind = w.kind(cfg.seq_qd);
    let socket = fx.socket(if target.server.is_9p() {
        "9p.sock"
    } else {
        "vfs.sock"
    });
    let mut daemon = match target.server {
        Server::Native => None,
        _ => {
            let args = server_args(cfg, target, &fx.share, &socket);
            let mut d = Daemon::spawn(
                &target.label(),
                prog,
                &args,
                log,
                !target.server.is_9p(),
                cpus,
            )?;
            d.wait_for_socket(&socket, START_TIMEOUT)?;
            Some(d)
        }
    };
    // Declared after the daemon, so dropped first: a vhost-user daemon sees
    // its frontend go and exits by itself.
    let mut session: Box<dyn Session> = match target.server {
        Server::Native => Box::new(
            NativeSession::open(&fx.share, &kind, target.engine == Engine::Memfd)
                .map_err(|e| session_err(None)(e.into()))?,
        ),
        Server::VirtiofsdRs | Server::Virtiofsd => Box::new(
            VfsSession::connect(&socket, &kind, cfg.layout, cfg.event_idx, cfg.guest_poll)
                .map_err(|e| session_err(daemon.as_ref())(e.into()))?,
        ),
        Server::P9d | Server::Diod => {
            use std::os::unix::ffi::OsStrExt;
            Box::new(
                P9Session::connect(
                    &socket,
                    fx.share.as_os_str().as_bytes(),
                    &kind,
                    cfg.guest_poll,
                )
                .map_err(|e| session_err(daemon.as_ref())(e.into()))?,
            )
        }
    };
    let cpu_before = daemon.as_ref().and_then(|d| d.cpu_time());
    let started = Instant::now();
    let summary = measure(cfg, fx, w, &kind, session.as_mut(), progress).map_err(|e| match e {
        RunError::Session { source, .. } => session_err(daemon.as_ref())(source),
        other => other,
    });
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = match (cpu_before, daemon.as_ref().and_then(|d| d.cpu_time())) {
        (Some(a), Some(b)) if elapsed > 0.0 => Some(b.saturating_sub(a).as_secs_f64() / elapsed),
        _ => None,
    };
    drop(session);
    if let Some(d) = daemon.as_mut() {
        if let (Err(e), Ok(_)) = (d.check_alive(), &summary) {
            // Exiting after the frontend went away is expected of vhost-user
            // daemons; a 9P server must still be up.
            if target.server.is_9p() {
                return Err(e.into());
            }
        }
    }
    let (summary, capped_len) = summary?;
    Ok(Record {
        target,
        workload: w,
        summary,
        capped_len,
        server_cpu,
        spread: None,
    })
}

/// The measuring loop of one run.
fn measure(
    cfg: &Config,
    fx: &Fixture,
    w: Workload,
    kind: &Kind,
    s: &mut dyn Session,
    progress: &mut Progress,
) -> Result<(Summary, Option<u32>), RunError> {
    let e = |source| RunError::Session { source, log: None };
    match kind {
        Kind::Io(spec) => {
            let len = s.io_len().unwrap_or(spec.len);
            let capped = (len != spec.len).then_some(len);
            let spec = IoSpec { len, ..*spec };
            let mut offsets = Offsets::new(&spec, fx.file_size, splitmix64(w as u64));
            let window = Window::starting_now(cfg.duration, cfg.warmup);
            let mut rec = Recorder::new(window);
            let mut submitted = vec![window.begin; spec.qd];
            for (slot, at) in submitted.iter_mut().enumerate() {
                *at = Instant::now();
                s.submit(slot, offsets.next_offset()).map_err(e)?;
            }
            s.flush().map_err(e)?;
            let mut outstanding = spec.qd;
            let mut done = Vec::with_capacity(spec.qd);
            while outstanding > 0 {
                done.clear();
                s.wait(&mut done).map_err(e)?;
                let go = rec.keep_going(Instant::now());
                let mut refilled = false;
                for &(slot, at) in &done {
                    outstanding -= 1;
                    rec.record(
                        at,
                        at.saturating_duration_since(submitted[slot]),
                        1,
                        u64::from(len),
                    );
                    if go {
                        submitted[slot] = Instant::now();
                        s.submit(slot, offsets.next_offset()).map_err(e)?;
                        outstanding += 1;
                        refilled = true;
                    }
                }
                if refilled {
                    s.flush().map_err(e)?;
                }
                progress.tick(Instant::now(), &window);
            }
            Ok((rec.summary(), capped))
        }
        Kind::CreateStatUnlink | Kind::Readdir => {
            let window = Window::starting_now(cfg.duration, cfg.warmup);
            let mut rec = Recorder::new(window);
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                let units = if *kind == Kind::Readdir {
                    let n = s.list_dir().map_err(e)?;
                    if n < READDIR_ENTRIES as u64 {
                        return Err(RunError::ShortListing { got: n });
                    }
                    n
                } else {
                    i += 1;
                    s.create_stat_unlink(format!("f{i}").as_bytes())
                        .map_err(e)?;
                    1
                };
                let t1 = Instant::now();
                rec.record(t1, t1 - t0, units, 0);
                progress.tick(t1, &window);
                if !rec.keep_going(t1) {
                    break;
                }
            }
            Ok((rec.summary(), None))
        }
    }
}

/// The first three fields of `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPUs, CPU model, memory and kernel.
pub fn machine() -> String {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// The version each target program reports.
pub fn versions(cfg: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &cfg.targets {
        if !seen.insert(t.server) {
            continue;
        }
        let Ok(p) = program(cfg, t.server) else {
            continue;
        };
        let v = match t.server {
            Server::Native => continue,
            Server::VirtiofsdRs | Server::P9d => {
                let v = command_line_output(&p, &["--version"]).unwrap_or_else(|| "unknown".into());
                match git_describe() {
                    Some(g) => format!("{v} (git {g})"),
                    None => v,
                }
            }
            Server::Virtiofsd => {
                command_line_output(&p, &["--version"]).unwrap_or_else(|| "unknown".into())
            }
            Server::Diod => {
                match command_line_output(Path::new("dpkg-query"), &["-W", "-f=${Version}", "diod"])
                {
                    Some(v) if p == Path::new("/usr/sbin/diod") => {
                        format!("diod {v} (Debian package)")
                    }
                    _ => format!("diod at {}", p.display()),
                }
            }
        };
        out.push((t.server.name().to_string(), v));
    }
    out
}

/// `git describe --always --dirty` of the workspace fsbench was built from.
pub fn git_describe() -> Option<String> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    command_line_output(
        Path::new("git"),
        &["-C", ws.to_str()?, "describe", "--always", "--dirty"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["fsbench"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .unwrap()
            .into_config(
                Path::new("/nowhere/target/release/fsbench"),
                None,
                "fsbench".into(),
            )
            .unwrap()
    }

    #[test]
    fn rounds_give_each_pair_its_median_and_spread() {
        use crate::stats::Summary;
        use crate::workload::Workload;
        let rec = |server, w, ops: f64| Record {
            target: Target {
                server,
                engine: Engine::Default,
            },
            workload: w,
            summary: Summary {
                ops_per_s: ops,
                mib_per_s: ops,
                p50_us: 1e6 / ops,
                p99_us: 2e6 / ops,
                samples: 1,
                seconds: 1.0,
            },
            capped_len: None,
            server_cpu: None,
            spread: None,
        };
        let (a, b) = (Workload::SeqRead1m, Workload::Readdir10k);
        let all = vec![
            rec(Server::Native, a, 100.0),
            rec(Server::Native, b, 10.0),
            rec(Server::Native, a, 120.0),
            rec(Server::Native, b, 30.0),
            rec(Server::Native, a, 80.0),
            rec(Server::Native, b, 20.0),
            rec(Server::Diod, a, 7.0),
        ];
        let m = median_of_rounds(all);
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].workload, m[0].summary.ops_per_s), (a, 100.0));
        assert_eq!(m[0].spread, Some(0.4));
        // The median round's other figures come with it.
        assert_eq!(m[0].summary.p50_us, 1e4);
        assert_eq!((m[1].workload, m[1].summary.ops_per_s), (b, 20.0));
        assert_eq!(m[1].spread, Some(1.0));
        // One round: no spread.
        assert_eq!((m[2].summary.ops_per_s, m[2].spread), (7.0, None));
    }

    #[test]
    fn both_virtio_fs_daemons_get_the_same_options() {
        let c = cfg(&[]);
        let (share, sock) = (Path::new("/s"), Path::new("/t/vfs.sock"));
        let ours = server_args(&c, crate::cli::ALL_TARGETS[1], share, sock);
        let up = server_args(&c, crate::cli::ALL_TARGETS[3], share, sock);
        assert_eq!(&ours[..8], &up[..8]);
        assert!(ours.iter().any(|a| a == "io-uring"));
        let diod = server_args(&c, crate::cli::ALL_TARGETS[5], share, sock);
        assert!(diod
            .windows(2)
            .any(|w| w[0] == "-l" && w[1] == "/t/vfs.sock"));
    }

    #[test]
    fn native_runs_end_to_end_and_missing_servers_are_skipped() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().to_str().unwrap();
        let c = cfg(&[
            "--servers",
            "native,p9d",
            "--duration",
            "0.2",
            "--file-size",
            "2",
            "--dir",
            dir,
        ]);
        let out = run(&c).unwrap();
        assert_eq!(out.records.len(), 7, "{:?}", out.failures);
        assert!(out
            .records
            .iter()
            .all(|r| r.summary.samples > 0 && r.summary.ops_per_s > 0.0));
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.failures[0].target.server, Server::P9d);
        assert!(out.failures[0].workload.is_none());
    }
}
