-- qemu.errors: the error objects every public qshell call raises, the
-- hints for the known traps, and which HMP replies are errors.
--
-- An error is a table {class=, desc=, command=, hint=, where=} with a
-- one-line __tostring, so an uncaught error prints one readable line and
-- `pcall` gives scripts the structured value.  `where` is the first frame
-- outside the embedded stdlib: the user's "script.lua:12".

local M = {}

-- Every class a qshell error can have (besides QEMU's own QMP classes,
-- which come from its replies: GenericError, CommandNotFound, ...).
M.classes = {
  -- misuse and the machine
  BadArgument = "wrong argument types, unknown option names, a closed handle",
  IOError = "a file or socket operation failed",
  PermissionDenied = "the file system refused access",
  FileExists = "refusing to overwrite an existing file or directory",
  MissingTool = "a program qshell runs is not installed",
  CommandFailed = "a helper program (mkfs, qemu-img, ...) exited with an error",
  Interrupted = "Ctrl-C",
  Timeout = "a wait ran out of time",
  -- QEMU and its monitor
  LaunchFailed = "QEMU did not start",
  QEMUExited = "QEMU went away during a call",
  ConnectFailed = "no QMP server at the socket",
  ProtocolError = "QEMU sent something that is not QMP",
  HMPError = "an HMP command failed (QEMU reports these as successes)",
  -- guests and consoles
  LoginFailed = "the console login did not reach a shell prompt",
  ShellExited = "a console:run command ended the guest's shell (it is at its login prompt)",
  ConsoleOverflow = "the guest printed more than the console keeps unread",
  NotRunning = "the VM is paused or stopped: its guest cannot answer until vm:cont()",
  NotBuilt = "the default guest is not built and could not be",
  -- snapshots, checkpoints, sweeps
  SnapshotExists = "savevm of a tag that exists, without replace=true",
  SnapshotNotFound = "no snapshot with that tag",
  SnapshotUnsupported = "no writable qcow2 disk to hold the snapshot",
  SnapshotFailed = "QEMU failed to save, load or delete a snapshot",
  NotACheckpoint = "a directory that is not a checkpoint, or whose manifest asks for what qshell never writes " ..
                   "into one (a host path, a device, QEMU arguments)",
  CheckpointFailed = "making a checkpoint failed",
  CheckpointCorrupt = "a checkpoint's files do not match its manifest",
  SlurmError = "the Slurm engine could not submit or run the sweep",
  BadResults = "a results file qshell cannot read (the line is named)",
  ResultsBusy = "another sweep writes the same results file (the holder is named)",
  RerunMismatch = "a results row cannot be rerun as recorded (its checkpoint or script is gone)",
  -- disks, images, plugins, kernels
  DiskError = "qemu-img or mkfs failed on an image",
  NbdUnavailable = "no nbd kernel module",
  NotExt = "the image holds no ext2/3/4 file system to edit",
  ImageInUse = "the image is held by a running QEMU",
  CustomizeFailed = "customizing an image failed",
  BuildFailed = "building a distribution image (mmdebstrap) failed",
  NoKernel = "the image has no kernel in /boot",
  PluginError = "a TCG plugin could not be found, loaded or read",
  NotAKernelTree = "src= is not a Linux source tree",
  NotConfigured = "the kernel tree has no .config",
  KernelConfigError = "make olddefconfig did not keep the options asked for",
  KernelBuildFailed = "make failed",
}

-- The one map from the short codes the C glue returns (nil, msg, code) to
-- the class a public call raises; shell/luaenv.c's qs_errno_code is the one
-- map from errno values to codes.  "closed" depends on what closed: callers
-- that know (QEMU went away) raise QEMUExited themselves.
local CODE_CLASS = {
  interrupted = "Interrupted", timeout = "Timeout", exec = "LaunchFailed", io = "IOError",
  protocol = "ProtocolError", closed = "IOError", exists = "FileExists", perm = "PermissionDenied",
  nospace = "IOError", notfound = "IOError",
}

---@api qemu.errors.class_for qemu.errors.class_for(code [, overrides]) -> class
--- The error class for a failure code of qshell's C functions.
--- The codes are the third result of the low-level calls (`nil, msg, code`):
--- "io", "interrupted", "timeout", "exists", "perm", "nospace", "notfound",
--- "closed", "exec", "protocol"; a number is an errno value (as Lua's
--- `io.open` returns). An unknown code is `IOError`.
---@param code string|integer  the code, or an errno value
---@param overrides? table  code -> class, for a caller that knows better (e.g. `{exec = "MissingTool"}`)
---@return string class  the class name
function M.class_for(code, overrides)
  if math.type(code) == "integer" then code = require("qshell.os").errcode(code) end
  return (overrides and overrides[code]) or CODE_CLASS[code] or "IOError"
end

---@api qemu.errors.from_code qemu.errors.from_code(command, msg, code [, fields])
--- Raises the error for a failed low-level call: the class from its code.
--- Every qshell function that fails after a system call raises through it,
--- so an interrupted call is `Interrupted`, a refused one `PermissionDenied`,
--- an existing file `FileExists`, whatever the call was.
---
---     local f, msg, errno = io.open(path, "rb")
---     if not f then qemu.errors.from_code("myscript", "cannot read " .. msg, errno) end
---@param command string  what failed, as the error's `command`
---@param msg string  the description
---@param code string|integer  the code (see `qemu.errors.class_for`), or an errno value
---@param fields? table  more fields for the error (`hint=`, `desc=`), and `overrides=` as for `class_for`
---@error IOError  for "io", "closed", "nospace", "notfound" and unknown codes
---@error Interrupted  for "interrupted" (EINTR: Ctrl-C)
---@error PermissionDenied  for "perm" (EACCES, EPERM, EROFS)
---@error FileExists  for "exists"
---@error Timeout  for "timeout"
---@error LaunchFailed  for "exec" (a program that could not be started)
---@error ProtocolError  for "protocol"
function M.from_code(command, msg, code, fields)
  local t = {}
  for k, v in pairs(fields or {}) do t[k] = v end
  t.class = M.class_for(code, t.overrides)
  t.overrides = nil
  t.command = command
  t.desc = t.desc or (code == "interrupted" and "interrupted!" or msg)
  M.raise(t)
end

---@apiclass qemu.error err  The error every qemu call raises: a table with a one-line tostring
--- Every public function raises on failure; nothing fails silently. An
--- uncaught error prints one line:
---
---     sweep.lua:12: qemu.launch: unknown option 'memroy' (did you mean 'memory'?) (BadArgument)
---
--- and `pcall` gives the structured value:
---
---     local ok, e = pcall(vm.qmp, vm, "no-such-command")
---     print(e.class, e.desc)   --> CommandNotFound  The command no-such-command has not been found
---     if qemu.errors.is(e, "Timeout") then ... end
---
--- The classes are QMP's own (`GenericError`, `CommandNotFound`,
--- `DeviceNotFound`, ...: an error reply of `vm:qmp`) and qshell's, each
--- described in `qemu.errors.classes` (class name -> what it means):
--- `BadArgument` (misuse: wrong types, unknown option names, a closed
--- handle), `LaunchFailed`, `QEMUExited` (QEMU went away during a call),
--- `Timeout`, `Interrupted` (Ctrl-C), `HMPError` (an HMP command that failed:
--- QEMU reports these as successful replies), `ConnectFailed`,
--- `ProtocolError`, `IOError`, `PermissionDenied`, `FileExists`,
--- `MissingTool`, `CommandFailed`, `LoginFailed`, `ShellExited`,
--- `ConsoleOverflow`, `NotRunning` (a console or ROI wait on a VM that is
--- paused or stopped), `NotBuilt`, the snapshot classes (`SnapshotExists`,
--- `SnapshotNotFound`, `SnapshotUnsupported`, `SnapshotFailed`), the
--- checkpoint, sweep and results classes (`NotACheckpoint`,
--- `CheckpointFailed`, `CheckpointCorrupt`, `SlurmError`, `BadResults`,
--- `ResultsBusy`, `RerunMismatch`), and those of disks, images, plugins and
--- kernel builds (`DiskError`, `NbdUnavailable`, `NotExt`, `ImageInUse`,
--- `CustomizeFailed`, `BuildFailed`, `NoKernel`, `PluginError`,
--- `NotAKernelTree`, `NotConfigured`, `KernelConfigError`,
--- `KernelBuildFailed`). `hint` names the fix for the known traps (qcow2
--- v3 on an old QEMU, snapshots on a raw disk, an image locked by another
--- QEMU, KVM that does not work, RCU stalls, a missing root fs, an illegal
--- instruction under TCG).
---
--- A few errors of the embedded C modules are plain Lua strings instead
--- (`qemu.json.encode`/`decode`, a closed console): `qemu.errors.is`
--- tells them apart.
---@field class string  the error's class: "BadArgument", "Timeout", QMP's "GenericError", ...
---@field desc string  what went wrong, in one sentence (QMP's own description for a QMP error)
---@field command string|nil  the call or command that failed: "qemu.launch", "vm:savevm", a QMP command's name, an HMP line, `console:run("...")`
---@field hint string|nil  the fix, when the error is a known trap
---@field where string|nil  the first place in your script on the way to the call: "script.lua:12"
---@field exit table|nil  QEMU's (or a helper program's) exit status `{code=, signal=, desc=}`, when it ended: QEMUExited, LaunchFailed, CommandFailed, KernelBuildFailed
---@field argv string[]|nil  the argv that failed: LaunchFailed from `qemu.launch`, KernelBuildFailed
---@field log string|nil  a log: the build log's path for kernel builds; QEMU's log text when a restore's machine type is missing
local Error = {}
Error.__index = Error
Error.__name = "qemu.error"

function Error.__tostring(e)
  local parts = {}
  if e.where then parts[#parts + 1] = e.where .. ": " end
  if e.command then parts[#parts + 1] = e.command .. ": " end
  parts[#parts + 1] = e.desc or "unknown error"
  if e.class then parts[#parts + 1] = " (" .. e.class .. ")" end
  if e.hint then parts[#parts + 1] = "; hint: " .. e.hint end
  return table.concat(parts)
end

-- Library frames have chunk names "=qemu/..."; C frames "=[C]".
local function user_frame(level)
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    local src = info.source
    if not (src:sub(1, 6) == "=qemu/" or src == "=[C]") then
      if info.currentline and info.currentline > 0 then
        return info.short_src .. ":" .. info.currentline
      end
      return info.short_src
    end
    level = level + 1
  end
end

---@api qemu.errors.new qemu.errors.new(fields) -> err
--- Makes an error object of `fields`, without raising it.
--- The table itself becomes the error (it gets the error metatable, so
--- `tostring` gives one line), and `where` is set to the caller's place in
--- the script unless given. Raise it later with `error(err, 0)`.
---
---     local e = qemu.errors.new { class = "BadResults", command = "mycheck", desc = "no rows" }
---     print(e)   --> script.lua:3: mycheck: no rows (BadResults)
---
---@param fields table  `{class=, desc=, command=, hint=, ...}`; `desc` is required
---@return qemu.error err  the same table, now an error object
function M.new(t)
  assert(type(t) == "table" and t.desc, "errors.new needs {desc=}")
  t.where = t.where or user_frame(3)
  return setmetatable(t, Error)
end

-- Functions that may replace an error about to be raised with a truer one
-- (t -> a new table, or nil): the lua plugin's, for "QEMU ended" after its
-- script failed.
M.explainers = {}

---@api qemu.errors.raise qemu.errors.raise(fields)
--- Raises an error object made of `fields`, as qshell's own calls do.
--- The table itself becomes the error, with `where` set to the caller's
--- place in the script unless given; it is raised without Lua's position
--- prefix (level 0), so an uncaught one prints its one line. Use it in a
--- script or sweep to fail with a class a caller can test with
--- `qemu.errors.is`.
---
---     if out ~= "ok" then
---       qemu.errors.raise { class = "CommandFailed", command = "self-test", desc = "the guest said " .. out }
---     end
---
---@param fields table  `{class=, desc=, command=, hint=, ...}`: at least `class` and `desc`
function M.raise(t)
  for _, explain in ipairs(M.explainers) do
    local better = explain(t)
    if better then
      t = better
      break
    end
  end
  t.where = t.where or user_frame(3)
  error(setmetatable(t, Error), 0)
end

---@api qemu.errors.is qemu.errors.is(e [, class]) -> boolean
--- Whether a value caught with `pcall` is a qshell error object, of that class if one is given.
--- A plain Lua error (a string) is not.
---
---     local ok, e = pcall(vm.console.run, vm.console, "make", { timeout = 600 })
---     if not ok and qemu.errors.is(e, "Timeout") then print("too slow:", e.desc) end
---
---@param e any  the caught error value
---@param class? string  the class it must have ("Timeout", "GenericError", ...); nil: any class
---@return boolean yes  true when `e` is an error object (of that class)
function M.is(e, class)
  return getmetatable(e) == Error and (class == nil or e.class == class)
end

-- Known traps: a pattern of QEMU's (or the guest's) text -> the fix.
M.traps = {
  { "QCOW version 3",
    'the image is qcow2 v3 (compat 1.1); for an older QEMU run qemu.disk.amend(path, {compat="0.10"})' },
  { "writable but does not support snapshots",
    'a writable disk is not qcow2: convert it with qemu.disk.convert(src, dst, {format="qcow2"}) or attach it readonly' },
  { "no block device can store vmstate",
    "internal snapshots need a writable qcow2 disk: attach one (qemu.disk.create(path, \"1G\"))" },
  { "Failed to get shared \"write\" lock",
    "the image is in use by another QEMU: quit that VM, or use qemu.disk.overlay(base, path) for a copy-on-write layer" },
  { "Failed to get \"write\" lock",
    "the image is in use by another QEMU: quit that VM, or use qemu.disk.overlay(base, path) for a copy-on-write layer" },
  { "failed to initialize kvm",
    'KVM is not usable here: use accel="tcg" (or accel="auto")' },
  { "Could not access KVM kernel module",
    'KVM is not usable here: use accel="tcg" (or accel="auto")' },
  { "self%-detected stall",
    "RCU stall warnings under slow emulation: add icount={shift=\"auto\"} (or a fixed shift) to qemu.launch" },
  { "Unable to mount root fs",
    "check root= in append and the disk interface (IDE disks are /dev/sdX once ata_piix and sd_mod are loaded; virtio is /dev/vdX)" },
  { "Could not allocate block",
    "the filesystem is too small for the files: give a larger size= (or leave size out to size it from the directory)" },
  { "invalid opcode",
    "an illegal instruction under TCG: the guest code uses a CPU feature TCG lacks; pick cpu=\"max\" or build the guest code without AVX (-mno-avx)" },
}

---@api qemu.errors.hint_for qemu.errors.hint_for(text) -> hint
--- The fix for a known trap that a piece of QEMU's or the guest's text shows, or nil.
--- The traps (in `qemu.errors.traps`): a qcow2 v3 image on an old QEMU, a
--- writable disk that is not qcow2 under snapshots, no disk to hold a
--- snapshot, an image locked by another QEMU, KVM not usable, RCU stall
--- warnings, a missing root file system, a file system too small for its
--- files, an illegal instruction under TCG, and (once `qemu.plugin` is
--- loaded) QEMU's plugin load errors.
--- The first trap found in the text answers. qshell's errors carry the hint
--- already (`e.hint`); this is for text a script reads itself (a log, a
--- console tail).
---
---     local h = qemu.errors.hint_for(vm.console:tail(40))
---     if h then print("hint: " .. h) end
---
---@param text string  the text to look at (anything else gives nil)
---@return string|nil hint  the fix, or nil when the text shows no known trap
function M.hint_for(text)
  if type(text) ~= "string" then return nil end
  for _, trap in ipairs(M.traps) do
    if text:find(trap[1]) then return trap[2] end
  end
  return nil
end

-- HMP failures arrive as successful replies: recognise them (vm:hmp, and
-- the snapshot commands of a QEMU without snapshot jobs).
local hmp_errors = {
  "^Error",
  "^unknown command",
  "^Unknown command",
  "^Parameter '.-' expects",
  "^invalid ",
  "^Invalid ",
  "^Could not ",
  "^Device '.-' not found",
  "^Snapshot '.-' does not exist",
}

---@api qemu.errors.hmp_failed qemu.errors.hmp_failed(text) -> boolean
--- Whether an HMP reply's text is an error message.
--- QEMU answers a failed HMP command with a successful QMP reply whose text
--- is the error ("Error: ...", "unknown command: ...", "Could not ...");
--- `vm:hmp` raises `HMPError` for these, and this is its test.
---@param text string  the reply text of `human-monitor-command`
---@return boolean failed  true when the text is an error
function M.hmp_failed(text)
  for _, p in ipairs(hmp_errors) do
    if text:find(p) then return true end
  end
  return false
end

return M
