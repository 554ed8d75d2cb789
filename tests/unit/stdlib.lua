-- The stdlib's parts without QEMU: error classes, the OS module, the file
-- helpers, the sweep's plan and results.
local T = require "t"

local sys = require "qshell.os"
local fs = require "qemu.util.fs"
local json = require "qshell.json"
local tmp = T.tmpdir()

T.test("every error class the stdlib raises is listed in qemu.errors.classes", function()
  local errors = require "qemu.errors"
  local code, out = T.sh("grep -rhoE 'class = \"[A-Za-z]+\"' stdlib")
  T.eq(code, 0)
  local n = 0
  for class in out:gmatch('class = "([%a]+)"') do
    n = n + 1
    T.ok(errors.classes[class], "class " .. class .. " is not in errors.classes")
  end
  T.ok(n > 30, "found the classes in the sources")
  -- and the code mapping
  T.eq(errors.class_for("interrupted"), "Interrupted")
  T.eq(errors.class_for("timeout"), "Timeout")
  T.eq(errors.class_for("exec", { exec = "MissingTool" }), "MissingTool")
  T.eq(errors.class_for("something-new"), "IOError")
  local e = T.raises(function() errors.from_code("x.y", "boom", "timeout") end, "Timeout", "boom")
  T.eq(e.command, "x.y")
end)

T.test("no bare string errors: every raise in the stdlib is an error table", function()
  local code, out = T.sh("grep -rnE 'assert\\((io\\.open|os\\.rename|sys\\.|core\\.)' stdlib")
  T.eq(out, "", "assert() on I/O raises a bare string")
  T.eq(code, 1)
end)

T.test("qshell.os: listdir is sorted in C, even with table.sort replaced", function()
  for _, n in ipairs { "b", "a", "C", "a2" } do assert(io.open(tmp .. "/" .. n, "w")):close() end
  local saved = table.sort
  table.sort = function() error("the script's table.sort was called") end
  local ok, list = pcall(sys.listdir, tmp)
  table.sort = saved
  T.ok(ok, tostring(list))
  T.eq(table.concat(list, ","), "C,a,a2,b")
  local none, msg, code = sys.listdir(tmp .. "/nope")
  T.eq(none, nil)
  T.match(msg, "nope")
  T.eq(code, "notfound")
end)

T.test("qshell.os: mkdir with parents, mkdir of an existing dir, rename", function()
  T.ok(sys.mkdir(tmp .. "/m/n/o", true))
  T.ok(fs.is_dir(tmp .. "/m/n/o"))
  T.ok(sys.mkdir(tmp .. "/m/n/o", true), "parents=true: an existing dir is fine")
  local ok, _, code = sys.mkdir(tmp .. "/m")
  T.eq(ok, nil)
  T.eq(code, "exists")
  assert(io.open(tmp .. "/file", "w")):close()
  local ok2, msg = sys.mkdir(tmp .. "/file/sub", true)
  T.eq(ok2, nil)
  T.match(msg, "file")
  T.ok(sys.rename(tmp .. "/file", tmp .. "/file2"))
  T.ok(fs.exists(tmp .. "/file2") and not fs.exists(tmp .. "/file"))
end)

T.test("qshell.os: diff_blocks gives the changed blocks and reads only data", function()
  -- files with holes: bytes written at offsets, then extended to a size
  local function make(p, writes, size)
    local f = assert(io.open(p, "wb"))
    for _, w in ipairs(writes) do
      f:seek("set", w[1])
      f:write(w[2])
    end
    f:close()
    if size then T.eq((T.sh("truncate -s " .. size .. " " .. p)), 0) end
    return p
  end
  local MiB = 1 << 20
  local same = string.rep("x", 8192)
  local a = make(tmp .. "/da", { { MiB, same } }, "64M")
  local b = make(tmp .. "/db", {
    { MiB, same }, { MiB + 5, "y" }, { MiB + 4097, "y" }, -- two adjacent blocks: one range
    { 40 * MiB + 100, string.rep("z", 100) },             -- data where a has a hole
    { 50 * MiB, string.rep("\0", 4096) },                -- zeros written where a has a hole: equal
  }, "64M")
  local r, n = sys.diff_blocks(a, b)
  T.eq(#r, 2)
  T.eq(r[1][1], MiB)
  T.eq(r[1][2], 8192)
  T.eq(r[2][1], 40 * MiB)
  T.eq(r[2][2], 4096)
  T.ok(n < MiB, "the holes of two 64 MiB files are not read: read " .. n)
  T.eq(#sys.diff_blocks(a, a), 0)
  -- past the end of the shorter file is zeros; the last block is cut at the end
  local c = make(tmp .. "/dc", { { MiB, same }, { 64 * MiB + 10, "tail" } })
  r = sys.diff_blocks(a, c)
  T.eq(#r, 1)
  T.eq(r[1][1], 64 * MiB)
  T.eq(r[1][2], 14)
  T.eq(#sys.diff_blocks(a, make(tmp .. "/dd", { { MiB, same } }, "32M")), 0, "a shorter file of zeros")
  -- block sizes other than 4096
  local x, y = make(tmp .. "/dx", { { 0, "abcdef" } }), make(tmp .. "/dy", { { 0, "abXdeY" } })
  r = sys.diff_blocks(x, y, 1)
  T.eq(#r, 2)
  T.eq(r[1][1] .. "+" .. r[1][2] .. "," .. r[2][1] .. "+" .. r[2][2], "2+1,5+1")
  r = sys.diff_blocks(x, y, 4)
  T.eq(r[1][1] .. "+" .. r[1][2], "0+6")
  local none, msg, code = sys.diff_blocks(tmp .. "/nope", a)
  T.eq(none, nil)
  T.match(msg, "nope")
  T.eq(code, "notfound")
  T.ok(not pcall(sys.diff_blocks, a, b, 0), "a block size of 0 is misuse")
end)

T.test("console: ANSI escapes stripped; guest and image options checked before anything starts", function()
  local strip = require("qemu.vm.console")._strip_ansi
  T.eq(strip("\27[0;1;31m\226\151\143\27[0m unit \27]0;title\7done\27[?2004l"), "\226\151\143 unit done")
  T.eq(strip("a\rb\n"), "a\rb\n")
  T.raises(function() qemu.guest.launch { guest = 5 } end, "BadArgument", "guest=")
  T.raises(function() qemu.guest.launch { guest = {}, login = false } end, "BadArgument", "guest=")
  T.raises(function() qemu.guest.launch { password = 1 } end, "BadArgument", "password")
  T.raises(function() qemu.guest.load("/nonexistent-qshell-guest") end, "BadArgument", "no guest description")
  T.raises(function() qemu.image.build { suite = "Not A Suite" } end, "BadArgument", "suite")
  T.raises(function() qemu.image.build { size = "100M" } end, "BadArgument", "512M")
  T.raises(function() qemu.image.build { users = { { name = "ok", password = "a:b" } } } end, "BadArgument", "colon")
  T.raises(function() qemu.image.kernel("/nonexistent.qcow2") end, "BadArgument", "no such image")
  T.raises(function() qemu.image.kernel("/x", { outt = "y" }) end, "BadArgument", "outt")
end)

T.test("qemu.fs: atomic write, append, slurp errors are tables, abspath", function()
  local p = tmp .. "/w.txt"
  fs.write(p, "one\n")
  fs.append(p, "two\n")
  T.eq(fs.read(p), "one\ntwo\n")
  T.eq(fs.first_line(p), "one")
  T.ok(not fs.exists(p .. ".tmp"), "no temp file left")
  local e = T.raises(function() fs.slurp(tmp .. "/none", "me") end, "IOError", "none")
  T.eq(e.command, "me")
  T.raises(function() fs.write(tmp .. "/no/dir/x", "y") end, "IOError")
  T.raises(function() fs.mkdir_p(p .. "/sub") end, "IOError")
  T.eq(fs.read(tmp .. "/none"), nil)
  local _, cwd = T.sh("pwd -P")
  T.eq(fs.abspath("x/y.txt"), cwd:gsub("\n", "") .. "/x/y.txt")
  T.eq(fs.abspath("/a/b"), "/a/b")
  local a, b = fs.scratch_file("s"), fs.scratch_file("s")
  T.ok(a ~= b)
  T.eq(a:sub(1, #fs.scratch()), fs.scratch())
end)

T.test("qemu.host: cores within what the machine has", function()
  local host = require "qemu.util.host"
  local _, n = T.sh("nproc")
  local c = host.cores()
  T.ok(c >= 1 and c <= tonumber(n), "cores " .. c .. " vs nproc " .. n)
  T.ok(host.available_memory() > 0)
  T.eq(host.fmt_time(125), "2:05")
end)

T.test("sweep plan: stable run names, axis order, repeats", function()
  local plan = require "qemu.sweep.plan"
  local runs, names = plan.expand({ size = { 1, 1e6 }, mode = { "a", "b" } }, 2)
  T.eq(#runs, 8)
  T.eq(table.concat(names, ","), "mode,size")
  T.eq(runs[1].run, "mode=a;size=1#1")
  T.eq(runs[4].run, "mode=a;size=1000000#2")
  local todo, skipped = plan.todo(runs, { [runs[1].run] = true })
  T.eq(#todo, 7)
  T.eq(skipped, 1)
  T.raises(function() plan.check_matrix("f", { status = { 1 } }) end, "BadArgument")
  T.raises(function() plan.check_matrix("f", { x = {} }) end, "BadArgument")
end)

T.test("Slurm plan: 10^5 runs packed within the cluster's limits, made and written in under 2 s", function()
  local plan = require "qemu.sweep.plan"
  local slurm = require "qemu.sweep.slurm"
  local json = require "qshell.json"
  -- the limits as `scontrol show config` prints them, and Slurm's defaults without them
  local l = slurm.limits("Configuration data as of 2026-12-07T06:00:00\nMaxArraySize            = 4001\n" ..
                         "MaxJobCount             = 20000\nMaxJobId = 67043328\n")
  T.eq(l.max_array_size, 4001)
  T.eq(l.max_job_count, 20000)
  l = slurm.limits("")
  T.eq(l.max_array_size, 1001)
  T.eq(l.max_job_count, 10000)
  local xs, ys = {}, {}
  for i = 1, 1000 do xs[i] = i end
  for i = 1, 100 do ys[i] = i end
  local t0 = sys.now()
  local runs = plan.expand({ x = xs, y = ys }, 1)
  local names = {}
  for i, r in ipairs(runs) do names[i] = r.run end
  local packed = slurm.pack(names, 1, nil, slurm.DEFAULT_LIMITS)
  local path = T.tmpdir() .. "/plan.json"
  require("qemu.util.fs").write(path, json.encode({ tasks = packed.tasks }), "t")
  local took = sys.now() - t0
  T.eq(#runs, 100000)
  T.eq(#packed.tasks, 1001, "one task per array index the default allows")
  local seen, n = {}, 0
  for _, list in ipairs(packed.tasks) do
    T.ok(#list == 99 or #list == 100, "tasks evenly loaded (" .. #list .. ")")
    for _, name in ipairs(list) do
      T.ok(not seen[name], name .. " once")
      seen[name] = true
      n = n + 1
    end
  end
  T.eq(n, 100000, "every run in one task")
  T.eq(packed.note, nil, "nothing to say when no tasks= was asked")
  local asan = (io.open("/proc/self/status"):read("a"):match("VmSize:%s*(%d+)") or 0) + 0 > 1e9
  if not asan then T.ok(took < 2, string.format("planned and written in %.2f s", took)) end
  -- fewer runs than the limit: one task per run; tasks_per_node packs K per task;
  -- a tasks= over the limit is cut, with a note; MaxJobCount caps too
  T.eq(#slurm.pack({ "a", "b", "c" }, 1, nil, slurm.DEFAULT_LIMITS).tasks, 3)
  T.eq(#slurm.pack({ "a", "b", "c", "d", "e" }, 2, nil, slurm.DEFAULT_LIMITS).tasks, 3)
  local cut = slurm.pack(names, 1, 5000, { max_array_size = 2000, max_job_count = 10000 })
  T.eq(#cut.tasks, 2000)
  T.match(cut.note, "tasks=5000} is over this cluster's limit of 2000 array tasks")
  T.eq(#slurm.pack(names, 1, nil, { max_array_size = 4001, max_job_count = 300 }).tasks, 300)
  -- at most TASKS_PER_SLOT tasks per slot the partition has (a task's start
  -- costs as much as a short run); a tasks= asked for is not capped by it
  T.eq(slurm.TASKS_PER_SLOT, 4)
  local sinfo = "debug* 0/6/0/6\nbig 10/90/0/100\nbig 0/0/28/28\n"
  T.eq(slurm.slots(sinfo, nil, 1), 6, "the default partition")
  T.eq(slurm.slots(sinfo, "big", 1), 128, "a partition over several lines")
  T.eq(slurm.slots(sinfo, "big", 2), 64, "tasks_per_node=2: two CPUs a task")
  T.eq(slurm.slots(sinfo, "big", 1, 10), 10, "max_running")
  T.eq(slurm.slots(sinfo, "nosuch", 1), nil)
  T.eq(slurm.slots("", nil, 1), nil)
  T.eq(#slurm.pack(names, 1, nil, slurm.DEFAULT_LIMITS, 6).tasks, 24)
  T.eq(#slurm.pack(names, 1, nil, slurm.DEFAULT_LIMITS, 1000).tasks, 1001, "still within MaxArraySize")
  T.eq(#slurm.pack({ "a", "b", "c" }, 1, nil, slurm.DEFAULT_LIMITS, 6).tasks, 3, "still no more than runs")
  T.eq(#slurm.pack(names, 1, 100, slurm.DEFAULT_LIMITS, 6).tasks, 100, "tasks= as asked")
end)

T.test("Slurm accounting: sacct's lines, ranges of tasks that never started among them", function()
  local slurm = require "qemu.sweep.slurm_jobs"
  -- as sacct 22.05 prints them (SLURM_BITSTR_LEN=0 sacct -n -P -X -j 3 --format=JobID,State,NodeList)
  local text = "3_0|COMPLETED|node1\n3_1|COMPLETED|node2\n3_3|CANCELLED by 0|node1\n" ..
               "3_[2-3,6-8,11]|CANCELLED by 0|None assigned\n3_4|TIMEOUT|node3\n3_5|OUT_OF_MEMORY|node2\n"
  local st = slurm.sacct_states(text, 10)
  T.eq(st[0].state, "COMPLETED")
  T.eq(st[0].node, "node1")
  T.eq(st[3].state, "CANCELLED", "the first word of the state")
  T.eq(st[3].node, "node1", "a task's own line wins over a range")
  T.eq(st[2].state, "CANCELLED")
  T.eq(st[2].node, nil, "None assigned: no node")
  T.eq(st[4].state, "TIMEOUT")
  T.eq(st[5].state, "OUT_OF_MEMORY")
  for _, k in ipairs { 6, 7, 8 } do T.eq(st[k].state, "CANCELLED") end
  T.eq(st[9], nil)
  T.eq(st[11], nil, "beyond the array's tasks")
  T.eq(next(slurm.sacct_states("", 3)), nil)
end)

T.test("sweep results: a cell of 100+ characters formats (it crashed)", function()
  local long = string.rep("x", 150)
  local text = qemu.sweep.format({ { run = "r#1", error = long }, { run = "r#2", error = "short" },
                                   columns = { "run", "error" } })
  local lines = {}
  for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
  T.eq(#lines, 3)
  T.eq(lines[2], "r#1  " .. long)
  T.match(lines[1], "^run  error$")
end)

T.test("sweep results: CSV writer widens the header; read gives it back", function()
  local results = require "qemu.results.file"
  local plan = require "qemu.sweep.plan"
  local runs, names = plan.expand({ n = { 1, 2 } }, 1)
  local path = tmp .. "/res/sub/out.csv"
  local out = results.open(path, names, false, "t")
  local tally = results.tally(runs, out, 0)
  tally:record { i = 1, status = "ok", wall_s = 0.5, metrics = { a = 1 } }
  tally:record { i = 2, status = "failed", wall_s = 0.25, error = 'a "quoted", comma', metrics = nil }
  tally:finish()
  local rows = qemu.sweep.read(path)
  T.eq(#rows, 2)
  T.eq(rows[1].a, 1)
  T.eq(rows[2].error, 'a "quoted", comma')
  T.eq(rows[2].status, "failed")
  T.eq(tally.ok, 1)
  T.eq(tally.failed, 1)
  -- one writer: a second open is refused while the first holds the file
  T.raises(function() results.open(path, names, true, "t") end, "ResultsBusy", "pid " .. sys.getpid() .. " on ")
  out:close()
  T.ok(not T.exists(path .. ".lock"), "the lock file goes with close")
  -- a new metric in a resumed sweep widens the header
  local out2 = results.open(path, names, true, "t")
  T.ok(out2.done[runs[1].run] and out2.done[runs[2].run])
  runs[1].status, runs[1].wall_s, runs[1].metrics = "ok", 1, { a = 2, b = 3 }
  out2:append(runs[1])
  rows = qemu.sweep.read(path)
  T.eq(table.concat(rows.columns, ","), "run,repeat,n,status,wall_s,error,host,started,prov,a,b")
  T.eq(rows[3].b, 3)
  T.eq(rows[1].b, nil)
  out2:close()
  T.raises(function() results.open(path, names, false, "t") end, "FileExists")
  T.ok(not T.exists(path .. ".lock"), "a refused open leaves no lock")
end)

T.test("sweep results: one name per fact (run, wall_s, provenance) from the tally to the file", function()
  local results = require "qemu.results.file"
  local plan = require "qemu.sweep.plan"
  local runs, names = plan.expand({ n = { 1, 2 } }, 1)
  for _, kind in ipairs { "csv", "jsonl" } do
    local path = tmp .. "/names/out." .. kind
    local out = results.open(path, names, false, "t")
    local tally = results.tally(runs, out, 0, function() return { qemu = "9.9.9" } end)
    tally:record { i = 1, status = "ok", wall_s = 0.5, metrics = { a = 1 }, provenance = { qemu = "1.2.3" } }
    tally:record { i = 2, status = "failed", wall_s = 0.25, error = "x" } -- a worker that died: provenance_for
    tally:finish()
    out:close()
    local got = tally:results()
    T.eq(got[1].run, "n=1#1")
    T.eq(got[1].wall_s, 0.5)
    T.eq(got[1].metrics.a, 1)
    T.eq(got[1].provenance.qemu, "1.2.3")
    T.eq(got[2].provenance.qemu, "9.9.9")
    T.eq(got[2].error, "x")
    T.eq(got[1].key, nil)
    T.eq(got[1].wall, nil)
    local rows = qemu.sweep.read(path)
    T.eq(rows[1].run, "n=1#1")
    T.eq(rows[1].wall_s, 0.5)
    T.eq(rows.provenance[rows[1].prov].qemu, "1.2.3")
    T.eq(rows.provenance[rows[2].prov].qemu, "9.9.9")
    T.eq(rows.setups, nil)
    local side = json.decode(fs.read(tmp .. "/names/out.provenance.json"))
    T.eq(side.provenance[rows[1].prov].qemu, "1.2.3", kind)
    T.eq(side.setups, nil)
    os.remove(tmp .. "/names/out.provenance.json")
  end
end)

T.test("sweep results: with a results file the tally holds no row (memory flat over 4000 rows); results() reads them back", function()
  local results = require "qemu.results.file"
  local plan = require "qemu.sweep.plan"
  local N = 4000
  local runs, names = plan.expand({ n = (function() local t = {} for i = 1, N do t[i] = i end return t end)() }, 1)
  local function feed(tally, from, to)
    for i = from, to do
      -- as a worker's line decodes: a provenance table of its own each time
      tally:record { i = i, status = i % 7 == 0 and "failed" or "ok", wall_s = 0.1, host = "h",
                     metrics = i % 7 ~= 0 and { x2 = 2 * i, word = "w" .. i } or nil, error = i % 7 == 0 and "e" or nil,
                     provenance = json.decode('{"qemu":"7.2.22","binary":"/usr/bin/qemu-system-x86_64","host":"h"}') }
    end
  end
  for _, kind in ipairs { "csv", "jsonl" } do
    local path = tmp .. "/flat/out." .. kind
    local out = results.open(path, names, false, "t")
    local tally = results.tally(runs, out, 0)
    feed(tally, 1, N // 4)
    collectgarbage(); collectgarbage()
    local k0 = collectgarbage("count")
    feed(tally, N // 4 + 1, N)
    collectgarbage(); collectgarbage()
    local grew = (collectgarbage("count") - k0) * 1024
    T.ok(grew < 16 * 1024, string.format("%s: the tally grew %.0f bytes over %d rows", kind, grew, N - N // 4))
    T.eq(#tally.kept, 0)
    tally:finish()
    out:close()
    local got = tally:results()
    T.eq(#got, N)
    for i = 1, N, 997 do
      T.eq(got[i].i, i)
      T.eq(got[i].params.n, i)
      if i % 7 == 0 then
        T.eq(got[i].status, "failed")
        T.eq(got[i].error, "e")
      else
        T.eq(got[i].metrics.x2, 2 * i)
        T.eq(got[i].metrics.word, "w" .. i)
      end
      T.eq(got[i].provenance.qemu, "7.2.22")
    end
  end
  -- no results file: the rows are kept as they come
  local tally = results.tally(runs, nil, 0)
  feed(tally, 1, 3)
  tally:finish()
  T.eq(#tally:results(), 3)
  T.eq(tally:results()[2].metrics.x2, 4)
end)

T.test("sweep results: a sidecar written with the old key `setups` still reads, and a resume keeps it", function()
  local results = require "qemu.results.file"
  local plan = require "qemu.sweep.plan"
  local runs, names = plan.expand({ n = { 1, 2 } }, 1)
  local path = tmp .. "/old/out.csv"
  fs.mkdir_p(tmp .. "/old", "t")
  fs.write(path, "run,repeat,n,status,wall_s,error,host,started,prov,a\nn=1#1,1,1,ok,0.500,,h,t,aaaaaaaaaaaa,1\n", "t")
  fs.write(tmp .. "/old/out.provenance.json",
           json.encode { format = 1, setups = { aaaaaaaaaaaa = { qemu = "7.2.0" } }, sweep = { total = 2 } }, "t")
  local rows = qemu.results.read(path)
  T.eq(rows.provenance.aaaaaaaaaaaa.qemu, "7.2.0")
  T.eq(rows.sweep.total, 2)
  local out = results.open(path, names, true, "t")
  local tally = results.tally(runs, out, 1)
  tally:record { i = 2, status = "ok", wall_s = 1, metrics = { a = 2 }, provenance = { qemu = "10.0.0" } }
  tally:finish()
  out:close()
  rows = qemu.sweep.read(path)
  T.eq(rows.provenance.aaaaaaaaaaaa.qemu, "7.2.0", "the old row's provenance is kept")
  T.eq(rows.provenance[rows[2].prov].qemu, "10.0.0")
  local side = json.decode(fs.read(tmp .. "/old/out.provenance.json"))
  T.eq(side.setups, nil, "written back under the one key")
  T.eq(side.provenance.aaaaaaaaaaaa.qemu, "7.2.0")
end)

T.test("sweep: a failed append raises through the one mapping (the class from the code)", function()
  local results = require "qemu.results.file"
  local plan = require "qemu.sweep.plan"
  local _, names = plan.expand({ n = { 1 } }, 1)
  local out = results.open(tmp .. "/full/out.csv", names, false, "t")
  local path = out.path
  out.path = "/dev/full"
  local ok, e = pcall(out._write, out, "a row\n")
  out.path = path
  out:close()
  T.ok(not ok)
  T.eq(e.class, "IOError")
  T.eq(e.command, "qemu.sweep")
  T.match(e.desc, "^cannot append a result to /dev/full: No space left on device; the sweep stopped")
  T.match(e.hint, "resume=true")
end)

T.test("qemu.sweep without a table is BadArgument, not a Lua error", function()
  T.raises(function() qemu.sweep() end, "BadArgument", "argument #1 must be a table, got nil")
  T.raises(function() qemu.sweep("x") end, "BadArgument", "argument #1 must be a table, got string")
  T.raises(function() require("qemu.sweep").sweep(42) end, "BadArgument", "got number")
  T.raises(function() qemu.sweep {} end, "BadArgument", "run= ")
end)

T.test("results lock: of 8 processes racing for it one holds it, every other names that one", function()
  local path = tmp .. "/race.csv"
  local script = tmp .. "/race.lua"
  local f = assert(io.open(script, "w"))
  f:write(string.format([[
    local results = require "qemu.results.file"
    local ok, e = pcall(results.lock, %q, "race")
    if ok then print("HOLD " .. require("qshell.os").getpid()); qemu.sleep(1); results.unlock(e)
    else print("BUSY " .. tostring(e.class) .. " " .. tostring(e.desc)) end
  ]], path))
  f:close()
  local cmd = {}
  for i = 1, 8 do cmd[i] = string.format("./qshell run %s > %s/race%d.out 2>&1 &", script, tmp, i) end
  T.eq(T.sh(table.concat(cmd, " ") .. " wait"), 0)
  local holders, busy = {}, {}
  for i = 1, 8 do
    local fh = io.open(string.format("%s/race%d.out", tmp, i))
    local out = fh:read("a"); fh:close()
    local h = out:match("^HOLD (%d+)")
    if h then holders[#holders + 1] = h else busy[#busy + 1] = out end
  end
  T.eq(#holders, 1, "one holder")
  for _, out in ipairs(busy) do
    T.match(out, "^BUSY ResultsBusy .* is being written by another sweep %(pid " .. holders[1] .. " on ")
  end
  T.ok(not T.exists(path .. ".lock"), "the holder removed it")
end)

T.test("append: all of the text or none of it", function()
  local p = tmp .. "/lines"
  T.eq(sys.append(p, "one\n"), true)
  T.eq(sys.append(p, "two\n"), true)
  local f = io.open(p); T.eq(f:read("a"), "one\ntwo\n"); f:close()
  -- a full device: the error names the file and the cause
  local ok, msg, code = sys.append("/dev/full", "row\n")
  T.eq(ok, nil)
  T.match(msg, "^/dev/full: No space left on device")
  T.eq(code, "nospace")
  T.raises(function() require("qemu.util.fs").append("/dev/full", "x", "t") end, "IOError", "No space left")
end)

T.test("one map from failures to classes: errno codes from C and from Lua's io alike", function()
  local errors = require "qemu.errors"
  local fs = require "qemu.util.fs"
  local dir = T.tmpdir()
  -- C calls: the code names the cause, the class follows from it
  local _, _, code = sys.mkdir(dir)
  T.eq(code, "exists")
  T.eq(errors.class_for(code), "FileExists")
  -- Lua's io gives errno numbers: the same map
  local f, _, errno = io.open(dir .. "/no/such/file", "rb")
  T.eq(f, nil)
  T.eq(errors.class_for(errno), "IOError")
  T.eq(sys.errcode(errno), "notfound")
  T.eq(sys.errcode(4), "interrupted")
  T.eq(errors.class_for(4), "Interrupted")
  T.eq(errors.class_for(13), "PermissionDenied")
  -- a raise after a C call goes through it: a directory that cannot be made
  -- under a file is an IOError; one in a read-only place is PermissionDenied
  fs.write(dir .. "/file", "x", "t")
  T.raises(function() fs.mkdir_p(dir .. "/file/sub", "t") end, "IOError", "cannot create the directory")
  -- sysfs refuses a new directory, even to root (EPERM)
  T.raises(function() fs.mkdir_p("/sys/qshell-nope", "t") end, "PermissionDenied", "cannot create the directory")
  T.raises(function() fs.slurp(dir .. "/absent", "t") end, "IOError", "cannot read")
end)

T.run()
