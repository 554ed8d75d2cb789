-- A real Debian 12 system disk, built from the distribution's packages with
-- qemu.image.build (cached outside the checkout), booted the cheat sheet's
-- way (-kernel/-initrd read out of the image, root=, console=ttyS0) and
-- driven like the busybox guest: systemd, bash, kernel messages on the
-- console, cloud-init.
local T = require "t"
local sys = require "qshell.os"

local tmp = T.tmpdir()

local function slurp(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local spec = dofile("tests/lib/distro_spec.lua")
local t0 = T.now()
local g = qemu.image.build(spec)
local built_s = T.now() - t0

T.test("image.build: a partitioned ext4 qcow2 with its kernel, initrd and description; cached", function()
  T.ok(T.exists(g.system) and T.exists(g.kernel) and T.exists(g.initrd), "files beside guest.lua")
  local c = qemu.image.check(g.system)
  T.eq(c.format, "qcow2")
  T.eq(c.table, "mbr")
  T.eq(c.partitions[1].fs, "ext4")
  T.eq(c.partitions[1].offset, 1048576)
  T.eq(c.virtual_size, 2 << 30, "size= is the disk's size")
  T.match(g.append, "console=ttyS0")
  T.eq(g.hostname, "qsdeb")
  -- the same inputs: the cached image, at once
  local t = T.now()
  local again = qemu.image.build(spec)
  T.eq(again.system, g.system)
  T.ok(T.now() - t < 5, "cached build took " .. (T.now() - t) .. " s (first: " .. built_s .. " s)")
  -- loaded back from its directory
  local l = qemu.guest.load(g.dir)
  T.eq(l.kernel, g.kernel)
  T.eq(l.password, "qshell")
end)

T.test("image.build: bad input and a missing package are clear errors", function()
  T.raises(function() qemu.image.build { packges = {} } end, "BadArgument", "packages")
  T.raises(function() qemu.image.build { hostname = "no spaces" } end, "BadArgument", "hostname")
  T.raises(function() qemu.image.build { users = { { name = "Bad Name" } } } end, "BadArgument", "users")
  T.raises(function() qemu.image.build { packages = { "Not-A-Package" } } end, "BadArgument", "package name")
  local t = T.now()
  local e = T.raises(function()
    qemu.image.build { packages = { "qshell-no-such-package" }, out = tmp .. "/nopkg" }
  end, "BuildFailed", "qshell%-no%-such%-package")
  T.match(tostring(e), "does not exist")
  T.ok(T.now() - t < 10, "known at once from the host's apt lists")
  -- a mirror that cannot be reached, and one without the suite: mmdebstrap's words, made plain
  e = T.raises(function()
    qemu.image.build { mirror = "http://127.0.0.1:9/debian", out = tmp .. "/nomirror" }
  end, "BuildFailed", "cannot be reached")
  T.match(e.hint, "mirror=")
  T.ok(not T.exists(tmp .. "/nomirror"), "a failed build leaves no directory it made")
  -- a rebuild of a disk an overlay still uses is refused, before any work
  local old = tmp .. "/oldimage"
  sys.mkdir(old)
  qemu.disk.create(old .. "/system.qcow2", "64M")
  local f = assert(io.open(old .. "/inputs.stamp", "w"))
  f:write("other inputs\n")
  f:close()
  local ov = qemu.disk.overlay(old .. "/system.qcow2", tmp .. "/on-old.qcow2")
  e = T.raises(function() qemu.image.build { out = old, hostname = "rebuilt" } end, "ImageInUse", "backing file of")
  T.match(tostring(e), "on%-old%.qcow2")
  T.eq(qemu.disk.info(ov).backing, old .. "/system.qcow2")
  T.raises(function() qemu.guest.load(tmp) end, "BadArgument", "no guest description")
end)

-- The cheat sheet's boot: the kernel read out of the image.
local k = qemu.image.kernel(g.system, { out = tmp .. "/kernel" })

T.test("image.kernel reads the newest kernel, its initrd and the root out of the image", function()
  T.eq(k.version, g.kernel_version)
  T.eq(require("qshell.hash").sha256(k.kernel), require("qshell.hash").sha256(g.kernel))
  T.eq(require("qshell.hash").sha256(k.initrd), require("qshell.hash").sha256(g.initrd))
  T.eq(k.partition, 1)
  T.eq(k.device, "/dev/sda1")
  T.match(k.root, "^UUID=%x+%-%x+%-%x+%-%x+%-%x+$")
  T.match(k.append, "^root=UUID=.* console=ttyS0")
  T.raises(function() qemu.image.kernel(tmp .. "/nonexistent.qcow2") end, "BadArgument", "no such image")
  local empty = tmp .. "/empty.qcow2"
  qemu.disk.create(empty, "64M")
  T.raises(function() qemu.image.kernel(empty) end, "NotExt")
end)

-- A data disk for the main VM: ext4 and vfat from a host directory.
local data_dir = tmp .. "/data"
sys.mkdir(data_dir)
do
  local f = assert(io.open(data_dir .. "/hello.txt", "w"))
  f:write("hello from the host\n")
  f:close()
end
-- found by label: the kernel names IDE disks in the order its probes end
local data = qemu.disk.populate(tmp .. "/data.qcow2", { from = data_dir, fs = "ext4", label = "qsdata" })
local fat = qemu.disk.populate(tmp .. "/fat.qcow2", { from = data_dir, fs = "vfat", label = "QSFAT" })

-- The host end of the network test: a listener on a free port.
local port = 20000 + (sys.getpid() % 20000)
-- booted as any image of one's own: an overlay, the kernel read out of it,
-- the generic login prompt, the password given here (2 vCPUs: a systemd
-- boot takes a third less on 2 cores)
local vm = T.keep(qemu.guest.launch {
  system = qemu.disk.overlay(g.system, tmp .. "/main.qcow2"), kernel = k.kernel, initrd = k.initrd,
  append = k.append, password = "qshell", disks = { data, fat }, net = true, smp = 2,
})
local c = vm.console
c:log(tmp .. "/console.log")

T.test("boots with -kernel from the image, logs in; systemd, bash, hostname", function()
  T.eq((c:run("cat /proc/1/comm")), "systemd")
  T.eq((c:run("hostname")), "qsdeb")
  T.eq((c:run("echo $BASH_VERSION | cut -c1")), "5")
  T.eq((c:run("id -nG alice | tr ' ' '\\n' | sort | tr '\\n' ' '")), "adm alice sudo ")
  T.match(table.concat(vm.argv, " "), "%-kernel [^ ]*/vmlinuz%-" .. k.version:gsub("%-", "%%-"))
end)

T.test("kernel messages never land in run() output; they stay in dmesg and the console log", function()
  local out, st = c:run("echo qshell-kmsg-during > /dev/kmsg; echo done")
  T.eq(out, "done")
  T.eq(st, 0)
  T.match((c:run("dmesg | grep -c qshell-kmsg-during")), "^1$")
  -- the mount message from the cheat sheet's data disk
  T.eq(c:run("mount LABEL=qsdata /mnt && cat /mnt/hello.txt"), "hello from the host")
  T.eq(c:run("umount /mnt"), "")
  -- and the vfat one (populate's fs="vfat")
  T.eq(c:run("mount -t vfat LABEL=QSFAT /mnt && cat /mnt/hello.txt && umount /mnt"), "hello from the host")
  -- a message between two commands goes to the console and its log
  c:run("(sleep 1; echo qshell-kmsg-between > /dev/kmsg) >/dev/null 2>&1 &")
  qemu.sleep(3)
  T.eq((c:run("echo after")), "after")
  T.match(slurp(tmp .. "/console.log"), "qshell%-kmsg%-between")
  -- and the console log level is back where it was
  T.match((c:run("cut -f1 /proc/sys/kernel/printk", { kernel_messages = true })), "^[4-8]$")
end)

T.test("output: lone \\r kept, \\r\\n is \\n, ANSI escapes stripped on request, no pager", function()
  T.eq((c:run("printf 'a\\rb\\n'")), "a\rb")
  T.eq((c:run("printf 'one\\ntwo\\n'")), "one\ntwo")
  T.eq((c:run("printf '\\033[1;31mred\\033[0m\\n'", { strip_ansi = true })), "red")
  T.eq((c:run("printf '\\033[1;31mred\\033[0m\\n'")), "\27[1;31mred\27[0m")
  local out, st = c:run("systemctl status systemd-journald", { timeout = 30 })
  T.eq(st, 0)
  T.match(out, "active %(running%)")
  local big = c:run("seq 1 20000 | tail -n 1")
  T.eq(big, "20000")
end)

T.test("a timeout or Ctrl-C interrupts the guest command; the next run() works", function()
  local e = T.raises(function() c:run("sleep 100", { timeout = 2 }) end, "Timeout")
  T.match(tostring(e), "interrupted %(%^C%)")
  T.eq((c:run("echo next")), "next")
  -- a command that ignores nothing but reads the console: cat
  T.raises(function() c:run("cat", { timeout = 1 }) end, "Timeout")
  T.eq((c:run("echo after-cat")), "after-cat")
  T.eq(select(2, c:run("(exit 3)")), 3)
end)

T.test("run() of a command that ends the shell is an error; login() after expect works", function()
  local e = T.raises(function() c:run("exit 3") end, "ShellExited", "ended the guest's shell")
  T.match(e.hint, "subshell")
  -- the script waits for the prompt itself, then logs in
  c:expect("login: ", 60)
  c:login { user = "alice", password = "wonder land", prompt = "$ " }
  T.eq((c:run("whoami")), "alice")
  T.raises(function() c:run("exit") end, "ShellExited")
  c:login { password = "qshell" }
  T.eq((c:run("whoami")), "root")
  T.eq((c:run("hostname")), "qsdeb")
end)

T.test("a wrong password is LoginFailed; the right one then logs in", function()
  T.raises(function() c:run("exit 0") end, "ShellExited")
  T.raises(function() c:login { password = "wrong" } end, "LoginFailed", "Login incorrect")
  c:login { password = "qshell", timeout = 60 }
  T.eq((c:run("whoami")), "root")
  -- the shells that ended mid-command left the console log level as it was
  T.match((c:run("cut -f1 /proc/sys/kernel/printk", { kernel_messages = true })), "^[4-8]$")
end)

T.test("networking: net=true gives DHCP on QEMU's user network; the guest reaches the host", function()
  local out = c:run("for i in $(seq 100); do ip -4 -o addr | grep -q 10.0.2.15 && break; sleep 0.2; done; " ..
                    "ip -4 -o addr show scope global", { timeout = 40 })
  T.match(out, "10%.0%.2%.15")
  local job = require("qemu.util.run").start({ "busybox", "nc", "-l", "-p", tostring(port) })
  qemu.sleep(0.5)
  local _, st = c:run(string.format("echo over-the-net > /dev/tcp/10.0.2.2/%d", port), { timeout = 20 })
  T.eq(st, 0)
  local r = job:finish(20)
  T.eq(r.stdout, "over-the-net\n")
end)

T.test("savevm/loadvm on the systemd guest: state rewinds, clocksource messages stay out of output", function()
  vm:savevm("before")
  c:run("echo changed > /root/state")
  vm:loadvm("before")
  local out, st = c:run("cat /root/state 2>/dev/null; echo end")
  T.eq(out, "end")
  T.eq(st, 0)
  T.eq((c:run("echo clean")), "clean")
  vm:delvm("before")
end)

local ckpt = tmp .. "/debian.ckpt"

T.test("checkpoint, two restores at once, and a sweep from it", function()
  c:run("echo from-the-checkpoint > /root/mark; sync")
  vm:checkpoint(ckpt)
  vm:close()
  qemu.checkpoint.verify(ckpt)
  local a <close> = qemu.launch { restore = ckpt }
  local b <close> = qemu.launch { restore = ckpt, name = "second" }
  T.eq((a.console:run("cat /root/mark")), "from-the-checkpoint")
  T.eq((b.console:run("cat /root/mark")), "from-the-checkpoint")
  a.console:run("echo a-only > /root/mark")
  T.eq((b.console:run("cat /root/mark")), "from-the-checkpoint", "each restore has its own overlay")
  a:close()
  b:close()
  local r = qemu.sweep {
    from = ckpt, workers = 2, matrix = { n = { 3, 5 } }, out = tmp .. "/sweep.csv",
    run = function(v, p)
      return { sum = tonumber((v.console:run(string.format("echo $(( %d * 2 ))", p.n)))),
               comm = (v.console:run("cat /proc/1/comm")) }
    end,
  }
  T.eq(r.ok, 2)
  local got = {}
  for _, row in ipairs(qemu.sweep.read(tmp .. "/sweep.csv")) do
    got[row.n] = row.sum
    T.eq(row.comm, "systemd")
    T.eq(row.status, "ok")
  end
  T.eq(got[3], 6)
  T.eq(got[5], 10)
end)

T.test("customize an overlay (hostname, users, units, autologin), boot it with icount, the insn plugin and an ROI", function()
  local o = qemu.disk.overlay(g.system, tmp .. "/custom.qcow2")
  local base_hash = require("qshell.hash").sha256(g.system)
  qemu.image.customize(o, {
    hostname = "custom",
    users = { { name = "bob", password = "builder", groups = { "adm" } } },
    write = {
      ["/etc/systemd/system/qshell-hello.service"] =
        "[Unit]\nDescription=hello\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo hi > /run/qshell-hello'\n" ..
        "[Install]\nWantedBy=multi-user.target\n",
      -- an autologin getty on the serial console
      ["/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"] =
        "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n",
    },
    enable = { "qshell-hello.service" },
    mask = { "cron.service" },
  })
  T.ok(qemu.disk.info(o).actual_size < 16 << 20, "the overlay stays an overlay: " .. qemu.disk.info(o).actual_size)
  T.eq(require("qshell.hash").sha256(g.system), base_hash, "the base is untouched")
  -- a wrong password: only the autologin can log in
  local v <close> = qemu.guest.launch {
    guest = g, system = o, icount = { shift = "auto" }, plugins = { { name = "insn" } }, password = "never typed",
  }
  T.eq((v.console:run("hostname")), "custom")
  T.eq((v.console:run("id -nG bob | tr ' ' '\\n' | sort | tr '\\n' ' '")), "adm bob ")
  T.eq((v.console:run("cat /run/qshell-hello")), "hi")
  T.eq((v.console:run("systemctl is-enabled cron.service 2>&1; true")), "masked")
  -- the ROI helper every built image has, seen by the insn plugin
  T.eq((v.console:run("command -v qshell-roi")), "/usr/local/bin/qshell-roi")
  v.console:run("qshell-roi begin 4; ls -R /etc >/dev/null; qshell-roi end 4")
  local roi4 = v:wait_roi(4, { timeout = 60 }).insns
  T.ok(roi4 > 1e5, "ls -R /etc inside ROI 4: " .. roi4)
  -- exit under an autologin getty: ShellExited, and login{} finds the new shell
  T.raises(function() v.console:run("exit") end, "ShellExited")
  v.console:login {}
  T.eq((v.console:run("whoami")), "root")
  v.console:send("poweroff\r")
  T.eq(v:wait { timeout = 120 }.code, 0)
  local r = v:plugin_result("insn")
  T.ok(r.total > 1e9, "a systemd boot is billions of instructions, got " .. r.total)
  T.eq(r.rois[1].id, 4)
  T.eq(r.rois[1].insns, roi4)
end)

T.test("cloud-init, as README shows it: the default user logs in with the seed's password on the first boot", function()
  local seed = qemu.image.cloud_init { out = tmp .. "/seed-default.img", password = "secret", hostname = "exp1" }
  local v <close> = qemu.guest.launch { guest = g, disks = { seed }, smp = 2, login = false }
  -- cloud-init sets the password after the getty's first prompt: login
  -- logs in again until it has
  v.console:login { user = "debian", password = "secret", timeout = 300 }
  local _, refused = v.console:tail(400):gsub("Login incorrect", "")
  io.stderr:write(string.format("  (cloud-init: %d login(s) refused before it set the password)\n", refused))
  T.eq((v.console:run("whoami")), "debian")
  T.eq((v.console:run("hostname")), "exp1")
end)

T.test("cloud-init: a seed's user=, runcmd; a wrong password fails once cloud-init is done, the right one logs in", function()
  local seed = qemu.image.cloud_init {
    out = tmp .. "/seed.img", user = "researcher", password = "from seed", hostname = "seeded",
    runcmd = { "echo ran > /var/tmp/runcmd-ran" },
  }
  local v <close> = qemu.guest.launch { guest = g, disks = { seed }, smp = 2, login = false }
  local e = T.raises(function() v.console:login { user = "researcher", password = "not it", timeout = 300 } end,
                     "LoginFailed", "Login incorrect %(user researcher%)")
  T.match(e.desc, "after cloud%-init finished")
  T.match(e.hint, "check password=")
  v.console:login { user = "researcher", password = "from seed", timeout = 120 }
  T.eq((v.console:run("whoami")), "researcher")
  local out = v.console:run("cloud-init status --wait; cat /var/tmp/runcmd-ran; hostname", { timeout = 180 })
  T.match(out, "status: done\nran\nseeded$")
end)

T.run()
