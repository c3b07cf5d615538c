//! Arbitrary descriptor tables, indirect tables and ring indexes into
//! device-queue's chain walking and iovec planning, through a real split
//! queue in memfd guest memory (virtio-driver).
//!
//! Oracles: nothing panics; every host iovec the planner makes lies inside
//! the guest memory mapping; a chain's parts never add up to more than the
//! memory it could name; every chain taken (with a head inside the table)
//! is returned once.
#![no_main]

use device_queue::{available, gather, iovecs, return_chain, scatter, segs_len, split_chain};
use libfuzzer_sys::fuzz_target;
use virtio_driver::{GuestRam, SplitQueue};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};

/// Guest memory: small, so arbitrary addresses often land inside it.
const MEM: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&size_sel, rest)) = data.split_first() else {
        return;
    };
    // Queue sizes 1 to 64 (powers of two).
    let size = 1u16 << (size_sel % 7);
    let mut ram = GuestRam::new(MEM).expect("guest memory");
    let mut q = SplitQueue::new(&mut ram, size);
    let vring = q.vring(&ram).expect("vring");
    let (desc, _, _) = q.addresses();
    // The descriptor table verbatim from the input, then the rest of memory
    // after the queue (where descriptors may point, indirect tables too).
    let table_len = 16 * usize::from(size);
    let (table, rest) = rest.split_at(rest.len().min(table_len));
    ram.write(desc, table);
    let (heads, rest) = rest.split_at(rest.len().min(2 * usize::from(size)));
    let free = ram.alloc(0, 1).0;
    let room = (MEM as u64 - free) as usize;
    ram.write(GuestAddress(free), &rest[..rest.len().min(room)]);
    // Publish the heads the input names (any value, in range or not).
    for h in heads.chunks_exact(2) {
        q.publish(&ram, u16::from_le_bytes([h[0], h[1]]));
    }
    let mem = ram.atomic().memory();
    let host = mem.get_host_address(GuestAddress(0)).expect("host address") as usize;
    let Ok(chains) = available(&vring, &mem) else {
        return; // A broken ring stops the queue: fine.
    };
    // A head outside the table names no chain the driver could take back
    // (the used ring refuses it); every other chain must come back.
    let taken = chains.iter().filter(|c| c.head_index() < size).count();
    for chain in chains {
        let head = chain.head_index();
        let mut used = 0;
        if let Some((readable, writable)) = split_chain(&chain) {
            for segs in [&readable, &writable] {
                let len = segs_len(segs);
                if let Some(iov) = iovecs(&mem, segs, 0, len) {
                    let mut total = 0usize;
                    for v in iov.iter() {
                        let start = v.iov_base as usize;
                        assert!(start >= host && start + v.iov_len <= host + MEM);
                        total += v.iov_len;
                    }
                    assert_eq!(total, len, "iovecs cover the segments exactly");
                }
                let _ = gather::<40>(&mem, segs);
            }
            if scatter(&mem, &writable, &[0xa5; 64]).is_ok() {
                used = segs_len(&writable).min(64) as u32;
            }
        }
        return_chain(&vring, "fuzz", head, used);
    }
    // Every chain taken went back: the driver sees as many used entries.
    let mut returned = 0;
    while q.take_used(&ram).is_some() {
        returned += 1;
    }
    assert_eq!(returned, taken, "every chain taken is returned once");
});
