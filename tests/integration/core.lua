-- Core tier against a real qemu-system-x86_64: an empty VM (no guest) is
-- enough for the protocol, the process ladder and the error paths.
local T = require "t"

local tmp = T.tmpdir()
local disk = tmp .. "/small.qcow2"
assert(T.sh("qemu-img create -q -f qcow2 " .. disk .. " 16M") == 0, "qemu-img create failed")

T.test("launch, status, argv, version", function()
  local vm <close> = qemu.launch { memory = "64M", name = "core1" }
  T.eq(vm:status(), "running")
  T.ok(vm.pid and T.pid_alive(vm.pid), "QEMU is running")
  T.eq(vm.argv[1], os.getenv("QSHELL_QEMU") or "qemu-system-x86_64")
  local line = table.concat(vm.argv, " ")
  T.match(line, "%-accel tcg")
  T.match(line, "%-m 64M")
  T.match(line, "%-name core1")
  T.match(line, "%-chardev socket,id=qmp,fd=3")
  T.match(vm.version, "^%d+%.%d+%.%d+$")
  T.eq(vm.version, qemu.version().text, "the greeting's version is the binary's")
  T.ok(T.exists(vm.log), "log file exists")
  T.eq(vm.accel, "tcg")
end)

T.test("a QEMU outside the system's gets its own firmware and modules; qemu.version asks it", function()
  local binary = require "qemu.util.binary"
  local path = binary.resolve(binary.default())
  local v = qemu.version()
  T.eq(v.path, path)
  T.match(v.text, "^%d+%.%d+%.%d+$")
  T.ok(v.plugin_api.min <= v.plugin_api.cur)
  T.eq(v.plugin_api.cur >= 2, v.major >= 9, "plugin API 2+ exactly on QEMU 9.0+")
  local vm <close> = qemu.launch { memory = "64M" }
  local line = table.concat(vm.argv, " ")
  local env = ""
  local f = io.open("/proc/" .. vm.pid .. "/environ", "rb")
  if f then env = f:read("a"); f:close() end
  local tree = binary.tree(path)
  if tree then
    T.match(line, "%-L " .. tree.data[1]:gsub("%p", "%%%0"), "its firmware dir")
    T.ok(env:find("QEMU_MODULE_DIR=" .. tree.modules, 1, true), "its module dir in QEMU's environment")
  else
    T.ok(not line:find(" %-L "), "the system QEMU gets no -L")
    T.ok(not env:find("QEMU_MODULE_DIR=", 1, true), "nor a module dir")
  end
  T.raises(function() qemu.version("/nonexistent/qemu-system-x86_64") end, "LaunchFailed", "nonexistent")
end)

-- This process's open memfds (a VM's RAM), by /proc/self/fd.
local function memfds()
  local n = 0
  for _, name in ipairs(require("qshell.os").listdir("/proc/self/fd") or {}) do
    local _, target = T.sh("readlink /proc/" .. require("qshell.os").getpid() .. "/fd/" .. name)
    if target:find("^/memfd:") then n = n + 1 end
  end
  return n
end

T.test("the RAM is a memfd this shell holds while the VM lives: gone with close, and with a VM dropped unclosed", function()
  local before = memfds()
  do
    local vm <close> = qemu.launch { memory = "64M" }
    T.eq(vm.ram.backing, "memfd")
    T.eq(vm.ram.size, 64 << 20)
    T.eq(vm.ram.id, "pc.ram")
    T.match(table.concat(vm.argv, " "), "memory%-backend%-file,id=pc%.ram,.*mem%-path=/proc/self/fd/%d+,share=on")
    T.eq(memfds(), before + 1)
  end
  T.eq(memfds(), before, "closed with the VM")
  local pid
  do
    local vm = qemu.launch { memory = "64M" }
    pid = vm.pid
  end
  collectgarbage()
  collectgarbage()
  T.eq(memfds(), before, "closed when the dropped VM was collected")
  T.ok(not T.pid_alive(pid), "and its QEMU is gone")
  -- RAM options left to QEMU: no memfd
  local vm <close> = qemu.launch { extra = { "-m", "64M" } }
  T.eq(vm.ram.backing, "qemu")
  T.eq(memfds(), before)
end)

T.test("qmp returns the return value as tables", function()
  local vm <close> = qemu.launch { memory = "64M" }
  local r = vm:qmp("query-status")
  T.eq(r.running, true)
  T.eq(r.status, "running")
  local v = vm:qmp("query-version")
  T.eq(type(v.qemu.major), "number")
  T.eq(math.type(v.qemu.major), "integer")
  -- arrays keep their type: query-commands is a JSON array
  local cmds = vm:qmp("query-commands")
  T.eq(qemu.json.type(cmds), "array")
  T.ok(#cmds > 50, "many commands")
  -- an empty object argument round-trips as {}
  T.eq(qemu.json.type(vm:qmp("query-status", {})), "object")
end)

T.test("hmp returns text; an HMP error raises", function()
  local vm <close> = qemu.launch { memory = "64M" }
  T.match(vm:hmp("info status"), "VM status: running")
  local e = T.raises(function() vm:hmp("info nosuchthing") end, "HMPError")
  T.match(e.desc, "unknown command")
  e = T.raises(function() vm:hmp("loadvm nosuchtag") end, "HMPError")
  T.match(tostring(e), "core.lua:%d+:")
end)

T.test("events: STOP and RESUME around pause/cont", function()
  local vm <close> = qemu.launch { memory = "64M" }
  vm:pause()
  T.eq(vm:status(), "paused")
  vm:cont()
  local names = {}
  for _, ev in ipairs(vm:events()) do names[#names + 1] = ev.event end
  T.eq(table.concat(names, ","), "STOP,RESUME")
  T.eq(#vm:events(), 0, "events() drains")
  vm:pause()
  local ev = vm:wait_event("STOP", { timeout = 5 })
  T.eq(ev.event, "STOP")
  T.eq(type(ev.timestamp.seconds), "number")
end)

T.test("wait_event keeps non-matching events and honours match", function()
  local vm <close> = qemu.launch { memory = "64M" }
  vm:pause()
  vm:cont()
  local ev = vm:wait_event("RESUME", { timeout = 5 })
  T.eq(ev.event, "RESUME")
  local left = vm:events()
  T.eq(#left, 1)
  T.eq(left[1].event, "STOP")
end)

T.test("wait_event timeout raises Timeout quickly", function()
  local vm <close> = qemu.launch { memory = "64M" }
  local t0 = T.now()
  local e = T.raises(function() vm:wait_event("STOP", { timeout = 0.3 }) end, "Timeout")
  local dt = T.now() - t0
  T.ok(dt >= 0.25 and dt < 3, "took " .. dt)
  T.match(e.desc, "STOP")
  e = T.raises(function() vm:wait_event("X", { timeout = 0.1, match = { data = { a = 1 } } }) end, "Timeout")
end)

T.test("a QMP error reply raises with its class", function()
  local vm <close> = qemu.launch { memory = "64M" }
  local e = T.raises(function() vm:qmp("no-such-command") end, "CommandNotFound")
  T.eq(e.command, "no-such-command")
  T.match(e.desc, "no%-such%-command")
  e = T.raises(function() vm:qmp("device_del", { id = "nonexistent" }) end, "DeviceNotFound")
  e = T.raises(function() vm:qmp("query-status", { bogus = 1 }) end, "GenericError")
  T.match(e.desc, "bogus")
  -- the VM still answers after errors
  T.eq(vm:status(), "running")
end)

T.test("quit: QEMU exits with status 0 and is reaped", function()
  local vm = qemu.launch { memory = "64M" }
  local pid, dir = vm.pid, vm.tmpdir
  local st = vm:quit()
  T.eq(st.code, 0)
  T.ok(not T.pid_alive(pid), "QEMU gone")
  T.eq(vm.pid, nil)
  vm:close()
  T.ok(not T.exists(dir), "temp dir removed on close")
  T.raises(function() vm:status() end, "BadArgument", "closed")
end)

T.test("kill and wait", function()
  local vm = qemu.launch { memory = "64M" }
  local pid = vm.pid
  local st = vm:kill()
  T.eq(st.signal, 9)
  T.ok(not T.pid_alive(pid), "QEMU gone")
  vm:close()
  local vm2 <close> = qemu.launch { memory = "64M" }
  T.raises(function() vm2:wait { timeout = 0.2 } end, "Timeout")
  vm2:qmp("quit")
  T.eq(vm2:wait { timeout = 10 }.code, 0)
end)

T.test("a qcow2 disk is attached", function()
  local vm <close> = qemu.launch { memory = "64M", disks = { disk } }
  local blocks = vm:qmp("query-block")
  local found
  for _, b in ipairs(blocks) do
    if b.inserted and b.inserted.file == disk then found = b end
  end
  T.ok(found, "disk listed by query-block")
  T.eq(found.inserted.drv, "qcow2")
  T.eq(found.inserted["node-name"], "disk0")
end)

T.test("QEMU killed with SIGKILL mid-command: clear error, no hang", function()
  local vm <close> = qemu.launch { memory = "64M" }
  local pid = vm.pid
  -- Freeze QEMU so the command is surely in flight, then kill it.
  assert(os.execute("kill -STOP " .. pid))
  assert(os.execute("(sleep 0.3; kill -KILL " .. pid .. ") &"))
  local t0 = T.now()
  local e = T.raises(function() vm:qmp("query-status") end, "QEMUExited")
  T.ok(T.now() - t0 < 2.5, "reported promptly")
  T.match(e.desc, "killed by signal 9")
  T.match(e.desc, "query%-status")
  T.eq(e.exit.signal, 9)
  -- later calls fail the same way, quickly
  T.raises(function() vm:status() end, "QEMUExited")
end)

T.test("QEMU that fails to start: error with QEMU's own message", function()
  local t0 = T.now()
  local e = T.raises(function() qemu.launch { extra = { "-no-such-option" } } end, "LaunchFailed")
  T.ok(T.now() - t0 < 2, "reported within seconds")
  T.match(e.desc, "exited with status 1")
  T.match(e.desc, "invalid option")
  T.match(e.desc, "%-no%-such%-option")
end)

T.test("a binary that does not exist", function()
  local e = T.raises(function() qemu.launch { binary = "/nonexistent/qemu-system-x86_64" } end,
                     "LaunchFailed")
  T.match(e.desc, "No such file")
end)

T.test("bad options are errors before anything starts", function()
  local e = T.raises(function() qemu.launch { memroy = "1G" } end, "BadArgument")
  T.match(tostring(e), "unknown option 'memroy' %(did you mean 'memory'%?%)")
  T.match(tostring(e), "^.-core%.lua:%d+: qemu%.launch:")
  e = T.raises(function() qemu.launch { disks = { tmp .. "/missing.qcow2" } } end, "BadArgument")
  T.match(e.desc, "missing%.qcow2")
  T.raises(function() qemu.launch { smp = 0 } end, "BadArgument")
  T.raises(function() qemu.launch { disks = { { file = disk, interface = "floppy" } } } end, "BadArgument")
  T.raises(function() qemu.launch { initrd = disk } end, "BadArgument", "without a kernel")
  T.raises(function() qemu.launch { kernel = tmp .. "/nokernel" } end, "BadArgument", "no such file")
  T.raises(function() qemu.launch "x" end, "BadArgument")
  T.eq(#qemu.vms(), 0, "nothing left running")
end)

T.test("attach to a QEMU started elsewhere", function()
  local sock = tmp .. "/qmp.sock"
  local vm0 <close> = qemu.launch { memory = "64M", extra = { "-qmp", "unix:" .. sock .. ",server=on,wait=off" } }
  local vm <close> = qemu.attach(sock)
  T.eq(vm:status(), "running")
  T.eq(vm.pid, nil)
  vm:pause()
  T.eq(vm0:status(), "paused")
  T.raises(function() vm:kill() end, "BadArgument")
  vm:quit()
  T.eq(vm0:wait { timeout = 10 }.code, 0)
end)

T.test("attach to a path with no listener", function()
  local e = T.raises(function() qemu.attach(tmp .. "/nobody.sock") end, "ConnectFailed")
  T.match(e.desc, "nobody%.sock")
  T.match(e.hint, "%-qmp unix:")
end)

T.test("JSON round trips", function()
  local j = qemu.json
  T.eq(j.encode({}), "{}")
  T.eq(j.encode(j.array {}), "[]")
  T.eq(j.encode({ 1, 2, 3 }), "[1,2,3]")
  T.eq(j.encode({ a = qemu.null }), '{"a":null}')
  T.eq(j.decode("null"), qemu.null)
  T.eq(j.encode(j.decode('{"a":[]}')), '{"a":[]}')
  T.eq(j.encode(j.decode('{"a":{}}')), '{"a":{}}')
  T.eq(j.encode(j.decode('[{},[],null,1.5,"x\\u00e9"]')), '[{},[],null,1.5,"xé"]')
  T.eq(j.decode('9007199254740993'), 9007199254740993)
  local t = {}; t.self = t
  T.raises(function() j.encode(t) end, nil, "cycle")
  T.raises(function() j.encode({ [true] = 1 }) end, nil, "non%-string key")
  T.raises(function() j.encode({ 1, 2, x = 3 }) end, nil, "non%-string key")
  T.raises(function() j.encode(0 / 0) end, nil, "NaN")
  T.raises(function() j.decode("{") end, nil, "json.decode")
  T.raises(function() j.decode("[1] x") end, nil, "trailing")
  local deep = {}
  local cur = deep
  for _ = 1, 70 do cur.x = {}; cur = cur.x end
  T.raises(function() j.encode(deep) end, nil, "deeper")
end)

T.run()
