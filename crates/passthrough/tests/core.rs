//! Behaviour of the core through the `FileSystem` trait.

mod common;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use fuse_backend_rs::abi::fuse_abi::{CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{FileLock, FileSystem, GetxattrReply, ListxattrReply};
use passthrough::io_buf::{SliceReader, VecWriter};
use passthrough::{Config, InodeFileHandles, PassthroughFs, ROOT_ID};

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn lookup_counts_track_lookups_and_forgets() {
    let (dir, fs) = new_fs();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let a = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    let b = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    assert_eq!(a.inode, b.inode, "one host inode, one node id");
    assert_eq!(fs.inodes().get(a.inode).unwrap().lookup_count(), 2);
    fs.forget(&root(), a.inode, 1);
    assert!(
        fs.getattr(&root(), a.inode, None).is_ok(),
        "still held once"
    );
    fs.forget(&root(), a.inode, 1);
    assert_eq!(errno(fs.getattr(&root(), a.inode, None)), libc::EBADF);
    assert_eq!(fs.inodes().len(), 1, "only the root remains");
}

#[test]
fn forget_of_unknown_or_root_or_huge_count_is_harmless() {
    let (_dir, fs) = new_fs();
    fs.forget(&root(), 999_999, 5);
    fs.forget(&root(), ROOT_ID, u64::MAX);
    fs.batch_forget(&root(), vec![(ROOT_ID, u64::MAX), (12345, 1)]);
    assert!(
        fs.getattr(&root(), ROOT_ID, None).is_ok(),
        "the root is never dropped"
    );
}

#[test]
fn hard_links_share_one_node_id() {
    let (_dir, fs) = new_fs();
    let e = create_file(&fs, ROOT_ID, "a", b"data").unwrap();
    let l = fs.link(&root(), e.inode, ROOT_ID, &cs("b")).unwrap();
    assert_eq!(l.inode, e.inode);
    assert_eq!(l.attr.st_nlink, 2);
}

#[test]
fn dotdot_at_root_is_root() {
    let (_dir, fs) = new_fs();
    let e = fs.lookup(&root(), ROOT_ID, &cs("..")).unwrap();
    assert_eq!(e.inode, ROOT_ID);
    let e = fs.lookup(&root(), ROOT_ID, &cs(".")).unwrap();
    assert_eq!(e.inode, ROOT_ID);
}

#[test]
fn dotdot_below_root_is_the_parent() {
    let (_dir, fs) = new_fs();
    let d = fs.mkdir(&root(), ROOT_ID, &cs("d"), 0o755, 0).unwrap();
    let up = fs.lookup(&root(), d.inode, &cs("..")).unwrap();
    assert_eq!(up.inode, ROOT_ID);
}

#[test]
fn names_with_slash_or_empty_are_einval_for_every_operation() {
    let (dir, fs) = new_fs();
    let outside = tempfile::tempdir().unwrap();
    let rel = format!(
        "../{}/x",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    for name in ["a/b", "/etc", "", rel.as_str(), "../x"] {
        let n = cs(name);
        assert_eq!(
            errno(fs.lookup(&root(), ROOT_ID, &n)),
            libc::EINVAL,
            "lookup {name:?}"
        );
        assert_eq!(
            errno(fs.mkdir(&root(), ROOT_ID, &n, 0o755, 0)),
            libc::EINVAL,
            "mkdir {name:?}"
        );
        assert_eq!(
            errno(fs.mknod(&root(), ROOT_ID, &n, libc::S_IFREG | 0o644, 0, 0)),
            libc::EINVAL
        );
        assert_eq!(
            errno(fs.symlink(&root(), &cs("t"), ROOT_ID, &n)),
            libc::EINVAL
        );
        assert_eq!(errno(fs.unlink(&root(), ROOT_ID, &n)), libc::EINVAL);
        assert_eq!(errno(fs.rmdir(&root(), ROOT_ID, &n)), libc::EINVAL);
        assert_eq!(errno(create_file(&fs, ROOT_ID, name, b"")), libc::EINVAL);
    }
    create_file(&fs, ROOT_ID, "victim", b"v").unwrap();
    assert_eq!(
        errno(fs.rename(&root(), ROOT_ID, &cs("victim"), ROOT_ID, &cs(&rel), 0)),
        libc::EINVAL
    );
    let e = walk(&fs, "victim").unwrap();
    assert_eq!(
        errno(fs.link(&root(), e.inode, ROOT_ID, &cs(&rel))),
        libc::EINVAL
    );
    assert!(dir.path().join("victim").exists());
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing escaped"
    );
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let (dir, fs) = new_fs();
    std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("pw")).unwrap();
    let l = fs.lookup(&root(), ROOT_ID, &cs("etc")).unwrap();
    assert_eq!(l.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
    // Walking "through" the link is refused: it is not a directory here.
    assert_eq!(
        errno(fs.lookup(&root(), l.inode, &cs("passwd"))),
        libc::ENOTDIR
    );
    assert_eq!(errno(fs.opendir(&root(), l.inode, 0)), libc::ENOTDIR);
    let pw = fs.lookup(&root(), ROOT_ID, &cs("pw")).unwrap();
    assert_eq!(
        errno(fs.open(&root(), pw.inode, libc::O_RDONLY as u32, 0)),
        libc::ELOOP
    );
    assert_eq!(fs.readlink(&root(), pw.inode).unwrap(), b"/etc/passwd");
    // Creating over a symlink name never writes through it.
    assert_eq!(
        errno(create_file(&fs, ROOT_ID, "pw", b"pwned")),
        libc::ELOOP
    );
}

#[test]
fn fifos_and_device_nodes_are_never_opened_on_the_host() {
    let (_dir, fs) = new_fs();
    let fifo = fs
        .mknod(&root(), ROOT_ID, &cs("fifo"), libc::S_IFIFO | 0o666, 0, 0)
        .unwrap();
    let start = Instant::now();
    assert_eq!(
        errno(fs.open(&root(), fifo.inode, libc::O_RDONLY as u32, 0)),
        libc::ENXIO
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "open must not block"
    );
    // /dev/null's numbers: a guest-made node must not reach the host device.
    let dev = fs
        .mknod(
            &root(),
            ROOT_ID,
            &cs("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3) as u32,
            0,
        )
        .unwrap();
    assert_eq!(
        errno(fs.open(&root(), dev.inode, libc::O_RDWR as u32, 0)),
        libc::ENXIO
    );
}

#[test]
fn requests_run_with_the_requesters_credentials() {
    if !can_switch_credentials() {
        return;
    }
    let (dir, fs) = new_fs();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let user = ctx(1234, 5678);
    fs.mkdir(&user, ROOT_ID, &cs("mine"), 0o700, 0).unwrap();
    let md = std::fs::metadata(dir.path().join("mine")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (1234, 5678),
        "created with the guest's ids"
    );
    // Another user cannot look inside a 0700 directory of 1234.
    let other = ctx(4321, 4321);
    let mine = fs.lookup(&root(), ROOT_ID, &cs("mine")).unwrap();
    assert_eq!(
        errno(fs.mkdir(&other, mine.inode, &cs("x"), 0o755, 0)),
        libc::EACCES
    );
    assert_eq!(errno(fs.lookup(&other, mine.inode, &cs("x"))), libc::EACCES);
    // A user cannot chown to someone else.
    let mut attr = mine.attr;
    attr.st_uid = 0;
    assert_eq!(
        errno(fs.setattr(&user, mine.inode, attr, None, SetattrValid::UID)),
        libc::EPERM
    );
    // And the thread is root again afterwards.
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0);
}

#[test]
fn readonly_share_refuses_modifications() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.readonly = true;
    let fs = PassthroughFs::new(cfg).unwrap();
    assert_eq!(
        errno(fs.mkdir(&root(), ROOT_ID, &cs("d"), 0o755, 0)),
        libc::EROFS
    );
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    assert_eq!(
        errno(fs.open(&root(), f.inode, libc::O_WRONLY as u32, 0)),
        libc::EROFS
    );
    assert!(fs.open(&root(), f.inode, libc::O_RDONLY as u32, 0).is_ok());
}

#[test]
fn file_handle_mode_serves_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.inode_file_handles = InodeFileHandles::Prefer;
    let fs = PassthroughFs::new(cfg).unwrap();
    let d = fs.mkdir(&root(), ROOT_ID, &cs("d"), 0o755, 0).unwrap();
    create_file(&fs, d.inode, "f", b"hello").unwrap();
    let f = walk(&fs, "d/f").unwrap();
    for node in [d.inode, f.inode] {
        assert!(
            fs.inodes().get(node).unwrap().held_by_handle(),
            "Prefer fell back to an fd: the test's file system has no handles"
        );
    }
    let (h, _, _) = fs.open(&root(), f.inode, libc::O_RDONLY as u32, 0).unwrap();
    let mut data = Vec::new();
    fs.read(
        &root(),
        f.inode,
        h.unwrap(),
        &mut VecWriter::new(&mut data),
        100,
        0,
        None,
        0,
    )
    .unwrap();
    assert_eq!(data, b"hello");
}

#[test]
fn handles_are_bound_to_their_inode() {
    let (_dir, fs) = new_fs();
    let a = create_file(&fs, ROOT_ID, "a", b"aaaa").unwrap();
    let b = create_file(&fs, ROOT_ID, "b", b"bbbb").unwrap();
    let (h, _, _) = fs.open(&root(), a.inode, libc::O_RDONLY as u32, 0).unwrap();
    let mut data = Vec::new();
    let mut w = VecWriter::new(&mut data);
    assert_eq!(
        errno(fs.read(&root(), b.inode, h.unwrap(), &mut w, 4, 0, None, 0)),
        libc::EBADF,
        "a handle of a cannot be used as b"
    );
    assert_eq!(
        errno(fs.release(&root(), b.inode, 0, h.unwrap(), false, false, None)),
        libc::EBADF
    );
    assert!(fs
        .release(&root(), a.inode, 0, h.unwrap(), false, false, None)
        .is_ok());
    assert_eq!(fs.open_handles(), 0);
}

#[test]
fn readdirplus_counts_each_delivered_entry_once() {
    let (_dir, fs) = new_fs();
    for i in 0..50 {
        create_file(&fs, ROOT_ID, &format!("f{i}"), b"").unwrap();
    }
    // create_file took one lookup each; drop them to start from zero.
    let ids: Vec<u64> = (0..50)
        .map(|i| walk(&fs, &format!("f{i}")).unwrap().inode)
        .collect();
    for id in &ids {
        fs.forget(&root(), *id, 2);
    }
    assert_eq!(fs.inodes().len(), 1);
    let (h, _) = fs.opendir(&root(), ROOT_ID, 0).unwrap();
    let h = h.unwrap();
    let mut offset = 0;
    let mut seen = Vec::new();
    loop {
        let mut budget = 7; // deliver at most 7 entries per call
        let mut last_off = None;
        fs.readdirplus(&root(), ROOT_ID, h, 4096, offset, &mut |d, e| {
            if budget == 0 {
                return Ok(0);
            }
            budget -= 1;
            last_off = Some(d.offset);
            if e.inode != 0 {
                seen.push(e.inode);
            }
            Ok(1)
        })
        .unwrap();
        match last_off {
            Some(o) => offset = o,
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 50, "every file listed exactly once");
    for id in seen {
        assert_eq!(
            fs.inodes().get(id).unwrap().lookup_count(),
            1,
            "one lookup per delivered entry"
        );
    }
}

#[test]
fn seek_data_and_hole_find_the_sparse_layout() {
    let (_dir, fs) = new_fs();
    let e = create_file(&fs, ROOT_ID, "sparse", b"").unwrap();
    let (h, _, _) = fs.open(&root(), e.inode, libc::O_RDWR as u32, 0).unwrap();
    let h = h.unwrap();
    let data = vec![7u8; 4096];
    let mut r = SliceReader::new(&data);
    fs.write(
        &root(),
        e.inode,
        h,
        &mut r,
        4096,
        1 << 20,
        None,
        false,
        0,
        0,
    )
    .unwrap();
    let data = fs
        .lseek(&root(), e.inode, h, 0, libc::SEEK_DATA as u32)
        .unwrap();
    assert_eq!(data, 1 << 20);
    let hole = fs
        .lseek(&root(), e.inode, h, 0, libc::SEEK_HOLE as u32)
        .unwrap();
    assert_eq!(hole, 0);
}

#[test]
fn rename_flags_noreplace_and_exchange() {
    let (dir, fs) = new_fs();
    create_file(&fs, ROOT_ID, "a", b"A").unwrap();
    create_file(&fs, ROOT_ID, "b", b"B").unwrap();
    assert_eq!(
        errno(fs.rename(
            &root(),
            ROOT_ID,
            &cs("a"),
            ROOT_ID,
            &cs("b"),
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    fs.rename(
        &root(),
        ROOT_ID,
        &cs("a"),
        ROOT_ID,
        &cs("b"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"A");
    assert_eq!(
        errno(fs.rename(
            &root(),
            ROOT_ID,
            &cs("a"),
            ROOT_ID,
            &cs("c"),
            libc::RENAME_WHITEOUT
        )),
        libc::EINVAL
    );
}

#[test]
fn copy_file_range_copies_between_handles() {
    let (dir, fs) = new_fs();
    let a = create_file(&fs, ROOT_ID, "a", b"0123456789").unwrap();
    let b = create_file(&fs, ROOT_ID, "b", b"").unwrap();
    let (ha, _, _) = fs.open(&root(), a.inode, libc::O_RDONLY as u32, 0).unwrap();
    let (hb, _, _) = fs.open(&root(), b.inode, libc::O_WRONLY as u32, 0).unwrap();
    let n = fs
        .copy_file_range(
            &root(),
            a.inode,
            ha.unwrap(),
            2,
            b.inode,
            hb.unwrap(),
            0,
            5,
            0,
        )
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"23456");
}

fn create_args(flags: i32) -> CreateIn {
    CreateIn {
        flags: flags as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    }
}

/// Runs `f` on another thread and waits at most 10 s for it: a request that
/// blocks fails the test instead of hanging it. `unblock` runs first if it
/// times out, to let the stuck thread go.
fn within_10s<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    unblock: impl FnOnce(),
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(v) => v,
        Err(_) => {
            unblock();
            panic!("the request blocked for 10 s");
        }
    }
}

#[test]
fn create_over_a_device_node_never_opens_the_host_device() {
    let (_dir, fs) = new_fs();
    // /dev/zero's numbers: a guest-made node must not reach the host device.
    let dev = fs
        .mknod(
            &root(),
            ROOT_ID,
            &cs("zdev"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 5) as u32,
            0,
        )
        .unwrap();
    for flags in [libc::O_RDWR, libc::O_RDONLY, libc::O_WRONLY | libc::O_TRUNC] {
        match fs.create(&root(), ROOT_ID, &cs("zdev"), create_args(flags)) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "flags {flags:#o}"),
            Ok((entry, handle, _, _)) => {
                let mut data = Vec::new();
                let read = fs.read(
                    &root(),
                    entry.inode,
                    handle.unwrap(),
                    &mut VecWriter::new(&mut data),
                    16,
                    0,
                    None,
                    0,
                );
                panic!("CREATE opened the host device (flags {flags:#o}): read {read:?} {data:?}");
            }
        }
    }
    assert_eq!(fs.open_handles(), 0);
    assert_eq!(
        fs.inodes().get(dev.inode).unwrap().lookup_count(),
        1,
        "a refused CREATE keeps no lookup"
    );
}

#[test]
fn create_over_a_host_fifo_answers_at_once() {
    let (dir, fs) = new_fs();
    let fifo = dir.path().join("fifo");
    let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let fs = Arc::new(fs);
    let fs2 = fs.clone();
    let r = within_10s(
        move || errno(fs2.create(&root(), ROOT_ID, &cs("fifo"), create_args(libc::O_WRONLY))),
        || {
            // A reader lets the blocked open(O_WRONLY) return.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        },
    );
    assert_eq!(r, libc::ENXIO);
    let r = within_10s(
        {
            let fs = fs.clone();
            move || errno(fs.create(&root(), ROOT_ID, &cs("fifo"), create_args(libc::O_RDONLY)))
        },
        || {},
    );
    assert_eq!(r, libc::ENXIO);
    assert_eq!(fs.open_handles(), 0);
}

#[test]
fn create_of_an_existing_file_opens_it_truncates_on_o_trunc_and_is_eexist_with_o_excl() {
    let (dir, fs) = new_fs();
    std::fs::write(dir.path().join("f"), b"hello").unwrap();
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    let (entry, handle, _, _) = fs
        .create(&root(), ROOT_ID, &cs("f"), create_args(libc::O_RDWR))
        .unwrap();
    assert_eq!(entry.inode, f.inode, "the existing file");
    assert_eq!(fs.inodes().get(f.inode).unwrap().lookup_count(), 2);
    let mut data = Vec::new();
    fs.read(
        &root(),
        f.inode,
        handle.unwrap(),
        &mut VecWriter::new(&mut data),
        100,
        0,
        None,
        0,
    )
    .unwrap();
    assert_eq!(data, b"hello", "opened, not truncated");
    fs.release(&root(), f.inode, 0, handle.unwrap(), false, false, None)
        .unwrap();
    let (entry, handle, _, _) = fs
        .create(
            &root(),
            ROOT_ID,
            &cs("f"),
            create_args(libc::O_WRONLY | libc::O_TRUNC),
        )
        .unwrap();
    assert_eq!(entry.inode, f.inode);
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"", "O_TRUNC");
    fs.release(&root(), f.inode, 0, handle.unwrap(), false, false, None)
        .unwrap();
    std::fs::write(dir.path().join("f"), b"kept").unwrap();
    assert_eq!(
        errno(fs.create(
            &root(),
            ROOT_ID,
            &cs("f"),
            create_args(libc::O_RDWR | libc::O_EXCL | libc::O_TRUNC)
        )),
        libc::EEXIST
    );
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"kept");
    std::fs::create_dir(dir.path().join("d")).unwrap();
    assert_eq!(
        errno(fs.create(&root(), ROOT_ID, &cs("d"), create_args(libc::O_RDONLY))),
        libc::EISDIR
    );
    assert_eq!(fs.open_handles(), 0);
    assert_eq!(
        fs.inodes().get(f.inode).unwrap().lookup_count(),
        3,
        "one lookup per successful CREATE, none for a refused one"
    );
}

const XATTR_CHILD: &str = "getxattr_and_listxattr_of_a_4_gib_size_allocate_no_4_gib";

#[test]
fn getxattr_and_listxattr_of_a_4_gib_size_allocate_no_4_gib() {
    if !is_child(XATTR_CHILD) {
        return run_in_child(XATTR_CHILD);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.xattr = true;
    let fs = PassthroughFs::new(cfg).unwrap();
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    fs.setxattr(&root(), f.inode, &cs("user.x"), b"hi", 0)
        .unwrap();
    // Any allocation of the guest's size now fails (and aborts the child).
    set_rlimit(libc::RLIMIT_AS, 1 << 30);
    match fs
        .getxattr(&root(), f.inode, &cs("user.x"), 0xFFFF_FFF0)
        .unwrap()
    {
        GetxattrReply::Value(v) => assert_eq!(v, b"hi"),
        GetxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
    assert_eq!(
        errno(fs.getxattr(&root(), f.inode, &cs("user.none"), 0xFFFF_FFF0)),
        libc::ENODATA
    );
    match fs.listxattr(&root(), f.inode, 0xFFFF_FFF0).unwrap() {
        ListxattrReply::Names(v) => assert_eq!(v, b"user.x\0"),
        ListxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
    // A short buffer is still ERANGE, as the host answers.
    assert_eq!(
        errno(fs.getxattr(&root(), f.inode, &cs("user.x"), 1)),
        libc::ERANGE
    );
}

#[test]
fn xattr_values_over_64_kib_are_e2big_and_names_over_255_bytes_erange() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.xattr = true;
    let fs = PassthroughFs::new(cfg).unwrap();
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    assert_eq!(
        errno(fs.setxattr(&root(), f.inode, &cs("user.big"), &vec![1u8; 65537], 0)),
        libc::E2BIG
    );
    let long = format!("user.{}", "n".repeat(251));
    assert_eq!(long.len(), 256);
    assert_eq!(
        errno(fs.setxattr(&root(), f.inode, &cs(&long), b"v", 0)),
        libc::ERANGE
    );
    assert_eq!(
        errno(fs.getxattr(&root(), f.inode, &cs(&long), 10)),
        libc::ERANGE
    );
    assert_eq!(
        errno(fs.removexattr(&root(), f.inode, &cs(&long))),
        libc::ERANGE
    );
}

/// The host's value of the xattr `name` of `path`, or its errno.
fn host_xattr(path: &std::path::Path, name: &str) -> Result<Vec<u8>, i32> {
    let p = cs(path.to_str().unwrap());
    let n = cs(name);
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings; `buf` is writable for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Sets the host xattr `name` of `path`; false (and a printed reason) where
/// the temporary directory's filesystem has no user xattrs.
fn set_host_xattr(path: &std::path::Path, name: &str, value: &[u8]) -> bool {
    let p = cs(path.to_str().unwrap());
    let n = cs(name);
    // SAFETY: NUL-terminated strings; `value` is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        return true;
    }
    let e = std::io::Error::last_os_error();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "setting {name}: {e}");
    eprintln!("SKIP: the temporary directory's filesystem has no user xattrs");
    false
}

/// A core over `dir` with xattrs and the map `map`.
fn mapped_fs(dir: &std::path::Path, map: &str) -> PassthroughFs {
    let mut cfg = Config::new(dir);
    cfg.xattr = true;
    cfg.xattrmap = Some(Arc::new(passthrough::XattrMap::parse(map).unwrap()));
    PassthroughFs::new(cfg).unwrap()
}

fn names(r: std::io::Result<ListxattrReply>) -> Vec<u8> {
    match r.unwrap() {
        ListxattrReply::Names(v) => v,
        ListxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
}

fn count(r: std::io::Result<ListxattrReply>) -> u32 {
    match r.unwrap() {
        ListxattrReply::Count(n) => n,
        ListxattrReply::Names(v) => panic!("names ({v:?}) for a size request"),
    }
}

/// `--xattrmap` keeping the guest's security.* names in the host's
/// user.virtiofs.security.* (so an unprivileged host can hold a guest's
/// SELinux labels, and the host's own labels never reach the guest): the
/// guest sets, reads, lists and removes `security.selinux`, and only the
/// mapped name exists on the host; host names outside the map are hidden
/// from the guest's list and out of its reach.
#[test]
fn an_xattr_map_keeps_guest_security_names_under_a_user_prefix_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    if !set_host_xattr(&path, "user.hostonly", b"host") {
        return;
    }
    let host_label_before = host_xattr(&path, "security.selinux");
    let fs = mapped_fs(
        dir.path(),
        ":prefix:all:security.:user.virtiofs.::bad:all:::",
    );
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    let label = b"system_u:object_r:guest_t:s0";

    fs.setxattr(&root(), f.inode, &cs("security.selinux"), label, 0)
        .unwrap();
    assert_eq!(
        host_xattr(&path, "user.virtiofs.security.selinux").as_deref(),
        Ok(&label[..]),
        "stored under the mapped name on the host"
    );
    assert_eq!(
        host_xattr(&path, "security.selinux"),
        host_label_before,
        "the host's own security.selinux is untouched"
    );

    match fs
        .getxattr(&root(), f.inode, &cs("security.selinux"), 64)
        .unwrap()
    {
        GetxattrReply::Value(v) => assert_eq!(v, label),
        GetxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
    match fs
        .getxattr(&root(), f.inode, &cs("security.selinux"), 0)
        .unwrap()
    {
        GetxattrReply::Count(n) => assert_eq!(n as usize, label.len()),
        GetxattrReply::Value(v) => panic!("a value ({v:?}) for a size request"),
    }

    // The guest's list: the mapped name only, sized as mapped.
    let want = b"security.selinux\0";
    assert_eq!(
        count(fs.listxattr(&root(), f.inode, 0)) as usize,
        want.len()
    );
    assert_eq!(names(fs.listxattr(&root(), f.inode, 4096)), want);
    assert_eq!(
        names(fs.listxattr(&root(), f.inode, want.len() as u32)),
        want
    );
    assert_eq!(
        errno(fs.listxattr(&root(), f.inode, want.len() as u32 - 1)),
        libc::ERANGE
    );

    // A host name outside the map: hidden above, absent to getxattr,
    // and the guest can neither set nor remove it.
    assert_eq!(
        errno(fs.getxattr(&root(), f.inode, &cs("user.hostonly"), 64)),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.setxattr(&root(), f.inode, &cs("user.hostonly"), b"guest", 0)),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.removexattr(&root(), f.inode, &cs("user.hostonly"))),
        libc::EPERM
    );
    assert_eq!(
        host_xattr(&path, "user.hostonly").as_deref(),
        Ok(&b"host"[..])
    );

    fs.removexattr(&root(), f.inode, &cs("security.selinux"))
        .unwrap();
    assert_eq!(
        host_xattr(&path, "user.virtiofs.security.selinux"),
        Err(libc::ENODATA)
    );
    assert_eq!(count(fs.listxattr(&root(), f.inode, 0)), 0);
    assert_eq!(
        errno(fs.getxattr(&root(), f.inode, &cs("security.selinux"), 64)),
        libc::ENODATA
    );
}

/// Under a map that keeps the guest's security.* in the host's trusted.vm.*
/// (which no guest user may change on the host), the file capabilities a
/// writer has removed (killpriv) are the mapped ones; a non-writer's
/// request is still refused.
#[test]
fn a_writer_has_mapped_file_capabilities_removed() {
    if !common::can_switch_credentials() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = mapped_fs(dir.path(), ":prefix:all:security.:trusted.vm.::ok:all:::");
    for (mode, writer_may) in [(0o666, true), (0o644, false)] {
        let name = format!("f{mode:o}");
        let path = dir.path().join(&name);
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if !set_host_xattr(&path, "trusted.vm.security.capability", b"caps") {
            return;
        }
        let f = fs.lookup(&root(), ROOT_ID, &cs(&name)).unwrap();
        let r = fs.removexattr(&ctx(4242, 4242), f.inode, &cs("security.capability"));
        let left = host_xattr(&path, "trusted.vm.security.capability");
        if writer_may {
            r.expect("a writer has the capabilities removed");
            assert_eq!(left, Err(libc::ENODATA), "the mapped name is removed");
        } else {
            assert_eq!(errno(r), libc::EPERM, "not a writer");
            assert!(left.is_ok(), "still there");
        }
    }
}

/// The `map` shorthand with a key: the guest's trusted.* names live under
/// user.virtiofs.* on the host, the guest cannot reach user.virtiofs.*
/// directly, and other host names pass both ways.
#[test]
fn an_xattr_map_rule_remaps_one_namespace_and_passes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    if !set_host_xattr(&path, "user.mine", b"m") {
        return;
    }
    let fs = mapped_fs(dir.path(), "/map/trusted./user.virtiofs./");
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    fs.setxattr(&root(), f.inode, &cs("trusted.overlay.opaque"), b"y", 0)
        .unwrap();
    assert_eq!(
        host_xattr(&path, "user.virtiofs.trusted.overlay.opaque").as_deref(),
        Ok(&b"y"[..])
    );
    assert_eq!(
        errno(fs.setxattr(&root(), f.inode, &cs("user.virtiofs.x"), b"v", 0)),
        libc::EPERM
    );
    fs.setxattr(&root(), f.inode, &cs("user.guest"), b"g", 0)
        .unwrap();
    assert_eq!(host_xattr(&path, "user.guest").as_deref(), Ok(&b"g"[..]));
    let mut listed: Vec<Vec<u8>> = names(fs.listxattr(&root(), f.inode, 4096))
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    listed.sort();
    // (No host security.* or trusted.* names here: the host's own trusted.*
    // would be hidden, its security.* passed.)
    listed.retain(|n| !n.starts_with(b"security."));
    assert_eq!(
        listed,
        [
            b"trusted.overlay.opaque".to_vec(),
            b"user.guest".to_vec(),
            b"user.mine".to_vec()
        ]
    );
}

#[test]
fn lock_requests_answer_enosys_at_once_when_posix_locks_are_not_offered() {
    let (dir, fs) = new_fs();
    assert!(!fs.config().posix_locks, "not offered by default");
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
    let (h1, _, _) = fs.open(&root(), f.inode, libc::O_RDWR as u32, 0).unwrap();
    let (h2, _, _) = fs.open(&root(), f.inode, libc::O_RDWR as u32, 0).unwrap();
    let (h1, h2) = (h1.unwrap(), h2.unwrap());
    let lock = FileLock {
        start: 0,
        end: u64::MAX,
        lock_type: libc::F_WRLCK as u32,
        pid: 0,
    };
    let fs = Arc::new(fs);
    let ino = f.inode;
    // Another holder of the file has it locked (through the core's
    // non-blocking call, as 9P's Tlock takes locks).
    fs.try_lock(ino, h1, lock).unwrap();
    // A guest that was never offered locks sends SETLKW: were it served, it
    // would wait for that lock forever.
    let fs2 = fs.clone();
    let r = within_10s(
        move || errno(fs2.setlkw(&root(), ino, h2, 2, lock, 0)),
        || {
            let unlock = FileLock {
                lock_type: libc::F_UNLCK as u32,
                ..lock
            };
            let _ = fs.try_lock(ino, h1, unlock);
        },
    );
    assert_eq!(r, libc::ENOSYS);
    assert_eq!(errno(fs.setlk(&root(), ino, h2, 2, lock, 0)), libc::ENOSYS);
    assert_eq!(errno(fs.getlk(&root(), ino, h2, 2, lock, 0)), libc::ENOSYS);
}

const FD_CHILD: &str = "guest_lookups_and_opens_leave_the_fd_reserve_free";

#[test]
fn guest_lookups_and_opens_leave_the_fd_reserve_free() {
    const LIMIT: u64 = 256;
    const FILES: usize = 300;
    if !is_child(FD_CHILD) {
        return run_in_child(FD_CHILD);
    }
    let dir = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
    }
    set_rlimit(libc::RLIMIT_NOFILE, LIMIT);
    let mut cfg = Config::new(dir.path());
    // One O_PATH fd per inode: the mode whose fds the guest could run out.
    cfg.inode_file_handles = InodeFileHandles::Never;
    let reserve = cfg.fd_reserve as usize;
    assert_eq!(reserve, 64, "the default reserve");
    let fs = PassthroughFs::new(cfg).unwrap();
    // Each lookup holds an O_PATH fd: they run out before the limit does.
    let mut held = Vec::new();
    let err = loop {
        assert!(held.len() < FILES, "no lookup was refused");
        match fs.lookup(&root(), ROOT_ID, &cs(&format!("f{}", held.len()))) {
            Ok(e) => held.push(e.inode),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
    assert!(
        held.len() < LIMIT as usize - reserve,
        "{} lookups",
        held.len()
    );
    // Give back a few: opens (handles) run out the same way.
    for id in held.drain(held.len() - 10..) {
        fs.forget(&root(), id, 1);
    }
    let mut handles = 0;
    let err = loop {
        assert!(handles < 100, "no open was refused");
        match fs.open(&root(), held[0], libc::O_RDONLY as u32, 0) {
            Ok(_) => handles += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
    assert!(handles <= 10, "{handles} opens");
    assert_eq!(
        errno(fs.create(&root(), ROOT_ID, &cs("new"), create_args(libc::O_RDWR))),
        libc::EMFILE
    );
    assert_eq!(errno(fs.opendir(&root(), ROOT_ID, 0)), libc::EMFILE);
    // The daemon still has its reserve.
    let own: Vec<std::fs::File> = (0..reserve - 8)
        .map(|i| std::fs::File::open("/dev/null").unwrap_or_else(|e| panic!("own fd {i}: {e}")))
        .collect();
    assert_eq!(own.len(), reserve - 8);
    assert!(fs.getattr(&root(), ROOT_ID, None).is_ok());
}

const CACHE_CHILD: &str =
    "with_file_handles_lookups_never_run_out_of_fds_and_the_fd_cache_gives_way";

/// The default (`Prefer`): a guest may look up many more inodes than the
/// daemon may open fds, the fd cache stays within its share, and when the
/// guest's open files need the fds the cache holds it gives them up.
#[test]
fn with_file_handles_lookups_never_run_out_of_fds_and_the_fd_cache_gives_way() {
    const LIMIT: u64 = 256;
    const FILES: usize = 1000;
    if !is_child(CACHE_CHILD) {
        return run_in_child(CACHE_CHILD);
    }
    let dir = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
    }
    set_rlimit(libc::RLIMIT_NOFILE, LIMIT);
    let cfg = Config::new(dir.path());
    assert_eq!(
        cfg.inode_file_handles,
        InodeFileHandles::Prefer,
        "the default"
    );
    let reserve = cfg.fd_reserve as usize;
    let fs = PassthroughFs::new(cfg).unwrap();
    let mut held = Vec::new();
    for i in 0..FILES {
        let e = fs
            .lookup(&root(), ROOT_ID, &cs(&format!("f{i}")))
            .unwrap_or_else(|e| panic!("lookup {i}: {e}"));
        assert!(
            fs.inodes().get(e.inode).unwrap().held_by_handle(),
            "the temporary directory's file system has no file handles"
        );
        held.push(e.inode);
    }
    for (i, &node) in held.iter().enumerate() {
        let (st, _) = fs
            .getattr(&root(), node, None)
            .unwrap_or_else(|e| panic!("getattr {i}: {e}"));
        assert_eq!(st.st_size, 1);
    }
    // The cache's share: a quarter of what the guest may hold.
    let cap = (LIMIT as usize - reserve) / 4;
    let cached = fs.fd_cache().len();
    assert!(
        cached > 0 && cached <= cap,
        "{cached} fds cached, {cap} allowed"
    );
    let open_fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(open_fds < LIMIT as usize - reserve, "{open_fds} fds open");
    // Open files take the guest's whole share: the cache empties for them.
    let mut handles = Vec::new();
    let err = loop {
        assert!(handles.len() < LIMIT as usize, "no open was refused");
        match fs.open(&root(), held[handles.len()], libc::O_RDONLY as u32, 0) {
            Ok((h, _, _)) => handles.push((held[handles.len()], h.unwrap())),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
    assert!(
        fs.fd_cache().len() <= 1,
        "{} fds kept cached while the guest's opens were refused",
        fs.fd_cache().len()
    );
    assert!(
        handles.len() + 16 >= LIMIT as usize - reserve - cached,
        "only {} opens: the cache did not give way",
        handles.len()
    );
    // Released, the fds serve lookups and the cache again.
    for (node, h) in handles {
        fs.release(&root(), node, 0, h, false, false, None).unwrap();
    }
    for (i, &node) in held.iter().enumerate().rev() {
        fs.getattr(&root(), node, None)
            .unwrap_or_else(|e| panic!("getattr {i} after release: {e}"));
    }
    assert!(!fs.fd_cache().is_empty());
}

/// With inodes held by file handles, a lookup by a guest user reopens the
/// parent by its handle: that needs the daemon's CAP_DAC_READ_SEARCH, not
/// the user's (xfstests generic/123, 314, 597, 598 failed here with EPERM
/// below the first level).
#[test]
fn non_root_lookups_below_the_first_level_work_with_file_handles() {
    if !can_switch_credentials() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
    std::fs::write(dir.path().join("a/b/c/f"), b"deep").unwrap();
    let mut cfg = Config::new(dir.path());
    // Mandatory: the test must run with handles, not silently with fds.
    cfg.inode_file_handles = InodeFileHandles::Mandatory;
    let fs = PassthroughFs::new(cfg).unwrap();
    let user = common::ctx(1000, 1000);
    let mut cur = ROOT_ID;
    for name in ["a", "b", "c", "f"] {
        let e = fs
            .lookup(&user, cur, &cs(name))
            .unwrap_or_else(|e| panic!("lookup of {name} as uid 1000: {e}"));
        cur = e.inode;
    }
    let (st, _) = fs.getattr(&user, cur, None).unwrap();
    assert_eq!(st.st_size, 4);
    // The thread is the user again afterwards, not root: a file it creates
    // belongs to the user.
    let sub = walk(&fs, "a").unwrap();
    std::fs::set_permissions(
        dir.path().join("a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let made = fs.mkdir(&user, sub.inode, &cs("mine"), 0o755, 0).unwrap();
    assert_eq!((made.attr.st_uid, made.attr.st_gid), (1000, 1000));
}

/// A guest's lseek offset is a signed loff_t: SEEK_DATA and SEEK_HOLE at a
/// negative one answer ENXIO, as the host does (xfstests generic/448), not
/// EINVAL from refusing the offset before the host sees it.
#[test]
fn seek_data_and_hole_at_a_negative_offset_answer_as_the_host() {
    let (_dir, fs) = new_fs();
    let f = create_file(&fs, ROOT_ID, "f", b"data").unwrap();
    let (h, _, _) = fs.open(&root(), f.inode, libc::O_RDONLY as u32, 0).unwrap();
    let h = h.unwrap();
    let negative = (-1i64) as u64;
    for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
        assert_eq!(
            errno(fs.lseek(&root(), f.inode, h, negative, whence as u32)),
            libc::ENXIO,
            "whence {whence}"
        );
    }
    assert_eq!(
        errno(fs.lseek(&root(), f.inode, h, negative, libc::SEEK_SET as u32)),
        libc::EINVAL
    );
    assert_eq!(
        fs.lseek(&root(), f.inode, h, 0, libc::SEEK_HOLE as u32)
            .unwrap(),
        4
    );
}

/// With POSIX ACLs the core negotiates FUSE_DONT_MASK and decides itself:
/// the guest's umask applies to a new file unless its directory has a
/// default ACL, which then decides alone, as on a local filesystem
/// (xfstests generic/319, 444, 697: the umask was applied on top).
#[test]
fn a_default_acl_replaces_the_umask_with_posix_acls() {
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("acl")).unwrap();
    std::fs::create_dir(dir.path().join("plain")).unwrap();
    let ok = std::process::Command::new("setfacl")
        .args(["-d", "-m", "u::rwx,g::rwx,o::rwx"])
        .arg(dir.path().join("acl"))
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs acl (setfacl)"
        );
        eprintln!("SKIP: setfacl is missing or the filesystem has no ACLs");
        return;
    }
    let mut cfg = Config::new(dir.path());
    cfg.xattr = true;
    cfg.posix_acl = passthrough::Negotiation::Always;
    let fs = PassthroughFs::new(cfg).unwrap();
    let got = fs.init(FsOptions::all()).unwrap();
    assert!(got.contains(FsOptions::DONT_MASK | FsOptions::POSIX_ACL));
    let acl = walk(&fs, "acl").unwrap().inode;
    let plain = walk(&fs, "plain").unwrap().inode;
    let mode = |e: fuse_backend_rs::api::filesystem::Entry| e.attr.st_mode & 0o777;
    let umask = 0o022;
    assert_eq!(
        mode(fs.mkdir(&root(), acl, &cs("d"), 0o777, umask).unwrap()),
        0o777
    );
    assert_eq!(
        mode(fs.mkdir(&root(), plain, &cs("d"), 0o777, umask).unwrap()),
        0o755
    );
    let args = |m| CreateIn {
        flags: libc::O_RDWR as u32,
        mode: m,
        umask,
        fuse_flags: 0,
    };
    let (e, _, _, _) = fs.create(&root(), acl, &cs("f"), args(0o666)).unwrap();
    assert_eq!(mode(e), 0o666);
    let (e, _, _, _) = fs.create(&root(), plain, &cs("f"), args(0o666)).unwrap();
    assert_eq!(mode(e), 0o644);
    let e = fs
        .mknod(&root(), plain, &cs("p"), libc::S_IFIFO | 0o666, 0, umask)
        .unwrap();
    assert_eq!(mode(e), 0o644);
}

/// Opened to be executed (FMODE_EXEC in FUSE OPEN's flags), a file needs
/// execute permission, not read permission: a mode 0111 program runs for
/// anyone (xfstests generic/126), while a file without execute permission
/// is still refused.
#[test]
fn execute_only_files_open_for_execution() {
    if !can_switch_credentials() {
        return;
    }
    let (dir, fs) = new_fs();
    std::fs::write(dir.path().join("prog"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.path().join("prog"), PermissionsExt::from_mode(0o111)).unwrap();
    std::fs::write(dir.path().join("data"), b"x").unwrap();
    std::fs::set_permissions(dir.path().join("data"), PermissionsExt::from_mode(0o644)).unwrap();
    let user = common::ctx(1000, 1000);
    let prog = fs.lookup(&user, ROOT_ID, &cs("prog")).unwrap().inode;
    let data = fs.lookup(&user, ROOT_ID, &cs("data")).unwrap().inode;
    let rd = libc::O_RDONLY as u32;
    let exec = rd | 0x20;
    assert_eq!(
        errno(fs.open(&user, prog, rd, 0)),
        libc::EACCES,
        "reading stays refused"
    );
    assert!(
        fs.open(&user, prog, exec, 0).is_ok(),
        "executing is allowed"
    );
    assert_eq!(
        errno(fs.open(&user, data, exec, 0)),
        libc::EACCES,
        "no x bit, no exec"
    );
    assert!(fs.open(&user, data, rd, 0).is_ok());
    // A directory the user may search but not read stays unreadable: the
    // exec path is for regular files only.
    std::fs::create_dir(dir.path().join("xonly")).unwrap();
    std::fs::set_permissions(dir.path().join("xonly"), PermissionsExt::from_mode(0o711)).unwrap();
    let xonly = fs.lookup(&user, ROOT_ID, &cs("xonly")).unwrap().inode;
    let dir_exec = exec | libc::O_DIRECTORY as u32;
    assert_eq!(errno(fs.open(&user, xonly, dir_exec, 0)), libc::EACCES);
}

/// After a write, truncate or fallocate by a user who may write a set-id
/// file but does not own it, the guest kernel asks to clear the set-id
/// bits; the host refuses that chmod to a non-owner, so the daemon does it
/// (xfstests generic/683-685, 688). Other mode changes stay the owner's.
#[test]
fn a_writer_may_clear_set_id_bits_but_change_nothing_else() {
    if !can_switch_credentials() {
        return;
    }
    let (dir, fs) = new_fs();
    let path = dir.path().join("suid");
    std::fs::write(&path, b"x").unwrap();
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o6777)).unwrap();
    let ro = dir.path().join("ro");
    std::fs::write(&ro, b"x").unwrap();
    std::fs::set_permissions(&ro, PermissionsExt::from_mode(0o4755)).unwrap();
    let user = common::ctx(1000, 1000);
    let node = fs.lookup(&user, ROOT_ID, &cs("suid")).unwrap().inode;
    let ro_node = fs.lookup(&user, ROOT_ID, &cs("ro")).unwrap().inode;
    let set_mode = |node, mode: u32| {
        // SAFETY: stat64 is plain data.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_mode = mode;
        fs.setattr(&user, node, attr, None, SetattrValid::MODE)
    };
    assert_eq!(
        errno(set_mode(node, 0o6700)),
        libc::EPERM,
        "not a set-id drop"
    );
    let (st, _) = set_mode(node, 0o0777).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o777);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o777);
    assert_eq!(
        errno(set_mode(ro_node, 0o0755)),
        libc::EPERM,
        "no write permission"
    );
}

/// xfstests generic/062: Linux keeps trusted.* and security.* xattrs on
/// symlinks (and special files); the core reaches them through the O_PATH
/// fd, on the symlink itself and never on its target, and the host kernel's
/// answer for user.* (EPERM) reaches the guest unchanged.
#[test]
fn xattrs_of_a_symlink_are_its_own() {
    if !common::can_switch_credentials() {
        return; // trusted.* needs CAP_SYS_ADMIN
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("target"), b"x").unwrap();
    std::os::unix::fs::symlink("target", dir.path().join("link")).unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.xattr = true;
    let fs = PassthroughFs::new(cfg).unwrap();
    let l = fs.lookup(&root(), ROOT_ID, &cs("link")).unwrap();
    fs.setxattr(&root(), l.inode, &cs("trusted.t"), b"on the link", 0)
        .expect("trusted.* on a symlink");
    match fs.getxattr(&root(), l.inode, &cs("trusted.t"), 64).unwrap() {
        GetxattrReply::Value(v) => assert_eq!(v, b"on the link"),
        GetxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
    match fs.getxattr(&root(), l.inode, &cs("trusted.t"), 0).unwrap() {
        GetxattrReply::Count(n) => assert_eq!(n, 11),
        GetxattrReply::Value(v) => panic!("a value ({v:?}) for a size request"),
    }
    match fs.listxattr(&root(), l.inode, 256).unwrap() {
        ListxattrReply::Names(v) => assert!(v.windows(10).any(|w| w == b"trusted.t\0")),
        ListxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
    // On the link itself, as the host sees it; the target has none.
    let host = |p: &str, follow: bool| {
        let p = cs(dir.path().join(p).to_str().unwrap());
        let mut buf = [0u8; 64];
        // SAFETY: NUL-terminated strings; `buf` is writable for its length.
        let n = unsafe {
            if follow {
                libc::getxattr(
                    p.as_ptr(),
                    c"trusted.t".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    64,
                )
            } else {
                libc::lgetxattr(
                    p.as_ptr(),
                    c"trusted.t".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    64,
                )
            }
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    };
    assert_eq!(host("link", false).as_deref(), Some(&b"on the link"[..]));
    assert_eq!(host("target", true), None, "the target was not touched");
    assert_eq!(
        errno(fs.setxattr(&root(), l.inode, &cs("user.u"), b"v", 0)),
        libc::EPERM,
        "Linux refuses user.* on symlinks"
    );
    fs.removexattr(&root(), l.inode, &cs("trusted.t")).unwrap();
    assert_eq!(
        errno(fs.getxattr(&root(), l.inode, &cs("trusted.t"), 64)),
        libc::ENODATA
    );
    // A FIFO nobody writes to: its xattrs are reached without opening it,
    // so nothing blocks.
    let fifo = cs(dir.path().join("fifo").to_str().unwrap());
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let f = fs.lookup(&root(), ROOT_ID, &cs("fifo")).unwrap();
    fs.setxattr(&root(), f.inode, &cs("trusted.f"), b"on the fifo", 0)
        .expect("trusted.* on a FIFO");
    match fs.getxattr(&root(), f.inode, &cs("trusted.f"), 64).unwrap() {
        GetxattrReply::Value(v) => assert_eq!(v, b"on the fifo"),
        GetxattrReply::Count(n) => panic!("a count ({n}) for a sized request"),
    }
    assert_eq!(
        errno(fs.getxattr(&root(), f.inode, &cs("user.none"), 64)),
        libc::ENODATA
    );
}

/// xfstests generic/084: with file handles nothing holds a looked-up inode
/// on the host, so once the guest's directory is removed its inode number
/// can name a new directory. The new one must get a node of its own (not
/// the old node, whose handle is stale), and the old node must answer
/// ESTALE rather than act on the new directory.
#[test]
fn a_reused_inode_number_is_a_new_node_with_file_handles() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.inode_file_handles = InodeFileHandles::Prefer;
    // A cached fd keeps its inode, and so its number, alive: without the
    // cache (or once the fd is evicted) nothing does.
    cfg.inode_fd_cache = Some(0);
    let fs = PassthroughFs::new(cfg).unwrap();
    // The host reuses a freed inode number at once on ext4 (the usual
    // /tmp); try a few times where it does not.
    for attempt in 0..64 {
        let old_path = dir.path().join(format!("old{attempt}"));
        std::fs::create_dir(&old_path).unwrap();
        let old = fs
            .lookup(&root(), ROOT_ID, &cs(&format!("old{attempt}")))
            .unwrap();
        let ino = std::fs::metadata(&old_path).unwrap().ino();
        std::fs::remove_dir(&old_path).unwrap();
        let new_path = dir.path().join(format!("new{attempt}"));
        std::fs::create_dir(&new_path).unwrap();
        if std::fs::metadata(&new_path).unwrap().ino() != ino {
            std::fs::remove_dir(&new_path).unwrap();
            continue;
        }
        let new = fs
            .lookup(&root(), ROOT_ID, &cs(&format!("new{attempt}")))
            .unwrap();
        assert!(fs.inodes().get(old.inode).unwrap().held_by_handle());
        assert_ne!(new.inode, old.inode, "the new directory got the old node");
        std::fs::write(new_path.join("f"), b"x").unwrap();
        fs.lookup(&root(), new.inode, &cs("f"))
            .expect("the new directory is usable");
        assert_eq!(
            errno(fs.lookup(&root(), old.inode, &cs("f"))),
            libc::ESTALE,
            "the old node must not reach the new directory"
        );
        return;
    }
    // Not a prerequisite CI can install: the host file system decides.
    eprintln!("SKIP: the host never reused a freed inode number here");
}

/// xfstests generic/099: a FUSE request carries the requester's uid and
/// primary gid only. Where the client kernel checked permissions (virtio-fs,
/// the FUSE mount), access it granted through a supplementary group is
/// served, and what is created is still the requester's; where it did not
/// (9P), the host's check with the ids the request carries stands.
#[test]
fn access_through_a_supplementary_group_is_served_when_the_client_checked() {
    if !common::can_switch_credentials() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (user, group, other_group) = (4242, 4242, 4343);
    let d = dir.path().join("groupdir");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("f"), b"group data").unwrap();
    for p in [&d, &d.join("f")] {
        std::os::unix::fs::chown(p, Some(0), Some(other_group)).unwrap();
    }
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
    std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o060)).unwrap();
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
        mode: 0o644 | libc::S_IFREG,
        umask: 0,
        fuse_flags: 0,
    };
    for client_checks in [false, true] {
        let mut cfg = Config::new(dir.path());
        cfg.client_checks_permissions = client_checks;
        let fs = PassthroughFs::new(cfg).unwrap();
        let caller = ctx(user, group);
        let gd = fs.lookup(&root(), ROOT_ID, &cs("groupdir")).unwrap();
        let looked = fs.lookup(&caller, gd.inode, &cs("f"));
        if !client_checks {
            assert_eq!(errno(looked), libc::EACCES, "9P: the host's check stands");
            continue;
        }
        let f = looked.expect("lookup in a directory searchable through a group");
        let (h, _, _) = fs
            .open(&caller, f.inode, libc::O_RDWR as u32, 0)
            .expect("open through the group");
        fs.release(&caller, f.inode, 0, h.unwrap(), false, false, None)
            .unwrap();
        let (e, h, _, _) = fs
            .create(&caller, gd.inode, &cs("new"), args)
            .expect("create in a directory writable through a group");
        fs.release(&caller, e.inode, 0, h.unwrap(), false, false, None)
            .unwrap();
        let st = std::fs::metadata(d.join("new")).unwrap();
        assert_eq!((st.uid(), st.gid()), (user, group), "the requester's file");
    }
}

/// xfstests generic/688: after a write by someone who does not own a file,
/// the guest kernel asks to remove its file capabilities (killpriv), which
/// Linux does for anyone who may write the file. A writer gets it; someone
/// who may not write does not; other security.* names stay the owner's.
#[test]
fn a_writer_may_have_file_capabilities_removed() {
    if !common::can_switch_credentials() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.xattr = true;
    let fs = PassthroughFs::new(cfg).unwrap();
    // struct vfs_cap_data, revision 2, effective, permitted = CAP_SETUID (7).
    let mut caps = Vec::new();
    for word in [0x0200_0001u32, 1 << 7, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    for (mode, writer_may) in [(0o666, true), (0o644, false)] {
        let path = dir.path().join(format!("f{mode:o}"));
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let p = cs(path.to_str().unwrap());
        // SAFETY: NUL-terminated strings; `caps` is valid for its length.
        let rc = unsafe {
            libc::setxattr(
                p.as_ptr(),
                c"security.capability".as_ptr(),
                caps.as_ptr().cast(),
                caps.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "setting file capabilities on the host");
        let f = fs
            .lookup(&root(), ROOT_ID, &cs(&format!("f{mode:o}")))
            .unwrap();
        let user = ctx(4242, 4242);
        let r = fs.removexattr(&user, f.inode, &cs("security.capability"));
        // SAFETY: NUL-terminated strings; a size query.
        let left = unsafe {
            libc::getxattr(
                p.as_ptr(),
                c"security.capability".as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        if writer_may {
            r.expect("a writer has the capabilities removed");
            assert!(left < 0, "removed on the host");
        } else {
            assert_eq!(errno(r), libc::EPERM, "not a writer");
            assert!(left > 0, "still there");
        }
        assert_eq!(
            errno(fs.removexattr(&user, f.inode, &cs("security.other"))),
            libc::EPERM,
            "other security.* names are not the writer's to remove"
        );
    }
}

/// A tree for [`guest_session`], made on the host as root: directories a
/// guest user may search and read (`pub`, `pub/sub`, `pub/sub/deeper`),
/// one it may write (`shared`, 0777), one it may not enter (`priv`, 0700)
/// and one it may search but not list (`xonly`, 0711).
fn guest_tree(root: &std::path::Path) {
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), PermissionsExt::from_mode(m)).unwrap();
    };
    std::fs::create_dir_all(root.join("pub/sub/deeper")).unwrap();
    std::fs::write(root.join("pub/sub/file"), b"data").unwrap();
    std::fs::write(root.join("pub/sub/deeper/leaf"), b"leaf!").unwrap();
    std::fs::write(root.join("pub/ro"), b"x").unwrap();
    std::os::unix::fs::symlink("sub/file", root.join("pub/link")).unwrap();
    std::fs::create_dir(root.join("shared")).unwrap();
    std::fs::create_dir(root.join("priv")).unwrap();
    std::fs::write(root.join("priv/secret"), b"s").unwrap();
    std::fs::create_dir(root.join("xonly")).unwrap();
    std::fs::write(root.join("xonly/f"), b"f").unwrap();
    for (p, m) in [
        ("", 0o755),
        ("pub", 0o755),
        ("pub/sub", 0o755),
        ("pub/sub/deeper", 0o755),
        ("pub/sub/file", 0o644),
        ("pub/sub/deeper/leaf", 0o644),
        ("pub/ro", 0o600),
        ("shared", 0o777),
        ("priv", 0o700),
        ("priv/secret", 0o644),
        ("xonly", 0o711),
        ("xonly/f", 0o644),
    ] {
        mode(p, m);
    }
}

/// A request's outcome as a line of a transcript: what it returned (no
/// node ids or inode numbers, which differ between shares) or its errno.
fn outcome<T>(what: &str, r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    let name = |n| match n {
        libc::EACCES => "EACCES".to_string(),
        libc::EPERM => "EPERM".to_string(),
        libc::ENOENT => "ENOENT".to_string(),
        libc::EEXIST => "EEXIST".to_string(),
        n => format!("errno {n}"),
    };
    match r {
        Ok(v) => format!("{what}: ok {}", ok(v)),
        Err(e) => format!("{what}: {}", e.raw_os_error().map_or("?".into(), name)),
    }
}

/// Runs, as the guest user `user`, lookups, getattrs, opens, reads, listings
/// and every kind of creation and removal over [`guest_tree`] below the
/// first level (in directories held by file handles when `fs` holds
/// inodes that way), and returns the transcript. Also checks that the
/// serving thread is root again after every request. The share's root is
/// looked up (as root) first, as a guest mounting the share does.
fn guest_session(
    fs: &PassthroughFs,
    user: &fuse_backend_rs::api::filesystem::Context,
) -> Vec<String> {
    use std::ffi::CString;
    let mut t = Vec::new();
    fs.lookup(&root(), ROOT_ID, &cs(".")).unwrap();
    let back_to_root = || {
        // SAFETY: geteuid/getegid cannot fail.
        let ids = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(
            ids,
            (0, 0),
            "the thread must be the daemon between requests"
        );
    };
    // Each path looked up as `user` in its parent's node; the nodes found.
    let mut nodes = std::collections::HashMap::<String, u64>::new();
    nodes.insert(String::new(), ROOT_ID);
    for path in [
        "pub",
        "pub/sub",
        "pub/sub/file",
        "pub/sub/deeper",
        "pub/sub/deeper/leaf",
        "pub/ro",
        "pub/link",
        "shared",
        "priv",
        "priv/secret",
        "xonly",
        "xonly/f",
    ] {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(&pnode) = nodes.get(parent) else {
            t.push(format!("lookup {path}: parent not found"));
            continue;
        };
        let r = fs.lookup(user, pnode, &cs(name));
        back_to_root();
        if let Ok(e) = &r {
            nodes.insert(path.to_string(), e.inode);
        }
        t.push(outcome(&format!("lookup {path}"), r, |e| {
            format!(
                "size {} mode {:o} uid {}",
                e.attr.st_size, e.attr.st_mode, e.attr.st_uid
            )
        }));
    }
    let node = |p: &str| nodes.get(p).copied().unwrap_or(u64::MAX);
    for (path, name) in [
        ("pub/sub", ".."),
        ("pub/sub", "."),
        ("pub/sub/deeper", ".."),
    ] {
        let r = fs.lookup(user, node(path), &cs(name));
        back_to_root();
        let up = path.rsplit_once('/').map_or("", |(p, _)| p);
        let want = if name == "." { node(path) } else { node(up) };
        t.push(outcome(&format!("lookup {path}/{name}"), r, |e| {
            format!("expected node {}", e.inode == want)
        }));
    }
    for path in ["pub/sub", "pub/sub/file", "pub/sub/deeper/leaf"] {
        let r = fs.getattr(user, node(path), None);
        t.push(outcome(&format!("getattr {path}"), r, |(st, _)| {
            format!("size {} mode {:o}", st.st_size, st.st_mode)
        }));
    }
    // Opens and reads.
    for (path, flags) in [
        ("pub/sub/file", libc::O_RDONLY),
        ("pub/sub/deeper/leaf", libc::O_RDONLY),
        ("pub/sub/file", libc::O_WRONLY),
        ("pub/ro", libc::O_RDONLY),
    ] {
        let r = fs.open(user, node(path), flags as u32, 0);
        back_to_root();
        t.push(outcome(&format!("open {path} {flags}"), r, |(h, _, _)| {
            let h = h.unwrap();
            let mut data = Vec::new();
            if flags == libc::O_RDONLY {
                fs.read(
                    user,
                    node(path),
                    h,
                    &mut VecWriter::new(&mut data),
                    64,
                    0,
                    None,
                    0,
                )
                .unwrap();
            }
            fs.release(user, node(path), 0, h, false, false, None)
                .unwrap();
            String::from_utf8_lossy(&data).into_owned()
        }));
    }
    // Listings, plain and with attributes.
    let list = |t: &mut Vec<String>, path: &str, plus: bool| {
        let dir = node(path);
        let r = fs.opendir(user, dir, 0);
        back_to_root();
        let what = format!("{} {path}", if plus { "readdirplus" } else { "readdir" });
        let r = r.and_then(|(h, _)| {
            let h = h.unwrap();
            let mut names = Vec::new();
            let r = if plus {
                fs.readdirplus(user, dir, h, 4096, 0, &mut |d, e| {
                    let name = String::from_utf8_lossy(d.name).into_owned();
                    // Sizes of regular files only: a directory's is the
                    // host file system's business.
                    if e.inode != 0 && e.attr.st_mode & libc::S_IFMT == libc::S_IFREG {
                        names.push(format!("{name}={}", e.attr.st_size));
                    } else {
                        names.push(name);
                    }
                    Ok(1)
                })
            } else {
                fs.readdir(user, dir, h, 4096, 0, &mut |d| {
                    names.push(String::from_utf8_lossy(d.name).into_owned());
                    Ok(1)
                })
            };
            back_to_root();
            fs.releasedir(user, dir, 0, h).unwrap();
            names.sort();
            r.map(|()| names.join(","))
        });
        t.push(outcome(&what, r, |s| s));
    };
    for path in ["pub/sub", "pub/sub/deeper", "priv", "xonly"] {
        list(&mut t, path, false);
        list(&mut t, path, true);
    }
    t.push(outcome(
        "readlink pub/link",
        fs.readlink(user, node("pub/link")),
        |l| String::from_utf8_lossy(&l).into_owned(),
    ));
    for (path, mask) in [
        ("pub/sub", libc::R_OK | libc::X_OK),
        ("pub/sub", libc::W_OK),
    ] {
        let r = fs.access(user, node(path), mask as u32);
        back_to_root();
        t.push(outcome(&format!("access {path} {mask}"), r, |()| {
            String::new()
        }));
    }
    t.push(outcome(
        "statfs pub/sub",
        fs.statfs(user, node("pub/sub")),
        |_| String::new(),
    ));
    // Creation, in a directory the user may write and in one it may not.
    let args = |flags: libc::c_int| CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | flags) as u32,
        mode: 0o644 | libc::S_IFREG,
        umask: 0,
        fuse_flags: 0,
    };
    let mut created = std::collections::HashMap::<String, u64>::new();
    for (path, flags) in [
        ("pub/sub/new", libc::O_EXCL),
        ("shared/new", libc::O_EXCL),
        ("shared/new", 0),
        ("shared/new", libc::O_EXCL),
    ] {
        let (parent, name) = path.rsplit_once('/').unwrap();
        let r = fs.create(user, node(parent), &cs(name), args(flags));
        back_to_root();
        t.push(outcome(
            &format!("create {path} {flags}"),
            r,
            |(e, h, _, _)| {
                fs.release(user, e.inode, 0, h.unwrap(), false, false, None)
                    .unwrap();
                let again = created.insert(path.to_string(), e.inode).is_some();
                format!("uid {} gid {} again {again}", e.attr.st_uid, e.attr.st_gid)
            },
        ));
    }
    for (parent, name) in [("pub/sub", "d"), ("shared", "d")] {
        let r = fs.mkdir(user, node(parent), &cs(name), 0o755, 0);
        back_to_root();
        if let Ok(e) = &r {
            created.insert(format!("{parent}/{name}"), e.inode);
        }
        t.push(outcome(&format!("mkdir {parent}/{name}"), r, |e| {
            format!("uid {} gid {}", e.attr.st_uid, e.attr.st_gid)
        }));
    }
    let made = |p: &str| created.get(p).copied().unwrap_or(u64::MAX);
    // Below a directory the user made (also held by a handle).
    let r = fs.mkdir(user, made("shared/d"), &cs("e"), 0o700, 0);
    back_to_root();
    t.push(outcome("mkdir shared/d/e", r, |e| {
        format!("uid {}", e.attr.st_uid)
    }));
    let r = fs.symlink(user, &cs("../new"), made("shared/d"), &cs("s"));
    back_to_root();
    t.push(outcome("symlink shared/d/s", r, |e| {
        format!("uid {}", e.attr.st_uid)
    }));
    let r = fs.mknod(
        user,
        made("shared/d"),
        &cs("fifo"),
        libc::S_IFIFO | 0o644,
        0,
        0,
    );
    back_to_root();
    t.push(outcome("mknod shared/d/fifo", r, |e| {
        format!("uid {}", e.attr.st_uid)
    }));
    let r = fs.link(user, made("shared/new"), made("shared/d"), &cs("hard"));
    back_to_root();
    t.push(outcome("link shared/d/hard", r, |e| {
        format!("nlink {}", e.attr.st_nlink)
    }));
    let r = fs.link(
        user,
        node("pub/sub/file"),
        node("pub/sub/deeper"),
        &cs("hard"),
    );
    back_to_root();
    t.push(outcome("link pub/sub/deeper/hard", r, |_| String::new()));
    let r = fs.rename(
        user,
        made("shared/d"),
        &cs("hard"),
        node("shared"),
        &cs("moved"),
        0,
    );
    back_to_root();
    t.push(outcome("rename shared/d/hard", r, |()| String::new()));
    let r = fs.rename(
        user,
        node("pub/sub"),
        &cs("file"),
        node("shared"),
        &cs("stolen"),
        0,
    );
    back_to_root();
    t.push(outcome("rename pub/sub/file", r, |()| String::new()));
    // Attributes and extended attributes.
    for (path, n) in [
        ("shared/new", made("shared/new")),
        ("pub/sub/file", node("pub/sub/file")),
    ] {
        // SAFETY: stat64 is plain data.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_mode = 0o600;
        attr.st_size = 2;
        let r = fs.setattr(user, n, attr, None, SetattrValid::MODE | SetattrValid::SIZE);
        back_to_root();
        t.push(outcome(&format!("setattr {path}"), r, |(st, _)| {
            format!("mode {:o} size {}", st.st_mode, st.st_size)
        }));
        let r = fs.setxattr(user, n, &cs("user.k"), b"v", 0);
        back_to_root();
        t.push(outcome(&format!("setxattr {path}"), r, |()| String::new()));
        let r = fs.getxattr(user, n, &cs("user.k"), 16);
        back_to_root();
        t.push(outcome(&format!("getxattr {path}"), r, |v| match v {
            GetxattrReply::Value(v) => String::from_utf8_lossy(&v).into_owned(),
            GetxattrReply::Count(n) => n.to_string(),
        }));
    }
    // Removal.
    for (parent, name, dir) in [
        ("shared/d", "fifo", false),
        ("shared/d", "s", false),
        ("shared/d", "e", true),
        ("pub/sub", "file", false),
        ("pub/sub", "deeper", true),
        ("priv", "secret", false),
    ] {
        let p = match created.get(parent) {
            Some(n) => *n,
            None => node(parent),
        };
        let name_c: CString = cs(name);
        let r = if dir {
            fs.rmdir(user, p, &name_c)
        } else {
            fs.unlink(user, p, &name_c)
        };
        back_to_root();
        t.push(outcome(&format!("remove {parent}/{name}"), r, |()| {
            String::new()
        }));
    }
    list(&mut t, "shared", true);
    t
}

/// With inodes held by file handles, a guest user's requests below the
/// share's first level must behave exactly as with one `O_PATH` fd per
/// inode: reopening a directory by its handle needs CAP_DAC_READ_SEARCH,
/// which a thread acting as a guest user does not have, so it must be done
/// with the daemon's own credentials (issue 15: lookups failed EPERM), and
/// everything the request then does must still be checked with the user's
/// ids (`priv` stays closed, root's files stay root's).
#[test]
fn guest_users_get_the_same_answers_with_file_handles_as_with_fds() {
    if !can_switch_credentials() {
        return;
    }
    for user in [common::ctx(1000, 1000), common::ctx(65534, 65534)] {
        for client_checks in [false, true] {
            let run = |handles| {
                let dir = tempfile::tempdir().unwrap();
                guest_tree(dir.path());
                let mut cfg = Config::new(dir.path());
                cfg.inode_file_handles = handles;
                cfg.xattr = true;
                cfg.client_checks_permissions = client_checks;
                let fs = PassthroughFs::new(cfg).unwrap();
                let t = guest_session(&fs, &user);
                if handles == InodeFileHandles::Prefer {
                    let sub = walk(&fs, "pub/sub").unwrap();
                    assert!(
                        fs.inodes().get(sub.inode).unwrap().held_by_handle(),
                        "Prefer fell back to an fd: the test's file system has no handles"
                    );
                }
                t
            };
            let with_fds = run(InodeFileHandles::Never);
            let with_handles = run(InodeFileHandles::Prefer);
            let ctx = format!("uid {} client_checks {client_checks}", user.uid);
            for (fd_line, handle_line) in with_fds.iter().zip(&with_handles) {
                assert_eq!(handle_line, fd_line, "{ctx}: with handles vs with fds");
            }
            assert_eq!(with_handles.len(), with_fds.len(), "{ctx}");
            // The user's permissions still hold, and what it makes is its own.
            let me = format!("uid {} gid {}", user.uid, user.gid);
            let expect = [
                "lookup pub/sub/deeper/leaf: ok size 5 mode 100644 uid 0".to_string(),
                format!("open pub/sub/file {}: ok data", libc::O_RDONLY),
                "readdir pub/sub: ok .,..,deeper,file".to_string(),
                "readdirplus pub/sub: ok .,..,deeper,file=4".to_string(),
                format!("create shared/new {}: ok {me} again false", libc::O_EXCL),
                format!("create shared/new 0: ok {me} again true"),
                format!("mkdir shared/d: ok {me}"),
                format!("mkdir shared/d/e: ok uid {}", user.uid),
                "link shared/d/hard: ok nlink 2".to_string(),
                "setattr shared/new: ok mode 100600 size 2".to_string(),
                "getxattr shared/new: ok v".to_string(),
                "remove shared/d/e: ok ".to_string(),
            ];
            for line in &expect {
                assert!(
                    with_handles.contains(line),
                    "{ctx}: no {line:?} in\n{}",
                    with_handles.join("\n")
                );
            }
            // Refused as the user. (Where the client kernel checks
            // permissions, a request refused with EACCES runs again with
            // the DAC override, with fds as with handles.)
            let refused = [
                "lookup priv/secret",
                "readdir priv",
                "readdir xonly",
                "create pub/sub/new 128",
                "mkdir pub/sub/d",
                "link pub/sub/deeper/hard",
                "setattr pub/sub/file",
            ];
            for what in refused {
                let line = with_handles
                    .iter()
                    .find(|l| l.starts_with(&format!("{what}: ")))
                    .unwrap_or_else(|| panic!("{ctx}: no {what}"));
                if !client_checks || what == "setattr pub/sub/file" {
                    assert!(!line.starts_with(&format!("{what}: ok")), "{ctx}: {line}");
                } else if what == "lookup priv/secret" {
                    assert!(line.starts_with(&format!("{what}: ok")), "{ctx}: {line}");
                }
            }
        }
    }
}

const SUBMOUNT_CHILD: &str = "a_guest_user_looks_up_a_submount_it_may_not_read_with_file_handles";

/// With file handles, the first lookup of a host submount's root opens that
/// directory to resolve the submount's handles. That fd is the daemon's,
/// opened with its ids: a guest user who may search the parent but not
/// read the submount's root (mode 0700, root's) still looks it up, as with
/// fds, and still cannot look inside it.
#[test]
fn a_guest_user_looks_up_a_submount_it_may_not_read_with_file_handles() {
    if !can_switch_credentials() {
        return;
    }
    if !is_child(SUBMOUNT_CHILD) {
        return run_in_child(SUBMOUNT_CHILD);
    }
    // A mount namespace of this child's own: the tmpfs goes with it.
    // SAFETY: plain syscalls; the strings are NUL-terminated.
    let private = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
    };
    if !private {
        assert!(std::env::var_os("CI").is_none(), "CI may mount");
        eprintln!(
            "SKIP: no mount namespace: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("pub/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for p in [dir.path(), &dir.path().join("pub")] {
        std::fs::set_permissions(p, PermissionsExt::from_mode(0o755)).unwrap();
    }
    let target = cs(mnt.to_str().unwrap());
    // SAFETY: NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
    std::fs::write(mnt.join("f"), b"x").unwrap();
    let user = common::ctx(1000, 1000);
    for handles in [InodeFileHandles::Never, InodeFileHandles::Prefer] {
        let mut cfg = Config::new(dir.path());
        cfg.inode_file_handles = handles;
        let fs = PassthroughFs::new(cfg).unwrap();
        let sub = fs.lookup(&user, ROOT_ID, &cs("pub")).unwrap();
        let root_of_mount = fs
            .lookup(&user, sub.inode, &cs("mnt"))
            .unwrap_or_else(|e| panic!("{handles:?}: lookup of the submount as uid 1000: {e}"));
        assert_eq!(root_of_mount.attr_flags & 1, 1, "announced as a submount");
        assert_eq!(
            errno(fs.lookup(&user, root_of_mount.inode, &cs("f"))),
            libc::EACCES,
            "{handles:?}: the user may not search the submount's root"
        );
        let f = fs.lookup(&root(), root_of_mount.inode, &cs("f")).unwrap();
        if handles == InodeFileHandles::Prefer {
            for node in [root_of_mount.inode, f.inode] {
                assert!(
                    fs.inodes().get(node).unwrap().held_by_handle(),
                    "tmpfs exports file handles"
                );
            }
        }
    }
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::umount(target.as_ptr()) }, 0);
}

/// A missing name is a negative entry the FUSE client may cache for the
/// entry timeout, where the front end asks for them and the policy caches
/// at all; otherwise (9P, `cache=never`) it stays ENOENT.
#[test]
fn missing_names_are_negative_entries_for_fuse_clients_that_cache() {
    use passthrough::CachePolicy;
    let dir = tempfile::tempdir().unwrap();
    for (negative, cache, expect) in [
        (true, CachePolicy::Auto, Some(Duration::from_secs(1))),
        (true, CachePolicy::Always, Some(Duration::from_secs(86400))),
        (true, CachePolicy::Never, None),
        (false, CachePolicy::Always, None),
    ] {
        let mut cfg = Config::new(dir.path());
        cfg.negative_entries = negative;
        cfg.cache = cache;
        let fs = PassthroughFs::new(cfg).unwrap();
        let r = fs.lookup(&root(), ROOT_ID, &cs("missing"));
        match expect {
            Some(timeout) => {
                let e = r.unwrap_or_else(|e| panic!("{negative} {cache:?}: {e}"));
                assert_eq!((e.inode, e.entry_timeout), (0, timeout));
                assert_eq!(fs.inodes().len(), 1, "no node made");
            }
            None => assert_eq!(errno(r), libc::ENOENT, "{negative} {cache:?}"),
        }
        // Other errors stay errors.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let f = fs.lookup(&root(), ROOT_ID, &cs("file")).unwrap();
        assert_eq!(errno(fs.lookup(&root(), f.inode, &cs("x"))), libc::ENOTDIR);
    }
}

const KNOWN_CHILD: &str = "a_known_name_is_looked_up_again_without_opening_it";

/// A lookup of a name the guest already holds (what the kernel sends when
/// a cached entry times out) finds its node with a stat, in both modes: one
/// more lookup counted, no fd opened, the same attributes.
#[test]
fn a_known_name_is_looked_up_again_without_opening_it() {
    if !is_child(KNOWN_CHILD) {
        return run_in_child(KNOWN_CHILD);
    }
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    for mode in [InodeFileHandles::Never, InodeFileHandles::Prefer] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let mut cfg = Config::new(dir.path());
        cfg.inode_file_handles = mode;
        let fs = PassthroughFs::new(cfg).unwrap();
        for name in ["f", "d"] {
            let first = fs.lookup(&root(), ROOT_ID, &cs(name)).unwrap();
            let fds = open_fds();
            let opened = fs.names_opened();
            for _ in 0..50 {
                let again = fs.lookup(&root(), ROOT_ID, &cs(name)).unwrap();
                assert_eq!(again.inode, first.inode, "{mode:?} {name}");
                assert_eq!(again.attr.st_ino, first.attr.st_ino);
                assert_eq!(again.attr.st_size, first.attr.st_size);
            }
            assert_eq!(open_fds(), fds, "{mode:?} {name}: fds left open");
            assert_eq!(fs.names_opened(), opened, "{mode:?} {name}: names opened");
            let data = fs.inodes().get(first.inode).unwrap();
            assert_eq!(data.lookup_count(), 51, "{mode:?} {name}");
        }
        // Replaced on the host by another object: a new node, not the old.
        let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
        std::fs::remove_file(dir.path().join("f")).unwrap();
        std::fs::create_dir(dir.path().join("f")).unwrap();
        let now = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
        assert_ne!(now.inode, f.inode, "{mode:?}: the old file's node");
        assert_eq!(now.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
        // Gone: ENOENT.
        std::fs::remove_dir(dir.path().join("f")).unwrap();
        assert_eq!(errno(fs.lookup(&root(), ROOT_ID, &cs("f"))), libc::ENOENT);
    }
}

/// The inode mode a daemon settles on before its walls go up: handles
/// where they work and may be reopened, else fds for `prefer` and an error
/// for `mandatory`.
#[test]
fn file_handles_are_resolved_before_the_walls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    assert_eq!(
        cfg.resolve_file_handles(false).unwrap(),
        InodeFileHandles::Never
    );
    cfg.inode_file_handles = InodeFileHandles::Never;
    assert_eq!(
        cfg.resolve_file_handles(true).unwrap(),
        InodeFileHandles::Never
    );
    cfg.inode_file_handles = InodeFileHandles::Mandatory;
    assert!(cfg.resolve_file_handles(false).is_err());
    cfg.inode_file_handles = InodeFileHandles::Prefer;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            cfg.resolve_file_handles(true).unwrap(),
            InodeFileHandles::Prefer,
            "root on the temporary directory's file system"
        );
    }
}

/// A core over a fresh directory (searchable by guest users) with
/// `--killpriv-v2` as `killpriv_v2`, initialised by a guest that offers
/// FUSE_HANDLE_KILLPRIV_V2 or not (`guest_offers`).
fn killpriv_fs(killpriv_v2: bool, guest_offers: bool) -> (tempfile::TempDir, PassthroughFs) {
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.killpriv_v2 = killpriv_v2;
    let fs = PassthroughFs::new(cfg).unwrap();
    let mut offered = FsOptions::all();
    offered.set(FsOptions::HANDLE_KILLPRIV_V2, guest_offers);
    let got = fs.init(offered).unwrap();
    assert_eq!(
        got.contains(FsOptions::HANDLE_KILLPRIV_V2),
        killpriv_v2 && guest_offers,
        "negotiated only when both want it"
    );
    (dir, fs)
}

/// Makes `dir/name` with some data, owned by `uid` (and group `uid`),
/// with `mode` (set after the chown, which would drop set-id bits).
fn setid_file(dir: &std::path::Path, name: &str, uid: u32, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, b"old data").unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&path, PermissionsExt::from_mode(mode)).unwrap();
    path
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Gives `path` file capabilities on the host (a v2 `vfs_cap_data`:
/// effective, permitted = CAP_SETUID); false, saying why, where the file
/// system refuses them.
fn set_file_caps(path: &std::path::Path) -> bool {
    let mut caps = Vec::new();
    for word in [0x0200_0001u32, 1 << 7, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    let p = cs(path.to_str().unwrap());
    // SAFETY: NUL-terminated strings; `caps` is valid for its length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"security.capability".as_ptr(),
            caps.as_ptr().cast(),
            caps.len(),
            0,
        )
    };
    if rc != 0 {
        eprintln!(
            "SKIP (file capabilities part): the host refuses security.capability: {}",
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}

fn has_file_caps(path: &std::path::Path) -> bool {
    let p = cs(path.to_str().unwrap());
    // SAFETY: NUL-terminated strings; a size query writes nothing.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// WRITE of `data` at 0 through `handle` with `write_flags`.
fn write_flagged(
    fs: &PassthroughFs,
    node: u64,
    handle: u64,
    data: &[u8],
    write_flags: u32,
) -> std::io::Result<usize> {
    let mut r = SliceReader::new(data);
    fs.write(
        &ctx(4242, 4242),
        node,
        handle,
        &mut r,
        data.len() as u32,
        0,
        None,
        false,
        0,
        write_flags,
    )
}

/// SETATTR of the size to 2 with `valid` added, by `who`.
fn truncate_flagged(
    fs: &PassthroughFs,
    who: &fuse_backend_rs::api::filesystem::Context,
    node: u64,
    handle: Option<u64>,
    valid: SetattrValid,
) -> std::io::Result<()> {
    // SAFETY: stat64 is plain data.
    let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
    attr.st_size = 2;
    fs.setattr(who, node, attr, handle, SetattrValid::SIZE | valid)
        .map(drop)
}

/// The core offers FUSE_HANDLE_KILLPRIV_V2 only with `--killpriv-v2`, and
/// it is in force only when the guest offers it too.
#[test]
fn killpriv_v2_is_negotiated_only_when_configured_and_offered() {
    for (configured, offered) in [(false, false), (false, true), (true, false), (true, true)] {
        // killpriv_fs asserts the outcome of INIT.
        drop(killpriv_fs(configured, offered));
    }
}

/// HANDLE_KILLPRIV_V2: a WRITE with FUSE_WRITE_KILL_SUIDGID (a guest
/// writer without CAP_FSETID) drops S_ISUID, S_ISGID where S_IXGRP is set
/// (not the mandatory-locking S_ISGID), and the file capabilities: the
/// daemon writes with CAP_FSETID, so the host would keep the bits. A WRITE
/// without the flag (a privileged writer) keeps them.
#[test]
fn killpriv_v2_write_with_the_kill_flag_drops_set_id_bits_and_capabilities() {
    use fuse_backend_rs::abi::fuse_abi::WRITE_KILL_PRIV;
    if !can_switch_credentials() {
        return;
    }
    let (dir, fs) = killpriv_fs(true, true);
    let user = ctx(4242, 4242);
    for (name, mode, flags, after) in [
        ("prog", 0o6755, WRITE_KILL_PRIV, 0o755),
        ("lockmark", 0o6745, WRITE_KILL_PRIV, 0o2745),
        ("privileged", 0o6755, 0, 0o6755),
    ] {
        let path = setid_file(dir.path(), name, 4242, mode);
        let caps = set_file_caps(&path);
        let node = fs.lookup(&user, ROOT_ID, &cs(name)).unwrap().inode;
        let (h, _, _) = fs.open(&user, node, libc::O_RDWR as u32, 0).unwrap();
        let h = h.unwrap();
        assert_eq!(write_flagged(&fs, node, h, b"new", flags).unwrap(), 3);
        assert_eq!(mode_of(&path), after, "{name}: mode after the write");
        if caps && flags != 0 {
            assert!(!has_file_caps(&path), "{name}: capabilities removed");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"new data", "{name}");
        fs.release(&user, node, 0, h, false, false, None).unwrap();
    }
    // Through a handle that cannot write, a flagged WRITE fails and drops
    // nothing.
    let path = setid_file(dir.path(), "readonly", 4242, 0o6755);
    let node = fs.lookup(&user, ROOT_ID, &cs("readonly")).unwrap().inode;
    let (h, _, _) = fs.open(&user, node, libc::O_RDONLY as u32, 0).unwrap();
    assert_eq!(
        errno(write_flagged(
            &fs,
            node,
            h.unwrap(),
            b"new",
            WRITE_KILL_PRIV
        )),
        libc::EBADF
    );
    assert_eq!(mode_of(&path), 0o6755, "nothing dropped");
}

/// HANDLE_KILLPRIV_V2: a SETATTR of the size with FATTR_KILL_SUIDGID
/// drops the set-id bits and capabilities, with or without a handle, also
/// for a requester whose ids leave it CAP_FSETID on the host (a guest
/// root without CAP_FSETID, uid 0); through a read-only handle the
/// truncate fails and nothing is dropped. Without the flag they stay.
#[test]
fn killpriv_v2_setattr_size_with_kill_suidgid_drops_set_id_bits() {
    if !can_switch_credentials() {
        return;
    }
    let (dir, fs) = killpriv_fs(true, true);
    let kill = SetattrValid::KILL_SUIDGID;
    for (who, uid) in [(root(), 0), (ctx(4242, 4242), 4242)] {
        for (name, open, valid, after) in [
            ("path", None, kill, 0o755),
            ("handle", Some(libc::O_RDWR), kill, 0o755),
            ("privileged", None, SetattrValid::empty(), 0o6755),
        ] {
            let name = format!("{name}{uid}");
            let path = setid_file(dir.path(), &name, uid, 0o6755);
            let caps = set_file_caps(&path);
            let node = fs.lookup(&who, ROOT_ID, &cs(&name)).unwrap().inode;
            let h = open.map(|f| fs.open(&who, node, f as u32, 0).unwrap().0.unwrap());
            truncate_flagged(&fs, &who, node, h, valid).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 2, "{name}");
            if uid == 0 || !valid.is_empty() {
                // (A guest user's truncate drops S_ISUID on the host anyway.)
                assert_eq!(mode_of(&path), after, "{name}: mode after the truncate");
            }
            if caps && !valid.is_empty() {
                assert!(!has_file_caps(&path), "{name}: capabilities removed");
            }
            if let Some(h) = h {
                fs.release(&who, node, 0, h, false, false, None).unwrap();
            }
        }
    }
    let path = setid_file(dir.path(), "readonly", 0, 0o6755);
    let node = fs.lookup(&root(), ROOT_ID, &cs("readonly")).unwrap().inode;
    let (h, _, _) = fs.open(&root(), node, libc::O_RDONLY as u32, 0).unwrap();
    assert!(truncate_flagged(&fs, &root(), node, h, kill).is_err());
    assert_eq!(mode_of(&path), 0o6755, "nothing dropped");
}

/// HANDLE_KILLPRIV_V2: an OPEN, or a CREATE of an existing file, with
/// O_TRUNC and FUSE_OPEN_KILL_SUIDGID drops the set-id bits and
/// capabilities (also for a guest root without CAP_FSETID, uid 0); without
/// O_TRUNC or without the flag they stay, and a CREATE that makes the file
/// keeps the mode it asked for.
#[test]
fn killpriv_v2_open_with_o_trunc_and_kill_suidgid_drops_set_id_bits() {
    use fuse_backend_rs::abi::fuse_abi::FOPEN_IN_KILL_SUIDGID;
    if !can_switch_credentials() {
        return;
    }
    let (dir, fs) = killpriv_fs(true, true);
    let trunc = libc::O_RDWR | libc::O_TRUNC;
    for (who, uid) in [(root(), 0), (ctx(4242, 4242), 4242)] {
        for (name, flags, fuse_flags, after) in [
            ("trunc", trunc, FOPEN_IN_KILL_SUIDGID, 0o755),
            ("notrunc", libc::O_RDWR, FOPEN_IN_KILL_SUIDGID, 0o6755),
            ("privileged", trunc, 0, 0o6755),
        ] {
            let name = format!("{name}{uid}");
            let path = setid_file(dir.path(), &name, uid, 0o6755);
            let caps = set_file_caps(&path);
            let node = fs.lookup(&who, ROOT_ID, &cs(&name)).unwrap().inode;
            let (h, _, _) = fs.open(&who, node, flags as u32, fuse_flags).unwrap();
            // (A guest user's O_TRUNC drops the bits on the host anyway.)
            let host_drops = uid != 0 && flags & libc::O_TRUNC != 0;
            if !host_drops || fuse_flags != 0 {
                assert_eq!(mode_of(&path), after, "{name}: mode after the open");
            }
            if caps && after == 0o755 {
                assert!(!has_file_caps(&path), "{name}: capabilities removed");
            }
            fs.release(&who, node, 0, h.unwrap(), false, false, None)
                .unwrap();
        }
        // CREATE of an existing file.
        let name = format!("existing{uid}");
        let path = setid_file(dir.path(), &name, uid, 0o6755);
        let caps = set_file_caps(&path);
        let mut args = create_args(trunc);
        args.fuse_flags = FOPEN_IN_KILL_SUIDGID;
        let (e, h, _, _) = fs.create(&who, ROOT_ID, &cs(&name), args).unwrap();
        assert_eq!(mode_of(&path), 0o755, "{name}: mode after the create");
        if caps {
            assert!(!has_file_caps(&path), "{name}: capabilities removed");
        }
        fs.release(&who, e.inode, 0, h.unwrap(), false, false, None)
            .unwrap();
        fs.forget(&who, e.inode, 1);
    }
    // CREATE that makes the file: nothing is truncated, the mode stays.
    let mut args = create_args(trunc);
    args.mode = libc::S_IFREG | 0o6755;
    args.fuse_flags = FOPEN_IN_KILL_SUIDGID;
    let (e, h, _, _) = fs.create(&root(), ROOT_ID, &cs("new"), args).unwrap();
    assert_eq!(mode_of(&dir.path().join("new")), 0o6755, "a new file");
    fs.release(&root(), e.inode, 0, h.unwrap(), false, false, None)
        .unwrap();
}

/// Unless HANDLE_KILLPRIV_V2 was negotiated (not configured, or not
/// offered by the guest), the kill flags mean nothing, as before: WRITE,
/// SETATTR and OPEN by a guest root keep the set-id bits.
#[test]
fn killpriv_v2_kill_flags_are_ignored_unless_negotiated() {
    use fuse_backend_rs::abi::fuse_abi::{FOPEN_IN_KILL_SUIDGID, WRITE_KILL_PRIV};
    if !can_switch_credentials() {
        return;
    }
    for (configured, offered) in [(false, true), (true, false)] {
        let (dir, fs) = killpriv_fs(configured, offered);
        let path = setid_file(dir.path(), "w", 0, 0o6755);
        let node = fs.lookup(&root(), ROOT_ID, &cs("w")).unwrap().inode;
        let (h, _, _) = fs.open(&root(), node, libc::O_RDWR as u32, 0).unwrap();
        write_flagged(&fs, node, h.unwrap(), b"new", WRITE_KILL_PRIV).unwrap();
        assert_eq!(mode_of(&path), 0o6755, "write ({configured}, {offered})");
        truncate_flagged(&fs, &root(), node, h, SetattrValid::KILL_SUIDGID).unwrap();
        assert_eq!(mode_of(&path), 0o6755, "setattr ({configured}, {offered})");
        let trunc = (libc::O_RDWR | libc::O_TRUNC) as u32;
        let (h2, _, _) = fs
            .open(&root(), node, trunc, FOPEN_IN_KILL_SUIDGID)
            .unwrap();
        assert_eq!(mode_of(&path), 0o6755, "open ({configured}, {offered})");
        for h in [h, h2] {
            fs.release(&root(), node, 0, h.unwrap(), false, false, None)
                .unwrap();
        }
    }
}

/// Where the map of [`killpriv_mapped_fs`] keeps the guest's file
/// capabilities on the host.
const MAPPED_CAPS: &str = "user.virtiofs.security.capability";

/// Gives `path` guest file capabilities under [`MAPPED_CAPS`]; false,
/// saying why, where the file system has no user xattrs.
fn set_mapped_caps(path: &std::path::Path) -> bool {
    let mut caps = Vec::new();
    for word in [0x0200_0001u32, 1 << 7, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    set_host_xattr(path, MAPPED_CAPS, &caps)
}

fn has_mapped_caps(path: &std::path::Path) -> bool {
    host_xattr(path, MAPPED_CAPS).is_ok_and(|v| !v.is_empty())
}

/// A core over `dir` with `--killpriv-v2` negotiated and an xattr map
/// that keeps the guest's security.* names under user.virtiofs.*.
fn killpriv_mapped_fs(dir: &std::path::Path) -> PassthroughFs {
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    let mut cfg = Config::new(dir);
    cfg.xattr = true;
    cfg.killpriv_v2 = true;
    cfg.xattrmap = Some(Arc::new(
        passthrough::XattrMap::parse(":prefix:all:security.:user.virtiofs.::bad:all:::").unwrap(),
    ));
    let fs = PassthroughFs::new(cfg).unwrap();
    assert!(fs
        .init(FsOptions::all())
        .unwrap()
        .contains(FsOptions::HANDLE_KILLPRIV_V2));
    fs
}

/// Under an xattr map that keeps the guest's security.* names under
/// user.virtiofs.*, the guest's file capabilities are a host xattr the
/// host kernel knows nothing of: a WRITE with FUSE_WRITE_KILL_SUIDGID
/// removes it, as it would the guest's `security.capability` (a WRITE
/// without the flag leaves it).
#[test]
fn killpriv_v2_write_removes_the_mapped_capabilities_of_an_xattr_map() {
    use fuse_backend_rs::abi::fuse_abi::WRITE_KILL_PRIV;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"old data").unwrap();
    if !set_mapped_caps(&path) {
        return;
    }
    let fs = killpriv_mapped_fs(dir.path());
    let node = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap().inode;
    let (h, _, _) = fs.open(&root(), node, libc::O_RDWR as u32, 0).unwrap();
    let h = h.unwrap();
    write_flagged(&fs, node, h, b"new", 0).unwrap();
    assert!(has_mapped_caps(&path), "kept by a write without the flag");
    write_flagged(&fs, node, h, b"new", WRITE_KILL_PRIV).unwrap();
    assert!(!has_mapped_caps(&path), "removed by the flagged write");
    fs.release(&root(), node, 0, h, false, false, None).unwrap();
}

/// A guest user who may write a file but not read it has its mapped
/// capabilities removed by an OPEN with O_TRUNC and
/// FUSE_OPEN_KILL_SUIDGID: the daemon, not the requester, reads them
/// (reading a user.* xattr needs read permission).
#[test]
fn killpriv_v2_open_of_a_file_the_requester_cannot_read_removes_mapped_capabilities() {
    use fuse_backend_rs::abi::fuse_abi::FOPEN_IN_KILL_SUIDGID;
    if !can_switch_credentials() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let path = setid_file(dir.path(), "f", 0, 0o4622);
    if !set_mapped_caps(&path) {
        return;
    }
    let fs = killpriv_mapped_fs(dir.path());
    let user = ctx(4242, 4242);
    let node = fs.lookup(&user, ROOT_ID, &cs("f")).unwrap().inode;
    let flags = (libc::O_WRONLY | libc::O_TRUNC) as u32;
    let (h, _, _) = fs
        .open(&user, node, flags, FOPEN_IN_KILL_SUIDGID)
        .expect("a writer's O_TRUNC open");
    assert!(!has_mapped_caps(&path), "removed by the flagged open");
    fs.release(&user, node, 0, h.unwrap(), false, false, None)
        .unwrap();
}

/// A core over `dir` whose uids and gids are translated by these
/// `--translate-uid` and `--translate-gid` rules.
fn translating_fs(dir: &std::path::Path, uids: &[&str], gids: &[&str]) -> PassthroughFs {
    let mut cfg = Config::new(dir);
    cfg.translate_uid = passthrough::IdMap::parse_rules(uids).unwrap();
    cfg.translate_gid = passthrough::IdMap::parse_rules(gids).unwrap();
    PassthroughFs::new(cfg).unwrap()
}

/// The owner and group READDIRPLUS shows the guest for each name in the
/// directory `dir` (`.` and `..` left out).
fn readdirplus_owners(fs: &PassthroughFs, dir: u64) -> Vec<(String, u32, u32)> {
    let (h, _) = fs.opendir(&root(), dir, 0).unwrap();
    let h = h.unwrap();
    let mut seen = Vec::new();
    fs.readdirplus(&root(), dir, h, 65536, 0, &mut |d, e| {
        if e.inode != 0 {
            let name = String::from_utf8_lossy(d.name).into_owned();
            seen.push((name, e.attr.st_uid, e.attr.st_gid));
        }
        Ok(1)
    })
    .unwrap();
    fs.releasedir(&root(), dir, 0, h).unwrap();
    seen.sort();
    seen
}

/// `--translate-uid map:1000:2000:10`: the guest's uid 1005 creates files
/// the host sees as 2005's, and the guest sees them as its own; a chown to
/// guest uid 1001 gives the file to host uid 2001. Without the option the
/// ids pass unchanged.
#[test]
fn translated_uids_own_host_files_and_show_as_the_guests() {
    if !can_switch_credentials() {
        return;
    }
    for translate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let rules: &[&str] = if translate {
            &["map:1000:2000:10"]
        } else {
            &[]
        };
        let fs = translating_fs(dir.path(), rules, &[]);
        let host = |guest: u32| if translate { guest + 1000 } else { guest };
        let user = ctx(1005, 1005);

        let (e, h, _, _) = fs
            .create(&user, ROOT_ID, &cs("f"), create_args(libc::O_RDWR))
            .unwrap();
        fs.release(&user, e.inode, 0, h.unwrap(), false, false, None)
            .unwrap();
        let md = std::fs::metadata(dir.path().join("f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (host(1005), 1005), "{translate}");
        assert_eq!((e.attr.st_uid, e.attr.st_gid), (1005, 1005), "{translate}");
        let (st, _) = fs.getattr(&user, e.inode, None).unwrap();
        assert_eq!(st.st_uid, 1005, "GETATTR, {translate}");

        let d = fs.mkdir(&user, ROOT_ID, &cs("d"), 0o755, 0).unwrap();
        let md = std::fs::metadata(dir.path().join("d")).unwrap();
        assert_eq!(md.uid(), host(1005), "{translate}");
        assert_eq!(d.attr.st_uid, 1005, "{translate}");
        // The requester acts as its host uid: the directory is its own.
        let sub = fs.mkdir(&user, d.inode, &cs("sub"), 0o700, 0).unwrap();
        assert_eq!(sub.attr.st_uid, 1005);

        let mut attr = e.attr;
        attr.st_uid = 1001;
        let (st, _) = fs
            .setattr(&root(), e.inode, attr, None, SetattrValid::UID)
            .unwrap();
        let md = std::fs::metadata(dir.path().join("f")).unwrap();
        assert_eq!(md.uid(), host(1001), "chown, {translate}");
        assert_eq!(st.st_uid, 1001, "SETATTR's reply, {translate}");
        assert_eq!(
            fs.lookup(&user, ROOT_ID, &cs("f")).unwrap().attr.st_uid,
            1001
        );

        assert_eq!(
            readdirplus_owners(&fs, ROOT_ID),
            [("d".into(), 1005, 1005), ("f".into(), 1001, 1005)]
        );
        // A host file of an unmapped uid shows as it is.
        std::fs::write(dir.path().join("other"), b"").unwrap();
        std::os::unix::fs::chown(dir.path().join("other"), Some(3000), Some(3000)).unwrap();
        let other = fs.lookup(&root(), ROOT_ID, &cs("other")).unwrap();
        assert_eq!((other.attr.st_uid, other.attr.st_gid), (3000, 3000));
    }
}

/// `squash-host`: a range of host ids is shown to the guest as one id, in
/// every reply; `--translate-gid` does the same for groups. Without the
/// option the host ids show.
#[test]
fn squash_host_shows_a_range_of_host_ids_as_one_guest_id() {
    if !can_switch_credentials() {
        return;
    }
    for translate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        for (name, id) in [("a", 100000), ("b", 123456), ("c", 165535), ("d", 165536)] {
            std::fs::write(dir.path().join(name), b"").unwrap();
            std::os::unix::fs::chown(dir.path().join(name), Some(id), Some(id)).unwrap();
        }
        let rules: &[&str] = if translate {
            &["squash-host:100000:65534:65536"]
        } else {
            &[]
        };
        let fs = translating_fs(dir.path(), rules, rules);
        let shown = |host: u32| {
            if translate && (100000..165536).contains(&host) {
                65534
            } else {
                host
            }
        };
        assert_eq!(
            readdirplus_owners(&fs, ROOT_ID),
            [("a", 100000), ("b", 123456), ("c", 165535), ("d", 165536)].map(|(n, id)| (
                n.to_owned(),
                shown(id),
                shown(id)
            ))
        );
        for (name, id) in [("b", 123456), ("d", 165536)] {
            let e = fs.lookup(&root(), ROOT_ID, &cs(name)).unwrap();
            assert_eq!((e.attr.st_uid, e.attr.st_gid), (shown(id), shown(id)));
            let (st, _) = fs.getattr(&root(), e.inode, None).unwrap();
            assert_eq!((st.st_uid, st.st_gid), (shown(id), shown(id)));
        }
        // One-directional: guest 65534 is host 65534, not the range.
        let b = fs.lookup(&root(), ROOT_ID, &cs("b")).unwrap();
        let mut attr = b.attr;
        attr.st_uid = 65534;
        fs.setattr(&root(), b.inode, attr, None, SetattrValid::UID)
            .unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("b")).unwrap().uid(),
            65534
        );
    }
}

/// `forbid-guest`: a request from a forbidden guest uid or gid, and a chown
/// to one, are `EPERM`; other ids work. Without the option they all work.
#[test]
fn forbidden_guest_ids_get_eperm() {
    if !can_switch_credentials() {
        return;
    }
    for translate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let (uids, gids): (&[&str], &[&str]) = if translate {
            (&["forbid-guest:500:100"], &["forbid-guest:7000:1"])
        } else {
            (&[], &[])
        };
        let fs = translating_fs(dir.path(), uids, gids);
        let expect = |errno: i32, what: &str| {
            let want = if translate { libc::EPERM } else { 0 };
            assert_eq!(errno, want, "{what}, {translate}");
        };
        let forbidden = ctx(550, 550);
        expect(
            errno(fs.create(&forbidden, ROOT_ID, &cs("new"), create_args(libc::O_RDWR))),
            "create",
        );
        expect(
            errno(fs.mkdir(&forbidden, ROOT_ID, &cs("dir"), 0o755, 0)),
            "mkdir",
        );
        expect(errno(fs.lookup(&forbidden, ROOT_ID, &cs("f"))), "lookup");
        expect(
            errno(fs.mkdir(&ctx(1000, 7000), ROOT_ID, &cs("g"), 0o755, 0)),
            "gid",
        );
        let f = fs.lookup(&root(), ROOT_ID, &cs("f")).unwrap();
        let mut attr = f.attr;
        attr.st_uid = 599;
        expect(
            errno(fs.setattr(&root(), f.inode, attr, None, SetattrValid::UID)),
            "chown to a forbidden uid",
        );
        attr.st_gid = 7000;
        expect(
            errno(fs.setattr(&root(), f.inode, attr, None, SetattrValid::GID)),
            "chown to a forbidden gid",
        );
        // Ids outside the rules are served.
        fs.mkdir(&ctx(600, 600), ROOT_ID, &cs("ok"), 0o755, 0)
            .unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("ok")).unwrap().uid(), 600);
    }
}

/// Where the uid translation lets no guest act as the host's root, a
/// request the host refuses is not run again with the DAC override
/// capabilities (`client_checks_permissions`): that would give a squashed
/// guest root what only the host's root may read. Without translation the
/// second run happens, as a guest could send uid 0 anyway.
#[test]
fn a_guest_that_cannot_be_host_root_gets_no_dac_override() {
    if !can_switch_credentials() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), b"host root's").unwrap();
    std::fs::set_permissions(
        dir.path().join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for translate in [false, true] {
        let squash: &[&str] = if translate {
            &["squash-guest:0:1001:4294967295"]
        } else {
            &[]
        };
        let mut cfg = Config::new(dir.path());
        cfg.client_checks_permissions = true;
        cfg.translate_uid = passthrough::IdMap::parse_rules(squash).unwrap();
        cfg.translate_gid = passthrough::IdMap::parse_rules(squash).unwrap();
        let fs = PassthroughFs::new(cfg).unwrap();
        // Guest root, or without translation a plain user (1001 either way
        // on the host, as far as the file's mode is concerned).
        let guest = if translate { root() } else { ctx(1001, 1001) };
        let f = fs.lookup(&guest, ROOT_ID, &cs("secret")).unwrap();
        let opened = fs.open(&guest, f.inode, libc::O_RDONLY as u32, 0);
        if translate {
            assert_eq!(errno(opened), libc::EACCES, "no second run");
        } else {
            let (h, _, _) = opened.expect("the client checked: second run");
            fs.release(&guest, f.inode, 0, h.unwrap(), false, false, None)
                .unwrap();
        }
    }
}
