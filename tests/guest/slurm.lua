-- The Slurm engine of qemu.sweep on a real one-node cluster (munge,
-- slurmctld, slurmd from the distribution), started and stopped here.
-- (Run on the first QEMU only: what it tests is qshell's and Slurm's side.)
local T = require "t"
local fs = require "qemu.util.fs"
local sys = require "qshell.os"

local tmp = T.tmpdir()
-- A cluster that takes arrays of 3 tasks at most (MaxArraySize=3; Slurm's
-- default is 1001): sweeps of more runs must be packed, not refused.
local ENV = require("slurm_cluster").start(1, "CLUSTER_MAX_ARRAY_SIZE=3").ENV

-- A small checkpoint (an empty VM with a disk) to sweep from.
local ckpt = tmp .. "/empty.ckpt"
do
  local vm <close> = qemu.launch { memory = "64M", disks = { qemu.disk.create(tmp .. "/d.qcow2", "8M") } }
  vm:checkpoint(ckpt)
end

local function json_file(path)
  return require("qshell.json").decode(fs.slurp(path, "test"))
end

local function script(out, engine, xs, slurm)
  local path = tmp .. "/slurm-sweep.lua"
  local f = assert(io.open(path, "w"))
  f:write(string.format([[
    local r = qemu.sweep {
      from = %q, out = %q, %s
      matrix = { x = { ]] .. (xs or "1, 2, 3, 4") .. [[ } },
      slurm = ]] .. (slurm or "{ tasks = 2 }") .. [[,
      run = function(vm, p)
        return { status_was = vm:status(), x2 = p.x * 2, node = os.getenv("SLURMD_NODENAME") or "?",
                 task = tonumber(os.getenv("SLURM_ARRAY_TASK_ID")) }
      end,
    }
    print("SWEEP", r.ok, r.failed, r.skipped, r.jobid)
  ]], ckpt, out, engine and ('engine = "' .. engine .. '",') or ""))
  f:close()
  return path
end

T.test("a 4-run sweep as a Slurm job array gathers 4 rows", function()
    local out = tmp .. "/slurm.csv"
    local c, stdout, e = T.sh(ENV .. " ./qshell run " .. script(out, "slurm"))
    T.eq(c, 0, e)
    T.match(stdout, "SWEEP\t4\t0\t0\t%d+")
    local rows = qemu.sweep.read(out)
    T.eq(#rows, 4)
    local xs, tasks = {}, {}
    for _, r in ipairs(rows) do
      T.eq(r.status, "ok")
      T.eq(r.status_was, "running")
      T.eq(r.x2, r.x * 2)
      xs[r.x] = true
      tasks[r.task] = true
    end
    T.ok(xs[1] and xs[2] and xs[3] and xs[4], "every run is there once")
    T.ok(tasks[0] and tasks[1], "both array tasks ran runs")
    -- provenance made in the tasks reaches the gathered rows
    for _, r in ipairs(rows) do
      T.eq(r.host, fs.first_line("/proc/sys/kernel/hostname"), "the host that ran it")
      T.match(r.started, "^%d+%-%d+%-%d+T")
      T.eq(r.prov, rows[1].prov, "one setup")
    end
    local setup = qemu.results.read(out).provenance[rows[1].prov]
    T.eq(setup.checkpoint, sys.realpath(ckpt), "the shared checkpoint named, not the node's copy")
    -- the two tasks started at once on the one node: the checkpoint was copied once
    local log = fs.read(out .. ".slurm/1/stage.log") or ""
    T.eq(select(2, log:gsub("\n", "")), 1, "one copy for the node: " .. log)
    local copy = json_file(out .. ".slurm/1/stage.log").copy
    T.ok(fs.is_file(copy .. "/manifest.json"), "the copy is in the node's scratch: " .. copy)
    local v = qemu.version()
    T.eq(setup.qemu, string.format("%d.%d.%d", v.major, v.minor, v.micro))
    -- no accounting on this cluster: sacct says so, and once the controller
    -- forgets the job (MinJobAge 4 s) the status shows the states the
    -- submitter recorded
    local jobid = stdout:match("SWEEP\t4\t0\t0\t(%d+)")
    local sc, so, se = T.sh(ENV .. " sacct -n -j " .. jobid)
    T.ok(sc ~= 0 and (so .. se):find("accounting storage is disabled"), "sacct without accounting: " .. so .. se)
    local deadline, forgotten = qemu.now() + 60, false
    repeat
      qemu.sleep(1)
      local qc, qo, qe = T.sh(ENV .. " squeue -h -t all -j " .. jobid)
      forgotten = qc ~= 0 and (qo .. qe):find("Invalid job id") ~= nil
    until forgotten or qemu.now() > deadline
    T.ok(forgotten, "the controller forgot job " .. jobid)
    sc, so, se = T.sh(ENV .. " ./qshell sweep --status " .. out)
    T.eq(sc, 0, se)
    local n = 0
    for _, state in so:gmatch("\n  (%d+) +(%S+)") do
      n = n + 1
      T.eq(state, "COMPLETED", so)
    end
    T.eq(n, 2, so)
  end)

  T.test("qshell sweep --slurm picks the engine; resume skips what is done", function()
    local out = tmp .. "/slurm2.csv"
    local c, stdout, e = T.sh(ENV .. " ./qshell sweep --slurm " .. script(out))
    T.eq(c, 0, e)
    T.match(stdout, "SWEEP\t4\t0\t0")
    -- drop two rows and resume: only those two run again
    local l = {}
    for line in io.lines(out) do l[#l + 1] = line end
    local f = assert(io.open(out, "w"))
    f:write(table.concat(l, "\n", 1, 3), "\n")
    f:close()
    local p = script(out)
    local txt = io.open(p):read("a"):gsub("matrix =", "resume = true, matrix =")
    f = assert(io.open(p, "w")); f:write(txt); f:close()
    c, stdout, e = T.sh(ENV .. " ./qshell sweep --slurm " .. p)
    T.eq(c, 0, e)
    T.match(stdout, "SWEEP\t2\t0\t2")
    T.eq(#qemu.sweep.read(out), 4)
    -- a later job finds the node's copy by the manifest's hash: nothing copied
    T.eq(fs.read(out .. ".slurm/2/stage.log"), nil, "the copy of an earlier job reused")
  end)

  T.test("more runs than the cluster's MaxArraySize: packed into that many tasks, every run once", function()
    local out = tmp .. "/packed.csv"
    -- (stage=false: every run reads the shared checkpoint, no copy made)
    local c, stdout, e = T.sh(ENV .. " ./qshell run " .. script(out, "slurm", "1, 2, 3, 4, 5, 6, 7", "{ stage = false }"))
    T.eq(c, 0, e)
    T.match(stdout, "SWEEP\t7\t0\t0\t%d+")
    local rows = qemu.sweep.read(out)
    T.eq(#rows, 7)
    local xs, tasks = {}, {}
    for _, r in ipairs(rows) do
      T.eq(r.status, "ok")
      T.ok(not xs[r.x], "run x=" .. r.x .. " once")
      xs[r.x] = true
      tasks[r.task] = (tasks[r.task] or 0) + 1
    end
    T.eq(tasks[0] + tasks[1] + tasks[2], 7, "three tasks ran the 7 runs")
    T.eq(tasks[3], nil, "no task index beyond MaxArraySize-1")
    local sub = json_file(out .. ".slurm/1/submission.json")
    T.eq(sub.ntasks, 3)
    T.ok(table.concat(sub.sbatch, " "):find("--array=0-2", 1, true), "sbatch --array=0-2")
    local plan = json_file(out .. ".slurm/1/plan.json")
    T.eq(plan.limits.max_array_size, 3, "the limit read from scontrol")
    T.eq(fs.read(out .. ".slurm/1/stage.log"), nil, "stage=false copies nothing")
    -- a tasks= over the limit is cut to it, and said so
    out = tmp .. "/packed2.csv"
    c, stdout, e = T.sh(ENV .. " ./qshell run " .. script(out, "slurm", "1, 2, 3, 4, 5", "{ tasks = 5 }"))
    T.eq(c, 0, e)
    T.match(stdout, "SWEEP\t5\t0\t0")
    T.match(e, "slurm={tasks=5} is over this cluster's limit of 3 array tasks")
    T.eq(json_file(out .. ".slurm/1/submission.json").ntasks, 3)
  end)

  T.test("the Slurm engine needs a script file, and refuses local-only options", function()
    local c, _, e = T.sh(ENV .. " ./qshell -e " .. string.format("%q",
      'qemu.sweep{engine="slurm", out="' .. tmp .. '/x.csv", from=' .. string.format("%q", ckpt) .. ', run=function() end}'))
    T.eq(c, 1)
    T.match(e, "qshell run FILE")
    T.raises(function() qemu.sweep { engine = "slurm", from = ckpt, workers = 2, out = tmp .. "/y.csv",
                                      run = function() end } end, "BadArgument", "slurm={tasks=N}")
    T.raises(function() qemu.sweep { engine = "slurm", from = ckpt, run = function() end } end,
             "BadArgument", "out=")
    T.raises(function() qemu.sweep { engine = "slurm", from = ckpt, out = tmp .. "/z.csv", slurm = { stage = "sbcast" },
                                      run = function() end } end, "BadArgument", 'must be "node"')
  end)

T.run()
