/*
 * bootharness.c - the reference for the boot benchmark: the default guest
 * booted to its login prompt by a minimal C harness, no qshell code.
 *
 *   bootharness OVERLAY BASE QEMU-ARGV...
 *
 * QEMU-ARGV is the argv of a qshell launch (vm.argv, printed by
 * guest_bench.lua argv): monitor on socketpair fd 3, serial on socketpair
 * fd 4, the system disk OVERLAY.  Outside the timed region OVERLAY is made
 * afresh (qemu-img create -f qcow2 -F qcow2 -b BASE OVERLAY).  Timed: the
 * socketpairs, fork/exec, QMP greeting + qmp_capabilities, then blocking
 * reads of the serial socket until "login: " has been seen.  Then QMP quit.
 *
 * Prints "median_us=X mean_us=X min_us=X n=1" (one boot).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROMPT "login: "

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bootharness: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void make_overlay(const char *overlay, const char *base)
{
    unlink(overlay);
    pid_t pid = fork();
    if (pid < 0) {
        die("fork", strerror(errno));
    }
    if (pid == 0) {
        execlp("qemu-img", "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base,
               overlay, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        die("qemu-img create failed", overlay);
    }
}

/* One QMP line (not an event) from fd, blocking. */
static char qbuf[65536];
static size_t qstart, qlen;

static const char *qmp_line(int fd)
{
    for (;;) {
        char *nl;
        while ((nl = memchr(qbuf + qstart, '\n', qlen - qstart))) {
            char *line = qbuf + qstart;
            *nl = '\0';
            qstart = (size_t)(nl - qbuf) + 1;
            if (!strstr(line, "\"event\"")) {
                return line;
            }
        }
        memmove(qbuf, qbuf + qstart, qlen - qstart);
        qlen -= qstart;
        qstart = 0;
        if (qlen == sizeof qbuf) {
            die("QMP line too long", NULL);
        }
        ssize_t r = read(fd, qbuf + qlen, sizeof qbuf - qlen);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            die("QEMU closed the monitor", r < 0 ? strerror(errno) : "EOF");
        }
        qlen += (size_t)r;
    }
}

static void qmp_send(int fd, const char *cmd)
{
    size_t len = strlen(cmd);
    if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len) {
        die("send", strerror(errno));
    }
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bootharness OVERLAY BASE QEMU-ARGV...\n");
        return 2;
    }
    make_overlay(argv[1], argv[2]);
    alarm(120); /* a boot that never reaches the prompt is a failure */

    double t0 = now_us();
    int mon[2], con[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, mon) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, con) < 0) {
        die("socketpair", strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) {
        die("fork", strerror(errno));
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0 ||
            dup2(mon[1], 3) < 0 || dup2(con[1], 4) < 0) {
            _exit(127);
        }
        execvp(argv[3], argv + 3);
        _exit(127);
    }
    close(mon[1]);
    close(con[1]);
    int qfd = mon[0], cfd = con[0];

    qmp_line(qfd); /* greeting */
    qmp_send(qfd, "{\"execute\":\"qmp_capabilities\"}\n");
    if (strncmp(qmp_line(qfd), "{\"return\"", 9) != 0) {
        die("qmp_capabilities failed", NULL);
    }

    /* The serial console: keep the last few bytes so a prompt split
     * across two reads is still found. */
    char buf[8192];
    size_t keep = 0, total = 0;
    for (;;) {
        ssize_t r = read(cfd, buf + keep, sizeof buf - 1 - keep);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            die("QEMU closed the console before the login prompt", r < 0 ? strerror(errno) : "EOF");
        }
        total += (size_t)r;
        size_t n = keep + (size_t)r;
        buf[n] = '\0';
        if (memmem(buf, n, PROMPT, sizeof PROMPT - 1)) {
            break;
        }
        keep = n < sizeof PROMPT - 1 ? n : sizeof PROMPT - 1;
        memmove(buf, buf + n - keep, keep);
    }
    double t1 = now_us();
    alarm(0);

    int st;
    qmp_send(qfd, "{\"execute\":\"quit\"}\n");
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    close(qfd);
    close(cfd);
    unlink(argv[1]);
    double dt = t1 - t0;
    printf("median_us=%.1f mean_us=%.1f min_us=%.1f n=1 console_bytes=%zu\n", dt, dt, dt, total);
    return 0;
}
