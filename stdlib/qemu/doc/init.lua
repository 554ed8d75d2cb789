-- qemu.doc: the Lua reference, read out of the contract comments in the
-- stdlib's own sources (the one source of the reference: `help(fn)` and
-- `.help NAME` in the shell, `qshell doc`, the man page qshell-lua(7),
-- doc/reference.md and the LuaCATS annotations are all made from them).
--
-- A contract is a run of `---` lines beginning with
--   ---@api NAME SIGNATURE        a function (qemu.launch, vm:quit, vm.console:run, config:set)
--   ---@apiclass CLASS VAR  text   an object type and its fields (qemu.VM vm)
-- then description lines (`--- text`; `---` alone between paragraphs; lines
-- indented 4 spaces are code; `--- - ` starts a list item) and tags:
--   ---@param NAME[?] TYPE  text   ---@return TYPE [NAME]  text
--   ---@error CLASS  text           ---@field NAME TYPE  text
-- A line after a tag that is not a tag continues it.  README.md's
-- "Contracts" paragraph says the same for people writing them.

local M = {}

-- The reference's sections, in order: a title and the names that go in it
-- (Lua patterns; the first section that matches takes the entry).
M.sections = {
  { id = "launch", title = "Launching and attaching", match = { "^qemu%.launch$", "^qemu%.attach$", "^qemu%.vms$" } },
  { id = "vm", title = "The VM object", match = { "^qemu%.VM$", "^vm:" } },
  { id = "console", title = "The serial console", match = { "^qemu%.Console$", "^vm%.console:" } },
  { id = "guest", title = "The default guest", match = { "^qemu%.guest%." } },
  { id = "disk", title = "Disks", match = { "^qemu%.disk%." } },
  { id = "image", title = "System images", match = { "^qemu%.image%." } },
  { id = "plugin", title = "TCG plugins", match = { "^qemu%.plugin%." } },
  { id = "checkpoint", title = "Checkpoints", match = { "^qemu%.checkpoint%." } },
  { id = "sweep", title = "Sweeps", match = { "^qemu%.sweep$", "^qemu%.sweep%." } },
  { id = "results", title = "Results", match = { "^qemu%.results%." } },
  { id = "kernel", title = "Kernel builds", match = { "^qemu%.kernel", "^qemu%.KernelConfig$", "^config:" } },
  { id = "errors", title = "Errors", match = { "^qemu%.error$", "^qemu%.errors%." } },
  { id = "misc", title = "JSON, versions, time and files", match = { "^qemu%." } },
}

-- The objects methods belong to: the prefix of a method's name, the class
-- it documents, its metatable's __name (for help(object)), and where the
-- method table is (for help(fn)).
M.owners = {
  ["vm"] = { class = "qemu.VM", mt_name = "qemu.vm", methods = function() return require "qemu.vm" end },
  ["vm.console"] = { class = "qemu.Console", mt_name = "qemu.console", methods = function() return require "qemu.vm.console" end },
  ["config"] = { class = "qemu.KernelConfig", mt_name = "qemu.kernel.config", methods = function() return require("qemu.kernel")._Config end },
}

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

-- "head  text" -> head, text (two spaces part a tag's words from its text)
local function split_text(s)
  local head, text = s:match("^(.-)%s%s+(.*)$")
  if not head then return trim(s), "" end
  return trim(head), trim(text)
end

-- A LuaCATS type has no space outside brackets ("table<string, any>",
-- "fun(x: integer): boolean" have theirs inside): a type with one is a tag
-- whose text lacks its two spaces.
local function check_type(ty, where, rest)
  local depth, bad = 0, false
  for c in ty:gmatch(".") do
    if c == "(" or c == "<" or c == "{" then depth = depth + 1
    elseif c == ")" or c == ">" or c == "}" then depth = depth - 1
    elseif c:find("%s") and depth == 0 and not ty:find("^fun%(") then bad = true end
  end
  if bad then
    error(where .. ": '" .. ty .. "' is no type (two spaces part the type from the text): " .. rest, 0)
  end
end

local function parse_tag(tag, rest, where)
  local head, text = split_text(rest)
  if tag == "param" or tag == "field" then
    local name, ty = head:match("^(%S+)%s+(.+)$")
    if not name then error(where .. ": @" .. tag .. " needs a name and a type: " .. rest, 0) end
    check_type(ty, where, rest)
    local opt = false
    if name:sub(-1) == "?" then name, opt = name:sub(1, -2), true end
    return { tag = tag, name = name, type = ty, optional = opt, text = { text } }
  elseif tag == "return" then
    local ty, name = head:match("^(.-)%s+([%a_][%w_]*)$")
    if not ty then ty, name = head:match("^(.-)%s+(%.%.%.)$") end
    -- no name split off a function type's result ("fun(): boolean")
    if not ty or ty == "" or ty:find(":$") then ty, name = head, nil end
    check_type(ty, where, rest)
    return { tag = tag, type = ty, name = name, text = { text } }
  elseif tag == "error" then
    return { tag = tag, name = head, text = { text } }
  end
  error(where .. ": unknown tag @" .. tag .. " (contracts use @param, @return, @error, @field)", 0)
end

-- parse(source, path) -> {entry, ...}: the contracts of one source file.
-- entry = {name=, kind="function"|"class", signature=, var= (classes),
-- summary=, body={lines}, params=, returns=, errors=, fields=, path=, line=}
function M.parse(source, path)
  local entries, cur, last = {}, nil, nil
  local n = 0
  local function finish()
    if cur then
      -- the summary: the first paragraph, joined
      local para = {}
      for _, l in ipairs(cur.body) do
        if l == "" then break end
        para[#para + 1] = trim(l)
      end
      cur.summary = table.concat(para, " ")
      while cur.body[#cur.body] == "" do cur.body[#cur.body] = nil end
      entries[#entries + 1] = cur
    end
    cur, last = nil, nil
  end
  for line in (source .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local where = path .. ":" .. n
    local api = line:match("^%-%-%-@api%s+(.*)$")
    local class = line:match("^%-%-%-@apiclass%s+(.*)$")
    if api then
      finish()
      local name, sig = api:match("^(%S+)%s*(.*)$")
      cur = { kind = "function", name = name, signature = sig ~= "" and trim(sig) or name, body = {}, params = {},
              returns = {}, errors = {}, fields = {}, path = path, line = n }
    elseif class then
      finish()
      local head, text = split_text(class)
      local name, var = head:match("^(%S+)%s+(%S+)$")
      if not name then error(where .. ": @apiclass needs a class and a variable name", 0) end
      cur = { kind = "class", name = name, var = var, signature = name, body = text ~= "" and { text, "" } or {},
              params = {}, returns = {},
              errors = {}, fields = {}, path = path, line = n }
    elseif cur and line:find("^%-%-%-") then
      local tag, rest = line:match("^%-%-%-@(%a+)%s+(.*)$")
      if tag then
        last = parse_tag(tag, rest, where)
        local list = ({ param = cur.params, ["return"] = cur.returns, error = cur.errors, field = cur.fields })[tag]
        list[#list + 1] = last
      elseif line:find("^%-%-%-@") then
        error(where .. ": a tag with nothing after it: " .. line, 0)
      elseif last then
        last.text[#last.text + 1] = trim(line:sub(4))
      else
        local text = line:sub(4)
        if text:sub(1, 1) == " " then text = text:sub(2) end
        cur.body[#cur.body + 1] = text
      end
    else
      finish()
    end
  end
  finish()
  return entries
end

-- The sources the reference is read from: the embedded stdlib, or the
-- directory QSHELL_STDLIB names (so edits show without a rebuild).
local function sources()
  local dir = os.getenv("QSHELL_STDLIB")
  if not dir or dir == "" then return require("qshell.stdlib").sources() end
  local sys = require "qshell.os"
  local out = {}
  local function walk(d, rel)
    for _, name in ipairs(sys.listdir(d) or {}) do
      local p, r = d .. "/" .. name, rel .. name
      local st = sys.stat(p)
      if st and st.type == "dir" then
        walk(p, r .. "/")
      elseif name:find("%.lua$") then
        out[#out + 1] = { path = r, source = require("qemu.util.fs").slurp(p, "qemu.doc") }
      end
    end
  end
  walk(dir, "")
  return out
end

-- The section an entry goes in, and the rank of the pattern that took it
-- (entries are listed in the order of the section's patterns, then of the
-- sources).
local function section_of(name)
  for i, s in ipairs(M.sections) do
    for j, pat in ipairs(s.match) do
      if name:find(pat) then return i, j end
    end
  end
  return #M.sections, 0
end

local index
-- entries() -> the whole reference: {list = {entry...} in section order,
-- by_name = {name = entry}}; read once per shell.
function M.entries()
  if index then return index end
  local list, by_name = {}, {}
  -- a folder's init.lua first: its module is the capability's front door
  local srcs = sources()
  local function key(src) return (src.path:gsub("/init%.lua$", "/!")) end
  table.sort(srcs, function(a, b) return key(a) < key(b) end)
  for _, src in ipairs(srcs) do
    for _, e in ipairs(M.parse(src.source, src.path)) do
      if by_name[e.name] then
        error(string.format("%s:%d: %s has a contract already (%s:%d)", e.path, e.line, e.name,
                            by_name[e.name].path, by_name[e.name].line), 0)
      end
      e.section, e.rank = section_of(e.name)
      e.seq = #list + 1
      by_name[e.name] = e
      list[#list + 1] = e
    end
  end
  table.sort(list, function(a, b)
    if a.section ~= b.section then return a.section < b.section end
    if (a.kind == "class") ~= (b.kind == "class") then return a.kind == "class" end
    if a.rank ~= b.rank then return a.rank < b.rank end
    return a.seq < b.seq
  end)
  index = { list = list, by_name = by_name }
  return index
end

-- resolve(name) -> the value a contract documents (a function, or the
-- callable qemu.sweep), or nil when the API has no such thing.
function M.resolve(name)
  local owner, meth = name:match("^(.-):([%a_][%w_]*)$")
  if owner then
    local o = M.owners[owner]
    if not o then return nil end
    local ok, t = pcall(o.methods)
    return ok and type(t) == "table" and rawget(t, meth) or nil
  end
  local parts = {}
  for p in name:gmatch("[^.]+") do parts[#parts + 1] = p end
  if parts[1] ~= "qemu" then return nil end
  local v = require "qemu"
  for i = 2, #parts do
    if type(v) ~= "table" then return nil end
    local ok, x = pcall(function() return v[parts[i]] end)
    if not ok then return nil end
    v = x
  end
  return v
end

-- name_of(value) -> the contract's name for a function or table of the API
local reverse
function M.name_of(value)
  if not reverse then
    reverse = {}
    for _, e in ipairs(M.entries().list) do
      if e.kind == "function" then
        local v = M.resolve(e.name)
        if v ~= nil and reverse[v] == nil then reverse[v] = e.name end
      end
    end
  end
  return reverse[value]
end

return M
