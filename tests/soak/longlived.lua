-- Soak: one qshell that lives long.  Launch/quit cycles and QMP commands
-- by the thousand: its memory (RSS) grows by less than 10 MB and its file
-- descriptors stay where they were.  (make test SAN=address runs it under
-- AddressSanitizer, which reports any leak at exit.)
--
-- QSHELL_SOAK=full (make test-soak): 10^4 cycles, 10^5 commands;
-- otherwise (make test) 300 and 10^4.
local T = require "t"
local sys = require "qshell.os"

local FULL = os.getenv("QSHELL_SOAK") == "full"
local CYCLES = FULL and 10000 or 300
local COMMANDS = FULL and 100000 or 10000

local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end
local function rss_kb() return status("VmRSS") end

-- Under AddressSanitizer (make test SAN=address: terabytes of shadow
-- mapped) freed memory waits in a quarantine, so RSS says nothing of
-- leaks: its LeakSanitizer checks every allocation at exit instead.
local ASAN = status("VmSize") > 1e9
local function rss_bound(grown)
  if ASAN then
    io.stderr:write("  (AddressSanitizer: the RSS bound is left to LeakSanitizer at exit)\n")
  else
    T.ok(grown < 10, string.format("RSS grew %.1f MB", grown))
  end
end

local function fds() return #sys.listdir("/proc/self/fd") end

local function settle()
  collectgarbage()
  collectgarbage()
end

T.test(string.format("%d launch/quit cycles: RSS grows < 10 MB, fds flat, no QEMU left", CYCLES), function()
  -- a few first: the allocator's arenas and the stdlib's caches fill
  for _ = 1, 20 do qemu.launch { machine = "none" }:quit() end
  settle()
  local rss0, fd0, t0 = rss_kb(), fds(), T.now()
  for i = 1, CYCLES do
    local vm = qemu.launch { machine = "none" }
    if i % 2 == 0 then
      vm:quit()
    else
      vm:close() -- the other way out
    end
  end
  settle()
  local grown = (rss_kb() - rss0) / 1024
  io.stderr:write(string.format("  %d cycles in %.0f s: RSS %+.1f MB, fds %d -> %d\n", CYCLES, T.now() - t0, grown,
                                fd0, fds()))
  rss_bound(grown)
  T.eq(fds(), fd0, "file descriptors")
  T.eq(#qemu.vms(), 0)
end)

T.test(string.format("%d QMP commands on one VM: RSS grows < 10 MB, fds flat", COMMANDS), function()
  local vm <close> = qemu.launch { machine = "none" }
  for _ = 1, 1000 do vm:qmp("query-status") end
  settle()
  local rss0, fd0, t0 = rss_kb(), fds(), T.now()
  for i = 1, COMMANDS do
    if i % 10 == 0 then
      -- an error reply now and then: the error path leaks nothing either
      local ok = pcall(vm.qmp, vm, "no-such-command")
      if ok then T.fail("an unknown command succeeded") end
    elseif i % 3 == 0 then
      vm:qmp("query-name")
    else
      T.eq(vm:qmp("query-status").status, "running")
    end
  end
  settle()
  local grown = (rss_kb() - rss0) / 1024
  io.stderr:write(string.format("  %d commands in %.1f s: RSS %+.1f MB, fds %d -> %d\n", COMMANDS, T.now() - t0, grown,
                                fd0, fds()))
  rss_bound(grown)
  T.eq(fds(), fd0, "file descriptors")
end)

T.run()
