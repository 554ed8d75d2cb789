-- qemu.sweep.runner: one run of a sweep, the same under every engine.
-- The VM is qemu.launch{restore=checkpoint, ...the run's launch options}
-- in its own overlay; the run function's metrics (or its error) come back
-- as a result {i=, status="ok"|"failed", metrics=, error=, wall=}.

local sys = require "qshell.os"
local plan = require "qemu.sweep.plan"

local M = {}

-- The launch options a run gets: spec.launch (a table, or a function of
-- the parameters), with the machine's disks left to the checkpoint when
-- the sweep started from a savevm tag (they were the tag's image, and the
-- checkpoint made from it holds them now).
function M.launch_options(spec, params, source)
  local base = spec.launch
  if type(base) == "function" then base = base(params) end
  local lopts = {}
  for k, v in pairs(base or {}) do lopts[k] = v end
  if source.from_tag then
    lopts.disks = nil
    lopts.loadvm = nil
  end
  lopts.restore = source.checkpoint
  return lopts
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

-- M.run(spec, source, r) -> result; never raises (a failed run is a result).
function M.run(spec, source, r)
  local t0 = sys.now()
  local ok, res = pcall(function()
    local vm <close> = qemu.launch(M.launch_options(spec, r.params, source))
    return check_metrics(spec.run(vm, r.params))
  end)
  local out = { i = r.i, wall = sys.now() - t0 }
  if ok then
    out.status, out.metrics = "ok", res
  else
    out.status, out.error = "failed", tostring(res)
  end
  return out
end

return M
