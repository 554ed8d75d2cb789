#!/usr/bin/env bash
# tests/qemu/fetch.sh [SUITE] - a newer QEMU next to the distribution's, for
# the tests: qemu-system-x86 from Debian's SUITE (default bookworm-backports)
# downloaded with an apt configuration of our own (the system's apt and its
# installed QEMU are not touched) and extracted with dpkg -x into
#   CACHE/qemu/<version>/root        (CACHE: $QSHELL_CACHE or ~/.cache/qshell;
#                                     the version with ':' '+' '~' as '_')
# Prints the root's path.  Run it as
#   ROOT/usr/bin/qemu-system-x86_64 -L ROOT/usr/share/qemu -L ROOT/usr/share/seabios
# with QEMU_MODULE_DIR=ROOT/usr/lib/x86_64-linux-gnu/qemu (qemu.launch does
# this by itself for a binary in such a tree).  A second run with the same
# version available is a look-up only.  Progress goes to stderr.
set -euo pipefail

SUITE=${1:-bookworm-backports}
PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
cache=${QSHELL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qshell}/qemu
log() { printf 'fetch.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (Debian)"

. "$(dirname "$0")/apt.sh"
apt=$cache/apt-$SUITE
private_apt "$apt" deb "$SUITE"
opts=("${apt_opts[@]}")
ver=$(apt-cache "${opts[@]}" show --no-all-versions qemu-system-x86 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
[ -n "$ver" ] || die "qemu-system-x86 is not in $SUITE"
# The version as a directory name (no ':' '+' '~': paths end up in QEMU options).
dir=$cache/$(printf '%s' "$ver" | tr -c 'A-Za-z0-9._-' '_')
root=$dir/root
if [ -x "$root/usr/bin/qemu-system-x86_64" ] && [ -f "$dir/complete" ]; then
    echo "$root"
    exit 0
fi
log "QEMU $ver from $SUITE into $dir"
rm -rf "$dir"
mkdir -p "$dir/debs" "$root"
(cd "$dir/debs" && apt-get "${opts[@]}" download "${PKGS[@]}" >/dev/null) || die "apt-get download failed"
for d in "$dir"/debs/*.deb; do dpkg -x "$d" "$root"; done
rm -rf "$dir/debs"
"$root/usr/bin/qemu-system-x86_64" --version >/dev/null 2>&1 || die "the extracted QEMU does not run"
touch "$dir/complete"
echo "$root"
