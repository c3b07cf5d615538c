//! virtio-9p driven from the driver side with the shared harness: the
//! vhost-user device's queue handling, config space and robustness.

use p9::virtio::QueueDevice;
use std::sync::Arc;

use device_queue::IoEngine;
use p9::messages::*;
use p9::server::Server;
use p9::virtio::P9VhostBackend;
use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_driver::queue::{DESC_F_NEXT, DESC_F_WRITE};
use virtio_driver::{Buf, GuestRam, SplitQueue};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

struct Driver {
    ram: GuestRam,
    q: SplitQueue,
    vrings: Vec<VringRwLock>,
    dev: P9VhostBackend,
    req: GuestAddress,
    reply: GuestAddress,
}

impl Driver {
    fn new(share: &std::path::Path) -> Driver {
        Driver::with_engine(share, IoEngine::default(), true)
    }

    fn with_engine(share: &std::path::Path, engine: IoEngine, inline_first: bool) -> Driver {
        let mut ram = GuestRam::new(4 << 20).unwrap();
        let q = SplitQueue::new(&mut ram, 16);
        let vrings = vec![q.vring(&ram).unwrap()];
        let req = ram.alloc(1 << 20, 8);
        let reply = ram.alloc(1 << 20, 8);
        let fs = Arc::new(PassthroughFs::new(Config::new(share)).unwrap());
        let dev = P9VhostBackend::new(Server::new(fs), "share")
            .unwrap()
            .with_engine(engine)
            .with_inline_first(inline_first);
        dev.update_memory(ram.atomic()).unwrap();
        Driver {
            ram,
            q,
            vrings,
            dev,
            req,
            reply,
        }
    }

    fn kick(&mut self, head: u16) -> Option<(u32, u32)> {
        self.q.publish(&self.ram, head);
        self.dev
            .handle_event(0, EventSet::IN, &self.vrings, 0)
            .expect("guest input never fails the handler");
        self.q.take_used(&self.ram)
    }

    fn send(&mut self, frame: &[u8], room: u32) -> (u32, Vec<u8>) {
        self.ram.write(self.req, frame);
        let head = self.q.write_chain(
            &self.ram,
            &Buf::request_reply(self.req, frame.len() as u32, self.reply, room),
        );
        let (_, used) = self.kick(head).expect("chain returned");
        (used, self.ram.read(self.reply, used as usize))
    }

    fn rpc(&mut self, m: Tmessage<'_>) -> Rmessage {
        let (_, out) = self.send(&m.encode(1), 1 << 20);
        decode_rframe(&out).expect("reply decodes").1
    }

    /// Sends `bufs` as one chain; returns the used length.
    fn send_chain(&mut self, bufs: &[Buf]) -> u32 {
        let head = self.q.write_chain(&self.ram, bufs);
        self.kick(head).expect("chain returned").1
    }

    fn ready(share: &std::path::Path) -> Driver {
        Driver::ready_with(Driver::new(share))
    }

    fn ready_with(mut d: Driver) -> Driver {
        let r = d.rpc(Tmessage::Version {
            msize: 512 * 1024,
            version: b"9P2000.L",
        });
        assert!(
            matches!(r, Rmessage::Version { msize: 524288, .. }),
            "{r:?}"
        );
        let r = d.rpc(Tmessage::Attach {
            fid: 0,
            afid: NOFID,
            uname: b"root",
            aname: b"",
            n_uname: 0,
        });
        assert!(matches!(r, Rmessage::Attach { .. }), "{r:?}");
        d
    }
}

#[test]
fn config_space_carries_the_mount_tag() {
    let dir = tempfile::tempdir().unwrap();
    let d = Driver::new(dir.path());
    assert_eq!(d.dev.get_config(0, 64), b"\x05\x00share".to_vec());
    assert_eq!(d.dev.get_config(2, 3), b"sha".to_vec());
    assert!(d.dev.get_config(100, 4).is_empty());
    assert_eq!(d.dev.num_queues(), 1);
    assert_ne!(d.dev.features() & (1 << p9::virtio::VIRTIO_9P_MOUNT_TAG), 0);
}

#[test]
fn read_a_file_through_the_virtqueue() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![9u8; 100_000]).unwrap();
    let mut d = Driver::ready(dir.path());
    assert!(matches!(
        d.rpc(Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![b"f"]
        }),
        Rmessage::Walk { .. }
    ));
    assert!(matches!(
        d.rpc(Tmessage::Lopen { fid: 1, flags: 0 }),
        Rmessage::Lopen { .. }
    ));
    let r = d.rpc(Tmessage::Read {
        fid: 1,
        offset: 0,
        count: 100_000,
    });
    assert_eq!(
        r,
        Rmessage::Read {
            data: vec![9u8; 100_000]
        }
    );
    // A read larger than the chain's reply room is cut to fit, not dropped.
    let (used, out) = d.send(
        &Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 100_000,
        }
        .encode(2),
        4096,
    );
    assert_eq!(used, 4096);
    assert_eq!(
        decode_rframe(&out).unwrap().1,
        Rmessage::Read {
            data: vec![9u8; 4096 - 11]
        }
    );
}

#[test]
fn walk_dotdot_and_slash_names_stay_inside() {
    let base = tempfile::tempdir().unwrap();
    let share = base.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(base.path().join("secret"), b"x").unwrap();
    let mut d = Driver::ready(&share);
    let root = match d.rpc(Tmessage::Getattr { fid: 0, mask: !0 }) {
        Rmessage::Getattr(a) => a.qid,
        r => panic!("{r:?}"),
    };
    assert_eq!(
        d.rpc(Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![b".."]
        }),
        Rmessage::Walk { qids: vec![root] }
    );
    let r = d.rpc(Tmessage::Walk {
        fid: 0,
        newfid: 2,
        names: vec![b"../secret"],
    });
    assert_eq!(
        r,
        Rmessage::Lerror {
            ecode: libc::EINVAL as u32
        }
    );
}

#[test]
fn broken_chains_and_frames_are_survived() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::ready(dir.path());
    let (req, reply) = (d.req.0, d.reply.0);
    // Out of guest memory.
    d.q.write_desc(&d.ram, 0, d.ram.size() * 2, 64, DESC_F_NEXT, 1);
    d.q.write_desc(&d.ram, 1, reply, 4096, DESC_F_WRITE, 0);
    assert_eq!(d.kick(0).map(|u| u.1), Some(0));
    // Looping chain.
    d.q.write_desc(&d.ram, 0, req, 64, DESC_F_NEXT, 0);
    let _ = d.kick(0);
    // A request larger than msize.
    d.q.write_desc(&d.ram, 0, req, 600 * 1024, DESC_F_NEXT, 1);
    d.q.write_desc(&d.ram, 1, reply, 4096, DESC_F_WRITE, 0);
    assert_eq!(d.kick(0).map(|u| u.1), Some(0));
    // No room for any reply.
    let (used, _) = d.send(&Tmessage::Getattr { fid: 0, mask: 0 }.encode(3), 4);
    assert_eq!(used, 0);
    // Garbage frame.
    let (_, out) = d.send(&[9, 0, 0, 0, 110, 1, 0, 0, 0], 4096);
    assert_eq!(
        decode_rframe(&out).unwrap().1,
        Rmessage::Lerror {
            ecode: libc::EINVAL as u32
        }
    );
    // Still serving.
    assert!(matches!(
        d.rpc(Tmessage::Getattr { fid: 0, mask: 0 }),
        Rmessage::Getattr(_)
    ));
    assert_eq!(d.rpc(Tmessage::Flush { oldtag: 7 }), Rmessage::Flush);
}

fn walk_open(d: &mut Driver, fid: u32, name: &[u8], flags: u32) {
    let r = d.rpc(Tmessage::Walk {
        fid: 0,
        newfid: fid,
        names: vec![name],
    });
    assert!(matches!(r, Rmessage::Walk { .. }), "{r:?}");
    let r = d.rpc(Tmessage::Lopen { fid, flags });
    assert!(matches!(r, Rmessage::Lopen { .. }), "{r:?}");
}

fn buf(addr: GuestAddress, len: u32, writable: bool) -> Buf {
    Buf {
        addr,
        len,
        writable,
    }
}

/// Tread and Twrite laid out as Linux's zero-copy path lays them out (the
/// header in one buffer, the data pages in others), through each engine:
/// the data lands where it should, and the replies are right.
#[test]
fn zero_copy_reads_and_writes_through_each_engine() {
    for (engine, inline_first) in [
        (IoEngine::IoUring, false),
        (IoEngine::IoUring, true),
        (IoEngine::Sync, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![0u8; 3 * 4096]).unwrap();
        std::fs::write(dir.path().join("ro"), b"read only").unwrap();
        let mut d = Driver::ready_with(Driver::with_engine(dir.path(), engine, inline_first));
        walk_open(&mut d, 1, b"f", libc::O_RDWR as u32);
        walk_open(&mut d, 2, b"ro", libc::O_RDONLY as u32);
        let what = format!("{engine} inline_first={inline_first}");

        // Twrite: 23-byte header, then two data pages not adjacent to it.
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let (hdr, pages, rhdr) = (d.req, GuestAddress(d.req.0 + 0x10000), d.reply);
        let count = data.len() as u32;
        let mut frame = Tmessage::Write {
            fid: 1,
            offset: 100,
            data: &[],
        }
        .encode(5);
        frame[0..4].copy_from_slice(&(23 + count).to_le_bytes());
        frame[19..23].copy_from_slice(&count.to_le_bytes());
        d.ram.write(hdr, &frame);
        d.ram.write(pages, &data);
        let used = d.send_chain(&[
            buf(hdr, 23, false),
            buf(pages, 4096, false),
            buf(GuestAddress(pages.0 + 4096), 4096, false),
            buf(rhdr, 11, true),
        ]);
        assert_eq!(used, 11, "{what}");
        assert_eq!(
            decode_rframe(&d.ram.read(rhdr, 11)).unwrap(),
            (5, Rmessage::Write { count }),
            "{what}"
        );
        let on_disk = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(&on_disk[100..100 + data.len()], &data[..], "{what}");

        // Tread into an 11-byte header buffer and two separate pages.
        let frame = Tmessage::Read {
            fid: 1,
            offset: 100,
            count: 8192,
        }
        .encode(6);
        d.ram.write(hdr, &frame);
        let out = GuestAddress(d.reply.0 + 0x10000);
        let used = d.send_chain(&[
            buf(hdr, 23, false),
            buf(rhdr, 11, true),
            buf(out, 4096, true),
            buf(GuestAddress(out.0 + 8192), 4096, true),
        ]);
        assert_eq!(used, 11 + 8192, "{what}");
        let head = d.ram.read(rhdr, 11);
        assert_eq!(&head[4..7], &[ty::RREAD, 6, 0], "{what}");
        assert_eq!(&head[7..11], &8192u32.to_le_bytes(), "{what}");
        assert_eq!(d.ram.read(out, 4096), &data[..4096], "{what}");
        assert_eq!(
            d.ram.read(GuestAddress(out.0 + 8192), 4096),
            &data[4096..],
            "{what}"
        );

        // A short read at the end of the file, and a read past it.
        let r = d.rpc(Tmessage::Read {
            fid: 1,
            offset: 3 * 4096 - 10,
            count: 4096,
        });
        assert_eq!(r, Rmessage::Read { data: vec![0; 10] }, "{what}");
        let r = d.rpc(Tmessage::Read {
            fid: 1,
            offset: 1 << 20,
            count: 4096,
        });
        assert_eq!(r, Rmessage::Read { data: vec![] }, "{what}");

        // Errors: a write to a read-only fid, a read of an unopened fid, a
        // read of an unknown fid.
        let r = d.rpc(Tmessage::Write {
            fid: 2,
            offset: 0,
            data: b"no",
        });
        let ebadf = Rmessage::Lerror {
            ecode: libc::EBADF as u32,
        };
        assert_eq!(r, ebadf, "{what}");
        assert_eq!(
            d.rpc(Tmessage::Read {
                fid: 0,
                offset: 0,
                count: 10
            }),
            ebadf,
            "{what}"
        );
        let r = d.rpc(Tmessage::Read {
            fid: 99,
            offset: 0,
            count: 10,
        });
        assert!(matches!(r, Rmessage::Lerror { .. }), "{what}: {r:?}");
        // A Twrite whose size field disagrees with its count goes to the
        // synchronous path, which refuses it.
        let mut bad = Tmessage::Write {
            fid: 1,
            offset: 0,
            data: b"abcd",
        }
        .encode(7);
        bad[19..23].copy_from_slice(&2u32.to_le_bytes());
        let (_, out) = d.send(&bad, 4096);
        assert_eq!(
            decode_rframe(&out).unwrap().1,
            Rmessage::Lerror {
                ecode: libc::EINVAL as u32
            },
            "{what}"
        );
        assert_eq!(&std::fs::read(dir.path().join("ro")).unwrap(), b"read only");
        // Tfsync of an open file (on the ring with io_uring), and of the
        // root fid, which is not open (EBADF from the synchronous path).
        for datasync in [0, 1] {
            assert_eq!(
                d.rpc(Tmessage::Fsync { fid: 1, datasync }),
                Rmessage::Fsync,
                "{what}"
            );
        }
        assert_eq!(
            d.rpc(Tmessage::Fsync {
                fid: 0,
                datasync: 0
            }),
            ebadf,
            "{what}"
        );

        let (ring, inline) = (d.dev.ring_completions(), d.dev.inline_completions());
        match (engine, inline_first) {
            // Two writes (the read-only fid's fails with EBADF from the
            // kernel), three reads and two Tfsyncs (always on the ring); the
            // rest went the synchronous way.
            (IoEngine::IoUring, false) => assert_eq!((ring, inline), (7, 0), "{what}"),
            (IoEngine::IoUring, true) => {
                assert!(ring >= 2 && ring + inline == 7, "{what}: {ring} {inline}")
            }
            (IoEngine::Sync, _) => assert_eq!((ring, inline), (0, 0), "{what}"),
        }
    }
}

/// A queue the guest breaks (an available index more than the queue size
/// ahead of the device), or a kick of a queue not started, makes no error
/// of `handle_event`: vhost-user-backend would end the device's only worker
/// thread for good. The queue is stopped instead, its kicks ignored, until
/// the driver starts it again (vhost-user-backend marks a queue ready on
/// SET_VRING_KICK); then it serves.
#[test]
fn a_broken_avail_index_stops_the_queue_until_the_driver_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::ready(dir.path());
    let kick_only = |d: &Driver| {
        d.dev
            .handle_event(0, EventSet::IN, &d.vrings, 0)
            .expect("guest input never fails the handler")
    };
    let count = d.q.avail_idx();
    d.q.write_avail_idx(&d.ram, count.wrapping_add(d.q.size() + 1));
    kick_only(&d);
    assert_eq!(d.q.take_used(&d.ram), None);

    // Stopped, even for a proper request once the index is sane again.
    d.q.write_avail_idx(&d.ram, count);
    let frame = Tmessage::Getattr { fid: 0, mask: 0 }.encode(9);
    d.ram.write(d.req, &frame);
    let head = d.q.write_chain(
        &d.ram,
        &Buf::request_reply(d.req, frame.len() as u32, d.reply, 4096),
    );
    assert_eq!(d.kick(head), None, "a stopped queue serves nothing");

    // Started again: the request waiting there is served.
    d.vrings[0].set_queue_ready(true);
    kick_only(&d);
    let (_, used) = d.q.take_used(&d.ram).expect("served once started");
    let out = d.ram.read(d.reply, used as usize);
    assert!(matches!(
        decode_rframe(&out).unwrap().1,
        Rmessage::Getattr(_)
    ));

    // A kick of a queue that is not started is ignored too.
    d.vrings[0].set_queue_ready(false);
    kick_only(&d);
    d.vrings[0].set_queue_ready(true);
    assert!(matches!(
        d.rpc(Tmessage::Getattr { fid: 0, mask: 0 }),
        Rmessage::Getattr(_)
    ));
}

/// A panic while serving one chain (a bug: no guest input should cause
/// one) returns that chain empty, and the kick goes on to the next chain:
/// the worker holds the queue's lock while it serves, and an unwinding
/// panic would poison it.
#[test]
fn a_panic_serving_a_chain_returns_it_empty_and_the_queue_goes_on() {
    use device_queue::{serve_kick, Poller};
    use p9::virtio::{serve_caught, ChainError};

    let mut ram = GuestRam::new(1 << 20).unwrap();
    ram.alloc(4096, 4096);
    let mut q = SplitQueue::new(&mut ram, 16);
    let vring = q.vring(&ram).unwrap();
    let buf = ram.alloc(64, 8);
    let bufs = Buf::request_reply(buf, 16, GuestAddress(buf.0 + 16), 48);
    for head in [0, 2] {
        q.write_chain_at(&ram, head, &bufs);
        q.publish(&ram, head);
    }
    let mut served = 0;
    serve_kick(
        &vring,
        &|| Some(ram.memory()),
        false,
        "test queue",
        &mut Poller::new(std::time::Duration::ZERO),
        |_, _| {
            served += 1;
            serve_caught(|| {
                if served == 1 {
                    panic!("a bug while serving");
                }
                Ok::<u32, ChainError>(7)
            })
        },
    );
    assert_eq!(served, 2, "the kick went on after the panic");
    assert_eq!(
        q.take_used(&ram),
        Some((0, 0)),
        "the chain that panicked, empty"
    );
    assert_eq!(q.take_used(&ram), Some((2, 7)));
    assert!(
        device_queue::is_started(&vring),
        "the queue (and its lock) are fine"
    );
}
