/*
 * proc.c - spawning, stopping and reaping QEMU, after libqtest's
 * qtest_spawn_qemu / qtest_wait_qemu and QEMUMachine's shutdown ladder.
 *
 * Owns: child pids, the parent ends of their socketpairs, their temp dirs.
 * Does not own: the QMP conversation (qmp.c) or the stop policy (quit, then
 * TERM, then KILL lives in stdlib/qemu/vm/init.lua; the pieces are here).
 *
 * No SIGCHLD handler: children are reaped by polling waitpid(WNOHANG), so
 * nothing else in the process (popen, os.execute) loses its exit status.
 */
#define _GNU_SOURCE /* pipe2, F_DUPFD_CLOEXEC, strsignal */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "proc.h"
#include "util.h"

/*
 * The live list is process-wide by nature: children belong to the process,
 * and the atexit hook that must find them has no Lua state to look in.
 */
static struct qs_proc *live_head;

/* util.h's qs_fail over this core's err and errstr */
#define fail(obj, code, ...) QS_FAIL(obj, code, __VA_ARGS__)

/*
 * A qshell killed by SIGKILL cannot remove its temp dirs (PDEATHSIG takes
 * care of QEMU).  Each dir records its owner's pid; the first proc_new of a
 * later qshell removes the dirs whose owner is gone.
 */
static int owner_gone(long pid)
{
    if (kill((pid_t)pid, 0) < 0) {
        return errno == ESRCH;
    }
#ifdef __linux__
    /* A zombie nobody reaped is gone too. */
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *paren = strrchr(buf, ')');
        return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
    }
#endif
    return 0;
}

/*
 * Remove a dead owner's dir.  Its children (a qemu-img, a QEMU) get their
 * PDEATHSIG a moment after it died and may still create a file while the
 * dir goes: the owner file is removed last, and a dir that is not empty
 * then gets the owner file back and another pass, so that a dir never
 * loses its owner while it still holds files.
 */
static void remove_stale_dir(const char *dir, const char *owner, long pid, const char *host)
{
    for (int pass = 0; pass < 40; pass++) {
        DIR *d = opendir(dir);
        if (!d) {
            return;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
                strcmp(de->d_name, "owner") == 0) {
                continue;
            }
            char *p = xasprintf("%s/%s", dir, de->d_name);
            remove_tree(p);
            free(p);
        }
        closedir(d);
        unlink(owner);
        if (rmdir(dir) == 0 || errno != ENOTEMPTY) {
            return;
        }
        FILE *f = fopen(owner, "w");
        if (f) {
            fprintf(f, "%ld %s\n", pid, host);
            fclose(f);
        }
        usleep(50000);
    }
}

void proc_sweep_stale(const char *prefix)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) {
        base = "/tmp";
    }
    DIR *d = opendir(base);
    if (!d) {
        return;
    }
    size_t plen = strlen(prefix);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, prefix, plen) != 0 || de->d_name[plen] != '-' ||
            strlen(de->d_name) != plen + 7) {
            continue;
        }
        char *dir = xasprintf("%s/%s", base, de->d_name);
        char *owner = xasprintf("%s/owner", dir);
        struct stat st;
        FILE *f = lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid()
                      ? fopen(owner, "r")
                      : NULL;
        long pid = 0;
        char host[256] = "", me[256] = "";
        if (f) {
            if (fscanf(f, "%ld %255s", &pid, host) < 1) {
                pid = 0;
            }
            fclose(f);
        }
        /* Only dirs of this host's processes: a TMPDIR may be shared. */
        gethostname(me, sizeof me - 1);
        if (pid > 0 && strcmp(host, me) == 0 && owner_gone(pid)) {
            remove_stale_dir(dir, owner, pid, host);
        }
        free(owner);
        free(dir);
    }
    closedir(d);
}

static void write_owner(const char *dir)
{
    char *owner = xasprintf("%s/owner", dir);
    FILE *f = fopen(owner, "w");
    if (f) {
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        fprintf(f, "%ld %s\n", (long)getpid(), host[0] ? host : "-");
        fclose(f);
    }
    free(owner);
}

struct qs_proc *proc_new(const char *prefix)
{
    struct qs_proc *p = xcalloc(1, sizeof *p);
    p->pid = -1;
    p->share_sock = -1;
    for (int i = 0; i < PROC_MAX_SOCKS; i++) {
        p->socks[i] = -1;
    }
    prefix = prefix ? prefix : "qshell";
    static int swept;
    if (!swept) {
        swept = 1;
        proc_sweep_stale(prefix);
    }
    p->owner = owner_mark();
    p->tmpdir = make_tmpdir(prefix);
    if (!p->tmpdir) {
        fail(p, PROC_ERR_IO, "cannot create a temp dir in %s: %s",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", strerror(errno));
    } else {
        p->logpath = xasprintf("%s/qemu.log", p->tmpdir);
        write_owner(p->tmpdir);
    }
    p->next = live_head;
    if (live_head) {
        live_head->prev = p;
    }
    live_head = p;
    return p;
}

/*
 * Move fd above the numbers dup2 will fill (0..2 and PROC_FIRST_FD..+n) so
 * that it cannot be clobbered: to >= 100 where the fd limit allows, else
 * just above them (a low `ulimit -n` refuses 100 with EINVAL).
 */
static int lift(int fd)
{
    int r = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    if (r < 0 && errno == EINVAL) {
        r = fcntl(fd, F_DUPFD_CLOEXEC, PROC_FIRST_FD + PROC_MAX_SOCKS);
    }
    return r;
}

void proc_setenv(struct qs_proc *p, const char *name, const char *value)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < p->nenv; i++) {
        if (strncmp(p->env[i], name, len) == 0 && p->env[i][len] == '=') {
            free(p->env[i]);
            p->env[i] = xasprintf("%s=%s", name, value);
            return;
        }
    }
    p->env = xrealloc(p->env, (p->nenv + 2) * sizeof *p->env);
    p->env[p->nenv++] = xasprintf("%s=%s", name, value);
    p->env[p->nenv] = NULL;
}

/*
 * The child's environment: ours with p->env's names replaced or added.
 * Built before fork (the child of a threaded parent may not allocate).
 */
static char **child_env(const struct qs_proc *p)
{
    extern char **environ;
    size_t n = 0;
    while (environ[n]) {
        n++;
    }
    char **envp = xcalloc(n + p->nenv + 1, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int replaced = 0;
        for (size_t j = 0; j < p->nenv && !replaced; j++) {
            size_t len = (size_t)(strchr(p->env[j], '=') - p->env[j]) + 1;
            replaced = strncmp(environ[i], p->env[j], len) == 0;
        }
        if (!replaced) {
            envp[k++] = environ[i];
        }
    }
    for (size_t j = 0; j < p->nenv; j++) {
        envp[k++] = p->env[j];
    }
    envp[k] = NULL;
    return envp;
}

/* Close the files proc_pass_fd kept for the child. */
static void close_passed(struct qs_proc *p)
{
    for (int i = 0; i < p->npass; i++) {
        if (p->pass_fds[i] >= 0) {
            close(p->pass_fds[i]);
        }
    }
    p->npass = 0;
    p->share_sock = -1;
}

static void child_exec(char *const argv[], char *const envp[], int nsocks, const int *child_ends,
                       int npass, const int *passfds, int nullfd, int outfd, int logfd, int errfd,
                       pid_t parent)
{
    int e;
    sigset_t none;

    setpgid(0, 0);
#ifdef __linux__
    /* libqtest's safety net: QEMU dies with us, even on SIGKILL. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(127);
    }
#else
    QS_UNUSED(parent);
#endif
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int hi[PROC_MAX_SOCKS], hpass[PROC_MAX_PASS];
    int hnull = lift(nullfd), hout = lift(outfd), hlog = lift(logfd);
    for (int i = 0; i < nsocks; i++) {
        hi[i] = lift(child_ends[i]);
    }
    for (int i = 0; i < npass; i++) {
        hpass[i] = lift(passfds[i]);
    }
    if (hnull < 0 || hout < 0 || hlog < 0 || dup2(hnull, 0) < 0 || dup2(hout, 1) < 0 ||
        dup2(hlog, 2) < 0) {
        goto fail;
    }
    for (int i = 0; i < nsocks; i++) {
        /* dup2 clears FD_CLOEXEC on the target: only these survive exec. */
        if (hi[i] < 0 || dup2(hi[i], PROC_FIRST_FD + i) < 0) {
            goto fail;
        }
    }
    for (int i = 0; i < npass; i++) {
        if (hpass[i] < 0 || dup2(hpass[i], PROC_PASS_FD + i) < 0) {
            goto fail;
        }
    }
    if (envp) {
        execvpe(argv[0], argv, envp);
    } else {
        execvp(argv[0], argv);
    }
fail:
    e = errno;
    if (write(errfd, &e, sizeof e) < 0) {
        /* nothing left to report to */
    }
    _exit(127);
}

int proc_spawn(struct qs_proc *p, char *const argv[], int nsocks)
{
    return proc_spawn_io(p, argv, nsocks, NULL, NULL);
}

int proc_spawn_io(struct qs_proc *p, char *const argv[], int nsocks, const char *stdin_path,
                  const char *stdout_path)
{
    int child_ends[PROC_MAX_SOCKS];
    int errpipe[2] = {-1, -1};
    int nullfd = -1, logfd = -1, outfd = -1;
    int rc = -1, made = 0;
    char **envp = NULL;

    if (!p->tmpdir) {
        return -1; /* errstr from proc_new */
    }
    if (p->pid > 0 || p->reaped) {
        return fail(p, PROC_ERR_IO, "process already started");
    }
    if (nsocks < 0 || nsocks > PROC_MAX_SOCKS) {
        return fail(p, PROC_ERR_IO, "too many sockets (%d)", nsocks);
    }
    for (; made < nsocks; made++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
            fail(p, PROC_ERR_IO, "socketpair: %s", strerror(errno));
            goto out;
        }
        p->socks[made] = sv[0];
        child_ends[made] = sv[1];
    }
    if (p->share_sock >= 0) {
        if (p->share_sock >= nsocks) {
            fail(p, PROC_ERR_IO, "socketpair %d to share is not made", p->share_sock + 1);
            goto out;
        }
        p->pass_fds[p->share_slot] = fcntl(p->socks[p->share_sock], F_DUPFD_CLOEXEC, 0);
        if (p->pass_fds[p->share_slot] < 0) {
            fail(p, PROC_ERR_IO, "fcntl: %s", strerror(errno));
            goto out;
        }
    }
    nullfd = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY | O_CLOEXEC);
    logfd = open(p->logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    outfd = stdout_path ? open(stdout_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : logfd;
    if (nullfd < 0 || logfd < 0 || outfd < 0 || pipe2(errpipe, O_CLOEXEC) < 0) {
        int e = errno;
        const char *what = nullfd < 0  ? (stdin_path ? stdin_path : "/dev/null")
                           : logfd < 0 ? p->logpath
                           : outfd < 0 ? stdout_path
                                       : "a pipe";
        fail(p, PROC_ERR_IO, "cannot set up the child's files (%s): %s", what, strerror(e));
        goto out;
    }
    envp = p->nenv ? child_env(p) : NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fail(p, PROC_ERR_IO, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        child_exec(argv, envp, nsocks, child_ends, p->npass, p->pass_fds, nullfd, outfd, logfd, errpipe[1],
                   parent);
    }
    p->pid = pid;
    setpgid(pid, pid); /* also here, so a signal right after fork finds the group */
    close(errpipe[1]);
    errpipe[1] = -1;
    int e;
    ssize_t n;
    do {
        n = read(errpipe[0], &e, sizeof e);
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof e) {
        while (waitpid(pid, &p->status, 0) < 0 && errno == EINTR) {
        }
        p->pid = -1;
        p->reaped = 1;
        fail(p, PROC_ERR_EXEC, "cannot run %s: %s", argv[0], strerror(e));
        goto out;
    }
    rc = 0;
out:
    free(envp);
    close_passed(p); /* the child has its copies */
    for (int i = 0; i < made; i++) {
        close(child_ends[i]);
        if (rc < 0) {
            close(p->socks[i]);
            p->socks[i] = -1;
        }
    }
    p->nsocks = rc < 0 ? 0 : nsocks;
    if (nullfd >= 0) {
        close(nullfd);
    }
    if (logfd >= 0) {
        close(logfd);
    }
    if (outfd >= 0 && outfd != logfd) {
        close(outfd);
    }
    if (errpipe[0] >= 0) {
        close(errpipe[0]);
    }
    if (errpipe[1] >= 0) {
        close(errpipe[1]);
    }
    return rc;
}

int proc_pass_fd(struct qs_proc *p, int fd)
{
    if (p->pid > 0 || p->reaped) {
        return fail(p, PROC_ERR_IO, "process already started");
    }
    if (p->npass >= PROC_MAX_PASS) {
        return fail(p, PROC_ERR_IO, "too many files passed (%d at most)", PROC_MAX_PASS);
    }
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
        return fail(p, PROC_ERR_IO, "fd %d: %s", fd, strerror(errno));
    }
    p->pass_fds[p->npass] = copy;
    return PROC_PASS_FD + p->npass++;
}

int proc_share_socket(struct qs_proc *p, int i)
{
    if (p->pid > 0 || p->reaped) {
        return fail(p, PROC_ERR_IO, "process already started");
    }
    if (i < 0 || i >= PROC_MAX_SOCKS || p->share_sock >= 0) {
        return fail(p, PROC_ERR_IO, "bad socketpair to share (%d)", i + 1);
    }
    if (p->npass >= PROC_MAX_PASS) {
        return fail(p, PROC_ERR_IO, "too many files passed (%d at most)", PROC_MAX_PASS);
    }
    p->share_sock = i;
    p->share_slot = p->npass;
    p->pass_fds[p->npass] = -1; /* filled at the spawn */
    return PROC_PASS_FD + p->npass++;
}

int proc_hold_fd(struct qs_proc *p, int fd)
{
    if (p->nheld >= PROC_MAX_PASS) {
        return fail(p, PROC_ERR_IO, "too many files held (%d at most)", PROC_MAX_PASS);
    }
    p->held[p->nheld++] = fd;
    return 0;
}

int proc_pass_file(struct qs_proc *p, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return fail(p, PROC_ERR_IO, "%s: %s", path, strerror(errno));
    }
    int n = proc_pass_fd(p, fd);
    close(fd);
    return n;
}

int proc_take_sock(struct qs_proc *p, int i)
{
    if (i < 0 || i >= p->nsocks) {
        return -1;
    }
    int fd = p->socks[i];
    p->socks[i] = -1;
    return fd;
}

int proc_poll(struct qs_proc *p)
{
    if (p->reaped || p->pid <= 0) {
        return 1;
    }
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        p->status = r == p->pid ? st : 0;
        p->reaped = 1;
        p->pid = -1;
        return 1;
    }
    return 0;
}

int proc_wait(struct qs_proc *p, double timeout, const volatile sig_atomic_t *intr)
{
    double deadline = deadline_after(timeout);
    useconds_t nap = 200;

    for (;;) {
        if (proc_poll(p)) {
            return 0;
        }
        if (intr && *intr) {
            return fail(p, PROC_ERR_INTERRUPTED, "interrupted");
        }
        if (deadline >= 0 && now_mono() >= deadline) {
            return fail(p, PROC_ERR_TIMEOUT, "process %d still running after %g s", (int)p->pid,
                        timeout);
        }
        usleep(nap);
        if (nap < 10000) {
            nap *= 2;
        }
    }
}

int proc_signal(struct qs_proc *p, int sig)
{
    if (p->reaped || p->pid <= 0) {
        return 0;
    }
    if (kill(-p->pid, sig) < 0 && kill(p->pid, sig) < 0 && errno != ESRCH) {
        return fail(p, PROC_ERR_IO, "kill %d: %s", (int)p->pid, strerror(errno));
    }
    return 0;
}

void proc_kill(struct qs_proc *p)
{
    if (p->reaped || p->pid <= 0) {
        return;
    }
    proc_signal(p, SIGKILL);
    int st;
    pid_t r;
    while ((r = waitpid(p->pid, &st, 0)) < 0 && errno == EINTR) {
    }
    p->status = r == p->pid ? st : 0;
    p->reaped = 1;
    p->pid = -1;
}

/* A copy inherited through fork(): see owner_is_copy() in util.h. */
static int inherited(const struct qs_proc *p)
{
    return owner_is_copy(p->owner);
}

void proc_release(struct qs_proc *p)
{
    if (inherited(p)) {
        p->pid = -1;
        p->reaped = 1;
        p->keep_tmp = 1;
    }
    proc_kill(p);
    close_passed(p);
    for (int i = 0; i < p->nheld; i++) {
        close(p->held[i]);
    }
    p->nheld = 0;
    for (int i = 0; i < PROC_MAX_SOCKS; i++) {
        if (p->socks[i] >= 0) {
            close(p->socks[i]);
            p->socks[i] = -1;
        }
    }
    if (p->tmpdir && !p->keep_tmp) {
        remove_tree(p->tmpdir);
    }
    free(p->tmpdir);
    p->tmpdir = NULL;
}

void proc_free(struct qs_proc *p)
{
    if (!p) {
        return;
    }
    proc_release(p);
    if (p->prev) {
        p->prev->next = p->next;
    } else if (live_head == p) {
        live_head = p->next;
    }
    if (p->next) {
        p->next->prev = p->prev;
    }
    for (size_t i = 0; i < p->nenv; i++) {
        free(p->env[i]);
    }
    free(p->env);
    free(p->logpath);
    free(p);
}

void proc_release_all(void)
{
    for (struct qs_proc *p = live_head; p; p = p->next) {
        proc_release(p);
    }
}

void proc_describe_status(int status, char *buf, size_t n)
{
    if (WIFEXITED(status)) {
        snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    } else {
        snprintf(buf, n, "ended with wait status 0x%x", status);
    }
}
