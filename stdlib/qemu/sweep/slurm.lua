-- qemu.sweep.slurm: the Slurm engine of qemu.sweep (engine="slurm", or
-- `qshell sweep --slurm SCRIPT`); the same interface as qemu.sweep.local.
--
-- The submitting qshell writes a submission to the job dir (OUT.slurm/N/:
-- the plan naming the runs each array task owns, job.sh), submits `sbatch
-- --array=0-(T-1) --wait` running this same script with this same qshell,
-- and gathers the tasks' result files into `out` as they grow, watching
-- the tasks' states and nodes with squeue.  In a task (QSHELL_SWEEP_JOB
-- set by job.sh), qemu.sweep runs that task's share and ends the script.
--
-- Paths: with slurm={shared={"/a/shared", "/b/shared"}} the job dir, the
-- checkpoint and (when it is there) the script are found on each node
-- under whichever of those paths holds the job there; without it, every
-- node is assumed to see them at the submitter's paths.
--
-- What Slurm and the job dir say about a job (its tasks' states, the
-- submissions, their result lines, `--status`) is qemu.sweep.slurm_jobs.
--
-- Faults: a task's result file is appended one whole line per run (a run
-- cut short by Slurm's SIGTERM is not written); a task that starts again
-- (Slurm requeues it when its node fails) skips the runs its file already
-- has, and the gatherer takes each run once.  Runs no task
-- reported are recorded as failed with the reason Slurm gives (time limit,
-- node failure, ...).  With resume=true a new submitter first gathers what
-- earlier submissions wrote (waiting for a job of them still running) and
-- submits only the rest.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local json = require "qshell.json"
local core = require "qshell.proc.core"
local sys = require "qshell.os"
local fs = require "qemu.util.fs"
local host = require "qemu.util.host"
local run_mod = require "qemu.util.run"
local runner = require "qemu.sweep.runner"
local provenance = require "qemu.sweep.provenance"
local results_file = require "qemu.results.file"
local jobs = require "qemu.sweep.slurm_jobs"

local M = {}

local function valid_time(v)
  if type(v) ~= "string" then return false, "must be a string" end
  -- Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
  for _, p in ipairs { "^%d+$", "^%d+:%d+$", "^%d+:%d+:%d+$", "^%d+%-%d+$", "^%d+%-%d+:%d+$", "^%d+%-%d+:%d+:%d+$" } do
    if v:match(p) then return true end
  end
  return false, "must be a Slurm time limit: minutes, MM:SS, HH:MM:SS or D-HH:MM:SS (e.g. \"30\", \"1:00:00\")"
end

local function valid_mem(v)
  if type(v) ~= "string" or not v:match("^%d+[KMGT]?$") then
    return false, "must be a size Slurm takes, e.g. \"512M\" or \"4G\""
  end
  return true
end

local function word(v)
  if type(v) ~= "string" or not v:match("^[%w_.%-]+$") then return false, "must be a name (letters, digits, _ . -)" end
  return true
end

local function whole(v)
  if math.type(v) ~= "integer" or v < 1 then return false, "must be a whole number >= 1" end
  return true
end

local function strings(v)
  if type(v) ~= "table" then return false, "must be a list of strings" end
  for _, s in ipairs(v) do
    if type(s) ~= "string" then return false, "must be a list of strings" end
  end
  return true
end

local function stage_mode(v)
  if v == "node" or v == false then return true end
  return false, 'must be "node" (a copy of the checkpoint in each node\'s scratch) or false (every run reads ' ..
                'the shared copy)'
end

local function bytes(v)
  if math.type(v) ~= "integer" or v < 0 then return false, "must be a number of bytes >= 0" end
  return true
end

local slurm_opts = {
  tasks = whole, tasks_per_node = whole, max_running = whole,
  partition = word, account = word, qos = word, time = valid_time, mem = valid_mem,
  sbatch = "table", dir = "string", shared = "string|table", requeue = "boolean",
  stage = stage_mode, stage_dir = "string", stage_keep = bytes,
}

-- ---- the task side ----

-- The shared root this node sees (job.sh found it), and a path of the plan
-- made on this node.
local function on_node(plan, p)
  if type(p) ~= "table" then return p end
  if p.abs then return p.abs end
  return (os.getenv("QSHELL_SWEEP_ROOT") or plan.roots[1]) .. "/" .. p.rel
end

-- The runs this task's file already has (a requeued task starts again);
-- a line cut off when its node died is closed so the next one stays whole.
local function already_done(path)
  local text = fs.read(path)
  local done = {}
  if not text or text == "" then return done end
  for line in text:gmatch("([^\n]*)\n") do
    local r = results_file.read_task_line(line)
    if r then done[r.run] = true end
  end
  if not text:match("\n$") then fs.append(path, "\n", "qemu.sweep") end
  return done
end

-- A writer the local engine's tally appends to when a task runs several
-- runs at once (tasks_per_node): one result line per run.
local TaskOut = {}
TaskOut.__index = TaskOut
function TaskOut:append(r)
  -- The task being stopped (Slurm's SIGTERM reaches the workers too) is
  -- not a result: the submitter gives the reason, a retry runs it again.
  if r.interrupted or tostring(r.error):find("^the worker died") then return end
  fs.append(self.path, results_file.task_line(r), "qemu.sweep")
end
function TaskOut:finish() end

-- In a Slurm array task (QSHELL_SWEEP_JOB names the submission dir on this
-- node): run this task's share, append its results, end the script.
function M.task(spec, runs, job)
  local id = tonumber(os.getenv("SLURM_ARRAY_TASK_ID") or "")
  if not id then
    errors.raise { class = "SlurmError", command = "qemu.sweep",
                   desc = "QSHELL_SWEEP_JOB is set but SLURM_ARRAY_TASK_ID is not: not a Slurm array task" }
  end
  local plan = json.decode(fs.slurp(job .. "/plan.json", "qemu.sweep"))
  -- The provenance as the submitter names it (paths differ on this node).
  provenance.task_script = plan.script
  local byrun = {}
  for _, r in ipairs(runs) do byrun[r.run] = r end
  local result = string.format("%s/task-%d.jsonl", job, id)
  local done = already_done(result)
  local mine = {}
  for _, name in ipairs(plan.tasks[id + 1] or {}) do
    local r = byrun[name]
    if not r then
      errors.raise { class = "SlurmError", command = "qemu.sweep",
                     desc = "the plan names run " .. name .. " that this script's matrix does not have" }
    end
    if not done[name] then mine[#mine + 1] = r end
  end
  local source = { checkpoint = on_node(plan, plan.checkpoint), shown = plan.checkpoint_shown,
                   from_tag = plan.from_tag, tag = plan.tag }
  if plan.stage ~= false and #mine > 0 then
    -- one copy of the checkpoint per node, in its scratch (sweep/stage.lua)
    source.checkpoint = require("qemu.sweep.stage").checkpoint(source.checkpoint, {
      dir = plan.stage_dir, keep = plan.stage_keep, log = job .. "/stage.log", node = provenance.host() })
  end
  local per = plan.tasks_per_node or 1
  if per > 1 and #mine > 1 then
    local tally = results_file.tally(runs, setmetatable({ path = result }, TaskOut), 0)
    local lspec = setmetatable({ workers = per, progress = false }, { __index = spec })
    require("qemu.sweep.local").run { spec = lspec, runs = runs, todo = mine, source = source, tally = tally,
                                      fname = "qemu.sweep" }
  else
    for k, r in ipairs(mine) do
      local res = runner.run(spec, source, r, mine[k + 1])
      -- Stopped by Slurm (time limit, scancel): the run is not a result;
      -- the submitter gives the reason, or a resume runs it again.
      if res.interrupted then os.exit(1, true) end
      res.run = r.run
      fs.append(result, results_file.task_line(res), "qemu.sweep")
    end
  end
  os.exit(0, true)
end

-- ---- the submitting side ----

-- Slurm's own defaults, for a cluster whose configuration cannot be read.
M.DEFAULT_LIMITS = { max_array_size = 1001, max_job_count = 10000 }

-- M.limits(text) -> {max_array_size=, max_job_count=}: the limits in the
-- output of `scontrol show config` ("MaxArraySize = 1001"); a value the
-- text lacks is Slurm's default.
function M.limits(text)
  local l = {}
  for k, v in pairs(M.DEFAULT_LIMITS) do l[k] = v end
  local a = (text or ""):match("\nMaxArraySize%s*=%s*(%d+)") or (text or ""):match("^MaxArraySize%s*=%s*(%d+)")
  local j = (text or ""):match("\nMaxJobCount%s*=%s*(%d+)") or (text or ""):match("^MaxJobCount%s*=%s*(%d+)")
  if a then l.max_array_size = tonumber(a) end
  if j then l.max_job_count = tonumber(j) end
  return l
end

-- The limits of the cluster sbatch submits to (read once per submission).
local function cluster_limits()
  local ok, st = pcall(run_mod.run, { "scontrol", "show", "config" }, { command = "qemu.sweep" })
  if not ok and errors.is(st, "Interrupted") then error(st, 0) end
  if not ok or st.code ~= 0 then return M.limits(nil), false end
  return M.limits(st.stdout), true
end

-- How many array tasks a CPU slot of the partition gets by default: a
-- task's start (slurmstepd, the script run again, the plan read, the node
-- copy looked up) costs about 0.1 s of a node's time, as much as a short
-- run, so short runs are packed several to a task; four tasks per slot
-- keep every slot busy until the end.
M.TASKS_PER_SLOT = 4

-- M.pack(names, per, tasks, limits [, slots]) -> {tasks = {{run names}, ...},
-- note=}: the runs dealt round-robin over the array tasks.  By default one
-- task per `per` runs, but no more than TASKS_PER_SLOT per slot (tasks the
-- partition can run at once, when known); never more tasks than the array
-- may have (MaxArraySize: indices 0..MaxArraySize-1) or than the controller
-- takes jobs (MaxJobCount, every array task a job once it runs), nor more
-- than runs: a task then runs several runs, one after another (or `per` at
-- once).  A tasks= over the limits is cut to them, with a note saying so.
function M.pack(names, per, tasks, limits, slots)
  per = per or 1
  limits = limits or M.DEFAULT_LIMITS
  local cap = math.min(limits.max_array_size, limits.max_job_count)
  local want = tasks or math.ceil(#names / per)
  if not tasks and slots and slots > 0 then want = math.min(want, slots * M.TASKS_PER_SLOT) end
  local n = math.max(1, math.min(want, cap, #names))
  local note
  if tasks and tasks > cap then
    note = string.format("slurm={tasks=%d} is over this cluster's limit of %d array tasks (MaxArraySize %d, " ..
                         "MaxJobCount %d): %d tasks, each running about %d runs", tasks, cap,
                         limits.max_array_size, limits.max_job_count, n, math.ceil(#names / n))
  end
  local out = {}
  for t = 1, n do out[t] = json.array {} end
  for i, name in ipairs(names) do
    local t = (i - 1) % n + 1
    local list = out[t]
    list[#list + 1] = name
  end
  return { tasks = out, note = note }
end

-- M.slots(text, partition, per, max_running) -> n or nil: how many array
-- tasks of `per` CPUs the partition runs at once, from `sinfo -h -o "%P %C"`
-- ("debug* 0/6/0/6": the default partition starred, CPUs
-- allocated/idle/other/total; a partition may have several lines), at most
-- max_running; nil when the text does not say.
function M.slots(text, partition, per, max_running)
  local cpus
  for name, total in (text or ""):gmatch("(%S+)%s+%d+/%d+/%d+/(%d+)") do
    local default = name:sub(-1) == "*"
    name = name:gsub("%*$", "")
    if (partition and name == partition) or (not partition and default) then
      cpus = (cpus or 0) + tonumber(total)
    end
  end
  if not cpus or cpus == 0 then return nil end
  local n = math.max(1, cpus // (per or 1))
  if max_running then n = math.min(n, max_running) end
  return n
end

-- The array tasks the partition runs at once (nil when sinfo cannot say).
local function cluster_slots(sopts)
  local ok, st = pcall(run_mod.run, { "sinfo", "-h", "-o", "%P %C" }, { command = "qemu.sweep", timeout = 20 })
  if not ok and errors.is(st, "Interrupted") then error(st, 0) end
  if not ok or st.code ~= 0 then return nil end
  return M.slots(st.stdout, sopts.partition, sopts.tasks_per_node, sopts.max_running)
end

local function script_argv()
  local script = arg and arg[0]
  if not script or script == "" or script == "-" then
    check.bad("qemu.sweep", "engine=\"slurm\" runs the script again in every task: use `qshell run FILE`")
  end
  local self = sys.realpath("/proc/self/exe")
  local args = {}
  for i = 1, #arg do args[i] = arg[i] end
  return self, sys.realpath(script) or script, args
end

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function roots_of(sopts)
  local sh = sopts.shared
  if sh == nil then return nil end
  local list = type(sh) == "string" and { sh } or sh
  local out = {}
  for i, p in ipairs(list) do
    if type(p) ~= "string" or not p:match("^/") then
      check.bad("qemu.sweep", "slurm shared[%d] must be an absolute path (the shared directory as a node sees it)", i)
    end
    out[i] = p:gsub("/+$", "")
  end
  if #out == 0 then check.bad("qemu.sweep", "slurm shared= names no directory") end
  if not fs.is_dir(out[1]) then
    check.bad("qemu.sweep", "slurm shared[1]=%s: the shared directory as this machine sees it does not exist", out[1])
  end
  out[1] = sys.realpath(out[1])
  return out
end

-- A path under the shared root as {rel=} (found on each node), else {abs=}.
local function place(roots, path)
  local real = sys.realpath(path) or fs.abspath(path)
  if roots and roots[1] and (real == roots[1] or real:sub(1, #roots[1] + 1) == roots[1] .. "/") then
    return { rel = real:sub(#roots[1] + 2) }, real
  end
  return { abs = real }, real
end

-- Check the options before anything runs (qemu.sweep calls it first).
function M.check(spec, fname)
  check.options(fname .. " slurm", spec.slurm, slurm_opts)
  local sopts = spec.slurm or {}
  if sopts.sbatch then
    for i, a in ipairs(sopts.sbatch) do
      if type(a) ~= "string" or not a:match("^%-") then
        check.bad(fname, "slurm sbatch[%d] must be an option for sbatch (starting with -), got %s", i, tostring(a))
      end
      if a:match("^%-%-array") or a:match("^%-%-wait") or a:match("^%-%-output") then
        check.bad(fname, "slurm sbatch: %s is set by qshell itself", a)
      end
    end
  end
  if spec.workers then
    check.bad(fname, "workers= is for the local engine; under Slurm the array tasks are the workers " ..
                     "(slurm={tasks=N}, and tasks_per_node=K runs K at once in each)")
  end
  if spec.timeout then
    check.bad(fname, "timeout= is not enforced per run under Slurm; give the tasks a time limit (slurm={time=\"1:00:00\"})")
  end
  if not spec.out and not sopts.dir then
    check.bad(fname, "the Slurm engine needs out= (or slurm={dir=}) on a path every node sees")
  end
  roots_of(sopts)
  if not run_mod.which("sbatch") then
    errors.raise { class = "SlurmError", command = fname, desc = "sbatch is not on PATH",
                   hint = "install slurm-client (or run with engine=\"local\")" }
  end
end

-- The job dir: slurm.dir, or OUT.slurm beside out (with shared=, that
-- must be under the shared directory).
local function job_root(spec)
  local sopts = spec.slurm or {}
  local roots = roots_of(sopts)
  local dir = sopts.dir or (spec.out .. ".slurm")
  if roots then
    local pl, real = place(roots, fs.abspath(dir))
    if not pl.rel then
      check.bad("qemu.sweep", "the job dir %s is not under the shared directory %s: the nodes cannot see it " ..
                              "(put out= there, or give slurm={dir=} there)", real, roots[1])
    end
  end
  return dir
end

-- Where a checkpoint made for the tasks goes (from a savevm tag): the job
-- dir, which every node sees.
function M.shared_dir(spec)
  return job_root(spec)
end

-- Why the runs of a task that reported nothing did not run.
local function reason_for(t, last, sopts, dir, sberr, roots)
  local log = string.format("%s/task-%d.log", dir, t)
  local tail = fs.read(log)
  local s = last and last.state
  if not tail and roots and #roots > 1 and s ~= "TIMEOUT" and s ~= "CANCELLED" then
    return string.format("the Slurm task %d left no log: on %s it found the job under none of the shared paths %s",
                         t, tostring(last and last.node or "its node"), table.concat(roots, ", "))
  end
  tail = tail or ""
  if s == "TIMEOUT" or tail:find("DUE TO TIME LIMIT", 1, true) then
    return string.format("timed out: the Slurm task %d ran out of its time limit (time=%s) before this run " ..
                         "finished; see %s", t, tostring(sopts.time or "the partition's"), log)
  end
  if s == "NODE_FAIL" then
    return string.format("the node %s failed while Slurm task %d ran (not requeued); see %s", tostring(last.node), t, log)
  end
  if s == "OUT_OF_MEMORY" then
    return string.format("the Slurm task %d ran out of memory (mem=%s); see %s", t, tostring(sopts.mem), log)
  end
  if s == "CANCELLED" then
    return string.format("the Slurm task %d was cancelled; see %s", t, log)
  end
  return string.format("the Slurm task %d ended without a result (%s%s); see %s", t, s and ("state " .. s) or "sbatch",
                       sberr ~= "" and (": " .. sberr) or "", log)
end

local function write_job_script(sub, roots, self, script, args, separate_log, cwd)
  local rel = sub.place
  local lines = { "#!/bin/sh", "# a qshell sweep task: the script again, with this task's share" }
  if rel.rel then
    local cands = {}
    for i, r in ipairs(roots) do cands[i] = sh_quote(r) end
    lines[#lines + 1] = "job= root="
    lines[#lines + 1] = "for r in " .. table.concat(cands, " ") .. "; do"
    lines[#lines + 1] = "  if [ -f \"$r/\"" .. sh_quote(rel.rel) .. "/plan.json ]; then root=$r; job=$r/" ..
                        sh_quote(rel.rel) .. "; break; fi"
    lines[#lines + 1] = "done"
    lines[#lines + 1] = "if [ -z \"$job\" ]; then"
    lines[#lines + 1] = "  echo \"qshell sweep task: none of " .. table.concat(roots, " "):gsub('"', "") ..
                        " holds the job on $(hostname)\" >&2; exit 1"
    lines[#lines + 1] = "fi"
  else
    lines[#lines + 1] = "job=" .. sh_quote(rel.abs) .. " root="
  end
  if separate_log then
    lines[#lines + 1] = "exec >>\"$job/task-$SLURM_ARRAY_TASK_ID.log\" 2>&1"
  end
  -- The script runs where it was submitted from (its relative paths), as
  -- this node sees that directory; else in the job dir.
  local cp = place(roots, cwd)
  if cp.rel then
    lines[#lines + 1] = "cd \"$root/\"" .. sh_quote(cp.rel) .. " 2>/dev/null || cd \"$job\" || exit 1"
  else
    lines[#lines + 1] = "cd " .. sh_quote(cp.abs) .. " 2>/dev/null || cd \"$job\" || exit 1"
  end
  lines[#lines + 1] = "[ -d \"${TMPDIR:-/tmp}\" ] || TMPDIR=/tmp"
  lines[#lines + 1] = "QSHELL_SWEEP_JOB=$job QSHELL_SWEEP_ROOT=$root QSHELL_SWEEP_ENGINE=slurm TMPDIR=${TMPDIR:-/tmp}"
  lines[#lines + 1] = "export QSHELL_SWEEP_JOB QSHELL_SWEEP_ROOT QSHELL_SWEEP_ENGINE TMPDIR"
  lines[#lines + 1] = "q=" .. sh_quote(self) .. "; [ -x \"$q\" ] || q=qshell"
  local sp = place(roots, script)
  local script_word = sp.rel and ("\"$root/\"" .. sh_quote(sp.rel)) or sh_quote(sp.abs)
  local words = {}
  for i, a in ipairs(args) do words[i] = sh_quote(a) end
  lines[#lines + 1] = "exec \"$q\" run " .. script_word .. (#words > 0 and (" " .. table.concat(words, " ")) or "")
  fs.write(sub.dir .. "/job.sh", table.concat(lines, "\n") .. "\n", "qemu.sweep")
  run_mod.check({ "chmod", "0755", sub.dir .. "/job.sh" }, { command = "qemu.sweep" })
end

-- The submitting side.
function M.run(j)
  local fname, spec, tally, todo = j.fname, j.spec, j.tally, j.todo
  local sopts = spec.slurm or {}
  local roots = roots_of(sopts)
  local self, script, args = script_argv()
  local root = job_root(spec)
  fs.mkdir_p(root, fname)
  root = sys.realpath(root)
  local progress = host.progress("sweep", { enabled = spec.progress })
  local byrun = {}
  for _, r in ipairs(todo) do byrun[r.run] = r end
  local seen = {}
  local nodes = {} -- where tasks ran: squeue's view and the results' hosts
  local function take(res)
    local r = byrun[res.run]
    if r and not seen[res.run] then
      seen[res.run] = true
      res.i = r.i
      if res.host then nodes[res.host] = true end
      tally:record(res)
    end
  end

  -- Earlier submissions: with resume, what they wrote is gathered (and a
  -- job of theirs still running is waited for); without, they must be over.
  local offsets = {}
  for _, sub in ipairs(jobs.submissions(root)) do
    local jobid = sub.info.jobid
    if jobs.submitter_alive(sub.info) then
      errors.raise { class = "SlurmError", command = fname,
                     desc = string.format("the qshell that submitted %s (pid %d) is still gathering its results",
                                          sub.dir, sub.info.pid),
                     hint = "two submitters would write the same rows: wait for it, or stop it and resume" }
    end
    local active = jobid and jobs.job_active(jobid)
    if not j.resume then
      if active then
        errors.raise { class = "SlurmError", command = fname,
                       desc = string.format("the Slurm job %s of an earlier submission of this sweep (%s) still runs",
                                            jobid, sub.dir),
                       hint = "resume=true (or qshell sweep --slurm --resume) gathers it and does the rest; or scancel " .. jobid }
      end
      run_mod.check({ "rm", "-rf", sub.dir }, { command = fname })
    else
      if active then
        io.stderr:write(string.format("qshell: the Slurm job %s of an earlier submission still runs: gathering it first\n", jobid))
        local sub_plan = json.decode(fs.read(sub.dir .. "/plan.json") or "{}") or {}
        local sub_sizes = {}
        for t, list in ipairs(sub_plan.tasks or {}) do sub_sizes[t] = #list end
        repeat
          jobs.gather_dir(sub.dir, sub.info.ntasks or 0, offsets, take, sub_sizes)
          progress:show(string.format("slurm: job %s (earlier): %d/%d done", jobid, tally:done(), #j.runs))
          local okw, _, code = sys.sleep(2)
          if not okw and code == "interrupted" then
            progress:clear()
            errors.raise { class = "Interrupted", command = fname,
                           desc = "interrupted while gathering the earlier Slurm job " .. jobid .. " (it goes on)" }
          end
        until not jobs.job_active(jobid)
      end
      jobs.gather_dir(sub.dir, sub.info.ntasks or 0, offsets, take)
    end
  end
  local rest = {}
  for _, r in ipairs(todo) do if not seen[r.run] then rest[#rest + 1] = r end end
  if #rest == 0 then
    progress:done()
    return { job = root, collected = #todo }
  end

  -- This submission.
  local n = 1
  for _, sub in ipairs(jobs.submissions(root)) do n = math.max(n, sub.n + 1) end
  local sub = { dir = root .. "/" .. n }
  fs.mkdir_p(sub.dir, fname)
  sub.place = place(roots, sub.dir)
  local ckpt_place, ckpt_real = place(roots, j.source.checkpoint)
  if roots and not ckpt_place.rel then
    check.bad(fname, "the checkpoint %s is not under the shared directory %s: the nodes cannot see it " ..
                     "(make it there, e.g. vm:checkpoint(%q))", ckpt_real, roots[1], roots[1] .. "/warm.ckpt")
  end
  local per = sopts.tasks_per_node or 1
  local names = {}
  for i, r in ipairs(rest) do names[i] = r.run end
  local limits = cluster_limits()
  local packed = M.pack(names, per, sopts.tasks, limits, not sopts.tasks and cluster_slots(sopts) or nil)
  if packed.note then io.stderr:write("qshell: " .. packed.note .. "\n") end
  local ntasks = #packed.tasks
  local sizes = {}
  for t, list in ipairs(packed.tasks) do sizes[t] = #list end
  local plan = { checkpoint = ckpt_place, checkpoint_shown = ckpt_real, from_tag = j.source.from_tag,
                 tag = j.source.tag, roots = roots or json.array {}, tasks_per_node = per, tasks = packed.tasks,
                 script = provenance.script(spec), limits = limits, stage = sopts.stage == nil and "node" or sopts.stage,
                 stage_dir = sopts.stage_dir, stage_keep = sopts.stage_keep }
  fs.write(sub.dir .. "/plan.json", json.encode(plan), fname)
  local separate_log = roots and #roots > 1
  write_job_script(sub, roots or {}, self, script, args, separate_log, sys.realpath(".") or ".")

  local sb = { "sbatch", "--wait", "--parsable", "--job-name=qshell-sweep",
               string.format("--array=0-%d%s", ntasks - 1, sopts.max_running and ("%" .. sopts.max_running) or ""),
               "--output=" .. (separate_log and "/dev/null" or (sub.dir .. "/task-%a.log")),
               "--chdir=" .. (separate_log and "/tmp" or sub.dir),
               sopts.requeue == false and "--no-requeue" or "--requeue" }
  if per > 1 then
    sb[#sb + 1] = "--nodes=1"
    sb[#sb + 1] = "--ntasks-per-node=" .. per
  end
  if sopts.partition then sb[#sb + 1] = "--partition=" .. sopts.partition end
  if sopts.account then sb[#sb + 1] = "--account=" .. sopts.account end
  if sopts.qos then sb[#sb + 1] = "--qos=" .. sopts.qos end
  if sopts.time then sb[#sb + 1] = "--time=" .. sopts.time end
  if sopts.mem then sb[#sb + 1] = "--mem=" .. sopts.mem end
  for _, a in ipairs(sopts.sbatch or {}) do sb[#sb + 1] = a end
  sb[#sb + 1] = sub.dir .. "/job.sh"
  local info = { ntasks = ntasks, runs = #rest, sbatch = sb, submitted = provenance.now_text(),
                 submitter = provenance.host(), pid = sys.getpid() }
  fs.write(sub.dir .. "/submission.json", json.encode(info), fname)
  local p, perr, pcode = core.new("qshell-run")
  if not p then errors.from_code(fname, perr, pcode) end
  local ok, err, code = p:spawn(sb, 0, p:tmpdir() .. "/sbatch.out")
  if not ok then
    p:close()
    -- sbatch not started is a job not submitted (an interrupted spawn stays Interrupted)
    errors.from_code(fname, err, code, { overrides = { io = "SlurmError", exec = "SlurmError" } })
  end

  -- Gather while the array runs; watch the tasks' states and nodes.
  local jobid
  local last = {}
  local next_poll = 0
  local function poll_states()
    if not jobid then
      jobid = (fs.read(p:tmpdir() .. "/sbatch.out") or ""):match("^(%d+)")
      if jobid then
        info.jobid = jobid
        fs.write(sub.dir .. "/submission.json", json.encode(info), fname)
      end
    end
    if jobid and sys.now() >= next_poll then
      next_poll = sys.now() + 2
      for idx, s in pairs(jobs.job_states(jobid) or {}) do
        last[idx] = s
        if s.node and s.state == "RUNNING" then nodes[s.node] = true end
      end
    end
  end
  local function show()
    local lastrun = tally:last_text(50)
    local names = {}
    for k in pairs(nodes) do names[#names + 1] = k end
    table.sort(names)
    progress:show(string.format("slurm job %s: %d/%d done, %d failed, %s%s%s", jobid or "?", tally:done(), #j.runs,
                                tally.failed, host.fmt_time(progress:elapsed()),
                                #names > 0 and (", nodes " .. table.concat(names, ",")) or "",
                                lastrun and (" | last: " .. lastrun) or ""))
  end
  -- Any error here (Ctrl-C, squeue failing for good) cancels the job: no
  -- job is left running that no submitter gathers.
  local st, sberr
  local okl, lerr = pcall(function()
    while true do
      st = p:poll()
      poll_states()
      jobs.gather_dir(sub.dir, ntasks, offsets, take, sizes)
      show()
      if st then break end
      local okw, _, code = sys.sleep(0.5)
      if not okw and code == "interrupted" then error({ interrupted = true }, 0) end
    end
    sberr = (p:log_tail(2000):gsub("%s+$", ""))
    if not jobid then
      errors.raise { class = "SlurmError", command = fname,
                     desc = string.format("sbatch %s without submitting the job: %s", st.desc,
                                          sberr ~= "" and sberr or "(no message)"),
                     hint = "the sbatch command is in " .. sub.dir .. "/submission.json" }
    end
    -- sbatch --wait can end before the job does (it lost the controller,
    -- say): gather until Slurm says the job is over.
    while jobs.job_active(jobid) do
      jobs.gather_dir(sub.dir, ntasks, offsets, take, sizes)
      show()
      local okw, _, code = sys.sleep(2)
      if not okw and code == "interrupted" then error({ interrupted = true }, 0) end
    end
  end)
  if not okl then
    if jobid and run_mod.which("scancel") then pcall(run_mod.run, { "scancel", jobid }) end
    p:kill()
    p:close()
    progress:clear()
    local sig = type(lerr) == "table" and lerr.interrupted or tostring(lerr):find("interrupted!$")
                or tostring(lerr):find("terminated by signal %d+$")
    if sig then
      errors.raise { class = "Interrupted", command = fname,
                     desc = "interrupted; the Slurm job " .. tostring(jobid) .. " was cancelled; the results so far are in " ..
                            tostring(spec.out), hint = "run it again with resume=true to do the rest" }
    end
    error(lerr, 0)
  end
  p:close()
  next_poll = 0
  poll_states()
  jobs.gather_dir(sub.dir, ntasks, offsets, take, sizes)
  -- the accounting's final word, where the cluster keeps one
  last = jobs.final_states(jobid, ntasks, last)
  progress:done()
  -- Runs no task reported: failed, with the reason Slurm gives.
  local tasks = {}
  for t = 0, ntasks - 1 do
    tasks[t + 1] = { index = t, state = last[t] and last[t].state, node = last[t] and last[t].node }
  end
  for i, r in ipairs(rest) do
    if not seen[r.run] then
      local t = (i - 1) % ntasks
      seen[r.run] = true
      tally:record { i = r.i, status = "failed", wall_s = 0, host = last[t] and last[t].node,
                     error = reason_for(t, last[t], sopts, sub.dir, sberr, roots) }
    end
  end
  info.tasks = tasks
  fs.write(sub.dir .. "/submission.json", json.encode(info), fname)
  local nodelist = {}
  for k in pairs(nodes) do nodelist[#nodelist + 1] = k end
  table.sort(nodelist)
  return { job = sub.dir, jobid = jobid, tasks = tasks, nodes = nodelist }
end

return M
