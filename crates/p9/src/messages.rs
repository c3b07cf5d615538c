//! Every 9P2000.L message, T and R, with its encoding and decoding.
//!
//! A frame is `size[4] type[1] tag[2] body`. [`decode_tframe`] checks the
//! size against the frame and the negotiated msize, `nwname <= 16`, string
//! validity and that nothing trails the body. `Twrite` data is borrowed from
//! the frame, and `Rread` data is read straight into the reply frame
//! ([`ReadReply`]), so payloads are not copied on their way to or from the
//! file.

use crate::wire::{Decoder, Encoder, Qid, WireError};

/// Largest number of names in one walk.
pub const MAXWELEM: usize = 16;
/// "No fid": the afid of an unauthenticated attach.
pub const NOFID: u32 = u32::MAX;
/// "No uid" in `n_uname`.
pub const NONUNAME: u32 = u32::MAX;
/// The tag of Tversion.
pub const NOTAG: u16 = u16::MAX;
/// Bytes before the body: size, type, tag.
pub const HEADER_SIZE: usize = 7;
/// Bytes before the data of an Rread: header and count.
pub const RREAD_HEADER: usize = HEADER_SIZE + 4;
/// Bytes before the data of a Twrite: header, fid, offset, count.
pub const TWRITE_HEADER: usize = HEADER_SIZE + 4 + 8 + 4;

/// Message type numbers.
#[allow(missing_docs)]
pub mod ty {
    pub const TLERROR: u8 = 6;
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const RSTATFS: u8 = 9;
    pub const TLOPEN: u8 = 12;
    pub const RLOPEN: u8 = 13;
    pub const TLCREATE: u8 = 14;
    pub const RLCREATE: u8 = 15;
    pub const TSYMLINK: u8 = 16;
    pub const RSYMLINK: u8 = 17;
    pub const TMKNOD: u8 = 18;
    pub const RMKNOD: u8 = 19;
    pub const TRENAME: u8 = 20;
    pub const RRENAME: u8 = 21;
    pub const TREADLINK: u8 = 22;
    pub const RREADLINK: u8 = 23;
    pub const TGETATTR: u8 = 24;
    pub const RGETATTR: u8 = 25;
    pub const TSETATTR: u8 = 26;
    pub const RSETATTR: u8 = 27;
    pub const TXATTRWALK: u8 = 30;
    pub const RXATTRWALK: u8 = 31;
    pub const TXATTRCREATE: u8 = 32;
    pub const RXATTRCREATE: u8 = 33;
    pub const TREADDIR: u8 = 40;
    pub const RREADDIR: u8 = 41;
    pub const TFSYNC: u8 = 50;
    pub const RFSYNC: u8 = 51;
    pub const TLOCK: u8 = 52;
    pub const RLOCK: u8 = 53;
    pub const TGETLOCK: u8 = 54;
    pub const RGETLOCK: u8 = 55;
    pub const TLINK: u8 = 70;
    pub const RLINK: u8 = 71;
    pub const TMKDIR: u8 = 72;
    pub const RMKDIR: u8 = 73;
    pub const TRENAMEAT: u8 = 74;
    pub const RRENAMEAT: u8 = 75;
    pub const TUNLINKAT: u8 = 76;
    pub const RUNLINKAT: u8 = 77;
    pub const TVERSION: u8 = 100;
    pub const RVERSION: u8 = 101;
    pub const TAUTH: u8 = 102;
    pub const RAUTH: u8 = 103;
    pub const TATTACH: u8 = 104;
    pub const RATTACH: u8 = 105;
    pub const TFLUSH: u8 = 108;
    pub const RFLUSH: u8 = 109;
    pub const TWALK: u8 = 110;
    pub const RWALK: u8 = 111;
    pub const TREAD: u8 = 116;
    pub const RREAD: u8 = 117;
    pub const TWRITE: u8 = 118;
    pub const RWRITE: u8 = 119;
    pub const TCLUNK: u8 = 120;
    pub const RCLUNK: u8 = 121;
    pub const TREMOVE: u8 = 122;
    pub const RREMOVE: u8 = 123;
}

/// Tsetattr's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct SetAttr {
    pub valid: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
}

/// Tlock / Tgetlock / Rgetlock lock description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Lock<S> {
    pub ty: u8,
    pub start: u64,
    pub length: u64,
    pub proc_id: u32,
    pub client_id: S,
}

/// Rgetattr's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Attr {
    pub valid: u64,
    pub qid: Qid,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
    pub ctime_sec: u64,
    pub ctime_nsec: u64,
    pub btime_sec: u64,
    pub btime_nsec: u64,
    pub gen: u64,
    pub data_version: u64,
}

/// Rstatfs's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct StatFs {
    pub ty: u32,
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub fsid: u64,
    pub namelen: u32,
}

/// A request from the client. Strings and write data borrow from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Tmessage<'a> {
    Version {
        msize: u32,
        version: &'a [u8],
    },
    Auth {
        afid: u32,
        uname: &'a [u8],
        aname: &'a [u8],
        n_uname: u32,
    },
    Attach {
        fid: u32,
        afid: u32,
        uname: &'a [u8],
        aname: &'a [u8],
        n_uname: u32,
    },
    Flush {
        oldtag: u16,
    },
    Walk {
        fid: u32,
        newfid: u32,
        names: Vec<&'a [u8]>,
    },
    Read {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Write {
        fid: u32,
        offset: u64,
        data: &'a [u8],
    },
    Clunk {
        fid: u32,
    },
    Remove {
        fid: u32,
    },
    Statfs {
        fid: u32,
    },
    Lopen {
        fid: u32,
        flags: u32,
    },
    Lcreate {
        fid: u32,
        name: &'a [u8],
        flags: u32,
        mode: u32,
        gid: u32,
    },
    Symlink {
        fid: u32,
        name: &'a [u8],
        target: &'a [u8],
        gid: u32,
    },
    Mknod {
        dfid: u32,
        name: &'a [u8],
        mode: u32,
        major: u32,
        minor: u32,
        gid: u32,
    },
    Rename {
        fid: u32,
        dfid: u32,
        name: &'a [u8],
    },
    Readlink {
        fid: u32,
    },
    Getattr {
        fid: u32,
        mask: u64,
    },
    Setattr {
        fid: u32,
        attr: SetAttr,
    },
    XattrWalk {
        fid: u32,
        newfid: u32,
        name: &'a [u8],
    },
    XattrCreate {
        fid: u32,
        name: &'a [u8],
        size: u64,
        flags: u32,
    },
    Readdir {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Fsync {
        fid: u32,
        datasync: u32,
    },
    Lock {
        fid: u32,
        flags: u32,
        lock: Lock<&'a [u8]>,
    },
    GetLock {
        fid: u32,
        lock: Lock<&'a [u8]>,
    },
    Link {
        dfid: u32,
        fid: u32,
        name: &'a [u8],
    },
    Mkdir {
        dfid: u32,
        name: &'a [u8],
        mode: u32,
        gid: u32,
    },
    Renameat {
        olddirfid: u32,
        oldname: &'a [u8],
        newdirfid: u32,
        newname: &'a [u8],
    },
    Unlinkat {
        dirfid: u32,
        name: &'a [u8],
        flags: u32,
    },
}

/// A reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Rmessage {
    Lerror { ecode: u32 },
    Version { msize: u32, version: Vec<u8> },
    Auth { aqid: Qid },
    Attach { qid: Qid },
    Flush,
    Walk { qids: Vec<Qid> },
    Read { data: Vec<u8> },
    Write { count: u32 },
    Clunk,
    Remove,
    Statfs(StatFs),
    Lopen { qid: Qid, iounit: u32 },
    Lcreate { qid: Qid, iounit: u32 },
    Symlink { qid: Qid },
    Mknod { qid: Qid },
    Rename,
    Readlink { target: Vec<u8> },
    Getattr(Attr),
    Setattr,
    XattrWalk { size: u64 },
    XattrCreate,
    Readdir { data: Vec<u8> },
    Fsync,
    Lock { status: u8 },
    GetLock(Lock<Vec<u8>>),
    Link,
    Mkdir { qid: Qid },
    Renameat,
    Unlinkat,
}

/// Splits a frame into (type, tag, body) after checking its size field.
fn split_frame(frame: &[u8]) -> Result<(u8, u16, &[u8]), WireError> {
    let mut d = Decoder::new(frame);
    let size = d.u32()?;
    if size as usize != frame.len() || frame.len() < HEADER_SIZE {
        return Err(WireError::BadSize { size });
    }
    let t = d.u8()?;
    let tag = d.u16()?;
    Ok((t, tag, &frame[HEADER_SIZE..]))
}

/// The type and tag of a frame, for replying to one that does not decode.
pub fn peek_type_tag(frame: &[u8]) -> Option<(u8, u16)> {
    if frame.len() < HEADER_SIZE {
        return None;
    }
    Some((frame[4], u16::from_le_bytes([frame[5], frame[6]])))
}

/// The fixed part of a Tread or Twrite, read without decoding the frame:
/// what a data path (the stream reader's inline I/O, the virtio-9p io_uring
/// engine) needs to move the data itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRequest {
    /// True for Tread, false for Twrite.
    pub read: bool,
    /// The request's tag.
    pub tag: u16,
    /// The fid read or written.
    pub fid: u32,
    /// The file offset.
    pub offset: u64,
    /// Bytes asked for (Tread) or carried (Twrite).
    pub count: u32,
}

impl DataRequest {
    /// Parses `size[4] type[1] tag[2] fid[4] offset[8] count[4]` from a
    /// frame of `frame_len` bytes: `None` unless it is a Tread of exactly
    /// that size, or a Twrite whose size is the header plus `count`, with
    /// the size field equal to `frame_len` and `offset + count` a valid file
    /// offset. Anything else is for the decoder, which gives the right error.
    pub fn parse(hdr: &[u8; TWRITE_HEADER], frame_len: usize) -> Option<DataRequest> {
        let le32 = |at: usize| u32::from_le_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&hdr[11..19]);
        let r = DataRequest {
            read: hdr[4] == ty::TREAD,
            tag: u16::from_le_bytes([hdr[5], hdr[6]]),
            fid: le32(7),
            offset: u64::from_le_bytes(offset),
            count: le32(19),
        };
        let size = match hdr[4] {
            ty::TREAD => TWRITE_HEADER,
            ty::TWRITE => TWRITE_HEADER + r.count as usize,
            _ => return None,
        };
        (le32(0) as usize == frame_len
            && size == frame_len
            && r.offset.checked_add(u64::from(r.count))? <= i64::MAX as u64)
            .then_some(r)
    }

    /// The reply's fixed part for `res`: see [`data_reply_header`].
    pub fn reply_header(&self, res: i32) -> ([u8; RREAD_HEADER], u32) {
        data_reply_header(self.read, self.tag, res)
    }
}

/// The fixed part of the reply to a Tread (`read`) or Twrite tagged `tag`
/// that moved `res` bytes or failed with errno `-res`: Rread (its `res`
/// bytes of data follow), Rwrite or Rlerror. Returns the header and the
/// reply's whole size.
pub fn data_reply_header(read: bool, tag: u16, res: i32) -> ([u8; RREAD_HEADER], u32) {
    let (t, size, word) = match read {
        _ if res < 0 => (ty::RLERROR, RREAD_HEADER as u32, res.unsigned_abs()),
        true => (ty::RREAD, RREAD_HEADER as u32 + res as u32, res as u32),
        false => (ty::RWRITE, RREAD_HEADER as u32, res as u32),
    };
    let mut h = [0u8; RREAD_HEADER];
    h[0..4].copy_from_slice(&size.to_le_bytes());
    h[4] = t;
    h[5..7].copy_from_slice(&tag.to_le_bytes());
    h[7..11].copy_from_slice(&word.to_le_bytes());
    (h, size)
}

fn lock_body<'a>(
    d: &mut Decoder<'a>,
    with_flags: bool,
) -> Result<(u32, Lock<&'a [u8]>, u32), WireError> {
    let fid = d.u32()?;
    let ty = d.u8()?;
    let flags = if with_flags { d.u32()? } else { 0 };
    let lock = Lock {
        ty,
        start: d.u64()?,
        length: d.u64()?,
        proc_id: d.u32()?,
        client_id: d.string()?,
    };
    Ok((fid, lock, flags))
}

/// Decodes a whole T-frame into `(tag, message)`.
pub fn decode_tframe(frame: &[u8]) -> Result<(u16, Tmessage<'_>), WireError> {
    use ty::*;
    let (t, tag, body) = split_frame(frame)?;
    let mut d = Decoder::new(body);
    let m = match t {
        TVERSION => Tmessage::Version {
            msize: d.u32()?,
            version: d.string()?,
        },
        TAUTH => Tmessage::Auth {
            afid: d.u32()?,
            uname: d.string()?,
            aname: d.string()?,
            n_uname: d.u32()?,
        },
        TATTACH => Tmessage::Attach {
            fid: d.u32()?,
            afid: d.u32()?,
            uname: d.string()?,
            aname: d.string()?,
            n_uname: d.u32()?,
        },
        TFLUSH => Tmessage::Flush { oldtag: d.u16()? },
        TWALK => {
            let fid = d.u32()?;
            let newfid = d.u32()?;
            let n = d.u16()?;
            if n as usize > MAXWELEM {
                return Err(WireError::TooManyNames(n));
            }
            let names = (0..n).map(|_| d.string()).collect::<Result<Vec<_>, _>>()?;
            Tmessage::Walk { fid, newfid, names }
        }
        TREAD => Tmessage::Read {
            fid: d.u32()?,
            offset: d.u64()?,
            count: d.u32()?,
        },
        TWRITE => Tmessage::Write {
            fid: d.u32()?,
            offset: d.u64()?,
            data: d.data()?,
        },
        TCLUNK => Tmessage::Clunk { fid: d.u32()? },
        TREMOVE => Tmessage::Remove { fid: d.u32()? },
        TSTATFS => Tmessage::Statfs { fid: d.u32()? },
        TLOPEN => Tmessage::Lopen {
            fid: d.u32()?,
            flags: d.u32()?,
        },
        TLCREATE => Tmessage::Lcreate {
            fid: d.u32()?,
            name: d.string()?,
            flags: d.u32()?,
            mode: d.u32()?,
            gid: d.u32()?,
        },
        TSYMLINK => Tmessage::Symlink {
            fid: d.u32()?,
            name: d.string()?,
            target: d.string()?,
            gid: d.u32()?,
        },
        TMKNOD => Tmessage::Mknod {
            dfid: d.u32()?,
            name: d.string()?,
            mode: d.u32()?,
            major: d.u32()?,
            minor: d.u32()?,
            gid: d.u32()?,
        },
        TRENAME => Tmessage::Rename {
            fid: d.u32()?,
            dfid: d.u32()?,
            name: d.string()?,
        },
        TREADLINK => Tmessage::Readlink { fid: d.u32()? },
        TGETATTR => Tmessage::Getattr {
            fid: d.u32()?,
            mask: d.u64()?,
        },
        TSETATTR => Tmessage::Setattr {
            fid: d.u32()?,
            attr: SetAttr {
                valid: d.u32()?,
                mode: d.u32()?,
                uid: d.u32()?,
                gid: d.u32()?,
                size: d.u64()?,
                atime_sec: d.u64()?,
                atime_nsec: d.u64()?,
                mtime_sec: d.u64()?,
                mtime_nsec: d.u64()?,
            },
        },
        TXATTRWALK => Tmessage::XattrWalk {
            fid: d.u32()?,
            newfid: d.u32()?,
            name: d.string()?,
        },
        TXATTRCREATE => Tmessage::XattrCreate {
            fid: d.u32()?,
            name: d.string()?,
            size: d.u64()?,
            flags: d.u32()?,
        },
        TREADDIR => Tmessage::Readdir {
            fid: d.u32()?,
            offset: d.u64()?,
            count: d.u32()?,
        },
        TFSYNC => {
            let fid = d.u32()?;
            // Older clients send no datasync field.
            let datasync = if d.remaining() >= 4 { d.u32()? } else { 0 };
            Tmessage::Fsync { fid, datasync }
        }
        TLOCK => {
            let (fid, lock, flags) = lock_body(&mut d, true)?;
            Tmessage::Lock { fid, flags, lock }
        }
        TGETLOCK => {
            let (fid, lock, _) = lock_body(&mut d, false)?;
            Tmessage::GetLock { fid, lock }
        }
        TLINK => Tmessage::Link {
            dfid: d.u32()?,
            fid: d.u32()?,
            name: d.string()?,
        },
        TMKDIR => Tmessage::Mkdir {
            dfid: d.u32()?,
            name: d.string()?,
            mode: d.u32()?,
            gid: d.u32()?,
        },
        TRENAMEAT => Tmessage::Renameat {
            olddirfid: d.u32()?,
            oldname: d.string()?,
            newdirfid: d.u32()?,
            newname: d.string()?,
        },
        TUNLINKAT => Tmessage::Unlinkat {
            dirfid: d.u32()?,
            name: d.string()?,
            flags: d.u32()?,
        },
        other => return Err(WireError::UnknownType(other)),
    };
    d.finish()?;
    Ok((tag, m))
}

/// Writes a frame header with a placeholder size; [`finish_frame`] patches it.
fn start_frame(buf: &mut Vec<u8>, t: u8, tag: u16) {
    Encoder::new(buf).u32(0).u8(t).u16(tag);
}

fn finish_frame(buf: &mut [u8]) {
    let size = buf.len() as u32;
    buf[..4].copy_from_slice(&size.to_le_bytes());
}

fn encode_lock(e: &mut Encoder<'_>, l: &Lock<impl AsRef<[u8]>>) {
    e.u64(l.start)
        .u64(l.length)
        .u32(l.proc_id)
        .string(l.client_id.as_ref());
}

impl Tmessage<'_> {
    /// The T-type number.
    pub fn type_number(&self) -> u8 {
        use ty::*;
        match self {
            Tmessage::Version { .. } => TVERSION,
            Tmessage::Auth { .. } => TAUTH,
            Tmessage::Attach { .. } => TATTACH,
            Tmessage::Flush { .. } => TFLUSH,
            Tmessage::Walk { .. } => TWALK,
            Tmessage::Read { .. } => TREAD,
            Tmessage::Write { .. } => TWRITE,
            Tmessage::Clunk { .. } => TCLUNK,
            Tmessage::Remove { .. } => TREMOVE,
            Tmessage::Statfs { .. } => TSTATFS,
            Tmessage::Lopen { .. } => TLOPEN,
            Tmessage::Lcreate { .. } => TLCREATE,
            Tmessage::Symlink { .. } => TSYMLINK,
            Tmessage::Mknod { .. } => TMKNOD,
            Tmessage::Rename { .. } => TRENAME,
            Tmessage::Readlink { .. } => TREADLINK,
            Tmessage::Getattr { .. } => TGETATTR,
            Tmessage::Setattr { .. } => TSETATTR,
            Tmessage::XattrWalk { .. } => TXATTRWALK,
            Tmessage::XattrCreate { .. } => TXATTRCREATE,
            Tmessage::Readdir { .. } => TREADDIR,
            Tmessage::Fsync { .. } => TFSYNC,
            Tmessage::Lock { .. } => TLOCK,
            Tmessage::GetLock { .. } => TGETLOCK,
            Tmessage::Link { .. } => TLINK,
            Tmessage::Mkdir { .. } => TMKDIR,
            Tmessage::Renameat { .. } => TRENAMEAT,
            Tmessage::Unlinkat { .. } => TUNLINKAT,
        }
    }

    /// Encodes this request as a frame with `tag` (for clients and tests).
    pub fn encode(&self, tag: u16) -> Vec<u8> {
        let mut buf = Vec::new();
        start_frame(&mut buf, self.type_number(), tag);
        let mut e = Encoder::new(&mut buf);
        match self {
            Tmessage::Version { msize, version } => {
                e.u32(*msize).string(version);
            }
            Tmessage::Auth {
                afid,
                uname,
                aname,
                n_uname,
            } => {
                e.u32(*afid).string(uname).string(aname).u32(*n_uname);
            }
            Tmessage::Attach {
                fid,
                afid,
                uname,
                aname,
                n_uname,
            } => {
                e.u32(*fid)
                    .u32(*afid)
                    .string(uname)
                    .string(aname)
                    .u32(*n_uname);
            }
            Tmessage::Flush { oldtag } => {
                e.u16(*oldtag);
            }
            Tmessage::Walk { fid, newfid, names } => {
                e.u32(*fid).u32(*newfid).u16(names.len() as u16);
                for n in names {
                    e.string(n);
                }
            }
            Tmessage::Read { fid, offset, count } => {
                e.u32(*fid).u64(*offset).u32(*count);
            }
            Tmessage::Write { fid, offset, data } => {
                e.u32(*fid).u64(*offset).data(data);
            }
            Tmessage::Clunk { fid }
            | Tmessage::Remove { fid }
            | Tmessage::Statfs { fid }
            | Tmessage::Readlink { fid } => {
                e.u32(*fid);
            }
            Tmessage::Lopen { fid, flags } => {
                e.u32(*fid).u32(*flags);
            }
            Tmessage::Lcreate {
                fid,
                name,
                flags,
                mode,
                gid,
            } => {
                e.u32(*fid).string(name).u32(*flags).u32(*mode).u32(*gid);
            }
            Tmessage::Symlink {
                fid,
                name,
                target,
                gid,
            } => {
                e.u32(*fid).string(name).string(target).u32(*gid);
            }
            Tmessage::Mknod {
                dfid,
                name,
                mode,
                major,
                minor,
                gid,
            } => {
                e.u32(*dfid)
                    .string(name)
                    .u32(*mode)
                    .u32(*major)
                    .u32(*minor)
                    .u32(*gid);
            }
            Tmessage::Rename { fid, dfid, name } => {
                e.u32(*fid).u32(*dfid).string(name);
            }
            Tmessage::Getattr { fid, mask } => {
                e.u32(*fid).u64(*mask);
            }
            Tmessage::Setattr { fid, attr: a } => {
                e.u32(*fid)
                    .u32(a.valid)
                    .u32(a.mode)
                    .u32(a.uid)
                    .u32(a.gid)
                    .u64(a.size);
                e.u64(a.atime_sec)
                    .u64(a.atime_nsec)
                    .u64(a.mtime_sec)
                    .u64(a.mtime_nsec);
            }
            Tmessage::XattrWalk { fid, newfid, name } => {
                e.u32(*fid).u32(*newfid).string(name);
            }
            Tmessage::XattrCreate {
                fid,
                name,
                size,
                flags,
            } => {
                e.u32(*fid).string(name).u64(*size).u32(*flags);
            }
            Tmessage::Readdir { fid, offset, count } => {
                e.u32(*fid).u64(*offset).u32(*count);
            }
            Tmessage::Fsync { fid, datasync } => {
                e.u32(*fid).u32(*datasync);
            }
            Tmessage::Lock { fid, flags, lock } => {
                e.u32(*fid).u8(lock.ty).u32(*flags);
                encode_lock(&mut e, lock);
            }
            Tmessage::GetLock { fid, lock } => {
                e.u32(*fid).u8(lock.ty);
                encode_lock(&mut e, lock);
            }
            Tmessage::Link { dfid, fid, name } => {
                e.u32(*dfid).u32(*fid).string(name);
            }
            Tmessage::Mkdir {
                dfid,
                name,
                mode,
                gid,
            } => {
                e.u32(*dfid).string(name).u32(*mode).u32(*gid);
            }
            Tmessage::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => {
                e.u32(*olddirfid)
                    .string(oldname)
                    .u32(*newdirfid)
                    .string(newname);
            }
            Tmessage::Unlinkat {
                dirfid,
                name,
                flags,
            } => {
                e.u32(*dirfid).string(name).u32(*flags);
            }
        }
        finish_frame(&mut buf);
        buf
    }
}

/// An Rread under construction: the frame header is reserved at the front so
/// the file data is read straight into the frame that goes on the wire.
pub struct ReadReply {
    buf: Vec<u8>,
}

impl ReadReply {
    /// A reply with room for `count` data bytes.
    pub fn with_capacity(count: usize) -> Self {
        let mut buf = Vec::with_capacity(RREAD_HEADER + count);
        buf.resize(RREAD_HEADER, 0);
        ReadReply { buf }
    }

    /// The buffer to append data to (after the reserved header).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The finished Rread frame for `tag`.
    pub fn into_frame(mut self, tag: u16) -> Vec<u8> {
        let count = (self.buf.len() - RREAD_HEADER) as u32;
        let size = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&size.to_le_bytes());
        self.buf[4] = ty::RREAD;
        self.buf[5..7].copy_from_slice(&tag.to_le_bytes());
        self.buf[7..11].copy_from_slice(&count.to_le_bytes());
        self.buf
    }
}

impl Rmessage {
    /// The R-type number.
    pub fn type_number(&self) -> u8 {
        use ty::*;
        match self {
            Rmessage::Lerror { .. } => RLERROR,
            Rmessage::Version { .. } => RVERSION,
            Rmessage::Auth { .. } => RAUTH,
            Rmessage::Attach { .. } => RATTACH,
            Rmessage::Flush => RFLUSH,
            Rmessage::Walk { .. } => RWALK,
            Rmessage::Read { .. } => RREAD,
            Rmessage::Write { .. } => RWRITE,
            Rmessage::Clunk => RCLUNK,
            Rmessage::Remove => RREMOVE,
            Rmessage::Statfs(_) => RSTATFS,
            Rmessage::Lopen { .. } => RLOPEN,
            Rmessage::Lcreate { .. } => RLCREATE,
            Rmessage::Symlink { .. } => RSYMLINK,
            Rmessage::Mknod { .. } => RMKNOD,
            Rmessage::Rename => RRENAME,
            Rmessage::Readlink { .. } => RREADLINK,
            Rmessage::Getattr(_) => RGETATTR,
            Rmessage::Setattr => RSETATTR,
            Rmessage::XattrWalk { .. } => RXATTRWALK,
            Rmessage::XattrCreate => RXATTRCREATE,
            Rmessage::Readdir { .. } => RREADDIR,
            Rmessage::Fsync => RFSYNC,
            Rmessage::Lock { .. } => RLOCK,
            Rmessage::GetLock(_) => RGETLOCK,
            Rmessage::Link => RLINK,
            Rmessage::Mkdir { .. } => RMKDIR,
            Rmessage::Renameat => RRENAMEAT,
            Rmessage::Unlinkat => RUNLINKAT,
        }
    }

    /// Encodes this reply as a frame with `tag`.
    pub fn encode(&self, tag: u16) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(tag, &mut buf);
        buf
    }

    /// Appends this reply's frame for `tag` to `buf` (a batch of replies).
    pub fn encode_into(&self, tag: u16, buf: &mut Vec<u8>) {
        let start = buf.len();
        start_frame(buf, self.type_number(), tag);
        let mut e = Encoder::new(buf);
        match self {
            Rmessage::Lerror { ecode } => {
                e.u32(*ecode);
            }
            Rmessage::Version { msize, version } => {
                e.u32(*msize).string(version);
            }
            Rmessage::Auth { aqid: qid }
            | Rmessage::Attach { qid }
            | Rmessage::Symlink { qid }
            | Rmessage::Mknod { qid }
            | Rmessage::Mkdir { qid } => {
                e.qid(qid);
            }
            Rmessage::Walk { qids } => {
                e.u16(qids.len() as u16);
                for q in qids {
                    e.qid(q);
                }
            }
            Rmessage::Read { data } | Rmessage::Readdir { data } => {
                e.data(data);
            }
            Rmessage::Write { count } => {
                e.u32(*count);
            }
            Rmessage::Statfs(s) => {
                e.u32(s.ty)
                    .u32(s.bsize)
                    .u64(s.blocks)
                    .u64(s.bfree)
                    .u64(s.bavail);
                e.u64(s.files).u64(s.ffree).u64(s.fsid).u32(s.namelen);
            }
            Rmessage::Lopen { qid, iounit } | Rmessage::Lcreate { qid, iounit } => {
                e.qid(qid).u32(*iounit);
            }
            Rmessage::Readlink { target } => {
                e.string(target);
            }
            Rmessage::Getattr(a) => {
                e.u64(a.valid).qid(&a.qid).u32(a.mode).u32(a.uid).u32(a.gid);
                e.u64(a.nlink)
                    .u64(a.rdev)
                    .u64(a.size)
                    .u64(a.blksize)
                    .u64(a.blocks);
                e.u64(a.atime_sec)
                    .u64(a.atime_nsec)
                    .u64(a.mtime_sec)
                    .u64(a.mtime_nsec);
                e.u64(a.ctime_sec)
                    .u64(a.ctime_nsec)
                    .u64(a.btime_sec)
                    .u64(a.btime_nsec);
                e.u64(a.gen).u64(a.data_version);
            }
            Rmessage::XattrWalk { size } => {
                e.u64(*size);
            }
            Rmessage::Lock { status } => {
                e.u8(*status);
            }
            Rmessage::GetLock(l) => {
                e.u8(l.ty);
                encode_lock(&mut e, l);
            }
            Rmessage::Flush
            | Rmessage::Clunk
            | Rmessage::Remove
            | Rmessage::Rename
            | Rmessage::Setattr
            | Rmessage::XattrCreate
            | Rmessage::Fsync
            | Rmessage::Link
            | Rmessage::Renameat
            | Rmessage::Unlinkat => {}
        }
        finish_frame(&mut buf[start..]);
    }
}

/// Decodes a whole R-frame into `(tag, message)` (for clients and tests).
pub fn decode_rframe(frame: &[u8]) -> Result<(u16, Rmessage), WireError> {
    use ty::*;
    let (t, tag, body) = split_frame(frame)?;
    let mut d = Decoder::new(body);
    let m = match t {
        RLERROR => Rmessage::Lerror { ecode: d.u32()? },
        RVERSION => Rmessage::Version {
            msize: d.u32()?,
            version: d.string()?.to_vec(),
        },
        RAUTH => Rmessage::Auth { aqid: d.qid()? },
        RATTACH => Rmessage::Attach { qid: d.qid()? },
        RFLUSH => Rmessage::Flush,
        RWALK => {
            let n = d.u16()?;
            if n as usize > MAXWELEM {
                return Err(WireError::TooManyNames(n));
            }
            let qids = (0..n).map(|_| d.qid()).collect::<Result<Vec<_>, _>>()?;
            Rmessage::Walk { qids }
        }
        RREAD => Rmessage::Read {
            data: d.data()?.to_vec(),
        },
        RWRITE => Rmessage::Write { count: d.u32()? },
        RCLUNK => Rmessage::Clunk,
        RREMOVE => Rmessage::Remove,
        RSTATFS => Rmessage::Statfs(StatFs {
            ty: d.u32()?,
            bsize: d.u32()?,
            blocks: d.u64()?,
            bfree: d.u64()?,
            bavail: d.u64()?,
            files: d.u64()?,
            ffree: d.u64()?,
            fsid: d.u64()?,
            namelen: d.u32()?,
        }),
        RLOPEN => Rmessage::Lopen {
            qid: d.qid()?,
            iounit: d.u32()?,
        },
        RLCREATE => Rmessage::Lcreate {
            qid: d.qid()?,
            iounit: d.u32()?,
        },
        RSYMLINK => Rmessage::Symlink { qid: d.qid()? },
        RMKNOD => Rmessage::Mknod { qid: d.qid()? },
        RRENAME => Rmessage::Rename,
        RREADLINK => Rmessage::Readlink {
            target: d.string()?.to_vec(),
        },
        RGETATTR => Rmessage::Getattr(Attr {
            valid: d.u64()?,
            qid: d.qid()?,
            mode: d.u32()?,
            uid: d.u32()?,
            gid: d.u32()?,
            nlink: d.u64()?,
            rdev: d.u64()?,
            size: d.u64()?,
            blksize: d.u64()?,
            blocks: d.u64()?,
            atime_sec: d.u64()?,
            atime_nsec: d.u64()?,
            mtime_sec: d.u64()?,
            mtime_nsec: d.u64()?,
            ctime_sec: d.u64()?,
            ctime_nsec: d.u64()?,
            btime_sec: d.u64()?,
            btime_nsec: d.u64()?,
            gen: d.u64()?,
            data_version: d.u64()?,
        }),
        RSETATTR => Rmessage::Setattr,
        RXATTRWALK => Rmessage::XattrWalk { size: d.u64()? },
        RXATTRCREATE => Rmessage::XattrCreate,
        RREADDIR => Rmessage::Readdir {
            data: d.data()?.to_vec(),
        },
        RFSYNC => Rmessage::Fsync,
        RLOCK => Rmessage::Lock { status: d.u8()? },
        RGETLOCK => Rmessage::GetLock(Lock {
            ty: d.u8()?,
            start: d.u64()?,
            length: d.u64()?,
            proc_id: d.u32()?,
            client_id: d.string()?.to_vec(),
        }),
        RLINK => Rmessage::Link,
        RMKDIR => Rmessage::Mkdir { qid: d.qid()? },
        RRENAMEAT => Rmessage::Renameat,
        RUNLINKAT => Rmessage::Unlinkat,
        other => return Err(WireError::UnknownType(other)),
    };
    d.finish()?;
    Ok((tag, m))
}
