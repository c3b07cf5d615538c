//! Landlock: the kernel confines the daemon's filesystem access to the
//! share, whatever mode the namespace sandbox is in.
//!
//! This wall is not in upstream virtiofsd. It holds with `--sandbox none`
//! and `--sandbox chroot`, where the host's `/proc` is still reachable
//! through the daemon's `/proc/self/fd` (`../../1/root` is the host's root):
//! Landlock refuses to open anything that does not lie beneath the share.
//! It also refuses new TCP binds and connects (an accepted connection is
//! not affected), signals to processes outside the daemon, and connecting
//! to abstract unix sockets made outside it, where the kernel supports those.

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// Why Landlock could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The share could not be opened for the rule.
    #[error("landlock: cannot open {path}: {source}")]
    Open {
        /// The share.
        path: String,
        /// What the crate said.
        source: landlock::PathFdError,
    },
    /// The ruleset could not be built or enforced.
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// How much of Landlock the kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockState {
    /// Every requested restriction is in force.
    Full,
    /// The kernel enforces part of it (an older Landlock ABI).
    Partial,
    /// The kernel has no Landlock (or it is disabled), or only ABI 1, under
    /// which every rename or link across directories would fail: not used.
    Unsupported,
    /// Turned off by the user.
    Off,
}

impl std::fmt::Display for LandlockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LandlockState::Full => "landlock (share only)",
            LandlockState::Partial => "landlock (share only, partly: older kernel ABI)",
            LandlockState::Unsupported => {
                "no landlock (the kernel lacks it, or lacks ABI 2, without which no file could move between directories)"
            }
            LandlockState::Off => "no landlock (--no-landlock)",
        })
    }
}

/// Limits the calling thread (and the threads it starts later) to `share`.
pub fn restrict_to(share: &Path) -> Result<LandlockState, LandlockError> {
    // ABI 1 (Linux 5.13-5.18) refuses every cross-directory rename and link:
    // a share would break. Require REFER (ABI 2) or leave Landlock off.
    let refer = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::Refer)
        .and_then(|r| r.create());
    if refer.is_err() {
        return Ok(LandlockState::Unsupported);
    }
    let abi = ABI::V10;
    let fd = PathFd::new(share).map_err(|source| LandlockError::Open {
        path: share.display().to_string(),
        source,
    })?;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rule(PathBeneath::new(fd, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockState::Full,
        RulesetStatus::PartiallyEnforced => LandlockState::Partial,
        RulesetStatus::NotEnforced => LandlockState::Unsupported,
    })
}
