-- qemu.vm: the VM object returned by qemu.launch and qemu.attach.
--
-- Policy over the C mechanisms: QMP replies become return values or error
-- objects, a QEMU that went away becomes an error naming its exit status
-- and the tail of its log, and stopping is the QEMUMachine ladder (QMP quit,
-- wait, SIGTERM, wait, SIGKILL, always reaped).
--
-- Fields: the ---@apiclass block below.
--
-- Methods (declared in this file, or in vm/delegated.lua for those whose work
-- is in a module of its own):
--   QMP and HMP     qmp, hmp, events, wait_event
--   run state       status, pause, cont
--   process         quit, kill, wait, close (also <close>)
--   snapshots       savevm, loadvm, delvm, snapshots       (vm/delegated.lua -> vm/snapshot.lua)
--   checkpoints     checkpoint                             (vm/delegated.lua -> checkpoint/make.lua)
--   ROI             wait_roi, roi_events                   (vm/delegated.lua -> vm/roi.lua)
--   plugins         plugin_log, plugin_result              (vm/delegated.lua)
--   console         attach (and the vm.console object, vm/console.lua)
-- Methods starting with "_" are for the other stdlib modules, never scripts.

local errors = require "qemu.errors"
local check = require "qemu.util.check"

---@apiclass qemu.VM vm  A QEMU this shell launched (qemu.launch) or attached to (qemu.attach), and its QMP connection
--- The object `qemu.launch`, `qemu.attach` and `qemu.guest.launch` return.
--- Its methods run QMP and HMP commands, wait for events, stop and end
--- QEMU, and take snapshots and checkpoints; `vm.console` is its serial
--- console. `local vm <close> = qemu.launch{...}` closes it at the end of
--- the scope, also on errors; a VM still open when a script ends is quit
--- gracefully. `tostring(vm)` is "vm NAME (live|exited|closed, pid N)".
--- The fields are for reading (but `qmp_timeout`).
---
---     local vm <close> = qemu.launch { restore = "warm.ckpt" }
---     print(vm.name, vm.pid, vm.accel, vm.version)
---     print(vm.ram.backing, vm.ram.path)   --> mapped  /home/me/warm.ckpt/ram
---
---@field name string  the VM's name: `name=` of the launch, else "vm1", "vm2", ... in the order of this shell's VMs
---@field pid integer|nil  QEMU's process id; nil once QEMU has ended, and for an attached VM
---@field argv string[]|nil  the exact argv QEMU was started with (nil for an attached VM)
---@field log string|nil  the file with QEMU's stdout and stderr, readable until `vm:close()` (nil for an attached VM)
---@field tmpdir string|nil  the VM's private temp dir (plugin results, overlays of a restore), removed by `vm:close()` (nil for an attached VM)
---@field accel string|nil  the accelerator QEMU runs with ("kvm" or "tcg": "auto" resolved; nil for an attached VM)
---@field version string|nil  the QEMU version the VM's QEMU reported in its QMP greeting ("7.2.22")
---@field options table|nil  the launch options (after a restore: the machine as restored, with `restore=`)
---@field console qemu.Console|nil  the guest's serial console (nil with `console=false`, and for an attached VM)
---@field plugins table[]|nil  the TCG plugins loaded, each `{name=, path=, out=}` (`out`: the result file, or nil)
---@field ram table|nil  where the guest's RAM lives: `{size=, backing=, path=, id=}`; `size` in bytes (nil when unknown);
---   `backing` "memfd" (a memfd this shell holds), "mapped" (a checkpoint's RAM file, copy-on-write), "copied"
---   (a checkpoint's RAM copied into a memfd) or "qemu" (RAM QEMU holds itself); `path` the mapped RAM file;
---   `id` the memory backend's id ("pc.ram"); nil for an attached VM
---@field restored_from string|nil  the checkpoint directory the VM was restored from (`restore=`), else nil
---@field guest table|nil  for `qemu.guest.launch`: the guest it booted (as `qemu.guest.default()` describes it)
---@field socket string|nil  for an attached VM: the QMP socket's path
---@field qmp_timeout number  the default timeout of `vm:qmp` and `vm:hmp`, in seconds (300); a script may set it
local VM = {}
VM.__index = VM
VM.__name = "qemu.vm"

local DEFAULT_QMP_TIMEOUT = 300
local DEFAULT_EVENT_TIMEOUT = 60

function VM.__tostring(vm)
  local state = vm._closed and "closed" or (vm._exit and "exited") or "live"
  return string.format("vm %s (%s%s)", vm.name, state, vm.pid and (", pid " .. vm.pid) or "")
end

-- Last non-empty lines of QEMU's log, for error messages.
local function log_lines(vm, n)
  if not vm._proc or vm._closed then return nil end
  local tail = vm._proc:log_tail(4000)
  local lines = {}
  for line in tail:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local first = math.max(1, #lines - (n or 3) + 1)
  local out = table.concat(lines, " | ", first)
  return out ~= "" and out or nil
end

function VM:_exit_status(wait)
  if not self._proc then return nil end
  if self._exit then return self._exit end
  local st = wait and self._proc:wait(wait) or self._proc:poll()
  if st then
    self._exit = st
    self.pid = nil
  end
  return st
end

-- A connection-level failure (code from the C glue) -> raise.
function VM:_conn_error(command, msg, code)
  if code == "closed" then
    -- QEMU closes the socket as it dies: give the exit status a moment.
    local st = self:_exit_status(1)
    local log = log_lines(self, 3)
    local desc
    if st then
      desc = string.format("QEMU %s while '%s' was in flight", st.desc, command)
    else
      desc = msg
    end
    if log then desc = desc .. ": " .. log end
    errors.raise { class = "QEMUExited", command = command, desc = desc, exit = st,
                   hint = errors.hint_for(log) }
  end
  errors.from_code(command, msg, code)
end

function VM:_live(fname)
  if self._closed then
    check.bad(fname, "%s is closed", tostring(self))
  end
  if self._exit then
    errors.raise { class = "QEMUExited", command = fname, exit = self._exit,
                   desc = string.format("QEMU has ended (it %s)", self._exit.desc) }
  end
end

local function fd_arg(v)
  if math.type(v) == "integer" and v >= 0 then return true end
  return false, "must be an open file descriptor (an integer >= 0)"
end
local qmp_opts = { timeout = check.nonneg, fd = fd_arg }

---@api vm:qmp vm:qmp(command [, arguments [, {timeout=300, fd=}]]) -> result
--- Runs one QMP command and returns its `return` value as Lua values.
--- The arguments are a Lua table, encoded as `qemu.json.encode` does (a
--- whole float such as `1e9` goes out as an integer); the result is decoded
--- as `qemu.json.decode` does (JSON null is `qemu.null`). An error reply
--- raises with QMP's own class and description. A round trip is one send
--- and one receive system call; events that arrive meanwhile are kept for
--- `vm:events()` and `vm:wait_event()`.
---
---     for _, cpu in ipairs(vm:qmp("query-cpus-fast")) do print(cpu["cpu-index"], cpu["qom-path"]) end
---     vm:qmp("device_add", { driver = "e1000", id = "n1" })
---
---@param command string  the QMP command ("query-status", "device_add", ...)
---@param arguments? table  the command's arguments (a value JSON cannot hold is a plain Lua error)
---@param options? table  `timeout=` (number >= 0): seconds to wait for the reply (default `vm.qmp_timeout`, 300);
---   `fd=` (integer >= 0): an open file descriptor passed with the command (SCM_RIGHTS), as `getfd` and `add-fd`
---   expect; your copy stays yours to close
---@return any result  the reply's `return` value (often a table; `{}` for commands that return nothing)
---@error GenericError  and QMP's other classes (CommandNotFound, DeviceNotFound, ...): QEMU refused the command
---@error BadArgument  command is not a string, arguments not a table, a bad option; the VM is closed
---@error QEMUExited  QEMU had ended or went away during the command (its exit status and the end of its log; `e.exit`)
---@error Timeout  no reply within the timeout
---@error Interrupted  Ctrl-C while waiting for the reply
-- QMP commands that pause the vCPUs (see qemu.vm.gate)
local STOPPING = { stop = true, quit = true, system_reset = true, system_powerdown = true, migrate = true,
                   ["human-monitor-command"] = true, ["snapshot-save"] = true, ["snapshot-load"] = true,
                   ["snapshot-delete"] = true, ["x-exit-preconfig"] = true }

function VM:qmp(cmd, args, opts)
  check.arg("vm:qmp", 1, cmd, "string")
  if args ~= nil then check.arg("vm:qmp", 2, args, "table") end
  opts = check.options("vm:qmp", opts, qmp_opts, 3)
  self:_live("vm:qmp")
  -- a held guest (exact console) runs on before a command that stops it:
  -- QEMU waits for the vCPU, which waits at the gate
  if self._gate and STOPPING[cmd] then require("qemu.vm.gate").release(self) end
  -- any command may stop the guest: the VM is no longer known to run
  self._known_running = nil
  local r, msg, code = self._qmp:execute(cmd, args, opts.timeout or self.qmp_timeout, opts.fd)
  if not r then self:_conn_error(cmd, msg, code) end
  local e = r.error
  if e then
    errors.raise { class = e.class, desc = e.desc, command = cmd, hint = errors.hint_for(e.desc) }
  end
  return r["return"]
end

-- HMP failures arrive as successful replies: qemu.errors recognises them
-- (snapshot.lua asks it too; scripts: qemu.errors.hmp_failed).

---@api vm:hmp vm:hmp(line [, {timeout=300}]) -> text
--- Runs a human-monitor (HMP) command and returns its text.
--- QEMU reports a failed HMP command as a successful reply whose text is the
--- error message ("Error: ...", "unknown command: ...", "Could not ..."):
--- here such a reply raises `HMPError`. An HMP `loadvm` that fails says that
--- it left the VM stopped, and how to go on.
---
---     print(vm:hmp("info registers"))
---
---@param line string  the command line, as typed at QEMU's monitor
---@param options? table  `timeout=` (number >= 0): seconds to wait for the reply (default `vm.qmp_timeout`, 300)
---@return string text  what the command printed
---@error HMPError  the reply is an HMP error message
---@error BadArgument  line is not a string, a bad option; the VM is closed
---@error QEMUExited  QEMU had ended or went away during the command
---@error Timeout  no reply within the timeout
---@error Interrupted  Ctrl-C while waiting for the reply
function VM:hmp(line, opts)
  check.arg("vm:hmp", 1, line, "string")
  local text = self:qmp("human-monitor-command", { ["command-line"] = line }, opts)
  if errors.hmp_failed(text) then
    local desc = text:gsub("%s+$", "")
    local hint = errors.hint_for(desc)
    -- A failed loadvm stops the VM before it looks for the tag, and
    -- leaves it stopped: say so, and the way on.
    local stopped = line:match("^%s*loadvm%f[%s%z]") and self:_stopped_state()
    if stopped then
      desc = string.format("%s; the VM is left stopped (%s)", desc, stopped)
      hint = "loadvm a tag that exists (info snapshots lists them), or cont to go on from where it stopped"
    end
    errors.raise { class = "HMPError", command = line, desc = desc, hint = hint }
  end
  return text
end

-- Events that stop the guest: after one, the VM is no longer known to run.
local STOP_EVENTS = { STOP = true, SHUTDOWN = true, GUEST_PANICKED = true, BLOCK_IO_ERROR = true,
                      SUSPEND = true, WATCHDOG = true }

-- Every event QEMU sends passes here once.  Returns true for the events
-- not shown to the script (the jobs qshell ran for it: snapshot jobs).
function VM:_seen(ev)
  if STOP_EVENTS[ev.event] then self._known_running = nil end
  return ev.event == "JOB_STATUS_CHANGE" and type(ev.data) == "table"
    and self._hidden_jobs[ev.data.id] == true
end

-- Close the monitor, keeping the events QEMU sent before it went.
function VM:_close_qmp()
  local ok, evs = pcall(self._qmp.events, self._qmp)
  if ok then
    for _, ev in ipairs(evs) do
      if not self:_seen(ev) then self._backlog[#self._backlog + 1] = ev end
    end
  end
  self._qmp:close()
  self._qmp_closed = true
end

---@api vm:events vm:events() -> list
--- Every QMP event received so far and not yet taken, oldest first.
--- The list is drained: the next call returns only newer events. Events
--- that arrive while a command waits for its reply are kept (up to 100,000
--- not yet read; beyond that the oldest go), also after QEMU ended. Events
--- of the jobs qshell runs itself (the snapshot jobs of `vm:savevm` and its
--- kin) are not shown.
---
---     vm:pause(); vm:cont()
---     for _, ev in ipairs(vm:events()) do print(ev.event, ev.timestamp.seconds) end   --> STOP, RESUME
---
---@return table[] list  the events, each `{event=, data=, timestamp={seconds=, microseconds=}}` as QEMU sent it
---@error BadArgument  the VM is closed
function VM:events()
  -- Also after QEMU ended: the events it sent before are still here.
  if self._closed then check.bad("vm:events", "%s is closed", tostring(self)) end
  local out = self._backlog
  self._backlog = {}
  if self._qmp_closed then return out end
  local new = self._qmp:events()
  for i = 1, #new do
    if not self:_seen(new[i]) then out[#out + 1] = new[i] end
  end
  return out
end

-- QEMUMachine's event_match: every key of match is in event, recursively.
local function event_match(event, match)
  if type(match) ~= "table" then return event == match end
  if type(event) ~= "table" then return false end
  for k, v in pairs(match) do
    if not event_match(event[k], v) then return false end
  end
  return true
end

-- (for the other event waits: vm:wait_plugin_event)
VM._match = event_match

local wait_opts = { timeout = check.nonneg, match = "table" }

---@api vm:wait_event vm:wait_event([name [, {timeout=60, match=}]]) -> event
--- Waits for the next event with that name whose fields contain `match`.
--- The events already received are looked at first. `match` is a subset
--- match, recursively, as QEMU's Python tools do: every key of `match` must
--- be in the event with an equal value. Events that do not match stay
--- queued for `vm:events()` and later waits.
---
---     vm:qmp("system_powerdown")
---     vm:wait_event("SHUTDOWN", { timeout = 30, match = { data = { guest = true } } })
---
---@param name? string  the event's name ("SHUTDOWN", "STOP", ...); nil: any event
---@param options? table  `timeout=` (number >= 0): seconds to wait (default 60);
---   `match=` (table): fields the event must contain (default: none)
---@return table event  the event, `{event=, data=, timestamp=}`
---@error Timeout  no such event within the timeout
---@error QEMUExited  QEMU ended before such an event came
---@error BadArgument  name is not a string, a bad option; the VM is closed
---@error Interrupted  Ctrl-C while waiting
function VM:wait_event(name, opts)
  -- a held guest (exact console) must run for the event to come
  if self._gate then require("qemu.vm.gate").release(self) end
  return self:_wait_event(name, opts)
end

-- wait_event for qshell's own waits on QEMU (a migration, a job): a held
-- guest stays held
function VM:_wait_event(name, opts)
  if name ~= nil then check.arg("vm:wait_event", 1, name, "string") end
  opts = check.options("vm:wait_event", opts, wait_opts, 2)
  if self._closed then check.bad("vm:wait_event", "%s is closed", tostring(self)) end
  local function wanted(ev)
    return (name == nil or ev.event == name) and (opts.match == nil or event_match(ev, opts.match))
  end
  for i, ev in ipairs(self._backlog) do
    if wanted(ev) then
      table.remove(self._backlog, i)
      return ev
    end
  end
  if self._qmp_closed then
    errors.raise { class = "QEMUExited", command = "vm:wait_event", exit = self._exit,
                   desc = string.format("no %s event came before QEMU ended", name or "matching") }
  end
  local timeout = opts.timeout or DEFAULT_EVENT_TIMEOUT
  local deadline = self._clock() + timeout
  local what = "vm:wait_event(" .. (name and string.format("%q", name) or "") .. ")"
  while true do
    local left = deadline - self._clock()
    if left < 0 then left = 0 end
    local ev, msg, code = self._qmp:next_event(left)
    if not ev then
      if code == "timeout" then
        errors.raise { class = "Timeout", command = what,
                       desc = string.format("no %s event within %g s", name or "matching", timeout) }
      end
      self:_conn_error(what, msg, code)
    end
    local hidden = self:_seen(ev)
    if wanted(ev) then return ev end
    if not hidden then self._backlog[#self._backlog + 1] = ev end
  end
end

---@api vm:status vm:status() -> state
--- QEMU's run state, as QMP `query-status` says it.
--- A VM that is not running cannot answer on its console: `vm.console:run`,
--- `expect`, `login` and `vm:wait_roi` on one fail within a second with
--- `NotRunning`, which names the run state and the fix ("paused":
--- `vm:cont()`; "postmigrate": stopped after `vm:checkpoint` without
--- `resume=true`; "restore-vm": a `loadvm` failed part way; "prelaunch":
--- launched with `paused=true`; "io-error", "guest-panicked",
--- "internal-error", "suspended", ... each with its own). "inmigrate" (a
--- restore still loading) is waited for.
---
---     if vm:status() ~= "running" then vm:cont() end
---
---@return string state  "running", "paused", "shutdown", "postmigrate", "prelaunch", "inmigrate", ...
---@error BadArgument  the VM is closed
---@error QEMUExited  QEMU has ended
---@error Timeout  QEMU did not answer within `vm.qmp_timeout`
function VM:status()
  return self:qmp("query-status").status
end

---@api vm:pause vm:pause()
--- Stops the guest's vCPUs (QMP `stop`); `vm:cont()` runs them again.
--- A paused VM's guest cannot answer: console waits and `vm:wait_roi` fail
--- with `NotRunning` (`vm.console:send` still types into it: what is typed
--- runs at `cont`). QEMU sends a `STOP` event.
---
---     vm:pause()
---     local ok, e = pcall(vm.console.run, vm.console, "uptime")
---     print(e)  --> console:run("uptime"): the VM is not running (QEMU's run state: paused), ...; hint: vm:cont() runs it ...
---     vm:cont()
---
---@error BadArgument  the VM is closed
---@error QEMUExited  QEMU has ended
function VM:pause()
  self:qmp("stop")
end

-- Why a VM in each run state cannot answer, and the way on.
local STOPPED = {
  paused = "vm:cont() runs it (vm:pause(), vm:checkpoint() without resume=true and a snapshot " ..
           "operation in progress leave a VM paused)",
  prelaunch = "it was launched with paused=true: vm:cont() starts it",
  postmigrate = "its state went into a checkpoint or migration and it stopped there " ..
                "(vm:checkpoint(dir, {resume=true}) keeps it running): vm:cont() runs it",
  ["finish-migrate"] = "its state is being saved: vm:cont() runs it afterwards",
  ["restore-vm"] = "a loadvm failed part way and left it stopped: load another snapshot, " ..
                   "or vm:cont() to go on from an undefined state",
  ["save-vm"] = "a savevm is in progress",
  ["io-error"] = "a disk write failed on the host (a full disk?): free space, then vm:cont()",
  ["guest-panicked"] = "the guest kernel panicked: vm.console:tail(40) shows why",
  ["internal-error"] = "QEMU stopped on an internal error (under TCG: an instruction it cannot run?); " ..
                       "its log says more",
  shutdown = "the guest shut down and QEMU kept it (reboot=false?): vm:quit() it",
  suspended = "the guest suspended itself (S3): vm:qmp(\"system_wakeup\") wakes it",
  watchdog = "a watchdog fired: vm:cont() runs it",
  debug = "a debugger stopped it: vm:cont() runs it",
}
-- States the VM leaves by itself (a restore's incoming state): wait.
local PASSING = { inmigrate = true }

-- vm:_stopped_state() -> QEMU's run state when the VM is not running, nil
-- when it runs (or QEMU does not say): what a failed load left.
function VM:_stopped_state()
  local ok, st = pcall(self.qmp, self, "query-status", nil, { timeout = 2 })
  if ok and type(st) == "table" and st.status ~= "running" then return tostring(st.status) end
end

-- vm:_need_running(what): raise NotRunning when the VM is stopped in a
-- state it will not leave by itself (its guest cannot answer what waits);
-- true when it runs, false in a state it leaves by itself (inmigrate).
-- A QEMU that does not answer is left to the caller's own wait.  Known to
-- run (asked, and since then no command sent and no stop event come) is
-- taken as running without asking again: a console:run costs no round
-- trip more.
function VM:_need_running(what)
  if self._closed or self:_exited() then return true end
  if self._known_running then
    pcall(self._pump_events, self) -- a stop event forgets it
    if self._known_running then return true end
  end
  local ok, st = pcall(self.qmp, self, "query-status", nil, { timeout = 2 })
  if not ok or type(st) ~= "table" then return true end
  if st.status == "running" or st.running then
    self._known_running = true
    return true
  end
  if PASSING[st.status] then return false end
  errors.raise { class = "NotRunning", command = what,
                 desc = string.format("the VM is not running (QEMU's run state: %s), so its guest cannot answer",
                                      tostring(st.status)),
                 hint = STOPPED[st.status] or "vm:cont() runs it" }
end

---@api vm:cont vm:cont()
--- Runs the guest's vCPUs (QMP `cont`).
--- After `vm:pause()`, `paused=true`, a checkpoint without `resume=true` or a
--- failed load. `cont` of a running VM is no error. QEMU sends a `RESUME`
--- event. Under `icount`, console input sent while the VM was stopped is
--- first taken by QEMU (a few ms), so it reaches the guest at a point that
--- depends on the guest alone and counts are exact whenever `cont` comes;
--- the UART holds 16 bytes while the VM is stopped (more: a note, and the
--- rest arrives when the host delivers it).
---
---     local vm <close> = qemu.launch { restore = "ic.ckpt", paused = true }
---     vm.console:send("\r")
---     vm:cont()
---
---@error BadArgument  the VM is closed
---@error QEMUExited  QEMU has ended
---@error GenericError  QEMU cannot run the VM in its state (after a guest panic or an internal error: "Resetting the Virtual Machine is required")
function VM:cont()
  self:_console_taken()
  self:qmp("cont")
end

-- Under icount, console input sent while the VM is stopped must be in the
-- UART before the guest runs again: then it reaches the guest at a point
-- that depends on the guest only, not on when QEMU's main loop read the
-- socket.  Waits (a few ms) until QEMU has read all of it; the UART takes
-- 16 bytes while the guest does not run, so more waits in the socket and
-- reaches the guest as it reads (said once).
local UART_HOLDS = 16
function VM:_console_taken()
  local con = self.console
  if not (con and con._c and self.options and self.options.icount ~= nil) then return end
  local sys = require "qshell.os"
  local start = sys.now()
  local last, since = nil, start
  while true do
    local n = con._c:unread()
    if not n or n == 0 then return end
    local t = sys.now()
    if n ~= last then last, since = n, t end
    if t - since > 0.2 or t - start > 5 then
      if not self._said_uart then
        self._said_uart = true
        io.stderr:write(string.format("qshell: %s: %d bytes of console input wait for the guest: the UART takes %d " ..
                                      "while the VM is stopped, so the rest reaches the guest when the host delivers " ..
                                      "it and counts under icount may vary (send at most %d bytes before cont)\n",
                                      self.name, n, UART_HOLDS, UART_HOLDS))
      end
      return
    end
    sys.sleep(0.001)
  end
end

local quit_opts = { timeout = check.nonneg }

---@api vm:quit vm:quit([{timeout=30}]) -> status
--- Ends QEMU gracefully and returns its exit status.
--- QMP `quit`, then up to `timeout` seconds for QEMU to exit; then
--- SIGTERM and up to `min(timeout, 10)` seconds; then SIGKILL. QEMU is
--- always reaped. The log and the plugins' results stay readable until
--- `vm:close()`, and the events QEMU sent are kept for `vm:events()`. A VM
--- that had already ended returns its status. For an attached VM, QMP `quit`
--- is sent and the monitor closed (the VM is then closed); the result is nil.
--- A replay (`replay=`) first runs on for up to `timeout` seconds to the
--- recording's end, where the recorded run ended, so its counts are whole;
--- one that does not get there is ended and raises `Timeout` (end a replay
--- early with `vm:kill()`). A recording (`record=`) is stopped (QMP `stop`)
--- before `quit`, so no instruction runs after the quit its log ends with.
---
---     local st = vm:quit()
---     print(st.desc)   --> exited with status 0
---
---@param options? table  `timeout=` (number >= 0): seconds QEMU is given to exit after each request (default 30)
---@return table|nil status  `{code=, signal=, desc=}`: `code` the exit status or `signal` the signal number, `desc` e.g. "exited with status 0"; nil for an attached VM
---@error BadArgument  a bad option
---@error Timeout  a replay that did not reach the recording's end within `timeout` (QEMU is ended)
function VM:quit(opts)
  opts = check.options("vm:quit", opts, quit_opts)
  if self._closed then return self._exit end
  local grace = opts.timeout or 30
  if not self._proc then
    -- Attached: ask politely, then wait for the monitor to close.
    local r = self._qmp:execute("quit", nil, 5)
    if r then self._qmp:next_event(grace) end
    self:close()
    return nil
  end
  local st, short = self:_exit_status(), nil
  if not st and self.recording then
    -- a recording stops its vCPU first; a replay runs on to its end
    st, short = require("qemu.vm.replay").quitting(self, self._proc, grace)
  end
  if not st then
    -- Errors are expected here: QEMU may close the socket before replying.
    self._qmp:execute("quit", nil, math.min(grace, 5))
    st = self._proc:wait(grace)
    if not st then
      self._proc:signal("TERM")
      st = self._proc:wait(math.min(grace, 10))
    end
    if not st then st = self._proc:kill() end
    self._exit = st
    self.pid = nil
  end
  self:_close_qmp()
  self:_ended()
  if short then errors.raise(short) end
  return st
end

---@api vm:kill vm:kill() -> status
--- Kills QEMU with SIGKILL now, reaps it, and returns its exit status.
--- Nothing is saved: disks get what QEMU had written. A VM that had already
--- ended returns its status. The log stays readable until `vm:close()`.
---
---     print(vm:kill().desc)   --> was killed by signal 9 (Killed)
---
---@return table status  `{code=, signal=, desc=}` (`signal` 9 unless QEMU had ended before)
---@error BadArgument  an attached VM (not this shell's process)
function VM:kill()
  if self._closed then return self._exit end
  if not self._proc then check.bad("vm:kill", "an attached VM is not this shell's process") end
  local st = self._exit or self._proc:kill()
  self._exit = st
  self.pid = nil
  self:_close_qmp()
  self:_ended()
  return st
end

local vmwait_opts = { timeout = check.nonneg }

---@api vm:wait vm:wait([{timeout=}]) -> status
--- Waits for QEMU to end by itself and returns its exit status.
--- E.g. after a guest `poweroff` (QEMU runs with `-no-reboot` by default,
--- so a guest reboot ends it too), or a plugin's instruction limit. A VM
--- that had already ended returns its status at once.
---
---     vm.console:send("poweroff -f\r")
---     print(vm:wait({ timeout = 60 }).code)   --> 0
---
---@param options? table  `timeout=` (number >= 0): seconds to wait (default: no limit)
---@return table|nil status  `{code=, signal=, desc=}` (nil for a closed attached VM)
---@error Timeout  QEMU still runs after `timeout` seconds
---@error BadArgument  an attached VM (not this shell's process), a bad option
---@error Interrupted  Ctrl-C while waiting
function VM:wait(opts)
  if self._gate then require("qemu.vm.gate").release(self) end
  opts = check.options("vm:wait", opts, vmwait_opts)
  if self._exit or self._closed then return self._exit end
  if not self._proc then check.bad("vm:wait", "an attached VM is not this shell's process") end
  local st, msg, code = self._proc:wait(opts.timeout)
  if not st then
    if code == "timeout" then
      errors.raise { class = "Timeout", command = "vm:wait", desc = string.format(
        "QEMU (pid %d) still running after %g s", self.pid or -1, opts.timeout) }
    end
    self:_conn_error("vm:wait", msg, code)
  end
  self._exit = st
  self.pid = nil
  self:_ended()
  return st
end

---@api vm:close vm:close() -> status
--- Quits QEMU if it still runs, then frees everything the VM holds.
--- A running QEMU is quit as `vm:quit` does with 3 s for each step (QMP
--- `quit`, SIGTERM, SIGKILL); then the monitor and console sockets are
--- closed and the VM's temp dir (its log, the plugins' results) is removed.
--- `local vm <close> = qemu.launch{...}` calls it at the end of the scope,
--- also on errors. Closing twice is no error. For an attached VM it only
--- disconnects: QEMU goes on running. Afterwards `vm:qmp` and the other
--- methods that need QEMU raise `BadArgument`; `quit`, `kill`, `wait` and
--- `close` return the exit status.
---
---     do
---       local vm <close> = qemu.launch { kernel = "bzImage" }
---       vm.console:expect("Linux version")
---     end                                -- QEMU is gone here
---
---@return table|nil status  QEMU's exit status `{code=, signal=, desc=}` (nil for an attached VM)
function VM:close()
  if self._closed then return self._exit end
  if self._proc and not self:_exit_status() then
    if self._qmp_ok ~= false then pcall(self.quit, self, { timeout = 3 }) end
    if not self._exit then self._exit = self._proc:kill() end
  end
  self:_close_qmp()
  if self.console then self.console:_close() end
  if self._proc then
    -- QSHELL_DEPRECATIONS=FILE collects QEMU's deprecation warnings (the
    -- test runner fails on any: qshell must not use what QEMU retires).
    local dep = os.getenv("QSHELL_DEPRECATIONS")
    if dep and dep ~= "" then
      local found = {}
      for line in self._proc:log_tail(1 << 16):gmatch("[^\n]+") do
        if line:lower():find("deprecat") then found[#found + 1] = self.argv[1] .. ": " .. line .. "\n" end
      end
      if #found > 0 then pcall(require("qemu.util.fs").append, dep, table.concat(found)) end
    end
    self._proc:close()
  end
  self._closed = true
  self.pid = nil
  self:_ended()
  for _, hook in ipairs(self._on_close) do pcall(hook, self) end
  return self._exit
end

VM.__close = VM.close

-- The methods whose work is in other modules: snapshots, checkpoints,
-- regions of interest, plugin output, the console in this terminal.
require("qemu.vm.delegated").install(VM)

-- ---- for the other stdlib modules (not a script API) ----

-- Launched by this shell (not attached)?
function VM:_owned() return self._proc ~= nil end
function VM:_is_closed() return self._closed == true end
-- The exit status once QEMU has ended, else nil.
function VM:_exited() return self._exit end
-- The kernel command line the VM was started with (as launch built it).
function VM:_kernel_append() return self._append end
-- The memfd holding the guest's RAM (this shell's copy, which the VM's
-- proc holds and closes), or nil.
function VM:_ram_fd() return not self._closed and self._ramfd or nil end
-- fn(vm) runs when the VM is closed.
function VM:_on_close_do(fn) self._on_close[#self._on_close + 1] = fn end
-- fn(vm) runs once QEMU has ended, as soon as quit, kill, wait or close
-- has its exit status.
function VM:_on_exit_do(fn) self._on_exit[#self._on_exit + 1] = fn end
function VM:_ended()
  if not self._exit then return end
  local hooks = self._on_exit
  self._on_exit = {}
  for _, hook in ipairs(hooks) do pcall(hook, self) end
end

-- The events of a job qshell ran for the script (a snapshot job) are not
-- the script's: drop those queued, and hide those still to come.
function VM:_hide_job(id)
  self._hidden_jobs[id] = true
  local kept = {}
  for _, ev in ipairs(self._backlog) do
    if not self:_seen(ev) then kept[#kept + 1] = ev end
  end
  self._backlog = kept
end

-- The monitor's fd (to poll at the prompt), or nil once QEMU is gone.
function VM:_monitor_fd()
  if self._exit or self._gone or self._qmp_closed then return nil end
  local ok, fd = pcall(self._qmp.fileno, self._qmp)
  return ok and fd >= 0 and fd or nil
end

function VM:_set_log(on)
  if not self._qmp_closed then self._qmp:set_log(on) end
end

-- Read what the monitor has, without waiting: the new events (queued for
-- vm:events() too, at most max kept) and, when QEMU closed the monitor,
-- its exit status (or true).
function VM:_pump_events(max)
  if self._exit or self._gone or self._qmp_closed then return {}, nil end
  local evs, _, code = self._qmp:events()
  local new = {}
  for _, ev in ipairs(evs) do
    if not self:_seen(ev) then
      self._backlog[#self._backlog + 1] = ev
      new[#new + 1] = ev
    end
  end
  while max and #self._backlog > max do table.remove(self._backlog, 1) end
  local gone
  if code == "closed" then
    self._gone = true
    gone = self:_exit_status(0.5) or true
  end
  return new, gone
end

-- In a forked sweep worker: this VM is the parent's; never touch it (the
-- C cores see the copy is not this process's and leave it alone too).
function VM:_forget()
  -- Its proc here is an inert copy: closing it closes only this process's
  -- copies of its fds (the RAM's memfd among them: the parent's VM must
  -- not live on in a worker).
  if self._proc then self._proc:close() end
  self._closed = true
  self._inherited = true
end

function VM.new(fields)
  fields._backlog = {}
  fields._on_close = {}
  fields._on_exit = {}
  fields._hidden_jobs = {}
  fields.qmp_timeout = fields.qmp_timeout or DEFAULT_QMP_TIMEOUT
  return setmetatable(fields, VM)
end

return VM
