-- sweep.lua: many runs from the warm checkpoint, in parallel, in one table.
--
--   qshell run scripts/sweep.lua [CHECKPOINT_DIR [RESULTS.csv]] [--resume]
--
-- A matrix of (insn plugin off/on) x (workload size), 3 repeats each, 2
-- workers.  Every run restores the checkpoint into its own overlay, runs
-- the workload, powers the guest off and reports its metrics.
local dir = arg[1] or "build/demo/warm.ckpt"
local out = arg[2] or "build/demo/results.csv"
local resume = arg[3] == "--resume"

local result = qemu.sweep {
  from = dir,
  out = out,
  resume = resume,
  workers = 2,
  ["repeat"] = 3,
  matrix = { plugin = { "off", "insn" }, size = { 2000, 20000 } },
  launch = function(p)
    return { plugins = p.plugin == "insn" and { { name = "insn" } } or nil }
  end,
  run = function(vm, p)
    local t = qemu.now()
    local check, st = vm.console:run(string.format(
      "i=0; while [ $i -lt %d ]; do i=$((i+1)); done; sha256sum -c /root/work/input.sha256 >/dev/null && echo ok",
      p.size))
    assert(st == 0 and check == "ok", "the workload failed: " .. check)
    local metrics = { workload_s = qemu.now() - t }
    vm.console:send("poweroff -f\r")
    vm:wait { timeout = 60 }
    if p.plugin == "insn" then metrics.instructions = vm:plugin_result("insn").total end
    return metrics
  end,
}

print(string.format("%d runs: %d ok, %d failed, %d already done; results in %s",
                    result.total, result.ok, result.failed, result.skipped, out))

-- The table, from the file (so it includes runs a resumed sweep skipped).
io.write(qemu.sweep.format(qemu.sweep.read(out)))
