-- qemu.results.file: a sweep's results file, CSV or JSONL (by its name).
--
-- The writer appends one whole row per finished run (a killed sweep leaves
-- whole rows), widens a CSV header when a later run brings a new metric,
-- keeps the runs' provenance in the sidecar, and on resume reads
-- which runs are done.  load() is the strict reader every consumer uses
-- (qemu.sweep.read, qemu.results, rerun): bad input is rejected with its
-- line number, a truncated last line (a killed sweep) is left out with a
-- warning, and nothing is ever rewritten.  format() is qemu.sweep.format.
-- A Tally counts results as an engine reports them and feeds the writer.
-- One writer per file: the sweep that opens it holds an exclusive lock on
-- <out>.lock for its whole life (lock() below).

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local json = require "qshell.json"
local fs = require "qemu.util.fs"
local plan = require "qemu.sweep.plan"
local provenance = require "qemu.sweep.provenance"
local sys = require "qshell.os"

local M = {}

-- The columns of every row besides parameters and metrics, in file order:
-- run, repeat, (parameters), then these.
M.FIXED = { "status", "wall_s", "error", "host", "started", "prov" }
local FIXED_SET = { run = true, ["repeat"] = true }
for _, k in ipairs(M.FIXED) do FIXED_SET[k] = true end

-- One run's result, the one record shape every file of a sweep holds: a
-- results file's JSONL line (with the run's repeat, params and prov id
-- besides), and a Slurm task's line (task-N.jsonl, which the submitter
-- gathers into the results file).  Absent values are JSON null.
function M.result_record(r)
  return { run = r.run, status = r.status, metrics = r.metrics or json.object {}, error = r.error or json.null,
           wall_s = r.wall_s, host = r.host or json.null, started = r.started or json.null,
           provenance = r.provenance or json.null }
end

-- A Slurm task's result line, and back: the record, or nil for a line a
-- dying node left half written.
function M.task_line(r)
  return json.encode(M.result_record(r)) .. "\n"
end
function M.read_task_line(line)
  local ok, r = pcall(json.decode, line, { depth = M.MAX_DEPTH })
  if not ok or type(r) ~= "table" then return nil end
  -- a task line of an earlier qshell: key, wall, setup
  if r.run == nil and type(r.key) == "string" then r.run, r.wall_s, r.provenance = r.key, r.wall, r.setup end
  if type(r.run) ~= "string" then return nil end
  for _, k in ipairs { "error", "host", "started", "provenance" } do
    if r[k] == json.null then r[k] = nil end
  end
  return r
end

-- A results file may be someone else's (a colleague's, a cluster's): the
-- file may be any size (10^5 rows are tens of MB), but one line (a CSV
-- record) of over MAX_LINE bytes is refused before it is parsed, and a
-- JSONL line nested deeper than MAX_DEPTH levels before it is decoded
-- whole.  A sweep's line is a few KB, nested 4 levels.
M.MAX_LINE = 1 << 20
M.MAX_DEPTH = 32

local function too_much(fname, path, n, what)
  errors.raise { class = "BadResults", command = fname,
                 desc = string.format("%s:%d: %s; it was not read", path, n, what),
                 hint = "a sweep never writes such a line: the file was made elsewhere or damaged" }
end

-- A line of at most MAX_LINE bytes: its size; BadResults otherwise.
local function check_line(fname, path, n, line)
  if #line > M.MAX_LINE then
    too_much(fname, path, n, string.format("the line is %d bytes (a sweep's line is a few KB; qshell reads " ..
                                           "lines up to %g MiB)", #line, M.MAX_LINE / 1048576))
  end
end

-- decode_line(fname, path, n, line) -> ok, value: JSONL line n decoded,
-- as pcall(json.decode, line) would; a line too long or nested too deep
-- raises BadResults naming path:n instead, before it is decoded.
local function decode_line(fname, path, n, line)
  check_line(fname, path, n, line)
  local ok, v = pcall(json.decode, line, { depth = M.MAX_DEPTH })
  if not ok and tostring(v):find("nested deeper than", 1, true) then
    too_much(fname, path, n, string.format("the line nests arrays and objects deeper than %d levels " ..
                                           "(a sweep's line has 4)", M.MAX_DEPTH))
  end
  return ok, v
end


-- A CSV cell: quoted when it holds a comma, a quote or a line break.
function M.csv_quote(s)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

local function csv_field(v)
  if v == nil or v == json.null then return "" end
  local s = plan.value_text(v)
  if math.type(v) == "float" and s:find("[.e]") then s = string.format("%.9g", v) end
  if type(v) == "table" then s = json.encode(v) end
  return M.csv_quote(s)
end

local function csv_parse_line(line)
  if not line:find('"', 1, true) then
    -- no quoted field (nearly every record): split at the commas
    local out, k = {}, 0
    for field in (line .. ","):gmatch("([^,]*),") do
      k = k + 1
      out[k] = field
    end
    return out
  end
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

-- Split text into complete records (CSV fields may hold newlines in
-- quotes) -> records, their first line numbers, and the line number of an
-- incomplete last record (no final newline, or a quote left open) or nil.
local function csv_records(text)
  local recs, lines, cur, inq, n, first = {}, {}, {}, false, 0, 1
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    if not inq and not line:find('"', 1, true) then
      -- a whole record on one line (nearly every one)
      recs[#recs + 1] = line
      lines[#recs] = n
    else
      if #cur == 0 then first = n end
      cur[#cur + 1] = line
      local _, q = line:gsub('"', "")
      if q % 2 == 1 then inq = not inq end
      if not inq then
        recs[#recs + 1] = table.concat(cur, "\n")
        lines[#recs] = first
        cur = {}
      end
    end
  end
  local partial
  if #cur > 0 then partial = first
  elseif not text:match("\n$") and text ~= "" then partial = n + 1 end
  return recs, lines, partial
end

-- The lock file of a results file, and this process's locks (a forked
-- worker closes its copies: the lock is the parent's alone).
local function lock_path(path) return path .. ".lock" end
local held = {}

-- This process's command line, for the holder's record.
local function command_line()
  local f = io.open("/proc/self/cmdline", "rb")
  local text = f and f:read(4096) or ""
  if f then f:close() end
  return (text:gsub("%z$", ""):gsub("%z", " "))
end

local function holder_text(h)
  return string.format("pid %s on %s, started %s: %s", tostring(h.pid), tostring(h.host), tostring(h.started),
                       tostring(h.command))
end

-- M.lock(path, fname) -> lock: the one writer's lock on a results file
-- (flock(2) on path.lock, which names the holder: pid, host, start time,
-- command).  Another sweep holding it: ResultsBusy naming it.  A lock file
-- left by a holder that died on this host is taken over; one from another
-- host (whose lock this host may not see) is refused with the fix.
function M.lock(path, fname)
  local lp = lock_path(path)
  -- the record first: the lock is held without it for one write only
  local me = provenance.host()
  local record = json.encode { pid = sys.getpid(), host = me, started = provenance.now_text(),
                               command = command_line() } .. "\n"
  local fd, prev, code = sys.lock(lp)
  if not fd then
    if code ~= "busy" then errors.from_code(fname, "cannot lock the results file: " .. tostring(prev), code) end
    -- a holder that has just taken it writes its record at once
    local ok, h
    local deadline = sys.now() + 1
    repeat
      ok, h = pcall(json.decode, fs.read(lp) or "")
      -- (a record of a holder gone from this host is the one before it)
      if ok and type(h) == "table" and (h.host ~= me or sys.stat("/proc/" .. tostring(h.pid))) then break end
      sys.sleep(0.01)
    until sys.now() > deadline
    errors.raise { class = "ResultsBusy", command = fname,
                   desc = string.format("%s is being written by another sweep (%s); nothing was changed", path,
                                        ok and type(h) == "table" and holder_text(h) or "its holder is starting"),
                   hint = "wait for it to end (then resume=true does the runs it has not), or choose another out=" }
  end
  local ok, h = pcall(json.decode, prev)
  if prev ~= "" and ok and type(h) == "table" and h.host ~= me then
    sys.unlock(fd)
    errors.raise { class = "ResultsBusy", command = fname,
                   desc = string.format("%s is locked by a sweep on another host (%s); this host cannot tell " ..
                                        "whether it still runs; nothing was changed", path, holder_text(h)),
                   hint = "if that sweep is over (killed, its host down), remove " .. lp .. " and start again" }
  end
  if prev ~= "" and ok and type(h) == "table" then
    io.stderr:write(string.format("qshell: %s: taking over the lock of a sweep that is gone (%s)\n", path,
                                  holder_text(h)))
  end
  local lock = { fd = fd, path = lp }
  sys.rewrite(fd, record)
  held[lock] = true
  return lock
end

-- M.unlock(lock): release it and remove the lock file.
function M.unlock(lock)
  if lock and held[lock] then
    held[lock] = nil
    sys.unlock(lock.fd, lock.path)
  end
end

-- In a forked worker: close the copies of the parent's locks (the files
-- stay, the parent still holds them).
function M.forget_locks()
  for lock in pairs(held) do sys.close(lock.fd) end
  held = {}
end

local Out = {}
Out.__index = Out

-- Open `path` for appending results (locked: see M.lock); with resume,
-- read what is there.
function M.open(path, names, resume, fname)
  local self = setmetatable({ path = path, names = names, done = {}, rows = 0 }, Out)
  self.kind = path:match("%.jsonl?$") and "jsonl" or "csv"
  local parent = path:match("^(.+)/[^/]+$")
  if parent then fs.mkdir_p(parent, fname) end
  self.lock = M.lock(path, fname)
  local ok, err = pcall(Out._read, self, path, names, resume, fname)
  if not ok then
    M.unlock(self.lock)
    error(err, 0)
  end
  return self
end

-- Release the file for the next writer.
function Out:close()
  M.unlock(self.lock)
  self.lock = nil
end

function Out:_read(path, names, resume, fname)
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
  for _, k in ipairs(M.FIXED) do want[#want + 1] = k end
  if self.kind == "csv" then
    local recs = csv_records(text)
    if #recs > 0 then
      local header = csv_parse_line(recs[1])
      if header[#want - 3] == "error" and header[#want - 2] ~= "host" then
        errors.raise { class = "BadArgument", command = fname,
                       desc = path .. " was written by a qshell without provenance columns (host, started, prov)",
                       hint = "resume into another out= (qemu.results.read and qshell results read both files)" }
      end
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
    local n = 0
    for line in text:gmatch("([^\n]*)\n") do
      n = n + 1
      if line ~= "" then
        local ok, row = decode_line(fname, path, n, line)
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
  end
  self.want = want
  return self
end

-- Keep a run's provenance in the sidecar (once per distinct provenance;
-- the sidecar is replaced whole, never edited in place).
function Out:note_provenance(id, prov)
  self.sidecar = self.sidecar or provenance.read_sidecar(self.path)
  if self.sidecar.provenance[id] then return end
  self.sidecar.provenance[id] = prov
  fs.write(provenance.sidecar(self.path), provenance.canonical(self.sidecar) .. "\n", "qemu.sweep")
end

-- Say in the sidecar what this sweep is (its parameters and run count).
function Out:note_sweep(info)
  self.sidecar = self.sidecar or provenance.read_sidecar(self.path)
  self.sidecar.format = 1
  self.sidecar.results = self.path:match("([^/]+)$")
  self.sidecar.sweep = info
  fs.write(provenance.sidecar(self.path), provenance.canonical(self.sidecar) .. "\n", "qemu.sweep")
end

function Out:append(r)
  local line
  if r.prov and r.provenance then self:note_provenance(r.prov, r.provenance) end
  if self.kind == "jsonl" then
    local rec = M.result_record(r)
    rec["repeat"], rec.params, rec.prov = r.rep, r.params, r.prov or json.null
    line = json.encode(rec) .. "\n"
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
    local f = { csv_field(r.run), csv_field(r.rep) }
    for _, k in ipairs(self.names) do f[#f + 1] = csv_field(r.params[k]) end
    f[#f + 1] = csv_field(r.status)
    f[#f + 1] = string.format("%.3f", r.wall_s)
    f[#f + 1] = csv_field(r.error)
    f[#f + 1] = csv_field(r.host)
    f[#f + 1] = csv_field(r.started)
    f[#f + 1] = csv_field(r.prov)
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
  -- One write per row, all of it or none (a full disk cuts a half row off
  -- again): a kill or a failed write leaves whole rows.
  local ok, msg, code = sys.append(self.path, line)
  if not ok then
    errors.from_code("qemu.sweep",
                     string.format("cannot append a result to %s; the sweep stopped, the rows before are whole", msg),
                     code,
                     { hint = "free space (or fix the file system), then run it again with resume=true for the rest" })
  end
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

local function bad(fname, path, line, fmt, ...)
  errors.raise { class = "BadResults", command = fname,
                 desc = string.format("%s:%d: " .. fmt, path, line, ...),
                 hint = "the file is left as it is; fix or remove that line (or read another file)" }
end

-- Columns that stay text even when they look like numbers (a prov id
-- of hex digits only, say).
local TEXT = { run = true, status = true, error = true, host = true, started = true, prov = true }

-- M.load(path [, fname]) -> rows: the rows of a results file (CSV or JSONL,
-- by the name), each keyed by column with numbers as numbers and
-- parameters and metrics at the top level (JSONL rows also keep
-- `provenance`).  rows.columns (file order), rows.params, rows.metrics
-- (names), rows.lines[i] (the line row i starts on), rows.warnings, and
-- rows.provenance (prov id -> provenance: the sidecar's, or the JSONL rows' own).
function M.load(path, fname)
  fname = fname or "qemu.results.read"
  local text = fs.read(path)
  if not text then
    errors.raise { class = "BadArgument", command = fname, desc = "cannot open " .. path .. ": no such results file" }
  end
  local rows = { columns = {}, params = {}, metrics = {}, lines = {}, warnings = {}, provenance = {}, path = path }
  local function add_name(list, set, k)
    if not set[k] then set[k] = true; list[#list + 1] = k end
  end
  local pset, mset, cset = {}, {}, {}
  if path:match("%.jsonl?$") then
    local n, complete = 0, text:match("^(.*\n)") or ""
    for line in complete:gmatch("([^\n]*)\n") do
      n = n + 1
      if line:match("%S") then
        local ok, r = decode_line(fname, path, n, line)
        if not ok or type(r) ~= "table" or r.run == nil or type(r.params) ~= "table" then
          bad(fname, path, n, "not a sweep result (a JSON object with run and params): %s", line:sub(1, 60))
        end
        local row = {}
        for _, k in ipairs { "run", "repeat", "status", "wall_s", "error", "host", "started", "prov" } do
          if r[k] ~= json.null then row[k] = r[k] end
        end
        for _, k in ipairs(plan.sorted_keys(r.params)) do
          if FIXED_SET[k] then bad(fname, path, n, "parameter %s has the name of a column every row has", k) end
          row[k] = r.params[k]
          add_name(rows.params, pset, k)
        end
        if type(r.metrics) == "table" then
          for _, k in ipairs(plan.sorted_keys(r.metrics)) do
            if r.metrics[k] ~= json.null then row[k] = r.metrics[k] end
            add_name(rows.metrics, mset, k)
          end
        end
        if type(r.provenance) == "table" then
          row.provenance = r.provenance
          if r.prov and r.prov ~= json.null then rows.provenance[r.prov] = r.provenance end
        end
        rows[#rows + 1] = row
        rows.lines[#rows] = n
      end
    end
    if #complete ~= #text then
      rows.warnings[#rows.warnings + 1] = string.format(
        "%s:%d: the last line is incomplete (a sweep killed while writing it?); left out", path, n + 1)
    end
    for _, k in ipairs { "run", "repeat" } do add_name(rows.columns, cset, k) end
    for _, k in ipairs(rows.params) do add_name(rows.columns, cset, k) end
    for _, k in ipairs(M.FIXED) do add_name(rows.columns, cset, k) end
    for _, k in ipairs(rows.metrics) do add_name(rows.columns, cset, k) end
    rows.sweep = provenance.read_sidecar(path).sweep
    return rows
  end
  local recs, lines, partial = csv_records(text)
  if partial then
    rows.warnings[#rows.warnings + 1] = string.format(
      "%s:%d: the last line is incomplete (a sweep killed while writing it?); left out", path, partial)
  end
  if #recs == 0 then return rows end
  for i, rec in ipairs(recs) do check_line(fname, path, lines[i], rec) end
  local header = csv_parse_line(recs[1])
  if header[1] ~= "run" or header[2] ~= "repeat" then
    bad(fname, path, 1, "the header starts with %s, not run,repeat: not a sweep's results", recs[1]:sub(1, 40))
  end
  local status_at
  for j, k in ipairs(header) do
    if k == "" then bad(fname, path, 1, "column %d has no name", j) end
    if cset[k] then bad(fname, path, 1, "column %s appears twice", k) end
    cset[k] = true
    if k == "status" and not status_at then status_at = j end
  end
  if not status_at then bad(fname, path, 1, "the header has no status column: not a sweep's results") end
  rows.columns = header
  for j = 3, status_at - 1 do add_name(rows.params, pset, header[j]) end
  for j = status_at + 1, #header do
    if not FIXED_SET[header[j]] then add_name(rows.metrics, mset, header[j]) end
  end
  -- A record of exactly the header's width without quotes (what a sweep
  -- writes) is split by one pattern; any other by the full parser.
  local whole = #header <= 32 and ("^" .. string.rep("([^,]*),", #header - 1) .. "([^,]*)$") or nil
  local text_col = {}
  for j, k in ipairs(header) do text_col[j] = TEXT[k] or false end
  for i = 2, #recs do
    local rec = recs[i]
    local f = whole and not rec:find('"', 1, true) and { rec:match(whole) }
    if not f or #f == 0 then f = csv_parse_line(rec) end
    if #f > #header then
      bad(fname, path, lines[i], "%d fields, but the header has %d columns", #f, #header)
    end
    if not (#f == 1 and f[1] == "") then
      local row = {}
      for j = 1, #f do
        local v = f[j]
        if v ~= "" then row[header[j]] = text_col[j] and v or tonumber(v) or v end
      end
      rows[#rows + 1] = row
      rows.lines[#rows] = lines[i]
    end
  end
  local side = provenance.read_sidecar(path)
  rows.provenance = side.provenance
  rows.sweep = side.sweep
  return rows
end

---@api qemu.sweep.read qemu.sweep.read(path) -> rows
--- The rows of one results file that `qemu.sweep` wrote (CSV or JSONL, by its name).
---
--- The same reader as `qemu.results.read`, for one file: numbers come back
--- as numbers, empty cells as nil, quoted CSV cells as written; a row with
--- more fields than the header, a JSONL line that is not a result, or a
--- header that is not a sweep's raises `BadResults` naming `file:line`; a
--- truncated last line (a sweep killed while writing it) is left out and
--- noted in `rows.warnings`. The file is never rewritten by reading it.
---
---     local rows = qemu.sweep.read("results.csv")
---     for _, r in ipairs(rows) do print(r.run, r.status, r.wall_s) end
---
---@param path string  the results file (`.csv`, or `.jsonl`/`.json` for JSONL)
---@return table rows  a list of rows, each keyed by column: `run` (the run's name, e.g.
---   "size=1000#2"), `repeat`, each parameter, `status` ("ok" or "failed"), `wall_s`,
---   `error`, `host`, `started`, `prov` (its setup's id), each metric (JSONL rows also
---   `provenance`, the whole setup); and the fields `columns` (the column names in file
---   order), `params` and `metrics` (the names of the parameters and metrics),
---   `lines` (`lines[i]`: the line row i starts on), `warnings` (strings), `provenance`
---   (`prov` id -> provenance, from the provenance sidecar or the JSONL rows), `sweep` (the
---   sidecar's `{total=, params=, started=}`, or nil) and `path`
---@error BadArgument  `path` is not a string, or there is no such file
---@error BadResults  a line that is not a sweep's result (too long, nested too deep, more
---   fields than the header, a header that is not a sweep's): the error names `file:line`
function M.read(path)
  check.arg("qemu.sweep.read", 1, path, "string")
  return M.load(path, "qemu.sweep.read")
end

---@api qemu.sweep.format qemu.sweep.format(rows [, columns]) -> text
--- The rows of a results file as an aligned text table.
---
--- One line per row under a header line, columns two spaces apart;
--- fractional numbers with 4 significant digits, missing cells empty.
--- For statistics over the repeats use `qemu.results.summary`.
---
---     io.write(qemu.sweep.format(qemu.sweep.read("results.csv"), { "run", "status", "wall_s" }))
---
---@param rows table  rows from `qemu.sweep.read` or `qemu.results.read` (or a list of tables)
---@param columns? string[]  the columns to show, in order (default: `rows.columns`, else the
---   sorted keys of the first row)
---@return string text  the table, one line per row, ending in a newline
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

-- M.tally(runs, out, skipped [, provenance_for]): out is the writer (or
-- nil); provenance_for(run) gives the provenance of a run whose worker died
-- before reporting one.  With a results file the rows are not kept: the
-- sweep's memory stays flat however many rows arrive, and results() reads
-- them back; without one they are kept as they come.
function M.tally(runs, out, skipped, provenance_for)
  return setmetatable({ runs = runs, out = out, ok = 0, failed = 0, skipped = skipped or 0, kept = {},
                        keep = not (out and out.path), setups = {}, provenance_for = provenance_for }, Tally)
end

-- Record one result {i=, status=, metrics=, error=, wall_s=, host=, started=,
-- provenance=} of run i.
function Tally:record(res)
  local run = self.runs[res.i]
  local r = { i = run.i, run = run.run, params = run.params, rep = run.rep, status = res.status,
              metrics = res.metrics, error = res.error, wall_s = res.wall_s, host = res.host,
              started = res.started, interrupted = res.interrupted }
  local prov = res.provenance
  if prov == json.null then prov = nil end -- a Slurm task's line without one
  if prov == nil and self.provenance_for then
    local ok, p = pcall(self.provenance_for, run)
    prov = ok and p or nil
  end
  if prov then
    -- one table per setup, however many rows name it (a worker's or a
    -- task's line brings its own copy)
    local id = provenance.id(prov)
    self.setups[id] = self.setups[id] or prov
    r.provenance, r.prov = self.setups[id], id
  end
  if self.keep then self.kept[#self.kept + 1] = r end
  self.last = r
  if res.status == "ok" then self.ok = self.ok + 1 else self.failed = self.failed + 1 end
  if self.out then self.out:append(r) end
end

-- The runs recorded, in matrix order, each {i=, run=, params=, rep=, status=,
-- metrics=, error=, wall_s=, host=, started=, prov=, provenance=}: those kept,
-- or the rows the results file gained since it was opened, read back from it
-- (as qemu.results.read gives them).
function Tally:results()
  if self.keep then return self.kept end
  local byname = {}
  for _, run in ipairs(self.runs) do byname[run.run] = run end
  local rows = M.load(self.out.path, "qemu.sweep")
  local fixed = { run = true, ["repeat"] = true, status = true, wall_s = true, error = true, host = true,
                  started = true, prov = true, provenance = true }
  local pset = {}
  for _, k in ipairs(rows.params) do pset[k] = true end
  local list = {}
  for _, row in ipairs(rows) do
    local run = byname[row.run]
    if run and not self.out.done[row.run] then
      local metrics = {}
      for k, v in pairs(row) do
        if not fixed[k] and not pset[k] then metrics[k] = v end
      end
      list[#list + 1] = { i = run.i, run = run.run, params = run.params, rep = run.rep, status = row.status,
                          metrics = row.status == "ok" and metrics or nil, error = row.error, wall_s = row.wall_s,
                          host = row.host, started = row.started, prov = row.prov,
                          provenance = self.setups[row.prov] or rows.provenance[row.prov] }
    end
  end
  table.sort(list, function(a, b) return a.i < b.i end)
  return list
end

-- The last finished run in a few words (for progress lines).
function Tally:last_text(width)
  local r = self.last
  if not r then return nil end
  local parts = { r.run, r.status }
  if r.status == "ok" then
    local keys = plan.sorted_keys(r.metrics or {})
    for i = 1, math.min(#keys, 2) do
      local v = r.metrics[keys[i]]
      parts[#parts + 1] = keys[i] .. "=" .. (math.type(v) == "float" and string.format("%.4g", v) or tostring(v))
    end
  else
    parts[#parts + 1] = (tostring(r.error or ""):gsub("%s+", " ")):sub(1, 40)
  end
  local s = table.concat(parts, " ")
  if width and #s > width then s = s:sub(1, width - 3) .. "..." end
  return s
end

function Tally:done() return self.ok + self.failed + self.skipped end

function Tally:finish()
  if self.out then self.out:finish() end
  table.sort(self.kept, function(a, b) return a.i < b.i end)
end

return M
