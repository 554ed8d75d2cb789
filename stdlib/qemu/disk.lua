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

---@api qemu.disk.parse_size qemu.disk.parse_size(size) -> bytes
--- A size as qshell's disk functions take it, in bytes.
---
--- `size` is a positive integer (bytes) or a string: a number, possibly with a fraction, and an optional
--- binary unit `K`, `M`, `G`, `T` or `P` (either case, optionally followed by `i` and/or `B`): `"512M"`,
--- `"1.5G"`, `"64k"`, `"2GiB"`. Units are powers of 1024, as `qemu-img` reads them; a fraction of a byte
--- is dropped. A Lua float (`1e9`) is refused: give an integer or a string.
---
---     print(qemu.disk.parse_size("1.5G"))   --> 1610612736
---
---@param size integer|string  bytes, or a string with a binary unit
---@return integer bytes  the size in bytes
---@error BadArgument  not an integer or a string, a unit that is not K/M/G/T/P, a size that is not positive
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

---@api qemu.disk.detect_format qemu.disk.detect_format(path) -> format | nil
--- The image format of a file, read from its first bytes as QEMU's probes do.
---
--- The result is `"qcow2"`, `"qcow"`, `"vmdk"`, `"vpc"`, `"vhdx"`, `"qed"`, `"luks"` or `"vdi"` for a
--- file with that format's signature, `"raw"` for anything else. qshell's disk functions pass the format
--- to `qemu-img` and QEMU explicitly, so that a raw image whose first bytes happen to look like a
--- header is never taken for something else.
---@param path string  the image file
---@return string|nil format  the format name; nil when the file cannot be opened
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

---@api qemu.disk.create qemu.disk.create(path, size [, options]) -> path
--- Create an empty disk image (with `qemu-img create`, offline, no root).
---
--- An existing file is refused (`FileExists`, nothing changed) unless `force=true`; the directory of
--- `path` must exist. With `backing=` the new image is a copy-on-write overlay over that file: its
--- backing path is stored absolute and its backing format recorded (detected from the file's first
--- bytes unless `backing_format=` is given), so QEMU never has to probe it; `size` may then be nil (the
--- overlay is as large as its backing file). qshell remembers the overlay, and `qemu.image.customize`
--- refuses to write into its backing file while the overlay exists.
---
---     qemu.disk.create("sys.qcow2", "10G")
---     qemu.disk.create("old.qcow2", "1G", { compat = "0.10" })   -- readable by QEMU older than 1.1
---
---@param path string  the image to create
---@param size integer|string|nil  its virtual size: bytes or a string like `"10G"` (see `qemu.disk.parse_size`); may
---   be nil with `backing=`
---@param options? table  every key is optional:
---   `format=` string, default `"qcow2"`: the image format (any that `qemu-img create` knows: `"qcow2"`, `"raw"`, ...);
---   `backing=` string: an existing image to overlay;
---   `backing_format=` string, default the format detected from `backing`'s first bytes;
---   `compat=` string: the qcow2 version, `"1.1"` (v3, qemu-img's default) or `"0.10"` (v2, for QEMU older than 1.1);
---   `preallocation=` string: `qemu-img`'s preallocation mode (`"off"`, `"metadata"`, `"falloc"`, `"full"`);
---   `cluster_size=` string|number: the qcow2 cluster size (`"64k"`, 65536);
---   `force=` boolean, default false: replace an existing file.
---@return string path  `path`, as given
---@error BadArgument  an unknown option or a wrong type, an empty path, a directory that does not exist, no size and
---   no backing, a bad size, a backing image that does not exist
---@error FileExists  `path` exists and `force` is not true
---@error DiskError  `qemu-img create` failed (its message is in the error)
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
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

---@api qemu.disk.info qemu.disk.info(path) -> info
--- What `qemu-img info` says about an image, as a table.
---
--- It works while a running QEMU holds the image (the image is opened without taking QEMU's lock).
---
---     print(qemu.disk.info("run1.qcow2").backing)
---
---@param path string  an existing image
---@return table info  `{format=, virtual_size=, actual_size=, compat=, backing=, backing_format=, snapshots=, dirty=, cluster_size=, file=}`:
---   `format` the format name; `virtual_size` the size the guest sees and `actual_size` the bytes it takes on the host;
---   `compat` the qcow2 version (`"0.10"` or `"1.1"`, nil for other formats); `backing` and `backing_format` the backing
---   file as recorded in the image (nil without one); `snapshots` the internal snapshots, a list as `qemu.disk.snapshots`
---   returns; `dirty` true when the image was not closed cleanly; `cluster_size` in bytes (nil for raw); `file` the
---   file name.
---@error BadArgument  `path` is not a string or there is no such file
---@error DiskError  `qemu-img info` failed, or its answer could not be read
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
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

---@api qemu.disk.amend qemu.disk.amend(path, options)
--- Change a qcow2 image's format options in place (`qemu-img amend`).
---
--- `compat="0.10"` makes a qcow2 v3 image readable by QEMU older than 1.1, the fix for its "QCOW version 3"
--- error; `compat="1.1"` makes a v2 image v3. The image must not be open in a running QEMU.
---
---     qemu.disk.amend("sys.qcow2", { compat = "0.10" })
---
---@param path string  an existing qcow2 image
---@param options table  at least one of:
---   `compat=` `"0.10"` (or `"v2"`) or `"1.1"` (or `"v3"`): the qcow2 version;
---   `lazy_refcounts=` boolean: qcow2's lazy refcounts on or off (needs compat 1.1).
---@error BadArgument  an unknown option or a wrong value, no option at all, no such file, an image that is not qcow2
---@error DiskError  `qemu-img amend` failed (an image in use by QEMU, lazy refcounts on a v2 image, ...)
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
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

---@api qemu.disk.convert qemu.disk.convert(src, dst [, options]) -> dst
--- Copy an image into a new one of another format (`qemu-img convert`).
---
--- The source's format is detected from its first bytes (never probed by QEMU) unless `src_format=` says
--- it. The copy is a whole image: it has no backing file even when `src` has one. `dst` is refused when it
--- exists, unless `force=true`. Convert a raw disk to qcow2 when QEMU says it is "writable but does not
--- support snapshots".
---
---     qemu.disk.convert("disk.raw", "disk.qcow2")
---
---@param src string  an existing image
---@param dst string  the image to write
---@param options? table  every key is optional:
---   `format=` string, default `"qcow2"`: the format of `dst`;
---   `src_format=` string, default the format detected from `src`'s first bytes;
---   `compress=` boolean, default false: compress the data (qcow2 only);
---   `force=` boolean, default false: replace an existing `dst`.
---@return string dst  `dst`, as given
---@error BadArgument  an unknown option or a wrong type, no such `src`, `dst`'s directory does not exist
---@error FileExists  `dst` exists and `force` is not true
---@error DiskError  `qemu-img convert` failed (its message is in the error)
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
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

---@api qemu.disk.resize qemu.disk.resize(path, size [, options])
--- Change an image's virtual size (`qemu-img resize`).
---
--- Growing is always allowed; shrinking cuts the data past the new end off, and is refused unless
--- `shrink=true`. The file system inside is not resized: grow it in the guest afterwards.
---
---     qemu.disk.resize("data.qcow2", "20G")
---
---@param path string  an existing image
---@param size integer|string  the new virtual size: bytes or a string like `"20G"` (see `qemu.disk.parse_size`)
---@param options? table  `shrink=` boolean, default false: allow a size below the current one
---@error BadArgument  an unknown option or a wrong type, no such file, a bad size, a smaller size without `shrink=true`
---@error DiskError  `qemu-img resize` failed (an image in use by QEMU, ...)
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
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

---@api qemu.disk.overlay qemu.disk.overlay(base, path [, options]) -> path
--- Create a qcow2 copy-on-write overlay over an image: the guest writes into the overlay, `base` stays as it is.
---
--- The overlay records `base`'s absolute path and its format (detected from its first bytes), and is as
--- large as `base`. Several VMs can run at once on overlays of one base, which QEMU's lock would refuse
--- for the base itself. qshell remembers the overlay: `qemu.image.customize` and `qemu.image.build`
--- refuse to change `base` while the overlay exists, since that would corrupt it.
---
---     qemu.disk.overlay("sys.qcow2", "run1.qcow2")
---
---@param base string  an existing image (any format)
---@param path string  the overlay to create
---@param options? table  `force=` boolean, default false: replace an existing file at `path`
---@return string path  `path`, as given
---@error BadArgument  an unknown option or a wrong type, no such `base`, `path`'s directory does not exist
---@error FileExists  `path` exists and `force` is not true
---@error DiskError  `qemu-img create` failed
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
function M.overlay(base, path, opts)
  local fname = "qemu.disk.overlay"
  check.arg(fname, 2, path, "string")
  check_image(fname, base)
  opts = check.options(fname, opts, overlay_opts, 3)
  return M.create(path, nil, { backing = base, force = opts.force })
end

---@api qemu.disk.snapshots qemu.disk.snapshots(path) -> list
--- The internal snapshots stored in an image (as `vm:savevm` makes them), read offline.
---
--- It works while a running QEMU holds the image.
---
---     for _, s in ipairs(qemu.disk.snapshots("kept.qcow2")) do print(s.tag, s.vm_size) end
---
---@param path string  an existing image
---@return table[] list  `{tag=, id=, vm_size=, date=, vm_clock=, icount=}` per snapshot, in the order of their ids:
---   `vm_size` the bytes of VM state (0 for a disk-only snapshot), `date` seconds since the epoch, `vm_clock` the
---   guest's clock in seconds, `icount` the instruction counter (nil when QEMU recorded none); empty when there is none
---@error BadArgument  `path` is not a string or there is no such file
---@error DiskError  `qemu-img info` failed
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
function M.snapshots(path)
  return M.info(path).snapshots
end

---@api qemu.disk.delete_snapshot qemu.disk.delete_snapshot(path, tag)
--- Delete an internal snapshot from an image, offline (`qemu-img snapshot -d`).
---
--- The image must not be open in a running QEMU (`vm:delvm` deletes one from a running VM).
---@param path string  an existing image
---@param tag string  the snapshot's tag
---@error BadArgument  an argument is not a string, no such file
---@error SnapshotNotFound  the image has no snapshot `tag` (the message lists the tags it has)
---@error DiskError  `qemu-img snapshot` failed (an image in use by QEMU, ...)
---@error MissingTool  `qemu-img` is not installed (package qemu-utils)
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
  local names, err, err_code = sys.listdir(dir)
  if not names then errors.from_code(fname, err, err_code) end
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

---@api qemu.disk.populate qemu.disk.populate(path, options) -> path
--- Make a disk holding a file system filled from a host directory: no mount, no nbd, no root.
---
--- ext2/3/4 are made by e2fsprogs' `mkfs -d`; vfat by dosfstools' `mkfs.fat`, then mtools' `mcopy`. Every
--- program is looked for first: a missing one is a `MissingTool` error naming its package, before anything
--- is written. A filesystem label finds the disk in the guest whatever the kernel calls it
--- (`mount $(findfs LABEL=data) /mnt`): IDE disks are named in the order their probes finish.
---
--- FAT holds no links, owners or modes: a symbolic link is copied as the file it points to, modification
--- times are kept, and a tree FAT cannot hold is refused, naming the path, before anything is written: a
--- name with one of `"*/:<>?\|` or a control character, or ending in a dot or a space; two names in one
--- directory that differ only in case; a link to a directory or a dangling one; a FIFO, socket or device;
--- a file of 4 GiB or more. A label that does not fit its file system is an error, never cut short.
---
---     local data = qemu.disk.populate("data.qcow2", { from = "inputs/", size = "3G", partition = true, label = "data" })
---     qemu.disk.populate("esp.raw", { from = "efi/", fs = "vfat", fat = 32, size = "100M", partition = true,
---                                     label = "ESP", format = "raw" })
---
---@param path string  the disk image to create
---@param options table  `from=` is required, the other keys are optional:
---   `from=` string: the host directory whose contents become the file system's root;
---   `fs=` string, default `"ext4"`: `"ext2"`, `"ext3"`, `"ext4"` or `"vfat"` (alias `"fat"`);
---   `size=` integer|string: the disk's size (rounded up to a whole MiB), partition included: `size="3G"` makes a 3 GiB
---   disk either way; default the tree's size plus room, at least 16 MiB;
---   `partition=` boolean, default false: an MBR with one partition from 1 MiB to the end of the disk (the guest's
---   `/dev/sdb1`), of type 0x83 for ext and the FAT's own type for vfat (0x0c FAT32, 0x0e FAT16, 0x01 FAT12);
---   `label=` string: the file system's label; ext takes up to 16 bytes (`mkfs -L`); FAT (`mkfs.fat -n`) up to 11 ASCII
---   characters without any of `*?.,;:/\|+=<>[]"`, stored in upper case (`label="cidata"` reads back as `CIDATA`);
---   `fat=` 12, 16 or 32 (vfat only): the FAT width; default mkfs.fat's choice by size (FAT32 from 512 MiB up); a UEFI
---   system partition wants 32;
---   `format=` string, default `"qcow2"`: the image format (`"raw"` writes the file system straight into `path`);
---   `force=` boolean, default false: replace an existing file at `path`.
---@return string path  `path`, as given
---@error BadArgument  an unknown option or a wrong type, no `from=` or not a directory, an unknown `fs`, `fat=`
---   without vfat, a label that does not fit, a size too small for the partition, a tree FAT cannot hold
---@error FileExists  `path` exists and `force` is not true
---@error MissingTool  mkfs.ext2/3/4 (e2fsprogs), mkfs.vfat (dosfstools), mcopy (mtools) or sfdisk (fdisk) is not installed
---@error DiskError  mkfs, mcopy, sfdisk or `qemu-img` failed; a file system too small for the files says so in its hint
---@error IOError  a directory of the tree cannot be read
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

local nbd_opts = { format = "string", readonly = "boolean" }

---@api qemu.disk.nbd_attach qemu.disk.nbd_attach(path [, options]) -> handle
--- Attach an image to the host as a block device through the kernel's nbd driver (`qemu-nbd`); root only.
---
--- The first free `/dev/nbdN` (of nbd0 to nbd15) is used; the nbd module is loaded (`modprobe nbd
--- max_part=8`) when it is not. The device is disconnected by `handle.close()`, when the handle goes
--- out of scope as a `<close>` variable, or when it is collected. `qemu.disk.populate` makes file systems
--- without nbd or root.
---
---     local h <close> = qemu.disk.nbd_attach("sys.qcow2", { readonly = true })
---     print(h.device, h.partitions[1])   --> /dev/nbd0  /dev/nbd0p1
---
---@param path string  an existing image
---@param options? table  every key is optional:
---   `format=` string, default the format detected from the file's first bytes;
---   `readonly=` boolean, default false: attach it read-only.
---@return table handle  `{device=, partitions=, path=, close=}`: `device` the `/dev/nbdN` path, `partitions` the
---   list of its partition devices (`/dev/nbdNp1`, ...), `path` the image, `close` the function that disconnects it
---@error BadArgument  an unknown option or a wrong type, no such file
---@error NbdUnavailable  no nbd module (the hint says how to load it), `qemu-nbd` is not installed, or every
---   `/dev/nbdN` is in use
---@error PermissionDenied  `/dev/nbd0` is not writable: not root
---@error DiskError  `qemu-nbd --connect` failed
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
