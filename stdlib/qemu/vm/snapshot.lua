-- qemu.snapshot: vm:savevm / loadvm / delvm / snapshots, done safely (the
-- implementations behind the methods vm.lua declares).
--
-- QEMU's HMP savevm/loadvm report failure as a *successful* reply whose
-- text starts with "Error", and HMP savevm silently replaces an existing
-- tag.  Here: the QMP snapshot-save/-load/-delete jobs where QEMU has them
-- (node names discovered, the job waited for, its error read from
-- query-jobs, the job dismissed), HMP with error detection otherwise; an
-- existing tag is never replaced unless asked, a missing one is an error.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local disk = require "qemu.disk"

local M = {}

local DEFAULT_TIMEOUT = 600
local jobs = 0

-- Tags end up inside HMP command lines and QEMU option strings.
function M.check_tag(fname, tag)
  check.arg(fname, 1, tag, "string")
  if tag == "" then check.bad(fname, "the snapshot tag is empty") end
  if #tag > 127 then check.bad(fname, "the snapshot tag is longer than 127 bytes") end
  local bad = tag:match("[%s'\",;\\]")
  if bad then
    check.bad(fname, "the snapshot tag %q contains %q (no spaces, quotes, commas, semicolons or backslashes)",
              tag, bad)
  end
  if tag:match("^%d+$") then
    check.bad(fname, "the snapshot tag %q is all digits, which QEMU confuses with snapshot ids", tag)
  end
  if tag:match("[%c]") then check.bad(fname, "the snapshot tag contains control characters") end
end

-- One query-block answers everything a snapshot call needs: which nodes
-- take part (every writable inserted disk), where the VM state goes (the
-- first one, as HMP savevm chooses), and the snapshots already there.
function M._snapshot_state(self, fname)
  local nodes, raw_writable = {}, nil
  for _, b in ipairs(self:qmp("query-block")) do
    local ins = b.inserted
    if ins and not ins.ro then
      if ins.drv ~= "qcow2" then
        raw_writable = raw_writable or (b.device ~= "" and b.device or ins["node-name"])
      else
        nodes[#nodes + 1] = { node = ins["node-name"], image = ins.image, device = b.device }
      end
    end
  end
  if raw_writable then
    local desc = string.format("Device '%s' is writable but does not support snapshots", raw_writable)
    errors.raise { class = "SnapshotUnsupported", command = fname, desc = desc,
                   hint = errors.hint_for(desc) }
  end
  if #nodes == 0 then
    local desc = "no block device can store vmstate for snapshot"
    errors.raise { class = "SnapshotUnsupported", command = fname, desc = desc,
                   hint = errors.hint_for(desc) }
  end
  local vmstate = nodes[1]
  return nodes, vmstate, disk._snapshot_list(vmstate.image and vmstate.image.snapshots)
end

local function node_names(nodes)
  local out = {}
  for i, n in ipairs(nodes) do out[i] = n.node end
  return out
end

-- vm:snapshots() -> list of {tag=, id=, vm_size=, date=, vm_clock=, icount=}
function M.snapshots(self)
  self:_live("vm:snapshots")
  local _, _, list = M._snapshot_state(self, "vm:snapshots")
  return list
end

local function find_tag(list, tag)
  for _, s in ipairs(list) do
    if s.tag == tag then return s end
  end
  return nil
end

local function tags(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = s.tag end
  return #out > 0 and table.concat(out, ", ") or "none"
end

-- Per VM: does its QEMU have the snapshot jobs (6.0+)?  Asked once.
local has_jobs = setmetatable({}, { __mode = "k" })

function M._has_snapshot_jobs(self)
  if has_jobs[self] == nil then
    local have = false
    for _, c in ipairs(self:qmp("query-commands")) do
      if c.name == "snapshot-save" then have = true break end
    end
    has_jobs[self] = have
  end
  return has_jobs[self]
end

-- Run one snapshot job to its end: wait for "concluded", read the error,
-- dismiss it, and drop its own events from the backlog.
function M._run_job(self, fname, cmd, args, timeout)
  jobs = jobs + 1
  local id = string.format("qshell-%s-%d", cmd, jobs)
  args["job-id"] = id
  self:qmp(cmd, args)
  self:_wait_event("JOB_STATUS_CHANGE", { timeout = timeout,
                                          match = { data = { id = id, status = "concluded" } } })
  local err
  for _, j in ipairs(self:qmp("query-jobs")) do
    if j.id == id then err = j.error end
  end
  self:qmp("job-dismiss", { id = id })
  -- The job's own events are qshell's business, not the script's.
  self:_hide_job(id)
  return err
end

local function need_tag(fname, list, tag, more)
  if not find_tag(list, tag) then
    errors.raise { class = "SnapshotNotFound", command = fname,
                   desc = string.format("no snapshot '%s' (the VM has: %s)%s", tag, tags(list), more) }
  end
end

-- One snapshot operation: QEMU's QMP job where it has them, HMP otherwise
-- (whose errors come as successful replies).  Returns QEMU's error text,
-- or nil when it went through.
function M._snapshot_op(self, fname, job, hmp, args, timeout)
  if M._has_snapshot_jobs(self) then return M._run_job(self, fname, job, args, timeout) end
  local text = self:qmp("human-monitor-command", { ["command-line"] = hmp .. " " .. args.tag },
                        { timeout = timeout })
  if errors.hmp_failed(text) then return (text:gsub("%s+$", "")) end
  return nil
end

-- What savevm, loadvm and delvm all start with: the tag and options
-- checked, the VM live, the snapshot state read once.
function M._snapshot_begin(self, fname, tag, opts, spec)
  M.check_tag(fname, tag)
  opts = check.options(fname, opts, spec, 2)
  self:_live(fname)
  return opts, M._snapshot_state(self, fname)
end

local save_opts = { replace = "boolean", timeout = check.nonneg }
local timeout_opts = { timeout = check.nonneg }

-- vm:savevm(tag [, {replace=false, timeout=}])
function M.savevm(self, tag, opts)
  local fname = "vm:savevm"
  local nodes, vmstate, list
  opts, nodes, vmstate, list = M._snapshot_begin(self, fname, tag, opts, save_opts)
  local old = find_tag(list, tag)
  if old then
    if not opts.replace then
      errors.raise { class = "SnapshotExists", command = fname,
                     desc = string.format("snapshot '%s' already exists (id %s, taken %s); nothing was changed",
                                          tag, old.id, os.date("%Y-%m-%d %H:%M:%S", old.date)),
                     hint = "pass {replace=true} to overwrite it, or pick another tag" }
    end
    self:delvm(tag)
  end
  local err = M._snapshot_op(self, fname, "snapshot-save", "savevm",
                                 { tag = tag, vmstate = vmstate.node, devices = node_names(nodes) },
                                 opts.timeout or DEFAULT_TIMEOUT)
  if err then
    errors.raise { class = "SnapshotFailed", command = fname, desc = err, hint = errors.hint_for(err) }
  end
  -- Trust, but verify: the tag must now be there.
  if not find_tag(self:snapshots(), tag) then
    errors.raise { class = "SnapshotFailed", command = fname,
                   desc = string.format("QEMU reported success but snapshot '%s' is not in the image", tag) }
  end
end

-- vm:loadvm(tag [, {timeout=}])
function M.loadvm(self, tag, opts)
  local fname = "vm:loadvm"
  local nodes, vmstate, list
  opts, nodes, vmstate, list = M._snapshot_begin(self, fname, tag, opts, timeout_opts)
  need_tag(fname, list, tag, "; the VM was not touched")
  local err = M._snapshot_op(self, fname, "snapshot-load", "loadvm",
                                { tag = tag, vmstate = vmstate.node, devices = node_names(nodes) },
                                opts.timeout or DEFAULT_TIMEOUT)
  if err then
    local stopped = self:_stopped_state()
    errors.raise { class = "SnapshotFailed", command = fname,
                   desc = string.format("%s; the VM is %s", err, stopped and ("left stopped (" .. stopped .. ")") or "running"),
                   hint = stopped and "its state is undefined: load another snapshot, or vm:cont() to go on regardless"
                     or errors.hint_for(err) }
  end
  -- The console still holds what the guest printed before the load.
  if self.console then self.console:flush() end
end

-- vm:delvm(tag [, {timeout=}]): a missing tag is an error
function M.delvm(self, tag, opts)
  local fname = "vm:delvm"
  local nodes, _, list
  opts, nodes, _, list = M._snapshot_begin(self, fname, tag, opts, timeout_opts)
  need_tag(fname, list, tag, "")
  local err = M._snapshot_op(self, fname, "snapshot-delete", "delvm", { tag = tag, devices = node_names(nodes) },
                                opts.timeout or DEFAULT_TIMEOUT)
  if err then
    errors.raise { class = "SnapshotFailed", command = fname, desc = err, hint = errors.hint_for(err) }
  end
  if find_tag(self:snapshots(), tag) then
    errors.raise { class = "SnapshotFailed", command = fname,
                   desc = string.format("QEMU reported success but snapshot '%s' is still in the image", tag) }
  end
end

return M
