#!/usr/bin/env bash
# tests/qemu/source.sh [SUITE] - QEMU's source tree, as the distribution ships
# it (the Debian source package of qemu in SUITE, default bookworm, with
# Debian's patches applied), fetched with an apt configuration of our own
# (deb-src for SUITE; the system's apt is not touched) and unpacked into
#   CACHE/qemu-src/<version>/qemu    (CACHE: $QSHELL_CACHE or ~/.cache/qshell)
# Prints the tree's path.  A second run with the same version available is a
# look-up only.  Progress goes to stderr.  When the mirror has the upstream
# tarball but not the suite's .dsc (seen for bookworm-backports), the tree is
# the upstream tarball without Debian's patches; DIR/patches says which.
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
if (cd "$dir/dl" && apt-get "${opts[@]}" source --download-only "qemu=$ver" >/dev/null 2>"$dir/dl/apt.err"); then
    dsc=$(ls "$dir"/dl/*.dsc | head -n 1)
    # --no-copy: the tarballs stay in dl/ (removed below), not beside the tree.
    dpkg-source --no-copy --no-check -x "$dsc" "$tree" >/dev/null || die "dpkg-source -x $dsc failed"
    echo "debian" > "$dir/patches"
else
    # A mirror may carry the upstream tarball (shared with another suite's
    # upload) but not this suite's .dsc and Debian diff: take the tarball,
    # checked against the source index's SHA-256, without Debian's patches.
    sed 's/^/  /' "$dir/dl/apt.err" >&2
    uris=$(apt-get "${opts[@]}" source --print-uris "qemu=$ver" 2>/dev/null) || die "apt-get source failed"
    uri=$(grep -m 1 -E "^'[^']*\.orig\.tar\.[a-z0-9]+'" <<<"$uris") ||
        die "apt-get source failed, and the source index names no upstream tarball"
    url=$(cut -d"'" -f2 <<<"$uri")
    read -r name _ sum <<<"$(cut -d"'" -f3- <<<"$uri")"
    log "no .dsc for $ver on the mirror: the upstream tarball $name alone (Debian's patches not applied)"
    /usr/lib/apt/apt-helper "${opts[@]}" download-file "$url" "$dir/dl/$name" "$sum" >/dev/null ||
        die "cannot download $url"
    mkdir -p "$tree"
    tar -xf "$dir/dl/$name" -C "$tree" --strip-components=1 || die "cannot unpack $name"
    echo "upstream tarball only ($name): the mirror has no .dsc for $ver" > "$dir/patches"
fi
rm -rf "$dir/dl"
[ -f "$tree/include/qemu/qemu-plugin.h" ] || die "$tree has no include/qemu/qemu-plugin.h"
echo "$ver" > "$dir/version"
touch "$dir/complete"
echo "$tree"
