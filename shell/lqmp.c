/*
 * lqmp.c - Lua module "qshell.qmp.core": userdata "qshell.qmp" over qmp.c.
 *
 * Mechanism only: commands, events, timeouts.  Failures come back Lua-io
 * style as nil, message, code ("timeout", "closed", "interrupted", "io",
 * "protocol"); stdlib/qemu/vm/init.lua turns them into error objects with hints.
 */
#include <string.h>

#include <json-c/json.h>
#include <lauxlib.h>
#include <lua.h>

#include "ljson.h"
#include "luaenv.h"
#include "qmp.h"
#include "sig.h"

#define QMP_MT "qshell.qmp"

struct lqmp {
    struct qmp_conn *c; /* NULL once closed */
};

static struct lqmp *new_lqmp(lua_State *L)
{
    /* Closed and with its metatable before it owns anything (newprefile). */
    struct lqmp *q = lua_newuserdatauv(L, sizeof *q, 0);
    q->c = NULL;
    luaL_setmetatable(L, QMP_MT);
    return q;
}

static struct lqmp *check_qmp(lua_State *L, int idx)
{
    struct lqmp *q = luaL_checkudata(L, idx, QMP_MT);
    if (!q->c) {
        luaL_error(L, "attempt to use a closed qmp connection");
    }
    return q;
}

static int conn_fail(lua_State *L, struct qmp_conn *c)
{
    return qs_pushfail(L, c->errstr, qmp_errcode_name(c->err));
}

/* core.open_fd(fd) -> qmp: adopt a connected socket (a socketpair end). */
static int l_qmp_open_fd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd >= 0, 1, "bad file descriptor");
    struct lqmp *q = new_lqmp(L);
    q->c = qmp_open_fd((int)fd);
    q->c->intr = &qs_interrupted;
    return 1;
}

/* core.connect(path [, timeout]) -> qmp | nil, msg, code */
static int l_qmp_connect(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    double timeout = qs_opt_timeout(L, 2);
    struct lqmp *q = new_lqmp(L);
    struct qmp_conn *c = qmp_connect(path, timeout < 0 ? 0 : timeout, &qs_interrupted);
    if (c->err) {
        int n = conn_fail(L, c);
        qmp_free(c);
        return n;
    }
    c->intr = &qs_interrupted;
    q->c = c;
    return 1;
}

/* qmp:handshake([timeout]) -> greeting | nil, msg, code */
static int l_qmp_handshake(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    double timeout = qs_opt_timeout(L, 2);
    if (qmp_handshake(q->c, timeout) < 0) {
        return conn_fail(L, q->c);
    }
    ljson_push_owned(L, json_object_get(q->c->greeting));
    return 1;
}

/*
 * qmp:execute(cmd [, args [, timeout [, fd]]]) -> response | nil, msg, code
 * The response is the whole message: {["return"]=...} or {error={...}}.
 * fd, when given, is passed to QEMU with the command (for getfd).
 */
static int l_qmp_execute(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    const char *cmd = luaL_checkstring(L, 2);
    double timeout = qs_opt_timeout(L, 4);
    lua_Integer pass_fd = luaL_optinteger(L, 5, -1);
    json_object *args = NULL, *reply = NULL;
    char err[160];

    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (ljson_from_lua(L, 3, &args, err, sizeof err) < 0) {
            return luaL_error(L, "arguments of '%s': %s", cmd, err);
        }
    }
    int rc = qmp_execute_fd(q->c, cmd, args, (int)pass_fd, timeout, &reply);
    json_object_put(args);
    if (rc < 0) {
        return conn_fail(L, q->c);
    }
    ljson_push_owned(L, reply);
    return 1;
}

/* qmp:next_event([timeout]) -> event | nil, msg, code */
static int l_qmp_next_event(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    double timeout = qs_opt_timeout(L, 2);
    json_object *ev;
    if (qmp_next_event(q->c, timeout, &ev) < 0) {
        return conn_fail(L, q->c);
    }
    ljson_push_owned(L, ev);
    return 1;
}

/*
 * qmp:events() -> list, [msg, code]: every event that has arrived, oldest
 * first, without blocking.  A connection error after some events still
 * returns them, with the error as extra results.
 */
static int l_qmp_events(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    int rc = qmp_pump(q->c);
    lua_newtable(L);
    lua_Integer i = 0;
    json_object *ev;
    while (q->c->events.head && qmp_next_event(q->c, 0, &ev) == 0) {
        ljson_push_owned(L, ev);
        lua_rawseti(L, -2, ++i);
    }
    if (rc < 0) {
        lua_pushstring(L, q->c->errstr);
        lua_pushstring(L, qmp_errcode_name(q->c->err));
        return 3;
    }
    return 1;
}

/* qmp:pending() -> number of queued events (no I/O) */
static int l_qmp_pending(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    lua_pushinteger(L, (lua_Integer)q->c->events.len);
    return 1;
}

/* qmp:set_log(on) */
static int l_qmp_set_log(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    q->c->log = lua_toboolean(L, 2);
    return 0;
}

/* qmp:fileno() -> fd */
static int l_qmp_fileno(lua_State *L)
{
    struct lqmp *q = check_qmp(L, 1);
    lua_pushinteger(L, q->c->fd);
    return 1;
}

static int l_qmp_close(lua_State *L)
{
    struct lqmp *q = luaL_checkudata(L, 1, QMP_MT);
    if (q->c) {
        qmp_free(q->c);
        q->c = NULL;
    }
    return 0;
}

static int l_qmp_tostring(lua_State *L)
{
    struct lqmp *q = luaL_checkudata(L, 1, QMP_MT);
    if (!q->c) {
        lua_pushliteral(L, "qmp (closed)");
    } else {
        lua_pushfstring(L, "qmp (fd %d)", q->c->fd);
    }
    return 1;
}

static const luaL_Reg qmp_funcs[] = {
    {"open_fd", l_qmp_open_fd},
    {"connect", l_qmp_connect},
    {NULL, NULL},
};

static const luaL_Reg qmp_methods[] = {
    {"handshake", l_qmp_handshake},
    {"execute", l_qmp_execute},
    {"next_event", l_qmp_next_event},
    {"events", l_qmp_events},
    {"pending", l_qmp_pending},
    {"set_log", l_qmp_set_log},
    {"fileno", l_qmp_fileno},
    {"close", l_qmp_close},
    {NULL, NULL},
};

static const luaL_Reg qmp_meta[] = {
    {"__gc", l_qmp_close},
    {"__close", l_qmp_close},
    {"__tostring", l_qmp_tostring},
    {"__index", NULL},
    {NULL, NULL},
};

int luaopen_qshell_qmp_core(lua_State *L)
{
    luaL_newmetatable(L, QMP_MT);
    luaL_setfuncs(L, qmp_meta, 0);
    luaL_newlib(L, qmp_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, qmp_funcs);
    return 1;
}
