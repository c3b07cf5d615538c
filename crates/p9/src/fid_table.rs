//! The fids of one 9P session: what each names, as whom, and what is open.

use std::collections::HashMap;
use std::ffi::CString;
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
        /// What was written so far.
        buf: Vec<u8>,
    },
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
    /// Components from the share root, for Trename and Tremove (shared, so
    /// the per-request fid snapshot does not copy it).
    pub path: Arc<Vec<CString>>,
    /// The open handle, once Tlopen/Tlcreate succeeded.
    pub open: Option<Open>,
    /// Extended-attribute state.
    pub xattr: Option<Xattr>,
}

impl Fid {
    /// A fid on `node` with nothing open.
    pub fn new(node: u64, uid: u32, gid: u32, path: Vec<CString>) -> Self {
        Fid {
            node,
            uid,
            gid,
            path: Arc::new(path),
            open: None,
            xattr: None,
        }
    }
}

/// The most fids one session may hold unless told otherwise (`p9d
/// --max-fids`).
pub const DEFAULT_MAX_FIDS: usize = 65536;

/// The fid numbers of one session, at most a limit of them.
#[derive(Debug)]
pub struct FidTable {
    fids: HashMap<u32, Fid>,
    limit: usize,
    /// The limit was reached once (and logged).
    warned: bool,
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
}

impl FidError {
    /// The errno a client gets for this error.
    pub fn errno(self) -> i32 {
        match self {
            FidError::Unknown(_) | FidError::InUse(_) => libc::EBADF,
            FidError::TooMany(_) => libc::EMFILE,
        }
    }
}

impl FidTable {
    /// A table of at most `limit` fids.
    pub fn with_limit(limit: usize) -> Self {
        FidTable {
            fids: HashMap::new(),
            limit,
            warned: false,
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

    /// Mutable access to fid `id`.
    pub fn get_mut(&mut self, id: u32) -> Result<&mut Fid, FidError> {
        self.fids.get_mut(&id).ok_or(FidError::Unknown(id))
    }

    /// Whether `id` is in use.
    pub fn contains(&self, id: u32) -> bool {
        self.fids.contains_key(&id)
    }

    /// Adds a fid under a number not in use, if the table has room. The
    /// first time it has none, a warning is logged (once per table, that is
    /// per connection).
    pub fn insert_new(&mut self, id: u32, fid: Fid) -> Result<(), FidError> {
        if self.fids.contains_key(&id) {
            return Err(FidError::InUse(id));
        }
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
        self.fids.insert(id, fid);
        Ok(())
    }

    /// Removes fid `id`.
    pub fn remove(&mut self, id: u32) -> Result<Fid, FidError> {
        self.fids.remove(&id).ok_or(FidError::Unknown(id))
    }

    /// Removes every fid (session end or Tversion).
    pub fn drain(&mut self) -> Vec<Fid> {
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
        t.insert_new(1, Fid::new(1, 0, 0, vec![])).unwrap();
        assert_eq!(
            t.insert_new(1, Fid::new(2, 0, 0, vec![])),
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
        t.insert_new(1, Fid::new(1, 0, 0, vec![])).unwrap();
        t.insert_new(2, Fid::new(2, 0, 0, vec![])).unwrap();
        assert_eq!(
            t.insert_new(3, Fid::new(3, 0, 0, vec![])),
            Err(FidError::TooMany(2))
        );
        assert_eq!(FidError::TooMany(2).errno(), libc::EMFILE);
        // A number in use is still EBADF, not EMFILE.
        assert_eq!(
            t.insert_new(2, Fid::new(3, 0, 0, vec![])),
            Err(FidError::InUse(2))
        );
        t.remove(1).unwrap();
        t.insert_new(3, Fid::new(3, 0, 0, vec![])).unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn drain_returns_every_fid() {
        let mut t = FidTable::default();
        for i in 0..10 {
            t.insert_new(i, Fid::new(i as u64, 0, 0, vec![])).unwrap();
        }
        let mut nodes: Vec<u64> = t.drain().into_iter().map(|f| f.node).collect();
        nodes.sort();
        assert_eq!(nodes, (0..10).collect::<Vec<_>>());
        assert_eq!(t.len(), 0);
    }
}
