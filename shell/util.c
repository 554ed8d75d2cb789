/*
 * util.c - allocation, string buffers, deadlines, fd flags, temp dirs.
 *
 * Owns no state.  OOM aborts, as QEMU's g_malloc and SQLite's shell do: a
 * shell that cannot allocate a few bytes has nothing useful left to say.
 */
#define _GNU_SOURCE /* nftw's FTW_DEPTH and FTW_PHYS */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

static void oom(void)
{
    static const char msg[] = "qshell: out of memory\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    QS_UNUSED(r);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        oom();
    }
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        oom();
    }
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        oom();
    }
    return p;
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char probe[1];

    va_start(ap, fmt);
    int n = vsnprintf(probe, sizeof probe, fmt, ap);
    va_end(ap);
    if (n < 0) {
        abort();
    }
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void sb_init(struct strbuf *sb)
{
    sb->buf = NULL;
    sb->len = 0;
    sb->cap = 0;
}

static void sb_grow(struct strbuf *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap) {
        return;
    }
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + extra + 1) {
        cap *= 2;
    }
    sb->buf = xrealloc(sb->buf, cap);
    sb->cap = cap;
}

void sb_add(struct strbuf *sb, const char *data, size_t n)
{
    sb_grow(sb, n);
    memcpy(sb->buf + sb->len, data, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

void sb_adds(struct strbuf *sb, const char *s)
{
    sb_add(sb, s, strlen(s));
}

/* Drop the first n bytes. */
void sb_consume(struct strbuf *sb, size_t n)
{
    if (n >= sb->len) {
        sb->len = 0;
    } else {
        memmove(sb->buf, sb->buf + n, sb->len - n);
        sb->len -= n;
    }
    if (sb->buf) {
        sb->buf[sb->len] = '\0';
    }
}

void sb_free(struct strbuf *sb)
{
    free(sb->buf);
    sb_init(sb);
}

double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double deadline_after(double timeout)
{
    return timeout < 0 ? -1.0 : now_mono() + timeout;
}

int deadline_ms(double deadline, int cap_ms)
{
    if (deadline < 0) {
        return cap_ms;
    }
    double left = deadline - now_mono();
    if (left <= 0) {
        return 0;
    }
    double ms = left * 1000.0 + 0.999; /* round up: never spin at 0 */
    if (cap_ms >= 0 && ms > cap_ms) {
        return cap_ms;
    }
    return ms > 2e9 ? 2000000000 : (int)ms;
}

int qs_fail(int *errp, char *buf, size_t size, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    *errp = err;
    return -1;
}

int set_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    return fl < 0 ? -1 : fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

pid_t owner_mark(void)
{
    return getpid();
}

int owner_is_copy(pid_t owner)
{
    return owner != getpid();
}

int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int set_blocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

char *make_tmpdir(const char *prefix)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) {
        base = "/tmp";
    }
    char *path = xasprintf("%s/%s-XXXXXX", base, prefix);
    if (!mkdtemp(path)) {
        int e = errno;
        free(path);
        errno = e;
        return NULL;
    }
    return path;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    QS_UNUSED(st);
    QS_UNUSED(ftw);
    int r = (flag == FTW_DP) ? rmdir(path) : unlink(path);
    return (r < 0 && errno != ENOENT) ? -1 : 0;
}

int remove_tree(const char *path)
{
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
