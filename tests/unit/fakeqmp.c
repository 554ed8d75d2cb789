/*
 * fakeqmp.c - a scripted QMP peer that stands in for qemu-system-x86_64.
 *
 * Owns: the failures a real QEMU will not produce on demand (garbage,
 * half messages, stalls, oversized replies, deaths mid-command).  Does not
 * own: any real emulation, or JSON parsing (a command's name and id are
 * found by a plain scan), and it links nothing beyond libc.
 *
 * qshell starts it like QEMU (binary="build/fakeqmp" or QSHELL_QEMU); the
 * monitor is the fd of "-chardev socket,id=qmp,fd=N" (3 by default) and
 * every other QEMU option is ignored.  The script is the file named by
 * "-fakeqmp-script PATH" (qemu.launch{extra={"-fakeqmp-script", path}},
 * since qshell passes no environment of its own) or by $FAKEQMP_SCRIPT.
 * Without one it is a minimal healthy QEMU: "serve" after a greeting.
 *
 * Script: one command per line; blank lines and lines starting '#' are
 * skipped.  TEXT takes the escapes \r \n \t \\ and $ID (the last id).
 *   greeting        send QEMU 7.2's greeting
 *   expect NAME     read one command, which must be NAME ('*': any), else
 *                   exit 3 with a message on stderr; remember its id as $ID
 *   reply TEXT      send TEXT plus "\r\n"
 *   send TEXT       send TEXT as it is (no newline added)
 *   event NAME      send {"timestamp": {...}, "event": "NAME"}
 *   garbage         send a line that is not JSON
 *   big BYTES       send {"return": "xxx...", "id": $ID} of BYTES bytes, + "\r\n"
 *   sleep MS        sleep MS milliseconds
 *   stderr TEXT     print TEXT and a newline to stderr (qshell's QEMU log)
 *   close           close the monitor socket; the process goes on
 *   hang            answer nothing more; read and drop input until EOF, exit 0
 *   kill SIG        kill itself with SIG (a number, or TERM, KILL, SEGV, ...)
 *   exit CODE       exit with CODE
 *   serve           behave like the healthy default until "quit" or EOF
 * At the end of the script: serve, or exit 0 if the socket was closed.
 *
 * Serving: qmp_capabilities and unknown commands get {"return": {}};
 * query-status says running; quit sends SHUTDOWN, its return, exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int mon = 3;        /* the monitor socket, -1 once closed */
static long long last_id = -1;
static char *inbuf;        /* bytes read but not yet consumed as lines */
static size_t inlen, incap;

static void put(const char *s, size_t n)
{
    while (n > 0 && mon >= 0) {
        ssize_t w = write(mon, s, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            fprintf(stderr, "fakeqmp: write: %s\n", strerror(errno));
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void puts_mon(const char *s)
{
    put(s, strlen(s));
}

/* TEXT with escapes decoded and $ID replaced; caller frees. */
static char *expand(const char *s, size_t *len)
{
    char *out = malloc(strlen(s) * 8 + 32), *o = out; /* "$ID" -> 20 digits */
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *o++ = *s == 'r' ? '\r' : *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else if (strncmp(s, "$ID", 3) == 0) {
            o += last_id >= 0 ? sprintf(o, "%lld", last_id) : sprintf(o, "null");
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
    *len = (size_t)(o - out);
    return out;
}

/* Next command line from the monitor (without '\n'), or NULL at EOF. */
static char *read_command(void)
{
    static char *line;
    for (;;) {
        char *nl = inbuf ? memchr(inbuf, '\n', inlen) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - inbuf);
            free(line);
            line = malloc(n + 1);
            memcpy(line, inbuf, n);
            line[n] = '\0';
            memmove(inbuf, nl + 1, inlen - n - 1);
            inlen -= n + 1;
            return line;
        }
        if (mon < 0) {
            return NULL;
        }
        if (incap - inlen < 4096) {
            incap = incap ? incap * 2 : 65536;
            inbuf = realloc(inbuf, incap);
        }
        ssize_t r = read(mon, inbuf + inlen, incap - inlen);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return NULL;
        }
        inlen += (size_t)r;
    }
}

/* The string value of "key" in a command line, copied into out. */
static void scan_string(const char *line, const char *key, char *out, size_t cap)
{
    const char *p = strstr(line, key);
    out[0] = '\0';
    if (!p || !(p = strchr(p + strlen(key), '"'))) {
        return;
    }
    size_t n = strcspn(p + 1, "\"");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), p + 1);
}

/* Read a command; its id becomes $ID.  Returns 0 at EOF. */
static int next_command(char *name, size_t cap)
{
    const char *line = read_command();
    if (!line) {
        return 0;
    }
    scan_string(line, "\"execute\"", name, cap);
    const char *p = strstr(line, "\"id\"");
    last_id = -1;
    if (p) {
        p += 4;
        p += strspn(p, " \t:");
        last_id = strtoll(p, NULL, 10);
    }
    return 1;
}

static void send_event(const char *name, const char *data)
{
    struct timespec ts;
    char buf[512];
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(buf, sizeof buf,
             "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %ld}, \"event\": \"%s\"%s%s}"
             "\r\n",
             (long long)ts.tv_sec, ts.tv_nsec / 1000, name, data ? ", \"data\": " : "",
             data ? data : "");
    puts_mon(buf);
}

static void reply(const char *ret)
{
    char buf[512];
    if (last_id >= 0) {
        snprintf(buf, sizeof buf, "{\"return\": %s, \"id\": %lld}\r\n", ret, last_id);
    } else {
        snprintf(buf, sizeof buf, "{\"return\": %s}\r\n", ret);
    }
    puts_mon(buf);
}

static void serve(void)
{
    char name[128];
    while (next_command(name, sizeof name)) {
        if (strcmp(name, "query-status") == 0) {
            reply("{\"status\": \"running\", \"singlestep\": false, \"running\": true}");
        } else if (strcmp(name, "quit") == 0) {
            send_event("SHUTDOWN", "{\"guest\": false, \"reason\": \"host-qmp-quit\"}");
            reply("{}");
            exit(0);
        } else {
            reply("{}");
        }
    }
    exit(0);
}

static void big(size_t bytes)
{
    char head[64], tail[64], chunk[65536];
    snprintf(head, sizeof head, "{\"return\": \"");
    snprintf(tail, sizeof tail, "\", \"id\": %lld}", last_id);
    size_t fixed = strlen(head) + strlen(tail);
    size_t fill = bytes > fixed ? bytes - fixed : 0;
    memset(chunk, 'x', sizeof chunk);
    puts_mon(head);
    for (size_t n; fill > 0; fill -= n) {
        n = fill < sizeof chunk ? fill : sizeof chunk;
        put(chunk, n);
    }
    puts_mon(tail);
    puts_mon("\r\n");
}

static int signal_number(const char *s)
{
    static const struct {
        const char *name;
        int sig;
    } sigs[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"ABRT", SIGABRT},
                {"KILL", SIGKILL}, {"SEGV", SIGSEGV}, {"TERM", SIGTERM}, {"BUS", SIGBUS}};
    if (strncmp(s, "SIG", 3) == 0) {
        s += 3;
    }
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        if (strcmp(s, sigs[i].name) == 0) {
            return sigs[i].sig;
        }
    }
    return atoi(s);
}

static const char GREETING[] =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"fakeqmp\"}, \"capabilities\": [\"oob\"]}}\r\n";

/* Run one script line; returns 0 on a bad line. */
static int run_line(char *line)
{
    char *arg = line + strcspn(line, " ");
    if (*arg) {
        *arg++ = '\0';
    }
    size_t len;
    char name[128];
    if (strcmp(line, "greeting") == 0) {
        puts_mon(GREETING);
    } else if (strcmp(line, "expect") == 0) {
        if (!next_command(name, sizeof name)) {
            fprintf(stderr, "fakeqmp: EOF while expecting '%s'\n", arg);
            exit(3);
        }
        if (strcmp(arg, "*") != 0 && strcmp(arg, name) != 0) {
            fprintf(stderr, "fakeqmp: expected '%s', got '%s'\n", arg, name);
            exit(3);
        }
    } else if (strcmp(line, "reply") == 0 || strcmp(line, "send") == 0 ||
               strcmp(line, "stderr") == 0) {
        char *text = expand(arg, &len);
        if (line[0] == 's' && line[1] == 't') {
            fprintf(stderr, "%s\n", text);
        } else {
            put(text, len);
            if (line[0] == 'r') {
                puts_mon("\r\n");
            }
        }
        free(text);
    } else if (strcmp(line, "event") == 0) {
        send_event(arg, NULL);
    } else if (strcmp(line, "garbage") == 0) {
        puts_mon("this is not JSON {{{\r\n");
    } else if (strcmp(line, "big") == 0) {
        big((size_t)strtoull(arg, NULL, 10));
    } else if (strcmp(line, "sleep") == 0) {
        struct timespec ts = {atol(arg) / 1000, (atol(arg) % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
    } else if (strcmp(line, "close") == 0) {
        if (mon >= 0) {
            close(mon);
        }
        mon = -1;
    } else if (strcmp(line, "hang") == 0) {
        while (read_command()) {
        }
        exit(0);
    } else if (strcmp(line, "kill") == 0) {
        kill(getpid(), signal_number(arg));
        exit(1);
    } else if (strcmp(line, "exit") == 0) {
        exit(atoi(arg));
    } else if (strcmp(line, "serve") == 0) {
        serve();
    } else {
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    const char *script = getenv("FAKEQMP_SCRIPT");
    int found = 0;
    for (int i = 1; i + 1 < argc; i++) {
        const char *fd = strstr(argv[i + 1], "fd=");
        /* The chardev with id=qmp, else the first one with an fd. */
        if (strcmp(argv[i], "-chardev") == 0 && fd && found < 2) {
            int is_qmp = strstr(argv[i + 1], "id=qmp,") != NULL;
            if (is_qmp || !found) {
                mon = atoi(fd + 3);
                found = is_qmp ? 2 : 1;
            }
        } else if (strcmp(argv[i], "-fakeqmp-script") == 0) {
            script = argv[i + 1];
        }
    }
    signal(SIGPIPE, SIG_IGN);
    /* The parent's end is non-blocking; make sure this one is not. */
    int fl = fcntl(mon, F_GETFL);
    if (fl < 0) {
        fprintf(stderr, "fakeqmp: no monitor socket on fd %d\n", mon);
        return 2;
    }
    fcntl(mon, F_SETFL, fl & ~O_NONBLOCK);
    if (!script || !*script) {
        puts_mon(GREETING);
        serve();
    }
    FILE *f = fopen(script, "r");
    if (!f) {
        fprintf(stderr, "fakeqmp: %s: %s\n", script, strerror(errno));
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (int lineno = 1; (n = getline(&line, &cap, f)) >= 0; lineno++) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
            line[--n] = '\0';
        }
        if (n == 0 || line[0] == '#') {
            continue;
        }
        if (!run_line(line)) {
            fprintf(stderr, "fakeqmp: %s:%d: bad line\n", script, lineno);
            return 2;
        }
    }
    free(line);
    fclose(f);
    if (mon < 0) {
        return 0;
    }
    serve();
}
