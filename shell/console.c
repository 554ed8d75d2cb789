/*
 * console.c - the guest's serial console: a reader thread, a window of
 * unconsumed output, a timestamped log, and the interactive attach.
 *
 * Owns: the console socket and the thread that drains it.  Does not own:
 * what to match (Lua patterns in stdlib/qemu/vm/console.lua) or QEMU.
 *
 * Why a thread: QEMU's 16550 stops transmitting when the chardev socket is
 * full, and the guest then stalls on printk.  A script that does not look
 * at the console for a while must not slow its guest down, so the socket
 * is always drained, whatever the script is doing.  The thread blocks all
 * signals; the main thread keeps Ctrl-C.
 */
#define _GNU_SOURCE /* pthread_condattr_setclock, SOCK_CLOEXEC */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "console.h"
#include "util.h"

#define SLICE_MS 100

/* util.h's qs_fail over this core's err and errstr */
#define fail(obj, code, ...) QS_FAIL(obj, code, __VA_ARGS__)

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Append to the log, stamping each line with seconds since start. */
static void log_bytes(struct qs_console *c, const char *p, size_t n)
{
    while (n > 0) {
        if (c->at_line_start) {
            char stamp[32];
            int k = snprintf(stamp, sizeof stamp, "[%12.6f] ", now_mono() - c->t0);
            write_all(c->log_fd, stamp, (size_t)k);
            c->at_line_start = 0;
        }
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) + 1 : n;
        write_all(c->log_fd, p, len);
        if (nl) {
            c->at_line_start = 1;
        }
        p += len;
        n -= len;
    }
}

/* Keep the last bytes the guest sent (lock held). */
static void remember_last(struct qs_console *c, const char *p, size_t n)
{
    size_t cap = sizeof c->last;
    if (n >= cap) {
        memcpy(c->last, p + n - cap, cap);
        c->last_len = cap;
        return;
    }
    if (c->last_len + n > cap) {
        size_t keep = cap - n;
        memmove(c->last, c->last + c->last_len - keep, keep);
        c->last_len = keep;
    }
    memcpy(c->last + c->last_len, p, n);
    c->last_len += n;
}

/*
 * Each log starts on a line of its own: a log opened in append mode over
 * a file whose last byte is not '\n' (the previous boot's "login: ") gets
 * one first.  A file we cannot read back (opened write-only) is left as is.
 */
static void log_start_line(int fd)
{
    struct stat st;
    char last;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
        pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
        write_all(fd, "\n", 1);
    }
}

/* End the log's open line, if any, before the log stops (lock held). */
static void log_end_line(struct qs_console *c)
{
    if (c->log_fd >= 0 && !c->at_line_start) {
        write_all(c->log_fd, "\n", 1);
        c->at_line_start = 1;
    }
}

static void *reader(void *arg)
{
    struct qs_console *c = arg;
    char buf[16384];

    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        pthread_mutex_lock(&c->lock);
        if (n <= 0) {
            log_end_line(c);
            c->eof = 1;
            c->read_errno = n < 0 ? errno : 0;
            pthread_cond_broadcast(&c->grew);
            pthread_mutex_unlock(&c->lock);
            return NULL;
        }
        sb_add(&c->buf, buf, (size_t)n);
        remember_last(c, buf, (size_t)n);
        if (c->buf.len > CONSOLE_WINDOW) {
            size_t drop = c->buf.len - CONSOLE_WINDOW / 2;
            sb_consume(&c->buf, drop);
            c->dropped += drop;
        }
        c->total += (unsigned long long)n;
        if (c->log_fd >= 0) {
            log_bytes(c, buf, (size_t)n);
        }
        if (c->tee_fd >= 0) {
            write_all(c->tee_fd, buf, (size_t)n);
        }
        if (c->waiters) {
            pthread_cond_broadcast(&c->grew);
        }
        pthread_mutex_unlock(&c->lock);
    }
}

struct qs_console *console_open(int fd, double t0)
{
    struct qs_console *c = xcalloc(1, sizeof *c);
    pthread_condattr_t ca;

    c->fd = fd;
    c->owner = owner_mark();
    c->log_fd = -1;
    c->tee_fd = -1;
    c->at_line_start = 1;
    c->t0 = t0;
    sb_init(&c->buf);
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->grew, &ca);
    pthread_condattr_destroy(&ca);
    set_cloexec(fd);

    /* The thread inherits this mask: it never takes a signal. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&c->thread, NULL, reader, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        fail(c, CONSOLE_ERR_IO, "cannot start the console reader: %s", strerror(rc));
    } else {
        c->thread_started = 1;
    }
    return c;
}

int console_send(struct qs_console *c, const char *data, size_t len, double timeout,
                 const volatile sig_atomic_t *intr)
{
    double deadline = deadline_after(timeout);
    while (len > 0) {
        if (intr && *intr) {
            return fail(c, CONSOLE_ERR_INTERRUPTED, "interrupted");
        }
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            int ms = deadline_ms(deadline, SLICE_MS);
            if (poll(&p, 1, ms) == 0 && deadline >= 0 && now_mono() >= deadline) {
                return fail(c, CONSOLE_ERR_TIMEOUT, "the guest is not reading its console");
            }
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            return fail(c, CONSOLE_ERR_CLOSED, "the console is closed (QEMU went away)");
        }
        return fail(c, CONSOLE_ERR_IO, "console send: %s", strerror(errno));
    }
    return 0;
}

long console_unread(struct qs_console *c)
{
    /* On a Unix stream socket SIOCOUTQ counts what the peer has not
     * consumed yet: the bytes stay charged to the sender until read. */
    int n = 0;
    if (ioctl(c->fd, SIOCOUTQ, &n) < 0) {
        return -1;
    }
    return n;
}

int console_wait(struct qs_console *c, size_t have, double timeout,
                 const volatile sig_atomic_t *intr)
{
    double deadline = deadline_after(timeout);
    int rc = 0;

    pthread_mutex_lock(&c->lock);
    while (c->buf.len <= have) {
        if (c->eof) {
            rc = fail(c, CONSOLE_ERR_CLOSED, "the console is closed (QEMU went away)");
            break;
        }
        if (intr && *intr) {
            rc = fail(c, CONSOLE_ERR_INTERRUPTED, "interrupted");
            break;
        }
        double now = now_mono();
        if (deadline >= 0 && now >= deadline) {
            rc = fail(c, CONSOLE_ERR_TIMEOUT, "timed out");
            break;
        }
        double until = now + SLICE_MS / 1000.0;
        if (deadline >= 0 && deadline < until) {
            until = deadline;
        }
        struct timespec ts = {.tv_sec = (time_t)until};
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        c->waiters++;
        pthread_cond_timedwait(&c->grew, &c->lock, &ts);
        c->waiters--;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

char *console_copy(struct qs_console *c, size_t *len)
{
    pthread_mutex_lock(&c->lock);
    char *out = xmalloc(c->buf.len + 1);
    if (c->buf.len) {
        memcpy(out, c->buf.buf, c->buf.len);
    }
    out[c->buf.len] = '\0';
    *len = c->buf.len;
    pthread_mutex_unlock(&c->lock);
    return out;
}

void console_consume(struct qs_console *c, size_t n)
{
    pthread_mutex_lock(&c->lock);
    sb_consume(&c->buf, n);
    pthread_mutex_unlock(&c->lock);
}

int console_set_log(struct qs_console *c, const char *path)
{
    int fd = -1;
    if (path) {
        /*
         * A regular file (or a new one) is opened for reading too, only to
         * look at its last byte (log_start_line); a FIFO or a terminal
         * write-only, as before.
         */
        struct stat pst;
        int rw = stat(path, &pst) != 0 || S_ISREG(pst.st_mode);
        fd = open(path, (rw ? O_RDWR : O_WRONLY) | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0 && rw && (errno == EACCES || errno == EPERM)) {
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        }
        if (fd < 0) {
            return fail(c, CONSOLE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        }
    }
    pthread_mutex_lock(&c->lock);
    /* The old log's open line ends first: the new log may be the same file. */
    log_end_line(c);
    if (fd >= 0) {
        log_start_line(fd);
    }
    int old = c->log_fd;
    c->log_fd = fd;
    c->at_line_start = 1;
    pthread_mutex_unlock(&c->lock);
    if (old >= 0) {
        close(old);
    }
    return 0;
}

/* ---- attach ---- */

static volatile sig_atomic_t winch;

static void on_winch(int sig)
{
    (void)sig;
    winch = 1;
}

/* Does the guest's output so far end with the prompt?  Terminal control
 * sequences after it do not count: line editors send some after the
 * prompt (busybox asks for the cursor position, ESC [ 6 n). */
static int prompt_waiting(struct qs_console *c, const char *prompt)
{
    size_t k = strlen(prompt);
    char last[sizeof c->last];
    pthread_mutex_lock(&c->lock);
    size_t n = c->last_len;
    memcpy(last, c->last, n);
    pthread_mutex_unlock(&c->lock);
    for (;;) {
        /* ESC [ parameters (0x20-0x3f) final byte (0x40-0x7e) */
        size_t i = n;
        if (i == 0 || last[i - 1] < 0x40 || last[i - 1] > 0x7e) {
            break;
        }
        i--;
        while (i > 0 && last[i - 1] >= 0x20 && last[i - 1] <= 0x3f) {
            i--;
        }
        if (i >= 2 && last[i - 1] == '[' && last[i - 2] == 0x1b) {
            n = i - 2;
        } else {
            break;
        }
    }
    return k > 0 && n >= k && memcmp(last + n - k, prompt, k) == 0;
}

static void tell_size(struct qs_console *c, int fd)
{
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        char line[64];
        int n = snprintf(line, sizeof line, "stty rows %d cols %d\r", ws.ws_row, ws.ws_col);
        console_send(c, line, (size_t)n, 2.0, NULL);
    }
}

int console_attach(struct qs_console *c, int in_fd, int out_fd, int escape, const char *prompt,
                   const volatile sig_atomic_t *intr)
{
    struct termios saved, raw;
    int is_tty = isatty(in_fd) && tcgetattr(in_fd, &saved) == 0;
    struct sigaction sa, old_sa;
    int rc = 0;

    if (is_tty) {
        raw = saved;
        /* cfmakeraw, spelled out: it is not POSIX. */
        raw.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
        raw.c_oflag &= ~(tcflag_t)OPOST;
        raw.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        raw.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
        raw.c_cflag |= CS8;
        raw.c_cc[VMIN] = 1;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(in_fd, TCSAFLUSH, &raw) < 0) {
            return fail(c, CONSOLE_ERR_IO, "cannot set the terminal to raw mode: %s",
                        strerror(errno));
        }
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_winch;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGWINCH, &sa, &old_sa);
    winch = 0;

    pthread_mutex_lock(&c->lock);
    c->tee_fd = out_fd;
    /* What the guest printed since the last match is shown first. */
    if (c->buf.len) {
        write_all(out_fd, c->buf.buf, c->buf.len);
    }
    pthread_mutex_unlock(&c->lock);

    /* A size to send when a shell prompt is waiting. */
    int size_pending = prompt && is_tty;
    for (;;) {
        if (intr && *intr) {
            rc = fail(c, CONSOLE_ERR_INTERRUPTED, "interrupted");
            break;
        }
        pthread_mutex_lock(&c->lock);
        int eof = c->eof;
        pthread_mutex_unlock(&c->lock);
        if (eof) {
            rc = fail(c, CONSOLE_ERR_CLOSED, "the console is closed (QEMU went away)");
            break;
        }
        if (winch) {
            winch = 0;
            size_pending = prompt && is_tty;
        }
        if (size_pending && prompt_waiting(c, prompt)) {
            size_pending = 0;
            tell_size(c, in_fd);
        }
        struct pollfd p = {.fd = in_fd, .events = POLLIN};
        int n = poll(&p, 1, SLICE_MS);
        if (n < 0 && errno != EINTR) {
            rc = fail(c, CONSOLE_ERR_IO, "poll: %s", strerror(errno));
            break;
        }
        if (n <= 0) {
            continue;
        }
        char keys[1024];
        ssize_t k = read(in_fd, keys, sizeof keys);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (k <= 0) {
            break; /* the terminal (or pipe) ended */
        }
        char *esc = memchr(keys, escape, (size_t)k);
        size_t send_len = esc ? (size_t)(esc - keys) : (size_t)k;
        if (send_len && console_send(c, keys, send_len, 5.0, intr) < 0) {
            rc = -1;
            break;
        }
        if (esc) {
            break;
        }
    }
    pthread_mutex_lock(&c->lock);
    c->tee_fd = -1;
    pthread_mutex_unlock(&c->lock);
    sigaction(SIGWINCH, &old_sa, NULL);
    if (is_tty) {
        tcsetattr(in_fd, TCSAFLUSH, &saved);
    }
    return rc;
}

void console_close(struct qs_console *c)
{
    if (!c) {
        return;
    }
    if (owner_is_copy(c->owner)) {
        /*
         * A copy inherited through fork() (owner_is_copy, util.h): the reader thread and the
         * console belong to the parent; drop our copies and nothing else
         * (its mutex may even have been held by that thread at the fork).
         */
        close(c->fd);
        if (c->log_fd >= 0) {
            close(c->log_fd);
        }
        free(c->buf.buf);
        free(c);
        return;
    }
    if (c->fd >= 0) {
        /* Wakes the reader with EOF; the thread then ends by itself. */
        shutdown(c->fd, SHUT_RDWR);
    }
    if (c->thread_started) {
        pthread_join(c->thread, NULL);
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    if (c->log_fd >= 0) {
        log_end_line(c); /* (the reader did it at EOF, unless it never ran) */
        close(c->log_fd);
    }
    sb_free(&c->buf);
    pthread_cond_destroy(&c->grew);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
