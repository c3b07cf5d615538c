//! Property tests of the namespace and data operations of the core.
//!
//! `trait_operations_match_host_operations`: random sequences of create /
//! write / rename / unlink / link / mkdir / setattr through the `FileSystem`
//! trait give the same results (errno for errno) and the same tree, bytes
//! and modes as the same sequence run directly on a host directory.
//!
//! `operations_*_match_the_model`: random sequences of those operations and
//! of read, rmdir, symlink, readlink and lookup, each made through the trait
//! as one of several users (root and unprivileged ones), give what an
//! in-memory model of a Linux filesystem predicts: the bytes read, the
//! attributes looked up (a symlink's own, never its target's), or the
//! errno. The model keeps every node's type, owner, mode, links, data and
//! symlink target, and refuses with EACCES and EPERM by the rules Linux
//! applies: the owner / group / other class of the permission bits, root's
//! DAC override and CAP_FOWNER, sticky directories and
//! `fs.protected_hardlinks`. After each sequence the host tree (types,
//! modes, owners, link counts, data, targets) must be the model's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use passthrough::io_buf::{SliceReader, VecWriter};
use passthrough::{PassthroughFs, ROOT_ID};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

const DIRS: [&str; 3] = ["", "x", "y"];
const NAMES: [&str; 4] = ["a", "b", "c", "x"];

#[derive(Debug, Clone)]
enum HostOp {
    Create(usize, usize, Vec<u8>),
    Write(usize, usize, u16, Vec<u8>),
    Rename(usize, usize, usize, usize),
    Unlink(usize, usize),
    Link(usize, usize, usize, usize),
    Mkdir(usize, usize),
    Truncate(usize, usize, u16),
    Chmod(usize, usize, u16),
}

fn path(d: usize, n: usize) -> String {
    if DIRS[d].is_empty() {
        NAMES[n].to_string()
    } else {
        format!("{}/{}", DIRS[d], NAMES[n])
    }
}

fn host_op() -> impl Strategy<Value = HostOp> {
    let d = 0..DIRS.len();
    let n = 0..NAMES.len();
    let data = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (d.clone(), n.clone(), data.clone()).prop_map(|(d, n, b)| HostOp::Create(d, n, b)),
        (d.clone(), n.clone(), 0u16..600, data).prop_map(|(d, n, o, b)| HostOp::Write(d, n, o, b)),
        (d.clone(), n.clone(), d.clone(), n.clone())
            .prop_map(|(a, b, c, e)| HostOp::Rename(a, b, c, e)),
        (d.clone(), n.clone()).prop_map(|(d, n)| HostOp::Unlink(d, n)),
        (d.clone(), n.clone(), d.clone(), n.clone())
            .prop_map(|(a, b, c, e)| HostOp::Link(a, b, c, e)),
        (d.clone(), n.clone()).prop_map(|(d, n)| HostOp::Mkdir(d, n)),
        (d.clone(), n.clone(), 0u16..800).prop_map(|(d, n, s)| HostOp::Truncate(d, n, s)),
        (d, n, 0u16..0o1000).prop_map(|(d, n, m)| HostOp::Chmod(d, n, m)),
    ]
}

fn code<T>(r: io::Result<T>) -> Result<(), i32> {
    r.map(drop).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// The parent node id of `DIRS[d]`.
fn dir_node(fs: &PassthroughFs, d: usize) -> io::Result<u64> {
    if DIRS[d].is_empty() {
        Ok(ROOT_ID)
    } else {
        walk(fs, DIRS[d]).map(|e| e.inode)
    }
}

/// Writes `data` at `off` through `handle` as `ctx`, then releases the
/// handle either way. A short write is an error.
fn write_and_release(
    fs: &PassthroughFs,
    ctx: &Context,
    inode: u64,
    handle: u64,
    off: u64,
    data: &[u8],
) -> io::Result<()> {
    let mut r = SliceReader::new(data);
    let res = fs.write(
        ctx,
        inode,
        handle,
        &mut r,
        data.len() as u32,
        off,
        None,
        false,
        0,
        0,
    );
    fs.release(ctx, inode, 0, handle, false, false, None)?;
    match res? {
        n if n == data.len() => Ok(()),
        n => Err(io::Error::other(format!(
            "short write: {n} of {}",
            data.len()
        ))),
    }
}

fn apply_fs(fs: &PassthroughFs, op: &HostOp) -> Result<(), i32> {
    code((|| -> io::Result<()> {
        match op {
            HostOp::Create(d, n, data) => {
                let parent = dir_node(fs, *d)?;
                let args = CreateIn {
                    flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0,
                    fuse_flags: 0,
                };
                let (e, h, _, _) = fs.create(&root(), parent, &cs(NAMES[*n]), args)?;
                let h = h.unwrap();
                write_and_release(fs, &root(), e.inode, h, 0, data)
            }
            HostOp::Write(d, n, off, data) => {
                let e = walk(fs, &path(*d, *n))?;
                let (h, _, _) = fs.open(&root(), e.inode, libc::O_WRONLY as u32, 0)?;
                let h = h.unwrap();
                write_and_release(fs, &root(), e.inode, h, u64::from(*off), data)
            }
            HostOp::Rename(d1, n1, d2, n2) => {
                let p1 = dir_node(fs, *d1)?;
                let p2 = dir_node(fs, *d2)?;
                fs.rename(&root(), p1, &cs(NAMES[*n1]), p2, &cs(NAMES[*n2]), 0)
            }
            HostOp::Unlink(d, n) => fs.unlink(&root(), dir_node(fs, *d)?, &cs(NAMES[*n])),
            HostOp::Link(d1, n1, d2, n2) => {
                let src = walk(fs, &path(*d1, *n1))?;
                fs.link(&root(), src.inode, dir_node(fs, *d2)?, &cs(NAMES[*n2]))
                    .map(drop)
            }
            HostOp::Mkdir(d, n) => fs
                .mkdir(&root(), dir_node(fs, *d)?, &cs(NAMES[*n]), 0o755, 0)
                .map(drop),
            HostOp::Truncate(d, n, size) => {
                let e = walk(fs, &path(*d, *n))?;
                let mut attr: stat64 = e.attr;
                attr.st_size = i64::from(*size);
                fs.setattr(&root(), e.inode, attr, None, SetattrValid::SIZE)
                    .map(drop)
            }
            HostOp::Chmod(d, n, mode) => {
                let e = walk(fs, &path(*d, *n))?;
                let mut attr: stat64 = e.attr;
                attr.st_mode = u32::from(*mode);
                fs.setattr(&root(), e.inode, attr, None, SetattrValid::MODE)
                    .map(drop)
            }
        }
    })())
}

fn apply_host(root_dir: &Path, op: &HostOp) -> Result<(), i32> {
    let p = |d: usize, n: usize| root_dir.join(path(d, n));
    code(match op {
        HostOp::Create(d, n, data) => fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode_644()
            .open(p(*d, *n))
            .and_then(|f| f.write_all_at(data, 0)),
        HostOp::Write(d, n, off, data) => fs::OpenOptions::new()
            .write(true)
            .open(p(*d, *n))
            .and_then(|f| f.write_all_at(data, u64::from(*off))),
        HostOp::Rename(d1, n1, d2, n2) => fs::rename(p(*d1, *n1), p(*d2, *n2)),
        HostOp::Unlink(d, n) => fs::remove_file(p(*d, *n)),
        HostOp::Link(d1, n1, d2, n2) => fs::hard_link(p(*d1, *n1), p(*d2, *n2)),
        HostOp::Mkdir(d, n) => mkdir_755(&p(*d, *n)),
        HostOp::Truncate(d, n, size) => fs::OpenOptions::new()
            .write(true)
            .open(p(*d, *n))
            .and_then(|f| f.set_len(u64::from(*size))),
        HostOp::Chmod(d, n, mode) => fs::symlink_metadata(p(*d, *n)).and_then(|_| {
            fs::set_permissions(p(*d, *n), fs::Permissions::from_mode(u32::from(*mode)))
        }),
    })
}

fn mkdir_755(p: &Path) -> io::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o755).create(p)
}

trait Mode644 {
    fn mode_644(&mut self) -> &mut Self;
}

impl Mode644 for fs::OpenOptions {
    fn mode_644(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o644)
    }
}

/// One entry of a tree: directories have no link count, size or data here
/// (a directory's link count is the host filesystem's business).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    /// Type and permission bits.
    mode: Mode,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    /// A regular file's contents or a symlink's target.
    data: Bytes,
}

/// Data, shown as a byte string.
#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn egid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

/// Every entry below `root`, by path. A process that is not root gives
/// itself (the owner of everything there) the access it needs to read the
/// tree after recording each entry's mode.
fn snapshot(root: &Path) -> BTreeMap<String, Snap> {
    let as_owner = euid() != 0;
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{}{}", rel, entry.file_name().to_str().unwrap());
            let md = fs::symlink_metadata(entry.path()).unwrap();
            let need = if md.is_dir() { 0o700 } else { 0o400 };
            if as_owner && !md.is_symlink() && md.mode() & need != need {
                let mode = fs::Permissions::from_mode(md.mode() & 0o7777 | need);
                fs::set_permissions(entry.path(), mode).unwrap();
            }
            let data = if md.is_file() {
                fs::read(entry.path()).unwrap()
            } else if md.is_symlink() {
                fs::read_link(entry.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if md.is_dir() {
                stack.push(format!("{name}/"));
            }
            let (nlink, size) = match md.is_dir() {
                true => (0, 0),
                false => (md.nlink(), md.size()),
            };
            out.insert(
                name,
                Snap {
                    mode: Mode(md.mode()),
                    uid: md.uid(),
                    gid: md.gid(),
                    nlink,
                    size,
                    data: Bytes(data),
                },
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn trait_operations_match_host_operations(ops in proptest::collection::vec(host_op(), 1..40)) {
        let (dir_fs, fs) = new_fs();
        let dir_host = tempfile::tempdir().unwrap();
        for d in ["x", "y"] {
            fs.mkdir(&root(), ROOT_ID, &cs(d), 0o755, 0).unwrap();
            mkdir_755(&dir_host.path().join(d)).unwrap();
        }
        for (i, op) in ops.iter().enumerate() {
            let a = apply_fs(&fs, op);
            let b = apply_host(dir_host.path(), op);
            prop_assert_eq!(a, b, "op {} {:?} gave different results", i, op);
        }
        prop_assert_eq!(snapshot(dir_fs.path()), snapshot(dir_host.path()));
    }
}

// ---------------------------------------------------------------------------
// The model.

/// Where the model test's operations happen: `l` starts as a symlink to
/// `x`, so a path through it must stop at it (ENOTDIR).
fn model_dir() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just(""), 3 => Just("x"), 3 => Just("y"), 1 => Just("l")]
}

/// The names of the model test: `x`, `y` and `l` in the root are the
/// directories above.
fn model_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just("a"), 3 => Just("b"), 2 => Just("x"), 1 => Just("y"), 1 => Just("l")]
}

const FILE_MODES: [u32; 6] = [0o644, 0o600, 0o755, 0o666, 0o640, 0o660];
const DIR_MODES: [u32; 5] = [0o755, 0o700, 0o777, 0o1777, 0o770];
const CHMOD_MODES: [u32; 9] = [
    0o644, 0o600, 0o755, 0o700, 0o777, 0o1777, 0o666, 0o500, 0o000,
];
/// Symlink targets: never resolved by the core, so loops and absolute
/// paths are as good as any.
const TARGETS: [&str; 5] = ["x", "a", "../y", "/etc", "l"];

/// The users of the multi-user test: root, two users with groups of their
/// own, and a third in the first one's group (for the group class of the
/// permission bits).
const USERS: [User; 4] = [
    User { uid: 0, gid: 0 },
    User {
        uid: 1001,
        gid: 1001,
    },
    User {
        uid: 1002,
        gid: 1002,
    },
    User {
        uid: 1003,
        gid: 1001,
    },
];

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

/// A requester.
#[derive(Clone, Copy, PartialEq, Eq)]
struct User {
    uid: u32,
    gid: u32,
}

impl User {
    fn ctx(self) -> Context {
        ctx(self.uid, self.gid)
    }

    /// Root has every capability (DAC override, CAP_FOWNER).
    fn is_root(self) -> bool {
        self.uid == 0
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// A name in one of the model test's directories.
#[derive(Clone, Copy)]
struct At {
    dir: &'static str,
    name: &'static str,
}

impl At {
    fn path(self) -> String {
        match self.dir {
            "" => self.name.to_string(),
            dir => format!("{dir}/{}", self.name),
        }
    }
}

impl fmt::Debug for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.path())
    }
}

/// Permission bits, shown in octal.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode(u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#o}", self.0)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// CREATE with O_EXCL, then a write of the data.
    Create(User, At, Mode, Bytes),
    /// OPEN for writing, WRITE at an offset.
    Write(User, At, u64, Bytes),
    /// OPEN for reading, READ of a length at an offset.
    Read(User, At, u64, u32),
    /// SETATTR of the size.
    Truncate(User, At, u64),
    /// SETATTR of the mode; not tried on a symlink, whose mode Linux
    /// refuses to change since 6.6 (EOPNOTSUPP) and before that left to the
    /// filesystem.
    Chmod(User, At, Mode),
    Mkdir(User, At, Mode),
    Rmdir(User, At),
    Unlink(User, At),
    Rename(User, At, At),
    Link(User, At, At),
    Symlink(User, At, &'static str),
    Readlink(User, At),
    /// LOOKUP of every component, then the attributes of the last.
    Lookup(User, At),
}

fn model_op(users: Vec<User>) -> impl Strategy<Value = Op> {
    let who = select(users);
    let at = || (model_dir(), model_name()).prop_map(|(dir, name)| At { dir, name });
    let data = || proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes);
    let chmod = prop_oneof![select(&CHMOD_MODES[..]), 0u32..0o2000];
    // Offsets mostly within the data (up to 300 bytes), sometimes past it.
    let offset = || prop_oneof![Just(0u64), 0u64..320];
    prop_oneof![
        5 => (who.clone(), at(), select(&FILE_MODES[..]), data())
            .prop_map(|(u, a, m, d)| Op::Create(u, a, Mode(m), d)),
        3 => (who.clone(), at(), offset(), data()).prop_map(|(u, a, o, d)| Op::Write(u, a, o, d)),
        5 => (who.clone(), at(), offset(), 0u32..400)
            .prop_map(|(u, a, o, l)| Op::Read(u, a, o, l)),
        2 => (who.clone(), at(), 0u64..400).prop_map(|(u, a, s)| Op::Truncate(u, a, s)),
        3 => (who.clone(), at(), chmod).prop_map(|(u, a, m)| Op::Chmod(u, a, Mode(m))),
        3 => (who.clone(), at(), select(&DIR_MODES[..]))
            .prop_map(|(u, a, m)| Op::Mkdir(u, a, Mode(m))),
        3 => (who.clone(), at()).prop_map(|(u, a)| Op::Rmdir(u, a)),
        2 => (who.clone(), at()).prop_map(|(u, a)| Op::Unlink(u, a)),
        3 => (who.clone(), at(), at()).prop_map(|(u, a, b)| Op::Rename(u, a, b)),
        3 => (who.clone(), at(), at()).prop_map(|(u, a, b)| Op::Link(u, a, b)),
        2 => (who.clone(), at(), select(&TARGETS[..]))
            .prop_map(|(u, a, t)| Op::Symlink(u, a, t)),
        2 => (who.clone(), at()).prop_map(|(u, a)| Op::Readlink(u, a)),
        4 => (who, at()).prop_map(|(u, a)| Op::Lookup(u, a)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    File,
    Dir,
    Symlink,
    Other(u32),
}

/// The attributes a lookup gives; a directory's link count and size are
/// the host filesystem's business.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attr {
    kind: Type,
    mode: Mode,
    uid: u32,
    gid: u32,
    nlink: Option<u64>,
    size: Option<u64>,
}

/// What an operation gives back when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Done,
    /// Read data or a symlink's target.
    Data(Bytes),
    Attr(Attr),
    /// Chmod of a symlink, not tried.
    NotTried,
}

type Outcome = Result<Out, i32>;

// ---------------------------------------------------------------------------
// The operations through the core.

/// Looks up `path` one component at a time as `who`.
fn walk_as(fs: &PassthroughFs, who: User, path: &str) -> io::Result<Entry> {
    let mut cur = ROOT_ID;
    let mut last = None;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let e = fs.lookup(&who.ctx(), cur, &cs(comp))?;
        cur = e.inode;
        last = Some(e);
    }
    last.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The node id of the directory `dir` (which may be no directory), as `who`.
fn dir_as(fs: &PassthroughFs, who: User, dir: &str) -> io::Result<u64> {
    match dir {
        "" => Ok(ROOT_ID),
        dir => walk_as(fs, who, dir).map(|e| e.inode),
    }
}

fn attr_of(st: &stat64) -> Attr {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Type::File,
        libc::S_IFDIR => Type::Dir,
        libc::S_IFLNK => Type::Symlink,
        other => Type::Other(other),
    };
    let not_dir = kind != Type::Dir;
    Attr {
        kind,
        mode: Mode(st.st_mode & 0o7777),
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: not_dir.then_some(st.st_nlink),
        size: not_dir.then_some(st.st_size as u64),
    }
}

fn core_apply(fs: &PassthroughFs, op: &Op) -> Outcome {
    let res = (|| -> io::Result<Out> {
        match op {
            Op::Create(who, at, mode, data) => {
                let c = who.ctx();
                let parent = dir_as(fs, *who, at.dir)?;
                let args = CreateIn {
                    flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | mode.0,
                    umask: 0,
                    fuse_flags: 0,
                };
                let (e, h, _, _) = fs.create(&c, parent, &cs(at.name), args)?;
                let h = h.expect("create opens a handle");
                write_and_release(fs, &c, e.inode, h, 0, &data.0)?;
            }
            Op::Write(who, at, off, data) => {
                let c = who.ctx();
                let e = walk_as(fs, *who, &at.path())?;
                let (h, _, _) = fs.open(&c, e.inode, libc::O_WRONLY as u32, 0)?;
                let h = h.expect("open gives a handle");
                write_and_release(fs, &c, e.inode, h, *off, &data.0)?;
            }
            Op::Read(who, at, off, len) => {
                let c = who.ctx();
                let e = walk_as(fs, *who, &at.path())?;
                let (h, _, _) = fs.open(&c, e.inode, libc::O_RDONLY as u32, 0)?;
                let h = h.expect("open gives a handle");
                let mut buf = Vec::new();
                let mut w = VecWriter::new(&mut buf);
                let res = fs.read(&c, e.inode, h, &mut w, *len, *off, None, 0);
                fs.release(&c, e.inode, 0, h, false, false, None)?;
                res?;
                return Ok(Out::Data(Bytes(buf)));
            }
            Op::Truncate(who, at, size) => {
                let e = walk_as(fs, *who, &at.path())?;
                let mut attr: stat64 = e.attr;
                attr.st_size = *size as i64;
                fs.setattr(&who.ctx(), e.inode, attr, None, SetattrValid::SIZE)?;
            }
            Op::Chmod(who, at, mode) => {
                let e = walk_as(fs, *who, &at.path())?;
                if e.attr.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Ok(Out::NotTried);
                }
                let mut attr: stat64 = e.attr;
                attr.st_mode = mode.0;
                fs.setattr(&who.ctx(), e.inode, attr, None, SetattrValid::MODE)?;
            }
            Op::Mkdir(who, at, mode) => {
                let parent = dir_as(fs, *who, at.dir)?;
                fs.mkdir(&who.ctx(), parent, &cs(at.name), mode.0, 0)?;
            }
            Op::Rmdir(who, at) => {
                let parent = dir_as(fs, *who, at.dir)?;
                fs.rmdir(&who.ctx(), parent, &cs(at.name))?;
            }
            Op::Unlink(who, at) => {
                let parent = dir_as(fs, *who, at.dir)?;
                fs.unlink(&who.ctx(), parent, &cs(at.name))?;
            }
            Op::Rename(who, from, to) => {
                let p1 = dir_as(fs, *who, from.dir)?;
                let p2 = dir_as(fs, *who, to.dir)?;
                fs.rename(&who.ctx(), p1, &cs(from.name), p2, &cs(to.name), 0)?;
            }
            Op::Link(who, from, to) => {
                let src = walk_as(fs, *who, &from.path())?;
                let parent = dir_as(fs, *who, to.dir)?;
                fs.link(&who.ctx(), src.inode, parent, &cs(to.name))?;
            }
            Op::Symlink(who, at, target) => {
                let parent = dir_as(fs, *who, at.dir)?;
                fs.symlink(&who.ctx(), &cs(target), parent, &cs(at.name))?;
            }
            Op::Readlink(who, at) => {
                let e = walk_as(fs, *who, &at.path())?;
                return fs
                    .readlink(&who.ctx(), e.inode)
                    .map(|t| Out::Data(Bytes(t)));
            }
            Op::Lookup(who, at) => {
                let e = walk_as(fs, *who, &at.path())?;
                return Ok(Out::Attr(attr_of(&e.attr)));
            }
        }
        Ok(Out::Done)
    })();
    res.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

// ---------------------------------------------------------------------------
// The same operations on the model.

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir(BTreeMap<&'static str, usize>),
    Symlink(&'static str),
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    uid: u32,
    gid: u32,
    /// Permission bits (with the sticky bit).
    mode: u32,
    /// A directory's parent (the root is its own).
    parent: usize,
}

impl Node {
    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }
}

/// The nodes of a tree; nodes no entry names any more stay, unreachable.
struct Model {
    nodes: Vec<Node>,
    /// The supplementary groups every requester keeps (the process's:
    /// switching credentials changes only the uid and gid).
    groups: Vec<u32>,
    /// `fs.protected_hardlinks`.
    protected_hardlinks: bool,
}

const ROOT: usize = 0;

fn err<T>(errno: i32) -> Result<T, i32> {
    Err(errno)
}

impl Model {
    fn new(root: Node) -> Model {
        // SAFETY: a zero-length query writes nothing and returns the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut groups = vec![0; n.max(0) as usize];
        // SAFETY: `groups` has room for `n` entries.
        let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
        groups.truncate(n.max(0) as usize);
        let protected_hardlinks = fs::read_to_string("/proc/sys/fs/protected_hardlinks")
            .map(|s| s.trim() != "0")
            .unwrap_or(true);
        Model {
            nodes: vec![root],
            groups,
            protected_hardlinks,
        }
    }

    fn entries(&self, dir: usize) -> &BTreeMap<&'static str, usize> {
        match &self.nodes[dir].kind {
            Kind::Dir(entries) => entries,
            _ => unreachable!("node {dir} is no directory"),
        }
    }

    fn entries_mut(&mut self, dir: usize) -> &mut BTreeMap<&'static str, usize> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(entries) => entries,
            _ => unreachable!("node {dir} is no directory"),
        }
    }

    fn child(&self, dir: usize, name: &str) -> Option<usize> {
        self.entries(dir).get(name).copied()
    }

    /// `generic_permission`: the class of the permission bits that applies
    /// to `who` must grant all of `mask`; root may do anything but execute
    /// a file no one may execute.
    fn may(&self, who: User, ino: usize, mask: u32) -> bool {
        let n = &self.nodes[ino];
        if who.is_root() {
            return mask & X == 0 || n.is_dir() || n.mode & 0o111 != 0;
        }
        let class = if who.uid == n.uid {
            n.mode >> 6
        } else if who.gid == n.gid || self.groups.contains(&n.gid) {
            n.mode >> 3
        } else {
            n.mode
        };
        class & mask == mask
    }

    /// `inode_owner_or_capable`.
    fn owns(&self, who: User, ino: usize) -> bool {
        who.is_root() || who.uid == self.nodes[ino].uid
    }

    /// Resolves `path` as `who`, never following a symlink: each component
    /// needs a directory that `who` may search.
    fn resolve(&self, who: User, path: &str) -> Result<usize, i32> {
        let mut cur = ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if !self.nodes[cur].is_dir() {
                return err(libc::ENOTDIR);
            }
            if !self.may(who, cur, X) {
                return err(libc::EACCES);
            }
            cur = self.child(cur, comp).ok_or(libc::ENOENT)?;
        }
        Ok(cur)
    }

    /// A system call's walk to the last component in `dir` (the node a
    /// request names): `dir` must be a directory `who` may search.
    fn parent_ok(&self, who: User, dir: usize) -> Result<(), i32> {
        if !self.nodes[dir].is_dir() {
            err(libc::ENOTDIR)
        } else if !self.may(who, dir, X) {
            err(libc::EACCES)
        } else {
            Ok(())
        }
    }

    /// `may_create` once the name is known to be free.
    fn may_create(&self, who: User, dir: usize) -> Result<(), i32> {
        match self.may(who, dir, W | X) {
            true => Ok(()),
            false => err(libc::EACCES),
        }
    }

    /// `may_delete` of `victim` from `dir`, to remove (or replace) a
    /// directory if `is_dir`, else anything else.
    fn may_delete(&self, who: User, dir: usize, victim: usize, is_dir: bool) -> Result<(), i32> {
        self.may_create(who, dir)?;
        let (d, v) = (&self.nodes[dir], &self.nodes[victim]);
        let sticky = d.mode & libc::S_ISVTX != 0;
        if sticky && who.uid != v.uid && who.uid != d.uid && !who.is_root() {
            return err(libc::EPERM);
        }
        match (is_dir, v.is_dir()) {
            (true, false) => err(libc::ENOTDIR),
            (false, true) => err(libc::EISDIR),
            _ => Ok(()),
        }
    }

    /// `may_linkat`: with `fs.protected_hardlinks`, who does not own the
    /// source may link only a regular, non-set-id file they may read and
    /// write.
    fn may_link(&self, who: User, src: usize) -> Result<(), i32> {
        let n = &self.nodes[src];
        let safe_source = matches!(n.kind, Kind::File(_))
            && n.mode & libc::S_ISUID == 0
            && n.mode & (libc::S_ISGID | 0o010) != (libc::S_ISGID | 0o010)
            && self.may(who, src, R | W);
        if !self.protected_hardlinks || safe_source || self.owns(who, src) {
            Ok(())
        } else {
            err(libc::EPERM)
        }
    }

    /// A free name in `dir` that `who` may create: for create, mkdir,
    /// symlink and the checks before linking.
    fn free_name(&self, who: User, dir: usize, name: &str) -> Result<(), i32> {
        self.parent_ok(who, dir)?;
        if self.child(dir, name).is_some() {
            return err(libc::EEXIST);
        }
        Ok(())
    }

    fn add(&mut self, who: User, dir: usize, name: &'static str, kind: Kind, mode: u32) {
        let ino = self.nodes.len();
        self.nodes.push(Node {
            kind,
            uid: who.uid,
            gid: who.gid,
            mode,
            parent: dir,
        });
        self.entries_mut(dir).insert(name, ino);
    }

    /// The number of names `ino` has.
    fn nlink(&self, ino: usize) -> u64 {
        let names = self.nodes.iter().filter_map(|n| match &n.kind {
            Kind::Dir(entries) => Some(entries.values().filter(|&&i| i == ino).count() as u64),
            _ => None,
        });
        names.sum()
    }

    fn attr(&self, ino: usize) -> Attr {
        let n = &self.nodes[ino];
        let (kind, size) = match &n.kind {
            Kind::File(data) => (Type::File, Some(data.len() as u64)),
            Kind::Dir(_) => (Type::Dir, None),
            Kind::Symlink(target) => (Type::Symlink, Some(target.len() as u64)),
        };
        Attr {
            kind,
            mode: Mode(n.mode),
            uid: n.uid,
            gid: n.gid,
            nlink: (kind != Type::Dir).then(|| self.nlink(ino)),
            size,
        }
    }

    /// `lock_rename`'s trap: when one parent is an ancestor of the other,
    /// its child on the way down to the other.
    fn rename_trap(&self, old_dir: usize, new_dir: usize) -> Option<usize> {
        let below = |top: usize, mut cur: usize| {
            while cur != ROOT {
                let up = self.nodes[cur].parent;
                if up == top {
                    return Some(cur);
                }
                cur = up;
            }
            None
        };
        match old_dir == new_dir {
            true => None,
            false => below(old_dir, new_dir).or_else(|| below(new_dir, old_dir)),
        }
    }

    /// The file a data operation opens: never a symlink (the core does not
    /// open one: ELOOP), a directory not for writing (EISDIR), else with the
    /// permission `mask`.
    fn open(&self, who: User, at: At, mask: u32) -> Result<usize, i32> {
        let ino = self.resolve(who, &at.path())?;
        match &self.nodes[ino].kind {
            Kind::Symlink(_) => err(libc::ELOOP),
            Kind::Dir(_) if mask & W != 0 => err(libc::EISDIR),
            _ if !self.may(who, ino, mask) => err(libc::EACCES),
            _ => Ok(ino),
        }
    }

    fn data_mut(&mut self, ino: usize) -> &mut Vec<u8> {
        match &mut self.nodes[ino].kind {
            Kind::File(data) => data,
            _ => unreachable!("node {ino} is no regular file"),
        }
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Create(who, at, mode, data) => {
                let dir = self.resolve(*who, at.dir)?;
                self.free_name(*who, dir, at.name)?;
                self.may_create(*who, dir)?;
                self.add(*who, dir, at.name, Kind::File(data.0.clone()), mode.0);
            }
            Op::Write(who, at, off, data) => {
                let ino = self.open(*who, *at, W)?;
                if !data.0.is_empty() {
                    let file = self.data_mut(ino);
                    let end = *off as usize + data.0.len();
                    if file.len() < end {
                        file.resize(end, 0);
                    }
                    file[*off as usize..end].copy_from_slice(&data.0);
                }
            }
            Op::Read(who, at, off, len) => {
                let ino = self.open(*who, *at, R)?;
                let Kind::File(data) = &self.nodes[ino].kind else {
                    return err(libc::EISDIR);
                };
                let start = (*off as usize).min(data.len());
                let end = (start + *len as usize).min(data.len());
                return Ok(Out::Data(Bytes(data[start..end].to_vec())));
            }
            Op::Truncate(who, at, size) => {
                let ino = self.open(*who, *at, W)?;
                self.data_mut(ino).resize(*size as usize, 0);
            }
            Op::Chmod(who, at, mode) => {
                let ino = self.resolve(*who, &at.path())?;
                if matches!(self.nodes[ino].kind, Kind::Symlink(_)) {
                    return Ok(Out::NotTried);
                }
                if !self.owns(*who, ino) {
                    return err(libc::EPERM);
                }
                // No set-group-ID bit to drop: modes stay below 0o2000.
                self.nodes[ino].mode = mode.0;
            }
            Op::Mkdir(who, at, mode) => {
                let dir = self.resolve(*who, at.dir)?;
                self.free_name(*who, dir, at.name)?;
                self.may_create(*who, dir)?;
                let kind = Kind::Dir(BTreeMap::new());
                self.add(*who, dir, at.name, kind, mode.0 & 0o1777);
            }
            Op::Rmdir(who, at) | Op::Unlink(who, at) => {
                let is_dir = matches!(op, Op::Rmdir(..));
                let dir = self.resolve(*who, at.dir)?;
                self.parent_ok(*who, dir)?;
                let victim = self.child(dir, at.name).ok_or(libc::ENOENT)?;
                self.may_delete(*who, dir, victim, is_dir)?;
                if is_dir && !self.entries(victim).is_empty() {
                    return err(libc::ENOTEMPTY);
                }
                self.entries_mut(dir).remove(at.name);
            }
            Op::Rename(who, from, to) => return self.rename(*who, *from, *to),
            Op::Link(who, from, to) => {
                let src = self.resolve(*who, &from.path())?;
                let dir = self.resolve(*who, to.dir)?;
                self.free_name(*who, dir, to.name)?;
                self.may_link(*who, src)?;
                self.may_create(*who, dir)?;
                if self.nodes[src].is_dir() {
                    return err(libc::EPERM);
                }
                self.entries_mut(dir).insert(to.name, src);
            }
            Op::Symlink(who, at, target) => {
                let dir = self.resolve(*who, at.dir)?;
                self.free_name(*who, dir, at.name)?;
                self.may_create(*who, dir)?;
                self.add(*who, dir, at.name, Kind::Symlink(target), 0o777);
            }
            Op::Readlink(who, at) => {
                let ino = self.resolve(*who, &at.path())?;
                return match &self.nodes[ino].kind {
                    Kind::Symlink(target) => Ok(Out::Data(Bytes(target.as_bytes().to_vec()))),
                    _ => err(libc::EINVAL),
                };
            }
            Op::Lookup(who, at) => {
                let ino = self.resolve(*who, &at.path())?;
                return Ok(Out::Attr(self.attr(ino)));
            }
        }
        Ok(Out::Done)
    }

    /// `renameat2` without flags, in the order Linux checks.
    fn rename(&mut self, who: User, from: At, to: At) -> Outcome {
        let old_dir = self.resolve(who, from.dir)?;
        let new_dir = self.resolve(who, to.dir)?;
        self.parent_ok(who, old_dir)?;
        self.parent_ok(who, new_dir)?;
        let src = self.child(old_dir, from.name).ok_or(libc::ENOENT)?;
        let target = self.child(new_dir, to.name);
        if let Some(trap) = self.rename_trap(old_dir, new_dir) {
            // Into its own subtree; over an ancestor of itself.
            if src == trap {
                return err(libc::EINVAL);
            }
            if target == Some(trap) {
                return err(libc::ENOTEMPTY);
            }
        }
        if target == Some(src) {
            // Two names of one file (or one name twice): nothing to do.
            return Ok(Out::Done);
        }
        let is_dir = self.nodes[src].is_dir();
        self.may_delete(who, old_dir, src, is_dir)?;
        match target {
            None => self.may_create(who, new_dir)?,
            Some(t) => self.may_delete(who, new_dir, t, is_dir)?,
        }
        if is_dir && old_dir != new_dir && !self.may(who, src, W) {
            // Its ".." changes.
            return err(libc::EACCES);
        }
        if let Some(t) = target.filter(|&t| self.nodes[t].is_dir()) {
            if !self.entries(t).is_empty() {
                return err(libc::ENOTEMPTY);
            }
        }
        self.entries_mut(old_dir).remove(from.name);
        self.entries_mut(new_dir).insert(to.name, src);
        if is_dir {
            self.nodes[src].parent = new_dir;
        }
        Ok(Out::Done)
    }

    /// The tree as [`snapshot`] sees it on the host.
    fn tree(&self) -> BTreeMap<String, Snap> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(String::new(), ROOT)];
        while let Some((rel, dir)) = stack.pop() {
            for (name, &ino) in self.entries(dir) {
                let path = format!("{rel}{name}");
                let n = &self.nodes[ino];
                let (kind, nlink, size, data) = match &n.kind {
                    Kind::File(data) => (libc::S_IFREG, self.nlink(ino), data.len(), data.clone()),
                    Kind::Dir(_) => {
                        stack.push((format!("{path}/"), ino));
                        (libc::S_IFDIR, 0, 0, Vec::new())
                    }
                    Kind::Symlink(target) => {
                        let target = target.as_bytes().to_vec();
                        (libc::S_IFLNK, self.nlink(ino), target.len(), target)
                    }
                };
                let snap = Snap {
                    mode: Mode(kind | n.mode),
                    uid: n.uid,
                    gid: n.gid,
                    nlink,
                    size: size as u64,
                    data: Bytes(data),
                };
                out.insert(path, snap);
            }
        }
        out
    }
}

/// The entries where two trees differ.
fn tree_diff(host: &BTreeMap<String, Snap>, model: &BTreeMap<String, Snap>) -> String {
    let names: BTreeSet<_> = host.keys().chain(model.keys()).collect();
    let mut out = String::new();
    for name in names {
        let (h, m) = (host.get(name), model.get(name));
        if h != m {
            out += &format!(
                "\n  {name}: host {h:?}\n  {:>w$}  model {m:?}",
                "",
                w = name.len()
            );
        }
    }
    out
}

/// Runs `ops` through a fresh core and the model, wanting the same outcome
/// for each and then the same tree. The share's root is mode 0777 and
/// starts with `x`, a 0755 directory of the second user, `y`, a sticky
/// 01777 one of the first, `l`, a symlink of the third to `x`, and files of
/// each user with modes 0644, 0600, 0666 and 0660.
fn check_against_model(users: &[User], ops: &[Op]) -> Result<(), TestCaseError> {
    let (dir, fs) = new_fs();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let md = fs::metadata(dir.path()).unwrap();
    prop_assert_eq!(md.mode() & 0o7777, 0o777, "no set-group-ID bit on the root");
    let mut model = Model::new(Node {
        kind: Kind::Dir(BTreeMap::new()),
        uid: md.uid(),
        gid: md.gid(),
        mode: 0o777,
        parent: ROOT,
    });
    let user = |i: usize| users[i % users.len()];
    let at = |dir, name| At { dir, name };
    let file = |i: usize, dir, name, mode| {
        let who = user(i);
        let data = format!("{name} of {who:?}\n").repeat(i * 10 + 5);
        Op::Create(who, at(dir, name), Mode(mode), Bytes(data.into_bytes()))
    };
    let setup = [
        Op::Mkdir(user(1), at("", "x"), Mode(0o755)),
        Op::Mkdir(user(0), at("", "y"), Mode(0o1777)),
        Op::Symlink(user(2), at("", "l"), "x"),
        file(0, "", "a", 0o644),
        file(1, "x", "a", 0o600),
        file(0, "x", "b", 0o644),
        file(2, "y", "a", 0o666),
        file(1, "y", "b", 0o644),
        file(3, "", "b", 0o660),
    ];
    for op in &setup {
        prop_assert_eq!(model.apply(op), Ok(Out::Done), "model setup {:?}", op);
        prop_assert_eq!(core_apply(&fs, op), Ok(Out::Done), "setup {:?}", op);
    }
    let mut result = Ok(());
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let got = core_apply(&fs, op);
        if got != want {
            result = Err(TestCaseError::fail(format!(
                "op {i} {op:?}: the core gave {got:?}, the model predicts {want:?}"
            )));
            break;
        }
    }
    // Taken either way: as a user other than root it also makes the tree
    // removable.
    let host = snapshot(dir.path());
    result?;
    let want = model.tree();
    prop_assert!(host == want, "the trees differ:{}", tree_diff(&host, &want));
    Ok(())
}

fn run_against_model(users: Vec<User>, cases: u32) {
    let ops = proptest::collection::vec(model_op(users.clone()), 1..80);
    let config = ProptestConfig {
        cases,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in ops)| {
        check_against_model(&users, &ops)?;
    });
}

/// All operations as the process itself (root, or the user running the
/// tests without switching credentials).
#[test]
fn operations_as_this_process_match_the_model() {
    run_against_model(
        vec![User {
            uid: euid(),
            gid: egid(),
        }],
        256,
    );
}

/// Operations as root and three unprivileged users ([`USERS`]), whose
/// credentials the core takes for each request.
#[test]
fn operations_as_several_users_match_the_model() {
    if !can_switch_credentials() {
        return;
    }
    run_against_model(USERS.to_vec(), 1024);
}
