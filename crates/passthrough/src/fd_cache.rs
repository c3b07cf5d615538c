//! A bounded cache of open `O_PATH` fds for inodes held by file handle.
//!
//! An inode held by a file handle costs no fd, but every request on it
//! would pay an `open_by_handle_at` (a path walk inside the host
//! filesystem's export code) without this cache. The inodes a guest is
//! working with keep an `O_PATH` fd in their slot; at most `capacity` slots
//! are filled at a time, and when one more is filled the least recently
//! used is emptied (CLOCK: a slot used since the hand last passed gets a
//! second chance). An fd taken out of the cache stays open until the last
//! request still using it is done with it.
//!
//! The capacity follows the fd budget (a quarter of what the guest may
//! hold, at most [`DEFAULT_MAX`]), and the cache gives way first: when an
//! fd opened for the guest would exceed the budget, the core empties part
//! of the cache and tries once more ([`FdCache::shrink`]).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwapOption;

use crate::inode_store::InodeData;

/// The most fds the cache holds unless configured otherwise.
pub const DEFAULT_MAX: usize = 16_384;

/// Counts the fds the cache opened that are still open.
#[derive(Debug, Default)]
struct Live(AtomicUsize);

/// An fd the cache holds or held: counted until it is closed, when the
/// last request using it is done (however its slot was emptied: eviction,
/// shrinking, or the inode being dropped).
pub struct CachedFd {
    fd: OwnedFd,
    live: Arc<Live>,
}

impl Drop for CachedFd {
    fn drop(&mut self) {
        self.live.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AsRawFd for CachedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The cache slot of one handle-held inode: one pointer (arc-swap's
/// lock-free `ArcSwapOption`) and a bit, as every handle-held node has one.
#[derive(Default)]
pub struct Slot {
    cached: ArcSwapOption<CachedFd>,
    /// Used since the clock hand last passed.
    referenced: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// The cached fd, if any, marking the slot as used.
    pub fn get(&self) -> Option<Arc<CachedFd>> {
        let fd = self.cached.load_full();
        if fd.is_some() {
            self.referenced.store(true, Ordering::Relaxed);
        }
        fd
    }

    /// Whether an fd is cached (for tests and diagnostics).
    pub fn is_filled(&self) -> bool {
        self.cached.load().is_some()
    }

    /// Empties the slot; whether it held an fd.
    fn take(&self) -> bool {
        self.cached.swap(None).is_some()
    }
}

/// The bounded set of filled slots, in clock order.
#[derive(Default)]
pub struct FdCache {
    live: Arc<Live>,
    /// Inodes whose slot was filled, oldest first. Entries of inodes since
    /// dropped, or whose slot was emptied, are skipped when reached.
    clock: Mutex<VecDeque<Weak<InodeData>>>,
}

impl FdCache {
    /// How many fds the cache holds now (including fds emptied from
    /// their slot that a request still uses).
    pub fn len(&self) -> usize {
        self.live.0.load(Ordering::Acquire)
    }

    /// Whether the cache holds no fd.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `fd`, just opened for `data` (whose slot is `slot`), in the
    /// cache, keeping at most `capacity` fds, and returns the fd to use: the
    /// one already cached if another request filled the slot meanwhile.
    /// With `capacity` 0 nothing is cached.
    pub fn insert(
        &self,
        data: &Arc<InodeData>,
        slot: &Slot,
        fd: OwnedFd,
        capacity: usize,
    ) -> Arc<CachedFd> {
        self.live.0.fetch_add(1, Ordering::AcqRel);
        let fd = Arc::new(CachedFd {
            fd,
            live: self.live.clone(),
        });
        if capacity == 0 {
            return fd;
        }
        // Fill the slot only if it is empty; else use what is there.
        let prev = slot
            .cached
            .compare_and_swap(&None::<Arc<CachedFd>>, Some(fd.clone()));
        if let Some(existing) = prev.as_ref() {
            return existing.clone();
        }
        drop(prev);
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.push_back(Arc::downgrade(data));
        let over = self.len().saturating_sub(capacity);
        if over > 0 {
            Self::evict(&mut clock, over, true);
        }
        // Entries of dropped inodes are passed over by the hand; sweep them
        // when they make up half the clock, so it stays within twice the
        // capacity however many inodes come and go (amortised: a sweep
        // leaves at most `capacity` entries).
        if clock.len() > capacity.saturating_mul(2) {
            clock.retain(|w| {
                w.upgrade()
                    .is_some_and(|d| d.slot().is_some_and(Slot::is_filled))
            });
        }
        fd
    }

    /// Empties up to `n` slots, least recently used first, and returns how
    /// many it emptied (to make room for an fd the guest needs).
    pub fn shrink(&self, n: usize) -> usize {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        Self::evict(&mut clock, n, false)
    }

    /// The clock hand: empties `n` slots (second chances given at most
    /// once per entry, and not at all unless `second_chance`).
    fn evict(clock: &mut VecDeque<Weak<InodeData>>, n: usize, second_chance: bool) -> usize {
        let mut emptied = 0;
        let mut budget = clock.len() * 2;
        while emptied < n && budget > 0 {
            budget -= 1;
            let Some(weak) = clock.pop_front() else {
                break;
            };
            let Some(data) = weak.upgrade() else {
                continue;
            };
            let Some(slot) = data.slot() else {
                continue;
            };
            if second_chance && slot.referenced.swap(false, Ordering::Relaxed) {
                if slot.is_filled() {
                    clock.push_back(weak);
                }
                continue;
            }
            if slot.take() {
                emptied += 1;
            }
        }
        emptied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_handle::FileHandle;
    use crate::inode_store::{InodeKey, InodeSource, InodeStore};

    type Nodes = (
        tempfile::TempDir,
        InodeStore,
        Vec<(Arc<InodeData>, OwnedFd)>,
    );

    /// `n` files in a temporary directory, each known to `store` by its
    /// handle, with an `O_PATH` fd to cache.
    fn nodes(n: usize) -> Option<Nodes> {
        let dir = tempfile::tempdir().unwrap();
        let store = InodeStore::default();
        let mut out = Vec::new();
        for i in 0..n {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, b"x").unwrap();
            let fd: OwnedFd = std::fs::File::open(&path).unwrap().into();
            let Ok(handle) = FileHandle::from_fd(fd.as_raw_fd()) else {
                eprintln!("skipped: the temporary directory's file system has no file handles");
                return None;
            };
            let st = crate::sys::fstat(fd.as_raw_fd()).unwrap();
            let data = store
                .insert_or_ref(
                    InodeKey::from_stat(&st),
                    libc::S_IFREG,
                    InodeSource::handle(handle),
                )
                .unwrap();
            out.push((data, fd));
        }
        Some((dir, store, out))
    }

    #[test]
    fn holds_at_most_its_capacity_and_gives_used_slots_a_second_chance() {
        let Some((_dir, _store, nodes)) = nodes(10) else {
            return;
        };
        let cache = FdCache::default();
        let mut it = nodes.into_iter();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let (data, fd) = it.next().unwrap();
            cache.insert(&data, data.slot().unwrap(), fd, 3);
            kept.push(data);
        }
        assert_eq!(cache.len(), 3);
        // The first one is in use; the next insert evicts the second.
        assert!(kept[0].slot().unwrap().get().is_some());
        let (data, fd) = it.next().unwrap();
        cache.insert(&data, data.slot().unwrap(), fd, 3);
        assert_eq!(cache.len(), 3, "never above its capacity");
        assert!(kept[0].slot().unwrap().is_filled(), "used: second chance");
        assert!(
            !kept[1].slot().unwrap().is_filled(),
            "least recently used: out"
        );
        assert!(data.slot().unwrap().is_filled());
        for (data, fd) in it {
            cache.insert(&data, data.slot().unwrap(), fd, 3);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.shrink(10), 3);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_second_fill_of_a_slot_keeps_the_first_fd() {
        let Some((_dir, _store, mut nodes)) = nodes(2) else {
            return;
        };
        let (_, other_fd) = nodes.pop().unwrap();
        let (data, fd) = nodes.pop().unwrap();
        let cache = FdCache::default();
        let first = cache.insert(&data, data.slot().unwrap(), fd, 8);
        let second = cache.insert(&data, data.slot().unwrap(), other_fd, 8);
        assert_eq!(first.as_raw_fd(), second.as_raw_fd());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn dropped_inodes_leave_the_count_and_the_clock_stays_bounded() {
        let Some((_dir, store, nodes)) = nodes(50) else {
            return;
        };
        let cache = FdCache::default();
        for (data, fd) in nodes {
            cache.insert(&data, data.slot().unwrap(), fd, 4);
            // The guest forgets it at once: the cached fd goes with it.
            store.forget(data.nodeid, 1);
            drop(data);
            assert_eq!(cache.len(), 0);
            let clock = cache.clock.lock().unwrap().len();
            assert!(clock <= 2 * 4 + 1, "{clock} clock entries");
        }
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let Some((_dir, _store, mut nodes)) = nodes(1) else {
            return;
        };
        let (data, fd) = nodes.pop().unwrap();
        let cache = FdCache::default();
        let raw = fd.as_raw_fd();
        let got = cache.insert(&data, data.slot().unwrap(), fd, 0);
        assert_eq!(got.as_raw_fd(), raw);
        assert!(!data.slot().unwrap().is_filled());
        assert_eq!(cache.len(), 1, "open while the request uses it");
        drop(got);
        assert!(cache.is_empty());
    }
}
