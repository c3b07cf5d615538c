//! Arbitrary chains through the virtio-9p device (`P9VhostBackend`, either
//! engine, inline-first or not) into a 9P session on a scratch share.
//!
//! Input: a selector byte (bit 0: engine; bit 1: inline-first; bits 2-4:
//! the reply room; bit 5: requests split over two readable descriptors),
//! then requests, each `len[2]` (little-endian, the low 15 bits) and that
//! many bytes. Recorded 9P frames, each behind its length, make seeds.
//!
//! Oracles: nothing panics; every published chain comes back at most once
//! and says it wrote no more than its writable room; nothing outside the
//! share changes; the fd count stays bounded.
#![no_main]

use std::sync::Arc;

use device_queue::IoEngine;
use libfuzzer_sys::fuzz_target;
use p9::server::Server;
use p9::virtio::{P9VhostBackend, QueueDevice};
use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_driver::{Buf, GuestRam, SplitQueue};
use virtiofsd_rs_fuzz::{check_fds, serve_one, Input, Scratch};
use vm_memory::GuestAddress;

const QSIZE: u16 = 16;
/// Reply rooms: roomy, tight, smaller than any header, odd.
const ROOMS: [u32; 8] = [8192, 8192, 64 << 10, 4096 + 7, 24, 7, 11, 1];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.u8();
    let engine = if sel & 1 == 0 {
        IoEngine::IoUring
    } else {
        IoEngine::Sync
    };
    let room = ROOMS[usize::from(sel >> 2) % ROOMS.len()];
    let split = sel & 0x20 != 0;
    let s = Scratch::get();
    let fs = Arc::new(PassthroughFs::new(Config::new(s.share())).expect("core"));
    let dev = P9VhostBackend::new(Server::new(fs), "share")
        .expect("device")
        .with_engine(engine)
        .with_inline_first(sel & 2 != 0);
    let mut ram = GuestRam::new(1 << 20).expect("guest memory");
    let mut q = SplitQueue::new(&mut ram, QSIZE);
    let vrings: Vec<VringRwLock> = vec![q.vring(&ram).expect("vring")];
    dev.update_memory(ram.atomic()).expect("memory");
    let req = ram.alloc(64 << 10, 8);
    let reply = ram.alloc(64 << 10, 8);
    while !input.is_empty() {
        let len = usize::from(input.u16() & 0x7fff);
        let body = input.bytes(len);
        ram.write(req, body);
        let n = body.len() as u32;
        let bufs = if split && n > 1 {
            let half = n / 2;
            vec![
                Buf::out(req, half),
                Buf::out(GuestAddress(req.0 + u64::from(half)), n - half),
                Buf::input(reply, room),
            ]
        } else {
            Buf::request_reply(req, n, reply, room).to_vec()
        };
        let head = q.write_chain(&ram, &bufs);
        serve_one(&dev, &vrings, &ram, &mut q, 0, head, room);
    }
    dev.notify_exit().ok();
    drop(dev);
    s.check_outside();
    check_fds();
});
