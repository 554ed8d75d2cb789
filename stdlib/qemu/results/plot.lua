-- qemu.results.plot: a figure of a metric against a parameter, one line
-- per value of another, each point the mean over the repeats with its 95%
-- confidence interval as an error bar -- drawn by gnuplot from a script
-- written beside the figure (fig.png -> fig.gp), data included, so the
-- figure can be restyled by editing that file and running `gnuplot fig.gp`.

local errors = require "qemu.errors"
local check = require "qemu.util.check"
local fs = require "qemu.util.fs"
local run = require "qemu.util.run"
local group = require "qemu.results.group"

local M = {}

local TERMINALS = {
  png = function(w, h) return string.format("pngcairo size %d,%d noenhanced font \",10\"", w, h) end,
  svg = function(w, h) return string.format("svg size %d,%d noenhanced font \"sans,10\" background \"white\"", w, h) end,
  pdf = function(w, h) return string.format("pdfcairo size %gin,%gin noenhanced font \",8\"", w / 100, h / 100) end,
}

local plot_opts = { x = "string", y = "string", group = "string", out = "string", size = "string|table",
                    title = "string", where = "table", logx = "boolean", logy = "boolean" }

local function q(s)
  return '"' .. tostring(s):gsub("\\", "\\\\"):gsub('"', '\\"') .. '"'
end

local text = group.text

local function size_of(fname, size)
  if size == nil then return 800, 600 end
  local w, h
  if type(size) == "table" then w, h = size[1], size[2]
  else
    w, h = size:match("^(%d+)x(%d+)$")
    w, h = tonumber(w), tonumber(h)
  end
  if math.type(w) ~= "integer" or math.type(h) ~= "integer" or w < 100 or h < 100 or w > 10000 or h > 10000 then
    check.bad(fname, "size must be WIDTHxHEIGHT in pixels, each 100..10000 (e.g. \"800x600\")")
  end
  return w, h
end

---@api qemu.results.plot qemu.results.plot(rows, {x=, y=, out= [, group=, where=, size=, title=, logx=, logy=]}) -> plot
--- Draw a metric against a parameter, each point the mean over the repeats with its 95% interval as an error bar.
---
--- One line per value of `group`; numeric x values on a numeric axis,
--- others as categories in order. Lines at the same x are drawn a little
--- apart so their error bars do not hide each other. gnuplot draws it
--- (package `gnuplot-nox`): the script is kept beside the figure
--- (`fig.png` -> `fig.gp`, data included, written even when gnuplot is
--- missing), so the figure can be restyled by editing it and running
--- `gnuplot fig.gp` in its directory. A parameter that is neither `x` nor
--- `group` and varies is refused (a point would average over it): give it
--- as `group`, or keep one value with `where`. `qshell results FILE --plot
--- x=size y=seconds --group plugin -o fig.png` is this.
---
---     qemu.results.plot(rows, { x = "size", y = "seconds", group = "plugin", out = "fig.svg" })
---
---@param rows table  rows from `qemu.results.read`
---@param options table  `x=` string (required): the parameter on the horizontal axis; `y=`
---   string (required): the metric on the vertical axis; `out=` string (required): the
---   figure, a `.png`, `.svg` or `.pdf` file (missing directories are made); `group=`
---   string: a parameter other than `x`, one line per value; `where=` table
---   `{param=value or {values}}`: only those rows; `size=` "WxH" or {w, h} (default
---   "800x600"): pixels, each 100..10000; `title=` string (default "Y by X"); `logx=`,
---   `logy=` boolean (default false): logarithmic axes
---@return table plot  `{out=, script=, series=}`: the figure, the gnuplot script, and `series`,
---   a list of `{label=, points=}` (one per line: `label` "group=value", or the metric), each
---   point `{x=, mean=, lo=, hi=, n=}` (`lo`..`hi` the 95% interval of the mean, the mean
---   itself with one value)
---@error BadArgument  rows that are not a table, an unknown option or a wrong type, no `x`, `y`
---   or `out`, a figure that is not .png/.svg/.pdf, a bad size, `group` equal to `x`, another
---   parameter that varies, no rows to plot, and what `qemu.results.summary` refuses
---@error BadResults  the metric has a text cell (the row is named)
---@error MissingTool  gnuplot is not installed (the script is written: run gnuplot on it later)
---@error CommandFailed  gnuplot failed (its message is in the error)
function M.plot(rows, opts)
  local fname = "qemu.results.plot"
  if type(rows) ~= "table" then check.bad(fname, "argument 1 must be rows (from qemu.results.read)") end
  opts = check.options(fname, opts, plot_opts, 2)
  if not opts.x then check.bad(fname, "x= (the parameter on the horizontal axis) is required") end
  if not opts.y then check.bad(fname, "y= (the metric on the vertical axis) is required") end
  if not opts.out then check.bad(fname, "out= (the figure: a .png, .svg or .pdf file) is required") end
  local ext = opts.out:match("%.(%w+)$")
  ext = ext and ext:lower()
  if not TERMINALS[ext] then check.bad(fname, "out=%s: the figure must end in .png, .svg or .pdf", opts.out) end
  local w, h = size_of(fname, opts.size)
  local by = { opts.x }
  if opts.group then
    if opts.group == opts.x then check.bad(fname, "group= must be another parameter than x=") end
    by[2] = opts.group
  end
  local s = group.summary(rows, { by = by, metrics = { opts.y }, where = opts.where })
  -- A parameter left out of x and group that varies would be averaged
  -- over silently: refuse, naming it.
  local varying = {}
  local kept = group.filter(fname, rows, opts.where)
  for _, p in ipairs(rows.params or {}) do
    if p ~= opts.x and p ~= opts.group then
      local vals, nv = {}, 0
      for _, r in ipairs(kept) do
        local t = text(r[p])
        if not vals[t] then vals[t] = true; nv = nv + 1 end
      end
      if nv > 1 then varying[#varying + 1] = p end
    end
  end
  if #varying > 0 then
    check.bad(fname, "parameter %s varies too, and a point would average over it: plot it as group=, or keep one "
                     .. "value with where={%s=...}", table.concat(varying, ", "), varying[1])
  end
  if #s.groups == 0 then check.bad(fname, "no rows to plot") end
  -- The x axis: numbers as numbers; otherwise categories in order.
  local numeric = true
  for _, g in ipairs(s.groups) do
    if type(g.key[opts.x]) ~= "number" then numeric = false end
  end
  local cats, catpos = {}, {}
  if not numeric then
    for _, g in ipairs(s.groups) do
      local t = text(g.key[opts.x])
      if not catpos[t] then cats[#cats + 1] = t; catpos[t] = #cats - 1 end
    end
  end
  local series, sindex = {}, {}
  for _, g in ipairs(s.groups) do
    local label = opts.group and (opts.group .. "=" .. text(g.key[opts.group])) or opts.y
    local se = sindex[label]
    if not se then
      se = { label = label, points = {} }
      sindex[label] = se
      series[#series + 1] = se
    end
    local d = g.stats[opts.y]
    if d.n > 0 then
      se.points[#se.points + 1] = { x = g.key[opts.x], mean = d.mean, lo = d.ci_lo or d.mean, hi = d.ci_hi or d.mean,
                                    n = d.n }
    end
  end
  local script = (opts.out:gsub("%.%w+$", "")) .. ".gp"
  local outname = opts.out
  local L = {
    "# " .. outname .. ": " .. opts.y .. " against " .. opts.x .. (opts.group and (" by " .. opts.group) or "")
      .. ", written by qshell results --plot.",
    "# Each point is the mean over the repeats, the bar its 95% confidence interval.",
    "# Edit this file and run `gnuplot " .. script:match("([^/]+)$") .. "` (in this directory) to redraw.",
    "set terminal " .. TERMINALS[ext](w, h),
    "set output " .. q(outname:match("([^/]+)$")),
    "set title " .. q(opts.title or (opts.y .. " by " .. opts.x)),
    "set xlabel " .. q(opts.x),
    "set ylabel " .. q(opts.y .. " (mean, 95% CI)"),
    "set grid",
    "set key outside right top",
    "set bars small",
  }
  if opts.logx then L[#L + 1] = "set logscale x" end
  if opts.logy then L[#L + 1] = "set logscale y" end
  if numeric then
    L[#L + 1] = "set offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05"
  else
    local tics = {}
    for i, c in ipairs(cats) do tics[i] = string.format("%s %d", q(c), i - 1) end
    L[#L + 1] = "set xtics (" .. table.concat(tics, ", ") .. ")"
    L[#L + 1] = string.format("set xrange [-0.5:%g]", #cats - 0.5)
  end
  -- Series at the same x are drawn a little apart (1% of the axis, a
  -- factor on a log axis) so their error bars do not hide each other; the
  -- data keep the true x in the last column.
  local xmin, xmax = math.huge, -math.huge
  if numeric then
    for _, g in ipairs(s.groups) do
      xmin, xmax = math.min(xmin, g.key[opts.x]), math.max(xmax, g.key[opts.x])
    end
  end
  local plots = {}
  for i, se in ipairs(series) do
    L[#L + 1] = string.format("$s%d << EOD", i)
    L[#L + 1] = "# x (drawn) mean ci95_lo ci95_hi n " .. opts.x
    local shift = i - (#series + 1) / 2
    for _, p in ipairs(se.points) do
      local x = p.x
      if not numeric then
        x = catpos[text(p.x)] + shift * 0.06
      elseif opts.logx and x > 0 then
        x = x * (xmax / xmin) ^ (shift * 0.01)
      elseif not opts.logx then
        x = x + shift * 0.01 * (xmax > xmin and (xmax - xmin) or 1)
      end
      L[#L + 1] = string.format("%.10g %.10g %.10g %.10g %d %s", x, p.mean, p.lo, p.hi, p.n, text(p.x))
    end
    L[#L + 1] = "EOD"
    plots[#plots + 1] = string.format("$s%d using 1:2:3:4 with yerrorlines pointtype %d title %s", i, 6 + i,
                                      q(se.label))
  end
  L[#L + 1] = "plot " .. table.concat(plots, ", \\\n     ")
  local dir = opts.out:match("^(.*)/[^/]+$")
  if dir then fs.mkdir_p(dir, fname) end
  fs.write(script, table.concat(L, "\n") .. "\n", fname)
  local gnuplot = run.which("gnuplot")
  if not gnuplot then
    errors.raise { class = "MissingTool", command = fname,
                   desc = "gnuplot is not installed; the plot's script is in " .. script,
                   hint = "install it (apt-get install gnuplot-nox) and run `gnuplot " .. script .. "`, or run this again" }
  end
  os.remove(opts.out)
  local st = run.run({ "env", "-C", dir or ".", gnuplot, script:match("([^/]+)$") }, { command = fname, timeout = 60 })
  if st.code ~= 0 or not fs.is_file(opts.out) then
    errors.raise { class = "CommandFailed", command = fname,
                   desc = string.format("gnuplot %s on %s: %s", st.desc, script, (st.stderr:gsub("%s+$", ""))) }
  end
  return { out = opts.out, script = script, series = series }
end

return M
