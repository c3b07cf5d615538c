//! Performing a request with the requester's identity.
//!
//! Linux credentials are per thread at the syscall level; glibc's `setresuid`
//! broadcasts to every thread, so the raw syscalls are used. Changing the
//! effective uid away from 0 drops the effective capabilities (the permitted
//! set stays because the real and saved uids remain 0), so the host kernel
//! checks permissions exactly as it would for the guest's user, and files are
//! created with the guest's uid/gid. Dropping the guard restores root.
//!
//! What only the daemon may do stays the daemon's: the core resolves the
//! inodes a request names (for inodes held by file handles,
//! `open_by_handle_at`, which needs CAP_DAC_READ_SEARCH) before it makes
//! the guard, and [`as_daemon`] steps out of a guard for the rest.

use std::cell::{Cell, RefCell};
use std::io;

use caps::{CapSet, Capability};

thread_local! {
    /// Set while [`with_dac_override`] retries a request on this thread.
    static DAC_OVERRIDE: Cell<bool> = const { Cell::new(false) };
    /// The supplementary groups of this thread's current requester
    /// ([`set_request_groups`]).
    static GROUPS: RefCell<Vec<libc::gid_t>> = const { RefCell::new(Vec::new()) };
    /// The effective uid and gid a live [`CredGuard`] switched this thread
    /// to (0 where it left the daemon's), so that [`as_daemon`] knows
    /// without a syscall whether there is anything to undo.
    static ACTING_AS: Cell<(libc::uid_t, libc::gid_t)> = const { Cell::new((0, 0)) };
}

/// Makes the [`CredGuard`]s this thread makes from now on (until the next
/// call) also take `groups` as the requester's supplementary groups, for a
/// protocol that knows them (9P, from the server's user database; a FUSE
/// request carries none). Empty: none.
pub fn set_request_groups(groups: &[libc::gid_t]) {
    GROUPS.with(|g| {
        let mut g = g.borrow_mut();
        g.clear();
        g.extend_from_slice(groups);
    });
}

/// `setgroups(2)` for the calling thread only (the raw syscall; glibc's
/// wrapper would change every thread).
fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: `groups` is valid for its length (a null pointer for none).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::c_long,
            if groups.is_empty() {
                std::ptr::null()
            } else {
                groups.as_ptr()
            },
        )
    };
    crate::sys::cvt_long(ret).map(drop)
}

/// Runs `f` so that the [`CredGuard`]s made in it, after switching to the
/// requester's ids, also raise CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in
/// the thread's effective set: the host then skips the permission checks
/// the client kernel has already made, while files are still created with
/// the requester's ids. For a request the client checked with groups the
/// request does not carry (see `Config::client_checks_permissions`).
pub fn with_dac_override<T>(f: impl FnOnce() -> T) -> T {
    /// Ends the override however `f` ends: a panic caught further up must
    /// not leave the thread's next requests with it.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            DAC_OVERRIDE.with(|o| o.set(false));
        }
    }
    DAC_OVERRIDE.with(|o| o.set(true));
    let _end = End;
    f()
}

fn raise_dac_override() -> io::Result<()> {
    for cap in [
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
    ] {
        // Only what the permitted set still has (a --modcaps may have cut
        // one): raising anything else fails.
        if caps::has_cap(None, CapSet::Permitted, cap).unwrap_or(false) {
            caps::raise(None, CapSet::Effective, cap)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
    Ok(())
}

/// While alive, the calling thread acts as `uid`/`gid`.
#[must_use = "credentials are restored when the guard is dropped"]
pub struct CredGuard {
    switched_uid: bool,
    switched_gid: bool,
    switched_groups: bool,
}

fn set_euid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: raw syscall with integer arguments; -1 leaves an id unchanged.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, i64::from(uid), -1i64) };
    crate::sys::cvt_long(ret).map(drop)
}

fn set_egid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: raw syscall with integer arguments; -1 leaves an id unchanged.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, -1i64, i64::from(gid), -1i64) };
    crate::sys::cvt_long(ret).map(drop)
}

impl CredGuard {
    /// Switches the calling thread to `uid`/`gid` when `enabled`; a no-op for
    /// root requests or when switching is disabled. The supplementary
    /// groups are those [`set_request_groups`] gave the thread.
    pub fn new(enabled: bool, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<CredGuard> {
        GROUPS.with(|g| Self::acting(enabled, uid, gid, &g.borrow()))
    }

    /// [`new`](Self::new), with `groups` as the supplementary groups (a
    /// FUSE create's, from its extension).
    pub fn with_groups(
        enabled: bool,
        uid: libc::uid_t,
        gid: libc::gid_t,
        groups: &[libc::gid_t],
    ) -> io::Result<CredGuard> {
        Self::acting(enabled, uid, gid, groups)
    }

    fn acting(
        enabled: bool,
        uid: libc::uid_t,
        gid: libc::gid_t,
        groups: &[libc::gid_t],
    ) -> io::Result<CredGuard> {
        let mut guard = CredGuard {
            switched_uid: false,
            switched_gid: false,
            switched_groups: false,
        };
        if !enabled {
            return Ok(guard);
        }
        // setresuid/setresgid read u32::MAX as "leave unchanged": acting
        // "as" it would be acting as the daemon.
        if uid == libc::uid_t::MAX || gid == libc::gid_t::MAX {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // The gid must change first: after the uid changes we lack CAP_SETGID.
        if gid != 0 {
            set_egid(gid)?;
            guard.switched_gid = true;
        }
        if uid != 0 {
            // Groups before the uid, while CAP_SETGID is still effective.
            if !groups.is_empty() {
                set_thread_groups(groups)?;
                guard.switched_groups = true;
            }
            set_euid(uid)?;
            guard.switched_uid = true;
            // Back to euid 0 on drop makes the effective set the permitted
            // set again, so nothing raised here outlives the guard.
            if DAC_OVERRIDE.with(Cell::get) {
                raise_dac_override()?;
            }
        }
        ACTING_AS.with(|a| {
            a.set((
                if guard.switched_uid { uid } else { 0 },
                if guard.switched_gid { gid } else { 0 },
            ))
        });
        Ok(guard)
    }
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        ACTING_AS.with(|a| a.set((0, 0)));
        // Restoring can only fail if the permitted set was lost, which would
        // leave the thread unable to serve anyone correctly: abort loudly.
        if self.switched_uid {
            if let Err(e) = set_euid(0) {
                log::error!("cannot restore euid 0: {e}");
                std::process::abort();
            }
        }
        if self.switched_gid {
            if let Err(e) = set_egid(0) {
                log::error!("cannot restore egid 0: {e}");
                std::process::abort();
            }
        }
        if self.switched_groups {
            if let Err(e) = set_thread_groups(&[]) {
                log::error!("cannot drop supplementary groups: {e}");
                std::process::abort();
            }
        }
    }
}

/// Runs `f` with the daemon's own effective ids, then switches the calling
/// thread back to the ids its [`CredGuard`] gave it. For what needs the
/// daemon's capabilities rather than the requester's: reopening an inode
/// the requester already holds by its file handle (`open_by_handle_at`
/// wants CAP_DAC_READ_SEARCH, which a switched thread does not have), or a
/// step whose permission was checked with the requester's ids first.
/// Whatever the request then does is checked with the requester's ids.
///
/// On a thread that acts as the daemon (no guard, or one for root) this is
/// a thread-local read and `f`: no syscall.
pub fn as_daemon<T>(f: impl FnOnce() -> T) -> T {
    let (uid, gid) = ACTING_AS.with(Cell::get);
    if (uid, gid) == (0, 0) {
        return f();
    }
    // The uid first: regaining euid 0 restores the effective capabilities,
    // CAP_SETGID among them. If it cannot be regained, `f` runs as the
    // requester and fails as the requester would.
    if uid != 0 && set_euid(0).is_err() {
        return f();
    }
    if gid != 0 {
        // 0 is the real and saved gid: regaining it needs no capability.
        let _ = set_egid(0);
    }
    ACTING_AS.with(|a| a.set((0, 0)));
    let out = f();
    let restored = (if gid != 0 { set_egid(gid) } else { Ok(()) })
        .and_then(|()| if uid != 0 { set_euid(uid) } else { Ok(()) })
        // Switching back cleared the effective set: a retry keeps its override.
        .and_then(|()| match uid != 0 && DAC_OVERRIDE.with(Cell::get) {
            true => raise_dac_override(),
            false => Ok(()),
        });
    if let Err(err) = restored {
        // Serving the rest of the request as root would be wrong.
        log::error!("cannot switch back to uid {uid} gid {gid}: {err}");
        std::process::abort();
    }
    ACTING_AS.with(|a| a.set((uid, gid)));
    out
}
