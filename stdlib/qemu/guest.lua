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

-- qemu.guest.default() -> {kernel=, initrd=, system=, append=, memory=,
--   user=, password=, login_prompt=, prompt=, kernel_version=, dir=}
-- Built on first use when it is not there yet.
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

-- qemu.guest.load(dir) -> the guest described by dir/guest.lua (what
-- qemu.image.build and `make guest` write), for qemu.guest.launch{guest=}.
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

-- qemu.guest.overlay([path]) -> path of a fresh qcow2 overlay over the
-- guest's system disk (in the shell's scratch dir unless a path is given).
function M.overlay(path, g)
  g = g or M.default()
  if not path then
    path = fs.scratch_file("guest-system", ".qcow2")
  end
  return require("qemu.disk").overlay(g.system, path)
end

local launch_extra = { login = "boolean", system = "string", guest = true, user = "string", password = "string",
                       login_prompt = "string", prompt = "string" }

-- qemu.guest.launch([opts]) -> vm, booted and logged in as root.
-- opts: any qemu.launch option (disks are added after the system disk),
-- plus guest= (a guest from qemu.guest.load/qemu.image.build, or its
-- directory; default: the default guest), system= (an image to boot
-- instead of a fresh overlay of the guest's), login=false (return as
-- soon as QEMU runs), and for another image's login: user=, password=,
-- login_prompt=, prompt=.
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
