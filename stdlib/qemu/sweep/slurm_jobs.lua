-- qemu.sweep.slurm_jobs: what Slurm and the job dir say about a Slurm
-- sweep's job: the tasks' states (squeue while the controller knows the
-- job; sacct's final states where the cluster keeps accounting), the
-- submissions in the job dir and the result lines their tasks wrote, and
-- qemu.sweep.slurm_status / `qshell sweep --status`.  Read by the
-- submitting side (qemu.sweep.slurm) and by anyone who sees the job dir.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local json = require "qshell.json"
local sys = require "qshell.os"
local fs = require "qemu.util.fs"
local run_mod = require "qemu.util.run"
local provenance = require "qemu.sweep.provenance"
local results_file = require "qemu.results.file"

local M = {}

local SLEEP_STATES = { PENDING = true, CONFIGURING = true, REQUEUED = true, RESIZING = true, SUSPENDED = true }

-- squeue's view of one job: {[array index] = {state=, node=, reason=}}
-- ({} once Slurm has forgotten the job), or nil, why when squeue failed.
function M.job_states(jobid)
  local ok, st = pcall(run_mod.run, { "squeue", "-h", "-r", "-t", "all", "-j", jobid, "-o", "%K|%T|%N|%r" },
                       { timeout = 20 })
  if not ok then return nil, tostring(st) end
  if st.code ~= 0 then
    if (st.stderr .. st.stdout):find("Invalid job id") then return {} end
    return nil, (st.stderr:gsub("%s+$", ""))
  end
  local out = {}
  for line in st.stdout:gmatch("[^\n]+") do
    local idx, state, node, reason = line:match("^(%d+)|([^|]*)|([^|]*)|(.*)$")
    if idx then out[tonumber(idx)] = { state = state, node = node ~= "" and node or nil, reason = reason } end
  end
  return out
end

-- States sacct reports that are not final (the task may still change).
local UNSETTLED = { PENDING = true, RUNNING = true, REQUEUED = true, RESIZING = true, SUSPENDED = true,
                    CONFIGURING = true, COMPLETING = true }

-- M.sacct_states(text, ntasks) -> {[array index] = {state=, node=}}: the
-- lines of `sacct -n -P -X -j JOB --format=JobID,State,NodeList` (one per
-- task that started, "12_3|COMPLETED|node1"; tasks that never started share
-- one, "12_[4-9,11]|CANCELLED by 0|None assigned").  A task's own line wins
-- over a range that also names it.
function M.sacct_states(text, ntasks)
  local out, ranged = {}, {}
  for line in (text or ""):gmatch("[^\n]+") do
    local id, state, node = line:match("^%d+_([^|]+)|([^|]*)|(.*)$")
    if id then
      state = state:match("^(%S+)") or state
      node = (node ~= "" and node ~= "None assigned") and node or nil
      if id:match("^%d+$") then
        out[tonumber(id)] = { state = state, node = node }
      elseif id:match("^%[.*%]$") then
        for part in id:sub(2, -2):gmatch("[^,]+") do
          local a, b = part:match("^(%d+)%-(%d+)$")
          a, b = tonumber(a or part:match("^(%d+)$")), tonumber(b or a or part:match("^(%d+)$"))
          if a then
            for k = a, math.min(b, (ntasks or b + 1) - 1) do ranged[k] = { state = state } end
          end
        end
      end
    end
  end
  for k, v in pairs(ranged) do out[k] = out[k] or v end
  return out
end

-- The tasks' states from Slurm's accounting, which outlives squeue's memory
-- of a job (MinJobAge): {[array index] = {state=, node=}}, or nil when the
-- cluster keeps no accounting ("accounting storage is disabled") or sacct
-- is not there.
function M.accounted_states(jobid, ntasks)
  if not run_mod.which("sacct") then return nil end
  local ok, st = pcall(run_mod.run, { "env", "SLURM_BITSTR_LEN=0", "sacct", "-n", "-P", "-X", "-j", jobid,
                                      "--format=JobID,State,NodeList" }, { timeout = 20 })
  if not ok or st.code ~= 0 then return nil end
  return M.sacct_states(st.stdout, ntasks)
end

-- The final states of a job that is over: squeue's last view (`last`),
-- with what the accounting says where it has a final state.  sacct lags
-- the controller by a few seconds, so it is asked again (up to ~10 s)
-- while it still shows a task unsettled.
function M.final_states(jobid, ntasks, last)
  local acct
  for _ = 1, 6 do
    acct = M.accounted_states(jobid, ntasks)
    if not acct then return last end
    local settled = true
    for t = 0, ntasks - 1 do
      local a = acct[t]
      if a and UNSETTLED[a.state] then settled = false end
    end
    if settled then break end
    local okw, _, code = sys.sleep(2)
    if not okw and code == "interrupted" then break end
  end
  for t, a in pairs(acct) do
    if not UNSETTLED[a.state] then
      last[t] = { state = a.state, node = a.node or (last[t] and last[t].node), reason = last[t] and last[t].reason }
    end
  end
  return last
end

-- Is the job still queued or running?  Asks squeue again when it fails
-- (a busy controller), and raises when it keeps failing.
function M.job_active(jobid)
  local states, why
  for _ = 1, 5 do
    states, why = M.job_states(jobid)
    if states then break end
    sys.sleep(2)
  end
  if not states then
    errors.raise { class = "SlurmError", command = "qemu.sweep",
                   desc = "cannot ask Slurm about job " .. jobid .. ": " .. tostring(why) }
  end
  for _, s in pairs(states) do
    if SLEEP_STATES[s.state] or s.state == "RUNNING" or s.state == "COMPLETING" then return true end
  end
  return false
end

-- Is the qshell that submitted a submission still at it (on this machine)?
function M.submitter_alive(info)
  if not info.pid or info.submitter ~= provenance.host() or info.pid == sys.getpid() then return false end
  local stat = fs.first_line("/proc/" .. info.pid .. "/stat") or ""
  local comm, state = stat:match("^%d+ %((.-)%) (%a)")
  return comm ~= nil and comm:find("qshell", 1, true) ~= nil and state ~= "Z" and state ~= "X"
end

-- The submissions in a job dir, oldest first: {{n=, dir=, info=}}
function M.submissions(root)
  local subs = {}
  for _, name in ipairs(sys.listdir(root) or {}) do
    if name:match("^%d+$") and fs.is_file(root .. "/" .. name .. "/plan.json") then
      local info = json.decode(fs.read(root .. "/" .. name .. "/submission.json") or "{}")
      subs[#subs + 1] = { n = tonumber(name), dir = root .. "/" .. name, info = info }
    end
  end
  table.sort(subs, function(a, b) return a.n < b.n end)
  return subs
end

-- Read the results a submission's tasks wrote: calls take(res) for each
-- complete line not read before (offsets per file in `offsets`).  With
-- `sizes` (the runs of each task, 1-based) a task that reported them all is
-- not read again: a poll of a 1001-task array opens only the files still
-- growing.
function M.gather_dir(dir, ntasks, offsets, take, sizes)
  offsets.lines = offsets.lines or {}
  for t = 0, ntasks - 1 do
    local path = string.format("%s/task-%d.jsonl", dir, t)
    if sizes and (offsets.lines[path] or 0) >= (sizes[t + 1] or math.huge) then goto next end
    local from = offsets[path] or 0
    -- only what was appended since the last look
    local text = fs.read_from(path, from)
    local complete = text:match("^(.*\n)") or ""
    offsets[path] = from + #complete
    for line in complete:gmatch("([^\n]+)\n") do
      -- a line a dying node left half written (closed by the retry) is skipped
      local res = results_file.read_task_line(line)
      if res then
        offsets.lines[path] = (offsets.lines[path] or 0) + 1
        take(res, t)
      end
    end
    ::next::
  end
end


---@api qemu.sweep.slurm_status qemu.sweep.slurm_status(path) -> status
--- The progress of a Slurm sweep's latest submission: its array tasks, their state and node, and the runs they reported.
---
--- It reads the job dir (what the tasks wrote so far) and asks `squeue`
--- for the tasks' states; a job the controller has forgotten (after
--- `MinJobAge`) shows its final states from Slurm's accounting (`sacct`)
--- where the cluster keeps one, else the states recorded when its
--- submitter finished gathering (`done` for a task that reported all its
--- runs, `?` when nothing says). It works while the job
--- runs, from any machine that sees the job dir. `qshell sweep --status
--- results.csv` (or the job dir) prints `status.text`.
---
---     local st = qemu.sweep.slurm_status("/shared/me/results.csv")
---     print(st.jobid, st.reported .. "/" .. st.runs)
---     for _, t in ipairs(st.tasks) do print(t.index, t.state, t.node, t.reported) end
---
---@param path string  the sweep's results file (`out`: its job dir is `out.slurm`) or its job
---   dir
---@return table status  `{dir=, submission=, jobid=, runs=, reported=, ok=, failed=, tasks=,
---   text=}`: the job dir, the submission's number, the Slurm job id, the runs it submitted,
---   reported so far, and of those ok and failed; `tasks` a list of `{index=, state=, node=,
---   runs=, reported=, ok=, failed=}` per array task (`state` as squeue says, e.g. RUNNING,
---   PENDING, COMPLETED, TIMEOUT; `node` where it runs or ran); `text` a table of them to
---   print
---@error BadArgument  `path` is not a string, or neither it nor `path.slurm` is a Slurm sweep's
---   job dir
function M.status(path)
  local fname = "qemu.sweep.slurm_status"
  check.arg(fname, 1, path, "string")
  local root = path
  if not (fs.is_dir(root) and #M.submissions(root) > 0) then root = path .. ".slurm" end
  local subs = fs.is_dir(root) and M.submissions(root) or {}
  if #subs == 0 then
    check.bad(fname, "%s is not a Slurm sweep's job dir (nor a results file with one beside it)", path)
  end
  local sub = subs[#subs]
  local plan = json.decode(fs.slurp(sub.dir .. "/plan.json", fname))
  local jobid = sub.info.jobid
  local states = jobid and M.job_states(jobid) or {}
  if jobid and next(states) == nil then
    -- Slurm's controller forgot the job (MinJobAge): its accounting, where kept
    states = M.accounted_states(jobid, #plan.tasks) or {}
  end
  local out = { dir = root, submission = sub.n, jobid = jobid, tasks = {}, runs = 0, reported = 0, ok = 0, failed = 0 }
  local per = {}
  M.gather_dir(sub.dir, #plan.tasks, {}, function(res, t)
    local e = per[t] or { seen = {}, ok = 0, failed = 0, reported = 0, hosts = {} }
    per[t] = e
    if not e.seen[res.run] then
      e.seen[res.run] = true
      e.reported = e.reported + 1
      if res.status == "ok" then e.ok = e.ok + 1 else e.failed = e.failed + 1 end
      if res.host then e.hosts[res.host] = true end
    end
  end)
  local L = { string.format("Slurm sweep %s: submission %d, job %s, submitted %s from %s", root, sub.n,
                            tostring(jobid), tostring(sub.info.submitted), tostring(sub.info.submitter)),
              string.format("  %-5s %-12s %-12s %5s %9s %5s %7s", "task", "state", "node", "runs", "reported", "ok",
                            "failed") }
  for t = 0, #plan.tasks - 1 do
    local e = per[t] or { ok = 0, failed = 0, reported = 0, hosts = {} }
    local st = states[t] or (sub.info.tasks and sub.info.tasks[t + 1]) or {}
    local node = st.node
    if not node then
      local hs = {}
      for h in pairs(e.hosts) do hs[#hs + 1] = h end
      table.sort(hs)
      node = #hs > 0 and table.concat(hs, ",") or nil
    end
    local row = { index = t, state = st.state or (e.reported == #plan.tasks[t + 1] and "done" or "?"), node = node,
                  runs = #plan.tasks[t + 1], reported = e.reported, ok = e.ok, failed = e.failed }
    out.tasks[#out.tasks + 1] = row
    out.runs, out.reported = out.runs + row.runs, out.reported + row.reported
    out.ok, out.failed = out.ok + row.ok, out.failed + row.failed
    L[#L + 1] = string.format("  %-5d %-12s %-12s %5d %9d %5d %7d", t, row.state, tostring(row.node or "-"), row.runs,
                              row.reported, row.ok, row.failed)
  end
  L[#L + 1] = string.format("  %d/%d runs reported (%d ok, %d failed)", out.reported, out.runs, out.ok, out.failed)
  out.text = table.concat(L, "\n") .. "\n"
  return out
end

-- `qshell sweep --status PATH`
function M.main(args)
  io.stdout:write(M.status(args[1]).text)
  return 0
end

return M
