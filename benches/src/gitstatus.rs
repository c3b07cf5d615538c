//! `git-status`: the real `git status` on a committed tree, through
//! virtiofsd-rs's host FUSE mount (`--fuse-mount`) with `cache=auto` and
//! `cache=always`, against the same command on the tree itself.
//!
//! This is what a user of a shared directory waits for (WSL2's `/mnt/c`
//! is known for it). The tree is Debian's `linux-source-6.1` when its
//! tarball is installed (about 78,600 files), unpacked and committed once
//! into a cache directory keyed by the tarball's size and mtime; otherwise,
//! and always with `--quick`, a generated [`Tree`] committed the same way.
//! Either way one tracked file is then changed and one untracked file
//! added, so every `git status` has two lines to get right. (The lines
//! Debian appends to Linux's top-level `.gitignore`, which ignore the
//! whole tree and so spare git the search for untracked files, are
//! dropped first.) Upstream
//! virtiofsd has no FUSE-mount mode, so it has no row here.
//!
//! Every run is `git status --porcelain` with optional locks off (git then
//! never rewrites the index, so every run does the same work) and without
//! the user's or the system's git configuration; the first run after
//! mounting is cold (every entry looked up), the others are warm and their
//! median is the figure. With cache=auto each warm run starts after the
//! 1 s timeouts have passed ([`AUTO_PAUSE`], not timed), so every entry is
//! revalidated. The server's CPU time (all its processes and
//! threads) is read around the warm runs. Unlike the other workloads this
//! is not run per target: once per fsbench run, after them, when
//! virtiofsd-rs is among the servers ([`step`]).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::daemon::{Daemon, DaemonError};
use crate::tree::Tree;

/// The workload's name on the command line and in the JSON.
pub const NAME: &str = "git-status";

/// The Linux source tarball Debian's `linux-source-6.1` installs.
pub const LINUX_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// The cache policies measured, in report order.
pub const CACHES: [&str; 2] = ["auto", "always"];

/// Files of the generated tree with `--quick`.
pub const QUICK_FILES: usize = 1_000;

/// Files of the generated tree of a full run without the Linux tarball.
pub const FULL_FILES: usize = 100_000;

/// Warm runs with `--quick`.
pub const QUICK_RUNS: usize = 2;

/// Warm runs of a full run.
pub const FULL_RUNS: usize = 5;

/// The untracked file planted in the tree.
pub const UNTRACKED: &str = "fsbench-untracked";

/// The version of how the Linux tree is made, in its cache directory's
/// name: a change to [`prepare`] makes it afresh.
const CACHE_FORMAT: u32 = 3;

/// The seed of the generated tree.
const SEED: u64 = 0x6769_7473;

/// The mtime of the generated tree's files (2020-09-13): older than the
/// index, so git never sees them as racily clean and re-reads them.
const GENERATED_MTIME: u64 = 1_600_000_000;

/// How long the mount gets to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one `git status` may take (a hung server fails the step
/// instead of hanging fsbench).
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long unpacking and committing the tree may take.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Why `git-status` could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum GitStatusError {
    /// A file or directory could not be made or read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// `git` or `tar` could not be run or failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and the end of its stderr.
        detail: String,
    },
    /// A command did not finish in time.
    #[error("{command} did not finish within {secs} s")]
    Timeout {
        /// The command line.
        command: String,
        /// The time it had.
        secs: u64,
    },
    /// The server did not start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The FUSE mount did not appear.
    #[error("the FUSE mount at {} did not appear within {} s; server log ends: {log}", path.display(), MOUNT_TIMEOUT.as_secs())]
    NoMount {
        /// The mount point.
        path: PathBuf,
        /// The end of the server's log.
        log: String,
    },
    /// `git status` on the tree itself did not report the planted changes.
    #[error("git status on the tree itself said {0:?}, not the changed file and {UNTRACKED}")]
    Unexpected(String),
    /// `git status` through the mount reported another state than on the
    /// tree itself (the server answered wrongly), or a warm run another
    /// state than the first.
    #[error("git status through the mount differs from the tree's: {0}")]
    Differs(String),
}

/// A committed tree to run `git status` in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitTree {
    /// Its directory (a git work tree).
    pub dir: PathBuf,
    /// Files git tracks.
    pub files: u64,
    /// Where it comes from, for the report.
    pub source: String,
}

/// One row: `git status` by one means.
#[derive(Debug, Clone, PartialEq)]
pub struct GitStatusRecord {
    /// `native` or `virtiofsd-rs`.
    pub server: &'static str,
    /// The cache policy (`None` for native).
    pub cache: Option<&'static str>,
    /// Seconds of the first run (cold for a fresh mount).
    pub cold_s: f64,
    /// Median seconds of the warm runs.
    pub warm_s: f64,
    /// The server's CPU seconds per warm run (`None` for native).
    pub server_cpu_s: Option<f64>,
    /// Warm runs measured.
    pub runs: usize,
}

impl GitStatusRecord {
    /// `native`, `virtiofsd-rs cache=auto` or `virtiofsd-rs cache=always`.
    pub fn label(&self) -> String {
        match self.cache {
            None => self.server.to_string(),
            Some(c) => format!("{} cache={c}", self.server),
        }
    }
}

/// What the `git-status` step of an fsbench run came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GitStatusOutcome {
    /// The tree, once made.
    pub tree: Option<GitTree>,
    /// The rows measured: native first, then each cache policy.
    pub rows: Vec<GitStatusRecord>,
    /// Why the step did not run (not a `--strict` failure).
    pub skipped: Option<String>,
    /// What failed (each a `--strict` failure), with what it was.
    pub errors: Vec<String>,
    /// Seconds spent making the tree (unpacking and committing it the
    /// first time).
    pub prepare_s: f64,
}

impl GitStatusOutcome {
    /// A step skipped for `reason`.
    pub fn skipped(reason: impl Into<String>) -> GitStatusOutcome {
        GitStatusOutcome {
            skipped: Some(reason.into()),
            ..GitStatusOutcome::default()
        }
    }

    /// A step that failed before measuring, for `reason`.
    pub fn failed(reason: impl Into<String>) -> GitStatusOutcome {
        GitStatusOutcome {
            errors: vec![reason.into()],
            ..GitStatusOutcome::default()
        }
    }

    /// The row of `cache` (`None`: native).
    pub fn row(&self, cache: Option<&str>) -> Option<&GitStatusRecord> {
        self.rows.iter().find(|r| r.cache == cache)
    }

    /// `row`'s warm median over native's.
    pub fn ratio_to_native(&self, row: &GitStatusRecord) -> Option<f64> {
        let native = self.row(None)?.warm_s;
        (native > 0.0).then(|| row.warm_s / native)
    }

    /// The error of the row with `cache`, if it failed.
    pub fn error_of(&self, cache: &str) -> Option<&str> {
        let label = format!("virtiofsd-rs cache={cache}: ");
        self.errors
            .iter()
            .find(|e| e.starts_with(&label))
            .map(String::as_str)
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GitStatusError + 'a {
    move |source| GitStatusError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `git` configured the same everywhere: no system or user configuration,
/// optional locks off.
fn command(program: &str, args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .current_dir(dir)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `program args` in `dir` for at most `timeout`: its stdout and its
/// seconds (spawn to exit), or an error with its stderr's end. A command
/// that times out is left to finish by itself (a `git status` blocked in
/// a hung FUSE mount ends when the mount is torn down).
fn run_command(
    program: &str,
    args: &[&str],
    dir: &Path,
    timeout: Duration,
) -> Result<(String, f64), GitStatusError> {
    let line = format!("{program} {}", args.join(" "));
    let (tx, rx) = mpsc::channel::<(io::Result<Output>, Duration)>();
    let t0 = Instant::now();
    let child = command(program, args, dir)
        .spawn()
        .map_err(|e| GitStatusError::Command {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send((out, t0.elapsed()));
    });
    let (out, secs) = match rx.recv_timeout(timeout) {
        Ok((Ok(out), d)) => (out, d.as_secs_f64()),
        Ok((Err(e), _)) => {
            return Err(GitStatusError::Command {
                command: line,
                detail: e.to_string(),
            })
        }
        Err(_) => {
            return Err(GitStatusError::Timeout {
                command: line,
                secs: timeout.as_secs(),
            })
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let mut tail: Vec<&str> = err.lines().rev().take(3).collect();
        tail.reverse();
        return Err(GitStatusError::Command {
            command: line,
            detail: format!("{}: {}", out.status, tail.join(" | ")),
        });
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), secs))
}

/// Whether `git` can be run at all.
pub fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `git init`, `git add -f .` and one commit in `dir`, automatic
/// maintenance off (a commit of 78,000 loose objects would otherwise start
/// a `git gc` in the background, competing with the measurements).
fn commit_all(dir: &Path) -> Result<(), GitStatusError> {
    let git = |args: &[&str]| run_command("git", args, dir, PREPARE_TIMEOUT).map(drop);
    git(&["init", "-q"])?;
    git(&["config", "gc.auto", "0"])?;
    git(&["config", "maintenance.auto", "false"])?;
    git(&["add", "-f", "."])?;
    git(&[
        "-c",
        "user.name=fsbench",
        "-c",
        "user.email=fsbench@localhost",
        "commit",
        "-q",
        "--no-gpg-sign",
        "-m",
        "tree",
    ])
}

/// The first file git tracks in `dir` and how many it tracks.
fn tracked_files(dir: &Path) -> Result<(String, u64), GitStatusError> {
    let (out, _) = run_command("git", &["ls-files", "-z"], dir, PREPARE_TIMEOUT)?;
    let mut names = out.split('\0').filter(|s| !s.is_empty());
    let first = names.next().unwrap_or_default().to_string();
    Ok((
        first.clone(),
        names.count() as u64 + u64::from(!first.is_empty()),
    ))
}

/// Changes the first tracked file of `dir` (a line appended) and adds the
/// untracked file, so that `git status` has something to say.
fn plant_changes(dir: &Path) -> Result<(), GitStatusError> {
    use std::io::Write as _;
    let (first, _) = tracked_files(dir)?;
    if !first.is_empty() {
        let p = dir.join(&first);
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(b"changed by fsbench\n"))
            .map_err(io_err("changing", &p))?;
    }
    let u = dir.join(UNTRACKED);
    fs::write(&u, b"untracked\n").map_err(io_err("writing", &u))
}

/// Drops the lines Debian's packaging appends to the top-level
/// `.gitignore` of its Linux source (`/*` and `!/debian/`: everything at
/// the top level ignored), so that `git status` looks for untracked files
/// in the whole tree, as in a checkout of Linux.
fn unignore_top_level(dir: &Path) -> Result<(), GitStatusError> {
    let p = dir.join(".gitignore");
    let Ok(text) = fs::read_to_string(&p) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| !matches!(l.trim(), "/*" | "!/debian/"))
        .flat_map(|l| [l, "\n"])
        .collect();
    if kept.len() != text.len() {
        fs::write(&p, kept).map_err(io_err("writing", &p))?;
    }
    Ok(())
}

/// Whether `out` (porcelain) shows exactly one changed tracked file and
/// the untracked file.
fn shows_planted(out: &str) -> bool {
    let lines: Vec<&str> = out.lines().collect();
    lines.len() == 2
        && lines.iter().any(|l| l.starts_with(" M "))
        && lines.contains(&format!("?? {UNTRACKED}").as_str())
}

/// The cache directory of the Linux tree: `$XDG_CACHE_HOME` or
/// `~/.cache`, then `virtiofsd-rs/gitbench`.
pub fn cache_dir(xdg_cache_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    let base = match xdg_cache_home.filter(|p| p.is_absolute()) {
        Some(x) => x.to_path_buf(),
        None => home?.join(".cache"),
    };
    Some(base.join("virtiofsd-rs/gitbench"))
}

/// The tree for this run: under `cache` (kept between runs) the Linux tree
/// when its tarball is installed and `quick` is off; otherwise a generated
/// tree of `generated_files` files under `scratch` (made afresh).
pub fn prepare(
    cache: &Path,
    scratch: &Path,
    quick: bool,
    generated_files: usize,
) -> Result<GitTree, GitStatusError> {
    let tarball = Path::new(LINUX_TARBALL);
    if !quick {
        if let Ok(meta) = fs::metadata(tarball) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let base = cache.join(format!("linux-6.1-{}-{mtime}-f{CACHE_FORMAT}", meta.len()));
            let dir = base.join("linux-source-6.1");
            let ready = base.join("ready");
            if !ready.exists() {
                if base.exists() {
                    fs::remove_dir_all(&base).map_err(io_err("removing", &base))?;
                }
                fs::create_dir_all(&base).map_err(io_err("creating", &base))?;
                eprintln!(
                    "fsbench: {NAME}: unpacking and committing {LINUX_TARBALL} once, into {} (a few minutes)",
                    base.display()
                );
                let t0 = Instant::now();
                run_command("tar", &["xJf", LINUX_TARBALL], &base, PREPARE_TIMEOUT)?;
                let unpacked = t0.elapsed().as_secs_f64();
                unignore_top_level(&dir)?;
                commit_all(&dir)?;
                plant_changes(&dir)?;
                fs::write(&ready, b"").map_err(io_err("writing", &ready))?;
                eprintln!(
                    "fsbench: {NAME}: unpacked in {unpacked:.1} s, committed in {:.1} s",
                    t0.elapsed().as_secs_f64() - unpacked
                );
            }
            return Ok(GitTree {
                files: tracked_files(&dir)?.1,
                dir,
                source: "linux-source-6.1".into(),
            });
        }
    }
    let tree = Tree::generate("gittree", generated_files, SEED);
    let dir = scratch.join(tree.root());
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
    }
    tree.write_under(scratch).map_err(io_err("writing", &dir))?;
    let old = fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(GENERATED_MTIME));
    for f in &tree.files {
        let p = scratch.join(tree.path(f.dir)).join(&f.name);
        fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|file| file.set_times(old))
            .map_err(io_err("setting the mtime of", &p))?;
    }
    commit_all(&dir)?;
    plant_changes(&dir)?;
    Ok(GitTree {
        files: tracked_files(&dir)?.1,
        dir,
        source: "generated".into(),
    })
}

/// `git status --porcelain` in `dir`: its output and seconds.
fn git_status(dir: &Path) -> Result<(String, f64), GitStatusError> {
    run_command("git", &["status", "--porcelain"], dir, GIT_TIMEOUT)
}

/// The median of `v` (0 if empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Whether a mount sits at `path`, from `/proc/self/mountinfo` (without
/// touching the mount, which a hung server would not answer).
pub fn mounted_at(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ').nth(4).is_some_and(|mp| {
            mp.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
                == want
        })
    })
}

/// `umount MNT`, then `umount -l MNT` if it is still there (busy), then
/// `umount2(MNT_DETACH)` itself if `umount` could not run: the scratch
/// directory is removed at the end, and removing it through a mount left
/// behind would remove the shared tree.
fn unmount(mnt: &Path) {
    for args in [&[][..], &["-l"][..]] {
        if !mounted_at(mnt) {
            return;
        }
        let _ = Command::new("umount")
            .args(args)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if !mounted_at(mnt) {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_bytes()) {
        // SAFETY: `c` is a NUL-terminated path that outlives the call;
        // umount2 only reads it.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A virtiofsd-rs FUSE mount: unmounted, and its server stopped, when
/// dropped, whatever happened.
struct Mounted {
    path: PathBuf,
    daemon: Option<Daemon>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Unmounted first: the server then ends by itself; whatever is
        // left after a moment is killed, and a mount a killed server
        // left behind is detached.
        unmount(&self.path);
        drop(self.daemon.take());
        unmount(&self.path);
    }
}

/// What [`run`] needs besides the tree.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// The virtiofsd-rs binary.
    pub virtiofsd_rs: &'a Path,
    /// Where the mount point goes (fsbench's scratch directory).
    pub scratch: &'a Path,
    /// Where the servers' logs go.
    pub logs: &'a Path,
    /// The CPUs the server may run on (`None`: fsbench's).
    pub cpus: Option<libc::cpu_set_t>,
    /// Warm runs per row.
    pub runs: usize,
}

/// The pause before each warm run with cache=auto: past its 1 s timeouts.
pub const AUTO_PAUSE: Duration = Duration::from_millis(1200);

/// A first run, then `runs` more, in `dir`, all saying `expect` (native:
/// whatever the first says): the seconds of the first, of the others, and
/// what they said. `between` runs after the first run; `pause` passes
/// (untimed) before each of the others.
fn measure(
    dir: &Path,
    runs: usize,
    expect: Option<&str>,
    pause: Duration,
    mut between: impl FnMut(),
) -> Result<(f64, Vec<f64>, String), GitStatusError> {
    let (first, cold) = git_status(dir)?;
    if let Some(e) = expect.filter(|e| *e != first) {
        return Err(GitStatusError::Differs(format!(
            "the first run said {first:?}, the tree's is {e:?}"
        )));
    }
    between();
    let mut warm = Vec::with_capacity(runs);
    for _ in 0..runs {
        std::thread::sleep(pause);
        let (out, s) = git_status(dir)?;
        if out != first {
            return Err(GitStatusError::Differs(format!(
                "a warm run said {out:?}, the first {first:?}"
            )));
        }
        warm.push(s);
    }
    Ok((cold, warm, first))
}

/// `git status` natively in `tree`: the row and what it said.
pub fn run_native(
    tree: &GitTree,
    runs: usize,
) -> Result<(GitStatusRecord, String), GitStatusError> {
    let (cold, warm, said) = measure(&tree.dir, runs, None, Duration::ZERO, || {})?;
    if !shows_planted(&said) {
        return Err(GitStatusError::Unexpected(said));
    }
    Ok((
        GitStatusRecord {
            server: "native",
            cache: None,
            cold_s: cold,
            warm_s: median(&warm),
            server_cpu_s: None,
            runs,
        },
        said,
    ))
}

/// `git status` in `tree` through `virtiofsd-rs --fuse-mount` with `cache`,
/// every run expected to say `expect`.
pub fn run_mounted(
    setup: &Setup<'_>,
    tree: &GitTree,
    cache: &'static str,
    expect: &str,
) -> Result<GitStatusRecord, GitStatusError> {
    let mnt = setup.scratch.join("gitstatus-mnt");
    fs::create_dir_all(&mnt).map_err(io_err("creating", &mnt))?;
    let log = setup.logs.join(format!("virtiofsd-rs-{NAME}-{cache}.log"));
    let args: Vec<OsString> = vec![
        "--shared-dir".into(),
        tree.dir.clone().into(),
        "--fuse-mount".into(),
        mnt.clone().into(),
        "--sandbox".into(),
        "none".into(),
        "--cache".into(),
        cache.into(),
    ];
    let daemon = Daemon::spawn(
        "virtiofsd-rs",
        setup.virtiofsd_rs,
        &args,
        &log,
        true,
        setup.cpus,
        None,
    )?;
    let mut m = Mounted {
        path: mnt.clone(),
        daemon: Some(daemon),
    };
    let start = Instant::now();
    while !mounted_at(&mnt) {
        if let Some(d) = m.daemon.as_mut() {
            d.check_alive()?;
        }
        if start.elapsed() > MOUNT_TIMEOUT {
            return Err(GitStatusError::NoMount {
                path: mnt,
                log: m.daemon.as_ref().map_or_else(String::new, Daemon::log_tail),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let daemon = m.daemon.as_ref();
    if let Some(d) = daemon {
        eprintln!(
            "fsbench: {NAME}: virtiofsd-rs cache={cache} (pid {}) mounted {} at {}",
            d.pid(),
            tree.dir.display(),
            mnt.display()
        );
    }
    let mut cpu0 = None;
    // With cache=auto, each warm run starts once the 1 s entry and
    // attribute timeouts have passed: every entry is revalidated, as when
    // a user runs `git status` again after a pause. (Run back to back, some
    // entries would still be valid and the figure would depend on timing.)
    let pause = if cache == "auto" {
        AUTO_PAUSE
    } else {
        Duration::ZERO
    };
    let (cold, warm, _) = measure(&mnt, setup.runs, Some(expect), pause, || {
        cpu0 = daemon.and_then(Daemon::cpu_time_precise);
    })
    .map_err(|e| match e {
        GitStatusError::Command { command, detail } => GitStatusError::Command {
            command,
            detail: format!(
                "{detail}; server log ends: {}",
                daemon.map_or_else(String::new, Daemon::log_tail)
            ),
        },
        e => e,
    })?;
    let cpu1 = daemon.and_then(Daemon::cpu_time_precise);
    let server_cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / setup.runs.max(1) as f64),
        _ => None,
    };
    drop(m);
    let _ = fs::remove_dir(&mnt);
    Ok(GitStatusRecord {
        server: "virtiofsd-rs",
        cache: Some(cache),
        cold_s: cold,
        warm_s: median(&warm),
        server_cpu_s,
        runs: setup.runs,
    })
}

/// Native, then each of `caches`: every row that could be measured, and
/// the errors of the others (a native failure stops the rest: there is
/// nothing to compare with).
pub fn run(setup: &Setup<'_>, tree: &GitTree, caches: &[&'static str]) -> GitStatusOutcome {
    let mut out = GitStatusOutcome {
        tree: Some(tree.clone()),
        ..GitStatusOutcome::default()
    };
    let expect = match run_native(tree, setup.runs) {
        Ok((row, said)) => {
            eprintln!("fsbench: {NAME}: {}", done_line(&row));
            out.rows.push(row);
            said
        }
        Err(e) => {
            eprintln!("fsbench: {NAME}: native FAILED: {e}");
            out.errors.push(format!("native: {e}"));
            return out;
        }
    };
    for &cache in caches {
        match run_mounted(setup, tree, cache, &expect) {
            Ok(row) => {
                eprintln!("fsbench: {NAME}: {}", done_line(&row));
                out.rows.push(row);
            }
            Err(e) => {
                eprintln!("fsbench: {NAME}: virtiofsd-rs cache={cache} FAILED: {e}");
                out.errors.push(format!("virtiofsd-rs cache={cache}: {e}"));
            }
        }
    }
    out
}

fn done_line(r: &GitStatusRecord) -> String {
    let mut s = format!(
        "{}: first run {:.3} s, warm {:.3} s (median of {})",
        r.label(),
        r.cold_s,
        r.warm_s,
        r.runs
    );
    if let Some(c) = r.server_cpu_s {
        s += &format!(", server {c:.3} s CPU per warm run");
    }
    s
}

/// Why the step cannot run here: skipped, or (a missing prerequisite
/// where one is required) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Not run, and not a `--strict` failure.
    Skip(String),
    /// Not run, and a `--strict` failure.
    Fail(String),
}

/// What the machine and the command line offer the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prerequisites {
    /// virtiofsd-rs is among `--servers`.
    pub selected: bool,
    /// The virtiofsd-rs binary, or why it is missing.
    pub program: Result<PathBuf, String>,
    /// `git` runs.
    pub git: bool,
    /// fsbench runs as root (the FUSE mount needs it).
    pub root: bool,
    /// `/dev/fuse` exists.
    pub dev_fuse: bool,
    /// Missing prerequisites fail (the `CI` environment variable is set).
    pub required: bool,
}

/// Whether the `CI` environment variable asks for every prerequisite
/// (set, and neither empty, `0` nor `false`).
pub fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl Prerequisites {
    /// This machine's, for `selected` and `program`.
    pub fn probe(selected: bool, program: Result<PathBuf, String>) -> Prerequisites {
        Prerequisites {
            selected,
            program,
            git: git_available(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            root: unsafe { libc::geteuid() } == 0,
            dev_fuse: Path::new("/dev/fuse").exists(),
            required: ci(),
        }
    }

    /// The binary to run, or why not.
    pub fn check(&self) -> Result<&Path, Blocked> {
        if !self.selected {
            return Err(Blocked::Skip("virtiofsd-rs is not among --servers".into()));
        }
        let program = match &self.program {
            Ok(p) => p,
            Err(e) => return Err(Blocked::Skip(format!("no virtiofsd-rs: {e}"))),
        };
        if !self.git {
            let why = "git is not installed (apt-get install git)".to_string();
            return Err(if self.required {
                Blocked::Fail(format!("{why}; required under CI"))
            } else {
                Blocked::Skip(why)
            });
        }
        if !self.root {
            return Err(Blocked::Skip("not root: the FUSE mount needs root".into()));
        }
        if !self.dev_fuse {
            return Err(Blocked::Skip("no /dev/fuse".into()));
        }
        Ok(program)
    }
}

/// The whole step: checks `pre`, makes the tree (the Linux tree under
/// `cache` for a full run, a generated one of [`QUICK_FILES`] in the
/// scratch directory with `quick`), and measures native and every policy
/// of [`CACHES`], [`QUICK_RUNS`] or [`FULL_RUNS`] warm runs each.
pub fn step(
    pre: &Prerequisites,
    cache: Option<&Path>,
    quick: bool,
    scratch: &Path,
    logs: &Path,
    cpus: Option<libc::cpu_set_t>,
) -> GitStatusOutcome {
    let program = match pre.check() {
        Ok(p) => p,
        Err(Blocked::Skip(why)) => {
            eprintln!("fsbench: {NAME}: skipped: {why}");
            return GitStatusOutcome::skipped(why);
        }
        Err(Blocked::Fail(why)) => {
            eprintln!("fsbench: {NAME}: FAILED: {why}");
            return GitStatusOutcome::failed(why);
        }
    };
    let t0 = Instant::now();
    // Without a cache directory, the scratch directory (unpacked each run).
    let cache = cache.unwrap_or(scratch);
    let (files, runs) = if quick {
        (QUICK_FILES, QUICK_RUNS)
    } else {
        (FULL_FILES, FULL_RUNS)
    };
    let tree = match prepare(cache, scratch, quick, files) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fsbench: {NAME}: FAILED: {e}");
            return GitStatusOutcome::failed(format!("the tree: {e}"));
        }
    };
    let prepare_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "fsbench: {NAME}: tree {} ({}, {} files) ready in {prepare_s:.1} s",
        tree.dir.display(),
        tree.source,
        tree.files
    );
    let setup = Setup {
        virtiofsd_rs: program,
        scratch,
        logs,
        cpus,
        runs,
    };
    GitStatusOutcome {
        prepare_s,
        ..run(&setup, &tree, &CACHES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_odd_even_and_no_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[0.5]), 0.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn the_cache_directory_follows_xdg_then_home() {
        let (x, h) = (Path::new("/x"), Path::new("/home/u"));
        assert_eq!(
            cache_dir(Some(x), Some(h)),
            Some(PathBuf::from("/x/virtiofsd-rs/gitbench"))
        );
        assert_eq!(
            cache_dir(None, Some(h)),
            Some(PathBuf::from("/home/u/.cache/virtiofsd-rs/gitbench"))
        );
        // A relative XDG_CACHE_HOME is ignored, as the spec says.
        assert_eq!(
            cache_dir(Some(Path::new("rel")), Some(h)),
            Some(PathBuf::from("/home/u/.cache/virtiofsd-rs/gitbench"))
        );
        assert_eq!(cache_dir(None, None), None);
    }

    #[test]
    fn missing_prerequisites_skip_except_git_under_ci() {
        let all = Prerequisites {
            selected: true,
            program: Ok("/bin/virtiofsd-rs".into()),
            git: true,
            root: true,
            dev_fuse: true,
            required: false,
        };
        assert_eq!(all.check(), Ok(Path::new("/bin/virtiofsd-rs")));
        let skip = |p: Prerequisites| matches!(p.check(), Err(Blocked::Skip(_)));
        assert!(skip(Prerequisites {
            selected: false,
            ..all.clone()
        }));
        assert!(skip(Prerequisites {
            root: false,
            ..all.clone()
        }));
        assert!(skip(Prerequisites {
            dev_fuse: false,
            required: true,
            ..all.clone()
        }));
        assert!(skip(Prerequisites {
            program: Err("missing".into()),
            ..all.clone()
        }));
        let no_git = Prerequisites {
            git: false,
            ..all.clone()
        };
        assert!(skip(no_git.clone()));
        let ci = Prerequisites {
            required: true,
            ..no_git
        };
        assert!(
            matches!(ci.check(), Err(Blocked::Fail(ref w)) if w.contains("git")),
            "{:?}",
            ci.check()
        );
    }

    #[test]
    fn debians_top_level_ignore_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(".gitignore");
        fs::write(&p, "*.o\n#\n/*\n!/debian/\n").unwrap();
        unignore_top_level(t.path()).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "*.o\n#\n");
        // No .gitignore: nothing to do.
        unignore_top_level(&t.path().join("none")).unwrap();
    }

    #[test]
    fn the_planted_changes_are_recognised() {
        assert!(shows_planted(" M a/b.c\n?? fsbench-untracked\n"));
        assert!(!shows_planted(""));
        assert!(!shows_planted("?? fsbench-untracked\n"));
        assert!(!shows_planted(" M a\n?? fsbench-untracked\n?? x\n"));
    }

    #[test]
    fn ratios_and_errors_by_row() {
        let row = |cache: Option<&'static str>, warm| GitStatusRecord {
            server: if cache.is_some() {
                "virtiofsd-rs"
            } else {
                "native"
            },
            cache,
            cold_s: 1.0,
            warm_s: warm,
            server_cpu_s: None,
            runs: 2,
        };
        let o = GitStatusOutcome {
            rows: vec![row(None, 0.5), row(Some("auto"), 1.0)],
            errors: vec!["virtiofsd-rs cache=always: boom".into()],
            ..GitStatusOutcome::default()
        };
        let auto = o.row(Some("auto")).unwrap();
        assert_eq!(o.ratio_to_native(auto), Some(2.0));
        assert_eq!(auto.label(), "virtiofsd-rs cache=auto");
        assert!(o.error_of("always").is_some_and(|e| e.ends_with("boom")));
        assert_eq!(o.error_of("auto"), None);
    }
}
