/*
 * lconsole.c - Lua module "qshell.console.core": userdata "qshell.console"
 * over console.c.  Mechanism only; expect/run/login live in
 * stdlib/qemu/vm/console.lua.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "console.h"
#include "luaenv.h"
#include "sig.h"
#include "util.h"

#define CONSOLE_MT "qshell.console"
#define BOX_MT "qshell.console.box"

struct lconsole {
    struct qs_console *c; /* NULL once closed */
};

static struct lconsole *check_console(lua_State *L, int idx)
{
    struct lconsole *lc = luaL_checkudata(L, idx, CONSOLE_MT);
    if (!lc->c) {
        luaL_error(L, "attempt to use a closed console");
    }
    return lc;
}

static const char *code_name(int err)
{
    switch (err) {
    case CONSOLE_ERR_TIMEOUT:
        return "timeout";
    case CONSOLE_ERR_CLOSED:
        return "closed";
    case CONSOLE_ERR_INTERRUPTED:
        return "interrupted";
    default:
        return "io";
    }
}

static int console_fail(lua_State *L, struct qs_console *c)
{
    return qs_pushfail(L, c->errstr, code_name(c->err));
}

/* core.open(fd [, t0]) -> console: adopt the console socket, start reading */
static int l_console_open(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    double t0 = luaL_optnumber(L, 2, now_mono());
    luaL_argcheck(L, fd >= 0, 1, "bad file descriptor");
    struct lconsole *lc = lua_newuserdatauv(L, sizeof *lc, 0);
    lc->c = NULL;
    luaL_setmetatable(L, CONSOLE_MT);
    lc->c = console_open((int)fd, t0);
    if (lc->c->err) {
        int n = console_fail(L, lc->c);
        console_close(lc->c);
        lc->c = NULL;
        return n;
    }
    return 1;
}

/* console:send(data [, timeout]) -> true | nil, msg, code */
static int l_console_send(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    double timeout = qs_opt_timeout(L, 3);
    if (console_send(lc->c, s, len, timeout, &qs_interrupted) < 0) {
        return console_fail(L, lc->c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* console:wait(have [, timeout]) -> true | nil, msg, code: more than `have` bytes buffered */
static int l_console_wait(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    lua_Integer have = luaL_checkinteger(L, 2);
    double timeout = qs_opt_timeout(L, 3);
    if (console_wait(lc->c, have < 0 ? 0 : (size_t)have, timeout, &qs_interrupted) < 0) {
        return console_fail(L, lc->c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* console:peek() -> the unconsumed output */
static int l_console_peek(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    size_t len;
    /* Anchor the copy in a box first, so a memory error cannot leak it. */
    char **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, BOX_MT);
    *box = console_copy(lc->c, &len);
    lua_pushlstring(L, *box, len);
    free(*box);
    *box = NULL;
    lua_remove(L, -2);
    return 1;
}

/* console:consume(n): drop the first n bytes of unconsumed output */
static int l_console_consume(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "must be >= 0");
    console_consume(lc->c, (size_t)n);
    return 0;
}

/* console:stats() -> total bytes, dropped bytes, eof */
static int l_console_stats(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    pthread_mutex_lock(&lc->c->lock);
    lua_Integer total = (lua_Integer)lc->c->total, dropped = (lua_Integer)lc->c->dropped;
    int eof = lc->c->eof;
    pthread_mutex_unlock(&lc->c->lock);
    lua_pushinteger(L, total);
    lua_pushinteger(L, dropped);
    lua_pushboolean(L, eof);
    return 3;
}

/* console:unread() -> bytes sent that QEMU has not read | nil, msg, code */
static int l_console_unread(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    long n = console_unread(lc->c);
    if (n < 0) {
        return qs_pusherrno(L, "console unread", errno);
    }
    lua_pushinteger(L, n);
    return 1;
}

/* console:log(path | nil) -> true | nil, msg, code */
static int l_console_log(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    const char *path = luaL_optstring(L, 2, NULL);
    if (console_set_log(lc->c, path) < 0) {
        return console_fail(L, lc->c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* console:attach([escape [, prompt]]) -> true | nil, msg, code
 * prompt: the guest shell's prompt; the terminal's size is sent only
 * while it is waiting (nil: never). */
static int l_console_attach(lua_State *L)
{
    struct lconsole *lc = check_console(L, 1);
    lua_Integer esc = luaL_optinteger(L, 2, 0x1d);
    const char *prompt = luaL_optstring(L, 3, NULL);
    luaL_argcheck(L, esc >= 0 && esc < 256, 2, "escape must be a byte");
    fflush(stdout);
    if (console_attach(lc->c, STDIN_FILENO, STDOUT_FILENO, (int)esc, prompt, &qs_interrupted) <
        0) {
        return console_fail(L, lc->c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_console_close(lua_State *L)
{
    struct lconsole *lc = luaL_checkudata(L, 1, CONSOLE_MT);
    if (lc->c) {
        console_close(lc->c);
        lc->c = NULL;
    }
    return 0;
}

static int box_gc(lua_State *L)
{
    char **box = luaL_checkudata(L, 1, BOX_MT);
    free(*box);
    *box = NULL;
    return 0;
}

static int l_console_tostring(lua_State *L)
{
    struct lconsole *lc = luaL_checkudata(L, 1, CONSOLE_MT);
    if (!lc->c) {
        lua_pushliteral(L, "console (closed)");
    } else {
        lua_pushfstring(L, "console (fd %d)", lc->c->fd);
    }
    return 1;
}

static const luaL_Reg console_funcs[] = {
    {"open", l_console_open},
    {NULL, NULL},
};

static const luaL_Reg console_methods[] = {
    {"send", l_console_send},   {"wait", l_console_wait},     {"peek", l_console_peek},
    {"consume", l_console_consume}, {"stats", l_console_stats}, {"log", l_console_log},
    {"unread", l_console_unread},
    {"attach", l_console_attach}, {"close", l_console_close}, {NULL, NULL},
};

static const luaL_Reg console_meta[] = {
    {"__gc", l_console_close},
    {"__close", l_console_close},
    {"__tostring", l_console_tostring},
    {"__index", NULL},
    {NULL, NULL},
};

int luaopen_qshell_console_core(lua_State *L)
{
    luaL_newmetatable(L, CONSOLE_MT);
    luaL_setfuncs(L, console_meta, 0);
    luaL_newlib(L, console_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, BOX_MT);
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newlib(L, console_funcs);
    return 1;
}
