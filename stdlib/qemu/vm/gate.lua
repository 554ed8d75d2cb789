-- qemu.vm.gate: console input that reaches the guest at points fixed by
-- the guest, for icount={..., console="exact"} (plugins/gate.c).
--
-- The plugin types the console's input itself, one byte at each of the
-- guest's HLT instructions (its idle loop), and holds the guest at an HLT
-- while it waits for input and qshell has none: after a command's end
-- marker (console:run arms it), and from a restore.  qshell talks to it
-- through a FIFO of frames (a type byte, a 32-bit length, the payload):
--   D  bytes to type        A  a pattern: hold once the guest prints it
--   R  hold no more (the host now waits for something else of the guest)
-- What the guest prints reaches the plugin through the chardev's logfile,
-- written as the guest prints, so a marker is there before its next HLT.
local errors = require "qemu.errors"
local sys = require "qshell.os"

local M = {}

-- At build_argv: the FIFO, qshell's console end for QEMU, the plugin's
-- argument.  ctx.gate is what attach() needs.
function M.plan(fname, ctx, opts)
  local smp = opts.smp and tonumber(tostring(opts.smp):match("^%s*(%d+)"))
  if smp and smp > 1 then
    require("qemu.util.check").bad(fname, "icount={console=\"exact\"} needs one vCPU (smp=%s): under icount QEMU " ..
                                          "runs one vCPU thread, and the gate types at its idle points", tostring(opts.smp))
  end
  local so = require("qemu.plugin").find("gate")
  local fifo = ctx.tmpdir .. "/gate.fifo"
  local ok, msg, code = sys.mkfifo(fifo)
  if not ok then
    errors.from_code(fname, "cannot make the console gate's FIFO: " .. tostring(msg), code,
                     { overrides = { io = "LaunchFailed" } })
  end
  -- read-write: the FIFO always has a writer while qshell has the VM, and
  -- the plugin's end sees EOF once qshell is gone (the gate then opens)
  local fd
  fd, msg, code = sys.open(fifo, "rw")
  if not fd then
    errors.from_code(fname, "cannot open the console gate's FIFO: " .. tostring(msg), code,
                     { overrides = { io = "LaunchFailed" } })
  end
  ctx.proc:hold(fd)
  local confd
  confd, msg, code = ctx.proc:share_socket(2)
  if not confd then errors.from_code(fname, "console gate: " .. tostring(msg), code) end
  local tx, mon = ctx.tmpdir .. "/console.tx", ctx.tmpdir .. "/gate.qmp"
  ctx.gate = { fd = fd }
  return { tx = tx, mon = mon,
           arg = string.format("%s,in=%s,fd=%d,tx=%s,mon=%s,hold=%s", so, fifo, confd, tx, mon,
                               ctx.restore and "on" or "off") }
end

function M.attach(vm, g)
  vm.console._gate = g.fd
  vm._gate = g.fd
end

local function frame(fd, kind, data)
  data = data or ""
  local ok, msg = sys.write(fd, string.pack("<c1I4", kind, #data) .. data)
  return ok, msg
end

-- Bytes for the guest: typed by the plugin at its idle points.
function M.send(con, text)
  local ok, msg = frame(con._gate, "D", text)
  if not ok then return nil, "console gate: " .. tostring(msg), "closed" end
  return true
end

-- Hold the guest once it prints pattern (a command's end marker).
function M.arm(con, pattern)
  frame(con._gate, "A", pattern)
end

-- The host waits for something other than a command's end: let the guest run.
function M.release(vm)
  if vm._gate then frame(vm._gate, "R") end
end

return M
