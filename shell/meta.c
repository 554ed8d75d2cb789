/*
 * meta.c - dot-commands: one table of {name, min/max args, handler, help},
 * as the SQLite shell's do_meta_command dispatches.  Handlers return
 * META_OK, META_ERROR or META_QUIT; the policy behind .vms/.use/.log lives
 * in stdlib/qemu/repl.lua.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"
#include "meta.h"

#define MAX_ARGS 8

struct meta_cmd {
    const char *name;
    int min_args, max_args;
    int (*fn)(lua_State *L, int argc, char **argv);
    const char *usage;
};

int repl_module(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "qemu.repl");
    return qs_docall(L, 1, 1);
}

/* Call qemu.repl.<fn>(args...) with nargs already pushed; nres results. */
static int call_repl(lua_State *L, const char *fn, int nargs, int nres)
{
    if (repl_module(L) != LUA_OK) {
        lua_pop(L, nargs);
        return qs_report(L, LUA_ERRRUN);
    }
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    lua_insert(L, -nargs - 1);
    return qs_report(L, qs_docall(L, nargs, nres));
}

/* .help: the shell's own help; .help NAME: that entry of the Lua reference
 * (qemu.doc.help, the same text as help(NAME)). */
static int m_help(lua_State *L, int argc, char **argv)
{
    if (argc == 2) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "qemu.doc.help");
        if (qs_report(L, qs_docall(L, 1, 1)) != LUA_OK) {
            return META_ERROR;
        }
        lua_getfield(L, -1, "help");
        lua_remove(L, -2);
        lua_pushstring(L, argv[1]);
        return qs_report(L, qs_docall(L, 1, 0)) == LUA_OK ? META_OK : META_ERROR;
    }
    if (repl_module(L) != LUA_OK) {
        qs_report(L, LUA_ERRRUN);
        return META_ERROR;
    }
    lua_getfield(L, -1, "help");
    fputs(lua_tostring(L, -1) ? lua_tostring(L, -1) : "", stdout);
    lua_pop(L, 2);
    return META_OK;
}

static int m_vms(lua_State *L, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (call_repl(L, "vms_text", 0, 1) != LUA_OK) {
        return META_ERROR;
    }
    fputs(lua_tostring(L, -1) ? lua_tostring(L, -1) : "", stdout);
    lua_pop(L, 1);
    return META_OK;
}

static int m_use(lua_State *L, int argc, char **argv)
{
    (void)argc;
    lua_pushstring(L, argv[1]);
    if (call_repl(L, "use", 1, 1) != LUA_OK) {
        return META_ERROR;
    }
    printf("current VM: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return META_OK;
}

static int m_load(lua_State *L, int argc, char **argv)
{
    (void)argc;
    int status = luaL_loadfile(L, argv[1]);
    if (status == LUA_OK) {
        status = qs_docall(L, 0, 0);
    }
    return qs_report(L, status) == LUA_OK ? META_OK : META_ERROR;
}

static int m_log(lua_State *L, int argc, char **argv)
{
    (void)argc;
    int on;
    if (strcmp(argv[1], "on") == 0) {
        on = 1;
    } else if (strcmp(argv[1], "off") == 0) {
        on = 0;
    } else {
        fprintf(stderr, "usage: .log on|off\n");
        return META_ERROR;
    }
    /* New connections read QSHELL_LOG; existing ones are switched here. */
    setenv("QSHELL_LOG", on ? "1" : "0", 1);
    lua_pushboolean(L, on);
    return call_repl(L, "set_log", 1, 0) == LUA_OK ? META_OK : META_ERROR;
}

static int m_quit(lua_State *L, int argc, char **argv)
{
    (void)L;
    (void)argc;
    (void)argv;
    return META_QUIT;
}

static const struct meta_cmd commands[] = {
    {".help", 0, 1, m_help, ".help [NAME]"},
    {".vms", 0, 0, m_vms, ".vms"},
    {".use", 1, 1, m_use, ".use N|NAME"},
    {".load", 1, 1, m_load, ".load FILE"},
    {".log", 1, 1, m_log, ".log on|off"},
    {".quit", 0, 0, m_quit, ".quit"},
    {".exit", 0, 0, m_quit, ".exit"},
};

int meta_run(lua_State *L, const char *line)
{
    char buf[4096];
    char *argv[MAX_ARGS + 1];
    int argc = 0;

    snprintf(buf, sizeof buf, "%s", line);
    for (char *p = strtok(buf, " \t\r\n"); p && argc < MAX_ARGS; p = strtok(NULL, " \t\r\n")) {
        argv[argc++] = p;
    }
    if (argc == 0) {
        return META_OK;
    }
    /* .load takes the rest of the line: file names may have spaces. */
    char rest[4096];
    if (strcmp(argv[0], ".load") == 0 && argc > 2) {
        const char *p = line + strspn(line, " \t");
        p += strlen(".load");
        p += strspn(p, " \t");
        snprintf(rest, sizeof rest, "%s", p);
        size_t n = strlen(rest);
        while (n > 0 && (rest[n - 1] == ' ' || rest[n - 1] == '\t' || rest[n - 1] == '\r' ||
                         rest[n - 1] == '\n')) {
            rest[--n] = '\0';
        }
        argv[1] = rest;
        argc = 2;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct meta_cmd *c = &commands[i];
        if (strcmp(argv[0], c->name) != 0) {
            continue;
        }
        if (argc - 1 < c->min_args || argc - 1 > c->max_args) {
            fprintf(stderr, "usage: %s\n", c->usage);
            return META_ERROR;
        }
        int rc = c->fn(L, argc, argv);
        fflush(stdout);
        return rc;
    }
    fprintf(stderr, "unknown command %s (try .help)\n", argv[0]);
    return META_ERROR;
}
