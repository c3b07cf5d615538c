//! The VM: KVM set-up, the I/O and MMIO buses, vCPU threads, the interrupt
//! relay, and how a run ends.
//!
//! A run ends when the guest writes its exit status to [`EXIT_PORT`] (what
//! our init does after syncing), when it resets the machine (i8042 reset,
//! which `reboot=k` and `panic=-1` lead to, or a triple fault), or when a vCPU
//! fails. The boot timer is the time from VM creation to the guest's first
//! write to [`BOOT_MARK_PORT`].

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd};
use log::{debug, info, warn};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::{self, BootError};
use crate::config::{base64, command_line, ShareBackend, ShareKind, ShareSpec, VmConfig};
use crate::cpu::{self, CpuError};
use crate::devices::{self, InProcess, VhostUser, VIRTIO_ID_9P, VIRTIO_ID_FS};
use crate::layout::*;
use crate::memory::{MemoryError, Ram};
use crate::serial::{self, IrqTrigger, Uart};
use crate::virtio_mmio::{reg, Interrupt, MmioTransport, VirtioDevice};

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("/dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    /// A KVM VM ioctl failed.
    #[error("KVM {what}: {source}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Bad memory size.
    #[error("--mem {0} MiB: give 64 to {max} MiB", max = MAX_RAM >> 20)]
    MemSize(u64),
    /// Bad vCPU count.
    #[error("--cpus {0}: give 1 to {max}", max = crate::mptable::MAX_CPUS)]
    Cpus(u8),
    /// More shares than interrupt lines.
    #[error("{0} devices: at most {max} virtio devices", max = DEVICE_IRQS.len())]
    TooManyDevices(usize),
    /// Two shares with one tag.
    #[error("tag '{0}' is used twice")]
    DuplicateTag(String),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// vCPU set-up.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// A share could not be set up.
    #[error("share '{tag}': {reason}")]
    Share {
        /// Its tag.
        tag: String,
        /// Why.
        reason: String,
    },
    /// Threads, eventfds, epoll.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A vCPU stopped on something vmm-mini cannot handle.
    #[error("vCPU {cpu}: {reason}")]
    VcpuFault {
        /// Which vCPU.
        cpu: u8,
        /// What happened.
        reason: String,
    },
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote this exit status to [`EXIT_PORT`].
    Status(u8),
    /// The guest reset the machine without giving a status (reboot, panic
    /// with `panic=-1`, triple fault).
    Reset,
}

/// What [`run`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub reason: ExitReason,
    /// VM creation to the guest init's first write to [`BOOT_MARK_PORT`].
    pub boot_to_init: Option<Duration>,
}

impl Outcome {
    /// The process exit status for this outcome: the guest's status, or 125
    /// for a reset without one.
    pub fn exit_code(&self) -> i32 {
        match self.reason {
            ExitReason::Status(s) => i32::from(s),
            ExitReason::Reset => 125,
        }
    }
}

enum End {
    Guest(ExitReason),
    Fault(VmError),
}

/// What the vCPUs' port and MMIO exits reach.
struct Bus {
    uart: Arc<Mutex<Uart>>,
    devices: Vec<Mutex<MmioTransport>>,
    created: Instant,
    boot_mark: OnceLock<Duration>,
    boot_timer: bool,
    end: Mutex<Option<End>>,
    ended: Condvar,
}

impl Bus {
    fn finish(&self, end: End) {
        let mut slot = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(end);
            self.ended.notify_all();
        }
    }

    fn pio_in(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) && data.len() == 1 {
            data[0] = self
                .uart
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read((port - SERIAL_PORT) as u8);
        } else if port == I8042_CMD_PORT || port == I8042_CMD_PORT - 4 {
            // Status: nothing to read, ready for commands.
            data.fill(0);
        }
    }

    fn pio_out(&self, port: u16, data: &[u8]) {
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) && data.len() == 1 {
            let r = self
                .uart
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write((port - SERIAL_PORT) as u8, data[0]);
            if let Err(e) = r {
                debug!("serial: {e:?}");
            }
        } else if port == EXIT_PORT && !data.is_empty() {
            self.finish(End::Guest(ExitReason::Status(data[0])));
        } else if port == BOOT_MARK_PORT {
            let t = self.created.elapsed();
            if self.boot_mark.set(t).is_ok() && self.boot_timer {
                eprintln!(
                    "vmm-mini: boot-to-init {:.3} s (VM creation to the guest's init)",
                    t.as_secs_f64()
                );
            }
        } else if port == I8042_CMD_PORT && data.first() == Some(&0xfe) {
            self.finish(End::Guest(ExitReason::Reset));
        }
    }

    fn device(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let i = addr.checked_sub(MMIO_BASE)? / MMIO_SIZE;
        let dev = self.devices.get(i as usize)?;
        Some((dev, addr - MMIO_BASE - i * MMIO_SIZE))
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.device(addr) {
            Some((d, off)) => d.lock().unwrap_or_else(|p| p.into_inner()).read(off, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((d, off)) = self.device(addr) {
            d.lock().unwrap_or_else(|p| p.into_inner()).write(off, data);
        }
    }
}

extern "C" fn kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Pins the calling thread to `cpus` (none: leaves it alone).
fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "CPU {c} is past the largest CPU number ({})",
                    libc::CPU_SETSIZE - 1
                ),
            ));
        }
        // SAFETY: `c` is within the set's size, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn vcpu_loop(id: u8, mut vcpu: VcpuFd, bus: Arc<Bus>, stop: Arc<AtomicBool>) {
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => bus.pio_in(port, data),
            Ok(VcpuExit::IoOut(port, data)) => bus.pio_out(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
            Ok(VcpuExit::Hlt) => {
                debug!("vCPU {id} halted");
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(VcpuExit::Shutdown) => {
                info!("vCPU {id}: triple fault or shutdown: resetting");
                bus.finish(End::Guest(ExitReason::Reset));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the
                // `internal` member of the run structure's exit union.
                let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                bus.finish(End::Fault(VmError::VcpuFault {
                    cpu: id,
                    reason: format!(
                        "KVM internal error, suberror {} at rip {rip:#x} (data {:x?})",
                        internal.suberror,
                        &internal.data[..n]
                    ),
                }));
                return;
            }
            Ok(other) => {
                bus.finish(End::Fault(VmError::VcpuFault {
                    cpu: id,
                    reason: format!("unhandled exit {other:?}"),
                }));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                bus.finish(End::Fault(VmError::VcpuFault {
                    cpu: id,
                    reason: format!("KVM_RUN: {e}"),
                }));
                return;
            }
        }
    }
}

/// Relays each device's call eventfds to its interrupt until `stop` fires.
fn relay(calls: Vec<(EventFd, Arc<Interrupt>)>, stop: EventFd) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return warn!("interrupt relay: epoll: {e}"),
    };
    let stop_token = u64::MAX;
    let add =
        |fd: i32, t: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t));
    if let Err(e) = add(stop.as_raw_fd(), stop_token) {
        return warn!("interrupt relay: epoll: {e}");
    }
    for (i, (call, _)) in calls.iter().enumerate() {
        if let Err(e) = add(call.as_raw_fd(), i as u64) {
            return warn!("interrupt relay: epoll: {e}");
        }
    }
    let mut events = vec![EpollEvent::default(); calls.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return warn!("interrupt relay: {e}"),
        };
        for ev in &events[..n] {
            if ev.data() == stop_token {
                return;
            }
            let (call, irq) = &calls[ev.data() as usize];
            if call.read().is_ok() {
                if let Err(e) = irq.signal_used() {
                    warn!("interrupt relay: raising the line: {e}");
                }
            }
        }
    }
}

/// Builds the device model for one share.
fn share_device(spec: &ShareSpec) -> Result<Box<dyn VirtioDevice>, VmError> {
    let err = |reason: String| VmError::Share {
        tag: spec.tag.clone(),
        reason,
    };
    let (device_type, queues, config) = match spec.kind {
        ShareKind::Fs => (
            VIRTIO_ID_FS,
            1 + spec.request_queues,
            devices::fs_config(&spec.tag, spec.request_queues),
        ),
        ShareKind::P9 => (VIRTIO_ID_9P, 1, devices::p9_config(&spec.tag)),
    };
    match &spec.backend {
        ShareBackend::Socket(path) => {
            let d = VhostUser::connect(path, device_type, queues, config)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            Ok(Box::new(d))
        }
        ShareBackend::Dir { path, readonly } => {
            let mut cfg = passthrough::Config::new(path.clone());
            cfg.readonly = *readonly;
            // A virtio-fs guest checks permissions before it sends a
            // request; a 9P server decides them itself.
            cfg.client_checks_permissions = spec.kind == ShareKind::Fs;
            cfg.negative_entries = spec.kind == ShareKind::Fs;
            let fs = passthrough::PassthroughFs::new(cfg)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            let fs = Arc::new(fs);
            let backend: Arc<_> = match spec.kind {
                ShareKind::Fs => Arc::new(
                    virtiofs::VirtioFsBackend::new(fs, spec.request_queues, Some(spec.tag.clone()))
                        .map_err(|e| err(e.to_string()))?,
                ) as Arc<_>,
                ShareKind::P9 => Arc::new(
                    p9::virtio::P9VhostBackend::new(p9::server::Server::new(fs), &spec.tag)
                        .map_err(|e| err(e.to_string()))?,
                ) as Arc<_>,
            };
            Ok(Box::new(InProcess::new(backend, device_type, config)))
        }
    }
}

/// The kernel command line vmm-mini gives the guest: console and reset
/// behaviour, one `virtio_mmio.device=` per share, the shares' tags and the
/// command for our init (`vmm.fs=`, `vmm.9p=`, `vmm.sh=`), then the user's.
pub fn kernel_cmdline(cfg: &VmConfig) -> Vec<String> {
    let mut parts =
        vec!["console=ttyS0 reboot=k panic=-1 acpi=off pci=off 8250.nr_uarts=1".to_owned()];
    for (i, irq) in DEVICE_IRQS.iter().enumerate().take(cfg.shares.len()) {
        parts.push(format!(
            "virtio_mmio.device=4K@{:#x}:{irq}",
            MMIO_BASE + i as u64 * MMIO_SIZE
        ));
    }
    let tags = |k: ShareKind| {
        cfg.shares
            .iter()
            .filter(|s| s.kind == k)
            .map(|s| s.tag.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    parts.push(format!(
        "vmm.fs={} vmm.9p={}",
        tags(ShareKind::Fs),
        tags(ShareKind::P9)
    ));
    if let Some(cmd) = &cfg.command {
        parts.push(format!("vmm.sh={}", base64(command_line(cmd).as_bytes())));
    }
    parts.extend(cfg.cmdline.iter().cloned());
    parts
}

fn check(cfg: &VmConfig) -> Result<(), VmError> {
    if cfg.mem_mib < 64 || cfg.mem_mib > MAX_RAM >> 20 {
        return Err(VmError::MemSize(cfg.mem_mib));
    }
    if cfg.cpus == 0 || cfg.cpus > crate::mptable::MAX_CPUS {
        return Err(VmError::Cpus(cfg.cpus));
    }
    if cfg.shares.len() > DEVICE_IRQS.len() {
        return Err(VmError::TooManyDevices(cfg.shares.len()));
    }
    for (i, s) in cfg.shares.iter().enumerate() {
        if cfg.shares[..i].iter().any(|o| o.tag == s.tag) {
            return Err(VmError::DuplicateTag(s.tag.clone()));
        }
    }
    Ok(())
}

/// Boots the VM described by `cfg`, with the console going to `console`, and
/// runs it until it ends.
pub fn run(cfg: &VmConfig, console: Box<dyn Write + Send>) -> Result<Outcome, VmError> {
    check(cfg)?;
    let kvm = Kvm::new().map_err(VmError::Kvm)?;
    let created = Instant::now();
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(ioctl("KVM_CREATE_PIT2"))?;

    let ram = Ram::new((cfg.mem_mib << 20) as usize)?;
    let mem = ram.atomic();
    {
        let host = ram.host_address()?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: host,
        };
        // SAFETY: the region is a live mapping of `ram`, which outlives the
        // VM (both are dropped when this function returns, the VM first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }

    // Devices: each share behind a virtio-mmio window with its own line.
    let mut transports = Vec::new();
    for (i, spec) in cfg.shares.iter().enumerate() {
        let line = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        vm.register_irqfd(&line, DEVICE_IRQS[i])
            .map_err(ioctl("KVM_IRQFD"))?;
        let t = MmioTransport::new(share_device(spec)?, mem.clone(), line)
            .map_err(io_err("eventfd"))?;
        let notify = MMIO_BASE + i as u64 * MMIO_SIZE + reg::QUEUE_NOTIFY;
        for (q, kick) in t.kicks().iter().enumerate() {
            vm.register_ioevent(kick, &IoEventAddress::Mmio(notify), q as u32)
                .map_err(ioctl("KVM_IOEVENTFD"))?;
        }
        transports.push(t);
    }

    let uart_line = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    vm.register_irqfd(&uart_line, SERIAL_IRQ)
        .map_err(ioctl("KVM_IRQFD"))?;
    let uart = Arc::new(Mutex::new(vm_superio::Serial::new(
        IrqTrigger(uart_line),
        console,
    )));

    let cmdline = boot::cmdline(&kernel_cmdline(cfg))?;
    info!("kernel command line: {:?}", cmdline.as_cstring().ok());
    let guard = mem.memory();
    let entry = boot::load(
        &guard,
        &cfg.kernel,
        cfg.initrd.as_deref(),
        &cmdline,
        cfg.cpus,
    )?;
    cpu::write_tables(&guard, entry).map_err(|e| BootError::Configure(e.to_string()))?;
    drop(guard);

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.cpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        cpu::set_cpuid(&vcpu, id, cfg.cpus, &supported)?;
        cpu::set_lint(&vcpu, id)?;
        if id == 0 {
            cpu::set_boot_registers(&vcpu, entry)?;
        }
        vcpus.push(vcpu);
    }

    let relay_calls = transports
        .iter()
        .flat_map(|t| {
            let irq = t.interrupt();
            t.calls()
                .iter()
                .map(move |c| c.try_clone().map(|c| (c, irq.clone())))
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("eventfd"))?;
    let relay_stop = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    let relay_stop2 = relay_stop.try_clone().map_err(io_err("eventfd"))?;
    let relay_thread = std::thread::Builder::new()
        .name("vmm-irq-relay".into())
        .spawn(move || relay(relay_calls, relay_stop2))
        .map_err(io_err("spawning the interrupt relay"))?;

    let bus = Arc::new(Bus {
        uart: uart.clone(),
        devices: transports.into_iter().map(Mutex::new).collect(),
        created,
        boot_mark: OnceLock::new(),
        boot_timer: cfg.boot_timer,
        end: Mutex::new(None),
        ended: Condvar::new(),
    });

    let _raw = cfg.stdin.then(serial::RawTerminal::enter);
    if cfg.stdin {
        let u = uart.clone();
        std::thread::Builder::new()
            .name("vmm-stdin".into())
            .spawn(move || serial::pump_input(u, io::stdin()))
            .map_err(io_err("spawning the console reader"))?;
    }

    register_signal_handler(SIGRTMIN(), kick_signal).map_err(|e| VmError::Io {
        what: "registering the vCPU kick signal",
        source: io::Error::from_raw_os_error(e.errno()),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let (b, s) = (bus.clone(), stop.clone());
        let affinity = cfg.vcpu_affinity.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Err(source) = pin_current_thread(&affinity) {
                    b.finish(End::Fault(VmError::Io {
                        what: "pinning a vCPU thread (--vcpu-affinity)",
                        source,
                    }));
                    return;
                }
                vcpu_loop(id as u8, vcpu, b, s)
            })
            .map_err(io_err("spawning a vCPU thread"));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                bus.finish(End::Fault(e));
                break;
            }
        }
    }

    let end = {
        let mut slot = bus.end.lock().unwrap_or_else(|p| p.into_inner());
        while slot.is_none() {
            slot = bus.ended.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
        slot.take()
    };

    // Stop the vCPUs (a signal takes each out of KVM_RUN), then the devices.
    stop.store(true, Ordering::Release);
    for t in &threads {
        while !t.is_finished() {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    for d in &bus.devices {
        d.lock().unwrap_or_else(|p| p.into_inner()).reset();
    }
    let _ = relay_stop.write(1);
    let _ = relay_thread.join();
    let _ = uart.lock().map(|mut u| u.writer_mut().flush());
    drop(vm);

    match end {
        Some(End::Guest(reason)) => Ok(Outcome {
            reason,
            boot_to_init: bus.boot_mark.get().copied(),
        }),
        Some(End::Fault(e)) => Err(e),
        None => unreachable!("the wait loop ends only with an outcome"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShareSpec;

    #[test]
    fn cmdline_announces_devices_tags_and_command() {
        let mut cfg = VmConfig::new("/k");
        cfg.shares = vec![
            ShareSpec::parse(ShareKind::Fs, "tag=c,dir=/x").unwrap(),
            ShareSpec::parse(ShareKind::P9, "tag=d,dir=/y").unwrap(),
            ShareSpec::parse(ShareKind::Fs, "tag=e,socket=/s").unwrap(),
        ];
        cfg.command = Some(vec!["ls".into(), "/mnt/c".into()]);
        cfg.cmdline = vec!["quiet".into()];
        let line = kernel_cmdline(&cfg).join(" ");
        assert!(
            line.contains("virtio_mmio.device=4K@0xd0000000:5"),
            "{line}"
        );
        assert!(
            line.contains("virtio_mmio.device=4K@0xd0001000:6"),
            "{line}"
        );
        assert!(
            line.contains("virtio_mmio.device=4K@0xd0002000:7"),
            "{line}"
        );
        assert!(line.contains("vmm.fs=c,e vmm.9p=d"), "{line}");
        assert!(
            line.contains(&format!("vmm.sh={}", base64(b"ls /mnt/c"))),
            "{line}"
        );
        assert!(line.ends_with(" quiet"), "{line}");
    }

    #[test]
    fn bad_configs_are_refused_before_kvm() {
        let mut cfg = VmConfig::new("/k");
        cfg.mem_mib = 4;
        assert!(matches!(check(&cfg), Err(VmError::MemSize(4))));
        cfg.mem_mib = 4096;
        assert!(matches!(check(&cfg), Err(VmError::MemSize(4096))));
        cfg.mem_mib = 256;
        cfg.cpus = 0;
        assert!(matches!(check(&cfg), Err(VmError::Cpus(0))));
        cfg.cpus = 1;
        cfg.shares = vec![
            ShareSpec::parse(ShareKind::Fs, "tag=c,dir=/x").unwrap(),
            ShareSpec::parse(ShareKind::P9, "tag=c,dir=/y").unwrap(),
        ];
        assert!(matches!(check(&cfg), Err(VmError::DuplicateTag(t)) if t == "c"));
    }
}
