-- qemu.image.backing: which images are the backing files of overlays qshell
-- made, so that nothing writes into one by accident.
--
-- An overlay stores only the clusters that differ from its backing file,
-- and reads every other cluster from it: writing into the backing file
-- changes what every overlay over it reads, and corrupts the file systems
-- in them.  QEMU's locks protect a backing file only while a VM has it
-- open; this registry covers the overlays that sit on disk.
--
--   backing.record(base, overlay)        qemu.disk.create{backing=}, qemu.disk.overlay,
--                                        vm:checkpoint{shared_base=true}
--   backing.overlays_of(path) -> {overlay, ...}   the live overlays over path
--
-- The registry is a text file of "backing<TAB>overlay" lines (real paths)
-- in qshell's cache dir (qemu.paths.cache_dir(): $XDG_CACHE_HOME/qshell/backing,
-- else ~/.cache/qshell/backing).  An entry counts while its overlay exists and
-- (for a qcow2, whose header is read) still names that backing file;
-- the others are ignored, and dropped when the file is next rewritten.
-- Recording is best effort: an unwritable cache dir loses the entry,
-- never the overlay.

local sys = require "qshell.os"
local fs = require "qemu.util.fs"

local M = {}

-- Past this many lines, record() rewrites the file without dead entries
-- (test suites and sweeps make and delete overlays by the hundred).  Two
-- shells pruning and appending at the same moment can lose an entry: the
-- registry is a safety net beside QEMU's locks, not a lock.
local PRUNE_AT = 256

-- The registry's path.
function M.file()
  return require("qemu.util.paths").cache_dir() .. "/backing"
end

-- The real path of the backing file a qcow2 names in its header; false
-- when the file is not a qcow2 (nothing to check), nil when it names none
-- or the file is gone.
local function named_backing(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local head = f:read(20)
  if not head or #head < 20 or head:sub(1, 4) ~= "QFI\xfb" then
    f:close()
    return false
  end
  local off, size = string.unpack(">I8I4", head, 9)
  local name
  if off > 0 and size > 0 and size < 4096 and f:seek("set", off) then name = f:read(size) end
  f:close()
  if not name or #name ~= size then return nil end
  if name:sub(1, 1) ~= "/" then name = (path:match("^(.*)/[^/]*$") or ".") .. "/" .. name end
  return sys.realpath(name)
end

-- Is the entry (backing, overlay) still true?
local function live(backing, overlay)
  if not sys.stat(overlay) then return false end
  local named = named_backing(overlay)
  return named == false or named == backing
end

-- The entries as {backing, overlay} pairs, in file order.
local function entries(file)
  local list = {}
  for line in (fs.read(file) or ""):gmatch("[^\n]+") do
    local b, o = line:match("^([^\t]+)\t([^\t]+)$")
    if b then list[#list + 1] = { b, o } end
  end
  return list
end

-- Rewrite the registry with the entries keep() accepts, once each.
local function rewrite(file, list, keep)
  local out, seen = {}, {}
  for _, e in ipairs(list) do
    local line = e[1] .. "\t" .. e[2] .. "\n"
    if not seen[line] and keep(e) then
      seen[line] = true
      out[#out + 1] = line
    end
  end
  pcall(fs.write, file, table.concat(out))
end

-- backing.record(base, overlay): overlay (which exists) is an overlay of base.
function M.record(base, overlay)
  local file = M.file()
  local b, o = sys.realpath(base), sys.realpath(overlay)
  if not (b and o) then return end
  if b:find("[\t\n]") or o:find("[\t\n]") then return end
  local ok = pcall(fs.mkdir_p, file:match("^(.*)/[^/]*$"))
  if not ok then return end
  pcall(fs.append, file, b .. "\t" .. o .. "\n")
  local list = entries(file)
  if #list > PRUNE_AT then
    rewrite(file, list, function(e) return live(e[1], e[2]) end)
  end
end

-- backing.overlays_of(path) -> {overlay, ...}: the overlays recorded over
-- path that still exist and still use it, oldest first.
function M.overlays_of(path)
  local file = M.file()
  local real = sys.realpath(path)
  if not real then return {} end
  local list = entries(file)
  -- Read only: a rewrite here would race with another shell's append
  -- (and lose its entry); dead entries go when record() prunes.
  local found, seen = {}, {}
  for _, e in ipairs(list) do
    if e[1] == real and live(e[1], e[2]) and not seen[e[2]] then
      seen[e[2]] = true
      found[#found + 1] = e[2]
    end
  end
  return found
end

return M
