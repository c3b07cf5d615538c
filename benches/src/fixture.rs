//! The scratch directory every server shares: the data file, the file the
//! write workloads overwrite, the 10,000-entry directory and the directory
//! `create-stat-unlink` works in. Made once per run, on the host, before any
//! server starts; removed at the end. The trees of the tree workloads are
//! made on first use ([`Fixture::add_tree`], [`Fixture::add_inodes`]);
//! `tree-create` works in [`MK_DIR`] and `tree-remove` in [`RM_DIR`], both
//! emptied before every run.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::tree::{InodeSet, Tree};
use crate::workload::{fill_pattern, READDIR_ENTRIES};

/// The file the read workloads read.
pub const DATA: &str = "data";
/// The file the write workloads overwrite.
pub const WDATA: &str = "wdata";
/// The directory `readdir-10k` lists.
pub const DIR10K: &str = "dir10k";
/// The directory `create-stat-unlink` creates in.
pub const CREATE_DIR: &str = "create";
/// The tree `tree-stat` and `tree-stat-rlimit1024` walk.
pub const STAT_TREE: &str = "tree";
/// The directory `tree-create` makes its tree in.
pub const MK_DIR: &str = "mk";
/// The directory holding the tree `tree-remove` removes.
pub const RM_DIR: &str = "rm";
/// The name of the tree `tree-create` makes and `tree-remove` removes.
pub const SMALL_TREE: &str = "node_modules";
/// The files `inode-memory` holds.
pub const INODES: &str = "inodes";

/// Why the scratch directory could not be made or refreshed.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FixtureError + 'a {
    move |source| FixtureError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The scratch directory and the sockets' directory.
pub struct Fixture {
    scratch: tempfile::TempDir,
    sockets: tempfile::TempDir,
    /// The shared directory (`scratch/share`).
    pub share: PathBuf,
    /// Size of `data` and `wdata`.
    pub file_size: u64,
}

impl Fixture {
    /// Makes a scratch directory under `parent` with files of `file_size`
    /// bytes (a multiple of 1 MiB), and a directory for sockets under the
    /// system's temporary directory (socket paths must stay short).
    pub fn create(parent: &Path, file_size: u64) -> Result<Fixture, FixtureError> {
        let scratch = tempfile::Builder::new()
            .prefix("fsbench.")
            .tempdir_in(parent)
            .map_err(io_err("cannot create a scratch directory in", parent))?;
        let tmp = std::env::temp_dir();
        let sockets = tempfile::Builder::new()
            .prefix("fsbench-sock.")
            .tempdir_in(&tmp)
            .map_err(io_err("cannot create a socket directory in", &tmp))?;
        let share = scratch.path().join("share");
        fs::create_dir(&share).map_err(io_err("cannot create", &share))?;
        let f = Fixture {
            scratch,
            sockets,
            share,
            file_size,
        };
        f.write_pattern_file(DATA)?;
        f.write_pattern_file(WDATA)?;
        let dir = f.share.join(DIR10K);
        fs::create_dir(&dir).map_err(io_err("cannot create", &dir))?;
        for i in 0..READDIR_ENTRIES {
            let p = dir.join(format!("entry-{i:05}"));
            File::create(&p).map_err(io_err("cannot create", &p))?;
        }
        for d in [CREATE_DIR, MK_DIR, RM_DIR] {
            let c = f.share.join(d);
            fs::create_dir(&c).map_err(io_err("cannot create", &c))?;
        }
        let sync = f.share.join(WDATA);
        File::open(&sync)
            .and_then(|f| f.sync_all())
            .map_err(io_err("cannot fsync", &sync))?;
        Ok(f)
    }

    fn write_pattern_file(&self, name: &str) -> Result<(), FixtureError> {
        let path = self.share.join(name);
        let mut f = File::create(&path).map_err(io_err("cannot create", &path))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < self.file_size {
            let n = (self.file_size - off).min(buf.len() as u64) as usize;
            fill_pattern(&mut buf[..n], off);
            f.write_all(&buf[..n])
                .map_err(io_err("cannot write", &path))?;
            off += n as u64;
        }
        Ok(())
    }

    /// The scratch directory (parent of the share).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A fresh socket path named `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        let p = self.sockets.path().join(name);
        let _ = fs::remove_file(&p);
        p
    }

    /// Puts every server on the same footing before a run: the data file
    /// read whole (in the page cache), the write file's dirty pages written
    /// back, and the create directory emptied (a run that failed half-way
    /// may have left a file).
    pub fn refresh(&self) -> Result<(), FixtureError> {
        let data = self.share.join(DATA);
        let mut f = File::open(&data).map_err(io_err("cannot open", &data))?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).map_err(io_err("cannot read", &data))? > 0 {}
        let w = self.share.join(WDATA);
        let wf = OpenOptions::new()
            .write(true)
            .open(&w)
            .map_err(io_err("cannot open", &w))?;
        wf.sync_all().map_err(io_err("cannot fsync", &w))?;
        // Read the write file too, so a write run starts from cached, clean
        // pages on every server.
        let mut rf = File::open(&w).map_err(io_err("cannot open", &w))?;
        while rf.read(&mut buf).map_err(io_err("cannot read", &w))? > 0 {}
        let c = self.share.join(CREATE_DIR);
        for e in fs::read_dir(&c).map_err(io_err("cannot list", &c))? {
            let p = e.map_err(io_err("cannot list", &c))?.path();
            fs::remove_file(&p).map_err(io_err("cannot remove", &p))?;
        }
        self.empty(MK_DIR)?;
        self.empty(RM_DIR)
    }

    /// Removes everything in the share's directory `dir`.
    pub fn empty(&self, dir: &str) -> Result<(), FixtureError> {
        let c = self.share.join(dir);
        for e in fs::read_dir(&c).map_err(io_err("cannot list", &c))? {
            let e = e.map_err(io_err("cannot list", &c))?;
            let p = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            }
            .map_err(io_err("cannot remove", &p))?;
        }
        Ok(())
    }

    /// Makes `tree` in the share's directory `dir` (`""`: the share).
    pub fn add_tree(&self, dir: &str, tree: &Tree) -> Result<(), FixtureError> {
        let parent = self.share.join(dir);
        tree.write_under(&parent)
            .map_err(io_err("cannot make a tree in", &parent))
    }

    /// Makes the inode set `set` in the share.
    pub fn add_inodes(&self, set: &InodeSet) -> Result<(), FixtureError> {
        set.write_under(&self.share)
            .map_err(io_err("cannot make the inode set in", &self.share))
    }

    /// The scratch filesystem's type, as `/proc/self/mountinfo` names the
    /// mount holding it (for instance `ext4` or `tmpfs`).
    pub fn fs_type(&self) -> String {
        fs_type_of(self.scratch.path()).unwrap_or_else(|| "unknown".into())
    }
}

/// The type of the filesystem mounted at the longest mount point that is a
/// prefix of `path` (canonicalized).
pub fn fs_type_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options... - fstype source
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mp), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else {
            continue;
        };
        let Some(ty) = fields.get(dash + 1) else {
            continue;
        };
        let mp = mp.replace("\\040", " ");
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
            best = Some((mp.len(), ty.to_string()));
        }
    }
    best.map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::pattern_matches;

    #[test]
    fn the_fixture_has_the_files_the_workloads_use() {
        let parent = tempfile::tempdir().unwrap();
        let f = Fixture::create(parent.path(), 2 << 20).unwrap();
        let data = fs::read(f.share.join(DATA)).unwrap();
        assert_eq!(data.len(), 2 << 20);
        assert!(pattern_matches(&data[1 << 20..], 1 << 20));
        assert_eq!(
            fs::read_dir(f.share.join(DIR10K)).unwrap().count(),
            READDIR_ENTRIES
        );
        fs::write(f.share.join(CREATE_DIR).join("left-over"), b"").unwrap();
        let tree = Tree::generate(SMALL_TREE, 50, 1);
        f.add_tree(MK_DIR, &tree).unwrap();
        f.add_tree(RM_DIR, &tree).unwrap();
        fs::write(f.share.join(RM_DIR).join("file"), b"").unwrap();
        f.refresh().unwrap();
        for d in [CREATE_DIR, MK_DIR, RM_DIR] {
            assert_eq!(fs::read_dir(f.share.join(d)).unwrap().count(), 0, "{d}");
        }
        f.add_tree("", &Tree::generate(STAT_TREE, 20, 1)).unwrap();
        f.refresh().unwrap();
        assert!(f.share.join(STAT_TREE).is_dir(), "the stat tree stays");
        assert!(f.socket("x.sock").starts_with(std::env::temp_dir()));
        assert_ne!(f.fs_type(), "unknown");
    }
}
