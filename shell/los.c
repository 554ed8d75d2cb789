/*
 * los.c - Lua module "qshell.os": the POSIX calls the stdlib needs that
 * have no C core of their own (Lua keeps io and os apart from its objects
 * for the same reason).  Time (now, sleep), files (stat, access, chmod,
 * realpath, listdir, mkdir, rename, open, close, diff_blocks), and the process primitives of the
 * sweep's local workers (fork, exit_now, pipe, poll, read, write, waitpid,
 * kill, setpgid, getpid, isatty).
 *
 * Functions follow the io library's convention: a value, or nil, message,
 * code ("io", "interrupted", "closed", "exists").  Blocking calls give up
 * with "interrupted" when Ctrl-C arrives.  The process object (a child
 * with its temp dir and sockets) is lproc.c's, not this module's.
 */
#define _GNU_SOURCE /* realpath, pipe */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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

/* os.now() -> seconds on a monotonic clock */
static int l_os_now(lua_State *L)
{
    lua_pushnumber(L, now_mono());
    return 1;
}

/* os.sleep(seconds) -> true | nil, "interrupted", "interrupted" */
static int l_os_sleep(lua_State *L)
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

/* os.realpath(path) -> absolute path | nil, msg, "io" */
static int l_os_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char *r = realpath(path, NULL);
    if (!r) {
        return qs_pusherrno(L, path, errno);
    }
    lua_pushstring(L, r); /* a memory error here would leak r; PATH_MAX-sized at most */
    free(r);
    return 1;
}

/* os.stat(path) -> {type=, size=, mode=, uid=, mtime=, alloc=} | nil, msg, "io" (lstat: links are "link") */
static int l_os_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) < 0) {
        return qs_pusherrno(L, path, errno);
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
    lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, (lua_Integer)st.st_blocks * 512);
    lua_setfield(L, -2, "alloc");
    return 1;
}

/* os.chmod(path, mode) -> true | nil, msg, "io" */
static int l_os_chmod(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer mode = luaL_checkinteger(L, 2);
    luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "not a file mode");
    if (chmod(path, (mode_t)mode) < 0) {
        return qs_pusherrno(L, path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * os.utime(path, mtime) -> true | nil, msg, code: set the modification time
 * (seconds, as os.stat gives it; the access time is left alone).  A copy
 * given its source's mtime is known unchanged to what checks by mtime.
 */
static int l_os_utime(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Number m = luaL_checknumber(L, 2);
    luaL_argcheck(L, m >= 0 && m < 1e12, 2, "not a time");
    struct timespec ts[2];
    ts[0].tv_sec = 0;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = (time_t)m;
    long ns = (long)((m - (lua_Number)ts[1].tv_sec) * 1e9 + 0.5);
    if (ns >= 1000000000L) {
        ts[1].tv_sec++;
        ns -= 1000000000L;
    }
    ts[1].tv_nsec = ns;
    if (utimensat(AT_FDCWD, path, ts, 0) < 0) {
        return qs_pusherrno(L, path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* os.access(path, "r"|"w"|"x"|"rw") -> boolean */
static int l_os_access(lua_State *L)
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
 * os.open(path, mode) -> fd | nil, msg, "io": mode "r" (read), "w"
 * (write, truncate), "wx" (write, must not exist), "rn" (read, non-blocking:
 * the read end of a FIFO opens without waiting for a writer).  For fds
 * handed to QEMU, and the FIFOs plugins write to.
 */
static int l_os_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    static const char *const modes[] = {"r", "w", "wx", "rn", "rw", NULL};
    static const int flags[] = {O_RDONLY, O_WRONLY | O_CREAT | O_TRUNC,
                                O_WRONLY | O_CREAT | O_EXCL, O_RDONLY | O_NONBLOCK, O_RDWR};
    int m = luaL_checkoption(L, 2, "r", modes);
    int fd = open(path, flags[m] | O_CLOEXEC, 0644);
    if (fd < 0) {
        return qs_pusherrno(L, path, errno);
    }
    lua_pushinteger(L, fd);
    return 1;
}

/* os.mkfifo(path) -> true | nil, msg, "io" (mode 0600) */
static int l_os_mkfifo(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (mkfifo(path, 0600) < 0) {
        return qs_pusherrno(L, path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* os.close(fd) */
static int l_os_close(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd > 2, 1, "will not close a standard stream");
    close((int)fd);
    return 0;
}

/*
 * os.fork() -> pid (0 in the child) | nil, msg, "io"
 * The child is a copy of this shell: its inherited VMs are inert copies
 * (proc.c and console.c check who owns them), and it should leave with
 * os.exit_now() so that nothing of the parent's is torn down.
 */
static int l_os_fork(lua_State *L)
{
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        return qs_pusherrno(L, NULL, errno);
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
 * os.exit_now(code): _exit, skipping atexit handlers of the parent's and
 * lua_close (for a forked child).  The child's own children and temp dirs
 * are released first: an error may have skipped their close, and no
 * garbage collection will run now.
 */
static int l_os_exit_now(lua_State *L)
{
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(stdout);
    fflush(stderr);
    proc_release_all();
    _exit(code);
    return 0;
}

/* os.pipe() -> read_fd, write_fd (close-on-exec) */
static int l_os_pipe(lua_State *L)
{
    int fds[2];
    if (pipe(fds) < 0) {
        return qs_pusherrno(L, NULL, errno);
    }
    set_cloexec(fds[0]);
    set_cloexec(fds[1]);
    lua_pushinteger(L, fds[0]);
    lua_pushinteger(L, fds[1]);
    return 2;
}

/*
 * os.poll(fds, timeout) -> list of readable (or hung-up) fds | nil, msg, code
 * An empty list when the timeout passed.
 */
static int l_os_poll(lua_State *L)
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
            return qs_pusherrno(L, NULL, errno);
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

/* os.read(fd) -> data ("" at EOF) | nil, msg, code: one read() of up to 64 KiB */
static int l_os_read(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, 65536);
    ssize_t n;
    do {
        n = read(fd, dst, 65536);
    } while (n < 0 && errno == EINTR && !qs_interrupted);
    if (n < 0) {
        return qs_pushfail(L, strerror(errno), errno == EINTR ? "interrupted"
                                               : errno == EAGAIN ? "again" : "io");
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* os.write(fd, data) -> true | nil, msg, code: all of it */
static int l_os_write(lua_State *L)
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
            return errno == EPIPE ? qs_pushfail(L, strerror(errno), "closed") : qs_pusherrno(L, NULL, errno);
        }
        s += n;
        len -= (size_t)n;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * os.append(path, data) -> true | nil, msg, "io"
 * All of data at the end of path (created 0644), or none of it: a write
 * that fails part way (a full disk, EIO) is cut off again, so a file of
 * lines never ends in half a line.
 */
static int l_os_append(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        return qs_pusherrno(L, path, e);
    }
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            int e = n < 0 ? errno : ENOSPC;
            /* the caller holds the file's lock: nobody appended since fstat */
            int cut = ftruncate(fd, st.st_size);
            (void)cut; /* the write's error is the one to report */
            close(fd);
            return qs_pusherrno(L, path, e);
        }
        s += n;
        len -= (size_t)n;
    }
    if (close(fd) < 0 && errno != EINTR) {
        return qs_pusherrno(L, path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * os.lock(path [, "shared"]) -> fd, previous content | nil, msg, "busy" | "io"
 * An exclusive flock(2) on path (created 0644), or a shared one, never
 * waiting: "busy" when another open file holds it (exclusively, for a
 * shared lock).  The lock is the file that is at path
 * now (one unlinked by its last holder in between is tried again).  The
 * lock goes with the process (or with os.unlock); the content is the
 * caller's, to name the holder.
 */
static int l_os_lock(lua_State *L)
{
    static const char *const modes[] = {"exclusive", "shared", NULL};
    const char *path = luaL_checkstring(L, 1);
    int how = luaL_checkoption(L, 2, "exclusive", modes) == 1 ? LOCK_SH : LOCK_EX;
    for (int tries = 0; tries < 10; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            return qs_pusherrno(L, path, errno);
        }
        if (flock(fd, how | LOCK_NB) < 0) {
            int e = errno;
            close(fd);
            if (e == EINTR) {
                continue;
            }
            if (e == EWOULDBLOCK) {
                return qs_pushfail(L, lua_pushfstring(L, "%s is locked", path), "busy");
            }
            return qs_pusherrno(L, path, e);
        }
        struct stat held, now;
        if (fstat(fd, &held) == 0 && stat(path, &now) == 0 && held.st_ino == now.st_ino &&
            held.st_dev == now.st_dev) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            char chunk[4096];
            ssize_t n;
            size_t total = 0;
            while ((n = pread(fd, chunk, sizeof chunk, (off_t)total)) > 0 && total < 65536) {
                luaL_addlstring(&b, chunk, (size_t)n);
                total += (size_t)n;
            }
            luaL_pushresult(&b);
            lua_pushinteger(L, fd);
            lua_insert(L, -2);
            return 2;
        }
        close(fd); /* its holder removed it as we opened it */
    }
    return qs_pushfail(L, lua_pushfstring(L, "%s: keeps being replaced", path), "io");
}

/* os.rewrite(fd, data) -> true | nil, msg, "io": the file is data now */
static int l_os_rewrite(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (ftruncate(fd, 0) < 0 || pwrite(fd, s, len, 0) != (ssize_t)len) {
        return qs_pusherrno(L, NULL, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * os.unlock(fd [, path]): remove path when it is still the locked file,
 * then close fd (which releases the lock).
 */
static int l_os_unlock(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    const char *path = luaL_optstring(L, 2, NULL);
    luaL_argcheck(L, fd > 2, 1, "will not close a standard stream");
    struct stat held, now;
    if (path && fstat(fd, &held) == 0 && stat(path, &now) == 0 && held.st_ino == now.st_ino &&
        held.st_dev == now.st_dev) {
        unlink(path);
    }
    close(fd);
    return 0;
}

/* os.waitpid(pid [, nohang]) -> status {code=, signal=, desc=} | nil (still running) */
static int l_os_waitpid(lua_State *L)
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
        return qs_pusherrno(L, NULL, errno);
    }
    qs_push_status(L, st);
    return 1;
}

/* os.kill(pid, signame): pid < 0 is a process group, as kill(2) */
static int l_os_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = qs_checksignal(L, 2, "TERM");
    luaL_argcheck(L, pid != 0 && pid != -1, 1, "refusing to signal everything");
    lua_pushboolean(L, kill(pid, sig) == 0);
    return 1;
}

/* os.setpgid() : this process leads its own process group */
static int l_os_setpgid(lua_State *L)
{
    lua_pushboolean(L, setpgid(0, 0) == 0);
    return 1;
}

static int l_os_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

/* os.isatty(fd) -> boolean */
static int l_os_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * os.listdir(path) -> list of names sorted bytewise (no . and ..) | nil, msg, "io"
 * Sorted here, not through table.sort, which a script may have replaced.
 */
static int l_os_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (!d) {
        return qs_pusherrno(L, path, errno);
    }
    size_t n = 0, cap = 64;
    char **names = xmalloc(cap * sizeof *names);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (n == cap) {
            cap *= 2;
            names = xrealloc(names, cap * sizeof *names);
        }
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    /* Only now touch the Lua stack: nothing above can raise. */
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    for (size_t i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
    return 1;
}

/*
 * os.mkdir(path [, parents]) -> true | nil, msg, code ("exists" when the
 * directory is already there and parents is false).  Mode 0777 & ~umask.
 */
static int l_os_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int parents = lua_toboolean(L, 2);
    if (!parents) {
        if (mkdir(path, 0777) < 0) {
            return qs_pusherrno(L, path, errno);
        }
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!*path) {
        return qs_pushfail(L, "mkdir: the path is empty", "io");
    }
    char *buf = xstrdup(path);
    int rc = 0, err = 0;
    for (char *p = buf + 1; rc == 0; p++) {
        if (*p != '/' && *p != '\0') {
            continue;
        }
        char c = *p;
        *p = '\0';
        struct stat st;
        if (mkdir(buf, 0777) < 0 && !(errno == EEXIST && stat(buf, &st) == 0 && S_ISDIR(st.st_mode))) {
            err = errno == EEXIST ? ENOTDIR : errno;
            rc = -1;
        }
        *p = c;
        if (c == '\0') {
            break;
        }
    }
    if (rc < 0) {
        lua_pushstring(L, buf);
        free(buf);
        return qs_pusherrno(L, lua_tostring(L, -1), err);
    }
    free(buf);
    lua_pushboolean(L, 1);
    return 1;
}

/* os.rename(from, to) -> true | nil, msg, "io": atomic within a filesystem */
static int l_os_rename(lua_State *L)
{
    const char *from = luaL_checkstring(L, 1);
    const char *to = luaL_checkstring(L, 2);
    if (rename(from, to) < 0) {
        int e = errno;
        return qs_pusherrno(L, lua_pushfstring(L, "%s -> %s", from, to), e);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * os.diff_blocks(a, b [, blocksize=4096]) -> {{offset, length}, ...}, bytes_read
 *   | nil, msg, code
 * Where files a and b differ, in whole blocks of blocksize bytes (the last
 * block cut at the end of the longer file), adjacent blocks joined into one
 * range, in offset order.  Bytes past the end of the shorter file count as
 * zeros, as in a hole.  Holes that both files have are skipped unread
 * (SEEK_DATA/SEEK_HOLE): comparing two sparse copies of a disk image reads
 * only their data.  bytes_read says how much of the two files was read.
 */
#define DIFF_CHUNK (1 << 20)

struct diff_file {
    int fd;
    off_t size;
};

struct diff_range {
    off_t off, len;
};

/* The first offset >= pos where f may hold data; end when it holds none. */
static off_t diff_next_data(const struct diff_file *f, off_t pos, off_t end)
{
    if (pos >= f->size) {
        return end;
    }
    off_t r = lseek(f->fd, pos, SEEK_DATA);
    if (r < 0) {
        /* ENXIO: only a hole is left; any other error (no SEEK_DATA on this
         * file system): treat everything as data */
        return errno == ENXIO ? end : pos;
    }
    return r;
}

/* The first offset >= pos in a hole of f (pos itself when pos is in one). */
static off_t diff_next_hole(const struct diff_file *f, off_t pos)
{
    if (pos >= f->size) {
        return pos;
    }
    off_t r = lseek(f->fd, pos, SEEK_HOLE);
    return r < 0 ? f->size : r;
}

/* n bytes at off into buf, zeros past the end of the file; -1 on error. */
static int diff_read(const struct diff_file *f, char *buf, size_t n, off_t off, off_t *nread)
{
    size_t got = 0;
    while (got < n && off + (off_t)got < f->size) {
        ssize_t r = pread(f->fd, buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR && !qs_interrupted) {
            continue;
        }
        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            break;
        }
        got += (size_t)r;
    }
    *nread += (off_t)got;
    memset(buf + got, 0, n - got);
    return 0;
}

static int l_os_diff_blocks(lua_State *L)
{
    const char *names[2] = {luaL_checkstring(L, 1), luaL_checkstring(L, 2)};
    lua_Integer bs = luaL_optinteger(L, 3, 4096);
    luaL_argcheck(L, bs > 0 && bs <= DIFF_CHUNK, 3, "the block size must be 1 byte to 1 MiB");
    size_t chunk = (size_t)(DIFF_CHUNK - DIFF_CHUNK % bs);
    /* The buffers belong to Lua: nothing malloc'd is held while this may raise. */
    char *buf = lua_newuserdatauv(L, 2 * chunk, 0);
    struct diff_file f[2] = {{.fd = -1}, {.fd = -1}};
    struct diff_range *ranges = NULL;
    size_t n = 0, cap = 0;
    off_t nread = 0;
    const char *fail = NULL, *code = "io";
    int err = 0;
    for (int i = 0; i < 2; i++) {
        struct stat st;
        f[i].fd = open(names[i], O_RDONLY | O_CLOEXEC);
        if (f[i].fd < 0 || fstat(f[i].fd, &st) < 0) {
            err = errno, fail = names[i];
            goto out;
        }
        f[i].size = st.st_size;
    }
    off_t end = f[0].size > f[1].size ? f[0].size : f[1].size;
    for (off_t pos = 0; pos < end;) {
        off_t da = diff_next_data(&f[0], pos, end), db = diff_next_data(&f[1], pos, end);
        off_t m = da < db ? da : db;
        if (m >= end) {
            break;
        }
        /* [start, stop): block-aligned, where either file holds data */
        off_t start = m - m % bs;
        off_t ha = diff_next_hole(&f[0], m), hb = diff_next_hole(&f[1], m);
        off_t stop = ha > hb ? ha : hb;
        stop = stop % bs ? stop + (bs - stop % bs) : stop;
        if (stop > end) {
            stop = end;
        }
        for (off_t off = start; off < stop; off += (off_t)chunk) {
            if (qs_interrupted) {
                fail = "diff_blocks", code = "interrupted", err = EINTR;
                goto out;
            }
            size_t len = stop - off < (off_t)chunk ? (size_t)(stop - off) : chunk;
            for (int i = 0; i < 2; i++) {
                if (diff_read(&f[i], buf + i * chunk, len, off, &nread) < 0) {
                    err = errno, fail = names[i];
                    goto out;
                }
            }
            for (size_t b = 0; b < len; b += (size_t)bs) {
                size_t blen = len - b < (size_t)bs ? len - b : (size_t)bs;
                if (memcmp(buf + b, buf + chunk + b, blen) == 0) {
                    continue;
                }
                off_t boff = off + (off_t)b;
                if (n > 0 && ranges[n - 1].off + ranges[n - 1].len == boff) {
                    ranges[n - 1].len += (off_t)blen;
                    continue;
                }
                if (n == cap) {
                    cap = cap ? 2 * cap : 64;
                    ranges = xrealloc(ranges, cap * sizeof *ranges);
                }
                ranges[n].off = boff;
                ranges[n++].len = (off_t)blen;
            }
        }
        pos = stop;
    }
out:
    for (int i = 0; i < 2; i++) {
        if (f[i].fd >= 0) {
            close(f[i].fd);
        }
    }
    if (fail) {
        free(ranges);
        if (strcmp(code, "interrupted") == 0) {
            return qs_pushfail(L, "interrupted", code);
        }
        return qs_pusherrno(L, fail, err);
    }
    /* Only now build the result (listdir's rule: nothing above raises). */
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 2, 0);
        lua_pushinteger(L, (lua_Integer)ranges[i].off);
        lua_rawseti(L, -2, 1);
        lua_pushinteger(L, (lua_Integer)ranges[i].len);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(ranges);
    lua_pushinteger(L, (lua_Integer)nread);
    return 2;
}

/* os.errcode(errno) -> the code qshell.os would return for it ("io",
 * "interrupted", "perm", ...): for the errno numbers Lua's io library gives. */
static int l_os_errcode(lua_State *L)
{
    lua_pushstring(L, qs_errno_code((int)luaL_checkinteger(L, 1)));
    return 1;
}

static const luaL_Reg os_funcs[] = {
    {"errcode", l_os_errcode},
    {"access", l_os_access},   {"append", l_os_append},   {"chmod", l_os_chmod},
    {"utime", l_os_utime},
    {"close", l_os_close},     {"lock", l_os_lock},       {"rewrite", l_os_rewrite},
    {"unlock", l_os_unlock},
    {"diff_blocks", l_os_diff_blocks},                    {"exit_now", l_os_exit_now},
    {"fork", l_os_fork},       {"getpid", l_os_getpid},   {"isatty", l_os_isatty},
    {"kill", l_os_kill},       {"listdir", l_os_listdir}, {"mkdir", l_os_mkdir},
    {"mkfifo", l_os_mkfifo},
    {"now", l_os_now},         {"open", l_os_open},       {"pipe", l_os_pipe},
    {"poll", l_os_poll},       {"read", l_os_read},       {"realpath", l_os_realpath},
    {"rename", l_os_rename},   {"setpgid", l_os_setpgid}, {"sleep", l_os_sleep},
    {"stat", l_os_stat},       {"waitpid", l_os_waitpid}, {"write", l_os_write},
    {NULL, NULL},
};

int luaopen_qshell_os(lua_State *L)
{
    luaL_newlib(L, os_funcs);
    return 1;
}
