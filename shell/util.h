/*
 * util.h - small helpers shared by the C cores: allocation that aborts on
 * OOM, a growable string buffer, monotonic deadlines, fd flags and temp
 * directories.  Nothing here knows about Lua or QEMU.
 */
#ifndef QSHELL_UTIL_H
#define QSHELL_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

#define QS_UNUSED(x) ((void)(x))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2), nonnull(1)));

/* A growable byte buffer, always NUL-terminated. */
struct strbuf {
    char *buf;
    size_t len;
    size_t cap;
};

void sb_init(struct strbuf *sb);
void sb_add(struct strbuf *sb, const char *data, size_t n);
void sb_adds(struct strbuf *sb, const char *s);
void sb_consume(struct strbuf *sb, size_t n);
void sb_free(struct strbuf *sb);

/* Monotonic clock in seconds. */
double now_mono(void);

/*
 * A deadline is an absolute monotonic time; a negative timeout means
 * "wait forever".  deadline_ms() returns the poll() timeout left (-1 for
 * forever, 0 once passed), capped at cap_ms when cap_ms >= 0.
 */
double deadline_after(double timeout);
int deadline_ms(double deadline, int cap_ms);

int set_cloexec(int fd);
/*
 * Fork-inert objects.  A sweep worker is a fork() of qshell and inherits
 * copies of its parent's procs and consoles.  Those stay the parent's: a
 * copy never kills the parent's QEMU, removes its temp dir or joins its
 * console thread; releasing a copy only closes the copy's fds.  Every
 * object that owns a process, thread or directory records its maker with
 * owner_mark() and asks owner_is_copy() before touching any of them.
 */
pid_t owner_mark(void);
int owner_is_copy(pid_t owner);

int set_nonblock(int fd);
int set_blocking(int fd);

/*
 * mkdtemp under $TMPDIR (default /tmp) with the given prefix; the directory
 * is created 0700.  Returns a malloc'd path or NULL with errno set.
 */
char *make_tmpdir(const char *prefix);

/* rm -rf; returns 0 or -1 (errno of the first failure). */
int remove_tree(const char *path);

#endif
