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
use crate::daemon::{command_line_output, fd_count, nofile_limit, rss_bytes, Daemon, DaemonError};
use crate::fixture::{Fixture, FixtureError, INODES, MK_DIR, RM_DIR, SMALL_TREE, STAT_TREE};
use crate::gitstatus::{self, GitStatusOutcome, Prerequisites};
use crate::native::NativeSession;
use crate::p9client::P9Session;
use crate::session::{Probe, Session, SessionError, TreeSession};
use crate::stats::{Pass, Recorder, Summary, Window};
use crate::tree::{InodeSet, Tree};
use crate::vfs::{VfsError, VfsSession};
use crate::workload::{splitmix64, IoSpec, Kind, Offsets, TreeOp, Workload, READDIR_ENTRIES};

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
    /// A tree pass failed part-way.
    #[error("{source} after {entries} entries{}{}", fds.map(|n| format!("; the daemon had {n} fds open{}", limit.map(|l| format!(" (RLIMIT_NOFILE {l})")).unwrap_or_default())).unwrap_or_default(), log.as_ref().map(|l| format!("; server log ends: {l}")).unwrap_or_default())]
    Tree {
        /// What failed.
        source: SessionError,
        /// Entries finished before.
        entries: u64,
        /// The serving process's open fds right after.
        fds: Option<u64>,
        /// Its fd limit (soft `RLIMIT_NOFILE`).
        limit: Option<u64>,
        /// The end of the server's log, if it has one.
        log: Option<String>,
    },
    /// A tree pass finished with another count than the tree's.
    #[error("{what}: {got}, the tree has {want}")]
    WrongCount {
        /// What was counted.
        what: &'static str,
        /// Counted.
        got: u64,
        /// The tree's.
        want: u64,
    },
    /// The daemon raised the fd limit the workload runs it under.
    #[error("the daemon's RLIMIT_NOFILE is {got}, not the workload's {want}")]
    LimitRaised {
        /// What /proc/PID/limits says.
        got: u64,
        /// The workload's.
        want: u64,
    },
    /// The tree workloads are not implemented for this server.
    #[error("the tree workloads are virtio-fs and native only")]
    NotForTrees,
}

impl RunError {
    /// Whether the server ran out of file descriptors (EMFILE or ENFILE in
    /// a reply): what a daemon holding an fd per inode does under the fd
    /// limit of `tree-stat-rlimit1024` and `inode-memory`.
    pub fn is_fd_exhaustion(&self) -> bool {
        let source = match self {
            RunError::Tree { source, .. } | RunError::Session { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.inner().downcast_ref::<VfsError>(),
            Some(VfsError::Errno { err, .. })
                if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        )
    }
}

/// What a tree workload measured besides the [`Summary`] (whose ops/s are
/// entries per second, and latencies per request).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TreeFigures {
    /// Entries the pass finished: stat'ed, made, removed or looked up.
    pub entries: u64,
    /// The server's CPU time per entry, µs; `None` for native.
    pub cpu_us_per_entry: Option<f64>,
    /// The driver's CPU time per entry, µs: the measuring thread's own
    /// (building requests, kicking, waiting for and parsing replies; for
    /// native, the syscalls themselves). On one CPU (`--pin shared`) the
    /// pass's time per entry is about this plus the server's.
    pub driver_cpu_us_per_entry: Option<f64>,
    /// The most fds the serving process had open: sampled every
    /// [`FD_SAMPLE_EVERY`] requests under an fd limit, and after the pass
    /// with every lookup still held.
    pub max_fds: Option<u64>,
    /// The serving process's `RLIMIT_NOFILE` (soft): the workload's, or
    /// what the daemon set itself.
    pub fd_limit: Option<u64>,
    /// Distinct inodes held at the end of the pass (`inode-memory`).
    pub inodes: Option<u64>,
    /// The serving process's resident memory before the pass, bytes
    /// (`inode-memory`).
    pub rss_before: Option<u64>,
    /// ... at its end, every lookup held.
    pub rss_held: Option<u64>,
    /// ... after BATCH_FORGET of all of them.
    pub rss_forgotten: Option<u64>,
    /// How directories were listed ([`TreeSession::listing`]), for the
    /// workloads that list them (`tree-stat`, `tree-remove`).
    pub listing: Option<&'static str>,
}

impl TreeFigures {
    /// Resident bytes per inode held: (RSS held − RSS before) / inodes.
    pub fn bytes_per_inode(&self) -> Option<f64> {
        let (n, a, b) = (self.inodes?, self.rss_before?, self.rss_held?);
        (n > 0).then(|| (b as f64 - a as f64) / n as f64)
    }

    /// Resident bytes per inode still there after the forgets:
    /// (RSS after forget − RSS before) / inodes.
    pub fn bytes_per_inode_after_forget(&self) -> Option<f64> {
        let (n, a, b) = (self.inodes?, self.rss_before?, self.rss_forgotten?);
        (n > 0).then(|| (b as f64 - a as f64) / n as f64)
    }
}

/// Requests between two samples of the daemon's fds under an fd limit.
pub const FD_SAMPLE_EVERY: u64 = 1024;

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
    /// The tree workloads' own figures.
    pub tree: Option<TreeFigures>,
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
    /// Not a fault of fsbench or of this project's servers, so not one
    /// that fails `--strict`: a pair that does not apply (a tree workload
    /// on a 9P server, `inode-memory` on native), or a peer (upstream
    /// virtiofsd, which may hold an fd per inode) out of fds in a tree
    /// workload, under the fd limit of `tree-stat-rlimit1024` and
    /// `inode-memory` (which exist to show it) or the machine's. Reported
    /// all the same.
    pub expected: bool,
}

/// Why `target` does not take part in `w` at all, if it does not.
pub fn not_applicable(target: Target, w: Workload) -> Option<&'static str> {
    if w.is_tree() && target.server.is_9p() {
        return Some("skipped: the tree workloads are virtio-fs and native only");
    }
    if w == Workload::InodeMemory && target.server == Server::Native {
        return Some("skipped: no daemon, so no memory per inode");
    }
    None
}

/// The trees of the tree workloads: generated once per fsbench run, made in
/// the share on first use.
pub struct Trees {
    /// The tree `tree-stat` walks.
    pub stat: Tree,
    /// The tree `tree-create` makes and `tree-remove` removes.
    pub small: Tree,
    /// The files `inode-memory` holds.
    pub inodes: InodeSet,
    made: Vec<Workload>,
}

/// The seed of the stat tree.
pub const STAT_SEED: u64 = 0x0074_7265_6573_7461;
/// The seed of the small tree.
pub const SMALL_SEED: u64 = 0x006e_6f64_656d_6f64;

impl Trees {
    /// The trees `cfg` asks for (none made yet).
    pub fn new(cfg: &Config) -> Trees {
        let any = |ws: &[Workload]| cfg.workloads.iter().any(|w| ws.contains(w));
        Trees {
            stat: if any(&[Workload::TreeStat, Workload::TreeStatRlimit1024]) {
                Tree::generate(STAT_TREE, cfg.tree_files, STAT_SEED)
            } else {
                Tree::generate(STAT_TREE, 0, STAT_SEED)
            },
            small: Tree::generate(SMALL_TREE, cfg.create_files, SMALL_SEED),
            inodes: InodeSet {
                root: INODES,
                count: cfg.inodes,
            },
            made: Vec::new(),
        }
    }

    /// Makes in the share what `w` needs before its first run (the stat
    /// tree, shared by both walks, or the inode set); returns a line for
    /// the log, if it made something.
    pub fn prepare(&mut self, fx: &Fixture, w: Workload) -> Result<Option<String>, FixtureError> {
        let key = match w {
            Workload::TreeStatRlimit1024 => Workload::TreeStat,
            w => w,
        };
        if self.made.contains(&key) {
            return Ok(None);
        }
        let t0 = Instant::now();
        let what = match key {
            Workload::TreeStat => {
                fx.add_tree("", &self.stat)?;
                format!(
                    "the tree-stat tree: {} files ({} MiB) in {} directories, {} deep",
                    self.stat.files.len(),
                    self.stat.bytes() >> 20,
                    self.stat.dirs.len(),
                    self.stat.depth()
                )
            }
            Workload::InodeMemory => {
                fx.add_inodes(&self.inodes)?;
                format!(
                    "the inode-memory set: {} empty files in {} directories",
                    self.inodes.count,
                    self.inodes.dirs()
                )
            }
            _ => return Ok(None),
        };
        self.made.push(key);
        Ok(Some(format!(
            "made {what} in {:.1} s",
            t0.elapsed().as_secs_f64()
        )))
    }
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
    /// The `git-status` step, when selected.
    pub git_status: Option<GitStatusOutcome>,
}

impl Outcome {
    /// Whether anything was measured: a record or a `git-status` row.
    pub fn has_figures(&self) -> bool {
        !self.records.is_empty() || self.git_status.as_ref().is_some_and(|g| !g.rows.is_empty())
    }

    /// Whether nothing was measured though something should have been:
    /// no figures, unless all that was asked is `git-status` and it was
    /// skipped (no root, no /dev/fuse, ...), which is no failure.
    pub fn measured_nothing(&self) -> bool {
        let skipped_alone = self.records.is_empty()
            && self.failures.is_empty()
            && self
                .git_status
                .as_ref()
                .is_some_and(|g| g.skipped.is_some());
        !self.has_figures() && !skipped_alone
    }
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

    /// Redraws the line with the entries a tree pass has finished (at most
    /// five times a second).
    pub fn tick_entries(&mut self, now: Instant, entries: u64) {
        if !self.tty
            || self
                .last
                .is_some_and(|l| now.duration_since(l) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        eprint!(
            "\r\x1b[2K[{}/{}] {}: {entries} entries",
            self.index, self.total, self.label
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
                match target.engine {
                    Engine::Prefer => a.push("--inode-file-handles=prefer".into()),
                    Engine::Never => a.push("--inode-file-handles=never".into()),
                    _ => {}
                }
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

/// The command line that starts `target` for a tree workload: as
/// [`server_args`], but with `--cache auto` (both daemons' default) instead
/// of `never`, so that both offer READDIRPLUS, as a guest mounting with
/// their defaults sees them (with `--cache never` neither does, and every
/// entry costs a LOOKUP). fsbench caches nothing either way: the walk
/// still sends a GETATTR per entry, as `find -exec lstat` on a cold cache.
pub fn tree_server_args(
    cfg: &Config,
    target: Target,
    share: &Path,
    socket: &Path,
) -> Vec<OsString> {
    let mut a = server_args(cfg, target, share, socket);
    if let Some(i) = a.iter().position(|x| x == "--cache") {
        if let Some(v) = a.get_mut(i + 1) {
            *v = "auto".into();
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
    // Only git-status selected: no target runs (git-status looks for
    // virtiofsd-rs itself).
    let targets = if cfg.workloads.is_empty() {
        &[][..]
    } else {
        &cfg.targets[..]
    };
    for &t in targets {
        match program(cfg, t.server) {
            Ok(p) => programs.push((t, p)),
            Err(reason) => {
                eprintln!("fsbench: skipping {}: {reason}", t.label());
                failures.push(Failure {
                    target: t,
                    workload: None,
                    reason,
                    expected: false,
                });
            }
        }
    }
    for &w in &cfg.workloads {
        for (t, _) in &programs {
            if let Some(reason) = not_applicable(*t, w).filter(|_| cfg.runs(*t, w)) {
                failures.push(Failure {
                    target: *t,
                    workload: Some(w),
                    reason: reason.to_string(),
                    expected: true,
                });
            }
        }
    }
    let mut trees = Trees::new(cfg);
    let rounds = cfg.rounds.max(1) as usize;
    let runs = cfg
        .workloads
        .iter()
        .flat_map(|&w| programs.iter().map(move |(t, _)| (*t, w)))
        .filter(|&(t, w)| cfg.runs(t, w) && not_applicable(t, w).is_none())
        .count();
    let mut progress = Progress::new(rounds * runs, cfg.duration);
    // Workload by workload, every server in turn: the figures compared with
    // each other are measured close together.
    for round in 0..rounds {
        for &w in &cfg.workloads {
            match trees.prepare(&fx, w) {
                Ok(Some(line)) => eprintln!("fsbench: {line}"),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("fsbench: {}: {e}", w.name());
                    for (t, _) in &programs {
                        if cfg.runs(*t, w) && not_applicable(*t, w).is_none() {
                            failures.push(Failure {
                                target: *t,
                                workload: Some(w),
                                reason: e.to_string(),
                                expected: false,
                            });
                        }
                    }
                }
            }
            for (target, prog) in &programs {
                if !cfg.runs(*target, w)
                    || failures
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
                let result = match w.tree_op() {
                    Some(op) => run_tree(
                        cfg,
                        &fx,
                        &trees,
                        (*target, prog),
                        (w, op),
                        &log,
                        server_set,
                        &mut progress,
                    ),
                    None => run_one(cfg, &fx, *target, prog, w, &log, server_set, &mut progress),
                };
                match result {
                    Ok(r) => {
                        progress.done(&done_line(&r));
                        records.push(r);
                    }
                    Err(e) => {
                        // A peer holding an fd per inode runs out of them
                        // (under tree-stat-rlimit1024's limit, or the
                        // machine's): what these workloads show. Ours is
                        // expected to stay under its limit.
                        let expected = w.is_tree()
                            && target.server == Server::Virtiofsd
                            && e.is_fd_exhaustion();
                        progress.done(&format!(
                            "FAILED{}: {e}",
                            if expected {
                                " (expected of a peer)"
                            } else {
                                ""
                            }
                        ));
                        failures.push(Failure {
                            target: *target,
                            workload: Some(w),
                            reason: e.to_string(),
                            expected,
                        });
                    }
                }
            }
        }
    }
    // git-status: once, after the workloads, on its own mount.
    let git_status = cfg.git_status.then(|| {
        let pre = Prerequisites::probe(
            cfg.targets.iter().any(|t| t.server == Server::VirtiofsdRs),
            program(cfg, Server::VirtiofsdRs),
        );
        let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cache = gitstatus::cache_dir(xdg.as_deref(), home.as_deref());
        gitstatus::step(
            &pre,
            cache.as_deref(),
            cfg.quick,
            fx.scratch(),
            &logs,
            server_set,
        )
    });
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
    let mut context = vec![
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
    if cfg.workloads.iter().any(|w| w.is_tree()) {
        context.push(format!(
            "tree workloads: one pass per run; tree-stat {} files in {} directories, tree-create/remove {} files in {} directories, inode-memory {} files; the daemon at RLIMIT_NOFILE {} in tree-stat-rlimit1024 and inode-memory",
            trees.stat.files.len(),
            trees.stat.dirs.len(),
            trees.small.files.len(),
            trees.small.dirs.len(),
            trees.inodes.count,
            crate::workload::FD_LIMIT
        ));
    }
    Ok(Outcome {
        records,
        failures,
        versions: versions(cfg),
        context,
        elapsed: started.elapsed(),
        git_status,
    })
}

/// The progress line's end for a finished run.
fn done_line(r: &Record) -> String {
    let m = &r.summary;
    let Some(t) = &r.tree else {
        return format!(
            "{:.0} ops/s, {:.1} MiB/s, p50 {:.1} µs, p99 {:.1} µs",
            m.ops_per_s, m.mib_per_s, m.p50_us, m.p99_us
        );
    };
    let mut s = format!(
        "{} {} in {:.2} s, {:.0}/s, p50 {:.1} µs, p99 {:.1} µs",
        t.entries,
        r.workload.unit(),
        m.seconds,
        m.ops_per_s,
        m.p50_us,
        m.p99_us
    );
    if let Some(c) = t.cpu_us_per_entry {
        s += &format!(", server {c:.1} µs CPU each");
    }
    if let Some(c) = t.driver_cpu_us_per_entry {
        s += &format!(", driver {c:.1} µs");
    }
    if let Some(n) = t.max_fds {
        s += &format!(", max {n} fds");
    }
    if let Some(b) = t.bytes_per_inode() {
        s += &format!(", {b:.0} B/inode");
    }
    if let Some(b) = t.bytes_per_inode_after_forget() {
        s += &format!(" ({b:.0} after forget)");
    }
    s
}

/// The [`Probe`] of a tree pass: the [`Pass`], the progress line, and
/// under an fd limit the daemon's fds, sampled.
struct TreeProbe<'a> {
    pass: Pass,
    fd_pid: Option<u32>,
    max_fds: Option<u64>,
    progress: &'a mut Progress,
}

impl Probe for TreeProbe<'_> {
    fn op(&mut self, started: Instant, units: u64) {
        self.pass.op(started, units);
        let n = self.pass.requests();
        if n % FD_SAMPLE_EVERY == 0 {
            let t = Instant::now();
            if let Some(fds) = self.fd_pid.and_then(fd_count) {
                self.max_fds = self.max_fds.max(Some(fds));
            }
            self.progress.tick_entries(t, self.pass.units());
            self.pass.pause(t.elapsed());
        }
    }
}

/// Entries (files and directories) under `path`, recursively, on the host.
fn count_entries(path: &std::path::Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        n += 1;
        if e.file_type()?.is_dir() {
            n += count_entries(&e.path())?;
        }
    }
    Ok(n)
}

/// One run of a tree workload: a fresh server (under the workload's fd
/// limit), one timed pass, then the lookups forgotten, with the server's
/// CPU time, fds and memory around it.
#[allow(clippy::too_many_arguments)]
fn run_tree(
    cfg: &Config,
    fx: &Fixture,
    trees: &Trees,
    (target, prog): (Target, &Path),
    (w, op): (Workload, TreeOp),
    log: &Path,
    cpus: Option<libc::cpu_set_t>,
    progress: &mut Progress,
) -> Result<Record, RunError> {
    fx.refresh()?;
    if op == TreeOp::Remove {
        fx.add_tree(RM_DIR, &trees.small)?;
    }
    let kind = w.kind(cfg.seq_qd);
    let limit = w.fd_limit();
    let socket = fx.socket("vfs.sock");
    let daemon = match target.server {
        Server::Native => None,
        Server::VirtiofsdRs | Server::Virtiofsd => {
            let mut args = tree_server_args(cfg, target, &fx.share, &socket);
            if let Some(n) = limit {
                // Explicit, so the daemon does not raise its limit (both
                // raise it by default, and may: they run as root).
                args.push(format!("--rlimit-nofile={n}").into());
            }
            let mut d = Daemon::spawn(&target.label(), prog, &args, log, true, cpus, limit)?;
            d.wait_for_socket(&socket, START_TIMEOUT)?;
            Some(d)
        }
        Server::P9d | Server::Diod => return Err(RunError::NotForTrees),
    };
    // Declared after the daemon, so dropped first.
    let mut session: Box<dyn TreeSession> = match &daemon {
        None => Box::new(
            NativeSession::open(&fx.share, &kind, false)
                .map_err(|e| session_err(None)(e.into()))?,
        ),
        Some(d) => Box::new(
            VfsSession::connect(&socket, &kind, cfg.layout, cfg.event_idx, cfg.guest_poll)
                .map_err(|e| session_err(Some(d))(e.into()))?,
        ),
    };
    let pid = daemon.as_ref().map(|d| d.serving_pid());
    let memory = op == TreeOp::HoldInodes;
    let rss_before = pid.filter(|_| memory).and_then(rss_bytes);
    let cpu_before = daemon.as_ref().and_then(|d| d.cpu_time_precise());
    let driver_before = thread_cpu_time();
    let mut probe = TreeProbe {
        pass: Pass::start(),
        fd_pid: pid.filter(|_| limit.is_some()),
        max_fds: None,
        progress,
    };
    let result = match op {
        TreeOp::Stat => session.tree_stat(STAT_TREE, &mut probe),
        TreeOp::Create => session.tree_create(MK_DIR, &trees.small, &mut probe),
        TreeOp::Remove => session.tree_remove(RM_DIR, SMALL_TREE, &mut probe),
        TreeOp::HoldInodes => session.hold_inodes(&trees.inodes, &mut probe),
    };
    let summary = probe.pass.summary();
    let driver_after = thread_cpu_time();
    let cpu_after = daemon.as_ref().and_then(|d| d.cpu_time_precise());
    let units = probe.pass.units();
    // Every lookup is still held.
    let fds_now = pid.and_then(fd_count);
    let limit = pid.and_then(nofile_limit).or(limit);
    let max_fds = probe.max_fds.max(fds_now);
    if let (Some(want), Some(got)) = (w.fd_limit(), limit) {
        if got > want {
            return Err(RunError::LimitRaised { got, want });
        }
    }
    let held = match result {
        Ok(n) => n,
        Err(source) => {
            return Err(RunError::Tree {
                source,
                entries: units,
                fds: fds_now,
                limit,
                log: daemon.as_ref().map(|d| d.log_tail()),
            })
        }
    };
    let want = match op {
        TreeOp::Stat => trees.stat.entries() - 1,
        TreeOp::Create | TreeOp::Remove => trees.small.entries(),
        TreeOp::HoldInodes => trees.inodes.count as u64,
    };
    if units != want {
        return Err(RunError::WrongCount {
            what: "entries finished",
            got: units,
            want,
        });
    }
    let rss_held = pid.filter(|_| memory).and_then(rss_bytes);
    session.forget_all().map_err(session_err(daemon.as_ref()))?;
    let rss_forgotten = pid.filter(|_| memory).and_then(rss_bytes);
    // What the pass left in the share.
    match op {
        TreeOp::Create => {
            let root = fx.share.join(MK_DIR).join(SMALL_TREE);
            let got = count_entries(&root).map_err(|source| FixtureError::Io {
                what: "cannot count",
                path: root.clone(),
                source,
            })? + 1;
            if got != want {
                return Err(RunError::WrongCount {
                    what: "entries on the host after tree-create",
                    got,
                    want,
                });
            }
            fx.empty(MK_DIR)?;
        }
        TreeOp::Remove => {
            let root = fx.share.join(RM_DIR).join(SMALL_TREE);
            if root.exists() {
                let got = count_entries(&root).unwrap_or(0) + 1;
                return Err(RunError::WrongCount {
                    what: "entries left on the host after tree-remove",
                    got,
                    want: 0,
                });
            }
        }
        TreeOp::Stat | TreeOp::HoldInodes => {}
    }
    let listing = matches!(op, TreeOp::Stat | TreeOp::Remove).then(|| session.listing());
    drop(session);
    let secs = summary.seconds;
    let cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    Ok(Record {
        target,
        workload: w,
        summary,
        capped_len: None,
        server_cpu: cpu.map(|c| c / secs),
        spread: None,
        tree: Some(TreeFigures {
            entries: units,
            cpu_us_per_entry: cpu.map(|c| c * 1e6 / units.max(1) as f64),
            driver_cpu_us_per_entry: match (driver_before, driver_after) {
                (Some(a), Some(b)) => {
                    Some(b.saturating_sub(a).as_secs_f64() * 1e6 / units.max(1) as f64)
                }
                _ => None,
            },
            max_fds,
            fd_limit: limit,
            inodes: memory.then_some(held),
            rss_before,
            rss_held,
            rss_forgotten,
            listing,
        }),
    })
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
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
                None,
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
        tree: None,
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
        Kind::Tree(_) => Err(RunError::NotForTrees),
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
            tree: None,
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
        let prefer = server_args(&c, crate::cli::ALL_TARGETS[4], share, sock);
        assert_eq!(&prefer[..8], &up[..8]);
        assert!(prefer.iter().any(|a| a == "--inode-file-handles=prefer"));
        assert!(!up.iter().any(|a| a == "--inode-file-handles=prefer"));
        let tree = tree_server_args(&c, crate::cli::ALL_TARGETS[1], share, sock);
        assert!(tree.windows(2).any(|w| w[0] == "--cache" && w[1] == "auto"));
        assert_eq!(tree.len(), ours.len());
        let never = server_args(&c, crate::cli::ALL_TARGETS[5], share, sock);
        assert!(never.iter().any(|a| a == "--inode-file-handles=never"));
        let diod = server_args(&c, crate::cli::ALL_TARGETS[7], share, sock);
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
            "--tree-files",
            "300",
            "--create-files",
            "200",
            "--inodes",
            "50",
            "--workloads",
            "all",
        ]);
        let out = run(&c).unwrap();
        assert_eq!(out.records.len(), 11, "{:?}", out.failures);
        assert!(out
            .records
            .iter()
            .all(|r| r.summary.samples > 0 && r.summary.ops_per_s > 0.0));
        assert_eq!(out.failures.len(), 2, "{:?}", out.failures);
        assert_eq!(out.failures[0].target.server, Server::P9d);
        assert!(out.failures[0].workload.is_none() && !out.failures[0].expected);
        // inode-memory needs a daemon: skipped, not failed.
        assert_eq!(out.failures[1].workload, Some(Workload::InodeMemory));
        assert!(out.failures[1].expected);
        let trees = Trees::new(&c);
        for (w, want) in [
            (Workload::TreeStat, trees.stat.entries() - 1),
            (Workload::TreeStatRlimit1024, trees.stat.entries() - 1),
            (Workload::TreeCreate, trees.small.entries()),
            (Workload::TreeRemove, trees.small.entries()),
        ] {
            let r = out.records.iter().find(|r| r.workload == w).unwrap();
            let t = r.tree.unwrap();
            assert_eq!(t.entries, want, "{}", w.name());
            assert_eq!((t.cpu_us_per_entry, t.max_fds), (None, None));
        }
    }

    #[test]
    fn only_peers_out_of_fds_are_expected_failures() {
        let emfile = |source: SessionError| RunError::Tree {
            source,
            entries: 960,
            fds: Some(1023),
            limit: Some(1024),
            log: None,
        };
        let e = emfile(SessionError::new(VfsError::Errno {
            op: "READDIRPLUS",
            err: std::io::Error::from_raw_os_error(libc::EMFILE),
        }));
        assert!(e.is_fd_exhaustion());
        let msg = e.to_string();
        assert!(
            msg.contains("after 960 entries; the daemon had 1023 fds open (RLIMIT_NOFILE 1024)"),
            "{msg}"
        );
        let other = emfile(SessionError::new(VfsError::Errno {
            op: "GETATTR",
            err: std::io::Error::from_raw_os_error(libc::EIO),
        }));
        assert!(!other.is_fd_exhaustion());
        assert!(!RunError::NotForTrees.is_fd_exhaustion());
        let p9 = Target {
            server: Server::P9d,
            engine: Engine::Default,
        };
        assert!(not_applicable(p9, Workload::TreeStat).is_some());
        assert!(not_applicable(p9, Workload::Readdir10k).is_none());
        let native = Target {
            server: Server::Native,
            engine: Engine::Default,
        };
        assert!(not_applicable(native, Workload::InodeMemory).is_some());
        assert!(not_applicable(native, Workload::TreeStatRlimit1024).is_none());
    }
}
