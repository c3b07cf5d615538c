//! The guest driver's side of a virtio-mmio device: what Linux's
//! `virtio_mmio` driver does (probe, feature negotiation, queue set-up,
//! notifications, interrupt handling), done on a register window directly
//! (a VMM's transport, with no guest), with the VMM's interrupt relay
//! folded into [`MmioDriver::wait`].

use std::time::Duration;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use vmm_sys_util::eventfd::EventFd;

use crate::queue::SplitQueue;
use crate::wait::wait_until;

/// `"virt"`, the magic value of a virtio-mmio register window.
pub const MAGIC: u32 = 0x7472_6976;

/// A virtio-mmio register window, as the guest sees it, with what a VMM
/// wires around it: the queues' call eventfds and the interrupt line.
pub trait MmioWindow {
    /// A guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// The queues' call eventfds (what a vhost-user backend signals).
    fn calls(&self) -> &[EventFd];
    /// What the VMM's relay does when a call eventfd fired: raise the
    /// used-buffer interrupt.
    fn raise_used(&self);
    /// The interrupt line (an eventfd, as a KVM irqfd).
    fn line(&self) -> &EventFd;
}

/// A driver bound to one register window.
pub struct MmioDriver<W> {
    /// The device window.
    pub transport: W,
    /// The features the driver accepted.
    pub features: u64,
}

/// Why probing stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    /// Not a virtio-mmio version 2 device.
    #[error("bad magic or version")]
    NotVirtio,
    /// The device did not accept the features.
    #[error("FEATURES_OK refused (status {0:#x})")]
    FeaturesRefused(u32),
    /// The device asks for a reset after DRIVER_OK.
    #[error("device needs reset after DRIVER_OK (status {0:#x})")]
    NeedsReset(u32),
    /// A queue is larger than the device allows.
    #[error("queue {0} larger than QUEUE_NUM_MAX")]
    QueueTooBig(usize),
}

fn reg(r: u32) -> u64 {
    u64::from(r)
}

impl<W: MmioWindow> MmioDriver<W> {
    /// Reads a 32-bit register.
    pub fn read32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a 32-bit register.
    pub fn write32(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    /// Reads `len` bytes of config space.
    pub fn config(&mut self, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.transport.read(reg(VIRTIO_MMIO_CONFIG), &mut b);
        b
    }

    /// Probes the device the way Linux does: reset, ACKNOWLEDGE, DRIVER,
    /// features (`want` & offered), FEATURES_OK, each of `queues` in order,
    /// DRIVER_OK.
    pub fn probe(transport: W, queues: &[&SplitQueue], want: u64) -> Result<Self, ProbeError> {
        let mut d = MmioDriver {
            transport,
            features: 0,
        };
        if d.read32(reg(VIRTIO_MMIO_MAGIC_VALUE)) != MAGIC
            || d.read32(reg(VIRTIO_MMIO_VERSION)) != 2
        {
            return Err(ProbeError::NotVirtio);
        }
        let status = reg(VIRTIO_MMIO_STATUS);
        d.write32(status, 0);
        d.write32(status, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        d.write32(status, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        d.write32(reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 0);
        let lo = u64::from(d.read32(reg(VIRTIO_MMIO_DEVICE_FEATURES)));
        d.write32(reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 1);
        let hi = u64::from(d.read32(reg(VIRTIO_MMIO_DEVICE_FEATURES)));
        d.features = ((hi << 32) | lo) & want;
        d.write_features(d.features);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        d.write32(status, s);
        let got = d.read32(status);
        if got & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return Err(ProbeError::FeaturesRefused(got));
        }
        for (i, q) in queues.iter().enumerate() {
            d.setup_queue(i, q)?;
        }
        d.write32(status, s | VIRTIO_CONFIG_S_DRIVER_OK);
        let got = d.read32(status);
        if got & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return Err(ProbeError::NeedsReset(got));
        }
        Ok(d)
    }

    /// Writes the driver feature registers.
    pub fn write_features(&mut self, f: u64) {
        self.write32(reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL), 0);
        self.write32(reg(VIRTIO_MMIO_DRIVER_FEATURES), f as u32);
        self.write32(reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL), 1);
        self.write32(reg(VIRTIO_MMIO_DRIVER_FEATURES), (f >> 32) as u32);
    }

    /// Sets queue `i` up as `q` describes it and marks it ready.
    pub fn setup_queue(&mut self, i: usize, q: &SplitQueue) -> Result<(), ProbeError> {
        self.write32(reg(VIRTIO_MMIO_QUEUE_SEL), i as u32);
        if self.read32(reg(VIRTIO_MMIO_QUEUE_NUM_MAX)) < u32::from(q.size()) {
            return Err(ProbeError::QueueTooBig(i));
        }
        let (desc, avail, used) = q.addresses();
        self.write32(reg(VIRTIO_MMIO_QUEUE_NUM), u32::from(q.size()));
        for (lo, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, desc.0),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail.0),
            (VIRTIO_MMIO_QUEUE_USED_LOW, used.0),
        ] {
            self.write32(reg(lo), addr as u32);
            self.write32(reg(lo) + 4, (addr >> 32) as u32);
        }
        self.write32(reg(VIRTIO_MMIO_QUEUE_READY), 1);
        Ok(())
    }

    /// Notifies queue `q` (a QUEUE_NOTIFY write).
    pub fn notify(&mut self, q: u32) {
        self.write32(reg(VIRTIO_MMIO_QUEUE_NOTIFY), q);
    }

    /// Waits until `done()` holds. Meanwhile does what the VMM's relay and
    /// the guest's interrupt handler do: a call eventfd firing raises the
    /// interrupt; the handler reads INTERRUPT_STATUS and acknowledges it.
    /// Returns false on timeout.
    pub fn wait(&mut self, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        // The calls are polled through clones of their descriptors, so the
        // handler can use the window meanwhile.
        let Ok(calls) = self
            .transport
            .calls()
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<EventFd>, _>>()
        else {
            return false;
        };
        let fds: Vec<&EventFd> = calls.iter().collect();
        wait_until(
            &fds,
            Duration::from_millis(20),
            timeout,
            |readable| {
                for (i, r) in readable.iter().enumerate() {
                    if *r && calls[i].read().is_ok() {
                        self.transport.raise_used();
                    }
                }
                if self.transport.line().read().is_ok() {
                    let st = self.read32(reg(VIRTIO_MMIO_INTERRUPT_STATUS));
                    self.write32(reg(VIRTIO_MMIO_INTERRUPT_ACK), st & VIRTIO_MMIO_INT_VRING);
                }
            },
            &mut done,
        )
    }
}
