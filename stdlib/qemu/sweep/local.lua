-- qemu.sweep.local: the local engine.  Workers are forked copies of this
-- shell (the run function needs no serialising, and sweeps from -e and the
-- interactive shell work); each gets run numbers from the parent over a
-- pipe, says "start N" as it begins one and answers with one JSON result
-- line.  The parent keeps two runs with each worker while there are as
-- many runs left as workers: the one running and the next, whose VM the
-- worker starts while the current run goes on (see qemu.sweep.runner); the
-- last runs go one at a time, to whichever worker is free.
-- The parent records results as they arrive, shows progress on a
-- terminal, replaces a worker that died or ran over its time (its QEMUs
-- die with it; the runs it had not begun go back to the others), and on
-- Ctrl-C stops the workers with every QEMU reaped and the results so far
-- intact.
--
-- Engine interface (shared with qemu.sweep.slurm):
--   engine.run(job) where job = {spec=, runs=, todo= (runs to do), source=
--   (from qemu.sweep.source), tally= (qemu.results.file tally), fname=}

local errors = require "qemu.errors"
local json = require "qshell.json"
local sys = require "qshell.os"
local proc = require "qshell.proc.core"
local host = require "qemu.util.host"
local runner = require "qemu.sweep.runner"
local provenance = require "qemu.sweep.provenance"
local results = require "qemu.results.file"

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
  for _, vm in ipairs(require("qemu.vm.launch").live()) do vm:_forget() end
  results.forget_locks()
  sys.setpgid() -- Ctrl-C on the terminal reaches the parent only
  local buf, queue, stop = { s = "" }, {}, false
  -- What the parent sent: wait for it when nothing is queued.
  local function take(wait)
    if not wait then
      local ready = sys.poll({ task_fd }, 0)
      if not ready or #ready == 0 then return end
    end
    local lines = read_lines(task_fd, buf)
    if not lines then
      stop = true
      return
    end
    for _, line in ipairs(lines) do
      if line == "DONE" then stop = true else queue[#queue + 1] = tonumber(line) end
    end
  end
  -- The run after this one, once this one's VM is up (by then the parent
  -- has answered the result sent before it with the next run).
  local function next_run()
    take(false)
    return queue[1] and job.runs[queue[1]]
  end
  while true do
    while #queue == 0 and not stop do take(true) end
    if #queue == 0 then break end
    local i = table.remove(queue, 1)
    if not sys.write(result_fd, "start " .. i .. "\n") then break end
    local res = runner.run(job.spec, job.source, job.runs[i], next_run)
    if not sys.write(result_fd, json.encode(res) .. "\n") then break end
  end
  runner.drop_warm()
  for _, vm in ipairs(require("qemu.vm.launch").live()) do pcall(vm.close, vm) end
  sys.exit_now(0)
end

local function spawn_worker(job)
  local tr, tw, tcode = sys.pipe()
  if not tr then errors.from_code(job.fname, "pipe: " .. tostring(tw), tcode) end
  local rr, rw, rcode = sys.pipe()
  if not rr then
    sys.close(tr)
    sys.close(tw)
    errors.from_code(job.fname, "pipe: " .. tostring(rw), rcode)
  end
  local pid, _, code = sys.fork()
  if not pid then
    for _, fd in ipairs { tr, tw, rr, rw } do sys.close(fd) end
    errors.from_code(job.fname, "fork failed", code)
  end
  if pid == 0 then
    sys.close(tw)
    sys.close(rr)
    local ok, err = pcall(worker_main, job, tr, rw)
    io.stderr:write("sweep worker: " .. tostring(err) .. "\n")
    sys.exit_now(ok and 0 or 1)
  end
  sys.close(tr)
  sys.close(rw)
  return { pid = pid, task = tw, result = rr, buf = { s = "" }, busy = nil, assigned = {} }
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
  local back = {} -- runs a replaced worker had not begun: first to go again
  local function take()
    if #back > 0 then return table.remove(back, 1) end
    if next_task <= #job.todo then
      next_task = next_task + 1
      return job.todo[next_task - 1].i
    end
  end
  -- Give w a run to do and, while as many runs are left as workers, the
  -- one after it (a worker holding runs the others could do would make
  -- the sweep's end wait for it).
  local function left() return #back + #job.todo - next_task + 1 end
  local function feed(w)
    while #w.assigned < (left() >= nworkers and 2 or 1) do
      local i = take()
      if not i then return end
      w.assigned[#w.assigned + 1] = i
      sys.write(w.task, i .. "\n")
    end
  end
  local function replace(k, res)
    local w = workers[k]
    w.dead = true
    sys.close(w.task)
    sys.close(w.result)
    if w.busy then
      running = running - 1
      res.i, res.status, res.wall_s = w.busy, "failed", sys.now() - w.started
      res.host = provenance.host()
      tally:record(res)
    end
    for _, i in ipairs(w.assigned) do
      if i ~= w.busy then back[#back + 1] = i end
    end
    proc.sweep_stale()
    workers[k] = spawn_worker(job)
    feed(workers[k])
  end
  local ok, err = pcall(function()
    for k = 1, nworkers do workers[k] = spawn_worker(job) end
    -- A run each first, then the next ones.
    for _, w in ipairs(workers) do
      local i = take()
      if i then
        w.assigned[1] = i
        sys.write(w.task, i .. "\n")
      end
    end
    for _, w in ipairs(workers) do feed(w) end
    while true do
      local fds = {}
      for _, w in ipairs(workers) do
        if not w.dead and #w.assigned > 0 then fds[#fds + 1] = w.result end
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
        if not w.dead and #w.assigned > 0 and readyset[w.result] then
          local lines = read_lines(w.result, w.buf)
          if not lines then
            -- The worker died mid-run: record it, start another.
            local st = sys.waitpid(w.pid)
            replace(k, { error = "the worker died" .. (st and (" (" .. st.desc .. ")") or "") })
          else
            for _, line in ipairs(lines) do
              local started = tonumber(line:match("^start (%d+)$"))
              if started then
                w.busy, w.started = started, sys.now()
                running = running + 1
              else
                running = running - 1
                local res = json.decode(line)
                for j, i in ipairs(w.assigned) do
                  if i == res.i then table.remove(w.assigned, j) break end
                end
                w.busy = nil
                tally:record(res)
                feed(w)
              end
            end
          end
        elseif not w.dead and w.busy and spec.timeout and sys.now() - w.started > spec.timeout then
          -- A run over its time: kill its worker (PDEATHSIG takes its QEMUs).
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
