#!/usr/bin/env bash
# Tests guest/build-kernel.sh's patch series mechanism with --prepare-only
# (unpack, patch, configure; nothing is built or cached):
#   1. this directory's trivial patch applies, and `make kernelrelease` then
#      ends in "-patchtest";
#   2. a patch without a "Why:" line in its header is refused before any
#      work, naming the patch;
#   3. a patch that does not apply fails the build, naming the patch;
#   4. the shipped series (guest/patches/) applies.
# Ends with "kernel-patches: N passed, M failed".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=$here/../../guest/build-kernel.sh
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The trivial patch.
if release=$("$build" --prepare-only --patches "$here" 2>"$work/ok.err" | tail -n1) &&
    [[ $release == *-patchtest ]]; then
    pass "the test patch applies: kernel release $release"
else
    fail "the test patch applies and sets the release (got '${release:-}'; $(tail -n 3 "$work/ok.err" | tr '\n' ' '))"
fi

# 2. No reason given.
mkdir "$work/no-why"
grep -v '^Why:' "$here/0001-test-localversion.patch" >"$work/no-why/0001-no-reason.patch"
if "$build" --prepare-only --patches "$work/no-why" >/dev/null 2>"$work/no-why.err"; then
    fail "a patch without a Why: line is refused"
elif grep -q '0001-no-reason.patch: no "Why: ..." line' "$work/no-why.err"; then
    pass "a patch without a Why: line is refused, by name"
else
    fail "a patch without a Why: line is refused by name ($(tail -n 2 "$work/no-why.err" | tr '\n' ' '))"
fi

# 3. A patch that does not apply: it changes a line the source lacks.
mkdir "$work/bad"
cat >"$work/bad/0001-does-not-apply.patch" <<'PATCH'
Why: a test of a patch that cannot apply.
---
diff --git a/Makefile b/Makefile
--- a/Makefile
+++ b/Makefile
@@ -1,1 +1,1 @@
-# this line is not in any kernel's Makefile
+# nor is this one
PATCH
if "$build" --prepare-only --patches "$work/bad" >/dev/null 2>"$work/bad.err"; then
    fail "a patch that does not apply fails the build"
elif grep -q '0001-does-not-apply.patch does not apply' "$work/bad.err"; then
    pass "a patch that does not apply fails the build, by name"
else
    fail "a patch that does not apply fails by name ($(tail -n 2 "$work/bad.err" | tr '\n' ' '))"
fi

# 4. The shipped series.
if ! compgen -G "$here/../../guest/patches/*.patch" >/dev/null; then
    echo "kernel-patches: the shipped series (guest/patches/) is empty; nothing more to apply"
elif release=$("$build" --prepare-only 2>"$work/shipped.err" | tail -n1); then
    pass "the shipped series (guest/patches/) applies: kernel release $release"
else
    fail "the shipped series applies ($(tail -n 3 "$work/shipped.err" | tr '\n' ' '))"
fi

echo "kernel-patches: $passed passed, $failed failed"
((failed == 0))
