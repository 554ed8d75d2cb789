-- qemu.sweep: many runs from one saved state, in parallel, results in one
-- table.
--
--   qemu.sweep{ from = "warm.ckpt", matrix = {size = {1, 10}, limit = {1e8, 1e9}}, repeat = 2,
--               launch = function(p) return {plugins = {{name="insn", args={limit=p.limit}}}} end,
--               run = function(vm, p) ... return {metric = ...} end,
--               workers = 2, out = "results.csv", resume = true }
--
-- The parts, each in its own file under stdlib/qemu/sweep/:
--   plan.lua     the matrix expanded into runs with stable names
--   source.lua   from= resolved to a checkpoint
--   runner.lua   one run: launch from the checkpoint, the run function, its metrics
--   provenance.lua  what produced a row (QEMU, machine, checkpoint, plugins, script)
--   rerun.lua    one row run again from what it records
--   local.lua    the local engine (forked workers)
--   slurm.lua    the Slurm engine (a job array)
-- The results file (CSV/JSONL writer, reader, formatter) and the tally are
-- qemu.results.file (stdlib/qemu/results/file.lua).
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
  return require("qemu.sweep.slurm_jobs").status(path)
end

local ENGINES = { ["local"] = "qemu.sweep.local", slurm = "qemu.sweep.slurm" }

local sweep_opts = {
  from = "string", launch = "table|function", matrix = "table", ["repeat"] = check.positive,
  run = "function", workers = check.positive, out = "string", resume = "boolean",
  timeout = check.positive, engine = "string", progress = "boolean", slurm = "table", record = "boolean",
}

---@api qemu.sweep qemu.sweep{from=, run= [, matrix=, repeat=, launch=, out=, resume=, workers=, timeout=, engine=, progress=, record=, slurm=]} -> summary
--- Run a function on many VMs restored from one saved state, over a matrix of parameters, in parallel, and record each run's metrics.
---
--- Every run starts from the same state with `qemu.launch{restore=...}` in
--- its own fresh overlays, so parallel runs never write the same image, and
--- plugins and their arguments may differ per run. All the runs share the
--- checkpoint's RAM (see `qemu.checkpoint.sharing`): a node runs as many at
--- once as its cores allow, not as its memory allows. Workers are forked
--- copies of the shell, so `run` is used as it is, closures included. A
--- worker starts its next run's VM while the current run goes on, restored
--- paused (not one guest instruction runs) and continued when its run
--- begins: a run starts from exactly the checkpoint's state, with QEMU's
--- start-up out of the way (the last runs of a sweep go one at a time to
--- whichever worker is free).
---
--- The runs: every combination of the matrix's values (axes in the order of
--- their names, values in the order given, repeats innermost), each
--- `repeat` times. A run is named by its parameters and repeat, e.g.
--- `plugin=insn;size=1000#2` (a whole float is written without `.0`), in
--- the results file's `run` column; `resume` uses that name to tell which
--- runs are done, whatever order the matrix was written in. A run whose
--- function raises, that exceeds `timeout` (its worker is killed, and its
--- QEMU with it), whose QEMU is killed or whose worker dies is recorded as
--- failed with the cause, and the sweep goes on. On a terminal a progress
--- line shows done/failed/total, running, elapsed, an ETA and the last run.
---
--- The results file `out` gets one whole line per finished run, appended as
--- runs finish: `run`, `repeat`, the parameters, `status` (`ok` or
--- `failed`), `wall_s` (seconds), `error`, `host` (where it ran), `started`
--- (UTC, ISO 8601), `prov` (the id of its setup), then the metrics (a metric
--- first seen in a later run widens the CSV header). A run whose VM had the `insn`
--- plugin adds `roi<ID>_insns` per region of interest (QEMU is ended after
--- `run` returns if `run` left it running: the plugin writes its result at
--- exit). A sweep holds an exclusive lock on `out` (`flock(2)` on the file
--- `out.lock`, which names its holder and is removed when the sweep ends)
--- for its whole life, so a second sweep on the same file is refused; a
--- lock left by a sweep that died on this host is taken over, with a note
--- on stderr; one from another host is refused, since a shared file system
--- may not carry locks between hosts (remove `out.lock` once that sweep is
--- over). A write that fails
--- part way (a full disk) is cut off again, so the file only ever holds
--- whole rows. `qemu.results.read` and `qshell results` read the file.
---
--- Provenance: a run's setup is the qshell version, the QEMU version and
--- binary, the machine type QEMU resolved, accel and icount, the checkpoint
--- (path and the SHA-256 of its manifest) or the savevm tag it was made
--- from, the plugins with their arguments, and the script (path, SHA-256,
--- arguments, working directory) and the file of the `run` function. `prov`
--- is a 12-hex-digit hash of the setup: a changed QEMU, checkpoint or script
--- shows as a new id. The setups are kept in the sidecar beside `out`
--- (`results.csv` -> `results.provenance.json`: `{provenance={id=provenance},
--- sweep={total=, params=, started=}}`, replaced whole, never edited); JSONL
--- rows also carry their whole setup as `provenance`.
--- `qemu.sweep.rerun` runs a row again from it.
---
--- Under the Slurm engine (`engine="slurm"`, or `qshell sweep --slurm
--- script.lua`) the runs are one job array, gathered into `out` as they
--- arrive: each array task runs the same script with the same qshell (in
--- the directory it was submitted from as its node sees it, else in the job
--- dir) up to this call, runs its share of the runs and ends there (keep a
--- warm-up in a script of its own). The job dir (`out.slurm`, or
--- `slurm.dir`) and the checkpoint must be on a file system every node
--- sees; qshell and QEMU must be installed on the nodes. A node that fails
--- has its task requeued: the task skips the runs its result file has, so
--- none is lost or written twice; runs no task reported are recorded as
--- failed with Slurm's reason (time limit, node failure, out of memory,
--- cancelled). Each submission is a numbered directory in the job dir; if
--- the submitting qshell is killed the job goes on, and `resume=true`
--- first gathers what earlier submissions wrote (waiting for a job still
--- running), then submits only the runs still missing. Ctrl-C cancels the
--- job (`scancel`) and keeps the results so far. `qemu.sweep.slurm_status`
--- shows the tasks.
---
--- Under `qemu.sweep.rerun` (`qshell sweep --rerun`) the call that wrote
--- the results file runs the one run asked for and ends the script; other
--- sweeps of the script do nothing.
---
---     local r = qemu.sweep {
---       from = "warm.ckpt",                      -- a checkpoint dir, or a savevm tag held by launch.disks
---       matrix = { size = { 1000, 100000 }, plugin = { "off", "insn" } },
---       ["repeat"] = 3,                          -- every combination 3 times
---       launch = function(p)                     -- or a table; restore= is added
---         return { plugins = p.plugin == "insn" and { { name = "insn" } } or nil }
---       end,
---       run = function(vm, p)                    -- returns metrics: name = number|string|boolean
---         local t = qemu.now()
---         vm.console:run("./bench " .. p.size)
---         return { seconds = qemu.now() - t }
---       end,
---       workers = 2,                             -- default: the number of cores
---       out = "results.csv",                     -- or "results.jsonl"
---       resume = true,                           -- skip the runs already in out
---       timeout = 600,                           -- per run
---     }
---     print(r.ok, r.failed, r.skipped)
---
---@param spec table  the sweep; `from=` and `run=` are required:
---   `from=` string: a checkpoint directory (from `vm:checkpoint`), or the tag of an
---   internal snapshot (savevm) held by the disks `launch` gives: the tag is made into a
---   checkpoint once, from copies of those images (the images stay as they are), in this
---   shell's temp dir (under Slurm in the job dir), and the runs' `disks=` and `loadvm=`
---   are dropped (a `launch` function is called with `{}` to find the disks);
---   `run=` function(vm, params) -> metrics: the run; `vm` is the run's VM (closed after
---   it), `params` the run's parameters; it returns a table of metrics, name = number,
---   string or boolean (a single value is recorded as the metric `value`; nil: none); a
---   metric may not take a column's name (run, repeat, status, wall_s, error, host,
---   started, prov, provenance);
---   `matrix=` table (default {}: one run): parameter name -> list of values, at least
---   one each; names are identifiers other than the columns above;
---   `repeat=` integer (default 1): how many times each combination runs (write it
---   `["repeat"]`: repeat is a Lua keyword);
---   `launch=` table or function(params) -> table (default {}): the `qemu.launch`
---   options of a run (plugins, icount, binary, net forwards, ...); `restore=` is added;
---   an option that changes the machine fails the runs, as `qemu.launch{restore=}`
---   refuses it;
---   `out=` string (default: none, the results are only returned): the results file,
---   JSONL when its name ends in `.jsonl` (or `.json`), else CSV; missing directories
---   are made;
---   `resume=` boolean (default false; `qshell sweep --resume` sets it for every sweep
---   of the script): continue into an existing `out`, skipping the runs it has; without
---   it an `out` that holds results is refused, and so is one whose columns are another
---   sweep's;
---   `workers=` number (default: the CPUs this process may run on, at most the runs to
---   do; local engine only): how many runs go at once;
---   `timeout=` number (default: none; local engine only): seconds a run may take, its
---   VM's start included; a run over it is recorded as failed ("timed out after N s");
---   `engine=` string (default `$QSHELL_SWEEP_ENGINE`, which `qshell sweep --slurm` or
---   `--local` sets, else "local"): "local" (forked workers) or "slurm" (a job array);
---   `progress=` boolean (default true): the progress line on stderr when it is a
---   terminal; false for none;
---   `record=` boolean (default false; local engine, needs `out=`): record every run
---   (`qemu.launch{record=}`) into `OUT.rr/run-N` (N the run's number in the matrix; a
---   resumed sweep records a retried run anew); the row gets `recording` (the directory)
---   and `record_bytes` (its size); `qshell sweep --rerun OUT ROW --replay` replays it;
---   `slurm=` table (default {}): the Slurm engine's options, each checked (an unknown name
---   is an error); under Slurm `workers=` and `timeout=` are refused (the array tasks are
---   the workers; `slurm.time` is the limit) and `out=` (or `slurm.dir`) is required:
---   `slurm.tasks=` integer (default: the runs to do / tasks_per_node, rounded up, never
---   more than the runs): the array tasks (`--array=0-(N-1)`), the runs dealt round-robin;
---   never more than the cluster takes: the engine reads `MaxArraySize` and `MaxJobCount`
---   (`scontrol show config`; Slurm's defaults 1001 and 10000 when it cannot) and packs
---   the runs into at most that many tasks, each running its runs one after another, so
---   a sweep of any size runs at a cluster's defaults (a `tasks=` over the limit is cut to
---   it, with a note on stderr);
---   `slurm.tasks_per_node=` integer (default 1): each task takes one node and runs that
---   many runs at once (`--nodes=1 --ntasks-per-node=K`);
---   `slurm.max_running=` integer (default: no limit): at most that many array tasks at
---   once (`--array=...%M`);
---   `slurm.partition=`, `slurm.account=`, `slurm.qos=` string (default: Slurm's): names
---   passed as `--partition=`, `--account=`, `--qos=`;
---   `slurm.time=` string (default: the partition's): each array task's time limit
---   (`--time=`: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS);
---   `slurm.mem=` string (default: Slurm's): each array task's memory (`--mem=`, e.g.
---   "512M", "4G");
---   `slurm.requeue=` boolean (default true): a task whose node fails goes back to the
---   queue (`--requeue`; false: `--no-requeue`);
---   `slurm.stage=` "node" or false (default "node"): each node copies the checkpoint once
---   into its scratch and every run on it restores from that copy (the copy is checked
---   against the manifest as it is made; tasks starting at once on a node copy it once;
---   a later job finds it by the manifest's hash); false: every run reads the shared copy;
---   each copy made is a line in the job dir's `stage.log`;
---   `slurm.stage_dir=` string (default `$TMPDIR/qshell.stage` as the task sees it): where
---   a node keeps its copies (a node-local path that outlives a job keeps them between jobs);
---   `slurm.stage_keep=` integer (default 4 x the checkpoint's size): bytes of copies a node
---   keeps; beyond it the least recently used go, never one a running task uses;
---   `slurm.sbatch=` string[] (default {}): more sbatch options, passed as they are, each
---   starting with `-` (not `--array`, `--wait` or `--output`, which qshell sets);
---   `slurm.dir=` string (default: `out` .. ".slurm"): the job dir, a numbered directory
---   per submission in it (its plan, `job.sh`, `submission.json` with the sbatch command
---   and job id, a result file and a log per task);
---   `slurm.shared=` string or string[] of absolute paths (default: none, every node sees
---   the files at this machine's paths): the shared directory as this machine sees it
---   (it must exist), then the paths nodes may see it at; the job dir, the checkpoint and
---   the script are named relative to it and each task finds them under whichever path
---   holds them on its node, so the checkpoint and the job dir must be under it
---@return table summary  `{total=, ok=, failed=, skipped=, out=, checkpoint=, results=}`: the
---   runs of the matrix, those that succeeded and failed now, those skipped (already in
---   `out` on resume), `out`, the checkpoint the runs restored from (nil when no run was
---   left), and `results`, the runs done now in matrix order, each `{i=, run=, params=,
---   rep=, status=, metrics=, error=, wall_s=, host=, started=, prov=, provenance=}` (`run`
---   is the run's name, as in the file's `run` column; `rep` its `repeat`; `provenance`
---   its setup). With `out=` no row is held in memory while the sweep runs: `results` is
---   read back from `out` the first time it is used, its metrics as `qemu.results.read`
---   gives them. Under Slurm also `job=` (the submission's directory),
---   `jobid=`, `tasks=` (`{{index=, state=, node=}}`) and `nodes=` (the nodes that ran
---   tasks), or, when earlier submissions had every run, `job=` (the job dir) and
---   `collected=`
---@error BadArgument  `spec` is not a table, an unknown option or a wrong type, no `run=` or
---   `from=`, a bad matrix (a name that is not an identifier or is a column's, an empty axis),
---   a `repeat` that is not whole, an unknown engine, a savevm tag without `launch.disks`, an
---   `out` whose columns are another sweep's or that holds a line that is not a result; under
---   Slurm: a bad `slurm` option, `workers=` or `timeout=` given, no `out=`, a script that is
---   not a file (`qshell -e`), a checkpoint or job dir not under `slurm.shared`
---@error NotACheckpoint  `from` is a directory that is not a checkpoint, or a path (with a
---   `/`) that is no directory
---@error SnapshotNotFound  `from` is a tag the disks do not hold
---@error FileExists  `out` holds results and `resume` is not set
---@error ResultsBusy  another sweep writes `out` (the holder is named: pid, host, start time,
---   command line)
---@error BadResults  a line of the `out` being resumed is too long or nested too deep to read
---@error IOError  a result could not be appended to `out` (a full disk): the sweep stops, the
---   rows before are whole, and `resume=true` does the rest
---@error Interrupted  Ctrl-C: the workers are stopped and every QEMU reaped (under Slurm the
---   job is cancelled); the results so far are kept, `resume=true` does the rest
---@error SlurmError  sbatch is not on PATH or could not submit the job (sbatch's own words),
---   a job of an earlier submission still runs (without `resume`), its submitter is still
---   gathering, or squeue keeps failing
---@error CheckpointFailed  making the checkpoint of a savevm tag failed
function M.sweep(spec)
  local fname = "qemu.sweep"
  check.arg(fname, 1, spec, "table")
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
  if spec.record and not spec.out then
    check.bad(fname, "record=true keeps each run's recording beside the results (OUT.rr/run-N): give out=")
  end
  if spec.record and engine_name ~= "local" then
    check.bad(fname, "record=true runs under the local engine (engine=\"%s\" given)", engine_name)
  end
  local runs, names = plan.expand(matrix, reps)
  -- Rerunning one row (qemu.sweep.rerun runs the script again): that run only.
  local rerun_run = os.getenv("QSHELL_SWEEP_RERUN")
  if rerun_run and rerun_run ~= "" then
    return require("qemu.sweep.rerun").task(spec, runs, rerun_run, fname)
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
    local tally = results.tally(runs, out, skipped,
                                src and function(r) return runner.provenance(spec, src, r.params) end)
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
    local summary = { total = #runs, ok = tally.ok, failed = tally.failed, skipped = skipped, out = spec.out,
                      checkpoint = src and src.checkpoint }
    if tally.keep then
      summary.results = tally:results()
    else
      -- read back from out= when first used: nothing of a row stays in memory
      setmetatable(summary, { __index = function(t, k)
        if k ~= "results" then return nil end
        local list = tally:results()
        rawset(t, "results", list)
        return list
      end })
    end
    return summary, extra
  end)
  -- The results file is free for the next writer, whatever happened.
  if out then out:close() end
  if not ok then error(summary, 0) end
  for k, v in pairs(extra) do summary[k] = v end
  return summary
end

return M
