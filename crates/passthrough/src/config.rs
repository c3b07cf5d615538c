//! Configuration of the passthrough core.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::idmap::IdMap;
use crate::xattrmap::XattrMap;

/// Whether a feature the guest kernel must take part in is offered, and
/// whether the session fails without it (virtiofsd's `--security-label`
/// values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Negotiation {
    /// Not offered.
    #[default]
    Never,
    /// Offered; a guest that does not take it goes on without it (with a
    /// warning).
    Auto,
    /// Offered; a guest that does not take it fails its FUSE_INIT
    /// (`EPROTO`).
    Always,
}

/// How the guest may cache data and metadata (virtiofsd's `--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// No caching: every access goes to the host (direct I/O, zero timeouts).
    Never,
    /// Metadata is cached; file data is not kept across opens.
    Metadata,
    /// Short timeouts; data cache dropped on open when the file changed.
    #[default]
    Auto,
    /// Long timeouts and data kept across opens: the guest is the only writer.
    Always,
}

impl CachePolicy {
    /// The entry and attribute timeout the guest is told for this policy.
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Metadata | CachePolicy::Always => Duration::from_secs(86400),
        }
    }
}

/// Whether inodes are held by file handles instead of `O_PATH` fds
/// (virtiofsd's `--inode-file-handles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InodeFileHandles {
    /// Always hold an `O_PATH` fd per known inode: one fd per inode the
    /// guest knows, so a large tree runs into the fd limit.
    Never,
    /// Use a file handle where the host filesystem supports one, else an
    /// fd; the inodes in use keep an fd in a bounded cache
    /// ([`Config::inode_fd_cache`]). The default, as upstream virtiofsd's
    /// since 1.14. Falls back to `Never` when the daemon cannot reopen
    /// handles (no `CAP_DAC_READ_SEARCH`).
    #[default]
    Prefer,
    /// Require file handles; a lookup on a filesystem without them fails.
    Mandatory,
}

/// Everything the core needs to serve one host directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The host directory that is the root of the share.
    pub root_dir: PathBuf,
    /// Guest caching policy.
    pub cache: CachePolicy,
    /// Whether extended attributes are passed through.
    pub xattr: bool,
    /// Translation of xattr names between guest and host (`--xattrmap`),
    /// applied by getxattr, setxattr, removexattr and listxattr when
    /// `xattr` is on. `None` (the default): names pass unchanged.
    pub xattrmap: Option<Arc<XattrMap>>,
    /// Whether POSIX ACLs are offered (FUSE_POSIX_ACL; implies `xattr`);
    /// with [`Negotiation::Always`] a guest that does not take them fails
    /// its FUSE_INIT (`EPROTO`), as upstream.
    pub posix_acl: Negotiation,
    /// Refuse every operation that would modify the share.
    pub readonly: bool,
    /// Inode tracking by file handles.
    pub inode_file_handles: InodeFileHandles,
    /// The most `O_PATH` fds kept open for inodes held by file handle, so
    /// requests on the inodes in use pay no `open_by_handle_at`. `None`: a
    /// quarter of the fds the guest may hold (see `fd_reserve`), at most
    /// [`fd_cache::DEFAULT_MAX`](crate::fd_cache::DEFAULT_MAX); `Some(0)`
    /// caches nothing.
    pub inode_fd_cache: Option<usize>,
    /// Let the guest use writeback caching.
    pub writeback: bool,
    /// Honour `O_DIRECT` from the guest.
    pub allow_direct_io: bool,
    /// Tell the guest about host submounts so it gives them their own st_dev.
    pub announce_submounts: bool,
    /// Perform each request with the requester's uid/gid. Only effective when
    /// the process has the capabilities to do so (runs as root).
    pub switch_credentials: bool,
    /// Translation of uids between guest and host (`--translate-uid`; not
    /// the user namespace of `--uid-map`): the requester's uid and a
    /// chown's guest to host, the owner in every attribute sent to the
    /// guest host to guest; a request from, or a chown to, a forbidden
    /// guest uid is `EPERM`. Ids inside xattr values (POSIX ACLs,
    /// `security.capability`) are not translated. Default: the identity.
    /// See [`idmap`](crate::idmap).
    pub translate_uid: IdMap,
    /// As [`translate_uid`](Self::translate_uid), for gids
    /// (`--translate-gid`).
    pub translate_gid: IdMap,
    /// Advertise POSIX byte-range locks to the guest (`-o posix_lock`),
    /// served with open file description locks on the host, so host
    /// processes and other guests sharing the directory see them.
    pub posix_locks: bool,
    /// Advertise flock(2) locks to the guest (`-o flock`), served with
    /// flock(2) on the host.
    pub flock_locks: bool,
    /// Offer FUSE_HANDLE_KILLPRIV_V2 (virtiofsd's `--killpriv-v2`): the
    /// guest kernel then leaves clearing set-id bits and file capabilities
    /// to the server, and flags the WRITE, SETATTR (truncate, chown) and
    /// OPEN/CREATE (`O_TRUNC`) requests made without CAP_FSETID. For those
    /// the core drops `S_ISUID`, `S_ISGID` (where `S_IXGRP` is set) and
    /// `security.capability` itself, as the host kernel would for an
    /// unprivileged writer. Off by default, as upstream.
    pub killpriv_v2: bool,
    /// Offer FUSE_SECURITY_CTX (virtiofsd's `--security-label`): the guest
    /// kernel then sends the security context (an LSM's `security.*`
    /// xattr, e.g. `security.selinux`) of each node it creates, and the
    /// core sets it on the new node, through [`xattrmap`](Self::xattrmap)
    /// where one is set, before the create is answered; a context that
    /// cannot be set undoes the create. Needs [`xattr`](Self::xattr).
    pub security_label: Negotiation,
    /// Offer FUSE_DIRECT_IO_ALLOW_MMAP (virtiofsd's `--allow-mmap`): the
    /// guest may then map shared the files it opened for direct I/O
    /// (`cache=never` and `cache=metadata`), which it otherwise refuses
    /// with ENODEV. Only where the guest has the share to itself: its
    /// mapping is not kept coherent with others' writes.
    pub allow_mmap: bool,
    /// Offer FUSE_ALLOW_IDMAP (6.12 guests): the guest may then make
    /// idmapped mounts of the share. Its kernel checks every permission
    /// itself (`default_permissions`) and sends requests that create
    /// nothing without an identity (uid and gid `u32::MAX`), which the core
    /// serves with the daemon's own, as it serves the guest's root; creates
    /// carry the idmapped owner. So it needs a guest root that is the
    /// host's root ([`translate_uid`](Self::translate_uid) and
    /// [`translate_gid`](Self::translate_gid) must let guest id 0 act as
    /// host id 0). Off by default.
    pub allow_idmap: bool,
    /// Offer READDIRPLUS (directory listing with attributes).
    pub readdirplus: bool,
    /// Pass `O_NOATIME` from the guest through (it fails with EPERM for
    /// files the daemon's credentials do not own).
    pub preserve_noatime: bool,
    /// File descriptors kept free for the daemon's own needs (eventfds,
    /// io_uring rings, sockets, accepting a connection): an fd opened for
    /// the guest whose number reaches `RLIMIT_NOFILE (soft) - fd_reserve` is
    /// closed again and the request answers `EMFILE`
    /// (see [`FdBudget`](crate::fd_budget::FdBudget)).
    pub fd_reserve: u32,
    /// The client kernel checks permissions itself before sending a
    /// request (FUSE's `default_permissions`: always so for virtio-fs and
    /// for the daemon's FUSE mount; not for 9P, where the server decides).
    /// A request the host refuses with EACCES as the requester is then run
    /// once more with the DAC override capabilities: FUSE requests carry
    /// no supplementary groups, so access the client granted through one of
    /// them would otherwise fail on the host.
    pub client_checks_permissions: bool,
    /// Answer a LOOKUP of a missing name with a negative entry (node id 0)
    /// the client may cache for the entry timeout, as it caches names that
    /// exist, so a build probing include paths or `git status` looking for
    /// `.gitignore` files asks once (FUSE only: 9P has no such reply; never
    /// with `cache=never`, whose timeout is zero).
    pub negative_entries: bool,
}

impl Config {
    /// A configuration with upstream virtiofsd's defaults for `root_dir`.
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        Config {
            root_dir: root_dir.into(),
            cache: CachePolicy::default(),
            xattr: false,
            xattrmap: None,
            posix_acl: Negotiation::Never,
            readonly: false,
            inode_file_handles: InodeFileHandles::default(),
            inode_fd_cache: None,
            writeback: false,
            allow_direct_io: false,
            announce_submounts: true,
            switch_credentials: true,
            translate_uid: IdMap::identity(),
            translate_gid: IdMap::identity(),
            client_checks_permissions: false,
            negative_entries: false,
            posix_locks: false,
            flock_locks: false,
            killpriv_v2: false,
            security_label: Negotiation::Never,
            allow_mmap: false,
            allow_idmap: false,
            readdirplus: true,
            preserve_noatime: false,
            fd_reserve: 64,
        }
    }
}

impl Config {
    /// The inode mode a daemon will really serve `root_dir` with, decided
    /// before it puts up its walls (which keep CAP_DAC_READ_SEARCH and
    /// `open_by_handle_at` only for a daemon that uses handles):
    /// `Prefer` becomes `Never` where the share's file system gives no
    /// lasting handles or the daemon may not reopen them (`may_reopen`:
    /// the walls keep CAP_DAC_READ_SEARCH; the probe tries it now), and
    /// `Mandatory` then fails.
    pub fn resolve_file_handles(&self, may_reopen: bool) -> Result<InodeFileHandles, crate::Error> {
        if self.inode_file_handles == InodeFileHandles::Never {
            return Ok(InodeFileHandles::Never);
        }
        let usable = if may_reopen {
            std::fs::File::open(&self.root_dir)
                .and_then(|dir| crate::file_handle::probe(std::os::fd::AsRawFd::as_raw_fd(&dir)))
                .map(drop)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "--modcaps drops CAP_DAC_READ_SEARCH, which reopening a handle needs",
            ))
        };
        match (usable, self.inode_file_handles) {
            (Ok(()), mode) => Ok(mode),
            (Err(source), InodeFileHandles::Mandatory) => {
                Err(crate::Error::FileHandlesUnsupported {
                    path: self.root_dir.clone(),
                    source,
                })
            }
            (Err(e), _) => {
                log::info!(
                    "{}: inodes held by O_PATH fds, not file handles ({e})",
                    self.root_dir.display()
                );
                Ok(InodeFileHandles::Never)
            }
        }
    }

    /// Checks that `root_dir` is a directory that can be opened, without
    /// keeping it open: for a daemon to refuse a bad share before it binds
    /// a socket or enters a sandbox (which then opens the share for real).
    pub fn check_root(&self) -> Result<(), crate::Error> {
        let path = &self.root_dir;
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                std::fs::read_dir(path)
                    .map(drop)
                    .map_err(|source| crate::Error::OpenRoot {
                        path: path.clone(),
                        source,
                    })
            }
            Ok(_) => Err(crate::Error::NotADirectory(path.clone())),
            Err(source) => Err(crate::Error::OpenRoot {
                path: path.clone(),
                source,
            }),
        }
    }
}
