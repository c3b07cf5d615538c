//! The `virtiofsd-rs` command line: upstream virtiofsd's flags, parsed into a
//! [`DaemonConfig`]. See `docs/virtiofsd-compat.md` for the status of each.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use passthrough::{CachePolicy, Config, IdMap, InodeFileHandles, Negotiation, XattrMap};

use crate::daemon::{DaemonConfig, Listen};
use sandbox::{Profile, SandboxConfig, SandboxMode, SeccompMode};

/// `--cache` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// Short timeouts.
    Auto,
    /// Long timeouts, data kept across opens.
    Always,
    /// No caching.
    Never,
    /// Metadata cached, data not.
    Metadata,
}

/// `--sandbox` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxArg {
    /// Mount namespace + pivot_root.
    Namespace,
    /// chroot.
    Chroot,
    /// None.
    None,
}

/// `--inode-file-handles` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileHandlesArg {
    /// Never use file handles.
    Never,
    /// Use them where possible.
    Prefer,
    /// Require them.
    Mandatory,
}

/// `--posix-acl` / `--security-label` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NegotiationArg {
    /// Off.
    Never,
    /// On when the guest asks for it.
    Auto,
    /// On.
    Always,
}

/// `--seccomp` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompArg {
    /// No filter.
    None,
    /// Kill on a forbidden syscall.
    Kill,
    /// Log forbidden syscalls.
    Log,
    /// Send SIGSYS.
    Trap,
}

/// `--log-level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevelArg {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational messages.
    Info,
    /// Debugging messages.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

impl LogLevelArg {
    /// The `log` filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevelArg::Error => log::LevelFilter::Error,
            LogLevelArg::Warn => log::LevelFilter::Warn,
            LogLevelArg::Info => log::LevelFilter::Info,
            LogLevelArg::Debug => log::LevelFilter::Debug,
            LogLevelArg::Trace => log::LevelFilter::Trace,
            LogLevelArg::Off => log::LevelFilter::Off,
        }
    }
}

/// The command line, flag for flag compatible with upstream virtiofsd.
#[derive(Debug, Parser)]
#[command(
    name = "virtiofsd-rs",
    version,
    about = "vhost-user virtio-fs device backend: shares a host directory with a guest",
    after_help = "Compatible with upstream virtiofsd's command line; see docs/virtiofsd-compat.md."
)]
pub struct Cli {
    /// Shared directory path.
    #[arg(long)]
    pub shared_dir: Option<PathBuf>,

    /// Tag reported in the device config space (needs a frontend that reads it).
    #[arg(long)]
    pub tag: Option<String>,

    /// vhost-user socket path.
    #[arg(long, visible_alias = "socket")]
    pub socket_path: Option<PathBuf>,

    /// Name or id of the group to give the socket to.
    #[arg(long)]
    pub socket_group: Option<String>,

    /// File descriptor of an already listening vhost-user socket.
    #[arg(long)]
    pub fd: Option<i32>,

    /// Serve the share over the host's /dev/fuse at this mount point instead
    /// of vhost-user (for testing the core at native speed).
    #[arg(long, conflicts_with_all = ["socket_path", "fd"])]
    pub fuse_mount: Option<PathBuf>,

    /// The source name of the --fuse-mount mount, as `findmnt -S`, `df` and
    /// /proc/self/mountinfo show it (not in upstream virtiofsd).
    #[arg(long, requires = "fuse_mount", default_value = "virtiofsd-rs")]
    pub fuse_source: String,

    /// Worker threads. With vhost-user, each queue is served by its own
    /// thread and this is accepted for compatibility; with --fuse-mount it is
    /// the number of /dev/fuse readers (0 = one per CPU, at most 4).
    #[arg(long, default_value_t = 0)]
    pub thread_pool_size: usize,

    /// The most request queues served: the frontend configures up to this
    /// many (QEMU: vhost-user-fs-pci,num-request-queues=N), each with its
    /// own worker thread and io_uring. With --tag, also the count in config
    /// space.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub request_queues: u16,

    /// How READ and WRITE reach the host files: io-uring (submissions
    /// straight into guest memory; falls back to sync, logged once, where
    /// io_uring is unavailable) or sync.
    #[arg(long, default_value = "io-uring")]
    pub io_engine: crate::device::IoEngine,

    /// Microseconds a request queue's worker polls for more requests before
    /// it sleeps (adaptive, up to this; 0: never). Polling saves the guest's
    /// kick and the worker's wake-up, most of a small request's latency,
    /// at the cost of CPU time while the guest is busy. (Not in upstream
    /// virtiofsd.)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub poll_us: u32,

    /// Enable extended attributes.
    #[arg(long)]
    pub xattr: bool,

    /// Serve the guest's POSIX byte-range locks (fcntl) on the host, with
    /// open file description locks, so host processes and other guests
    /// see them (also `-o posix_lock`; upstream refuses it). A blocking
    /// request waits off the queues. Not with --fuse-mount.
    #[arg(long)]
    pub posix_lock: bool,

    /// Serve the guest's flock(2) locks on the host, with flock(2) (also
    /// `-o flock`; upstream refuses it). Not with --fuse-mount.
    #[arg(long)]
    pub flock: bool,

    /// Extended attribute name mapping (implies --xattr): rules
    /// `:type:scope:key:prepend:` or `:map:key:prepend:`, any first
    /// character as the separator; see passthrough's `xattrmap` module and
    /// upstream's doc/xattr-mapping.md.
    #[arg(long)]
    pub xattrmap: Option<String>,

    /// POSIX ACL support (implies --xattr); no value means always.
    #[arg(long, value_enum, num_args = 0..=1, default_value = "never", default_missing_value = "always", require_equals = true)]
    pub posix_acl: NegotiationArg,

    /// Sandbox mechanism.
    #[arg(long, value_enum, default_value = "namespace")]
    pub sandbox: SandboxArg,

    /// Action on a system call outside the seccomp allowlist: none (no
    /// filter), kill (the process), log (let it through; the kernel logs
    /// it), trap (SIGSYS: the call is reported on stderr and fails).
    #[arg(long, value_enum, default_value = "kill")]
    pub seccomp: SeccompArg,

    /// Do not confine filesystem access to the share with Landlock (on by
    /// default where the kernel has it; not in upstream virtiofsd).
    #[arg(long)]
    pub no_landlock: bool,

    /// Append every FUSE request the guest sends, on any queue, to FILE
    /// (created or truncated, mode 0600, before the sandbox), to seed fuzz
    /// corpora: per request a little-endian u16 (bit 15: hiprio queue; low
    /// 15 bits: length, requests cut at 32767 bytes) and the request's
    /// bytes. The file holds the guest's file names and file data: for test
    /// runs only. (Not in upstream virtiofsd.)
    #[arg(long, value_name = "FILE", conflicts_with = "fuse_mount")]
    pub record_requests: Option<PathBuf>,

    /// Tell the guest about submounts so they get their own st_dev (the default).
    #[arg(long)]
    pub announce_submounts: bool,

    /// Do not announce submounts.
    #[arg(long, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,

    /// Hold inodes by file handles instead of O_PATH fds (no value: prefer).
    #[arg(long, value_enum, num_args = 0..=1, default_value = "prefer", default_missing_value = "prefer", require_equals = true)]
    pub inode_file_handles: FileHandlesArg,

    /// Caching policy of the guest.
    #[arg(long, value_enum, default_value = "auto")]
    pub cache: CacheArg,

    /// Honour O_DIRECT from the guest.
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Enable writeback caching in the guest.
    #[arg(long)]
    pub writeback: bool,

    /// With --cache=never or metadata, let the guest map shared the files
    /// it opened for direct I/O (FUSE_DIRECT_IO_ALLOW_MMAP; it refuses
    /// with ENODEV otherwise). Only where the guest has the share to
    /// itself: its mappings are not kept coherent with others' writes.
    #[arg(long)]
    pub allow_mmap: bool,

    /// Serve the share read-only.
    #[arg(long)]
    pub readonly: bool,

    /// Disable READDIRPLUS.
    #[arg(long)]
    pub no_readdirplus: bool,

    /// Set RLIMIT_NOFILE (default: min(1000000, fs.nr_open); 0 leaves it alone).
    #[arg(long)]
    pub rlimit_nofile: Option<u64>,

    /// Log level.
    #[arg(long, value_enum, default_value = "info")]
    pub log_level: LogLevelArg,

    /// Log to the system log (/dev/log, facility user) instead of stderr;
    /// stderr, with a warning, where there is no system log.
    #[arg(long)]
    pub syslog: bool,

    /// Print the vhost-user capabilities JSON (for libvirt) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Offer FUSE_HANDLE_KILLPRIV_V2: the daemon, not the guest, then
    /// clears set-id bits and file capabilities on writes, truncates and
    /// chowns by guest processes without CAP_FSETID. The last of
    /// --killpriv-v2 and --no-killpriv-v2 wins.
    #[arg(long, overrides_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,

    /// Do not offer FUSE_HANDLE_KILLPRIV_V2 (the default): the guest kernel
    /// clears set-id bits itself.
    #[arg(long, overrides_with = "killpriv_v2")]
    pub no_killpriv_v2: bool,

    /// Security labels (FUSE_SECURITY_CTX; implies --xattr): the security
    /// context the guest's LSM gives each node it creates is set on the
    /// host's node, under the name --xattrmap maps it to, before the create
    /// is answered (a context the host refuses fails the create). `always`
    /// (no value) fails a guest's FUSE_INIT that does not offer it, `auto`
    /// goes on without. Also `-o security_label`. Not with --fuse-mount.
    #[arg(long, value_enum, num_args = 0..=1, default_value = "never", default_missing_value = "always", require_equals = true)]
    pub security_label: NegotiationArg,

    /// Offer FUSE_ALLOW_IDMAP, so a 6.12 guest can make idmapped mounts of
    /// the share (not in upstream virtiofsd). The guest's kernel then checks
    /// every permission itself and sends requests that create nothing
    /// without an identity: they run with the daemon's, as the guest
    /// root's do, so this is refused where --translate-uid/--translate-gid
    /// keep the guest's root from being the host's. Not with --fuse-mount.
    #[arg(long)]
    pub allow_idmap: bool,

    /// Capability changes to the kept set, e.g. +sys_admin:-chown (the set
    /// is chown, dac_override, fowner, fsetid, setgid, setuid, mknod,
    /// setfcap, and dac_read_search with --inode-file-handles).
    #[arg(long)]
    pub modcaps: Option<String>,

    /// Pass the guest's O_NOATIME through (by default it is dropped).
    #[arg(long)]
    pub preserve_noatime: bool,

    /// Translate uids between guest and host in the daemon (no user
    /// namespace, unlike --uid-map): `TYPE:SOURCE_BASE:TARGET_BASE:COUNT`
    /// (repeatable), TYPE one of guest, host, map (both ways),
    /// squash-guest, squash-host, or `forbid-guest:GUEST_BASE:COUNT`;
    /// see passthrough's `idmap` module. Not with --posix-acl.
    #[arg(long, num_args = 1, value_name = "TYPE:SOURCE:TARGET:COUNT")]
    pub translate_uid: Vec<String>,

    /// As --translate-uid, for gids.
    #[arg(long, num_args = 1, value_name = "TYPE:SOURCE:TARGET:COUNT")]
    pub translate_gid: Vec<String>,

    /// Run in a user namespace of its own (for a daemon started without
    /// root, as libvirt's session mode does), with this range of uids
    /// mapped into it: `:NAMESPACE_UID:HOST_UID:COUNT:` (repeatable; with
    /// --gid-map, each mapping id 0). Unprivileged, the maps are written by
    /// newuidmap (package uidmap) within /etc/subuid's ranges.
    #[arg(long, value_name = ":NS_UID:HOST_UID:COUNT:")]
    pub uid_map: Vec<String>,

    /// The gid ranges of --uid-map's user namespace:
    /// `:NAMESPACE_GID:HOST_GID:COUNT:` (repeatable).
    #[arg(long, value_name = ":NS_GID:HOST_GID:COUNT:")]
    pub gid_map: Vec<String>,

    /// Migration mode (accepted; migration is not offered to the frontend).
    #[arg(long)]
    pub migration_mode: Option<String>,

    /// Migration error policy (accepted; migration is not offered).
    #[arg(long)]
    pub migration_on_error: Option<String>,

    /// Migration handle verification (accepted; migration is not offered).
    #[arg(long)]
    pub migration_verify_handles: bool,

    /// Migration path confirmation (accepted; migration is not offered).
    #[arg(long)]
    pub migration_confirm_paths: bool,

    /// Legacy options, comma separated (source=DIR, cache=, xattr, no_xattr,
    /// flock, no_flock, posix_lock, no_posix_lock, readdirplus, no_readdirplus,
    /// writeback, no_writeback, announce_submounts, killpriv_v2,
    /// no_killpriv_v2, log_level=, sandbox=; also seccomp=,
    /// inode_file_handles=, thread_pool_size=). They apply after the long
    /// flags, in order, as upstream's.
    #[arg(short = 'o')]
    pub compat_options: Vec<String>,

    /// Debug logging (same as --log-level debug).
    #[arg(short = 'd')]
    pub debug: bool,

    /// Stay in the foreground (always the case).
    #[arg(short = 'f')]
    pub foreground: bool,
}

/// Why a command line cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// No shared directory was given.
    #[error("--shared-dir is required")]
    NoSharedDir,
    /// None of --socket-path, --fd, --fuse-mount was given.
    #[error("one of --socket-path, --fd or --fuse-mount is required")]
    NoListener,
    /// Both --socket-path and --fd were given.
    #[error("--socket-path and --fd are mutually exclusive")]
    TwoListeners,
    /// A feature served over vhost-user only, asked for with
    /// `--fuse-mount`.
    #[error("{0} is served over vhost-user only, not with --fuse-mount")]
    VhostUserOnly(&'static str),
    /// `--allow-idmap` where the guest's root is not the host's root.
    #[error("--allow-idmap serves requests without an identity as the guest's root: it cannot go with a --translate-uid/--translate-gid that keeps guest id 0 from being host id 0")]
    AllowIdmapWithTranslation,
    /// A legacy `-o` option we do not know.
    #[error("unknown -o option {0:?}")]
    UnknownCompatOption(String),
    /// A legacy `-o` option with a bad value.
    #[error("bad value in -o option {0:?}")]
    BadCompatValue(String),
    /// `--fuse-source` would not be one mount source.
    #[error("--fuse-source {0:?}: a mount source name cannot be empty or contain commas, spaces or control characters")]
    BadFuseSource(String),
    /// `--modcaps` does not parse.
    #[error("{0}")]
    Modcaps(String),
    /// `--uid-map` / `--gid-map` do not parse or do not fit together.
    #[error(transparent)]
    IdMap(#[from] sandbox::IdMapError),
    /// Host-shared locks with `--fuse-mount`: a blocking lock would hold one
    /// of its few `/dev/fuse` readers.
    #[error("--posix-lock/--flock (-o posix_lock, -o flock) are served over vhost-user only, not with --fuse-mount")]
    LocksFuseMount,
    /// `--uid-map` with `--fuse-mount`: the mount is the host's, which a
    /// daemon in a user namespace can neither serve as root nor unmount.
    #[error("--uid-map/--gid-map cannot be used with --fuse-mount")]
    UsernsFuseMount,
    /// `--xattrmap` (or `-o xattrmap=`) does not parse.
    #[error("--xattrmap: {0}")]
    XattrMap(passthrough::XattrMapError),
    /// `--translate-uid` or `--translate-gid` rules do not parse or
    /// overlap.
    #[error("{flag}: {error}")]
    TranslateIds {
        /// The flag whose rules are wrong.
        flag: &'static str,
        /// What is wrong with them.
        error: passthrough::IdMapError,
    },
    /// `--xattrmap` renaming or refusing an ACL's name, with `--posix-acl`.
    #[error("--xattrmap maps the POSIX ACL names, which the host would then not enforce: it cannot be used with --posix-acl")]
    XattrMapWithPosixAcl,
    /// `--translate-uid`/`--translate-gid` with POSIX ACLs, whose entries
    /// name ids that are not translated (refused as upstream refuses it).
    #[error("--translate-uid/--translate-gid cannot be used with --posix-acl (ACL entries are not translated)")]
    TranslateIdsWithPosixAcl,
}

/// The JSON `--print-capabilities` prints, as libvirt expects.
pub const CAPABILITIES_JSON: &str =
    r#"{"type":"fs","features":["posix-acl-negotiation-mode","separate-options"]}"#;

impl Cli {
    fn apply_compat_options(&mut self) -> Result<(), CliError> {
        let opts: Vec<String> = self
            .compat_options
            .iter()
            .flat_map(|o| o.split(',').map(str::to_owned).collect::<Vec<_>>())
            .filter(|o| !o.is_empty())
            .collect();
        for opt in opts {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            let bad = || CliError::BadCompatValue(opt.clone());
            match (key, value) {
                ("source", Some(v)) => self.shared_dir = Some(PathBuf::from(v)),
                ("cache", Some("none")) => self.cache = CacheArg::Never,
                ("cache", Some(v)) => {
                    self.cache = CacheArg::from_str(v, true).map_err(|_| bad())?
                }
                ("sandbox", Some(v)) => {
                    self.sandbox = SandboxArg::from_str(v, true).map_err(|_| bad())?
                }
                ("loglevel", Some("err")) => self.log_level = LogLevelArg::Error,
                ("loglevel", Some(v)) => {
                    self.log_level = LogLevelArg::from_str(v, true).map_err(|_| bad())?
                }
                ("seccomp", Some(v)) => {
                    self.seccomp = SeccompArg::from_str(v, true).map_err(|_| bad())?
                }
                ("inode_file_handles", Some(v)) => {
                    self.inode_file_handles =
                        FileHandlesArg::from_str(v, true).map_err(|_| bad())?
                }
                ("thread_pool_size", Some(v)) => {
                    self.thread_pool_size = v.parse().map_err(|_| bad())?
                }
                ("xattrmap", Some(v)) => self.xattrmap = Some(v.to_owned()),
                ("modcaps", Some(v)) => self.modcaps = Some(v.to_owned()),
                ("posix_acl", None) => self.posix_acl = NegotiationArg::Always,
                ("no_posix_acl", None) => self.posix_acl = NegotiationArg::Never,
                ("security_label", None) => self.security_label = NegotiationArg::Always,
                ("no_security_label", None) => self.security_label = NegotiationArg::Never,
                ("xattr", None) => self.xattr = true,
                ("no_xattr", None) => self.xattr = false,
                ("readdirplus", None) => self.no_readdirplus = false,
                ("no_readdirplus", None) => self.no_readdirplus = true,
                ("writeback", None) => self.writeback = true,
                ("no_writeback", None) => self.writeback = false,
                ("announce_submounts", None) => self.announce_submounts = true,
                ("allow_direct_io", None) => self.allow_direct_io = true,
                ("no_allow_direct_io", None) => self.allow_direct_io = false,
                // Locks shared with the host (upstream refuses both).
                ("flock", None) => self.flock = true,
                ("no_flock", None) => self.flock = false,
                ("posix_lock", None) => self.posix_lock = true,
                ("no_posix_lock", None) => self.posix_lock = false,
                ("killpriv_v2", None) => {
                    self.killpriv_v2 = true;
                    self.no_killpriv_v2 = false;
                }
                ("no_killpriv_v2", None) => {
                    self.killpriv_v2 = false;
                    self.no_killpriv_v2 = true;
                }
                _ => return Err(CliError::UnknownCompatOption(opt.clone())),
            }
        }
        Ok(())
    }

    /// The log filter these flags ask for.
    pub fn log_filter(&self) -> log::LevelFilter {
        if self.debug {
            log::LevelFilter::Debug
        } else {
            self.log_level.filter()
        }
    }

    /// Checks the flags and builds the daemon configuration.
    pub fn into_config(mut self) -> Result<DaemonConfig, CliError> {
        self.apply_compat_options()?;
        let xattrmap = match self.xattrmap.as_deref().map(XattrMap::parse) {
            Some(Ok(map)) => {
                if !map.has_catch_all() {
                    log::warn!(
                        "--xattrmap has no catch-all rule for both directions: names no rule \
                         matches are refused to the guest and hidden from its lists"
                    );
                }
                Some(Arc::new(map))
            }
            Some(Err(e)) => return Err(CliError::XattrMap(e)),
            None => None,
        };
        // ACLs the host does not enforce would be ACLs in name only: a map
        // that renames an ACL's name cannot go with --posix-acl.
        if let (Some(map), true) = (&xattrmap, self.posix_acl != NegotiationArg::Never) {
            for acl in [c"system.posix_acl_access", c"system.posix_acl_default"] {
                let kept = map
                    .host_name(acl, passthrough::xattrmap::XattrOp::Set)
                    .is_ok_and(|n| n.as_ref() == acl);
                if !kept {
                    return Err(CliError::XattrMapWithPosixAcl);
                }
            }
        }
        let translate = |flag, rules: &[String]| {
            IdMap::parse_rules(rules).map_err(|error| CliError::TranslateIds { flag, error })
        };
        let translate_uid = translate("--translate-uid", &self.translate_uid)?;
        let translate_gid = translate("--translate-gid", &self.translate_gid)?;
        if !(translate_uid.is_identity() && translate_gid.is_identity())
            && self.posix_acl != NegotiationArg::Never
        {
            return Err(CliError::TranslateIdsWithPosixAcl);
        }
        if (self.posix_lock || self.flock) && self.fuse_mount.is_some() {
            return Err(CliError::LocksFuseMount);
        }
        let security_label = self.security_label != NegotiationArg::Never;
        if self.fuse_mount.is_some() {
            if security_label {
                return Err(CliError::VhostUserOnly("--security-label"));
            }
            if self.allow_idmap {
                return Err(CliError::VhostUserOnly("--allow-idmap"));
            }
        }
        if self.allow_idmap
            && !(translate_uid.guest_can_become(0) && translate_gid.guest_can_become(0))
        {
            return Err(CliError::AllowIdmapWithTranslation);
        }
        let userns = sandbox::UserNamespace::from_flags(&self.uid_map, &self.gid_map)?;
        if userns.is_some() && self.fuse_mount.is_some() {
            return Err(CliError::UsernsFuseMount);
        }
        if let Err(e) = sandbox::caps::kept_set(false, self.modcaps.as_deref()) {
            return Err(CliError::Modcaps(e.to_string()));
        }
        if self.fuse_source.is_empty()
            || self
                .fuse_source
                .chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(CliError::BadFuseSource(self.fuse_source));
        }
        let shared_dir = self.shared_dir.ok_or(CliError::NoSharedDir)?;
        let listen = match (self.socket_path, self.fd, self.fuse_mount) {
            (Some(_), Some(_), _) => return Err(CliError::TwoListeners),
            (Some(path), None, None) => Listen::SocketPath {
                path,
                group: self.socket_group,
            },
            (None, Some(fd), None) => Listen::Fd(fd),
            (None, None, Some(mountpoint)) => Listen::FuseMount {
                mountpoint,
                source: self.fuse_source,
            },
            (None, None, None) => return Err(CliError::NoListener),
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
                return Err(CliError::TwoListeners)
            }
        };
        let mut fs = Config::new(shared_dir);
        fs.cache = match self.cache {
            CacheArg::Auto => CachePolicy::Auto,
            CacheArg::Always => CachePolicy::Always,
            CacheArg::Never => CachePolicy::Never,
            CacheArg::Metadata => CachePolicy::Metadata,
        };
        let posix_acl = self.posix_acl != NegotiationArg::Never;
        // As upstream, a map and security labels imply --xattr.
        fs.xattr = self.xattr || posix_acl || xattrmap.is_some() || security_label;
        fs.security_label = negotiation(self.security_label);
        fs.allow_mmap = self.allow_mmap;
        fs.allow_idmap = self.allow_idmap;
        fs.xattrmap = xattrmap;
        fs.posix_acl = negotiation(self.posix_acl);
        fs.translate_uid = translate_uid;
        fs.translate_gid = translate_gid;
        fs.readonly = self.readonly;
        fs.inode_file_handles = match self.inode_file_handles {
            FileHandlesArg::Never => InodeFileHandles::Never,
            FileHandlesArg::Prefer => InodeFileHandles::Prefer,
            FileHandlesArg::Mandatory => InodeFileHandles::Mandatory,
        };
        fs.writeback = self.writeback;
        fs.allow_direct_io = self.allow_direct_io;
        fs.announce_submounts = !self.no_announce_submounts;
        // Without caching, READDIRPLUS only fills a cache that is never used.
        fs.readdirplus = !self.no_readdirplus && fs.cache != CachePolicy::Never;
        fs.preserve_noatime = self.preserve_noatime;
        fs.posix_locks = self.posix_lock;
        fs.flock_locks = self.flock;
        fs.killpriv_v2 = self.killpriv_v2 && !self.no_killpriv_v2;
        // virtio-fs guests and the FUSE mount always check permissions
        // (default_permissions) before a request is sent.
        fs.client_checks_permissions = true;
        fs.negative_entries = true;
        Ok(DaemonConfig {
            fs,
            listen,
            tag: self.tag,
            request_queues: self.request_queues as usize,
            io_engine: self.io_engine,
            poll: std::time::Duration::from_micros(self.poll_us.into()),
            thread_pool_size: self.thread_pool_size,
            sandbox: SandboxConfig {
                mode: match self.sandbox {
                    SandboxArg::Namespace => SandboxMode::Namespace,
                    SandboxArg::Chroot => SandboxMode::Chroot,
                    SandboxArg::None => SandboxMode::None,
                },
                seccomp: match self.seccomp {
                    SeccompArg::None => SeccompMode::None,
                    SeccompArg::Kill => SeccompMode::Kill,
                    SeccompArg::Log => SeccompMode::Log,
                    SeccompArg::Trap => SeccompMode::Trap,
                },
                modcaps: self.modcaps,
                landlock: !self.no_landlock,
                userns,
                ..SandboxConfig::new(Profile::VirtioFs)
            },
            rlimit_nofile: self.rlimit_nofile,
            ready: None,
            record_requests: self.record_requests,
        })
    }
}

/// The core's [`Negotiation`] for a `--posix-acl` / `--security-label`
/// value.
fn negotiation(arg: NegotiationArg) -> Negotiation {
    match arg {
        NegotiationArg::Never => Negotiation::Never,
        NegotiationArg::Auto => Negotiation::Auto,
        NegotiationArg::Always => Negotiation::Always,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DaemonConfig, CliError> {
        let mut v = vec!["virtiofsd-rs"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("clap accepts").into_config()
    }

    #[test]
    fn upstream_minimal_command_line_gives_upstream_defaults() {
        let cfg = parse(&["--shared-dir", "/tmp", "--socket-path", "/tmp/s"]).unwrap();
        assert_eq!(cfg.sandbox, SandboxConfig::new(Profile::VirtioFs));
        assert_eq!(cfg.fs.cache, CachePolicy::Auto);
        assert_eq!(cfg.fs.inode_file_handles, InodeFileHandles::Prefer);
        assert!(!cfg.fs.xattr && !cfg.fs.readonly);
        assert!(cfg.fs.announce_submounts && cfg.fs.readdirplus && !cfg.fs.preserve_noatime);
        assert!(matches!(cfg.listen, Listen::SocketPath { .. }));
    }

    #[test]
    fn inode_file_handles_without_value_means_prefer() {
        let cfg = parse(&["--shared-dir", "/tmp", "--fd", "3", "--inode-file-handles"]).unwrap();
        assert_eq!(cfg.fs.inode_file_handles, InodeFileHandles::Prefer);
        let cfg = parse(&[
            "--shared-dir",
            "/tmp",
            "--fd",
            "3",
            "--inode-file-handles=mandatory",
        ])
        .unwrap();
        assert_eq!(cfg.fs.inode_file_handles, InodeFileHandles::Mandatory);
    }

    #[test]
    fn legacy_o_options_are_applied() {
        let cfg = parse(&[
            "-o",
            "source=/srv,cache=always,xattr,loglevel=debug",
            "--socket",
            "/s",
        ])
        .unwrap();
        assert_eq!(cfg.fs.root_dir, PathBuf::from("/srv"));
        assert_eq!(cfg.fs.cache, CachePolicy::Always);
        assert!(cfg.fs.xattr);
        assert_eq!(
            parse(&["-o", "bogus", "--shared-dir", "/", "--fd", "3"]).unwrap_err(),
            CliError::UnknownCompatOption("bogus".into())
        );
    }

    #[test]
    fn an_xattrmap_that_renames_acl_names_is_refused_with_posix_acl() {
        let all = ":prefix:all::user.virtiofs.::bad:all:::";
        let err =
            parse(&["--fd=3", "--shared-dir=/", "--posix-acl", "--xattrmap", all]).unwrap_err();
        assert_eq!(err, CliError::XattrMapWithPosixAcl);
        // A map that leaves system.* alone goes with ACLs.
        let sec = ":prefix:all:security.:user.virtiofs.::ok:all:::";
        let cfg = parse(&["--fd=3", "--shared-dir=/", "--posix-acl", "--xattrmap", sec]).unwrap();
        assert!(cfg.fs.posix_acl == Negotiation::Always && cfg.fs.xattrmap.is_some());
    }

    #[test]
    fn host_shared_locks_are_served_where_asked_for() {
        // libvirt's default (<lock> off): no locks offered.
        let o = "source=/srv,cache=auto,sandbox=chroot,xattr,no_flock,no_posix_lock";
        let cfg = parse(&["--fd=31", "-o", o]).unwrap();
        assert!(!cfg.fs.posix_locks && !cfg.fs.flock_locks);
        // <lock posix='on' flock='on'/>: both, as asked (upstream refuses).
        let cfg = parse(&["--fd=31", "-o", "source=/srv,flock,posix_lock"]).unwrap();
        assert!(cfg.fs.posix_locks && cfg.fs.flock_locks);
        let cfg = parse(&["--fd=31", "--shared-dir=/srv", "--posix-lock"]).unwrap();
        assert!(cfg.fs.posix_locks && !cfg.fs.flock_locks);
        let cfg = parse(&["--fd=31", "--shared-dir=/srv", "--flock", "-o", "no_flock"]).unwrap();
        assert!(!cfg.fs.flock_locks, "-o applies after the long flags");
        assert_eq!(
            parse(&["--fuse-mount=/m", "--shared-dir=/srv", "-o", "posix_lock"]).unwrap_err(),
            CliError::LocksFuseMount
        );
    }

    #[test]
    fn libvirt_session_mode_id_maps_make_a_user_namespace() {
        // What libvirt's session mode passes (qemu_virtiofs.c).
        let cfg = parse(&[
            "--fd=3",
            "--shared-dir",
            "/srv",
            "--uid-map=:0:1000:1:",
            "--uid-map=:1:100000:65536:",
            "--gid-map=:0:1000:1:",
            "--gid-map=:1:100000:65536:",
        ])
        .unwrap();
        let ns = cfg.sandbox.userns.expect("a user namespace");
        assert_eq!(ns.uid_map.len(), 2);
        assert_eq!(ns.gid_map[1].outside, 100000);
        // Handles cannot be reopened from a user namespace.
        assert!(!SandboxConfig {
            userns: Some(ns),
            ..SandboxConfig::new(Profile::VirtioFs)
        }
        .keeps_read_search());
        assert_eq!(
            parse(&["--fd=3", "--shared-dir", "/srv", "--uid-map=:0:1000:1:"]).unwrap_err(),
            CliError::IdMap(sandbox::IdMapError::NoRoot)
        );
        assert!(matches!(
            parse(&[
                "--fd=3",
                "--shared-dir",
                "/srv",
                "--uid-map=0:1000:1",
                "--gid-map=:0:1:1:"
            ])
            .unwrap_err(),
            CliError::IdMap(sandbox::IdMapError::Syntax { .. })
        ));
        let err = parse(&[
            "--fuse-mount=/mnt",
            "--shared-dir",
            "/srv",
            "--uid-map=:0:1000:1:",
            "--gid-map=:0:1000:1:",
        ])
        .unwrap_err();
        assert_eq!(err, CliError::UsernsFuseMount);
        let plain = parse(&["--fd=3", "--shared-dir", "/srv"]).unwrap();
        assert_eq!(plain.sandbox.userns, None);
    }

    #[test]
    fn missing_or_conflicting_listeners_are_errors() {
        assert_eq!(
            parse(&["--shared-dir", "/tmp"]).unwrap_err(),
            CliError::NoListener
        );
        assert_eq!(
            parse(&["--shared-dir", "/tmp", "--fd", "3", "--socket-path", "/s"]).unwrap_err(),
            CliError::TwoListeners
        );
        assert_eq!(
            parse(&["--socket-path", "/s"]).unwrap_err(),
            CliError::NoSharedDir
        );
    }

    #[test]
    fn cache_never_disables_readdirplus_and_submounts_can_be_hidden() {
        let cfg = parse(&[
            "--shared-dir",
            "/",
            "--fd",
            "3",
            "--cache",
            "never",
            "--no-announce-submounts",
        ])
        .unwrap();
        assert!(!cfg.fs.readdirplus);
        assert!(!cfg.fs.announce_submounts);
    }

    #[test]
    fn posix_acl_takes_an_optional_mode() {
        let cfg = parse(&["--shared-dir", "/", "--fd", "3", "--posix-acl"]).unwrap();
        assert!(cfg.fs.posix_acl == Negotiation::Always && cfg.fs.xattr);
        let cfg = parse(&["--shared-dir", "/", "--fd", "3", "--posix-acl=never"]).unwrap();
        assert!(cfg.fs.posix_acl == Negotiation::Never && !cfg.fs.xattr);
        let cfg = parse(&["--shared-dir", "/", "--fd", "3", "--posix-acl=auto"]).unwrap();
        assert!(cfg.fs.posix_acl == Negotiation::Auto && cfg.fs.xattr);
    }

    #[test]
    fn killpriv_v2_is_off_by_default_and_the_last_flag_wins() {
        let killpriv = |args: &[&str]| {
            let mut v = vec!["--shared-dir", "/", "--fd", "3"];
            v.extend_from_slice(args);
            parse(&v).unwrap().fs.killpriv_v2
        };
        assert!(!killpriv(&[]));
        assert!(killpriv(&["--killpriv-v2"]));
        assert!(!killpriv(&["--no-killpriv-v2"]));
        assert!(!killpriv(&["--killpriv-v2", "--no-killpriv-v2"]));
        assert!(killpriv(&["--no-killpriv-v2", "--killpriv-v2"]));
    }

    #[test]
    fn killpriv_v2_compat_options_set_and_clear_it_after_the_long_flags() {
        let killpriv = |args: &[&str]| {
            let mut v = vec!["--shared-dir", "/", "--fd", "3"];
            v.extend_from_slice(args);
            parse(&v).unwrap().fs.killpriv_v2
        };
        assert!(killpriv(&["-o", "killpriv_v2"]));
        assert!(!killpriv(&["-o", "no_killpriv_v2"]));
        assert!(!killpriv(&["-o", "killpriv_v2,no_killpriv_v2"]));
        assert!(killpriv(&["-o", "no_killpriv_v2", "-o", "killpriv_v2"]));
        // As upstream: -o applies after the long flags, wherever it is.
        assert!(!killpriv(&["-o", "no_killpriv_v2", "--killpriv-v2"]));
        assert!(killpriv(&["--no-killpriv-v2", "-o", "killpriv_v2"]));
    }

    #[test]
    fn capabilities_are_valid_json_naming_the_fs_type() {
        assert!(CAPABILITIES_JSON.starts_with(r#"{"type":"fs""#));
        assert_eq!(
            CAPABILITIES_JSON.matches('{').count(),
            CAPABILITIES_JSON.matches('}').count()
        );
    }

    #[test]
    fn fuse_source_names_one_mount_source() {
        let cfg = parse(&[
            "--shared-dir",
            "/tmp",
            "--fuse-mount",
            "/mnt",
            "--fuse-source",
            "xfst_test",
        ])
        .unwrap();
        assert!(matches!(
            cfg.listen,
            Listen::FuseMount { ref source, .. } if source == "xfst_test"
        ));
        for bad in ["", "a,dev", "a b", "a\nb"] {
            assert_eq!(
                parse(&[
                    "--shared-dir",
                    "/tmp",
                    "--fuse-mount",
                    "/m",
                    "--fuse-source",
                    bad
                ])
                .err(),
                Some(CliError::BadFuseSource(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mount_helper_options_reach_the_config() {
        let cfg = parse(&[
            "--fuse-mount",
            "/mnt",
            "-o",
            "source=/srv,seccomp=trap,inode_file_handles=prefer,thread_pool_size=3",
        ])
        .unwrap();
        assert_eq!(cfg.sandbox.seccomp, SeccompMode::Trap);
        assert_eq!(cfg.fs.inode_file_handles, InodeFileHandles::Prefer);
        assert_eq!(cfg.thread_pool_size, 3);
        assert!(cfg.fs.client_checks_permissions && cfg.fs.negative_entries);
        assert_eq!(
            parse(&["--fuse-mount", "/m", "-o", "source=/s,seccomp=maybe"]).err(),
            Some(CliError::BadCompatValue("seccomp=maybe".into()))
        );
    }

    #[test]
    fn security_labels_imply_xattrs_as_upstream_and_need_vhost_user() {
        let cfg = parse(&["--shared-dir", "/", "--fd", "3", "--security-label"]).unwrap();
        assert_eq!(cfg.fs.security_label, Negotiation::Always);
        assert!(cfg.fs.xattr, "implies --xattr");
        let cfg = parse(&["--shared-dir=/", "--fd=3", "--security-label=auto"]).unwrap();
        assert_eq!(cfg.fs.security_label, Negotiation::Auto);
        let cfg = parse(&["--fd=3", "-o", "source=/,security_label"]).unwrap();
        assert_eq!(cfg.fs.security_label, Negotiation::Always);
        let cfg = parse(&["--fd=3", "--shared-dir=/"]).unwrap();
        assert_eq!(cfg.fs.security_label, Negotiation::Never, "off by default");
        assert!(!cfg.fs.xattr && !cfg.fs.allow_mmap);
        assert!(
            parse(&["--fd=3", "--shared-dir=/", "--allow-mmap"])
                .unwrap()
                .fs
                .allow_mmap
        );
        let err = parse(&[
            "--fuse-mount=/m",
            "--shared-dir=/",
            "--xattr",
            "--security-label",
        ]);
        assert_eq!(
            err.unwrap_err(),
            CliError::VhostUserOnly("--security-label")
        );
    }

    #[test]
    fn allow_idmap_needs_the_guest_root_to_be_the_hosts() {
        let cfg = parse(&["--shared-dir=/", "--fd=3", "--allow-idmap"]).unwrap();
        assert!(cfg.fs.allow_idmap);
        assert!(!parse(&["--shared-dir=/", "--fd=3"]).unwrap().fs.allow_idmap);
        for rule in [
            "--translate-uid=squash-guest:0:65534:1",
            "--translate-gid=forbid-guest:0:1",
        ] {
            let err = parse(&["--shared-dir=/", "--fd=3", "--allow-idmap", rule]).unwrap_err();
            assert_eq!(err, CliError::AllowIdmapWithTranslation, "{rule}");
        }
        let shifted = "--translate-uid=map:1000:2000:10";
        assert!(parse(&["--shared-dir=/", "--fd=3", "--allow-idmap", shifted]).is_ok());
        let err = parse(&["--fuse-mount=/m", "--shared-dir=/", "--allow-idmap"]).unwrap_err();
        assert_eq!(err, CliError::VhostUserOnly("--allow-idmap"));
    }

    #[test]
    fn an_xattrmap_reaches_the_config_and_implies_xattr() {
        for args in [
            &["--xattrmap", ":map::user.virtiofs.:"][..],
            &["-o", "xattrmap=:map::user.virtiofs.:"][..],
        ] {
            let mut v = vec!["--shared-dir", "/", "--fd", "3"];
            v.extend_from_slice(args);
            let cfg = parse(&v).unwrap();
            assert!(cfg.fs.xattr, "{args:?}");
            let map = cfg.fs.xattrmap.expect("a map");
            assert_eq!(
                *map,
                XattrMap::parse(":prefix:all::user.virtiofs.::bad:all:::").unwrap()
            );
            assert_eq!(
                map.host_name(c"security.selinux", passthrough::xattrmap::XattrOp::Set)
                    .unwrap()
                    .as_ref(),
                c"user.virtiofs.security.selinux"
            );
        }
        let cfg = parse(&["--shared-dir", "/", "--fd", "3"]).unwrap();
        assert!(cfg.fs.xattrmap.is_none() && !cfg.fs.xattr);
    }

    #[test]
    fn a_bad_xattrmap_is_a_one_line_error_naming_the_rule() {
        let err = parse(&[
            "--shared-dir",
            "/",
            "--fd",
            "3",
            "--xattrmap",
            ":ok:client:user.:: :prefix:everywhere:a:b:",
        ])
        .unwrap_err();
        assert_eq!(
            err,
            CliError::XattrMap(passthrough::XattrMapError::UnknownScope {
                rule: 2,
                found: "everywhere".into()
            })
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("--xattrmap: xattr map rule 2:") && !msg.contains('\n'),
            "{msg}"
        );
        assert!(matches!(
            parse(&["-o", "source=/,xattrmap=:prefix:all:a", "--fd", "3"]),
            Err(CliError::XattrMap(_))
        ));
        assert_eq!(
            parse(&["--shared-dir", "/", "--fd", "3", "--xattrmap", " "]).unwrap_err(),
            CliError::XattrMap(passthrough::XattrMapError::Empty)
        );
    }

    #[test]
    fn translate_uid_and_gid_rules_reach_the_config() {
        let cfg = parse(&[
            "--shared-dir",
            "/",
            "--fd",
            "3",
            "--translate-uid",
            "map:1000:2000:10",
            "--translate-uid=squash-host:100000:65534:65536",
            "--translate-uid=forbid-guest:0:1",
            "--translate-gid",
            "squash-guest:0:100:4294967295",
        ])
        .unwrap();
        let (uids, gids) = (&cfg.fs.translate_uid, &cfg.fs.translate_gid);
        assert_eq!(uids.rules().len(), 3);
        assert_eq!(uids.guest_to_host(1005), Ok(2005));
        assert_eq!(uids.host_to_guest(2009), 1009);
        assert_eq!(uids.host_to_guest(123456), 65534);
        assert!(uids.guest_to_host(0).is_err());
        assert_eq!(gids.guest_to_host(0), Ok(100));
        assert_eq!(gids.guest_to_host(54321), Ok(100));
        assert_eq!(gids.host_to_guest(100), 100);
        let cfg = parse(&["--shared-dir", "/", "--fd", "3"]).unwrap();
        assert!(cfg.fs.translate_uid.is_identity() && cfg.fs.translate_gid.is_identity());
    }

    #[test]
    fn bad_translate_rules_are_one_line_errors_naming_flag_and_rule() {
        let base = ["--shared-dir", "/", "--fd", "3"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v).unwrap_err()
        };
        let err = with(&[
            "--translate-uid=map:1000:2000:10",
            "--translate-uid=guest:1005:0:1",
        ]);
        assert!(
            matches!(
                &err,
                CliError::TranslateIds {
                    flag: "--translate-uid",
                    error: passthrough::IdMapError::Overlap {
                        first: 1005,
                        last: 1005,
                        ..
                    },
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("--translate-uid: ")
                && msg.contains("guest:1005:0:1")
                && msg.contains("map:1000:2000:10")
                && !msg.contains('\n'),
            "{msg}"
        );
        let err = with(&["--translate-gid", "swap:1:2:3"]);
        assert_eq!(
            err,
            CliError::TranslateIds {
                flag: "--translate-gid",
                error: passthrough::IdMapError::UnknownType {
                    rule: "swap:1:2:3".into(),
                    found: "swap".into()
                }
            }
        );
        assert!(err.to_string().starts_with("--translate-gid: "), "{err}");
        assert!(matches!(
            with(&["--translate-uid", "forbid-guest:0:1:2"]),
            CliError::TranslateIds {
                error: passthrough::IdMapError::FieldCount {
                    expected: 2,
                    found: 3,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn translate_ids_are_refused_with_posix_acls_as_upstream() {
        for acl in [
            &["--posix-acl"][..],
            &["--posix-acl=auto"],
            &["-o", "posix_acl"],
        ] {
            let mut v = vec![
                "--shared-dir",
                "/",
                "--fd",
                "3",
                "--translate-gid=map:0:1:1",
            ];
            v.extend_from_slice(acl);
            assert_eq!(
                parse(&v).unwrap_err(),
                CliError::TranslateIdsWithPosixAcl,
                "{acl:?}"
            );
        }
        let cfg = parse(&[
            "--shared-dir",
            "/",
            "--fd",
            "3",
            "--posix-acl=never",
            "--translate-uid=map:0:1:1",
        ])
        .unwrap();
        assert!(cfg.fs.posix_acl == Negotiation::Never && !cfg.fs.translate_uid.is_identity());
    }

    #[test]
    fn record_requests_reaches_the_config_and_not_a_fuse_mount() {
        let cfg = parse(&["--shared-dir", "/", "--fd", "3"]).unwrap();
        assert_eq!(cfg.record_requests, None);
        let cfg = parse(&[
            "--shared-dir",
            "/",
            "--fd",
            "3",
            "--record-requests",
            "/tmp/fuse.rec",
        ])
        .unwrap();
        assert_eq!(cfg.record_requests, Some(PathBuf::from("/tmp/fuse.rec")));
        assert!(Cli::try_parse_from([
            "virtiofsd-rs",
            "--shared-dir",
            "/",
            "--fuse-mount",
            "/mnt",
            "--record-requests",
            "/tmp/fuse.rec",
        ])
        .is_err());
    }

    #[test]
    fn unknown_flags_are_rejected_by_the_parser() {
        assert!(Cli::try_parse_from(["virtiofsd-rs", "--no-such-flag"]).is_err());
        assert!(Cli::try_parse_from(["virtiofsd-rs", "--cache", "sometimes"]).is_err());
    }
}
