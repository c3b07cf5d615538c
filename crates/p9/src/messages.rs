//! Every 9P2000.L message, T and R, with its encoding and decoding.
//!
//! A frame is `size[4] type[1] tag[2] body` ([`FrameHeader`], then the
//! body). [`decode_tframe`] checks the size against the frame, `nwname <=
//! 16`, string validity and that nothing trails the body (the transports
//! check msize before). `Twrite` data is borrowed from the frame, and `Rread`
//! data is read straight into the reply frame ([`ReadReply`]), so payloads
//! are not copied on their way to or from the file.
//!
//! Each message's fields are written once, in wire order, in the tables
//! given to `messages!` below ([`Tmessage`], [`Rmessage`]); the enum
//! variant, its type number, its decoder and its encoder all come from that
//! one row. A field's wire kind says how it travels:
//!
//! | kind | wire | in a T-message | in an R-message |
//! |---|---|---|---|
//! | `u8` `u16` `u32` `u64` | little-endian | the integer | the integer |
//! | `opt_u32` | `u32`, which older clients leave out at the end (0) | `u32` | — |
//! | `qid` | `type[1] version[4] path[8]` | [`Qid`] | [`Qid`] |
//! | `string` | `len[2] bytes[len]`, no NUL | `&[u8]` | `Vec<u8>` |
//! | `data` | `count[4] bytes[count]` | `&[u8]` | `Vec<u8>` |
//! | `names` | `nwname[2]`, at most 16 `string`s | `Vec<&[u8]>` | — |
//! | `qids` | `nwqid[2]`, at most 16 `qid`s | — | `Vec<Qid>` |
//! | `SetAttr` `Attr` `StatFs` | their fields in order (`wire_struct!`) | the struct | the struct |
//! | `Lock` | `type[1] start[8] length[8] proc_id[4] client_id[s]` | `Lock<&[u8]>` | `Lock<Vec<u8>>` |
//!
//! Hand-written, where a table row cannot say it: Tlock's layout (its
//! `flags` sit between the lock's `type` and `start`: `tlock`), the
//! [`Lock`] codec (generic over a borrowed or owned client id, and split for
//! Tlock), the counted lists (`names`, `qids`), and the data paths that
//! never decode a whole frame: [`ReadReply`] (Rread built in place),
//! [`DataRequest`] (a Tread's or Twrite's fixed part) and
//! [`data_reply_header`]. Rreaddir's entries are built by the server into
//! the message's `data`.

use crate::wire::{Decoder, Encoder, FrameHeader, Qid, WireError};

/// Largest number of names in one walk.
pub const MAXWELEM: usize = 16;
/// "No fid": the afid of an unauthenticated attach.
pub const NOFID: u32 = u32::MAX;
/// "No uid" in `n_uname`.
pub const NONUNAME: u32 = u32::MAX;
/// The tag of Tversion.
pub const NOTAG: u16 = u16::MAX;
/// Bytes before the body: size, type, tag ([`FrameHeader::SIZE`]).
pub const HEADER_SIZE: usize = FrameHeader::SIZE;
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

/// The Rust type of a field of wire kind `$k` (see the module docs), in a
/// message that borrows from the frame (`['a]`) or owns its bytes (`[]`).
#[rustfmt::skip] // One line per kind: a table.
macro_rules! wire_ty {
    ([$lt:lifetime] string) => { &$lt [u8] };
    ([] string) => { Vec<u8> };
    ([$lt:lifetime] data) => { &$lt [u8] };
    ([] data) => { Vec<u8> };
    ([$lt:lifetime] names) => { Vec<&$lt [u8]> };
    ([] qids) => { Vec<Qid> };
    ([$lt:lifetime] Lock) => { Lock<&$lt [u8]> };
    ([] Lock) => { Lock<Vec<u8>> };
    ($side:tt qid) => { Qid };
    ($side:tt opt_u32) => { u32 };
    // u8, u16, u32, u64 and the wire structs are their own types.
    ($side:tt $k:ident) => { $k };
}

/// Decodes a field of wire kind `$k` from decoder `$d` (in a function
/// returning `Result<_, WireError>`).
#[rustfmt::skip] // One line per kind: a table.
macro_rules! wire_dec {
    ([$lt:lifetime] $d:ident string) => { $d.string()? };
    ([] $d:ident string) => { $d.string()?.to_vec() };
    ([$lt:lifetime] $d:ident data) => { $d.data()? };
    ([] $d:ident data) => { $d.data()?.to_vec() };
    ($side:tt $d:ident names) => { decode_names($d)? };
    ($side:tt $d:ident qids) => { decode_qids($d)? };
    ($side:tt $d:ident qid) => { $d.qid()? };
    ($side:tt $d:ident opt_u32) => { if $d.remaining() >= 4 { $d.u32()? } else { 0 } };
    ($side:tt $d:ident u8) => { $d.u8()? };
    ($side:tt $d:ident u16) => { $d.u16()? };
    ($side:tt $d:ident u32) => { $d.u32()? };
    ($side:tt $d:ident u64) => { $d.u64()? };
    ($side:tt $d:ident $k:ident) => { $k::decode($d)? };
}

/// Encodes field `$x` (a reference) of wire kind `$k` with encoder `$e`.
#[rustfmt::skip] // One line per kind: a table.
macro_rules! wire_enc {
    ($e:ident $x:ident string) => { $e.string($x) };
    ($e:ident $x:ident data) => { $e.data($x) };
    ($e:ident $x:ident names) => { encode_names($e, $x) };
    ($e:ident $x:ident qids) => { encode_qids($e, $x) };
    ($e:ident $x:ident qid) => { $e.qid($x) };
    ($e:ident $x:ident opt_u32) => { $e.u32(*$x) };
    ($e:ident $x:ident u8) => { $e.u8(*$x) };
    ($e:ident $x:ident u16) => { $e.u16(*$x) };
    ($e:ident $x:ident u32) => { $e.u32(*$x) };
    ($e:ident $x:ident u64) => { $e.u64(*$x) };
    ($e:ident $x:ident $k:ident) => { $x.encode($e) };
}

/// A struct carried whole in a message body: the struct (every field
/// `pub`) and its decoder and encoder, from one list of fields in wire
/// order.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($f:ident: $k:ident),* $(,)? }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(pub $f: wire_ty!([] $k),)*
        }

        // A struct travels one way in the server (SetAttr in, Attr and
        // StatFs out); the other way is the client's half.
        #[cfg_attr(not(feature = "client"), allow(dead_code))]
        impl $name {
            fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
                Ok($name { $($f: wire_dec!([] d $k),)* })
            }

            fn encode(&self, e: &mut Encoder<'_>) {
                let $name { $($f),* } = self;
                $(wire_enc!(e $f $k);)*
            }
        }
    };
}

/// One variant's decoding or encoding, for `messages!`: through the row's
/// fields, or through a hand-written layout (`via`).
macro_rules! wire_variant {
    (decode $side:tt $d:ident $name:ident $v:ident [$via:ident] { $($f:ident $k:ident),* }) => {{
        let ($($f),*) = $via::decode($d)?;
        $name::$v { $($f),* }
    }};
    (decode $side:tt $d:ident $name:ident $v:ident [] { $($f:ident $k:ident),* }) => {
        $name::$v { $($f: wire_dec!($side $d $k)),* }
    };
    (decode $side:tt $d:ident $name:ident $v:ident [] ($f:ident $k:ident)) => {
        $name::$v(wire_dec!($side $d $k))
    };
    (decode $side:tt $d:ident $name:ident $v:ident []) => {
        $name::$v
    };
    (encode $e:ident [$via:ident] { $($f:ident $k:ident),* }) => {
        $via::encode($e, $($f),*)
    };
    (encode $e:ident [] { $($f:ident $k:ident),* }) => {{
        $(wire_enc!($e $f $k);)*
    }};
    (encode $e:ident [] ($f:ident $k:ident)) => {{
        wire_enc!($e $f $k);
    }};
    (encode $e:ident []) => {{}};
}

/// A message enum from its table. Each row is
/// `Variant = TYPE_CONSTANT` followed by the fields in wire order, as
/// `{ name: kind, ... }` (a struct variant), `(binding: kind)` (a variant
/// wrapping one struct) or nothing (no body), and optionally
/// `via module` (a hand-written layout: `module::decode` returns the
/// fields in row order, `module::encode` takes references to them). It
/// generates the enum, `type_number`, and the body's decoder and encoder.
macro_rules! messages {
    (
        decode if ($($dcfg:tt)*); encode if ($($ecfg:tt)*);
        $(#[$meta:meta])*
        pub enum $name:ident $(<$lt:lifetime>)? { $($rows:tt)* }
    ) => {
        messages!(@table [$($lt)?] [$($lt)?] [$($dcfg)*] [$($ecfg)*] $(#[$meta])* $name { $($rows)* });
    };
    (
        @table $side:tt [$($lt:lifetime)?] [$($dcfg:tt)*] [$($ecfg:tt)*] $(#[$meta:meta])* $name:ident {
            $(
                $v:ident = $ty:ident
                $({ $($f:ident: $k:ident),* $(,)? })?
                $(($tf:ident: $tk:ident))?
                $(via $via:ident)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub enum $name $(<$lt>)? {
            $(
                $v $({ $($f: wire_ty!($side $k)),* })? $((wire_ty!($side $tk)))?,
            )*
        }

        impl $(<$lt>)? $name $(<$lt>)? {
            /// The message's type number.
            pub fn type_number(&self) -> u8 {
                match self {
                    $($name::$v { .. } => ty::$ty,)*
                }
            }

            /// Decodes the body of a message of type `t`.
            #[cfg($($dcfg)*)]
            fn decode_body(t: u8, d: &mut Decoder<$($lt)?>) -> Result<Self, WireError> {
                Ok(match t {
                    $(
                        ty::$ty => wire_variant!(
                            decode $side d $name $v [$($via)?]
                            $({ $($f $k),* })? $(($tf $tk))?
                        ),
                    )*
                    other => return Err(WireError::UnknownType(other)),
                })
            }

            /// Encodes the body (everything after the frame header).
            #[cfg($($ecfg)*)]
            fn encode_body(&self, e: &mut Encoder<'_>) {
                match self {
                    $(
                        $name::$v $({ $($f),* })? $(($tf))? => wire_variant!(
                            encode e [$($via)?] $({ $($f $k),* })? $(($tf $tk))?
                        ),
                    )*
                }
            }
        }
    };
}

wire_struct! {
    /// Tsetattr's arguments.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[allow(missing_docs)]
    pub struct SetAttr {
        valid: u32, mode: u32, uid: u32, gid: u32, size: u64,
        atime_sec: u64, atime_nsec: u64, mtime_sec: u64, mtime_nsec: u64,
    }
}

wire_struct! {
    /// Rgetattr's body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[allow(missing_docs)]
    pub struct Attr {
        valid: u64, qid: qid, mode: u32, uid: u32, gid: u32,
        nlink: u64, rdev: u64, size: u64, blksize: u64, blocks: u64,
        atime_sec: u64, atime_nsec: u64, mtime_sec: u64, mtime_nsec: u64,
        ctime_sec: u64, ctime_nsec: u64, btime_sec: u64, btime_nsec: u64,
        gen: u64, data_version: u64,
    }
}

wire_struct! {
    /// Rstatfs's body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[allow(missing_docs)]
    pub struct StatFs {
        ty: u32, bsize: u32, blocks: u64, bfree: u64, bavail: u64,
        files: u64, ffree: u64, fsid: u64, namelen: u32,
    }
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

// Hand-written: one codec for a client id borrowed from the frame (T) or
// owned (R), split after `ty` for Tlock.
impl<S> Lock<S> {
    fn decode<'a>(d: &mut Decoder<'a>) -> Result<Self, WireError>
    where
        S: From<&'a [u8]>,
    {
        let ty = d.u8()?;
        Self::decode_after_ty(ty, d)
    }

    fn decode_after_ty<'a>(ty: u8, d: &mut Decoder<'a>) -> Result<Self, WireError>
    where
        S: From<&'a [u8]>,
    {
        Ok(Lock {
            ty,
            start: d.u64()?,
            length: d.u64()?,
            proc_id: d.u32()?,
            client_id: S::from(d.string()?),
        })
    }

    fn encode(&self, e: &mut Encoder<'_>)
    where
        S: AsRef<[u8]>,
    {
        e.u8(self.ty);
        self.encode_after_ty(e);
    }

    fn encode_after_ty(&self, e: &mut Encoder<'_>)
    where
        S: AsRef<[u8]>,
    {
        e.u64(self.start)
            .u64(self.length)
            .u32(self.proc_id)
            .string(self.client_id.as_ref());
    }
}

/// Tlock's layout, hand-written because its `flags` sit inside the lock:
/// `fid[4] type[1] flags[4] start[8] length[8] proc_id[4] client_id[s]`.
mod tlock {
    #[cfg(feature = "client")]
    use super::Encoder;
    use super::{Decoder, Lock, WireError};

    pub(super) fn decode<'a>(d: &mut Decoder<'a>) -> Result<(u32, u32, Lock<&'a [u8]>), WireError> {
        let fid = d.u32()?;
        let ty = d.u8()?;
        let flags = d.u32()?;
        Ok((fid, flags, Lock::decode_after_ty(ty, d)?))
    }

    #[cfg(feature = "client")]
    pub(super) fn encode(e: &mut Encoder<'_>, fid: &u32, flags: &u32, lock: &Lock<&[u8]>) {
        e.u32(*fid).u8(lock.ty).u32(*flags);
        lock.encode_after_ty(e);
    }
}

/// Twalk's names: `nwname[2]` and at most [`MAXWELEM`] strings.
fn decode_names<'a>(d: &mut Decoder<'a>) -> Result<Vec<&'a [u8]>, WireError> {
    let n = d.u16()?;
    if usize::from(n) > MAXWELEM {
        return Err(WireError::TooManyNames(n));
    }
    (0..n).map(|_| d.string()).collect()
}

#[cfg(feature = "client")]
fn encode_names(e: &mut Encoder<'_>, names: &[&[u8]]) {
    e.u16(names.len() as u16);
    for n in names {
        e.string(n);
    }
}

/// Rwalk's qids: `nwqid[2]` and at most [`MAXWELEM`] qids.
#[cfg(feature = "client")]
fn decode_qids(d: &mut Decoder<'_>) -> Result<Vec<Qid>, WireError> {
    let n = d.u16()?;
    if usize::from(n) > MAXWELEM {
        return Err(WireError::TooManyNames(n));
    }
    (0..n).map(|_| d.qid()).collect()
}

fn encode_qids(e: &mut Encoder<'_>, qids: &[Qid]) {
    e.u16(qids.len() as u16);
    for q in qids {
        e.qid(q);
    }
}

messages! {
    // The server decodes requests; encoding them is the client's half.
    decode if (all()); encode if (feature = "client");
    /// A request from the client. Strings and write data borrow from the frame.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub enum Tmessage<'a> {
        Version = TVERSION { msize: u32, version: string },
        Auth = TAUTH { afid: u32, uname: string, aname: string, n_uname: u32 },
        Attach = TATTACH { fid: u32, afid: u32, uname: string, aname: string, n_uname: u32 },
        Flush = TFLUSH { oldtag: u16 },
        Walk = TWALK { fid: u32, newfid: u32, names: names },
        Read = TREAD { fid: u32, offset: u64, count: u32 },
        Write = TWRITE { fid: u32, offset: u64, data: data },
        Clunk = TCLUNK { fid: u32 },
        Remove = TREMOVE { fid: u32 },
        Statfs = TSTATFS { fid: u32 },
        Lopen = TLOPEN { fid: u32, flags: u32 },
        Lcreate = TLCREATE { fid: u32, name: string, flags: u32, mode: u32, gid: u32 },
        Symlink = TSYMLINK { fid: u32, name: string, target: string, gid: u32 },
        Mknod = TMKNOD { dfid: u32, name: string, mode: u32, major: u32, minor: u32, gid: u32 },
        Rename = TRENAME { fid: u32, dfid: u32, name: string },
        Readlink = TREADLINK { fid: u32 },
        Getattr = TGETATTR { fid: u32, mask: u64 },
        Setattr = TSETATTR { fid: u32, attr: SetAttr },
        XattrWalk = TXATTRWALK { fid: u32, newfid: u32, name: string },
        XattrCreate = TXATTRCREATE { fid: u32, name: string, size: u64, flags: u32 },
        Readdir = TREADDIR { fid: u32, offset: u64, count: u32 },
        // Older clients send no datasync.
        Fsync = TFSYNC { fid: u32, datasync: opt_u32 },
        // The wire order is not the row's: see `tlock`.
        Lock = TLOCK { fid: u32, flags: u32, lock: Lock } via tlock,
        GetLock = TGETLOCK { fid: u32, lock: Lock },
        Link = TLINK { dfid: u32, fid: u32, name: string },
        Mkdir = TMKDIR { dfid: u32, name: string, mode: u32, gid: u32 },
        Renameat = TRENAMEAT {
            olddirfid: u32, oldname: string, newdirfid: u32, newname: string,
        },
        Unlinkat = TUNLINKAT { dirfid: u32, name: string, flags: u32 },
    }
}

messages! {
    // The server encodes replies; decoding them is the client's half.
    decode if (feature = "client"); encode if (all());
    /// A reply from the server.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub enum Rmessage {
        Lerror = RLERROR { ecode: u32 },
        Version = RVERSION { msize: u32, version: string },
        Auth = RAUTH { aqid: qid },
        Attach = RATTACH { qid: qid },
        Flush = RFLUSH,
        Walk = RWALK { qids: qids },
        // The server's replies are built in place (`ReadReply`); this is
        // the same frame, for clients and tests.
        Read = RREAD { data: data },
        Write = RWRITE { count: u32 },
        Clunk = RCLUNK,
        Remove = RREMOVE,
        Statfs = RSTATFS (statfs: StatFs),
        Lopen = RLOPEN { qid: qid, iounit: u32 },
        Lcreate = RLCREATE { qid: qid, iounit: u32 },
        Symlink = RSYMLINK { qid: qid },
        Mknod = RMKNOD { qid: qid },
        Rename = RRENAME,
        Readlink = RREADLINK { target: string },
        Getattr = RGETATTR (attr: Attr),
        Setattr = RSETATTR,
        XattrWalk = RXATTRWALK { size: u64 },
        XattrCreate = RXATTRCREATE,
        // The entries, `qid[13] offset[8] type[1] name[s]` each, are laid
        // out by the server.
        Readdir = RREADDIR { data: data },
        Fsync = RFSYNC,
        Lock = RLOCK { status: u8 },
        GetLock = RGETLOCK (lock: Lock),
        Link = RLINK,
        Mkdir = RMKDIR { qid: qid },
        Renameat = RRENAMEAT,
        Unlinkat = RUNLINKAT,
    }
}

/// The header of `frame` after checking its size field against the frame's
/// length.
fn frame_header(frame: &[u8]) -> Result<FrameHeader, WireError> {
    match FrameHeader::parse(frame) {
        Some(h) if h.size as usize == frame.len() => Ok(h),
        Some(h) => Err(WireError::BadSize { size: h.size }),
        // Shorter than a header: what its size field claims, if it has one.
        None => Err(WireError::BadSize {
            size: Decoder::new(frame).u32()?,
        }),
    }
}

/// Decodes a whole frame with `body`, which decodes the body of a message
/// of the type it is given; nothing may follow the body.
fn decode_frame<'a, M>(
    frame: &'a [u8],
    body: impl FnOnce(u8, &mut Decoder<'a>) -> Result<M, WireError>,
) -> Result<(u16, M), WireError> {
    let h = frame_header(frame)?;
    let mut d = Decoder::new(&frame[FrameHeader::SIZE..]);
    let m = body(h.ty, &mut d)?;
    d.finish()?;
    Ok((h.tag, m))
}

/// Appends a frame of type `ty` for `tag` with the body `body` writes.
fn encode_frame(buf: &mut Vec<u8>, ty: u8, tag: u16, body: impl FnOnce(&mut Encoder<'_>)) {
    let start = buf.len();
    buf.extend_from_slice(&FrameHeader { size: 0, ty, tag }.encode());
    body(&mut Encoder::new(buf));
    let size = (buf.len() - start) as u32;
    FrameHeader { size, ty, tag }.write_to(&mut buf[start..]);
}

/// Decodes a whole T-frame into `(tag, message)`.
pub fn decode_tframe(frame: &[u8]) -> Result<(u16, Tmessage<'_>), WireError> {
    decode_frame(frame, Tmessage::decode_body)
}

/// Decodes a whole R-frame into `(tag, message)` (for clients and tests;
/// the `client` feature).
#[cfg(feature = "client")]
pub fn decode_rframe(frame: &[u8]) -> Result<(u16, Rmessage), WireError> {
    decode_frame(frame, Rmessage::decode_body)
}

#[cfg(feature = "client")]
impl Tmessage<'_> {
    /// Encodes this request as a frame with `tag` (for clients and tests;
    /// the `client` feature).
    pub fn encode(&self, tag: u16) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(&mut buf, self.type_number(), tag, |e| self.encode_body(e));
        buf
    }
}

impl Rmessage {
    /// Encodes this reply as a frame with `tag`.
    pub fn encode(&self, tag: u16) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(tag, &mut buf);
        buf
    }

    /// Appends this reply's frame for `tag` to `buf` (a batch of replies).
    pub fn encode_into(&self, tag: u16, buf: &mut Vec<u8>) {
        encode_frame(buf, self.type_number(), tag, |e| self.encode_body(e));
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
        FrameHeader {
            size,
            ty: ty::RREAD,
            tag,
        }
        .write_to(&mut self.buf);
        self.buf[HEADER_SIZE..RREAD_HEADER].copy_from_slice(&count.to_le_bytes());
        self.buf
    }
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
        let h = FrameHeader::parse(hdr)?;
        // Twrite's count is its data's length field; Tread's, the count.
        let mut d = Decoder::new(&hdr[HEADER_SIZE..]);
        let r = DataRequest {
            read: h.ty == ty::TREAD,
            tag: h.tag,
            fid: d.u32().ok()?,
            offset: d.u64().ok()?,
            count: d.u32().ok()?,
        };
        let size = match h.ty {
            ty::TREAD => TWRITE_HEADER,
            ty::TWRITE => TWRITE_HEADER + r.count as usize,
            _ => return None,
        };
        (h.size as usize == frame_len
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
    let (ty, size, word) = match read {
        _ if res < 0 => (ty::RLERROR, RREAD_HEADER as u32, res.unsigned_abs()),
        true => (ty::RREAD, RREAD_HEADER as u32 + res as u32, res as u32),
        false => (ty::RWRITE, RREAD_HEADER as u32, res as u32),
    };
    let mut h = [0u8; RREAD_HEADER];
    FrameHeader { size, ty, tag }.write_to(&mut h);
    h[HEADER_SIZE..].copy_from_slice(&word.to_le_bytes());
    (h, size)
}
