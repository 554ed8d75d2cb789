-- warmup.lua: boot the default guest, warm a workload up, save a checkpoint.
--
--   qshell run scripts/warmup.lua [CHECKPOINT_DIR]      (default build/demo/warm.ckpt)
--
-- The workload here stands for whatever your experiment needs in place
-- before measuring: files created, caches filled, a service started.
local dir = arg[1] or "build/demo/warm.ckpt"

local t0 = qemu.now()
local vm <close> = qemu.guest.launch { name = "warmup" }
print(string.format("booted %s (%s, %s) and logged in: %.1f s",
                    vm.name, vm.guest.kernel_version, vm.accel, qemu.now() - t0))

-- Warm-up: a working set in the guest's page cache and a file the runs read.
local out, status = vm.console:run([[
  mkdir -p /root/work &&
  dd if=/dev/urandom of=/root/work/input bs=64k count=64 2>/dev/null &&
  sha256sum /root/work/input > /root/work/input.sha256 &&
  cat /root/work/input > /dev/null &&
  echo warmed-up-at-$(cut -d' ' -f1 /proc/uptime)]])
assert(status == 0, "the warm-up failed: " .. out)
print("warm-up: " .. out)

t0 = qemu.now()
vm:checkpoint(dir)
local m = qemu.checkpoint.read(dir)
print(string.format("checkpoint %s: %.1f MB of state, %d disk(s), %.2f s",
                    dir, m.state.bytes / 1e6, #m.disks, qemu.now() - t0))
