-- qemu.sweep.provenance: what produced a row of a sweep's results.
--
-- A run's setup is everything that decides what it measures apart from its
-- parameters: the qshell and QEMU (version and binary), the machine type,
-- accel and icount, the checkpoint (its path and the hash of its manifest)
-- or the savevm tag it was made from, the plugins with their arguments, the
-- script (path, arguments, working directory, hash) and the file of the run
-- function (hash).  Its id is a hash of the setup, so the runs of one sweep
-- share one id and a changed QEMU or script shows as a new one.  The host
-- and the start time belong to the row.
--
-- CSV rows carry host, started and prov (the id); the provenance records
-- are in the sidecar OUT-without-extension.provenance.json (its
-- `provenance`: id -> record), which also names the sweep's run count (for
-- `qshell results --follow`).  JSONL rows carry the whole record as
-- `provenance`.

local hash = require "qshell.hash"
local json = require "qshell.json"
local sys = require "qshell.os"
local config = require "qshell.config"
local fs = require "qemu.util.fs"

local M = {}

-- The columns a row gets besides its parameters and metrics.
M.ROW = { "host", "started", "prov" }

-- JSON with sorted keys: the same setup gives the same text (and id) in
-- every process.
function M.canonical(v)
  if type(v) == "table" and v ~= json.null then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = M.canonical(x) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = json.encode(k) .. ":" .. M.canonical(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return json.encode(v)
end

function M.id(prov)
  return hash.string(M.canonical(prov)):sub(1, 12)
end

local file_hashes = {}
local function file_sha256(path)
  if not file_hashes[path] then file_hashes[path] = hash.sha256(path) or false end
  return file_hashes[path] or nil
end

-- The script side of a sweep (same for all its runs): the script that ran
-- (arg[0]) with its arguments and working directory, and the file the run
-- function is in.
function M.script(spec)
  -- In a Slurm task: the script as the submitter ran it (paths differ here).
  if M.task_script then return M.task_script end
  local s = { cwd = sys.realpath(".") }
  local script = arg and arg[0]
  if script and script ~= "" and script ~= "-" and fs.is_file(script) then
    s.script = sys.realpath(script)
    s.script_sha256 = file_sha256(s.script)
    local args = json.array {}
    for i = 1, #arg do args[i] = arg[i] end
    s.args = args
  end
  local src = debug.getinfo(spec.run, "S").source
  if src:sub(1, 1) == "@" then
    local real = sys.realpath(src:sub(2))
    if real and real ~= s.script then
      s.run_file = real
      s.run_file_sha256 = file_sha256(real)
    end
  else
    s.run_file = "(not a file: " .. src:sub(1, 40) .. ")"
  end
  return s
end

local manifests = {}
local function checkpoint_facts(dir)
  local real = sys.realpath(dir) or dir
  if not manifests[real] then
    local ok, m = pcall(require("qemu.checkpoint.manifest").read, real, "qemu.sweep")
    manifests[real] = {
      id = file_sha256(real .. "/manifest.json"),
      launch = ok and m.launch or {},
    }
  end
  return real, manifests[real]
end

local function plugins_of(list)
  local out = json.array {}
  for _, p in ipairs(list or {}) do
    local e = { name = p.name or (p.path and p.path:match("([^/]+)$")) }
    if p.path then e.path = p.path end
    if p.args and next(p.args) then e.args = p.args end
    out[#out + 1] = e
  end
  return out
end

-- M.of_run(script, lopts, source, vm) -> provenance: a run's provenance
-- (its setup) from its launch options and, when it started, its VM (else
-- the QEMU it would have run).
function M.of_run(script, lopts, source, vm)
  local s = {}
  for k, v in pairs(script) do s[k] = v end
  s.qshell = config.version
  local ckpt, facts = checkpoint_facts(source.checkpoint)
  if source.from_tag then
    s.from_tag = source.tag
  else
    s.checkpoint = source.shown or ckpt -- a Slurm task names it as the submitter does
    s.checkpoint_id = facts.id
  end
  local launch = facts.launch
  s.machine = launch.machine_type ~= json.null and launch.machine_type or nil
  local icount = lopts.icount
  if icount == nil and launch.icount ~= json.null then icount = launch.icount end
  s.icount = icount
  s.plugins = plugins_of(lopts.plugins)
  if vm then
    s.qemu = vm.version
    if vm.argv then
      local ok, path = pcall(require("qemu.util.binary").resolve, vm.argv[1])
      s.qemu_binary = ok and path and (sys.realpath(path) or path) or vm.argv[1]
    end
    s.accel = vm.accel
  else
    local ok, v = pcall(require("qemu.util.binary").version, lopts.binary)
    if ok then
      s.qemu, s.qemu_binary = string.format("%d.%d.%d", v.major, v.minor, v.micro), sys.realpath(v.path) or v.path
    end
    s.accel = (lopts.accel ~= "auto" and lopts.accel) or launch.accel
  end
  return s
end

function M.host()
  return require("qemu.util.host").name() or "?"
end

function M.now_text()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- The sidecar of a results file: results.csv -> results.provenance.json.
function M.sidecar(out)
  return (out:gsub("%.[%w]+$", "")) .. ".provenance.json"
end

-- Read a sidecar: {provenance = {id = provenance}, sweep = {...}} (empty
-- when none).  Sidecars written before the key was `provenance` have
-- `setups`: read as the same (and written back as `provenance`).
function M.read_sidecar(out)
  local text = fs.read(M.sidecar(out))
  if not text then return { provenance = {} } end
  local ok, t = pcall(json.decode, text)
  if not ok or type(t) ~= "table" then return { provenance = {} } end
  local old = type(t.setups) == "table" and t.setups or {}
  t.setups = nil
  if type(t.provenance) ~= "table" then t.provenance = {} end
  for id, p in pairs(old) do
    if t.provenance[id] == nil then t.provenance[id] = p end
  end
  return t
end

-- The fields two provenance records differ in: {{field=, was=, now=}, ...}.
function M.differences(old, new)
  local keys, seen = {}, {}
  for k in pairs(old or {}) do keys[#keys + 1] = k; seen[k] = true end
  for k in pairs(new or {}) do if not seen[k] then keys[#keys + 1] = k end end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local a, b = old and old[k], new and new[k]
    if a == json.null then a = nil end
    if b == json.null then b = nil end
    local ta = a ~= nil and M.canonical(a) or nil
    local tb = b ~= nil and M.canonical(b) or nil
    if ta ~= tb then out[#out + 1] = { field = k, was = a, now = b } end
  end
  return out
end

return M
