-- qemu.image: customizing a system image without root or libguestfs, and
-- checking a user-supplied image.
local T = require "t"

local tmp = T.tmpdir()
local g = qemu.guest.default()

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
  qemu.image.customize(raw, { write = { ["/etc/motd"] = "hello raw\n" } })
  T.eq(qemu.disk.info(raw).format, "raw")
  local code, out = T.sh("debugfs -R 'cat /etc/motd' '" .. raw .. "?offset=1048576'")
  T.eq(code, 0)
  T.eq(out, "hello raw\n")
end)

T.test("bad input: newline in a password, not ext4, in use, snapshots, packages without libguestfs", function()
  local img = qemu.guest.overlay(tmp .. "/bad.qcow2")
  T.raises(function() qemu.image.customize(img, { root_password = "a\nb" }) end, "BadArgument", "newline")
  T.raises(function() qemu.image.customize(img, { root_pasword = "x" }) end, "BadArgument", "did you mean 'root_password'")
  T.raises(function() qemu.image.customize(img, {}) end, "BadArgument", "nothing to do")
  T.raises(function() qemu.image.customize(tmp .. "/nope.img", { root_password = "x" }) end, "BadArgument", "no such image")
  local blank = qemu.disk.create(tmp .. "/blank.img", "8M", { format = "raw" })
  T.raises(function() qemu.image.customize(blank, { root_password = "x" }) end, "NotExt")
  if not require("qemu.run").which("virt-customize") then
    local e = T.raises(function() qemu.image.customize(img, { install = { "vim" } }) end, "MissingTool")
    T.match(e.hint, "libguestfs%-tools")
  end
  T.raises(function() qemu.image.customize(img, { install = { "vim" }, backend = "debugfs" }) end, "BadArgument")
  do
    local vm <close> = qemu.launch { memory = "64M", disks = { img } }
    T.raises(function() qemu.image.customize(img, { root_password = "x" }) end, "ImageInUse")
  end
  assert(T.sh("qemu-img snapshot -c keep " .. img) == 0)
  local sum = select(2, T.sh("sha256sum " .. img))
  T.raises(function() qemu.image.customize(img, { root_password = "x" }) end, "CustomizeFailed", "snapshots")
  T.eq(select(2, T.sh("sha256sum " .. img)), sum, "the image is unchanged")
end)

T.run()
