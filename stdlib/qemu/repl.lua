-- qemu.repl: the Lua half of the interactive shell (shell/repl.c is the
-- terminal half): prompts, `:qmp key=value` and `!hmp` lines, the current
-- VM, events at the prompt, completion, and the result printer.
--
-- qemu.repl.print may be replaced to change how results are shown.

local json = require "qshell.json"
local pp = require "qemu.util.pp"
local check = require "qemu.util.check"

local M = {}

-- The shell keeps its VMs alive until they are closed (a script's dropped
-- VM is closed by the garbage collector; an interactive one is not).
require("qemu.vm.launch").pin = true

M.print = pp.print
M.max_backlog = 10000

local chosen -- the VM picked with .use, if still live

local function live()
  return require("qemu.vm.launch").live()
end

-- The current VM: the one picked with .use, else the newest live one.
function M.current()
  if chosen and not chosen:_is_closed() then return chosen end
  chosen = nil
  local vms = live()
  return vms[#vms]
end

local function need_vm()
  local vm = M.current()
  if not vm then
    check.bad("shell", "no VM: start one with qemu.launch{...} or qemu.guest.launch{}, or `qshell attach SOCKET`")
  end
  return vm
end

local function vm_state(vm)
  if vm:_exited() then return "exited" end
  local ok, st = pcall(vm.qmp, vm, "query-status", nil, { timeout = 0.5 })
  if ok then return st.status end
  return "?"
end

function M.prompt()
  if type(_PROMPT) == "string" then return _PROMPT end
  local vm = M.current()
  if not vm then return "qshell> " end
  return string.format("qshell %s:%s> ", vm.name, vm_state(vm))
end

function M.prompt2()
  if type(_PROMPT2) == "string" then return _PROMPT2 end
  return "   ...> "
end

-- ---- :command key=value ... ----

-- Split "a=1 b='x y' c={\"k\": 1}" into words; quotes group, braces nest.
local function words(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    while i <= n and s:sub(i, i):match("%s") do i = i + 1 end
    if i > n then break end
    local j, depth, quote = i, 0, nil
    local buf = {}
    while j <= n do
      local c = s:sub(j, j)
      if quote then
        if c == "\\" and quote == '"' then
          buf[#buf + 1] = s:sub(j, j + 1)
          j = j + 1
        elseif c == quote then
          quote = nil
          if depth > 0 then buf[#buf + 1] = c end
        else
          buf[#buf + 1] = c
        end
      elseif c == "'" or (c == '"' and depth == 0) then
        quote = c
      elseif c == '"' then
        quote = c
        buf[#buf + 1] = c
      elseif c == "{" or c == "[" then
        depth = depth + 1
        buf[#buf + 1] = c
      elseif c == "}" or c == "]" then
        depth = depth - 1
        buf[#buf + 1] = c
      elseif c:match("%s") and depth <= 0 then
        break
      else
        buf[#buf + 1] = c
      end
      j = j + 1
    end
    if quote then check.bad("shell", "unterminated quote in %q", s) end
    out[#out + 1] = table.concat(buf)
    i = j + 1
  end
  return out
end

-- A value: JSON when it parses (numbers, true, null, {...}, [...]), else a string.
local function value(s)
  if s:match("^[%[{%d%-]") or s == "true" or s == "false" or s == "null" then
    local ok, v = pcall(json.decode, s)
    if ok then return v end
  end
  return s
end

-- ":cmd k=v k2.sub=v2" or ":cmd {json}" -> cmd, args
function M.parse_qmp(line)
  local cmd, rest = line:match("^:%s*([%w_%-]+)%s*(.*)$")
  if not cmd then check.bad("shell", "usage: :command [key=value ...] or :command {json}") end
  if rest == "" then return cmd, nil end
  if rest:match("^{") then
    local ok, args = pcall(json.decode, rest)
    if not ok then check.bad("shell", "bad JSON arguments: %s", tostring(args):gsub("^json%.decode: ", "")) end
    return cmd, args
  end
  local args = {}
  for _, w in ipairs(words(rest)) do
    local k, v = w:match("^([^=]+)=(.*)$")
    if not k then check.bad("shell", "argument %q is not key=value", w) end
    local t = args
    local parts = {}
    for p in k:gmatch("[^.]+") do parts[#parts + 1] = p end
    if #parts == 0 then check.bad("shell", "argument %q has an empty key", w) end
    for i = 1, #parts - 1 do
      local sub = t[parts[i]]
      if sub == nil then
        sub = {}
        t[parts[i]] = sub
      elseif type(sub) ~= "table" or json.type(sub) == "array" then
        -- a.b=2 after a=1 or a=[1,2]: there is no object a to put b in
        check.bad("shell", "argument %q: %s is not an object", w, table.concat(parts, ".", 1, i))
      end
      t = sub
    end
    t[parts[#parts]] = value(v)
  end
  return cmd, args
end

function M.qmp_line(line)
  local cmd, args = M.parse_qmp(line)
  local r = need_vm():qmp(cmd, args)
  if r ~= nil and not (type(r) == "table" and next(r) == nil) then M.print(r) end
end

function M.hmp_line(line)
  local text = need_vm():hmp(line:sub(2))
  io.stdout:write(text)
  if text ~= "" and text:sub(-1) ~= "\n" then io.stdout:write("\n") end
  io.stdout:flush()
end

-- ---- dot-command helpers ----

function M.vms_text()
  local cur = M.current()
  local lines = {}
  for i, vm in ipairs(live()) do
    lines[#lines + 1] = string.format("%s %d  %-8s %-10s %s", vm == cur and "*" or " ", i, vm.name,
                                      vm_state(vm), vm.pid and ("pid " .. vm.pid) or (vm.socket or ""))
  end
  if #lines == 0 then return "no VMs\n" end
  return table.concat(lines, "\n") .. "\n"
end

function M.use(n)
  local vms = live()
  local i = tonumber(n)
  local vm = i and vms[i]
  if not vm then
    for _, v in ipairs(vms) do
      if v.name == n then vm = v end
    end
  end
  if not vm then check.bad(".use", "no VM %s (see .vms)", tostring(n)) end
  chosen = vm
  _G.vm = vm
  return vm.name
end

function M.set_log(on)
  for _, vm in ipairs(live()) do vm:_set_log(on) end
end

function M.owned_running()
  local out = {}
  for _, vm in ipairs(live()) do
    if vm:_owned() and not vm:_exited() then out[#out + 1] = vm.name end
  end
  return out
end

-- ---- events at the prompt ----

function M.watch_fds()
  local fds = {}
  for _, vm in ipairs(live()) do
    local fd = vm:_monitor_fd()
    if fd then fds[#fds + 1] = fd end
  end
  return fds
end

local function event_line(vm, ev)
  local data = ""
  if ev.data ~= nil and not (type(ev.data) == "table" and next(ev.data) == nil) then
    data = " " .. pp.format(ev.data, { width = 1000 })
  end
  return string.format("[%s] event %s%s", vm.name, ev.event, data)
end

-- Read what arrived; the events stay queued for vm:events()/wait_event.
function M.on_events()
  local lines = {}
  for _, vm in ipairs(live()) do
    local evs, gone = vm:_pump_events(M.max_backlog)
    for _, ev in ipairs(evs) do lines[#lines + 1] = event_line(vm, ev) end
    if gone then
      lines[#lines + 1] = string.format("[%s] QEMU %s", vm.name,
                                        type(gone) == "table" and gone.desc or "closed its monitor")
    end
  end
  return lines
end

-- ---- completion ----

local keywords = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
                   "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then",
                   "true", "until", "while" }
M.dot_commands = { ".help", ".vms", ".use", ".load", ".log", ".quit" }

-- What completion learned of each VM's QEMU, asked once per VM.
local learned = setmetatable({}, { __mode = "k" })
local function cache(vm)
  local c = learned[vm]
  if not c then c = { argnames = {} }; learned[vm] = c end
  return c
end

local function qmp_commands(vm)
  local c = cache(vm)
  if not c.commands then
    local names = {}
    for _, cmd in ipairs(vm:qmp("query-commands")) do names[#names + 1] = cmd.name end
    table.sort(names)
    c.commands = names
  end
  return c.commands
end

local function qmp_args(vm, cmd)
  local cc = cache(vm)
  if cc.argnames[cmd] then return cc.argnames[cmd] end
  if not cc.schema then
    local byname = {}
    for _, e in ipairs(vm:qmp("query-qmp-schema")) do byname[e.name] = e end
    local cmds = {}
    for _, e in ipairs(vm:qmp("query-qmp-schema")) do
      if e["meta-type"] == "command" then cmds[e.name] = e end
    end
    cc.schema = { types = byname, commands = cmds }
  end
  local names = {}
  local c = cc.schema.commands[cmd]
  local t = c and cc.schema.types[c["arg-type"]]
  for _, m in ipairs(t and t.members or {}) do names[#names + 1] = m.name end
  table.sort(names)
  cc.argnames[cmd] = names
  return names
end

local function hmp_commands(vm)
  local c = cache(vm)
  if not c.hmp then
    local names = {}
    for line in vm:hmp("help"):gmatch("[^\n]+") do
      local first = line:match("^(%S+)")
      if first then
        for n in first:gmatch("[^|]+") do names[#names + 1] = n end
      end
    end
    table.sort(names)
    c.hmp = names
  end
  return c.hmp
end

local function filter(list, prefix, decorate)
  local out = {}
  for _, name in ipairs(list) do
    if name:sub(1, #prefix) == prefix then out[#out + 1] = decorate and decorate(name) or name end
  end
  return out
end

-- Fields of a table or userdata, and its methods (from __index tables).
local function members(v, methods_only)
  local out, seen = {}, {}
  local function add(k)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k] then
      seen[k] = true
      out[#out + 1] = k
    end
  end
  local guard = 0
  local t = v
  while t ~= nil and guard < 4 do
    guard = guard + 1
    if type(t) == "table" then
      for k, x in pairs(t) do
        if (not methods_only or type(x) == "function") and not (type(k) == "string" and k:sub(1, 1) == "_") then
          add(k)
        end
      end
    end
    local mt = getmetatable(t)
    if type(mt) ~= "table" then break end
    if type(mt.__lazy) == "table" then
      for _, k in ipairs(mt.__lazy) do add(k) end
    end
    t = type(mt.__index) == "table" and mt.__index or nil
  end
  table.sort(out)
  return out
end

-- Walk "a.b.c" from _G without calling anything but lazy module loaders.
local function resolve(path)
  local v = _G
  for name in path:gmatch("[^.]+") do
    if type(v) ~= "table" and type(v) ~= "userdata" then return nil end
    local ok, x = pcall(function() return v[name] end)
    if not ok then return nil end
    v = x
  end
  return v
end

-- Does s end inside a '...' or "..." string?
local function in_string(s)
  local quote, i = nil, 1
  while i <= #s do
    local c = s:sub(i, i)
    if quote then
      if c == "\\" then
        i = i + 1
      elseif c == quote then
        quote = nil
      end
    elseif c == '"' or c == "'" then
      quote = c
    elseif c == "-" and s:sub(i, i + 1) == "--" then
      return false -- a comment
    end
    i = i + 1
  end
  return quote ~= nil
end

-- complete(line, start, stop) -> list of replacements for line[start+1..stop], or "files"
function M.complete(line, start, stop)
  local text = line:sub(start + 1, stop)
  local before = line:sub(1, start)
  -- Inside a string: file names.
  if in_string(before) then return "files" end
  local vm = M.current()
  if line:sub(1, 1) == ":" then
    if not vm then return {} end
    if start == 0 then
      return filter(qmp_commands(vm), text:sub(2), function(n) return ":" .. n end)
    end
    local cmd = line:match("^:%s*([%w_%-]+)")
    if not cmd or text:find("=") then return {} end
    return filter(qmp_args(vm, cmd), text, function(n) return n .. "=" end)
  end
  if line:sub(1, 1) == "!" then
    if not vm then return {} end
    if start == 0 then
      return filter(hmp_commands(vm), text:sub(2), function(n) return "!" .. n end)
    end
    return {}
  end
  if line:sub(1, 1) == "." and start == 0 then
    return filter(M.dot_commands, text)
  end
  if before:match("^%.load%s+$") then return "files" end
  local base, sep, partial = text:match("^(.*)([.:])([%w_]*)$")
  if base then
    local v = resolve(base)
    if v == nil then return {} end
    return filter(members(v, sep == ":"), partial, function(n) return base .. sep .. n end)
  end
  local out = filter(members(_G), text)
  for _, k in ipairs(filter(keywords, text)) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- .help text
M.help = [[
Lines:
  any Lua                    run it; an expression's value is printed
  :command key=value ...     a QMP command to the current VM (values: JSON or text;
                             a.b=1 nests), or :command {"json": "object"}
  !line                      an HMP (human monitor) command, e.g. !info registers
Dot-commands (on an empty line):
  .help                      this text
  .help NAME                 NAME's entry in the Lua reference (also help(qemu.launch),
                             help(vm.quit), help() for every name; man qshell-lua)
  .vms                       the VMs of this shell (* = current)
  .use N|NAME                make VM N the current one (also the global `vm`)
  .load FILE                 run a Lua file
  .log on|off                echo QMP traffic to stderr
  .quit                      leave (running VMs are quit)
Keys: Tab completes Lua names, :commands and their arguments, !commands and
file names in strings; Ctrl-C clears the line or interrupts a running call;
Ctrl-D leaves.
The Lua API (help(name) for an entry, man qshell-lua for the reference):
  qemu.launch{...} -> vm     qemu.attach(socket) -> vm     qemu.guest.launch{} -> vm
  vm:qmp(cmd, args)  vm:hmp(line)  vm:events()  vm:wait_event(name, {timeout=, match=})
  vm:status() vm:pause() vm:cont() vm:quit() vm:kill() vm:wait() vm:close() vm:attach()
  vm:savevm(tag, {replace=}) vm:loadvm(tag) vm:delvm(tag) vm:snapshots()
  vm.console:run(cmd) vm.console:expect(pattern, timeout) vm.console:send(text) vm.console:log(path)
  vm.console:login{user=, password=}  qemu.launch{net=true|{forward={{host=, guest=}}}}
  qemu.disk.create/info/amend/convert/resize/overlay/snapshots/delete_snapshot/populate/nbd_attach
  qemu.image.build{suite=, packages=} -> guest  qemu.image.kernel(image)  qemu.image.cloud_init{out=}
  qemu.image.customize(path, {...})  qemu.guest.load(dir)  qemu.guest.launch{guest=}
  qemu.json.encode/decode  qemu.null  qemu.vms()  qemu.sleep(s)  qemu.now()
]]

return M
