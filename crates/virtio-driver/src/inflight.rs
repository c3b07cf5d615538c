//! Many chains in flight on one queue, and the used ring checked as the
//! device fills it: each used entry must answer a chain the driver
//! published and the device has not answered yet. A device that answers a
//! request twice, or answers a descriptor that heads no published chain
//! (a late reply landing in a ring restarted since), fails here.
//!
//! ```
//! use virtio_driver::inflight::{InFlight, UsedError};
//! use vhost_user_backend::VringT;
//! use virtio_driver::{Buf, GuestRam, SplitQueue};
//!
//! let mut ram = GuestRam::new(1 << 20).unwrap();
//! let mut q = SplitQueue::new(&mut ram, 8);
//! let vring = q.vring(&ram).unwrap(); // the device's side, in-process
//! let buf = ram.alloc(64, 8);
//! let mut flight = InFlight::new();
//! let head = q.write_chain_at(&ram, 3, &[Buf::input(buf, 64)]);
//! flight.publish(&ram, &mut q, head, "first");
//! vring.add_used(3, 10).unwrap();
//! assert_eq!(flight.collect(&ram, &mut q), Ok(vec![("first", 10)]));
//! vring.add_used(3, 10).unwrap(); // the same chain again
//! assert_eq!(flight.collect(&ram, &mut q), Err(UsedError::AnsweredTwice(3)));
//! ```

use std::collections::{HashMap, HashSet};

use crate::memory::GuestRam;
use crate::queue::SplitQueue;

/// A used entry that answers no chain in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsedError {
    /// The entry names a descriptor that heads no chain the driver
    /// published (or an index past the queue).
    #[error("used entry for descriptor {0}, which heads no published chain")]
    NeverPublished(u32),
    /// The entry names a chain the device already answered, not published
    /// again since.
    #[error("used entry for descriptor {0}, whose chain was already answered")]
    AnsweredTwice(u32),
}

/// The chains in flight on one queue, each with the driver's own tag `T`
/// (what the request was), by head descriptor.
pub struct InFlight<T> {
    pending: HashMap<u16, T>,
    answered: HashSet<u16>,
    published: u64,
    used: u64,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            pending: HashMap::new(),
            answered: HashSet::new(),
            published: 0,
            used: 0,
        }
    }
}

impl<T> InFlight<T> {
    /// Nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the chain at `head` (already written) available on `q`, tagged
    /// `tag`.
    ///
    /// # Panics
    /// When the chain at `head` is still in flight: its descriptors belong
    /// to the device until it answers (a bug in the test).
    pub fn publish(&mut self, ram: &GuestRam, q: &mut SplitQueue, head: u16, tag: T) {
        assert!(
            !self.pending.contains_key(&head),
            "chain {head} is still in flight"
        );
        self.answered.remove(&head);
        self.pending.insert(head, tag);
        self.published += 1;
        q.publish(ram, head);
    }

    /// Takes every used entry `q` holds: per entry, the answered chain's
    /// tag and the length the device wrote, in the order of the used ring.
    /// Stops at the first entry that answers no chain in flight.
    pub fn collect(
        &mut self,
        ram: &GuestRam,
        q: &mut SplitQueue,
    ) -> Result<Vec<(T, u32)>, UsedError> {
        let mut done = Vec::new();
        while let Some((id, len)) = q.take_used(ram) {
            let head = u16::try_from(id).map_err(|_| UsedError::NeverPublished(id))?;
            let Some(tag) = self.pending.remove(&head) else {
                return Err(if self.answered.contains(&head) {
                    UsedError::AnsweredTwice(id)
                } else {
                    UsedError::NeverPublished(id)
                });
            };
            self.answered.insert(head);
            self.used += 1;
            done.push((tag, len));
        }
        Ok(done)
    }

    /// Chains published and not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the chain at `head` is in flight.
    pub fn is_pending(&self, head: u16) -> bool {
        self.pending.contains_key(&head)
    }

    /// Chains published so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Chains answered so far.
    pub fn answered(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Buf;
    use vhost_user_backend::VringT;

    #[test]
    fn an_entry_for_a_chain_never_published_is_caught() {
        let mut ram = GuestRam::new(1 << 16).unwrap();
        let mut q = SplitQueue::new(&mut ram, 8);
        let vring = q.vring(&ram).unwrap();
        let buf = ram.alloc(16, 8);
        let mut f = InFlight::new();
        for head in [0, 2] {
            q.write_chain_at(&ram, head, &[Buf::input(buf, 16)]);
            f.publish(&ram, &mut q, head, head);
        }
        vring.add_used(2, 1).unwrap();
        assert_eq!(f.collect(&ram, &mut q), Ok(vec![(2, 1)]));
        assert_eq!((f.pending(), f.published(), f.answered()), (1, 2, 1));
        assert!(f.is_pending(0) && !f.is_pending(2));
        vring.add_used(5, 0).unwrap();
        assert_eq!(f.collect(&ram, &mut q), Err(UsedError::NeverPublished(5)));
        // A chain answered, published again and answered again is fine.
        f.publish(&ram, &mut q, 2, 7);
        vring.add_used(2, 3).unwrap();
        vring.add_used(0, 4).unwrap();
        assert_eq!(f.collect(&ram, &mut q), Ok(vec![(7, 3), (0, 4)]));
        assert_eq!(f.pending(), 0);
    }
}
