//! The table of inodes the guest knows about, with their lookup counts.
//!
//! FUSE's contract: every reply that hands the guest a node id (lookup,
//! create, mkdir, mknod, symlink, link, each readdirplus entry) adds one to
//! that node's lookup count, and `forget(n)` subtracts `n`. A node is dropped,
//! and its host fd (or its cached fd, see [`crate::fd_cache`]) closed, when
//! its count reaches zero. The root is never dropped.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::fd_cache::{CachedFd, Slot};
use crate::file_handle::FileHandle;

/// The FUSE node id of the share's root.
pub const ROOT_ID: u64 = 1;

/// Identifies a host inode: the same host object always maps to one node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// Host inode number.
    pub ino: u64,
    /// Host device.
    pub dev: u64,
}

impl InodeKey {
    /// The key of the object `st` describes.
    pub fn from_stat(st: &libc::stat64) -> Self {
        InodeKey {
            ino: st.st_ino,
            dev: st.st_dev,
        }
    }
}

/// How the core keeps hold of a host inode.
pub enum InodeSource {
    /// An `O_PATH` fd.
    Fd(OwnedFd),
    /// A file handle, reopened on demand, with its slot in the fd cache.
    Handle(FileHandle, Slot),
}

impl InodeSource {
    /// An inode held by `handle`, nothing cached yet.
    pub fn handle(handle: FileHandle) -> Self {
        InodeSource::Handle(handle, Slot::default())
    }
}

/// An fd for an inode: borrowed from the store, or shared with the fd cache.
pub enum InodeFd<'a> {
    /// The inode's own `O_PATH` fd.
    Borrowed(BorrowedFd<'a>),
    /// An `O_PATH` fd opened from the inode's file handle, which stays open
    /// while this request uses it even if the cache lets it go.
    Shared(Arc<CachedFd>),
}

impl AsRawFd for InodeFd<'_> {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            InodeFd::Borrowed(fd) => fd.as_raw_fd(),
            InodeFd::Shared(fd) => fd.as_raw_fd(),
        }
    }
}

/// One host inode known to the guest.
pub struct InodeData {
    /// The node id the guest uses.
    pub nodeid: u64,
    /// The host identity.
    pub key: InodeKey,
    /// `st_mode & S_IFMT` at lookup time (a host inode never changes type).
    pub file_type: libc::mode_t,
    source: InodeSource,
    refcount: AtomicU64,
}

impl InodeData {
    /// How the inode is held.
    pub fn source(&self) -> &InodeSource {
        &self.source
    }

    /// The inode's own `O_PATH` fd, if it is held by one.
    pub fn own_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.source {
            InodeSource::Fd(fd) => Some(fd.as_fd()),
            InodeSource::Handle(..) => None,
        }
    }

    /// The inode's file handle and fd-cache slot, if it is held by handle.
    pub fn handle(&self) -> Option<(&FileHandle, &Slot)> {
        match &self.source {
            InodeSource::Handle(h, slot) => Some((h, slot)),
            InodeSource::Fd(_) => None,
        }
    }

    /// The inode's fd-cache slot, if it is held by handle.
    pub fn slot(&self) -> Option<&Slot> {
        self.handle().map(|(_, slot)| slot)
    }

    /// Whether this inode is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }

    /// Whether this inode is a regular file.
    pub fn is_reg(&self) -> bool {
        self.file_type == libc::S_IFREG
    }

    /// Whether this inode is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.file_type == libc::S_IFLNK
    }

    /// Whether this node is still the host object with handle `handle`
    /// (None: not known). A node held by fd keeps its inode alive, so its
    /// number cannot have been reused; a node held by handle does not, and
    /// after the host frees an inode and reuses its number for a new file
    /// the two differ in the handle's generation.
    pub fn is_object(&self, handle: Option<&FileHandle>) -> bool {
        match (&self.source, handle) {
            (InodeSource::Handle(h, _), Some(new)) => h == new,
            _ => true,
        }
    }

    /// Whether this node is held by a file handle, not an open fd (for
    /// tests and diagnostics: `Prefer` falls back to fds where the host
    /// file system cannot export handles).
    pub fn held_by_handle(&self) -> bool {
        matches!(self.source, InodeSource::Handle(..))
    }

    /// The current lookup count (for tests and diagnostics).
    pub fn lookup_count(&self) -> u64 {
        self.refcount.load(Ordering::Acquire)
    }
}

/// Nodes by id. A node id is `generation << 32 | slot`: looking one up is
/// an index, not a hash, and costs 8 bytes per slot. A freed slot is used
/// again with the next generation, so no id is handed out twice while a
/// slot lasts; slots cut off the end start above every generation they
/// had. Slot 0 is never used (node id 0 means "none" in FUSE); slot 1,
/// generation 0, is the root.
struct NodeSlab {
    slots: Vec<Option<Arc<InodeData>>>,
    /// Free slots below `slots.len()`, with the generation each gets next.
    free: Vec<(u32, u32)>,
    /// The generation a new slot at the end starts with.
    floor: u32,
    /// Slots whose every generation was used: never used again.
    spent: Vec<u32>,
    len: usize,
}

impl Default for NodeSlab {
    fn default() -> Self {
        NodeSlab {
            slots: vec![None, None],
            free: Vec::new(),
            floor: 0,
            spent: Vec::new(),
            len: 0,
        }
    }
}

impl NodeSlab {
    fn split(nodeid: u64) -> (usize, u32) {
        ((nodeid & 0xffff_ffff) as usize, (nodeid >> 32) as u32)
    }

    fn get(&self, nodeid: u64) -> Option<&Arc<InodeData>> {
        let (slot, _) = Self::split(nodeid);
        self.slots
            .get(slot)?
            .as_ref()
            .filter(|d| d.nodeid == nodeid)
    }

    /// Puts the node `make` builds, given its id, in a free slot; `None`
    /// with 2^32 slots in use (memory runs out long before).
    fn insert(&mut self, make: impl FnOnce(u64) -> Arc<InodeData>) -> Option<Arc<InodeData>> {
        let (slot, generation) = match self.free.pop() {
            Some(free) => free,
            None if self.slots.len() < u32::MAX as usize => {
                self.slots.push(None);
                ((self.slots.len() - 1) as u32, self.floor)
            }
            None => return None,
        };
        let nodeid = u64::from(generation) << 32 | u64::from(slot);
        let data = make(nodeid);
        self.slots[slot as usize] = Some(data.clone());
        self.len += 1;
        Some(data)
    }

    /// Installs the root in slot 1.
    fn insert_root(&mut self, data: Arc<InodeData>) {
        if self.slots[ROOT_ID as usize].replace(data).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, nodeid: u64) -> Option<Arc<InodeData>> {
        self.get(nodeid)?;
        let (slot, generation) = Self::split(nodeid);
        let data = self.slots[slot].take();
        self.len -= 1;
        // A slot whose generations are spent is not used again (and
        // `compact` never cuts it off: it stays, empty).
        if let Some(next) = generation.checked_add(1) {
            self.free.push((slot as u32, next));
        } else {
            self.spent.push(slot as u32);
        }
        data
    }

    /// Gives back the free slots at the end and the room of the vectors.
    fn compact(&mut self) {
        let mut end = self.slots.len();
        let last_spent = self
            .spent
            .iter()
            .map(|&s| s as usize + 1)
            .max()
            .unwrap_or(2);
        while end > last_spent.max(2) && self.slots[end - 1].is_none() {
            end -= 1;
        }
        // Nothing but (perhaps) the root: every slot is free, and new ones
        // start above every generation any had.
        if self.spent.is_empty() && self.slots[2..].iter().all(Option::is_none) {
            end = 2;
        }
        for &(slot, next) in &self.free {
            if slot as usize >= end {
                self.floor = self.floor.max(next);
            }
        }
        self.free.retain(|&(slot, _)| (slot as usize) < end);
        self.slots.truncate(end);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// Drops every node but the root.
    fn clear_except_root(&mut self) {
        let ids: Vec<u64> = self
            .slots
            .iter()
            .flatten()
            .map(|d| d.nodeid)
            .filter(|&id| id != ROOT_ID)
            .collect();
        for id in ids {
            self.remove(id);
        }
        self.compact();
    }
}

#[derive(Default)]
struct Maps {
    by_id: NodeSlab,
    by_key: HashMap<InodeKey, u64>,
}

/// How far the table must shrink below its high-water mark (and to less
/// than half of it) before its maps are compacted and freed memory is
/// given back: often enough that a guest's forgotten tree costs the host
/// nothing, rarely enough that the rehash is amortised.
const SHRINK_MIN: usize = 4096;

/// A table that held at least this many nodes and is then emptied (but
/// for the root) is compacted too.
const EMPTIED_MIN: usize = 1024;

/// All inodes the guest currently holds a reference to.
#[derive(Default)]
pub struct InodeStore {
    maps: RwLock<Maps>,
    /// The most nodes held since the maps were last compacted.
    high_water: AtomicUsize,
}

impl InodeStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the root inode (node id 1) with a count that never reaches zero.
    pub fn insert_root(&self, key: InodeKey, fd: OwnedFd) {
        let data = Arc::new(InodeData {
            nodeid: ROOT_ID,
            key,
            file_type: libc::S_IFDIR,
            source: InodeSource::Fd(fd),
            refcount: AtomicU64::new(2),
        });
        let mut maps = self.write();
        maps.by_key.insert(key, ROOT_ID);
        maps.by_id.insert_root(data);
    }

    /// The inode with node id `nodeid`; `EBADF` if the guest does not hold it.
    pub fn get(&self, nodeid: u64) -> io::Result<Arc<InodeData>> {
        self.read()
            .by_id
            .get(nodeid)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Whether a node is known under `key`.
    pub fn knows(&self, key: &InodeKey) -> bool {
        self.read().by_key.contains_key(key)
    }

    /// If `key` is known as the object with `handle` (see
    /// [`InodeData::is_object`]), adds one lookup and returns it.
    pub fn get_by_key_and_ref(
        &self,
        key: &InodeKey,
        handle: Option<&FileHandle>,
    ) -> Option<Arc<InodeData>> {
        let maps = self.read();
        let data = maps.by_id.get(*maps.by_key.get(key)?)?;
        if !data.is_object(handle) {
            return None;
        }
        // Under the read lock: `forget` needs the write lock to drop a node,
        // so the node cannot disappear between this increment and our return.
        data.refcount.fetch_add(1, Ordering::AcqRel);
        Some(data.clone())
    }

    /// Adds one lookup to a node the caller already holds.
    pub fn add_ref(&self, data: &InodeData) {
        let _maps = self.read();
        data.refcount.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds `key` with `source`, or, if another thread added the same
    /// object meanwhile, adds one lookup to that one and drops `source`. A
    /// node under `key` that is another object (the host reused the inode
    /// number) keeps its id for the lookups the guest still holds, but `key`
    /// names the new node from now on.
    pub fn insert_or_ref(
        &self,
        key: InodeKey,
        file_type: libc::mode_t,
        source: InodeSource,
    ) -> io::Result<Arc<InodeData>> {
        let mut maps = self.write();
        let handle = match &source {
            InodeSource::Handle(h, _) => Some(h),
            InodeSource::Fd(_) => None,
        };
        if let Some(existing) = maps.by_key.get(&key).and_then(|&id| maps.by_id.get(id)) {
            if existing.is_object(handle) && existing.file_type == file_type {
                existing.refcount.fetch_add(1, Ordering::AcqRel);
                return Ok(existing.clone());
            }
        }
        let data = maps
            .by_id
            .insert(|nodeid| {
                Arc::new(InodeData {
                    nodeid,
                    key,
                    file_type,
                    source,
                    refcount: AtomicU64::new(1),
                })
            })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENFILE))?;
        maps.by_key.insert(key, data.nodeid);
        self.high_water.fetch_max(maps.by_id.len, Ordering::Relaxed);
        Ok(data)
    }

    /// Subtracts `count` lookups from `nodeid`, dropping it at zero.
    /// Unknown ids and over-large counts are tolerated: a guest cannot make
    /// the count wrap or remove the root.
    ///
    /// Returns whether the table has shrunk to less than half its
    /// high-water mark (by at least [`SHRINK_MIN`] nodes): its maps were
    /// then compacted, and the caller should give the allocator's free
    /// memory back to the system.
    pub fn forget(&self, nodeid: u64, count: u64) -> bool {
        let mut maps = self.write();
        let Some(data) = maps.by_id.get(nodeid) else {
            return false;
        };
        let old = data.refcount.load(Ordering::Acquire);
        let new = old.saturating_sub(count);
        data.refcount.store(new, Ordering::Release);
        if new == 0 && nodeid != ROOT_ID {
            let key = data.key;
            let dropped = maps.by_id.remove(nodeid);
            if maps.by_key.get(&key) == Some(&nodeid) {
                maps.by_key.remove(&key);
            }
            let len = maps.by_id.len;
            let high = self.high_water.load(Ordering::Relaxed);
            // Also when the guest has forgotten all (but the root) of a
            // table of some size: what it held goes back in full.
            let emptied = len <= 1 && high >= EMPTIED_MIN;
            if high >= 2 * len && (high - len >= SHRINK_MIN || emptied) {
                maps.by_id.compact();
                maps.by_key.shrink_to_fit();
                self.high_water.store(len, Ordering::Relaxed);
                drop(maps);
                drop(dropped);
                return true;
            }
        }
        false
    }

    /// Drops every inode but the root (session end).
    pub fn clear_except_root(&self) {
        let mut maps = self.write();
        maps.by_id.clear_except_root();
        maps.by_key.retain(|_, id| *id == ROOT_ID);
        maps.by_key.shrink_to_fit();
        self.high_water.store(maps.by_id.len, Ordering::Relaxed);
        if let Some(root) = maps.by_id.get(ROOT_ID) {
            root.refcount.store(2, Ordering::Release);
        }
    }

    /// How many inodes are held (root included).
    pub fn len(&self) -> usize {
        self.read().by_id.len
    }

    /// Whether no inode is held (not even the root).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_most_of_a_large_table_compacts_it() {
        let store = InodeStore::default();
        let n = 3 * SHRINK_MIN as u64;
        let ids: Vec<u64> = (0..n)
            .map(|i| {
                let key = InodeKey {
                    ino: i + 100,
                    dev: 1,
                };
                let h = FileHandle::fake(i);
                store
                    .insert_or_ref(key, libc::S_IFREG, InodeSource::handle(h))
                    .unwrap()
                    .nodeid
            })
            .collect();
        assert_eq!(store.len(), n as usize);
        let compactions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| store.forget(id, 1))
            .map(|(i, _)| i)
            .collect();
        assert!(store.is_empty());
        // Once on falling below half of the high-water mark, once more on
        // falling below half of that (both at least SHRINK_MIN below), and
        // once emptied.
        assert_eq!(compactions.len(), 3, "{compactions:?}");
        // (One node left stands for the root these tests do not have.)
        assert_eq!(compactions[2] as u64 + 2, n, "when emptied");
        assert_eq!(compactions[0] as u64 + 1, n / 2, "when half is forgotten");
        let maps = store.read();
        assert!(
            maps.by_key.capacity() < 2 * SHRINK_MIN,
            "{}",
            maps.by_key.capacity()
        );
    }

    #[test]
    fn forgetting_the_newest_nodes_gives_back_their_slots() {
        let store = InodeStore::default();
        let n = 3 * SHRINK_MIN as u64;
        let ids: Vec<u64> = (0..n).map(|i| node(&store, i).nodeid).collect();
        let compacted = ids.iter().rev().filter(|&&id| store.forget(id, 1)).count();
        assert_eq!(compacted, 3);
        let slots = store.read().by_id.slots.len();
        // The reserved two and the last node's (the root's, in real use).
        assert_eq!(
            slots, 3,
            "only the reserved slots and the last node's are kept"
        );
    }

    fn node(store: &InodeStore, i: u64) -> Arc<InodeData> {
        let key = InodeKey { ino: i, dev: 9 };
        store
            .insert_or_ref(key, libc::S_IFREG, InodeSource::handle(FileHandle::fake(i)))
            .unwrap()
    }

    #[test]
    fn node_ids_are_never_handed_out_twice_and_stale_ids_find_nothing() {
        let store = InodeStore::default();
        let mut seen = std::collections::HashSet::new();
        let mut live = Vec::new();
        for round in 0..50u64 {
            for i in 0..20 {
                let d = node(&store, round * 100 + i);
                assert!(d.nodeid > ROOT_ID, "{}", d.nodeid);
                assert!(seen.insert(d.nodeid), "id {:#x} handed out twice", d.nodeid);
                live.push(d.nodeid);
            }
            // Forget most; the stale ids must find nothing from now on.
            for id in live.drain(..15) {
                store.forget(id, 1);
                assert!(store.get(id).is_err());
            }
        }
        for id in &live {
            assert_eq!(store.get(*id).unwrap().nodeid, *id);
        }
        for &id in &seen {
            if !live.contains(&id) {
                assert!(store.get(id).is_err(), "stale {id:#x} found a node");
            }
        }
        // Ids no slot ever had, and the reserved ones.
        for id in [0, u64::MAX, 1 << 40, 0xffff_ffff] {
            assert!(store.get(id).is_err(), "{id:#x}");
        }
    }

    #[test]
    fn slots_cut_off_the_end_come_back_with_new_generations() {
        let store = InodeStore::default();
        let n = 3 * SHRINK_MIN as u64;
        let first: Vec<u64> = (0..n).map(|i| node(&store, i).nodeid).collect();
        // Newest first: the compactions cut the slots off the end.
        for &id in first.iter().rev() {
            store.forget(id, 1);
        }
        let kept = store.read().by_id.slots.len();
        assert!(kept < n as usize / 2, "{kept} slots kept");
        assert!(
            store.read().by_id.floor > 0,
            "the cut slots' generations are remembered"
        );
        let again: Vec<u64> = (0..n).map(|i| node(&store, n + i).nodeid).collect();
        let old: std::collections::HashSet<_> = first.iter().collect();
        assert!(again.iter().all(|id| !old.contains(id)), "an id came back");
        assert!(again.iter().all(|&id| store.get(id).is_ok()));
        assert!(first.iter().all(|&id| store.get(id).is_err()));
    }
}
