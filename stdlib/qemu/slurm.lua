-- qemu.slurm: the Slurm engine of qemu.sweep (engine="slurm", or
-- `qshell sweep --slurm SCRIPT`).
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
local run_mod = require "qemu.run"

local M = {}

local slurm_opts = { tasks = check.positive, partition = "string", time = "string",
                     sbatch = "table", dir = "string" }

local read_file = run_mod.read_file

-- The task side: run this task's share, write results, end the script.
local function task_main(spec, runs, job, do_run)
  local id = tonumber(os.getenv("SLURM_ARRAY_TASK_ID") or "")
  if not id then
    errors.raise { class = "SlurmError", command = "qemu.sweep",
                   desc = "QSHELL_SWEEP_JOB is set but SLURM_ARRAY_TASK_ID is not: not a Slurm array task" }
  end
  local plan = json.decode(assert(read_file(job .. "/plan.json"), "no plan.json in " .. job))
  local bykey = {}
  for _, r in ipairs(runs) do bykey[r.key] = r end
  local result = string.format("%s/task-%d.jsonl", job, id)
  for _, key in ipairs(plan.tasks[id + 1] or {}) do
    local r = bykey[key]
    if not r then
      errors.raise { class = "SlurmError", command = "qemu.sweep",
                     desc = "the plan names run " .. key .. " that this script's matrix does not have" }
    end
    local res = do_run(spec, plan.checkpoint, r)
    res.key = key
    local f = assert(io.open(result, "ab"))
    f:write(json.encode(res), "\n")
    f:close()
  end
  os.exit(0, true)
end

local function script_argv()
  local script = arg and arg[0]
  if not script or script == "" or script == "-" then
    check.bad("qemu.sweep", "engine=\"slurm\" runs the script again in every task: use `qshell run FILE`")
  end
  local self = core.realpath("/proc/self/exe")
  local argv = { self, "run", core.realpath(script) or script }
  for i = 1, #arg do argv[#argv + 1] = arg[i] end
  return argv
end

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The submitting side.
function M.sweep(spec, runs, names, out, resolve_from)
  local fname = "qemu.sweep"
  local job = os.getenv("QSHELL_SWEEP_JOB")
  local do_run = require("qemu.sweep")._do_run
  if job and job ~= "" then return task_main(spec, runs, job, do_run) end

  local sopts = check.options(fname .. " slurm", spec.slurm, slurm_opts)
  if spec.workers then
    check.bad(fname, "workers= is for the local engine; under Slurm the array tasks are the workers (slurm={tasks=N})")
  end
  if spec.timeout then
    check.bad(fname, "timeout= is not enforced per run under Slurm; give the tasks a time limit (slurm={time=\"1:00:00\"})")
  end
  if not spec.out and not sopts.dir then
    check.bad(fname, "the Slurm engine needs out= (or slurm={dir=}) on a path every node sees")
  end
  if not run_mod.which("sbatch") then
    errors.raise { class = "SlurmError", command = fname, desc = "sbatch is not on PATH",
                   hint = "install slurm-client (or run with engine=\"local\")" }
  end
  local todo = {}
  local skipped = 0
  for _, r in ipairs(runs) do
    if out and out.done[r.key] then skipped = skipped + 1 else todo[#todo + 1] = r end
  end
  local summary = { total = #runs, ok = 0, failed = 0, skipped = skipped, out = spec.out, results = {} }
  if #todo == 0 then return summary end
  local ckpt = core.realpath(resolve_from(spec, fname))
  local argv = script_argv()

  -- The job dir: the plan, one result file and one log per task.
  job = sopts.dir or ((spec.out and (spec.out .. ".slurm")) or (run_mod.scratch() .. "/slurm"))
  run_mod.check({ "mkdir", "-p", job }, { command = fname })
  job = core.realpath(job)
  for _, name in ipairs(core.listdir(job) or {}) do
    if name:match("^task%-%d+%.") or name == "plan.json" or name == "job.sh" then os.remove(job .. "/" .. name) end
  end
  local ntasks = math.min(sopts.tasks or #todo, #todo)
  local plan = { checkpoint = ckpt, tasks = {} }
  for t = 1, ntasks do plan.tasks[t] = json.array {} end
  for i, r in ipairs(todo) do
    local t = (i - 1) % ntasks + 1
    plan.tasks[t][#plan.tasks[t] + 1] = r.key
  end
  local f = assert(io.open(job .. "/plan.json", "wb"))
  f:write(json.encode(plan))
  f:close()
  local words = {}
  for i, a in ipairs(argv) do words[i] = sh_quote(a) end
  local script = job .. "/job.sh"
  f = assert(io.open(script, "wb"))
  f:write("#!/bin/sh\n# a qshell sweep task: the script again, with this task's share\n",
          "QSHELL_SWEEP_JOB=", sh_quote(job), "\nexport QSHELL_SWEEP_JOB\n",
          "exec ", table.concat(words, " "), "\n")
  f:close()
  run_mod.check({ "chmod", "0755", script }, { command = fname })

  local sb = { "sbatch", "--wait", "--parsable", "--job-name=qshell-sweep",
               string.format("--array=0-%d", ntasks - 1),
               "--output=" .. job .. "/task-%a.log", "--chdir=" .. (core.realpath(".") or ".") }
  if sopts.partition then sb[#sb + 1] = "--partition=" .. sopts.partition end
  if sopts.time then sb[#sb + 1] = "--time=" .. sopts.time end
  for _, a in ipairs(sopts.sbatch or {}) do sb[#sb + 1] = a end
  sb[#sb + 1] = script
  local p = assert(core.new("qshell-run"))
  local ok, err = p:spawn(sb, 0, p:tmpdir() .. "/sbatch.out")
  if not ok then
    p:close()
    errors.raise { class = "SlurmError", command = fname, desc = err }
  end

  -- Gather while the array runs: each task appends whole lines.
  local offsets, seen = {}, {}
  local bykey = {}
  for _, r in ipairs(todo) do bykey[r.key] = r end
  local tty = spec.progress ~= false and core.isatty(2)
  local t0 = core.now()
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
          r.status, r.metrics, r.error, r.wall = res.status, res.metrics, res.error, res.wall
          if r.status == "ok" then summary.ok = summary.ok + 1 else summary.failed = summary.failed + 1 end
          summary.results[#summary.results + 1] = r
          if out then out:append(r) end
        end
      end
    end
    if tty then
      io.stderr:write(string.format("\r\027[K[sweep] slurm: %d/%d done, %d failed, %.0f s",
                                    summary.ok + summary.failed, #todo, summary.failed, core.now() - t0))
    end
  end
  local st
  local interrupted = false
  while true do
    st = p:poll()
    gather()
    if st then break end
    local okw, _, code = core.sleep(0.5)
    if not okw and code == "interrupted" then interrupted = true break end
  end
  local jobid = (read_file(p:tmpdir() .. "/sbatch.out") or ""):match("^(%d+)")
  if interrupted then
    if jobid and run_mod.which("scancel") then run_mod.run({ "scancel", jobid }) end
    p:kill()
    p:close()
    if out then out:finish() end
    errors.raise { class = "Interrupted", command = fname,
                   desc = "interrupted; the Slurm job " .. tostring(jobid) .. " was cancelled; the results so far are in " ..
                          tostring(spec.out), hint = "run it again with resume=true to do the rest" }
  end
  local sberr = p:log_tail(2000)
  p:close()
  gather()
  if tty then io.stderr:write("\n") end
  -- Runs no task reported: record them as failed, with where to look.
  for i, r in ipairs(todo) do
    if not seen[r.key] then
      local t = (i - 1) % ntasks
      r.status, r.wall = "failed", 0
      r.error = string.format("the Slurm task %d ended without a result (sbatch %s%s); see %s/task-%d.log",
                              t, st.desc, sberr ~= "" and (": " .. sberr:gsub("%s+$", "")) or "", job, t)
      summary.failed = summary.failed + 1
      summary.results[#summary.results + 1] = r
      if out then out:append(r) end
    end
  end
  if out then out:finish() end
  table.sort(summary.results, function(a, b) return a.i < b.i end)
  summary.job = job
  summary.jobid = jobid
  summary.checkpoint = ckpt
  return summary
end

return M
