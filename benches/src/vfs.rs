//! virtio-fs servers driven over vhost-user the way a Linux guest drives
//! them, through vmm-mini's harness: memfd guest memory ([`GuestRam`]),
//! split virtqueues written from the driver's side ([`SplitQueue`]) and the
//! harness's vhost-user frontend ([`VhostUserConn`]). Every server sees the
//! same requests in the same guest-memory layout.
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

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use device_queue::Poller;
use vm_memory::GuestAddress;
use vmm_mini::fuse_wire::{self, init_flags, opcode, InitOut, Reply, IN_HEADER, OUT_HEADER};
use vmm_mini::harness::{GuestRam, HarnessError, SplitQueue, DESC_F_NEXT, DESC_F_WRITE};
use vmm_mini::vhost_frontend::{
    FrontendError, VhostUserConn, VringSetup, F_INDIRECT_DESC, F_VERSION_1,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::fixture::{CREATE_DIR, DATA, DIR10K, WDATA};
use crate::session::{Session, SessionError};
use crate::workload::{pattern_matches, FileRole, IoSpec, Kind, WRITE_BYTE};

/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `VRING_USED_F_NO_NOTIFY`.
const USED_F_NO_NOTIFY: u16 = 1;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Entries of the request queue.
pub const REQUEST_QUEUE_SIZE: u16 = 1024;
/// Entries of the hiprio queue.
pub const HIPRIO_QUEUE_SIZE: u16 = 256;
/// The buffer size of one READDIR: one page, as Linux 6.1's FUSE sends.
pub const READDIR_BUF: u32 = 4096;
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
/// How long fsbench waits for any reply before giving up on the server.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a virtio-fs server could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// Guest memory could not be made.
    #[error("guest memory: {0}")]
    Harness(#[from] HarnessError),
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

/// One descriptor of an indirect table: guest address, length, device-writable.
type TableEntry = (u64, u32, bool);

/// Writes `entries` as a chained indirect table at `at`.
fn write_table(ram: &GuestRam, at: GuestAddress, entries: &[TableEntry]) {
    let mut bytes = Vec::with_capacity(entries.len() * 16);
    for (i, &(addr, len, writable)) in entries.iter().enumerate() {
        let last = i + 1 == entries.len();
        let mut flags = if writable { DESC_F_WRITE } else { 0 };
        if !last {
            flags |= DESC_F_NEXT;
        }
        let next = if last { 0 } else { i as u16 + 1 };
        bytes.extend_from_slice(&addr.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
    }
    ram.write(at, &bytes);
}

/// `len` bytes at `at` as descriptors of at most `unit` bytes.
fn pieces(
    at: GuestAddress,
    len: u32,
    unit: u32,
    writable: bool,
) -> impl Iterator<Item = TableEntry> {
    (0..len.div_ceil(unit)).map(move |i| {
        let off = i * unit;
        (at.0 + off as u64, unit.min(len - off), writable)
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
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
    kicks: [EventFd; 2],
    calls: [EventFd; 2],
    _conn: VhostUserConn,
    unique: u64,
    /// What INIT negotiated.
    pub init: InitOut,
    /// EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Per queue: chains published, the avail index at the last kick
    /// decision, used entries taken (all wrapping, as the ring's indices).
    published: [u16; 2],
    kicked: [u16; 2],
    consumed: [u16; 2],
    ctl_req: GuestAddress,
    ctl_reply: GuestAddress,
    ctl_table: GuestAddress,
    forget_bufs: GuestAddress,
    forget_free: Vec<u16>,
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
            s.qd as u64 * (s.len as u64 + 3 * PAGE as u64 + 16 * (s.len / PAGE + 8) as u64)
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
        let queues = [
            SplitQueue::new(&mut ram, HIPRIO_QUEUE_SIZE),
            SplitQueue::new(&mut ram, REQUEST_QUEUE_SIZE),
        ];
        let efd = || EventFd::new(EFD_NONBLOCK).map_err(VfsError::EventFd);
        let kicks = [efd()?, efd()?];
        let calls = [efd()?, efd()?];
        let mut conn = connect_retry(socket)?;
        if conn.offered() & F_INDIRECT_DESC == 0 {
            return Err(VfsError::NoIndirect);
        }
        let setups: Vec<VringSetup<'_>> = (0..2)
            .map(|i| {
                let (desc, avail, used) = queues[i].addresses();
                VringSetup {
                    size: queues[i].size(),
                    desc,
                    avail,
                    used,
                    kick: &kicks[i],
                    call: &calls[i],
                }
            })
            .collect();
        let event_idx = event_idx && conn.offered() & F_EVENT_IDX != 0;
        let mut features = F_VERSION_1 | F_INDIRECT_DESC;
        if event_idx {
            features |= F_EVENT_IDX;
        }
        conn.start(&ram.memory(), features, &setups)?;
        drop(setups);
        let ctl_req = ram.alloc(CTL_REQ_LEN, 4096);
        let ctl_reply = ram.alloc(OUT_HEADER as u64 + CTL_REPLY_LEN as u64, 4096);
        let ctl_table = ram.alloc(16 * 8, 16);
        let forget_bufs = ram.alloc(64 * FORGET_SLOTS as u64, 64);
        let mut s = VfsSession {
            ram,
            queues,
            kicks,
            calls,
            _conn: conn,
            unique: 0,
            event_idx,
            published: [0; 2],
            kicked: [0; 2],
            consumed: [0; 2],
            init: InitOut {
                minor: 0,
                flags: 0,
                max_write: 0,
                max_pages: 0,
            },
            ctl_req,
            ctl_reply,
            ctl_table,
            forget_bufs,
            forget_free: (0..FORGET_SLOTS).rev().collect(),
            io: Vec::new(),
            file: None,
            dir: 0,
            poller: Poller::new(guest_poll),
        };
        let r = s.call(
            opcode::INIT,
            "INIT",
            0,
            &fuse_wire::init_body_flags(INIT_FLAGS),
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
        Ok(u64_at(&r.body, 0))
    }

    fn setup_io(&mut self, spec: IoSpec, layout: DataLayout) -> Result<(), VfsError> {
        let unit = match layout {
            DataLayout::Pages => PAGE,
            DataLayout::Flat => spec.len,
        };
        let read_limit = if self.init.max_pages > 0 {
            self.init.max_pages as u32 * PAGE
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
        let fh = u64_at(&r.body, 0);
        let fill = vec![WRITE_BYTE; spec.len as usize];
        for i in 0..spec.qd {
            let req = self.ram.alloc((IN_HEADER + RW_IN) as u64, 64);
            let reply = self.ram.alloc(64, 64);
            let data = self.ram.alloc(spec.len as u64, PAGE as u64);
            let mut t: Vec<TableEntry> = vec![
                (req.0, IN_HEADER as u32, false),
                (req.0 + IN_HEADER as u64, RW_IN as u32, false),
            ];
            if spec.write() {
                self.ram.write(data, &fill);
                t.extend(pieces(data, spec.len, unit, false));
                t.push((reply.0, OUT_HEADER as u32, true));
                t.push((
                    reply.0 + OUT_HEADER as u64,
                    fuse_wire::WRITE_OUT as u32,
                    true,
                ));
            } else {
                t.push((reply.0, OUT_HEADER as u32, true));
                t.extend(pieces(data, spec.len, unit, true));
            }
            let table = self.ram.alloc(16 * t.len() as u64, 16);
            write_table(&self.ram, table, &t);
            let head = i as u16;
            self.queues[1].write_desc(
                &self.ram,
                head,
                table.0,
                16 * t.len() as u32,
                DESC_F_INDIRECT,
                0,
            );
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
        self.published[q] = self.published[q].wrapping_add(1);
    }

    /// The next used element of queue `q`, if any.
    fn take_used(&mut self, q: usize) -> Option<(u32, u32)> {
        let u = self.queues[q].take_used(&self.ram);
        if u.is_some() {
            self.consumed[q] = self.consumed[q].wrapping_add(1);
        }
        u
    }

    fn read_u16(&self, at: u64) -> u16 {
        let b = self.ram.read(GuestAddress(at), 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Notifies queue `q` of what was published since the last call, if the
    /// device wants to be notified (Linux's `virtqueue_kick_prepare`).
    fn kick(&mut self, q: usize) -> Result<(), VfsError> {
        let (new, old) = (self.published[q], self.kicked[q]);
        if new == old {
            return Ok(());
        }
        self.kicked[q] = new;
        // The avail index must be visible before the device's state is read.
        fence(Ordering::SeqCst);
        let (_, _, used) = self.queues[q].addresses();
        let size = self.queues[q].size() as u64;
        let needed = if self.event_idx {
            let avail_event = self.read_u16(used.0 + 4 + 8 * size);
            need_event(avail_event, new, old)
        } else {
            self.read_u16(used.0) & USED_F_NO_NOTIFY == 0
        };
        if needed {
            self.kicks[q].write(1).map_err(VfsError::EventFd)?;
        }
        Ok(())
    }

    /// Sleeps until queue `q`'s call eventfd fires; returns at once if a
    /// used entry is already there. With EVENT_IDX, first asks for an
    /// interrupt at the next used entry (`used_event`).
    fn sleep(&mut self, q: usize, op: &'static str) -> Result<(), VfsError> {
        let (_, avail, used) = self.queues[q].addresses();
        if self.event_idx {
            let size = self.queues[q].size() as u64;
            self.ram.write(
                GuestAddress(avail.0 + 4 + 2 * size),
                &self.consumed[q].to_le_bytes(),
            );
            fence(Ordering::SeqCst);
        }
        if self.read_u16(used.0 + 2) != self.consumed[q] {
            return Ok(());
        }
        // Poll first, as KVM polls a halted vCPU.
        if self
            .poller
            .spin(|| self.read_u16(used.0 + 2) != self.consumed[q])
        {
            // The interrupt this polling caught is consumed, as a vCPU's
            // pending interrupt is delivered on its wake-up.
            let _ = self.calls[q].read();
            return Ok(());
        }
        let slept = Instant::now();
        let mut pfd = libc::pollfd {
            fd: self.calls[q].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, REPLY_TIMEOUT.as_millis() as i32) };
        if r == 0 {
            return Err(VfsError::Timeout {
                op,
                secs: REPLY_TIMEOUT.as_secs(),
            });
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(VfsError::EventFd(e));
            }
        }
        let _ = self.calls[q].read();
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
        let mut t: Vec<TableEntry> = vec![(self.ctl_req.0, IN_HEADER as u32, false)];
        if !body.is_empty() {
            t.push((self.ctl_req.0 + IN_HEADER as u64, body.len() as u32, false));
        }
        t.push((self.ctl_reply.0, OUT_HEADER as u32, true));
        if reply_len > 0 {
            t.push((self.ctl_reply.0 + OUT_HEADER as u64, reply_len, true));
        }
        write_table(&self.ram, self.ctl_table, &t);
        self.queues[1].write_desc(
            &self.ram,
            CTL_DESC,
            self.ctl_table.0,
            16 * t.len() as u32,
            DESC_F_INDIRECT,
            0,
        );
        self.publish(1, CTL_DESC);
        self.kick(1)?;
        let used = loop {
            if let Some((id, len)) = self.take_used(1) {
                if id != CTL_DESC as u32 {
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
        if u64_at(&bytes, 8) != unique {
            return Err(VfsError::BadReply {
                op: name,
                detail: "the reply's unique is not the request's".into(),
            });
        }
        let r = Reply::parse(used, &bytes);
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
            while let Some((id, _)) = self.take_used(0) {
                self.forget_free.push(id as u16);
            }
            if let Some(i) = self.forget_free.pop() {
                break i;
            }
            self.sleep(0, "FORGET")?;
        };
        let unique = self.next_unique();
        let req = fuse_wire::request(opcode::FORGET, unique, nodeid, 0, &fuse_wire::forget_in(1));
        let at = GuestAddress(self.forget_bufs.0 + 64 * idx as u64);
        self.ram.write(at, &req);
        self.queues[0].write_desc(&self.ram, idx, at.0, req.len() as u32, 0, 0);
        self.publish(0, idx);
        self.kick(0)
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
        let error = u32_at(&h, 4) as i32;
        if error != 0 {
            return Err(VfsError::Errno {
                op,
                err: std::io::Error::from_raw_os_error(-error),
            });
        }
        if u64_at(&h, 8) != s.unique {
            return Err(VfsError::BadReply {
                op,
                detail: format!("reply in slot {slot} has another request's unique"),
            });
        }
        if write {
            let n = u32_at(&h, OUT_HEADER);
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
                        used as i64 - OUT_HEADER as i64,
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

/// Linux's `vring_need_event`: whether moving the index from `old` to `new`
/// passes `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn connect_retry(socket: &Path) -> Result<VhostUserConn, VfsError> {
    let start = Instant::now();
    loop {
        match VhostUserConn::connect(socket, 2) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > Duration::from_secs(3) => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
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
        let nodeid = u64_at(&r.body, 0);
        let fh = u64_at(&r.body, fuse_wire::ENTRY_OUT);
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
        let fh = u64_at(&r.body, 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1mib_read_is_a_chain_of_259_descriptors() {
        let mut ram = GuestRam::new(4 << 20).unwrap();
        let data = ram.alloc(1 << 20, 4096);
        let mut t: Vec<TableEntry> = vec![(0, 40, false), (40, 40, false), (80, 16, true)];
        t.extend(pieces(data, 1 << 20, PAGE, true));
        assert_eq!(t.len(), 259);
        assert!(t[3..].iter().all(|e| e.1 == 4096 && e.2));
        assert_eq!(pieces(data, 1 << 20, 1 << 20, true).count(), 1);
        let odd: Vec<_> = pieces(data, 5000, PAGE, false).collect();
        assert_eq!(odd, [(data.0, 4096, false), (data.0 + 4096, 904, false)]);
        let table = ram.alloc(16 * t.len() as u64, 16);
        write_table(&ram, table, &t);
        let last = ram.read(GuestAddress(table.0 + 16 * 258), 16);
        assert_eq!(u64_at(&last, 0), data.0 + 255 * 4096);
        assert_eq!(
            u16::from_le_bytes([last[12], last[13]]),
            DESC_F_WRITE,
            "no NEXT on the last"
        );
        let first = ram.read(table, 16);
        assert_eq!(u16::from_le_bytes([first[12], first[13]]), DESC_F_NEXT);
        assert_eq!(u16::from_le_bytes([first[14], first[15]]), 1);
    }

    #[test]
    fn need_event_is_linuxs() {
        assert!(need_event(0, 1, 0), "the first kick");
        assert!(need_event(5, 8, 5), "the event index was passed");
        assert!(!need_event(8, 8, 5), "the device asked to hear past 8 only");
        assert!(!need_event(3, 8, 5), "already notified past 3");
        assert!(need_event(65535, 2, 65534), "across the wrap");
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
}
