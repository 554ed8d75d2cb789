-- qemu: the script API (DESIGN.md).  Preloaded as the global `qemu`;
-- `require "qemu"` works too.  Submodules (disk, plugin, guest, ...) load
-- on first use, so `qshell -e ''` stays fast.

local json = require "qshell.json"

local M = {}

-- qemu.null: JSON's null (a value, not a function: qemu.json.decode's
-- contract documents it).
M.null = json.null

-- qemu.json: the C module qshell.json (shell/ljson.c).

---@api qemu.json.encode qemu.json.encode(value [, {pretty=false}]) -> text
--- Encodes a Lua value as JSON text.
--- A table marked by `qemu.json.array` or `qemu.json.object` (every table
--- `qemu.json.decode` returns is marked) is written as that type; an
--- unmarked table is an array when its keys are exactly 1..n and an object
--- otherwise, and an empty unmarked table is an object `{}` (QMP arguments
--- are objects). `qemu.null` is written as `null`. A whole number held as a
--- float (`1e9`, `2^30`) is written as an integer, as QMP wants. Strings
--- pass through byte for byte (invalid UTF-8 is not checked).
---
--- Errors are plain Lua errors (a string "json.encode: ..."), not
--- `qemu.error` objects: a table that contains itself (a cycle), a
--- non-string key in an object, a key with a NUL byte, NaN or an infinity,
--- tables nested deeper than 64 levels, a value JSON cannot hold (a
--- function, a userdata other than `qemu.null`), an option other than
--- `pretty`.
---
---     print(qemu.json.encode({ driver = "e1000", id = "n1" }))   --> {"driver":"e1000","id":"n1"}
---     print(qemu.json.encode(qemu.json.array({})))               --> []
---
---@param value any  a table, string, number, boolean or `qemu.null`
---@param options? table  `pretty=` (boolean, default false): indented output, one member a line
---@return string text  the JSON text

---@api qemu.json.decode qemu.json.decode(text [, {depth=64}]) -> value
--- Decodes JSON text into Lua values.
--- JSON `null` becomes `qemu.null`, a value of its own, not `nil`, which
--- would lose the positions of a list: `[1, null, 3]` decodes to
--- `{1, qemu.null, 3}` (QMP replies hold it too). `qemu.json.encode` writes
--- `qemu.null` as `null`, and `tostring(qemu.null)` is "null"; test for it
--- with `v == qemu.null`. Arrays and objects come back as tables marked
--- with their type (`qemu.json.type`), so `[]` and `{}` are encoded again
--- as they came in. An integer that does not fit in 64 bits is an
--- error (json-c would clamp it silently). The parser is as lenient as
--- json-c: it also takes trailing commas, single quotes, comments, `NaN` and
--- `Infinity`; what it returns is always valid Lua. Anything but white space
--- after the value is an error.
---
--- Errors are plain Lua errors (a string "json.decode: ... at byte N"), not
--- `qemu.error` objects: malformed text, nesting deeper than `depth`, a too
--- large integer, trailing data, an option other than `depth`.
---
---     local v = qemu.json.decode('{"a": [1, null, 3]}')
---     print(v.a[2] == qemu.null, qemu.json.type(v.a))   --> true  array
---
---@param text string  the JSON text
---@param options? table  `depth=` (integer 1..64, default 64): the most arrays and objects nested in one another that the text may have
---@return any value  the decoded value

---@api qemu.json.array qemu.json.array([t]) -> t
--- Marks a table to be encoded as a JSON array, and returns it.
--- `qemu.json.encode` then writes its elements 1..#t, whatever other keys it
--- has. With no argument it returns a new empty table, so
--- `qemu.json.array()` is the empty array `[]` (an unmarked `{}` is an
--- object). The table's metatable is replaced by the marker.
---
---@param t? table  the table to mark (default: a new empty table)
---@return table t  the same table, marked

---@api qemu.json.object qemu.json.object([t]) -> t
--- Marks a table to be encoded as a JSON object, and returns it.
--- Useful for a table whose keys look like a list, or to make the
--- intent plain. With no argument it returns a new empty table. The
--- table's metatable is replaced by the marker; every key must be a string
--- when it is encoded.
---
---@param t? table  the table to mark (default: a new empty table)
---@return table t  the same table, marked

---@api qemu.json.type qemu.json.type(v) -> "array"|"object"|"null"|nil
--- The JSON type a value is marked with.
--- "array" or "object" for a table marked by `qemu.json.array` /
--- `qemu.json.object` or returned by `qemu.json.decode`, "null" for
--- `qemu.null`, and nil for anything else (an unmarked table too).
---
---     print(qemu.json.type(qemu.json.decode("[]")))   --> array
---
---@param v any  the value to look at
---@return string|nil type  "array", "object", "null", or nil
M.json = json

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

---@api qemu.now qemu.now() -> seconds
--- A monotonic clock, in seconds, for timing experiments.
--- Its origin is arbitrary (not the epoch): only differences between two
--- calls mean something. It does not jump when the system time is set.
---
---     local t0 = qemu.now()
---     vm.console:run("./bench")
---     print(string.format("%.3f s", qemu.now() - t0))
---
---@return number seconds  the clock's reading (a float)
M.now = sys.now

---@api qemu.version qemu.version([binary]) -> info
--- What a QEMU binary is, asked of the binary itself (`--version`).
--- The answer is remembered in `~/.cache/qshell/qemu-versions` by path, size
--- and mtime (a QEMU takes 60-70 ms to say its version; a binary replaced
--- in place is asked again). `vm.version` is, instead, the version a
--- running VM's QEMU reported in its QMP greeting.
---
---     local v = qemu.version("/opt/qemu-10/bin/qemu-system-x86_64")
---     if v.major >= 9 then print("scoreboards: inline per-vCPU counts") end
---
---@param binary? string  the QEMU binary, a path or a name looked up in PATH (default: `$QSHELL_QEMU`, else `qemu-system-x86_64`)
---@return table info  `{major=, minor=, micro=, text=, package=, path=, plugin_api=, file_migration=, rom_off=, build_tree=}`:
---   `major`, `minor`, `micro` integers and `text` ("7.2.22");
---   `package` the distribution package in the version line's parentheses (e.g. "Debian 1:7.2+dfsg-7+deb12u7"), or nil;
---   `path` the resolved absolute path;
---   `plugin_api` `{min=, cur=}`, the TCG plugin API versions it loads ({0, 1} before 9.0, {2, 4} from 9.2 on);
---   `file_migration` true from 8.2 on (migration to `file:` through an fd set);
---   `rom_off` true from 8.2 on (a read-only RAM file with writable private pages);
---   `build_tree` the QEMU source directory when the binary runs from a QEMU build tree, else nil
---@error LaunchFailed  no such binary (not found or not executable), or `--version` failed or printed no version
function M.version(binary)
  return require("qemu.util.binary").version(binary)
end

---@api qemu.sleep qemu.sleep(seconds)
--- Sleeps, and Ctrl-C interrupts the sleep.
--- Monotonic time: a change of the system clock does not shorten or
--- lengthen it.
---
---     qemu.sleep(0.05)
---
---@param seconds number  how long: a number >= 0, not infinite (fractions allowed)
---@error BadArgument  seconds is not a finite number >= 0
---@error Interrupted  Ctrl-C during the sleep
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

-- qemu.launch and qemu.attach: their contracts are in qemu/vm/launch.lua,
-- beside the options they take.
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

---@api qemu.tmpdir qemu.tmpdir() -> path
--- A private directory for this shell, removed when the shell exits.
--- The same directory every call (mode 0700, under `$TMPDIR` or /tmp): the
--- place for a script's scratch files. One left behind by a qshell that was
--- killed is removed by the next qshell.
---
---     local img = qemu.tmpdir() .. "/data.qcow2"
---
---@return string path  the directory's path
---@error IOError  the directory cannot be made
function M.tmpdir()
  return require("qemu.util.fs").scratch()
end

---@api qemu.vms qemu.vms() -> list
--- The VMs of this shell that are not closed, oldest first.
--- Launched and attached VMs alike. In a script, a VM no longer referred to
--- is closed by the garbage collector and leaves the list (the interactive
--- shell keeps its VMs until they are closed); when a script ends normally,
--- every VM still open is quit gracefully (`vm:close()`).
---
---     for _, vm in ipairs(qemu.vms()) do print(vm.name, vm.pid) end
---
---@return qemu.VM[] list  the open VMs, in the order they were launched or attached
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
