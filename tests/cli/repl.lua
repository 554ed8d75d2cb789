-- The interactive shell through a real pseudo-terminal (build/ptyrun).
local T = require "t"

local tmp = T.tmpdir()
local QSHELL = "./qshell"

local function write(path, text)
  local f = assert(io.open(path, "w")); f:write(text); f:close()
  return path
end

local function slurp(path)
  local f = io.open(path, "rb"); if not f then return "" end
  local s = f:read("a"); f:close(); return s
end

-- Run a ptyrun script against `qshell ARGS`; returns ok, transcript.
local n = 0
local function pty(script, args, env)
  n = n + 1
  local s = write(string.format("%s/s%d.pty", tmp, n), script)
  local log = string.format("%s/s%d.log", tmp, n)
  local code, out, err = T.sh(string.format("%s PTYRUN_LOG=%s QSHELL_HISTORY=%s build/ptyrun -t 20 %s -- %s %s",
    env or "", log, tmp .. "/history", s, QSHELL, args or ""))
  if code ~= 0 then error("ptyrun failed:\n" .. out .. err, 2) end
  return slurp(log)
end

T.test("expressions are pretty-printed; multi-line chunks continue", function()
  pty([==[
expect qshell>
send {1, 2, {a = qemu.null}, "s"}\r
expect { 1, 2, { a = null }, "s" }
expect qshell>
send qemu.json.decode('[1, {}, []]')\r
expect [ 1, {}, [] ]
expect qshell>
send local big = {} for i = 1, 100 do big[i] = i end return big\r
expect ... (70 more)
expect qshell>
send function twice(x)\r
expect ...>
send   return 2 * x\r
expect ...>
send end\r
expect qshell>
send twice(21)\r
expect 42
expect qshell>
send \x04
wait 0
]==])
end)

T.test("help(x) and .help NAME print the reference's entry; a wrong name says so", function()
  local log = pty([==[
expect qshell>
send help(qemu.disk.create)\r
expect Arguments
expect qshell>
send .help vm:quit\r
expect vm:quit(
expect qshell>
send .help qemu.nothing_here\r
expect no entry for 'qemu.nothing_here'
expect qshell>
send .help\r
expect .help NAME
expect qshell>
send \x04
wait 0
]==])
  T.match(log, "qemu%.disk%.create%(")
  T.match(log, "Errors")
end)

T.test("history is saved and reloaded", function()
  os.remove(tmp .. "/history")
  pty([==[
expect qshell>
send remembered = 6 * 7\r
expect qshell>
send \x04
wait 0
]==])
  T.match(slurp(tmp .. "/history"), "remembered")
  pty([==[
expect qshell>
send \e[A\r
expect qshell>
send remembered\r
expect 42
expect qshell>
send \x04
wait 0
]==])
end)

T.test("Tab completes Lua names, QMP commands and their arguments", function()
  local log = pty([==[
expect qshell>
send qemu.di\t
sleep 300
send \r
expect amend = function
expect qshell>
send v = qemu.launch{memory="64M"}\r
expect vm1:running>
send v:wait_ev\t
sleep 300
send ("STOP", {timeout=0.1})\r
expect no STOP event within 0.1 s
expect vm1:running>
send :query-statu\t
sleep 300
send \r
expect status = "running"
expect vm1:running>
send :device_add dri\t
sleep 300
send e1000 id=nic1\r
expect vm1:running>
send v:qmp("qom-get", {path="/machine/peripheral/nic1", property="type"})\r
expect \n"e1000"
expect vm1:running>
send \x04
expect [y/N]
send y\r
wait 0
]==])
  T.match(log, "wait_event")
end)

T.test(":qmp, !hmp, .commands against a real VM; events at the prompt", function()
  local sock = tmp .. "/side.qmp"
  local log = pty(string.format([==[
expect qshell>
send .help\r
expect :command key=value
expect qshell>
send v = qemu.launch{memory="64M", extra={"-qmp", "unix:%s,server=on,wait=off"}}\r
expect vm1:running>
send :query-status\r
expect status = "running"
expect vm1:running>
send !info status\r
expect VM status: running
expect vm1:running>
send :qom-set {"path": "/machine", "property": "nosuch", "value": 1}\r
expect GenericError
expect vm1:running>
send os.execute("(sleep 1; SOCK=%s ./qshell -e 'qemu.attach(os.getenv([[SOCK]])):pause()') >/dev/null 2>&1 &")\r
expect vm1:running>
send x = 
expect [vm1] event STOP
send 4\r
expect vm1:paused>
send x + 1\r
expect 5
expect vm1:paused>
send !cont\r
expect [vm1] event RESUME
expect vm1:running>
send .vms\r
expect * 1  vm1      running
expect vm1:running>
send .use 2\r
expect no VM 2
expect vm1:running>
send .log on\r
expect vm1:running>
send :query-name\r
expect qmp -> {"execute":"query-name"
expect vm1:running>
send .log off\r
expect vm1:running>
send .nosuch\r
expect unknown command .nosuch
expect vm1:running>
send .quit\r
wait 0
]==], sock, sock))
  T.match(log, "event STOP")
end)

T.test("Ctrl-C interrupts a console wait; the VM still answers; Ctrl-D quits it", function()
  local log = pty([==[
expect qshell>
send v = qemu.launch{memory="64M"}\r
expect vm1:running>
send print("PID", v.pid)\r
expect PID
expect vm1:running>
send v.console:expect("never", 60)\r
sleep 800
send \x03
timeout 1
expect interrupted
timeout 20
expect vm1:running>
send v:status()\r
expect "running"
expect vm1:running>
send partial line that is dropped
sleep 300
send \x03
expect ^C
expect vm1:running>
send 1 + 1\r
expect 2
expect vm1:running>
send \x04
expect 1 VM is running (vm1): quit it and leave? [y/N]
send y\r
wait 0
]==])
  local pid = tonumber(log:match("PID\t(%d+)"))
  T.ok(pid, "printed the QEMU pid")
  T.ok(not T.pid_alive(pid), "QEMU is gone after Ctrl-D")
  -- the interrupt came back within a second: the prompt followed it
  T.match(log, "interrupted! %(Interrupted%)")
end)

T.test("qshell attach SOCKET opens the shell on that QEMU", function()
  local sock = tmp .. "/attach.qmp"
  local code = T.sh("qemu-system-x86_64 -nodefaults -display none -accel tcg -m 64M -daemonize " ..
                    "-pidfile " .. tmp .. "/q.pid -qmp unix:" .. sock .. ",server=on,wait=off")
  T.eq(code, 0)
  local qpid = tonumber(slurp(tmp .. "/q.pid"))
  local ok, err = pcall(pty, [==[
expect running>
send :query-status\r
expect status = "running"
expect running>
send vm:pause()\r
expect paused>
send \x04
wait 0
]==], "attach " .. sock)
  -- Ctrl-D leaves an attached VM running: it is not this shell's
  T.ok(T.pid_alive(qpid), "the attached QEMU still runs")
  os.execute("kill " .. qpid)
  if not ok then error(err, 0) end
end)

T.test("piped input: :qmp and !hmp lines work, the first error stops with status 1", function()
  local input = write(tmp .. "/in.txt", [==[
v = qemu.launch{memory="64M"}
:query-status
!info status
print("after")
:no-such-command
print("never")
]==])
  local code, out, err = T.sh(QSHELL .. " < " .. input)
  T.eq(code, 1)
  T.match(out, 'status = "running"')
  T.match(out, "VM status: running")
  T.match(out, "after")
  T.ok(not out:find("never"), "stopped at the error")
  T.match(err, "CommandNotFound")
end)

T.run()
