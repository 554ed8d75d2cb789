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

-- The short codes the C glue returns (nil, msg, code) -> the class a
-- public call raises.  "closed" depends on what closed: callers that know
-- (QEMU went away) raise QEMUExited themselves.
local CODE_CLASS = {
  interrupted = "Interrupted", timeout = "Timeout", exec = "LaunchFailed", io = "IOError",
  protocol = "ProtocolError", closed = "IOError", exists = "FileExists",
}

-- M.class_for(code [, overrides]) -> class; overrides maps codes to the
-- class a caller wants instead (e.g. {exec="MissingTool"}).
function M.class_for(code, overrides)
  return (overrides and overrides[code]) or CODE_CLASS[code] or "IOError"
end

-- M.from_code(command, msg, code [, fields]): raise the error for a code
-- of the C glue; fields (hint=, class overrides as overrides=) add to it.
function M.from_code(command, msg, code, fields)
  local t = {}
  for k, v in pairs(fields or {}) do t[k] = v end
  t.class = M.class_for(code, t.overrides)
  t.overrides = nil
  t.command = command
  t.desc = t.desc or (code == "interrupted" and "interrupted!" or msg)
  M.raise(t)
end

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

function M.new(t)
  assert(type(t) == "table" and t.desc, "errors.new needs {desc=}")
  t.where = t.where or user_frame(3)
  return setmetatable(t, Error)
end

function M.raise(t)
  t.where = t.where or user_frame(3)
  error(setmetatable(t, Error), 0)
end

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

function M.hmp_failed(text)
  for _, p in ipairs(hmp_errors) do
    if text:find(p) then return true end
  end
  return false
end

return M
