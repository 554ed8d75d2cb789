-- insn-mix.lua: the instruction mix of a region of interest, by mnemonic,
-- counted by a Lua script inside QEMU (scripts/plugins/insn-mix.lua).
--
--   qshell run scripts/insn-mix.lua [CHECKPOINT_DIR]
--
-- From the checkpoint (default: the default guest at its prompt, booted
-- and saved into a temporary directory), the guest lists /usr/bin inside
-- ROI 1; the script counts each instruction by mnemonic with inline
-- counters, and insn counts the same region for comparison (exact=on:
-- per instruction too, where its default per-block count over-counts a
-- block left early).
local here = arg[0]:match("(.*)/") or "."
local ckpt = arg[1]
if not ckpt then
  ckpt = qemu.tmpdir() .. "/prompt.ckpt"
  local vm <close> = qemu.guest.launch {}
  vm:checkpoint(ckpt)
end

local vm <close> = qemu.launch {
  restore = ckpt,
  plugins = { qemu.plugin.lua(here .. "/plugins/insn-mix.lua", { roi = 1 }), { name = "insn", args = { exact = true } } },
}
vm.console:run("qshell-roi begin 1; ls -l /usr/bin | wc -l; qshell-roi end 1")
local roi = vm:wait_roi(1)
vm:quit()

local mix = vm:plugin_result("lua").mix
local rows, total = {}, 0
for m, n in pairs(mix) do
  rows[#rows + 1] = { m = m, n = n }
  total = total + n
end
table.sort(rows, function(a, b) return a.n > b.n end)
print(string.format("%-14s %12s %7s", "mnemonic", "executed", "share"))
for i = 1, math.min(12, #rows) do
  print(string.format("%-14s %12d %6.2f%%", rows[i].m, rows[i].n, 100 * rows[i].n / total))
end
print(string.format("%d kinds, %d instructions in ROI 1; insn counted %d (the begin marker, a nopl, is the one more)",
                    #rows, total, roi.insns))
assert(total == roi.insns + 1, "the mix does not add up to insn's count")
print("the mix adds up to insn's count")
