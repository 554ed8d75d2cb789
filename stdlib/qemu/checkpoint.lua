-- qemu.checkpoint: self-contained, verified, movable checkpoints, and
-- launch{restore=dir}.
--
-- vm:checkpoint(dir) migrates the VM state to dir/state (through an fd
-- passed over QMP: no shell, no path quoting), writes every disk into dir
-- as a compact qcow2 with no external backing (qemu-img convert: the chain
-- flattened, internal snapshots left out), copies the kernel and initrd in,
-- and writes dir/manifest.json with relative paths only and every file's
-- size, mtime and SHA-256.  With {shared_base=true} a disk keeps its
-- backing file outside (only the differences are stored) and the base is
-- recorded by size, mtime and SHA-256.
--
-- qemu.launch{restore=dir} checks the files cheaply (sizes; a changed mtime
-- gets its hash checked; a referenced base its hash, once per process), or
-- fully with verify=true, and raises CheckpointCorrupt naming the file
-- before anything starts.  Each VM gets fresh qcow2 overlays over the
-- checkpoint's read-only images in its own temp dir, so any number of VMs
-- run from one checkpoint at once, and the directory can be moved or copied
-- anywhere (mv, cp -a) and still restores.

local errors = require "qemu.errors"
local fs = require "qemu.fs"
local check = require "qemu.check"
local run = require "qemu.run"
local disk = require "qemu.disk"
local json = require "qshell.json"
local sys = require "qshell.os"
local hash = require "qshell.hash"
local config = require "qshell.config"

local M = {}

local FORMAT = 2
local FDNAME = "qshell-ckpt"
-- What defines the machine: a restore must not change these.
M.machine_keys = { "machine", "cpu", "smp", "memory", "kernel", "initrd", "append", "console", "accel" }
-- What a restore may set freely.
-- (binary too: a checkpoint restores on another QEMU that has its machine type.)
M.free_keys = { plugins = true, icount = true, name = true, timeout = true, reboot = true, extra = true,
                binary = true, paused = true,
                restore = true }

local read_file = fs.read

-- Inside one of qshell's temp dirs (gone when its owner exits)?
local function is_transient(path)
  local base = (os.getenv("TMPDIR") or ""):gsub("/+$", "")
  if base == "" then base = "/tmp" end
  return path:sub(1, #base + 8) == base .. "/qshell-"
end

-- Wait for the migration to end; returns the final status.
local function wait_migration(vm, what, timeout)
  local ev = vm:wait_event("MIGRATION", {
    timeout = timeout,
    match = { data = {} },
  })
  while ev.data.status ~= "completed" and ev.data.status ~= "failed" and ev.data.status ~= "cancelled" do
    ev = vm:wait_event("MIGRATION", { timeout = timeout })
  end
  if ev.data.status ~= "completed" then
    local info = vm:qmp("query-migrate")
    errors.raise { class = "CheckpointFailed", command = what,
                   desc = "migration " .. ev.data.status .. (info["error-desc"] and (": " .. info["error-desc"]) or "") }
  end
end

local function migration_setup(vm)
  vm:qmp("migrate-set-capabilities", { capabilities = { { capability = "events", state = true } } })
end

-- Does this VM's QEMU migrate to "file:" (8.2+)?  Asked of its version.
local function has_file_migration(vm)
  local maj, min = (vm.version or ""):match("^(%d+)%.(%d+)")
  maj, min = tonumber(maj), tonumber(min)
  return maj ~= nil and (maj > 8 or (maj == 8 and min >= 2))
end

-- Hand an open state file (fd) to QEMU and return the migration URI for
-- it, and a release().  On QEMU 8.2+ "file:" over an fd set (add-fd: "fd:"
-- to a file is deprecated there, 9.1 warns); on 7.2 "fd:" with getfd.  The
-- fd is closed here either way (QEMU has its own copy).
local function pass_fd(vm, fd)
  if has_file_migration(vm) then
    -- QEMU picks a free fd set id and says which.
    local ok, r = pcall(vm.qmp, vm, "add-fd", {}, { timeout = 30, fd = fd })
    sys.close(fd)
    if not ok then error(r, 0) end
    return "file:/dev/fdset/" .. r["fdset-id"], function()
      pcall(vm.qmp, vm, "remove-fd", { ["fdset-id"] = r["fdset-id"] })
    end
  end
  local ok, err = pcall(vm.qmp, vm, "getfd", { fdname = FDNAME }, { timeout = 30, fd = fd })
  sys.close(fd)
  if not ok then error(err, 0) end
  return "fd:" .. FDNAME, function() pcall(vm.qmp, vm, "closefd", { fdname = FDNAME }) end
end

-- The URI for loading a checkpoint's state file.  A mapped-ram state
-- (written by earlier versions of qshell on QEMU 9.0+: each RAM page at its
-- own offset) needs the capability on, and a QEMU that has it.
local function load_uri(vm, path, mapped, what)
  -- (Only mapped-ram states come here: the others load as QEMU starts.)
  local maj = tonumber((vm.version or ""):match("^(%d+)")) or 0
  if mapped and maj < 9 then
    errors.raise { class = "CheckpointFailed", command = what,
                   desc = "the checkpoint's state is mapped-ram (QEMU 9.0+), which QEMU " ..
                          tostring(vm.version) .. " cannot load" }
  end
  if mapped then
    vm:qmp("migrate-set-capabilities", { capabilities = { { capability = "mapped-ram", state = true } } })
  end
  local fd, msg = sys.open(path, "r")
  if not fd then errors.raise { class = "IOError", command = what, desc = msg } end
  return pass_fd(vm, fd)
end

-- The machine type QEMU resolved (-machine pc is pc-i440fx-<version>).
local function machine_type(vm)
  local ok, t = pcall(vm.qmp, vm, "qom-get", { path = "/machine", property = "type" })
  if ok and type(t) == "string" then return (t:gsub("%-machine$", "")) end
  return nil
end

local ckpt_opts = { force = "boolean", resume = "boolean", timeout = check.nonneg, shared_base = "boolean" }

-- SHA-256 of a file, in this process (libcrypto).
local function sha256(path, command)
  local sum, err, code = hash.sha256(path)
  if not sum then errors.from_code(command, err, code) end
  return sum
end

-- A background hash's result, or its error raised.
local function job_result(job, command)
  local sum, size, code = job:wait()
  if not sum then errors.from_code(command, size, code) end
  return sum, size
end

-- vm:checkpoint(dir [, {force=false, resume=false, timeout=600, shared_base=false}]) -> dir
-- The VM is paused for the checkpoint and stays paused (QEMU's
-- "postmigrate") unless resume=true; the checkpoint's images are copies,
-- so the VM may go on writing its own disks either way.
local CKPT_FILE = function(name)
  return name == "manifest.json" or name == "state" or name == "kernel" or name == "initrd"
         or name:match("^disk%-%d+%.%a+$") ~= nil
end

-- Is path (a file the VM runs from) inside dir?
local function inside(path, dir)
  local rp = path and (sys.realpath(path) or fs.abspath(path))
  return rp ~= nil and rp:sub(1, #dir + 1) == dir .. "/"
end

function M.make(self, dir, opts)
  local fname = "vm:checkpoint"
  check.arg(fname, 1, dir, "string")
  if dir == "" then check.bad(fname, "the checkpoint directory is empty") end
  opts = check.options(fname, opts, ckpt_opts, 2)
  self:_live(fname)
  if not self:_owned() then
    check.bad(fname, "a checkpoint needs a VM launched by this shell (its launch options go into the manifest)")
  end
  local t0 = sys.now()
  -- Every check first: nothing in dir is touched until the new checkpoint
  -- is complete beside it.
  local st = fs.stat(dir)
  local replacing = false
  if st then
    if st.type ~= "dir" then check.bad(fname, "%s exists and is not a directory", dir) end
    local entries, lerr = sys.listdir(dir)
    if not entries then errors.raise { class = "IOError", command = fname, desc = lerr } end
    if #entries > 0 then
      if not opts.force then
        errors.raise { class = "FileExists", command = fname,
                       desc = dir .. " is not empty; nothing was changed",
                       hint = "pass {force=true} to replace the checkpoint in it" }
      end
      replacing = true
    end
  end
  local timeout = opts.timeout or 600
  -- Disks, in launch order (node names disk0, disk1, ...).
  local disks = {}
  for _, b in ipairs(self:qmp("query-block")) do
    local ins = b.inserted
    if ins then
      local idx = tonumber((ins["node-name"] or ""):match("^disk(%d+)$"))
      local lopt = idx and self.options.disks and self.options.disks[idx + 1]
      if type(lopt) == "string" then lopt = { file = lopt } end
      disks[#disks + 1] = { index = idx or #disks, node = ins["node-name"], file = ins.file,
                            drv = ins.drv, ro = ins.ro, opt = lopt or {}, image = ins.image or {} }
    end
  end
  table.sort(disks, function(a, b) return a.index < b.index end)
  for _, d in ipairs(disks) do
    if d.opt.snapshot then
      check.bad(fname, "disk %s is snapshot=on: its writes live in a temporary file QEMU deletes", d.file)
    end
  end
  if replacing then
    local real = sys.realpath(dir)
    local o = self.options or {}
    local runs_from = self.restored_from and sys.realpath(self.restored_from) == real
    for _, d in ipairs(disks) do
      local info = disk.info(d.file)
      runs_from = runs_from or inside(d.file, real) or (info.backing and inside(info.backing, real))
    end
    runs_from = runs_from or inside(o.kernel, real) or inside(o.initrd, real)
    if runs_from then
      check.bad(fname, "this VM runs from %s: replacing it would pull the files from under the VM; " ..
                       "checkpoint it into another directory", dir)
    end
  end

  -- The new checkpoint is built in a sibling directory, then moved in.
  local work = string.format("%s.new-%d", dir:gsub("/+$", ""), sys.getpid())
  os.remove(work)
  fs.mkdir_p(work, fname)
  local was = self:status()
  local plan, sink, release, mtype, state_sum, state_size
  local ok, err = pcall(function()
    -- Paused, QEMU has flushed the disks, and nothing writes them until the
    -- VM goes on: qemu-img copies them while QEMU saves the RAM (two cores
    -- at work, not one after the other), and the kernel and initrd are
    -- copied and hashed in threads meanwhile.
    if was == "running" then self:pause() end
    migration_setup(self)
    -- Full speed: the default bandwidth limit (32 MiB/s) would make it crawl.
    self:qmp("migrate-set-parameters", { ["max-bandwidth"] = 10 * 1024 * 1024 * 1024 })
    mtype = machine_type(self)
    -- QEMU writes the state into the file itself (the fastest way: a pipe
    -- to another process is 2-4 times slower), and a thread hashes it as
    -- it grows (the stream only appends; zero pages are not in it, so the
    -- file is compact).
    local fd, oerr = sys.open(work .. "/state", "wx")
    if not fd then errors.raise { class = "IOError", command = fname, desc = oerr } end
    local ferr, fcode
    sink, ferr, fcode = hash.follow(work .. "/state")
    if not sink then
      sys.close(fd)
      errors.from_code(fname, ferr, fcode)
    end
    local uri
    uri, release = pass_fd(self, fd)
    self:qmp("migrate", { uri = uri })
    plan = M._start_files(self, work, disks, opts, fname)
    wait_migration(self, fname, timeout)
    sink:close_input()
    state_sum, state_size = job_result(sink, fname)
    sys.chmod(work .. "/state", 292) -- 0444
  end)
  if release then release() end
  if not ok then
    if sink then sink:close() end
    M._abandon_files(plan)
    -- Stop a migration still going, let it settle, and give the VM back.
    if not self:_exited() then
      pcall(self.qmp, self, "migrate_cancel")
      for _ = 1, 250 do
        local qok, info = pcall(self.qmp, self, "query-migrate")
        local mst = qok and info.status
        if not qok or mst == nil or mst == "cancelled" or mst == "completed" or mst == "failed" then break end
        sys.sleep(0.02)
      end
      if was == "running" then pcall(self.cont, self) end
    end
    run.run({ "rm", "-rf", "--", work })
    error(err, 0)
  end
  -- QEMU 10.0 may say "finish-migrate" for a moment after the migration
  -- completed (7.2 says "postmigrate" at once): wait for the settled state.
  for _ = 1, 100 do
    if self:status() ~= "finish-migrate" then break end
    sys.sleep(0.02)
  end
  local records, mdisks, launch
  ok, err = pcall(function()
    records, mdisks, launch = M._finish_files(self, work, plan, fname)
    records.state = { size = state_size, sha256 = state_sum }
    for name, r in pairs(records) do
      local fst = fs.stat(work .. "/" .. name)
      if fst.size ~= r.size then
        errors.raise { class = "CheckpointFailed", command = fname,
                       desc = string.format("%s: %d bytes written, %d on disk", name, r.size, fst.size) }
      end
      r.mtime = fst.mtime
    end
  end)
  if not ok then
    M._abandon_files(plan)
    run.run({ "rm", "-rf", "--", work })
    error(err, 0)
  end
  launch.machine_type = mtype
  local sources = {}
  for i, d in ipairs(disks) do sources[i] = fs.abspath(d.file) end
  local o = self.options or {}
  local manifest = {
    format = FORMAT, qshell = config.version, qemu = self.version, created = os.time(),
    source = { status = was, argv = self.argv, disks = sources,
               kernel = o.kernel and fs.abspath(o.kernel), initrd = o.initrd and fs.abspath(o.initrd),
               binary = o.binary, host = (require("qemu.host").name() or "") },
    launch = launch, disks = mdisks,
    state = { file = "state", bytes = records.state.size },
    files = records,
  }
  fs.write(work .. "/manifest.json", json.encode(manifest, { pretty = true }) .. "\n", fname)
  sys.chmod(work .. "/manifest.json", 292) -- 0444

  -- Into place: the old manifest goes first and the new one comes last, so
  -- a reader sees a whole checkpoint or none.
  fs.mkdir_p(dir, fname)
  if replacing then
    os.remove(dir .. "/manifest.json")
    for _, name in ipairs(sys.listdir(dir) or {}) do
      if CKPT_FILE(name) then os.remove(dir .. "/" .. name) end
    end
  end
  for name in pairs(records) do
    local rok, rerr = sys.rename(work .. "/" .. name, dir .. "/" .. name)
    if not rok then errors.raise { class = "IOError", command = fname, desc = rerr } end
  end
  local rok, rerr = sys.rename(work .. "/manifest.json", dir .. "/manifest.json")
  if not rok then errors.raise { class = "IOError", command = fname, desc = rerr } end
  -- A shared base backs the checkpoint's disk: qemu.image.customize must not write into it.
  for _, d in ipairs(mdisks) do
    if d.base then require("qemu.backing").record(d.base.path, dir .. "/" .. d.file) end
  end
  os.remove(work) -- empty now
  if opts.resume then self:cont() end
  local total = 0
  for _, r in pairs(records) do total = total + r.size end
  if sys.isatty(2) then
    io.stderr:write(string.format("checkpoint %s: %.1f MB (state %.1f MB), %.2f s\n", dir, total / 1e6,
                                  records.state.size / 1e6, sys.now() - t0))
  end
  return dir
end

-- Start writing the disks, kernel and initrd into work: a qemu-img process
-- per disk, a thread per copy (hashed on the way).  What the disks are
-- comes from QEMU's query-block (no qemu-img info).  Returns the plan
-- M._finish_files completes.
function M._start_files(self, work, disks, opts, fname)
  local plan = { converts = {}, copies = {}, bases = {} }
  for i, d in ipairs(disks) do
    local name = string.format("disk-%d.qcow2", i - 1)
    local dst = work .. "/" .. name
    local img = d.image
    local bpath = img["full-backing-filename"] or img["backing-filename"]
    if bpath and bpath:sub(1, 1) ~= "/" then
      bpath = fs.abspath((d.file:match("^(.*)/[^/]*$") or ".") .. "/" .. bpath)
    end
    local bimg = img["backing-image"]
    local c = { name = name, dst = dst, virtual_size = img["virtual-size"], opt = d.opt }
    if opts.shared_base and bpath and bimg and not bimg["backing-filename"] and not is_transient(bpath) then
      -- Only what differs from the base; the base (a standalone image)
      -- stays where it is, recorded by size, mtime and hash.
      local bfmt = img["backing-filename-format"] or bimg.format
      c.argv = { "qemu-img", "convert", "-U", "-O", "qcow2", "-B", bpath, "-F", bfmt, d.file, dst }
      c.base = { path = sys.realpath(bpath) or bpath, format = bfmt }
      local st = fs.stat(c.base.path)
      c.base.size, c.base.mtime = st and st.size, st and st.mtime
      local job, jerr, jcode = hash.file(c.base.path)
      if not job then errors.from_code(fname, jerr, jcode) end
      plan.bases[#plan.bases + 1] = job
      c.base_job = job
    else
      -- Flattened: no backing outside the checkpoint, no internal snapshots
      -- (also a shared_base disk whose base has a backing chain of its own).
      c.argv = { "qemu-img", "convert", "-U", "-O", "qcow2", d.file, dst }
    end
    c.job = run.start(c.argv, { command = fname })
    plan.converts[i] = c
  end
  local o = self.options or {}
  for _, k in ipairs { "kernel", "initrd" } do
    if o[k] then
      local job, err, code = hash.copy(o[k], work .. "/" .. k, 292) -- 0444
      if not job then errors.from_code(fname, err, code) end
      plan.copies[k] = job
    end
  end
  return plan
end

-- Stop whatever a failed checkpoint left running.
function M._abandon_files(plan)
  if not plan then return end
  for _, c in ipairs(plan.converts) do c.job:kill() end
  for _, job in pairs(plan.copies) do job:close() end
  for _, job in ipairs(plan.bases) do job:close() end
end

-- Wait for the files M._start_files began; hash the disks (side by side).
-- Returns every file's record, the manifest's disks, its launch options.
function M._finish_files(self, work, plan, fname)
  local records, mdisks, disk_jobs = {}, {}, {}
  for i, c in ipairs(plan.converts) do
    c.job:check()
    sys.chmod(c.dst, 292) -- 0444
    local job, err, code = hash.file(c.dst)
    if not job then errors.from_code(fname, err, code) end
    disk_jobs[i] = job
  end
  for k, job in pairs(plan.copies) do
    local sum, size = job_result(job, fname)
    records[k] = { size = size, sha256 = sum }
  end
  for i, c in ipairs(plan.converts) do
    local sum, size = job_result(disk_jobs[i], fname)
    records[c.name] = { size = size, sha256 = sum }
    local base
    if c.base then
      base = c.base
      base.sha256 = job_result(c.base_job, fname)
    end
    mdisks[i] = {
      file = c.name, format = "qcow2", virtual_size = c.virtual_size,
      actual_size = fs.stat(c.dst).alloc,
      interface = c.opt.interface or "ide", readonly = c.opt.readonly or nil, cache = c.opt.cache,
      base = base,
    }
  end
  local o = self.options or {}
  local launch = {}
  for _, k in ipairs(M.machine_keys) do launch[k] = o[k] end
  launch.accel = self.accel
  for k in pairs(plan.copies) do launch[k] = k end
  -- The kernel command line as QEMU got it (with an added console=), and
  -- as the script gave it: a restore may repeat either.
  launch.append = self:_kernel_append() or (type(o.append) == "table" and table.concat(o.append, " ") or o.append)
  launch.append_given = type(o.append) == "table" and table.concat(o.append, " ") or o.append
  launch.console = o.console ~= false
  launch.net = o.net or nil
  return records, mdisks, launch
end

-- qemu.checkpoint.read(dir) -> manifest (raises when dir is not a checkpoint)
function M.read(dir, fname)
  fname = fname or "qemu.checkpoint.read"
  check.arg(fname, 1, dir, "string")
  local text = read_file(dir .. "/manifest.json")
  if not text then
    local st = sys.stat(dir)
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = st and (dir .. " is not a checkpoint (no manifest.json)") or ("no such directory: " .. dir),
                   hint = "make one with vm:checkpoint(dir)" }
  end
  local ok, m = pcall(json.decode, text)
  if ok and type(m) == "table" and m.format == 1 then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = dir .. " is a checkpoint of an older qshell (absolute paths, no file hashes)",
                   hint = "make it again with vm:checkpoint(dir)" }
  end
  if not ok or type(m) ~= "table" or m.format ~= FORMAT or type(m.state) ~= "table"
     or type(m.files) ~= "table" or type(m.disks) ~= "table" then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = dir .. "/manifest.json is not a qshell checkpoint manifest" }
  end
  for name in pairs(m.files) do
    if name:find("/") or name:sub(1, 1) == "." then
      errors.raise { class = "NotACheckpoint", command = fname,
                     desc = dir .. "/manifest.json names a file outside the checkpoint: " .. name }
    end
  end
  -- Every file the checkpoint uses is one the manifest records.
  local used = { m.state.file }
  for _, d in ipairs(m.disks) do used[#used + 1] = d.file end
  for _, k in ipairs { "kernel", "initrd" } do
    local v = m.launch and m.launch[k]
    if v ~= nil and v ~= json.null then used[#used + 1] = v end
  end
  for _, name in ipairs(used) do
    if type(name) ~= "string" or not m.files[name] then
      errors.raise { class = "NotACheckpoint", command = fname,
                     desc = string.format("%s/manifest.json uses %s, which it does not record", dir, tostring(name)) }
    end
  end
  return m
end

local hashed = {} -- "path|size|mtime" -> SHA-256, hashed once per process

local function sha256_cached(path, st, command)
  local key = string.format("%s|%d|%s", sys.realpath(path) or path, st.size, tostring(st.mtime))
  if not hashed[key] then hashed[key] = sha256(path, command) end
  return hashed[key]
end

local function corrupt(fname, dir, file, what)
  errors.raise { class = "CheckpointCorrupt", command = fname,
                 desc = string.format("%s: %s %s; nothing was started", dir, file, what),
                 hint = "the checkpoint changed after it was made: make it again" }
end

-- Check the files against the manifest: sizes always; the hash where the
-- mtime changed (a copy without -p), of a referenced base, or of every
-- file with full=true.  A file's hash is computed once per process for a
-- given size and mtime (a sweep's runs do not hash the same file again).
local function check_files(dir, m, full, fname)
  for name, rec in pairs(m.files) do
    local path = dir .. "/" .. name
    local st = fs.stat(path)
    if not st then corrupt(fname, dir, name, "is missing") end
    if st.size ~= rec.size then
      corrupt(fname, dir, name, string.format("is %d bytes, the manifest says %d", st.size, rec.size))
    end
    if full or st.mtime ~= rec.mtime then
      local sum = full and sha256(path, fname) or sha256_cached(path, st, fname)
      if sum ~= rec.sha256 then
        corrupt(fname, dir, name, "does not match its SHA-256 in the manifest")
      end
    end
  end
  for _, d in ipairs(m.disks) do
    local b = d.base
    if b ~= nil and b ~= json.null then
      local st = fs.stat(b.path)
      if not st then corrupt(fname, dir, d.file, "has its base " .. b.path .. " gone") end
      if st.size ~= b.size then
        corrupt(fname, dir, d.file, string.format("has its base %s changed (%d bytes, was %d)", b.path, st.size, b.size))
      end
      local sum = full and sha256(b.path, fname) or sha256_cached(b.path, st, fname)
      if sum ~= b.sha256 then
        corrupt(fname, dir, d.file, "has its base " .. b.path .. " changed (its SHA-256 differs)")
      end
    end
  end
end

-- qemu.checkpoint.verify(dir) -> true: every file (and a referenced base)
-- matches its size and SHA-256 in the manifest; CheckpointCorrupt otherwise
function M.verify(dir)
  local m = M.read(dir, "qemu.checkpoint.verify")
  check_files(dir, m, true, "qemu.checkpoint.verify")
  return true
end

-- qemu.checkpoint.info(dir) -> {qemu=, machine_type=, created=, launch=, disks=, files=,
--   bytes=, source=, text=}: what is in a checkpoint; info.text is a summary to print
function M.info(dir)
  local m = M.read(dir, "qemu.checkpoint.info")
  local total = 0
  for _, r in pairs(m.files) do total = total + r.size end
  local lines = {
    string.format("checkpoint %s", dir),
    string.format("  made      %s by qshell %s on QEMU %s (%s)", os.date("%Y-%m-%d %H:%M:%S", m.created),
                  tostring(m.qshell), tostring(m.qemu), tostring(m.source and m.source.host or "?")),
    string.format("  machine   %s, accel %s, memory %s, smp %s", tostring(m.launch.machine_type),
                  tostring(m.launch.accel), tostring(m.launch.memory or "default"),
                  tostring(m.launch.smp or 1)),
  }
  if m.launch.kernel and m.launch.kernel ~= json.null then
    lines[#lines + 1] = string.format("  kernel    %s (from %s), append %q", m.launch.kernel,
                                      tostring(m.source and m.source.kernel), tostring(m.launch.append))
  end
  lines[#lines + 1] = string.format("  state     %.1f MB%s", m.files.state.size / 1e6,
                                    m.state.mapped_ram and " (mapped-ram, sparse)" or "")
  for i, d in ipairs(m.disks) do
    local b = d.base ~= json.null and d.base or nil
    lines[#lines + 1] = string.format("  disk %d    %s %.1f MB (%s virtual)%s", i - 1, d.file,
                                      (m.files[d.file] or { size = 0 }).size / 1e6, tostring(d.virtual_size),
                                      b and (", over base " .. b.path) or ", self-contained")
  end
  lines[#lines + 1] = string.format("  total     %.1f MB in %d files", total / 1e6, (function()
    local n = 0 for _ in pairs(m.files) do n = n + 1 end return n end)())
  return { qemu = m.qemu, machine_type = m.launch.machine_type, created = m.created, launch = m.launch,
           disks = m.disks, files = m.files, bytes = total, source = m.source, text = table.concat(lines, "\n") .. "\n" }
end

local function same(a, b)
  if a == json.null then a = nil end
  if b == json.null then b = nil end
  if type(a) == "table" and type(b) == "table" then return json.encode(a) == json.encode(b) end
  if type(a) == "number" or type(b) == "number" then return tostring(a) == tostring(b) end
  return a == b
end

-- The NIC model a net= option (or a manifest's) gives the machine, or nil.
local function nic_model(net)
  if net == nil or net == false or net == json.null then return nil end
  if type(net) == "table" and type(net.model) == "string" then return net.model end
  return "virtio-net-pci"
end

-- Launch options for a restore: the checkpoint's machine, the caller's
-- free options, fresh overlays in tmpdir.  Returns opts, restore context.
function M.prepare(opts, tmpdir)
  local fname = "qemu.launch"
  local dir = opts.restore
  if type(opts.verify) ~= "nil" and type(opts.verify) ~= "boolean" then
    check.bad(fname, "verify must be a boolean")
  end
  local m = M.read(dir, fname)
  -- The checkpoint's files by their real path now: it may have moved.
  local real = sys.realpath(dir) or fs.abspath(dir)
  local out = {}
  for k, v in pairs(opts) do
    if k == "disks" then
      check.bad(fname, "restore: the disks come from the checkpoint (%s); give no disks=", dir)
    elseif k == "loadvm" then
      check.bad(fname, "restore and loadvm cannot be combined")
    elseif k == "verify" then
      -- checked above
    elseif k == "net" then
      -- The NIC is the machine's (its state is in the checkpoint); the
      -- user network's host side (forwards, restrict, hostname) is not, so
      -- runs from one checkpoint may forward different host ports.
      local want = nic_model(m.launch.net)
      if nic_model(v) ~= want then
        errors.raise { class = "BadArgument", command = fname,
                       desc = string.format("restore: net= gives %s, the checkpoint's machine has %s",
                                            nic_model(v) and ("a " .. nic_model(v) .. " NIC") or "no NIC",
                                            want and ("a " .. want .. " NIC") or "none"),
                       hint = "keep the checkpoint's NIC model (leave net= out to reuse its network options)" }
      end
      out.net = v
    elseif not M.free_keys[k] then
      local want = m.launch[k]
      if k == "append" and type(v) == "table" then v = table.concat(v, " ") end
      if k == "accel" and v == "auto" then v = require("qemu.launch").detect_accel() end
      if (k == "kernel" or k == "initrd") and type(v) == "string" and m.files[k] then
        -- A file the checkpoint holds a copy of: the same bytes are the same.
        local st = fs.stat(v)
        if st and sha256_cached(v, st, fname) == m.files[k].sha256 then v = want end
      end
      if k == "append" and same(v, m.launch.append_given) then v = want end
      if not same(v, want) then
        errors.raise { class = "BadArgument", command = fname,
                       desc = string.format("restore: %s=%s differs from the checkpoint's %s=%s; " ..
                                            "the machine must be the one that was saved",
                                            k, tostring(v), k, tostring(want == json.null and "(unset)" or want)),
                       hint = "leave " .. k .. " out: it comes from " .. dir .. "/manifest.json" }
      end
    else
      out[k] = v
    end
  end
  -- The options are right: now the files (sizes, changed mtimes, bases;
  -- every hash with verify=true), before anything starts.
  check_files(dir, m, opts.verify == true, fname)
  for _, k in ipairs(M.machine_keys) do
    local v = m.launch[k]
    if v ~= nil and v ~= json.null then out[k] = v end
  end
  if out.net == nil and nic_model(m.launch.net) then out.net = m.launch.net end
  -- kernel and initrd are files in the checkpoint
  for _, k in ipairs { "kernel", "initrd" } do
    if out[k] then out[k] = real .. "/" .. out[k] end
  end
  -- (The binary it was made with is only information: a checkpoint moves
  -- to machines where that path means nothing.  binary= or the default.)
  -- The machine type QEMU resolved when the state was saved (pc is
  -- pc-i440fx-7.2 on 7.2, pc-i440fx-10.0 on 10.0: a state loads only into
  -- the same type).  A QEMU without it refuses to start: M.launch_failed
  -- says why (asking the QEMU only then, not on every restore).
  local mtype = m.launch.machine_type
  if mtype ~= nil and mtype ~= json.null then
    local given = out.machine
    out.machine = mtype .. ((type(given) == "string" and given:match("^[^,]*(,.*)$")) or "")
  end
  out.restore = nil
  out.disks = {}
  for i, d in ipairs(m.disks) do
    local base = real .. "/" .. d.file
    local ov = string.format("%s/restore-disk%d.qcow2", tmpdir, i - 1)
    run.check({ "qemu-img", "create", "-q", "-f", "qcow2", "-F", d.format, "-b", base, ov },
              { command = fname })
    out.disks[i] = { file = ov, interface = d.interface, readonly = d.readonly ~= json.null and d.readonly or nil,
                     cache = d.cache ~= json.null and d.cache or nil }
  end
  return out, { dir = dir, manifest = m, state = real .. "/" .. m.state.file }
end

-- The -incoming arguments of a restore, before QEMU starts (proc p): the
-- state file is passed open, and QEMU loads it while it starts up, as
-- `-incoming file:PATH` would (8.2+: an fd set, -add-fd; 7.2: fd:N).  A
-- mapped-ram state (QEMU 9.0+, from earlier versions of qshell) needs the
-- capability set first: -incoming defer, and M.finish loads it over QMP.
-- Returns the launch's extra list.
function M.incoming(rctx, p, opts)
  local what = "qemu.launch{restore=}"
  local extra
  if rctx.manifest.state.mapped_ram == true then
    rctx.deferred = true
    extra = { "-incoming", "defer" }
  else
    local v = require("qemu.binary").version(opts.binary)
    local n, err, code = p:pass_file(rctx.state)
    if not n then errors.from_code(what, err, code) end
    if v.file_migration then
      extra = { "-add-fd", string.format("fd=%d,set=%d", n, n), "-incoming", "file:/dev/fdset/" .. n }
    else
      extra = { "-incoming", "fd:" .. n }
    end
  end
  for _, a in ipairs(opts.extra or {}) do extra[#extra + 1] = a end
  return extra
end

-- QEMU did not start for a restore: when the cause is the checkpoint's
-- machine type, which this QEMU lacks, raise that (naming both versions).
function M.launch_failed(rctx, binary_path, log)
  local m = rctx.manifest
  local mtype = m.launch.machine_type
  if mtype == nil or mtype == json.null then return end
  local binary = require "qemu.binary"
  local ok, have = pcall(binary.machines, binary_path)
  if not ok or have[mtype] then return end
  local v = binary.version(binary_path)
  errors.raise { class = "BadArgument", command = "qemu.launch",
                 desc = string.format("restore: %s was saved by QEMU %s on machine type %s, which QEMU %s (%s) " ..
                                      "does not have", rctx.dir, tostring(m.qemu), mtype, v.text, v.path),
                 hint = "restore it with a QEMU that has " .. mtype .. " (binary=), or make the checkpoint again",
                 log = log }
end

-- After QEMU is up: wait for the state it is loading (M.incoming), or feed
-- it a deferred one; then the guest runs.
function M.finish(vm, rctx, timeout)
  local what = "qemu.launch{restore=}"
  if rctx.deferred then
    migration_setup(vm)
    local uri, release = load_uri(vm, rctx.state, true, what)
    vm:qmp("migrate-incoming", { uri = uri })
    wait_migration(vm, what, timeout or 600)
    release()
    -- Migration events are qshell's business here, not the script's.
    vm:events()
  else
    -- QEMU runs the guest by itself once the state is in ("inmigrate"
    -- until then); a state it cannot load makes it exit, which the QMP
    -- calls here report with QEMU's own message.
    local deadline = sys.now() + (timeout or 600)
    while vm:status() == "inmigrate" do
      if sys.now() > deadline then
        errors.raise { class = "Timeout", command = what,
                       desc = string.format("the state of %s was not loaded after %g s", rctx.dir, timeout or 600) }
      end
      sys.sleep(0.002)
    end
  end
  if vm:status() ~= "running" and not vm.options.paused then vm:cont() end
  vm.restored_from = rctx.dir
end

return M
