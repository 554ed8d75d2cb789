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

local function class_of(v)
  local mt = getmetatable(v)
  local n = type(mt) == "table" and rawget(mt, "__name")
  if n == "qemu.vm" then return "vm" end
  if n == "qemu.console" then return "vm.console" end
  if n == "qemu.kernel.config" then return "config" end
  if n == "qemu.error" then return "qemu.error" end
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
      local cls = class_of(x)
      if cls then
        local list = {}
        local cname = doc.owners[cls] and doc.owners[cls].class or cls
        if ix.by_name[cname] then list[1] = ix.by_name[cname] end
        for _, e in ipairs(under(cls)) do if e.name ~= cname then list[#list + 1] = e end end
        if #list > 0 then return render.list(list) end
      end
      if type(x) == "table" then
        -- a namespace of the API: qemu, qemu.disk, ...
        local api = require "qemu"
        if x == api then return M.text(nil) end
        for k, v in pairs(api) do
          if v == x and type(k) == "string" then return render.list(under("qemu." .. k)) end
        end
      end
      return nil, "no entry for this " .. type(x) .. " (help() lists every name; help(\"qemu.launch\") takes a name)"
    end
  end
  local e = ix.by_name[name]
  if e.kind == "class" then
    local list = { e }
    for _, m in ipairs(under(e.var)) do list[#list + 1] = m end
    return render.text(e) .. "\n" .. (#list > 1 and render.list(list) or "")
  end
  return render.text(e)
end

-- help(x): print the entry; an unknown name is a BadArgument error.
function M.help(x)
  local text, err = M.text(x)
  if not text then require("qemu.util.check").bad("help", err) end
  io.stdout:write(text)
end

return M
