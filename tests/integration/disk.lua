-- qemu.disk against the real qemu-img and mkfs.ext4 (no guest needed).
local T = require "t"
local d = qemu.disk

local tmp = T.tmpdir()

local function slurp(p)
  local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s
end

T.test("create and info", function()
  local p = d.create(tmp .. "/a.qcow2", "64M")
  local i = d.info(p)
  T.eq(i.format, "qcow2")
  T.eq(i.virtual_size, 64 * 1024 * 1024)
  T.eq(i.compat, "1.1")
  T.ok(i.actual_size > 0 and i.actual_size < 1024 * 1024, "sparse")
  T.eq(#i.snapshots, 0)
  local r = d.create(tmp .. "/r.img", 1048576, { format = "raw" })
  T.eq(d.info(r).format, "raw")
  T.eq(d.info(r).virtual_size, 1048576)
  T.eq(d.info(d.create(tmp .. "/h.qcow2", "1.5G")).virtual_size, 1610612736)
end)

T.test("amend round trip: compat 1.1 -> 0.10 -> 1.1", function()
  local p = d.create(tmp .. "/amend.qcow2", "16M")
  T.eq(d.info(p).compat, "1.1")
  d.amend(p, { compat = "0.10" })
  T.eq(d.info(p).compat, "0.10")
  d.amend(p, { compat = "1.1" })
  T.eq(d.info(p).compat, "1.1")
  T.raises(function() d.amend(p, { compat = "2.0" }) end, "BadArgument")
  T.raises(function() d.amend(p, {}) end, "BadArgument", "nothing to change")
end)

T.test("overlay: backing file and format recorded", function()
  local base = d.create(tmp .. "/base.qcow2", "32M")
  local ov = d.overlay(base, tmp .. "/ov.qcow2")
  local i = d.info(ov)
  T.eq(i.backing, base)
  T.eq(i.backing_format, "qcow2")
  T.eq(i.virtual_size, 32 * 1024 * 1024)
  -- a relative base is recorded as an absolute path
  local cwd = require("qshell.os").realpath(".")
  local rel = d.create("rel-base.qcow2", "1M", { force = true })
  local ov2 = d.overlay(rel, tmp .. "/ov2.qcow2")
  T.eq(d.info(ov2).backing, cwd .. "/rel-base.qcow2")
  os.remove("rel-base.qcow2")
end)

T.test("create refuses to overwrite; the bytes stay unchanged", function()
  local p = tmp .. "/keep.bin"
  local f = assert(io.open(p, "wb")); f:write("precious data"); f:close()
  local e = T.raises(function() d.create(p, "1M") end, "FileExists")
  T.match(e.hint, "force=true")
  T.eq(slurp(p), "precious data")
  T.raises(function() d.convert(tmp .. "/a.qcow2", p) end, "FileExists")
  T.raises(function() d.overlay(tmp .. "/a.qcow2", p) end, "FileExists")
  T.raises(function() d.populate(p, { from = tmp }) end, "FileExists")
  T.eq(slurp(p), "precious data")
  d.create(p, "1M", { force = true })
  T.eq(d.info(p).format, "qcow2")
end)

T.test("bad input: sizes, paths, options", function()
  T.raises(function() d.create(tmp .. "/x.qcow2", "12Q") end, "BadArgument", "bad size")
  T.raises(function() d.create(tmp .. "/x.qcow2", "-1G") end, "BadArgument", "bad size")
  T.raises(function() d.create(tmp .. "/x.qcow2", 0) end, "BadArgument")
  T.raises(function() d.create(tmp .. "/x.qcow2", "") end, "BadArgument")
  T.raises(function() d.create(tmp .. "/missing-dir/x.qcow2", "1G") end, "BadArgument", "does not exist")
  T.raises(function() d.create(tmp .. "/x.qcow2", "1G", { formt = "raw" }) end, "BadArgument", "did you mean 'format'")
  T.raises(function() d.info(tmp .. "/nope.qcow2") end, "BadArgument", "no such image")
  T.ok(not T.exists(tmp .. "/x.qcow2"), "nothing created")
  local e = T.raises(function() d.create(tmp .. "/y.img", "1M", { format = "nosuchfmt" }) end, "DiskError")
  T.match(e.desc, "nosuchfmt")
end)

T.test("convert and resize", function()
  local src = d.create(tmp .. "/c.qcow2", "8M")
  local raw = d.convert(src, tmp .. "/c.raw", { format = "raw" })
  T.eq(d.info(raw).format, "raw")
  T.eq(d.info(raw).virtual_size, 8 * 1024 * 1024)
  d.resize(src, "16M")
  T.eq(d.info(src).virtual_size, 16 * 1024 * 1024)
  T.raises(function() d.resize(src, "4M") end, "BadArgument", "shrink")
  T.eq(d.info(src).virtual_size, 16 * 1024 * 1024)
  d.resize(src, "4M", { shrink = true })
  T.eq(d.info(src).virtual_size, 4 * 1024 * 1024)
end)

T.test("offline snapshots: list and delete", function()
  local p = d.create(tmp .. "/snap.qcow2", "8M")
  assert(T.sh("qemu-img snapshot -c first " .. p) == 0)
  assert(T.sh("qemu-img snapshot -c second " .. p) == 0)
  local list = d.snapshots(p)
  T.eq(#list, 2)
  T.eq(list[1].tag, "first")
  T.eq(list[2].tag, "second")
  d.delete_snapshot(p, "first")
  T.eq(#d.snapshots(p), 1)
  T.raises(function() d.delete_snapshot(p, "first") end, "SnapshotNotFound", "it has: second")
end)

T.test("info works while QEMU holds the image", function()
  local p = d.create(tmp .. "/held.qcow2", "8M")
  local vm <close> = qemu.launch { memory = "64M", disks = { p } }
  T.eq(d.info(p).format, "qcow2")
end)

T.test("populate: ext4 from a host directory, plain and partitioned", function()
  local src = tmp .. "/tree"
  assert(T.sh("mkdir -p " .. src .. "/a/b && echo hi > " .. src .. "/a/b/f && ln -s a/b/f " .. src .. "/link") == 0)
  local p = d.populate(tmp .. "/pop.qcow2", { from = src, label = "data" })
  T.eq(d.info(p).format, "qcow2")
  T.ok(d.info(p).virtual_size >= 16 << 20, "default size")
  -- read it back with debugfs, no mount
  assert(T.sh("qemu-img convert -O raw " .. p .. " " .. tmp .. "/pop.raw") == 0)
  local code, out = T.sh("debugfs -R 'cat /a/b/f' " .. tmp .. "/pop.raw")
  T.eq(code, 0)
  T.match(out, "hi")
  code, out = T.sh("e2label " .. tmp .. "/pop.raw")
  T.match(out, "data")
  local pp = d.populate(tmp .. "/popp.raw", { from = src, partition = true, size = "20M", format = "raw" })
  code, out = T.sh("sfdisk -d " .. pp)
  T.match(out, "start=%s*2048")
  T.eq(d.info(pp).virtual_size, 20 << 20, "size= is the disk's size, partition included")
  T.raises(function() d.populate(tmp .. "/x.qcow2", { from = tmp .. "/nodir" }) end, "BadArgument", "not a directory")
  T.raises(function() d.populate(tmp .. "/x.qcow2", { from = src, fs = "btrfs" }) end, "BadArgument", "not supported")
  assert(T.sh("head -c 3000000 /dev/urandom > " .. src .. "/big") == 0)
  local e = T.raises(function() d.populate(tmp .. "/x.qcow2", { from = src, size = "1M" }) end, "DiskError")
  T.match(e.hint, "larger size=")
  T.ok(not T.exists(tmp .. "/x.qcow2"), "nothing left after a failure")
end)

T.test("populate: size= is the disk's size, the partition fills the rest", function()
  local src = tmp .. "/tree3"
  assert(T.sh("mkdir -p " .. src .. " && echo three > " .. src .. "/f") == 0)
  local p = d.populate(tmp .. "/three.raw", { from = src, size = "3G", partition = true, format = "raw" })
  T.eq(d.info(p).virtual_size, 3 << 30)
  local _, out = T.sh("sfdisk -d " .. p)
  T.match(out, "start=%s*2048, size=%s*" .. ((3 << 30) - (1 << 20)) // 512 .. ", type=83")
  -- the filesystem at the partition's offset (unix_io's "?offset=")
  local code, cat = T.sh("debugfs -R 'cat /f' '" .. p .. "?offset=1048576'")
  T.eq(code, 0)
  T.match(cat, "three")
  -- unpartitioned: the filesystem is the whole disk
  local q = d.populate(tmp .. "/three.qcow2", { from = src, size = "3G" })
  T.eq(d.info(q).virtual_size, 3 << 30)
  T.raises(function() d.populate(tmp .. "/tiny.raw", { from = src, size = "1M", partition = true }) end,
           "BadArgument", "no room")
end)

-- A tree with what FAT holds: long names, spaces, a subdirectory, a link
-- (copied as its file), an empty directory.
local function fat_src(name)
  local src = tmp .. "/" .. name
  assert(T.sh("mkdir -p " .. src .. "/sub/deep " .. src .. "/empty && printf 'hello\\n' > " .. src .. "/a.txt" ..
              " && printf 'spaces and a long name\\n' > '" .. src .. "/A long name, with spaces.txt'" ..
              " && printf 'deep\\n' > " .. src .. "/sub/deep/f.bin && ln -s a.txt " .. src .. "/link") == 0)
  return src
end

T.test("populate fs=\"vfat\": files, names, label read back with mtools", function()
  local src = fat_src("fat1")
  local p = d.populate(tmp .. "/fat.raw", { from = src, fs = "vfat", label = "cidata", format = "raw" })
  T.eq(d.info(p).format, "raw")
  T.ok(d.info(p).virtual_size >= 16 << 20, "default size")
  local code, out = T.sh("mtype -i " .. p .. " ::/a.txt")
  T.eq(code, 0)
  T.eq(out, "hello\n")
  T.eq(select(2, T.sh("mtype -i " .. p .. " '::/A long name, with spaces.txt'")), "spaces and a long name\n")
  T.eq(select(2, T.sh("mtype -i " .. p .. " ::/sub/deep/f.bin")), "deep\n")
  T.eq(select(2, T.sh("mtype -i " .. p .. " ::/link")), "hello\n", "a link is copied as its file")
  code, out = T.sh("mdir -i " .. p .. " ::/")
  T.match(out, "empty%s+<DIR>")
  T.match(out, "A long name, with spaces%.txt")
  -- FAT stores the label in upper case
  code, out = T.sh("mlabel -s -i " .. p .. " ::")
  T.match(out, "Volume label is CIDATA%s*$")
  code, out = T.sh("blkid -o value -s LABEL " .. p)
  T.eq(out, "CIDATA\n")
  code, out = T.sh("blkid -o value -s TYPE " .. p)
  T.eq(out, "vfat\n")
  -- qcow2 (the default format) and the alias fs="fat"
  local q = d.populate(tmp .. "/fat.qcow2", { from = src, fs = "fat", size = "40M" })
  T.eq(d.info(q).format, "qcow2")
  T.eq(d.info(q).virtual_size, 40 << 20)
  assert(T.sh("qemu-img convert -O raw " .. q .. " " .. tmp .. "/fatq.raw") == 0)
  T.eq(select(2, T.sh("mtype -i " .. tmp .. "/fatq.raw ::/sub/deep/f.bin")), "deep\n")
end)

T.test("populate fs=\"vfat\" partition=true: an MBR partition of type 0x0c at 1 MiB", function()
  local src = fat_src("fat2")
  local p = d.populate(tmp .. "/fatp.qcow2", { from = src, fs = "vfat", fat = 32, partition = true,
                                               size = "64M", label = "ESP" })
  T.eq(d.info(p).virtual_size, 64 << 20)
  local raw = tmp .. "/fatp.raw"
  assert(T.sh("qemu-img convert -O raw " .. p .. " " .. raw) == 0)
  local _, out = T.sh("sfdisk -d " .. raw)
  T.match(out, "start=%s*2048, size=%s*" .. (63 << 20) // 512 .. ", type=c\n")
  T.eq(select(2, T.sh("mtype -i " .. raw .. "@@1M ::/a.txt")), "hello\n")
  T.eq(select(2, T.sh("mtype -i " .. raw .. "@@1M ::/sub/deep/f.bin")), "deep\n")
  T.match(select(2, T.sh("mlabel -s -i " .. raw .. "@@1M ::")), "Volume label is ESP")
  -- a FAT32 boot sector, its hidden sectors the 2048 before the partition
  local f = assert(io.open(raw, "rb"))
  f:seek("set", 1 << 20)
  local boot = f:read(512)
  f:close()
  T.eq(boot:sub(83, 87), "FAT32")
  T.eq(string.unpack("<I4", boot, 29), 2048)
  -- FAT16 (what mkfs.fat picks for a small disk) is type 0x0e
  local p16 = d.populate(tmp .. "/fat16.raw", { from = src, fs = "vfat", partition = true, size = "40M",
                                                format = "raw" })
  T.match(select(2, T.sh("sfdisk -d " .. p16)), "type=e\n")
end)

T.test("populate: labels and trees a filesystem cannot hold are refused before anything is written", function()
  local src = fat_src("fat3")
  local function bad(opts, pattern, class)
    opts.from = opts.from or src
    T.raises(function() d.populate(tmp .. "/bad.raw", opts) end, class or "BadArgument", pattern)
    T.ok(not T.exists(tmp .. "/bad.raw"), "nothing written")
  end
  bad({ fs = "vfat", label = "TWELVE_CHARS" }, "longer than 11")
  bad({ fs = "vfat", label = "a.b" }, "FAT label")
  bad({ fs = "vfat", label = "caf\xc3\xa9" }, "FAT label")
  bad({ fs = "ext4", label = "seventeen_chars_x" }, "longer than 16")
  bad({ fs = "ext4", label = "" }, "empty")
  bad({ fs = "ext4", fat = 32 }, "fat= goes with")
  bad({ fs = "vfat", fat = 24 }, "12, 16 or 32")
  -- trees FAT cannot hold: a shell line that makes one in @, what the error says
  for _, c in ipairs {
    { "clash", "mkdir -p @/d && echo 1 > @/d/Readme && echo 2 > @/d/README", "d/Readme differs only in case from README" },
    { "colon", "mkdir -p @ && echo 1 > '@/a:b'", "a:b has one of the characters" },
    { "fifo", "mkdir -p @ && mkfifo @/p", "special file" },
    { "dangling", "mkdir -p @ && ln -s nowhere @/l", "dangling" },
    { "dirlink", "mkdir -p @/d && ln -s d @/l", "link to a directory" },
  } do
    local dir = tmp .. "/" .. c[1]
    assert(T.sh((c[2]:gsub("@", dir))) == 0)
    bad({ fs = "vfat", from = dir }, c[3])
  end
  -- too small for the files: mcopy's "Disk full", with the fix
  local big = tmp .. "/bigfat"
  assert(T.sh("mkdir -p " .. big .. " && head -c 3000000 /dev/urandom > " .. big .. "/big") == 0)
  local e = T.raises(function() d.populate(tmp .. "/bad.raw", { from = big, fs = "vfat", size = "2M", format = "raw" }) end,
                     "DiskError", "Disk full")
  T.match(e.hint, "larger size=")
  T.ok(not T.exists(tmp .. "/bad.raw"), "nothing left after a failure")
end)

T.test("populate fs=\"vfat\" without mtools: MissingTool naming the package", function()
  local empty = tmp .. "/nopath"
  assert(T.sh("mkdir -p " .. empty) == 0)
  local code, out = T.sh("PATH=" .. empty .. " ./qshell -e '" ..
    "local ok, e = pcall(qemu.disk.populate, \"" .. tmp .. "/nomt.raw\", {from=\"" .. tmp .. "\", fs=\"vfat\", format=\"raw\"}) " ..
    "print(e.class, e.desc, e.hint)'")
  T.eq(code, 0, out)
  T.match(out, "^MissingTool")
  T.match(out, "mcopy")
  T.match(out, "package mtools")
  T.match(out, "apt%-get install mtools")
  T.ok(not T.exists(tmp .. "/nomt.raw"), "nothing written")
end)

T.test("nbd_attach: a clear error when the nbd module is missing", function()
  local p = d.create(tmp .. "/nbd.qcow2", "8M")
  local ok, e = pcall(d.nbd_attach, p)
  if ok then
    e:close()  -- a machine with nbd: it attached and detached
    return
  end
  T.ok(e.class == "NbdUnavailable" or e.class == "PermissionDenied", tostring(e))
  T.match(tostring(e), "nbd")
end)

T.test("hints for the disk traps", function()
  local h = qemu.errors.hint_for
  T.match(h("qemu-system-x86_64: 'x.qcow2' uses a qcow2 feature which is not supported by this qemu version: QCOW version 3"),
          'amend%(path, {compat="0.10"}%)')
  T.match(h("Error: Device 'ide0-hd1' is writable but does not support snapshots"), "convert")
  T.match(h("Error: no block device can store vmstate for snapshot"), "qcow2")
  T.match(h('Failed to get shared "write" lock'), "in use")
end)

T.run()
