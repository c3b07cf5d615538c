//! Who a Tattach names: uids and primary groups from the host's user
//! database.
//!
//! A sandboxed p9d cannot consult the host's user database once it serves:
//! after `pivot_root` its `/etc/passwd` is the share's (a guest could write
//! it), and NSS would want sockets the seccomp filter forbids. So the
//! daemon takes a [`UserDb`] snapshot before the walls go up; without one
//! (a VMM linking the server in-process) lookups go to the live database.

use std::collections::HashMap;
use std::ffi::{CStr, CString};

use crate::messages::NONUNAME;

/// The uid given to a name nobody knows.
pub const NOBODY: u32 = 65534;

/// A snapshot of the host's users: name -> (uid, primary gid), uid ->
/// primary gid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserDb {
    by_name: HashMap<Vec<u8>, (u32, u32)>,
    gid_of: HashMap<u32, u32>,
    /// uid -> the groups whose member lists name that user (`getgrent`).
    groups_of: HashMap<u32, Vec<u32>>,
}

impl UserDb {
    /// Reads every user the host's database lists (`getpwent`). Call
    /// before any thread starts: `getpwent` is not thread-safe.
    pub fn snapshot() -> UserDb {
        let mut db = UserDb::default();
        // SAFETY: setpwent/getpwent/endpwent on one thread; each entry is
        // read before the next call overwrites it.
        unsafe {
            libc::setpwent();
            loop {
                let pw = libc::getpwent();
                if pw.is_null() || db.by_name.len() >= 1_000_000 {
                    break;
                }
                let name = CStr::from_ptr((*pw).pw_name).to_bytes().to_vec();
                db.gid_of.entry((*pw).pw_uid).or_insert((*pw).pw_gid);
                db.by_name.insert(name, ((*pw).pw_uid, (*pw).pw_gid));
            }
            libc::endpwent();
            // Supplementary groups: every group's member names.
            libc::setgrent();
            let mut entries = 0usize;
            loop {
                let gr = libc::getgrent();
                if gr.is_null() || entries >= 1_000_000 {
                    break;
                }
                let mut member = (*gr).gr_mem;
                while !member.is_null() && !(*member).is_null() && entries < 1_000_000 {
                    let name = CStr::from_ptr(*member).to_bytes();
                    if let Some(&(uid, _)) = db.by_name.get(name) {
                        db.groups_of.entry(uid).or_default().push((*gr).gr_gid);
                        entries += 1;
                    }
                    member = member.add(1);
                }
            }
            libc::endgrent();
        }
        db
    }

    /// Adds (or replaces) a user: `name` is `uid` with primary group `gid`
    /// and supplementary `groups` (for an embedder with its own user
    /// database, and for tests).
    pub fn with_user(mut self, name: &[u8], uid: u32, gid: u32, groups: &[u32]) -> Self {
        self.by_name.insert(name.to_vec(), (uid, gid));
        self.gid_of.insert(uid, gid);
        self.groups_of.insert(uid, groups.to_vec());
        self
    }

    /// The supplementary groups of `uid` (those whose member lists name
    /// the user), from the snapshot.
    pub fn groups(&self, uid: u32) -> Vec<u32> {
        self.groups_of.get(&uid).cloned().unwrap_or_default()
    }

    /// As [`groups`](Self::groups), asking the live user database
    /// (`getgrouplist` of the user's name; none for an unknown uid).
    pub fn live_groups(uid: u32) -> Vec<u32> {
        let mut buf = vec![0u8; 16384];
        let Some(pw) = getpwuid(uid, &mut buf) else {
            return Vec::new();
        };
        let mut groups = vec![0 as libc::gid_t; 256];
        loop {
            let mut n = groups.len() as libc::c_int;
            // SAFETY: pw_name is the NUL-terminated name getpwuid_r just
            // filled in; `groups` has room for `n` entries.
            let r =
                unsafe { libc::getgrouplist(pw.pw_name, pw.pw_gid, groups.as_mut_ptr(), &mut n) };
            if r >= 0 {
                groups.truncate(n.max(0) as usize);
                return groups;
            }
            if groups.len() >= 65536 || n as usize <= groups.len() {
                return Vec::new();
            }
            groups.resize(n as usize, 0);
        }
    }

    /// The uid and primary gid a Tattach with `uname` and `n_uname` acts
    /// as: `n_uname` with its primary group (itself if unknown), else
    /// `uname`'s, else [`NOBODY`].
    pub fn ids(&self, uname: &[u8], n_uname: u32) -> (u32, u32) {
        if n_uname != NONUNAME {
            return (
                n_uname,
                self.gid_of.get(&n_uname).copied().unwrap_or(n_uname),
            );
        }
        self.by_name.get(uname).copied().unwrap_or((NOBODY, NOBODY))
    }

    /// As [`ids`](Self::ids), asking the live user database.
    pub fn live_ids(uname: &[u8], n_uname: u32) -> (u32, u32) {
        let mut buf = vec![0u8; 16384];
        let found = if n_uname != NONUNAME {
            getpwuid(n_uname, &mut buf)
        } else {
            CString::new(uname)
                .ok()
                .and_then(|name| getpwnam(&name, &mut buf))
        };
        match (found, n_uname != NONUNAME) {
            (Some(pw), _) => (pw.pw_uid, pw.pw_gid),
            (None, true) => (n_uname, n_uname),
            (None, false) => (NOBODY, NOBODY),
        }
    }
}

/// `getpwuid_r` with `buf` holding the strings the entry points into.
fn getpwuid(uid: u32, buf: &mut [u8]) -> Option<libc::passwd> {
    // SAFETY: passwd is plain data; zero is a valid initial value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes passed.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pw)
}

/// `getpwnam_r`, as [`getpwuid`].
fn getpwnam(name: &CStr, buf: &mut [u8]) -> Option<libc::passwd> {
    // SAFETY: passwd is plain data; zero is a valid initial value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes passed.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_answers_as_the_live_database() {
        let db = UserDb::snapshot();
        assert_eq!(
            db.ids(b"root", NONUNAME),
            UserDb::live_ids(b"root", NONUNAME)
        );
        assert_eq!(db.ids(b"", 0), UserDb::live_ids(b"", 0));
        assert_eq!(db.ids(b"no-such-user-here", NONUNAME), (NOBODY, NOBODY));
        assert_eq!(db.ids(b"", 424242), (424242, 424242));
        // Every group the snapshot lists for root, getgrouplist lists too.
        let live = UserDb::live_groups(0);
        assert!(db.groups(0).iter().all(|g| live.contains(g)));
        assert!(UserDb::live_groups(424242).is_empty());
    }
}
