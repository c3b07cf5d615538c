//! Listening unix sockets that nobody else can connect to.
//!
//! A socket's permissions are fixed when `bind` creates it, from the umask;
//! a `chmod` afterwards leaves a window in which any local user can connect
//! (and for vhost-user, win the daemon's single accept before the VMM
//! does). So the umask is set around `bind`: the socket is 0600 from the
//! moment it exists. Given to a group, it is created 0600 already owned by
//! that group (the thread's fsgid), and only then opened to the group
//! (0660), with calls that never follow a symlink put in its place.

use std::ffi::CString;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a private socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// `bind` (or removing a stale socket) failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// The group does not exist.
    #[error("socket group {0:?}: no such group")]
    NoSuchGroup(String),
    /// The socket could not be given to the group.
    #[error("socket group {group}: {source}")]
    Group {
        /// The group name or id.
        group: String,
        /// What the host said.
        source: io::Error,
    },
}

/// The umask is per process: two threads binding at once must not see each
/// other's mask.
static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// Resolves a group name (or a numeric id) to its gid.
pub fn group_id(name: &str) -> Option<libc::gid_t> {
    if let Ok(gid) = name.parse::<libc::gid_t>() {
        return Some(gid);
    }
    let cname = CString::new(name).ok()?;
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` is writable for its
    // length and outlives the use of `grp`.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            grp.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getgrnam_r succeeded and filled `grp`.
    Some(unsafe { grp.assume_init() }.gr_gid)
}

/// Creates a unix socket listening at `path`, mode 0600 from the moment it
/// exists, or 0660 owned by `group` (a name or a numeric gid). A stale
/// socket at `path` is removed first; any other kind of file there is an
/// error (`EADDRINUSE`), never removed.
///
/// The socket is made under a temporary name beside `path`, listening and
/// with its final owner and mode, then renamed into place (never over
/// anything): whoever sees `path` can connect at once (a VMM that connects
/// as soon as the file appears would otherwise race `listen`, and see the
/// group's mode change under it).
pub fn bind_private_unix(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let is_socket = |p: &Path| {
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(p).map(|m| m.file_type().is_socket())
    };
    match is_socket(path) {
        Ok(true) => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(false) => return Err(bind_err(io::Error::from_raw_os_error(libc::EADDRINUSE))),
        Err(_) => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| bind_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.binding", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    if is_socket(&tmp).unwrap_or(false) {
        std::fs::remove_file(&tmp).map_err(bind_err)?;
    }
    let listener = bind_in_place(&tmp, group).map_err(|e| match e {
        SocketError::Bind { source, .. } => bind_err(source),
        other => other,
    })?;
    let (from, to) = (
        cstring(&tmp).map_err(bind_err)?,
        cstring(path).map_err(bind_err)?,
    );
    // SAFETY: NUL-terminated paths; a plain syscall.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(&tmp);
        return Err(bind_err(if e.raw_os_error() == Some(libc::EEXIST) {
            io::Error::from_raw_os_error(libc::EADDRINUSE)
        } else {
            e
        }));
    }
    Ok(listener)
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Binds a listening socket at `path` itself, 0600 or 0660 for `group`.
fn bind_in_place(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let gid = match group {
        Some(g) => Some(group_id(g).ok_or_else(|| SocketError::NoSuchGroup(g.to_string()))?),
        None => None,
    };
    let listener = {
        let _lock = UMASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // The socket is created 0600 and, with a group, already owned by it
        // (the thread's fsgid decides a new file's group).
        // SAFETY: umask cannot fail.
        let old = unsafe { libc::umask(0o177) };
        // SAFETY: setfsgid affects the calling thread only; it returns the
        // previous fsgid, restored below.
        let old_fsgid = gid.map(|g| unsafe { libc::setfsgid(g) });
        let r = UnixListener::bind(path);
        if let Some(prev) = old_fsgid {
            // SAFETY: as above.
            unsafe { libc::setfsgid(prev as libc::gid_t) };
        }
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        r.map_err(bind_err)?
    };
    if let (Some(gid), Some(group)) = (gid, group) {
        let err = |source| SocketError::Group {
            group: group.to_string(),
            source,
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // A set-group-ID directory gives its own group instead: then the
        // ownership first. Neither call follows a symlink put in the
        // socket's place; the group bits come last, once the group is right.
        // SAFETY: NUL-terminated path; plain syscalls.
        let ok = unsafe {
            libc::fchownat(
                libc::AT_FDCWD,
                c.as_ptr(),
                u32::MAX,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            ) == 0
                && libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), 0o660, libc::AT_SYMLINK_NOFOLLOW) == 0
        };
        if !ok {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(err(e));
        }
    }
    Ok(listener)
}

/// Removes the socket file at `path`, if it is still reachable: with
/// `unlinkat`, which the seccomp allowlists permit (unlike `unlink`), so a
/// walled-in daemon may call it; after `pivot_root` the path is usually
/// not there any more, and the supervisor removes it instead.
pub fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return;
    }
    if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: NUL-terminated path; plain syscall.
        unsafe { libc::unlinkat(libc::AT_FDCWD, c.as_ptr(), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn socket_is_0600_even_with_a_permissive_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        // SAFETY: umask cannot fail.
        let old = unsafe { libc::umask(0) };
        let l = bind_private_unix(&p, None);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _l = l.unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn group_socket_is_0660_and_owned_by_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let _l = bind_private_unix(&p, Some("0")).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), 0);
        assert!(matches!(
            bind_private_unix(&dir.path().join("t"), Some("no-such-group-here")),
            Err(SocketError::NoSuchGroup(_))
        ));
    }

    #[test]
    fn a_regular_file_in_the_way_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"keep").unwrap();
        assert!(bind_private_unix(&p, None).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The socket appears listening, with its final mode: a client that
    /// connects the moment the path exists is accepted (it used to race
    /// `listen` and the group's chmod), and no temporary name is left.
    #[test]
    fn the_socket_appears_listening_with_its_final_mode() {
        use std::os::unix::net::UnixStream;
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("s");
            let watcher = {
                let p = p.clone();
                std::thread::spawn(move || loop {
                    if let Ok(m) = std::fs::symlink_metadata(&p) {
                        let mode = m.permissions().mode() & 0o777;
                        return (mode, UnixStream::connect(&p).map(|_| ()));
                    }
                    std::thread::yield_now();
                })
            };
            let _l = bind_private_unix(&p, Some("0")).unwrap();
            let (mode, connected) = watcher.join().unwrap();
            assert_eq!(mode, 0o660, "seen with its final mode");
            connected.expect("listening as soon as it exists");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }
}
