-- Record and replay (qemu.launch{record=}/{replay=}): a run from a
-- checkpoint, typed with console:run, replayed with the same console
-- output, ROI events and insn counts (a replay quit before its end is an
-- error); the refusals before anything runs;
-- a sweep's recordings and `qshell sweep --rerun ... --replay`.
local T = require "t"

local json = require "qshell.json"
local fs = require "qemu.util.fs"

local tmp = T.tmpdir()
local ckpt = tmp .. "/prompt.ckpt"
do
  local vm <close> = qemu.guest.launch { icount = { shift = 2, sleep = false } }
  -- the workload's programs in the page cache
  vm.console:run("qshell-roi begin 9; qshell-roi end 9; i=0; while [ $i -lt 10 ]; do i=$((i+1)); done; true")
  -- past 2^31 instructions, where QEMU itself cannot start a recording
  -- (it takes the restored count for an int); qshell restarts the count
  while vm:qmp("query-replay").icount < (1 << 31) + 10000000 do
    vm.console:run("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; true")
  end
  T.ok(vm:qmp("query-replay").icount < (1 << 32), "the checkpoint's count is in QEMU's failing range")
  vm:checkpoint(ckpt)
end

local WORK = "qshell-roi begin 1; i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; qshell-roi end 1; " ..
             "echo sum $((i*7)); cat /proc/loadavg"

-- One run of the workload from the checkpoint: what a script sees.
local function run(mode, dir)
  local vm <close> = qemu.launch { restore = ckpt, [mode] = dir, plugins = { { name = "insn" } } }
  T.eq(vm.recording, require("qshell.os").realpath(dir))
  T.eq(vm.replaying, mode == "replay")
  local out, st = vm.console:run(WORK)
  local e = vm:wait_roi(1, { timeout = 30 })
  local out2 = vm.console:run("echo $RANDOM $RANDOM; cat /proc/uptime")
  vm:quit()
  if mode == "record" then
    T.eq(json.decode(fs.slurp(dir .. "/recording.json")).status, "complete", "complete once vm:quit() returns")
  end
  local res = vm:plugin_result("insn")
  return { out = out, st = st, roi = e.insns, out2 = out2, total = res.total, rois = res.rois[1].insns }
end

T.test("a run from a checkpoint, recorded and replayed twice: the same console output, ROI event and counts", function()
  local dir = tmp .. "/run1.rr"
  local t0 = qemu.now()
  local a = run("record", dir)
  local t_rec = qemu.now() - t0
  T.eq(a.st, 0)
  T.match(a.out, "sum 2100")
  local m = json.decode(fs.slurp(dir .. "/recording.json"))
  T.eq(m.status, "complete")
  T.eq(m.qemu, qemu.version().text)
  T.eq(m.restore.path, require("qshell.os").realpath(ckpt))
  T.ok(m.log_bytes > 0 and m.log_bytes == fs.stat(dir .. "/replay.bin").size, "log size recorded")
  for i = 1, 2 do
    t0 = qemu.now()
    local b = run("replay", dir)
    T.eq(b.out, a.out, "console output of the workload, replay " .. i)
    T.eq(b.out2, a.out2, "$RANDOM and /proc/uptime, replay " .. i)
    T.eq(b.roi, a.roi, "the ROI event's count, replay " .. i)
    T.eq(b.rois, a.rois, "the ROI's count in the result, replay " .. i)
    T.eq(b.total, a.total, "insn's total, replay " .. i)
    io.stderr:write(string.format("# replay %d: %.2f s, recording %.2f s, ROI %d insns, total %d, log %d bytes\n",
                                  i, qemu.now() - t0, t_rec, a.roi, a.total, m.log_bytes))
  end
  -- a replay quit before it reaches the recording's end (seconds away):
  -- its counts would fall short, and vm:quit says so with where it was
  T.ok(math.type(m.icount_end) == "integer" and m.icount_end > a.total // 2,
       "where the recorded run stopped: " .. tostring(m.icount_end))
  local vm <close> = qemu.launch { restore = ckpt, replay = dir }
  local e = T.raises(function() vm:quit { timeout = 0 } end, "Timeout")
  T.match(e.desc, "did not reach the recording's end in 0 s %(at instruction %d+ of " .. m.icount_end .. "%)")
  T.match(e.hint, "vm:kill")
  T.ok(vm:_exited(), "QEMU ended all the same")
end)

T.test("refused before anything runs: a second record to one path, a changed machine, smp, another QEMU", function()
  local dir = tmp .. "/run2.rr"
  local done = tmp .. "/quick.rr" -- a complete recording: restored, then quit
  do
    local vm <close> = qemu.launch { restore = ckpt, record = done }
    vm:quit()
  end
  local e = T.raises(function() qemu.launch { restore = ckpt, record = done } end, "FileExists")
  T.match(e.desc, "exists")
  e = T.raises(function() qemu.launch { restore = ckpt, replay = tmp .. "/none.rr" } end, "BadArgument")
  T.match(e.desc, "no recording")
  e = T.raises(function() qemu.launch { restore = ckpt, replay = done, icount = { shift = 3 } } end,
               "BadArgument")
  T.match(e.desc, "icount_shift=3 differs from the recorded 2")
  e = T.raises(function() qemu.launch { smp = 2, memory = "64M", record = dir } end, "BadArgument")
  T.match(e.desc, "one vCPU")
  T.ok(not fs.exists(dir), "a refused record makes no directory")
  e = T.raises(function() qemu.launch { record = dir, replay = dir } end, "BadArgument")
  T.match(e.desc, "cannot be combined")
  -- a recording that did not end: QEMU killed, so its log has no header
  local vm = qemu.launch { restore = ckpt, record = dir }
  vm:kill()
  vm:close()
  T.eq(json.decode(fs.slurp(dir .. "/recording.json")).status, "incomplete")
  e = T.raises(function() qemu.launch { restore = ckpt, replay = dir } end, "BadArgument")
  T.match(e.desc, "did not end cleanly")
  -- another QEMU than the one that recorded
  local other = false
  for bin in (os.getenv("QSHELL_TEST_QEMU_LIST") or ""):gmatch("%S+") do
    if require("qemu.util.binary").version(bin).text ~= qemu.version().text then
      other = true
      e = T.raises(function() qemu.launch { restore = ckpt, replay = done, binary = bin } end,
                   "BadArgument")
      T.match(e.desc, "recorded with QEMU " .. qemu.version().text:gsub("%.", "%%."))
    end
  end
  if not other then io.stderr:write("  (one QEMU only: QSHELL_TEST_QEMU_LIST names the others)\n") end
end)

T.test("a sweep with record=true: a recording per run, its size in the row; --rerun ROW --replay reproduces it", function()
  local script = tmp .. "/sweep.lua"
  local out = tmp .. "/res.csv"
  fs.write(script, string.format([[
local s = qemu.sweep {
  from = %q, out = %q, record = true, matrix = { n = { 100, 200 } },
  launch = { plugins = { { name = "insn" } } },
  run = function(vm, p)
    local text = vm.console:run(string.format("qshell-roi begin 1; i=0; while [ $i -lt %%d ]; do i=$((i+1)); done; " ..
                                              "qshell-roi end 1; echo $RANDOM", p.n))
    return { rnd = tonumber(text:match("(%%d+)")) }
  end,
}
assert(s.ok == 2, "both runs ok")
]], ckpt, out))
  local rc, so, se = T.sh("./qshell run " .. script)
  T.eq(rc, 0, so .. se)
  local rows = qemu.results.read(out)
  T.eq(#rows, 2)
  for _, r in ipairs(rows) do
    -- rows come in the order the runs ended; run-N is the run's place in the matrix
    T.eq(r.recording, out .. ".rr/run-" .. (r.n == 100 and 1 or 2))
    T.ok(r.record_bytes > 1000, "the recording's size in the row: " .. tostring(r.record_bytes))
    T.ok(r.roi1_insns > 0)
  end
  rc, so, se = T.sh("./qshell sweep --rerun " .. out .. " 2 --replay")
  T.eq(rc, 0, so .. se)
  T.match(so, "replayed  " .. rows[2].recording:gsub("%p", "%%%0") .. ": every metric the same as recorded")
  local r = qemu.sweep.rerun(out, 1, { replay = true })
  T.eq(r.status, "ok")
  for _, c in ipairs(r.metrics_compared) do
    if c.name == "roi1_insns" or c.name == "rnd" then T.eq(c.now, c.was, c.name) end
  end
  -- without --replay the run is a new one: its $RANDOM is its own
  rc, so = T.sh("./qshell sweep --rerun " .. out .. " 2")
  T.eq(rc, 0)
  T.ok(not so:find("replayed"), so)
end)

os.exit(T.run())
