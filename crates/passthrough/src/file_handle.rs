//! Holding inodes by file handle (`name_to_handle_at`/`open_by_handle_at`)
//! instead of an open fd, so a large tree does not exhaust the fd limit.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, RwLock};

use crate::sys::{cvt, EMPTY};

/// `MAX_HANDLE_SZ` from `linux/exportfs.h`.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawFileHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// Handle bytes kept inside the node: every common host filesystem's
/// handles fit (ext4 8 bytes, tmpfs 12, xfs up to 16, btrfs 20), so a
/// node held by handle costs no allocation of its own.
const INLINE: usize = 22;

/// The opaque bytes of a handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HandleBytes {
    /// Up to [`INLINE`] bytes: the length, then the bytes.
    Inline(u8, [u8; INLINE]),
    /// Longer handles (up to `MAX_HANDLE_SZ`).
    Heap(Box<[u8]>),
}

impl HandleBytes {
    fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            HandleBytes::Inline(bytes.len() as u8, inline)
        } else {
            HandleBytes::Heap(bytes.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            HandleBytes::Inline(len, bytes) => &bytes[..usize::from(*len)],
            HandleBytes::Heap(bytes) => bytes,
        }
    }
}

/// A host file handle: names an inode without keeping it open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileHandle {
    mount_id: libc::c_int,
    handle_type: libc::c_int,
    bytes: HandleBytes,
}

impl FileHandle {
    /// The handle of the object `fd` (which may be an `O_PATH` fd) refers to.
    ///
    /// Fails with `EOPNOTSUPP` where the host filesystem cannot export handles.
    pub fn from_fd(fd: RawFd) -> io::Result<FileHandle> {
        Self::at(fd, EMPTY, libc::AT_EMPTY_PATH)
    }

    /// The handle of the object `name` (one validated component) names in
    /// `dir`, a symlink itself, without opening it.
    pub fn at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<FileHandle> {
        let mut raw = RawFileHandle {
            handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a `struct file_handle` whose `handle_bytes` says how much
        // room follows; `mount_id` is a valid out-pointer; `name` is NUL-terminated.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                dir,
                name.as_ptr(),
                &mut raw as *mut RawFileHandle,
                &mut mount_id as *mut libc::c_int,
                flags,
            ) as libc::c_int
        })?;
        let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
        Ok(FileHandle {
            mount_id,
            handle_type: raw.handle_type,
            bytes: HandleBytes::new(&raw.f_handle[..len]),
        })
    }

    /// A handle made up from `n`, for tests of the tables that hold them.
    #[cfg(test)]
    pub fn fake(n: u64) -> FileHandle {
        FileHandle {
            mount_id: 1,
            handle_type: 1,
            bytes: HandleBytes::new(&n.to_ne_bytes()),
        }
    }

    /// The id of the mount the handle belongs to.
    pub fn mount_id(&self) -> libc::c_int {
        self.mount_id
    }

    /// Opens the inode with `flags` relative to `mount_fd`, any fd on the same mount.
    ///
    /// `open_by_handle_at` needs `CAP_DAC_READ_SEARCH`, which the daemon
    /// has and a thread acting as a guest user does not: the open always
    /// runs with the daemon's ids ([`crate::credentials::as_daemon`]; free
    /// on a thread that acts as the daemon, where the core resolves every
    /// inode a request names). Reopening an inode the guest holds gives it
    /// no access: what the request then does with the fd is checked with
    /// its own ids.
    pub fn open(&self, mount_fd: RawFd, flags: libc::c_int) -> io::Result<OwnedFd> {
        let bytes = self.bytes.as_slice();
        let mut raw = RawFileHandle {
            handle_bytes: bytes.len() as libc::c_uint,
            handle_type: self.handle_type,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        raw.f_handle[..bytes.len()].copy_from_slice(bytes);
        let fd = crate::credentials::as_daemon(|| {
            // SAFETY: `raw` is a valid `struct file_handle` built from a
            // handle the kernel gave us; the kernel validates `mount_fd` and
            // the flags.
            cvt(unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    mount_fd,
                    &mut raw as *mut RawFileHandle,
                    flags | libc::O_CLOEXEC,
                ) as libc::c_int
            })
        })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `FUSE_SUPER_MAGIC` from `linux/magic.h`.
const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;

/// Whether handles of the file system of `fd` stay valid when the inode
/// leaves the host's inode cache. A FUSE file system (sshfs, rclone...)
/// may hand out handles and decode them only while the inode is cached,
/// unless it exports them properly, which cannot be told from here: its
/// inodes are held by fds.
pub fn handles_last(fd: RawFd) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a valid out-pointer of the right type.
    if unsafe { libc::fstatfs(fd, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded and filled it.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by architecture
    let magic = st.f_type as libc::c_long;
    magic != FUSE_SUPER_MAGIC
}

/// Whether inodes on the file system of the directory `dir` (a real fd,
/// not `O_PATH`) can be held by handle: the file system gives handles that
/// last, and this process may open them again (CAP_DAC_READ_SEARCH).
/// Returns the directory's handle.
pub fn probe(dir: RawFd) -> io::Result<FileHandle> {
    if !handles_last(dir) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a FUSE file system, whose handles may not outlive its inode cache",
        ));
    }
    let h = FileHandle::from_fd(dir)?;
    h.open(dir, libc::O_PATH)?;
    Ok(h)
}

/// One fd per host mount, to resolve file handles against.
#[derive(Default)]
pub struct MountFds {
    fds: RwLock<HashMap<libc::c_int, Arc<OwnedFd>>>,
    /// Mounts whose inodes are held by fds (see [`handles_last`]).
    fd_only: RwLock<std::collections::HashSet<libc::c_int>>,
}

impl MountFds {
    /// Whether inodes on `mount_id` are held by fds.
    pub fn fd_only(&self, mount_id: libc::c_int) -> bool {
        self.fd_only
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&mount_id)
    }

    /// Holds inodes on `mount_id` by fds from now on.
    pub fn hold_by_fd(&self, mount_id: libc::c_int) {
        self.fd_only
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mount_id);
    }

    /// Whether a resolver for `mount_id` is known.
    pub fn knows(&self, mount_id: libc::c_int) -> bool {
        self.fds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&mount_id)
    }

    /// Remembers `fd` as the resolver for `mount_id` if none is known yet.
    ///
    /// `fd` must be a real (not `O_PATH`) fd: `open_by_handle_at` ignores
    /// `O_PATH` fds as mount references.
    pub fn remember(&self, mount_id: libc::c_int, fd: OwnedFd) {
        self.fds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(mount_id)
            .or_insert_with(|| Arc::new(fd));
    }

    /// Opens `handle` with `flags`.
    pub fn open(&self, handle: &FileHandle, flags: libc::c_int) -> io::Result<OwnedFd> {
        let mount_fd = self
            .fds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle.mount_id)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        handle.open(mount_fd.as_raw_fd(), flags)
    }

    /// Forgets every mount but `keep` (on session reset).
    pub fn retain_only(&self, keep: Option<libc::c_int>) {
        self.fds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| Some(*id) == keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_handles_are_inline_and_long_ones_round_trip() {
        for len in [0, 8, 12, INLINE, INLINE + 1, MAX_HANDLE_SZ] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let h = HandleBytes::new(&bytes);
            assert_eq!(h.as_slice(), &bytes[..]);
            assert_eq!(matches!(h, HandleBytes::Inline(..)), len <= INLINE);
        }
        // Equal handles compare equal however they were made; a shorter
        // prefix is another handle.
        assert_eq!(HandleBytes::new(&[1, 2, 3]), HandleBytes::new(&[1, 2, 3]));
        assert_ne!(
            HandleBytes::new(&[1, 2, 3]),
            HandleBytes::new(&[1, 2, 3, 0])
        );
    }
}
