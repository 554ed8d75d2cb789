-- qemu.launch: options -> argv, spawn, QMP handshake; qemu.attach.
--
-- The argv is built here, in full, and kept as vm.argv: what you read is
-- exactly what QEMU got.  The monitor is an inherited socketpair (fd 3), so
-- there is no socket path, no stale file and no accept race.

local proc = require "qshell.proc.core"
local sys = require "qshell.os"
local qmpc = require "qshell.qmp.core"
local consolec = require "qshell.console.core"
local errors = require "qemu.errors"
local check = require "qemu.util.check"
local VM = require "qemu.vm"
local host = require "qemu.util.host"
local ram = require "qemu.vm.ram"
local restore = require "qemu.checkpoint.restore"

local M = {}

local MONITOR_FD = 3
local CONSOLE_FD = 4
local DEFAULT_TIMEOUT = 30

-- Every live VM, for qemu.vms() and the graceful shutdown at script end.
-- Weak: a VM a script drops is closed by the garbage collector.  The
-- interactive shell pins its VMs instead (M.pin), so that a VM launched
-- without a name stays listed by .vms until it is closed.
local live = setmetatable({}, { __mode = "k" })
local pinned = {}
M.pin = false
local serial = 0

function M.live()
  local out = {}
  for vm, n in pairs(live) do
    if not vm:_is_closed() then out[#out + 1] = { vm = vm, n = n } end
  end
  table.sort(out, function(a, b) return a.n < b.n end)
  for i, e in ipairs(out) do out[i] = e.vm end
  return out
end

function M.shutdown_all()
  for _, vm in ipairs(M.live()) do pcall(vm.close, vm) end
end

local function readable(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- QEMU's option parser: a comma in a value is written ",,".
local function qesc(s)
  return (tostring(s):gsub(",", ",,"))
end
M.qesc = qesc

local function is_list(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function list_of_strings(fname, what, t)
  if type(t) == "string" then return { t } end
  if not is_list(t) then check.bad(fname, "%s must be a string or a list of strings", what) end
  for i, v in ipairs(t) do
    if type(v) ~= "string" and type(v) ~= "number" then
      check.bad(fname, "%s[%d] must be a string, got %s", what, i, type(v))
    end
  end
  return t
end

local disk_opts = {
  file = "string", interface = "string", format = "string", readonly = "boolean",
  cache = "string", node = "string", snapshot = "boolean",
}
local interfaces = { ide = true, virtio = true, scsi = true, none = true, nvme = true }

-- rr (record/replay): the disk is an if=none drive with its writes in a
-- throw-away layer, under a blkreplay drive that has the disk's id and node
-- name; its device goes in `devices`, added at the end of the argv (where
-- QEMU creates an if=virtio drive's device: the same PCI slots).
local function rr_disk(fname, args, devices, i, d, iface, fmt, ide_index)
  if iface == "scsi" then
    check.bad(fname, "disks[%d]: a scsi disk cannot be recorded or replayed here (its controller is QEMU's " ..
              "choice); use interface=\"virtio\" or \"ide\"", i)
  end
  local spec = { "file=" .. qesc(d.file), "format=" .. qesc(fmt), "id=drive" .. (i - 1) .. "-rr",
                 "if=none", "snapshot=on" }
  if d.readonly then spec[#spec + 1] = "readonly=on" end
  if d.cache then spec[#spec + 1] = "cache=" .. qesc(d.cache) end
  args[#args + 1] = "-drive"
  args[#args + 1] = table.concat(spec, ",")
  args[#args + 1] = "-drive"
  args[#args + 1] = string.format("driver=blkreplay,if=none,image=drive%d-rr,id=drive%d,node-name=%s%s",
                                  i - 1, i - 1, qesc(d.node or ("disk" .. (i - 1))),
                                  d.readonly and ",readonly=on" or "")
  local dev
  if iface == "ide" then
    dev = string.format("ide-hd,drive=drive%d,bus=ide.%d,unit=%d", i - 1, ide_index // 2, ide_index % 2)
    ide_index = ide_index + 1
  elseif iface == "virtio" then
    dev = string.format("virtio-blk-pci,drive=drive%d", i - 1)
  end
  if dev then
    devices[#devices + 1] = "-device"
    devices[#devices + 1] = dev
  elseif iface == "nvme" then -- where a plain nvme disk's device is
    args[#args + 1] = "-device"
    args[#args + 1] = string.format("nvme,drive=drive%d,serial=qshell%d", i - 1, i - 1)
  end
  return ide_index
end

-- rr, devices: see rr_disk.
local function disk_args(fname, disks, rr, devices)
  if not is_list(disks) then check.bad(fname, "option 'disks' must be a list") end
  local args = {}
  local ide_index = 0
  for i, d in ipairs(disks) do
    if type(d) == "string" then d = { file = d } end
    if type(d) ~= "table" then
      check.bad(fname, "disks[%d] must be a path or a table {file=, interface=, format=, readonly=}", i)
    end
    check.options(fname .. " disks[" .. i .. "]", d, disk_opts)
    if not d.file then check.bad(fname, "disks[%d] has no file", i) end
    if not readable(d.file) then
      errors.raise { class = "BadArgument", command = fname,
                     desc = string.format("disks[%d]: cannot open %s", i, d.file),
                     hint = "create it with qemu.disk.create(path, size)" }
    end
    local iface = d.interface or "ide"
    if not interfaces[iface] then
      check.bad(fname, "disks[%d]: unknown interface '%s' (ide, virtio, scsi, nvme, none)", i, iface)
    end
    if d.readonly and iface == "ide" then
      check.bad(fname, "disks[%d]: QEMU's IDE disks cannot be read-only (\"Block node is read-only\"); " ..
                "use interface=\"virtio\" or \"scsi\" for a read-only disk", i)
    end
    local fmt = d.format or require("qemu.disk").detect_format(d.file)
    if rr then
      ide_index = rr_disk(fname, args, devices, i, d, iface, fmt, ide_index)
    else
      local spec = { "file=" .. qesc(d.file), "format=" .. qesc(fmt), "id=drive" .. (i - 1) }
      if iface == "ide" then
        -- disks[1] is hda, disks[2] hdb, as -hda/-hdb.
        spec[#spec + 1] = "if=ide,index=" .. ide_index .. ",media=disk"
        ide_index = ide_index + 1
      elseif iface == "nvme" then
        spec[#spec + 1] = "if=none"
      else
        spec[#spec + 1] = "if=" .. iface
      end
      spec[#spec + 1] = "node-name=" .. qesc(d.node or ("disk" .. (i - 1)))
      if d.readonly then spec[#spec + 1] = "readonly=on" end
      if d.snapshot then spec[#spec + 1] = "snapshot=on" end
      if d.cache then spec[#spec + 1] = "cache=" .. qesc(d.cache) end
      args[#args + 1] = "-drive"
      args[#args + 1] = table.concat(spec, ",")
      if iface == "nvme" then
        args[#args + 1] = "-device"
        args[#args + 1] = string.format("nvme,drive=drive%d,serial=qshell%d", i - 1, i - 1)
      end
    end
  end
  return args
end

-- loadvm=tag: the tag must be in the first writable qcow2 disk (where
-- QEMU keeps the vmstate), and that disk must not be a throw-away layer.
local function check_loadvm(fname, opts)
  local snapshot = require "qemu.vm.snapshot"
  local disk = require "qemu.disk"
  snapshot.check_tag(fname, opts.loadvm)
  for _, d in ipairs(opts.disks or {}) do
    if type(d) == "string" then d = { file = d } end
    if type(d) == "table" and d.file and not d.readonly then
      if d.snapshot then
        check.bad(fname, "loadvm cannot restore into a snapshot=on disk (%s): internal snapshots live in the image itself", d.file)
      end
      if (d.format or disk.detect_format(d.file)) == "qcow2" then
        local names = {}
        for _, s in ipairs(disk.snapshots(d.file)) do
          if s.tag == opts.loadvm then return opts.loadvm end
          names[#names + 1] = s.tag
        end
        errors.raise { class = "SnapshotNotFound", command = fname,
                       desc = string.format("no snapshot '%s' in %s (it has: %s)", opts.loadvm, d.file,
                                            #names > 0 and table.concat(names, ", ") or "none") }
      end
    end
  end
  check.bad(fname, "loadvm needs a writable qcow2 disk holding the snapshot")
end

local launch_opts = {
  binary = "string", accel = "string", machine = "string", cpu = "string",
  smp = function(v)
    if math.type(v) == "integer" and v >= 1 then return true end
    if type(v) == "string" and v ~= "" then return true end
    return false, "must be a positive integer or a -smp string"
  end,
  memory = "string|number", kernel = "string", initrd = "string", append = "string|table",
  disks = "table", extra = "table", name = "string", timeout = check.positive,
  console = "boolean", reboot = "boolean", icount = "table|number|string",
  loadvm = "string", plugins = "table", restore = "string", verify = "boolean",
  net = "boolean|table", paused = "boolean", record = "string", replay = "string",
}

local icount_opts = {
  shift = function(v)
    if v == "auto" or (math.type(v) == "integer" and v >= 0 and v <= 10) then return true end
    return false, 'must be "auto" or an integer 0..10'
  end,
  sleep = "boolean", align = "boolean",
  console = function(v)
    if v == "exact" then return true end
    return false, 'must be "exact" (console input typed at the guest\'s idle points; see vm/gate.lua)'
  end,
}

-- icount = {shift="auto"|N, sleep=false, align=false} (or just the shift)
local function icount_arg(fname, v, accel)
  if type(v) ~= "table" then v = { shift = v } end
  check.options(fname .. " icount", v, icount_opts)
  if accel ~= "tcg" then
    check.bad(fname, "icount needs accel=\"tcg\" (this VM would run under %s)", accel)
  end
  local spec = { "shift=" .. tostring(v.shift or "auto") }
  spec[#spec + 1] = "sleep=" .. (v.sleep and "on" or "off")
  if v.align then spec[#spec + 1] = "align=on" end
  return table.concat(spec, ",")
end

-- net = true | {model="virtio-net-pci", forward={{host=, guest=, proto="tcp",
-- address="127.0.0.1"}, ...}, restrict=false, hostname=}: one NIC on QEMU's
-- user-mode network (slirp: no root, no host setup), as
-- -nic user,model=M[,restrict=on][,hostname=H][,hostfwd=tcp:127.0.0.1:8080-:80]...
-- Forwards listen on 127.0.0.1 unless address= says otherwise ("0.0.0.0":
-- every interface).
local net_opts = { model = "string", forward = "table", restrict = "boolean", hostname = "string" }
local forward_opts = { host = "number", guest = "number", proto = "string", address = "string" }

local function port(fname, what, v)
  if math.type(v) ~= "integer" or v < 1 or v > 65535 then
    check.bad(fname, "%s must be a port number 1..65535, got %s", what, tostring(v))
  end
  return v
end

local function ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, x in ipairs { a, b, c, d } do
    if #x > 3 or tonumber(x) > 255 then return false end
  end
  return true
end

function M.net_arg(fname, net)
  if net == true then net = {} end
  check.options(fname .. " net", net, net_opts)
  local model = net.model or "virtio-net-pci"
  if not model:match("^[%w_%-]+$") then
    check.bad(fname, "net.model %q is not a device name (e.g. \"virtio-net-pci\", \"e1000\")", model)
  end
  local spec = { "user", "model=" .. model }
  if net.restrict then spec[#spec + 1] = "restrict=on" end
  if net.hostname then
    if not net.hostname:match("^[%w][%w%-%.]*$") or #net.hostname > 253 then
      check.bad(fname, "net.hostname %q is not a host name (letters, digits, - and .)", net.hostname)
    end
    spec[#spec + 1] = "hostname=" .. net.hostname
  end
  if net.forward ~= nil then
    if not is_list(net.forward) then
      check.bad(fname, "net.forward must be a list: {{host=8080, guest=80}, ...}")
    end
    local seen = {}
    for i, f in ipairs(net.forward) do
      local what = string.format("net.forward[%d]", i)
      if type(f) ~= "table" then check.bad(fname, "%s must be a table {host=, guest=, proto=, address=}", what) end
      check.options(fname .. " " .. what, f, forward_opts)
      local proto = f.proto or "tcp"
      if proto ~= "tcp" and proto ~= "udp" then check.bad(fname, '%s.proto must be "tcp" or "udp"', what) end
      if f.host == nil or f.guest == nil then check.bad(fname, "%s needs host= and guest= ports", what) end
      port(fname, what .. ".host", f.host)
      port(fname, what .. ".guest", f.guest)
      local addr = f.address or "127.0.0.1"
      if not ipv4(addr) then check.bad(fname, "%s.address %q is not an IPv4 address", what, addr) end
      local k = proto .. ":" .. f.host
      if seen[k] then check.bad(fname, "%s: host port %s/%d is forwarded twice", what, proto, f.host) end
      seen[k] = true
      spec[#spec + 1] = string.format("hostfwd=%s:%s:%d-:%d", proto, addr, f.host, f.guest)
    end
  end
  return table.concat(spec, ",")
end

-- A launch with net= that failed: is it because this QEMU has no user
-- networking (built without libslirp)?  Asked of the binary only then.
local function check_user_net(fname, binary)
  local ok, st = pcall(require("qemu.util.run").run, { binary, "-netdev", "help" }, { command = fname })
  if not ok or st.code ~= 0 then return end
  for line in st.stdout:gmatch("[^\n]+") do
    if line:match("^%s*user%s*$") then return end
  end
  errors.raise { class = "LaunchFailed", command = fname,
                 desc = binary .. " has no user networking (it was built without libslirp), which net= needs",
                 hint = "use a QEMU built with libslirp (Debian's qemu-system-x86 is), or leave net= out" }
end

-- Hooks later modules add to launch: option name -> {check=, argv=fn(opts, ctx)}.
M.extensions = {}

function M.add_option(name, spec, build)
  launch_opts[name] = spec
  M.extensions[#M.extensions + 1] = { name = name, build = build }
end

local replay = require "qemu.vm.replay"

local function build_argv(opts, ctx)
  local fname = "qemu.launch"
  local binary = require "qemu.util.binary"
  local argv = { binary.default(opts.binary) }
  ctx.binary = argv[1] -- plugins built here are checked against its API
  local function add(...)
    for _, a in ipairs { ... } do argv[#argv + 1] = tostring(a) end
  end
  add("-nodefaults", "-display", "none")
  -- A QEMU outside the system's (an extracted package, a prefix install)
  -- gets its own firmware and modules, not the system QEMU's.
  local path = binary.resolve(argv[1])
  local tree = path and binary.tree(path)
  if tree then
    for _, d in ipairs(tree.data) do add("-L", d) end
    if tree.modules then ctx.env = { QEMU_MODULE_DIR = tree.modules } end
  end
  if opts.name then add("-name", qesc(opts.name)) end
  local accel = opts.accel or "auto"
  if accel == "auto" then
    -- Plugins and icount exist only under TCG: ask for them, get TCG.
    accel = (opts.plugins or opts.icount ~= nil or opts.record or opts.replay) and "tcg" or host.accel()
  end
  ctx.accel = accel
  add("-accel", accel)
  if opts.machine then add("-machine", opts.machine) end
  if opts.cpu then add("-cpu", opts.cpu) end
  if opts.smp then add("-smp", opts.smp) end
  if ctx.restore then
    ram.restore_args(ctx.restore.ram, ctx.restore.version, ctx, add, opts.memory)
  else
    ram.launch_args(opts, ctx, add)
  end
  local rr = (opts.record or opts.replay) and replay.plan(fname, opts, ctx, accel)
  if rr then
    add("-icount", icount_arg(fname, replay.icount(fname, opts), accel) .. replay.icount_suffix(rr))
  elseif opts.icount ~= nil then
    add("-icount", icount_arg(fname, opts.icount, accel))
  end
  if not opts.reboot then add("-no-reboot") end
  -- paused=true: the guest runs at vm:cont() (after a restore too), so a
  -- script can send console input first (exact, repeatable runs).
  if opts.paused then add("-S") end
  add("-chardev", "socket,id=qmp,fd=" .. MONITOR_FD, "-mon", "chardev=qmp,mode=control")
  if opts.console == false and type(opts.icount) == "table" and opts.icount.console ~= nil then
    check.bad(fname, "icount={console=...} is about console input: it needs the console (console=false given)")
  end
  if opts.console ~= false then
    -- The guest's ttyS0 on socketpair 2, connected before QEMU starts:
    -- nothing the kernel prints is lost.
    ctx.sockets = 2
    -- (A replay's console input is the log's: no gate.  Under record=
    -- the gate held the guest for good: console input is paced instead.)
    local gate = type(opts.icount) == "table" and opts.icount.console == "exact" and not opts.replay and
                 not opts.record and require("qemu.vm.gate").plan(fname, ctx, opts)
    add("-chardev", "socket,id=con,fd=" .. CONSOLE_FD .. (gate and (",logfile=" .. gate.tx) or ""),
        "-serial", "chardev:con")
    if gate then
      add("-chardev", "socket,id=gatemon,path=" .. gate.mon .. ",server=on,wait=off",
          "-mon", "chardev=gatemon,mode=control", "-plugin", gate.arg)
    end
  end
  if opts.kernel then
    if not readable(opts.kernel) then
      check.bad(fname, "kernel %s: no such file (or not readable)", opts.kernel)
    end
    add("-kernel", opts.kernel)
  end
  if opts.initrd then
    if not opts.kernel then check.bad(fname, "initrd given without a kernel") end
    if not readable(opts.initrd) then
      check.bad(fname, "initrd %s: no such file (or not readable)", opts.initrd)
    end
    add("-initrd", opts.initrd)
  end
  if opts.append then
    if not opts.kernel then check.bad(fname, "append given without a kernel") end
    local words = list_of_strings(fname, "append", opts.append)
    ctx.append = table.concat(words, " ")
  end
  if opts.kernel and opts.console ~= false and not (ctx.append or ""):find("%f[%w]console=") then
    -- The console is captured: point the kernel at it (visible in vm.argv).
    ctx.append = ctx.append and (ctx.append .. " console=ttyS0") or "console=ttyS0"
  end
  for _, ext in ipairs(M.extensions) do
    ext.build(opts, ctx, add)
  end
  if ctx.append then add("-append", ctx.append) end
  local devices = {}
  if opts.disks then
    for _, a in ipairs(disk_args(fname, opts.disks, rr, devices)) do add(a) end
  end
  if opts.net then
    if rr then
      -- the NIC's traffic in the log
      add("-nic", M.net_arg(fname, opts.net) .. ",id=qsnet0", "-object", "filter-replay,id=qsreplay0,netdev=qsnet0")
    else
      add("-nic", M.net_arg(fname, opts.net))
    end
  end
  if opts.loadvm then add("-loadvm", check_loadvm(fname, opts)) end
  if opts.plugins then require("qemu.plugin")._launch_args(fname, opts.plugins, ctx, add) end
  if opts.extra then
    for _, a in ipairs(list_of_strings(fname, "extra", opts.extra)) do add(a) end
  end
  for _, a in ipairs(devices) do add(a) end
  return argv
end

-- A launch in two halves: M.start spawns QEMU and returns at once (a
-- pending launch), M.finish waits for it to answer and makes the VM.  A
-- sweep starts the next run's VM while the current run goes on, so that
-- QEMU's own start-up overlaps the run.  pending:cancel() (also its
-- __gc/__close) stops a launch that is not finished.
local Pending = {}
Pending.__index = Pending

function Pending:cancel()
  if self.done then return end
  self.done = true
  self.p:close()
  replay.abandon(self.ctx)
end
Pending.__gc = Pending.cancel
Pending.__close = Pending.cancel

function M.start(opts)
  local fname = "qemu.launch"
  if opts == nil then opts = {} end
  check.options(fname, opts, launch_opts)
  local t0 = sys.now()
  local p, msg, code = proc.new("qshell")
  if not p then errors.from_code(fname, msg, code) end
  local ctx = { tmpdir = p:tmpdir(), sockets = 1, proc = p }
  local given = opts
  local rctx
  if opts.verify ~= nil and not opts.restore then
    p:close()
    check.bad(fname, "verify= checks a checkpoint: it goes with restore=")
  end
  if opts.restore then
    local ok, o, r = pcall(restore.prepare, opts, p)
    if not ok then
      p:close()
      error(o, 0)
    end
    opts, rctx = o, r
    ctx.restore = rctx
    ok, o = pcall(function()
      if opts.record or opts.replay then rctx.state = replay.state_for(fname, rctx, opts, p:tmpdir()) end
      return restore.incoming(rctx, p, opts)
    end)
    if not ok then
      p:close()
      error(o, 0)
    end
    opts.extra = o
  end
  local ok, argv = pcall(build_argv, opts, ctx)
  if not ok then
    p:close()
    replay.abandon(ctx)
    error(argv, 0)
  end
  for k, v in pairs(ctx.env or {}) do p:setenv(k, v) end
  local spawned, err, code = p:spawn(argv, ctx.sockets)
  if not spawned then
    p:close()
    replay.abandon(ctx)
    errors.from_code(fname, err, code, { overrides = { io = "LaunchFailed", notfound = "LaunchFailed" },
                                         hint = "is QEMU installed? (make deps) or set binary=" })
  end
  return setmetatable({ p = p, ctx = ctx, argv = argv, opts = opts, given = given, rctx = rctx, t0 = t0 }, Pending)
end

-- M.finish(pending) -> vm: QEMU answered on QMP (and, for a restore, the
-- state is loaded); raises as qemu.launch does when it did not.
function M.finish(pending)
  local fname = "qemu.launch"
  if pending.done then check.bad(fname, "this launch was finished or cancelled") end
  pending.done = true
  local p, ctx, argv, opts, given, rctx, t0 = pending.p, pending.ctx, pending.argv, pending.opts, pending.given,
                                              pending.rctx, pending.t0
  local q = qmpc.open_fd(p:take_socket(1))
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local greeting, hmsg, hcode = q:handshake(timeout)
  if not greeting then
    local st = p:poll() or p:wait(1)
    local log = p:log_tail(2000):gsub("%s+$", "")
    local lua_failed = require("qemu.plugin.lua").failure(ctx.plugins) -- (its file is in the temp dir)
    q:close()
    p:close()
    replay.abandon(ctx)
    if rctx then restore.launch_failed(rctx, argv[1], log) end
    require("qemu.plugin.lua").launch_failed(lua_failed, fname, log)
    local desc
    if st then
      desc = string.format("QEMU %s during start-up", st.desc)
    elseif hcode == "timeout" then
      desc = string.format("QEMU did not answer on QMP within %g s", timeout)
    else
      desc = hmsg
    end
    if st and opts.net then check_user_net(fname, argv[1]) end
    if log ~= "" then desc = desc .. ": " .. log:gsub("\n", " | ") end
    errors.from_code(fname, desc, hcode, { overrides = { timeout = "LaunchFailed", closed = "LaunchFailed",
                                                         io = "LaunchFailed", protocol = "LaunchFailed" },
                                           exit = st, argv = argv,
                                           hint = require("qemu.plugin")._load_hint(log, argv[1])
                                                  or errors.hint_for(log) })
  end
  serial = serial + 1
  local v = greeting.QMP and greeting.QMP.version and greeting.QMP.version.qemu
  local vm = VM.new {
    _qmp = q, _proc = p, _clock = sys.now, _append = ctx.append,
    pid = p:pid(), argv = argv, log = p:logpath(), tmpdir = p:tmpdir(),
    name = opts.name or ("vm" .. serial), accel = ctx.accel,
    version = v and string.format("%d.%d.%d", v.major, v.minor, v.micro),
    options = opts, plugins = ctx.plugins, _plugin_log = ctx.plugin_log,
    ram = { size = ctx.ram.size, backing = ctx.ram.backing, path = ctx.ram.path, id = ctx.ram.id },
    _ramfd = ctx.ram.fd,
  }
  if ctx.sockets >= 2 then
    local Console = require "qemu.vm.console"
    vm.console = Console.new(vm, consolec.open(p:take_socket(2), t0))
    if ctx.gate then require("qemu.vm.gate").attach(vm, ctx.gate) end
  end
  if ctx.rr then replay.attach(vm, ctx) end
  for _, ext in ipairs(ctx.after or {}) do ext(vm, ctx) end
  live[vm] = serial
  if M.pin then pinned[vm] = true end
  vm:_on_close_do(function(v) pinned[v] = nil end)
  if rctx then
    -- The machine as restored (what a later checkpoint records).
    local o = {}
    for k, val in pairs(opts) do o[k] = val end
    o.extra = given.extra
    o.restore = given.restore
    vm.options = o
    local okr, err = pcall(restore.finish, vm, rctx, opts.timeout)
    if not okr then
      vm:close()
      replay.abandon(ctx)
      error(err, 0)
    end
  end
  return vm
end

---@api qemu.launch qemu.launch([options]) -> vm
--- Starts QEMU and returns the VM once QEMU answers on QMP.
--- Every option is optional, and an unknown option name is an error (which
--- names the option you probably meant, when one is close). The argv is built in full and kept
--- as `vm.argv`: what you read there is exactly what QEMU got. QEMU always
--- gets `-nodefaults -display none` (no default NIC, VGA, serial or monitor:
--- add devices with `extra=`), and `-no-reboot` unless `reboot=true`. Its
--- monitor is a socketpair inherited by QEMU (no socket file), and its
--- serial port is captured from the first instruction on (`vm.console`),
--- so nothing the kernel prints is lost. When the console is captured and
--- `append=` has no `console=`, `console=ttyS0` is added to it.
---
--- A QEMU outside the system's place (a package extracted under a
--- directory, a `make install` prefix, a build tree) gets `-L` for its own
--- firmware and `QEMU_MODULE_DIR` for its modules, not the system QEMU's.
---
--- For low-noise measurements add `nokaslr` to `append=` and
--- `icount={shift=..., sleep=false}`. The user network (`net=`) is slirp:
--- no root, no bridge; the guest gets 10.0.2.15 by DHCP, the host is
--- 10.0.2.2, DNS 10.0.2.3; it is one `-nic user,...` word in `vm.argv`
--- (`net={restrict=true, hostname="exp1", forward={{host=8080, guest=80}}}`
--- is `-nic user,model=virtio-net-pci,restrict=on,hostname=exp1,hostfwd=tcp:127.0.0.1:8080-:80`),
--- and needs a QEMU built with libslirp (Debian's 7.2 and 10.0 are). The
--- forwards listen as soon as QEMU starts (`vm:hmp("info usernet")` lists
--- them).
---
---     local vm <close> = qemu.launch { memory = "1G", smp = 2,
---                                      disks = { "sys.qcow2", { file = "data.raw", interface = "virtio" } } }
---     print(table.concat(vm.argv, " "))
---     local web <close> = qemu.launch { disks = { "debian.qcow2" }, memory = "1G",
---                                       net = { forward = { { host = 2222, guest = 22 } } } }
---
---@param options? table  the machine and how to start it; every key is optional:
---   `binary=` (string): the QEMU binary, a path or a name in PATH (default `$QSHELL_QEMU`, else "qemu-system-x86_64").
---   `accel=` (string): "auto" (default), "tcg", "kvm", or another `-accel` value. "auto" is "tcg" when `plugins=` or
---   `icount=` is given, else "kvm" when /dev/kvm is usable and the CPU shows vmx/svm, else "tcg"; `vm.accel` says which.
---   `machine=`, `cpu=` (string): `-machine`, `-cpu` (default: QEMU's).
---   `smp=` (integer >= 1 or string): the number of vCPUs, or an `-smp` string.
---   `memory=` (string or number): guest RAM in QEMU's `-m` syntax, "512M", "1G", or a number of MiB (default
---   QEMU's 128 MiB). A plain size on a pc, q35 or microvm machine puts the RAM in a memfd this shell holds
---   (`vm.ram.backing` "memfd": `vm:checkpoint` then stores it as a file its restores share); RAM options in
---   `extra=` or `machine=`, or a `memory=` that is not a plain size, leave the RAM to QEMU ("qemu").
---   `kernel=`, `initrd=` (string): `-kernel`, `-initrd`; the files must be readable; `initrd=` needs `kernel=`.
---   `append=` (string or list of strings): the kernel command line (a list is joined with spaces); needs `kernel=`.
---   `disks=` (list): each a path, or a table `{file=, interface="ide", format=, readonly=false, snapshot=false,
---   cache=, node=}`. The file must exist. `interface` is "ide" (default: disks[1] is hda, disks[2] hdb, ... as
---   `-hda`/`-hdb`), "virtio", "scsi", "nvme" or "none"; `format` is read from the image's first bytes (qcow2,
---   raw, vmdk, ...) unless given; `readonly=true` needs "virtio" or "scsi" (QEMU's IDE disks cannot be
---   read-only); `snapshot=true` sends the writes to a temporary file QEMU throws away; `cache` is QEMU's
---   `cache=` mode; `node` is the block node name (default "disk0", "disk1", ... in order).
---   `console=` (boolean, default true): capture the serial console (ttyS0) as `vm.console`; false: no serial port.
---   `icount=` (table, or just the shift): `{shift="auto"|0..10 (default "auto"), sleep=false, align=false}`, as
---   `-icount shift=N,sleep=off`; TCG only. Guest time is instructions x 2^shift ns, and with `sleep=false` idle
---   time is skipped (a guest `sleep 5` takes a fraction of a second): exact, repeatable instruction counts, and
---   the cure for RCU stall warnings under heavy instrumentation. `console="exact"`: console input reaches the
---   guest at points fixed by the guest (the `gate` plugin types it at the guest's idle points, and holds the
---   guest while it waits at its prompt), so commands typed with `console:run` count the same whenever they are
---   typed; one vCPU; see README's "Exact counts".
---   `reboot=` (boolean, default false): let the guest reboot; by default (`-no-reboot`) a guest reboot or
---   `panic=-1` ends QEMU.
---   `loadvm=` (string): start from this internal snapshot (`-loadvm`); the tag is checked first in the first
---   writable qcow2 disk (which must not be `snapshot=true`).
---   `net=` (true or table): one NIC on QEMU's user-mode network. `true` (or `{}`) is
---   `-nic user,model=virtio-net-pci`; the table `{model="virtio-net-pci", forward={...}, restrict=false,
---   hostname=}`: `model` any NIC device name of letters, digits, `-` and `_` ("e1000", "e1000e", "rtl8139", ...);
---   `restrict=true` lets the guest reach
---   nothing outside (forwards still work); `hostname` the name DHCP hands out; `forward` a list of
---   `{host=, guest=, proto="tcp"|"udp" (default "tcp"), address="127.0.0.1"}`, ports 1-65535, the host side
---   listening on 127.0.0.1 unless `address` says otherwise ("0.0.0.0": every interface); a host port
---   forwarded twice is an error.
---   `paused=` (boolean, default false): start with the guest stopped (`-S`, also after `restore=`); it runs at
---   `vm:cont()`, so a script can type console input first (exact, repeatable runs).
---   `record=` (string): record the run into this new directory (refused if it exists): QEMU's record/replay
---   (`-icount ...,rr=record,rrfile=DIR/replay.bin`), every disk under a `blkreplay` drive with its writes in a
---   throw-away layer (a replay must start from the same bytes), the NIC through `filter-replay`, and
---   `DIR/recording.json` naming the QEMU, the machine, the checkpoint and each disk (its `status` is "complete"
---   once QEMU has ended cleanly: QEMU writes its log's header last). `icount=` defaults to `{shift=2}` and
---   its `sleep` to true (with `sleep=false` the guest loses recorded disk interrupts; refused with disks).
---   Console input is typed a byte at a time, the next once the guest has echoed (QEMU hands recorded input to
---   the UART late: faster typing overflows its FIFO; `icount.console="exact"` is not taken with `record=`), and `console:run`'s markers are numbered. One vCPU, TCG; `vm.recording` is the
---   directory. From boot or with `restore=`.
---   `replay=` (string): replay a recording made with `record=`: the same options (the QEMU version, machine,
---   `restore=`, `icount` shift and disks are checked against `recording.json` first, and a difference, or a
---   recording that did not end cleanly, is refused before QEMU starts). The guest runs exactly as recorded:
---   its console output, ROI events and `insn` counts are the recorded ones, and a script waits on them as it
---   did; what the script sends to the console is dropped (the recorded input is replayed). `vm.replaying` is
---   true.
---   `plugins=` (list): TCG plugins, each `{name=, args=}` (a plugin of this project, e.g. "insn", "hotblocks")
---   or `{path=, args=}` (a .so of your own); `args` the plugin's arguments (table, written with QEMU's escaping:
---   see `qemu.plugin.arg`). Each .so is checked first (it exists, is a shared object with QEMU's plugin
---   symbols, its API version fits this QEMU). Plugins need TCG (refused under kvm: they would load there but
---   see nothing). The project's plugins get
---   an `out=` file in the VM's temp dir unless given one (`vm:plugin_result`); the plugins' text output goes
---   to a file of its own (`vm:plugin_log`); the first of insn/hotblocks reports the guest's ROI markers to
---   `vm:wait_roi` (unless one has `events=`). `vm.plugins` lists them.
---   `restore=` (string): start from the checkpoint in this directory (`vm:checkpoint`): its files are checked
---   first (sizes, and the digest of a file whose mtime changed), the disks are fresh overlays over its images
---   in the VM's temp dir, the RAM file is mapped copy-on-write; the guest runs about 60 ms after the launch
---   began. The machine comes from the checkpoint: `memory`, `smp`, `machine`, `cpu`, `kernel`, `initrd`,
---   `append`, `console`, `accel` may only repeat its values (a kernel or initrd with the same bytes as the
---   checkpoint's copy is the same; an error names any difference), `disks=` and `loadvm=` are refused, and
---   `net=` may change the forwards, `restrict` and `hostname` (the host side of the user network is not in the
---   saved state, so runs side by side from one checkpoint can each forward a host port of their own) but not
---   the NIC model, nor leave the NIC out (`net=` left out: the recorded one).
---   `plugins`, `icount`, `name`, `timeout`, `reboot`, `extra`, `paused`, `binary`, `record` and `replay` are free. The restore runs
---   `binary=`, else the default QEMU: the binary the checkpoint was made with is only recorded. The VM gets the
---   recorded machine type, so a checkpoint made on QEMU 7.2 restores on 10.0; a QEMU without that type is
---   refused, with both versions and the type named.
---   `verify=` (boolean, default false): with `restore=`, check every file's digest first, not only changed ones.
---   `extra=` (list of strings): raw argv words appended at the end.
---   `name=` (string): `-name`, and `vm.name` (default "vm1", "vm2", ... in the order of this shell's VMs).
---   `timeout=` (number > 0): seconds to wait for QMP to answer (default 30); with `restore=`, also for the
---   state to load (default 600).
---@return qemu.VM vm  the running VM (paused with `paused=true`); also `vm.restored_from` after a restore
---@error BadArgument  an unknown option or a wrong type; a missing kernel, initrd or disk file; `initrd=` or
---   `append=` without `kernel=`; a read-only IDE disk; `icount=` or `plugins=` under kvm; a bad `net=`; `verify=`
---   without `restore=`; a `loadvm=` tag that is not valid, or no writable qcow2 disk to hold it; with `restore=`:
---   `disks=`, `loadvm=`, a machine option that differs from the checkpoint's, another NIC model, a machine type
---   this QEMU lacks; `record=` with `replay=`, or either with `smp` > 1, kvm, a scsi disk, `-snapshot` or
---   `-rtc base=localtime` in `extra=`; a `replay=` that is no recording, did not end cleanly, or was recorded
---   with another QEMU, machine, checkpoint or disk
---@error FileExists  `record=` names a path that exists
---@error LaunchFailed  QEMU could not be started, exited before QMP answered, or did not answer within `timeout`:
---   the message has its exit status and the end of its log, `e.exit` and `e.argv` are set, and `hint` names the
---   fix for a known trap (KVM not usable, a plugin QEMU refused, a QEMU without user networking for `net=`)
---@error SnapshotNotFound  the `loadvm=` tag is not in the disk
---@error PluginError  a plugin named by `name=` is not built, or a `path=` is not a plugin QEMU can load
---@error NotACheckpoint  `restore=` names a directory that is not a checkpoint, or whose manifest asks for what qshell never writes into one
---@error CheckpointCorrupt  a checkpoint file's size or digest does not match its manifest
---@error CheckpointFailed  QEMU did not load the checkpoint's state
---@error Timeout  the checkpoint's state was not loaded within `timeout` (default 600 s)
---@error Interrupted  Ctrl-C while QEMU was starting
---@error IOError  a temp dir, socket or file operation failed
function M.launch(opts)
  return M.finish(M.start(opts))
end

local attach_opts = { timeout = check.nonneg, name = "string" }

---@api qemu.attach qemu.attach(socket [, {timeout=0, name=}]) -> vm
--- A VM object for a QEMU started elsewhere, through its QMP socket.
--- Start that QEMU with `-qmp unix:SOCKET,server=on,wait=off`. It is not
--- this shell's process: `vm.pid`, `vm.argv` and `vm.console` are nil and
--- `vm.socket` is the socket's path; `vm:kill()`, `vm:wait()` and
--- `vm:checkpoint()` are errors; `vm:quit()` asks QEMU to quit and waits for
--- the monitor to close; `vm:close()` only disconnects (QEMU goes on).
--- Every QMP, HMP, event, run-state and snapshot method works as on a
--- launched VM.
---
---     local vm = qemu.attach("/tmp/qmp.sock")
---     print(vm:status())
---
---@param socket string  the path of QEMU's QMP unix socket
---@param options? table  `timeout=` (number >= 0): seconds to keep trying while the socket does not exist yet or
---   refuses connections (default 0: one try), and to wait for QEMU's greeting (default 30);
---   `name=` (string): `vm.name` (default "vm1", "vm2", ... in the order of this shell's VMs)
---@return qemu.VM vm  the VM, connected
---@error BadArgument  socket is not a string, an unknown option or a wrong type
---@error ConnectFailed  no QMP server at the socket (no such socket, connection refused), or what answered is not QMP
---@error Timeout  connected, but QEMU sent no greeting within the timeout
---@error Interrupted  Ctrl-C while connecting
---@error IOError  the socket cannot be used (a path too long, permission denied, ...)
function M.attach(path, opts)
  local fname = "qemu.attach"
  check.arg(fname, 1, path, "string")
  opts = check.options(fname, opts, attach_opts, 2)
  local q, msg, code = qmpc.connect(path, opts.timeout or 0)
  if not q then
    errors.from_code(fname, msg, code, { overrides = { closed = "ConnectFailed" },
                                         hint = "start QEMU with -qmp unix:" .. path .. ",server=on,wait=off" })
  end
  local greeting, hmsg, hcode = q:handshake(opts.timeout or DEFAULT_TIMEOUT)
  if not greeting then
    q:close()
    errors.from_code(fname, hmsg, hcode, { overrides = { closed = "ConnectFailed", io = "ConnectFailed",
                                                         protocol = "ConnectFailed" } })
  end
  serial = serial + 1
  local v = greeting.QMP and greeting.QMP.version and greeting.QMP.version.qemu
  local vm = VM.new {
    _qmp = q, _clock = sys.now, argv = nil, socket = path,
    name = opts.name or ("vm" .. serial),
    version = v and string.format("%d.%d.%d", v.major, v.minor, v.micro),
  }
  live[vm] = serial
  if M.pin then pinned[vm] = true end
  vm:_on_close_do(function(v) pinned[v] = nil end)
  return vm
end

return M
