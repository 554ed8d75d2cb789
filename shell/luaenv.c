/*
 * luaenv.c - building the lua_State: standard libraries, the qshell C
 * modules (luaL_requiref), the embedded stdlib as package.preload loaders
 * (mpv's builtin scripts), the QSHELL_STDLIB development searcher, the
 * package.path policy, and the protected-call helpers main and the REPL use.
 *
 * Path policy: a faithful Lua 5.4 host.  The script's directory, then
 * $QSHELL_PATH, then package.path and package.cpath exactly as lua5.4 has
 * them (LUA_PATH/LUA_CPATH honoured, "./?.lua" and the distribution's C
 * module dirs included), so modules installed from the distribution load.
 */
#define _GNU_SOURCE /* realpath */
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ljson.h"
#include "luaenv.h"
#include "proc.h"
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

const char *qs_errno_code(int err)
{
    switch (err) {
    case EINTR:
        return "interrupted";
    case EEXIST:
        return "exists";
    case EACCES:
    case EPERM:
    case EROFS:
        return "perm";
    case ENOSPC:
    case EDQUOT:
        return "nospace";
    case ENOENT:
    case ENOTDIR:
        return "notfound";
    default:
        return "io";
    }
}

int qs_pusherrno(lua_State *L, const char *what, int err)
{
    const char *msg = what ? lua_pushfstring(L, "%s: %s", what, strerror(err)) : strerror(err);
    int n = qs_pushfail(L, msg, qs_errno_code(err));
    if (what) {
        lua_remove(L, -4); /* the message pushed above */
    }
    return n;
}

void qs_pushdigest(lua_State *L, const unsigned char *md)
{
    static const char digits[] = "0123456789abcdef";
    char hex[65];
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
    lua_pushstring(L, hex);
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

static const char *const signames[] = {"TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1", NULL};
static const int signums[] = {SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGSTOP, SIGCONT, SIGUSR1};

int qs_checksignal(lua_State *L, int idx, const char *def)
{
    return signums[luaL_checkoption(L, idx, def, signames)];
}

void qs_push_status(lua_State *L, int status)
{
    char desc[128];
    proc_describe_status(status, desc, sizeof desc);
    lua_createtable(L, 0, 3);
    if (WIFEXITED(status)) {
        lua_pushinteger(L, WEXITSTATUS(status));
        lua_setfield(L, -2, "code");
    } else if (WIFSIGNALED(status)) {
        lua_pushinteger(L, WTERMSIG(status));
        lua_setfield(L, -2, "signal");
    }
    lua_pushstring(L, desc);
    lua_setfield(L, -2, "desc");
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

/*
 * qshell.stdlib: the embedded sources, for the manual (stdlib/qemu/doc reads
 * the contract comments out of them).  sources() -> {{path=, module=,
 * source=}, ...} in the embedded order.
 */
static int stdlib_sources(lua_State *L)
{
    lua_newtable(L);
    for (int i = 0; qs_stdlib[i].modname; i++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, qs_stdlib[i].path);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, qs_stdlib[i].modname);
        lua_setfield(L, -2, "module");
        lua_pushlstring(L, qs_stdlib[i].src, qs_stdlib[i].len);
        lua_setfield(L, -2, "source");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int luaopen_qshell_stdlib(lua_State *L)
{
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, stdlib_sources);
    lua_setfield(L, -2, "sources");
    return 1;
}

static void preload_stdlib(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_qshell_stdlib);
    lua_setfield(L, -2, "qshell.stdlib");
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

/*
 * Lua's own path policy, so anything `lua5.4 script.lua` loads, qshell
 * loads too: luaopen_package already built package.path and package.cpath
 * from LUA_PATH_5_4 / LUA_PATH (";;" = the default) and their CPATH twins,
 * with "./?.lua" and the distribution's module dirs in the default.
 * $QSHELL_PATH goes first; luaenv_add_script_dir puts the script's own
 * directory ahead of everything, so a helper module beside a script is the
 * one it gets.
 */
static void set_paths(lua_State *L)
{
    const char *user = getenv("QSHELL_PATH");
    if (!user || !*user) {
        return;
    }
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path"); // package path
    lua_pushfstring(L, "%s;%s", user, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

void luaenv_add_script_dir(lua_State *L, const char *script)
{
    const char *slash = strrchr(script, '/');
    lua_getglobal(L, "package");
    if (slash) {
        lua_pushlstring(L, script, (size_t)(slash - script + 1));
    } else {
        lua_pushliteral(L, "./");
    }
    const char *dir = lua_tostring(L, -1);
    lua_getfield(L, -2, "path"); // package dir path
    lua_pushfstring(L, "%s?.lua;%s?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -4, "path");
    lua_pop(L, 3);
}

/*
 * LUA_INIT_5_4, else LUA_INIT, as lua.c runs it: "@file" runs the file,
 * anything else is a chunk named "=LUA_INIT".  Returns a Lua status; the
 * error message, if any, is on the stack for qs_report.
 */
int luaenv_run_init(lua_State *L)
{
    const char *name = "=LUA_INIT_5_4";
    const char *init = getenv(name + 1);
    if (!init) {
        name = "=LUA_INIT";
        init = getenv(name + 1);
    }
    if (!init) {
        return LUA_OK;
    }
    int status = init[0] == '@' ? luaL_loadfile(L, init + 1)
                                : luaL_loadbuffer(L, init, strlen(init), name);
    if (status == LUA_OK) {
        status = qs_docall(L, 0, 0);
    }
    return status;
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
        /* lua.c's l_message: "qshell: file:line: message" outside the prompt. */
        struct qs_state *st = qs_state_get(L);
        if (st && st->progname && !st->interactive) {
            fprintf(stderr, "%s: ", st->progname);
        }
        fprintf(stderr, "%s\n", msg ? msg : "(error with no message)");
        fflush(stderr);
        lua_pop(L, 1);
    }
    return status;
}

/* ---- build configuration ---- */

/*
 * package.loaded["qshell.config"]: the version and the binary's own path
 * (exe).  No directory of the build tree is compiled in: stdlib/qemu/util/paths.lua
 * finds the plugins and the guest builder from where the binary is, so the
 * same binary works in its build tree and after `make install`.
 */
static void push_config(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_createtable(L, 0, 2);
#ifdef __linux__
    char *exe = realpath("/proc/self/exe", NULL);
    if (exe) {
        lua_pushstring(L, exe);
        lua_setfield(L, -2, "exe");
        free(exe);
    }
#endif
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
    luaL_requiref(L, "qshell.os", luaopen_qshell_os, 0);
    lua_pop(L, 1);
    luaL_requiref(L, "qshell.hash", luaopen_qshell_hash, 0);
    lua_pop(L, 1);
    luaL_requiref(L, "qshell.ram.core", luaopen_qshell_ram_core, 0);
    lua_pop(L, 5);
    preload_stdlib(L);
    push_config(L);
    const char *dev = getenv("QSHELL_STDLIB");
    if (dev && *dev) {
        install_dev_searcher(L, dev);
    }
    set_paths(L);
    return 0;
}
