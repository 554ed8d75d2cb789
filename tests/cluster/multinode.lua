-- Sweeps on a Slurm cluster of a controller and three compute nodes
-- (tests/cluster/cluster.sh start DIR 3): each slurmd in its own network and
-- UTS namespace, the shared directory seen at another path by node3, one
-- munge key, and Slurm's accounting (slurmdbd).  The tasks land on every
-- node; a node killed mid-sweep loses and duplicates nothing; a task over
-- its time limit is recorded as timed out; a killed submitter's sweep
-- resumes, and its forgotten job's states come from sacct; the options
-- reach sbatch.
local T = require "t"
local fs = require "qemu.util.fs"
local sys = require "qshell.os"

local cluster = "tests/cluster/cluster.sh"
local QSHELL = sys.realpath("./qshell")

-- with Slurm's accounting (slurmdbd and a private MariaDB): sacct answers
local c3 = require("slurm_cluster").start(3, "CLUSTER_ACCOUNTING=1")
local cdir, sh = c3.dir, c3.sh
local SHARED, ELSEWHERE = c3.env.CLUSTER_SHARED, c3.env.CLUSTER_SHARED_ELSEWHERE

-- The QEMUs the nodes ran live in their scratch dirs: none may be left.
local function node_qemus()
  local _, out = T.sh("for p in $(pgrep -f qemu-system-x86_64); do tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null " ..
                      "| grep -q '^TMPDIR=" .. cdir .. "/nodes/' && echo $p; done")
  return out:gsub("%s+$", "")
end

-- The checkpoint, in the shared directory.
local ckpt = SHARED .. "/empty.ckpt"
do
  local vm <close> = qemu.launch { memory = "64M", disks = { qemu.disk.create(SHARED .. "/d.qcow2", "8M") } }
  vm:checkpoint(ckpt)
end

-- A sweep script in the shared directory: N runs over `tasks` array
-- tasks, each run sleeping `sleep` seconds (x = `slow`: `slow_sleep`).
local nscript = 0
local function script(o)
  nscript = nscript + 1
  local xs = {}
  for i = 1, o.runs do xs[i] = i end
  local path = string.format("%s/sweep%d.lua", SHARED, nscript)
  local slurm = string.format("tasks = %d, shared = { %q, %q }%s", o.tasks, SHARED, ELSEWHERE, o.slurm or "")
  fs.write(path, string.format([[
local r = qemu.sweep {
  from = %q, out = %q, engine = "slurm", %s
  matrix = { x = { %s } },
  slurm = { %s },
  run = function(vm, p)
    qemu.sleep(p.x == %d and %g or %g)
    return { status_was = vm:status(), x2 = p.x * 2, scratch = os.getenv("TMPDIR"),
             restarts = tonumber(os.getenv("SLURM_RESTART_COUNT") or "0") }
  end,
}
print("SWEEP", r.ok, r.failed, r.skipped, r.jobid, table.concat(r.nodes or {}, ","))
]], ckpt, o.out, o.resume and "resume = true," or "", table.concat(xs, ", "), slurm, o.slow or -1,
    o.slow_sleep or 0, o.sleep or 0), "test")
  return path
end

local function rows_of(out)
  local rows = qemu.results.read(out)
  local seen, dup = {}, nil
  for _, r in ipairs(rows) do
    if seen[r.run] then dup = r.run end
    seen[r.run] = true
  end
  T.eq(dup, nil, "a run twice in the results")
  return rows
end

local function wait_for(what, fn, timeout)
  local deadline = qemu.now() + (timeout or 60)
  while qemu.now() < deadline do
    local v = fn()
    if v then return v end
    qemu.sleep(0.5)
  end
  error("waited in vain for " .. what, 2)
end

-- The array task running on a node, from squeue: its index, or nil.
local function task_on(jobid, node)
  local _, out = sh("squeue -h -r -j " .. jobid .. " -o '%K %N %T'")
  for idx, n, st in out:gmatch("(%d+) (%S+) (%S+)") do
    if n == node and st == "RUNNING" then return tonumber(idx) end
  end
end

local function background(cmd, name)
  local pidf, outf = cdir .. "/" .. name .. ".pid", cdir .. "/" .. name .. ".out"
  T.eq(sh(string.format("(%s > %s 2>&1; echo $? > %s.rc) & echo $! > %s", cmd, outf, outf, pidf)), 0)
  return { out = outf, rc = outf .. ".rc", pidf = pidf }
end

local function finished(bg, timeout)
  wait_for("the sweep to end", function() return T.exists(bg.rc) end, timeout or 240)
  return tonumber((fs.read(bg.rc) or ""):match("%d+")), fs.read(bg.out) or ""
end

-- The submitting qshell dies (SIGKILL); its Slurm job goes on.
local function kill_submitter(bg, path)
  T.sh("kill -KILL $(cat " .. bg.pidf .. ") $(pgrep -f 'qshell sweep --slurm " .. path .. "')")
end

local function jobid_of(out)
  return wait_for("the job to be submitted", function()
    local info = fs.read(out .. ".slurm/1/submission.json")
    return info and qemu.json.decode(info).jobid
  end)
end

T.test("the tasks land on all three nodes; node3 finds the shared files at its own path", function()
  local out = SHARED .. "/spread.csv"
  -- two runs at once in each task: a task takes a whole node (2 CPUs)
  local c, o, e = sh(QSHELL .. " run " .. script { out = out, runs = 6, tasks = 3, sleep = 3,
                                                   slurm = ", tasks_per_node = 2" })
  T.eq(c, 0, o .. e)
  local nodes = o:match("SWEEP\t6\t0\t0\t%d+\t(%S+)")
  T.eq(nodes, "node1,node2,node3", "the sweep saw tasks on each node: " .. o)
  local rows = rows_of(out)
  T.eq(#rows, 6)
  local hosts = {}
  for _, r in ipairs(rows) do
    T.eq(r.status, "ok", r.error)
    T.eq(r.status_was, "running")
    T.eq(r.x2, r.x * 2)
    hosts[r.host] = true
    T.match(r.scratch, "^" .. cdir:gsub("%p", "%%%0") .. "/nodes/" .. r.host .. "/tmp$", "node-local scratch")
    T.eq(r.prov, rows[1].prov, "one setup on every node")
  end
  T.ok(hosts.node1 and hosts.node2 and hosts.node3, "every node ran runs")
  -- the checkpoint was copied once per node, into its scratch, not read by every run
  local copies = {}
  for line in (fs.read(out .. ".slurm/1/stage.log") or ""):gmatch("[^\n]+") do
    local s = qemu.json.decode(line)
    T.eq(copies[s.node], nil, s.node .. " copied the checkpoint once")
    copies[s.node] = true
    T.match(s.copy, "^" .. cdir:gsub("%p", "%%%0") .. "/nodes/" .. s.node .. "/tmp/qshell%.stage/%x+$")
  end
  T.ok(copies.node1 and copies.node2 and copies.node3, "each node made its copy")
  local setup = qemu.results.read(out).provenance[rows[1].prov]
  T.eq(setup.checkpoint, sys.realpath(ckpt), "the checkpoint as the submitter names it")
  T.match(setup.script, "/sweep1%.lua$")
  T.eq(node_qemus(), "")
  -- --status shows where the tasks ran
  c, o = sh(QSHELL .. " sweep --status " .. out)
  T.eq(c, 0, o)
  T.match(o, "6/6 runs reported %(6 ok, 0 failed%)")
  T.match(o, "node3")
end)

T.test("a node killed mid-sweep: its runs are retried elsewhere, none lost, none twice", function()
  local out = SHARED .. "/kill.csv"
  -- each task (a whole node) runs its 4 runs two at a time
  local bg = background(QSHELL .. " run " .. script { out = out, runs = 12, tasks = 3, sleep = 4,
                                                      slurm = ", tasks_per_node = 2" }, "kill")
  local jobid = jobid_of(out)
  local t = wait_for("a task running on node2", function() return task_on(jobid, "node2") end)
  -- let it finish one run, then the node dies
  local tf = string.format("%s.slurm/1/task-%d.jsonl", out, t)
  wait_for("node2's first result", function() return (fs.read(tf) or ""):find("\n") end, 60)
  local kc, _, ke = T.sh(cluster .. " kill-node " .. cdir .. " node2")
  T.eq(kc, 0, ke)
  T.eq((select(2, T.sh("for p in $(pgrep -f qemu-system-x86_64); do tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null " ..
                       "| grep -q '^TMPDIR=" .. cdir .. "/nodes/node2/' && echo $p; done")):gsub("%s", "")), "",
       "node2's QEMUs died with it")
  -- Slurm gives a requeued job a begin time 121 s ahead (fixed in
  -- slurmctld); once it is requeued, let it start now rather than wait.
  wait_for("the killed task requeued", function()
    local _, o = sh("squeue -h -r -j " .. jobid .. " -o '%K %T %r'")
    return o:match("\n?" .. t .. " PENDING BeginTime")
  end, 120)
  sh(string.format("scontrol update jobid=%s_%d starttime=now", jobid, t))
  local rc, text = finished(bg, 300)
  T.eq(rc, 0, text)
  local rows = rows_of(out)
  T.eq(#rows, 12, "every run once")
  local retried, on2 = 0, 0
  for _, r in ipairs(rows) do
    T.eq(r.status, "ok", r.error)
    if r.restarts > 0 then retried = retried + 1; T.ok(r.host ~= "node2", "a retry ran elsewhere") end
    if r.host == "node2" then on2 = on2 + 1 end
  end
  T.ok(on2 >= 1, "node2's result from before it died is kept")
  T.ok(retried >= 1, "the killed task's other runs ran again after the requeue")
  -- node2 comes back
  T.eq(T.sh(cluster .. " start-node " .. cdir .. " node2"), 0)
  wait_for("node2 idle again", function()
    local _, st = sh("sinfo -h -n node2 -o %t")
    return st:match("^idle")
  end, 60)
  T.eq(node_qemus(), "")
end)

T.test("the submitter killed: --resume gathers the running job, then submits only what is missing", function()
  local out = SHARED .. "/resume.csv"
  local path = script { out = out, runs = 6, tasks = 2, sleep = 3 }
  local bg = background(QSHELL .. " sweep --slurm " .. path, "resume1")
  local jobid = jobid_of(out)
  -- two results in, then the submitting qshell dies (the job goes on)
  wait_for("two results", function()
    local n = 0
    for t = 0, 1 do
      for _ in (fs.read(string.format("%s.slurm/1/task-%d.jsonl", out, t)) or ""):gmatch("\n") do n = n + 1 end
    end
    return n >= 2
  end, 120)
  kill_submitter(bg, path)
  -- and the job is cancelled: what did not finish must be submitted again
  sh("scancel " .. jobid)
  wait_for("the job to end", function()
    local _, o = sh("squeue -h -j " .. jobid .. " -t PENDING,RUNNING,COMPLETING")
    return o == ""
  end)
  local done_before = 0
  for t = 0, 1 do
    for line in (fs.read(string.format("%s.slurm/1/task-%d.jsonl", out, t)) or ""):gmatch("[^\n]+") do
      if line:find('"status":"ok"', 1, true) then done_before = done_before + 1 end
    end
  end
  T.ok(done_before >= 2 and done_before < 6, "some runs finished before the cancel: " .. done_before)
  -- the controller forgets the job (MinJobAge 4 s) and no submitter recorded
  -- its tasks' states: they come from the accounting
  wait_for("squeue to forget the job", function()
    local code, o, e = sh("squeue -h -t all -j " .. jobid)
    return code ~= 0 and (o .. e):find("Invalid job id")
  end, 60)
  local sc, so, se = sh(QSHELL .. " sweep --status " .. out)
  T.eq(sc, 0, se)
  local n = 0
  for idx, state, node in so:gmatch("\n  (%d+) +(%S+) +(%S+)") do
    n = n + 1
    T.eq(state, "CANCELLED", "task " .. idx .. ": the final state from sacct: " .. so)
    T.match(node, "^node%d$")
  end
  T.eq(n, 2, so)
  local c, o, e = sh(QSHELL .. " sweep --slurm --resume " .. path)
  T.eq(c, 0, o .. e)
  local rows = rows_of(out)
  T.eq(#rows, 6)
  for _, r in ipairs(rows) do T.eq(r.status, "ok", r.error) end
  local plan2 = qemu.json.decode(fs.read(out .. ".slurm/2/plan.json"))
  local n2 = 0
  for _, keys in ipairs(plan2.tasks) do n2 = n2 + #keys end
  T.eq(n2, 6 - done_before, "the second submission has only the runs that did not finish")
  T.eq(node_qemus(), "")
end)

T.test("--resume while the earlier job still runs: it is gathered, nothing is submitted again", function()
  local out = SHARED .. "/attach.csv"
  local path = script { out = out, runs = 4, tasks = 2, sleep = 3 }
  local bg = background(QSHELL .. " sweep --slurm " .. path, "attach1")
  jobid_of(out)
  wait_for("a result", function() return (fs.read(out .. ".slurm/1/task-0.jsonl") or ""):find("\n") end, 120)
  kill_submitter(bg, path)
  local c, o, e = sh(QSHELL .. " sweep --slurm --resume " .. path)
  T.eq(c, 0, o .. e)
  T.match(e, "still runs: gathering it first")
  T.eq(#rows_of(out), 4)
  T.ok(not fs.exists(out .. ".slurm/2"), "no second submission")
end)

T.test("a task over its time limit: its unfinished run is recorded as timed out", function()
  local out = SHARED .. "/timeout.csv"
  local c, o, e = sh(QSHELL .. " run " .. script { out = out, runs = 2, tasks = 1, slow = 2, slow_sleep = 300,
                                                   slurm = ', time = "1"' })
  T.eq(c, 0, o .. e)
  local rows = rows_of(out)
  T.eq(#rows, 2)
  local by = {}
  for _, r in ipairs(rows) do by[r.x] = r end
  T.eq(by[1].status, "ok")
  T.eq(by[2].status, "failed")
  T.match(by[2].error, "^timed out: the Slurm task 0 ran out of its time limit %(time=1%)")
  T.eq(node_qemus(), "")
end)

T.test("options reach sbatch; bad ones are refused before anything is submitted", function()
  local out = SHARED .. "/opts.csv"
  local c, o, e = sh(QSHELL .. " run " .. script { out = out, runs = 2, tasks = 1, sleep = 0,
    slurm = ', partition = "debug", account = "lab", mem = "64M", time = "5:00", tasks_per_node = 2, ' ..
            'max_running = 1, sbatch = { "--comment=qshell-test" }' })
  T.eq(c, 0, o .. e)
  T.eq(#rows_of(out), 2)
  local sb = table.concat(qemu.json.decode(fs.read(out .. ".slurm/1/submission.json")).sbatch, " ")
  for _, want in ipairs { "--partition=debug", "--account=lab", "--mem=64M", "--time=5:00", "--ntasks-per-node=2",
                          "--nodes=1", "--array=0-0%1", "--comment=qshell-test", "--requeue" } do
    T.ok(sb:find(want, 1, true), want .. " in " .. sb)
  end
  local bad = {
    { "nodes = 3", "unknown option 'nodes'" },
    { 'time = "soon"', "Slurm time limit" },
    { 'mem = "lots"', "512M" },
    { 'sbatch = { "--array=1-2" }', "set by qshell itself" },
    { 'partition = "no such"', "must be a name" },
  }
  for _, b in ipairs(bad) do
    local ok, err2 = pcall(qemu.sweep, load("return { engine = 'slurm', from = '" .. ckpt .. "', out = '" ..
      SHARED .. "/bad.csv', run = function() end, slurm = { " .. b[1] .. " } }")())
    T.ok(not ok, b[1])
    T.match(tostring(err2), b[2], b[1])
  end
  T.ok(not fs.exists(SHARED .. "/bad.csv.slurm"), "nothing submitted")
  -- a partition the cluster does not have: sbatch's own words
  c, o, e = sh(QSHELL .. " run " .. script { out = SHARED .. "/nopart.csv", runs = 1, tasks = 1,
                                             slurm = ', partition = "gpu"' })
  T.eq(c, 1, o .. e)
  T.match(e, "SlurmError")
  T.match(e, "[Ii]nvalid partition")
end)

T.run()
