-- qemu.sweep.runner: one run of a sweep, the same under every engine.
-- The VM is qemu.launch{restore=checkpoint, ...the run's launch options}
-- in its own overlay; the run function's metrics (or its error) come back
-- as a result {i=, status="ok"|"failed", metrics=, error=, wall_s=, host=,
-- started=, provenance=}, with a roi<ID>_insns column per region of
-- interest when the insn plugin ran (provenance: see qemu.sweep.provenance).

local sys = require "qshell.os"
local plan = require "qemu.sweep.plan"
local provenance = require "qemu.sweep.provenance"

local M = {}

-- The launch options a run gets: spec.launch (a table, or a function of
-- the parameters), with the machine's disks left to the checkpoint when
-- the sweep started from a savevm tag (they were the tag's image, and the
-- checkpoint made from it holds them now).
function M.launch_options(spec, params, source, r)
  local base = spec.launch
  if type(base) == "function" then base = base(params) end
  local lopts = {}
  for k, v in pairs(base or {}) do lopts[k] = v end
  if source.from_tag then
    lopts.disks = nil
    lopts.loadvm = nil
  end
  lopts.restore = source.checkpoint
  -- record=true: the run's recording beside the results; a rerun with
  -- --replay replays it instead
  local replay = os.getenv("QSHELL_SWEEP_REPLAY")
  if replay and replay ~= "" then
    lopts.replay = replay
  elseif spec.record and r then
    lopts.record = M.recording(spec, r)
  end
  return lopts
end

-- The recording of run r of a sweep with record=true: OUT.rr/run-I.
function M.recording(spec, r)
  return string.format("%s.rr/run-%d", spec.out, r.i)
end

-- A run about to record: the dir of an earlier try of the same run (a
-- resumed sweep) goes, and the sweep's recordings dir is made.
local function prepare_recording(lopts)
  if not lopts.record then return end
  local fs = require "qemu.util.fs"
  fs.mkdir_p(lopts.record:match("^(.*)/[^/]+$"), "qemu.sweep")
  if fs.exists(lopts.record) then require("qemu.vm.replay").remove(lopts.record) end
end

local function check_metrics(m)
  if m == nil then m = {} end
  if type(m) ~= "table" then m = { value = m } end
  for k, v in pairs(m) do
    if type(k) ~= "string" or (type(v) ~= "number" and type(v) ~= "string" and type(v) ~= "boolean") then
      error(string.format("run returned metric %s = %s: metrics are name = number|string|boolean",
                          tostring(k), tostring(v)), 0)
    end
    if plan.RESERVED[k] then error("run returned a metric named '" .. k .. "', a column sweep writes itself", 0) end
  end
  return m
end

-- The plugins' columns of a run (QEMU is ended first if the run left it
-- running: the plugins write their results at exit): with insn,
-- roi<ID>_insns for every region of interest the guest marked; with a lua
-- plugin, lua_<KEY> for each number, string or boolean in what its script's
-- plugin.on_exit returned (or its counters).  What run returned wins.
local function plugin_metrics(vm, m)
  local has = {}
  for _, p in ipairs(vm.plugins or {}) do
    if (p.name == "insn" or p.name == "lua") and p.out then has[p.name] = true end
  end
  if not next(has) then return m end
  if not vm:_exited() then vm:quit() end
  if has.insn then
    for _, roi in ipairs(vm:plugin_result("insn").rois or {}) do
      local k = string.format("roi%d_insns", roi.id)
      if m[k] == nil then m[k] = roi.insns end
    end
  end
  if has.lua then
    local res = vm:plugin_result("lua")
    for k, v in pairs(type(res) == "table" and res or {}) do
      local t = type(v)
      if type(k) == "string" and k:match("^[%w_]+$") and (t == "number" or t == "string" or t == "boolean") then
        local col = "lua_" .. k
        if m[col] == nil then m[col] = v end
      end
    end
  end
  return m
end

-- The script side of the provenance, once per process.
local script_facts
local function script_of(spec)
  if not script_facts or script_facts.spec ~= spec then
    script_facts = { spec = spec, facts = provenance.script(spec) }
  end
  return script_facts.facts
end

-- M.provenance(spec, source, params [, vm]) -> the provenance of a run
function M.provenance(spec, source, params, vm)
  local ok, lopts = pcall(M.launch_options, spec, params, source)
  return provenance.of_run(script_of(spec), ok and lopts or {}, source, vm)
end

-- Did the run end because this process is being stopped (SIGTERM from
-- Slurm at a time limit or scancel, Ctrl-C) rather than by its own fault?
local function interrupted(err)
  if type(err) == "table" and err.class == "Interrupted" then return true end
  local s = tostring(err)
  return s:find("terminated by signal %d+$") ~= nil or s:find("interrupted!$") ~= nil
end

-- The next run's VM, started while the current run goes on (a worker
-- knows its next run): {i=, pending=, paused=}.  It is restored paused (-S:
-- not one guest instruction runs) and goes on when its run begins, so the
-- run starts from exactly the checkpoint's state in its own fresh overlays,
-- as a VM launched then would; only QEMU's start-up is out of the way.
local warm

-- M.drop_warm(): stop the VM started ahead, if any.
function M.drop_warm()
  if warm then
    warm.pending:cancel()
    warm = nil
  end
end

local function start_warm(spec, source, r)
  M.drop_warm()
  local ok, lopts = pcall(M.launch_options, spec, r.params, source, r)
  if not ok or not pcall(prepare_recording, lopts) then return end -- the run itself will say why
  local lo = {}
  for k, v in pairs(lopts) do lo[k] = v end
  lo.paused = true
  local started, pending = pcall(require("qemu.vm.launch").start, lo)
  if started then warm = { i = r.i, pending = pending, paused = lopts.paused } end
end

-- The run's VM: the one started ahead for it, or a new launch.
local function open_vm(r, lopts)
  local w = warm
  warm = nil
  if not (w and w.i == r.i) then
    if w then w.pending:cancel() end
    prepare_recording(lopts)
    return require("qemu.vm.launch").launch(lopts)
  end
  local vm = require("qemu.vm.launch").finish(w.pending)
  vm.options.paused = w.paused
  if not w.paused then vm:cont() end
  return vm
end

-- M.run(spec, source, r [, next_r]) -> result; never raises (a failed run
-- is a result; one cut short by a signal to this process says so:
-- interrupted=true).  With next_r (a run, or a function giving the run
-- after this one or nil, asked once this run's VM is up), that run's VM
-- starts while this one runs.
function M.run(spec, source, r, next_r)
  local t0 = sys.now()
  local out = { i = r.i, host = provenance.host(), started = provenance.now_text() }
  local lopts, vm_seen
  local ok, res = pcall(function()
    lopts = M.launch_options(spec, r.params, source, r)
    local vm <close> = open_vm(r, lopts)
    vm_seen = vm
    if type(next_r) == "function" then next_r = next_r() end
    -- (not under record=: a recorded guest restored paused and resumed
    -- later saw its clock jump by the wait, and lost console input)
    if next_r and not spec.record then start_warm(spec, source, next_r) end
    out.provenance = provenance.of_run(script_of(spec), lopts, source, vm)
    local m = plugin_metrics(vm, check_metrics(spec.run(vm, r.params)))
    if lopts.record then
      -- QEMU ends its log when it exits
      if not vm:_exited() then vm:quit() end
      m.recording = lopts.record
      m.record_bytes = require("qemu.vm.replay").size(lopts.record)
    end
    return m
  end)
  out.wall_s = sys.now() - t0
  if not out.provenance then
    local pok, prov = pcall(provenance.of_run, script_of(spec), lopts or {}, source, vm_seen)
    out.provenance = pok and prov or nil
  end
  if ok then
    out.status, out.metrics = "ok", res
  else
    out.status, out.error = "failed", tostring(res)
    out.interrupted = interrupted(res) or nil
  end
  return out
end

return M
