//! virtio-9p: 9P over a virtqueue, in-process or as a vhost-user backend.
//!
//! Each descriptor chain carries one T-message in its device-readable part
//! and room for the R-message in its device-writable part. Chains of one
//! queue are served in order, so a Tflush always finds the request it names
//! already answered. [`serve_chain`] is the whole transport; a VMM can call
//! it from its own queue handler, and [`P9VhostBackend`] wraps it as a
//! vhost-user device (virtio id 9, mount tag in the config space).

use passthrough::Access;
use std::io;
use std::sync::Arc;

use device_queue::{
    device_protocol_features, gather, iovecs, peek, segs_len, split_chain, Chain, DataOp, DataPath,
    DeviceCore, Kind, MemGuard, DEVICE_FEATURES,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::messages::{
    data_reply_header, decode_tframe, ty, DataRequest, Rmessage, Tmessage, HEADER_SIZE,
    RREAD_HEADER, TWRITE_HEADER,
};
use crate::server::{Server, Session};
use crate::wire::FrameHeader;

use crate::transport::wire_errno;
pub use device_queue::{IoEngine, QueueDevice};

/// `VIRTIO_9P_MOUNT_TAG`: the config space holds a mount tag.
pub const VIRTIO_9P_MOUNT_TAG: u64 = 0;
/// The longest mount tag accepted.
pub const MAX_TAG_LEN: usize = 255;

/// Why a chain got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
    /// The request is larger than the negotiated msize.
    #[error("request of {0} bytes exceeds msize")]
    TooLarge(usize),
    /// The chain has no room for even an error reply.
    #[error("reply buffer of {0} bytes is too small")]
    NoRoom(usize),
    /// Serving it panicked (a bug: no guest input should cause one); the
    /// chain goes back empty and the queue goes on.
    #[error("serving the request panicked")]
    Panicked,
}

/// Runs `serve` (a chain's serving, [`serve_chain`]) with a panic caught:
/// the chain is then returned empty ([`ChainError::Panicked`]) instead of
/// unwinding out of the worker, which holds the queue's lock while it
/// serves (a poisoned lock would fail the frontend's next ring request).
pub fn serve_caught(serve: impl FnOnce() -> Result<u32, ChainError>) -> Result<u32, ChainError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve))
        .unwrap_or(Err(ChainError::Panicked))
}

/// Serves the request in `chain` and writes the reply; returns its length.
pub fn serve_chain<M, T>(
    session: &Session,
    mem: &M,
    chain: DescriptorChain<T>,
) -> Result<u32, ChainError>
where
    M: GuestMemory,
    T: std::ops::Deref,
    T::Target: GuestMemory,
{
    let mut request = Vec::new();
    let mut out = Vec::new();
    for d in chain {
        if d.is_write_only() {
            out.push((d.addr(), d.len() as usize));
        } else {
            let len = d.len() as usize;
            if request.len() + len > session.msize() as usize {
                return Err(ChainError::TooLarge(request.len() + len));
            }
            let start = request.len();
            request.resize(start + len, 0);
            mem.read_slice(&mut request[start..], d.addr())
                .map_err(ChainError::Memory)?;
        }
    }
    let room: usize = out.iter().map(|(_, l)| l).sum();
    let reply = reply_for(session, &request, room);
    if reply.len() > room {
        return Err(ChainError::NoRoom(room));
    }
    let mut written = 0;
    for (addr, len) in out {
        if written == reply.len() {
            break;
        }
        let n = len.min(reply.len() - written);
        mem.write_slice(&reply[written..written + n], addr)
            .map_err(ChainError::Memory)?;
        written += n;
    }
    Ok(written as u32)
}

fn reply_for(session: &Session, request: &[u8], room: usize) -> Vec<u8> {
    let tag = FrameHeader::parse(request).map_or(0, |h| h.tag);
    let error = |e: i32| Rmessage::Lerror { ecode: e as u32 }.encode(tag);
    let reply = match decode_tframe(request) {
        Ok((_, Tmessage::Version { msize, version })) => {
            session.version(msize, version).encode(tag)
        }
        // Chains are served in order: whatever was flushed is answered.
        Ok((_, Tmessage::Flush { .. })) => Rmessage::Flush.encode(tag),
        Ok((_, Tmessage::Read { fid, offset, count })) => {
            // Never produce more data than the chain can hold.
            let count = count.min(room.saturating_sub(RREAD_HEADER) as u32);
            session
                .handle(Tmessage::Read { fid, offset, count })
                .into_frame(tag)
        }
        Ok((_, msg)) => session.handle(msg).into_frame(tag),
        Err(e) => error(wire_errno(&e)),
    };
    if reply.len() > room {
        error(libc::EMSGSIZE)
    } else {
        reply
    }
}

/// Tread and Twrite on the shared io_uring engine ([`device_queue`]):
/// the data moves between the host file and the guest's own buffers, with
/// no copy in the daemon. A chain is planned only if it is a well-formed
/// Tread or Twrite (the readable part exactly the frame, within msize) on a
/// fid opened for I/O, with room for the reply header, or a Tfsync of such
/// a fid (on the ring); everything else, every error reply included, goes
/// through [`serve_chain`].
pub struct P9Data<'a>(pub &'a Session);

/// A Tfsync frame's size.
const TFSYNC_SIZE: usize = HEADER_SIZE + 4 + 4;

impl DataPath for P9Data<'_> {
    fn plan(&self, mem: &MemGuard, chain: &Chain) -> Option<DataOp> {
        let session = self.0;
        // The frame's type: most chains stop here.
        let t = FrameHeader::parse(&peek::<HEADER_SIZE>(mem, chain)?)?.ty;
        if !matches!(t, ty::TREAD | ty::TWRITE | ty::TFSYNC) {
            return None;
        }
        let (readable, writable) = split_chain(chain)?;
        if t == ty::TFSYNC {
            // size[4] type[1] tag[2] fid[4] datasync[4]. It blocks on the
            // disk: on the ring, the queue goes on serving while it runs.
            let head = gather::<TFSYNC_SIZE>(mem, &readable)?;
            // The size field must be the frame's (the decoder checks).
            let Ok((tag, Tmessage::Fsync { fid, datasync })) = decode_tframe(&head) else {
                return None;
            };
            if segs_len(&readable) != TFSYNC_SIZE
                // Room for an Rlerror, the longest reply.
                || segs_len(&writable) < RREAD_HEADER
            {
                return None;
            }
            let (node, file) = session.data_file(fid, Access::Read)?;
            return Some(DataOp {
                head: chain.head_index(),
                id: u64::from(tag),
                kind: Kind::Fsync {
                    data_only: datasync != 0,
                },
                reply: writable,
                iovecs: Box::new([]),
                file: file as Arc<_>,
                offset: 0,
                inode: node,
            });
        }
        let hdr = gather::<TWRITE_HEADER>(mem, &readable)?;
        let (readable_len, writable_len) = (segs_len(&readable), segs_len(&writable));
        let req = DataRequest::parse(&hdr, readable_len)?;
        if readable_len > session.msize() as usize || writable_len < RREAD_HEADER {
            return None;
        }
        let (node, file, count) = session.data_target(&req)?;
        let (kind, iovecs) = match req.read {
            true => {
                let n = count.min((writable_len - RREAD_HEADER) as u32);
                (
                    Kind::Read,
                    iovecs(mem, &writable, RREAD_HEADER, n as usize)?,
                )
            }
            false => (
                Kind::Write,
                iovecs(mem, &readable, TWRITE_HEADER, count as usize)?,
            ),
        };
        Some(DataOp {
            head: chain.head_index(),
            id: u64::from(req.tag),
            kind,
            reply: writable,
            iovecs,
            file: file as Arc<_>,
            offset: req.offset,
            inode: node,
        })
    }

    fn reply_header(&self, op: &DataOp, res: i32, out: &mut Vec<u8>) -> u32 {
        let tag = op.id as u16;
        if matches!(op.kind, Kind::Fsync { .. }) && res >= 0 {
            let start = out.len();
            Rmessage::Fsync.encode_into(tag, out);
            return (out.len() - start) as u32;
        }
        let (header, size) = data_reply_header(op.kind == Kind::Read, tag, res);
        out.extend_from_slice(&header);
        size
    }
}

/// The virtio-9p device served over vhost-user: one request queue.
pub struct P9VhostBackend {
    session: Session,
    tag: Vec<u8>,
    /// Memory, event-idx, the exit event, and the engine: the queue's
    /// io_uring ring and its polling.
    core: DeviceCore,
}

/// Why the vhost-user 9P device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The tag is empty or too long.
    #[error("mount tag must be 1 to {MAX_TAG_LEN} bytes")]
    BadTag,
    /// The exit eventfd could not be created.
    #[error("cannot create exit event: {0}")]
    ExitEvent(io::Error),
}

impl P9VhostBackend {
    /// A device serving `server` under mount tag `tag`.
    pub fn new(server: Arc<Server>, tag: &str) -> Result<Self, BackendError> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(BackendError::BadTag);
        }
        Ok(P9VhostBackend {
            session: Session::new(server),
            tag: tag.as_bytes().to_vec(),
            core: DeviceCore::new(1, 1).map_err(BackendError::ExitEvent)?,
        })
    }

    /// Makes the request queue's io_uring ring now (with the io_uring
    /// engine): before the daemon's seccomp filter, which forbids making
    /// rings, goes up. Returns whether it has one.
    pub fn prepare_rings(&self) -> bool {
        let engine = self.core.engine();
        engine.prepare_rings([0]);
        engine.ready_rings() == 1
    }
}

impl QueueDevice for P9VhostBackend {
    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
}

impl VhostUserBackend for P9VhostBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        DEVICE_FEATURES | (1 << VIRTIO_9P_MOUNT_TAG)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        device_protocol_features() | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, enabled: bool) {
        self.core.set_event_idx(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_9p_config { le16 tag_len; u8 tag[]; }
        let mut config = (self.tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(&self.tag);
        device_queue::config_window(&config, offset, size)
    }

    fn reset_device(&self) {
        self.session.reset();
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.core.update_memory(mem);
        Ok(())
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.core.exit_event(thread_index)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        // Only an event this device never registered is an error: a queue
        // the guest broke is stopped by the serving loop, and this worker
        // thread goes on (see `device_queue::serve_kick_with`).
        let vring = device_queue::kicked_vring(vrings, device_event, evset)?;
        self.core.serve_kick(
            device_event as usize,
            vring,
            "virtio-9p queue",
            Some(&P9Data(&self.session)),
            |mem, chain| serve_caught(|| serve_chain(&self.session, &**mem, chain)),
        );
        Ok(())
    }
}
