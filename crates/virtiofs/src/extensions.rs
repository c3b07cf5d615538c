//! FUSE request extensions (protocol 7.36+): the last `total_extlen * 8`
//! bytes of a create request (MKNOD, MKDIR, SYMLINK, CREATE), after its
//! names, as the guest kernel appends them once FUSE_SECURITY_CTX or
//! FUSE_CREATE_SUPP_GROUP is negotiated.
//!
//! Each extension starts with `struct fuse_ext_header { u32 size; u32 type; }`,
//! `size` counting the header and a multiple of 8. Types 0..=31 are a
//! security context header, whose `type` is its `nr_secctx`:
//! `struct fuse_secctx { u32 size; u32 padding; }`, the xattr name with its
//! NUL, then `size` bytes of context, the whole padded to 8. Type 32 is
//! `struct fuse_supp_groups { u32 nr_groups; u32 groups[]; }`.
//!
//! Everything is checked here, at the edge: an extension of a feature not
//! negotiated, of an unknown type, given twice, or whose sizes do not add
//! up exactly, makes the request `EINVAL`; nothing is ignored.

use std::ffi::CString;

use passthrough::request_ext::init_flags;
use passthrough::{CreateExt, SecurityContext};

/// `FUSE_MAX_NR_SECCTX`: the highest type that is a security context
/// header.
const MAX_NR_SECCTX: u32 = 31;
/// `FUSE_EXT_GROUPS`.
const EXT_GROUPS: u32 = 32;
/// The most supplementary groups one request may carry (Linux sends one:
/// the parent directory's group).
pub const MAX_GROUPS: usize = 64;
/// The longest xattr name (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;
/// The longest xattr value (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;
/// The longest extension area a request may carry: one security context
/// of the largest name and value, and [`MAX_GROUPS`] groups.
pub const MAX_EXT_LEN: usize = 8 + 8 + XATTR_NAME_MAX + 1 + XATTR_SIZE_MAX + 8 + 8 + 4 * MAX_GROUPS;

/// Why a request's extensions are refused (`EINVAL` to the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    /// An extension header or body runs past the area, or its size is not
    /// a multiple of 8 or smaller than its header.
    #[error("an extension's size does not fit the area")]
    BadSize,
    /// An extension of a feature this session did not negotiate.
    #[error("extension type {0} was not negotiated")]
    NotNegotiated(u32),
    /// An extension type this server does not know.
    #[error("unknown extension type {0}")]
    Unknown(u32),
    /// The same extension twice.
    #[error("extension type {0} given twice")]
    Twice(u32),
    /// A security context that is not one name of
    /// [`LABEL_NAMES`](passthrough::request_ext::LABEL_NAMES) and a value
    /// of at most `XATTR_SIZE_MAX` bytes filling its extension exactly.
    #[error("malformed security context")]
    BadSecurityContext,
    /// No group, or more than [`MAX_GROUPS`], or a count that does not
    /// fill its extension exactly.
    #[error("malformed supplementary groups")]
    BadGroups,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Rounds `n` up to a multiple of 8 (`FUSE_REC_ALIGN`).
fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Parses a create request's extension `area` (its last `total_extlen * 8`
/// bytes), given the INIT flags above bit 31 negotiated for the session.
pub fn parse(area: &[u8], negotiated: u64) -> Result<CreateExt, ExtError> {
    let mut ext = CreateExt::default();
    let mut seen_secctx = false;
    let mut rest = area;
    while !rest.is_empty() {
        let (Some(size), Some(ty)) = (u32_at(rest, 0), u32_at(rest, 4)) else {
            return Err(ExtError::BadSize);
        };
        let size = size as usize;
        if size < 8 || size % 8 != 0 || size > rest.len() {
            return Err(ExtError::BadSize);
        }
        let (this, next) = rest.split_at(size);
        match ty {
            0..=MAX_NR_SECCTX => {
                if negotiated & init_flags::SECURITY_CTX == 0 {
                    return Err(ExtError::NotNegotiated(ty));
                }
                if std::mem::replace(&mut seen_secctx, true) {
                    return Err(ExtError::Twice(ty));
                }
                ext.security = security_context(this, ty)?;
            }
            EXT_GROUPS => {
                if negotiated & init_flags::CREATE_SUPP_GROUP == 0 {
                    return Err(ExtError::NotNegotiated(ty));
                }
                if !ext.groups.is_empty() {
                    return Err(ExtError::Twice(ty));
                }
                ext.groups = groups(this)?;
            }
            _ => return Err(ExtError::Unknown(ty)),
        }
        rest = next;
    }
    Ok(ext)
}

/// A security context header `this` (its whole extension) holding `nr`
/// contexts: none (no LSM in the guest labels new nodes), or one.
fn security_context(this: &[u8], nr: u32) -> Result<Option<SecurityContext>, ExtError> {
    let bad = ExtError::BadSecurityContext;
    match nr {
        0 if this.len() == 8 => return Ok(None),
        1 => {}
        _ => return Err(bad),
    }
    let body = &this[8..];
    let ctx_len = u32_at(body, 0).ok_or(bad)? as usize;
    let after = body.get(8..).ok_or(bad)?;
    let name_len = after.iter().position(|&b| b == 0).ok_or(bad)?;
    let name = &after[..name_len];
    if name.len() > XATTR_NAME_MAX
        || !passthrough::request_ext::LABEL_NAMES.contains(&name)
        || ctx_len > XATTR_SIZE_MAX
        || this.len() != 8 + align8(8 + name_len + 1 + ctx_len)
    {
        return Err(bad);
    }
    let value = after.get(name_len + 1..name_len + 1 + ctx_len).ok_or(bad)?;
    Ok(Some(SecurityContext {
        name: CString::new(name).map_err(|_| bad)?,
        value: value.to_vec(),
    }))
}

/// A supplementary-groups extension `this` (its whole extension).
fn groups(this: &[u8]) -> Result<Vec<libc::gid_t>, ExtError> {
    let bad = ExtError::BadGroups;
    let n = u32_at(this, 8).ok_or(bad)? as usize;
    if n == 0 || n > MAX_GROUPS || this.len() != align8(8 + 4 + 4 * n) {
        return Err(bad);
    }
    (0..n)
        .map(|i| u32_at(this, 12 + 4 * i).ok_or(bad))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use virtio_driver::fuse::{groups_ext, secctx_ext as secctx, u32s};

    const BOTH: u64 = init_flags::SECURITY_CTX | init_flags::CREATE_SUPP_GROUP;

    #[test]
    fn what_linux_sends_parses() {
        let label = b"system_u:object_r:user_home_t:s0\0";
        let area = [secctx(b"security.selinux", label), groups_ext(&[100])].concat();
        let ext = parse(&area, BOTH).unwrap();
        let sec = ext.security.unwrap();
        assert_eq!(sec.name.as_bytes(), b"security.selinux");
        assert_eq!(sec.value, label);
        assert_eq!(ext.groups, [100]);
        // No LSM in the guest: an empty header.
        assert_eq!(parse(&u32s(&[8, 0]), BOTH).unwrap(), CreateExt::default());
        assert_eq!(parse(&[], 0).unwrap(), CreateExt::default());
    }

    #[test]
    fn anything_else_is_refused() {
        let good = secctx(b"security.selinux", b"x\0");
        assert_eq!(
            parse(&good, init_flags::CREATE_SUPP_GROUP),
            Err(ExtError::NotNegotiated(1))
        );
        assert_eq!(
            parse(&groups_ext(&[5]), init_flags::SECURITY_CTX),
            Err(ExtError::NotNegotiated(EXT_GROUPS))
        );
        assert_eq!(
            parse(&[good.clone(), good.clone()].concat(), BOTH),
            Err(ExtError::Twice(1))
        );
        assert_eq!(parse(&u32s(&[8, 33]), BOTH), Err(ExtError::Unknown(33)));
        for bad_size in [
            u32s(&[0, 0]),
            u32s(&[12, 0, 0]),
            u32s(&[16, 0]),
            vec![8, 0, 0],
        ] {
            assert_eq!(
                parse(&bad_size, BOTH),
                Err(ExtError::BadSize),
                "{bad_size:?}"
            );
        }
        let sec = ExtError::BadSecurityContext;
        assert_eq!(parse(&secctx(b"user.selinux", b"x"), BOTH), Err(sec));
        assert_eq!(parse(&secctx(b"security.", b"x"), BOTH), Err(sec));
        for not_a_label in [
            &b"security.capability"[..],
            b"security.ima",
            b"security.evm",
            b"security.SMACK64",
        ] {
            assert_eq!(parse(&secctx(not_a_label, b"x"), BOTH), Err(sec));
        }
        assert_eq!(parse(&secctx(&[b's'; 300], b"x"), BOTH), Err(sec));
        // Two contexts, or a context size past its extension.
        let mut two = good.clone();
        two[4] = 2;
        assert_eq!(parse(&two, BOTH), Err(sec));
        let mut long = good.clone();
        long[8] = 200;
        assert_eq!(parse(&long, BOTH), Err(sec));
        // A name without its NUL.
        let mut unterminated = u32s(&[24, 1, 0, 0]);
        unterminated.extend_from_slice(b"security");
        assert_eq!(parse(&unterminated, BOTH), Err(sec));
        assert_eq!(parse(&groups_ext(&[]), BOTH), Err(ExtError::BadGroups));
        let many: Vec<u32> = (0..65).collect();
        assert_eq!(parse(&groups_ext(&many), BOTH), Err(ExtError::BadGroups));
        let mut short = groups_ext(&[1, 2, 3]);
        short[8] = 9;
        assert_eq!(parse(&short, BOTH), Err(ExtError::BadGroups));
    }
}
