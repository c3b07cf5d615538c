//! Helpers to drive a `PassthroughFs` through the `FileSystem` trait.

#![allow(dead_code)]

use std::ffi::CString;
use std::io;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use passthrough::io_buf::SliceReader;
use passthrough::{Config, PassthroughFs, ROOT_ID};

/// A request context for `uid`/`gid`.
pub fn ctx(uid: u32, gid: u32) -> Context {
    let mut c = Context::new();
    c.uid = uid;
    c.gid = gid;
    c
}

/// Whether this process may act as guest users (root); otherwise prints
/// why the test is skipped, and fails under CI, which runs as root.
pub fn can_switch_credentials() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI runs as root");
    eprintln!("SKIP: switching to a guest user's credentials needs root");
    false
}

/// The root's context.
pub fn root() -> Context {
    ctx(0, 0)
}

/// A C string from a Rust one (tests only use NUL-free names).
pub fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A core over a fresh temporary directory.
pub fn new_fs() -> (tempfile::TempDir, PassthroughFs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = PassthroughFs::new(Config::new(dir.path())).unwrap();
    (dir, fs)
}

/// Looks up a `/`-separated relative path from the root, one component at a time.
pub fn walk(fs: &PassthroughFs, path: &str) -> io::Result<Entry> {
    let mut cur = ROOT_ID;
    let mut last = None;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let e = fs.lookup(&root(), cur, &cs(comp))?;
        cur = e.inode;
        last = Some(e);
    }
    last.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Creates `name` in `parent` with `data`, closing the handle.
pub fn create_file(fs: &PassthroughFs, parent: u64, name: &str, data: &[u8]) -> io::Result<Entry> {
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32,
        mode: 0o644 | libc::S_IFREG,
        umask: 0,
        fuse_flags: 0,
    };
    let (entry, handle, _, _) = fs.create(&root(), parent, &cs(name), args)?;
    let handle = handle.expect("create returns a handle");
    if !data.is_empty() {
        let mut r = SliceReader::new(data);
        fs.write(
            &root(),
            entry.inode,
            handle,
            &mut r,
            data.len() as u32,
            0,
            None,
            false,
            0,
            0,
        )?;
    }
    fs.release(&root(), entry.inode, 0, handle, false, false, None)?;
    Ok(entry)
}

/// The variable naming the one test a re-executed test binary runs as a
/// child (see [`run_in_child`]).
pub const CHILD_ENV: &str = "PASSTHROUGH_TEST_CHILD";

/// Whether this process is the child [`run_in_child`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(test)
}

/// Runs the test `test` again in a child process (this test binary, that
/// test alone), where [`is_child`] is true, and asserts that it passed. For
/// checks that need process-wide limits (`setrlimit`) the other tests of
/// this binary must not share.
pub fn run_in_child(test: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child running {test} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run {test}:\n{stdout}"
    );
}

/// Sets the soft and hard limit of `resource` for this process.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, limit: u64) {
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: `rl` is a valid rlimit; setrlimit only reads it.
    assert_eq!(unsafe { libc::setrlimit(resource, &rl) }, 0, "setrlimit");
}
