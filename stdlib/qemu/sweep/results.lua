-- qemu.sweep.results: a sweep's results file, CSV or JSONL (by its name).
--
-- The writer appends one whole row per finished run (a killed sweep leaves
-- whole rows), widens a CSV header when a later run brings a new metric,
-- and on resume reads which runs are done.  read() and format() are the
-- public qemu.sweep.read / qemu.sweep.format.  A Tally counts results as an
-- engine reports them and feeds the writer.

local errors = require "qemu.errors"
local check = require "qemu.check"
local json = require "qshell.json"
local fs = require "qemu.fs"
local plan = require "qemu.sweep.plan"

local M = {}


local function csv_field(v)
  if v == nil or v == json.null then return "" end
  local s = plan.value_text(v)
  if math.type(v) == "float" and s:find("[.e]") then s = string.format("%.9g", v) end
  if type(v) == "table" then s = json.encode(v) end
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

local function csv_parse_line(line)
  local out, i, n = {}, 1, #line
  while i <= n + 1 do
    local c = line:sub(i, i)
    if c == '"' then
      local buf, j = {}, i + 1
      while j <= n do
        local d = line:sub(j, j)
        if d == '"' then
          if line:sub(j + 1, j + 1) == '"' then buf[#buf + 1] = '"'; j = j + 2
          else j = j + 1 break end
        else buf[#buf + 1] = d; j = j + 1 end
      end
      out[#out + 1] = table.concat(buf)
      i = j + 1
    else
      local j = line:find(",", i, true) or (n + 1)
      out[#out + 1] = line:sub(i, j - 1)
      i = j + 1
    end
  end
  return out
end

-- Split text into complete records (CSV fields may hold newlines in quotes).
local function csv_records(text)
  local recs, cur, inq = {}, {}, false
  for line in text:gmatch("([^\n]*)\n") do
    cur[#cur + 1] = line
    local _, q = line:gsub('"', "")
    if q % 2 == 1 then inq = not inq end
    if not inq then
      recs[#recs + 1] = table.concat(cur, "\n")
      cur = {}
    end
  end
  return recs
end

local Out = {}
Out.__index = Out

-- Open `path` for appending results; with resume, read what is there.
function M.open(path, names, resume, fname)
  local self = setmetatable({ path = path, names = names, done = {}, rows = 0 }, Out)
  self.kind = path:match("%.jsonl?$") and "jsonl" or "csv"
  local parent = path:match("^(.+)/[^/]+$")
  if parent then fs.mkdir_p(parent, fname) end
  local text = fs.read(path) or ""
  if text ~= "" and not resume then
    errors.raise { class = "FileExists", command = fname,
                   desc = path .. " already has results; nothing was changed",
                   hint = "pass resume=true to skip the runs it has, or choose another out=" }
  end
  -- A run killed mid-write leaves a partial last line: drop it.
  local keep = text:match("^(.*\n)") or ""
  if #keep ~= #text then
    fs.write(path, keep, fname)
    text = keep
  end
  local want = { "run", "repeat" }
  for _, k in ipairs(names) do want[#want + 1] = k end
  for _, k in ipairs { "status", "wall_s", "error" } do want[#want + 1] = k end
  if self.kind == "csv" then
    local recs = csv_records(text)
    if #recs > 0 then
      local header = csv_parse_line(recs[1])
      for i, k in ipairs(want) do
        if header[i] ~= k then
          errors.raise { class = "BadArgument", command = fname,
                         desc = string.format("%s has the columns %s; this sweep writes %s ...", path,
                                              table.concat(header, ","), table.concat(want, ",")),
                         hint = "use another out= for a sweep with other parameters" }
        end
      end
      self.header = header
      self.metrics = {}
      for i = #want + 1, #header do self.metrics[#self.metrics + 1] = header[i] end
      for r = 2, #recs do
        local row = csv_parse_line(recs[r])
        if row[1] and row[1] ~= "" then self.done[row[1]] = true; self.rows = self.rows + 1 end
      end
    end
  else
    for line in text:gmatch("([^\n]+)\n") do
      local ok, row = pcall(json.decode, line)
      if not ok or type(row) ~= "table" or type(row.params) ~= "table" then
        errors.raise { class = "BadArgument", command = fname, desc = path .. " holds a line that is not a sweep result" }
      end
      local have = plan.sorted_keys(row.params)
      if table.concat(have, ",") ~= table.concat(names, ",") then
        errors.raise { class = "BadArgument", command = fname,
                       desc = string.format("%s has results with parameters %s; this sweep's are %s", path,
                                            table.concat(have, ","), table.concat(names, ",")),
                       hint = "use another out= for a sweep with other parameters" }
      end
      self.done[row.run] = true
      self.rows = self.rows + 1
    end
  end
  self.want = want
  return self
end

function Out:append(r)
  local line
  if self.kind == "jsonl" then
    line = json.encode { run = r.key, ["repeat"] = r.rep, params = r.params, status = r.status,
                         wall_s = r.wall, error = r.error or json.null, metrics = r.metrics or json.object {} } .. "\n"
  else
    if not self.header then
      -- The metric columns come from the first successful run.
      if r.status ~= "ok" then
        self.pending = self.pending or {}
        self.pending[#self.pending + 1] = r
        return
      end
      self.metrics = plan.sorted_keys(r.metrics or {})
      self.header = {}
      for _, k in ipairs(self.want) do self.header[#self.header + 1] = k end
      for _, k in ipairs(self.metrics) do self.header[#self.header + 1] = k end
      local hdr = {}
      for i, k in ipairs(self.header) do hdr[i] = csv_field(k) end
      self:_write(table.concat(hdr, ",") .. "\n")
      local pending = self.pending or {}
      self.pending = nil
      for _, p in ipairs(pending) do self:append(p) end
    end
    local f = { csv_field(r.key), csv_field(r.rep) }
    for _, k in ipairs(self.names) do f[#f + 1] = csv_field(r.params[k]) end
    f[#f + 1] = csv_field(r.status)
    f[#f + 1] = string.format("%.3f", r.wall)
    f[#f + 1] = csv_field(r.error)
    local known = {}
    for _, k in ipairs(self.metrics) do known[k] = true end
    local new = {}
    for k in pairs(r.metrics or {}) do if not known[k] then new[#new + 1] = k end end
    if #new > 0 then
      -- A metric no earlier run had (runs may differ: a plugin on in some):
      -- widen the header, the rows so far get empty cells.
      table.sort(new)
      self:_widen(new)
    end
    for _, k in ipairs(self.metrics) do f[#f + 1] = csv_field(r.metrics and r.metrics[k]) end
    line = table.concat(f, ",") .. "\n"
  end
  self:_write(line)
end

-- Rewrite the file with more metric columns (to a temp file, then rename:
-- a kill leaves the old file or the new one, never half of one).
function Out:_widen(names)
  local recs = csv_records(fs.slurp(self.path, "qemu.sweep"))
  local lines = {}
  for i, rec in ipairs(recs) do
    local row = csv_parse_line(rec)
    while #row < #self.header do row[#row + 1] = "" end
    for _, n in ipairs(names) do row[#row + 1] = i == 1 and n or "" end
    for j, v in ipairs(row) do row[j] = csv_field(v) end
    lines[#lines + 1] = table.concat(row, ",")
  end
  for _, n in ipairs(names) do
    self.metrics[#self.metrics + 1] = n
    self.header[#self.header + 1] = n
  end
  fs.write(self.path, table.concat(lines, "\n") .. "\n", "qemu.sweep")
end

function Out:_write(line)
  -- One write per row, appended and flushed: a kill leaves whole rows.
  fs.append(self.path, line, "qemu.sweep")
end

function Out:finish()
  if self.pending and #self.pending > 0 then
    -- No run succeeded: write the failures with no metric columns.
    self.metrics = {}
    self.header = {}
    for _, k in ipairs(self.want) do self.header[#self.header + 1] = k end
    self:_write(table.concat(self.header, ",") .. "\n")
    local pending = self.pending
    self.pending = nil
    for _, p in ipairs(pending) do self:append(p) end
  end
end

-- qemu.sweep.read(path) -> rows: the results of a sweep, CSV or JSONL, as a
-- list of tables keyed by column (CSV) or the JSON objects (JSONL).  Numbers
-- in CSV cells are numbers.
function M.read(path)
  check.arg("qemu.sweep.read", 1, path, "string")
  local text = fs.read(path)
  if not text then errors.raise { class = "BadArgument", command = "qemu.sweep.read", desc = "cannot open " .. path } end
  local rows = {}
  if path:match("%.jsonl?$") then
    for line in text:gmatch("([^\n]+)\n") do rows[#rows + 1] = json.decode(line) end
    return rows
  end
  local recs = csv_records(text)
  local header = recs[1] and csv_parse_line(recs[1]) or {}
  for i = 2, #recs do
    local row = {}
    for j, v in ipairs(csv_parse_line(recs[i])) do
      if header[j] then row[header[j]] = (v ~= "" and tonumber(v)) or (v ~= "" and v or nil) end
    end
    rows[#rows + 1] = row
  end
  rows.columns = header
  return rows
end

-- qemu.sweep.format(rows [, columns]) -> the rows as an aligned text table
function M.format(rows, columns)
  columns = columns or rows.columns
  if not columns then
    columns = {}
    for k in pairs(rows[1] or {}) do columns[#columns + 1] = k end
    table.sort(columns)
  end
  local cells, widths = {}, {}
  for i, c in ipairs(columns) do widths[i] = #c end
  for r, row in ipairs(rows) do
    cells[r] = {}
    for i, c in ipairs(columns) do
      local v = row[c]
      local s = v == nil and "" or (math.type(v) == "float" and string.format("%.4g", v) or tostring(v))
      cells[r][i] = s
      widths[i] = math.max(widths[i], #s)
    end
  end
  local out = {}
  local function line(vals)
    local parts = {}
    -- Padded by hand: string.format's widths stop at 99.
    for i, v in ipairs(vals) do parts[i] = v .. string.rep(" ", widths[i] - #v) end
    out[#out + 1] = (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  line(columns)
  for _, c in ipairs(cells) do line(c) end
  return table.concat(out, "\n") .. "\n"
end


-- ---- the tally an engine reports to ----

local Tally = {}
Tally.__index = Tally

-- M.tally(runs, out, skipped): out is the writer (or nil).
function M.tally(runs, out, skipped)
  return setmetatable({ runs = runs, out = out, ok = 0, failed = 0, skipped = skipped or 0,
                        results = {} }, Tally)
end

-- Record one result {i=, status=, metrics=, error=, wall=} of run i.
function Tally:record(res)
  local r = self.runs[res.i]
  r.status, r.metrics, r.error, r.wall = res.status, res.metrics, res.error, res.wall
  self.results[#self.results + 1] = r
  if res.status == "ok" then self.ok = self.ok + 1 else self.failed = self.failed + 1 end
  if self.out then self.out:append(r) end
end

function Tally:done() return self.ok + self.failed + self.skipped end

function Tally:finish()
  if self.out then self.out:finish() end
  table.sort(self.results, function(a, b) return a.i < b.i end)
end

return M
