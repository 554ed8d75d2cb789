#!/usr/bin/env bash
# tests/fresh.sh - `make test-fresh`: the README's commands on a bare
# Debian 12 machine, for real.
#
# 1. A minimal Debian 12 root from the distribution's packages (mmdebstrap,
#    variant "important": what debootstrap and a minimal install give - no
#    compiler, no make, no QEMU, no -dev package), cached as a tarball
#    outside the checkout, keyed by its inputs (suite, variant, the host's
#    package sources and apt options, this recipe's version).
# 2. A fresh copy of it per run, with the checkout's committed files (git
#    archive HEAD) in /root/qshell.
# 3. In a private mount and PID namespace (unshare): /proc, /sys, /dev, a new
#    /dev/pts instance and a tmpfs /tmp mounted, the host's caches of what
#    does not change bound in (apt archives, QEMU 10.0 packages, QEMU source
#    and its build: tests/qemu/*.sh), then chroot.  Everything is
#    unmounted, and every process started inside (daemons included) is
#    killed, when the namespace ends - also on an error or Ctrl-C.
# 4. Inside: `apt-get install make` where make is missing (the one step the
#    README asks of a machine without make), then each `make ...` line of the
#    README's first code block, in order; their output is checked: the
#    demo's results table, the test runner's last line.
#
# Environment: QSHELL_CACHE (default $XDG_CACHE_HOME/qshell or ~/.cache/qshell),
# FRESH_KEEP=1 keeps the root after the run (its path is printed).
# Needs root (mmdebstrap's root mode, unshare, chroot).  Ends with
# "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

RECIPE=1                 # bump when the root's recipe changes
SUITE=bookworm
VARIANT=important

log() { printf 'test-fresh: %s\n' "$*" >&2; }
die() { log "error: $*"; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (chroot, mount and PID namespaces)"
command -v git >/dev/null && git -C "$repo" rev-parse --verify -q HEAD >/dev/null ||
    die "needs a git checkout (only committed files are copied)"
for t in unshare chroot findmnt; do command -v $t >/dev/null || die "$t not found (apt-get install util-linux coreutils)"; done
if ! command -v mmdebstrap >/dev/null; then
    log "installing mmdebstrap"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null; }; } ||
        die "cannot install mmdebstrap"
fi

cache=${QSHELL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qshell}/fresh
mkdir -p "$cache/apt-archives"

# --- 1. the minimal root, cached by its inputs ------------------------------
# The host's Debian package sources (what apt here uses), as one-line entries.
mapfile -t sources < <(apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)' \
    'Identifier: Packages' | sort -u)
[ ${#sources[@]} -gt 0 ] || die "no package sources (apt-get update first)"
# apt options the host needs to reach them (a proxy, a snapshot mirror's dates).
mapfile -t aptopts < <(apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy)' || true)
key=$(printf '%s\n' "$RECIPE" "$SUITE" "$VARIANT" "${sources[@]}" "${aptopts[@]}" | sha256sum | cut -c1-16)
tarball=$cache/root-$SUITE-$VARIANT-$key.tar
t0=$(date +%s)
if [ ! -s "$tarball" ]; then
    log "building the minimal $SUITE root ($VARIANT) into $tarball"
    args=(--variant="$VARIANT" --mode=root --format=tar)
    for o in "${aptopts[@]}"; do args+=(--aptopt="$o"); done
    rm -f "$tarball.tmp"
    mmdebstrap "${args[@]}" "$SUITE" "$tarball.tmp" "${sources[@]}" > "$cache/mmdebstrap.log" 2>&1 ||
        { tail -n 20 "$cache/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $cache/mmdebstrap.log)"; }
    mv "$tarball.tmp" "$tarball"
    # Older roots of other keys are stale.
    find "$cache" -maxdepth 1 -name "root-*.tar" ! -path "$tarball" -delete
    log "root built in $(( $(date +%s) - t0 )) s"
else
    log "minimal root from cache: $tarball"
fi

# --- 2. a fresh copy with the checkout ---------------------------------------
work=$(mktemp -d "${FRESH_DIR:-/var/tmp}/qshell-fresh.XXXXXX")
root=$work/root
mounted() { grep -qF " $root" /proc/self/mounts; }
cleanup() {
    if mounted; then
        log "mounts left under $root; not removing it: $(grep -F " $root" /proc/self/mounts | cut -d' ' -f2 | tr '\n' ' ')"
        return
    fi
    if [ "${FRESH_KEEP:-}" = 1 ]; then log "kept $root"; return; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$root"
tar -x -C "$root" -f "$tarball"
mkdir -p "$root/root/qshell"
git -C "$repo" archive --format=tar HEAD | tar -x -C "$root/root/qshell"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# What the stock root lacks that matters here: say so, and check it is true.
for tool in make gcc qemu-system-x86_64 pkg-config; do
    if [ -e "$root/usr/bin/$tool" ]; then die "the minimal root already has $tool: not a bare machine"; fi
done

# The README's commands: each `make ...` line of its first code block.
mapfile -t cmds < <(awk '/^    [^ ]/ { inblock = 1; sub(/^    /, ""); sub(/ *#.*/, ""); print; next }
                         inblock && /^$/ { next } inblock { exit }' README.md | grep '^make ')
[ ${#cmds[@]} -ge 2 ] || die "README.md's first code block has no make commands"
log "README's commands: ${cmds[*]}"

# --- 3. run them inside ------------------------------------------------------
inner=$(cat <<'EOF'
set -e
cd /root/qshell
export DEBIAN_FRONTEND=noninteractive
if ! command -v make >/dev/null; then
    echo "== apt-get install make"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends make >/dev/null
fi
n=0
for c in "$@"; do
    n=$((n + 1))
    echo "== $c"
    start=$(date +%s)
    set +e
    $c > "/root/out-$n.txt" 2>&1
    rc=$?
    set -e
    echo "$rc" > "/root/rc-$n.txt"
    echo "== exit $rc after $(( $(date +%s) - start )) s"
    tail -n 40 "/root/out-$n.txt"
done
EOF
)
# Inside, the distro tier is left out (QSHELL_TEST_SKIP): its Debian image
# would come from the host's cache, its checks are the ones the host's
# make test runs, and what a bare machine needs for it (mmdebstrap) is in
# tests/deps.sh like the rest; it would cost 3 to 4 minutes.  The
# QEMU-facing tiers run on the distribution's QEMU only (QSHELL_TEST_QEMUS):
# a second QEMU tests nothing of the bare machine, and the host's make test
# runs them on QEMU 10.0 too; it would cost 8 to 9 minutes.  The soak and
# cluster tiers are left out too: they test qshell under faults and
# Slurm's side, not the machine (the guest tier's one-node Slurm cluster
# needs the same packages), and the host's make test runs both; 3 to 4
# minutes.
log "running in $root"
t1=$(date +%s)
set +e
unshare --mount --pid --fork --propagation private -- bash -c '
set -e
root=$1 archives=$2 qcache=$3; shift 3
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --bind "$archives" "$root/var/cache/apt/archives"
# The tests cache what does not change outside the checkout (QEMU 10.0
# packages, QEMU source and its build): shared with the host, like apt
# archives.  (No apostrophes in this block: it is one single-quoted word.)
for d in qemu qemu-src; do
    mkdir -p "$qcache/$d" "$root/root/.cache/qshell/$d"
    mount --bind "$qcache/$d" "$root/root/.cache/qshell/$d"
done
exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb QSHELL_TEST_SKIP="distro soak cluster" QSHELL_TEST_QEMUS=system \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$0" inner "$@"
' "$inner" "$root" "$cache/apt-archives" "${cache%/fresh}" "${cmds[@]}" > "$work/run.log" 2>&1
rc=$?
set -e
cat "$work/run.log"
log "inside: exit $rc after $(( $(date +%s) - t1 )) s (whole test-fresh: $(( $(date +%s) - t0 )) s)"

# --- 4. what a new user would check -------------------------------------------
pass=0 fail=0
check() { # NAME: passes when the rest of the arguments (a command) succeed
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "  FAIL $name"; fi
}
[ "$rc" -eq 0 ] || { echo "  the chroot run failed (exit $rc)"; }
n=0
for c in "${cmds[@]}"; do
    n=$((n + 1))
    out=$root/root/out-$n.txt
    check "'$c' exited 0" grep -qx 0 "$root/root/rc-$n.txt"
    case $c in
    "make demo")
        check "make demo printed the results table" grep -Eq '^run +repeat +plugin +size +status +wall_s' "$out"
        check "make demo: 12 runs ok" grep -q '^12 runs: 12 ok, 0 failed' "$out"
        check "make demo printed the summary with intervals" grep -Eq '^plugin +size +metric +n +failed +mean +ci95' "$out"
        check "make demo compared plugin on with off" grep -q '^ratio = b / a; a = plugin=off' "$out"
        check "make demo drew a PNG" bash -c "head -c 8 '$root/root/qshell/build/demo/workload.png' | od -An -c | grep -q 'P   N   G'"
        ;;
    "make test")
        check "make test ended with 'N passed, 0 failed'" bash -c "tail -n 1 '$out' | grep -Eq '^[0-9]+ passed, 0 failed'"
        ;;
    esac
done
if mounted; then fail=$((fail + 1)); echo "  FAIL mounts left behind under $root"; fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
