//! The command line, parsed into a [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::workload::Workload;

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Server {
    /// Direct syscalls in the benchmark process.
    Native,
    /// This project's virtio-fs daemon.
    VirtiofsdRs,
    /// Upstream virtiofsd.
    Virtiofsd,
    /// This project's 9P server.
    P9d,
    /// diod, the 9P reference.
    Diod,
}

impl Server {
    /// The server's name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Server::Native => "native",
            Server::VirtiofsdRs => "virtiofsd-rs",
            Server::Virtiofsd => "virtiofsd",
            Server::P9d => "p9d",
            Server::Diod => "diod",
        }
    }

    /// Whether the server speaks 9P.
    pub fn is_9p(self) -> bool {
        matches!(self, Server::P9d | Server::Diod)
    }
}

/// The I/O engine column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    /// `virtiofsd-rs --io-engine io-uring`.
    IoUring,
    /// `virtiofsd-rs --io-engine sync`.
    Sync,
    /// A server without a choice of engine.
    Default,
    /// native with its buffers in a shared memfd mapping, as guest RAM is.
    Memfd,
    /// `virtiofsd-rs --io-engine io-uring --seccomp none`: the cost of the
    /// seccomp filter, against [`Engine::IoUring`] in the same run.
    IoUringNoSeccomp,
    /// upstream `virtiofsd --inode-file-handles=prefer`: inodes held by
    /// file handles where the file system has them (virtiofsd 1.14's
    /// default; older versions default to `never`).
    Prefer,
    /// upstream `virtiofsd --inode-file-handles=never`: an `O_PATH` fd held
    /// per inode the guest knows.
    Never,
}

impl Engine {
    /// The engine's name in the output (`-` for servers without engines).
    pub fn name(self) -> &'static str {
        match self {
            Engine::IoUring => "io-uring",
            Engine::Sync => "sync",
            Engine::Default => "-",
            Engine::Memfd => "memfd",
            Engine::IoUringNoSeccomp => "io-uring-no-seccomp",
            Engine::Prefer => "prefer",
            Engine::Never => "never",
        }
    }

    /// The `--io-engine` value for virtiofsd-rs.
    pub fn io_engine(self) -> &'static str {
        match self {
            Engine::Sync => "sync",
            _ => "io-uring",
        }
    }
}

/// One column of the results: a server with one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The server.
    pub server: Server,
    /// Its engine.
    pub engine: Engine,
}

impl Target {
    /// `server` or `server engine`, for messages.
    pub fn label(&self) -> String {
        match self.engine {
            Engine::Default => self.server.name().to_string(),
            e => format!("{} {}", self.server.name(), e.name()),
        }
    }
}

/// Every target, in report order. `virtiofsd prefer` and `virtiofsd never`
/// run only the metadata and tree workloads unless `--servers` names them
/// ([`Config::runs`]).
pub const ALL_TARGETS: [Target; 8] = [
    Target {
        server: Server::Native,
        engine: Engine::Default,
    },
    Target {
        server: Server::VirtiofsdRs,
        engine: Engine::IoUring,
    },
    Target {
        server: Server::VirtiofsdRs,
        engine: Engine::Sync,
    },
    Target {
        server: Server::Virtiofsd,
        engine: Engine::Default,
    },
    Target {
        server: Server::Virtiofsd,
        engine: Engine::Prefer,
    },
    Target {
        server: Server::Virtiofsd,
        engine: Engine::Never,
    },
    Target {
        server: Server::P9d,
        engine: Engine::Default,
    },
    Target {
        server: Server::Diod,
        engine: Engine::Default,
    },
];

/// Why the command line cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// `--servers` names an unknown server.
    #[error("unknown server '{0}' (native, virtiofsd-rs, virtiofsd-rs:io-uring, virtiofsd-rs:sync, virtiofsd, virtiofsd:default, virtiofsd:prefer, virtiofsd:never, p9d, diod)")]
    UnknownServer(String),
    /// `--workloads` names an unknown workload.
    #[error("unknown workload '{0}' (randread-4k-qd1, randread-4k-qd32, seqread-1m, seqwrite-1m, randwrite-4k-qd32, create-stat-unlink, readdir-10k, tree-stat, tree-create, tree-remove, tree-stat-rlimit1024, inode-memory, git-status, all)")]
    UnknownWorkload(String),
    /// A number is out of range.
    #[error("{0}")]
    Range(String),
}

/// Throughput and latency of virtio-fs and 9P servers, driven through the
/// driver-side harness (the same requests in the same guest-memory layout
/// for every server), against native syscalls.
#[derive(Debug, Parser)]
#[command(name = "fsbench", version)]
pub struct Cli {
    /// virtiofsd-rs binary [default: virtiofsd-rs next to fsbench].
    #[arg(long, value_name = "PATH")]
    pub virtiofsd_rs: Option<PathBuf>,
    /// Upstream virtiofsd binary [default: ~/.cargo/bin/virtiofsd if it exists].
    #[arg(long, value_name = "PATH")]
    pub virtiofsd: Option<PathBuf>,
    /// An extra argument for upstream virtiofsd (repeatable), e.g.
    /// --virtiofsd-arg=--thread-pool-size=2.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub virtiofsd_arg: Vec<String>,
    /// p9d binary [default: p9d next to fsbench].
    #[arg(long, value_name = "PATH")]
    pub p9d: Option<PathBuf>,
    /// diod binary [default: /usr/sbin/diod if it exists].
    #[arg(long, value_name = "PATH")]
    pub diod: Option<PathBuf>,
    /// Servers to run, comma separated: native, virtiofsd-rs (both engines),
    /// virtiofsd-rs:io-uring, virtiofsd-rs:sync, virtiofsd (its default,
    /// `--inode-file-handles=prefer` and `=never`), virtiofsd:default,
    /// virtiofsd:prefer, virtiofsd:never, p9d, diod [default: all;
    /// virtiofsd prefer and never run only the metadata and tree
    /// workloads unless named as virtiofsd:prefer or virtiofsd:never];
    /// also native:memfd (native with its buffers in shared
    /// memfd memory, as guest RAM is; not in the default set) and
    /// virtiofsd-rs:io-uring-no-seccomp (ours without its seccomp filter,
    /// to measure the filter's cost; not in the default set).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Workloads to run, comma separated, or `all` [default: all but
    /// inode-memory (1,000,000 lookups per server, minutes); all with
    /// --quick]. git-status (the real `git status` through virtiofsd-rs's
    /// host FUSE mount) runs once, after the others, when virtiofsd-rs is
    /// among the servers and fsbench runs as root.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Files of the tree tree-stat and tree-stat-rlimit1024 walk
    /// [default: 100000, 2000 with --quick].
    #[arg(long, value_name = "N")]
    pub tree_files: Option<usize>,
    /// Files of the tree tree-create makes and tree-remove removes
    /// [default: 10000, 2000 with --quick].
    #[arg(long, value_name = "N")]
    pub create_files: Option<usize>,
    /// Files inode-memory looks up and holds [default: 1000000, 20000
    /// with --quick].
    #[arg(long, value_name = "N")]
    pub inodes: Option<usize>,
    /// Short runs and small files: proves the tool works (what CI runs);
    /// asserts no speed.
    #[arg(long)]
    pub quick: bool,
    /// Exit non-zero when any selected server is missing, fails to start,
    /// dies, or fails any workload (without it, those are reported and
    /// skipped, and only a run that measured nothing fails). What CI runs.
    #[arg(long)]
    pub strict: bool,
    /// Write one JSON record per (server, engine, workload) to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the SVG chart to FILE [default: fsbench.svg, or
    /// fsbench-quick.svg with --quick, beside the binary's target/
    /// profile directory (target/fsbench.svg), so a trial run never
    /// overwrites the published chart in docs/benchmarks/].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Where the scratch directory (the share) is made [default: /dev/shm
    /// if it is a tmpfs, else the system temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seconds per (server, engine, workload), warm-up included [default: 5,
    /// 1 with --quick].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Seconds of each run not measured [default: a fifth of the duration,
    /// at most 1].
    #[arg(long, value_name = "SECS")]
    pub warmup: Option<f64>,
    /// Size of the data files in MiB [default: 256, 32 with --quick].
    #[arg(long, value_name = "MIB")]
    pub file_size: Option<u64>,
    /// Requests outstanding in seqread-1m and seqwrite-1m.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seq_qd: usize,
    /// Measure everything N times and report each figure's median: the
    /// rounds run one after the other, each workload by every server in
    /// turn, so a machine whose speed drifts (a VM's neighbours) moves all
    /// servers alike. The table adds each figure's spread over the rounds.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: u32,
    /// Diagnostic: put READ/WRITE data in one descriptor instead of one per
    /// 4 KiB page (Linux sends pages).
    #[arg(long)]
    pub flat_data: bool,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX with virtio-fs servers (a
    /// Linux guest does; without it the device interrupts after every batch
    /// and the driver kicks unless the device set NO_NOTIFY).
    #[arg(long)]
    pub no_event_idx: bool,
    /// How long the driver polls for a reply before it sleeps, in
    /// microseconds (adaptive, up to this; 0: sleep at once). The default
    /// is how a KVM guest waits: a vCPU that halts for its interrupt is
    /// polled by KVM for up to `halt_poll_ns` (200 µs on x86) before its
    /// thread sleeps. Applies to every server alike, virtio-fs and 9P.
    #[arg(long, value_name = "US", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub guest_poll_us: u32,
    /// `--poll-us` for virtiofsd-rs and p9d (how long they poll for the
    /// next request before sleeping) [default: theirs, 50].
    #[arg(long, value_name = "US")]
    pub server_poll_us: Option<u32>,
    /// Where fsbench and the server run: split (fsbench on the first CPU,
    /// the server on the others; shared if only one CPU), shared (one CPU
    /// for both), none (the scheduler decides).
    #[arg(long, value_enum, default_value = "split")]
    pub pin: crate::affinity::Pin,
}

/// What to run, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// virtiofsd-rs binary.
    pub virtiofsd_rs: PathBuf,
    /// Upstream virtiofsd, or why it is not run.
    pub virtiofsd: Result<PathBuf, String>,
    /// Extra arguments for upstream virtiofsd.
    pub virtiofsd_args: Vec<String>,
    /// p9d binary.
    pub p9d: PathBuf,
    /// diod, or why it is not run.
    pub diod: Result<PathBuf, String>,
    /// Targets, in report order.
    pub targets: Vec<Target>,
    /// Workloads, in report order.
    pub workloads: Vec<Workload>,
    /// Whether `git-status` runs (once, after the workloads).
    pub git_status: bool,
    /// The upstream file-handle modes (`virtiofsd prefer`, `virtiofsd
    /// never`) `--servers` named, which then run every workload, not only
    /// the metadata ones.
    pub named_modes: Vec<Engine>,
    /// Files of the tree-stat tree.
    pub tree_files: usize,
    /// Files of the tree-create / tree-remove tree.
    pub create_files: usize,
    /// Files inode-memory holds.
    pub inodes: usize,
    /// `--quick`.
    pub quick: bool,
    /// `--strict`.
    pub strict: bool,
    /// JSON output.
    pub json: Option<PathBuf>,
    /// SVG output.
    pub svg: PathBuf,
    /// Parent of the scratch directory.
    pub dir: PathBuf,
    /// Per run, warm-up included.
    pub duration: Duration,
    /// Unmeasured start of each run.
    pub warmup: Duration,
    /// Bytes of each data file.
    pub file_size: u64,
    /// Queue depth of the sequential workloads.
    pub seq_qd: usize,
    /// Rounds of the whole set of runs; figures are their medians.
    pub rounds: u32,
    /// How virtio-fs READ/WRITE data is split into descriptors.
    pub layout: crate::vfs::DataLayout,
    /// Negotiate EVENT_IDX with virtio-fs servers.
    pub event_idx: bool,
    /// The driver's polling before it sleeps for a reply.
    pub guest_poll: Duration,
    /// `--poll-us` passed to this project's servers.
    pub server_poll_us: Option<u32>,
    /// Placement of fsbench and the servers.
    pub pin: crate::affinity::Pin,
    /// The command line, for titles.
    pub command: String,
}

/// The default parent of the scratch directory: `/dev/shm` when it is a
/// tmpfs, else the system temporary directory. A tmpfs keeps the disk out
/// of the figures, and an ext4 without a journal (this project's build
/// machines) makes every create scan past the inodes deleted in the last
/// 30 s, so create-stat-unlink would slow down with its own rate and with
/// the runs before it.
pub fn default_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if crate::fixture::fs_type_of(shm).as_deref() == Some("tmpfs") {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Parses `--servers` items into targets, in report order.
pub fn parse_servers(items: &[String]) -> Result<Vec<Target>, CliError> {
    if items.is_empty() {
        return Ok(ALL_TARGETS.to_vec());
    }
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let picked: Vec<Target> = match item {
            "virtiofsd-rs" => ALL_TARGETS
                .iter()
                .copied()
                .filter(|t| t.server == Server::VirtiofsdRs)
                .collect(),
            "virtiofsd-rs:io-uring" => vec![ALL_TARGETS[1]],
            "virtiofsd-rs:sync" => vec![ALL_TARGETS[2]],
            "virtiofsd:default" => vec![Target {
                server: Server::Virtiofsd,
                engine: Engine::Default,
            }],
            "virtiofsd:prefer" => vec![Target {
                server: Server::Virtiofsd,
                engine: Engine::Prefer,
            }],
            "virtiofsd:never" => vec![Target {
                server: Server::Virtiofsd,
                engine: Engine::Never,
            }],
            "virtiofsd-rs:io-uring-no-seccomp" => vec![Target {
                server: Server::VirtiofsdRs,
                engine: Engine::IoUringNoSeccomp,
            }],
            "native:memfd" => vec![Target {
                server: Server::Native,
                engine: Engine::Memfd,
            }],
            name => ALL_TARGETS
                .iter()
                .copied()
                .filter(|t| t.server != Server::VirtiofsdRs && t.server.name() == name)
                .collect(),
        };
        if picked.is_empty() {
            return Err(CliError::UnknownServer(item.to_string()));
        }
        out.extend(picked);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Parses `--workloads` items, in report order: without any, every
/// workload with `quick`, else [`Workload::DEFAULT`]; `all` names every
/// workload. `git-status` is not one of them ([`wants_git_status`]).
pub fn parse_workloads(items: &[String], quick: bool) -> Result<Vec<Workload>, CliError> {
    if items.is_empty() {
        return Ok(if quick {
            Workload::ALL.to_vec()
        } else {
            Workload::DEFAULT.to_vec()
        });
    }
    if items.iter().any(|s| s.trim() == "all") {
        return Ok(Workload::ALL.to_vec());
    }
    let mut out = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && *s != crate::gitstatus::NAME)
        .map(|s| Workload::from_name(s).ok_or_else(|| CliError::UnknownWorkload(s.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether `--workloads` selects `git-status`: without any (the default
/// set and `--quick` both have it), with `all`, or when named.
pub fn wants_git_status(items: &[String]) -> bool {
    items.is_empty()
        || items
            .iter()
            .any(|s| s.trim() == "all" || s.trim() == crate::gitstatus::NAME)
}

impl Config {
    /// Whether `target` runs `w`: every selected target runs every selected
    /// workload, except that `virtiofsd prefer` and `virtiofsd never` (the
    /// file-handle modes, which change how inodes are held, not how data
    /// moves) run only the metadata and tree workloads unless named on the
    /// command line.
    pub fn runs(&self, target: Target, w: Workload) -> bool {
        !matches!(target.engine, Engine::Prefer | Engine::Never)
            || self.named_modes.contains(&target.engine)
            || !w.moves_data()
    }
}

impl Cli {
    /// Resolves defaults against fsbench's own location `exe` and `home`.
    pub fn into_config(
        self,
        exe: &Path,
        home: Option<&Path>,
        command: String,
    ) -> Result<Config, CliError> {
        let exe_dir = exe.parent().unwrap_or(Path::new("."));
        let duration = self.duration.unwrap_or(if self.quick { 1.0 } else { 5.0 });
        if !(0.05..=3600.0).contains(&duration) {
            return Err(CliError::Range(format!(
                "--duration {duration}: 0.05 to 3600 seconds"
            )));
        }
        let warmup = self.warmup.unwrap_or((duration / 5.0).min(1.0));
        if !(0.0..duration).contains(&warmup) {
            return Err(CliError::Range(format!(
                "--warmup {warmup}: 0 up to the duration"
            )));
        }
        let mib = self.file_size.unwrap_or(if self.quick { 32 } else { 256 });
        if !(2..=65536).contains(&mib) {
            return Err(CliError::Range(format!(
                "--file-size {mib}: 2 to 65536 MiB"
            )));
        }
        if !(1..=256).contains(&self.seq_qd) {
            return Err(CliError::Range(format!(
                "--seq-qd {}: 1 to 256",
                self.seq_qd
            )));
        }
        let sizes = [
            ("--tree-files", self.tree_files, 100_000, 2_000),
            ("--create-files", self.create_files, 10_000, 2_000),
            ("--inodes", self.inodes, 1_000_000, 20_000),
        ]
        .map(|(flag, v, full, quick)| {
            let n = v.unwrap_or(if self.quick { quick } else { full });
            if (1..=10_000_000).contains(&n) {
                Ok(n)
            } else {
                Err(CliError::Range(format!("{flag} {n}: 1 to 10000000")))
            }
        });
        let [tree_files, create_files, inodes] = sizes;
        let named_modes = [
            ("virtiofsd:prefer", Engine::Prefer),
            ("virtiofsd:never", Engine::Never),
        ]
        .into_iter()
        .filter(|(name, _)| self.servers.iter().any(|s| s.trim() == *name))
        .map(|(_, e)| e)
        .collect();
        let virtiofsd = match self.virtiofsd {
            Some(p) => Ok(p),
            None => {
                let p = home.map(|h| h.join(".cargo/bin/virtiofsd"));
                match p {
                    Some(p) if p.exists() => Ok(p),
                    _ => Err("no upstream virtiofsd: not at ~/.cargo/bin/virtiofsd (cargo install virtiofsd) and no --virtiofsd".into()),
                }
            }
        };
        let diod = match self.diod {
            Some(p) => Ok(p),
            None if Path::new("/usr/sbin/diod").exists() => Ok("/usr/sbin/diod".into()),
            None => {
                Err("no diod: not at /usr/sbin/diod (apt-get install diod) and no --diod".into())
            }
        };
        let svg = self.svg.unwrap_or_else(|| {
            exe_dir.parent().unwrap_or(exe_dir).join(if self.quick {
                "fsbench-quick.svg"
            } else {
                "fsbench.svg"
            })
        });
        Ok(Config {
            virtiofsd_rs: self
                .virtiofsd_rs
                .unwrap_or_else(|| exe_dir.join("virtiofsd-rs")),
            virtiofsd,
            virtiofsd_args: self.virtiofsd_arg,
            p9d: self.p9d.unwrap_or_else(|| exe_dir.join("p9d")),
            diod,
            targets: parse_servers(&self.servers)?,
            workloads: parse_workloads(&self.workloads, self.quick)?,
            git_status: wants_git_status(&self.workloads),
            named_modes,
            tree_files: tree_files?,
            create_files: create_files?,
            inodes: inodes?,
            quick: self.quick,
            strict: self.strict,
            json: self.json,
            svg,
            dir: self.dir.unwrap_or_else(default_dir),
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(warmup),
            file_size: mib << 20,
            seq_qd: self.seq_qd,
            rounds: self.rounds,
            layout: if self.flat_data {
                crate::vfs::DataLayout::Flat
            } else {
                crate::vfs::DataLayout::Pages
            },
            event_idx: !self.no_event_idx,
            guest_poll: Duration::from_micros(self.guest_poll_us.into()),
            server_poll_us: self.server_poll_us,
            pin: self.pin,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config, CliError> {
        let mut v = vec!["fsbench"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().into_config(
            Path::new("/w/target/release/fsbench"),
            None,
            "fsbench".into(),
        )
    }

    #[test]
    fn server_and_workload_lists_filter_in_report_order() {
        let c = cfg(&[
            "--servers",
            "diod,virtiofsd-rs:sync,native",
            "--workloads",
            "readdir-10k,seqread-1m",
        ])
        .unwrap();
        let names: Vec<String> = c.targets.iter().map(|t| t.label()).collect();
        assert_eq!(names, ["native", "virtiofsd-rs sync", "diod"]);
        assert_eq!(c.workloads, [Workload::SeqRead1m, Workload::Readdir10k]);
        assert_eq!(
            cfg(&["--servers", "virtiofsd-rs"]).unwrap().targets.len(),
            2
        );
        assert_eq!(cfg(&[]).unwrap().targets.len(), 8);
        let up = cfg(&["--servers", "virtiofsd"]).unwrap();
        let names: Vec<String> = up.targets.iter().map(|t| t.label()).collect();
        assert_eq!(names, ["virtiofsd", "virtiofsd prefer", "virtiofsd never"]);
        assert!(!up.runs(up.targets[2], Workload::RandRead4kQd1));
        assert!(up.runs(up.targets[2], Workload::InodeMemory));
        // prefer: metadata and tree workloads, unless named.
        let prefer = up.targets[1];
        assert!(up.runs(prefer, Workload::TreeStat));
        assert!(up.runs(prefer, Workload::CreateStatUnlink));
        assert!(!up.runs(prefer, Workload::SeqRead1m));
        assert!(up.runs(up.targets[0], Workload::SeqRead1m));
        let named = cfg(&["--servers", "virtiofsd:prefer"]).unwrap();
        assert_eq!(named.targets, [prefer]);
        assert!(named.runs(prefer, Workload::SeqRead1m));
        assert_eq!(
            cfg(&["--servers", "qemu"]).unwrap_err(),
            CliError::UnknownServer("qemu".into())
        );
        assert!(matches!(
            cfg(&["--workloads", "randread"]).unwrap_err(),
            CliError::UnknownWorkload(_)
        ));
    }

    #[test]
    fn defaults_follow_quick_and_the_binarys_place() {
        let q = cfg(&["--quick"]).unwrap();
        assert_eq!(q.duration, Duration::from_secs(1));
        assert_eq!(q.file_size, 32 << 20);
        assert_eq!(q.svg, PathBuf::from("/w/target/fsbench-quick.svg"));
        assert_eq!(
            q.virtiofsd_rs,
            PathBuf::from("/w/target/release/virtiofsd-rs")
        );
        assert_eq!(q.p9d, PathBuf::from("/w/target/release/p9d"));
        let full = cfg(&[]).unwrap();
        assert_eq!(full.duration, Duration::from_secs(5));
        assert_eq!(full.warmup, Duration::from_secs(1));
        assert_eq!(full.file_size, 256 << 20);
        // Never the published chart unless asked.
        assert_eq!(full.svg, PathBuf::from("/w/target/fsbench.svg"));
        assert!(cfg(&["--duration", "0"]).is_err());
        assert!(cfg(&["--duration", "2", "--warmup", "2"]).is_err());
        assert!(cfg(&["--seq-qd", "0"]).is_err());
        assert_eq!(
            (q.tree_files, q.create_files, q.inodes),
            (2_000, 2_000, 20_000)
        );
        assert_eq!(
            (full.tree_files, full.create_files, full.inodes),
            (100_000, 10_000, 1_000_000)
        );
        assert_eq!(cfg(&["--inodes", "5"]).unwrap().inodes, 5);
        assert!(cfg(&["--tree-files", "0"]).is_err());
        // inode-memory: in --quick and when named, not in the full default.
        assert_eq!(q.workloads, Workload::ALL);
        assert!(!full.workloads.contains(&Workload::InodeMemory));
        assert_eq!(full.workloads.len(), Workload::ALL.len() - 1);
        assert_eq!(
            cfg(&["--workloads", "all"]).unwrap().workloads,
            Workload::ALL
        );
        // git-status: in both default sets, with all, or when named.
        assert!(q.git_status && full.git_status);
        assert!(cfg(&["--workloads", "all"]).unwrap().git_status);
        let git = cfg(&["--workloads", "git-status"]).unwrap();
        assert!(git.git_status && git.workloads.is_empty());
        let both = cfg(&["--quick", "--workloads", "tree-stat,git-status"]).unwrap();
        assert!(both.git_status);
        assert_eq!(both.workloads, [Workload::TreeStat]);
        assert!(!cfg(&["--workloads", "tree-stat"]).unwrap().git_status);
        let extra = cfg(&["--virtiofsd-arg", "--thread-pool-size=2"]).unwrap();
        assert_eq!(extra.virtiofsd_args, ["--thread-pool-size=2"]);
    }
}
