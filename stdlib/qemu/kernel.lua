-- qemu.kernel: build a Linux kernel from a source tree and edit its .config.
--
--   local k = qemu.kernel.build { src = "linux", config = "tinyconfig",
--                                 options = { SERIAL_8250_CONSOLE = "y" } }
--   local vm = qemu.launch { kernel = k.bzimage, append = "console=ttyS0" }
--
-- make runs from an argv (never a shell) with a bounded -j; its output is
-- streamed into a log file as it arrives, with a progress line on a
-- terminal, and a failed build raises with the compiler's error lines.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local core = require "qshell.proc.core"
local sys = require "qshell.os"
local fs = require "qemu.util.fs"
local host = require "qemu.util.host"

local M = {}

local is_dir, exists, read_file = fs.is_dir, fs.exists, fs.read

local GIB = 1024 * 1024 * 1024
local MEM_PER_JOB = 1.5 * GIB     -- a kernel compile job, link included, with room to spare
local TICK = 0.1                  -- at most this many seconds between looks at make's output
local LOG_NAME = "qshell-build.log"

local BUILD_DEPS = "apt-get install make gcc flex bison bc libelf-dev libssl-dev"

-- The config= values that are make targets; anything else is a file.
local CONFIG_TARGETS = { defconfig = true, tinyconfig = true, oldconfig = true, olddefconfig = true,
                         allnoconfig = true }

-- src must look like the top of a Linux tree: a Makefile and arch/x86 or Kconfig.
local function kernel_tree(fname, src)
  check.arg(fname, 1, src, "string")
  local function refuse(why)
    errors.raise { class = "NotAKernelTree", command = fname, desc = src .. ": " .. why,
                   hint = "src= is the top of a Linux source tree (the directory with Makefile, Kconfig " ..
                          "and arch/); `apt-get install linux-source` puts one in /usr/src/linux-source-*.tar.xz" }
  end
  if not is_dir(src) then refuse(exists(src) and "not a directory" or "no such directory") end
  if not exists(src .. "/Makefile") then refuse("not a kernel tree (no Makefile)") end
  if not (is_dir(src .. "/arch/x86") or exists(src .. "/Kconfig")) then
    refuse("not a kernel tree (a Makefile, but neither Kconfig nor arch/x86)")
  end
  return sys.realpath(src) or src
end

-- ---- the job count ----

---@api qemu.kernel.jobs qemu.kernel.jobs() -> jobs, cores
--- The number of parallel make jobs `qemu.kernel.build` runs by default, and the number of cores.
---
--- One job per core this process may run on, at most one per 1.5 GiB of available memory (`MemAvailable`, or
--- less under a cgroup memory limit), at least 1: a kernel build that would run out of memory is slower
--- than one with fewer jobs.
---
---     local jobs, cores = qemu.kernel.jobs()
---
---@return integer jobs  the default `-j`
---@return integer cores  the cores this process may run on
function M.jobs()
  local c = host.cores()
  local by_mem = math.floor(host.available_memory() / MEM_PER_JOB)
  return math.max(1, math.min(c, by_mem)), c
end

local function positive_int(v)
  if math.type(v) == "integer" and v >= 1 then return true end
  if math.type(v) == "float" and v >= 1 and v < 2 ^ 31 and v == math.floor(v) then return true end
  return false, "must be a positive integer (the number of parallel make jobs)"
end

-- ---- .config: values, the config object ----

local function quote(s)
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local function unquote(raw)
  local inner = raw:match('^"(.*)"$')
  if not inner then return raw end
  return (inner:gsub("\\(.)", "%1"))
end

-- "SERIAL_8250" or "CONFIG_SERIAL_8250" -> "CONFIG_SERIAL_8250"
local function option_name(fname, name)
  if type(name) ~= "string" then
    check.bad(fname, "config option names are strings like \"SERIAL_8250\", got a %s", type(name))
  end
  local short = name:gsub("^CONFIG_", "")
  if not short:match("^[%w_]+$") then
    check.bad(fname, "bad config option name %q (letters, digits and _ only)", name)
  end
  return "CONFIG_" .. short
end

-- A value as it is written in .config.  old is the current text, if any:
-- a string option stays a quoted string.
local function option_value(fname, name, v, old)
  if v == true then return "y" end
  if v == false then return "n" end
  if math.type(v) == "integer" then return tostring(v) end
  if type(v) ~= "string" then
    check.bad(fname, '%s: the value must be "y", "m", "n", a string or an integer, got %s',
              name, math.type(v) == "float" and "a fraction" or type(v))
  end
  if v:find("[\r\n]") then check.bad(fname, "%s: the value may not contain a newline", name) end
  if old and old:sub(1, 1) == '"' then return quote(v) end
  if v == "y" or v == "m" or v == "n" then return v end
  if v:match("^%-?%d+$") or v:match("^0[xX]%x+$") then return v end
  return quote(v)
end

local function parse_config(text)
  local lines, values = {}, {}
  if text ~= "" and text:sub(-1) ~= "\n" then text = text .. "\n" end
  for line in text:gmatch("(.-)\n") do
    local name, value = line:match("^(CONFIG_[%w_]+)=(.*)$")
    if not name then
      name = line:match("^# (CONFIG_[%w_]+) is not set$")
      value = name and "n"
    end
    lines[#lines + 1] = { text = line, name = name, value = value }
    if name then values[name] = value end
  end
  return lines, values
end

local function render(name, value)
  if value == "n" then return "# " .. name .. " is not set" end
  return name .. "=" .. value
end

---@apiclass qemu.KernelConfig config  A kernel tree's `.config`, as a table of its options
---
--- `qemu.kernel.config(src [, {out=}])` returns it. The object is the table `{CONFIG_X = text, ...}`: each
--- option as written in the file (`"y"`, `"m"`, `'"text"'` with its quotes, `"123"`, `"0x1000"`), and a
--- `# CONFIG_X is not set` line as `"n"`; `pairs(config)` gives the options only. `config:get` and
--- `config:set` read and write them by name (with or without `CONFIG_`), `config:save()` writes the file.
--- Assigning nil to an option (`config.CONFIG_X = nil`) drops its line when saving. Run a build (or `make
--- olddefconfig`) after saving, so that kconfig checks the result.
---
---     local cfg = qemu.kernel.config("linux-6.1", { out = "build/tiny" })
---     print(cfg:get("LOG_BUF_SHIFT"))                     --> 17
---     cfg:set("LOCALVERSION", "-exp1"):set("DEBUG_INFO_NONE", "y"):save()
---
---@field [string] string  `CONFIG_X` -> the option's text as in the file (`"n"` for an option that is not set)

-- The object is the table {CONFIG_X = value, ...}; its file and lines are
-- kept aside, so pairs(cfg) gives the options only.
local private = setmetatable({}, { __mode = "k" })
local Config = {}
local ConfigMT = { __index = Config, __name = "qemu.kernel.config" }

function ConfigMT.__tostring(cfg)
  local n = 0
  for _ in pairs(cfg) do n = n + 1 end
  return string.format("kernel config %s (%d options)", private[cfg].path, n)
end

---@api config:get config:get(name) -> value | nil
--- An option's value: `"y"`, `"m"`, `"n"` (not set), a string option's text without its quotes, or a number as a string.
---
---     print(cfg:get("SERIAL_8250"), cfg:get("CONFIG_LOCALVERSION"))   --> y   -exp1
---
---@param name string  the option, with or without `CONFIG_` (`"SERIAL_8250"`)
---@return string|nil value  its value; nil when the `.config` does not have it
---@error BadArgument  a name that is not a string of letters, digits and `_`
function Config:get(name)
  local raw = rawget(self, option_name("config:get", name))
  return raw and unquote(raw)
end

---@api config:set config:set(name, value) -> config
--- Set an option (in the table: `config:save()` writes the file); chainable.
---
--- `true` and `false` are `"y"` and `"n"`; `"y"`, `"m"` and `"n"` are written as they are, as are integers and
--- strings of digits or hex (`"0x1000"`); any other string is quoted. An option that is a string in the file
--- stays a string (`config:set("LOCALVERSION", "1")` writes `"1"`).
---
---     cfg:set("LOCALVERSION", "-exp1"):set("DEBUG_INFO_NONE", true):save()
---
---@param name string  the option, with or without `CONFIG_`
---@param value string|integer|boolean  `"y"`, `"m"`, `"n"`, true/false, a string (without its quotes, no newline) or
---   an integer
---@return qemu.KernelConfig config  the same object
---@error BadArgument  a bad name, a value of another type (a fraction, a table), a string with a newline
function Config:set(name, value)
  local key = option_name("config:set", name)
  rawset(self, key, option_value("config:set", key, value, rawget(self, key)))
  return self
end

---@api config:path config:path() -> path
--- The `.config` file this object reads and saves.
---@return string path  the file's path (`SRC/.config`, or `OUT/.config` for an `out=` build directory)
function Config:path()
  return private[self].path
end

---@api config:save config:save() -> path
--- Write the options back into the `.config`.
---
--- The file keeps its lines in their order: changed options are rewritten in place (`"n"` as
--- `# CONFIG_X is not set`), other lines are untouched, options set to nil are dropped and new options go at
--- the end, sorted. The file is replaced whole (written beside it and renamed). kconfig has not checked the
--- result: run a build, or `make olddefconfig`, after saving.
---@return string path  the `.config` written
---@error BadArgument  an entry put into the table directly that is not `CONFIG_NAME = "text"` (use `config:set`)
---@error IOError  the file could not be written
function Config:save()
  local p = private[self]
  local out, written = {}, {}
  for _, l in ipairs(p.lines) do
    if l.name then
      local v = rawget(self, l.name)
      if v == nil then
        -- removed from the table: dropped from the file
      elseif v == l.value then
        out[#out + 1] = l.text
      else
        out[#out + 1] = render(l.name, v)
      end
      written[l.name] = true
    else
      out[#out + 1] = l.text
    end
  end
  local new = {}
  for k, v in pairs(self) do
    if not written[k] then
      if type(k) ~= "string" or not k:match("^CONFIG_[%w_]+$") or type(v) ~= "string" then
        check.bad("config:save", "bad entry %s = %s: use config:set(name, value)", tostring(k), tostring(v))
      end
      new[#new + 1] = k
    end
  end
  table.sort(new)
  for _, k in ipairs(new) do out[#out + 1] = render(k, self[k]) end
  local text = table.concat(out, "\n") .. "\n"
  fs.write(p.path, text, "config:save") -- atomic: a full disk leaves the old .config whole
  p.lines = parse_config(text)
  return p.path
end

local config_opts = { out = "string" }

---@api qemu.kernel.config qemu.kernel.config(src [, options]) -> config
--- A kernel tree's `.config` as an object to read and edit: `config:get`, `config:set`, `config:save`.
---
--- The file is `src/.config`, or `out/.config` for a tree built with `out=` (make's `O=`).
---
---     local cfg = qemu.kernel.config("linux-6.1", { out = "build/tiny" })
---     print(cfg:get("LOG_BUF_SHIFT"))                     --> 17
---     cfg:set("LOCALVERSION", "-exp1"):set("DEBUG_INFO_NONE", "y"):save()
---     qemu.kernel.build { src = "linux-6.1", out = "build/tiny" }   -- keeps the edited .config
---
---@param src string  the top of a Linux source tree
---@param options? table  `out=` string: the build directory (`O=`) whose `.config` to read
---@return qemu.KernelConfig config  the options, with `config:get`, `config:set`, `config:save` and `config:path`
---@error BadArgument  an unknown option or a wrong type
---@error NotAKernelTree  `src` is not the top of a Linux source tree
---@error NotConfigured  there is no `.config` (configure it first: `qemu.kernel.build{src=, config="defconfig"}`)
function M.config(src, opts)
  local fname = "qemu.kernel.config"
  opts = check.options(fname, opts, config_opts, 2)
  src = kernel_tree(fname, src)
  local path = (opts.out or src) .. "/.config"
  local text = read_file(path)
  if not text then
    errors.raise { class = "NotConfigured", command = fname, desc = "no .config in " .. (opts.out or src),
                   hint = 'configure the tree first: qemu.kernel.build{src=, config="defconfig"} ' ..
                          '(or make defconfig)' }
  end
  local lines, values = parse_config(text)
  local cfg = setmetatable(values, ConfigMT)
  private[cfg] = { path = path, lines = lines }
  return cfg
end

-- ---- running make ----

-- Known traps in a failed make's output -> the fix.
local traps = {
  { "source tree is not clean",
    "the source tree was configured or built in place: run qemu.kernel.clean(src) (make mrproper) " ..
    "before building with out=, or build without out=" },
  { "flex: not found", "install the kernel's build tools: " .. BUILD_DEPS },
  { "bison: not found", "install the kernel's build tools: " .. BUILD_DEPS },
  { "bc: not found", "install the kernel's build tools: " .. BUILD_DEPS },
  { "gcc: not found", "install the kernel's build tools: " .. BUILD_DEPS },
  { "gelf%.h: No such file", "objtool needs libelf: apt-get install libelf-dev" },
  { "libelf", "objtool needs libelf: apt-get install libelf-dev" },
  { "openssl/[%w_]+%.h: No such file", "apt-get install libssl-dev" },
  { 'Configuration file ".config" not found', 'configure the tree first: config="defconfig" (or "tinyconfig")' },
  { "No rule to make target", "check target= and config= (make help lists the targets)" },
}

local function hint_for(text)
  for _, t in ipairs(traps) do
    if text:find(t[1]) then return t[2] end
  end
  return nil
end

local function split_lines(text)
  local lines = {}
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

-- The lines worth showing from a failed step: the last compiler errors with
-- the lines around them, else the last 15 lines.
function M._error_excerpt(text)
  local lines = split_lines(text)
  local hits = {}
  for i, l in ipairs(lines) do
    if l:find("error:", 1, true) or l:find("undefined reference to", 1, true) then hits[#hits + 1] = i end
  end
  if #hits == 0 then
    return table.concat(lines, "\n", math.max(1, #lines - 14)), false
  end
  local keep = {}
  for k = math.max(1, #hits - 3), #hits do
    local i = hits[k]
    for j = math.max(1, i - 2), math.min(#lines, i + 3) do keep[j] = true end
  end
  local idx = {}
  for j in pairs(keep) do idx[#idx + 1] = j end
  table.sort(idx)
  local out = {}
  for n, j in ipairs(idx) do
    if n > 1 and j > idx[n - 1] + 1 then out[#out + 1] = "..." end
    out[#out + 1] = lines[j]
  end
  while #out > 30 do table.remove(out, 1) end
  return table.concat(out, "\n"), true
end

-- The progress line on a terminal: the step, lines of output, the last
-- thing make built, the time so far.
local function progress(ctx, final)
  if final == "clear" then return ctx.progress:clear() end
  local last = ctx.last or ""
  if #last > 60 then last = "..." .. last:sub(-57) end
  local line = string.format("%s: %d lines%s, %s", ctx.step, ctx.lines,
                             last ~= "" and (", " .. last) or "", host.fmt_time(ctx.progress:elapsed()))
  if final == "done" then return ctx.progress:done(line) end
  ctx.progress:show(line)
end

-- New output of make: into the log, and counted for the progress line.
local function consume(ctx, chunk)
  if chunk == "" then return end
  ctx.logf:write(chunk)
  ctx.logf:flush()
  local text = ctx.partial .. chunk
  local from = 1
  while true do
    local nl = text:find("\n", from, true)
    if not nl then break end
    local line = text:sub(from, nl - 1)
    ctx.lines = ctx.lines + 1
    local tag, what = line:match("^  ([%u][%u%d_]*)%s+(%S+)")
    if tag and #tag <= 8 then ctx.last = tag .. " " .. what end
    from = nl + 1
  end
  ctx.partial = text:sub(from)
  if #ctx.partial > 65536 then ctx.partial = "" end
  progress(ctx)
end

local function drain(ctx, fd)
  while true do
    local chunk = sys.read(fd)
    if not chunk or chunk == "" then return end
    consume(ctx, chunk)
  end
end

-- Run one make step (make -C src [O=out] ARGS...), its output streamed to
-- the log; raises KernelBuildFailed, Timeout or Interrupted.
local function make(ctx, args, what)
  local argv = { "make", "-C", ctx.src, "--no-print-directory" }
  if ctx.out then argv[#argv + 1] = "O=" .. ctx.out end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  ctx.step = what
  ctx.logf:write(string.format("%s# qshell: %s\n", ctx.logf:seek("end") > 0 and "\n" or "", table.concat(argv, " ")))
  ctx.logf:flush()
  local start = ctx.logf:seek("end")
  local p <close>, msg, code = core.new("qshell-kernel")
  if not p then errors.from_code(ctx.fname, msg, code) end
  local ok, err, code = p:spawn(argv, 0)
  if not ok then
    errors.from_code(ctx.fname, err, code, { overrides = { exec = "MissingTool" },
                                             hint = code == "exec" and BUILD_DEPS or nil })
  end
  local fd, ferr, ferr_code = sys.open(p:logpath(), "r")
  if not fd then errors.from_code(ctx.fname, ferr, ferr_code) end
  local _ <close> = setmetatable({}, { __close = function() sys.close(fd) end })
  local st
  local tick = 0.01 -- short steps (a config target) end within a few ticks
  local function interrupted()
    p:kill()
    progress(ctx, "clear")
    errors.raise { class = "Interrupted", command = ctx.fname, log = ctx.log,
                   desc = "interrupted; make was stopped (log: " .. ctx.log .. ")" }
  end
  -- Ctrl-C lands in sys.sleep (which returns false) or, when it comes
  -- while Lua code runs, as the interrupt hook's "interrupted!": both stop
  -- make the same way.
  local ok, err = pcall(function()
    while true do
      drain(ctx, fd)
      st = p:poll()
      if st then break end
      if ctx.deadline and sys.now() > ctx.deadline then
        p:kill()
        drain(ctx, fd)
        progress(ctx, "clear")
        errors.raise { class = "Timeout", command = ctx.fname, log = ctx.log,
                       desc = string.format("make %s did not finish within %g s; it was stopped (log: %s)",
                                            table.concat(args, " "), ctx.timeout, ctx.log) }
      end
      tick = math.min(TICK, tick * 2)
      if not sys.sleep(tick) then interrupted() end
    end
  end)
  if not ok then
    if type(err) == "string" and err:match("interrupted!$") then interrupted() end
    error(err, 0)
  end
  drain(ctx, fd)
  if ctx.partial ~= "" then consume(ctx, "\n") end
  if st.code ~= 0 then
    progress(ctx, "clear")
    local text = fs.read_from(ctx.log, start)
    local excerpt, compiler = M._error_excerpt(text)
    errors.raise {
      class = "KernelBuildFailed", command = ctx.fname, log = ctx.log, exit = st, argv = argv,
      desc = string.format("make %s %s (log: %s); %s:\n%s", table.concat(args, " "), st.desc, ctx.log,
                           compiler and "errors" or "last lines", excerpt),
      hint = hint_for(text),
    }
  end
end

local function copy_file(fname, from, to)
  fs.write(to, fs.slurp(from, fname), fname)
end

-- The config methods, for the reference's help(config:set) (qemu.doc).
M._Config = Config

local build_opts = {
  src = "string", config = "string", jobs = positive_int, out = "string", log = "string",
  options = "table", target = "string", timeout = check.positive, progress = "boolean",
}

-- Does a .config value satisfy what was asked for?
local function kept(want, got)
  if want == "n" then return got == nil or got == "n" end
  if want == "y" or want == "m" then return got == "y" or got == "m" end
  return got == want or (got ~= nil and want:match("^0[xX]") and got:lower() == want:lower())
end

---@api qemu.kernel.build qemu.kernel.build(options) -> build
--- Configure and build a Linux kernel from a source tree: `make`, from an argv (never a shell), with a bounded `-j`;
--- no root.
---
--- `src` must be the top of a kernel tree (a `Makefile`, and `Kconfig` or `arch/x86`). Everything is checked
--- before make runs. The steps:
---
--- - the configuration: `config="defconfig"`, `"tinyconfig"`, `"allnoconfig"`, an arch's `"..._defconfig"`,
---   `"oldconfig"` (new options get their defaults: make's stdin is /dev/null) or `"olddefconfig"` runs
---   `make <name>`; any other value is the path of a config file, copied to `.config` and completed with
---   `make olddefconfig`. Without `config=` an existing `.config` is kept (`olddefconfig`), else `defconfig`.
--- - `options` are written into `.config`, then `make olddefconfig`. An option that did not survive it
---   (kconfig drops unknown names and resets options whose dependencies are not met) is a `KernelConfigError`
---   naming it, before anything is compiled.
--- - `make -jN <target>`.
---
--- Everything make prints goes to the log as it arrives, each step under a `# qshell: make ...` line; on a
--- terminal a progress line shows on stderr (`[kernel] bzImage: 1234 lines, CC kernel/fork.o, 0:42`). A failed
--- step raises `KernelBuildFailed` naming the log, with the last compiler errors and the lines around them
--- (or the last 15 lines), and a hint for the known traps (a source tree not clean for `out=`, missing flex,
--- bison, bc, libelf-dev or libssl-dev). On a timeout or Ctrl-C, make and its children are killed.
---
---     local k = qemu.kernel.build { src = "linux-6.1", out = "build/tiny", config = "tinyconfig",
---                                   options = { SERIAL_8250 = "y", SERIAL_8250_CONSOLE = "y", PRINTK = "y",
---                                               TTY = "y", BINFMT_ELF = "y", BLK_DEV_INITRD = "y" } }
---     print(k.bzimage, k.jobs, k.seconds)
---     local vm <close> = qemu.launch { kernel = k.bzimage, initrd = qemu.guest.default().initrd }
---
---@param options table  `src=` is required, the other keys are optional:
---   `src=` string: the top of the Linux source tree;
---   `out=` string: the build directory (make's `O=`), made if missing, so that the tree itself stays clean; default:
---   build in `src`;
---   `config=` string: a config target or a config file's path (above); default keep the `.config` there, else `defconfig`;
---   `options=` table: `{SERIAL_8250_CONSOLE="y", CMDLINE="console=ttyS0", LOG_BUF_SHIFT=14, ...}`, names with or
---   without `CONFIG_`, values `"y"`, `"m"`, `"n"`, true/false, strings without their quotes, integers (as
---   `config:set` takes them);
---   `target=` string, default `"bzImage"`: the make target;
---   `jobs=` integer: the parallel jobs, a positive integer; default `qemu.kernel.jobs()`;
---   `log=` string: the log file; default `<out or src>/qshell-build.log`;
---   `timeout=` number: seconds for the whole build (no limit by default);
---   `progress=` boolean, default true: the progress line on a terminal.
---@return table build  `{bzimage=, vmlinux=, config=, log=, jobs=, seconds=}`: the paths of `arch/x86/boot/bzImage` and
---   `vmlinux` (nil when the target made none), of the `.config` and of the log; the jobs used; the seconds it took
---@error BadArgument  options that are not a table, no `src=`, an unknown option or a wrong type, a config file that
---   does not exist, a bad option name or value, a bad target, an `out` that is not a directory, a log that cannot be
---   written
---@error NotAKernelTree  `src` is not the top of a Linux source tree
---@error MissingTool  make is not installed
---@error KernelConfigError  `make olddefconfig` did not keep an option of `options` (named, with its value now)
---@error KernelBuildFailed  a make step failed (the log named, the compiler's errors quoted), or `make bzImage` left
---   no bzImage
---@error Timeout  the build ran longer than `timeout`
---@error Interrupted  Ctrl-C
function M.build(opts)
  local fname = "qemu.kernel.build"
  if type(opts) ~= "table" then check.bad(fname, "argument #1 must be a table {src=, config=, ...}") end
  opts = check.options(fname, opts, build_opts, 1)
  if not opts.src then check.bad(fname, "src= (the kernel source tree) is required") end
  local src = kernel_tree(fname, opts.src)

  -- Everything is checked before make runs.
  local config_file, config_target
  local c = opts.config
  if c == nil then
    config_target = nil -- decided once the build directory is known
  elseif CONFIG_TARGETS[c] or c:match("^[%w_]+_defconfig$") then
    config_target = c
  else
    local st = sys.stat(c)
    if not st then
      errors.raise { class = "BadArgument", command = fname, desc = "config: no such file: " .. c,
                     hint = 'config= is "defconfig", "tinyconfig", "oldconfig", "olddefconfig", "allnoconfig", ' ..
                            'an arch\'s "..._defconfig", or the path of a .config file' }
    end
    if is_dir(c) then check.bad(fname, "config: %s is a directory, not a config file", c) end
    config_file = sys.realpath(c) or c
  end
  local wanted = {}
  for k, v in pairs(opts.options or {}) do
    local name = option_name(fname, k)
    option_value(fname, name, v) -- type check now
    wanted[#wanted + 1] = { name = name, value = v }
  end
  table.sort(wanted, function(a, b) return a.name < b.name end)
  local target = opts.target or "bzImage"
  if target == "" or target:find("%s") then check.bad(fname, "target: bad make target %q", target) end
  local jobs = opts.jobs and math.tointeger(opts.jobs) or M.jobs()

  local out
  if opts.out then
    if exists(opts.out) and not is_dir(opts.out) then
      check.bad(fname, "out: %s exists and is not a directory", opts.out)
    end
    fs.mkdir_p(opts.out, fname)
    out = sys.realpath(opts.out) or opts.out
  end
  local dir = out or src
  if not config_target and not config_file then
    config_target = exists(dir .. "/.config") and "olddefconfig" or "defconfig"
  end
  local log = opts.log or (dir .. "/" .. LOG_NAME)
  local logf, lerr = io.open(log, "wb")
  if not logf then
    errors.raise { class = "BadArgument", command = fname, desc = "cannot write the build log: " .. tostring(lerr) }
  end
  local ctx <close> = setmetatable({
    fname = fname, src = src, out = out, log = sys.realpath(log) or log, logf = logf,
    t0 = sys.now(), timeout = opts.timeout, deadline = opts.timeout and sys.now() + opts.timeout,
    progress = host.progress("kernel", { enabled = opts.progress }), lines = 0, partial = "", step = "config",
  }, { __close = function(t) t.logf:close() end })

  if config_file then
    copy_file(fname, config_file, dir .. "/.config")
    make(ctx, { "olddefconfig" }, "config")
  else
    make(ctx, { config_target }, config_target)
  end
  if #wanted > 0 then
    local cfg = M.config(src, { out = out })
    for _, w in ipairs(wanted) do
      w.text = option_value(fname, w.name, w.value, rawget(cfg, w.name))
      rawset(cfg, w.name, w.text)
    end
    cfg:save()
    make(ctx, { "olddefconfig" }, "options")
    cfg = M.config(src, { out = out })
    local lost = {}
    for _, w in ipairs(wanted) do
      local got = rawget(cfg, w.name)
      if not kept(w.text, got) then
        lost[#lost + 1] = string.format("%s=%s (now %s)", w.name, w.text,
                                        got == nil and "not in .config" or got)
      end
    end
    if #lost > 0 then
      errors.raise { class = "KernelConfigError", command = fname, log = ctx.log,
                     desc = "make olddefconfig did not keep: " .. table.concat(lost, ", "),
                     hint = "kconfig drops an option it does not know (a typo, or one from another kernel " ..
                            "version) and resets one whose dependencies are not met: set those too (see " ..
                            "its \"depends on\" in Kconfig, or search for it with / in make menuconfig)" }
    end
  end
  make(ctx, { "-j" .. jobs, target }, target)

  local bzimage = dir .. "/arch/x86/boot/bzImage"
  local vmlinux = dir .. "/vmlinux"
  if target == "bzImage" and not exists(bzimage) then
    errors.raise { class = "KernelBuildFailed", command = fname, log = ctx.log,
                   desc = "make bzImage succeeded but there is no " .. bzimage .. " (log: " .. ctx.log .. ")" }
  end
  progress(ctx, "done")
  return {
    bzimage = exists(bzimage) and bzimage or nil,
    vmlinux = exists(vmlinux) and vmlinux or nil,
    config = dir .. "/.config",
    log = ctx.log,
    jobs = jobs,
    seconds = sys.now() - ctx.t0,
  }
end

local clean_opts = { out = "string", timeout = check.positive }

---@api qemu.kernel.clean qemu.kernel.clean(src [, options])
--- Remove a kernel build: `make mrproper` (the `.config` and every output), and the default build log.
---
--- With `out=` the build directory is cleaned (nothing happens when it does not exist); without it the tree
--- itself, which a build with `out=` needs clean.
---
---     qemu.kernel.clean("linux-6.1", { out = "build/tiny" })
---
---@param src string  the top of a Linux source tree
---@param options? table  every key is optional:
---   `out=` string: the build directory (make's `O=`) to clean;
---   `timeout=` number: seconds to wait for make (no limit by default).
---@error BadArgument  an unknown option or a wrong type, an `out` that is not a directory
---@error NotAKernelTree  `src` is not the top of a Linux source tree
---@error KernelBuildFailed  `make mrproper` failed
---@error Timeout  make ran longer than `timeout`
---@error MissingTool  make is not installed
function M.clean(src, opts)
  local fname = "qemu.kernel.clean"
  opts = check.options(fname, opts, clean_opts, 2)
  src = kernel_tree(fname, src)
  local argv = { "make", "-C", src, "--no-print-directory" }
  local dir = src
  if opts.out then
    if not exists(opts.out) then return end -- nothing was built there
    if not is_dir(opts.out) then check.bad(fname, "out: %s is not a directory", opts.out) end
    dir = sys.realpath(opts.out) or opts.out
    argv[#argv + 1] = "O=" .. dir
  end
  argv[#argv + 1] = "mrproper"
  run.check(argv, { command = fname, class = "KernelBuildFailed", timeout = opts.timeout,
                    exec_hint = BUILD_DEPS })
  os.remove(dir .. "/" .. LOG_NAME)
end

return M
