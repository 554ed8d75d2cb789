-- qemu.vm.replay: qemu.launch{record=DIR} and qemu.launch{replay=DIR}, on
-- QEMU's record/replay (`-icount ...,rr=record|replay,rrfile=`).
--
-- A recording is a directory: QEMU's log (replay.bin) and recording.json,
-- what the run was launched with (the QEMU version, the machine, the
-- checkpoint it restored, each disk's identity), written when the
-- recording starts and completed when QEMU has ended cleanly (QEMU writes
-- the log's header last: a run that did not end is not replayable).  A
-- replay is refused before QEMU starts when the QEMU, the machine or a
-- disk is not the recorded one: the log is only meaningful from the same
-- start.
--
-- Under both, every disk sits under QEMU's blkreplay driver (its reads
-- and writes complete at recorded instruction counts) with its writes in a
-- throw-away layer (a replay must find the bytes the recording found), the
-- NIC's traffic goes through a filter-replay object, and console:run's
-- markers are numbered (the replayed guest prints the recorded ones).
local errors = require "qemu.errors"
local check = require "qemu.util.check"
local fs = require "qemu.util.fs"
local json = require "qshell.json"
local sys = require "qshell.os"

local M = {}

M.LOG = "replay.bin"
M.MANIFEST = "recording.json"
M.FORMAT = 1
M.DEFAULT_SHIFT = 2

-- The launch options that make the machine: a replay must repeat them.
local MACHINE = { "memory", "smp", "machine", "cpu", "append", "console", "reboot" }

local function shown(v)
  if v == nil or v == json.null then return "(unset)" end
  if type(v) == "table" then return json.encode(v) end
  return tostring(v)
end

local function smp_of(v)
  return v and tonumber(tostring(v):match("^%s*(%d+)")) or 1
end

-- A file's identity: its real path, size and mtime.
local function ident(path)
  local st = fs.stat(path)
  if not st then return nil end
  return { path = sys.realpath(path) or fs.abspath(path), size = st.size, mtime = st.mtime }
end

-- A disk's identity.  A qcow2 overlay qshell made fresh for this launch
-- (a restore's, qemu.guest.overlay's in a temp dir) is new each time:
-- what it starts from is its backing file.
local function disk_ident(d)
  local id = ident(d.file)
  local info = require("qemu.disk").info(d.file)
  id.format = info.format
  id.interface = d.interface or "ide"
  if info.backing then
    local b = info.backing
    if b:sub(1, 1) ~= "/" then b = (d.file:match("^(.*)/[^/]*$") or ".") .. "/" .. b end
    id.backing = ident(b)
  end
  return id
end

local function same_ident(a, b)
  return a and b and a.path == b.path and a.size == b.size and a.mtime == b.mtime
end

-- The checks every record/replay launch needs, whatever the machine.
local function check_machine(fname, what, opts, accel)
  if accel ~= "tcg" then
    check.bad(fname, "%s needs accel=\"tcg\" (QEMU records and replays only under TCG; this VM would run under %s)",
              what, accel)
  end
  if smp_of(opts.smp) > 1 then
    check.bad(fname, "%s runs one vCPU (smp=%s): QEMU's record/replay needs icount, which runs one vCPU thread " ..
                     "(\"Record/replay feature is not supported for 'smp'\")", what, tostring(opts.smp))
  end
  for _, a in ipairs(opts.extra or {}) do
    local why = (a == "-snapshot" and "-snapshot") or (a:find("base=localtime", 1, true) and "-rtc base=localtime")
                or (a:match("^%-icount") and "a second -icount")
                or ((a:match("^rr=") or a:find(",rr=", 1, true)) and a)
    if why then
      check.bad(fname, "%s: extra= has %s, which QEMU's record/replay refuses or which would fight it", what, why)
    end
  end
  for i, d in ipairs(opts.disks or {}) do
    if type(d) == "table" and d.snapshot == false then
      check.bad(fname, "%s: disks[%d] has snapshot=false, but a recorded run's disk writes go to a throw-away " ..
                       "layer (a replay must start from the bytes the recording started from)", what, i)
    end
  end
end

-- The version the launch will run, as recording.json names it.
local function qemu_version(opts)
  return require("qemu.util.binary").version(opts.binary)
end

local function machine_of(opts)
  local m = {}
  for _, k in ipairs(MACHINE) do
    local v = opts[k]
    if k == "append" and type(v) == "table" then v = table.concat(v, " ") end
    if v ~= nil then m[k] = v end
  end
  for _, k in ipairs { "kernel", "initrd" } do
    if opts[k] then m[k] = ident(opts[k]) end
  end
  if opts.net then m.net = type(opts.net) == "table" and opts.net.model or "virtio-net-pci" end
  local ic = opts.icount
  if type(ic) ~= "table" then ic = { shift = ic } end
  m.icount_shift = ic.shift or M.DEFAULT_SHIFT
  return m
end

local function read_manifest(fname, dir)
  local text = fs.read(dir .. "/" .. M.MANIFEST)
  if not text then
    if not fs.is_dir(dir) then
      errors.raise { class = "BadArgument", command = fname, desc = "replay: no recording " .. dir,
                     hint = "record one with qemu.launch{record=\"" .. dir .. "\", ...}" }
    end
    errors.raise { class = "BadArgument", command = fname,
                   desc = string.format("replay: %s has no %s: it is not a recording", dir, M.MANIFEST) }
  end
  local ok, m = pcall(json.decode, text)
  if not ok or type(m) ~= "table" or m.format ~= M.FORMAT then
    errors.raise { class = "BadArgument", command = fname,
                   desc = string.format("replay: %s/%s is not a recording's manifest (format %d)", dir, M.MANIFEST,
                                        M.FORMAT) }
  end
  return m
end

M.read = read_manifest

-- The recording a replay= launch names, checked against what this launch
-- will run.  Raises before anything starts.
local function check_replay(fname, dir, opts, rec, v)
  local m = read_manifest(fname, dir)
  local function refuse(fmt, ...)
    errors.raise { class = "BadArgument", command = fname,
                   desc = string.format("replay %s: " .. fmt, dir, ...),
                   hint = "a replay repeats the recorded launch: the same QEMU, machine, checkpoint and disks" }
  end
  if m.status ~= "complete" then
    refuse("the recorded run did not end cleanly (%s), so QEMU never finished its log: it cannot be replayed",
           shown(m.exit and m.exit.desc or m.status))
  end
  if not fs.is_file(dir .. "/" .. M.LOG) then refuse("%s is missing", M.LOG) end
  if m.qemu ~= v.text then
    refuse("it was recorded with QEMU %s, this launch runs %s (%s); a replay log is only valid for the QEMU " ..
           "that wrote it (binary=)", shown(m.qemu), v.text, v.path)
  end
  local keys = {}
  for k in pairs(m.machine or {}) do keys[k] = true end
  for k in pairs(rec.machine) do keys[k] = true end
  for k in pairs(keys) do
    local a, b = (m.machine or {})[k], rec.machine[k]
    local same = (type(a) == "table" and type(b) == "table") and same_ident(a, b) or a == b
    if not same then
      refuse("%s=%s differs from the recorded %s", k, shown(type(b) == "table" and b.path or b),
             shown(type(a) == "table" and a.path or a))
    end
  end
  if (m.restore and m.restore.path) ~= (rec.restore and rec.restore.path)
     or (m.restore and not same_ident(m.restore.manifest, rec.restore.manifest)) then
    refuse("restore=%s, the recording restored %s", shown(rec.restore and rec.restore.path),
           shown(m.restore and m.restore.path))
  end
  local md = m.disks or {}
  if #md ~= #rec.disks then refuse("%d disks, the recording had %d", #rec.disks, #md) end
  for i, d in ipairs(rec.disks) do
    local r = md[i]
    if d.interface ~= r.interface or d.format ~= r.format then
      refuse("disks[%d] is a %s %s disk, the recording's was a %s %s disk", i, d.format, d.interface, r.format,
             r.interface)
    end
    local same = (d.path == r.path and d.size == r.size and d.mtime == r.mtime)
                 -- a fresh overlay made anew over the same base
                 or (d.path ~= r.path and d.size == r.size and same_ident(d.backing, r.backing))
    if not same then
      refuse("disks[%d] %s is not the disk it recorded (%s, %s bytes%s): the guest would read other bytes", i,
             d.path, r.path, shown(r.size), r.backing and (", over " .. r.backing.path) or "")
    end
  end
  return m
end

-- At build_argv, when opts.record or opts.replay is given: the checks, the
-- recording's directory, and ctx.rr (what the argv needs).
function M.plan(fname, opts, ctx, accel)
  if opts.record and opts.replay then check.bad(fname, "record= and replay= cannot be combined") end
  local mode = opts.record and "record" or "replay"
  local dir = opts.record or opts.replay
  if dir == "" then check.bad(fname, "%s= needs a path", mode) end
  check_machine(fname, mode .. "=", opts, accel)
  local v = qemu_version(opts)
  local rec = { machine = machine_of(opts), disks = {} }
  if ctx.restore then
    local real = sys.realpath(ctx.restore.dir) or fs.abspath(ctx.restore.dir)
    rec.restore = { path = real, manifest = ident(real .. "/manifest.json") }
    rec.machine.kernel, rec.machine.initrd = nil, nil -- the checkpoint's own copies, checked by restore
  end
  for i, d in ipairs(opts.disks or {}) do
    if type(d) == "string" then d = { file = d } end
    if type(d) == "table" and d.file and fs.exists(d.file) then rec.disks[i] = disk_ident(d) end
  end
  if mode == "replay" then
    check_replay(fname, dir, opts, rec, v)
  else
    if fs.exists(dir) then
      errors.raise { class = "FileExists", command = fname, desc = "record: " .. dir .. " exists",
                     hint = "a recording is never overwritten: remove it, or record to a new path" }
    end
    local parent = dir:match("^(.*)/[^/]+/*$")
    if parent and parent ~= "" and not fs.is_dir(parent) then
      check.bad(fname, "record: %s is not a directory (the recording %s goes in it)", parent, dir)
    end
    local ok, msg, code = sys.mkdir(dir)
    if not ok then errors.from_code(fname, "record: cannot make " .. dir .. ": " .. tostring(msg), code) end
    local m = { format = M.FORMAT, status = "recording", qemu = v.text, binary = v.path, package = v.package,
                machine = rec.machine, restore = rec.restore, disks = rec.disks, started = os.time(),
                log = M.LOG }
    fs.write(dir .. "/" .. M.MANIFEST, json.encode(m, { pretty = true }) .. "\n", fname)
    ctx.rr_made = dir
  end
  local real = sys.realpath(dir) or fs.abspath(dir)
  ctx.rr = { mode = mode, dir = real, log = real .. "/" .. M.LOG }
  return ctx.rr
end

-- The icount options of a record/replay launch: shift 2 and sleep=on unless told
-- (QEMU's default; with sleep=off the guest's clock jumps over the time a
-- recorded disk request takes, and the guest loses the disk's interrupts:
-- "ata1: lost interrupt"), so sleep=false is refused with disks.
function M.icount(fname, opts)
  local ic = opts.icount
  if type(ic) ~= "table" then ic = { shift = ic } end
  local out = {}
  for k, v in pairs(ic) do out[k] = v end
  if out.sleep == nil then out.sleep = true end
  -- (QEMU's own examples use shift=auto; here a guest restored under it
  -- stopped answering its console while recording: 2 is the default.)
  if out.shift == nil then out.shift = M.DEFAULT_SHIFT end
  if out.sleep == false and opts.disks and #opts.disks > 0 then
    check.bad(fname, "record/replay with disks needs icount.sleep=true (the default here): with sleep=false the " ..
                     "guest's clock runs past each recorded disk request and the guest loses its interrupts")
  end
  return out
end

-- The state a recorded or replayed run restores: the checkpoint's, with
-- QEMU's instruction counter moved into its clock bias (a copy in the
-- VM's temporary directory; the checkpoint is left as it is).
--
-- QEMU counts a recording's instructions from the counter's value when
-- recording starts, 0, and writes the jump to the restored count as one
-- run of instructions, at the first clock read after the state is loaded:
--   * as an int: a checkpoint past 2^31 instructions aborts the recording
--     ("replay_advance_current_icount: Assertion `diff >= 0' failed");
--   * behind the clock reads QEMU's main loop made while starting (as many
--     as host timing gave): a replay that loads the state before it has
--     read them all takes the jump for instructions to run and aborts
--     ("replay_next_event_is: Assertion ... failed").
-- With the counter 0 and the bias grown by its nanoseconds (count << shift)
-- the guest's clock and time stamp counter read as before; only the raw
-- counter, which record/replay alone uses, restarts.
--
-- The counter is in the "timer" section's "timer/icount" subsection
-- (QEMU 7.2-10.0): section start, id, "timer", instance, version, three
-- int64, then subsection, name, version 1, bias, count (big-endian).
local ICOUNT_SUB = "\5\12timer/icount\0\0\0\1"
local CHUNK = 1 << 20

local function find_icount(f, path)
  local found, pos, tail = {}, 0, ""
  while true do
    local b = f:read(CHUNK)
    if not b then break end
    local buf = tail .. b
    local base = pos - #tail
    local i = 1
    while true do
      local at = buf:find(ICOUNT_SUB, i, true)
      if not at then break end
      if at > 43 and at + #ICOUNT_SUB + 15 <= #buf then
        if buf:byte(at - 43) == 4 and buf:sub(at - 38, at - 33) == "\5timer" then
          found[base + at - 1] = true
        end
      end
      i = at + 1
    end
    pos = pos + #b
    tail = buf:sub(-80)
  end
  local offs = {}
  for o in pairs(found) do offs[#offs + 1] = o end
  if #offs > 1 then
    errors.raise { class = "CheckpointFailed", command = "qemu.launch",
                   desc = path .. ": more than one instruction counter in the state; cannot restart it for record/replay" }
  end
  return offs[1]
end

function M.state_for(fname, rctx, opts, dir)
  local what = fname
  local shift = M.icount(fname, opts).shift
  if math.type(shift) ~= "integer" then
    check.bad(fname, "record/replay from a checkpoint needs a whole icount shift (the default is " ..
                     M.DEFAULT_SHIFT .. "), not " .. tostring(shift))
  end
  local path = rctx.state
  local f, err = io.open(path, "rb")
  if not f then errors.raise { class = "IOError", command = what, desc = "cannot read " .. tostring(err) } end
  local at = find_icount(f, path)
  if not at then
    -- saved without icount: the counter starts at 0 anyway
    f:close()
    return path
  end
  f:seek("set", at + #ICOUNT_SUB)
  local bias, count = string.unpack(">i8>i8", f:read(16))
  local out = dir .. "/state.rr"
  local o, oerr = io.open(out, "wb")
  if not o then
    f:close()
    errors.raise { class = "IOError", command = what, desc = "cannot write " .. tostring(oerr) }
  end
  f:seek("set", 0)
  local left = at + #ICOUNT_SUB
  while left > 0 do
    local b = f:read(math.min(left, CHUNK))
    o:write(b)
    left = left - #b
  end
  o:write(string.pack(">i8>i8", bias + (count << shift), 0))
  f:seek("cur", 16)
  while true do
    local b = f:read(CHUNK)
    if not b then break end
    o:write(b)
  end
  f:close()
  local ok, werr = o:close()
  if not ok then errors.raise { class = "IOError", command = what, desc = "cannot write " .. out .. ": " .. tostring(werr) } end
  return out
end

-- The -icount word's record/replay part.
function M.icount_suffix(rr)
  return string.format(",rr=%s,rrfile=%s", rr.mode, rr.log)
end

-- A launch that did not get as far as a VM: the recording it made is
-- removed (a retry may record to the same path).
function M.abandon(ctx)
  if ctx.rr_made then
    M.remove(ctx.rr_made)
    ctx.rr_made = nil
  end
end

-- A recording's directory removed: its two files, then the directory (a
-- file of someone else's in it keeps it).
function M.remove(dir)
  os.remove(dir .. "/" .. M.LOG)
  os.remove(dir .. "/" .. M.MANIFEST)
  os.remove(dir)
end

-- The VM of a record/replay launch: vm.recording is the directory, and a
-- recording's manifest is completed once QEMU has ended (at vm:quit(), or
-- whichever call learns it first).
function M.attach(vm, ctx)
  local rr = ctx.rr
  vm.recording = rr.dir
  vm.replaying = rr.mode == "replay"
  if vm.console then
    vm.console._numbered = true
    vm.console._paced = rr.mode == "record"
  end
  if rr.mode ~= "record" then return end
  vm:_on_exit_do(function(v)
    local path = rr.dir .. "/" .. M.MANIFEST
    local ok, m = pcall(json.decode, fs.read(path) or "")
    if not ok or type(m) ~= "table" then return end
    local st = v:_exited()
    m.exit = st and { code = st.code, signal = st.signal, desc = st.desc } or nil
    -- QEMU ended by itself or on quit (code 0): it wrote the log's end and
    -- header.  Killed, it did not.
    m.status = (st and st.code == 0) and "complete" or "incomplete"
    -- where the recorded run's vCPU stopped, before its quit (query-replay)
    m.icount_end = v._rr_icount_end
    m.finished = os.time()
    local lst = fs.stat(rr.log)
    m.log_bytes = lst and lst.size or 0
    fs.write(path, json.encode(m, { pretty = true }) .. "\n", "qemu.launch")
  end)
end

-- At vm:quit() of a record/replay VM, before QMP quit.  A recording: the
-- vCPU stopped first (QEMU logs a quit when it is asked, and the vCPU runs
-- on until the main loop stops it; a replay stops at the logged quit after
-- a host-timed part of those instructions), and the count it stopped at
-- kept for the manifest.  A replay: up to `grace` seconds to run on to the
-- recording's end, where the recorded quit is logged and QEMU ends by
-- itself.  Returns QEMU's exit status if it ended, and for a replay that
-- did not, the error vm:quit raises once QEMU is gone.
function M.quitting(vm, proc, grace)
  -- (through vm:qmp: an exact console's held guest is let go before stop)
  local function icount()
    local ok, r = pcall(vm.qmp, vm, "query-replay", nil, { timeout = 5 })
    return ok and type(r) == "table" and r.icount or nil
  end
  if not vm.replaying then
    pcall(vm.qmp, vm, "stop", nil, { timeout = math.min(grace, 5) })
    vm._rr_icount_end = icount()
    return nil
  end
  local st = proc:wait(grace)
  if st then return st end
  local at = icount()
  local ok, m = pcall(read_manifest, "vm:quit", vm.recording)
  local want = ok and m.icount_end
  return nil, {
    class = "Timeout", command = "vm:quit",
    desc = string.format("the replay of %s did not reach the recording's end in %g s (at instruction %s%s): " ..
                         "what it counted falls short of the recorded run", vm.recording, grace,
                         tostring(at or "?"),
                         want and (" of " .. tostring(want)) or ""),
    hint = "give it longer with vm:quit{timeout=...}; to end a replay early, vm:kill()",
  }
end

-- A recording's size on disk (the log and the manifest), for sweep rows.
function M.size(dir)
  local n = 0
  for _, f in ipairs { M.LOG, M.MANIFEST } do
    local st = fs.stat(dir .. "/" .. f)
    n = n + (st and st.size or 0)
  end
  return n
end

return M
