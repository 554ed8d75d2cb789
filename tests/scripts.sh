#!/usr/bin/env bash
# tests/scripts.sh - every example in scripts/ runs to completion with
# `qshell run` and exits 0, with its output checked for what it promises.
# warmup.lua runs before sweep.lua (which needs its checkpoint).
set -u
cd "$(dirname "$0")/.."
pass=0 fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/scripts.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# check NAME PATTERN CMD...: run CMD; pass if it exits 0 and prints PATTERN
check() {
    local name=$1 pattern=$2 out rc
    shift 2
    out=$(timeout 600 "$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && grep -Eq "$pattern" <<<"$out"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "  FAIL $name (exit $rc, wanted /$pattern/):"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
    fi
}

Q="${TEST_PREFIX:-} ./qshell"
check demo.lua 'quit: exited with status 0' $Q run scripts/demo.lua
check warmup.lua 'checkpoint .*warm.ckpt' $Q run scripts/warmup.lua "$tmp/warm.ckpt"
check sweep.lua '12 runs: 12 ok, 0 failed' $Q run scripts/sweep.lua "$tmp/warm.ckpt" "$tmp/results.csv"
check 'sweep.lua --resume' '12 runs: 0 ok, 0 failed, 12 already done' \
    $Q run scripts/sweep.lua "$tmp/warm.ckpt" "$tmp/results.csv" --resume
check disk-setup.lua 'all files match' $Q run scripts/disk-setup.lua
# instrumentation in Lua (scripts/plugins/): each from its own boot
check insn-mix.lua 'the mix adds up to insn' $Q run scripts/insn-mix.lua
check syscalls.lua '[0-9]+ system calls in ROI 1' $Q run scripts/syscalls.lua
check roi-pages.lua 'ROI 1 touched [0-9]+ pages' $Q run scripts/roi-pages.lua
check bbv.lua 'every interval is the same|no comparison: no contrib plugin' $Q run scripts/bbv.lua
for s in scripts/*.lua; do
    case $s in
    */demo.lua|*/warmup.lua|*/sweep.lua|*/disk-setup.lua) ;;
    */insn-mix.lua|*/syscalls.lua|*/roi-pages.lua|*/bbv.lua) ;;
    *) check "$s" '' $Q run "$s" ;;
    esac
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
