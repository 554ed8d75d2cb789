-- qemu.ram: where a VM's guest RAM lives, so that a checkpoint can keep it
-- as a file of its own and restores can share it.
--
-- A VM qemu.launch starts gets its RAM in a memfd that this shell creates
-- and holds; QEMU maps it shared through /proc/self/fd/N, as the memory
-- backend named as QEMU names the RAM of a plain -m ("pc.ram").
-- vm:checkpoint copies the pages out of it while QEMU saves only the
-- devices (x-ignore-shared).  A restore maps the checkpoint's RAM file
-- private (copy-on-write): the VMs restored from it share each page none of
-- them wrote.  vm.ram = {size=, backing=, path=, id=} says which case a VM
-- is (the README's table says what each does):
--
--   "memfd"    launched; or restored from a checkpoint whose RAM is in the
--              state stream (the stream filled the memfd)
--   "mapped"   restored from a checkpoint's RAM file, shared
--   "copied"   restored from a RAM file QEMU cannot map here (said once)
--   "qemu"     launched with RAM options qshell leaves to QEMU (extra=,
--              machine=, memory= that is not a plain size)

local ramc = require "qshell.ram.core"
local errors = require "qemu.errors"

local M = {}

M.CHUNK = ramc.CHUNK

-- The memory backend's id, which names the RAM block in migration streams
-- and internal snapshots: the machine's default RAM id (what QEMU calls
-- the RAM of a plain -m), so that states saved by QEMU with -m load into
-- these VMs and theirs into QEMU with -m ("pc.ram" for pc and q35).  nil
-- for machine types qshell does not know.
function M.id_for(machine)
  local t = type(machine) == "string" and machine:match("^[^,]*") or nil
  if t == nil or t == "" or t:match("^pc") or t:match("^q35") or t == "isapc" then return "pc.ram" end
  if t:match("^microvm") then return "microvm.ram" end
  return nil
end

M.DEFAULT_SIZE = 128 << 20 -- QEMU's default -m on x86 machines

local UNITS = { [""] = 1 << 20, B = 1, K = 1 << 10, M = 1 << 20, G = 1 << 30, T = 1 << 40 }

-- M.bytes(memory) -> bytes, or nil when memory is not a plain size (QEMU's
-- -m syntax: a number of MiB, or a number with a B/K/M/G/T suffix).
function M.bytes(memory)
  if memory == nil then return M.DEFAULT_SIZE end
  if type(memory) == "number" then memory = tostring(memory) end
  if type(memory) ~= "string" then return nil end
  local n, unit = memory:match("^(%d+%.?%d*)([bBkKmMgGtT]?)$")
  if not n then return nil end
  local b = tonumber(n) * UNITS[unit:upper()]
  if b ~= math.floor(b) or b <= 0 or b % (1 << 20) ~= 0 then return nil end
  return math.tointeger(b)
end

-- "-m" for size bytes, in MiB (the size of a RAM backend must equal it).
local function mib(size)
  return string.format("%dM", size >> 20)
end

-- Options QEMU takes RAM settings from that qshell leaves to the user.
local USER_RAM = { ["-m"] = true, ["-mem-path"] = true, ["-mem-prealloc"] = true, ["-numa"] = true }

-- Why this launch's RAM is left to QEMU, or nil when qshell can hold it.
local function user_managed(opts)
  local machine = opts.machine
  if type(machine) == "string" and machine:find("memory%-backend=") then
    return "machine= names a memory backend"
  end
  local extra = type(opts.extra) == "table" and opts.extra or {}
  for i, a in ipairs(extra) do
    local nxt = tostring(extra[i + 1] or "")
    if USER_RAM[a] then return "extra= has " .. a end
    if a == "-object" and nxt:match("^memory%-backend") then return "extra= has a memory backend" end
    if (a == "-machine" or a == "-M") and nxt:find("memory%-backend=") then
      return "extra= names a memory backend"
    end
  end
  if M.bytes(opts.memory) == nil then
    return string.format("memory=%s is not a plain size", tostring(opts.memory))
  end
  return nil
end

-- (x-use-canonical-path-for-ramblock-id=off: the block is "pc.ram", not
-- "/objects/pc.ram", as QEMU names its own default RAM.)
local function backend(id, props)
  return "memory-backend-file,id=" .. id .. ",x-use-canonical-path-for-ramblock-id=off," .. props
end

-- The memfd is the proc's (closed with it, whatever ends it).
local function hold(p, fd)
  local ok, err, code = p:hold(fd)
  if not ok then
    require("qshell.os").close(fd)
    errors.from_code("qemu.launch", err, code)
  end
end

-- The RAM arguments of a new VM (not a restore): add("-m", ...) and, when
-- qshell holds the RAM, a memfd passed to QEMU (p:pass_fd).  Fills
-- ctx.ram = {size=, fd=, backing=, why=} (fd: this shell's copy, held by
-- the VM's proc).
function M.launch_args(opts, ctx, add)
  local why = user_managed(opts)
  local size = M.bytes(opts.memory)
  local id = M.id_for(opts.machine)
  local fd
  if not why and not id then why = "machine " .. tostring(opts.machine) .. " has no RAM id qshell knows" end
  if not why then
    fd, why = ramc.memfd(id, size)
    if fd then hold(ctx.proc, fd) end
  end
  if not fd then
    if opts.memory then add("-m", opts.memory) end
    ctx.ram = { size = size, backing = "qemu", why = why }
    return
  end
  ctx.ram = { size = size, fd = fd, backing = "memfd", id = id }
  local n, err, code = ctx.proc:pass_fd(fd)
  if not n then errors.from_code("qemu.launch", err, code) end
  add("-m", opts.memory or mib(size))
  add("-object", backend(id, string.format("size=%d,mem-path=/proc/self/fd/%d,share=on", size, n)))
  add("-machine", "memory-backend=" .. id)
end

-- The RAM arguments of a restore, as qemu.checkpoint.restore planned them
-- (plan = {mode=, size=, path=, fd=}, or nil: QEMU's own RAM of memory
-- bytes, from the stream): "mapped" maps the checkpoint's file
-- private (read-only file, writable copy-on-write pages: rom=off on QEMU
-- 8.2+; before 8.2 share=off alone, which opens the file read-write but
-- never writes it); "copied" and "stream" use a memfd.
function M.restore_args(plan, version, ctx, add, memory)
  if not plan then
    -- QEMU's own RAM, loaded from the stream
    if memory then add("-m", memory) end
    ctx.ram = { size = M.bytes(memory), backing = "qemu" }
    return
  end
  add("-m", mib(plan.size))
  if plan.mode == "mapped" then
    local props = string.format("size=%d,mem-path=%s,share=off", plan.size, plan.path:gsub(",", ",,"))
    if version.rom_off then props = props .. ",readonly=on,rom=off" end
    add("-object", backend(plan.id, props))
    ctx.ram = { size = plan.size, backing = "mapped", path = plan.path, id = plan.id }
  else
    local n, err, code = ctx.proc:pass_fd(plan.fd)
    if not n then errors.from_code("qemu.launch", err, code) end
    add("-object", backend(plan.id, string.format("size=%d,mem-path=/proc/self/fd/%d,share=on", plan.size, n)))
    ctx.ram = { size = plan.size, fd = plan.fd, backing = plan.mode == "copied" and "copied" or "memfd",
                id = plan.id }
  end
  add("-machine", "memory-backend=" .. plan.id)
end

-- M.memfd(size, command, p) -> fd: a memfd the proc p holds
function M.memfd(size, command, p)
  local fd, msg, code = ramc.memfd("qshell-ram", size)
  if not fd then errors.from_code(command, msg, code) end
  hold(p, fd)
  return fd
end

-- M.image(src, dst, command) -> job: copy (dst a path or fd) or hash (dst
-- nil) a RAM file on every core; job:wait() -> digest, size, data bytes.
function M.image(src, dst, command)
  local threads = math.min(require("qemu.util.host").cores(), 16)
  local job, msg, code = ramc.image(src, dst, threads)
  if not job then errors.from_code(command, msg, code) end
  return job
end

-- M.can_map(path) -> true | nil, why
function M.can_map(path)
  return ramc.can_map(path)
end

return M
