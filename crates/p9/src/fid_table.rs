//! The fids of one 9P session: what each names, as whom, and what is open.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fmt;
use std::sync::Arc;

/// What an opened fid holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// A file handle of the core.
    File(u64),
    /// A directory handle of the core.
    Dir(u64),
}

/// An extended-attribute fid (from Txattrwalk or Txattrcreate).
///
/// Its bytes count against the session's [`MAX_XATTR_BYTES_PER_SESSION`]
/// (see [`Xattr::charge`]), so it is set only through
/// [`FidTable::insert_new`] or [`FidTable::set_xattr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Xattr {
    /// The value (or the name list) to be read (shared: fid snapshots are cheap).
    Read(Arc<Vec<u8>>),
    /// A value being written, set on clunk.
    Write {
        /// The attribute name.
        name: CString,
        /// `XATTR_CREATE`/`XATTR_REPLACE`.
        flags: u32,
        /// The announced size.
        size: u64,
        /// What was written so far: grown as Twrite data arrives, never
        /// beyond `size`.
        buf: Vec<u8>,
    },
}

impl Xattr {
    /// The bytes this fid counts against its session's
    /// [`MAX_XATTR_BYTES_PER_SESSION`]: a value read, or the size a value
    /// being written announced (reserved when it is announced, so the
    /// Twrites that fill it cannot go past the bound).
    pub fn charge(&self) -> usize {
        match self {
            Xattr::Read(v) => v.len(),
            Xattr::Write { size, .. } => usize::try_from(*size).unwrap_or(usize::MAX),
        }
    }
}

/// The longest path a fid may name, written `/a/b/c` from the share root:
/// `PATH_MAX` less its terminating NUL, 4095 bytes.
///
/// A fid keeps its path for the two requests that name an entry by its
/// parent: Tremove (unlink or rmdir of the last component in its parent)
/// and Trename (the same, then the fid's new path); both walk the parent
/// from the share root again. Tattach's aname is walked to make the first
/// such path. Without a bound, a client that made a chain of directories
/// thousands deep would have each fid it walks there copy the whole chain
/// (megabytes per fid, times `--max-fids`). With it, a fid holds at most
/// this many bytes of path. Every stored path is within the bound, and so
/// is the parent Tremove and Trename walk to; a Twalk, Tlcreate, Trename or
/// Tattach whose resulting path would be longer is refused with
/// `ENAMETOOLONG` before it changes anything. Linux programs cannot name
/// such a path in one system call either; what the bound costs is that an
/// entry deeper than this below the share root cannot be reached through
/// 9P (it still can through virtio-fs, whose requests name a parent node).
pub const MAX_PATH_BYTES: usize = libc::PATH_MAX as usize - 1;

/// A fid's path from the share root: its components as walked, with `.`
/// dropped and `..` taking the last one off (at the root it stays the
/// root, as the core keeps `..` there). At most [`MAX_PATH_BYTES`] long.
///
/// The bytes are shared: a fid snapshot, a clone (Twalk of no names) or an
/// xattr fid costs no copy, and a walk copies its source's path (at most
/// [`MAX_PATH_BYTES`]) once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FidPath(
    /// Each component followed by a NUL (so each is a `CStr` without a
    /// copy); empty for the root. Its length is that of the `/a/b/c` form.
    Arc<[u8]>,
);

impl FidPath {
    /// The share root.
    pub fn root() -> Self {
        FidPath::default()
    }

    /// Whether this is the share root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The length of the path written `/a/b/c` (0 for the root).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the path is empty, that is the root.
    pub fn is_empty(&self) -> bool {
        self.is_root()
    }

    /// The components from the root.
    pub fn components(&self) -> impl Iterator<Item = &CStr> + '_ {
        // Each piece ends with its NUL and has no other (components are
        // CStrings), so none is dropped here.
        self.0
            .split_inclusive(|&b| b == 0)
            .filter_map(|c| CStr::from_bytes_with_nul(c).ok())
    }

    /// The components of the parent, and the last one; `None` for the root.
    pub fn split_last(&self) -> Option<(FidPath, &CStr)> {
        let last = self.components().last()?;
        let parent = &self.0[..self.0.len() - last.to_bytes_with_nul().len()];
        Some((FidPath(Arc::from(parent)), last))
    }

    /// This path walked through `names` (`.` stays, `..` goes up, at the
    /// root it stays there): the path a fid has after walking them.
    /// [`FidError::PathTooLong`] if that is longer than [`MAX_PATH_BYTES`].
    /// Shares this path's bytes when the walk ends where it started.
    pub fn walk<'a>(&self, names: impl IntoIterator<Item = &'a CStr>) -> Result<FidPath, FidError> {
        let mut out = self.0.to_vec();
        for n in names {
            match n.to_bytes() {
                b"." => {}
                b".." => {
                    // Drop the last component: back to the NUL before it.
                    out.pop();
                    let keep = out.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
                    out.truncate(keep);
                }
                _ => out.extend_from_slice(n.to_bytes_with_nul()),
            }
        }
        if out.len() > MAX_PATH_BYTES {
            return Err(FidError::PathTooLong(out.len()));
        }
        if *out == *self.0 {
            return Ok(self.clone());
        }
        Ok(FidPath(Arc::from(out)))
    }
}

impl fmt::Debug for FidPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        for c in self.components() {
            s.push('/');
            s.push_str(&c.to_string_lossy());
        }
        if s.is_empty() {
            s.push('/');
        }
        write!(f, "FidPath({s:?})")
    }
}

/// One fid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fid {
    /// The core node id (the fid holds one lookup on it).
    pub node: u64,
    /// The user the fid acts as (from Tattach).
    pub uid: u32,
    /// That user's group.
    pub gid: u32,
    /// The path from the share root, for Trename and Tremove (shared, so
    /// the per-request fid snapshot does not copy it).
    pub path: FidPath,
    /// The open handle, once Tlopen/Tlcreate succeeded.
    pub open: Option<Open>,
    /// Extended-attribute state: set only through [`FidTable::insert_new`]
    /// and [`FidTable::set_xattr`], which count its bytes.
    pub xattr: Option<Xattr>,
}

impl Fid {
    /// A fid on `node` with nothing open.
    pub fn new(node: u64, uid: u32, gid: u32, path: FidPath) -> Self {
        Fid {
            node,
            uid,
            gid,
            path,
            open: None,
            xattr: None,
        }
    }
}

/// The most fids one session may hold unless told otherwise (`p9d
/// --max-fids`).
pub const DEFAULT_MAX_FIDS: usize = 65536;

/// The most bytes the xattr fids of one session may hold together: the
/// values Txattrwalk read and the sizes pending Txattrcreates announced.
/// Each may be 64 KiB (`XATTR_SIZE_MAX`), so without a bound `--max-fids`
/// of them would be 4 GiB per connection; with it, 64 such fids at once. A
/// Txattrwalk or Txattrcreate that would go past it is answered `ENOMEM`
/// (the server's memory for this connection is what ran out, not the file
/// system's space, which `ENOSPC` would say); Tclunk, Tremove and the end
/// of the session give the bytes back.
pub const MAX_XATTR_BYTES_PER_SESSION: usize = 4 * 1024 * 1024;

/// The fid numbers of one session, at most a limit of them, and the bytes
/// their xattr state holds, at most another.
#[derive(Debug)]
pub struct FidTable {
    fids: HashMap<u32, Fid>,
    limit: usize,
    /// The limit was reached once (and logged).
    warned: bool,
    /// The sum of the fids' [`Xattr::charge`].
    xattr_bytes: usize,
    /// The most `xattr_bytes` may be.
    xattr_limit: usize,
}

impl Default for FidTable {
    /// A table of at most [`DEFAULT_MAX_FIDS`] fids.
    fn default() -> Self {
        FidTable::with_limit(DEFAULT_MAX_FIDS)
    }
}

/// Why a fid could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FidError {
    /// The fid is not in use.
    #[error("unknown fid {0}")]
    Unknown(u32),
    /// The fid is already in use.
    #[error("fid {0} already in use")]
    InUse(u32),
    /// The session holds as many fids as it may.
    #[error("the session already holds {0} fids")]
    TooMany(usize),
    /// The session's xattr fids would hold more than their bound.
    #[error("the session's xattr fids would hold more than {0} bytes")]
    XattrBytes(usize),
    /// The fid's path would be longer than [`MAX_PATH_BYTES`] (its length).
    #[error("a path of {0} bytes is longer than {MAX_PATH_BYTES}")]
    PathTooLong(usize),
}

impl FidError {
    /// The errno a client gets for this error.
    pub fn errno(self) -> i32 {
        match self {
            FidError::Unknown(_) | FidError::InUse(_) => libc::EBADF,
            FidError::TooMany(_) => libc::EMFILE,
            FidError::XattrBytes(_) => libc::ENOMEM,
            FidError::PathTooLong(_) => libc::ENAMETOOLONG,
        }
    }
}

impl FidTable {
    /// A table of at most `limit` fids, whose xattr fids hold at most
    /// [`MAX_XATTR_BYTES_PER_SESSION`].
    pub fn with_limit(limit: usize) -> Self {
        FidTable::with_limits(limit, MAX_XATTR_BYTES_PER_SESSION)
    }

    /// A table of at most `limit` fids, whose xattr fids hold at most
    /// `xattr_limit` bytes.
    pub fn with_limits(limit: usize, xattr_limit: usize) -> Self {
        FidTable {
            fids: HashMap::new(),
            limit,
            warned: false,
            xattr_bytes: 0,
            xattr_limit,
        }
    }

    /// The most fids the table holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A copy of fid `id`.
    pub fn get(&self, id: u32) -> Result<Fid, FidError> {
        self.fids.get(&id).cloned().ok_or(FidError::Unknown(id))
    }

    /// Mutable access to fid `id` (its `xattr` is set with
    /// [`FidTable::set_xattr`]).
    pub fn get_mut(&mut self, id: u32) -> Result<&mut Fid, FidError> {
        self.fids.get_mut(&id).ok_or(FidError::Unknown(id))
    }

    /// Whether `id` is in use.
    pub fn contains(&self, id: u32) -> bool {
        self.fids.contains_key(&id)
    }

    /// The bytes the xattr fids hold ([`Xattr::charge`]).
    pub fn xattr_bytes(&self) -> usize {
        self.xattr_bytes
    }

    /// Whether xattr fids may hold `bytes` more.
    /// [`FidError::XattrBytes`] if not.
    pub fn check_xattr_room(&self, bytes: usize) -> Result<(), FidError> {
        match self.xattr_bytes.checked_add(bytes) {
            Some(total) if total <= self.xattr_limit => Ok(()),
            _ => Err(FidError::XattrBytes(self.xattr_limit)),
        }
    }

    /// Adds a fid under a number not in use, if the table has room for it
    /// and for its xattr bytes. The first time it has no room for a fid, a
    /// warning is logged (once per table, that is per connection).
    pub fn insert_new(&mut self, id: u32, fid: Fid) -> Result<(), FidError> {
        if self.fids.contains_key(&id) {
            return Err(FidError::InUse(id));
        }
        let charge = fid.xattr.as_ref().map_or(0, Xattr::charge);
        if self.fids.len() >= self.limit {
            if !self.warned {
                self.warned = true;
                log::warn!(
                    "9p: a connection reached its limit of {} fids (--max-fids); \
                     refusing more with EMFILE",
                    self.limit
                );
            }
            return Err(FidError::TooMany(self.limit));
        }
        self.check_xattr_room(charge)?;
        self.xattr_bytes += charge;
        self.fids.insert(id, fid);
        Ok(())
    }

    /// Gives fid `id` the xattr state `x` in place of what it had, if the
    /// session's xattr fids have room for its bytes; else the fid is left
    /// as it was.
    pub fn set_xattr(&mut self, id: u32, x: Xattr) -> Result<(), FidError> {
        let f = self.fids.get_mut(&id).ok_or(FidError::Unknown(id))?;
        let old = f.xattr.as_ref().map_or(0, Xattr::charge);
        let rest = self.xattr_bytes.saturating_sub(old);
        let charge = x.charge();
        match rest.checked_add(charge) {
            Some(total) if total <= self.xattr_limit => {
                self.xattr_bytes = total;
                f.xattr = Some(x);
                Ok(())
            }
            _ => Err(FidError::XattrBytes(self.xattr_limit)),
        }
    }

    /// Removes fid `id`, giving back its xattr bytes.
    pub fn remove(&mut self, id: u32) -> Result<Fid, FidError> {
        let f = self.fids.remove(&id).ok_or(FidError::Unknown(id))?;
        let charge = f.xattr.as_ref().map_or(0, Xattr::charge);
        self.xattr_bytes = self.xattr_bytes.saturating_sub(charge);
        Ok(f)
    }

    /// Removes every fid (session end or Tversion).
    pub fn drain(&mut self) -> Vec<Fid> {
        self.xattr_bytes = 0;
        self.fids.drain().map(|(_, f)| f).collect()
    }

    /// How many fids are in use.
    pub fn len(&self) -> usize {
        self.fids.len()
    }

    /// Whether no fid is in use.
    pub fn is_empty(&self) -> bool {
        self.fids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_numbers_are_unique_and_removable() {
        let mut t = FidTable::default();
        t.insert_new(1, Fid::new(1, 0, 0, FidPath::root())).unwrap();
        assert_eq!(
            t.insert_new(1, Fid::new(2, 0, 0, FidPath::root())),
            Err(FidError::InUse(1))
        );
        assert_eq!(t.get(1).unwrap().node, 1, "the first fid is untouched");
        assert_eq!(t.get(2), Err(FidError::Unknown(2)));
        assert_eq!(t.remove(1).unwrap().node, 1);
        assert_eq!(t.remove(1), Err(FidError::Unknown(1)));
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_refuses_new_fids_until_one_is_removed() {
        let mut t = FidTable::with_limit(2);
        t.insert_new(1, Fid::new(1, 0, 0, FidPath::root())).unwrap();
        t.insert_new(2, Fid::new(2, 0, 0, FidPath::root())).unwrap();
        assert_eq!(
            t.insert_new(3, Fid::new(3, 0, 0, FidPath::root())),
            Err(FidError::TooMany(2))
        );
        assert_eq!(FidError::TooMany(2).errno(), libc::EMFILE);
        // A number in use is still EBADF, not EMFILE.
        assert_eq!(
            t.insert_new(2, Fid::new(3, 0, 0, FidPath::root())),
            Err(FidError::InUse(2))
        );
        t.remove(1).unwrap();
        t.insert_new(3, Fid::new(3, 0, 0, FidPath::root())).unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn drain_returns_every_fid() {
        let mut t = FidTable::default();
        for i in 0..10 {
            t.insert_new(i, Fid::new(u64::from(i), 0, 0, FidPath::root()))
                .unwrap();
        }
        let mut nodes: Vec<u64> = t.drain().into_iter().map(|f| f.node).collect();
        nodes.sort();
        assert_eq!(nodes, (0..10).collect::<Vec<_>>());
        assert_eq!(t.len(), 0);
    }

    fn names(v: &[&str]) -> Vec<CString> {
        v.iter().map(|n| CString::new(*n).unwrap()).collect()
    }

    fn walk(p: &FidPath, v: &[&str]) -> Result<FidPath, FidError> {
        let n = names(v);
        p.walk(n.iter().map(|c| c.as_c_str()))
    }

    #[test]
    fn a_fid_path_follows_dot_and_dotdot_and_stays_at_the_root() {
        let root = FidPath::root();
        let p = walk(&root, &["a", ".", "b", "c", "..", "d"]).unwrap();
        assert_eq!(format!("{p:?}"), "FidPath(\"/a/b/d\")");
        assert_eq!(p.len(), "/a/b/d".len());
        let comps: Vec<_> = p.components().map(|c| c.to_bytes()).collect();
        assert_eq!(comps, [b"a", b"b", b"d"]);
        let (parent, last) = p.split_last().unwrap();
        assert_eq!(last.to_bytes(), b"d");
        assert_eq!(parent, walk(&root, &["a", "b"]).unwrap());
        assert!(walk(&root, &["..", "..", "."]).unwrap().is_root());
        assert!(walk(&p, &["..", "..", "..", ".."]).unwrap().is_root());
        assert_eq!(root.split_last(), None);
        // A walk that ends where it started shares the bytes.
        let same = walk(&p, &[".", "x", ".."]).unwrap();
        assert!(Arc::ptr_eq(&same.0, &p.0));
    }

    #[test]
    fn a_fid_path_is_at_most_max_path_bytes() {
        let name = "n".repeat(254); // 255 bytes with its '/'
        let deepest = MAX_PATH_BYTES / 255;
        let chain = vec![name.as_str(); deepest];
        let p = walk(&FidPath::root(), &chain).unwrap();
        assert_eq!(p.len(), deepest * 255);
        let room = MAX_PATH_BYTES - p.len();
        let fits = "f".repeat(room - 1);
        assert_eq!(walk(&p, &[&fits]).unwrap().len(), MAX_PATH_BYTES);
        let over = "f".repeat(room);
        assert_eq!(
            walk(&p, &[&over]),
            Err(FidError::PathTooLong(MAX_PATH_BYTES + 1))
        );
        assert_eq!(FidError::PathTooLong(0).errno(), libc::ENAMETOOLONG);
        // Only where the walk ends counts.
        assert_eq!(walk(&p, &[&over, ".."]).unwrap(), p);
    }

    fn xattr_fid(x: Xattr) -> Fid {
        let mut f = Fid::new(1, 0, 0, FidPath::root());
        f.xattr = Some(x);
        f
    }

    fn pending(size: u64) -> Xattr {
        Xattr::Write {
            name: CString::new("user.x").unwrap(),
            flags: 0,
            size,
            buf: Vec::new(),
        }
    }

    #[test]
    fn xattr_fids_hold_at_most_their_bound_and_give_it_back() {
        let mut t = FidTable::with_limits(10, 100);
        t.insert_new(1, xattr_fid(Xattr::Read(Arc::new(vec![0; 60]))))
            .unwrap();
        assert_eq!(
            t.insert_new(2, xattr_fid(Xattr::Read(Arc::new(vec![0; 41])))),
            Err(FidError::XattrBytes(100))
        );
        assert!(!t.contains(2), "refused: not added");
        assert_eq!(FidError::XattrBytes(100).errno(), libc::ENOMEM);
        t.insert_new(2, Fid::new(2, 0, 0, FidPath::root())).unwrap();
        assert_eq!(t.set_xattr(2, pending(41)), Err(FidError::XattrBytes(100)));
        assert_eq!(t.get(2).unwrap().xattr, None, "left as it was");
        t.set_xattr(2, pending(40)).unwrap();
        assert_eq!(t.xattr_bytes(), 100);
        assert_eq!(t.check_xattr_room(1), Err(FidError::XattrBytes(100)));
        assert_eq!(t.check_xattr_room(0), Ok(()));
        // A value of size 0 (a removal) holds nothing.
        t.insert_new(3, xattr_fid(pending(0))).unwrap();
        assert_eq!(t.set_xattr(9, pending(0)), Err(FidError::Unknown(9)));
        t.remove(1).unwrap();
        assert_eq!(t.xattr_bytes(), 40);
        t.insert_new(4, xattr_fid(pending(60))).unwrap();
        t.drain();
        assert_eq!(t.xattr_bytes(), 0);
    }
}
