#!/usr/bin/env bash
# tests/install.sh - `make install` gives a working tool that does not need
# its source tree.  A copy of the tree is built and installed into a temp
# PREFIX (and staged with DESTDIR), the copy is moved away, and the
# installed qshell boots the default guest (built on first use into
# $XDG_DATA_HOME/qshell/guest) with the insn plugin; its man pages render
# (qshell(1), and the Lua reference qshell-lua(7) by name);
# `make uninstall` removes every file install put there.
set -u
cd "$(dirname "$0")/.."
pass=0 fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "  FAIL $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 15 | sed 's/^/    /'; }

# The tree as a user has it (no build outputs), built from scratch.
src=$tmp/src
mkdir -p "$src"
tar -c --exclude=./build --exclude=./qshell --exclude=./.git . | tar -x -C "$src"
prefix=$tmp/prefix
if out=$(make -C "$src" -j2 install PREFIX="$prefix" 2>&1); then ok; else bad "make install" "$out"; fi

# DESTDIR stages under a prefix without touching it.
if out=$(make -C "$src" -s install DESTDIR="$tmp/stage" PREFIX=/opt/qs 2>&1) &&
    [ -x "$tmp/stage/opt/qs/bin/qshell" ] && [ -f "$tmp/stage/opt/qs/lib/qshell/plugins/libinsn.so" ] &&
    [ -x "$tmp/stage/opt/qs/share/qshell/guest/build.sh" ] && [ -f "$tmp/stage/opt/qs/share/man/man1/qshell.1" ] &&
    [ -f "$tmp/stage/opt/qs/share/qshell/scripts/warmup.lua" ] && [ ! -e /opt/qs ] &&
    [ -x "$tmp/stage/opt/qs/lib/qshell/qshell-roi" ] && [ -f "$tmp/stage/opt/qs/include/qshell-roi.h" ]; then
    ok
else
    bad "make install DESTDIR= stages every file under DESTDIR/PREFIX" "$out$(find "$tmp/stage" | head)"
fi

# No directory of the build tree in what the binary reads at run time
# (debug info may name it; .rodata and .data must not).
if readelf -p .rodata -p .data "$prefix/bin/qshell" 2>/dev/null | grep -qF "$src"; then
    bad "the installed binary has a build-tree path compiled in"
else
    ok
fi

# The source tree goes away.
mv "$src" "$tmp/moved"
rm -rf "$tmp/moved"

# The installed qshell on the default guest with the insn plugin.
data=$tmp/data
out=$(cd "$tmp" && env -u QSHELL_GUEST_DIR -u QSHELL_PLUGIN_DIR -u QSHELL_STDLIB XDG_DATA_HOME="$data" \
    timeout 600 "$prefix/bin/qshell" -e '
local p = require "qemu.util.paths"
print("layout", p.layout().kind, p.plugin_dir(), p.guest_dir())
local vm <close> = qemu.guest.launch { plugins = { { name = "insn" } } }
print("uname", (vm.console:run("uname -r")))
vm.console:send("poweroff -f\r")
vm:wait { timeout = 60 }
print("insn", vm:plugin_result("insn").total)' 2>&1)
if grep -q "^layout	installed	$prefix/lib/qshell/plugins	$data/qshell/guest$" <<<"$out" &&
    grep -Eq '^uname	[0-9]+\.[0-9]+' <<<"$out" && grep -Eq '^insn	[0-9]{7,}$' <<<"$out" &&
    [ -f "$data/qshell/guest/guest.lua" ]; then
    ok
else
    bad "the installed qshell boots the default guest with the insn plugin, source tree gone" "$out"
fi

# The example scripts are installed and run from anywhere.
out=$(cd "$tmp" && XDG_DATA_HOME="$data" timeout 300 "$prefix/bin/qshell" run \
    "$prefix/share/qshell/scripts/warmup.lua" "$tmp/new/dir/warm.ckpt" 2>&1)
if [ $? -eq 0 ] && [ -f "$tmp/new/dir/warm.ckpt/manifest.json" ]; then ok; else
    bad "the installed warmup.lua writes a checkpoint into a dir that did not exist" "$out"; fi

# The man page renders cleanly.
man1=$prefix/share/man/man1/qshell.1
warn=$(groff -mandoc -ww -z "$man1" 2>&1)
page=$(MANWIDTH=80 man -l "$man1" 2>&1)
if [ -z "$warn" ] && grep -q "^NAME" <<<"$page" && grep -q "qshell — scriptable QEMU experiments" <<<"$page" &&
    grep -q "EXIT STATUS" <<<"$page"; then ok; else bad "man -l qshell.1 renders cleanly" "$warn$page"; fi

# The Lua reference: `man qshell-lua` finds it by name under the prefix,
# with every entry help() has (qemu.launch, a VM method); the LuaCATS file
# for editors is installed beside the guest and is Lua.
page=$(MANPATH=$prefix/share/man MANWIDTH=100 man qshell-lua 2>&1)
warn=$(groff -mandoc -ww -z "$prefix/share/man/man7/qshell-lua.7" 2>&1)
if [ -z "$warn" ] && grep -q "qshell-lua - the Lua API of qshell" <<<"$page" && grep -q "qemu.launch(" <<<"$page" &&
    grep -q "vm:checkpoint(" <<<"$page"; then ok; else bad "man qshell-lua renders the Lua reference" "$warn$page"; fi
meta=$prefix/share/qshell/meta/qemu.lua
if head -n 1 "$meta" 2>/dev/null | grep -qx -- "---@meta qemu" && luac5.4 -p "$meta" 2>/dev/null &&
    grep -q "^function qemu.launch(" "$meta"; then ok; else bad "the LuaCATS annotations are installed" "$(head -n 5 "$meta" 2>&1)"; fi
out=$(cd "$tmp" && "$prefix/bin/qshell" doc qemu.disk.create 2>&1)
if [ $? -eq 0 ] && grep -q "^qemu.disk.create(" <<<"$out"; then ok; else bad "qshell doc NAME prints an entry" "$out"; fi

# uninstall removes exactly what install put there.
touch "$prefix/bin/not-ours"
if out=$(make -s -C . uninstall PREFIX="$prefix" 2>&1) &&
    [ "$(find "$prefix" -type f)" = "$prefix/bin/not-ours" ] && [ ! -e "$prefix/share/qshell" ] &&
    [ ! -e "$prefix/lib/qshell" ]; then ok; else
    bad "make uninstall removes every installed file and nothing else" "$out$(find "$prefix")"; fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
