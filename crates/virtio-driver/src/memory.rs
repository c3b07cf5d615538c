//! Guest memory as a driver lays things out in it: memfd-backed (so a
//! vhost-user backend can map it too) with a bump allocator.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic,
    GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion,
};

/// Why guest memory (or a queue in it) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create` or sizing it failed.
    #[error("cannot create guest memory: {0}")]
    Memfd(io::Error),
    /// vm-memory refused the region.
    #[error("cannot map guest memory: {0}")]
    Map(String),
    /// The device-side view of a queue could not be configured.
    #[error("cannot configure the queue: {0}")]
    Queue(String),
}

/// A memfd of `size` bytes.
fn memfd(size: usize) -> Result<File, MemoryError> {
    // SAFETY: memfd_create with a NUL-terminated name; we own the result.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).map_err(MemoryError::Memfd)?;
    Ok(file)
}

/// `size` bytes of guest memory at guest address 0, backed by a memfd (so a
/// vhost-user backend can map it: its regions have a file and offset).
pub fn memfd_memory(size: usize) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(memfd(size)?, 0)),
    )])
    .map_err(|e| MemoryError::Map(e.to_string()))
}

/// Guest memory for a driver, memfd-backed, at guest address 0, with a bump
/// allocator.
///
/// The accessors panic when given an address outside the memory: the
/// addresses come from the driver (the test) itself, never from a device,
/// so that is a bug in the test.
pub struct GuestRam {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    size: u64,
    next: u64,
}

impl GuestRam {
    /// `size` bytes of guest memory at guest address 0.
    pub fn new(size: usize) -> Result<GuestRam, MemoryError> {
        Ok(GuestRam {
            mem: GuestMemoryAtomic::new(memfd_memory(size)?),
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

    /// Reserves `len` bytes aligned to `align` (a power of two), or `None`
    /// when they do not fit.
    pub fn try_alloc(&mut self, len: u64, align: u64) -> Option<GuestAddress> {
        if !align.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(len)?;
        if end > self.size {
            return None;
        }
        self.next = end;
        Some(GuestAddress(start))
    }

    /// Reserves `len` bytes aligned to `align` (a power of two).
    ///
    /// # Panics
    /// When guest memory is exhausted or `align` is not a power of two: a
    /// bug in the test, not device input.
    pub fn alloc(&mut self, len: u64, align: u64) -> GuestAddress {
        self.try_alloc(len, align)
            .expect("driver guest memory exhausted (or a bad alignment)")
    }

    /// Writes `data` at `addr`.
    ///
    /// # Panics
    /// When `addr..addr + data.len()` is outside guest memory.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) {
        self.mem
            .memory()
            .write_slice(data, addr)
            .expect("write inside guest memory");
    }

    /// Reads `len` bytes at `addr`.
    ///
    /// # Panics
    /// When `addr..addr + len` is outside guest memory.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, addr)
            .expect("read inside guest memory");
        v
    }

    /// The memory regions, for a vhost-user memory table.
    pub fn memory(&self) -> GuestMemoryLoadGuard<GuestMemoryMmap> {
        self.mem.memory()
    }

    /// Another mapping of this memory (the same memfd, at other host
    /// addresses), followed, with `extra = Some((at, len))`, by `len` bytes of
    /// a fresh memfd at guest address `at`: the memory table a VMM hands a
    /// backend again (SET_MEM_TABLE) when it remaps guest RAM or hot-plugs
    /// more. What is written through one mapping of the memfd is read
    /// through the other.
    pub fn remap(
        &self,
        extra: Option<(GuestAddress, usize)>,
    ) -> Result<GuestMemoryMmap, MemoryError> {
        let mem = self.mem.memory();
        let mut ranges = Vec::new();
        for r in mem.iter() {
            let file = r
                .file_offset()
                .ok_or_else(|| MemoryError::Map("a region without a file".into()))?;
            let file = FileOffset::from_arc(file.arc().clone(), file.start());
            ranges.push((r.start_addr(), r.len() as usize, Some(file)));
        }
        if let Some((at, len)) = extra {
            ranges.push((at, len, Some(FileOffset::new(memfd(len)?, 0))));
        }
        GuestMemoryMmap::<()>::from_ranges_with_files(ranges)
            .map_err(|e| MemoryError::Map(e.to_string()))
    }

    /// Writes one plain value at `addr`.
    ///
    /// # Panics
    /// When `addr` is outside guest memory.
    pub fn write_obj<T: ByteValued>(&self, addr: GuestAddress, v: T) {
        self.mem
            .memory()
            .write_obj(v, addr)
            .expect("write inside guest memory");
    }

    /// Reads one plain value at `addr`.
    ///
    /// # Panics
    /// When `addr` is outside guest memory.
    pub fn read_obj<T: ByteValued>(&self, addr: GuestAddress) -> T {
        self.mem
            .memory()
            .read_obj(addr)
            .expect("read inside guest memory")
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
    fn a_remap_shares_the_memory_and_can_grow_it() {
        let ram = GuestRam::new(1 << 16).unwrap();
        let more = ram.remap(Some((GuestAddress(1 << 20), 4096))).unwrap();
        ram.write(GuestAddress(100), b"shared");
        let mut got = [0u8; 6];
        more.read_slice(&mut got, GuestAddress(100)).unwrap();
        assert_eq!(&got, b"shared");
        let host = |m: &GuestMemoryMmap| m.get_host_address(GuestAddress(100)).unwrap();
        assert_ne!(host(&ram.memory()), host(&more), "another mapping");
        more.write_slice(b"new", GuestAddress(1 << 20)).unwrap();
        assert_eq!(more.num_regions(), 2);
        assert!(ram
            .memory()
            .get_host_address(GuestAddress(1 << 20))
            .is_err());
    }

    #[test]
    fn allocation_fails_cleanly_past_the_end() {
        let mut ram = GuestRam::new(4096).unwrap();
        assert!(ram.try_alloc(4097, 1).is_none());
        assert!(ram.try_alloc(8, 3).is_none());
        assert!(ram.try_alloc(u64::MAX, 1).is_none());
        assert_eq!(ram.try_alloc(4096, 4096), Some(GuestAddress(0)));
        assert!(ram.try_alloc(1, 1).is_none());
    }
}
