//! FUSE requests and replies as bytes, for tests (and `fsbench`) that talk
//! to a virtio-fs device from the driver side (in-process or over
//! vhost-user): the in header, the argument structs of the requests they
//! send (INIT, READ/WRITE, OPEN/OPENDIR, CREATE, GETATTR, RELEASE, FORGET,
//! READDIR), and parsers for the replies they read (entry, open, init,
//! dirents).

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
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// `fuse_init_in.flags` bits (the subset the harness and fsbench ask for).
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const EXPORT_SUPPORT: u32 = 1 << 4;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    /// The driver takes `fuse_init_out.max_pages`: READ and WRITE may then
    /// carry up to `max_pages` pages (256 = 1 MiB) instead of 32.
    pub const MAX_PAGES: u32 = 1 << 22;
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

/// The body of FUSE_INIT for protocol 7.31 with `flags` in
/// `fuse_init_in.flags` (for example [`init_flags::MAX_PAGES`], so the device
/// may announce `max_pages` for 1 MiB requests).
pub fn init_body_flags(flags: u32) -> Vec<u8> {
    u32s(&[7, 31, 0x20000, flags])
}

/// `fuse_read_in` (40 bytes): READ of `size` bytes at `offset` on handle
/// `fh`; the same layout serves READDIR.
pub fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&u32s(&[size, 0])); // size, read_flags
    b.extend_from_slice(&0u64.to_le_bytes()); // lock_owner
    b.extend_from_slice(&u32s(&[0, 0])); // flags, padding
    b
}

/// `fuse_write_in` (40 bytes): WRITE of `size` bytes at `offset` on handle
/// `fh`. The data follows it in the request.
pub fn write_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&u32s(&[size, 0])); // size, write_flags
    b.extend_from_slice(&0u64.to_le_bytes()); // lock_owner
    b.extend_from_slice(&u32s(&[0, 0])); // flags, padding
    b
}

/// `fuse_open_in` (8 bytes): OPEN or OPENDIR with open(2) `flags`.
pub fn open_in(flags: u32) -> Vec<u8> {
    u32s(&[flags, 0])
}

/// `fuse_create_in` (16 bytes, protocol 7.31) and the NUL-terminated `name`:
/// CREATE of `name` with open(2) `flags`, `mode` and `umask`.
pub fn create_in(flags: u32, mode: u32, umask: u32, name_bytes: &[u8]) -> Vec<u8> {
    let mut b = u32s(&[flags, mode, umask, 0]);
    b.extend_from_slice(&name(name_bytes));
    b
}

/// `fuse_getattr_in` (16 bytes) without `FUSE_GETATTR_FH`: attributes by
/// node id.
pub fn getattr_in() -> Vec<u8> {
    vec![0; 16]
}

/// `fuse_release_in` (24 bytes): RELEASE or RELEASEDIR of handle `fh`
/// opened with `flags`.
pub fn release_in(fh: u64, flags: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&u32s(&[flags, 0])); // flags, release_flags
    b.extend_from_slice(&0u64.to_le_bytes()); // lock_owner
    b
}

/// `fuse_fsync_in` (16 bytes): FSYNC of `fh`, data only with `datasync`.
pub fn fsync_in(fh: u64, datasync: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&u32s(&[u32::from(datasync), 0])); // fsync_flags, padding
    b
}

/// `fuse_forget_in` (8 bytes): FORGET of `nlookup` lookups.
pub fn forget_in(nlookup: u64) -> Vec<u8> {
    nlookup.to_le_bytes().to_vec()
}

/// Size of `fuse_entry_out` (what LOOKUP and CREATE return first).
pub const ENTRY_OUT: usize = 128;
/// Size of `fuse_open_out`.
pub const OPEN_OUT: usize = 16;
/// Size of `fuse_write_out`.
pub const WRITE_OUT: usize = 8;
/// Size of `fuse_attr_out`.
pub const ATTR_OUT: usize = 104;

/// The negotiated limits of a `fuse_init_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOut {
    /// Protocol minor version the device speaks.
    pub minor: u32,
    /// `flags` the device accepted.
    pub flags: u32,
    /// Largest WRITE payload.
    pub max_write: u32,
    /// Pages per request (0 when the device did not set it).
    pub max_pages: u16,
}

impl InitOut {
    /// Parses the body of an INIT reply; `None` if it is too short.
    pub fn parse(body: &[u8]) -> Option<InitOut> {
        let u32_at = |at: usize| Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?));
        Some(InitOut {
            minor: u32_at(4)?,
            flags: u32_at(12)?,
            max_write: u32_at(20)?,
            max_pages: body
                .get(28..30)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]])),
        })
    }
}

/// One `fuse_dirent` of a READDIR reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent<'a> {
    /// Inode number.
    pub ino: u64,
    /// The offset of the next entry (what the next READDIR starts at).
    pub off: u64,
    /// `d_type`.
    pub ty: u32,
    /// The name, without padding.
    pub name: &'a [u8],
}

/// The entries of a READDIR reply body (each `fuse_dirent` padded to 8
/// bytes); stops at the first truncated entry.
pub fn dirents(body: &[u8]) -> impl Iterator<Item = Dirent<'_>> + '_ {
    let mut rest = body;
    std::iter::from_fn(move || {
        let u64_at =
            |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().unwrap_or_default());
        if rest.len() < 24 {
            return None;
        }
        let namelen = u32::from_le_bytes(rest[16..20].try_into().unwrap_or_default()) as usize;
        let ty = u32::from_le_bytes(rest[20..24].try_into().unwrap_or_default());
        let name = rest.get(24..24 + namelen)?;
        let d = Dirent {
            ino: u64_at(0),
            off: u64_at(8),
            ty,
            name,
        };
        let padded = (24 + namelen + 7) & !7;
        rest = rest.get(padded..).unwrap_or_default();
        Some(d)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_have_the_kernels_sizes() {
        assert_eq!(init_body_flags(init_flags::MAX_PAGES).len(), 16);
        assert_eq!(read_in(1, 2, 3).len(), 40);
        assert_eq!(write_in(1, 2, 3).len(), 40);
        assert_eq!(open_in(0).len(), 8);
        assert_eq!(create_in(0, 0o644, 0, b"ab").len(), 16 + 3);
        assert_eq!(getattr_in().len(), 16);
        assert_eq!(release_in(9, 0).len(), 24);
        assert_eq!(forget_in(1).len(), 8);
        let r = read_in(7, 4096, 512);
        assert_eq!(u64::from_le_bytes(r[8..16].try_into().unwrap()), 4096);
        assert_eq!(u32::from_le_bytes(r[16..20].try_into().unwrap()), 512);
    }

    #[test]
    fn init_out_and_dirents_parse() {
        let mut body = u32s(&[7, 31, 0x20000, init_flags::MAX_PAGES]);
        body.extend_from_slice(&[0; 4]); // max_background, congestion_threshold
        body.extend_from_slice(&u32s(&[1 << 20, 1])); // max_write, time_gran
        body.extend_from_slice(&256u16.to_le_bytes());
        let init = InitOut::parse(&body).unwrap();
        assert_eq!(
            (init.minor, init.max_write, init.max_pages),
            (31, 1 << 20, 256)
        );
        assert!(InitOut::parse(&body[..10]).is_none());

        let mut dir = Vec::new();
        for (i, n) in [&b"."[..], b"entry-1"].iter().enumerate() {
            dir.extend_from_slice(&(10 + i as u64).to_le_bytes());
            dir.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            dir.extend_from_slice(&u32s(&[n.len() as u32, 4]));
            dir.extend_from_slice(n);
            dir.resize((dir.len() + 7) & !7, 0);
        }
        let got: Vec<_> = dirents(&dir).map(|d| (d.ino, d.off, d.name)).collect();
        assert_eq!(got, vec![(10, 1, &b"."[..]), (11, 2, &b"entry-1"[..])]);
        assert_eq!(
            dirents(&dir[..30]).count(),
            1,
            "a truncated entry ends the walk"
        );
    }
}
