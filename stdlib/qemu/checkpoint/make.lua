-- qemu.checkpoint.make: vm:checkpoint(dir), a self-contained, verified,
-- movable checkpoint of a running VM.
--
-- The VM is paused; QEMU migrates its state into dir/state (through an fd
-- passed over QMP: no shell, no path quoting) while this shell copies the
-- guest's RAM out of the VM's memfd into dir/ram on every core (data only:
-- zero pages stay holes; hashed in 4 MiB chunks as it goes) and qemu-img
-- writes every disk into dir as a compact qcow2 with no external backing
-- (the chain flattened, internal snapshots left out); the kernel and initrd
-- are copied in.  With the RAM in a file of its own, QEMU saves the devices
-- only (x-ignore-shared), and restores map the RAM file copy-on-write (see
-- qemu.ram for the VMs whose RAM cannot be: their RAM goes into the state
-- stream as before).  dir/manifest.json (qemu.checkpoint.manifest) names
-- every file by a relative path with its size, mtime and digest.  With
-- {shared_base=true} a disk keeps its backing file outside (only the
-- differences are stored) and the base is recorded by size, mtime and
-- SHA-256.  Nothing in dir is touched until the new checkpoint is whole
-- beside it.

local errors = require "qemu.errors"
local fs = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local disk = require "qemu.disk"
local ram = require "qemu.vm.ram"
local manifest = require "qemu.checkpoint.manifest"
local migrate = require "qemu.checkpoint.migrate"
local json = require "qshell.json"
local sys = require "qshell.os"
local hash = require "qshell.hash"
local config = require "qshell.config"

local M = {}

local FDNAME = "qshell-ckpt"

-- Inside one of qshell's temp dirs (gone when its owner exits)?
local function is_transient(path)
  local base = (os.getenv("TMPDIR") or ""):gsub("/+$", "")
  if base == "" then base = "/tmp" end
  return path:sub(1, #base + 8) == base .. "/qshell-"
end

-- Hand an open state file (fd) to QEMU and return the migration URI for
-- it, and a release().  On QEMU 8.2+ "file:" over an fd set (add-fd: "fd:"
-- to a file is deprecated there, 9.1 warns); on 7.2 "fd:" with getfd.  The
-- fd is closed here either way (QEMU has its own copy).
local function pass_fd(vm, fd)
  if require("qemu.util.binary").version(vm.argv[1]).file_migration then
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

-- The machine type QEMU resolved (-machine pc is pc-i440fx-<version>).
local function machine_type(vm)
  local ok, t = pcall(vm.qmp, vm, "qom-get", { path = "/machine", property = "type" })
  if ok and type(t) == "string" then return (t:gsub("%-machine$", "")) end
  return nil
end

local ckpt_opts = { force = "boolean", resume = "boolean", timeout = check.nonneg, shared_base = "boolean" }

-- The manifest's ram entry: the backend the state names (nil when QEMU
-- held the RAM itself), with its file when the RAM is not in the stream.
local function ram_entry(vm, file, data)
  local r = vm.ram
  if not r or r.backing == "qemu" then return nil end
  return { id = r.id, size = r.size, file = file, data = data }
end

-- A background hash's (or RAM copy's) result, or its error raised.
local function job_result(job, command)
  local sum, size, code = job:wait()
  if not sum then errors.from_code(command, size, code) end
  return sum, size, code
end

-- vm:checkpoint(dir [, {force=false, resume=false, timeout=600, shared_base=false}]) -> dir
-- The VM is paused for the checkpoint and stays paused (QEMU's
-- "postmigrate") unless resume=true; the checkpoint's images are copies,
-- so the VM may go on writing its own disks either way.
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
    local entries, lerr, lerr_code = sys.listdir(dir)
    if not entries then errors.from_code(fname, lerr, lerr_code) end
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
  -- The RAM as a file of its own when this shell holds it (a memfd): QEMU
  -- then leaves it out of the stream.
  local ramfd = self:_ram_fd()
  local plan, sink, release, mtype, state_sum, state_size, ramjob
  local ok, err = pcall(function()
    -- Paused, QEMU has flushed the disks, and nothing writes them or the
    -- RAM until the VM goes on: the RAM is copied on every core and
    -- qemu-img copies the disks while QEMU saves the devices, and the
    -- kernel and initrd are copied and hashed in threads meanwhile.
    if was == "running" then self:pause() end
    if ramfd then ramjob = ram.image(ramfd, work .. "/ram", fname) end
    migrate.caps(self, { events = true, ["x-ignore-shared"] = ramfd ~= nil })
    -- Full speed: the default bandwidth limit (32 MiB/s) would make it crawl.
    self:qmp("migrate-set-parameters", { ["max-bandwidth"] = 10 * 1024 * 1024 * 1024 })
    mtype = machine_type(self)
    -- QEMU writes the state into the file itself (the fastest way: a pipe
    -- to another process is 2-4 times slower), and a thread hashes it as
    -- it grows (the stream only appends; zero pages are not in it, so the
    -- file is compact).
    local fd, oerr, oerr_code = sys.open(work .. "/state", "wx")
    if not fd then errors.from_code(fname, oerr, oerr_code) end
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
    migrate.wait(self, fname, timeout)
    sink:close_input()
    state_sum, state_size = job_result(sink, fname)
    sys.chmod(work .. "/state", 292) -- 0444
  end)
  if release then release() end
  -- A later savevm must save the RAM again: x-ignore-shared goes off.
  if ramfd and not self:_exited() then pcall(migrate.caps, self, { ["x-ignore-shared"] = false }) end
  if not ok then
    if sink then sink:close() end
    if ramjob then ramjob:close() end
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
  local records, mdisks, launch, ram_data
  ok, err = pcall(function()
    records, mdisks, launch = M._finish_files(self, work, plan, fname)
    records.state = { size = state_size, sha256 = state_sum }
    if ramjob then
      local sum, size
      sum, size, ram_data = job_result(ramjob, fname)
      records.ram = { size = size, sha256_chunks = sum, chunk = ram.CHUNK }
    end
    for name, r in pairs(records) do
      local fst = fs.stat(work .. "/" .. name)
      if fst.size ~= r.size then
        errors.raise { class = "CheckpointFailed", command = fname,
                       desc = string.format("%s: %d bytes written, %d on disk", name, r.size, fst.size) }
      end
      r.mtime = fst.mtime
    end
  end)
  if ramjob then ramjob:close() end
  if not ok then
    M._abandon_files(plan)
    run.run({ "rm", "-rf", "--", work })
    error(err, 0)
  end
  launch.machine_type = mtype
  local sources = {}
  for i, d in ipairs(disks) do sources[i] = fs.abspath(d.file) end
  local o = self.options or {}
  local record = {
    format = manifest.FORMAT, qshell = config.version, qemu = self.version, created = os.time(),
    source = { status = was, argv = self.argv, disks = sources,
               kernel = o.kernel and fs.abspath(o.kernel), initrd = o.initrd and fs.abspath(o.initrd),
               binary = o.binary, host = (require("qemu.util.host").name() or "") },
    launch = launch, disks = mdisks,
    state = { file = "state", bytes = records.state.size },
    ram = ram_entry(self, ramfd and "ram", ram_data),
    -- (the kernel's console log level console:run keeps: a restored
    -- console then need not ask the guest for it)
    console = self.console and { kernel_level = self.console:_known_kernel_level() } or nil,
    files = records,
  }
  fs.write(work .. "/manifest.json", json.encode(record, { pretty = true }) .. "\n", fname)
  sys.chmod(work .. "/manifest.json", 292) -- 0444

  -- Into place: the old manifest goes first and the new one comes last, so
  -- a reader sees a whole checkpoint or none.
  fs.mkdir_p(dir, fname)
  if replacing then
    os.remove(dir .. "/manifest.json")
    for _, name in ipairs(sys.listdir(dir) or {}) do
      if manifest.is_file(name) then os.remove(dir .. "/" .. name) end
    end
  end
  for name in pairs(records) do
    local rok, rerr, rerr_code = sys.rename(work .. "/" .. name, dir .. "/" .. name)
    if not rok then errors.from_code(fname, rerr, rerr_code) end
  end
  local rok, rerr, rerr_c = sys.rename(work .. "/manifest.json", dir .. "/manifest.json")
  if not rok then errors.from_code(fname, rerr, rerr_c) end
  -- A shared base backs the checkpoint's disk: qemu.image.customize must not write into it.
  for _, d in ipairs(mdisks) do
    if d.base then require("qemu.image.backing").record(d.base.path, dir .. "/" .. d.file) end
  end
  os.remove(work) -- empty now
  if opts.resume then self:cont() end
  local total = 0
  for name, r in pairs(records) do total = total + (name == "ram" and ram_data or r.size) end
  if sys.isatty(2) then
    io.stderr:write(string.format("checkpoint %s: %.1f MB (state %.1f MB%s), %.2f s\n", dir, total / 1e6,
                                  records.state.size / 1e6,
                                  ram_data and string.format(", RAM %.1f MB", ram_data / 1e6) or "",
                                  sys.now() - t0))
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
  for _, k in ipairs(manifest.machine_keys) do launch[k] = o[k] end
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

return M
