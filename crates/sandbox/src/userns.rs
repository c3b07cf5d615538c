//! A user namespace for a daemon started without root, as upstream
//! virtiofsd's `--uid-map`/`--gid-map` make one (libvirt's session mode
//! passes `--uid-map=:0:UID:1: --uid-map=:1:SUBUID:COUNT:` and the same for
//! gids).
//!
//! [`enter`] forks a mapper that stays in the original namespace, unshares
//! a new user namespace, and has the mapper write the maps for it: directly
//! into `/proc/PID/{uid,gid}_map` when the mapper may (root), else through
//! the setuid helpers `newuidmap` and `newgidmap` (package `uidmap`), which
//! check the ranges against `/etc/subuid` and `/etc/subgid`. The process
//! then becomes id 0 of the namespace, with every capability in it: the
//! namespace sandbox (its mount, PID and network namespaces, `/proc`,
//! `pivot_root`) and the cut of capabilities follow as for a daemon started
//! as root. Guest ids are ids of the namespace: what the maps do not cover
//! shows as the overflow id (65534) and cannot be given to a file.
//!
//! Capabilities in a user namespace do not reach the host's: file handles
//! cannot be reopened (`open_by_handle_at` needs CAP_DAC_READ_SEARCH of the
//! initial namespace), so inodes are held by fds; device nodes cannot be
//! made.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

/// One range of a map: `count` ids from `inside` (in the namespace) are
/// the host's ids from `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The first id in the namespace.
    pub inside: u32,
    /// The first id on the host.
    pub outside: u32,
    /// How many ids.
    pub count: u32,
}

/// Why a map does not parse or cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    /// Not `:inside:outside:count:` (any separator, first and last).
    #[error("{flag} {value:?}: expected :NAMESPACE_ID:HOST_ID:COUNT: (e.g. :0:1000:1:)")]
    Syntax {
        /// `--uid-map` or `--gid-map`.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A count of 0, or a range past the end of the id space.
    #[error("{flag} {value:?}: the range is empty or runs past id 4294967294")]
    Range {
        /// `--uid-map` or `--gid-map`.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// Two ranges of one map overlap, inside or outside.
    #[error("{flag}: ranges {a} and {b} overlap")]
    Overlap {
        /// `--uid-map` or `--gid-map`.
        flag: &'static str,
        /// One range.
        a: IdRange,
        /// The other.
        b: IdRange,
    },
    /// More ranges than a user namespace takes (340 since Linux 4.15).
    #[error("{flag}: at most 340 ranges")]
    TooMany {
        /// `--uid-map` or `--gid-map`.
        flag: &'static str,
    },
    /// One of the maps is missing, or id 0 is not in it: the daemon must be
    /// root of its namespace.
    #[error("--uid-map and --gid-map must both be given and each map namespace id 0")]
    NoRoot,
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}:{}:{}:", self.inside, self.outside, self.count)
    }
}

impl IdRange {
    /// Parses upstream's `:inside:outside:count:`: the first character is
    /// the separator, and the value ends with it.
    pub fn parse(flag: &'static str, value: &str) -> Result<IdRange, IdMapError> {
        let syntax = || IdMapError::Syntax {
            flag,
            value: value.to_owned(),
        };
        let sep = value.chars().next().ok_or_else(syntax)?;
        if sep.is_ascii_digit() {
            return Err(syntax());
        }
        let inner = value[sep.len_utf8()..]
            .strip_suffix(sep)
            .ok_or_else(syntax)?;
        let fields: Vec<&str> = inner.split(sep).collect();
        let [inside, outside, count] = fields[..] else {
            return Err(syntax());
        };
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            s.parse::<u32>().map_err(|_| syntax())
        };
        let r = IdRange {
            inside: num(inside)?,
            outside: num(outside)?,
            count: num(count)?,
        };
        // u32::MAX is the invalid id: no range may reach it.
        let fits = |start: u32| u64::from(start) + u64::from(r.count) <= u64::from(u32::MAX);
        if r.count == 0 || !fits(r.inside) || !fits(r.outside) {
            return Err(IdMapError::Range {
                flag,
                value: value.to_owned(),
            });
        }
        Ok(r)
    }

    fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
        let (a0, a1) = (u64::from(a.0), u64::from(a.0) + u64::from(a.1));
        let (b0, b1) = (u64::from(b.0), u64::from(b.0) + u64::from(b.1));
        a0 < b1 && b0 < a1
    }

    /// Whether `id` of the namespace is in this range.
    pub fn covers_inside(&self, id: u32) -> bool {
        id >= self.inside && u64::from(id) < u64::from(self.inside) + u64::from(self.count)
    }
}

/// Parses one map's values (each a `--uid-map` or `--gid-map`) and checks
/// the ranges do not overlap.
pub fn parse_map(flag: &'static str, values: &[String]) -> Result<Vec<IdRange>, IdMapError> {
    let ranges = values
        .iter()
        .map(|v| IdRange::parse(flag, v))
        .collect::<Result<Vec<_>, _>>()?;
    if ranges.len() > 340 {
        return Err(IdMapError::TooMany { flag });
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if IdRange::overlaps((a.inside, a.count), (b.inside, b.count))
                || IdRange::overlaps((a.outside, a.count), (b.outside, b.count))
            {
                return Err(IdMapError::Overlap { flag, a: *a, b: *b });
            }
        }
    }
    Ok(ranges)
}

/// The two maps of a user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// `--uid-map` ranges.
    pub uid_map: Vec<IdRange>,
    /// `--gid-map` ranges.
    pub gid_map: Vec<IdRange>,
}

impl UserNamespace {
    /// The namespace `--uid-map` and `--gid-map` ask for: `None` when
    /// neither is given; an error unless both are, each mapping id 0.
    pub fn from_flags(
        uid_maps: &[String],
        gid_maps: &[String],
    ) -> Result<Option<UserNamespace>, IdMapError> {
        if uid_maps.is_empty() && gid_maps.is_empty() {
            return Ok(None);
        }
        let ns = UserNamespace {
            uid_map: parse_map("--uid-map", uid_maps)?,
            gid_map: parse_map("--gid-map", gid_maps)?,
        };
        let has_root = |m: &[IdRange]| m.iter().any(|r| r.covers_inside(0));
        if !has_root(&ns.uid_map) || !has_root(&ns.gid_map) {
            return Err(IdMapError::NoRoot);
        }
        Ok(Some(ns))
    }

    /// `/proc/PID/uid_map`'s text for `map`: one `inside outside count`
    /// line per range.
    pub fn proc_text(map: &[IdRange]) -> String {
        map.iter()
            .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
            .collect()
    }
}

/// Why the user namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// A system call failed.
    #[error("user namespace: cannot {step}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What the host said.
        source: io::Error,
    },
    /// The mapper could not write the maps (its reason is on stderr).
    #[error("user namespace: the id maps could not be written (see the line above; an unprivileged daemon needs newuidmap and newgidmap, package uidmap, and the ranges in /etc/subuid and /etc/subgid)")]
    Maps,
}

fn check(ret: libc::c_int, step: &'static str) -> Result<(), UsernsError> {
    if ret < 0 {
        Err(UsernsError::Step {
            step,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// Enters a new user namespace with `ns`'s maps and becomes its id 0 (see
/// the module docs). Call before any thread starts.
pub fn enter(ns: &UserNamespace) -> Result<(), UsernsError> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two fds.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r, "make a pipe")?;
    // SAFETY: pipe2 just returned these two fds, owned by nobody else.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    // SAFETY: the caller guarantees a single-threaded process, so the child
    // is a complete copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(UsernsError::Step {
            step: "fork the id mapper",
            source: io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        drop(tx);
        let code = match map_for(me, rx, ns) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("virtiofsd-rs: user namespace: {e}");
                1
            }
        };
        // SAFETY: ends the forked mapper without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(rx);
    // SAFETY: plain syscall; the process is single-threaded.
    let unshared = check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }, "unshare");
    // One byte: the namespace is there, map it; none (the pipe closed on
    // error): give up.
    let mut tx = std::fs::File::from(tx);
    if unshared.is_ok() {
        let _ = tx.write_all(b"m");
    }
    drop(tx);
    let status = crate::namespace::wait_for(pid);
    unshared?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(UsernsError::Maps);
    }
    // SAFETY: plain syscall; id 0 is mapped (checked by from_flags), and
    // the process holds CAP_SETGID in its new namespace.
    let r = unsafe { libc::setresgid(0, 0, 0) };
    check(r, "become gid 0 of the namespace")?;
    // SAFETY: as above, with CAP_SETUID.
    let r = unsafe { libc::setresuid(0, 0, 0) };
    check(r, "become uid 0 of the namespace")?;
    Ok(())
}

/// The mapper's work: wait for `target` to have unshared, then write its
/// maps.
fn map_for(target: libc::pid_t, rx: OwnedFd, ns: &UserNamespace) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut rx = std::fs::File::from(rx);
    if rx.read(&mut byte)? != 1 {
        return Err(io::Error::other("the daemon did not create its namespace"));
    }
    // The daemon is our parent until it dies; once it has, its pid may be
    // another process's, whose maps are not ours to write.
    let alive = || {
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } == target {
            Ok(())
        } else {
            Err(io::Error::other("the daemon is gone"))
        }
    };
    alive()?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Root may write any map itself (CAP_SETUID and CAP_SETGID here).
        for (file, map) in [("uid_map", &ns.uid_map), ("gid_map", &ns.gid_map)] {
            alive()?;
            let path = format!("/proc/{target}/{file}");
            std::fs::write(&path, UserNamespace::proc_text(map))
                .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}")))?;
        }
        return Ok(());
    }
    for (helper, map) in [("newuidmap", &ns.uid_map), ("newgidmap", &ns.gid_map)] {
        alive()?;
        let mut cmd = Command::new(helper);
        cmd.arg(target.to_string());
        for r in map {
            cmd.args([r.inside, r.outside, r.count].map(|n| n.to_string()));
        }
        let st = cmd
            .status()
            .map_err(|e| io::Error::new(e.kind(), format!("run {helper}: {e}")))?;
        if !st.success() {
            return Err(io::Error::other(format!("{helper} failed ({st})")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn libvirt_session_maps_parse() {
        let ns = UserNamespace::from_flags(
            &strings(&[":0:1000:1:", ":1:100000:65536:"]),
            &strings(&[":0:1000:1:", ":1:100000:65536:"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ns.uid_map,
            [
                IdRange {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdRange {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                }
            ]
        );
        assert_eq!(
            UserNamespace::proc_text(&ns.uid_map),
            "0 1000 1\n1 100000 65536\n"
        );
        // Any separator, as upstream.
        assert_eq!(
            IdRange::parse("--uid-map", "/0/1000/1/").unwrap(),
            ns.uid_map[0]
        );
        assert_eq!(UserNamespace::from_flags(&[], &[]).unwrap(), None);
    }

    #[test]
    fn bad_maps_are_one_line_errors() {
        for bad in [
            "",
            "0:1000:1",
            ":0:1000:1",
            ":0:1000:",
            ":a:1:1:",
            ":0:1:1:1:",
            ":-1:1:1:",
        ] {
            let e = IdRange::parse("--uid-map", bad).unwrap_err();
            assert!(matches!(e, IdMapError::Syntax { .. }), "{bad:?}: {e:?}");
        }
        for bad in [":0:1:0:", ":4294967295:1:1:", ":1:4294967290:10:"] {
            let e = IdRange::parse("--uid-map", bad).unwrap_err();
            assert!(matches!(e, IdMapError::Range { .. }), "{bad:?}: {e:?}");
        }
        let e = UserNamespace::from_flags(
            &strings(&[":0:1000:10:", ":5:2000:1:"]),
            &strings(&[":0:1000:1:"]),
        )
        .unwrap_err();
        assert!(matches!(e, IdMapError::Overlap { .. }), "{e:?}");
        let e = UserNamespace::from_flags(
            &strings(&[":0:1000:1:", ":1:1000:1:"]),
            &strings(&[":0:1000:1:"]),
        )
        .unwrap_err();
        assert!(matches!(e, IdMapError::Overlap { .. }), "{e:?}");
        // Both maps, each with id 0.
        let e = UserNamespace::from_flags(&strings(&[":0:1000:1:"]), &[]).unwrap_err();
        assert_eq!(e, IdMapError::NoRoot);
        let e = UserNamespace::from_flags(&strings(&[":1:1000:1:"]), &strings(&[":0:1:1:"]))
            .unwrap_err();
        assert_eq!(e, IdMapError::NoRoot);
        assert!(e.to_string().contains("--uid-map and --gid-map"));
    }
}
