-- qemu.doc.help: help(x) in the interactive shell, `.help NAME`, and
-- `qshell doc NAME`: one entry of the reference, or the entries under a
-- name, as text.

local doc = require "qemu.doc"
local render = require "qemu.doc.render"

local M = {}

-- Names a user may type for one entry: vm.quit and VM:quit for vm:quit,
-- console:run for vm.console:run.
local function canonical(name)
  local ix = doc.entries()
  if ix.by_name[name] then return name end
  local tries = {
    (name:gsub("^vm%.console[.:]", "vm.console:")),
    (name:gsub("^console[.:]", "vm.console:")),
    (name:gsub("^[vV][mM][.:]", "vm:")),
    (name:gsub("^qemu%.VM[.:]", "vm:")),
    (name:gsub("^qemu%.Console[.:]", "vm.console:")),
    (name:gsub("^qemu%.KernelConfig[.:]", "config:")),
    (name:gsub("^config%.", "config:")),
  }
  for _, t in ipairs(tries) do
    if ix.by_name[t] then return t end
  end
  return nil
end

-- The entries whose name starts with prefix (qemu.disk -> qemu.disk.*).
local function under(prefix)
  local out = {}
  for _, e in ipairs(doc.entries().list) do
    if e.name == prefix or e.name:sub(1, #prefix + 1) == prefix .. "." or e.name:sub(1, #prefix + 1) == prefix .. ":" then
      out[#out + 1] = e
    end
  end
  return out
end

-- The class entry of an object (a VM, a console, a kernel config, an error).
local function class_of(v)
  local mt = getmetatable(v)
  local n = type(mt) == "table" and rawget(mt, "__name")
  if not n then return nil end
  if n == "qemu.error" then return n end
  for _, o in pairs(doc.owners) do
    if o.mt_name == n then return o.class end
  end
  return nil
end

-- text(x) -> the help text for x, or nil and why not.  x: a function or
-- table of the API, an object (a VM, a console, a kernel config, an error),
-- a name ("qemu.launch", "vm:quit", "qemu.disk"), or nil (the whole list).
function M.text(x)
  local ix = doc.entries()
  if x == nil then
    return "The qemu API (help(name) or .help name for one entry; man qshell-lua for all):\n\n"
        .. render.list(ix.list)
  end
  local name
  if type(x) == "string" then
    name = canonical(x)
    if not name then
      local list = under(x)
      if #list > 0 then return render.list(list) end
      return nil, string.format("no entry for '%s' (help() lists every name)", x)
    end
  else
    name = doc.name_of(x)
    if not name then
      local cname = class_of(x)
      if cname and ix.by_name[cname] then return M.text(cname) end
      if type(x) == "table" then
        -- a namespace of the API: qemu, qemu.disk, qemu.results.stats, ...
        if x == require "qemu" then return M.text(nil) end
        local tried = {}
        for _, e in ipairs(ix.list) do
          local prefix = e.name
          while true do
            prefix = prefix:match("^(.*)%.[^.]+$")
            if not prefix or tried[prefix] then break end
            tried[prefix] = true
            if doc.resolve(prefix) == x then return render.list(under(prefix)) end
          end
        end
      end
      return nil, "no entry for this " .. type(x) .. " (help() lists every name; help(\"qemu.launch\") takes a name)"
    end
  end
  local e = ix.by_name[name]
  if e.kind == "class" then
    -- the methods: under the owner whose class this is (vm.console for qemu.Console)
    local owner = e.var
    for k, o in pairs(doc.owners) do if o.class == e.name then owner = k end end
    local list = under(owner)
    return render.text(e) .. (#list > 0 and "\n" .. render.list(list) or "")
  end
  return render.text(e)
end

-- help(x): print the entry; an unknown name is a BadArgument error.
function M.help(x)
  local text, err = M.text(x)
  if not text then require("qemu.util.check").bad("help", "%s", err) end
  io.stdout:write(text)
end

return M
