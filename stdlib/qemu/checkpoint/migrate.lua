-- qemu.checkpoint.migrate: the QEMU migration steps that making and
-- restoring a checkpoint share: capabilities, the URI of a state file
-- passed as an fd, and waiting for the migration to end.

local errors = require "qemu.errors"

local M = {}

-- M.caps(vm, {name=bool, ...}): set migration capabilities in one command.
function M.caps(vm, caps)
  local list = {}
  for name, state in pairs(caps) do list[#list + 1] = { capability = name, state = state } end
  table.sort(list, function(a, b) return a.capability < b.capability end)
  vm:qmp("migrate-set-capabilities", { capabilities = list })
end

-- The URI of a state file QEMU holds as fd n (passed at its start): an fd
-- set through -add-fd on 8.2+ ("fd:" to a file is deprecated from 9.1),
-- "fd:N" before.  Returns the uri and the arguments to add before it.
function M.fd_uri(version, n)
  if version.file_migration then
    return "file:/dev/fdset/" .. n, { "-add-fd", string.format("fd=%d,set=%d", n, n) }
  end
  return "fd:" .. n, {}
end

-- M.wait(vm, what, timeout): wait for the MIGRATION event that ends the
-- migration (the "events" capability on); raise unless it completed.
function M.wait(vm, what, timeout, class)
  local ev = vm:_wait_event("MIGRATION", { timeout = timeout, match = { data = {} } })
  while ev.data.status ~= "completed" and ev.data.status ~= "failed" and ev.data.status ~= "cancelled" do
    ev = vm:_wait_event("MIGRATION", { timeout = timeout })
  end
  if ev.data.status ~= "completed" then
    local ok, info = pcall(vm.qmp, vm, "query-migrate")
    local why = ok and info["error-desc"]
    errors.raise { class = class or "CheckpointFailed", command = what,
                   desc = "migration " .. ev.data.status .. (why and (": " .. why) or "") }
  end
end

return M
