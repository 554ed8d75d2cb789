-- Live snapshots of the default guest: savevm/loadvm/delvm done safely.
local T = require "t"

local tmp = T.tmpdir()

-- Start a counter that prints to the console every 0.2 s (guest time).
local function start_counter(vm)
  vm.console:send("i=0; while true; do echo count=$i; i=$((i+1)); sleep 0.2; done &\r")
end

local function count(vm)
  local _, n = vm.console:expect("count=(%d+)\r?\n", 20)
  return tonumber(n)
end

local function wait_count(vm, at_least)
  local n
  repeat n = count(vm) until n >= at_least
  return n
end

T.test("savevm, run on, loadvm: the counter continues from the saved value", function()
  local vm <close> = qemu.guest.launch {}
  start_counter(vm)
  wait_count(vm, 3)
  vm:savevm("warm")
  local saved = count(vm)  -- the first value printed after the save
  wait_count(vm, saved + 10)
  vm:loadvm("warm")
  T.eq(vm:status(), "running")
  local after = count(vm)
  T.ok(after >= saved - 1 and after <= saved + 1,
       string.format("after loadvm the counter printed %d, saved at %d", after, saved))
  local list = vm:snapshots()
  T.eq(#list, 1)
  T.eq(list[1].tag, "warm")
  T.ok(list[1].vm_size > 1000000, "vmstate saved")
  T.ok(list[1].vm_clock > 0, "vm clock recorded")
  vm:delvm("warm")
  T.eq(#vm:snapshots(), 0)
  -- qshell's own job events are not shown; STOP/RESUME are
  for _, ev in ipairs(vm:events()) do
    T.ok(ev.event == "STOP" or ev.event == "RESUME", "event " .. ev.event)
  end
end)

T.test("savevm on an existing tag fails; the old snapshot is intact; replace=true replaces", function()
  local vm <close> = qemu.guest.launch {}
  start_counter(vm)
  wait_count(vm, 2)
  vm:savevm("s")
  local old = vm:snapshots()[1]
  wait_count(vm, 10)
  local e = T.raises(function() vm:savevm("s") end, "SnapshotExists")
  T.match(e.hint, "replace=true")
  local same = vm:snapshots()
  T.eq(#same, 1)
  T.eq(same[1].id, old.id)
  T.eq(same[1].vm_clock, old.vm_clock)
  vm:savevm("s", { replace = true })
  local new = vm:snapshots()
  T.eq(#new, 1)
  T.ok(new[1].vm_clock > old.vm_clock, "replaced by a later state")
end)

T.test("relaunch with loadvm=tag resumes the counter", function()
  local system = qemu.guest.overlay(tmp .. "/relaunch.qcow2")
  local saved
  do
    local vm <close> = qemu.guest.launch { system = system }
    start_counter(vm)
    wait_count(vm, 3)
    vm:savevm("boot")
    saved = count(vm)
    wait_count(vm, saved + 5)
  end
  local t0 = T.now()
  local vm <close> = qemu.guest.launch { system = system, loadvm = "boot", login = false }
  T.match(table.concat(vm.argv, " "), "%-loadvm boot")
  local after = count(vm)
  T.ok(T.now() - t0 < 10, "resumed without a boot")
  T.ok(after >= saved - 1 and after <= saved + 1, string.format("resumed at %d, saved at %d", after, saved))
  T.eq(vm.console:run("echo $i | grep -c .") , "1")
end)

T.test("launch loadvm= checks the tag and the disk first", function()
  local system = qemu.guest.overlay()
  local e = T.raises(function() qemu.guest.launch { system = system, loadvm = "nosuch" } end, "SnapshotNotFound")
  T.match(e.desc, "nosuch")
  T.raises(function() qemu.launch { loadvm = "x" } end, "BadArgument", "writable qcow2")
  T.raises(function() qemu.launch { loadvm = "x", disks = { { file = system, snapshot = true } } } end,
           "BadArgument", "snapshot=on")
  T.raises(function() qemu.launch { loadvm = "a b", disks = { system } } end, "BadArgument")
  T.eq(#qemu.vms(), 0)
end)

T.test("snapshot errors are errors", function()
  local vm <close> = qemu.guest.launch {}
  T.raises(function() vm:loadvm("missing") end, "SnapshotNotFound", "not touched")
  T.raises(function() vm:delvm("missing") end, "SnapshotNotFound")
  for _, bad in ipairs { "a,b", "a b", "", "x'y", "a;b", "123" } do
    T.raises(function() vm:savevm(bad) end, "BadArgument")
  end
  T.eq(#vm:snapshots(), 0)
  T.eq(vm:status(), "running")
end)

T.test("a writable raw disk: savevm refuses with the convert hint", function()
  local raw = qemu.disk.create(tmp .. "/data.raw", "8M", { format = "raw" })
  local vm <close> = qemu.guest.launch { disks = { raw } }
  local e = T.raises(function() vm:savevm("x") end, "SnapshotUnsupported")
  T.match(e.desc, "writable but does not support snapshots")
  T.match(e.hint, "qcow2")
  vm:close()
  -- readonly raw disks do not take part, so this works
  T.raises(function() qemu.launch { disks = { { file = raw, readonly = true } } } end, "BadArgument", "IDE")
  local vm2 <close> = qemu.guest.launch { disks = { { file = raw, readonly = true, interface = "virtio" } } }
  vm2:savevm("ok")
  T.eq(vm2:snapshots()[1].tag, "ok")
end)

T.test("no disk at all: no block device can store vmstate", function()
  local vm <close> = qemu.launch { memory = "64M" }
  local e = T.raises(function() vm:savevm("x") end, "SnapshotUnsupported")
  T.match(e.desc, "no block device can store vmstate")
  T.match(e.hint, "qcow2")
end)

T.test("the HMP path (older QEMU) detects errors too", function()
  local vm <close> = qemu.guest.launch {}
  vm._snapshot_mode = "hmp"
  start_counter(vm)
  wait_count(vm, 2)
  vm:savevm("h1")
  T.eq(vm:snapshots()[1].tag, "h1")
  T.raises(function() vm:savevm("h1") end, "SnapshotExists")
  vm:loadvm("h1")
  T.eq(vm:status(), "running")
  vm:delvm("h1")
  T.eq(#vm:snapshots(), 0)
  -- the raw HMP error text raises through vm:hmp as well
  local e = T.raises(function() vm:hmp("loadvm nosuch") end, "HMPError")
  T.match(e.desc, "^Error")
end)

T.test("a failed loadvm says the VM is stopped and how to go on", function()
  local vm <close> = qemu.guest.launch {}
  vm:savevm("good")
  -- Make qshell believe in a snapshot the image does not have, so that the
  -- load fails inside QEMU rather than in qshell's own check.
  local snap = require "qemu.vm.snapshot"
  local real = snap._snapshot_state
  snap._snapshot_state = function(self, f)
    local nodes, vmstate, list = real(self, f)
    list[#list + 1] = { tag = "gone" }
    return nodes, vmstate, list
  end
  local ok, e = pcall(vm.loadvm, vm, "gone")
  snap._snapshot_state = real
  T.ok(not ok and type(e) == "table" and e.class == "SnapshotFailed", "expected SnapshotFailed, got " .. tostring(e))
  T.match(e.desc, "the VM is (%a+)")
  if vm:status() ~= "running" then
    T.match(e.desc, "the VM is left stopped %(" .. vm:status():gsub("%-", "%%-") .. "%)")
    T.match(e.hint, "vm:cont%(%)")
    vm:cont()
  end
  T.eq(vm:status(), "running")
end)

T.test("a stopped VM is named at once: run, expect and login fail within a second with its state and the fix", function()
  local vm <close> = qemu.guest.launch {}
  local function quick(f, state, hint)
    local t0 = T.now()
    local e = T.raises(f, "NotRunning")
    T.ok(T.now() - t0 < 2, string.format("said within a second, not at the timeout (%.2f s)", T.now() - t0))
    T.match(e.desc, "QEMU's run state: " .. state)
    T.match(e.hint, hint)
    return e
  end
  vm:pause()
  quick(function() vm.console:run("echo hi", { timeout = 5 }) end, "paused", "vm:cont%(%)")
  quick(function() vm.console:expect("never printed", 5) end, "paused", "vm:cont%(%)")
  quick(function() vm.console:login { timeout = 5 } end, "paused", "vm:cont%(%)")
  -- send types into a paused VM (the ROI recipe): the line runs on cont
  vm.console:send("echo typed-while-paused\r")
  vm:cont()
  vm.console:expect("typed%-while%-paused", 20)
  T.eq((vm.console:run("echo hi")), "hi")

  -- a checkpoint without resume=true leaves the VM stopped after its state
  vm:checkpoint(tmp .. "/stopped.ckpt")
  quick(function() vm.console:run("echo hi", { timeout = 5 }) end, "postmigrate", "resume=true")
  vm:cont()
  T.eq((vm.console:run("echo again")), "again")

  -- a failed HMP loadvm stops the VM and says so, and how to go on
  vm:savevm("one")
  local e = T.raises(function() vm:hmp("loadvm nosuch") end, "HMPError")
  local st = vm:status()
  if st ~= "running" then
    T.match(e.desc, "the VM is left stopped %(" .. st:gsub("%-", "%%-") .. "%)")
    T.match(e.hint, "cont")
    quick(function() vm.console:run("echo hi", { timeout = 5 }) end, st:gsub("%-", "%%-"), "cont")
    vm:cont()
  end
  T.eq((vm.console:run("echo on")), "on")
end)

T.test("a VM launched with paused=true: run names the state; login=false is asked for", function()
  T.raises(function() qemu.guest.launch { paused = true } end, "BadArgument", "login=false")
  T.eq(#qemu.vms(), 0, "nothing started")
  local vm <close> = qemu.guest.launch { paused = true, login = false }
  local t0 = T.now()
  local e = T.raises(function() vm.console:run("echo hi", { timeout = 5 }) end, "NotRunning")
  T.ok(T.now() - t0 < 2)
  T.match(e.desc, "run state: %a+")
  T.match(e.hint, "vm:cont%(%)")
  vm:cont()
  local g = vm.guest
  vm.console:login { user = g.user, password = g.password, prompt = g.prompt, timeout = 120 }
  T.eq((vm.console:run("echo hi")), "hi")
end)

T.run()
