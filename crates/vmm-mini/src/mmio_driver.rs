//! The guest driver's side of a virtio-mmio device, for tests: what Linux's
//! `virtio_mmio` driver does (probe, feature negotiation, queue set-up,
//! notifications, interrupt handling), done on a [`MmioTransport`] directly,
//! with the VMM's interrupt relay folded into [`MmioDriver::wait`].

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::harness::SplitQueue;
use crate::virtio_mmio::{reg, status, MmioTransport, INT_VRING};

/// A driver bound to one transport.
pub struct MmioDriver {
    /// The device window.
    pub transport: MmioTransport,
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

impl MmioDriver {
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
        self.transport.read(reg::CONFIG, &mut b);
        b
    }

    /// Probes the device the way Linux does: reset, ACKNOWLEDGE, DRIVER,
    /// features (`want` & offered), FEATURES_OK, each of `queues` in order,
    /// DRIVER_OK.
    pub fn probe(
        transport: MmioTransport,
        queues: &[&SplitQueue],
        want: u64,
    ) -> Result<MmioDriver, ProbeError> {
        let mut d = MmioDriver {
            transport,
            features: 0,
        };
        if d.read32(reg::MAGIC) != crate::virtio_mmio::MAGIC || d.read32(reg::VERSION) != 2 {
            return Err(ProbeError::NotVirtio);
        }
        d.write32(reg::STATUS, 0);
        d.write32(reg::STATUS, status::ACKNOWLEDGE);
        d.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = d.read32(reg::DEVICE_FEATURES) as u64;
        d.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = d.read32(reg::DEVICE_FEATURES) as u64;
        d.features = ((hi << 32) | lo) & want;
        d.write_features(d.features);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        d.write32(reg::STATUS, s);
        let got = d.read32(reg::STATUS);
        if got & status::FEATURES_OK == 0 {
            return Err(ProbeError::FeaturesRefused(got));
        }
        for (i, q) in queues.iter().enumerate() {
            d.setup_queue(i, q)?;
        }
        d.write32(reg::STATUS, s | status::DRIVER_OK);
        let got = d.read32(reg::STATUS);
        if got & status::NEEDS_RESET != 0 {
            return Err(ProbeError::NeedsReset(got));
        }
        Ok(d)
    }

    /// Writes the driver feature registers.
    pub fn write_features(&mut self, f: u64) {
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, f as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// Sets queue `i` up as `q` describes it and marks it ready.
    pub fn setup_queue(&mut self, i: usize, q: &SplitQueue) -> Result<(), ProbeError> {
        self.write32(reg::QUEUE_SEL, i as u32);
        if self.read32(reg::QUEUE_NUM_MAX) < q.size() as u32 {
            return Err(ProbeError::QueueTooBig(i));
        }
        let (desc, avail, used) = q.addresses();
        self.write32(reg::QUEUE_NUM, q.size() as u32);
        for (lo, addr) in [
            (reg::QUEUE_DESC_LOW, desc.0),
            (reg::QUEUE_AVAIL_LOW, avail.0),
            (reg::QUEUE_USED_LOW, used.0),
        ] {
            self.write32(lo, addr as u32);
            self.write32(lo + 4, (addr >> 32) as u32);
        }
        self.write32(reg::QUEUE_READY, 1);
        Ok(())
    }

    /// Notifies queue `q` (a QUEUE_NOTIFY write).
    pub fn notify(&mut self, q: u32) {
        self.write32(reg::QUEUE_NOTIFY, q);
    }

    /// Waits until `done()` holds. Meanwhile does what the VMM's relay and
    /// the guest's interrupt handler do: a call eventfd firing raises the
    /// interrupt; the handler reads INTERRUPT_STATUS and acknowledges it.
    /// Returns false on timeout.
    pub fn wait(&mut self, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        loop {
            if done() {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            let mut fds: Vec<libc::pollfd> = self
                .transport
                .calls()
                .iter()
                .map(|c| libc::pollfd {
                    fd: c.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of pollfds for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
            let irq = self.transport.interrupt();
            for (i, f) in fds.iter().enumerate() {
                if f.revents & libc::POLLIN != 0 && self.transport.calls()[i].read().is_ok() {
                    let _ = irq.signal_used();
                }
            }
            if irq.line().read().is_ok() {
                let st = self.read32(reg::INTERRUPT_STATUS);
                self.write32(reg::INTERRUPT_ACK, st & INT_VRING);
            }
        }
    }
}
