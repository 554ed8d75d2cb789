-- qemu.sweep.slurm: the Slurm engine of qemu.sweep (engine="slurm", or
-- `qshell sweep --slurm SCRIPT`); the same interface as qemu.sweep.local.
--
-- The submitting qshell writes the runs each array task owns to a job dir,
-- submits `sbatch --array=0-(N-1) --wait` running this same script with
-- this same qshell, and gathers the tasks' result files into `out` as they
-- grow.  In a task (QSHELL_SWEEP_JOB set), qemu.sweep runs that task's
-- share, one run after another, writes its results and ends the script
-- there.  The checkpoint and the job dir must be on a path every node sees.

local errors = require "qemu.errors"
local check = require "qemu.check"
local json = require "qshell.json"
local core = require "qshell.proc.core"
local sys = require "qshell.os"
local fs = require "qemu.fs"
local host = require "qemu.host"
local run_mod = require "qemu.run"
local runner = require "qemu.sweep.runner"

local M = {}

local slurm_opts = { tasks = check.positive, partition = "string", time = "string",
                     sbatch = "table", dir = "string" }

local read_file = fs.read

-- The task side (in a Slurm array task: QSHELL_SWEEP_JOB names the job
-- dir): run this task's share, write its results, end the script.
function M.task(spec, runs, job)
  local id = tonumber(os.getenv("SLURM_ARRAY_TASK_ID") or "")
  if not id then
    errors.raise { class = "SlurmError", command = "qemu.sweep",
                   desc = "QSHELL_SWEEP_JOB is set but SLURM_ARRAY_TASK_ID is not: not a Slurm array task" }
  end
  local plan = json.decode(fs.slurp(job .. "/plan.json", "qemu.sweep"))
  local bykey = {}
  for _, r in ipairs(runs) do bykey[r.key] = r end
  local result = string.format("%s/task-%d.jsonl", job, id)
  for _, key in ipairs(plan.tasks[id + 1] or {}) do
    local r = bykey[key]
    if not r then
      errors.raise { class = "SlurmError", command = "qemu.sweep",
                     desc = "the plan names run " .. key .. " that this script's matrix does not have" }
    end
    local res = runner.run(spec, { checkpoint = plan.checkpoint, from_tag = plan.from_tag, tag = plan.tag }, r)
    res.key = key
    fs.append(result, json.encode(res) .. "\n", "qemu.sweep")
  end
  os.exit(0, true)
end

local function script_argv()
  local script = arg and arg[0]
  if not script or script == "" or script == "-" then
    check.bad("qemu.sweep", "engine=\"slurm\" runs the script again in every task: use `qshell run FILE`")
  end
  local self = sys.realpath("/proc/self/exe")
  local argv = { self, "run", sys.realpath(script) or script }
  for i = 1, #arg do argv[#argv + 1] = arg[i] end
  return argv
end

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Check the options before anything runs (qemu.sweep calls it first).
function M.check(spec, fname)
  check.options(fname .. " slurm", spec.slurm, slurm_opts)
  if spec.workers then
    check.bad(fname, "workers= is for the local engine; under Slurm the array tasks are the workers (slurm={tasks=N})")
  end
  if spec.timeout then
    check.bad(fname, "timeout= is not enforced per run under Slurm; give the tasks a time limit (slurm={time=\"1:00:00\"})")
  end
  if not spec.out and not (spec.slurm and spec.slurm.dir) then
    check.bad(fname, "the Slurm engine needs out= (or slurm={dir=}) on a path every node sees")
  end
  if not run_mod.which("sbatch") then
    errors.raise { class = "SlurmError", command = fname, desc = "sbatch is not on PATH",
                   hint = "install slurm-client (or run with engine=\"local\")" }
  end
end

-- Where a checkpoint made for the tasks goes: beside the results, which
-- every node sees.
function M.shared_dir(spec)
  return (spec.slurm and spec.slurm.dir) or (spec.out and (spec.out .. ".slurm"))
end

-- The submitting side.
function M.run(j)
  local fname, spec, tally, todo = j.fname, j.spec, j.tally, j.todo
  local job
  local sopts = spec.slurm or {}
  local ckpt = sys.realpath(j.source.checkpoint)
  local argv = script_argv()

  -- The job dir: the plan, one result file and one log per task.
  job = sopts.dir or ((spec.out and (spec.out .. ".slurm")) or (fs.scratch() .. "/slurm"))
  fs.mkdir_p(job, fname)
  job = sys.realpath(job)
  for _, name in ipairs(sys.listdir(job) or {}) do
    if name:match("^task%-%d+%.") or name == "plan.json" or name == "job.sh" then os.remove(job .. "/" .. name) end
  end
  local ntasks = math.min(sopts.tasks or #todo, #todo)
  local plan = { checkpoint = ckpt, from_tag = j.source.from_tag, tag = j.source.tag, tasks = {} }
  for t = 1, ntasks do plan.tasks[t] = json.array {} end
  for i, r in ipairs(todo) do
    local t = (i - 1) % ntasks + 1
    plan.tasks[t][#plan.tasks[t] + 1] = r.key
  end
  fs.write(job .. "/plan.json", json.encode(plan), fname)
  local words = {}
  for i, a in ipairs(argv) do words[i] = sh_quote(a) end
  local script = job .. "/job.sh"
  fs.write(script, "#!/bin/sh\n# a qshell sweep task: the script again, with this task's share\n" ..
           "QSHELL_SWEEP_JOB=" .. sh_quote(job) .. "\nexport QSHELL_SWEEP_JOB\n" ..
           "exec " .. table.concat(words, " ") .. "\n", fname)
  run_mod.check({ "chmod", "0755", script }, { command = fname })

  local sb = { "sbatch", "--wait", "--parsable", "--job-name=qshell-sweep",
               string.format("--array=0-%d", ntasks - 1),
               "--output=" .. job .. "/task-%a.log", "--chdir=" .. (sys.realpath(".") or ".") }
  if sopts.partition then sb[#sb + 1] = "--partition=" .. sopts.partition end
  if sopts.time then sb[#sb + 1] = "--time=" .. sopts.time end
  for _, a in ipairs(sopts.sbatch or {}) do sb[#sb + 1] = a end
  sb[#sb + 1] = script
  local p, perr = core.new("qshell-run")
  if not p then errors.raise { class = "IOError", command = fname, desc = perr } end
  local ok, err = p:spawn(sb, 0, p:tmpdir() .. "/sbatch.out")
  if not ok then
    p:close()
    errors.raise { class = "SlurmError", command = fname, desc = err }
  end

  -- Gather while the array runs: each task appends whole lines.
  local offsets, seen = {}, {}
  local bykey = {}
  for _, r in ipairs(todo) do bykey[r.key] = r end
  local progress = host.progress("sweep", { enabled = spec.progress })
  local function gather()
    for t = 0, ntasks - 1 do
      local path = string.format("%s/task-%d.jsonl", job, t)
      local text = read_file(path) or ""
      local from = offsets[t] or 0
      local chunk = text:sub(from + 1)
      local complete = chunk:match("^(.*\n)") or ""
      offsets[t] = from + #complete
      for line in complete:gmatch("([^\n]+)\n") do
        local res = json.decode(line)
        local r = bykey[res.key]
        if r and not seen[res.key] then
          seen[res.key] = true
          res.i = r.i
          tally:record(res)
        end
      end
    end
    local last = tally:last_text(60)
    progress:show(string.format("slurm: %d/%d done, %d failed, %s%s", tally:done(), #j.runs,
                                tally.failed, host.fmt_time(progress:elapsed()), last and (" | last: " .. last) or ""))
  end
  local st
  local interrupted = false
  while true do
    st = p:poll()
    gather()
    if st then break end
    local okw, _, code = sys.sleep(0.5)
    if not okw and code == "interrupted" then interrupted = true break end
  end
  local jobid = (read_file(p:tmpdir() .. "/sbatch.out") or ""):match("^(%d+)")
  if interrupted then
    if jobid and run_mod.which("scancel") then run_mod.run({ "scancel", jobid }) end
    p:kill()
    p:close()
    progress:clear()
    errors.raise { class = "Interrupted", command = fname,
                   desc = "interrupted; the Slurm job " .. tostring(jobid) .. " was cancelled; the results so far are in " ..
                          tostring(spec.out), hint = "run it again with resume=true to do the rest" }
  end
  local sberr = p:log_tail(2000)
  p:close()
  gather()
  progress:done()
  -- Runs no task reported: record them as failed, with where to look.
  for i, r in ipairs(todo) do
    if not seen[r.key] then
      local t = (i - 1) % ntasks
      tally:record { i = r.i, status = "failed", wall = 0,
                     error = string.format("the Slurm task %d ended without a result (sbatch %s%s); see %s/task-%d.log",
                                           t, st.desc, sberr ~= "" and (": " .. sberr:gsub("%s+$", "")) or "", job, t) }
    end
  end
  return { job = job, jobid = jobid }
end

return M
