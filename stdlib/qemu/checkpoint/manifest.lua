-- qemu.checkpoint.manifest: a checkpoint's manifest.json, and the checks
-- of its files against it.
--
-- A checkpoint is a directory: state (QEMU's migration stream of the
-- devices, and of the RAM when there is no RAM file), ram (the guest's RAM,
-- every page at its guest-physical offset, zero pages as holes), disk-N.qcow2
-- (the disks, flattened), kernel and initrd (copies), and manifest.json:
-- relative names only, each file's size, mtime and digest, the launch
-- options that define the machine.  Format 3 added the RAM file (format 2,
-- the RAM in the stream, still restores).
--
-- Digests: "sha256" is the SHA-256 of the file; "sha256_chunks" (the RAM
-- file, hashed on every core) the SHA-256 of the SHA-256 digests of its
-- 4 MiB chunks in order ("chunk" gives the size).  Either can be checked
-- with standard tools: split -b 4M ram c. && sha256sum c.* ...

local errors = require "qemu.errors"
local fs = require "qemu.util.fs"
local check = require "qemu.util.check"
local ram = require "qemu.vm.ram"
local json = require "qshell.json"
local sys = require "qshell.os"
local hash = require "qshell.hash"

local M = {}

M.FORMAT = 3
M.FORMATS = { [2] = true, [3] = true }

-- What defines the machine: a restore must not change these.
M.machine_keys = { "machine", "cpu", "smp", "memory", "kernel", "initrd", "append", "console", "accel" }
-- What a restore may set freely.
-- (binary too: a checkpoint restores on another QEMU that has its machine type.)
-- These are the restore's caller's alone: a manifest never gives one.
M.free_keys = { plugins = true, icount = true, name = true, timeout = true, reboot = true, extra = true,
                binary = true, paused = true, restore = true, record = true, replay = true }

-- ---- a manifest from elsewhere ----
--
-- A checkpoint is often made by someone else (a colleague's, a download,
-- a copy on a cluster's scratch): its manifest is data.  A restore takes
-- from it the machine (M.launch_keys, each value checked here), the files
-- it records (regular files in the directory) and the disks' shape, and
-- nothing that reaches the host: no path outside the checkpoint, no
-- device, chardev, netdev or plugin, no QEMU argument of its own (extra=,
-- plugins=, binary= come from the restore's caller).  A manifest that asks
-- for more is refused (NotACheckpoint: qshell never writes one) before
-- anything starts; one too big or too deep before it is parsed whole.

M.MAX_BYTES = 1 << 20 -- a manifest qshell writes is a few KB
M.MAX_DEPTH = 32      -- and nests 4 levels deep

local WORD = "^[%w][%w%.%-_]*$" -- a machine type, CPU model, accelerator, NIC model
local VALUE = "^[%w%.%-_:]*$"   -- a setting's value: no path, no list, no escape

-- The -machine settings a manifest may carry: the board's own, none of
-- which names a file, a backend or a device of the host (kernel=, dtb=,
-- dumpdtb=, firmware=, pflash0= do; usb=on adds the board's own USB
-- controller, part of the saved machine).  memory-backend= names an object
-- only the restore's caller can make (extra=), or qshell's own RAM.
local MACHINE_PROPS = {}
for _, k in ipairs { "accel", "kernel-irqchip", "kernel_irqchip", "kvm-shadow-mem", "vmport", "smm", "hpet", "acpi",
                     "pit", "pic", "sata", "smbus", "i8042", "usb", "graphics", "dump-guest-core", "mem-merge",
                     "suppress-vmdesc", "max-ram-below-4g", "smbios-entry-point-type", "default-bus-bypass-iommu",
                     "memory-backend", "nvdimm", "hmat", "fd-bootchk", "bus-lock-ratelimit",
                     -- microvm's
                     "x-option-roms", "isa-serial", "rtc", "pcie", "ioapic2", "auto-kernel-cmdline" } do
  MACHINE_PROPS[k] = true
end
-- The -accel settings (TCG's and KVM's tuning).
local ACCEL_PROPS = {}
for _, k in ipairs { "thread", "tb-size", "split-wx", "one-insn-per-tb", "kernel-irqchip", "kvm-shadow-mem",
                     "dirty-ring-size", "eager-split-size", "notify-vmexit", "notify-window" } do
  ACCEL_PROPS[k] = true
end

local function shown(v)
  local s = type(v) == "string" and string.format("%q", v) or tostring(v)
  if type(v) == "table" then
    local ok, t = pcall(json.encode, v)
    s = ok and t or s
  end
  return #s > 60 and (s:sub(1, 57) .. "...") or s
end

-- "name,key=value,...": a name, then settings whose keys are in keys
-- (true: any key, as a CPU's features: none of them reaches the host) and
-- whose values are plain words.  -> true, or nil and why
local function props(v, keys, what)
  if type(v) ~= "string" then return nil, "is not a string" end
  local first = true
  for part in (v .. ","):gmatch("([^,]*),") do
    if first then
      if not part:match(WORD) then return nil, "does not start with a " .. what .. " name" end
      first = false
    else
      local k, val = part:match("^([^=]*)=(.*)$")
      k, val = k or part, val or ""
      if k == "" then return nil, "has an empty setting (or a ,, escape)" end
      if not (keys == true and k:match("^[+-]?[%w][%w%.%-_]*$") or keys ~= true and keys[k]) then
        return nil, "has the setting " .. k .. ", which a restore never takes from a manifest"
      end
      if not val:match(VALUE) then return nil, "has " .. k .. "=" .. val .. ", which is not a plain value" end
    end
  end
  return true
end

-- A NIC on the user network, as net= gives it: the model is the
-- machine's; forwards listen on the loopback only (a manifest does not
-- open a host port to the network: a restore's own net= may).
local NET_KEYS = { model = "string", forward = "table", restrict = "boolean", hostname = "string" }
local function net_ok(v)
  if type(v) == "boolean" then return true end
  if type(v) ~= "table" then return nil, "is not true, false or a table" end
  for k, x in pairs(v) do
    if not NET_KEYS[k] then return nil, "has " .. tostring(k) .. ", which a restore never takes from a manifest" end
    if type(x) ~= NET_KEYS[k] then return nil, "has a " .. k .. " that is not a " .. NET_KEYS[k] end
  end
  if v.model and not v.model:match(WORD) then return nil, "has a model that is not a NIC model name" end
  for _, f in pairs(v.forward or {}) do
    if type(f) ~= "table" then return nil, "has a forward that is not a table" end
    local a = f.address
    if a ~= nil and (type(a) ~= "string" or not a:match("^127%.%d+%.%d+%.%d+$")) then
      return nil, "forwards a host port on " .. shown(a) .. " (a manifest's forwards listen on 127.0.0.1 only; " ..
                  "give net= to the restore for others)"
    end
  end
  return true
end

local function plain_name(v)
  if type(v) ~= "string" or v:find("/") or v:sub(1, 1) == "." then return nil, "is not a file of the checkpoint" end
  return true
end

local function typed(want)
  return function(v)
    if type(v) ~= want then return nil, "is not a " .. want end
    return true
  end
end

-- Every key a manifest's launch table may carry (what make.lua writes),
-- and what its value may be: fn(v) -> true, or nil and why.  A restore
-- launches with machine_keys, machine_type and net (qemu.checkpoint.restore);
-- append_given is only compared.  A key make.lua starts writing goes here.
M.launch_keys = {
  machine = function(v) return props(v, MACHINE_PROPS, "machine type") end,
  machine_type = function(v)
    if type(v) ~= "string" or not v:match(WORD) then return nil, "is not a machine type name" end
    return true
  end,
  cpu = function(v) return props(v, true, "CPU model") end,
  accel = function(v) return props(v, ACCEL_PROPS, "accelerator") end,
  -- (-smp and -m have numbers only: words, digits, "," and "=" name nothing)
  smp = function(v)
    if math.type(v) == "integer" and v >= 1 or type(v) == "string" and v:match("^[%w,=]+$") then return true end
    return nil, "is not a CPU count or a -smp string"
  end,
  memory = function(v)
    if type(v) == "number" and v > 0 or type(v) == "string" and v:match("^[%w%.,=]+$") then return true end
    return nil, "is not a size or a -m string"
  end,
  kernel = plain_name,
  initrd = plain_name,
  -- (the guest's kernel command line: QEMU hands it to the guest)
  append = typed("string"),
  append_given = typed("string"),
  console = typed("boolean"),
  net = net_ok,
}

-- What the keys a restore takes only from its caller would do.
local CALLERS_ONLY = {
  extra = "raw QEMU arguments", plugins = "TCG plugins (libraries of the host)",
  binary = "a QEMU binary of the host", disks = "disks of the host", loadvm = "a snapshot to load",
}

local function unsafe(fname, dir, what, hint)
  errors.raise { class = "NotACheckpoint", command = fname,
                 desc = string.format("%s/manifest.json %s; nothing was started", dir, what),
                 hint = hint or "qshell never writes that into a checkpoint: it was made elsewhere or edited" }
end

-- The launch table: only M.launch_keys, each value as it may be.
local function check_launch(fname, dir, launch)
  -- Earlier versions recorded the QEMU that made the checkpoint, as
  -- information: never used (the binary is the restore caller's).
  if type(launch.binary) == "string" then launch.binary = nil end
  for k, v in pairs(launch) do
    local valid = M.launch_keys[k]
    if not valid then
      local what = CALLERS_ONLY[k]
      unsafe(fname, dir, string.format("has launch.%s%s, which a restore never takes from a manifest", tostring(k),
                                       what and (" (" .. what .. ")") or ""),
             M.free_keys[k] and ("give " .. k .. "= to qemu.launch{restore=dir, ...} if you want it") or nil)
    end
    local ok, why = true, nil
    if v ~= json.null then ok, why = valid(v) end
    if not ok then unsafe(fname, dir, string.format("has launch.%s = %s, which %s", k, shown(v), why)) end
  end
end

local INTERFACES = { ide = true, virtio = true, scsi = true, nvme = true, none = true }
local CACHES = { none = true, writeback = true, writethrough = true, directsync = true, unsafe = true }

-- The disks: qcow2 images of the checkpoint (check_images reads what
-- their headers name), on an interface and cache QEMU's -drive knows; a
-- base outside is a regular file named by its absolute path and SHA-256.
local function check_disks(fname, dir, disks)
  for i, d in ipairs(disks) do
    local function bad(what) unsafe(fname, dir, string.format("has a disk %d %s", i, what)) end
    if type(d) ~= "table" then bad("that is not a table") end
    if d.format ~= "qcow2" then bad("of format " .. shown(d.format) .. " (qshell writes qcow2)") end
    if d.interface ~= nil and not INTERFACES[d.interface] then bad("on the interface " .. shown(d.interface)) end
    if d.cache ~= nil and d.cache ~= json.null and not CACHES[d.cache] then bad("with cache " .. shown(d.cache)) end
    if d.readonly ~= nil and d.readonly ~= json.null and type(d.readonly) ~= "boolean" then
      bad("with readonly " .. shown(d.readonly))
    end
    local b = d.base
    if b ~= nil and b ~= json.null then
      if type(b) ~= "table" or type(b.path) ~= "string" or b.path:sub(1, 1) ~= "/"
         or math.type(b.size) ~= "integer" or type(b.sha256) ~= "string" or not b.sha256:match("^%x+$")
         or (b.format ~= "qcow2" and b.format ~= "raw") then
        bad("whose base is not {path=, format=, size=, sha256=} as qshell records one")
      end
    end
  end
end

local function within(real, rdir)
  return rdir == "/" or real:sub(1, #rdir + 1) == rdir .. "/"
end

-- A file of the checkpoint is a regular file in its directory: a link out
-- of it (kernel -> /etc/passwd, ram -> /dev/mem, a disk -> /dev/sda) would
-- hand QEMU a file of the host.  (A missing file is check_files's.)
local function check_inside(fname, dir, name)
  local rdir = sys.realpath(dir)
  local real = sys.realpath(dir .. "/" .. name)
  if not rdir or not real then return end
  local it = name == "manifest.json" and "is" or ("names " .. name .. ", which is")
  if not within(real, rdir) then
    unsafe(fname, dir, string.format("%s a link to %s outside the checkpoint", it, real),
           "a checkpoint holds its files: copy the file in (cp -L) if it is meant to be there")
  end
  local st = sys.stat(real)
  if st and st.type ~= "file" then
    unsafe(fname, dir, string.format("%s not a regular file (a %s)", it, st.type))
  end
end

-- The files a checkpoint directory holds (what replacing one removes).
function M.is_file(name)
  return name == "manifest.json" or name == "state" or name == "ram" or name == "kernel" or name == "initrd"
         or name:match("^disk%-%d+%.%a+$") ~= nil
end

---@api qemu.checkpoint.read qemu.checkpoint.read(dir) -> manifest
--- The manifest of the checkpoint in `dir`, checked as a restore checks it.
---
--- A checkpoint may be anyone's (a colleague's, a download, a copy on a
--- cluster's scratch), so its `manifest.json` is read as data: it is refused
--- before it is parsed when it is over 1 MiB or nests deeper than 32 levels,
--- and refused when it asks for anything qshell never writes into one: a
--- file outside `dir` or a link out of it, a file that is not a regular
--- file, a `-machine` or `-accel` setting that names a host file or backend
--- (`kernel=`, `dumpdtb=`, `pflash0=`, a path), a port forward on an address
--- other than the loopback (127.x.x.x), launch options a restore takes only from its caller
--- (`extra`, `plugins`, `disks`, `loadvm`), or any key qshell does not record.
--- A recorded `binary` (earlier versions wrote one, as information) is
--- ignored: `extra=`, `plugins=` and `binary=` come from the restore's
--- caller only.
--- Checkpoints of format 2 (an earlier qshell, the RAM in the state stream)
--- are read as well as the current format 3. The files themselves are not
--- checked here: `qemu.checkpoint.verify` does that.
---
---     local m = qemu.checkpoint.read("warm.ckpt")
---     print(m.qemu, m.launch.machine_type, m.launch.memory)
---
---@param dir string  the checkpoint directory (made by `vm:checkpoint`)
---@return table manifest  the decoded `manifest.json`: `{format=, qshell=, qemu=, created=,
---   launch=, disks=, state=, ram=, files=, source=, console=}`. `format` is 3 (2: an
---   earlier qshell); `qshell` and `qemu` the versions that made it; `created` Unix time;
---   `launch` the options that define the machine (`machine_type` as QEMU resolved it,
---   e.g. "pc-i440fx-7.2", and `machine`, `cpu`, `smp`, `memory`, `accel`, `kernel`,
---   `initrd` (names of files in `dir`), `append` (as QEMU got it; `append_given` as the
---   script gave it), `console`, `net` as launched);
---   `disks` a list of `{file=, format="qcow2", virtual_size=, actual_size=, interface=,
---   readonly=, cache=, base=}` (`base` = `{path=, format=, size=, mtime=, sha256=}` for
---   a disk made with `shared_base=true`, else absent); `state` = `{file="state",
---   bytes=}`; `ram` = `{id=, size=, file=, data=}` (the guest RAM's backend, its file in
---   `dir` and the bytes of data in it; absent when QEMU held the RAM itself); `files`
---   maps each file name to `{size=, mtime=, sha256=}` (the RAM file:
---   `{size=, mtime=, sha256_chunks=, chunk=}`, the SHA-256 of the SHA-256 digests of
---   its 4 MiB chunks in order); `source` where it was made from (`{status=, argv=,
---   disks=, kernel=, initrd=, binary=, host=}`, information only); `console` what the
---   serial console knew of the guest (its kernel's log level)
---@error BadArgument  `dir` is not a string
---@error NotACheckpoint  no such directory, no `manifest.json` in it, not a qshell manifest,
---   one made by a much older qshell (format 1) or a newer one, one too big or too deep,
---   or one that asks for what qshell never writes into a checkpoint (the error names it)
-- (fname: the command the errors name, for the callers that read a manifest
-- on their own behalf: qemu.launch{restore=}, qemu.sweep, ...)
function M.read(dir, fname)
  fname = fname or "qemu.checkpoint.read"
  check.arg(fname, 1, dir, "string")
  local path = dir .. "/manifest.json"
  local mst = fs.stat(path)
  if not mst then
    local st = sys.stat(dir)
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = st and (dir .. " is not a checkpoint (no manifest.json)") or ("no such directory: " .. dir),
                   hint = "make one with vm:checkpoint(dir)" }
  end
  -- A regular file in dir, its size before it is read (a manifest is a
  -- few KB), and never more read than the limit (it may grow meanwhile).
  check_inside(fname, dir, "manifest.json")
  local too_big = string.format("is over %g MiB (a checkpoint's manifest is a few KB); it was not read",
                                M.MAX_BYTES / 1048576)
  if mst.size > M.MAX_BYTES then unsafe(fname, dir, too_big) end
  local f, msg = io.open(path, "rb")
  if not f then errors.raise { class = "NotACheckpoint", command = fname, desc = "cannot read " .. msg } end
  local text = f:read(M.MAX_BYTES + 1) or ""
  f:close()
  if #text > M.MAX_BYTES then unsafe(fname, dir, too_big) end
  local ok, m = pcall(json.decode, text, { depth = M.MAX_DEPTH })
  if not ok and tostring(m):find("nested deeper than", 1, true) then
    unsafe(fname, dir, string.format("nests arrays and objects deeper than %d levels (a checkpoint's manifest " ..
                                     "has 4); it was not read further", M.MAX_DEPTH))
  end
  if ok and type(m) == "table" and m.format == 1 then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = dir .. " is a checkpoint of an older qshell (absolute paths, no file hashes)",
                   hint = "make it again with vm:checkpoint(dir)" }
  end
  if ok and type(m) == "table" and math.type(m.format) == "integer" and m.format > M.FORMAT then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = string.format("%s was made by a newer qshell (checkpoint format %d; this one reads %d)",
                                        dir, m.format, M.FORMAT) }
  end
  if not ok or type(m) ~= "table" or not M.FORMATS[m.format] or type(m.state) ~= "table"
     or type(m.files) ~= "table" or type(m.disks) ~= "table" or type(m.launch) ~= "table" then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = dir .. "/manifest.json is not a qshell checkpoint manifest" }
  end
  for name, rec in pairs(m.files) do
    if name:find("/") or name:sub(1, 1) == "." then
      unsafe(fname, dir, "names a file outside the checkpoint: " .. name)
    end
    if type(rec) ~= "table" or math.type(rec.size) ~= "integer"
       or type(rec.sha256 or rec.sha256_chunks) ~= "string" then
      unsafe(fname, dir, "has a record of " .. name .. " that is not {size=, sha256=}")
    end
    check_inside(fname, dir, name)
  end
  check_launch(fname, dir, m.launch)
  check_disks(fname, dir, m.disks)
  if m.ram == json.null then m.ram = nil end
  if m.ram ~= nil and (type(m.ram) ~= "table" or math.type(m.ram.size) ~= "integer" or type(m.ram.id) ~= "string"
                       or not m.ram.id:match("^[%w%.%-_]+$")) then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = dir .. "/manifest.json has a ram entry qshell does not know" }
  end
  -- Every file the checkpoint uses is one the manifest records.
  local used = { m.state.file }
  if m.ram and m.ram.file ~= nil then used[#used + 1] = m.ram.file end
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

-- The digest of a file as its record names it: {sha256=} or {sha256_chunks=}.
local function digest(path, rec, command)
  if rec.sha256_chunks then
    local sum, err, code = ram.image(path, nil, command):wait()
    if not sum then errors.from_code(command, err, code) end
    return sum
  end
  local sum, err, code = hash.sha256(path)
  if not sum then errors.from_code(command, err, code) end
  return sum
end

-- The digest a record holds.
local function recorded(rec)
  return rec.sha256_chunks or rec.sha256
end

local hashed = {} -- "kind|path|size|mtime" -> digest, computed once per process

-- M.digest_cached(path, st, rec, command): the digest of path (for a
-- given size and mtime, computed once per process: a sweep's runs do not
-- hash the same file again).  rec says which digest ({sha256=} when nil).
function M.digest_cached(path, st, rec, command)
  rec = rec or {}
  local key = string.format("%s|%s|%d|%s", rec.sha256_chunks and "c" or "s", sys.realpath(path) or path,
                            st.size, tostring(st.mtime))
  if not hashed[key] then hashed[key] = digest(path, rec, command) end
  return hashed[key]
end

local function corrupt(fname, dir, file, what)
  errors.raise { class = "CheckpointCorrupt", command = fname,
                 desc = string.format("%s: %s %s; nothing was started", dir, file, what),
                 hint = "the checkpoint changed after it was made: make it again" }
end

-- What a qcow2 image names besides itself: its header may name a backing
-- file (and its format) and an external data file, which QEMU opens too.
-- -> {backing=, backing_format=, data_file=}, or nil and why
local function image_refs(path)
  local f = io.open(path, "rb")
  if not f then return nil, "cannot be read" end
  local head = f:read(65536) or ""
  if #head < 104 or head:sub(1, 4) ~= "QFI\xfb" then
    f:close()
    return nil, "is not a qcow2 image"
  end
  local version, boff, bsize = string.unpack(">I4I8I4", head, 5)
  local refs = {}
  -- Header extensions: after the 72-byte header (version 2) or
  -- header_length (3), each type, length, data padded to 8, type 0 last.
  local at = 73
  if version >= 3 then
    if string.unpack(">I8", head, 73) & 4 ~= 0 then refs.data_file = true end -- incompatible: external data file
    at = string.unpack(">I4", head, 101) + 1
  end
  while true do
    if at < 73 or at + 7 > #head then
      f:close()
      return nil, "has qcow2 header extensions qshell cannot read"
    end
    local t, len = string.unpack(">I4I4", head, at)
    if t == 0 then break end
    if t == 0xE2792ACA then refs.backing_format = head:sub(at + 8, at + 7 + len) end
    if t == 0x44415441 then refs.data_file = true end
    at = at + 8 + (len + 7) // 8 * 8
  end
  if boff > 0 and bsize > 0 then
    local name = bsize <= 4096 and f:seek("set", boff) and f:read(bsize)
    if not name or #name ~= bsize then
      f:close()
      return nil, "names a backing file qshell cannot read"
    end
    refs.backing = name
  end
  f:close()
  return refs
end

-- The disks name nothing outside the checkpoint but their recorded base
-- (checked by its SHA-256), and a base names nothing at all: a backing
-- file or a data file named in an image would be a host file QEMU reads.
local function check_images(dir, m, fname)
  local function refuse(name, what)
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = string.format("%s: %s %s; nothing was started", dir, name, what),
                   hint = "qshell never writes such an image into a checkpoint: it was made elsewhere or edited" }
  end
  for _, d in ipairs(m.disks) do
    local b = d.base ~= json.null and d.base or nil
    local refs, why = image_refs(dir .. "/" .. d.file)
    if not refs then refuse(d.file, why) end
    if refs.data_file then refuse(d.file, "names an external data file") end
    if refs.backing then
      local name = refs.backing
      if name:sub(1, 1) ~= "/" then name = dir .. "/" .. name end
      local real = sys.realpath(name)
      if not b or not real or real ~= sys.realpath(b.path) then
        refuse(d.file, string.format("names the backing file %s, which is not %s", shown(refs.backing),
                                     b and ("its recorded base " .. b.path) or "in the manifest (no base)"))
      end
      if refs.backing_format and refs.backing_format ~= b.format then
        refuse(d.file, string.format("reads its base as %s, the manifest says %s", shown(refs.backing_format),
                                     b.format))
      end
    end
    if b and b.format == "qcow2" then
      local brefs, bwhy = image_refs(b.path)
      if not brefs then refuse(d.file, "has its base " .. b.path .. " that " .. bwhy) end
      if brefs.backing or brefs.data_file then
        refuse(d.file, "has its base " .. b.path .. " backed by another file (a base stands alone)")
      end
    end
  end
end

-- M.check_files(dir, m, full, fname): the files against the manifest:
-- sizes always; the digest where the mtime changed (a copy without -p),
-- of a referenced base, or of every file with full=true; then what the
-- images name (check_images).
function M.check_files(dir, m, full, fname)
  for name, rec in pairs(m.files) do
    local path = dir .. "/" .. name
    local st = fs.stat(path)
    if not st then corrupt(fname, dir, name, "is missing") end
    if st.size ~= rec.size then
      corrupt(fname, dir, name, string.format("is %d bytes, the manifest says %d", st.size, rec.size))
    end
    if full or st.mtime ~= rec.mtime then
      local sum = full and digest(path, rec, fname) or M.digest_cached(path, st, rec, fname)
      if sum ~= recorded(rec) then
        corrupt(fname, dir, name, "does not match its " .. (rec.sha256_chunks and "digest" or "SHA-256") ..
                                  " in the manifest")
      end
    end
  end
  for _, d in ipairs(m.disks) do
    local b = d.base
    if b ~= nil and b ~= json.null then
      local st = fs.stat(b.path)
      if not st then corrupt(fname, dir, d.file, "has its base " .. b.path .. " gone") end
      if st.type ~= "file" then
        -- (a device or a FIFO: its digest would read without end)
        errors.raise { class = "NotACheckpoint", command = fname,
                       desc = string.format("%s: %s has its base %s, which is not a regular file (a %s); " ..
                                            "nothing was started", dir, d.file, b.path, st.type) }
      end
      if st.size ~= b.size then
        corrupt(fname, dir, d.file, string.format("has its base %s changed (%d bytes, was %d)", b.path, st.size, b.size))
      end
      local sum = full and digest(b.path, b, fname) or M.digest_cached(b.path, st, b, fname)
      if sum ~= b.sha256 then
        corrupt(fname, dir, d.file, "has its base " .. b.path .. " changed (its SHA-256 differs)")
      end
    end
  end
  check_images(dir, m, fname)
end

---@api qemu.checkpoint.verify qemu.checkpoint.verify(dir) -> true
--- Check every file of the checkpoint in `dir` against its manifest, digests included.
---
--- Every file's size and digest (SHA-256; for the RAM file the digest of its
--- 4 MiB chunks, hashed on every core) is computed again and compared with
--- the manifest, and so is a base outside the checkpoint that a disk made
--- with `shared_base=true` names; the disks' qcow2 headers must name no file
--- but their recorded base. A restore (`qemu.launch{restore=dir}`) checks
--- the sizes always but the digests only of files whose mtime changed (and
--- of a base, once per process), unless given `verify=true`: this is the
--- full check, for a checkpoint copied from elsewhere. It reads every byte,
--- so it takes as long as reading the checkpoint does.
---
---     qemu.checkpoint.verify("/shared/me/warm.ckpt")   -- raises if anything differs
---
---@param dir string  the checkpoint directory
---@return boolean ok  true (a mismatch raises)
---@error BadArgument  `dir` is not a string
---@error NotACheckpoint  `dir` is not a checkpoint (see `qemu.checkpoint.read`), an image
---   names a backing or data file other than its recorded base, or a base is not a
---   regular file
---@error CheckpointCorrupt  a file is missing, has another size or digest than the
---   manifest records, or a recorded base is gone or changed (the file is named)
---@error IOError  a file could not be read
function M.verify(dir)
  local m = M.read(dir, "qemu.checkpoint.verify")
  M.check_files(dir, m, true, "qemu.checkpoint.verify")
  return true
end

---@api qemu.checkpoint.info qemu.checkpoint.info(dir) -> info
--- What is in the checkpoint in `dir`, with a summary to print.
---
--- It reads the manifest only (checked as `qemu.checkpoint.read` checks
--- it); `qemu.checkpoint.verify` checks the files. `info.text` looks like:
---
---     checkpoint warm.ckpt
---       made      2026-12-06 23:51:23 by qshell 1.0 on QEMU 7.2.22 (host)
---       machine   pc-i440fx-7.2, accel tcg, memory 256M, smp 1
---       kernel    kernel (from /home/me/qshell/build/guest/vmlinuz), append "console=ttyS0 ..."
---       state     0.3 MB (devices only)
---       ram       ram 83.8 MB of data in 256 MiB (shared by restores)
---       disk 0    disk-0.qcow2 5.1 MB (68157440 virtual), self-contained
---       total     105.0 MB in 5 files
---
---     io.write(qemu.checkpoint.info("warm.ckpt").text)
---
---@param dir string  the checkpoint directory
---@return table info  `{qemu=, machine_type=, created=, launch=, disks=, files=, bytes=, ram=,
---   source=, text=}`: the QEMU version that made it, the machine type QEMU resolved
---   (e.g. "pc-i440fx-7.2"), the time it was made (Unix time), and the manifest's
---   `launch`, `disks`, `files`, `ram` and `source` (as `qemu.checkpoint.read` describes
---   them); `bytes` is the size of its files (the RAM file counted by the data in it, its
---   holes left out); `text` the summary above, ending in a newline
---@error BadArgument  `dir` is not a string
---@error NotACheckpoint  `dir` is not a checkpoint (see `qemu.checkpoint.read`)
function M.info(dir)
  local m = M.read(dir, "qemu.checkpoint.info")
  -- (the RAM file counts its data: the rest is holes)
  local total, nfiles = 0, 0
  for name, r in pairs(m.files) do
    total = total + ((m.ram and name == m.ram.file and m.ram.data) or r.size)
    nfiles = nfiles + 1
  end
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
                                    m.state.mapped_ram and " (mapped-ram, sparse)" or
                                    (m.ram and m.ram.file and " (devices only)" or " (with the RAM)"))
  if m.ram and m.ram.file then
    local st = fs.stat(dir .. "/" .. m.ram.file)
    lines[#lines + 1] = string.format("  ram       %s %.1f MB of data in %.0f MiB (shared by restores)", m.ram.file,
                                      (m.ram.data or (st and st.alloc) or 0) / 1e6, m.ram.size / 1048576)
  end
  for i, d in ipairs(m.disks) do
    local b = d.base ~= json.null and d.base or nil
    lines[#lines + 1] = string.format("  disk %d    %s %.1f MB (%s virtual)%s", i - 1, d.file,
                                      (m.files[d.file] or { size = 0 }).size / 1e6, tostring(d.virtual_size),
                                      b and (", over base " .. b.path) or ", self-contained")
  end
  lines[#lines + 1] = string.format("  total     %.1f MB in %d files", total / 1e6, nfiles)
  return { qemu = m.qemu, machine_type = m.launch.machine_type, created = m.created, launch = m.launch,
           disks = m.disks, files = m.files, bytes = total, ram = m.ram, source = m.source,
           text = table.concat(lines, "\n") .. "\n" }
end

return M
