//! The virtio-mmio transport (virtio 1.2, section 4.2, version 2 registers):
//! the register protocol between a guest driver and a [`VirtioDevice`].
//!
//! The transport owns what the spec puts in the transport: feature
//! selection and negotiation, queue selection and set-up, the device status
//! state machine, the interrupt status register and the config window. On
//! DRIVER_OK it hands the device the negotiated features and the ready queues
//! with one kick and one call eventfd each; on reset (status 0) it takes them
//! back. Kicks arrive either as QUEUE_NOTIFY writes through [`write`]
//! (MmioTransport::write) or, under KVM, straight on the kick eventfds
//! (ioeventfd). A device signals a call eventfd; whoever relays it
//! ([`Interrupt::signal_used`]) sets the interrupt status and raises the
//! line.
//!
//! Every guest value is checked here: unaligned or odd-sized register
//! accesses are ignored, queue sizes must be powers of two no larger than the
//! device's maximum, features the device did not offer are dropped, and a
//! driver without VIRTIO_F_VERSION_1 does not get FEATURES_OK.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory as the devices see it.
pub type GuestMem = vm_memory::GuestMemoryAtomic<vm_memory::GuestMemoryMmap>;

/// `"virt"`.
pub const MAGIC: u32 = 0x7472_6976;
/// The vendor id vmm-mini reports (`"VMMm"`).
pub const VENDOR: u32 = 0x6d4d_4d56;

/// Register offsets.
pub mod reg {
    use virtio_bindings::virtio_mmio as vb;

    /// Magic value.
    pub const MAGIC: u64 = vb::VIRTIO_MMIO_MAGIC_VALUE as u64;
    /// Version (2).
    pub const VERSION: u64 = vb::VIRTIO_MMIO_VERSION as u64;
    /// Device id.
    pub const DEVICE_ID: u64 = vb::VIRTIO_MMIO_DEVICE_ID as u64;
    /// Vendor id.
    pub const VENDOR_ID: u64 = vb::VIRTIO_MMIO_VENDOR_ID as u64;
    /// Device features, 32 bits at a time.
    pub const DEVICE_FEATURES: u64 = vb::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    /// Which 32 bits DEVICE_FEATURES shows.
    pub const DEVICE_FEATURES_SEL: u64 = vb::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    /// Driver features, 32 bits at a time.
    pub const DRIVER_FEATURES: u64 = vb::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    /// Which 32 bits DRIVER_FEATURES sets.
    pub const DRIVER_FEATURES_SEL: u64 = vb::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = vb::VIRTIO_MMIO_QUEUE_SEL as u64;
    /// Largest size of the selected queue.
    pub const QUEUE_NUM_MAX: u64 = vb::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = vb::VIRTIO_MMIO_QUEUE_NUM as u64;
    /// The selected queue is ready.
    pub const QUEUE_READY: u64 = vb::VIRTIO_MMIO_QUEUE_READY as u64;
    /// Queue notification (the value is the queue index).
    pub const QUEUE_NOTIFY: u64 = vb::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = vb::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = vb::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    /// Device status.
    pub const STATUS: u64 = vb::VIRTIO_MMIO_STATUS as u64;
    /// Descriptor table address, low and high.
    pub const QUEUE_DESC_LOW: u64 = vb::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    /// High half.
    pub const QUEUE_DESC_HIGH: u64 = vb::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    /// Available ring address, low.
    pub const QUEUE_AVAIL_LOW: u64 = vb::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    /// High half.
    pub const QUEUE_AVAIL_HIGH: u64 = vb::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    /// Used ring address, low.
    pub const QUEUE_USED_LOW: u64 = vb::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    /// High half.
    pub const QUEUE_USED_HIGH: u64 = vb::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    /// Config generation.
    pub const CONFIG_GENERATION: u64 = vb::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    /// Start of the device's config space.
    pub const CONFIG: u64 = vb::VIRTIO_MMIO_CONFIG as u64;
}

/// Device status bits.
pub mod status {
    use virtio_bindings::virtio_config as vc;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = vc::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = vc::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = vc::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = vc::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device failed and needs a reset.
    pub const NEEDS_RESET: u32 = vc::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up.
    pub const FAILED: u32 = vc::VIRTIO_CONFIG_S_FAILED;
}

/// Interrupt status: a used buffer notification.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Transport features vmm-mini lets through: indirect descriptors, event
/// index, version 1. Device-specific bits (0-23) pass as offered.
pub const TRANSPORT_FEATURES: u64 = (1
    << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    | F_VERSION_1;

/// A queue as the driver configured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// QUEUE_READY was set.
    pub ready: bool,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A queue's addresses or size are not usable.
    #[error("queue {index}: {reason}")]
    BadQueue {
        /// Which queue.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The vhost-user backend refused the set-up.
    #[error("vhost-user backend: {0}")]
    VhostUser(#[from] virtio_driver::FrontendError),
    /// A worker thread or eventfd could not be created.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The backend refused the guest memory.
    #[error("guest memory: {0}")]
    Memory(String),
}

/// A device model behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (26: file system, 9: 9P transport).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The features the device offers.
    fn features(&self) -> u64;
    /// The device's config space.
    fn config(&self) -> &[u8];
    /// Starts serving: `queues[i]` is kicked through `kicks[i]` and signals
    /// `calls[i]`. Called once per DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMem,
        acked: u64,
        queues: &[QueueConfig],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), DeviceError>;
    /// Stops serving (the driver reset the device, or the VM ends).
    fn reset(&mut self);
}

/// The interrupt status register and the line it raises.
pub struct Interrupt {
    status: AtomicU32,
    line: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `line` (an irqfd under KVM).
    pub fn new(line: EventFd) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Sets `bits` in the status register and raises the line.
    pub fn signal(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::AcqRel);
        self.line.write(1)
    }

    /// A queue has used buffers.
    pub fn signal_used(&self) -> io::Result<()> {
        self.signal(INT_VRING)
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The line (what a test waits on).
    pub fn line(&self) -> &EventFd {
        &self.line
    }
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    max_sizes: Vec<u16>,
    device_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    config_generation: u32,
    interrupt: Arc<Interrupt>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    active: bool,
}

impl MmioTransport {
    /// A transport for `device` over `mem`, interrupting through `line`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMem,
        line: EventFd,
    ) -> io::Result<MmioTransport> {
        let max_sizes = device.queue_max_sizes();
        let device_features = device.features() & (TRANSPORT_FEATURES | 0x00ff_ffff);
        let kicks = (0..max_sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let calls = (0..max_sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues: vec![QueueConfig::default(); max_sizes.len()],
            max_sizes,
            device_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            interrupt: Arc::new(Interrupt::new(line)),
            kicks,
            calls,
            active: false,
        })
    }

    /// The kick eventfd of each queue (for ioeventfd registration).
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The call eventfd of each queue (for the interrupt relay).
    pub fn calls(&self) -> &[EventFd] {
        &self.calls
    }

    /// The interrupt status register and line.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The virtio device id.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            let cfg = self.device.config();
            let start = (offset - reg::CONFIG) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = cfg.get(start + i).copied().unwrap_or(0);
            }
            return;
        }
        data.fill(0);
        if data.len() != 4 || offset % 4 != 0 {
            warn!(
                "virtio-mmio: ignoring {}-byte read at {offset:#x}",
                data.len()
            );
            return;
        }
        let v: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => u32::from(
                self.max_sizes
                    .get(self.queue_sel as usize)
                    .copied()
                    .unwrap_or(0),
            ),
            reg::QUEUE_READY => self.selected().map(|q| u32::from(q.ready)).unwrap_or(0),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // Neither device has writable config fields.
            debug!("virtio-mmio: ignoring config write at {offset:#x}");
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            warn!(
                "virtio-mmio: ignoring {}-byte write at {offset:#x}",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let queue_writable =
            self.status & status::DRIVER_OK == 0 && self.status & status::FEATURES_OK != 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    warn!("virtio-mmio: driver features written after FEATURES_OK; ignored");
                    return;
                }
                let (shift, mask) = match self.driver_features_sel {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                let offered = self.device_features & mask;
                let wanted = u64::from(v) << shift;
                if wanted & !offered != 0 {
                    warn!(
                        "virtio-mmio: driver asked for features {:#x} the device does not offer; dropped",
                        wanted & !offered
                    );
                }
                self.acked = (self.acked & !mask) | (wanted & offered);
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if queue_writable => {
                let max = self.max_sizes.get(self.queue_sel as usize).copied();
                if let (Some(max), Some(q)) = (max, self.selected()) {
                    if v == 0 || !v.is_power_of_two() || v > u32::from(max) {
                        warn!("virtio-mmio: queue size {v} refused (max {max}, power of two)");
                    } else {
                        q.size = v as u16;
                    }
                }
            }
            reg::QUEUE_READY if queue_writable => {
                if let Some(q) = self.selected() {
                    q.ready = v == 1;
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH
                if queue_writable =>
            {
                if let Some(q) = self.selected() {
                    let field = match offset & !0xf {
                        reg::QUEUE_DESC_LOW => &mut q.desc,
                        reg::QUEUE_AVAIL_LOW => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *field = if offset & 4 == 0 {
                        (*field & !0xffff_ffff) | u64::from(v)
                    } else {
                        (*field & 0xffff_ffff) | (u64::from(v) << 32)
                    };
                }
            }
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                warn!(
                    "virtio-mmio: queue register {offset:#x} written outside queue set-up; ignored"
                );
            }
            reg::QUEUE_NOTIFY => {
                if self.active {
                    if let Some(k) = self.kicks.get(v as usize) {
                        let _ = k.write(1);
                    }
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::AcqRel);
            }
            reg::STATUS => self.set_status(v),
            _ => debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new = v & !self.status;
        if v & self.status != self.status {
            warn!(
                "virtio-mmio: driver cleared status bits ({:#x} -> {v:#x}); ignored",
                self.status
            );
            return;
        }
        if new & status::FEATURES_OK != 0 && self.acked & F_VERSION_1 == 0 {
            warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused");
            self.status = v & !status::FEATURES_OK;
            return;
        }
        self.status = v;
        if new & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let result = self.check_queues().and_then(|()| {
            self.device.activate(
                self.mem.clone(),
                self.acked,
                &self.queues,
                &self.kicks,
                &self.calls,
            )
        });
        match result {
            Ok(()) => self.active = true,
            Err(e) => {
                warn!(
                    "virtio-mmio: device {} did not start: {e}",
                    self.device.device_type()
                );
                self.status |= status::NEEDS_RESET;
                let _ = self.interrupt.signal(INT_CONFIG);
            }
        }
    }

    /// Ready queues must be sized and lie inside guest memory.
    fn check_queues(&self) -> Result<(), DeviceError> {
        use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};
        let mem = self.mem.memory();
        for (index, q) in self.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let n = u64::from(q.size);
            let bad = |reason: String| DeviceError::BadQueue { index, reason };
            if n == 0 {
                return Err(bad("ready with size 0".into()));
            }
            for (what, addr, len, align) in [
                ("descriptor table", q.desc, 16 * n, 16),
                ("available ring", q.avail, 6 + 2 * n, 2),
                ("used ring", q.used, 6 + 8 * n, 4),
            ] {
                if addr % align != 0 {
                    return Err(bad(format!(
                        "{what} at {addr:#x} is not {align}-byte aligned"
                    )));
                }
                let end = addr
                    .checked_add(len - 1)
                    .ok_or_else(|| bad(format!("{what} wraps")))?;
                if !mem.address_in_range(GuestAddress(addr))
                    || !mem.address_in_range(GuestAddress(end))
                {
                    return Err(bad(format!("{what} at {addr:#x} is outside guest memory")));
                }
            }
        }
        Ok(())
    }

    /// Device reset: stops the device and forgets the driver's set-up.
    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for k in self.kicks.iter().chain(&self.calls) {
            let _ = k.read();
        }
        self.status = 0;
        self.acked = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueConfig::default());
        self.interrupt.status.store(0, Ordering::Release);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

/// The window as a driver in a test sees it (through
/// `virtio_driver::MmioDriver`), with the VMM's wiring: the call eventfds
/// and the interrupt line.
impl virtio_driver::MmioWindow for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }

    fn calls(&self) -> &[EventFd] {
        MmioTransport::calls(self)
    }

    fn raise_used(&self) {
        let _ = self.interrupt.signal_used();
    }

    fn line(&self) -> &EventFd {
        self.interrupt.line()
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}
