//! Extended attribute name mapping: upstream virtiofsd's `--xattrmap`.
//!
//! A map is a list of rules. Each rule is written
//! `<sep>type<sep>scope<sep>key<sep>prepend<sep>`, where `<sep>` is the
//! rule's first character (any character but white space; it cannot occur
//! in the rule's fields), or `<sep>map<sep>key<sep>prepend<sep>`. White space
//! may surround rules. The rules are tried in order and the first one that
//! matches a name decides what happens to it:
//!
//! - a name the guest sends (getxattr, setxattr, removexattr) is matched
//!   against `key` as a prefix, by the rules of scope `client` or `all`;
//! - a name the host lists (listxattr) is matched against `prepend` as a
//!   prefix, by the rules of scope `server` or `all`.
//!
//! | type | guest name | host name in a list |
//! |---|---|---|
//! | `prefix` | `prepend` is put in front of it | `prepend` is taken off |
//! | `ok` | passed unchanged | listed unchanged |
//! | `bad` | refused: `EPERM` (`ENODATA` for getxattr) | hidden |
//! | `unsupported` | refused: `ENOTSUP` | hidden |
//!
//! `map` is a shorthand and may only be the last rule. With an empty key,
//! `<sep>map<sep><sep>P<sep>` stands for `prefix all "" P` then `bad all ""
//! ""`: every guest name gets `P`, and host names without it are hidden.
//! With a key `K`, it stands for `prefix all K P`, then `bad server "" K`
//! (the host's own `K` names are hidden), `bad client P ""` (the guest
//! cannot reach the remapped names directly), then `ok all "" ""` for
//! everything else. These are the expansions upstream's documentation
//! gives as equivalent.
//!
//! A map should end with a catch-all rule (empty key and prepend, in both
//! scopes; [`XattrMap::has_catch_all`] tells whether it has one). A name no
//! rule matches is treated as `bad`: refused to the guest, hidden from its
//! lists (upstream virtiofsd aborts on such a name).
//!
//! Sources: upstream virtiofsd's `doc/xattr-mapping.md` for the syntax,
//! the types and the `map` expansions; its getxattr answers `ENODATA`
//! rather than `EPERM` for a `bad` name, as here.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::io;

use fuse_backend_rs::api::filesystem::ListxattrReply;

/// Why an xattr map does not parse. Rules are numbered from 1 as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrMapError {
    /// The map holds no rule (it is empty or only white space).
    #[error("xattr map: no rules")]
    Empty,
    /// A rule ends before one of its fields is closed by its separator.
    #[error(
        "xattr map rule {rule}: the {field} field is not closed by the rule's separator {sep:?} \
         (a rule is <sep>type<sep>scope<sep>key<sep>prepend<sep> or <sep>map<sep>key<sep>prepend<sep>)"
    )]
    Incomplete {
        /// The rule's number.
        rule: usize,
        /// The field that is missing or unterminated.
        field: &'static str,
        /// The rule's separator.
        sep: char,
    },
    /// The type is not one of `prefix`, `ok`, `bad`, `unsupported`, `map`.
    #[error(
        "xattr map rule {rule}: unknown type {found:?} (expected prefix, ok, bad, unsupported or map)"
    )]
    UnknownType {
        /// The rule's number.
        rule: usize,
        /// The type as written.
        found: String,
    },
    /// The scope is not one of `client`, `server`, `all`.
    #[error("xattr map rule {rule}: unknown scope {found:?} (expected client, server or all)")]
    UnknownScope {
        /// The rule's number.
        rule: usize,
        /// The scope as written.
        found: String,
    },
    /// A `map` rule is followed by other rules.
    #[error("xattr map rule {rule}: a map rule must be the last rule")]
    MapNotLast {
        /// The `map` rule's number.
        rule: usize,
    },
    /// A key or prepend contains a NUL character, which no xattr name can.
    #[error("xattr map rule {rule}: the {field} contains a NUL character")]
    Nul {
        /// The rule's number.
        rule: usize,
        /// `key` or `prepend`.
        field: &'static str,
    },
}

/// The request a guest's xattr name comes with: it decides the errno of a
/// `bad` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrOp {
    /// getxattr: a `bad` name answers `ENODATA`, as if it were not there
    /// (as upstream virtiofsd does).
    Get,
    /// setxattr: a `bad` name answers `EPERM`.
    Set,
    /// removexattr: a `bad` name answers `EPERM`.
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prefix,
    Ok,
    Bad,
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    /// Applies to the names the guest sends.
    client: bool,
    /// Applies to the names the host lists.
    server: bool,
    /// Matched against guest names.
    key: Vec<u8>,
    /// Added to guest names (`prefix`); matched against host names.
    prepend: Vec<u8>,
}

impl Rule {
    fn new(kind: Kind, (client, server): (bool, bool), key: &[u8], prepend: &[u8]) -> Rule {
        Rule {
            kind,
            client,
            server,
            key: key.to_vec(),
            prepend: prepend.to_vec(),
        }
    }
}

const ALL: (bool, bool) = (true, true);
const CLIENT: (bool, bool) = (true, false);
const SERVER: (bool, bool) = (false, true);

/// A parsed `--xattrmap`: translates the xattr names the guest sends into
/// host names, and the host's listed names into the guest's. See the
/// [module documentation](self) for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrMap {
    /// With `map` rules expanded.
    rules: Vec<Rule>,
}

/// Takes the next field of a rule off `rest`, up to and past `sep`.
fn next_field<'a>(
    rest: &mut &'a str,
    sep: char,
    rule: usize,
    field: &'static str,
) -> Result<&'a str, XattrMapError> {
    let i = rest
        .find(sep)
        .ok_or(XattrMapError::Incomplete { rule, field, sep })?;
    let value = &rest[..i];
    *rest = &rest[i + sep.len_utf8()..];
    Ok(value)
}

fn name_bytes<'a>(
    value: &'a str,
    rule: usize,
    field: &'static str,
) -> Result<&'a [u8], XattrMapError> {
    if value.contains('\0') {
        Err(XattrMapError::Nul { rule, field })
    } else {
        Ok(value.as_bytes())
    }
}

impl XattrMap {
    /// Parses a map as `--xattrmap` or `-o xattrmap=` gives it.
    pub fn parse(map: &str) -> Result<XattrMap, XattrMapError> {
        let mut rules = Vec::new();
        let mut rest = map;
        let mut number = 0;
        let mut map_rule = None;
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
            let Some(sep) = rest.chars().next() else {
                break;
            };
            if let Some(rule) = map_rule {
                return Err(XattrMapError::MapNotLast { rule });
            }
            number += 1;
            rest = &rest[sep.len_utf8()..];
            let kind = next_field(&mut rest, sep, number, "type")?;
            let (kind, scope) = match kind {
                "map" => (None, ALL),
                "prefix" | "ok" | "bad" | "unsupported" => {
                    let kind = match kind {
                        "prefix" => Kind::Prefix,
                        "ok" => Kind::Ok,
                        "bad" => Kind::Bad,
                        _ => Kind::Unsupported,
                    };
                    let scope = match next_field(&mut rest, sep, number, "scope")? {
                        "all" => ALL,
                        "client" => CLIENT,
                        "server" => SERVER,
                        found => {
                            return Err(XattrMapError::UnknownScope {
                                rule: number,
                                found: found.to_owned(),
                            })
                        }
                    };
                    (Some(kind), scope)
                }
                found => {
                    return Err(XattrMapError::UnknownType {
                        rule: number,
                        found: found.to_owned(),
                    })
                }
            };
            let key = name_bytes(next_field(&mut rest, sep, number, "key")?, number, "key")?;
            let prepend = name_bytes(
                next_field(&mut rest, sep, number, "prepend")?,
                number,
                "prepend",
            )?;
            match kind {
                Some(kind) => rules.push(Rule::new(kind, scope, key, prepend)),
                None => {
                    map_rule = Some(number);
                    rules.push(Rule::new(Kind::Prefix, ALL, key, prepend));
                    if key.is_empty() {
                        rules.push(Rule::new(Kind::Bad, ALL, b"", b""));
                    } else {
                        rules.push(Rule::new(Kind::Bad, SERVER, b"", key));
                        rules.push(Rule::new(Kind::Bad, CLIENT, prepend, b""));
                        rules.push(Rule::new(Kind::Ok, ALL, b"", b""));
                    }
                }
            }
        }
        if rules.is_empty() {
            return Err(XattrMapError::Empty);
        }
        Ok(XattrMap { rules })
    }

    /// Whether every name finds a rule in both directions: some rule of
    /// scope `client` or `all` has an empty key, and some rule of scope
    /// `server` or `all` an empty prepend. Upstream's documentation
    /// requires this of a map; here a name no rule matches is `bad`.
    pub fn has_catch_all(&self) -> bool {
        let client = self.rules.iter().any(|r| r.client && r.key.is_empty());
        let server = self.rules.iter().any(|r| r.server && r.prepend.is_empty());
        client && server
    }

    fn client_rule(&self, name: &[u8]) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.client && name.starts_with(&r.key))
    }

    fn server_rule(&self, name: &[u8]) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.server && name.starts_with(&r.prepend))
    }

    /// The host name for the xattr `name` the guest sent with `op`, or the
    /// errno the guest gets: `EPERM` for a `bad` name (`ENODATA` with
    /// [`XattrOp::Get`]), `ENOTSUP` for an `unsupported` one.
    pub fn host_name<'a>(&self, name: &'a CStr, op: XattrOp) -> io::Result<Cow<'a, CStr>> {
        let bad = || {
            io::Error::from_raw_os_error(match op {
                XattrOp::Get => libc::ENODATA,
                XattrOp::Set | XattrOp::Remove => libc::EPERM,
            })
        };
        let Some(rule) = self.client_rule(name.to_bytes()) else {
            return Err(bad());
        };
        match rule.kind {
            Kind::Ok => Ok(Cow::Borrowed(name)),
            Kind::Bad => Err(bad()),
            Kind::Unsupported => Err(io::Error::from_raw_os_error(libc::ENOTSUP)),
            Kind::Prefix => {
                let mut host = Vec::with_capacity(rule.prepend.len() + name.to_bytes().len());
                host.extend_from_slice(&rule.prepend);
                host.extend_from_slice(name.to_bytes());
                // Neither part holds a NUL (checked when parsed; a CStr).
                CString::new(host)
                    .map(Cow::Owned)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
    }

    /// The guest's list from the host's listxattr list (NUL-terminated
    /// names): hidden names dropped, prefixes taken off, in the host's
    /// order. A name that would be empty once its prefix is off is hidden;
    /// a last name without its NUL is taken as if it had one.
    pub fn guest_list(&self, host: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(host.len());
        for name in host.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let shown = match self.server_rule(name) {
                Some(rule) => match rule.kind {
                    Kind::Ok => name,
                    // The rule matched, so `name` starts with `prepend`.
                    Kind::Prefix => name.get(rule.prepend.len()..).unwrap_or_default(),
                    Kind::Bad | Kind::Unsupported => continue,
                },
                None => continue,
            };
            if !shown.is_empty() {
                out.extend_from_slice(shown);
                out.push(0);
            }
        }
        out
    }

    /// The reply to a guest's listxattr with buffer `size`, given the
    /// host's whole list: the mapped list's length for a size of 0,
    /// `ERANGE` if the mapped list is longer than `size`, else the list.
    pub fn list_reply(&self, host: &[u8], size: u32) -> io::Result<ListxattrReply> {
        let list = self.guest_list(host);
        let len =
            u32::try_from(list.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        if size == 0 {
            Ok(ListxattrReply::Count(len))
        } else if len > size {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(list))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> XattrMap {
        XattrMap::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn host(m: &XattrMap, name: &str, op: XattrOp) -> Result<String, i32> {
        let c = CString::new(name).unwrap();
        m.host_name(&c, op)
            .map(|n| n.to_str().unwrap().to_owned())
            .map_err(|e| e.raw_os_error().unwrap())
    }

    fn set(m: &XattrMap, name: &str) -> Result<String, i32> {
        host(m, name, XattrOp::Set)
    }

    fn r(kind: Kind, scope: (bool, bool), key: &str, prepend: &str) -> Rule {
        Rule::new(kind, scope, key.as_bytes(), prepend.as_bytes())
    }

    #[test]
    fn the_documented_rule_forms_parse() {
        let m = map(":prefix:client:trusted.:user.virtiofs.:");
        assert_eq!(
            m.rules,
            [r(Kind::Prefix, CLIENT, "trusted.", "user.virtiofs.")]
        );
        assert_eq!(
            map(":prefix:server::user.virtiofs.:").rules,
            [r(Kind::Prefix, SERVER, "", "user.virtiofs.")]
        );
        assert_eq!(
            map(":ok:client:user.::").rules,
            [r(Kind::Ok, CLIENT, "user.", "")]
        );
        assert_eq!(
            map(":bad:server::security.:").rules,
            [r(Kind::Bad, SERVER, "", "security.")]
        );
        assert_eq!(
            map("/unsupported/all/security.selinux/security.selinux//ok/all///").rules,
            [
                r(
                    Kind::Unsupported,
                    ALL,
                    "security.selinux",
                    "security.selinux"
                ),
                r(Kind::Ok, ALL, "", ""),
            ]
        );
    }

    #[test]
    fn rules_may_be_spread_over_lines_and_use_different_separators() {
        let m = map("/prefix/all/trusted./user.virtiofs./
             /bad/server//trusted./
             /bad/client/user.virtiofs.//
             /ok/all///");
        assert_eq!(
            m.rules,
            [
                r(Kind::Prefix, ALL, "trusted.", "user.virtiofs."),
                r(Kind::Bad, SERVER, "", "trusted."),
                r(Kind::Bad, CLIENT, "user.virtiofs.", ""),
                r(Kind::Ok, ALL, "", ""),
            ]
        );
        assert_eq!(
            map(" :ok:client:a.:: \t|bad|all|||\n").rules,
            [r(Kind::Ok, CLIENT, "a.", ""), r(Kind::Bad, ALL, "", "")]
        );
        // Any character may separate, a multi-byte one too; it may then
        // appear nowhere inside the rule's fields.
        assert_eq!(
            map("§prefix§all§a:b§user.x:§").rules,
            [r(Kind::Prefix, ALL, "a:b", "user.x:")]
        );
    }

    #[test]
    fn map_rules_expand_as_documented() {
        assert_eq!(
            map(":map::user.virtiofs.:"),
            map(":prefix:all::user.virtiofs.::bad:all:::")
        );
        assert_eq!(
            map("/map/trusted./user.virtiofs./"),
            map("/prefix/all/trusted./user.virtiofs./
                 /bad/server//trusted./
                 /bad/client/user.virtiofs.//
                 /ok/all///")
        );
        assert_eq!(
            map(":ok:client:user.:: :map:trusted.:user.virtiofs.:").rules[0],
            r(Kind::Ok, CLIENT, "user.", "")
        );
    }

    #[test]
    fn malformed_maps_are_refused_naming_the_rule() {
        use XattrMapError::*;
        let err = |s: &str| XattrMap::parse(s).unwrap_err();
        assert_eq!(err(""), Empty);
        assert_eq!(err(" \n\t "), Empty);
        assert_eq!(
            err(":prefix:all:trusted.:user.vm."),
            Incomplete {
                rule: 1,
                field: "prepend",
                sep: ':'
            }
        );
        assert_eq!(
            err(":ok:all::: :prefix:client:hi"),
            Incomplete {
                rule: 2,
                field: "key",
                sep: ':'
            }
        );
        // A separator changed within a rule leaves the rule unterminated.
        assert_eq!(
            err(":prefix/all/a/b/"),
            Incomplete {
                rule: 1,
                field: "type",
                sep: ':'
            }
        );
        // A rule with one field too many: the extra field starts a rule.
        assert_eq!(
            err(":ok:all::::"),
            Incomplete {
                rule: 2,
                field: "type",
                sep: ':'
            }
        );
        assert_eq!(
            err(":map:a.:"),
            Incomplete {
                rule: 1,
                field: "prepend",
                sep: ':'
            }
        );
        assert_eq!(
            err(":TOMATOPIRATE:all:a:b:"),
            UnknownType {
                rule: 1,
                found: "TOMATOPIRATE".into()
            }
        );
        assert_eq!(
            err(":ok:all:::/OK/all///"),
            UnknownType {
                rule: 2,
                found: "OK".into()
            }
        );
        assert_eq!(
            err("/prefix/helloworld///"),
            UnknownScope {
                rule: 1,
                found: "helloworld".into()
            }
        );
        assert_eq!(
            err(":map:trusted.:user.vm.: :ok:all:::"),
            MapNotLast { rule: 1 }
        );
        assert_eq!(
            err(":map:a.:user.a.::map:b.:user.b.:"),
            MapNotLast { rule: 1 }
        );
        assert_eq!(
            err(":ok:all:a\0:b:"),
            Nul {
                rule: 1,
                field: "key"
            }
        );
        // One line, naming the rule and what is wrong.
        let msg = err(":ok:all::: :prefix:everywhere:a:b:").to_string();
        assert!(!msg.contains('\n'));
        assert!(
            msg.contains("rule 2") && msg.contains("everywhere"),
            "{msg}"
        );
    }

    #[test]
    fn client_names_are_prefixed_passed_or_refused_by_the_first_matching_rule() {
        let m = map(
            ":bad:client:trusted.secret:: :prefix:client:trusted.:user.virtiofs.: \
             :unsupported:client:security.selinux:: :ok:client:user.:: :bad:all:::",
        );
        assert_eq!(
            set(&m, "trusted.overlay.x").as_deref(),
            Ok("user.virtiofs.trusted.overlay.x")
        );
        assert_eq!(set(&m, "trusted.secret.k"), Err(libc::EPERM));
        assert_eq!(set(&m, "user.k").as_deref(), Ok("user.k"));
        assert_eq!(set(&m, "security.selinux"), Err(libc::ENOTSUP));
        assert_eq!(
            host(&m, "security.selinux", XattrOp::Get),
            Err(libc::ENOTSUP)
        );
        assert_eq!(set(&m, "system.posix_acl_access"), Err(libc::EPERM));
        assert_eq!(
            host(&m, "system.posix_acl_access", XattrOp::Remove),
            Err(libc::EPERM)
        );
        // A bad name reads as absent.
        assert_eq!(
            host(&m, "system.posix_acl_access", XattrOp::Get),
            Err(libc::ENODATA)
        );
    }

    #[test]
    fn an_ok_name_is_not_copied() {
        let m = map(":ok:all:::");
        let name = c"user.x";
        assert!(matches!(
            m.host_name(name, XattrOp::Get).unwrap(),
            Cow::Borrowed(n) if n == name
        ));
    }

    #[test]
    fn names_no_rule_matches_are_bad_and_hidden() {
        let m = map(":prefix:client:trusted.:user.t.:");
        assert!(!m.has_catch_all());
        assert_eq!(set(&m, "user.x"), Err(libc::EPERM));
        assert_eq!(host(&m, "user.x", XattrOp::Get), Err(libc::ENODATA));
        assert_eq!(m.guest_list(b"user.t.trusted.a\0user.x\0"), b"");
        assert!(map(":map:a.:b.:").has_catch_all());
        assert!(map(":ok:client::: :bad:server:::").has_catch_all());
        assert!(!map(":ok:client::: :bad:server::x:").has_catch_all());
    }

    #[test]
    fn host_lists_are_filtered_and_stripped() {
        let m = map("/map/trusted./user.virtiofs./");
        let host = b"user.virtiofs.trusted.overlay.opaque\0trusted.host\0user.mine\0\
                     security.selinux\0";
        assert_eq!(
            m.guest_list(host),
            b"trusted.overlay.opaque\0user.mine\0security.selinux\0"
        );
        let all = map(":map::user.virtiofs.:");
        assert_eq!(
            all.guest_list(b"user.virtiofs.security.selinux\0user.host\0security.selinux\0"),
            b"security.selinux\0"
        );
        // A name that would be empty, empty entries and a missing last NUL.
        assert_eq!(
            all.guest_list(b"user.virtiofs.\0\0\0user.virtiofs.a\0user.virtiofs.b"),
            b"a\0b\0"
        );
        assert_eq!(all.guest_list(b""), b"");
        assert_eq!(
            map(":unsupported:server::security.: :ok:all:::")
                .guest_list(b"security.secret\0boring\0"),
            b"boring\0"
        );
    }

    #[test]
    fn list_sizes_are_those_of_the_mapped_list() {
        let m = map(":map::user.virtiofs.:");
        let host = b"user.virtiofs.user.a\0user.hidden.long.name\0";
        match m.list_reply(host, 0).unwrap() {
            ListxattrReply::Count(n) => assert_eq!(n, 7),
            ListxattrReply::Names(v) => panic!("names {v:?} for a size query"),
        }
        assert_eq!(
            m.list_reply(host, 6).err().and_then(|e| e.raw_os_error()),
            Some(libc::ERANGE)
        );
        for size in [7, 1000, u32::MAX] {
            match m.list_reply(host, size).unwrap() {
                ListxattrReply::Names(v) => assert_eq!(v, b"user.a\0"),
                ListxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
            }
        }
        match m.list_reply(b"user.hidden\0", 0).unwrap() {
            ListxattrReply::Count(n) => assert_eq!(n, 0),
            ListxattrReply::Names(v) => panic!("names {v:?} for a size query"),
        }
    }

    /// Whatever the guest sends and the host lists, the map answers
    /// without panicking, and what it lists has no empty names.
    #[test]
    fn arbitrary_names_and_lists_never_panic() {
        let maps = [
            map(":map::user.virtiofs.:"),
            map("/map/trusted./user.virtiofs./"),
            map(":prefix:client:a:b:"),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\0\0\0ab.tusrvifed";
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let name: Vec<u8> = bytes.iter().copied().filter(|&b| b != 0).collect();
            let name = CString::new(name).unwrap();
            for m in &maps {
                let _ = m.host_name(&name, XattrOp::Set);
                let list = m.guest_list(&bytes);
                assert!(list.is_empty() || list.ends_with(&[0]));
                assert!(!list.windows(2).any(|w| w == [0, 0]) && list.first() != Some(&0));
                let _ = m.list_reply(&bytes, (next() % 64) as u32);
            }
        }
    }
}
