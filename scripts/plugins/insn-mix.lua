-- insn-mix.lua (runs inside QEMU, in the lua plugin): the instruction mix
-- of region of interest plugin.args.roi, by mnemonic.
--
-- Each instruction gets an inline counter named after its mnemonic (no
-- callback per execution); the ROI's begin and end markers snapshot every
-- counter, and the mix is the difference.
local roi = plugin.args.roi or 1
local seen = {}            -- mnemonic -> true, the counters made so far
local at_begin, mix = {}, {}

plugin.on_translate(function(tb)
  for i = 1, tb.n do
    local insn = tb:insn(i)
    local m = insn.disas:match("^(%S+)") or "?"
    if m == "lock" or m == "rep" or m == "repz" or m == "repnz" then
      m = insn.disas:match("^(%S+%s+%S+)") or m   -- "rep movsb" is its own kind
    end
    seen[m] = true
    insn:count(m)
  end
end)

plugin.on_roi(function(id, event)
  if id ~= roi then return end
  for m in pairs(seen) do
    local n = plugin.counter(m)
    if event == "begin" then
      at_begin[m] = n
    elseif n - (at_begin[m] or 0) > 0 then
      mix[m] = (mix[m] or 0) + n - (at_begin[m] or 0)
    end
  end
end)

plugin.on_exit(function() return { roi = roi, mix = mix } end)
