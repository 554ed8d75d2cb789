/*
 * repl.h - the interactive shell (libedit) and the line-by-line reader used
 * when stdin is not a terminal.
 */
#ifndef QSHELL_REPL_H
#define QSHELL_REPL_H

#include <lua.h>

/*
 * Run the shell on L.  attach_socket, when not NULL, is a QMP socket to
 * attach to first (`qshell attach SOCKET`).  Returns 0 when the user left
 * normally, 1 when a non-interactive run stopped at an error.
 */
int repl_main(lua_State *L, const char *attach_socket);

#endif
