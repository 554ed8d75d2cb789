-- A real kernel: Debian's linux-source, tinyconfig plus what a serial
-- console needs, built with qemu.kernel.build and booted with the default
-- guest's initrd.  Slow (minutes): runs only with QSHELL_SLOW_TESTS=1.
local T = require "t"

if os.getenv("QSHELL_SLOW_TESTS") ~= "1" then
  io.stderr:write("kernel_slow: skipped; QSHELL_SLOW_TESTS=1 builds a tinyconfig kernel from linux-source " ..
                  "(about 5 minutes on 2 cores)\n")
  print("0 passed, 0 failed, 1 skipped")
  os.exit(0)
end

local PACKAGES = "linux-source flex bison bc libelf-dev libssl-dev make gcc xz-utils"

local function say(fmt, ...)
  io.stderr:write("kernel_slow: " .. string.format(fmt, ...) .. "\n")
end

local function tarball()
  local _, out = T.sh("ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n 1")
  return out:match("%S+")
end

T.test("linux-source: tinyconfig + serial console, built and booted", function()
  local t0 = T.now()
  if T.sh("dpkg -s " .. PACKAGES .. " >/dev/null 2>&1") ~= 0 or not tarball() then
    say("installing %s", PACKAGES)
    local code, out, err = T.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " .. PACKAGES)
    T.eq(code, 0, "apt-get install: " .. out:sub(-500) .. err:sub(-1000))
  end
  local tar = T.ok(tarball(), "a linux-source tarball in /usr/src")
  local t1 = T.now()
  local tmp = T.tmpdir()
  local code, _, err = T.sh(string.format("tar -xf %s -C %s", tar, tmp))
  T.eq(code, 0, "tar: " .. err)
  local src = tmp .. "/" .. tar:match("([^/]+)%.tar%.xz$")
  local t2 = T.now()
  say("install %.0f s, unpack %.0f s (%s)", t1 - t0, t2 - t1, src)

  local r = qemu.kernel.build {
    src = src, out = tmp .. "/build", config = "tinyconfig", timeout = 3600,
    options = { ["64BIT"] = "y", PRINTK = "y", TTY = "y", SERIAL_8250 = "y", SERIAL_8250_CONSOLE = "y",
                BINFMT_ELF = "y", BLK_DEV_INITRD = "y", LOCALVERSION = "-qshell" },
  }
  say("built in %.0f s with -j%d: %s", r.seconds, r.jobs, r.bzimage)
  T.ok(T.exists(r.bzimage) and T.exists(r.vmlinux), "bzImage and vmlinux")
  local cfg = qemu.kernel.config(src, { out = tmp .. "/build" })
  T.eq(cfg:get("SERIAL_8250_CONSOLE"), "y")

  local vm <close> = qemu.launch { kernel = r.bzimage, initrd = qemu.guest.default().initrd,
                                   append = "console=ttyS0", memory = "256M" }
  local t3 = T.now()
  local line = vm.console:expect("Linux version [^\r\n]+", 120)
  say("booted in %.1f s: %s", T.now() - t3, line)
  T.match(line, "^Linux version %S+%-qshell ")
  say("total %.0f s", T.now() - t0)
  T.sh("rm -rf " .. tmp)
end)

T.run()
