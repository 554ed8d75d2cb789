-- qemu.console: the guest's serial console (vm.console).
--
-- The C side drains the console from QEMU's first byte on, into a window of
-- unconsumed output; here that window is searched with Lua patterns.  A
-- match consumes everything up to its end, as expect(1) does, so the same
-- text never satisfies two waits.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
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
  if self._cloud_init ~= "finished" then self:_note_cloud_init(gone) end
  self._recent = (self._recent .. gone):sub(-RECENT)
  self._c:consume(n)
end

-- cloud-init says on the console when it starts and when it is done
-- ("Cloud-init v. 22.4.2 running 'init-local' ...", "... finished at
-- ..."); login needs to know (it sets a seed's password late).
function Console:_note_cloud_init(text)
  if not text:find("Cloud-init v. ", 1, true) then return end
  if text:find("Cloud%-init v%. [^\r\n]- finished at") then
    self._cloud_init = "finished"
  elseif text:find("Cloud%-init v%. [^\r\n]- running") then
    self._cloud_init = "running"
  end
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

-- While the guest is silent: after half a second, then every two, ask
-- QEMU whether the VM runs at all (a paused one never answers: say so at
-- once rather than at the timeout).  Costs nothing while output flows.
local QUIET_FIRST, QUIET_EVERY = 0.5, 2

-- Wait until find(buffer) succeeds; returns the buffer it matched in, then
-- find's results.
function Console:_wait_for(what, find, timeout)
  local deadline = sys.now() + timeout
  local _, dropped0 = self._c:stats()
  local quiet_check = sys.now() + QUIET_FIRST
  local seen = self._c:stats()
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
    local now = sys.now()
    local total = self._c:stats()
    if total ~= seen then
      seen, quiet_check = total, now + QUIET_FIRST
    elseif now >= quiet_check then
      self._vm:_need_running(what)
      quiet_check = now + QUIET_EVERY
    end
    local left = deadline - now
    if left <= 0 then self:_fail(what, "timed out", "timeout", timeout) end
    local ok, msg, code = self._c:wait(#buf, math.min(left, math.max(0.01, quiet_check - now)))
    -- a slice of the wait ran out, not the whole: look again
    if not ok and code == "timeout" and sys.now() < deadline then ok = true end
    if not ok then
      -- The last bytes before EOF may complete the match.
      local last = self._c:peek()
      local r2 = table.pack(find(last))
      if r2[1] then return last, table.unpack(r2, 1, r2.n) end
      self:_fail(what, msg, code, timeout)
    end
  end
end

-- Raise NotRunning when the VM is stopped; wait while it is in a state it
-- leaves by itself (a restore's incoming migration).
function Console:_ready(what)
  local deadline = sys.now() + 60
  while self._vm:_need_running(what) == false and sys.now() < deadline do sys.sleep(0.02) end
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

local run_opts = { timeout = check.nonneg, prompt = "string", strip_ansi = "boolean",
                   kernel_messages = "boolean" }

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Terminal escapes: CSI (colours, cursor moves, modes), OSC (titles), and
-- the two-byte ones.
local function strip_ansi(s)
  s = s:gsub("\27%[[0-9;:<=>?]*[ -/]*[@-~]", "")
  s = s:gsub("\27%][^\7\27]*\7", ""):gsub("\27%][^\7\27]*\27\\", "")
  s = s:gsub("\27[()][%w]", ""):gsub("\27[=>78cDEHM]", "")
  return s
end
Console.strip_ansi = strip_ansi

-- The lines the console printed last (consumed or not), for the checks
-- that look at what is on the screen now.
function Console:_printed(buf)
  return self._recent:sub(-400) .. (buf or self._c:peek())
end

-- Does s end with suffix, give or take kernel messages printed after it
-- ("[   23.456789] random: crng init done")?  A getty's or a shell's
-- prompt is the last thing they print before they wait.
local function ends_with(s, suffix)
  if suffix == "" then return false end
  local at, from = nil, 1
  while true do
    local i = s:find(suffix, from, true)
    if not i then break end
    at, from = i, i + 1
  end
  if not at then return false end
  local rest = s:sub(at + #suffix):gsub("%[%s*%d+%.%d+%][^\n]*\n?", "")
  return rest:match("^%s*$") ~= nil
end

-- After a timeout or Ctrl-C: end the guest command (^C) and wait until its
-- shell reads lines again (putting the console log level back), so the
-- next run() works.  Returns nil or why not.
function Console:_interrupt(id)
  local ok, err = pcall(function()
    self._c:send("\3", 5)
    sys.sleep(0.2)
    local r = "__qs" .. id .. "r"
    local restore = self._klevel and string.format("echo %d 2>/dev/null >/proc/sys/kernel/printk; ", self._klevel) or ""
    local ok2 = self._c:send(string.format("\r%sprintf '%%s%%s\\n' __qs %sr\r", restore, id), 5)
    if not ok2 then error("send failed", 0) end
    local buf, _, e = self:_wait_for("console:run (interrupting)", function(b)
      return b:find(r .. "\r?\n")
    end, 10)
    self:_consume(e, buf)
  end)
  if not ok then return errors.is(err, "Timeout") and "the guest command does not end on ^C" or tostring(err) end
  return nil
end

-- The level run() puts back, when known (a checkpoint records it: the
-- guest restored from it has that level, and its console need not read it).
function Console:_known_kernel_level()
  return self._klevel or nil
end

function Console:_assume_kernel_level(level)
  if self._klevel == nil and math.type(level) == "integer" and level > 1 then self._klevel = level end
end

-- The kernel's console log level, read once per console (nil: not yet;
-- false: unreadable, e.g. not root: then it is left alone).  run() puts
-- back this value, not what it finds: a command that ends the shell
-- cannot leave the level lowered for the next one to "restore".
function Console:_kernel_level()
  if self._klevel == nil then
    self._klevel = false
    local out = self:run("cat /proc/sys/kernel/printk 2>/dev/null", { kernel_messages = true })
    local level = tonumber(out:match("^%s*(%d+)"))
    if level and level > 1 then self._klevel = level end
  end
  return self._klevel
end

-- console:run(cmd [, {timeout=, prompt=, strip_ansi=, kernel_messages=}]) -> output, status
-- The command runs in the guest's shell between two markers the echo of the
-- typed line cannot contain; output from before the call is discarded.
-- While it runs, the kernel's console log level is 1 (as root), so kernel
-- messages stay in the guest's dmesg instead of the output;
-- kernel_messages=true leaves them.  A timeout or Ctrl-C interrupts the
-- command (^C) and waits for the shell before raising.
function Console:run(cmd, opts)
  check.arg("console:run", 1, cmd, "string")
  opts = check.options("console:run", opts, run_opts, 2)
  local klevel = opts.kernel_messages ~= true and self:_kernel_level()
  self._n = self._n + 1
  local id = string.format("%x%x%d", os.time() & 0xffff, math.random(0, 0xfffff), self._n)
  local b, e = "__qs" .. id .. "b", "__qs" .. id .. "e"
  self:flush()
  -- A stopped VM would take the line and never answer: said now, and the
  -- line is not typed (it would run whenever the VM goes on).
  self:_ready(string.format("console:run(%q)", cmd))
  -- printf '%s%s' splits each marker in the typed line; eval keeps the
  -- command's own ';', '#' and newlines to itself.  The log level is set
  -- with shell builtins only.
  local line
  if klevel then
    line = string.format("echo 1 2>/dev/null >/proc/sys/kernel/printk; printf '%%s%%s\\n' __qs %sb; eval %s; " ..
                         "__qss=$?; printf '%%s%%s%%d\\n' __qs %se $__qss; echo %d 2>/dev/null >/proc/sys/kernel/printk\r",
                         id, shell_quote(cmd), id, klevel)
  else
    line = string.format("printf '%%s%%s\\n' __qs %sb; eval %s; printf '%%s%%s%%d\\n' __qs %se $?\r",
                         id, shell_quote(cmd), id)
  end
  self:send(line)
  local what = string.format("console:run(%q)", cmd)
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local lp = self._login_prompt or "login: "
  local function find(buf)
    local s1, s2 = buf:find(b .. "\r?\n", 1)
    if not s1 then return nil end
    local t1, t2, st = buf:find(e .. "(%d+)\r?\n", s2 + 1)
    if not t1 then
      -- The command ended the shell: a getty asks for a login again (or
      -- logs in again by itself).
      local tail = buf:sub(s2 + 1)
      if ends_with(tail, lp) or tail:find("(automatic login)", 1, true) then
        local l1 = s2
        repeat local i = buf:find(lp, l1 + 1, true); if i then l1 = i end until not i
        return s1, s2, l1, nil, "exit"
      end
      return nil
    end
    return s1, s2, t1, t2, st
  end
  local deadline = sys.now() + timeout
  local ok, buf, s_end, e_start, e_end, status
  while true do
    local r = table.pack(pcall(self._wait_for, self, what, find, math.max(0, deadline - sys.now())))
    ok, buf = r[1], r[2]
    if not ok then break end
    s_end, e_start, e_end, status = r[4], r[5], r[6], r[7]
    if status ~= "exit" then break end
    -- A login prompt after the command started: the shell ended -- unless
    -- more comes (a command that printed one).
    local before = self._c:stats()
    sys.sleep(0.5)
    if self._c:stats() == before then break end
  end
  if not ok then
    local err = buf
    -- Ctrl-C arrives as the interrupt hook's "...: interrupted!" string
    -- (or an Interrupted error from a wait in C)
    if type(err) == "string" and err:match("interrupted!$") then
      err = errors.new { class = "Interrupted", command = what, desc = "interrupted!" }
    end
    if errors.is(err, "Timeout") or errors.is(err, "Interrupted") then
      local why = self:_interrupt(id)
      err.desc = err.desc .. (why and ("\nthe command could not be interrupted: " .. why)
                              or "\nthe command was interrupted (^C); the shell is ready for the next run()")
      if not why and klevel and errors.is(err, "Timeout") and not err.hint then
        -- the kernel's words were held back from the console: the traps
        -- (an RCU stall, ...) are looked for in its log instead
        local dok, kmsg = pcall(self.run, self, "dmesg 2>/dev/null | tail -n 40", { timeout = 10, kernel_messages = true })
        if dok then err.hint = errors.hint_for(kmsg) end
      end
    end
    error(err, 0)
  end
  if status == "exit" then
    -- leave the login prompt for console:login
    self:_consume(e_start - 1, buf)
    self._shell_ready = false
    errors.raise { class = "ShellExited", command = what,
                   desc = "the command ended the guest's shell: the console shows the login prompt again",
                   hint = "run it in a subshell to get its status: run(\"(" .. cmd:gsub("\n.*", "") ..
                          ")\"); console:login{...} logs in again" }
  end
  local out = buf:sub(s_end + 1, e_start - 1):gsub("\r\n", "\n")
  out = out:gsub("\n$", "")
  if opts.strip_ansi then out = strip_ansi(out) end
  self:_consume(e_end, buf)
  if opts.prompt then self:expect(opts.prompt, { timeout = timeout, plain = true }) end
  return out, tonumber(status)
end

local login_opts = { user = "string", password = "string", timeout = check.nonneg,
                     login_prompt = "string", prompt = "string", setup = "boolean", wait_boot = "boolean" }

-- On a systemd guest, until the boot is over: services still starting
-- write to the console themselves (cloud-init, systemd's status lines),
-- and what they write is no kernel message the log level can hold back.
local WAIT_BOOT = "[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && " ..
                  "systemctl is-system-running --wait >/dev/null 2>&1; true"

-- What every login sets up in the guest's shell: no pager (systemctl and
-- git would wait in less), no bracketed paste.  Quiet when a shell lacks it.
local SETUP = "export PAGER=cat SYSTEMD_PAGER=cat GIT_PAGER=cat 2>/dev/null; " ..
              "bind 'set enable-bracketed-paste off' 2>/dev/null; true"

-- console:login{user=, password=, timeout=, login_prompt=, prompt=, setup=true, wait_boot=true}
-- Logs in at the login prompt: a fresh one, one a script already waited
-- for (expect), or none at all when a getty logged in by itself
-- ("(automatic login)") or a shell prompt is already waiting.  On a
-- guest whose cloud-init is still at work, "Login incorrect" is tried
-- again at the next prompt until cloud-init says it finished.
function Console:login(opts)
  opts = check.options("console:login", opts, login_opts)
  local timeout = opts.timeout or 60
  local lp = opts.login_prompt or "login: "
  local user = opts.user or "root"
  -- a shell's own default: "# " for root, "$ " for everyone else
  local prompt = opts.prompt or (user == "root" and "# " or "$ ")
  self._login_prompt, self._prompt = lp, prompt
  local what = "console:login"
  self:_ready(what)
  -- 1. A shell prompt already waiting, an autologin, or a login prompt as
  -- the last thing printed (then quiet for a moment: an autologin getty
  -- prints "(automatic login)" right after it).  A prompt that something
  -- else printed after (a late boot message) is asked for again with an
  -- empty line once the console is quiet.
  local deadline = sys.now() + timeout
  local state
  local function find(buf)
    local text = self:_printed(buf)
    if ends_with(text, prompt) then return 1, 1, "shell" end
    if text:find("(automatic login)", 1, true) then return 1, 1, "auto" end
    if ends_with(text, lp) then return 1, 1, "login" end
  end
  while not state do
    local left = deadline - sys.now()
    local ok, r1, _, _, which = pcall(self._wait_for, self, what, find, math.max(0, math.min(3, left)))
    if ok then
      local before = self._c:stats()
      sys.sleep(0.3)
      if self._c:stats() == before then state = which end
    elseif errors.is(r1, "Timeout") and left > 3 then
      -- quiet for 3 s without a prompt at the end: a getty's prompt among
      -- the last lines is printed again by an empty line
      if self:_printed():sub(-400):find(lp, 1, true) then self._c:send("\r", 5) end
    elseif errors.is(r1, "Timeout") then
      self:_fail(what, "timed out", "timeout", timeout)
    else
      error(r1, 0)
    end
  end
  if state == "login" then
    self:flush()
    self:send(user .. "\r")
  end
  if state == "auto" then
    local buf = self._c:peek()
    local _, e = buf:find("(automatic login)", 1, true)
    if e then self:_consume(e, buf) end
  end
  -- 2. The password, when asked, then the shell prompt or a refusal.
  local sent_pw, tries = false, 0
  while state ~= "shell" do
    local buf, s, e, which = self:_wait_for(what, function(buf)
      local s, e = buf:find("Login incorrect", 1, true)
      if s then return s, e, "bad" end
      s, e = buf:find("assword: ", 1, true)
      if s and not sent_pw then return s, e, "password" end
      s, e = buf:find(prompt, 1, true)
      if s then return s, e, "ok" end
    end, math.max(0, deadline - sys.now()))
    if which == "bad" then
      -- cloud-init sets a seed's password (and user) in its config stage,
      -- which may end after the getty's first prompt: while it has not
      -- said it is done, log in again at the next prompt.
      self:_note_cloud_init(self._c:peek())
      tries = tries + 1
      if opts.password and self._cloud_init == "running" then
        self:_consume(e, buf)
        local lbuf, _, le = self:_wait_for(what, function(b)
          local ls, lend = b:find(lp, 1, true)
          return ls, lend
        end, math.max(0, deadline - sys.now()))
        self:_consume(le, lbuf)
        self:send(user .. "\r")
        sent_pw = false
        goto continue
      end
      errors.raise { class = "LoginFailed", command = what,
                     desc = "the guest said: Login incorrect (user " .. user .. ")" ..
                            (self._cloud_init == "finished" and tries > 1
                               and string.format(", %d times, the last after cloud-init finished", tries)
                             or self._cloud_init == "finished" and ", after cloud-init finished" or ""),
                     hint = opts.password and "check password=" or "the user needs a password= here" }
    elseif which == "password" then
      if not opts.password then
        errors.raise { class = "LoginFailed", command = what,
                       desc = "the guest asks for " .. user .. "'s password and none was given",
                       hint = "password= on console:login, or on qemu.guest.launch for another image" }
      end
      self:_consume(e, buf)
      self:send(opts.password .. "\r")
      sent_pw = true
    else
      state = "shell"
    end
    ::continue::
  end
  self:flush()
  self._shell_ready = true
  if opts.setup ~= false then self:run(SETUP, { timeout = timeout }) end
  if opts.wait_boot ~= false then
    local limit = math.max(timeout, 300)
    local ok, err = pcall(self.run, self, WAIT_BOOT, { timeout = limit })
    if not ok then
      if errors.is(err, "Timeout") then
        errors.raise { class = "Timeout", command = what,
                       desc = string.format("logged in, but the guest's boot did not finish within %g s " ..
                                            "(systemctl is-system-running --wait)", limit),
                       hint = "`systemctl list-jobs` in the guest shows what it waits for; wait_boot=false skips the wait" }
      end
      error(err, 0)
    end
  end
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
  local ok, msg, code = self._c:attach(0x1d, self._prompt or "# ")
  io.stderr:write("\r\n[detached]\n")
  if not ok then self:_fail("vm:attach", msg, code, 0) end
end

return Console
