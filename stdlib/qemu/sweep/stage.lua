-- qemu.sweep.stage: a Slurm task's node-local copy of the checkpoint.
--
-- Every array task restores its runs from the checkpoint; read from the
-- shared file system by every task, a large job is a read storm on the
-- shared storage.  So a node copies the checkpoint once into node-local
-- scratch (`slurm.stage_dir`, default $TMPDIR/qshell.stage as the task
-- sees it), under the SHA-256 of its manifest, and every run on that node
-- restores from the copy:
--   - the copy is checked while it is made (each file's digest against the
--     manifest) and given the files' recorded mtimes, so a restore from it
--     checks sizes only, as from the original;
--   - one task copies, the others on the node wait for it (a lock file
--     beside the copy); a later job finds the copy by its hash and reuses it;
--   - copies beyond `slurm.stage_keep` bytes (default 4 x this one) are
--     removed, the least recently used first, never one a task holds;
--   - each copy made is one line in the job dir's stage.log (node, size,
--     seconds): what the tests count.

local errors = require "qemu.errors"
local fs = require "qemu.util.fs"
local json = require "qshell.json"
local sys = require "qshell.os"
local hash = require "qshell.hash"
local ram = require "qemu.vm.ram"
local manifest = require "qemu.checkpoint.manifest"

local M = {}

local FNAME = "qemu.sweep"

-- Take the lock at path (exclusive, or "shared"), waiting while another
-- process holds it.
local function lock(path, timeout, mode)
  local deadline = sys.now() + timeout
  while true do
    local fd, msg, code = sys.lock(path, mode)
    if fd then return fd end
    if code ~= "busy" then errors.from_code(FNAME, "cannot lock " .. path .. ": " .. tostring(msg), code) end
    if sys.now() > deadline then
      errors.raise { class = "Timeout", command = FNAME,
                     desc = string.format("another task held %s for %g s", path, timeout) }
    end
    local ok, _, scode = sys.sleep(0.2)
    if not ok and scode == "interrupted" then
      errors.raise { class = "Interrupted", command = FNAME, desc = "interrupted!" }
    end
  end
end

-- Remove a copy: a flat directory of files (what a checkpoint is).
local function remove_copy(dir)
  for _, name in ipairs(sys.listdir(dir) or {}) do os.remove(dir .. "/" .. name) end
  os.remove(dir)
end

-- The bytes a directory's files take.
local function size_of(dir)
  local total = 0
  for _, name in ipairs(sys.listdir(dir) or {}) do
    local st = sys.stat(dir .. "/" .. name)
    if st and st.type == "file" then total = total + st.alloc end
  end
  return total
end

-- Copy the checkpoint's files into work, each checked against the manifest
-- as it is copied, with its recorded mtime.
local function copy(shared, work, m)
  local jobs = {}
  for name, rec in pairs(m.files) do
    local src, dst = shared .. "/" .. name, work .. "/" .. name
    local job
    if rec.sha256_chunks then
      job = ram.image(src, dst, FNAME)
    else
      local err, code
      job, err, code = hash.copy(src, dst, 292) -- 0444, as the checkpoint's own
      if not job then errors.from_code(FNAME, err, code) end
    end
    jobs[#jobs + 1] = { name = name, rec = rec, job = job, dst = dst }
  end
  for _, j in ipairs(jobs) do
    local sum, err, code = j.job:wait()
    if not sum then errors.from_code(FNAME, j.name .. ": " .. tostring(err), code) end
    if sum ~= (j.rec.sha256_chunks or j.rec.sha256) then
      errors.raise { class = "CheckpointCorrupt", command = FNAME,
                     desc = string.format("%s: %s does not match its digest in the manifest; nothing was run",
                                          shared, j.name),
                     hint = "the checkpoint changed after it was made: make it again" }
    end
    local ok, uerr, ucode = sys.utime(j.dst, j.rec.mtime)
    if not ok then errors.from_code(FNAME, uerr, ucode) end
  end
end

-- Remove the least recently used copies until the others fit in keep bytes.
local function evict(root, keep, mine)
  local copies, total = {}, 0
  for _, name in ipairs(sys.listdir(root) or {}) do
    local dir = root .. "/" .. name
    local st = sys.stat(dir .. "/.staged")
    if st and name:find("^%x+$") then
      local size = size_of(dir)
      copies[#copies + 1] = { dir = dir, name = name, used = st.mtime, size = size }
      total = total + size
    end
  end
  table.sort(copies, function(a, b) return a.used < b.used end)
  for _, c in ipairs(copies) do
    if total <= keep then break end
    if c.name ~= mine then
      -- a copy a task uses (its shared hold on .use) is not removed
      local fd = sys.lock(c.dir .. ".use")
      if fd then
        remove_copy(c.dir)
        total = total - c.size
        sys.unlock(fd)
      end
    end
  end
end

-- M.checkpoint(shared, opts) -> dir: the node-local copy of the checkpoint
-- at `shared` (made now, or found), to restore from.  opts: dir= (the
-- stage directory), keep= (bytes of copies kept), log= (the job's
-- stage.log), node= (this node's name), timeout= (seconds to wait for
-- another task's copy).
function M.checkpoint(shared, opts)
  local root = opts.dir or ((os.getenv("TMPDIR") or "/tmp") .. "/qshell.stage")
  fs.mkdir_p(root, FNAME)
  local key, herr, hcode = hash.sha256(shared .. "/manifest.json")
  if not key then errors.from_code(FNAME, herr, hcode) end
  local final = root .. "/" .. key
  -- .lock: held while the copy is made (the other tasks wait for it);
  -- .use: held shared by every task restoring from the copy, for its whole
  -- life (the process exit drops it), so that eviction passes it by.
  local made = false
  local fd = lock(final .. ".lock", opts.timeout or 3600)
  local ok, err = pcall(function()
    if fs.exists(final .. "/.staged") then
      sys.utime(final .. "/.staged", sys.now()) -- used now: the eviction order
      return
    end
    local m = manifest.read(shared, FNAME)
    local t0 = sys.now()
    local work = string.format("%s.tmp.%d", final, sys.getpid())
    -- (a copy a killed task left half made: only the .lock holder makes one)
    for _, n in ipairs(sys.listdir(root) or {}) do
      if n:sub(1, #key + 5) == key .. ".tmp." then remove_copy(root .. "/" .. n) end
    end
    remove_copy(final)
    fs.mkdir_p(work, FNAME)
    local cok, cerr = pcall(function()
      copy(shared, work, m)
      fs.write(work .. "/manifest.json", fs.slurp(shared .. "/manifest.json", FNAME), FNAME)
      fs.write(work .. "/.staged", "", FNAME)
      local rok, rerr, rcode = sys.rename(work, final)
      if not rok then errors.from_code(FNAME, rerr, rcode) end
    end)
    if not cok then
      remove_copy(work)
      error(cerr, 0)
    end
    made = true
    if opts.log then
      fs.append(opts.log, json.encode { node = opts.node, checkpoint = shared, copy = final, bytes = size_of(final),
                                        seconds = sys.now() - t0 } .. "\n", FNAME)
    end
  end)
  if ok then
    M.held = M.held or {}
    M.held[#M.held + 1] = lock(final .. ".use", 60, "shared")
    if made then evict(root, opts.keep or 4 * size_of(final), key) end
  end
  sys.unlock(fd)
  if not ok then error(err, 0) end
  return final, made
end

return M
