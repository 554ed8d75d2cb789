-- qemu.binary: what a QEMU binary is, asked of the binary itself, so that
-- nothing assumes the distribution's 7.2.
--
--   qemu.version([binary]) -> {major=, minor=, micro=, text="10.0.2", package=,
--                              path=, plugin_api={min=, cur=}, file_migration=,
--                              rom_off=, build_tree=SOURCE_DIR or nil}
--
-- A binary outside the system's QEMU (a package extracted somewhere, an
-- install under a prefix) finds the system's firmware and modules unless it
-- is told otherwise; launch() adds -L for the firmware beside it and
-- QEMU_MODULE_DIR for its modules (see M.tree).  A QEMU build tree
-- (./build/qemu-system-x86_64) finds its own firmware when the source has
-- it; a source without the prebuilt blobs (a distribution's source
-- package: Debian removes them) gets the system's firmware through -L.

local sys = require "qshell.os"
local errors = require "qemu.errors"
local fs = require "qemu.util.fs"
local run = require "qemu.util.run"

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

local SYSTEM_FIRMWARE = { "/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu" }

-- A QEMU build tree: dir holds build.ninja (meson) and config-host.mak.
-- Returns {data=, modules=nil, build_tree=true, source=} or nil.
local function build_tree(dir)
  if not (fs.is_file(dir .. "/build.ninja") and fs.is_file(dir .. "/config-host.mak")) then return nil end
  local src
  for line in (fs.read(dir .. "/config-host.mak") or ""):gmatch("[^\n]+") do
    src = src or line:match("^SRC_PATH=(.+)$")
  end
  local t = { data = {}, build_tree = true, source = src }
  -- Where the tree's own firmware would be: the build's install bundle
  -- (QEMU 7.1+ looks there by itself) and the source's pc-bios.
  local own = { dir .. "/pc-bios", src and (src .. "/pc-bios") }
  local found = fs.is_file(dir .. "/qemu-bundle/usr/local/share/qemu/bios-256k.bin")
  for _, d in ipairs(own) do found = found or fs.is_file(d .. "/bios-256k.bin") end
  if not found then
    for _, d in ipairs(SYSTEM_FIRMWARE) do
      if fs.is_dir(d) then t.data[#t.data + 1] = d end
    end
  end
  return t
end

-- For a binary that is not the system's: {data = {dirs for -L}, modules =
-- dir or nil}; nil when nothing is needed.  A binary at ROOT/usr/bin (or
-- PREFIX/bin) beside ROOT/usr/share/qemu gets that tree's firmware and
-- modules; a binary in a QEMU build tree the system's firmware when the
-- tree has none.
function M.tree(path)
  local dir = path:match("^(.*)/[^/]+$")
  if dir and dir ~= "/usr/bin" then
    local bt = build_tree(dir)
    if bt then return bt end
  end
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

-- What `--version` said, remembered across processes (a QEMU takes 60-70 ms
-- to say it; a restore asks before it starts QEMU): one line per binary,
-- "path<TAB>size<TAB>mtime<TAB>first line", in the user's cache dir.  A
-- binary replaced in place has another size or mtime, and is asked again.
local seen_file
local function seen_path()
  local base = os.getenv("XDG_CACHE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    base = home .. "/.cache"
  end
  return base .. "/qshell/qemu-versions"
end

local function seen_key(path)
  local st = sys.stat(path)
  return st and string.format("%s\t%d\t%.9f", path, st.size, st.mtime)
end

local function seen_get(key)
  if seen_file == nil then
    seen_file = {}
    local p = seen_path()
    for line in ((p and fs.read(p)) or ""):gmatch("[^\n]+") do
      local k, text = line:match("^(.-\t.-\t.-)\t(.*)$")
      if k then seen_file[k] = text end
    end
  end
  return seen_file[key]
end

local function seen_put(key, text)
  local p = seen_path()
  if not p or text:find("[\t\n]") then return end
  seen_file[key] = text
  pcall(function()
    fs.mkdir_p(p:match("^(.*)/[^/]+$"), "qemu.version")
    local f = io.open(p, "a")
    if f then
      f:write(key, "\t", text, "\n")
      f:close()
    end
  end)
end

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
  local key = seen_key(path)
  local text = key and seen_get(key)
  if not text then
    local st = run.run({ path, "--version" }, { command = "qemu.version", overrides = { exec = "LaunchFailed" } })
    text = st.stdout ~= "" and st.stdout or st.stderr
    if st.code ~= 0 or not text:match("version (%d+)%.(%d+)%.(%d+)") then
      errors.raise { class = "LaunchFailed", command = "qemu.version",
                     desc = path .. " --version: " .. (text:gsub("%s+$", "")) }
    end
    text = text:match("^[^\n]*")
    if key then seen_put(key, text) end
  end
  local maj, min, mic = text:match("version (%d+)%.(%d+)%.(%d+)")
  local v = { major = tonumber(maj), minor = tonumber(min), micro = tonumber(mic), path = path,
              package = text:match("%((.-)%)") }
  v.text = string.format("%d.%d.%d", v.major, v.minor, v.micro)
  -- Where it runs from: a QEMU build tree (its source dir), or not.
  local t = M.tree(path)
  if t and t.build_tree then v.build_tree = t.source or path:match("^(.*)/[^/]+$") end
  v.plugin_api = M.plugin_api(v)
  -- migrate to "file:" (with a passed fd through add-fd) exists since 8.2;
  -- "fd:" to a file is deprecated from 9.1.
  v.file_migration = v.major > 8 or (v.major == 8 and v.minor >= 2)
  -- A read-only RAM file mapped with writable private pages (rom=off on
  -- memory-backend-file) exists since 8.2 too.
  v.rom_off = v.file_migration
  cache[path] = v
  return v
end

local machines = {}

-- M.machines([binary]) -> set of the machine types it has (aliases too)
function M.machines(binary)
  local v = M.version(binary)
  if machines[v.path] then return machines[v.path] end
  local st = run.run({ v.path, "-machine", "help" }, { command = "qemu.launch", overrides = { exec = "LaunchFailed" } })
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
