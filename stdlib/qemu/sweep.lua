-- qemu.sweep: many runs from one saved state, in parallel, results in one
-- table.
--
--   qemu.sweep{ from = "warm.ckpt", matrix = {size = {1, 10}, limit = {1e8, 1e9}}, repeat = 2,
--               launch = function(p) return {plugins = {{name="insn", args={limit=p.limit}}}} end,
--               run = function(vm, p) ... return {metric = ...} end,
--               workers = 2, out = "results.csv", resume = true }
--
-- Every run is qemu.launch{restore=checkpoint, ...}: fresh overlays in its
-- own temp dir, so parallel runs never write the same image.  Workers are
-- forked copies of this shell (the run function needs no serialising);
-- they take runs one at a time from the parent, which appends each result
-- to `out` as it arrives, shows progress on a terminal, and on Ctrl-C stops
-- the workers (every QEMU reaped) with the results so far intact.

local errors = require "qemu.errors"
local check = require "qemu.check"
local json = require "qshell.json"
local core = require "qshell.proc.core"
local run_mod = require "qemu.run"

local M = {}

local RESERVED = { run = true, ["repeat"] = true, status = true, wall_s = true, error = true }

-- ---- the runs ----

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function value_text(v)
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return string.format("%d", v)
  end
  return tostring(v)
end

-- The run's identity in `out`: "k1=v1,k2=v2#rep" (stable across edits of
-- other axes' order).
local function run_key(params, names, rep)
  local parts = {}
  for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. value_text(params[k]) end
  return table.concat(parts, ";") .. "#" .. rep
end

local function expand(matrix, reps)
  local names = sorted_keys(matrix)
  local combos = { {} }
  for _, k in ipairs(names) do
    local nxt = {}
    for _, c in ipairs(combos) do
      for _, v in ipairs(matrix[k]) do
        local c2 = {}
        for kk, vv in pairs(c) do c2[kk] = vv end
        c2[k] = v
        nxt[#nxt + 1] = c2
      end
    end
    combos = nxt
  end
  local runs = {}
  for _, c in ipairs(combos) do
    for r = 1, reps do
      runs[#runs + 1] = { params = c, rep = r, key = run_key(c, names, r) }
    end
  end
  return runs, names
end

-- ---- output files ----

local function csv_field(v)
  if v == nil or v == json.null then return "" end
  local s = value_text(v)
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
local function open_out(path, names, resume, fname)
  local self = setmetatable({ path = path, names = names, done = {}, rows = 0 }, Out)
  self.kind = path:match("%.jsonl?$") and "jsonl" or "csv"
  local parent = path:match("^(.+)/[^/]+$")
  if parent and not core.stat(parent) then
    run_mod.check({ "mkdir", "-p", parent }, { command = fname })
  end
  local f = io.open(path, "rb")
  local text = f and f:read("a") or ""
  if f then f:close() end
  if text ~= "" and not resume then
    errors.raise { class = "FileExists", command = fname,
                   desc = path .. " already has results; nothing was changed",
                   hint = "pass resume=true to skip the runs it has, or choose another out=" }
  end
  -- A run killed mid-write leaves a partial last line: drop it.
  local keep = text:match("^(.*\n)") or ""
  if #keep ~= #text then
    local w = assert(io.open(path, "wb"))
    w:write(keep)
    w:close()
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
      local have = sorted_keys(row.params)
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
      self.metrics = sorted_keys(r.metrics or {})
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
  local f = assert(io.open(self.path, "rb"))
  local text = f:read("a")
  f:close()
  local recs = csv_records(text)
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
  local tmp = self.path .. ".tmp"
  local w = assert(io.open(tmp, "wb"))
  w:write(table.concat(lines, "\n"), "\n")
  w:close()
  assert(os.rename(tmp, self.path))
end

function Out:_write(line)
  -- One write per row, appended and flushed: a kill leaves whole rows.
  local f = assert(io.open(self.path, "ab"))
  f:write(line)
  f:close()
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
  local f = io.open(path, "rb")
  if not f then errors.raise { class = "BadArgument", command = "qemu.sweep.read", desc = "cannot open " .. path } end
  local text = f:read("a")
  f:close()
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
    for i, v in ipairs(vals) do parts[i] = string.format("%-" .. widths[i] .. "s", v) end
    out[#out + 1] = (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  line(columns)
  for _, c in ipairs(cells) do line(c) end
  return table.concat(out, "\n") .. "\n"
end

-- ---- one run ----

local function do_run(spec, ckpt, r)
  -- (also used by the Slurm engine's tasks: M._do_run)
  local t0 = core.now()
  local ok, res = pcall(function()
    local lopts = {}
    local base = spec.launch
    if type(base) == "function" then base = base(r.params) end
    for k, v in pairs(base or {}) do lopts[k] = v end
    lopts.restore = ckpt
    local vm <close> = qemu.launch(lopts)
    local m = spec.run(vm, r.params)
    if m == nil then m = {} end
    if type(m) ~= "table" then m = { value = m } end
    for k, v in pairs(m) do
      if type(k) ~= "string" or (type(v) ~= "number" and type(v) ~= "string" and type(v) ~= "boolean") then
        error(string.format("run returned metric %s = %s: metrics are name = number|string|boolean",
                            tostring(k), tostring(v)), 0)
      end
      if RESERVED[k] then error("run returned a metric named '" .. k .. "', a column sweep writes itself", 0) end
    end
    return m
  end)
  local out = { i = r.i, wall = core.now() - t0 }
  if ok then
    out.status, out.metrics = "ok", res
  else
    out.status, out.error = "failed", tostring(res)
  end
  return out
end

M._do_run = function(...) return do_run(...) end

-- ---- workers ----

local function read_lines(fd, buf)
  local data, msg, code = core.read(fd)
  if not data then return nil, msg, code end
  if data == "" then return nil, "eof", "closed" end
  buf.s = buf.s .. data
  local lines = {}
  while true do
    local line, rest = buf.s:match("^([^\n]*)\n(.*)$")
    if not line then break end
    lines[#lines + 1] = line
    buf.s = rest
  end
  return lines
end

-- In a forked worker: the parent's VMs are not ours to touch.
local function forget_inherited()
  for _, vm in ipairs(qemu.vms()) do
    vm._closed = true
    vm._inherited = true
  end
end

local function worker_main(spec, ckpt, runs, task_fd, result_fd)
  forget_inherited()
  core.setpgid() -- Ctrl-C on the terminal reaches the parent only
  local buf = { s = "" }
  while true do
    local lines = read_lines(task_fd, buf)
    if not lines then break end
    local stop = false
    for _, line in ipairs(lines) do
      if line == "DONE" then stop = true break end
      local r = runs[tonumber(line)]
      local res = do_run(spec, ckpt, r)
      local ok = core.write(result_fd, json.encode(res) .. "\n")
      if not ok then stop = true break end
    end
    if stop then break end
  end
  for _, vm in ipairs(qemu.vms()) do pcall(vm.close, vm) end
  core.exit_now(0)
end

local function spawn_worker(spec, ckpt, runs)
  local tr, tw = core.pipe()
  local rr, rw = core.pipe()
  local pid = core.fork()
  if not pid then errors.raise { class = "IOError", command = "qemu.sweep", desc = "fork failed" } end
  if pid == 0 then
    core.close(tw)
    core.close(rr)
    local ok, err = pcall(worker_main, spec, ckpt, runs, tr, rw)
    io.stderr:write("sweep worker: " .. tostring(err) .. "\n")
    core.exit_now(ok and 0 or 1)
  end
  core.close(tr)
  core.close(rw)
  return { pid = pid, task = tw, result = rr, buf = { s = "" }, busy = nil }
end

local function stop_worker(w, hard)
  if w.dead then return end
  pcall(core.write, w.task, "DONE\n")
  core.close(w.task)
  core.close(w.result)
  if hard then
    core.kill(w.pid, "KILL")
  else
    local deadline = core.now() + 10
    while core.now() < deadline and not core.waitpid(w.pid, true) do core.sleep(0.02) end
    core.kill(w.pid, "KILL")
  end
  core.waitpid(w.pid)
  w.dead = true
end

-- ---- progress ----

local function fmt_time(s)
  s = math.floor(s + 0.5)
  return string.format("%d:%02d", s // 60, s % 60)
end

local function progress(state, final)
  if not state.tty then return end
  local done = state.done + state.failed
  local line = string.format("[sweep] %d/%d done, %d failed, %d running, %s elapsed",
                             done, state.total, state.failed, state.running, fmt_time(core.now() - state.t0))
  if done > 0 and done < state.total then
    local per = (core.now() - state.t0) / done
    line = line .. ", ETA " .. fmt_time(per * (state.total - done))
  end
  io.stderr:write("\r\027[K" .. line .. (final and "\n" or ""))
  io.stderr:flush()
end

-- ---- the sweep ----

local sweep_opts = {
  from = "string", launch = "table|function", matrix = "table", ["repeat"] = check.positive,
  run = "function", workers = check.positive, out = "string", resume = "boolean",
  timeout = check.positive, engine = "string", progress = "boolean", slurm = "table",
}

local function cores()
  local n = 0
  local f = io.open("/proc/cpuinfo")
  if f then
    for line in f:lines() do if line:match("^processor") then n = n + 1 end end
    f:close()
  end
  return math.max(1, n)
end

-- from = a checkpoint dir, or a savevm tag (held by launch.disks): the tag
-- is turned into a checkpoint once, in the sweep's own dir.
local function resolve_from(spec, fname)
  local st = core.stat(spec.from)
  if st and st.type == "dir" then
    require("qemu.checkpoint").read(spec.from, fname)
    return spec.from
  end
  if spec.from:find("/") then
    errors.raise { class = "NotACheckpoint", command = fname, desc = "from: no such checkpoint directory " .. spec.from }
  end
  local base = type(spec.launch) == "function" and spec.launch({}) or spec.launch or {}
  if not base.disks then
    check.bad(fname, "from=%q is not a checkpoint directory; as a savevm tag it needs launch.disks holding it", spec.from)
  end
  local lopts = {}
  for k, v in pairs(base) do if k ~= "plugins" then lopts[k] = v end end
  -- -loadvm runs the guest on the image itself: work on copies, so the
  -- user's image and its current state stay as they are.
  M._from_count = (M._from_count or 0) + 1
  local dir = string.format("%s/sweep-from-%s-%d", run_mod.scratch(), spec.from, M._from_count)
  assert(core.stat(run_mod.scratch()))
  run_mod.check({ "mkdir", dir .. ".disks" }, { command = fname })
  lopts.disks = {}
  for i, d in ipairs(base.disks) do
    local dd = type(d) == "string" and { file = d } or {}
    if type(d) == "table" then for k, v in pairs(d) do dd[k] = v end end
    local copy = string.format("%s.disks/disk%d", dir, i)
    run_mod.check({ "cp", "--sparse=always", dd.file, copy }, { command = fname })
    dd.file = copy
    lopts.disks[i] = dd
  end
  lopts.loadvm = spec.from
  local vm <close> = qemu.launch(lopts)
  vm:checkpoint(dir)
  return dir
end

function M.sweep(spec)
  local fname = "qemu.sweep"
  check.options(fname, spec, sweep_opts)
  if not spec.run then check.bad(fname, "run= (a function(vm, params) returning metrics) is required") end
  if not spec.from then check.bad(fname, "from= (a checkpoint directory or a savevm tag) is required") end
  local matrix = spec.matrix or {}
  for k, axis in pairs(matrix) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      check.bad(fname, "matrix keys are parameter names; got %s", tostring(k))
    end
    if RESERVED[k] then check.bad(fname, "matrix key '%s' is a column sweep writes itself", k) end
    if type(axis) ~= "table" or #axis == 0 then
      check.bad(fname, "matrix axis '%s' is empty: give it a list of at least one value", k)
    end
  end
  local reps = spec["repeat"] or 1
  if math.type(reps) ~= "integer" then check.bad(fname, "repeat must be a whole number") end
  local engine = spec.engine or os.getenv("QSHELL_SWEEP_ENGINE") or "local"
  if engine ~= "local" and engine ~= "slurm" then check.bad(fname, "engine must be \"local\" or \"slurm\"") end

  local runs, names = expand(matrix, reps)
  for i, r in ipairs(runs) do r.i = i end
  -- A Slurm task writes its own result file; only the submitter owns `out`.
  local in_task = os.getenv("QSHELL_SWEEP_JOB")
  local out = spec.out and not (in_task and in_task ~= "") and open_out(spec.out, names, spec.resume, fname)

  if engine == "slurm" then
    return require("qemu.slurm").sweep(spec, runs, names, out, resolve_from)
  end

  local todo = {}
  local skipped = 0
  for _, r in ipairs(runs) do
    if out and out.done[r.key] then skipped = skipped + 1 else todo[#todo + 1] = r.i end
  end
  local ckpt = #todo > 0 and resolve_from(spec, fname) or nil
  local state = { total = #runs, done = skipped, failed = 0, running = 0, t0 = core.now(),
                  tty = spec.progress ~= false and core.isatty(2) }
  local results = {}
  local function record(res)
    local r = runs[res.i]
    r.status, r.metrics, r.error, r.wall = res.status, res.metrics, res.error, res.wall
    results[#results + 1] = r
    if res.status == "ok" then state.done = state.done + 1 else state.failed = state.failed + 1 end
    if out then out:append(r) end
  end

  local nworkers = math.min(spec.workers or cores(), #todo)
  local workers = {}
  local next_task = 1
  local function feed(w)
    if next_task <= #todo then
      local i = todo[next_task]
      next_task = next_task + 1
      w.busy, w.started = i, core.now()
      state.running = state.running + 1
      core.write(w.task, i .. "\n")
    else
      w.busy = nil
    end
  end
  local interrupted
  local ok, err = pcall(function()
    for k = 1, nworkers do
      workers[k] = spawn_worker(spec, ckpt, runs)
      feed(workers[k])
    end
    while true do
      local fds, busy = {}, 0
      for _, w in ipairs(workers) do
        if not w.dead and w.busy then
          fds[#fds + 1] = w.result
          busy = busy + 1
        end
      end
      if busy == 0 then break end
      progress(state)
      local ready, msg, code = core.poll(fds, 0.5)
      if not ready then
        if code == "interrupted" then
          require("qshell.proc.core") -- the flag was consumed by poll's caller
          error({ interrupted = true }, 0)
        end
        error(msg, 0)
      end
      local readyset = {}
      for _, fd in ipairs(ready) do readyset[fd] = true end
      for k, w in ipairs(workers) do
        if not w.dead and w.busy and readyset[w.result] then
          local lines, _, rcode = read_lines(w.result, w.buf)
          if not lines then
            -- The worker died mid-run: record it, start another.
            local st = core.waitpid(w.pid)
            w.dead = true
            state.running = state.running - 1
            record({ i = w.busy, status = "failed", wall = core.now() - w.started,
                     error = "the worker died" .. (st and (" (" .. st.desc .. ")") or "") .. (rcode and "" or "") })
            core.sweep_stale()
            workers[k] = spawn_worker(spec, ckpt, runs)
            feed(workers[k])
          else
            for _, line in ipairs(lines) do
              local res = json.decode(line)
              state.running = state.running - 1
              record(res)
              feed(w)
            end
          end
        elseif not w.dead and w.busy and spec.timeout and core.now() - w.started > spec.timeout then
          -- A run over its time: kill its worker (PDEATHSIG takes its QEMU).
          core.kill(w.pid, "KILL")
          core.waitpid(w.pid)
          w.dead = true
          state.running = state.running - 1
          record({ i = w.busy, status = "failed", wall = core.now() - w.started,
                   error = string.format("timed out after %g s", spec.timeout) })
          core.sweep_stale()
          workers[k] = spawn_worker(spec, ckpt, runs)
          feed(workers[k])
        end
      end
    end
  end)
  for _, w in ipairs(workers) do stop_worker(w, not ok) end
  if not ok then
    if out then pcall(out.finish, out) end
    core.sweep_stale()
    progress(state, true)
    if type(err) == "table" and err.interrupted then
      errors.raise { class = "Interrupted", command = fname,
                     desc = string.format("interrupted after %d of %d runs; the results so far are in %s",
                                          state.done + state.failed, state.total, spec.out or "(no out=)"),
                     hint = "run it again with resume=true to do the rest" }
    end
    error(err, 0)
  end
  if out then out:finish() end
  progress(state, true)
  table.sort(results, function(a, b) return a.i < b.i end)
  return { total = #runs, ok = state.done - skipped, failed = state.failed, skipped = skipped,
           out = spec.out, results = results, checkpoint = ckpt }
end

return M
