-- qemu.image: system images before first boot.
--
--   qemu.image.customize(path, {root_password=, write={["/etc/motd"]="hi\n"},
--                               disable_auto_upgrades=true, install={...}, uninstall={...}, run={...}})
--   qemu.image.check(path) -> {format=, compat=, partitions=, hints=, ...}
--
-- The file edits (password, written files, apt settings) on an ext2/3/4
-- root need neither root nor libguestfs: e2fsprogs' debugfs writes into the
-- filesystem, at the partition's offset, in a raw copy of the image that
-- then replaces it.  Installing or removing packages and running commands
-- need the guest's own tools: they go through virt-customize (libguestfs),
-- whose appliance needs a kernel: the host's /boot/vmlinuz-*, or
-- appliance={kernel=, modules=}.
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
  if require("qemu.launch").detect_accel() ~= "kvm" then
    h[#h + 1] = "no usable KVM here: the image boots under TCG, much slower than on KVM; a distribution cloud image " ..
                "with its generic kernel takes minutes to boot. Boot it with -kernel (e.g. the default guest's cloud " ..
                "kernel) and add nokaslr, and icount if its kernel reports RCU stalls"
  end
  return report
end

-- ---- customize ----

local customize_opts = {
  root_password = "string", write = "table", disable_auto_upgrades = "boolean",
  install = "table", uninstall = "table", run = "table", partition = check.positive,
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

-- Run debugfs commands (-w) on fs (a raw file with "?offset=N"); raise on
-- the errors debugfs reports on stderr while exiting 0.
local function debugfs(fs, cmds, what)
  local cmdfile = files.scratch_file("debugfs", ".cmds")
  files.write(cmdfile, table.concat(cmds, "\n") .. "\n", what)
  local st = run.run({ "debugfs", "-w", "-f", cmdfile, fs }, { command = what })
  os.remove(cmdfile)
  local errs = {}
  for line in st.stderr:gmatch("[^\n]+") do
    if line:find(": ") and
       (line:find("[Nn]ot found") or line:find("[Ee]rror") or line:find("[Cc]ould not") or line:find("[Ii]nvalid")) and
       not line:find("already exists") and not line:find("^debugfs %d") then
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

-- debugfs's "stat" for mode/uid/gid of an existing file (nil if missing).
local function file_stat(fs, path, what)
  local out = debugfs_read(fs, "stat " .. path, what)
  local mode = out:match("Mode:%s+0?(%d+)")
  if not mode then return nil end
  return { mode = tonumber(mode, 8), uid = tonumber(out:match("User:%s+(%d+)")),
           gid = tonumber(out:match("Group:%s+(%d+)")) }
end

local function debugfs_quote(p)
  if p:find('[%s"]') then return '"' .. p:gsub('"', '\\"') .. '"' end
  return p
end

-- Write text to guest_path inside fs, creating parent dirs; keep an
-- existing file's mode and owner (else 0644 root).
local function put_file(fs, guest_path, text, what, default_mode)
  if guest_path:sub(1, 1) ~= "/" or guest_path:find("%.%./") or guest_path:find("[%c]") then
    check.bad(what, "guest paths must be absolute and plain: %q", guest_path)
  end
  local host = files.scratch_file("put")
  files.write(host, text, what)
  local old = file_stat(fs, debugfs_quote(guest_path), what)
  local cmds = {}
  local dir = ""
  for part in guest_path:match("^(.*)/[^/]*$"):gmatch("[^/]+") do
    dir = dir .. "/" .. part
    cmds[#cmds + 1] = "mkdir " .. debugfs_quote(dir)
  end
  -- "mkdir" of an existing dir only complains; run those separately.
  if #cmds > 0 then pcall(debugfs, fs, cmds, what) end
  local q = debugfs_quote(guest_path)
  -- debugfs's stat shows only the permission bits: add "regular file".
  local mode = old and (0x8000 | (old.mode & 0xfff)) or (default_mode or (0x8000 | 0x1a4)) -- 0100644
  debugfs(fs, {
    old and ("rm " .. q) or "",
    "write " .. host .. " " .. q,
    string.format("sif %s mode 0%o", q, mode),
    string.format("sif %s uid %d", q, old and old.uid or 0),
    string.format("sif %s gid %d", q, old and old.gid or 0),
  }, what)
  os.remove(host)
  local back = debugfs_read(fs, "cat " .. q, what)
  if back ~= text then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = string.format("%s reads back differently after writing it", guest_path) }
  end
end

local function set_root_password(fs, pw, what)
  local hash = M.hash_password(pw)
  local shadow = debugfs_read(fs, "cat /etc/shadow", what)
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

local function has_snapshots(info) return #info.snapshots > 0 end

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

local function customize_debugfs(path, opts, what)
  local info = disk.info(path)
  local fmt = info.format
  if fmt ~= "raw" and fmt ~= "qcow2" then check.bad(what, "%s is %s; raw and qcow2 are supported", path, fmt) end
  if fmt == "qcow2" and has_snapshots(info) then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = path .. " holds internal snapshots, which rewriting it would lose; nothing was changed",
                   hint = "delete them (qemu.disk.delete_snapshot) or customize an overlay: qemu.disk.overlay(path, new)" }
  end
  -- An image a QEMU has open must not be rewritten under it.
  local lock = run.run({ "qemu-img", "info", path }, { command = what })
  if lock.code ~= 0 and lock.stderr:find("lock") then
    errors.raise { class = "ImageInUse", command = what, desc = path .. " is in use by a QEMU; nothing was changed",
                   hint = errors.hint_for('Failed to get "write" lock') }
  end
  local offset = find_ext(path, fmt, opts.partition, what)
  -- Work on a raw copy (debugfs reads no qcow2), then put it back.
  local work = fmt == "raw" and path or (files.scratch_file("customize", ".raw"))
  if fmt ~= "raw" then
    run.check({ "qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, work }, { command = what })
  end
  local ok, err = pcall(function()
    local fs = work .. "?offset=" .. offset
    if opts.root_password then set_root_password(fs, opts.root_password, what) end
    local paths = {}
    for p in pairs(opts.write or {}) do paths[#paths + 1] = p end
    table.sort(paths)
    for _, p in ipairs(paths) do
      local text = opts.write[p]
      if type(p) ~= "string" or type(text) ~= "string" then
        check.bad(what, "write= maps guest paths to text: {[\"/etc/motd\"] = \"hello\\n\"}")
      end
      put_file(fs, p, text, what)
    end
    if opts.disable_auto_upgrades then
      put_file(fs, "/etc/apt/apt.conf.d/20auto-upgrades", APT_NO_UPGRADES, what)
      for _, timer in ipairs(APT_TIMERS) do
        -- a systemd unit linked to /dev/null is masked
        local unit = "/etc/systemd/system/" .. timer
        pcall(debugfs, fs, { "mkdir /etc/systemd", "mkdir /etc/systemd/system" }, what)
        local st = run.run({ "debugfs", "-R", "stat " .. unit, fs }, { command = what })
        local cmds = {}
        if st.stdout:find("Inode:") then cmds[#cmds + 1] = "rm " .. unit end
        cmds[#cmds + 1] = "symlink " .. unit .. " /dev/null"
        debugfs(fs, cmds, what)
      end
    end
    if fmt ~= "raw" then
      -- Back to qcow2, same compat, same backing file (only changed clusters).
      local tmp = path .. ".qshell-tmp"
      local args = { "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=" .. (info.compat or "1.1") }
      if info.backing then
        args[#args + 1] = "-B"
        args[#args + 1] = info.backing
        args[#args + 1] = "-F"
        args[#args + 1] = info.backing_format or "qcow2"
      end
      args[#args + 1] = work
      args[#args + 1] = tmp
      run.check(args, { command = what })
      local rok, rerr = require("qshell.os").rename(tmp, path)
      if not rok then errors.raise { class = "IOError", command = what, desc = rerr } end
    end
  end)
  if fmt ~= "raw" then os.remove(work) end
  os.remove(path .. ".qshell-tmp")
  if not ok then error(err, 0) end
end

-- The environment libguestfs' appliance needs, as "VAR=value" words for an
-- `env` prefix (qemu.run cannot set a child's environment): only variables
-- the caller has not exported, except appliance=, which is explicit.
local function appliance_env(opts, what)
  local env = {}
  local function set(var, value) env[#env + 1] = var .. "=" .. value end
  if not os.getenv("LIBGUESTFS_BACKEND") then set("LIBGUESTFS_BACKEND", "direct") end
  if not os.getenv("LIBGUESTFS_BACKEND_SETTINGS") and require("qemu.launch").detect_accel() ~= "kvm" then
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

local function customize_virt(path, opts, what)
  local vc = run.which("virt-customize")
  if not vc then
    errors.raise { class = "MissingTool", command = what,
                   desc = "install=, uninstall= and run= need virt-customize, which is not installed",
                   hint = "apt-get install libguestfs-tools (about 110 packages); the file edits alone " ..
                          "(root_password, write, disable_auto_upgrades) need no libguestfs" }
  end
  local env = appliance_env(opts, what)
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
--   disable_auto_upgrades=, install={pkgs}, uninstall={pkgs}, run={cmds},
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
  for _, k in ipairs { "root_password", "write", "disable_auto_upgrades", "install", "uninstall", "run" } do
    if opts[k] ~= nil then todo = true end
  end
  if not todo then check.bad(what, "nothing to do: give root_password=, write=, disable_auto_upgrades=, install=, uninstall= or run=") end
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
  local needs_guest = (opts.install and #opts.install > 0) or (opts.uninstall and #opts.uninstall > 0) or
                      (opts.run and #opts.run > 0)
  local backend = opts.backend or "auto"
  if backend == "debugfs" and needs_guest then
    check.bad(what, "install=, uninstall= and run= cannot be done with debugfs (they need virt-customize)")
  end
  if backend == "virt-customize" or needs_guest then
    return customize_virt(path, opts, what)
  end
  return customize_debugfs(path, opts, what)
end

return M
