-- Portable checkpoints and sweeps from them (the main job).
local T = require "t"

local tmp = T.tmpdir()
local g = qemu.guest.default()

local function sha(path)
  local _, out = T.sh("sha256sum " .. path)
  return out:match("^(%x+)")
end

local function count(vm)
  local _, n = vm.console:expect("count=(%d+)\r?\n", 20)
  return tonumber(n)
end

local function slurp(p)
  local f = io.open(p, "rb"); if not f then return "" end
  local s = f:read("a"); f:close(); return s
end

local function lines(p)
  local n = {}
  for l in slurp(p):gmatch("[^\n]+") do n[#n + 1] = l end
  return n
end

-- One checkpoint of a guest running a counter, shared by the tests below.
local ckpt = tmp .. "/counter.ckpt"
local saved
do
  local vm <close> = qemu.guest.launch {}
  vm.console:send("i=0; while true; do echo count=$i; i=$((i+1)); sleep 0.2; done &\r")
  repeat saved = count(vm) until saved >= 3
  vm:checkpoint(ckpt)
  T.eq(vm:status(), "postmigrate")
  -- the last value printed before the checkpoint
  for n in vm.console:flush():gmatch("count=(%d+)") do saved = tonumber(n) end
end

T.test("checkpoint then restore: the counter continues in two VMs at once; the bases are unchanged", function()
  local m = qemu.checkpoint.read(ckpt)
  T.match(m.qemu, "^%d+%.%d+%.%d+$")
  T.eq(#m.disks, 1)
  T.match(m.files.state.sha256, "^%x+$")
  -- self-contained: relative names only, kernel and initrd inside
  T.eq(m.launch.kernel, "kernel")
  T.eq(m.launch.initrd, "initrd")
  T.eq(m.disks[1].base, nil)
  T.eq(qemu.disk.info(ckpt .. "/" .. m.disks[1].file).backing, nil)
  T.ok(not slurp(ckpt .. "/manifest.json"):find(tmp, 1, true), "no absolute path of the source in the manifest's files")
  local before = { state = sha(ckpt .. "/state"), disk = sha(ckpt .. "/" .. m.disks[1].file), system = sha(g.system),
                   ram = sha(ckpt .. "/ram") }
  local a <close> = qemu.launch { restore = ckpt }
  local b <close> = qemu.launch { restore = ckpt, name = "second" }
  T.eq(a:status(), "running")
  T.eq(b:status(), "running")
  local na, nb = count(a), count(b)
  T.ok(na >= saved - 1 and na <= saved + 2, string.format("a resumed at %d, saved %d", na, saved))
  T.ok(nb >= saved - 1 and nb <= saved + 2, string.format("b resumed at %d, saved %d", nb, saved))
  -- each writes its own overlay
  a.console:run("echo from-a > /root/who; sync")
  -- (the guest's background counter may print into the output: look at the last line)
  T.match(b.console:run("cat /root/who 2>/dev/null || echo none"), "none$")
  -- the state is passed open (its path is not in argv) and holds the
  -- devices only: the RAM is the checkpoint's RAM file, mapped private
  local argv = table.concat(a.argv, " ")
  T.match(argv, "%-incoming defer")
  T.ok(not argv:find(ckpt .. "/state", 1, true), "the state file is not named in argv")
  T.ok(argv:find("mem-path=" .. ckpt .. "/ram,share=off", 1, true), argv)
  T.eq(a.ram.backing, "mapped")
  T.eq(m.ram.file, "ram")
  T.ok(m.files.state.size < 2e6, "the state holds no RAM: " .. m.files.state.size .. " bytes")
  a:close()
  b:close()
  T.eq(sha(ckpt .. "/state"), before.state)
  T.eq(sha(ckpt .. "/ram"), before.ram)
  T.eq(sha(ckpt .. "/" .. m.disks[1].file), before.disk)
  T.eq(sha(g.system), before.system)
  qemu.checkpoint.verify(ckpt)
end)

T.test("a checkpoint on another QEMU: restored where it has the machine type, else refused naming both", function()
  local others = {}
  for b in (os.getenv("QSHELL_TEST_QEMU_LIST") or ""):gmatch("%S+") do
    if qemu.version(b).path ~= qemu.version().path then others[#others + 1] = b end
  end
  if #others == 0 then
    io.stderr:write("  (one QEMU only: QSHELL_TEST_QEMU_LIST names the others)\n")
    return
  end
  local m = qemu.checkpoint.read(ckpt)
  T.match(m.launch.machine_type, "^pc%-i440fx%-%d+%.%d+$", "the resolved machine type is recorded")
  T.eq(m.qemu, qemu.version().text)
  for _, b in ipairs(others) do
    local v = qemu.version(b)
    if require("qemu.util.binary").machines(b)[m.launch.machine_type] then
      local vm <close> = qemu.launch { restore = ckpt, binary = b }
      T.eq(vm.version, v.text)
      local n = count(vm)
      T.ok(n >= saved, "the counter goes on from the state on QEMU " .. v.text)
    else
      local e = T.raises(function() qemu.launch { restore = ckpt, binary = b } end, "BadArgument")
      T.match(e.desc, m.launch.machine_type:gsub("%p", "%%%0"))
      T.match(e.desc, "QEMU " .. qemu.version().text:gsub("%p", "%%%0"))
      T.match(e.desc, "QEMU " .. v.text:gsub("%p", "%%%0"))
    end
  end
end)

T.test("movable: copied (cp -a) and moved (mv) elsewhere, it restores; info() says what is in it", function()
  local copy, moved = tmp .. "/copies/a/ckpt", tmp .. "/elsewhere.ckpt"
  T.eq((T.sh("mkdir -p " .. tmp .. "/copies/a && cp -a " .. ckpt .. " " .. copy .. " && cp -a " .. copy ..
             " " .. tmp .. "/tomove && mv " .. tmp .. "/tomove " .. moved)), 0)
  for _, dir in ipairs { copy, moved } do
    local vm <close> = qemu.launch { restore = dir }
    local n = count(vm)
    T.ok(n >= saved - 1 and n <= saved + 2, string.format("resumed at %d from %s, saved %d", n, dir, saved))
  end
  local info = qemu.checkpoint.info(moved)
  T.eq(info.qemu, qemu.version().text)
  T.match(info.machine_type, "^pc%-i440fx%-")
  T.ok(info.bytes > 1e6)
  T.match(info.text, "machine   pc%-i440fx%-")
  T.match(info.text, "state     %d")
  T.match(info.text, "self%-contained")
end)

T.test("force=true replaces a checkpoint with a whole new one", function()
  local dir = tmp .. "/replaced.ckpt"
  T.eq((T.sh("cp -a " .. ckpt .. " " .. dir)), 0)
  local before = qemu.checkpoint.read(dir).files.ram.sha256_chunks
  local vm <close> = qemu.guest.launch {}
  vm.console:run("echo replaced > /root/mark")
  vm:checkpoint(dir, { force = true })
  local m = qemu.checkpoint.read(dir)
  T.ok(m.files.ram.sha256_chunks ~= before, "another RAM file")
  qemu.checkpoint.verify(dir)
  local _, left = T.sh("ls " .. dir)
  T.eq(left, "disk-0.qcow2\ninitrd\nkernel\nmanifest.json\nram\nstate\n")
  local r <close> = qemu.launch { restore = dir }
  T.eq(r.console:run("cat /root/mark"), "replaced")
end)

T.test("force=true never pulls a checkpoint from under the VM restored from it; a failed checkpoint leaves the old one", function()
  local dir = tmp .. "/forced.ckpt"
  T.eq((T.sh("cp -a " .. ckpt .. " " .. dir)), 0)
  local vm <close> = qemu.launch { restore = dir }
  local e = T.raises(function() vm:checkpoint(dir, { force = true }) end, "BadArgument", "runs from")
  T.match(e.desc, "another directory")
  qemu.checkpoint.verify(dir)
  -- a checkpoint that fails half-way (its migration times out) leaves the old one whole
  local other = tmp .. "/kept.ckpt"
  T.eq((T.sh("cp -a " .. ckpt .. " " .. other)), 0)
  T.raises(function() vm:checkpoint(other, { force = true, timeout = 0 }) end, "Timeout")
  qemu.checkpoint.verify(other)
  T.eq(vm:status(), "running", "the VM goes on after the failed checkpoint")
  local _, left = T.sh("ls -d " .. tmp .. "/kept.ckpt.new-* 2>/dev/null")
  T.eq(left, "", "no half-made checkpoint left beside it")
end)

T.test("verified: a changed byte is refused, with verify=true even when the mtime was put back", function()
  local dir = tmp .. "/corrupt.ckpt"
  T.eq((T.sh("cp -a " .. ckpt .. " " .. dir .. " && chmod u+w " .. dir .. "/state")), 0)
  -- flip one byte in the middle of the state, then restore its mtime
  local function flip(file, at)
    T.eq((T.sh("ref=$(stat -c %y " .. file .. ") && printf '\\377' | dd of=" .. file .. " bs=1 seek=" .. at ..
               " conv=notrunc 2>/dev/null && touch -d \"$ref\" " .. file)), 0)
  end
  flip(dir .. "/state", require("qshell.os").stat(dir .. "/state").size // 2)
  -- the cheap check (sizes, mtimes) cannot see it; verify=true and verify() do
  local e = T.raises(function() qemu.launch { restore = dir, verify = true } end, "CheckpointCorrupt", "state")
  T.match(e.desc, "SHA%-256")
  T.raises(function() qemu.checkpoint.verify(dir) end, "CheckpointCorrupt", "state")
  T.eq(#qemu.vms(), 0, "nothing started")
  -- a changed mtime gets the hash checked by a plain restore too
  T.eq((T.sh("touch " .. dir .. "/state")), 0)
  T.raises(function() qemu.launch { restore = dir } end, "CheckpointCorrupt", "state")
  -- a truncated disk (in a good copy): refused by its size
  local dir2 = tmp .. "/truncated.ckpt"
  T.eq((T.sh("cp -a " .. ckpt .. " " .. dir2 .. " && chmod u+w " .. dir2 .. "/disk-0.qcow2 && truncate -s -512 " ..
             dir2 .. "/disk-0.qcow2")), 0)
  e = T.raises(function() qemu.launch { restore = dir2 } end, "CheckpointCorrupt", "disk%-0%.qcow2")
  T.match(e.desc, "bytes, the manifest says")
  -- a changed byte in the RAM file, in a hole (a page the guest never
  -- used) and in data: its chunked digest sees both
  for _, at in ipairs { 250 * 1048576 + 7, 1048576 + 3 } do
    local dir3 = tmp .. "/ram-flip.ckpt"
    T.eq((T.sh("rm -rf " .. dir3 .. " && cp -a " .. ckpt .. " " .. dir3)), 0)
    flip(dir3 .. "/ram", at)
    e = T.raises(function() qemu.checkpoint.verify(dir3) end, "CheckpointCorrupt", "ram")
    T.match(e.desc, "digest")
    T.raises(function() qemu.launch { restore = dir3, verify = true } end, "CheckpointCorrupt", "ram")
  end
  T.raises(function() qemu.launch { memory = "64M", verify = true } end, "BadArgument", "restore")
end)

T.test("shared_base: only the differences are kept; a changed base is refused", function()
  local base = tmp .. "/shared-base.qcow2"
  T.eq((T.sh("cp " .. g.system .. " " .. base)), 0)
  local top = qemu.disk.overlay(base, tmp .. "/shared-top.qcow2")
  local dir = tmp .. "/shared.ckpt"
  do
    local vm <close> = qemu.guest.launch { system = top }
    vm.console:run("echo on-top > /root/top; sync")
    vm:checkpoint(dir, { shared_base = true })
  end
  local m = qemu.checkpoint.read(dir)
  T.eq(m.disks[1].base.path, require("qshell.os").realpath(base))
  T.match(m.disks[1].base.sha256, "^%x+$")
  T.ok(m.files[m.disks[1].file].size < 20e6, "the disk holds only the differences")
  do
    local vm <close> = qemu.launch { restore = dir }
    T.eq(vm.console:run("cat /root/top"), "on-top")
  end
  -- the base changes behind the checkpoint's back (same size): refused
  T.eq((T.sh("printf 'x' | dd of=" .. base .. " bs=1 seek=2000000 conv=notrunc 2>/dev/null")), 0)
  local e = T.raises(function() qemu.launch { restore = dir } end, "CheckpointCorrupt")
  T.match(e.desc, "base")
  T.match(e.desc, "shared%-base%.qcow2")
end)

T.test("lean: a VM's internal snapshots are not copied into its checkpoint", function()
  local img = tmp .. "/with-snap.qcow2"
  qemu.disk.overlay(g.system, img)
  local dir = tmp .. "/lean.ckpt"
  do
    local vm <close> = qemu.guest.launch { system = img }
    vm:savevm("inside")
    T.ok(qemu.disk.info(img).actual_size > 40e6, "the image holds the saved VM state")
    vm:checkpoint(dir)
  end
  local m = qemu.checkpoint.read(dir)
  local di = qemu.disk.info(dir .. "/" .. m.disks[1].file)
  T.eq(#(di.snapshots or {}), 0, "no internal snapshot in the checkpoint's disk")
  T.ok(m.files[m.disks[1].file].size < 20e6,
       "the checkpoint's disk is small: " .. m.files[m.disks[1].file].size .. " bytes")
end)

T.test("a mapped-ram state (QEMU 9.0+, as earlier versions of qshell wrote it) restores", function()
  if qemu.version().major < 9 then
    io.stderr:write("  (mapped-ram: QEMU 9.0+ only; this is " .. qemu.version().text .. ")\n")
    return
  end
  local dir = tmp .. "/mapped.ckpt"
  -- (RAM left to QEMU, as before qshell held it: the stream names pc.ram)
  local vm <close> = qemu.guest.launch { extra = { "-m", g.memory } }
  T.eq(vm.ram.backing, "qemu")
  vm.console:run("echo mapped-mark > /tmp/mark")
  vm:pause()
  -- the same idle guest saved twice: the checkpoint, then (resumed, still
  -- idle) QEMU's mapped-ram migration in place of its state
  vm:checkpoint(dir, { resume = true })
  vm:pause()
  local raw = tmp .. "/mapped.state"
  vm:qmp("migrate-set-capabilities", { capabilities = { { capability = "mapped-ram", state = true } } })
  vm:qmp("migrate", { uri = "file:" .. raw })
  repeat qemu.sleep(0.05) until vm:qmp("query-migrate").status == "completed"
  vm:close()
  local m = qemu.json.decode(slurp(dir .. "/manifest.json"))
  local size = require("qshell.os").stat(raw).size
  T.eq((T.sh(string.format("chmod u+w %s %s/manifest.json && mv %s %s/state && chmod 0444 %s/state",
                           dir, dir, raw, dir, dir))), 0)
  m.state.mapped_ram = true
  m.format = 2
  m.files.state = { size = size, sha256 = sha(dir .. "/state"),
                    mtime = require("qshell.os").stat(dir .. "/state").mtime }
  local f = assert(io.open(dir .. "/manifest.json", "w"))
  f:write(qemu.json.encode(m))
  f:close()
  qemu.checkpoint.verify(dir)
  local r <close> = qemu.launch { restore = dir }
  T.match(table.concat(r.argv, " "), "%-incoming defer")
  local out, st = r.console:run("cat /tmp/mark")
  T.eq(st, 0)
  T.match(out, "mapped%-mark")
end)

T.test("restore refuses options that change the machine", function()
  local e = T.raises(function() qemu.launch { restore = ckpt, memory = "512M" } end, "BadArgument")
  T.match(e.desc, "memory=512M differs from the checkpoint's memory=256M")
  T.raises(function() qemu.launch { restore = ckpt, smp = 2 } end, "BadArgument", "smp")
  T.raises(function() qemu.launch { restore = ckpt, disks = { g.system } } end, "BadArgument", "disks")
  T.raises(function() qemu.launch { restore = ckpt, loadvm = "x" } end, "BadArgument")
  -- plugins, icount and names may differ
  local vm <close> = qemu.launch { restore = ckpt, name = "free", plugins = { { name = "insn" } } }
  T.eq(vm:status(), "running")
  T.eq(#qemu.vms(), 1)
end)

T.test("not a checkpoint, and a checkpoint dir that is not empty", function()
  T.raises(function() qemu.launch { restore = tmp } end, "NotACheckpoint", "no manifest")
  T.raises(function() qemu.launch { restore = tmp .. "/nope" } end, "NotACheckpoint", "no such directory")
  local vm <close> = qemu.launch { memory = "64M", disks = { qemu.disk.create(tmp .. "/d.qcow2", "8M") } }
  local e = T.raises(function() vm:checkpoint(ckpt) end, "FileExists")
  T.match(e.hint, "force=true")
  T.eq(vm:status(), "running", "nothing happened to the VM")
  -- a parent that is a file cannot be made; missing parents are made
  local file = tmp .. "/a-file"
  assert(io.open(file, "w")):close()
  T.raises(function() vm:checkpoint(file .. "/ckpt") end, "IOError", "a%-file")
  vm:checkpoint(tmp .. "/new/parents/ckpt")
  T.ok(T.exists(tmp .. "/new/parents/ckpt/manifest.json"), "checkpoint made under new parent dirs")
end)

-- A sweep script run as its own qshell process (so it can be killed).
local function sweep_script(out, extra)
  local path = tmp .. "/sweep.lua"
  local f = assert(io.open(path, "w"))
  f:write(string.format([[
    local r = qemu.sweep {
      from = %q, out = %q, workers = 2, resume = true,
      matrix = { n = { 1000, 4000, 16000 } }, ["repeat"] = 2,
      run = function(vm, p)
        %s
        local t = qemu.now()
        local _, st = vm.console:run(string.format("i=0; while [ $i -lt %%d ]; do i=$((i+1)); done", p.n))
        return { guest_s = qemu.now() - t, result = st == 0 and "ran" or "bad" }
      end,
    }
    print("SWEEP", r.ok, r.failed, r.skipped)
  ]], ckpt, out, extra or ""))
  f:close()
  return path
end

T.test("a sweep of 6 runs with 2 workers writes 6 rows", function()
  local out = tmp .. "/six.csv"
  local code, stdout, stderr = T.sh("./qshell run " .. sweep_script(out))
  T.eq(code, 0, stderr)
  T.match(stdout, "SWEEP\t6\t0\t0")
  local l = lines(out)
  T.eq(#l, 7)
  T.eq(l[1], "run,repeat,n,status,wall_s,error,host,started,prov,guest_s,result")
  local rows = qemu.sweep.read(out)
  T.eq(#rows, 6)
  T.eq(rows[1].result, "ran")
  T.eq(type(rows[1].guest_s), "number")
  local seen = {}
  for i = 2, 7 do
    local key = l[i]:match("^([^,]+)")
    T.ok(not seen[key], "no duplicate " .. key)
    seen[key] = true
    T.match(l[i], ",ok,")
  end
end)

T.test("a sweep killed halfway and resumed: exactly 6 rows, no duplicates", function()
  local out = tmp .. "/resume.csv"
  local script = sweep_script(out, "qemu.sleep(0.5)")
  local _, pid = T.sh("TMPDIR=" .. (os.getenv("TMPDIR") or "/tmp") .. " ./qshell run " .. script ..
                      " >/dev/null 2>&1 & echo $!")
  pid = tonumber(pid)
  local deadline = T.now() + 60
  while #lines(out) < 3 and T.now() < deadline do qemu.sleep(0.05) end
  T.ok(#lines(out) >= 3, "some rows were written")
  os.execute("kill -KILL " .. pid)
  qemu.sleep(0.5)
  local partial = #lines(out) - 1
  T.ok(partial >= 2 and partial < 6, "killed halfway: " .. partial .. " rows")
  -- the killed sweep's lock file stays behind; the resume takes it over
  T.ok(T.exists(out .. ".lock"), "the killed sweep's lock file is left")
  local code, stdout, stderr = T.sh("./qshell run " .. script)
  T.eq(code, 0)
  T.match(stdout, "SWEEP\t%d+\t0\t" .. partial)
  T.match(stderr, "taking over the lock of a sweep that is gone %(pid " .. pid .. " ")
  T.ok(not T.exists(out .. ".lock"), "the lock file is removed at the end")
  local l = lines(out)
  T.eq(#l, 7, "header + 6 rows")
  local seen = {}
  for i = 2, #l do
    local key = l[i]:match("^([^,]+)")
    T.ok(not seen[key], "duplicate row " .. key)
    seen[key] = true
  end
end)

T.test("one writer per results file: of two sweeps started together one runs; a resume beside it is refused", function()
  local out = tmp .. "/busy.csv"
  local script = sweep_script(out, "qemu.sleep(0.3)")
  local d = tmp .. "/busy"
  os.execute("mkdir -p " .. d)
  -- two at once: one runs the sweep, the other is refused at once
  local code = T.sh(string.format("(./qshell run %s >%s/a.out 2>%s/a.err; echo $? >%s/a.rc) & " ..
                                  "(./qshell run %s >%s/b.out 2>%s/b.err; echo $? >%s/b.rc) & wait",
                                  script, d, d, d, script, d, d, d))
  T.eq(code, 0)
  local rc = { a = tonumber(slurp(d .. "/a.rc")), b = tonumber(slurp(d .. "/b.rc")) }
  local won, lost = "a", "b"
  if rc.a ~= 0 then won, lost = "b", "a" end
  T.eq(rc[won], 0, slurp(d .. "/" .. won .. ".err"))
  T.ok(rc[lost] ~= 0, "the second sweep is refused")
  T.match(slurp(d .. "/" .. lost .. ".err"), "is being written by another sweep %(pid %d+ on [^,]+, started %S+: .*qshell run")
  T.match(slurp(d .. "/" .. lost .. ".err"), "ResultsBusy")
  T.match(slurp(d .. "/" .. won .. ".out"), "SWEEP\t6\t0\t0")
  T.eq(#lines(out), 7, "header + 6 rows, once each")
  T.ok(not T.exists(out .. ".lock"), "no lock file left")

  -- a resume started while a sweep runs: refused within a second, naming it
  os.remove(out)
  local _, pid = T.sh("./qshell run " .. script .. " >/dev/null 2>&1 & echo $!")
  pid = tonumber(pid)
  local deadline = T.now() + 60
  while #lines(out) < 2 and T.now() < deadline do qemu.sleep(0.05) end
  local t0 = T.now()
  local c2, _, err2 = T.sh("QSHELL_SWEEP_RESUME=1 ./qshell run " .. script)
  T.ok(T.now() - t0 < 5, "refused at once")
  T.ok(c2 ~= 0)
  T.match(err2, "ResultsBusy")
  T.match(err2, "%(pid " .. pid .. " on ")
  T.sh("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.1; done")
  T.eq(#lines(out), 7, "the first sweep wrote every row once")
end)

T.test("a full disk under a sweep: it stops naming the file and the cause, rows stay whole, resume completes", function()
  local mnt = T.tmpfs(tmp .. "/small", "256k")
  local out, filler = mnt .. "/full.csv", mnt .. "/filler"
  local spec = {
    from = ckpt, out = out, workers = 1, resume = true, matrix = { n = { 1, 2, 3, 4, 5, 6 } },
    run = function(vm, p)
      local n2 = tonumber((vm.console:run("echo $((" .. p.n .. " * 2))")))
      -- the third run fills the disk: its row is the first that does not fit
      if p.n == 3 and not T.exists(tmp .. "/filled") then
        os.execute("dd if=/dev/zero of=" .. filler .. " bs=4k 2>/dev/null; touch " .. tmp .. "/filled")
      end
      -- rows of 3 KB: one of them cannot fit in what is left of a page
      return { n2 = n2, pad = string.rep("x", 3000) }
    end,
  }
  local ok, e = pcall(qemu.sweep, spec)
  T.ok(not ok, "the sweep stops")
  T.eq(e.class, "IOError")
  T.match(e.desc, "cannot append a result to " .. out:gsub("%p", "%%%0") .. ": No space left on device")
  T.match(e.hint, "resume=true")
  local text = slurp(out)
  T.match(text, "\n$", "no half row at the end")
  local rows = qemu.sweep.read(out)
  T.eq(#rows, 2, "the rows before the full disk, whole")
  for _, r in ipairs(rows) do T.eq(r.n2, 2 * r.n); T.eq(#r.pad, 3000) end
  T.ok(not T.exists(out .. ".lock"), "no lock left")
  T.eq(#qemu.vms(), 0)
  -- space again: resume does the rest, every run once
  os.remove(filler)
  local r = qemu.sweep(spec)
  T.eq(r.ok, 4)
  T.eq(r.skipped, 2)
  rows = qemu.sweep.read(out)
  T.eq(#rows, 6)
  local seen = {}
  for _, row in ipairs(rows) do
    T.ok(not seen[row.n], "run " .. row.n .. " once")
    seen[row.n] = true
    T.eq(row.n2, 2 * row.n)
  end
end)

T.test("a run that raises is recorded as failed; the others finish", function()
  local out = tmp .. "/fail.jsonl"
  local r = qemu.sweep {
    from = ckpt, out = out, workers = 2, matrix = { x = { 1, 2, 3 } },
    run = function(vm, p)
      if p.x == 2 then error("run two breaks") end
      return { echoed = tonumber((vm.console:run("echo " .. p.x))) }
    end,
  }
  T.eq(r.ok, 2)
  T.eq(r.failed, 1)
  local rows = {}
  for _, l in ipairs(lines(out)) do
    local row = qemu.json.decode(l)
    rows[row.params.x] = row
  end
  T.eq(rows[1].status, "ok")
  T.eq(rows[1].metrics.echoed, 1)
  T.eq(rows[3].metrics.echoed, 3)
  T.eq(rows[2].status, "failed")
  T.match(rows[2].error, "run two breaks")
  T.eq(#qemu.vms(), 0)
end)

T.test("a run over its timeout is killed and recorded; no QEMU is left", function()
  local r = qemu.sweep {
    from = ckpt, workers = 1, timeout = 3, matrix = { s = { 0, 60 } },
    run = function(vm, p)
      vm.console:run("sleep " .. p.s, { timeout = 120 })
      return { slept = p.s }
    end,
  }
  T.eq(r.ok, 1)
  T.eq(r.failed, 1)
  for _, res in ipairs(r.results) do
    if res.params.s == 60 then T.match(res.error, "timed out after 3 s") end
  end
end)

T.test("a sweep from a savevm tag with launch.disks (it failed every run)", function()
  local img = tmp .. "/tagged.qcow2"
  qemu.disk.overlay(g.system, img)
  do
    local vm <close> = qemu.guest.launch { system = img }
    vm.console:run("echo from-the-tag > /root/mark && sync")
    vm:savevm("warm")
  end
  local before = sha(img)
  local r = qemu.sweep {
    from = "warm", workers = 2, matrix = { k = { 1, 2 } },
    launch = { kernel = g.kernel, initrd = g.initrd, append = g.append, memory = g.memory, disks = { img } },
    run = function(vm, p)
      local out, st = vm.console:run("cat /root/mark; echo k=" .. p.k)
      assert(st == 0, out)
      return { mark = out:match("^[^\n]*") }
    end,
  }
  T.eq(r.failed, 0, r.results[1] and tostring(r.results[1].error))
  T.eq(r.ok, 2)
  for _, res in ipairs(r.results) do T.eq(res.metrics.mark, "from-the-tag") end
  T.eq(sha(img), before, "the tagged image was not touched")
end)

T.test("bad input: empty axis, other columns, not a checkpoint", function()
  local base = { from = ckpt, run = function() return {} end }
  local function with(t) local o = {} for k, v in pairs(base) do o[k] = v end for k, v in pairs(t) do o[k] = v end return o end
  T.raises(function() qemu.sweep(with { matrix = { a = {} } }) end, "BadArgument", "axis 'a' is empty")
  T.raises(function() qemu.sweep(with { matrix = { status = { 1 } } }) end, "BadArgument")
  T.raises(function() qemu.sweep(with { from = tmp .. "/nowhere" }) end, "NotACheckpoint")
  T.raises(function() qemu.sweep(with { workrs = 2 }) end, "BadArgument", "did you mean 'workers'")
  local other = tmp .. "/other.csv"
  local f = assert(io.open(other, "w")); f:write("run,repeat,zzz,status,wall_s,error\nzzz=1#1,1,1,ok,0.1,\n"); f:close()
  local e = T.raises(function() qemu.sweep(with { matrix = { a = { 1 } }, out = other, resume = true }) end, "BadArgument")
  T.match(e.desc, "columns")
  T.raises(function() qemu.sweep(with { matrix = { a = { 1 } }, out = other }) end, "FileExists")
end)

T.run()
