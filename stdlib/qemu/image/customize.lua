-- qemu.image.customize: the options customize takes and their checks,
-- the refusals that come before any change (an image in use, or under
-- overlays), the debugfs backend that runs the planned steps
-- (qemu.image.plan, .units) on a raw copy or in place, and the choice of
-- backend; packages and commands go to qemu.image.virt.

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local disk = require "qemu.disk"
local sys = require "qshell.os"
local inspect = require "qemu.image.inspect"
local dfs = require "qemu.image.debugfs"
local plan = require "qemu.image.plan"
local systemd = require "qemu.image.units"
local virt = require "qemu.image.virt"

local partitions, fs_at = inspect.partitions, inspect.fs_at
local plain_path, put_file = dfs.plain_path, dfs.put_file
local new_view, plan_delete, plan_symlinks, plan_hostname = plan.new_view, plan.plan_delete, plan.plan_symlinks,
                                                            plan.plan_hostname
local set_root_password, plan_users = plan.set_root_password, plan.plan_users
local plan_enable, plan_disable, plan_mask = systemd.plan_enable, systemd.plan_disable, systemd.plan_mask
local APT_NO_UPGRADES, APT_TIMERS = plan.APT_NO_UPGRADES, plan.APT_TIMERS
local virt_ready, customize_virt = virt.virt_ready, virt.customize_virt

local M = {}

-- ---- customize: the options ----

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

-- Refuse an image that overlays qshell made depend on (qemu.image.backing).
local function refuse_backing(path, what)
  local over = require("qemu.image.backing").overlays_of(path)
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
  local src, err, err_code = io.open(work, "rb")
  if not src then errors.from_code(what, "cannot read " .. err, err_code) end
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

---@api qemu.image.customize qemu.image.customize(path, options)
--- Edit a system image before it boots: passwords, users, files, links, the host name, systemd units, packages.
---
--- The file edits need neither root nor libguestfs: e2fsprogs' `debugfs` writes them into the image's ext2/3/4
--- file system (by default the largest ext partition of an MBR or GPT disk). They run in this order:
--- `delete`, `write`, `symlinks`, `hostname`, `root_password`, `users`, `enable`, `disable`, `mask`,
--- `disable_auto_upgrades`; so one call can write a unit file and enable it, or delete a file and put a link
--- in its place. Every option is checked before anything is written, and the steps are planned against the
--- image (counting what `write=` adds and `delete=` removes): a refusal is a `CustomizeFailed` error that
--- names the file, user, group or unit and ends "nothing was changed".
---
--- - `users`: each user gets a line in `/etc/passwd` and `/etc/shadow` (the password hashed with SHA-512; without
---   `password=` the account is locked, `!`), a group of its own name with the same id in `/etc/group` (and
---   `/etc/gshadow` when the image has one), a place in each of `groups`, and a home directory (default
---   `/home/NAME`, mode 0755, the user's) holding a copy of `/etc/skel`; a home that exists is left as it is. `uid`
---   defaults to the first id from 1000 free as a uid and as a gid; `shell` to `/bin/bash` when the image has it,
---   else `/bin/sh`. A user or a group of the user's name that exists, an id that is taken, and a group in `groups`
---   that the image lacks are refused.
--- - `enable` finds the unit file in `/etc/systemd/system`, `/usr/local/lib/systemd/system`, `/lib/systemd/system`,
---   `/usr/lib/systemd/system` (links on the way followed, such as a `/lib` that links to `usr/lib`), reads its `[Install]` section and links
---   `/etc/systemd/system/TARGET.wants/UNIT` (`WantedBy=`; `.requires` for `RequiredBy=`, `.upholds` for
---   `UpheldBy=`) and `/etc/systemd/system/ALIAS` (`Alias=`) to it, as `systemctl --root` does; the units `Also=`
---   names are enabled too; a template takes its instance from the name (`getty@ttyS1.service`) or from
---   `DefaultInstance=`. A unit that is not there, one without an `[Install]` section and a masked one are refused.
--- - `disable` removes those links, and any other link named after the unit in `/etc/systemd/system/*.wants`,
---   `*.requires` and `*.upholds` (a mask stays). `mask` links `/etc/systemd/system/UNIT` to `/dev/null`; a unit
---   file of that name there is refused, not replaced.
---
--- A raw image is edited in place. A qcow2 is edited in a raw copy beside a pristine one; the two are compared
--- block by block (in C, reading only their data, not their holes), and only the blocks that changed are
--- written back into it (`qemu-io`): the image keeps its format, compat level, backing file and
--- internal snapshots, and an overlay grows by the clusters the edits touch (typically a few hundred KB),
--- whatever the size of its backing file. The two copies take the image's data twice in `$TMPDIR` (sparse files).
---
--- Refused, with nothing changed: an image a running QEMU has open (this shell's or another's, as its disk or
--- as the backing file of its overlay: `ImageInUse`); an image that is the backing file of an overlay qshell
--- made (`qemu.disk.create{backing=}`, `qemu.disk.overlay`, a checkpoint's `shared_base`) while that overlay
--- exists, since changing it corrupts the overlay (`ImageInUse` naming the overlay: customize the overlay
--- instead, or pass `force=true`); an image without an ext file system (`NotExt`). qshell keeps the overlays
--- it made in `~/.cache/qshell/backing` (`$XDG_CACHE_HOME/qshell/backing` when that is set), a
--- `backing<TAB>overlay` line each, by real path; a line whose overlay is gone, or now has another backing
--- file, no longer counts and is dropped.
---
--- `install=`, `uninstall=` and `run=` need the guest's own tools and go through `virt-customize`
--- (libguestfs-tools: about 110 packages, a ~675 MB appliance cache under `$TMPDIR` or `/var/tmp`, about 20 s
--- per call under TCG), which boots a small appliance VM. qshell runs it as `env VAR=value ... virt-customize ...`
--- (an argv, no shell) with `LIBGUESTFS_BACKEND=direct`, and `LIBGUESTFS_BACKEND_SETTINGS=force_tcg` without
--- KVM, each only when it is not exported. The edits only debugfs makes (`symlinks`, `delete`, `hostname`,
--- `users`, `enable`, `disable`, `mask`) are made first, with debugfs, together with `write=` (so a unit written
--- can be enabled); the rest goes through virt-customize: files, `install=` (with `--network`; otherwise
--- `--no-network`), `uninstall=`, `run=` (needs `/bin/sh` in the image), the apt settings, the root password
--- last (SHA-512). The image must look like Linux to libguestfs (`/bin`, and `/etc/fstab` or `/etc/hosts`).
--- The appliance needs a kernel: the host's newest `/boot/vmlinuz-*`, or `appliance={kernel=, modules=}` (a
--- Debian kernel `.deb` unpacked with `dpkg-deb -x DEB DIR`, its modules indexed with `depmod -b DIR VERSION`:
--- `kernel=DIR/boot/vmlinuz-VERSION`, `modules=DIR/lib/modules/VERSION`); supermin also needs a `/lib/modules`
--- directory on the host (an empty one will do). Export `LIBGUESTFS_DEBUG=1` for the appliance's details.
---
---     local img = qemu.disk.overlay("debian-12-nocloud-amd64.qcow2", "exp.qcow2")
---     qemu.image.customize(img, {
---       root_password = "secret", disable_auto_upgrades = true, hostname = "exp42",
---       users = { { name = "alice", password = "alice's", groups = { "sudo" } } },
---       write = { ["/etc/motd"] = "experiment 42\n",
---                 ["/etc/systemd/system/bench.service"] =
---                   "[Service]\nExecStart=/opt/bench/run\n[Install]\nWantedBy=multi-user.target\n" },
---       enable = { "bench.service" },
---       mask = { "unattended-upgrades.service" },
---       symlinks = { ["/usr/local/bin/bench"] = "/opt/bench/run" },
---       delete = { "/etc/update-motd.d/10-uname" },
---     })   -- exp.qcow2 is still an overlay, a few hundred KB; the base is untouched
---
---@param path string  the image (raw or qcow2 for the debugfs edits; any format virt-customize reads for the rest)
---@param options table  at least one edit; every key is optional:
---   `root_password=` string: root's password, hashed (SHA-512 crypt, passed on stdin): a colon is fine, a newline is
---   refused;
---   `write=` table: `{[guest_path]=text}`, files written, their missing parent directories made (root's, 0755); a new file
---   is root's, mode 0644; an existing file keeps its mode and owner; every file is read back;
---   `symlinks=` table: `{["/path/link"]="target"}`, symbolic links, parent directories made; an existing link is
---   replaced, an
---   existing file or directory is refused (`delete=` it first);
---   `delete=` string[]: files and links removed; a directory only when it is empty (or everything in it is in the list
---   too); a path that is not there is refused;
---   `hostname=` string: `/etc/hostname`, and the `127.0.1.1` line of `/etc/hosts` (`127.0.1.1 NAME`;
---   `127.0.1.1 FQDN SHORT`
---   for a dotted name), added when there is none; an RFC 1123 name (labels of letters, digits and inner hyphens,
---   joined by dots);
---   `users=` table: `{{name=, password=, groups={...}, shell=, uid=, home=}, ...}`, accounts as `useradd -m` makes
---   them (above);
---   `enable=`, `disable=`, `mask=` string[]: systemd unit names (`"ssh.service"`), handled as `systemctl --root`
---   does (above);
---   a unit in two of them is refused;
---   `disable_auto_upgrades=` boolean: when true, the apt settings that stop automatic updates and upgrades
---   (`/etc/apt/apt.conf.d/20auto-upgrades`), with `apt-daily.timer` and `apt-daily-upgrade.timer` masked;
---   `install=`, `uninstall=` string[]: packages to install or remove (virt-customize);
---   `run=` string[]: shell commands to run in the image (virt-customize);
---   `force=` boolean, default false: edit an image that overlays qshell made depend on;
---   `partition=` integer: the partition to edit (1-based); default the largest ext partition;
---   `backend=` string, default `"auto"`: `"debugfs"` refuses `install=`, `uninstall=` and `run=`; `"virt-customize"`
---   sends `root_password=`, `write=` and `disable_auto_upgrades=` there too, and refuses the debugfs-only edits;
---   `appliance=` table: `{kernel=, modules=}`, the kernel of virt-customize's appliance (sets `SUPERMIN_KERNEL` and
---   `SUPERMIN_MODULES`, overriding exported ones).
---@error BadArgument  an unknown option or a wrong type or value (the option is named), nothing to do, a unit in two
---   lists, an edit the chosen backend does not do, no such image, no such partition, an image neither raw nor qcow2
---   (debugfs), an appliance file that does not exist
---@error ImageInUse  a running QEMU has the image open, or overlays qshell made depend on it (without `force=true`)
---@error NotExt  the image (or `partition`) holds no ext2/3/4 file system
---@error CustomizeFailed  a refusal (the file, user, group or unit named: nothing was changed), debugfs or
---   virt-customize failed (its own error lines), no `/lib/modules` on the host for virt-customize
---@error MissingTool  `install=`, `uninstall=` or `run=` without virt-customize (libguestfs-tools), or no kernel for
---   its appliance (neither `appliance=` nor an exported `SUPERMIN_KERNEL`, and no `/boot/vmlinuz-*` on the host),
---   before anything runs; `qemu-img`, `qemu-io` or debugfs is not installed
---@error DiskError  `qemu-img` cannot read the image
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

return M
