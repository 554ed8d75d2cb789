-- qemu.results.group: rows grouped by their parameters, each numeric
-- metric described (qemu.results.summary), and what summary, compare and
-- plot share: their options, where= filters, the text of a cell.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local json = require "qshell.json"
local plan = require "qemu.sweep.plan"
local stats = require "qemu.results.stats"

local M = {}

-- ---- options shared by summary, compare and plot ----

local function list_opt(fname, v, what)
  if v == nil then return nil end
  if type(v) == "string" then
    local out = {}
    for part in v:gmatch("[^,]+") do out[#out + 1] = part end
    return out
  end
  if type(v) ~= "table" then check.bad(fname, "%s must be a list of names (or a comma-separated string)", what) end
  for _, x in ipairs(v) do
    if type(x) ~= "string" then check.bad(fname, "%s must be a list of names", what) end
  end
  return v
end

local function is_rows(fname, rows, n)
  if type(rows) ~= "table" then check.bad(fname, "argument %d must be rows (from qemu.results.read)", n) end
  return rows
end

-- The parameters of the rows: what qemu.results.read found; rows made by
-- hand do not say, and need by=.
local function params_of(fname, rows)
  if rows.params then return rows.params end
  check.bad(fname, "these rows do not say which columns are parameters: give by= (or read them with qemu.results.read)")
end

local function text(v)
  if v == nil or v == json.null then return "" end
  return plan.value_text(v)
end

local function ok_row(row)
  return row.status == nil or row.status == "ok"
end

local function filter(fname, rows, where)
  if where == nil then return rows end
  if type(where) ~= "table" then check.bad(fname, "where must be a table {param = value or {values}}") end
  local out = { params = rows.params, metrics = rows.metrics, lines = {}, files = {} }
  local known = {}
  for _, k in ipairs(rows.params or {}) do known[k] = true end
  for _, k in ipairs(rows.columns or {}) do known[k] = true end
  for k in pairs(where) do
    if rows.columns and not known[k] then
      check.bad(fname, "where: no column %s (the columns are %s)", tostring(k), table.concat(rows.columns, ", "))
    end
  end
  for i, row in ipairs(rows) do
    local keep = true
    for k, want in pairs(where) do
      local vals = type(want) == "table" and want or { want }
      local hit = false
      for _, w in ipairs(vals) do if text(row[k]) == text(w) then hit = true end end
      if not hit then keep = false break end
    end
    if keep then
      out[#out + 1] = row
      out.lines[#out] = rows.lines and rows.lines[i]
      out.files[#out] = rows.files and rows.files[i] or rows.path
    end
  end
  return out
end

local function where_at(rows, i)
  local f = (rows.files and rows.files[i]) or rows.path or "rows"
  local l = rows.lines and rows.lines[i]
  return l and (f .. ":" .. l) or (f .. " row " .. i)
end

local BOOL = { ["true"] = 1, ["false"] = 0 }

-- The numeric metrics: a column is numeric when its values in successful
-- runs are numbers (true/false count as 1/0); a text cell in a numeric
-- column is an error naming its line; an all-text or empty column is left
-- out unless asked for.
local function numeric_metrics(fname, rows, asked)
  local out = {}
  for _, m in ipairs(asked or rows.metrics or {}) do
    local nums, bools, texts, first_text = 0, 0, 0, nil
    for i, row in ipairs(rows) do
      local v = row[m]
      if ok_row(row) and v ~= nil and v ~= json.null then
        if type(v) == "number" then nums = nums + 1
        elseif type(v) == "boolean" or BOOL[v] then bools = bools + 1
        else texts = texts + 1; first_text = first_text or i end
      end
    end
    if texts > 0 and nums + bools > 0 then
      errors.raise { class = "BadResults", command = fname,
                     desc = string.format("metric %s is numeric, but %s has %q", m, where_at(rows, first_text),
                                          tostring(rows[first_text][m])),
                     hint = "fix that cell, or name the other metrics (metrics=, --metric)" }
    end
    if texts > 0 and asked then
      check.bad(fname, "metric %s holds text (e.g. %q at %s), not numbers", m, tostring(rows[first_text][m]),
                where_at(rows, first_text))
    end
    if nums + bools == 0 and asked then
      local known = {}
      for _, k in ipairs(rows.metrics or {}) do known[k] = true end
      if not known[m] then
        check.bad(fname, "no metric %s (the metrics are %s)", m, table.concat(rows.metrics or {}, ", "))
      end
    end
    if texts == 0 and (nums + bools > 0 or asked) then out[#out + 1] = m end
  end
  return out
end

local function numval(v)
  if type(v) == "number" then return v end
  if v == true then return 1 elseif v == false then return 0 end
  return BOOL[v]
end

-- Order group keys: numbers numerically, then text.
local function key_less(by)
  return function(a, b)
    for _, k in ipairs(by) do
      local x, y = a.key[k], b.key[k]
      if text(x) ~= text(y) then
        if type(x) == "number" and type(y) == "number" then return x < y end
        if type(x) == "number" then return true end
        if type(y) == "number" then return false end
        if x == nil then return true end
        if y == nil then return false end
        return tostring(x) < tostring(y)
      end
    end
    return false
  end
end

local summary_opts = { by = "table|string", metrics = "table|string", where = "table" }

---@api qemu.results.summary qemu.results.summary(rows [, {by=, metrics=, where=}]) -> summary
--- The statistics of each numeric metric over the repeats, per group of rows with the same parameters.
---
--- Rows are grouped by the parameters (all of them, or those `by` names),
--- and each numeric metric of a group gets `n` (the runs with a value),
--- mean, sample standard deviation, min, median, max and the 95%
--- confidence interval of the mean (Student's t with n-1 degrees of
--- freedom; none with one value). Runs whose status is not "ok" count as
--- failed and give no values. A metric is numeric when its values in
--- successful runs are numbers (`true`/`false` count as 1/0); metrics that
--- hold text are left out unless `metrics` names them, which is an error.
--- Groups come in the order of their parameters' values (numbers
--- numerically). `qemu.results.format` prints it; `qshell results FILE` is
--- this:
---
---     plugin  size   metric        n  failed  mean       ci95      sd        min        median     max
---     insn    2000   workload_s    3  0       0.46656    ± 0.0419  0.01685   0.4503     0.46544    0.48395
---
---     local s = qemu.results.summary(rows, { by = { "size" }, metrics = { "seconds" }, where = { plugin = "off" } })
---     for _, g in ipairs(s.groups) do
---       local d = g.stats.seconds
---       print(g.label, d.mean, d.ci_lo, d.ci_hi)
---     end
---
---@param rows table  rows from `qemu.results.read` (rows made by hand need `by=`: they do not
---   say which columns are parameters)
---@param options? table  `by=` string[] or "a,b" (default: every parameter): the parameters that
---   make a group; `metrics=` string[] or "a,b" (default: every numeric metric): the metrics
---   to describe; `where=` table `{param=value or {values}}` (default: all rows): only the
---   rows whose column has that value (or one of those values)
---@return table summary  `{kind="summary", by=, metrics=, rows=, groups=}`: the grouping
---   parameters, the metrics described, the number of rows used, and `groups`, a list of
---   `{key=, label=, runs=, ok=, failed=, stats=}`: `key` the group's parameters
---   (`{param=value}`), `label` them as "p=v q=w", its runs, ok and failed, and `stats`
---   metric -> `{n=, mean=, sd=, min=, median=, max=, ci_lo=, ci_hi=}` (as
---   `qemu.results.stats.describe` gives it)
---@error BadArgument  rows that are not a table, an unknown option or a wrong type, a `by`
---   that is not a parameter, a `where` column the rows do not have, a `metrics` name that is
---   no metric or holds text
---@error BadResults  a numeric metric with a text cell (the file and line are named)
function M.summary(rows, opts)
  local fname = "qemu.results.summary"
  is_rows(fname, rows, 1)
  opts = check.options(fname, opts, summary_opts, 2)
  local by = list_opt(fname, opts.by, "by") or params_of(fname, rows)
  if rows.params then
    local known = {}
    for _, k in ipairs(rows.params) do known[k] = true end
    for _, k in ipairs(by) do
      if not known[k] then
        check.bad(fname, "by: %s is not a parameter (the parameters are %s)", k,
                  #rows.params > 0 and table.concat(rows.params, ", ") or "none")
      end
    end
  end
  rows = filter(fname, rows, opts.where)
  local metrics = numeric_metrics(fname, rows, list_opt(fname, opts.metrics, "metrics"))
  local groups, index = {}, {}
  for _, row in ipairs(rows) do
    local parts = {}
    for _, k in ipairs(by) do parts[#parts + 1] = k .. "=" .. text(row[k]) end
    local label = table.concat(parts, " ")
    local g = index[label]
    if not g then
      g = { key = {}, label = label, runs = 0, ok = 0, failed = 0, values = {} }
      for _, k in ipairs(by) do g.key[k] = row[k] end
      for _, m in ipairs(metrics) do g.values[m] = {} end
      index[label] = g
      groups[#groups + 1] = g
    end
    g.runs = g.runs + 1
    if ok_row(row) then
      g.ok = g.ok + 1
      for _, m in ipairs(metrics) do
        local v = numval(row[m])
        if v then g.values[m][#g.values[m] + 1] = v end
      end
    else
      g.failed = g.failed + 1
    end
  end
  table.sort(groups, key_less(by))
  for _, g in ipairs(groups) do
    g.stats = {}
    for _, m in ipairs(metrics) do g.stats[m] = stats.describe(g.values[m]) end
    g.values = nil
  end
  return { kind = "summary", by = by, metrics = metrics, groups = groups, rows = #rows }
end

M.list_opt = list_opt
M.is_rows = is_rows
M.params_of = params_of
M.text = text
M.ok_row = ok_row
M.filter = filter

return M
