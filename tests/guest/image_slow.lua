-- qemu.image.customize through virt-customize (libguestfs): a root password,
-- a written file and a command run inside the default guest's system disk,
-- then booted and checked.  Slow (libguestfs-tools is ~110 packages; each
-- virt-customize call boots its appliance under TCG): runs only with
-- QSHELL_SLOW_TESTS=1.  The appliance's kernel is the default guest's cloud
-- kernel, extracted from its cached .deb (no linux-image-* is installed).
local T = require "t"

if os.getenv("QSHELL_SLOW_TESTS") ~= "1" then
  io.stderr:write("image_slow: skipped; QSHELL_SLOW_TESTS=1 installs libguestfs-tools when missing and " ..
                  "customizes the default guest's disk with virt-customize (minutes)\n")
  print("0 passed, 0 failed, 1 skipped")
  os.exit(0)
end

local function say(fmt, ...)
  io.stderr:write("image_slow: " .. string.format(fmt, ...) .. "\n")
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

T.test("virt-customize: root password, written file and run command; boot and check", function()
  local g = qemu.guest.default()
  local t0 = T.now()
  if T.sh("command -v virt-customize >/dev/null") ~= 0 then
    say("installing libguestfs-tools")
    local code, out, err = T.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " ..
                                "libguestfs-tools")
    T.eq(code, 0, "apt-get install: " .. out:sub(-500) .. err:sub(-1000))
  end
  -- supermin copies the host's /lib/modules into its appliance: a
  -- container may have none (the modules come from appliance.modules).
  if not T.exists("/lib/modules") then
    say("creating an empty /lib/modules for supermin")
    T.eq(T.sh("mkdir -p /lib/modules"), 0, "mkdir /lib/modules")
  end
  for _, tool in ipairs { "virt-customize", "supermin", "depmod", "dpkg-deb" } do
    T.eq(T.sh("command -v " .. tool .. " >/dev/null"), 0, tool .. " on PATH")
  end
  local t1 = T.now()

  -- The appliance's kernel: the guest's own cloud kernel, modules indexed.
  local tmp = T.tmpdir()
  T.cleanup(function() T.sh("rm -rf " .. q(tmp)) end)
  local _, debs = T.sh("ls " .. q(g.dir) .. "/cache/" .. g.kernel_package .. "_*.deb")
  local deb = T.ok(debs:match("%S+"), "the cached " .. g.kernel_package .. " .deb in " .. g.dir .. "/cache")
  local kdir = tmp .. "/kernel"
  local code, _, err = T.sh("dpkg-deb -x " .. q(deb) .. " " .. q(kdir))
  T.eq(code, 0, "dpkg-deb -x: " .. err)
  local ver = g.kernel_version
  code, _, err = T.sh("depmod -b " .. q(kdir) .. " " .. ver)
  T.eq(code, 0, "depmod: " .. err)
  local appliance = { kernel = kdir .. "/boot/vmlinuz-" .. ver, modules = kdir .. "/lib/modules/" .. ver }
  T.ok(T.exists(appliance.kernel) and T.exists(appliance.modules .. "/modules.dep"), "kernel and modules.dep")
  local t2 = T.now()

  local img = qemu.guest.overlay(tmp .. "/virt.qcow2")
  local before = qemu.disk.info(img)
  qemu.image.customize(img, {
    backend = "virt-customize", appliance = appliance,
    root_password = "virt:pw",
    write = { ["/root/virt.txt"] = "via libguestfs\n" },
    run = { "echo ran > /root/ran.txt" },
  })
  local t3 = T.now()
  local after = qemu.disk.info(img)
  T.eq(after.backing, before.backing, "still an overlay of the same base")

  local vm <close> = qemu.guest.launch { system = img, login = false }
  vm.console:login { user = "root", password = "virt:pw", login_prompt = g.login_prompt }
  T.eq(vm.console:run("cat /root/virt.txt"), "via libguestfs")
  T.eq(vm.console:run("cat /root/ran.txt"), "ran")
  local t4 = T.now()
  say("install %.1f s, appliance kernel %.1f s, virt-customize %.1f s, boot+login+checks %.1f s, total %.1f s",
      t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)

  -- appliance= keys are checked before anything runs
  T.raises(function()
    qemu.image.customize(img, { backend = "virt-customize", run = { "true" }, appliance = { kernal = "x" } })
  end, "BadArgument", "did you mean 'kernel'")
end)

T.run()
