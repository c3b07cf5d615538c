//! The workloads, by their fixed names, and what each one asks of a server:
//! the I/O size, queue depth and offset sequence, or the metadata operation.
//!
//! Every server gets the same offsets in the same order: the n-th request
//! submitted in a run has the n-th offset of a generator seeded by the
//! workload alone.

/// Entries of the directory `readdir-10k` lists.
pub const READDIR_ENTRIES: usize = 10_000;

/// The daemon's `RLIMIT_NOFILE` in `tree-stat-rlimit1024` and
/// `inode-memory`.
pub const FD_LIMIT: u64 = 1024;

/// A workload, named as on the command line and in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// 4 KiB reads at random aligned offsets, one at a time.
    RandRead4kQd1,
    /// 4 KiB reads at random aligned offsets, 32 outstanding.
    RandRead4kQd32,
    /// 1 MiB reads, sequential through the file.
    SeqRead1m,
    /// 1 MiB writes, sequential through the file.
    SeqWrite1m,
    /// 4 KiB writes at random aligned offsets, 32 outstanding.
    RandWrite4kQd32,
    /// Create a file, stat it, close it, unlink it: one operation.
    CreateStatUnlink,
    /// List a directory of 10,000 entries; counted in entries.
    Readdir10k,
    /// Walk a large Linux-source-like tree and lstat every entry, as
    /// `find -exec lstat` on a cold guest cache; counted in entries.
    TreeStat,
    /// Create a tree of small files (`npm ci`); counted in entries.
    TreeCreate,
    /// `rm -rf` of such a tree; counted in entries.
    TreeRemove,
    /// [`Workload::TreeStat`] with the daemon under `RLIMIT_NOFILE` 1024.
    TreeStatRlimit1024,
    /// Look up many files and hold them: the daemon's memory per inode, and
    /// what forgetting them returns; the daemon under `RLIMIT_NOFILE` 1024.
    /// Counted in inodes.
    InodeMemory,
}

/// What a tree workload does (see [`crate::tree`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeOp {
    /// Walk the stat tree: list every directory, lstat every entry.
    Stat,
    /// Create the small tree: a directory or a file with its bytes per
    /// entry.
    Create,
    /// Remove the small tree, as `rm -rf`.
    Remove,
    /// Look up every file of the inode set and keep the lookups.
    HoldInodes,
}

/// Which file an I/O workload uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// The read-only data file (`data`).
    Read,
    /// The file the write workloads overwrite (`wdata`).
    Write,
}

/// Where the offsets of an I/O workload go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Uniformly random, aligned to the request size.
    Random,
    /// One after the other, wrapping at the end of the file.
    Sequential,
}

/// The shape of an I/O workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSpec {
    /// Read or write, and on which file.
    pub role: FileRole,
    /// Bytes per request.
    pub len: u32,
    /// Requests outstanding (closed loop: each completion is refilled).
    pub qd: usize,
    /// Offset sequence.
    pub pattern: Pattern,
}

impl IoSpec {
    /// Whether the workload writes.
    pub fn write(&self) -> bool {
        self.role == FileRole::Write
    }
}

/// What a workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// READ or WRITE requests in a closed loop.
    Io(IoSpec),
    /// CREATE + GETATTR + RELEASE + UNLINK (9P: walk + lcreate + getattr +
    /// clunk + unlinkat), one operation.
    CreateStatUnlink,
    /// OPENDIR + READDIR until the end + RELEASEDIR, counted per entry.
    Readdir,
    /// One pass over a tree, counted per entry (see [`TreeOp`]).
    Tree(TreeOp),
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 12] = [
        Workload::RandRead4kQd1,
        Workload::RandRead4kQd32,
        Workload::SeqRead1m,
        Workload::SeqWrite1m,
        Workload::RandWrite4kQd32,
        Workload::CreateStatUnlink,
        Workload::Readdir10k,
        Workload::TreeStat,
        Workload::TreeCreate,
        Workload::TreeRemove,
        Workload::TreeStatRlimit1024,
        Workload::InodeMemory,
    ];

    /// The workloads a run without `--workloads` runs (with `--quick`:
    /// [`Workload::ALL`]): all but `inode-memory`, whose 1,000,000 lookups
    /// take minutes per server.
    pub const DEFAULT: [Workload; 11] = [
        Workload::RandRead4kQd1,
        Workload::RandRead4kQd32,
        Workload::SeqRead1m,
        Workload::SeqWrite1m,
        Workload::RandWrite4kQd32,
        Workload::CreateStatUnlink,
        Workload::Readdir10k,
        Workload::TreeStat,
        Workload::TreeCreate,
        Workload::TreeRemove,
        Workload::TreeStatRlimit1024,
    ];

    /// The workload's fixed name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead4kQd1 => "randread-4k-qd1",
            Workload::RandRead4kQd32 => "randread-4k-qd32",
            Workload::SeqRead1m => "seqread-1m",
            Workload::SeqWrite1m => "seqwrite-1m",
            Workload::RandWrite4kQd32 => "randwrite-4k-qd32",
            Workload::CreateStatUnlink => "create-stat-unlink",
            Workload::Readdir10k => "readdir-10k",
            Workload::TreeStat => "tree-stat",
            Workload::TreeCreate => "tree-create",
            Workload::TreeRemove => "tree-remove",
            Workload::TreeStatRlimit1024 => "tree-stat-rlimit1024",
            Workload::InodeMemory => "inode-memory",
        }
    }

    /// The workload called `name`.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What the workload does; `seq_qd` is the queue depth of the
    /// sequential 1 MiB workloads.
    pub fn kind(self, seq_qd: usize) -> Kind {
        let io = |role, len, qd, pattern| {
            Kind::Io(IoSpec {
                role,
                len,
                qd,
                pattern,
            })
        };
        match self {
            Workload::RandRead4kQd1 => io(FileRole::Read, 4096, 1, Pattern::Random),
            Workload::RandRead4kQd32 => io(FileRole::Read, 4096, 32, Pattern::Random),
            Workload::SeqRead1m => io(FileRole::Read, 1 << 20, seq_qd, Pattern::Sequential),
            Workload::SeqWrite1m => io(FileRole::Write, 1 << 20, seq_qd, Pattern::Sequential),
            Workload::RandWrite4kQd32 => io(FileRole::Write, 4096, 32, Pattern::Random),
            Workload::CreateStatUnlink => Kind::CreateStatUnlink,
            Workload::Readdir10k => Kind::Readdir,
            Workload::TreeStat | Workload::TreeStatRlimit1024 => Kind::Tree(TreeOp::Stat),
            Workload::TreeCreate => Kind::Tree(TreeOp::Create),
            Workload::TreeRemove => Kind::Tree(TreeOp::Remove),
            Workload::InodeMemory => Kind::Tree(TreeOp::HoldInodes),
        }
    }

    /// The tree workload's operation, `None` for the other workloads.
    pub fn tree_op(self) -> Option<TreeOp> {
        match self.kind(1) {
            Kind::Tree(op) => Some(op),
            _ => None,
        }
    }

    /// Whether this is one of the tree workloads (virtio-fs and native
    /// only, one pass per run instead of a timed loop).
    pub fn is_tree(self) -> bool {
        self.tree_op().is_some()
    }

    /// The `RLIMIT_NOFILE` (soft and hard) the daemon runs under, for the
    /// workloads that hold more inodes than that.
    pub fn fd_limit(self) -> Option<u64> {
        matches!(self, Workload::TreeStatRlimit1024 | Workload::InodeMemory).then_some(FD_LIMIT)
    }

    /// Whether MiB/s means anything for this workload (I/O workloads only;
    /// metadata workloads report 0).
    pub fn moves_data(self) -> bool {
        matches!(self.kind(1), Kind::Io(_))
    }

    /// What `ops_per_s` counts.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::CreateStatUnlink => "create+stat+close+unlink",
            Workload::Readdir10k => "directory entries",
            Workload::TreeStat
            | Workload::TreeCreate
            | Workload::TreeRemove
            | Workload::TreeStatRlimit1024 => "entries",
            Workload::InodeMemory => "inodes",
            _ => "requests",
        }
    }
}

/// splitmix64: a fast, well-mixed 64-bit sequence (also the file pattern).
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The offsets of an I/O workload, the same sequence for every server.
#[derive(Debug, Clone)]
pub struct Offsets {
    pattern: Pattern,
    len: u64,
    blocks: u64,
    n: u64,
    seed: u64,
}

impl Offsets {
    /// Offsets for `spec` inside a file of `file_size` bytes (at least one
    /// request long), seeded by `seed`.
    pub fn new(spec: &IoSpec, file_size: u64, seed: u64) -> Offsets {
        let len = u64::from(spec.len);
        Offsets {
            pattern: spec.pattern,
            len,
            blocks: (file_size / len).max(1),
            n: 0,
            seed,
        }
    }

    /// The next offset.
    pub fn next_offset(&mut self) -> u64 {
        let n = self.n;
        self.n += 1;
        let block = match self.pattern {
            Pattern::Sequential => n % self.blocks,
            Pattern::Random => splitmix64(self.seed ^ splitmix64(n)) % self.blocks,
        };
        block * self.len
    }
}

/// The data file's 8-byte word at byte offset `8 * k`: never zero, so every
/// read copies real data, and position-dependent, so a read from the wrong
/// offset is caught.
pub fn pattern_word(k: u64) -> u64 {
    splitmix64(k) | 0x0101_0101_0101_0101
}

/// Fills `buf` with the pattern as it lies at byte `offset` (a multiple of 8)
/// of the data file.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    debug_assert_eq!(offset % 8, 0);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = pattern_word(offset / 8 + i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Whether `first8`, the first bytes read at `offset`, are the data file's.
pub fn pattern_matches(first8: &[u8], offset: u64) -> bool {
    first8.len() >= 8 && first8[..8] == pattern_word(offset / 8).to_le_bytes()
}

/// The buffer size of one READDIR: one page, as Linux 6.1's FUSE sends.
pub const READDIR_BUF: u32 = 4096;

/// The byte the write workloads write (so written blocks differ from the
/// data file's pattern).
pub const WRITE_BYTE: u8 = 0xa5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_the_issues() {
        let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
        assert_eq!(
            names,
            [
                "randread-4k-qd1",
                "randread-4k-qd32",
                "seqread-1m",
                "seqwrite-1m",
                "randwrite-4k-qd32",
                "create-stat-unlink",
                "readdir-10k",
                "tree-stat",
                "tree-create",
                "tree-remove",
                "tree-stat-rlimit1024",
                "inode-memory"
            ]
        );
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
        assert_eq!(Workload::from_name("randread"), None);
        let trees: Vec<_> = Workload::ALL.into_iter().filter(|w| w.is_tree()).collect();
        assert_eq!(trees.len(), 5);
        assert!(trees.iter().all(|w| !w.moves_data()));
        let limited: Vec<_> = Workload::ALL
            .into_iter()
            .filter(|w| w.fd_limit().is_some())
            .collect();
        assert_eq!(
            limited,
            [Workload::TreeStatRlimit1024, Workload::InodeMemory]
        );
    }

    #[test]
    fn offsets_are_aligned_inside_the_file_and_repeatable() {
        let spec = IoSpec {
            role: FileRole::Read,
            len: 4096,
            qd: 32,
            pattern: Pattern::Random,
        };
        let size = 1 << 20;
        let a: Vec<u64> = {
            let mut o = Offsets::new(&spec, size, 7);
            (0..1000).map(|_| o.next_offset()).collect()
        };
        let mut o = Offsets::new(&spec, size, 7);
        let b: Vec<u64> = (0..1000).map(|_| o.next_offset()).collect();
        assert_eq!(a, b, "the same sequence for every server");
        assert!(a.iter().all(|&x| x % 4096 == 0 && x + 4096 <= size));
        let distinct: std::collections::HashSet<_> = (0..4000).map(|_| o.next_offset()).collect();
        assert_eq!(distinct.len(), 256, "5000 draws cover all 256 blocks");

        let seq = IoSpec {
            pattern: Pattern::Sequential,
            len: 1 << 18,
            ..spec
        };
        let mut o = Offsets::new(&seq, size, 0);
        let s: Vec<u64> = (0..6).map(|_| o.next_offset()).collect();
        assert_eq!(s, [0, 1 << 18, 2 << 18, 3 << 18, 0, 1 << 18]);
    }

    #[test]
    fn the_pattern_is_position_dependent_and_never_zero() {
        let mut buf = vec![0u8; 64];
        fill_pattern(&mut buf, 4096);
        assert!(pattern_matches(&buf, 4096));
        assert!(!pattern_matches(&buf, 0));
        assert!(buf.iter().all(|&b| b != 0));
        let mut odd = vec![0u8; 12];
        fill_pattern(&mut odd, 8);
        assert_eq!(&odd[..8], &pattern_word(1).to_le_bytes());
        assert_eq!(&odd[8..], &pattern_word(2).to_le_bytes()[..4]);
    }
}
