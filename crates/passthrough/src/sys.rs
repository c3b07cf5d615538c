//! Thin, safe wrappers over the host syscalls the core needs.
//!
//! Every function here takes already-validated arguments (a single path
//! component, or an fd) and returns `io::Result`; nothing here interprets
//! guest input.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An empty C string, for the `AT_EMPTY_PATH` family of calls.
pub const EMPTY: &CStr = c"";

/// Turns a `-1`-on-error return value into an `io::Result`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] for calls returning `ssize_t`/`c_long`.
pub fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Builds an `io::Error` from an errno value.
pub fn errno(e: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// `openat(2)`, returning an owned fd. `O_CLOEXEC` is always added.
pub fn openat(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the kernel validates `dir`.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` for `openat2(2)` (not yet in the libc crate for all targets).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `RESOLVE_NO_XDEV`..`RESOLVE_BENEATH` from `linux/openat2.h`.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// Refuse every symlink during resolution.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// Refuse any resolution that leaves the starting directory.
pub const RESOLVE_BENEATH: u64 = 0x08;

/// `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS`.
///
/// Returns `Err(ENOSYS)` on kernels older than 5.6, so callers can fall back.
pub fn openat2_beneath(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `how` is a properly initialised `struct open_how` whose size we pass;
    // `name` is NUL-terminated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = cvt_long(ret)? as RawFd;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: the attributes of the
/// object `fd` refers to, which may be an `O_PATH` fd.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    stat_at(fd, EMPTY, libc::AT_EMPTY_PATH)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW | flags)`: the object `name`
/// (one validated component) names in `dir`, a symlink itself.
pub fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: `st` is a valid out-pointer of the right type; `name` is NUL-terminated.
    cvt(unsafe {
        libc::fstatat64(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `renameat2(2)`.
pub fn renameat2(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the kernel validates the fds and flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir,
            oldname.as_ptr(),
            newdir,
            newname.as_ptr(),
            flags,
        )
    };
    cvt_long(ret).map(drop)
}

/// A `File` view of an fd that does not close it when dropped.
///
/// Lets fuse-backend-rs's `FileReadWriteVolatile` impl for `File` (which uses
/// `preadv`/`pwritev` straight into guest memory) run on an fd that the handle
/// table owns.
pub struct BorrowedFile(std::mem::ManuallyDrop<File>);

impl BorrowedFile {
    /// Wraps `fd` without taking ownership.
    ///
    /// The caller must keep the owner of `fd` alive for as long as the
    /// returned value is used.
    pub fn new(fd: &impl AsRawFd) -> Self {
        // SAFETY: the `File` is wrapped in `ManuallyDrop`, so it never closes the
        // fd; the caller keeps the owning object alive while this view is used.
        BorrowedFile(std::mem::ManuallyDrop::new(unsafe {
            File::from_raw_fd(fd.as_raw_fd())
        }))
    }

    /// The borrowed fd as a `File`.
    pub fn file(&mut self) -> &mut File {
        &mut self.0
    }
}

/// `getdents64(2)` into `buf`; returns the number of bytes filled.
pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable buffer of the length we pass.
    let ret = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    cvt_long(ret).map(|n| n as usize)
}

/// `lseek64(2)`.
pub fn lseek(fd: RawFd, offset: i64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: plain syscall on an fd; no memory is passed.
    let ret = unsafe { libc::lseek64(fd, offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as u64)
    }
}

/// Sets the calling thread's umask to 0 and returns the previous one.
///
/// FUSE and 9P send the requester's already-masked mode (or the umask
/// separately), so the daemon must not mask a second time.
pub fn clear_umask() -> libc::mode_t {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0) }
}

/// A duplicate of `fd` at the lowest free number (close-on-exec).
pub fn dup_lowest(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd; the kernel returns a new fd.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Gives the allocator's free memory back to the system (glibc's
/// `malloc_trim`), after the guest forgot many inodes: glibc keeps freed
/// memory for reuse otherwise. A no-op with other C libraries.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The `*xattrat` system calls (Linux 6.13), whose numbers are the same on
/// every architecture (the unified syscall table) and not yet in the libc
/// crate for x86_64.
pub mod xattrat {
    /// `setxattrat(2)`.
    pub const SYS_SETXATTRAT: libc::c_long = 463;
    /// `getxattrat(2)`.
    pub const SYS_GETXATTRAT: libc::c_long = 464;
    /// `listxattrat(2)`.
    pub const SYS_LISTXATTRAT: libc::c_long = 465;
    /// `removexattrat(2)`.
    pub const SYS_REMOVEXATTRAT: libc::c_long = 466;
}

/// `struct xattr_args` from `linux/xattr.h`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// `getxattrat(dir, path, 0, name, ...)`: the value of `name` into `buf`
/// (empty: only its size). `path` is resolved from `dir`, following a final
/// magic link (`/proc/self/fd/N`) to its inode, which is never followed
/// further even when it is a symlink.
pub fn getxattrat(dir: RawFd, path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: NUL-terminated strings; `args` points at `buf`, writable for
    // `size` bytes, and its own size is passed.
    let n = cvt_long(unsafe {
        libc::syscall(
            xattrat::SYS_GETXATTRAT,
            dir,
            path.as_ptr(),
            0,
            name.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })?;
    Ok(n as usize)
}

/// `setxattrat(dir, path, 0, name, ...)` (see [`getxattrat`] for `path`).
pub fn setxattrat(
    dir: RawFd,
    path: &CStr,
    name: &CStr,
    value: &[u8],
    flags: libc::c_int,
) -> io::Result<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    // SAFETY: NUL-terminated strings; `args` points at `value`, readable for
    // `size` bytes, and its own size is passed.
    cvt_long(unsafe {
        libc::syscall(
            xattrat::SYS_SETXATTRAT,
            dir,
            path.as_ptr(),
            0,
            name.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
    .map(drop)
}

/// `listxattrat(dir, path, 0, ...)`: the names into `buf` (empty: only
/// their size).
pub fn listxattrat(dir: RawFd, path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: NUL-terminated path; `buf` is writable for its length.
    let n = cvt_long(unsafe {
        libc::syscall(
            xattrat::SYS_LISTXATTRAT,
            dir,
            path.as_ptr(),
            0,
            buf.as_mut_ptr(),
            buf.len(),
        )
    })?;
    Ok(n as usize)
}

/// `removexattrat(dir, path, 0, name)`.
pub fn removexattrat(dir: RawFd, path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings.
    cvt_long(unsafe {
        libc::syscall(
            xattrat::SYS_REMOVEXATTRAT,
            dir,
            path.as_ptr(),
            0,
            name.as_ptr(),
        )
    })
    .map(drop)
}
