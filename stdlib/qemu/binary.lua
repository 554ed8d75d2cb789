-- qemu.binary: what a QEMU binary is, asked of the binary itself, so that
-- nothing assumes the distribution's 7.2.
--
--   qemu.version([binary]) -> {major=, minor=, micro=, text="10.0.2", package=,
--                              path=, plugin_api={min=, cur=}, file_migration=}
--
-- A binary outside the system's QEMU (a package extracted somewhere, an
-- install under a prefix) finds the system's firmware and modules unless it
-- is told otherwise; launch() adds -L for the firmware beside it and
-- QEMU_MODULE_DIR for its modules (see M.tree).  A QEMU build tree
-- (./build/qemu-system-x86_64) finds its own, and gets nothing added.

local sys = require "qshell.os"
local errors = require "qemu.errors"
local fs = require "qemu.fs"
local run = require "qemu.run"

local M = {}

M.DEFAULT = "qemu-system-x86_64"

-- The binary a launch uses: opts.binary, else $QSHELL_QEMU, else the default.
function M.default(binary)
  local b = binary or os.getenv("QSHELL_QEMU")
  if not b or b == "" then b = M.DEFAULT end
  return b
end

-- The absolute path of binary (PATH searched for a bare name), or nil.
function M.resolve(binary)
  if binary:find("/") then return sys.realpath(binary) end
  local found = run.which(binary)
  return found and sys.realpath(found) or nil
end

-- For a binary at ROOT/usr/bin (or PREFIX/bin) that is not the system's:
-- {data = {dirs for -L}, modules = dir or nil}; nil when nothing is needed.
function M.tree(path)
  local bindir = path:match("^(.*)/bin/[^/]+$")
  if not bindir or bindir == "/usr" or bindir == "" then return nil end
  if not fs.is_dir(bindir .. "/share/qemu") then return nil end
  local t = { data = {} }
  for _, d in ipairs { "/share/qemu", "/share/seabios", "/lib/ipxe/qemu" } do
    if fs.is_dir(bindir .. d) then t.data[#t.data + 1] = bindir .. d end
  end
  for _, d in ipairs { "/lib/x86_64-linux-gnu/qemu", "/lib/qemu", "/lib64/qemu" } do
    if fs.is_dir(bindir .. d) then t.modules = bindir .. d break end
  end
  return t
end

-- The plugin API versions a QEMU accepts, by its version (QEMU does not
-- report them elsewhere): 7.2 and 8.x 0..1, 9.0 2, 9.1 2..3, 9.2+ 2..4.
function M.plugin_api(v)
  if v.major < 9 then return { min = 0, cur = 1 } end
  if v.major == 9 and v.minor == 0 then return { min = 2, cur = 2 } end
  if v.major == 9 and v.minor == 1 then return { min = 2, cur = 3 } end
  return { min = 2, cur = 4 }
end

local cache = {}

-- qemu.version([binary]) -> what `binary --version` says, parsed.
function M.version(binary)
  local b = M.default(binary)
  local path = M.resolve(b)
  if not path then
    errors.raise { class = "LaunchFailed", command = "qemu.version",
                   desc = "no QEMU binary " .. b .. " (not found or not executable)",
                   hint = "is QEMU installed? (make deps) or give binary= / QSHELL_QEMU" }
  end
  if cache[path] then return cache[path] end
  local argv = { path, "--version" }
  local st = run.run(argv, { command = "qemu.version" })
  local text = st.stdout ~= "" and st.stdout or st.stderr
  local maj, min, mic = text:match("version (%d+)%.(%d+)%.(%d+)")
  if st.code ~= 0 or not maj then
    errors.raise { class = "LaunchFailed", command = "qemu.version",
                   desc = path .. " --version: " .. (text:gsub("%s+$", "")) }
  end
  local v = { major = tonumber(maj), minor = tonumber(min), micro = tonumber(mic), path = path,
              package = text:match("%((.-)%)") }
  v.text = string.format("%d.%d.%d", v.major, v.minor, v.micro)
  v.plugin_api = M.plugin_api(v)
  -- migrate to "file:" (with a passed fd through add-fd) exists since 8.2;
  -- "fd:" to a file is deprecated from 9.1.
  v.file_migration = v.major > 8 or (v.major == 8 and v.minor >= 2)
  cache[path] = v
  return v
end

local machines = {}

-- M.machines([binary]) -> set of the machine types it has (aliases too)
function M.machines(binary)
  local v = M.version(binary)
  if machines[v.path] then return machines[v.path] end
  local st = run.run({ v.path, "-machine", "help" }, { command = "qemu.launch" })
  local set = {}
  for line in st.stdout:gmatch("[^\n]+") do
    local name, rest = line:match("^(%S+)%s+(.*)$")
    if name and name ~= "Supported" then
      set[name] = true
      local alias = rest:match("alias of (%S+)")
      if alias then set[alias] = true end
    end
  end
  machines[v.path] = set
  return set
end

return M
