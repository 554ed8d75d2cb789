-- qemu.results.cli: `qshell results ...` -- the summary, a comparison, a
-- figure or the live view of results files, from the command line.
-- main(args) returns the exit status: 0, 1 (an error, printed), 2 (usage).

local results = require "qemu.results"

local M = {}

M.usage = [[
usage: qshell results FILE... [--by P,...] [--metric M,...] [--where P=V]...
                              [--format table|csv|markdown|json]
       qshell results A [--compare B]       per group, the ratio of B's means to A's
       qshell results FILE --baseline P=V   each value of P against P=V
       qshell results FILE --plot x=P y=M [--group P] -o FIG.png|.svg|.pdf
                                            [--size WxH] [--title T] [--logx] [--logy]
       qshell results --follow FILE [--interval S] [--timeout S]
Rows are grouped by the parameters (all unless --by names some); each numeric
metric gets n, failed, mean, 95% confidence interval, sd, min, median, max.
]]

local function usage(msg)
  io.stderr:write("qshell results: " .. msg .. "\n" .. M.usage)
  return 2
end

local function parse_where(s, into)
  local k, v = s:match("^([%a_][%w_]*)=(.*)$")
  if not k then return nil end
  into[k] = into[k] or {}
  table.insert(into[k], tonumber(v) or v)
  return true
end

local function parse(args)
  local o = { files = {}, where = nil, compare = {} }
  local i = 1
  local function value(name)
    i = i + 1
    if args[i] == nil then error({ usage = name .. " needs a value" }) end
    return args[i]
  end
  while i <= #args do
    local a = args[i]
    if a == "--by" then o.by = value(a)
    elseif a == "--metric" or a == "--metrics" then
      o.metrics = o.metrics and (o.metrics .. "," .. value(a)) or value(a)
    elseif a == "--where" then
      o.where = o.where or {}
      if not parse_where(value(a), o.where) then error({ usage = "--where takes PARAM=VALUE" }) end
    elseif a == "--format" then o.format = value(a)
    elseif a == "--compare" then
      o.compare[#o.compare + 1] = value(a)
      while args[i + 1] and not args[i + 1]:match("^%-") do i = i + 1; o.compare[#o.compare + 1] = args[i] end
    elseif a == "--baseline" then
      local b = {}
      if not parse_where(value(a), b) then error({ usage = "--baseline takes PARAM=VALUE" }) end
      local k, v = next(b)
      o.baseline = { [k] = v[1] }
    elseif a == "--plot" then
      o.plot = o.plot or {}
      while args[i + 1] and args[i + 1]:match("^[xy]=") do
        i = i + 1
        local k, v = args[i]:match("^([xy])=(.*)$")
        o.plot[k] = v
      end
    elseif a == "--group" then o.group = value(a)
    elseif a == "-o" or a == "--output" then o.out = value(a)
    elseif a == "--size" then o.size = value(a)
    elseif a == "--title" then o.title = value(a)
    elseif a == "--logx" then o.logx = true
    elseif a == "--logy" then o.logy = true
    elseif a == "--follow" then o.follow = true
    elseif a == "--interval" then o.interval = tonumber(value(a)) or error({ usage = "--interval takes seconds" })
    elseif a == "--timeout" then o.timeout = tonumber(value(a)) or error({ usage = "--timeout takes seconds" })
    elseif a == "--help" or a == "-h" then o.help = true
    elseif a:match("^%-") then error({ usage = "unknown option " .. a })
    else o.files[#o.files + 1] = a end
    i = i + 1
  end
  if o.help then return o end
  if #o.files == 0 then error({ usage = "give a results file" }) end
  local modes = (#o.compare > 0 and 1 or 0) + (o.baseline and 1 or 0) + (o.plot and 1 or 0) + (o.follow and 1 or 0)
  if modes > 1 then error({ usage = "--compare, --baseline, --plot and --follow are separate views: give one" }) end
  if o.plot then
    if not o.plot.x or not o.plot.y then error({ usage = "--plot needs x=PARAM y=METRIC" }) end
    if not o.out then error({ usage = "--plot needs -o FIGURE (.png, .svg or .pdf)" }) end
  elseif o.out or o.group or o.size or o.title or o.logx or o.logy then
    error({ usage = "-o, --group, --size, --title, --logx and --logy go with --plot" })
  end
  if o.follow and #o.files ~= 1 then error({ usage = "--follow takes one file" }) end
  if (o.interval or o.timeout) and not o.follow then error({ usage = "--interval and --timeout go with --follow" }) end
  return o
end

local function warn(rows)
  for _, w in ipairs(rows.warnings or {}) do io.stderr:write("qshell results: warning: " .. w .. "\n") end
end

function M.main(args)
  local ok, o = pcall(parse, args)
  if not ok then
    if type(o) == "table" and o.usage then return usage(o.usage) end
    error(o, 0)
  end
  if o.help then
    io.stdout:write(M.usage)
    return 0
  end
  local sopts = { by = o.by, metrics = o.metrics, where = o.where }
  if o.follow then
    results.follow(o.files[1], { by = o.by, metrics = o.metrics, where = o.where, format = o.format,
                                 interval = o.interval, timeout = o.timeout })
    return 0
  end
  local rows = results.read(table.unpack(o.files))
  warn(rows)
  if o.plot then
    local where = o.where
    local r = results.plot(rows, { x = o.plot.x, y = o.plot.y, group = o.group, out = o.out, size = o.size,
                                   title = o.title, where = where, logx = o.logx, logy = o.logy })
    print(string.format("wrote %s (gnuplot script: %s)", r.out, r.script))
    return 0
  end
  local t
  if #o.compare > 0 then
    local b = results.read(table.unpack(o.compare))
    warn(b)
    sopts.labels = { table.concat(o.files, "+"), table.concat(o.compare, "+") }
    t = results.compare(rows, b, sopts)
  elseif o.baseline then
    sopts.baseline = o.baseline
    t = results.compare(rows, sopts)
  else
    t = results.summary(rows, sopts)
  end
  io.stdout:write(results.format(t, o.format or "table"))
  return 0
end

return M
