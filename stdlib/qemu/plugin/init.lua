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

---@api qemu.plugin.dir qemu.plugin.dir() -> path
--- The directory of qshell's own TCG plugins (`libinsn.so`, `libhotblocks.so`), where `qemu.plugin.find` looks.
---
--- `$QSHELL_PLUGIN_DIR` when it is set; else `build/plugins` of the source tree qshell runs from (`make`
--- builds them there), or `PREFIX/lib/qshell/plugins` of an installed qshell.
---@return string path  the directory (it may not exist when the plugins are not built)
function M.dir()
  return paths.plugin_dir()
end

---@api qemu.plugin.find qemu.plugin.find(name) -> path
--- The `.so` of one of qshell's own plugins, by name: what `qemu.launch{plugins={{name=}}}` loads.
---
--- qshell's plugins are built by `make` from `plugins/` against a header written from QEMU's documented
--- plugin API; one `.so` loads in QEMU 7.2 and 8.x (as API version 1) and in 9.0 and later (as version 2):
---
--- - `insn`: instructions executed, total and per vCPU, and per region of interest. `out=FILE` writes
---   `{"plugin":"insn","total":N,"vcpus":[...],"limit":L,"limit_roi":ID|null,"stopped":bool,"rois":[...]}` at exit;
---   `limit=N` stops QEMU after N instructions (at most one translation block more): the script sees a `SHUTDOWN`
---   event with reason `host-signal`, QEMU exits with status 0, and the result says `"stopped": true`.
---   `limit_roi=ID` counts the limit inside ROI `ID` only (over all its entries): run the workload for 10^9
---   instructions, wherever it starts. Counting costs one inline add per translation block (QEMU 9.0+: into a
---   per-vCPU scoreboard; 7.2 with one vCPU: into one counter), or a callback per block with `limit=` or
---   (on 7.2) several vCPUs. A block left early (a fault, an I/O access in mid-block) counts whole:
---   `exact=on` adds one per instruction instead (exact whatever the blocks; about 1.2x the cost of the
---   per-block add; not with `limit=`; on 7.2 one vCPU). A recorded or replayed VM (`record=`, `replay=`)
---   gets `exact=on` unless `exact=` or `limit=` is given: where blocks end differs between a recording and
---   its replay, so per-block counts differed by about 130 instructions in 4.8 M, and per-instruction counts
---   are the same.
--- - `hotblocks`: the `top=N` (default 20) most executed translation blocks,
---   `{"blocks":[{"pc":"0xffffffff81...","insns":12,"count":12345},...],"total_blocks":K,"roi":false}`. `roi=on`
---   counts only while an ROI is open (a block counts when it starts inside one), e.g. the hot loops of the
---   workload and none of the boot.
--- - Both take `events=PATH` (qshell gives the first of them a FIFO by itself, for `vm:wait_roi`). Launched by
---   name, they get an `out=` in the VM's temporary directory unless one is given: `vm:plugin_result(name)`
---   reads it after QEMU ended.
---
---     local vm <close> = qemu.guest.launch { plugins = { { name = "insn", args = { limit = 1e9 } } } }
---     vm:wait()
---     print(vm:plugin_result("insn").total)
---
---@param name string  the plugin's name (`"insn"`), without `lib` and `.so`
---@return string path  `qemu.plugin.dir()/lib<name>.so`
---@error BadArgument  `name` is not a string
---@error PluginError  there is no such `.so` (the hint names the plugins that are built)
function M.find(name)
  check.arg("qemu.plugin.find", 1, name, "string")
  local path = M.dir() .. "/lib" .. name .. ".so"
  if not sys.stat(path) then
    errors.raise { class = "PluginError", command = "qemu.plugin.find",
                   desc = string.format("no plugin named '%s' (no %s)", name, path),
                   hint = "the project's plugins are built by `make`; name one of: " .. M._names() }
  end
  return path
end

-- The built plugins' names, as one string for find's hint (not a script API).
function M._names()
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

---@api qemu.plugin.arg qemu.plugin.arg(spec) -> value
--- The value of QEMU's `-plugin` option for a plugin and its arguments, with QEMU's escaping: what
--- `qemu.launch{plugins=}` passes.
---
--- A comma in a path or a value is written `,,`; booleans are `on`/`off`; a whole number given as a float is
--- written as an integer (`1e9` is `1000000000`); the arguments are sorted by name. A path without a slash
--- gets `./` (QEMU would look it up in the library search path otherwise). The `.so` is not checked here
--- (`qemu.plugin.check` does that).
---
---     print(qemu.plugin.arg { name = "insn", args = { limit = 1e9, out = "/tmp/a,b.json" } })
---     --> /.../build/plugins/libinsn.so,limit=1000000000,out=/tmp/a,,b.json
---
---@param spec table  `{name=|path=, args=}`: exactly one of `name=` (one of qshell's own plugins, found by
---   `qemu.plugin.find`) and `path=` (a `.so`); `args=` a table of argument names to strings, numbers or booleans
---@return string value  the `-plugin` value
---@error BadArgument  an unknown key or a wrong type, both or neither of `name` and `path`, an argument name that is
---   empty or holds `=` or `,`, an argument value of another type
---@error PluginError  no plugin of that name is built
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
-- very QEMU takes, asked of it (for qemu.launch's error; not a script API).
function M._load_hint(log, binary)
  if not (log or ""):find("plugin requires API version") then return nil end
  local ok, v = pcall(require("qemu.util.binary").version, binary)
  if not ok then return nil end
  return string.format("this QEMU (%s) takes plugin API versions %d to %d: rebuild the plugin for one of them " ..
                       "(qshell's own plugins declare 1 on QEMU 7.2/8.x and 2 on 9.0+)",
                       v.text, v.plugin_api.min, v.plugin_api.cur)
end

-- The launch option: plugins = list of {name=|path=, args=} (qemu.launch
-- calls this; not a script API).
function M._launch_args(fname, plugins, ctx, add)
  if type(plugins) ~= "table" then check.bad(fname, "plugins must be a list of {name=|path=, args=}") end
  if ctx.accel ~= "tcg" then
    errors.raise { class = "BadArgument", command = fname,
                   desc = string.format("TCG plugins under %s load but see nothing", ctx.accel),
                   hint = 'use accel="tcg" with plugins' }
  end
  ctx.plugins = {}
  local specs, has_lua = {}, false
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
    -- A recorded or replayed run counts per instruction: a count per block
    -- over-counts a block left early, and where blocks end differs between
    -- a recording and its replay (measured: ~130 instructions in 4.8 M).
    if ctx.rr and spec.name == "insn" and s.args.exact == nil and s.args.limit == nil then s.args.exact = true end
    if spec.name == "lua" and has_lua then
      check.bad(fname, "plugins[%d]: one lua plugin per VM (QEMU would load the same plugin twice): " ..
                       "do both scripts' work in one", i)
    end
    has_lua = has_lua or spec.name == "lua"
    local emit = spec.name == "lua" and require("qemu.plugin.lua").plan(s, ctx.tmpdir, i) or nil
    ctx.plugins[#ctx.plugins + 1] = { name = spec.name or path:match("([^/]+)$"), path = path, out = s.args.out,
                                      emit = emit }
    specs[i] = s
  end
  -- The guest's ROI markers reach vm:wait_roi through one plugin's events= FIFO.
  local fifo = require("qemu.vm.roi").plan(fname, specs, ctx.tmpdir)
  if fifo then
    ctx.after = ctx.after or {}
    ctx.after[#ctx.after + 1] = function(vm) require("qemu.vm.roi").attach(vm, fifo) end
  end
  if has_lua then
    ctx.after = ctx.after or {}
    ctx.after[#ctx.after + 1] = function(vm) require("qemu.plugin.lua").attach(vm) end
  end
  for _, s in ipairs(specs) do add("-plugin", M.arg(s)) end
  if #plugins > 0 then
    -- qemu_plugin_outs() text only appears with -d plugin: send it to a file.
    ctx.plugin_log = ctx.tmpdir .. "/plugin.log"
    add("-d", "plugin", "-D", ctx.plugin_log)
  end
end

---@api qemu.plugin.lua qemu.plugin.lua(script [, args]) -> spec
--- A plugin spec for `plugins = {...}` that runs a Lua script inside QEMU: instrumentation written in Lua.
--- The project's `lua` plugin embeds Lua 5.4 and runs `script` once when QEMU loads it; the script registers
--- callbacks on the global `plugin` (README, "Instrumentation in Lua": `plugin.on_translate(fn(tb))`,
--- `tb:count`, `insn:count`, `tb:on_exec`, `insn:on_exec`, `insn:on_mem`, `plugin.counter`, `plugin.on_roi`,
--- `plugin.read_register` (QEMU 9.0+), `plugin.emit`, `plugin.on_exit`, `plugin.args`). `script` is a path to
--- a `.lua` file or the script's source; it is compiled here first, so a script that is not valid Lua is
--- refused before QEMU starts. `args` (any table of strings, numbers, booleans and tables) is the script's
--- `plugin.args`. The spec goes wherever plugins do: `qemu.launch`, restores, sweeps. While the VM runs,
--- `vm:plugin_events()` and `vm:wait_plugin_event()` get what the script emits; after it,
--- `vm:plugin_result("lua")` what its `plugin.on_exit` function returned. A Lua error in the script stops the
--- VM, and the call in flight raises `PluginError` naming `script:line`.
---
---     local vm <close> = qemu.launch { restore = "prompt.ckpt", plugins = { qemu.plugin.lua([[
---       plugin.on_translate(function(tb) tb:count("insns", tb.n) end)
---       plugin.on_exit(function() return { insns = plugin.counter("insns") } end)
---     ]]) } }
---     vm.console:run("ls /")
---     vm:quit()
---     print(vm:plugin_result("lua").insns)
---
---@param script string  a path to a `.lua` file, or Lua source
---@param args? table  the script's `plugin.args`
---@return table spec  `{name="lua", args={script=, name=, args=}}`
---@error BadArgument  script is not a string, a one-line script ending in `.lua` that is no file, args that are
---   not a table or hold a function, userdata or a key that is neither string nor integer
---@error PluginError  the script is not valid Lua (the compiler's message, `script:line`)
---@error IOError  the script cannot be read, or its copy written
function M.lua(script, args) return require("qemu.plugin.lua").spec(script, args) end

-- Plugins compiled from C against a QEMU source tree (QEMU's contrib
-- plugins among them) and readers for their text reports live in
-- qemu.plugin.build, loaded on first use.
local function pb() return require "qemu.plugin.build" end

---@api qemu.plugin.build qemu.plugin.build(options) -> path
--- Compile a TCG plugin of your own from C against QEMU's source, and cache it.
---
--- It runs, from an argv, `cc -shared -fPIC -O2 -Wall -I TREE/include/qemu -idirafter TREE/include
--- -I TREE/contrib/plugins`, glib's flags (`pkg-config glib-2.0`: the header and the contrib plugins use glib),
--- then `cflags` (`$CC` overrides `cc`; `TREE/include` comes after the system's headers, whose `elf.h` and the
--- like it must not replace). The result is cached in `~/.cache/qshell/plugins/<hash>/lib<name>.so`, the hash
--- covering the sources' contents, `qemu-plugin.h`, the flags and `cc --version`: building the same thing again
--- runs no compiler. The compiler writes to a temporary name that is renamed into place, so the cache never
--- holds half a `.so`. A `.so` that lacks `qemu_plugin_version` or `qemu_plugin_install` is a build error. Beside
--- the `.so` goes its record, `lib<name>.so.build.json` (see `qemu.plugin.api_of`), so that a QEMU of another
--- plugin API is refused before it starts (`qemu.plugin.check_api`). The tree is found as
--- `qemu.plugin.source` says.
---
---     local so = qemu.plugin.build { src = "myplugin/", name = "mine", cflags = { "-DSAMPLE=100" },
---                                    qemu_src = "/src/qemu-10.0.2" }
---     local vm <close> = qemu.guest.launch { plugins = { { path = so, args = { k = "v" } } } }
---
---@param options table  `src=` is required, the other keys are optional:
---   `src=` string: one `.c` file, or a directory whose `.c` files make one plugin;
---   `name=` string: default the file's (or directory's) name without `.c`, giving `lib<name>.so`;
---   `cflags=` string[]: more compiler flags;
---   `qemu_src=` string: the QEMU source tree (it must have `include/qemu/qemu-plugin.h`); default
---   `qemu.plugin.source(binary)`;
---   `binary=` string: the QEMU whose tree to find (default: the one `qemu.launch` would run).
---@return string path  the cached `.so`
---@error BadArgument  no options or no `src=`, an unknown option or a wrong type, a name that is not letters, digits,
---   `_`, `-` and `.`
---@error PluginError  a missing `src` (or one with no `.c` files), a tree without `qemu-plugin.h` (its path and how
---   to get one), no tree for this QEMU, a failed compile (the compiler's first error lines), a `.so` without the
---   plugin symbols
---@error MissingTool  no C compiler, or no glib headers (`apt-get install libglib2.0-dev`)
---@error Timeout  the compiler ran for more than 10 minutes
---@error IOError  the cache could not be written
---@error LaunchFailed  the QEMU binary cannot be found or run (no `qemu_src=`)
function M.build(opts) return pb().build(opts) end                  -- {src=, qemu_src=, name=, cflags=, binary=} -> .so

---@api qemu.plugin.contrib qemu.plugin.contrib(name [, options]) -> path
--- Build one of QEMU's example plugins (`contrib/plugins`: cache, execlog, howvec, hotpages, ...) for the QEMU you run.
---
--- It compiles `TREE/contrib/plugins/<name>.c` as `qemu.plugin.build` does (cached the same way), against the
--- tree `qemu.plugin.source` finds for the QEMU to be run, or `qemu_src=`. Their reports are printed into
--- the VM's plugin log: read them with `qemu.plugin.parse`.
---
---     local cache = qemu.plugin.contrib("cache")
---     local vm <close> = qemu.guest.launch { plugins = { { path = cache, args = { l2 = "on", limit = 10 } } } }
---     vm.console:run("ls -R /usr >/dev/null")
---     vm.console:send("poweroff -f\r")
---     vm:wait { timeout = 120 }
---     print(qemu.plugin.parse("cache", vm:plugin_log()).cores[1].data_miss_rate)
---
---@param name string  the contrib plugin's name (`"cache"`)
---@param options? table  every key is optional:
---   `qemu_src=` string: the QEMU source tree; default `qemu.plugin.source(binary)`;
---   `binary=` string: the QEMU whose tree to find (default: the one `qemu.launch` would run);
---   `cflags=` string[]: more compiler flags.
---@return string path  the cached `.so`
---@error BadArgument  `name` is not a string, an unknown option or a wrong type
---@error PluginError  no such contrib plugin in the tree (the hint lists them), no tree, a failed compile
---@error MissingTool  no C compiler, or no glib headers
---@error Timeout  the compiler ran for more than 10 minutes
---@error LaunchFailed  the QEMU binary cannot be found or run (no `qemu_src=`)
function M.contrib(name, opts) return pb().contrib(name, opts) end  -- QEMU's contrib/plugins/<name>.c -> .so

---@api qemu.plugin.contrib_names qemu.plugin.contrib_names([options]) -> names
--- The names of the contrib plugins a QEMU source tree has (`TREE/contrib/plugins/*.c`), for `qemu.plugin.contrib`.
---
---     print(table.concat(qemu.plugin.contrib_names(), " "))   --> cache drcov execlog hotblocks ... (QEMU 7.2)
---
---@param options? table  every key is optional:
---   `qemu_src=` string: the QEMU source tree; default `qemu.plugin.source(binary)`;
---   `binary=` string: the QEMU whose tree to find (default: the one `qemu.launch` would run);
---   `cflags=` is accepted and ignored.
---@return string[] names  sorted (`"cache"`, `"execlog"`, `"hotpages"`, `"howvec"`, ...)
---@error BadArgument  an unknown option or a wrong type
---@error PluginError  no tree, or a tree without `qemu-plugin.h`
---@error LaunchFailed  the QEMU binary cannot be found or run (no `qemu_src=`)
function M.contrib_names(opts) return pb().contrib_names(opts) end

---@api qemu.plugin.source qemu.plugin.source([binary]) -> tree
--- The QEMU source tree qshell builds plugins against for a QEMU binary, when no `qemu_src=` is given.
---
--- Debian's QEMU packages ship neither QEMU's example plugins (`contrib/plugins`) nor the plugin API header
--- (`include/qemu/qemu-plugin.h`), so plugins are compiled against QEMU's source of the version that runs
--- them. The tree is `$QSHELL_QEMU_SRC` when it is set; else one that `tests/qemu/source.sh [SUITE]` of a
--- qshell checkout unpacked into `~/.cache/qshell/qemu-src/<version>/qemu` (or under `$QSHELL_CACHE/qemu-src`),
--- picked by the QEMU to be run: the same Debian version, else the same upstream version, else the same
--- major.minor (the plugin API does not change within a stable series). Elsewhere `apt-get source qemu`, or
--- QEMU's release tarball of that version, gives a tree to pass as `qemu_src=`.
---
---     print(qemu.plugin.source("/opt/qemu-10/bin/qemu-system-x86_64"))
---
---@param binary? string  the QEMU binary (default: the one `qemu.launch` would run)
---@return string tree  the source tree's absolute path
---@error BadArgument  `binary` is not a string
---@error PluginError  `$QSHELL_QEMU_SRC` is not a QEMU source tree, or there is no tree for this QEMU (the hint says
---   how to get one)
---@error LaunchFailed  the QEMU binary cannot be found or run
function M.source(binary) return pb().source(binary) end            -- the QEMU source tree for binary

---@api qemu.plugin.api_of qemu.plugin.api_of(path) -> api, record | nil
--- The plugin API version a plugin built by qshell declares, read from the record beside it.
---
--- Every `.so` that `qemu.plugin.build` or `qemu.plugin.contrib` makes has a record beside it,
--- `lib<name>.so.build.json`: the plugin API version it declares (`QEMU_PLUGIN_VERSION` of the tree's header:
--- 1 in 7.2, 4 in 10.0, or the version its source sets itself), the tree's QEMU version, the sources and flags.
---
---     local api, rec = qemu.plugin.api_of(qemu.plugin.contrib("cache"))
---     print(api, rec.qemu)   --> 1  7.2.22 (a 7.2 tree)
---
---@param path string  the `.so`
---@return integer|nil api  the plugin API version; nil for a `.so` qshell did not build (or without a readable record)
---@return table|nil record  `{api=, qemu=, name=, contrib=, tree=, sources=, cflags=, compiler=}`: `qemu` the tree's QEMU
---   version, `contrib` the contrib plugin's name (nil for a plugin of your own), `tree` the source tree, `sources` the
---   `.c` files, `cflags` the extra flags, `compiler` the compiler's `--version` line
---@error BadArgument  `path` is not a string
function M.api_of(path) return pb().api_of(path) end

---@api qemu.plugin.check_api qemu.plugin.check_api(path [, binary]) -> api | nil
--- Refuse a plugin qshell built for a plugin API the QEMU binary does not take, before any QEMU is started.
---
--- The error names both versions, e.g. `plugin libcache.so was built against QEMU 7.2.22's plugin API 1; this
--- QEMU (10.0.2) takes 2..4`, with the call that rebuilds it for that QEMU as the hint. A `.so` without a
--- build record (not built by qshell) passes: QEMU checks it when it loads it, and `qemu.launch` turns its
--- refusal (`plugin requires API version`, or `undefined symbol: qemu_plugin_...` for a function that QEMU lacks)
--- into a `LaunchFailed` error whose hint says to rebuild the plugin against that QEMU's source.
--- `qemu.launch` makes this check for every plugin.
---
---     qemu.plugin.check_api(so, "/opt/qemu-10/bin/qemu-system-x86_64")   -- raises if built for another API
---
---@param path string  the `.so`
---@param binary? string  the QEMU binary (default: the one `qemu.launch` would run)
---@return integer|nil api  the plugin's API version; nil for a `.so` without a build record
---@error BadArgument  an argument is not a string
---@error PluginError  the QEMU does not take the plugin's API version
---@error LaunchFailed  the QEMU binary cannot be found or run
function M.check_api(path, binary) return pb().check_api(path, binary) end

---@api qemu.plugin.parse qemu.plugin.parse(name, text) -> report
--- A contrib plugin's report as a table, read from the text it printed (`qemu_plugin_outs`, i.e. `vm:plugin_log()`).
---
--- The plugins of a VM share one log, so each reader takes its own lines and skips the rest. Reports are
--- printed when QEMU exits: read them after `vm:wait()` or `vm:quit()`. Counts and addresses are Lua
--- integers, 64-bit addresses at 2^63 and above negative (`string.format("0x%x", pc)` prints them as QEMU did).
---
--- - `cache` -> `{cores={{core=0, data_accesses=, data_misses=, data_miss_rate=, insn_accesses=, insn_misses=,
---   insn_miss_rate=, l2_accesses=, l2_misses=, l2_miss_rate=}, ...}, sum=, l2={accesses=, misses=, miss_rate=},
---   data_hot=, insn_hot=, l2_hot=}`. Miss rates are fractions (misses / accesses: 0.0123 for QEMU's "1.2300%"),
---   computed from the counts; `sum` is there with two or more vCPUs, the `l2` fields with `l2=on` (or any `l2*`
---   argument). The hot lists (`limit=N`, default 32) are `{addr=, symbol=, misses=, disas=}`; in system
---   emulation cache.c reports the host address of the translated code there, not a guest address.
--- - `execlog` -> a list of
---   `{vcpu=, pc=, opcode=, disas=, mem={{kind="load"|"store", addr=, device=}, ...}, regs={rax=...}}`
---   (`device` and a physical `addr` in system emulation; `regs` with 10.0's `reg=`). execlog logs every
---   instruction: give it `ifilter=` (a disassembly prefix) or `afilter=` (an address). Text with no execlog
---   lines gives an empty list.
--- - `howvec` ->
---   `{classes={{class=, hits=} | {class=, individual=true} | {class=, counted=false}}, insns={{insn=, hits=, opcode=, class=}}}`.
--- - `hotpages` -> `{pages={{addr=, read_cpus=, reads=, write_cpus=, writes=}}}` (the CPU sets are bit masks).
--- - `qemu.plugin.parsers.<name> = function(text) return table | nil, why end` adds a reader for a plugin of your own.
---
---     for _, i in ipairs(qemu.plugin.parse("execlog", vm:plugin_log())) do
---       print(string.format("0x%x %s", i.pc, i.disas))
---     end
---
---@param name string  the plugin's name (`"cache"`), its `.so` name (`"libcache.so"`) or its path (a `.so` qshell
---   built under another name is known by the contrib plugin it came from)
---@param text string  the plugin log
---@return table report  the report, as above
---@error BadArgument  an argument is not a string
---@error PluginError  no reader for that plugin (the hint lists them), or no report in the text (cache, howvec,
---   hotpages; or a reader of your own that returned nil)
function M.parse(name, text) return pb().parse(name, text) end      -- a plugin's text report -> table

---@api qemu.plugin.result qemu.plugin.result(log, name) -> report
--- A plugin's report read from a VM's plugin log: `qemu.plugin.parse(name, log)`, its error naming the plugin log.
---
--- `vm:plugin_result(name)` uses it for the contrib plugins, which write no result file.
---
---     local r = qemu.plugin.result(vm:plugin_log(), "cache")
---
---@param log string  the plugin log's text (`vm:plugin_log()`)
---@param name string  the plugin's name, `.so` name or path, as for `qemu.plugin.parse`
---@return table report  the report, as `qemu.plugin.parse` gives it
---@error BadArgument  an argument is not a string
---@error PluginError  no reader for that plugin, or no report in the log
function M.result(text, name) return pb().result(text, name) end
-- the report reader's name for a plugin, .so name or path (vm:plugin_result; not a script API)
function M._parser_name(name) return pb().parser_name(name) end
-- qemu.plugin.parsers: the readers by plugin name (a script may add one).
setmetatable(M, { __index = function(_, k) if k == "parsers" then return pb().parsers end end })
-- A plugin built against another QEMU's header may fail in dlopen, before
-- QEMU reads its API version: it calls a qemu_plugin_* function this QEMU
-- lacks.  Ahead of the general "Could not load plugin" trap.
table.insert(errors.traps, 1, { "undefined symbol: qemu_plugin_",
  "the plugin was built against another QEMU's plugin API (it calls a qemu_plugin_* function this QEMU lacks): " ..
  "rebuild it against this QEMU's source (qemu.plugin.build/contrib with binary= or qemu_src=)" })

return M
