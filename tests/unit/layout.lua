-- The stdlib's shape (STYLE.md section 1): no module over 800 lines,
-- layers that point one way (no cycle of modules that require each other,
-- even lazily inside a function), and modules that require what they use
-- rather than the global qemu.  Reads the sources under stdlib/ (the
-- tests run from the checkout's root), not the embedded copies.
local T = require "t"

local sys = require "qshell.os"

local ROOT = "stdlib"
local MAX_LINES = 800

-- Every .lua file under dir, sorted (listdir sorts), as paths from the root.
local function lua_files(dir, out)
  out = out or {}
  for _, name in ipairs(sys.listdir(dir)) do
    local p = dir .. "/" .. name
    local st = sys.stat(p)
    if st and st.type == "dir" then
      lua_files(p, out)
    elseif name:find("%.lua$") then
      out[#out + 1] = p
    end
  end
  return out
end

local function slurp(path)
  local f, err = io.open(path, "rb")
  if not f then T.fail("cannot read " .. err) end
  local text = f:read("a")
  f:close()
  return text
end

-- The module a file is loaded as (shell/embed.c's rule): stdlib/qemu/x/y.lua
-- is qemu.x.y, stdlib/qemu/x/init.lua is qemu.x.
local function module_of(path)
  return (path:sub(#ROOT + 2):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", "."))
end

-- The file a module is loaded from, or nil when the stdlib has none.
local function file_of(mod, exists)
  local base = ROOT .. "/" .. mod:gsub("%.", "/")
  if exists[base .. ".lua"] then return base .. ".lua" end
  if exists[base .. "/init.lua"] then return base .. "/init.lua" end
  return nil
end

-- The qemu modules a source requires by a literal name, in the order of
-- first use: `require "qemu.x"`, `require("qemu.x")`, `require 'qemu.x'`,
-- at the top or inside a function.  Whole-line comments are skipped.
local function requires_of(text)
  local list, seen = {}, {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if not line:find("^%s*%-%-") then
      for mod in line:gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do
        if (mod == "qemu" or mod:find("^qemu%.")) and not seen[mod] then
          seen[mod] = true
          list[#list + 1] = mod
        end
      end
    end
  end
  return list
end

local files = lua_files(ROOT)
local exists = {}
for _, p in ipairs(files) do exists[p] = true end

T.test("the stdlib's sources are found", function()
  T.ok(#files > 20, "found " .. #files .. " files under " .. ROOT)
  T.ok(exists[ROOT .. "/qemu/init.lua"], ROOT .. "/qemu/init.lua")
  T.eq(module_of(ROOT .. "/qemu/init.lua"), "qemu")
  T.eq(module_of(ROOT .. "/qemu/sweep/plan.lua"), "qemu.sweep.plan")
  T.eq(file_of("qemu.sweep", exists), ROOT .. "/qemu/sweep/init.lua")
end)

T.test("the require scanner finds literal requires, lazy ones included", function()
  local got = requires_of('local a = require "qemu.a"\n  -- require "qemu.b"\n' ..
                          'local function f() return require("qemu.c").x, require \'qshell.os\' end\n' ..
                          "g(require ( 'qemu.d' ))\nlocal again = require 'qemu.a'\n")
  T.eq(table.concat(got, " "), "qemu.a qemu.c qemu.d")
end)

T.test("no stdlib module is over " .. MAX_LINES .. " lines", function()
  local over = {}
  for _, p in ipairs(files) do
    local n = select(2, slurp(p):gsub("\n", "\n"))
    if n > MAX_LINES then over[#over + 1] = string.format("%s (%d lines)", p, n) end
  end
  T.eq(table.concat(over, ", "), "", "modules over " .. MAX_LINES .. " lines (split them by capability)")
end)

-- The graph: file -> the files of the qemu modules it requires.
local function graph()
  local edges, missing = {}, {}
  for _, p in ipairs(files) do
    edges[p] = {}
    for _, mod in ipairs(requires_of(slurp(p))) do
      local target = file_of(mod, exists)
      if target then
        edges[p][#edges[p] + 1] = target
      else
        missing[#missing + 1] = string.format("%s requires %s", p, mod)
      end
    end
  end
  return edges, missing
end

-- Every cycle a depth-first walk from nodes (in order) meets, one per back
-- edge, each as "a -> b -> a" in module names: none when there is none.
local function cycles(edges, nodes)
  local state, stack, found = {}, {}, {}
  local function visit(p)
    state[p] = "open"
    stack[#stack + 1] = p
    for _, q in ipairs(edges[p]) do
      if state[q] == "open" then
        local names, on = {}, false
        for _, s in ipairs(stack) do
          on = on or s == q
          if on then names[#names + 1] = module_of(s) end
        end
        names[#names + 1] = module_of(q)
        found[#found + 1] = table.concat(names, " -> ")
      elseif not state[q] then
        visit(q)
      end
    end
    stack[#stack] = nil
    state[p] = "done"
  end
  for _, p in ipairs(nodes) do
    if not state[p] then visit(p) end
  end
  return found
end

T.test("the cycle finder finds a cycle, lazy requires included", function()
  local e = { ["stdlib/qemu/a.lua"] = { "stdlib/qemu/b.lua" }, ["stdlib/qemu/b.lua"] = { "stdlib/qemu/c/init.lua" },
              ["stdlib/qemu/c/init.lua"] = { "stdlib/qemu/a.lua" } }
  local found = cycles(e, { "stdlib/qemu/a.lua", "stdlib/qemu/b.lua", "stdlib/qemu/c/init.lua" })
  T.eq(table.concat(found, "; "), "qemu.a -> qemu.b -> qemu.c -> qemu.a")
  e["stdlib/qemu/c/init.lua"] = {}
  T.eq(#cycles(e, { "stdlib/qemu/a.lua", "stdlib/qemu/b.lua", "stdlib/qemu/c/init.lua" }), 0)
end)

T.test("every qemu module the stdlib requires by name is in the stdlib", function()
  local _, missing = graph()
  T.eq(table.concat(missing, ", "), "")
end)

T.test("no require cycle between stdlib modules", function()
  local found = cycles((graph()), files)
  T.eq(table.concat(found, "; "), "", "require cycles (move the shared piece down into a module both can use)")
end)

-- The lines of a source that name the global `qemu` (qemu.x, qemu[...],
-- qemu(...)): its code without comments and string literals, so that
-- messages and help texts naming qemu.launch do not count.
local function global_qemu_lines(text)
  text = text:gsub("(%-%-%[(=*)%[.-%]%2%])", function(s) return (s:gsub("[^\n]", "")) end)
  text = text:gsub("(%[(=*)%[.-%]%2%])", function(s) return (s:gsub("[^\n]", "")) end)
  local hits, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    -- escapes first (a backslash is only ever in a string), then strings
    local code = line:gsub("^%s*%-%-.*", ""):gsub("\\.", ""):gsub('"[^"]*"', '""'):gsub("'[^']*'", "''")
                     :gsub("%-%-.*", "")
    if code:find("%f[%w_.]qemu%s*[.[(:]") then hits[#hits + 1] = n end
  end
  return hits
end

T.test("the global-qemu finder sees code, not comments or strings", function()
  local hits = global_qemu_lines('local a = require "qemu.util.fs"\n-- qemu.launch{}\nlocal h = "qemu.disk.amend(x) \\" qemu.x()"\n' ..
                                 'local vm = qemu.launch(o)\nlocal t = [[\n  qemu.vms()\n]]\nx.qemu.y = 1\n' ..
                                 "for _, v in ipairs(qemu.vms()) do end -- qemu.x\n")
  T.eq(table.concat(hits, " "), "4 9")
end)

T.test("stdlib modules require what they use, not the global qemu", function()
  local found = {}
  for _, p in ipairs(files) do
    for _, n in ipairs(global_qemu_lines(slurp(p))) do found[#found + 1] = p .. ":" .. n end
  end
  T.eq(table.concat(found, ", "), "", "uses of the global qemu (require the module instead)")
end)

-- README's "How the code is laid out" table: {first cell, whole row}.
local function layout_rows()
  local text = slurp("README.md")
  local a = text:find("\n## How the code is laid out\n", 1, true)
  T.ok(a, "README has its layout section")
  local b = text:find("\n##", a + 10, true)
  local rows = {}
  for line in text:sub(a, b):gmatch("[^\n]+") do
    local first, rest = line:match("^| (.-) | (.*) |$")
    if first and first ~= "where" and first ~= "---" then rows[#rows + 1] = { first = first, text = line } end
  end
  return rows
end

T.test("README's layout table names every file of shell/ and stdlib/, and only what exists", function()
  local rows = layout_rows()
  T.ok(#rows > 10, "the table has its rows")
  -- Is name in a row whose first cell names dir (or names dir .. name)?
  local function named(dir, name)
    for _, r in ipairs(rows) do
      if r.first:find("`" .. dir .. name .. "`", 1, true) then return true end
      if r.first:find("`" .. dir .. "`", 1, true) and r.text:find("`" .. name .. "`", 1, true) then return true end
      -- a first cell listing files of one folder: `stdlib/qemu/kernel.lua`, `disk.lua`
      local lead = r.first:match("^`([^`]*/)[^`/]+`")
      if lead == dir and r.first:find("`" .. name .. "`", 1, true) then return true end
    end
    return false
  end
  local missing = {}
  for _, p in ipairs(files) do
    local dir, name = p:match("^(.*/)([^/]+)$")
    if not named(dir, name) then missing[#missing + 1] = p end
  end
  for _, name in ipairs(sys.listdir("shell")) do
    if name:find("%.c$") and not named("shell/", name) then missing[#missing + 1] = "shell/" .. name end
  end
  T.eq(table.concat(missing, ", "), "", "files the layout table does not name")
  local stale = {}
  for _, r in ipairs(rows) do
    local lead
    for path in r.first:gmatch("`([^`]+)`") do
      if path:find("/") then lead = path:match("^(.*/)") else path = (lead or "") .. path end
      if not sys.stat((path:gsub("/$", ""))) then stale[#stale + 1] = path end
    end
  end
  T.eq(table.concat(stale, ", "), "", "paths in the layout table that do not exist")
end)

T.run()
