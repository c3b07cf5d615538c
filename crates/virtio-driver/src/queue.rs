//! Split virtqueues driven from the driver's side.
//!
//! [`SplitQueue`] lays a queue out in [`GuestRam`], writes descriptors (any
//! descriptors: out of range, looping, wrongly ordered: the point is to
//! test what a device does with them), direct chains and indirect tables,
//! publishes chains in the available ring, reads the used ring, and does
//! the driver's half of `VIRTIO_RING_F_EVENT_IDX` as Linux does
//! ([`SplitQueue::kick_prepare`], [`SplitQueue::prepare_wait`]).
//! [`SplitQueue::vring`] configures the matching device-side `VringRwLock`
//! for an in-process `VhostUserBackend`.

use std::sync::atomic::{fence, Ordering};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::GuestAddress;

use crate::memory::{GuestRam, MemoryError};

/// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer.
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
/// The size of one descriptor, in the table and in an indirect table.
pub const DESC_SIZE: u64 = 16;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it.
    pub writable: bool,
}

impl Buf {
    /// A buffer the device reads.
    pub fn out(addr: GuestAddress, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn input(addr: GuestAddress, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: true,
        }
    }

    /// The usual request chain: `req_len` bytes at `req` for the device to
    /// read, then `room` bytes at `reply` for it to write.
    pub fn request_reply(
        req: GuestAddress,
        req_len: u32,
        reply: GuestAddress,
        room: u32,
    ) -> [Buf; 2] {
        [Buf::out(req, req_len), Buf::input(reply, room)]
    }

    /// `len` bytes at `at` as buffers of at most `unit` bytes each (how
    /// Linux's drivers hand over data: one descriptor per page).
    pub fn pieces(
        at: GuestAddress,
        len: u32,
        unit: u32,
        writable: bool,
    ) -> impl Iterator<Item = Buf> {
        let unit = unit.max(1);
        (0..len.div_ceil(unit)).map(move |i| {
            let off = i * unit;
            Buf {
                addr: GuestAddress(at.0 + u64::from(off)),
                len: unit.min(len - off),
                writable,
            }
        })
    }
}

/// `bufs` as descriptors chained in order from index `first`, as bytes.
fn chain_bytes(bufs: &[Buf], first: u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(bufs.len() * DESC_SIZE as usize);
    for (i, b) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let mut flags = if b.writable { DESC_F_WRITE } else { 0 };
        if !last {
            flags |= DESC_F_NEXT;
        }
        let next = if last {
            0
        } else {
            first.wrapping_add(i as u16 + 1)
        };
        bytes.extend_from_slice(&b.addr.0.to_le_bytes());
        bytes.extend_from_slice(&b.len.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
    }
    bytes
}

/// Linux's `vring_need_event`: whether moving the index from `old` to `new`
/// passes `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A split virtqueue driven from the driver's side.
pub struct SplitQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    avail_idx: u16,
    used_seen: u16,
    kicked: u16,
    event_idx: bool,
}

impl SplitQueue {
    /// Lays out a queue of `size` entries (a power of two) in `ram`.
    ///
    /// # Panics
    /// When `size` is 0 or `ram` has no room for the queue (test bugs).
    pub fn new(ram: &mut GuestRam, size: u16) -> SplitQueue {
        assert!(size > 0, "a virtqueue has at least one entry");
        let n = u64::from(size);
        let desc = ram.alloc(DESC_SIZE * n, 16);
        // Both rings end in the other side's event index (used_event,
        // avail_event), used with VIRTIO_RING_F_EVENT_IDX.
        let avail = ram.alloc(6 + 2 * n, 2);
        let used = ram.alloc(6 + 8 * n, 4);
        SplitQueue::at(size, desc, avail, used)
    }

    /// A queue of `size` entries whose descriptor table and rings are at
    /// `desc`, `avail` and `used`, wherever that is: what a broken or
    /// hostile driver programs (a ring running past the end of guest
    /// memory, say). Accessing a part outside guest memory panics, as every
    /// [`GuestRam`] access does.
    pub fn at(
        size: u16,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> SplitQueue {
        SplitQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            kicked: 0,
            event_idx: false,
        }
    }

    /// The number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, available and used rings.
    pub fn addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.avail, self.used)
    }

    /// The device-side view of this queue, ready for an in-process backend.
    pub fn vring(&self, ram: &GuestRam) -> Result<VringRwLock, MemoryError> {
        let v = VringRwLock::new(ram.atomic(), self.size)
            .map_err(|e| MemoryError::Queue(e.to_string()))?;
        v.set_queue_size(self.size);
        v.set_queue_info(self.desc.0, self.avail.0, self.used.0)
            .map_err(|e| MemoryError::Queue(e.to_string()))?;
        v.set_queue_ready(true);
        v.set_enabled(true);
        Ok(v)
    }

    /// Writes descriptor `idx` verbatim.
    pub fn write_desc(&self, ram: &GuestRam, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = self.desc.0 + DESC_SIZE * u64::from(idx);
        ram.write_obj(GuestAddress(base), addr);
        ram.write_obj(GuestAddress(base + 8), len);
        ram.write_obj(GuestAddress(base + 12), flags);
        ram.write_obj(GuestAddress(base + 14), next);
    }

    /// Writes `bufs` as one chain in descriptors `head`, `head + 1`, ... and
    /// returns `head`.
    ///
    /// # Panics
    /// When the chain does not fit between `head` and the end of the table
    /// (a test bug: the descriptors would overwrite the rings).
    pub fn write_chain_at(&self, ram: &GuestRam, head: u16, bufs: &[Buf]) -> u16 {
        assert!(
            usize::from(head) + bufs.len() <= usize::from(self.size),
            "a chain of {} from descriptor {head} does not fit a queue of {}",
            bufs.len(),
            self.size
        );
        let at = GuestAddress(self.desc.0 + DESC_SIZE * u64::from(head));
        ram.write(at, &chain_bytes(bufs, head));
        head
    }

    /// Writes `bufs` as one chain in descriptors 0.. and returns its head.
    /// (Requests served one at a time can reuse the table.)
    pub fn write_chain(&self, ram: &GuestRam, bufs: &[Buf]) -> u16 {
        self.write_chain_at(ram, 0, bufs)
    }

    /// Writes `bufs` as an indirect table at `table` (room for
    /// `DESC_SIZE * bufs.len()` bytes) and descriptor `head` pointing at it;
    /// returns `head`.
    pub fn write_indirect(
        &self,
        ram: &GuestRam,
        head: u16,
        table: GuestAddress,
        bufs: &[Buf],
    ) -> u16 {
        ram.write(table, &chain_bytes(bufs, 0));
        let len = (DESC_SIZE as usize * bufs.len()) as u32;
        self.write_desc(ram, head, table.0, len, DESC_F_INDIRECT, 0);
        head
    }

    /// Makes the chain at `head` available to the device.
    pub fn publish(&mut self, ram: &GuestRam, head: u16) {
        let slot = self.avail_idx % self.size;
        ram.write_obj(GuestAddress(self.avail.0 + 4 + 2 * u64::from(slot)), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry before the index that publishes it.
        fence(Ordering::Release);
        ram.write_obj(GuestAddress(self.avail.0 + 2), self.avail_idx);
    }

    /// The available ring's index as this driver counts it (what
    /// [`SplitQueue::publish`] last wrote).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Used entries taken so far (wrapping, as the ring's index).
    pub fn used_seen(&self) -> u16 {
        self.used_seen
    }

    /// Writes `idx` as the available ring's index verbatim, leaving this
    /// driver's own count alone: what a broken or hostile driver does (an
    /// index more than the queue size ahead of the device is one no device
    /// may serve). The next [`SplitQueue::publish`] writes the count again.
    pub fn write_avail_idx(&self, ram: &GuestRam, idx: u16) {
        ram.write_obj(GuestAddress(self.avail.0 + 2), idx);
    }

    /// The used ring's index as the device last wrote it.
    pub fn used_idx(&self, ram: &GuestRam) -> u16 {
        let idx = ram.read_obj(GuestAddress(self.used.0 + 2));
        fence(Ordering::Acquire);
        idx
    }

    /// Whether the device returned entries not taken yet.
    pub fn has_used(&self, ram: &GuestRam) -> bool {
        self.used_idx(ram) != self.used_seen
    }

    /// The next used element `(id, len)`, if the device returned one.
    pub fn take_used(&mut self, ram: &GuestRam) -> Option<(u32, u32)> {
        if self.used_idx(ram) == self.used_seen {
            return None;
        }
        let elem = self.used.0 + 4 + 8 * u64::from(self.used_seen % self.size);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((
            ram.read_obj(GuestAddress(elem)),
            ram.read_obj(GuestAddress(elem + 4)),
        ))
    }

    /// Uses `VIRTIO_RING_F_EVENT_IDX` from now on (when it was negotiated):
    /// [`SplitQueue::kick_prepare`] reads the device's `avail_event` and
    /// [`SplitQueue::prepare_wait`] writes `used_event`.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether the device must be notified of what was published since the
    /// last call (Linux's `virtqueue_kick_prepare`): never when nothing was;
    /// with event index, when the device's `avail_event` lies in what was
    /// published; without, unless the device set `VRING_USED_F_NO_NOTIFY`.
    pub fn kick_prepare(&mut self, ram: &GuestRam) -> bool {
        let (new, old) = (self.avail_idx, self.kicked);
        if new == old {
            return false;
        }
        self.kicked = new;
        // The avail index must be visible before the device's state is read.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = self.used.0 + 4 + 8 * u64::from(self.size);
            let avail_event: u16 = ram.read_obj(GuestAddress(at));
            need_event(avail_event, new, old)
        } else {
            let flags: u16 = ram.read_obj(self.used);
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// Before sleeping on the call eventfd: with event index, asks for an
    /// interrupt at the next used entry (`used_event`). Returns whether an
    /// entry is already there (then the driver must not sleep).
    pub fn prepare_wait(&self, ram: &GuestRam) -> bool {
        if self.event_idx {
            let at = self.avail.0 + 4 + 2 * u64::from(self.size);
            ram.write_obj(GuestAddress(at), self.used_seen);
            fence(Ordering::SeqCst);
        }
        self.has_used(ram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

    #[test]
    fn published_chains_reach_the_device_side_ring() {
        let mut ram = GuestRam::new(1 << 16).unwrap();
        let mut q = SplitQueue::new(&mut ram, 8);
        let vring = q.vring(&ram).unwrap();
        let buf = ram.alloc(64, 8);
        let head = q.write_chain(&ram, &[Buf::input(buf, 64)]);
        q.publish(&ram, head);
        assert!(q.kick_prepare(&ram));
        assert!(!q.kick_prepare(&ram), "nothing new was published");
        let chains = device_side_chains(&vring, &ram);
        assert_eq!(chains, vec![(0, 64, true)]);
        assert!(!q.prepare_wait(&ram));
        vring.add_used(0, 5).unwrap();
        assert!(q.has_used(&ram));
        assert_eq!(q.take_used(&ram), Some((0, 5)));
        assert_eq!(q.take_used(&ram), None);
        assert_eq!(q.used_seen(), 1);
    }

    #[test]
    fn indirect_tables_and_chains_at_any_head_reach_the_device() {
        let mut ram = GuestRam::new(1 << 16).unwrap();
        let mut q = SplitQueue::new(&mut ram, 8);
        let vring = q.vring(&ram).unwrap();
        let data = ram.alloc(10000, 4096);
        let table = ram.alloc(16 * 4, 16);
        let bufs: Vec<Buf> = Buf::pieces(data, 10000, 4096, true).collect();
        assert_eq!(
            bufs.iter().map(|b| b.len).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        let head = q.write_indirect(&ram, 5, table, &bufs);
        q.publish(&ram, head);
        let head = q.write_chain_at(&ram, 2, &[Buf::out(data, 1), Buf::input(data, 2)]);
        q.publish(&ram, head);
        let chains = device_side_chains(&vring, &ram);
        assert_eq!(
            chains,
            vec![
                (5, 4096, true),
                (5, 4096, true),
                (5, 1808, true),
                (2, 1, false),
                (2, 2, true)
            ]
        );
    }

    #[test]
    fn event_index_suppresses_kicks_the_device_did_not_ask_for() {
        let mut ram = GuestRam::new(1 << 16).unwrap();
        let mut q = SplitQueue::new(&mut ram, 8);
        q.set_event_idx(true);
        let (_, avail, used) = q.addresses();
        let avail_event = GuestAddress(used.0 + 4 + 8 * 8);
        // The device asks to be told when index 0 is passed.
        ram.write_obj(avail_event, 0u16);
        q.publish(&ram, 0);
        assert!(q.kick_prepare(&ram));
        // It still asks about index 0: publishing index 1 passes nothing.
        q.publish(&ram, 0);
        assert!(!q.kick_prepare(&ram));
        ram.write_obj(avail_event, 2u16);
        q.publish(&ram, 0);
        assert!(q.kick_prepare(&ram));
        // The driver asks for an interrupt at its next used entry.
        assert!(!q.prepare_wait(&ram));
        let used_event: u16 = ram.read_obj(GuestAddress(avail.0 + 4 + 2 * 8));
        assert_eq!(used_event, 0);
    }

    #[test]
    fn need_event_matches_linux() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(12, 10, 3));
        assert!(need_event(u16::MAX, 1, u16::MAX - 1), "across the wrap");
    }

    fn device_side_chains(vring: &VringRwLock, ram: &GuestRam) -> Vec<(u16, u32, bool)> {
        use virtio_queue::QueueOwnedT;
        let mem = ram.atomic().memory();
        let mut state = vring.get_mut();
        let state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>> =
            &mut state;
        state
            .get_queue_mut()
            .iter(mem)
            .unwrap()
            .flat_map(|c| {
                let head = c.head_index();
                c.map(move |d| (head, d.len(), d.is_write_only()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
