#!/usr/bin/env bash
# tests/bench/run.sh - `make bench`: qshell against references measured in
# the same run, printed as ratios of medians.
#
# Machines are shared and noisy, so each benchmark runs in ROUNDS rounds that
# alternate the two sides (A B, B A, A B ...): a burst of noise hits both.
# The reported value of a side is the median of its per-round medians.
# Nothing here fails on a slow number: the exit status is non-zero only when
# something is broken (a build or a client fails).
#
# Adding a benchmark: write a bench_<name> function that calls `section`
# and `result` (see below), and add its name to BENCHES at the bottom.
#
# Knobs (environment): BENCH_ROUNDS (7), BENCH_RT (2000 round trips per
# round), BENCH_LAUNCH (10 launches per round), BENCH_STARTUP (40 runs per
# round), BENCH_BOOT_ROUNDS (5 rounds of one boot per side), BENCH_SNAP (6
# savevm+loadvm per side per round), BENCH_ONLY="startup qmp_rt" (a subset),
# BENCH_VERBOSE=1 (rounds).

# The command arrays are passed to `alternate` by name (local -n).
# shellcheck disable=SC2034

set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/build/bench
CC=${CC:-cc}
QEMU=${QSHELL_QEMU:-qemu-system-x86_64}
QSHELL=$ROOT/qshell

ROUNDS=${BENCH_ROUNDS:-7}
RT_N=${BENCH_RT:-2000}
LAUNCH_K=${BENCH_LAUNCH:-10}
STARTUP_N=${BENCH_STARTUP:-40}
BOOT_ROUNDS=${BENCH_BOOT_ROUNDS:-5}
SNAP_K=${BENCH_SNAP:-6}
VERBOSE=${BENCH_VERBOSE:-0}

die() { echo "bench: $*" >&2; exit 1; }

# ---- helpers ----

build() {
    mkdir -p "$OUT"
    [ -x "$QSHELL" ] || make -s qshell || die "cannot build qshell"
    local c
    for c in qmpclient startup bootharness snapclient; do
        "$CC" -O2 -Wall -o "$OUT/$c" "tests/bench/$c.c" || die "cannot build $c"
    done
    command -v "$QEMU" >/dev/null || die "$QEMU not found (make deps)"
}

# run LABEL CMD...: one measurement; sets MED to its median in us.  A client
# prints "median_us=X mean_us=Y ..."; anything else means it is broken.
run() {
    local label=$1 out
    shift
    out=$("$@" 2>&1) || die "$label failed: $out"
    MED=$(sed -n 's/.*median_us=\([0-9.]*\).*/\1/p' <<<"$out")
    [ -n "$MED" ] || die "$label printed no median: $out"
    if [ "$VERBOSE" = 1 ]; then echo "    $label: $out"; fi
}

# median V...: median of numbers
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# alternate A_LABEL A_ARRAY B_LABEL B_ARRAY: ROUNDS interleaved rounds (A B,
# B A, ...) of the commands held in the named arrays; sets A_MED and B_MED
# (us) to the median of each side's round medians.
alternate() {
    local al=$1 bl=$3 r
    local -n ac=$2 bc=$4
    local a=() b=()
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r % 2)); then
            run "$al" "${ac[@]}"; a+=("$MED")
            run "$bl" "${bc[@]}"; b+=("$MED")
        else
            run "$bl" "${bc[@]}"; b+=("$MED")
            run "$al" "${ac[@]}"; a+=("$MED")
        fi
    done
    A_MED=$(median "${a[@]}")
    B_MED=$(median "${b[@]}")
}

section() { printf '\n== %s\n' "$*"; }

# ms US -> milliseconds with 1 decimal
ms() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1000 }'; }

# ratio X Y -> X/Y with 2 decimals
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", x / y }'; }

# verdict COND: "ok" or "OVER TARGET" (printed only; never fails the run)
verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo "OVER TARGET"; fi; }

# ---- benchmarks ----

bench_qmp_rt() {
    section "QMP round trip: vm:qmp(\"query-status\") vs a raw-bytes C client ($ROUNDS x $RT_N)"
    local cc=("$OUT/qmpclient" rt "$RT_N" "$QEMU")
    local qs=("$QSHELL" tests/bench/qmp_roundtrip.lua rt "$RT_N")
    alternate "C client rt" cc "qshell rt" qs
    local c=$A_MED q=$B_MED r
    r=$(ratio "$q" "$c")
    printf 'qmp round trip: qshell %.0f us, C client %.0f us, ratio %sx (target <= 1.10x) %s\n' \
        "$q" "$c" "$r" "$(verdict "$r <= 1.10")"
}

bench_launch() {
    section "launch to QMP ready: qemu.launch{} vs fork/exec + greeting + qmp_capabilities ($ROUNDS x $LAUNCH_K)"
    local cc=("$OUT/qmpclient" launch "$LAUNCH_K" "$QEMU")
    local qs=("$QSHELL" tests/bench/qmp_roundtrip.lua launch "$LAUNCH_K")
    alternate "C client launch" cc "qshell launch" qs
    local c=$A_MED q=$B_MED r
    r=$(ratio "$q" "$c")
    printf 'launch to QMP ready: qshell %.1f ms, raw QEMU + connect %.1f ms, ratio %sx (target <= 1.10x) %s\n' \
        "$(awk -v v="$q" 'BEGIN { print v / 1000 }')" "$(awk -v v="$c" 'BEGIN { print v / 1000 }')" \
        "$r" "$(verdict "$r <= 1.10")"
}

bench_startup() {
    section "start-up: qshell -e '' vs lua5.4 -e '' ($ROUNDS x $STARTUP_N runs)"
    command -v lua5.4 >/dev/null || die "lua5.4 not found (make deps)"
    local lua=("$OUT/startup" "$STARTUP_N" lua5.4 -e '')
    local qs=("$OUT/startup" "$STARTUP_N" "$QSHELL" -e '')
    alternate "lua5.4 -e ''" lua "qshell -e ''" qs
    local l=$A_MED q=$B_MED
    printf "startup (qshell -e ''): median %.1f ms, lua5.4 -e '' %.1f ms, ratio %sx (target <= 5 ms median) %s\n" \
        "$(awk -v v="$q" 'BEGIN { print v / 1000 }')" "$(awk -v v="$l" 'BEGIN { print v / 1000 }')" \
        "$(ratio "$q" "$l")" "$(verdict "$q <= 5000")"
}

# The default guest (make guest); built once, cached in build/guest.
need_guest() {
    [ -f "$ROOT/build/guest/guest.lua" ] || make -s guest || die "cannot build the default guest"
}

bench_boot() {
    need_guest
    section "guest boot to login prompt: qemu.guest.launch{login=false} + expect(\"login: \") vs a C harness on the same argv ($BOOT_ROUNDS x 1 boot)"
    local overlay=$OUT/boot-overlay.qcow2 argv
    # The exact argv of a qshell launch on that overlay path; both sides
    # re-create the overlay before each boot, outside the timed region.
    mapfile -t argv < <("$QSHELL" tests/bench/guest_bench.lua argv "$overlay")
    [ "${#argv[@]}" -gt 10 ] || die "could not read the guest's argv from qshell"
    if [ "$VERBOSE" = 1 ]; then echo "    argv: ${argv[*]}"; fi
    local hc=("$OUT/bootharness" "$overlay" "$ROOT/build/guest/system.qcow2" "${argv[@]}")
    local qs=("$QSHELL" tests/bench/guest_bench.lua boot "$overlay")
    local ROUNDS=$BOOT_ROUNDS
    alternate "qshell boot" qs "C harness boot" hc
    local q=$A_MED c=$B_MED r
    r=$(ratio "$q" "$c")
    printf 'guest boot to login prompt: qshell %.2f s, harness %.2f s, ratio %sx (target <= 1.05x) %s\n' \
        "$(awk -v v="$q" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$c" 'BEGIN { print v / 1e6 }')" \
        "$r" "$(verdict "$r <= 1.05")"
}

bench_snapshot() {
    need_guest
    section "snapshot: vm:savevm/loadvm vs a C client's QMP jobs on the same VM ($ROUNDS rounds x $SNAP_K pairs, interleaved)"
    local sock=$OUT/snap-$$.qmp out
    out=$("$QSHELL" tests/bench/guest_bench.lua snapshot "$ROUNDS" "$SNAP_K" "$sock" "$OUT/snapclient" 2>&1) ||
        die "snapshot benchmark failed: $out"
    if [ "$VERBOSE" = 1 ]; then echo "${out//$'\n'/$'\n'    }" | sed '1s/^/    /'; fi
    local field side what
    declare -A med
    for side in qshell client checks qshell_out client_out; do
        for what in save load; do
            field=$(sed -n "s/^$side .*${what}_us=\([0-9.,]*\).*/\1/p" <<<"$out")
            [ -n "$field" ] || die "snapshot benchmark printed no $side $what times: $out"
            # shellcheck disable=SC2086
            med[$side.$what]=$(median ${field//,/ })
        done
    done
    echo "C client: the bare sequence (snapshot-save/-load job, wait for JOB_STATUS_CHANGE concluded, query-jobs,"
    echo "job-dismiss); qshell's extra checks (query-block x2 per savevm, x1 per loadvm) are part of its time"
    for what in save load; do
        local q=${med[qshell.$what]} c=${med[client.$what]} r
        r=$(ratio "$q" "$c")
        printf '%svm: qshell %s ms, C client %s ms, ratio %sx (target <= 1.05x) %s\n' \
            "$what" "$(ms "$q")" "$(ms "$c")" "$r" "$(verdict "$r <= 1.05")"
        printf '  outside the snapshot-%s command: qshell %s ms (query-block checks %s ms), C client %s ms\n' \
            "$what" "$(ms "${med[qshell_out.$what]}")" "$(ms "${med[checks.$what]}")" "$(ms "${med[client_out.$what]}")"
    done
}

bench_plugin() {
    need_guest
    section "TCG plugin overhead: boot to login prompt with the insn plugin vs without ($BOOT_ROUNDS x 1 boot)"
    local overlay=$OUT/plugin-overlay.qcow2
    local plain=("$QSHELL" tests/bench/guest_bench.lua boot "$overlay")
    local insn=("$QSHELL" tests/bench/guest_bench.lua boot "$overlay" insn)
    local ROUNDS=$BOOT_ROUNDS
    alternate "boot with insn" insn "boot without" plain
    local with=$A_MED without=$B_MED count r
    count=$("${insn[@]}" | sed -n 's/.*insns=\([0-9]*\).*/\1/p')
    [ -n "$count" ] || die "the insn plugin reported no count"
    r=$(ratio "$with" "$without")
    printf 'insn plugin: boot %.2f s with, %.2f s without, overhead ratio %sx; %s instructions, %.0f M insn/s with the plugin vs %.0f M insn/s without
' \
        "$(awk -v v="$with" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$without" 'BEGIN { print v / 1e6 }')" "$r" \
        "$count" "$(awk -v n="$count" -v t="$with" 'BEGIN { print n / t }')" \
        "$(awk -v n="$count" -v t="$without" 'BEGIN { print n / t }')"
    echo "  (the cost: every executed translation block leaves the generated code to call the plugin,"
    echo "   which adds the block's instruction count to its vCPU's counter)"
}

BENCHES=(startup qmp_rt launch boot snapshot plugin)

build
start=$SECONDS
for b in ${BENCH_ONLY:-${BENCHES[@]}}; do
    declare -F "bench_$b" >/dev/null || die "no benchmark '$b' (have: ${BENCHES[*]})"
    "bench_$b"
done
printf '\n(%d s)\n' $((SECONDS - start))
