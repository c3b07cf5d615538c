//! `vfs-idmap-mount SRC DST INSIDE:OUTSIDE:COUNT`: an idmapped bind mount of
//! SRC at DST (Linux 5.12's `open_tree`, `mount_setattr` with
//! `MOUNT_ATTR_IDMAP`, `move_mount`), for the e2e guests: busybox has no
//! applet for it, and Debian 12's util-linux predates `X-mount.idmap`.
//!
//! The mount's idmapping is a user namespace whose uid and gid maps are
//! both the one line `INSIDE OUTSIDE COUNT`: a file owned by id `INSIDE + i`
//! on the filesystem shows as `OUTSIDE + i` through DST, and what a caller
//! with id `OUTSIDE + i` creates there is owned by `INSIDE + i`. Ids outside
//! the range have no mapping (they show as the overflow id, and a caller
//! outside it cannot create files there).
//!
//! A filesystem that does not allow idmapped mounts (virtio-fs before 6.12,
//! or a server that did not negotiate FUSE_ALLOW_IDMAP) fails
//! `mount_setattr` with EINVAL. Errors are one line on stderr, exit status 1.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

/// Why the mount could not be made.
#[derive(Debug)]
enum Error {
    /// The arguments are not `SRC DST INSIDE:OUTSIDE:COUNT`.
    Usage,
    /// A system call (or /proc write) failed.
    Sys(&'static str, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage => write!(f, "usage: vfs-idmap-mount SRC DST INSIDE:OUTSIDE:COUNT"),
            Error::Sys(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::Sys(what, e)
}

/// `ret` as a result: the last OS error where it is negative.
fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A user namespace whose uid and gid maps are `map` (`INSIDE OUTSIDE
/// COUNT`): a child unshares one, the maps are written from here, and the
/// namespace stays alive through the returned fd once the child is gone.
fn user_namespace(map: &str) -> Result<OwnedFd, Error> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into()).map_err(sys("pipe2"))?;
    // SAFETY: both are fresh descriptors this process owns.
    let (ready_r, ready_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: this program is single-threaded; the child only makes
    // async-signal-safe calls before it exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Sys("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: plain syscalls; the child never returns.
        unsafe {
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            libc::write(ready_w.as_raw_fd(), [u8::from(ok)].as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    drop(ready_w);
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is writable for one byte.
    let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    let result = (|| {
        if n != 1 || byte[0] != 1 {
            return Err(Error::Sys(
                "unshare(CLONE_NEWUSER)",
                io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{file}"), format!("{map}\n"))
                .map_err(sys("writing the namespace's id map"))?;
        }
        std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(sys("opening the namespace"))
    })();
    // SAFETY: `pid` is this process's child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}

fn idmap_mount(src: &str, dst: &str, map: &str) -> Result<(), Error> {
    let src = CString::new(src).map_err(|_| Error::Usage)?;
    let dst = CString::new(dst).map_err(|_| Error::Usage)?;
    let userns = user_namespace(map)?;
    // SAFETY: NUL-terminated path; the flags ask for a detached clone.
    let tree = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint,
        )
    })
    .map_err(sys("open_tree"))?;
    // SAFETY: a fresh descriptor this process owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid mount_attr of the size given; empty path
    // with AT_EMPTY_PATH names `tree` itself.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map_err(sys("mount_setattr(MOUNT_ATTR_IDMAP)"))?;
    // SAFETY: NUL-terminated paths; `tree` is a detached mount.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map_err(sys("move_mount"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [src, dst, map] => {
            let fields: Vec<&str> = map.split(':').collect();
            if fields.len() == 3 && fields.iter().all(|f| f.parse::<u32>().is_ok()) {
                idmap_mount(src, dst, &fields.join(" "))
            } else {
                Err(Error::Usage)
            }
        }
        _ => Err(Error::Usage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfs-idmap-mount: {e}");
            ExitCode::FAILURE
        }
    }
}
