-- qemu.plugin: TCG plugins from Lua.
--
--   qemu.launch{plugins = {{name="insn", args={limit=1e9}}, {path="/x/libmine.so", args={k="v"}}}}
--
-- The project's own plugins (plugins/, built by `make`) are found by name.
-- Each -plugin value is built with QEMU's option escaping (a comma in a
-- value is written ",,"), each .so is checked before QEMU starts (exists,
-- is a shared object, exports qemu_plugin_version), and the plugins' text
-- output (qemu_plugin_outs) goes to a per-VM log, vm:plugin_log().

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local paths = require "qemu.util.paths"
local sys = require "qshell.os"
local json = require "qshell.json"
local plugin_so = require "qemu.plugin.so"

local M = {}

function M.dir()
  return paths.plugin_dir()
end

-- The project's plugins by name -> path of the .so
function M.find(name)
  check.arg("qemu.plugin.find", 1, name, "string")
  local path = M.dir() .. "/lib" .. name .. ".so"
  if not sys.stat(path) then
    errors.raise { class = "PluginError", command = "qemu.plugin.find",
                   desc = string.format("no plugin named '%s' (no %s)", name, path),
                   hint = "the project's plugins are built by `make`; name one of: " .. M.names() }
  end
  return path
end

function M.names()
  local out = {}
  for _, f in ipairs(sys.listdir(M.dir()) or {}) do
    local n = f:match("^lib(.+)%.so$")
    if n then out[#out + 1] = n end
  end
  return #out > 0 and table.concat(out, ", ") or "(none built)"
end

local function value_text(k, v)
  if type(v) == "boolean" then return v and "on" or "off" end
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 63 then
    return string.format("%d", v) -- limit=1e9 means 1000000000, not "1e+09"
  end
  if type(v) == "number" then return tostring(v) end
  if type(v) == "string" then return v end
  check.bad("qemu.plugin.arg", "argument '%s' must be a string, number or boolean, got %s", k, type(v))
end

local spec_opts = { name = "string", path = "string", args = "table" }

-- qemu.plugin.arg(spec) -> the -plugin option value, e.g.
--   "build/plugins/libinsn.so,limit=1000,out=/tmp/a,,b.json"
function M.arg(spec)
  local fname = "qemu.plugin.arg"
  check.options(fname, spec, spec_opts)
  if (spec.name == nil) == (spec.path == nil) then
    check.bad(fname, "give either name= (a plugin of this project) or path= (a .so)")
  end
  local path = spec.path or M.find(spec.name)
  -- QEMU dlopens a path without a slash through the library search path.
  if not path:find("/") then path = "./" .. path end
  local keys = {}
  for k in pairs(spec.args or {}) do
    if type(k) ~= "string" or k == "" or k:find("[=,]") then
      check.bad(fname, "bad plugin argument name %q", tostring(k))
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local parts = { (path:gsub(",", ",,")) }
  for _, k in ipairs(keys) do
    parts[#parts + 1] = k .. "=" .. value_text(k, spec.args[k]):gsub(",", ",,")
  end
  return table.concat(parts, ",")
end

-- qemu.plugin.check(path) -> true, or raises PluginError with the reason
-- (qemu.plugin.so: qemu.plugin.build checks what it compiles with it too).
M.check = plugin_so.check

-- QEMU's plugin load errors -> the fix.
local plugin_traps = { -- the specific before the general: QEMU prefixes them all alike
  { "plugin requires API version", "rebuild the plugin for the API version this QEMU takes (qemu.version(binary).plugin_api)" },
  { "does not declare API version", "export qemu_plugin_version from the plugin" },
  { "qemu_plugin_install returned error", "the plugin refused its arguments: see its message in the log" },
  { "Could not load plugin", "the .so could not be opened: check the path (a path without a slash is looked up by the dynamic loader)" },
}
for _, t in ipairs(plugin_traps) do errors.traps[#errors.traps + 1] = t end

-- The hint for a plugin QEMU refused for its API version: the range this
-- very QEMU takes, asked of it.
function M.load_hint(log, binary)
  if not (log or ""):find("plugin requires API version") then return nil end
  local ok, v = pcall(require("qemu.util.binary").version, binary)
  if not ok then return nil end
  return string.format("this QEMU (%s) takes plugin API versions %d to %d: rebuild the plugin for one of them " ..
                       "(qshell's own plugins declare 1 on QEMU 7.2/8.x and 2 on 9.0+)",
                       v.text, v.plugin_api.min, v.plugin_api.cur)
end

-- The launch option: plugins = list of {name=|path=, args=}.
function M.launch_args(fname, plugins, ctx, add)
  if type(plugins) ~= "table" then check.bad(fname, "plugins must be a list of {name=|path=, args=}") end
  if ctx.accel ~= "tcg" then
    errors.raise { class = "BadArgument", command = fname,
                   desc = string.format("TCG plugins under %s load but see nothing", ctx.accel),
                   hint = 'use accel="tcg" with plugins' }
  end
  ctx.plugins = {}
  local specs = {}
  for i, spec in ipairs(plugins) do
    if type(spec) ~= "table" then check.bad(fname, "plugins[%d] must be a table {name=|path=, args=}", i) end
    check.options(string.format("%s plugins[%d]", fname, i), spec, spec_opts)
    if (spec.name == nil) == (spec.path == nil) then
      check.bad(fname, "plugins[%d]: give either name= (a plugin of this project) or path= (a .so)", i)
    end
    local s = { name = spec.name, path = spec.path, args = {} }
    for k, v in pairs(spec.args or {}) do s.args[k] = v end
    local path = spec.path or M.find(spec.name or "")
    M.check(path)
    if ctx.binary then require("qemu.plugin.build").check_api(path, ctx.binary) end
    -- The project's plugins write their result to the VM's temp dir unless told otherwise.
    if spec.name and s.args.out == nil then
      s.args.out = string.format("%s/%s-%d.json", ctx.tmpdir, spec.name, i)
    end
    ctx.plugins[#ctx.plugins + 1] = { name = spec.name or path:match("([^/]+)$"), path = path, out = s.args.out }
    specs[i] = s
  end
  -- The guest's ROI markers reach vm:wait_roi through one plugin's events= FIFO.
  local fifo = require("qemu.vm.roi").plan(fname, specs, ctx.tmpdir)
  if fifo then
    ctx.after = ctx.after or {}
    ctx.after[#ctx.after + 1] = function(vm) require("qemu.vm.roi").attach(vm, fifo) end
  end
  for _, s in ipairs(specs) do add("-plugin", M.arg(s)) end
  if #plugins > 0 then
    -- qemu_plugin_outs() text only appears with -d plugin: send it to a file.
    ctx.plugin_log = ctx.tmpdir .. "/plugin.log"
    add("-d", "plugin", "-D", ctx.plugin_log)
  end
end

-- Plugins compiled from C against a QEMU source tree (QEMU's contrib
-- plugins among them) and readers for their text reports live in
-- qemu.plugin.build, loaded on first use.
local function pb() return require "qemu.plugin.build" end
function M.build(opts) return pb().build(opts) end                  -- {src=, qemu_src=, name=, cflags=, binary=} -> .so
function M.contrib(name, opts) return pb().contrib(name, opts) end  -- QEMU's contrib/plugins/<name>.c -> .so
function M.contrib_names(opts) return pb().contrib_names(opts) end
function M.source(binary) return pb().source(binary) end            -- the QEMU source tree for binary
function M.api_of(path) return pb().api_of(path) end
function M.check_api(path, binary) return pb().check_api(path, binary) end
function M.parse(name, text) return pb().parse(name, text) end      -- a plugin's text report -> table
function M.result(text, name) return pb().result(text, name) end
function M.parser_name(name) return pb().parser_name(name) end
-- qemu.plugin.parsers: the readers by plugin name (a script may add one).
setmetatable(M, { __index = function(_, k) if k == "parsers" then return pb().parsers end end })
-- A plugin built against another QEMU's header may fail in dlopen, before
-- QEMU reads its API version: it calls a qemu_plugin_* function this QEMU
-- lacks.  Ahead of the general "Could not load plugin" trap.
table.insert(errors.traps, 1, { "undefined symbol: qemu_plugin_",
  "the plugin was built against another QEMU's plugin API (it calls a qemu_plugin_* function this QEMU lacks): " ..
  "rebuild it against this QEMU's source (qemu.plugin.build/contrib with binary= or qemu_src=)" })

return M
