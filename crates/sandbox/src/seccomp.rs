//! The seccomp allowlists, one per daemon, compiled with `seccompiler`.
//!
//! Each list names the system calls the daemon makes once it serves
//! guests, for every engine and transport it offers: the filesystem core,
//! the sync and io_uring engines, vhost-user, `/dev/fuse`, and 9P over
//! TCP, unix sockets and inherited fds. A call outside the list is answered
//! as `--seccomp` says, as upstream virtiofsd does: `kill` (the default)
//! ends the process, `log` lets it through and the kernel logs it, `trap`
//! sends SIGSYS, which the daemon reports on stderr with the call's number
//! (and, on x86_64, the call fails with ENOSYS), `none` installs no filter.
//!
//! Beyond a plain list: `clone` is allowed only for threads (no `fork`,
//! so no new process escapes the filter's reasoning), `clone3` answers
//! ENOSYS (its flags live in memory a filter cannot read, and glibc then
//! falls back to `clone`), no mapping may be executable, `ioctl` is limited
//! to the few requests the runtime makes, `fcntl` to flags, duplication
//! and locks, `prlimit64` to the daemon's own limits, `prctl` to thread
//! names, and signals only go to the daemon itself. There is no
//! `io_uring_setup` or `io_uring_register`: the engine's rings are made,
//! restricted and enabled before the filter goes up, so code running in the
//! daemon cannot make a ring whose operations seccomp would not see.

use std::collections::BTreeMap;
use std::io::Write;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// What happens on a system call outside the allowlist (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// No filter.
    None,
    /// The kernel kills the process.
    #[default]
    Kill,
    /// The call goes through and the kernel logs it.
    Log,
    /// SIGSYS: the daemon reports the call on stderr; the call fails.
    Trap,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    /// `none`, `kill`, `log` or `trap`, as upstream's `--seccomp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(SeccompMode::None),
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "trap" => Ok(SeccompMode::Trap),
            _ => Err(format!("{s:?} is not one of none, kill, log, trap")),
        }
    }
}

/// Which daemon's list to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `virtiofsd-rs`: vhost-user and `/dev/fuse`.
    VirtioFs,
    /// `p9d`: byte streams (TCP, unix, fds) and vhost-user.
    P9,
}

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the filter.
    #[error("seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// Calls every daemon makes: memory, threads, time, signals to itself,
/// files of the share, the sync and io_uring engines, logging.
const COMMON: &[libc::c_long] = &[
    // Memory (mmap and mprotect carry a rule: never executable).
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    // Threads and synchronisation.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_membarrier,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // Signals.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    // Identity: the per-request credential switch (thread-local raw calls).
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    // The requester's supplementary groups (9P's from the user database,
    // FUSE's from a create's extension), on the serving thread only.
    libc::SYS_setgroups,
    libc::SYS_capget,
    libc::SYS_getrlimit,
    // File descriptors.
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_lseek,
    // Data: the sync engine and inline RWF_NOWAIT calls.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    // The io_uring engine: its rings are made (and restricted to data
    // opcodes) before the filter goes up; no new ring after.
    libc::SYS_io_uring_enter,
    // The filesystem core: everything relative to fds it holds.
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    // The *xattrat calls (Linux 6.13; the unified table's numbers, not yet
    // in the libc crate): xattrs of symlinks and special files, reached
    // through their O_PATH fds in /proc/self/fd.
    463, // setxattrat
    464, // getxattrat
    465, // listxattrat
    466, // removexattrat
    libc::SYS_flock,
    libc::SYS_syncfs,
    // Waiting for work.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_pipe2,
    // Connections already listened on (vhost-user, 9P).
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
];

/// x86_64's older calls that glibc and std still make there: `poll`,
/// `epoll_wait`, `renameat`, and `readlink` (std's panic backtraces read
/// `/proc/self/exe`).
#[cfg(target_arch = "x86_64")]
const LEGACY: &[libc::c_long] = &[
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_renameat,
    libc::SYS_readlink,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[libc::c_long] = &[];

/// 9P only: socket options of accepted connections.
const P9_EXTRA: &[libc::c_long] = &[libc::SYS_setsockopt];

/// `fcntl` commands the daemons use: descriptor and status flags,
/// duplication, and (OFD and classic) record locks.
const FCNTLS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD as u64,
    libc::F_DUPFD_CLOEXEC as u64,
    libc::F_GETLK as u64,
    libc::F_SETLK as u64,
    libc::F_SETLKW as u64,
    libc::F_OFD_GETLK as u64,
    libc::F_OFD_SETLK as u64,
    libc::F_OFD_SETLKW as u64,
];

/// `ioctl` requests the runtime makes: non-blocking and close-on-exec
/// toggles, and the terminal probe of the logger.
const IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::TCGETS];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// virtio-fs only: raising the DAC override capabilities (still in the
/// permitted set) for a request the guest kernel checked with supplementary
/// groups (passthrough's `client_checks_permissions`; 9P never does).
const VIRTIOFS_EXTRA: &[libc::c_long] = &[libc::SYS_capset];

fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|&v| Ok(SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)?])?))
        .collect()
}

fn no_exec(arg: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![SeccompRule::new(vec![cond(
        arg,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?])
}

/// The allowlist of `profile` as seccompiler rules, for the process whose
/// pid (in its own PID namespace) is `pid`.
pub fn rules(profile: Profile, pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra = match profile {
        Profile::VirtioFs => VIRTIOFS_EXTRA,
        Profile::P9 => P9_EXTRA,
    };
    for &nr in COMMON.iter().chain(LEGACY).chain(extra) {
        map.insert(nr, vec![]);
    }
    // Reading limits, and setting its own (pid 0) only: another process's
    // limits are not the daemon's business.
    map.insert(libc::SYS_prlimit64, one_of(0, &[0])?);
    // Not F_SETOWN/F_SETSIG, which would let SIGIO signal any process.
    map.insert(libc::SYS_fcntl, one_of(1, FCNTLS)?);
    map.insert(libc::SYS_mmap, no_exec(2)?);
    map.insert(libc::SYS_mprotect, no_exec(2)?);
    map.insert(libc::SYS_ioctl, one_of(1, IOCTLS)?);
    map.insert(
        libc::SYS_prctl,
        one_of(0, &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64])?,
    );
    // Threads only: CLONE_THREAD must be set, so no new process.
    let thread = libc::CLONE_THREAD as u64;
    map.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // clone3 passes to the second filter, which answers ENOSYS.
    map.insert(libc::SYS_clone3, vec![]);
    // Signals to the daemon itself only (abort, thread wake-ups).
    map.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::Eq,
            u64::from(pid),
        )?])?],
    );
    Ok(map)
}

fn arch() -> seccompiler::TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        seccompiler::TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        seccompiler::TargetArch::aarch64
    }
    #[cfg(target_arch = "riscv64")]
    {
        seccompiler::TargetArch::riscv64
    }
}

/// The compiled filters for `profile`: the allowlist, and the filter that
/// turns `clone3` into ENOSYS. Empty for [`SeccompMode::None`].
pub fn programs(
    profile: Profile,
    mode: SeccompMode,
    pid: u32,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::None => return Ok(Vec::new()),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Trap => SeccompAction::Trap,
    };
    let allow = SeccompFilter::new(rules(profile, pid)?, mismatch, SeccompAction::Allow, arch())?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )?;
    Ok(vec![allow.try_into()?, clone3.try_into()?])
}

extern "C" fn report_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // siginfo_t's _sigsys member: after three ints and padding (offset 16
    // on 64-bit targets) come `void *_call_addr` and `int _syscall`.
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS with SA_SIGINFO;
    // offset 24 is `_syscall` on every 64-bit Linux target.
    let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    let mut buf = [0u8; 96];
    let mut w = &mut buf[..];
    let _ = writeln!(w, "seccomp: blocked system call {nr} (--seccomp=trap)");
    let len = 96 - w.len();
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for `len`.
    unsafe { libc::write(2, buf.as_ptr().cast(), len) };
    // The call was not made; without this it would seem to return its own
    // number. Make it fail with ENOSYS.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: with SA_SIGINFO the third argument is the interrupted
    // context, which the kernel restores from on return.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::ENOSYS);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ctx;
}

/// Installs `programs` on every thread of the process (and so on every
/// thread it starts later). With [`SeccompMode::Trap`], SIGSYS is reported
/// on stderr first.
pub fn install(programs: &[BpfProgram], mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Trap {
        // SAFETY: a zeroed sigaction is valid; the handler only calls
        // async-signal-safe functions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = report_sigsys as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        }
    }
    // The clone3 filter goes first so that the allowlist is evaluated too;
    // the kernel runs every filter and takes the strictest answer.
    for p in programs.iter().rev() {
        seccompiler::apply_filter_all_threads(p)?;
    }
    Ok(())
}
