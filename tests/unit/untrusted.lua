-- Checkpoints and results files from elsewhere are data (no QEMU): a
-- checkpoint directory made here by hand, whose manifest asks for a host
-- path, raw QEMU arguments, a plugin, a chardev, a host port, a disk that
-- names a host file, or is too big or too deep, is refused before anything
-- starts; a results file with a line too long or too deep is refused naming
-- the line, and a large file of ordinary lines is read.
local T = require "t"

local json = qemu.json
local sys = require "qshell.os"
local hash = require "qshell.hash"
local tmp = T.tmpdir()

local MIB = 1 << 20

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- n arrays nested in one another, as a Lua value.
local function nest(n)
  local t = { 1 } -- (json-c counts a level that holds something)
  for _ = 2, n do t = { t } end
  return t
end

-- A qcow2 header (version 3) as qemu-img writes one, with what it names:
-- {backing=, backing_format=, data_file=true}.
local function qcow2(o)
  o = o or {}
  local exts = ""
  if o.backing_format then
    local f = o.backing_format
    exts = string.pack(">I4I4", 0xE2792ACA, #f) .. f .. string.rep("\0", (8 - #f % 8) % 8)
  end
  exts = exts .. string.pack(">I4I4", 0, 0)
  local backing = o.backing or ""
  -- magic, version, backing offset and size, cluster bits, size, ... (72
  -- bytes), incompatible features (bit 2: data file), ..., header length
  local head = string.pack(">c4I4I8I4I4I8I4I4I8I8I4I4I8I8I8I8I4I4",
                           "QFI\xfb", 3, #backing > 0 and 104 + #exts or 0, #backing, 16, 64 * MIB,
                           0, 0, 0, 0, 0, 0, 0, o.data_file and 4 or 0, 0, 0, 4, 104)
  local text = head .. exts .. backing
  return text .. string.rep("\0", 4096 - #text)
end

-- The record of a file as the manifest keeps it (through a link, as the
-- checks see it).
local function record(path)
  local real = sys.realpath(path) or path
  local st = assert(sys.stat(real))
  return { size = st.size, sha256 = (hash.sha256(real)), mtime = st.mtime }
end

-- A stand-in QEMU that says it ran: a refused restore never runs it.
local marker = tmp .. "/qemu-ran"
local fake = write(tmp .. "/fake-qemu", "#!/bin/sh\ntouch '" .. marker .. "'\nexit 1\n")
assert(T.sh("chmod +x " .. fake) == 0)

local count = 0

-- craft([edit]) -> dir: a checkpoint directory as a qshell elsewhere
-- would write it (state, kernel, initrd, a disk, manifest.json), the
-- manifest changed by edit(m, dir) before it is written.
local function craft(edit)
  count = count + 1
  local dir = string.format("%s/c%d.ckpt", tmp, count)
  assert(T.sh("mkdir -p " .. dir) == 0)
  write(dir .. "/state", "QEVM" .. string.rep("s", 1000))
  write(dir .. "/kernel", "a kernel")
  write(dir .. "/initrd", "an initrd")
  write(dir .. "/disk-0.qcow2", qcow2())
  local files = {}
  for _, name in ipairs { "state", "kernel", "initrd", "disk-0.qcow2" } do
    files[name] = record(dir .. "/" .. name)
  end
  local m = {
    format = 3, qshell = "elsewhere", qemu = "7.2.22", created = 1796597959,
    source = { status = "running", host = "elsewhere", kernel = "/home/someone/vmlinuz" },
    launch = {
      machine_type = "pc-i440fx-7.2", machine = "pc,usb=off,hpet=off", cpu = "max,+avx,-sse4a,l3-cache=on",
      smp = "2,sockets=1,cores=2", memory = "256M", accel = "tcg,thread=single", console = true,
      kernel = "kernel", initrd = "initrd",
      -- the guest's command line names its own paths: fine
      append = "console=ttyS0 root=/dev/sda init=/sbin/init", append_given = "root=/dev/sda init=/sbin/init",
      net = { model = "virtio-net-pci", forward = { { host = 2222, guest = 22 } } },
    },
    disks = { { file = "disk-0.qcow2", format = "qcow2", interface = "ide", virtual_size = 64 * MIB } },
    state = { file = "state", bytes = 1004 },
    console = { kernel_level = 7 },
    files = files,
  }
  if edit then edit(m, dir) end
  write(dir .. "/manifest.json", json.encode(m, { pretty = true }) .. "\n")
  return dir
end

-- A restore of dir is refused (NotACheckpoint, desc matching pattern)
-- before anything starts: QEMU (the stand-in) never ran, no VM is live.
local function refused(dir, pattern)
  local e = T.raises(function() qemu.launch { restore = dir, binary = fake, timeout = 5 } end, "NotACheckpoint",
                     pattern)
  T.ok(not T.exists(marker), "QEMU was started")
  T.eq(#qemu.vms(), 0)
  T.match(e.desc, "nothing was started")
  return e
end

T.test("control: the checkpoint made by hand reads and verifies (each case below changes one thing)", function()
  local dir = craft()
  local m = qemu.checkpoint.read(dir)
  T.eq(m.launch.kernel, "kernel")
  T.eq(qemu.checkpoint.verify(dir), true)
  T.match(qemu.checkpoint.info(dir).text, "pc%-i440fx%-7%.2")
  T.ok(not T.exists(marker))
end)

T.test("a kernel, initrd or file of the host: refused, also a link to one with the right size and SHA-256", function()
  refused(craft(function(m) m.launch.kernel = "/etc/passwd" end), "launch%.kernel")
  refused(craft(function(m) m.launch.initrd = "../../etc/passwd" end), "launch%.initrd")
  refused(craft(function(m) m.files["../passwd"] = record("/etc/passwd") end), "outside the checkpoint")
  -- kernel -> /etc/passwd, recorded faithfully: its size and digest match
  local dir = craft(function(m, d)
    os.remove(d .. "/kernel")
    assert(T.sh(string.format("ln -s /etc/passwd %s/kernel", d)) == 0)
    m.files.kernel = record(d .. "/kernel")
  end)
  local e = refused(dir, "names kernel, which is a link to /etc/passwd outside the checkpoint")
  T.match(e.hint, "cp %-L")
  T.raises(function() qemu.checkpoint.verify(dir) end, "NotACheckpoint", "outside the checkpoint")
  -- a file that is not a regular file (a directory here; a FIFO or a
  -- device would be read without end)
  refused(craft(function(m, d)
    os.remove(d .. "/state")
    assert(T.sh("mkdir " .. d .. "/state") == 0)
    local st = sys.stat(d .. "/state")
    m.files.state = { size = st.size, sha256 = string.rep("0", 64), mtime = st.mtime }
  end), "state, which is not a regular file %(a dir%)")
  -- manifest.json itself a link out
  local other = craft()
  dir = craft()
  os.remove(dir .. "/manifest.json")
  assert(T.sh(string.format("ln -s %s/manifest.json %s/manifest.json", other, dir)) == 0)
  refused(dir, "manifest%.json is a link to " .. sys.realpath(other):gsub("%p", "%%%0") ..
               "/manifest%.json outside the checkpoint")
  -- ... or not a file (a FIFO would never end)
  dir = craft()
  os.remove(dir .. "/manifest.json")
  assert(T.sh("mkdir " .. dir .. "/manifest.json") == 0)
  refused(dir, "manifest%.json is not a regular file %(a dir%)")
end)

T.test("raw QEMU arguments, plugins in the manifest: refused, the caller's own are for qemu.launch; a recorded binary is dropped", function()
  local e = refused(craft(function(m) m.launch.extra = { "-device", "loader,file=/etc/shadow" } end),
                    "has launch%.extra %(raw QEMU arguments%), which a restore never takes from a manifest")
  T.match(e.hint, "give extra= to qemu%.launch{restore=dir")
  refused(craft(function(m) m.launch.plugins = { { path = "/tmp/evil.so" } } end), "launch%.plugins.*TCG plugins")
  -- a binary earlier versions recorded as information: dropped on read, never run
  T.eq(qemu.checkpoint.read(craft(function(m) m.launch.binary = "/bin/sh" end)).launch.binary, nil)
  refused(craft(function(m) m.launch.disks = { "/dev/sda" } end), "launch%.disks")
  -- an option qshell never records (a chardev, a netdev): unknown, refused
  refused(craft(function(m) m.launch.chardev = "file,id=c0,path=/tmp/out" end), "launch%.chardev")
  refused(craft(function(m) m.launch.netdev = "tap,id=n0,script=/tmp/up.sh" end), "launch%.netdev")
end)

T.test("machine, accel, cpu, smp, memory, console, net that reach the host: refused", function()
  local function bad(key, value, pattern)
    refused(craft(function(m) m.launch[key] = value end), pattern)
  end
  bad("machine", "pc,kernel=/etc/passwd", "setting kernel,")
  bad("machine", "pc,dumpdtb=out.dtb", "setting dumpdtb")
  bad("machine", "pc,firmware=/etc/shadow", "setting firmware")
  bad("machine", "pc,pflash0=disk0", "setting pflash0")
  bad("machine", "pc,,usb=on", "empty setting")
  bad("machine", "/usr/bin/pc", "does not start with a machine type name")
  bad("machine_type", "pc,kernel=/etc/passwd", "launch%.machine_type")
  bad("accel", "kvm,device=/dev/sda", "setting device")
  bad("cpu", "max,model-id=/etc/passwd", "not a plain value")
  bad("smp", "2,file=/x", "launch%.smp")
  bad("memory", "1G,mem-path=/dev/mem", "launch%.memory")
  bad("console", "file:/tmp/console.log", "launch%.console")
  bad("append", { "-device", "x" }, "launch%.append")
  bad("net", { model = "virtio-net-pci", netdev = "tap,script=/tmp/up.sh" }, "has netdev")
  bad("net", { model = "virtio-net-pci,romfile=/etc/passwd" }, "not a NIC model name")
  bad("net", { forward = { { host = 2222, guest = 22, address = "0.0.0.0" } } }, "127%.0%.0%.1 only")
end)

T.test("disks that name a host file (format, -drive settings, what a qcow2 header names): refused", function()
  local function disk(edit, pattern)
    refused(craft(function(m, d) edit(m.disks[1], d, m) end), pattern)
  end
  disk(function(d) d.format = "vmdk" end, "format \"vmdk\"")
  disk(function(d) d.format = "json:{\"driver\":\"raw\"}" end, "format")
  disk(function(d) d.interface = "virtio,file=/dev/sda" end, "interface")
  disk(function(d) d.cache = "none,file=/dev/sda" end, "cache")
  disk(function(d) d.base = { path = "relative.qcow2", size = 1, sha256 = "00", format = "qcow2" } end, "base")
  -- the image's header names a host file: caught by the digest-checked files too
  local function image(o, pattern, base)
    local dir = craft(function(m, d)
      write(d .. "/disk-0.qcow2", qcow2(o))
      m.files["disk-0.qcow2"] = record(d .. "/disk-0.qcow2")
      m.disks[1].base = base
    end)
    refused(dir, pattern)
    T.raises(function() qemu.checkpoint.verify(dir) end, "NotACheckpoint", pattern)
  end
  image({ backing = "/etc/passwd", backing_format = "raw" }, "names the backing file \"/etc/passwd\"")
  image({ backing = "json:{\"file.filename\":\"/dev/sda\"}" }, "names the backing file")
  image({ data_file = true }, "names an external data file")
  -- a recorded base that is not a regular file (/dev/null's digest is the
  -- empty string's: everything else would match)
  image({ backing = "/dev/null", backing_format = "raw" }, "base /dev/null, which is not a regular file",
        { path = "/dev/null", format = "raw", size = 0, sha256 = hash.string(""), mtime = 0 })
  -- a base of the host named in the header but not the one recorded
  local base = write(tmp .. "/base.raw", string.rep("b", 4096))
  local rec = record(base)
  image({ backing = "/etc/passwd", backing_format = "raw" }, "which is not its recorded base",
        { path = base, format = "raw", size = rec.size, sha256 = rec.sha256, mtime = rec.mtime })
  -- ... and the recorded one is fine (shared_base=true checkpoints)
  local dir = craft(function(m, d)
    write(d .. "/disk-0.qcow2", qcow2 { backing = base, backing_format = "raw" })
    m.files["disk-0.qcow2"] = record(d .. "/disk-0.qcow2")
    m.disks[1].base = { path = base, format = "raw", size = rec.size, sha256 = rec.sha256, mtime = rec.mtime }
  end)
  T.eq(qemu.checkpoint.verify(dir), true)
end)

T.test("a manifest over 1 MiB or nested deeper than 32 levels: refused before it is parsed", function()
  -- both are valid JSON a restore would otherwise read (source is only shown)
  local e = refused(craft(function(m) m.source.note = string.rep("x", MIB + 10) end), "is over 1 MiB")
  T.match(e.desc, "c%d+%.ckpt/manifest%.json")
  refused(craft(function(m) m.source.deep = nest(40) end), "deeper than 32 levels")
  -- 32 levels are fine: the limit is where it says
  qemu.checkpoint.read(craft(function(m) m.source.deep = nest(30) end))
  T.raises(function() qemu.checkpoint.read(craft(function(m) m.source.deep = nest(31) end)) end, "NotACheckpoint",
           "deeper than 32")
  T.raises(function() qemu.checkpoint.info(craft(function(m) m.launch.extra = { "-S" } end)) end, "NotACheckpoint",
           "launch%.extra")
end)

-- ---- results files ----

local function result_line(i, metrics, err)
  return json.encode { run = "x=" .. i .. "#1", ["repeat"] = 1, params = { x = i }, status = err and "failed" or "ok",
                       wall_s = 1.5, error = err or json.null, host = "h", started = "2026-12-01T00:00:00Z",
                       prov = json.null, metrics = metrics or { m = i } } .. "\n"
end

T.test("results: a JSONL line over 1 MiB or nested deeper than 32 levels is refused naming the line", function()
  local p = write(tmp .. "/huge.jsonl", result_line(1) .. result_line(2, nil, string.rep("e", MIB + 1)) ..
                                        result_line(3))
  local e = T.raises(function() qemu.results.read(p) end, "BadResults", "huge%.jsonl:2: the line is %d+ bytes")
  T.match(e.desc, "it was not read")
  p = write(tmp .. "/deep.jsonl", result_line(1) .. result_line(2) .. result_line(3, { m = nest(40) }))
  T.raises(function() qemu.results.read(p) end, "BadResults", "deep%.jsonl:3: the line nests .* deeper than 32")
  T.raises(function() qemu.sweep.read(p) end, "BadResults", "deep%.jsonl:3:")
  -- a metric that is a table a few levels deep is fine
  p = write(tmp .. "/ok.jsonl", result_line(1, { h = nest(20) }))
  T.eq(#qemu.results.read(p), 1)
end)

T.test("results: a CSV record over 1 MiB is refused naming its line; a large file of ordinary rows is read", function()
  local header = "run,repeat,x,status,wall_s,error,host,started,prov,m\n"
  local p = write(tmp .. "/huge.csv", header .. "x=1#1,1,1,ok,1.0,,h,t,p,1\n" ..
                                      "x=2#1,1,2,failed,1.0,\"" .. string.rep("e", MIB) .. "\",h,t,p,\n")
  T.raises(function() qemu.results.read(p) end, "BadResults", "huge%.csv:3: the line is")
  -- 30000 rows, well over 1 MiB together: no cap on the file
  local rows = { header }
  for i = 1, 30000 do rows[#rows + 1] = string.format("x=%d#1,1,%d,ok,1.0,,host-%d,t,p,%d\n", i, i, i, i) end
  p = write(tmp .. "/big.csv", table.concat(rows))
  T.ok(sys.stat(p).size > MIB)
  T.eq(#qemu.results.read(p), 30000)
  local lines = {}
  for i = 1, 20000 do lines[i] = result_line(i) end
  p = write(tmp .. "/big.jsonl", table.concat(lines))
  T.ok(sys.stat(p).size > MIB)
  T.eq(#qemu.results.read(p), 20000)
end)

T.cleanup(function() T.sh("rm -rf '" .. tmp .. "'") end)

T.run()
