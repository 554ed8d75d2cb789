-- qemu.plugin.build: TCG plugins compiled from C against a QEMU source
-- tree, QEMU's own contrib plugins among them, and readers for the text
-- reports those plugins print.  Reached through qemu.plugin:
--
--   local so = qemu.plugin.contrib("cache")                -- TREE/contrib/plugins/cache.c
--   local my = qemu.plugin.build { src = "mine.c", cflags = { "-DVERBOSE" } }
--   local vm <close> = qemu.guest.launch { plugins = { { path = so, args = { l2 = "on" } } } }
--   ...
--   local r = qemu.plugin.parse("cache", vm:plugin_log())   -- {cores={...}, data_hot={...}}
--
-- Debian's QEMU packages ship neither the contrib plugins nor the plugin
-- API header (include/qemu/qemu-plugin.h), so a build needs QEMU's source:
-- qemu_src=, else $QSHELL_QEMU_SRC, else a tree tests/qemu/source.sh left in
-- ~/.cache/qshell/qemu-src whose version is the one of the QEMU to be run.
-- Builds are cached in ~/.cache/qshell/plugins/<hash>/lib<name>.so, keyed by
-- the sources, the header, the flags and the compiler: a second build of
-- the same thing runs no compiler.  Each .so has a record beside it
-- (lib<name>.so.build.json) with the plugin API version it declares, so that
-- a plugin built for one QEMU is refused by name before another QEMU is
-- started with it (check_api).
--
-- This module does not load plugins (qemu.plugin does) and does not fetch
-- sources (tests/qemu/source.sh, or `apt-get source qemu`, does).

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local fs = require "qemu.util.fs"
local paths = require "qemu.util.paths"
local run = require "qemu.util.run"
local sys = require "qshell.os"
local json = require "qshell.json"
local plugin_so = require "qemu.plugin.so"

local M = {}

local HEADER = "include/qemu/qemu-plugin.h"
local RECORD = ".build.json"          -- lib<name>.so.build.json
local FORMAT = "qshell-plugin-build 1" -- in the cache key: a change of this module's flags rebuilds
local FETCH_HINT = "give qemu_src=TREE (or set QSHELL_QEMU_SRC): QEMU's source of the version you run; " ..
                   "`apt-get source qemu` (with a deb-src line) unpacks Debian's, and in a qshell checkout " ..
                   "tests/qemu/source.sh [bookworm|bookworm-backports] fetches it into ~/.cache/qshell/qemu-src, " ..
                   "where qshell finds it by itself"

local function plugin_error(fname, desc, hint)
  errors.raise { class = "PluginError", command = fname, desc = desc, hint = hint }
end

local function basename(p)
  return p:match("([^/]+)/*$") or p
end

local function words(s)
  local out = {}
  for w in (s or ""):gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function list_of_strings(fname, what, v)
  for i, s in ipairs(v) do
    if type(s) ~= "string" then check.bad(fname, "%s[%d] must be a string, got %s", what, i, type(s)) end
  end
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then check.bad(fname, "%s must be a list of strings", what) end
  end
  return v
end

-- The upstream version a tree is of (its VERSION file), or nil.
local function tree_version(tree)
  local v = fs.first_line(tree .. "/VERSION")
  return v and v:match("^%s*(%d+%.%d+%.?%d*)") or nil
end

-- The plugin API version a header declares (QEMU_PLUGIN_VERSION).
local function header_api(header)
  local text = fs.read(header) or ""
  return tonumber(text:match("#%s*define%s+QEMU_PLUGIN_VERSION%s+(%d+)"))
end

-- A tree must have the plugin header; anything else is the wrong directory.
local function check_tree(fname, tree, where)
  if not fs.is_dir(tree) then
    plugin_error(fname, string.format("QEMU source tree %s (%s): no such directory", tree, where), FETCH_HINT)
  end
  if not fs.is_file(tree .. "/" .. HEADER) then
    plugin_error(fname, string.format("%s (%s) has no %s: not a QEMU source tree of 4.2 or later", tree, where, HEADER),
                 FETCH_HINT)
  end
  return fs.abspath(tree)
end

-- Debian's version of a binary package, as the source package has it: the
-- "Debian " prefix and a binNMU suffix (+b3) dropped.
local function source_version(package)
  if not package then return nil end
  return (package:gsub("^Debian%s+", ""):gsub("%+b%d+$", ""))
end

local function src_roots()
  local roots = { paths.cache_dir() .. "/qemu-src" }
  local qc = os.getenv("QSHELL_CACHE")
  if qc and qc ~= "" and qc .. "/qemu-src" ~= roots[1] then roots[#roots + 1] = qc .. "/qemu-src" end
  return roots
end

-- M.source([binary]) -> the QEMU source tree to build plugins for binary
-- (default: the QEMU qemu.launch would run): $QSHELL_QEMU_SRC, else a tree
-- of tests/qemu/source.sh in the cache whose Debian version is binary's,
-- else one of the same upstream version, else one of the same major.minor
-- (the plugin API does not change within a stable series).
function M.source(binary)
  local fname = "qemu.plugin.source"
  if binary ~= nil then check.arg(fname, 1, binary, "string") end
  local env = os.getenv("QSHELL_QEMU_SRC")
  if env and env ~= "" then return check_tree(fname, env, "QSHELL_QEMU_SRC") end
  local v = require("qemu.util.binary").version(binary)
  local want = source_version(v.package)
  local best, best_rank
  for _, root in ipairs(src_roots()) do
    for _, d in ipairs(sys.listdir(root) or {}) do
      local dir = root .. "/" .. d
      local tree = dir .. "/qemu"
      if fs.is_file(dir .. "/complete") and fs.is_file(tree .. "/" .. HEADER) then
        local tv = tree_version(tree) or ""
        local rank
        if want and fs.first_line(dir .. "/version") == want then
          rank = 1
        elseif tv == v.text then
          rank = 2
        elseif tv:match("^(%d+%.%d+)") == string.format("%d.%d", v.major, v.minor) then
          rank = 3
        end
        if rank and (not best_rank or rank < best_rank) then best, best_rank = tree, rank end
      end
    end
  end
  if best then return best end
  plugin_error(fname, string.format("no QEMU source tree for QEMU %s%s in %s (plugins are built against " ..
                                    "that QEMU's %s)", v.text, v.package and (" (" .. v.package .. ")") or "",
                                    table.concat(src_roots(), " or "), HEADER), FETCH_HINT)
end

-- The C compiler: $CC (words) or cc.
local function compiler(fname)
  local cc = words(os.getenv("CC"))
  if #cc == 0 then cc = { "cc" } end
  if not (cc[1]:find("/") and fs.is_file(cc[1]) or run.which(cc[1])) then
    errors.raise { class = "MissingTool", command = fname, desc = "no C compiler (" .. cc[1] .. ")",
                   hint = "apt-get install gcc libc6-dev (or set CC)" }
  end
  return cc
end

-- What the compiler and glib say, asked once per process.
local asked = {}
local function ask(fname, argv, fail)
  local key = table.concat(argv, "\0")
  if asked[key] == nil then
    if not run.which(argv[1]) and not argv[1]:find("/") then fail(argv[1] .. " is not installed") end
    local st = run.run(argv, { command = fname })
    if st.code ~= 0 then fail((st.stderr ~= "" and st.stderr or st.stdout):gsub("%s+$", "")) end
    asked[key] = st.stdout
  end
  return asked[key]
end

local function glib_flags(fname)
  local out = ask(fname, { "pkg-config", "--cflags", "--libs", "glib-2.0" }, function(why)
    errors.raise { class = "MissingTool", command = fname,
                   desc = "no glib development files (pkg-config glib-2.0: " .. why .. ")",
                   hint = "QEMU's plugin header and its contrib plugins use glib: apt-get install pkg-config libglib2.0-dev" }
  end)
  local cflags, libs = {}, {}
  for _, w in ipairs(words(out)) do
    if w:match("^%-l") or w:match("^%-L") or w:match("^%-pthread$") then libs[#libs + 1] = w else cflags[#cflags + 1] = w end
  end
  return cflags, libs
end

local function cc_version(fname, cc)
  local argv = { table.unpack(cc) }
  argv[#argv + 1] = "--version"
  local out = ask(fname, argv, function(why)
    errors.raise { class = "MissingTool", command = fname, desc = cc[1] .. " --version: " .. why,
                   hint = "apt-get install gcc libc6-dev (or set CC)" }
  end)
  return out:match("^[^\n]*")
end

-- sha256 of a text (qshell.hash reads files: one in the scratch dir).
local function sha256_text(fname, text)
  local p = fs.scratch_file("plugin-key")
  fs.write(p, text, fname)
  local sum, err, err_code = require("qshell.hash").sha256(p)
  os.remove(p)
  if not sum then errors.from_code(fname, "cannot hash the build key: " .. tostring(err), err_code) end
  return sum
end

local function sha256_file(fname, p)
  local sum, err, err_c = require("qshell.hash").sha256(p)
  if not sum then errors.from_code(fname, "cannot read " .. p .. ": " .. tostring(err), err_c) end
  return sum
end

-- The .c files of src (a file, or every .c of a directory), sorted.
local function sources(fname, src)
  local st = fs.stat(src)
  if not st then
    plugin_error(fname, "src " .. src .. ": no such file or directory",
                 "src= is a plugin's .c file, or a directory whose .c files make one plugin")
  end
  if st.type == "file" then
    if not src:match("%.c$") then
      plugin_error(fname, "src " .. src .. " is not a .c file", "src= is a C source (.c) or a directory of them")
    end
    return { fs.abspath(src) }
  end
  local out = {}
  for _, f in ipairs(sys.listdir(src) or {}) do
    if f:match("%.c$") and fs.is_file(src .. "/" .. f) then out[#out + 1] = fs.abspath(src .. "/" .. f) end
  end
  if #out == 0 then
    plugin_error(fname, "src " .. src .. " holds no .c files", "src= is a C source (.c) or a directory of them")
  end
  table.sort(out)
  return out
end

-- The first compiler error and a few lines after it (else the first lines).
local function error_lines(text)
  local lines = {}
  for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
  local first = 1
  for i, l in ipairs(lines) do
    if l:find("error:", 1, true) or l:find("undefined reference", 1, true) or l:find("fatal", 1, true) then
      first = i
      break
    end
  end
  return table.concat(lines, "\n", first, math.min(#lines, first + 7))
end

local function record_path(so)
  return so .. RECORD
end

-- M.api_of(path) -> the plugin API version a plugin built here declares,
-- and its build record ({api=, qemu=, name=, contrib=, tree=, sources=,
-- cflags=}); nil for a .so this module did not build.
function M.api_of(path)
  check.arg("qemu.plugin.api_of", 1, path, "string")
  local text = fs.read(record_path(path))
  if not text then return nil end
  local ok, rec = pcall(json.decode, text)
  if not ok or type(rec) ~= "table" or rec.format ~= FORMAT or math.type(rec.api) ~= "integer" then return nil end
  return rec.api, rec
end

-- M.check_api(path [, binary]) -> api | nil: raises PluginError when the
-- plugin was built for a plugin API binary does not take.  A .so without
-- a build record passes (QEMU itself checks it when it loads it).
function M.check_api(path, binary)
  local fname = "qemu.plugin.check_api"
  check.arg(fname, 1, path, "string")
  if binary ~= nil then check.arg(fname, 2, binary, "string") end
  local api, rec = M.api_of(path)
  if not api then return nil end
  local v = require("qemu.util.binary").version(binary)
  local r = v.plugin_api
  if api < r.min or api > r.cur then
    plugin_error(fname,
      string.format("plugin %s was built against QEMU %s's plugin API %d; this QEMU (%s) takes %d..%d",
                    basename(path), rec.qemu or "?", api, v.text, r.min, r.cur),
      string.format("build it against that QEMU's source: %s with qemu_src= a QEMU %s tree, or binary=\"%s\" " ..
                    "for the tree tests/qemu/source.sh cached for it",
                    rec.contrib and string.format("qemu.plugin.contrib(%q, ...)", rec.contrib) or "qemu.plugin.build{...}",
                    v.text, v.path))
  end
  return api
end

-- The plugin API version the sources declare: a literal
-- `qemu_plugin_version = N` in them, else the header's QEMU_PLUGIN_VERSION.
local function declared_api(srcs, header)
  for _, s in ipairs(srcs) do
    local n = (fs.read(s) or ""):match("qemu_plugin_version%s*=%s*(%d+)%s*;")
    if n then return tonumber(n) end
  end
  return header_api(header)
end

-- Build one plugin: srcs against tree -> path of the cached .so.
local function build(fname, o)
  local tree = o.tree
  local header = tree .. "/" .. HEADER
  local cc = compiler(fname)
  local gcflags, glibs = glib_flags(fname)
  local argv = { table.unpack(cc) }
  local function add(...) for _, a in ipairs { ... } do argv[#argv + 1] = a end end
  add("-shared", "-fPIC", "-O2", "-Wall")
  add("-I", tree .. "/include/qemu")
  -- After the system's headers: TREE/include holds an elf.h and the like
  -- that must not stand in for the C library's.
  add("-idirafter", tree .. "/include")
  if fs.is_dir(tree .. "/contrib/plugins") then add("-I", tree .. "/contrib/plugins") end
  for _, f in ipairs(gcflags) do add(f) end
  for _, f in ipairs(o.cflags) do add(f) end
  local flags_end = #argv

  -- The cache key: what the .so is made of, not where the files are.
  local key = { FORMAT, "cc " .. cc_version(fname, cc), "argv " .. table.concat(cc, " "),
                "header " .. sha256_file(fname, header),
                "glib " .. table.concat(gcflags, " ") .. " | " .. table.concat(glibs, " "),
                "cflags " .. table.concat(o.cflags, "\0") }
  for _, s in ipairs(o.srcs) do key[#key + 1] = "src " .. basename(s) .. " " .. sha256_file(fname, s) end
  local hash = sha256_text(fname, table.concat(key, "\n") .. "\n"):sub(1, 16)
  local dir = paths.cache_dir() .. "/plugins/" .. hash
  local so = dir .. "/lib" .. o.name .. ".so"
  if fs.is_file(so) and M.api_of(so) then return so end

  local api = declared_api(o.srcs, header)
  if not api then
    plugin_error(fname, header .. " declares no QEMU_PLUGIN_VERSION", "is " .. tree .. " a QEMU source tree?")
  end
  fs.mkdir_p(dir, fname)
  local tmp = string.format("%s/.lib%s.so.%d.tmp", dir, o.name, sys.getpid())
  add("-o", tmp)
  for _, s in ipairs(o.srcs) do add(s) end
  for _, f in ipairs(glibs) do add(f) end
  local function discard()
    os.remove(tmp)
    os.remove(dir) -- only when empty: another build's files stay
  end
  local ok, st = pcall(run.run, argv, { command = fname, timeout = 600 })
  if not ok then
    discard()
    error(st, 0)
  end
  if st.code ~= 0 then
    discard()
    local out = (st.stderr ~= "" and st.stderr or st.stdout):gsub("%s+$", "")
    local hint = "fix the source; the command was: " .. table.concat(argv, " ", 1, flags_end) .. " ..."
    if out:find("glib.h", 1, true) then
      hint = "install glib's headers: apt-get install libglib2.0-dev"
    elseif out:find("qemu-plugin.h", 1, true) then
      hint = FETCH_HINT
    end
    plugin_error(fname, string.format("compiling %s (%s) failed (%s):\n%s", o.name,
                                      table.concat(o.srcs, " "), st.desc, error_lines(out)), hint)
  end
  -- A .so QEMU would refuse (no qemu_plugin_version or qemu_plugin_install)
  -- is a build error: say so now, naming the source.
  local cok, cerr = pcall(plugin_so.check, tmp)
  if not cok then
    discard()
    local e = errors.is(cerr) and cerr or { desc = tostring(cerr) }
    local desc = tostring(e.desc)
    local s, f = desc:find(tmp, 1, true)
    if s then desc = desc:sub(1, s - 1) .. o.name .. " (" .. table.concat(o.srcs, " ") .. ")" .. desc:sub(f + 1) end
    plugin_error(fname, desc, e.hint)
  end
  local rec = { format = FORMAT, name = o.name, contrib = o.contrib, api = api, qemu = tree_version(tree),
                tree = tree, sources = o.srcs, cflags = json.array({ table.unpack(o.cflags) }),
                compiler = cc_version(fname, cc) }
  -- The record first, then the .so: a .so in the cache always has one.
  -- Both through names of this process's own (sweep workers may build
  -- the same plugin at once).
  local rtmp = string.format("%s/.lib%s.so.build.json.%d.tmp", dir, o.name, sys.getpid())
  local f, ferr, why_code = io.open(rtmp, "wb")
  local why = not f and ferr or nil
  if f then
    local wok, werr, wcode = f:write(json.encode(rec, { pretty = true }) .. "\n")
    local cok, cerr, ccode = f:close()
    if not (wok and cok) then why, why_code = "cannot write " .. rtmp .. ": " .. tostring(werr or cerr), wcode or ccode end
  end
  if not why then
    local rok, rmsg, rcode = sys.rename(rtmp, record_path(so))
    if rok then rok, rmsg, rcode = sys.rename(tmp, so) end
    why, why_code = not rok and rmsg or nil, rcode
  end
  if why then
    os.remove(rtmp)
    os.remove(tmp)
    errors.from_code(fname, "cannot store the plugin in " .. dir .. ": " .. why, why_code)
  end
  return so
end

local build_opts = { src = "string", qemu_src = "string", name = "string", cflags = "table", binary = "string" }

local function tree_of(fname, opts)
  if opts.qemu_src then return check_tree(fname, opts.qemu_src, "qemu_src=") end
  local ok, t = pcall(M.source, opts.binary)
  if not ok then
    if errors.is(t) then t.command = fname end
    error(t, 0)
  end
  return t
end

local function check_name(fname, name)
  if not name:match("^[%w_][%w_.%-]*$") then
    check.bad(fname, "name %q must be letters, digits, '_', '-' or '.' (the .so is lib<name>.so)", name)
  end
  return name
end

-- M.build{src=, qemu_src=, name=, cflags=, binary=} -> path of the .so
function M.build(opts)
  local fname = "qemu.plugin.build"
  if opts == nil then check.bad(fname, "give the options: {src=FILE.c or DIR, qemu_src=TREE, name=, cflags={...}}") end
  check.options(fname, opts, build_opts)
  if not opts.src then check.bad(fname, "src= (a plugin's .c file or a directory of .c files) is required") end
  list_of_strings(fname, "cflags", opts.cflags or {})
  local srcs = sources(fname, opts.src)
  local name = opts.name or basename(opts.src):gsub("%.c$", "")
  check_name(fname, name)
  return build(fname, { srcs = srcs, tree = tree_of(fname, opts), name = name, cflags = opts.cflags or {} })
end

-- The contrib plugins a tree has (TREE/contrib/plugins/*.c; the Windows
-- linker shim of 9.x+ is not one).
local function contrib_names(tree)
  local out = {}
  for _, f in ipairs(sys.listdir(tree .. "/contrib/plugins") or {}) do
    local n = f:match("^(.+)%.c$")
    if n and n ~= "win32_linker" then out[#out + 1] = n end
  end
  table.sort(out)
  return out
end

local contrib_opts = { qemu_src = "string", binary = "string", cflags = "table" }

-- M.contrib_names([{qemu_src=, binary=}]) -> sorted list of names
function M.contrib_names(opts)
  local fname = "qemu.plugin.contrib_names"
  check.options(fname, opts, contrib_opts)
  return contrib_names(tree_of(fname, opts or {}))
end

-- M.contrib(name [, {qemu_src=, binary=, cflags=}]) -> path of the .so
-- built from TREE/contrib/plugins/<name>.c
function M.contrib(name, opts)
  local fname = "qemu.plugin.contrib"
  check.arg(fname, 1, name, "string")
  check.options(fname, opts, contrib_opts, 2)
  opts = opts or {}
  list_of_strings(fname, "cflags", opts.cflags or {})
  local tree = tree_of(fname, opts)
  local names = contrib_names(tree)
  local found = false
  for _, n in ipairs(names) do found = found or n == name end
  if not found then
    plugin_error(fname, string.format("no contrib plugin '%s' in %s/contrib/plugins (QEMU %s)", name, tree,
                                      tree_version(tree) or "?"),
                 "name one of: " .. (#names > 0 and table.concat(names, ", ") or "(none: the tree has no contrib/plugins)"))
  end
  return build(fname, { srcs = { tree .. "/contrib/plugins/" .. name .. ".c" }, tree = tree, name = name,
                        contrib = name, cflags = opts.cflags or {} })
end

-- Parsers: the text QEMU writes for qemu_plugin_outs() -> tables.  The
-- plugin log is shared by every plugin of a VM, so each parser picks its
-- own lines and skips the rest.

-- Hex digits -> integer (64-bit values wrap: 0xffffffff81000000 is a
-- negative integer, and string.format("0x%x", v) gives it back).
local function hex(s)
  return math.tointeger(tonumber(s, 16))
end

local function int(s)
  return math.tointeger(tonumber(s))
end

local function rate(misses, accesses)
  return accesses > 0 and misses / accesses or 0.0
end

local CACHE_HOT = {
  ["address, data misses, instruction"] = "data_hot",
  ["address, fetch misses, instruction"] = "insn_hot",
  ["address, L2 misses, instruction"] = "l2_hot",
}

-- One row of cache's table: "0       123  4  3.2520%  456  7  1.5351%[  89  10  11.2360%]"
local function cache_row(line)
  local label, rest = line:match("^(%S+)%s+(.+)$")
  if not label or not (label:match("^%d+$") or label == "sum") then return nil end
  local f = words(rest)
  if #f ~= 6 and #f ~= 9 then return nil end
  for i = 1, #f do
    if (i % 3 == 0) ~= (f[i]:match("^%d+%.?%d*%%$") ~= nil) then return nil end
    if i % 3 ~= 0 and not f[i]:match("^%d+$") then return nil end
  end
  local row = { data_accesses = int(f[1]), data_misses = int(f[2]),
                insn_accesses = int(f[4]), insn_misses = int(f[5]) }
  row.data_miss_rate = rate(row.data_misses, row.data_accesses)
  row.insn_miss_rate = rate(row.insn_misses, row.insn_accesses)
  if #f == 9 then
    row.l2_accesses, row.l2_misses = int(f[7]), int(f[8])
    row.l2_miss_rate = rate(row.l2_misses, row.l2_accesses)
  end
  if label == "sum" then return row, true end
  row.core = int(label)
  return row, false
end

-- One line of a hot-instruction list: "0xADDR[ (symbol)], MISSES, disassembly"
local function hot_row(line)
  local a, sym, n, dis = line:match("^0x(%x+) %((.-)%), (%d+), (.*)$")
  if not a then
    a, n, dis = line:match("^0x(%x+), (%d+), (.*)$")
  end
  if not a then return nil end
  return { addr = hex(a), symbol = sym, misses = int(n), disas = dis }
end

-- cache: the L1 (and L2) simulation report.  Miss rates are fractions
-- (misses / accesses, 0 when nothing was accessed), computed from the counts.
local function parse_cache(text)
  local r, state
  for line in text:gmatch("[^\n]*") do
    if not r then
      if line:match("^core #, data accesses, data misses, dmiss rate") then
        r = { cores = {}, data_hot = {}, insn_hot = {}, l2 = nil }
        state = "rows"
      end
    elseif state == "rows" then
      local row, is_sum = cache_row(line)
      if row and is_sum then
        r.sum = row
      elseif row then
        r.cores[#r.cores + 1] = row
      else
        state = nil
      end
    end
    if r and state ~= "rows" then
      if CACHE_HOT[line] then
        state = CACHE_HOT[line]
        r[state] = r[state] or {}
      elseif state then
        local h = hot_row(line)
        if h then
          local list = r[state]
          list[#list + 1] = h
        else
          state = nil
        end
      end
    end
  end
  if not r or #r.cores == 0 then return nil, "no cache report (the table under \"core #, data accesses, ...\")" end
  local total = r.sum or (#r.cores == 1 and r.cores[1]) or nil
  if total and total.l2_accesses then
    r.l2 = { accesses = total.l2_accesses, misses = total.l2_misses, miss_rate = total.l2_miss_rate }
  end
  return r
end

-- execlog: one record per executed instruction it logged:
--   "0, 0xffffffff81000000, 0x90909090, \"nop \", load, 0x00012345, RAM, rax -> 0x1"
local function parse_execlog(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local cpu, pc, op, rest = line:match('^(%d+), 0x(%x+), 0x(%x+), "(.*)$')
    if cpu then
      local dis, tail = rest:match('^(.*)"(.*)$')
      if dis then
        local rec = { vcpu = int(cpu), pc = hex(pc), opcode = hex(op), disas = dis:gsub("%s+$", ""), mem = {} }
        local toks = {}
        for t in tail:gmatch(",%s*([^,]+)") do toks[#toks + 1] = t:gsub("%s+$", "") end
        local i = 1
        while i <= #toks do
          local t = toks[i]
          local reg, val = t:match("^(%S+) %-> 0x(%x+)$")
          if t == "load" or t == "store" then
            local m = { kind = t, addr = toks[i + 1] and toks[i + 1]:match("^0x(%x+)$") and hex(toks[i + 1]:sub(3)) }
            i = i + (m.addr and 2 or 1)
            local nxt = toks[i]
            if m.addr and nxt and nxt ~= "load" and nxt ~= "store" and not nxt:find(" -> ", 1, true) then
              m.device = nxt
              i = i + 1
            end
            rec.mem[#rec.mem + 1] = m
          elseif reg then
            rec.regs = rec.regs or {}
            rec.regs[reg] = #val <= 16 and hex(val) or ("0x" .. val)
            i = i + 1
          else
            i = i + 1
          end
        end
        out[#out + 1] = rec
      end
    end
  end
  return out
end

-- howvec: instruction classes and the most executed instructions.
local function parse_howvec(text)
  local r, seen = { classes = {}, insns = {} }, false
  for line in text:gmatch("[^\n]+") do
    if line == "Instruction Classes:" then
      seen = true
    else
      local class, rest = line:match("^Class: (.-)%s*\t(.*)$")
      if class then
        -- counted as a class (hits=N), instruction by instruction (in
        -- insns), or not at all
        local hits = rest:match("^%((%d+) hits%)$")
        local c = { class = class, hits = hits and int(hits) }
        if not hits then
          if rest:match("^counted individually") then c.individual = true else c.counted = false end
        end
        r.classes[#r.classes + 1] = c
      else
        local insn, hits, op, cls = line:match("^Instr: (.-)%s*\t%((%d+) hits%)\t%(op=0x(%x+)/(.*)%)$")
        if insn then
          r.insns[#r.insns + 1] = { insn = insn, hits = int(hits), opcode = hex(op), class = cls }
        end
      end
    end
  end
  if not seen then return nil, "no howvec report (\"Instruction Classes:\")" end
  return r
end

-- hotpages: the most accessed pages.
local function parse_hotpages(text)
  local r, seen = { pages = {} }, false
  for line in text:gmatch("[^\n]+") do
    if line == "Addr, RCPUs, Reads, WCPUs, Writes" then
      seen = true
    else
      local a, rc, rd, wc, wr = line:match("^0x(%x+), 0x(%x+), (%d+), 0x(%x+), (%d+)$")
      if a then
        r.pages[#r.pages + 1] = { addr = hex(a), read_cpus = hex(rc), reads = int(rd), write_cpus = hex(wc),
                                  writes = int(wr) }
      end
    end
  end
  if not seen then return nil, "no hotpages report (\"Addr, RCPUs, Reads, WCPUs, Writes\")" end
  return r
end

-- The parsers by plugin name: function(text) -> table | nil, why.  A
-- script may add its own (qemu.plugin.parsers.mine = function(text) ... end).
M.parsers = { cache = parse_cache, execlog = parse_execlog, howvec = parse_howvec, hotpages = parse_hotpages }

-- The parser name for a plugin name, a .so name or path ("libcache.so",
-- "/x/libcache.so" -> "cache"); a .so built here by another name is known
-- by the contrib plugin it was built from.
function M.parser_name(name)
  check.arg("qemu.plugin.parser_name", 1, name, "string")
  if name:find("/") then
    local _, rec = M.api_of(name)
    if rec and rec.contrib then return rec.contrib end
  end
  local base = basename(name)
  return base:match("^lib(.+)%.so$") or base:match("^(.+)%.so$") or base
end

local function parser_list()
  local names = {}
  for k in pairs(M.parsers) do names[#names + 1] = k end
  table.sort(names)
  return table.concat(names, ", ")
end

-- M.parse(name, text) -> table (see the parsers above)
function M.parse(name, text)
  local fname = "qemu.plugin.parse"
  check.arg(fname, 1, name, "string")
  check.arg(fname, 2, text, "string")
  local pname = M.parser_name(name)
  local p = M.parsers[pname]
  if type(p) ~= "function" then
    plugin_error(fname, string.format("no parser for plugin '%s'", name),
                 "parsers: " .. parser_list() .. "; add one as qemu.plugin.parsers." .. pname .. " = function(text) ... end")
  end
  local r, why = p(text)
  if r == nil then
    plugin_error(fname, string.format("%s: %s in the text", pname, why or "nothing to read"),
                 "a plugin prints its report when QEMU exits: read vm:plugin_log() after vm:wait() or vm:quit(), " ..
                 "and check the plugin was loaded")
  end
  return r
end

-- M.result(log_text, name) -> the parsed report of plugin name in a VM's
-- plugin log (vm:plugin_result falls back to this for plugins without an
-- out= file).
function M.result(text, name)
  local fname = "qemu.plugin.result"
  check.arg(fname, 1, text, "string")
  check.arg(fname, 2, name, "string")
  local ok, r = pcall(M.parse, name, text)
  if not ok then
    if errors.is(r) then
      r.command = fname
      if r.desc:find(" in the text$") then r.desc = r.desc:gsub(" in the text$", " in the plugin log") end
    end
    error(r, 0)
  end
  return r
end

return M
