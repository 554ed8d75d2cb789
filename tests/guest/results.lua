-- Results of a real sweep on the default guest: the provenance every row
-- carries, the summary, comparison and figure from the command line, a row
-- run again from what it records (and what it says when something changed
-- or is gone), and the progress line on a terminal.
local T = require "t"

local fs = require "qemu.util.fs"
local sys = require "qshell.os"
local tmp = T.tmpdir()

local function sha(path)
  local _, out = T.sh("sha256sum " .. path)
  return out:match("^(%x+)")
end

-- The warm state every run starts from.
local ckpt = tmp .. "/warm.ckpt"
do
  local vm <close> = qemu.guest.launch {}
  vm.console:run("echo 41 > /root/base")
  vm:checkpoint(ckpt)
end

-- The experiment is a script of its own (a rerun runs it again).
local script = tmp .. "/exp.lua"
local SCRIPT = [[
local ckpt, out = arg[1], arg[2]
local r = qemu.sweep {
  from = ckpt, out = out, workers = 2, ["repeat"] = 2,
  matrix = { plugin = { "off", "insn" }, add = { 1 } },
  launch = function(p)
    return { plugins = p.plugin == "insn" and { { name = "insn", args = { limit = 1000000000000 } } } or nil }
  end,
  run = function(vm, p)
    local v = tonumber((vm.console:run("echo $(( $(cat /root/base) + " .. p.add .. " ))")))
    vm.console:send("poweroff -f\r")
    vm:wait { timeout = 60 }
    local m = { answer = v }
    if p.plugin == "insn" then m.instructions = vm:plugin_result("insn").total end
    return m
  end,
}
print(string.format("done %d ok %d prov %s", r.total, r.ok, tostring(r.results[1].prov)))
]]
fs.write(script, SCRIPT, "test")
local out = tmp .. "/res.csv"

local function run_sweep(args, env)
  return T.sh(string.format("cd %s && %s %s/qshell run %s %s", tmp, env or "", sys.realpath("."), script, args))
end

local code, stdout, stderr = run_sweep("warm.ckpt res.csv")
if code ~= 0 then error("the sweep failed: " .. stdout .. stderr) end

T.test("every row names its host, start time and setup; the sidecar holds the setups", function()
  T.match(stdout, "done 4 ok 4 prov (%x+)")
  local rows = qemu.results.read(out)
  T.eq(#rows, 4)
  local host = fs.first_line("/proc/sys/kernel/hostname")
  local ids = {}
  for _, r in ipairs(rows) do
    T.eq(r.host, host)
    T.match(r.started, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$")
    T.match(r.prov, "^%x+$")
    ids[r.plugin] = ids[r.plugin] or r.prov
    T.eq(ids[r.plugin], r.prov, "runs with one setup share one id")
    T.eq(r.answer, 42)
  end
  T.ok(ids.off ~= ids.insn, "plugin on and off are different setups")
  T.eq(stdout:match("prov (%x+)"), ids.off, "qemu.sweep's return value carries the id (run 1: add=1;plugin=off#1)")
  local side = qemu.json.decode(fs.read(tmp .. "/res.provenance.json"))
  local s = side.provenance[ids.insn]
  local v = qemu.version()
  T.eq(s.qemu, string.format("%d.%d.%d", v.major, v.minor, v.micro))
  T.eq(s.qemu_binary, sys.realpath(v.path))
  T.match(s.machine, "^pc%-")
  T.eq(s.accel, "tcg")
  T.eq(s.checkpoint, sys.realpath(ckpt))
  T.eq(s.checkpoint_id, sha(ckpt .. "/manifest.json"))
  T.eq(s.plugins[1].name, "insn")
  T.eq(s.plugins[1].args.limit, 1000000000000)
  T.eq(s.script, sys.realpath(script))
  T.eq(s.script_sha256, sha(script))
  T.eq(s.args[1], "warm.ckpt")
  T.eq(s.cwd, sys.realpath(tmp))
  T.eq(#side.provenance[ids.off].plugins, 0)
  T.eq(side.sweep.total, 4)
end)

T.test("JSONL rows carry the whole setup", function()
  local jl = tmp .. "/res.jsonl"
  local c, o, e = run_sweep("warm.ckpt res.jsonl")
  T.eq(c, 0, o .. e)
  local rows = qemu.results.read(jl)
  T.eq(#rows, 4)
  for _, r in ipairs(rows) do
    T.eq(r.provenance.checkpoint_id, sha(ckpt .. "/manifest.json"))
    T.eq(r.provenance.plugins[1] and r.provenance.plugins[1].name, r.plugin == "insn" and "insn" or nil)
  end
end)

T.test("qshell results: the summary, plugin on against off, and a PNG, one command each", function()
  local c, o = T.sh("./qshell results " .. out)
  T.eq(c, 0)
  T.match(o, "^add%s+plugin%s+metric%s+n%s+failed%s+mean%s+ci95")
  T.match(o, "\n1%s+insn%s+answer%s+2%s+0%s+42%s+± 0%s")
  T.match(o, "\n1%s+insn%s+instructions%s+2%s+0%s+%d+")
  c, o = T.sh("./qshell results " .. out .. " --baseline plugin=off --metric answer")
  T.eq(c, 0)
  T.match(o, "\n1%s+insn%s+answer%s+2%s+42%s+2%s+42%s+1%.0000")
  local fig = tmp .. "/fig.png"
  c, o = T.sh("./qshell results " .. out .. " --plot x=add y=answer --group plugin -o " .. fig)
  T.eq(c, 0, o)
  local f = assert(io.open(fig, "rb"))
  local head = f:read(24)
  f:close()
  T.eq(head:sub(1, 8), "\137PNG\r\n\26\n")
  T.eq(string.unpack(">I4", head, 17), 800)
  T.ok(T.exists(tmp .. "/fig.gp"))
end)

T.test("a row runs again from what it records: the same setup, the same answer", function()
  local r = qemu.sweep.rerun(out, 1)
  T.eq(r.status, "ok")
  T.eq(#r.differences, 0, r.text)
  T.eq(r.metrics.answer, 42)
  T.match(r.text, "setup     the same as recorded")
  -- by its run name, from the command line
  local rows = qemu.results.read(out)
  local c, o = T.sh("./qshell sweep --rerun " .. out .. " '" .. rows[2].run .. "'")
  T.eq(c, 0, o)
  T.match(o, "rerun of " .. rows[2].run:gsub("%p", "%%%0"))
  T.match(o, "answer%s+42%s+42%s+1%.0000")
  T.eq(#qemu.vms(), 0)
end)

T.test("rerun says what changed (the script) and refuses what is gone (the checkpoint)", function()
  fs.write(script, SCRIPT .. "-- edited after the sweep\n", "test")
  local r = qemu.sweep.rerun(out, 1)
  T.eq(r.status, "ok")
  T.eq(#r.differences, 1, r.text)
  T.eq(r.differences[1].field, "script_sha256")
  T.match(r.text, "setup     differs from the recorded one:\n    script_sha256: %x+ %-> %x+")
  fs.write(script, SCRIPT, "test")
  os.rename(ckpt, ckpt .. ".away")
  T.raises(function() qemu.sweep.rerun(out, 1) end, "RerunMismatch", "the checkpoint .*warm%.ckpt that row 1 started from is gone")
  local c, _, e = T.sh("./qshell sweep --rerun " .. out .. " 1")
  T.eq(c, 1)
  T.match(e, "RerunMismatch")
  os.rename(ckpt .. ".away", ckpt)
  T.raises(function() qemu.sweep.rerun(out, 99) end, "BadArgument", "has 4 rows; there is no row 99")
  T.raises(function() qemu.sweep.rerun(out, "add=7#1") end, "BadArgument", "no run")
  T.eq(T.sh("./qshell sweep --rerun " .. out), 2, "usage: a file and a row")
end)

T.test("on a terminal the progress line shows done/failed/total, the ETA and the last run", function()
  local pty = tmp .. "/progress.pty"
  fs.write(pty, "timeout 240\nexpect | last: \nexpect done 4 ok 4\n", "test")
  local log = tmp .. "/progress.log"
  local c, o, e = T.sh(string.format("cd %s && PTYRUN_LOG=%s %s/build/ptyrun -t 240 %s -- %s/qshell run %s warm.ckpt live.csv",
                                     tmp, log, sys.realpath("."), pty, sys.realpath("."), script))
  T.eq(c, 0, o .. e)
  local text = fs.read(log) or ""
  T.match(text, "%[sweep%] %d/4 done, %d failed, %d running, %d+:%d%d elapsed")
  T.match(text, "ETA %d+:%d%d")
  T.match(text, "| last: add=1;plugin=%a+#%d ok answer=42")
end)

T.run()
