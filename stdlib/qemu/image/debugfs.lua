-- qemu.image.debugfs: the ext2/3/4 editor: files, links and directories
-- of a filesystem in a raw image read and written with e2fsprogs' debugfs,
-- without root or a mount.  The planners (qemu.image.plan, .units) and
-- qemu.image.kernel (distro.lua) use it.

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"

local M = {}

-- ---- the ext filesystem through debugfs ----
--
-- fs is a raw file with "?offset=N" (the partition's start).  Paths given
-- to debugfs resolve links in their directories (/lib -> usr/lib) but not
-- in their last component, as lstat(2) does.

-- An absolute path with no "..", no control character, not "/" itself.
local function plain_path(v)
  return type(v) == "string" and v:sub(1, 1) == "/" and v ~= "/" and not v:find("%c") and
         not v:find("/%.%./") and not v:find("/%.%.$")
end

-- Run debugfs commands (-w) on fs; raise on the errors debugfs reports on
-- stderr while exiting 0.
local function debugfs(fs, cmds, what)
  local cmdfile = files.scratch_file("debugfs", ".cmds")
  files.write(cmdfile, table.concat(cmds, "\n") .. "\n", what)
  local st = run.run({ "debugfs", "-w", "-f", cmdfile, fs }, { command = what })
  os.remove(cmdfile)
  local errs = {}
  for line in st.stderr:gmatch("[^\n]+") do
    if line:find(": ") and
       (line:find("[Nn]ot found") or line:find("[Ee]rror") or line:find("[Cc]ould not") or line:find("[Ii]nvalid") or
        line:find("already exists")) and not line:find("^debugfs %d") then
      errs[#errs + 1] = line
    end
  end
  if st.code ~= 0 or #errs > 0 then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = "debugfs: " .. (#errs > 0 and table.concat(errs, "; ") or st.stderr) }
  end
  return st.stdout
end

-- One read-only debugfs request (-R): its stdout exactly, with no echo of
-- the command (-f echoes every command line).
local function debugfs_read(fs, cmd, what)
  local st = run.run({ "debugfs", "-R", cmd, fs }, { command = what })
  if st.code ~= 0 then
    errors.raise { class = "CustomizeFailed", command = what, desc = "debugfs: " .. st.stderr }
  end
  return st.stdout, st.stderr
end

local function debugfs_quote(p)
  if p:find('[%s"]') then return '"' .. p:gsub('"', '\\"') .. '"' end
  return p
end

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  return (d == nil or d == "") and "/" or d
end

local INODE_TYPES = { regular = "file", directory = "dir", symlink = "link" }

-- What is at path: {type="file"|"dir"|"link"|..., mode=, uid=, gid=,
-- size=, link= (a fast link's target)}, or nil when nothing is.
local function lstat(fs, path, what)
  local out = debugfs_read(fs, "stat " .. debugfs_quote(path), what)
  local t = out:match("Type:%s+(%a+)")
  if not t then return nil end
  return { type = INODE_TYPES[t] or t, mode = tonumber(out:match("Mode:%s+0?(%d+)"), 8),
           uid = tonumber(out:match("User:%s+(%d+)")), gid = tonumber(out:match("Group:%s+(%d+)")),
           size = tonumber(out:match("Size:%s+(%d+)")), link = out:match('Fast link dest: "([^\n]*)"\n') }
end

-- The contents of a regular file.
local function cat(fs, path, what)
  return (debugfs_read(fs, "cat " .. debugfs_quote(path), what))
end

-- A symbolic link's target (st: its lstat).
local function readlink(fs, path, st, what)
  if st.link then return st.link end
  return cat(fs, path, what):sub(1, st.size)
end

-- A directory's entries: {{name=, type=, mode=, uid=, gid=}, ...}
-- without . and .. ("ls -p" lines are /inode/mode/uid/gid/name/size/).
local function list_dir(fs, dir, what)
  local out = debugfs_read(fs, "ls -p " .. debugfs_quote(dir), what)
  if not out:find("\n$") then out = out .. "\n" end
  local list = {}
  for ino, mode, uid, gid, name in out:gmatch("/(%d+)/(%d+)/(%d+)/(%d+)/([^\n]*)/%d*/\n") do
    if name ~= "." and name ~= ".." and ino ~= "0" then
      local m = tonumber(mode, 8)
      local kind = ({ [0x4000] = "dir", [0x8000] = "file", [0xa000] = "link" })[m & 0xf000] or "other"
      list[#list + 1] = { name = name, type = kind, mode = m & 0xfff, uid = tonumber(uid), gid = tonumber(gid) }
    end
  end
  return list
end

-- mkdir -p: the missing directories of dir, root's, mode 0755.  Only the
-- missing ones: debugfs 1.47.0's mkdir of an existing directory corrupts
-- the filesystem (it allocates an inode and a block and counts a link in
-- the parent before it finds the name taken; e2fsck then finds them).
-- Links on the way are followed (/lib -> usr/lib).
local function make_dirs(fs, dir, what)
  local st = lstat(fs, dir, what)
  if st and st.type == "dir" then return end
  local cmds, real = {}, ""
  for part in dir:gmatch("[^/]+") do
    local p = real .. "/" .. part
    local hops = 0
    st = #cmds == 0 and lstat(fs, p, what) or nil
    while st and st.type == "link" and hops < 16 do
      local target = readlink(fs, p, st, what)
      p = target:sub(1, 1) == "/" and target or (dirname(p):gsub("/$", "") .. "/" .. target)
      st, hops = lstat(fs, p, what), hops + 1
    end
    if not st then
      cmds[#cmds + 1] = "mkdir " .. debugfs_quote(p)
    elseif st.type ~= "dir" then
      errors.raise { class = "CustomizeFailed", command = what,
                     desc = string.format("%s is not a directory in the image (needed for %s)", p, dir) }
    end
    real = p
  end
  if #cmds > 0 then debugfs(fs, cmds, what) end
end

-- Set an inode's mode (type bits included), owner and group.
local function set_inode(q, mode, uid, gid)
  return string.format("sif %s mode 0%o", q, mode), string.format("sif %s uid %d", q, uid),
         string.format("sif %s gid %d", q, gid)
end

-- Write text to guest_path, creating parent dirs; keep an existing file's
-- mode and owner (else default_mode, default 0644, root's); read it back.
local function put_file(fs, guest_path, text, what, default_mode, owner)
  if not plain_path(guest_path) then check.bad(what, "guest paths must be absolute and plain: %q", guest_path) end
  local old = lstat(fs, guest_path, what)
  if old and old.type == "dir" then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = guest_path .. " is a directory in the image; it cannot be written as a file" }
  end
  local replace = old ~= nil
  if old and old.type ~= "file" then old = nil end -- a link (or a special file) becomes a new file
  local host = files.scratch_file("put")
  files.write(host, text, what)
  make_dirs(fs, dirname(guest_path), what)
  local q = debugfs_quote(guest_path)
  -- debugfs's stat shows only the permission bits: add "regular file".
  local mode = old and (0x8000 | (old.mode & 0xfff)) or (default_mode or (0x8000 | 0x1a4)) -- 0100644
  local uid = old and old.uid or (owner and owner[1]) or 0
  local gid = old and old.gid or (owner and owner[2]) or 0
  local cmds = { "write " .. debugfs_quote(host) .. " " .. q, set_inode(q, mode, uid, gid) }
  if replace then table.insert(cmds, 1, "rm " .. q) end
  debugfs(fs, cmds, what)
  os.remove(host)
  if cat(fs, guest_path, what) ~= text then
    errors.raise { class = "CustomizeFailed", command = what,
                   desc = string.format("%s reads back differently after writing it", guest_path) }
  end
end

-- A symbolic link at path (an existing link there is replaced).
local function put_link(fs, path, target, what)
  make_dirs(fs, dirname(path), what)
  local cmds = {}
  if lstat(fs, path, what) then cmds[1] = "rm " .. debugfs_quote(path) end
  cmds[#cmds + 1] = "symlink " .. debugfs_quote(path) .. " " .. debugfs_quote(target)
  debugfs(fs, cmds, what)
end

M.run = debugfs
M.read = debugfs_read
M.quote = debugfs_quote
M.dirname = dirname
M.lstat = lstat
M.cat = cat
M.readlink = readlink
M.list_dir = list_dir
M.make_dirs = make_dirs
M.set_inode = set_inode
M.put_file = put_file
M.put_link = put_link
M.plain_path = plain_path

return M
