-- qemu.plugin.so: whether a file is a TCG plugin QEMU can load: a 64-bit
-- little-endian ELF shared object that exports qemu_plugin_version and
-- qemu_plugin_install, read without binutils.  qemu.plugin checks each
-- .so with it before QEMU starts, qemu.plugin.build each .so it compiles.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local sys = require "qshell.os"

local M = {}

-- Read an ELF shared object's dynamic symbol names (enough to find
-- qemu_plugin_version without binutils).
local function elf_dynsyms(path)
  local f = io.open(path, "rb")
  if not f then return nil, "cannot open" end
  local data = f:read(1 << 26) or ""
  f:close()
  if data:sub(1, 4) ~= "\x7fELF" then return nil, "not an ELF file" end
  if data:byte(5) ~= 2 or data:byte(6) ~= 1 then return nil, "not a 64-bit little-endian ELF file" end
  local e_type = string.unpack("<I2", data, 17)
  if e_type ~= 3 then return nil, "not a shared object (ELF type " .. e_type .. ")" end
  local shoff = string.unpack("<I8", data, 41)
  local shentsize, shnum = string.unpack("<I2I2", data, 59)
  local sections = {}
  for i = 0, shnum - 1 do
    local base = shoff + i * shentsize + 1
    if base + 63 > #data then return nil, "truncated ELF file" end
    local _, stype, _, _, off, size, link, _, _, entsize =
      string.unpack("<I4I4I8I8I8I8I4I4I8I8", data, base)
    sections[i] = { type = stype, off = off, size = size, link = link, entsize = entsize }
  end
  local names = {}
  for _, s in pairs(sections) do
    if s.type == 11 then -- SHT_DYNSYM
      local strtab = sections[s.link]
      for j = 0, s.size // 24 - 1 do
        local name_off = string.unpack("<I4", data, s.off + j * 24 + 1)
        local start = strtab.off + name_off + 1
        local stop = data:find("\0", start, true)
        if stop then names[data:sub(start, stop - 1)] = true end
      end
    end
  end
  return names
end

---@api qemu.plugin.check qemu.plugin.check(path) -> true
--- Check that a file is a TCG plugin QEMU can load, before any QEMU is started.
---
--- It must exist, be a 64-bit little-endian ELF shared object, and export `qemu_plugin_version` and
--- `qemu_plugin_install`. `qemu.launch` checks every plugin this way; QEMU's own load errors ("plugin
--- requires API version 99", "does not declare API version", "qemu_plugin_install returned error code -1")
--- come back from `qemu.launch` as `LaunchFailed` errors that name the fix.
---
---     qemu.plugin.check("/x/libmine.so")
---
---@param path string  the `.so`
---@return boolean ok  true
---@error BadArgument  `path` is not a string
---@error PluginError  no such file, not a 64-bit little-endian ELF shared object, or a symbol missing (the hint says
---   how to declare it)
function M.check(path)
  local fname = "qemu.plugin.check"
  check.arg(fname, 1, path, "string")
  local st = sys.stat(path)
  if not st then
    errors.raise { class = "PluginError", command = fname, desc = "plugin " .. path .. ": no such file",
                   hint = "build it (make), or give the right path" }
  end
  local syms, why = elf_dynsyms(path)
  if not syms then
    errors.raise { class = "PluginError", command = fname,
                   desc = string.format("plugin %s: %s", path, why),
                   hint = "a TCG plugin is built with cc -shared -fPIC" }
  end
  for _, sym in ipairs { "qemu_plugin_version", "qemu_plugin_install" } do
    if not syms[sym] then
      errors.raise { class = "PluginError", command = fname,
                     desc = string.format("plugin %s does not export %s", path, sym),
                     hint = sym == "qemu_plugin_version"
                       and "declare QEMU_PLUGIN_EXPORT int qemu_plugin_version (QEMU 7.2 and 8.x take API version 1, 9.0 and later 2 to 4; qemu.version(binary).plugin_api says)"
                       or "a plugin needs QEMU_PLUGIN_EXPORT int qemu_plugin_install(...)" }
    end
  end
  return true
end

return M
