//! Arbitrary vhost-user frontend messages, with memory tables and fds
//! where a message carries them, into our backends (virtio-fs with either
//! engine, or virtio-9p) served by vhost-user-backend's daemon loop, as
//! `virtiofsd-rs` serves them.
//!
//! Input: a selector byte (the backend), then operations: raw messages
//! (any request code, flags, declared size and payload, with no fd, an
//! eventfd or the guest memfd attached), the frontend's handshake, memory
//! tables with fuzzed regions over the guest memfd, a queue set up with
//! fuzzed base, requests published and kicked, GET_VRING_BASE (which stops
//! a queue), and short waits.
//!
//! Oracles: nothing panics or hangs; the daemon ends once the frontend
//! hangs up; while the input plays by the frontend's rules every chain
//! comes back at most once per publication; nothing outside the share
//! changes; the fd count stays bounded (less the exit-event fd per worker
//! that vhost-user-backend 0.22 leaks with every daemon: see
//! `close_upstream_exit_leaks`).
#![no_main]

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use passthrough::{Config, PassthroughFs};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use virtio_driver::SplitQueue;
use virtiofs::QueueDevice;
use virtiofsd_rs_fuzz::{
    check_fds, close_upstream_exit_leaks, fd_numbers, ignore_sigpipe, Device, Guest, Input, Scratch,
};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const MEM: u64 = 1 << 20;
/// Where the frontend says guest memory is mapped in its address space
/// (ring addresses are given there).
const UA: u64 = 0x7f00_0000_0000;

/// vhost-user request codes the structured operations send.
mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const ADD_MEM_REG: u32 = 37;
}
const VERSION: u32 = 1;
const NEED_REPLY: u32 = 1 << 3;
const PROTOCOL_FEATURES: u64 = 1 << 30;

struct Frontend {
    sock: UnixStream,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    memfd: RawFd,
}

impl Frontend {
    /// Sends one message; a broken connection is not an error here (the
    /// backend may hang up on a bad message).
    fn send(&mut self, code: u32, flags: u32, size: u32, payload: &[u8], fds: &[RawFd]) -> bool {
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(payload);
        let ok = self.sock.send_with_fds(&[&msg[..]], fds).is_ok();
        self.drain();
        ok
    }

    fn message(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> bool {
        self.send(code, VERSION, payload.len() as u32, payload, fds)
    }

    /// Reads (and drops) whatever the backend replied so far.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn mem_table(&mut self, gpa: u64, size: u64, ua: u64, offset: u64) -> bool {
        let mut p = Vec::new();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for v in [gpa, size, ua, offset] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        let fd = self.memfd;
        self.message(req::SET_MEM_TABLE, &p, &[fd])
    }

    fn state(&mut self, code: u32, index: u32, num: u32) -> bool {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        self.message(code, &p, &[])
    }

    fn setup(&mut self, qi: usize, q: &SplitQueue, base: u16) -> bool {
        let i = qi as u32;
        let (desc, avail, used) = q.addresses();
        let mut addr = i.to_le_bytes().to_vec();
        addr.extend_from_slice(&0u32.to_le_bytes());
        for v in [desc.0, used.0, avail.0, 0] {
            addr.extend_from_slice(&(UA + v).to_le_bytes());
        }
        let (kick, call) = (self.kicks[qi].as_raw_fd(), self.calls[qi].as_raw_fd());
        self.state(req::SET_VRING_NUM, i, u32::from(q.size()))
            && self.message(req::SET_VRING_ADDR, &addr, &[])
            && self.state(req::SET_VRING_BASE, i, u32::from(base))
            && self.message(req::SET_VRING_KICK, &u64::from(i).to_le_bytes(), &[kick])
            && self.message(req::SET_VRING_CALL, &u64::from(i).to_le_bytes(), &[call])
            && self.state(req::SET_VRING_ENABLE, i, 1)
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    ignore_sigpipe();
    let mut input = Input::new(data);
    let sel = input.u8();
    let fs = Arc::new(PassthroughFs::new(Config::new(Scratch::get().share())).expect("core"));
    let before = fd_numbers();
    let workers = match Device::pick(sel) {
        Device::P9 => {
            let b = p9::virtio::P9VhostBackend::new(p9::server::Server::new(fs), "share")
                .expect("9p backend");
            session(Arc::new(b), 1, input)
        }
        Device::Fs(engine) => {
            let b = virtiofs::VirtioFsBackend::new(fs, 1, Some("share".into()))
                .expect("fs backend")
                .with_engine(engine);
            session(Arc::new(b), 2, input)
        }
    };
    close_upstream_exit_leaks(&before, workers);
    Scratch::get().check_outside();
    check_fds();
});

/// One frontend connection to `backend` (`nq` queues), as `input` says;
/// returns how many worker threads the daemon ran.
fn session<B>(backend: Arc<B>, nq: usize, mut input: Input<'_>) -> usize
where
    B: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + QueueDevice + Send + Sync + 'static,
{
    let workers = backend.queues_per_thread().len();
    let mut g = Guest::new(MEM as usize);
    let mem = g.ram.memory();
    let memfd = mem
        .find_region(GuestAddress(0))
        .and_then(|r| r.file_offset().map(FileOffset::file))
        .expect("memfd-backed guest memory")
        .as_raw_fd();

    let name = format!(
        "virtiofsd-rs-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let listener = UnixListener::bind_addr(&addr).expect("listen");
    let sock = UnixStream::connect_addr(&addr).expect("connect");
    sock.set_nonblocking(true).expect("nonblocking");
    let mut daemon = VhostUserDaemon::new(
        "fuzz".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .expect("daemon");
    daemon.start(&mut Listener::from(listener)).expect("accept");

    let mut fe = Frontend {
        sock,
        kicks: (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect(),
        calls: (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect(),
        memfd,
    };
    let mut set_up = [false; 2];
    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        let alive = match input.u8() % 8 {
            0 => {
                // A raw message: any code, flags, declared size, payload.
                g.lawful = false;
                let code = u32::from(input.u8());
                let flags = VERSION | (u32::from(input.u8()) & !0x3);
                let size = u32::from(input.u16() % 0x1100);
                let len = usize::from(input.u8());
                let payload = input.bytes(len).to_vec();
                let fds: Vec<RawFd> = match input.u8() % 4 {
                    0 => vec![],
                    1 => vec![fe.kicks[0].as_raw_fd()],
                    2 => vec![memfd],
                    _ => vec![fe.calls[1].as_raw_fd(), memfd],
                };
                fe.send(code, flags, size, &payload, &fds)
            }
            1 => {
                // The handshake, with fuzzed feature choices, and the
                // whole of guest memory.
                let features = input.u64() | PROTOCOL_FEATURES;
                let protocol = input.u64();
                fe.message(req::SET_OWNER, &[], &[])
                    && fe.message(req::GET_FEATURES, &[], &[])
                    && fe.message(req::SET_FEATURES, &features.to_le_bytes(), &[])
                    && fe.message(req::GET_PROTOCOL_FEATURES, &[], &[])
                    && fe.message(req::SET_PROTOCOL_FEATURES, &protocol.to_le_bytes(), &[])
                    && fe.mem_table(0, MEM, UA, 0)
            }
            2 => {
                // A memory table (or an added region) over the memfd with
                // fuzzed placement.
                g.lawful = false;
                let gpa = u64::from(input.u32()) << 12;
                let size = u64::from(input.u16()) << 12;
                let offset = u64::from(input.u8()) << 12;
                if input.u8() & 1 == 0 {
                    fe.mem_table(gpa, size, UA + gpa, offset)
                } else {
                    let mut p = vec![0u8; 8];
                    for v in [gpa, size, UA + gpa, offset] {
                        p.extend_from_slice(&v.to_le_bytes());
                    }
                    fe.message(req::ADD_MEM_REG, &p, &[memfd])
                }
            }
            3 => {
                let qi = usize::from(input.u8()) % nq;
                let base = input.u8();
                // A queue set up again from index 0 serves its ring again.
                g.lawful &= base == 0 && !set_up[qi];
                set_up[qi] = true;
                fe.setup(qi, &g.queues[qi], u16::from(base))
            }
            4 | 5 => {
                // A request on a queue, kicked.
                let qi = usize::from(input.u8()) % nq;
                let len = usize::from(input.u8());
                g.publish(qi, input.bytes(len));
                let _ = fe.kicks[qi].write(1);
                true
            }
            6 => {
                // GET_VRING_BASE stops the queue; a later set-up resumes it
                // (from index 0 here, so chains may be served again).
                g.lawful = false;
                let qi = u32::from(input.u8()) % nq as u32;
                let flags = VERSION | if input.u8() & 1 == 0 { 0 } else { NEED_REPLY };
                let mut p = qi.to_le_bytes().to_vec();
                p.extend_from_slice(&0u32.to_le_bytes());
                fe.send(req::GET_VRING_BASE, flags, 8, &p, &[])
            }
            _ => {
                std::thread::sleep(Duration::from_millis(u64::from(input.u8() % 4)));
                fe.drain();
                true
            }
        };
        if !alive {
            break;
        }
    }
    // Hang up, as a frontend that goes away: the daemon must end.
    drop(fe);
    let _ = daemon.wait();
    backend.notify_exit().ok();
    drop(daemon);
    g.check_returned(nq);
    workers
}
