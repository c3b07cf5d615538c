//! 9P wire primitives: little-endian integers, strings, qids, data blobs.
//!
//! Decoding never trusts a length: every count is checked against the bytes
//! left in the frame before anything is allocated or sliced, so a hostile
//! frame costs at most its own size.

use std::fmt;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ended before a field did.
    #[error("frame truncated: {needed} more bytes needed at offset {offset}")]
    Truncated {
        /// Where the field started.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// Bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A string contains a NUL byte.
    #[error("string contains NUL")]
    NulInString,
    /// More than 16 names in a walk.
    #[error("walk with {0} names (at most 16)")]
    TooManyNames(u16),
    /// The message type is not a 9P2000.L T-message this server accepts.
    #[error("unknown or unsupported message type {0}")]
    UnknownType(u8),
    /// The size field disagrees with the frame.
    #[error("size field {size} is invalid for this frame")]
    BadSize {
        /// The size the frame claimed.
        size: u32,
    },
}

/// The header every 9P frame starts with: `size[4] type[1] tag[2]`. The
/// one place its layout is written: the codec, the stream and virtio
/// transports, the data paths and the clients all read and write frame
/// headers through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's length, this header included.
    pub size: u32,
    /// The message type (`messages::ty`).
    pub ty: u8,
    /// The tag that pairs a reply with its request.
    pub tag: u16,
}

impl FrameHeader {
    /// Bytes of the header.
    pub const SIZE: usize = 7;

    /// The header at the start of `buf`, as it stands (the size field is not
    /// checked against anything); `None` if `buf` is shorter than a header.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b: &[u8; Self::SIZE] = buf.get(..Self::SIZE)?.try_into().ok()?;
        Some(FrameHeader {
            size: Self::peek_size(b)?,
            ty: b[4],
            tag: u16::from_le_bytes([b[5], b[6]]),
        })
    }

    /// The size field alone, once 4 bytes are in: enough to tell a runt
    /// frame (a size below [`FrameHeader::SIZE`]) or one too large before
    /// the rest of the header has arrived. `None` if `buf` is shorter.
    pub fn peek_size(buf: &[u8]) -> Option<u32> {
        let b: &[u8; 4] = buf.get(..4)?.try_into().ok()?;
        Some(u32::from_le_bytes(*b))
    }

    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        self.write_to(&mut b);
        b
    }

    /// Writes the header over the first [`FrameHeader::SIZE`] bytes of
    /// `buf` (a frame whose header was reserved); panics if `buf` is shorter.
    pub fn write_to(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&self.size.to_le_bytes());
        buf[4] = self.ty;
        buf[5..7].copy_from_slice(&self.tag.to_le_bytes());
    }
}

/// A cursor over one frame's bytes.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// Decodes from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A string: `len[2] bytes[len]`, with no NUL. 9P strings are UTF-8 by
    /// convention, but Linux names are bytes, so bytes are what we keep.
    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u16()? as usize;
        let s = self.take(len)?;
        if s.contains(&0) {
            return Err(WireError::NulInString);
        }
        Ok(s)
    }

    /// A qid.
    pub fn qid(&mut self) -> Result<Qid, WireError> {
        Ok(Qid {
            ty: self.u8()?,
            version: self.u32()?,
            path: self.u64()?,
        })
    }

    /// A data blob: `count[4] bytes[count]`, borrowed from the frame.
    pub fn data(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// Appends wire encodings to a buffer.
pub struct Encoder<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Encoder<'a> {
    /// Encodes onto the end of `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Encoder { buf }
    }

    /// A `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A string; longer than 65535 bytes is cut (callers never produce one:
    /// names are at most 255 bytes and link targets at most PATH_MAX).
    pub fn string(&mut self, s: &[u8]) -> &mut Self {
        let s = &s[..s.len().min(u16::MAX as usize)];
        self.u16(s.len() as u16);
        self.buf.extend_from_slice(s);
        self
    }

    /// A qid.
    pub fn qid(&mut self, q: &Qid) -> &mut Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }

    /// A data blob.
    pub fn data(&mut self, d: &[u8]) -> &mut Self {
        self.u32(d.len() as u32);
        self.buf.extend_from_slice(d);
        self
    }
}

/// `QTDIR`: the qid names a directory.
pub const QTDIR: u8 = 0x80;
/// `QTSYMLINK`: the qid names a symbolic link.
pub const QTSYMLINK: u8 = 0x02;
/// `QTFILE`: any other file.
pub const QTFILE: u8 = 0x00;

/// The server's identity for a file: type, version and a unique path.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Qid {
    /// `QT*` bits.
    pub ty: u8,
    /// Changes when the file changes (0: not tracked).
    pub version: u32,
    /// Unique per file on this server.
    pub path: u64,
}

impl fmt::Debug for Qid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Qid({:#x}, {}, {:#x})", self.ty, self.version, self.path)
    }
}

/// Size of an encoded qid.
pub const QID_SIZE: usize = 13;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_header_parses_what_it_writes() {
        let h = FrameHeader {
            size: 0x0102_0304,
            ty: 117,
            tag: 0xa55a,
        };
        let b = h.encode();
        assert_eq!(b, [0x04, 0x03, 0x02, 0x01, 117, 0x5a, 0xa5]);
        assert_eq!(FrameHeader::parse(&b), Some(h));
        // Only the first seven bytes count; fewer are no header.
        assert_eq!(FrameHeader::parse(&[&b[..], b"body"].concat()), Some(h));
        assert_eq!(FrameHeader::parse(&b[..6]), None);
        let mut frame = vec![0xff; 9];
        h.write_to(&mut frame);
        assert_eq!(frame, [&b[..], &[0xff, 0xff]].concat());
    }
}
