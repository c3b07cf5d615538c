//! FUSE requests and replies as bytes, for tests that talk to a virtio-fs
//! device from the driver side (in-process or over vhost-user).

/// A FUSE opcode.
#[allow(missing_docs)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const INIT: u32 = 26;
    pub const CREATE: u32 = 35;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// Size of `fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER: usize = 16;

/// A request: `fuse_in_header` (uid = gid = `uid`, pid 1) and `body`.
pub fn request(opcode: u32, unique: u64, nodeid: u64, uid: u32, body: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(IN_HEADER + body.len());
    h.extend_from_slice(&((IN_HEADER + body.len()) as u32).to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&uid.to_le_bytes());
    h.extend_from_slice(&uid.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(body);
    h
}

/// The body of FUSE_INIT for protocol 7.31 (what a 6.1 kernel sends, minus flags).
pub fn init_body() -> Vec<u8> {
    [7u32, 31, 0x20000, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A NUL-terminated name.
pub fn name(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

/// Little-endian u32s, for request bodies.
pub fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Bytes the device reported in the used ring.
    pub used: u32,
    /// The (negative) errno, 0 on success.
    pub error: i32,
    /// What follows the header.
    pub body: Vec<u8>,
}

impl Reply {
    /// Parses `used` bytes of reply buffer.
    pub fn parse(used: u32, out: &[u8]) -> Reply {
        let error = if out.len() >= OUT_HEADER {
            i32::from_le_bytes(out[4..8].try_into().unwrap_or_default())
        } else {
            0
        };
        Reply {
            used,
            error,
            body: out.get(OUT_HEADER..).unwrap_or_default().to_vec(),
        }
    }

    /// The node id of an entry reply.
    ///
    /// # Panics
    /// If the reply is an error or too short (a test failure).
    pub fn nodeid(&self) -> u64 {
        assert_eq!(self.error, 0, "expected success, got errno {}", -self.error);
        u64::from_le_bytes(self.body[0..8].try_into().expect("entry reply"))
    }

    /// The file handle of an open reply.
    ///
    /// # Panics
    /// If the reply is an error or too short (a test failure).
    pub fn fh(&self) -> u64 {
        assert_eq!(self.error, 0, "expected success, got errno {}", -self.error);
        u64::from_le_bytes(self.body[0..8].try_into().expect("open reply"))
    }
}
