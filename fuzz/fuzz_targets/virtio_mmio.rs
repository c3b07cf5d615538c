//! Arbitrary register reads and writes against vmm-mini's virtio-mmio
//! transport, with the in-process virtio-fs (either engine) or virtio-9p
//! device behind it on a scratch share, and requests published and
//! notified between them.
//!
//! Input: a selector byte (the device), then operations: raw reads and
//! writes of any width at any offset of the 4 KiB window, a driver probe
//! the way Linux does it (with fuzzed feature bits), chains published on a
//! queue and notified, interrupt acknowledgements, raw writes into guest
//! memory (rings included), resets, and waits for the workers.
//!
//! Oracles: nothing panics or hangs; while the input plays by the driver's
//! rules (one probe, no raw writes, no reset) every chain comes back at
//! most once per publication; nothing outside the share changes; the fd
//! count stays bounded once the device is gone.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use passthrough::{Config, PassthroughFs};
use virtio_driver::{GuestRam, MmioDriver};
use virtiofs::QueueDevice;
use virtiofsd_rs_fuzz::{check_fds, Device, Guest, Input, Scratch};
use vm_memory::GuestAddress;
use vmm_mini::devices::{fs_config, p9_config, InProcess, VIRTIO_ID_9P, VIRTIO_ID_FS};
use vmm_mini::virtio_mmio::{reg, status, MmioTransport};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The register window's size, as vmm-mini maps it.
const WINDOW: u64 = 0x1000;
const MEM: usize = 1 << 20;

fn transport(sel: u8, ram: &GuestRam) -> (MmioTransport, usize) {
    let s = Scratch::get();
    let fs = Arc::new(PassthroughFs::new(Config::new(s.share())).expect("core"));
    let line = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let (dev, nq) = match Device::pick(sel) {
        Device::P9 => {
            let backend = p9::virtio::P9VhostBackend::new(p9::server::Server::new(fs), "share")
                .expect("9p device");
            let dev = InProcess::new(Arc::new(backend), VIRTIO_ID_9P, p9_config("share"));
            (dev, 1)
        }
        Device::Fs(engine) => {
            let backend = virtiofs::VirtioFsBackend::new(fs, 1, Some("share".into()))
                .expect("fs device")
                .with_engine(engine);
            let dev = InProcess::new(Arc::new(backend), VIRTIO_ID_FS, fs_config("share", 1));
            (dev, 2)
        }
    };
    let t = MmioTransport::new(Box::new(dev), ram.atomic(), line).expect("transport");
    (t, nq)
}

/// A 1-, 2-, 4- or 8-byte access width (what KVM's MMIO exits carry).
fn width(b: u8) -> usize {
    [4, 4, 1, 2, 8, 4, 3, 0][usize::from(b % 8)]
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.u8();
    let mut g = Guest::new(MEM);
    let (t, nq) = transport(sel, &g.ram);
    let mut d = MmioDriver {
        transport: t,
        features: 0,
    };
    let mut probes = 0;
    let mut ops = 0;
    // What all waits of one input may take together.
    let mut patience = Duration::from_millis(50);
    while !input.is_empty() && ops < 64 {
        ops += 1;
        match input.u8() % 8 {
            0 => {
                let offset = u64::from(input.u16()) % WINDOW;
                let w = width(input.u8());
                let bytes = input.bytes(w).to_vec();
                d.transport.write(offset, &bytes);
                g.lawful = false;
            }
            1 => {
                let offset = u64::from(input.u16()) % WINDOW;
                let mut b = vec![0u8; width(input.u8())];
                d.transport.read(offset, &mut b);
            }
            2 => {
                // Linux's probe, with the feature bits the input keeps.
                probes += 1;
                g.lawful &= probes == 1;
                let keep = input.u64();
                d.write32(reg::STATUS, 0);
                d.write32(reg::STATUS, status::ACKNOWLEDGE);
                d.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
                d.write32(reg::DEVICE_FEATURES_SEL, 0);
                let lo = u64::from(d.read32(reg::DEVICE_FEATURES));
                d.write32(reg::DEVICE_FEATURES_SEL, 1);
                let hi = u64::from(d.read32(reg::DEVICE_FEATURES));
                d.write_features(((hi << 32) | lo) & keep);
                let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
                d.write32(reg::STATUS, s);
                for (i, q) in g.queues.iter().take(nq).enumerate() {
                    let _ = d.setup_queue(i, q);
                }
                d.write32(reg::STATUS, s | status::DRIVER_OK);
            }
            3 => {
                // A request chain on a queue, then QUEUE_NOTIFY.
                let qi = usize::from(input.u8()) % nq;
                let len = usize::from(input.u8());
                g.publish(qi, input.bytes(len));
                d.notify(qi as u32);
            }
            4 => {
                let bits = d.read32(reg::INTERRUPT_STATUS);
                d.write32(reg::INTERRUPT_ACK, bits & u32::from(input.u8()));
            }
            5 => {
                let at = u64::from(input.u16()) * 16 % MEM as u64;
                let len = usize::from(input.u8() % 64).min(MEM - at as usize);
                g.ram.write(GuestAddress(at), input.bytes(len));
                g.lawful = false;
            }
            6 => {
                d.write32(reg::STATUS, 0);
                g.lawful = false;
            }
            _ => {
                // Let the workers catch up, a little (no worker runs before
                // DRIVER_OK).
                let start = Instant::now();
                let deadline = start + Duration::from_millis(20).min(patience);
                while d.transport.is_active() && Instant::now() < deadline && g.pending(nq) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                patience = patience.saturating_sub(start.elapsed());
            }
        }
    }
    // Stops the workers (joined): whatever they were doing is finished.
    drop(d);
    g.check_returned(nq);
    Scratch::get().check_outside();
    check_fds();
});
