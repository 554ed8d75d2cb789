-- The command line from outside: exit statuses, error lines, signals.
-- Each case runs ./qshell as a separate process (a black box).
local T = require "t"

local QSHELL = os.getenv("QSHELL_BIN") or "./qshell"
local tmp = T.tmpdir()

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function write(path, text)
  local f = assert(io.open(path, "w")); f:write(text); f:close()
  return path
end

local function run(args, stdin)
  local cmd = "TMPDIR=" .. tmp .. " " .. QSHELL .. " " .. args
  if stdin then cmd = cmd .. " < " .. write(tmp .. "/stdin.lua", stdin) end
  return T.sh(cmd)
end

local function count_lines(s)
  local n = 0
  for _ in s:gmatch("[^\n]+") do n = n + 1 end
  return n
end

local function leftover_tmpdirs()
  local _, out = T.sh("ls -d " .. tmp .. "/qshell-* 2>/dev/null")
  return out
end

T.test("--version and --help exit 0", function()
  local code, out = run("--version")
  T.eq(code, 0)
  T.match(out, "^qshell ")
  code, out = run("--help")
  T.eq(code, 0)
  T.match(out, "usage: qshell")
end)

T.test("usage errors exit 2", function()
  local code, _, err = run("--bogus")
  T.eq(code, 2)
  T.match(err, "unknown option '%-%-bogus'")
  code = run("run")
  T.eq(code, 2)
  code = run("-e")
  T.eq(code, 2)
end)

T.test("-e code runs; empty -e exits 0", function()
  local code, out = run("-e " .. q("print(1 + 1)"))
  T.eq(code, 0)
  T.eq(out, "2\n")
  T.eq(run("-e ''"), 0)
end)

T.test("script arguments in arg and ...", function()
  local s = write(tmp .. "/args.lua", "print(arg[0], arg[1], arg[2], select('#', ...), ...)")
  local code, out = run("run " .. s .. " a 'b c'")
  T.eq(code, 0)
  T.eq(out, s .. "\ta\tb c\t2\ta\tb c\n")
  code, out = run(s .. " x")
  T.eq(code, 0)
  T.match(out, "\tx\t")
end)

T.test("a missing script file: one line, status 1", function()
  local code, out, err = run("run " .. tmp .. "/nosuch.lua")
  T.eq(code, 1)
  T.eq(out, "")
  T.match(err, "cannot open .*nosuch%.lua")
  T.eq(count_lines(err), 1)
end)

T.test("a syntax error: file:line, status 1", function()
  local s = write(tmp .. "/syntax.lua", "local x = 1\nlocal = 2\n")
  local code, _, err = run("run " .. s)
  T.eq(code, 1)
  T.match(err, "syntax%.lua:2:")
  T.eq(count_lines(err), 1)
end)

T.test("a runtime error: file:line: message, status 1", function()
  local s = write(tmp .. "/boom.lua", "print('before')\nerror('boom')\nprint('after')\n")
  local code, out, err = run("run " .. s)
  T.eq(code, 1)
  T.eq(out, "before\n")
  T.match(err, "^[^\n]*boom%.lua:2: boom\n$")
end)

T.test("-v adds a traceback", function()
  local s = write(tmp .. "/boom2.lua", "local function f() error('deep') end\nf()\n")
  local code, _, err = run("-v run " .. s)
  T.eq(code, 1)
  T.match(err, "stack traceback")
end)

T.test("an unknown launch option: one readable line, status 1", function()
  local code, _, err = run("-e " .. q('qemu.launch{memroy="1G"}'))
  T.eq(code, 1)
  T.match(err, "^qshell: %(command line%):1: qemu%.launch: unknown option 'memroy' %(did you mean 'memory'%?%)")
  T.eq(count_lines(err), 1)
end)

T.test("a non-existent disk path: one line, status 1", function()
  local code, _, err = run("-e " .. q('qemu.launch{disks={"/nonexistent/d.qcow2"}}'))
  T.eq(code, 1)
  T.match(err, "cannot open /nonexistent/d%.qcow2")
  T.eq(count_lines(err), 1)
end)

T.test("attach with no listener: one line, status 1", function()
  local code, _, err = run("-e " .. q('qemu.attach("' .. tmp .. '/none.sock")'))
  T.eq(code, 1)
  T.match(err, "none%.sock")
  T.eq(count_lines(err), 1)
  code, _, err = run("attach " .. tmp .. "/none.sock")
  T.eq(code, 1)
  T.match(err, "cannot connect")
end)

T.test("piped stdin: runs chunk by chunk, stops at the first error", function()
  local code, out, err = run("", "print('a')\nt = {\n 1,\n}\nprint(#t)\nerror('stop here')\nprint('never')\n")
  T.eq(code, 1)
  T.eq(out, "a\n1\n")
  T.match(err, "stop here")
end)

-- Start qshell in the background with a script that launches a VM, prints
-- "pid tmpdir" and waits; returns the qshell pid, QEMU pid and temp dir.
local function background(extra_lua)
  local s = write(tmp .. "/bg.lua", [[
    local vm = qemu.launch{memory="64M"}
    print(vm.pid, vm.tmpdir)
    io.stdout:flush()
    ]] .. (extra_lua or "qemu.sleep(60)"))
  local out = tmp .. "/bg.out"
  os.remove(out)
  local _, pidout = T.sh("TMPDIR=" .. tmp .. " " .. QSHELL .. " run " .. s .. " >" .. out ..
                         " 2>" .. tmp .. "/bg.err & echo $!")
  local qpid = tonumber(pidout)
  local deadline = T.now() + 20
  while T.now() < deadline do
    local f = io.open(out, "r")
    local line = f and f:read("l")
    if f then f:close() end
    if line and line:find("%d+%s") then
      local pid, dir = line:match("^(%d+)%s+(%S+)")
      return qpid, tonumber(pid), dir
    end
    qemu.sleep(0.02)
  end
  error("background qshell did not start a VM")
end

local function wait_gone(pid, seconds)
  local deadline = T.now() + seconds
  while T.now() < deadline do
    if not T.pid_alive(pid) then return true end
    qemu.sleep(0.02)
  end
  return false
end

T.test("SIGTERM to qshell: QEMU and temp dir gone", function()
  local qpid, vmpid, dir = background()
  T.ok(T.pid_alive(vmpid), "QEMU running")
  T.ok(T.exists(dir), "temp dir exists")
  os.execute("kill -TERM " .. qpid)
  T.ok(wait_gone(qpid, 10), "qshell exited")
  T.ok(wait_gone(vmpid, 5), "QEMU gone")
  T.ok(not T.exists(dir), "temp dir removed")
end)

T.test("SIGKILL to qshell: QEMU gone (PDEATHSIG); the next launch sweeps its temp dir", function()
  local qpid, vmpid, dir = background()
  os.execute("kill -KILL " .. qpid)
  T.ok(wait_gone(vmpid, 5), "QEMU gone")
  T.ok(wait_gone(qpid, 5), "qshell gone")
  T.ok(T.exists(dir), "a SIGKILL leaves the temp dir")
  local code = run("-e " .. q('qemu.launch{memory="64M"}:close()'))
  T.eq(code, 0)
  T.ok(not T.exists(dir), "the next qshell removed the stale temp dir")
end)

T.test("SIGINT to a running script: interrupted, status 1, QEMU gone", function()
  local qpid, vmpid, dir = background()
  os.execute("kill -INT " .. qpid)
  T.ok(wait_gone(qpid, 10), "qshell exited")
  T.ok(wait_gone(vmpid, 5), "QEMU gone")
  T.ok(not T.exists(dir), "temp dir removed")
  local f = io.open(tmp .. "/bg.err"); local err = f:read("a"); f:close()
  T.match(err, "interrupted")
end)

T.test("a script error: no QEMU left, no temp dir left", function()
  local s = write(tmp .. "/err.lua", [[
    local vm = qemu.launch{memory="64M"}
    print(vm.pid, vm.tmpdir)
    error("script failed")]])
  local code, out, err = run("run " .. s)
  T.eq(code, 1)
  T.match(err, "script failed")
  local pid, dir = out:match("^(%d+)%s+(%S+)")
  T.ok(pid, "printed the pid")
  T.ok(wait_gone(tonumber(pid), 2), "QEMU gone")
  T.ok(not T.exists(dir), "temp dir removed")
end)

T.test("os.exit without closing the state: QEMU and temp dir gone", function()
  local s = write(tmp .. "/exit.lua", [[
    local vm = qemu.launch{memory="64M"}
    print(vm.pid, vm.tmpdir)
    io.stdout:flush()
    os.exit(3)]])
  local code, out = run("run " .. s)
  T.eq(code, 3)
  local pid, dir = out:match("^(%d+)%s+(%S+)")
  T.ok(wait_gone(tonumber(pid), 2), "QEMU gone")
  T.ok(not T.exists(dir), "temp dir removed")
end)

T.test("a script that ends normally quits its VMs gracefully", function()
  local s = write(tmp .. "/normal.lua", [[
    local vm = qemu.launch{memory="64M"}
    print(vm.pid, vm.tmpdir)]])
  local code, out = run("run " .. s)
  T.eq(code, 0)
  local pid, dir = out:match("^(%d+)%s+(%S+)")
  T.ok(not T.pid_alive(tonumber(pid)), "QEMU gone")
  T.ok(not T.exists(dir), "temp dir removed")
end)

T.test("qshell doc: an entry, every name, the man page, usage errors", function()
  local code, out, err = run("doc qemu.launch vm.console:run")
  T.eq(code, 0, err)
  T.match(out, "^qemu%.launch%(")
  T.match(out, "\nvm%.console:run%(")
  code, out = run("doc")
  T.eq(code, 0)
  T.match(out, "The VM object")
  T.match(out, "qemu%.sweep")
  code, out = run("doc --man")
  T.eq(code, 0)
  T.match(out, "^%.TH QSHELL\\%-LUA 7")
  code, out, err = run("doc qemu.nope")
  T.eq(code, 1)
  T.match(err, "qshell doc: no entry for 'qemu%.nope'")
  code, out, err = run("doc --bogus")
  T.eq(code, 2)
  T.match(err, "unknown option '%-%-bogus'")
  code, out, err = run("doc --man extra")
  T.eq(code, 2)
end)

T.test("no stray temp dirs", function()
  T.eq(leftover_tmpdirs(), "")
end)

T.run()
