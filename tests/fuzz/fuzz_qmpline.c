/*
 * fuzz_qmpline.c - libFuzzer target for the qmp-shell line syntax of the
 * interactive shell: require("qemu.repl").parse_qmp(line), the Lua parser of
 * `:command key=value a.b=1 'quoted words' {json}` in stdlib/qemu/repl.lua.
 *
 * Owns: one lua_State built as qshell builds it (luaenv_init: the standard
 * libraries, the qshell C modules, the embedded stdlib in package.preload),
 * made once in LLVMFuzzerInitialize and closed at exit; the oracle for one
 * line; Lua line coverage for libFuzzer.  Does not own: the parser (stdlib/),
 * the REPL loop (shell/repl.c is not linked).
 *
 * Each input is one line, bytes as they are.  The oracle (the Lua chunk
 * below) calls parse_qmp under pcall and classifies the outcome:
 *  - success: the command is a non-empty [%w_-] name equal to the one in the
 *    line; args is nil exactly when nothing follows the command, else a
 *    table of strings, numbers, booleans, json.null and tables; and
 *    json.encode(args), as vm:qmp would send it, is a JSON object that
 *    json.decode reads back, or fails with a json.encode message (one known
 *    exception, tolerated unless strict: args nested exactly 64 deep encode
 *    but do not decode, tests/fuzz/crashes/qmpline-depth-64);
 *  - an error object of qemu.errors (check.bad): fine, if it prints;
 *  - a plain string error (a Lua runtime error inside the parser, e.g.
 *    indexing a number for `a=1 a.b=2`): fine by default, a finding with
 *    FUZZ_QMPLINE_STRICT=1, since the style guide wants every error raised as
 *    a qshell error table (tests/fuzz/crashes/qmpline-string-*);
 *  - anything else is a broken invariant and aborts, as do crashes in the
 *    C code reached (ljson.c's decode and encode), ASan and UBSan reports.
 *
 * Coverage: liblua5.4 is the distribution's uninstrumented build, so
 * libFuzzer sees nothing of the Lua code it runs.  A line hook hashes
 * (chunk, line, previous line) into an array in the __libfuzzer_extra_counters
 * section, which libFuzzer reads as coverage: new paths through repl.lua
 * count as new features.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The oracle: called with parse_qmp, qemu.errors, qshell.json and the strict
 * flag, returns check(line) -> "ok" | "error" | "string", detail | "broken", why.
 */
static const char oracle_src[] =
    "local parse, errors, json, strict = ...\n"
    "local ARRAY = getmetatable(json.decode(\"[]\"))\n"
    "\n"
    "-- Why v is not made of what the parser may produce, or nil.\n"
    "local function walk(v, depth)\n"
    "  if depth > 200 then return nil end -- deep a.b.c... keys: encode refuses them\n"
    "  local t = type(v)\n"
    "  if t == 'string' or t == 'number' or t == 'boolean' or v == json.null then return nil end\n"
    "  if t ~= 'table' then return 'a ' .. t .. ' value in args' end\n"
    "  for k, x in pairs(v) do\n"
    "    if type(k) ~= 'string' and type(k) ~= 'number' then\n"
    "      return 'a ' .. type(k) .. ' key in args'\n"
    "    end\n"
    "    local why = walk(x, depth + 1)\n"
    "    if why then return why end\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    "\n"
    "-- An array (json.decode's mark) that a.b=... gave a string key.\n"
    "local function array_with_keys(v, depth)\n"
    "  if type(v) ~= 'table' or depth > 200 then return false end\n"
    "  for k, x in pairs(v) do\n"
    "    if getmetatable(v) == ARRAY and math.type(k) ~= 'integer' then return true end\n"
    "    if array_with_keys(x, depth + 1) then return true end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "\n"
    "-- A key with a NUL byte in it (json-c keys are C strings).\n"
    "local function key_with_nul(v, depth)\n"
    "  if type(v) ~= 'table' or depth > 200 then return false end\n"
    "  for k, x in pairs(v) do\n"
    "    if type(k) == 'string' and k:find('\\0', 1, true) then return true end\n"
    "    if key_with_nul(x, depth + 1) then return true end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "\n"
    "-- Where a and b differ (a path), or nil.  Numbers compare as numbers.\n"
    "local function diff(a, b, path, depth)\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' or depth > 200 then\n"
    "    if a == b then return nil end\n"
    "    return path\n"
    "  end\n"
    "  for k, x in pairs(a) do\n"
    "    local d = diff(x, b[k], path .. '.' .. tostring(k), depth + 1)\n"
    "    if d then return d end\n"
    "  end\n"
    "  for k in pairs(b) do\n"
    "    if a[k] == nil then return path .. '.' .. tostring(k) end\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    "\n"
    "return function(line)\n"
    "  local ok, cmd, args, extra = pcall(parse, line)\n"
    "  if not ok then\n"
    "    local e = cmd\n"
    "    if errors.is(e) then\n"
    "      if type(e.desc) ~= 'string' or e.desc == '' then\n"
    "        return 'broken', 'error object without desc'\n"
    "      end\n"
    "      local okp, s = pcall(tostring, e)\n"
    "      if not okp or type(s) ~= 'string' then\n"
    "        return 'broken', 'error object does not print'\n"
    "      end\n"
    "      return 'error'\n"
    "    end\n"
    "    if type(e) == 'string' then return 'string', e end\n"
    "    return 'broken', 'error value is a ' .. type(e)\n"
    "  end\n"
    "  if extra ~= nil then return 'broken', 'more than two results' end\n"
    "  if type(cmd) ~= 'string' or cmd == '' then\n"
    "    return 'broken', 'command is not a non-empty string'\n"
    "  end\n"
    "  if not cmd:match('^[%w_%-]+$') then return 'broken', 'command ' .. cmd end\n"
    "  local want, rest = line:match('^:%s*([%w_%-]+)%s*(.*)$')\n"
    "  if want ~= cmd then return 'broken', 'command is not the one in the line' end\n"
    "  if (rest == '') ~= (args == nil) then\n"
    "    return 'broken', 'args is nil with arguments, or not nil without'\n"
    "  end\n"
    "  if args == nil then return 'ok' end\n"
    "  if type(args) ~= 'table' then return 'broken', 'args is a ' .. type(args) end\n"
    "  local why = walk(args, 0)\n"
    "  if why then return 'broken', why end\n"
    "\n"
    "  -- What vm:qmp would send: a JSON object that says what the line said.\n"
    "  local oke, s = pcall(json.encode, args)\n"
    "  if not oke then\n"
    "    if type(s) == 'string' and s:find('json.encode: ', 1, true) then return 'ok' end\n"
    "    return 'broken', 'json.encode raised ' .. tostring(s)\n"
    "  end\n"
    "  if type(s) ~= 'string' or s:sub(1, 1) ~= '{' then\n"
    "    return 'broken', 'args do not encode as a JSON object: ' .. tostring(s)\n"
    "  end\n"
    "  local okd, back = pcall(json.decode, s)\n"
    "  if not okd and not strict and tostring(back):find('nesting too deep', 1, true) then\n"
    "    return 'ok' -- known: encode allows one level more than decode\n"
    "  end\n"
    "  if not okd or type(back) ~= 'table' then\n"
    "    return 'broken', 'encoded args do not decode: ' .. tostring(back)\n"
    "  end\n"
    "  local where = diff(args, back, 'args', 0)\n"
    "  if where and not strict and array_with_keys(args, 0) then\n"
    "    return 'ok' -- known: a=[...] a.k=v; the array encodes without k\n"
    "  end\n"
    "  if where and not strict and key_with_nul(args, 0) then\n"
    "    return 'ok' -- known: a key is cut at its first NUL byte\n"
    "  end\n"
    "  if where then return 'broken', 'the encoded args lose or change ' .. where end\n"
    "  return 'ok'\n"
    "end\n";

static struct qs_state state;
static lua_State *L;
static int oracle_ref = LUA_NOREF;
static int strict;

/* ---- Lua line coverage as libFuzzer extra counters ---- */

#define NCOUNTERS 8192
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t
    lua_counters[NCOUNTERS];
static uintptr_t prev_loc;

static void cov_hook(lua_State *L1, lua_Debug *ar)
{
    if (!lua_getinfo(L1, "S", ar)) {
        return;
    }
    /* The source string of a loaded chunk is interned: its address names it. */
    uintptr_t loc = (uintptr_t)ar->source * 2654435761u + (uintptr_t)ar->currentline;
    uintptr_t edge = loc ^ (prev_loc >> 1);
    edge ^= edge >> 15;
    edge *= 0x2c1b3c6dU;
    edge ^= edge >> 12;
    lua_counters[edge % NCOUNTERS]++;
    prev_loc = loc;
}

/* ---- setup ---- */

static void die_lua(const char *what)
{
    fprintf(stderr, "fuzz_qmpline: %s: %s\n", what,
            lua_isstring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1));
    exit(2);
}

/* require(name), leaving the module on the stack. */
static void require(const char *name)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        die_lua(name);
    }
}

static void close_state(void)
{
    if (L) {
        luaL_unref(L, LUA_REGISTRYINDEX, oracle_ref);
        lua_close(L);
        L = NULL;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *s = getenv("FUZZ_QMPLINE_STRICT");
    strict = !(s && strcmp(s, "0") == 0); /* strict unless =0 */
    /* The state must be the embedded stdlib's, whatever the environment says. */
    unsetenv("QSHELL_STDLIB");
    unsetenv("LUA_INIT");
    unsetenv("LUA_INIT_5_4");

    L = luaenv_open(&state);
    if (!L) {
        fprintf(stderr, "fuzz_qmpline: cannot create a Lua state\n");
        exit(2);
    }
    lua_pushcfunction(L, luaenv_init);
    lua_pushlightuserdata(L, &state);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        die_lua("luaenv_init");
    }
    if (luaL_loadbuffer(L, oracle_src, sizeof oracle_src - 1, "=fuzz_qmpline") != LUA_OK) {
        die_lua("oracle");
    }
    require("qemu.repl");
    lua_getfield(L, -1, "parse_qmp"); // oracle repl parse
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        die_lua("qemu.repl.parse_qmp is not a function");
    }
    require("qemu.errors");
    require("qshell.json");
    lua_pushboolean(L, strict); // oracle parse errors json strict
    if (lua_pcall(L, 4, 1, 0) != LUA_OK) {
        die_lua("oracle");
    }
    oracle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    atexit(close_state);
    lua_sethook(L, cov_hook, LUA_MASKLINE, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int top = lua_gettop(L);
    prev_loc = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, oracle_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
        die_lua("the oracle itself failed");
    }
    const char *verdict = lua_tostring(L, -2); // verdict detail
    const char *detail = lua_tostring(L, -1);
    if (!verdict) {
        die_lua("the oracle returned no verdict");
    }
    if (strcmp(verdict, "broken") == 0 || (strict && strcmp(verdict, "string") == 0)) {
        fprintf(stderr, "fuzz_qmpline: %s: %s\n  line: %.*s\n",
                strcmp(verdict, "broken") == 0 ? "invariant broken"
                                               : "a plain string error (strict mode)",
                detail ? detail : "?", (int)(size < 300 ? size : 300), (const char *)data);
        abort();
    }
    lua_settop(L, top);
    /*
     * Free this input's garbage now.  libFuzzer runs a whole-heap leak
     * check after any input that malloc'd more than it freed, and Lua's
     * deferred collection would make that nearly every input.  Twice: a
     * userdata with __gc (ljson's box) is freed by the second cycle.
     */
    lua_gc(L, LUA_GCCOLLECT, 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
