-- demo.lua: launch an empty VM, show what qshell sees, quit.
--   qshell run scripts/demo.lua
local vm <close> = qemu.launch { memory = "128M", name = "demo" }
print(string.format("QEMU %s, accel %s, pid %d", vm.version, vm.accel, vm.pid))
print("argv: " .. table.concat(vm.argv, " "))
print("status: " .. vm:status())
vm:pause()
print("after pause: " .. vm:status())
vm:cont()
for _, ev in ipairs(vm:events()) do print("event: " .. ev.event) end
local t0 = qemu.now()
for _ = 1, 100 do vm:qmp("query-status") end
print(string.format("100 query-status round trips: %.1f ms", (qemu.now() - t0) * 1000))
print("quit: " .. vm:quit().desc)
