-- guest_bench.lua: the qshell side of the guest benchmarks (see run.sh).
--
--   qshell tests/bench/guest_bench.lua argv OVERLAY
--       the argv of qemu.guest.launch{login=false, system=OVERLAY}, one word
--       a line (for build/bench/bootharness), QEMU quit at once
--   qshell tests/bench/guest_bench.lua boot OVERLAY [insn]
--       one boot: OVERLAY made afresh (not timed), then timed from
--       qemu.guest.launch{login=false, system=OVERLAY} to the match of
--       vm.console:expect("login: "); prints "median_us=... n=1"; with
--       "insn" the boot runs under the insn plugin and "insns=N" is added
--   qshell tests/bench/guest_bench.lua snapshot ROUNDS K SOCKET SNAPCLIENT
--       one default guest booted to its login prompt with a second monitor
--       on SOCKET; ROUNDS rounds of K pairs, the two sides interleaved
--       (q c, c q, q c ...):
--         qshell:   vm:savevm(tag), vm:loadvm(tag) timed; vm:delvm(tag)
--         C client: SNAPCLIENT SOCKET tag disk0 1 (timed inside it)
--       after an untimed warm-up.  Prints each side's round medians, the
--       part of qshell's times spent in its query-block checks, and each
--       side's time outside the snapshot-save/-load command itself:
--         qshell save_us=a,b,.. load_us=a,b,..
--         client save_us=a,b,.. load_us=a,b,..
--         checks save_us=a,b,.. load_us=a,b,..
--         qshell_out save_us=a,b,.. load_us=a,b,..
--         client_out save_us=a,b,.. load_us=a,b,..
--   qshell tests/bench/guest_bench.lua warm IMAGE CKPT
--       the warm state of the sweep and restore benchmarks, made once: the
--       default guest booted on a new overlay IMAGE (kept) and logged in,
--       then vm:checkpoint(CKPT, {resume=true}), then vm:savevm("warm")
--       into IMAGE, then quit: the checkpoint and the internal snapshot
--       hold the same idle shell
--   qshell tests/bench/guest_bench.lua loadvm_argv TAG
--       the argv of a plain `qemu-system-x86_64 ... -loadvm TAG` of the
--       default guest with its serial console on stdio, one word a line;
--       the system image is the word @IMAGE@ (the caller substitutes it)
--   qshell tests/bench/guest_bench.lua sweep CKPT WORKERS N CMD
--       qemu.sweep{from=CKPT, repeat=N, workers=WORKERS} where each run
--       is vm.console:run(CMD) (status 0 checked); prints the wall time of
--       the qemu.sweep call as "median_us=... n=1"
--   qshell tests/bench/guest_bench.lua restore CKPT
--       timed from qemu.launch{restore=CKPT} to the answer of
--       vm.console:run("true"); prints "median_us=... n=1"
--   qshell tests/bench/guest_bench.lua memory MIB DIR N
--       the default guest with 2 GiB of RAM and MIB MiB of data in it:
--       checkpoint vs QEMU's own migration to a file, restores to an answer
--       (that state, the idle guest, a bare QEMU start), Pss of one restored
--       VM and of N at once; one line of medians (see the mode below)

local now = require("qshell.os").now

local mode = arg[1]

-- QEMU's CPU time in seconds (user + system, /proc/PID/stat): what a
-- plugin adds, less disturbed than the wall time by other work on the
-- host.  BENCH_MEASURE=cpu makes the boot and work modes report it as
-- their median.
local function cpu_s(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local st = f:read("a")
  f:close()
  local fields = {}
  for x in st:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime (clock ticks)
end
local by_cpu = os.getenv("BENCH_MEASURE") == "cpu"

local function run_rm(path)
  assert(os.execute("rm -rf -- '" .. path:gsub("'", "'\\''") .. "'"))
end

-- BENCH_GUEST=DIR: the argv, boot and rt modes use the guest in DIR
-- (qemu.guest.load; e.g. the Debian image of the distro tier) instead of
-- the default one.
local guest = os.getenv("BENCH_GUEST") and qemu.guest.load(os.getenv("BENCH_GUEST")) or nil

local function fresh_overlay(path)
  os.remove(path)
  qemu.guest.overlay(path, guest) -- qemu-img create -q -f qcow2 -F qcow2 -b system.qcow2 path
end

if mode == "argv" then
  local path = assert(arg[2], "argv OVERLAY")
  fresh_overlay(path)
  local vm <close> = qemu.guest.launch { login = false, system = path, guest = guest }
  for _, a in ipairs(vm.argv) do
    assert(not a:find("\n"), "argv word with a newline")
    print(a)
  end
  vm:quit()
  os.remove(path)
elseif mode == "boot" then
  -- boot OVERLAY [insn]: with "insn", the boot runs under the insn plugin
  -- and the instruction count is printed too (insns=N).
  local path = assert(arg[2], "boot OVERLAY")
  local with_insn = arg[3] == "insn"
  fresh_overlay(path)
  local t0 = now()
  local vm <close> = qemu.guest.launch { login = false, system = path, guest = guest,
                                         plugins = with_insn and { { name = "insn" } } or nil }
  vm.console:expect("login: ", 180)
  local dt = (now() - t0) * 1e6
  if by_cpu then dt = cpu_s(vm.pid) * 1e6 end
  vm:quit()
  local insns = with_insn and vm:plugin_result("insn").total or 0
  os.remove(path)
  print(string.format("median_us=%.1f mean_us=%.1f min_us=%.1f n=1 insns=%d", dt, dt, dt, insns))
elseif mode == "rt" then
  -- rt ROUNDS K: the guest booted and logged in, then ROUNDS rounds of K
  -- vm.console:run("true"); prints the round medians as "median_us=..."
  local rounds, k = tonumber(arg[2]), tonumber(arg[3])
  assert(rounds and k, "rt ROUNDS K")
  local vm <close> = qemu.guest.launch { guest = guest }
  for _ = 1, 5 do vm.console:run("true") end
  local meds = {}
  for r = 1, rounds do
    local t = {}
    for i = 1, k do
      local t0 = now()
      vm.console:run("true")
      t[i] = (now() - t0) * 1e6
    end
    table.sort(t)
    meds[r] = t[(k + 1) // 2]
  end
  table.sort(meds)
  local m = meds[(rounds + 1) // 2]
  print(string.format("median_us=%.1f mean_us=%.1f min_us=%.1f n=%d", m, m, meds[1], rounds * k))
elseif mode == "snapshot" then
  local rounds, k, sock, client = tonumber(arg[2]), tonumber(arg[3]), arg[4], arg[5]
  assert(rounds and k and sock and client, "snapshot ROUNDS K SOCKET SNAPCLIENT")
  os.remove(sock)
  local vm <close> = qemu.guest.launch {
    login = false, extra = { "-qmp", "unix:" .. sock .. ",server=on,wait=off" } }
  vm.console:expect("login: ", 120)

  local function median(t)
    table.sort(t)
    local n = #t
    return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
  end

  -- Where qshell's time goes, from an instance field over VM.qmp (a closure
  -- call and two clock reads per QMP command): its own checks (query-block:
  -- node discovery, the tag's existence before and after), which the C
  -- client skips, and the snapshot-save/-load command itself (QEMU replies
  -- once the job has run), the same on both sides.
  local checks, jobcmd = 0, 0
  local base_qmp = vm.qmp
  vm.qmp = function(self, cmd, ...)
    if cmd ~= "query-block" and cmd ~= "snapshot-save" and cmd ~= "snapshot-load" then
      return base_qmp(self, cmd, ...)
    end
    local t0 = now()
    local r = base_qmp(self, cmd, ...)
    if cmd == "query-block" then checks = checks + (now() - t0) else jobcmd = jobcmd + (now() - t0) end
    return r
  end

  -- -> save, load, save checks, load checks, save outside the job command,
  --    load outside it (us)
  local function run_qshell(tag)
    local c0, j0 = checks, jobcmd
    local t0 = now()
    vm:savevm(tag)
    local t1 = now()
    local c1, j1 = checks, jobcmd
    vm:loadvm(tag)
    local t2 = now()
    local c2, j2 = checks, jobcmd
    vm:delvm(tag)
    return (t1 - t0) * 1e6, (t2 - t1) * 1e6, (c1 - c0) * 1e6, (c2 - c1) * 1e6,
      (t1 - t0 - (j1 - j0)) * 1e6, (t2 - t1 - (j2 - j1)) * 1e6
  end

  local function run_client(tag)
    local p = assert(io.popen(string.format("'%s' '%s' '%s' disk0 1 2>&1", client, sock, tag)))
    local out = p:read("a")
    local ok = p:close()
    local s, l = out:match("save_us=([%d.]+) load_us=([%d.]+)")
    local sc, lc = out:match("save_cmd_us=([%d.]+) load_cmd_us=([%d.]+)")
    if not ok or not s or not sc then error("snapclient failed: " .. out, 0) end
    s, l = tonumber(s), tonumber(l)
    return s, l, s - tonumber(sc), l - tonumber(lc)
  end

  -- Warm-up (not timed): the first saves allocate the vmstate area.
  for i = 1, 2 do
    run_qshell("warm-q" .. i)
    run_client("warm-c" .. i)
  end
  -- Each round: K save/load pairs per side, finely interleaved (q c c q
  -- q c c q ...) so that drift hits both sides alike; a side's round value
  -- is the median of its K.
  local names = { "qshell", "client", "checks", "qshell_out", "client_out" }
  local out = {}
  for _, n in ipairs(names) do out[n] = { save = {}, load = {} } end
  for r = 1, rounds do
    local cur = {}
    for _, n in ipairs(names) do cur[n] = { save = {}, load = {} } end
    local function put(n, i, s, l) cur[n].save[i], cur[n].load[i] = s, l end
    for i = 1, k do
      local qfirst = (r + i) % 2 == 0
      for j = 1, 2 do
        if (j == 1) == qfirst then
          local s, l, cks, ckl, os_, ol = run_qshell("qs" .. r .. "-" .. i)
          put("qshell", i, s, l)
          put("checks", i, cks, ckl)
          put("qshell_out", i, os_, ol)
        else
          local s, l, os_, ol = run_client("cc" .. r .. "-" .. i)
          put("client", i, s, l)
          put("client_out", i, os_, ol)
        end
      end
    end
    for _, n in ipairs(names) do
      out[n].save[r] = median(cur[n].save)
      out[n].load[r] = median(cur[n].load)
    end
  end
  vm:quit()
  os.remove(sock)
  local function fmt(t)
    local o = {}
    for i, v in ipairs(t) do o[i] = string.format("%.1f", v) end
    return table.concat(o, ",")
  end
  for _, side in ipairs(names) do
    print(string.format("%s save_us=%s load_us=%s", side, fmt(out[side].save), fmt(out[side].load)))
  end
elseif mode == "warm" then
  local image, ckpt = arg[2], arg[3]
  assert(image and ckpt, "warm IMAGE CKPT")
  fresh_overlay(image)
  local vm <close> = qemu.guest.launch { system = image } -- booted, logged in
  local _, st = vm.console:run("true")
  assert(st == 0, "the guest's shell does not answer")
  -- The checkpoint first (its copy of IMAGE is then free of the internal
  -- snapshot's VM state), the guest resumed, and at once the same idle
  -- shell saved into IMAGE.
  vm:checkpoint(ckpt, { resume = true })
  vm:savevm("warm")
  vm:quit()
elseif mode == "loadvm_argv" then
  local tag = assert(arg[2], "loadvm_argv TAG")
  local g = qemu.guest.default()
  local binary = require "qemu.util.binary"
  local qemu_bin = binary.default()
  local argv = { qemu_bin }
  -- a QEMU outside the system's: its own firmware and modules, as
  -- qemu.launch gives it (env runs it with QEMU_MODULE_DIR set)
  local tree = binary.resolve(qemu_bin) and binary.tree(binary.resolve(qemu_bin))
  if tree and tree.modules then argv = { "env", "QEMU_MODULE_DIR=" .. tree.modules, qemu_bin } end
  for _, d in ipairs(tree and tree.data or {}) do
    argv[#argv + 1] = "-L"
    argv[#argv + 1] = d
  end
  for _, a in ipairs { "-nodefaults", "-display", "none", "-accel", "tcg", "-m", g.memory, "-no-reboot",
                       "-serial", "stdio", "-kernel", g.kernel, "-initrd", g.initrd, "-append", g.append,
                       "-drive", "file=@IMAGE@,format=qcow2,if=ide,index=0,media=disk",
                       "-loadvm", tag } do
    argv[#argv + 1] = a
  end
  for _, a in ipairs(argv) do
    assert(not a:find("\n"), "argv word with a newline")
    print(a)
  end
elseif mode == "sweep" then
  -- (WORKERS "default": the sweep's own default, one per core)
  local ckpt, workers, n, cmd = arg[2], tonumber(arg[3]), tonumber(arg[4]), arg[5]
  assert(ckpt and (workers or arg[3] == "default") and n and cmd, "sweep CKPT WORKERS N CMD")
  local t0 = now()
  local r = qemu.sweep {
    from = ckpt, ["repeat"] = math.tointeger(n), workers = workers and math.tointeger(workers), progress = false,
    run = function(vm)
      local _, st = vm.console:run(cmd, { timeout = 120 })
      if st ~= 0 then error("the workload exited with status " .. tostring(st), 0) end
    end,
  }
  local dt = (now() - t0) * 1e6
  if r.ok ~= n then
    for _, x in ipairs(r.results) do
      if x.status ~= "ok" then io.stderr:write("run " .. tostring(x.run) .. ": " .. tostring(x.error) .. "\n") end
    end
    error(string.format("sweep: %d of %d runs ok", r.ok, n), 0)
  end
  print(string.format("median_us=%.1f mean_us=%.1f min_us=%.1f n=1 runs=%d", dt, dt, dt, r.ok))
elseif mode == "restore" then
  local ckpt = assert(arg[2], "restore CKPT")
  local t0 = now()
  local vm <close> = qemu.launch { restore = ckpt }
  local _, st = vm.console:run("true")
  local dt = (now() - t0) * 1e6
  assert(st == 0, "true exited with status " .. tostring(st))
  vm:quit()
  print(string.format("median_us=%.1f mean_us=%.1f min_us=%.1f n=1", dt, dt, dt))
elseif mode == "memory" then
  -- memory MIB DIR N: the default guest with 2 GiB of RAM, MIB MiB of it
  -- filled with data (guestmem.fill), on the same state in turn for
  -- BENCH_CKPT_ROUNDS rounds (default 3): vm:checkpoint and QEMU's own
  -- migration of the whole state to a file (file:PATH on 8.2+, exec:cat >
  -- PATH before); then restores: to the guest answering on its console,
  -- from that checkpoint and from one of the same guest idle (about 64 MiB
  -- in use), alternated, and a bare QEMU start with the same options (-S,
  -- to QMP ready); the Pss of one restored VM alone and the summed Pss of
  -- N restored at once.  Prints one line of medians.
  local guestmem = require "guestmem"
  local mib, dir, nvms = tonumber(arg[2]), assert(arg[3], "memory MIB DIR N"), tonumber(arg[4] or "8")
  local rounds = tonumber(os.getenv("BENCH_CKPT_ROUNDS") or "3")
  local function median(t)
    table.sort(t)
    local n = #t
    return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
  end
  local img = dir .. "/sys.qcow2"
  fresh_overlay(img)
  local idle, big = dir .. "/idle.ckpt", dir .. "/big.ckpt"
  local has_file = qemu.version().file_migration
  local ckpts, raws = {}, {}
  local raw
  do
    local vm <close> = qemu.guest.launch { system = img, memory = "2G" }
    vm.console:run("true")
    vm:checkpoint(idle, { resume = true })
    local _, st = vm.console:run(guestmem.fill(mib), { timeout = 1200 })
    assert(st == 0, "filling the guest's memory failed")
    for r = 1, rounds do
      -- qshell: the checkpoint of this state (the guest goes on after it)
      if r > 1 then run_rm(big) end
      vm:pause()
      local t0 = now()
      vm:checkpoint(big, { resume = true })
      ckpts[r] = (now() - t0) * 1e6
      -- QEMU's own migration of the same state (RAM and all) to a file
      vm:qmp("migrate-set-parameters", { ["max-bandwidth"] = 10 * 1024 * 1024 * 1024 })
      vm:qmp("migrate-set-capabilities", { capabilities = { { capability = "events", state = true } } })
      vm:pause()
      vm:events()
      if raw then os.remove(raw) end
      raw = string.format("%s/raw-%d.state", dir, r)
      t0 = now()
      vm:qmp("migrate", { uri = has_file and ("file:" .. raw) or ("exec:cat > " .. raw) })
      repeat
        local ev = vm:wait_event("MIGRATION", { timeout = 1200 })
      until ev.data.status == "completed" or ev.data.status == "failed"
      raws[r] = (now() - t0) * 1e6
      vm:cont()
    end
  end
  local t0 = now()
  qemu.checkpoint.verify(big)
  local verify = (now() - t0) * 1e6
  local m = qemu.checkpoint.read(big)
  -- restores to the guest answering, big and idle alternated
  local function restore(ckpt)
    local t = now()
    local vm <close> = qemu.launch { restore = ckpt }
    local running = now() - t
    local _, st = vm.console:run("true")
    assert(st == 0, "true failed")
    return (now() - t) * 1e6, running * 1e6, vm.ram.backing
  end
  local g = qemu.guest.default()
  local function bare()
    local t = now()
    local vm <close> = qemu.launch { kernel = g.kernel, initrd = g.initrd, append = g.append, memory = "2G",
                                     disks = { img }, paused = true }
    return (now() - t) * 1e6
  end
  restore(big)
  restore(idle)
  local tb, ti, tq, trun = {}, {}, {}, {}
  local backing
  for r = 1, 5 do
    if r % 2 == 1 then
      tb[r], trun[r], backing = restore(big)
      ti[r] = restore(idle)
    else
      ti[r] = restore(idle)
      tb[r], trun[r], backing = restore(big)
    end
    tq[r] = bare()
  end
  -- memory: one restored VM alone, then nvms at once
  local one
  do
    local vm <close> = qemu.launch { restore = big }
    vm.console:run("true")
    one = guestmem.pss(vm.pid)
  end
  local vms, sum = {}, 0
  for i = 1, nvms do
    vms[i] = qemu.launch { restore = big }
    vms[i].console:run("true")
  end
  for _, vm in ipairs(vms) do sum = sum + guestmem.pss(vm.pid) end
  for _, vm in ipairs(vms) do vm:close() end
  print(string.format("raw_save_us=%.0f ckpt_us=%.0f verify_us=%.0f raw_bytes=%d ram_data=%d state_bytes=%d " ..
                      "big_us=%.0f idle_us=%.0f bare_us=%.0f running_us=%.0f one_pss=%d sum_pss=%d nvms=%d " ..
                      "backing=%s rounds=%d",
                      median(raws), median(ckpts), verify, require("qshell.os").stat(raw).size, m.ram and m.ram.data or 0,
                      m.files.state.size, median(tb), median(ti), median(tq), median(trun), one, sum, nvms,
                      backing, rounds))
elseif mode == "work" then
  -- a CPU-bound guest workload from the warm checkpoint, with or without
  -- insn; "roi": insn, with the workload marked as ROI 1 by the helper;
  -- "lua": a Lua script counting every instruction (tb:count); "luaexec":
  -- that and a Lua callback per executed block (blocks=N printed).
  -- ITERATIONS: the loop's (default 300000).
  local ckpt, plugin = assert(arg[2], "work CKPT [insn|roi|lua|luaexec [ITERATIONS]]"), arg[3]
  local plugins
  if plugin == "insn" or plugin == "roi" then
    plugins = { { name = "insn" } }
  elseif plugin == "lua" or plugin == "luaexec" then
    plugins = { qemu.plugin.lua([[
      local execs, exec = 0, plugin.args.exec
      plugin.on_translate(function(tb)
        tb:count("insns", tb.n)
        if exec then tb:on_exec(function() execs = execs + 1 end) end
      end)
      plugin.on_exit(function() return { insns = plugin.counter("insns"), execs = execs } end)
    ]], { exec = plugin == "luaexec" }) }
  end
  local vm <close> = qemu.launch { restore = ckpt, plugins = plugins }
  vm.console:run("true")
  local c0 = cpu_s(vm.pid)
  local cmd = string.format("i=0; while [ $i -lt %d ]; do i=$((i+1)); done", tonumber(arg[4] or 300000))
  if plugin == "roi" then cmd = "qshell-roi begin 1; " .. cmd .. "; qshell-roi end 1" end
  local t0 = now()
  local _, st = vm.console:run(cmd, { timeout = 600 })
  if plugin == "roi" then assert(vm:wait_roi(1, { timeout = 5 }).insns > 1e8, "the ROI counted the loop") end
  local dt = (now() - t0) * 1e6
  local cpu = (cpu_s(vm.pid) - c0) * 1e6
  assert(st == 0, "the workload failed")
  vm:quit()
  local extra = string.format(" cpu_us=%.0f", cpu)
  if plugin == "lua" or plugin == "luaexec" then
    local r = vm:plugin_result("lua")
    assert(r.insns > 1e6, "the script counted the loop")
    extra = extra .. string.format(" insns=%d blocks=%d", r.insns, r.execs)
  end
  -- BENCH_MEASURE=cpu: the median the bench compares is the CPU time
  if by_cpu then dt, extra = cpu, extra .. string.format(" wall_us=%.0f", dt) end
  print(string.format("median_us=%.1f mean_us=%.1f min_us=%.1f n=1%s", dt, dt, dt, extra))
elseif mode == "replay" then
  -- Record and replay: ROUNDS rounds of one run of the workload from a
  -- checkpoint each way (plain, under the recording's icount, recorded,
  -- replayed), insn exact=on on all;
  -- the median times of each, the log's size and the instructions run.
  local dir, rounds = assert(arg[2], "replay DIR ROUNDS"), math.tointeger(tonumber(arg[3] or "3"))
  local cmd = "qshell-roi begin 1; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; qshell-roi end 1"
  local ckpt = dir .. "/ckpt"
  do
    local vm <close> = qemu.guest.launch {}
    vm.console:run(cmd)
    vm:checkpoint(ckpt)
  end
  local function one(opts)
    opts.restore, opts.plugins = ckpt, { { name = "insn", args = { exact = true } } }
    local t0 = now()
    local vm <close> = qemu.launch(opts)
    local _, st = vm.console:run(cmd, { timeout = 600 })
    assert(st == 0, "the workload failed")
    local roi = vm:wait_roi(1, { timeout = 60 }).insns
    vm:quit()
    return (now() - t0) * 1e6, roi, vm:plugin_result("insn").total
  end
  local times = { plain = {}, icount = {}, record = {}, replay = {} }
  local bytes, insns
  for i = 1, rounds do
    local rr = string.format("%s/run%d.rr", dir, i)
    times.plain[i] = one({})
    times.icount[i] = one({ icount = { shift = 2, sleep = true } }) -- what a recording runs under
    local t, roi, total = one({ record = rr })
    times.record[i] = t
    local t2, roi2, total2 = one({ replay = rr })
    times.replay[i] = t2
    assert(roi2 == roi and total2 == total, string.format("the replay counted %d/%d, the recording %d/%d",
                                                         roi2, total2, roi, total))
    bytes, insns = require("qemu.vm.replay").size(rr), total
  end
  local function median(t)
    table.sort(t)
    return t[(#t + 1) // 2]
  end
  print(string.format("plain_us=%.1f icount_us=%.1f record_us=%.1f replay_us=%.1f log_bytes=%d insns=%d",
                      median(times.plain), median(times.icount), median(times.record), median(times.replay), bytes,
                      insns))
else
  io.stderr:write("usage: qshell guest_bench.lua argv OVERLAY | boot OVERLAY | snapshot ROUNDS K SOCKET SNAPCLIENT\n")
  io.stderr:write("       | warm IMAGE CKPT | loadvm_argv TAG | sweep CKPT WORKERS N CMD | restore CKPT | replay DIR ROUNDS\n")
  os.exit(2)
end
