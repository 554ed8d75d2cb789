-- qemu.vm.delegated: the VM methods whose work is in modules of their own:
-- internal snapshots (vm/snapshot.lua), checkpoints (checkpoint/make.lua),
-- regions of interest (vm/roi.lua), the plugins' output, and the console
-- in this terminal.  install(VM) adds them to the VM class (qemu.vm calls
-- it), so vm/init.lua keeps the VM's core: QMP, events, run state, the
-- process.  Each body loads its module on first use.

local errors = require "qemu.errors"
local check = require "qemu.util.check"

local M = {}

function M.install(VM)


-- Snapshots (stdlib/qemu/vm/snapshot.lua): internal snapshots in the VM's
-- qcow2 images, through QMP jobs or HMP with its errors caught.

---@api vm:savevm vm:savevm(tag [, {replace=false, timeout=600}])
--- Saves the VM's state and every writable disk as an internal snapshot.
--- The snapshot lives in the VM's qcow2 images: the VM state goes into the
--- first writable disk, and every writable disk must be qcow2 (read-only
--- disks are left out). An existing tag is refused (nothing is lost by a
--- typo) unless `replace=true`, which deletes the old snapshot before saving
--- (QEMU cannot rename snapshots, so a save that then fails leaves neither).
--- QEMU's `snapshot-save` job is used where QEMU has it (6.0+), HMP
--- `savevm` with its error text caught otherwise; the snapshot is then
--- looked for in the image either way. Tags may not be empty, all digits,
--- longer than 127 bytes, or contain spaces, quotes, commas, semicolons,
--- backslashes or control characters. `-loadvm` (`qemu.launch{loadvm=}`)
--- starts a later VM from the snapshot.
---
---     vm:savevm("warm")
---     -- ... experiment ...
---     vm:loadvm("warm")
---
---@param tag string  the snapshot's name
---@param options? table  `replace=` (boolean, default false): replace a snapshot of that tag;
---   `timeout=` (number >= 0): seconds the save may take (default 600)
---@error SnapshotExists  the tag exists and `replace` is not true (nothing was changed)
---@error SnapshotUnsupported  a writable disk is not qcow2, or there is no writable disk (the hint names the fix)
---@error SnapshotFailed  QEMU failed to save, or reported success without the snapshot in the image
---@error BadArgument  a tag that is not allowed, a bad option; the VM is closed
---@error QEMUExited  QEMU has ended
---@error Timeout  the save did not finish within the timeout
function VM:savevm(tag, opts) return require("qemu.vm.snapshot").savevm(self, tag, opts) end

---@api vm:loadvm vm:loadvm(tag [, {timeout=600}])
--- Loads an internal snapshot: the VM's state and disks as `vm:savevm` saved them.
--- A missing tag raises before the VM is touched. If QEMU fails part way,
--- the error says the VM's state (left stopped: load another snapshot, or
--- `vm:cont()` to go on from an undefined state). Console output from before
--- the load is dropped. The VM runs afterwards if it ran before.
---
---     vm:loadvm("warm")
---     vm.console:run("cat /proc/uptime")
---
---@param tag string  the snapshot's name
---@param options? table  `timeout=` (number >= 0): seconds the load may take (default 600)
---@error SnapshotNotFound  no snapshot of that tag (the VM was not touched; the message lists the tags there are)
---@error SnapshotFailed  QEMU failed to load it (the message says whether the VM is left stopped)
---@error SnapshotUnsupported  a writable disk is not qcow2, or there is no writable disk
---@error BadArgument  a tag that is not allowed, a bad option; the VM is closed
---@error QEMUExited  QEMU has ended
---@error Timeout  the load did not finish within the timeout
function VM:loadvm(tag, opts) return require("qemu.vm.snapshot").loadvm(self, tag, opts) end

---@api vm:delvm vm:delvm(tag [, {timeout=600}])
--- Deletes an internal snapshot from every writable disk.
--- A missing tag is an error; the deletion is checked in the image.
---
---     vm:delvm("warm")
---
---@param tag string  the snapshot's name
---@param options? table  `timeout=` (number >= 0): seconds the deletion may take (default 600)
---@error SnapshotNotFound  no snapshot of that tag
---@error SnapshotFailed  QEMU failed to delete it, or it is still in the image
---@error SnapshotUnsupported  a writable disk is not qcow2, or there is no writable disk
---@error BadArgument  a tag that is not allowed, a bad option; the VM is closed
---@error QEMUExited  QEMU has ended
---@error Timeout  the deletion did not finish within the timeout
function VM:delvm(tag, opts) return require("qemu.vm.snapshot").delvm(self, tag, opts) end

---@api vm:snapshots vm:snapshots() -> list
--- The internal snapshots of the VM, as QEMU sees them in the disk that holds the VM state.
--- That disk is the first writable one (as for `vm:savevm`); the list is in
--- the order of the snapshots' ids.
---
---     for _, s in ipairs(vm:snapshots()) do print(s.tag, os.date("%c", s.date), s.vm_size) end
---
---@return table[] list  each `{tag=, id=, vm_size=, date=, vm_clock=, icount=}`: `vm_size` the VM state's
---   bytes, `date` seconds since the epoch, `vm_clock` the guest's clock in seconds, `icount` the instruction
---   count (nil when QEMU did not record one)
---@error SnapshotUnsupported  a writable disk is not qcow2, or there is no writable disk
---@error BadArgument  the VM is closed
---@error QEMUExited  QEMU has ended
function VM:snapshots() return require("qemu.vm.snapshot").snapshots(self) end

-- Checkpoints (stdlib/qemu/checkpoint/): the VM state, its RAM and frozen
-- disks in a directory that qemu.launch{restore=} starts from.

---@api vm:checkpoint vm:checkpoint(dir [, {force=false, resume=false, timeout=600, shared_base=false}]) -> dir
--- Saves the running machine into a self-contained directory that `qemu.launch{restore=dir}` starts from.
--- The VM is paused (QEMU flushes its disks), and at once: the guest's RAM
--- is copied into `dir/ram` on every core (sparse: pages never used or zero
--- stay holes), QEMU saves the devices into `dir/state` (a few hundred KB:
--- the RAM is left out of the stream), `qemu-img` copies every disk into
--- `dir` as a compact qcow2 with no backing file outside (the chain
--- flattened, internal snapshots left out), and the kernel and initrd are
--- copied in. `dir/manifest.json` records the launch options, the QEMU
--- version, the machine type QEMU resolved (`pc-i440fx-7.2`), the RAM, and
--- every file's size, mtime and SHA-256 (the RAM file's as `sha256_chunks`:
--- the SHA-256 of the SHA-256 digests of its 4 MiB chunks), by relative
--- paths only, so the directory can be moved or copied anywhere. Its files
--- are read-only (0444) but the RAM file (0644: QEMU 7.2 maps a RAM file
--- only when it may open it read-write; it never writes it). The RAM
--- file's digest can be checked by hand:
---
---     split -b 4M -d -a 6 ram c. && for f in c.*; do sha256sum $f | head -c 64 | xxd -r -p; done | sha256sum
---
--- VMs restored from one checkpoint share its RAM file (mapped
--- copy-on-write): N runs hold one copy of the pages they read. A VM whose
--- RAM this shell does not hold (`vm.ram.backing` other than "memfd") has
--- its RAM in the state stream instead, and restores copy it.
---
--- The checkpoint is built in a directory beside `dir` and moved in when
--- complete: a failed checkpoint (its migration cancelled, the VM resumed)
--- leaves an old one whole. The VM stays paused ("postmigrate") unless
--- `resume=true`. Missing parent directories are made. On a terminal it
--- prints the checkpoint's size and the time it took.
---
---     local vm <close> = qemu.guest.launch {}
---     vm.console:run("./warm-up.sh")
---     vm:checkpoint("warm.ckpt")
---     local a <close> = qemu.launch { restore = "warm.ckpt" }
---
---@param dir string  the checkpoint's directory (made if missing; it must be empty unless `force=true`)
---@param options? table  `force=` (boolean, default false): replace what `dir` holds (not the checkpoint this VM runs from);
---   `resume=` (boolean, default false): run the VM again afterwards (else it stays paused, "postmigrate");
---   `timeout=` (number >= 0): seconds the state may take to save (default 600);
---   `shared_base=` (boolean, default false): a disk whose image has a backing file keeps only its differences,
---   and its base stays outside the checkpoint, recorded by path, size, mtime and SHA-256 (small checkpoints
---   that share a large base)
---@return string dir  the checkpoint's directory, as given
---@error FileExists  `dir` is not empty and `force` is not true (nothing was changed)
---@error BadArgument  dir is not a string or is empty, or is a file; a bad option; an attached VM (its launch
---   options are unknown); a `snapshot=true` disk; `force=true` on the checkpoint the VM itself runs from; the VM
---   is closed
---@error QEMUExited  QEMU has ended, or went away meanwhile
---@error CheckpointFailed  QEMU's migration of the state failed or was cancelled, or a file was not written whole
---@error CommandFailed  `qemu-img` failed to copy a disk
---@error Timeout  the state was not saved within the timeout
---@error IOError  a file operation in `dir` failed
function VM:checkpoint(dir, opts) return require("qemu.checkpoint.make").make(self, dir, opts) end

-- Regions of interest (stdlib/qemu/vm/roi.lua): the guest's ROI markers, as
-- the VM's insn (or hotblocks) plugin reports them.

---@api vm:wait_roi vm:wait_roi([id [, {timeout=600, event="end"}]]) -> event
--- Waits until the guest runs a region-of-interest marker, and returns its event.
--- The guest marks a region with `qshell-roi begin ID` / `qshell-roi end ID`
--- (or `QSHELL_ROI_BEGIN(ID)` / `QSHELL_ROI_END(ID)` from `qshell-roi.h`);
--- the VM's `insn` (else `hotblocks`) plugin reports each marker the moment
--- it runs, without the console being read. Events come in order and each is
--- taken once: a marker that ran before the call is found in the queue.
--- `insn` reports counts: `insns` is this entry's instructions (between the
--- markers, over every vCPU), `total` the region's so far; `hotblocks`
--- reports `{roi=, event=, vcpu=}` only, and begin events have no counts.
--- A VM that is not running is said at once (`NotRunning`), and again every
--- 2 s of waiting.
---
---     local vm <close> = qemu.guest.launch { plugins = { { name = "insn" } } }
---     vm.console:send("qshell-roi begin 1; ./bench; qshell-roi end 1\r")
---     print(vm:wait_roi(1).insns)   -- the workload's instructions, nothing of the boot
---
---@param id? integer  the region's id, 0..65535; nil: any region
---@param options? table  `timeout=` (number >= 0): seconds to wait (default 600);
---   `event=` (string): "end" (default) or "begin"
---@return table event  `{roi=, event=, vcpu=, insns=, total=}` (`insns` and `total` on insn's end events only)
---@error Timeout  no such marker ran within the timeout (the hint says to check the markers)
---@error QEMUExited  QEMU ended before the marker ran
---@error NotRunning  the VM is paused or stopped (QEMU's run state and the fix are named)
---@error BadArgument  an id outside 0..65535, a bad option; the VM has no `insn` or `hotblocks` plugin to report markers; the VM is closed
---@error Interrupted  Ctrl-C while waiting
function VM:wait_roi(id, opts)
  if self._gate then
    -- exact console: an event already in is taken without letting a held
    -- guest run on; else the guest must run for it
    local ok, ev = pcall(require("qemu.vm.roi").wait, self, id,
                         { timeout = 0, event = type(opts) == "table" and opts.event or nil })
    if ok then return ev end
    require("qemu.vm.gate").release(self)
  end
  return require("qemu.vm.roi").wait(self, id, opts)
end

---@api vm:roi_events vm:roi_events() -> list
--- The ROI events received so far and not taken by `vm:wait_roi`, in order; they are forgotten.
--- Reads what the plugin has reported without waiting.
---
---     for _, e in ipairs(vm:roi_events()) do print(e.roi, e.event, e.insns) end
---
---@return table[] list  the events, each `{roi=, event="begin"|"end", vcpu=, insns=, total=}`
---@error BadArgument  the VM has no `insn` or `hotblocks` plugin to report markers, or it is closed
function VM:roi_events() return require("qemu.vm.roi").events(self) end

---@api vm:plugin_log vm:plugin_log() -> text
--- The text the VM's TCG plugins printed so far (`qemu_plugin_outs`).
--- QEMU prints that text only with `-d plugin`: `qemu.launch{plugins=}`
--- sends it to a file of the VM's own, read here. QEMU's contrib plugins
--- print their reports there when QEMU exits (read it after `vm:quit()` or
--- `vm:wait()`, before `vm:close()`).
---
---     vm:quit()
---     print(vm:plugin_log())
---
---@return string text  the plugins' output ("" when they printed nothing yet)
---@error BadArgument  the VM was launched without plugins, or it is closed
function VM:plugin_log()
  if not self._plugin_log then check.bad("vm:plugin_log", "this VM has no plugins") end
  if self._closed then check.bad("vm:plugin_log", "%s is closed (read it before vm:close())", tostring(self)) end
  local f = io.open(self._plugin_log, "rb")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

---@api vm:plugin_result vm:plugin_result(name) -> result
--- A plugin's result, as a table: its JSON `out=` file, or a contrib plugin's report.
--- Plugins write their results when QEMU exits: read it after `vm:quit()`,
--- `vm:wait()` or `vm:kill()`, before `vm:close()`. The project's plugins
--- (`insn`, `hotblocks`) write JSON to an `out=` file in the VM's temp dir;
--- so does any plugin given an `out=` argument. QEMU's contrib plugins
--- `cache`, `execlog`, `howvec` and `hotpages` print a text report into the
--- plugin log, which is parsed (`qemu.plugin.parse`). For the `lua` plugin
--- (`qemu.plugin.lua`) it is what the script's `plugin.on_exit` function
--- returned (the counters by name when it returned nothing), and a script
--- that failed raises `PluginError` with its `script:line: message`.
---
---     local vm <close> = qemu.guest.launch { plugins = { { name = "insn" } } }
---     vm.console:send("poweroff -f\r")
---     vm:wait()
---     print(vm:plugin_result("insn").total)
---
---@param name string  the plugin's `name=`, or for a `path=` plugin its file name ("libcache.so") or its contrib name ("cache")
---@return table result  the decoded JSON result, or the parsed report
---@error PluginError  the plugin wrote no result (QEMU still running?), its result is not JSON, or its report cannot be read from the log; a lua plugin's script failed
---@error BadArgument  name is not a string; no plugin of that name with an `out=` file or a report qshell reads; the VM is closed
function VM:plugin_result(name)
  check.arg("vm:plugin_result", 1, name, "string")
  for _, p in ipairs(self.plugins or {}) do
    if p.name == name and p.out then
      local f = io.open(p.out, "rb")
      if not f then
        errors.raise { class = "PluginError", command = "vm:plugin_result",
                       desc = string.format("plugin %s wrote no result to %s%s", name, p.out,
                                            self._exit and "" or " (QEMU is still running: results are written at exit)") }
      end
      local text = f:read("a")
      f:close()
      local ok, v = pcall(require("qshell.json").decode, text)
      if not ok then
        errors.raise { class = "PluginError", command = "vm:plugin_result",
                       desc = string.format("plugin %s's result %s is not JSON: %s", name, p.out, tostring(v)) }
      end
      if name == "lua" then return require("qemu.plugin.lua").result(v, "vm:plugin_result") end
      return v
    end
  end
  -- QEMU's contrib plugins print their report into the plugin log: read it there.
  local pb = require "qemu.plugin.build"
  for _, p in ipairs(self.plugins or {}) do
    local parser = pb.parser_name(p.path)
    if not p.out and (p.name == name or parser == pb.parser_name(name)) and pb.parsers[parser] then
      return pb.result(self:plugin_log(), p.path)
    end
  end
  check.bad("vm:plugin_result", "no plugin named %s with an out= file or a report this shell reads in this VM", name)
end

---@api vm:plugin_events vm:plugin_events() -> list
--- The events the VM's lua plugin script emitted (`plugin.emit(t)`) and no call has taken yet, oldest first.
--- Reads what the plugin has written without waiting; the events are forgotten. Each is the table the script
--- emitted, as JSON carries it. Nothing is lost: the plugin appends each event to a file in the VM's temp dir.
---
---     for _, ev in ipairs(vm:plugin_events()) do print(ev.pc, ev.syscall) end
---
---@return table list  the events
---@error BadArgument  the VM has no lua plugin, or it is closed
function VM:plugin_events() return require("qemu.plugin.lua").events(self) end

---@api vm:wait_plugin_event vm:wait_plugin_event([match [, {timeout=600}]]) -> event
--- Waits until the lua plugin's script emits an event whose fields contain `match`, and returns it.
--- Events already emitted are looked at first; each is taken once. `match` is a subset match, recursively, as
--- `vm:wait_event`'s. When QEMU ends first: `PluginError` if the script failed, else `QEMUExited`.
---
---     vm.console:send("./workload\r")
---     local ev = vm:wait_plugin_event({ kind = "syscall", nr = 231 })   -- exit_group
---
---@param match? table  fields the event must have (default: any event)
---@param options? table  `timeout=` (number >= 0): seconds to wait (default 600)
---@return table event  the event as the script emitted it
---@error Timeout  no such event within the timeout
---@error PluginError  the script failed (its `script:line: message`); it stopped QEMU
---@error QEMUExited  QEMU ended before such an event
---@error BadArgument  match is not a table, a bad option; the VM has no lua plugin, or it is closed
function VM:wait_plugin_event(match, opts) return require("qemu.plugin.lua").wait(self, match, opts) end

---@api vm:attach vm:attach()
--- Puts the guest's serial console in this terminal, until Ctrl-] returns.
--- The terminal is in raw mode meanwhile (restored on every path): what you
--- type goes to the guest, Ctrl-C included. The guest's shell is sent
--- `stty rows R cols C` so full-screen programs fit, but only while its
--- prompt (the `prompt=` of the last `vm.console:login`, else "# ") is the
--- last thing it printed: a window resized while `less` or `vi` runs is told
--- to the shell when its prompt is back, never typed into the program. The
--- same as `vm.console:attach()`.
---
---     vm:attach()   -- [attached to vm1's console; Ctrl-] returns]
---
---@error BadArgument  the VM has no captured console (`console=false`, an attached VM), or it is closed
---@error QEMUExited  QEMU has ended, or went away while attached
---@error IOError  the terminal cannot be put in raw mode
function VM:attach()
  self:_live("vm:attach")
  if not self.console then check.bad("vm:attach", "this VM has no captured console (console=false)") end
  self.console:attach()
end

end

return M
