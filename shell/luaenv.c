/*
 * luaenv.c - building the lua_State: standard libraries, the qshell C
 * modules (luaL_requiref), the embedded stdlib as package.preload loaders
 * (mpv's builtin scripts), the QSHELL_STDLIB development searcher, the
 * package.path policy, and the protected-call helpers main and the REPL use.
 *
 * Path policy: $QSHELL_PATH, then the script's directory, then the absolute
 * entries of Lua's default path.  Relative entries ("./?.lua") are dropped,
 * as mpv does, so a script's behaviour does not depend on the cwd; cpath is
 * emptied: qshell loads no C modules from disk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ljson.h"
#include "luaenv.h"
#include "sig.h"

#ifndef QSHELL_VERSION
#define QSHELL_VERSION "unknown"
#endif

static const char state_key = 'S';

struct qs_state *qs_state_get(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
    struct qs_state *st = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return st;
}

int qs_pushfail(lua_State *L, const char *msg, const char *code)
{
    if (strcmp(code, "interrupted") == 0) {
        sig_clear(L);
    }
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 3;
}

double qs_opt_timeout(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) {
        return -1.0;
    }
    double t = luaL_checknumber(L, idx);
    luaL_argcheck(L, t >= 0, idx, "timeout must be >= 0");
    return t;
}

/* ---- embedded stdlib ---- */

/* Chunk name "=qemu/vm.lua": errors read "qemu/vm.lua:12:", and
 * stdlib/qemu/errors.lua can tell library frames from the user's. */
static int load_chunk(lua_State *L, const char *src, size_t len, const char *path)
{
    lua_pushfstring(L, "=%s", path);
    int rc = luaL_loadbuffer(L, src, len, lua_tostring(L, -1));
    lua_remove(L, -2);
    return rc;
}

/* package.preload loader: upvalue 1 is the index into qs_stdlib. */
static int preload_loader(lua_State *L)
{
    const struct qs_stdlib_entry *e = &qs_stdlib[lua_tointeger(L, lua_upvalueindex(1))];
    if (load_chunk(L, e->src, e->len, e->path) != LUA_OK) {
        return lua_error(L);
    }
    lua_pushstring(L, e->modname);
    lua_call(L, 1, 1); /* inside require: protected by the caller */
    return 1;
}

static void preload_stdlib(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (int i = 0; qs_stdlib[i].modname; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, preload_loader, 1);
        lua_setfield(L, -2, qs_stdlib[i].modname);
    }
    lua_pop(L, 1);
}

/*
 * QSHELL_STDLIB=dir: a searcher ahead of preload that loads dir/qemu/x.lua
 * (or dir/qemu/init.lua), so stdlib edits need no rebuild.
 */
static int dev_searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *dir = lua_tostring(L, lua_upvalueindex(1));
    const char *rel = luaL_gsub(L, name, ".", "/");
    const char *tries[2];
    tries[0] = lua_pushfstring(L, "%s.lua", rel);
    tries[1] = lua_pushfstring(L, "%s/init.lua", rel);
    for (int i = 0; i < 2; i++) {
        const char *file = lua_pushfstring(L, "%s/%s", dir, tries[i]);
        FILE *f = fopen(file, "rb");
        if (!f) {
            lua_pop(L, 1);
            continue;
        }
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        size_t n;
        do {
            char *p = luaL_prepbuffer(&b);
            n = fread(p, 1, LUAL_BUFFERSIZE, f);
            luaL_addsize(&b, n);
        } while (n == LUAL_BUFFERSIZE);
        fclose(f);
        luaL_pushresult(&b);
        size_t len;
        const char *src = lua_tolstring(L, -1, &len);
        if (load_chunk(L, src, len, tries[i]) != LUA_OK) {
            return luaL_error(L, "error loading module '%s' from %s:\n\t%s", name, file,
                              lua_tostring(L, -1));
        }
        lua_pushstring(L, file);
        return 2;
    }
    lua_pushfstring(L, "no file in QSHELL_STDLIB for '%s'", name);
    return 1;
}

static void install_dev_searcher(lua_State *L, const char *dir)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchers"); // package searchers
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = n; i >= 1; i--) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushstring(L, dir);
    lua_pushcclosure(L, dev_searcher, 1);
    lua_rawseti(L, -2, 1);
    lua_pop(L, 2);
}

/* ---- package.path ---- */

/* Keep the absolute entries of path (drop "./?.lua" and friends). */
static void push_absolute_entries(lua_State *L, const char *path)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int first = 1;
    while (*path) {
        const char *end = strchr(path, ';');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        if (len > 0 && path[0] == '/') {
            if (!first) {
                luaL_addchar(&b, ';');
            }
            luaL_addlstring(&b, path, len);
            first = 0;
        }
        path += len;
        if (*path == ';') {
            path++;
        }
    }
    luaL_pushresult(&b);
}

static void set_paths(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    const char *def = lua_tostring(L, -1);
    push_absolute_entries(L, def ? def : ""); // package path abs
    const char *user = getenv("QSHELL_PATH");
    if (user && *user) {
        lua_pushfstring(L, "%s;%s", user, lua_tostring(L, -1));
        lua_replace(L, -2);
    }
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
}

void luaenv_add_script_dir(lua_State *L, const char *script)
{
    const char *slash = strrchr(script, '/');
    lua_getglobal(L, "package");
    if (slash) {
        lua_pushlstring(L, script, (size_t)(slash - script));
    } else {
        lua_pushliteral(L, ".");
    }
    const char *dir = lua_tostring(L, -1);
    lua_getfield(L, -2, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -4, "path");
    lua_pop(L, 3);
}

/* ---- protected calls ---- */

static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
        } else {
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        }
    }
    struct qs_state *st = qs_state_get(L);
    if (st && st->verbose) {
        luaL_traceback(L, L, msg, 1);
    } else {
        lua_pushstring(L, msg);
    }
    return 1;
}

int qs_docall(lua_State *L, int narg, int nres)
{
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    int status = lua_pcall(L, narg, nres, base);
    lua_remove(L, base);
    return status;
}

int qs_report(lua_State *L, int status)
{
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "%s\n", msg ? msg : "(error with no message)");
        fflush(stderr);
        lua_pop(L, 1);
    }
    return status;
}

/* ---- build configuration ---- */

#ifndef QSHELL_GUEST_DIR
#define QSHELL_GUEST_DIR ""
#endif
#ifndef QSHELL_PLUGIN_DIR
#define QSHELL_PLUGIN_DIR ""
#endif

/* package.loaded["qshell.config"]: where `make` put the guest and plugins. */
static void push_config(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_createtable(L, 0, 3);
    lua_pushliteral(L, QSHELL_GUEST_DIR);
    lua_setfield(L, -2, "guest_dir");
    lua_pushliteral(L, QSHELL_PLUGIN_DIR);
    lua_setfield(L, -2, "plugin_dir");
    lua_pushliteral(L, QSHELL_VERSION);
    lua_setfield(L, -2, "version");
    lua_setfield(L, -2, "qshell.config");
    lua_pop(L, 1);
}

/* ---- the state ---- */

lua_State *luaenv_open(struct qs_state *st)
{
    lua_State *L = luaL_newstate();
    if (L) {
        st->L = L;
    }
    return L;
}

int luaenv_init(lua_State *L)
{
    struct qs_state *st = lua_touserdata(L, 1);
    lua_pushlightuserdata(L, st);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
    luaL_openlibs(L);
    luaL_requiref(L, "qshell.json", luaopen_qshell_json, 0);
    luaL_requiref(L, "qshell.qmp.core", luaopen_qshell_qmp_core, 0);
    luaL_requiref(L, "qshell.proc.core", luaopen_qshell_proc_core, 0);
    luaL_requiref(L, "qshell.console.core", luaopen_qshell_console_core, 0);
    lua_pop(L, 4);
    preload_stdlib(L);
    push_config(L);
    const char *dev = getenv("QSHELL_STDLIB");
    if (dev && *dev) {
        install_dev_searcher(L, dev);
    }
    set_paths(L);
    return 0;
}
