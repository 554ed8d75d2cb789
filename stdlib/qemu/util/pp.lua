-- qemu.pp: the pretty-printer the interactive shell prints results with.
--   pp.format(value [, {width=80, depth=6, items=30}]) -> string
-- Nested tables on one line when they fit, indented otherwise; keys sorted;
-- JSON null as `null`; long lists cut with a count; cycles marked.

local json = require "qshell.json"

local M = {}

local function is_ident(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function key_repr(k)
  if is_ident(k) then return k end
  if type(k) == "string" then return string.format("[%q]", k) end
  return "[" .. tostring(k) .. "]"
end

local function scalar(v)
  local t = type(v)
  if t == "string" then
    return (string.format("%q", v):gsub("\\\n", "\\n"))
  elseif t == "number" or t == "boolean" or t == "nil" then
    return tostring(v)
  elseif v == json.null then
    return "null"
  end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return tostring(v) end
  return tostring(v)
end

local function sorted_keys(t)
  local n = #t
  local keys = {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return n, keys
end

---@api qemu.pp.format qemu.pp.format(value [, {width=80, depth=6, items=30}]) -> text
--- A value as the interactive shell prints it: Lua syntax, readable.
--- Nested tables stay on one line when they fit in `width`, and are indented
--- otherwise; keys are sorted; JSON null is `null`; lists longer than
--- `items` are cut with a count of the rest; tables deeper than `depth` and
--- cycles are marked. Objects with a `__tostring` (a VM, an error) print as
--- their string.
---
---     print(qemu.pp.format(vm:qmp("query-status")))   --> { running = true, singlestep = false, status = "running" }
---@param value any  what to format
---@param options? table  `width=` (80) columns before a table is split over lines, `depth=` (6) levels shown,
---   `items=` (30) list items shown
---@return string text  the formatted value (no newline at the end)
function M.format(v, opts)
  opts = opts or {}
  local width = opts.width or 80
  local maxdepth = opts.depth or 6
  local maxitems = opts.items or 30
  local seen = {}

  local function fmt(x, indent, depth)
    if type(x) ~= "table" then return scalar(x) end
    local mt = getmetatable(x)
    if mt and mt.__tostring and mt ~= getmetatable(json.array {}) and mt ~= getmetatable(json.object {}) then
      return tostring(x)
    end
    if seen[x] then return "<cycle>" end
    if depth > maxdepth then return "{...}" end
    seen[x] = true
    local jtype = json.type(x)
    local open, close = "{", "}"
    if jtype == "array" then open, close = "[", "]" end
    local n, keys = sorted_keys(x)
    local parts = {}
    local shown = 0
    for i = 1, n do
      if shown >= maxitems then break end
      parts[#parts + 1] = fmt(x[i], indent .. "  ", depth + 1)
      shown = shown + 1
    end
    for _, k in ipairs(keys) do
      if shown >= maxitems then break end
      if not (type(k) == "string" and k:sub(1, 1) == "_") then
        parts[#parts + 1] = key_repr(k) .. " = " .. fmt(x[k], indent .. "  ", depth + 1)
        shown = shown + 1
      end
    end
    local total = n + #keys
    if total > shown then
      local hidden = 0
      for _, k in ipairs(keys) do
        if type(k) == "string" and k:sub(1, 1) == "_" then hidden = hidden + 1 end
      end
      if total - hidden > shown then
        parts[#parts + 1] = string.format("... (%d more)", total - hidden - shown)
      end
    end
    seen[x] = nil
    if #parts == 0 then return open .. close end
    local one = open .. " " .. table.concat(parts, ", ") .. " " .. close
    if #one + #indent <= width and not one:find("\n") then return one end
    -- Short one-line items (a list of numbers, say) are packed per line.
    local packed = true
    for _, p in ipairs(parts) do
      if #p > 24 or p:find("\n") then packed = false break end
    end
    if packed then
      local lines, cur = {}, ""
      for _, p in ipairs(parts) do
        local piece = cur == "" and p or (cur .. ", " .. p)
        if #indent + 2 + #piece + 1 > width and cur ~= "" then
          lines[#lines + 1] = cur .. ","
          cur = p
        else
          cur = piece
        end
      end
      lines[#lines + 1] = cur
      return open .. "\n" .. indent .. "  " .. table.concat(lines, "\n" .. indent .. "  ") .. "\n" .. indent .. close
    end
    return open .. "\n" .. indent .. "  " .. table.concat(parts, ",\n" .. indent .. "  ") .. "\n" .. indent .. close
  end

  return fmt(v, "", 1)
end

---@api qemu.pp.print qemu.pp.print(...)
--- Prints each value as `qemu.pp.format` formats it, tab-separated, and a newline.
---
---     qemu.pp.print(qemu.version())
---@param ... any  the values
function M.print(...)
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = M.format((select(i, ...))) end
  io.stdout:write(table.concat(out, "\t"), "\n")
  io.stdout:flush()
end

return M
