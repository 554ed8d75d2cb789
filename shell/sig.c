/*
 * sig.c - what SIGINT, SIGTERM and SIGHUP do, and nothing else.
 *
 * The handler only sets flags and arms a count-1 hook, both async-signal
 * safe (lua_sethook is documented as such).  The hook raises "interrupted!"
 * in Lua; C calls blocked in poll() see the flag and return "interrupted".
 * A second signal before the first was handled takes the default action:
 * the user gets out, and PR_SET_PDEATHSIG still takes QEMU down.
 *
 * SIGTERM is stickier than SIGINT: its flag stays set, so every blocking
 * call after it fails at once and the run ends, unwinding through every
 * <close> and __gc (which kill QEMU rather than wait for it).
 */
#include <signal.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "sig.h"

volatile sig_atomic_t qs_interrupted;
volatile sig_atomic_t qs_terminating;
static lua_State *volatile hook_state;
static volatile sig_atomic_t term_signal;

static void lstop(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    if (qs_terminating) {
        luaL_error(L, "terminated by signal %d", (int)term_signal);
    }
    /* Delivered: the error now unwinds, and <close> handlers may block again. */
    qs_interrupted = 0;
    luaL_error(L, "interrupted!");
}

static void on_signal(int sig)
{
    int pending = sig == SIGINT ? qs_interrupted : qs_terminating;
    if (pending) {
        /* Second time: give up on being polite. */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    if (sig != SIGINT) {
        qs_terminating = 1;
        term_signal = sig;
    }
    qs_interrupted = 1;
    lua_State *L = hook_state;
    if (L) {
        lua_sethook(L, lstop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
    }
}

void sig_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: poll() and read() return EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Inherited as ignored, SIGCHLD would let the kernel reap our children
     * and every exit status would read as 0. */
    signal(SIGCHLD, SIG_DFL);
}

void sig_set_state(lua_State *L)
{
    hook_state = L;
}

void sig_clear(lua_State *L)
{
    if (qs_terminating) {
        return;
    }
    qs_interrupted = 0;
    if (L) {
        lua_sethook(L, NULL, 0, 0);
    }
}

int sig_exit_status(void)
{
    return qs_terminating ? 128 + (int)term_signal : 0;
}
