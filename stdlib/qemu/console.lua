-- qemu.console: the guest's serial console (vm.console).
--
-- The C side drains the console from QEMU's first byte on, into a window of
-- unconsumed output; here that window is searched with Lua patterns.  A
-- match consumes everything up to its end, as expect(1) does, so the same
-- text never satisfies two waits.

local errors = require "qemu.errors"
local check = require "qemu.check"
local sys = require "qshell.os"

local Console = {}
Console.__index = Console
Console.__name = "qemu.console"

local DEFAULT_TIMEOUT = 30
local RECENT = 16000

function Console.new(vm, c)
  return setmetatable({ _c = c, _vm = vm, _recent = "", _n = 0 }, Console)
end

function Console.__tostring(con)
  return "console of " .. tostring(con._vm.name)
end

-- Consume the first n bytes; buf, when given, is the peeked window they
-- come from (saves copying it again).
function Console:_consume(n, buf)
  if n <= 0 then return end
  buf = buf or self._c:peek()
  local gone = buf:sub(1, n)
  self._recent = (self._recent .. gone):sub(-RECENT)
  self._c:consume(n)
end

-- The last n lines the guest printed (consumed or not), for messages.
function Console:tail(n)
  n = n or 10
  local text = (self._recent .. self._c:peek()):gsub("\r", "")
  local lines = {}
  for line in text:gmatch("[^\n]*") do lines[#lines + 1] = line end
  while #lines > 0 and lines[#lines]:match("^%s*$") do lines[#lines] = nil end
  local first = math.max(1, #lines - n + 1)
  return table.concat(lines, "\n", first)
end

local function trap_hint(con, text)
  local total = con._c:stats()
  if total == 0 then
    return "the guest printed nothing on the serial console: no console=ttyS0 in append?"
  end
  return errors.hint_for(text)
end

function Console:_fail(what, msg, code, timeout)
  if code == "timeout" then
    local last = self:tail(8)
    errors.raise {
      class = "Timeout", command = what,
      desc = string.format("not seen within %g s; last console lines:\n%s", timeout,
                           last ~= "" and last or "(nothing)"),
      hint = trap_hint(self, self._recent .. self._c:peek()),
    }
  elseif code == "closed" then
    -- QEMU went away: its exit status, and what the guest said last.
    local st = self._vm:_exit_status(1)
    local last = self:tail(6)
    local text = self._recent .. self._c:peek()
    local panic = text:match("(Kernel panic %- not syncing:[^\r\n]*)")
    errors.raise {
      class = "QEMUExited", command = what, exit = st,
      desc = string.format("QEMU %s%s; last console lines:\n%s", st and st.desc or "closed the console",
                           panic and ("; the guest said: " .. panic) or "",
                           last ~= "" and last or "(nothing)"),
      hint = errors.hint_for(self._recent .. self._c:peek()),
    }
  end
  errors.from_code(what, msg, code)
end

-- Wait until find(buffer) succeeds; returns the buffer it matched in, then
-- find's results.
function Console:_wait_for(what, find, timeout)
  local deadline = sys.now() + timeout
  local _, dropped0 = self._c:stats()
  while true do
    local buf = self._c:peek()
    local r = table.pack(find(buf))
    if r[1] then return buf, table.unpack(r, 1, r.n) end
    local _, dropped = self._c:stats()
    if dropped > dropped0 then
      -- The window (8 MiB) overflowed: what we wait for may be gone.
      errors.raise { class = "ConsoleOverflow", command = what,
                     desc = "the guest printed more than 8 MiB before a match; the start of it was dropped",
                     hint = "send bulk output to a file in the guest (cmd > /tmp/out) and read what you need" }
    end
    local left = deadline - sys.now()
    if left <= 0 then self:_fail(what, "timed out", "timeout", timeout) end
    local ok, msg, code = self._c:wait(#buf, left)
    if not ok then
      -- The last bytes before EOF may complete the match.
      local last = self._c:peek()
      local r2 = table.pack(find(last))
      if r2[1] then return last, table.unpack(r2, 1, r2.n) end
      self:_fail(what, msg, code, timeout)
    end
  end
end

-- console:send(text): raw bytes to the guest (end lines with "\r")
function Console:send(text)
  check.arg("console:send", 1, text, "string")
  local ok, msg, code = self._c:send(text, 10)
  if not ok then self:_fail("console:send", msg, code, 10) end
end

local expect_opts = { timeout = check.nonneg, plain = "boolean" }

local function expect_args(fname, pattern, opts)
  check.arg(fname, 1, pattern, "string")
  if type(opts) == "number" then opts = { timeout = opts } end
  return check.options(fname, opts, expect_opts, 2)
end

-- console:expect(pattern [, timeout | {timeout=, plain=}]) -> match, captures...
function Console:expect(pattern, opts)
  opts = expect_args("console:expect", pattern, opts)
  local what = string.format("console:expect(%q)", pattern)
  local r = table.pack(self:_wait_for(what, function(buf)
    return buf:find(pattern, 1, opts.plain)
  end, opts.timeout or DEFAULT_TIMEOUT))
  local buf, s, e = r[1], r[2], r[3]
  self:_consume(e, buf)
  return buf:sub(s, e), table.unpack(r, 4, r.n)
end

-- console:flush() -> the unconsumed output, now consumed
function Console:flush()
  local buf = self._c:peek()
  self:_consume(#buf, buf)
  return buf
end

local run_opts = { timeout = check.nonneg, prompt = "string" }

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- console:run(cmd [, {timeout=, prompt=}]) -> output, status
-- The command runs in the guest's shell between two markers the echo of the
-- typed line cannot contain; output from before the call is discarded.
function Console:run(cmd, opts)
  check.arg("console:run", 1, cmd, "string")
  opts = check.options("console:run", opts, run_opts, 2)
  self._n = self._n + 1
  local id = string.format("%x%x%d", os.time() & 0xffff, math.random(0, 0xfffff), self._n)
  local b, e = "__qs" .. id .. "b", "__qs" .. id .. "e"
  self:flush()
  -- printf '%s%s' splits each marker in the typed line; eval keeps the
  -- command's own ';', '#' and newlines to itself.
  self:send(string.format("printf '%%s%%s\\n' __qs %sb; eval %s; printf '%%s%%s%%d\\n' __qs %se $?\r",
                          id, shell_quote(cmd), id))
  local what = string.format("console:run(%q)", cmd)
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local buf, _, s_end, e_start, e_end, status = self:_wait_for(what, function(buf)
    local s1, s2 = buf:find(b .. "\r?\n", 1)
    if not s1 then return nil end
    local t1, t2, st = buf:find(e .. "(%d+)\r?\n", s2 + 1)
    if not t1 then return nil end
    return s1, s2, t1, t2, st
  end, timeout)
  local out = buf:sub(s_end + 1, e_start - 1):gsub("\r\n", "\n"):gsub("\r", "")
  out = out:gsub("\n$", "")
  self:_consume(e_end, buf)
  if opts.prompt then self:expect(opts.prompt, { timeout = timeout, plain = true }) end
  return out, tonumber(status)
end

local login_opts = { user = "string", password = "string", timeout = check.nonneg,
                     login_prompt = "string", prompt = "string" }

-- console:login{user=, password=, timeout=, login_prompt=, prompt=}
-- Waits for the login prompt, logs in, and waits for the shell prompt.
function Console:login(opts)
  opts = check.options("console:login", opts, login_opts)
  local timeout = opts.timeout or 60
  self:expect(opts.login_prompt or "login: ", { timeout = timeout, plain = true })
  self:send((opts.user or "root") .. "\r")
  if opts.password then
    self:expect("Password: ", { timeout = 10, plain = true })
    self:send(opts.password .. "\r")
  end
  local prompt = opts.prompt or "# "
  local what = "console:login"
  local _, _, _, which = self:_wait_for(what, function(buf)
    local s, e = buf:find("Login incorrect", 1, true)
    if s then return s, e, "bad" end
    s, e = buf:find(prompt, 1, true)
    if s then return s, e, "ok" end
  end, timeout)
  if which == "bad" then
    errors.raise { class = "LoginFailed", command = what,
                   desc = "the guest said: Login incorrect (user " .. (opts.user or "root") .. ")" }
  end
  self:flush()
end

-- console:log(path | nil): append everything the guest prints from now on,
-- each line stamped with seconds since the VM started; nil stops.
function Console:log(path)
  if path ~= nil then check.arg("console:log", 1, path, "string") end
  local ok, msg = self._c:log(path)
  if not ok then errors.raise { class = "IOError", command = "console:log", desc = msg } end
end

-- console:attach(): the guest's console in this terminal; Ctrl-] returns.
-- The VM closes its console with it (not a script API).
function Console:_close()
  self._c:close()
end

function Console:attach()
  io.stderr:write(string.format("[attached to %s's console; Ctrl-] returns]\r\n", self._vm.name))
  local ok, msg, code = self._c:attach(0x1d, true)
  io.stderr:write("\r\n[detached]\n")
  if not ok then self:_fail("vm:attach", msg, code, 0) end
end

return Console
