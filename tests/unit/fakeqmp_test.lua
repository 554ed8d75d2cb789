-- fakeqmp_test.lua: the script API against build/fakeqmp, for the QMP
-- failures a real QEMU will not produce on demand.
--
--   ./qshell tests/unit/fakeqmp_test.lua      (after make qshell build/fakeqmp)
--
-- Each case writes a fakeqmp script (see the comment at the top of
-- tests/unit/fakeqmp.c) and passes it as extra={"-fakeqmp-script", path}:
-- qshell gives the child no environment of its own, so FAKEQMP_SCRIPT
-- cannot be set per VM.

local dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = dir .. "/../lib/?.lua;" .. package.path
local T = require "t"

local FAKE = dir .. "/../../build/fakeqmp"
local tmp = T.tmpdir()
local scripts = {}
local sweeper -- luacheck: ignore (kept alive for its finalizer)

local function launch(text)
  local extra
  if text then
    local path = string.format("%s/script%d", tmp, #scripts + 1)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    scripts[#scripts + 1] = path
    extra = { "-fakeqmp-script", path }
  end
  return qemu.launch { binary = FAKE, accel = "tcg", extra = extra, timeout = 5 }
end

-- Greeting and capabilities, then the given lines for query-status.
local function on_status(lines)
  return "greeting\nexpect qmp_capabilities\nreply {\"return\": {}, \"id\": $ID}\n" ..
         "expect query-status\n" .. lines
end

T.test("healthy default: status, any command, quit", function()
  local vm = launch()
  T.eq(vm.version, "7.2.22")
  T.eq(vm:status(), "running")
  T.eq(next(vm:qmp("query-anything")), nil)
  local st = vm:quit()
  T.eq(st and st.code, 0, "exit code")
end)

T.test("malformed reply -> ProtocolError; the connection goes on", function()
  local vm = launch(on_status("garbage\n"))
  T.raises(function() vm:status() end, "ProtocolError", "malformed JSON")
  T.eq(vm:status(), "running")
  T.eq(vm:quit().code, 0)
end)

T.test("stalled reply -> Timeout within the timeout", function()
  local vm = launch(on_status("hang\n"))
  local t0 = T.now()
  local e = T.raises(function() vm:qmp("query-status", nil, { timeout = 0.3 }) end, "Timeout")
  local dt = T.now() - t0
  T.eq(e.command, "query-status")
  T.ok(dt >= 0.25 and dt < 1.0, string.format("took %.2f s", dt))
  vm:kill()
end)

T.test("oversized message -> ProtocolError; the connection goes on", function()
  -- Over the reader's 64 MiB cap (QMP_MAX_MSG_DEFAULT).
  local vm = launch(on_status("big 68000000\n"))
  T.raises(function() vm:status() end, "ProtocolError", "larger than")
  T.eq(vm:status(), "running")
  T.eq(vm:quit().code, 0)
end)

T.test("closed mid-message -> QEMUExited naming the command", function()
  local vm = launch(on_status(
    "send {\"return\": {\"status\": \nstderr qemu: fatal: lost the plot\nclose\nsleep 100\nexit 3\n"))
  local e = T.raises(function() vm:status() end, "QEMUExited")
  T.eq(e.command, "query-status")
  T.match(e.desc, "'query%-status' was in flight")
  T.match(e.desc, "exited with status 3")
  T.match(e.desc, "lost the plot")
  T.eq(vm:quit().code, 3)
end)

T.test("closed mid-message, process alive -> the C message", function()
  local vm = launch(on_status("send {\"return\": \nclose\nsleep 3000\n"))
  local e = T.raises(function() vm:status() end, "QEMUExited")
  T.match(e.desc, "in the middle of a message while 'query%-status' was in flight")
  vm:kill()
end)

T.test("killed by a signal mid-command -> QEMUExited", function()
  local vm = launch(on_status("kill SEGV\n"))
  local e = T.raises(function() vm:status() end, "QEMUExited", "query%-status")
  T.match(e.desc, "signal 11")
end)

T.test("dies before the greeting -> LaunchFailed with the log", function()
  local e = T.raises(function() launch("stderr qemu-system-x86_64: -m 1T: out of memory\nexit 1\n") end,
                     "LaunchFailed")
  T.match(e.desc, "out of memory")
  T.match(e.desc, "exited with status 1")
end)

-- T.run ends with os.exit(code, true), which closes the state: a
-- finalizer is the last thing that runs.
sweeper = setmetatable({}, { __gc = function()
  for _, p in ipairs(scripts) do os.remove(p) end
  os.remove(tmp)
end })

T.run()
