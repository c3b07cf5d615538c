//! Byte-stream transports (TCP, unix sockets, an inherited fd pair): framing,
//! concurrent dispatch and flush.
//!
//! One reader thread per connection reads frames; a small pool of workers
//! serves them, so a slow read does not hold up a getattr. Replies are written
//! whole under a lock. Tflush waits until the flushed request's reply has
//! been written, then answers (9P requires the Rflush to come after it).
//! Tversion waits for every request in flight, then resets the session.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use log::{debug, warn};

use crate::messages::{decode_tframe, peek_type_tag, ty, Rmessage, Tmessage, HEADER_SIZE};
use crate::server::{Server, Session, MAX_MSIZE};
use crate::wire::WireError;

/// Worker threads per connection.
pub const WORKERS_PER_CONNECTION: usize = 4;

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

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before any.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Serves one client on a byte stream until it closes; then clunks its fids.
///
/// Bad frames get an Rlerror and the connection goes on; a frame whose size
/// field cannot be right (smaller than a header) ends the connection, since
/// the stream cannot be resynchronised.
pub fn serve_connection<R, W>(server: Arc<Server>, mut reader: R, writer: W) -> io::Result<()>
where
    R: Read,
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

    let result = (|| -> io::Result<()> {
        loop {
            let mut size_buf = [0u8; 4];
            if !read_full(&mut reader, &mut size_buf)? {
                return Ok(());
            }
            let size = u32::from_le_bytes(size_buf);
            if (size as usize) < HEADER_SIZE {
                warn!("9p: frame size {size} is smaller than a header; closing the connection");
                return Ok(());
            }
            let limit = conn.session.msize();
            if size > limit {
                // Read the header for the tag, skip the body in bounded
                // chunks, and refuse the request: no unbounded allocation.
                let mut head = [0u8; 3];
                if !read_full(&mut reader, &mut head)? {
                    return Ok(());
                }
                let tag = u16::from_le_bytes([head[1], head[2]]);
                io::copy(
                    &mut (&mut reader).take(size as u64 - HEADER_SIZE as u64),
                    &mut io::sink(),
                )?;
                warn!("9p: frame of {size} bytes exceeds msize {limit}");
                conn.send(&lerror(tag, libc::EMSGSIZE));
                continue;
            }
            let mut frame = vec![0u8; size as usize];
            frame[..4].copy_from_slice(&size_buf);
            if !read_full(&mut reader, &mut frame[4..])? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let (t, tag) = peek_type_tag(&frame).unwrap_or((0, 0));
            if t == ty::TVERSION {
                conn.inflight.wait_idle();
                let reply = match decode_tframe(&frame) {
                    Ok((_, Tmessage::Version { msize, version })) => conn
                        .session
                        .version(msize.min(MAX_MSIZE), version)
                        .encode(tag),
                    Ok(_) => lerror(tag, libc::EPROTO),
                    Err(e) => lerror(tag, wire_errno(&e)),
                };
                conn.send(&reply);
                continue;
            }
            if t % 2 == 1 {
                // An R-message (or Rerror) sent to a server.
                conn.send(&lerror(tag, libc::EPROTO));
                continue;
            }
            if !conn.inflight.insert(tag) {
                // The client reused a tag still in flight: a protocol error.
                // Refuse without touching the in-flight request's bookkeeping.
                conn.send(&lerror(tag, libc::EPROTO));
                continue;
            }
            if tx.send(frame).is_err() {
                return Err(io::Error::other("9p worker pool stopped"));
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
