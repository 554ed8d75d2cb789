-- TCG plugins: the project's insn and hotblocks plugins, plugin setup from
-- Lua, and the errors for broken plugins.
local T = require "t"

local tmp = T.tmpdir()

local function live_qemu()
  local _, out = T.sh("pgrep -f '^qemu-system-x86_64' | while read p; do grep -qz TMPDIR=" ..
                      (os.getenv("TMPDIR") or "/tmp") .. " /proc/$p/environ 2>/dev/null && echo $p; done")
  return out
end

T.test("plugin.arg escapes commas and formats values", function()
  local a = qemu.plugin.arg { path = "/x/lib,mine.so", args = { out = "/tmp/a,b.json", limit = 1e9, on = true, s = "x" } }
  T.eq(a, "/x/lib,,mine.so,limit=1000000000,on=on,out=/tmp/a,,b.json,s=x")
  T.eq(qemu.plugin.arg { path = "libx.so" }, "./libx.so")
  T.match(qemu.plugin.arg { name = "insn" }, "/libinsn%.so$")
  T.raises(function() qemu.plugin.arg { name = "insn", path = "/x.so" } end, "BadArgument")
  T.raises(function() qemu.plugin.arg { path = "/x.so", args = { ["a,b"] = 1 } } end, "BadArgument")
  T.raises(function() qemu.plugin.arg { path = "/x.so", args = { k = {} } } end, "BadArgument")
  T.raises(function() qemu.plugin.arg { nmae = "insn" } end, "BadArgument", "did you mean 'name'")
  T.raises(function() qemu.plugin.find("nosuch") end, "PluginError", "insn")
end)

T.test("insn counts a boot and poweroff; hotblocks lists kernel blocks", function()
  local vm <close> = qemu.guest.launch { plugins = { { name = "insn" }, { name = "hotblocks", args = { top = 5 } } } }
  local line = table.concat(vm.argv, " ")
  T.match(line, "%-plugin [^ ]*libinsn%.so,events=[^ ]*,out=")
  T.match(line, "%-d plugin %-D ")
  vm.console:send("poweroff -f\r")
  T.eq(vm:wait { timeout = 60 }.code, 0)
  local r = vm:plugin_result("insn")
  T.eq(r.plugin, "insn")
  T.ok(r.total > 5e8 and r.total < 2e10, "a boot is ~2e9 instructions, got " .. r.total)
  T.eq(#r.vcpus, 1)
  T.eq(r.vcpus[1], r.total)
  T.eq(r.stopped, false)
  local h = vm:plugin_result("hotblocks")
  T.eq(#h.blocks, 5)
  T.match(h.blocks[1].pc, "^0xffffffff8")
  T.ok(h.blocks[1].count >= h.blocks[5].count, "sorted by count")
  T.match(vm:plugin_log(), "insn: %d+ instructions")
end)

T.test("smp=2: per-vCPU counts that add up, on this QEMU's plugin API", function()
  local vm <close> = qemu.guest.launch { smp = 2, plugins = { { name = "insn" }, { name = "hotblocks", args = { top = 50 } } } }
  -- work on both vCPUs: two shell loops at once
  vm.console:run("(i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done) & (i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done); wait")
  vm.console:send("poweroff -f\r")
  T.eq(vm:wait { timeout = 60 }.code, 0)
  local r = vm:plugin_result("insn")
  T.eq(#r.vcpus, 2)
  T.ok(r.vcpus[1] > 1e7 and r.vcpus[2] > 1e7, "both vCPUs ran: " .. r.vcpus[1] .. ", " .. r.vcpus[2])
  T.eq(r.vcpus[1] + r.vcpus[2], r.total)
  local h = vm:plugin_result("hotblocks")
  local covered = 0
  for _, b in ipairs(h.blocks) do covered = covered + b.count * b.insns end
  T.ok(covered > 0 and covered <= r.total * 1.01,
       string.format("the hottest blocks' instructions (%d) fit in the total (%d)", covered, r.total))
end)

T.test("two runs of the same workload from the same snapshot count alike", function()
  local system = qemu.guest.overlay(tmp .. "/insn.qcow2")
  do
    local vm <close> = qemu.guest.launch { system = system, icount = { shift = 0, sleep = false } }
    vm:savevm("ready")
  end
  local counts = {}
  for i = 1, 2 do
    local vm <close> = qemu.guest.launch {
      system = system, loadvm = "ready", login = false,
      icount = { shift = 0, sleep = false }, plugins = { { name = "insn" } },
    }
    vm.console:send("i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; poweroff -f\r")
    vm:wait { timeout = 120 }
    counts[i] = vm:plugin_result("insn").total
  end
  local diff = math.abs(counts[1] - counts[2]) / counts[1]
  T.ok(counts[1] > 1e7, "the workload ran: " .. counts[1])
  T.ok(diff < 0.03, string.format("counts %d and %d differ by %.2f%%", counts[1], counts[2], diff * 100))
end)

T.test("limit=N stops the guest; the script sees it", function()
  local vm <close> = qemu.guest.launch { login = false, plugins = { { name = "insn", args = { limit = 2e8 } } } }
  local st = vm:wait { timeout = 60 }
  T.eq(st.code, 0)
  local r = vm:plugin_result("insn")
  T.eq(r.stopped, true)
  T.eq(r.limit, 200000000)
  T.ok(r.total >= 2e8 and r.total < 2e8 + 1e6, "stopped at the limit: " .. r.total)
  local saw
  for _, ev in ipairs(vm:events()) do
    if ev.event == "SHUTDOWN" then saw = ev end
  end
  T.ok(saw, "a SHUTDOWN event")
  T.eq(saw.data.reason, "host-signal")
end)

T.test("an argument value with a comma survives the trip into the plugin", function()
  local out = tmp .. "/with,comma.json"
  local vm <close> = qemu.launch { memory = "64M", plugins = { { name = "insn", args = { out = out } } } }
  vm:quit()
  local f = io.open(out)
  T.ok(f, "the plugin wrote " .. out)
  local r = qemu.json.decode(f:read("a"))
  f:close()
  T.eq(r.plugin, "insn")
end)

T.test("broken plugins: clear errors, no QEMU left", function()
  local e = T.raises(function() qemu.launch { plugins = { { path = tmp .. "/missing.so" } } } end, "PluginError")
  T.match(e.desc, "missing%.so: no such file")
  e = T.raises(function() qemu.launch { plugins = { { path = "build/plugins/test/libnoversion.so" } } } end, "PluginError")
  T.match(e.desc, "does not export qemu_plugin_version")
  e = T.raises(function() qemu.launch { plugins = { { path = "build/plugins/test/libbadversion.so" } } } end, "LaunchFailed")
  T.match(e.desc, "plugin requires API version 99")
  -- the hint names the range this very QEMU takes
  local api = qemu.version().plugin_api
  T.match(e.hint, string.format("this QEMU %%(%s%%) takes plugin API versions %d to %d",
                                qemu.version().text:gsub("%.", "%%."), api.min, api.cur))
  -- the same .so loads on both plugin API generations: this one is refused
  -- by its install function, not for its version
  e = T.raises(function() qemu.launch { plugins = { { path = "build/plugins/test/libfailinstall.so" } } } end, "LaunchFailed")
  T.match(e.desc, "qemu_plugin_install returned error code")
  e = T.raises(function() qemu.launch { plugins = { { name = "insn", args = { bogus = 1 } } } } end, "LaunchFailed")
  T.match(e.desc, "unknown argument 'bogus'")
  T.raises(function() qemu.launch { accel = "kvm", plugins = { { name = "insn" } } } end, "BadArgument", "see nothing")
  T.eq(#qemu.vms(), 0)
  T.eq(live_qemu(), "", "no QEMU left")
end)

T.run()
