//! The 9P2000.L server: one method per message, on the shared core.
//!
//! A [`Session`] is one client connection's state (negotiated msize, fid
//! table). Every fid holds one lookup on a core node; clunk gives it back.
//! Names are checked by the core (one component, no `/`); `..` at the share
//! root stays at the root, so no fid can reach outside the share.

use passthrough::Access;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, FileLock, FileSystem, GetxattrReply, ListxattrReply,
};
use passthrough::fs::{XATTR_LIST_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX};
use passthrough::io_buf::{SliceReader, VecWriter};
use passthrough::name::name_from_bytes;
use passthrough::{HandleData, PassthroughFs, ROOT_ID};

use crate::attach_policy::AttachPolicy;
use crate::fid_table::{
    Fid, FidError, FidPath, FidTable, Open, Xattr, DEFAULT_MAX_FIDS, MAX_PATH_BYTES,
};
use crate::messages::*;
use crate::user_db::UserDb;
use crate::wire::{Encoder, Qid, QID_SIZE, QTDIR, QTFILE, QTSYMLINK};

/// The largest msize the server agrees to.
pub const MAX_MSIZE: u32 = 4 * 1024 * 1024;
/// The smallest msize that leaves room for any reply header.
pub const MIN_MSIZE: u32 = 4096;
/// `P9_GETATTR_BASIC`: every field up to and including blocks.
const GETATTR_BASIC: u64 = 0x0000_07ff;
/// `V9FS_MAGIC`, reported as the file system type.
const V9FS_MAGIC: u32 = 0x0102_1997;
/// The 9P version this server speaks.
pub const VERSION: &[u8] = b"9P2000.L";

/// Tsetattr valid bits.
mod setattr_bits {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const ATIME_SET: u32 = 1 << 7;
    pub const MTIME_SET: u32 = 1 << 8;
}

/// Tlock status values.
mod lock_status {
    pub const SUCCESS: u8 = 0;
    pub const BLOCKED: u8 = 1;
    pub const ERROR: u8 = 2;
}

/// An errno for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            // ENOSYS is FUSE's "not implemented, stop asking"; a 9P client
            // (and the programs above it) expect EOPNOTSUPP for an
            // unsupported operation such as xattrs when they are disabled.
            Some(libc::ENOSYS) => Errno(libc::EOPNOTSUPP),
            Some(n) => Errno(n),
            None => Errno(libc::EIO),
        }
    }
}

impl From<FidError> for Errno {
    fn from(e: FidError) -> Self {
        Errno(e.errno())
    }
}

type R<T> = Result<T, Errno>;

/// A reply ready for the wire.
pub enum Reply {
    /// An ordinary message.
    Msg(Rmessage),
    /// An Rread whose data was read in place.
    Read(ReadReply),
}

impl Reply {
    /// The frame for `tag`.
    pub fn into_frame(self, tag: u16) -> Vec<u8> {
        match self {
            Reply::Msg(m) => m.encode(tag),
            Reply::Read(r) => r.into_frame(tag),
        }
    }

    /// Appends the frame for `tag` to `out` (a batch of replies).
    pub fn append_to(self, tag: u16, out: &mut Vec<u8>) {
        match self {
            Reply::Msg(m) => m.encode_into(tag, out),
            Reply::Read(r) => out.extend_from_slice(&r.into_frame(tag)),
        }
    }
}

impl From<Rmessage> for Reply {
    fn from(m: Rmessage) -> Self {
        Reply::Msg(m)
    }
}

/// How a [`Server`] treats its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Who may attach, and as whom.
    pub attach: AttachPolicy,
    /// The most fids one session may hold; a request that would create
    /// another is answered `EMFILE`.
    pub max_fids: usize,
    /// The users Tattach may name, snapshotted before a sandbox hid the
    /// host's database; `None` asks the live database.
    pub users: Option<Arc<UserDb>>,
    /// The export path clients may name as aname (diod's clients do), when
    /// the core's root is not it (a sandboxed daemon serves the share as
    /// `/`); `None`: the core's root.
    pub export: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    /// Any uid may attach as itself; [`DEFAULT_MAX_FIDS`] fids a session.
    fn default() -> Self {
        ServerOptions {
            attach: AttachPolicy::default(),
            max_fids: DEFAULT_MAX_FIDS,
            users: None,
            export: None,
        }
    }
}

/// The server shared by every connection: the core and the qid space.
pub struct Server {
    fs: Arc<PassthroughFs>,
    options: ServerOptions,
    /// The shared directory as given, accepted as an aname (diod's clients
    /// name the export path).
    export: Vec<u8>,
    /// st_dev -> small index, so qid paths are unique across devices.
    devices: Mutex<HashMap<u64, u64>>,
    /// uid -> supplementary groups, as looked up (bounded).
    groups: RwLock<HashMap<u32, Arc<[u32]>>>,
}

/// The most users whose groups [`Server`] remembers.
const MAX_CACHED_GROUPS: usize = 4096;

impl Server {
    /// A server for `fs` with the default [`ServerOptions`].
    pub fn new(fs: Arc<PassthroughFs>) -> Arc<Server> {
        Server::with_options(fs, ServerOptions::default())
    }

    /// A server for `fs` whose sessions follow `options`.
    pub fn with_options(fs: Arc<PassthroughFs>, options: ServerOptions) -> Arc<Server> {
        let export = options
            .export
            .clone()
            .unwrap_or_else(|| fs.config().root_dir.clone())
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        Arc::new(Server {
            fs,
            options,
            export,
            devices: Mutex::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
        })
    }

    /// The supplementary groups `uid` acts with: from the snapshot of the
    /// user database, else the live one (9P, unlike FUSE, names users the
    /// server looks up, so it can apply their groups, as diod does).
    fn groups_of(&self, uid: u32) -> Arc<[u32]> {
        let cached = self.groups.read().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = cached.get(&uid) {
            return g.clone();
        }
        drop(cached);
        let groups: Arc<[u32]> = match &self.options.users {
            Some(db) => db.groups(uid),
            None => UserDb::live_groups(uid),
        }
        .into();
        let mut cache = self.groups.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() < MAX_CACHED_GROUPS {
            cache.insert(uid, groups.clone());
        }
        groups
    }

    /// The core this server serves.
    pub fn fs(&self) -> &Arc<PassthroughFs> {
        &self.fs
    }

    /// The qid of the object `st` describes: unique across host devices.
    pub fn qid(&self, st: &stat64) -> Qid {
        let ty = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => QTDIR,
            libc::S_IFLNK => QTSYMLINK,
            _ => QTFILE,
        };
        Qid {
            ty,
            version: 0,
            path: self.qid_path(st.st_dev, st.st_ino),
        }
    }

    fn qid_path(&self, dev: u64, ino: u64) -> u64 {
        let mut devs = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let next = devs.len() as u64;
        let idx = *devs.entry(dev).or_insert(next);
        ino ^ (idx << 56)
    }
}

/// One client connection's state.
pub struct Session {
    server: Arc<Server>,
    fids: Mutex<FidTable>,
    msize: AtomicU32,
}

impl Session {
    /// The context of a request acting as `uid`/`gid`; the thread's
    /// credential switches also take `uid`'s supplementary groups.
    fn ctx(&self, uid: u32, gid: u32) -> Context {
        if uid != 0 {
            passthrough::credentials::set_request_groups(&self.server.groups_of(uid));
        }
        let mut c = Context::new();
        c.uid = uid;
        c.gid = gid;
        c
    }
}

fn cname(bytes: &[u8]) -> R<CString> {
    name_from_bytes(bytes).map_err(Errno::from)
}

impl Session {
    /// A new session with nothing attached.
    pub fn new(server: Arc<Server>) -> Session {
        Session {
            fids: Mutex::new(FidTable::with_limit(server.options.max_fids)),
            server,
            msize: AtomicU32::new(MAX_MSIZE),
        }
    }

    /// The negotiated msize (the maximum before Tversion).
    pub fn msize(&self) -> u32 {
        self.msize.load(Ordering::Acquire)
    }

    fn fs(&self) -> &PassthroughFs {
        &self.server.fs
    }

    /// The gid a create request naming `gid` acts as ([`AttachPolicy`]).
    fn request_gid(&self, gid: u32) -> u32 {
        self.server.options.attach.request_gid(gid)
    }

    fn fids(&self) -> MutexGuard<'_, FidTable> {
        self.fids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fid(&self, id: u32) -> R<Fid> {
        Ok(self.fids().get(id)?)
    }

    fn iounit(&self) -> u32 {
        self.msize() - RREAD_HEADER as u32
    }

    fn stat(&self, f: &Fid) -> R<stat64> {
        let c = self.ctx(f.uid, f.gid);
        let handle = match f.open {
            Some(Open::File(h)) => Some(h),
            _ => None,
        };
        Ok(self.fs().getattr(&c, f.node, handle)?.0)
    }

    /// Gives back everything a fid holds: its handle and its lookup.
    fn release_fid(&self, f: &Fid) -> R<()> {
        let c = self.ctx(f.uid, f.gid);
        let mut result = Ok(());
        if let Some(Xattr::Write {
            name,
            flags,
            size,
            buf,
        }) = &f.xattr
        {
            result = if buf.len() as u64 != *size {
                Err(Errno(libc::EINVAL))
            } else if *size == 0 {
                self.fs().removexattr(&c, f.node, name).map_err(Errno::from)
            } else {
                self.fs()
                    .setxattr(&c, f.node, name, buf, *flags)
                    .map_err(Errno::from)
            };
        }
        match f.open {
            Some(Open::File(h)) => {
                let _ = self.fs().release(&c, f.node, 0, h, false, false, None);
            }
            Some(Open::Dir(h)) => {
                let _ = self.fs().releasedir(&c, f.node, 0, h);
            }
            None => {}
        }
        self.fs().forget(&c, f.node, 1);
        result
    }

    /// Clunks every fid (connection closed, or Tversion).
    pub fn reset(&self) {
        let fids = self.fids().drain();
        for f in fids {
            let _ = self.release_fid(&f);
        }
    }

    /// Handles Tversion: negotiates msize and resets the session. An msize
    /// too small for any reply is refused (the server may not answer with a
    /// larger one than the client proposed).
    pub fn version(&self, msize: u32, version: &[u8]) -> Rmessage {
        if msize < MIN_MSIZE {
            return Rmessage::Lerror {
                ecode: libc::EINVAL as u32,
            };
        }
        self.reset();
        let msize = msize.min(MAX_MSIZE);
        self.msize.store(msize, Ordering::Release);
        let version = if version.starts_with(VERSION) {
            VERSION
        } else {
            b"unknown".as_slice()
        };
        Rmessage::Version {
            msize,
            version: version.to_vec(),
        }
    }

    /// Serves one decoded request (all but Tversion and Tflush, which the
    /// transport handles because they concern the connection). A request
    /// that panics (a bug: no client input should) is answered with EIO
    /// and logged; the session and the other requests go on.
    pub fn handle(&self, msg: Tmessage<'_>) -> Reply {
        let t = msg.type_number();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(msg)))
            .unwrap_or_else(|_| {
                log::error!("9p: a request of type {t} panicked; answering EIO");
                Reply::Msg(Rmessage::Lerror {
                    ecode: libc::EIO as u32,
                })
            })
    }

    fn dispatch(&self, msg: Tmessage<'_>) -> Reply {
        let r = match msg {
            Tmessage::Version { .. } | Tmessage::Flush { .. } => Err(Errno(libc::EPROTO)),
            // No authentication is required: answer as diod does (ENOENT),
            // which its clients and the Linux client take as "attach with
            // NOFID".
            Tmessage::Auth { .. } => Err(Errno(libc::ENOENT)),
            Tmessage::Attach {
                fid,
                afid,
                uname,
                aname,
                n_uname,
            } => self.attach(fid, afid, uname, aname, n_uname),
            Tmessage::Walk { fid, newfid, names } => self.walk(fid, newfid, &names),
            Tmessage::Read { fid, offset, count } => return self.read(fid, offset, count),
            Tmessage::Write { fid, offset, data } => self.write(fid, offset, data),
            Tmessage::Clunk { fid } => self.clunk(fid),
            Tmessage::Remove { fid } => self.remove(fid),
            Tmessage::Statfs { fid } => self.statfs(fid),
            Tmessage::Lopen { fid, flags } => self.lopen(fid, flags),
            Tmessage::Lcreate {
                fid,
                name,
                flags,
                mode,
                gid,
            } => self.lcreate(fid, name, flags, mode, self.request_gid(gid)),
            Tmessage::Symlink {
                fid,
                name,
                target,
                gid,
            } => self.symlink(fid, name, target, self.request_gid(gid)),
            Tmessage::Mknod {
                dfid,
                name,
                mode,
                major,
                minor,
                gid,
            } => self.mknod(dfid, name, mode, major, minor, self.request_gid(gid)),
            Tmessage::Rename { fid, dfid, name } => self.rename(fid, dfid, name),
            Tmessage::Readlink { fid } => self.readlink(fid),
            Tmessage::Getattr { fid, .. } => self.getattr(fid),
            Tmessage::Setattr { fid, attr } => self.setattr(fid, &attr),
            Tmessage::XattrWalk { fid, newfid, name } => self.xattrwalk(fid, newfid, name),
            Tmessage::XattrCreate {
                fid,
                name,
                size,
                flags,
            } => self.xattrcreate(fid, name, size, flags),
            Tmessage::Readdir { fid, offset, count } => self.readdir(fid, offset, count),
            Tmessage::Fsync { fid, datasync } => self.fsync(fid, datasync),
            Tmessage::Lock { fid, lock, .. } => self.lock(fid, &lock),
            Tmessage::GetLock { fid, lock } => self.getlock(fid, &lock),
            Tmessage::Link { dfid, fid, name } => self.link(dfid, fid, name),
            Tmessage::Mkdir {
                dfid,
                name,
                mode,
                gid,
            } => self.mkdir(dfid, name, mode, self.request_gid(gid)),
            Tmessage::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => self.renameat(olddirfid, oldname, newdirfid, newname),
            Tmessage::Unlinkat {
                dirfid,
                name,
                flags,
            } => self.unlinkat(dirfid, name, flags),
        };
        match r {
            Ok(m) => Reply::Msg(m),
            Err(Errno(e)) => Reply::Msg(Rmessage::Lerror { ecode: e as u32 }),
        }
    }

    /// Walks `names` from `start` (holding one lookup on the result).
    fn walk_names<'a>(
        &self,
        c: &Context,
        start: u64,
        names: impl IntoIterator<Item = &'a CStr>,
    ) -> R<u64> {
        self.fs().add_lookup(start)?;
        let mut cur = start;
        for n in names {
            let next = self.fs().lookup(c, cur, n);
            self.fs().forget(c, cur, 1);
            cur = next?.inode;
        }
        Ok(cur)
    }

    fn attach(&self, fid: u32, afid: u32, uname: &[u8], aname: &[u8], n_uname: u32) -> R<Rmessage> {
        if afid != NOFID {
            // No authentication is offered, so no afid can be valid.
            return Err(Errno(libc::EBADF));
        }
        if self.fids().contains(fid) {
            return Err(Errno(libc::EBADF));
        }
        let (uid, gid) = match &self.server.options.users {
            Some(db) => db.ids(uname, n_uname),
            None => UserDb::live_ids(uname, n_uname),
        };
        let (uid, gid) = self.server.options.attach.attach(uid, gid).map_err(|e| {
            log::info!("9p: Tattach refused: {e}");
            Errno(e.errno())
        })?;
        // "" and "/" and the export path itself are the root; anything else
        // is a path inside the share, walked one confined component at a time.
        let rel = aname
            .strip_prefix(self.server.export.as_slice())
            .unwrap_or(aname);
        // No fid may keep a longer path, and a longer aname is not split up
        // (it may be as long as msize).
        if rel.len() > MAX_PATH_BYTES {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        let names = rel
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(cname)
            .collect::<R<Vec<_>>>()?;
        let path = FidPath::root().walk(names.iter().map(|n| n.as_c_str()))?;
        let c = self.ctx(uid, gid);
        let node = self.walk_names(&c, ROOT_ID, names.iter().map(|n| n.as_c_str()))?;
        let f = Fid::new(node, uid, gid, path);
        let st = match self.stat(&f) {
            Ok(st) => st,
            Err(e) => {
                self.fs().forget(&c, node, 1);
                return Err(e);
            }
        };
        if let Err(e) = self.fids().insert_new(fid, f) {
            self.fs().forget(&c, node, 1);
            return Err(e.into());
        }
        Ok(Rmessage::Attach {
            qid: self.server.qid(&st),
        })
    }

    fn walk(&self, fid: u32, newfid: u32, names: &[&[u8]]) -> R<Rmessage> {
        let src = self.fid(fid)?;
        if newfid != fid && self.fids().contains(newfid) {
            return Err(Errno(libc::EBADF));
        }
        let c = self.ctx(src.uid, src.gid);
        self.fs().add_lookup(src.node)?;
        let mut cur = src.node;
        let mut walked = Vec::with_capacity(names.len());
        let mut qids = Vec::with_capacity(names.len());
        for raw in names {
            let step = cname(raw).and_then(|n| {
                let e = self.fs().lookup(&c, cur, &n)?;
                Ok((n, e))
            });
            match step {
                Ok((n, e)) => {
                    self.fs().forget(&c, cur, 1);
                    cur = e.inode;
                    walked.push(n);
                    qids.push(self.server.qid(&e.attr));
                }
                Err(e) => {
                    self.fs().forget(&c, cur, 1);
                    // The first step failing is an error; a later one is a
                    // partial walk: the qids that succeeded, newfid untouched.
                    return if qids.is_empty() {
                        Err(e)
                    } else {
                        Ok(Rmessage::Walk { qids })
                    };
                }
            }
        }
        // Where the walk ended, unless that is too deep to keep (then fid
        // stays and newfid is not made).
        let path = match src.path.walk(walked.iter().map(|n| n.as_c_str())) {
            Ok(p) => p,
            Err(e) => {
                self.fs().forget(&c, cur, 1);
                return Err(e.into());
            }
        };
        let mut fids = self.fids();
        if newfid == fid {
            let f = fids.get_mut(fid)?;
            let old = std::mem::replace(&mut f.node, cur);
            f.path = path;
            drop(fids);
            self.fs().forget(&c, old, 1);
        } else if let Err(e) = fids.insert_new(newfid, Fid::new(cur, src.uid, src.gid, path)) {
            drop(fids);
            self.fs().forget(&c, cur, 1);
            return Err(e.into());
        }
        Ok(Rmessage::Walk { qids })
    }

    fn lopen(&self, fid: u32, flags: u32) -> R<Rmessage> {
        let f = self.fid(fid)?;
        if f.open.is_some() || f.xattr.is_some() {
            return Err(Errno(libc::EBADF));
        }
        let c = self.ctx(f.uid, f.gid);
        let st = self.stat(&f)?;
        let open = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let (h, _) = self.fs().opendir(&c, f.node, flags)?;
            Open::Dir(h.ok_or(Errno(libc::EIO))?)
        } else {
            let (h, _, _) = self.fs().open(&c, f.node, flags, 0)?;
            Open::File(h.ok_or(Errno(libc::EIO))?)
        };
        let stored = self.fids().get_mut(fid).map(|slot| {
            if slot.open.is_none() {
                slot.open = Some(open);
                true
            } else {
                false
            }
        });
        if stored != Ok(true) {
            // Clunked or opened concurrently: do not leak the handle.
            match open {
                Open::File(h) => self.fs().release(&c, f.node, 0, h, false, false, None).ok(),
                Open::Dir(h) => self.fs().releasedir(&c, f.node, 0, h).ok(),
            };
            return Err(Errno(libc::EBADF));
        }
        Ok(Rmessage::Lopen {
            qid: self.server.qid(&st),
            iounit: self.iounit(),
        })
    }

    fn lcreate(&self, fid: u32, name: &[u8], flags: u32, mode: u32, gid: u32) -> R<Rmessage> {
        let dir = self.fid(fid)?;
        if dir.open.is_some() {
            return Err(Errno(libc::EBADF));
        }
        let n = cname(name)?;
        // The path the fid will have: refused before anything is created
        // if it is too long to keep.
        let path = dir.path.walk([n.as_c_str()])?;
        let c = self.ctx(dir.uid, gid);
        let args = CreateIn {
            flags: flags | libc::O_CREAT as u32,
            mode: (mode & 0o7777) | libc::S_IFREG,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = self.fs().create(&c, dir.node, &n, args)?;
        let handle = handle.ok_or(Errno(libc::EIO))?;
        let mut fids = self.fids();
        match fids.get_mut(fid) {
            Ok(f) => {
                f.node = entry.inode;
                f.path = path;
                f.open = Some(Open::File(handle));
            }
            Err(e) => {
                drop(fids);
                let _ = self
                    .fs()
                    .release(&c, entry.inode, 0, handle, false, false, None);
                self.fs().forget(&c, entry.inode, 1);
                return Err(e.into());
            }
        }
        drop(fids);
        // The fid now names the new file: give back its hold on the directory.
        self.fs().forget(&c, dir.node, 1);
        Ok(Rmessage::Lcreate {
            qid: self.server.qid(&entry.attr),
            iounit: self.iounit(),
        })
    }

    /// Turns a fresh entry into a qid, giving back the lookup no fid keeps.
    fn entry_qid(&self, c: &Context, entry: fuse_backend_rs::api::filesystem::Entry) -> Qid {
        self.fs().forget(c, entry.inode, 1);
        self.server.qid(&entry.attr)
    }

    fn symlink(&self, fid: u32, name: &[u8], target: &[u8], gid: u32) -> R<Rmessage> {
        let dir = self.fid(fid)?;
        let n = cname(name)?;
        let t = CString::new(target).map_err(|_| Errno(libc::EINVAL))?;
        let c = self.ctx(dir.uid, gid);
        let e = self.fs().symlink(&c, &t, dir.node, &n)?;
        Ok(Rmessage::Symlink {
            qid: self.entry_qid(&c, e),
        })
    }

    fn mknod(
        &self,
        dfid: u32,
        name: &[u8],
        mode: u32,
        major: u32,
        minor: u32,
        gid: u32,
    ) -> R<Rmessage> {
        let dir = self.fid(dfid)?;
        let n = cname(name)?;
        let c = self.ctx(dir.uid, gid);
        let rdev = libc::makedev(major, minor) as u32;
        let e = self.fs().mknod(&c, dir.node, &n, mode, rdev, 0)?;
        Ok(Rmessage::Mknod {
            qid: self.entry_qid(&c, e),
        })
    }

    fn mkdir(&self, dfid: u32, name: &[u8], mode: u32, gid: u32) -> R<Rmessage> {
        let dir = self.fid(dfid)?;
        let n = cname(name)?;
        let c = self.ctx(dir.uid, gid);
        let e = self.fs().mkdir(&c, dir.node, &n, mode, 0)?;
        Ok(Rmessage::Mkdir {
            qid: self.entry_qid(&c, e),
        })
    }

    /// The parent node (holding one lookup) and last name of a fid's path.
    fn parent_of(&self, f: &Fid) -> R<(u64, CString)> {
        let Some((parent, last)) = f.path.split_last() else {
            // The share root has no parent inside the share.
            return Err(Errno(libc::EBUSY));
        };
        let c = self.ctx(f.uid, f.gid);
        let node = self.walk_names(&c, ROOT_ID, parent.components())?;
        Ok((node, last.to_owned()))
    }

    fn rename(&self, fid: u32, dfid: u32, name: &[u8]) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let dir = self.fid(dfid)?;
        let n = cname(name)?;
        // The fid's new path: refused before anything is renamed if it is
        // too long to keep.
        let new_path = dir.path.walk([n.as_c_str()])?;
        let c = self.ctx(f.uid, f.gid);
        let (parent, last) = self.parent_of(&f)?;
        let r = self.fs().rename(&c, parent, &last, dir.node, &n, 0);
        self.fs().forget(&c, parent, 1);
        r?;
        if let Ok(slot) = self.fids().get_mut(fid) {
            slot.path = new_path;
        }
        Ok(Rmessage::Rename)
    }

    fn renameat(
        &self,
        olddirfid: u32,
        oldname: &[u8],
        newdirfid: u32,
        newname: &[u8],
    ) -> R<Rmessage> {
        let old = self.fid(olddirfid)?;
        let new = self.fid(newdirfid)?;
        let c = self.ctx(old.uid, old.gid);
        self.fs().rename(
            &c,
            old.node,
            &cname(oldname)?,
            new.node,
            &cname(newname)?,
            0,
        )?;
        Ok(Rmessage::Renameat)
    }

    fn unlinkat(&self, dirfid: u32, name: &[u8], flags: u32) -> R<Rmessage> {
        let dir = self.fid(dirfid)?;
        let n = cname(name)?;
        let c = self.ctx(dir.uid, dir.gid);
        if flags & libc::AT_REMOVEDIR as u32 != 0 {
            self.fs().rmdir(&c, dir.node, &n)?;
        } else {
            self.fs().unlink(&c, dir.node, &n)?;
        }
        Ok(Rmessage::Unlinkat)
    }

    fn remove(&self, fid: u32) -> R<Rmessage> {
        // Tremove clunks the fid whether or not the removal succeeds.
        let f = self.fids().remove(fid)?;
        let c = self.ctx(f.uid, f.gid);
        let removed = self.stat(&f).and_then(|st| {
            let (parent, last) = self.parent_of(&f)?;
            let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                self.fs().rmdir(&c, parent, &last)
            } else {
                self.fs().unlink(&c, parent, &last)
            };
            self.fs().forget(&c, parent, 1);
            r.map_err(Errno::from)
        });
        let released = self.release_fid(&f);
        removed?;
        released?;
        Ok(Rmessage::Remove)
    }

    fn clunk(&self, fid: u32) -> R<Rmessage> {
        let f = self.fids().remove(fid)?;
        self.release_fid(&f)?;
        Ok(Rmessage::Clunk)
    }

    fn readlink(&self, fid: u32) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let target = self.fs().readlink(&self.ctx(f.uid, f.gid), f.node)?;
        Ok(Rmessage::Readlink { target })
    }

    fn getattr(&self, fid: u32) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let st = self.stat(&f)?;
        Ok(Rmessage::Getattr(Attr {
            valid: GETATTR_BASIC,
            qid: self.server.qid(&st),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blksize: st.st_blksize as u64,
            blocks: st.st_blocks as u64,
            atime_sec: st.st_atime as u64,
            atime_nsec: st.st_atime_nsec as u64,
            mtime_sec: st.st_mtime as u64,
            mtime_nsec: st.st_mtime_nsec as u64,
            ctime_sec: st.st_ctime as u64,
            ctime_nsec: st.st_ctime_nsec as u64,
            ..Attr::default()
        }))
    }

    fn setattr(&self, fid: u32, a: &SetAttr) -> R<Rmessage> {
        use setattr_bits::*;
        let f = self.fid(fid)?;
        let c = self.ctx(f.uid, f.gid);
        let mut valid = SetattrValid::empty();
        // SAFETY: stat64 is plain data; zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        if a.valid & MODE != 0 {
            valid |= SetattrValid::MODE;
            st.st_mode = a.mode;
        }
        if a.valid & UID != 0 {
            valid |= SetattrValid::UID;
            st.st_uid = a.uid;
        }
        if a.valid & GID != 0 {
            valid |= SetattrValid::GID;
            st.st_gid = a.gid;
        }
        if a.valid & SIZE != 0 {
            valid |= SetattrValid::SIZE;
            st.st_size = i64::try_from(a.size).map_err(|_| Errno(libc::EFBIG))?;
        }
        if a.valid & ATIME != 0 {
            if a.valid & ATIME_SET != 0 {
                valid |= SetattrValid::ATIME;
                st.st_atime = a.atime_sec as i64;
                st.st_atime_nsec = a.atime_nsec as i64;
            } else {
                valid |= SetattrValid::ATIME | SetattrValid::ATIME_NOW;
            }
        }
        if a.valid & MTIME != 0 {
            if a.valid & MTIME_SET != 0 {
                valid |= SetattrValid::MTIME;
                st.st_mtime = a.mtime_sec as i64;
                st.st_mtime_nsec = a.mtime_nsec as i64;
            } else {
                valid |= SetattrValid::MTIME | SetattrValid::MTIME_NOW;
            }
        }
        if valid.is_empty() {
            // Only ctime was asked for: the host updates it on any change.
            return Ok(Rmessage::Setattr);
        }
        let handle = match f.open {
            Some(Open::File(h)) => Some(h),
            _ => None,
        };
        self.fs().setattr(&c, f.node, st, handle, valid)?;
        Ok(Rmessage::Setattr)
    }

    fn statfs(&self, fid: u32) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let s = self.fs().statfs(&self.ctx(f.uid, f.gid), f.node)?;
        Ok(Rmessage::Statfs(StatFs {
            ty: V9FS_MAGIC,
            bsize: s.f_bsize as u32,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            fsid: s.f_fsid,
            namelen: s.f_namemax as u32,
        }))
    }

    /// The open file behind `fid`, for a plain read or write served without
    /// [`Session::handle`] (the io_uring engine, a stream's inline path): the
    /// fid's node and the core's handle. `None` if the fid is unknown, not a
    /// file opened with Tlopen or Tlcreate, or an xattr fid; such a request
    /// must go through `handle`, which gives the right reply.
    pub fn data_file(&self, fid: u32, access: Access) -> Option<(u64, Arc<HandleData>)> {
        let (node, h) = {
            let mut fids = self.fids();
            let f = fids.get_mut(fid).ok()?;
            match (&f.open, &f.xattr) {
                (Some(Open::File(h)), None) => (f.node, *h),
                _ => return None,
            }
        };
        Some((node, self.fs().data_handle(node, h, access).ok()?))
    }

    /// Where a plain Tread or Twrite goes when served without
    /// [`Session::handle`]: the fid's node, the core's handle and the bytes
    /// to move (a read's count capped at [`Session::max_read`]). `None`
    /// where `handle` must answer: the cases of [`Session::data_file`], and
    /// a write to a read-only share (EROFS).
    pub fn data_target(&self, req: &DataRequest) -> Option<(u64, Arc<HandleData>, u32)> {
        let (count, access) = match req.read {
            true => (req.count.min(self.max_read()), Access::Read),
            false => (req.count, Access::Write),
        };
        let (node, file) = self.data_file(req.fid, access)?;
        Some((node, file, count))
    }

    /// The most data one Rread may carry.
    pub fn max_read(&self) -> u32 {
        self.iounit()
    }

    fn read(&self, fid: u32, offset: u64, count: u32) -> Reply {
        let r = (|| -> R<Reply> {
            let f = self.fid(fid)?;
            let count = count.min(self.iounit());
            if let Some(Xattr::Read(buf)) = &f.xattr {
                let start = (offset as usize).min(buf.len());
                let end = start.saturating_add(count as usize).min(buf.len());
                return Ok(Reply::Msg(Rmessage::Read {
                    data: buf[start..end].to_vec(),
                }));
            }
            let Some(Open::File(h)) = f.open else {
                return Err(Errno(libc::EBADF));
            };
            let mut reply = ReadReply::with_capacity(count as usize);
            let mut w = VecWriter::new(reply.buffer());
            self.fs().read(
                &self.ctx(f.uid, f.gid),
                f.node,
                h,
                &mut w,
                count,
                offset,
                None,
                0,
            )?;
            Ok(Reply::Read(reply))
        })();
        r.unwrap_or_else(|Errno(e)| Reply::Msg(Rmessage::Lerror { ecode: e as u32 }))
    }

    fn write(&self, fid: u32, offset: u64, data: &[u8]) -> R<Rmessage> {
        let f = {
            let mut fids = self.fids();
            let slot = fids.get_mut(fid)?;
            if let Some(Xattr::Write { size, buf, .. }) = &mut slot.xattr {
                let end = buf.len() as u64 + data.len() as u64;
                if offset != buf.len() as u64 || end > *size {
                    return Err(Errno(libc::EINVAL));
                }
                // The value grows as its data arrives (doubling, so a value
                // sent in small pieces is not copied for each), never past
                // the announced size, which the session's xattr bytes
                // already count.
                let end = end as usize;
                if end > buf.capacity() {
                    let want = end.max(buf.capacity() * 2).min(*size as usize);
                    buf.reserve_exact(want - buf.len());
                }
                buf.extend_from_slice(data);
                return Ok(Rmessage::Write {
                    count: data.len() as u32,
                });
            }
            slot.clone()
        };
        let Some(Open::File(h)) = f.open else {
            return Err(Errno(libc::EBADF));
        };
        let mut r = SliceReader::new(data);
        let n = self.fs().write(
            &self.ctx(f.uid, f.gid),
            f.node,
            h,
            &mut r,
            data.len() as u32,
            offset,
            None,
            false,
            0,
            0,
        )?;
        Ok(Rmessage::Write { count: n as u32 })
    }

    fn readdir(&self, fid: u32, offset: u64, count: u32) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let Some(Open::Dir(h)) = f.open else {
            return Err(Errno(libc::EBADF));
        };
        let dir_dev = self.stat(&f)?.st_dev;
        let limit = count.min(self.iounit()) as usize;
        let mut data = Vec::with_capacity(limit);
        self.fs().readdir(
            &self.ctx(f.uid, f.gid),
            f.node,
            h,
            count,
            offset,
            &mut |d| {
                let need = QID_SIZE + 8 + 1 + 2 + d.name.len();
                if data.len() + need > limit {
                    return Ok(0);
                }
                let ty = match d.type_ {
                    t if t == u32::from(libc::DT_DIR) => QTDIR,
                    t if t == u32::from(libc::DT_LNK) => QTSYMLINK,
                    _ => QTFILE,
                };
                let qid = Qid {
                    ty,
                    version: 0,
                    path: self.server.qid_path(dir_dev, d.ino),
                };
                Encoder::new(&mut data)
                    .qid(&qid)
                    .u64(d.offset)
                    .u8(d.type_ as u8)
                    .string(d.name);
                Ok(need)
            },
        )?;
        Ok(Rmessage::Readdir { data })
    }

    fn fsync(&self, fid: u32, datasync: u32) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let c = self.ctx(f.uid, f.gid);
        match f.open {
            Some(Open::File(h)) => self.fs().fsync(&c, f.node, datasync != 0, h)?,
            Some(Open::Dir(h)) => self.fs().fsyncdir(&c, f.node, datasync != 0, h)?,
            None => return Err(Errno(libc::EBADF)),
        }
        Ok(Rmessage::Fsync)
    }

    fn file_lock(l: &Lock<&[u8]>) -> FileLock {
        FileLock {
            start: l.start,
            end: if l.length == 0 {
                u64::MAX
            } else {
                l.start.saturating_add(l.length - 1)
            },
            lock_type: u32::from(l.ty),
            pid: l.proc_id,
        }
    }

    fn lock(&self, fid: u32, l: &Lock<&[u8]>) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let Some(Open::File(h)) = f.open else {
            return Err(Errno(libc::EBADF));
        };
        // Never block a server thread: a conflicting lock is BLOCKED, and the
        // client retries (the Linux client does for blocking requests).
        // 9P2000.L always has Tlock: served whether or not FUSE's POSIX locks
        // are offered (Config::posix_locks).
        let status = match self.fs().try_lock(f.node, h, Self::file_lock(l)) {
            Ok(()) => lock_status::SUCCESS,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                lock_status::BLOCKED
            }
            Err(_) => lock_status::ERROR,
        };
        Ok(Rmessage::Lock { status })
    }

    fn getlock(&self, fid: u32, l: &Lock<&[u8]>) -> R<Rmessage> {
        let f = self.fid(fid)?;
        let Some(Open::File(h)) = f.open else {
            return Err(Errno(libc::EBADF));
        };
        let got = self.fs().test_lock(f.node, h, Self::file_lock(l))?;
        let length = if got.lock_type == libc::F_UNLCK as u32 || got.end >= i64::MAX as u64 {
            0
        } else {
            got.end - got.start + 1
        };
        Ok(Rmessage::GetLock(Lock {
            ty: got.lock_type as u8,
            start: got.start,
            length,
            proc_id: got.pid,
            client_id: l.client_id.to_vec(),
        }))
    }

    fn link(&self, dfid: u32, fid: u32, name: &[u8]) -> R<Rmessage> {
        let dir = self.fid(dfid)?;
        let f = self.fid(fid)?;
        let n = cname(name)?;
        let c = self.ctx(dir.uid, dir.gid);
        let e = self.fs().link(&c, f.node, dir.node, &n)?;
        self.fs().forget(&c, e.inode, 1);
        Ok(Rmessage::Link)
    }

    /// Whether the share serves extended attributes (`--xattr`). Without
    /// them Txattrwalk and Txattrcreate are `EOPNOTSUPP` before anything is
    /// looked at or allocated.
    fn xattr_enabled(&self) -> R<()> {
        match self.fs().config().xattr {
            true => Ok(()),
            false => Err(Errno(libc::EOPNOTSUPP)),
        }
    }

    /// The session's xattr fids have room for `bytes` more (else
    /// `ENOMEM`): checked before a value is fetched, and again when its
    /// fid is added.
    fn xattr_room(&self, bytes: u32) -> R<()> {
        Ok(self.fids().check_xattr_room(bytes as usize)?)
    }

    fn xattrwalk(&self, fid: u32, newfid: u32, name: &[u8]) -> R<Rmessage> {
        self.xattr_enabled()?;
        let f = self.fid(fid)?;
        let c = self.ctx(f.uid, f.gid);
        // The size the host reports is asked for again, never more than
        // Linux's limits (the core caps its buffer there too): a value that
        // grew past it meanwhile is ERANGE. An empty value or list needs no
        // second call. A value the session's xattr fids have no room for is
        // not fetched.
        let value = if name.is_empty() {
            match self.fs().listxattr(&c, f.node, 0)? {
                ListxattrReply::Count(0) => Vec::new(),
                ListxattrReply::Count(n) => {
                    let n = n.min(XATTR_LIST_MAX);
                    self.xattr_room(n)?;
                    match self.fs().listxattr(&c, f.node, n)? {
                        ListxattrReply::Names(v) => v,
                        ListxattrReply::Count(_) => return Err(Errno(libc::EIO)),
                    }
                }
                ListxattrReply::Names(v) => v,
            }
        } else {
            let n = CString::new(name).map_err(|_| Errno(libc::EINVAL))?;
            match self.fs().getxattr(&c, f.node, &n, 0)? {
                GetxattrReply::Count(0) => Vec::new(),
                GetxattrReply::Count(len) => {
                    let len = len.min(XATTR_SIZE_MAX);
                    self.xattr_room(len)?;
                    match self.fs().getxattr(&c, f.node, &n, len)? {
                        GetxattrReply::Value(v) => v,
                        GetxattrReply::Count(_) => return Err(Errno(libc::EIO)),
                    }
                }
                GetxattrReply::Value(v) => v,
            }
        };
        let size = value.len() as u64;
        self.fs().add_lookup(f.node)?;
        let mut x = Fid::new(f.node, f.uid, f.gid, f.path.clone());
        x.xattr = Some(Xattr::Read(Arc::new(value)));
        if let Err(e) = self.fids().insert_new(newfid, x) {
            self.fs().forget(&c, f.node, 1);
            return Err(e.into());
        }
        Ok(Rmessage::XattrWalk { size })
    }

    fn xattrcreate(&self, fid: u32, name: &[u8], size: u64, flags: u32) -> R<Rmessage> {
        self.xattr_enabled()?;
        // Refused before anything is allocated for the value: the client's
        // attr_size is a u64.
        if size > u64::from(XATTR_SIZE_MAX) {
            return Err(Errno(libc::E2BIG));
        }
        let n = CString::new(name).map_err(|_| Errno(libc::EINVAL))?;
        if n.as_bytes().is_empty() {
            return Err(Errno(libc::EINVAL));
        }
        if n.as_bytes().len() > XATTR_NAME_MAX {
            return Err(Errno(libc::ERANGE));
        }
        let mut fids = self.fids();
        let f = fids.get_mut(fid)?;
        if f.open.is_some() || f.xattr.is_some() {
            return Err(Errno(libc::EBADF));
        }
        // The announced size counts against the session's xattr bytes at
        // once (ENOMEM past them); the value itself is allocated as Twrite
        // data arrives.
        fids.set_xattr(
            fid,
            Xattr::Write {
                name: n,
                flags,
                size,
                buf: Vec::new(),
            },
        )?;
        Ok(Rmessage::XattrCreate)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reset();
    }
}
