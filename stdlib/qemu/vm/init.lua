-- qemu.vm: the VM object returned by qemu.launch and qemu.attach.
--
-- Policy over the C mechanisms: QMP replies become return values or error
-- objects, a QEMU that went away becomes an error naming its exit status
-- and the tail of its log, and stopping is the QEMUMachine ladder (QMP quit,
-- wait, SIGTERM, wait, SIGKILL, always reaped).
--
-- Fields: vm.pid, vm.argv, vm.log, vm.name, vm.tmpdir, vm.accel, vm.version,
-- vm.options, vm.plugins, vm.console, vm.guest, vm.restored_from, vm.ram
-- ({size=, backing=, path=}: where the guest's RAM lives, see qemu.ram).
--
-- Methods (every one is declared in this file; the implementations of the
-- snapshot and checkpoint methods live in their modules):
--   QMP and HMP     qmp, hmp, events, wait_event
--   run state       status, pause, cont
--   process         quit, kill, wait, close (also <close>)
--   snapshots       savevm, loadvm, delvm, snapshots       (qemu/vm/snapshot.lua)
--   checkpoints     checkpoint                             (qemu/checkpoint/make.lua)
--   plugins         plugin_log, plugin_result
--   console         attach (and the vm.console object, qemu/console.lua)
-- Methods starting with "_" are for the other stdlib modules, never scripts.

local errors = require "qemu.errors"
local check = require "qemu.util.check"

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

-- vm:qmp(cmd [, args [, {timeout=, fd=}]]) -> the "return" value
-- fd= passes a file descriptor with the command (SCM_RIGHTS), for getfd
-- and add-fd; the caller still owns and closes its copy.
function VM:qmp(cmd, args, opts)
  check.arg("vm:qmp", 1, cmd, "string")
  if args ~= nil then check.arg("vm:qmp", 2, args, "table") end
  opts = check.options("vm:qmp", opts, qmp_opts, 3)
  self:_live("vm:qmp")
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
-- (snapshot.lua asks it too).
VM.hmp_failed = errors.hmp_failed

-- vm:hmp(line [, {timeout=}]) -> text; an HMP error reply raises
function VM:hmp(line, opts)
  check.arg("vm:hmp", 1, line, "string")
  local text = self:qmp("human-monitor-command", { ["command-line"] = line }, opts)
  if VM.hmp_failed(text) then
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

-- vm:events() -> every event received so far, oldest first (drains)
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
VM.event_match = event_match

local wait_opts = { timeout = check.nonneg, match = "table" }

-- vm:wait_event([name [, {timeout=, match=}]]) -> event
-- Events that do not match stay queued for vm:events().
function VM:wait_event(name, opts)
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

-- vm:status() -> "running", "paused", "shutdown", ... (query-status)
function VM:status()
  return self:qmp("query-status").status
end

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

function VM:cont()
  self:qmp("cont")
end

local quit_opts = { timeout = check.nonneg }

-- vm:quit([{timeout=}]) -> exit status {code=, signal=, desc=}
-- QMP quit, wait; SIGTERM, wait; SIGKILL; always reaped.
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
  local st = self:_exit_status()
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
  return st
end

-- vm:kill() -> exit status: SIGKILL now, reaped
function VM:kill()
  if self._closed then return self._exit end
  if not self._proc then check.bad("vm:kill", "an attached VM is not this shell's process") end
  local st = self._exit or self._proc:kill()
  self._exit = st
  self.pid = nil
  self:_close_qmp()
  return st
end

local vmwait_opts = { timeout = check.nonneg }

-- vm:wait([{timeout=}]) -> exit status: wait for QEMU to end by itself
function VM:wait(opts)
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
  return st
end

-- vm:close(): quit if still running (short grace), then free everything:
-- sockets, the process, the temp dir.  What <close> calls.
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
  for _, hook in ipairs(self._on_close) do pcall(hook, self) end
  return self._exit
end

VM.__close = VM.close

-- ---- implemented in their own modules ----

-- Snapshots (stdlib/qemu/vm/snapshot.lua): internal snapshots in the VM's
-- qcow2 images, through QMP jobs or HMP with its errors caught.
function VM:savevm(tag, opts) return require("qemu.vm.snapshot").savevm(self, tag, opts) end
function VM:loadvm(tag, opts) return require("qemu.vm.snapshot").loadvm(self, tag, opts) end
function VM:delvm(tag, opts) return require("qemu.vm.snapshot").delvm(self, tag, opts) end
function VM:snapshots() return require("qemu.vm.snapshot").snapshots(self) end

-- Checkpoints (stdlib/qemu/checkpoint/): the VM state, its RAM and frozen
-- disks in a directory that qemu.launch{restore=} starts from.
function VM:checkpoint(dir, opts) return require("qemu.checkpoint.make").make(self, dir, opts) end

-- Regions of interest (stdlib/qemu/vm/roi.lua): the guest's ROI markers, as
-- the VM's insn (or hotblocks) plugin reports them.
function VM:wait_roi(id, opts) return require("qemu.vm.roi").wait(self, id, opts) end
function VM:roi_events() return require("qemu.vm.roi").events(self) end

-- vm:plugin_log() -> the text the VM's plugins printed (qemu_plugin_outs)
function VM:plugin_log()
  if not self._plugin_log then check.bad("vm:plugin_log", "this VM has no plugins") end
  if self._closed then check.bad("vm:plugin_log", "%s is closed (read it before vm:close())", tostring(self)) end
  local f = io.open(self._plugin_log, "rb")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

-- vm:plugin_result(name) -> the JSON result a plugin wrote to its out= file,
-- or a contrib plugin's report read from the plugin log (cache, execlog,
-- howvec, hotpages: stdlib/qemu/plugin/build.lua), as a table (read after
-- QEMU ended: quit, wait or kill; before vm:close()).
function VM:plugin_result(name)
  check.arg("vm:plugin_result", 1, name, "string")
  for _, p in ipairs(self.plugins or {}) do
    if p.name == name and p.out then
      local f = io.open(p.out, "rb")
      if not f then
        errors.raise { class = "PluginError", command = "vm:plugin_result",
                       desc = string.format("plugin %s wrote no result to %s%s", name, p.out,
                                            self._exit and "" or " (QEMU is still running: results are written at exit)") }
      end
      local text = f:read("a")
      f:close()
      local ok, v = pcall(require("qshell.json").decode, text)
      if not ok then
        errors.raise { class = "PluginError", command = "vm:plugin_result",
                       desc = string.format("plugin %s's result %s is not JSON: %s", name, p.out, tostring(v)) }
      end
      return v
    end
  end
  -- QEMU's contrib plugins print their report into the plugin log: read it there.
  local pb = require "qemu.plugin.build"
  for _, p in ipairs(self.plugins or {}) do
    local parser = pb.parser_name(p.path)
    if not p.out and (p.name == name or parser == pb.parser_name(name)) and pb.parsers[parser] then
      return pb.result(self:plugin_log(), p.path)
    end
  end
  check.bad("vm:plugin_result", "no plugin named %s with an out= file or a report this shell reads in this VM", name)
end

-- vm:attach(): the guest's serial console in this terminal (raw mode;
-- Ctrl-] returns).  The guest's shell is told the terminal size.
function VM:attach()
  self:_live("vm:attach")
  if not self.console then check.bad("vm:attach", "this VM has no captured console (console=false)") end
  self.console:attach()
end

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
  fields._hidden_jobs = {}
  fields.qmp_timeout = fields.qmp_timeout or DEFAULT_QMP_TIMEOUT
  return setmetatable(fields, VM)
end

return VM
