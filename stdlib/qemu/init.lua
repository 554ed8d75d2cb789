-- qemu: the script API (DESIGN.md).  Preloaded as the global `qemu`;
-- `require "qemu"` works too.  Submodules (disk, plugin, guest, ...) load
-- on first use, so `qshell -e ''` stays fast.

local json = require "qshell.json"

local M = {
  null = json.null,
  json = json,
}

local lazy = {
  errors = "qemu.errors",
  guest = "qemu.guest",
  disk = "qemu.disk",
  repl = "qemu.repl",
  plugin = "qemu.plugin",
  checkpoint = "qemu.checkpoint",
  image = "qemu.image",
  kernel = "qemu.kernel",
  pp = "qemu.util.pp",
  results = "qemu.results",
}

local launch -- the launch module, loaded on first use (with the VM methods)
local sys = require "qshell.os"

-- qemu.now() -> monotonic seconds, for timing experiments
M.now = sys.now

-- qemu.version([binary]) -> {major=, minor=, micro=, text=, package=, path=, plugin_api=}
function M.version(binary)
  return require("qemu.util.binary").version(binary)
end

-- qemu.sleep(seconds): Ctrl-C interrupts it
function M.sleep(seconds)
  if type(seconds) ~= "number" or not (seconds >= 0) or seconds == math.huge then
    require("qemu.util.check").bad("qemu.sleep", "seconds must be a number >= 0")
  end
  local ok = sys.sleep(seconds)
  if not ok then require("qemu.errors").raise { class = "Interrupted", command = "qemu.sleep", desc = "interrupted!" } end
end

local function load_launch()
  return require "qemu.vm.launch"
end

function M.launch(opts)
  launch = launch or load_launch()
  return launch.launch(opts)
end

function M.attach(path, opts)
  launch = launch or load_launch()
  return launch.attach(path, opts)
end

-- qemu.sweep{...}; qemu.sweep.read(path), qemu.sweep.format(rows): see
-- stdlib/qemu/sweep.lua and the README.
M.sweep = setmetatable({}, {
  __call = function(_, spec) return require("qemu.sweep").sweep(spec) end,
  __index = function(t, k)
    local v = require("qemu.sweep")[k]
    rawset(t, k, v)
    return v
  end,
})

-- qemu.tmpdir() -> a private dir for this shell, removed when it exits
function M.tmpdir()
  return require("qemu.util.fs").scratch()
end

-- qemu.vms() -> the VMs of this shell that are not closed, oldest first
function M.vms()
  launch = launch or load_launch()
  return launch.live()
end

-- Called by the shell once the script has finished normally: quit what the
-- script left running, gracefully (lua_close would only kill).
function M._shutdown()
  -- (loaded by whatever launched: qemu.launch, qemu.guest.launch, a sweep)
  local l = package.loaded["qemu.vm.launch"]
  if l then l.shutdown_all() end
end

local names = {}
for k in pairs(lazy) do names[#names + 1] = k end
table.sort(names)

return setmetatable(M, {
  __lazy = names, -- for completion: fields that load on first use
  __index = function(t, k)
    local mod = lazy[k]
    if mod then
      local v = require(mod)
      rawset(t, k, v)
      return v
    end
    return nil
  end,
})
