/*
 * console.h - a guest serial console in plain C (no Lua).
 *
 * A reader thread drains the console socket from the moment QEMU starts,
 * so the guest never stalls on a full socket and nothing it prints is lost:
 * bytes go to an in-memory window (for expect/run), to an optional log file
 * with timestamps, and, while attached, to the user's terminal.
 * Pattern matching is the caller's (Lua patterns, in stdlib/qemu/vm/console.lua).
 */
#ifndef QSHELL_CONSOLE_H
#define QSHELL_CONSOLE_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#include "util.h"

enum {
    CONSOLE_OK = 0,
    CONSOLE_ERR_IO,
    CONSOLE_ERR_TIMEOUT,
    CONSOLE_ERR_CLOSED,
    CONSOLE_ERR_INTERRUPTED,
};

/* Unconsumed output kept for matching; older bytes are dropped (and counted). */
#define CONSOLE_WINDOW (8u << 20)

struct qs_console {
    int fd;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;
    pthread_cond_t grew;
    struct strbuf buf;         /* unconsumed output */
    unsigned long long total;  /* bytes received since start */
    unsigned long long dropped;
    int eof;
    int read_errno;
    int waiters;               /* threads in console_wait: wake only those */
    int log_fd;                /* -1: no log */
    int at_line_start;
    double t0;                 /* monotonic time of start, for log stamps */
    int tee_fd;                /* -1, or the terminal while attached */
    pid_t owner;               /* a forked copy has no reader thread */
    char last[64];             /* the last bytes received (attach: is a prompt waiting?) */
    size_t last_len;
    int err;
    char errstr[160];
};

struct qs_console *console_open(int fd, double t0);
/* Write all of data (deadline, Ctrl-C aware). */
int console_send(struct qs_console *c, const char *data, size_t len, double timeout,
                 const volatile sig_atomic_t *intr);
/* Wait until more than `have` bytes are buffered, EOF, or the deadline. */
int console_wait(struct qs_console *c, size_t have, double timeout,
                 const volatile sig_atomic_t *intr);
/* Copy the buffered bytes (caller frees), and drop the first n. */
char *console_copy(struct qs_console *c, size_t *len);
void console_consume(struct qs_console *c, size_t n);

/* Bytes sent to the console that QEMU has not read yet (its end of the
 * socket holds them), or -1 with errno set. */
long console_unread(struct qs_console *c);
/* Log to path (appending; NULL stops).  Lines are stamped "[  12.345678] ". */
int console_set_log(struct qs_console *c, const char *path);
/*
 * Interactive session: the terminal in raw mode, keys to the guest,
 * guest output to the terminal, until the escape byte (Ctrl-] = 0x1d),
 * EOF of the guest or of the terminal.  With a prompt (the guest shell's,
 * e.g. "# "), the shell is sent "stty rows R cols C" at the start and after
 * every window resize, so full-screen programs fit the terminal -- but only
 * when the guest's last output ends with that prompt (a shell is waiting
 * for a line, and nothing was typed since): a size that changes while a
 * program runs is sent when the prompt is back, never typed into the
 * program.  The terminal mode is restored on every path.  Returns 0, or -1
 * with err set.
 */
int console_attach(struct qs_console *c, int in_fd, int out_fd, int escape, const char *prompt,
                   const volatile sig_atomic_t *intr);
void console_close(struct qs_console *c);

#endif
