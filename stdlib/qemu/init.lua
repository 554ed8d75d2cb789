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
}

local launch -- the launch module, loaded on first use

function M.launch(opts)
  launch = launch or require "qemu.launch"
  return launch.launch(opts)
end

function M.attach(path, opts)
  launch = launch or require "qemu.launch"
  return launch.attach(path, opts)
end

-- qemu.vms() -> the VMs of this shell that are not closed, oldest first
function M.vms()
  launch = launch or require "qemu.launch"
  return launch.live()
end

-- Called by the shell once the script has finished normally: quit what the
-- script left running, gracefully (lua_close would only kill).
function M._shutdown()
  if launch then launch.shutdown_all() end
end

return setmetatable(M, {
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
