-- qemu.image: system images before first boot.
--
--   qemu.image.customize(path, {root_password=, write={["/etc/motd"]="hi\n"}, symlinks=, delete=,
--                               hostname=, users=, enable=, disable=, mask=,
--                               disable_auto_upgrades=true, install={...}, uninstall={...}, run={...}})
--   qemu.image.check(path) -> {format=, compat=, partitions=, hints=, ...}
--
-- The file edits (passwords, users, written files and links, the host
-- name, systemd units, apt settings) on an ext2/3/4 root need neither root
-- nor libguestfs: e2fsprogs' debugfs writes into the filesystem, at the
-- partition's offset.  A raw image is edited in place; a qcow2 in a raw
-- copy, and only the blocks that changed go back into it (qemu-io), so an
-- overlay stays a small overlay.  Every step is planned (and refused) before
-- the first change; an image a QEMU holds, and one that overlays depend on
-- (qemu.backing), are refused.  Installing or removing packages and running
-- commands need the guest's own tools: they go through virt-customize
-- (libguestfs), whose appliance needs a kernel: the host's /boot/vmlinuz-*,
-- or appliance={kernel=, modules=}.
-- Images cannot be downloaded here: see qemu.image.check for what a
-- user-supplied image should look like.

local errors = require "qemu.errors"
local files = require "qemu.fs"
local check = require "qemu.check"
local run = require "qemu.run"
local disk = require "qemu.disk"
local sys = require "qshell.os"

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

-- qemu.image.check(path) -> {format=, compat=, virtual_size=, backing=,
--   table="mbr"|"gpt"|"none", partitions={{number=, offset=, size=, type=, fs=}},
--   filesystem= (for an unpartitioned image), hints={...}}
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
  if require("qemu.host").accel() ~= "kvm" then
    h[#h + 1] = "no usable KVM here: the image boots under TCG, much slower than on KVM; a distribution cloud image " ..
                "with its generic kernel takes minutes to boot. Boot it with -kernel (e.g. the default guest's cloud " ..
                "kernel) and add nokaslr, and icount if its kernel reports RCU stalls"
  end
  return report
end

-- ---- customize: the options ----

-- An absolute path with no "..", no control character, not "/" itself.
local function plain_path(v)
  return type(v) == "string" and v:sub(1, 1) == "/" and v ~= "/" and not v:find("%c") and
         not v:find("/%.%./") and not v:find("/%.%.$")
end

-- A list (keys 1..n) whose items all pass item(v) -> ok, why.
local function list_of(item, what_each)
  return function(v)
    if type(v) ~= "table" then return false, "must be a list of " .. what_each end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n ~= #v then return false, "must be a list of " .. what_each .. " (not a map)" end
    for i, x in ipairs(v) do
      local ok, why = item(x)
      if not ok then return false, string.format("item %d: %s", i, why or ("must be " .. what_each)) end
    end
    return true
  end
end

-- RFC 1123 host names: labels of 1 to 63 letters, digits and hyphens (not
-- first or last), joined by dots, 253 characters at most.
local function valid_hostname(v)
  if type(v) ~= "string" then return false, "must be a string" end
  local bad = #v == 0 or #v > 253
  for label in (v .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 or label:find("[^%w%-]") or label:find("^%-") or label:find("%-$") then
      bad = true
    end
  end
  if bad then
    return false, string.format("%q is not a host name (RFC 1123: labels of 1 to 63 letters, digits and " ..
                                "hyphens, not starting or ending with a hyphen, joined by dots)", v)
  end
  return true
end

-- systemd unit names: "name.type", the name of letters, digits and :_.@-
-- (an instance after "@").
local UNIT_TYPES = { service = true, socket = true, timer = true, target = true, path = true, mount = true,
                     automount = true, swap = true, slice = true, device = true, scope = true }
local function valid_unit(v)
  if type(v) ~= "string" then return false, "must be a unit name" end
  local name, kind = v:match("^([%w:_.@\\%-]+)%.(%a+)$")
  if not name or not UNIT_TYPES[kind] or #v > 255 then
    return false, string.format("%q is not a systemd unit name (like \"ssh.service\")", v)
  end
  return true
end

-- User and group names as Debian's adduser takes them.
local function valid_name(v)
  return type(v) == "string" and #v <= 32 and v:match("^[a-z_][a-z0-9_%-]*$") ~= nil
end

local user_spec = { name = "string", password = "string", groups = "table", shell = "string",
                    uid = "number", home = "string" }

local function valid_users(v)
  local what = "qemu.image.customize: users"
  if type(v) ~= "table" or #v == 0 then
    return false, "must be a list of users: {{name=, password=, groups={...}, shell=, uid=, home=}, ...}"
  end
  local names = {}
  for i, u in ipairs(v) do
    if type(u) ~= "table" then return false, string.format("item %d must be a table {name=, ...}", i) end
    check.options(string.format("%s[%d]", what, i), u, user_spec)
    local function bad(fmt, ...) return false, string.format("item %d: " .. fmt, i, ...) end
    if not valid_name(u.name) then
      return bad("name=%s is not a user name (lower-case letters, digits, _ and -, starting with a letter or _, " ..
                 "32 at most)", u.name == nil and "(missing)" or string.format("%q", u.name))
    end
    if names[u.name] then return bad("user %s is listed twice", u.name) end
    names[u.name] = true
    if u.password and (u.password == "" or u.password:find("[\r\n]")) then
      return bad("the password of %s must be non-empty, without a newline", u.name)
    end
    if u.groups then
      local ok, why = list_of(function(g) return valid_name(g), "not a group name" end, "group names")(u.groups)
      if not ok then return bad("groups: %s", why) end
    end
    for _, k in ipairs { "shell", "home" } do
      if u[k] and (not plain_path(u[k]) or u[k]:find(":")) then
        return bad("%s=%q must be an absolute path without a colon", k, u[k])
      end
    end
    if u.uid and (math.type(u.uid) ~= "integer" or u.uid < 1 or u.uid > 2147483646) then
      return bad("uid=%s must be a whole number from 1", tostring(u.uid))
    end
  end
  return true
end

-- A map of guest paths to values that pass value(x) -> ok, why.
local function path_map(example, value)
  return function(v)
    if type(v) ~= "table" then return false, "must map guest paths to " .. example end
    for p, x in pairs(v) do
      if not plain_path(p) then return false, string.format("%s: guest paths must be absolute and plain", tostring(p)) end
      local ok, why = value(x)
      if not ok then return false, string.format("%s: %s", p, why) end
    end
    return true
  end
end

local valid_write = path_map('text: {["/etc/motd"] = "hello\\n"}', function(x)
  return type(x) == "string", "the text must be a string"
end)

local valid_symlinks = path_map('link targets: {["/path/link"] = "target"}', function(x)
  return type(x) == "string" and x ~= "" and not x:find("%c") and #x <= 4095,
         "the target must be a non-empty string without control characters"
end)

local units = list_of(valid_unit, "unit names")

local customize_opts = {
  root_password = "string", write = valid_write, disable_auto_upgrades = "boolean",
  install = "table", uninstall = "table", run = "table", partition = check.positive,
  hostname = valid_hostname, users = valid_users, enable = units, disable = units, mask = units,
  symlinks = valid_symlinks,
  delete = list_of(function(p) return plain_path(p), "not an absolute, plain path" end, "guest paths"),
  force = "boolean",
  backend = function(v)
    if v == "debugfs" or v == "virt-customize" or v == "auto" then return true end
    return false, 'must be "auto", "debugfs" or "virt-customize"'
  end,
  -- the kernel for libguestfs' appliance (virt-customize only)
  appliance = function(v)
    if type(v) ~= "table" then return false, "must be a table {kernel=, modules=}" end
    check.options("qemu.image.customize: appliance", v, { kernel = "string", modules = "string" })
    if not v.kernel then return false, "needs kernel= (a vmlinuz; modules= its /lib/modules/VERSION)" end
    return true
  end,
}

-- The options only the debugfs backend does.
local DEBUGFS_ONLY = { "hostname", "users", "enable", "disable", "mask", "symlinks", "delete" }

local APT_NO_UPGRADES = [[
// written by qshell: no automatic package list updates or upgrades
APT::Periodic::Enable "0";
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Download-Upgradeable-Packages "0";
APT::Periodic::Unattended-Upgrade "0";
]]
local APT_TIMERS = { "apt-daily.timer", "apt-daily-upgrade.timer" }

local function random_salt()
  local f, err = io.open("/dev/urandom", "rb")
  if not f then errors.raise { class = "IOError", command = "qemu.image", desc = "cannot read " .. err } end
  local bytes = f:read(16)
  f:close()
  local alphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
  local out = {}
  for i = 1, 16 do
    local b = bytes:byte(i) % 64 + 1
    out[i] = alphabet:sub(b, b)
  end
  return table.concat(out)
end

-- A SHA-512 crypt(3) hash, the password passed on stdin (not in argv).
function M.hash_password(pw)
  local fname = "qemu.image"
  if pw:find("[\r\n]") then
    check.bad(fname, "the root password contains a newline: it could never be typed at a login prompt")
  end
  if pw == "" then check.bad(fname, "the root password is empty (use a real one)") end
  local pwfile = files.scratch_file("pw")
  files.write(pwfile, pw .. "\n", fname)
  local ok, out = pcall(run.check, { "busybox", "mkpasswd", "-m", "sha512", "-S", random_salt() },
                        { command = fname, stdin = pwfile })
  if not ok and run.which("openssl") then
    ok, out = pcall(run.check, { "openssl", "passwd", "-6", "-salt", random_salt(), "-stdin" },
                    { command = fname, stdin = pwfile })
  end
  os.remove(pwfile)
  if not ok then error(out, 0) end
  local hash = out:match("^(%$6%$[^%s]+)")
  if not hash then errors.raise { class = "CommandFailed", command = fname, desc = "cannot hash the password" } end
  return hash
end

-- ---- customize: the ext filesystem through debugfs ----
--
-- fs is a raw file with "?offset=N" (the partition's start).  Paths given
-- to debugfs resolve links in their directories (/lib -> usr/lib) but not
-- in their last component, as lstat(2) does.

-- Run debugfs commands (-w) on fs; raise on the errors debugfs reports on
-- stderr while exiting 0.
local function debugfs(fs, cmds, what)
  local cmdfile = files.scratch_file("debugfs", ".cmds")
  files.write(cmdfile, table.concat(cmds, "\n") .. "\n", what)
  local st = run.run({ "debugfs", "-w", "-f", cmdfile, fs }, { command = what })
  os.remove(cmdfile)
  local errs = {}
  for line in st.stderr:gmatch("[^\n]+") do
    if line:find(": ") and
       (line:find("[Nn]ot found") or line:find("[Ee]rror") or line:find("[Cc]ould not") or line:find("[Ii]nvalid") or
        line:find("already exists")) and not line:find("^debugfs %d") then
      errs[#errs + 1] = line
    end
  end
  if st.code ~= 0 or #errs > 0 then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = "debugfs: " .. (#errs > 0 and table.concat(errs, "; ") or st.stderr) }
  end
  return st.stdout
end

-- One read-only debugfs request (-R): its stdout exactly, with no echo of
-- the command (-f echoes every command line).
local function debugfs_read(fs, cmd, what)
  local st = run.run({ "debugfs", "-R", cmd, fs }, { command = what })
  if st.code ~= 0 then
    errors.raise { class = "CustomizeFailed", command = what, desc = "debugfs: " .. st.stderr }
  end
  return st.stdout, st.stderr
end

local function debugfs_quote(p)
  if p:find('[%s"]') then return '"' .. p:gsub('"', '\\"') .. '"' end
  return p
end

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  return (d == nil or d == "") and "/" or d
end

local INODE_TYPES = { regular = "file", directory = "dir", symlink = "link" }

-- What is at path: {type="file"|"dir"|"link"|..., mode=, uid=, gid=,
-- size=, link= (a fast link's target)}, or nil when nothing is.
local function lstat(fs, path, what)
  local out = debugfs_read(fs, "stat " .. debugfs_quote(path), what)
  local t = out:match("Type:%s+(%a+)")
  if not t then return nil end
  return { type = INODE_TYPES[t] or t, mode = tonumber(out:match("Mode:%s+0?(%d+)"), 8),
           uid = tonumber(out:match("User:%s+(%d+)")), gid = tonumber(out:match("Group:%s+(%d+)")),
           size = tonumber(out:match("Size:%s+(%d+)")), link = out:match('Fast link dest: "([^\n]*)"\n') }
end

-- The contents of a regular file.
local function cat(fs, path, what)
  return (debugfs_read(fs, "cat " .. debugfs_quote(path), what))
end

-- A symbolic link's target (st: its lstat).
local function readlink(fs, path, st, what)
  if st.link then return st.link end
  return cat(fs, path, what):sub(1, st.size)
end

-- A directory's entries: {{name=, type=, mode=, uid=, gid=}, ...}
-- without . and .. ("ls -p" lines are /inode/mode/uid/gid/name/size/).
local function list_dir(fs, dir, what)
  local out = debugfs_read(fs, "ls -p " .. debugfs_quote(dir), what)
  if not out:find("\n$") then out = out .. "\n" end
  local list = {}
  for ino, mode, uid, gid, name in out:gmatch("/(%d+)/(%d+)/(%d+)/(%d+)/([^\n]*)/%d*/\n") do
    if name ~= "." and name ~= ".." and ino ~= "0" then
      local m = tonumber(mode, 8)
      local kind = ({ [0x4000] = "dir", [0x8000] = "file", [0xa000] = "link" })[m & 0xf000] or "other"
      list[#list + 1] = { name = name, type = kind, mode = m & 0xfff, uid = tonumber(uid), gid = tonumber(gid) }
    end
  end
  return list
end

-- mkdir -p: the missing directories of dir, root's, mode 0755.  Only the
-- missing ones: debugfs 1.47.0's mkdir of an existing directory corrupts
-- the filesystem (it allocates an inode and a block and counts a link in
-- the parent before it finds the name taken; e2fsck then finds them).
-- Links on the way are followed (/lib -> usr/lib).
local function make_dirs(fs, dir, what)
  local st = lstat(fs, dir, what)
  if st and st.type == "dir" then return end
  local cmds, real = {}, ""
  for part in dir:gmatch("[^/]+") do
    local p = real .. "/" .. part
    local hops = 0
    st = #cmds == 0 and lstat(fs, p, what) or nil
    while st and st.type == "link" and hops < 16 do
      local target = readlink(fs, p, st, what)
      p = target:sub(1, 1) == "/" and target or (dirname(p):gsub("/$", "") .. "/" .. target)
      st, hops = lstat(fs, p, what), hops + 1
    end
    if not st then
      cmds[#cmds + 1] = "mkdir " .. debugfs_quote(p)
    elseif st.type ~= "dir" then
      errors.raise { class = "CustomizeFailed", command = what,
                     desc = string.format("%s is not a directory in the image (needed for %s)", p, dir) }
    end
    real = p
  end
  if #cmds > 0 then debugfs(fs, cmds, what) end
end

-- Set an inode's mode (type bits included), owner and group.
local function set_inode(q, mode, uid, gid)
  return string.format("sif %s mode 0%o", q, mode), string.format("sif %s uid %d", q, uid),
         string.format("sif %s gid %d", q, gid)
end

-- Write text to guest_path, creating parent dirs; keep an existing file's
-- mode and owner (else default_mode, default 0644, root's); read it back.
local function put_file(fs, guest_path, text, what, default_mode, owner)
  if not plain_path(guest_path) then check.bad(what, "guest paths must be absolute and plain: %q", guest_path) end
  local old = lstat(fs, guest_path, what)
  if old and old.type == "dir" then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = guest_path .. " is a directory in the image; it cannot be written as a file" }
  end
  local replace = old ~= nil
  if old and old.type ~= "file" then old = nil end -- a link (or a special file) becomes a new file
  local host = files.scratch_file("put")
  files.write(host, text, what)
  make_dirs(fs, dirname(guest_path), what)
  local q = debugfs_quote(guest_path)
  -- debugfs's stat shows only the permission bits: add "regular file".
  local mode = old and (0x8000 | (old.mode & 0xfff)) or (default_mode or (0x8000 | 0x1a4)) -- 0100644
  local uid = old and old.uid or (owner and owner[1]) or 0
  local gid = old and old.gid or (owner and owner[2]) or 0
  local cmds = { "write " .. debugfs_quote(host) .. " " .. q, set_inode(q, mode, uid, gid) }
  if replace then table.insert(cmds, 1, "rm " .. q) end
  debugfs(fs, cmds, what)
  os.remove(host)
  if cat(fs, guest_path, what) ~= text then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = string.format("%s reads back differently after writing it", guest_path) }
  end
end

-- A symbolic link at path (an existing link there is replaced).
local function put_link(fs, path, target, what)
  make_dirs(fs, dirname(path), what)
  local cmds = {}
  if lstat(fs, path, what) then cmds[1] = "rm " .. debugfs_quote(path) end
  cmds[#cmds + 1] = "symlink " .. debugfs_quote(path) .. " " .. debugfs_quote(target)
  debugfs(fs, cmds, what)
end

-- What the image will hold once the earlier steps ran: the planning of
-- each step sees the files write= adds and the paths delete= removes, so
-- that every refusal comes before the first change.
local function new_view(fs, opts, what)
  local view = { pending = opts.write or {}, gone = {} }
  for _, p in ipairs(opts.delete or {}) do view.gone[p] = true end
  function view.lstat(p)
    if view.pending[p] then return { type = "file", pending = true } end
    if view.gone[p] then return nil end
    return lstat(fs, p, what)
  end
  -- The contents of the file at p (links followed) and its real path; nil
  -- when there is none.
  function view.read(p)
    for _ = 1, 16 do
      if view.pending[p] then return view.pending[p], p end
      local st = view.lstat(p)
      if not st then return nil end
      if st.type == "file" then return cat(fs, p, what), p end
      if st.type ~= "link" then return nil end
      local target = readlink(fs, p, st, what)
      p = target:sub(1, 1) == "/" and target or (dirname(p):gsub("/$", "") .. "/" .. target)
    end
    return nil
  end
  return view
end

local function refuse(what, fmt, ...)
  errors.raise { class = "CustomizeFailed", command = what, desc = string.format(fmt, ...) .. "; nothing was changed" }
end

-- ---- customize: the steps ----
-- Each plan_* function reads the image (through the view), raises when the
-- step cannot be done, and returns the functions that make its changes.

local function plan_delete(fs, view, paths, what)
  local set, steps = {}, {}
  for _, p in ipairs(paths) do set[p] = true end
  -- the deepest first, so that a directory can go with what it holds
  local order = { table.unpack(paths) }
  table.sort(order, function(a, b)
    local da, db = select(2, a:gsub("/", "")), select(2, b:gsub("/", ""))
    if da ~= db then return da > db end
    return a < b
  end)
  for _, p in ipairs(order) do
    local st = lstat(fs, p, what)
    if not st then refuse(what, "delete: %s does not exist in the image", p) end
    local cmd = "rm "
    if st.type == "dir" then
      for _, e in ipairs(list_dir(fs, p, what)) do
        if not set[p .. "/" .. e.name] then
          refuse(what, "delete: the directory %s is not empty (it holds %s); only empty directories are deleted",
                 p, e.name)
        end
      end
      cmd = "rmdir "
    end
    steps[#steps + 1] = function() debugfs(fs, { cmd .. debugfs_quote(p) }, what) end
  end
  return steps
end

local function plan_symlinks(fs, view, links, what)
  local steps, paths = {}, {}
  for p in pairs(links) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    local st = view.lstat(p)
    if st and st.type ~= "link" then
      refuse(what, "symlinks: %s is a %s in the image%s; a link replaces only a link (delete={%q} removes it first)",
             p, st.type == "dir" and "directory" or st.type == "file" and "regular file" or st.type,
             st.pending and " (written by write=)" or "", p)
    end
    steps[#steps + 1] = function() put_link(fs, p, links[p], what) end
  end
  return steps
end

-- /etc/hosts with the 127.0.1.1 line naming host (the first such line
-- replaced, later ones dropped; one added after 127.0.0.1 when none).
local function hosts_with(text, host)
  local entry = "127.0.1.1\t" .. host .. (host:find("%.") and ("\t" .. host:match("^[^.]+")) or "") .. "\n"
  if not text then return "127.0.0.1\tlocalhost\n" .. entry end
  local out, done, localhost = {}, false, nil
  for line in text:gmatch("[^\n]*\n?") do
    if line ~= "" then
      if line:match("^%s*127%.0%.1%.1%f[%s]") then
        if not done then out[#out + 1] = entry end
        done = true
      else
        if not line:find("\n$") then line = line .. "\n" end
        out[#out + 1] = line
        if not localhost and line:match("^%s*127%.0%.0%.1%f[%s]") then localhost = #out end
      end
    end
  end
  if not done then table.insert(out, (localhost or 0) + 1, entry) end
  return table.concat(out)
end

local function plan_hostname(fs, view, host, what)
  return { function()
    put_file(fs, "/etc/hostname", host .. "\n", what)
    put_file(fs, "/etc/hosts", hosts_with(view.read("/etc/hosts"), host), what)
  end }
end

local function set_root_password(fs, pw, what)
  local hash = M.hash_password(pw)
  local shadow = cat(fs, "/etc/shadow", what)
  if shadow == "" then
    errors.raise { class = "CustomizeFailed", command = what, desc = "the image has no /etc/shadow (is this a Linux root filesystem?)" }
  end
  local lines, found = {}, false
  for line in shadow:gmatch("[^\n]*\n?") do
    if line ~= "" then
      local user, rest = line:match("^([^:]*):[^:]*(.*)$")
      if user == "root" then
        line = "root:" .. hash .. rest:gsub("\n$", "") .. "\n"
        found = true
      end
      lines[#lines + 1] = line
    end
  end
  if not found then
    errors.raise { class = "CustomizeFailed", command = what, desc = "/etc/shadow has no root entry" }
  end
  put_file(fs, "/etc/shadow", table.concat(lines), what, 0x8000 | 0x1a0) -- 0100640
end

-- The fields of a passwd/group-style file: {{name, f2, f3, ...}, ...}
local function colon_rows(text)
  local rows = {}
  for line in (text or ""):gmatch("[^\n]+") do
    local row = {}
    for field in (line .. ":"):gmatch("([^:]*):") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  return rows
end

-- text with user added to the members (4th field) of group's line; in a
-- group file and a gshadow file alike.
local function add_member(text, group, user)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local name, f2, f3, members = line:match("^([^:]*):([^:]*):([^:]*):?(.*)$")
    if name == group then
      local list = {}
      for m in members:gmatch("[^,]+") do list[#list + 1] = m end
      local has = false
      for _, m in ipairs(list) do has = has or m == user end
      if not has then list[#list + 1] = user end
      line = table.concat({ name, f2, f3, table.concat(list, ",") }, ":")
    end
    out[#out + 1] = line .. "\n"
  end
  return table.concat(out)
end

local function with_nl(text)
  if text ~= "" and not text:find("\n$") then return text .. "\n" end
  return text
end

-- Copy the tree at src (the image's /etc/skel) into dst, owned by uid:gid.
local function copy_tree(fs, src, dst, uid, gid, what)
  for _, e in ipairs(list_dir(fs, src, what)) do
    local s, d = src .. "/" .. e.name, dst .. "/" .. e.name
    local q = debugfs_quote(d)
    if e.type == "dir" then
      debugfs(fs, { "mkdir " .. q, set_inode(q, 0x4000 | e.mode, uid, gid) }, what)
      copy_tree(fs, s, d, uid, gid, what)
    elseif e.type == "file" then
      put_file(fs, d, cat(fs, s, what), what, 0x8000 | e.mode, { uid, gid })
    elseif e.type == "link" then
      local target = readlink(fs, s, lstat(fs, s, what), what)
      debugfs(fs, { "symlink " .. q .. " " .. debugfs_quote(target), "sif " .. q .. " uid " .. uid,
                    "sif " .. q .. " gid " .. gid }, what)
    end
  end
end

local function plan_users(fs, view, users, what)
  local passwd = view.read("/etc/passwd")
  local group = view.read("/etc/group")
  if not passwd or not group then refuse(what, "users: the image has no /etc/passwd or no /etc/group") end
  local uids, gids, user_names, group_names = {}, {}, {}, {}
  for _, r in ipairs(colon_rows(passwd)) do
    user_names[r[1]] = tonumber(r[3]) or true
    if tonumber(r[3]) then uids[tonumber(r[3])] = r[1] end
  end
  for _, r in ipairs(colon_rows(group)) do
    group_names[r[1]] = true
    if tonumber(r[3]) then gids[tonumber(r[3])] = r[1] end
  end
  local shadow = view.lstat("/etc/shadow") ~= nil
  local default_shell = view.lstat("/bin/bash") and "/bin/bash" or "/bin/sh"
  local plans = {}
  for _, u in ipairs(users) do
    if user_names[u.name] then
      refuse(what, "users: user %s already exists in the image's /etc/passwd%s", u.name,
             type(user_names[u.name]) == "number" and string.format(" (uid %d)", user_names[u.name]) or "")
    end
    if group_names[u.name] then
      refuse(what, "users: a group named %s already exists in the image's /etc/group (each new user gets a " ..
                   "group of its own name)", u.name)
    end
    for _, g in ipairs(u.groups or {}) do
      if not group_names[g] then
        refuse(what, "users: group %s (in the groups of %s) does not exist in the image's /etc/group", g, u.name)
      end
    end
    local id = u.uid
    if id then
      if uids[id] then refuse(what, "users: uid %d of %s is taken by user %s", id, u.name, uids[id]) end
      if gids[id] then
        refuse(what, "users: id %d of %s is taken by group %s (the user's own group gets its uid as gid)",
               id, u.name, gids[id])
      end
    else
      id = 1000
      while uids[id] or gids[id] do id = id + 1 end
      if id >= 60000 then refuse(what, "users: no free id from 1000 to 59999 for %s", u.name) end
    end
    uids[id], gids[id], user_names[u.name], group_names[u.name] = u.name, u.name, id, true
    plans[#plans + 1] = { name = u.name, id = id, groups = u.groups or {},
                          hash = u.password and M.hash_password(u.password) or "!",
                          shell = u.shell or default_shell, home = u.home or ("/home/" .. u.name) }
  end
  return { function()
    -- Read again here: root_password= and write= ran since the plan.
    local texts = { passwd = cat(fs, "/etc/passwd", what), group = cat(fs, "/etc/group", what) }
    texts.shadow = shadow and cat(fs, "/etc/shadow", what) or nil
    texts.gshadow = lstat(fs, "/etc/gshadow", what) and cat(fs, "/etc/gshadow", what) or nil
    for k, t in pairs(texts) do texts[k] = with_nl(t) end
    local day = os.time() // 86400
    for _, p in ipairs(plans) do
      texts.passwd = texts.passwd .. string.format("%s:%s:%d:%d::%s:%s\n", p.name, shadow and "x" or p.hash,
                                                   p.id, p.id, p.home, p.shell)
      texts.group = texts.group .. string.format("%s:x:%d:\n", p.name, p.id)
      if texts.shadow then
        texts.shadow = texts.shadow .. string.format("%s:%s:%d:0:99999:7:::\n", p.name, p.hash, day)
      end
      if texts.gshadow then texts.gshadow = texts.gshadow .. p.name .. ":!::\n" end
      for _, g in ipairs(p.groups) do
        texts.group = add_member(texts.group, g, p.name)
        if texts.gshadow then texts.gshadow = add_member(texts.gshadow, g, p.name) end
      end
    end
    put_file(fs, "/etc/passwd", texts.passwd, what)
    put_file(fs, "/etc/group", texts.group, what)
    if texts.shadow then put_file(fs, "/etc/shadow", texts.shadow, what, 0x8000 | 0x1a0) end
    if texts.gshadow then put_file(fs, "/etc/gshadow", texts.gshadow, what, 0x8000 | 0x1a0) end
    for _, p in ipairs(plans) do
      -- An existing home stays as it is (useradd -m does the same).
      if not lstat(fs, p.home, what) then
        make_dirs(fs, dirname(p.home), what)
        local q = debugfs_quote(p.home)
        debugfs(fs, { "mkdir " .. q, set_inode(q, 0x4000 | 0x1ed, p.id, p.id) }, what) -- 040755
        local skel = lstat(fs, "/etc/skel", what)
        if skel and skel.type == "dir" then copy_tree(fs, "/etc/skel", p.home, p.id, p.id, what) end
      end
    end
  end }
end

-- ---- customize: systemd units, as `systemctl --root` does offline ----

local ETC_UNITS = "/etc/systemd/system"
local UNIT_DIRS = { ETC_UNITS, "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system" }
-- [Install] keys that make links in X.wants/, X.requires/, X.upholds/
local INSTALL_DIRS = { WantedBy = ".wants", RequiredBy = ".requires", UpheldBy = ".upholds" }

-- The [Install] section of a unit file: {WantedBy={...}, RequiredBy=,
-- UpheldBy=, Alias=, Also=, DefaultInstance=}, or nil without one.
local function install_section(text)
  local section, install = nil, nil
  text = text:gsub("\\\n", " ")
  for line in text:gmatch("[^\n]+") do
    line = line:match("^%s*(.-)%s*$")
    local head = line:match("^%[(.-)%]$")
    if head then
      section = head
      if head == "Install" and not install then
        install = { WantedBy = {}, RequiredBy = {}, UpheldBy = {}, Alias = {}, Also = {} }
      end
    elseif section == "Install" and line ~= "" and not line:find("^[#;]") then
      local key, value = line:match("^([%w]+)%s*=%s*(.-)$")
      if key == "DefaultInstance" then
        install.DefaultInstance = value ~= "" and value or nil
      elseif key and install[key] then
        if value == "" then install[key] = {} end -- an empty assignment resets the list
        for word in value:gmatch("%S+") do table.insert(install[key], word) end
      end
    end
  end
  return install
end

-- The unit file systemd would load for unit (a template's for an
-- instance): its path where found, and the view's lstat of it; nil if none.
-- first: the index in UNIT_DIRS to start at (2: past /etc).
local function find_unit(view, unit, first)
  local names = { unit }
  local prefix, instance, kind = unit:match("^(.-)@(.*)%.(%a+)$")
  if prefix and instance ~= "" then names[2] = prefix .. "@." .. kind end
  for _, name in ipairs(names) do
    for i = first or 1, #UNIT_DIRS do
      local dir = UNIT_DIRS[i]
      local st = view.lstat(dir .. "/" .. name)
      if st then return dir .. "/" .. name, st end
    end
  end
end

local function is_masked(fs, path, st, what)
  return path:sub(1, #ETC_UNITS + 1) == ETC_UNITS .. "/" and st.type == "link" and not st.pending and
         readlink(fs, path, st, what) == "/dev/null"
end

-- The links enabling unit makes: {{link=, target=}, ...}, and the units
-- its Also= names.  Raises when the unit cannot be enabled.
local function unit_links(fs, view, unit, verb, what)
  local path, st = find_unit(view, unit)
  if not path then
    refuse(what, "%s: no unit file %s in the image (looked in %s)", verb, unit, table.concat(UNIT_DIRS, ", "))
  end
  if is_masked(fs, path, st, what) then
    if verb == "enable" then
      refuse(what, "enable: %s is masked (%s -> /dev/null); delete={%q} unmasks it", unit, path, path)
    end
    -- disabling a masked unit: what its own file says to remove
    path, st = find_unit(view, unit, 2)
    if not path then return {}, {} end
  end
  local text = view.read(path)
  if not text then refuse(what, "%s: %s (for %s) is not a readable unit file", verb, path, unit) end
  local install = install_section(text)
  if not install then
    if verb == "disable" then return {}, {} end
    refuse(what, "enable: %s has no [Install] section (%s): it is started by other units, not enabled", unit, path)
  end
  local name = unit
  if unit:find("@%.") then
    if not install.DefaultInstance then
      refuse(what, "%s: %s is a template with no DefaultInstance=: %s an instance (%s)", verb, unit, verb,
             (unit:gsub("@%.", "@NAME.")))
    end
    name = unit:gsub("@%.", "@" .. install.DefaultInstance .. ".")
  end
  local links = {}
  for key, suffix in pairs(INSTALL_DIRS) do
    for _, target in ipairs(install[key]) do
      links[#links + 1] = { link = ETC_UNITS .. "/" .. target .. suffix .. "/" .. name, target = path }
    end
  end
  for _, alias in ipairs(install.Alias) do
    links[#links + 1] = { link = ETC_UNITS .. "/" .. alias, target = path, alias = true }
  end
  if verb == "enable" and #links == 0 and #install.Also == 0 then
    refuse(what, "enable: the [Install] section of %s (%s) names no WantedBy=, RequiredBy=, UpheldBy=, Alias= " ..
                 "or Also=: there is nothing to enable", unit, path)
  end
  table.sort(links, function(a, b) return a.link < b.link end)
  return links, install.Also, name
end

-- Every unit, with the units their Also= names (once each).
local function with_also(fs, view, list, verb, what)
  local todo, seen, out = { table.unpack(list) }, {}, {}
  while #todo > 0 do
    local unit = table.remove(todo, 1)
    if not seen[unit] then
      seen[unit] = true
      local links, also, name = unit_links(fs, view, unit, verb, what)
      out[#out + 1] = { unit = unit, links = links, name = name or unit }
      for _, a in ipairs(also) do todo[#todo + 1] = a end
    end
  end
  return out
end

local function plan_enable(fs, view, list, what)
  local steps = {}
  for _, u in ipairs(with_also(fs, view, list, "enable", what)) do
    for _, l in ipairs(u.links) do
      local st = view.lstat(l.link)
      if st and st.type ~= "link" then
        refuse(what, "enable %s: %s exists and is not a link; delete={%q} removes it", u.unit, l.link, l.link)
      end
      steps[#steps + 1] = function()
        local cur = lstat(fs, l.link, what)
        if not (cur and readlink(fs, l.link, cur, what) == l.target) then put_link(fs, l.link, l.target, what) end
      end
    end
  end
  return steps
end

-- Disabling removes the links to a unit in /etc/systemd/system/*.wants,
-- *.requires and *.upholds, and its Alias= links (not a mask).
local function plan_disable(fs, view, list, what)
  local steps = {}
  local dirs = {}
  if lstat(fs, ETC_UNITS, what) then
    for _, e in ipairs(list_dir(fs, ETC_UNITS, what)) do
      if e.type == "dir" and (e.name:find("%.wants$") or e.name:find("%.requires$") or e.name:find("%.upholds$")) then
        dirs[#dirs + 1] = ETC_UNITS .. "/" .. e.name
      end
    end
  end
  for _, u in ipairs(with_also(fs, view, list, "disable", what)) do
    local gone = {}
    for _, d in ipairs(dirs) do
      for _, e in ipairs(list_dir(fs, d, what)) do
        if e.type == "link" and (e.name == u.unit or e.name == u.name) then gone[#gone + 1] = d .. "/" .. e.name end
      end
    end
    for _, l in ipairs(u.links) do
      local st = l.alias and lstat(fs, l.link, what)
      if st and st.type == "link" and readlink(fs, l.link, st, what) ~= "/dev/null" then gone[#gone + 1] = l.link end
    end
    for _, p in ipairs(gone) do
      steps[#steps + 1] = function() debugfs(fs, { "rm " .. debugfs_quote(p) }, what) end
    end
  end
  return steps
end

-- A unit linked to /dev/null in /etc/systemd/system is masked; a unit file
-- of that name there is refused, never replaced.
local function plan_mask(fs, view, list, what)
  local steps = {}
  for _, unit in ipairs(list) do
    local path = ETC_UNITS .. "/" .. unit
    local st = view.lstat(path)
    if st and st.type ~= "link" then
      refuse(what, "mask: %s is a %s in the image (a local unit file); masking would replace it: delete={%q} " ..
                   "first if that is meant", path, st.type == "file" and "regular file" or st.type, path)
    end
    steps[#steps + 1] = function()
      local cur = lstat(fs, path, what)
      if not (cur and readlink(fs, path, cur, what) == "/dev/null") then put_link(fs, path, "/dev/null", what) end
    end
  end
  return steps
end

-- ---- customize: the debugfs backend ----

-- Choose the ext filesystem: partition N, or the largest ext partition, or
-- the whole image.  Returns its byte offset.
local function find_ext(path, fmt, want, what)
  local parts = partitions(path, fmt)
  if #parts == 0 then
    local fs = fs_at(path, fmt, 0)
    if not (fs and fs:match("^ext")) then
      errors.raise { class = "NotExt", command = what,
                     desc = path .. " holds no ext2/3/4 filesystem" .. (fs and (" (it has " .. fs .. ")") or ""),
                     hint = "file edits without libguestfs need ext2/3/4; install libguestfs-tools for virt-customize" }
    end
    return 0
  end
  local best
  for _, p in ipairs(parts) do
    p.fs = fs_at(path, fmt, p.offset)
    if want and p.number == want then
      if not (p.fs and p.fs:match("^ext")) then
        errors.raise { class = "NotExt", command = what,
                       desc = string.format("partition %d of %s is not ext2/3/4 (%s)", want, path, p.fs or "unknown") }
      end
      return p.offset
    end
    if p.fs and p.fs:match("^ext") and (not best or p.size > best.size) then best = p end
  end
  if want then check.bad(what, "%s has no partition %d", path, want) end
  if not best then
    errors.raise { class = "NotExt", command = what, desc = path .. " has no ext2/3/4 partition",
                   hint = "install libguestfs-tools for virt-customize" }
  end
  return best.offset
end

-- Refuse an image a QEMU holds.  Opening it read-write (qemu-io) fails on
-- QEMU's lock, for a VM's own image and for every backing file under a
-- VM's overlay (measured on 7.2: `qemu-img info` without -U opens
-- read-only and misses the backing files).
local function refuse_in_use(path, fmt, what)
  local st = run.run({ "qemu-io", "-f", fmt, "-c", "quit", path },
                     { command = what, exec_hint = "is qemu-io installed? (it comes with qemu-img: qemu-utils)" })
  if st.code == 0 then return end
  local msg = (st.stderr .. st.stdout):gsub("%s+$", "")
  if msg:find("lock") then
    errors.raise { class = "ImageInUse", command = what,
                   desc = path .. " is open in a running QEMU (as its disk or under an overlay it runs): " ..
                          "writing it now would change the disk under the guest; nothing was changed",
                   hint = errors.hint_for('Failed to get "write" lock') }
  end
  errors.raise { class = "CustomizeFailed", command = what,
                 desc = "cannot open " .. path .. " read-write: " .. msg .. "; nothing was changed" }
end

-- Refuse an image that overlays qshell made depend on (qemu.backing).
local function refuse_backing(path, what)
  local over = require("qemu.backing").overlays_of(path)
  if #over == 0 then return end
  local more = #over > 1 and string.format(" (and %d more: %s)", #over - 1, table.concat(over, ", ", 2)) or ""
  errors.raise { class = "ImageInUse", command = what,
                 desc = string.format("%s is the backing file of %s%s: changing it corrupts %s (its clusters refer " ..
                                      "to the old contents); customize %s instead, or pass force=true; nothing " ..
                                      "was changed", path, over[1], more, over[1], over[1]),
                 hint = "force=true when the overlays are disposable (delete them afterwards)" }
end

-- The changed blocks of work (a raw copy of the qcow2 at path, edited)
-- against base (the copy before the edits), written into path at the same
-- offsets with qemu-io: only the clusters they fall in change, so an
-- overlay stays an overlay over the same backing file.  Returns the number
-- of bytes written.
local MAX_WRITE = 16 << 20
local function write_back(path, base, work, cluster, what)
  local ranges, msg, code = sys.diff_blocks(base, work, 4096)
  if not ranges then errors.from_code(what, msg, code) end
  -- One write per run of ranges in the same cluster (the bytes between
  -- them are unchanged: writing them again changes nothing), at most
  -- MAX_WRITE bytes each.
  local writes = {}
  for _, r in ipairs(ranges) do
    local last = writes[#writes]
    if last and (last[1] + last[2] - 1) // cluster == r[1] // cluster and r[1] + r[2] - last[1] <= MAX_WRITE then
      last[2] = r[1] + r[2] - last[1]
    else
      local off, len = r[1], r[2]
      while len > MAX_WRITE do
        writes[#writes + 1] = { off, MAX_WRITE }
        off, len = off + MAX_WRITE, len - MAX_WRITE
      end
      writes[#writes + 1] = { off, len }
    end
  end
  if #writes == 0 then return 0 end
  local src, err = io.open(work, "rb")
  if not src then errors.raise { class = "IOError", command = what, desc = "cannot read " .. err } end
  local chunks, total = {}, 0
  local ok, werr = pcall(function()
    local batch = {}
    local function flush()
      if #batch == 0 then return end
      local argv = { "qemu-io", "-f", "qcow2" }
      for _, c in ipairs(batch) do
        argv[#argv + 1] = "-c"
        argv[#argv + 1] = c
      end
      argv[#argv + 1] = path
      run.check(argv, { command = what, class = "CustomizeFailed" })
      batch = {}
    end
    for _, w in ipairs(writes) do
      src:seek("set", w[1])
      local data = src:read(w[2])
      local chunk = files.scratch_file("chunk", ".bin")
      -- qemu-io splits its commands at spaces, with no quoting
      if chunk:find("%s") then
        errors.raise { class = "CustomizeFailed", command = what,
                       desc = "the scratch directory's path has a space (" .. chunk .. "), which qemu-io cannot take",
                       hint = "set TMPDIR to a path without spaces" }
      end
      files.write(chunk, data, what)
      chunks[#chunks + 1] = chunk
      batch[#batch + 1] = string.format("write -q -s %s %d %d", chunk, w[1], #data)
      total = total + #data
      if #batch == 200 then flush() end
    end
    flush()
  end)
  src:close()
  for _, c in ipairs(chunks) do os.remove(c) end
  if not ok then error(werr, 0) end
  return total
end

local function customize_debugfs(path, opts, what)
  local info = disk.info(path)
  local fmt = info.format
  if fmt ~= "raw" and fmt ~= "qcow2" then check.bad(what, "%s is %s; raw and qcow2 are supported", path, fmt) end
  local offset = find_ext(path, fmt, opts.partition, what)
  -- A qcow2 is edited in a raw copy (debugfs reads no qcow2) beside a
  -- pristine one, and what differs goes back into it.
  local work, base = path, nil
  if fmt == "qcow2" then
    work, base = files.scratch_file("customize", ".raw"), files.scratch_file("customize-base", ".raw")
  end
  local ok, err = pcall(function()
    if fmt == "qcow2" then
      run.check({ "qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, base }, { command = what })
      run.check({ "cp", "--sparse=always", "--reflink=auto", base, work }, { command = what })
    end
    local fs = work .. "?offset=" .. offset
    local view = new_view(fs, opts, what)
    -- Plan every step (each raises before anything changed), then run them.
    local steps = {}
    local function add(list) for _, s in ipairs(list) do steps[#steps + 1] = s end end
    if opts.delete then add(plan_delete(fs, view, opts.delete, what)) end
    local paths = {}
    for p in pairs(opts.write or {}) do paths[#paths + 1] = p end
    table.sort(paths)
    for _, p in ipairs(paths) do steps[#steps + 1] = function() put_file(fs, p, opts.write[p], what) end end
    if opts.symlinks then add(plan_symlinks(fs, view, opts.symlinks, what)) end
    if opts.hostname then add(plan_hostname(fs, view, opts.hostname, what)) end
    if opts.root_password then
      steps[#steps + 1] = function() set_root_password(fs, opts.root_password, what) end
    end
    if opts.users then add(plan_users(fs, view, opts.users, what)) end
    if opts.enable then add(plan_enable(fs, view, opts.enable, what)) end
    if opts.disable then add(plan_disable(fs, view, opts.disable, what)) end
    if opts.mask then add(plan_mask(fs, view, opts.mask, what)) end
    if opts.disable_auto_upgrades then
      steps[#steps + 1] = function() put_file(fs, "/etc/apt/apt.conf.d/20auto-upgrades", APT_NO_UPGRADES, what) end
      add(plan_mask(fs, view, APT_TIMERS, what))
    end
    for _, step in ipairs(steps) do step() end
    if fmt == "qcow2" then write_back(path, base, work, info.cluster_size or 65536, what) end
  end)
  if fmt == "qcow2" then
    os.remove(work)
    os.remove(base)
  end
  if not ok then error(err, 0) end
end

-- The environment libguestfs' appliance needs, as "VAR=value" words for an
-- `env` prefix (qemu.run cannot set a child's environment): only variables
-- the caller has not exported, except appliance=, which is explicit.
local function appliance_env(opts, what)
  local env = {}
  local function set(var, value) env[#env + 1] = var .. "=" .. value end
  if not os.getenv("LIBGUESTFS_BACKEND") then set("LIBGUESTFS_BACKEND", "direct") end
  if not os.getenv("LIBGUESTFS_BACKEND_SETTINGS") and require("qemu.host").accel() ~= "kvm" then
    set("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
  end
  -- supermin copies the host's /lib/modules into the appliance; some
  -- containers have none, and it then fails with only "supermin exited".
  if not sys.stat("/lib/modules") then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = "libguestfs' supermin needs a /lib/modules directory on the host, and there is none; " ..
                          "nothing was changed",
                   hint = "mkdir /lib/modules (an empty one will do; the appliance's modules come from " ..
                          "appliance.modules)" }
  end
  local a = opts.appliance
  if a then
    if a.kernel then
      if not sys.stat(a.kernel) then check.bad(what, "appliance.kernel: no such file: %s", a.kernel) end
      set("SUPERMIN_KERNEL", a.kernel)
    end
    if a.modules then
      if not sys.stat(a.modules) then check.bad(what, "appliance.modules: no such directory: %s", a.modules) end
      set("SUPERMIN_MODULES", a.modules)
    end
  elseif not os.getenv("SUPERMIN_KERNEL") then
    -- supermin takes the host's newest /boot/vmlinuz-*: without one it
    -- fails after building most of the appliance.
    local p = io.popen("ls /boot 2>/dev/null")
    local found = p and p:read("a"):find("vmlinuz%-") or false
    if p then p:close() end
    if not found then
      errors.raise { class = "MissingTool", command = what,
                     desc = "virt-customize needs a Linux kernel for its appliance and the host has none " ..
                            "(no /boot/vmlinuz-*)",
                     hint = "install a linux-image-* package next to libguestfs-tools, or pass " ..
                            "appliance={kernel=, modules=}: a Debian kernel .deb extracted with dpkg-deb -x DIR, " ..
                            "its modules indexed with depmod -b DIR VERSION" }
    end
  end
  return env
end

-- virt-customize's own error lines (it ends with advice on debugging).
local function virt_errors(st)
  local lines, errs = {}, {}
  for line in (st.stderr .. "\n" .. st.stdout):gmatch("[^\n]+") do
    if not line:find("^If reporting bugs") and not line:find("LIBGUESTFS_DEBUG=1") and
       not line:find("^%[%s*[%d.]+%]") then
      lines[#lines + 1] = line
      if line:find("error:") or line:find("^supermin: ") then errs[#errs + 1] = line end
    end
  end
  if #errs == 0 then errs = { table.unpack(lines, math.max(1, #lines - 9)) } end
  while #errs > 10 do table.remove(errs, 1) end
  return table.concat(errs, "\n")
end

-- virt-customize and what its appliance needs, checked before anything
-- is written (the debugfs edits of a mixed call run first).
local function virt_ready(opts, what)
  local vc = run.which("virt-customize")
  if not vc then
    errors.raise { class = "MissingTool", command = what,
                   desc = "install=, uninstall= and run= need virt-customize, which is not installed; nothing was changed",
                   hint = "apt-get install libguestfs-tools (about 110 packages); the file edits alone " ..
                          "(root_password, write, users, enable, ..., disable_auto_upgrades) need no libguestfs" }
  end
  return vc, appliance_env(opts, what)
end

local function customize_virt(path, opts, what)
  local vc, env = virt_ready(opts, what)
  local argv = {}
  local function add(...) for _, w in ipairs { ... } do argv[#argv + 1] = w end end
  if #env > 0 then add(run.which("env") or "/usr/bin/env", table.unpack(env)) end
  local fmt = disk.info(path).format
  add(vc, "--format", fmt, "-a", path)
  -- package installs need the network; nothing else does
  if opts.install and #opts.install > 0 then add("--network") else add("--no-network") end
  local tmpfiles = {}
  local function hostfile(prefix, text)
    local hf = files.scratch_file(prefix)
    files.write(hf, text, what)
    tmpfiles[#tmpfiles + 1] = hf
    return hf
  end
  local ok, err = pcall(function()
    if opts.root_password then
      -- the hash the debugfs path writes (virt-customize picks md5 for an unknown distribution)
      add("--password-crypto", "sha512",
          "--root-password", "file:" .. hostfile("vpw", opts.root_password .. "\n"))
    end
    local paths = {}
    for gp, text in pairs(opts.write or {}) do
      if type(gp) ~= "string" or type(text) ~= "string" then
        check.bad(what, "write= maps guest paths to text: {[\"/etc/motd\"] = \"hello\\n\"}")
      end
      if gp:sub(1, 1) ~= "/" or gp:find("%.%./") or gp:find("[%c]") then
        check.bad(what, "guest paths must be absolute and plain: %q", gp)
      end
      paths[#paths + 1] = gp
    end
    table.sort(paths)
    for _, gp in ipairs(paths) do
      local dir = gp:match("^(.+)/[^/]*$")
      if dir then add("--mkdir", dir) end  -- mkdir -p, like the debugfs path
      add("--upload", hostfile("vw", opts.write[gp]) .. ":" .. gp)
    end
    if opts.install and #opts.install > 0 then add("--install", table.concat(opts.install, ",")) end
    if opts.uninstall and #opts.uninstall > 0 then add("--uninstall", table.concat(opts.uninstall, ",")) end
    for _, cmd in ipairs(opts.run or {}) do add("--run-command", cmd) end
    if opts.disable_auto_upgrades then
      add("--mkdir", "/etc/apt/apt.conf.d",
          "--upload", hostfile("vapt", APT_NO_UPGRADES) .. ":/etc/apt/apt.conf.d/20auto-upgrades",
          "--mkdir", "/etc/systemd/system")
      for _, timer in ipairs(APT_TIMERS) do add("--link", "/dev/null:/etc/systemd/system/" .. timer) end
    end
    local st = run.run(argv, { command = what })
    if st.code ~= 0 then
      local msg = virt_errors(st)
      errors.raise { class = "CustomizeFailed", command = what,
                     desc = string.format("virt-customize %s:\n%s", st.desc, msg),
                     hint = errors.hint_for(msg) or
                            (msg:find("supermin") and "libguestfs could not build its appliance: run with LIBGUESTFS_DEBUG=1 " ..
                             "exported to see supermin's reason; it needs a kernel (appliance= in README.md)" or nil),
                     exit = st }
    end
  end)
  for _, t in ipairs(tmpfiles) do os.remove(t) end
  if not ok then error(err, 0) end
end

-- qemu.image.customize(path, {root_password=, write={[guest_path]=text},
--   symlinks={[guest_path]=target}, delete={paths}, hostname=,
--   users={{name=, password=, groups=, shell=, uid=, home=}, ...},
--   enable={units}, disable={units}, mask={units}, disable_auto_upgrades=,
--   install={pkgs}, uninstall={pkgs}, run={cmds}, force=false,
--   partition=N, backend="auto"|"debugfs"|"virt-customize",
--   appliance={kernel=, modules=}})
-- virt-customize runs under `env` with LIBGUESTFS_BACKEND=direct,
-- LIBGUESTFS_BACKEND_SETTINGS=force_tcg without KVM (each only when unset)
-- and SUPERMIN_KERNEL/SUPERMIN_MODULES from appliance=.
function M.customize(path, opts)
  local what = "qemu.image.customize"
  check.arg(what, 1, path, "string")
  opts = check.options(what, opts, customize_opts, 2)
  if not sys.stat(path) then errors.raise { class = "BadArgument", command = what, desc = "no such image: " .. path } end
  local todo = false
  for _, k in ipairs { "root_password", "write", "disable_auto_upgrades", "install", "uninstall", "run",
                       table.unpack(DEBUGFS_ONLY) } do
    if opts[k] ~= nil then todo = true end
  end
  if not todo then
    check.bad(what, "nothing to do: give root_password=, write=, symlinks=, delete=, hostname=, users=, enable=, " ..
                    "disable=, mask=, disable_auto_upgrades=, install=, uninstall= or run=")
  end
  for _, k in ipairs { "install", "uninstall", "run" } do
    for i, v in ipairs(opts[k] or {}) do
      if type(v) ~= "string" or v == "" then check.bad(what, "%s[%d] must be a non-empty string", k, i) end
    end
  end
  if opts.root_password then
    if type(opts.root_password) ~= "string" or opts.root_password == "" then
      check.bad(what, "root_password must be a non-empty string")
    end
    if opts.root_password:find("[\r\n]") then
      check.bad(what, "the root password contains a newline: it could never be typed at a login prompt")
    end
  end
  local seen = {}
  for _, k in ipairs { "enable", "disable", "mask" } do
    for _, u in ipairs(opts[k] or {}) do
      if seen[u] and seen[u] ~= k then check.bad(what, "%s is in both %s= and %s=", u, seen[u], k) end
      seen[u] = k
    end
  end
  local needs_guest = (opts.install and #opts.install > 0) or (opts.uninstall and #opts.uninstall > 0) or
                      (opts.run and #opts.run > 0)
  local edits = {}
  for _, k in ipairs(DEBUGFS_ONLY) do
    if opts[k] ~= nil then edits[#edits + 1] = k .. "=" end
  end
  local backend = opts.backend or "auto"
  if backend == "debugfs" and needs_guest then
    check.bad(what, "install=, uninstall= and run= cannot be done with debugfs (they need virt-customize)")
  end
  if backend == "virt-customize" and #edits > 0 then
    check.bad(what, "%s: done with debugfs only (backend=\"auto\" runs them before virt-customize)",
              table.concat(edits, ", "))
  end
  -- The refusals come first, whichever backend writes.
  refuse_in_use(path, disk.info(path).format, what)
  if not opts.force then refuse_backing(path, what) end
  if backend == "virt-customize" or needs_guest then
    virt_ready(opts, what)
    if #edits > 0 then
      -- the debugfs-only edits first, with the written files (a unit
      -- written here can be enabled); the rest through virt-customize
      local first, rest = { partition = opts.partition, write = opts.write }, {}
      for _, k in ipairs(DEBUGFS_ONLY) do first[k] = opts[k] end
      for k, v in pairs(opts) do
        if first[k] == nil then rest[k] = v end
      end
      customize_debugfs(path, first, what)
      opts = rest
    end
    return customize_virt(path, opts, what)
  end
  return customize_debugfs(path, opts, what)
end

-- The debugfs helpers qemu.image.kernel reads images with (distro.lua).
M._debugfs = { quote = debugfs_quote, list_dir = list_dir }

-- Building distribution images, reading their kernels, cloud-init seeds:
-- stdlib/qemu/distro.lua and stdlib/qemu/cloudinit.lua.
function M.build(opts) return require("qemu.distro").build(opts) end
function M.kernel(image, opts) return require("qemu.distro").kernel(image, opts) end
function M.cloud_init(opts) return require("qemu.cloudinit").seed(opts) end

return M
