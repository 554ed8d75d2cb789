-- qemu.plugin.lua: instrumentation written in Lua, run inside QEMU by the
-- project's lua plugin (plugins/lua.c).
--
--   local spec = qemu.plugin.lua("mix.lua", { roi = 1 })
--   local vm <close> = qemu.launch { restore = "prompt.ckpt", plugins = { spec } }
--   ...
--   vm:quit()
--   print(vm:plugin_result("lua").mov)
--
-- The host side: the spec (the script checked as Lua before QEMU starts,
-- its source and args written where the plugin reads them), the events the
-- script emits while the VM runs (vm:plugin_events, vm:wait_plugin_event),
-- its result, and its failures raised as PluginError naming script:line.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local fs = require "qemu.util.fs"
local json = require "qshell.json"
local sys = require "qshell.os"

local M = {}

local DEFAULT_TIMEOUT = 600

-- A Lua literal for v: the args file the plugin runs (`return {...}`).
local function literal(v, depth, where)
  local t = type(v)
  if depth > 64 then check.bad("qemu.plugin.lua", "args nest deeper than 64 tables") end
  if t == "string" then return string.format("%q", v) end
  if t == "boolean" then return tostring(v) end
  if math.type(v) == "integer" then return string.format("%d", v) end
  if t == "number" then
    if v ~= v then return "(0/0)" end
    if v == math.huge then return "math.huge" end
    if v == -math.huge then return "-math.huge" end
    return string.format("%.17g", v)
  end
  if t == "table" then
    local parts = {}
    for k, x in pairs(v) do
      if type(k) ~= "string" and math.type(k) ~= "integer" then
        check.bad("qemu.plugin.lua", "args%s: a key of type %s cannot reach the plugin (strings and integers can)",
                  where, type(k))
      end
      local key = type(k) == "string" and string.format("[%q]", k) or string.format("[%d]", k)
      parts[#parts + 1] = key .. "=" .. literal(x, depth + 1, where .. "." .. tostring(k))
    end
    table.sort(parts)
    return "{" .. table.concat(parts, ",") .. "}"
  end
  check.bad("qemu.plugin.lua", "args%s: a %s cannot reach the plugin (nil, booleans, numbers, strings and tables can)",
            where, t)
end

--- qemu.plugin.lua(script [, args]) -> spec (documented at qemu.plugin.lua in init.lua)
function M.spec(script, args)
  local fname = "qemu.plugin.lua"
  check.arg(fname, 1, script, "string")
  if args ~= nil then check.arg(fname, 2, args, "table") end
  local src, chunk, path
  local one_line = not script:find("\n")
  if one_line and fs.is_file(script) then
    path = fs.abspath(script)
    chunk = script
    src = fs.slurp(path, fname)
  elseif one_line and script:match("%.lua$") then
    check.bad(fname, "no script file %s (give a path to a .lua file, or the script's source)", script)
  else
    src = script
    chunk = "plugin script"
  end
  local ok, err = load(src, "@" .. chunk, "t")
  if not ok then
    errors.raise { class = "PluginError", command = fname,
                   desc = "the plugin script is not valid Lua: " .. tostring(err) }
  end
  if not path then
    path = fs.scratch_file("lua-plugin", ".lua")
    fs.write(path, src, fname)
  end
  local a = { script = path, name = chunk }
  if args ~= nil then
    a.args = fs.scratch_file("lua-plugin-args", ".lua")
    fs.write(a.args, "return " .. literal(args, 0, "") .. "\n", fname)
  end
  return { name = "lua", args = a }
end

-- VMs with a lua plugin, for turning "QEMU ended" into the script's error.
local with_lua = setmetatable({}, { __mode = "k" })

-- The plugin's out= file, decoded (nil when not written or not JSON).
local function outcome(p)
  local text = p.out and fs.read(p.out)
  if not text then return nil end
  local ok, v = pcall(json.decode, text)
  return ok and type(v) == "table" and v or nil
end

-- The first error a VM's lua plugins reported, or nil.
function M.failure(plugins)
  for _, p in ipairs(plugins or {}) do
    if p.name == "lua" then
      local v = outcome(p)
      if v and type(v.error) == "string" then return v.error end
    end
  end
  return nil
end

local function plugin_error(command, msg, exit)
  return { class = "PluginError", command = command, exit = exit,
           desc = "the lua plugin's script failed: " .. msg ..
                  " (the plugin stopped QEMU; vm:plugin_log() has the plugin's other output)" }
end

-- "QEMU ended" while a lua plugin's script had failed: that failure.
errors.explainers[#errors.explainers + 1] = function(t)
  if t.class ~= "QEMUExited" or t.exit == nil then return nil end
  for vm in pairs(with_lua) do
    if vm._exit == t.exit then
      local msg = M.failure(vm.plugins)
      if msg then return plugin_error(t.command, msg, t.exit) end
    end
  end
  return nil
end

-- From qemu.plugin's launch_args, for each lua spec (its args, copied):
-- the events file the script's plugin.emit appends to.
function M.plan(s, tmpdir, i)
  s.args.emit = string.format("%s/lua-%d.events", tmpdir, i)
  fs.write(s.args.emit, "", "qemu.launch")
  return s.args.emit
end

-- QEMU did not start: a lua plugin whose script failed at load (msg, from
-- M.failure while its file was there) says why.
function M.launch_failed(msg, fname, log)
  if msg then
    local e = plugin_error(fname, msg)
    e.desc = "the lua plugin's script failed while loading: " .. msg
    e.log = log
    errors.raise(e)
  end
end

-- After the launch: the VM reads its lua plugins' events.
function M.attach(vm)
  local files = {}
  for _, p in ipairs(vm.plugins or {}) do
    if p.name == "lua" and p.emit then files[#files + 1] = { path = p.emit, off = 0, buf = "" } end
  end
  if #files == 0 then return end
  vm._lua = { files = files, queue = {} }
  with_lua[vm] = true
end

local function need(vm, fname)
  if not vm._lua then
    check.bad(fname, "this VM has no lua plugin: launch it with plugins = { qemu.plugin.lua(script) }")
  end
  if vm:_is_closed() then check.bad(fname, "%s is closed", tostring(vm)) end
  return vm._lua
end

-- Move the whole lines the plugins have appended into the queue.
local function drain(l)
  for _, f in ipairs(l.files) do
    local data = fs.read_from(f.path, f.off)
    if data and #data > 0 then
      f.off = f.off + #data
      f.buf = f.buf .. data
      for line in f.buf:gmatch("([^\n]*)\n") do
        local ok, ev = pcall(json.decode, line)
        if ok then l.queue[#l.queue + 1] = ev end
      end
      f.buf = f.buf:match("[^\n]*$")
    end
  end
end

function M.events(vm)
  local l = need(vm, "vm:plugin_events")
  drain(l)
  local q = l.queue
  l.queue = {}
  return q
end

local wait_opts = { timeout = check.nonneg }

function M.wait(vm, match, opts)
  local fname = "vm:wait_plugin_event"
  if match ~= nil and type(match) ~= "table" then
    check.bad(fname, "match must be a table of the fields the event must have, got %s", type(match))
  end
  opts = check.options(fname, opts, wait_opts, 2)
  local l = need(vm, fname)
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local deadline = sys.now() + timeout
  -- the first queued event that matches, taken
  local function take()
    drain(l)
    for i, ev in ipairs(l.queue) do
      if match == nil or vm._match(ev, match) then return table.remove(l.queue, i) end
    end
  end
  while true do
    local ev = take()
    if ev then return ev end
    local _, gone = vm:_pump_events()
    if gone or vm:_exited() then
      local st = vm:_exit_status(1)
      ev = take()
      if ev then return ev end
      local msg = M.failure(vm.plugins)
      if msg then errors.raise(plugin_error(fname, msg, st)) end
      errors.raise { class = "QEMUExited", command = fname, exit = st,
                     desc = "QEMU ended before the plugin emitted such an event" }
    end
    local left = deadline - sys.now()
    if left <= 0 then
      errors.raise { class = "Timeout", command = fname,
                     desc = string.format("the plugin emitted no such event within %g s", timeout) }
    end
    local fds = {}
    local mfd = vm:_monitor_fd()
    if mfd then fds[1] = mfd end
    local ready, msg, code = sys.poll(fds, math.min(left, 0.02))
    if not ready then errors.from_code(fname, msg, code) end
  end
end

-- vm:plugin_result("lua"): what plugin.on_exit returned (the counters by
-- name when it returned nothing); the script's error raised.
function M.result(v, fname)
  if type(v.error) == "string" then errors.raise(plugin_error(fname, v.error)) end
  if v.result == nil or v.result == json.null then return v.counters end
  return v.result
end

return M
