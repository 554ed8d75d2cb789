/*
 * ptyrun - drive a program through a real pseudo-terminal, for tests of the
 * interactive parts (vm:attach, the REPL).
 *
 *   ptyrun [-s ROWSxCOLS] [-t SECONDS] SCRIPT -- PROGRAM [ARGS...]
 *
 * SCRIPT is a file of lines:
 *   expect TEXT      wait until TEXT (plain, after escapes) appears in the output
 *                    since the last match; fails after the timeout (-t, default 30)
 *   send TEXT        write TEXT to the terminal (escapes: \r \n \t \e \\ \xHH)
 *   resize R C       set the window size (the program gets SIGWINCH)
 *   signal NAME      send INT, TERM or QUIT to the program's process group
 *   sleep MS
 *   timeout SECONDS  the limit for the expects that follow
 *   eof              close the terminal's input side (send ^D in canonical mode)
 *   wait [CODE]      wait for the program to exit (and check its exit code)
 *   # comment
 * On failure, prints what went wrong and the last 2000 bytes of output, and
 * exits 1.  The whole transcript goes to $PTYRUN_LOG when set.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static char *out;
static size_t out_len, out_cap, matched;
static int master = -1;
static pid_t child;
static double timeout_s = 30;
static FILE *logf;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void dump_and_fail(const char *fmt, const char *arg)
{
    fprintf(stderr, "ptyrun: ");
    fprintf(stderr, fmt, arg);
    size_t start = out_len > 2000 ? out_len - 2000 : 0;
    fprintf(stderr, "\n--- last output ---\n%.*s\n--- end ---\n", (int)(out_len - start),
            out + start);
    if (child > 0) {
        kill(-child, SIGKILL);
        kill(child, SIGKILL);
    }
    exit(1);
}

/* Read whatever is available within ms; returns bytes read, -1 on EOF. */
static int pump(int ms)
{
    struct pollfd p = {.fd = master, .events = POLLIN};
    int n = poll(&p, 1, ms);
    if (n <= 0) {
        return 0;
    }
    char buf[4096];
    ssize_t r = read(master, buf, sizeof buf);
    if (r <= 0) {
        return -1; /* EIO once the slave side is closed everywhere */
    }
    if (out_len + (size_t)r + 1 > out_cap) {
        out_cap = (out_len + (size_t)r + 1) * 2;
        out = realloc(out, out_cap);
        if (!out) {
            abort();
        }
    }
    memcpy(out + out_len, buf, (size_t)r);
    out_len += (size_t)r;
    out[out_len] = '\0';
    if (logf) {
        fwrite(buf, 1, (size_t)r, logf);
        fflush(logf);
    }
    return (int)r;
}

static size_t unescape(const char *s, char *dst)
{
    size_t n = 0;
    for (; *s; s++) {
        if (*s != '\\' || !s[1]) {
            dst[n++] = *s;
            continue;
        }
        s++;
        switch (*s) {
        case 'r': dst[n++] = '\r'; break;
        case 'n': dst[n++] = '\n'; break;
        case 't': dst[n++] = '\t'; break;
        case 'e': dst[n++] = 27; break;
        case 'x': {
            char hex[3] = {s[1], s[1] ? s[2] : 0, 0};
            dst[n++] = (char)strtol(hex, NULL, 16);
            s += 2;
            break;
        }
        default: dst[n++] = *s; break;
        }
    }
    dst[n] = '\0';
    return n;
}

static void do_expect(const char *text, size_t len)
{
    double deadline = now() + timeout_s;
    for (;;) {
        if (out_len >= matched + len) {
            char *hit = memmem(out + matched, out_len - matched, text, len);
            if (hit) {
                matched = (size_t)(hit - out) + len;
                return;
            }
        }
        double left = deadline - now();
        if (left <= 0) {
            dump_and_fail("timed out waiting for \"%s\"", text);
        }
        if (pump((int)(left * 1000) + 1) < 0) {
            /* EOF: check once more, then fail */
            char *hit = out_len >= matched + len ? memmem(out + matched, out_len - matched, text, len) : NULL;
            if (hit) {
                matched = (size_t)(hit - out) + len;
                return;
            }
            dump_and_fail("the program ended before \"%s\"", text);
        }
    }
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(master, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            dump_and_fail("cannot write to the terminal: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
        pump(0);
    }
}

int main(int argc, char **argv)
{
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            unsigned r, c;
            if (sscanf(argv[++i], "%ux%u", &r, &c) == 2) {
                ws.ws_row = (unsigned short)r;
                ws.ws_col = (unsigned short)c;
            }
        } else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            timeout_s = atof(argv[++i]);
        }
    }
    if (i + 2 >= argc || strcmp(argv[i + 1], "--") != 0) {
        fprintf(stderr, "usage: ptyrun [-s ROWSxCOLS] [-t SECONDS] SCRIPT -- PROGRAM [ARGS...]\n");
        return 2;
    }
    FILE *script = fopen(argv[i], "r");
    if (!script) {
        perror(argv[i]);
        return 2;
    }
    char **cmd = argv + i + 2;
    const char *logpath = getenv("PTYRUN_LOG");
    if (logpath) {
        logf = fopen(logpath, "w");
    }

    master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
        perror("posix_openpt");
        return 2;
    }
    const char *slave_name = ptsname(master);
    ioctl(master, TIOCSWINSZ, &ws);
    child = fork();
    if (child == 0) {
        setsid();
        int slave = open(slave_name, O_RDWR);
        if (slave < 0) {
            _exit(127);
        }
        ioctl(slave, TIOCSCTTY, 0);
        dup2(slave, 0);
        dup2(slave, 1);
        dup2(slave, 2);
        if (slave > 2) {
            close(slave);
        }
        close(master);
        execvp(cmd[0], cmd);
        _exit(127);
    }

    char line[8192], text[8192];
    int status = 0, exited = 0;
    while (fgets(line, sizeof line, script)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }
        char *arg = strchr(line, ' ');
        if (arg) {
            *arg++ = '\0';
        } else {
            arg = line + strlen(line);
        }
        if (strcmp(line, "expect") == 0) {
            size_t n = unescape(arg, text);
            do_expect(text, n);
        } else if (strcmp(line, "send") == 0) {
            size_t n = unescape(arg, text);
            write_all(text, n);
        } else if (strcmp(line, "resize") == 0) {
            unsigned r, c;
            if (sscanf(arg, "%u %u", &r, &c) == 2) {
                ws.ws_row = (unsigned short)r;
                ws.ws_col = (unsigned short)c;
                ioctl(master, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH */
            }
        } else if (strcmp(line, "signal") == 0) {
            int sig = strcmp(arg, "INT") == 0 ? SIGINT : strcmp(arg, "TERM") == 0 ? SIGTERM : SIGQUIT;
            pid_t pgrp = tcgetpgrp(master);
            kill(pgrp > 0 ? -pgrp : child, sig);
        } else if (strcmp(line, "timeout") == 0) {
            timeout_s = atof(arg);
        } else if (strcmp(line, "sleep") == 0) {
            double until = now() + atoi(arg) / 1000.0;
            while (now() < until) {
                pump((int)((until - now()) * 1000) + 1);
            }
        } else if (strcmp(line, "eof") == 0) {
            write_all("\x04", 1);
        } else if (strcmp(line, "wait") == 0) {
            double deadline = now() + timeout_s;
            for (;;) {
                pid_t r = waitpid(child, &status, WNOHANG);
                if (r == child) {
                    exited = 1;
                    break;
                }
                if (now() > deadline) {
                    dump_and_fail("the program did not exit%s", "");
                }
                pump(20);
            }
            while (pump(0) > 0) {
            }
            if (*arg) {
                int want = atoi(arg);
                int got = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                if (got != want) {
                    char msg[64];
                    snprintf(msg, sizeof msg, "%d (wanted %d)", got, want);
                    dump_and_fail("exit status %s", msg);
                }
            }
        } else {
            dump_and_fail("unknown script command '%s'", line);
        }
    }
    if (!exited) {
        kill(-child, SIGKILL);
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
    }
    printf("ptyrun: ok\n");
    return 0;
}
