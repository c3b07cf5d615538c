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
//! Tfsync, Tlock, Tflush) goes to a small pool of workers, so it holds up
//! nothing else; [`StreamMode::Workers`] sends every request there.
//!
//! Replies are written whole under a lock. Inline replies are written before
//! any request is handed to a worker, so a Tflush, which waits until the
//! flushed request's reply has been written, still answers after it (9P
//! requires the Rflush to come second). Tversion waits for every request in
//! flight, then resets the session.
//!
//! The reader writes replies itself, so a client that sends requests but
//! never reads replies stalls its own connection once the socket buffers
//! fill (9P clients, v9fs among them, read replies as they send); other
//! connections are unaffected. Before sleeping, the reader polls the socket
//! adaptively ([`device_queue::poll`]).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use device_queue::poll::{readable, Poller};
use device_queue::uring::{rw_nowait, IoEngine, Kind};

use crate::messages::{
    decode_tframe, peek_type_tag, ty, Rmessage, Tmessage, HEADER_SIZE, RREAD_HEADER, TWRITE_HEADER,
};
use crate::server::{Server, Session, MAX_MSIZE};
use crate::wire::WireError;

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

/// How a stream connection serves: [`StreamMode`] and the reader's polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Where requests are served.
    pub mode: StreamMode,
    /// The longest the reader polls for the next request before it sleeps
    /// (adaptive, up to this; zero: never poll).
    pub poll: Duration,
}

pub use device_queue::poll::DEFAULT_POLL;

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            mode: StreamMode::default(),
            poll: DEFAULT_POLL,
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

/// Tags of requests being served, with a condition to wait on.
#[derive(Default)]
struct InFlight {
    tags: Mutex<HashSet<u16>>,
    done: Condvar,
}

impl InFlight {
    fn insert(&self, tag: u16) -> bool {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag)
    }

    fn contains(&self, tag: u16) -> bool {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&tag)
    }

    fn remove(&self, tag: u16) {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tag);
        self.done.notify_all();
    }

    fn wait_for(&self, tag: u16) {
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        while tags.contains(&tag) {
            tags = self.done.wait(tags).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until no request is in flight.
    fn wait_idle(&self) {
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        while !tags.is_empty() {
            tags = self.done.wait(tags).unwrap_or_else(|e| e.into_inner());
        }
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

    /// Writes a reply; with `retire`, removes that tag from the in-flight set
    /// under the same writer lock. The tag must be free before the client can
    /// see the reply (it may reuse the tag at once), and a Tflush waiting for
    /// it needs the writer lock to answer, so its Rflush still comes after
    /// this reply.
    fn send_retiring(&self, frame: &[u8], retire: Option<u16>) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tag) = retire {
            self.inflight.remove(tag);
        }
        if let Err(e) = w.write_all(frame).and_then(|()| w.flush()) {
            debug!("9p: reply not sent: {e}");
        }
    }

    /// Serves one frame whose tag is registered in flight.
    fn serve(&self, frame: &[u8]) {
        let Some((_, tag)) = peek_type_tag(frame) else {
            return;
        };
        let reply = match decode_tframe(frame) {
            Ok((_, Tmessage::Flush { oldtag })) => {
                if oldtag != tag {
                    self.inflight.wait_for(oldtag);
                }
                Rmessage::Flush.encode(tag)
            }
            Ok((_, msg)) => self.session.handle(msg).into_frame(tag),
            Err(e) => {
                debug!("9p: bad frame (tag {tag}): {e}");
                lerror(tag, wire_errno(&e))
            }
        };
        self.send_retiring(&reply, Some(tag));
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
        let Some((t, tag)) = peek_type_tag(frame) else {
            return Step::Dispatch;
        };
        match t {
            ty::TFLUSH | ty::TFSYNC | ty::TLOCK => return Step::Dispatch,
            _ => {}
        }
        if self.inflight.contains(tag) {
            // The client reused a tag still in flight on a worker.
            out.extend_from_slice(&lerror(tag, libc::EPROTO));
            return Step::Answered;
        }
        if t == ty::TREAD || t == ty::TWRITE {
            if let Some(step) = self.data_inline(t, tag, frame, out) {
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
    fn data_inline(&self, t: u8, tag: u16, frame: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        // size[4] type[1] tag[2] fid[4] offset[8] count[4], then Twrite data.
        let hdr = frame.get(..TWRITE_HEADER)?;
        let le32 = |at: usize| u32::from_le_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
        let (fid, count) = (le32(7), le32(19));
        let offset = u64::from_le_bytes([
            hdr[11], hdr[12], hdr[13], hdr[14], hdr[15], hdr[16], hdr[17], hdr[18],
        ]);
        let count = match t {
            ty::TREAD if frame.len() == TWRITE_HEADER => count.min(self.session.max_read()),
            ty::TWRITE
                if frame.len() == TWRITE_HEADER + count as usize && !self.session.readonly() =>
            {
                count
            }
            _ => return None,
        };
        if offset.checked_add(count as u64)? > i64::MAX as u64 {
            return None;
        }
        let (_, file) = self.session.data_file(fid)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*file);
        let start = out.len();
        let res = if t == ty::TREAD {
            out.reserve(RREAD_HEADER + count as usize);
            let iov = [libc::iovec {
                // SAFETY: in bounds of the reserved capacity.
                iov_base: unsafe { out.as_mut_ptr().add(start + RREAD_HEADER) }.cast(),
                iov_len: count as usize,
            }];
            // SAFETY: the iovec names `count` bytes of `out`'s spare
            // capacity, reserved above and untouched until the call returns.
            unsafe { rw_nowait(Kind::Read, fd, &iov, offset) }
        } else {
            let data = &frame[TWRITE_HEADER..];
            let iov = [libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            }];
            // SAFETY: the iovec names the frame's data, valid and only read
            // by pwritev2 during the call.
            unsafe { rw_nowait(Kind::Write, fd, &iov, offset) }
        };
        let Some(res) = res else {
            return Some(Step::Dispatch);
        };
        let (rt, size, word) = match t {
            _ if res < 0 => (ty::RLERROR, RREAD_HEADER as u32, res.unsigned_abs()),
            ty::TREAD => (ty::RREAD, RREAD_HEADER as u32 + res as u32, res as u32),
            _ => (ty::RWRITE, RREAD_HEADER as u32, res as u32),
        };
        out.extend_from_slice(&size.to_le_bytes());
        out.push(rt);
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&word.to_le_bytes());
        if rt == ty::RREAD {
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
                if pending.len() < HEADER_SIZE {
                    break;
                }
                let size = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]);
                let tag = u16::from_le_bytes([pending[5], pending[6]]);
                if (size as usize) < HEADER_SIZE {
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
                let t = frame[4];
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
                } else if mode == StreamMode::Inline {
                    conn.serve_inline(frame, &mut out)
                } else {
                    Step::Dispatch
                };
                if let Step::Dispatch = step {
                    // Inline replies go first: a Tflush must not overtake
                    // them.
                    conn.flush_batch(&mut out);
                    if !conn.inflight.insert(tag) {
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
            let want = if skip == 0 && pending.len() >= 4 {
                let size = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]);
                (size as usize).min(conn.session.msize() as usize)
            } else {
                0
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
}
