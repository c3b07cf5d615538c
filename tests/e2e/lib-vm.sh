# shellcheck shell=bash
# Running a VM process with a timeout and its console in a log (sourced by
# run-guest.sh and nested-kvm.sh).

# vm_run_logged TIMEOUT LOG QUIET CMD...: run CMD (stdin /dev/null) for at
# most TIMEOUT seconds (then SIGTERM, SIGKILL 10 s later), appending its
# output to LOG, and with QUIET=false copying it to stdout too. Sets
# vm_rc to its exit status (124 or 137 when the timeout ended it).
vm_rc=0
vm_run_logged() {
    local timeout=$1 log=$2 quiet=$3
    shift 3
    set +e
    if [[ $quiet == true ]]; then
        timeout --kill-after=10 "$timeout" "$@" </dev/null >>"$log" 2>&1
        vm_rc=$?
    else
        timeout --kill-after=10 "$timeout" "$@" </dev/null 2>&1 | tee -a "$log"
        vm_rc=${PIPESTATUS[0]}
    fi
    set -e
}
