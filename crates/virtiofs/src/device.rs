//! The vhost-user virtio-fs device: virtqueues in, FUSE dispatch, replies out.
//!
//! Queue 0 is the hiprio queue (FORGET, BATCH_FORGET, INTERRUPT); queues 1..
//! are request queues. Each available descriptor chain holds one FUSE request
//! (device-readable part) and room for its reply (device-writable part). A
//! chain that cannot be parsed, or whose request is malformed, is logged and
//! returned to the guest with whatever reply the FUSE server could write
//! (often an errno reply, else zero bytes): the device never panics on guest
//! input. Should serving a request panic all the same (a bug), the request
//! is answered with EIO and the queue goes on ([`serve_caught`]). A queue
//! the guest breaks as a whole (an impossible available index) is stopped
//! until the driver resets it, and the worker thread, with the other queues
//! it serves, goes on ([`device_queue::serve_kick_with`]).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use device_queue::{
    device_protocol_features, gather_obj, peek, scatter, segs_len, split_chain, Chain, DataPath,
    DeviceCore, MemGuard, DEFERRED, DEVICE_FEATURES,
};
use fuse_backend_rs::abi::fuse_abi::{InHeader, InitOut, InterruptIn, LkIn, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::FileLock;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use log::{debug, error};
use passthrough::request_ext::init_flags;
use passthrough::PassthroughFs;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::ByteValued;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::fast_path::{self, Route};
use crate::locks::{LockWaiter, PendingLock};
use crate::uring::FuseData;

pub use device_queue::{IoEngine, QueueDevice};

/// Guest memory as the vhost-user backend sees it.
pub use device_queue::GuestMem;

/// The largest queue the device accepts (the split-ring maximum).
pub const MAX_QUEUE_SIZE: usize = 32768;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: u16 = 0;
/// The longest tag the virtio-fs config space holds.
pub const TAG_LEN: usize = 36;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The tag does not fit the config space.
    #[error("tag {0:?} is longer than {TAG_LEN} bytes")]
    TagTooLong(String),
    /// No request queue was asked for.
    #[error("at least one request queue is needed")]
    NoRequestQueues,
    /// The exit eventfd could not be created.
    #[error("cannot create exit event: {0}")]
    ExitEvent(io::Error),
}

/// The virtio-fs device model served over vhost-user.
///
/// Worker thread 0 serves the hiprio queue and the first request queue;
/// every further request queue has a worker thread of its own. The device
/// state is shared between them without a device-wide lock.
pub struct VirtioFsBackend {
    server: Arc<Server<Arc<PassthroughFs>>>,
    fs: Arc<PassthroughFs>,
    request_queues: usize,
    tag: Option<String>,
    /// Per worker thread, the queues it serves (bit i: queue i).
    thread_queues: Vec<u64>,
    /// Memory, event-idx, one exit event per worker thread, and the engine:
    /// per queue (index = queue number) its io_uring ring and polling;
    /// hiprio uses neither.
    core: DeviceCore,
    /// Contended SETLKWs, answered off the queues ([`crate::locks`]).
    locks: LockWaiter,
}

impl VirtioFsBackend {
    /// A device serving `fs` with `request_queues` request queues. With a
    /// `tag`, the device offers the CONFIG protocol feature and reports the
    /// tag in its config space (for frontends that read it from the device).
    pub fn new(
        fs: Arc<PassthroughFs>,
        request_queues: usize,
        tag: Option<String>,
    ) -> Result<Self, DeviceError> {
        if request_queues == 0 {
            return Err(DeviceError::NoRequestQueues);
        }
        if let Some(t) = &tag {
            if t.len() > TAG_LEN {
                return Err(DeviceError::TagTooLong(t.clone()));
            }
        }
        Ok(VirtioFsBackend {
            server: Arc::new(Server::new(fs.clone())),
            locks: LockWaiter::new(fs.clone()),
            fs,
            request_queues,
            tag,
            // Thread 0: hiprio (queue 0) and request queue 1; thread i:
            // queue i + 1.
            thread_queues: std::iter::once(0b11u64)
                .chain((2..=request_queues).map(|q| 1u64 << q))
                .collect(),
            core: DeviceCore::new(request_queues + 1, request_queues)
                .map_err(DeviceError::ExitEvent)?,
        })
    }

    /// Makes every request queue's io_uring ring now (with the io_uring
    /// engine): before the daemon's seccomp filter, which forbids making
    /// rings, goes up. Returns how many queues have one.
    pub fn prepare_rings(&self) -> usize {
        let engine = self.core.engine();
        engine.prepare_rings(1..=self.request_queues);
        engine.ready_rings()
    }

    /// One line for the log: the requests each queue served.
    pub fn queue_report(&self) -> String {
        let counts = self.requests_per_queue();
        let used = counts.iter().skip(1).filter(|&&n| n > 0).count();
        let list: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(q, n)| {
                if q == 0 {
                    format!("hiprio {n}")
                } else {
                    format!("{q}: {n}")
                }
            })
            .collect();
        format!(
            "requests per queue: {} ({used} of {} request queues used)",
            list.join(", "),
            self.request_queues
        )
    }

    /// The filesystem core this device serves.
    pub fn fs(&self) -> &Arc<PassthroughFs> {
        &self.fs
    }

    /// A SETLKW in `chain` (from queue `vring`, named `queue`), where locks
    /// were offered: tried at once; if another holder conflicts, kept for
    /// the lock waiter and [`DEFERRED`] returned. `None` for any other
    /// request, or one too short to be a lock request (the server answers
    /// it). A FUSE_INTERRUPT is passed on to the waiter, then served as
    /// usual, and a FUSE_INIT drops what the waiter kept from the last
    /// session before it is served.
    fn lock_request(
        &self,
        mem: &MemGuard,
        chain: &Chain,
        vring: &VringRwLock,
        queue: &str,
    ) -> Option<usize> {
        const IN: usize = std::mem::size_of::<InHeader>();
        // Every request passes here while locks are offered: the opcode
        // first, from the head descriptor, and the chain's segment lists
        // only for the three opcodes this looks at.
        let start = peek::<8>(mem, chain)?;
        let opcode = u32::from_le_bytes([start[4], start[5], start[6], start[7]]);
        if ![Opcode::Init, Opcode::Interrupt, Opcode::Setlkw]
            .iter()
            .any(|o| *o as u32 == opcode)
        {
            return None;
        }
        let (readable, writable) = split_chain(chain)?;
        let header: InHeader = gather_obj(mem, &readable, 0)?;
        if header.opcode == Opcode::Init as u32 {
            // A new session (a driver reloaded, a guest rebooted): what was
            // kept from the last one is no longer anyone's to answer.
            self.locks.reset();
            return None;
        }
        if header.opcode == Opcode::Interrupt as u32 {
            if let Some(i) = gather_obj::<InterruptIn>(mem, &readable, IN) {
                self.locks.interrupt(i.unique);
            }
            return None;
        }
        if header.opcode != Opcode::Setlkw as u32 || segs_len(&writable) < OUT_HEADER {
            return None;
        }
        let lk: LkIn = gather_obj(mem, &readable, IN)?;
        let lock = FileLock {
            start: lk.lk.start,
            end: lk.lk.end,
            lock_type: lk.lk.type_,
            pid: lk.lk.pid,
        };
        let result = match self
            .fs
            .try_setlk(header.nodeid, lk.fh, lk.owner, lock, lk.lk_flags)
        {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let pending = PendingLock {
                    vring: vring.clone(),
                    queue: queue.to_owned(),
                    head: chain.head_index(),
                    writable: writable.clone(),
                    unique: header.unique,
                    inode: header.nodeid,
                    handle: lk.fh,
                    owner: lk.owner,
                    lock,
                    lk_flags: lk.lk_flags,
                };
                let kept = self
                    .core
                    .guest_memory()
                    .is_some_and(|m| self.locks.wait(pending, m));
                if kept {
                    return Some(DEFERRED as usize);
                }
                drop(e);
                Err(io::Error::from_raw_os_error(libc::ENOLCK))
            }
            r => r,
        };
        let reply = OutHeader {
            len: OUT_HEADER as u32,
            error: result
                .err()
                .map_or(0, |e| -e.raw_os_error().unwrap_or(libc::EIO)),
            unique: header.unique,
        };
        scatter(mem, &writable, reply.as_slice()).ok()?;
        Some(OUT_HEADER)
    }

    /// Serves one descriptor chain of queue `vring` (named `queue`);
    /// returns the number of reply bytes written, or [`DEFERRED`] for a
    /// chain kept to be answered later.
    fn handle_chain(
        &self,
        mem: &MemGuard,
        chain: Chain,
        vring: &VringRwLock,
        queue: &str,
    ) -> Result<usize, ChainError> {
        if self.fs.locks_offered() {
            if let Some(n) = self.lock_request(mem, &chain, vring, queue) {
                return Ok(n);
            }
        }
        let reader =
            Reader::from_descriptor_chain(&**mem, chain.clone()).map_err(ChainError::Reader)?;
        let writer = VirtioFsWriter::new(&**mem, chain.clone()).map_err(ChainError::Writer)?;
        let mut writer: Writer<_> = writer.into();
        let route = fast_path::try_handle(&self.fs, reader.clone(), &mut writer)
            .map_err(ChainError::Fuse)?;
        let serve = || {
            self.server
                .handle_message(reader, writer, None, None)
                .map_err(ChainError::Fuse)
        };
        match route {
            Route::Answered(n) => Ok(n),
            Route::Server => serve(),
            Route::Create(ext) => passthrough::with_create_ext(ext, serve),
            Route::Init { offered } => {
                // Nothing of the last session's holds until this one's
                // reply says so (a malformed INIT negotiates nothing).
                self.fs.clear_flags2();
                let n = serve()?;
                Ok(self.finish_init(mem, &chain, offered).unwrap_or(n))
            }
        }
    }

    /// Adds to the FUSE_INIT reply in `chain` the INIT flags above bit 31
    /// the core negotiates of those the guest `offered` (fuse-backend-rs
    /// 0.14 drops them), with FUSE_INIT_EXT, which tells the guest they
    /// are there. A failed INIT, or a reply too short to hold `flags2` (a
    /// guest older than 7.23), negotiates none. Where the core refuses the
    /// session (`--security-label=always` and a guest without it), the
    /// reply becomes that error; its new length is returned.
    fn finish_init(&self, mem: &MemGuard, chain: &Chain, offered: u64) -> Option<usize> {
        const LEN: usize = OUT_HEADER + std::mem::size_of::<InitOut>();
        let reply = split_chain(chain).and_then(|(_, writable)| {
            let out: OutHeader = gather_obj(mem, &writable, 0)?;
            let init: InitOut = gather_obj(mem, &writable, OUT_HEADER)?;
            // Major 7 only: to a newer guest the server answers with its
            // version alone, and the guest asks again.
            (out.error == 0 && out.len as usize >= LEN && init.major == 7)
                .then_some((writable, out, init))
        });
        let (writable, mut out, mut init) = reply?;
        let got = match self.fs.negotiate_flags2(offered) {
            Ok(got) => got,
            Err(e) => {
                out.len = OUT_HEADER as u32;
                out.error = -e.raw_os_error().unwrap_or(libc::EPROTO);
                if scatter(mem, &writable, out.as_slice()).is_err() {
                    error!("virtio-fs: cannot write the FUSE_INIT error reply");
                }
                return Some(OUT_HEADER);
            }
        };
        if got == 0 {
            return None;
        }
        init.flags |= init_flags::INIT_EXT as u32;
        init.flags2 |= (got >> 32) as u32;
        if scatter(mem, &writable, &[out.as_slice(), init.as_slice()].concat()).is_err() {
            error!("virtio-fs: cannot write the FUSE_INIT reply's flags2");
        }
        None
    }
}

impl QueueDevice for VirtioFsBackend {
    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
}

/// Why one descriptor chain got no regular reply.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The device-readable part is not in guest memory or malformed.
    #[error("bad device-readable descriptors: {0}")]
    Reader(fuse_backend_rs::transport::Error),
    /// The device-writable part is not in guest memory or malformed.
    #[error("bad device-writable descriptors: {0}")]
    Writer(fuse_backend_rs::transport::Error),
    /// The FUSE request could not be decoded or answered.
    #[error("malformed FUSE request: {0}")]
    Fuse(fuse_backend_rs::Error),
    /// Serving the request panicked, and the chain has no room for an
    /// error reply (or no readable FUSE header to answer).
    #[error("serving the request panicked; no room for an error reply")]
    Panicked,
}

/// `struct fuse_in_header` up to `unique`: len, opcode, unique.
const IN_HEADER_UNIQUE: usize = 16;
/// `struct fuse_out_header`.
const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();

/// Serves `chain` with `serve` (the device's whole per-request path),
/// returning the reply length. A panic while serving it (a bug: no guest
/// input should cause one) is caught and logged, and the request is
/// answered with `EIO` if the chain has a FUSE header and room for a reply
/// header; otherwise it is returned with no reply. Either way the queue,
/// and the worker thread serving it, go on.
pub fn serve_caught(
    mem: &MemGuard,
    chain: Chain,
    serve: impl FnOnce(&MemGuard, Chain) -> Result<usize, ChainError>,
) -> Result<usize, ChainError> {
    let kept = chain.clone();
    catch_unwind(AssertUnwindSafe(|| serve(mem, chain))).unwrap_or_else(|_| {
        error!(
            "virtio-fs: serving the request in chain {} panicked; answering EIO",
            kept.head_index()
        );
        eio_reply(mem, &kept)
    })
}

/// Overwrites whatever reply `chain` holds with a bare `EIO` reply to its
/// request; returns its length.
fn eio_reply(mem: &MemGuard, chain: &Chain) -> Result<usize, ChainError> {
    let header = peek::<IN_HEADER_UNIQUE>(mem, chain).ok_or(ChainError::Panicked)?;
    let (_, writable) = split_chain(chain).ok_or(ChainError::Panicked)?;
    if segs_len(&writable) < OUT_HEADER {
        return Err(ChainError::Panicked);
    }
    let unique = u64::from_le_bytes(header[8..16].try_into().map_err(|_| ChainError::Panicked)?);
    let reply = OutHeader {
        len: OUT_HEADER as u32,
        error: -libc::EIO,
        unique,
    };
    scatter(mem, &writable, reply.as_slice()).map_err(|_| ChainError::Panicked)?;
    Ok(OUT_HEADER)
}

impl VhostUserBackend for VirtioFsBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1 + self.request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        DEVICE_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = device_protocol_features();
        if self.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        f
    }

    fn set_event_idx(&self, enabled: bool) {
        self.core.set_event_idx(enabled);
    }

    fn reset_device(&self) {
        self.locks.reset();
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config = [0u8; TAG_LEN + 4];
        if let Some(tag) = &self.tag {
            config[..tag.len()].copy_from_slice(tag.as_bytes());
        }
        config[TAG_LEN..].copy_from_slice(&(self.request_queues as u32).to_le_bytes());
        device_queue::config_window(&config, offset, size)
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        self.core.update_memory(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.thread_queues.clone()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.core.exit_event(thread_index)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread: usize,
    ) -> io::Result<()> {
        // Only an event this device never registered is an error: a queue
        // the guest broke is stopped by the serving loop, and this worker
        // thread (thread 0 also serves hiprio) goes on.
        let vring = device_queue::kicked_vring(vrings, device_event, evset)?;
        // `device_event` counts this thread's queues only; the queue's own
        // number decides hiprio or not, and which ring and poller it uses.
        let queue = device_queue::queue_of_event(&self.thread_queues, thread, device_event)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "thread {thread} has no queue for event {device_event}"
                ))
            })?;
        if queue == HIPRIO_QUEUE as usize {
            debug!("hiprio queue kicked");
        }
        let name = format!("virtio-fs queue {queue}");
        let fuse = FuseData(&self.fs);
        let data: Option<&dyn DataPath> = (queue != HIPRIO_QUEUE as usize).then_some(&fuse);
        self.core
            .serve_kick(queue, vring, &name, data, |mem, chain| {
                serve_caught(mem, chain, |mem, chain| {
                    self.handle_chain(mem, chain, vring, &name)
                })
                .map(|n| n as u32)
            });
        Ok(())
    }
}
