//! The walls both daemons (`virtiofsd-rs` and `p9d`) put up before they
//! serve a single guest request.
//!
//! The filesystem core confines itself (one-component names,
//! `RESOLVE_BENEATH`, no host-side symlinks); everything here is an
//! additional wall, so that a bug in the core, or code injected into the
//! daemon, still cannot reach the rest of the host:
//!
//! - [`socket`]: listening sockets are private (0600, or 0660 for a chosen
//!   group) from the moment they exist;
//! - [`namespace`]: new PID, mount and network namespaces, a private
//!   `/proc` of the new PID namespace, and `pivot_root` into the share
//!   (or `chroot`, or nothing);
//! - [`caps`]: the capability sets cut to what the core needs, supplementary
//!   groups dropped, `no_new_privs`;
//! - [`landlock`]: filesystem access limited to the share by the kernel's
//!   Landlock LSM, which holds even with `--sandbox none`;
//! - [`seccomp`]: a syscall allowlist per daemon.
//!
//! A daemon calls [`enter`] (namespaces; before the share is opened), opens
//! the share at [`Entered::root`] with [`Entered::take_proc_self_fd`], then calls
//! [`Entered::lock_down`] (capabilities, Landlock, seccomp) before it starts
//! any thread, and logs the [`Walls`] it returns.
//!
//! ```no_run
//! use sandbox::{Profile, SandboxConfig};
//! let cfg = SandboxConfig::new(Profile::VirtioFs);
//! let mut entered = sandbox::enter(&cfg, "/srv/share".as_ref(), || {})?;
//! let proc_self_fd = entered.take_proc_self_fd();
//! // ... open the share at entered.root() with proc_self_fd ...
//! # drop(proc_self_fd);
//! let walls = entered.lock_down(&cfg)?;
//! println!("walls up: {walls}");
//! # Ok::<(), sandbox::SandboxError>(())
//! ```

#![deny(missing_docs)]

pub mod caps;
pub mod landlock;
pub mod namespace;
pub mod seccomp;
pub mod signals;
pub mod socket;
pub mod status;
pub mod userns;

use std::path::{Path, PathBuf};

pub use crate::caps::CapsError;
pub use crate::landlock::{LandlockError, LandlockState};
pub use namespace::{NamespaceError, SandboxMode};
pub use seccomp::{Profile, SeccompError, SeccompMode};
pub use socket::{bind_private_unix, SocketError};
pub use userns::{IdMapError, IdRange, UserNamespace, UsernsError};

/// Which walls to put up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The namespace sandbox (`--sandbox`).
    pub mode: SandboxMode,
    /// The seccomp action (`--seccomp`).
    pub seccomp: SeccompMode,
    /// Which daemon's allowlist.
    pub profile: Profile,
    /// Capability changes (`--modcaps`, upstream's syntax).
    pub modcaps: Option<String>,
    /// Inodes are held by file handles: keep DAC_READ_SEARCH.
    pub file_handles: bool,
    /// Confine filesystem access with Landlock where the kernel has it.
    pub landlock: bool,
    /// Cut the capability sets (a daemon that holds none has nothing to
    /// cut, and skips this).
    pub drop_caps: bool,
    /// Enter a user namespace with these maps first (`--uid-map` and
    /// `--gid-map`; see [`userns`]).
    pub userns: Option<UserNamespace>,
}

impl SandboxConfig {
    /// Whether a daemon behind these walls may reopen file handles
    /// (`open_by_handle_at` needs CAP_DAC_READ_SEARCH): false when
    /// `--modcaps` removes it from the set kept. (A daemon without the
    /// capability in the first place finds out when it tries.) Never in a
    /// user namespace: its capabilities do not reach the host's.
    pub fn keeps_read_search(&self) -> bool {
        if self.userns.is_some() {
            return false;
        }
        !self.drop_caps
            || caps::kept_set(true, self.modcaps.as_deref()).map_or(true, |s| {
                s.contains(&::caps::Capability::CAP_DAC_READ_SEARCH)
            })
    }

    /// Every wall up, as the daemons' defaults.
    pub fn new(profile: Profile) -> Self {
        SandboxConfig {
            mode: SandboxMode::Namespace,
            seccomp: SeccompMode::Kill,
            profile,
            modcaps: None,
            file_handles: false,
            landlock: true,
            drop_caps: true,
            userns: None,
        }
    }
}

/// Why a wall could not be put up. The daemon refuses to serve then.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The namespace sandbox.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// The capability sets.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// Landlock.
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    /// The seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The user namespace.
    #[error(transparent)]
    Userns(#[from] UsernsError),
    /// `no_new_privs` could not be set.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

pub use namespace::Entered;

/// Enters the namespace sandbox of `cfg` with `share` as the root (see
/// [`namespace`]). `after_child` runs in the supervising parent once the
/// sandboxed child has exited (namespace mode only). Call before any
/// thread starts.
pub fn enter(
    cfg: &SandboxConfig,
    share: &Path,
    after_child: impl FnOnce(),
) -> Result<Entered, SandboxError> {
    if let Some(ns) = &cfg.userns {
        userns::enter(ns)?;
    }
    let mut entered = namespace::enter(cfg.mode, share, after_child)?;
    entered.userns = cfg.userns.is_some();
    Ok(entered)
}

/// Puts every wall of `cfg` up around opening the share: [`enter`] (with
/// `after_child` for the supervisor), `open(root, proc_self_fd)` to open the
/// share from inside (at `root`, reopening through `proc_self_fd`), then
/// [`Entered::lock_down`]. Logs the walls and returns what `open` made.
/// Call before any thread starts.
pub fn wall_in<T, E: From<SandboxError>>(
    cfg: &SandboxConfig,
    share: &Path,
    after_child: impl FnOnce(),
    open: impl FnOnce(&Path, Option<std::os::fd::OwnedFd>) -> Result<T, E>,
) -> Result<T, E> {
    let mut entered = enter(cfg, share, after_child)?;
    let proc_self_fd = entered.take_proc_self_fd();
    let opened = open(entered.root(), proc_self_fd)?;
    let walls = entered.lock_down(cfg)?;
    log::info!("walls up: {walls}");
    Ok(opened)
}

/// The walls that are up, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walls {
    /// The namespace sandbox.
    pub mode: SandboxMode,
    /// Whether the process is alone in its PID namespace.
    pub pid_namespace: bool,
    /// Whether it runs in a user namespace of its own.
    pub userns: bool,
    /// The capabilities kept (names), or `None` when not cut.
    pub caps: Option<String>,
    /// Landlock's state.
    pub landlock: LandlockState,
    /// The seccomp action.
    pub seccomp: SeccompMode,
}

impl std::fmt::Display for Walls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.userns {
            f.write_str("user namespace (--uid-map, --gid-map); ")?;
        }
        match self.mode {
            SandboxMode::Namespace => f.write_str(
                "namespace sandbox (pid, mount, net; private /proc; pivot_root into the share)",
            )?,
            SandboxMode::Chroot => f.write_str("chroot into the share")?,
            SandboxMode::None => f.write_str("no namespace sandbox")?,
        }
        match &self.caps {
            Some(c) => write!(f, "; capabilities {c}; no supplementary groups")?,
            None => f.write_str("; capabilities not cut")?,
        }
        write!(f, "; no_new_privs; {}", self.landlock)?;
        match self.seccomp {
            SeccompMode::None => f.write_str("; no seccomp filter"),
            SeccompMode::Kill => f.write_str("; seccomp (kill)"),
            SeccompMode::Log => f.write_str("; seccomp (log)"),
            SeccompMode::Trap => f.write_str("; seccomp (trap)"),
        }
    }
}

impl Entered {
    /// Cuts capabilities, sets `no_new_privs`, applies Landlock to the
    /// share and installs the seccomp filter, in that order. Call once the
    /// share is open and before any thread starts: threads inherit all of
    /// it.
    pub fn lock_down(self, cfg: &SandboxConfig) -> Result<Walls, SandboxError> {
        // Whatever the uid: a daemon started with file or ambient
        // capabilities has some to cut too.
        let holds_caps = caps::permitted_is_empty().map(|empty| !empty)?;
        let caps = if cfg.drop_caps && holds_caps {
            let keep = caps::kept_set(cfg.file_handles, cfg.modcaps.as_deref())?;
            caps::restrict_to(&keep)?;
            Some(caps::names(&keep))
        } else {
            None
        };
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
        }
        let landlock = if cfg.landlock {
            landlock::restrict_to(&self.root)?
        } else {
            LandlockState::Off
        };
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() } as u32;
        let programs = seccomp::programs(cfg.profile, cfg.seccomp, pid)?;
        seccomp::install(&programs, cfg.seccomp)?;
        Ok(Walls {
            mode: cfg.mode,
            pid_namespace: self.pid_namespace,
            userns: self.userns,
            caps,
            landlock,
            seccomp: cfg.seccomp,
        })
    }
}

/// The share's path as the daemon will see it after [`enter`] in `mode`.
pub fn root_after(mode: SandboxMode, share: &Path) -> PathBuf {
    match mode {
        SandboxMode::None => share.to_path_buf(),
        SandboxMode::Namespace | SandboxMode::Chroot => PathBuf::from("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_search_is_kept_unless_modcaps_drops_it() {
        let mut walls = SandboxConfig::new(Profile::VirtioFs);
        assert!(walls.keeps_read_search());
        walls.modcaps = Some("-dac_read_search".into());
        assert!(!walls.keeps_read_search());
        walls.modcaps = Some("-dac_read_search:+dac_read_search".into());
        assert!(walls.keeps_read_search());
        walls.modcaps = Some("-DAC_READ_SEARCH".into());
        assert!(!walls.keeps_read_search());
        // A daemon that cuts no capabilities keeps what it has.
        walls.drop_caps = false;
        assert!(walls.keeps_read_search());
    }
}
