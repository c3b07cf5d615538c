//! Frontend faults against `virtiofsd-rs`, driven over its vhost-user
//! socket by `virtio-driver`'s frontend with many requests in flight on
//! every queue, once per I/O engine: the frontend leaves mid-stream,
//! replaces the memory table under running queues, programs a ring outside
//! guest memory, and stops a queue mid-stream (GET_VRING_BASE) to resume
//! it.
//!
//! Whatever the fault, the daemon goes on serving or exits cleanly (status
//! 0, or its error exit 1: never a signal, never a panic in its log), no
//! used entry answers a chain twice or a chain never published
//! ([`InFlight`]), every reply that arrives is the right one (its
//! `unique`, a READ's bytes), and every WRITE the daemon acknowledged is in
//! the host file once the daemon has gone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_driver::fs::FsDriver;
use virtio_driver::fuse::{self as fuse_wire, abi, init_flags, opcode, OUT_HEADER};
use virtio_driver::process::Backend;
use virtio_driver::{
    Buf, GuestRam, InFlight, RingAddrs, SplitQueue, UsedError, VhostUserDevice, F_EVENT_IDX,
    F_INDIRECT_DESC, F_VERSION_1,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const OURS: &str = env!("CARGO_BIN_EXE_virtiofsd-rs");
/// Every scenario runs with each engine.
const ENGINES: [&str; 2] = ["io-uring", "sync"];
/// Entries per queue: room for [`SLOTS`] chains of three descriptors.
const QUEUE_SIZE: u16 = 256;
/// Chains a lane can have in flight (descriptors `3 * slot ..`).
const SLOTS: usize = QUEUE_SIZE as usize / 3;
/// Guest memory.
const RAM: usize = 64 << 20;
/// Bytes per WRITE.
const WRITE_LEN: u32 = 128 << 10;
/// Bytes per READ.
const READ_LEN: u32 = 32 << 10;
/// A lane's WRITE data: each WRITE takes a window of [`WRITE_LEN`] bytes at
/// its own offset in it, so no two WRITEs carry the same bytes.
const PATTERN_LEN: u64 = WRITE_LEN as u64 + (64 << 10);
/// The host file READs read.
const RD_LEN: usize = 1 << 20;
/// How long the daemon gets to answer what is in flight.
const SETTLE: Duration = Duration::from_secs(30);

/// Byte `i` of lane `q`'s WRITE data.
fn pattern(q: usize, i: u64) -> u8 {
    (i.wrapping_mul(131) ^ (i / 977) ^ (q as u64 * 29)) as u8
}

/// Byte `i` of the host file `rd`.
fn rd_byte(i: usize) -> u8 {
    ((i % 251) ^ (i >> 9)) as u8
}

/// A WRITE's header: `fuse_in_header` and `fuse_write_in`, the length
/// counting the data that follows in its own descriptor.
const WRITE_HDR: u32 = (fuse_wire::IN_HEADER + std::mem::size_of::<abi::WriteIn>()) as u32;

/// What a chain in flight asks for.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// WRITE of [`WRITE_LEN`] bytes at `off` of the lane's file, the data
    /// at `src` in the lane's pattern.
    Write { off: u64, src: u64 },
    /// READ of [`READ_LEN`] bytes at `off` of `rd`.
    Read { off: u64 },
    /// FSYNC of the lane's file.
    Fsync,
    /// FORGET (hiprio): no reply.
    Forget,
}

/// A chain in flight.
#[derive(Debug)]
struct Req {
    slot: usize,
    unique: u64,
    op: Op,
}

/// Where a slot's request header and reply go.
#[derive(Debug, Clone, Copy)]
struct Slot {
    hdr: GuestAddress,
    reply: GuestAddress,
}

/// The bytes one slot needs for a reply: a header and a READ's data.
const REPLY_ROOM: u64 = OUT_HEADER as u64 + READ_LEN as u64;

/// One queue's traffic: its chains in flight, their buffers (in `view`,
/// guest memory as the lane reads and writes it), and the file its WRITEs
/// and FSYNCs go to (hiprio's: the node its FORGETs forget).
struct Lane {
    q: usize,
    node: u64,
    fh: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    flight: InFlight<Req>,
    pattern: GuestAddress,
    view: GuestMemoryMmap,
    /// Where [`Lane::new`] put the buffers.
    home: (Vec<Slot>, GuestAddress),
    writes: u64,
    reads: u64,
}

impl Lane {
    fn new(
        q: usize,
        node: u64,
        fh: u64,
        view: GuestMemoryMmap,
        alloc: &mut dyn FnMut(u64) -> GuestAddress,
    ) -> Lane {
        let mut lane = Lane {
            q,
            node,
            fh,
            slots: Vec::new(),
            free: Vec::new(),
            flight: InFlight::new(),
            pattern: GuestAddress(0),
            view: view.clone(),
            home: (Vec::new(), GuestAddress(0)),
            writes: 0,
            reads: 0,
        };
        lane.place(view, alloc);
        lane.home = (lane.slots.clone(), lane.pattern);
        lane
    }

    /// Puts the lane's buffers at new guest addresses from `alloc`, seen
    /// through `view`; nothing may be in flight.
    fn place(&mut self, view: GuestMemoryMmap, alloc: &mut dyn FnMut(u64) -> GuestAddress) {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                hdr: alloc(128),
                reply: alloc(REPLY_ROOM),
            })
            .collect();
        self.place_at(view, slots, alloc(PATTERN_LEN));
    }

    /// Puts the lane's buffers at `slots` and `pattern`, seen through
    /// `view`; nothing may be in flight.
    fn place_at(&mut self, view: GuestMemoryMmap, slots: Vec<Slot>, pattern_at: GuestAddress) {
        assert_eq!(self.flight.pending(), 0, "queue {}: buffers in use", self.q);
        self.view = view;
        self.slots = slots;
        self.free = (0..SLOTS).rev().collect();
        self.pattern = pattern_at;
        let data: Vec<u8> = (0..PATTERN_LEN).map(|i| pattern(self.q, i)).collect();
        self.view
            .write_slice(&data, self.pattern)
            .expect("the lane's pattern is in guest memory");
    }

    /// Puts the lane's buffers back where [`Lane::new`] put them.
    fn go_home(&mut self, view: GuestMemoryMmap) {
        let (slots, at) = self.home.clone();
        self.place_at(view, slots, at);
    }

    /// Writes the chain for `op` in a free slot and publishes it on
    /// `queue`.
    ///
    /// # Panics
    /// When every slot is in flight (a bug in the scenario).
    fn publish(
        &mut self,
        ram: &GuestRam,
        queue: &mut SplitQueue,
        unique: u64,
        op: Op,
        rd: (u64, u64),
    ) {
        let slot = self
            .free
            .pop()
            .unwrap_or_else(|| panic!("queue {}: no free slot", self.q));
        let Slot { hdr, reply } = self.slots[slot];
        let (request, bufs): (Vec<u8>, Vec<Buf>) = match op {
            Op::Write { off, src } => {
                let body = fuse_wire::write_in(self.fh, off, WRITE_LEN);
                let mut r = fuse_wire::request(opcode::WRITE, unique, self.node, 0, &body);
                r[..4].copy_from_slice(&(WRITE_HDR + WRITE_LEN).to_le_bytes());
                let data = GuestAddress(self.pattern.0 + src);
                let room = (OUT_HEADER + std::mem::size_of::<abi::WriteOut>()) as u32;
                let bufs = vec![
                    Buf::out(hdr, r.len() as u32),
                    Buf::out(data, WRITE_LEN),
                    Buf::input(reply, room),
                ];
                (r, bufs)
            }
            Op::Read { off } => {
                let body = fuse_wire::read_in(rd.1, off, READ_LEN);
                let r = fuse_wire::request(opcode::READ, unique, rd.0, 0, &body);
                let bufs = vec![
                    Buf::out(hdr, r.len() as u32),
                    Buf::input(reply, REPLY_ROOM as u32),
                ];
                (r, bufs)
            }
            Op::Fsync => {
                let body = fuse_wire::fsync_in(self.fh, false);
                let r = fuse_wire::request(opcode::FSYNC, unique, self.node, 0, &body);
                let bufs = vec![
                    Buf::out(hdr, r.len() as u32),
                    Buf::input(reply, OUT_HEADER as u32),
                ];
                (r, bufs)
            }
            Op::Forget => {
                let body = fuse_wire::forget_in(1);
                let r = fuse_wire::request(opcode::FORGET, unique, self.node, 0, &body);
                (r.clone(), vec![Buf::out(hdr, r.len() as u32)])
            }
        };
        self.view
            .write_slice(&request, hdr)
            .expect("header in memory");
        // No stale reply can pass for this one.
        self.view
            .write_slice(&[0u8; OUT_HEADER], reply)
            .expect("reply in memory");
        let head = (slot * 3) as u16;
        queue.write_chain_at(ram, head, &bufs);
        self.flight
            .publish(ram, queue, head, Req { slot, unique, op });
    }

    /// The next WRITE: the lane's `writes`-th, at its own offset with its
    /// own data.
    fn next_write(&mut self) -> Op {
        let k = self.writes;
        self.writes += 1;
        Op::Write {
            off: k * u64::from(WRITE_LEN),
            src: (k * 4099) % (PATTERN_LEN - u64::from(WRITE_LEN)),
        }
    }

    /// The next READ of `rd`.
    fn next_read(&mut self) -> Op {
        let k = self.reads;
        self.reads += 1;
        Op::Read {
            off: (k * 12_289 + self.q as u64 * 777) % (RD_LEN as u64 - u64::from(READ_LEN)),
        }
    }

    /// Checks one answered chain: `Ok(true)` for the right reply,
    /// `Ok(false)` for a refusal (nothing written, or an errno), `Err` for
    /// a wrong reply.
    fn check(&self, req: &Req, used: u32) -> Result<bool, String> {
        let reply = self.slots[req.slot].reply;
        if let Op::Forget = req.op {
            return if used == 0 {
                Ok(true)
            } else {
                Err(format!("FORGET answered with {used} bytes"))
            };
        }
        if used == 0 {
            return Ok(false);
        }
        let mut bytes = vec![0u8; used as usize];
        self.view
            .read_slice(&mut bytes, reply)
            .map_err(|e| format!("reply unreadable: {e}"))?;
        let h: abi::OutHeader = fuse_wire::parse(&bytes).ok_or("reply shorter than its header")?;
        if h.unique != req.unique || h.len != used {
            return Err(format!(
                "{:?}: reply {h:?} for unique {} with {used} bytes used",
                req.op, req.unique
            ));
        }
        if h.error != 0 {
            return Ok(false);
        }
        let body = &bytes[OUT_HEADER..];
        match req.op {
            Op::Write { .. } => {
                let out: abi::WriteOut = fuse_wire::parse(body).ok_or("short WRITE reply")?;
                if out.size != WRITE_LEN {
                    return Err(format!("WRITE of {WRITE_LEN} acknowledged {}", out.size));
                }
            }
            Op::Read { off } => {
                let want: Vec<u8> = (off as usize..off as usize + READ_LEN as usize)
                    .map(rd_byte)
                    .collect();
                if body != want {
                    return Err(format!(
                        "READ at {off}: wrong bytes ({} of them)",
                        body.len()
                    ));
                }
            }
            Op::Fsync | Op::Forget => {}
        }
        Ok(true)
    }
}

/// An acknowledged WRITE.
#[derive(Debug, Clone, Copy)]
struct Acked {
    q: usize,
    off: u64,
    src: u64,
}

/// What the answers of one collection were.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    done: usize,
    refused: usize,
}

/// A daemon on a fresh share, a frontend with hiprio and `request_queues`
/// request queues, and one [`Lane`] per queue.
struct World {
    engine: &'static str,
    _dir: tempfile::TempDir,
    share: PathBuf,
    log: PathBuf,
    daemon: Backend,
    ram: GuestRam,
    queues: Vec<SplitQueue>,
    link: Option<VhostUserDevice>,
    unique: u64,
    lanes: Vec<Lane>,
    rd: (u64, u64),
    acked: Vec<Acked>,
}

impl World {
    fn new(engine: &'static str, request_queues: usize) -> World {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let rd: Vec<u8> = (0..RD_LEN).map(rd_byte).collect();
        std::fs::write(share.join("rd"), rd).unwrap();
        std::fs::write(share.join("spare"), b"").unwrap();
        for q in 1..=request_queues {
            std::fs::write(share.join(format!("w{q}")), b"").unwrap();
        }
        let log = dir.path().join("daemon.log");
        let rq = request_queues.to_string();
        let extra = ["--io-engine", engine, "--request-queues", &rq];
        let sock = dir.path().join("vfs.sock");
        let daemon = Backend::start_logged(&[OURS.to_string()], &share, &sock, &extra, &log);
        let want = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX;
        let mut g = FsDriver::with_layout(request_queues + 1, QUEUE_SIZE, RAM, |ram, queues| {
            VhostUserDevice::connect(&daemon.socket, ram, queues, want).expect("vhost-user setup")
        });
        // A daemon that stops answering fails the test, not hangs it.
        g.link.set_reply_timeout(Some(SETTLE));
        // As Linux's driver: event index, so the daemon polls its queues.
        assert_ne!(g.link.features & F_EVENT_IDX, 0, "EVENT_IDX offered");
        for q in &mut g.queues {
            q.set_event_idx(true);
        }
        let init = fuse_wire::init_body_flags(init_flags::MAX_PAGES);
        assert_eq!(g.request(opcode::INIT, 0, &init).error, 0, "INIT");
        let rd_node = g.lookup(1, b"rd");
        let rd = (rd_node, g.open(rd_node, libc::O_RDONLY));
        // Hiprio's lane: FORGETs of lookups of `spare`, taken here.
        let spare = (0..16).map(|_| g.lookup(1, b"spare")).last();
        let mut files = vec![(spare.expect("a lookup"), 0)];
        for q in 1..=request_queues {
            g.queue = q;
            let node = g.lookup(1, format!("w{q}").as_bytes());
            files.push((node, g.open(node, libc::O_RDWR)));
        }
        let FsDriver {
            mut ram,
            queues,
            link,
            unique,
            ..
        } = g;
        let view: GuestMemoryMmap = (*ram.memory()).clone();
        let lanes = files
            .into_iter()
            .enumerate()
            .map(|(q, (node, fh))| {
                Lane::new(q, node, fh, view.clone(), &mut |len| ram.alloc(len, 64))
            })
            .collect();
        World {
            engine,
            _dir: dir,
            share,
            log,
            daemon,
            ram,
            queues,
            link: Some(link),
            unique,
            lanes,
            rd,
            acked: Vec::new(),
        }
    }

    fn link(&mut self) -> &mut VhostUserDevice {
        self.link.as_mut().expect("the frontend is connected")
    }

    fn publish(&mut self, q: usize, op: Op) {
        self.unique += 1;
        let rd = self.rd;
        self.lanes[q].publish(&self.ram, &mut self.queues[q], self.unique, op, rd);
    }

    /// On each request queue `writes` WRITEs, an FSYNC if asked, `reads`
    /// READs; on hiprio `forgets` FORGETs. Then the queues are kicked (as
    /// event index asks).
    fn load(&mut self, writes: usize, fsync: bool, reads: usize, forgets: usize) {
        let all: Vec<usize> = (0..self.lanes.len()).collect();
        self.load_on(&all, writes, fsync, reads, forgets);
    }

    /// [`World::load`] on `queues` only.
    fn load_on(
        &mut self,
        queues: &[usize],
        writes: usize,
        fsync: bool,
        reads: usize,
        forgets: usize,
    ) {
        for &q in queues.iter().filter(|&&q| q > 0) {
            for _ in 0..writes {
                let op = self.lanes[q].next_write();
                self.publish(q, op);
            }
            if fsync {
                self.publish(q, Op::Fsync);
            }
            for _ in 0..reads {
                let op = self.lanes[q].next_read();
                self.publish(q, op);
            }
        }
        if queues.contains(&0) {
            for _ in 0..forgets {
                self.publish(0, Op::Forget);
            }
        }
        for &q in queues {
            self.kick(q);
        }
    }

    /// Notifies queue `q` if event index asks for it.
    fn kick(&mut self, q: usize) {
        if self.queues[q].kick_prepare(&self.ram) {
            self.link().kick(q).expect("kick");
        }
    }

    /// Chains published and not yet in the used ring, per queue, as the
    /// used index says right now.
    fn unanswered(&self) -> Vec<u16> {
        self.queues
            .iter()
            .map(|q| q.avail_idx().wrapping_sub(q.used_idx(&self.ram)))
            .collect()
    }

    /// Loads every queue as [`World::load`]`(40, true, 16, 20)` does, then,
    /// with those requests in flight, replaces the memory table with guest
    /// memory mapped anew (plus `extra`, another memfd, if given). Returns
    /// the new table and how many chains were unanswered just before the
    /// remap; `what` names the swap in a failure.
    fn swap_mem_table_under_load(
        &mut self,
        extra: Option<(GuestAddress, usize)>,
        what: &str,
    ) -> (GuestMemoryMmap, usize) {
        self.load(40, true, 16, 20);
        let in_flight = self
            .unanswered()
            .iter()
            .map(|&n| usize::from(n))
            .sum::<usize>();
        let table = self.ram.remap(extra).unwrap();
        self.link()
            .set_mem_table(&table)
            .unwrap_or_else(|e| panic!("SET_MEM_TABLE ({what}): {e:?}"));
        (table, in_flight)
    }

    /// Takes every used entry and checks it; with `strict`, a refusal is a
    /// failure too.
    fn collect(&mut self, strict: bool) -> Tally {
        let mut tally = Tally::default();
        for lane in &mut self.lanes {
            let answered = lane
                .flight
                .collect(&self.ram, &mut self.queues[lane.q])
                .unwrap_or_else(|e: UsedError| panic!("{} queue {}: {e}", self.engine, lane.q));
            for (req, used) in answered {
                lane.free.push(req.slot);
                match lane.check(&req, used) {
                    Ok(true) => {
                        tally.done += 1;
                        if let Op::Write { off, src } = req.op {
                            self.acked.push(Acked {
                                q: lane.q,
                                off,
                                src,
                            });
                        }
                    }
                    Ok(false) if !strict => tally.refused += 1,
                    Ok(false) => panic!(
                        "{} queue {}: {:?} refused ({used} bytes)",
                        self.engine, lane.q, req.op
                    ),
                    Err(e) => panic!("{} queue {}: {e}", self.engine, lane.q),
                }
            }
        }
        tally
    }

    /// Collects until nothing is in flight, for at most [`SETTLE`].
    fn settle(&mut self, strict: bool) -> Tally {
        let deadline = Instant::now() + SETTLE;
        let mut total = Tally::default();
        loop {
            let t = self.collect(strict);
            total.done += t.done;
            total.refused += t.refused;
            let pending: Vec<usize> = self.lanes.iter().map(|l| l.flight.pending()).collect();
            if pending.iter().all(|&n| n == 0) {
                return total;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still in flight per queue after {SETTLE:?}: {pending:?}\nlog:\n{}",
                self.engine,
                self.log_text()
            );
            for q in &self.queues {
                q.prepare_wait(&self.ram);
            }
            let (ram, queues) = (&self.ram, &self.queues);
            if let Some(link) = &self.link {
                link.wait(1, Duration::from_millis(20), || {
                    queues.iter().any(|q| q.has_used(ram))
                });
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The frontend goes away: the vhost-user socket closes.
    fn disconnect(&mut self) {
        drop(self.link.take());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU time (user and system, in clock ticks) the daemon's serving
    /// process has used so far.
    fn cpu_ticks(&self) -> u64 {
        let pid = sandbox::status::serving_pid(self.daemon.child.id());
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon's stat");
        // Fields 14 and 15 (utime, stime) of proc(5), counting from the
        // state (field 3), which follows the parenthesised name.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("(comm)") + 1..]
            .split_whitespace()
            .collect();
        let tick = |i: usize| fields[i - 3].parse::<u64>().expect("a tick count");
        tick(14) + tick(15)
    }

    /// Whether the daemon is still running.
    fn running(&mut self) -> bool {
        matches!(self.daemon.child.try_wait(), Ok(None))
    }

    /// Waits for the daemon to exit and checks it did so cleanly: status 0
    /// (or its error exit 1, with `error_exit`), no panic in its log.
    /// Returns the status code.
    fn exit(&mut self, error_exit: bool) -> i32 {
        let status = self.daemon.wait_exit();
        let log = self.log_text();
        let status = status
            .unwrap_or_else(|| panic!("{}: the daemon did not exit\nlog:\n{log}", self.engine));
        assert!(
            !log.contains("panicked"),
            "{}: the daemon panicked\nlog:\n{log}",
            self.engine
        );
        let code = status.code();
        let clean = code == Some(0) || (error_exit && code == Some(1));
        assert!(
            clean,
            "{}: the daemon ended with {status:?}\nlog:\n{log}",
            self.engine
        );
        code.unwrap_or(-1)
    }

    /// Every acknowledged WRITE is in its host file, byte for byte. Call
    /// once the daemon has gone.
    fn check_acked_on_host(&self) {
        assert!(
            !self.acked.is_empty(),
            "{}: no WRITE acknowledged",
            self.engine
        );
        for q in 1..self.lanes.len() {
            let host = std::fs::read(self.share.join(format!("w{q}"))).unwrap();
            for a in self.acked.iter().filter(|a| a.q == q) {
                let at = a.off as usize;
                let got = host.get(at..at + WRITE_LEN as usize);
                let want: Vec<u8> = (a.src..a.src + u64::from(WRITE_LEN))
                    .map(|i| pattern(q, i))
                    .collect();
                assert!(
                    got == Some(&want[..]),
                    "{}: acknowledged WRITE {a:?} is not in the host file ({} bytes)",
                    self.engine,
                    host.len()
                );
            }
        }
    }
}

/// Scenario 1: the frontend closes the socket with WRITEs, FSYNCs, READs
/// and FORGETs in flight on every queue (hiprio and three request
/// queues). The daemon exits with status 0; what it answered, before or
/// after the disconnect, was answered once and right; every WRITE it
/// acknowledged is in the host file.
#[test]
fn disconnect_with_requests_in_flight_on_every_queue() {
    for engine in ENGINES {
        let mut w = World::new(engine, 3);
        // Before the fault: a round on every queue, all answered.
        w.load(8, true, 8, 8);
        let before = w.settle(true);
        assert_eq!(before.done, 3 * 17 + 8, "{engine}");
        // The fault: every queue full, kicked, and the frontend gone at once.
        w.load(56, true, 24, 60);
        let unanswered = w.unanswered();
        w.disconnect();
        assert!(
            unanswered[1..].iter().any(|&n| n > 0),
            "{engine}: the request queues were answered before the disconnect ({unanswered:?}): nothing was in flight"
        );
        assert_eq!(w.exit(false), 0, "{engine}");
        // The used rings as the daemon left them.
        let after = w.collect(true);
        let left: usize = w.lanes.iter().map(|l| l.flight.pending()).sum();
        eprintln!(
            "{engine}: unanswered at the disconnect {unanswered:?}; answered after it {}, never {left}",
            after.done
        );
        w.check_acked_on_host();
    }
}

/// Guest memory from guest address [`RAM`], hot-plugged in scenario 2.
const EXTRA: usize = 16 << 20;

/// A bump allocator over `[next, end)`.
fn bump(mut next: u64, end: u64) -> impl FnMut(u64) -> GuestAddress {
    move |len| {
        let at = next.next_multiple_of(64);
        next = at + len;
        assert!(next <= end, "bump allocator exhausted");
        GuestAddress(at)
    }
}

/// Scenario 2: SET_MEM_TABLE while requests are in flight on every queue:
/// the same memfd remapped at another address; a table that grows by a
/// second memfd (then requests whose buffers are in it); a table that
/// shrinks back while requests using the removed region are in flight.
/// Every request is answered once; all but those using the removed region
/// are answered right, and those are answered right or refused; the
/// daemon serves on afterwards and exits with status 0.
#[test]
fn memory_table_replaced_under_requests_in_flight() {
    for engine in ENGINES {
        let mut w = World::new(engine, 3);
        let mut in_flight_at_swaps = 0usize;
        // The same memory, mapped anew.
        for _ in 0..2 {
            let (_remapped, n) = w.swap_mem_table_under_load(None, "remap");
            in_flight_at_swaps += n;
            w.settle(true);
        }
        // A second region (another memfd) hot-plugged.
        let hotplug = Some((GuestAddress(RAM as u64), EXTRA));
        let (grown, n) = w.swap_mem_table_under_load(hotplug, "grown");
        in_flight_at_swaps += n;
        w.settle(true);
        // Requests whose buffers are all in the new region.
        let mut alloc = bump(RAM as u64, (RAM + EXTRA) as u64);
        for lane in &mut w.lanes {
            lane.place(grown.clone(), &mut alloc);
        }
        w.load(20, true, 16, 20);
        w.settle(true);
        // The region removed while requests using it are in flight.
        let (shrunk, n) = w.swap_mem_table_under_load(None, "shrunk");
        in_flight_at_swaps += n;
        let t = w.settle(false);
        eprintln!(
            "{engine}: after the shrink {} answered, {} refused",
            t.done, t.refused
        );
        assert!(w.running(), "{engine}: the daemon died\n{}", w.log_text());
        // Back in the first region: served as before.
        for lane in &mut w.lanes {
            lane.go_home(shrunk.clone());
        }
        w.load(20, true, 16, 20);
        w.settle(true);
        assert!(
            in_flight_at_swaps > 0,
            "{engine}: nothing was in flight at any SET_MEM_TABLE"
        );
        eprintln!("{engine}: in flight at the memory table swaps: {in_flight_at_swaps}");
        w.disconnect();
        assert_eq!(w.exit(false), 0, "{engine}");
        w.check_acked_on_host();
    }
}

/// A fresh, well-formed queue in `w`'s memory (event index on).
fn fresh_queue(w: &mut World) -> SplitQueue {
    let mut q = SplitQueue::new(&mut w.ram, QUEUE_SIZE);
    q.set_event_idx(true);
    q
}

/// Scenario 3: queue 2 is restarted with one ring running past the end of
/// guest memory (the used ring, the descriptor table, the available ring in
/// turn) and kicked with a request on it. The daemon stops that queue: it
/// answers nothing on it (the used index stays 0) and does not spin on it
/// (it uses next to no CPU time afterwards); hiprio and queue 1 serve
/// meanwhile, and queue 2 serves again once restarted on good rings. Last,
/// SET_VRING_ADDR with addresses outside every region of the memory table:
/// the daemon refuses it and either serves on or ends with its error exit;
/// what it acknowledged is on the host.
#[test]
fn a_ring_outside_guest_memory_stops_that_queue_while_others_serve() {
    for engine in ENGINES {
        let mut w = World::new(engine, 2);
        w.load(8, true, 8, 8);
        assert_eq!(w.settle(true).done, 2 * 17 + 8, "{engine}");
        let end = RAM as u64;
        let n = u64::from(QUEUE_SIZE);
        for case in ["used ring", "descriptor table", "available ring"] {
            w.link().stop_queue(2).expect("GET_VRING_BASE");
            let mut desc = w.ram.alloc(16 * n, 16);
            let mut avail = w.ram.alloc(6 + 2 * n, 2);
            let mut used = w.ram.alloc(6 + 8 * n, 4);
            match case {
                // Flags and index inside, the entries past the end.
                "used ring" => used = GuestAddress(end - 8),
                // Descriptors 0 and 1 inside, 2.. past the end.
                "descriptor table" => desc = GuestAddress(end - 32),
                // Flags and index inside, the entries past the end.
                _ => avail = GuestAddress(end - 4),
            }
            let mut bad = SplitQueue::at(QUEUE_SIZE, desc, avail, used);
            let mem = w.ram.memory();
            w.link()
                .start_queue(2, &mem, &bad, 0)
                .unwrap_or_else(|e| panic!("{engine} {case}: restart: {e}"));
            // A READ of `rd` in descriptors 0 and 1 (inside guest memory).
            let hdr = w.ram.alloc(128, 64);
            let reply = w.ram.alloc(OUT_HEADER as u64 + 4096, 64);
            w.unique += 1;
            let body = fuse_wire::read_in(w.rd.1, 0, 4096);
            let req = fuse_wire::request(opcode::READ, w.unique, w.rd.0, 0, &body);
            w.ram.write(hdr, &req);
            let bufs = Buf::request_reply(hdr, req.len() as u32, reply, OUT_HEADER as u32 + 4096);
            bad.write_chain_at(&w.ram, 0, &bufs);
            let mut flight = InFlight::new();
            if case == "available ring" {
                // The index says one chain; its entry is past the end.
                bad.write_avail_idx(&w.ram, 1);
            } else {
                flight.publish(&w.ram, &mut bad, 0, "READ in descriptors 0-1");
                if case == "descriptor table" {
                    // And a chain whose head descriptor is past the end.
                    flight.publish(&w.ram, &mut bad, 7, "head past the end");
                }
            }
            w.link().kick(2).expect("kick");
            // The other queues serve meanwhile.
            w.load_on(&[0, 1], 8, true, 8, 8);
            assert_eq!(w.settle(true).done, 17 + 8, "{engine} {case}");
            // Nothing left to do: a daemon still busy is spinning on the
            // broken queue.
            let cpu = w.cpu_ticks();
            std::thread::sleep(Duration::from_millis(500));
            let spent = w.cpu_ticks() - cpu;
            assert!(
                spent < 10,
                "{engine} {case}: the idle daemon used {spent} ticks of CPU in 500 ms"
            );
            assert!(
                w.running(),
                "{engine} {case}: the daemon died\n{}",
                w.log_text()
            );
            let used_idx: u16 = w.ram.read_obj(GuestAddress(used.0 + 2));
            assert_eq!(used_idx, 0, "{engine} {case}: the broken queue answered");
            if case != "available ring" {
                assert_eq!(flight.collect(&w.ram, &mut bad), Ok(vec![]));
            }
            // Restarted on good rings, queue 2 serves again.
            w.link().stop_queue(2).expect("GET_VRING_BASE");
            let good = fresh_queue(&mut w);
            let mem = w.ram.memory();
            w.link().start_queue(2, &mem, &good, 0).expect("restart");
            w.queues[2] = good;
            w.lanes[2].flight = InFlight::new();
            w.load(8, true, 8, 8);
            let t = w.settle(true);
            assert_eq!(t.done, 2 * 17 + 8, "{engine} {case}: after the restart");
        }
        // Rings outside every region of the memory table.
        w.link().stop_queue(2).expect("GET_VRING_BASE");
        let good = fresh_queue(&mut w);
        let past = w
            .ram
            .memory()
            .get_host_address(GuestAddress(end - 1))
            .unwrap() as u64
            + 1;
        let rings = RingAddrs {
            desc: past + (1 << 20),
            avail: past + (2 << 20),
            used: past + (3 << 20),
        };
        // The refusal comes back as an error or the daemon ends the
        // connection: either way the daemon is what is checked.
        let sent = w.link().start_queue_at(2, &good, rings, 0);
        let deadline = Instant::now() + Duration::from_secs(3);
        while w.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if w.running() {
            // Refused and serving on: queue 1 and hiprio do.
            w.load_on(&[0, 1], 8, true, 8, 8);
            assert_eq!(w.settle(true).done, 17 + 8, "{engine}: after the refusal");
            w.disconnect();
            assert_eq!(w.exit(false), 0, "{engine}");
        } else {
            let code = w.exit(true);
            assert!(
                w.log_text().contains("Missing memory mapping"),
                "{engine}: the daemon ended without naming the refused address\n{}",
                w.log_text()
            );
            eprintln!("{engine}: SET_VRING_ADDR outside memory ({sent:?}): exit {code}");
        }
        w.check_acked_on_host();
    }
}

/// Scenario 4: GET_VRING_BASE stops queue 1 while a stream of WRITEs,
/// an FSYNC and READs is being served, and the queue is resumed from the
/// index it returned (SET_VRING_NUM/ADDR/BASE/CALL/KICK, enable). When
/// GET_VRING_BASE is answered every chain before that index is answered
/// and the used ring no longer moves; chains published while the queue is
/// stopped wait; after the resume every chain is answered, once. Queue 2
/// serves throughout.
#[test]
fn get_vring_base_mid_stream_then_resume_loses_and_repeats_nothing() {
    for engine in ENGINES {
        let mut w = World::new(engine, 2);
        let mut mid_stream = 0;
        for round in 0..4 {
            w.load_on(&[2], 16, true, 8, 0);
            w.load_on(&[1], 52, true, 24, 0);
            let unanswered = w.unanswered()[1];
            let base = w.link().stop_queue(1).expect("GET_VRING_BASE");
            let at_stop = w.queues[1].used_idx(&w.ram);
            if unanswered > 0 {
                mid_stream += 1;
            }
            // Stopped: nothing more lands in the used ring, even for
            // chains published now (and kicked, to no one).
            let lane = &mut w.lanes[1];
            let op = lane.next_write();
            w.publish(1, op);
            w.link().kick(1).expect("kick");
            std::thread::sleep(Duration::from_millis(200));
            let later = w.queues[1].used_idx(&w.ram);
            let published = w.queues[1].avail_idx();
            eprintln!(
                "{engine} round {round}: {unanswered} unanswered at GET_VRING_BASE, base {base}, used {at_stop} then {later}, published {published}"
            );
            assert_eq!(
                later, at_stop,
                "{engine} round {round}: the used ring moved after GET_VRING_BASE"
            );
            assert_eq!(
                at_stop, base,
                "{engine} round {round}: chains taken before GET_VRING_BASE left unanswered"
            );
            // Resumed where it stopped.
            let mem = w.ram.memory();
            let q1 = &w.queues[1];
            w.link
                .as_mut()
                .unwrap()
                .start_queue(1, &mem, q1, base)
                .expect("resume");
            w.link().kick(1).expect("kick");
            // And requests published after the resume.
            w.load_on(&[1], 4, false, 2, 0);
            let t = w.settle(true);
            assert_eq!(w.lanes[1].flight.answered(), w.lanes[1].flight.published());
            assert!(t.done > 0);
        }
        assert!(
            mid_stream > 0,
            "{engine}: no GET_VRING_BASE came mid-stream"
        );
        w.disconnect();
        assert_eq!(w.exit(false), 0, "{engine}");
        w.check_acked_on_host();
    }
}
