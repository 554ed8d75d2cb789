/*
 * qmpclient.c - the reference for the QMP benchmarks: a minimal raw-bytes
 * QMP client, no qshell code, no JSON library.
 *
 * QEMU is started exactly as qemu.launch starts it: -nodefaults, the monitor
 * on an inherited socketpair (fd 3), stdin /dev/null, stdout/stderr to a log.
 *
 *   qmpclient rt N [QEMU]      N query-status round trips on one VM
 *   qmpclient launch K [QEMU]  K times: fork/exec, greeting, qmp_capabilities
 *
 * Prints one line of key=value pairs (times in us), e.g.
 *   median_us=165.2 mean_us=171.0 n=2000
 * Each command goes out in ONE write ending in "\n"; a reply is complete
 * when its line ends.  Lines starting with {"event" are skipped.  Blocking
 * read() on the socket, no poll(), no parsing: a lower bound.
 *
 * Built with -DWITH_JSONC (and json-c), the same client builds each command
 * with json-c and parses each reply with json_tokener_parse: what a plain
 * C client with the JSON library qshell uses pays.
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

#ifdef WITH_JSONC
#include <json-c/json.h>
#endif

static const char *qemu_bin = "qemu-system-x86_64";

struct vm {
    pid_t pid;
    int fd;
    char buf[65536];
    size_t start, len;
};

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "qmpclient: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void spawn(struct vm *vm)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        die("socketpair: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) {
        die("fork: %s", strerror(errno));
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0 ||
            dup2(sv[1], 3) < 0) {
            _exit(127);
        }
        char *argv[] = {(char *)qemu_bin, "-nodefaults", "-display", "none", "-accel", "tcg",
                        "-m", "64M", "-chardev", "socket,id=qmp,fd=3",
                        "-mon", "chardev=qmp,mode=control", NULL};
        execvp(argv[0], argv);
        _exit(127);
    }
    close(sv[1]);
    vm->pid = pid;
    vm->fd = sv[0];
    vm->start = vm->len = 0;
}

/*
 * Read one complete line that is not an event; returns it NUL-terminated
 * (valid until the next call).  buf[start, len) holds unconsumed bytes.
 */
static const char *read_line(struct vm *vm)
{
    for (;;) {
        char *nl;
        while ((nl = memchr(vm->buf + vm->start, '\n', vm->len - vm->start))) {
            char *line = vm->buf + vm->start;
            *nl = '\0';
            vm->start = (size_t)(nl - vm->buf) + 1;
            if (strncmp(line, "{\"event\"", 8) != 0) {
                return line;
            }
        }
        if (vm->start == vm->len) {
            vm->start = vm->len = 0;
        } else if (vm->start > 0) {
            memmove(vm->buf, vm->buf + vm->start, vm->len - vm->start);
            vm->len -= vm->start;
            vm->start = 0;
        }
        if (vm->len == sizeof vm->buf - 1) {
            die("%s", "reply line too long");
        }
        ssize_t r = read(vm->fd, vm->buf + vm->len, sizeof vm->buf - 1 - vm->len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            die("QEMU closed the monitor (%s)", r < 0 ? strerror(errno) : "EOF");
        }
        vm->len += (size_t)r;
    }
}

static void send_cmd(struct vm *vm, const char *cmd, size_t len)
{
    if (send(vm->fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len) {
        die("send: %s", strerror(errno));
    }
}

static void expect_return(struct vm *vm, const char *cmd)
{
    const char *line = read_line(vm);
    if (strncmp(line, "{\"return\"", 9) != 0) {
        fprintf(stderr, "qmpclient: %s: unexpected reply: %.200s\n", cmd, line);
        exit(1);
    }
}

static void handshake(struct vm *vm)
{
    static const char caps[] = "{\"execute\":\"qmp_capabilities\"}\n";
    read_line(vm); /* greeting */
    send_cmd(vm, caps, sizeof caps - 1);
    expect_return(vm, "qmp_capabilities");
}

static void quit(struct vm *vm)
{
    static const char q[] = "{\"execute\":\"quit\"}\n";
    int st;
    send(vm->fd, q, sizeof q - 1, MSG_NOSIGNAL);
    while (waitpid(vm->pid, &st, 0) < 0 && errno == EINTR) {
    }
    close(vm->fd);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(double *t, int n)
{
    double sum = 0;
    for (int i = 0; i < n; i++) {
        sum += t[i];
    }
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    printf("median_us=%.1f mean_us=%.1f min_us=%.1f n=%d\n", med, sum / n, t[0], n);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: qmpclient rt N [QEMU] | qmpclient launch K [QEMU]\n");
        return 2;
    }
    int n = atoi(argv[2]);
    if (n <= 0) {
        die("bad count %s", argv[2]);
    }
    if (argc > 3) {
        qemu_bin = argv[3];
    }
    double *t = calloc((size_t)n, sizeof *t);
    struct vm *vm = calloc(1, sizeof *vm);
    if (!t || !vm) {
        die("%s", "out of memory");
    }
    if (strcmp(argv[1], "rt") == 0) {
        char cmd[128];
        spawn(vm);
        handshake(vm);
        for (int i = -50; i < n; i++) { /* 50 warm-up round trips */
            double t0 = now_us();
#ifdef WITH_JSONC
            json_object *m = json_object_new_object();
            json_object_object_add(m, "execute", json_object_new_string("query-status"));
            json_object_object_add(m, "id", json_object_new_int(i + 100));
            int len = snprintf(cmd, sizeof cmd, "%s\n", json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN));
            json_object_put(m);
#else
            int len = snprintf(cmd, sizeof cmd, "{\"execute\":\"query-status\",\"id\":%d}\n", i + 100);
#endif
            send_cmd(vm, cmd, (size_t)len);
            const char *line = read_line(vm);
#ifdef WITH_JSONC
            json_object *r = json_tokener_parse(line), *ret;
            int ok = r && json_object_object_get_ex(r, "return", &ret);
            json_object_put(r);
            double t1 = now_us();
            if (!ok) {
                die("unexpected reply to query-status: %.200s", line);
            }
#else
            double t1 = now_us();
            if (strncmp(line, "{\"return\"", 9) != 0) {
                die("unexpected reply to query-status: %.200s", line);
            }
#endif
            if (i >= 0) {
                t[i] = t1 - t0;
            }
        }
        quit(vm);
    } else if (strcmp(argv[1], "launch") == 0) {
        for (int i = 0; i < n; i++) {
            double t0 = now_us();
            spawn(vm);
            handshake(vm);
            t[i] = now_us() - t0;
            quit(vm);
        }
    } else {
        die("unknown mode %s", argv[1]);
    }
    report(t, n);
    return 0;
}
