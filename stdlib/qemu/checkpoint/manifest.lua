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
local fs = require "qemu.fs"
local check = require "qemu.check"
local ram = require "qemu.ram"
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
M.free_keys = { plugins = true, icount = true, name = true, timeout = true, reboot = true, extra = true,
                binary = true, paused = true, restore = true }

-- The files a checkpoint directory holds (what replacing one removes).
function M.is_file(name)
  return name == "manifest.json" or name == "state" or name == "ram" or name == "kernel" or name == "initrd"
         or name:match("^disk%-%d+%.%a+$") ~= nil
end

-- M.read(dir [, fname]) -> manifest (raises when dir is not a checkpoint)
function M.read(dir, fname)
  fname = fname or "qemu.checkpoint.read"
  check.arg(fname, 1, dir, "string")
  local text = fs.read(dir .. "/manifest.json")
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
  if ok and type(m) == "table" and math.type(m.format) == "integer" and m.format > M.FORMAT then
    errors.raise { class = "NotACheckpoint", command = fname,
                   desc = string.format("%s was made by a newer qshell (checkpoint format %d; this one reads %d)",
                                        dir, m.format, M.FORMAT) }
  end
  if not ok or type(m) ~= "table" or not M.FORMATS[m.format] or type(m.state) ~= "table"
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

-- M.check_files(dir, m, full, fname): the files against the manifest:
-- sizes always; the digest where the mtime changed (a copy without -p),
-- of a referenced base, or of every file with full=true.
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
      if st.size ~= b.size then
        corrupt(fname, dir, d.file, string.format("has its base %s changed (%d bytes, was %d)", b.path, st.size, b.size))
      end
      local sum = full and digest(b.path, b, fname) or M.digest_cached(b.path, st, b, fname)
      if sum ~= b.sha256 then
        corrupt(fname, dir, d.file, "has its base " .. b.path .. " changed (its SHA-256 differs)")
      end
    end
  end
end

-- qemu.checkpoint.verify(dir) -> true: every file (and a referenced base)
-- matches its size and digest in the manifest; CheckpointCorrupt otherwise
function M.verify(dir)
  local m = M.read(dir, "qemu.checkpoint.verify")
  M.check_files(dir, m, true, "qemu.checkpoint.verify")
  return true
end

-- qemu.checkpoint.info(dir) -> {qemu=, machine_type=, created=, launch=, disks=, files=,
--   bytes=, ram=, source=, text=}: what is in a checkpoint; info.text is a summary to print
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
