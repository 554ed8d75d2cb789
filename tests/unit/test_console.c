/*
 * test_console.c - unit tests of shell/console.c over a socketpair (the
 * peer plays the guest): output buffered from the first byte, waits with
 * deadlines, EOF, and the fork rule: a forked copy's close leaves the
 * parent's reader thread and socket alone (see owner_is_copy, util.h).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "console.h"
#include "util.h"

#include "check.h"

static struct qs_console *open_pair(int *peer)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        exit(1);
    }
    *peer = sv[1];
    struct qs_console *c = console_open(sv[0], now_mono());
    CHECKF(c->err == 0, "console_open: %s", c->errstr);
    return c;
}

static int has(struct qs_console *c, const char *s)
{
    size_t len;
    char *buf = console_copy(c, &len);
    int found = strstr(buf, s) != NULL;
    free(buf);
    return found;
}

static void test_output_and_wait(void)
{
    int peer;
    struct qs_console *c = open_pair(&peer);
    CHECK_INT(write(peer, "login: ", 7), 7);
    CHECK_INT(console_wait(c, 6, 2, NULL), 0);
    CHECK(has(c, "login: "));
    console_consume(c, 7);
    /* nothing more: a short wait times out after about that long */
    double t0 = now_mono();
    CHECK_INT(console_wait(c, 0, 0.05, NULL), -1);
    CHECK_INT(c->err, CONSOLE_ERR_TIMEOUT);
    CHECK(now_mono() - t0 >= 0.05 && now_mono() - t0 < 1);
    /* what we send arrives at the peer */
    CHECK_INT(console_send(c, "root\r", 5, 1, NULL), 0);
    char got[8] = {0};
    CHECK_INT(read(peer, got, 5), 5);
    CHECK_STR(got, "root\r");
    /* EOF of the guest: a wait ends with "closed" */
    close(peer);
    CHECK_INT(console_wait(c, 0, 2, NULL), -1);
    CHECK_INT(c->err, CONSOLE_ERR_CLOSED);
    console_close(c);
}

static void test_interrupt(void)
{
    int peer;
    struct qs_console *c = open_pair(&peer);
    volatile sig_atomic_t flag = 1;
    CHECK_INT(console_wait(c, 0, 5, &flag), -1);
    CHECK_INT(c->err, CONSOLE_ERR_INTERRUPTED);
    console_close(c);
    close(peer);
}

/*
 * A forked copy (a sweep worker) closes its inherited console: the call
 * returns (no join of a thread the copy does not have), and the parent's
 * console still receives what the guest prints.
 */
static void test_fork_copy_is_inert(void)
{
    int peer;
    struct qs_console *c = open_pair(&peer);
    CHECK_INT(write(peer, "before\n", 7), 7);
    CHECK_INT(console_wait(c, 6, 2, NULL), 0);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(5); /* a join that hangs fails the test instead of hanging it */
        console_close(c);
        _exit(0);
    }
    int st;
    CHECK_INT(waitpid(pid, &st, 0), pid);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the copy's close did not return cleanly (status %#x)", st);
    CHECK_INT(write(peer, "after\n", 6), 6);
    CHECK_INT(console_wait(c, 12, 2, NULL), 0);
    CHECK(has(c, "before\nafter\n"));
    CHECK_INT(console_send(c, "x", 1, 1, NULL), 0);
    console_close(c);
    close(peer);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return strdup("");
    }
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void put_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

/* Does s end with suffix? */
static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/*
 * console:log(path) appends: each log starts on a line of its own (the
 * previous boot's "login: " is ended first), and a line still open when
 * the log is switched, or when the guest goes away, is ended too.
 */
static void test_log_lines(void)
{
    char dir[256];
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/qshell-test-console-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    char a[300], b[300], e[300];
    snprintf(a, sizeof a, "%s/a.log", dir);
    snprintf(b, sizeof b, "%s/b.log", dir);
    snprintf(e, sizeof e, "%s/empty.log", dir);
    put_file(a, "boot 1\nlogin: ");
    put_file(e, "");

    int peer;
    struct qs_console *c = open_pair(&peer);
    size_t have = 0;
    CHECK_INT(console_set_log(c, a), 0);
    CHECK_INT(write(peer, "boot 2\nlogin: ", 14), 14);
    CHECK_INT(console_wait(c, have += 13, 2, NULL), 0);
    /* switched while "login: " is open: a ends the line; b was new */
    CHECK_INT(console_set_log(c, b), 0);
    CHECK_INT(write(peer, "x\n", 2), 2);
    CHECK_INT(console_wait(c, have += 2, 2, NULL), 0);
    char *s = slurp(a);
    CHECKF(strncmp(s, "boot 1\nlogin: \n[", 16) == 0, "a.log starts \"%.40s\"", s);
    CHECKF(strstr(s, "] boot 2\n[") && ends_with(s, "] login: \n"), "a.log is \"%s\"", s);
    free(s);
    /* the same file again while a line is open: one newline, not two */
    CHECK_INT(write(peer, "part", 4), 4);
    CHECK_INT(console_wait(c, have += 4, 2, NULL), 0);
    CHECK_INT(console_set_log(c, b), 0);
    /* an empty file gets nothing before its first line */
    CHECK_INT(console_set_log(c, e), 0);
    CHECK_INT(write(peer, "last: ", 6), 6);
    CHECK_INT(console_wait(c, have += 6, 2, NULL), 0);
    /* the guest goes away mid-line: the line is ended */
    close(peer);
    CHECK_INT(console_wait(c, have + 10, 2, NULL), -1);
    console_close(c);
    s = slurp(b);
    CHECKF(s[0] == '[' && ends_with(s, "] x\n") == 0 && ends_with(s, "] part\n") &&
               strstr(s, "\n\n") == NULL,
           "b.log is \"%s\"", s);
    free(s);
    s = slurp(e);
    CHECKF(s[0] == '[' && ends_with(s, "] last: \n") && strchr(s, '\n') == s + strlen(s) - 1,
           "empty.log is \"%s\"", s);
    free(s);
    unlink(a);
    unlink(b);
    unlink(e);
    rmdir(dir);
}

static const struct unit_test tests[] = {
    {"output, waits, send, EOF", test_output_and_wait},
    {"Ctrl-C ends a wait", test_interrupt},
    {"fork: a copy's close leaves the parent's console working", test_fork_copy_is_inert},
    {"log: each log and each boot starts on its own line", test_log_lines},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return unit_run(tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
}
