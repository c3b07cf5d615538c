//! The guest's RAM: memfd-backed (so vhost-user backends can map it), one
//! region at guest address 0. Everything the VMM does with it goes through
//! vm-memory's fallible accessors: nothing here panics.

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};

pub use virtio_driver::MemoryError;

/// The guest's RAM.
pub struct Ram {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    size: u64,
}

impl Ram {
    /// `size` bytes of RAM at guest address 0.
    pub fn new(size: usize) -> Result<Ram, MemoryError> {
        Ok(Ram {
            mem: GuestMemoryAtomic::new(virtio_driver::memory::memfd_memory(size)?),
            size: size as u64,
        })
    }

    /// The memory, as the devices see it.
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        self.mem.clone()
    }

    /// The size of the RAM, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The host address where the RAM is mapped (for KVM's memory slot).
    pub fn host_address(&self) -> Result<u64, MemoryError> {
        use vm_memory::GuestAddressSpace;
        self.mem
            .memory()
            .get_host_address(GuestAddress(0))
            .map(|p| p as u64)
            .map_err(|e| MemoryError::Map(e.to_string()))
    }
}
