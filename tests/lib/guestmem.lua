-- guestmem: data in a guest's RAM, for the tests and benchmarks of shared
-- restores.
--
--   local guestmem = require "guestmem"
--   vm.console:run(guestmem.fill(1216), {timeout = 600})   -- 1216 MiB in /mnt/fill
--   guestmem.MD5                                          -- the command that sums it
--   guestmem.pss(pid) -> bytes                            -- a process's proportional set size

local M = {}

-- The guest command that puts mib MiB (a multiple of 64) of non-zero data
-- into its RAM: a tmpfs file, built by doubling 1 MiB of text (the kernel
-- copies it: much faster under TCG than a program writing it, ~150 MB/s).
function M.fill(mib)
  assert(mib % 64 == 0, "fill: a multiple of 64 MiB")
  local parts = {}
  for i = 1, mib // 64 do parts[i] = "a" end
  return string.format("mount -t tmpfs -o size=%dm tmpfs /mnt && cd /mnt && " ..
                       "yes qshell-fill-pattern | head -c 1048576 > a && " ..
                       "for i in 1 2 3 4 5 6; do cat a a > b && mv b a; done && " ..
                       "cat %s > fill && rm a && cd /", mib + 80, table.concat(parts, " "))
end

M.MD5 = "md5sum /mnt/fill | cut -c1-32"

function M.pss(pid)
  local f = assert(io.open("/proc/" .. pid .. "/smaps_rollup"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("Pss:%s+(%d+) kB")) * 1024
end

return M
