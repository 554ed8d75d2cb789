-- `qshell results` and `qshell sweep --rerun` from outside: exit statuses,
-- usage errors, the formats, and gnuplot missing.
local T = require "t"

local QSHELL = os.getenv("QSHELL_BIN") or "./qshell"
local tmp = T.tmpdir()

local function write(path, text)
  local f = assert(io.open(path, "w")); f:write(text); f:close()
  return path
end

local csv = write(tmp .. "/r.csv", "run,repeat,mode,status,wall_s,error,host,started,prov,secs\n" ..
  "mode=a#1,1,a,ok,1,,h,t,p,1.0\nmode=a#2,2,a,ok,1,,h,t,p,1.2\n" ..
  "mode=b#1,1,b,ok,1,,h,t,p,2.0\nmode=b#2,2,b,failed,1,boom,h,t,p,\nmode=b#3,3,b,ok,1,,h,t,p,2.2\n")

local function run(args, env)
  return T.sh(string.format("%s TMPDIR=%s %s %s", env or "", tmp, QSHELL, args))
end

T.test("qshell results: a table by default, csv/markdown/json on request", function()
  local code, out = run("results " .. csv)
  T.eq(code, 0)
  T.match(out, "^mode%s+metric%s+n%s+failed%s+mean")
  T.match(out, "\nb%s+secs%s+2%s+1%s+2%.1%s")
  code, out = run("results " .. csv .. " --format csv")
  T.eq(code, 0)
  T.match(out, "\nb,secs,2,1,2%.1,")
  code, out = run("results " .. csv .. " --format markdown")
  T.match(out, "^| mode | metric |")
  code, out = run("results " .. csv .. " --format json")
  T.eq(#qemu.json.decode(out), 2)
  code, out = run("results " .. csv .. " --baseline mode=a")
  T.eq(code, 0)
  T.match(out, "\nb%s+secs%s+2%s+1%.1%s+2%s+2%.1%s+1%.9091")
  code, out = run("results " .. csv .. " --compare " .. csv)
  T.eq(code, 0)
  T.match(out, "\na%s+secs%s+2%s+1%.1%s+2%s+1%.1%s+1%.0000")
end)

T.test("qshell results: usage errors exit 2 and say what is wrong", function()
  local cases = {
    { "results", "give a results file" },
    { "results " .. csv .. " --frob", "unknown option %-%-frob" },
    { "results " .. csv .. " --plot x=mode y=secs", "%-%-plot needs %-o" },
    { "results " .. csv .. " --plot y=secs -o f.png", "needs x=PARAM y=METRIC" },
    { "results " .. csv .. " --baseline mode", "PARAM=VALUE" },
    { "results " .. csv .. " --group mode", "go with %-%-plot" },
    { "results " .. csv .. " --follow --plot x=mode y=secs -o f.png", "separate views" },
  }
  for _, c in ipairs(cases) do
    local code, _, err = run(c[1])
    T.eq(code, 2, c[1])
    T.match(err, c[2], c[1])
    T.match(err, "usage: qshell results")
  end
  local code, out = run("results --help")
  T.eq(code, 0)
  T.match(out, "usage: qshell results")
end)

T.test("qshell results: bad input is one line naming the file and line, status 1", function()
  local bad = write(tmp .. "/bad.csv", "run,repeat,mode,status,wall_s,error,host,started,prov,secs\n" ..
    "mode=a#1,1,a,ok,1,,h,t,p,1.0,9,9\n")
  local code, _, err = run("results " .. bad)
  T.eq(code, 1)
  T.match(err, "bad%.csv:2: 12 fields, but the header has 10 columns %(BadResults%)")
  code, _, err = run("results " .. tmp .. "/missing.csv")
  T.eq(code, 1)
  T.match(err, "no such results file")
  code, _, err = run("results " .. csv .. " --metric nope")
  T.eq(code, 1)
  T.match(err, "no metric nope")
end)

T.test("qshell results --plot without gnuplot: names the package, keeps the script", function()
  local code, _, err = run("results " .. csv .. " --plot x=mode y=secs -o " .. tmp .. "/nogp.png", "PATH=/nonexistent")
  T.eq(code, 1)
  T.match(err, "gnuplot is not installed")
  T.match(err, "apt%-get install gnuplot%-nox")
  T.ok(T.exists(tmp .. "/nogp.gp"), "the script is written")
  T.ok(not T.exists(tmp .. "/nogp.png"))
  code = run("results " .. csv .. " --plot x=mode y=secs -o " .. tmp .. "/gp.png")
  T.eq(code, 0)
  T.ok(T.exists(tmp .. "/gp.png"))
end)

T.test("qshell sweep --rerun: a row without provenance is refused", function()
  local old = write(tmp .. "/old.csv", "run,repeat,x,status,wall_s,error,m\nx=1#1,1,1,ok,1,,5\n")
  local code, _, err = run("sweep --rerun " .. old .. " 1")
  T.eq(code, 1)
  T.match(err, "records no setup %(RerunMismatch%)")
  code, _, err = run("sweep --rerun " .. old)
  T.eq(code, 2)
  T.match(err, "needs a results file and a row")
end)

T.run()
