-- qemu.snapshot: vm:savevm / loadvm / delvm / snapshots, done safely.
--
-- QEMU's HMP savevm/loadvm report failure as a *successful* reply whose
-- text starts with "Error", and HMP savevm silently replaces an existing
-- tag.  Here: the QMP snapshot-save/-load/-delete jobs where QEMU has them
-- (node names discovered, the job waited for, its error read from
-- query-jobs, the job dismissed), HMP with error detection otherwise; an
-- existing tag is never replaced unless asked, a missing one is an error.

local errors = require "qemu.errors"
local check = require "qemu.check"
local disk = require "qemu.disk"
local VM = require "qemu.vm"

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
function VM:_snapshot_state(fname)
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
function VM:snapshots()
  self:_live("vm:snapshots")
  local _, _, list = self:_snapshot_state("vm:snapshots")
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

function VM:_has_snapshot_jobs()
  if self._snapshot_mode then return self._snapshot_mode == "qmp" end
  local have = false
  for _, c in ipairs(self:qmp("query-commands")) do
    if c.name == "snapshot-save" then have = true break end
  end
  self._snapshot_mode = have and "qmp" or "hmp"
  return have
end

-- Run one snapshot job to its end: wait for "concluded", read the error,
-- dismiss it, and drop its own events from the backlog.
function VM:_run_job(fname, cmd, args, timeout)
  jobs = jobs + 1
  local id = string.format("qshell-%s-%d", cmd, jobs)
  args["job-id"] = id
  self:qmp(cmd, args)
  self:wait_event("JOB_STATUS_CHANGE", { timeout = timeout,
                                          match = { data = { id = id, status = "concluded" } } })
  local err
  for _, j in ipairs(self:qmp("query-jobs")) do
    if j.id == id then err = j.error end
  end
  self:qmp("job-dismiss", { id = id })
  -- The job's own events are qshell's business, not the script's.
  self._hidden_jobs[id] = true
  local kept = {}
  for _, ev in ipairs(self._backlog) do
    if not self:_hidden(ev) then kept[#kept + 1] = ev end
  end
  self._backlog = kept
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
function VM:_snapshot_op(fname, job, hmp, args, timeout)
  if self:_has_snapshot_jobs() then return self:_run_job(fname, job, args, timeout) end
  local text = self:qmp("human-monitor-command", { ["command-line"] = hmp .. " " .. args.tag },
                        { timeout = timeout })
  if VM.hmp_failed(text) then return (text:gsub("%s+$", "")) end
  return nil
end

-- What savevm, loadvm and delvm all start with: the tag and options
-- checked, the VM live, the snapshot state read once.
function VM:_snapshot_begin(fname, tag, opts, spec)
  M.check_tag(fname, tag)
  opts = check.options(fname, opts, spec, 2)
  self:_live(fname)
  return opts, self:_snapshot_state(fname)
end

local save_opts = { replace = "boolean", timeout = check.nonneg }
local timeout_opts = { timeout = check.nonneg }

-- vm:savevm(tag [, {replace=false, timeout=}])
function VM:savevm(tag, opts)
  local fname = "vm:savevm"
  local nodes, vmstate, list
  opts, nodes, vmstate, list = self:_snapshot_begin(fname, tag, opts, save_opts)
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
  local err = self:_snapshot_op(fname, "snapshot-save", "savevm",
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
function VM:loadvm(tag, opts)
  local fname = "vm:loadvm"
  local nodes, vmstate, list
  opts, nodes, vmstate, list = self:_snapshot_begin(fname, tag, opts, timeout_opts)
  need_tag(fname, list, tag, "; the VM was not touched")
  local err = self:_snapshot_op(fname, "snapshot-load", "loadvm",
                                { tag = tag, vmstate = vmstate.node, devices = node_names(nodes) },
                                opts.timeout or DEFAULT_TIMEOUT)
  if err then
    local status = self:status()
    errors.raise { class = "SnapshotFailed", command = fname,
                   desc = string.format("%s; the VM is now %s", err, status),
                   hint = status ~= "running"
                     and "its state is undefined: load another snapshot, or vm:cont() to go on regardless"
                     or errors.hint_for(err) }
  end
  -- The console still holds what the guest printed before the load.
  if self.console then self.console:flush() end
end

-- vm:delvm(tag [, {timeout=}]): a missing tag is an error
function VM:delvm(tag, opts)
  local fname = "vm:delvm"
  local nodes, _, list
  opts, nodes, _, list = self:_snapshot_begin(fname, tag, opts, timeout_opts)
  need_tag(fname, list, tag, "")
  local err = self:_snapshot_op(fname, "snapshot-delete", "delvm", { tag = tag, devices = node_names(nodes) },
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
