//! `fsbench`: parse the flags into a `Config`, run, report.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use fsbench::cli::Cli;
use fsbench::report::{self, ReportError};
use fsbench::runner;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "fsbench".into());
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cfg = match cli.into_config(&exe, home.as_deref(), command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fsbench: {e}");
            return ExitCode::from(2);
        }
    };
    let out = match runner::run(&cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fsbench: {e}");
            return ExitCode::from(1);
        }
    };
    let date = report::now_utc();
    print!("{}", report::table(&out, &cfg.command, &date));
    let mut status = ExitCode::SUCCESS;
    let mut write = |path: &Path, text: Result<String, ReportError>, what: &str| match text
        .and_then(|t| report::write_file(path, &t))
    {
        Ok(()) => eprintln!("fsbench: {what} written to {}", path.display()),
        Err(e) => {
            eprintln!("fsbench: {e}");
            status = ExitCode::from(1);
        }
    };
    if let Some(j) = &cfg.json {
        write(j, report::json_outcome(&out), "JSON");
    }
    if out.has_figures() {
        let title = format!("fsbench, {date}: {}", cfg.command);
        let mut sub = out.context.clone();
        sub.push(format!(
            "servers: {}",
            out.versions
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
        write(&cfg.svg, Ok(report::svg(&out, &title, &sub)), "chart");
    }
    // Skipped pairs and peers out of fds under the fd limit are reported,
    // not failures of the run; so is a skipped git-status, not a failed one.
    let git_errors = out.git_status.as_ref().map_or(&[][..], |g| &g.errors[..]);
    let strict_failed =
        cfg.strict && (out.failures.iter().any(|f| !f.expected) || !git_errors.is_empty());
    if strict_failed {
        for e in git_errors {
            eprintln!("fsbench: --strict: {}: {e}", fsbench::gitstatus::NAME);
        }
        for f in out.failures.iter().filter(|f| !f.expected) {
            let what = f.workload.map(|w| w.name()).unwrap_or("every workload");
            eprintln!(
                "fsbench: --strict: {} {what}: {}",
                f.target.label(),
                f.reason
            );
        }
    }
    if out.measured_nothing() {
        eprintln!("fsbench: nothing could be measured");
        return ExitCode::from(1);
    }
    if strict_failed {
        return ExitCode::from(1);
    }
    status
}
