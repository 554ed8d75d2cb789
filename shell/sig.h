/*
 * sig.h - signal policy: SIGINT/SIGTERM set a flag and arm a Lua hook that
 * raises at the next instruction (lua.c's laction/lstop); blocking C calls
 * watch the flag.  SIGPIPE is ignored (sockets use MSG_NOSIGNAL anyway).
 */
#ifndef QSHELL_SIG_H
#define QSHELL_SIG_H

#include <signal.h>

#include <lua.h>

/* The one global besides the live-child list: set by SIGINT or SIGTERM. */
extern volatile sig_atomic_t qs_interrupted;
/* Set by SIGTERM (and SIGHUP): the script must end, not just this call. */
extern volatile sig_atomic_t qs_terminating;

void sig_init(void);
/* The state whose hook the handler arms (NULL: none). */
void sig_set_state(lua_State *L);
/* Forget a handled Ctrl-C: clear the flag and disarm the hook. */
void sig_clear(lua_State *L);
/* Exit status for a run ended by SIGTERM (128 + signal), else 0. */
int sig_exit_status(void);

#endif
