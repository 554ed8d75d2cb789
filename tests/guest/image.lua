-- qemu.image: customizing a system image without root or libguestfs, and
-- checking a user-supplied image.
local T = require "t"

local tmp = T.tmpdir()
local g = qemu.guest.default()

-- The image's root filesystem, offline: a raw copy for debugfs and e2fsck
-- (the default guest's root is partition 1, at 1 MiB).
local function offline(img)
  local raw = tmp .. "/readback.raw"
  os.remove(raw)
  T.eq((T.sh("qemu-img convert -O raw '" .. img .. "' " .. raw)), 0)
  return raw .. "?offset=1048576"
end
local function cat(fs, p)
  local _, out = T.sh("debugfs -R 'cat " .. p .. "' '" .. fs .. "'")
  return out
end
local function stat(fs, p)
  local _, out, err = T.sh("debugfs -R 'stat " .. p .. "' '" .. fs .. "'")
  return out .. err
end
local function link_target(fs, p)
  return stat(fs, p):match('Fast link dest: "(.-)"\n')
end
local function clean(fs)
  local code, out = T.sh("e2fsck -fn '" .. fs .. "'")
  T.eq(code, 0, "e2fsck -fn: " .. out)
end
local function sum(path) return select(2, T.sh("sha256sum < '" .. path .. "'")) end

T.test("check: format, compat, partitions and hints of the default guest's disk", function()
  local r = qemu.image.check(g.system)
  T.eq(r.format, "qcow2")
  T.eq(r.compat, "1.1")
  T.eq(r.table, "mbr")
  T.eq(#r.partitions, 1)
  T.eq(r.partitions[1].offset, 1048576)
  T.eq(r.partitions[1].fs, "ext4")
  T.eq(r.partitions[1].type, "linux")
  local all = table.concat(r.hints, "\n")
  T.match(all, 'amend%(path, {compat="0.10"}%)')
  T.match(all, "TCG")
  local src = tmp .. "/flat-src"
  T.eq((T.sh("mkdir -p " .. src .. " && echo hi > " .. src .. "/f")), 0)
  local raw = qemu.disk.populate(tmp .. "/flat.img", { from = src, format = "raw", size = "8M" })
  local f = qemu.image.check(raw)
  T.eq(f.table, "none")
  T.eq(f.filesystem, "ext4")
  T.match(table.concat(f.hints, "\n"), "snapshots")
end)

T.test("customize: root password (with a colon) and a written file; boot and log in with it", function()
  local img = qemu.guest.overlay(tmp .. "/custom.qcow2")
  local before = qemu.disk.info(img)
  qemu.image.customize(img, {
    root_password = "new:pass word",
    write = { ["/root/notes/hello.txt"] = "written before first boot\n" },
    disable_auto_upgrades = true,
  })
  local after = qemu.disk.info(img)
  T.eq(after.backing, before.backing, "still an overlay of the same base")
  T.eq(after.compat, before.compat)
  clean(offline(img)) -- new directories made with no harm to their parents
  local vm <close> = qemu.guest.launch { system = img, login = false }
  -- the old password is refused, the new one works
  vm.console:expect(g.login_prompt, { timeout = 60, plain = true })
  vm.console:send("root\r")
  vm.console:expect("Password: ", { plain = true })
  vm.console:send(g.password .. "\r")
  vm.console:expect("Login incorrect", { timeout = 20, plain = true })
  vm.console:login { user = "root", password = "new:pass word" }
  T.eq(vm.console:run("cat /root/notes/hello.txt"), "written before first boot")
  T.match(vm.console:run("ls -l /etc/shadow"), "^%-rw")
  T.match(vm.console:run("cat /etc/apt/apt.conf.d/20auto-upgrades"), 'Unattended%-Upgrade "0"')
  T.eq(vm.console:run("readlink /etc/systemd/system/apt-daily.timer"), "/dev/null")
end)

T.test("customize keeps a raw image raw and edits it in place", function()
  local raw = tmp .. "/sys.raw"
  assert(T.sh("qemu-img convert -O raw " .. g.system .. " " .. raw) == 0)
  local ino = require("qshell.os").stat(raw)
  qemu.image.customize(raw, { write = { ["/etc/motd"] = "hello raw\n" } })
  T.eq(qemu.disk.info(raw).format, "raw")
  local code, out = T.sh("debugfs -R 'cat /etc/motd' '" .. raw .. "?offset=1048576'")
  T.eq(code, 0)
  T.eq(out, "hello raw\n")
  T.eq(require("qshell.os").stat(raw).size, ino.size)
  clean(raw .. "?offset=1048576")
end)

T.test("customize writes only the changed clusters: an overlay of a big base stays small", function()
  -- a base with 96 MiB of data beside the root filesystem: a whole-image
  -- rewrite would copy it all into the overlay
  local base = tmp .. "/big-base.qcow2"
  T.eq((T.sh("qemu-img convert -O qcow2 " .. g.system .. " " .. base .. " && qemu-img resize -q " .. base ..
             " 256M && qemu-io -f qcow2 -c 'write -q -P 0xab 128M 96M' " .. base)), 0)
  T.ok(qemu.disk.info(base).actual_size > 96 << 20)
  local before = sum(base)
  local ov = qemu.disk.overlay(base, tmp .. "/big-over.qcow2")
  local empty = qemu.disk.info(ov).actual_size
  qemu.image.customize(ov, { write = { ["/etc/motd"] = "through the overlay\n" }, hostname = "small" })
  local info = qemu.disk.info(ov)
  T.eq(info.backing, base, "still an overlay of the same base")
  T.ok(info.actual_size < empty + (2 << 20), "the overlay grew by " .. (info.actual_size - empty) .. " bytes")
  T.eq(sum(base), before, "the base is unchanged")
  local fs = offline(ov)
  T.eq(cat(fs, "/etc/motd"), "through the overlay\n")
  T.eq(cat(fs, "/etc/hostname"), "small\n")
  clean(fs)
  -- the data outside the filesystem still comes from the base
  T.eq((T.sh("qemu-io -f qcow2 -r -c 'read -q -P 0xab 128M 96M' " .. ov)), 0)
end)

T.test("customize: host name, users, links and deletions, read back offline", function()
  local img = qemu.guest.overlay(tmp .. "/users.qcow2")
  qemu.image.customize(img, {
    write = { ["/etc/skel/.profile"] = "PS1='$ '\n", ["/etc/gone.txt"] = "x\n" },
    hostname = "exp-42.lab",
    users = {
      { name = "alice", password = "alice pw", groups = { "tty" }, shell = "/bin/sh" },
      { name = "bob", uid = 2001, home = "/srv/bob" },
    },
    symlinks = { ["/etc/motd"] = "/etc/issue", ["/usr/local/bin/sh2"] = "/bin/sh" },
  })
  local fs = offline(img)
  clean(fs)
  T.eq(cat(fs, "/etc/hostname"), "exp-42.lab\n")
  local hosts = cat(fs, "/etc/hosts")
  T.match(hosts, "\n127%.0%.1%.1\texp%-42%.lab\texp%-42\n")
  T.ok(not hosts:find("qshell%-guest"), "the old name is gone from /etc/hosts")
  T.match(hosts, "^127%.0%.0%.1\tlocalhost\n")
  local passwd = cat(fs, "/etc/passwd")
  T.match(passwd, "\nalice:x:1000:1000::/home/alice:/bin/sh\n")
  T.match(passwd, "\nbob:x:2001:2001::/srv/bob:/bin/sh\n", "no /bin/bash in the image: /bin/sh")
  local shadow = cat(fs, "/etc/shadow")
  T.match(shadow, "\nalice:%$6%$[^:]+:%d+:0:99999:7:::\n")
  T.match(shadow, "\nbob:!:%d+:0:99999:7:::\n", "no password: locked")
  local group = cat(fs, "/etc/group")
  T.match(group, "\ntty:x:5:alice\n")
  T.match(group, "\nalice:x:1000:\n")
  T.match(group, "\nbob:x:2001:\n")
  T.match(stat(fs, "/home/alice"), "Type: directory%s+Mode:%s+0755")
  T.match(stat(fs, "/home/alice"), "User:%s+1000%s+Group:%s+1000")
  T.match(stat(fs, "/srv/bob"), "User:%s+2001%s+Group:%s+2001")
  T.eq(cat(fs, "/home/alice/.profile"), "PS1='$ '\n", "copied from /etc/skel")
  T.match(stat(fs, "/home/alice/.profile"), "User:%s+1000%s+Group:%s+1000")
  T.eq(link_target(fs, "/etc/motd"), "/etc/issue")
  T.eq(link_target(fs, "/usr/local/bin/sh2"), "/bin/sh")
  -- a second call: a link replaces a link; deletions of a file, a link and
  -- an empty directory
  qemu.image.customize(img, {
    symlinks = { ["/etc/motd"] = "/etc/os-release" },
    delete = { "/etc/gone.txt", "/usr/local/bin/sh2", "/usr/local/bin" },
  })
  fs = offline(img)
  clean(fs)
  T.eq(link_target(fs, "/etc/motd"), "/etc/os-release")
  T.match(stat(fs, "/etc/gone.txt"), "not found")
  T.match(stat(fs, "/usr/local/bin"), "not found")
  T.match(stat(fs, "/usr/local"), "Type: directory")
end)

local UNIT = [[
[Unit]
Description=a unit for the test

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
RequiredBy=other.target
Alias=demo-alias.service
Also=helper.socket
]]

T.test("customize: systemd units enabled, disabled and masked offline", function()
  local img = qemu.guest.overlay(tmp .. "/units.qcow2")
  -- the unit files written in the same call, one in /usr/lib (where
  -- /lib/systemd/system is missing)
  qemu.image.customize(img, {
    write = { ["/lib/systemd/system/demo.service"] = UNIT,
              ["/usr/lib/systemd/system/helper.socket"] = "[Socket]\nListenStream=1\n" ..
                                                          "[Install]\nWantedBy=sockets.target\n",
              ["/lib/systemd/system/tpl@.service"] = "[Service]\nExecStart=/bin/true\n[Install]\n" ..
                                                    "WantedBy=multi-user.target\nDefaultInstance=one\n" },
    enable = { "demo.service", "tpl@.service", "tpl@two.service" },
    mask = { "apt-daily.timer" },
  })
  local fs = offline(img)
  clean(fs)
  local W = "/etc/systemd/system/"
  T.eq(link_target(fs, W .. "multi-user.target.wants/demo.service"), "/lib/systemd/system/demo.service")
  T.eq(link_target(fs, W .. "other.target.requires/demo.service"), "/lib/systemd/system/demo.service")
  T.eq(link_target(fs, W .. "demo-alias.service"), "/lib/systemd/system/demo.service")
  T.eq(link_target(fs, W .. "sockets.target.wants/helper.socket"), "/usr/lib/systemd/system/helper.socket",
       "Also= enabled it too")
  T.eq(link_target(fs, W .. "multi-user.target.wants/tpl@one.service"), "/lib/systemd/system/tpl@.service")
  T.eq(link_target(fs, W .. "multi-user.target.wants/tpl@two.service"), "/lib/systemd/system/tpl@.service")
  T.eq(link_target(fs, W .. "apt-daily.timer"), "/dev/null")
  -- enabling again changes nothing; disabling removes every link
  qemu.image.customize(img, { enable = { "demo.service" } })
  qemu.image.customize(img, { disable = { "demo.service" } })
  fs = offline(img)
  clean(fs)
  for _, p in ipairs { "multi-user.target.wants/demo.service", "other.target.requires/demo.service",
                       "demo-alias.service", "sockets.target.wants/helper.socket" } do
    T.match(stat(fs, W .. p), "not found", p)
  end
  T.eq(link_target(fs, W .. "multi-user.target.wants/tpl@one.service"), "/lib/systemd/system/tpl@.service")
  T.eq(link_target(fs, W .. "apt-daily.timer"), "/dev/null", "disable leaves a mask alone")
  -- a masked unit is not enabled
  qemu.image.customize(img, { mask = { "demo.service" } })
  T.raises(function() qemu.image.customize(img, { enable = { "demo.service" } }) end, "CustomizeFailed", "masked")
end)

T.test("customize: bad input is refused and the image is unchanged", function()
  local img = qemu.guest.overlay(tmp .. "/refused.qcow2")
  qemu.image.customize(img, { users = { { name = "alice" } },
                              write = { ["/etc/systemd/system/static.service"] = "[Service]\nExecStart=/bin/true\n" } })
  local sum0 = sum(img)
  local function refused(opts, class, pattern)
    T.raises(function() qemu.image.customize(img, opts) end, class, pattern)
    T.eq(sum(img), sum0, "unchanged after " .. pattern)
  end
  refused({ hostnme = "x" }, "BadArgument", "did you mean 'hostname'")
  refused({ hostname = "-bad" }, "BadArgument", "not a host name")
  refused({ hostname = "a..b" }, "BadArgument", "not a host name")
  refused({ hostname = string.rep("a", 64) }, "BadArgument", "not a host name")
  refused({ enable = { "ssh" } }, "BadArgument", "not a systemd unit name")
  refused({ enable = { "x.service" }, disable = { "x.service" } }, "BadArgument", "both enable= and disable=")
  refused({ users = { { name = "Bad Name" } } }, "BadArgument", "not a user name")
  refused({ users = { { name = "carol", uid = 1.5 } } }, "BadArgument", "uid")
  refused({ users = { { name = "carol", shel = "/bin/sh" } } }, "BadArgument", "did you mean 'shell'")
  refused({ delete = { "etc/motd" } }, "BadArgument", "absolute")
  refused({ symlinks = { "/x" } }, "BadArgument", "absolute and plain")
  refused({ symlinks = { ["/x"] = "" } }, "BadArgument", "non%-empty")
  -- what only the image can tell: each refused before the first change,
  -- here with a valid edit in the same call
  local ok = { hostname = "never-written" }
  local function refused_with(opts, pattern)
    for k, v in pairs(ok) do opts[k] = v end
    refused(opts, "CustomizeFailed", pattern)
  end
  refused_with({ enable = { "missing.service" } }, "no unit file missing%.service")
  refused_with({ enable = { "static.service" } }, "static%.service has no %[Install%] section")
  refused_with({ disable = { "missing.service" } }, "no unit file missing%.service")
  refused_with({ users = { { name = "carol", groups = { "wheel" } } } }, "group wheel")
  refused_with({ users = { { name = "alice" } } }, "user alice already exists")
  refused_with({ users = { { name = "carol", uid = 1000 } } }, "uid 1000 of carol is taken by user alice")
  refused_with({ users = { { name = "tty" } } }, "a group named tty already exists")
  refused_with({ symlinks = { ["/etc/passwd"] = "/dev/null" } }, "/etc/passwd is a regular file")
  refused_with({ delete = { "/etc/no-such-file" } }, "/etc/no%-such%-file does not exist")
  refused_with({ delete = { "/etc" } }, "/etc is not empty")
  refused_with({ mask = { "static.service" } }, "masking would replace it")
  local fs = offline(img)
  T.match(cat(fs, "/etc/hostname"), "qshell%-guest")
end)

T.test("refusals: a running VM's image and its backing file, a registered base, force=", function()
  local base = qemu.guest.overlay(tmp .. "/base.qcow2")
  local top = qemu.disk.overlay(base, tmp .. "/top.qcow2")
  local sum0 = sum(base)
  do
    local vm <close> = qemu.launch { memory = "64M", disks = { top } }
    T.raises(function() qemu.image.customize(top, { hostname = "x" }) end, "ImageInUse", "running QEMU")
    -- QEMU holds the backing file too: opening it read-write fails on its lock
    local e = T.raises(function() qemu.image.customize(base, { hostname = "x", force = true }) end, "ImageInUse",
                       "running QEMU")
    T.match(e.hint, "quit that VM")
  end
  T.eq(sum(base), sum0)
  -- the VM is gone; top still depends on base
  local e = T.raises(function() qemu.image.customize(base, { hostname = "x" }) end, "ImageInUse",
                     "is the backing file of .*top%.qcow2: changing it corrupts")
  T.match(tostring(e), "customize .*top%.qcow2 instead, or pass force=true")
  T.eq(sum(base), sum0)
  qemu.image.customize(base, { hostname = "forced", force = true })
  T.eq(cat(offline(base), "/etc/hostname"), "forced\n")
  -- an overlay that is gone no longer holds its base
  os.remove(top)
  qemu.image.customize(base, { hostname = "free" })
  T.eq(cat(offline(base), "/etc/hostname"), "free\n")
  -- nor does one that was rebased away
  local other = qemu.disk.overlay(base, tmp .. "/other.qcow2")
  T.eq((T.sh("qemu-img rebase -u -b '' " .. other)), 0)
  qemu.image.customize(base, { hostname = "again" })
end)

T.test("bad input: newline in a password, not ext4, snapshots kept, packages without libguestfs", function()
  local img = qemu.guest.overlay(tmp .. "/bad.qcow2")
  T.raises(function() qemu.image.customize(img, { root_password = "a\nb" }) end, "BadArgument", "newline")
  T.raises(function() qemu.image.customize(img, { root_pasword = "x" }) end, "BadArgument", "did you mean 'root_password'")
  T.raises(function() qemu.image.customize(img, {}) end, "BadArgument", "nothing to do")
  T.raises(function() qemu.image.customize(tmp .. "/nope.img", { root_password = "x" }) end, "BadArgument", "no such image")
  local blank = qemu.disk.create(tmp .. "/blank.img", "8M", { format = "raw" })
  T.raises(function() qemu.image.customize(blank, { root_password = "x" }) end, "NotExt")
  if not require("qemu.util.run").which("virt-customize") then
    local e = T.raises(function() qemu.image.customize(img, { install = { "vim" } }) end, "MissingTool")
    T.match(e.hint, "libguestfs%-tools")
    -- a mixed call: the debugfs part does not run when the rest cannot
    local before = require("qshell.hash").sha256(img)
    e = T.raises(function() qemu.image.customize(img, { hostname = "mixed", install = { "vim" } }) end, "MissingTool")
    T.match(e.desc, "nothing was changed")
    T.eq(require("qshell.hash").sha256(img), before, "the image is as it was")
  end
  T.raises(function() qemu.image.customize(img, { install = { "vim" }, backend = "debugfs" }) end, "BadArgument")
  T.raises(function() qemu.image.customize(img, { hostname = "x", backend = "virt-customize" }) end, "BadArgument",
           "debugfs only")
  -- internal snapshots survive: only the changed clusters are written
  assert(T.sh("qemu-img snapshot -c keep " .. img) == 0)
  qemu.image.customize(img, { hostname = "after-snapshot" })
  T.eq(qemu.disk.snapshots(img)[1].tag, "keep")
  T.eq(cat(offline(img), "/etc/hostname"), "after-snapshot\n")
  assert(T.sh("qemu-img snapshot -a keep " .. img) == 0)
  T.match(cat(offline(img), "/etc/hostname"), "qshell%-guest")
end)

T.run()
