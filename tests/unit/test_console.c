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

static const struct unit_test tests[] = {
    {"output, waits, send, EOF", test_output_and_wait},
    {"Ctrl-C ends a wait", test_interrupt},
    {"fork: a copy's close leaves the parent's console working", test_fork_copy_is_inert},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return unit_run(tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
}
