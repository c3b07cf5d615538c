//! Capabilities: what the daemon keeps once it serves guests.
//!
//! The core needs root's file-related powers to act as each guest user
//! (switching its effective ids per request) and to keep ownership and
//! modes as the guest sets them. Everything else (SYS_ADMIN, SYS_MODULE,
//! SYS_RAWIO, SYS_PTRACE, NET_ADMIN, ...) is removed from the bounding,
//! permitted and effective sets, the inheritable and ambient sets are
//! cleared, and supplementary groups are dropped. The kept set is
//! upstream virtiofsd's: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID,
//! SETUID, MKNOD, SETFCAP, plus DAC_READ_SEARCH when inodes are held by
//! file handles (`open_by_handle_at` needs it). `--modcaps` adjusts it with
//! upstream's syntax.

use std::collections::HashSet;

use caps::{CapSet, Capability};

/// Why the capability sets could not be cut.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A `--modcaps` entry is not `+name` or `-name`, or names no capability.
    #[error("--modcaps: bad entry {0:?} (expected +name or -name, e.g. +sys_admin:-chown)")]
    BadModcaps(String),
    /// The kernel refused a change.
    #[error("cannot set the {set} capabilities: {source}")]
    Set {
        /// Which set.
        set: &'static str,
        /// What the caps crate said.
        source: caps::errors::CapsError,
    },
    /// `setgroups(0)` failed.
    #[error("cannot drop supplementary groups: {0}")]
    Groups(std::io::Error),
}

/// The capabilities upstream virtiofsd keeps, which the core needs.
pub const DEFAULT_KEPT: [Capability; 8] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

/// The set to keep: the defaults, DAC_READ_SEARCH with file handles, then
/// `modcaps` (upstream's syntax: `+name` adds, `-name` removes, entries
/// separated by `:` or `,`; names with or without `cap_`, any case).
pub fn kept_set(
    file_handles: bool,
    modcaps: Option<&str>,
) -> Result<HashSet<Capability>, CapsError> {
    let mut keep: HashSet<Capability> = DEFAULT_KEPT.into_iter().collect();
    if file_handles {
        keep.insert(Capability::CAP_DAC_READ_SEARCH);
    }
    for entry in modcaps
        .unwrap_or("")
        .split([':', ','])
        .filter(|e| !e.is_empty())
    {
        let bad = || CapsError::BadModcaps(entry.to_string());
        let (add, name) = match entry.as_bytes()[0] {
            b'+' => (true, &entry[1..]),
            b'-' => (false, &entry[1..]),
            _ => return Err(bad()),
        };
        let cap: Capability = caps::to_canonical(name).parse().map_err(|_| bad())?;
        if add {
            keep.insert(cap);
        } else {
            keep.remove(&cap);
        }
    }
    Ok(keep)
}

/// Cuts the calling thread's capabilities to `keep` (bounding, effective,
/// permitted; inheritable and ambient cleared) and drops supplementary
/// groups. Call before any thread starts: threads inherit the sets.
pub fn restrict_to(keep: &HashSet<Capability>) -> Result<(), CapsError> {
    let err = |set| move |source| CapsError::Set { set, source };
    // SAFETY: setgroups with a zero count reads no memory; the process is
    // single-threaded, so glibc's broadcast to other threads is moot.
    if unsafe { libc::setgroups(0, std::ptr::null()) } < 0 {
        return Err(CapsError::Groups(std::io::Error::last_os_error()));
    }
    // Bounding first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err("bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("inheritable"))?;
    let have = caps::read(None, CapSet::Permitted).map_err(err("permitted"))?;
    let keep: HashSet<Capability> = keep.intersection(&have).copied().collect();
    // The effective set must stay within the permitted one at every step.
    caps::set(None, CapSet::Effective, &keep).map_err(err("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("permitted"))?;
    Ok(())
}

/// Whether the process holds no capability at all (an unprivileged daemon,
/// which has nothing to cut).
pub fn permitted_is_empty() -> Result<bool, CapsError> {
    caps::read(None, CapSet::Permitted)
        .map(|p| p.is_empty())
        .map_err(|source| CapsError::Set {
            set: "permitted",
            source,
        })
}

/// The capability names in `set`, sorted, lower case without `cap_`.
pub fn names(set: &HashSet<Capability>) -> String {
    let mut v: Vec<String> = set
        .iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_lowercase())
        .collect();
    v.sort();
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modcaps_adds_and_removes_with_upstream_syntax() {
        let s = kept_set(false, Some("+sys_admin:-chown")).unwrap();
        assert!(s.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!s.contains(&Capability::CAP_CHOWN));
        assert!(!s.contains(&Capability::CAP_DAC_READ_SEARCH));
        let s = kept_set(true, Some("-CAP_MKNOD")).unwrap();
        assert!(s.contains(&Capability::CAP_DAC_READ_SEARCH));
        assert!(!s.contains(&Capability::CAP_MKNOD));
        assert_eq!(s.len(), 8);
    }

    #[test]
    fn modcaps_rejects_garbage() {
        for bad in ["sys_admin", "+no_such_cap", "+", "*chown"] {
            assert!(
                matches!(kept_set(false, Some(bad)), Err(CapsError::BadModcaps(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_set_has_none_of_the_dangerous_capabilities() {
        let s = kept_set(false, None).unwrap();
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_SETPCAP,
        ] {
            assert!(!s.contains(&cap), "{cap}");
        }
        assert_eq!(
            names(&s),
            "chown,dac_override,fowner,fsetid,mknod,setfcap,setgid,setuid"
        );
    }
}
