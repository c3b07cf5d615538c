//! Process sandboxing, as upstream virtiofsd's `--sandbox`.
//!
//! The filesystem core is confined by itself (one-component names,
//! `RESOLVE_BENEATH`, no host-side symlink following); the sandbox is a second
//! wall. It must be entered before any thread is started: a mount namespace
//! unshared by one thread of a multi-threaded process leaves the others in
//! the old namespace.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// How the daemon isolates itself from the rest of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// New mount and network namespaces, then `pivot_root` into the shared
    /// directory.
    #[default]
    Namespace,
    /// `chroot` into the shared directory.
    Chroot,
    /// No sandbox: rely on the core's own confinement only.
    None,
}

/// Why the sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step of the setup failed.
    #[error("sandbox ({mode:?}): {step} failed for {dir}: {source} (try --sandbox=chroot or --sandbox=none)")]
    Step {
        /// The mode being set up.
        mode: SandboxMode,
        /// What was being done.
        step: &'static str,
        /// The shared directory.
        dir: PathBuf,
        /// What the host said.
        source: io::Error,
    },
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Enters `mode` with `dir` as the new root. Call before starting threads.
pub fn enter(mode: SandboxMode, dir: &Path) -> Result<(), SandboxError> {
    let fail = |step: &'static str| {
        move |source: io::Error| SandboxError::Step {
            mode,
            step,
            dir: dir.to_path_buf(),
            source,
        }
    };
    let c = cpath(dir).map_err(fail("path"))?;
    match mode {
        SandboxMode::None => Ok(()),
        SandboxMode::Chroot => {
            // SAFETY: NUL-terminated paths; plain syscalls.
            check(unsafe { libc::chdir(c.as_ptr()) }).map_err(fail("chdir"))?;
            // SAFETY: as above.
            check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(fail("chroot"))?;
            // SAFETY: as above.
            check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(fail("chdir /"))
        }
        SandboxMode::Namespace => {
            // SAFETY: plain syscall; the process is still single-threaded.
            check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) })
                .map_err(fail("unshare"))?;
            // Keep our mounts from propagating back to the host.
            // SAFETY: NUL-terminated paths; null type/data are allowed here.
            check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                )
            })
            .map_err(fail("make / a slave mount"))?;
            // pivot_root needs the new root to be a mount point.
            // SAFETY: as above.
            check(unsafe {
                libc::mount(
                    c.as_ptr(),
                    c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            })
            .map_err(fail("bind-mount the shared directory"))?;
            // SAFETY: as above.
            check(unsafe { libc::chdir(c.as_ptr()) }).map_err(fail("chdir"))?;
            // pivot_root(".", ".") stacks the old root on top of the new
            // one; detaching it leaves only the shared directory visible.
            // SAFETY: raw syscall with two NUL-terminated paths.
            check(unsafe {
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
            })
            .map_err(fail("pivot_root"))?;
            // SAFETY: NUL-terminated path.
            check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
                .map_err(fail("detach the old root"))?;
            // SAFETY: NUL-terminated path.
            check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(fail("chdir /"))
        }
    }
}
