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

/*
 * The one way a C core records a failure: the error code into *errp, the
 * message (printf-style) into buf; returns -1 for `return qs_fail(...)`.
 * Each core wraps it as fail(obj, code, fmt, ...) over its own err/errstr
 * fields; the Lua glue turns err into a code name (qs_pushfail) and
 * stdlib/qemu/errors.lua's one table turns the name into an error class.
 */
int qs_fail(int *errp, char *buf, size_t size, int err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define QS_FAIL(obj, code, ...) qs_fail(&(obj)->err, (obj)->errstr, sizeof (obj)->errstr, (code), __VA_ARGS__)

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
