#!/usr/bin/env bash
# Self-test of verify-host.sh: proves that each kind of check can fail.
#
# Usage: tests/e2e/verify-selftest.sh DIR
#   DIR: a share on which the guest workload ran and verify-host.sh passed.
#   DIR is not modified: a copy is corrupted in one place per check kind, and
#   verify-host.sh must report a FAIL for each corruption.
# Prints "PASS/FAIL: detects ..." per corruption and a final
# "verify-selftest: N passed, M failed" line; exits 1 on any failure.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=${1:?usage: verify-selftest.sh DIR}
[[ -f $src/guest-manifest ]] || { echo "verify-selftest: $src has no guest-manifest" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/verify-selftest.XXXXXX")
trap 'rm -rf "$work"' EXIT
copy=$work/share
cp -a --sparse=always "$src" "$copy"

passed=0
failed=0
out=$work/verify.out
# The baseline copy must pass, or the detections below prove nothing.
if "$script_dir/verify-host.sh" "$copy" >"$out"; then
    passed=$((passed + 1)); echo "PASS: unmodified copy verifies"
else
    failed=$((failed + 1)); echo "FAIL: unmodified copy verifies"; grep '^FAIL' "$out" | head
fi

cd "$copy"
# One corruption per check kind; each line: "expected FAIL prefix|command".
corruptions=(
    "file work/big/dd-1M.bin|printf 'X' | dd of=work/big/dd-1M.bin bs=1 seek=1000 conv=notrunc status=none"
    "file seed/text.txt|sed -i 's/line 7 /line 8 /' seed/text.txt"
    "range work/sparse/s1|head -c 4096 /dev/urandom | dd of=work/sparse/s1 bs=4096 seek=32768 conv=notrunc status=none"
    "mode work/perm/f4755|chmod 0755 work/perm/f4755"
    "owner work/perm/owned|chown 1234:5679 work/perm/owned"
    "mtime work/ts/a|touch -m -d '2001-02-03 04:05:07 UTC' work/ts/a"
    "atime work/ts/atime|touch -a -d '2002-03-04 05:06:08 UTC' work/ts/atime"
    "newer work/ts/written|touch -m -d '2000-01-01 UTC' work/ts/written"
    "type work/sym/abs|rm work/sym/abs && echo x >work/sym/abs"
    "link work/sym/dangling|ln -sfn does-not-exist-either work/sym/dangling"
    "hardlink work/links/l1|rm work/links/l1 && cp work/links/orig work/links/l1"
    "nlink work/links/q|ln work/links/q work/links/q2"
    "sparse work/sparse/s2|fallocate -o 0 -l 2M work/sparse/s2"
    "entries work/bigdir|touch work/bigdir/extra"
    "lines work/par/append|sed -i '\$d' work/par/append"
    "absent work/tree/rmr|mkdir work/tree/rmr"
    "no .fuse_hidden|touch work/.fuse_hidden000a"
    "guest workload finished|rm guest-status"
)
for c in "${corruptions[@]}"; do
    sh -c "${c#*|}" || { echo "verify-selftest: corruption failed: ${c#*|}" >&2; exit 2; }
done
"$script_dir/verify-host.sh" "$copy" >"$out" || true
for c in "${corruptions[@]}"; do
    what=${c%%|*}
    if grep -q "^FAIL: $what" "$out"; then
        passed=$((passed + 1)); echo "PASS: detects corrupted $what"
    else
        failed=$((failed + 1)); echo "FAIL: does not detect corrupted $what"
    fi
done

# A truncated manifest: records of one kind and the end trailer missing.
grep -v -e '^atime ' -e '^end ' guest-manifest >guest-manifest.new
mv guest-manifest.new guest-manifest
"$script_dir/verify-host.sh" "$copy" >"$out" || true
for what in "manifest guest-manifest complete" "guest manifest covers all record kinds"; do
    if grep -q "^FAIL: $what" "$out"; then
        passed=$((passed + 1)); echo "PASS: detects truncated manifest ($what)"
    else
        failed=$((failed + 1)); echo "FAIL: does not detect truncated manifest ($what)"
    fi
done

echo "verify-selftest: $passed passed, $failed failed"
((failed == 0))
