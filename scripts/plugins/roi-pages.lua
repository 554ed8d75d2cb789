-- roi-pages.lua (runs inside QEMU, in the lua plugin): the guest-virtual
-- pages region of interest plugin.args.roi reads and writes, with the
-- accesses to each.
local roi = plugin.args.roi or 1
local inside, pages, loads, stores = false, {}, 0, 0

plugin.on_roi(function(id, event)
  if id == roi then inside = event == "begin" end
end)

plugin.on_translate(function(tb)
  for i = 1, tb.n do
    tb:insn(i):on_mem(function(vcpu, vaddr, is_store, size)
      if not inside then return end
      -- (addresses are Lua integers: the kernel's upper half is negative,
      -- and // keeps the sign where >> would not)
      local page = vaddr // 4096
      local p = pages[page]
      if not p then
        p = { 0, 0 }
        pages[page] = p
      end
      if is_store then
        p[2] = p[2] + 1
        stores = stores + 1
      else
        p[1] = p[1] + 1
        loads = loads + 1
      end
    end)
  end
end)

plugin.on_exit(function()
  local user, kernel, hot = 0, 0, {}
  for page, p in pairs(pages) do
    if page < 0 then kernel = kernel + 1 else user = user + 1 end
    hot[#hot + 1] = { page = string.format("0x%x", page * 4096), loads = p[1], stores = p[2] }
  end
  table.sort(hot, function(a, b) return a.loads + a.stores > b.loads + b.stores end)
  for i = #hot, 11, -1 do hot[i] = nil end
  return { pages = user + kernel, user_pages = user, kernel_pages = kernel, loads = loads, stores = stores, top = hot }
end)
