/*
 * snapclient.c - the reference for the snapshot benchmark: a minimal
 * raw-bytes QMP client doing savevm / loadvm as QMP jobs, no qshell code.
 *
 *   snapclient SOCKET TAG NODE [K]
 *
 * Connects to a QEMU's extra monitor (-qmp unix:SOCKET,server=on,wait=off),
 * greeting + qmp_capabilities (not timed), then for each of snapshot-save
 * and snapshot-load (timed, one after the other) the bare required sequence:
 *
 *   {"execute":"snapshot-save","arguments":{"job-id":ID,"tag":TAG,
 *       "vmstate":NODE,"devices":[NODE]}}      -> {"return": {}}
 *   wait for JOB_STATUS_CHANGE {"id": ID, "status": "concluded"}
 *   query-jobs (the job's error, if any, is read from here)
 *   job-dismiss ID
 *
 * then snapshot-delete the same way (not timed); K times (default 1), tags
 * TAG-1 .. TAG-K.  No existence checks, no node discovery (NODE is given):
 * a lower bound.  Prints the median of the K times of each, and of the
 * snapshot-save/-load command alone (sent -> its reply, which QEMU sends
 * once the job has run):
 *   save_us=X load_us=Y del_us=Z save_cmd_us=X load_cmd_us=Y n=K
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int fd;
static char buf[1 << 20];
static size_t bstart, blen;
static int concluded; /* the awaited job's "concluded" event was seen */
static char want_id[256];

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "snapclient: %s%s%.300s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int is_event(const char *line)
{
    return strncmp(line, "{\"timestamp\"", 12) == 0 || strncmp(line, "{\"event\"", 8) == 0;
}

/* Next complete line; events are checked for the awaited job's end. */
static char *next_line(void)
{
    for (;;) {
        char *nl = memchr(buf + bstart, '\n', blen - bstart);
        if (nl) {
            char *line = buf + bstart;
            *nl = '\0';
            bstart = (size_t)(nl - buf) + 1;
            if (is_event(line) && want_id[0] && strstr(line, "\"JOB_STATUS_CHANGE\"") &&
                strstr(line, want_id) && strstr(line, "\"concluded\"")) {
                concluded = 1;
            }
            return line;
        }
        memmove(buf, buf + bstart, blen - bstart);
        blen -= bstart;
        bstart = 0;
        if (blen == sizeof buf) {
            die("line too long", NULL);
        }
        ssize_t r = read(fd, buf + blen, sizeof buf - blen);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            die("QEMU closed the monitor", r < 0 ? strerror(errno) : "EOF");
        }
        blen += (size_t)r;
    }
}

/* Send one command, return its reply line (events in between are skipped). */
static char *command(const char *cmd)
{
    size_t len = strlen(cmd);
    if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len) {
        die("send", strerror(errno));
    }
    for (;;) {
        char *line = next_line();
        if (is_event(line)) {
            continue;
        }
        if (strncmp(line, "{\"return\"", 9) != 0) {
            die("error reply", line);
        }
        return line;
    }
}

/* One snapshot job, as qshell's VM:_run_job does it, minus the bookkeeping;
 * returns the time of the job command itself (QEMU replies to it only once
 * the job has run), so that the rest is this client's own overhead. */
static double job(const char *cmd, const char *tag, const char *node, int vmstate)
{
    static int seq;
    char id[128], msg[1024];
    snprintf(id, sizeof id, "c-%s-%d-%ld", cmd, ++seq, (long)getpid());
    snprintf(want_id, sizeof want_id, "\"%s\"", id);
    concluded = 0;
    if (vmstate) {
        snprintf(msg, sizeof msg,
                 "{\"execute\":\"%s\",\"arguments\":{\"job-id\":\"%s\",\"tag\":\"%s\","
                 "\"vmstate\":\"%s\",\"devices\":[\"%s\"]}}\n",
                 cmd, id, tag, node, node);
    } else {
        snprintf(msg, sizeof msg,
                 "{\"execute\":\"%s\",\"arguments\":{\"job-id\":\"%s\",\"tag\":\"%s\","
                 "\"devices\":[\"%s\"]}}\n",
                 cmd, id, tag, node);
    }
    double t0 = now_us();
    command(msg);
    double t1 = now_us();
    while (!concluded) {
        next_line();
    }
    want_id[0] = '\0';
    char *jobs = command("{\"execute\":\"query-jobs\"}\n");
    char *self = strstr(jobs, id);
    if (self && strstr(self, "\"error\"")) {
        die(cmd, jobs);
    }
    snprintf(msg, sizeof msg, "{\"execute\":\"job-dismiss\",\"arguments\":{\"id\":\"%s\"}}\n", id);
    command(msg);
    return t1 - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: snapclient SOCKET TAG NODE [K]\n");
        return 2;
    }
    const char *node = argv[3];
    int k = argc == 5 ? atoi(argv[4]) : 1;
    if (k <= 0 || k > 1000) {
        die("bad count", argv[4]);
    }
    double *t = calloc(5 * (size_t)k, sizeof *t);
    if (!t) {
        die("out of memory", NULL);
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof sa.sun_path) {
        die("socket path too long", argv[1]);
    }
    strcpy(sa.sun_path, argv[1]);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        die("connect", strerror(errno));
    }
    alarm(300);
    next_line(); /* greeting */
    command("{\"execute\":\"qmp_capabilities\"}\n");

    for (int i = 0; i < k; i++) {
        char tag[160];
        snprintf(tag, sizeof tag, "%.100s-%d", argv[2], i + 1);
        double t0 = now_us();
        t[3 * k + i] = job("snapshot-save", tag, node, 1);
        double t1 = now_us();
        t[4 * k + i] = job("snapshot-load", tag, node, 1);
        double t2 = now_us();
        job("snapshot-delete", tag, node, 0);
        double t3 = now_us();
        t[i] = t1 - t0;
        t[k + i] = t2 - t1;
        t[2 * k + i] = t3 - t2;
    }
    close(fd);
    printf("save_us=%.1f load_us=%.1f del_us=%.1f save_cmd_us=%.1f load_cmd_us=%.1f n=%d\n",
           median(t, k), median(t + k, k), median(t + 2 * k, k), median(t + 3 * k, k),
           median(t + 4 * k, k), k);
    return 0;
}
