//! A vhost-user frontend: what a VMM does to hand guest memory and queues
//! to a backend process (ours or upstream's). [`VhostUserConn`] is the
//! connection a VMM holds (vmm-mini's vhost-user devices use it);
//! [`VhostUserDevice`] drives a backend from a test or a benchmark with
//! [`GuestRam`] and [`SplitQueue`]s, kicking and waiting as a guest would,
//! and does what a VMM does to running queues: a new memory table, a queue
//! stopped (GET_VRING_BASE) and resumed, rings at addresses of its choice.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestRam;
use crate::queue::SplitQueue;
use crate::wait::wait_until;

/// Why the frontend could not set the device up.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A vhost-user request failed.
    #[error("vhost-user {step}: {source}")]
    Protocol {
        /// What was being done.
        step: &'static str,
        /// What vhost said.
        source: vhost::Error,
    },
    /// An eventfd could not be created or used.
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    /// A queue address is outside guest memory.
    #[error("queue address outside guest memory")]
    BadAddress,
    /// The backend serves fewer queues than the device needs.
    #[error("the backend serves at most {offered} queues, {wanted} needed")]
    TooFewQueues {
        /// Queues needed.
        wanted: usize,
        /// The backend's GET_QUEUE_NUM.
        offered: usize,
    },
}

fn step(step: &'static str) -> impl Fn(vhost::Error) -> FrontendError {
    move |source| FrontendError::Protocol { step, source }
}

/// A queue handed to a backend: where it lies in guest memory and its kick
/// and call eventfds.
pub struct VringSetup<'a> {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
    /// What the driver writes to notify the backend.
    pub kick: &'a EventFd,
    /// What the backend writes to interrupt the driver.
    pub call: &'a EventFd,
}

/// Where a queue's rings are, as host addresses of the frontend's mapping
/// of guest memory: what SET_VRING_ADDR carries, and what the backend
/// translates through the memory table's regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl RingAddrs {
    /// Where `q`'s rings are in `mem`, or [`FrontendError::BadAddress`] if
    /// one does not start inside it.
    pub fn of(mem: &GuestMemoryMmap, q: &VringSetup<'_>) -> Result<RingAddrs, FrontendError> {
        let hva = |a: GuestAddress| -> Result<u64, FrontendError> {
            mem.get_host_address(a)
                .map(|p| p as u64)
                .map_err(|_| FrontendError::BadAddress)
        };
        Ok(RingAddrs {
            desc: hva(q.desc)?,
            avail: hva(q.avail)?,
            used: hva(q.used)?,
        })
    }
}

/// A connection to a vhost-user backend, between SET_OWNER and the start of
/// the rings: what a VMM holds while the guest negotiates features.
pub struct VhostUserConn {
    frontend: Frontend,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    started: usize,
    reply_timeout: Option<Duration>,
}

impl VhostUserConn {
    /// Connects to the backend at `socket` for `queues` queues: SET_OWNER,
    /// GET_FEATURES and the protocol features both sides know (MQ,
    /// REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS); with REPLY_ACK, every later
    /// request without a reply of its own waits for its acknowledgement.
    pub fn connect(socket: &Path, queues: usize) -> Result<Self, FrontendError> {
        let mut f = Frontend::connect(socket, queues as u64).map_err(step("connect"))?;
        f.set_owner().map_err(step("SET_OWNER"))?;
        let offered = f.get_features().map_err(step("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let pf = f
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            protocol = pf
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
            f.set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
            // As QEMU does with REPLY_ACK: every request that has no reply
            // of its own waits for the backend's acknowledgement, so what
            // follows (a request in memory a SET_MEM_TABLE just added, a
            // kick after SET_VRING_KICK) finds it applied.
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let max = f.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
                if (max as usize) < queues {
                    return Err(FrontendError::TooFewQueues {
                        wanted: queues,
                        offered: max as usize,
                    });
                }
            }
        }
        Ok(VhostUserConn {
            frontend: f,
            offered,
            protocol,
            started: 0,
            reply_timeout: None,
        })
    }

    /// The virtio features the backend offers (without the vhost-user
    /// PROTOCOL_FEATURES bit).
    pub fn offered(&self) -> u64 {
        self.offered & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The protocol features both sides agreed on.
    pub fn protocol(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Starts the rings: SET_FEATURES (`acked`), SET_MEM_TABLE (`mem`'s
    /// regions, which must be file-backed), then for each queue its size,
    /// addresses, base 0, call and kick eventfds, and SET_VRING_ENABLE.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        queues: &[VringSetup<'_>],
    ) -> Result<(), FrontendError> {
        let pf_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features((acked & self.offered) | (self.offered & pf_bit))
            .map_err(step("SET_FEATURES"))?;
        self.set_mem_table(mem)?;
        for (i, q) in queues.iter().enumerate() {
            self.start_vring(i, q, RingAddrs::of(mem, q)?, 0)?;
        }
        Ok(())
    }

    /// SET_MEM_TABLE with `mem`'s regions (which must be file-backed): at
    /// start, and again whenever the guest's memory map changes (the
    /// backend maps the new table and drops the old one). Queues keep
    /// their guest addresses.
    pub fn set_mem_table(&mut self, mem: &GuestMemoryMmap) -> Result<(), FrontendError> {
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(step("memory region"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(step("SET_MEM_TABLE"))
    }

    /// Starts queue `index` with `q`'s size and eventfds, its rings at
    /// `rings` (taken as they are: [`RingAddrs::of`] gives the right ones),
    /// the backend's next available index at `base`: SET_VRING_NUM, _ADDR,
    /// _BASE, _CALL, _KICK and, with protocol features, _ENABLE. Also how a
    /// stopped queue is resumed ([`VhostUserConn::stop_vring`]).
    pub fn start_vring(
        &mut self,
        index: usize,
        q: &VringSetup<'_>,
        rings: RingAddrs,
        base: u16,
    ) -> Result<(), FrontendError> {
        let f = &mut self.frontend;
        f.set_vring_num(index, q.size)
            .map_err(step("SET_VRING_NUM"))?;
        let cfg = VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: rings.desc,
            used_ring_addr: rings.used,
            avail_ring_addr: rings.avail,
            log_addr: None,
        };
        f.set_vring_addr(index, &cfg)
            .map_err(step("SET_VRING_ADDR"))?;
        f.set_vring_base(index, base)
            .map_err(step("SET_VRING_BASE"))?;
        f.set_vring_call(index, q.call)
            .map_err(step("SET_VRING_CALL"))?;
        f.set_vring_kick(index, q.kick)
            .map_err(step("SET_VRING_KICK"))?;
        if self.offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            f.set_vring_enable(index, true)
                .map_err(step("SET_VRING_ENABLE"))?;
        }
        self.started = self.started.max(index + 1);
        Ok(())
    }

    /// Stops queue `index` as a VMM does before a reset or a migration:
    /// SET_VRING_ENABLE 0 (with protocol features), then GET_VRING_BASE.
    /// Returns the backend's answer, the available index it would serve
    /// next; [`VhostUserConn::start_vring`] with it resumes the queue.
    pub fn stop_vring(&mut self, index: usize) -> Result<u16, FrontendError> {
        if self.offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.frontend
                .set_vring_enable(index, false)
                .map_err(step("SET_VRING_ENABLE"))?;
        }
        let base = self
            .awaiting(|f| f.get_vring_base(index))
            .map_err(step("GET_VRING_BASE"))?;
        // Split queues: the low 16 bits are the index, the rest reserved.
        Ok(base as u16)
    }

    /// Stops the started rings ([`VhostUserConn::stop_vring`]), as on a
    /// device reset.
    pub fn stop(&mut self) -> Result<(), FrontendError> {
        for i in 0..std::mem::take(&mut self.started) {
            self.stop_vring(i)?;
        }
        Ok(())
    }

    /// Makes each request that waits for the backend's reply
    /// (GET_VRING_BASE, GET_CONFIG) fail after `timeout` rather than wait
    /// forever on a backend that stopped answering: the socket is then shut
    /// down, and the connection is of no more use. `None` waits forever
    /// (the default). For tests, which must not hang.
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.reply_timeout = timeout;
    }

    /// Runs `request`, which waits for the backend's reply, under the reply
    /// timeout ([`VhostUserConn::set_reply_timeout`]).
    fn awaiting<T>(&mut self, request: impl FnOnce(&mut Frontend) -> T) -> T {
        let Some(timeout) = self.reply_timeout else {
            return request(&mut self.frontend);
        };
        let fd = self.frontend.as_raw_fd();
        let (done, watch) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || {
                if watch.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) {
                    // SAFETY: `fd` is the frontend's socket, open until this
                    // scope ends (the frontend outlives it); shutting it down
                    // makes the read waiting on it, and any later one, fail.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            });
            let r = request(&mut self.frontend);
            // The watchdog stops at once: its channel is closed.
            drop(done);
            r
        })
    }

    /// Reads `len` bytes of the backend's config space (needs the CONFIG
    /// protocol feature).
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>, FrontendError> {
        let buf = vec![0u8; len as usize];
        let flags = vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE;
        let (_, data) = self
            .awaiting(|f| f.get_config(0, len, flags, &buf))
            .map_err(step("GET_CONFIG"))?;
        Ok(data)
    }
}

/// `queue` handed over with `kick` and `call`.
fn vring_setup<'a>(kick: &'a EventFd, call: &'a EventFd, queue: &SplitQueue) -> VringSetup<'a> {
    let (desc, avail, used) = queue.addresses();
    VringSetup {
        size: queue.size(),
        desc,
        avail,
        used,
        kick,
        call,
    }
}

/// A vhost-user device driven from the driver's side.
pub struct VhostUserDevice {
    conn: VhostUserConn,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// The virtio features both sides agreed on.
    pub features: u64,
    /// The protocol features both sides agreed on.
    pub protocol: VhostUserProtocolFeatures,
}

impl VhostUserDevice {
    /// Connects to the backend at `socket`, negotiates `want` features,
    /// maps `ram` and sets up `queues` in order. A queue that is to use
    /// `VIRTIO_RING_F_EVENT_IDX` needs [`SplitQueue::set_event_idx`] when
    /// [`VhostUserDevice::features`] has it.
    pub fn connect(
        socket: &Path,
        ram: &GuestRam,
        queues: &[&SplitQueue],
        want: u64,
    ) -> Result<Self, FrontendError> {
        Self::connect_within(socket, ram, queues, want, Duration::ZERO)
    }

    /// [`VhostUserDevice::connect`], trying again every 10 ms for up to
    /// `patience` while the socket is not there yet (a backend starting).
    pub fn connect_within(
        socket: &Path,
        ram: &GuestRam,
        queues: &[&SplitQueue],
        want: u64,
        patience: Duration,
    ) -> Result<Self, FrontendError> {
        let start = Instant::now();
        let mut conn = loop {
            match VhostUserConn::connect(socket, queues.len()) {
                Ok(c) => break c,
                Err(e) if start.elapsed() >= patience => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let features = conn.offered() & want;
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for _ in queues {
            kicks.push(EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?);
            calls.push(EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?);
        }
        let setups: Vec<VringSetup<'_>> = queues
            .iter()
            .zip(kicks.iter().zip(&calls))
            .map(|(q, (kick, call))| vring_setup(kick, call, q))
            .collect();
        conn.start(&ram.memory(), features, &setups)?;
        let protocol = conn.protocol();
        Ok(VhostUserDevice {
            conn,
            kicks,
            calls,
            features,
            protocol,
        })
    }

    /// Reads `len` bytes of the device's config space.
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>, FrontendError> {
        self.conn.config(len)
    }

    /// [`VhostUserConn::set_reply_timeout`].
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.conn.set_reply_timeout(timeout);
    }

    /// Hands the backend `mem` as guest memory from now on (SET_MEM_TABLE;
    /// [`GuestRam::remap`] makes one), as a VMM does when the guest's
    /// memory map changes under running queues.
    pub fn set_mem_table(&mut self, mem: &GuestMemoryMmap) -> Result<(), FrontendError> {
        self.conn.set_mem_table(mem)
    }

    /// Stops queue `q` ([`VhostUserConn::stop_vring`]); the available index
    /// the backend would serve next.
    pub fn stop_queue(&mut self, q: usize) -> Result<u16, FrontendError> {
        self.conn.stop_vring(q)
    }

    /// Starts queue `q` again, with `queue`'s rings in `mem`, this device's
    /// eventfds for it, and `base` as the next available index (what
    /// [`VhostUserDevice::stop_queue`] returned, to resume; 0 for fresh
    /// rings).
    pub fn start_queue(
        &mut self,
        q: usize,
        mem: &GuestMemoryMmap,
        queue: &SplitQueue,
        base: u16,
    ) -> Result<(), FrontendError> {
        let setup = vring_setup(&self.kicks[q], &self.calls[q], queue);
        let rings = RingAddrs::of(mem, &setup)?;
        self.conn.start_vring(q, &setup, rings, base)
    }

    /// [`VhostUserDevice::start_queue`] with the ring addresses sent as
    /// they are, unchecked (a range past the end of guest memory, or
    /// outside it altogether): what a broken or hostile frontend does.
    pub fn start_queue_at(
        &mut self,
        q: usize,
        queue: &SplitQueue,
        rings: RingAddrs,
        base: u16,
    ) -> Result<(), FrontendError> {
        let setup = vring_setup(&self.kicks[q], &self.calls[q], queue);
        self.conn.start_vring(q, &setup, rings, base)
    }

    /// Notifies queue `q`.
    pub fn kick(&self, q: usize) -> io::Result<()> {
        self.kicks[q].write(1)
    }

    /// Queue `q`'s call eventfd (the interrupt the backend raises).
    pub fn call(&self, q: usize) -> &EventFd {
        &self.calls[q]
    }

    /// Waits until `done()` holds, re-checking whenever queue `q`'s call
    /// eventfd fires (and at least every 50 ms); false on timeout.
    pub fn wait(&self, q: usize, timeout: Duration, done: impl FnMut() -> bool) -> bool {
        let call = &self.calls[q];
        wait_until(
            &[call],
            Duration::from_millis(50),
            timeout,
            |_| {
                let _ = call.read();
            },
            done,
        )
    }
}
