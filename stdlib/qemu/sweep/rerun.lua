-- qemu.sweep.rerun: run one row of a results file again, from what the row
-- records, and say what differs.
--
--   qemu.sweep.rerun("results.csv", 3)                      the third row
--   qemu.sweep.rerun("results.csv", "plugin=insn;size=2000#1")
--   qshell sweep --rerun results.csv 3
--
-- The row's provenance names the script, its arguments and working
-- directory: the script runs again (a child qshell, in that directory)
-- with QSHELL_SWEEP_RERUN naming the run, and the qemu.sweep call that
-- wrote the results file runs that one run, in the child, writes the
-- result for the caller and ends the script there (as a Slurm task does).
-- Before that, what cannot match is refused (the script or the checkpoint
-- gone); after, the new run's provenance is compared field by field with
-- the recorded one (QEMU version or binary, the checkpoint's manifest hash,
-- the script's hash, plugins, ...) and the metrics side by side.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local json = require "qshell.json"
local sys = require "qshell.os"
local fs = require "qemu.util.fs"
local run = require "qemu.util.run"
local results = require "qemu.results.file"
local provenance = require "qemu.sweep.provenance"

local M = {}

local function mismatch(desc, hint)
  errors.raise { class = "RerunMismatch", command = "qemu.sweep.rerun", desc = desc, hint = hint }
end

local function find_row(fname, path, rows, which)
  if type(which) == "string" and which:match("^%d+$") then which = math.tointeger(tonumber(which)) end
  if math.type(which) == "integer" then
    if which < 1 or which > #rows then
      check.bad(fname, "%s has %d rows; there is no row %d", path, #rows, which)
    end
    return rows[which], which
  end
  if type(which) ~= "string" then check.bad(fname, "argument 2 must be a row number or a run name (its run column)") end
  local found, at
  for i, r in ipairs(rows) do
    if r.run == which then found, at = r, i end -- the last one: a resumed sweep's retry
  end
  if not found then check.bad(fname, "%s has no run %q", path, which) end
  return found, at
end

local function show(v)
  if v == nil or v == json.null then return "(none)" end
  if type(v) == "table" then return provenance.canonical(v) end
  return tostring(v)
end

local function fmt_metric(v)
  if v == nil or v == json.null then return "" end
  if math.type(v) == "float" then return string.format("%.6g", v) end
  return tostring(v)
end

-- The report as text.
local function report_text(r)
  local L = {}
  L[#L + 1] = string.format("rerun of %s (row %d of %s)", r.run, r.index, r.path)
  L[#L + 1] = string.format("  recorded  %s, wall %s s, on %s at %s", tostring(r.row.status),
                            fmt_metric(r.row.wall_s), tostring(r.row.host or "?"), tostring(r.row.started or "?"))
  L[#L + 1] = string.format("  now       %s, wall %.3f s, on %s at %s%s", r.status, r.wall_s or 0, tostring(r.host),
                            tostring(r.started), r.error and (": " .. r.error) or "")
  if #r.metrics_compared > 0 then
    local w = 6
    for _, m in ipairs(r.metrics_compared) do w = math.max(w, #m.name) end
    L[#L + 1] = string.format("  %-" .. w .. "s  %14s  %14s  %s", "metric", "recorded", "now", "now/recorded")
    for _, m in ipairs(r.metrics_compared) do
      L[#L + 1] = string.format("  %-" .. w .. "s  %14s  %14s  %s", m.name, fmt_metric(m.was), fmt_metric(m.now),
                                m.ratio and string.format("%.4f", m.ratio) or "")
    end
  end
  if r.replay then
    L[#L + 1] = string.format("  replayed  %s: %s", r.replay,
                              #r.replay_differs == 0 and "every metric the same as recorded"
                              or ("differs in " .. table.concat(r.replay_differs, ", ")))
  end
  if #r.differences == 0 then
    L[#L + 1] = "  setup     the same as recorded"
  else
    L[#L + 1] = "  setup     differs from the recorded one:"
    for _, d in ipairs(r.differences) do
      L[#L + 1] = string.format("    %s: %s -> %s", d.field, show(d.was), show(d.now))
    end
  end
  return table.concat(L, "\n") .. "\n"
end

local rerun_opts = { timeout = check.positive, replay = "boolean" }

---@api qemu.sweep.rerun qemu.sweep.rerun(path, row [, {timeout=}]) -> report
--- Run one row of a results file again from what it records, and say what differs.
---
--- The row's setup names the script that wrote the file, its arguments and
--- working directory: the script runs again (a child qshell, in that
--- directory, with those arguments), and the `qemu.sweep` call that wrote
--- the file runs that one run only and ends the script there (other sweeps
--- of the script do nothing; what the script does before that call runs
--- again). Nothing is written to the results file. The report compares the
--- new setup field by field with the recorded one (a changed QEMU shows as
--- `qemu: 7.2.22 -> 10.0.2`, an edited script as `script_sha256: ... ->
--- ...`) and the metrics side by side. `qshell sweep --rerun results.csv
--- ROW` prints `report.text` and exits 0 when the run succeeded again, 1
--- when not:
---
---     rerun of plugin=insn;size=2000#1 (row 5 of build/demo/results.csv)
---       recorded  ok, wall 1.026 s, on vm at 2026-12-02T08:37:27Z
---       now       ok, wall 1.420 s, on vm at 2026-12-02T08:37:45Z
---       metric              recorded             now  now/recorded
---       workload_s           0.48842        0.360943  0.7390
---       instructions       331822275       331789695  0.9999
---       setup     the same as recorded
---
---     local r = qemu.sweep.rerun("build/demo/results.csv", "plugin=insn;size=2000#1")
---     if #r.differences > 0 then io.write(r.text) end        -- what changed since the row was written
---     print(r.metrics.instructions / r.row.instructions)     -- now against then
---
---@param path string  the results file
---@param row integer|string  the row: its number in the file (1 = the first result; a
---   string of digits counts as a number), or the run's name (its `run` column, e.g.
---   "plugin=insn;size=2000#1"; of several rows with that name, the last)
---@param options? table  `timeout=` number (default: none): seconds the rerun (the whole
---   script) may take; `replay=` boolean (default false; `--replay` on the command line): replay
---   the row's recording (a sweep with `record=true`) instead of running anew: the report's line
---   `replayed  DIR: every metric the same as recorded`, or the metrics that differ (`replay_differs`)
---@return table report  `{run=, index=, path=, row=, status=, error=, metrics=, wall_s=, host=,
---   started=, provenance=, recorded=, differences=, metrics_compared=, replay=, replay_differs=, text=}`: the run's
---   name, the row's number, the file, the row as recorded (`qemu.sweep.read`'s row);
---   the new run's status ("ok" or "failed"), error, metrics (name -> value), wall time,
---   host and start time; its setup now (`provenance`) and as recorded (`recorded`);
---   `differences`, the setup fields that differ: `{{field=, was=, now=}}`;
---   `metrics_compared`, the recorded metrics and new ones side by side:
---   `{{name=, was=, now=, ratio=}}` (`ratio` = now / was, nil unless both are numbers);
---   `text`, the report above
---@error BadArgument  `path` is not a string or no such file, a bad option, no such row
---   number or run name
---@error BadResults  the results file cannot be read (the line is named)
---@error RerunMismatch  the row cannot be rerun as recorded (with `replay`: it has no recording, or it is gone): it records no setup (written
---   before provenance existed, or its id is not in the sidecar), it ran from code that is
---   not a script file, the script, its directory or the checkpoint is gone (the error names
---   it, and the script's or checkpoint's recorded hash), or the script's sweep no longer
---   has the run
---@error CommandFailed  the script ended without rerunning the run (its output is in the
---   message)
---@error Timeout  `timeout` seconds passed
function M.rerun(path, which, opts)
  local fname = "qemu.sweep.rerun"
  check.arg(fname, 1, path, "string")
  opts = check.options(fname, opts, rerun_opts, 3)
  local rows = results.load(path, fname)
  local row, index = find_row(fname, path, rows, which)
  local recorded = row.provenance or (row.prov and rows.provenance[row.prov])
  if type(recorded) ~= "table" then
    mismatch(string.format("row %d of %s (%s) records no setup%s", index, path, tostring(row.run),
                           row.prov and (": its provenance id " .. row.prov .. " is not in " ..
                                         provenance.sidecar(path)) or ""),
             "results written before provenance existed cannot be rerun; run the sweep again")
  end
  if not recorded.script then
    mismatch(string.format("row %d of %s ran from code that is not a script file (%s): nothing to run again",
                           index, path, tostring(recorded.run_file)))
  end
  if not fs.is_file(recorded.script) then
    mismatch(string.format("the script %s that ran row %d is gone", recorded.script, index),
             "put it back (its SHA-256 was " .. tostring(recorded.script_sha256) .. ")")
  end
  if recorded.cwd and not fs.is_dir(recorded.cwd) then
    mismatch(string.format("the directory %s the sweep ran in is gone", recorded.cwd))
  end
  if recorded.checkpoint and not fs.is_dir(recorded.checkpoint) then
    mismatch(string.format("the checkpoint %s that row %d started from is gone", recorded.checkpoint, index),
             "make it again (its manifest hash was " .. tostring(recorded.checkpoint_id) ..
             "; a new one will differ) and rerun, or restore it from a copy")
  end
  local replay
  if opts.replay then
    replay = row.recording
    if type(replay) ~= "string" or replay == "" then
      mismatch(string.format("row %d of %s (%s) has no recording to replay", index, path, tostring(row.run)),
               "a sweep records its runs with record=true")
    end
    if replay:sub(1, 1) ~= "/" and recorded.cwd then replay = recorded.cwd .. "/" .. replay end
    if not fs.is_dir(replay) then
      mismatch(string.format("the recording %s of row %d is gone", replay, index))
    end
  end
  local result = fs.scratch_file("rerun", ".json")
  os.remove(result)
  local self = sys.realpath("/proc/self/exe")
  local argv = { "env", "-C", recorded.cwd or ".",
                 "QSHELL_SWEEP_REPLAY=" .. (replay or ""),
                 "QSHELL_SWEEP_RERUN=" .. row.run,
                 "QSHELL_SWEEP_RERUN_FILE=" .. (sys.realpath(path) or path),
                 "QSHELL_SWEEP_RERUN_OUT=" .. result,
                 self, "run", recorded.script }
  for _, a in ipairs(recorded.args or {}) do argv[#argv + 1] = a end
  local st = run.run(argv, { command = fname, timeout = opts.timeout })
  local text = fs.read(result)
  os.remove(result)
  if not text then
    local out = ((st.stderr ~= "" and st.stderr or st.stdout):gsub("%s+$", ""))
    errors.raise { class = "CommandFailed", command = fname,
                   desc = string.format("the script %s %s without rerunning %s%s", recorded.script, st.desc, row.run,
                                        out ~= "" and (": " .. out:sub(-1500)) or ""),
                   hint = "the script must still reach the qemu.sweep call that wrote " .. path ..
                          " with a matrix that has this run" }
  end
  local res = json.decode(text)
  if res.missing then
    mismatch(string.format("the script's sweep no longer has the run %s (its runs are now e.g. %s)",
                           row.run, tostring(res.missing)),
             "the matrix changed since the row was written")
  end
  local r = { run = row.run, index = index, path = path, row = row, status = res.status,
              error = res.error ~= json.null and res.error or nil, metrics = res.metrics or {},
              wall_s = res.wall_s, host = res.host, started = res.started, provenance = res.provenance,
              recorded = recorded }
  r.differences = provenance.differences(recorded, res.provenance)
  r.replay = replay
  r.metrics_compared = {}
  local names, seen = {}, {}
  for _, m in ipairs(rows.metrics) do if row[m] ~= nil then names[#names + 1] = m; seen[m] = true end end
  local extra = {}
  for k in pairs(r.metrics) do if not seen[k] then extra[#extra + 1] = k end end
  table.sort(extra)
  for _, k in ipairs(extra) do names[#names + 1] = k end
  for _, m in ipairs(names) do
    local was, now = row[m], r.metrics[m]
    local ratio
    if type(was) == "number" and type(now) == "number" and was ~= 0 then ratio = now / was end
    if not (replay and (m == "recording" or m == "record_bytes")) then
      r.metrics_compared[#r.metrics_compared + 1] = { name = m, was = was, now = now, ratio = ratio }
    end
  end
  if replay then
    -- what the replay did not reproduce
    r.replay_differs = {}
    for _, c in ipairs(r.metrics_compared) do
      if c.was ~= c.now then r.replay_differs[#r.replay_differs + 1] = c.name end
    end
  end
  r.text = report_text(r)
  return r
end

-- `qshell sweep --rerun RESULTS ROW`: the report; exit 0 when the run
-- succeeded again, 1 when it failed.
function M.main(args)
  local r = M.rerun(args[1], args[2], { replay = args[3] == "--replay" or nil })
  io.stdout:write(r.text)
  return r.status == "ok" and 0 or 1
end

-- In the child (QSHELL_SWEEP_RERUN set): the sweep that wrote the results
-- file runs the one run, writes its result and ends the script.  Another
-- sweep of the script (writing another file) does nothing and returns an
-- empty summary.
function M.task(spec, runs, name, fname)
  local file = os.getenv("QSHELL_SWEEP_RERUN_FILE") or ""
  local out = os.getenv("QSHELL_SWEEP_RERUN_OUT") or ""
  local mine = spec.out and (sys.realpath(spec.out) == file or
                             (not fs.exists(spec.out) and spec.out:match("([^/]+)$") == file:match("([^/]+)$")))
  if not mine then
    return { total = 0, ok = 0, failed = 0, skipped = 0, results = {}, out = spec.out, rerun = "other sweep" }
  end
  local r
  for _, x in ipairs(runs) do if x.run == name then r = x end end
  if not r then
    fs.write(out, json.encode { missing = runs[1] and runs[1].run or "(none)" }, fname)
    os.exit(0, true)
  end
  local source = require("qemu.sweep.source").resolve(spec, fname)
  local res = require("qemu.sweep.runner").run(spec, source, r)
  fs.write(out, json.encode(res), fname)
  os.exit(0, true)
end

return M
