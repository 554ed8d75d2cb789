-- qemu.image.virt: the virt-customize backend of qemu.image.customize:
-- installing and removing packages and running commands with the guest's
-- own tools (libguestfs), and the kernel and environment its appliance
-- needs.

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local disk = require "qemu.disk"
local sys = require "qshell.os"
local plan = require "qemu.image.plan"

local APT_NO_UPGRADES, APT_TIMERS = plan.APT_NO_UPGRADES, plan.APT_TIMERS

local M = {}

-- The environment libguestfs' appliance needs, as "VAR=value" words for an
-- `env` prefix (qemu.run cannot set a child's environment): only variables
-- the caller has not exported, except appliance=, which is explicit.
local function appliance_env(opts, what)
  local env = {}
  local function set(var, value) env[#env + 1] = var .. "=" .. value end
  if not os.getenv("LIBGUESTFS_BACKEND") then set("LIBGUESTFS_BACKEND", "direct") end
  if not os.getenv("LIBGUESTFS_BACKEND_SETTINGS") and require("qemu.util.host").accel() ~= "kvm" then
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

M.virt_ready = virt_ready
M.customize_virt = customize_virt

return M
