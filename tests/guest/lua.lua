-- Instrumentation in Lua (qemu.plugin.lua, plugins/lua.c): a script run
-- inside QEMU counts as insn does, gets its callbacks (blocks, instructions,
-- memory, ROI markers), emits events the host waits on, returns a result;
-- its errors stop the VM and reach the host as PluginError; with two vCPUs
-- its callbacks never run at once.
local T = require "t"

local json = require "qshell.json"
local fs = require "qemu.util.fs"

local tmp = T.tmpdir()
local ckpt = tmp .. "/prompt.ckpt"
do
  local vm <close> = qemu.guest.launch {}
  vm.console:run("qshell-roi begin 9; qshell-roi end 9; ls / >/dev/null; true")
  vm:checkpoint(ckpt)
end
local api2 = qemu.version().plugin_api.cur >= 2

local function live_qemu()
  local _, out = T.sh("pgrep -f '^qemu-system-x86_64' | while read p; do grep -qz TMPDIR=" ..
                      (os.getenv("TMPDIR") or "/tmp") .. " /proc/$p/environ 2>/dev/null && echo $p; done")
  return out
end

T.test("counters: tb:count's total is insn's; insn:count per instruction; args; on_exit's result", function()
  local spec = qemu.plugin.lua([[
    plugin.on_translate(function(tb)
      tb:count("insns", tb.n)
      tb:count("blocks")
      for i = 1, tb.n do tb:insn(i):count("each") end
    end)
    plugin.on_exit(function()
      return { insns = plugin.counter("insns"), each = plugin.counter("each"), blocks = plugin.counter("blocks"),
               vcpu0 = plugin.counter("insns", 0), none = plugin.counter("never"), args = plugin.args }
    end)
  ]], { name = "mix", sizes = { 1, 2.5 }, on = true })
  local vm <close> = qemu.launch { restore = ckpt, plugins = { spec, { name = "insn" } } }
  local out, st = vm.console:run("ls / | wc -l")
  T.eq(st, 0)
  T.match(out, "%d")
  vm:quit()
  local r = vm:plugin_result("lua")
  local total = vm:plugin_result("insn").total
  T.eq(r.insns, total, "tb:count(n) per block is insn's count")
  T.eq(r.vcpu0, r.insns, "one vCPU: its count is the total")
  T.ok(r.each <= r.insns and r.each > r.insns * 0.999,
       string.format("per instruction %d vs per block %d (a block left early counts whole)", r.each, r.insns))
  T.ok(r.blocks > 0 and r.blocks < r.insns, "blocks counted")
  T.eq(r.none, 0, "a counter never added to reads 0")
  T.eq(r.args.name, "mix")
  T.eq(r.args.on, true)
  T.eq(#r.args.sizes, 2)
  T.eq(r.args.sizes[2], 2.5)
end)

T.test("callbacks: on_exec per block, on_mem per access, instruction fields, on_roi; events while running", function()
  local spec = qemu.plugin.lua([[
    local execs, loads, stores, sizes, first, active = 0, 0, 0, {}, nil, false
    plugin.on_roi(function(id, event, vcpu)
      active = event == "begin"
      plugin.emit({ kind = "roi", id = id, event = event, vcpu = vcpu })
    end)
    plugin.on_translate(function(tb)
      if not active then return end
      tb:count("blocks")
      tb:on_exec(function(vcpu) execs = execs + 1 end)
      for i = 1, tb.n do
        local insn = tb:insn(i)
        if not first then
          first = { vaddr = insn.vaddr, size = insn.size, nbytes = #insn.bytes, disas = insn.disas,
                    tb_vaddr = tb.vaddr, symbol = insn.symbol }
        end
        insn:on_mem(function(vcpu, vaddr, is_store, size)
          if is_store then stores = stores + 1 else loads = loads + 1 end
          sizes[size] = true
        end)
      end
    end)
    plugin.on_exit(function()
      local s = {}
      for k in pairs(sizes) do s[#s + 1] = k end
      table.sort(s)
      return { execs = execs, blocks = plugin.counter("blocks"), loads = loads, stores = stores, sizes = s,
               first = first }
    end)
  ]])
  local vm <close> = qemu.launch { restore = ckpt, plugins = { spec } }
  vm.console:run("qshell-roi begin 4; md5sum /bin/ls; qshell-roi end 4")
  local ev = vm:wait_plugin_event({ kind = "roi", event = "end" }, { timeout = 30 })
  T.eq(ev.id, 4)
  local evs = vm:plugin_events()
  T.eq(#evs, 1, "the begin event stayed in the queue")
  T.eq(evs[1].event, "begin")
  T.eq(vm:wait_roi(4).event, "end", "the lua plugin alone reports ROI markers to vm:wait_roi")
  vm:quit()
  local r = vm:plugin_result("lua")
  T.ok(r.blocks > 1000, "blocks ran in the ROI: " .. r.blocks)
  T.eq(r.execs, r.blocks, "a callback per executed block, as many as the inline counter")
  T.ok(r.loads > r.blocks and r.stores > 1000, string.format("loads %d, stores %d", r.loads, r.stores))
  for _, s in ipairs(r.sizes) do T.ok(s == 1 or s == 2 or s == 4 or s == 8 or s == 16, "access size " .. s) end
  T.eq(r.first.tb_vaddr, r.first.vaddr, "a block's first instruction is at its address")
  T.eq(r.first.nbytes, r.first.size)
  T.ok(#r.first.disas > 0, "disassembly")
end)

T.test("errors: not Lua refused before QEMU; a load error fails the launch; a callback's error stops the VM", function()
  local e = T.raises(function() qemu.plugin.lua("plugin.on_exit(function() return {} end") end, "PluginError")
  T.match(e.desc, "not valid Lua")
  T.match(e.desc, "plugin script:1:")
  T.raises(function() qemu.plugin.lua("nosuch.lua") end, "BadArgument")
  T.raises(function() qemu.plugin.lua("return 1", { f = print }) end, "BadArgument")
  e = T.raises(function() qemu.launch { restore = ckpt, plugins = { qemu.plugin.lua("return 1"), qemu.plugin.lua("return 2") } } end,
               "BadArgument")
  T.match(e.desc, "one lua plugin per VM")
  local script = tmp .. "/bad.lua"
  fs.write(script, "local x = nil\nplugin.on_exit(function() return {} end)\nx.y = 1\n")
  e = T.raises(function() qemu.launch { restore = ckpt, plugins = { qemu.plugin.lua(script) } } end, "PluginError")
  T.match(e.desc, "while loading")
  T.match(e.desc, "bad%.lua:3:")
  -- a tb kept past its translation, used in a callback
  fs.write(script, [[
plugin.on_translate(function(tb)
  local kept = tb
  if tb.vaddr >= 0 then
    tb:on_exec(function(vcpu)
      local a = kept.vaddr
    end)
  end
end)
]])
  local vm <close> = qemu.launch { restore = ckpt, plugins = { qemu.plugin.lua(script) } }
  e = T.raises(function() vm.console:run("ls /", { timeout = 60 }) end, "PluginError")
  T.match(e.desc, "bad%.lua:5:")
  T.match(e.desc, "only usable inside the on_translate call")
  T.ok(vm:_exited(), "the VM was stopped")
  e = T.raises(function() vm:plugin_result("lua") end, "PluginError")
  T.match(e.desc, "bad%.lua:5:")
  vm:close()
  T.eq(live_qemu(), "", "no QEMU left")
end)

T.test("read_register: rax at each syscall on 9.0+, a clear error before", function()
  local spec = qemu.plugin.lua([[
    local nr, err = {}, nil
    plugin.on_translate(function(tb)
      for i = 1, tb.n do
        local insn = tb:insn(i)
        if insn.disas:match("^syscall") then
          insn:on_exec(function(vcpu)
            local ok, v = pcall(plugin.read_register, vcpu, "rax")
            if ok then nr[v] = (nr[v] or 0) + 1 else err = v end
          end)
        end
      end
    end)
    plugin.on_exit(function()
      local out = {}
      for k, n in pairs(nr) do out[tostring(k)] = n end
      return { nr = out, err = err }
    end)
  ]])
  local vm <close> = qemu.launch { restore = ckpt, plugins = { spec } }
  vm.console:run("cat /proc/version >/dev/null")
  vm:quit()
  local r = vm:plugin_result("lua")
  if api2 then
    T.eq(r.err, nil, "no error reading rax")
    T.ok((r.nr["0"] or 0) > 0 and (r.nr["1"] or 0) > 0, "read(0) and write(1) seen: " .. json.encode(r.nr))
    T.ok((r.nr["59"] or 0) >= 1, "execve (59) seen")
  else
    T.match(r.err, "needs QEMU 9%.0")
  end
end)

T.test("in a sweep from a checkpoint: the script's result per run in the rows", function()
  local out = tmp .. "/sweep.csv"
  local spec = qemu.plugin.lua([[
    plugin.on_translate(function(tb) tb:count("insns", tb.n) end)
    plugin.on_exit(function() return { insns = plugin.counter("insns"), tag = plugin.args.tag } end)
  ]], { tag = "t1" })
  local res = qemu.sweep {
    from = ckpt, out = out, workers = 1, progress = false, matrix = { n = { 10, 2000 } },
    launch = { plugins = { spec } },
    run = function(vm, p)
      local _, st = vm.console:run(string.format("i=0; while [ $i -lt %d ]; do i=$((i+1)); done", p.n))
      return { code = st }
    end,
  }
  T.eq(res.ok, 2)
  local rows = qemu.sweep.read(out)
  T.eq(#rows, 2)
  local by = {}
  for _, row in ipairs(rows) do
    T.eq(row.lua_tag, "t1")
    by[row.n] = row.lua_insns
  end
  T.ok(by[2000] > by[10] + 1e6, string.format("the longer loop counted more: %s vs %s", by[2000], by[10]))
end)

T.test("two vCPUs: callbacks never run at once (a Lua count equals the inline one); totals are insn's", function()
  -- restored, so that every block is translated afresh with the callbacks
  local ckpt2 = tmp .. "/smp2.ckpt"
  do
    local vm <close> = qemu.guest.launch { smp = 2 }
    vm.console:run("true")
    vm:checkpoint(ckpt2)
  end
  local spec = qemu.plugin.lua([[
    local execs = 0
    plugin.on_translate(function(tb)
      tb:count("insns", tb.n)
      tb:count("blocks")
      tb:on_exec(function(vcpu) execs = execs + 1 end)
    end)
    plugin.on_exit(function()
      return { execs = execs, blocks = plugin.counter("blocks"), insns = plugin.counter("insns"),
               v0 = plugin.counter("insns", 0), v1 = plugin.counter("insns", 1) }
    end)
  ]])
  local vm <close> = qemu.launch { restore = ckpt2, plugins = { spec, { name = "insn" } } }
  local out, st = vm.console:run("md5sum /usr/bin/ls & md5sum /usr/bin/ls; wait", { timeout = 120 })
  T.eq(st, 0, out)
  vm:quit()
  local r = vm:plugin_result("lua")
  local insn = vm:plugin_result("insn")
  T.ok(r.blocks > 100000, "blocks ran: " .. r.blocks)
  T.eq(r.execs, r.blocks, "every callback counted once")
  T.eq(r.insns, insn.total, "the per-block total is insn's")
  T.eq(r.v0 + r.v1, r.insns)
  T.ok(r.v0 > 0 and r.v1 > 0, "both vCPUs ran")
end)

os.exit(T.run())
