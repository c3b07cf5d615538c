//! Validation of the names a guest sends.
//!
//! Every name that reaches a host syscall passes through [`check_name`]
//! first: it must be exactly one path component. This, together with
//! `O_NOFOLLOW`/`RESOLVE_BENEATH` on every open, is what keeps a request
//! inside the directory it names (see `docs/security.md`).

use std::ffi::CStr;
use std::io;

/// The longest name a single component may have (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// What a name refers to once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A regular single component.
    Normal,
    /// `.`: the directory itself.
    Dot,
    /// `..`: the parent directory.
    DotDot,
}

/// Checks that `name` is a single, non-empty path component.
///
/// Refuses with `EINVAL` names that are empty or contain `/` (NUL cannot occur
/// inside a `CStr`, and a wire name with an embedded NUL is refused by the
/// decoder before it becomes one), and with `ENAMETOOLONG` names longer than
/// [`NAME_MAX`]. `.` and `..` are returned as their own kinds so that each
/// operation decides what they mean (lookup resolves them; create-like
/// operations refuse them).
pub fn classify(name: &CStr) -> io::Result<NameKind> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if bytes.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(match bytes {
        b"." => NameKind::Dot,
        b".." => NameKind::DotDot,
        _ => NameKind::Normal,
    })
}

/// Checks that `name` is a single normal component, refusing `.` and `..`.
///
/// Used by every operation that creates, removes or renames an entry: those
/// names never denote a new entry. `EEXIST` matches what the host returns for
/// `mkdir(".")`; removal of `.`/`..` gets `EINVAL`/`ENOTEMPTY` from the host
/// in the same way, so one errno (EINVAL) is used for removal-like callers by
/// [`check_name_for_removal`].
pub fn check_name(name: &CStr) -> io::Result<()> {
    match classify(name)? {
        NameKind::Normal => Ok(()),
        NameKind::Dot | NameKind::DotDot => Err(io::Error::from_raw_os_error(libc::EEXIST)),
    }
}

/// Like [`check_name`] for unlink, rmdir and rename sources: `.`/`..` give `EINVAL`.
pub fn check_name_for_removal(name: &CStr) -> io::Result<()> {
    match classify(name)? {
        NameKind::Normal => Ok(()),
        NameKind::Dot | NameKind::DotDot => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Decodes a name from raw wire bytes: refuses embedded NULs and non-components.
///
/// For front ends whose wire format carries a length-prefixed name (9P): the
/// bytes must not contain NUL and must pass [`classify`].
pub fn name_from_bytes(bytes: &[u8]) -> io::Result<std::ffi::CString> {
    let name =
        std::ffi::CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    classify(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(b: &[u8]) -> io::Result<NameKind> {
        classify(&std::ffi::CString::new(b).unwrap())
    }

    #[test]
    fn slash_and_empty_names_are_einval() {
        for bad in [&b""[..], b"/", b"a/b", b"../x", b"x/"] {
            let err = kind(bad).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn overlong_name_is_enametoolong() {
        let long = vec![b'a'; NAME_MAX + 1];
        assert_eq!(
            kind(&long).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        assert_eq!(kind(&long[..NAME_MAX]).unwrap(), NameKind::Normal);
    }

    #[test]
    fn dot_names_are_classified() {
        assert_eq!(kind(b".").unwrap(), NameKind::Dot);
        assert_eq!(kind(b"..").unwrap(), NameKind::DotDot);
        assert_eq!(kind(b"...").unwrap(), NameKind::Normal);
        assert!(check_name(c"..").is_err());
        assert!(check_name_for_removal(c".").is_err());
    }

    #[test]
    fn wire_names_with_nul_are_refused() {
        assert_eq!(
            name_from_bytes(b"a\0b").unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert!(name_from_bytes(b"ok").is_ok());
    }
}
