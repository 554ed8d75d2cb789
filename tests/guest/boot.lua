-- Booting the default Linux guest: kernel options, the serial console,
-- data disks, icount, attach, and the hints for the known traps.
local T = require "t"

local g = qemu.guest.default()
local tmp = T.tmpdir()

local function sh_ok(cmd)
  local code, out, err = T.sh(cmd)
  if code ~= 0 then error(cmd .. " failed: " .. err) end
  return out
end

T.test("boot with root=LABEL=qshell-root, log in, run commands", function()
  local vm <close> = qemu.guest.launch {}
  T.match(table.concat(vm.argv, " "), "%-append console=ttyS0 root=LABEL=qshell%-root")
  local out, st = vm.console:run("uname -r")
  T.eq(out, g.kernel_version)
  T.eq(st, 0)
  out, st = vm.console:run("false")
  T.eq(out, "")
  T.eq(st, 1)
  out, st = vm.console:run("echo one; echo 'two;three' # a comment\nexit_code=7; (exit $exit_code)")
  T.eq(out, "one\ntwo;three")
  T.eq(st, 7)
  out = vm.console:run("cat /proc/cmdline")
  T.match(out, "root=LABEL=qshell%-root")
  T.match(vm.console:run("mount"), "/dev/sd%a1 on / type ext4")
end)

T.test("stale output never satisfies a later run", function()
  local vm <close> = qemu.guest.launch {}
  -- Leave output behind that looks like a marker and a status.
  vm.console:send("echo __qs_stale_e0; echo 0\r")
  qemu.sleep(0.3)
  local out, st = vm.console:run("echo fresh; false")
  T.eq(out, "fresh")
  T.eq(st, 1)
end)

T.test("append as a list; console=ttyS0 added when missing", function()
  local vm <close> = qemu.launch {
    kernel = g.kernel, initrd = g.initrd, memory = g.memory,
    append = { "root=LABEL=qshell-root", "panic=-1", "nokaslr" },
    disks = { qemu.guest.overlay() },
  }
  local line = table.concat(vm.argv, " ")
  T.match(line, "%-append root=LABEL=qshell%-root panic=%-1 nokaslr console=ttyS0")
  vm.console:login { user = g.user, password = g.password }
  T.match(vm.console:run("cat /proc/cmdline"), "console=ttyS0")
end)

T.test("a data disk from a host directory as hdb: contents verified in the guest", function()
  local src = tmp .. "/data"
  sh_ok("mkdir -p " .. src .. "/sub && head -c 300000 /dev/urandom > " .. src .. "/sub/blob && echo hello > " .. src .. "/hello.txt")
  local want = sh_ok("sha256sum " .. src .. "/sub/blob"):match("^(%x+)")
  local raw, img = tmp .. "/data.raw", tmp .. "/data.qcow2"
  sh_ok("mkfs.ext4 -q -F -L data -d " .. src .. " " .. raw .. " 16M && qemu-img convert -O qcow2 " .. raw .. " " .. img)
  local vm <close> = qemu.guest.launch { disks = { img } }
  T.match(table.concat(vm.argv, " "), "index=1")
  -- by its label: -hdb is sdb unless the sd probes finished out of order
  local _, st = vm.console:run("mkdir -p /mnt/data && mount $(findfs LABEL=data) /mnt/data")
  T.eq(st, 0)
  local out = vm.console:run("sha256sum /mnt/data/sub/blob")
  T.eq(out:match("^(%x+)"), want)
  T.eq(vm.console:run("cat /mnt/data/hello.txt"), "hello")
end)

T.test("icount sleep=off: guest sleep 5 takes well under a second", function()
  local vm <close> = qemu.guest.launch { icount = { shift = 2, sleep = false } }
  T.match(table.concat(vm.argv, " "), "%-icount shift=2,sleep=off")
  local t0 = T.now()
  local out = vm.console:run("a=$(cut -d' ' -f1 /proc/uptime); sleep 5; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b")
  local wall = T.now() - t0
  local a, b = out:match("([%d.]+) ([%d.]+)")
  T.ok(a, "uptime printed: " .. out)
  local guest = tonumber(b) - tonumber(a)
  T.ok(guest >= 4.99 and guest < 6, "guest time advanced " .. guest)
  T.ok(wall < 1.5, "wall time " .. wall)
end)

T.test("icount is refused under kvm and checked", function()
  T.raises(function() qemu.launch { accel = "kvm", icount = { shift = 1 } } end, "BadArgument", "tcg")
  T.raises(function() qemu.launch { icount = { shift = 11 } } end, "BadArgument")
  T.raises(function() qemu.launch { icount = { shfit = 1 } } end, "BadArgument", "did you mean 'shift'")
end)

T.test("console:log writes everything with timestamps", function()
  local vm <close> = qemu.guest.launch {}
  local path = tmp .. "/console.log"
  vm.console:log(path)
  vm.console:run("echo logged-line")
  vm.console:log(nil)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  T.match(text, "%[%s*%d+%.%d+%] [^\n]*logged%-line")
end)

T.test("expect: patterns, captures, plain, and a timeout that shows the console", function()
  local vm <close> = qemu.guest.launch {}
  vm.console:send("echo value=42 done\r")
  local m, v = vm.console:expect("value=(%d+) done")
  T.eq(v, "42")
  T.eq(m, "value=42 done")
  vm.console:send("echo 'a.b*c'\r")
  T.eq(vm.console:expect("a.b*c", { plain = true }), "a.b*c")
  vm.console:send("echo visible-before-timeout\r")
  local t0 = T.now()
  local e = T.raises(function() vm.console:expect("never%-printed", 0.5) end, "Timeout")
  T.ok(T.now() - t0 < 2, "timeout honoured")
  T.match(e.command, "never%%%-printed")
  T.match(e.desc, "visible%-before%-timeout")
end)

T.test("a console that printed nothing: the hint names console=ttyS0", function()
  local vm <close> = qemu.launch {
    kernel = g.kernel, initrd = g.initrd, memory = g.memory, append = "console=tty0 quiet",
  }
  local e = T.raises(function() vm.console:expect("login:", 1.0) end, "Timeout")
  T.match(e.hint, "console=ttyS0")
end)

T.test("no initrd: Unable to mount root fs -> QEMUExited with a root= hint", function()
  local vm <close> = qemu.launch {
    kernel = g.kernel, memory = g.memory, append = "root=LABEL=qshell-root panic=-1",
    disks = { qemu.guest.overlay() },
  }
  local e = T.raises(function() vm.console:expect("login:", 60) end, "QEMUExited")
  T.match(e.desc, "Unable to mount root fs")
  T.match(e.hint, "root=")
end)

T.test("bad input: missing kernel, initrd without kernel", function()
  T.raises(function() qemu.launch { kernel = tmp .. "/no-bzImage" } end, "BadArgument", "no%-bzImage")
  T.raises(function() qemu.launch { initrd = g.initrd } end, "BadArgument", "without a kernel")
  T.raises(function() qemu.launch { kernel = g.kernel, append = { 1, {} } } end, "BadArgument")
end)

T.test("hints for the known kernel traps", function()
  local h = qemu.errors.hint_for
  T.match(h("[  22.1] rcu: INFO: rcu_preempt self-detected stall on CPU"), "icount")
  T.match(h("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"), "root=")
  T.match(h("traps: a.out[77] trap invalid opcode ip:401136"), "AVX")
end)

T.test("vm:attach through a pseudo-terminal", function()
  local script = tmp .. "/attach.lua"
  local f = assert(io.open(script, "w"))
  f:write([[
    local vm <close> = qemu.guest.launch{}
    local before = io.popen("stty -g"):read("l")
    print("READY")
    vm:attach()
    local after = io.popen("stty -g"):read("l")
    print(before == after and "MODE-RESTORED" or ("MODE-CHANGED " .. before .. " " .. after))
    -- what we typed reached the guest
    print("GUEST-SAW", vm.console:run("cat /tmp/typed"))
    -- a resize while a program ran reached the shell, not the program
    print("GUEST-CAT", vm.console:run("cat /tmp/catin"))
  ]])
  f:close()
  local ptys = tmp .. "/attach.pty"
  f = assert(io.open(ptys, "w"))
  f:write([[
expect READY
expect attached
sleep 1000
send echo typed-text > /tmp/typed\r
send stty size\r
expect 33 101
resize 40 120
sleep 500
send stty size\r
expect 40 120
send cat > /tmp/catin\r
sleep 500
resize 50 130
sleep 500
send hello\r
send \x04
sleep 500
send stty size\r
expect 50 130
send \x1d
expect detached
expect MODE-RESTORED
expect GUEST-SAW	typed-text
expect GUEST-CAT	hello
wait 0
]])
  f:close()
  local code, out, err = T.sh("build/ptyrun -s 33x101 -t 60 " .. ptys .. " -- ./qshell run " .. script)
  T.eq(code, 0, "ptyrun: " .. out .. err)
end)

T.test("Ctrl-C during console:run interrupts the guest command too; the next run() works", function()
  local script = tmp .. "/ctrlc.lua"
  local ready = tmp .. "/ctrlc.ready"
  local f = assert(io.open(script, "w"))
  f:write(string.format([[
    local vm <close> = qemu.guest.launch{}
    io.open(%q, "w"):close()
    local ok, e = pcall(vm.console.run, vm.console, "sleep 100; echo not-interrupted", { timeout = 60 })
    print("CAUGHT", ok, tostring(e))
    print("AFTER", vm.console:run("echo after"))
    print("PS", (vm.console:run("ps | grep -c 'sleep 100'")))
  ]], ready))
  f:close()
  local code, out = T.sh(string.format(
    "./qshell run %s & p=$!; for i in $(seq 600); do [ -e %s ] && break; sleep 0.1; done; sleep 1; kill -INT $p; wait $p",
    script, ready))
  T.eq(code, 0, out)
  T.match(out, "CAUGHT\tfalse\t[^\n]*interrupted")
  T.match(out, "AFTER\tafter\t0")
  -- only the grep itself matches: the sleep is gone
  T.match(out, "PS\t1\n")
end)

T.run()
