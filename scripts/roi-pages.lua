-- roi-pages.lua: the pages a region of interest touches, from a Lua
-- script's callback on every memory access inside QEMU
-- (scripts/plugins/roi-pages.lua).
--
--   qshell run scripts/roi-pages.lua [CHECKPOINT_DIR]
local here = arg[0]:match("(.*)/") or "."
local ckpt = arg[1]
if not ckpt then
  ckpt = qemu.tmpdir() .. "/prompt.ckpt"
  local vm <close> = qemu.guest.launch {}
  vm:checkpoint(ckpt)
end

local vm <close> = qemu.launch { restore = ckpt, plugins = { qemu.plugin.lua(here .. "/plugins/roi-pages.lua") } }
-- 1 MiB written then read back by dd: about 256 more pages than an empty ROI
vm.console:run("qshell-roi begin 1; dd if=/dev/zero of=/tmp/f bs=64k count=16 2>/dev/null; " ..
               "cat /tmp/f > /dev/null; qshell-roi end 1")
vm:quit()

local r = vm:plugin_result("lua")
print(string.format("ROI 1 touched %d pages (%d user, %d kernel): %d loads, %d stores",
                    r.pages, r.user_pages, r.kernel_pages, r.loads, r.stores))
print("the most used:")
for _, p in ipairs(r.top) do print(string.format("  %s  %8d loads %8d stores", p.page, p.loads, p.stores)) end
assert(r.pages > 256 and r.stores > 0, "the ROI wrote and read a megabyte")
