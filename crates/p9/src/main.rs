//! `p9d`: parse flags into a `P9Config`, hand it to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use p9::{ListenAddr, P9Config};

/// A 9P2000.L file server for virtual machines.
#[derive(Debug, Parser)]
#[command(name = "p9d", version)]
struct Cli {
    /// The directory to share.
    #[arg(long)]
    shared_dir: PathBuf,
    /// Where to serve: tcp:HOST:PORT, unix:PATH or fd:RFD[,WFD]; repeatable.
    #[arg(long, required_unless_present = "socket_path")]
    listen: Vec<ListenAddr>,
    /// Also serve virtio-9p to one vhost-user frontend on this socket
    /// (the daemon exits when it disconnects).
    #[arg(long)]
    socket_path: Option<PathBuf>,
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
    io_engine: device_queue::uring::IoEngine,
    /// Microseconds a connection's reader (and the vhost-user queue's
    /// worker) polls for the next request before it sleeps (adaptive, up to
    /// this; 0: never poll). Polling saves the
    /// wake-up, the largest part of a small request's latency on a VM host,
    /// at the cost of CPU time while a client is active.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    poll_us: u32,
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
    let mut fs = passthrough::Config::new(cli.shared_dir);
    fs.readonly = cli.readonly;
    fs.xattr = cli.xattr;
    let vhost_user = cli.socket_path.map(|socket| p9::daemon::VhostUser {
        socket,
        tag: cli.tag,
    });
    match p9::run(P9Config {
        fs,
        listen: cli.listen,
        vhost_user,
        io_engine: cli.io_engine,
        poll: std::time::Duration::from_micros(cli.poll_us.into()),
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p9d: {e}");
            ExitCode::from(1)
        }
    }
}
