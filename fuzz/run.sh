#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a fixed time, confined.
#
#   fuzz/run.sh [--time SECONDS] [--build-only] [TARGET...]   (default: all)
#   fuzz/run.sh --merge-seeds DIR [TARGET...]
#
# Each target starts from its checked-in seeds (fuzz/seeds/TARGET) and its
# working corpus (fuzz/corpus/TARGET, not checked in; new inputs land
# there). A crash, a timeout or an out-of-memory fails the run; the input
# that did it is kept in fuzz/artifacts/TARGET/.
#
# Confinement: as root, each fuzzer runs in a throwaway mount namespace
# whose world-writable directories (/tmp, where the targets' scratch shares
# live, /var/tmp, /dev/shm, /run/lock) are private, size-limited tmpfs, as
# the unprivileged user 65534 with no capabilities and no_new_privs, so a
# confinement bug the fuzzer finds can write nothing the machine keeps. As
# any other user it runs as that user.
#
# --merge-seeds DIR adds to fuzz/seeds/TARGET the inputs of DIR/TARGET
# that reach coverage the seeds do not (libFuzzer's -merge=1): how seed
# candidates made by fuzz/make-seeds.py from recorded traffic become seeds.
#
# Environment: FUZZ_TARGET_DIR (the cargo target directory; default
# ~/.cache/virtiofsd-rs/fuzz-target, so the instrumented dependencies are
# built once per machine), FUZZ_SUMMARY (a file to append one line per
# target to), FUZZ_LOG_DIR (keep each target's libFuzzer log there).
set -euo pipefail
self=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$self")"

time=30
build_only=false
merge=
targets=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --time) time=$2; shift 2 ;;
        --build-only) build_only=true; shift ;;
        --merge-seeds) merge=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

# The [[bin]] sections' names.
all=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name = / { gsub(/"/, "", $3); print $3; bin = 0 }' Cargo.toml)
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets <<<"$all"
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$all" || { echo "fuzz/run.sh: no target $t (have: $(echo $all))" >&2; exit 2; }
done

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz or the nightly toolchain is missing (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
    exit 1
fi
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/virtiofsd-rs/fuzz-target}
mkdir -p "$target_dir"
start=$SECONDS
build_log=$(mktemp)
if ! cargo +nightly fuzz build --target-dir "$target_dir" >"$build_log" 2>&1; then
    grep -v '^\s*Compiling ' "$build_log" | tail -60
    echo "fuzz/run.sh: the fuzz targets did not build" >&2
    exit 1
fi
rm -f "$build_log"
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bindir=$target_dir/$triple/release
echo "fuzz/run.sh: ${#targets[@]} targets built in $((SECONDS - start)) s"
$build_only && exit 0

if [[ -n $merge ]]; then
    for t in "${targets[@]}"; do
        [[ -d $merge/$t ]] || continue
        mkdir -p "seeds/$t"
        before=$(ls "seeds/$t" | wc -l)
        "$bindir/$t" -merge=1 -timeout=20 -rss_limit_mb=2048 "seeds/$t" "$merge/$t" >/dev/null 2>&1 \
            || { echo "fuzz/run.sh: merging $t failed" >&2; exit 1; }
        echo "fuzz: $t: $(ls "$merge/$t" | wc -l) candidates, seeds $before -> $(ls "seeds/$t" | wc -l) ($(du -sh "seeds/$t" | cut -f1))"
    done
    exit 0
fi

failed=()
for t in "${targets[@]}"; do
    corpus=$PWD/corpus/$t
    artifacts=$PWD/artifacts/$t
    seeds=$PWD/seeds/$t
    mkdir -p "$corpus" "$artifacts" "$seeds"
    if [[ -n ${FUZZ_LOG_DIR:-} ]]; then
        mkdir -p "$FUZZ_LOG_DIR"
        log=$FUZZ_LOG_DIR/$t.log
    else
        log=$(mktemp)
    fi
    args=(-max_total_time="$time" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1)
    rc=0
    if [[ $EUID -eq 0 ]]; then
        # Inside the namespace: a fresh tmpfs on /tmp holding a copy of the
        # binary and corpus that user 65534 owns; what the run found is
        # copied back before the namespace (and its tmpfs) goes.
        # The namespace's own tmpfs (at a fresh directory under /run) holds
        # a copy of the binary and corpus that user 65534 owns; then the
        # world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock)
        # become private tmpfs too, so the fuzzer can write nothing the
        # machine keeps. What the run found is copied back before the
        # namespace (and its tmpfs) goes.
        stage=$(mktemp -d -p /run virtiofsd-rs-fuzz.XXXXXX)
        unshare --mount --propagation private -- bash -c '
            set -e
            stage=$1 bin=$2 corpus=$3 seeds=$4 artifacts=$5; shift 5
            mount -t tmpfs -o size=1g,mode=0755 fuzz-stage "$stage"
            mkdir -p "$stage/corpus" "$stage/seeds" "$stage/artifacts"
            cp "$bin" "$stage/bin"
            cp -r "$corpus"/. "$stage/corpus/"
            cp -r "$seeds"/. "$stage/seeds/"
            chown -R 65534:65534 "$stage"
            for d in /tmp /var/tmp /dev/shm /run/lock; do
                [[ -d $d ]] && mount -t tmpfs -o size=1g,mode=1777 fuzz-tmp "$d"
            done
            cd "$stage"
            rc=0
            setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
                --bounding-set=-all --no-new-privs -- \
                ./bin corpus seeds -artifact_prefix=artifacts/ "$@" || rc=$?
            cp -n corpus/* "$corpus"/ 2>/dev/null || true
            cp artifacts/* "$artifacts"/ 2>/dev/null || true
            exit $rc
        ' fuzz-ns "$stage" "$bindir/$t" "$corpus" "$seeds" "$artifacts" "${args[@]}" >"$log" 2>&1 || rc=$?
        rmdir "$stage" 2>/dev/null || true
    else
        "$bindir/$t" "$corpus" "$seeds" -artifact_prefix="$artifacts/" "${args[@]}" >"$log" 2>&1 || rc=$?
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    # (No such line when the run died before libFuzzer started.)
    cov=$({ grep -o 'cov: [0-9]*' "$log" || true; } | tail -1 | cut -d' ' -f2)
    ft=$({ grep -o 'ft: [0-9]*' "$log" || true; } | tail -1 | cut -d' ' -f2)
    line="$t: ${execs:-?} executions in ${time} s (${rate:-?}/s), coverage ${cov:-?} edges, ${ft:-?} features, corpus $(ls "$corpus" | wc -l) inputs"
    if [[ $rc -ne 0 ]]; then
        line+=", FAILED (exit $rc)"
        failed+=("$t")
        grep -E "panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written|^thread '" "$log" | head -20
        echo "--- last lines of the $t log:"
        tail -40 "$log"
    fi
    echo "fuzz: $line"
    [[ -z ${FUZZ_SUMMARY:-} ]] || echo "$line" >>"$FUZZ_SUMMARY"
    [[ -n ${FUZZ_LOG_DIR:-} ]] || rm -f "$log"
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz/run.sh: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
