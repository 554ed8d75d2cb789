-- bbv.lua (runs inside QEMU, in the lua plugin): a basic-block vector
-- every plugin.args.interval instructions, in SimPoint's .bb format, one
-- file per vCPU (plugin.args.out .. ".VCPU.bb"), as QEMU's contrib bbv
-- plugin writes it:
--   T:ID:COUNT :ID:COUNT ...
-- ID numbers the blocks by first translation (from 1), COUNT is the
-- instructions the block ran in the interval.  An interval ends after the
-- block that crosses it; the last, partial one is not written.
local interval = plugin.args.interval or 100000000
local out = assert(plugin.args.out, "bbv.lua needs args.out")
local ids, next_id = {}, 1
local vcpus = {}           -- vcpu -> { count=, bb = {id -> count}, file= }

local function state(vcpu)
  local s = vcpus[vcpu]
  if not s then
    s = { count = 0, bb = {}, file = assert(io.open(string.format("%s.%d.bb", out, vcpu), "w")) }
    vcpus[vcpu] = s
  end
  return s
end

plugin.on_translate(function(tb)
  local id = ids[tb.vaddr]
  if not id then
    id = next_id
    ids[tb.vaddr] = id
    next_id = next_id + 1
  end
  local n = tb.n
  tb:on_exec(function(vcpu)
    local s = state(vcpu)
    s.bb[id] = (s.bb[id] or 0) + n
    s.count = s.count + n
    if s.count >= interval then
      s.count = s.count - interval
      local parts = {}
      for b, c in pairs(s.bb) do parts[#parts + 1] = string.format(":%d:%d ", b, c) end
      table.sort(parts)
      s.file:write("T", table.concat(parts), "\n")
      s.bb = {}
    end
  end)
end)

plugin.on_exit(function()
  local files = 0
  for _, s in pairs(vcpus) do
    s.file:close()
    files = files + 1
  end
  return { blocks = next_id - 1, files = files, interval = interval }
end)
