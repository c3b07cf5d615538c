//! FUSE READ and WRITE on the shared io_uring engine
//! ([`device_queue`]): this module says which chains are plain reads
//! and writes of an open handle and writes their reply headers; the engine
//! tries each inline with `RWF_NOWAIT`, puts what would block on the queue's
//! ring with iovecs straight into guest memory, and batches the replies.
//!
//! A chain is planned only if its layout is the one this module understands:
//! header and arguments in the device-readable part, data buffers in guest
//! RAM, a known open handle, a writable share for WRITE, no
//! `FUSE_WRITE_KILL_SUIDGID`, at most 1 MiB. FSYNC of an open handle goes
//! on the ring as well (it blocks on the disk; the queue goes on meanwhile).
//! Everything else, including every error reply, goes through the
//! synchronous FUSE path.

use std::mem::size_of;
use std::sync::Arc;

use device_queue::{gather_obj, iovecs, peek, segs_len, split_chain, DataOp, DataPath, Kind};
use device_queue::{Chain, MemGuard};
use fuse_backend_rs::abi::fuse_abi::{
    FsyncIn, InHeader, Opcode, OutHeader, ReadIn, WriteIn, WriteOut, WRITE_KILL_PRIV,
};
use passthrough::{Access, PassthroughFs};
use vm_memory::ByteValued;

const IN_HEADER: usize = size_of::<InHeader>();
const OUT_HEADER: usize = size_of::<OutHeader>();
/// `fuse_read_in` and `fuse_write_in` have one size.
const RW_IN: usize = size_of::<ReadIn>();
/// `fuse_fsync_in.fsync_flags`: only the data.
const FSYNC_FDATASYNC: u32 = 1;
/// Largest READ/WRITE the engine takes (the synchronous path's limit too).
const MAX_IO: u32 = 1 << 20;

/// The FUSE side of the engine, on the device's filesystem.
pub struct FuseData<'a>(pub &'a PassthroughFs);

/// Whether `size` bytes at `offset` is a READ or WRITE the engine takes.
fn io_in_range(offset: u64, size: u32) -> bool {
    size <= MAX_IO
        && offset
            .checked_add(u64::from(size))
            .is_some_and(|end| end <= i64::MAX as u64)
}

impl DataPath for FuseData<'_> {
    fn plan(&self, mem: &MemGuard, chain: &Chain) -> Option<DataOp> {
        // fuse_in_header's len and opcode: most chains stop here.
        let op = peek::<8>(mem, chain)?;
        let opcode = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let kind = match opcode {
            o if o == Opcode::Read as u32 => Kind::Read,
            o if o == Opcode::Write as u32 => Kind::Write,
            // FSYNC blocks on the disk: on the ring, the queue goes on
            // serving while it runs.
            o if o == Opcode::Fsync as u32 => Kind::Fsync { data_only: false },
            _ => return None,
        };
        let (readable, writable) = split_chain(chain)?;
        let h: InHeader = gather_obj(mem, &readable, 0)?;
        let writable_len = segs_len(&writable);
        let (fh, offset, iovecs, kind, access) = match kind {
            Kind::Fsync { .. } => {
                let f: FsyncIn = gather_obj(mem, &readable, IN_HEADER)?;
                if h.len as usize != IN_HEADER + size_of::<FsyncIn>() || writable_len < OUT_HEADER {
                    return None;
                }
                let data_only = f.fsync_flags & FSYNC_FDATASYNC != 0;
                let kind = Kind::Fsync { data_only };
                (f.fh, 0, Box::default(), kind, Access::Read)
            }
            Kind::Read => {
                let r: ReadIn = gather_obj(mem, &readable, IN_HEADER)?;
                if !io_in_range(r.offset, r.size)
                    || writable_len < OUT_HEADER
                    || h.len as usize != IN_HEADER + RW_IN
                {
                    return None;
                }
                let n = (r.size as usize).min(writable_len - OUT_HEADER);
                let iov = iovecs(mem, &writable, OUT_HEADER, n)?;
                (r.fh, r.offset, iov, kind, Access::Read)
            }
            Kind::Write => {
                let w: WriteIn = gather_obj(mem, &readable, IN_HEADER)?;
                // fuse_write_in.write_flags (fuse_abi: fuse_flags) with
                // FUSE_WRITE_KILL_SUIDGID (fuse_abi's older name: KILL_PRIV):
                // the server must drop set-id bits; the synchronous path
                // owns that.
                if !io_in_range(w.offset, w.size)
                    || w.fuse_flags & WRITE_KILL_PRIV != 0
                    || writable_len < OUT_HEADER + size_of::<WriteOut>()
                    || h.len as usize != IN_HEADER + RW_IN + w.size as usize
                {
                    return None;
                }
                let iov = iovecs(mem, &readable, IN_HEADER + RW_IN, w.size as usize)?;
                // A write to a read-only share goes the synchronous way, for
                // its EROFS reply.
                (w.fh, w.offset, iov, kind, Access::Write)
            }
        };
        let file = self.0.data_handle(h.nodeid, fh, access).ok()?;
        Some(DataOp {
            head: chain.head_index(),
            id: h.unique,
            kind,
            reply: writable,
            iovecs,
            file: file as Arc<_>,
            offset,
            inode: h.nodeid,
        })
    }

    fn reply_header(&self, op: &DataOp, res: i32, out: &mut Vec<u8>) -> u32 {
        let write_out = (res >= 0 && op.kind == Kind::Write).then_some(WriteOut {
            size: res as u32,
            padding: 0,
        });
        let data_len = match op.kind {
            Kind::Read if res > 0 => res as u32,
            _ => 0,
        };
        let body_len = write_out.map_or(0, |_| size_of::<WriteOut>());
        let header = OutHeader {
            len: (OUT_HEADER + body_len) as u32 + data_len,
            error: res.min(0),
            unique: op.id,
        };
        out.extend_from_slice(header.as_slice());
        if let Some(w) = write_out {
            out.extend_from_slice(w.as_slice());
        }
        header.len
    }
}
