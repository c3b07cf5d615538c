//! A vhost-user frontend for the harness: hands a backend process (ours or
//! upstream's) the harness's guest memory and queues, then kicks and waits
//! like a VMM would.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::harness::{GuestRam, SplitQueue};

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;

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
}

fn step(step: &'static str) -> impl Fn(vhost::Error) -> FrontendError {
    move |source| FrontendError::Protocol { step, source }
}

/// A vhost-user device driven by the harness.
pub struct VhostUserDevice {
    frontend: Frontend,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// The virtio features both sides agreed on.
    pub features: u64,
    /// The protocol features both sides agreed on.
    pub protocol: VhostUserProtocolFeatures,
}

impl VhostUserDevice {
    /// Connects to the backend at `socket`, negotiates `want` features
    /// (event-idx is never asked for: the harness polls the used ring), maps
    /// `ram` and sets up `queues` in order.
    pub fn connect(
        socket: &Path,
        ram: &GuestRam,
        queues: &[&SplitQueue],
        want: u64,
    ) -> Result<Self, FrontendError> {
        let mut f = Frontend::connect(socket, queues.len() as u64).map_err(step("connect"))?;
        f.set_owner().map_err(step("SET_OWNER"))?;
        let offered = f.get_features().map_err(step("GET_FEATURES"))?;
        let features = offered & (want | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
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
        }
        f.set_features(features).map_err(step("SET_FEATURES"))?;

        let mem = ram.memory();
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(step("memory region"))?;
        f.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;

        let hva = |a: vm_memory::GuestAddress| -> Result<u64, FrontendError> {
            mem.get_host_address(a)
                .map(|p| p as u64)
                .map_err(|_| FrontendError::BadAddress)
        };
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let (desc, avail, used) = q.addresses();
            f.set_vring_num(i, q.size())
                .map_err(step("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: q.size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(desc)?,
                used_ring_addr: hva(used)?,
                avail_ring_addr: hva(avail)?,
                log_addr: None,
            };
            f.set_vring_addr(i, &cfg).map_err(step("SET_VRING_ADDR"))?;
            f.set_vring_base(i, 0).map_err(step("SET_VRING_BASE"))?;
            let call = EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?;
            let kick = EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?;
            f.set_vring_call(i, &call).map_err(step("SET_VRING_CALL"))?;
            f.set_vring_kick(i, &kick).map_err(step("SET_VRING_KICK"))?;
            if !protocol.is_empty()
                || features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
            {
                f.set_vring_enable(i, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
            kicks.push(kick);
            calls.push(call);
        }
        Ok(VhostUserDevice {
            frontend: f,
            kicks,
            calls,
            features,
            protocol,
        })
    }

    /// Reads `len` bytes of the device's config space.
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

    /// Notifies queue `q`.
    pub fn kick(&self, q: usize) -> io::Result<()> {
        self.kicks[q].write(1)
    }

    /// Waits until `done()` holds, re-checking whenever queue `q`'s call
    /// eventfd fires (and at least every 50 ms); false on timeout.
    pub fn wait(&self, q: usize, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        loop {
            if done() {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.calls[q].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            let _ = self.calls[q].read();
        }
    }
}
