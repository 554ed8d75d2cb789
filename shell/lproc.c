/*
 * lproc.c - Lua module "qshell.proc.core": userdata "qshell.proc" over
 * proc.c.
 *
 * A proc owns its child and its temp dir from proc.new() on, so the argv can
 * name files in the temp dir before the spawn.  __gc and close() take the
 * short path (SIGKILL, reap, remove the dir) and never block on QMP; the
 * graceful quit ladder is stdlib/qemu/vm.lua's.
 */
#define _XOPEN_SOURCE 700 /* realpath */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

/* Push {code=, signal=, desc=} for a wait status. */
static void push_status(lua_State *L, int status)
{
    char desc[128];
    proc_describe_status(status, desc, sizeof desc);
    lua_createtable(L, 0, 3);
    if (WIFEXITED(status)) {
        lua_pushinteger(L, WEXITSTATUS(status));
        lua_setfield(L, -2, "code");
    } else if (WIFSIGNALED(status)) {
        lua_pushinteger(L, WTERMSIG(status));
        lua_setfield(L, -2, "signal");
    }
    lua_pushstring(L, desc);
    lua_setfield(L, -2, "desc");
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
    push_status(L, lp->p->status);
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
    push_status(L, lp->p->status);
    return 1;
}

static const char *const signames[] = {"TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1", NULL};
static const int signums[] = {SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGSTOP, SIGCONT, SIGUSR1};

/* proc:signal(name) : "TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1" */
static int l_proc_signal(lua_State *L)
{
    struct lproc *lp = check_proc(L, 1);
    int sig = signums[luaL_checkoption(L, 2, NULL, signames)];
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
    push_status(L, lp->p->status);
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
static int l_proc_now(lua_State *L)
{
    lua_pushnumber(L, now_mono());
    return 1;
}

/* core.sleep(seconds) -> true | nil, "interrupted", "interrupted" */
static int l_proc_sleep(lua_State *L)
{
    double t = luaL_checknumber(L, 1);
    double deadline = now_mono() + t;
    for (;;) {
        if (qs_interrupted) {
            return qs_pushfail(L, "interrupted", "interrupted");
        }
        double left = deadline - now_mono();
        if (left <= 0) {
            break;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)((left > 0.1 ? 0.1 : left) * 1e9)};
        nanosleep(&ts, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.realpath(path) -> absolute path | nil, msg, "io" */
static int l_proc_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char *r = realpath(path, NULL);
    if (!r) {
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s", path, strerror(errno)), "io");
    }
    lua_pushstring(L, r); /* a memory error here would leak r; PATH_MAX-sized at most */
    free(r);
    return 1;
}

/* core.stat(path) -> {type=, size=, mode=, uid=} | nil, msg, "io" (lstat: links are "link") */
static int l_proc_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) < 0) {
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s", path, strerror(errno)), "io");
    }
    lua_createtable(L, 0, 4);
    const char *type = S_ISREG(st.st_mode)   ? "file"
                       : S_ISDIR(st.st_mode) ? "dir"
                       : S_ISLNK(st.st_mode) ? "link"
                       : S_ISBLK(st.st_mode) ? "block"
                       : S_ISCHR(st.st_mode) ? "char"
                                             : "other";
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_setfield(L, -2, "uid");
    return 1;
}

/* core.access(path, "r"|"w"|"x"|"rw") -> boolean */
static int l_proc_access(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *how = luaL_optstring(L, 2, "r");
    int mode = 0;
    for (; *how; how++) {
        mode |= *how == 'r' ? R_OK : *how == 'w' ? W_OK : *how == 'x' ? X_OK : 0;
    }
    lua_pushboolean(L, access(path, mode ? mode : F_OK) == 0);
    return 1;
}

/*
 * core.open(path, mode) -> fd | nil, msg, "io": mode "r" (read), "w"
 * (write, truncate), "wx" (write, must not exist).  For fds handed to QEMU.
 */
static int l_proc_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    static const char *const modes[] = {"r", "w", "wx", NULL};
    static const int flags[] = {O_RDONLY, O_WRONLY | O_CREAT | O_TRUNC,
                                O_WRONLY | O_CREAT | O_EXCL};
    int m = luaL_checkoption(L, 2, "r", modes);
    int fd = open(path, flags[m] | O_CLOEXEC, 0644);
    if (fd < 0) {
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s", path, strerror(errno)), "io");
    }
    lua_pushinteger(L, fd);
    return 1;
}

/* core.close(fd) */
static int l_proc_closefd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd > 2, 1, "will not close a standard stream");
    close((int)fd);
    return 0;
}

/* ---- process primitives for sweep workers ---- */

/*
 * core.fork() -> pid (0 in the child) | nil, msg, "io"
 * The child is a copy of this shell: its inherited VMs are inert copies
 * (proc.c and console.c check who owns them), and it should leave with
 * core.exit_now() so that nothing of the parent's is torn down.
 */
static int l_proc_fork(lua_State *L)
{
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        return qs_pushfail(L, strerror(errno), "io");
    }
#ifdef __linux__
    if (pid == 0) {
        /* A worker ends with its parent: SIGTERM lets it close its VMs. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) {
            _exit(1);
        }
    }
#endif
    lua_pushinteger(L, pid);
    return 1;
}

/*
 * core.exit_now(code): _exit, skipping atexit handlers of the parent's and
 * lua_close (for a forked child).  The child's own children and temp dirs
 * are released first: an error may have skipped their close, and no
 * garbage collection will run now.
 */
static int l_proc_exit_now(lua_State *L)
{
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(stdout);
    fflush(stderr);
    proc_release_all();
    _exit(code);
    return 0;
}

/* core.pipe() -> read_fd, write_fd (close-on-exec) */
static int l_proc_pipe(lua_State *L)
{
    int fds[2];
    if (pipe(fds) < 0) {
        return qs_pushfail(L, strerror(errno), "io");
    }
    set_cloexec(fds[0]);
    set_cloexec(fds[1]);
    lua_pushinteger(L, fds[0]);
    lua_pushinteger(L, fds[1]);
    return 2;
}

/*
 * core.poll(fds, timeout) -> list of readable (or hung-up) fds | nil, msg, code
 * An empty list when the timeout passed.
 */
static int l_proc_poll_fds(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double timeout = luaL_optnumber(L, 2, -1);
    int n = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, n <= 256, 1, "too many fds");
    struct pollfd p[256];
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        p[i].fd = (int)luaL_checkinteger(L, -1);
        p[i].events = POLLIN;
        p[i].revents = 0;
        lua_pop(L, 1);
    }
    int ms = timeout < 0 ? -1 : (int)(timeout * 1000);
    int r = poll(p, (nfds_t)n, ms);
    if (r < 0) {
        if (errno == EINTR && qs_interrupted) {
            return qs_pushfail(L, "interrupted", "interrupted");
        }
        if (errno != EINTR) {
            return qs_pushfail(L, strerror(errno), "io");
        }
        r = 0;
    }
    lua_createtable(L, r > 0 ? r : 0, 0);
    int k = 0;
    for (int i = 0; i < n && r > 0; i++) {
        if (p[i].revents) {
            lua_pushinteger(L, p[i].fd);
            lua_rawseti(L, -2, ++k);
        }
    }
    return 1;
}

/* core.read(fd) -> data ("" at EOF) | nil, msg, code: one read() of up to 64 KiB */
static int l_proc_readfd(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, 65536);
    ssize_t n;
    do {
        n = read(fd, dst, 65536);
    } while (n < 0 && errno == EINTR && !qs_interrupted);
    if (n < 0) {
        return qs_pushfail(L, strerror(errno), errno == EINTR ? "interrupted" : "io");
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* core.write(fd, data) -> true | nil, msg, code: all of it */
static int l_proc_writefd(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return qs_pushfail(L, strerror(errno), errno == EPIPE ? "closed" : "io");
        }
        s += n;
        len -= (size_t)n;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.waitpid(pid [, nohang]) -> status {code=, signal=, desc=} | nil (still running) */
static int l_proc_waitpid(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int nohang = lua_toboolean(L, 2);
    int st;
    pid_t r;
    do {
        r = waitpid(pid, &st, nohang ? WNOHANG : 0);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
        lua_pushnil(L);
        return 1;
    }
    if (r < 0) {
        return qs_pushfail(L, strerror(errno), "io");
    }
    push_status(L, st);
    return 1;
}

/* core.kill(pid, signame): pid < 0 is a process group, as kill(2) */
static int l_proc_killpid(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = signums[luaL_checkoption(L, 2, "TERM", signames)];
    luaL_argcheck(L, pid != 0 && pid != -1, 1, "refusing to signal everything");
    lua_pushboolean(L, kill(pid, sig) == 0);
    return 1;
}

/* core.setpgid() : this process leads its own process group */
static int l_proc_setpgid(lua_State *L)
{
    lua_pushboolean(L, setpgid(0, 0) == 0);
    return 1;
}

static int l_proc_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

/* core.isatty(fd) -> boolean */
static int l_proc_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* core.listdir(path) -> sorted list of names (no . and ..) | nil, msg, "io" */
static int l_proc_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (!d) {
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s", path, strerror(errno)), "io");
    }
    lua_newtable(L);
    lua_Integer i = 0;
    struct dirent *de;
    /* a raise here (OOM) would leak d; acceptable for a directory listing */
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        lua_pushstring(L, de->d_name);
        lua_rawseti(L, -2, ++i);
    }
    closedir(d);
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 1;
}

/* core.sweep_stale(): remove temp dirs of dead qshell processes now */
static int l_proc_sweep_stale(lua_State *L)
{
    (void)L;
    proc_sweep_stale("qshell");
    return 0;
}

static const luaL_Reg proc_funcs[] = {
    {"fork", l_proc_fork},
    {"exit_now", l_proc_exit_now},
    {"pipe", l_proc_pipe},
    {"poll", l_proc_poll_fds},
    {"read", l_proc_readfd},
    {"write", l_proc_writefd},
    {"waitpid", l_proc_waitpid},
    {"kill", l_proc_killpid},
    {"setpgid", l_proc_setpgid},
    {"getpid", l_proc_getpid},
    {"isatty", l_proc_isatty},
    {"listdir", l_proc_listdir},
    {"sweep_stale", l_proc_sweep_stale},
    {"open", l_proc_open},
    {"close", l_proc_closefd},
    {"realpath", l_proc_realpath},
    {"stat", l_proc_stat},
    {"access", l_proc_access},
    {"new", l_proc_new},
    {"now", l_proc_now},
    {"sleep", l_proc_sleep},
    {NULL, NULL},
};

static const luaL_Reg proc_methods[] = {
    {"spawn", l_proc_spawn},   {"take_socket", l_proc_take_socket},
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
