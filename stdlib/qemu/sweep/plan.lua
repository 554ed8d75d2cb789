-- qemu.sweep.plan: what a sweep runs.  The matrix (parameter name -> list
-- of values) is expanded into runs in a stable order (axes sorted by name,
-- values in the order given, repeats innermost); each run has a name
-- "k1=v1;k2=v2#rep" (its `run`, the results file's run column), so
-- `resume` can tell what is done whatever order the axes were written in.

local check = require "qemu.util.check"

local M = {}

-- Columns every results file has; no parameter or metric may take them.
M.RESERVED = { run = true, ["repeat"] = true, status = true, wall_s = true, error = true,
                host = true, started = true, prov = true, provenance = true, recording = true,
                record_bytes = true }

function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- A parameter value as text: whole floats without ".0" (so 1e6 and
-- 1000000 name the same run).
function M.value_text(v)
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return string.format("%d", v)
  end
  return tostring(v)
end

function M.run_name(params, names, rep)
  local parts = {}
  for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. M.value_text(params[k]) end
  return table.concat(parts, ";") .. "#" .. rep
end

-- Raise on a matrix a sweep cannot run.
function M.check_matrix(fname, matrix)
  for k, axis in pairs(matrix) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      check.bad(fname, "matrix keys are parameter names; got %s", tostring(k))
    end
    if M.RESERVED[k] then check.bad(fname, "matrix key '%s' is a column sweep writes itself", k) end
    if type(axis) ~= "table" or #axis == 0 then
      check.bad(fname, "matrix axis '%s' is empty: give it a list of at least one value", k)
    end
  end
end

-- expand(matrix, reps) -> runs {i=, params=, rep=, run=}, names (sorted axes)
function M.expand(matrix, reps)
  local names = M.sorted_keys(matrix)
  local combos = { {} }
  for _, k in ipairs(names) do
    local nxt = {}
    for _, c in ipairs(combos) do
      for _, v in ipairs(matrix[k]) do
        local c2 = {}
        for kk, vv in pairs(c) do c2[kk] = vv end
        c2[k] = v
        nxt[#nxt + 1] = c2
      end
    end
    combos = nxt
  end
  local runs = {}
  for _, c in ipairs(combos) do
    for r = 1, reps do
      runs[#runs + 1] = { i = #runs + 1, params = c, rep = r, run = M.run_name(c, names, r) }
    end
  end
  return runs, names
end

-- The runs not yet in `done` (a set of run names), and how many were skipped.
function M.todo(runs, done)
  local todo, skipped = {}, 0
  for _, r in ipairs(runs) do
    if done and done[r.run] then skipped = skipped + 1 else todo[#todo + 1] = r end
  end
  return todo, skipped
end

return M
