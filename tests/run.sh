#!/usr/bin/env bash
# tests/run.sh TIER... - run test tiers and print one summary line.
#
# Tiers: unit (C unit tests, Lua tests without QEMU, the fake QMP peer),
# integration (real qemu-system-x86_64), cli (the binary from outside),
# guest (tests/guest: booting the default Linux guest), cluster (a three-node
# Slurm cluster on this machine; on the first QEMU only), scripts (the example scripts),
# distro (a real Debian 12 system disk built with qemu.image.build, cached
# outside the checkout: ~2.5 minutes the first time; on the first QEMU only),
# source (a QEMU built from the distribution's source and run from its build
# tree: tests/qemu/build.sh, cached outside the checkout, ~9 minutes the first
# time), soak (tests/soak: a sweep under injected faults and a long-lived
# shell; QSHELL_SOAK=full for the long version), install (make install into a
# temp prefix, used with the source tree gone), scale (tests/scale: 2000 runs
# on the three-node cluster; make test-scale, not in all), all.
# Every runner prints "N passed, N failed[, N skipped]"; this sums them and
# ends with the same line.  Non-zero exit if anything failed, if a runner
# printed no summary, or if a QEMU process or a temp dir was left behind.
#
# The QEMU-facing tiers (integration, guest, scripts) run once per QEMU: the
# distribution's (7.2) and QEMU 10.0 from bookworm-backports (tests/qemu/
# fetch.sh, cached outside the checkout); each line names the QEMU.
#
# Environment: TEST_PREFIX (e.g. "valgrind --error-exitcode=99 --leak-check=full"),
# QSHELL_TEST_FILTER (run only matching test names), QSHELL_TEST_VERBOSE=1,
# QSHELL_TEST_QEMUS="system" (only the distribution's QEMU) or a list of
# binaries (default: "system backports"), QSHELL_TEST_SKIP="tier ..." (tiers
# left out; make test-fresh leaves out distro, see tests/fresh.sh).
set -u
cd "$(dirname "$0")/.."

tiers=("$@")
[ ${#tiers[@]} -eq 0 ] && tiers=(all)
if [ "${tiers[0]}" = all ]; then
    tiers=(unit integration cli guest cluster distro source scripts soak install)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/qshell-tests.XXXXXX")
# kill_tree PID: SIGTERM to a process and everything under it.
kill_tree() {
    local c
    for c in $(pgrep -P "$1"); do kill_tree "$c"; done
    kill -TERM "$1" 2>/dev/null
}
cleanup() {
    # the cluster tier, if it still runs beside (interrupted): its runners end
    if [ -n "${beside:-}" ]; then kill_tree "$beside"; wait "$beside" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

export TMPDIR="$work"
export QSHELL_TEST_TMP="$work"
export QSHELL_PATH="$PWD/tests/lib/?.lua"
export QSHELL_DEPRECATIONS="$work/deprecations"
QSHELL="${TEST_PREFIX:-} ./qshell"

total_pass=0 total_fail=0 total_skip=0 broken=0
# Live (not zombie) QEMU processes started by this run: they inherit
# TMPDIR=$work from qshell, which tells them from anyone else's QEMU.  A
# zombie is dead: in some sandboxes nothing reaps the children of a qshell
# killed with SIGKILL.
live_qemu() {
    local pid
    for pid in $(pgrep -f '(^|/)qemu-system-x86_64( |$)' 2>/dev/null); do
        case $(ps -o stat= -p "$pid" 2>/dev/null) in
        Z*|"") continue ;;
        esac
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "TMPDIR=$work"; then
            echo "$pid"
        fi
    done | sort -u
}

# run_one NAME COMMAND...: run a runner, echo its output, add its summary.
run_one() {
    local name=$1; shift
    local out rc line t0=$SECONDS
    printf '== %s%s\n' "$LABEL" "$name"
    out=$(timeout 900 "$@" 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/   /'
    printf '   (%d s)\n' $((SECONDS - t0))
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then
        echo "   !! $LABEL$name printed no summary (exit $rc)"
        broken=$((broken + 1))
        total_fail=$((total_fail + 1))
        return
    fi
    local p f s
    p=$(sed -E 's/^([0-9]+) passed.*/\1/' <<<"$line")
    f=$(sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/' <<<"$line")
    s=$(sed -nE 's/.*, ([0-9]+) skipped.*/\1/p' <<<"$line")
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    total_skip=$((total_skip + ${s:-0}))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "   !! $name exited $rc with no failed test"
        broken=$((broken + 1))
        total_fail=$((total_fail + 1))
    fi
}

# A file whose header says "on the first QEMU only" tests nothing of QEMU's
# own (the Slurm engine, the node's copy of a checkpoint): per_qemu runs it
# once.
run_lua_dir() {
    local dir=$1 f
    for f in "$dir"/*.lua; do
        [ -e "$f" ] || continue
        if [ "${LATER_QEMU:-0}" = 1 ] && head -n 12 "$f" | grep -q 'on the first QEMU only'; then
            printf '== %s%s: on the first QEMU only\n' "$LABEL" "$f"
            continue
        fi
        run_one "$f" $QSHELL "$f"
    done
}

# The QEMUs the QEMU-facing tiers run on: "label binary" lines.
qemus=()
for q in ${QSHELL_TEST_QEMUS:-system backports}; do
    case $q in
    system) b=${QSHELL_QEMU:-qemu-system-x86_64} ;;
    backports)
        if ! root=$(tests/qemu/fetch.sh); then
            echo "!! cannot get QEMU from bookworm-backports (QSHELL_TEST_QEMUS=system runs without it)"
            broken=$((broken + 1)); total_fail=$((total_fail + 1))
            continue
        fi
        b=$root/usr/bin/qemu-system-x86_64 ;;
    *) b=$q ;;
    esac
    v=$("$b" --version 2>/dev/null | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -n 1)
    qemus+=("qemu ${v:-?}|$b")
done

list=
for q in "${qemus[@]}"; do list="$list ${q#*|}"; done
export QSHELL_TEST_QEMU_LIST=$list

# per_qemu CMD...: run CMD (a tier) once per QEMU, QSHELL_QEMU set, the
# runner names prefixed with the QEMU's version.
LABEL=
per_qemu() {
    local q later=0
    for q in "${qemus[@]}"; do
        LABEL="[${q%%|*}] "
        LATER_QEMU=$later QSHELL_QEMU=${q#*|} "$@"
        later=1
    done
    LABEL=
}

# first_qemu CMD...: run CMD (a tier) on the first QEMU only, its runner
# names prefixed with that QEMU's version.
first_qemu() {
    LABEL="[${qemus[0]%%|*}] " QSHELL_QEMU=${qemus[0]#*|} "$@"
}

# The cluster tier run beside the distro tier: its output and counts, once
# it has ended.
beside=
beside_done() {
    [ -n "$beside" ] || return 0
    wait "$beside"
    beside=
    cat "$work/cluster.out"
    local p=0 f=1 s=0 b=1
    [ -s "$work/cluster.counts" ] && read -r p f s b < "$work/cluster.counts"
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    total_skip=$((total_skip + s)); broken=$((broken + b))
}

for tier in "${tiers[@]}"; do
    if [[ " ${QSHELL_TEST_SKIP:-} " == *" $tier "* ]]; then
        echo "== $tier: skipped (QSHELL_TEST_SKIP)"
        continue
    fi
    case $tier in
    unit)
        for t in build/test_qmp build/test_json build/test_proc build/test_console; do
            run_one $t ${TEST_PREFIX:-} $t
        done
        run_lua_dir tests/unit
        run_one fuzz tests/fuzz/run.sh "${FUZZ_SHORT_TIME:-10}" build/fuzz/fuzz_qmp build/fuzz/fuzz_qmpline
        ;;
    integration) per_qemu run_lua_dir tests/integration ;;
    cli) run_lua_dir tests/cli ;;
    guest) per_qemu run_lua_dir tests/guest ;;
    scripts) per_qemu run_one scripts tests/scripts.sh ;;
    cluster)
        # one QEMU: a three-node Slurm cluster; what it tests is Slurm's side.
        # Its tests mostly wait on Slurm (4 s of CPU in 190): with the distro
        # tier to come, they run beside it, their output after its own.
        if [[ " ${tiers[*]} " == *" distro "* && " ${QSHELL_TEST_SKIP:-} " != *" distro "* ]]; then
            (
                total_pass=0 total_fail=0 total_skip=0 broken=0
                first_qemu run_lua_dir tests/cluster
                echo "$total_pass $total_fail $total_skip $broken" > "$work/cluster.counts"
            ) > "$work/cluster.out" 2>&1 &
            beside=$!
            echo "== cluster: runs beside the distro tier; its output follows that tier's"
        else
            first_qemu run_lua_dir tests/cluster
        fi ;;
    distro)
        # one QEMU: these boots take most of a minute each
        first_qemu run_lua_dir tests/distro
        beside_done ;;
    scale)
        # one QEMU: 2000 runs on the three-node cluster, the submitter killed
        # and resumed (make test-scale; not in all: about 4 minutes)
        first_qemu run_lua_dir tests/scale ;;
    soak)
        # one QEMU: faults under a sweep, and a long-lived shell (2 minutes;
        # QSHELL_SOAK=full, make test-soak: about 8)
        first_qemu run_lua_dir tests/soak ;;
    source)
        if b=$(tests/qemu/build.sh); then
            QSHELL_TEST_QEMU_SOURCE=$b run_lua_dir tests/source
        else
            echo "!! cannot build QEMU from source (tests/qemu/build.sh)"
            broken=$((broken + 1)); total_fail=$((total_fail + 1))
        fi ;;
    install) run_one install tests/install.sh ;;
    *) echo "unknown tier: $tier" >&2; exit 2 ;;
    esac
done

beside_done

# Leaks: QEMU processes and temp dirs the tests left behind.
sleep 0.2
leaked=$(live_qemu)
if [ -n "$leaked" ]; then
    echo "!! QEMU processes left behind: $leaked"
    ps -o pid,args -p $(echo $leaked | tr ' ' ',') || true
    kill -9 $leaked 2>/dev/null
    total_fail=$((total_fail + 1))
fi
if [ -s "$QSHELL_DEPRECATIONS" ]; then
    echo "!! QEMU printed deprecation warnings:"
    sort -u "$QSHELL_DEPRECATIONS" | head -n 20 | sed 's/^/   /'
    total_fail=$((total_fail + 1))
fi
stale=$(find "$work" -mindepth 1 -maxdepth 1 -name 'qshell-*' 2>/dev/null)
if [ -n "$stale" ]; then
    echo "!! temp dirs left behind: $stale"
    for d in $stale; do
        echo "   $d: owner $(cat "$d/owner" 2>/dev/null), holds: $(ls "$d" | tr '\n' ' ')"
    done
    total_fail=$((total_fail + 1))
fi

summary="$total_pass passed, $total_fail failed"
[ "$total_skip" -gt 0 ] && summary="$summary, $total_skip skipped"
echo "$summary"
[ "$total_fail" -eq 0 ]
