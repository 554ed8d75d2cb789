/*
 * meta.h - the shell's dot-commands (.help .vms .use .load .log .quit),
 * recognised only at the start of an empty buffer, since a leading '.' can
 * never start a Lua statement (the SQLite shell's rule).
 */
#ifndef QSHELL_META_H
#define QSHELL_META_H

#include <lua.h>

enum { META_OK = 0, META_ERROR = 1, META_QUIT = 2 };

/* Run one dot-command line; returns META_OK, META_ERROR or META_QUIT. */
int meta_run(lua_State *L, const char *line);
/* Push the qemu.repl module (loading it on first use). */
int repl_module(lua_State *L);

#endif
