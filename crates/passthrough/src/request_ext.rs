//! What the extensions of a FUSE create request bring (protocol 7.36's
//! `fuse_in_header.total_extlen`): the new node's security context
//! (FUSE_SECURITY_CTX) and the requester's supplementary groups
//! (FUSE_CREATE_SUPP_GROUP).
//!
//! fuse-backend-rs's `FileSystem` methods take no such argument, so the
//! front end that parsed them runs the request inside [`with_create_ext`],
//! which leaves them with the thread serving it: the groups, translated as
//! the requester's gid is, go to the
//! [`CredGuard`](crate::credentials::CredGuard)s the request makes, the
//! context to the create paths, which set it on the node they made. Both
//! are gone when the request returns, whichever way it returns.
//!
//! [`init_flags`] are the INIT flags that carry these features: they live
//! in `flags2`, which fuse-backend-rs 0.14 truncates, so the front end
//! negotiates them with [`PassthroughFs::negotiate_flags2`](crate::PassthroughFs::negotiate_flags2).

use std::cell::RefCell;
use std::ffi::CString;

/// FUSE INIT flags above bit 31 (`fuse_init_in.flags2`,
/// `fuse_init_out.flags2`, shifted up by 32) and the bit that says
/// `flags2` is there.
pub mod init_flags {
    /// `FUSE_INIT_EXT`: `flags2` follows `flags` in INIT and its reply.
    pub const INIT_EXT: u64 = 1 << 30;
    /// `FUSE_SECURITY_CTX`: creates carry the new node's security context.
    pub const SECURITY_CTX: u64 = 1 << 32;
    /// `FUSE_DIRECT_IO_ALLOW_MMAP`: files open for direct I/O may be mapped
    /// shared.
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    /// `FUSE_CREATE_SUPP_GROUP`: creates carry the parent directory's
    /// group when the requester is in it only as a supplementary group.
    pub const CREATE_SUPP_GROUP: u64 = 1 << 34;
    /// `FUSE_ALLOW_IDMAP`: the guest may make idmapped mounts of the share.
    pub const ALLOW_IDMAP: u64 = 1 << 40;
}

/// `FUSE_INVALID_UIDGID`: the uid and gid of a request that has no
/// identity (under FUSE_ALLOW_IDMAP, every request that creates nothing).
pub const INVALID_ID: u32 = u32::MAX;

/// The names a security context may have: those of the LSMs that label
/// new nodes through FUSE (SELinux). The daemon sets a context with its own
/// privilege, so no other `security.*` name (file capabilities, IMA/EVM
/// data, Smack's, which need CAP_MAC_ADMIN) is taken.
pub const LABEL_NAMES: &[&[u8]] = &[b"security.selinux"];

/// Whether `name` is one of [`LABEL_NAMES`].
pub fn is_label_name(name: &std::ffi::CStr) -> bool {
    LABEL_NAMES.contains(&name.to_bytes())
}

/// A security context for a new node: the LSM's xattr name (always in the
/// `security.` namespace) and its value, as the guest kernel sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityContext {
    /// The xattr name, e.g. `security.selinux`.
    pub name: CString,
    /// The value, verbatim.
    pub value: Vec<u8>,
}

/// What a create request's extensions ask of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateExt {
    /// The new node's security context, set on it before the create is
    /// answered.
    pub security: Option<SecurityContext>,
    /// Supplementary groups (guest gids, as the request carried them) the
    /// requester acts with for the create, translated as its gid is.
    pub groups: Vec<libc::gid_t>,
}

thread_local! {
    /// The security context of the create this thread serves.
    static SECURITY: RefCell<Option<SecurityContext>> = const { RefCell::new(None) };
    /// Its supplementary groups (guest gids).
    static GROUPS: RefCell<Vec<libc::gid_t>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (serving one create request) with `ext` left for it on the
/// calling thread; cleared when `f` returns or unwinds.
pub fn with_create_ext<T>(ext: CreateExt, f: impl FnOnce() -> T) -> T {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            SECURITY.with(|s| s.borrow_mut().take());
            GROUPS.with(|g| g.borrow_mut().clear());
        }
    }
    let _clear = Clear;
    GROUPS.with(|g| *g.borrow_mut() = ext.groups);
    SECURITY.with(|s| *s.borrow_mut() = ext.security);
    f()
}

/// The supplementary groups (guest gids) of the create the calling thread
/// serves; empty for any other request.
pub(crate) fn groups() -> Vec<libc::gid_t> {
    GROUPS.with(|g| g.borrow().clone())
}

/// The security context of the create the calling thread serves, if its
/// request carried one.
pub(crate) fn security_context() -> Option<SecurityContext> {
    SECURITY.with(|s| s.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extensions_last_as_long_as_the_request() {
        let ext = CreateExt {
            security: Some(SecurityContext {
                name: c"security.selinux".to_owned(),
                value: b"system_u:object_r:tmp_t:s0\0".to_vec(),
            }),
            groups: vec![100],
        };
        let seen = with_create_ext(ext.clone(), || (security_context(), groups()));
        assert_eq!(seen, (ext.security.clone(), ext.groups.clone()));
        assert_eq!(security_context(), None, "cleared after the request");
        assert!(groups().is_empty());
        let unwound = std::panic::catch_unwind(|| with_create_ext(ext, || panic!("a bug")));
        assert!(unwound.is_err());
        assert_eq!(security_context(), None, "cleared after a panic too");
    }
}
