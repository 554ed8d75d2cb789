/*
 * repl.c - reading Lua chunks from a terminal (libedit) or a pipe.
 *
 * A line is first tried as `return <line>;` (lua.c's addreturn), then as a
 * statement; while the chunk is incomplete (a syntax error at <eof>) more
 * lines are read (lua.c's multiline).  Without a terminal there is no
 * prompt and the first error ends the run with status 1 (`lua -`, SQLite's
 * bail_on_error).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"
#include "repl.h"
#include "sig.h"
#include "util.h"

#define EOFMARK "<eof>"
#define MARKLEN (sizeof(EOFMARK) / sizeof(char) - 1)

/* 1 if the load failed only because the chunk is unfinished. */
static int incomplete(lua_State *L, int status)
{
    if (status == LUA_ERRSYNTAX) {
        size_t lmsg;
        const char *msg = lua_tolstring(L, -1, &lmsg);
        if (lmsg >= MARKLEN && strcmp(msg + lmsg - MARKLEN, EOFMARK) == 0) {
            lua_pop(L, 1);
            return 1;
        }
    }
    return 0;
}

/* Compile buf as "return buf;" (an expression) or as statements. */
static int load_chunk(lua_State *L, const char *buf, size_t len, const char *name)
{
    const char *ret = lua_pushfstring(L, "return %s;", buf);
    int status = luaL_loadbuffer(L, ret, strlen(ret), name);
    lua_remove(L, -2);
    if (status == LUA_OK) {
        return status;
    }
    lua_pop(L, 1);
    return luaL_loadbuffer(L, buf, len, name);
}

/* Print the values left by a chunk through the global print. */
static void print_results(lua_State *L, int base)
{
    int n = lua_gettop(L) - base;
    if (n <= 0) {
        return;
    }
    lua_getglobal(L, "print");
    lua_insert(L, base + 1);
    if (qs_docall(L, n, 0) != LUA_OK) {
        qs_report(L, LUA_ERRRUN);
    }
}

/* Non-interactive: read chunks from stdin until EOF or the first error. */
static int run_pipe(lua_State *L)
{
    struct strbuf chunk;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;

    sb_init(&chunk);
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        sb_add(&chunk, line, (size_t)n);
        int base = lua_gettop(L);
        int status = load_chunk(L, chunk.buf, chunk.len, "=stdin");
        if (incomplete(L, status)) {
            continue;
        }
        sb_consume(&chunk, chunk.len);
        if (status == LUA_OK) {
            status = qs_docall(L, 0, LUA_MULTRET);
        }
        if (status != LUA_OK) {
            qs_report(L, status);
            rc = 1;
            break;
        }
        print_results(L, base);
        lua_settop(L, base);
        if (qs_terminating) {
            rc = 1;
            break;
        }
    }
    if (rc == 0 && chunk.len > 0) {
        /* Input ended inside a chunk: report its syntax error. */
        int status = load_chunk(L, chunk.buf, chunk.len, "=stdin");
        if (status != LUA_OK) {
            qs_report(L, status);
            rc = 1;
        } else {
            lua_pop(L, 1);
        }
    }
    free(line);
    sb_free(&chunk);
    return rc;
}

int repl_main(lua_State *L, const char *attach_socket)
{
    if (attach_socket) {
        lua_getglobal(L, "qemu");
        lua_getfield(L, -1, "attach");
        lua_pushstring(L, attach_socket);
        if (qs_report(L, qs_docall(L, 1, 1)) != LUA_OK) {
            lua_pop(L, 1);
            return 1;
        }
        lua_setglobal(L, "vm");
        lua_pop(L, 1);
    }
    if (!isatty(STDIN_FILENO)) {
        return run_pipe(L);
    }
    fprintf(stderr, "qshell: the interactive shell is not built yet; see qshell --help\n");
    return 1;
}
