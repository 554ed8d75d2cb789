-- qemu.roi: the regions of interest a guest marks (roi/qshell-roi.h, the
-- qshell-roi helper), as the VM's plugins report them while it runs.
--
--   local vm <close> = qemu.guest.launch { plugins = { { name = "insn" } } }
--   vm.console:send("qshell-roi begin 1; ./work; qshell-roi end 1\r")
--   local e = vm:wait_roi(1)          --> {roi=1, event="end", insns=N, total=N, vcpu=0}
--
-- The project's first ROI-aware plugin (insn, else hotblocks) gets
-- events=FIFO in the VM's temp dir; each marker the guest executes writes a
-- JSON line there.  This module reads them: no console polling, and a
-- workload's end is seen the moment its end marker runs.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local sys = require "qshell.os"
local json = require "qshell.json"

local M = {}

local AWARE = { insn = 1, hotblocks = 2, lua = 3 } -- preference: insn's events carry counts
local DEFAULT_TIMEOUT = 600

-- From qemu.plugin's launch_args: give the first ROI-aware project plugin
-- of specs (their args tables, already copied) an events= FIFO, unless one
-- has events= already.  Returns the FIFO's path, or nil.
function M.plan(fname, specs, tmpdir)
  local best
  for _, s in ipairs(specs) do
    if s.name and AWARE[s.name] then
      if s.args.events ~= nil then return nil end
      if not best or AWARE[s.name] < AWARE[best.name] then best = s end
    end
  end
  if not best then return nil end
  local path = tmpdir .. "/roi-events.fifo"
  local ok, msg, code = sys.mkfifo(path)
  if not ok then
    errors.from_code(fname, "cannot make the ROI event FIFO: " .. tostring(msg), code, { overrides = { io = "LaunchFailed" } })
  end
  best.args.events = path
  return path
end

-- After the launch: the VM reads the FIFO from now on.
function M.attach(vm, path)
  local fd, msg, code = sys.open(path, "rn")
  if not fd then
    errors.from_code("qemu.launch", "cannot open the ROI event FIFO: " .. tostring(msg), code,
                     { overrides = { io = "LaunchFailed", notfound = "LaunchFailed" } })
  end
  vm._roi = { fd = fd, buf = "", queue = {} }
  vm:_on_close_do(function()
    if vm._roi and vm._roi.fd then
      sys.close(vm._roi.fd)
      vm._roi.fd = nil
    end
  end)
end

local function need(vm, fname)
  if not vm._roi then
    check.bad(fname, "this VM reports no ROI events: launch it with plugins = {{name=\"insn\"}} " ..
                     "(or hotblocks) to see the guest's ROI markers")
  end
  if vm._roi.fd == nil then check.bad(fname, "%s is closed", tostring(vm)) end
  return vm._roi
end

-- Move what the FIFO holds into the queue, without waiting.  A read of 0
-- bytes means no writer: not yet (the plugin opens it at its first event)
-- or no more (QEMU ended, which the monitor tells).
local function drain(r)
  while true do
    local data = sys.read(r.fd)
    if data == nil or data == "" then
      r.idle = data == "" and r.seen
      return
    end
    r.seen, r.idle = true, false
    r.buf = r.buf .. data
    for line in r.buf:gmatch("([^\n]*)\n") do
      local ok, ev = pcall(json.decode, line)
      if ok and type(ev) == "table" then r.queue[#r.queue + 1] = ev end
    end
    r.buf = r.buf:match("[^\n]*$")
  end
end

-- vm:roi_events() -> the ROI events so far (and forgets them)
function M.events(vm)
  local r = need(vm, "vm:roi_events")
  drain(r)
  local q = r.queue
  r.queue = {}
  return q
end

local wait_opts = { timeout = check.nonneg, event = "string" }

-- vm:wait_roi([id [, {timeout=600, event="end"}]]) -> event
-- The first not yet taken event of ROI id (any id when nil) of that kind.
function M.wait(vm, id, opts)
  local fname = "vm:wait_roi"
  if id ~= nil then
    if math.type(id) ~= "integer" or id < 0 or id > 65535 then
      check.bad(fname, "the ROI id must be a whole number from 0 to 65535, got %s", tostring(id))
    end
  end
  opts = check.options(fname, opts, wait_opts, 2)
  local kind = opts.event or "end"
  if kind ~= "begin" and kind ~= "end" then check.bad(fname, "event must be \"begin\" or \"end\", got %q", kind) end
  local r = need(vm, fname)
  local what = string.format("%s(%s)", fname, id and tostring(id) or "")
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local deadline = sys.now() + timeout
  local state_check = sys.now()
  while true do
    drain(r)
    for i, ev in ipairs(r.queue) do
      if ev.event == kind and (id == nil or ev.roi == id) then
        table.remove(r.queue, i)
        return ev
      end
    end
    local _, gone = vm:_pump_events()
    if gone or vm:_exited() then
      errors.raise { class = "QEMUExited", command = what, exit = vm:_exited(),
                     desc = string.format("QEMU ended before ROI %s's %s marker ran", id and tostring(id) or "any", kind) }
    end
    -- A stopped VM runs no marker: said at once, and again every 2 s of waiting.
    if sys.now() >= state_check then
      vm:_need_running(what)
      state_check = sys.now() + 2
    end
    local left = deadline - sys.now()
    if left <= 0 then
      errors.raise { class = "Timeout", command = what,
                     desc = string.format("no %s marker of ROI %s within %g s", kind, id and tostring(id) or "(any)", timeout),
                     hint = "is the workload marked (qshell-roi begin/end ID, or QSHELL_ROI_BEGIN/END in its code)?" }
    end
    -- A FIFO whose writer left polls readable for ever: then wait on the
    -- monitor alone (QEMU is ending), briefly.
    local fds = {}
    if not r.idle then fds[1] = r.fd end
    local mfd = vm:_monitor_fd()
    if mfd then fds[#fds + 1] = mfd end
    local ready, msg, code = sys.poll(fds, math.min(left, r.idle and 0.05 or 1))
    if not ready then errors.from_code(what, msg, code) end
  end
end

return M
