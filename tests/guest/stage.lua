-- A Slurm node's copy of the checkpoint (qemu.sweep.stage), without Slurm:
-- made once by processes that start at once, checked against the manifest
-- as it is copied, restored from, found again, and evicted only when no
-- process uses it.
-- (Run on the first QEMU only: what it tests is qshell's and Slurm's side.)
local T = require "t"
local fs = require "qemu.util.fs"
local json = require "qshell.json"

local tmp = T.tmpdir()

local function checkpoint(name)
  local vm <close> = qemu.launch { memory = "64M", disks = { qemu.disk.create(tmp .. "/" .. name .. ".qcow2", "8M") } }
  local dir = tmp .. "/" .. name .. ".ckpt"
  vm:checkpoint(dir)
  return dir
end

local a = checkpoint("a")

-- A qshell that stages ckpt into dir and prints the copy and whether it made it.
local function stager(ckpt, dir, log, extra)
  return string.format("./qshell -e %q", string.format(
    "local d, made = require('qemu.sweep.stage').checkpoint(%q, {dir = %q, log = %q, node = 'n'%s}); print(d, made)",
    ckpt, dir, log, extra or ""))
end

local function lines(text)
  local out = {}
  for l in (text or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

T.test("two processes at once make one copy, checked, with the recorded mtimes, and restore from it", function()
  local dir, log = tmp .. "/stage1", tmp .. "/stage1.log"
  local cmd = stager(a, dir, log)
  local code, out, err = T.sh("(" .. cmd .. " & " .. cmd .. " & wait)")
  T.eq(code, 0, err)
  local got = lines(out)
  T.eq(#got, 2, out .. err)
  local d1, m1 = got[1]:match("^(%S+)\t(%S+)$")
  local d2, m2 = got[2]:match("^(%S+)\t(%S+)$")
  T.eq(d1, d2, "the same copy")
  T.eq((m1 == "true" and 1 or 0) + (m2 == "true" and 1 or 0), 1, "one of them made it")
  T.eq(#lines(fs.read(log)), 1, "one line in the stage log")
  local rec = json.decode(fs.read(log))
  T.eq(rec.copy, d1)
  T.ok(rec.bytes > 0)
  -- the files as the manifest records them: a restore checks sizes only
  local m = require("qemu.checkpoint.manifest").read(d1)
  for name, r in pairs(m.files) do
    T.eq(fs.stat(d1 .. "/" .. name).mtime, r.mtime, name .. "'s mtime")
  end
  local vm <close> = qemu.launch { restore = d1 }
  T.eq(vm:status(), "running")
  -- a third finds it and copies nothing
  code, out = T.sh(cmd)
  T.eq(code, 0)
  T.match(out, "\tfalse\n$")
  T.eq(#lines(fs.read(log)), 1)
end)

T.test("a checkpoint whose file does not match its manifest is refused and no copy is kept", function()
  local bad = tmp .. "/bad.ckpt"
  T.sh("cp -a " .. a .. " " .. bad)
  -- the same size, one byte changed: only the digest tells
  local disk
  for _, n in ipairs(require("qshell.os").listdir(bad)) do
    if n:find("%.qcow2$") then disk = bad .. "/" .. n end
  end
  T.ok(disk, "the checkpoint has its disk")
  require("qshell.os").chmod(disk, 420)
  local f = assert(io.open(disk, "r+b"))
  f:seek("set", 65536 + 17)
  local b = f:read(1)
  f:seek("set", 65536 + 17)
  f:write(string.char((b:byte() + 1) % 256))
  f:close()
  local dir = tmp .. "/stage2"
  T.raises(function() require("qemu.sweep.stage").checkpoint(bad, { dir = dir }) end, "CheckpointCorrupt",
           "does not match its digest")
  local left = {}
  for _, n in ipairs(require("qshell.os").listdir(dir) or {}) do
    if not n:find("%.lock$") and not n:find("%.use$") then left[#left + 1] = n end
  end
  T.eq(table.concat(left, " "), "", "nothing kept but the lock files")
end)

T.test("beyond stage_keep the least recently used copy goes, never one a process uses", function()
  local b = checkpoint("b")
  local dir, log = tmp .. "/stage3", tmp .. "/stage3.log"
  -- a's copy, by a process that has ended (nothing holds it)
  T.eq((T.sh(stager(a, dir, log))), 0)
  local acopy = json.decode(lines(fs.read(log))[1]).copy
  -- this process uses b's copy; then c is staged with room for nothing more
  local bcopy = require("qemu.sweep.stage").checkpoint(b, { dir = dir, log = log, node = "n", keep = 0 })
  T.ok(not fs.exists(acopy), "a's copy, unused, is gone")
  T.ok(fs.is_file(bcopy .. "/manifest.json"), "b's copy stays")
  local c = checkpoint("c")
  local code, _, err = T.sh(stager(c, dir, log, ", keep = 0"))
  T.eq(code, 0, err)
  T.ok(fs.is_file(bcopy .. "/manifest.json"), "b's copy, in use here, is not removed")
end)

T.run()
