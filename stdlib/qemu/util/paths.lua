-- qemu.paths: where qshell's own files are, found from where the binary is
-- (config.exe), never from a path compiled in.  Two layouts:
--
--   build tree   TOP/qshell        TOP/build/plugins   TOP/guest/build.sh
--                                  TOP/build/roi/qshell-roi
--                                  guest built into TOP/build/guest (by `make guest`)
--   installed    PREFIX/bin/qshell PREFIX/lib/qshell/plugins
--                                  PREFIX/lib/qshell/qshell-roi
--                                  PREFIX/share/qshell/guest/build.sh
--                                  guest built into $XDG_DATA_HOME/qshell/guest
--
-- Environment overrides, for tests and unusual installs: QSHELL_PLUGIN_DIR,
-- QSHELL_GUEST_DIR (where the default guest is or is built), QSHELL_ROI_HELPER.

local config = require "qshell.config"

local M = {}

local is_file = require("qemu.util.fs").is_file

local function env(name)
  local v = os.getenv(name)
  if v and v ~= "" then return v end
  return nil
end

local layout
-- M.layout() -> {kind="tree"|"installed", top=|prefix=}
function M.layout()
  if layout then return layout end
  local exe = config.exe or ""
  local dir = exe:match("^(.*)/[^/]*$") or "."
  if is_file(dir .. "/guest/build.sh") and is_file(dir .. "/stdlib/qemu/init.lua") then
    layout = { kind = "tree", top = dir }
  else
    layout = { kind = "installed", prefix = dir:match("^(.*)/bin$") or (dir .. "/..") }
  end
  return layout
end

-- One of qshell's own built files: $VAR, else its place in the build tree
-- or under the install prefix.
local function own(var, tree_rel, prefix_rel)
  local o = env(var)
  if o then return o end
  local l = M.layout()
  if l.kind == "tree" then return l.top .. "/" .. tree_rel end
  return l.prefix .. "/" .. prefix_rel
end

-- The directory of the project's plugins (libinsn.so, ...).
function M.plugin_dir()
  return own("QSHELL_PLUGIN_DIR", "build/plugins", "lib/qshell/plugins")
end

-- The static qshell-roi helper that marks regions of interest in a guest
-- (installed into the default guest and into qemu.image.build's images).
function M.roi_helper()
  return own("QSHELL_ROI_HELPER", "build/roi/qshell-roi", "lib/qshell/qshell-roi")
end

-- The directory the default guest is built into and read from.
function M.guest_dir()
  local o = env("QSHELL_GUEST_DIR")
  if o then return o end
  local l = M.layout()
  if l.kind == "tree" then return l.top .. "/build/guest" end
  local data = env("XDG_DATA_HOME") or ((env("HOME") or "/root") .. "/.local/share")
  return data .. "/qshell/guest"
end

-- qshell's cache (rebuildable files: QEMU version answers, built images,
-- the registry of backing files): $XDG_CACHE_HOME/qshell or ~/.cache/qshell.
function M.cache_dir()
  local base = env("XDG_CACHE_HOME") or ((env("HOME") or "/root") .. "/.cache")
  return base .. "/qshell"
end

-- The guest builder script (build.sh OUTDIR), or nil when it is not there.
function M.guest_builder()
  local l = M.layout()
  local p = l.kind == "tree" and l.top .. "/guest/build.sh"
            or l.prefix .. "/share/qshell/guest/build.sh"
  return is_file(p) and p or nil
end

return M
