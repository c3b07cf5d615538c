//! The results as a table (stdout), JSON records and an SVG bar chart, and
//! the issue's targets checked against them (reported, never asserted).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quick_xml::escape::escape as xml;

use crate::cli::{Engine, Server, Target};
use crate::gitstatus::{self, GitStatusOutcome, GitStatusRecord};
use crate::runner::{not_applicable, Failure, Outcome, Record};
use crate::stats::Summary;
use crate::workload::Workload;

/// Why a report could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the host said.
        source: std::io::Error,
    },
    /// The JSON records could not be encoded.
    #[error("cannot encode the JSON records: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes `text` to `path`, creating its directory.
pub fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    let e = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(e)?;
    }
    std::fs::write(path, text).map_err(e)
}

const OURS: Target = Target {
    server: Server::VirtiofsdRs,
    engine: Engine::IoUring,
};
const OURS_SYNC: Target = Target {
    server: Server::VirtiofsdRs,
    engine: Engine::Sync,
};
const UPSTREAM: Target = Target {
    server: Server::Virtiofsd,
    engine: Engine::Default,
};
const UPSTREAM_PREFER: Target = Target {
    server: Server::Virtiofsd,
    engine: Engine::Prefer,
};
const NATIVE: Target = Target {
    server: Server::Native,
    engine: Engine::Default,
};
const P9D: Target = Target {
    server: Server::P9d,
    engine: Engine::Default,
};
const DIOD: Target = Target {
    server: Server::Diod,
    engine: Engine::Default,
};

fn find(records: &[Record], t: Target, w: Workload) -> Option<&Summary> {
    records
        .iter()
        .find(|r| r.target == t && r.workload == w)
        .map(|r| &r.summary)
}

fn ratio(
    records: &[Record],
    a: Target,
    b: Target,
    w: Workload,
    f: fn(&Summary) -> f64,
) -> Option<f64> {
    let (x, y) = (f(find(records, a, w)?), f(find(records, b, w)?));
    (y > 0.0).then(|| x / y)
}

/// A target's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Met in this run.
    Met,
    /// Missed in this run.
    Missed,
    /// One side was not measured.
    NotMeasured,
}

/// One of the issue's targets, checked.
#[derive(Debug, Clone)]
pub struct Check {
    /// The target, as the issue states it.
    pub text: &'static str,
    /// Met, missed, or not measured.
    pub verdict: Verdict,
    /// The measured ratio, in words.
    pub detail: String,
}

/// The most of a failure's reason a one-line detail shows.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

/// The issue's targets, measured in this run (ours = virtiofsd-rs with the
/// io-uring engine); `failures` tell a target missed by an error from one
/// not measured.
pub fn checks(records: &[Record], failures: &[Failure]) -> Vec<Check> {
    let ops: fn(&Summary) -> f64 = |s| s.ops_per_s;
    let mib: fn(&Summary) -> f64 = |s| s.mib_per_s;
    let p50: fn(&Summary) -> f64 = |s| s.p50_us;
    let mut v = Vec::new();
    let mut add =
        |text, r: Option<f64>, at_least: Option<f64>, at_most: Option<f64>, what: &str| {
            let (verdict, detail) = match r {
                None => (Verdict::NotMeasured, "not measured".to_string()),
                Some(r) => {
                    let ok = at_least.is_none_or(|m| r >= m) && at_most.is_none_or(|m| r <= m);
                    (
                        if ok { Verdict::Met } else { Verdict::Missed },
                        format!("{r:.2}x {what}"),
                    )
                }
            };
            v.push(Check {
                text,
                verdict,
                detail,
            });
        };
    use Workload::*;
    add(
        "randread-4k-qd32: ops/s >= 1.5x virtiofsd",
        ratio(records, OURS, UPSTREAM, RandRead4kQd32, mib),
        Some(1.5),
        None,
        "virtiofsd's ops/s",
    );
    add(
        "randread-4k-qd1: p50 <= virtiofsd's",
        ratio(records, OURS, UPSTREAM, RandRead4kQd1, p50),
        None,
        Some(1.0),
        "virtiofsd's p50",
    );
    for (w, name_native, name_up) in [
        (
            SeqRead1m,
            "seqread-1m: MiB/s >= 90% of native",
            "seqread-1m: MiB/s >= virtiofsd's",
        ),
        (
            SeqWrite1m,
            "seqwrite-1m: MiB/s >= 90% of native",
            "seqwrite-1m: MiB/s >= virtiofsd's",
        ),
    ] {
        add(
            name_native,
            ratio(records, OURS, NATIVE, w, mib),
            Some(0.9),
            None,
            "native's MiB/s",
        );
        add(
            name_up,
            ratio(records, OURS, UPSTREAM, w, mib),
            Some(1.0),
            None,
            "virtiofsd's MiB/s",
        );
    }
    add(
        "create-stat-unlink: ops/s >= virtiofsd's",
        ratio(records, OURS, UPSTREAM, CreateStatUnlink, ops),
        Some(1.0),
        None,
        "virtiofsd's ops/s",
    );
    add(
        "readdir-10k: entries/s >= virtiofsd's",
        ratio(records, OURS, UPSTREAM, Readdir10k, ops),
        Some(1.0),
        None,
        "virtiofsd's entries/s",
    );
    add(
        "9P randread-4k-qd32: p9d >= 2x diod",
        ratio(records, P9D, DIOD, RandRead4kQd32, mib),
        Some(2.0),
        None,
        "diod's ops/s",
    );
    add(
        "9P create-stat-unlink: p9d >= 2x diod",
        ratio(records, P9D, DIOD, CreateStatUnlink, ops),
        Some(2.0),
        None,
        "diod's ops/s",
    );
    for (w, text) in [
        (TreeStat, "tree-stat: entries/s >= virtiofsd's"),
        (TreeCreate, "tree-create: entries/s >= virtiofsd's"),
        (TreeRemove, "tree-remove: entries/s >= virtiofsd's"),
    ] {
        add(
            text,
            ratio(records, OURS, UPSTREAM, w, ops),
            Some(1.0),
            None,
            "virtiofsd's entries/s",
        );
    }
    let ours = |w: Workload| {
        (
            records
                .iter()
                .find(|r| r.target == OURS && r.workload == w)
                .and_then(|r| r.tree),
            failures
                .iter()
                .find(|f| f.target == OURS && f.workload == Some(w)),
        )
    };
    let failed = |f: &Failure| (Verdict::Missed, format!("failed: {}", clip(&f.reason, 90)));
    let (rec, fail) = ours(TreeStatRlimit1024);
    let (verdict, detail) = match (rec, fail) {
        (_, Some(f)) => failed(f),
        (Some(t), None) => match (t.max_fds, t.fd_limit) {
            (Some(n), Some(l)) => (
                if n < l { Verdict::Met } else { Verdict::Missed },
                format!("completed, at most {n} daemon fds of {l}"),
            ),
            _ => (Verdict::NotMeasured, "daemon fds not read".into()),
        },
        (None, None) => (Verdict::NotMeasured, "not measured".into()),
    };
    v.push(Check {
        text: "tree-stat-rlimit1024: completes, fds < limit",
        verdict,
        detail,
    });
    let (rec, fail) = ours(InodeMemory);
    let per_inode = rec.and_then(|t| Some((t.bytes_per_inode()?, t.inodes?)));
    let (verdict, detail) = match (per_inode, fail) {
        (_, Some(f)) => failed(f),
        (Some((b, n)), None) => (
            if b < 200.0 {
                Verdict::Met
            } else {
                Verdict::Missed
            },
            format!("{b:.0} B/inode over {n} inodes, no error"),
        ),
        (None, None) => (Verdict::NotMeasured, "not measured".into()),
    };
    v.push(Check {
        text: "inode-memory: < 200 B/inode at RLIMIT_NOFILE 1024",
        verdict,
        detail,
    });
    let after = rec.and_then(|t| Some((t.bytes_per_inode()?, t.bytes_per_inode_after_forget()?)));
    let (verdict, detail) = match after {
        Some((held, left)) => (
            if held <= 0.0 || left <= held / 2.0 {
                Verdict::Met
            } else {
                Verdict::Missed
            },
            format!("{left:.0} of {held:.0} B/inode still resident after BATCH_FORGET"),
        ),
        None => (Verdict::NotMeasured, "not measured".into()),
    };
    v.push(Check {
        text: "inode-memory: BATCH_FORGET returns >= half",
        verdict,
        detail,
    });
    v
}

/// The issue's `git-status` targets: the warm median through the FUSE
/// mount within 3x native's with `cache=auto`, within 1.5x with
/// `cache=always`.
pub fn git_checks(g: Option<&GitStatusOutcome>) -> Vec<Check> {
    [
        ("auto", 3.0, "git-status: cache=auto warm <= 3x native"),
        (
            "always",
            1.5,
            "git-status: cache=always warm <= 1.5x native",
        ),
    ]
    .into_iter()
    .map(|(cache, limit, text)| {
        let (verdict, detail) = match g {
            None => (Verdict::NotMeasured, "not measured".to_string()),
            Some(g) => match (
                g.row(Some(cache)).and_then(|r| g.ratio_to_native(r)),
                g.error_of(cache),
            ) {
                (_, Some(e)) => (Verdict::Missed, format!("failed: {}", clip(e, 90))),
                (Some(r), None) => (
                    if r <= limit {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    },
                    format!("{r:.2}x native's warm time"),
                ),
                (None, None) => match (&g.skipped, g.errors.first()) {
                    (Some(why), _) => (Verdict::NotMeasured, format!("skipped: {}", clip(why, 90))),
                    (None, Some(e)) => (Verdict::Missed, format!("failed: {}", clip(e, 90))),
                    (None, None) => (Verdict::NotMeasured, "not measured".to_string()),
                },
            },
        };
        Check {
            text,
            verdict,
            detail,
        }
    })
    .collect()
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn x(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

/// The workloads present in `records`, in report order.
fn workloads(records: &[Record]) -> Vec<Workload> {
    let mut w: Vec<Workload> = records.iter().map(|r| r.workload).collect();
    w.sort();
    w.dedup();
    w
}

/// The table printed on stdout: context, versions, one row per (workload,
/// target), the ratios, the targets and what could not be measured.
pub fn table(out: &Outcome, command: &str, date: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "fsbench, {date}: {command}");
    for c in &out.context {
        let _ = writeln!(s, "  {c}");
    }
    let v: Vec<String> = out.versions.iter().map(|(_, v)| v.clone()).collect();
    let _ = writeln!(s, "  servers: {}", v.join("; "));
    let _ = writeln!(s);
    // Only git-status selected: no per-target table.
    if !out.records.is_empty() || !out.failures.is_empty() {
        records_table(&mut s, out);
    }
    tree_table(&mut s, out);
    if let Some(g) = &out.git_status {
        git_table(&mut s, g);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "targets (measured in this run; reported, not asserted):");
    let mut all = if out.records.is_empty() && out.failures.is_empty() {
        Vec::new()
    } else {
        checks(&out.records, &out.failures)
    };
    if out.git_status.is_some() {
        all.extend(git_checks(out.git_status.as_ref()));
    }
    for c in all {
        let v = match c.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "n/a",
        };
        let _ = writeln!(s, "  {v:<7} {:<50} {}", c.text, c.detail);
    }
    if !out.failures.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "not measured:");
        for f in &out.failures {
            let w = f.workload.map_or("all workloads", |w| w.name());
            let _ = writeln!(
                s,
                "  {} {}: {}{}",
                f.target.label(),
                w,
                f.reason,
                if f.expected
                    && f.workload
                        .is_some_and(|w| not_applicable(f.target, w).is_none())
                {
                    " (expected of a peer: not a --strict failure)"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "wall time {:.0} s", out.elapsed.as_secs_f64());
    s
}

/// One row per (workload, target), then the ratios.
fn records_table(s: &mut String, out: &Outcome) {
    let spreads = out.records.iter().any(|r| r.spread.is_some());
    let _ = write!(
        s,
        "{:<20} {:<13} {:<9} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "workload", "server", "engine", "ops/s", "MiB/s", "p50 µs", "p99 µs", "srv CPU"
    );
    let _ = writeln!(s, "{}", if spreads { "  spread" } else { "" });
    let mut records: Vec<&Record> = out.records.iter().collect();
    records.sort_by_key(|r| (r.workload, r.target));
    let mut last = None;
    for r in records {
        let name = if last == Some(r.workload) {
            ""
        } else {
            r.workload.name()
        };
        last = Some(r.workload);
        let m = &r.summary;
        let _ = write!(
            s,
            "{:<20} {:<13} {:<9} {:>10} {:>9} {:>9.1} {:>9.1} {:>8}",
            name,
            r.target.server.name(),
            r.target.engine.name(),
            num(m.ops_per_s),
            if r.workload.moves_data() {
                format!("{:.1}", m.mib_per_s)
            } else {
                "-".into()
            },
            m.p50_us,
            m.p99_us,
            r.server_cpu
                .map_or("-".into(), |c| format!("{:.0}%", c * 100.0))
        );
        if spreads {
            let _ = write!(
                s,
                "  {:>6}",
                r.spread
                    .map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
            );
        }
        if let Some(len) = r.capped_len {
            let _ = write!(s, "  ({len}-byte requests: the server's msize)");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "ops/s counts requests; create-stat-unlink: one create+stat+close+unlink; readdir-10k: directory entries.");
    let _ = writeln!(
        s,
        "srv CPU: the server's CPU time over the run (all threads), as a share of one CPU."
    );
    if spreads {
        let _ = writeln!(
            s,
            "spread: (max - min) / median of ops/s over the rounds; each row is its median round."
        );
    }
    let _ = writeln!(s, "ours = virtiofsd-rs io-uring; sync = virtiofsd-rs sync; ratios of MiB/s for I/O, ops/s otherwise.");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<20} {:>13} {:>13} {:>13} {:>12} {:>10} {:>12}",
        "ratios",
        "ours/upstream",
        "sync/upstream",
        "p50 ours/up",
        "ours/native",
        "p9d/diod",
        "ours/prefer"
    );
    let p50: fn(&Summary) -> f64 = |s| s.p50_us;
    for w in workloads(&out.records) {
        // MiB/s for I/O (9P request sizes may differ by msize), else ops/s.
        let ops: fn(&Summary) -> f64 = if w.moves_data() {
            |s| s.mib_per_s
        } else {
            |s| s.ops_per_s
        };
        let _ = writeln!(
            s,
            "{:<20} {:>13} {:>13} {:>13} {:>12} {:>10} {:>12}",
            w.name(),
            x(ratio(&out.records, OURS, UPSTREAM, w, ops)),
            x(ratio(&out.records, OURS_SYNC, UPSTREAM, w, ops)),
            x(ratio(&out.records, OURS, UPSTREAM, w, p50)),
            x(ratio(&out.records, OURS, NATIVE, w, ops)),
            x(ratio(&out.records, P9D, DIOD, w, ops)),
            x(ratio(&out.records, OURS, UPSTREAM_PREFER, w, ops)),
        );
    }
}

/// A count of bytes, in KiB or MiB.
fn bytes(b: u64) -> String {
    if b >= 100 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{:.1} MiB", b as f64 / 1048576.0)
    }
}

/// The tree workloads' own figures, and their failures, one row per
/// (workload, target), after the ratios.
fn tree_table(s: &mut String, out: &Outcome) {
    enum Row<'a> {
        Ok(&'a Record),
        Failed(&'a Failure),
    }
    let mut rows: Vec<(Workload, Target, Row)> = out
        .records
        .iter()
        .filter(|r| r.tree.is_some())
        .map(|r| (r.workload, r.target, Row::Ok(r)))
        .collect();
    rows.extend(out.failures.iter().filter_map(|f| {
        let w = f.workload.filter(|w| w.is_tree())?;
        not_applicable(f.target, w)
            .is_none()
            .then_some((w, f.target, Row::Failed(f)))
    }));
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|(w, t, _)| (*w, *t));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<20} {:<13} {:<9} {:>8} {:>10} {:>12} {:>11}  {:<14}  memory",
        "tree workloads",
        "server",
        "engine",
        "entries",
        "entries/s",
        "srv µs/entry",
        "max fds",
        "listing"
    );
    let mut last = None;
    for (w, t, row) in &rows {
        let name = if last == Some(*w) { "" } else { w.name() };
        last = Some(*w);
        let _ = write!(
            s,
            "{:<20} {:<13} {:<9} ",
            name,
            t.server.name(),
            t.engine.name()
        );
        match row {
            Row::Ok(r) => {
                let Some(f) = &r.tree else { continue };
                let fds = match (f.max_fds, f.fd_limit) {
                    (Some(n), Some(l)) => format!("{n}/{l}"),
                    (Some(n), None) => n.to_string(),
                    _ => "-".into(),
                };
                let _ = write!(
                    s,
                    "{:>8} {:>10} {:>12} {:>11}  {:<14}",
                    f.entries,
                    num(r.summary.ops_per_s),
                    f.cpu_us_per_entry.map_or("-".into(), |c| format!("{c:.2}")),
                    fds,
                    f.listing.unwrap_or("-")
                );
                if let (Some(b), Some(n)) = (f.bytes_per_inode(), f.inodes) {
                    let _ = write!(s, "  {b:.0} B/inode over {n} inodes");
                    if let (Some(a), Some(h), Some(g)) = (f.rss_before, f.rss_held, f.rss_forgotten)
                    {
                        let _ = write!(
                            s,
                            " (RSS {} -> {}, {} after BATCH_FORGET)",
                            bytes(a),
                            bytes(h),
                            bytes(g)
                        );
                    }
                }
            }
            Row::Failed(f) => {
                let _ = write!(
                    s,
                    "error{}: {}",
                    if f.expected { " (expected)" } else { "" },
                    clip(&f.reason, 140)
                );
            }
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "One pass per run, on a fresh server: entries/s over the pass; p50/p99 above are per request (one FUSE request, or one syscall for native)."
    );
    let _ = writeln!(
        s,
        "srv µs/entry: the server's CPU time over the pass per entry. max fds: the serving process's open fds with every lookup held, / its RLIMIT_NOFILE."
    );
    let _ = writeln!(
        s,
        "listing: READDIRPLUS where the server offers it (the daemons run with --cache auto here, and both do), else READDIR and a LOOKUP per entry, as Linux."
    );
    let _ = writeln!(
        s,
        "memory: the serving process's VmRSS growth per inode held. error (expected): a peer out of fds, not a --strict failure."
    );
}

/// The `git-status` table: one row per means (native, each cache policy),
/// or why the step was skipped, and what failed.
fn git_table(s: &mut String, g: &GitStatusOutcome) {
    let _ = writeln!(s);
    if let Some(why) = &g.skipped {
        let _ = writeln!(s, "git status: skipped: {why}");
        return;
    }
    let tree = g.tree.as_ref().map_or("-".to_string(), |t| {
        format!("{}, {} files", t.source, t.files)
    });
    let _ = writeln!(
        s,
        "{:<26} {:<30} {:>8} {:>8} {:>12} {:>14}",
        "git status", "tree", "cold s", "warm s", "warm/native", "srv CPU s/run"
    );
    let mut rows: Vec<(String, Result<&GitStatusRecord, &str>)> = Vec::new();
    if let Some(r) = g.row(None) {
        rows.push((r.label(), Ok(r)));
    }
    for cache in gitstatus::CACHES {
        let label = format!("virtiofsd-rs cache={cache}");
        match (g.row(Some(cache)), g.error_of(cache)) {
            (Some(r), _) => rows.push((label, Ok(r))),
            (None, Some(e)) => rows.push((
                label.clone(),
                Err(e.trim_start_matches(&format!("{label}: "))),
            )),
            (None, None) => {}
        }
    }
    for (label, row) in rows {
        match row {
            Ok(r) => {
                let _ = writeln!(
                    s,
                    "{:<26} {:<30} {:>8.3} {:>8.3} {:>12} {:>14}",
                    label,
                    tree,
                    r.cold_s,
                    r.warm_s,
                    x(g.ratio_to_native(r)),
                    r.server_cpu_s.map_or("-".into(), |c| format!("{c:.3}"))
                );
            }
            Err(e) => {
                let _ = writeln!(s, "{label:<26} {tree:<30} error: {}", clip(e, 140));
            }
        }
    }
    for e in g.errors.iter().filter(|e| {
        !gitstatus::CACHES
            .iter()
            .any(|c| g.error_of(c) == Some(e.as_str()))
    }) {
        let _ = writeln!(s, "{:<26} error: {}", "", clip(e, 160));
    }
    let runs = g.rows.first().map_or(0, |r| r.runs);
    let _ = writeln!(
        s,
        "virtiofsd (upstream): no row, it has no FUSE-mount mode (virtio-fs over vhost-user only)."
    );
    let _ = writeln!(
        s,
        "`git status --porcelain` (optional locks off, no user or system git config) in a committed tree with one changed and one untracked file; virtiofsd-rs --fuse-mount --sandbox none --cache POLICY."
    );
    let _ = writeln!(
        s,
        "cold: the first run (on a fresh mount; native's tree is in the host's caches); warm: the median of {runs} more; srv CPU: virtiofsd-rs's CPU time (all processes and threads) per warm run."
    );
    if g.prepare_s >= 1.0 {
        let _ = writeln!(s, "The tree was ready in {:.1} s.", g.prepare_s);
    }
}

/// One record of the JSON file.
#[derive(serde::Serialize)]
struct Row<'a> {
    server: &'a str,
    engine: &'a str,
    workload: &'a str,
    ops_per_s: f64,
    mib_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_cpu_us_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_fds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_inode: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_held_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_after_forget_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listing: Option<&'a str>,
}

/// The JSON array, one record a line: one record per (server, engine,
/// workload) with the fields `server`, `engine`, `workload`, `ops_per_s`,
/// `mib_per_s`, `p50_us`, `p99_us` (the server's CPU use is in the table),
/// to 3 decimals (0 when not finite). Tree workloads' records add, where
/// measured: `entries` (the pass's count; `ops_per_s` is per entry, the
/// latencies per request), `server_cpu_us_per_op` (server CPU µs per
/// entry), `driver_cpu_us_per_op` (the measuring thread's), `max_fds` and `fd_limit` (the serving process's), and for
/// `inode-memory` `inodes`, `bytes_per_inode`, `rss_before_bytes`,
/// `rss_held_bytes`, `rss_after_forget_bytes`; and `listing` (how
/// directories were listed: `READDIRPLUS`, `READDIR+LOOKUP`, `getdents64`).
pub fn json(records: &[Record]) -> Result<String, ReportError> {
    Ok(json_array(&json_rows(records)?))
}

/// Every record of `out`: [`json`]'s, then one per `git-status` row with
/// the fields `server` (`native` or `virtiofsd-rs`), `workload`
/// (`git-status`), `cache` (`auto`, `always`, null for native), `cold_s`,
/// `warm_s`, `ratio_to_native` (of the warm medians), `server_cpu_s` (per
/// warm run, null for native), `files`, `tree_source` and `runs` (warm
/// runs), seconds to the microsecond.
pub fn json_outcome(out: &Outcome) -> Result<String, ReportError> {
    let mut rows = json_rows(&out.records)?;
    if let Some(g) = &out.git_status {
        rows.extend(git_json_rows(g)?);
    }
    Ok(json_array(&rows))
}

/// `rows`, one a line, as a JSON array.
fn json_array(rows: &[String]) -> String {
    let mut s = String::from("[\n");
    for (i, row) in rows.iter().enumerate() {
        s += &format!("  {row}{}\n", if i + 1 < rows.len() { "," } else { "" });
    }
    s + "]\n"
}

/// `x` rounded to `1/scale` (0 when not finite).
fn round_to(x: f64, scale: f64) -> f64 {
    if x.is_finite() {
        (x * scale).round_ties_even() / scale
    } else {
        0.0
    }
}

/// One `git-status` record of the JSON file.
#[derive(serde::Serialize)]
struct GitRow<'a> {
    server: &'a str,
    workload: &'a str,
    cache: Option<&'a str>,
    cold_s: f64,
    warm_s: f64,
    ratio_to_native: Option<f64>,
    server_cpu_s: Option<f64>,
    files: u64,
    tree_source: &'a str,
    runs: usize,
}

fn git_json_rows(g: &GitStatusOutcome) -> Result<Vec<String>, ReportError> {
    let micro = |x: f64| round_to(x, 1e6);
    let (files, source) = g
        .tree
        .as_ref()
        .map_or((0, ""), |t| (t.files, t.source.as_str()));
    g.rows
        .iter()
        .map(|r| {
            Ok(serde_json::to_string(&GitRow {
                server: r.server,
                workload: gitstatus::NAME,
                cache: r.cache,
                cold_s: micro(r.cold_s),
                warm_s: micro(r.warm_s),
                ratio_to_native: g.ratio_to_native(r).map(|x| round_to(x, 1e3)),
                server_cpu_s: r.server_cpu_s.map(micro),
                files,
                tree_source: source,
                runs: r.runs,
            })?)
        })
        .collect()
}

fn json_rows(records: &[Record]) -> Result<Vec<String>, ReportError> {
    let milli = |x: f64| round_to(x, 1e3);
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        let m = &r.summary;
        let t = r.tree.unwrap_or_default();
        let row = serde_json::to_string(&Row {
            server: r.target.server.name(),
            engine: r.target.engine.name(),
            workload: r.workload.name(),
            ops_per_s: milli(m.ops_per_s),
            mib_per_s: milli(m.mib_per_s),
            p50_us: milli(m.p50_us),
            p99_us: milli(m.p99_us),
            entries: r.tree.map(|t| t.entries),
            server_cpu_us_per_op: t.cpu_us_per_entry.map(milli),
            driver_cpu_us_per_op: t.driver_cpu_us_per_entry.map(milli),
            max_fds: t.max_fds,
            fd_limit: t.fd_limit,
            inodes: t.inodes,
            bytes_per_inode: t.bytes_per_inode().map(milli),
            rss_before_bytes: t.rss_before,
            rss_held_bytes: t.rss_held,
            rss_after_forget_bytes: t.rss_forgotten,
            listing: t.listing,
        })?;
        rows.push(row);
    }
    Ok(rows)
}

fn colour(t: Target) -> &'static str {
    match (t.server, t.engine) {
        (Server::Native, _) => "#6b6b6b",
        (Server::VirtiofsdRs, Engine::Sync) => "#7fb3e0",
        (Server::VirtiofsdRs, _) => "#1f5fa8",
        (Server::Virtiofsd, Engine::Prefer) => "#9c5a0c",
        (Server::Virtiofsd, Engine::Never) => "#f2c48a",
        (Server::Virtiofsd, _) => "#e08a1f",
        (Server::P9d, _) => "#2e9e4a",
        (Server::Diod, _) => "#c43c3c",
    }
}

fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The SVG bar chart: per workload, one bar per target, its length the
/// target's MiB/s (I/O) or ops/s (metadata) relative to the fastest target
/// of that workload (linear), labelled with MiB/s, ops/s and the median and
/// 99th percentile latencies.
pub fn svg(out: &Outcome, title: &str, subtitle: &[String]) -> String {
    let (w, label_x, bar_x, bar_max) = (1160.0, 12.0, 190.0, 520.0);
    let (bar_h, gap, group_gap) = (15.0, 3.0, 26.0);
    let mut body = String::new();
    let mut y = 30.0;
    let _ = writeln!(
        body,
        r#"<text x="{label_x}" y="{y}" font-size="15" font-weight="bold">{}</text>"#,
        xml(title)
    );
    for line in subtitle {
        y += 16.0;
        let _ = writeln!(
            body,
            r##"<text x="{label_x}" y="{y}" font-size="11" fill="#444">{}</text>"##,
            xml(line)
        );
    }
    // Legend.
    y += 22.0;
    let mut lx = label_x;
    let mut targets: Vec<Target> = out.records.iter().map(|r| r.target).collect();
    targets.sort();
    targets.dedup();
    for t in &targets {
        let _ = writeln!(
            body,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            y - 10.0,
            colour(*t),
            lx + 16.0,
            y,
            xml(t.label())
        );
        lx += 30.0 + 7.0 * t.label().len() as f64;
    }
    y += 10.0;
    for wl in workloads(&out.records) {
        let rows: Vec<&Record> = {
            let mut r: Vec<&Record> = out.records.iter().filter(|r| r.workload == wl).collect();
            r.sort_by_key(|r| r.target);
            r
        };
        // Bars: MiB/s for I/O (9P request sizes may differ), else ops/s.
        let metric = |m: &Summary| {
            if wl.moves_data() {
                m.mib_per_s
            } else {
                m.ops_per_s
            }
        };
        let best = rows.iter().map(|r| metric(&r.summary)).fold(0.0, f64::max);
        y += group_gap;
        let unit = match wl {
            Workload::Readdir10k
            | Workload::TreeStat
            | Workload::TreeCreate
            | Workload::TreeRemove
            | Workload::TreeStatRlimit1024 => "entries/s",
            Workload::InodeMemory => "lookups/s",
            Workload::CreateStatUnlink => "(create+stat+close+unlink)/s",
            _ => "MiB/s",
        };
        let _ = writeln!(
            body,
            r##"<text x="{label_x}" y="{y}" font-size="13" font-weight="bold">{}</text><text x="{}" y="{y}" font-size="11" fill="#444">bar: {unit}, relative to the fastest</text>"##,
            wl.name(),
            bar_x
        );
        y += 6.0;
        for r in rows {
            let m = &r.summary;
            let len = if best > 0.0 {
                (metric(m) / best * bar_max).max(1.0)
            } else {
                1.0
            };
            let mut label = String::new();
            if wl.moves_data() {
                let _ = write!(
                    label,
                    "{:.0} MiB/s  {} req/s",
                    m.mib_per_s,
                    short(m.ops_per_s)
                );
            } else {
                let _ = write!(label, "{}/s", short(m.ops_per_s));
            }
            let _ = write!(
                label,
                "  p50 {} µs  p99 {} µs",
                short(m.p50_us),
                short(m.p99_us)
            );
            if let Some(t) = &r.tree {
                if let Some(c) = t.cpu_us_per_entry {
                    let _ = write!(label, "  srv {c:.1} µs/entry");
                }
                if let Some(b) = t.bytes_per_inode() {
                    let _ = write!(label, "  {b:.0} B/inode");
                }
                if let (Some(n), Some(_)) = (t.max_fds, t.fd_limit) {
                    let _ = write!(label, "  {n} fds");
                }
            }
            let _ = writeln!(
                body,
                r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text><rect x="{bar_x}" y="{y}" width="{len:.1}" height="{bar_h}" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
                bar_x - 6.0,
                y + bar_h - 3.5,
                xml(r.target.label()),
                colour(r.target),
                bar_x + len + 6.0,
                y + bar_h - 3.5,
                xml(&label)
            );
            y += bar_h + gap;
        }
        // Tree workloads: the targets that failed, as a row each.
        let mut failed: Vec<&Failure> = out
            .failures
            .iter()
            .filter(|f| {
                f.workload == Some(wl) && wl.is_tree() && not_applicable(f.target, wl).is_none()
            })
            .collect();
        failed.sort_by_key(|f| f.target);
        for f in failed {
            let text = format!(
                "error{}: {}",
                if f.expected { " (expected)" } else { "" },
                clip(&f.reason, 110)
            );
            let _ = writeln!(
                body,
                r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text><text x="{bar_x}" y="{}" font-size="11" fill="#b00">{}</text>"##,
                bar_x - 6.0,
                y + bar_h - 3.5,
                xml(f.target.label()),
                y + bar_h - 3.5,
                xml(&text)
            );
            y += bar_h + gap;
        }
    }
    if let Some(g) = &out.git_status {
        y += group_gap;
        let tree = g.tree.as_ref().map_or(String::new(), |t| {
            format!("; tree {}, {} files", t.source, t.files)
        });
        let _ = writeln!(
            body,
            r##"<text x="{label_x}" y="{y}" font-size="13" font-weight="bold">{}</text><text x="{bar_x}" y="{y}" font-size="11" fill="#444">{}</text>"##,
            gitstatus::NAME,
            xml(format!(
                "bar: git status runs/s (1 / warm median), relative to the fastest{tree}; upstream virtiofsd has no FUSE-mount mode"
            ))
        );
        y += 6.0;
        let best = g
            .rows
            .iter()
            .filter(|r| r.warm_s > 0.0)
            .map(|r| 1.0 / r.warm_s)
            .fold(0.0, f64::max);
        for r in &g.rows {
            let len = if best > 0.0 && r.warm_s > 0.0 {
                (1.0 / r.warm_s / best * bar_max).max(1.0)
            } else {
                1.0
            };
            let mut label = format!("warm {:.3} s  cold {:.3} s", r.warm_s, r.cold_s);
            if let Some(q) = g.ratio_to_native(r).filter(|_| r.cache.is_some()) {
                let _ = write!(label, "  {q:.2}x native");
            }
            if let Some(c) = r.server_cpu_s {
                let _ = write!(label, "  srv {c:.3} s CPU/run");
            }
            let colour = match r.cache {
                None => "#6b6b6b",
                Some("auto") => "#1f5fa8",
                Some(_) => "#5b3fa8",
            };
            let _ = writeln!(
                body,
                r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text><rect x="{bar_x}" y="{y}" width="{len:.1}" height="{bar_h}" fill="{colour}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
                bar_x - 6.0,
                y + bar_h - 3.5,
                xml(r.label()),
                bar_x + len + 6.0,
                y + bar_h - 3.5,
                xml(&label)
            );
            y += bar_h + gap;
        }
        let notes = g
            .skipped
            .iter()
            .map(|w| format!("skipped: {w}"))
            .chain(g.errors.iter().map(|e| format!("error: {e}")));
        for text in notes {
            let _ = writeln!(
                body,
                r##"<text x="{bar_x}" y="{}" font-size="11" fill="#b00">{}</text>"##,
                y + bar_h - 3.5,
                xml(clip(&text, 140))
            );
            y += bar_h + gap;
        }
    }
    y += 20.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{y}\" viewBox=\"0 0 {w} {y}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM UTC` (past the year 9999, as
/// seconds after the epoch).
pub fn utc(secs: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| format!("{secs} s after 1970-01-01 00:00 UTC"))
}

/// Now, as [`utc`].
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Failure;
    use std::time::Duration;

    fn rec(server: Server, engine: Engine, w: Workload, ops: f64, p50: f64) -> Record {
        Record {
            target: Target { server, engine },
            workload: w,
            summary: Summary {
                ops_per_s: ops,
                mib_per_s: ops * 4096.0 / 1048576.0,
                p50_us: p50,
                p99_us: p50 * 2.0,
                samples: 10,
                seconds: 1.0,
            },
            capped_len: None,
            server_cpu: (server != Server::Native).then_some(0.5),
            spread: None,
            tree: None,
        }
    }

    fn outcome() -> Outcome {
        use Workload::*;
        Outcome {
            records: vec![
                rec(
                    Server::Native,
                    Engine::Default,
                    RandRead4kQd32,
                    400000.0,
                    1.0,
                ),
                rec(
                    Server::VirtiofsdRs,
                    Engine::IoUring,
                    RandRead4kQd32,
                    90000.0,
                    300.0,
                ),
                rec(
                    Server::Virtiofsd,
                    Engine::Default,
                    RandRead4kQd32,
                    50000.0,
                    600.0,
                ),
                rec(
                    Server::VirtiofsdRs,
                    Engine::IoUring,
                    RandRead4kQd1,
                    20000.0,
                    40.0,
                ),
                rec(
                    Server::Virtiofsd,
                    Engine::Default,
                    RandRead4kQd1,
                    21000.0,
                    38.0,
                ),
            ],
            failures: vec![Failure {
                target: Target {
                    server: Server::Diod,
                    engine: Engine::Default,
                },
                workload: None,
                reason: "no diod".into(),
                expected: false,
            }],
            versions: vec![("virtiofsd".into(), "virtiofsd 1.14.0".into())],
            context: vec!["2 CPUs".into()],
            elapsed: Duration::from_secs(3),
            git_status: None,
        }
    }

    #[test]
    fn json_has_exactly_the_issues_fields() {
        let mut o = outcome();
        let j = json(&o.records[..2]).unwrap();
        let want = "[\n  {\"server\":\"native\",\"engine\":\"-\",\"workload\":\"randread-4k-qd32\",\"ops_per_s\":400000.0,\"mib_per_s\":1562.5,\"p50_us\":1.0,\"p99_us\":2.0},\n  {\"server\":\"virtiofsd-rs\",\"engine\":\"io-uring\",\"workload\":\"randread-4k-qd32\",\"ops_per_s\":90000.0,\"mib_per_s\":351.562,\"p50_us\":300.0,\"p99_us\":600.0}\n]\n";
        assert_eq!(j, want);
        assert_eq!(json(&[]).unwrap(), "[\n]\n");
        o.records[0].summary.p50_us = f64::NAN;
        assert!(json(&o.records[..1]).unwrap().contains("\"p50_us\":0.0,"));
    }

    #[test]
    fn targets_are_checked_from_the_ratios() {
        let c = checks(&outcome().records, &[]);
        let qd32 = &c[0];
        assert_eq!(qd32.verdict, Verdict::Met, "{qd32:?}");
        assert!(qd32.detail.starts_with("1.80x"));
        let qd1 = &c[1];
        assert_eq!(qd1.verdict, Verdict::Missed, "40 µs > 38 µs: {qd1:?}");
        assert!(c[2..].iter().all(|c| c.verdict == Verdict::NotMeasured));
    }

    #[test]
    fn the_table_names_every_row_ratio_and_failure() {
        let t = table(&outcome(), "fsbench --quick", "2026-01-01 00:00 UTC");
        assert!(t.starts_with("fsbench, 2026-01-01 00:00 UTC: fsbench --quick\n"));
        assert!(t.contains("virtiofsd 1.14.0"));
        assert!(
            t.contains("randread-4k-qd32     native        -             400000"),
            "{t}"
        );
        assert!(t.contains("1.80x"));
        assert!(t.contains("MISSED  randread-4k-qd1: p50 <= virtiofsd's"));
        assert!(t.contains("diod all workloads: no diod"));
    }

    #[test]
    fn the_svg_is_well_formed_and_escapes_text() {
        let s = svg(&outcome(), "fsbench <quick> & co", &["sub".into()]);
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("fsbench &lt;quick&gt; &amp; co"));
        assert_eq!(
            s.matches("<rect x=\"190\"").count(),
            5,
            "one bar per record"
        );
        // The fastest bar of a workload is full length.
        assert!(s.contains("width=\"520.0\""));
        assert_eq!(s.matches('<').count(), s.matches('>').count());
    }

    #[test]
    fn tree_records_carry_their_figures_to_the_table_json_and_chart() {
        use crate::runner::TreeFigures;
        let mut o = outcome();
        let mut ours = rec(
            Server::VirtiofsdRs,
            Engine::IoUring,
            Workload::InodeMemory,
            50_000.0,
            9.0,
        );
        ours.tree = Some(TreeFigures {
            entries: 20_000,
            cpu_us_per_entry: Some(9.5),
            driver_cpu_us_per_entry: Some(4.25),
            max_fds: Some(261),
            fd_limit: Some(1024),
            inodes: Some(20_000),
            rss_before: Some(3 << 20),
            rss_held: Some((3 << 20) + 4_000_000),
            rss_forgotten: Some((3 << 20) + 1_000_000),
            listing: None,
        });
        o.records = vec![ours];
        o.failures.push(Failure {
            target: UPSTREAM,
            workload: Some(Workload::InodeMemory),
            reason: "LOOKUP failed: Too many open files".into(),
            expected: true,
        });
        let t = table(&o, "fsbench", "now");
        assert!(t.contains("tree workloads"), "{t}");
        assert!(t.contains("261/1024"), "{t}");
        assert!(t.contains("200 B/inode over 20000 inodes"), "{t}");
        assert!(
            t.contains("error (expected): LOOKUP failed: Too many open files"),
            "{t}"
        );
        assert!(t.contains("(expected of a peer: not a --strict failure)"));
        let c = checks(&o.records, &o.failures);
        let mem = c
            .iter()
            .find(|c| c.text.starts_with("inode-memory: < 200"))
            .unwrap();
        assert_eq!(mem.verdict, Verdict::Missed, "200 is not < 200");
        let forget = c
            .iter()
            .find(|c| c.text.starts_with("inode-memory: BATCH_FORGET"))
            .unwrap();
        assert_eq!(forget.verdict, Verdict::Met, "{forget:?}");
        let j = json(&o.records).unwrap();
        assert!(
            j.contains("\"entries\":20000,\"server_cpu_us_per_op\":9.5,\"driver_cpu_us_per_op\":4.25,\"max_fds\":261,\"fd_limit\":1024,\"inodes\":20000,\"bytes_per_inode\":200.0"),
            "{j}"
        );
        assert!(!j.contains("listing"));
        let svg = svg(&o, "t", &[]);
        assert!(svg.contains("lookups/s") && svg.contains("200 B/inode"));
        assert!(svg.contains("error (expected)"));
        // Ours failing under the limit is a missed target, not "not measured".
        let fail = [Failure {
            target: OURS,
            workload: Some(Workload::TreeStatRlimit1024),
            reason: "READDIRPLUS failed: EMFILE".into(),
            expected: false,
        }];
        let c = checks(&[], &fail);
        let rl = c
            .iter()
            .find(|c| c.text.starts_with("tree-stat-rlimit1024"))
            .unwrap();
        assert_eq!(rl.verdict, Verdict::Missed);
        assert!(rl.detail.contains("EMFILE"));
    }

    #[test]
    fn git_status_has_its_table_records_chart_and_targets() {
        use crate::gitstatus::{GitTree, CACHES};
        let row = |cache: Option<&'static str>, warm: f64| GitStatusRecord {
            server: if cache.is_some() {
                "virtiofsd-rs"
            } else {
                "native"
            },
            cache,
            cold_s: warm * 4.0,
            warm_s: warm,
            server_cpu_s: cache.map(|_| 0.25),
            runs: 5,
        };
        let mut o = outcome();
        o.git_status = Some(GitStatusOutcome {
            tree: Some(GitTree {
                dir: "/c/linux-source-6.1".into(),
                files: 78_614,
                source: "linux-source-6.1".into(),
            }),
            rows: vec![row(None, 0.2), row(Some(CACHES[0]), 0.5)],
            errors: vec!["virtiofsd-rs cache=always: git status failed".into()],
            ..GitStatusOutcome::default()
        });
        let t = table(&o, "fsbench", "now");
        let line = |start: &str| {
            t.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start} in {t}"))
                .to_string()
        };
        assert!(line("git status").contains("warm/native"));
        let native = line("native   ");
        assert!(native.contains("linux-source-6.1, 78614 files"), "{native}");
        assert!(
            native.contains("0.800") && native.contains("1.00x"),
            "{native}"
        );
        let auto = line("virtiofsd-rs cache=auto");
        assert!(auto.contains("2.50x") && auto.contains("0.250"), "{auto}");
        assert!(line("virtiofsd-rs cache=always").contains("error: git status failed"));
        assert!(t.contains("no FUSE-mount mode"));
        assert!(
            t.contains("met     git-status: cache=auto warm <= 3x native"),
            "{t}"
        );
        assert!(
            t.contains("MISSED  git-status: cache=always warm <= 1.5x native"),
            "{t}"
        );
        let j = json_outcome(&o).unwrap();
        assert!(j.contains("{\"server\":\"native\",\"workload\":\"git-status\",\"cache\":null,\"cold_s\":0.8,\"warm_s\":0.2,\"ratio_to_native\":1.0,\"server_cpu_s\":null,\"files\":78614,\"tree_source\":\"linux-source-6.1\",\"runs\":5}"), "{j}");
        assert!(j.contains("\"cache\":\"auto\",\"cold_s\":2.0,\"warm_s\":0.5,\"ratio_to_native\":2.5,\"server_cpu_s\":0.25"), "{j}");
        // The other records are unchanged.
        assert!(j.starts_with(&json(&o.records).unwrap()[..json(&o.records).unwrap().len() - 3]));
        let svg = svg(&o, "t", &[]);
        assert!(svg.contains(">git-status<") && svg.contains("2.50x native"));
        assert!(svg.contains("error: virtiofsd-rs cache=always"));
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
        // Skipped: one line, the targets not measured.
        o.git_status = Some(GitStatusOutcome::skipped("not root"));
        let t = table(&o, "fsbench", "now");
        assert!(t.contains("git status: skipped: not root"), "{t}");
        assert!(t.contains("n/a     git-status: cache=auto"), "{t}");
        // Not selected: no table, no targets.
        o.git_status = None;
        assert!(!table(&o, "fsbench", "now").contains("git"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_767_225_600 + 3600 + 120), "2026-01-01 01:02 UTC");
        assert_eq!(utc(253_402_300_799), "9999-12-31 23:59 UTC");
        assert!(utc(u64::MAX).ends_with("615 s after 1970-01-01 00:00 UTC"));
    }
}
