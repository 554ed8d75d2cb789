#!/usr/bin/env bash
# tests/deps.sh [build|all] - install the distribution packages qshell needs,
# if missing: `build` what compiling needs (the Makefile runs it before it
# reads the package flags), `all` (the default) also what the demo and the
# tests run.  As root (or with password-less sudo) it runs apt-get; otherwise
# it prints the one command to run.  Nothing comes from outside the
# distribution's package repositories.
set -u

# libc6-dev is only a Recommends of gcc: without it there is no <stdio.h>.
# dosfstools and mtools build FAT disks (qemu.disk.populate fs="vfat", the
# cloud-init seeds), xorriso ISO 9660 seeds; python3-yaml reads the seeds'
# YAML back in the tests; mmdebstrap builds distribution images
# (qemu.image.build, the distro tier); gnuplot-nox draws `qshell results --plot`.
build_pkgs=(gcc libc6-dev make pkg-config liblua5.4-dev libjson-c-dev libedit-dev libssl-dev)
run_pkgs=(
    lua5.4 lua-lpeg qemu-system-x86 qemu-utils
    e2fsprogs busybox-static fdisk procps util-linux man-db
    dosfstools mtools xorriso python3-yaml mmdebstrap gnuplot-nox
    clang libclang-rt-14-dev llvm
    dpkg-dev meson ninja-build libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev
)
case ${1:-all} in
build) pkgs=("${build_pkgs[@]}") ;;
all) pkgs=("${build_pkgs[@]}" "${run_pkgs[@]}") ;;
*) echo "usage: $0 [build|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "qshell needs these packages: ${missing[*]}" >&2
    echo "run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q >/dev/null || { echo "apt-get update failed" >&2; exit 1; }
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { echo "apt-get install failed: ${missing[*]}" >&2; exit 1; }
