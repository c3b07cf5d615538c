//! Reading a running daemon's walls from the outside, through
//! `/proc/PID/status`: what an operator (or a test) checks to see that a
//! daemon is confined.

use std::io;

/// The confinement-related fields of `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessWalls {
    /// `Seccomp:` 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// `NoNewPrivs:`.
    pub no_new_privs: bool,
    /// `CapEff:` as a bit mask (bit N is capability N).
    pub cap_eff: u64,
    /// `CapBnd:`.
    pub cap_bnd: u64,
    /// `Groups:` (supplementary groups).
    pub groups: Vec<u32>,
}

impl ProcessWalls {
    /// Reads them for `pid`.
    pub fn of(pid: u32) -> io::Result<ProcessWalls> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {name}")))
        };
        let hex = |name: &str| -> io::Result<u64> {
            u64::from_str_radix(field(name)?, 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        Ok(ProcessWalls {
            seccomp: field("Seccomp:")?.parse().unwrap_or(0),
            no_new_privs: field("NoNewPrivs:")? == "1",
            cap_eff: hex("CapEff:")?,
            cap_bnd: hex("CapBnd:")?,
            groups: field("Groups:")?
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect(),
        })
    }

    /// Whether capability number `cap` is effective.
    pub fn has_cap(&self, cap: u32) -> bool {
        self.cap_eff & (1u64 << cap) != 0
    }
}

/// The process that serves for the daemon started as `pid`: its only child
/// when `pid` is a supervisor (the namespace sandbox, or a FUSE mount),
/// else `pid` itself.
pub fn serving_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(pid)
}

/// Capabilities a serving daemon must never hold (name, number): what the
/// default walls remove and what checks of a running daemon look for.
pub const FORBIDDEN_CAPS: [(&str, u32); 6] = [
    ("net_admin", 12),
    ("sys_module", 16),
    ("sys_rawio", 17),
    ("sys_ptrace", 19),
    ("sys_admin", 21),
    ("setpcap", 8),
];

/// Capability numbers the checks name: `chown`, `setuid` (kept) and
/// `sys_admin` (removed unless `--modcaps` adds it).
pub const CAP_CHOWN: u32 = 0;
/// `CAP_SETUID`.
pub const CAP_SETUID: u32 = 7;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;

impl ProcessWalls {
    /// The forbidden capabilities this process holds (effective or
    /// bounding), by name; empty when the walls are as they should be.
    pub fn forbidden_caps(&self) -> Vec<&'static str> {
        FORBIDDEN_CAPS
            .iter()
            .filter(|(_, n)| self.has_cap(*n) || self.cap_bnd & (1u64 << n) != 0)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Where each `/proc/self/fd` directory held by process `pid` leads: for
/// each such fd, the `(st_dev, st_ino)` of its `../../1/root`, the path by
/// which code inside the daemon would reach PID 1's root (the host's root
/// when the daemon uses the host's `/proc`). `None` where it does not
/// resolve.
pub fn proc_fd_roots(pid: u32) -> io::Result<Vec<Option<(u64, u64)>>> {
    use std::os::unix::fs::MetadataExt;
    let mut roots = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let p = e?.path();
        if std::fs::read_link(&p).is_ok_and(|l| l.to_string_lossy().ends_with("/fd")) {
            let up = std::fs::metadata(p.join("../../1/root")).map(|m| (m.dev(), m.ino()));
            roots.push(up.ok());
        }
    }
    Ok(roots)
}

/// What is wrong with the default walls of the daemon started as `pid`
/// (see [`serving_pid`]) serving `share`: an empty list when its serving
/// process runs in a PID namespace of its own under a seccomp filter, with
/// `no_new_privs`, none of [`FORBIDDEN_CAPS`], no supplementary group, its
/// root (the share) mounted `nodev,nosuid`, and every `/proc/self/fd` it
/// holds leading back to the share.
pub fn default_walls_violations(pid: u32, share: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let serving = serving_pid(pid);
    let mut bad = Vec::new();
    if serving == pid {
        bad.push("no supervised child: not in a PID namespace".to_string());
    }
    match ProcessWalls::of(serving) {
        Ok(w) => {
            if w.seccomp != 2 {
                bad.push(format!("Seccomp: {}", w.seccomp));
            }
            if !w.no_new_privs {
                bad.push("NoNewPrivs: 0".into());
            }
            if !w.forbidden_caps().is_empty() {
                bad.push(format!("holds {:?}", w.forbidden_caps()));
            }
            if !w.groups.is_empty() {
                bad.push(format!("Groups: {:?}", w.groups));
            }
        }
        Err(e) => bad.push(format!("/proc/{serving}/status: {e}")),
    }
    let nspid = std::fs::read_to_string(format!("/proc/{serving}/status")).unwrap_or_default();
    if !nspid
        .lines()
        .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1"))
    {
        bad.push("not PID 1 of its namespace".into());
    }
    // Its root (the share's bind mount) is nodev,nosuid.
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{serving}/mountinfo")).unwrap_or_default();
    match mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
    {
        Some(f) => {
            let opts: Vec<&str> = f.get(5).map(|o| o.split(',').collect()).unwrap_or_default();
            for want in ["nodev", "nosuid"] {
                if !opts.contains(&want) {
                    bad.push(format!("its root is mounted without {want}: {opts:?}"));
                }
            }
        }
        None => bad.push("no root mount in its mountinfo".into()),
    }
    let share_id = std::fs::metadata(share).map(|m| (m.dev(), m.ino())).ok();
    match proc_fd_roots(serving) {
        Ok(roots) if roots.is_empty() => bad.push("holds no /proc/self/fd".into()),
        Ok(roots) => {
            for r in roots.into_iter().filter(|r| *r != share_id) {
                bad.push(format!(
                    "/proc/self/fd/../../1/root is {r:?}, not the share"
                ));
            }
        }
        Err(e) => bad.push(format!("/proc/{serving}/fd: {e}")),
    }
    bad
}
