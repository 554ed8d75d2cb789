-- qshell.ram.core without QEMU: the memfd a VM's RAM lives in, RAM images
-- copied (data only, holes kept) and hashed in 4 MiB chunks on several
-- threads, and the mmap check restores make.
local T = require "t"

local ramc = require "qshell.ram.core"
local hash = require "qshell.hash"
local sys = require "qshell.os"
local tmp = T.tmpdir()
local MIB = 1 << 20

local function fromhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- The digest the manifest names "sha256_chunks", computed here from its
-- definition: SHA-256 of the chunks' SHA-256 digests, in order.
local function chunks_digest(data)
  local parts = {}
  for at = 1, #data, ramc.CHUNK do parts[#parts + 1] = fromhex(hash.string(data:sub(at, at + ramc.CHUNK - 1))) end
  return hash.string(table.concat(parts))
end

-- A RAM-like file: 10 MiB + a bit, with data in two places, a written page
-- of zeros and holes elsewhere.
local src = tmp .. "/ram.src"
local want
do
  local f = assert(io.open(src, "wb"))
  f:seek("set", 5 * MIB + 100)
  f:write(string.rep("guest data ", 1000))
  f:seek("set", 9 * 4096)
  f:write(string.rep("\0", 3 * 4096))
  f:seek("set", 10 * MIB)
  f:write(string.rep("\1", 12345))
  f:close()
  f = assert(io.open(src, "rb"))
  want = f:read("a")
  f:close()
end

T.test("image: a copy with the data only (holes and zero pages left out), its chunked digest from the definition", function()
  T.eq(ramc.CHUNK, 4 * MIB)
  local job = assert(ramc.image(src, tmp .. "/ram.copy", 3))
  local digest, size, data = job:wait()
  job:close()
  T.eq(digest, chunks_digest(want))
  T.eq(size, #want)
  -- what was written: the two data runs, whole pages (11000 bytes from
  -- offset 100 span 3 pages; 12345 bytes span 4, the last one short)
  T.eq(data, 3 * 4096 + 12345)
  local f = assert(io.open(tmp .. "/ram.copy", "rb"))
  T.ok(f:read("a") == want, "the copy reads as the source")
  f:close()
  local st = sys.stat(tmp .. "/ram.copy")
  T.eq(st.size, #want)
  T.ok(st.alloc <= 12 * 4096, "the copy is sparse: " .. st.alloc .. " bytes allocated")
  -- hashing only (what verify does), on one thread: the same digest
  job = assert(ramc.image(tmp .. "/ram.copy", nil, 1))
  T.eq((job:wait()), digest)
  job:close()
end)

T.test("image: never over an existing file; a missing source is an error naming it", function()
  local job, msg, code = ramc.image(src, tmp .. "/ram.copy", 2)
  T.eq(job, nil)
  T.match(msg, "ram.copy: File exists")
  T.eq(code, "exists")
  job, msg, code = ramc.image(tmp .. "/nothing", nil, 2)
  T.eq(job, nil)
  T.match(msg, "nothing: No such file")
  T.eq(code, "notfound")
  T.raises(function() ramc.image(src, nil, 0) end, nil, "threads")
end)

T.test("memfd: a file of the size asked, filled from an image and read back", function()
  local fd = assert(ramc.memfd("test-ram", 12 * MIB))
  local job = assert(ramc.image(src, fd, 2))
  local digest = job:wait()
  job:close()
  T.eq(digest, chunks_digest(want))
  -- the memfd as a source: the same content, and its own size
  job = assert(ramc.image(fd, nil, 2))
  local d2, size = job:wait()
  job:close()
  T.eq(size, 12 * MIB)
  T.eq(d2, chunks_digest(want .. string.rep("\0", 12 * MIB - #want)))
  sys.close(fd)
  T.raises(function() ramc.memfd("x", 0) end, nil, "positive")
end)

T.test("can_map: a regular file maps, a file system without mmap does not", function()
  T.eq(ramc.can_map(src), true)
  local ok, msg, code = ramc.can_map("/proc/self/status")
  T.eq(ok, nil)
  T.match(msg, "/proc/self/status")
  T.eq(code, "io")
end)

T.run()
