//! virtio-9p: 9P over a virtqueue, in-process or as a vhost-user backend.
//!
//! Each descriptor chain carries one T-message in its device-readable part
//! and room for the R-message in its device-writable part. Chains of one
//! queue are served in order, so a Tflush always finds the request it names
//! already answered. [`serve_chain`] is the whole transport; a VMM can call
//! it from its own queue handler, and [`P9VhostBackend`] wraps it as a
//! vhost-user device (virtio id 9, mount tag in the config space).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use device_queue::MemorySlot;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::messages::{decode_tframe, peek_type_tag, Rmessage, Tmessage, HEADER_SIZE};
use crate::server::{Server, Session};
use crate::transport::wire_errno;

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
    let tag = peek_type_tag(request).map_or(0, |(_, t)| t);
    let error = |e: i32| Rmessage::Lerror { ecode: e as u32 }.encode(tag);
    let reply = match decode_tframe(request) {
        Ok((_, Tmessage::Version { msize, version })) => {
            session.version(msize, version).encode(tag)
        }
        // Chains are served in order: whatever was flushed is answered.
        Ok((_, Tmessage::Flush { .. })) => Rmessage::Flush.encode(tag),
        Ok((_, Tmessage::Read { fid, offset, count })) => {
            // Never produce more data than the chain can hold.
            let count = count.min(room.saturating_sub(HEADER_SIZE + 4) as u32);
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

/// The virtio-9p device served over vhost-user: one request queue.
pub struct P9VhostBackend {
    session: Session,
    tag: Vec<u8>,
    mem: MemorySlot,
    event_idx: AtomicBool,
    exit: (EventConsumer, EventNotifier),
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
            mem: MemorySlot::default(),
            event_idx: AtomicBool::new(false),
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)
                .map_err(BackendError::ExitEvent)?,
        })
    }

    /// Stops the worker thread.
    pub fn notify_exit(&self) -> io::Result<()> {
        self.exit.1.notify()
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
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_9P_MOUNT_TAG)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
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
        self.mem.set(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        let vring = device_queue::kicked_vring(vrings, device_event, evset)?;
        device_queue::serve_kick(
            vring,
            self.mem.snapshot(),
            self.event_idx.load(Ordering::Acquire),
            "virtio-9p queue",
            |mem, chain| serve_chain(&self.session, &**mem, chain),
        )
    }
}
