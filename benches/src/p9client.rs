//! 9P2000.L servers (p9d, diod) driven by one client over a unix socket,
//! with the requests encoded by the p9 crate's codec
//! ([`p9::messages::Tmessage::encode`]) and the replies decoded by it
//! ([`p9::messages::decode_rframe`]), except Rread and Rwrite on the data
//! path, whose few header fields are read in place so the payload is not
//! copied a second time.
//!
//! What the client sends is what Linux's v9fs sends for the same system
//! calls, with the same sizes: msize 1 MiB + 4 KiB asked for (so a 1 MiB
//! Tread fits; a server granting less gets Treads and Twrites of its iounit
//! or msize - 24 bytes, as v9fs splits them), Treaddir of msize - 24 bytes.
//! Unlink is Tunlinkat, or walk + Tremove once the server has answered
//! Tunlinkat with EOPNOTSUPP (diod 1.0 does; v9fs falls back the same way,
//! though it tries Tunlinkat again every time, which this client does not).
//! For I/O, slot `i` uses tag `i` on the one connection: qd32 is 32 tags
//! outstanding, all queued requests go out in one `writev`, and one `read`
//! may bring several replies.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use device_queue::Poller;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use p9::messages::{decode_rframe, ty, Rmessage, Tmessage, NOFID, RREAD_HEADER};
use p9::wire::{Decoder, FrameHeader, WireError};

use crate::fixture::{CREATE_DIR, DATA, DIR10K, WDATA};
use crate::session::{Session, SessionError};
use crate::workload::{pattern_matches, FileRole, IoSpec, Kind, WRITE_BYTE};

/// The msize asked for: 1 MiB of payload plus room for the header.
pub const MSIZE_WANT: u32 = (1 << 20) + 4096;
/// Linux's `P9_IOHDRSZ` and `P9_READDIRHDRSZ`: header room v9fs keeps out of
/// a Tread, Twrite or Treaddir count.
pub const IOHDRSZ: u32 = 24;
/// How long the client waits for any reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// `P9_GETATTR_BASIC`: what v9fs asks Tgetattr for.
const GETATTR_BASIC: u64 = 0x7ff;

const ROOT: u32 = 0;
const FILE: u32 = 1;
const DIR: u32 = 2;
const TMP: u32 = 3;
/// Tags of synchronous requests (I/O slots use tags from 0).
const SYNC_TAG: u16 = 0xf000;

/// Why a 9P server could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum P9ClientError {
    /// The socket could not be connected.
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("socket: {0}")]
    Io(io::Error),
    /// The server stopped answering.
    #[error("no reply within {} s", REPLY_TIMEOUT.as_secs())]
    Timeout,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// A reply does not decode.
    #[error("undecodable reply to {op}: {err}")]
    Wire {
        /// The request.
        op: &'static str,
        /// What is wrong with the frame.
        err: WireError,
    },
    /// The server answered with Rlerror.
    #[error("{op} failed: {err}")]
    Lerror {
        /// The request.
        op: &'static str,
        /// Its errno.
        err: io::Error,
    },
    /// The reply is not what the request asks for.
    #[error("{op}: {detail}")]
    BadReply {
        /// The request.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn io_err(e: io::Error) -> P9ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => P9ClientError::Timeout,
        _ => P9ClientError::Io(e),
    }
}

/// An I/O slot: its prebuilt Tread or Twrite frame and the offset in it.
struct Slot {
    frame: Vec<u8>,
    offset: u64,
}

/// The I/O set-up of a session.
struct Io {
    spec: IoSpec,
    count: u32,
    slots: Vec<Slot>,
    pending: Vec<usize>,
}

/// A 9P server, connected, attached and set up for one workload.
pub struct P9Session {
    sock: UnixStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// The msize the server granted.
    pub msize: u32,
    io: Option<Io>,
    /// The server refused Tunlinkat with EOPNOTSUPP (diod 1.0): unlink by
    /// walk + Tremove, as v9fs falls back to.
    remove_instead_of_unlinkat: bool,
    /// Polling for replies before sleeping.
    poller: Poller,
}

impl P9Session {
    /// Connects to `socket`, negotiates 9P2000.L, attaches `aname` as root
    /// (uid 0), and sets up for `kind`: walk to and open the file and build
    /// the slots' frames, or walk to the workload's directory.
    /// `guest_poll` is how long the client polls the socket for a reply
    /// before it sleeps (as a KVM guest's halted vCPU is polled).
    pub fn connect(
        socket: &Path,
        aname: &[u8],
        kind: &Kind,
        guest_poll: Duration,
    ) -> Result<P9Session, P9ClientError> {
        let start = Instant::now();
        let sock = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(3) => {
                    return Err(P9ClientError::Connect {
                        socket: socket.to_path_buf(),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(P9ClientError::Io)?;
        sock.set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(P9ClientError::Io)?;
        let mut s = P9Session {
            sock,
            rbuf: vec![0; MSIZE_WANT as usize + (64 << 10)],
            rstart: 0,
            rend: 0,
            msize: MSIZE_WANT,
            io: None,
            remove_instead_of_unlinkat: false,
            poller: Poller::new(guest_poll),
        };
        let v = Tmessage::Version {
            msize: MSIZE_WANT,
            version: b"9P2000.L",
        };
        match s.rpc_tagged("Tversion", &v, p9::messages::NOTAG)? {
            Rmessage::Version { msize, version } if version == b"9P2000.L" && msize >= 8192 => {
                s.msize = msize.min(MSIZE_WANT)
            }
            r => return Err(unexpected("Tversion", &r)),
        }
        let attach = Tmessage::Attach {
            fid: ROOT,
            afid: NOFID,
            uname: b"root",
            aname,
            n_uname: 0,
        };
        s.rpc("Tattach", &attach)?;
        match kind {
            Kind::Io(spec) => s.setup_io(*spec)?,
            Kind::CreateStatUnlink => s.walk(ROOT, DIR, &[CREATE_DIR.as_bytes()])?,
            Kind::Readdir => s.walk(ROOT, DIR, &[DIR10K.as_bytes()])?,
            // The tree workloads are virtio-fs and native only: fsbench
            // does not run them against 9P servers.
            Kind::Tree(_) => {}
        }
        Ok(s)
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Result<(), P9ClientError> {
        let w = Tmessage::Walk {
            fid,
            newfid,
            names: names.to_vec(),
        };
        match self.rpc("Twalk", &w)? {
            Rmessage::Walk { qids } if qids.len() == names.len() => Ok(()),
            r => Err(unexpected("Twalk", &r)),
        }
    }

    fn setup_io(&mut self, spec: IoSpec) -> Result<(), P9ClientError> {
        let (name, flags) = match spec.role {
            FileRole::Read => (DATA, libc::O_RDONLY),
            FileRole::Write => (WDATA, libc::O_RDWR),
        };
        self.walk(ROOT, FILE, &[name.as_bytes()])?;
        let iounit = match self.rpc(
            "Tlopen",
            &Tmessage::Lopen {
                fid: FILE,
                flags: flags as u32,
            },
        )? {
            Rmessage::Lopen { iounit, .. } => iounit,
            r => return Err(unexpected("Tlopen", &r)),
        };
        // v9fs: the fid's iounit, else msize - P9_IOHDRSZ.
        let mut max = self.msize - IOHDRSZ;
        if iounit > 0 {
            max = max.min(iounit);
        }
        let count = spec.len.min(max);
        let data = vec![WRITE_BYTE; count as usize];
        let slots = (0..spec.qd)
            .map(|i| {
                let m = if spec.write() {
                    Tmessage::Write {
                        fid: FILE,
                        offset: 0,
                        data: &data,
                    }
                } else {
                    Tmessage::Read {
                        fid: FILE,
                        offset: 0,
                        count,
                    }
                };
                Slot {
                    frame: m.encode(i as u16),
                    offset: 0,
                }
            })
            .collect();
        self.io = Some(Io {
            spec,
            count,
            slots,
            pending: Vec::new(),
        });
        Ok(())
    }

    /// Reads more of the stream into the buffer (blocking).
    fn fill(&mut self) -> Result<(), P9ClientError> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let fd = self.sock.as_raw_fd();
        let polled = self.poller.spin(|| device_queue::readable(fd));
        let slept = Instant::now();
        let n = self
            .sock
            .read(&mut self.rbuf[self.rend..])
            .map_err(io_err)?;
        if !polled {
            self.poller.learn(slept.elapsed());
        }
        if n == 0 {
            return Err(P9ClientError::Closed);
        }
        self.rend += n;
        Ok(())
    }

    /// The next whole frame in the buffer, as a range of it.
    fn next_frame(&mut self) -> Result<Option<std::ops::Range<usize>>, P9ClientError> {
        let avail = self.rend - self.rstart;
        // The size field alone already tells a runt frame (size < 7), which
        // must be an error now, not a wait for bytes that never come.
        let Some(size) = FrameHeader::peek_size(&self.rbuf[self.rstart..self.rend]) else {
            return Ok(None);
        };
        let size = size as usize;
        if size < FrameHeader::SIZE || size > self.rbuf.len() {
            return Err(P9ClientError::BadReply {
                op: "reply",
                detail: format!("frame size {size}"),
            });
        }
        if avail < size {
            return Ok(None);
        }
        let r = self.rstart..self.rstart + size;
        self.rstart += size;
        Ok(Some(r))
    }

    /// The next whole frame, reading as needed.
    fn read_frame(&mut self) -> Result<std::ops::Range<usize>, P9ClientError> {
        loop {
            if let Some(r) = self.next_frame()? {
                return Ok(r);
            }
            self.fill()?;
        }
    }

    fn rpc_tagged(
        &mut self,
        op: &'static str,
        m: &Tmessage<'_>,
        tag: u16,
    ) -> Result<Rmessage, P9ClientError> {
        self.sock.write_all(&m.encode(tag)).map_err(io_err)?;
        let r = self.read_frame()?;
        let (rtag, reply) =
            decode_rframe(&self.rbuf[r]).map_err(|err| P9ClientError::Wire { op, err })?;
        if rtag != tag {
            return Err(P9ClientError::BadReply {
                op,
                detail: format!("reply tag {rtag}, request tag {tag}"),
            });
        }
        if let Rmessage::Lerror { ecode } = reply {
            return Err(P9ClientError::Lerror {
                op,
                err: io::Error::from_raw_os_error(ecode as i32),
            });
        }
        Ok(reply)
    }

    fn rpc(&mut self, op: &'static str, m: &Tmessage<'_>) -> Result<Rmessage, P9ClientError> {
        self.rpc_tagged(op, m, SYNC_TAG)
    }

    /// Checks the I/O reply `frame`; returns its slot.
    fn check_io(&self, frame: &[u8]) -> Result<usize, P9ClientError> {
        let Some(io) = &self.io else {
            return Err(P9ClientError::BadReply {
                op: "reply",
                detail: "an I/O reply without I/O".into(),
            });
        };
        let op = if io.spec.write() { "Twrite" } else { "Tread" };
        let FrameHeader { ty: t, tag, .. } =
            FrameHeader::parse(frame).ok_or_else(|| P9ClientError::BadReply {
                op,
                detail: format!("a frame of {} bytes", frame.len()),
            })?;
        let slot = tag as usize;
        if slot >= io.slots.len() {
            return Err(P9ClientError::BadReply {
                op,
                detail: format!("reply with tag {tag}, which was not pending"),
            });
        }
        // Rlerror's ecode, Rread's or Rwrite's count: the body's first word.
        let word = || Decoder::new(&frame[FrameHeader::SIZE..]).u32().ok();
        let want = if io.spec.write() {
            ty::RWRITE
        } else {
            ty::RREAD
        };
        if t == ty::RLERROR {
            return Err(P9ClientError::Lerror {
                op,
                err: io::Error::from_raw_os_error(word().unwrap_or(0) as i32),
            });
        }
        let count = word();
        if t != want || count != Some(io.count) {
            return Err(P9ClientError::BadReply {
                op,
                detail: format!(
                    "type {t} count {count:?} at offset {}, expected type {want} count {}",
                    io.slots[slot].offset, io.count
                ),
            });
        }
        if !io.spec.write() && !pattern_matches(&frame[RREAD_HEADER..], io.slots[slot].offset) {
            return Err(P9ClientError::BadReply {
                op,
                detail: format!(
                    "the data read at offset {} is not the file's",
                    io.slots[slot].offset
                ),
            });
        }
        Ok(slot)
    }
}

fn unexpected(op: &'static str, r: &Rmessage) -> P9ClientError {
    P9ClientError::BadReply {
        op,
        detail: format!("unexpected reply type {}", r.type_number()),
    }
}

/// Writes all of `bufs`, as few `writev` calls as the socket allows.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// The entries of an Rreaddir's data: (offset, name) of each
/// `qid[13] offset[8] type[1] name[s]`; stops at a truncated entry.
pub fn readdir_entries(data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> + '_ {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 24 {
            return None;
        }
        let off = u64::from_le_bytes(rest[13..21].try_into().ok()?);
        let n = u16::from_le_bytes([rest[22], rest[23]]) as usize;
        let name = rest.get(24..24 + n)?;
        rest = &rest[24 + n..];
        Some((off, name))
    })
}

impl From<P9ClientError> for SessionError {
    fn from(e: P9ClientError) -> SessionError {
        SessionError::new(e)
    }
}

impl Session for P9Session {
    fn io_len(&self) -> Option<u32> {
        self.io.as_ref().map(|io| io.count)
    }

    fn submit(&mut self, slot: usize, offset: u64) -> Result<(), SessionError> {
        if let Some(io) = &mut self.io {
            let s = &mut io.slots[slot];
            s.offset = offset;
            s.frame[11..19].copy_from_slice(&offset.to_le_bytes());
            io.pending.push(slot);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SessionError> {
        let Some(io) = &mut self.io else {
            return Ok(());
        };
        let mut bufs: Vec<IoSlice<'_>> = io
            .pending
            .iter()
            .map(|&i| IoSlice::new(&io.slots[i].frame))
            .collect();
        write_all_vectored(&mut self.sock, &mut bufs).map_err(io_err)?;
        io.pending.clear();
        Ok(())
    }

    fn wait(&mut self, done: &mut Vec<(usize, Instant)>) -> Result<(), SessionError> {
        let before = done.len();
        loop {
            while let Some(r) = self.next_frame()? {
                let now = Instant::now();
                let slot = self.check_io(&self.rbuf[r])?;
                done.push((slot, now));
            }
            if done.len() > before {
                return Ok(());
            }
            self.fill()?;
        }
    }

    fn create_stat_unlink(&mut self, name: &[u8]) -> Result<(), SessionError> {
        self.walk(DIR, TMP, &[])?;
        let create = Tmessage::Lcreate {
            fid: TMP,
            name,
            flags: (libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) as u32,
            mode: libc::S_IFREG | 0o644,
            gid: 0,
        };
        match self.rpc("Tlcreate", &create)? {
            Rmessage::Lcreate { .. } => {}
            r => return Err(unexpected("Tlcreate", &r).into()),
        }
        match self.rpc(
            "Tgetattr",
            &Tmessage::Getattr {
                fid: TMP,
                mask: GETATTR_BASIC,
            },
        )? {
            Rmessage::Getattr(_) => {}
            r => return Err(unexpected("Tgetattr", &r).into()),
        }
        self.rpc("Tclunk", &Tmessage::Clunk { fid: TMP })?;
        if !self.remove_instead_of_unlinkat {
            let unlink = Tmessage::Unlinkat {
                dirfid: DIR,
                name,
                flags: 0,
            };
            match self.rpc("Tunlinkat", &unlink) {
                Ok(_) => return Ok(()),
                Err(P9ClientError::Lerror { err, .. })
                    if err.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                {
                    self.remove_instead_of_unlinkat = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(DIR, TMP, &[name])?;
        self.rpc("Tremove", &Tmessage::Remove { fid: TMP })?;
        Ok(())
    }

    fn list_dir(&mut self) -> Result<u64, SessionError> {
        self.walk(DIR, TMP, &[])?;
        let flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
        self.rpc("Tlopen", &Tmessage::Lopen { fid: TMP, flags })?;
        let count = self.msize - IOHDRSZ;
        let (mut offset, mut n) = (0u64, 0u64);
        loop {
            let r = self.rpc(
                "Treaddir",
                &Tmessage::Readdir {
                    fid: TMP,
                    offset,
                    count,
                },
            )?;
            let Rmessage::Readdir { data } = r else {
                return Err(unexpected("Treaddir", &r).into());
            };
            if data.is_empty() {
                break;
            }
            let before = n;
            for (off, _) in readdir_entries(&data) {
                n += 1;
                offset = off;
            }
            if n == before {
                return Err(P9ClientError::BadReply {
                    op: "Treaddir",
                    detail: format!("{} bytes without a whole entry", data.len()),
                }
                .into());
            }
        }
        self.rpc("Tclunk", &Tmessage::Clunk { fid: TMP })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readdir_entries_walk_the_wire_format() {
        let mut data = Vec::new();
        for (i, name) in [&b"."[..], b"entry-00001"].iter().enumerate() {
            data.extend_from_slice(&[0u8; 13]); // qid
            data.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            data.push(4);
            data.extend_from_slice(&(name.len() as u16).to_le_bytes());
            data.extend_from_slice(name);
        }
        let got: Vec<_> = readdir_entries(&data).collect();
        assert_eq!(got, vec![(1, &b"."[..]), (2, &b"entry-00001"[..])]);
        assert_eq!(readdir_entries(&data[..30]).count(), 1);
    }

    #[test]
    fn io_frames_carry_the_offset_where_submit_patches_it() {
        let r = Tmessage::Read {
            fid: FILE,
            offset: 0x1122_3344_5566_7788,
            count: 4096,
        }
        .encode(3);
        assert_eq!(&r[11..19], &0x1122_3344_5566_7788u64.to_le_bytes());
        let w = Tmessage::Write {
            fid: FILE,
            offset: 0x0102_0304_0506_0708,
            data: b"abc",
        }
        .encode(3);
        assert_eq!(&w[11..19], &0x0102_0304_0506_0708u64.to_le_bytes());
    }
}
