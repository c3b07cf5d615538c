//! Id translation inside the daemon: upstream virtiofsd's `--translate-uid`
//! and `--translate-gid`.
//!
//! An [`IdMap`] translates user ids, or group ids (one map for each), between
//! the guest's numbering and the host's, in two independent directions:
//!
//! - **guest to host**, for the ids a request carries: the requester's uid and
//!   gid (the core acts as the translated ids, so files are created with them)
//!   and the owner a SETATTR (chown) asks for;
//! - **host to guest**, for the ids a reply carries: the owner of every
//!   attribute the guest is sent (LOOKUP, GETATTR, SETATTR, the creates and
//!   READDIRPLUS).
//!
//! Not to be confused with `--uid-map`/`--gid-map`, which put the daemon in a
//! user namespace and leave the translation to the kernel.
//!
//! # Rules
//!
//! A map is built from rules, each `<type>:<a>:<b>:<count>` (`forbid-guest`
//! takes only `<a>:<count>`). As upstream, the separator is whatever
//! character follows the type (any but a letter, digit, `-` or `_`; the same
//! one between all fields), the type is matched case-insensitively, and the
//! numbers are decimal `u32`s. A range `<a>:<count>` is the ids
//! `a ..= a + count - 1`.
//!
//! | rule | direction | effect |
//! |---|---|---|
//! | `guest:<guest base>:<host base>:<count>` | guest → host | `guest base + i` becomes `host base + i` |
//! | `host:<host base>:<guest base>:<count>` | host → guest | `host base + i` is shown as `guest base + i` |
//! | `map:<guest base>:<host base>:<count>` | both | `guest:` and `host:` together: a 1:1 translation both ways |
//! | `squash-guest:<guest base>:<host id>:<count>` | guest → host | every id of the guest range becomes `host id` |
//! | `squash-host:<host base>:<guest id>:<count>` | host → guest | every id of the host range is shown as `guest id` |
//! | `forbid-guest:<guest base>:<count>` | guest → host | the guest ids may not be used: see below |
//!
//! An id no rule of a direction covers passes that direction unchanged, so a
//! map without rules is the identity. A map is one-directional unless the
//! rules make it otherwise: `guest:1000:2000:1` alone creates files as host
//! uid 2000 and shows them to the guest as owned by 2000.
//!
//! A rule that cannot be served is refused when the map is built
//! ([`IdMapError`]), where upstream would accept it or misbehave at run time:
//! two rules whose source ranges of one direction overlap (as upstream), a
//! count of 0, a source or target range that goes beyond `u32::MAX - 1`,
//! and a squash target of `u32::MAX`. `u32::MAX` is `(uid_t)-1`, which
//! `chown` and `setresuid` read as "leave unchanged", so it is never mapped
//! and never a target.
//!
//! # Forbidden ids
//!
//! A request from a guest uid or gid that a `forbid-guest` rule covers is
//! refused with `EPERM` wherever the core acts with the requester's ids,
//! and so is a chown to such an id. Upstream virtiofsd switches to the
//! requester's ids only to create files, so there only creating is refused;
//! this core also checks lookups, opens, removals and the rest as the
//! requester, and with no host id to check them as, refuses those too.
//! Requests the core serves with no identity (READ, WRITE and the like on a
//! handle already open, GETATTR, FORGET, ...) are served.
//!
//! # Ids inside xattr values
//!
//! Translated are the ids of the protocol: the requester's, the owner a
//! chown asks for, and the owner in the attributes the guest is sent. Ids
//! that extended attribute values carry are passed unchanged in both
//! directions, as upstream: the user and group entries of POSIX ACLs
//! (`system.posix_acl_access`, `system.posix_acl_default`) and the root uid
//! of a version 3 `security.capability`. That is why the daemon refuses
//! `--posix-acl` together with `--translate-uid`/`--translate-gid`, as
//! upstream does: an ACL would name host ids to the guest, and guest ids to
//! the host.

use std::fmt;

/// The largest id a rule may cover or translate to: `u32::MAX` is
/// `(uid_t)-1`, "no id" to `chown` and `setresuid`.
const MAX_ID: u32 = u32::MAX - 1;

/// One of the two directions an [`IdMap`] translates in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the guest's ids to the host's (requests).
    GuestToHost,
    /// From the host's ids to the guest's (replies).
    HostToGuest,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::GuestToHost => "guest-to-host",
            Direction::HostToGuest => "host-to-guest",
        })
    }
}

/// Why a set of `--translate-uid`/`--translate-gid` rules does not make an
/// [`IdMap`]. Every variant names the rule as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    /// The rule has no type, or no fields after it.
    #[error("id map rule {rule:?}: expected <type>:<numbers...> (e.g. map:1000:2000:10)")]
    Malformed {
        /// The rule as written.
        rule: String,
    },
    /// The type is not one upstream knows.
    #[error(
        "id map rule {rule:?}: unknown type {found:?} \
         (expected guest, host, map, squash-guest, squash-host or forbid-guest)"
    )]
    UnknownType {
        /// The rule as written.
        rule: String,
        /// The type as written.
        found: String,
    },
    /// The type takes another number of fields.
    #[error("id map rule {rule:?}: {kind} takes {expected} numbers, not {found}")]
    FieldCount {
        /// The rule as written.
        rule: String,
        /// The rule's type.
        kind: &'static str,
        /// How many numbers the type takes.
        expected: usize,
        /// How many the rule has.
        found: usize,
    },
    /// A field is not a decimal number below 2^32.
    #[error("id map rule {rule:?}: {value:?} is not a number from 0 to 4294967295")]
    BadNumber {
        /// The rule as written.
        rule: String,
        /// The field as written.
        value: String,
    },
    /// The count is 0: the rule would cover no id.
    #[error("id map rule {rule:?}: a count of 0 covers no id")]
    EmptyRange {
        /// The rule as written.
        rule: String,
    },
    /// A range (or a squash target) reaches `u32::MAX`, `(uid_t)-1`.
    #[error("id map rule {rule:?}: the ids go beyond {MAX_ID} (4294967295 is not an id)")]
    OutOfRange {
        /// The rule as written.
        rule: String,
    },
    /// Two rules translate some of the same ids in the same direction.
    #[error(
        "id map rule {rule:?}: its {direction} ids {first}..={last} overlap those of rule {other:?}"
    )]
    Overlap {
        /// The rule as written.
        rule: String,
        /// The earlier rule it overlaps.
        other: String,
        /// The direction in which both translate the ids.
        direction: Direction,
        /// The first id both cover.
        first: u32,
        /// The last id both cover.
        last: u32,
    },
}

/// A guest id that a `forbid-guest` rule covers: the request that carries
/// it is refused (`EPERM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest id {0} may not be used (forbid-guest)")]
pub struct Forbidden(pub u32);

/// What a [`Span`] does with the ids it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    /// `start + i` becomes `base + i`.
    Range(u32),
    /// Every id becomes this one.
    Squash(u32),
    /// The ids may not be used.
    Forbid,
}

/// A rule's source range in one direction, `start..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: u32,
    last: u32,
    to: To,
    /// The index of the rule in `IdMap::rules`, for errors.
    rule: usize,
}

/// Translation of uids (or of gids) between guest and host; see the
/// [module documentation](self). The default is the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    /// Guest-to-host spans, sorted by `start`, disjoint.
    guest_to_host: Vec<Span>,
    /// Host-to-guest spans, sorted by `start`, disjoint.
    host_to_guest: Vec<Span>,
    /// The rules as written.
    rules: Vec<String>,
}

/// A rule's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Guest,
    Host,
    Map,
    SquashGuest,
    SquashHost,
    ForbidGuest,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "guest" => Kind::Guest,
            "host" => Kind::Host,
            "map" => Kind::Map,
            "squash-guest" => Kind::SquashGuest,
            "squash-host" => Kind::SquashHost,
            "forbid-guest" => Kind::ForbidGuest,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Guest => "guest",
            Kind::Host => "host",
            Kind::Map => "map",
            Kind::SquashGuest => "squash-guest",
            Kind::SquashHost => "squash-host",
            Kind::ForbidGuest => "forbid-guest",
        }
    }

    fn fields(self) -> usize {
        if self == Kind::ForbidGuest {
            2
        } else {
            3
        }
    }
}

/// Finds the span of `spans` (sorted, disjoint) that covers `id`.
fn find(spans: &[Span], id: u32) -> Option<&Span> {
    let i = spans.partition_point(|s| s.last < id);
    spans.get(i).filter(|s| s.start <= id)
}

/// The last id of the range `base`, `count` ids long (`count` > 0), if it
/// stays within [`MAX_ID`].
fn last_of(base: u32, count: u32) -> Option<u32> {
    base.checked_add(count - 1).filter(|&l| l <= MAX_ID)
}

impl IdMap {
    /// The map that translates nothing.
    pub fn identity() -> IdMap {
        IdMap::default()
    }

    /// Builds a map from rules as the command line gives them (one
    /// `--translate-uid` or `--translate-gid` value each), in order. The
    /// first rule that does not parse, or overlaps an earlier one in a
    /// direction, is the error.
    pub fn parse_rules<S: AsRef<str>>(rules: &[S]) -> Result<IdMap, IdMapError> {
        let mut map = IdMap::default();
        for rule in rules {
            map.add_rule(rule.as_ref())?;
        }
        Ok(map)
    }

    fn add_rule(&mut self, rule: &str) -> Result<(), IdMapError> {
        let owned = || rule.to_owned();
        // The type runs to the first character that cannot be part of it,
        // which is the separator for the rest of the rule.
        let (kind, rest) = match rule
            .char_indices()
            .find(|&(_, c)| !(c.is_alphanumeric() || c == '-' || c == '_'))
        {
            Some((i, sep)) if i > 0 => (&rule[..i], rule[i..].split(sep).skip(1)),
            _ => return Err(IdMapError::Malformed { rule: owned() }),
        };
        let kind =
            Kind::from_name(&kind.to_lowercase()).ok_or_else(|| IdMapError::UnknownType {
                rule: owned(),
                found: kind.to_owned(),
            })?;
        let fields: Vec<&str> = rest.collect();
        if fields.len() != kind.fields() {
            return Err(IdMapError::FieldCount {
                rule: owned(),
                kind: kind.name(),
                expected: kind.fields(),
                found: fields.len(),
            });
        }
        let mut n = [0u32; 3];
        for (slot, field) in n.iter_mut().zip(&fields) {
            *slot = field.parse().map_err(|_| IdMapError::BadNumber {
                rule: owned(),
                value: (*field).to_owned(),
            })?;
        }
        let count = n[kind.fields() - 1];
        if count == 0 {
            return Err(IdMapError::EmptyRange { rule: owned() });
        }
        let out_of_range = || IdMapError::OutOfRange { rule: owned() };
        let (a, b) = (n[0], n[1]);
        let a_last = last_of(a, count).ok_or_else(out_of_range)?;
        // The target, where there is one, must be ids too.
        let b_last = match kind {
            Kind::Guest | Kind::Host | Kind::Map => last_of(b, count).ok_or_else(out_of_range)?,
            Kind::SquashGuest | Kind::SquashHost if b > MAX_ID => return Err(out_of_range()),
            Kind::SquashGuest | Kind::SquashHost | Kind::ForbidGuest => b,
        };
        let index = self.rules.len();
        let span = |start: u32, last: u32, to: To| Span {
            start,
            last,
            to,
            rule: index,
        };
        let mut new = Vec::with_capacity(2);
        match kind {
            Kind::Guest => new.push((Direction::GuestToHost, span(a, a_last, To::Range(b)))),
            Kind::Host => new.push((Direction::HostToGuest, span(a, a_last, To::Range(b)))),
            Kind::Map => {
                new.push((Direction::GuestToHost, span(a, a_last, To::Range(b))));
                new.push((Direction::HostToGuest, span(b, b_last, To::Range(a))));
            }
            Kind::SquashGuest => new.push((Direction::GuestToHost, span(a, a_last, To::Squash(b)))),
            Kind::SquashHost => new.push((Direction::HostToGuest, span(a, a_last, To::Squash(b)))),
            Kind::ForbidGuest => new.push((Direction::GuestToHost, span(a, a_last, To::Forbid))),
        }
        // Check every new span before inserting any, so that a failed rule
        // leaves the map as it was.
        for (direction, s) in &new {
            let spans = self.spans(*direction);
            let i = spans.partition_point(|o| o.last < s.start);
            if let Some(o) = spans.get(i).filter(|o| o.start <= s.last) {
                return Err(IdMapError::Overlap {
                    rule: owned(),
                    other: self.rules[o.rule].clone(),
                    direction: *direction,
                    first: o.start.max(s.start),
                    last: o.last.min(s.last),
                });
            }
        }
        for (direction, s) in new {
            let spans = match direction {
                Direction::GuestToHost => &mut self.guest_to_host,
                Direction::HostToGuest => &mut self.host_to_guest,
            };
            let i = spans.partition_point(|o| o.last < s.start);
            spans.insert(i, s);
        }
        self.rules.push(rule.to_owned());
        Ok(())
    }

    fn spans(&self, direction: Direction) -> &[Span] {
        match direction {
            Direction::GuestToHost => &self.guest_to_host,
            Direction::HostToGuest => &self.host_to_guest,
        }
    }

    /// Whether the map translates nothing (it has no rules).
    pub fn is_identity(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules the map was built from, as written.
    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    /// The host id that the guest's `id` stands for in a request, or
    /// [`Forbidden`] if a `forbid-guest` rule covers it.
    pub fn guest_to_host(&self, id: u32) -> Result<u32, Forbidden> {
        match find(&self.guest_to_host, id) {
            None => Ok(id),
            Some(s) => match s.to {
                // No overflow: parsing kept base + (last - start) <= MAX_ID.
                To::Range(base) => Ok(base.saturating_add(id - s.start)),
                To::Squash(to) => Ok(to),
                To::Forbid => Err(Forbidden(id)),
            },
        }
    }

    /// The guest id that the host's `id` is shown as in a reply.
    pub fn host_to_guest(&self, id: u32) -> u32 {
        match find(&self.host_to_guest, id) {
            None => id,
            Some(s) => match s.to {
                // No overflow: parsing kept base + (last - start) <= MAX_ID.
                To::Range(base) => base.saturating_add(id - s.start),
                To::Squash(to) => to,
                // Only guest-to-host rules forbid; shown unchanged regardless.
                To::Forbid => id,
            },
        }
    }

    /// Whether some guest id is translated to the host's `id` in requests:
    /// for uid 0, whether a guest can act as the host's root at all.
    pub fn guest_can_become(&self, id: u32) -> bool {
        // The guest's own `id`, unless a rule translates it elsewhere.
        find(&self.guest_to_host, id).is_none()
            || self.guest_to_host.iter().any(|s| match s.to {
                To::Range(base) => base <= id && id - base <= s.last - s.start,
                To::Squash(to) => to == id,
                To::Forbid => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> IdMap {
        IdMap::parse_rules(rules).unwrap()
    }

    fn err(rules: &[&str]) -> IdMapError {
        IdMap::parse_rules(rules).unwrap_err()
    }

    #[test]
    fn no_rules_is_the_identity() {
        let m = IdMap::identity();
        assert!(m.is_identity());
        for id in [0, 1, 1000, MAX_ID, u32::MAX] {
            assert_eq!(m.guest_to_host(id), Ok(id));
            assert_eq!(m.host_to_guest(id), id);
        }
        assert_eq!(IdMap::parse_rules::<String>(&[]).unwrap(), m);
    }

    #[test]
    fn map_translates_both_ways_and_nothing_else() {
        let m = map(&["map:1000:2000:10"]);
        assert!(!m.is_identity());
        assert_eq!(m.guest_to_host(1000), Ok(2000));
        assert_eq!(m.guest_to_host(1005), Ok(2005));
        assert_eq!(m.guest_to_host(1009), Ok(2009));
        assert_eq!(m.guest_to_host(1010), Ok(1010));
        assert_eq!(m.guest_to_host(999), Ok(999));
        assert_eq!(m.host_to_guest(2005), 1005);
        assert_eq!(m.host_to_guest(2010), 2010);
        // One-to-one only where a rule says so: host 1005 is untouched.
        assert_eq!(m.host_to_guest(1005), 1005);
    }

    #[test]
    fn guest_and_host_rules_are_one_directional() {
        let m = map(&["guest:0:1001:1", "host:1001:1000:1"]);
        assert_eq!(m.guest_to_host(0), Ok(1001));
        assert_eq!(m.host_to_guest(0), 0);
        assert_eq!(m.host_to_guest(1001), 1000);
        assert_eq!(m.guest_to_host(1000), Ok(1000));
    }

    #[test]
    fn squash_rules_send_a_range_to_one_id() {
        // Upstream README's example for an unprivileged daemon (1001:100).
        let m = map(&["squash-guest:0:1001:4294967295", "host:1001:1000:1"]);
        for id in [0, 1, 1000, 65534, MAX_ID] {
            assert_eq!(m.guest_to_host(id), Ok(1001));
        }
        assert_eq!(m.guest_to_host(u32::MAX), Ok(u32::MAX), "-1 is no id");
        let m = map(&["squash-host:100000:65534:65536"]);
        assert_eq!(m.host_to_guest(100000), 65534);
        assert_eq!(m.host_to_guest(165535), 65534);
        assert_eq!(m.host_to_guest(165536), 165536);
        assert_eq!(m.guest_to_host(65534), Ok(65534));
    }

    #[test]
    fn forbid_guest_refuses_its_range() {
        let m = map(&["forbid-guest:0:1000", "map:1000:1000:1"]);
        assert_eq!(m.guest_to_host(0), Err(Forbidden(0)));
        assert_eq!(m.guest_to_host(999), Err(Forbidden(999)));
        assert_eq!(m.guest_to_host(1000), Ok(1000));
        assert_eq!(m.guest_to_host(1001), Ok(1001));
        assert_eq!(m.host_to_guest(0), 0);
    }

    #[test]
    fn the_separator_is_whatever_follows_the_type() {
        let m = map(&["map/1/2/3"]);
        assert_eq!((m.guest_to_host(2), m.host_to_guest(3)), (Ok(3), 2));
        assert_eq!(map(&["MAP:1:2:3"]).guest_to_host(2), Ok(3));
        assert_eq!(map(&["Squash-Guest 5 7 2"]).guest_to_host(6), Ok(7));
    }

    #[test]
    fn malformed_rules_are_named_in_the_error() {
        assert_eq!(
            err(&["map:1:2:3", "bogus:1:2:3"]),
            IdMapError::UnknownType {
                rule: "bogus:1:2:3".into(),
                found: "bogus".into()
            }
        );
        assert_eq!(err(&["map"]), IdMapError::Malformed { rule: "map".into() });
        assert_eq!(err(&[""]), IdMapError::Malformed { rule: "".into() });
        assert_eq!(
            err(&[":1:2:3"]),
            IdMapError::Malformed {
                rule: ":1:2:3".into()
            }
        );
        assert_eq!(
            err(&["forbid-guest:0:1:2"]),
            IdMapError::FieldCount {
                rule: "forbid-guest:0:1:2".into(),
                kind: "forbid-guest",
                expected: 2,
                found: 3
            }
        );
        assert_eq!(
            err(&["map:1:2"]),
            IdMapError::FieldCount {
                rule: "map:1:2".into(),
                kind: "map",
                expected: 3,
                found: 2
            }
        );
        for bad in [
            "map:1:x:3",
            "map:1:2:3:",
            "map:1:-2:3",
            "map:1:4294967296:1",
        ] {
            assert!(
                matches!(
                    err(&[bad]),
                    IdMapError::BadNumber { .. } | IdMapError::FieldCount { .. }
                ),
                "{bad}"
            );
        }
        assert_eq!(
            err(&["map:1:2:0"]),
            IdMapError::EmptyRange {
                rule: "map:1:2:0".into()
            }
        );
        for beyond in [
            "guest:4294967295:0:1",
            "host:0:4294967295:1",
            "map:4294967290:0:6",
            "squash-guest:0:4294967295:1",
            "squash-host:0:0:4294967296",
            "forbid-guest:1:4294967295",
        ] {
            assert!(
                matches!(
                    err(&[beyond]),
                    IdMapError::OutOfRange { .. } | IdMapError::BadNumber { .. }
                ),
                "{beyond}"
            );
        }
        let msg = err(&["map:1:2:0"]).to_string();
        assert!(msg.contains("map:1:2:0") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn overlapping_rules_of_one_direction_are_refused() {
        assert_eq!(
            err(&["map:1000:2000:10", "guest:1009:5000:1"]),
            IdMapError::Overlap {
                rule: "guest:1009:5000:1".into(),
                other: "map:1000:2000:10".into(),
                direction: Direction::GuestToHost,
                first: 1009,
                last: 1009,
            }
        );
        // Upstream's issue 198: forbid-guest takes a count, not a last id.
        assert!(matches!(
            err(&["forbid-guest:1001:1999", "map:2000:2000:1"]),
            IdMapError::Overlap {
                first: 2000,
                last: 2000,
                ..
            }
        ));
        assert!(matches!(
            err(&["squash-host:0:0:100", "map:500:50:1"]),
            IdMapError::Overlap {
                direction: Direction::HostToGuest,
                ..
            }
        ));
        // Different directions never overlap.
        let m = map(&["guest:0:5:10", "host:0:7:10", "forbid-guest:10:5"]);
        assert_eq!(m.guest_to_host(3), Ok(8));
        assert_eq!(m.host_to_guest(3), 10);
        // Adjacent ranges are fine, in any order.
        let m = map(&["map:20:120:10", "map:10:110:10", "map:30:130:10"]);
        for id in 10..40 {
            assert_eq!(m.guest_to_host(id), Ok(id + 100));
            assert_eq!(m.host_to_guest(id + 100), id);
        }
        assert_eq!(m.rules().len(), 3);
    }

    #[test]
    fn whether_a_guest_can_become_a_host_id() {
        assert!(IdMap::identity().guest_can_become(0));
        let root_squashed = map(&["squash-guest:0:1001:4294967295"]);
        assert!(!root_squashed.guest_can_become(0));
        assert!(root_squashed.guest_can_become(1001));
        assert!(!map(&["forbid-guest:0:1"]).guest_can_become(0));
        assert!(!map(&["map:0:100000:65536"]).guest_can_become(0));
        assert!(map(&["map:0:100000:65536", "guest:70000:0:1"]).guest_can_become(0));
        assert!(map(&["map:1000:2000:10"]).guest_can_become(0));
        assert!(map(&["map:1000:2000:10"]).guest_can_become(2009));
        assert!(!map(&["map:1000:2000:10"]).guest_can_become(1009));
    }
}
