-- qemu.host: what this machine can give a job, and the progress line on a
-- terminal that long jobs (kernel builds, sweeps, Slurm gathers) share.
--
--   host.cores() -> CPUs this process may use (cgroup quota counted)
--   host.available_memory() -> bytes (MemAvailable, less under a cgroup limit)
--   local p = host.progress("sweep", {enabled=})   p:show(text [, force]), p:done(), p:clear()
--   host.fmt_time(seconds) -> "m:ss"
--   host.name() -> this machine's host name (its UTS namespace's)
--   host.accel() -> "kvm" or "tcg": what accel="auto" picks here

local sys = require "qshell.os"
local fs = require "qemu.util.fs"

local M = {}

local GIB = 1 << 30

function M.name()
  return fs.first_line("/proc/sys/kernel/hostname")
end

-- accel="auto": kvm only when /dev/kvm is usable AND the CPU advertises
-- vmx/svm; a nested software KVM without them crawls and then dies.
local auto_accel
function M.accel()
  if auto_accel then return auto_accel end
  auto_accel = "tcg"
  if sys.access("/dev/kvm", "rw") then
    for line in (fs.read("/proc/cpuinfo") or ""):gmatch("[^\n]+") do
      if line:match("^flags") then
        if line:find("%f[%w]vmx%f[%W]") or line:find("%f[%w]svm%f[%W]") then auto_accel = "kvm" end
        break
      end
    end
  end
  return auto_accel
end

-- The cgroup v2 directory of this process, or nil.
local function cgroup_dir()
  local path = (fs.read("/proc/self/cgroup") or ""):match("0::([^\n]*)")
  return path and ("/sys/fs/cgroup" .. (path == "/" and "" or path)) or nil
end

-- CPUs this process may use: the affinity mask's count (sched_getaffinity
-- through /proc/self/status), capped by a cgroup CPU quota.
function M.cores()
  local n
  local list = (fs.read("/proc/self/status") or ""):match("Cpus_allowed_list:%s*([^\n]+)")
  if list then
    n = 0
    for a, b in list:gmatch("(%d+)%-?(%d*)") do
      n = n + (b ~= "" and (tonumber(b) - tonumber(a) + 1) or 1)
    end
  end
  if not n or n == 0 then
    n = 0
    for line in (fs.read("/proc/cpuinfo") or ""):gmatch("[^\n]+") do
      if line:match("^processor%s*:") then n = n + 1 end
    end
  end
  local dir = cgroup_dir()
  local quota, period = (dir and fs.first_line(dir .. "/cpu.max") or ""):match("^(%d+)%s+(%d+)")
  if quota then n = math.min(n, math.ceil(tonumber(quota) / tonumber(period))) end
  return math.max(1, n)
end

-- Bytes of memory a job can use: MemAvailable, or less under a cgroup limit.
function M.available_memory()
  local kb = (fs.read("/proc/meminfo") or ""):match("MemAvailable:%s*(%d+)")
  local avail = kb and tonumber(kb) * 1024 or 2 * GIB
  local dir = cgroup_dir()
  local max = dir and tonumber(fs.first_line(dir .. "/memory.max") or "")
  local cur = dir and tonumber(fs.first_line(dir .. "/memory.current") or "")
  if max and cur then avail = math.min(avail, math.max(0, max - cur)) end
  return avail
end

function M.fmt_time(s)
  s = math.floor(s + 0.5)
  return string.format("%d:%02d", s // 60, s % 60)
end

local Progress = {}
Progress.__index = Progress

-- A progress line "[name] text" on stderr, redrawn in place, only when
-- stderr is a terminal (and opts.enabled is not false); at most 4 redraws
-- a second unless forced.
function M.progress(name, opts)
  opts = opts or {}
  return setmetatable({ name = name, tty = opts.enabled ~= false and sys.isatty(2),
                        shown = false, last = 0, t0 = sys.now() }, Progress)
end

function Progress:elapsed()
  return sys.now() - self.t0
end

function Progress:show(text, force)
  if not self.tty then return end
  local now = sys.now()
  if not force and now - self.last < 0.25 then return end
  self.last = now
  self.shown = true
  io.stderr:write("\r\027[K[" .. self.name .. "] " .. text)
  io.stderr:flush()
end

-- Leave the last line on the screen.
function Progress:done(text)
  if not self.tty then return end
  if text then self:show(text, true) end
  if self.shown then io.stderr:write("\n") end
  io.stderr:flush()
  self.shown = false
end

-- Remove the line (before an error message).
function Progress:clear()
  if not self.tty then return end
  if self.shown then io.stderr:write("\r\027[K") end
  io.stderr:flush()
  self.shown = false
end

return M
