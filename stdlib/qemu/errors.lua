-- qemu.errors: the error objects every public qshell call raises, and the
-- hints for the known traps.
--
-- An error is a table {class=, desc=, command=, hint=, where=} with a
-- one-line __tostring, so an uncaught error prints one readable line and
-- `pcall` gives scripts the structured value.  `where` is the first frame
-- outside the embedded stdlib: the user's "script.lua:12".

local M = {}

local Error = {}
Error.__index = Error
Error.__name = "qemu.error"

function Error.__tostring(e)
  local parts = {}
  if e.where then parts[#parts + 1] = e.where .. ": " end
  if e.command then parts[#parts + 1] = e.command .. ": " end
  parts[#parts + 1] = e.desc or "unknown error"
  if e.class then parts[#parts + 1] = " (" .. e.class .. ")" end
  if e.hint then parts[#parts + 1] = "; hint: " .. e.hint end
  return table.concat(parts)
end

-- Library frames have chunk names "=qemu/..."; C frames "=[C]".
local function user_frame(level)
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    local src = info.source
    if not (src:sub(1, 6) == "=qemu/" or src == "=[C]") then
      if info.currentline and info.currentline > 0 then
        return info.short_src .. ":" .. info.currentline
      end
      return info.short_src
    end
    level = level + 1
  end
end

function M.new(t)
  assert(type(t) == "table" and t.desc, "errors.new needs {desc=}")
  t.where = t.where or user_frame(3)
  return setmetatable(t, Error)
end

function M.raise(t)
  t.where = t.where or user_frame(3)
  error(setmetatable(t, Error), 0)
end

function M.is(e, class)
  return getmetatable(e) == Error and (class == nil or e.class == class)
end

-- Known traps: a pattern of QEMU's (or the guest's) text -> the fix.
M.traps = {
  { "QCOW version 3",
    'the image is qcow2 v3 (compat 1.1); for an older QEMU run qemu.disk.amend(path, {compat="0.10"})' },
  { "writable but does not support snapshots",
    'a writable disk is not qcow2: convert it with qemu.disk.convert(src, dst, {format="qcow2"}) or attach it readonly' },
  { "no block device can store vmstate",
    "internal snapshots need a writable qcow2 disk: attach one (qemu.disk.create(path, \"1G\"))" },
  { "Failed to get shared \"write\" lock",
    "the image is in use by another QEMU: quit that VM, or use qemu.disk.overlay(base, path) for a copy-on-write layer" },
  { "Failed to get \"write\" lock",
    "the image is in use by another QEMU: quit that VM, or use qemu.disk.overlay(base, path) for a copy-on-write layer" },
  { "failed to initialize kvm",
    'KVM is not usable here: use accel="tcg" (or accel="auto")' },
  { "Could not access KVM kernel module",
    'KVM is not usable here: use accel="tcg" (or accel="auto")' },
  { "self%-detected stall",
    "RCU stall warnings under slow emulation: add icount={shift=\"auto\"} (or a fixed shift) to qemu.launch" },
  { "Unable to mount root fs",
    "check root= in append and the disk interface (IDE disks are /dev/sdX once ata_piix and sd_mod are loaded; virtio is /dev/vdX)" },
  { "Could not allocate block",
    "the filesystem is too small for the files: give a larger size= (or leave size out to size it from the directory)" },
  { "invalid opcode",
    "an illegal instruction under TCG: the guest code uses a CPU feature TCG lacks; pick cpu=\"max\" or build the guest code without AVX (-mno-avx)" },
}

function M.hint_for(text)
  if type(text) ~= "string" then return nil end
  for _, trap in ipairs(M.traps) do
    if text:find(trap[1]) then return trap[2] end
  end
  return nil
end

return M
