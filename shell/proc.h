/*
 * proc.h - QEMU child processes in plain C (no Lua).
 *
 * A struct qs_proc owns one child: its pid, the parent ends of the
 * socketpairs handed to it (monitor, console, ...), its private temp dir and
 * its log.  Every proc is on a process-wide live list so that an exit that
 * skips lua_close (os.exit, a fatal signal) can still kill and reap it.
 */
#ifndef QSHELL_PROC_H
#define QSHELL_PROC_H

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#define PROC_MAX_SOCKS 8
/* The child end of socketpair i is fd PROC_FIRST_FD + i in the child. */
#define PROC_FIRST_FD 3
/* Files passed with proc_pass_fd/proc_pass_file are these fds in the
 * child, in the order they were passed. */
#define PROC_PASS_FD (PROC_FIRST_FD + PROC_MAX_SOCKS)
#define PROC_MAX_PASS 4

enum {
    PROC_OK = 0,
    PROC_ERR_IO,
    PROC_ERR_TIMEOUT,
    PROC_ERR_INTERRUPTED,
    PROC_ERR_EXEC,
};

struct qs_proc {
    pid_t pid;           /* -1 before spawn and once reaped */
    int status;          /* wait status, valid when reaped */
    int reaped;
    int socks[PROC_MAX_SOCKS];
    int nsocks;
    int pass_fds[PROC_MAX_PASS]; /* files for the child, closed at the spawn */
    int npass;
    int share_sock;      /* socketpair whose parent end the child gets too (-1) */
    int share_slot;      /* its pass_fds slot */
    int held[PROC_MAX_PASS]; /* fds of the caller's kept as long as the proc */
    int nheld;
    char *tmpdir;        /* private 0700 dir, removed by proc_release */
    char *logpath;       /* <tmpdir>/qemu.log */
    int keep_tmp;
    pid_t owner;         /* the process that made it; a forked copy is inert */
    char **env;          /* "NAME=value" set in the child only, NULL-ended */
    size_t nenv;
    int err;
    char errstr[256];
    struct qs_proc *prev, *next; /* live list */
};

/* Allocate and make the temp dir (check ->err). */
struct qs_proc *proc_new(const char *prefix);
/*
 * fork + execvp argv with stdin /dev/null, stdout and stderr to logpath,
 * nsocks socketpairs whose child ends are fds 3, 4, ..., its own process
 * group and PDEATHSIG.  An exec failure is reported here, not later.
 */
int proc_spawn(struct qs_proc *p, char *const argv[], int nsocks);
/* The same with stdout to its own file (stderr still to the log), e.g. for
 * qemu-img --output=json, and stdin from a file; NULL keeps the defaults. */
int proc_spawn_io(struct qs_proc *p, char *const argv[], int nsocks, const char *stdin_path,
                  const char *stdout_path);
/* Give the child a copy of fd (the caller keeps its own): the child's fd
 * number (PROC_PASS_FD, then the next ones), or -1 with err set. */
int proc_pass_fd(struct qs_proc *p, int fd);
/* Before spawn: the child also gets a copy of the parent's end of
 * socketpair i (0-based), so a part of it can write to its own other end
 * (a TCG plugin feeding the console); returns that fd's number in the
 * child, or -1. */
int proc_share_socket(struct qs_proc *p, int i);
/* Keep fd (the caller's, e.g. the memfd holding the child's RAM) open as
 * long as the proc: closed by proc_release, also in a fork copy.  0, or -1
 * with err set. */
int proc_hold_fd(struct qs_proc *p, int fd);
/* Open path read-only now and pass it (e.g. a state file for QEMU's
 * -incoming): the child's fd number, or -1 with err set. */
int proc_pass_file(struct qs_proc *p, const char *path);
/* Set NAME=value in the child's environment only (before spawn). */
void proc_setenv(struct qs_proc *p, const char *name, const char *value);
/* Hand over the parent end of socketpair i (the caller closes it). */
int proc_take_sock(struct qs_proc *p, int i);
/* 1 if the child has exited (and is now reaped), 0 if running. */
int proc_poll(struct qs_proc *p);
/* Wait for exit; 0 when reaped, -1 on timeout or interrupt (err set). */
int proc_wait(struct qs_proc *p, double timeout, const volatile sig_atomic_t *intr);
/* Signal the child's process group. */
int proc_signal(struct qs_proc *p, int sig);
/* SIGKILL and reap, blocking; a no-op once reaped. */
void proc_kill(struct qs_proc *p);
/* Kill, reap, close sockets, remove the temp dir (unless kept). Idempotent. */
void proc_release(struct qs_proc *p);
void proc_free(struct qs_proc *p);
/* Release every live proc: the atexit and fatal-signal path. */
void proc_release_all(void);
/* Remove the temp dirs left by dead qshell processes (also done once by the
 * first proc_new of a process). */
void proc_sweep_stale(const char *prefix);
/* "exited with status 1", "was killed by signal 9 (Killed)". */
void proc_describe_status(int status, char *buf, size_t n);

#endif
