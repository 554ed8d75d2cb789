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
# round), BENCH_LAUNCH (20 launches per round), BENCH_STARTUP (40 runs per
# round), BENCH_BOOT_ROUNDS (5 rounds of one boot per side), BENCH_SNAP (6
# savevm+loadvm per side per round), BENCH_SWEEP_N (16 runs per sweep),
# BENCH_SWEEP_ROUNDS (3 rounds of the three sweeps), BENCH_RESTORE_ROUNDS (5
# rounds of one restore per side), BENCH_MEM_MIB (1216 MiB of data in the
# 2 GiB guest of the memory benchmark), BENCH_MEM_VMS (8 restored at once),
# BENCH_CKPT_ROUNDS (3), BENCH_REPLAY_ROUNDS (3), BENCH_CLUSTER_RUNS (2000 runs in each of the
# cluster benchmark's two sweeps), BENCH_ONLY="startup qmp_rt results" (a subset;
# "distro" builds the Debian image of the distro tier once, ~2.5 min),
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
LAUNCH_K=${BENCH_LAUNCH:-20}
STARTUP_N=${BENCH_STARTUP:-40}
BOOT_ROUNDS=${BENCH_BOOT_ROUNDS:-5}
SNAP_K=${BENCH_SNAP:-6}
SWEEP_N=${BENCH_SWEEP_N:-16}
SWEEP_ROUNDS=${BENCH_SWEEP_ROUNDS:-3}
RESTORE_ROUNDS=${BENCH_RESTORE_ROUNDS:-5}
VERBOSE=${BENCH_VERBOSE:-0}

# The guest commands of the sweep benchmark's runs, the same on all its
# sides: short runs (a loop in the guest's shell, about 0.1 s under TCG),
# where the targets are, and long runs (ten times the loop), for reference:
# there the guest's own work, the same on every side, is most of a run.
# shellcheck disable=SC2016
WORKLOAD=${BENCH_WORKLOAD:-'i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done'}
# shellcheck disable=SC2016
WORKLOAD_LONG=${BENCH_WORKLOAD_LONG:-'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'}

die() { echo "bench: $*" >&2; exit 1; }

# Temp dirs removed at exit (also on die; a subshell's exit does not run it).
CLEANUP=()
cleanup() { if ((${#CLEANUP[@]})); then rm -rf -- "${CLEANUP[@]}"; fi; }
trap cleanup EXIT

# ---- helpers ----

build() {
    mkdir -p "$OUT"
    make -s qshell plugins || die "cannot build qshell"
    local c
    for c in qmpclient startup bootharness snapclient; do
        "$CC" -O2 -Wall -o "$OUT/$c" "tests/bench/$c.c" || die "cannot build $c"
    done
    # shellcheck disable=SC2046
    "$CC" -O2 -Wall -DWITH_JSONC -o "$OUT/qmpclient-jsonc" tests/bench/qmpclient.c \
        $(pkg-config --cflags --libs json-c) || die "cannot build qmpclient-jsonc"
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
# (and A_MIN, B_MIN: the fastest round of each)
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
    A_MIN=$(printf '%s\n' "${a[@]}" | sort -g | head -n 1)
    B_MIN=$(printf '%s\n' "${b[@]}" | sort -g | head -n 1)
}

section() { printf '\n== %s\n' "$*"; }

# each_qemu FN: FN BINARY for the distribution's QEMU, then QEMU 10.0 from
# bookworm-backports, with QSHELL_QEMU set to it.
each_qemu() {
    local q root
    root=$(tests/qemu/fetch.sh) || die "cannot get QEMU 10.0 from bookworm-backports"
    for q in "${QSHELL_QEMU:-qemu-system-x86_64}" "$root/usr/bin/qemu-system-x86_64"; do
        QSHELL_QEMU=$q "$1" "$q"
    done
}

# qemu_version BINARY -> "7.2.22"
qemu_version() { "$1" --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -n 1; }

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
    printf 'qmp round trip: qshell %.0f us, C client %.0f us, ratio %sx (target <= 1.05x) %s\n' \
        "$q" "$c" "$r" "$(verdict "$r <= 1.05")"
    section "QMP round trip: the same C client with json-c vs without a JSON library ($ROUNDS x $RT_N)"
    local cj=("$OUT/qmpclient-jsonc" rt "$RT_N" "$QEMU")
    alternate "C client rt" cc "C client + json-c rt" cj
    local j=$B_MED
    printf 'qmp round trip: C client with json-c %.0f us, without %.0f us, ratio %sx (for reference)\n' \
        "$j" "$A_MED" "$(ratio "$j" "$A_MED")"
}

bench_launch() {
    local n=$((ROUNDS * LAUNCH_K)) out q c r
    section "launch to QMP ready: qemu.launch{} vs fork/exec + greeting + qmp_capabilities ($n pairs, one of each in turn)"
    out=$("$QSHELL" tests/bench/qmp_roundtrip.lua pairs "$n" "$OUT/qmpclient" "$QEMU" 2>&1) ||
        die "launch benchmark failed: $out"
    q=$(sed -n 's/^qshell median_us=\([0-9.]*\).*/\1/p' <<<"$out")
    c=$(sed -n 's/^client median_us=\([0-9.]*\).*/\1/p' <<<"$out")
    [ -n "$q" ] && [ -n "$c" ] || die "launch benchmark printed no medians: $out"
    if [ "$VERBOSE" = 1 ]; then echo "${out//$'\n'/$'\n'    }" | sed '1s/^/    /'; fi
    r=$(ratio "$q" "$c")
    printf 'launch to QMP ready: qshell %.1f ms, raw QEMU + connect %.1f ms, ratio %sx (target <= 1.05x) %s\n' \
        "$(awk -v v="$q" 'BEGIN { print v / 1000 }')" "$(awk -v v="$c" 'BEGIN { print v / 1000 }')" \
        "$r" "$(verdict "$r <= 1.05")"
}

bench_startup() {
    section "start-up: qshell -e '' vs lua5.4 -e '' ($ROUNDS x $STARTUP_N runs)"
    command -v lua5.4 >/dev/null || die "lua5.4 not found (make deps)"
    local lua=("$OUT/startup" "$STARTUP_N" lua5.4 -e '')
    local qs=("$OUT/startup" "$STARTUP_N" "$QSHELL" -e '')
    alternate "lua5.4 -e ''" lua "qshell -e ''" qs
    local l=$A_MED q=$B_MED
    printf "startup (qshell -e ''): median %.1f ms, lua5.4 -e '' %.1f ms, ratio %sx, +%.2f ms (target <= lua5.4 + 1 ms) %s\n" \
        "$(awk -v v="$q" 'BEGIN { print v / 1000 }')" "$(awk -v v="$l" 'BEGIN { print v / 1000 }')" \
        "$(ratio "$q" "$l")" "$(awk -v a="$q" -v b="$l" 'BEGIN { print (a - b) / 1000 }')" "$(verdict "$q <= $l + 1000")"
}

# qshell results on 10^5 rows (100 sizes x 10 modes x 100 repeats, as a
# sweep writes them) against awk computing the same groups' n, mean and sd
# (what one types by hand); target: the summary in under 2 s.
bench_results() {
    local big=$OUT/results-1e5.csv
    section "results: qshell results on 10^5 rows vs awk's per-group n, mean, sd ($ROUNDS x 1 run)"
    "$QSHELL" -e "
      local f = assert(io.open('$big', 'w'))
      f:write('run,repeat,mode,size,status,wall_s,error,host,started,prov,secs\\n')
      for size = 1, 100 do for m = 1, 10 do for rep = 1, 100 do
        f:write(string.format('mode=m%d;size=%d#%d,%d,m%d,%d,ok,1.0,,h,2026-12-07T00:00:00Z,p1,%.4f\\n',
                              m, size, rep, rep, m, size, size + m / 10 + rep / 1e4))
      end end end
      f:close()" || die "cannot write $big"
    local qs=("$OUT/startup" 1 "$QSHELL" results "$big" --format csv)
    local awkc=("$OUT/startup" 1 awk -F, 'NR > 1 { k = $3 "," $4; n[k]++; s[k] += $11; q[k] += $11 * $11 }
        END { for (k in n) printf "%s,%d,%g,%g\n", k, n[k], s[k] / n[k], sqrt((q[k] - s[k] * s[k] / n[k]) / (n[k] - 1)) }' "$big")
    alternate "awk" awkc "qshell results" qs
    local a=$A_MED q=$B_MED
    printf "results summary of 10^5 rows: qshell %.2f s, awk %.2f s, ratio %sx (target: qshell <= 2 s) %s\n" \
        "$(awk -v v="$q" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$a" 'BEGIN { print v / 1e6 }')" \
        "$(ratio "$q" "$a")" "$(verdict "$q <= 2000000")"
}

# The default guest (make guest); built once, cached in build/guest.
need_guest() {
    [ -f "$ROOT/build/guest/guest.lua" ] || make -s guest || die "cannot build the default guest"
}

bench_boot() {
    need_guest
    boot_vs_harness "guest" "$ROOT/build/guest"
}

# boot_vs_harness NAME GUESTDIR: qshell's boot to the login prompt against
# the C harness on the same argv (BENCH_GUEST selects the guest).
boot_vs_harness() {
    local name=$1 dir=$2
    section "$name boot to login prompt: qemu.guest.launch{login=false} + expect(\"login: \") vs a C harness on the same argv ($BOOT_ROUNDS x 1 boot)"
    local overlay=$OUT/boot-overlay.qcow2 argv
    # The exact argv of a qshell launch on that overlay path; both sides
    # re-create the overlay before each boot, outside the timed region.
    mapfile -t argv < <(BENCH_GUEST=$dir "$QSHELL" tests/bench/guest_bench.lua argv "$overlay")
    [ "${#argv[@]}" -gt 10 ] || die "could not read the guest's argv from qshell"
    if [ "$VERBOSE" = 1 ]; then echo "    argv: ${argv[*]}"; fi
    local hc=("$OUT/bootharness" "$overlay" "$dir/system.qcow2" "${argv[@]}")
    local qs=(env BENCH_GUEST="$dir" "$QSHELL" tests/bench/guest_bench.lua boot "$overlay")
    local ROUNDS=$BOOT_ROUNDS
    alternate "qshell boot" qs "C harness boot" hc
    local q=$A_MED c=$B_MED r
    r=$(ratio "$q" "$c")
    printf '%s boot to login prompt: qshell %.2f s, harness %.2f s, ratio %sx (target <= 1.05x) %s\n' \
        "$name" "$(awk -v v="$q" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$c" 'BEGIN { print v / 1e6 }')" \
        "$r" "$(verdict "$r <= 1.05")"
}

# The Debian 12 image of the distro tier (built once, cached): its boot
# against the C harness, and console:run("true") on it and on the busybox
# guest (bash and systemd vs busybox ash: the same protocol, another shell).
bench_distro() {
    need_guest
    local dir out
    dir=$("$QSHELL" -e 'print(qemu.image.build(dofile("tests/lib/distro_spec.lua")).dir)') ||
        die "cannot build the Debian image"
    boot_vs_harness "Debian 12" "$dir"
    section "console:run(\"true\") round trip, logged in (3 rounds x 50, median)"
    local d b
    out=$(BENCH_GUEST=$dir "$QSHELL" tests/bench/guest_bench.lua rt 3 50) || die "rt on Debian failed: $out"
    d=$(sed -n 's/^median_us=\([0-9.]*\).*/\1/p' <<<"$out")
    out=$("$QSHELL" tests/bench/guest_bench.lua rt 3 50) || die "rt on the default guest failed: $out"
    b=$(sed -n 's/^median_us=\([0-9.]*\).*/\1/p' <<<"$out")
    printf 'run("true"): Debian 12 (bash) %s ms, default guest (busybox ash) %s ms, ratio %sx\n' \
        "$(ms "$d")" "$(ms "$b")" "$(ratio "$d" "$b")"
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
    each_qemu bench_plugin_on
}

# bench_plugin_on BINARY: the insn plugin's overhead on one QEMU, in
# QEMU's CPU time (BENCH_MEASURE=cpu: less disturbed by the host than the
# wall time; the boot to the login prompt, the loops over the loop).  API 1
# (7.2, 8.x) with one vCPU counts with an inline add per block; API 2 (9.0+) with inline
# per-vCPU adds into a scoreboard (target <= 1.05x).
bench_plugin_on() {
    local v
    v=$(qemu_version "$1")
    section "TCG plugin overhead on QEMU $v: boot to login prompt with the insn plugin vs without ($BOOT_ROUNDS x 1 boot)"
    local overlay=$OUT/plugin-overlay.qcow2
    local plain=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua boot "$overlay")
    local insn=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua boot "$overlay" insn)
    local ROUNDS=$BOOT_ROUNDS
    alternate "boot with insn" insn "boot without" plain
    local with=$A_MED without=$B_MED count r target=
    count=$("${insn[@]}" | sed -n 's/.*insns=\([0-9]*\).*/\1/p')
    [ -n "$count" ] || die "the insn plugin reported no count"
    r=$(ratio "$with" "$without")
    target=$(plugin_target "$v" "$r")
    printf 'insn plugin on QEMU %s: boot %.2f s of QEMU CPU time with, %.2f s without, overhead ratio %sx %s; %s instructions, %.0f M insn per CPU second with the plugin vs %.0f M without\n' \
        "$v" "$(awk -v v="$with" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$without" 'BEGIN { print v / 1e6 }')" "$r" \
        "$target" "$count" "$(awk -v n="$count" -v t="$with" 'BEGIN { print n / t }')" \
        "$(awk -v n="$count" -v t="$without" 'BEGIN { print n / t }')"
    # The steady state: a CPU-bound loop in the guest, from the warm checkpoint,
    # plain and marked as a region of interest by the guest helper.
    need_warm
    local wplain=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt")
    local winsn=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt" insn)
    local wroi=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt" roi)
    loop_overhead "$v" "a CPU-bound guest loop from a checkpoint" "CPU-bound loop" winsn wplain
    loop_overhead "$v" "the loop as an ROI (qshell-roi begin/end)" "CPU-bound loop as an ROI" wroi wplain
}

# ---- instrumentation in Lua: the lua plugin against insn ----

bench_lua() {
    need_guest
    each_qemu bench_lua_on
}

# bench_lua_on BINARY: a Lua script counting every executed instruction
# with tb:count (an inline add per block, as insn's) against insn on the
# CPU-bound loop (target <= 1.1x); then the cost of a Lua callback per
# executed block, per million blocks, from a shorter loop run with and
# without one.  Both in QEMU's CPU time over the loop (BENCH_MEASURE=cpu),
# which other work on the host disturbs less than the wall time.
bench_lua_on() {
    local v r
    v=$(qemu_version "$1")
    need_warm
    section "Instrumentation in Lua on QEMU $v: the CPU-bound loop counted by a Lua script (tb:count) vs insn ($BOOT_ROUNDS x 1 run)"
    local wlua=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt" lua)
    local winsn=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt" insn)
    local ROUNDS=$BOOT_ROUNDS
    alternate "loop counted in Lua" wlua "loop counted by insn" winsn
    # Both sides run the same inline add per block: what differs is small
    # beside the host's noise (one side's runs here spread over 5-7.6 s),
    # which only ever adds time; so the fastest rounds are compared too, and
    # the target is held to them.
    local rmin
    r=$(ratio "$A_MED" "$B_MED")
    rmin=$(ratio "$A_MIN" "$B_MIN")
    printf 'lua plugin on QEMU %s, CPU-bound loop: %.2f s of QEMU CPU time counted in Lua, %.2f s by insn (medians), ratio %sx; fastest rounds %.2f s and %.2f s, ratio %sx (target <= 1.1x) %s\n' \
        "$v" "$(awk -v v="$A_MED" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$B_MED" 'BEGIN { print v / 1e6 }')" "$r" \
        "$(awk -v v="$A_MIN" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$B_MIN" 'BEGIN { print v / 1e6 }')" \
        "$rmin" "$(verdict "$rmin <= 1.1")"
    section "Instrumentation in Lua on QEMU $v: a Lua callback per executed block (tb:on_exec), a 20000-iteration loop ($BOOT_ROUNDS x 1 run)"
    local wexec=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt" luaexec 20000)
    local wcount=(env BENCH_MEASURE=cpu "$QSHELL" tests/bench/guest_bench.lua work "$WARM/ckpt" lua 20000)
    alternate "with on_exec" wexec "without" wcount
    local blocks
    blocks=$("${wexec[@]}" | sed -n 's/.*blocks=\([0-9]*\).*/\1/p')
    [ -n "$blocks" ] || die "the script reported no block count"
    printf 'lua plugin on QEMU %s, tb:on_exec: %.2f s of QEMU CPU time with, %.2f s without, over %s blocks: %.2f s per million blocks (%.0f ns a callback)\n' \
        "$v" "$(awk -v v="$A_MED" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$B_MED" 'BEGIN { print v / 1e6 }')" "$blocks" \
        "$(awk -v a="$A_MED" -v b="$B_MED" -v n="$blocks" 'BEGIN { print (a - b) / n }')" \
        "$(awk -v a="$A_MED" -v b="$B_MED" -v n="$blocks" 'BEGIN { print (a - b) * 1000 / n }')"
}

# plugin_target VERSION RATIO: what the ratio is held to on that QEMU.
plugin_target() {
    case $1 in [0-8].*) echo "(API 1, one vCPU: an inline add per block)" ;;
    *) echo "(target <= 1.05x) $(verdict "$2 <= 1.05")" ;; esac
}

# loop_overhead VERSION TITLE LABEL WITH_ARRAY WITHOUT_ARRAY: one loop
# benchmark with the insn plugin against none, and its ratio line.
loop_overhead() {
    local v=$1 title=$2 label=$3 r
    section "TCG plugin overhead on QEMU $v: $title, insn vs none ($BOOT_ROUNDS x 1 run)"
    alternate "$label with insn" "$4" "$label without" "$5"
    r=$(ratio "$A_MED" "$B_MED")
    printf 'insn plugin on QEMU %s, %s: %.2f s of QEMU CPU time with, %.2f s without, overhead ratio %sx %s\n' \
        "$v" "$label" "$(awk -v v="$A_MED" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$B_MED" 'BEGIN { print v / 1e6 }')" \
        "$r" "$(plugin_target "$v" "$r")"
}

# ---- sweep and restore: checkpoints vs -loadvm ----

# need_warm: the warm state the sweep, restore and plugin benchmarks start
# from, made once per QEMU (QSHELL_QEMU) and run of this script (not
# timed): the default guest booted and logged in, then a checkpoint
# ($WARM/ckpt) and an internal snapshot "warm" in the overlay it ran on
# ($WARM/warm.qcow2), of the same idle shell.  Also reads the plain QEMU
# argv for -loadvm (LOADVM_ARGV, the image as @IMAGE@).
declare -A WARMS
WARM=""
need_warm() {
    need_guest
    local q=${QSHELL_QEMU:-qemu-system-x86_64} out
    if [ -z "${WARMS[$q]:-}" ]; then
        WARMS[$q]=$(mktemp -d "$OUT/warm.XXXXXX")
        CLEANUP+=("${WARMS[$q]}")
        out=$("$QSHELL" tests/bench/guest_bench.lua warm "${WARMS[$q]}/warm.qcow2" "${WARMS[$q]}/ckpt" 2>&1) ||
            die "cannot make the warm state: $out"
    fi
    WARM=${WARMS[$q]}
    mapfile -t LOADVM_ARGV < <("$QSHELL" tests/bench/guest_bench.lua loadvm_argv warm)
    [ "${#LOADVM_ARGV[@]}" -gt 10 ] || die "could not read the -loadvm argv from qshell"
    if [ "$VERBOSE" = 1 ]; then echo "    -loadvm argv: ${LOADVM_ARGV[*]}"; fi
}

# us T0 T1: microseconds between two $EPOCHREALTIME values
us() { echo $((10#${2//[.,]/} - 10#${1//[.,]/})); }

# loadvm_once IMAGE CMD: one run the way it is done without qshell: QEMU
# started with -loadvm warm on IMAGE, its serial console on stdio (a bash
# coproc's pipes); CMD is typed wrapped exactly as vm.console:run wraps it
# (two markers the echo cannot contain), the lines are read up to the end
# marker, then QEMU is sent SIGTERM and reaped.  Sets LV_ANSWER_US (QEMU
# start to the end marker) and LV_TOTAL_US (to QEMU reaped); on failure
# prints why and returns 1, QEMU reaped either way.  Run it in a subshell
# that ignores SIGPIPE (a write to a QEMU that died must not kill the shell).
loadvm_once() {
    local img=$1 cmd=$2 line st="" t0 t1 t2 qpid rfd wfd
    local argv=("${LOADVM_ARGV[@]//@IMAGE@/$img}") last=()
    local typed="printf '%s%s\\n' __qs benchb; eval '${cmd//\'/\'\\\'\'}'; printf '%s%s%d\\n' __qs benche \$?"
    t0=$EPOCHREALTIME
    coproc LVQ { exec "${argv[@]}" 2>&1; }
    qpid=$LVQ_PID rfd=${LVQ[0]} wfd=${LVQ[1]}
    printf '%s\r' "$typed" >&"$wfd" || true
    while IFS= read -r -t 60 -u "$rfd" line; do
        line=${line%$'\r'}
        case $line in
        *__qsbenche*) st=${line##*__qsbenche}; break ;;
        esac
        last=("${last[@]: -4}" "$line")
    done
    t1=$EPOCHREALTIME
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    t2=$EPOCHREALTIME
    if [ "$st" != 0 ]; then
        printf 'qemu -loadvm run on %s: no end marker with status 0 (got "%s"); last output:\n' "$img" "$st"
        printf '  %s\n' "${last[@]}"
        return 1
    fi
    LV_ANSWER_US=$(us "$t0" "$t1")
    LV_TOTAL_US=$(us "$t0" "$t2")
}

# per_min US: SWEEP_N runs in US microseconds as runs per minute
per_min() { awk -v n="$SWEEP_N" -v t="$1" 'BEGIN { printf "%.1f", n * 60e6 / t }'; }

# loop_sweep N IMAGE CMD: the bash loop: N runs of loadvm_once one after
# another on the one image (-loadvm cannot use an overlay, so no two runs
# can share it at once; each -loadvm reverts the disk too, so there is
# nothing to restore between runs).  Prints the loop's wall time.
loop_sweep() {
    local n=$1 img=$2 cmd=$3 i t0 t
    trap '' PIPE
    t0=$EPOCHREALTIME
    for ((i = 0; i < n; i++)); do loadvm_once "$img" "$cmd" || return 1; done
    t=$(us "$t0" "$EPOCHREALTIME")
    echo "median_us=$t mean_us=$t min_us=$t n=1 runs=$n"
}

# loadvm_copy IMAGE: cp of IMAGE (not timed), then the time from QEMU's start
# with -loadvm warm on the copy to the answer of `true` on its console.
loadvm_copy() {
    local img=$1 copy
    trap '' PIPE
    copy=${img%/*}/copy-$BASHPID.qcow2
    cp -- "$img" "$copy" || return 1
    loadvm_once "$copy" true || { rm -f -- "$copy"; return 1; }
    rm -f -- "$copy"
    echo "median_us=$LV_ANSWER_US mean_us=$LV_ANSWER_US min_us=$LV_ANSWER_US n=1 total_us=$LV_TOTAL_US"
}

bench_sweep() {
    each_qemu bench_sweep_on
}

# bench_sweep_on BINARY: the sweeps on one QEMU, short runs (the targets)
# then long runs (one round, for reference).
bench_sweep_on() {
    local v
    v=$(qemu_version "$1")
    need_warm
    section "sweep of $SWEEP_N runs from one warm state on QEMU $v: qemu.sweep{} (one worker per core: $(nproc)) and qemu.sweep{workers=1} from a checkpoint vs a bash loop of qemu-system-x86_64 -loadvm ($SWEEP_ROUNDS rounds, order alternated)"
    sweep_sides "short runs" "$WORKLOAD" "$SWEEP_ROUNDS" 1
    SWEEP_ROUNDS=1 sweep_sides "long runs" "$WORKLOAD_LONG" 1 0
}

# sweep_sides LABEL CMD ROUNDS TARGETS: the three sides with CMD as each
# run's guest command; TARGETS=1 prints the ratios against their targets.
sweep_sides() {
    local label=$1 cmd=$2 rounds=$3 targets=$4
    echo "$label: each run restores, vm.console:run('$cmd'), quits"
    local wd=("$QSHELL" tests/bench/guest_bench.lua sweep "$WARM/ckpt" default "$SWEEP_N" "$cmd")
    local w1=("$QSHELL" tests/bench/guest_bench.lua sweep "$WARM/ckpt" 1 "$SWEEP_N" "$cmd")
    local lp=(loop_sweep "$SWEEP_N" "$WARM/warm.qcow2" "$cmd")
    local r side order md=() m1=() ml=()
    for ((r = 1; r <= rounds; r++)); do
        if ((r % 2)); then order="wd w1 lp"; else order="lp w1 wd"; fi
        for side in $order; do
            case $side in
            wd) run "sweep workers=default" "${wd[@]}"; md+=("$MED") ;;
            w1) run "sweep workers=1" "${w1[@]}"; m1+=("$MED") ;;
            lp) run "bash loop -loadvm" "${lp[@]}"; ml+=("$MED") ;;
            esac
        done
    done
    local td t1 tl rdl r1l
    td=$(median "${md[@]}") t1=$(median "${m1[@]}") tl=$(median "${ml[@]}")
    rdl=$(ratio "$tl" "$td") r1l=$(ratio "$tl" "$t1")
    if [ "$targets" = 1 ]; then
        printf '%s, %d runs: workers=1 %s runs/min, default workers %s runs/min, shell loop with -loadvm %s runs/min; workers=1/loop %sx (target >= 1.5x) %s, default/loop %sx (target >= 2.5x) %s\n' \
            "$label" "$SWEEP_N" "$(per_min "$t1")" "$(per_min "$td")" "$(per_min "$tl")" \
            "$r1l" "$(verdict "$r1l >= 1.5")" "$rdl" "$(verdict "$rdl >= 2.5")"
    else
        printf '%s, %d runs: workers=1 %s runs/min, default workers %s runs/min, shell loop with -loadvm %s runs/min; workers=1/loop %sx, default/loop %sx (for reference)\n' \
            "$label" "$SWEEP_N" "$(per_min "$t1")" "$(per_min "$td")" "$(per_min "$tl")" "$r1l" "$rdl"
    fi
    printf '  (whole sweep: default workers %.1f s, workers=1 %.1f s, loop %.1f s)\n' \
        "$(awk -v v="$td" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$t1" 'BEGIN { print v / 1e6 }')" \
        "$(awk -v v="$tl" 'BEGIN { print v / 1e6 }')"
}

bench_restore() {
    need_warm
    section "restore to a running guest: qemu.launch{restore=ckpt} + vm.console:run(\"true\") vs qemu-system-x86_64 -loadvm on a copied image to the answer of the same command ($RESTORE_ROUNDS x 1 per side, alternated)"
    local qs=("$QSHELL" tests/bench/guest_bench.lua restore "$WARM/ckpt")
    local lv=(loadvm_copy "$WARM/warm.qcow2")
    local ROUNDS=$RESTORE_ROUNDS
    alternate "checkpoint restore" qs "-loadvm of a copy" lv
    local c=$A_MED l=$B_MED
    printf 'restore to a running guest: checkpoint %.2f s, -loadvm of a copied image %.2f s, ratio %sx\n' \
        "$(awk -v v="$c" 'BEGIN { print v / 1e6 }')" "$(awk -v v="$l" 'BEGIN { print v / 1e6 }')" \
        "$(ratio "$c" "$l")"
}

# Shared restores, per QEMU: a 2 GiB guest with 1.2 GiB of data in its RAM
# (guestmem.fill).  The checkpoint against QEMU's own migration of the same
# state to a file; launch to the guest answering on its console from that
# checkpoint against the same guest idle (about 64 MiB in use) and against
# a bare QEMU start with the same options (to QMP ready); the summed Pss of
# N VMs restored at once against one VM's.
bench_memory() {
    need_guest
    each_qemu bench_memory_on
}

bench_memory_on() {
    local v d out mib=${BENCH_MEM_MIB:-1216} n=${BENCH_MEM_VMS:-8}
    v=$(qemu_version "$1")
    section "shared restores on QEMU $v: a 2 GiB guest with $mib MiB of data in its RAM"
    d=$(mktemp -d "$OUT/mem.XXXXXX")
    CLEANUP+=("$d")
    out=$(QSHELL_PATH="$ROOT/tests/lib/?.lua" "$QSHELL" tests/bench/guest_bench.lua memory "$mib" "$d" "$n" 2>&1) ||
        die "memory bench on QEMU $v: $out"
    out=$(grep '^raw_save_us=' <<<"$out")
    if [ "$VERBOSE" = 1 ]; then echo "    $out"; fi
    local k
    declare -A f
    for k in raw_save_us ckpt_us verify_us raw_bytes ram_data state_bytes big_us idle_us bare_us running_us \
        one_pss sum_pss nvms backing; do
        f[$k]=$(sed -n "s/.*\b$k=\([^ ]*\).*/\1/p" <<<"$out")
        [ -n "${f[$k]}" ] || die "memory bench printed no $k: $out"
    done
    local r
    r=$(ratio "${f[ckpt_us]}" "${f[raw_save_us]}")
    printf 'checkpoint %.2f s vs QEMU migrating the same state to a file %.2f s: ratio %sx (target <= 1.3x) %s\n' \
        "$(awk -v v="${f[ckpt_us]}" 'BEGIN{print v/1e6}')" "$(awk -v v="${f[raw_save_us]}" 'BEGIN{print v/1e6}')" \
        "$r" "$(verdict "$r <= 1.3")"
    printf '  the checkpoint: RAM file %.0f MB of data, state %.1f MB (the raw state %.0f MB); verify %.2f s\n' \
        "$(awk -v v="${f[ram_data]}" 'BEGIN{print v/1e6}')" "$(awk -v v="${f[state_bytes]}" 'BEGIN{print v/1e6}')" \
        "$(awk -v v="${f[raw_bytes]}" 'BEGIN{print v/1e6}')" "$(awk -v v="${f[verify_us]}" 'BEGIN{print v/1e6}')"
    r=$(ratio "${f[big_us]}" "${f[idle_us]}")
    printf 'restore to an answer on the console (RAM %s): %s MiB in use %.3f s vs 64 MiB in use %.3f s: ratio %sx (target <= 1.3x) %s\n' \
        "${f[backing]}" "$mib" "$(awk -v v="${f[big_us]}" 'BEGIN{print v/1e6}')" \
        "$(awk -v v="${f[idle_us]}" 'BEGIN{print v/1e6}')" "$r" "$(verdict "$r <= 1.3")"
    r=$(ratio "${f[big_us]}" "${f[bare_us]}")
    printf '  vs a bare QEMU start with the same options (to QMP ready) %.3f s: ratio %sx (target <= 1.3x) %s\n' \
        "$(awk -v v="${f[bare_us]}" 'BEGIN{print v/1e6}')" "$r" "$(verdict "$r <= 1.3")"
    r=$(ratio "${f[running_us]}" "${f[bare_us]}")
    printf '  (launch to the restored guest running: %.3f s, ratio %sx to the bare start; the rest is TCG translating the code the first command runs)\n' \
        "$(awk -v v="${f[running_us]}" 'BEGIN{print v/1e6}')" "$r"
    r=$(ratio "${f[sum_pss]}" "${f[one_pss]}")
    printf 'memory: %s VMs restored at once, summed Pss %.0f MB vs one VM alone %.0f MB: ratio %sx (were the state loaded into each, as a plain -incoming does: %s x %.0f MB)\n' \
        "${f[nvms]}" "$(awk -v v="${f[sum_pss]}" 'BEGIN{print v/1e6}')" "$(awk -v v="${f[one_pss]}" 'BEGIN{print v/1e6}')" \
        "$r" "${f[nvms]}" "$(awk -v v="${f[ram_data]}" 'BEGIN{print v/1e6}')"
}

# The Slurm engine against the local one: N short runs (restore an empty
# VM's checkpoint, one QMP command, quit) on the three-node test cluster at
# Slurm's default limits, then on this machine with as many local workers
# as the cluster runs tasks at once (3 nodes x 2 CPUs).  Both run on the
# same two cores, so the ratio is the Slurm engine's overhead: submission,
# one qshell per array task, the node copy of the checkpoint, gathering.
# While each sweep runs, its submitter (the parent) is sampled once a
# second: its RSS as the rows arrive, and its CPU time at the end.
bench_cluster() {
    local n=${BENCH_CLUSTER_RUNS:-2000} d env
    section "cluster: $n short runs on the 3-node test cluster (Slurm's defaults) vs the local engine with the same 6 workers at once, one round each"
    tests/cluster/cluster.sh deps 2>/dev/null || die "cannot install slurm (tests/cluster/cluster.sh deps)"
    d=$(mktemp -d /tmp/qshell-cluster.XXXXXX) && chmod 755 "$d"
    CLUSTER_DIR=$d
    trap 'tests/cluster/cluster.sh stop "$CLUSTER_DIR" >/dev/null 2>&1; cleanup' EXIT
    CLEANUP+=("$d")
    env=$(tests/cluster/cluster.sh start "$d" 3 2>"$d/start.log") || die "the cluster did not start: $(tail -n 5 "$d/start.log")"
    eval "$env"
    "$QSHELL" -e "local vm <close> = qemu.launch { memory = '64M', disks = { qemu.disk.create('$CLUSTER_SHARED/d.qcow2', '8M') } }
                  vm:checkpoint('$CLUSTER_SHARED/empty.ckpt')" || die "cannot make the checkpoint"
    cat >"$CLUSTER_SHARED/sweep.lua" <<EOF
-- make bench's cluster sweep: qshell run sweep.lua slurm|local OUT
local engine, out = arg[1], arg[2]
local xs = {}
for i = 1, $n do xs[i] = i end
local spec = { from = "$CLUSTER_SHARED/empty.ckpt", out = out, engine = engine, matrix = { x = xs }, progress = false,
               run = function(vm) return { state = vm:qmp("query-status").status } end }
if engine == "slurm" then
  spec.slurm = { shared = { "$CLUSTER_SHARED", "$CLUSTER_SHARED_ELSEWHERE" } }
else
  spec.workers = 6
end
local r = qemu.sweep(spec)
assert(r.ok == $n, string.format("%d ok, %d failed", r.ok, r.failed))
EOF
    cluster_side slurm "$d" "$n"
    local sl_us=$SIDE_US sl_cpu=$SIDE_CPU sl_peak=$SIDE_PEAK sl_rss=$SIDE_RSS
    cluster_side local "$d" "$n"
    local lo_us=$SIDE_US lo_cpu=$SIDE_CPU lo_peak=$SIDE_PEAK lo_rss=$SIDE_RSS
    local r
    r=$(ratio "$lo_us" "$sl_us")
    printf '%d runs: Slurm engine %.0f runs/min (%.0f s), local engine with 6 workers %.0f runs/min (%.0f s): Slurm/local %sx (target >= 0.8x) %s\n' \
        "$n" "$(awk -v n="$n" -v t="$sl_us" 'BEGIN { print n * 60e6 / t }')" "$(awk -v t="$sl_us" 'BEGIN { print t / 1e6 }')" \
        "$(awk -v n="$n" -v t="$lo_us" 'BEGIN { print n * 60e6 / t }')" "$(awk -v t="$lo_us" 'BEGIN { print t / 1e6 }')" \
        "$r" "$(verdict "$r >= 0.8")"
    printf '  the Slurm submitter: %.1f s CPU, peak RSS %.1f MB; RSS (MB) at 1/4, 1/2, 3/4 and all of the rows: %s\n' \
        "$sl_cpu" "$(awk -v k="$sl_peak" 'BEGIN { print k / 1024 }')" "$sl_rss"
    printf '  the local engine'"'"'s parent: %.1f s CPU, peak RSS %.1f MB; RSS (MB) at 1/4, 1/2, 3/4 and all of the rows: %s\n' \
        "$lo_cpu" "$(awk -v k="$lo_peak" 'BEGIN { print k / 1024 }')" "$lo_rss"
    tests/cluster/cluster.sh stop "$d" >/dev/null 2>&1 || true
}

# cluster_side ENGINE DIR N: one cluster-bench sweep, its parent sampled each
# second; sets SIDE_US (wall), SIDE_CPU (s), SIDE_PEAK (kB), SIDE_RSS (the RSS
# in MB when a quarter, half, three quarters and all of the rows were in).
cluster_side() {
    local engine=$1 d=$2 n=$3 out pid t0 rows rss marks=() next=1 stat hwm cpu clk
    out=$CLUSTER_SHARED/$engine.csv
    clk=$(getconf CLK_TCK)
    t0=$EPOCHREALTIME
    "$QSHELL" run "$CLUSTER_SHARED/sweep.lua" "$engine" "$out" >"$d/$engine.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        stat=$(cat "/proc/$pid/stat" 2>/dev/null || true)
        [ -n "$hwm" ] && SIDE_PEAK=$hwm
        [ -n "$stat" ] && cpu=$(awk -v c="$clk" '{ sub(/^.*\) /, ""); print ($12 + $13) / c }' <<<"$stat")
        rows=0
        if [ -f "$out" ]; then rows=$(($(wc -l <"$out") - 1)); fi
        while ((next <= 4 && rows * 4 >= n * next)) && [ -n "$rss" ]; do
            marks+=("$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')")
            next=$((next + 1))
        done
        sleep 1
    done
    wait "$pid" || die "the $engine sweep failed: $(tail -n 20 "$d/$engine.log")"
    # the last rows came in after the last sample: its RSS stands for them
    while ((next <= 4)) && [ -n "$rss" ]; do
        marks+=("$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')")
        next=$((next + 1))
    done
    SIDE_US=$(us "$t0" "$EPOCHREALTIME")
    SIDE_CPU=${cpu:-0}
    SIDE_RSS=${marks[*]}
    if [ "$VERBOSE" = 1 ]; then echo "    $engine: $(tail -n 3 "$d/$engine.log")"; fi
}

# Record and replay, per QEMU: one run of a shell loop (about 2.5e8
# instructions) from a checkpoint, plain, recorded and replayed, insn
# exact=on on each (BENCH_REPLAY_ROUNDS rounds, medians): the log's bytes
# per million instructions, the replay against the recording, the
# recording against the plain run and against the same icount unrecorded
# (its console input is typed a byte per echo).
bench_replay() {
    need_guest
    each_qemu bench_replay_on
}

bench_replay_on() {
    local v d out
    v=$(qemu_version "$1")
    section "record and replay on QEMU $v: one run from a checkpoint (${BENCH_REPLAY_ROUNDS:-3} rounds, medians)"
    d=$(mktemp -d "$OUT/replay.XXXXXX")
    CLEANUP+=("$d")
    out=$(QSHELL_PATH="$ROOT/tests/lib/?.lua" "$QSHELL" tests/bench/guest_bench.lua replay "$d" \
        "${BENCH_REPLAY_ROUNDS:-3}" 2>&1) || die "replay bench on QEMU $v: $out"
    out=$(grep '^plain_us=' <<<"$out")
    local k
    declare -A f
    for k in plain_us icount_us record_us replay_us log_bytes insns; do
        f[$k]=$(sed -n "s/.*\b$k=\([^ ]*\).*/\1/p" <<<"$out")
        [ -n "${f[$k]}" ] || die "replay bench printed no $k: $out"
    done
    printf 'recording: %s bytes of log for %.1f M instructions: %.0f bytes per million\n' "${f[log_bytes]}" \
        "$(awk -v v="${f[insns]}" 'BEGIN{print v/1e6}')" \
        "$(awk -v b="${f[log_bytes]}" -v n="${f[insns]}" 'BEGIN{print b/(n/1e6)}')"
    printf 'replay %.2f s vs the recorded run %.2f s: ratio %sx; the recorded run vs the same run unrecorded %.2f s: ratio %sx\n' \
        "$(awk -v v="${f[replay_us]}" 'BEGIN{print v/1e6}')" "$(awk -v v="${f[record_us]}" 'BEGIN{print v/1e6}')" \
        "$(ratio "${f[replay_us]}" "${f[record_us]}")" "$(awk -v v="${f[plain_us]}" 'BEGIN{print v/1e6}')" \
        "$(ratio "${f[record_us]}" "${f[plain_us]}")"
    printf '  (the same run under the recording'"'"'s icount, shift=2,sleep=on, unrecorded: %.2f s; the recorded run vs it: ratio %sx)\n' \
        "$(awk -v v="${f[icount_us]}" 'BEGIN{print v/1e6}')" "$(ratio "${f[record_us]}" "${f[icount_us]}")"
}

BENCHES=(startup qmp_rt launch results boot snapshot plugin lua sweep restore memory replay distro cluster)

build
start=$SECONDS
for b in ${BENCH_ONLY:-${BENCHES[@]}}; do
    declare -F "bench_$b" >/dev/null || die "no benchmark '$b' (have: ${BENCHES[*]})"
    "bench_$b"
done
printf '\n(%d s)\n' $((SECONDS - start))
