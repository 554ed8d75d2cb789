-- QEMU's own (contrib) TCG plugins and plugins of one's own, built from Lua
-- against the QEMU source of the QEMU under test (tests/qemu/source.sh:
-- Debian's 7.2 source for the distribution's QEMU, the 10.0 source for
-- bookworm-backports'), loaded into the default guest, and their reports
-- read back as tables.  One guest boot per QEMU; the rest needs none.
local T = require "t"

local tmp = T.tmpdir()
local v = qemu.version()
local json = qemu.json

local function trim(s) return (s:gsub("%s+$", "")) end

-- The tree for this QEMU: QSHELL_QEMU_SRC, else tests/qemu/source.sh SUITE.
local tree, why
do
  local env = os.getenv("QSHELL_QEMU_SRC")
  local suite = (v.package or ""):find("bpo12", 1, true) and "bookworm-backports"
                or (v.major == 7 and v.minor == 2) and "bookworm" or nil
  if env and env ~= "" then
    tree = env
  elseif not suite then
    why = string.format("no Debian source suite known for QEMU %s (%s): set QSHELL_QEMU_SRC", v.text, v.package or "?")
  else
    local code, out, err = T.sh("tests/qemu/source.sh " .. suite)
    if code == 0 then
      tree = trim(out)
    else
      why = "tests/qemu/source.sh " .. suite .. " failed: " .. trim(err):sub(-400)
    end
  end
end

-- Another QEMU of the run whose plugin API range excludes this one's.
local function other_qemu(api)
  local list = {}
  for b in (os.getenv("QSHELL_TEST_QEMU_LIST") or ""):gmatch("%S+") do list[#list + 1] = b end
  if #list == 0 then
    list[1] = "qemu-system-x86_64"
    local code, out = T.sh("tests/qemu/fetch.sh")
    if code == 0 then list[2] = trim(out) .. "/usr/bin/qemu-system-x86_64" end
  end
  for _, b in ipairs(list) do
    local ok, ov = pcall(qemu.version, b)
    if ok and (api < ov.plugin_api.min or api > ov.plugin_api.cur) then return b, ov end
  end
  return nil
end

-- find(1) in qshell's plugin cache: what a build left there.
local plugin_cache = (os.getenv("XDG_CACHE_HOME") or (os.getenv("HOME") .. "/.cache")) .. "/qshell/plugins"
local function cache_files(tests)
  local _, out = T.sh("find '" .. plugin_cache .. "' " .. tests .. " 2>/dev/null")
  return trim(out)
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Canned reports, as QEMU 7.2 and 10.0 print them.
local CACHE_TEXT = table.concat({
  "insn: 2000000000 instructions (1 vCPU)",
  "core #, data accesses, data misses, dmiss rate, insn accesses, insn misses, imiss rate, l2 accesses, l2 misses, l2 miss rate",
  "0       1000           10           1.0000%  4000           40           1.0000%  50           5           10.0000%",
  "1       3000           0            0.0000%  2000           0            0.0000%",
  "sum     4000           10           0.2500%  6000           40           0.6667%  50           5           10.0000%",
  "",
  "address, data misses, instruction",
  "0xffffffff81000010 (memcpy), 7, rep movsq (%rsi), (%rdi)",
  "0x7f1e2411d3fd, 3, movq (%rbx), %rax",
  "",
  "address, fetch misses, instruction",
  "0x401000, 40, nop",
  "",
  "address, L2 misses, instruction",
  "0x401000, 5, nop",
  "0, 0x401000, 0x90, \"nop \"",
}, "\n") .. "\n"

T.test("parse: cache's report, other plugins' lines skipped", function()
  local r = qemu.plugin.parse("cache", CACHE_TEXT)
  T.eq(#r.cores, 2)
  local c0 = r.cores[1]
  T.eq(c0.core, 0)
  T.eq(math.type(c0.data_accesses), "integer")
  T.eq(c0.data_accesses, 1000)
  T.eq(c0.data_misses, 10)
  T.eq(c0.data_miss_rate, 0.01)
  T.eq(c0.insn_miss_rate, 0.01)
  T.eq(c0.l2_miss_rate, 0.1)
  -- QEMU 10.0 leaves the L2 columns out of a row without L2 misses
  T.eq(r.cores[2].core, 1)
  T.eq(r.cores[2].data_miss_rate, 0.0)
  T.eq(r.cores[2].l2_accesses, nil)
  T.eq(r.sum.data_accesses, 4000)
  T.eq(r.sum.insn_miss_rate, 40 / 6000)
  T.eq(r.l2.accesses, 50)
  T.eq(r.l2.miss_rate, 0.1)
  T.eq(#r.data_hot, 2)
  T.eq(r.data_hot[1].addr, math.tointeger(0xffffffff81000010))
  T.eq(string.format("0x%x", r.data_hot[1].addr), "0xffffffff81000010")
  T.eq(r.data_hot[1].symbol, "memcpy")
  T.eq(r.data_hot[1].misses, 7)
  T.eq(r.data_hot[1].disas, "rep movsq (%rsi), (%rdi)")
  T.eq(r.data_hot[2].symbol, nil)
  T.eq(#r.insn_hot, 1)
  T.eq(#r.l2_hot, 1, "the execlog line after the list is not one of its rows")
  -- the same by .so name and path; result() names the plugin log
  T.eq(qemu.plugin.parse("libcache.so", CACHE_TEXT).sum.data_misses, 10)
  T.eq(qemu.plugin.result(CACHE_TEXT, "/x/y/libcache.so").sum.data_misses, 10)
  T.eq(qemu.plugin._parser_name("/x/libcache.so"), "cache")
  T.raises(function() qemu.plugin.result("insn: 5 instructions\n", "libcache.so") end, "PluginError",
           "no cache report.*in the plugin log")
  T.raises(function() qemu.plugin.parse("nosuch", CACHE_TEXT) end, "PluginError", "parsers: cache, execlog")
  T.raises(function() qemu.plugin.parse("cache") end, "BadArgument")
  T.raises(function() qemu.plugin.parse(1, "") end, "BadArgument")
end)

T.test("parse: execlog, howvec and hotpages", function()
  local e = qemu.plugin.parse("execlog", table.concat({
    "insn: 5 instructions",
    "0, 0xffffffff81000000, 0x8b48, \"movq (%rax), %rbx\", load, 0x00001000, RAM",
    "1, 0x401000, 0x1234abcd, \"movl %eax, 8(%rsp)\", store, 0x7ffc0008, rax -> 0x00000000deadbeef",
    "0, 0x401002, 0xa20f, \"cpuid \"",
    "0x401000, 5, nop",
  }, "\n"))
  T.eq(#e, 3)
  T.eq(e[1].vcpu, 0)
  T.eq(string.format("0x%x", e[1].pc), "0xffffffff81000000")
  T.eq(e[1].opcode, 0x8b48)
  T.eq(e[1].disas, "movq (%rax), %rbx")
  T.eq(#e[1].mem, 1)
  T.eq(e[1].mem[1].kind, "load")
  T.eq(e[1].mem[1].addr, 0x1000)
  T.eq(e[1].mem[1].device, "RAM")
  T.eq(e[2].vcpu, 1)
  T.eq(e[2].disas, "movl %eax, 8(%rsp)")
  T.eq(e[2].mem[1].kind, "store")
  T.eq(e[2].mem[1].device, nil)
  T.eq(e[2].regs.rax, 0xdeadbeef)
  T.eq(e[3].disas, "cpuid")
  T.eq(#e[3].mem, 0)
  T.eq(#qemu.plugin.parse("execlog", ""), 0, "nothing logged is an empty list")

  local h = qemu.plugin.parse("howvec", "Instruction Classes:\n" ..
    "Class: Push                    \t(1234 hits)\n" ..
    "Class: Jumps                   \tcounted individually\n" ..
    "Class: Other                   \tnot counted\n" ..
    "Individual Instructions:\n" ..
    "Instr: jmp 0x401000            \t(99 hits)\t(op=0x000000eb/Jumps)\n")
  T.eq(#h.classes, 3)
  T.eq(h.classes[1].class, "Push")
  T.eq(h.classes[1].hits, 1234)
  T.eq(h.classes[2].individual, true)
  T.eq(h.classes[3].counted, false)
  T.eq(h.insns[1].insn, "jmp 0x401000")
  T.eq(h.insns[1].hits, 99)
  T.eq(h.insns[1].opcode, 0xeb)
  T.eq(h.insns[1].class, "Jumps")

  local p = qemu.plugin.parse("libhotpages.so", "Addr, RCPUs, Reads, WCPUs, Writes\n" ..
    "0x0000000000001000, 0x0001, 12, 0x0003, 4\n")
  T.eq(#p.pages, 1)
  T.eq(p.pages[1].addr, 0x1000)
  T.eq(p.pages[1].read_cpus, 1)
  T.eq(p.pages[1].reads, 12)
  T.eq(p.pages[1].write_cpus, 3)
  T.eq(p.pages[1].writes, 4)
end)

T.test("build and contrib: argument checks, no tree, no such plugin", function()
  T.raises(function() qemu.plugin.build() end, "BadArgument", "src=")
  T.raises(function() qemu.plugin.build("x.c") end, "BadArgument", "table of options")
  T.raises(function() qemu.plugin.build { src = "x.c", cflag = {} } end, "BadArgument", "did you mean 'cflags'")
  T.raises(function() qemu.plugin.build { qemu_src = tmp } end, "BadArgument", "src=.*required")
  T.raises(function() qemu.plugin.build { src = "x.c", cflags = { 1 } } end, "BadArgument", "cflags%[1%]")
  T.raises(function() qemu.plugin.build { src = tmp .. "/nope.c", qemu_src = tmp } end, "PluginError", "nope%.c: no such file")
  T.raises(function() qemu.plugin.contrib(7) end, "BadArgument")
  T.raises(function() qemu.plugin.contrib("cache", { qemu_scr = tmp }) end, "BadArgument", "did you mean 'qemu_src'")
  T.raises(function() qemu.plugin.check_api(1) end, "BadArgument")
  -- a directory that is not a QEMU tree: the path and the fix
  local e = T.raises(function() qemu.plugin.contrib("cache", { qemu_src = tmp }) end, "PluginError")
  T.match(e.desc, tmp:gsub("%p", "%%%0") .. ".* has no include/qemu/qemu%-plugin%.h")
  T.match(e.hint, "apt%-get source qemu")
  T.match(e.hint, "tests/qemu/source%.sh")
  local src = write(tmp .. "/ok.c", "int x;\n")
  e = T.raises(function() qemu.plugin.build { src = src, qemu_src = tmp .. "/missing" } end, "PluginError", "no such directory")
  T.match(e.hint, "qemu_src=")
end)

if not tree then
  io.stderr:write("contrib: the tests that build plugins are skipped: " .. why .. "\n")
  T.run()
end

T.test("contrib: an unknown name lists the tree's plugins; the tree is found by version", function()
  local e = T.raises(function() qemu.plugin.contrib("cachee", { qemu_src = tree }) end, "PluginError")
  T.match(e.desc, "no contrib plugin 'cachee'")
  T.match(e.hint, "cache, .*execlog, .*howvec")
  local names = qemu.plugin.contrib_names { qemu_src = tree }
  T.ok(#names >= 8, "contrib plugins: " .. table.concat(names, " "))
  -- the tree source.sh made is the one qshell picks for this QEMU by itself
  if not os.getenv("QSHELL_QEMU_SRC") then T.eq(qemu.plugin.source(), tree) end
end)

T.test("contrib builds cache and execlog once; a second build is a cache hit", function()
  for _, name in ipairs { "cache", "execlog" } do
    local t0 = T.now()
    local so = qemu.plugin.contrib(name, { qemu_src = tree })
    local first = T.now() - t0
    T.match(so, "/plugins/%x+/lib" .. name .. "%.so$")
    qemu.plugin.check(so)
    local st = require("qshell.os").stat(so)
    t0 = T.now()
    T.eq(qemu.plugin.contrib(name), so, "the same .so, tree found by version")
    local again = T.now() - t0
    T.eq(require("qshell.os").stat(so).mtime, st.mtime, "not rebuilt")
    T.ok(again < 0.25, string.format("a cache hit takes no compile: %.3f s (first %.3f s)", again, first))
    local api, rec = qemu.plugin.api_of(so)
    T.eq(api, v.plugin_api.cur, "built for the API this QEMU takes")
    T.eq(rec.contrib, name)
    T.eq(rec.qemu:match("^%d+%.%d+"), v.major .. "." .. v.minor)
    T.eq(qemu.plugin.check_api(so), api)
    io.stderr:write(string.format("  contrib %s: %.3f s (a compile unless cached before), again %.4f s\n", name, first, again))
  end
  T.eq(cache_files("-name '*.tmp*'"), "", "no temp files in the plugin cache")
end)

-- A boot under the cache plugin takes a minute: the tests measure a
-- workload from a checkpoint of the booted guest instead, as an experiment would.
local ckpt
local function booted()
  if not ckpt then
    local b <close> = qemu.guest.launch {}
    b:checkpoint(tmp .. "/contrib.ckpt")
    ckpt = tmp .. "/contrib.ckpt"
  end
  return ckpt
end

T.test("cache and execlog in the default guest: reports as tables", function()
  -- cached: built by the test before
  local built = { cache = qemu.plugin.contrib("cache"), execlog = qemu.plugin.contrib("execlog") }
  local vm <close> = qemu.launch { restore = booted(), plugins = {
    { name = "insn" },
    { path = built.cache, args = { l2 = "on", limit = 8 } },
    -- every instruction would be gigabytes: only hlt (the kernel's idle loop runs it)
    { path = built.execlog, args = { ifilter = "hlt" } },
  } }
  -- sleep: the guest idles (hlt) for certain, however fast the restore answered
  local out, status = vm.console:run("sleep 0.2; i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; echo $((6 * 7))")
  T.eq(trim(out), "42")
  T.eq(status, 0)
  vm.console:send("poweroff -f\r")
  T.eq(vm:wait { timeout = 120 }.code, 0)
  local log = vm:plugin_log()

  local r = qemu.plugin.result(log, "libcache.so")
  T.eq(#r.cores, 1, "one row per vCPU")
  T.eq(r.sum, nil, "a sum row only for several vCPUs")
  local c = r.cores[1]
  T.eq(c.core, 0)
  for _, k in ipairs { "data", "insn", "l2" } do
    local acc, miss, rate = c[k .. "_accesses"], c[k .. "_misses"], c[k .. "_miss_rate"]
    T.eq(math.type(acc), "integer", k .. " accesses")
    T.ok(acc > miss and miss > 0, string.format("%s: accesses %d > misses %d > 0", k, acc, miss))
    T.ok(rate > 0 and rate < 1, string.format("%s miss rate %g is a fraction", k, rate))
    T.eq(rate, miss / acc)
  end
  T.eq(r.l2.misses, c.l2_misses)
  T.eq(#r.data_hot, 8, "limit=8")
  T.eq(#r.insn_hot, 8)
  T.eq(#r.l2_hot, 8)
  for i, h in ipairs(r.data_hot) do
    T.eq(math.type(h.addr), "integer")
    T.ok(h.misses > 0 and h.disas ~= "", "a hot instruction")
    if i > 1 then T.ok(h.misses <= r.data_hot[i - 1].misses, "sorted by misses") end
  end
  -- the instruction fetches cache saw are the instructions qshell's insn counted
  local total = vm:plugin_result("insn").total
  T.ok(math.abs(c.insn_accesses - total) < 0.25 * total,
       string.format("cache's %d instruction fetches ~ insn's %d instructions", c.insn_accesses, total))

  local e = qemu.plugin.result(log, "libexeclog.so")
  T.ok(#e > 0, "execlog logged the hlt instructions")
  for _, rec in ipairs(e) do
    T.eq(rec.vcpu, 0)
    T.eq(math.type(rec.pc), "integer")
    T.eq(math.type(rec.opcode), "integer")
    T.match(rec.disas, "^hlt")
  end
  io.stderr:write(string.format("  guest: %d hlt records; L1d miss rate %.4f, L1i %.4f, L2 %.4f\n",
                                #e, c.data_miss_rate, c.insn_miss_rate, c.l2_miss_rate))
end)

T.test("a sweep from the checkpoint: per-ROI instruction counts and cache miss rates in the results file", function()
  local built = qemu.plugin.contrib("cache")
  local out = tmp .. "/sweep.csv"
  local res = qemu.sweep {
    from = booted(), out = out, workers = 1, ["repeat"] = 2, progress = false,
    matrix = { assoc = { 2, 8 } },
    launch = function(p)
      return { plugins = { { name = "insn" }, { path = built, args = { dassoc = p.assoc } } } }
    end,
    run = function(vm)
      vm.console:run("qshell-roi begin 1; i=0; while [ $i -lt 1000 ]; do i=$((i+1)); done; qshell-roi end 1")
      vm:quit()
      local c = vm:plugin_result("cache").cores[1]
      return { l1d_miss_rate = c.data_miss_rate, l1i_miss_rate = c.insn_miss_rate }
    end,
  }
  T.eq(res.ok, 4)
  local rows = qemu.sweep.read(out)
  T.eq(#rows, 4)
  for _, row in ipairs(rows) do
    T.ok(row.roi1_insns > 1e6, "the marked loop's instructions: " .. tostring(row.roi1_insns))
    T.ok(row.l1d_miss_rate > 0 and row.l1d_miss_rate < 1, "a miss rate as a number: " .. tostring(row.l1d_miss_rate))
  end
end)

local MINE_MAIN = [[
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

void mine_count_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
uint64_t mine_total(void);

static const char *tag = "none";

static void at_exit(qemu_plugin_id_t id, void *p)
{
    char line[128];
    snprintf(line, sizeof(line), "mine[%s/%s]: %" PRIu64 " instructions\n", MINE_FLAG, tag, mine_total());
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "tag=", 4) == 0) {
            tag = argv[i] + 4;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, mine_count_tb);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
]]

local MINE_COUNT = [[
#include <stdint.h>
#include <qemu-plugin.h>

static uint64_t total;

uint64_t mine_total(void)
{
    return __atomic_load_n(&total, __ATOMIC_RELAXED);
}

static void tb_exec(unsigned int vcpu, void *n)
{
    __atomic_fetch_add(&total, (uint64_t)(uintptr_t)n, __ATOMIC_RELAXED);
}

void mine_count_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}
]]

T.test("build{src=DIR}: a plugin of one's own, its flags, its own parser", function()
  local dir = tmp .. "/mine"
  assert(os.execute("mkdir -p " .. dir))
  write(dir .. "/main.c", MINE_MAIN)
  write(dir .. "/count.c", MINE_COUNT)
  local so = qemu.plugin.build { src = dir, qemu_src = tree, cflags = { '-DMINE_FLAG="flagged"' } }
  T.match(so, "/libmine%.so$")
  T.eq(qemu.plugin.api_of(so), v.plugin_api.cur)
  T.eq(qemu.plugin.build { src = dir, cflags = { '-DMINE_FLAG="flagged"' } }, so, "cached, tree found by version")
  local other = qemu.plugin.build { src = dir, qemu_src = tree, cflags = { '-DMINE_FLAG="other"' } }
  T.ok(other ~= so, "other flags, another build")

  qemu.plugin.parsers.mine = function(text)
    local flag, tag, n = text:match("mine%[(.-)/(.-)%]: (%d+) instructions")
    if not n then return nil, "no mine line" end
    return { flag = flag, tag = tag, total = math.tointeger(tonumber(n)) }
  end
  local ok, err = pcall(function()
    -- no guest: the firmware alone runs millions of instructions
    local vm <close> = qemu.launch { memory = "64M", plugins = { { path = so, args = { tag = "t,1" } } } }
    qemu.sleep(0.3)
    vm:quit()
    local r = qemu.plugin.result(vm:plugin_log(), "libmine.so")
    T.eq(r.flag, "flagged")
    T.eq(r.tag, "t,1")
    T.ok(r.total > 1000, "counted the firmware's instructions: " .. r.total)
  end)
  qemu.plugin.parsers.mine = nil
  if not ok then error(err, 0) end
end)

T.test("build: compiler errors, a .so QEMU would refuse; nothing left behind", function()
  local bad = write(tmp .. "/broken.c", "#include <qemu-plugin.h>\nint broken(void) { return nope; }\n")
  local e = T.raises(function() qemu.plugin.build { src = bad, qemu_src = tree } end, "PluginError")
  T.match(e.desc, "compiling broken %(.*broken%.c%) failed")
  T.match(e.desc, "broken%.c:2:%d+: error: .*nope")
  T.match(e.hint, "fix the source")
  local nover = write(tmp .. "/nover.c", "#include <qemu-plugin.h>\n" ..
    "int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) { return 0; }\n")
  e = T.raises(function() qemu.plugin.build { src = nover, qemu_src = tree } end, "PluginError")
  T.match(e.desc, "plugin nover %(.*nover%.c%) does not export qemu_plugin_version")
  T.eq(cache_files("-name '*.tmp*'"), "", "no temp files in the plugin cache")
  T.eq(cache_files("-type d -empty"), "", "no empty build dirs")
  local noinc = write(tmp .. "/noinc.c", "#include <no-such-header.h>\n")
  T.raises(function() qemu.plugin.build { src = noinc, qemu_src = tree } end, "PluginError", "no%-such%-header%.h")
end)

T.test("a plugin built for this QEMU's API is refused by a QEMU of another", function()
  local built = { cache = qemu.plugin.contrib("cache", { qemu_src = tree }) }
  local api = qemu.plugin.api_of(built.cache)
  local other, ov = other_qemu(api)
  if not other then
    io.stderr:write("  (no QEMU with another plugin API in the run: the cross check is left out)\n")
    return
  end
  local e = T.raises(function() qemu.plugin.check_api(built.cache, other) end, "PluginError")
  T.match(e.desc, string.format("plugin libcache%%.so was built against QEMU %d%%.%d%%.%%d+'s plugin API %d; " ..
                                "this QEMU %%(%s%%) takes %d%%.%%.%d", v.major, v.minor, api,
                                ov.text:gsub("%.", "%%."), ov.plugin_api.min, ov.plugin_api.cur))
  T.match(e.hint, "qemu%.plugin%.contrib%(\"cache\"")
  -- qemu.launch refuses it before QEMU starts, naming both versions
  e = T.raises(function() qemu.launch { binary = other, memory = "64M", plugins = { { path = built.cache } } } end,
               "PluginError")
  T.match(e.desc, "was built against QEMU " .. v.major .. "%." .. v.minor)
  T.match(e.desc, "this QEMU %(" .. ov.text:gsub("%.", "%%.") .. "%)")
  T.eq(#qemu.vms(), 0)
end)

T.run()
