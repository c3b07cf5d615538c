//! The trees of the tree workloads, generated the same way in every run
//! from a seed: a Linux-source-like tree of nested directories and small
//! files ([`Tree`]), and a flat set of empty files in directories of 1,000
//! ([`InodeSet`]).
//!
//! A [`Tree`] has about one directory per [`FILES_PER_DIR`] files. Each new
//! directory goes under a directory picked at random among the earlier
//! ones (a random recursive tree, so a few directories have tens of
//! subdirectories and most have none), at most [`MAX_DEPTH`] levels below
//! the root. Files go into random directories, one in eight into the first
//! sixteenth of them (Linux's `drivers/`, `arch/`: a few directories hold
//! many files), and are 0 to 8 KiB, most of them small. Names are 2 to 11
//! letters and a unique base-36 suffix, files with a source-like extension
//! (4 to 21 characters).

use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::workload::{fill_pattern, splitmix64};

/// Directories of a tree go at most this many levels below its root.
pub const MAX_DEPTH: u32 = 5;
/// Files per directory, on average.
pub const FILES_PER_DIR: usize = 14;
/// The largest file of a tree.
pub const MAX_FILE_SIZE: u32 = 8192;
/// Files per directory of an [`InodeSet`].
pub const INODES_PER_DIR: usize = 1000;

/// A directory of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDir {
    /// Index of the parent directory (the root's is 0, itself).
    pub parent: usize,
    /// The name in its parent (the root's: the tree's name).
    pub name: String,
    /// Levels below the root (the root: 0).
    pub depth: u32,
}

/// A file of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Index of its directory.
    pub dir: usize,
    /// The name in its directory.
    pub name: String,
    /// Bytes (the first `size` bytes of [`contents`]).
    pub size: u32,
}

/// A tree of directories and small files; `dirs[0]` is the root, every
/// directory comes after its parent, and the files are grouped by
/// directory in directory order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The directories, the root first.
    pub dirs: Vec<TreeDir>,
    /// The files, grouped by directory.
    pub files: Vec<TreeFile>,
}

/// A few letters out of `r` (at least `min`, fewer than `max`), then the
/// index in base 36 after `sep`: unique among names with the same `sep`.
fn name(r: u64, min: u64, max: u64, sep: char, index: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let len = min + r % (max - min);
    let mut s = String::new();
    let mut x = splitmix64(r);
    for _ in 0..len {
        s.push(char::from(LETTERS[(x % 26) as usize]));
        x = splitmix64(x);
    }
    s.push(sep);
    let mut i = index;
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit((i % 36) as u32, 36).unwrap_or('0'));
        i /= 36;
        if i == 0 {
            break;
        }
    }
    s.extend(digits.iter().rev());
    s
}

/// A source-like extension out of `r`.
fn extension(r: u64) -> &'static str {
    match r % 20 {
        0..=8 => ".c",
        9..=14 => ".h",
        15 => ".S",
        16 => ".rst",
        17 => ".yaml",
        18 => ".dts",
        _ => "",
    }
}

impl Tree {
    /// The tree named `root` with `files` files, the same for the same
    /// arguments.
    pub fn generate(root: &str, files: usize, seed: u64) -> Tree {
        let mut n = 0u64;
        let mut rand = || {
            n += 1;
            splitmix64(seed ^ splitmix64(n))
        };
        let ndirs = files.div_ceil(FILES_PER_DIR).max(1);
        let mut dirs = vec![TreeDir {
            parent: 0,
            name: root.to_string(),
            depth: 0,
        }];
        for i in 1..ndirs {
            let mut parent = (rand() % i as u64) as usize;
            while dirs[parent].depth >= MAX_DEPTH {
                parent = dirs[parent].parent;
            }
            let r = rand();
            dirs.push(TreeDir {
                parent,
                name: name(r, 2, 12, '_', i),
                depth: dirs[parent].depth + 1,
            });
        }
        let hot = (ndirs / 16).max(1) as u64;
        let mut out: Vec<TreeFile> = (0..files)
            .map(|i| {
                let (a, b, c) = (rand(), rand(), rand());
                let dir = if a % 8 == 0 {
                    b % hot
                } else {
                    b % ndirs as u64
                } as usize;
                // The product of two uniform draws: most files small.
                let size = if c % 32 == 0 {
                    0
                } else {
                    let (u, v) = ((c >> 8) % 8192 + 1, (c >> 24) % 8192 + 1);
                    (u * v / 8192) as u32
                };
                TreeFile {
                    dir,
                    name: name(a >> 3, 2, 12, '-', i) + extension(c >> 40),
                    size: size.min(MAX_FILE_SIZE),
                }
            })
            .collect();
        out.sort_by_key(|f| f.dir);
        Tree { dirs, files: out }
    }

    /// The tree's name (its root directory's).
    pub fn root(&self) -> &str {
        &self.dirs[0].name
    }

    /// Directories and files, the root included.
    pub fn entries(&self) -> u64 {
        (self.dirs.len() + self.files.len()) as u64
    }

    /// Bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| u64::from(f.size)).sum()
    }

    /// The deepest directory's depth.
    pub fn depth(&self) -> u32 {
        self.dirs.iter().map(|d| d.depth).max().unwrap_or(0)
    }

    /// The files of directory `dir`, as a range of [`Tree::files`].
    pub fn files_of(&self, dir: usize) -> Range<usize> {
        let start = self.files.partition_point(|f| f.dir < dir);
        let end = self.files.partition_point(|f| f.dir <= dir);
        start..end
    }

    /// Directory `dir`'s path from the tree's parent (`root/a/b`).
    pub fn path(&self, dir: usize) -> PathBuf {
        let mut parts = vec![dir];
        let mut d = dir;
        while d != 0 {
            d = self.dirs[d].parent;
            parts.push(d);
        }
        parts
            .iter()
            .rev()
            .map(|&i| self.dirs[i].name.as_str())
            .collect()
    }

    /// Makes the tree in `parent` (which must exist and hold no entry of
    /// the tree's name).
    pub fn write_under(&self, parent: &Path) -> io::Result<()> {
        let data = contents();
        let mut paths: Vec<PathBuf> = Vec::with_capacity(self.dirs.len());
        for (i, d) in self.dirs.iter().enumerate() {
            let p = if i == 0 {
                parent.join(&d.name)
            } else {
                paths[d.parent].join(&d.name)
            };
            fs::create_dir(&p)?;
            paths.push(p);
        }
        for f in &self.files {
            fs::write(paths[f.dir].join(&f.name), &data[..f.size as usize])?;
        }
        Ok(())
    }
}

/// The bytes of every tree file: a file of `n` bytes holds the first `n`.
pub fn contents() -> Vec<u8> {
    let mut v = vec![0u8; MAX_FILE_SIZE as usize];
    fill_pattern(&mut v, 0);
    v
}

/// `count` empty files in directories of [`INODES_PER_DIR`]: `root/dDDDD/
/// iNNNNNNN`, for `inode-memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeSet {
    /// The directory holding them, in the share.
    pub root: &'static str,
    /// Files.
    pub count: usize,
}

impl InodeSet {
    /// Directories under the root.
    pub fn dirs(&self) -> usize {
        self.count.div_ceil(INODES_PER_DIR)
    }

    /// Directory `d`'s name.
    pub fn dir_name(d: usize) -> String {
        format!("d{d:04}")
    }

    /// The name of file `i` (in directory `i / INODES_PER_DIR`).
    pub fn file_name(i: usize) -> String {
        format!("i{i:07}")
    }

    /// The files of directory `d`.
    pub fn files_of(&self, d: usize) -> Range<usize> {
        d * INODES_PER_DIR..((d + 1) * INODES_PER_DIR).min(self.count)
    }

    /// Makes the set in `share`.
    pub fn write_under(&self, share: &Path) -> io::Result<()> {
        let root = share.join(self.root);
        fs::create_dir(&root)?;
        for d in 0..self.dirs() {
            let dir = root.join(Self::dir_name(d));
            fs::create_dir(&dir)?;
            for i in self.files_of(d) {
                fs::File::create(dir.join(Self::file_name(i)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Entries under `p`, recursively, and the bytes of its files.
    fn count(p: &Path) -> (u64, u64) {
        let mut n = (0, 0);
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            n.0 += 1;
            if m.is_dir() {
                let (a, b) = count(&e.path());
                n = (n.0 + a, n.1 + b);
            } else {
                n.1 += m.len();
            }
        }
        n
    }

    #[test]
    fn trees_are_deterministic_and_shaped_like_a_source_tree() {
        let a = Tree::generate("t", 10_000, 7);
        assert_eq!(a, Tree::generate("t", 10_000, 7), "same seed, same tree");
        assert_ne!(a, Tree::generate("t", 10_000, 8));
        assert_eq!(a.files.len(), 10_000);
        assert_eq!(a.dirs.len(), 10_000usize.div_ceil(FILES_PER_DIR));
        assert_eq!(a.entries(), (a.dirs.len() + 10_000) as u64);
        assert_eq!(a.root(), "t");
        // Nested, but not deeper than the cap.
        assert!((3..=MAX_DEPTH).contains(&a.depth()), "{}", a.depth());
        for (i, d) in a.dirs.iter().enumerate().skip(1) {
            assert!(d.parent < i, "parents come first");
            assert_eq!(d.depth, a.dirs[d.parent].depth + 1);
        }
        // Fan-out from none to tens.
        let mut sub = vec![0usize; a.dirs.len()];
        for d in &a.dirs[1..] {
            sub[d.parent] += 1;
        }
        let max_sub = *sub.iter().max().unwrap();
        assert!((5..=200).contains(&max_sub), "{max_sub}");
        assert!(sub.iter().filter(|&&s| s == 0).count() > a.dirs.len() / 3);
        // Small files, some empty, none over 8 KiB, grouped by directory.
        assert!(a.files.iter().all(|f| f.size <= MAX_FILE_SIZE));
        assert!(a.files.iter().any(|f| f.size == 0));
        let mean = a.bytes() / 10_000;
        assert!((1000..4096).contains(&mean), "{mean}");
        assert!(a.files.windows(2).all(|w| w[0].dir <= w[1].dir));
        let per_dir: usize = (0..a.dirs.len()).map(|d| a.files_of(d).len()).sum();
        assert_eq!(per_dir, 10_000);
        // Names unique within each directory.
        let mut seen = HashSet::new();
        for d in &a.dirs[1..] {
            assert!(seen.insert((d.parent, d.name.clone())));
        }
        for f in &a.files {
            assert!(seen.insert((f.dir, f.name.clone())), "{}", f.name);
        }
        assert!(a.files.iter().all(|f| (3..=22).contains(&f.name.len())));
        // A tiny tree is still a tree.
        let one = Tree::generate("x", 1, 1);
        assert_eq!((one.dirs.len(), one.files.len()), (1, 1));
        assert_eq!(Tree::generate("x", 0, 1).entries(), 1);
    }

    #[test]
    fn a_tree_is_written_as_generated() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::generate("root", 500, 3);
        tree.write_under(t.path()).unwrap();
        let (entries, bytes) = count(&t.path().join("root"));
        assert_eq!(entries, tree.entries() - 1, "everything below the root");
        assert_eq!(bytes, tree.bytes());
        let f = &tree.files[tree.files.len() / 2];
        let got = fs::read(t.path().join(tree.path(f.dir)).join(&f.name)).unwrap();
        assert_eq!(got, contents()[..f.size as usize]);
        assert!(tree.write_under(t.path()).is_err(), "never over a tree");
    }

    #[test]
    fn an_inode_set_has_its_count_in_directories_of_1000() {
        let t = tempfile::tempdir().unwrap();
        let set = InodeSet {
            root: "inodes",
            count: 2500,
        };
        assert_eq!(set.dirs(), 3);
        assert_eq!(set.files_of(2), 2000..2500);
        set.write_under(t.path()).unwrap();
        assert_eq!(count(&t.path().join("inodes")), (2503, 0));
        assert!(t.path().join("inodes/d0001/i0001999").exists());
    }
}
