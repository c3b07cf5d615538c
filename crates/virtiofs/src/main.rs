//! `virtiofsd-rs`: parse upstream virtiofsd's flags, hand them to the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use virtiofs::cli::{Cli, CAPABILITIES_JSON};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and succeed.
            // Usage errors exit 2, as clap (and so upstream virtiofsd) does.
            let code = if e.use_stderr() { 2 } else { 0 };
            if e.use_stderr() {
                // One line: clap's first line names the problem.
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("invalid arguments");
                eprintln!("virtiofsd-rs: {}", first.trim_start_matches("error: "));
                eprintln!("Try 'virtiofsd-rs --help' for more information.");
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
    env_logger::Builder::new()
        .filter_level(cli.log_filter())
        .format(|buf, record| writeln!(buf, "[virtiofsd-rs {}] {}", record.level(), record.args()))
        .init();
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtiofsd-rs: {e}");
            return ExitCode::from(1);
        }
    };
    match virtiofs::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtiofsd-rs: {e}");
            ExitCode::from(1)
        }
    }
}
