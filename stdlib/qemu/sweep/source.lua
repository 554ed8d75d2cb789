-- qemu.sweep.source: the state every run of a sweep starts from.  from= is
-- a checkpoint directory (used as it is), or a savevm tag held by the
-- images in launch.disks: the tag is turned into a checkpoint once, in
-- the shell's scratch dir, from copies of those images (-loadvm runs the
-- guest on the image itself; the user's image and its state stay as they
-- are).

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local fs = require "qemu.util.fs"
local run = require "qemu.util.run"

local M = {}

local count = 0

-- M.resolve(spec, fname [, where]) -> {checkpoint=dir, from_tag=bool, tag=}
-- where: the directory a checkpoint made from a tag goes into (an engine
-- whose runs are on other machines gives one they see), else the scratch dir.
function M.resolve(spec, fname, where)
  if fs.is_dir(spec.from) then
    require("qemu.checkpoint.manifest").read(spec.from, fname)
    return { checkpoint = spec.from, from_tag = false }
  end
  if spec.from:find("/") then
    errors.raise { class = "NotACheckpoint", command = fname, desc = "from: no such checkpoint directory " .. spec.from }
  end
  local base = type(spec.launch) == "function" and spec.launch({}) or spec.launch or {}
  if not base.disks then
    check.bad(fname, "from=%q is not a checkpoint directory; as a savevm tag it needs launch.disks holding it", spec.from)
  end
  local lopts = {}
  for k, v in pairs(base) do if k ~= "plugins" then lopts[k] = v end end
  -- A name not taken yet (a resumed sweep makes its checkpoint again).
  local dir
  repeat
    count = count + 1
    dir = string.format("%s/sweep-from-%s-%d", where or fs.scratch(), spec.from, count)
  until not fs.exists(dir) and not fs.exists(dir .. ".disks")
  if where then fs.mkdir_p(where, fname) end
  fs.mkdir_p(dir .. ".disks", fname)
  lopts.disks = {}
  for i, d in ipairs(base.disks) do
    local dd = type(d) == "string" and { file = d } or {}
    if type(d) == "table" then for k, v in pairs(d) do dd[k] = v end end
    local copy = string.format("%s.disks/disk%d", dir, i)
    run.check({ "cp", "--sparse=always", dd.file, copy }, { command = fname })
    dd.file = copy
    lopts.disks[i] = dd
  end
  lopts.loadvm = spec.from
  local vm <close> = require("qemu.vm.launch").launch(lopts)
  vm:checkpoint(dir)
  return { checkpoint = dir, from_tag = true, tag = spec.from }
end

return M
