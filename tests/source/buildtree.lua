-- A QEMU run from its build tree (tests/qemu/build.sh: the distribution's
-- source, built, never installed), as a developer runs a QEMU of their own:
-- qshell finds firmware for it, says what it is, boots the guest on it with
-- a plugin, and restores a checkpoint of the system QEMU on it.
local T = require "t"

local B = os.getenv("QSHELL_TEST_QEMU_SOURCE")
if not B or B == "" then
  io.stderr:write("  buildtree: skipped; QSHELL_TEST_QEMU_SOURCE names a QEMU build tree's binary (tests/run.sh source)\n")
  print("0 passed, 0 failed, 1 skipped")
  os.exit(0)
end
local tmp = T.tmpdir()
local builddir = B:match("^(.*)/[^/]+$")

T.test("qemu.version() of a build tree's binary: its version and its source", function()
  local v = qemu.version(B)
  T.eq(v.path, require("qshell.os").realpath(B))
  local sys = qemu.version("qemu-system-x86_64")
  -- the distribution's source of the system QEMU: the same release
  T.eq(v.major, sys.major)
  T.eq(v.minor, sys.minor)
  T.ok(v.build_tree ~= nil, "build_tree is set")
  T.ok(T.exists(v.build_tree .. "/include/qemu/qemu-plugin.h"), "build_tree names the source dir")
  T.eq(sys.build_tree, nil)
end)

T.test("the tree has no firmware of its own; QEMU alone cannot start, qshell adds the system's", function()
  local src = qemu.version(B).build_tree
  T.ok(not T.exists(src .. "/pc-bios/bios-256k.bin"), "the distribution's source has no prebuilt BIOS")
  local rc, out = T.sh("timeout 10 " .. B .. " -nodefaults -display none -S -no-reboot 2>&1 </dev/null")
  T.ok(rc ~= 0, "QEMU without -L does not start")
  T.match(out, "bios%-256k%.bin")
  local vm <close> = qemu.launch { binary = B, console = false }
  local argv = table.concat(vm.argv, " ")
  T.match(argv, "%-L /usr/share/qemu")
  T.eq(vm:status(), "running")
end)

T.test("the default guest boots on it with the insn plugin; vm.version is the build's", function()
  local vm <close> = qemu.guest.launch { binary = B, plugins = { { name = "insn" } } }
  T.eq(vm.version, qemu.version(B).text)
  local out, st = vm.console:run("uname -s")
  T.eq(st, 0)
  T.match(out, "Linux")
  vm:quit()
  T.ok(vm:plugin_result("insn").total > 1e6, "the plugin counted the boot")
end)

T.test("QSHELL_QEMU may name it", function()
  local rc, out = T.sh("QSHELL_QEMU=" .. B .. " ./qshell -e 'local vm <close> = qemu.launch{console=false} " ..
                       "print(vm.version, vm.argv[1])' 2>&1")
  T.eq(rc, 0, out)
  T.match(out, qemu.version(B).text:gsub("%p", "%%%0") .. "%s+" .. B:gsub("%p", "%%%0"))
end)

T.test("a checkpoint of the system QEMU restores on the build (same machine type)", function()
  local ckpt = tmp .. "/sys.ckpt"
  do
    local vm <close> = qemu.guest.launch {}
    vm.console:run("echo before-checkpoint > /tmp/mark")
    vm:checkpoint(ckpt)
  end
  local vm <close> = qemu.launch { restore = ckpt, binary = B }
  T.eq(vm.version, qemu.version(B).text)
  local out, st = vm.console:run("cat /tmp/mark")
  T.eq(st, 0)
  T.match(out, "before%-checkpoint")
end)

T.run()
