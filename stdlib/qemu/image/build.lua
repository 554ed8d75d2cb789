-- qemu.image.build and qemu.image.kernel: real distribution system disks.
--
--   local g = qemu.image.build{suite="bookworm", packages={"openssh-server"}}
--   local vm = qemu.guest.launch{guest=g}          -- boots it with -kernel, logs in
--   local k = qemu.image.kernel("ubuntu.qcow2")    -- {kernel=, initrd=, root=, append=}
--
-- build: mmdebstrap installs the suite's packages into a directory, the
-- tree gets its settings (fstab, hostname, passwords, users, a DHCP
-- network), and qemu.disk.populate makes it a partitioned ext4 qcow2 (no
-- nbd, no mount, no libguestfs).  The tree's kernel and initrd are copied
-- beside the disk with a guest.lua that qemu.guest.load reads.
-- kernel: the newest /boot/vmlinuz-* and its initrd read offline with
-- debugfs, as libguestfs' virt-get-kernel does.

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local disk = require "qemu.disk"
local paths = require "qemu.util.paths"
local sys = require "qshell.os"
local inspect = require "qemu.image.inspect"
local password = require "qemu.image.password"
local dfs = require "qemu.image.debugfs"

local M = {}

-- What every image gets: an init, a kernel and an initrd that finds disks
-- on IDE and virtio, and what the network setup needs.
local BASE_PACKAGES = { "systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools",
                        "iproute2", "dbus", "e2fsprogs" }
-- What a package needs to work on first boot that Debian does not pull
-- in (mmdebstrap installs no Recommends): cloud-init's locale module runs
-- update-locale, its resizefs module resize2fs (e2fsprogs, in every image).
local COMPANIONS = { ["cloud-init"] = { "locales" } }
local ROOT_LABEL = "qshell-root"
-- Bump when the image layout changes: cached images are rebuilt.
local LAYOUT = 3

local function validate_users(v)
  if type(v) ~= "table" then return false, "must be a list of {name=, password=, groups=, shell=}" end
  for i, u in ipairs(v) do
    if type(u) ~= "table" then return false, string.format("users[%d] must be a table", i) end
    check.options("qemu.image.build: users[" .. i .. "]", u,
                  { name = "string", password = "string", groups = "table", shell = "string", uid = check.positive })
    if not u.name or not u.name:match("^[a-z_][a-z0-9_%-]*$") or #u.name > 32 then
      return false, string.format("users[%d].name must be a user name ([a-z_][a-z0-9_-]*)", i)
    end
    if u.password and (u.password == "" or u.password:find("[\r\n:]")) then
      return false, string.format("users[%d].password must be non-empty, with no newline or colon", i)
    end
    for j, g in ipairs(u.groups or {}) do
      if type(g) ~= "string" or not g:match("^[a-z_][a-z0-9_%-]*$") then
        return false, string.format("users[%d].groups[%d] must be a group name", i, j)
      end
    end
  end
  return true
end

local function strings(v)
  if type(v) ~= "table" then return false, "must be a list of package names" end
  for i, p in ipairs(v) do
    if type(p) ~= "string" or not p:match("^[a-z0-9][a-z0-9+.%-]*$") then
      return false, string.format("[%d] = %s is not a Debian package name", i, tostring(p))
    end
  end
  return true
end

local build_opts = {
  suite = "string", packages = strings, size = "string|number", root_password = "string",
  hostname = "string", users = validate_users, out = "string", mirror = "string",
  kernel_package = "string", network = "boolean", disable_auto_upgrades = "boolean",
  memory = "string", force = "boolean", append = "string",
}

-- The static ROI helper every image gets as /usr/local/bin/qshell-roi.
local function roi_helper(what)
  local path = paths.roi_helper()
  if not files.is_file(path) then
    errors.raise { class = "BuildFailed", command = what,
                   desc = "no qshell-roi helper at " .. path,
                   hint = "`make` builds build/roi/qshell-roi (or set QSHELL_ROI_HELPER)" }
  end
  return path
end

local function key_of(opts)
  local parts = { "roi=" .. require("qshell.hash").sha256(roi_helper("qemu.image.build")), "layout=" .. LAYOUT, "suite=" .. opts.suite, "size=" .. opts.bytes,
                  "mirror=" .. (opts.mirror or ""), "kernel=" .. opts.kernel_package,
                  "hostname=" .. opts.hostname, "root_password=" .. (opts.root_password or ""),
                  "network=" .. tostring(opts.network), "noupgrades=" .. tostring(opts.disable_auto_upgrades),
                  "append=" .. (opts.append or ""), "memory=" .. (opts.memory or "") }
  local pk = {}
  for _, p in ipairs(opts.packages) do pk[#pk + 1] = p end
  table.sort(pk)
  parts[#parts + 1] = "packages=" .. table.concat(pk, ",")
  for _, u in ipairs(opts.users) do
    parts[#parts + 1] = string.format("user=%s:%s:%s:%s:%s", u.name, u.password or "", table.concat(u.groups or {}, ","),
                                      u.shell or "", tostring(u.uid or ""))
  end
  return table.concat(parts, "\n") .. "\n"
end

-- mmdebstrap's reason, in a sentence, with the fix.
local function build_failure(st, opts)
  local text = st.stderr .. "\n" .. st.stdout
  local missing = text:match("Unable to locate package ([%w+.%-]+)") or
                  text:match("Package ([%w+.%-]+) has no installation candidate") or
                  text:match("E: Package '([%w+.%-]+)' has no installation candidate")
  if missing then
    errors.raise { class = "BuildFailed", command = "qemu.image.build",
                   desc = string.format("package %s does not exist in %s (mmdebstrap: %s)", missing, opts.suite,
                                        (text:match("(E: [^\n]*)") or "unable to locate it")),
                   hint = "check the name with `apt-cache policy " .. missing .. "` (packages=)" }
  end
  if text:find("Failed to fetch") or text:find("Could not resolve") or text:find("Temporary failure resolving")
     or text:find("Connection refused") or text:find("Could not connect") or text:find("Unable to connect") then
    errors.raise { class = "BuildFailed", command = "qemu.image.build",
                   desc = "the package mirror cannot be reached: " ..
                          (text:match("(W: Failed to fetch[^\n]*)") or text:match("(E: Failed to fetch[^\n]*)") or
                           text:match("([^\n]*Could not[^\n]*)") or text:match("([^\n]*resolv[^\n]*)") or ""),
                   hint = "mirror= names another one (e.g. a local apt-cacher); the host's apt-get update must work" }
  end
  if text:find("Release' does not have a Release file") or text:find("does not have a Release file") or
     text:find("cannot find suite") or text:find("unable to find a suite") then
    errors.raise { class = "BuildFailed", command = "qemu.image.build",
                   desc = "the mirror has no suite " .. opts.suite, hint = "suite= is a Debian codename: bookworm, trixie, ..." }
  end
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    if line:find("^E:") or line:find("error") then lines[#lines + 1] = line end
  end
  if #lines == 0 then
    for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  end
  errors.raise { class = "BuildFailed", command = "qemu.image.build",
                 desc = "mmdebstrap " .. st.desc .. ":\n" .. table.concat(lines, "\n", math.max(1, #lines - 9)) }
end

-- A package name that does not exist, found in a second, not after
-- mmdebstrap's minute: when the suite is the host's own and no mirror= is
-- given, the host's apt lists know the same packages (when they are fresh:
-- they must know systemd-sysv).
local function precheck_packages(opts, what)
  if opts.mirror or #opts.packages == 0 or not run.which("apt-cache") then return end
  local rel = files.read("/etc/os-release") or ""
  if rel:match("VERSION_CODENAME=([%w%-]+)") ~= opts.suite then return end
  local argv = { "apt-cache", "policy", "systemd-sysv" }
  for _, p in ipairs(opts.packages) do argv[#argv + 1] = p end
  local st = run.run(argv, { command = what })
  if st.code ~= 0 then return end
  local known = {}
  local name
  for line in st.stdout:gmatch("[^\n]+") do
    local n = line:match("^(%S+):$")
    if n then name = n end
    local cand = line:match("^%s+Candidate: (.+)$")
    if name and cand then known[name] = cand ~= "(none)" end
  end
  if not known["systemd-sysv"] then return end  -- stale or empty lists: let mmdebstrap say
  for _, p in ipairs(opts.packages) do
    if not known[p] then
      errors.raise { class = "BuildFailed", command = what,
                     desc = string.format("package %s does not exist in %s (the host's apt lists for %s do not know it)",
                                          p, opts.suite, opts.suite),
                     hint = "check the name with `apt-cache search " .. p .. "`; a package of another component " ..
                            "or archive needs mirror=" }
    end
  end
end

-- The newest of a list of "vmlinuz-VERSION" names: Debian version order
-- is close enough to comparing the numeric fields in turn.
local function newest(names, prefix)
  local best, bestv
  local function fields(v)
    local t = {}
    for n in v:gmatch("%d+") do t[#t + 1] = tonumber(n) end
    return t
  end
  for _, n in ipairs(names) do
    local v = n:sub(#prefix + 1)
    if n:sub(1, #prefix) == prefix and not v:find("%.old$") then
      if not best then
        best, bestv = n, v
      else
        local a, b = fields(v), fields(bestv)
        for i = 1, math.max(#a, #b) do
          if (a[i] or -1) ~= (b[i] or -1) then
            if (a[i] or -1) > (b[i] or -1) then best, bestv = n, v end
            break
          end
        end
      end
    end
  end
  return best, bestv
end

local function listdir(dir)
  return sys.listdir(dir) or {}
end

local function symlink(target, link, what)
  run.check({ "ln", "-sfn", target, link }, { command = what })
end

local function copy(src, dst, what)
  local data = files.slurp(src, what)
  files.write(dst, data, what)
end

-- Settings written into the installed tree before it becomes a disk.
local function configure(tree, opts, what)
  files.write(tree .. "/etc/hostname", opts.hostname .. "\n", what)
  files.write(tree .. "/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\t" .. opts.hostname ..
              "\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n", what)
  files.write(tree .. "/etc/fstab", "LABEL=" .. ROOT_LABEL .. "\t/\text4\terrors=remount-ro\t0\t1\n", what)
  -- systemd-firstboot would ask on the console otherwise
  files.write(tree .. "/etc/machine-id", "", what)
  copy(roi_helper(what), tree .. "/usr/local/bin/qshell-roi", what)
  sys.chmod(tree .. "/usr/local/bin/qshell-roi", tonumber("755", 8))
  local function chroot(argv, stdin)
    local a = { "chroot", tree }
    for _, w in ipairs(argv) do a[#a + 1] = w end
    return run.check(a, { command = what, stdin = stdin })
  end
  local function set_password(user, pw)
    local hash = password.hash_password(pw)
    local f = files.scratch_file("chpasswd")
    files.write(f, user .. ":" .. hash .. "\n", what)
    chroot({ "chpasswd", "-e" }, f)
    os.remove(f)
  end
  if opts.root_password then
    set_password("root", opts.root_password)
  else
    chroot({ "passwd", "-d", "root" })  -- no password: login asks for none
  end
  for _, u in ipairs(opts.users) do
    local argv = { "useradd", "-m", "-s", u.shell or "/bin/bash" }
    if u.uid then argv[#argv + 1] = "-u"; argv[#argv + 1] = tostring(u.uid) end
    if u.groups and #u.groups > 0 then argv[#argv + 1] = "-G"; argv[#argv + 1] = table.concat(u.groups, ",") end
    argv[#argv + 1] = u.name
    local a = { "chroot", tree }
    for _, w in ipairs(argv) do a[#a + 1] = w end
    local st = run.run(a, { command = what })
    if st.code ~= 0 then
      errors.raise { class = "BuildFailed", command = what,
                     desc = string.format("cannot add user %s: %s", u.name, (st.stderr:gsub("%s+$", ""))) }
    end
    if u.password then set_password(u.name, u.password) end
  end
  if files.is_file(tree .. "/usr/sbin/locale-gen") then
    -- The locale cloud images have (and cloud-init sets: update-locale
    -- refuses a locale that is not generated).
    local gen = files.read(tree .. "/etc/locale.gen") or ""
    files.write(tree .. "/etc/locale.gen", gen .. "en_US.UTF-8 UTF-8\n", what)
    chroot({ "locale-gen" })
  end
  if opts.network then
    -- systemd-networkd with DHCP on every ethernet link: `net=true` on
    -- qemu.launch gives the guest 10.0.2.15 from QEMU's user network.
    files.mkdir_p(tree .. "/etc/systemd/network", what)
    files.write(tree .. "/etc/systemd/network/80-qshell-dhcp.network",
                "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n", what)
    local wants = tree .. "/etc/systemd/system/multi-user.target.wants"
    files.mkdir_p(wants, what)
    symlink("/lib/systemd/system/systemd-networkd.service", wants .. "/systemd-networkd.service", what)
  end
  if opts.disable_auto_upgrades then
    for _, t in ipairs { "apt-daily.timer", "apt-daily-upgrade.timer" } do
      os.remove(tree .. "/etc/systemd/system/timers.target.wants/" .. t)
      symlink("/dev/null", tree .. "/etc/systemd/system/" .. t, what)
    end
  end
end

local function write_description(out, d, what)
  local lines = { "-- written by qemu.image.build: the guest's description (qemu.guest.load reads it)", "return {" }
  local keys = {}
  for k in pairs(d) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = d[k]
    if type(v) == "table" then
      local items = {}
      for _, x in ipairs(v) do items[#items + 1] = string.format("%q", x) end
      lines[#lines + 1] = string.format("  %s = { %s },", k, table.concat(items, ", "))
    elseif type(v) == "string" then
      lines[#lines + 1] = string.format("  %s = %q,", k, v)
    else
      lines[#lines + 1] = string.format("  %s = %s,", k, tostring(v))
    end
  end
  lines[#lines + 1] = "}"
  files.write(out .. "/guest.lua", table.concat(lines, "\n") .. "\n", what)
end

---@api qemu.image.build qemu.image.build([options]) -> guest
--- Build a real, bootable Debian system disk from the distribution's packages, and the guest that boots it.
---
--- mmdebstrap installs the suite (variant `apt`, plus systemd-sysv, udev, dbus, iproute2, initramfs-tools,
--- e2fsprogs, the kernel package and `packages`; `locales` with `cloud-init`) into a directory; qshell
--- writes its fstab, hostname, hosts, passwords (SHA-512 crypt), users (`useradd -m` in the tree), a
--- systemd-networkd DHCP setup for every ethernet link (`network=true`; pairs with `net=` on
--- `qemu.launch`), masks the apt timers (`disable_auto_upgrades=true`) and installs
--- `/usr/local/bin/qshell-roi` (the region-of-interest marker); `qemu.disk.populate` makes the tree a qcow2
--- with an MBR and one ext4 partition labelled `qshell-root` (no nbd, no mount, no libguestfs). Beside
--- it go the tree's kernel (`vmlinuz`), its `initrd.img`, and `guest.lua`, the description
--- `qemu.guest.load` reads. The guest boots with `root=LABEL=qshell-root console=ttyS0 nokaslr` (the
--- serial getty on ttyS0 comes from `console=`).
---
--- The result is cached by its inputs, in `out` or in `~/.cache/qshell/images/SUITE-HASH` (delete what you
--- no longer use): the same inputs return at once (no root needed then), `force=true` rebuilds. A build is
--- made beside `out` and moved into place whole, so a failed or interrupted one leaves `out` as it was.
--- Rebuilding a disk that overlays or checkpoints qshell made still use is refused (they would read the
--- new disk's clusters) unless `force=true`. A package that does not exist, a mirror that cannot be
--- reached and a suite the mirror lacks are `BuildFailed` errors that say so (a package name the host's
--- apt lists do not know, for the host's own suite, is refused before mmdebstrap runs). On a terminal a
--- progress line shows mmdebstrap's step.
---
--- Building takes a few minutes (about 2.5) and needs root (mmdebstrap's root mode, so that files belong
--- to root in the image); the image boots without root.
---
---     local g = qemu.image.build { packages = { "build-essential" }, root_password = "secret", hostname = "exp" }
---     local vm <close> = qemu.guest.launch { guest = g, net = true, smp = 2 }
---     print(vm.console:run("systemctl is-system-running"))   --> "running", 0
---
---@param options? table  every key is optional:
---   `suite=` string, default `"bookworm"`: the Debian codename;
---   `packages=` string[], default `{}`: more packages to install;
---   `size=` integer|string, default `"2G"`: the system disk's size, at least 512M;
---   `root_password=` string: root's password (non-empty, no newline); without it root has none (the login asks for none);
---   `hostname=` string, default `"debian"`: letters, digits and `-`, at most 63 (one label, no dots);
---   `users=` table: `{{name=, password=, groups={...}, shell="/bin/bash", uid=}, ...}`, accounts made with
---   `useradd -m` (a password is non-empty, without a newline or a colon; the groups must exist in the image);
---   `network=` boolean, default true: DHCP on every ethernet link with systemd-networkd;
---   `disable_auto_upgrades=` boolean, default true: mask `apt-daily.timer` and `apt-daily-upgrade.timer`;
---   `mirror=` string: the Debian mirror; default mmdebstrap's (deb.debian.org, with the suite's -updates and -security);
---   `kernel_package=` string, default `"linux-image-cloud-amd64"`: the kernel's package;
---   `memory=` string, default `"1G"`: the guest's memory, as `qemu.guest.launch` will give it;
---   `append=` string: more kernel command line, after `root=LABEL=qshell-root console=ttyS0 nokaslr`;
---   `out=` string: the directory to build into (new, empty, or an earlier build's); default in qshell's cache;
---   `force=` boolean, default false: rebuild even when the inputs have not changed, and even when overlays use the disk.
---@return table guest  the guest in `out`, as `qemu.guest.load(out)` reads it: `{kernel=, initrd=, system=, append=,
---   memory=, user="root", password=, login_prompt="login: ", prompt="# ", kernel_version=, suite=, hostname=,
---   packages=, dir=}`, to pass as `qemu.guest.launch{guest=}`
---@error BadArgument  an unknown option or a wrong type, a suite that is not a codename, a bad host name, package
---   name, user, password or size
---@error FileExists  `out` holds files that are not an image `qemu.image.build` made
---@error MissingTool  mmdebstrap, mkfs.ext4, sfdisk or qemu-img is not installed
---@error PermissionDenied  not root (an image that is built already needs none)
---@error ImageInUse  the disk in `out` is the backing file of overlays qshell made (named), without `force=true`
---@error BuildFailed  mmdebstrap failed (no such package, no mirror, no such suite: said so), a user could not be
---   added, the kernel package installed no kernel or initrd, no qshell-roi helper
---@error CommandFailed  a command run in the tree (chpasswd, passwd, locale-gen, ...) failed
---@error DiskError  making the disk failed
---@error Timeout  mmdebstrap ran for more than an hour
---@error Interrupted  Ctrl-C (`out` is left as it was)
function M.build(opts)
  local what = "qemu.image.build"
  local given = check.options(what, opts or {}, build_opts)
  opts = {}  -- the caller's table stays as it was
  for key, v in pairs(given) do opts[key] = v end
  opts.suite = opts.suite or "bookworm"
  if not opts.suite:match("^[a-z][a-z0-9%-]*$") then check.bad(what, "suite %q is not a codename", opts.suite) end
  opts.packages = opts.packages or {}
  opts.users = opts.users or {}
  opts.hostname = opts.hostname or "debian"
  if not opts.hostname:match("^[%w][%w%-]*$") or #opts.hostname > 63 then
    check.bad(what, "hostname %q is not a host name (letters, digits, '-')", opts.hostname)
  end
  if opts.root_password and (opts.root_password == "" or opts.root_password:find("[\r\n]")) then
    check.bad(what, "root_password must be non-empty, with no newline")
  end
  opts.kernel_package = opts.kernel_package or "linux-image-cloud-amd64"
  if opts.network == nil then opts.network = true end
  if opts.disable_auto_upgrades == nil then opts.disable_auto_upgrades = true end
  opts.bytes = disk.parse_size(opts.size or "2G", what)
  if opts.bytes < (512 << 20) then check.bad(what, "size must be at least 512M for a Debian system") end
  if opts.memory then disk.parse_size(opts.memory, what) end

  local key = key_of(opts)
  local keyfile = files.scratch_file("image-key")
  files.write(keyfile, key, what)
  local digest = require("qshell.hash").sha256(keyfile)
  os.remove(keyfile)
  local out = opts.out or (paths.cache_dir() .. "/images/" .. opts.suite .. "-" .. digest:sub(1, 12))
  out = files.abspath(out)
  local stamp = out .. "/inputs.stamp"
  if not opts.force and files.read(stamp) == key and files.is_file(out .. "/guest.lua") then
    return require("qemu.guest").load(out)
  end
  if files.is_dir(out) and not files.is_file(stamp) and #listdir(out) > 0 then
    errors.raise { class = "FileExists", command = what,
                   desc = out .. " exists and is not an image qemu.image.build made; nothing was changed",
                   hint = "name a new or empty directory with out=" }
  end
  for _, tool in ipairs { "mmdebstrap", "mkfs.ext4", "sfdisk", "qemu-img" } do
    if not run.which(tool) then
      errors.raise { class = "MissingTool", command = what, desc = tool .. " is not installed",
                     hint = "apt-get install mmdebstrap e2fsprogs fdisk qemu-utils" }
    end
  end
  if run.check({ "id", "-u" }, { command = what }):match("^%d+") ~= "0" then
    errors.raise { class = "PermissionDenied", command = what,
                   desc = "building a system disk needs root (mmdebstrap's root mode, to own the files as root)",
                   hint = "run it once as root (sudo qshell run ...); the image it makes needs no root to boot" }
  end
  precheck_packages(opts, what)
  -- A rebuild replaces the disk that overlays and checkpoints may read
  -- their unchanged clusters from.
  if files.is_file(out .. "/system.qcow2") and not opts.force then
    local users = require("qemu.image.backing").overlays_of(out .. "/system.qcow2")
    if #users > 0 then
      errors.raise { class = "ImageInUse", command = what,
                     desc = string.format("%s/system.qcow2 is the backing file of %s: rebuilding it would change what " ..
                                          "they read (corrupting them); nothing was changed", out, table.concat(users, ", ")),
                     hint = "build into another out=, or pass force=true when those overlays can go" }
    end
  end
  -- Built beside out and moved into place whole: a failed or interrupted
  -- build leaves out as it was.
  local work = out .. ".qshell-build"
  run.run({ "rm", "-rf", "--", work }, { command = what })
  files.mkdir_p(work, what)
  local function drop_work()
    run.run({ "rm", "-rf", "--", work }, { command = what })
  end
  local tree = files.scratch() .. "/image-tree"
  local pk = {}
  for _, p in ipairs(BASE_PACKAGES) do
    if p ~= "linux-image-cloud-amd64" then pk[#pk + 1] = p end
  end
  pk[#pk + 1] = opts.kernel_package
  for _, p in ipairs(opts.packages) do
    pk[#pk + 1] = p
    for _, c in ipairs(COMPANIONS[p] or {}) do pk[#pk + 1] = c end
  end
  local argv = { "mmdebstrap", "--mode=root", "--variant=apt", "--include=" .. table.concat(pk, ","),
                 opts.suite, tree }
  if opts.mirror then argv[#argv + 1] = opts.mirror end
  local tty = sys.isatty and sys.isatty(2)
  if tty then io.stderr:write(string.format("qshell: building a %s system disk in %s (a few minutes, once)\n",
                                            opts.suite, out)) end
  local empty = files.scratch_file("stdin")
  files.write(empty, "", what)
  local progress
  if tty then
    progress = function(tail)
      local last
      for line in tail:gmatch("[^\n]+") do
        if line:match("^I: ") then last = line:sub(4) end
      end
      if last then io.stderr:write("\r\27[K  mmdebstrap: " .. last:sub(1, 70)) end
    end
  end
  local job = run.start(argv, { command = what, stdin = empty, progress = progress })
  local st = job:finish(3600)
  if tty then io.stderr:write("\r\27[K") end
  os.remove(empty)
  if st.code ~= 0 then
    run.run({ "rm", "-rf", tree }, { command = what })
    drop_work()
    build_failure(st, opts)
  end
  local ok, err = pcall(function()
    configure(tree, opts, what)
    local boot = listdir(tree .. "/boot")
    local kname, kver = newest(boot, "vmlinuz-")
    if not kname then
      errors.raise { class = "BuildFailed", command = what,
                     desc = "the installed system has no /boot/vmlinuz-*: kernel_package=" .. opts.kernel_package ..
                            " installed no kernel" }
    end
    if not files.is_file(tree .. "/boot/initrd.img-" .. kver) then
      errors.raise { class = "BuildFailed", command = what, desc = "the system has no initrd for " .. kver,
                     hint = "initramfs-tools is in every image; did a package remove it?" }
    end
    copy(tree .. "/boot/" .. kname, work .. "/vmlinuz", what)
    copy(tree .. "/boot/initrd.img-" .. kver, work .. "/initrd.img", what)
    disk.populate(work .. "/system.qcow2", { from = tree, fs = "ext4", size = opts.bytes, partition = true,
                                             label = ROOT_LABEL })
    write_description(work, {
      kernel = "vmlinuz", initrd = "initrd.img", system = "system.qcow2",
      append = "root=LABEL=" .. ROOT_LABEL .. " console=ttyS0 nokaslr" .. (opts.append and (" " .. opts.append) or ""),
      memory = opts.memory or "1G", user = "root", password = opts.root_password,
      login_prompt = "login: ", prompt = "# ", kernel_version = kver, suite = opts.suite,
      hostname = opts.hostname, packages = opts.packages,
    }, what)
    files.write(work .. "/inputs.stamp", key, what)
    if files.is_dir(out) then
      local old = out .. ".qshell-old"
      run.run({ "rm", "-rf", "--", old }, { command = what })
      local rok, rerr, rerr_code = sys.rename(out, old)
      if not rok then errors.from_code(what, rerr, rerr_code) end
      rok, rerr, rerr_code = sys.rename(work, out)
      if not rok then
        sys.rename(old, out)
        errors.from_code(what, rerr, rerr_code)
      end
      run.run({ "rm", "-rf", "--", old }, { command = what })
    else
      local rok, rerr, rerr_code = sys.rename(work, out)
      if not rok then errors.from_code(what, rerr, rerr_code) end
    end
  end)
  run.run({ "rm", "-rf", tree }, { command = what })
  if not ok then
    drop_work()
    error(err, 0)
  end
  return require("qemu.guest").load(out)
end

-- ---- reading a kernel out of an image ----

local kernel_opts = { out = "string", partition = check.positive }

---@api qemu.image.kernel qemu.image.kernel(image [, options]) -> kernel
--- The kernel and initrd inside any Linux image, copied out so that the image boots with `-kernel`.
---
--- The newest `/boot/vmlinuz-*` and its initrd (`initrd.img-V`, `initramfs-V.img` or `initrd-V`) are read offline
--- with debugfs, without root or a mount, from any image format `qemu-img` reads: from the root file system's
--- `/boot`, or from a separate ext `/boot` partition. Booting a distribution image with `-kernel` and `nokaslr`
--- avoids its bootloader and is much faster under TCG.
---
---     local k = qemu.image.kernel("debian-12-nocloud-amd64.qcow2")
---     local vm <close> = qemu.launch { kernel = k.kernel, initrd = k.initrd, append = k.append,
---                                      disks = { qemu.disk.overlay("debian-12-nocloud-amd64.qcow2", "exp.qcow2") } }
---
---@param image string  the image file
---@param options? table  every key is optional:
---   `out=` string: the directory to copy the files to (made if missing); default a directory in the shell's
---   temporary directory;
---   `partition=` integer: read only this partition (1-based); default every ext partition, the root found by its `/etc`.
---@return table kernel  `{kernel=, initrd=, version=, root=, device=, partition=, append=}`: `kernel` the copied
---   `vmlinuz-VERSION`, `initrd` the copied initrd (nil when the image has none), `version` the kernel's version;
---   `root` is `UUID=...` of the root file system when there is an initrd (its udev finds the disk whatever it is
---   called), else the device; `device` the root's name as the first disk (`/dev/sda1`, `/dev/sda` unpartitioned);
---   `partition` the root's partition number (nil unpartitioned); `append` is `root=... console=ttyS0 nokaslr`
---@error BadArgument  an unknown option or a wrong type, no such image
---@error MissingTool  debugfs is not installed (package e2fsprogs)
---@error NotExt  the image (or `partition`) holds no ext2/3/4 file system
---@error NoKernel  no ext file system of the image has a `/boot/vmlinuz-*`
---@error CustomizeFailed  debugfs could not read the kernel or the initrd out of the image
---@error DiskError  `qemu-img` could not read the image
---@error CommandFailed  converting the image to raw failed
function M.kernel(image_path, opts)
  local what = "qemu.image.kernel"
  check.arg(what, 1, image_path, "string")
  opts = check.options(what, opts, kernel_opts, 2)
  if not sys.stat(image_path) then
    errors.raise { class = "BadArgument", command = what, desc = "no such image: " .. image_path }
  end
  if not run.which("debugfs") then
    errors.raise { class = "MissingTool", command = what, desc = "debugfs is not installed", hint = "apt-get install e2fsprogs" }
  end
  local report = inspect.check(image_path)
  local fmt = report.format
  local raw = image_path
  if fmt ~= "raw" then
    raw = files.scratch_file("kernel", ".raw")
    run.check({ "qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", image_path, raw }, { command = what })
  end
  local ok, res = pcall(function()
    local cands = {}
    if #report.partitions == 0 then
      if report.filesystem and report.filesystem:match("^ext") then cands[1] = { number = 0, offset = 0 } end
    else
      for _, p in ipairs(report.partitions) do
        if p.fs and p.fs:match("^ext") and (not opts.partition or p.number == opts.partition) then
          cands[#cands + 1] = p
        end
      end
    end
    if #cands == 0 then
      errors.raise { class = "NotExt", command = what,
                     desc = image_path .. " has no ext2/3/4 filesystem" ..
                            (opts.partition and (" in partition " .. opts.partition) or "") .. " to read /boot from" }
    end
    local function ls(fs, dir)
      local names = {}
      for _, e in ipairs(dfs.list_dir(fs, dir, what)) do names[#names + 1] = e.name end
      return names
    end
    local function fs_uuid(off)
      local f, err, err_code = io.open(raw, "rb")
      if not f then errors.from_code(what, err, err_code) end
      f:seek("set", off + 1024 + 0x68)
      local u = f:read(16) or ""
      f:close()
      if #u ~= 16 then errors.raise { class = "NotExt", command = what, desc = "cannot read the root's superblock" } end
      local hex = u:gsub(".", function(c) return string.format("%02x", c:byte()) end)
      return hex:sub(1, 8) .. "-" .. hex:sub(9, 12) .. "-" .. hex:sub(13, 16) .. "-" .. hex:sub(17, 20) .. "-" .. hex:sub(21)
    end
    -- The root: the filesystem with /etc and /sbin/init (or /usr); /boot:
    -- the root's /boot, or a separate filesystem holding vmlinuz-*.
    local root, bootfs, bootdir
    for _, p in ipairs(cands) do
      local fs = raw .. "?offset=" .. p.offset
      local top = ls(fs, "/")
      local set = {}
      for _, n in ipairs(top) do set[n] = true end
      if set.etc and (set.sbin or set.usr) and not root then root = p end
      if not bootfs then
        if set.boot and newest(ls(fs, "/boot"), "vmlinuz-") then bootfs, bootdir = p, "/boot"
        elseif newest(top, "vmlinuz-") then bootfs, bootdir = p, "" end
      end
    end
    if not bootfs then
      errors.raise { class = "NoKernel", command = what,
                     desc = image_path .. " has no /boot/vmlinuz-* on any ext filesystem",
                     hint = "an image without a kernel needs one from elsewhere: qemu.guest.default().kernel, or qemu.kernel.build" }
    end
    local fs = raw .. "?offset=" .. bootfs.offset
    local names = ls(fs, bootdir == "" and "/" or bootdir)
    local kname, kver = newest(names, "vmlinuz-")
    local iname
    for _, n in ipairs(names) do
      if n == "initrd.img-" .. kver or n == "initramfs-" .. kver .. ".img" or n == "initrd-" .. kver then iname = n end
    end
    local out = opts.out and files.abspath(opts.out) or files.scratch() .. "/kernel"
    files.mkdir_p(out, what)
    local function dump(name, dst)
      os.remove(dst)
      local st = run.run({ "debugfs", "-R", "dump " .. dfs.quote(bootdir .. "/" .. name) .. " " .. dfs.quote(dst), fs },
                         { command = what })
      local s = sys.stat(dst)
      if st.code ~= 0 or not s or s.size == 0 then
        errors.raise { class = "CustomizeFailed", command = what,
                       desc = "cannot read " .. bootdir .. "/" .. name .. " from " .. image_path .. ": " .. st.stderr }
      end
    end
    local r = { version = kver, kernel = out .. "/vmlinuz-" .. kver }
    dump(kname, r.kernel)
    if iname then
      r.initrd = out .. "/" .. iname
      dump(iname, r.initrd)
    end
    root = root or bootfs
    r.partition = root.number > 0 and root.number or nil
    r.device = "/dev/sda" .. (root.number > 0 and root.number or "")
    -- A UUID needs the initrd's udev; without an initrd the kernel itself
    -- must find the root, by device name.
    r.root = r.initrd and ("UUID=" .. fs_uuid(root.offset)) or r.device
    r.append = "root=" .. r.root .. " console=ttyS0 nokaslr"
    return r
  end)
  if raw ~= image_path then os.remove(raw) end
  if not ok then error(res, 0) end
  return res
end

return M
