/*
 * lram.c - Lua module "qshell.ram.core" over ram.c: the memfd a launched
 * VM's RAM lives in, the check that a checkpoint's RAM file can be mapped,
 * and RAM images copied and hashed in the background (a checkpoint copies
 * the RAM while QEMU saves the devices and qemu-img copies the disks).
 *
 *   ram.memfd(name, size) -> fd | nil, msg, code (luaenv.h: qs_pusherrno's codes)
 *   ram.can_map(path) -> true | nil, msg, "io"
 *   ram.image(src, dst [, threads]) -> job | nil, msg, code ("exists", "io")
 *       src: a path or an fd (not closed here); dst: a new file's path
 *       (created 0644, never over an existing one), an fd, or nil to hash
 *   job:wait([timeout]) -> digest, size, data_bytes | nil, msg, code
 *       ("timeout", "interrupted", "io")
 *   job:close()   cancel, join, close what the job opened
 *
 * The digest is "sha256-chunks": the SHA-256 of the SHA-256 digests of the
 * file's 4 MiB chunks (ram.CHUNK), in order.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"
#include "ram.h"
#include "sig.h"
#include "util.h"

#define RAMJOB_MT "qshell.ram.job"

struct ramjob {
    struct ram_image im;
    int started;  /* im holds threads or memory */
    int own_src;  /* fd opened here, closed by release */
    int own_dst;
    char name[512];
};

static void job_release(struct ramjob *j)
{
    if (j->started) {
        ram_image_release(&j->im);
        j->started = 0;
    }
    if (j->own_src >= 0) {
        close(j->own_src);
        j->own_src = -1;
    }
    if (j->own_dst >= 0) {
        close(j->own_dst);
        j->own_dst = -1;
    }
}

/* ram.memfd(name, size) -> fd | nil, msg, "io" */
static int l_ram_memfd(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Integer size = luaL_checkinteger(L, 2);
    luaL_argcheck(L, size > 0, 2, "the size must be positive");
    int fd = ram_memfd(name, (off_t)size);
    if (fd < 0) {
        return qs_pusherrno(L, "memfd for the guest's RAM", errno);
    }
    lua_pushinteger(L, fd);
    return 1;
}

/* ram.can_map(path) -> true | nil, msg, "io" */
static int l_ram_can_map(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ram_can_map(fd) < 0) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        return qs_pusherrno(L, path, e);
    }
    close(fd);
    lua_pushboolean(L, 1);
    return 1;
}

/* An argument that is a path (opened with flags) or an fd; -2 for nil. */
static int arg_fd(lua_State *L, int idx, int flags, int *owned, const char **name)
{
    if (lua_isnoneornil(L, idx)) {
        return -2;
    }
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer fd = luaL_checkinteger(L, idx);
        luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, idx, "not a file descriptor");
        return (int)fd;
    }
    *name = luaL_checkstring(L, idx);
    int fd = open(*name, flags | O_CLOEXEC, 0644);
    *owned = fd;
    return fd;
}

/* ram.image(src, dst [, threads]) -> job | nil, msg, code */
static int l_ram_image(lua_State *L)
{
    lua_Integer threads = luaL_optinteger(L, 3, 1);
    luaL_argcheck(L, threads >= 1 && threads <= RAM_MAX_THREADS, 3, "threads must be 1..16");
    if (!lua_isnumber(L, 1)) {
        luaL_checkstring(L, 1);
    }
    if (!lua_isnoneornil(L, 2) && !lua_isnumber(L, 2)) {
        luaL_checkstring(L, 2);
    }
    struct ramjob *j = lua_newuserdatauv(L, sizeof *j, 0);
    memset(j, 0, sizeof *j);
    j->own_src = j->own_dst = -1;
    luaL_setmetatable(L, RAMJOB_MT);
    const char *sname = "the RAM", *dname = NULL;
    int src = arg_fd(L, 1, O_RDONLY, &j->own_src, &sname);
    if (src < 0) {
        int e = errno;
        job_release(j);
        return qs_pusherrno(L, sname, e);
    }
    int dst = arg_fd(L, 2, O_RDWR | O_CREAT | O_EXCL, &j->own_dst, &dname);
    if (dst == -1) {
        int e = errno;
        job_release(j);
        return qs_pusherrno(L, dname, e);
    }
    snprintf(j->name, sizeof j->name, "%s", dname ? dname : sname);
    off_t size = lseek(src, 0, SEEK_END);
    if (size < 0) {
        int e = errno;
        job_release(j);
        return qs_pusherrno(L, sname, e);
    }
    j->started = 1;
    if (ram_image_start(&j->im, src, dst >= 0 ? dst : -1, size, (int)threads) < 0) {
        lua_pushfstring(L, "%s: %s", j->name, j->im.errstr);
        job_release(j);
        return qs_pushfail(L, lua_tostring(L, -1), "io");
    }
    return 1;
}

static struct ramjob *check_job(lua_State *L)
{
    return luaL_checkudata(L, 1, RAMJOB_MT);
}

/* job:wait([timeout]) -> digest, size, data | nil, msg, code */
static int l_job_wait(lua_State *L)
{
    struct ramjob *j = check_job(L);
    double timeout = qs_opt_timeout(L, 2);
    if (!j->started) {
        return qs_pushfail(L, "the job was closed", "closed");
    }
    if (ram_image_wait(&j->im, timeout, &qs_interrupted) < 0) {
        if (errno == EINTR) {
            job_release(j);
            return qs_pushfail(L, "interrupted", "interrupted");
        }
        return qs_pushfail(L, lua_pushfstring(L, "%s: not complete after %f s", j->name, timeout), "timeout");
    }
    if (j->im.op) {
        return qs_pushfail(L, lua_pushfstring(L, "%s: %s", j->name, j->im.errstr), qs_errno_code(j->im.err));
    }
    unsigned char md[32];
    ram_image_digest(&j->im, md);
    qs_pushdigest(L, md);
    lua_pushinteger(L, (lua_Integer)j->im.size);
    lua_pushinteger(L, (lua_Integer)atomic_load(&j->im.data));
    return 3;
}

static int l_job_close(lua_State *L)
{
    job_release(check_job(L));
    return 0;
}

static const luaL_Reg ram_funcs[] = {
    {"memfd", l_ram_memfd},
    {"can_map", l_ram_can_map},
    {"image", l_ram_image},
    {NULL, NULL},
};

static const luaL_Reg job_methods[] = {
    {"wait", l_job_wait},
    {"close", l_job_close},
    {NULL, NULL},
};

static const luaL_Reg job_meta[] = {
    {"__gc", l_job_close},
    {"__close", l_job_close},
    {"__index", NULL},
    {NULL, NULL},
};

int luaopen_qshell_ram_core(lua_State *L)
{
    luaL_newmetatable(L, RAMJOB_MT);
    luaL_setfuncs(L, job_meta, 0);
    luaL_newlib(L, job_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, ram_funcs);
    lua_pushinteger(L, RAM_CHUNK);
    lua_setfield(L, -2, "CHUNK");
    return 1;
}
