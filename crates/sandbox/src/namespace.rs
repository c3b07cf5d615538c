//! The namespace sandbox, as upstream virtiofsd's `--sandbox`, for both
//! daemons.
//!
//! In every mode the process forks first: the parent stays outside as a
//! supervisor that forwards termination signals, does what the walled-in
//! child cannot (unmount a FUSE mount, remove the socket) and exits with
//! the child's status.
//!
//! `namespace` (the default): new PID, mount and network namespaces; the
//! child is PID 1 of the new PID namespace. It mounts a fresh `/proc` of
//! that namespace with `subset=pid` (only its own process in it, no
//! `/proc/sys`; Linux 5.8), opens `/proc/self/fd` there, then bind-mounts
//! the share on itself (`nodev,nosuid`), `pivot_root`s into it and
//! detaches the old root. So the
//! share is the whole filesystem it can name, and
//! `/proc/self/fd/../../1/root` is the share again, not the host's root.
//!
//! `chroot`: `chroot` into the share (for containers without namespaces);
//! `none`: nothing. In both, `/proc/self/fd` is the host's and the share
//! keeps its host mount flags: Landlock keeps opens for reading and writing
//! inside the share, but not `O_PATH` opens or metadata changes (see
//! docs/security.md).
//!
//! Everything here must run before any thread is started.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// How the daemon isolates itself from the rest of the host (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// New PID, mount and network namespaces, a private `/proc`, then
    /// `pivot_root` into the shared directory.
    #[default]
    Namespace,
    /// `chroot` into the shared directory.
    Chroot,
    /// No namespace sandbox (capabilities, Landlock and seccomp still apply).
    None,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    /// `namespace`, `chroot` or `none`, as upstream's `--sandbox`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "namespace" => Ok(SandboxMode::Namespace),
            "chroot" => Ok(SandboxMode::Chroot),
            "none" => Ok(SandboxMode::None),
            _ => Err(format!("{s:?} is not one of namespace, chroot, none")),
        }
    }
}

/// Why the sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
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

/// The sandbox as entered: where the share now is, and the `/proc/self/fd`
/// the core reopens its `O_PATH` fds through.
#[derive(Debug)]
pub struct Entered {
    pub(crate) root: PathBuf,
    pub(crate) proc_self_fd: Option<OwnedFd>,
    pub(crate) pid_namespace: bool,
    pub(crate) userns: bool,
}

impl Entered {
    /// The path of the share as this process now sees it (`/` when it is
    /// the root).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `/proc/self/fd` of the process's own `/proc`, for the core to reopen
    /// its `O_PATH` fds through (once; `None` after).
    pub fn take_proc_self_fd(&mut self) -> Option<OwnedFd> {
        self.proc_self_fd.take()
    }

    /// Whether the process is alone in a new PID namespace.
    pub fn pid_namespace(&self) -> bool {
        self.pid_namespace
    }
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

fn open_proc_self_fd() -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated path; the fd returned is ours.
    let fd = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(fd)?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The supervised child's pid, for the parent's signal forwarding.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

const TERMINATION: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

fn set_handlers(handler: extern "C" fn(libc::c_int)) {
    for sig in TERMINATION {
        // SAFETY: a zeroed sigaction with a valid handler; the handlers
        // only call async-signal-safe functions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Forks. The parent never returns: it forwards termination signals to
/// the child, waits for it, runs `after_child` (e.g. unmounting a FUSE
/// mount, or removing a socket, that the walled-in child cannot reach) and
/// exits with the child's status. The child returns, and dies with its
/// parent. Termination signals are blocked across the fork so that none is
/// lost or kills the wrong process while the handlers are not yet set.
pub fn supervise(after_child: impl FnOnce()) -> io::Result<()> {
    let set = crate::signals::Termination::set();
    // SAFETY: a zeroed sigset_t is valid storage for the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets; the process is single-threaded.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, set.as_sigset(), &mut old) };
    let restore = |old: &libc::sigset_t| {
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
    };
    // A pipe whose write end only the parent holds: the child sees it hang
    // up if the parent died before PR_SET_PDEATHSIG was in force.
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        let e = io::Error::last_os_error();
        restore(&old);
        return Err(e);
    }
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child is a complete copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing the pipe we made.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        restore(&old);
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: plain prctl with integer arguments; closing our copy of
        // the write end, then polling the read end without waiting.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::close(fds[1]);
            let mut p = libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLHUP != 0 {
                libc::_exit(1);
            }
            libc::close(fds[0]);
        }
        // As PID 1 of a PID namespace, a signal without a handler would be
        // ignored: termination signals end the child unless it blocks them
        // to wait for them itself.
        set_handlers(exit_on_signal);
        restore(&old);
        return Ok(());
    }
    // SAFETY: the parent's copy of the read end is not needed.
    unsafe { libc::close(fds[0]) };
    CHILD.store(pid, Ordering::Relaxed);
    set_handlers(forward_signal);
    restore(&old);
    let status = wait_for(pid);
    // The pid may be reused from now on: forward nothing more.
    CHILD.store(0, Ordering::Relaxed);
    after_child();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        log::error!(
            "the sandboxed daemon was killed by signal {sig}{}",
            if sig == libc::SIGSYS {
                " (a system call outside the seccomp allowlist; --seccomp=trap names it)"
            } else {
                ""
            }
        );
        128 + sig
    } else {
        1
    };
    std::process::exit(code)
}

/// Waits for the child `pid` through interruptions; its wait status, or
/// that of an exit with status 1 when it cannot be waited for.
pub(crate) fn wait_for(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1 << 8;
        }
    }
}

/// Makes every mount beneath `dir` (the share's bind mount) `nodev` and
/// `nosuid`: a device node made in the share (the daemon keeps CAP_MKNOD
/// so guests can make them) can never be opened through it, and no setuid
/// bit in it counts.
fn harden_share_mount(dir: &CString) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: NUL-terminated path; `attr` is valid for its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            dir.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Before 5.12: the top mount at least.
    // SAFETY: NUL-terminated path; null type/data are allowed for a remount.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NODEV | libc::MS_NOSUID,
            std::ptr::null(),
        )
    })
}

/// Enters `mode` with `dir` (the share) as the new root; see the module
/// docs. The process forks first, and `after_child` runs in the parent
/// once the child has ended. Call before starting threads.
pub fn enter(
    mode: SandboxMode,
    dir: &Path,
    after_child: impl FnOnce(),
) -> Result<Entered, NamespaceError> {
    let fail = |step: &'static str| {
        move |source: io::Error| NamespaceError::Step {
            mode,
            step,
            dir: dir.to_path_buf(),
            source,
        }
    };
    let c = cpath(dir).map_err(fail("path"))?;
    if mode == SandboxMode::Namespace {
        // The PID namespace applies to children: the supervisor stays in
        // the host's namespaces (so it can unmount what the child cannot),
        // the child unshares the rest.
        // SAFETY: plain syscall; the process is still single-threaded.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) }).map_err(fail("unshare"))?;
    }
    // The same process structure in every mode: a supervisor outside.
    supervise(after_child).map_err(fail("fork a supervisor"))?;
    match mode {
        SandboxMode::None => Ok(Entered {
            root: dir.to_path_buf(),
            proc_self_fd: Some(open_proc_self_fd().map_err(fail("open /proc/self/fd"))?),
            pid_namespace: false,
            userns: false,
        }),
        SandboxMode::Chroot => {
            let proc_self_fd = open_proc_self_fd().map_err(fail("open /proc/self/fd"))?;
            // SAFETY: NUL-terminated paths; plain syscalls.
            check(unsafe { libc::chdir(c.as_ptr()) }).map_err(fail("chdir"))?;
            // SAFETY: as above.
            check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(fail("chroot"))?;
            // SAFETY: as above.
            check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(fail("chdir /"))?;
            Ok(Entered {
                root: PathBuf::from("/"),
                proc_self_fd: Some(proc_self_fd),
                pid_namespace: false,
                userns: false,
            })
        }
        SandboxMode::Namespace => {
            // SAFETY: as above (the child is single-threaded too).
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
            // A /proc of the new PID namespace: only this process is in it,
            // and with subset=pid (Linux 5.8) nothing else either: no
            // /proc/sys, no sysrq-trigger. Without it there is no private
            // /proc worth the name, so no namespace sandbox.
            // SAFETY: NUL-terminated strings.
            check(unsafe {
                libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"subset=pid".as_ptr().cast(),
                )
            })
            .map_err(fail("mount a private /proc (subset=pid needs Linux 5.8)"))?;
            let proc_self_fd = open_proc_self_fd().map_err(fail("open /proc/self/fd"))?;
            if c.as_bytes() == b"/" {
                // The share is the root itself (as virtme-ng and the nested
                // KVM runner share it). A bind mount of / on / would stack
                // above the process's root, where pivot_root cannot reach
                // it (EBUSY). The root is already the share: harden it in
                // place, and take the private /proc away again (the open
                // /proc/self/fd stays usable), so the share shows what is
                // mounted at /proc, as for any share with submounts.
                harden_share_mount(&c).map_err(fail("make the share nodev,nosuid"))?;
                // SAFETY: NUL-terminated path.
                check(unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) })
                    .map_err(fail("detach the private /proc"))?;
                // SAFETY: NUL-terminated path.
                check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(fail("chdir /"))?;
                return Ok(Entered {
                    root: PathBuf::from("/"),
                    proc_self_fd: Some(proc_self_fd),
                    pid_namespace: true,
                    userns: false,
                });
            }
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
            harden_share_mount(&c).map_err(fail("make the share nodev,nosuid"))?;
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
            check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(fail("chdir /"))?;
            Ok(Entered {
                root: PathBuf::from("/"),
                proc_self_fd: Some(proc_self_fd),
                pid_namespace: true,
                userns: false,
            })
        }
    }
}
