//! The `virtiofsd-rs` logger: one line per event, to stderr with a UTC
//! timestamp (as upstream virtiofsd's lines have), or to the system log
//! (`--syslog`).
//!
//! Stderr lines read `[2026-12-06T21:30:00.123Z INFO  virtiofsd-rs] text`.
//! A message that spans lines (fuse-backend-rs logs FUSE INIT over three)
//! is folded into one, its line breaks shown as ` | `, so a management
//! stack's per-domain log gets one prefixed line per event.
//!
//! With `--syslog` each event is one datagram to the system log's socket
//! (the first of [`SYSLOG_SOCKETS`] that answers, as upstream tries them),
//! connected before the sandbox goes up (the socket is then reached
//! through the open fd, never by path again; a reconnect would need
//! `socket` and `connect`, which seccomp refuses): `<PRI>virtiofsd-rs[PID]:
//! text`, facility user as upstream's. A datagram the system log refuses
//! (its daemon restarted, its queue full) is written to stderr instead, so
//! nothing is lost silently. Where there is no system log at all, the
//! logger falls back to stderr and says so in its first line, as upstream
//! does (Kata's Go runtime always passes `--syslog`).

use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use log::{Level, LevelFilter};

/// Where the system log may listen, tried in this order.
pub const SYSLOG_SOCKETS: [&str; 3] = ["/dev/log", "/var/run/syslog", "/var/run/log"];

/// Why the logger could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// A logger was already installed in this process.
    #[error("a logger is already set up: {0}")]
    AlreadySet(#[from] log::SetLoggerError),
}

/// Installs the process's logger: events up to `filter`, to the system log
/// when `syslog` (stderr where there is none, said in a warning), else to
/// stderr. Call it before the sandbox.
pub fn init(filter: LevelFilter, syslog: bool) -> Result<(), LoggingError> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(filter);
    let mut no_syslog = None;
    let sock = if syslog {
        let sock = SYSLOG_SOCKETS
            .iter()
            .map(|p| connect_syslog(Path::new(p)))
            .find_map(Result::ok);
        if sock.is_none() {
            no_syslog = Some(SYSLOG_SOCKETS.join(", "));
        }
        sock
    } else {
        None
    };
    match sock {
        Some(sock) => {
            builder
                .format(|buf, record| {
                    write!(
                        buf,
                        "{}",
                        syslog_line(record.level(), std::process::id(), record.args())
                    )
                })
                .target(env_logger::Target::Pipe(Box::new(SyslogWriter(sock))));
        }
        None => {
            builder.format(|buf, record| {
                let ts = buf.timestamp_millis();
                writeln!(
                    buf,
                    "[{ts} {:<5} virtiofsd-rs] {}",
                    record.level(),
                    one_line(record.args())
                )
            });
        }
    }
    builder.try_init()?;
    if let Some(tried) = no_syslog {
        log::warn!("--syslog: no system log answers at {tried}; logging to stderr");
    }
    Ok(())
}

/// A datagram socket connected to `path`, non-blocking: a system log whose
/// queue is full makes a send fail (the line then goes to stderr) instead
/// of stalling the thread that logs, which may be serving a queue.
fn connect_syslog(path: &Path) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    sock.connect(path)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// `args` as one line: each line break, with the indentation after it,
/// becomes ` | `; trailing breaks are dropped.
pub fn one_line(args: &std::fmt::Arguments<'_>) -> String {
    let text = match args.as_str() {
        Some(s) => s.to_owned(),
        None => args.to_string(),
    };
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.trim_end().lines().enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        out.push_str(if i > 0 { line.trim_start() } else { line });
    }
    out
}

/// The syslog severity of a `log` level (RFC 5424: 3 err, 4 warning,
/// 6 info, 7 debug).
fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Facility `user` (1), upstream's, shifted as the priority field wants it.
const FACILITY_USER: u8 = 1 << 3;

/// One system-log datagram: `<PRI>virtiofsd-rs[PID]: text` (the system log
/// adds the time and host).
pub fn syslog_line(level: Level, pid: u32, args: &std::fmt::Arguments<'_>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<{}>virtiofsd-rs[{pid}]: {}",
        FACILITY_USER | severity(level),
        one_line(args)
    );
    s
}

/// Sends each formatted record as one datagram; on failure writes it to
/// stderr instead.
struct SyslogWriter(UnixDatagram);

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.send(buf).is_err() {
            let mut err = io::stderr().lock();
            err.write_all(buf)?;
            err.write_all(b"\n")?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_over_several_lines_becomes_one() {
        let major = 7;
        let got = one_line(&format_args!(
            "FUSE INIT major {major} minor 38\n in_opts: A | B\nout_opts: C\n"
        ));
        assert_eq!(
            got,
            "FUSE INIT major 7 minor 38 | in_opts: A | B | out_opts: C"
        );
        assert_eq!(one_line(&format_args!("plain")), "plain");
    }

    #[test]
    fn syslog_lines_carry_facility_user_and_the_severity() {
        let line = syslog_line(Level::Warn, 42, &format_args!("two\nlines"));
        assert_eq!(line, "<12>virtiofsd-rs[42]: two | lines");
        let line = syslog_line(Level::Info, 1, &format_args!("x"));
        assert!(line.starts_with("<14>"), "{line}");
        let line = syslog_line(Level::Error, 1, &format_args!("x"));
        assert!(line.starts_with("<11>"), "{line}");
    }

    #[test]
    fn syslog_datagrams_reach_the_socket_one_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut w = SyslogWriter(connect_syslog(&path).unwrap());
        w.write_all(b"<30>virtiofsd-rs[1]: one").unwrap();
        w.write_all(b"<30>virtiofsd-rs[1]: two").unwrap();
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>virtiofsd-rs[1]: one");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>virtiofsd-rs[1]: two");
    }

    #[test]
    fn a_missing_system_log_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_syslog(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
