//! Driver-side virtqueue harness: what a guest driver does, done by a test.
//!
//! [`GuestRam`] is memfd-backed guest memory (shareable with a vhost-user
//! backend later) with a bump allocator; [`SplitQueue`] lays out a split
//! virtqueue in it, writes descriptors (any descriptors: out of range,
//! looping, wrongly ordered), publishes chains in the available ring and
//! reads the used ring. [`SplitQueue::vring`] configures the matching
//! device-side `VringRwLock` for an in-process `VhostUserBackend`.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};

/// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;

/// Why the harness could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// `memfd_create` or sizing it failed.
    #[error("cannot create guest memory: {0}")]
    Memfd(io::Error),
    /// vm-memory refused the region.
    #[error("cannot map guest memory: {0}")]
    Map(String),
    /// The queue could not be configured.
    #[error("cannot configure the queue: {0}")]
    Queue(String),
}

/// Guest memory for a test, memfd-backed, with a bump allocator.
pub struct GuestRam {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    size: u64,
    next: u64,
}

impl GuestRam {
    /// `size` bytes of guest memory at guest address 0.
    pub fn new(size: usize) -> Result<GuestRam, HarnessError> {
        // SAFETY: memfd_create with a NUL-terminated name; we own the result.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(HarnessError::Memfd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64).map_err(HarnessError::Memfd)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| HarnessError::Map(e.to_string()))?;
        Ok(GuestRam {
            mem: GuestMemoryAtomic::new(mem),
            size: size as u64,
            next: 0,
        })
    }

    /// The memory, as a device sees it.
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        self.mem.clone()
    }

    /// The size of guest memory.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reserves `len` bytes aligned to `align` (a power of two).
    ///
    /// # Panics
    /// When guest memory is exhausted: a test bug, not guest input.
    pub fn alloc(&mut self, len: u64, align: u64) -> GuestAddress {
        let start = (self.next + align - 1) & !(align - 1);
        assert!(start + len <= self.size, "harness guest memory exhausted");
        self.next = start + len;
        GuestAddress(start)
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) {
        self.mem
            .memory()
            .write_slice(data, addr)
            .expect("write inside guest memory");
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, addr)
            .expect("read inside guest memory");
        v
    }

    /// The memory regions, for a vhost-user memory table.
    pub fn memory(&self) -> vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap> {
        self.mem.memory()
    }

    fn write_obj<T: vm_memory::ByteValued>(&self, addr: GuestAddress, v: T) {
        self.mem
            .memory()
            .write_obj(v, addr)
            .expect("write inside guest memory");
    }

    fn read_obj<T: vm_memory::ByteValued>(&self, addr: GuestAddress) -> T {
        self.mem
            .memory()
            .read_obj(addr)
            .expect("read inside guest memory")
    }
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it.
    pub writable: bool,
}

impl Buf {
    /// The usual request chain: `req_len` bytes at `req` for the device to
    /// read, then `room` bytes at `reply` for it to write.
    pub fn request_reply(
        req: GuestAddress,
        req_len: u32,
        reply: GuestAddress,
        room: u32,
    ) -> [Buf; 2] {
        [
            Buf {
                addr: req,
                len: req_len,
                writable: false,
            },
            Buf {
                addr: reply,
                len: room,
                writable: true,
            },
        ]
    }
}

/// A split virtqueue driven from the driver's side.
pub struct SplitQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    avail_idx: u16,
    used_seen: u16,
}

impl SplitQueue {
    /// Lays out a queue of `size` entries (a power of two) in `ram`.
    pub fn new(ram: &mut GuestRam, size: u16) -> SplitQueue {
        let n = size as u64;
        let desc = ram.alloc(16 * n, 16);
        let avail = ram.alloc(6 + 2 * n, 2);
        let used = ram.alloc(6 + 8 * n, 4);
        SplitQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
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
    pub fn vring(&self, ram: &GuestRam) -> Result<VringRwLock, HarnessError> {
        let v = VringRwLock::new(ram.atomic(), self.size)
            .map_err(|e| HarnessError::Queue(e.to_string()))?;
        v.set_queue_size(self.size);
        v.set_queue_info(self.desc.0, self.avail.0, self.used.0)
            .map_err(|e| HarnessError::Queue(e.to_string()))?;
        v.set_queue_ready(true);
        v.set_enabled(true);
        Ok(v)
    }

    /// Writes descriptor `idx` verbatim (any values: the point is to test
    /// what a device does with them).
    pub fn write_desc(&self, ram: &GuestRam, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = self.desc.0 + 16 * idx as u64;
        ram.write_obj(GuestAddress(base), addr);
        ram.write_obj(GuestAddress(base + 8), len);
        ram.write_obj(GuestAddress(base + 12), flags);
        ram.write_obj(GuestAddress(base + 14), next);
    }

    /// Writes `bufs` as one chain in descriptors 0.. and returns its head.
    /// (Requests are served one at a time, so the table is reused.)
    pub fn write_chain(&self, ram: &GuestRam, bufs: &[Buf]) -> u16 {
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if b.writable { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = if last { 0 } else { i as u16 + 1 };
            self.write_desc(ram, i as u16, b.addr.0, b.len, flags, next);
        }
        0
    }

    /// Makes the chain at `head` available to the device.
    pub fn publish(&mut self, ram: &GuestRam, head: u16) {
        let slot = self.avail_idx % self.size;
        ram.write_obj(GuestAddress(self.avail.0 + 4 + 2 * slot as u64), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        ram.write_obj(GuestAddress(self.avail.0 + 2), self.avail_idx);
    }

    /// The available ring's index as this driver counts it (what
    /// [`SplitQueue::publish`] last wrote).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes `idx` as the available ring's index verbatim, leaving this
    /// driver's own count alone: what a broken or hostile driver does (an
    /// index more than the queue size ahead of the device is one no device
    /// may serve). The next [`SplitQueue::publish`] writes the count again.
    pub fn write_avail_idx(&self, ram: &GuestRam, idx: u16) {
        ram.write_obj(GuestAddress(self.avail.0 + 2), idx);
    }

    /// The next used element `(id, len)`, if the device returned one.
    pub fn take_used(&mut self, ram: &GuestRam) -> Option<(u32, u32)> {
        let used_idx: u16 = ram.read_obj(GuestAddress(self.used.0 + 2));
        if used_idx == self.used_seen {
            return None;
        }
        let elem = self.used.0 + 4 + 8 * (self.used_seen % self.size) as u64;
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((
            ram.read_obj(GuestAddress(elem)),
            ram.read_obj(GuestAddress(elem + 4)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let mut ram = GuestRam::new(1 << 16).unwrap();
        let a = ram.alloc(3, 1);
        let b = ram.alloc(8, 16);
        assert_eq!(a.0, 0);
        assert_eq!(b.0 % 16, 0);
        assert!(b.0 >= 3);
        ram.write(b, b"12345678");
        assert_eq!(ram.read(b, 8), b"12345678");
    }

    #[test]
    fn published_chains_reach_the_device_side_ring() {
        let mut ram = GuestRam::new(1 << 16).unwrap();
        let mut q = SplitQueue::new(&mut ram, 8);
        let vring = q.vring(&ram).unwrap();
        let buf = ram.alloc(64, 8);
        let head = q.write_chain(
            &ram,
            &[Buf {
                addr: buf,
                len: 64,
                writable: true,
            }],
        );
        q.publish(&ram, head);
        let mem = ram.atomic().memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            virtio_queue_iter(&mut state, mem)
        };
        assert_eq!(chains, vec![(0, 64, true)]);
        vring.add_used(0, 5).unwrap();
        assert_eq!(q.take_used(&ram), Some((0, 5)));
        assert_eq!(q.take_used(&ram), None);
    }

    fn virtio_queue_iter(
        state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
        mem: vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap>,
    ) -> Vec<(u16, u32, bool)> {
        use virtio_queue::QueueOwnedT;
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
