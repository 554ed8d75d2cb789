-- qemu.results.stats: the statistics of repeated measurements.
--
--   describe(values) -> {n=, mean=, sd=, min=, median=, max=, ci_lo=, ci_hi=}
--     sd is the sample standard deviation (n - 1); the 95% confidence
--     interval of the mean is mean +- t(0.975, n - 1) * sd / sqrt(n), from
--     Student's t (exact table to 30 degrees of freedom, the Cornish-Fisher
--     expansion beyond); with one value there is no sd and no interval.
--   ratio(a, b) -> r, lo, hi: b.mean / a.mean with a 95% interval by the
--     delta method (for means away from zero: the relative standard errors
--     added in quadrature), Welch's degrees of freedom.
--   overlap(a, b) -> false when both intervals exist and do not overlap.

local M = {}

-- t(0.975, df) for df = 1..30
local T975 = {
  12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
  2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
  2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
}

local Z975 = 1.959963985

local function t_cf(v)
  local z = Z975
  local z3, z5, z7 = z ^ 3, z ^ 5, z ^ 7
  return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v ^ 2)
           + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v ^ 3)
end

---@api qemu.results.stats.t975 qemu.results.stats.t975(df) -> t
--- The 0.975 quantile of Student's t with `df` degrees of freedom: the factor of a two-sided 95% interval.
---
--- From a table (4 decimals) for whole `df` below 30; between two whole
--- values, linear in 1/df (`df` may be fractional, as Welch's are); from 30
--- on, the Cornish-Fisher expansion; 1.96 (the normal quantile) for
--- `math.huge`.
---
---     qemu.results.stats.t975(2)   -- 4.3027: the 95% interval of 3 values is mean ± 4.3027 * sd / sqrt(3)
---
---@param df number  degrees of freedom
---@return number|nil t  the quantile; nil when `df` is nil or below 1
function M.t975(df)
  if not df or df < 1 then return nil end
  if df >= 30 then return df == math.huge and Z975 or t_cf(df) end
  local lo = math.floor(df)
  if lo == df then return T975[lo] end
  -- Between table entries: linear in 1/df.
  local a, b = T975[lo], T975[lo + 1]
  local w = (1 / lo - 1 / df) / (1 / lo - 1 / (lo + 1))
  return a + (b - a) * w
end

---@api qemu.results.stats.describe qemu.results.stats.describe(values) -> stats
--- The statistics of a list of numbers: n, mean, sd, min, median, max and the 95% confidence interval of the mean.
---
--- `sd` is the sample standard deviation (n - 1); the interval is
--- mean ± t975(n - 1) * sd / sqrt(n). With one value there is no `sd` and
--- no interval; with none, only `n = 0`.
---
---     local d = qemu.results.stats.describe { 1.0, 1.2, 1.1 }
---     print(d.mean, d.ci_lo, d.ci_hi)
---
---@param values number[]  the measurements
---@return table stats  `{n=, mean=, sd=, min=, median=, max=, ci_lo=, ci_hi=}` (`sd`, `ci_lo`
---   and `ci_hi` nil with fewer than 2 values; only `n` with none)
function M.describe(values)
  local n = #values
  if n == 0 then return { n = 0 } end
  local sorted = {}
  local sum = 0
  for i, v in ipairs(values) do sorted[i] = v; sum = sum + v end
  table.sort(sorted)
  local mean = sum / n
  local d = { n = n, mean = mean, min = sorted[1], max = sorted[n] }
  if n % 2 == 1 then d.median = sorted[(n + 1) // 2]
  else d.median = (sorted[n // 2] + sorted[n // 2 + 1]) / 2 end
  if n >= 2 then
    local ss = 0
    for _, v in ipairs(values) do ss = ss + (v - mean) ^ 2 end
    d.sd = math.sqrt(ss / (n - 1))
    local half = M.t975(n - 1) * d.sd / math.sqrt(n)
    d.ci_lo, d.ci_hi = mean - half, mean + half
  end
  return d
end

---@api qemu.results.stats.ratio qemu.results.stats.ratio(a, b) -> ratio, lo, hi
--- The ratio of two means, b / a, with its 95% interval.
---
--- The interval is the delta method's (the relative standard errors of the
--- two means added in quadrature, good for means away from zero) with
--- Welch's degrees of freedom. `qemu.results.compare` uses it.
---
---     local r, lo, hi = qemu.results.stats.ratio(qemu.results.stats.describe(off), qemu.results.stats.describe(on))
---
---@param a table  the statistics of the baseline (`qemu.results.stats.describe`)
---@param b table  the statistics of the other side
---@return number|nil ratio  b.mean / a.mean; nil when a side has no values or a's mean is 0
---@return number|nil lo  the interval's low end; nil when a side has a single value (the same as
---   `ratio` when both sides have no spread)
---@return number|nil hi  the interval's high end (as `lo`)
function M.ratio(a, b)
  if not (a and b and a.n and b.n and a.n > 0 and b.n > 0) or a.mean == 0 then return nil end
  local r = b.mean / a.mean
  if not (a.sd and b.sd) then return r end
  -- var(r) ~ var(mean_b) / mean_a^2 + mean_b^2 var(mean_a) / mean_a^4
  local ub = (b.sd / math.sqrt(b.n) / a.mean) ^ 2
  local ua = (b.mean * a.sd / math.sqrt(a.n) / a.mean ^ 2) ^ 2
  if ua + ub == 0 then return r, r, r end
  local den = ua ^ 2 / (a.n - 1) + ub ^ 2 / (b.n - 1)
  local df = den > 0 and (ua + ub) ^ 2 / den or math.huge
  local half = M.t975(df) * math.sqrt(ua + ub)
  return r, r - half, r + half
end

---@api qemu.results.stats.overlap qemu.results.stats.overlap(a, b) -> boolean
--- Whether the 95% intervals of two means overlap.
---
--- False only when both intervals exist and are apart: a side with a single
--- value (no interval) counts as overlapping. `qemu.results.compare` marks
--- a difference (`differs`) where this is false.
---
---@param a table  statistics from `qemu.results.stats.describe`
---@param b table  statistics from `qemu.results.stats.describe`
---@return boolean overlap  false when the intervals are apart
function M.overlap(a, b)
  if not (a.ci_lo and b.ci_lo) then return true end
  return not (a.ci_hi < b.ci_lo or b.ci_hi < a.ci_lo)
end

return M
