#!/usr/bin/env bash
# tests/qemu/source.sh [SUITE] - QEMU's source tree, as the distribution ships
# it (the Debian source package of qemu in SUITE, default bookworm, with
# Debian's patches applied), fetched with an apt configuration of our own
# (deb-src for SUITE; the system's apt is not touched) and unpacked into
#   CACHE/qemu-src/<version>/qemu    (CACHE: $QSHELL_CACHE or ~/.cache/qshell)
# Prints the tree's path.  A second run with the same version available is a
# look-up only.  Progress goes to stderr.
set -euo pipefail

SUITE=${1:-bookworm}
cache=${QSHELL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qshell}/qemu-src
log() { printf 'source.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v apt-get >/dev/null || die "needs apt-get (Debian)"
command -v dpkg-source >/dev/null || die "needs dpkg-source (apt-get install dpkg-dev)"

. "$(dirname "$0")/apt.sh"
apt=$cache/apt-$SUITE
private_apt "$apt" deb-src "$SUITE"
opts=("${apt_opts[@]}")
ver=$(apt-cache "${opts[@]}" showsrc --only-source qemu 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n 1)
[ -n "$ver" ] || die "no source package qemu in $SUITE"
dir=$cache/$(printf '%s' "$ver" | tr -c 'A-Za-z0-9._-' '_')
tree=$dir/qemu
if [ -f "$dir/complete" ] && [ -f "$tree/include/qemu/qemu-plugin.h" ]; then
    echo "$tree"
    exit 0
fi
log "QEMU $ver source from $SUITE into $dir"
rm -rf "$dir"
mkdir -p "$dir/dl"
(cd "$dir/dl" && apt-get "${opts[@]}" source --download-only "qemu=$ver" >/dev/null) || die "apt-get source failed"
dsc=$(ls "$dir"/dl/*.dsc | head -n 1)
dpkg-source --no-check -x "$dsc" "$tree" >/dev/null || die "dpkg-source -x $dsc failed"
rm -rf "$dir/dl"
[ -f "$tree/include/qemu/qemu-plugin.h" ] || die "$tree has no include/qemu/qemu-plugin.h"
echo "$ver" > "$dir/version"
touch "$dir/complete"
echo "$tree"
