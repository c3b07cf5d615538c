//! FUSE requests and replies as bytes, for tests (and `fsbench`) that talk
//! to a virtio-fs device from the driver side (in-process or over
//! vhost-user): the in header, the argument structs of the requests they
//! send (INIT, READ/WRITE, OPEN/OPENDIR, CREATE, GETATTR, RELEASE, FORGET,
//! READDIR), and parsers for the replies they read (entry, open, init,
//! dirents). Every struct is fuse-backend-rs's `fuse_abi` type, written and
//! read as bytes: no offsets by hand.

/// The FUSE ABI structs (fuse-backend-rs's `fuse_abi`).
pub use fuse_backend_rs::abi::fuse_abi as abi;
use vm_memory::ByteValued;

/// A wire struct's bytes.
fn wire<T: ByteValued>(v: T) -> Vec<u8> {
    v.as_slice().to_vec()
}

/// Reads a wire struct (one of [`abi`]'s) from the start of `b`, if it is
/// long enough. The bytes are copied, so `b` may sit at any alignment.
pub fn parse<T: ByteValued + Default>(b: &[u8]) -> Option<T> {
    let mut v = T::default();
    v.as_mut_slice()
        .copy_from_slice(b.get(..std::mem::size_of::<T>())?);
    Some(v)
}

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
pub const IN_HEADER: usize = std::mem::size_of::<abi::InHeader>();
/// Size of `fuse_out_header`.
pub const OUT_HEADER: usize = std::mem::size_of::<abi::OutHeader>();

/// A request: `fuse_in_header` (uid = gid = `uid`, pid 1) and `body`.
pub fn request(opcode: u32, unique: u64, nodeid: u64, uid: u32, body: &[u8]) -> Vec<u8> {
    let h = abi::InHeader {
        len: (IN_HEADER + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid,
        gid: uid,
        pid: 1,
        padding: 0,
    };
    [h.as_slice(), body].concat()
}

/// A request as a guest kernel that negotiated request extensions sends
/// it: `fuse_in_header` with `uid`, `gid` and `total_extlen` (the
/// length of `ext` in 8-byte units, in what fuse-backend-rs calls
/// `padding`), `body`, then `ext`.
///
/// # Panics
/// If `ext`'s length is not a multiple of 8 (a test bug).
pub fn request_ext(
    opcode: u32,
    unique: u64,
    nodeid: u64,
    (uid, gid): (u32, u32),
    body: &[u8],
    ext: &[u8],
) -> Vec<u8> {
    assert_eq!(ext.len() % 8, 0, "extensions are whole 8-byte units");
    let h = abi::InHeader {
        len: (IN_HEADER + body.len() + ext.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid,
        gid,
        pid: 1,
        padding: (ext.len() / 8) as u32,
    };
    [h.as_slice(), body, ext].concat()
}

/// Extension types and the INIT flags (`flags2`, shifted up by 32) that
/// negotiate them.
#[allow(missing_docs)]
pub mod ext {
    pub const INIT_EXT: u32 = 1 << 30;
    pub const SECURITY_CTX: u64 = 1 << 32;
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    pub const CREATE_SUPP_GROUP: u64 = 1 << 34;
    pub const ALLOW_IDMAP: u64 = 1 << 40;
    /// `FUSE_EXT_GROUPS`.
    pub const GROUPS: u32 = 32;
}

/// Rounds `n` up to a multiple of 8 (`FUSE_REC_ALIGN`).
fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// A security context extension as Linux builds it
/// (`get_security_context`): one context, `name` (without its NUL) set
/// to `value`.
pub fn secctx_ext(name: &[u8], value: &[u8]) -> Vec<u8> {
    let body_len = align8(8 + name.len() + 1 + value.len());
    let mut b = u32s(&[(8 + body_len) as u32, 1, value.len() as u32, 0]);
    b.extend_from_slice(name);
    b.push(0);
    b.extend_from_slice(value);
    b.resize(8 + body_len, 0);
    b
}

/// A supplementary-groups extension as Linux builds it
/// (`get_create_supp_group`, which sends one).
pub fn groups_ext(groups: &[u32]) -> Vec<u8> {
    let len = align8(8 + 4 + 4 * groups.len());
    let mut b = u32s(&[len as u32, ext::GROUPS, groups.len() as u32]);
    b.extend(u32s(groups));
    b.resize(len, 0);
    b
}

/// The body of FUSE_INIT for protocol 7.40 (a 6.12 kernel's) with `flags`
/// and, with FUSE_INIT_EXT, `flags2` (given shifted up by 32, as
/// [`ext`]'s flags are).
pub fn init_body_ext(flags: u32, flags2: u64) -> Vec<u8> {
    let mut b = wire(abi::InitIn {
        major: 7,
        minor: 40,
        max_readahead: 0x20000,
        flags: flags | ext::INIT_EXT,
    });
    b.extend(wire(abi::InitIn2 {
        flags2: (flags2 >> 32) as u32,
        unused: [0; 11],
    }));
    b
}

/// The body of FUSE_INIT for protocol 7.31 (what a 6.1 kernel sends, minus flags).
pub fn init_body() -> Vec<u8> {
    init_body_flags(0)
}

/// The body of FUSE_INIT for protocol 7.31 with `flags` in
/// `fuse_init_in.flags` (for example [`init_flags::MAX_PAGES`], so the device
/// may announce `max_pages` for 1 MiB requests).
pub fn init_body_flags(flags: u32) -> Vec<u8> {
    wire(abi::InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0x20000,
        flags,
    })
}

/// `fuse_read_in`: READ of `size` bytes at `offset` on handle `fh`; the
/// same layout serves READDIR.
pub fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    wire(abi::ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    })
}

/// `fuse_write_in`: WRITE of `size` bytes at `offset` on handle `fh`. The
/// data follows it in the request.
pub fn write_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    wire(abi::WriteIn {
        fh,
        offset,
        size,
        ..Default::default()
    })
}

/// `fuse_open_in`: OPEN or OPENDIR with open(2) `flags`.
pub fn open_in(flags: u32) -> Vec<u8> {
    wire(abi::OpenIn {
        flags,
        ..Default::default()
    })
}

/// `fuse_create_in` (protocol 7.31) and the NUL-terminated `name`: CREATE
/// of `name` with open(2) `flags`, `mode` and `umask`.
pub fn create_in(flags: u32, mode: u32, umask: u32, name_bytes: &[u8]) -> Vec<u8> {
    let c = abi::CreateIn {
        flags,
        mode,
        umask,
        ..Default::default()
    };
    [c.as_slice(), &name(name_bytes)].concat()
}

/// `fuse_getattr_in` without `FUSE_GETATTR_FH`: attributes by node id.
pub fn getattr_in() -> Vec<u8> {
    wire(abi::GetattrIn::default())
}

/// `fuse_release_in`: RELEASE or RELEASEDIR of handle `fh` opened with
/// `flags`.
pub fn release_in(fh: u64, flags: u32) -> Vec<u8> {
    wire(abi::ReleaseIn {
        fh,
        flags,
        ..Default::default()
    })
}

/// `fuse_fsync_in`: FSYNC of `fh`, data only with `datasync`.
pub fn fsync_in(fh: u64, datasync: bool) -> Vec<u8> {
    wire(abi::FsyncIn {
        fh,
        fsync_flags: u32::from(datasync),
        ..Default::default()
    })
}

/// `fuse_forget_in`: FORGET of `nlookup` lookups.
pub fn forget_in(nlookup: u64) -> Vec<u8> {
    wire(abi::ForgetIn { nlookup })
}

/// Size of `fuse_entry_out` (what LOOKUP and CREATE return first).
pub const ENTRY_OUT: usize = std::mem::size_of::<abi::EntryOut>();
/// Size of `fuse_open_out`.
pub const OPEN_OUT: usize = std::mem::size_of::<abi::OpenOut>();
/// Size of `fuse_write_out`.
pub const WRITE_OUT: usize = std::mem::size_of::<abi::WriteOut>();
/// Size of `fuse_attr_out`.
pub const ATTR_OUT: usize = std::mem::size_of::<abi::AttrOut>();

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
    /// `flags2` the device accepted, shifted up by 32 (0 without
    /// FUSE_INIT_EXT in `flags`).
    pub flags2: u64,
}

impl InitOut {
    /// Parses the body of an INIT reply; `None` if it is too short.
    pub fn parse(body: &[u8]) -> Option<InitOut> {
        // A reply up to max_write (an old protocol's) counts; max_pages is
        // then 0, as the rest of the struct.
        const UP_TO_MAX_WRITE: usize = 24;
        if body.len() < UP_TO_MAX_WRITE {
            return None;
        }
        let mut full = [0u8; std::mem::size_of::<abi::InitOut>()];
        let n = body.len().min(full.len());
        full[..n].copy_from_slice(&body[..n]);
        let o: abi::InitOut = parse(&full)?;
        Some(InitOut {
            minor: o.minor,
            flags: o.flags,
            max_write: o.max_write,
            max_pages: o.max_pages,
            flags2: match o.flags & ext::INIT_EXT {
                0 => 0,
                _ => u64::from(o.flags2) << 32,
            },
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
    const HEAD: usize = std::mem::size_of::<abi::Dirent>();
    std::iter::from_fn(move || {
        let d: abi::Dirent = parse(rest)?;
        let namelen = d.namelen as usize;
        let name = rest.get(HEAD..HEAD + namelen)?;
        let padded = (HEAD + namelen + 7) & !7;
        rest = rest.get(padded..).unwrap_or_default();
        Some(Dirent {
            ino: d.ino,
            off: d.off,
            ty: d.type_,
            name,
        })
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
    /// The request it answers (0 if the reply is shorter than its header).
    pub unique: u64,
    /// What follows the header.
    pub body: Vec<u8>,
}

impl Reply {
    /// Parses `used` bytes of reply buffer.
    pub fn parse(used: u32, out: &[u8]) -> Reply {
        let h = parse::<abi::OutHeader>(out).unwrap_or_default();
        Reply {
            used,
            error: h.error,
            unique: h.unique,
            body: out.get(OUT_HEADER..).unwrap_or_default().to_vec(),
        }
    }

    /// The `fuse_entry_out` of a LOOKUP, MKNOD, MKDIR, SYMLINK, LINK or
    /// CREATE reply, if the body holds one.
    pub fn entry(&self) -> Option<abi::EntryOut> {
        parse(&self.body)
    }

    /// The `fuse_open_out` of an OPEN or OPENDIR reply, if the body holds
    /// one.
    pub fn open_out(&self) -> Option<abi::OpenOut> {
        parse(&self.body)
    }

    /// The `fuse_entry_out` and `fuse_open_out` of a CREATE reply, if the
    /// body holds them.
    pub fn created(&self) -> Option<(abi::EntryOut, abi::OpenOut)> {
        Some((parse(&self.body)?, parse(self.body.get(ENTRY_OUT..)?)?))
    }

    /// The node id of an entry reply.
    ///
    /// # Panics
    /// If the reply is an error or too short (a test failure).
    pub fn nodeid(&self) -> u64 {
        assert_eq!(self.error, 0, "expected success, got errno {}", -self.error);
        parse::<abi::EntryOut>(&self.body)
            .expect("entry reply")
            .nodeid
    }

    /// The file handle of an open reply.
    ///
    /// # Panics
    /// If the reply is an error or too short (a test failure).
    pub fn fh(&self) -> u64 {
        assert_eq!(self.error, 0, "expected success, got errno {}", -self.error);
        parse::<abi::OpenOut>(&self.body).expect("open reply").fh
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
    fn replies_parse_at_any_alignment() {
        let mut buf = [0u8; 1 + OUT_HEADER + ENTRY_OUT];
        let h = abi::OutHeader {
            len: (OUT_HEADER + ENTRY_OUT) as u32,
            error: -2,
            unique: 77,
        };
        buf[1..1 + OUT_HEADER].copy_from_slice(h.as_slice());
        buf[1 + OUT_HEADER..1 + OUT_HEADER + 8].copy_from_slice(&5u64.to_le_bytes());
        // An odd offset: a u64-aligned struct read from a misaligned slice.
        let r = Reply::parse(h.len, &buf[1..]);
        assert_eq!((r.error, r.unique), (-2, 77));
        assert_eq!(r.entry().map(|e| e.nodeid), Some(5));
        assert!(parse::<abi::OutHeader>(&buf[1..10]).is_none(), "too short");
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
