//! Property test: random sequences of create / write / rename / unlink /
//! link / mkdir / setattr through the `FileSystem` trait give the same
//! results (errno for errno) and the same tree, bytes and modes as the same
//! sequence run directly on a host directory.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::FileSystem;
use passthrough::io_buf::SliceReader;
use passthrough::{PassthroughFs, ROOT_ID};
use proptest::prelude::*;

const DIRS: [&str; 3] = ["", "x", "y"];
const NAMES: [&str; 4] = ["a", "b", "c", "x"];

#[derive(Debug, Clone)]
enum Op {
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

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DIRS.len();
    let n = 0..NAMES.len();
    let data = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (d.clone(), n.clone(), data.clone()).prop_map(|(d, n, b)| Op::Create(d, n, b)),
        (d.clone(), n.clone(), 0u16..600, data).prop_map(|(d, n, o, b)| Op::Write(d, n, o, b)),
        (d.clone(), n.clone(), d.clone(), n.clone())
            .prop_map(|(a, b, c, e)| Op::Rename(a, b, c, e)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        (d.clone(), n.clone(), d.clone(), n.clone()).prop_map(|(a, b, c, e)| Op::Link(a, b, c, e)),
        (d.clone(), n.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        (d.clone(), n.clone(), 0u16..800).prop_map(|(d, n, s)| Op::Truncate(d, n, s)),
        (d, n, 0u16..0o1000).prop_map(|(d, n, m)| Op::Chmod(d, n, m)),
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

/// Writes `data` at `off` through `handle`, then releases it either way.
fn write_and_release(
    fs: &PassthroughFs,
    inode: u64,
    handle: u64,
    off: u64,
    data: &[u8],
) -> io::Result<()> {
    let mut r = SliceReader::new(data);
    let res = fs.write(
        &root(),
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
    fs.release(&root(), inode, 0, handle, false, false, None)?;
    res.map(drop)
}

fn apply_fs(fs: &PassthroughFs, op: &Op) -> Result<(), i32> {
    code((|| -> io::Result<()> {
        match op {
            Op::Create(d, n, data) => {
                let parent = dir_node(fs, *d)?;
                let args = CreateIn {
                    flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0,
                    fuse_flags: 0,
                };
                let (e, h, _, _) = fs.create(&root(), parent, &cs(NAMES[*n]), args)?;
                let h = h.unwrap();
                write_and_release(fs, e.inode, h, 0, data)
            }
            Op::Write(d, n, off, data) => {
                let e = walk(fs, &path(*d, *n))?;
                let (h, _, _) = fs.open(&root(), e.inode, libc::O_WRONLY as u32, 0)?;
                let h = h.unwrap();
                write_and_release(fs, e.inode, h, *off as u64, data)
            }
            Op::Rename(d1, n1, d2, n2) => {
                let p1 = dir_node(fs, *d1)?;
                let p2 = dir_node(fs, *d2)?;
                fs.rename(&root(), p1, &cs(NAMES[*n1]), p2, &cs(NAMES[*n2]), 0)
            }
            Op::Unlink(d, n) => fs.unlink(&root(), dir_node(fs, *d)?, &cs(NAMES[*n])),
            Op::Link(d1, n1, d2, n2) => {
                let src = walk(fs, &path(*d1, *n1))?;
                fs.link(&root(), src.inode, dir_node(fs, *d2)?, &cs(NAMES[*n2]))
                    .map(drop)
            }
            Op::Mkdir(d, n) => fs
                .mkdir(&root(), dir_node(fs, *d)?, &cs(NAMES[*n]), 0o755, 0)
                .map(drop),
            Op::Truncate(d, n, size) => {
                let e = walk(fs, &path(*d, *n))?;
                let mut attr: stat64 = e.attr;
                attr.st_size = *size as i64;
                fs.setattr(&root(), e.inode, attr, None, SetattrValid::SIZE)
                    .map(drop)
            }
            Op::Chmod(d, n, mode) => {
                let e = walk(fs, &path(*d, *n))?;
                let mut attr: stat64 = e.attr;
                attr.st_mode = *mode as u32;
                fs.setattr(&root(), e.inode, attr, None, SetattrValid::MODE)
                    .map(drop)
            }
        }
    })())
}

fn apply_host(root_dir: &Path, op: &Op) -> Result<(), i32> {
    let p = |d: usize, n: usize| root_dir.join(path(d, n));
    code(match op {
        Op::Create(d, n, data) => fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode_644()
            .open(p(*d, *n))
            .and_then(|f| f.write_all_at(data, 0)),
        Op::Write(d, n, off, data) => fs::OpenOptions::new()
            .write(true)
            .open(p(*d, *n))
            .and_then(|f| f.write_all_at(data, *off as u64)),
        Op::Rename(d1, n1, d2, n2) => fs::rename(p(*d1, *n1), p(*d2, *n2)),
        Op::Unlink(d, n) => fs::remove_file(p(*d, *n)),
        Op::Link(d1, n1, d2, n2) => fs::hard_link(p(*d1, *n1), p(*d2, *n2)),
        Op::Mkdir(d, n) => mkdir_755(&p(*d, *n)),
        Op::Truncate(d, n, size) => fs::OpenOptions::new()
            .write(true)
            .open(p(*d, *n))
            .and_then(|f| f.set_len(*size as u64)),
        Op::Chmod(d, n, mode) => fs::symlink_metadata(p(*d, *n))
            .and_then(|_| fs::set_permissions(p(*d, *n), fs::Permissions::from_mode(*mode as u32))),
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

/// name -> (mode, nlink, size, contents) for every entry below `root`.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u64, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{}{}", rel, entry.file_name().to_str().unwrap());
            let md = fs::symlink_metadata(entry.path()).unwrap();
            let data = if md.is_file() {
                fs::read(entry.path()).unwrap_or_default()
            } else {
                Vec::new()
            };
            let size = if md.is_file() { md.size() } else { 0 };
            if md.is_dir() {
                stack.push(format!("{name}/"));
            }
            out.insert(
                name,
                (
                    md.mode(),
                    if md.is_dir() { 0 } else { md.nlink() },
                    size,
                    data,
                ),
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn trait_operations_match_host_operations(ops in proptest::collection::vec(op(), 1..40)) {
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
