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

use passthrough::Access;
use std::sync::Arc;

use device_queue::{gather, iovecs, peek, segs_len, split_chain, DataOp, DataPath, Kind};
use device_queue::{Chain, MemGuard};
use passthrough::PassthroughFs;

/// FUSE opcodes taken by the engine.
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_FSYNC: u32 = 20;
/// `struct fuse_fsync_in`.
const FSYNC_IN: usize = 16;
/// `fuse_fsync_in.fsync_flags`: only the data.
const FSYNC_FDATASYNC: u32 = 1;
/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// `struct fuse_read_in` / `struct fuse_write_in`.
const RW_IN: usize = 40;
/// `struct fuse_out_header`.
const OUT_HEADER: usize = 16;
/// `struct fuse_write_out`.
const WRITE_OUT: usize = 8;
/// Largest READ/WRITE the engine takes (the synchronous path's limit too).
const MAX_IO: u32 = 1 << 20;
/// `fuse_write_in.write_flags`: the server must drop set-id bits; the
/// synchronous path owns that.
const WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// The FUSE side of the engine, on the device's filesystem.
pub struct FuseData<'a>(pub &'a PassthroughFs);

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

impl DataPath for FuseData<'_> {
    fn plan(&self, mem: &MemGuard, chain: &Chain) -> Option<DataOp> {
        // fuse_in_header's len and opcode: most chains stop here.
        let op = peek::<8>(mem, chain)?;
        if !matches!(u32_at(&op, 4), FUSE_READ | FUSE_WRITE | FUSE_FSYNC) {
            return None;
        }
        let (readable, writable) = split_chain(chain)?;
        let kind = match u32_at(&op, 4) {
            FUSE_READ => Kind::Read,
            FUSE_WRITE => Kind::Write,
            _ => {
                // FSYNC blocks on the disk: on the ring, the queue goes on
                // serving while it runs.
                let head = gather::<{ IN_HEADER + FSYNC_IN }>(mem, &readable)?;
                let args = &head[IN_HEADER..];
                if u32_at(&head, 0) as usize != IN_HEADER + FSYNC_IN
                    || segs_len(&writable) < OUT_HEADER
                {
                    return None;
                }
                let nodeid = u64_at(&head, 16);
                let file = self
                    .0
                    .data_handle(nodeid, u64_at(args, 0), Access::Read)
                    .ok()?;
                return Some(DataOp {
                    head: chain.head_index(),
                    id: u64_at(&head, 8),
                    kind: Kind::Fsync {
                        data_only: u32_at(args, 8) & FSYNC_FDATASYNC != 0,
                    },
                    reply: writable,
                    iovecs: Box::new([]),
                    file: file as Arc<_>,
                    offset: 0,
                    inode: nodeid,
                });
            }
        };
        let hdr = gather::<{ IN_HEADER + RW_IN }>(mem, &readable)?;
        let (len, unique, nodeid) = (u32_at(&hdr, 0), u64_at(&hdr, 8), u64_at(&hdr, 16));
        let args = &hdr[IN_HEADER..];
        let (fh, offset, size) = (u64_at(args, 0), u64_at(args, 8), u32_at(args, 16));
        if size > MAX_IO || offset.checked_add(u64::from(size))? > i64::MAX as u64 {
            return None;
        }
        let writable_len = segs_len(&writable);
        let iovecs = match kind {
            Kind::Read => {
                if writable_len < OUT_HEADER || len as usize != IN_HEADER + RW_IN {
                    return None;
                }
                let n = (size as usize).min(writable_len - OUT_HEADER);
                iovecs(mem, &writable, OUT_HEADER, n)?
            }
            Kind::Write => {
                if u32_at(args, 20) & WRITE_KILL_SUIDGID != 0
                    || writable_len < OUT_HEADER + WRITE_OUT
                    || len as usize != IN_HEADER + RW_IN + size as usize
                {
                    return None;
                }
                iovecs(mem, &readable, IN_HEADER + RW_IN, size as usize)?
            }
            Kind::Fsync { .. } => return None,
        };
        // A write to a read-only share goes the synchronous way, for its
        // EROFS reply.
        let access = match kind {
            Kind::Write => Access::Write,
            _ => Access::Read,
        };
        let file = self.0.data_handle(nodeid, fh, access).ok()?;
        Some(DataOp {
            head: chain.head_index(),
            id: unique,
            kind,
            reply: writable,
            iovecs,
            file: file as Arc<_>,
            offset,
            inode: nodeid,
        })
    }

    fn reply_header(&self, op: &DataOp, res: i32, out: &mut Vec<u8>) -> u32 {
        let (error, body_len, data_len) = match (res, op.kind) {
            (r, _) if r < 0 => (r, 0, 0),
            (n, Kind::Read) => (0, 0, n as u32),
            (_, Kind::Write) => (0, WRITE_OUT, 0),
            (_, Kind::Fsync { .. }) => (0, 0, 0),
        };
        let len = (OUT_HEADER + body_len) as u32 + data_len;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&error.to_le_bytes());
        out.extend_from_slice(&op.id.to_le_bytes());
        if body_len > 0 {
            out.extend_from_slice(&(res as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        len
    }
}
