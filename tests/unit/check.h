/*
 * check.h - the harness every C unit test uses (hiredis's test.c style):
 * CHECK records file:line and goes on, tests are rows of one table, and
 * the last line is "N passed, N failed[, N skipped]" (what tests/run.sh
 * and CI read).  One test file includes it once.
 *
 *   static const struct unit_test tests[] = {{"name", fn}, ...};
 *   return unit_run(tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
 *
 * A filter (argv[1] or $QSHELL_TEST_FILTER) runs the tests whose name
 * contains it; QSHELL_TEST_VERBOSE=1 lists every test with its time.
 */
#ifndef QSHELL_TEST_CHECK_H
#define QSHELL_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cur_failures;

static void check_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void check_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    cur_failures++;
}

/* CHECK(cond) and CHECKF(cond, fmt, ...) record a failure and go on. */
#define CHECK(cond) \
    ((cond) ? 1 : (check_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond), 0))
#define CHECKF(cond, ...) ((cond) ? 1 : (check_fail(__FILE__, __LINE__, __VA_ARGS__), 0))
#define CHECK_INT(got, want)                                                              \
    do {                                                                                  \
        long long g_ = (long long)(got), w_ = (long long)(want);                          \
        CHECKF(g_ == w_, "%s == %lld, expected %lld", #got, g_, w_);                      \
    } while (0)
#define CHECK_STR(got, want)                                                              \
    do {                                                                                  \
        const char *g_ = (got), *w_ = (want);                                             \
        CHECKF(g_ && strcmp(g_, w_) == 0, "%s == \"%s\", expected \"%s\"", #got,          \
               g_ ? g_ : "(null)", w_);                                                   \
    } while (0)
#define CHECK_HAS(got, needle)                                                            \
    do {                                                                                  \
        const char *g_ = (got), *n_ = (needle);                                           \
        CHECKF(g_ && strstr(g_, n_), "%s == \"%s\" does not contain \"%s\"", #got,        \
               g_ ? g_ : "(null)", n_);                                                   \
    } while (0)

struct unit_test {
    const char *name;
    void (*fn)(void);
};

static double unit_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run the tests, print the summary line; the exit status for main. */
static int unit_run(const struct unit_test *tests, size_t n, const char *filter)
{
    int passed = 0, failed = 0, skipped = 0;
    if (!filter) {
        filter = getenv("QSHELL_TEST_FILTER");
    }
    for (size_t i = 0; i < n; i++) {
        if (filter && *filter && !strstr(tests[i].name, filter)) {
            skipped++;
            continue;
        }
        cur_failures = 0;
        double t0 = unit_now();
        tests[i].fn();
        double dt = unit_now() - t0;
        if (cur_failures) {
            failed++;
            fprintf(stderr, "  FAIL %s (%d)\n", tests[i].name, cur_failures);
        } else {
            passed++;
            if (getenv("QSHELL_TEST_VERBOSE")) {
                fprintf(stderr, "  ok   %s (%.2f s)\n", tests[i].name, dt);
            }
        }
    }
    if (skipped) {
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    } else {
        printf("%d passed, %d failed\n", passed, failed);
    }
    return failed ? 1 : 0;
}

#endif
