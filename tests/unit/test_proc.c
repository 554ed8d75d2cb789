/*
 * test_proc.c - unit tests of shell/proc.c: spawning, waiting, stopping and
 * reaping children, their temp dirs, the live registry, fork copies.
 *
 * Owns: the same small harness as test_qmp.c (CHECK records file:line and
 * goes on; tests are rows of one table; the last line is "N passed, N
 * failed"), and a private $TMPDIR for the temp dirs proc.c makes; a dir
 * left in it at the end is a failure.  Does not own: QEMU.  The children are
 * /bin/true, /bin/sh and sleep; a child that must be at a known point before
 * the test goes on says so over its socketpair (fd 3), never by a sleep.
 *
 *   build/test_proc [substring]     run the tests whose name contains it
 */
#define _GNU_SOURCE /* strsignal, getpgid */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "util.h"

#include "check.h"

/* ---- harness ---- */


/* ---- helpers ---- */

/* argv strings: exec does not write them, the prototype is just not const. */
#define A(s) ((char *)(s))

static char *test_tmp; /* the private $TMPDIR */

/* proc_new that must succeed. */
#define NEW_PROC(prefix) new_proc((prefix), __FILE__, __LINE__)
static struct qs_proc *new_proc(const char *prefix, const char *file, int line)
{
    struct qs_proc *p = proc_new(prefix);
    if (p->err || !p->tmpdir) {
        check_fail(file, line, "proc_new: %s", p->errstr);
    }
    return p;
}

/* Spawn /bin/sh -c script with nsocks sockets; a failure is recorded. */
#define SPAWN_SH(p, script, nsocks) spawn_sh((p), (script), (nsocks), __FILE__, __LINE__)
static int spawn_sh(struct qs_proc *p, const char *script, int nsocks, const char *file,
                    int line)
{
    char *argv[] = {A("/bin/sh"), A("-c"), (char *)script, NULL};
    int rc = proc_spawn(p, argv, nsocks);
    if (rc != 0) {
        check_fail(file, line, "spawning sh -c '%s': %s", script, p->errstr);
    }
    return rc;
}

#define SPAWN_SLEEP(p) spawn_sleep((p), __FILE__, __LINE__)
static int spawn_sleep(struct qs_proc *p, const char *file, int line)
{
    char *argv[] = {A("sleep"), A("30"), NULL};
    int rc = proc_spawn(p, argv, 0);
    if (rc != 0) {
        check_fail(file, line, "spawning sleep 30: %s", p->errstr);
    }
    return rc;
}

/* Read one line from fd (without the '\n') within timeout seconds; -1 if none. */
static int read_line(int fd, char *buf, size_t n, double timeout)
{
    double deadline = deadline_after(timeout);
    size_t len = 0;
    while (len + 1 < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, deadline_ms(deadline, -1));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        ssize_t got = read(fd, buf + len, 1);
        if (got <= 0) {
            break;
        }
        if (buf[len] == '\n') {
            buf[len] = '\0';
            return 0;
        }
        len++;
    }
    buf[len] = '\0';
    return -1;
}

/* Whole contents of a file into a static buffer ("" if unreadable). */
static const char *file_text(const char *path)
{
    static char buf[4096];
    buf[0] = '\0';
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * A process's state letter from /proc/pid/stat ('R', 'S', 'Z'...), or 0
 * when there is no such process.  Linux only; elsewhere kill(pid, 0).
 */
static char proc_state(pid_t pid)
{
#ifdef __linux__
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return 0;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' ? paren[2] : '?';
#else
    return kill(pid, 0) == 0 ? 'R' : 0;
#endif
}

/* 1 once pid is gone or a zombie (dead, not ours to reap), within timeout. */
static int dies_within(pid_t pid, double timeout)
{
    double deadline = deadline_after(timeout);
    for (;;) {
        char st = proc_state(pid);
        if (st == 0 || st == 'Z' || st == 'X') {
            return 1;
        }
        if (now_mono() >= deadline) {
            return 0;
        }
        usleep(10000);
    }
}

static const char *describe(int status)
{
    static char buf[128];
    proc_describe_status(status, buf, sizeof buf);
    return buf;
}

/* ---- spawning and exit statuses ---- */

static void test_true(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *argv[] = {A("/bin/true"), NULL};
    CHECK_INT(proc_spawn(p, argv, 0), 0);
    CHECK(p->pid > 0);
    CHECK_INT(p->err, 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK(p->reaped);
    CHECK_INT(p->pid, -1);
    CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0);
    CHECK_STR(describe(p->status), "exited with status 0");
    /* Reaped stays reaped. */
    CHECK_INT(proc_poll(p), 1);
    CHECK_INT(proc_wait(p, 0, NULL), 0);
    proc_free(p);
}

static void test_exit_status(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    SPAWN_SH(p, "exit 3", 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 3);
    CHECK_STR(describe(p->status), "exited with status 3");
    /* Killing or releasing a reaped child changes nothing. */
    proc_kill(p);
    CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 3);
    proc_release(p);
    CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 3);
    proc_free(p);

    /* argv[0] without a slash is looked up in PATH (execvp). */
    p = NEW_PROC(NULL);
    char *argv[] = {A("sh"), A("-c"), A("exit 42"), NULL};
    CHECK_INT(proc_spawn(p, argv, 0), 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_STR(describe(p->status), "exited with status 42");
    proc_free(p);
}

static void test_killed_by_signal(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    SPAWN_SH(p, "kill -KILL $$", 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL);
    CHECK_STR(describe(p->status), "was killed by signal 9 (Killed)");
    proc_free(p);

    p = NEW_PROC(NULL);
    SPAWN_SH(p, "kill -SEGV $$", 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGSEGV);
    CHECK_STR(describe(p->status), "was killed by signal 11 (Segmentation fault)");
    proc_free(p);

    /* A status that is neither (stopped by SIGSTOP) is shown raw. */
    CHECK_STR(describe(0x137f), "ended with wait status 0x137f");
}

static void test_poll_running(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char line[64];
    /* The child blocks until the test writes to its socket. */
    SPAWN_SH(p, "echo waiting >&3; read x <&3; exit 5", 1);
    CHECK_INT(p->nsocks, 1);
    CHECK_INT(read_line(p->socks[0], line, sizeof line, 10), 0);
    CHECK_STR(line, "waiting");
    CHECK_INT(proc_poll(p), 0);
    CHECK(!p->reaped && p->pid > 0);
    CHECK_INT(write(p->socks[0], "go\n", 3), 3);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_STR(describe(p->status), "exited with status 5");
    proc_free(p);
}

static void test_wait_timeout_and_interrupt(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    SPAWN_SLEEP(p);
    double t0 = now_mono();
    CHECK_INT(proc_wait(p, 0.2, NULL), -1);
    double dt = now_mono() - t0;
    CHECKF(dt >= 0.2 && dt < 3, "timed out after %.3f s", dt);
    CHECK_INT(p->err, PROC_ERR_TIMEOUT);
    CHECK_HAS(p->errstr, "still running after 0.2 s");
    CHECK_INT(proc_poll(p), 0);

    /* The interrupt flag ends a wait early (the child keeps running). */
    volatile sig_atomic_t flag = 1;
    t0 = now_mono();
    CHECK_INT(proc_wait(p, 30, &flag), -1);
    CHECK(now_mono() - t0 < 2);
    CHECK_INT(p->err, PROC_ERR_INTERRUPTED);
    CHECK_STR(p->errstr, "interrupted");
    CHECK_INT(proc_poll(p), 0);

    proc_kill(p);
    CHECK(p->reaped && p->pid == -1);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL);
    proc_free(p);
}

/* ---- stopping ---- */

static void test_ladder_term_ignored(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char line[64];
    SPAWN_SH(p, "trap '' TERM; echo ready >&3; exec sleep 30", 1);
    CHECK_INT(read_line(p->socks[0], line, sizeof line, 10), 0);
    CHECK_STR(line, "ready");
    pid_t pid = p->pid;

    /* TERM, wait: still there. */
    CHECK_INT(proc_signal(p, SIGTERM), 0);
    CHECK_INT(proc_wait(p, 0.3, NULL), -1);
    CHECK_INT(p->err, PROC_ERR_TIMEOUT);
    CHECK_INT(proc_poll(p), 0);
    /* KILL, wait: reaped. */
    CHECK_INT(proc_signal(p, SIGKILL), 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL);
    CHECK_STR(describe(p->status), "was killed by signal 9 (Killed)");
    /* Reaped by proc.c: no zombie left, nothing left to wait for. */
    CHECK(waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    /* Signalling a reaped child is a no-op, not an error. */
    CHECK_INT(proc_signal(p, SIGTERM), 0);
    proc_free(p);

    /* The short path (release) does the same for a TERM-ignoring child. */
    p = NEW_PROC(NULL);
    SPAWN_SH(p, "trap '' TERM; echo ready >&3; exec sleep 30", 1);
    CHECK_INT(read_line(p->socks[0], line, sizeof line, 10), 0);
    pid = p->pid;
    proc_release(p);
    CHECK(p->reaped && p->pid == -1);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL);
    CHECK(waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    proc_free(p);
}

static void test_ladder_exits_on_term(void)
{
    /* Even when qshell itself ignores TERM, the child gets the default. */
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGTERM, &ign, &old);
    struct qs_proc *p = NEW_PROC(NULL);
    SPAWN_SLEEP(p);
    sigaction(SIGTERM, &old, NULL);

    double t0 = now_mono();
    CHECK_INT(proc_signal(p, SIGTERM), 0);
    CHECK_INT(proc_wait(p, 20, NULL), 0);
    double dt = now_mono() - t0;
    CHECKF(dt < 3, "reaped after %.3f s, not early", dt);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGTERM);
    CHECK_STR(describe(p->status), "was killed by signal 15 (Terminated)");
    proc_free(p);
}

static void test_process_group(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char line[64];
    /* A grandchild in the background: signals go to the whole group. */
    SPAWN_SH(p, "sleep 30 & echo $! >&3; wait", 1);
    CHECK_INT(read_line(p->socks[0], line, sizeof line, 10), 0);
    pid_t grandchild = (pid_t)atoi(line);
    CHECK(grandchild > 0);
    CHECK_INT(getpgid(p->pid), p->pid);
    CHECK(getpgid(p->pid) != getpgrp());
    if (grandchild > 0) {
        CHECK_INT(getpgid(grandchild), p->pid);
    }
    proc_kill(p);
    CHECK(WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL);
    if (grandchild > 0) {
        CHECKF(dies_within(grandchild, 5), "grandchild %d survived proc_kill", (int)grandchild);
    }
    proc_free(p);
}

/* ---- failures ---- */

static void test_exec_failure(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *missing[] = {A("/nonexistent/qshell-test-no-such-binary"), NULL};
    CHECK_INT(proc_spawn(p, missing, 1), -1);
    CHECK_INT(p->err, PROC_ERR_EXEC);
    CHECK_STR(p->errstr, "cannot run /nonexistent/qshell-test-no-such-binary: No such file or "
                         "directory");
    CHECK_INT(p->pid, -1);
    CHECK(p->reaped);
    CHECK_INT(p->nsocks, 0);
    CHECK_INT(p->socks[0], -1);
    CHECK_INT(proc_poll(p), 1);
    /* The proc is spent: a second spawn is refused. */
    char *tru[] = {A("/bin/true"), NULL};
    CHECK_INT(proc_spawn(p, tru, 0), -1);
    CHECK_HAS(p->errstr, "already started");
    proc_free(p);

    /* The same through the PATH lookup. */
    p = NEW_PROC(NULL);
    char *bare[] = {A("qshell-test-no-such-binary"), NULL};
    CHECK_INT(proc_spawn(p, bare, 0), -1);
    CHECK_INT(p->err, PROC_ERR_EXEC);
    CHECK_STR(p->errstr, "cannot run qshell-test-no-such-binary: No such file or directory");
    proc_free(p);

    /* A file that is not executable. */
    p = NEW_PROC(NULL);
    char *path = xasprintf("%s/not-executable", p->tmpdir);
    CHECK_INT(write_file(path, "#!/bin/sh\nexit 0\n", 0644), 0);
    char *noexec[] = {path, NULL};
    CHECK_INT(proc_spawn(p, noexec, 0), -1);
    CHECK_INT(p->err, PROC_ERR_EXEC);
    CHECK_HAS(p->errstr, "Permission denied");
    free(path);
    proc_free(p);
}

static void test_spawn_errors(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *tru[] = {A("/bin/true"), NULL};
    CHECK_INT(proc_spawn(p, tru, PROC_MAX_SOCKS + 1), -1);
    CHECK_INT(p->err, PROC_ERR_IO);
    CHECK_HAS(p->errstr, "too many sockets");
    CHECK_INT(proc_spawn(p, tru, -1), -1);
    CHECK_INT(p->pid, -1);

    /* A missing stdin file: an error naming it, nothing started. */
    CHECK_INT(proc_spawn_io(p, tru, 0, "/nonexistent/qshell-test-stdin", NULL), -1);
    CHECK_INT(p->err, PROC_ERR_IO);
    CHECK_HAS(p->errstr, "/nonexistent/qshell-test-stdin");
    CHECK_INT(p->pid, -1);
    CHECK(!p->reaped);

    /* The proc is still usable, once. */
    CHECK_INT(proc_spawn(p, tru, 0), 0);
    CHECK_INT(proc_spawn(p, tru, 0), -1);
    CHECK_HAS(p->errstr, "already started");
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_INT(proc_take_sock(p, 0), -1);
    CHECK_INT(proc_take_sock(p, -1), -1);
    proc_free(p);

    /* proc_new in a TMPDIR that does not exist: the reason, and no spawn. */
    char *saved = xstrdup(getenv("TMPDIR"));
    setenv("TMPDIR", "/nonexistent/qshell-test-tmp", 1);
    p = proc_new(NULL);
    setenv("TMPDIR", saved, 1);
    free(saved);
    CHECK_INT(p->err, PROC_ERR_IO);
    CHECK(p->tmpdir == NULL);
    CHECK_HAS(p->errstr, "/nonexistent/qshell-test-tmp");
    CHECK_INT(proc_spawn(p, tru, 0), -1);
    CHECK_INT(p->pid, -1);
    proc_free(p);
}

/* ---- files and fds ---- */

static void test_stdio_and_sockets(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char line[64];
    /* stdin is /dev/null (cat ends at once); stdout and stderr go to the
     * log; fds 3 and 4 are the sockets, both ways. */
    SPAWN_SH(p, "cat; echo out; echo err >&2; echo zero >&3; read x <&4; echo \"got $x\" >&4",
             2);
    CHECK_INT(p->nsocks, 2);
    CHECK_INT(read_line(p->socks[0], line, sizeof line, 10), 0);
    CHECK_STR(line, "zero");
    int fd = proc_take_sock(p, 1);
    CHECK(fd >= 0);
    CHECK_INT(p->socks[1], -1);
    CHECK_INT(write(fd, "ping\n", 5), 5);
    CHECK_INT(read_line(fd, line, sizeof line, 10), 0);
    CHECK_STR(line, "got ping");
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_STR(describe(p->status), "exited with status 0");
    CHECK_STR(file_text(p->logpath), "out\nerr\n");

    /* Release closes the socket it still holds, not the one handed over. */
    int kept = p->socks[0];
    proc_release(p);
    CHECK_INT(p->socks[0], -1);
    CHECK(fcntl(kept, F_GETFD) < 0 && errno == EBADF);
    CHECK(fcntl(fd, F_GETFD) >= 0);
    close(fd);
    proc_free(p);
}

static void test_spawn_io(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *in = xasprintf("%s/in.txt", test_tmp);
    char *out = xasprintf("%s/out.json", test_tmp);
    CHECK_INT(write_file(in, "hello\n", 0600), 0);
    char *argv[] = {A("/bin/sh"), A("-c"), A("cat; echo err >&2"), NULL};
    CHECK_INT(proc_spawn_io(p, argv, 0, in, out), 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_STR(describe(p->status), "exited with status 0");
    CHECK_STR(file_text(out), "hello\n");
    CHECK_STR(file_text(p->logpath), "err\n");
    proc_free(p);
    unlink(in);
    unlink(out);
    free(in);
    free(out);
}

/* A stdout file that cannot be made: the error names it, as for stdin. */
/* Files passed with proc_pass_fd/proc_pass_file are the child's fds
 * PROC_PASS_FD, PROC_PASS_FD + 1, ... in order; the caller keeps its fd, and
 * the proc's copies are closed at the spawn. */
static void test_pass_fds(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *a = xasprintf("%s/a.txt", test_tmp);
    char *b = xasprintf("%s/b.txt", test_tmp);
    char *out = xasprintf("%s/passed.txt", test_tmp);
    CHECK_INT(write_file(a, "first\n", 0600), 0);
    CHECK_INT(write_file(b, "second\n", 0600), 0);
    int fd = open(b, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    CHECK_INT(proc_pass_file(p, a), PROC_PASS_FD);
    CHECK_INT(proc_pass_fd(p, fd), PROC_PASS_FD + 1);
    char *script = xasprintf("cat /dev/fd/%d /dev/fd/%d", PROC_PASS_FD, PROC_PASS_FD + 1);
    char *argv[] = {A("/bin/sh"), A("-c"), script, NULL};
    CHECK_INT(proc_spawn_io(p, argv, 0, NULL, out), 0);
    CHECK_INT(p->npass, 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_STR(file_text(out), "first\nsecond\n");
    CHECK(fcntl(fd, F_GETFD) >= 0); /* still the caller's */
    close(fd);
    proc_free(p);
    /* At most PROC_MAX_PASS; a missing file names itself. */
    p = NEW_PROC(NULL);
    for (int i = 0; i < PROC_MAX_PASS; i++) {
        CHECK_INT(proc_pass_file(p, a), PROC_PASS_FD + i);
    }
    CHECK_INT(proc_pass_file(p, a), -1);
    CHECK_HAS(p->errstr, "too many files passed");
    proc_free(p);
    p = NEW_PROC(NULL);
    CHECK_INT(proc_pass_file(p, "/nonexistent/qshell-state"), -1);
    CHECK_HAS(p->errstr, "/nonexistent/qshell-state");
    proc_free(p);
    unlink(a);
    unlink(b);
    unlink(out);
    free(a);
    free(b);
    free(out);
    free(script);
}

static void test_spawn_io_bad_stdout(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *tru[] = {A("/bin/true"), NULL};
    CHECK_INT(proc_spawn_io(p, tru, 0, NULL, "/nonexistent/qshell-test-dir/out.json"), -1);
    CHECK_INT(p->err, PROC_ERR_IO);
    CHECK_HAS(p->errstr, "/nonexistent/qshell-test-dir/out.json");
    CHECK_INT(p->pid, -1);
    proc_free(p);
}

#ifdef __linux__
/* The fds of pid other than the allowed ones, as "n n n" (static); "" if none. */
static const char *extra_fds(pid_t pid, const int *allowed, int nallowed)
{
    static char buf[256];
    char path[64];
    buf[0] = '\0';
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) {
        return "(cannot list)";
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') {
            continue;
        }
        int fd = atoi(de->d_name), ok = 0;
        for (int i = 0; i < nallowed; i++) {
            ok |= allowed[i] == fd;
        }
        if (!ok) {
            size_t len = strlen(buf);
            snprintf(buf + len, sizeof buf - len, "%s%d", len ? " " : "", fd);
        }
    }
    closedir(d);
    return buf;
}

static const char *fd_target(pid_t pid, int fd)
{
    static char buf[PATH_MAX];
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}
#endif

static void test_child_fds(void)
{
#ifdef __linux__
    /* What the child may hold: its stdio, its two sockets, and whatever
     * this process left inheritable (not proc.c's business). */
    int allowed[64] = {0, 1, 2, PROC_FIRST_FD, PROC_FIRST_FD + 1};
    int nallowed = 5;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    while (d && (de = readdir(d)) && nallowed < 64) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] != '.' && fd != dirfd(d) && fcntl(fd, F_GETFD) >= 0 &&
            !(fcntl(fd, F_GETFD) & FD_CLOEXEC)) {
            allowed[nallowed++] = fd;
        }
    }
    if (d) {
        closedir(d);
    }

    /* Two procs, so the second child could inherit the first's fds. */
    struct qs_proc *first = NEW_PROC(NULL), *p = NEW_PROC(NULL);
    char *argv[] = {A("sleep"), A("30"), NULL};
    CHECK_INT(proc_spawn(first, argv, 2), 0);
    CHECK_INT(proc_spawn(p, argv, 2), 0);
    /* Once sleep sleeps, the loader's own fds are closed; a leaked fd stays. */
    const char *extra = "";
    for (int tries = 0; tries < 100; tries++) {
        extra = extra_fds(p->pid, allowed, nallowed);
        if (!*extra && proc_state(p->pid) == 'S') {
            break;
        }
        usleep(10000);
    }
    CHECKF(!*extra, "the child holds fds it was not given: %s", extra);
    CHECK_STR(fd_target(p->pid, 0), "/dev/null");
    char *log = realpath(p->logpath, NULL);
    CHECK_STR(fd_target(p->pid, 1), log ? log : "(no log)");
    CHECK_STR(fd_target(p->pid, 2), log ? log : "(no log)");
    free(log);
    CHECK_HAS(fd_target(p->pid, PROC_FIRST_FD), "socket:");
    CHECK_HAS(fd_target(p->pid, PROC_FIRST_FD + 1), "socket:");
    /* The parent's ends are close-on-exec. */
    for (int i = 0; i < 2; i++) {
        CHECK(fcntl(p->socks[i], F_GETFD) & FD_CLOEXEC);
    }
    proc_free(p);
    proc_free(first);
#endif
}

/* ---- temp dirs ---- */

static void test_tmpdir(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    char *dir = xstrdup(p->tmpdir ? p->tmpdir : "");
    char *want_prefix = xasprintf("%s/qshell-", test_tmp);
    CHECKF(strncmp(dir, want_prefix, strlen(want_prefix)) == 0 &&
               strlen(dir) == strlen(want_prefix) + 6,
           "tmpdir %s is not %sXXXXXX", dir, want_prefix);
    struct stat st;
    CHECK_INT(stat(dir, &st), 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECKF((st.st_mode & 07777) == 0700, "tmpdir mode %o", (unsigned)(st.st_mode & 07777));
    CHECK_INT(st.st_uid, getuid());
    char *log = xasprintf("%s/qemu.log", dir);
    CHECK_STR(p->logpath, log);
    free(log);

    /* The owner file names this process and host (for the stale sweep). */
    char *owner = xasprintf("%s/owner", dir), host[256] = "", want[300];
    gethostname(host, sizeof host - 1);
    snprintf(want, sizeof want, "%ld %s\n", (long)getpid(), host);
    CHECK_STR(file_text(owner), want);
    free(owner);

    /* Release removes the whole tree, whatever is in it, and only once. */
    SPAWN_SH(p, "echo logged", 0);
    CHECK_INT(proc_wait(p, 10, NULL), 0);
    CHECK_STR(file_text(p->logpath), "logged\n");
    char *sub = xasprintf("%s/sub", dir);
    char *dummy = xasprintf("%s/sub/file", dir);
    mkdir(sub, 0700);
    CHECK_INT(write_file(dummy, "x", 0400), 0);
    free(sub);
    free(dummy);
    proc_release(p);
    CHECK(p->tmpdir == NULL);
    CHECKF(!is_dir(dir), "%s still exists after proc_release", dir);
    proc_release(p);
    proc_free(p);

    /* Another prefix; keep_tmp keeps the dir. */
    p = NEW_PROC("qtest");
    char *want2 = xasprintf("%s/qtest-", test_tmp);
    CHECK(p->tmpdir && strncmp(p->tmpdir, want2, strlen(want2)) == 0);
    free(want2);
    free(dir);
    dir = xstrdup(p->tmpdir ? p->tmpdir : "");
    p->keep_tmp = 1;
    proc_free(p);
    CHECKF(is_dir(dir), "%s removed despite keep_tmp", dir);
    remove_tree(dir);
    free(dir);
    free(want_prefix);
}

/* ---- the live registry ---- */

static void test_release_all(void)
{
    struct qs_proc *a = NEW_PROC(NULL), *b = NEW_PROC(NULL), *c = NEW_PROC(NULL);
    struct qs_proc *idle = NEW_PROC(NULL);
    SPAWN_SLEEP(a);
    SPAWN_SLEEP(b);
    SPAWN_SH(c, "trap '' TERM INT HUP; exec sleep 30", 1);
    /* b leaves the list before the sweep (a middle entry). */
    proc_free(b);

    struct qs_proc *live[] = {a, c, idle};
    pid_t pids[3];
    char *dirs[3];
    for (int i = 0; i < 3; i++) {
        pids[i] = live[i]->pid;
        dirs[i] = xstrdup(live[i]->tmpdir ? live[i]->tmpdir : "");
    }
    proc_release_all();
    for (int i = 0; i < 3; i++) {
        CHECKF(live[i]->tmpdir == NULL && !is_dir(dirs[i]), "proc %d: dir %s left", i, dirs[i]);
        CHECK_INT(live[i]->pid, -1);
        if (pids[i] > 0) {
            CHECK(live[i]->reaped);
            CHECK(WIFSIGNALED(live[i]->status) && WTERMSIG(live[i]->status) == SIGKILL);
            CHECKF(waitpid(pids[i], NULL, WNOHANG) < 0 && errno == ECHILD,
                   "child %d not reaped", (int)pids[i]);
        }
        free(dirs[i]);
    }
    CHECK_INT(c->socks[0], -1);

    /* Released procs stay valid until freed; a second sweep is harmless. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* likely c's old fd number */
    proc_release_all();
    proc_release(c);
    CHECK(fcntl(fd, F_GETFD) >= 0);
    close(fd);
    proc_free(a);
    proc_free(idle);
    proc_free(c);
    proc_release_all(); /* an empty list */

    /* Freeing the newest (the head) and the oldest (the tail) entries. */
    struct qs_proc *old = NEW_PROC(NULL), *mid = NEW_PROC(NULL), *young = NEW_PROC(NULL);
    SPAWN_SLEEP(mid);
    proc_free(young);
    proc_free(old);
    pid_t pid = mid->pid;
    proc_release_all();
    CHECK(mid->reaped && mid->tmpdir == NULL);
    CHECK(waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    proc_free(mid);
    proc_free(NULL);
}

/* ---- fork copies ---- */

/*
 * A forked copy (a sweep worker) inherits the parent's procs.  Its
 * proc_release_all / proc_free must not kill the parent's children or
 * remove their dirs; its own procs it releases normally.
 */
static void test_fork_copy_is_inert(void)
{
    struct qs_proc *p = NEW_PROC(NULL);
    SPAWN_SLEEP(p);
    char *dir = xstrdup(p->tmpdir ? p->tmpdir : "");
    pid_t pid = p->pid;

    int rep[2];
    CHECK_INT(pipe(rep), 0);
    pid_t copy = fork();
    if (copy == 0) {
        /* In the copy: one proc of its own, then the exit paths. */
        close(rep[0]);
        struct qs_proc *own = proc_new(NULL);
        char *argv[] = {A("sleep"), A("30"), NULL};
        int spawned = proc_spawn(own, argv, 0) == 0;
        pid_t own_pid = own->pid;
        char *own_dir = xstrdup(own->tmpdir ? own->tmpdir : "");
        proc_release_all();
        proc_free(p);
        int ok_own = spawned && own->reaped && WIFSIGNALED(own->status) &&
                     WTERMSIG(own->status) == SIGKILL && !is_dir(own_dir) &&
                     waitpid(own_pid, NULL, WNOHANG) < 0;
        proc_free(own);
        char r = ok_own ? 'y' : 'n';
        if (write(rep[1], &r, 1) != 1) {
            _exit(2);
        }
        _exit(0);
    }
    close(rep[1]);
    char r = 0;
    CHECK_INT(read(rep[0], &r, 1), 1);
    close(rep[0]);
    int st;
    CHECK_INT(waitpid(copy, &st, 0), copy);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECKF(r == 'y', "the copy did not kill, reap and remove its own proc");

    /* The parent's child and dir are untouched. */
    CHECK_INT(proc_poll(p), 0);
    CHECK_INT(p->pid, pid);
    char s = proc_state(pid);
    CHECKF(s != 0 && s != 'Z' && s != 'X', "the parent's child is dead (state %c)", s ? s : '-');
    CHECKF(is_dir(dir), "the copy removed the parent's dir %s", dir);
    CHECK_STR(p->tmpdir, dir);

    /* And the owner still releases them. */
    proc_free(p);
    CHECK(waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    CHECKF(!is_dir(dir), "%s left after the owner's release", dir);
    free(dir);
}

/* If qshell dies without cleaning up, PDEATHSIG takes its children along;
 * the dirs it left are swept by the next proc_new's sweep. */
static void test_parent_death(void)
{
#ifdef __linux__
    int rep[2];
    CHECK_INT(pipe(rep), 0);
    pid_t mid = fork();
    if (mid == 0) {
        close(rep[0]);
        struct qs_proc *p = proc_new(NULL);
        char *argv[] = {A("sleep"), A("30"), NULL};
        char msg[PATH_MAX + 32];
        int n = proc_spawn(p, argv, 0) == 0
                    ? snprintf(msg, sizeof msg, "%d %s\n", (int)p->pid, p->tmpdir)
                    : snprintf(msg, sizeof msg, "0 -\n");
        if (write(rep[1], msg, (size_t)n) != n) {
            _exit(2);
        }
        _exit(0); /* no release, no atexit: as after SIGKILL */
    }
    close(rep[1]);
    char line[PATH_MAX + 32], dir[PATH_MAX];
    int pid = 0;
    CHECK_INT(read_line(rep[0], line, sizeof line, 10), 0);
    close(rep[0]);
    CHECK(sscanf(line, "%d %4095s", &pid, dir) == 2 && pid > 0);
    int st;
    CHECK_INT(waitpid(mid, &st, 0), mid);
    if (pid <= 0) {
        return;
    }
    CHECKF(dies_within(pid, 5), "child %d outlived its parent", pid);
    CHECK(is_dir(dir));

    /* The sweep: a dir whose owner is dead goes; a live owner's stays, and
     * so does a dir of the same pid on another host, or a name that does
     * not fit the pattern. */
    struct qs_proc *live = NEW_PROC(NULL);
    char *other_host = xasprintf("%s/qshell-OTHERH", test_tmp);
    char *odd_name = xasprintf("%s/qshell-toolong", test_tmp);
    char owner[PATH_MAX + 16], text[64];
    snprintf(text, sizeof text, "%d some-other-host\n", (int)mid);
    mkdir(other_host, 0700);
    mkdir(odd_name, 0700);
    snprintf(owner, sizeof owner, "%s/owner", other_host);
    write_file(owner, text, 0600);
    snprintf(owner, sizeof owner, "%s/owner", odd_name);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    snprintf(text, sizeof text, "%d %s\n", (int)mid, host);
    write_file(owner, text, 0600);

    proc_sweep_stale("qshell");
    CHECKF(!is_dir(dir), "dead owner's dir %s not swept", dir);
    CHECKF(live->tmpdir && is_dir(live->tmpdir), "live owner's dir %s swept", live->tmpdir);
    CHECK(is_dir(other_host));
    CHECK(is_dir(odd_name));
    remove_tree(dir);
    remove_tree(other_host);
    remove_tree(odd_name);
    free(other_host);
    free(odd_name);
    proc_free(live);
#endif
}

/* Last: every test released what it made (run with no filter). */
static void test_nothing_left(void)
{
    DIR *d = opendir(test_tmp);
    struct dirent *de;
    int left = 0;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] != '.') {
            check_fail(__FILE__, __LINE__, "left in $TMPDIR: %s", de->d_name);
            left++;
        }
    }
    if (d) {
        closedir(d);
    }
    CHECK_INT(left, 0);
}

/* ---- main ---- */

static const struct unit_test tests[] = {
    {"spawn: /bin/true exits 0", test_true},
    {"spawn: exit status", test_exit_status},
    {"spawn: death by signal, described", test_killed_by_signal},
    {"poll: running until told to exit", test_poll_running},
    {"wait: timeout and interrupt flag", test_wait_timeout_and_interrupt},
    {"stop: TERM ignored, KILL reaps", test_ladder_term_ignored},
    {"stop: exits on TERM, reaped early", test_ladder_exits_on_term},
    {"stop: the whole process group", test_process_group},
    {"spawn: exec failure is an error", test_exec_failure},
    {"spawn: argument and setup errors", test_spawn_errors},
    {"files: stdin, log, sockets", test_stdio_and_sockets},
    {"files: spawn_io stdin and stdout files", test_spawn_io},
    {"files: spawn_io names a bad stdout path", test_spawn_io_bad_stdout},
    {"files: passed fds, in order; at most PROC_MAX_PASS", test_pass_fds},
    {"files: the child gets only its fds", test_child_fds},
    {"tmpdir: 0700, owner, removed on release", test_tmpdir},
    {"registry: proc_release_all", test_release_all},
    {"fork: a copy leaves the parent's children alone", test_fork_copy_is_inert},
    {"parent death: PDEATHSIG and the stale sweep", test_parent_death},
    {"cleanup: no temp dir left", test_nothing_left},
};

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : getenv("QSHELL_TEST_FILTER");

    /* A private TMPDIR: proc.c's dirs and its stale sweep stay in it. */
    const char *base = getenv("TMPDIR");
    char *tmpl = xasprintf("%s/test_proc.XXXXXX", base && *base ? base : "/tmp");
    test_tmp = mkdtemp(tmpl);
    if (!test_tmp) {
        perror("mkdtemp");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    setenv("TMPDIR", test_tmp, 1);
    signal(SIGPIPE, SIG_IGN);

    int rc = unit_run(tests, sizeof tests / sizeof tests[0], filter);
    proc_release_all();
    remove_tree(test_tmp);
    free(tmpl);
    return rc;
}
