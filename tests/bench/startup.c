/*
 * startup.c - start-up time of a command: fork/exec it N times, one at a
 * time, stdin/stdout/stderr on /dev/null, and time fork to reaped exit.
 *
 *   startup N cmd [args...]
 *
 * Prints "median_us=... mean_us=... min_us=... n=N"; exits 1 if any run
 * fails (non-zero status), so a broken binary is not timed as a fast one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3 || atoi(argv[1]) <= 0) {
        fprintf(stderr, "usage: startup N cmd [args...]\n");
        return 2;
    }
    int n = atoi(argv[1]);
    double *t = calloc((size_t)n, sizeof *t), sum = 0;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (!t || null < 0) {
        perror("startup");
        return 1;
    }
    for (int i = -5; i < n; i++) { /* 5 warm-up runs */
        int st;
        double t0 = now_us();
        pid_t pid = fork();
        if (pid < 0) {
            perror("startup: fork");
            return 1;
        }
        if (pid == 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            execvp(argv[2], argv + 2);
            _exit(127);
        }
        while (waitpid(pid, &st, 0) < 0) {
            if (errno != EINTR) {
                perror("startup: waitpid");
                return 1;
            }
        }
        double dt = now_us() - t0;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "startup: %s failed (status 0x%x)\n", argv[2], st);
            return 1;
        }
        if (i >= 0) {
            t[i] = dt;
            sum += dt;
        }
    }
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    printf("median_us=%.1f mean_us=%.1f min_us=%.1f n=%d\n", med, sum / n, t[0], n);
    return 0;
}
