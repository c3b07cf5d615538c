//! Arbitrary FUSE request sequences, each as a descriptor chain in a real
//! split queue, through `VirtioFsBackend` into `PassthroughFs` on a scratch
//! share, with the engine (io_uring or sync) picked by the first byte.
//!
//! Oracles, after every input: nothing panics; every published chain comes
//! back at most once; nothing outside the share changed (a file, a
//! directory and the target of a symlink inside the share are watched);
//! the process's fd count stays bounded.
//!
//! Input: a selector byte (bit 0: the engine), then requests, each
//! `len[2]` (little-endian; bit 15 set for the hiprio queue, the low 15
//! bits the length) and that many bytes. `virtiofsd-rs --record-requests`
//! writes this record format, so recorded guest traffic seeds the corpus.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_driver::{Buf, GuestRam, SplitQueue};
use virtiofs::{IoEngine, QueueDevice, VirtioFsBackend};
use virtiofsd_rs_fuzz::{check_fds, serve_one, Scratch};

const QSIZE: u16 = 64;
const ROOM: u32 = 8192;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let s = Scratch::get();
    let engine = if sel & 1 == 0 {
        IoEngine::IoUring
    } else {
        IoEngine::Sync
    };
    let fs = Arc::new(PassthroughFs::new(Config::new(s.share())).expect("core"));
    let dev = VirtioFsBackend::new(fs, 1, None)
        .expect("device")
        .with_engine(engine);
    let mut ram = GuestRam::new(1 << 20).expect("guest memory");
    let mut queues = [
        SplitQueue::new(&mut ram, QSIZE),
        SplitQueue::new(&mut ram, QSIZE),
    ];
    let vrings: Vec<VringRwLock> = queues
        .iter()
        .map(|q| q.vring(&ram).expect("vring"))
        .collect();
    dev.update_memory(ram.atomic()).expect("memory");
    let req = ram.alloc(64 << 10, 8);
    let reply = ram.alloc(u64::from(ROOM), 8);
    // Requests: `len[2] queue-bit+bytes`, each published alone and kicked.
    let mut rest = rest;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]) & 0x7fff);
        let hiprio = rest[1] & 0x80 != 0;
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + body.len()..];
        let qi = usize::from(!hiprio);
        ram.write(req, body);
        let bufs = Buf::request_reply(req, body.len() as u32, reply, ROOM);
        let head = queues[qi].write_chain(&ram, &bufs);
        // Thread 0 serves hiprio (event 0) and request queue 1 (event 1).
        serve_one(&dev, &vrings, &ram, &mut queues[qi], qi as u16, head, ROOM);
    }
    dev.notify_exit().ok();
    drop(dev);
    s.check_outside();
    check_fds();
});
