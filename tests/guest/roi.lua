-- Regions of interest: the markers (roi/qshell-roi.h, the qshell-roi
-- helper in the default guest), per-ROI counts exact to the instruction,
-- vm:wait_roi, limit_roi, hotblocks roi=on, exact repeated counts under
-- icount, and per-ROI columns in a sweep.
local T = require "t"

local tmp = T.tmpdir()
local ICOUNT = { shift = 2, sleep = false }

-- The workload (tests/fixtures/roi/roiwork.c): ROI 5 empty, ROI 6 a loop of
-- 2*10+1 instructions, ROI 7 a loop of 2*1000000+1, ROI 8 ("long") 2*5000000+1.
T.sh("mkdir -p " .. tmp .. "/in")
local rc, _, err = T.sh("cc -O1 -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -Iroi -o " ..
                        tmp .. "/in/roiwork tests/fixtures/roi/roiwork.c")
assert(rc == 0, "cannot build the ROI workload: " .. err)
local data = qemu.disk.populate(tmp .. "/roi.qcow2", { from = tmp .. "/in", label = "roi" })

-- Two checkpoints of one boot under icount: at the shell prompt, and with
-- the workload typed after a `read` (one newline starts it).
local at_prompt, pending = tmp .. "/prompt.ckpt", tmp .. "/pending.ckpt"
do
  local vm <close> = qemu.guest.launch { disks = { data }, icount = ICOUNT }
  local out, st = vm.console:run("mount $(findfs LABEL=roi) /mnt && cp /mnt/roiwork /root/ && umount /mnt && " ..
                                 "/root/roiwork && qshell-roi begin 9 && qshell-roi end 9 && sync && echo ready")
  assert(st == 0 and out:find("ready"), "guest setup failed: " .. out)
  vm:checkpoint(at_prompt, { resume = true })
  vm.console:send("read x; /root/roiwork\r")
  qemu.sleep(0.5)
  vm:checkpoint(pending)
end

local function rois_by_id(result)
  local t = {}
  for _, r in ipairs(result.rois) do t[r.id] = r end
  return t
end

T.test("markers: counts exact to the instruction, events, the helper, hotblocks roi=on", function()
  local vm <close> = qemu.launch { restore = at_prompt, icount = ICOUNT,
                                   plugins = { { name = "insn" }, { name = "hotblocks", args = { roi = true, top = 3 } } } }
  local _, st = vm.console:run("/root/roiwork")
  T.eq(st, 0)
  local e7 = vm:wait_roi(7, { timeout = 30 })
  T.eq(e7.event, "end")
  T.ok(e7.insns >= 2000001 and e7.insns < 2000001 + 200000,
       "ROI 7 is the loop's 2000001 instructions and the interrupts meanwhile, got " .. e7.insns)
  T.eq(vm:wait_roi(5).insns, 0, "the empty ROI 5 (ended before 7, still queued)")
  T.eq(vm:wait_roi(6).insns, 21)
  T.eq(vm:wait_roi(6, { event = "begin" }).roi, 6)
  -- the helper, from the shell
  _, st = vm.console:run("qshell-roi begin 2; i=0; while [ $i -lt 100 ]; do i=$((i+1)); done; qshell-roi end 2")
  T.eq(st, 0)
  local e2 = vm:wait_roi(2, { timeout = 30 })
  T.ok(e2.insns > 100000, "the shell loop ran inside ROI 2: " .. e2.insns)
  local usage, bad = vm.console:run("qshell-roi begin x")
  T.eq(bad, 2)
  T.match(usage, "0 to 65535")
  local evs = vm:roi_events()
  T.ok(#evs >= 2, "begin events of 5, 7, 2 still queued: " .. #evs)
  T.eq(#vm:roi_events(), 0, "roi_events() takes them")
  vm:quit()
  local r = rois_by_id(vm:plugin_result("insn"))
  T.eq(r[5].insns, 0)
  T.eq(r[6].insns, 21)
  T.eq(r[7].insns, e7.insns)
  T.eq(r[7].vcpus[1], r[7].insns)
  T.eq(r[7].entries, 1)
  T.eq(r[7].open, false)
  T.eq(r[2].insns, e2.insns)
  local h = vm:plugin_result("hotblocks")
  T.eq(h.roi, true)
  -- inside ROIs the hottest block is ROI 7's loop: dec; jnz, 1000000 times
  T.eq(h.blocks[1].insns, 2)
  T.ok(math.abs(h.blocks[1].count - 1000000) <= 1, "the loop block ran 1e6 times in ROIs: " .. h.blocks[1].count)
  T.match(h.blocks[1].pc, "^0x40") -- the workload's own code, not the kernel's
end)

T.test("insn exact=on (an add per instruction): the same exact ROI counts; refused with limit=", function()
  local vm <close> = qemu.launch { restore = at_prompt, icount = ICOUNT,
                                   plugins = { { name = "insn", args = { exact = true } } } }
  local _, st = vm.console:run("/root/roiwork")
  T.eq(st, 0)
  local e7 = vm:wait_roi(7, { timeout = 30 })
  T.ok(e7.insns >= 2000001 and e7.insns < 2000001 + 200000, "ROI 7: " .. e7.insns)
  T.eq(vm:wait_roi(5).insns, 0, "the empty ROI 5")
  T.eq(vm:wait_roi(6).insns, 21, "ROI 6's loop")
  T.raises(function()
    qemu.launch { restore = at_prompt, plugins = { { name = "insn", args = { exact = true, limit = 1000 } } } }
  end, "LaunchFailed", "exact=on and limit= cannot be combined")
end)

T.test("exact counts: 10 runs from one checkpoint under icount, 0-0.5 s before cont, a CPU hog beside: one count", function()
  -- a busy loop on the host competes with QEMU's threads throughout
  local _, hog = T.sh("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")
  hog = assert(hog:match("%d+"))
  T.cleanup(function() T.sh("kill " .. hog) end)
  local counts = {}
  for i = 1, 10 do
    local vm <close> = qemu.launch { restore = pending, icount = ICOUNT, paused = true, plugins = { { name = "insn" } } }
    T.eq(vm:status(), "paused")
    vm.console:send("\r") -- the newline `read` waits for; cont lets the guest run once QEMU has it
    if i > 1 then qemu.sleep((i - 1) * 0.5 / 9) end
    vm:cont()
    counts[i] = vm:wait_roi(7, { timeout = 60 }).insns
  end
  T.sh("kill " .. hog)
  for i = 2, 10 do T.eq(counts[i], counts[1], "run " .. i .. " vs run 1 (" .. table.concat(counts, ", ") .. ")") end
  T.ok(counts[1] >= 2000001, "at least the loop: " .. counts[1])
end)

T.test("exact console: commands typed with console:run from a checkpoint count the same, whenever they are typed", function()
  local EXACT = { shift = 2, sleep = false, console = "exact" }
  local _, hog = T.sh("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")
  hog = assert(hog:match("%d+"))
  T.cleanup(function() T.sh("kill " .. hog) end)
  local counts = {}
  for i = 1, 5 do
    local vm <close> = qemu.launch { restore = at_prompt, icount = EXACT, plugins = { { name = "insn" } } }
    qemu.sleep((i - 1) * 0.1) -- the guest waits at its prompt, and so does its clock
    local out, st = vm.console:run("qshell-roi begin 3; i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; " ..
                                   "qshell-roi end 3; echo looped")
    T.eq(st, 0)
    T.match(out, "looped")
    local a = vm:wait_roi(3, { timeout = 60 }).insns
    qemu.sleep(0.2 * (i % 2))
    -- a second command, typed after the first one's answer
    _, st = vm.console:run("qshell-roi begin 4; /root/roiwork; qshell-roi end 4")
    T.eq(st, 0)
    counts[i] = a .. "/" .. vm:wait_roi(4, { timeout = 60 }).insns
    -- the guest still runs when the host waits for it (console:send + expect)
    vm.console:send("sleep 0.1; echo slept\r")
    vm.console:expect("slept\r?\n")
  end
  T.sh("kill " .. hog)
  for i = 2, 5 do T.eq(counts[i], counts[1], "run " .. i .. " vs run 1 (" .. table.concat(counts, ", ") .. ")") end
  -- what it refuses
  T.raises(function() qemu.launch { icount = { console = "typed" } } end, "BadArgument", 'must be "exact"')
  T.raises(function() qemu.launch { icount = EXACT, console = false } end, "BadArgument", "needs the console")
  T.raises(function() qemu.launch { icount = EXACT, smp = 2 } end, "BadArgument", "one vCPU")
end)

T.test("limit_roi: QEMU stops after N instructions inside the ROI", function()
  local vm <close> = qemu.launch { restore = at_prompt, icount = ICOUNT,
                                   plugins = { { name = "insn", args = { limit = 1000000, limit_roi = 8 } } } }
  vm.console:send("/root/roiwork long\r")
  T.eq(vm:wait { timeout = 60 }.code, 0)
  local r = vm:plugin_result("insn")
  T.eq(r.stopped, true)
  T.eq(r.limit_roi, 8)
  local r8 = rois_by_id(r)[8]
  T.eq(r8.open, true)
  T.ok(r8.insns >= 1000000 and r8.insns < 1000000 + 1000, "stopped within a block of the limit: " .. r8.insns)
  T.ok(r.total > r8.insns, "the total counts the boot too")
end)

T.test("errors: no ROI plugin, bad ids and options, timeouts, QEMU gone, bad plugin args", function()
  local vm <close> = qemu.launch { restore = at_prompt, icount = ICOUNT, plugins = { { name = "insn" } } }
  T.raises(function() vm:wait_roi(70000) end, "BadArgument", "0 to 65535")
  T.raises(function() vm:wait_roi(1.5) end, "BadArgument")
  T.raises(function() vm:wait_roi(1, { timout = 1 }) end, "BadArgument", "did you mean 'timeout'")
  T.raises(function() vm:wait_roi(1, { event = "middle" }) end, "BadArgument", "begin")
  T.raises(function() vm:wait_roi(3, { timeout = 0.3 }) end, "Timeout", "ROI 3")
  -- a paused VM runs no marker: named at once, not at the timeout
  vm:pause()
  local t0 = T.now()
  local e = T.raises(function() vm:wait_roi(3, { timeout = 10 }) end, "NotRunning", "run state: paused")
  T.ok(T.now() - t0 < 2, "said at once")
  T.match(e.hint, "vm:cont%(%)")
  vm:cont()
  vm:kill()
  T.raises(function() vm:wait_roi(3, { timeout = 5 }) end, "QEMUExited")
  local plain <close> = qemu.launch { restore = at_prompt, icount = ICOUNT }
  T.raises(function() plain:wait_roi(1) end, "BadArgument", "insn")
  T.raises(function() qemu.launch { restore = at_prompt, plugins = { { name = "insn", args = { limit_roi = 1 } } } } end,
           "LaunchFailed", "needs limit")
  T.raises(function() qemu.launch { restore = at_prompt, plugins = { { name = "insn", args = { limit = 5, limit_roi = 70000 } } } } end,
           "LaunchFailed", "0 to 65535")
  T.raises(function() qemu.launch { restore = at_prompt, plugins = { { name = "hotblocks", args = { roi = "maybe" } } } } end,
           "LaunchFailed", "on or off")
end)

T.test("sweep: a column per ROI", function()
  local out = tmp .. "/roi.csv"
  local res = qemu.sweep {
    from = at_prompt, out = out, workers = 1, ["repeat"] = 2, progress = false,
    launch = { icount = ICOUNT, plugins = { { name = "insn" } } },
    run = function(vm)
      local _, st = vm.console:run("/root/roiwork")
      return { status_code = st }
    end,
  }
  T.eq(res.ok, 2)
  local rows = qemu.sweep.read(out)
  T.eq(#rows, 2)
  for _, row in ipairs(rows) do
    T.eq(row.roi5_insns, 0)
    T.eq(row.roi6_insns, 21)
    T.ok(row.roi7_insns >= 2000001, "roi7_insns " .. tostring(row.roi7_insns))
  end
end)

os.exit(T.run())
