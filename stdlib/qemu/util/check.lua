-- qemu.check: argument validation shared by the public functions.
-- Misuse raises a BadArgument error naming the function and, for a
-- misspelt option, the option it probably meant.

local errors = require "qemu.errors"

local M = {}

local function distance(a, b)
  local la, lb = #a, #b
  if math.abs(la - lb) > 3 then return 99 end
  local prev = {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur = { [0] = i }
    for j = 1, lb do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[lb]
end

function M.bad(fname, fmt, ...)
  errors.raise { class = "BadArgument", command = fname, desc = string.format(fmt, ...) }
end

local function typename(v)
  local mt = getmetatable(v)
  if type(v) == "userdata" and mt and mt.__name then return mt.__name end
  return type(v)
end

-- spec: {name = "string" | "number" | "boolean" | "table" | "function" |
--        "string|table" | function(v) -> ok, why}
function M.options(fname, opts, spec, argn)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    M.bad(fname, "argument #%d must be a table of options, got %s", argn or 1, typename(opts))
  end
  for k, v in pairs(opts) do
    local want = type(k) == "string" and spec[k]
    if not want then
      local best, bestd
      if type(k) == "string" then
        for name in pairs(spec) do
          local d = distance(k, name)
          if d <= 2 and (not bestd or d < bestd) then best, bestd = name, d end
        end
      end
      M.bad(fname, "unknown option '%s'%s", tostring(k),
            best and string.format(" (did you mean '%s'?)", best) or "")
    end
    if type(want) == "function" then
      local ok, why = want(v)
      if not ok then M.bad(fname, "option '%s': %s", k, why) end
    elseif not want:find(type(v), 1, true) then
      M.bad(fname, "option '%s' must be a %s, got %s", k, want:gsub("|", " or "), typename(v))
    end
  end
  return opts
end

function M.arg(fname, n, v, want)
  if not want:find(type(v), 1, true) then
    M.bad(fname, "argument #%d must be a %s, got %s", n, want:gsub("|", " or "), typename(v))
  end
  return v
end

function M.positive(v)
  if type(v) ~= "number" or v <= 0 then return false, "must be a positive number" end
  return true
end

function M.nonneg(v)
  if type(v) ~= "number" or v < 0 then return false, "must be a number >= 0" end
  return true
end

return M
