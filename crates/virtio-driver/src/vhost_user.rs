//! A vhost-user frontend: what a VMM does to hand guest memory and queues
//! to a backend process (ours or upstream's). [`VhostUserConn`] is the
//! connection a VMM holds (vmm-mini's vhost-user devices use it);
//! [`VhostUserDevice`] drives a backend from a test or a benchmark with
//! [`GuestRam`] and [`SplitQueue`]s, kicking and waiting as a guest would.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
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

/// A connection to a vhost-user backend, between SET_OWNER and the start of
/// the rings: what a VMM holds while the guest negotiates features.
pub struct VhostUserConn {
    frontend: Frontend,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    started: usize,
}

impl VhostUserConn {
    /// Connects to the backend at `socket` for `queues` queues: SET_OWNER,
    /// GET_FEATURES and the protocol features both sides know (MQ,
    /// REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS).
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
        let f = &mut self.frontend;
        f.set_features((acked & self.offered) | (self.offered & pf_bit))
            .map_err(step("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(step("memory region"))?;
        f.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        let hva = |a: GuestAddress| -> Result<u64, FrontendError> {
            mem.get_host_address(a)
                .map(|p| p as u64)
                .map_err(|_| FrontendError::BadAddress)
        };
        for (i, q) in queues.iter().enumerate() {
            f.set_vring_num(i, q.size).map_err(step("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: hva(q.desc)?,
                used_ring_addr: hva(q.used)?,
                avail_ring_addr: hva(q.avail)?,
                log_addr: None,
            };
            f.set_vring_addr(i, &cfg).map_err(step("SET_VRING_ADDR"))?;
            f.set_vring_base(i, 0).map_err(step("SET_VRING_BASE"))?;
            f.set_vring_call(i, q.call)
                .map_err(step("SET_VRING_CALL"))?;
            f.set_vring_kick(i, q.kick)
                .map_err(step("SET_VRING_KICK"))?;
            if self.offered & pf_bit != 0 {
                f.set_vring_enable(i, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        self.started = queues.len();
        Ok(())
    }

    /// Stops the started rings (GET_VRING_BASE), as on a device reset.
    pub fn stop(&mut self) -> Result<(), FrontendError> {
        let pf = self.offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        for i in 0..std::mem::take(&mut self.started) {
            if pf {
                self.frontend
                    .set_vring_enable(i, false)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(i)
                .map_err(step("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    /// Reads `len` bytes of the backend's config space (needs the CONFIG
    /// protocol feature).
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>, FrontendError> {
        let buf = vec![0u8; len as usize];
        let (_, data) = self
            .frontend
            .get_config(
                0,
                len,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &buf,
            )
            .map_err(step("GET_CONFIG"))?;
        Ok(data)
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
            .map(|(q, (kick, call))| {
                let (desc, avail, used) = q.addresses();
                VringSetup {
                    size: q.size(),
                    desc,
                    avail,
                    used,
                    kick,
                    call,
                }
            })
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
