-- Sweeps at scale on the three-node test cluster at Slurm's default limits
-- (MaxArraySize 1001): 2000 short runs, packed four tasks per CPU slot,
-- with no Slurm option but shared=, the submitter SIGKILLed in the middle
-- and the sweep resumed: every run once, gathered, exit 0; the submitter's
-- memory flat; one copy of the checkpoint per node.  (make test-scale: about 4 minutes on 2 cores.)
local T = require "t"
local fs = require "qemu.util.fs"
local sys = require "qshell.os"
local json = require "qshell.json"

local QSHELL = sys.realpath("./qshell")
local N = tonumber(os.getenv("QSHELL_SCALE_RUNS") or "") or 2000

local c3 = require("slurm_cluster").start(3)
local cdir, sh = c3.dir, c3.sh
local SHARED, ELSEWHERE = c3.env.CLUSTER_SHARED, c3.env.CLUSTER_SHARED_ELSEWHERE

local ckpt = SHARED .. "/empty.ckpt"
do
  local vm <close> = qemu.launch { memory = "64M", disks = { qemu.disk.create(SHARED .. "/d.qcow2", "8M") } }
  vm:checkpoint(ckpt)
end

local function wait_for(what, fn, timeout)
  local deadline = qemu.now() + timeout
  while qemu.now() < deadline do
    local v = fn()
    if v then return v end
    qemu.sleep(1)
  end
  error("waited in vain for " .. what, 2)
end

local function rows_in(path)
  local text = fs.read(path) or ""
  return select(2, text:gsub("\n", "")) - 1
end

T.test(N .. " runs at Slurm's default limits: the submitter killed mid-sweep, resumed, every run once", function()
  local out = SHARED .. "/big.csv"
  local script = SHARED .. "/big.lua"
  fs.write(script, string.format([[
local xs = {}
for i = 1, %d do xs[i] = i end
local r = qemu.sweep { from = %q, out = %q, engine = "slurm", matrix = { x = xs },
                       slurm = { shared = { %q, %q } },
                       run = function(vm, p) return { x2 = p.x * 2 } end }
print("SWEEP", r.ok, r.failed, r.skipped)
]], N, ckpt, out, SHARED, ELSEWHERE), "test")
  -- the first submitter, SIGKILLed once a quarter of the rows are in
  local pidf, logf = cdir .. "/first.pid", cdir .. "/first.out"
  T.eq((sh(string.format("(%s run %s > %s 2>&1) & echo $! > %s", QSHELL, script, logf, pidf))), 0)
  wait_for("a quarter of the rows", function() return rows_in(out) >= N // 4 end, 600)
  T.sh("kill -KILL $(cat " .. pidf .. ") $(pgrep -f 'qshell run " .. script .. "')")
  local sub = json.decode(fs.slurp(out .. ".slurm/1/submission.json", "test"))
  -- within MaxArraySize (1001), and no more than 4 tasks per CPU slot of
  -- the cluster (3 nodes x 2 CPUs): each task runs about 83 short runs
  T.eq(sub.ntasks, 24, "packed: 4 tasks per slot")
  -- resumed (the job still runs: gathered, then only what is missing submitted)
  local t0 = qemu.now()
  local c, o, e = sh(string.format("/usr/bin/time -v %s sweep --slurm --resume %s", QSHELL, script))
  T.eq(c, 0, o .. e)
  local took = qemu.now() - t0
  local ok, failed, skipped = o:match("SWEEP\t(%d+)\t(%d+)\t(%d+)")
  T.eq(tonumber(failed), 0, e)
  T.eq(tonumber(ok) + tonumber(skipped), N, "every run done: " .. o)
  local rows = qemu.results.read(out)
  T.eq(#rows, N)
  local seen = {}
  for _, r in ipairs(rows) do
    T.eq(seen[r.run], nil, r.run .. " once")
    seen[r.run] = true
    T.eq(r.status, "ok", r.error)
    T.eq(r.x2, r.x * 2)
  end
  -- the resuming submitter's memory and CPU over the rest of the sweep
  local rss = tonumber(e:match("Maximum resident set size %(kbytes%): (%d+)"))
  local user = tonumber(e:match("User time %(seconds%): ([%d.]+)"))
  local sys_t = tonumber(e:match("System time %(seconds%): ([%d.]+)"))
  io.stderr:write(string.format("scale: the resume took %.0f s; its submitter %.1f s CPU, peak RSS %.1f MB\n",
                                took, user + sys_t, rss / 1024))
  T.ok(rss < 64 * 1024, string.format("the submitter's peak RSS %.1f MB", rss / 1024))
  -- one copy of the checkpoint per node and submission
  for _, d in ipairs(sys.listdir(out .. ".slurm")) do
    local nodes = {}
    for line in (fs.read(out .. ".slurm/" .. d .. "/stage.log") or ""):gmatch("[^\n]+") do
      local s = json.decode(line)
      T.eq(nodes[s.node], nil, "submission " .. d .. ": " .. s.node .. " copied once")
      nodes[s.node] = true
    end
  end
end)

T.run()
