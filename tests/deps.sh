#!/usr/bin/env bash
# tests/deps.sh - install the distribution packages qshell needs, if missing.
# As root (or with password-less sudo) it runs apt-get; otherwise it prints
# the one command to run.  `make deps` calls it; `make test` depends on it.
set -u

pkgs=(
    gcc make pkg-config
    liblua5.4-dev lua5.4 libjson-c-dev libedit-dev
    qemu-system-x86 qemu-utils
    e2fsprogs busybox-static fdisk
)

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
