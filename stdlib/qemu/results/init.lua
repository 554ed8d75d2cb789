-- qemu.results: what a researcher does with a sweep's results file.
--
--   rows = qemu.results.read("a.csv" [, "b.jsonl", ...])
--   s = qemu.results.summary(rows, {by={"size"}, metrics={"seconds"}, where={plugin="off"}})
--   c = qemu.results.compare(rows_a, rows_b, {by=...})      two files
--   c = qemu.results.compare(rows, {baseline={plugin="off"}}) one file
--   print(qemu.results.format(s, "table"|"csv"|"markdown"|"json"))
--   qemu.results.plot(rows, {x="size", y="seconds", group="plugin", out="fig.png"})
--   qemu.results.follow("results.csv")    the summary, redrawn as rows arrive
--
-- Rows are grouped by the parameters (all of them unless by= names some);
-- each numeric metric gets n, mean, sd, min, median, max and the 95%
-- confidence interval of the mean over the group's successful runs; runs
-- whose status is not "ok" are counted as failed and give no values.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local json = require "qshell.json"
local sys = require "qshell.os"
local results = require "qemu.results.file"
local stats = require "qemu.results.stats"
local group = require "qemu.results.group"

local M = {}

M.stats = stats

-- ---- reading ----

---@api qemu.results.read qemu.results.read(path [, path2, ...]) -> rows
--- Read one or more results files of `qemu.sweep` (CSV or JSONL, by the name) as one list of rows.
---
--- Several files are read as one: the union of their columns (a file
--- written before a new metric widened the header, or other sweeps). Numbers
--- come back as numbers, empty cells as nil, quoted CSV cells (commas,
--- quotes, newlines) as written (a CSV's `true`/`false` stay text; the
--- statistics count them as 1/0). A row with more fields than the header, a
--- JSONL line that is not a result, or a header that is not a sweep's raises
--- `BadResults` naming `file:line`; a truncated last line (a sweep killed
--- while writing it) is left out and noted in `rows.warnings`. A results
--- file is never rewritten by reading it. The rows go to
--- `qemu.results.summary`, `compare` and `plot`.
---
---     local rows = qemu.results.read("a.csv", "b.csv")
---     print(#rows, table.concat(rows.params, ","), table.concat(rows.metrics, ","))
---
---@param path string  a results file (`.csv`, or `.jsonl`/`.json` for JSONL)
---@param ... string  more results files, read as part of the same list
---@return table rows  a list of rows, each keyed by column: `run` (the run's name, e.g.
---   "size=1000#2"), `repeat`, each parameter, `status` ("ok" or "failed"), `wall_s`,
---   `error`, `host`, `started`, `prov` (its setup's id), each metric (JSONL rows also
---   `provenance`, the whole setup); and the fields `columns` (the column names, in order
---   of appearance), `params` and `metrics` (the names of the parameters and metrics),
---   `lines` and `files` (`lines[i]`, `files[i]`: where row i is), `warnings` (strings),
---   `provenance` (`prov` id -> provenance, from the provenance sidecars or the JSONL
---   rows) and `sweep` (`{total=, params=, started=}` from the sidecar of the first file
---   that has one, or nil)
---@error BadArgument  no file given, a path that is not a string, no such file
---@error BadResults  a line that is not a sweep's result (the error names `file:line`), or a
---   name that is a parameter in one file and a metric in another
function M.read(...)
  local paths = { ... }
  local fname = "qemu.results.read"
  if #paths == 0 then check.bad(fname, "give at least one results file") end
  local all = { columns = {}, params = {}, metrics = {}, lines = {}, files = {}, warnings = {}, provenance = {} }
  local seen = { columns = {}, params = {}, metrics = {} }
  for i, path in ipairs(paths) do
    check.arg(fname, i, path, "string")
    local rows = results.load(path, fname)
    for _, what in ipairs { "columns", "params", "metrics" } do
      for _, k in ipairs(rows[what]) do
        if not seen[what][k] then seen[what][k] = true; all[what][#all[what] + 1] = k end
      end
    end
    for j, row in ipairs(rows) do
      all[#all + 1] = row
      all.lines[#all] = rows.lines[j]
      all.files[#all] = path
    end
    for _, w in ipairs(rows.warnings) do all.warnings[#all.warnings + 1] = w end
    for id, p in pairs(rows.provenance or {}) do all.provenance[id] = p end
    all.sweep = all.sweep or rows.sweep
  end
  -- A parameter of one file that is a metric of another cannot be grouped.
  for _, k in ipairs(all.params) do
    if seen.metrics[k] then
      errors.raise { class = "BadResults", command = fname,
                     desc = k .. " is a parameter in one file and a metric in another" }
    end
  end
  return all
end

-- ---- grouping (qemu.results.group) ----

local list_opt, is_rows, params_of, text, ok_row = group.list_opt, group.is_rows, group.params_of, group.text,
                                                   group.ok_row

M._filter = group.filter
M._text = group.text

-- qemu.results.summary(rows [, {by=, metrics=, where=}]) -> summary
M.summary = group.summary

-- ---- comparing ----

local compare_opts = { by = "table|string", metrics = "table|string", where = "table", baseline = "table",
                       labels = "table" }

-- Add the comparison of one metric of two groups to out (a metric with no
-- values on a side -- a plugin's count where it was off -- is noted once).
local function compare_row(out, key, label, metric, a, b)
  if a.n == 0 or b.n == 0 then
    out.unpaired = out.unpaired or {}
    if not out.unpaired[metric] then
      out.unpaired[metric] = true
      out.missing[#out.missing + 1] = metric .. " (no values on one side)"
    end
    return
  end
  local r, lo, hi = stats.ratio(a, b)
  out.rows[#out.rows + 1] = { key = key, label = label, metric = metric, a = a, b = b, ratio = r, ratio_lo = lo,
                              ratio_hi = hi, differs = not stats.overlap(a, b) }
end

---@api qemu.results.compare qemu.results.compare(rows_a [, rows_b] [, options]) -> comparison
--- Compare two sets of results group by group, or the groups of one set against a baseline value of a parameter.
---
--- With two sets of rows (two sweeps: before and after), the groups of
--- `rows_b` are matched to those of `rows_a` by their parameters. With one
--- set and `baseline={plugin="off"}`, each group whose `plugin` has another
--- value is compared with the group that has `plugin="off"` and the same
--- other parameters. Per group and metric: both sides' statistics, the
--- ratio of the means b / a (a: the first set, or the baseline) with a 95%
--- interval (delta method: the relative standard errors in quadrature,
--- Welch's degrees of freedom), and whether the two means' 95% intervals do
--- not overlap (`differs`). Groups or metrics found on one side only are
--- listed in `missing`. `qemu.results.format` prints it (`qshell results A
--- --compare B`, `qshell results FILE --baseline plugin=off`):
---
---     plugin  size   metric      n_a  mean_a   n_b  mean_b   ratio   ratio_ci95        differs
---     insn    2000   workload_s  3    0.3581   3    0.46656  1.3029  [1.0000, 1.6057]
---     ratio = b / a; a = plugin=off, b = each row; * where the 95% intervals of the means do not overlap
---
---     local c = qemu.results.compare(rows, { baseline = { plugin = "off" } })
---     print(qemu.results.format(c, "markdown"))
---
---@param rows_a table  rows from `qemu.results.read` (the first set, or the only one)
---@param rows_b? table  the second set of rows; leave it out to compare with `baseline=`
---@param options? table  `baseline=` table `{param=value}` (one parameter; one set of rows
---   only): the group to compare with; `by=` string[] or "a,b" (default: every parameter,
---   with the baseline's parameter): the parameters that make a group; `metrics=` string[] or
---   "a,b" (default: every numeric metric): the metrics to compare; `where=` table
---   `{param=value or {values}}`: only the rows with those values; `labels=` string[]
---   (default {"a", "b"}): the two sets' names, in the legend and in `missing`
---@return table comparison  `{kind="compare", by=, metrics=, labels=, rows=, missing=}` (with
---   `baseline=` also `baseline`): `rows` a list of `{key=, label=, metric=, a=, b=, ratio=,
---   ratio_lo=, ratio_hi=, differs=}`, one per group and metric: `key` the group's
---   parameters (`{param=value}`), `label` them as "p=v q=w", `a` and `b` the two sides'
---   statistics (as `qemu.results.stats.describe` gives them), `ratio` = b.mean / a.mean
---   with its 95% interval `ratio_lo`..`ratio_hi` (nil with one value on a side), `differs`
---   true when the two means' 95% intervals do not overlap; `missing` a list of what was not
---   compared, as text
---@error BadArgument  rows that are not a table, an unknown option or a wrong type,
---   `baseline` with two sets (or neither a second set nor `baseline`), a baseline naming more
---   than one parameter or a value no row has, and what `qemu.results.summary` refuses
---@error BadResults  a numeric metric with a text cell (the row is named)
function M.compare(a, b, opts)
  local fname = "qemu.results.compare"
  is_rows(fname, a, 1)
  if opts == nil and type(b) == "table" and b.baseline ~= nil and b[1] == nil and not b.params then
    opts, b = b, nil
  end
  opts = check.options(fname, opts, compare_opts, b and 3 or 2)
  if b then
    is_rows(fname, b, 2)
    if opts.baseline then check.bad(fname, "baseline= compares within one set of rows; give one, not two") end
    local sopts = { by = opts.by, metrics = opts.metrics, where = opts.where }
    local sa, sb = M.summary(a, sopts), M.summary(b, sopts)
    local out = { kind = "compare", by = sa.by, rows = {}, labels = opts.labels or { "a", "b" }, missing = {} }
    local bindex = {}
    for _, g in ipairs(sb.groups) do bindex[g.label] = g end
    local metrics = {}
    local inb = {}
    for _, m in ipairs(sb.metrics) do inb[m] = true end
    for _, m in ipairs(sa.metrics) do if inb[m] then metrics[#metrics + 1] = m end end
    out.metrics = metrics
    for _, ga in ipairs(sa.groups) do
      local gb = bindex[ga.label]
      if gb then
        for _, m in ipairs(metrics) do
          compare_row(out, ga.key, ga.label, m, ga.stats[m], gb.stats[m])
        end
        bindex[ga.label] = nil
      else
        out.missing[#out.missing + 1] = ga.label .. " (only in " .. out.labels[1] .. ")"
      end
    end
    for _, g in ipairs(sb.groups) do
      if bindex[g.label] then out.missing[#out.missing + 1] = g.label .. " (only in " .. out.labels[2] .. ")" end
    end
    return out
  end
  -- Within one set: groups whose baseline parameter has another value,
  -- against the group with the baseline value and the same other values.
  local base = opts.baseline
  if type(base) ~= "table" then check.bad(fname, "give a second set of rows, or baseline={param=value}") end
  local bparam, bvalue
  for k, v in pairs(base) do
    if bparam then check.bad(fname, "baseline names one parameter") end
    bparam, bvalue = k, v
  end
  if not bparam then check.bad(fname, "baseline={param=value}: which parameter is the baseline?") end
  local by = list_opt(fname, opts.by, "by") or params_of(fname, a)
  local hasb = false
  for _, k in ipairs(by) do if k == bparam then hasb = true end end
  if not hasb then
    local nby = { bparam }
    for _, k in ipairs(by) do nby[#nby + 1] = k end
    by = nby
  end
  local s = M.summary(a, { by = by, metrics = opts.metrics, where = opts.where })
  local function rest_label(g)
    local parts = {}
    for _, k in ipairs(by) do if k ~= bparam then parts[#parts + 1] = k .. "=" .. text(g.key[k]) end end
    return table.concat(parts, " ")
  end
  local bases = {}
  for _, g in ipairs(s.groups) do
    if text(g.key[bparam]) == text(bvalue) then bases[rest_label(g)] = g end
  end
  if next(bases) == nil then
    check.bad(fname, "baseline: no row has %s=%s", bparam, text(bvalue))
  end
  local out = { kind = "compare", by = by, metrics = s.metrics, rows = {}, baseline = { [bparam] = bvalue },
                labels = { bparam .. "=" .. text(bvalue), "" }, missing = {} }
  for _, g in ipairs(s.groups) do
    if text(g.key[bparam]) ~= text(bvalue) then
      local bg = bases[rest_label(g)]
      if bg then
        for _, m in ipairs(s.metrics) do
          compare_row(out, g.key, g.label, m, bg.stats[m], g.stats[m])
        end
      else
        out.missing[#out.missing + 1] = g.label .. " (no baseline run with the same other parameters)"
      end
    end
  end
  return out
end

-- ---- formatting ----

---@api qemu.results.number qemu.results.number(v [, digits]) -> text
--- A number as the results tables print it: whole numbers whole, large ones rounded, others to 5 significant digits.
---
--- Whole numbers (below 1e15) print without a fraction; others of 1e4 and
--- more are rounded to a whole number (unless `digits` is given); the rest
--- get `digits` significant digits. NaN is "nan", nil is "", anything that
--- is not a number is `tostring`'s text.
---
---     qemu.results.number(0.123456789)     -- "0.12346"
---     qemu.results.number(331781023.4)     -- "331781023"
---     qemu.results.number(2 / 3, 3)        -- "0.667"
---
---@param v any  the value (a number, usually)
---@param digits? integer  significant digits (default 5)
---@return string text  the number as text
function M.number(v, digits)
  if v == nil then return "" end
  if type(v) ~= "number" then return tostring(v) end
  if v ~= v then return "nan" end
  if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
  if not digits and math.abs(v) >= 1e4 and math.abs(v) < 1e15 then return string.format("%.0f", v) end
  return string.format("%." .. (digits or 5) .. "g", v)
end

local function precise(v)
  if v ~= nil and v == math.floor(v) and math.abs(v) < 1e15 then return math.tointeger(v) end
  return v
end

-- An interval's half-width: 3 significant digits, no exponent below 1e15.
local function half(v)
  if math.abs(v) >= 1000 and math.abs(v) < 1e15 then return string.format("%.0f", v) end
  return string.format("%.3g", v)
end

-- The flat records of a summary or a comparison: {columns=, records=}
-- with numbers as numbers (csv/json) -- and a text form for table/markdown.
local function flatten(t, for_text)
  local cols, recs = {}, {}
  for _, k in ipairs(t.by) do cols[#cols + 1] = k end
  if t.kind == "summary" then
    cols[#cols + 1] = "metric"
    local tail = for_text and { "n", "failed", "mean", "ci95", "sd", "min", "median", "max" }
                 or { "n", "failed", "mean", "ci95_lo", "ci95_hi", "sd", "min", "median", "max" }
    for _, k in ipairs(tail) do cols[#cols + 1] = k end
    for _, g in ipairs(t.groups) do
      -- A metric the group has no value of is left out (a plugin's count
      -- where the plugin was off); a group with no value at all keeps one
      -- line for its failed count.
      local metrics = {}
      for _, m in ipairs(t.metrics) do
        if g.stats[m].n > 0 then metrics[#metrics + 1] = m end
      end
      if #metrics == 0 then metrics[1] = false end
      for _, m in ipairs(metrics) do
        local r = {}
        for _, k in ipairs(t.by) do r[k] = g.key[k] end
        local d = m and g.stats[m] or { n = 0 }
        r.metric = m or ""
        r.n, r.failed = d.n, g.failed
        if for_text then
          r.mean = M.number(d.mean)
          r.ci95 = d.ci_lo and ("± " .. half((d.ci_hi - d.ci_lo) / 2)) or ""
          for _, k in ipairs { "sd", "min", "median", "max" } do r[k] = M.number(d[k]) end
        else
          r.mean, r.ci95_lo, r.ci95_hi = precise(d.mean), precise(d.ci_lo), precise(d.ci_hi)
          for _, k in ipairs { "sd", "min", "median", "max" } do r[k] = precise(d[k]) end
        end
        recs[#recs + 1] = r
      end
    end
  else
    local la, lb = t.labels[1], t.labels[2]
    cols[#cols + 1] = "metric"
    local tail
    if for_text then
      tail = { "n_a", "mean_a", "n_b", "mean_b", "ratio", "ratio_ci95", "differs" }
    else
      tail = { "n_a", "mean_a", "ci95_lo_a", "ci95_hi_a", "n_b", "mean_b", "ci95_lo_b", "ci95_hi_b",
               "ratio", "ratio_lo", "ratio_hi", "differs" }
    end
    for _, k in ipairs(tail) do cols[#cols + 1] = k end
    for _, c in ipairs(t.rows) do
      local r = {}
      for _, k in ipairs(t.by) do r[k] = c.key[k] end
      r.metric = c.metric
      r.n_a, r.n_b = c.a.n, c.b.n
      if for_text then
        r.mean_a, r.mean_b = M.number(c.a.mean), M.number(c.b.mean)
        r.ratio = c.ratio and string.format("%.4f", c.ratio) or ""
        r.ratio_ci95 = c.ratio_lo and string.format("[%.4f, %.4f]", c.ratio_lo, c.ratio_hi) or ""
        r.differs = c.differs and "*" or ""
      else
        r.mean_a, r.ci95_lo_a, r.ci95_hi_a = precise(c.a.mean), precise(c.a.ci_lo), precise(c.a.ci_hi)
        r.mean_b, r.ci95_lo_b, r.ci95_hi_b = precise(c.b.mean), precise(c.b.ci_lo), precise(c.b.ci_hi)
        r.ratio, r.ratio_lo, r.ratio_hi = precise(c.ratio), precise(c.ratio_lo), precise(c.ratio_hi)
        r.differs = c.differs
      end
      recs[#recs + 1] = r
    end
    t.legend = string.format("ratio = b / a; a = %s, b = %s; * where the 95%% intervals of the means do not overlap",
                             la, lb ~= "" and lb or "each row")
  end
  return cols, recs
end

local function csv_cell(v)
  if v == nil then return "" end
  return results.csv_quote(type(v) == "number" and M.number(v, 10) or tostring(v))
end

local FORMATS = { table = true, csv = true, markdown = true, json = true }

---@api qemu.results.format qemu.results.format(t [, format]) -> text
--- A summary or a comparison as text: an aligned table, CSV, Markdown or JSON.
---
--- "table" (the default) and "markdown" print numbers for a reader
--- (`qemu.results.number`) and the interval of a mean as `± half-width`; a
--- comparison gets a legend line and a `not compared: ...` line per group or
--- metric on one side only. "csv" and "json" are for programs: numbers in
--- full, each interval as its two ends (`ci95_lo`, `ci95_hi`). The
--- columns: the group's parameters, `metric`, then for a summary `n`,
--- `failed`, `mean`, `ci95` (csv/json: `ci95_lo`, `ci95_hi`), `sd`, `min`,
--- `median`, `max`; for a comparison `n_a`, `mean_a`, `n_b`, `mean_b`,
--- `ratio`, `ratio_ci95`, `differs` (csv/json: `n_a`, `mean_a`, `ci95_lo_a`,
--- `ci95_hi_a`, `n_b`, `mean_b`, `ci95_lo_b`, `ci95_hi_b`, `ratio`,
--- `ratio_lo`, `ratio_hi`, `differs`). A group with no value of a metric
--- has no line for it (one line for its failed count when it has none at
--- all). JSON is an array of objects, one per line of the table.
---
---     print(qemu.results.format(qemu.results.summary(rows), "markdown"))
---
---@param t table  a summary (`qemu.results.summary`) or a comparison (`qemu.results.compare`)
---@param format? string  "table" (default), "csv", "markdown" or "json"
---@return string text  the text, ending in a newline
---@error BadArgument  `t` is not a summary or a comparison, or an unknown format
function M.format(t, fmt)
  local fname = "qemu.results.format"
  if type(t) ~= "table" or (t.kind ~= "summary" and t.kind ~= "compare") then
    check.bad(fname, "argument 1 must be a summary or a comparison (qemu.results.summary/compare)")
  end
  fmt = fmt or "table"
  if not FORMATS[fmt] then check.bad(fname, "format must be table, csv, markdown or json; got %s", tostring(fmt)) end
  local for_text = fmt == "table" or fmt == "markdown"
  local cols, recs = flatten(t, for_text)
  if fmt == "json" then
    local arr = json.array {}
    for i, r in ipairs(recs) do
      local o = json.object {}
      for k, v in pairs(r) do o[k] = v end
      arr[i] = o
    end
    return json.encode(arr) .. "\n"
  end
  if fmt == "csv" then
    local lines = { table.concat(cols, ",") }
    for _, r in ipairs(recs) do
      local f = {}
      for i, c in ipairs(cols) do f[i] = csv_cell(r[c]) end
      lines[#lines + 1] = table.concat(f, ",")
    end
    return table.concat(lines, "\n") .. "\n"
  end
  local cells = {}
  for i, r in ipairs(recs) do
    cells[i] = {}
    for j, c in ipairs(cols) do cells[i][j] = r[c] == nil and "" or text(r[c]) end
  end
  local out
  if fmt == "markdown" then
    local function line(vals)
      local esc = {}
      for i, v in ipairs(vals) do esc[i] = (v:gsub("|", "\\|")) end
      return "| " .. table.concat(esc, " | ") .. " |"
    end
    local sep = {}
    for i = 1, #cols do sep[i] = "---" end
    out = { line(cols), "|" .. table.concat(sep, "|") .. "|" }
    for _, c in ipairs(cells) do out[#out + 1] = line(c) end
  else
    local widths = {}
    for i, c in ipairs(cols) do widths[i] = utf8.len(c) end
    for _, c in ipairs(cells) do
      for i, v in ipairs(c) do widths[i] = math.max(widths[i], utf8.len(v) or #v) end
    end
    out = {}
    local function line(vals)
      local parts = {}
      for i, v in ipairs(vals) do parts[i] = v .. string.rep(" ", widths[i] - (utf8.len(v) or #v)) end
      out[#out + 1] = (table.concat(parts, "  "):gsub("%s+$", ""))
    end
    line(cols)
    for _, c in ipairs(cells) do line(c) end
  end
  if t.legend then out[#out + 1] = (fmt == "markdown" and "\n" or "") .. t.legend end
  for _, m in ipairs(t.missing or {}) do out[#out + 1] = "not compared: " .. m end
  return table.concat(out, "\n") .. "\n"
end

-- ---- the figure and the live view ----

function M.plot(rows, opts)
  return require("qemu.results.plot").plot(rows, opts)
end

local follow_opts = { by = "table|string", metrics = "table|string", where = "table", format = "string",
                      interval = check.positive, timeout = check.positive, out = "userdata|table" }

local function distinct_runs(rows)
  local seen, n = {}, 0
  for _, r in ipairs(rows) do
    if r.run and not seen[r.run] then seen[r.run] = true; n = n + 1 end
  end
  return n
end

---@api qemu.results.follow qemu.results.follow(path [, options]) -> summary
--- Print the summary of a results file, and again whenever it grows, until its sweep has all its runs.
---
--- Each time the file (or its provenance sidecar) changes, it prints a
--- line `PATH: N/TOTAL runs, F failed (HH:MM:SS)` and the summary, redrawn
--- in place when stdout is a terminal. It ends when the sweep has all its
--- runs (the sidecar gives the total; without one it goes on), after
--- `timeout` seconds, or on Ctrl-C (which ends it without an error). A file
--- that does not exist yet is waited for. A Slurm sweep's `out` grows as
--- its submitter gathers the tasks' results, so the same works there.
--- `qshell results --follow FILE` is this.
---
---     qemu.results.follow("results.csv", { timeout = 600, metrics = { "seconds" } })
---
---@param path string  the results file a sweep writes
---@param options? table  `by=`, `metrics=`, `where=`: as `qemu.results.summary` takes them;
---   `format=` string (default "table"): as `qemu.results.format` takes it; `interval=`
---   number (default 0.5): seconds between looks at the file; `timeout=` number (default:
---   none): seconds to follow it at most; `out=` a file (default `io.stdout`): where to print
---@return table|nil summary  the last summary printed (as `qemu.results.summary` gives it),
---   nil when the file had no rows
---@error BadArgument  `path` is not a string, an unknown option or a wrong type, and what
---   `qemu.results.summary` and `qemu.results.format` refuse
---@error BadResults  the file cannot be read (the line is named)
function M.follow(path, opts)
  local fname = "qemu.results.follow"
  check.arg(fname, 1, path, "string")
  opts = check.options(fname, opts, follow_opts, 2)
  local out = opts.out or io.stdout
  local tty = out == io.stdout and sys.isatty(1)
  local interval = opts.interval or 0.5
  local t0 = sys.now()
  local last_sig, last_summary
  while true do
    local st = sys.stat(path)
    local sig = st and string.format("%d/%.6f", st.size, st.mtime)
    local side = sys.stat(require("qemu.sweep.provenance").sidecar(path))
    sig = sig and (sig .. (side and string.format("/%.6f", side.mtime) or ""))
    local finished = false
    if sig and sig ~= last_sig then
      last_sig = sig
      local rows = M.read(path)
      local failed = 0
      for _, r in ipairs(rows) do if not ok_row(r) then failed = failed + 1 end end
      local runs = distinct_runs(rows)
      local total = rows.sweep and rows.sweep.total
      local head = string.format("%s: %d%s runs, %d failed (%s)", path, runs, total and ("/" .. total) or "",
                                 failed, os.date("%H:%M:%S"))
      local body = ""
      if #rows > 0 then
        last_summary = M.summary(rows, { by = opts.by, metrics = opts.metrics, where = opts.where })
        body = M.format(last_summary, opts.format or "table")
      end
      out:write((tty and "\027[H\027[2J" or "") .. head .. "\n" .. body .. (tty and "" or "\n"))
      out:flush()
      finished = total ~= nil and runs >= total
    end
    if finished then break end
    if opts.timeout and sys.now() - t0 >= opts.timeout then break end
    local ok, _, code = sys.sleep(interval)
    if not ok and code == "interrupted" then break end
  end
  return last_summary
end

return M
