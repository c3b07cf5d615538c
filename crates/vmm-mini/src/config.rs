//! What a VM is made of: [`VmConfig`] and the `--fs` / `--9p` device specs.

use std::path::PathBuf;
use std::str::FromStr;

use crate::devices::FS_TAG_LEN;

/// Where a share is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareBackend {
    /// In this process, on the filesystem core (`dir=DIR`).
    Dir {
        /// The shared directory.
        path: PathBuf,
        /// `readonly`: refuse every change.
        readonly: bool,
    },
    /// By a vhost-user backend listening on this socket (`socket=PATH`).
    Socket(PathBuf),
}

/// The kind of share device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// virtio-fs.
    Fs,
    /// virtio-9p (9P2000.L).
    P9,
}

/// One `--fs` or `--9p` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// virtio-fs or virtio-9p.
    pub kind: ShareKind,
    /// The mount tag.
    pub tag: String,
    /// Who serves it.
    pub backend: ShareBackend,
    /// virtio-fs request queues (`queues=N`, default 1).
    pub request_queues: usize,
}

/// Why a device spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A `key=value` item without `=`, or an unknown key.
    #[error("unknown item '{0}' (expected tag=, dir= or socket=, queues=, readonly)")]
    UnknownItem(String),
    /// No `tag=`.
    #[error("missing tag=")]
    NoTag,
    /// A tag that is empty, too long or has characters the guest's mount
    /// command line cannot carry.
    #[error("bad tag '{0}': 1 to {FS_TAG_LEN} characters of [A-Za-z0-9_.-]")]
    BadTag(String),
    /// Neither or both of `dir=` and `socket=`.
    #[error("give exactly one of dir= and socket=")]
    Backend,
    /// `queues=` is not 1..=64, or given for 9P.
    #[error("bad queues= '{0}': 1 to 64 request queues, virtio-fs only")]
    Queues(String),
    /// `readonly` with `socket=` (the backend decides).
    #[error("readonly applies to dir= shares; a socket's backend has its own flag")]
    ReadonlySocket,
}

impl ShareSpec {
    /// Parses `tag=T,dir=DIR[,readonly][,queues=N]` or `tag=T,socket=PATH[,queues=N]`.
    pub fn parse(kind: ShareKind, s: &str) -> Result<ShareSpec, SpecError> {
        let (mut tag, mut dir, mut socket, mut queues, mut readonly) =
            (None, None, None, None, false);
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("tag", v)) => tag = Some(v.to_owned()),
                Some(("dir", v)) => dir = Some(PathBuf::from(v)),
                Some(("socket", v)) => socket = Some(PathBuf::from(v)),
                Some(("queues", v)) => queues = Some(v.to_owned()),
                None if item == "readonly" => readonly = true,
                _ => return Err(SpecError::UnknownItem(item.to_owned())),
            }
        }
        let tag = tag.ok_or(SpecError::NoTag)?;
        let tag_ok = !tag.is_empty()
            && tag.len() <= FS_TAG_LEN
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !tag_ok {
            return Err(SpecError::BadTag(tag));
        }
        let request_queues = match (queues, kind) {
            (None, _) => 1,
            (Some(q), ShareKind::Fs) => match q.parse::<usize>() {
                Ok(n @ 1..=64) => n,
                _ => return Err(SpecError::Queues(q)),
            },
            (Some(q), ShareKind::P9) => return Err(SpecError::Queues(q)),
        };
        let backend = match (dir, socket) {
            (Some(path), None) => ShareBackend::Dir { path, readonly },
            (None, Some(p)) if !readonly => ShareBackend::Socket(p),
            (None, Some(_)) => return Err(SpecError::ReadonlySocket),
            _ => return Err(SpecError::Backend),
        };
        Ok(ShareSpec {
            kind,
            tag,
            backend,
            request_queues,
        })
    }
}

/// A virtio-fs spec, for clap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec(pub ShareSpec);
impl FromStr for FsSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        ShareSpec::parse(ShareKind::Fs, s).map(FsSpec)
    }
}

/// A virtio-9p spec, for clap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P9Spec(pub ShareSpec);
impl FromStr for P9Spec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        ShareSpec::parse(ShareKind::P9, s).map(P9Spec)
    }
}

/// Everything a VM is made of.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// PVH `vmlinux` or `bzImage`.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Extra kernel command line, appended to vmm-mini's.
    pub cmdline: Vec<String>,
    /// Shares, in device order.
    pub shares: Vec<ShareSpec>,
    /// A command for the guest's init to run (`vmm.sh=`); none: a shell.
    pub command: Option<Vec<String>>,
    /// Print the boot-to-init time.
    pub boot_timer: bool,
    /// The host CPUs every vCPU thread is pinned to; empty: not pinned.
    pub vcpu_affinity: Vec<usize>,
    /// Feed stdin to the guest's console.
    pub stdin: bool,
}

impl VmConfig {
    /// A VM booting `kernel` with 512 MiB, one vCPU and nothing else.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            mem_mib: 512,
            cpus: 1,
            cmdline: Vec::new(),
            shares: Vec::new(),
            command: None,
            boot_timer: false,
            stdin: false,
            vcpu_affinity: Vec::new(),
        }
    }
}

/// The guest's shell command line for the words after `--`, as a shell user
/// expects them: one word is a command line of its own, run as it is (as
/// `ssh host 'a; b'` runs `a; b`), so `-- 'cd /mnt/c && make'` works;
/// several words are a program and its arguments, each passed as it is
/// ([`shell_join`] quotes them), so `-- touch 'a b'` makes one file.
pub fn command_line(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        _ => shell_join(args),
    }
}

/// `args` as one `sh -c` string, each quoted where it needs it.
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Standard base64 with padding (what busybox `base64 -d` reads).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = ShareSpec::parse(ShareKind::Fs, "tag=c,dir=/tmp,queues=4").unwrap();
        assert_eq!(s.tag, "c");
        assert_eq!(s.request_queues, 4);
        assert_eq!(
            s.backend,
            ShareBackend::Dir {
                path: "/tmp".into(),
                readonly: false
            }
        );
        let s = ShareSpec::parse(ShareKind::P9, "socket=/run/x.sock,tag=d").unwrap();
        assert_eq!(s.backend, ShareBackend::Socket("/run/x.sock".into()));
        let s = ShareSpec::parse(ShareKind::Fs, "tag=c,dir=/x,readonly").unwrap();
        assert!(matches!(
            s.backend,
            ShareBackend::Dir { readonly: true, .. }
        ));
    }

    #[test]
    fn bad_specs_are_refused_with_reasons() {
        use ShareKind::*;
        let e = |k, s| ShareSpec::parse(k, s).unwrap_err();
        assert_eq!(e(Fs, "dir=/x"), SpecError::NoTag);
        assert_eq!(e(Fs, "tag=,dir=/x"), SpecError::BadTag("".into()));
        assert_eq!(e(Fs, "tag=a b,dir=/x"), SpecError::BadTag("a b".into()));
        let long = format!("tag={},dir=/x", "t".repeat(37));
        assert!(matches!(e(Fs, long.as_str()), SpecError::BadTag(_)));
        assert_eq!(e(Fs, "tag=a"), SpecError::Backend);
        assert_eq!(e(Fs, "tag=a,dir=/x,socket=/y"), SpecError::Backend);
        assert_eq!(
            e(Fs, "tag=a,dir=/x,queues=0"),
            SpecError::Queues("0".into())
        );
        assert_eq!(
            e(Fs, "tag=a,dir=/x,queues=65"),
            SpecError::Queues("65".into())
        );
        assert_eq!(
            e(P9, "tag=a,dir=/x,queues=2"),
            SpecError::Queues("2".into())
        );
        assert_eq!(e(Fs, "tag=a,socket=/y,readonly"), SpecError::ReadonlySocket);
        assert_eq!(
            e(Fs, "tag=a,dir=/x,cache=always"),
            SpecError::UnknownItem("cache=always".into())
        );
    }

    #[test]
    fn shell_join_quotes_what_needs_it() {
        let a = |v: &[&str]| shell_join(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["ls", "-la", "/mnt/c"]), "ls -la /mnt/c");
        assert_eq!(a(&["echo", "a b", "it's", ""]), r"echo 'a b' 'it'\''s' ''");
        assert_eq!(a(&["sh", "-c", "x; y"]), "sh -c 'x; y'");
    }

    #[test]
    fn one_word_is_a_command_line_several_are_an_argv() {
        let v = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // One word: the shell reads it (ssh's form).
        assert_eq!(command_line(&v(&["a; b"])), "a; b");
        assert_eq!(
            command_line(&v(&["cd /mnt/c && make -j2"])),
            "cd /mnt/c && make -j2"
        );
        assert_eq!(command_line(&v(&["ls"])), "ls");
        // Several: each word stays one argument.
        assert_eq!(command_line(&v(&["touch", "a b"])), "touch 'a b'");
        assert_eq!(command_line(&v(&["sh", "-c", "a; b"])), "sh -c 'a; b'");
        assert_eq!(command_line(&v(&["echo", "it's"])), r"echo 'it'\''s'");
    }

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
