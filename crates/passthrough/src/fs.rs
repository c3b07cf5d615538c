//! `PassthroughFs`: fuse-backend-rs's `FileSystem` trait over a host directory.
//!
//! Every request is resolved relative to an inode the guest already holds,
//! one validated component at a time, with symlinks never followed on the
//! host side. Operations whose permission checks matter run under the
//! requester's credentials ([`CredGuard`]).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid, FOPEN_IN_KILL_SUIDGID,
    WRITE_KILL_PRIV,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};

use crate::config::{CachePolicy, Config, InodeFileHandles, Negotiation};
use crate::credentials::CredGuard;
use crate::error::Error;
use crate::fd_budget::FdBudget;
use crate::fd_cache::{self, FdCache};
use crate::file_handle::{self, FileHandle, MountFds};
use crate::handle_table::{HandleData, HandleTable};
use crate::inode_store::{InodeData, InodeFd, InodeKey, InodeSource, InodeStore, ROOT_ID};
use crate::name::{check_name, check_name_for_removal, classify, NameKind};
use crate::request_ext::{self, init_flags, INVALID_ID};
use crate::sys::{self, cvt, errno, BorrowedFile, EMPTY};
use crate::xattrmap::XattrOp;

/// What a lookup knows of the name beforehand.
#[derive(Debug, Clone, Copy)]
enum Hint {
    /// Nothing: a LOOKUP (the kernel revalidating a cached entry is one).
    Name,
    /// The inode number getdents gave (READDIRPLUS).
    Dirent(u64),
    /// The request just made the object: it cannot be a known node.
    Created,
}

/// `FUSE_ATTR_SUBMOUNT`: the entry is the root of a host submount.
const FUSE_ATTR_SUBMOUNT: u32 = 1 << 0;

/// Open flags a guest may pass through to the host; everything else
/// (`O_PATH`, `O_CREAT` outside create, `O_NOFOLLOW` games, ...) is dropped.
const ALLOWED_OPEN_FLAGS: libc::c_int = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_DIRECT
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_NOATIME
    | libc::O_NONBLOCK
    | libc::O_LARGEFILE
    | libc::O_EXCL;

/// The largest extended attribute value Linux stores (`XATTR_SIZE_MAX`):
/// no GETXATTR buffer is larger, and a larger SETXATTR value is `E2BIG`.
pub const XATTR_SIZE_MAX: u32 = 65536;
/// The largest extended attribute name list (`XATTR_LIST_MAX`): no
/// LISTXATTR buffer is larger.
pub const XATTR_LIST_MAX: u32 = 65536;
/// The longest extended attribute name (`XATTR_NAME_MAX`); a longer one is
/// `ERANGE`, as the host answers.
pub const XATTR_NAME_MAX: usize = 255;

/// The shared filesystem core: a confined passthrough of one host directory.
pub struct PassthroughFs {
    cfg: Config,
    inodes: InodeStore,
    handles: HandleTable,
    mounts: MountFds,
    /// The mount id of the share root, whose resolver survives a reset.
    root_mount: Option<libc::c_int>,
    /// `/proc/self/fd`, opened before any sandboxing, to reopen `O_PATH` fds.
    proc_self_fd: OwnedFd,
    root_key: InodeKey,
    switch_creds: bool,
    /// FUSE_DONT_MASK was negotiated (with POSIX ACLs): creates carry the
    /// guest's umask unapplied, and the core applies it unless the parent
    /// has a default ACL, which then decides instead, as on a local
    /// filesystem.
    dont_mask: AtomicBool,
    /// FUSE_HANDLE_KILLPRIV_V2 was negotiated ([`Config::killpriv_v2`]):
    /// the kill flags of WRITE, SETATTR, OPEN and CREATE are honoured.
    killpriv_v2: AtomicBool,
    /// A FUSE_INIT was served: a second one starts a new session (a guest
    /// rebooted, its driver reloaded) and ends the last one first.
    initialized: AtomicBool,
    /// The INIT flags above bit 31 negotiated for this session
    /// ([`negotiate_flags2`](Self::negotiate_flags2)).
    flags2: AtomicU64,
    /// Per (inode, FUSE lock owner): the open file description that holds
    /// that owner's POSIX locks on the host (see [`owner_file`](Self::owner_file)).
    plocks: std::sync::Mutex<std::collections::HashMap<(u64, u64), Arc<File>>>,
    /// The fds kept free for the daemon, whatever the guest holds open.
    fds: FdBudget,
    /// Open `O_PATH` fds of the handle-held inodes in use.
    fd_cache: FdCache,
    /// Names lookups opened (diagnostics).
    names_opened: std::sync::atomic::AtomicU64,
}

/// How [`PassthroughFs::label_new`] reaches the node a create made.
enum NewNode<'a> {
    /// The regular file CREATE made and opened.
    Opened(&'a File),
    /// By its name, a node of this type (`S_IFDIR`, `S_IFLNK`, ...).
    Named(libc::mode_t),
}

/// An `io::Error` again (they are not `Clone`).
fn clone_error(e: &io::Error) -> io::Error {
    e.raw_os_error().map_or_else(
        || io::Error::new(e.kind(), e.to_string()),
        io::Error::from_raw_os_error,
    )
}

fn fd_name(fd: RawFd) -> CString {
    // A decimal number never contains NUL.
    CString::new(fd.to_string()).unwrap_or_default()
}

/// Where an xattr call lands.
enum XattrTarget {
    /// A regular file or directory, opened.
    File(File),
    /// A symlink or special file: its O_PATH fd's name in `/proc/self/fd`
    /// (`proc_dir`), for the `*xattrat` calls.
    Path {
        /// `/proc/self/fd`.
        proc_dir: RawFd,
        /// The fd's number, as a name.
        name: CString,
    },
}

/// A host kernel without the `*xattrat` calls (before 6.13) cannot reach a
/// symlink's xattrs without following it: not supported there.
fn xattrat_result<T>(r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSYS) {
            errno(libc::ENOTSUP)
        } else {
            e
        }
    })
}

impl XattrTarget {
    fn get(&self, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            XattrTarget::File(f) => {
                // SAFETY: `buf` is writable for its length (0 asks for the size).
                let n = sys::cvt_long(unsafe {
                    libc::fgetxattr(
                        f.as_raw_fd(),
                        name.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ) as libc::c_long
                })?;
                Ok(n as usize)
            }
            XattrTarget::Path {
                proc_dir,
                name: path,
            } => xattrat_result(sys::getxattrat(*proc_dir, path, name, buf)),
        }
    }

    fn set(&self, name: &CStr, value: &[u8], flags: libc::c_int) -> io::Result<()> {
        match self {
            // SAFETY: NUL-terminated name; `value` is valid for its length.
            XattrTarget::File(f) => cvt(unsafe {
                libc::fsetxattr(
                    f.as_raw_fd(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
            .map(drop),
            XattrTarget::Path {
                proc_dir,
                name: path,
            } => xattrat_result(sys::setxattrat(*proc_dir, path, name, value, flags)),
        }
    }

    fn list(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            XattrTarget::File(f) => {
                // SAFETY: `buf` is writable for its length (0 asks for the size).
                let n = sys::cvt_long(unsafe {
                    libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                        as libc::c_long
                })?;
                Ok(n as usize)
            }
            XattrTarget::Path { proc_dir, name } => {
                xattrat_result(sys::listxattrat(*proc_dir, name, buf))
            }
        }
    }

    fn remove(&self, name: &CStr) -> io::Result<()> {
        match self {
            XattrTarget::File(f) => {
                // SAFETY: NUL-terminated name; the fd is held open by `f`.
                cvt(unsafe { libc::fremovexattr(f.as_raw_fd(), name.as_ptr()) }).map(drop)
            }
            XattrTarget::Path {
                proc_dir,
                name: path,
            } => xattrat_result(sys::removexattrat(*proc_dir, path, name)),
        }
    }
}

fn check_xattr_name(name: &CStr) -> io::Result<()> {
    if name.to_bytes().len() > XATTR_NAME_MAX {
        Err(errno(libc::ERANGE))
    } else {
        Ok(())
    }
}

/// What a data transfer does with a handle ([`PassthroughFs::data_handle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads from the file.
    Read,
    /// Writes to the file: refused on a read-only share.
    Write,
}

fn is_readonly_violation(flags: libc::c_int) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
}

impl PassthroughFs {
    /// Opens `cfg.root_dir` and prepares to serve it.
    ///
    /// Sets the process umask to 0: the wire protocols deliver modes that the
    /// guest already masked, and the host must not mask them again.
    pub fn new(cfg: Config) -> Result<PassthroughFs, Error> {
        let proc_self_fd = sys::openat(
            libc::AT_FDCWD,
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(Error::ProcSelfFd)?;
        Self::with_proc_self_fd(cfg, proc_self_fd)
    }

    /// As [`new`](Self::new), reopening `O_PATH` fds through
    /// `proc_self_fd`, a `/proc/self/fd` directory the caller opened: a
    /// sandboxed daemon's own private `/proc` (see the `sandbox` crate),
    /// whose `..` cannot reach the host's processes.
    pub fn with_proc_self_fd(
        mut cfg: Config,
        proc_self_fd: OwnedFd,
    ) -> Result<PassthroughFs, Error> {
        let path = cfg.root_dir.clone();
        let cpath =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::OpenRoot {
                path: path.clone(),
                source: errno(libc::EINVAL),
            })?;
        let root = sys::openat(libc::AT_FDCWD, &cpath, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::ENOTDIR) {
                    Error::NotADirectory(path.clone())
                } else {
                    Error::OpenRoot {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        // The root must be searchable and readable, or nothing will work. The
        // directory fd also resolves file handles on the root's mount.
        let root_dir = sys::openat(
            root.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|source| Error::OpenRoot {
            path: path.clone(),
            source,
        })?;
        let st = sys::fstat(root.as_raw_fd()).map_err(|source| Error::OpenRoot {
            path: path.clone(),
            source,
        })?;
        let mounts = MountFds::default();
        let mut root_mount = None;
        if cfg.inode_file_handles != InodeFileHandles::Never {
            // Handles are only useful if they last and the daemon may open
            // them again (CAP_DAC_READ_SEARCH): try it on the root.
            match file_handle::probe(root_dir.as_raw_fd()) {
                Ok(h) => {
                    mounts.remember(h.mount_id(), root_dir);
                    root_mount = Some(h.mount_id());
                }
                Err(source) if cfg.inode_file_handles == InodeFileHandles::Mandatory => {
                    return Err(Error::FileHandlesUnsupported { path, source })
                }
                Err(e) => {
                    log::info!(
                        "{}: inodes held by O_PATH fds, not file handles ({e})",
                        path.display()
                    );
                    cfg.inode_file_handles = InodeFileHandles::Never;
                }
            }
        }
        sys::clear_umask();
        let root_key = InodeKey::from_stat(&st);
        let inodes = InodeStore::default();
        inodes.insert_root(root_key, root);
        // SAFETY: geteuid cannot fail.
        let switch_creds = cfg.switch_credentials && unsafe { libc::geteuid() } == 0;
        let fds = FdBudget::new(cfg.fd_reserve);
        Ok(PassthroughFs {
            cfg,
            inodes,
            handles: HandleTable::default(),
            mounts,
            root_mount,
            proc_self_fd,
            root_key,
            switch_creds,
            dont_mask: AtomicBool::new(false),
            killpriv_v2: AtomicBool::new(false),
            initialized: AtomicBool::new(false),
            flags2: AtomicU64::new(0),
            plocks: std::sync::Mutex::new(std::collections::HashMap::new()),
            fds,
            fd_cache: FdCache::default(),
            names_opened: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Re-reads the soft `RLIMIT_NOFILE` that the fd reserve
    /// ([`Config::fd_reserve`]) is kept below, after the daemon changed it.
    /// (A limit that was raised is also noticed the first time an fd would
    /// otherwise be refused.)
    pub fn refresh_fd_limit(&self) {
        self.fds.refresh();
    }

    /// The configuration this core serves with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The host file behind `handle` of `inode`, to read from or write to:
    /// the one place where the read-only rule meets a data transfer, for
    /// every protocol and engine (FUSE READ/WRITE here, the io_uring engine,
    /// 9P Tread/Twrite). A write on a read-only share fails with `EROFS`,
    /// whatever flags the handle was opened with. A data-path engine takes
    /// the host fd from the result ([`HandleData::as_raw_fd`]) and keeps
    /// the `Arc` until the I/O completes.
    pub fn data_handle(
        &self,
        inode: u64,
        handle: u64,
        access: Access,
    ) -> io::Result<Arc<HandleData>> {
        if access == Access::Write {
            self.check_writable()?;
        }
        self.handles.get(inode, handle)
    }

    /// Adds one lookup to `nodeid`, which the caller already holds: for a
    /// front end that hands out a second reference to a node (a 9P fid
    /// clone). Undo it with `forget(nodeid, 1)`.
    pub fn add_lookup(&self, nodeid: u64) -> io::Result<()> {
        let data = self.inodes.get(nodeid)?;
        self.inodes.add_ref(&data);
        Ok(())
    }

    /// The inode table (lookup counts), for tests and diagnostics.
    pub fn inodes(&self) -> &InodeStore {
        &self.inodes
    }

    /// The number of open handles, for tests and diagnostics.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// The host uid and gid the requester of `ctx` acts as: its guest ids
    /// translated by [`Config::translate_uid`] and
    /// [`Config::translate_gid`]; `EPERM` for a guest id a `forbid-guest`
    /// rule covers.
    ///
    /// A request without an identity (`FUSE_INVALID_UIDGID`, what a guest
    /// sends for every request that creates nothing once FUSE_ALLOW_IDMAP
    /// is negotiated) acts as the daemon, as the guest's root does: the
    /// guest kernel checked its permission, and [`Config::allow_idmap`] is
    /// only offered where the guest's root is the host's. Without
    /// FUSE_ALLOW_IDMAP no guest kernel sends it, and it is `EINVAL`.
    fn host_ids(&self, ctx: &Context) -> io::Result<(libc::uid_t, libc::gid_t)> {
        if ctx.uid == INVALID_ID || ctx.gid == INVALID_ID {
            return match self.flags2.load(Ordering::Relaxed) & init_flags::ALLOW_IDMAP {
                0 => Err(errno(libc::EINVAL)),
                _ => Ok((0, 0)),
            };
        }
        Ok((self.host_uid(ctx.uid)?, self.host_gid(ctx.gid)?))
    }

    /// For a request that creates a node, owned by its requester: one
    /// without an identity is `EOVERFLOW`, as the guest kernel answers
    /// when a creator's ids have no mapping in the mount's idmap.
    fn check_creator(&self, ctx: &Context) -> io::Result<()> {
        if ctx.uid == INVALID_ID || ctx.gid == INVALID_ID {
            return Err(errno(libc::EOVERFLOW));
        }
        Ok(())
    }

    /// The INIT flags above bit 31 ([`init_flags`]) that fuse-backend-rs
    /// cannot negotiate: of `offered` (what the guest's FUSE_INIT offered
    /// in `flags2`, shifted up by 32), those this core serves with its
    /// configuration. Called by the front end for every FUSE_INIT, which
    /// then adds them to the reply; what it returns holds for the session.
    /// `EPROTO` (the INIT must fail) where `--security-label=always` asks
    /// for what the guest does not offer, as upstream.
    pub fn negotiate_flags2(&self, offered: u64) -> io::Result<u64> {
        let mut want = 0;
        let label = self.cfg.security_label;
        if label != Negotiation::Never && self.cfg.xattr {
            want |= init_flags::SECURITY_CTX;
        }
        if self.cfg.allow_mmap {
            want |= init_flags::DIRECT_IO_ALLOW_MMAP;
        }
        // The group only matters where requests run with the requester's
        // ids.
        if self.switch_creds {
            want |= init_flags::CREATE_SUPP_GROUP;
        }
        if self.cfg.allow_idmap {
            want |= init_flags::ALLOW_IDMAP;
        }
        let got = want & offered;
        let missing = want & !got;
        if missing & init_flags::SECURITY_CTX != 0 && label == Negotiation::Always {
            log::error!("--security-label=always: the guest does not offer FUSE_SECURITY_CTX; its FUSE_INIT fails");
            self.flags2.store(0, Ordering::Relaxed);
            return Err(errno(libc::EPROTO));
        }
        self.flags2.store(got, Ordering::Relaxed);
        for (flag, what) in [
            (
                init_flags::SECURITY_CTX,
                "--security-label: FUSE_SECURITY_CTX",
            ),
            (
                init_flags::DIRECT_IO_ALLOW_MMAP,
                "--allow-mmap: FUSE_DIRECT_IO_ALLOW_MMAP",
            ),
            (init_flags::ALLOW_IDMAP, "--allow-idmap: FUSE_ALLOW_IDMAP"),
        ] {
            if missing & flag != 0 {
                log::warn!("{what} is not offered by the guest; going on without it");
            }
        }
        Ok(got)
    }

    /// Forgets what [`negotiate_flags2`](Self::negotiate_flags2) agreed
    /// (a new FUSE_INIT is on its way).
    pub fn clear_flags2(&self) {
        self.flags2.store(0, Ordering::Relaxed);
    }

    /// The INIT flags above bit 31 negotiated for this session.
    pub fn negotiated_flags2(&self) -> u64 {
        self.flags2.load(Ordering::Relaxed)
    }

    /// Sets the security context the request being served carries
    /// ([`request_ext`]) on `entry`, which the request just made as `name`
    /// in `pfd`, reached as `node` says. The name is mapped by the xattr
    /// map as a SETXATTR's is, and the value set with the daemon's
    /// privilege (the guest kernel's LSM chose it; only
    /// [`request_ext::LABEL_NAMES`] are accepted, here and at the edge),
    /// after the requester's credentials are gone. A node reached by name
    /// must still be the one made: the name must hold the inode (device
    /// and number) the create's lookup found, of the type asked for. If
    /// the context cannot be set, the node is removed again (if the name
    /// still holds it) and the create fails with that error: a node the
    /// guest asked to be labelled is never left unlabelled. (Upstream sets
    /// `security.selinux` through `/proc/thread-self/attr/fscreate` on
    /// SELinux hosts, in one step with the create; not done here.)
    fn label_new(
        &self,
        ctx: &Context,
        pfd: &InodeFd<'_>,
        name: &CStr,
        entry: Entry,
        node: NewNode<'_>,
    ) -> io::Result<Entry> {
        let Some(sec) = request_ext::security_context() else {
            return Ok(entry);
        };
        let here = || sys::stat_at(pfd.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW);
        // What the create made, as the daemon holds it.
        let made = match node {
            NewNode::Opened(file) => sys::fstat(file.as_raw_fd()),
            NewNode::Named(_) => self
                .inodes
                .get(entry.inode)
                .and_then(|d| sys::fstat(self.path_fd(&d)?.as_raw_fd())),
        };
        let same =
            |a: &libc::stat64, b: &libc::stat64| (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino);
        let labelled = made.as_ref().map_err(clone_error).and_then(|made| {
            if !request_ext::is_label_name(&sec.name) {
                return Err(errno(libc::EINVAL));
            }
            let host = self.host_xattr_name(&sec.name, XattrOp::Set)?;
            match node {
                NewNode::Opened(file) => {
                    XattrTarget::File(file.try_clone()?).set(&host, &sec.value, 0)
                }
                NewNode::Named(kind) => {
                    if !same(&here()?, made) || made.st_mode & libc::S_IFMT != kind {
                        log::warn!("{name:?} changed before its security context was set");
                        return Err(errno(libc::EIO));
                    }
                    self.with_xattr_target(entry.inode, |t| t.set(&host, &sec.value, 0))
                }
            }
        });
        let Err(e) = labelled else {
            return Ok(entry);
        };
        self.inodes.forget(entry.inode, 1);
        if let Ok(made) = &made {
            match self.creds(ctx) {
                Ok(_c) => self.unmake(pfd, name, made, &e),
                Err(c) => log::warn!("{name:?}: its security context could not be set ({e}), nor could it be removed again ({c})"),
            }
        }
        Err(e)
    }

    /// For a create that carries a security context and failed (`why`)
    /// after it made `name` in `pfd`, before it could label it (its lookup
    /// or its fd could not be had): removes `name` again, as
    /// [`label_new`](Self::label_new) would. Call it as the requester.
    fn unmake_unlabelled(&self, pfd: &InodeFd<'_>, name: &CStr, why: &io::Error) {
        if request_ext::security_context().is_none() {
            return;
        }
        if let Ok(made) = sys::stat_at(pfd.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW) {
            self.unmake(pfd, name, &made, why);
        }
    }

    /// Removes `name` from `pfd` again if it still holds `made` (the node a
    /// create made and could not finish: `why`), with the calling thread's
    /// credentials (the requester's); a failure is logged.
    fn unmake(&self, pfd: &InodeFd<'_>, name: &CStr, made: &libc::stat64, why: &io::Error) {
        let removed =
            sys::stat_at(pfd.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW).and_then(|st| {
                if (st.st_dev, st.st_ino) != (made.st_dev, made.st_ino) {
                    return Ok(());
                }
                let flags = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    libc::AT_REMOVEDIR
                } else {
                    0
                };
                // SAFETY: NUL-terminated name; pfd is held.
                cvt(unsafe { libc::unlinkat(pfd.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
            });
        if let Err(r) = removed {
            log::warn!("{name:?}: the create could not be finished ({why}), nor undone ({r})");
        }
    }

    /// The host uid that the guest's `uid` (a requester's, or a chown's)
    /// stands for; `EPERM` if it is forbidden.
    fn host_uid(&self, uid: libc::uid_t) -> io::Result<libc::uid_t> {
        self.cfg
            .translate_uid
            .guest_to_host(uid)
            .map_err(|_| errno(libc::EPERM))
    }

    /// As [`host_uid`](Self::host_uid), for a gid.
    fn host_gid(&self, gid: libc::gid_t) -> io::Result<libc::gid_t> {
        self.cfg
            .translate_gid
            .guest_to_host(gid)
            .map_err(|_| errno(libc::EPERM))
    }

    /// `st` as the guest is shown it: the owner and group translated from
    /// the host's ids to the guest's ([`Config::translate_uid`],
    /// [`Config::translate_gid`]). Every attribute a reply carries passes
    /// here.
    fn guest_stat(&self, mut st: stat64) -> stat64 {
        st.st_uid = self.cfg.translate_uid.host_to_guest(st.st_uid);
        st.st_gid = self.cfg.translate_gid.host_to_guest(st.st_gid);
        st
    }

    /// Whether the requester of `ctx` acts as someone other than the
    /// host's root.
    fn acts_as_non_root(&self, ctx: &Context) -> bool {
        self.host_ids(ctx).is_ok_and(|(uid, _)| uid != 0)
    }

    /// The requester's credentials for the rest of the request, with the
    /// supplementary groups a create's extension gave it, translated as
    /// its gid is (a `forbid-guest` group is `EPERM`).
    fn creds(&self, ctx: &Context) -> io::Result<CredGuard> {
        let (uid, gid) = self.host_ids(ctx)?;
        let groups = request_ext::groups();
        if groups.is_empty() {
            return CredGuard::new(self.switch_creds, uid, gid);
        }
        let host = groups
            .iter()
            .map(|&g| self.host_gid(g))
            .collect::<io::Result<Vec<_>>>()?;
        CredGuard::with_groups(self.switch_creds, uid, gid, &host)
    }

    /// Runs the request `op`. Where the client kernel has checked
    /// permissions itself and the host refused `op` with EACCES as the
    /// requester, it is run once more with the DAC override capabilities
    /// (see [`Config::client_checks_permissions`]): the request carries no
    /// supplementary groups, through which the client may have granted it.
    /// A guest could send uid 0 as easily, so this lets it do nothing it
    /// could not do already; where the uid translation
    /// ([`Config::translate_uid`]) lets no guest uid act as the host's
    /// root, it could not, and there is no second run.
    fn client_checked<T>(
        &self,
        ctx: &Context,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        match op() {
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    && self.cfg.client_checks_permissions
                    && self.switch_creds
                    && self.acts_as_non_root(ctx)
                    && self.cfg.translate_uid.guest_can_become(0) =>
            {
                crate::credentials::with_dac_override(op)
            }
            r => r,
        }
    }

    /// The mode a new file in `parent` gets from the guest's `mode` and
    /// `umask`: without FUSE_DONT_MASK the guest kernel masked it already;
    /// with it, the umask applies unless the parent has a default ACL (then
    /// the host applies the ACL, as POSIX wants).
    fn creation_mode(&self, parent: &InodeData, pfd: &InodeFd<'_>, mode: u32, umask: u32) -> u32 {
        if !self.dont_mask.load(Ordering::Relaxed) {
            return mode;
        }
        let has_default_acl = self
            .reopen(
                parent,
                pfd,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK,
            )
            .is_ok_and(|dir| {
                // SAFETY: NUL-terminated name; a size of 0 asks for the
                // value's length and writes nothing.
                let n = unsafe {
                    libc::fgetxattr(
                        dir.as_raw_fd(),
                        c"system.posix_acl_default".as_ptr(),
                        std::ptr::null_mut(),
                        0,
                    )
                };
                n > 0
            });
        if has_default_acl {
            mode
        } else {
            mode & !umask
        }
    }

    /// Whether the thread's current (effective) ids may access the file
    /// named `proc_name` in `/proc/self/fd` with `mask`.
    /// Removes a file's capabilities (`security.capability`) for a writer
    /// who does not own it. The guest kernel asks for this after a write,
    /// truncate or fallocate (killpriv), and Linux does it with the
    /// kernel's privilege for anyone who may write the file; so: write
    /// permission checked with the requester's ids, the removal done with
    /// the daemon's (xfstests generic/688). Nothing else is removed.
    /// Under an xattr map the capabilities the guest sees are held under
    /// their mapped name, which is the one removed; a map that refuses
    /// the name leaves the guest no capabilities to remove.
    fn kill_file_caps(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        let Ok(caps) = self.host_xattr_name(c"security.capability", XattrOp::Remove) else {
            return Ok(());
        };
        let data = self.inodes.get(inode)?;
        if !data.is_reg() {
            return Err(errno(libc::EPERM));
        }
        let fd = self.path_fd(&data)?;
        let name = fd_name(fd.as_raw_fd());
        {
            let _c = self.creds(ctx)?;
            if !self.may_access(self.proc_self_fd.as_raw_fd(), &name, libc::W_OK) {
                return Err(errno(libc::EPERM));
            }
        }
        let file = self.reopen(&data, &fd, libc::O_RDONLY | libc::O_NONBLOCK)?;
        crate::credentials::as_daemon(|| {
            // SAFETY: NUL-terminated name.
            cvt(unsafe { libc::fremovexattr(file.as_raw_fd(), caps.as_ptr()) }).map(drop)
        })
    }

    /// Whether a request's FUSE_HANDLE_KILLPRIV_V2 kill flag (`flagged`)
    /// is acted on: only once that was negotiated. Without it the guest
    /// kernel clears set-id bits itself (with a SETATTR of the mode), and
    /// the flags mean nothing.
    fn killpriv(&self, flagged: bool) -> bool {
        flagged && self.killpriv_v2.load(Ordering::Relaxed)
    }

    /// For a change of a file's data that carries no kill flag under
    /// FUSE_HANDLE_KILLPRIV_V2 (FALLOCATE, COPY_FILE_RANGE): once that is
    /// negotiated the guest kernel no longer drops the set-id bits for
    /// them, and the daemon's CAP_FSETID keeps the host's kernel from doing
    /// it, so they are dropped here, as for a flagged WRITE, when the
    /// requester is not the guest's root (the guest's own rule asks
    /// CAP_FSETID, which only its root holds here).
    ///
    /// (A request without an identity, under FUSE_ALLOW_IDMAP, may come
    /// from anyone: the bits are dropped for it too.)
    fn kill_privs_unflagged(&self, ctx: &Context, fd: RawFd) -> io::Result<()> {
        if ctx.uid == 0 || !self.killpriv_v2.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.kill_privs(fd, || open_for_writing(fd))
    }

    /// For a request with a FUSE_HANDLE_KILLPRIV_V2 kill flag: drops what
    /// the host kernel drops when someone without CAP_FSETID writes to or
    /// truncates the regular file open as `fd` ([`setid_bits_to_kill`],
    /// and the file capabilities: `security.capability`, and the name an
    /// xattr map keeps the guest's under).
    ///
    /// Done explicitly, with the daemon's privilege, rather than as
    /// upstream virtiofsd does it (CAP_FSETID dropped from the thread's
    /// effective set for the request, the host kernel doing the rest):
    /// - WRITE runs with the daemon's ids, so the host kernel would judge
    ///   `S_ISGID` by the daemon's groups (6.x kernels also drop a
    ///   non-executable `S_ISGID` for a writer outside the file's group)
    ///   instead of by the rule the protocol states;
    /// - the effective set does not stay as set across the credential
    ///   switches of a request ([`as_daemon`](crate::credentials::as_daemon)
    ///   regaining euid 0 restores all of it), so the drop's scope would
    ///   be easy to get wrong;
    /// - it does not depend on the host filesystem's kernel side dropping
    ///   privileges, and covers a mapped capability name the host kernel
    ///   does not know.
    ///
    /// WRITE and SETATTR call this before the data changes, as the kernel
    /// does, so no one can run a changed program with the bits (a change
    /// that then fails leaves them dropped, as with the kernel); an
    /// `O_TRUNC` open, once the file is empty. The mode is read
    /// and written in two steps, so a chmod racing with the request can be
    /// undone (the kernel holds the inode lock).
    ///
    /// `may_write` says whether the requester may change the file; it is
    /// asked only when there is something to drop, so the usual flagged
    /// write (nothing to drop) costs an fstat and an fgetxattr.
    fn kill_privs(&self, fd: RawFd, may_write: impl FnOnce() -> bool) -> io::Result<()> {
        let mapped = self
            .host_xattr_name(SECURITY_CAPABILITY, XattrOp::Remove)
            .ok()
            .filter(|n| n.as_ref() != SECURITY_CAPABILITY);
        // All with the daemon's ids (free where the request has not
        // switched): the requester may be unable to read a mapped
        // capability name (user.*) of a file it may write.
        crate::credentials::as_daemon(|| {
            let st = sys::fstat(fd)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Ok(());
            }
            let mode = st.st_mode & 0o7777;
            let kill = setid_bits_to_kill(mode);
            let mut caps = Vec::new();
            for name in std::iter::once(SECURITY_CAPABILITY).chain(mapped.as_deref()) {
                if has_xattr(fd, name)? {
                    caps.push(name);
                }
            }
            if (kill == 0 && caps.is_empty()) || !may_write() {
                return Ok(());
            }
            if kill != 0 {
                // SAFETY: plain syscall on an fd the caller holds open.
                cvt(unsafe { libc::fchmod(fd, mode & !kill) })?;
            }
            for name in caps {
                // SAFETY: NUL-terminated name; an fd the caller holds open.
                match cvt(unsafe { libc::fremovexattr(fd, name.as_ptr()) }) {
                    Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
    }

    fn may_access(&self, proc_fd: RawFd, proc_name: &CStr, mask: libc::c_int) -> bool {
        // SAFETY: NUL-terminated name relative to the held /proc/self/fd.
        unsafe { libc::faccessat(proc_fd, proc_name.as_ptr(), mask, libc::AT_EACCESS) == 0 }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.cfg.readonly {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn timeout(&self) -> Duration {
        self.cfg.cache.timeout()
    }

    /// An `O_PATH` fd for `data`. One opened from a file handle for this
    /// request is held to the fd reserve like every fd opened for the guest.
    ///
    /// Call it before switching to the requester's credentials: reopening
    /// a handle needs the daemon's CAP_DAC_READ_SEARCH, and under a
    /// [`CredGuard`] the open has to step out of the guard
    /// ([`as_daemon`](crate::credentials::as_daemon)) for it.
    fn path_fd<'a>(&self, data: &'a Arc<InodeData>) -> io::Result<InodeFd<'a>> {
        match data.source() {
            InodeSource::Fd(fd) => Ok(InodeFd::Borrowed(fd.as_fd())),
            InodeSource::Handle(handle, slot) => {
                if let Some(fd) = slot.get() {
                    return Ok(InodeFd::Shared(fd));
                }
                let fd =
                    self.guest_fd(|| self.mounts.open(handle, libc::O_PATH | libc::O_NOFOLLOW))?;
                Ok(InodeFd::Shared(self.fd_cache.insert(
                    data,
                    slot,
                    fd,
                    self.fd_cache_capacity(),
                )))
            }
        }
    }

    /// How many fds the fd cache may hold ([`Config::inode_fd_cache`]).
    fn fd_cache_capacity(&self) -> usize {
        self.cfg.inode_fd_cache.unwrap_or_else(|| {
            usize::try_from(self.fds.ceiling() / 4)
                .unwrap_or(usize::MAX)
                .min(fd_cache::DEFAULT_MAX)
        })
    }

    /// The fd cache (for tests and diagnostics).
    pub fn fd_cache(&self) -> &FdCache {
        &self.fd_cache
    }

    /// How many names lookups have opened (for tests and diagnostics: a
    /// lookup of a node the guest holds opens none).
    pub fn names_opened(&self) -> u64 {
        self.names_opened.load(Ordering::Relaxed)
    }

    /// Opens an fd for the guest with `open` (which must be safe to call
    /// twice), held to the fd budget. When the budget or the kernel refuses
    /// it, the fd cache gives up a quarter of its fds and `open` is tried
    /// once more: cached fds are a convenience, the guest's own work is not.
    fn guest_fd(&self, mut open: impl FnMut() -> io::Result<OwnedFd>) -> io::Result<OwnedFd> {
        let out_of_fds =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        // An open the kernel refused did nothing: it may be tried again.
        let fd = match open() {
            Err(e) if out_of_fds(&e) && self.shrink_fd_cache() > 0 => open(),
            r => r,
        }
        .inspect_err(|e| {
            if out_of_fds(e) {
                self.fds.note_refusal();
            }
        })?;
        self.admit_guest_fd(fd)
    }

    /// Empties a quarter of the fd cache (at least one fd) for the guest.
    fn shrink_fd_cache(&self) -> usize {
        self.fd_cache.shrink(self.fd_cache.len() / 4 + 1)
    }

    /// Holds `fd`, just opened for the guest (whatever the open did, such
    /// as creating or truncating, is done), to the fd budget: above the
    /// line, the fd cache gives up fds and `fd` moves down to a freed
    /// number; if none is free, it is closed and the request answers
    /// `EMFILE`.
    fn admit_guest_fd(&self, fd: OwnedFd) -> io::Result<OwnedFd> {
        if self.fds.fits(fd.as_raw_fd()) {
            return Ok(fd);
        }
        if self.shrink_fd_cache() > 0 {
            if let Ok(low) = sys::dup_lowest(fd.as_fd()) {
                drop(fd);
                if self.fds.fits(low.as_raw_fd()) {
                    return Ok(low);
                }
            }
        }
        self.fds.note_refusal();
        Err(errno(libc::EMFILE))
    }

    /// Reopens an `O_PATH` fd with real access `flags` through `/proc/self/fd`.
    /// Only regular files and directories are ever reopened: device nodes,
    /// FIFOs and sockets are never opened on the host.
    fn reopen(&self, inode: &InodeData, fd: &InodeFd<'_>, flags: libc::c_int) -> io::Result<File> {
        self.reopen_typed(inode.file_type, fd.as_raw_fd(), flags)
    }

    /// [`reopen`](Self::reopen) for an `O_PATH` fd of an object of type
    /// `file_type` (`st_mode & S_IFMT`) that is not (yet) a node.
    fn reopen_typed(
        &self,
        file_type: libc::mode_t,
        fd: RawFd,
        flags: libc::c_int,
    ) -> io::Result<File> {
        match file_type {
            libc::S_IFREG | libc::S_IFDIR => {}
            libc::S_IFLNK => return Err(errno(libc::ELOOP)),
            _ => return Err(errno(libc::ENXIO)),
        }
        let name = fd_name(fd);
        let owned = self.guest_fd(|| {
            sys::openat(
                self.proc_self_fd.as_raw_fd(),
                &name,
                flags & !libc::O_NOFOLLOW,
                0,
            )
        })?;
        Ok(File::from(owned))
    }

    /// Opens `name` in `dir` as `O_PATH`, never following a symlink and never
    /// leaving `dir`.
    fn open_child(&self, dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_NOFOLLOW;
        self.names_opened.fetch_add(1, Ordering::Relaxed);
        self.guest_fd(|| match sys::openat2_beneath(dir, name, flags) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                // Pre-5.6 kernels: `name` is a single validated component and
                // O_NOFOLLOW stops at a trailing symlink, which is as strict.
                sys::openat(dir, name, flags, 0)
            }
            r => r,
        })
    }

    /// Whether the directory `fd` lies beneath the share root, by walking up.
    fn is_beneath_root(&self, fd: OwnedFd) -> io::Result<bool> {
        let mut cur = fd;
        for _ in 0..4096 {
            let st = sys::fstat(cur.as_raw_fd())?;
            if InodeKey::from_stat(&st) == self.root_key {
                return Ok(true);
            }
            let parent = self.guest_fd(|| {
                sys::openat(cur.as_raw_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0)
            })?;
            let pst = sys::fstat(parent.as_raw_fd())?;
            if InodeKey::from_stat(&pst) == InodeKey::from_stat(&st) {
                return Ok(false);
            }
            cur = parent;
        }
        Ok(false)
    }

    fn entry_for(&self, data: &InodeData, st: stat64, parent_dev: Option<u64>) -> Entry {
        let mut attr_flags = 0;
        if self.cfg.announce_submounts
            && data.is_dir()
            && parent_dev.is_some_and(|d| d != st.st_dev)
        {
            attr_flags |= FUSE_ATTR_SUBMOUNT;
        }
        Entry {
            inode: data.nodeid,
            generation: 0,
            attr: self.guest_stat(st),
            attr_flags,
            attr_timeout: self.timeout(),
            entry_timeout: self.timeout(),
        }
    }

    /// Registers the object `fd` (just opened) and returns its entry with one
    /// more lookup counted.
    fn register(&self, fd: OwnedFd, parent_dev: Option<u64>) -> io::Result<Entry> {
        let st = sys::fstat(fd.as_raw_fd())?;
        self.register_stat(fd, st, parent_dev)
    }

    /// [`register`](Self::register) with the `fstat` of `fd` already made.
    fn register_stat(&self, fd: OwnedFd, st: stat64, parent_dev: Option<u64>) -> io::Result<Entry> {
        let key = InodeKey::from_stat(&st);
        // With file handles, the handle tells a known node from a new file
        // that got a freed inode's number.
        let handle = match self.cfg.inode_file_handles {
            InodeFileHandles::Never => None,
            InodeFileHandles::Prefer | InodeFileHandles::Mandatory => {
                Some(FileHandle::from_fd(fd.as_raw_fd()))
            }
        };
        let known = handle.as_ref().and_then(|h| h.as_ref().ok());
        if let Some(data) = self.inodes.get_by_key_and_ref(&key, known) {
            if data.file_type == st.st_mode & libc::S_IFMT {
                self.keep_fd(&data, fd);
                return Ok(self.entry_for(&data, st, parent_dev));
            }
            // Same number, another type: another object. Undo the lookup.
            self.inodes.forget(data.nodeid, 1);
        }
        let (source, fd) = match handle {
            None => (InodeSource::Fd(fd), None),
            Some(handle) => {
                let mandatory = self.cfg.inode_file_handles == InodeFileHandles::Mandatory;
                match handle {
                    Ok(h) if self.mounts.knows(h.mount_id()) => (InodeSource::handle(h), Some(fd)),
                    // On a mount whose handles do not last.
                    Ok(h) if !mandatory && self.mounts.fd_only(h.mount_id()) => {
                        (InodeSource::Fd(fd), None)
                    }
                    Ok(h) if !mandatory && !file_handle::handles_last(fd.as_raw_fd()) => {
                        self.mounts.hold_by_fd(h.mount_id());
                        (InodeSource::Fd(fd), None)
                    }
                    // A submount's root: its directory fd resolves its
                    // handles. The daemon's, opened with its ids: the
                    // requester may look the directory up without being
                    // allowed to read it, and never sees this fd.
                    Ok(h) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        let name = fd_name(fd.as_raw_fd());
                        let dirfd = self.guest_fd(|| {
                            crate::credentials::as_daemon(|| {
                                sys::openat(
                                    self.proc_self_fd.as_raw_fd(),
                                    &name,
                                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK,
                                    0,
                                )
                            })
                        })?;
                        self.mounts.remember(h.mount_id(), dirfd);
                        (InodeSource::handle(h), Some(fd))
                    }
                    Ok(_) if mandatory => return Err(errno(libc::EOPNOTSUPP)),
                    Err(e) if mandatory => return Err(e),
                    // A file on a mount we cannot resolve handles for.
                    Ok(_) | Err(_) => (InodeSource::Fd(fd), None),
                }
            }
        };
        let data = self
            .inodes
            .insert_or_ref(key, st.st_mode & libc::S_IFMT, source)?;
        if let Some(fd) = fd {
            self.keep_fd(&data, fd);
        }
        Ok(self.entry_for(&data, st, parent_dev))
    }

    /// Keeps `fd`, just opened on `data`'s object, in the fd cache if
    /// `data` is held by handle and has no fd cached: the guest is about
    /// to use what it looked up.
    fn keep_fd(&self, data: &Arc<InodeData>, fd: OwnedFd) {
        if let Some(slot) = data.slot() {
            if !slot.is_filled() {
                self.fd_cache
                    .insert(data, slot, fd, self.fd_cache_capacity());
            }
        }
    }

    /// The entry of `name` in `dir` if it is a node the guest already holds
    /// (one more lookup counted), found without opening it: a stat and,
    /// with file handles, the name's handle, which tells the known object
    /// from a new one that got a freed inode's number (a node held by fd
    /// keeps its inode, and so its number, alive). What the kernel sends
    /// when a cached entry times out is such a lookup. `d_ino` (from
    /// getdents) skips the stat when it names no known inode. `Ok(None)`:
    /// not known, or not sure; the caller opens the name. A name that does
    /// not exist is `ENOENT` at once.
    fn lookup_known(
        &self,
        dir: RawFd,
        name: &CStr,
        d_ino: Option<u64>,
        parent_dev: Option<u64>,
    ) -> io::Result<Option<Entry>> {
        if let (Some(ino), Some(dev)) = (d_ino, parent_dev) {
            if !self.inodes.knows(&InodeKey { ino, dev }) {
                return Ok(None);
            }
        }
        let st = match sys::stat_at(dir, name, 0) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(e),
            Err(_) => return Ok(None),
        };
        let key = InodeKey::from_stat(&st);
        if d_ino.is_none() && !self.inodes.knows(&key) {
            return Ok(None);
        }
        let handle = match self.cfg.inode_file_handles {
            InodeFileHandles::Never => None,
            InodeFileHandles::Prefer | InodeFileHandles::Mandatory => {
                match FileHandle::at(dir, name, 0) {
                    Ok(h) => Some(h),
                    Err(_) => return Ok(None),
                }
            }
        };
        let Some(data) = self.inodes.get_by_key_and_ref(&key, handle.as_ref()) else {
            return Ok(None);
        };
        if data.file_type != st.st_mode & libc::S_IFMT {
            self.inodes.forget(data.nodeid, 1);
            return Ok(None);
        }
        Ok(Some(self.entry_for(&data, st, parent_dev)))
    }

    /// Looks up `name` in `parent`, whose fd `pfd` the caller resolved
    /// ([`path_fd`](Self::path_fd), before switching credentials), counting
    /// one lookup on success.
    fn do_lookup(
        &self,
        parent: &InodeData,
        pfd: &InodeFd<'_>,
        name: &CStr,
        hint: Hint,
    ) -> io::Result<Entry> {
        if !parent.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let parent_dev = Some(parent.key.dev);
        match classify(name)? {
            NameKind::Normal => {
                let known = match hint {
                    Hint::Name => self.lookup_known(pfd.as_raw_fd(), name, None, parent_dev)?,
                    Hint::Dirent(ino) => {
                        self.lookup_known(pfd.as_raw_fd(), name, Some(ino), parent_dev)?
                    }
                    Hint::Created => None,
                };
                if let Some(entry) = known {
                    return Ok(entry);
                }
                let fd = self.open_child(pfd.as_raw_fd(), name)?;
                self.register(fd, parent_dev)
            }
            NameKind::Dot => {
                let st = sys::fstat(pfd.as_raw_fd())?;
                self.inodes.add_ref(parent);
                Ok(self.entry_for(parent, st, None))
            }
            NameKind::DotDot => {
                if parent.nodeid == ROOT_ID || parent.key == self.root_key {
                    // `..` at the root is the root: the share has no outside.
                    let st = sys::fstat(pfd.as_raw_fd())?;
                    self.inodes.add_ref(parent);
                    return Ok(self.entry_for(parent, st, None));
                }
                let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
                let up = self.guest_fd(|| sys::openat(pfd.as_raw_fd(), c"..", dir_flags, 0))?;
                let check = self.guest_fd(|| sys::openat(up.as_raw_fd(), c".", dir_flags, 0))?;
                if !self.is_beneath_root(check)? {
                    return Err(errno(libc::EACCES));
                }
                self.register(up, None)
            }
        }
    }

    fn stat_inode(&self, data: &Arc<InodeData>) -> io::Result<stat64> {
        let fd = self.path_fd(data)?;
        sys::fstat(fd.as_raw_fd())
    }

    fn open_flags(&self, flags: u32) -> libc::c_int {
        let mut f = flags as libc::c_int & ALLOWED_OPEN_FLAGS;
        if !self.cfg.allow_direct_io {
            f &= !libc::O_DIRECT;
        }
        if !self.cfg.preserve_noatime {
            f &= !libc::O_NOATIME;
        }
        if self.cfg.writeback {
            // The guest's page cache may read back what it writes, and it
            // tracks the file size itself, so appends carry explicit offsets.
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f
    }

    /// What the guest may cache of what it opens. Directory listings are
    /// kept in the guest's page cache wherever metadata is cached at all
    /// (`CACHE_DIR`, and `KEEP_CACHE`, without which Linux drops the
    /// listing at every opendir): the kernel reuses a listing only while
    /// the directory's mtime and change counter are those it was read
    /// with, and with `cache=auto` (AUTO_INVAL_DATA) it fetches the
    /// attributes again once they have timed out, so a host-side change
    /// shows as it does for a cached entry. `git status` of linux-source-6.1
    /// lists its 5,200 directories every run: without this, each listing
    /// was a READDIRPLUS with a lookup per entry.
    fn open_options(&self, is_dir: bool) -> OpenOptions {
        match (self.cfg.cache, is_dir) {
            // Data is not cached with `metadata` either, as upstream.
            (CachePolicy::Never | CachePolicy::Metadata, false) => OpenOptions::DIRECT_IO,
            (CachePolicy::Never, true) => OpenOptions::empty(),
            (_, true) => OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE,
            (CachePolicy::Always, false) => OpenOptions::KEEP_CACHE,
            (CachePolicy::Auto, false) => OpenOptions::empty(),
        }
    }

    /// Opens `inode` for the requester of `ctx` and returns the new
    /// handle. `kill_on_trunc`: the OPEN carries FUSE_OPEN_KILL_SUIDGID
    /// under FUSE_HANDLE_KILLPRIV_V2, so an `O_TRUNC` open also drops the
    /// file's privileges ([`kill_privs`](Self::kill_privs)).
    fn do_open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: libc::c_int,
        want_dir: bool,
        exec: bool,
        kill_on_trunc: bool,
    ) -> io::Result<u64> {
        let data = self.inodes.get(inode)?;
        if want_dir && !data.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if self.cfg.readonly && is_readonly_violation(flags) {
            return Err(errno(libc::EROFS));
        }
        let fd = self.path_fd(&data)?;
        let file = {
            let _c = self.creds(ctx)?;
            if exec && data.is_reg() && flags & libc::O_ACCMODE == libc::O_RDONLY {
                // Opened to be executed: the requester needs execute
                // permission, not read permission (a mode 0111 program
                // runs), so that is what is checked with their ids; the
                // read-only open itself is the daemon's.
                let name = fd_name(fd.as_raw_fd());
                if !self.may_access(self.proc_self_fd.as_raw_fd(), &name, libc::X_OK) {
                    return Err(errno(libc::EACCES));
                }
                crate::credentials::as_daemon(|| self.reopen(&data, &fd, flags | libc::O_CLOEXEC))?
            } else {
                let file = self.reopen(&data, &fd, flags | libc::O_CLOEXEC)?;
                if kill_on_trunc && flags & libc::O_TRUNC != 0 {
                    // The open, with the requester's ids, truncated the
                    // file (so they may write it), and it is now empty:
                    // there is nothing to run with the bits in between.
                    self.kill_privs(file.as_raw_fd(), || true)?;
                }
                file
            }
        };
        Ok(self.handles.insert(inode, file))
    }

    /// CREATE without `O_EXCL` of a name that exists: the checked path of
    /// OPEN (an `O_PATH` open of the name, then
    /// [`reopen_typed`](Self::reopen_typed), which opens only regular files
    /// and never blocks), the object registered once it is open. A
    /// directory is `EISDIR`, as `open(O_CREAT)` answers. Returns the entry,
    /// with one lookup counted, and the open file. Runs under the
    /// requester's credentials, with the parent's fd `pfd` resolved before.
    fn open_existing(
        &self,
        parent: &InodeData,
        pfd: &InodeFd<'_>,
        name: &CStr,
        flags: libc::c_int,
    ) -> io::Result<(Entry, File)> {
        let fd = self.open_child(pfd.as_raw_fd(), name)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let file_type = st.st_mode & libc::S_IFMT;
        if file_type == libc::S_IFDIR {
            return Err(errno(libc::EISDIR));
        }
        let file = self.reopen_typed(file_type, fd.as_raw_fd(), flags | libc::O_CLOEXEC)?;
        let entry = self.register_stat(fd, st, Some(parent.key.dev))?;
        Ok((entry, file))
    }

    /// Iterates the raw directory stream of `handle` from `offset`, calling
    /// `add(name, ino, next_offset, d_type)` until it returns 0 (buffer full).
    fn for_each_dirent(
        &self,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        mut add: impl FnMut(&[u8], u64, u64, u32) -> io::Result<usize>,
    ) -> io::Result<()> {
        let h = self.handles.get(inode, handle)?;
        let _pos = h.lock_dir();
        let fd = h.as_raw_fd();
        sys::lseek(fd, offset as i64, libc::SEEK_SET)?;
        let mut buf = vec![0u8; (size as usize).clamp(1024, 64 * 1024)];
        loop {
            let n = sys::getdents64(fd, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let mut pos = 0;
            while pos + 19 <= n {
                // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
                let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap_or_default());
                let off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap_or_default());
                let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
                let d_type = u32::from(buf[pos + 18]);
                if reclen < 19 || pos + reclen > n {
                    return Err(errno(libc::EIO));
                }
                let raw = &buf[pos + 19..pos + reclen];
                let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
                pos += reclen;
                if add(name, ino, off as u64, d_type)? == 0 {
                    return Ok(());
                }
            }
        }
    }

    fn check_xattr_enabled(&self) -> io::Result<()> {
        if self.cfg.xattr {
            Ok(())
        } else {
            Err(errno(libc::ENOSYS))
        }
    }

    /// The host name of the xattr `name` the guest sent with `op`: mapped
    /// by [`Config::xattrmap`], or `name` itself without a map; or the
    /// errno the map answers for it.
    fn host_xattr_name<'a>(
        &self,
        name: &'a CStr,
        op: XattrOp,
    ) -> io::Result<std::borrow::Cow<'a, CStr>> {
        match &self.cfg.xattrmap {
            Some(map) => map.host_name(name, op),
            None => Ok(std::borrow::Cow::Borrowed(name)),
        }
    }

    fn with_xattr_file<T>(
        &self,
        ctx: &Context,
        inode: u64,
        f: impl FnOnce(&XattrTarget) -> io::Result<T>,
    ) -> io::Result<T> {
        self.with_xattr_target(inode, |t| {
            let _c = self.creds(ctx)?;
            f(t)
        })
    }

    /// [`with_xattr_file`](Self::with_xattr_file) with the calling
    /// thread's credentials as they are.
    fn with_xattr_target<T>(
        &self,
        inode: u64,
        f: impl FnOnce(&XattrTarget) -> io::Result<T>,
    ) -> io::Result<T> {
        self.check_xattr_enabled()?;
        let data = self.inodes.get(inode)?;
        let fd = self.path_fd(&data)?;
        let target = if data.is_reg() || data.is_dir() {
            // Opened as the daemon so that a mode-000 file still has its
            // xattrs reachable; the xattr call itself runs with the
            // requester's credentials, which is where the kernel checks
            // permission.
            XattrTarget::File(self.reopen(&data, &fd, libc::O_RDONLY | libc::O_NONBLOCK)?)
        } else {
            // Symlinks and special files are never opened on the host: the
            // *xattrat calls reach them through their O_PATH fd's magic
            // link, and the host kernel decides which namespaces they allow
            // (user.* never; trusted.*, security.* and ACL names yes).
            XattrTarget::Path {
                proc_dir: self.proc_self_fd.as_raw_fd(),
                name: fd_name(fd.as_raw_fd()),
            }
        };
        let out = f(&target);
        drop(fd);
        out
    }

    /// Copies `len` bytes between two open handles on the host
    /// (`copy_file_range(2)`), for the FUSE opcode fuse-backend-rs does not
    /// dispatch itself.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        ctx: &Context,
        inode_in: u64,
        handle_in: u64,
        offset_in: u64,
        inode_out: u64,
        handle_out: u64,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        self.check_writable()?;
        if flags != 0 {
            return Err(errno(libc::EINVAL));
        }
        let hin = self.handles.get(inode_in, handle_in)?;
        let hout = self.handles.get(inode_out, handle_out)?;
        let mut off_in = i64::try_from(offset_in).map_err(|_| errno(libc::EINVAL))?;
        let mut off_out = i64::try_from(offset_out).map_err(|_| errno(libc::EINVAL))?;
        self.kill_privs_unflagged(ctx, hout.as_raw_fd())?;
        // SAFETY: both fds are held open by the handle Arcs; the offsets are
        // valid out-pointers.
        let ret = unsafe {
            libc::copy_file_range(
                hin.as_raw_fd(),
                &mut off_in,
                hout.as_raw_fd(),
                &mut off_out,
                len as usize,
                0,
            )
        };
        sys::cvt_long(ret as libc::c_long).map(|n| n as usize)
    }
}

impl PassthroughFs {
    /// GETLK, SETLK and SETLKW are served only when POSIX locks were offered
    /// ([`Config::posix_locks`]); otherwise they answer `ENOSYS` at once (a
    /// guest that was not offered locks must not park a worker in SETLKW).
    fn check_posix_locks(&self) -> io::Result<()> {
        if self.cfg.posix_locks {
            Ok(())
        } else {
            Err(errno(libc::ENOSYS))
        }
    }

    /// Tests for a byte-range lock conflicting with `lock` on an open
    /// handle (`F_OFD_GETLK`): the conflicting lock, or `lock` with type
    /// `F_UNLCK` if there is none. For a front end with its own lock
    /// protocol (9P's Tgetlock); never blocks.
    pub fn test_lock(&self, inode: u64, handle: u64, lock: FileLock) -> io::Result<FileLock> {
        let h = self.handles.get(inode, handle)?;
        getlk_on(h.as_raw_fd(), &lock)
    }

    /// Takes or releases a byte-range lock on an open handle without
    /// waiting (`F_OFD_SETLK`): `EAGAIN` if another holder conflicts. For a
    /// front end with its own lock protocol (9P's Tlock); never blocks.
    pub fn try_lock(&self, inode: u64, handle: u64, lock: FileLock) -> io::Result<()> {
        let h = self.handles.get(inode, handle)?;
        let fl = flock_from(&lock);
        // SAFETY: `fl` is a valid flock; the fd is held by the handle Arc.
        cvt(unsafe { libc::fcntl(h.as_raw_fd(), libc::F_OFD_SETLK, &fl) }).map(drop)
    }

    /// Whether lock requests of either kind were offered to the guest
    /// ([`Config::posix_locks`], [`Config::flock_locks`]).
    pub fn locks_offered(&self) -> bool {
        self.cfg.posix_locks || self.cfg.flock_locks
    }

    /// A FUSE SETLK, or one attempt of a SETLKW, without waiting: with
    /// [`LK_FLOCK`] in `lk_flags` a whole-file flock(2) lock on the
    /// handle's open file (as the guest's flock is on its open file), else
    /// a POSIX byte-range lock of lock `owner` (a guest process), held by
    /// the owner's own open file description ([`owner_file`](Self::owner_file),
    /// `F_OFD_SETLK`), so that, as POSIX locks locally, one process's
    /// locks through any of its opens are one set, and two processes
    /// sharing an open (after fork) do not share them. `EAGAIN` when another holder (a host process,
    /// another guest, another open of this guest) conflicts; `ENOSYS` for
    /// a kind that was not offered.
    pub fn try_setlk(
        &self,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        lk_flags: u32,
    ) -> io::Result<()> {
        if lk_flags & LK_FLOCK == 0 {
            self.check_posix_locks()?;
            let unlock = lock.lock_type == libc::F_UNLCK as u32;
            let Some(f) = self.owner_file(inode, handle, owner, lock.lock_type, !unlock)? else {
                // The owner holds nothing here: nothing to unlock.
                return Ok(());
            };
            let fl = flock_from(&lock);
            // SAFETY: `fl` is a valid flock; the fd is held by the Arc.
            return cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) }).map(drop);
        }
        if !self.cfg.flock_locks {
            return Err(errno(libc::ENOSYS));
        }
        let op = match lock.lock_type as libc::c_int {
            libc::F_RDLCK => libc::LOCK_SH,
            libc::F_WRLCK => libc::LOCK_EX,
            libc::F_UNLCK => libc::LOCK_UN,
            _ => return Err(errno(libc::EINVAL)),
        };
        let h = self.handles.get(inode, handle)?;
        // SAFETY: plain syscall on an fd held open by the handle Arc.
        cvt(unsafe { libc::flock(h.as_raw_fd(), op | libc::LOCK_NB) }).map(drop)
    }
}

impl PassthroughFs {
    fn lock_owners(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(u64, u64), Arc<File>>> {
        self.plocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file description holding lock owner `owner`'s POSIX locks
    /// on `inode`: made on first use (`create`; `None` without it) by
    /// reopening the file as the daemon, read-write where the host allows
    /// it, else read-only, and kept until that owner's FLUSH (its close in
    /// the guest), a new session, or forever if neither comes: at most
    /// [`MAX_LOCK_OWNERS`] at once (then `ENOLCK`), each held to the
    /// guest's fd budget. The guest's own open `handle` must allow the
    /// lock (`lock_type`): a read lock needs it open for reading, a write
    /// lock for writing (`EBADF` otherwise, as locally).
    fn owner_file(
        &self,
        inode: u64,
        handle: u64,
        owner: u64,
        lock_type: u32,
        create: bool,
    ) -> io::Result<Option<Arc<File>>> {
        let h = self.handles.get(inode, handle)?;
        // SAFETY: F_GETFL only reads the flags of an fd the Arc holds.
        let fl = cvt(unsafe { libc::fcntl(h.as_raw_fd(), libc::F_GETFL) })?;
        let acc = fl & libc::O_ACCMODE;
        match lock_type as libc::c_int {
            libc::F_RDLCK if acc == libc::O_WRONLY => return Err(errno(libc::EBADF)),
            libc::F_WRLCK if acc == libc::O_RDONLY => return Err(errno(libc::EBADF)),
            libc::F_RDLCK | libc::F_WRLCK | libc::F_UNLCK => {}
            _ => return Err(errno(libc::EINVAL)),
        }
        drop(h);
        let mut owners = self.lock_owners();
        if let Some(f) = owners.get(&(inode, owner)) {
            return Ok(Some(f.clone()));
        }
        if !create {
            return Ok(None);
        }
        if owners.len() >= MAX_LOCK_OWNERS {
            return Err(errno(libc::ENOLCK));
        }
        let data = self.inodes.get(inode)?;
        let fd = self.path_fd(&data)?;
        let file = crate::credentials::as_daemon(|| {
            self.reopen(&data, &fd, libc::O_RDWR | libc::O_CLOEXEC)
                .or_else(|_| self.reopen(&data, &fd, libc::O_RDONLY | libc::O_CLOEXEC))
        })?;
        let file = File::from(self.admit_guest_fd(OwnedFd::from(file))?);
        let file = Arc::new(file);
        owners.insert((inode, owner), file.clone());
        Ok(Some(file))
    }
}

/// The most (inode, lock owner) open files kept for POSIX locks at once.
pub const MAX_LOCK_OWNERS: usize = 1024;

/// `F_OFD_GETLK` of `lock` on `fd`: the conflicting lock, or `lock` with
/// type `F_UNLCK`.
fn getlk_on(fd: RawFd, lock: &FileLock) -> io::Result<FileLock> {
    let mut fl = flock_from(lock);
    // SAFETY: `fl` is a valid flock; the caller holds `fd` open.
    cvt(unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) })?;
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        // No conflict: the kernel changed only the type (the range is the
        // guest's own, which may be one the arithmetic below cannot take).
        return Ok(FileLock {
            lock_type: libc::F_UNLCK as u32,
            ..*lock
        });
    }
    // A conflicting lock, as the kernel reports it: start >= 0, len >= 0.
    let start = fl.l_start.max(0) as u64;
    Ok(FileLock {
        start,
        end: if fl.l_len <= 0 {
            i64::MAX as u64
        } else {
            start.saturating_add(fl.l_len as u64 - 1)
        },
        lock_type: fl.l_type as u32,
        pid: 0,
    })
}

/// `FUSE_LK_FLOCK` in a lock request's `lk_flags`: a flock(2) lock, not a
/// POSIX byte-range lock.
pub const LK_FLOCK: u32 = 1;

/// Whether `new` (permission bits) is `cur`'s mode with only set-user-ID
/// and/or set-group-ID bits removed (and at least one removed).
fn only_drops_setid(cur: u32, new: u32) -> bool {
    let setid = libc::S_ISUID | libc::S_ISGID;
    let cur = cur & 0o7777;
    new & !setid == cur & !setid && new & setid & !cur == 0 && new & setid != cur & setid
}

/// `FMODE_EXEC` in a FUSE OPEN's flags: the kernel opens the file to
/// execute it (it checked the execute permission already).
const FMODE_EXEC: u32 = 0x20;

/// The xattr holding a file's capabilities, which Linux drops with the
/// set-id bits.
const SECURITY_CAPABILITY: &CStr = c"security.capability";

/// The mode bits an unprivileged change of a regular file of mode `mode`
/// drops (Linux's `setattr_should_drop_suidgid`, and the rule
/// FUSE_HANDLE_KILLPRIV_V2 states): `S_ISUID`, and `S_ISGID` where
/// `S_IXGRP` is set too (without it the bit marks mandatory locking, not a
/// set-group-id program).
fn setid_bits_to_kill(mode: u32) -> u32 {
    let mut kill = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    kill
}

/// Whether the file open as `fd` has the xattr `name` (`ENODATA`, or a
/// filesystem without xattrs: no).
fn has_xattr(fd: RawFd, name: &CStr) -> io::Result<bool> {
    // SAFETY: NUL-terminated name; a size of 0 asks for the value's length
    // and writes nothing.
    let n = unsafe { libc::fgetxattr(fd, name.as_ptr(), std::ptr::null_mut(), 0) };
    if n >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA | libc::ENOTSUP) => Ok(false),
        _ => Err(e),
    }
}

/// Whether `fd` is open for writing.
fn open_for_writing(fd: RawFd) -> bool {
    // SAFETY: F_GETFL only reads the fd's flags.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_RDONLY
}

fn flock_from(lock: &FileLock) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lock.lock_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = lock.start as libc::off_t;
    // FUSE ranges are inclusive, with OFFSET_MAX meaning "to the end".
    fl.l_len = if lock.end >= i64::MAX as u64 {
        0
    } else {
        (lock.end.saturating_sub(lock.start) + 1) as libc::off_t
    };
    fl
}

impl FileSystem for PassthroughFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        if self.initialized.swap(true, Ordering::AcqRel) {
            // A new session without a DESTROY (a guest that crashed or
            // rebooted sends none): what the last one held goes now, its
            // open files and with them the locks they hold on the host.
            log::info!("FUSE_INIT again: ending the previous session");
            self.destroy();
        }
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::BIG_WRITES
            | FsOptions::ATOMIC_O_TRUNC
            | FsOptions::HAS_IOCTL_DIR
            | FsOptions::MAX_PAGES
            | FsOptions::AUTO_INVAL_DATA;
        if self.cfg.readdirplus {
            want |= FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
        }
        if self.cfg.writeback {
            want |= FsOptions::WRITEBACK_CACHE;
        }
        if self.cfg.announce_submounts {
            want |= FsOptions::SUBMOUNTS;
        }
        if self.cfg.posix_acl != Negotiation::Never && self.cfg.xattr {
            if capable.contains(FsOptions::POSIX_ACL) {
                want |= FsOptions::POSIX_ACL | FsOptions::DONT_MASK;
            } else if self.cfg.posix_acl == Negotiation::Always {
                log::error!("--posix-acl=always: the guest does not offer FUSE_POSIX_ACL; its FUSE_INIT fails");
                return Err(errno(libc::EPROTO));
            } else {
                log::warn!(
                    "--posix-acl: FUSE_POSIX_ACL is not offered by the guest; going on without it"
                );
            }
        }
        if self.cfg.posix_locks {
            want |= FsOptions::POSIX_LOCKS;
        }
        if self.cfg.flock_locks {
            want |= FsOptions::FLOCK_LOCKS;
        }
        if self.cfg.killpriv_v2 {
            want |= FsOptions::HANDLE_KILLPRIV_V2;
            if !capable.contains(FsOptions::HANDLE_KILLPRIV_V2) {
                log::warn!(
                    "--killpriv-v2: the guest does not offer HANDLE_KILLPRIV_V2; \
                     it clears set-id bits itself"
                );
            }
        }
        let got = want & capable;
        self.dont_mask
            .store(got.contains(FsOptions::DONT_MASK), Ordering::Relaxed);
        self.killpriv_v2.store(
            got.contains(FsOptions::HANDLE_KILLPRIV_V2),
            Ordering::Relaxed,
        );
        Ok(got)
    }

    fn destroy(&self) {
        self.lock_owners().clear();
        self.handles.clear();
        self.inodes.clear_except_root();
        self.mounts.retain_only(self.root_mount);
        sys::trim_heap();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let parent = self.inodes.get(parent)?;
        if !parent.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        // The parent's fd with the daemon's ids (a file handle needs them),
        // the lookup in it with the requester's.
        let pfd = self.path_fd(&parent)?;
        let found = self.client_checked(ctx, || {
            let _c = self.creds(ctx)?;
            self.do_lookup(&parent, &pfd, name, Hint::Name)
        });
        match found {
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && self.cfg.negative_entries
                    && !self.timeout().is_zero() =>
            {
                Ok(Entry {
                    inode: 0,
                    entry_timeout: self.timeout(),
                    ..Entry::default()
                })
            }
            r => r,
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        if self.inodes.forget(inode, count) {
            sys::trim_heap();
        }
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        let mut shrunk = false;
        for (inode, count) in requests {
            shrunk |= self.inodes.forget(inode, count);
        }
        if shrunk {
            sys::trim_heap();
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let st = match handle {
            Some(h) => match self.handles.get(inode, h) {
                Ok(h) => sys::fstat(h.as_raw_fd())?,
                Err(_) => self.stat_inode(&self.inodes.get(inode)?)?,
            },
            None => self.stat_inode(&self.inodes.get(inode)?)?,
        };
        Ok((self.guest_stat(st), self.timeout()))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            let data = self.inodes.get(inode)?;
            let fd = self.path_fd(&data)?;
            let h = handle.and_then(|h| self.handles.get(inode, h).ok());
            let proc_name = fd_name(fd.as_raw_fd());
            let proc_fd = self.proc_self_fd.as_raw_fd();
            let _c = self.creds(ctx)?;

            if valid.contains(SetattrValid::MODE) {
                let mode = attr.st_mode & 0o7777;
                let chmod = || {
                    // SAFETY: plain syscalls on fds we hold; proc_name is
                    // NUL-terminated.
                    cvt(unsafe {
                        match &h {
                            Some(h) => libc::fchmod(h.as_raw_fd(), mode),
                            None => libc::fchmodat(proc_fd, proc_name.as_ptr(), mode, 0),
                        }
                    })
                };
                match chmod() {
                    // The guest kernel clearing set-id bits after a write, a
                    // truncate or an fallocate by someone who may write the file
                    // but does not own it: the kernel does that itself on a
                    // local filesystem, so the daemon does it for them.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EPERM)
                            && only_drops_setid(sys::fstat(fd.as_raw_fd())?.st_mode, mode)
                            && self.may_access(proc_fd, &proc_name, libc::W_OK) =>
                    {
                        crate::credentials::as_daemon(chmod)?;
                    }
                    r => {
                        r?;
                    }
                }
            }
            if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
                // The guest's ids, translated to the host's (a forbidden
                // one is EPERM); u32::MAX, (uid_t)-1, is never translated.
                let uid = if valid.contains(SetattrValid::UID) {
                    self.host_uid(attr.st_uid)?
                } else {
                    u32::MAX
                };
                let gid = if valid.contains(SetattrValid::GID) {
                    self.host_gid(attr.st_gid)?
                } else {
                    u32::MAX
                };
                // With FATTR_KILL_SUIDGID (which the guest sends with every
                // chown of a non-directory) there is nothing to add: the
                // host's chown drops S_ISUID, an executable S_ISGID and the
                // file capabilities of a non-directory, whoever asks.
                // SAFETY: AT_EMPTY_PATH on an fd we hold; EMPTY is NUL-terminated.
                cvt(unsafe {
                    libc::fchownat(
                        fd.as_raw_fd(),
                        EMPTY.as_ptr(),
                        uid,
                        gid,
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            if valid.contains(SetattrValid::SIZE) {
                let size = attr.st_size;
                // With FATTR_KILL_SUIDGID the privileges go before the size
                // changes, through the fd that is truncated, once it is
                // known that the requester may write the file: a handle
                // open for writing, or the file opened with their ids.
                let kill = size >= 0 && self.killpriv(valid.contains(SetattrValid::KILL_SUIDGID));
                match &h {
                    Some(h) => {
                        if kill {
                            self.kill_privs(h.as_raw_fd(), || open_for_writing(h.as_raw_fd()))?;
                        }
                        // SAFETY: ftruncate on an fd held open by the handle Arc.
                        cvt(unsafe { libc::ftruncate64(h.as_raw_fd(), size) })?
                    }
                    None => {
                        let f = self.reopen(&data, &fd, libc::O_WRONLY | libc::O_NONBLOCK)?;
                        if kill {
                            self.kill_privs(f.as_raw_fd(), || true)?;
                        }
                        // SAFETY: ftruncate on the file we just opened.
                        cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), size) })?
                    }
                };
            }
            if valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME) {
                let ts = |set: bool, now: bool, sec: i64, nsec: i64| libc::timespec {
                    tv_sec: if set && !now { sec } else { 0 },
                    tv_nsec: if !set {
                        libc::UTIME_OMIT
                    } else if now {
                        libc::UTIME_NOW
                    } else {
                        nsec
                    },
                };
                let times = [
                    ts(
                        valid.contains(SetattrValid::ATIME),
                        valid.contains(SetattrValid::ATIME_NOW),
                        attr.st_atime,
                        attr.st_atime_nsec,
                    ),
                    ts(
                        valid.contains(SetattrValid::MTIME),
                        valid.contains(SetattrValid::MTIME_NOW),
                        attr.st_mtime,
                        attr.st_mtime_nsec,
                    ),
                ];
                // SAFETY: `times` is a valid two-element array; fds are held.
                cvt(unsafe {
                    match &h {
                        Some(h) => libc::futimens(h.as_raw_fd(), times.as_ptr()),
                        None => libc::utimensat(proc_fd, proc_name.as_ptr(), times.as_ptr(), 0),
                    }
                })?;
            }
            let st = match &h {
                Some(h) => sys::fstat(h.as_raw_fd())?,
                None => sys::fstat(fd.as_raw_fd())?,
            };
            Ok((self.guest_stat(st), self.timeout()))
        })
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let data = self.inodes.get(inode)?;
        if !data.is_symlink() {
            return Err(errno(libc::EINVAL));
        }
        let fd = self.path_fd(&data)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: `buf` is writable for the length passed; EMPTY is NUL-terminated.
        let n = sys::cvt_long(unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                EMPTY.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ) as libc::c_long
        })? as usize;
        buf.truncate(n);
        Ok(buf)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name(name)?;
            if linkname.to_bytes().is_empty() {
                return Err(errno(libc::ENOENT));
            }
            self.check_creator(ctx)?;
            let parent = self.inodes.get(parent)?;
            let pfd = self.path_fd(&parent)?;
            let entry = {
                let _c = self.creds(ctx)?;
                // The target is stored verbatim and never resolved by the host.
                // SAFETY: both strings are NUL-terminated; pfd is held.
                cvt(unsafe { libc::symlinkat(linkname.as_ptr(), pfd.as_raw_fd(), name.as_ptr()) })?;
                self.do_lookup(&parent, &pfd, name, Hint::Created)
                    .inspect_err(|e| self.unmake_unlabelled(&pfd, name, e))?
            };
            self.label_new(ctx, &pfd, name, entry, NewNode::Named(libc::S_IFLNK))
        })
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name(name)?;
            self.check_creator(ctx)?;
            let parent = self.inodes.get(parent)?;
            let pfd = self.path_fd(&parent)?;
            let mode = self.creation_mode(&parent, &pfd, mode, umask);
            let entry = {
                let _c = self.creds(ctx)?;
                // SAFETY: NUL-terminated name; pfd is held.
                cvt(unsafe {
                    libc::mknodat(
                        pfd.as_raw_fd(),
                        name.as_ptr(),
                        mode,
                        libc::dev_t::from(rdev),
                    )
                })?;
                self.do_lookup(&parent, &pfd, name, Hint::Created)
                    .inspect_err(|e| self.unmake_unlabelled(&pfd, name, e))?
            };
            self.label_new(ctx, &pfd, name, entry, NewNode::Named(mode & libc::S_IFMT))
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name(name)?;
            self.check_creator(ctx)?;
            let parent = self.inodes.get(parent)?;
            let pfd = self.path_fd(&parent)?;
            let mode = self.creation_mode(&parent, &pfd, mode, umask);
            let entry = {
                let _c = self.creds(ctx)?;
                // SAFETY: NUL-terminated name; pfd is held.
                cvt(unsafe { libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), mode) })?;
                self.do_lookup(&parent, &pfd, name, Hint::Created)
                    .inspect_err(|e| self.unmake_unlabelled(&pfd, name, e))?
            };
            self.label_new(ctx, &pfd, name, entry, NewNode::Named(libc::S_IFDIR))
        })
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name_for_removal(name)?;
            let parent = self.inodes.get(parent)?;
            let pfd = self.path_fd(&parent)?;
            let _c = self.creds(ctx)?;
            // SAFETY: NUL-terminated name; pfd is held.
            cvt(unsafe { libc::unlinkat(pfd.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
        })
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name_for_removal(name)?;
            let parent = self.inodes.get(parent)?;
            let pfd = self.path_fd(&parent)?;
            let _c = self.creds(ctx)?;
            // SAFETY: NUL-terminated name; pfd is held.
            cvt(unsafe { libc::unlinkat(pfd.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
                .map(drop)
        })
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name_for_removal(oldname)?;
            check_name_for_removal(newname)?;
            // RENAME_WHITEOUT creates a device node on the host: not for guests.
            if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
                return Err(errno(libc::EINVAL));
            }
            let old = self.inodes.get(olddir)?;
            let new = self.inodes.get(newdir)?;
            let ofd = self.path_fd(&old)?;
            let nfd = self.path_fd(&new)?;
            let _c = self.creds(ctx)?;
            sys::renameat2(ofd.as_raw_fd(), oldname, nfd.as_raw_fd(), newname, flags)
        })
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name(newname)?;
            let data = self.inodes.get(inode)?;
            let parent = self.inodes.get(newparent)?;
            let fd = self.path_fd(&data)?;
            let pfd = self.path_fd(&parent)?;
            let proc_name = fd_name(fd.as_raw_fd());
            let _c = self.creds(ctx)?;
            // Linking through /proc/self/fd needs no CAP_DAC_READ_SEARCH (unlike
            // AT_EMPTY_PATH), so it works under the requester's credentials.
            // SAFETY: NUL-terminated names; fds are held.
            cvt(unsafe {
                libc::linkat(
                    self.proc_self_fd.as_raw_fd(),
                    proc_name.as_ptr(),
                    pfd.as_raw_fd(),
                    newname.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })?;
            self.do_lookup(&parent, &pfd, newname, Hint::Name)
        })
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        // fuse_open_in.open_flags (fuse-backend-rs: fuse_flags).
        let kill = self.killpriv(fuse_flags & FOPEN_IN_KILL_SUIDGID != 0);
        self.client_checked(ctx, || {
            let exec = flags & FMODE_EXEC != 0;
            let flags = self.open_flags(flags);
            let handle = self.do_open(ctx, inode, flags, false, exec, kill)?;
            Ok((Some(handle), self.open_options(false), None))
        })
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            check_name(name)?;
            self.check_creator(ctx)?;
            let parent = self.inodes.get(parent)?;
            let pfd = self.path_fd(&parent)?;
            let flags = self.open_flags(args.flags);
            // fuse_create_in.open_flags (fuse-backend-rs: fuse_flags).
            let kill = self.killpriv(args.fuse_flags & FOPEN_IN_KILL_SUIDGID != 0)
                && flags & libc::O_TRUNC != 0;
            let mode = self.creation_mode(&parent, &pfd, args.mode, args.umask);
            let mut created = false;
            let (entry, file) = {
                let _c = self.creds(ctx)?;
                // Only a new regular file is ever opened by name: an existing
                // name (a device node, a FIFO, a symlink...) fails with EEXIST
                // and, unless the guest asked for O_EXCL, goes the way of OPEN.
                let create = flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
                let mut retries = 3;
                loop {
                    match sys::openat(pfd.as_raw_fd(), name, create, mode) {
                        Ok(fd) => {
                            let opened = self.admit_guest_fd(fd).and_then(|fd| {
                                let entry = self.do_lookup(&parent, &pfd, name, Hint::Created)?;
                                Ok((entry, File::from(fd)))
                            });
                            match opened {
                                Ok(made) => {
                                    created = true;
                                    break made;
                                }
                                Err(e) => {
                                    self.unmake_unlabelled(&pfd, name, &e);
                                    return Err(e);
                                }
                            }
                        }
                        Err(e)
                            if e.raw_os_error() == Some(libc::EEXIST)
                                && flags & libc::O_EXCL == 0 =>
                        {
                            match self.open_existing(&parent, &pfd, name, flags) {
                                // Removed since: create it after all.
                                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && retries > 0 => {
                                    retries -= 1;
                                }
                                // An existing file the open truncated, as
                                // in OPEN (a new one is not truncated).
                                Ok((entry, file)) if kill => {
                                    if let Err(e) = self.kill_privs(file.as_raw_fd(), || true) {
                                        self.inodes.forget(entry.inode, 1);
                                        return Err(e);
                                    }
                                    break (entry, file);
                                }
                                r => break r?,
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            // Only a file this request made gets its security context.
            let entry = match created {
                true => self.label_new(ctx, &pfd, name, entry, NewNode::Opened(&file))?,
                false => entry,
            };
            let handle = self.handles.insert(entry.inode, file);
            Ok((entry, Some(handle), self.open_options(false), None))
        })
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let h = self.data_handle(inode, handle, Access::Read)?;
        let mut f = BorrowedFile::new(&*h);
        w.write_from(f.file(), size as usize, offset)
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let h = self.data_handle(inode, handle, Access::Write)?;
        // fuse_write_in.write_flags (fuse-backend-rs: fuse_flags) with
        // FUSE_WRITE_KILL_SUIDGID (fuse-backend-rs: WRITE_KILL_PRIV): the
        // bits go before the data changes. The write runs with the daemon's
        // CAP_FSETID, so the host would keep them.
        if size > 0 && self.killpriv(fuse_flags & WRITE_KILL_PRIV != 0) {
            self.kill_privs(h.as_raw_fd(), || open_for_writing(h.as_raw_fd()))?;
        }
        let mut f = BorrowedFile::new(&*h);
        r.read_to(f.file(), size as usize, offset)
    }

    fn flush(&self, _ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        // Nothing is buffered in the daemon. A close in the guest (FLUSH
        // carries its lock owner) ends that owner's POSIX locks on the
        // file, as a close does locally: closing the owner's open file
        // description releases them on the host.
        self.handles.get(inode, handle)?;
        self.lock_owners().remove(&(inode, lock_owner));
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let h = self.handles.get(inode, handle)?;
        // SAFETY: plain syscall on an fd held open by the handle Arc.
        cvt(unsafe {
            if datasync {
                libc::fdatasync(h.as_raw_fd())
            } else {
                libc::fsync(h.as_raw_fd())
            }
        })
        .map(drop)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        let h = self.handles.get(inode, handle)?;
        let off = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let len = i64::try_from(length).map_err(|_| errno(libc::EINVAL))?;
        self.kill_privs_unflagged(ctx, h.as_raw_fd())?;
        // SAFETY: plain syscall on an fd held open by the handle Arc.
        cvt(unsafe { libc::fallocate64(h.as_raw_fd(), mode as libc::c_int, off, len) }).map(drop)
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.handles.remove(inode, handle)
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let data = self.inodes.get(inode)?;
        let fd = self.path_fd(&data)?;
        let mut st = std::mem::MaybeUninit::<statvfs64>::zeroed();
        // SAFETY: valid out-pointer; fstatvfs accepts O_PATH fds.
        cvt(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: the call succeeded and filled the struct.
        Ok(unsafe { st.assume_init() })
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            self.check_xattr_enabled()?;
            check_xattr_name(name)?;
            if value.len() > XATTR_SIZE_MAX as usize {
                return Err(errno(libc::E2BIG));
            }
            let name = self.host_xattr_name(name, XattrOp::Set)?;
            self.with_xattr_file(ctx, inode, |t| t.set(&name, value, flags as libc::c_int))
        })
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.client_checked(ctx, || {
            self.check_xattr_enabled()?;
            check_xattr_name(name)?;
            let name = self.host_xattr_name(name, XattrOp::Get)?;
            self.with_xattr_file(ctx, inode, |t| {
                // No value is larger than XATTR_SIZE_MAX, so neither is the
                // buffer, whatever the guest offers; a larger value would be
                // ERANGE from the host as for a short buffer.
                let len = size.min(XATTR_SIZE_MAX) as usize;
                let mut buf = vec![0u8; len];
                let n = t.get(&name, &mut buf)?;
                if size == 0 {
                    Ok(GetxattrReply::Count(n as u32))
                } else {
                    buf.truncate(n);
                    Ok(GetxattrReply::Value(buf))
                }
            })
        })
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.client_checked(ctx, || {
            self.with_xattr_file(ctx, inode, |t| {
                if let Some(map) = &self.cfg.xattrmap {
                    // The guest's size is that of the mapped list, so the
                    // host's whole list is read and mapped first (the host
                    // lists at most XATTR_LIST_MAX bytes; beyond, E2BIG).
                    let mut buf = vec![0u8; XATTR_LIST_MAX as usize];
                    let n = t.list(&mut buf)?;
                    buf.truncate(n);
                    return map.list_reply(&buf, size);
                }
                // Capped at XATTR_LIST_MAX like the value in getxattr.
                let len = size.min(XATTR_LIST_MAX) as usize;
                let mut buf = vec![0u8; len];
                let n = t.list(&mut buf)?;
                if size == 0 {
                    Ok(ListxattrReply::Count(n as u32))
                } else {
                    buf.truncate(n);
                    Ok(ListxattrReply::Names(buf))
                }
            })
        })
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.client_checked(ctx, || {
            self.check_writable()?;
            self.check_xattr_enabled()?;
            check_xattr_name(name)?;
            let host_name = self.host_xattr_name(name, XattrOp::Remove)?;
            match self.with_xattr_file(ctx, inode, |t| t.remove(&host_name)) {
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && name == c"security.capability"
                        && self.acts_as_non_root(ctx) =>
                {
                    self.kill_file_caps(ctx, inode)
                }
                r => r,
            }
        })
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.client_checked(ctx, || {
            let handle = self.do_open(
                ctx,
                inode,
                libc::O_RDONLY | libc::O_DIRECTORY,
                true,
                false,
                false,
            )?;
            Ok((Some(handle), self.open_options(true)))
        })
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.for_each_dirent(inode, handle, size, offset, |name, ino, off, type_| {
            add_entry(DirEntry {
                ino,
                offset: off,
                type_,
                name,
            })
        })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let parent = self.inodes.get(inode)?;
        // Resolved once for every entry, with the daemon's ids.
        let pfd = self.path_fd(&parent)?;
        let _c = self.creds(ctx)?;
        let mut delivered = false;
        self.for_each_dirent(inode, handle, size, offset, |name, ino, off, type_| {
            let dirent = DirEntry {
                ino,
                offset: off,
                type_,
                name,
            };
            if name == b"." || name == b".." {
                // A zero node id tells the guest to resolve these itself.
                let n = add_entry(dirent, Entry::default())?;
                delivered |= n != 0;
                return Ok(n);
            }
            let Ok(cname) = CString::new(name) else {
                return Ok(1);
            };
            let entry = match self.do_lookup(&parent, &pfd, &cname, Hint::Dirent(ino)) {
                Ok(e) => e,
                // Out of fds (the reserve is reached): end the reply here,
                // or fail if it is empty, rather than leave entries out.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return if delivered { Ok(0) } else { Err(e) };
                }
                // Removed between getdents and the lookup: skip it.
                Err(_) => return Ok(1),
            };
            let nodeid = entry.inode;
            let n = add_entry(dirent, entry)?;
            delivered |= n != 0;
            if n == 0 {
                // Not delivered: give back the lookup we took.
                self.inodes.forget(nodeid, 1);
            }
            Ok(n)
        })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fsync(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.handles.remove(inode, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let data = self.inodes.get(inode)?;
        let fd = self.path_fd(&data)?;
        if data.is_symlink() {
            return Ok(());
        }
        if mask & libc::W_OK as u32 != 0 && self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        let proc_name = fd_name(fd.as_raw_fd());
        let _c = self.creds(ctx)?;
        // AT_EACCESS: check with the effective ids, which are the requester's.
        // SAFETY: NUL-terminated name relative to the held /proc/self/fd.
        cvt(unsafe {
            libc::faccessat(
                self.proc_self_fd.as_raw_fd(),
                proc_name.as_ptr(),
                mask as libc::c_int,
                libc::AT_EACCESS,
            )
        })
        .map(drop)
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.handles.get(inode, handle)?;
        // The offset is the guest's loff_t, signed: the host answers a
        // negative one as it answers its own callers (ENXIO for SEEK_DATA
        // and SEEK_HOLE, EINVAL for SEEK_SET).
        sys::lseek(h.as_raw_fd(), offset as i64, whence as libc::c_int)
    }

    fn getlk(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        _flags: u32,
    ) -> io::Result<FileLock> {
        self.check_posix_locks()?;
        match self.owner_file(inode, handle, owner, libc::F_UNLCK as u32, false)? {
            // The owner's own locks never conflict with it.
            Some(f) => getlk_on(f.as_raw_fd(), &lock),
            None => self.test_lock(inode, handle, lock),
        }
    }

    fn setlk(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.try_setlk(inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        // Waits in the calling thread: a transport whose threads serve
        // queues must not come here, and the virtio-fs device does not (it
        // keeps the request and retries [`try_setlk`] off its queues).
        match self.try_setlk(inode, handle, owner, lock, flags) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            r => return r,
        }
        let h = self.handles.get(inode, handle)?;
        if flags & LK_FLOCK != 0 {
            let op = if lock.lock_type as libc::c_int == libc::F_RDLCK {
                libc::LOCK_SH
            } else {
                libc::LOCK_EX
            };
            // SAFETY: plain syscall on an fd held open by the handle Arc.
            return cvt(unsafe { libc::flock(h.as_raw_fd(), op) }).map(drop);
        }
        let f = self
            .owner_file(inode, handle, owner, lock.lock_type, true)?
            .ok_or_else(|| errno(libc::ENOLCK))?;
        drop(h);
        let fl = flock_from(&lock);
        // SAFETY: `fl` is a valid flock; the fd is held by the Arc.
        cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLKW, &fl) }).map(drop)
    }
}
