-- qemu.checkpoint: checkpoints, a VM's state and disks in a directory that
-- qemu.launch{restore=dir} starts any number of VMs from.
--
--   vm:checkpoint(dir [, opts])              qemu.checkpoint.make
--   qemu.launch{restore=dir, verify=}        qemu.checkpoint.restore
--   qemu.checkpoint.read(dir) -> manifest    qemu.checkpoint.manifest
--   qemu.checkpoint.verify(dir) -> true
--   qemu.checkpoint.info(dir) -> {..., text=}
--   qemu.checkpoint.sharing(dir [, binary]) -> shared, why

local manifest = require "qemu.checkpoint.manifest"

local M = {
  read = function(dir) return manifest.read(dir) end,
  verify = manifest.verify,
  info = manifest.info,
}

-- qemu.checkpoint.sharing(dir [, binary]) -> shared, why: do VMs restored
-- from dir (on that QEMU) share its RAM, and if not, why (said once)
function M.sharing(dir, binary)
  return require("qemu.checkpoint.restore").sharing(dir, binary)
end

return M
