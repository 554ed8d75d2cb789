-- qemu.sweep: many runs from one saved state, in parallel, results in one
-- table.
--
--   qemu.sweep{ from = "warm.ckpt", matrix = {size = {1, 10}, limit = {1e8, 1e9}}, repeat = 2,
--               launch = function(p) return {plugins = {{name="insn", args={limit=p.limit}}}} end,
--               run = function(vm, p) ... return {metric = ...} end,
--               workers = 2, out = "results.csv", resume = true }
--
-- The parts, each in its own file under stdlib/qemu/sweep/:
--   plan.lua     the matrix expanded into runs with stable keys
--   results.lua  the results file (CSV/JSONL writer, reader, formatter) and the tally
--   source.lua   from= resolved to a checkpoint
--   runner.lua   one run: launch from the checkpoint, the run function, its metrics
--   provenance.lua  what produced a row (QEMU, machine, checkpoint, plugins, script)
--   rerun.lua    one row run again from what it records
--   local.lua    the local engine (forked workers)
--   slurm.lua    the Slurm engine (a job array)
-- This file checks the options, makes the plan, and hands it to an engine.

local check = require "qemu.util.check"
local plan = require "qemu.sweep.plan"
local results = require "qemu.results.file"
local source = require "qemu.sweep.source"
local runner = require "qemu.sweep.runner"

local M = {}

M.read = results.read
M.format = results.format

function M.rerun(path, row, opts)
  return require("qemu.sweep.rerun").rerun(path, row, opts)
end

function M.slurm_status(path)
  return require("qemu.sweep.slurm").status(path)
end

local ENGINES = { ["local"] = "qemu.sweep.local", slurm = "qemu.sweep.slurm" }

local sweep_opts = {
  from = "string", launch = "table|function", matrix = "table", ["repeat"] = check.positive,
  run = "function", workers = check.positive, out = "string", resume = "boolean",
  timeout = check.positive, engine = "string", progress = "boolean", slurm = "table",
}

function M.sweep(spec)
  local fname = "qemu.sweep"
  check.options(fname, spec, sweep_opts)
  if not spec.run then check.bad(fname, "run= (a function(vm, params) returning metrics) is required") end
  if not spec.from then check.bad(fname, "from= (a checkpoint directory or a savevm tag) is required") end
  local matrix = spec.matrix or {}
  plan.check_matrix(fname, matrix)
  local reps = spec["repeat"] or 1
  if math.type(reps) ~= "integer" then check.bad(fname, "repeat must be a whole number") end
  local engine_name = spec.engine or os.getenv("QSHELL_SWEEP_ENGINE") or "local"
  if not ENGINES[engine_name] then check.bad(fname, "engine must be \"local\" or \"slurm\"") end
  local engine = require(ENGINES[engine_name])
  local runs, names = plan.expand(matrix, reps)
  -- Rerunning one row (qemu.sweep.rerun runs the script again): that run only.
  local rerun_key = os.getenv("QSHELL_SWEEP_RERUN")
  if rerun_key and rerun_key ~= "" then
    return require("qemu.sweep.rerun").task(spec, runs, rerun_key, fname)
  end
  -- In a Slurm array task, the task runs its share (a compute node need
  -- not have sbatch); the submitter owns out.
  local in_task = os.getenv("QSHELL_SWEEP_JOB")
  if engine_name == "slurm" and in_task and in_task ~= "" then
    return engine.task(spec, runs, in_task)
  end
  if engine.check then engine.check(spec, fname) end

  -- `qshell sweep --resume` resumes every sweep of the script.
  local resume = spec.resume or os.getenv("QSHELL_SWEEP_RESUME") == "1"
  local out = spec.out and results.open(spec.out, names, resume, fname)
  local ok, summary, extra = pcall(function()
    local todo, skipped = plan.todo(runs, out and out.done)
    local src = #todo > 0 and source.resolve(spec, fname, engine.shared_dir and engine.shared_dir(spec)) or nil
    if src and engine_name == "local" then
      -- Whether the runs share the checkpoint's RAM, and why not, said once
      -- here rather than once by each worker.
      local lok, lopts = pcall(runner.launch_options, spec, todo[1].params, src)
      pcall(require("qemu.checkpoint.restore").sharing, src.checkpoint, lok and lopts.binary or nil)
    end
    local tally = results.tally(runs, out, skipped, src and function(r) return runner.setup(spec, src, r.params) end)
    if out then out:note_sweep { total = #runs, params = names, started = require("qemu.sweep.provenance").now_text() } end
    local extra = {}
    if #todo > 0 then
      local rok, rerr = pcall(function()
        extra = engine.run { spec = spec, runs = runs, todo = todo, source = src, tally = tally, fname = fname,
                             resume = resume } or {}
      end)
      if not rok then
        pcall(tally.finish, tally)
        error(rerr, 0)
      end
    end
    tally:finish()
    return { total = #runs, ok = tally.ok, failed = tally.failed, skipped = skipped,
             out = spec.out, results = tally.results, checkpoint = src and src.checkpoint }, extra
  end)
  -- The results file is free for the next writer, whatever happened.
  if out then out:close() end
  if not ok then error(summary, 0) end
  for k, v in pairs(extra) do summary[k] = v end
  return summary
end

return M
