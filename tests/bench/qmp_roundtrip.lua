-- qmp_roundtrip.lua: the qshell side of the QMP benchmarks (see run.sh).
--
--   qshell tests/bench/qmp_roundtrip.lua rt N       N vm:qmp("query-status")
--   qshell tests/bench/qmp_roundtrip.lua launch K   K timed qemu.launch{}
--   qshell tests/bench/qmp_roundtrip.lua pairs K CLIENT QEMU
--       K pairs, in turn: one timed qemu.launch{} and one launch of the C
--       client (`CLIENT launch 1 QEMU`, which times itself), so that the
--       machine's ups and downs hit both sides alike; prints
--       "qshell median_us=..." and "client median_us=..."
--
-- Prints the same line as build/bench/qmpclient (times in us):
--   median_us=172.0 mean_us=180.3 min_us=160.1 n=2000

local now = require("qshell.os").now

local mode, count = arg[1], tonumber(arg[2])
if (mode ~= "rt" and mode ~= "launch" and mode ~= "pairs") or not count or count < 1 then
  io.stderr:write("usage: qshell qmp_roundtrip.lua rt N | launch K | pairs K CLIENT QEMU\n")
  os.exit(2)
end

local opts = { memory = "64M", accel = "tcg" }

local function report(t)
  local n, sum = #t, 0
  for i = 1, n do sum = sum + t[i] end
  table.sort(t)
  local med = n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
  print(string.format("median_us=%.1f mean_us=%.1f min_us=%.1f n=%d", med, sum / n, t[1], n))
end

-- One timed qemu.launch (to QMP ready), its time in t[i].
local t = {}
local function one_launch(i)
  local t0 = now()
  local vm = qemu.launch(opts)
  t[i] = (now() - t0) * 1e6
  vm:quit()
  vm:close()
end

if mode == "rt" then
  local vm <close> = qemu.launch(opts)
  for _ = 1, 50 do vm:qmp("query-status") end -- warm-up, as the C client
  for i = 1, count do
    local t0 = now()
    local r = vm:qmp("query-status")
    t[i] = (now() - t0) * 1e6
    if r.status == nil then error("query-status: no status in the reply") end
  end
  vm:quit()
elseif mode == "pairs" then
  local client, bin = assert(arg[3], "pairs K CLIENT QEMU"), assert(arg[4], "pairs K CLIENT QEMU")
  local c = {}
  local function one_client(i)
    local p = assert(io.popen(string.format("'%s' launch 1 '%s' 2>&1", client, bin)))
    local out = p:read("a")
    p:close()
    c[i] = tonumber(out:match("median_us=([%d.]+)")) or error("the C client failed: " .. out, 0)
  end
  one_launch(0) -- warm-up: the modules a launch loads
  for i = 1, count do
    if i % 2 == 1 then one_launch(i) one_client(i) else one_client(i) one_launch(i) end
  end
  t[0] = nil
  io.write("qshell ")
  report(t)
  io.write("client ")
  report(c)
  os.exit(0)
else
  for i = 1, count do one_launch(i) end
end
report(t)
