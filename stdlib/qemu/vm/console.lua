-- qemu.console: the guest's serial console (vm.console).
--
-- The C side drains the console from QEMU's first byte on, into a window of
-- unconsumed output; here that window is searched with Lua patterns.  A
-- match consumes everything up to its end, as expect(1) does, so the same
-- text never satisfies two waits.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local sys = require "qshell.os"

---@apiclass qemu.Console console  The guest's serial console (ttyS0) of a VM: vm.console
--- `qemu.launch` connects the guest's first serial port to qshell before
--- QEMU starts (a socketpair drained by a reader thread, so the guest never
--- stalls on a full buffer): nothing the kernel prints is lost. What the
--- guest prints collects in a window of unconsumed output (8 MiB at most)
--- that `expect` and `run` search; a match consumes the output up to its
--- end, as expect(1) does, so the same text never satisfies two waits. It
--- is `vm.console` of a VM launched with `console=true` (the default); an
--- attached VM has none. It is closed with the VM; its methods then raise
--- a plain Lua error ("attempt to use a closed console").
---
---     local vm <close> = qemu.guest.launch {}          -- booted, logged in
---     local out, status = vm.console:run("uname -r")   --> "6.1.0-...-cloud-amd64", 0
---     vm.console:send("dmesg | tail -1\r")
---     local _, secs = vm.console:expect("%[%s*(%d+%.%d+)%]")
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

---@api vm.console:tail vm.console:tail([n]) -> text
--- The last lines the guest printed, consumed or not.
--- For messages and a look at the screen: it consumes nothing. Carriage
--- returns are removed and trailing empty lines dropped. It sees the last
--- 16,000 bytes already consumed plus the unconsumed output.
---
---     print(vm.console:tail(40))
---
---@param n? integer  how many lines (default 10)
---@return string text  the lines, joined with "\n"
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

---@api vm.console:send vm.console:send(text)
--- Sends raw bytes to the guest's serial port, as typed keys.
--- End lines with "\r" (Enter). Nothing is waited for; the guest's echo
--- stays in the console's output for `expect`. Unlike `run`, `expect` and
--- `login`, it also types into a paused VM: the bytes wait in the serial
--- port until the guest runs (the way to start a workload at `vm:cont()`
--- without input during the run).
---
---     vm.console:send("poweroff -f\r")
---
---@param text string  the bytes to send
---@error BadArgument  text is not a string
---@error QEMUExited  QEMU has ended (the console is closed)
---@error Timeout  the bytes could not be written within 10 s
---@error Interrupted  Ctrl-C while sending
function Console:send(text)
  check.arg("console:send", 1, text, "string")
  local ok, msg, code = self:_send(text, 10)
  if not ok then self:_fail("console:send", msg, code, 10) end
end

-- Bytes to the guest: through the socket, or under icount={console="exact"}
-- to the gate that types them at the guest's idle points.
function Console:_send(text, timeout)
  if self._gate then return require("qemu.vm.gate").send(self, text) end
  if self._paced then return self:_send_paced(text, timeout) end
  return self._c:send(text, timeout)
end

-- Under record=, QEMU hands each read of the console socket to the guest
-- later, as an event of the log, so the UART's "no room" no longer holds
-- bytes back in the socket: bytes typed while the guest is busy overflow
-- its FIFO and are lost (in the recording too; measured: one byte every
-- 3 ms still lost some).  So a byte goes once the guest has printed
-- something since the last one (its echo: the tty has taken it), or
-- ECHO_WAIT later (input that is not echoed).
local ECHO_WAIT = 0.2
function Console:_send_paced(text, timeout)
  local deadline = sys.now() + timeout
  for i = 1, #text do
    local before = self._c:stats()
    local ok, msg, code = self._c:send(text:sub(i, i), math.max(deadline - sys.now(), 0))
    if not ok then return ok, msg, code end
    local until_echo = math.min(deadline, sys.now() + ECHO_WAIT)
    while self._c:stats() == before and sys.now() < until_echo do sys.sleep(0.0005) end
    if sys.now() >= deadline then return nil, "the guest did not take the console input", "timeout" end
  end
  return true
end

local expect_opts = { timeout = check.nonneg, plain = "boolean" }

local function expect_args(fname, pattern, opts)
  check.arg(fname, 1, pattern, "string")
  if type(opts) == "number" then opts = { timeout = opts } end
  return check.options(fname, opts, expect_opts, 2)
end

---@api vm.console:expect vm.console:expect(pattern [, timeout | {timeout=30, plain=false}]) -> match, captures...
--- Waits until the guest's console output matches a Lua pattern, and consumes the output up to the match's end.
--- The search starts at the oldest unconsumed output, so text printed
--- before the call counts, but never text an earlier match consumed. On a
--- timeout the error shows the pattern and the last console lines and names
--- the fix for the known traps (nothing printed at all: no `console=ttyS0`
--- in `append`; RCU stalls: `icount`; "Unable to mount root fs": `root=` and
--- the disk interface; "invalid opcode": the CPU model). If QEMU exits
--- meanwhile, the error says how, with the guest's kernel panic line. When
--- the console has been quiet for half a second, QEMU is asked whether the
--- VM runs at all: a paused or stopped VM raises `NotRunning` at once
--- instead of at the timeout.
---
---     vm.console:expect("login: ", 120)
---     local _, version = vm.console:expect("Linux version (%S+)")
---     vm.console:expect("[ OK ]", { plain = true })
---
---@param pattern string  a Lua pattern, or literal text with `plain=true`
---@param options? number|table  the timeout in seconds, or `{timeout=30, plain=false}`: `timeout=` (number >= 0) seconds to
---   wait (default 30), `plain=` (boolean) match `pattern` as literal text
---@return string match  the matched text
---@return string|integer ...  the pattern's captures, as `string.find` returns them
---@error Timeout  no match within the timeout (the last console lines and a hint are in the message)
---@error QEMUExited  QEMU ended before a match (its exit status, the last console lines, the panic line)
---@error NotRunning  the VM is paused or stopped: its guest cannot print (the run state and the fix are named)
---@error ConsoleOverflow  the guest printed more than 8 MiB before a match: the start of it was dropped
---@error BadArgument  pattern is not a string, a bad option
---@error Interrupted  Ctrl-C while waiting
function Console:expect(pattern, opts)
  opts = expect_args("console:expect", pattern, opts)
  if self._gate then require("qemu.vm.gate").release(self._vm) end
  local what = string.format("console:expect(%q)", pattern)
  local r = table.pack(self:_wait_for(what, function(buf)
    return buf:find(pattern, 1, opts.plain)
  end, opts.timeout or DEFAULT_TIMEOUT))
  local buf, s, e = r[1], r[2], r[3]
  self:_consume(e, buf)
  return buf:sub(s, e), table.unpack(r, 4, r.n)
end

---@api vm.console:flush vm.console:flush() -> text
--- Returns the unconsumed console output, and consumes it.
--- The text is as the guest sent it (with its "\r\n"). A later `expect`
--- sees only what is printed after.
---
---     vm.console:flush()                 -- forget the boot messages
---     vm.console:send("ls\r")
---
---@return string text  everything printed since the last match or flush
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
-- (For the unit tests; scripts use console:run{strip_ansi=true}.)
Console._strip_ansi = strip_ansi

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
    self:_send("\3", 5)
    sys.sleep(0.2)
    local r = "__qs" .. id .. "r"
    local restore = self._klevel and string.format("echo %d 2>/dev/null >/proc/sys/kernel/printk; ", self._klevel) or ""
    local ok2 = self:_send(string.format("\r%sprintf '%%s%%s\\n' __qs %sr\r", restore, id), 5)
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

---@api vm.console:run vm.console:run(cmd [, {timeout=30, prompt=, strip_ansi=false, kernel_messages=false}]) -> output, status
--- Runs a command in the guest's shell and returns its output and exit status.
--- The guest must be at a shell prompt (after `vm.console:login`, or
--- `qemu.guest.launch`). Output from before the call is discarded. The
--- command runs between two markers that the echo of the typed line cannot
--- contain, so neither the echo nor earlier output can satisfy the wait; it
--- is run with `eval`, so its own `;`, `#` and newlines stay its own. The
--- output has "\r\n" turned into "\n" and no final newline; a lone "\r" (a
--- progress line redrawn) is kept as the command printed it.
---
--- Kernel messages (`[ 28.9] EXT4-fs (sdb): mounted ...`) never land in the
--- output: while the command runs, the kernel's console log level is 1 (set
--- with shell builtins in /proc/sys/kernel/printk; needs root in the
--- guest). The level is read once per console (one extra command at the
--- first `run`) and that value is put back after each command, so a
--- command that ends the shell cannot leave it lowered (and a command's own
--- `dmesg -n` is undone). Messages printed meanwhile (the clocksource
--- warnings after a `loadvm`, say) stay in the guest's `dmesg`; those
--- printed between commands reach the console and `vm.console:log` as
--- always. On a timeout the last lines of
--- `dmesg` are searched for the known traps (an RCU stall: the `icount`
--- hint). `kernel_messages=true` leaves the log level alone.
---
--- A timeout or Ctrl-C interrupts the guest command: qshell sends ^C,
--- waits until the shell reads lines again, then raises, so the next `run`
--- works (the error says when the command does not end on ^C). A command
--- that ends the shell (`exit 3`, `logout`) raises `ShellExited`, instead
--- of a timeout, once the login prompt is back (or an autologin getty has
--- logged in again) and the console is quiet for half a second; the
--- prompt is left for `vm.console:login`. `run("(exit 3)")` returns status 3.
--- A paused or stopped VM raises `NotRunning` before anything is typed.
---
---     local out, status = vm.console:run("uname -r")
---     local ok = select(2, vm.console:run("test -e /dev/vdb")) == 0
---     local log = vm.console:run("make 2>&1", { timeout = 600, strip_ansi = true })
---
---@param cmd string  the shell command line (several lines allowed)
---@param options? table  `timeout=` (number >= 0): seconds the command may take (default 30);
---   `prompt=` (string): after the command, wait for this literal text (the shell's prompt) and consume it;
---   `strip_ansi=` (boolean, default false): remove terminal escapes (colours, cursor moves, titles) from the output;
---   `kernel_messages=` (boolean, default false): leave the kernel's console log level alone
---@return string output  what the command printed (stdout and stderr, as the terminal shows them)
---@return integer status  the command's exit status
---@error Timeout  the command did not finish within the timeout (it was interrupted with ^C)
---@error ShellExited  the command ended the guest's shell: the login prompt is back
---@error NotRunning  the VM is paused or stopped (the run state and the fix are named)
---@error QEMUExited  QEMU ended during the command
---@error ConsoleOverflow  the command printed more than 8 MiB
---@error BadArgument  cmd is not a string, a bad option
---@error Interrupted  Ctrl-C (the guest command was interrupted too)
function Console:run(cmd, opts)
  check.arg("console:run", 1, cmd, "string")
  opts = check.options("console:run", opts, run_opts, 2)
  local klevel = opts.kernel_messages ~= true and self:_kernel_level()
  self._n = self._n + 1
  -- Under the exact console the typed line must be the same in every run
  -- (its length and bytes are guest work), and a replayed guest prints the
  -- recorded markers: the id is the run's number.
  local id = (self._gate or self._numbered) and string.format("x%09d", self._n)
             or string.format("%x%x%d", os.time() & 0xffff, math.random(0, 0xfffff), self._n)
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
  -- exact console: the guest is held at its first idle point after the
  -- end marker, until the next input
  if self._gate then require("qemu.vm.gate").arm(self, e) end
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

---@api vm.console:login vm.console:login([{user="root", password=, timeout=60, login_prompt="login: ", prompt=, setup=true, wait_boot=true}])
--- Logs in on the serial console and returns at the shell prompt.
--- The login prompt must be the last thing the guest printed: a fresh one,
--- or one a script already waited for with `expect`. A getty that logged in
--- by itself (`NAME login: root (automatic login)`) or a shell prompt
--- already waiting needs nothing typed. Kernel messages printed after a
--- prompt do not hide it; a login prompt that other output followed (a late
--- boot message) is asked for again with an empty line after 3 s of quiet.
--- "Login incorrect" raises `LoginFailed`, and so does a password prompt
--- when no `password` was given.
---
--- On the first boot of a cloud image, cloud-init sets a seed's user and
--- password late (in its config stage, which often ends after the getty's
--- first prompt): while the console shows cloud-init running
--- (`Cloud-init v. ... running`) and not yet `... finished`, a "Login incorrect" is
--- followed by another login at the next prompt, until `timeout`; a wrong
--- password still fails as soon as cloud-init has finished, and the error
--- says it had. With `setup=true` the shell then gets
--- `PAGER=cat SYSTEMD_PAGER=cat GIT_PAGER=cat` (systemctl on a serial line
--- would wait in `less`) and, in bash, bracketed paste off. With
--- `wait_boot=true`, on a systemd guest login returns once the boot is over
--- (`systemctl is-system-running --wait`): services still starting write to
--- the console themselves, which no log level holds back.
---
---     vm.console:login { user = "debian", password = "secret" }
---     vm.console:run("sudo -n true")
---
---@param options? table  `user=` (string, default "root");
---   `password=` (string): typed when the guest asks for one (default: none);
---   `timeout=` (number >= 0): seconds to reach the shell prompt (default 60);
---   `login_prompt=` (string, default "login: "): the getty's prompt, literal text;
---   `prompt=` (string): the shell's prompt, literal text (default "# " for root, "$ " for any other user);
---   `setup=` (boolean, default true): set the pagers to cat and bracketed paste off;
---   `wait_boot=` (boolean, default true): on a systemd guest, wait up to max(timeout, 300) s for the boot to finish
---@error LoginFailed  "Login incorrect", or the guest asks for a password and none was given
---@error Timeout  no prompt within the timeout, or (wait_boot) the boot did not finish within max(timeout, 300) s
---@error NotRunning  the VM is paused or stopped (the run state and the fix are named)
---@error QEMUExited  QEMU ended meanwhile
---@error ConsoleOverflow  the guest printed more than 8 MiB before a prompt
---@error BadArgument  a bad option
---@error Interrupted  Ctrl-C while waiting
function Console:login(opts)
  opts = check.options("console:login", opts, login_opts)
  if self._gate then require("qemu.vm.gate").release(self._vm) end
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
      if self:_printed():sub(-400):find(lp, 1, true) then self:_send("\r", 5) end
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

---@api vm.console:log vm.console:log(path)
--- Appends everything the guest prints from now on to a file; `log(nil)` stops.
--- Each line is stamped with the seconds since QEMU started
--- (`[    2.345678] ...`). Each log starts on a line of its own: a file whose
--- last line is unfinished (the previous boot's `login: `) gets a newline
--- first, and a line the guest left
--- open is ended when the log is switched or stopped or QEMU goes away, so
--- one file can collect many boots. Another `log(path)` switches files.
--- Logging does not consume output: `expect` and `run` see it all the same.
---
---     vm.console:log("boot.log")
---
---@param path string|nil  the file to append to, or nil to stop logging
---@error IOError  the file cannot be opened
---@error BadArgument  path is neither a string nor nil
function Console:log(path)
  if path ~= nil then check.arg("console:log", 1, path, "string") end
  local ok, msg, code = self._c:log(path)
  if not ok then errors.from_code("console:log", msg, code) end
end

-- console:attach(): the guest's console in this terminal; Ctrl-] returns.
-- The VM closes its console with it (not a script API).
function Console:_close()
  self._c:close()
end

---@api vm.console:attach vm.console:attach()
--- Puts the guest's serial console in this terminal, until Ctrl-] returns.
--- As `vm:attach()`, which checks first that the VM is live: raw mode (the
--- terminal restored on every path), the output not consumed yet shown
--- first, and the terminal's size sent to the guest's shell only while its
--- prompt waits.
---
---     vm.console:attach()
---
---@error QEMUExited  QEMU has ended, or went away while attached
---@error IOError  the terminal cannot be put in raw mode
function Console:attach()
  if self._gate then require("qemu.vm.gate").release(self._vm) end
  io.stderr:write(string.format("[attached to %s's console; Ctrl-] returns]\r\n", self._vm.name))
  local ok, msg, code = self._c:attach(0x1d, self._prompt or "# ")
  io.stderr:write("\r\n[detached]\n")
  if not ok then self:_fail("vm:attach", msg, code, 0) end
end

return Console
