-- qemu.fs: the file-system helpers every stdlib module uses, over
-- qshell.os.  Reads that may find nothing return nil; everything else
-- raises an error table (IOError) naming the path, never a bare string.
--
--   fs.exists(p), fs.is_dir(p), fs.is_file(p), fs.stat(p) (through links)
--   fs.read(p) -> text | nil           fs.first_line(p) -> line | nil
--   fs.slurp(p, command) -> text        (raises when it cannot be read)
--   fs.write(p, text, command)          (atomic: a temp file renamed over p)
--   fs.append(p, text, command)         (all of text or none: whole lines)
--   fs.mkdir_p(p, command)              fs.abspath(p)
--   fs.scratch() -> dir                 fs.scratch_file(prefix [, suffix]) -> path

local sys = require "qshell.os"
local proc = require "qshell.proc.core"
local errors = require "qemu.errors"

local M = {}

-- code: what the C call (or Lua's io, an errno number) said; its class
-- comes from the one map in qemu.errors.
local function io_error(command, desc, code)
  errors.from_code(command or "qemu.fs", desc, code or "io")
end

-- Anything at p (a dangling link too).
function M.exists(p)
  return sys.stat(p) ~= nil
end

-- stat() that follows a symbolic link.
local function stat_follow(p)
  local st = sys.stat(p)
  if st and st.type == "link" then
    local real = sys.realpath(p)
    st = real and sys.stat(real)
  end
  return st
end

-- stat() through a symbolic link: {type=, size=, mode=, uid=, mtime=} or nil.
M.stat = stat_follow

-- A directory, or a link to one.
function M.is_dir(p)
  local st = stat_follow(p)
  return st ~= nil and st.type == "dir"
end

-- A regular file, or a link to one.
function M.is_file(p)
  local st = stat_follow(p)
  return st ~= nil and st.type == "file"
end

-- The contents of a file, or nil when it cannot be read.
function M.read(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- What a file holds from byte `from` on ("" when it has no more, or no file).
function M.read_from(p, from)
  local f = io.open(p, "rb")
  if not f then return "" end
  f:seek("set", from or 0)
  local s = f:read("a") or ""
  f:close()
  return s
end

-- The first line of a file (without its newline), or nil.
function M.first_line(p)
  local f = io.open(p, "r")
  if not f then return nil end
  local s = f:read("l")
  f:close()
  return s
end

-- The contents of a file; raises IOError when it cannot be read.
function M.slurp(p, command)
  local f, msg, errno = io.open(p, "rb")
  if not f then io_error(command, "cannot read " .. msg, errno) end
  local s = f:read("a")
  f:close()
  return s
end

-- Write text to p atomically: a reader sees the old file or the new one,
-- never half of one (a temp file beside it, renamed over it).
function M.write(p, text, command)
  local tmp = p .. ".tmp"
  local f, msg, errno = io.open(tmp, "wb")
  if not f then io_error(command, "cannot write " .. msg, errno) end
  local ok, werr, wno = f:write(text)
  local cok, cerr, cno = f:close()
  if not ok or not cok then
    os.remove(tmp)
    io_error(command, "cannot write " .. tmp .. ": " .. tostring(werr or cerr), wno or cno)
  end
  local rok, rmsg, rcode = sys.rename(tmp, p)
  if not rok then
    os.remove(tmp)
    io_error(command, "cannot replace " .. p .. ": " .. rmsg, rcode)
  end
end

-- Append text to p in one write (whole lines stay whole when a process is
-- killed).
function M.append(p, text, command)
  local ok, msg, code = sys.append(p, text)
  if not ok then io_error(command, "cannot append to " .. msg, code) end
end

-- Make p and its missing parents; an existing directory is fine.
function M.mkdir_p(p, command)
  local ok, msg, code = sys.mkdir(p, true)
  if not ok then
    io_error(command, "cannot create the directory " .. msg, code)
  end
end

-- The absolute path of p: the real path of its directory joined with its
-- last component (which need not exist, and is not resolved if a link).
function M.abspath(p)
  if p:sub(1, 1) == "/" then return p end
  local dir, name = p:match("^(.*)/([^/]*)$")
  if not dir then dir, name = ".", p end
  if dir == "" then dir = "/" end
  local real = sys.realpath(dir)
  if not real then
    -- A directory still to be made: relative to the cwd.
    local cwd = sys.realpath(".")
    return cwd and ((cwd == "/" and "" or cwd) .. "/" .. p) or p
  end
  if name == "" or name == "." then return real end
  return (real == "/" and "" or real) .. "/" .. name
end

local scratch, count = nil, 0
-- A private 0700 directory for this qshell, removed when it exits.
function M.scratch()
  if not scratch then
    local p, msg, code = proc.new("qshell")
    if not p then io_error("qemu.tmpdir", msg, code) end
    scratch = p -- never spawned; its __gc (at lua_close) and the atexit hook remove the dir
  end
  return scratch:tmpdir()
end

-- A new file name in the scratch dir (not created): prefix-PID-N[suffix].
-- The pid keeps forked sweep workers, which share the dir, apart.
function M.scratch_file(prefix, suffix)
  count = count + 1
  return string.format("%s/%s-%d-%d%s", M.scratch(), prefix, sys.getpid(), count, suffix or "")
end

return M
