-- Soak and fault tier: a sweep of short runs on 2 workers while a chaos
-- loop SIGKILLs random QEMUs, SIGSTOPs one past the run timeout, kills a
-- worker, fills the results disk for a moment and SIGKILLs the submitting
-- qshell (each time resumed).  At the end every run is recorded exactly
-- once (failures with their cause), and nothing is left: no QEMU, no temp
-- dir, no lock, the submitter's fds back to their baseline.
--
-- QSHELL_SOAK=full (make test-soak): 300 runs; otherwise (make test) 80.
-- Needs root (the results live on a small tmpfs that is filled).
local T = require "t"
local sys = require "qshell.os"

local FULL = os.getenv("QSHELL_SOAK") == "full"
local RUNS = FULL and 300 or 80
local RUN_TIMEOUT = 8
local tmp = T.tmpdir()

local function slurp(p)
  local f = io.open(p, "rb"); if not f then return nil end
  local s = f:read("a"); f:close(); return s
end

-- The processes whose TMPDIR is dir (the sweep's qshells and QEMUs),
-- living ones only: {pid=, comm=}.
local function procs_in(dir)
  local want = "TMPDIR=" .. dir .. "\0"
  local out = {}
  for _, name in ipairs(sys.listdir("/proc") or {}) do
    local pid = tonumber(name)
    if pid and pid ~= sys.getpid() then
      local env = slurp("/proc/" .. pid .. "/environ")
      if env and ("\0" .. env):find("\0" .. want, 1, true) and T.pid_alive(pid) then
        out[#out + 1] = { pid = pid, comm = (slurp("/proc/" .. pid .. "/comm") or ""):gsub("%s+$", "") }
      end
    end
  end
  return out
end

local function pick(list, filter)
  local c = {}
  for _, p in ipairs(list) do if filter(p) then c[#c + 1] = p end end
  return #c > 0 and c[math.random(#c)] or nil
end

T.test(string.format("a sweep of %d runs under faults: every run once, nothing left behind", RUNS), function()
  -- the checkpoint every run restores: the default guest at its prompt
  local ckpt = tmp .. "/soak.ckpt"
  do
    local vm <close> = qemu.guest.launch {}
    vm:checkpoint(ckpt)
  end
  -- the results on a small file system of their own, to be filled
  local mnt = T.tmpfs(tmp .. "/results", "2m")
  local out, filler = mnt .. "/soak.csv", mnt .. "/filler"
  -- the sweep runs with a TMPDIR of its own: its processes are found by it
  local sdir = tmp .. "/sweep-tmp"
  os.execute("mkdir -p " .. sdir)
  local script = tmp .. "/soak-sweep.lua"
  local f = assert(io.open(script, "w"))
  f:write(string.format([[
    local sys = require "qshell.os"
    local function fds() return #sys.listdir("/proc/self/fd") end
    local before = fds()
    local ns = {}
    for i = 1, %d do ns[i] = i end
    local r = qemu.sweep {
      from = %q, out = %q, workers = 2, resume = true, timeout = %d, progress = false,
      matrix = { n = ns },
      run = function(vm, p)
        local v = vm.console:run("sleep 0.2; echo $((" .. p.n .. " * 3))")
        -- rows of 3 KB: a row appended while the disk is full needs a
        -- page it cannot have
        return { v = tonumber(v), pad = string.rep("x", 3000) }
      end,
    }
    collectgarbage(); collectgarbage()
    print("SOAK", r.ok, r.failed, r.skipped, before, fds())
  ]], RUNS, ckpt, out, RUN_TIMEOUT))
  f:close()

  local starts, n = 0, 0
  local pid, state_dir
  local function start()
    starts = starts + 1
    state_dir = string.format("%s/start%d", tmp, starts)
    os.execute("mkdir -p " .. state_dir)
    T.sh(string.format("(TMPDIR=%s ./qshell run %s >%s/out 2>%s/err & echo $! >%s/pid; wait $!; echo $? >%s/rc) " ..
                       ">/dev/null 2>&1 &", sdir, script, state_dir, state_dir, state_dir, state_dir))
    local deadline = T.now() + 10
    repeat qemu.sleep(0.02); pid = tonumber(slurp(state_dir .. "/pid")) until pid or T.now() > deadline
    T.ok(pid, "the sweep started")
  end
  local faults = { kill_qemu = 0, stop_qemu = 0, kill_worker = 0, fill_disk = 0, kill_submitter = 0 }
  local causes = {} -- why each start ended
  -- each kind at least once first, then at random (the submitter twice)
  local order = { "kill_qemu", "stop_qemu", "kill_worker", "fill_disk", "kill_submitter", "kill_qemu",
                  "kill_submitter" }
  local random_kinds = { "kill_qemu", "kill_qemu", "stop_qemu", "kill_worker", "fill_disk" }
  local function inject(kind)
    local list = procs_in(sdir)
    if kind == "kill_qemu" or kind == "stop_qemu" then
      local q = pick(list, function(p) return p.comm:match("^qemu") end)
      if not q then return false end
      sys.kill(q.pid, kind == "kill_qemu" and "KILL" or "STOP")
    elseif kind == "kill_worker" then
      local w = pick(list, function(p) return p.comm == "qshell" and p.pid ~= pid end)
      if not w then return false end
      sys.kill(w.pid, "KILL")
    elseif kind == "fill_disk" then
      -- full until the sweep stops on it (or 3 s)
      os.execute("dd if=/dev/zero of=" .. filler .. " bs=4k 2>/dev/null")
      local t = T.now() + 3
      while T.now() < t and not slurp(state_dir .. "/rc") do qemu.sleep(0.05) end
      os.remove(filler)
    elseif kind == "kill_submitter" then
      sys.kill(pid, "KILL")
    end
    faults[kind] = faults[kind] + 1
    return true
  end

  start()
  local deadline = T.now() + (FULL and 780 or 420)
  local next_fault = T.now() + 3
  local final
  while T.now() < deadline do
    local rc = tonumber(slurp(state_dir .. "/rc") or "")
    if rc then
      local o = slurp(state_dir .. "/out") or ""
      if rc == 0 and o:match("SOAK") then
        final = o
        break
      end
      local e = (slurp(state_dir .. "/err") or ""):match("([^\n]*%(%u%a+%))") or ("exit " .. rc)
      causes[#causes + 1] = e
      -- a disk filled just now: give it back before the resume
      os.remove(filler)
      start()
    elseif T.now() >= next_fault then
      n = n + 1
      local kind = order[n] or random_kinds[math.random(#random_kinds)]
      if not inject(kind) then n = n - 1 end -- nothing of that kind now: later
      next_fault = T.now() + (FULL and 2.5 or 1.5)
    end
    qemu.sleep(0.1)
  end
  T.ok(final, "the sweep completed within the time (starts: " .. starts .. ")")
  for kind, c in pairs(faults) do T.ok(c > 0, kind .. " injected before the sweep ended") end

  -- every run exactly once; a failure says why
  local rows = qemu.sweep.read(out)
  T.eq(#rows, RUNS, "one row per run")
  local seen, ok, failed = {}, 0, 0
  for _, r in ipairs(rows) do
    T.ok(not seen[r.n], "run " .. tostring(r.n) .. " recorded once")
    seen[r.n] = true
    if r.status == "ok" then
      ok = ok + 1
      T.eq(r.v, 3 * r.n)
    else
      failed = failed + 1
      T.ok(type(r.error) == "string" and r.error ~= "", "a failed run has its cause")
    end
  end
  -- the last start: its own fds are back where they began
  T.ok(#causes >= 3, "the submitter stopped at least three times (killed twice, a full disk)")
  local full_disk = false
  for _, c in ipairs(causes) do full_disk = full_disk or c:find("No space left on device", 1, true) ~= nil end
  T.ok(full_disk, "the full disk stopped the sweep, naming the cause")
  local sok, sfailed, sskipped, before, after = final:match("SOAK\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t(%d+)")
  T.eq(tonumber(after), tonumber(before), "the submitter's fds back to their baseline")
  T.eq(tonumber(sok) + tonumber(sfailed) + tonumber(sskipped), RUNS)

  -- nothing left: QEMUs (stragglers of killed submitters end within the
  -- QMP quit wait), temp dirs, the lock
  local left
  local until_t = T.now() + 30
  repeat
    left = procs_in(sdir)
    if #left > 0 then qemu.sleep(0.2) end
  until #left == 0 or T.now() > until_t
  T.eq(#left, 0, "no process of the sweep left")
  T.ok(not T.exists(out .. ".lock"), "no lock left")
  local _, dirs = T.sh("ls -A " .. sdir)
  T.eq(dirs, "", "no temp dir left")

  local kinds = {}
  for k, c in pairs(faults) do kinds[#kinds + 1] = k .. "=" .. c end
  table.sort(kinds)
  io.stderr:write(string.format("  soak: %d runs (%d ok, %d failed with their cause), %d starts; faults: %s\n",
                                RUNS, ok, failed, starts, table.concat(kinds, " ")))
  local seen_causes = {}
  for _, c in ipairs(causes) do seen_causes[c] = (seen_causes[c] or 0) + 1 end
  for c, k in pairs(seen_causes) do io.stderr:write(string.format("  soak: a start ended (%dx): %s\n", k, c)) end
end)

T.run()
