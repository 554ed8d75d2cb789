-- qemu.sweep.local: the local engine.  Workers are forked copies of this
-- shell (the run function needs no serialising, and sweeps from -e and the
-- interactive shell work); each takes run numbers one at a time from the
-- parent over a pipe and answers with one JSON result line.  The parent
-- records results as they arrive, shows progress on a terminal, replaces a
-- worker that died or ran over its time (its QEMU dies with it), and on
-- Ctrl-C stops the workers with every QEMU reaped and the results so far
-- intact.
--
-- Engine interface (shared with qemu.sweep.slurm):
--   engine.run(job) where job = {spec=, runs=, todo= (runs to do), source=
--   (from qemu.sweep.source), tally= (qemu.sweep.results tally), fname=}

local errors = require "qemu.errors"
local json = require "qshell.json"
local sys = require "qshell.os"
local proc = require "qshell.proc.core"
local host = require "qemu.host"
local runner = require "qemu.sweep.runner"
local provenance = require "qemu.sweep.provenance"

local M = {}

local function read_lines(fd, buf)
  local data, msg, code = sys.read(fd)
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

local function worker_main(job, task_fd, result_fd)
  -- The parent's VMs are inert copies here (the C cores see they are not
  -- this process's); the VM objects are told so too.
  for _, vm in ipairs(qemu.vms()) do vm:_forget() end
  sys.setpgid() -- Ctrl-C on the terminal reaches the parent only
  local buf = { s = "" }
  while true do
    local lines = read_lines(task_fd, buf)
    if not lines then break end
    local stop = false
    for _, line in ipairs(lines) do
      if line == "DONE" then stop = true break end
      local res = runner.run(job.spec, job.source, job.runs[tonumber(line)])
      if not sys.write(result_fd, json.encode(res) .. "\n") then stop = true break end
    end
    if stop then break end
  end
  for _, vm in ipairs(qemu.vms()) do pcall(vm.close, vm) end
  sys.exit_now(0)
end

local function spawn_worker(job)
  local tr, tw = sys.pipe()
  local rr, rw = sys.pipe()
  local pid = sys.fork()
  if not pid then errors.raise { class = "IOError", command = job.fname, desc = "fork failed" } end
  if pid == 0 then
    sys.close(tw)
    sys.close(rr)
    local ok, err = pcall(worker_main, job, tr, rw)
    io.stderr:write("sweep worker: " .. tostring(err) .. "\n")
    sys.exit_now(ok and 0 or 1)
  end
  sys.close(tr)
  sys.close(rw)
  return { pid = pid, task = tw, result = rr, buf = { s = "" }, busy = nil }
end

local function stop_worker(w, hard)
  if w.dead then return end
  pcall(sys.write, w.task, "DONE\n")
  sys.close(w.task)
  sys.close(w.result)
  if hard then
    sys.kill(w.pid, "KILL")
  else
    local deadline = sys.now() + 10
    while sys.now() < deadline and not sys.waitpid(w.pid, true) do sys.sleep(0.02) end
    sys.kill(w.pid, "KILL")
  end
  sys.waitpid(w.pid)
  w.dead = true
end

local function show(p, tally, total, running)
  local done = tally:done()
  local line = string.format("%d/%d done, %d failed, %d running, %s elapsed", done, total,
                             tally.failed, running, host.fmt_time(p:elapsed()))
  local new = tally.ok + tally.failed
  if new > 0 and done < total then
    line = line .. ", ETA " .. host.fmt_time(p:elapsed() / new * (total - done))
  end
  local last = tally:last_text(60)
  if last then line = line .. " | last: " .. last end
  return line
end

function M.run(job)
  local spec, tally = job.spec, job.tally
  local total = #job.runs
  local p = host.progress("sweep", { enabled = spec.progress })
  local nworkers = math.min(spec.workers or host.cores(), #job.todo)
  local workers = {}
  local next_task, running = 1, 0
  local function feed(w)
    if next_task <= #job.todo then
      local r = job.todo[next_task]
      next_task = next_task + 1
      w.busy, w.started = r.i, sys.now()
      running = running + 1
      sys.write(w.task, r.i .. "\n")
    else
      w.busy = nil
    end
  end
  local function replace(k, res)
    local w = workers[k]
    w.dead = true
    sys.close(w.task)
    sys.close(w.result)
    running = running - 1
    res.i, res.status, res.wall = w.busy, "failed", sys.now() - w.started
    res.host = provenance.host()
    tally:record(res)
    proc.sweep_stale()
    workers[k] = spawn_worker(job)
    feed(workers[k])
  end
  local ok, err = pcall(function()
    for k = 1, nworkers do
      workers[k] = spawn_worker(job)
      feed(workers[k])
    end
    while true do
      local fds = {}
      for _, w in ipairs(workers) do
        if not w.dead and w.busy then fds[#fds + 1] = w.result end
      end
      if #fds == 0 then break end
      p:show(show(p, tally, total, running))
      local ready, msg, code = sys.poll(fds, 0.5)
      if not ready then
        if code == "interrupted" then error({ interrupted = true }, 0) end
        errors.from_code(job.fname, "poll: " .. tostring(msg), code)
      end
      local readyset = {}
      for _, fd in ipairs(ready) do readyset[fd] = true end
      for k, w in ipairs(workers) do
        if not w.dead and w.busy and readyset[w.result] then
          local lines = read_lines(w.result, w.buf)
          if not lines then
            -- The worker died mid-run: record it, start another.
            local st = sys.waitpid(w.pid)
            replace(k, { error = "the worker died" .. (st and (" (" .. st.desc .. ")") or "") })
          else
            for _, line in ipairs(lines) do
              running = running - 1
              tally:record(json.decode(line))
              feed(w)
            end
          end
        elseif not w.dead and w.busy and spec.timeout and sys.now() - w.started > spec.timeout then
          -- A run over its time: kill its worker (PDEATHSIG takes its QEMU).
          sys.kill(w.pid, "KILL")
          sys.waitpid(w.pid)
          replace(k, { error = string.format("timed out after %g s", spec.timeout) })
        end
      end
    end
  end)
  for _, w in ipairs(workers) do stop_worker(w, not ok) end
  if not ok then
    proc.sweep_stale()
    p:done(show(p, tally, total, 0))
    if type(err) == "table" and err.interrupted then
      errors.raise { class = "Interrupted", command = job.fname,
                     desc = string.format("interrupted after %d of %d runs; the results so far are in %s",
                                          tally:done(), total, spec.out or "(no out=)"),
                     hint = "run it again with resume=true to do the rest" }
    end
    error(err, 0)
  end
  p:done(show(p, tally, total, 0))
end

return M
