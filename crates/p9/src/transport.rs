//! Byte-stream transports (TCP, unix sockets, an inherited fd pair): framing,
//! concurrent dispatch and flush.
//!
//! One reader thread per connection reads whatever the client has sent (one
//! `read` often brings many frames) and, in [`StreamMode::Inline`] (the
//! default), serves each request itself when it will not block: Tread and
//! Twrite with `preadv2`/`pwritev2(RWF_NOWAIT)` straight between the file
//! and the frame buffers, and the metadata requests. Their replies collect
//! in one buffer that goes out in one `write` before the reader waits for
//! more. What could block (a read or write that `RWF_NOWAIT` refuses,
//! Tfsync, Tlock) goes to a small pool of workers, so it holds up
//! nothing else; [`StreamMode::Workers`] sends every request there.
//!
//! Replies are written whole under a lock. Inline replies are written before
//! any request is handed to a worker. The reader answers Tflush itself and
//! never parks a worker on it: if the flushed request has been answered (or
//! is unknown) the Rflush goes out at once, after every reply before it;
//! otherwise it is attached to the flushed request, and whoever writes that
//! request's reply writes the Rflush right after it, under the same lock
//! (9P requires the Rflush to come second). Tversion waits for every
//! request in flight, then resets the session.
//!
//! The reader writes replies itself, so a client that sends requests but
//! never reads replies stalls its own connection once the socket buffers
//! fill (9P clients, v9fs among them, read replies as they send); other
//! connections are unaffected. The same holds for requests handed to the
//! workers: at most [`MAX_DISPATCHED`] of them, [`MAX_DISPATCHED_BYTES`]
//! together, wait for a worker or for their reply to be written; beyond
//! that the reader stops reading until some are answered, so a client
//! cannot make the server queue without bound (the tag space alone would
//! allow 65535 frames of up to msize each). Before sleeping, the reader
//! polls the socket adaptively ([`device_queue::Poller`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use device_queue::{readable, Poller};
use device_queue::{rw_nowait, IoEngine, Kind};

use crate::messages::{
    decode_tframe, ty, DataRequest, Rmessage, Tmessage, RREAD_HEADER, TWRITE_HEADER,
};
use crate::record::Recorder;
use crate::server::{Server, Session, MAX_MSIZE};
use crate::wire::{FrameHeader, WireError};

/// Worker threads per connection.
pub const WORKERS_PER_CONNECTION: usize = 4;
/// The reader's buffer to start with; it grows to hold a whole frame (up to
/// msize) when one is larger.
const READ_BUFFER: usize = 256 * 1024;
/// Inline replies collected before they are written even if more frames
/// are waiting: bytes, and replies. Small enough that a client with many
/// requests in flight gets replies (and sends more) while the rest are
/// still being served.
const REPLY_BATCH: usize = 256 * 1024;
const REPLY_BATCH_COUNT: usize = 8;

/// Where a stream connection serves its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamMode {
    /// On the reader thread when they will not block; the rest on workers.
    #[default]
    Inline,
    /// Every request on the worker pool.
    Workers,
}

/// How a stream connection serves: [`StreamMode`], the reader's polling,
/// and request recording.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Where requests are served.
    pub mode: StreamMode,
    /// The longest the reader polls for the next request before it sleeps
    /// (adaptive, up to this; zero: never poll).
    pub poll: Duration,
    /// Append every whole frame the reader receives to this recording
    /// (`--record-requests`), before it is served.
    pub record: Option<Arc<Recorder>>,
}

pub use device_queue::DEFAULT_POLL;

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            mode: StreamMode::default(),
            poll: DEFAULT_POLL,
            record: None,
        }
    }
}

impl From<IoEngine> for StreamMode {
    /// The io_uring engine's inline-first rule, on a stream: `IoUring` serves
    /// inline, `Sync` on the workers.
    fn from(e: IoEngine) -> Self {
        match e {
            IoEngine::IoUring => StreamMode::Inline,
            IoEngine::Sync => StreamMode::Workers,
        }
    }
}

/// Requests handed to the workers and not yet answered, at most: a client
/// that sends without reading the replies cannot make the server queue
/// more (the reader stops reading until some are answered).
pub const MAX_DISPATCHED: usize = 1024;
/// Bytes of requests handed to the workers and not yet answered, at most
/// (a single frame up to msize always goes).
pub const MAX_DISPATCHED_BYTES: usize = 64 << 20;

/// A request handed to the workers.
#[derive(Default)]
struct Entry {
    /// The frame's size.
    bytes: usize,
    /// Tflush requests waiting for this request's reply: their Rflush goes
    /// out right after it.
    flushes: Vec<u16>,
}

/// The requests being served by the workers, and the Tflushes waiting for
/// them.
#[derive(Default)]
struct Dispatched {
    tags: HashMap<u16, Entry>,
    /// The sum of the frame sizes.
    bytes: usize,
    /// Threads waiting on `InFlight::done` (a wake-up is a system call; most
    /// retirements have nobody to wake).
    waiters: usize,
}

/// What becomes of a Tflush.
#[derive(Debug, PartialEq, Eq)]
enum FlushVerdict {
    /// The flushed request is in flight: the Rflush follows its reply.
    Attached,
    /// Nothing to wait for: the Rflush goes at once.
    Now,
    /// The Tflush's own tag is in flight: a protocol error.
    TagInUse,
}

/// Tags of requests being served, with a condition to wait on.
#[derive(Default)]
struct InFlight {
    state: Mutex<Dispatched>,
    done: Condvar,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, Dispatched> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `tag` for a frame of `bytes`; false if it is in flight.
    fn insert(&self, tag: u16, bytes: usize) -> bool {
        let mut d = self.lock();
        if d.tags.contains_key(&tag) {
            return false;
        }
        d.tags.insert(
            tag,
            Entry {
                bytes,
                flushes: Vec::new(),
            },
        );
        d.bytes += bytes;
        true
    }

    fn contains(&self, tag: u16) -> bool {
        self.lock().tags.contains_key(&tag)
    }

    /// Registers Tflush `tag` of request `oldtag`, under one lock: what
    /// the reader answers.
    fn attach_flush(&self, tag: u16, oldtag: u16) -> FlushVerdict {
        let mut d = self.lock();
        if d.tags.contains_key(&tag) {
            return FlushVerdict::TagInUse;
        }
        match d.tags.get_mut(&oldtag) {
            Some(old) if tag != oldtag => {
                old.flushes.push(tag);
                d.tags.insert(tag, Entry::default());
                FlushVerdict::Attached
            }
            _ => FlushVerdict::Now,
        }
    }

    /// Retires `tag` (its reply is being written) and every Tflush waiting
    /// for it, and for those in turn; appends their tags to `flushes`, in
    /// the order their Rflush must go out.
    fn retire(&self, tag: u16, flushes: &mut Vec<u16>) {
        let mut d = self.lock();
        let first = flushes.len();
        let mut next = Some(tag);
        let mut i = first;
        while let Some(t) = next {
            if let Some(e) = d.tags.remove(&t) {
                d.bytes -= e.bytes;
                flushes.extend(e.flushes);
            }
            next = flushes.get(i).copied();
            i += 1;
        }
        let wake = d.waiters > 0;
        drop(d);
        if wake {
            self.done.notify_all();
        }
    }

    /// Waits while `busy` says so.
    fn wait_while(&self, busy: impl Fn(&Dispatched) -> bool) {
        let mut d = self.lock();
        while busy(&d) {
            d.waiters += 1;
            d = self.done.wait(d).unwrap_or_else(|e| e.into_inner());
            d.waiters -= 1;
        }
    }

    /// Waits until no request is in flight.
    fn wait_idle(&self) {
        self.wait_while(|d| !d.tags.is_empty());
    }

    /// Waits until a frame of `bytes` may be dispatched within
    /// [`MAX_DISPATCHED`] and [`MAX_DISPATCHED_BYTES`].
    fn wait_room(&self, bytes: usize) {
        self.wait_while(|d| {
            !d.tags.is_empty()
                && (d.tags.len() >= MAX_DISPATCHED
                    || d.bytes.saturating_add(bytes) > MAX_DISPATCHED_BYTES)
        });
    }
}

fn lerror(tag: u16, errno: i32) -> Vec<u8> {
    Rmessage::Lerror {
        ecode: errno as u32,
    }
    .encode(tag)
}

/// The errno a client gets for a frame that does not decode.
pub fn wire_errno(e: &WireError) -> i32 {
    match e {
        WireError::UnknownType(_) => libc::EOPNOTSUPP,
        WireError::TooManyNames(_) => libc::E2BIG,
        _ => libc::EINVAL,
    }
}

struct Conn<W> {
    session: Session,
    writer: Mutex<W>,
    inflight: InFlight,
}

impl<W: Write> Conn<W> {
    fn send(&self, frame: &[u8]) {
        self.send_retiring(frame, None);
    }

    /// Writes a reply; with `retire`, retires that tag (and the Tflushes
    /// waiting for it, whose Rflush frames follow the reply) under the same
    /// writer lock. The tag must be free before the client can see the
    /// reply (it may reuse the tag at once), and the Rflush frames must come
    /// after it.
    fn send_retiring(&self, frame: &[u8], retire: Option<u16>) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut flushes = Vec::new();
        if let Some(tag) = retire {
            self.inflight.retire(tag, &mut flushes);
        }
        let mut res = w.write_all(frame);
        for f in flushes {
            res = res.and_then(|()| w.write_all(&Rmessage::Flush.encode(f)));
        }
        if let Err(e) = res.and_then(|()| w.flush()) {
            debug!("9p: reply not sent: {e}");
        }
    }

    /// Serves one frame whose tag is registered in flight.
    fn serve(&self, frame: &[u8]) {
        let Some(FrameHeader { tag, .. }) = FrameHeader::parse(frame) else {
            return;
        };
        let reply = match decode_tframe(frame) {
            Ok((_, msg)) => self.session.handle(msg).into_frame(tag),
            Err(e) => {
                debug!("9p: bad frame (tag {tag}): {e}");
                lerror(tag, wire_errno(&e))
            }
        };
        self.send_retiring(&reply, Some(tag));
    }

    /// Answers Tflush `frame` (tag `tag`) on the reader: at once into `out`
    /// when the flushed request is not in flight, else after its reply.
    fn flush(&self, frame: &[u8], tag: u16, out: &mut Vec<u8>) {
        match decode_tframe(frame) {
            Ok((_, Tmessage::Flush { oldtag })) => match self.inflight.attach_flush(tag, oldtag) {
                FlushVerdict::Attached => {}
                FlushVerdict::Now => out.extend_from_slice(&Rmessage::Flush.encode(tag)),
                FlushVerdict::TagInUse => out.extend_from_slice(&lerror(tag, libc::EPROTO)),
            },
            Ok(_) => out.extend_from_slice(&lerror(tag, libc::EPROTO)),
            Err(e) => out.extend_from_slice(&lerror(tag, wire_errno(&e))),
        }
    }
}

/// What the reader does with one frame.
enum Step {
    /// The reply is in the batch.
    Answered,
    /// The frame goes to a worker.
    Dispatch,
}

impl<W: Write> Conn<W> {
    /// Writes the batched replies.
    fn flush_batch(&self, out: &mut Vec<u8>) {
        if !out.is_empty() {
            self.send(out);
            out.clear();
        }
    }

    /// Serves `frame` on the reader thread if it will not block, appending
    /// the reply to `out`.
    fn serve_inline(&self, frame: &[u8], out: &mut Vec<u8>) -> Step {
        let Some(FrameHeader { ty: t, tag, .. }) = FrameHeader::parse(frame) else {
            return Step::Dispatch;
        };
        match t {
            ty::TFSYNC | ty::TLOCK => return Step::Dispatch,
            _ => {}
        }
        if self.inflight.contains(tag) {
            // The client reused a tag still in flight on a worker.
            out.extend_from_slice(&lerror(tag, libc::EPROTO));
            return Step::Answered;
        }
        if t == ty::TREAD || t == ty::TWRITE {
            if let Some(step) = self.data_inline(frame, out) {
                return step;
            }
        }
        match decode_tframe(frame) {
            Ok((_, msg)) => self.session.handle(msg).append_to(tag, out),
            Err(e) => {
                debug!("9p: bad frame (tag {tag}): {e}");
                out.extend_from_slice(&lerror(tag, wire_errno(&e)))
            }
        }
        Step::Answered
    }

    /// A Tread or Twrite of an open file without blocking: the data moves
    /// between the file and the frame buffers with one system call. `None`
    /// if the frame is not a well-formed read or write of a file opened for
    /// I/O (`Session::handle` gives the right reply, at once).
    fn data_inline(&self, frame: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        let req = DataRequest::parse(frame.get(..TWRITE_HEADER)?.try_into().ok()?, frame.len())?;
        let (_, file, count) = self.session.data_target(&req)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*file);
        let start = out.len();
        let res = if req.read {
            out.reserve(RREAD_HEADER + count as usize);
            let iov = [libc::iovec {
                // SAFETY: in bounds of the reserved capacity.
                iov_base: unsafe { out.as_mut_ptr().add(start + RREAD_HEADER) }.cast(),
                iov_len: count as usize,
            }];
            // SAFETY: the iovec names `count` bytes of `out`'s spare
            // capacity, reserved above and untouched until the call returns.
            unsafe { rw_nowait(Kind::Read, fd, &iov, req.offset) }
        } else {
            let data = &frame[TWRITE_HEADER..];
            let iov = [libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            }];
            // SAFETY: the iovec names the frame's data, valid and only read
            // by pwritev2 during the call.
            unsafe { rw_nowait(Kind::Write, fd, &iov, req.offset) }
        };
        let Some(res) = res else {
            return Some(Step::Dispatch);
        };
        let (header, size) = req.reply_header(res);
        out.extend_from_slice(&header);
        if req.read && res > 0 {
            // SAFETY: preadv2 initialised these `res` bytes right after the
            // header just written.
            unsafe { out.set_len(start + size as usize) };
        }
        Some(Step::Answered)
    }
}

/// What a read that must not wait found.
enum RecvNow {
    /// Bytes (zero: the end of the stream), or an error.
    Got(io::Result<usize>),
    /// Nothing yet.
    Empty,
    /// Not a socket (a pipe of the fd transport): the caller checks
    /// readiness with `poll` instead.
    NotSocket,
}

/// Receives what is on socket `fd` now, without waiting.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> RecvNow {
    // SAFETY: `buf` is valid for writes of its length for the whole call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n >= 0 {
        return RecvNow::Got(Ok(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => RecvNow::Empty,
        Some(libc::ENOTSOCK) => RecvNow::NotSocket,
        _ => RecvNow::Got(Err(e)),
    }
}

/// The reader's view of the stream: a buffer of received bytes.
struct Frames<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The reader is not a socket: polling checks readiness with `poll`.
    not_socket: bool,
}

impl<R: Read + AsRawFd> Frames<R> {
    /// Reads more; `Ok(false)` on end of stream.
    fn fill(&mut self, want: usize, poller: &mut Poller) -> io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
        let fd = self.r.as_raw_fd();
        // Polling reads at once what has arrived: one syscall, not a poll
        // and then a read.
        let mut got = None;
        let buf = &mut self.buf[self.end..];
        let not_socket = &mut self.not_socket;
        let polled = poller.spin(|| {
            if *not_socket {
                return readable(fd);
            }
            match recv_now(fd, buf) {
                RecvNow::Got(r) => {
                    got = Some(r);
                    true
                }
                RecvNow::Empty => false,
                RecvNow::NotSocket => {
                    *not_socket = true;
                    readable(fd)
                }
            }
        });
        match got {
            Some(Ok(0)) => return Ok(false),
            Some(Ok(n)) => {
                self.end += n;
                return Ok(true);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        let t = Instant::now();
        loop {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) if !polled => {
                    poller.learn(t.elapsed());
                    self.end += n;
                    return Ok(true);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// Serves one client on a byte stream until it closes, in the default
/// [`StreamMode::Inline`]; then clunks its fids.
///
/// While polling, the reader's fd is read directly (`recv(MSG_DONTWAIT)`),
/// so `reader` must not buffer: a socket, or a pipe.
///
/// Bad frames get an Rlerror and the connection goes on; a frame whose size
/// field cannot be right (smaller than a header) ends the connection, since
/// the stream cannot be resynchronised.
pub fn serve_connection<R, W>(server: Arc<Server>, reader: R, writer: W) -> io::Result<()>
where
    R: Read + AsRawFd,
    W: Write + Send + 'static,
{
    serve_connection_with(server, reader, writer, StreamConfig::default())
}

/// [`serve_connection`] with the requests served as `cfg` says.
pub fn serve_connection_with<R, W>(
    server: Arc<Server>,
    reader: R,
    writer: W,
    cfg: StreamConfig,
) -> io::Result<()>
where
    R: Read + AsRawFd,
    W: Write + Send + 'static,
{
    let conn = Arc::new(Conn {
        session: Session::new(server),
        writer: Mutex::new(writer),
        inflight: InFlight::default(),
    });
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for i in 0..WORKERS_PER_CONNECTION {
        let conn = conn.clone();
        let rx = rx.clone();
        workers.push(
            thread::Builder::new()
                .name(format!("9p-worker-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(frame) => conn.serve(&frame),
                        Err(_) => break,
                    }
                })?,
        );
    }

    let mut frames = Frames {
        r: reader,
        buf: vec![0; READ_BUFFER],
        start: 0,
        end: 0,
        not_socket: false,
    };
    let mut out = Vec::with_capacity(REPLY_BATCH);
    let mut batched = 0;
    let mut poller = Poller::new(cfg.poll);
    let mode = cfg.mode;
    let record = cfg.record;
    // Bytes of an oversized frame still to be skipped.
    let mut skip = 0usize;
    let result = (|| -> io::Result<()> {
        loop {
            // Serve every whole frame received so far.
            loop {
                let pending = frames.pending();
                if skip > 0 {
                    let n = skip.min(pending.len());
                    frames.start += n;
                    skip -= n;
                    if skip > 0 {
                        break;
                    }
                    continue;
                }
                let Some(FrameHeader { size, ty: t, tag }) = FrameHeader::parse(pending) else {
                    break;
                };
                if (size as usize) < FrameHeader::SIZE {
                    warn!("9p: frame size {size} is smaller than a header; closing the connection");
                    conn.flush_batch(&mut out);
                    return Ok(());
                }
                let limit = conn.session.msize();
                if size > limit {
                    // Skip the body as it arrives and refuse the request: no
                    // unbounded allocation.
                    warn!("9p: frame of {size} bytes exceeds msize {limit}");
                    out.extend_from_slice(&lerror(tag, libc::EMSGSIZE));
                    skip = size as usize;
                    continue;
                }
                let size = size as usize;
                if pending.len() < size {
                    break;
                }
                let frame = &pending[..size];
                if let Some(r) = &record {
                    r.frame(frame);
                }
                let step = if t == ty::TVERSION {
                    conn.flush_batch(&mut out);
                    conn.inflight.wait_idle();
                    let reply = match decode_tframe(frame) {
                        Ok((_, Tmessage::Version { msize, version })) => conn
                            .session
                            .version(msize.min(MAX_MSIZE), version)
                            .encode(tag),
                        Ok(_) => lerror(tag, libc::EPROTO),
                        Err(e) => lerror(tag, wire_errno(&e)),
                    };
                    out.extend_from_slice(&reply);
                    Step::Answered
                } else if t % 2 == 1 {
                    // An R-message (or Rerror) sent to a server.
                    out.extend_from_slice(&lerror(tag, libc::EPROTO));
                    Step::Answered
                } else if t == ty::TFLUSH {
                    conn.flush(frame, tag, &mut out);
                    Step::Answered
                } else if mode == StreamMode::Inline {
                    conn.serve_inline(frame, &mut out)
                } else {
                    Step::Dispatch
                };
                if let Step::Dispatch = step {
                    // Inline replies go out before the reader may wait
                    // for room.
                    conn.flush_batch(&mut out);
                    // Back-pressure: a client that does not read its
                    // replies cannot make the queue grow without bound.
                    conn.inflight.wait_room(frame.len());
                    if !conn.inflight.insert(tag, frame.len()) {
                        // The client reused a tag still in flight: a protocol
                        // error. Refuse without touching the in-flight
                        // request's bookkeeping.
                        conn.send(&lerror(tag, libc::EPROTO));
                    } else if tx.send(frame.to_vec()).is_err() {
                        return Err(io::Error::other("9p worker pool stopped"));
                    }
                }
                frames.start += size;
                batched += 1;
                if out.len() >= REPLY_BATCH || batched >= REPLY_BATCH_COUNT {
                    conn.flush_batch(&mut out);
                    batched = 0;
                }
            }
            conn.flush_batch(&mut out);
            batched = 0;
            // Room for the frame being received, whole.
            let pending = frames.pending();
            let want = match FrameHeader::parse(pending) {
                Some(h) if skip == 0 => (h.size as usize).min(conn.session.msize() as usize),
                _ => 0,
            };
            if !frames.fill(want.max(READ_BUFFER), &mut poller)? {
                return if frames.pending().is_empty() && skip == 0 {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    })();
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    conn.session.reset();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn recv_now_reads_a_socket_and_tells_a_pipe_apart() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(recv_now(b.as_raw_fd(), &mut buf), RecvNow::Empty));
        a.write_all(b"abc").unwrap();
        match recv_now(b.as_raw_fd(), &mut buf) {
            RecvNow::Got(Ok(3)) => assert_eq!(&buf[..3], b"abc"),
            _ => panic!("three bytes were waiting"),
        }
        drop(a);
        assert!(matches!(
            recv_now(b.as_raw_fd(), &mut buf),
            RecvNow::Got(Ok(0))
        ));
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are fresh and owned only here.
        let (r, _w) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        assert!(matches!(
            recv_now(r.as_raw_fd(), &mut buf),
            RecvNow::NotSocket
        ));
    }

    /// Runs `wait_room(bytes)` on another thread; the receiver hears when it
    /// returned.
    fn waiter(f: &Arc<InFlight>, bytes: usize) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let f = f.clone();
        thread::spawn(move || {
            f.wait_room(bytes);
            let _ = tx.send(());
        });
        rx
    }

    #[test]
    fn dispatch_waits_for_room_by_bytes_and_by_count() {
        let long = Duration::from_secs(30);
        let f = Arc::new(InFlight::default());
        // With nothing in flight, any frame goes.
        f.wait_room(usize::MAX);
        assert!(f.insert(1, MAX_DISPATCHED_BYTES - 10));
        assert!(!f.insert(1, 1), "a tag in flight is refused");
        f.wait_room(10);
        let rx = waiter(&f, 11);
        // It must still be waiting (a late check can only miss a bug, never
        // report one that is not there).
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        f.retire(1, &mut Vec::new());
        rx.recv_timeout(long)
            .expect("room once the request is answered");
        for tag in 0..MAX_DISPATCHED as u16 {
            assert!(f.insert(tag, 1));
        }
        let rx = waiter(&f, 1);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        f.retire(7, &mut Vec::new());
        rx.recv_timeout(long).expect("room once one is answered");
    }

    #[test]
    fn flushes_wait_for_their_request_and_retire_in_order() {
        let f = InFlight::default();
        assert!(f.insert(1, 100));
        // Nothing in flight under 9, or the flush's own tag: answer at once.
        assert_eq!(f.attach_flush(2, 9), FlushVerdict::Now);
        assert_eq!(f.attach_flush(5, 5), FlushVerdict::Now);
        // A Tflush whose own tag is in flight is refused.
        assert_eq!(f.attach_flush(1, 9), FlushVerdict::TagInUse);
        // Two flushes of 1, and a flush of the first flush.
        assert_eq!(f.attach_flush(2, 1), FlushVerdict::Attached);
        assert_eq!(f.attach_flush(3, 1), FlushVerdict::Attached);
        assert_eq!(f.attach_flush(4, 2), FlushVerdict::Attached);
        // A flush tag in flight is not attached again.
        assert_eq!(f.attach_flush(2, 1), FlushVerdict::TagInUse);
        assert!(f.contains(2) && f.contains(4));
        let mut flushes = Vec::new();
        f.retire(1, &mut flushes);
        assert_eq!(flushes, [2, 3, 4]);
        assert!(f.lock().tags.is_empty());
        assert_eq!(f.lock().bytes, 0);
        // Everything retired: Tversion would not wait.
        f.wait_idle();
    }
}
