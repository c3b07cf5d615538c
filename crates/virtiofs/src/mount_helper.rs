//! `mount.fuse.virtiofsd-rs`: the daemon as a mount(8) helper.
//!
//! `mount -t fuse.virtiofsd-rs SPEC MNT -o source=DIR,...` runs
//! `/sbin/mount.fuse.virtiofsd-rs SPEC MNT -o source=DIR,...` (a link to the
//! `virtiofsd-rs` binary). As a helper must, it returns once the mount is up
//! and served (walls included), leaving the daemon running in its own
//! session, and fails with the daemon's one-line error otherwise:
//! - `SPEC` becomes the mount's source, so tools that tell mounts apart by
//!   source (`findmnt -S`, `df`, fstests) can;
//! - `ro` serves the share read-only (`--readonly`), `rw` is the default;
//! - `remount` goes straight to `mount -i`: the kernel changes the mount's
//!   flags (for instance `remount,ro`), the daemon keeps serving;
//! - `allow_other`, `default_permissions`, `nosuid`, `nodev`, `noatime` and
//!   `defaults` are what every such mount has; other VFS options the mount
//!   cannot honour (`suid`, `dev`, `exec`...) are refused, not ignored;
//! - `log=PATH` appends the daemon's log to PATH (default: discarded, so
//!   nothing reaches the caller's terminal once the helper has returned);
//! - the rest are the daemon's own `-o` options (`cache=`, `xattr`,
//!   `posix_acl`, `sandbox=`, `inode_file_handles=`, ...; see
//!   [`crate::cli::Cli`]).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Whether a program called `argv0` is the mount helper.
pub fn is_helper_name(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with("mount.fuse"))
}

/// What mount(8) asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperCommand {
    /// Mount: run the daemon with these `virtiofsd-rs` arguments (argv\[0\]
    /// included), its log going to `log` (None: discarded).
    Mount {
        /// The daemon's command line.
        args: Vec<OsString>,
        /// Where the daemon's log goes.
        log: Option<PathBuf>,
    },
    /// Change the flags of the existing mount at `mountpoint`: `mount -i -o
    /// remount,OPTIONS MOUNTPOINT`.
    Remount {
        /// The mount point.
        mountpoint: PathBuf,
        /// The VFS options, `remount` first.
        options: String,
    },
    /// `-f` (fake): do nothing.
    Fake,
}

/// Why the helper could not do what mount(8) asked.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// Not `SPEC MOUNTPOINT [-o OPTIONS]`.
    #[error("usage: mount.fuse.virtiofsd-rs SOURCE MOUNTPOINT -o source=DIR[,OPTION...]")]
    Usage,
    /// An argument is not valid UTF-8.
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
    /// No `source=DIR` option.
    #[error("no source=DIR option: which directory should be shared?")]
    NoSource,
    /// A VFS option this mount cannot honour.
    #[error("mount option {0:?} is not supported by virtiofsd-rs's FUSE mount")]
    UnsupportedOption(String),
    /// `mount -i` for a remount failed to run or failed.
    #[error("remount failed: {0}")]
    Remount(String),
    /// A system call of the daemonising failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The daemon stopped before the mount was up.
    #[error("{0}")]
    Daemon(String),
}

/// VFS options every FUSE mount of the daemon has (or that change nothing).
const ALWAYS: &[&str] = &[
    "rw",
    "defaults",
    "allow_other",
    "default_permissions",
    "nosuid",
    "nodev",
    "noatime",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
];
/// VFS options the daemon's mount cannot honour: refused.
const UNSUPPORTED: &[&str] = &[
    "suid",
    "dev",
    "exec",
    "noexec",
    "atime",
    "relatime",
    "strictatime",
    "lazytime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "dirsync",
    "mand",
    "nomand",
    "bind",
    "rbind",
    "move",
];

/// Parses a helper command line (`argv[0]` included).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<HelperCommand, HelperError> {
    let mut args = args.into_iter();
    let argv0 = args.next().ok_or(HelperError::Usage)?;
    let utf8 = |a: OsString| a.into_string().map_err(HelperError::NotUtf8);
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    while let Some(a) = args.next() {
        let a = utf8(a)?;
        match a.as_str() {
            "-o" => options.push(utf8(args.next().ok_or(HelperError::Usage)?)?),
            // No mtab, sloppy, verbose: nothing to do.
            "-n" | "-s" | "-v" => {}
            "-f" => fake = true,
            o if o.starts_with("-o") => options.push(o[2..].to_owned()),
            o if o.starts_with('-') => return Err(HelperError::Usage),
            _ => positional.push(a),
        }
    }
    let [spec, mountpoint] = <[String; 2]>::try_from(positional).map_err(|_| HelperError::Usage)?;
    if fake {
        return Ok(HelperCommand::Fake);
    }
    let options: Vec<&str> = options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
        .collect();
    if options.contains(&"remount") {
        // Only VFS flags reach the kernel; the daemon's own options and the
        // source stay with the running daemon.
        let vfs: Vec<&str> = options
            .iter()
            .copied()
            .filter(|o| *o != "remount" && !o.starts_with("source=") && !daemon_option(o))
            .collect();
        return Ok(HelperCommand::Remount {
            mountpoint: PathBuf::from(mountpoint),
            options: std::iter::once("remount")
                .chain(vfs)
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    let mut daemon = vec![
        argv0,
        "--fuse-mount".into(),
        mountpoint.into(),
        "--fuse-source".into(),
        spec.into(),
    ];
    let mut log = None;
    let mut passed = Vec::new();
    let mut have_source = false;
    for o in options {
        if o == "ro" {
            daemon.push("--readonly".into());
        } else if let Some(path) = o.strip_prefix("log=") {
            log = Some(PathBuf::from(path));
        } else if ALWAYS.contains(&o) {
        } else if UNSUPPORTED.contains(&o) || o.contains("context=") {
            return Err(HelperError::UnsupportedOption(o.to_owned()));
        } else {
            have_source |= o.starts_with("source=");
            passed.push(o);
        }
    }
    if !have_source {
        return Err(HelperError::NoSource);
    }
    daemon.push("-o".into());
    daemon.push(passed.join(",").into());
    Ok(HelperCommand::Mount { args: daemon, log })
}

/// Whether `o` is one of the daemon's own `-o` options (not a VFS option).
fn daemon_option(o: &str) -> bool {
    let key = o.split_once('=').map_or(o, |(k, _)| k);
    matches!(
        key,
        "cache"
            | "sandbox"
            | "seccomp"
            | "loglevel"
            | "log"
            | "xattr"
            | "no_xattr"
            | "posix_acl"
            | "no_posix_acl"
            | "inode_file_handles"
            | "readdirplus"
            | "no_readdirplus"
            | "writeback"
            | "no_writeback"
            | "announce_submounts"
            | "allow_direct_io"
            | "no_allow_direct_io"
            | "thread_pool_size"
            | "modcaps"
            | "xattrmap"
            | "killpriv_v2"
            | "no_killpriv_v2"
    )
}

/// Runs `mount -i -o OPTIONS MOUNTPOINT` (util-linux parses the flags; `-i`
/// keeps it from calling this helper again).
pub fn remount(mountpoint: &Path, options: &str) -> Result<(), HelperError> {
    let out = Command::new("mount")
        .args(["-i", "-o", options])
        .arg(mountpoint)
        .output()
        .map_err(|e| HelperError::Remount(format!("cannot run mount: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        Err(HelperError::Remount(msg.trim().to_owned()))
    }
}

/// The daemon's end of the helper's wait: tells the helper, once, that the
/// mount is served or why it will not be.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<Mutex<Option<File>>>);

impl Readiness {
    fn send(&self, msg: &[u8]) {
        let mut pipe = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut f) = pipe.take() {
            // The helper may have been killed: nothing to tell then.
            let _ = f.write_all(msg);
        }
    }

    /// The mount is up and served: the helper returns success.
    pub fn ready(&self) {
        self.send(b"\0");
    }

    /// The daemon is stopping with `why` before being ready: the helper
    /// prints it and fails. Does nothing once [`Readiness::ready`] was sent.
    pub fn failed(&self, why: &str) {
        self.send(why.as_bytes());
    }
}

/// Forks the daemon off: in the caller's process, waits until the daemon
/// reports [`Readiness::ready`] (exit 0) or fails (prints its error, exit
/// 1), and never returns; in the daemon, returns its [`Readiness`] after
/// starting a new session and sending stdin to /dev/null and stdout and
/// stderr to `log` (or /dev/null). Call it before any thread exists.
pub fn detach(log: Option<&Path>) -> Result<Readiness, HelperError> {
    let sys = |what| move |source| HelperError::Sys { what, source };
    let out = match log {
        Some(p) => OpenOptions::new().create(true).append(true).open(p),
        None => OpenOptions::new().write(true).open("/dev/null"),
    }
    .map_err(sys("cannot open the log"))?;
    let null = File::open("/dev/null").map_err(sys("cannot open /dev/null"))?;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(sys("pipe2")(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees a single-threaded process, so the child
    // may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(sys("fork")(io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no memory-safety preconditions; the
            // child of a fork is never a process group leader.
            unsafe { libc::setsid() };
            for (from, to) in [
                (null.as_raw_fd(), 0),
                (out.as_raw_fd(), 1),
                (out.as_raw_fd(), 2),
            ] {
                // SAFETY: both descriptors are open; dup2 replaces `to`.
                if unsafe { libc::dup2(from, to) } < 0 {
                    return Err(sys("dup2")(io::Error::last_os_error()));
                }
            }
            Ok(Readiness(Arc::new(Mutex::new(Some(File::from(write_end))))))
        }
        _ => {
            drop(write_end);
            // A NUL first means ready; anything else is an error message,
            // read until the daemon's processes have all closed the pipe.
            let mut pipe = File::from(read_end);
            let mut msg = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if msg.is_empty() && buf[0] == 0 {
                            std::process::exit(0);
                        }
                        msg.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let msg = String::from_utf8_lossy(&msg);
            let msg = msg.trim();
            if msg.is_empty() {
                eprintln!("mount.fuse.virtiofsd-rs: the daemon stopped before the mount was up");
            } else {
                eprintln!("mount.fuse.virtiofsd-rs: {msg}");
            }
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<HelperCommand, HelperError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn mount_maps_spec_to_source_and_ro_to_readonly() {
        let cmd = p(&[
            "/sbin/mount.fuse.virtiofsd-rs",
            "xfst_test",
            "/mnt/t",
            "-o",
            "source=/srv/t,allow_other,default_permissions,ro,posix_acl,log=/tmp/l",
        ])
        .unwrap();
        let HelperCommand::Mount { args, log } = cmd else {
            panic!("not a mount: {cmd:?}")
        };
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "/sbin/mount.fuse.virtiofsd-rs",
                "--fuse-mount",
                "/mnt/t",
                "--fuse-source",
                "xfst_test",
                "--readonly",
                "-o",
                "source=/srv/t,posix_acl"
            ]
        );
        assert_eq!(log.as_deref(), Some(Path::new("/tmp/l")));
    }

    #[test]
    fn the_daemons_xattrmap_and_killpriv_options_reach_it() {
        let cmd = p(&[
            "m",
            "s",
            "/mnt",
            "-o",
            "source=/srv,xattrmap=:prefix:all::user.v.::bad:all:::,killpriv_v2,nodev",
        ])
        .unwrap();
        let HelperCommand::Mount { args, .. } = cmd else {
            panic!("not a mount: {cmd:?}")
        };
        let last = args.last().unwrap().to_str().unwrap();
        assert_eq!(
            last,
            "source=/srv,xattrmap=:prefix:all::user.v.::bad:all:::,killpriv_v2"
        );
    }

    #[test]
    fn remount_keeps_only_vfs_options() {
        let cmd = p(&[
            "m",
            "x",
            "/mnt/t",
            "-o",
            "remount,ro,source=/srv/t,xattr,cache=never",
        ])
        .unwrap();
        assert_eq!(
            cmd,
            HelperCommand::Remount {
                mountpoint: "/mnt/t".into(),
                options: "remount,ro".into()
            }
        );
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(matches!(
            p(&["m", "x", "/mnt", "-o", "ro"]),
            Err(HelperError::NoSource)
        ));
        assert!(matches!(
            p(&["m", "x", "/mnt", "-o", "source=/s,exec"]),
            Err(HelperError::UnsupportedOption(o)) if o == "exec"
        ));
        assert!(matches!(p(&["m", "x"]), Err(HelperError::Usage)));
        assert!(matches!(
            p(&["m", "x", "/a", "/b", "-o", "source=/s"]),
            Err(HelperError::Usage)
        ));
        assert!(matches!(
            p(&["m", "x", "/a", "-o"]),
            Err(HelperError::Usage)
        ));
        assert_eq!(
            p(&["m", "x", "/a", "-f", "-o", "source=/s"]).unwrap(),
            HelperCommand::Fake
        );
    }

    #[test]
    fn only_mount_fuse_names_are_helpers() {
        assert!(is_helper_name(OsStr::new("/sbin/mount.fuse.virtiofsd-rs")));
        assert!(!is_helper_name(OsStr::new("/usr/bin/virtiofsd-rs")));
    }
}
