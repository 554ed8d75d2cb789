-- net= on qemu.launch: QEMU's user-mode network (slirp), its argv, its
-- validation, a real QEMU with a forward (no guest needed: the host side
-- of a forward listens as soon as QEMU starts), and checkpoints.
local T = require "t"
local launch = require "qemu.vm.launch"

local tmp = T.tmpdir()

local function argv_of(net)
  return launch.net_arg("qemu.launch", net)
end

-- A TCP port nobody listens on now, from a range no test names twice.
local function free_port()
  local f = io.open("/proc/net/tcp", "r")
  local used = {}
  if f then
    for line in f:lines() do
      local p = line:match("^%s*%d+: %x+:(%x+) ")
      if p then used[tonumber(p, 16)] = true end
    end
    f:close()
  end
  local p
  repeat p = math.random(20000, 60000) until not used[p]
  return p
end

-- Is something listening on 127.0.0.1:port (TCP)?
local function listening(port)
  local f = io.open("/proc/net/tcp", "r")
  if not f then return false end
  local want = string.format("0100007F:%04X", port)
  local found = false
  for line in f:lines() do
    local addr, state = line:match("^%s*%d+: (%x+:%x+) %x+:%x+ (%x+)")
    if addr == want and state == "0A" then found = true end
  end
  f:close()
  return found
end

T.test("argv: net=true and the table forms", function()
  T.eq(argv_of(true), "user,model=virtio-net-pci")
  T.eq(argv_of({}), "user,model=virtio-net-pci")
  T.eq(argv_of({ model = "e1000", restrict = true, hostname = "exp-1" }),
       "user,model=e1000,restrict=on,hostname=exp-1")
  T.eq(argv_of({ forward = { { host = 8080, guest = 80 } } }),
       "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:8080-:80")
  T.eq(argv_of({ forward = { { host = 2222, guest = 22, address = "0.0.0.0" },
                             { host = 5353, guest = 53, proto = "udp" },
                             { host = 5353, guest = 53, proto = "tcp" } } }),
       "user,model=virtio-net-pci,hostfwd=tcp:0.0.0.0:2222-:22,hostfwd=udp:127.0.0.1:5353-:53," ..
       "hostfwd=tcp:127.0.0.1:5353-:53")
  T.eq(argv_of({ restrict = false, forward = {} }), "user,model=virtio-net-pci")
end)

T.test("bad net= input is an error before QEMU starts", function()
  local function bad(net, pattern)
    T.raises(function() qemu.launch { memory = "64M", net = net } end, "BadArgument", pattern)
  end
  bad("user", "net")
  bad({ modle = "e1000" }, "did you mean 'model'")
  bad({ model = "virtio net" }, "not a device name")
  bad({ model = "e1000,romfile=x" }, "not a device name")
  bad({ forward = { host = 8080, guest = 80 } }, "must be a list")
  bad({ forward = { "tcp:8080:80" } }, "must be a table")
  bad({ forward = { { host = 0, guest = 80 } } }, "1..65535")
  bad({ forward = { { host = 65536, guest = 80 } } }, "1..65535")
  bad({ forward = { { host = 8080, guest = 80.5 } } }, "1..65535")
  bad({ forward = { { host = 8080 } } }, "host= and guest=")
  bad({ forward = { { host = 8080, guest = 80, proto = "icmp" } } }, '"tcp" or "udp"')
  bad({ forward = { { host = 8080, guest = 80, address = "localhost" } } }, "not an IPv4 address")
  bad({ forward = { { host = 8080, guest = 80, address = "127.0.0.256" } } }, "not an IPv4 address")
  bad({ forward = { { host = 8080, guest = 80 }, { host = 8080, guest = 81 } } }, "forwarded twice")
  bad({ forward = { { host = 8080, guest = 80, gust = 1 } } }, "unknown option 'gust'")
  bad({ hostname = "a,b" }, "not a host name")
end)

T.test("a real QEMU with net=: the forward listens on 127.0.0.1 and info usernet shows it", function()
  local port = free_port()
  local vm <close> = qemu.launch { memory = "64M", net = { forward = { { host = port, guest = 80 } }, restrict = true } }
  local i
  for k, a in ipairs(vm.argv) do
    if a == "-nic" then i = k end
  end
  T.ok(i, "-nic in argv")
  T.eq(vm.argv[i + 1], string.format("user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:%d-:80", port))
  T.eq(vm:status(), "running")
  local u = vm:hmp("info usernet")
  T.match(u, "TCP%[HOST_FORWARD%]%s+%d+%s+127%.0%.0%.1%s+" .. port .. "%s+10%.0%.2%.15%s+80")
  T.match(vm:hmp("info network"), "model=virtio%-net%-pci")
  T.match(vm:hmp("info network"), "restrict=on")
  T.ok(listening(port), "QEMU listens on 127.0.0.1:" .. port)
  vm:close()
  T.ok(not listening(port), "the port is free again")
end)

T.test("a QEMU without user networking: a clear error naming libslirp", function()
  -- A stand-in for a QEMU built without libslirp: it lists no "user"
  -- backend and fails as such a QEMU does.
  local bin = tmp .. "/fakebin"
  assert(T.sh("mkdir -p " .. bin) == 0)
  local fake = bin .. "/qemu-system-x86_64"
  local f = assert(io.open(fake, "w"))
  f:write([[#!/bin/sh
for a in "$@"; do
  if [ "$a" = help ]; then printf 'Available netdev backend types:\nsocket\nstream\ndgram\ntap\n'; exit 0; fi
done
echo "qemu-system-x86_64: -nic user,model=virtio-net-pci: network backend 'user' is not compiled into this binary" >&2
exit 1
]])
  f:close()
  assert(T.sh("chmod +x " .. fake) == 0)
  local e = T.raises(function() qemu.launch { binary = fake, net = true, timeout = 10 } end, "LaunchFailed", "libslirp")
  T.match(e.desc, "no user networking")
end)

T.test("checkpoints keep net=: restored as saved, forwards may change, the NIC may not", function()
  local port = free_port()
  local ckpt = tmp .. "/net.ckpt"
  do
    local vm <close> = qemu.launch { memory = "64M", net = { forward = { { host = port, guest = 22 } } } }
    vm:checkpoint(ckpt)
  end
  local m = qemu.checkpoint.read(ckpt)
  T.eq(m.launch.net.forward[1].host, port)
  -- left out: the saved network, forward included
  do
    local vm <close> = qemu.launch { restore = ckpt }
    T.match(table.concat(vm.argv, " "), "%-nic user,model=virtio%-net%-pci,hostfwd=tcp:127%.0%.0%.1:" .. port .. "%-:22")
    T.eq(vm:status(), "running")
  end
  -- another host port (runs side by side from one checkpoint)
  local other = free_port()
  do
    local vm <close> = qemu.launch { restore = ckpt, net = { forward = { { host = other, guest = 22 } } } }
    T.match(vm:hmp("info usernet"), "127%.0%.0%.1%s+" .. other .. "%s")
    T.eq(vm:status(), "running")
  end
  T.raises(function() qemu.launch { restore = ckpt, net = false } end, "BadArgument", "no NIC")
  T.raises(function() qemu.launch { restore = ckpt, net = { model = "e1000" } } end, "BadArgument", "e1000")
end)

T.run()
