-- qemu.checkpoint.restore: qemu.launch{restore=dir}, in three steps that
-- qemu.launch calls: prepare (before QEMU starts: the options against the
-- manifest, the files against their sizes and digests, fresh overlays, the
-- RAM plan), incoming (the state file passed open and the -incoming
-- arguments) and finish (after QEMU is up: the state loaded, the guest
-- running).
--
-- The RAM: a checkpoint with a RAM file is mapped private (copy-on-write)
-- by every VM restored from it ("mapped": QEMU loads only the devices from
-- the state, x-ignore-shared); where QEMU cannot map it, it is copied into
-- a memfd first ("copied").  A checkpoint whose RAM is in the state stream
-- (made by an earlier qshell, from a restored VM, or from a VM whose RAM
-- qshell did not hold) is loaded from the stream, a copy per VM.  Every
-- restore that copies says why, once per checkpoint and process.  Each VM
-- gets fresh qcow2 overlays over the checkpoint's read-only images in its
-- own temp dir, so any number of VMs run from one checkpoint at once, and
-- the directory can be moved or copied anywhere (mv, cp -a) and still
-- restores (and shares).

local errors = require "qemu.errors"
local fs = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local ram = require "qemu.vm.ram"
local host = require "qemu.util.host"
local binary = require "qemu.util.binary"
local manifest = require "qemu.checkpoint.manifest"
local migrate = require "qemu.checkpoint.migrate"
local json = require "qshell.json"
local sys = require "qshell.os"

local M = {}

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

-- M.ram_plan(dir, m, version) -> plan, why: how restores of the checkpoint
-- in dir (its real path) get their RAM on this QEMU.  plan.mode is
-- "mapped" (shared), "copied" (the RAM file copied into a memfd),
-- "stream" (a memfd the state stream fills) or nil (QEMU's own RAM, from
-- the stream); why says what keeps it from being shared.
function M.ram_plan(dir, m, version)
  local r = m.ram
  if not r then
    if m.format == 2 then
      -- QEMU's own RAM of -m: a memfd of that name and size takes it (and
      -- a checkpoint of the VM restored from it shares again).
      local id, size = ram.id_for(m.launch.machine_type), ram.bytes(m.launch.memory)
      local why = "it was made by an earlier qshell, with the RAM in its state stream (a checkpoint of a VM " ..
                  "restored from it shares)"
      if id and size then return { mode = "stream", size = size, id = id }, why end
      return nil, why
    end
    return nil, "its VM's RAM was set up by options qshell leaves to QEMU (extra=, machine=), " ..
                "so the RAM is in its state stream"
  end
  if not r.file then
    return { mode = "stream", size = r.size, id = r.id },
           "it was made from a VM that was itself restored, so the RAM is in its state stream " ..
           "(a checkpoint of a VM restored from it shares again)"
  end
  local path = dir .. "/" .. r.file
  local plan = { mode = "mapped", size = r.size, path = path, id = r.id }
  local ok, err = ram.can_map(path)
  if not ok then
    plan.mode = "copied"
    return plan, "its RAM file cannot be mapped: " .. tostring(err)
  end
  if not version.rom_off and not sys.access(path, "w") then
    plan.mode = "copied"
    return plan, string.format("QEMU %s maps a RAM file only when it may open it read-write (it never " ..
                               "writes it), and %s is read-only here: chmod u+w it to share (QEMU 8.2+ " ..
                               "needs no write access)", version.text, path)
  end
  return plan
end

local said = {}

-- M.note(dir, plan, why): say once per checkpoint and process that its
-- restores copy the RAM, and why.  (A sweep says it before its workers
-- fork: they inherit that it was said.)
function M.note(dir, plan, why)
  if not why or said[dir] then return end
  said[dir] = true
  io.stderr:write(string.format("qshell: restores of %s copy its RAM into each VM (%s): %s\n", dir,
                                plan and plan.mode == "copied" and "from its RAM file" or "from its state stream",
                                why))
end

---@api qemu.checkpoint.sharing qemu.checkpoint.sharing(dir [, binary]) -> shared, why
--- Whether VMs restored from the checkpoint in `dir` on a QEMU share its RAM, and if not, why.
---
--- VMs restored from a checkpoint with a RAM file map that file
--- copy-on-write: N restores hold one copy of the pages they read, and each
--- pays only for the pages it writes. Restores copy the RAM into each VM
--- instead when the checkpoint holds its RAM in its state stream (it was
--- made by an earlier qshell, from a VM that was itself restored, or from a
--- VM whose RAM options qshell left to QEMU: `extra=` with `-m`, `-mem-path`
--- or a memory backend, `machine=` naming one), when the RAM file cannot be
--- mapped (a file system without mmap), or on QEMU before 8.2 when this user
--- may not open the RAM file read-write (a read-only copy: `chmod u+w` it).
--- When they do not share, the reason is also printed on stderr, once per
--- checkpoint and process (`qshell: restores of DIR copy its RAM into each
--- VM (...): WHY`), as the first such restore would print it.
---
---     local shared, why = qemu.checkpoint.sharing("warm.ckpt")
---     if not shared then print("each run copies the RAM: " .. why) end
---
---@param dir string  the checkpoint directory
---@param binary? string  the QEMU the restores would run (default: `$QSHELL_QEMU`, else
---   qemu-system-x86_64 on PATH), as `qemu.launch{binary=}` takes it
---@return boolean shared  true when restores map the checkpoint's RAM file (shared)
---@return string|nil why  what keeps them from sharing (nil when they share)
---@error BadArgument  `dir` is not a string
---@error NotACheckpoint  `dir` is not a checkpoint (see `qemu.checkpoint.read`)
---@error LaunchFailed  no such QEMU binary, or it does not say its version
function M.sharing(dir, bin)
  local m = manifest.read(dir, "qemu.checkpoint.sharing")
  local real = sys.realpath(dir) or fs.abspath(dir)
  local plan, why = M.ram_plan(real, m, binary.version(bin))
  M.note(real, plan, why)
  return plan ~= nil and plan.mode == "mapped", why
end

-- A fresh overlay over base (a checkpoint's read-only image) at path:
-- copied from one made once per process with qemu-img (the copy costs
-- well under a millisecond; qemu-img create is a process start).
local templates = {}
local function overlay(base, format, path, fname)
  local st = fs.stat(base)
  local key = string.format("%s|%s|%d|%s", base, format, st and st.size or -1, tostring(st and st.mtime))
  local tmpl = templates[key]
  if not tmpl or not fs.is_file(tmpl) then
    tmpl = fs.scratch_file("overlay", ".qcow2")
    run.check({ "qemu-img", "create", "-q", "-f", "qcow2", "-F", format, "-b", base, tmpl }, { command = fname })
    templates[key] = tmpl
  end
  fs.write(path, fs.slurp(tmpl, fname), fname)
end

-- Launch options for a restore: the checkpoint's machine, the caller's
-- free options, fresh overlays in the temp dir of the VM's proc p (which
-- holds a memfd the plan makes).  Returns opts, restore context.
-- From the manifest come only machine_keys, machine_type, net and the
-- disks' shape, as manifest.read vetted them (a checkpoint may be anyone's:
-- nothing of it names a host path or adds a device); plugins=, extra= and
-- binary= are the caller's, never the manifest's.
function M.prepare(opts, p)
  local fname = "qemu.launch"
  local tmpdir = p:tmpdir()
  local dir = opts.restore
  if type(opts.verify) ~= "nil" and type(opts.verify) ~= "boolean" then
    check.bad(fname, "verify must be a boolean")
  end
  local m = manifest.read(dir, fname)
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
    elseif not manifest.free_keys[k] then
      local want = m.launch[k]
      if k == "append" and type(v) == "table" then v = table.concat(v, " ") end
      if k == "accel" and v == "auto" then v = host.accel() end
      if (k == "kernel" or k == "initrd") and type(v) == "string" and m.files[k] then
        -- A file the checkpoint holds a copy of: the same bytes are the same.
        local st = fs.stat(v)
        if st and manifest.digest_cached(v, st, nil, fname) == m.files[k].sha256 then v = want end
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
  -- every digest with verify=true), before anything starts.
  manifest.check_files(dir, m, opts.verify == true, fname)
  for _, k in ipairs(manifest.machine_keys) do
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
    local ov = string.format("%s/restore-disk%d.qcow2", tmpdir, i - 1)
    overlay(real .. "/" .. d.file, d.format, ov, fname)
    out.disks[i] = { file = ov, interface = d.interface, readonly = d.readonly ~= json.null and d.readonly or nil,
                     cache = d.cache ~= json.null and d.cache or nil }
  end
  local version = binary.version(out.binary)
  local plan, why = M.ram_plan(real, m, version)
  M.note(real, plan, why)
  if plan and plan.mode ~= "mapped" then
    -- A memfd: filled from the RAM file (the copy checks its digest on the
    -- way), or left for the stream to fill.
    plan.fd = ram.memfd(plan.size, fname, p)
    if plan.mode == "copied" then
      local job <close> = ram.image(plan.path, plan.fd, fname)
      local sum, err, code = job:wait()
      if not sum then errors.from_code(fname, err, code) end
      if sum ~= m.files[m.ram.file].sha256_chunks then
        errors.raise { class = "CheckpointCorrupt", command = fname,
                       desc = string.format("%s: %s does not match its digest in the manifest; nothing was started",
                                            dir, m.ram.file) }
      end
    end
  end
  return out, { dir = dir, manifest = m, state = real .. "/" .. m.state.file, ram = plan, version = version }
end

-- The -incoming arguments of a restore, before QEMU starts (proc p): the
-- state file is passed open.  QEMU loads a state with the RAM in it while
-- it starts up, as `-incoming file:PATH` would (8.2+: an fd set, -add-fd;
-- 7.2: fd:N).  A state without the RAM (x-ignore-shared), and a mapped-ram
-- state (QEMU 9.0+, from earlier versions of qshell), need capabilities set
-- first: -incoming defer, and M.finish loads it over QMP.  Returns the
-- launch's extra list.
function M.incoming(rctx, p, opts)
  local what = "qemu.launch{restore=}"
  local mapped_ram = rctx.manifest.state.mapped_ram == true
  if mapped_ram and rctx.version.major < 9 then
    errors.raise { class = "CheckpointFailed", command = what,
                   desc = "the checkpoint's state is mapped-ram (QEMU 9.0+), which QEMU " ..
                          rctx.version.text .. " cannot load" }
  end
  local n, err, code = p:pass_file(rctx.state)
  if not n then errors.from_code(what, err, code) end
  local uri, extra = migrate.fd_uri(rctx.version, n)
  rctx.deferred = mapped_ram or (rctx.ram ~= nil and rctx.ram.mode ~= "stream")
  rctx.uri = uri
  extra[#extra + 1] = "-incoming"
  extra[#extra + 1] = rctx.deferred and "defer" or uri
  for _, a in ipairs(opts.extra or {}) do extra[#extra + 1] = a end
  return extra
end

-- QEMU did not start for a restore: when the cause is the checkpoint's
-- machine type, which this QEMU lacks, raise that (naming both versions).
function M.launch_failed(rctx, binary_path, log)
  local m = rctx.manifest
  local mtype = m.launch.machine_type
  if mtype == nil or mtype == json.null then return end
  local ok, have = pcall(binary.machines, binary_path)
  if not ok or have[mtype] then return end
  local v = binary.version(binary_path)
  errors.raise { class = "BadArgument", command = "qemu.launch",
                 desc = string.format("restore: %s was saved by QEMU %s on machine type %s, which QEMU %s (%s) " ..
                                      "does not have", rctx.dir, tostring(m.qemu), mtype, v.text, v.path),
                 hint = "restore it with a QEMU that has " .. mtype .. " (binary=), or make the checkpoint again",
                 log = log }
end

-- After QEMU is up: load the state M.incoming deferred, or wait for the
-- one QEMU is loading; then the guest runs (unless paused=true).
function M.finish(vm, rctx, timeout)
  local what = "qemu.launch{restore=}"
  if rctx.deferred then
    local shared = rctx.ram ~= nil and rctx.ram.mode ~= "stream"
    migrate.caps(vm, { events = true, ["x-ignore-shared"] = shared or nil,
                       ["mapped-ram"] = rctx.manifest.state.mapped_ram == true or nil })
    vm:qmp("migrate-incoming", { uri = rctx.uri })
    migrate.wait(vm, what, timeout or 600)
    -- A later savevm must save the RAM (a memfd is "shared" to QEMU too).
    if shared then migrate.caps(vm, { ["x-ignore-shared"] = false }) end
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
  local c = rctx.manifest.console
  if vm.console and type(c) == "table" then vm.console:_assume_kernel_level(c.kernel_level) end
  -- (A checkpoint's VM was paused when it was saved: the restored one is
  -- paused until cont; cont of a running VM is no error.)
  if not vm.options.paused then vm:cont() end
  vm.restored_from = rctx.dir
end

return M
