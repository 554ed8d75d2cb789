-- qemu.image.inspect: what an image holds, read without changing it: the
-- partition table (MBR, or a GPT behind a protective MBR), the filesystem
-- at each partition's start, and qemu.image.check's report and hints.

local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local disk = require "qemu.disk"

local M = {}

local SECTOR = 512

-- ---- reading the image's first sectors and superblocks ----

-- Bytes [offset, offset+len) of the image's guest-visible contents.
local function read_at(path, fmt, offset, len)
  local tmp = files.scratch_file("read", ".bin")
  local skip = offset // SECTOR
  local count = (offset + len + SECTOR - 1) // SECTOR - skip
  -- qemu-img dd counts `count` from the start of the input, skipped blocks
  -- included (and says "cannot skip" yet exits 0 otherwise).
  run.check({ "qemu-img", "dd", "-U", "-f", fmt, "-O", "raw", "bs=" .. SECTOR,
              "skip=" .. skip, "count=" .. (skip + count), "if=" .. path, "of=" .. tmp },
            { command = "qemu.image" })
  local data = files.slurp(tmp, "qemu.image")
  os.remove(tmp)
  local start = offset - skip * SECTOR + 1
  return data:sub(start, start + len - 1)
end

local FS_TYPES = { [0x83] = "linux", [0x82] = "swap", [0x0c] = "fat32", [0x0b] = "fat32",
                   [0x07] = "ntfs", [0xee] = "gpt", [0xef] = "efi", [0x8e] = "lvm" }

-- The filesystem at a byte offset: "ext2/3/4" from the superblock magic.
local function fs_at(path, fmt, offset)
  local sb = read_at(path, fmt, offset + 1024, 256)
  if #sb >= 0x62 and string.unpack("<I2", sb, 0x38 + 1) == 0xEF53 then
    local compat, incompat = string.unpack("<I4I4", sb, 0x5C + 1)
    if incompat & 0x40 ~= 0 then return "ext4" end  -- extents
    if compat & 0x4 ~= 0 then return "ext3" end     -- has a journal
    return "ext2"
  end
  local boot = read_at(path, fmt, offset, 512)
  if boot:sub(0x52 + 1, 0x52 + 5) == "FAT32" or boot:sub(0x36 + 1, 0x36 + 3) == "FAT" then return "vfat" end
  if boot:sub(4, 7) == "NTFS" then return "ntfs" end
  local xfs = read_at(path, fmt, offset, 4)
  if xfs == "XFSB" then return "xfs" end
  return nil
end

-- Partitions from the MBR (and a GPT behind a protective MBR).
local function partitions(path, fmt)
  local mbr = read_at(path, fmt, 0, 512)
  if #mbr < 512 or mbr:sub(511, 512) ~= "\x55\xaa" then return {}, "none" end
  local parts = {}
  local gpt = false
  for i = 0, 3 do
    local e = 446 + i * 16 + 1
    local ptype = mbr:byte(e + 4)
    local lba, nsec = string.unpack("<I4I4", mbr, e + 8)
    if ptype == 0xee then gpt = true end
    if ptype ~= 0 and nsec > 0 and ptype ~= 0xee then
      parts[#parts + 1] = { number = i + 1, offset = lba * SECTOR, size = nsec * SECTOR,
                            type = FS_TYPES[ptype] or string.format("0x%02x", ptype) }
    end
  end
  if gpt then
    parts = {}
    local hdr = read_at(path, fmt, SECTOR, 92)
    if hdr:sub(1, 8) ~= "EFI PART" then return {}, "gpt (damaged header)" end
    local entries_lba = string.unpack("<I8", hdr, 72 + 1)
    local n, esize = string.unpack("<I4I4", hdr, 80 + 1)
    n = math.min(n, 128)
    local tab = read_at(path, fmt, entries_lba * SECTOR, n * esize)
    for i = 0, n - 1 do
      local e = i * esize + 1
      local first, last = string.unpack("<I8I8", tab, e + 32)
      if first ~= 0 or last ~= 0 then
        local guid = tab:sub(e, e + 15)
        local kind = "data"
        if guid == string.rep("\0", 16) then kind = nil end
        if kind then
          parts[#parts + 1] = { number = i + 1, offset = first * SECTOR, size = (last - first + 1) * SECTOR,
                                type = "gpt" }
        end
      end
    end
    return parts, "gpt"
  end
  return parts, "mbr"
end

-- ---- check ----

---@api qemu.image.check qemu.image.check(path) -> report
--- What a user-supplied image is, read without changing it, with hints for the known traps.
---
--- It reads the format, the partition table (MBR, or a GPT behind a protective MBR) and the file system at the
--- start of each partition, and gives hints for: a qcow2 v3 image an older QEMU refuses ("QCOW version 3"), a
--- raw image (no internal snapshots), no ext file system (`qemu.image.customize`'s file edits need one), and,
--- without KVM, booting a distribution image under TCG (its own kernel boots slowly there: boot it with
--- `-kernel` and `nokaslr`, and `icount` if its kernel reports RCU stalls). It works while a QEMU holds the image.
---
---     local r = qemu.image.check("debian-12-generic-amd64.qcow2")
---     for _, h in ipairs(r.hints) do print(h) end
---
---@param path string  the image file
---@return table report  `{format=, compat=, virtual_size=, backing=, table=, partitions=, filesystem=, snapshots=, hints=}`:
---   `format`, `compat`, `virtual_size` and `backing` as `qemu.disk.info` gives them; `table` is `"mbr"`, `"gpt"`,
---   `"none"` or `"gpt (damaged header)"`; `partitions` a list of `{number=, offset=, size=, type=, fs=}` (bytes;
---   `type` from the table: `"linux"`, `"swap"`, `"fat32"`, `"efi"`, `"lvm"`, `"ntfs"`, `"gpt"` for a GPT entry, or
---   `"0xNN"`; `fs` `"ext2"`, `"ext3"`, `"ext4"`, `"vfat"`, `"ntfs"`, `"xfs"` or nil); `filesystem` the file system of
---   an unpartitioned image (nil otherwise); `snapshots` the number of internal snapshots; `hints` a list of strings
---@error BadArgument  `path` is not a string, or there is no such file
---@error DiskError  `qemu-img` cannot read the image
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
---@error CommandFailed  reading the image's sectors failed
function M.check(path)
  local fname = "qemu.image.check"
  check.arg(fname, 1, path, "string")
  local info = disk.info(path)
  local fmt = info.format
  local parts, tabletype = partitions(path, fmt)
  for _, p in ipairs(parts) do p.fs = fs_at(path, fmt, p.offset) end
  local report = { format = fmt, compat = info.compat, virtual_size = info.virtual_size,
                   backing = info.backing, table = tabletype, partitions = parts, hints = {},
                   snapshots = #info.snapshots }
  if #parts == 0 then report.filesystem = fs_at(path, fmt, 0) end
  local h = report.hints
  if fmt == "qcow2" and info.compat == "1.1" then
    h[#h + 1] = 'qcow2 v3 (compat 1.1): QEMU older than 1.1 refuses it ("QCOW version 3"); ' ..
                'qemu.disk.amend(path, {compat="0.10"}) makes it v2'
  end
  if fmt == "raw" then
    h[#h + 1] = "a raw image cannot hold internal snapshots (savevm): qemu.disk.convert(path, new, {format=\"qcow2\"})"
  end
  local ext = false
  for _, p in ipairs(parts) do if p.fs and p.fs:match("^ext") then ext = true end end
  if report.filesystem and report.filesystem:match("^ext") then ext = true end
  if not ext then
    h[#h + 1] = "no ext2/3/4 filesystem found: qemu.image.customize's file edits need one (virt-customize handles the rest)"
  end
  if require("qemu.util.host").accel() ~= "kvm" then
    h[#h + 1] = "no usable KVM here: the image boots under TCG, much slower than on KVM; a distribution cloud image " ..
                "with its generic kernel takes minutes to boot. Boot it with -kernel (e.g. the default guest's cloud " ..
                "kernel) and add nokaslr, and icount if its kernel reports RCU stalls"
  end
  return report
end

-- The partitions and their filesystems, for the debugfs backend's choice
-- of the filesystem to edit (qemu.image.customize).
M.partitions = partitions
M.fs_at = fs_at

return M
