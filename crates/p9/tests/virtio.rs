//! virtio-9p driven from the driver side with the shared harness: the
//! vhost-user device's queue handling, config space and robustness.

use std::sync::Arc;

use p9::messages::*;
use p9::server::Server;
use p9::virtio::P9VhostBackend;
use passthrough::{Config, PassthroughFs};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::GuestAddress;
use vmm_mini::harness::{Buf, GuestRam, SplitQueue, DESC_F_NEXT, DESC_F_WRITE};
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
        let mut ram = GuestRam::new(4 << 20).unwrap();
        let q = SplitQueue::new(&mut ram, 16);
        let vrings = vec![q.vring(&ram).unwrap()];
        let req = ram.alloc(1 << 20, 8);
        let reply = ram.alloc(1 << 20, 8);
        let fs = Arc::new(PassthroughFs::new(Config::new(share)).unwrap());
        let dev = P9VhostBackend::new(Server::new(fs), "share").unwrap();
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

    fn ready(share: &std::path::Path) -> Driver {
        let mut d = Driver::new(share);
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
