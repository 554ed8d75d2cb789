-- bbv.lua: basic-block vectors every N instructions in SimPoint's format,
-- from a Lua script inside QEMU (scripts/plugins/bbv.lua), and, where the
-- QEMU has it, the same run through QEMU's contrib bbv plugin to compare.
--
--   qshell run scripts/bbv.lua [CHECKPOINT_DIR [INTERVAL [OUT_PREFIX]]]
--
-- Writes OUT_PREFIX.0.bb (default: a temporary directory's bbv.0.bb);
-- SimPoint reads it as is.
local here = arg[0]:match("(.*)/") or "."
local ckpt = arg[1]
local interval = tonumber(arg[2] or "1000000")
local prefix = arg[3] or (qemu.tmpdir() .. "/bbv")
if not ckpt then
  ckpt = qemu.tmpdir() .. "/prompt.ckpt"
  local vm <close> = qemu.guest.launch {}
  vm:checkpoint(ckpt)
end

local plugins = { qemu.plugin.lua(here .. "/plugins/bbv.lua", { interval = interval, out = prefix }) }
-- QEMU's own bbv plugin (QEMU 9.1+, built against its source) beside it
local ok, so = pcall(qemu.plugin.contrib, "bbv")
if ok then
  plugins[2] = { path = so, args = { interval = interval, outfile = prefix .. "-contrib" } }
else
  print("(no comparison: " .. tostring(type(so) == "table" and so.desc or so) .. ")")
end

local vm <close> = qemu.launch { restore = ckpt, plugins = plugins }
vm.console:run("i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; ls /usr/bin | wc -l")
vm:quit()
local r = vm:plugin_result("lua")

-- One interval per line: the set of ":ID:COUNT" pairs (contrib writes them in hash order).
local function intervals(path)
  local out = {}
  for line in io.lines(path) do
    local pairs_ = {}
    for p in line:gmatch(":%d+:%d+") do pairs_[#pairs_ + 1] = p end
    table.sort(pairs_)
    out[#out + 1] = table.concat(pairs_, " ")
  end
  return out
end
local mine = intervals(prefix .. ".0.bb")
print(string.format("%s.0.bb: %d intervals of %d instructions, %d blocks", prefix, #mine, interval, r.blocks))
print("first interval: " .. mine[1]:sub(1, 100) .. " ...")
assert(#mine > 5, "the run spans several intervals")
if ok then
  local theirs = intervals(prefix .. "-contrib.0.bb")
  local same = #theirs == #mine
  for i = 1, math.min(#mine, #theirs) do same = same and mine[i] == theirs[i] end
  print(string.format("contrib bbv: %d intervals; %s", #theirs,
                      same and "every interval is the same" or "the vectors differ"))
  assert(same, "the Lua BBV differs from contrib bbv's")
end
