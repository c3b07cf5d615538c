//! Who may attach, and as whom.
//!
//! 9P2000.L has no usable authentication here (Tauth is answered `ENOENT`),
//! so every identity comes from the client: Tattach's `n_uname` (or its
//! `uname`, looked up in the host's user database) is the uid every fid
//! walked from it acts as, with that user's primary group; Tlcreate, Tmkdir,
//! Tmknod and Tsymlink carry a gid of their own, which the request acts as
//! and the new object gets. An [`AttachPolicy`] narrows both:
//!
//! - `squash_root` (NFS's `root_squash`): uid 0 attaches as uid and gid
//!   [`SQUASH_ID`], and a gid 0 in Tattach's user or in a create request
//!   becomes [`SQUASH_ID`];
//! - `allow_uids`: a Tattach whose uid (as claimed, before squashing) is
//!   not listed is refused with `EPERM`, and no fid is created.
//!
//! The default policy changes nothing.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// The uid and gid a squashed root acts as (`nobody`/`nogroup`).
pub const SQUASH_ID: u32 = 65534;

/// A set of uids: single uids and inclusive ranges, as in `1000,2000-2999`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidList(Vec<RangeInclusive<u32>>);

impl UidList {
    /// Whether `uid` is in the list.
    pub fn contains(&self, uid: u32) -> bool {
        self.0.iter().any(|r| r.contains(&uid))
    }
}

/// Why a uid list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUidList {
    /// Nothing was listed.
    #[error("empty uid list: use UID or FIRST-LAST, comma separated")]
    Empty,
    /// An item is neither a uid nor a range of uids.
    #[error("bad uid {0:?}: use UID or FIRST-LAST, comma separated")]
    Item(String),
    /// A range ends before it starts.
    #[error("uid range {0:?} ends before it starts")]
    Reversed(String),
}

impl FromStr for UidList {
    type Err = BadUidList;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(BadUidList::Empty);
        }
        let uid = |x: &str, item: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| BadUidList::Item(item.to_string()))
        };
        s.split(',')
            .map(|item| match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (uid(a, item)?, uid(b, item)?);
                    if a > b {
                        return Err(BadUidList::Reversed(item.to_string()));
                    }
                    Ok(a..=b)
                }
                None => uid(item, item).map(|u| u..=u),
            })
            .collect::<Result<_, _>>()
            .map(UidList)
    }
}

impl fmt::Display for UidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

/// A Tattach the policy refuses: its uid is not in `allow_uids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("uid {0} may not attach (not in --allow-uids)")]
pub struct NotAllowed(pub u32);

impl NotAllowed {
    /// The errno the client gets.
    pub fn errno(self) -> i32 {
        libc::EPERM
    }
}

/// Who may attach, and as whom (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachPolicy {
    /// Serve uid 0 as uid and gid [`SQUASH_ID`], and any gid 0 as
    /// [`SQUASH_ID`].
    pub squash_root: bool,
    /// Only these uids may attach (`None`: any uid).
    pub allow_uids: Option<UidList>,
}

impl AttachPolicy {
    /// The uid and gid a Tattach that claims `uid` (whose primary group is
    /// `gid`) is served as, or why it is refused.
    pub fn attach(&self, uid: u32, gid: u32) -> Result<(u32, u32), NotAllowed> {
        if let Some(allowed) = &self.allow_uids {
            if !allowed.contains(uid) {
                return Err(NotAllowed(uid));
            }
        }
        if !self.squash_root {
            return Ok((uid, gid));
        }
        if uid == 0 {
            return Ok((SQUASH_ID, SQUASH_ID));
        }
        Ok((uid, self.request_gid(gid)))
    }

    /// The gid a create request (Tlcreate, Tmkdir, Tmknod, Tsymlink) that
    /// names `gid` acts as.
    pub fn request_gid(&self, gid: u32) -> u32 {
        if self.squash_root && gid == 0 {
            SQUASH_ID
        } else {
            gid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_lists_parse_single_uids_and_ranges() {
        let l: UidList = "1000, 2000-2999,0".parse().unwrap();
        for uid in [0, 1000, 2000, 2500, 2999] {
            assert!(l.contains(uid), "{uid}");
        }
        for uid in [1, 999, 1001, 1999, 3000, u32::MAX] {
            assert!(!l.contains(uid), "{uid}");
        }
        assert_eq!(l.to_string(), "1000,2000-2999,0");
        assert_eq!("".parse::<UidList>(), Err(BadUidList::Empty));
        assert_eq!(
            "1000,x".parse::<UidList>(),
            Err(BadUidList::Item("x".into()))
        );
        assert_eq!("1000,".parse::<UidList>(), Err(BadUidList::Item("".into())));
        assert_eq!("-5".parse::<UidList>(), Err(BadUidList::Item("-5".into())));
        assert_eq!(
            "9-1".parse::<UidList>(),
            Err(BadUidList::Reversed("9-1".into()))
        );
    }

    #[test]
    fn default_policy_changes_nothing() {
        let p = AttachPolicy::default();
        assert_eq!(p.attach(0, 0), Ok((0, 0)));
        assert_eq!(p.attach(1000, 100), Ok((1000, 100)));
        assert_eq!(p.request_gid(0), 0);
    }

    #[test]
    fn squash_root_maps_uid_and_gid_zero() {
        let p = AttachPolicy {
            squash_root: true,
            allow_uids: None,
        };
        assert_eq!(p.attach(0, 0), Ok((SQUASH_ID, SQUASH_ID)));
        assert_eq!(p.attach(1000, 0), Ok((1000, SQUASH_ID)));
        assert_eq!(p.attach(1000, 100), Ok((1000, 100)));
        assert_eq!(p.request_gid(0), SQUASH_ID);
        assert_eq!(p.request_gid(100), 100);
    }

    #[test]
    fn allow_uids_refuses_the_claimed_uid_before_squashing() {
        let p = AttachPolicy {
            squash_root: true,
            allow_uids: Some("1000-1999".parse().unwrap()),
        };
        assert_eq!(p.attach(0, 0), Err(NotAllowed(0)));
        assert_eq!(p.attach(SQUASH_ID, SQUASH_ID), Err(NotAllowed(SQUASH_ID)));
        assert_eq!(p.attach(1500, 1500), Ok((1500, 1500)));
        assert_eq!(NotAllowed(0).errno(), libc::EPERM);
    }
}
