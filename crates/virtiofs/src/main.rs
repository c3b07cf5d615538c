//! `virtiofsd-rs`: parse upstream virtiofsd's flags, hand them to the library.
//! Called as `mount.fuse.virtiofsd-rs` (a link), it is a mount(8) helper
//! (`virtiofs::mount_helper`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use virtiofs::cli::{Cli, CAPABILITIES_JSON};
use virtiofs::mount_helper::{self, HelperCommand, Readiness};

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let mut ready = None;
    if args
        .first()
        .is_some_and(|a| mount_helper::is_helper_name(a))
    {
        match helper(args) {
            Ok(Some((daemon_args, r))) => {
                args = daemon_args;
                ready = Some(r);
            }
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mount.fuse.virtiofsd-rs: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let fail = |msg: String| {
        match &ready {
            Some(r) => r.failed(&msg),
            None => eprintln!("virtiofsd-rs: {msg}"),
        }
        ExitCode::from(1)
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and succeed.
            // Usage errors exit 2, as clap (and so upstream virtiofsd) does.
            let code = if e.use_stderr() { 2 } else { 0 };
            if e.use_stderr() {
                // One line: clap's first line names the problem.
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("invalid arguments");
                let _ = fail(first.trim_start_matches("error: ").to_owned());
                if ready.is_none() {
                    eprintln!("Try 'virtiofsd-rs --help' for more information.");
                }
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    if cli.print_capabilities {
        println!("{CAPABILITIES_JSON}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = virtiofs::logging::init(cli.log_filter(), cli.syslog) {
        return fail(e.to_string());
    }
    let mut config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    config.ready = ready.clone();
    match virtiofs::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

/// The mount helper: remounts and returns `None`, or detaches the daemon
/// (the caller's process waits in `detach` and exits there) and returns the
/// daemon's command line and readiness pipe.
fn helper(
    args: Vec<OsString>,
) -> Result<Option<(Vec<OsString>, Readiness)>, mount_helper::HelperError> {
    match mount_helper::parse(args)? {
        HelperCommand::Fake => Ok(None),
        HelperCommand::Remount {
            mountpoint,
            options,
        } => {
            mount_helper::remount(&mountpoint, &options)?;
            Ok(None)
        }
        HelperCommand::Mount { args, log } => {
            let ready = mount_helper::detach(log.as_deref())?;
            Ok(Some((args, ready)))
        }
    }
}
