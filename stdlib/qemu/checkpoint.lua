-- qemu.checkpoint: portable checkpoints, and launch{restore=dir}.
--
-- vm:checkpoint(dir) migrates the VM state to dir/state (through an fd
-- passed over QMP: no shell, no path quoting), copies every disk into dir as
-- a read-only image, and writes dir/manifest.json (launch options, QEMU
-- version, the disks with their sizes and backing files, a SHA-256 of the
-- state).  qemu.launch{restore=dir} starts a VM from it: each VM gets fresh
-- qcow2 overlays over the frozen images in its own temp dir, so any number
-- of VMs can run from one checkpoint at once (-loadvm cannot: internal
-- snapshots live in the image a VM writes).

local errors = require "qemu.errors"
local fs = require "qemu.fs"
local check = require "qemu.check"
local run = require "qemu.run"
local disk = require "qemu.disk"
local json = require "qshell.json"
local sys = require "qshell.os"
local config = require "qshell.config"

local M = {}

local FORMAT = 1
local FDNAME = "qshell-ckpt"
-- What defines the machine: a restore must not change these.
M.machine_keys = { "machine", "cpu", "smp", "memory", "kernel", "initrd", "append", "console", "accel" }
-- What a restore may set freely.
-- (binary too: a checkpoint restores on another QEMU that has its machine type.)
M.free_keys = { plugins = true, icount = true, name = true, timeout = true, reboot = true, extra = true,
                binary = true,
                restore = true }

local read_file = fs.read

local function abspath(p)
  return p and fs.abspath(p)
end

-- Inside one of qshell's temp dirs (gone when its owner exits)?
local function is_transient(path)
  local base = os.getenv("TMPDIR")
  if not base or base == "" then base = "/tmp" end
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

local fdsets = 0

-- Hand the state file to QEMU and return the migration URI for it.  On
-- QEMU 8.2+ "file:" over an fd set (add-fd): "fd:" to a file is deprecated
-- there (9.1 warns).  On 7.2 "fd:" with getfd.  Returns uri, cleanup().
local function state_uri(vm, path, mode, what)
  local fd, msg = sys.open(path, mode)
  if not fd then errors.raise { class = "IOError", command = what, desc = msg } end
  if has_file_migration(vm) then
    fdsets = fdsets + 1
    local id = 1000 + fdsets
    local ok, r = pcall(vm.qmp, vm, "add-fd", { ["fdset-id"] = id }, { timeout = 30, fd = fd })
    sys.close(fd)
    if not ok then error(r, 0) end
    return "file:/dev/fdset/" .. r["fdset-id"], function()
      pcall(vm.qmp, vm, "remove-fd", { ["fdset-id"] = r["fdset-id"] })
    end
  end
  local ok, err = pcall(vm.qmp, vm, "getfd", { fdname = FDNAME }, { timeout = 30, fd = fd })
  sys.close(fd)
  if not ok then error(err, 0) end
  return "fd:" .. FDNAME, function() end
end

-- The machine type QEMU resolved (-machine pc is pc-i440fx-<version>).
local function machine_type(vm)
  local ok, t = pcall(vm.qmp, vm, "qom-get", { path = "/machine", property = "type" })
  if ok and type(t) == "string" then return (t:gsub("%-machine$", "")) end
  return nil
end

local ckpt_opts = { force = "boolean", resume = "boolean", timeout = check.nonneg }

-- vm:checkpoint(dir [, {force=false, resume=false, timeout=600}]) -> dir
-- The VM is paused for the checkpoint and stays paused (QEMU's
-- "postmigrate") unless resume=true; the checkpoint's images are copies,
-- so the VM may go on writing its own disks either way.
function M.make(self, dir, opts)
  local fname = "vm:checkpoint"
  check.arg(fname, 1, dir, "string")
  opts = check.options(fname, opts, ckpt_opts, 2)
  self:_live(fname)
  if not self:_owned() then
    check.bad(fname, "a checkpoint needs a VM launched by this shell (its launch options go into the manifest)")
  end
  local st = sys.stat(dir)
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
      -- Only what a checkpoint consists of; anything else stays.
      for _, name in ipairs(entries) do
        if name == "manifest.json" or name == "state" or name:match("^disk%-%d+%.%a+$") then
          os.remove(dir .. "/" .. name)
        end
      end
    end
  else
    -- Missing parents are created; the checkpoint dir itself is new.
    fs.mkdir_p(dir, fname)
  end
  local timeout = opts.timeout or 600
  local was = self:status()
  -- Disks, in launch order (node names disk0, disk1, ...).
  local disks = {}
  for _, b in ipairs(self:qmp("query-block")) do
    local ins = b.inserted
    if ins then
      local idx = tonumber((ins["node-name"] or ""):match("^disk(%d+)$"))
      local lopt = idx and self.options.disks and self.options.disks[idx + 1]
      if type(lopt) == "string" then lopt = { file = lopt } end
      disks[#disks + 1] = { index = idx or #disks, node = ins["node-name"], file = ins.file,
                            drv = ins.drv, ro = ins.ro, opt = lopt or {} }
    end
  end
  table.sort(disks, function(a, b) return a.index < b.index end)
  for _, d in ipairs(disks) do
    if d.opt.snapshot then
      check.bad(fname, "disk %s is snapshot=on: its writes live in a temporary file QEMU deletes", d.file)
    end
  end

  if was == "running" then self:pause() end
  migration_setup(self)
  -- Full speed: the default bandwidth limit (32 MiB/s) would make it crawl.
  self:qmp("migrate-set-parameters", { ["max-bandwidth"] = 10 * 1024 * 1024 * 1024 })
  local state = dir .. "/state"
  local mtype = machine_type(self)
  local uri, release = state_uri(self, state, "wx", fname)
  self:qmp("migrate", { uri = uri })
  wait_migration(self, fname, timeout)
  release()
  -- QEMU 10.0 may say "finish-migrate" for a moment after the migration
  -- completed (7.2 says "postmigrate" at once): wait for the settled state.
  for _ = 1, 100 do
    if self:status() ~= "finish-migrate" then break end
    sys.sleep(0.02)
  end

  -- The VM is stopped and its images flushed: copy them.
  local mdisks = {}
  for i, d in ipairs(disks) do
    local ext = d.drv == "qcow2" and "qcow2" or "img"
    local name = string.format("disk-%d.%s", i - 1, ext)
    local dst = dir .. "/" .. name
    local info = disk.info(d.file)
    if info.backing and is_transient(info.backing) then
      -- Its backing file vanishes with its owner: flatten the chain.
      run.check({ "qemu-img", "convert", "-U", "-O", "qcow2", d.file, dst }, { command = fname })
    else
      run.check({ "cp", "--sparse=always", d.file, dst }, { command = fname })
      if info.backing and info.backing:sub(1, 1) ~= "/" then
        local base = d.file:match("^(.*)/[^/]*$") or "."
        run.check({ "qemu-img", "rebase", "-u", "-F", info.backing_format or "qcow2",
                   "-b", abspath(base .. "/" .. info.backing), dst }, { command = fname })
      end
    end
    run.check({ "chmod", "0444", dst }, { command = fname })
    local di = disk.info(dst)
    mdisks[i] = {
      file = name, format = di.format, virtual_size = di.virtual_size, actual_size = di.actual_size,
      backing = di.backing, interface = d.opt.interface or "ide", readonly = d.opt.readonly or nil,
      cache = d.opt.cache, source = d.file,
    }
  end

  local sum = run.check({ "sha256sum", state }, { command = fname }):match("^(%x+)")
  local o = self.options or {}
  local launch = {}
  for _, k in ipairs(M.machine_keys) do launch[k] = o[k] end
  launch.accel = self.accel
  launch.kernel = abspath(o.kernel)
  launch.initrd = abspath(o.initrd)
  launch.append = self:_kernel_append() or (type(o.append) == "table" and table.concat(o.append, " ") or o.append)
  launch.console = o.console ~= false
  launch.binary = o.binary
  launch.machine_type = mtype
  local manifest = {
    format = FORMAT, qshell = config.version, qemu = self.version, created = os.time(),
    source_status = was, launch = launch, disks = mdisks, argv = self.argv,
    state = { file = "state", bytes = sys.stat(state).size, sha256 = sum },
  }
  fs.write(dir .. "/manifest.json", json.encode(manifest, { pretty = true }) .. "\n", fname)
  run.check({ "chmod", "0444", state }, { command = fname })
  if opts.resume then self:cont() end
  return dir
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
  if not ok or type(m) ~= "table" or m.format ~= FORMAT or type(m.state) ~= "table" then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = dir .. "/manifest.json is not a qshell checkpoint manifest" }
  end
  local st = sys.stat(dir .. "/" .. m.state.file)
  if not st or st.size ~= m.state.bytes then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = string.format("%s: the state file is %s (the manifest says %d bytes)", dir,
                                        st and (st.size .. " bytes") or "missing", m.state.bytes) }
  end
  for _, d in ipairs(m.disks) do
    if not sys.stat(dir .. "/" .. d.file) then
      errors.raise { class = "NotACheckpoint", command = fname, desc = dir .. ": missing " .. d.file }
    end
    if d.backing ~= nil and d.backing ~= json.null and not sys.stat(d.backing) then
      errors.raise { class = "NotACheckpoint", command = fname,
                     desc = string.format("%s: %s's backing file %s is gone", dir, d.file, d.backing) }
    end
  end
  for _, k in ipairs { "kernel", "initrd" } do
    local p = m.launch[k]
    if p ~= nil and p ~= json.null and not sys.stat(p) then
      errors.raise { class = "NotACheckpoint", command = fname,
                     desc = string.format("%s: the %s it was launched with (%s) is gone", dir, k, p) }
    end
  end
  return m
end

-- qemu.checkpoint.verify(dir) -> true: the state's SHA-256 matches the manifest
function M.verify(dir)
  local m = M.read(dir, "qemu.checkpoint.verify")
  local sum = run.check({ "sha256sum", dir .. "/" .. m.state.file }, { command = "qemu.checkpoint.verify" })
  if sum:match("^(%x+)") ~= m.state.sha256 then
    errors.raise { class = "CheckpointCorrupt", command = "qemu.checkpoint.verify",
                   desc = dir .. ": the state does not match its SHA-256 in the manifest" }
  end
  return true
end

local function same(a, b)
  if a == json.null then a = nil end
  if b == json.null then b = nil end
  if type(a) == "table" and type(b) == "table" then return json.encode(a) == json.encode(b) end
  if type(a) == "number" or type(b) == "number" then return tostring(a) == tostring(b) end
  return a == b
end

-- Launch options for a restore: the checkpoint's machine, the caller's
-- free options, fresh overlays in tmpdir.  Returns opts, restore context.
function M.prepare(opts, tmpdir)
  local fname = "qemu.launch"
  local dir = opts.restore
  local m = M.read(dir, fname)
  local out = {}
  for k, v in pairs(opts) do
    if k == "disks" then
      check.bad(fname, "restore: the disks come from the checkpoint (%s); give no disks=", dir)
    elseif k == "loadvm" then
      check.bad(fname, "restore and loadvm cannot be combined")
    elseif not M.free_keys[k] then
      local want = m.launch[k]
      if k == "append" and type(v) == "table" then v = table.concat(v, " ") end
      if k == "accel" and v == "auto" then v = require("qemu.launch").detect_accel() end
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
  for _, k in ipairs(M.machine_keys) do
    local v = m.launch[k]
    if v ~= nil and v ~= json.null then out[k] = v end
  end
  if out.binary == nil and m.launch.binary ~= nil and m.launch.binary ~= json.null then
    out.binary = m.launch.binary
  end
  -- The machine type QEMU resolved when the state was saved (pc is
  -- pc-i440fx-7.2 on 7.2, pc-i440fx-10.0 on 10.0: a state loads only into
  -- the same type).  Checked against what this QEMU has.
  local mtype = m.launch.machine_type
  if mtype ~= nil and mtype ~= json.null then
    local binary = require "qemu.binary"
    local have = binary.machines(out.binary)
    if not have[mtype] then
      local v = binary.version(out.binary)
      errors.raise { class = "BadArgument", command = fname,
                     desc = string.format("restore: %s was saved by QEMU %s on machine type %s, which QEMU %s (%s) " ..
                                          "does not have", dir, tostring(m.qemu), mtype, v.text, v.path),
                     hint = "restore it with a QEMU that has " .. mtype .. " (binary=), or make the checkpoint again" }
    end
    local given = out.machine
    out.machine = mtype .. ((type(given) == "string" and given:match("^[^,]*(,.*)$")) or "")
  end
  out.restore = nil
  out.disks = {}
  for i, d in ipairs(m.disks) do
    local base = dir .. "/" .. d.file
    local ov = string.format("%s/restore-disk%d.qcow2", tmpdir, i - 1)
    run.check({ "qemu-img", "create", "-q", "-f", "qcow2", "-F", d.format, "-b", abspath(base), ov },
              { command = fname })
    out.disks[i] = { file = ov, interface = d.interface, readonly = d.readonly ~= json.null and d.readonly or nil,
                     cache = d.cache ~= json.null and d.cache or nil }
  end
  local extra = { "-incoming", "defer" }
  for _, a in ipairs(opts.extra or {}) do extra[#extra + 1] = a end
  out.extra = extra
  return out, { dir = dir, manifest = m }
end

-- After QEMU is up (waiting for its incoming migration): feed it the state,
-- then resume the guest.
function M.finish(vm, rctx, timeout)
  local what = "qemu.launch{restore=}"
  migration_setup(vm)
  local uri, release = state_uri(vm, rctx.dir .. "/" .. rctx.manifest.state.file, "r", what)
  vm:qmp("migrate-incoming", { uri = uri })
  wait_migration(vm, what, timeout or 600)
  release()
  -- Migration events are qshell's business here, not the script's.
  vm:events()
  if vm:status() ~= "running" then vm:cont() end
  vm:events()
  vm.restored_from = rctx.dir
end

return M
