-- disk-setup.lua: a data disk made from a host directory, attached as hdb,
-- mounted in the guest and checked there.
--
--   qshell run scripts/disk-setup.lua [HOST_DIR]
--
-- Without HOST_DIR a small directory of sample files is made first.
local src = arg[1]
if not src then
  src = qemu.tmpdir() .. "/data"
  assert(os.execute("mkdir -p " .. src .. "/docs && head -c 1000000 /dev/urandom > " .. src ..
                    "/blob.bin && echo 'hello from the host' > " .. src .. "/docs/readme.txt"))
end

-- The host's checksums, to compare with what the guest sees.
local want = {}
local p = io.popen("cd '" .. src .. "' && find . -type f -exec sha256sum {} +")
for line in p:lines() do
  local sum, file = line:match("^(%x+)%s+%./(.+)$")
  want[file] = sum
end
p:close()

local disk = qemu.disk.populate(qemu.tmpdir() .. "/data.qcow2", { from = src, label = "data" })
local info = qemu.disk.info(disk)
print(string.format("data disk %s: %s, %.1f MB virtual, %.1f MB on disk", disk, info.format,
                    info.virtual_size / 1e6, info.actual_size / 1e6))

local vm <close> = qemu.guest.launch { disks = { disk } }
-- By its label: -hdb is usually /dev/sdb, but the kernel names disks in the
-- order its probes finish, which a loaded host can swap.
local _, st = vm.console:run("mkdir -p /mnt/data && mount $(findfs LABEL=data) /mnt/data")
assert(st == 0, "mount failed")
print("mounted LABEL=data on /mnt/data: " .. vm.console:run("df -h /mnt/data | tail -1"))

local bad = 0
for file, sum in pairs(want) do
  local got = vm.console:run("sha256sum '/mnt/data/" .. file .. "'"):match("^(%x+)")
  print(string.format("  %-20s %s", file, got == sum and "same in the guest" or "DIFFERENT"))
  if got ~= sum then bad = bad + 1 end
end
assert(bad == 0, bad .. " file(s) differ")
print("all files match")
