//! virtio-fs servers driven over vhost-user the way a Linux guest drives
//! them, through `virtio-driver`: memfd guest memory ([`GuestRam`]), split
//! virtqueues written from the driver's side ([`SplitQueue`]: indirect
//! tables, event index) and its vhost-user frontend ([`VhostUserDevice`]).
//! Every server sees the same requests in the same guest-memory layout.
//!
//! The layout is the one Linux's virtio-fs driver produces:
//! - queue 0 (hiprio, 256 entries) carries FORGET, one direct descriptor
//!   holding `fuse_in_header` and `fuse_forget_in`;
//! - queue 1 (the request queue, 1024 entries, as QEMU's `queue-size=1024`)
//!   carries every other request as one indirect descriptor table: the in
//!   header, the arguments, then for WRITE the data in 4 KiB pages
//!   (device-readable); the out header, the out arguments, then for READ
//!   the data in 4 KiB pages (device-writable). A 1 MiB READ is a chain of
//!   259 descriptors.
//!
//! Features: VERSION_1, INDIRECT_DESC and, as Linux negotiates it,
//! EVENT_IDX (unless `--no-event-idx`). Notifications follow Linux's
//! virtio_ring: after publishing a batch fsbench kicks only if the device's
//! `avail_event` asks for it (without EVENT_IDX: unless the device set
//! `VRING_USED_F_NO_NOTIFY`); before sleeping it sets `used_event` to the
//! next used entry and checks the used ring once more. It then polls the
//! used ring for up to `--guest-poll-us` (as KVM polls a halted vCPU,
//! adaptively, up to `halt_poll_ns`) and sleeps in `poll` on the call
//! eventfd, as a guest waits for its interrupt.
//!
//! I/O slot `i` owns descriptor `i` of the request queue, its own indirect
//! table, request, reply and data buffers, all set up once; submitting only
//! rewrites the 80-byte request and publishes the head. Synchronous
//! metadata requests use the last descriptor of the queue.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use device_queue::Poller;
use virtio_driver::fuse::{
    self as fuse_wire, abi, init_flags, opcode, InitOut, Reply, IN_HEADER, OUT_HEADER,
};
use virtio_driver::wait::poll_readable;
use virtio_driver::{
    Buf, FrontendError, GuestRam, MemoryError, SplitQueue, VhostUserDevice, F_EVENT_IDX,
    F_INDIRECT_DESC, F_VERSION_1,
};
use vm_memory::{ByteValued, GuestAddress};

use crate::fixture::{CREATE_DIR, DATA, DIR10K, WDATA};
use crate::session::{Probe, Session, SessionError, TreeSession};
use crate::tree::{contents, InodeSet, Tree};
use crate::workload::{pattern_matches, FileRole, IoSpec, Kind, READDIR_BUF, WRITE_BYTE};

/// Entries of the request queue.
pub const REQUEST_QUEUE_SIZE: u16 = 1024;
/// Entries of the hiprio queue.
pub const HIPRIO_QUEUE_SIZE: u16 = 256;
/// The flags asked for in INIT (a subset of what Linux asks for; none of
/// the ones left out changes how these requests are served).
pub const INIT_FLAGS: u32 = init_flags::ASYNC_READ
    | init_flags::ATOMIC_O_TRUNC
    | init_flags::EXPORT_SUPPORT
    | init_flags::BIG_WRITES
    | init_flags::AUTO_INVAL_DATA
    | init_flags::ASYNC_DIO
    | init_flags::PARALLEL_DIROPS
    | init_flags::MAX_PAGES;

const PAGE: u32 = 4096;
/// `fuse_read_in` and `fuse_write_in`.
const RW_IN: usize = 40;
const CTL_DESC: u16 = REQUEST_QUEUE_SIZE - 1;
const CTL_REQ_LEN: u64 = 64 << 10;
const CTL_REPLY_LEN: u32 = 128 << 10;
const FORGET_SLOTS: u16 = 64;
/// Hiprio descriptors for BATCH_FORGET, after the FORGET ones.
const BATCH_SLOTS: u16 = 16;
/// Node ids per BATCH_FORGET (4 KiB of `fuse_forget_one`).
pub const BATCH_FORGET_MAX: usize = 256;
const BATCH_LEN: u64 = (IN_HEADER + 8 + 16 * BATCH_FORGET_MAX) as u64;
/// The opcodes `virtio_driver::fuse::opcode` does not name.
mod op {
    pub const RMDIR: u32 = 11;
    pub const BATCH_FORGET: u32 = 42;
    pub const READDIRPLUS: u32 = 44;
}
/// `FUSE_DO_READDIRPLUS`: asked for in INIT by the tree workloads (Linux
/// asks for it always); the device may serve READDIRPLUS.
pub const DO_READDIRPLUS: u32 = 1 << 13;
/// How long fsbench waits for any reply before giving up on the server.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a virtio-fs server could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// Guest memory could not be made.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// vhost-user set-up failed.
    #[error("{0}")]
    Frontend(#[from] FrontendError),
    /// An eventfd could not be made or waited on.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The device lacks a feature the Linux layout needs.
    #[error("the device does not offer VIRTIO_RING_F_INDIRECT_DESC")]
    NoIndirect,
    /// The device stopped answering.
    #[error("no reply to {op} within {secs} s")]
    Timeout {
        /// The request waited for.
        op: &'static str,
        /// How long.
        secs: u64,
    },
    /// The device answered with an error.
    #[error("{op} failed: {err}")]
    Errno {
        /// The request.
        op: &'static str,
        /// The errno it returned.
        err: std::io::Error,
    },
    /// The device's reply is not what the request asks for.
    #[error("{op}: {detail}")]
    BadReply {
        /// The request.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The device refuses requests as large as the workload's.
    #[error("the device takes at most {limit} bytes per request, the workload needs {need}")]
    TooBig {
        /// The device's limit (max_pages or max_write).
        limit: u32,
        /// The workload's request size.
        need: u32,
    },
}

/// How the data of a READ or WRITE is laid out in descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataLayout {
    /// One descriptor per 4 KiB page, as Linux's driver sends it.
    #[default]
    Pages,
    /// One descriptor for the whole buffer (a diagnostic: how much the
    /// per-page descriptors cost the server; not what Linux sends).
    Flat,
}

fn bad(op: &'static str, what: &str) -> VfsError {
    VfsError::BadReply {
        op,
        detail: format!("the reply holds no {what}"),
    }
}

/// An entry of a directory listed by a tree pass.
struct Listed {
    name: Vec<u8>,
    nodeid: u64,
    dir: bool,
}

/// The deepest directory a tree pass descends into: deeper is a server
/// answering with a loop (a directory's own node id as its child), not
/// one of fsbench's trees.
const MAX_TREE_DEPTH: u32 = 64;

fn too_deep(depth: u32) -> Result<(), VfsError> {
    if depth > MAX_TREE_DEPTH {
        return Err(VfsError::BadReply {
            op: "READDIRPLUS",
            detail: format!("directories nested deeper than {MAX_TREE_DEPTH} levels"),
        });
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// The `fuse_entry_out` of an entry reply.
fn entry_of(r: &Reply, op: &'static str) -> Result<abi::EntryOut, VfsError> {
    r.entry().ok_or_else(|| bad(op, "fuse_entry_out"))
}

/// The entries of a READDIRPLUS reply body: each a `fuse_direntplus`
/// (`fuse_entry_out` and `fuse_dirent`) and the name, padded to 8 bytes;
/// stops at the first truncated entry.
pub fn direntplus(
    body: &[u8],
) -> impl Iterator<Item = (abi::EntryOut, fuse_wire::Dirent<'_>)> + '_ {
    const HEAD: usize = std::mem::size_of::<abi::Direntplus>();
    let mut rest = body;
    std::iter::from_fn(move || {
        let d: abi::Direntplus = fuse_wire::parse(rest)?;
        let namelen = d.dirent.namelen as usize;
        let name = rest.get(HEAD..HEAD + namelen)?;
        let padded = (HEAD + namelen + 7) & !7;
        rest = rest.get(padded..).unwrap_or_default();
        Some((
            d.entry_out,
            fuse_wire::Dirent {
                ino: d.dirent.ino,
                off: d.dirent.off,
                ty: d.dirent.type_,
                name,
            },
        ))
    })
}

/// An I/O request slot.
struct IoSlot {
    head: u16,
    req: GuestAddress,
    reply: GuestAddress,
    data: GuestAddress,
    unique: u64,
    offset: u64,
}

/// The file an I/O workload works on.
struct IoFile {
    spec: IoSpec,
    nodeid: u64,
    fh: u64,
}

/// A virtio-fs server, connected, initialised and set up for one workload.
pub struct VfsSession {
    ram: GuestRam,
    queues: [SplitQueue; 2],
    dev: VhostUserDevice,
    unique: u64,
    /// What INIT negotiated.
    pub init: InitOut,
    /// EVENT_IDX was negotiated.
    pub event_idx: bool,
    ctl_req: GuestAddress,
    ctl_reply: GuestAddress,
    ctl_table: GuestAddress,
    forget_bufs: GuestAddress,
    forget_free: Vec<u16>,
    batch_bufs: GuestAddress,
    batch_free: Vec<u16>,
    /// Lookups the tree workloads hold: node id to count.
    held: HashMap<u64, u64>,
    io: Vec<IoSlot>,
    file: Option<IoFile>,
    dir: u64,
    /// The driver's polling for replies (as KVM's halt polling).
    poller: Poller,
}

/// Guest memory for `kind`: the queues and control buffers, plus each I/O
/// slot's buffers and table, rounded up to 2 MiB.
fn ram_size(kind: &Kind) -> usize {
    let base = 4u64 << 20;
    let io = match kind {
        Kind::Io(s) => {
            s.qd as u64
                * (u64::from(s.len) + 3 * u64::from(PAGE) + 16 * u64::from(s.len / PAGE + 8))
        }
        _ => 0,
    };
    ((base + io).div_ceil(2 << 20) * (2 << 20)) as usize
}

impl VfsSession {
    /// Connects to the vhost-user socket `socket`, starts the two queues,
    /// sends INIT, and sets up for `kind`: LOOKUP and OPEN of the file and
    /// the I/O slots, or LOOKUP of the workload's directory.
    /// `layout` says how READ and WRITE data is split into descriptors;
    /// `event_idx` asks for EVENT_IDX (used if the device offers it);
    /// `guest_poll` is how long the driver polls for a reply before it
    /// sleeps.
    pub fn connect(
        socket: &Path,
        kind: &Kind,
        layout: DataLayout,
        event_idx: bool,
        guest_poll: Duration,
    ) -> Result<VfsSession, VfsError> {
        let mut ram = GuestRam::new(ram_size(kind))?;
        let mut queues = [
            SplitQueue::new(&mut ram, HIPRIO_QUEUE_SIZE),
            SplitQueue::new(&mut ram, REQUEST_QUEUE_SIZE),
        ];
        let mut want = F_VERSION_1 | F_INDIRECT_DESC;
        if event_idx {
            want |= F_EVENT_IDX;
        }
        let dev = VhostUserDevice::connect_within(
            socket,
            &ram,
            &[&queues[0], &queues[1]],
            want,
            Duration::from_secs(3),
        )?;
        if dev.features & F_INDIRECT_DESC == 0 {
            return Err(VfsError::NoIndirect);
        }
        let event_idx = dev.features & F_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let ctl_req = ram.alloc(CTL_REQ_LEN, 4096);
        let ctl_reply = ram.alloc(OUT_HEADER as u64 + u64::from(CTL_REPLY_LEN), 4096);
        let ctl_table = ram.alloc(16 * 8, 16);
        let forget_bufs = ram.alloc(64 * u64::from(FORGET_SLOTS), 64);
        let batch_bufs = ram.alloc(BATCH_LEN * u64::from(BATCH_SLOTS), 64);
        let mut s = VfsSession {
            ram,
            queues,
            dev,
            unique: 0,
            event_idx,
            init: InitOut {
                minor: 0,
                flags: 0,
                max_write: 0,
                max_pages: 0,
                flags2: 0,
            },
            ctl_req,
            ctl_reply,
            ctl_table,
            forget_bufs,
            forget_free: (0..FORGET_SLOTS).rev().collect(),
            batch_bufs,
            batch_free: (FORGET_SLOTS..FORGET_SLOTS + BATCH_SLOTS).rev().collect(),
            held: HashMap::new(),
            io: Vec::new(),
            file: None,
            dir: 0,
            poller: Poller::new(guest_poll),
        };
        let flags = match kind {
            Kind::Tree(_) => INIT_FLAGS | DO_READDIRPLUS,
            _ => INIT_FLAGS,
        };
        let r = s.call(
            opcode::INIT,
            "INIT",
            0,
            &fuse_wire::init_body_flags(flags),
            256,
        )?;
        s.init = InitOut::parse(&r.body).ok_or_else(|| VfsError::BadReply {
            op: "INIT",
            detail: format!("{}-byte fuse_init_out", r.body.len()),
        })?;
        match kind {
            Kind::Io(spec) => s.setup_io(*spec, layout)?,
            Kind::CreateStatUnlink => s.dir = s.lookup(CREATE_DIR)?,
            Kind::Readdir => s.dir = s.lookup(DIR10K)?,
            // Each pass looks up what it needs.
            Kind::Tree(_) => {}
        }
        Ok(s)
    }

    fn lookup(&mut self, name: &str) -> Result<u64, VfsError> {
        let r = self.call(
            opcode::LOOKUP,
            "LOOKUP",
            1,
            &fuse_wire::name(name.as_bytes()),
            fuse_wire::ENTRY_OUT as u32,
        )?;
        Ok(r.entry()
            .ok_or_else(|| bad("LOOKUP", "fuse_entry_out"))?
            .nodeid)
    }

    fn setup_io(&mut self, spec: IoSpec, layout: DataLayout) -> Result<(), VfsError> {
        let unit = match layout {
            DataLayout::Pages => PAGE,
            DataLayout::Flat => spec.len,
        };
        let read_limit = if self.init.max_pages > 0 {
            u32::from(self.init.max_pages) * PAGE
        } else {
            32 * PAGE
        };
        let limit = if spec.write() {
            read_limit.min(self.init.max_write)
        } else {
            read_limit
        };
        if spec.len > limit {
            return Err(VfsError::TooBig {
                limit,
                need: spec.len,
            });
        }
        let (name, flags) = match spec.role {
            FileRole::Read => (DATA, libc::O_RDONLY),
            FileRole::Write => (WDATA, libc::O_RDWR),
        };
        let nodeid = self.lookup(name)?;
        let r = self.call(
            opcode::OPEN,
            "OPEN",
            nodeid,
            &fuse_wire::open_in(flags as u32),
            fuse_wire::OPEN_OUT as u32,
        )?;
        let fh = r.open_out().ok_or_else(|| bad("OPEN", "fuse_open_out"))?.fh;
        let fill = vec![WRITE_BYTE; spec.len as usize];
        for i in 0..spec.qd {
            let req = self.ram.alloc((IN_HEADER + RW_IN) as u64, 64);
            let reply = self.ram.alloc(64, 64);
            let data = self.ram.alloc(u64::from(spec.len), u64::from(PAGE));
            let mut t = vec![
                Buf::out(req, IN_HEADER as u32),
                Buf::out(GuestAddress(req.0 + IN_HEADER as u64), RW_IN as u32),
            ];
            if spec.write() {
                self.ram.write(data, &fill);
                t.extend(Buf::pieces(data, spec.len, unit, false));
                t.push(Buf::input(reply, OUT_HEADER as u32));
                t.push(Buf::input(
                    GuestAddress(reply.0 + OUT_HEADER as u64),
                    fuse_wire::WRITE_OUT as u32,
                ));
            } else {
                t.push(Buf::input(reply, OUT_HEADER as u32));
                t.extend(Buf::pieces(data, spec.len, unit, true));
            }
            let table = self.ram.alloc(16 * t.len() as u64, 16);
            let head = self.queues[1].write_indirect(&self.ram, i as u16, table, &t);
            self.io.push(IoSlot {
                head,
                req,
                reply,
                data,
                unique: 0,
                offset: 0,
            });
        }
        self.file = Some(IoFile { spec, nodeid, fh });
        Ok(())
    }

    fn next_unique(&mut self) -> u64 {
        self.unique += 1;
        self.unique
    }

    /// Makes chain `head` available on queue `q`.
    fn publish(&mut self, q: usize, head: u16) {
        self.queues[q].publish(&self.ram, head);
    }

    /// The next used element of queue `q`, if any.
    fn take_used(&mut self, q: usize) -> Option<(u32, u32)> {
        self.queues[q].take_used(&self.ram)
    }

    /// Notifies queue `q` of what was published since the last call, if the
    /// device wants to be notified (Linux's `virtqueue_kick_prepare`).
    fn kick(&mut self, q: usize) -> Result<(), VfsError> {
        if self.queues[q].kick_prepare(&self.ram) {
            self.dev.kick(q).map_err(VfsError::EventFd)?;
        }
        Ok(())
    }

    /// Sleeps until queue `q`'s call eventfd fires; returns at once if a
    /// used entry is already there. With EVENT_IDX, first asks for an
    /// interrupt at the next used entry (`used_event`).
    fn sleep(&mut self, q: usize, op: &'static str) -> Result<(), VfsError> {
        let (ram, queue) = (&self.ram, &self.queues[q]);
        if queue.prepare_wait(ram) {
            return Ok(());
        }
        let call = self.dev.call(q);
        // Poll first, as KVM polls a halted vCPU.
        if self.poller.spin(|| queue.has_used(ram)) {
            // The interrupt this polling caught is consumed, as a vCPU's
            // pending interrupt is delivered on its wake-up.
            let _ = call.read();
            return Ok(());
        }
        let slept = Instant::now();
        let readable = poll_readable(&[call], REPLY_TIMEOUT).map_err(VfsError::EventFd)?;
        if !readable[0] && slept.elapsed() >= REPLY_TIMEOUT {
            return Err(VfsError::Timeout {
                op,
                secs: REPLY_TIMEOUT.as_secs(),
            });
        }
        let _ = call.read();
        self.poller.learn(slept.elapsed());
        Ok(())
    }

    /// Sends one request on the control descriptor and waits for its reply;
    /// `reply_len` is the room for the reply's body. An error reply is an
    /// error.
    fn call(
        &mut self,
        op: u32,
        name: &'static str,
        nodeid: u64,
        body: &[u8],
        reply_len: u32,
    ) -> Result<Reply, VfsError> {
        let unique = self.next_unique();
        let req = fuse_wire::request(op, unique, nodeid, 0, body);
        self.ram.write(self.ctl_req, &req);
        let mut t = vec![Buf::out(self.ctl_req, IN_HEADER as u32)];
        if !body.is_empty() {
            t.push(Buf::out(
                GuestAddress(self.ctl_req.0 + IN_HEADER as u64),
                body.len() as u32,
            ));
        }
        t.push(Buf::input(self.ctl_reply, OUT_HEADER as u32));
        if reply_len > 0 {
            t.push(Buf::input(
                GuestAddress(self.ctl_reply.0 + OUT_HEADER as u64),
                reply_len,
            ));
        }
        let head = self.queues[1].write_indirect(&self.ram, CTL_DESC, self.ctl_table, &t);
        self.publish(1, head);
        self.kick(1)?;
        let used = loop {
            if let Some((id, len)) = self.take_used(1) {
                if id != u32::from(CTL_DESC) {
                    return Err(VfsError::BadReply {
                        op: name,
                        detail: format!("the device returned chain {id}, which was not pending"),
                    });
                }
                break len;
            }
            self.sleep(1, name)?;
        };
        if (used as usize) < OUT_HEADER {
            return Err(VfsError::BadReply {
                op: name,
                detail: format!("{used}-byte reply"),
            });
        }
        let bytes = self.ram.read(self.ctl_reply, used as usize);
        let r = Reply::parse(used, &bytes);
        if r.unique != unique {
            return Err(VfsError::BadReply {
                op: name,
                detail: "the reply's unique is not the request's".into(),
            });
        }
        if r.error != 0 {
            return Err(VfsError::Errno {
                op: name,
                err: std::io::Error::from_raw_os_error(-r.error),
            });
        }
        Ok(r)
    }

    /// Sends FORGET of one lookup of `nodeid` on the hiprio queue, without
    /// waiting for it (a guest does not either).
    fn forget(&mut self, nodeid: u64) -> Result<(), VfsError> {
        let idx = loop {
            self.reclaim_hiprio()?;
            if let Some(i) = self.forget_free.pop() {
                break i;
            }
            self.sleep(0, "FORGET")?;
        };
        let unique = self.next_unique();
        let req = fuse_wire::request(opcode::FORGET, unique, nodeid, 0, &fuse_wire::forget_in(1));
        let at = GuestAddress(self.forget_bufs.0 + 64 * u64::from(idx));
        self.ram.write(at, &req);
        self.queues[0].write_desc(&self.ram, idx, at.0, req.len() as u32, 0, 0);
        self.publish(0, idx);
        self.kick(0)
    }

    /// Takes back the hiprio descriptors the device has returned.
    fn reclaim_hiprio(&mut self) -> Result<(), VfsError> {
        while let Some((id, _)) = self.take_used(0) {
            match u16::try_from(id) {
                Ok(i) if i < FORGET_SLOTS => self.forget_free.push(i),
                Ok(i) if i < FORGET_SLOTS + BATCH_SLOTS => self.batch_free.push(i),
                _ => {
                    return Err(VfsError::BadReply {
                        op: "FORGET",
                        detail: format!(
                            "the device returned hiprio chain {id}, which was not pending"
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    /// Sends BATCH_FORGET of `nodes` (node id, lookups), at most
    /// [`BATCH_FORGET_MAX`], on the hiprio queue, without waiting for it.
    fn batch_forget(&mut self, nodes: &[(u64, u64)]) -> Result<(), VfsError> {
        let idx = loop {
            self.reclaim_hiprio()?;
            if let Some(i) = self.batch_free.pop() {
                break i;
            }
            self.sleep(0, "BATCH_FORGET")?;
        };
        let mut body = abi::BatchForgetIn {
            count: nodes.len() as u32,
            dummy: 0,
        }
        .as_slice()
        .to_vec();
        for &(nodeid, nlookup) in nodes {
            body.extend_from_slice(abi::ForgetOne { nodeid, nlookup }.as_slice());
        }
        let unique = self.next_unique();
        let req = fuse_wire::request(op::BATCH_FORGET, unique, 0, 0, &body);
        let at = GuestAddress(self.batch_bufs.0 + BATCH_LEN * u64::from(idx - FORGET_SLOTS));
        self.ram.write(at, &req);
        self.queues[0].write_desc(&self.ram, idx, at.0, req.len() as u32, 0, 0);
        self.publish(0, idx);
        self.kick(0)
    }

    /// Counts one more lookup of `nodeid` held.
    fn hold(&mut self, nodeid: u64) {
        *self.held.entry(nodeid).or_insert(0) += 1;
    }

    /// One request of a tree pass, reported to `probe` with `units`; an
    /// entry in the reply is held.
    fn tree_call(
        &mut self,
        probe: &mut dyn Probe,
        units: u64,
        (op, name): (u32, &'static str),
        nodeid: u64,
        body: &[u8],
        reply_len: u32,
    ) -> Result<Reply, VfsError> {
        let t0 = Instant::now();
        let r = self.call(op, name, nodeid, body, reply_len)?;
        probe.op(t0, units);
        Ok(r)
    }

    /// LOOKUP of `name` in `parent`, held; returns the entry.
    fn tree_lookup(
        &mut self,
        probe: &mut dyn Probe,
        units: u64,
        parent: u64,
        name: &[u8],
    ) -> Result<abi::EntryOut, VfsError> {
        let r = self.tree_call(
            probe,
            units,
            (opcode::LOOKUP, "LOOKUP"),
            parent,
            &fuse_wire::name(name),
            fuse_wire::ENTRY_OUT as u32,
        )?;
        let e = entry_of(&r, "LOOKUP")?;
        self.hold(e.nodeid);
        Ok(e)
    }

    /// Lists directory `dir` as Linux does on a cold cache: OPENDIR,
    /// READDIRPLUS until an empty reply (each entry a lookup, held),
    /// RELEASEDIR; READDIR and a LOOKUP per entry where the device does
    /// not offer READDIRPLUS. `.` and `..` are left out.
    fn tree_list(&mut self, probe: &mut dyn Probe, dir: u64) -> Result<Vec<Listed>, VfsError> {
        let flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
        let r = self.tree_call(
            probe,
            0,
            (opcode::OPENDIR, "OPENDIR"),
            dir,
            &fuse_wire::open_in(flags),
            fuse_wire::OPEN_OUT as u32,
        )?;
        let fh = r
            .open_out()
            .ok_or_else(|| bad("OPENDIR", "fuse_open_out"))?
            .fh;
        let plus = self.init.flags & DO_READDIRPLUS != 0;
        let (code, name) = if plus {
            (op::READDIRPLUS, "READDIRPLUS")
        } else {
            (opcode::READDIR, "READDIR")
        };
        let mut out = Vec::new();
        let mut unresolved = Vec::new();
        let mut off = 0u64;
        loop {
            let r = self.tree_call(
                probe,
                0,
                (code, name),
                dir,
                &fuse_wire::read_in(fh, off, READDIR_BUF),
                READDIR_BUF,
            )?;
            if r.body.is_empty() {
                break;
            }
            let mut whole = 0;
            if plus {
                for (e, d) in direntplus(&r.body) {
                    whole += 1;
                    off = d.off;
                    if is_dot(d.name) {
                        continue;
                    }
                    if e.nodeid == 0 {
                        // No entry information: the guest looks it up.
                        unresolved.push(d.name.to_vec());
                        continue;
                    }
                    self.hold(e.nodeid);
                    out.push(Listed {
                        name: d.name.to_vec(),
                        nodeid: e.nodeid,
                        dir: e.attr.mode & libc::S_IFMT == libc::S_IFDIR,
                    });
                }
            } else {
                for d in fuse_wire::dirents(&r.body) {
                    whole += 1;
                    off = d.off;
                    if !is_dot(d.name) {
                        unresolved.push(d.name.to_vec());
                    }
                }
            }
            if whole == 0 {
                return Err(VfsError::BadReply {
                    op: name,
                    detail: format!("{} bytes without a whole entry", r.body.len()),
                });
            }
        }
        self.tree_call(
            probe,
            0,
            (opcode::RELEASEDIR, "RELEASEDIR"),
            dir,
            &fuse_wire::release_in(fh, flags),
            0,
        )?;
        for n in unresolved {
            let e = self.tree_lookup(probe, 0, dir, &n)?;
            out.push(Listed {
                name: n,
                nodeid: e.nodeid,
                dir: e.attr.mode & libc::S_IFMT == libc::S_IFDIR,
            });
        }
        Ok(out)
    }

    /// GETATTR of every entry below `dir`, `depth` levels below the root,
    /// directory by directory, depth first (as `find` visits them).
    fn stat_below(&mut self, probe: &mut dyn Probe, dir: u64, depth: u32) -> Result<u64, VfsError> {
        too_deep(depth)?;
        let mut n = 0;
        for e in self.tree_list(probe, dir)? {
            self.tree_call(
                probe,
                1,
                (opcode::GETATTR, "GETATTR"),
                e.nodeid,
                &fuse_wire::getattr_in(),
                fuse_wire::ATTR_OUT as u32,
            )?;
            n += 1;
            if e.dir {
                n += self.stat_below(probe, e.nodeid, depth + 1)?;
            }
        }
        Ok(n)
    }

    /// Removes directory `dir`, `name` in `parent`, `depth` levels below
    /// the root, and everything below it, as `rm -rf` does: list, UNLINK
    /// the files, recurse, RMDIR.
    fn remove_below(
        &mut self,
        probe: &mut dyn Probe,
        (parent, dir, name): (u64, u64, &[u8]),
        depth: u32,
    ) -> Result<u64, VfsError> {
        too_deep(depth)?;
        let mut n = 0;
        for e in self.tree_list(probe, dir)? {
            if e.dir {
                n += self.remove_below(probe, (dir, e.nodeid, &e.name), depth + 1)?;
            } else {
                self.tree_call(
                    probe,
                    1,
                    (opcode::UNLINK, "UNLINK"),
                    dir,
                    &fuse_wire::name(&e.name),
                    0,
                )?;
                n += 1;
            }
        }
        self.tree_call(
            probe,
            1,
            (op::RMDIR, "RMDIR"),
            parent,
            &fuse_wire::name(name),
            0,
        )?;
        Ok(n + 1)
    }

    /// Checks the reply in I/O slot `slot`, `used` bytes long.
    fn check_io(&self, slot: usize, used: u32) -> Result<(), VfsError> {
        let Some(f) = &self.file else {
            return Ok(());
        };
        let s = &self.io[slot];
        let write = f.spec.write();
        let op = if write { "WRITE" } else { "READ" };
        let h = self.ram.read(s.reply, OUT_HEADER + fuse_wire::WRITE_OUT);
        let hdr: abi::OutHeader = fuse_wire::parse(&h).unwrap_or_default();
        let error = hdr.error;
        if error != 0 {
            return Err(VfsError::Errno {
                op,
                err: std::io::Error::from_raw_os_error(-error),
            });
        }
        if hdr.unique != s.unique {
            return Err(VfsError::BadReply {
                op,
                detail: format!("reply in slot {slot} has another request's unique"),
            });
        }
        if write {
            let n = fuse_wire::parse::<abi::WriteOut>(&h[OUT_HEADER..]).map_or(0, |w| w.size);
            if n != f.spec.len {
                return Err(VfsError::BadReply {
                    op,
                    detail: format!("wrote {n} of {} bytes", f.spec.len),
                });
            }
        } else {
            if used as usize != OUT_HEADER + f.spec.len as usize {
                return Err(VfsError::BadReply {
                    op,
                    detail: format!(
                        "{} of {} bytes at offset {}",
                        i64::from(used) - OUT_HEADER as i64,
                        f.spec.len,
                        s.offset
                    ),
                });
            }
            if !pattern_matches(&self.ram.read(s.data, 8), s.offset) {
                return Err(VfsError::BadReply {
                    op,
                    detail: format!("the data read at offset {} is not the file's", s.offset),
                });
            }
        }
        Ok(())
    }
}

impl From<VfsError> for SessionError {
    fn from(e: VfsError) -> SessionError {
        SessionError::new(e)
    }
}

impl Session for VfsSession {
    fn io_len(&self) -> Option<u32> {
        self.file.as_ref().map(|f| f.spec.len)
    }

    fn submit(&mut self, slot: usize, offset: u64) -> Result<(), SessionError> {
        let Some(f) = &self.file else {
            return Ok(());
        };
        let (nodeid, fh, len, write) = (f.nodeid, f.fh, f.spec.len, f.spec.write());
        let unique = self.next_unique();
        let s = &mut self.io[slot];
        s.unique = unique;
        s.offset = offset;
        let req = if write {
            let mut r = fuse_wire::request(
                opcode::WRITE,
                unique,
                nodeid,
                0,
                &fuse_wire::write_in(fh, offset, len),
            );
            r[..4].copy_from_slice(&((IN_HEADER + RW_IN) as u32 + len).to_le_bytes());
            r
        } else {
            fuse_wire::request(
                opcode::READ,
                unique,
                nodeid,
                0,
                &fuse_wire::read_in(fh, offset, len),
            )
        };
        self.ram.write(s.req, &req);
        let head = s.head;
        self.publish(1, head);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SessionError> {
        Ok(self.kick(1)?)
    }

    fn wait(&mut self, done: &mut Vec<(usize, Instant)>) -> Result<(), SessionError> {
        loop {
            let before = done.len();
            while let Some((id, len)) = self.take_used(1) {
                let now = Instant::now();
                let slot = id as usize;
                if slot >= self.io.len() {
                    return Err(VfsError::BadReply {
                        op: "READ/WRITE",
                        detail: format!("the device returned chain {id}, which was not pending"),
                    }
                    .into());
                }
                self.check_io(slot, len)?;
                done.push((slot, now));
            }
            if done.len() > before {
                return Ok(());
            }
            self.sleep(1, "READ/WRITE")?;
        }
    }

    fn create_stat_unlink(&mut self, name: &[u8]) -> Result<(), SessionError> {
        let dir = self.dir;
        let body = fuse_wire::create_in(
            (libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) as u32,
            libc::S_IFREG | 0o644,
            0o022,
            name,
        );
        let r = self.call(
            opcode::CREATE,
            "CREATE",
            dir,
            &body,
            (fuse_wire::ENTRY_OUT + fuse_wire::OPEN_OUT) as u32,
        )?;
        let (entry, open) = r
            .created()
            .ok_or_else(|| bad("CREATE", "fuse_entry_out and fuse_open_out"))?;
        let (nodeid, fh) = (entry.nodeid, open.fh);
        self.call(
            opcode::GETATTR,
            "GETATTR",
            nodeid,
            &fuse_wire::getattr_in(),
            fuse_wire::ATTR_OUT as u32,
        )?;
        self.call(
            opcode::RELEASE,
            "RELEASE",
            nodeid,
            &fuse_wire::release_in(fh, libc::O_RDWR as u32),
            0,
        )?;
        self.call(opcode::UNLINK, "UNLINK", dir, &fuse_wire::name(name), 0)?;
        self.forget(nodeid)?;
        Ok(())
    }

    fn list_dir(&mut self) -> Result<u64, SessionError> {
        let dir = self.dir;
        let flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
        let r = self.call(
            opcode::OPENDIR,
            "OPENDIR",
            dir,
            &fuse_wire::open_in(flags),
            fuse_wire::OPEN_OUT as u32,
        )?;
        let fh = r
            .open_out()
            .ok_or_else(|| bad("OPENDIR", "fuse_open_out"))?
            .fh;
        let (mut off, mut n) = (0u64, 0u64);
        loop {
            let r = self.call(
                opcode::READDIR,
                "READDIR",
                dir,
                &fuse_wire::read_in(fh, off, READDIR_BUF),
                READDIR_BUF,
            )?;
            if r.body.is_empty() {
                break;
            }
            let before = n;
            for d in fuse_wire::dirents(&r.body) {
                n += 1;
                off = d.off;
            }
            if n == before {
                return Err(VfsError::BadReply {
                    op: "READDIR",
                    detail: format!("{} bytes without a whole entry", r.body.len()),
                }
                .into());
            }
        }
        self.call(
            opcode::RELEASEDIR,
            "RELEASEDIR",
            dir,
            &fuse_wire::release_in(fh, flags),
            0,
        )?;
        Ok(n)
    }
}

impl TreeSession for VfsSession {
    fn tree_stat(&mut self, root: &str, probe: &mut dyn Probe) -> Result<u64, SessionError> {
        let root = self.tree_lookup(probe, 0, 1, root.as_bytes())?.nodeid;
        Ok(self.stat_below(probe, root, 0)?)
    }

    fn tree_create(
        &mut self,
        parent: &str,
        tree: &Tree,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError> {
        let data = contents();
        let parent = self.tree_lookup(probe, 0, 1, parent.as_bytes())?.nodeid;
        let mut nodes = vec![0u64; tree.dirs.len()];
        let mut n = 0;
        for (i, d) in tree.dirs.iter().enumerate() {
            let at = if i == 0 { parent } else { nodes[d.parent] };
            let mut body = abi::MkdirIn {
                mode: 0o755,
                umask: 0o022,
            }
            .as_slice()
            .to_vec();
            body.extend_from_slice(&fuse_wire::name(d.name.as_bytes()));
            let r = self.tree_call(
                probe,
                1,
                (opcode::MKDIR, "MKDIR"),
                at,
                &body,
                fuse_wire::ENTRY_OUT as u32,
            )?;
            nodes[i] = entry_of(&r, "MKDIR")?.nodeid;
            self.hold(nodes[i]);
            n += 1;
            for f in &tree.files[tree.files_of(i)] {
                let flags = (libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY) as u32;
                let body =
                    fuse_wire::create_in(flags, libc::S_IFREG | 0o644, 0o022, f.name.as_bytes());
                let r = self.tree_call(
                    probe,
                    0,
                    (opcode::CREATE, "CREATE"),
                    nodes[i],
                    &body,
                    (fuse_wire::ENTRY_OUT + fuse_wire::OPEN_OUT) as u32,
                )?;
                let (entry, open) = r
                    .created()
                    .ok_or_else(|| bad("CREATE", "fuse_entry_out and fuse_open_out"))?;
                self.hold(entry.nodeid);
                if f.size > 0 {
                    if f.size > self.init.max_write {
                        return Err(VfsError::TooBig {
                            limit: self.init.max_write,
                            need: f.size,
                        }
                        .into());
                    }
                    let mut body = fuse_wire::write_in(open.fh, 0, f.size);
                    body.extend_from_slice(&data[..f.size as usize]);
                    let r = self.tree_call(
                        probe,
                        0,
                        (opcode::WRITE, "WRITE"),
                        entry.nodeid,
                        &body,
                        fuse_wire::WRITE_OUT as u32,
                    )?;
                    let wrote = fuse_wire::parse::<abi::WriteOut>(&r.body).map_or(0, |w| w.size);
                    if wrote != f.size {
                        return Err(VfsError::BadReply {
                            op: "WRITE",
                            detail: format!("wrote {wrote} of {} bytes", f.size),
                        }
                        .into());
                    }
                }
                self.tree_call(
                    probe,
                    1,
                    (opcode::RELEASE, "RELEASE"),
                    entry.nodeid,
                    &fuse_wire::release_in(open.fh, flags),
                    0,
                )?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn tree_remove(
        &mut self,
        parent: &str,
        name: &str,
        probe: &mut dyn Probe,
    ) -> Result<u64, SessionError> {
        let parent = self.tree_lookup(probe, 0, 1, parent.as_bytes())?.nodeid;
        // rm's lstat of its argument.
        let root = self.tree_lookup(probe, 0, parent, name.as_bytes())?.nodeid;
        Ok(self.remove_below(probe, (parent, root, name.as_bytes()), 0)?)
    }

    fn hold_inodes(&mut self, set: &InodeSet, probe: &mut dyn Probe) -> Result<u64, SessionError> {
        let root = self.tree_lookup(probe, 0, 1, set.root.as_bytes())?.nodeid;
        for d in 0..set.dirs() {
            let dir = self
                .tree_lookup(probe, 0, root, InodeSet::dir_name(d).as_bytes())?
                .nodeid;
            for i in set.files_of(d) {
                self.tree_lookup(probe, 1, dir, InodeSet::file_name(i).as_bytes())?;
            }
        }
        Ok(self.held.len() as u64)
    }

    fn forget_all(&mut self) -> Result<u64, SessionError> {
        let held: Vec<(u64, u64)> = self.held.drain().collect();
        for chunk in held.chunks(BATCH_FORGET_MAX) {
            self.batch_forget(chunk)?;
        }
        // Until the device has returned every BATCH_FORGET (it has then
        // served them).
        loop {
            self.reclaim_hiprio()?;
            if self.batch_free.len() == usize::from(BATCH_SLOTS) {
                break;
            }
            self.sleep(0, "BATCH_FORGET")?;
        }
        Ok(held.len() as u64)
    }

    fn listing(&self) -> &'static str {
        if self.init.flags & DO_READDIRPLUS != 0 {
            "READDIRPLUS"
        } else {
            "READDIR+LOOKUP"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1mib_read_is_a_table_of_259_descriptors() {
        let at = GuestAddress(0);
        let mut t = vec![Buf::out(at, 40), Buf::out(at, 40), Buf::input(at, 16)];
        t.extend(Buf::pieces(GuestAddress(4096), 1 << 20, PAGE, true));
        assert_eq!(t.len(), 259);
        assert!(t[3..].iter().all(|b| b.len == 4096 && b.writable));
        assert_eq!(Buf::pieces(at, 1 << 20, 1 << 20, true).count(), 1);
        let odd: Vec<_> = Buf::pieces(GuestAddress(8192), 5000, PAGE, false).collect();
        assert_eq!(
            odd,
            [
                Buf::out(GuestAddress(8192), 4096),
                Buf::out(GuestAddress(8192 + 4096), 904)
            ]
        );
    }

    #[test]
    fn guest_memory_fits_the_slots() {
        let spec = IoSpec {
            role: FileRole::Read,
            len: 1 << 20,
            qd: 8,
            pattern: crate::workload::Pattern::Sequential,
        };
        assert!(ram_size(&Kind::Io(spec)) >= (4 << 20) + 8 * (1 << 20));
        assert_eq!(ram_size(&Kind::Readdir) % (2 << 20), 0);
    }

    #[test]
    fn readdirplus_entries_parse_with_their_lookups() {
        let mut body = Vec::new();
        for (i, (name, nodeid)) in [(&b"."[..], 0u64), (b"file-1.c", 42)].iter().enumerate() {
            let d = abi::Direntplus {
                entry_out: abi::EntryOut {
                    nodeid: *nodeid,
                    attr: abi::Attr {
                        mode: libc::S_IFREG | 0o644,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                dirent: abi::Dirent {
                    ino: 7,
                    off: i as u64 + 1,
                    namelen: name.len() as u32,
                    type_: 8,
                },
            };
            body.extend_from_slice(d.as_slice());
            body.extend_from_slice(name);
            body.resize((body.len() + 7) & !7, 0);
        }
        assert_eq!(std::mem::size_of::<abi::Direntplus>(), 152);
        let got: Vec<_> = direntplus(&body)
            .map(|(e, d)| (e.nodeid, d.off, d.name.to_vec()))
            .collect();
        assert_eq!(got, [(0, 1, b".".to_vec()), (42, 2, b"file-1.c".to_vec())]);
        assert_eq!(direntplus(&body[..200]).count(), 1, "truncated");
        assert!(is_dot(b"..") && !is_dot(b"...") && !is_dot(b".a"));
    }
}
