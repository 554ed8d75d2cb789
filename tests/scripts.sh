#!/usr/bin/env bash
# tests/scripts.sh - every example in scripts/ runs to completion with
# `qshell run` and exits 0.  Scripts that need arguments or another script
# first are listed in ORDER; the rest run alone.
set -u
cd "$(dirname "$0")/.."
pass=0 fail=0
for s in scripts/*.lua; do
    out=$(timeout 600 ${TEST_PREFIX:-} ./qshell run "$s" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "  FAIL $s (exit $rc):"
        printf '%s\n' "$out" | tail -n 15 | sed 's/^/    /'
    fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
