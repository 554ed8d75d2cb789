-- qemu.disk: disk images, offline, through qemu-img and e2fsprogs (argv,
-- never a shell).  No root, no mount, no nbd except nbd_attach.
--
-- Nothing here overwrites an existing file unless asked (force=true).

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local sys = require "qshell.os"
local json = require "qshell.json"

local M = {}

local UNITS = { [""] = 1, B = 1, K = 1024, M = 1024 ^ 2, G = 1024 ^ 3, T = 1024 ^ 4, P = 1024 ^ 5 }

-- M.size(v) -> bytes: 1048576, "512M", "1.5G", "64k" (binary units, as qemu-img)
function M.parse_size(v, fname)
  fname = fname or "qemu.disk"
  if math.type(v) == "integer" then
    if v <= 0 then check.bad(fname, "size must be positive, got %d", v) end
    return v
  end
  if type(v) ~= "string" then check.bad(fname, "size must be a string like \"10G\" or a number of bytes") end
  local num, unit = v:match("^%s*(%d+%.?%d*)%s*(%a?)[iI]?[bB]?%s*$")
  if not num or not UNITS[unit:upper()] then
    check.bad(fname, "bad size %q: use a number with an optional unit K, M, G, T (e.g. \"512M\")", v)
  end
  local bytes = math.floor(tonumber(num) * UNITS[unit:upper()])
  if bytes <= 0 then check.bad(fname, "size must be positive, got %q", v) end
  return bytes
end

local exists = files.exists

local function parent_dir(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- The checks every function that writes a new image makes first.
local function check_new(fname, path, force)
  check.arg(fname, 1, path, "string")
  if path == "" then check.bad(fname, "empty path") end
  local dir = parent_dir(path)
  if dir ~= "" then
    local st = sys.stat(dir)
    if not st then
      errors.raise { class = "BadArgument", command = fname,
                     desc = string.format("directory %s does not exist (for %s)", dir, path) }
    elseif st.type ~= "dir" and st.type ~= "link" then
      errors.raise { class = "BadArgument", command = fname, desc = dir .. " is not a directory" }
    end
  end
  if exists(path) and not force then
    errors.raise { class = "FileExists", command = fname,
                   desc = path .. " already exists; nothing was changed",
                   hint = "pass {force=true} to overwrite it" }
  end
end

local function check_image(fname, path)
  check.arg(fname, 1, path, "string")
  local st = sys.stat(path)
  if not st then
    errors.raise { class = "BadArgument", command = fname, desc = "no such image: " .. path }
  end
  return st
end

local function qemu_img(fname, args)
  local argv = { "qemu-img" }
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  return run.check(argv, { command = fname, class = "DiskError",
                           exec_hint = "is qemu-img installed? (make deps installs qemu-utils)" })
end

-- Image formats by their first bytes.
local MAGIC = {
  { "QFI\xfb", "qcow2" }, { "QFI", "qcow" }, { "KDMV", "vmdk" }, { "# Disk DescriptorFile", "vmdk" },
  { "COWD", "vmdk" }, { "conectix", "vpc" }, { "vhdxfile", "vhdx" }, { "QED\0", "qed" },
  { "LUKS\xba\xbe", "luks" }, { "<<< ", "vdi" }, { "\x7f\x10\xda\xbe", "vdi" },
}

-- Detect a file's format from its first bytes, as QEMU's probes do, but
-- without letting a raw image be taken for something else by accident:
-- the format is then given to QEMU explicitly.
function M.detect_format(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local head = f:read(128) or ""
  f:close()
  for _, m in ipairs(MAGIC) do
    if head:sub(1, #m[1]) == m[1] then return m[2] end
  end
  -- VDI keeps its signature at offset 64.
  if head:sub(65, 68) == "\x7f\x10\xda\xbe" then return "vdi" end
  return "raw"
end

local abspath = files.abspath

local create_opts = { format = "string", backing = "string", backing_format = "string",
                      force = "boolean", compat = "string", preallocation = "string",
                      cluster_size = "string|number" }

-- qemu.disk.create(path, size [, {format="qcow2", backing=, force=false, compat=}])
function M.create(path, size, opts)
  local fname = "qemu.disk.create"
  opts = check.options(fname, opts, create_opts, 3)
  check_new(fname, path, opts.force)
  local fmt = opts.format or "qcow2"
  local args = { "create", "-q", "-f", fmt }
  local o = {}
  if opts.compat then o[#o + 1] = "compat=" .. opts.compat end
  if opts.preallocation then o[#o + 1] = "preallocation=" .. opts.preallocation end
  if opts.cluster_size then o[#o + 1] = "cluster_size=" .. opts.cluster_size end
  if #o > 0 then
    args[#args + 1] = "-o"
    args[#args + 1] = table.concat(o, ",")
  end
  if opts.backing then
    check_image(fname, opts.backing)
    args[#args + 1] = "-b"
    args[#args + 1] = abspath(opts.backing)
    args[#args + 1] = "-F"
    args[#args + 1] = opts.backing_format or M.detect_format(opts.backing)
  elseif size == nil then
    check.bad(fname, "a size is needed (or a backing image)")
  end
  args[#args + 1] = path
  if size ~= nil then args[#args + 1] = tostring(M.parse_size(size, fname)) end
  if opts.force and exists(path) then os.remove(path) end
  qemu_img(fname, args)
  -- qemu.image.customize refuses to write into a file overlays depend on
  if opts.backing then require("qemu.image.backing").record(opts.backing, path) end
  return path
end

-- qemu.disk.info(path) -> {format=, virtual_size=, actual_size=, compat=,
--   backing=, backing_format=, snapshots={...}, dirty=, cluster_size=, file=}
-- Works while a QEMU holds the image (qemu-img -U).
function M.info(path)
  local fname = "qemu.disk.info"
  check_image(fname, path)
  local out = qemu_img(fname, { "info", "-U", "--output=json", path })
  local ok, j = pcall(json.decode, out)
  if not ok then
    errors.raise { class = "DiskError", command = fname, desc = "cannot parse qemu-img info: " .. tostring(j) }
  end
  local fs = j["format-specific"]
  local info = {
    file = j.filename,
    format = j.format,
    virtual_size = j["virtual-size"],
    actual_size = j["actual-size"],
    cluster_size = j["cluster-size"],
    dirty = j["dirty-flag"] or false,
    backing = j["backing-filename"] or j["full-backing-filename"],
    backing_format = j["backing-filename-format"],
    compat = fs and fs.data and fs.data.compat or nil,
    snapshots = M._snapshot_list(j.snapshots),
  }
  return info
end

-- QEMU's SnapshotInfo list -> {tag=, id=, vm_size=, date=, vm_clock=, icount=}
function M._snapshot_list(list)
  local out = {}
  for _, s in ipairs(list or {}) do
    out[#out + 1] = {
      tag = s.name,
      id = s.id,
      vm_size = s["vm-state-size"],
      date = s["date-sec"],
      vm_clock = (s["vm-clock-sec"] or 0) + (s["vm-clock-nsec"] or 0) / 1e9,
      icount = s.icount ~= json.null and s.icount or nil,
    }
  end
  table.sort(out, function(a, b) return (tonumber(a.id) or 0) < (tonumber(b.id) or 0) end)
  return out
end

local amend_opts = { compat = function(v)
  if v == "0.10" or v == "1.1" or v == "v2" or v == "v3" then return true end
  return false, 'must be "0.10" or "1.1"'
end, lazy_refcounts = "boolean" }

-- qemu.disk.amend(path, {compat="0.10"|"1.1", lazy_refcounts=})
function M.amend(path, opts)
  local fname = "qemu.disk.amend"
  check_image(fname, path)
  opts = check.options(fname, opts, amend_opts, 2)
  local o = {}
  if opts.compat then o[#o + 1] = "compat=" .. opts.compat end
  if opts.lazy_refcounts ~= nil then o[#o + 1] = "lazy_refcounts=" .. (opts.lazy_refcounts and "on" or "off") end
  if #o == 0 then check.bad(fname, "nothing to change: give compat= or lazy_refcounts=") end
  if M.detect_format(path) ~= "qcow2" then check.bad(fname, "%s is not a qcow2 image", path) end
  qemu_img(fname, { "amend", "-f", "qcow2", "-o", table.concat(o, ","), path })
end

local convert_opts = { format = "string", src_format = "string", force = "boolean",
                       compress = "boolean" }

-- qemu.disk.convert(src, dst [, {format="qcow2", force=false, compress=false}])
function M.convert(src, dst, opts)
  local fname = "qemu.disk.convert"
  check_image(fname, src)
  opts = check.options(fname, opts, convert_opts, 3)
  check_new(fname, dst, opts.force)
  local args = { "convert", "-f", opts.src_format or M.detect_format(src), "-O", opts.format or "qcow2" }
  if opts.compress then args[#args + 1] = "-c" end
  args[#args + 1] = src
  args[#args + 1] = dst
  qemu_img(fname, args)
  return dst
end

local resize_opts = { shrink = "boolean" }

-- qemu.disk.resize(path, size [, {shrink=false}]): growing is always safe;
-- shrinking cuts data off and needs shrink=true.
function M.resize(path, size, opts)
  local fname = "qemu.disk.resize"
  check_image(fname, path)
  opts = check.options(fname, opts, resize_opts, 3)
  local bytes = M.parse_size(size, fname)
  local cur = M.info(path).virtual_size
  local args = { "resize", "-q", "-f", M.detect_format(path) }
  if bytes < cur then
    if not opts.shrink then
      errors.raise { class = "BadArgument", command = fname,
                     desc = string.format("%s is %d bytes; shrinking to %d would cut data off", path, cur, bytes),
                     hint = "pass {shrink=true} if that is what you want" }
    end
    args[#args + 1] = "--shrink"
  end
  args[#args + 1] = path
  args[#args + 1] = tostring(bytes)
  qemu_img(fname, args)
end

local overlay_opts = { force = "boolean" }

-- qemu.disk.overlay(base, path [, {force=false}]) -> path: a qcow2 whose
-- backing file is base (format given, path absolute)
function M.overlay(base, path, opts)
  local fname = "qemu.disk.overlay"
  check.arg(fname, 2, path, "string")
  check_image(fname, base)
  opts = check.options(fname, opts, overlay_opts, 3)
  return M.create(path, nil, { backing = base, force = opts.force })
end

-- qemu.disk.snapshots(path) -> list of internal snapshots
function M.snapshots(path)
  return M.info(path).snapshots
end

-- qemu.disk.delete_snapshot(path, tag)
function M.delete_snapshot(path, tag)
  local fname = "qemu.disk.delete_snapshot"
  check_image(fname, path)
  check.arg(fname, 2, tag, "string")
  local found
  local names = {}
  for _, s in ipairs(M.snapshots(path)) do
    if s.tag == tag then found = s end
    names[#names + 1] = s.tag
  end
  if not found then
    errors.raise { class = "SnapshotNotFound", command = fname,
                   desc = string.format("no snapshot '%s' in %s (it has: %s)", tag, path,
                                        #names > 0 and table.concat(names, ", ") or "none") }
  end
  qemu_img(fname, { "snapshot", "-d", tag, path })
end

local populate_opts = { from = "string", fs = "string", size = "string|number", partition = "boolean",
                        label = "string", format = "string", force = "boolean",
                        fat = function(v)
                          if v == 12 or v == 16 or v == 32 then return true end
                          return false, "must be 12, 16 or 32"
                        end }
-- Filesystem names -> the family that builds them ("fat" is vfat's alias).
local FS = { ext2 = "ext", ext3 = "ext", ext4 = "ext", vfat = "vfat", fat = "vfat" }
local ALIGN = 1048576 -- the partition's start: 1 MiB, as fdisk aligns it

-- A program by name: PATH, then the sbin directories a non-root PATH
-- lacks (mkfs.*, sfdisk).  Raises MissingTool naming the package.
local function tool(fname, name, package, why)
  local p = run.which(name)
  if not p then
    for _, d in ipairs { "/usr/sbin", "/sbin" } do
      if sys.access(d .. "/" .. name, "x") then
        p = d .. "/" .. name
        break
      end
    end
  end
  if not p then
    errors.raise { class = "MissingTool", command = fname,
                   desc = string.format("%s needs %s, which is not installed (package %s)", why, name, package),
                   hint = "apt-get install " .. package .. " (make deps installs it)" }
  end
  return p
end

-- Bytes used by a directory tree (du), for the default filesystem size.
local function tree_bytes(dir)
  local out = run.check({ "du", "-s", "-B1", "--apparent-size", dir }, { command = "qemu.disk.populate" })
  return tonumber(out:match("^(%d+)")) or 0
end

-- The label each filesystem can hold: ext 16 bytes as given; FAT 11
-- characters, stored in upper case (what DOS and Windows write, and what
-- mkfs.fat warns about otherwise), without the characters FAT forbids.
local function check_label(fname, family, label)
  if label == nil then return nil end
  if label == "" then check.bad(fname, "label is empty") end
  if label:find("[%c]") then check.bad(fname, "label %q has a control character", label) end
  if family == "ext" then
    if #label > 16 then check.bad(fname, "label %q is longer than 16 bytes (the most ext2/3/4 keep)", label) end
    return label
  end
  if #label > 11 then check.bad(fname, "label %q is longer than 11 characters (the most FAT keeps)", label) end
  if label:find('[^\32-\126]') or label:find('[%*%?%.,;:/\\|%+=<>%[%]"]') then
    check.bad(fname, "label %q: a FAT label is ASCII without any of *?.,;:/\\|+=<>[]\"", label)
  end
  return label:upper()
end

-- Walk a tree bound for FAT: refuse what FAT cannot hold (names with
-- characters it forbids, two names that differ only in case, special
-- files, links to directories, files of 4 GiB or more) before anything is
-- written, and estimate the space it takes (each file rounded up to an
-- 8 KiB cluster, the largest mkfs.fat picks below 8 GiB).
local FAT_MAX_FILE = 4294967295
local function fat_tree(fname, dir, rel)
  local names, err = sys.listdir(dir)
  if not names then errors.raise { class = "IOError", command = fname, desc = err } end
  local bytes, seen = 8192, {}
  for _, name in ipairs(names) do
    local path, shown = dir .. "/" .. name, (rel and rel .. "/" or "") .. name
    local function refuse(why)
      errors.raise { class = "BadArgument", command = fname,
                     desc = string.format("from: %s %s, which FAT cannot hold", shown, why) }
    end
    if name:find('[%c"%*/:<>%?\\|]') then refuse('has one of the characters "*/:<>?\\| or a control character') end
    if name:find("[%. ]$") then refuse("ends with a dot or a space") end
    local low = name:lower()
    if seen[low] then refuse("differs only in case from " .. seen[low] .. " (FAT names ignore case)") end
    seen[low] = name
    local st = sys.stat(path)
    if not st then refuse("vanished while it was read") end
    if st.type == "link" then
      st = files.stat(path)
      if not st then refuse("is a dangling symbolic link") end
      if st.type == "dir" then refuse("is a symbolic link to a directory (FAT has no links)") end
    end
    if st.type == "dir" then
      bytes = bytes + fat_tree(fname, path, shown)
    elseif st.type == "file" then
      if st.size > FAT_MAX_FILE then refuse("is 4 GiB or larger") end
      bytes = bytes + (st.size + 8191) // 8192 * 8192
    else
      refuse("is a special file (" .. st.type .. ")")
    end
  end
  return bytes, names
end

-- The FAT a boot sector at offset describes: 12, 16 or 32.
local function fat_bits(fname, raw, offset)
  local f = io.open(raw, "rb")
  local head = ""
  if f then
    f:seek("set", offset)
    head = f:read(90) or ""
    f:close()
  end
  if head:sub(83, 87) == "FAT32" then return 32 end
  local t = head:sub(55, 59)
  if t == "FAT16" then return 16 end
  if t == "FAT12" then return 12 end
  errors.raise { class = "DiskError", command = fname, desc = "mkfs.fat wrote no FAT boot sector in " .. raw }
end

-- MBR partition types: Linux, and FAT by its width (FAT32 and FAT16 with
-- LBA addressing, FAT12).
local MBR_TYPE = { ext = "83", [32] = "c", [16] = "e", [12] = "1" }

-- One MBR partition from 1 MiB to the end, of the given type, written
-- after the filesystem (sfdisk wipes nothing: --wipe never).
local function partition_table(fname, sf, raw, ptype)
  local script = raw .. ".sfdisk"
  files.write(script, string.format("label: dos\nstart=%d, type=%s\n", ALIGN // 512, ptype), fname)
  local st = run.run({ sf, "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never",
                       "--wipe-partitions", "never", raw },
                     { command = fname, stdin = script })
  os.remove(script)
  if st.code ~= 0 then
    errors.raise { class = "DiskError", command = fname, desc = "sfdisk failed: " .. st.stderr }
  end
end

local function make_ext(fname, tools, raw, opts, label, offset, fs_bytes)
  local args = { tools.mkfs, "-q", "-F" }
  if label then
    args[#args + 1] = "-L"
    args[#args + 1] = label
  end
  if offset > 0 then
    args[#args + 1] = "-E"
    args[#args + 1] = "offset=" .. offset
  end
  args[#args + 1] = "-d"
  args[#args + 1] = opts.from
  args[#args + 1] = raw
  args[#args + 1] = tostring(fs_bytes // 1024) .. "k"
  run.check(args, { command = fname, class = "DiskError", exec_hint = "is e2fsprogs installed? (make deps)" })
  return "ext"
end

-- mkfs.fat on the region, then mcopy the tree's top entries into its root
-- (mcopy -s recurses; -m keeps mtimes; -Q stops at the first error).
local function make_vfat(fname, tools, raw, opts, label, offset, fs_bytes, top)
  local args = { tools.mkfs }
  if opts.fat then
    args[#args + 1] = "-F"
    args[#args + 1] = tostring(opts.fat)
  end
  if label then
    args[#args + 1] = "-n"
    args[#args + 1] = label
  end
  if offset > 0 then
    -- hidden sectors = the sectors before the partition, as on a real disk
    args[#args + 1] = "--offset=" .. offset // 512
    args[#args + 1] = "-h"
    args[#args + 1] = tostring(offset // 512)
  end
  args[#args + 1] = raw
  args[#args + 1] = tostring(fs_bytes // 1024)
  run.check(args, { command = fname, class = "DiskError" })
  if #top > 0 then
    local cp = { tools.mcopy, "-s", "-Q", "-m", "-i", raw .. "@@" .. offset }
    for _, name in ipairs(top) do cp[#cp + 1] = opts.from .. "/" .. name end
    cp[#cp + 1] = "::/"
    local st = run.run(cp, { command = fname })
    if st.code ~= 0 then
      local err = ((st.stderr ~= "" and st.stderr or st.stdout):gsub("%s+$", ""))
      errors.raise { class = "DiskError", command = fname, desc = "mcopy " .. st.desc .. ": " .. err,
                     hint = err:find("Disk full") and
                       "the filesystem is too small for the files: give a larger size= (or leave size out to size it from the directory)"
                       or nil }
    end
  end
  return fat_bits(fname, raw, offset)
end

-- qemu.disk.populate(path, {from=dir, fs="ext4", size=, partition=false,
--   label=, fat=, format="qcow2", force=false}) -> path
-- A filesystem filled from a host directory: ext2/3/4 with mkfs -d, FAT
-- with mkfs.fat and mcopy; no mount, no nbd, no root.  size is the disk's
-- (rounded up to a whole MiB); with partition=true the disk gets an MBR
-- with one partition from 1 MiB to its end (the guest sees /dev/sdX1).
function M.populate(path, opts)
  local fname = "qemu.disk.populate"
  opts = check.options(fname, opts, populate_opts, 2)
  check_new(fname, path, opts.force)
  if not opts.from then check.bad(fname, "from= (a host directory) is required") end
  local st = files.stat(opts.from)
  if not st or st.type ~= "dir" then
    errors.raise { class = "BadArgument", command = fname, desc = "from: not a directory: " .. opts.from }
  end
  local fs = opts.fs or "ext4"
  local family = FS[fs]
  if not family then check.bad(fname, "fs %q is not supported (ext2, ext3, ext4, vfat)", fs) end
  if opts.fat and family ~= "vfat" then check.bad(fname, "fat= goes with fs=\"vfat\"") end
  local label = check_label(fname, family, opts.label)
  -- Every program first: a missing one is named before anything is written.
  local tools = {}
  if family == "vfat" then
    tools.mkfs = tool(fname, "mkfs.vfat", "dosfstools", "fs=\"vfat\"")
    tools.mcopy = tool(fname, "mcopy", "mtools", "fs=\"vfat\"")
  else
    tools.mkfs = tool(fname, "mkfs." .. fs, "e2fsprogs", "fs=\"" .. fs .. "\"")
  end
  if opts.partition then tools.sfdisk = tool(fname, "sfdisk", "fdisk", "partition=true") end
  local format = opts.format or "qcow2"
  local offset = opts.partition and ALIGN or 0
  -- A tree for FAT is checked whatever the size (what it cannot hold is
  -- refused now); the size it needs is an estimate with room to spare.
  local top, need
  if family == "vfat" then
    need, top = fat_tree(fname, opts.from)
    need = math.floor(need * 1.15) + (8 << 20)
  elseif not opts.size then
    need = math.floor(tree_bytes(opts.from) * 1.3) + (8 << 20)
  end
  local bytes
  if opts.size then
    bytes = (M.parse_size(opts.size, fname) + ALIGN - 1) // ALIGN * ALIGN
    if bytes <= offset then
      check.bad(fname, "size %s leaves no room for a partition after the 1 MiB gap", tostring(opts.size))
    end
  else
    bytes = math.max(16 << 20, (need + ALIGN - 1) // ALIGN * ALIGN) + offset
  end
  local fs_bytes = bytes - offset
  local raw = format == "raw" and path or (files.scratch_file("populate", ".raw"))
  local ok, err = pcall(function()
    if format == "raw" and opts.force then os.remove(path) end
    run.check({ "truncate", "-s", tostring(bytes), raw }, { command = fname })
    local kind
    if family == "vfat" then
      kind = make_vfat(fname, tools, raw, opts, label, offset, fs_bytes, top)
    else
      kind = make_ext(fname, tools, raw, opts, label, offset, fs_bytes)
    end
    if opts.partition then partition_table(fname, tools.sfdisk, raw, MBR_TYPE[kind]) end
    if format ~= "raw" then
      if opts.force then os.remove(path) end
      qemu_img(fname, { "convert", "-f", "raw", "-O", format, raw, path })
    end
  end)
  if format ~= "raw" then os.remove(raw) end
  if not ok then
    if format == "raw" then os.remove(path) end
    error(err, 0)
  end
  return path
end

-- qemu.disk.nbd_attach(path [, {format=, readonly=false}]) -> handle
-- {device="/dev/nbd0", partitions={...}, close=fn}: the root-only path
-- through the kernel's nbd driver.  Always disconnected on error; use
-- `local h <close> = qemu.disk.nbd_attach(p)`.
local nbd_opts = { format = "string", readonly = "boolean" }
function M.nbd_attach(path, opts)
  local fname = "qemu.disk.nbd_attach"
  check_image(fname, path)
  opts = check.options(fname, opts, nbd_opts, 2)
  local function unavailable(why)
    errors.raise { class = "NbdUnavailable", command = fname, desc = why,
                   hint = "the nbd kernel module is missing (modprobe nbd max_part=8; on Debian it is in the " ..
                          "kernel image package); qemu.disk.populate builds filesystems without nbd or root" }
  end
  if not sys.stat("/sys/module/nbd") and not sys.stat("/dev/nbd0") then
    if run.which("modprobe") then
      run.run({ "modprobe", "nbd", "max_part=8" }, { command = fname })
    end
  end
  if not sys.stat("/dev/nbd0") then unavailable("no /dev/nbd0: the nbd module is not loaded") end
  if not sys.access("/dev/nbd0", "rw") then
    errors.raise { class = "PermissionDenied", command = fname, desc = "/dev/nbd0 needs root" }
  end
  if not run.which("qemu-nbd") then unavailable("qemu-nbd is not installed (package qemu-utils)") end
  -- The first free device: /sys/block/nbdN/pid exists while connected.
  local dev
  for i = 0, 15 do
    if sys.stat("/dev/nbd" .. i) and not sys.stat("/sys/block/nbd" .. i .. "/pid") then
      dev = "/dev/nbd" .. i
      break
    end
  end
  if not dev then unavailable("every /dev/nbdN is in use") end
  local argv = { "qemu-nbd", "--connect=" .. dev, "-f", opts.format or M.detect_format(path) }
  if opts.readonly then argv[#argv + 1] = "--read-only" end
  argv[#argv + 1] = path
  local handle = { device = dev, path = path }
  local function disconnect()
    if handle.connected then
      run.run({ "qemu-nbd", "--disconnect", dev }, { command = fname })
      handle.connected = false
    end
  end
  handle.close = disconnect
  setmetatable(handle, { __close = disconnect, __gc = disconnect })
  -- Connected only once qemu-nbd said so: a failed connect (another
  -- process took the device first) must not disconnect someone else's.
  run.check(argv, { command = fname, class = "DiskError" })
  handle.connected = true
  handle.partitions = {}
  for i = 1, 16 do
    if sys.stat(dev .. "p" .. i) then handle.partitions[#handle.partitions + 1] = dev .. "p" .. i end
  end
  return handle
end

return M
