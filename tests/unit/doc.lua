-- The Lua reference made from the contract comments (stdlib/qemu/doc): every
-- public function has a contract and every contract names a real function;
-- help() finds entries by value and by name; doc/reference.md, the man page
-- and the LuaCATS file are what the comments say.
local T = require "t"

local doc = require "qemu.doc"
local help = require "qemu.doc.help"
local render = require "qemu.doc.render"

-- Namespaces of the qemu table that are not the script API: the shell's
-- own module (its dot-commands and completion; `.help` documents them).
-- QEMU's own QMP error classes, which come from its replies.
local QMP_CLASSES = { GenericError = true, CommandNotFound = true, DeviceNotActive = true, DeviceNotFound = true }

local NOT_API = { ["qemu.repl"] = true }

-- Every function reachable from the qemu table (lazy fields loaded), the
-- methods of the objects it returns, and qemu.sweep (a callable table).
local function public_names()
  local names, seen = {}, {}
  local function walk(t, name)
    if seen[t] or NOT_API[name] then return end
    seen[t] = true
    local mt = getmetatable(t)
    if mt and mt.__lazy then for _, k in ipairs(mt.__lazy) do local _ = t[k] end end
    if mt and mt.__call then names[#names + 1] = name end
    if name == "qemu.sweep" then t = require "qemu.sweep" end
    for k, v in pairs(t) do
      if type(k) == "string" and not k:find("^_") then
        local n = name .. "." .. k
        if type(v) == "function" and not (name == "qemu.sweep" and k == "sweep") then
          names[#names + 1] = n
        elseif type(v) == "table" then
          walk(v, n)
        end
      end
    end
  end
  walk(require "qemu", "qemu")
  for prefix, o in pairs(doc.owners) do
    for k, v in pairs(o.methods()) do
      if type(v) == "function" and not k:find("^_") and k ~= "new" then names[#names + 1] = prefix .. ":" .. k end
    end
  end
  table.sort(names)
  return names
end

T.test("every public function has a contract, and every contract a function", function()
  local ix = doc.entries()
  local missing = {}
  for _, n in ipairs(public_names()) do
    if not ix.by_name[n] then missing[#missing + 1] = n end
  end
  T.eq(table.concat(missing, " "), "", "public functions without a contract")
  local stale = {}
  for _, e in ipairs(ix.list) do
    if e.kind == "function" and doc.resolve(e.name) == nil then stale[#stale + 1] = e.name end
  end
  T.eq(table.concat(stale, " "), "", "contracts naming nothing")
  T.ok(#ix.list > 100, "the reference has its entries (" .. #ix.list .. ")")
end)

T.test("help() prints the entry of every public function, found by its value", function()
  local bad = {}
  for _, n in ipairs(public_names()) do
    local v = doc.resolve(n)
    local text = v ~= nil and help.text(v)
    local want = n
    if not text or text:sub(1, #want) ~= want then bad[#bad + 1] = n .. ": " .. tostring(text and text:sub(1, 40)) end
  end
  T.eq(table.concat(bad, "\n"), "", "help(value) for public functions")
end)

T.test("contracts are whole: a summary, typed arguments, known error classes", function()
  local classes = require("qemu.errors").classes
  T.ok(type(classes) == "table", "qemu.errors.classes lists the classes")
  local bad = {}
  for _, e in ipairs(doc.entries().list) do
    local where = e.path .. ":" .. e.line .. " " .. e.name
    if e.summary == "" then bad[#bad + 1] = where .. ": no summary" end
    if e.kind == "function" and not e.signature:find(e.name, 1, true) then
      bad[#bad + 1] = where .. ": the signature does not start with the name"
    end
    for _, p in ipairs(e.params) do
      if not p.type or p.type == "" then bad[#bad + 1] = where .. ": @param " .. p.name .. " has no type" end
    end
    for _, x in ipairs(e.errors) do
      if not classes[x.name] and not QMP_CLASSES[x.name] then bad[#bad + 1] = where .. ": @error " .. x.name .. " is no error class" end
    end
    -- a Lua function takes at least the arguments its contract names
    local f = e.kind == "function" and doc.resolve(e.name)
    if type(f) == "function" then
      local info = debug.getinfo(f, "u")
      local self = e.name:find(":") and 1 or 0
      if info.what ~= "C" and not info.isvararg and #e.params > info.nparams - self then
        bad[#bad + 1] = string.format("%s: %d @param for a function of %d", where, #e.params, info.nparams - self)
      end
    end
  end
  T.eq(table.concat(bad, "\n"), "", "incomplete contracts")
end)

T.test("help finds an entry by value, by name, by object; unknown names are errors", function()
  local text = help.text(qemu.launch)
  T.match(text, "^qemu%.launch%(")
  T.match(text, "Arguments")
  T.match(text, "Errors")
  T.match(text, "BadArgument")
  local vm_quit = require("qemu.vm").quit
  T.match(help.text(vm_quit), "^vm:quit")
  T.eq(help.text("vm.quit"), help.text(vm_quit), "vm.quit names vm:quit")
  T.match(help.text("vm.console:run"), "^vm%.console:run")
  T.match(help.text(qemu.disk), "qemu%.disk%.create")
  T.match(help.text(qemu.sweep), "^qemu%.sweep")
  T.match(help.text(), "qemu%.launch")
  local none, err = help.text("qemu.no_such_thing")
  T.eq(none, nil)
  T.match(err, "no entry for 'qemu%.no_such_thing'")
  T.raises(function() help.help("qemu.no_such_thing") end, "BadArgument", "no entry")
  T.raises(function() help.help(function() end) end, "BadArgument", "no entry for this function")
end)

T.test("a malformed contract is an error naming its line", function()
  local ok, err = pcall(doc.parse, "---@api qemu.x qemu.x()\n--- Does x.\n---@param\n", "x.lua")
  T.eq(ok, false)
  T.match(err, "^x%.lua:3:")
  ok, err = pcall(doc.parse, "---@api qemu.x qemu.x()\n---@raises Foo  bar\n", "y.lua")
  T.eq(ok, false)
  T.match(err, "^y%.lua:2: unknown tag @raises")
  local e = doc.parse("---@api qemu.x qemu.x(a [, b]) -> n\n--- Does x.\n--- More.\n---\n---     code()\n"
                      .. "---@param a string  the a\n---   continued\n---@param b? integer  the b\n"
                      .. "---@return integer n  the n\n---@error BadArgument  a is wrong\nlocal x\n", "z.lua")
  T.eq(#e, 1)
  T.eq(e[1].summary, "Does x. More.")
  T.eq(e[1].params[1].text[2], "continued")
  T.eq(e[1].params[2].optional, true)
  T.eq(e[1].returns[1].name, "n")
  T.eq(e[1].errors[1].name, "BadArgument")
  T.eq(e[1].body[4], "    code()")
end)

T.test("doc/reference.md is what the contracts say (make doc rewrites it)", function()
  local f = assert(io.open("doc/reference.md", "rb"))
  local committed = f:read("a")
  f:close()
  local made = render.markdown()
  if committed ~= made then
    local n = 1
    local a, b = committed .. "\n", made .. "\n"
    local la, lb = a:gmatch("([^\n]*)\n"), b:gmatch("([^\n]*)\n")
    while true do
      local x, y = la(), lb()
      if x ~= y then T.fail(string.format("doc/reference.md line %d: %q, the contracts say %q (run make doc)", n, x, y)) end
      if x == nil then break end
      n = n + 1
    end
  end
end)

T.test("the man page renders without a warning and holds every entry", function()
  local dir = T.tmpdir()
  local page = dir .. "/qshell-lua.7"
  local f = assert(io.open(page, "w"))
  f:write(render.man("test"))
  f:close()
  local code, out = T.sh("groff -mandoc -ww -z " .. page .. " 2>&1")
  T.eq(code, 0, "groff")
  T.eq(out, "", "groff warnings")
  code, out = T.sh("MANWIDTH=100 man -l " .. page .. " 2>&1")
  T.eq(code, 0, "man -l")
  for _, e in ipairs(doc.entries().list) do
    if e.kind == "function" and not out:find(e.name, 1, true) then T.fail("the man page lacks " .. e.name) end
  end
end)

T.test("the LuaCATS file is Lua, declares every function with its arguments", function()
  local meta = render.meta()
  T.match(meta, "^%-%-%-@meta qemu\n")
  T.ok(load(meta, "=meta"), "it compiles")
  for _, e in ipairs(doc.entries().list) do
    if e.kind == "function" and e.name ~= "qemu.sweep" then
      local names = {}
      for _, p in ipairs(e.params) do names[#names + 1] = p.name end
      local owner, m = e.name:match("^(.-):(.*)$")
      local decl = owner and (":" .. m) or e.name
      local line = "function [%w_.]*" .. decl:gsub("[%.%-]", "%%%0") .. "%(" .. table.concat(names, ", ") .. "%) end"
      if not meta:find(line) then T.fail("no declaration for " .. e.name .. " (" .. line .. ")") end
    end
  end
  T.match(meta, "%-%-%-@class qemu%.VM\n")
  T.match(meta, "%-%-%-@overload fun%(")
end)

T.run()
