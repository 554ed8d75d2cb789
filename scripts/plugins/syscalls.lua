-- syscalls.lua (runs inside QEMU, in the lua plugin): the system calls the
-- guest makes inside region of interest plugin.args.roi: each `syscall`
-- instruction executed, and on QEMU 9.0+ its number (rax).
local roi = plugin.args.roi or 1
local inside, calls, by_nr, no_regs = false, 0, {}, nil

plugin.on_roi(function(id, event)
  if id == roi then inside = event == "begin" end
end)

plugin.on_translate(function(tb)
  for i = 1, tb.n do
    local insn = tb:insn(i)
    if insn.disas:match("^syscall") then
      insn:on_exec(function(vcpu)
        if not inside then return end
        calls = calls + 1
        local ok, nr = pcall(plugin.read_register, vcpu, "rax")
        if ok then
          by_nr[nr] = (by_nr[nr] or 0) + 1
        else
          no_regs = nr          -- QEMU before 9.0: no register access
        end
      end)
    end
  end
end)

plugin.on_exit(function()
  local list = {}
  for nr, n in pairs(by_nr) do list[#list + 1] = { nr = nr, calls = n } end
  table.sort(list, function(a, b) return a.calls > b.calls or (a.calls == b.calls and a.nr < b.nr) end)
  return { calls = calls, by_nr = list, no_regs = no_regs }
end)
