-- Record and replay from boot: the default guest booted and logged in
-- under record=, a command run, then the whole of it replayed.  Slow (the
-- replay of a boot takes about 2 minutes): runs only with QSHELL_SLOW_TESTS=1.
local T = require "t"

if os.getenv("QSHELL_SLOW_TESTS") ~= "1" then
  io.stderr:write("replay_slow: skipped; QSHELL_SLOW_TESTS=1 records a boot and replays it (about 2 minutes)\n")
  print("0 passed, 0 failed, 1 skipped")
  os.exit(0)
end

local tmp = T.tmpdir()
local WORK = "qshell-roi begin 1; i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; qshell-roi end 1; echo $RANDOM"

T.test("from boot: the login and a command replayed with the same output, ROI count and insn total", function()
  local dir = tmp .. "/boot.rr"
  local function boot(mode)
    local vm <close> = qemu.guest.launch { [mode] = dir, plugins = { { name = "insn" } } }
    local out = vm.console:run(WORK)
    local roi = vm:wait_roi(1, { timeout = 60 }).insns
    vm:quit({ timeout = 600 })
    return out, roi, vm:plugin_result("insn").total
  end
  local t0 = qemu.now()
  local o1, r1, t1 = boot("record")
  local t_rec = qemu.now() - t0
  t0 = qemu.now()
  local o2, r2, t2 = boot("replay")
  T.eq(o2, o1, "the console output ($RANDOM included)")
  T.eq(r2, r1, "the ROI count")
  T.eq(t2, t1, "insn's total from the first instruction")
  io.stderr:write(string.format("# boot: recorded in %.1f s, replayed in %.1f s\n", t_rec, qemu.now() - t0))
end)

os.exit(T.run())
