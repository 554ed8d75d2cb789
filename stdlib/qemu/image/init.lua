-- qemu.image: system images before first boot.
--
--   qemu.image.customize(path, {root_password=, write={["/etc/motd"]="hi\n"}, symlinks=, delete=,
--                               hostname=, users=, enable=, disable=, mask=,
--                               disable_auto_upgrades=true, install={...}, uninstall={...}, run={...}})
--   qemu.image.check(path) -> {format=, compat=, partitions=, hints=, ...}
--
-- The file edits (passwords, users, written files and links, the host
-- name, systemd units, apt settings) on an ext2/3/4 root need neither root
-- nor libguestfs: e2fsprogs' debugfs writes into the filesystem, at the
-- partition's offset.  A raw image is edited in place; a qcow2 in a raw
-- copy, and only the blocks that changed go back into it (qemu-io), so an
-- overlay stays a small overlay.  Every step is planned (and refused) before
-- the first change; an image a QEMU holds, and one that overlays depend on
-- (qemu.image.backing), are refused.  Installing or removing packages and running
-- commands need the guest's own tools: they go through virt-customize
-- (libguestfs), whose appliance needs a kernel: the host's /boot/vmlinuz-*,
-- or appliance={kernel=, modules=}.
-- Images cannot be downloaded here: see qemu.image.check for what a
-- user-supplied image should look like.
--
-- Where each part lives (stdlib/qemu/image/):
--   inspect.lua    partition tables, filesystems, qemu.image.check
--   password.lua   SHA-512 crypt hashes (qemu.image.hash_password)
--   debugfs.lua    the ext2/3/4 editor: debugfs reads and writes
--   plan.lua       the planned file edits: delete, symlinks, host name,
--                  root password, users
--   units.lua      systemd units enabled, disabled and masked offline
--   customize.lua  qemu.image.customize: its options, the refusals and
--                  the debugfs backend
--   virt.lua       the virt-customize backend (packages, commands)

local inspect = require "qemu.image.inspect"
local password = require "qemu.image.password"
local debugfs = require "qemu.image.debugfs"
local customize = require "qemu.image.customize"

local M = {}

M.check = inspect.check
M.hash_password = password.hash_password
M.customize = customize.customize

-- The debugfs helpers qemu.image.kernel reads images with (distro.lua now
-- requires qemu.image.debugfs itself; the field stays for other callers).
M._debugfs = { quote = debugfs.quote, list_dir = debugfs.list_dir }

-- Building distribution images, reading their kernels, cloud-init seeds:
-- stdlib/qemu/image/build.lua and stdlib/qemu/image/cloudinit.lua.
function M.build(opts) return require("qemu.image.build").build(opts) end
function M.kernel(image, opts) return require("qemu.image.build").kernel(image, opts) end
function M.cloud_init(opts) return require("qemu.image.cloudinit").seed(opts) end

return M
