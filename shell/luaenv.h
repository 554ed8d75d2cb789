/*
 * luaenv.h - the lua_State qshell runs scripts in: libraries, the C
 * modules, the embedded stdlib, package.path policy, protected calls.
 */
#ifndef QSHELL_LUAENV_H
#define QSHELL_LUAENV_H

#include <stddef.h>

#include <lua.h>

/* One embedded stdlib module, generated into build/stdlib_gen.c by embed.c. */
struct qs_stdlib_entry {
    const char *modname; /* "qemu.vm" */
    const char *path;    /* "qemu/vm/init.lua", used as the chunk name */
    const char *src;
    size_t len;
};

extern const struct qs_stdlib_entry qs_stdlib[];

/* Shell-wide state, reached from Lua through the registry (mpv's get_ctx). */
struct qs_state {
    lua_State *L;
    int verbose;     /* -v: tracebacks on errors */
    int interactive; /* a REPL is running */
    const char *progname;
};

/* A bare state (NULL on OOM); luaenv_init fills it, under lua_pcall. */
lua_State *luaenv_open(struct qs_state *st);
/* lua_CFunction: argument 1 is the struct qs_state light userdata. */
int luaenv_init(lua_State *L);
struct qs_state *qs_state_get(lua_State *L);
/* Prepend "dir/?.lua;dir/?/init.lua" to package.path (the script's dir). */
void luaenv_add_script_dir(lua_State *L, const char *script);
/* Run LUA_INIT_5_4 / LUA_INIT as lua.c does; a Lua status, error on the stack. */
int luaenv_run_init(lua_State *L);
/* lua_pcall with the message handler (one line, traceback with -v). */
int qs_docall(lua_State *L, int narg, int nres);
/* Print the error on top of the stack (if status != OK) and pop it. */
int qs_report(lua_State *L, int status);
/*
 * Lua-io style failure: push nil, msg, code and return 3.  For the code
 * "interrupted" the Ctrl-C is consumed here, since the caller now raises.
 */
int qs_pushfail(lua_State *L, const char *msg, const char *code);
/*
 * A failed system call: nil, "what: strerror(err)" (or strerror alone when
 * what is NULL), and the code for err: "interrupted" (EINTR), "exists",
 * "perm" (EACCES, EPERM, EROFS), "nospace" (ENOSPC, EDQUOT), "notfound"
 * (ENOENT, ENOTDIR), else "io".  stdlib/qemu/errors.lua maps each code to
 * its class; this is the one place an errno becomes a code.
 */
int qs_pusherrno(lua_State *L, const char *what, int err);
/* The code for an errno value (os.errcode gives it to Lua, for io.open's). */
const char *qs_errno_code(int err);

/* Push a 32-byte digest (SHA-256) as 64 lowercase hex digits. */
void qs_pushdigest(lua_State *L, const unsigned char *md);

/* An optional timeout argument in seconds (>= 0); nil means -1: forever. */
double qs_opt_timeout(lua_State *L, int idx);

/* A signal name ("TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1") -> its number. */
int qs_checksignal(lua_State *L, int idx, const char *def);
/* Push {code=, signal=, desc=} for a wait status. */
void qs_push_status(lua_State *L, int status);

int luaopen_qshell_json(lua_State *L);
int luaopen_qshell_os(lua_State *L);
int luaopen_qshell_hash(lua_State *L);
int luaopen_qshell_ram_core(lua_State *L);
int luaopen_qshell_qmp_core(lua_State *L);
int luaopen_qshell_proc_core(lua_State *L);
int luaopen_qshell_console_core(lua_State *L);

#endif
