/*
 * lproc.c - Lua module "qshell.proc.core": userdata "qshell.proc" over
 * proc.c (a child process with its private temp dir, log and sockets), and
 * sweep_stale for the temp dirs of qshells that died.  The POSIX calls with
 * no object (fork, pipe, stat, ...) are los.c's "qshell.os".
 *
 * A proc owns its child and its temp dir from proc.new() on, so the argv can
 * name files in the temp dir before the spawn.  __gc and close() take the
 * short path (SIGKILL, reap, remove the dir) and never block on QMP; the
 * graceful quit ladder is stdlib/qemu/vm/init.lua's.
 */
#define _XOPEN_SOURCE 700 /* realpath */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"
#include "proc.h"
#include "sig.h"
#include "util.h"

#define PROC_MT "qshell.proc"
#define MAX_ARGV 4096

struct lproc {
    struct qs_proc *p; /* NULL once closed */
};

static struct lproc *check_proc(lua_State *L, int idx)
{
    struct lproc *lp = luaL_checkudata(L, idx, PROC_MT);
    if (!lp->p) {
        luaL_error(L, "attempt to use a closed process");
    }
    return lp;
}

static const char *proc_code(int err)
{
    switch (err) {
    case PROC_ERR_TIMEOUT:
        return "timeout";
    case PROC_ERR_INTERRUPTED:
        return "interrupted";
    case PROC_ERR_EXEC:
        return "exec";
    default:
        return "io";
    }
}

/* core.new([prefix]) -> proc | nil, msg, code: a proc with its temp dir */
static int l_proc_new(lua_State *L)
{
    const char *prefix = luaL_optstring(L, 1, "qshell");
    struct lproc *lp = lua_newuserdatauv(L, sizeof *lp, 0);
    lp->p = NULL;
    luaL_setmetatable(L, PROC_MT);
    lp->p = proc_new(prefix);
    if (lp->p->err) {
        int n = qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
        proc_free(lp->p);
        lp->p = NULL;
        return n;
    }
    const char *keep = getenv("QSHELL_KEEP_TMP");
    lp->p->keep_tmp = keep && *keep && strcmp(keep, "0") != 0;
    return 1;
}

/*
 * proc:spawn(argv [, nsockets [, stdout_path [, stdin_path]]]) -> true | nil, msg, code
 * argv is a list of strings; socketpair i (1-based) is fd 2+i in the child.
 * stdout goes to the log with stderr, or to stdout_path when given; stdin
 * is /dev/null or stdin_path.
 */
static int l_proc_spawn(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer nsocks = luaL_optinteger(L, 3, 0);
    const char *out = luaL_optstring(L, 4, NULL);
    const char *in = luaL_optstring(L, 5, NULL);
    luaL_argcheck(L, nsocks >= 0 && nsocks <= PROC_MAX_SOCKS, 3, "bad number of sockets");
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    luaL_argcheck(L, n >= 1 && n < MAX_ARGV, 2, "argv must be a non-empty list");
    /* Check every element before allocating (STYLE 2.4). */
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 2, i) != LUA_TSTRING) {
            return luaL_error(L, "argv[%d] is a %s, not a string", (int)i, luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
    /* The strings stay alive in the argv table during the call. */
    char **argv = xcalloc((size_t)n + 1, sizeof *argv);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        argv[i - 1] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    int rc = proc_spawn_io(lp->p, argv, (int)nsocks, in, out);
    free(argv);
    if (rc < 0) {
        return qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* proc:pass_file(path) -> the child's fd number for it | nil, msg, code (before spawn) */
static int l_proc_pass_file(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    const char *path = luaL_checkstring(L, 2);
    int n = proc_pass_file(lp->p, path);
    if (n < 0) {
        return qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
    }
    lua_pushinteger(L, n);
    return 1;
}

/* proc:pass_fd(fd) -> the child's fd number for a copy of fd (the caller
 * keeps fd) | nil, msg, code (before spawn) */
static int l_proc_pass_fd(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_Integer fd = luaL_checkinteger(L, 2);
    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, 2, "not a file descriptor");
    int n = proc_pass_fd(lp->p, (int)fd);
    if (n < 0) {
        return qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
    }
    lua_pushinteger(L, n);
    return 1;
}

/* proc:share_socket(i) -> the child's fd number for a copy of the parent's
 * end of socketpair i (1-based) | nil, msg, code (before spawn) */
static int l_proc_share_socket(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    luaL_argcheck(L, i >= 1 && i <= PROC_MAX_SOCKS, 2, "bad socketpair");
    int n = proc_share_socket(lp->p, (int)i - 1);
    if (n < 0) {
        return qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
    }
    lua_pushinteger(L, n);
    return 1;
}

/* proc:hold(fd) -> true | nil, msg, code: fd is the proc's from now on,
 * closed with it (close, __gc, exit, and in a fork copy) */
static int l_proc_hold(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_Integer fd = luaL_checkinteger(L, 2);
    luaL_argcheck(L, fd > 2 && fd <= INT_MAX, 2, "not a file descriptor");
    if (proc_hold_fd(lp->p, (int)fd) < 0) {
        return qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* proc:setenv(name, value): in the child's environment only (before spawn) */
static int l_proc_setenv(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *value = luaL_checkstring(L, 3);
    luaL_argcheck(L, *name && !strchr(name, '='), 2, "bad environment variable name");
    proc_setenv(lp->p, name, value);
    return 0;
}

/* proc:take_socket(i) -> fd: hand over socketpair i (1-based) */
static int l_proc_take_socket(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    int fd = proc_take_sock(lp->p, (int)i - 1);
    luaL_argcheck(L, fd >= 0, 2, "no such socket, or already taken");
    lua_pushinteger(L, fd);
    return 1;
}

/* proc:pid() -> pid | nil once reaped */
static int l_proc_pid(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    if (lp->p->pid > 0) {
        lua_pushinteger(L, lp->p->pid);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

/* proc:poll() -> nil while running | status {code=, signal=, desc=} */
static int l_proc_poll(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    if (!lp->p->reaped && !proc_poll(lp->p)) {
        lua_pushnil(L);
        return 1;
    }
    qs_push_status(L, lp->p->status);
    return 1;
}

/* proc:wait([timeout]) -> status | nil, msg, code */
static int l_proc_wait(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    double timeout = luaL_optnumber(L, 2, -1);
    if (proc_wait(lp->p, timeout, &qs_interrupted) < 0) {
        return qs_pushfail(L, lp->p->errstr, proc_code(lp->p->err));
    }
    qs_push_status(L, lp->p->status);
    return 1;
}

/* proc:signal(name) : "TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1" */
static int l_proc_signal(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    int sig = qs_checksignal(L, 2, NULL);
    if (proc_signal(lp->p, sig) < 0) {
        return qs_pushfail(L, lp->p->errstr, "io");
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* proc:kill() -> status: SIGKILL and reap */
static int l_proc_kill(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    proc_kill(lp->p);
    qs_push_status(L, lp->p->status);
    return 1;
}

/* proc:tmpdir() -> path | nil once released */
static int l_proc_tmpdir(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_pushstring(L, lp->p->tmpdir);
    return 1;
}

/* proc:logpath() -> path of the child's stdout+stderr */
static int l_proc_logpath(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_pushstring(L, lp->p->logpath);
    return 1;
}

/* proc:log_tail([bytes]) -> the last bytes of the log (default 2000) */
static int l_proc_log_tail(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    lua_Integer n = luaL_optinteger(L, 2, 2000);
    luaL_argcheck(L, n > 0 && n <= (1 << 24), 2, "bad size");
    /* Read straight into a Lua buffer: no malloc'd copy to leak on a raise. */
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, (size_t)n);
    int fd = open(lp->p->logpath, O_RDONLY | O_CLOEXEC);
    ssize_t got = 0;
    if (fd >= 0) {
        struct stat st;
        off_t start = 0;
        if (fstat(fd, &st) == 0 && st.st_size > (off_t)n) {
            start = st.st_size - (off_t)n;
        }
        got = pread(fd, dst, (size_t)n, start);
        close(fd);
    }
    luaL_pushresultsize(&b, got > 0 ? (size_t)got : 0);
    return 1;
}

/* proc:close(): kill, reap, remove the temp dir (kept with QSHELL_KEEP_TMP=1). */
static int l_proc_close(lua_State *L)
{
    struct lproc *lp = luaL_checkudata(L, 1, PROC_MT);
    if (lp->p) {
        if (lp->p->keep_tmp && lp->p->tmpdir) {
            fprintf(stderr, "qshell: kept %s\n", lp->p->tmpdir);
        }
        proc_free(lp->p);
        lp->p = NULL;
    }
    return 0;
}

static int l_proc_tostring(lua_State *L)
{
    struct lproc *lp = luaL_checkudata(L, 1, PROC_MT);
    if (!lp->p) {
        lua_pushliteral(L, "proc (closed)");
    } else if (lp->p->pid > 0) {
        lua_pushfstring(L, "proc (pid %d)", (int)lp->p->pid);
    } else {
        lua_pushliteral(L, "proc (not running)");
    }
    return 1;
}

/* core.now() -> monotonic seconds (for deadlines in Lua) */
/* proc.sweep_stale(): remove temp dirs of dead qshell processes now */
static int l_proc_sweep_stale(lua_State *L)
{
    (void)L;
    proc_sweep_stale("qshell");
    return 0;
}

static const luaL_Reg proc_funcs[] = {
    {"new", l_proc_new},
    {"sweep_stale", l_proc_sweep_stale},
    {NULL, NULL},
};

static const luaL_Reg proc_methods[] = {
    {"spawn", l_proc_spawn},   {"take_socket", l_proc_take_socket},
    {"setenv", l_proc_setenv}, {"pass_file", l_proc_pass_file},
    {"pass_fd", l_proc_pass_fd}, {"hold", l_proc_hold}, {"share_socket", l_proc_share_socket},
    {"pid", l_proc_pid},       {"poll", l_proc_poll},
    {"wait", l_proc_wait},     {"signal", l_proc_signal},
    {"kill", l_proc_kill},     {"tmpdir", l_proc_tmpdir},
    {"logpath", l_proc_logpath}, {"log_tail", l_proc_log_tail},
    {"close", l_proc_close},   {NULL, NULL},
};

static const luaL_Reg proc_meta[] = {
    {"__gc", l_proc_close},
    {"__close", l_proc_close},
    {"__tostring", l_proc_tostring},
    {"__index", NULL},
    {NULL, NULL},
};

int luaopen_qshell_proc_core(lua_State *L)
{
    luaL_newmetatable(L, PROC_MT);
    luaL_setfuncs(L, proc_meta, 0);
    luaL_newlib(L, proc_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, proc_funcs);
    return 1;
}
