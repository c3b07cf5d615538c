//! Descriptor chains as the data path sees them: the device-readable and
//! device-writable parts as guest segments ([`Seg`]), copies in and out of
//! them, and the host iovecs over guest memory that reads and writes use.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use crate::{Chain, MemGuard};

/// One guest buffer: address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Total length of `segs`.
pub fn segs_len(segs: &[Seg]) -> usize {
    segs.iter().map(|s| s.len as usize).sum()
}

/// Copies `data` into the start of `segs`.
pub fn scatter(
    mem: &MemGuard,
    segs: &[Seg],
    mut data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    for s in segs {
        if data.is_empty() {
            break;
        }
        let n = data.len().min(s.len as usize);
        mem.write_slice(&data[..n], GuestAddress(s.addr))?;
        data = &data[n..];
    }
    if !data.is_empty() {
        // The buffers are too short for the reply: the caller must not
        // report bytes it did not write.
        return Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: data.len() + segs.iter().map(|s| s.len as usize).sum::<usize>(),
            completed: segs.iter().map(|s| s.len as usize).sum(),
        });
    }
    Ok(())
}

/// Fills `out` from `segs`, starting `skip` bytes into them; `None` if they
/// are shorter or not in guest memory.
fn fill(mem: &MemGuard, segs: &[Seg], mut skip: usize, out: &mut [u8]) -> Option<()> {
    let mut filled = 0;
    for s in segs {
        if filled == out.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - filled);
        let at = s.addr.checked_add(skip as u64)?;
        mem.read_slice(&mut out[filled..filled + n], GuestAddress(at))
            .ok()?;
        filled += n;
        skip = 0;
    }
    (filled == out.len()).then_some(())
}

/// Reads `N` bytes starting at the beginning of `segs`, or `None` if they are
/// shorter or not in guest memory.
pub fn gather<const N: usize>(mem: &MemGuard, segs: &[Seg]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    fill(mem, segs, 0, &mut out)?;
    Some(out)
}

/// Reads one wire struct (a FUSE or virtio ABI type) `skip` bytes into
/// `segs`, or `None` if they are shorter or not in guest memory.
pub fn gather_obj<T: ByteValued + Default>(mem: &MemGuard, segs: &[Seg], skip: usize) -> Option<T> {
    let mut v = T::default();
    fill(mem, segs, skip, v.as_mut_slice())?;
    Some(v)
}

/// The first `N` bytes of `chain`'s device-readable part, read without
/// allocating: what a [`DataPath::plan`](crate::DataPath::plan) looks at first to turn away the
/// chains that are not its business (most of them, on a metadata
/// workload). `None` if the readable part is shorter.
pub fn peek<const N: usize>(mem: &MemGuard, chain: &Chain) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    for d in chain.clone() {
        if filled == N || d.is_write_only() {
            break;
        }
        let n = (d.len() as usize).min(N - filled);
        mem.read_slice(&mut out[filled..filled + n], d.addr())
            .ok()?;
        filled += n;
    }
    (filled == N).then_some(out)
}

/// The host iovecs for `len` bytes starting `skip` bytes into `segs`, or
/// `None` if they are not all in guest RAM or need more than `IOV_MAX`
/// segments (the synchronous path serves those). Buffers adjacent in host memory
/// (a guest's pages often are) make one iovec: fewer segments for the kernel
/// to walk.
pub fn iovecs(mem: &MemGuard, segs: &[Seg], skip: usize, len: usize) -> Option<Box<[libc::iovec]>> {
    let mut out: Vec<libc::iovec> = Vec::new();
    // Buffers adjacent in guest memory are translated as one run: one
    // region lookup for a whole run of pages instead of one per page.
    let mut run: Option<(u64, usize)> = None;
    let mut pos = 0usize;
    let mut left = len;
    for s in segs {
        let (start, end) = (pos, pos + s.len as usize);
        pos = end;
        if left == 0 {
            break;
        }
        if end <= skip {
            continue;
        }
        let from = skip.max(start) - start;
        let n = (s.len as usize - from).min(left);
        let addr = s.addr.checked_add(from as u64)?;
        run = match run {
            Some((a, l)) if a.checked_add(l as u64) == Some(addr) => Some((a, l + n)),
            Some((a, l)) => {
                push_host_run(mem, &mut out, a, l)?;
                Some((addr, n))
            }
            None => Some((addr, n)),
        };
        left -= n;
    }
    if let Some((a, l)) = run {
        push_host_run(mem, &mut out, a, l)?;
    }
    // preadv2 and io_uring refuse more than IOV_MAX segments.
    (left == 0 && out.len() <= libc::UIO_MAXIOV as usize).then(|| out.into_boxed_slice())
}

/// Appends the host iovecs of the guest range `addr..addr + len` (which may
/// span memory regions) to `out`, merging with the last one when adjacent
/// in host memory.
fn push_host_run(mem: &MemGuard, out: &mut Vec<libc::iovec>, addr: u64, len: usize) -> Option<()> {
    for slice in mem.get_slices(GuestAddress(addr), len) {
        let slice = slice.ok()?;
        let base: *mut libc::c_void = slice.ptr_guard_mut().as_ptr().cast();
        let n = slice.len();
        match out.last_mut() {
            Some(prev) if (prev.iov_base as usize).wrapping_add(prev.iov_len) == base as usize => {
                prev.iov_len += n
            }
            _ => out.push(libc::iovec {
                iov_base: base,
                iov_len: n,
            }),
        }
    }
    Some(())
}

/// A chain's device-readable and device-writable buffers, or `None` if a
/// readable buffer follows a writable one (the synchronous path refuses it).
pub fn split_chain(chain: &Chain) -> Option<(Vec<Seg>, Vec<Seg>)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for d in chain.clone() {
        let seg = Seg {
            addr: d.addr().0,
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return None;
        }
    }
    Some((readable, writable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

    fn mem() -> MemGuard {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        vm_memory::GuestMemoryAtomic::new(m).memory()
    }

    #[test]
    fn gather_and_iovecs_walk_segments() {
        let m = mem();
        m.write_slice(b"abcdefghij", GuestAddress(0x100)).unwrap();
        m.write_slice(b"KLMNOP", GuestAddress(0x800)).unwrap();
        let segs = [
            Seg {
                addr: 0x100,
                len: 10,
            },
            Seg {
                addr: 0x800,
                len: 6,
            },
        ];
        assert_eq!(&gather::<13>(&m, &segs).unwrap(), b"abcdefghijKLM");
        assert_eq!(&gather::<16>(&m, &segs).unwrap(), b"abcdefghijKLMNOP");
        assert!(gather::<17>(&m, &segs).is_none(), "past the end");
        let iov = iovecs(&m, &segs, 9, 4).unwrap();
        assert_eq!(iov.len(), 2);
        assert_eq!((iov[0].iov_len, iov[1].iov_len), (1, 3));
        // Adjacent buffers merge into one iovec.
        let adjacent = [
            Seg {
                addr: 0x100,
                len: 10,
            },
            Seg {
                addr: 0x10a,
                len: 6,
            },
        ];
        let iov = iovecs(&m, &adjacent, 2, 12).unwrap();
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 12);
        assert!(iovecs(&m, &segs, 0, 17).is_none());
        // Outside guest memory.
        let outside = [Seg {
            addr: 1 << 20,
            len: 8,
        }];
        assert!(iovecs(&m, &outside, 0, 8).is_none());
        assert!(gather::<8>(&m, &outside).is_none());
    }

    #[test]
    fn scatter_spans_segments() {
        let m = mem();
        let segs = [Seg { addr: 0x10, len: 3 }, Seg { addr: 0x40, len: 8 }];
        scatter(&m, &segs, b"12345").unwrap();
        let mut a = [0u8; 3];
        let mut b = [0u8; 2];
        m.read_slice(&mut a, GuestAddress(0x10)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x40)).unwrap();
        assert_eq!((&a, &b), (b"123", b"45"));
        // A reply longer than the buffers is an error, not a silent cut.
        let short = [Seg { addr: 0x10, len: 3 }];
        assert!(scatter(&m, &short, b"12345").is_err());
        assert!(scatter(&m, &short, b"123").is_ok());
    }
}
