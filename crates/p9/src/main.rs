//! `p9d`: parse flags into a `P9Config`, hand it to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use p9::attach_policy::{AttachPolicy, UidList};
use p9::{ListenAddr, P9Config};

/// A 9P2000.L file server for virtual machines.
#[derive(Debug, Parser)]
#[command(name = "p9d", version)]
struct Cli {
    /// The directory to share.
    #[arg(long)]
    shared_dir: PathBuf,
    /// Where to serve: tcp:HOST:PORT (needs --no-auth), unix:PATH (mode
    /// 0600) or fd:RFD[,WFD]; repeatable.
    #[arg(long, required_unless_present = "socket_path")]
    listen: Vec<ListenAddr>,
    /// Also serve virtio-9p to one vhost-user frontend on this socket
    /// (the daemon exits when it disconnects).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// Name or id of the group to give the unix sockets to (mode 0660;
    /// without it they are 0600: only their owner and root may connect).
    #[arg(long)]
    socket_group: Option<String>,
    /// Serve tcp: listeners although 9P2000.L has no authentication:
    /// anyone who can reach the port can act as any uid on the share.
    /// Bind to loopback, and narrow with --squash-root and --allow-uids.
    #[arg(long)]
    no_auth: bool,
    /// Serve a client attaching as uid 0 as uid and gid 65534, and any gid
    /// 0 it names as 65534 (NFS's root_squash).
    #[arg(long)]
    squash_root: bool,
    /// Only these uids may attach (comma separated uids and ranges, e.g.
    /// 1000,2000-2999); any other Tattach is refused with EPERM.
    #[arg(long, value_name = "LIST")]
    allow_uids: Option<UidList>,
    /// The most fids one connection may hold; a request that would create
    /// another is refused with EMFILE.
    #[arg(long, default_value_t = p9::daemon::DEFAULT_MAX_FIDS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_fids: u32,
    /// The most tcp: and unix: connections served at once; one more is
    /// accepted and closed at once.
    #[arg(long, default_value_t = p9::daemon::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// The mount tag of the vhost-user device.
    #[arg(long, default_value = "p9")]
    tag: String,
    /// Refuse every modification.
    #[arg(long)]
    readonly: bool,
    /// Enable extended attributes.
    #[arg(long)]
    xattr: bool,
    /// How Tread and Twrite reach the host files: io-uring (inline when the
    /// data is cached, else on a ring; the default) or sync.
    #[arg(long, default_value = "io-uring")]
    io_engine: device_queue::IoEngine,
    /// Microseconds a connection's reader (and the vhost-user queue's
    /// worker) polls for the next request before it sleeps (adaptive, up to
    /// this; 0: never poll). Polling saves the
    /// wake-up, the largest part of a small request's latency on a VM host,
    /// at the cost of CPU time while a client is active.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    poll_us: u32,
    /// Sandbox: namespace (PID, mount and network namespaces, a private
    /// /proc, pivot_root into the share), chroot, or none.
    #[arg(long, default_value = "namespace")]
    sandbox: sandbox::SandboxMode,
    /// Action on a system call outside the seccomp allowlist: none, kill,
    /// log, trap (SIGSYS: the call is reported on stderr and fails).
    #[arg(long, default_value = "kill")]
    seccomp: sandbox::SeccompMode,
    /// Capability changes to the kept set, e.g. +sys_admin:-chown (as
    /// virtiofsd's --modcaps).
    #[arg(long)]
    modcaps: Option<String>,
    /// Set RLIMIT_NOFILE (default: as high as the host allows, up to
    /// min(1000000, fs.nr_open); 0 leaves it alone).
    #[arg(long)]
    rlimit_nofile: Option<u64>,
    /// Do not confine filesystem access to the share with Landlock.
    #[arg(long)]
    no_landlock: bool,
    /// Append every 9P request frame received, on every transport, to FILE
    /// (created or truncated, mode 0600, before the sandbox), to seed fuzz
    /// corpora: the whole frames back to back, as received (each delimited
    /// by its size field). The file holds the clients' file names and file
    /// data: for test runs only.
    #[arg(long, value_name = "FILE")]
    record_requests: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace, off.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("p9d: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format(|buf, r| writeln!(buf, "[p9d {}] {}", r.level(), r.args()))
        .init();
    if let Err(e) = sandbox::caps::kept_set(false, cli.modcaps.as_deref()) {
        eprintln!("p9d: {e}");
        return ExitCode::from(2);
    }
    let mut fs = passthrough::Config::new(cli.shared_dir);
    fs.readonly = cli.readonly;
    fs.xattr = cli.xattr;
    let vhost_user = cli.socket_path.map(|socket| p9::daemon::VhostUser {
        socket,
        tag: cli.tag,
    });
    match p9::run(P9Config {
        listen: cli.listen,
        vhost_user,
        io_engine: cli.io_engine,
        poll: std::time::Duration::from_micros(cli.poll_us.into()),
        socket_group: cli.socket_group,
        no_auth: cli.no_auth,
        attach: AttachPolicy {
            squash_root: cli.squash_root,
            allow_uids: cli.allow_uids,
        },
        max_fids: cli.max_fids as usize,
        max_connections: cli.max_connections as usize,
        rlimit_nofile: cli.rlimit_nofile,
        sandbox: sandbox::SandboxConfig {
            mode: cli.sandbox,
            seccomp: cli.seccomp,
            modcaps: cli.modcaps,
            landlock: !cli.no_landlock,
            ..sandbox::SandboxConfig::new(sandbox::Profile::P9)
        },
        record_requests: cli.record_requests,
        ..P9Config::new(fs)
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p9d: {e}");
            ExitCode::from(1)
        }
    }
}
