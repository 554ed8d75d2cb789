-- qemu.kernel against tests/fixtures/kernel-tree: a stand-in for a Linux
-- tree whose make targets behave like the kernel's (no compiler needed).
-- Each test builds in its own copy, so the tree in git stays clean.
local T = require "t"

local k = qemu.kernel
local tmp = T.tmpdir()
local FIXTURE = "tests/fixtures/kernel-tree"

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local n = 0
-- A fresh copy of the fixture tree.
local function tree()
  n = n + 1
  local dir = string.format("%s/tree%d", tmp, n)
  assert(T.sh(string.format("cp -r %s %s", FIXTURE, dir)) == 0)
  return dir
end

local function lines_of(path)
  local t = {}
  for line in (slurp(path) or ""):gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

T.test("build with defconfig: bzImage and vmlinux, the log streamed", function()
  local src = tree()
  local r = k.build { src = src, config = "defconfig" }
  T.eq(r.bzimage, src .. "/arch/x86/boot/bzImage")
  T.eq(r.vmlinux, src .. "/vmlinux")
  T.ok(T.exists(r.bzimage) and T.exists(r.vmlinux), "the images exist")
  T.eq(r.log, src .. "/qshell-build.log")
  T.eq(r.config, src .. "/.config")
  local log = slurp(r.log)
  T.match(log, "# qshell: make %-C " .. src:gsub("%p", "%%%0") .. " %-%-no%-print%-directory defconfig")
  T.match(log, "  CC      kernel/fork%.o")
  T.match(log, "bzImage is ready")
  T.ok(r.seconds > 0 and r.seconds < 10, "seconds: " .. r.seconds)
  T.match(slurp(src .. "/.config"), "CONFIG_SERIAL_8250=y")
end)

T.test("out= builds outside the tree (created if missing)", function()
  local src = tree()
  local out = tmp .. "/out-a/deep"
  local r = k.build { src = src, out = out, log = tmp .. "/out-a.log" }
  local real = require("qshell.os").realpath(out)
  T.eq(r.bzimage, real .. "/arch/x86/boot/bzImage")
  T.eq(r.vmlinux, real .. "/vmlinux")
  T.ok(T.exists(r.bzimage), "bzImage in out")
  T.eq(r.log, require("qshell.os").realpath(tmp .. "/out-a.log"))
  T.match(slurp(r.log), "O=" .. real:gsub("%p", "%%%0"))
  T.ok(T.exists(out .. "/.config"), ".config in out")
  T.ok(not T.exists(src .. "/.config"), "the tree has no .config")
  T.ok(not T.exists(src .. "/vmlinux"), "the tree has no vmlinux")
  T.ok(not T.exists(src .. "/qshell-build.log"), "nor a log")
  -- an in-tree configured tree refuses O=, with the fix in the hint
  local src2 = tree()
  k.build { src = src2 }
  local e = T.raises(function() k.build { src = src2, out = tmp .. "/out-b" } end, "KernelBuildFailed", "not clean")
  T.match(e.hint, "qemu.kernel.clean")
end)

T.test("jobs: chosen from cores and memory, bounded; jobs=1 is -j1", function()
  local _, nproc = T.sh("nproc")
  local cores = tonumber(nproc:match("%d+"))
  local src = tree()
  local r = k.build { src = src }
  T.ok(math.type(r.jobs) == "integer" and r.jobs >= 1 and r.jobs <= cores,
       string.format("jobs %s for %d cores", tostring(r.jobs), cores))
  T.eq(r.jobs, k.jobs())
  T.match(slurp(r.log), "%-j" .. r.jobs .. " bzImage\n")
  local r1 = k.build { src = src, jobs = 1 }
  T.eq(r1.jobs, 1)
  T.match(slurp(r1.log), "%-%-no%-print%-directory %-j1 bzImage\n")
end)

T.test("options= end up in .config; what kconfig drops is an error", function()
  local src = tree()
  k.build { src = src, config = "tinyconfig",
            options = { SERIAL_8250 = "y", CONFIG_SERIAL_8250_CONSOLE = "y", PRINTK = true, TTY = "y",
                        BINFMT_ELF = "n", LOCALVERSION = "-qshell", LOG_BUF_SHIFT = 14 } }
  local text = slurp(src .. "/.config")
  T.match(text, "\nCONFIG_SERIAL_8250=y\n")
  T.match(text, "\nCONFIG_SERIAL_8250_CONSOLE=y\n")
  T.match(text, "\nCONFIG_PRINTK=y\n")
  T.match(text, "\n# CONFIG_BINFMT_ELF is not set\n")
  T.match(text, '\nCONFIG_LOCALVERSION="%-qshell"\n')
  T.match(text, "\nCONFIG_LOG_BUF_SHIFT=14\n")
  -- the console needs SERIAL_8250: kconfig resets it, and the build stops
  local e = T.raises(function()
    k.build { src = src, config = "tinyconfig", options = { SERIAL_8250_CONSOLE = "y" } }
  end, "KernelConfigError", "CONFIG_SERIAL_8250_CONSOLE=y %(now n%)")
  T.match(e.hint, "depends on")
  T.raises(function() k.build { src = src, options = { SERIAL_825O = "y" } } end,
           "KernelConfigError", "CONFIG_SERIAL_825O=y %(now not in %.config%)")
end)

T.test("config(): get/set/save round trip, order and other lines kept", function()
  local src = tree()
  k.build { src = src, config = "defconfig" }
  local path = src .. "/.config"
  write(path, slurp(path) .. "# a note of mine\n")
  local before = lines_of(path)
  local cfg = k.config(src)
  T.eq(cfg:path(), path)
  T.eq(cfg:get("SERIAL_8250"), "y")
  T.eq(cfg:get("CONFIG_SERIAL_8250"), "y")
  T.eq(cfg.CONFIG_SERIAL_8250, "y")
  T.eq(cfg:get("QSHELL_TEST_FAIL"), "n")
  T.eq(cfg:get("LOG_BUF_SHIFT"), "18")
  T.eq(cfg:get("LOCALVERSION"), "")
  T.eq(cfg.CONFIG_LOCALVERSION, '""')
  T.eq(cfg:get("NO_SUCH_THING"), nil)
  for key in pairs(cfg) do T.match(key, "^CONFIG_[%w_]+$", "pairs gives options only") end
  cfg:set("SERIAL_8250", "n")
       :set("CONFIG_CMDLINE", 'console=ttyS0 say="hi\\there"')
       :set("LOG_BUF_SHIFT", 15)
       :set("PHYSICAL_START", "0x2000000")
       :set("BRAND_NEW", "m")
  T.eq(cfg:save(), path)
  local after = lines_of(path)
  T.eq(#after, #before + 1, "one line added")
  for i, line in ipairs(before) do
    if line:match("SERIAL_8250=") then
      T.eq(after[i], "# CONFIG_SERIAL_8250 is not set")
    elseif line:match("^CONFIG_CMDLINE=") then
      T.eq(after[i], [[CONFIG_CMDLINE="console=ttyS0 say=\"hi\\there\""]])
    elseif line:match("^CONFIG_LOG_BUF_SHIFT=") then
      T.eq(after[i], "CONFIG_LOG_BUF_SHIFT=15")
    elseif line:match("^CONFIG_PHYSICAL_START=") then
      T.eq(after[i], "CONFIG_PHYSICAL_START=0x2000000")
    else
      T.eq(after[i], line, "line " .. i .. " untouched")
    end
  end
  T.eq(after[#after], "CONFIG_BRAND_NEW=m")
  local again = k.config(src)
  T.eq(again:get("SERIAL_8250"), "n")
  T.eq(again:get("CMDLINE"), 'console=ttyS0 say="hi\\there"')
  T.eq(again:get("LOG_BUF_SHIFT"), "15")
  T.eq(again:get("BRAND_NEW"), "m")
  -- a string option stays a string, whatever the value looks like
  again:set("LOCALVERSION", "42"):set("CMDLINE", "y"):save()
  T.match(slurp(path), '\nCONFIG_LOCALVERSION="42"\n')
  T.match(slurp(path), '\nCONFIG_CMDLINE="y"\n')
  -- "n" back to "y", twice saved: still one line for it
  again:set("SERIAL_8250", true):save()
  again:save()
  local _, count = slurp(path):gsub("CONFIG_SERIAL_8250[= ]", "")
  T.eq(count, 1)
  -- a build without config= keeps the edited .config (olddefconfig)
  local r = k.build { src = src }
  local cfg2 = k.config(src)
  T.eq(cfg2:get("LOG_BUF_SHIFT"), "15")
  T.eq(cfg2:get("BRAND_NEW"), nil, "kconfig dropped the unknown option")
  T.match(slurp(r.log), "olddefconfig")
  T.raises(function() cfg2:set("BAD NAME", "y") end, "BadArgument", "bad config option name")
  T.raises(function() cfg2:set("X", { 1 }) end, "BadArgument", "must be")
  T.raises(function() cfg2:set("X", "a\nb") end, "BadArgument", "newline")
  T.raises(function() k.config(tree()) end, "NotConfigured")
end)

T.test("config= a file: copied to .config, then olddefconfig", function()
  local src = tree()
  local file = write(tmp .. "/my.config", "CONFIG_SERIAL_8250=y\n# CONFIG_PRINTK is not set\nCONFIG_UNKNOWN_X=y\n")
  local r = k.build { src = src, out = tmp .. "/out-file", config = file }
  local text = slurp(r.config)
  T.match(text, "\n# CONFIG_PRINTK is not set\n")
  T.match(text, "\nCONFIG_SERIAL_8250=y\n")
  T.ok(not text:find("UNKNOWN_X"), "olddefconfig normalised it")
  T.eq(slurp(file), "CONFIG_SERIAL_8250=y\n# CONFIG_PRINTK is not set\nCONFIG_UNKNOWN_X=y\n", "the file is untouched")
  -- oldconfig keeps what is there
  k.build { src = src, out = tmp .. "/out-file", config = "oldconfig" }
  T.match(slurp(r.config), "\n# CONFIG_PRINTK is not set\n")
end)

T.test("a failing build raises KernelBuildFailed with the compiler error and the log", function()
  local src = tree()
  local e = T.raises(function()
    k.build { src = src, out = tmp .. "/out-fail", options = { QSHELL_TEST_FAIL = "y" } }
  end, "KernelBuildFailed")
  T.match(e.desc, "kernel/fail%.c:12:5: error: 'x' undeclared %(first use in this function%)")
  T.match(e.desc, "exited with status 2")
  local log = require("qshell.os").realpath(tmp .. "/out-fail") .. "/qshell-build.log"
  T.eq(e.log, log)
  T.ok(e.desc:find(log, 1, true), "the desc names the log")
  T.match(slurp(log), "kernel/fail%.c:12:5: error:")
  T.ok(not T.exists(tmp .. "/out-fail/arch/x86/boot/bzImage"), "no bzImage")
  -- no compiler error: the last lines instead
  local e2 = T.raises(function() k.build { src = src, target = "no-such-target" } end, "KernelBuildFailed")
  T.match(e2.desc, "No rule to make target")
  T.match(e2.desc, "last lines")
end)

T.test("excerpt: the last errors with their context, else the last 15 lines", function()
  local lines = {}
  for i = 1, 40 do lines[#lines + 1] = "  CC      obj" .. i .. ".o" end
  local text = table.concat(lines, "\n")
  local ex, errs = k._error_excerpt(text)
  T.eq(errs, false)
  T.match(ex, "^  CC      obj26%.o\n")
  T.match(ex, "obj40%.o$")
  lines[10] = "a.c:1:1: error: first"
  lines[30] = "b.c:2:2: fatal error: foo.h: No such file or directory"
  ex, errs = k._error_excerpt(table.concat(lines, "\n"))
  T.eq(errs, true)
  T.match(ex, "error: first")
  T.match(ex, "fatal error: foo%.h")
  T.match(ex, "obj28%.o")
  T.match(ex, "%.%.%.")
  T.ok(not ex:find("obj20.o", 1, true), "far lines left out")
end)

T.test("clean() removes the .config and the outputs, in the tree or in out=", function()
  local src = tree()
  local r = k.build { src = src }
  k.clean(src)
  T.ok(not T.exists(src .. "/.config"), ".config removed")
  T.ok(not T.exists(r.bzimage) and not T.exists(r.vmlinux), "images removed")
  T.ok(not T.exists(r.log), "default log removed")
  T.ok(T.exists(src .. "/Makefile"), "the sources stay")
  local out = tmp .. "/out-clean"
  local r2 = k.build { src = src, out = out }
  k.clean(src, { out = out })
  T.ok(not T.exists(out .. "/.config") and not T.exists(r2.bzimage), "out cleaned")
  k.clean(src, { out = tmp .. "/never-built" }) -- nothing to do
  T.ok(not T.exists(tmp .. "/never-built"), "not created")
end)

T.test("timeout= stops make", function()
  local src = tree()
  local t0 = T.now()
  T.raises(function() k.build { src = src, jobs = 1, timeout = 0.2 } end, "Timeout", "did not finish within 0%.2 s")
  T.ok(T.now() - t0 < 2, "stopped promptly")
end)

T.test("bad input: not a kernel tree, a missing config file, unknown options, jobs", function()
  local src = tree()
  local e = T.raises(function() k.build { src = tmp .. "/nowhere" } end, "NotAKernelTree", "no such directory")
  T.match(e.hint, "linux%-source")
  local notree = tmp .. "/notree"
  assert(T.sh("mkdir -p " .. notree .. " && touch " .. notree .. "/Makefile") == 0)
  T.raises(function() k.build { src = notree } end, "NotAKernelTree", "neither Kconfig nor arch/x86")
  T.raises(function() k.build { src = tmp .. "/notree/Makefile" } end, "NotAKernelTree", "not a directory")
  T.raises(function() k.clean(notree) end, "NotAKernelTree")
  T.raises(function() k.config(notree) end, "NotAKernelTree")
  e = T.raises(function() k.build { src = src, config = tmp .. "/missing.config" } end, "BadArgument", "no such file")
  T.match(e.hint, "tinyconfig")
  T.raises(function() k.build { src = src, config = "tinycnofig" } end, "BadArgument", "no such file")
  T.raises(function() k.build { src = src, jbos = 2 } end, "BadArgument", "did you mean 'jobs'")
  T.raises(function() k.build { src = src, options = { ["NOT VALID"] = "y" } } end, "BadArgument", "bad config option name")
  T.raises(function() k.build { src = src, options = { PRINTK = 1.5 } } end, "BadArgument", "fraction")
  T.raises(function() k.build { src = src, jobs = 0 } end, "BadArgument", "positive integer")
  T.raises(function() k.build { src = src, jobs = 1.5 } end, "BadArgument", "positive integer")
  T.raises(function() k.build { src = src, jobs = "4" } end, "BadArgument", "positive integer")
  T.raises(function() k.build {} end, "BadArgument", "src=")
  T.raises(function() k.build("linux") end, "BadArgument")
  T.raises(function() k.clean(src, { outt = "x" }) end, "BadArgument", "did you mean 'out'")
  T.ok(not T.exists(src .. "/.config"), "nothing ran")
  T.ok(not T.exists(src .. "/qshell-build.log"), "no log")
end)

T.test("a terminal gets a progress line; Ctrl-C stops make", function()
  local src = tree()
  local script = write(tmp .. "/intr.pty", "expect [kernel] bzImage: \nexpect CC \nsignal INT\nexpect Interrupted\nwait 1\n")
  local code, out, err = T.sh(string.format(
    "QSHELL_FIXTURE_DELAY=0.4 PTYRUN_LOG=%s/intr.log build/ptyrun -t 20 %s -- ./qshell -e 'qemu.kernel.build{src=%q, jobs=1}'",
    tmp, script, src))
  T.eq(code, 0, "ptyrun: " .. out .. err)
  local transcript = slurp(tmp .. "/intr.log")
  T.match(transcript, "%[kernel%] bzImage: %d+ lines, CC [%w/_]+%.o, 0:0%d")
  T.match(transcript, "make was stopped")
  local _, left = T.sh("pgrep -af '[m]ake -C " .. src .. "' || true")
  T.eq(left, "", "no make left running")
  -- without a terminal: no progress line
  code, out, err = T.sh(string.format("./qshell -e 'qemu.kernel.build{src=%q}'", src))
  T.eq(code, 0, err)
  T.eq(err, "")
end)

T.run()
