#!/usr/bin/env bash
# tests/qemu/build.sh [SUITE] - a QEMU built from source, run from its build
# tree the way developers run theirs (./build/qemu-system-x86_64, never
# installed): the source of tests/qemu/source.sh (the distribution's, whose
# firmware blobs are removed: qshell must find firmware for it), configured
# for x86_64-softmmu with TCG plugins and nothing optional, built with ninja
# into SOURCE/build.  Rebuilt only when the source or the options change
# (SOURCE/build/qshell-stamp).  Prints the binary's path.  About 9 minutes
# on 2 cores the first time.
set -euo pipefail

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
src=$("$here/source.sh" "$@")
CONFIGURE=(--target-list=x86_64-softmmu --without-default-features --enable-tcg --enable-plugins
           --disable-docs --disable-werror --disable-install-blobs)
for t in meson ninja python3 cc pkg-config; do
    command -v "$t" >/dev/null || die "needs $t (make deps installs it)"
done
stamp="$(cat "$src/../version") ${CONFIGURE[*]}"
bin=$src/build/qemu-system-x86_64
if [ -x "$bin" ] && [ "$(cat "$src/build/qshell-stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$bin"
    exit 0
fi
log "building QEMU $(cat "$src/../version") in $src/build (about 9 minutes on 2 cores)"
rm -rf "$src/build"
mkdir -p "$src/build"
(cd "$src/build" && ../configure "${CONFIGURE[@]}" >configure.log 2>&1) ||
    { tail -n 20 "$src/build/configure.log" >&2; die "configure failed (log: $src/build/configure.log)"; }
(cd "$src/build" && ninja -j"$(nproc)" qemu-system-x86_64 >ninja.log 2>&1) ||
    { tail -n 30 "$src/build/ninja.log" >&2; die "ninja failed (log: $src/build/ninja.log)"; }
"$bin" --version >/dev/null || die "$bin does not run"
echo "$stamp" > "$src/build/qshell-stamp"
echo "$bin"
