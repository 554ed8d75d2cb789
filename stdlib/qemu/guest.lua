-- qemu.guest: the default guest, built by `make guest` from the
-- distribution's cloud kernel and busybox (guest/build.sh).
--
--   local g = qemu.guest.default()     -- {kernel=, initrd=, system=, append=, user=, password=, ...}
--   local vm = qemu.guest.launch{}     -- booted and logged in, on a private overlay

local errors = require "qemu.errors"
local fs = require "qemu.util.fs"
local check = require "qemu.util.check"
local paths = require "qemu.util.paths"
local run = require "qemu.util.run"

local M = {}

local cached

-- Build the default guest into dir with the builder that came with this
-- qshell (the build tree's or the installed one): ~20 s, once.
local function build(dir)
  local builder = paths.guest_builder()
  if not builder then
    errors.raise { class = "NotBuilt", command = "qemu.guest.default",
                   desc = "the default guest is not built (no " .. dir .. "/guest.lua) and no guest builder was found",
                   hint = "set QSHELL_GUEST_DIR to a built guest, or reinstall qshell (`make install`)" }
  end
  io.stderr:write("qshell: building the default guest in " .. dir .. " (once)\n")
  local st = run.run({ "env", "QSHELL_ROI_HELPER=" .. paths.roi_helper(), builder, dir },
                     { command = "qemu.guest.default", timeout = 1800 })
  if st.code ~= 0 then
    local err = (st.stderr ~= "" and st.stderr or st.stdout):gsub("%s+$", "")
    errors.raise { class = "NotBuilt", command = "qemu.guest.default",
                   desc = "building the default guest failed: " .. err:sub(-600),
                   hint = "the builder needs apt-get, dpkg-deb, mkfs.ext4, qemu-img and busybox-static; " ..
                          "`make deps` in the source tree installs them" }
  end
end

-- Read a guest description (dir/guest.lua: `return {kernel=, initrd=,
-- system=, append=, ...}` with file names relative to dir).
local function read_description(dir, what)
  local chunk, err = loadfile(dir .. "/guest.lua", "t", {})
  if not chunk then return nil, err end
  local ok, g = pcall(chunk)
  if not ok or type(g) ~= "table" then
    errors.raise { class = "BadArgument", command = what,
                   desc = dir .. "/guest.lua does not return a table: " .. tostring(g) }
  end
  for _, k in ipairs { "kernel", "initrd", "system" } do
    if g[k] and g[k]:sub(1, 1) ~= "/" then g[k] = dir .. "/" .. g[k] end
  end
  g.dir = dir
  return g
end

---@api qemu.guest.default qemu.guest.default() -> guest
--- The default guest: a small Linux system to boot, built from the distribution's packages, without root.
---
--- It is the current Debian cloud kernel (extracted, not installed); an initramfs with busybox that
--- loads the IDE and virtio disk drivers and switches to `root=` (the default guest boots
--- `root=LABEL=qshell-root`); and a partitioned ext4 system disk (qcow2) with a busybox userland, a getty on
--- ttyS0, root's password `qshell` and the `qshell-roi` helper that marks regions of interest. It is built
--- on first use (about 20 s, once; `make guest` builds it too) into `build/guest/` of the source tree, or
--- `$XDG_DATA_HOME/qshell/guest` for an installed qshell; `QSHELL_GUEST_DIR` names another directory. `make
--- guest` rebuilds it only when its inputs change. The description is read once per shell.
---
---     local g = qemu.guest.default()
---     print(g.kernel_version, g.system)
---     local vm <close> = qemu.launch { kernel = g.kernel, initrd = g.initrd, append = g.append,
---                                      memory = g.memory, disks = { qemu.guest.overlay() } }
---
---@return table guest  `{kernel=, initrd=, system=, append=, memory=, user=, password=, login_prompt=, prompt=,
---   kernel_version=, dir=, ...}`: `kernel`, `initrd` and `system` (the system disk, which is never written by
---   `qemu.guest.launch`) are absolute paths; `append` the kernel command line; `memory` its memory size; `user`,
---   `password`, `login_prompt` and `prompt` its console login; `dir` the guest's directory
---@error NotBuilt  the guest is not built and no guest builder came with this qshell, or building it failed (the
---   builder's message is in the error)
---@error BadArgument  the directory's `guest.lua` does not return a table
---@error Timeout  building it took more than 30 minutes
function M.default()
  if cached then return cached end
  local dir = paths.guest_dir()
  local g = read_description(dir, "qemu.guest.default")
  if not g then
    build(dir)
    g = read_description(dir, "qemu.guest.default")
  end
  if not g then
    errors.raise { class = "NotBuilt", command = "qemu.guest.default",
                   desc = "the guest builder ran but left no " .. dir .. "/guest.lua" }
  end
  cached = g
  return g
end

---@api qemu.guest.load qemu.guest.load(dir) -> guest
--- The guest described by `dir/guest.lua`, as `qemu.image.build` and `make guest` write it, for
--- `qemu.guest.launch{guest=}`.
---
--- `guest.lua` is a Lua file run with no access to anything (`return {kernel=, initrd=, system=, append=,
--- memory=, user=, password=, login_prompt=, prompt=}`); its file names are relative to `dir`.
---
---     local vm <close> = qemu.guest.launch { guest = qemu.guest.load("images/exp") }
---
---@param dir string  the guest's directory
---@return table guest  the description with `kernel`, `initrd` and `system` made absolute and `dir` added, as
---   `qemu.guest.default` returns it
---@error BadArgument  `dir` is not a string, it has no readable `guest.lua`, that file does not return a table, it
---   names no `kernel=` or `system=`, or that file is missing
function M.load(dir)
  local what = "qemu.guest.load"
  check.arg(what, 1, dir, "string")
  dir = fs.abspath(dir)
  local g, err = read_description(dir, what)
  if not g then
    errors.raise { class = "BadArgument", command = what,
                   desc = "no guest description in " .. dir .. ": " .. tostring(err),
                   hint = "qemu.image.build{out=dir} writes one" }
  end
  for _, k in ipairs { "kernel", "system" } do
    if not g[k] then
      errors.raise { class = "BadArgument", command = what, desc = dir .. "/guest.lua has no " .. k .. "=" }
    end
    if not fs.exists(g[k]) then
      errors.raise { class = "BadArgument", command = what, desc = "the guest's " .. k .. " is missing: " .. g[k] }
    end
  end
  return g
end

---@api qemu.guest.overlay qemu.guest.overlay([path]) -> path
--- A new qcow2 overlay over the default guest's system disk, to boot it without writing the disk itself.
---
--- Without `path` the overlay is made in the shell's temporary directory (removed when the shell
--- ends); give a path to keep it, e.g. for a `vm:savevm` snapshot to load later with
--- `qemu.guest.launch{system=path, loadvm=tag}`. The guest is built first when it is not there yet.
---
---     local disk = qemu.guest.overlay("kept.qcow2")
---     local vm <close> = qemu.guest.launch { system = disk }
---
---@param path? string  the overlay to create (default: a new file in the shell's temporary directory)
---@return string path  the overlay's path
---@error FileExists  `path` exists already
---@error BadArgument  `path`'s directory does not exist
---@error NotBuilt  the default guest is not built and could not be
---@error DiskError  `qemu-img create` failed
function M.overlay(path, g)
  if path ~= nil then check.arg("qemu.guest.overlay", 1, path, "string") end
  if path and fs.exists(path) then
    errors.raise { class = "FileExists", command = "qemu.guest.overlay", desc = path .. " exists",
                   hint = "name a new file, or remove this one first: the overlay would replace it" }
  end
  g = g or M.default()
  if not path then
    path = fs.scratch_file("guest-system", ".qcow2")
  end
  return require("qemu.disk").overlay(g.system, path)
end

local launch_extra = { login = "boolean", system = "string", guest = true, user = "string", password = "string",
                       login_prompt = "string", prompt = "string" }

---@api qemu.guest.launch qemu.guest.launch([options]) -> vm
--- Boot a guest and log in on its serial console: the default guest unless `guest=` names another.
---
--- The guest boots on a fresh qcow2 overlay of its system disk in the shell's temporary directory, so its
--- image is never written; `system=` boots that image instead (it is written). The guest's kernel,
--- initrd, command line and memory are used unless the options give others. With `system=` and `kernel=`
--- but no `guest=` (an image of your own), nothing of the default guest applies: the login is root at
--- `login: `, the prompt `# `, the memory 1G. The login waits up to 180 s; when it fails the VM is closed.
--- The guest's description is `vm.guest`.
---
--- The kernel names IDE disks in the order its disk probes finish: `-hdb` is `/dev/sdb` almost always,
--- but a loaded host can swap `sda` and `sdb`. A file system label finds a disk whatever it is called.
---
---     local data = qemu.disk.populate("data.qcow2", { from = "inputs/", label = "data" })
---     local vm <close> = qemu.guest.launch { disks = { data }, icount = { shift = 2 } }
---     vm.console:run("mount $(findfs LABEL=data) /mnt")   -- usually /dev/sdb
---
---@param options? table  every option of `qemu.launch` (`disks` come after the system disk: hdb, ...), plus:
---   `guest=` table|string: the guest to boot, as `qemu.image.build` or `qemu.guest.load(dir)` returns it, or its
---   directory; default `qemu.guest.default()`;
---   `system=` string: boot this image as the system disk instead of a fresh overlay (e.g. an overlay kept for
---   `loadvm`, or an image of your own with `kernel=`, `initrd=`, `append=`);
---   `login=` boolean, default true: false returns as soon as QEMU runs (needed with `paused=true` or `console=false`);
---   `user=`, `password=`, `login_prompt=`, `prompt=` strings: the login of another image or user (default the guest's).
---@return qemu.VM vm  the running VM, logged in (unless `login=false`)
---@error BadArgument  options that are not a table, a wrong type, a `guest=` that is not a guest or its directory,
---   `paused=true` or `console=false` without `login=false`, and every misuse `qemu.launch` refuses
---@error NotBuilt  the default guest is not built and could not be
---@error LaunchFailed  QEMU did not start (and the other errors of `qemu.launch`)
---@error LoginFailed  the console login did not reach a shell prompt
---@error Timeout  no login prompt or shell prompt within 180 s
---@error QEMUExited  QEMU ended during the login
function M.launch(opts)
  opts = opts or {}
  if type(opts) ~= "table" then check.bad("qemu.guest.launch", "options must be a table") end
  local g = opts.guest
  if type(g) == "string" then
    g = M.load(g)
  elseif g ~= nil and (type(g) ~= "table" or not g.kernel or not g.system) then
    check.bad("qemu.guest.launch", "guest= must be a guest (qemu.guest.load(dir), qemu.image.build{...}) or its directory")
  end
  g = g or M.default()
  for _, k in ipairs { "user", "password", "login_prompt", "prompt" } do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      check.bad("qemu.guest.launch", "option '%s' must be a string", k)
    end
  end
  local lopts = {}
  for k, v in pairs(opts) do
    if not launch_extra[k] then lopts[k] = v end
  end
  if opts.login ~= nil and type(opts.login) ~= "boolean" then
    check.bad("qemu.guest.launch", "option 'login' must be a boolean")
  end
  if opts.paused and opts.login ~= false then
    check.bad("qemu.guest.launch", "a paused guest cannot log in: with paused=true pass login=false " ..
                                   "(then vm:cont() and vm.console:login{...})")
  end
  if opts.console == false and opts.login ~= false then
    check.bad("qemu.guest.launch", "logging in needs the console: with console=false pass login=false too")
  end
  -- Another image booted with a kernel of its own: none of the default
  -- guest's settings (its prompt names its host) apply.
  local other = opts.system and not opts.guest and opts.kernel
  if other then
    g = { user = "root", login_prompt = "login: ", prompt = "# ", memory = "1G" }
  end
  local system = opts.system or M.overlay(nil, g)
  lopts.kernel = lopts.kernel or g.kernel
  lopts.initrd = lopts.initrd or g.initrd
  lopts.append = lopts.append or g.append
  lopts.memory = lopts.memory or g.memory
  local disks = { system }
  for _, d in ipairs(opts.disks or {}) do disks[#disks + 1] = d end
  lopts.disks = disks
  local qemu_launch = require("qemu.vm.launch").launch
  local vm = qemu_launch(lopts)
  vm.guest = g
  if opts.login ~= false then
    local ok, err = pcall(vm.console.login, vm.console,
                          { user = opts.user or g.user, password = opts.password or g.password,
                            login_prompt = opts.login_prompt or g.login_prompt,
                            -- the guest's prompt is its user's; another user's is login's default
                            prompt = opts.prompt or ((opts.user == nil or opts.user == g.user) and g.prompt or nil),
                            timeout = 180 })
    if not ok then
      vm:close()
      error(err, 0)
    end
  end
  return vm
end

return M
