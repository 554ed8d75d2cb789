-- t: the assert-style test harness every Lua test file uses.
--
--   local T = require "t"
--   T.test("launch and status", function() T.eq(vm:status(), "running") end)
--   T.run()   -- prints each failure, then "N passed, N failed"; exits 1 on failure
--
-- QSHELL_TEST_FILTER=pattern runs only the tests whose name matches.

local T = {}
local tests = {}
local sys = require "qshell.os"

local cleanups = {}

-- T.cleanup(fn): run fn after the tests (before the process exits), also
-- when a test failed: for servers a test file started.
function T.cleanup(fn)
  cleanups[#cleanups + 1] = fn
end

-- T.keep(vm) -> vm: a VM the file's tests share (a guest that takes long to
-- boot); it outlives each test and is closed after the last.
local kept = {}
function T.keep(vm)
  kept[vm] = true
  cleanups[#cleanups + 1] = function() vm:close() end
  return vm
end

function T.test(name, fn)
  tests[#tests + 1] = { name = name, fn = fn }
end

local function fmt(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

function T.fail(msg, level)
  error(msg, (level or 1) + 1)
end

function T.eq(got, want, what)
  if got ~= want then
    error(string.format("%sexpected %s, got %s", what and (what .. ": ") or "", fmt(want), fmt(got)), 2)
  end
  return got
end

function T.ok(v, what)
  if not v then error("expected a true value" .. (what and (": " .. what) or ""), 2) end
  return v
end

function T.match(s, pattern, what)
  if type(s) ~= "string" or not s:find(pattern) then
    error(string.format("%s%s does not match %q", what and (what .. ": ") or "", fmt(s), pattern), 2)
  end
  return s
end

-- T.raises(fn, class_or_nil, pattern_or_nil) -> the error value
function T.raises(fn, class, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error" .. (class and (" of class " .. class) or ""), 2) end
  if class then
    if type(err) ~= "table" or err.class ~= class then
      error(string.format("expected error class %s, got %s", class, tostring(err)), 2)
    end
  end
  if pattern and not tostring(err):find(pattern) then
    error(string.format("error %q does not match %q", tostring(err), pattern), 2)
  end
  return err
end

function T.now() return sys.now() end

-- Run a shell command; returns exit code, stdout, stderr.
function T.sh(cmd)
  local dir = os.getenv("QSHELL_TEST_TMP") or "/tmp"
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(string.format("(%s) >%s 2>%s", cmd, out, err))
  local function slurp(p)
    local f = io.open(p, "rb"); local s = f and f:read("a") or ""; if f then f:close() end
    os.remove(p); return s
  end
  local o, e = slurp(out), slurp(err)
  if how == "signal" then code = 128 + code end
  return ok and 0 or code, o, e
end

-- T.tmpfs(dir, size): a small tmpfs mounted at dir (made) for the rest of
-- the test file (needs root: the mount is asserted).
function T.tmpfs(dir, size)
  os.execute("mkdir -p " .. dir)
  local code, _, err = T.sh(string.format("mount -t tmpfs -o size=%s tmpfs %s", size, dir))
  T.eq(code, 0, "a small tmpfs at " .. dir .. " (needs root): " .. err)
  T.cleanup(function() os.execute("umount -l " .. dir) end)
  return dir
end

function T.pid_alive(pid)
  -- kill -0 also succeeds for a zombie: look at /proc state instead.
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return false end
  local s = f:read("a") or ""
  f:close()
  local state = s:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function T.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return os.rename(path, path) and true or false
end

function T.tmpdir()
  local base = os.getenv("QSHELL_TEST_TMP") or os.getenv("TMPDIR") or "/tmp"
  local p = os.tmpname()
  os.remove(p)
  local dir = base .. "/t-" .. p:match("[^/]+$")
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  return dir
end

function T.run()
  local filter = os.getenv("QSHELL_TEST_FILTER")
  local passed, failed, skipped = 0, 0, 0
  local script = arg and arg[0] or "?"
  for _, t in ipairs(tests) do
    if filter and filter ~= "" and not t.name:find(filter) then
      skipped = skipped + 1
    else
      local t0 = sys.now()
      local ok, err = xpcall(t.fn, function(e)
        local msg = tostring(e)
        if os.getenv("QSHELL_TEST_VERBOSE") then msg = debug.traceback(msg, 2) end
        return msg
      end)
      local dt = sys.now() - t0
      if ok then
        passed = passed + 1
        if os.getenv("QSHELL_TEST_VERBOSE") then
          io.stderr:write(string.format("  ok   %s (%.2f s)\n", t.name, dt))
        end
      else
        failed = failed + 1
        io.stderr:write(string.format("  FAIL %s: %s: %s\n", script, t.name, err))
      end
      -- A test must not leave VMs behind for the next one.
      for _, vm in ipairs(qemu.vms()) do
        if not kept[vm] then pcall(vm.close, vm) end
      end
    end
  end
  for _, fn in ipairs(cleanups) do
    local ok, err = pcall(fn)
    if not ok then io.stderr:write("  cleanup failed: " .. tostring(err) .. "\n") end
  end
  print(string.format("%d passed, %d failed%s", passed, failed,
                      skipped > 0 and string.format(", %d skipped", skipped) or ""))
  os.exit(failed == 0 and 0 or 1, true)
end

return T
