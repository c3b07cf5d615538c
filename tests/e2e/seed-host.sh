#!/usr/bin/env bash
# Seed a share directory (before the guest boots) with files of known content
# and metadata, and describe them in DIR/seed/MANIFEST (format: see
# tests/e2e/guest/lib.sh). The guest verifies them with that manifest, and
# verify-host.sh re-checks them afterwards (the guest must not change them).
#
# Usage: tests/e2e/seed-host.sh DIR     (run as root: it chowns files)
set -euo pipefail

dir=${1:?usage: seed-host.sh DIR}
[[ -d $dir ]] || { echo "seed-host: $dir is not a directory" >&2; exit 2; }
cd "$dir"
[[ ! -e seed ]] || { echo "seed-host: $dir/seed already exists" >&2; exit 2; }

manifest=seed/MANIFEST
records=0
rec() {
    printf '%s\n' "$*" >>"$manifest"
    records=$((records + 1))
}
sha() { sha256sum "$@" | cut -d' ' -f1; }
rec_file() { rec file "$(stat -L -c %s "$1")" "$(sha "$1")" "$1"; }
rec_entries() {
    rec entries "$(find "$1" -mindepth 1 -maxdepth 1 | wc -l)" \
        "$(find "$1" -mindepth 1 -maxdepth 1 -printf '%f\n' | LC_ALL=C sort | sha)" "$1"
}

mkdir -p seed
: >"$manifest"

# Random data.
head -c $((4 * 1024 * 1024)) /dev/urandom >seed/random.bin
head -c 1000003 /dev/urandom >seed/odd-size.bin
rec_file seed/random.bin
rec_file seed/odd-size.bin
: >seed/empty
rec_file seed/empty
for i in $(seq 1 200); do echo "line $i of a known text file"; done >seed/text.txt
rec_file seed/text.txt
rec lines 200 "$(LC_ALL=C sort seed/text.txt | sha)" seed/text.txt

# A directory tree.
for d in a a/b a/b/c x x/y; do mkdir -p "seed/tree/$d"; done
for d in a a/b a/b/c x x/y; do
    for i in 1 2 3; do echo "seed tree $d file $i" >"seed/tree/$d/f$i.txt"; done
done
for d in a a/b a/b/c x x/y; do
    rec_entries "seed/tree/$d"
    rec_file "seed/tree/$d/f2.txt"
done
rec_entries seed/tree

# Symlinks: relative to a file, to a directory, absolute dangling.
ln -s random.bin seed/link-rel
ln -s tree/a/b seed/link-dir
ln -s /nonexistent/absolute/target seed/link-abs-dangling
rec link random.bin seed/link-rel
rec type symlink seed/link-rel
rec_file seed/link-rel
rec link tree/a/b seed/link-dir
rec_file seed/link-dir/c/f1.txt
rec link /nonexistent/absolute/target seed/link-abs-dangling
rec type symlink seed/link-abs-dangling

# Hard links.
echo "hard linked content" >seed/hard-a
ln seed/hard-a seed/hard-b
rec hardlink seed/hard-a seed/hard-b
rec nlink 2 seed/hard-a
rec_file seed/hard-b

# Ownership and modes.
echo "owned by 1234:5678" >seed/owned
chown 1234:5678 seed/owned
chmod 0640 seed/owned
rec owner 1234:5678 seed/owned
rec mode 640 seed/owned
echo "setuid file" >seed/setuid
chmod 4755 seed/setuid
rec mode 4755 seed/setuid
mkdir seed/sticky
chmod 1777 seed/sticky
rec mode 1777 seed/sticky
rec type dir seed/sticky

# Timestamps (with nanoseconds).
echo "old file" >seed/old-mtime
touch -m -d '2001-02-03 04:05:06.123456789 UTC' seed/old-mtime
rec mtime 981173106.123456789 seed/old-mtime
mkdir seed/old-dir
touch -m -d '1999-12-31 23:59:59 UTC' seed/old-dir
rec mtime 946684799 seed/old-dir

# Names that need care.
echo "spaces" >"seed/name with spaces.txt"
echo "unicode" >"seed/ünïcødé-名前.txt"
echo "dash" >seed/-leading-dash
rec_file "seed/name with spaces.txt"
rec_file "seed/ünïcødé-名前.txt"
rec_file seed/-leading-dash

# A sparse file: 64 MiB with one 4 KiB block of data at 32 MiB.
truncate -s $((64 * 1024 * 1024)) seed/sparse.img
head -c 4096 /dev/urandom >seed/.block
dd if=seed/.block of=seed/sparse.img bs=4096 seek=8192 conv=notrunc status=none
rec sparse $((64 * 1024 * 1024)) $((1024 * 1024)) seed/sparse.img
rec range $((8192 * 4096)) 4096 "$(sha seed/.block)" seed/sparse.img
rec range 4096 4096 "$(head -c 4096 /dev/zero | sha)" seed/sparse.img
rm seed/.block

# A FIFO.
mkfifo -m 0600 seed/fifo
rec type fifo seed/fifo
rec mode 600 seed/fifo

rec_entries seed
printf 'end %d\n' "$records" >>"$manifest"
echo "seed-host: seeded $dir/seed ($records records)"
