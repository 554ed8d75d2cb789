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

-- The two-sided 95% quantile of Student's t with df degrees of freedom
-- (df may be fractional: Welch).
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

function M.overlap(a, b)
  if not (a.ci_lo and b.ci_lo) then return true end
  return not (a.ci_hi < b.ci_lo or b.ci_hi < a.ci_lo)
end

return M
