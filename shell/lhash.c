/*
 * lhash.c - Lua module "qshell.hash": SHA-256 of files, in this process
 * (libcrypto: the CPU's SHA instructions where it has them, several times
 * faster than a sha256sum process) and in the background, so a checkpoint
 * hashes its files while QEMU and qemu-img are still writing the others.
 *
 *   hash.sha256(path) -> hex, size | nil, msg, code
 *   hash.string(s) -> hex                   SHA-256 of a string
 *   hash.file(path) -> job                  hash a file in a thread
 *   hash.copy(src, dst [, mode]) -> job     copy into a new file, hashing
 *   hash.follow(path) -> job                hash a file while another process
 *                                           appends to it (QEMU migrating
 *                                           into it), as it grows
 *   job:close_input()   the writer is done: hash to the end and stop
 *   job:wait([timeout]) -> hex, size | nil, msg, code
 *   job:cancel()        stop the thread (wait then says "cancelled")
 *   job:close()         cancel if still running, join, close every fd
 *
 * A job owns one thread, which only reads, writes and hashes: no Lua, no
 * signals (they stay with the main thread).  Following a file is safe for
 * a writer that only appends (QEMU's migration stream): the bytes below the
 * file's size are final when a read sees them.  New files are created with
 * O_EXCL: nothing is overwritten.  wait() gives up on Ctrl-C like every
 * other blocking call ("interrupted"); the thread is cancelled then.
 */
#define _GNU_SOURCE /* pipe2 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"
#include "sha256.h"
#include "sig.h"
#include "util.h"

#define HASH_MT "qshell.hash.job"
#define CHUNK (1 << 20)

struct hjob {
    pthread_t th;
    int running;       /* a thread was started and not joined yet */
    int in_fd;         /* the file read */
    int out_fd;        /* the copy, or -1 */
    int stop[2];       /* a byte in stop[1] wakes a following thread */
    int done[2];       /* the thread writes a byte into done[1] when it ends */
    int follow;        /* in_fd grows: at its end, wait for more or for input_done */
    atomic_int input_done; /* follow: the writer is done */
    atomic_int cancel; /* set by cancel() */
    /* results, read after the join */
    int err;           /* errno of the failure, 0 when none */
    const char *op;    /* "read" | "write" | "hash" | "cancelled" */
    long long size;
    unsigned char md[32];
    char name[512];    /* the file in messages */
};

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void wake(struct hjob *j)
{
    if (j->stop[1] >= 0 && write(j->stop[1], "x", 1) < 0) {
        /* a byte is already there */
    }
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read in_fd to its end, hashing (and copying); 0, or -1 with j->err, j->op. */
static int pump(struct hjob *j, unsigned char *buf)
{
    struct sha256_ctx *ctx = sha256_new();
    if (!ctx) {
        j->err = ENOMEM;
        j->op = "hash";
        return -1;
    }
    int rc = 0, final = 0;
    for (;;) {
        if (atomic_load(&j->cancel)) {
            j->op = "cancelled";
            rc = -1;
            break;
        }
        ssize_t n = read(j->in_fd, buf, CHUNK);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            j->err = errno;
            j->op = "read";
            rc = -1;
            break;
        }
        if (n == 0) {
            if (!j->follow) {
                break;
            }
            /* At the end for now.  The writer done: one more read sees
             * what it wrote last (input_done is set after its last write). */
            if (final) {
                break;
            }
            if (atomic_load(&j->input_done)) {
                final = 1;
                continue;
            }
            struct pollfd pf = {.fd = j->stop[0], .events = POLLIN};
            (void)poll(&pf, 1, 2);
            continue;
        }
        sha256_update(ctx, buf, (size_t)n);
        if (j->out_fd >= 0 && write_all(j->out_fd, buf, (size_t)n) < 0) {
            j->err = errno;
            j->op = "write";
            rc = -1;
            break;
        }
        j->size += n;
    }
    if (rc == 0) {
        sha256_final(ctx, j->md);
    } else {
        sha256_free(ctx);
    }
    return rc;
}

static void *job_main(void *arg)
{
    struct hjob *j = arg;
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        j->err = ENOMEM;
        j->op = "hash";
    } else {
        pump(j, buf);
        free(buf);
    }
    if (write(j->done[1], "x", 1) < 0) {
        /* the pipe is ours and empty: cannot fail */
    }
    return NULL;
}

/* libcrypto loaded (on this thread, before any job's thread hashes)? 0,
 * or pushes nil, msg, "io" and returns 3. */
static int need_sha256(lua_State *L)
{
    char err[256];
    if (sha256_load(err, sizeof err) < 0) {
        return qs_pushfail(L, err, "io");
    }
    return 0;
}

static struct hjob *new_job(lua_State *L, const char *name)
{
    struct hjob *j = lua_newuserdatauv(L, sizeof *j, 0);
    memset(j, 0, sizeof *j);
    j->in_fd = j->out_fd = -1;
    j->stop[0] = j->stop[1] = j->done[0] = j->done[1] = -1;
    snprintf(j->name, sizeof j->name, "%s", name);
    luaL_setmetatable(L, HASH_MT);
    return j;
}

/* Start the thread (signals blocked in it); 0 or -1 with errno. */
static int start(struct hjob *j)
{
    if (pipe2(j->done, O_CLOEXEC) < 0 || pipe2(j->stop, O_CLOEXEC) < 0) {
        return -1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&j->th, NULL, job_main, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    j->running = 1;
    return 0;
}

static void job_release(struct hjob *j)
{
    if (j->running) {
        atomic_store(&j->cancel, 1);
        wake(j);
        pthread_join(j->th, NULL);
        j->running = 0;
    }
    close_fd(&j->in_fd);
    close_fd(&j->out_fd);
    close_fd(&j->stop[0]);
    close_fd(&j->stop[1]);
    close_fd(&j->done[0]);
    close_fd(&j->done[1]);
}

static int fail_errno(lua_State *L, struct hjob *j, const char *what)
{
    int e = errno;
    job_release(j);
    return qs_pusherrno(L, what, e);
}

static int open_new(const char *path, int mode)
{
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
}

/* hash.file(path) -> job | nil, msg, "io" */
static int l_hash_file(lua_State *L)
{
    if (need_sha256(L)) {
        return 3;
    }
    const char *path = luaL_checkstring(L, 1);
    struct hjob *j = new_job(L, path);
    j->in_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (j->in_fd < 0 || start(j) < 0) {
        return fail_errno(L, j, path);
    }
    return 1;
}

/* hash.copy(src, dst [, mode=0444]) -> job | nil, msg, code ("exists") */
static int l_hash_copy(lua_State *L)
{
    if (need_sha256(L)) {
        return 3;
    }
    const char *src = luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    int mode = (int)luaL_optinteger(L, 3, 0444);
    struct hjob *j = new_job(L, dst);
    j->in_fd = open(src, O_RDONLY | O_CLOEXEC);
    if (j->in_fd < 0) {
        return fail_errno(L, j, src);
    }
    j->out_fd = open_new(dst, mode);
    if (j->out_fd < 0) {
        int e = errno;
        job_release(j);
        return qs_pusherrno(L, dst, e);
    }
    if (start(j) < 0) {
        return fail_errno(L, j, dst);
    }
    return 1;
}

/* hash.follow(path) -> job | nil, msg, "io" */
static int l_hash_follow(lua_State *L)
{
    if (need_sha256(L)) {
        return 3;
    }
    const char *path = luaL_checkstring(L, 1);
    struct hjob *j = new_job(L, path);
    j->follow = 1;
    j->in_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (j->in_fd < 0 || start(j) < 0) {
        return fail_errno(L, j, path);
    }
    return 1;
}

static struct hjob *check_job(lua_State *L)
{
    return luaL_checkudata(L, 1, HASH_MT);
}

/* job:close_input(): the followed file's writer is done */
static int l_job_close_input(lua_State *L)
{
    struct hjob *j = check_job(L);
    atomic_store(&j->input_done, 1);
    wake(j);
    return 0;
}

static int l_job_cancel(lua_State *L)
{
    struct hjob *j = check_job(L);
    atomic_store(&j->cancel, 1);
    wake(j);
    return 0;
}

/* job:wait([timeout]) -> hex, size | nil, msg, code ("timeout", "interrupted", "io", "cancelled") */
static int l_job_wait(lua_State *L)
{
    struct hjob *j = check_job(L);
    double timeout = luaL_optnumber(L, 2, -1);
    if (j->running) {
        double deadline = timeout >= 0 ? now_mono() + timeout : 0;
        for (;;) {
            if (qs_interrupted) {
                job_release(j);
                return qs_pushfail(L, "interrupted", "interrupted");
            }
            int ms = 100;
            if (timeout >= 0) {
                double left = deadline - now_mono();
                if (left <= 0) {
                    return qs_pushfail(L, lua_pushfstring(L, "%s: not complete after %f s", j->name, timeout),
                                       "timeout");
                }
                if (left < 0.1) {
                    ms = (int)(left * 1000) + 1;
                }
            }
            struct pollfd pf = {.fd = j->done[0], .events = POLLIN};
            if (poll(&pf, 1, ms) > 0) {
                break;
            }
        }
        pthread_join(j->th, NULL);
        j->running = 0;
        close_fd(&j->in_fd);
        close_fd(&j->out_fd);
    } else if (!j->op && j->size == 0 && j->done[0] < 0) {
        return qs_pushfail(L, "the job was closed", "closed");
    }
    if (j->op) {
        if (strcmp(j->op, "cancelled") == 0) {
            return qs_pushfail(L, lua_pushfstring(L, "%s: cancelled", j->name), "cancelled");
        }
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s: %s", j->name, j->op, strerror(j->err)), qs_errno_code(j->err));
    }
    qs_pushdigest(L, j->md);
    lua_pushinteger(L, (lua_Integer)j->size);
    return 2;
}

static int l_job_close(lua_State *L)
{
    job_release(check_job(L));
    return 0;
}

/* hash.sha256(path) -> hex, size | nil, msg, code: in this thread */
static int l_hash_sha256(lua_State *L)
{
    if (need_sha256(L)) {
        return 3;
    }
    const char *path = luaL_checkstring(L, 1);
    struct hjob j;
    memset(&j, 0, sizeof j);
    j.out_fd = -1;
    j.in_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (j.in_fd < 0) {
        return qs_pusherrno(L, path, errno);
    }
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        close(j.in_fd);
        return luaL_error(L, "out of memory");
    }
    int rc = pump(&j, buf);
    free(buf);
    close(j.in_fd);
    if (rc < 0) {
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s: %s", path, j.op, strerror(j.err)), qs_errno_code(j.err));
    }
    qs_pushdigest(L, j.md);
    lua_pushinteger(L, (lua_Integer)j.size);
    return 2;
}

/* hash.string(s) -> hex: the SHA-256 of a string (a setup's identity) */
static int l_hash_string(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char md[32];
    char err[256];
    if (sha256_load(err, sizeof err) < 0) {
        return luaL_error(L, "%s", err);
    }
    if (sha256_digest(s, len, md) < 0) {
        return luaL_error(L, "SHA-256 failed");
    }
    qs_pushdigest(L, md);
    return 1;
}

static const luaL_Reg hash_funcs[] = {
    {"sha256", l_hash_sha256}, {"string", l_hash_string}, {"file", l_hash_file}, {"copy", l_hash_copy},
    {"follow", l_hash_follow}, {NULL, NULL},
};

static const luaL_Reg job_methods[] = {
    {"close_input", l_job_close_input}, {"cancel", l_job_cancel},
    {"wait", l_job_wait}, {"close", l_job_close},             {NULL, NULL},
};

int luaopen_qshell_hash(lua_State *L)
{
    luaL_newmetatable(L, HASH_MT);
    lua_pushcfunction(L, l_job_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_job_close);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, job_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, hash_funcs);
    return 1;
}
