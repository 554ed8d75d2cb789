-- qemu.run: run a helper program (qemu-img, mkfs.ext4, ...) from an argv,
-- never through a shell, and collect its exit status and output.

local proc = require "qshell.proc.core"
local errors = require "qemu.errors"
local sys = require "qshell.os"

local M = {}

-- A started program: job:finish() collects it like run() (run() is start
-- + finish), job:kill() stops it.  Several run side by side this way.
local Job = {}
Job.__index = Job

-- M.start(argv [, {command=, stdin=path, exec_hint=, overrides=}]) -> job;
-- raises when it cannot start (MissingTool when the program is not there,
-- unless overrides={exec=...} says another class).
function M.start(argv, opts)
  opts = opts or {}
  local p, msg, pcode = proc.new("qshell-run")
  if not p then errors.from_code(opts.command or argv[1], msg, pcode) end
  local out = p:tmpdir() .. "/stdout"
  local ok, err, code = p:spawn(argv, 0, out, opts.stdin)
  if not ok then
    p:close()
    -- a helper program that is not there: MissingTool (QEMU itself is
    -- started by qemu.launch, whose failure is LaunchFailed)
    errors.from_code(opts.command or argv[1], err, code, { hint = opts.exec_hint,
                                                           overrides = opts.overrides or { exec = "MissingTool" } })
  end
  return setmetatable({ p = p, out = out, argv = argv, opts = opts }, Job)
end

-- job:finish([timeout]) -> {code=, signal=, desc=, stdout=, stderr=}
-- With opts.progress (a function), it is called every second with the
-- tail of the program's stderr while it runs.
function Job:finish(timeout)
  local p, opts = self.p, self.opts
  self.done = true
  timeout = timeout or opts.timeout
  local st, werr, wcode
  if opts.progress then
    local deadline = timeout and sys.now() + timeout
    repeat
      local slice = 1
      if deadline then slice = math.max(0, math.min(1, deadline - sys.now())) end
      st, werr, wcode = p:wait(slice)
      if not st and wcode == "timeout" and (not deadline or sys.now() < deadline) then
        opts.progress(p:log_tail(4096))
      else
        break
      end
    until false
  else
    st, werr, wcode = p:wait(timeout)
  end
  if not st then
    p:kill()
    p:close()
    errors.from_code(opts.command or self.argv[1], werr, wcode)
  end
  local f = io.open(self.out, "rb")
  st.stdout = f and f:read("a") or ""
  if f then f:close() end
  st.stderr = p:log_tail(1 << 20)
  p:close()
  return st
end

-- job:check([timeout]) -> stdout; a non-zero exit raises as M.check does.
function Job:check(timeout)
  return M.checked(self.argv, self:finish(timeout), self.opts)
end

function Job:kill()
  if self.done then return end
  self.done = true
  self.p:kill()
  self.p:close()
end

-- M.run(argv [, {timeout=, command=, stdin=path}]) -> {code=, signal=, desc=, stdout=, stderr=}
-- Raises only when the program cannot be started or is interrupted.
function M.run(argv, opts)
  return M.start(argv, opts):finish()
end

-- The stdout of a finished program, or its error when it exited non-zero.
function M.checked(argv, st, opts)
  opts = opts or {}
  if st.code ~= 0 then
    local err = (st.stderr ~= "" and st.stderr or st.stdout):gsub("%s+$", "")
    errors.raise { class = opts.class or "CommandFailed", command = opts.command or argv[1],
                   desc = string.format("%s %s: %s", argv[1], st.desc, err),
                   hint = errors.hint_for(err), exit = st }
  end
  return st.stdout
end

-- M.check(argv, opts) -> stdout; a non-zero exit raises with its stderr.
function M.check(argv, opts)
  return M.checked(argv, M.run(argv, opts), opts)
end

-- Is a program on PATH?
function M.which(name)
  for dir in (os.getenv("PATH") or "/usr/bin:/bin"):gmatch("[^:]+") do
    local path = dir .. "/" .. name
    local f = io.open(path, "rb")
    if f then
      f:close()
      return path
    end
  end
  return nil
end

return M
