#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS TARGET... - run libFuzzer targets, one after another.
#
# For build/fuzz/fuzz_NAME: seeds from tests/fuzz/corpus/NAME/ and the past
# findings in tests/fuzz/crashes/NAME/ (both only read), new inputs kept in
# build/fuzz/corpus/NAME/ (so later runs start from what earlier ones
# found), the dictionary tests/fuzz/NAME.dict, crash inputs written to
# build/fuzz/crashes/NAME/.  Each target runs SECONDS (-max_total_time),
# after the seeds.  One line per target, the log tail of a failure, and
# "N passed, N failed" last; exit status 1 if any target failed.
#
# Environment: FUZZ_ARGS (extra libFuzzer flags, e.g. -jobs=2 or -seed=1),
# FUZZ_VERBOSE=1 (show the whole libFuzzer log).
set -u
cd "$(dirname "$0")/../.." || exit 2

if [ $# -lt 2 ]; then
    echo "usage: $0 SECONDS TARGET..." >&2
    exit 2
fi
secs=$1
shift

# Leaks and UB are failures; a report goes with a symbolized stack.
# A small quarantine keeps the RSS a measure of the target's own memory.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:quarantine_size_mb=32}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# The Lua target builds qshell's own state, which reads these.
unset QSHELL_STDLIB QSHELL_PATH QSHELL_LOG LUA_INIT LUA_INIT_5_4

pass=0 fail=0
for bin in "$@"; do
    exe=$(basename "$bin")
    name=${exe#fuzz_}
    seeds=tests/fuzz/corpus/$name
    work=build/fuzz/corpus/$name
    crashes=build/fuzz/crashes/$name
    log=build/fuzz/$exe.log
    mkdir -p "$work" "$crashes"

    # Longest input: a QMP stream holds several messages; a shell line is short.
    case $name in
    qmp) max_len=16384 ;;
    *) max_len=2048 ;;
    esac
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len"
          -print_final_stats=1 -artifact_prefix="$crashes/")
    [ -f "tests/fuzz/$name.dict" ] && args+=(-dict="tests/fuzz/$name.dict")
    dirs=("$work")
    [ -d "$seeds" ] && dirs+=("$seeds")
    # Past findings run first too, as regression inputs.
    [ -d "tests/fuzz/crashes/$name" ] && dirs+=("tests/fuzz/crashes/$name")

    start=$SECONDS
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    "$bin" "${args[@]}" ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1
    rc=$?
    took=$((SECONDS - start))
    [ "${FUZZ_VERBOSE:-0}" = 1 ] && cat "$log"

    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    cov=$(grep -aE '^#[0-9]+.*(DONE|INITED|NEW|REDUCE|pulse)' "$log" | tail -n 1 |
          sed -nE 's/.* cov: ([0-9]+) ft: ([0-9]+).*/cov \1, ft \2/p')
    if [ "$rc" -eq 0 ]; then
        pass=$((pass + 1))
        printf 'ok   %s: %s runs in %d s, %s, corpus %s files\n' "$exe" "${runs:-?}" "$took" \
            "${cov:-cov ?}" "$(find "$work" -type f | wc -l)"
    else
        fail=$((fail + 1))
        printf 'FAIL %s: exit %d after %d s (log %s)\n' "$exe" "$rc" "$took" "$log"
        grep -aE '^(==[0-9]+==ERROR|SUMMARY|fuzz_|.*runtime error|artifact_prefix)' "$log" |
            head -n 20 | sed 's/^/     /'
        [ "${FUZZ_VERBOSE:-0}" = 1 ] || tail -n 40 "$log" | sed 's/^/   | /'
    fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
