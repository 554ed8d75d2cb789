/*
 * gate.c - console input that reaches the guest at points that depend on
 * the guest only (qshell's exact console under icount).
 *
 * Under icount the guest's clock follows its instructions, but a byte
 * typed on the console reaches the UART whenever QEMU's main loop reads the
 * socket, and while the guest waits for it its clock runs on (idle time is
 * skipped at host speed): where a command starts, and so where the timer
 * ticks fall in it, depends on the host.  This plugin feeds the console
 * itself, from the vCPU thread, at the guest's HLT instructions (the idle
 * loop): at each HLT with input queued it writes one byte into the
 * console socket and waits until QEMU has put it in the UART, so every
 * byte arrives at an instruction count fixed by the guest.  While the
 * guest waits for input and the host has none (after a command's end
 * marker, or from a restore), the HLT waits for the host: the guest's
 * clock stands still instead of running on.
 *
 * Arguments:
 *   in=PATH     a FIFO qshell writes frames to: a type byte, a 32-bit
 *               little-endian length, the payload:
 *                 'D' bytes to type, 'A' a pattern (a command's end
 *                 marker): once the guest prints it, hold at the next
 *                 HLT; 'R' release: hold no more until the next 'A'
 *   fd=N        qshell's end of the console socket (QEMU inherits a copy)
 *   tx=PATH     the console chardev's logfile: what the guest printed,
 *               written by the vCPU thread as it prints, so a marker is
 *               there before the next HLT
 *   mon=PATH    a QMP monitor's socket: a command's answer says QEMU's
 *               main loop is done with the byte it read (see main_loop_sync)
 *   hold=on     hold from the first HLT (a restore: the guest waits at its
 *               prompt)
 * When qshell goes away (the FIFO's writer closes) or QEMU shuts down (a
 * SHUTDOWN event on the monitor), the gate opens for good.  One vCPU only
 * (icount runs one vCPU thread).  With QSHELL_GATE_DEBUG in QEMU's
 * environment each frame and hold goes to QEMU's stderr (its log).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "plugin_util.h"
#include "plugin_roi.h"

QSHELL_PLUGIN_VERSION_DEFINE

#define PAT_MAX 256
#define SETTLE_US 2000

static struct {
    int in_fd;          /* the FIFO from qshell; -1 once closed */
    int con_fd;         /* qshell's end of the console socket */
    int tx_fd;          /* the console log; -1 until it exists */
    const char *mon;    /* a QMP monitor's socket, for the sync */
    int mon_fd;         /* -1 until connected */
    char mbuf[4096];
    size_t mlen;
    const char *tx;
    bool hold;          /* wait at HLT for input */
    char pat[PAT_MAX];  /* armed end marker ("" none) */
    size_t pat_len;
    bool pat_seen;      /* the pattern is printed; its line not yet ended */
    char tail[PAT_MAX]; /* the last bytes of the log scanned */
    size_t tail_len;
    off_t tx_off;
    unsigned char *q;   /* bytes to type */
    size_t q_len, q_cap, q_pos;
    unsigned char frame[5 + 65536];
    size_t fr_len;      /* bytes of the frame being read */
    uint64_t typed, stuck;
} g = {.in_fd = -1, .con_fd = -1, .tx_fd = -1, .mon_fd = -1};

static bool debug;
static uint64_t n_hlt;

static void take_frame(unsigned char type, const unsigned char *p, size_t n)
{
    if (debug) {
        fprintf(stderr, "gate: frame %c %zu (hold %d) at hlt %" PRIu64 "\n", type, n, g.hold, n_hlt);
    }
    if (type == 'D') {
        if (g.q_pos == g.q_len) {
            g.q_pos = g.q_len = 0;
        }
        if (g.q_len + n > g.q_cap) {
            size_t cap = (g.q_len + n) * 2;
            unsigned char *nq = realloc(g.q, cap);
            if (nq == NULL) {
                abort();
            }
            g.q = nq;
            g.q_cap = cap;
        }
        memcpy(g.q + g.q_len, p, n);
        g.q_len += n;
    } else if (type == 'A') {
        g.pat_len = n < PAT_MAX ? n : PAT_MAX - 1;
        memcpy(g.pat, p, g.pat_len);
        g.tail_len = 0;
        g.pat_seen = false;
    } else if (type == 'R') {
        g.hold = false;
        g.pat_len = 0;
    }
}

/* Read what the FIFO has (wait up to ms for something); false at EOF. */
static bool read_frames(int ms)
{
    if (g.in_fd < 0) {
        return false;
    }
    struct pollfd p = {.fd = g.in_fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0) {
        return true;
    }
    for (;;) {
        ssize_t n = read(g.in_fd, g.frame + g.fr_len, sizeof(g.frame) - g.fr_len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return true;
        }
        if (n <= 0) {
            close(g.in_fd);
            g.in_fd = -1;
            g.hold = false;
            return false;
        }
        g.fr_len += (size_t)n;
        for (;;) {
            if (g.fr_len < 5) {
                break;
            }
            size_t len = (size_t)g.frame[1] | (size_t)g.frame[2] << 8 | (size_t)g.frame[3] << 16 |
                         (size_t)g.frame[4] << 24;
            if (len > sizeof(g.frame) - 5) {
                /* not qshell's: give up the gate */
                close(g.in_fd);
                g.in_fd = -1;
                g.hold = false;
                return false;
            }
            if (g.fr_len < 5 + len) {
                break;
            }
            take_frame(g.frame[0], g.frame + 5, len);
            memmove(g.frame, g.frame + 5 + len, g.fr_len - 5 - len);
            g.fr_len -= 5 + len;
        }
    }
}

/* Has the guest printed the armed pattern since it was armed? */
static bool pattern_printed(void)
{
    if (g.pat_len == 0) {
        return false;
    }
    if (g.tx_fd < 0) {
        g.tx_fd = open(g.tx, O_RDONLY | O_CLOEXEC);
        if (g.tx_fd < 0) {
            if (debug) {
                fprintf(stderr, "gate: tx=%s: %s\n", g.tx, strerror(errno));
            }
            return false;
        }
    }
    char buf[PAT_MAX + 4096];
    for (;;) {
        memcpy(buf, g.tail, g.tail_len);
        ssize_t n = pread(g.tx_fd, buf + g.tail_len, sizeof(buf) - g.tail_len, g.tx_off);
        if (n <= 0) {
            return false;
        }
        g.tx_off += n;
        size_t have = g.tail_len + (size_t)n;
        if (!g.pat_seen) {
            const char *m = memmem(buf, have, g.pat, g.pat_len);
            if (m != NULL) {
                /* the marker's line must end too: the rest of it (the
                 * status) may still be in the UART's way out */
                g.pat_seen = true;
                size_t after = (size_t)(m - buf) + g.pat_len;
                memmove(buf, buf + after, have - after);
                have -= after;
            }
        }
        if (g.pat_seen && memchr(buf, '\n', have) != NULL) {
            g.tail_len = 0;
            g.pat_seen = false;
            return true;
        }
        size_t keep = g.pat_seen ? 0 : (g.pat_len - 1 < have ? g.pat_len - 1 : have);
        memcpy(g.tail, buf + have - keep, keep);
        g.tail_len = keep;
    }
}

/* One line from the monitor (without its end), or NULL. */
static const char *mon_line(void)
{
    static char line[4096];
    for (;;) {
        char *nl = memchr(g.mbuf, '\n', g.mlen);
        if (nl != NULL) {
            size_t n = (size_t)(nl - g.mbuf);
            size_t c = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
            memcpy(line, g.mbuf, c);
            line[c] = 0;
            memmove(g.mbuf, nl + 1, g.mlen - n - 1);
            g.mlen -= n + 1;
            return line;
        }
        if (g.mlen == sizeof(g.mbuf)) {
            g.mlen = 0; /* a line too long to matter: drop it */
        }
        ssize_t r = read(g.mon_fd, g.mbuf + g.mlen, sizeof(g.mbuf) - g.mlen);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return NULL;
        }
        g.mlen += (size_t)r;
    }
}

/*
 * QEMU is ending (quit, a signal, the guest's poweroff): it will wait for
 * the vCPU, so the gate opens for good.
 */
static bool shutting_down(const char *line)
{
    if (strstr(line, "\"event\"") == NULL || strstr(line, "\"SHUTDOWN\"") == NULL) {
        return false;
    }
    if (g.in_fd >= 0) {
        close(g.in_fd);
        g.in_fd = -1;
    }
    g.hold = false;
    g.q_pos = g.q_len;
    return true;
}

/* A command on the monitor, and its reply (events before it skipped). */
static bool mon_call(const char *cmd)
{
    size_t n = strlen(cmd);
    if (write(g.mon_fd, cmd, n) != (ssize_t)n) {
        return false;
    }
    const char *l;
    while ((l = mon_line()) != NULL) {
        if (shutting_down(l)) {
            return false;
        }
        if (strstr(l, "\"return\"") != NULL || strstr(l, "\"error\"") != NULL) {
            return true;
        }
    }
    return false;
}

/*
 * QEMU's main loop read the byte (the socket is empty), but the UART may
 * not have it yet: it gets it in the same handler, under the big lock.  A
 * QMP command is run by the main loop under that lock too, so its answer
 * comes after the handler is done, and the byte (and the interrupt it
 * raises) is in the UART before the guest runs on.
 */
static void mon_close(void);
static bool mon_connect(void);

static void main_loop_sync(void)
{
    if (!mon_connect()) {
        return;
    }
    if (!mon_call("{\"execute\":\"query-status\"}\n")) {
        mon_close();
    }
}

static void mon_close(void)
{
    if (debug) {
        fprintf(stderr, "gate: monitor closed (%s)\n", strerror(errno));
    }
    if (g.mon_fd >= 0) {
        close(g.mon_fd);
    }
    g.mon_fd = -1;
    g.mon = NULL;
}

/* Connected to the monitor (at the first need: QEMU is up by then)? */
static bool mon_connect(void)
{
    if (g.mon == NULL) {
        return false;
    }
    if (g.mon_fd < 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", g.mon);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
            if (fd >= 0) {
                close(fd);
            }
            g.mon = NULL;
            return false;
        }
        g.mon_fd = fd;
        if (debug) {
            fprintf(stderr, "gate: monitor connected\n");
        }
        if (mon_line() == NULL || !mon_call("{\"execute\":\"qmp_capabilities\"}\n")) {
            mon_close();
            return false;
        }
    }
    return true;
}

/* Type one byte and wait until QEMU has taken it into the UART. */
static void type_one(void)
{
    unsigned char c = g.q[g.q_pos];
    ssize_t n;
    do {
        n = write(g.con_fd, &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
        g.q_pos = g.q_len; /* the console is gone */
        return;
    }
    g.q_pos++;
    g.typed++;
    struct timespec ts = {0, 20000};
    for (int i = 0; i < 100000; i++) { /* 2 s at most: the UART is full */
        int out = 0;
        if (ioctl(g.con_fd, SIOCOUTQ, &out) < 0 || out == 0) {
            main_loop_sync();
            /* and a moment more: measured, without it about one run in
             * four on QEMU 10.0 typed a command a few instructions off */
            usleep(SETTLE_US);
            return;
        }
        nanosleep(&ts, NULL);
    }
    g.stuck++;
}

/* Wait for qshell's next frame, or for QEMU to end. */
static void hold_wait(void)
{
    if (!mon_connect()) {
        read_frames(-1);
        return;
    }
    struct pollfd p[2] = {{.fd = g.in_fd, .events = POLLIN}, {.fd = g.mon_fd, .events = POLLIN}};
    while (poll(p, 2, -1) < 0 && errno == EINTR) {
    }
    if (p[1].revents) {
        ssize_t r = read(g.mon_fd, g.mbuf + g.mlen, sizeof(g.mbuf) - g.mlen);
        if (r <= 0) {
            mon_close();
            return;
        }
        g.mlen += (size_t)r;
        while (memchr(g.mbuf, '\n', g.mlen) != NULL) {
            if (shutting_down(mon_line())) {
                return;
            }
        }
    }
    if (p[0].revents) {
        read_frames(0);
    }
}

static void on_hlt(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    n_hlt++;
    read_frames(0);
    for (;;) {
        if (pattern_printed()) {
            g.hold = true;
            g.pat_len = 0;
            if (debug) {
                fprintf(stderr, "gate: marker seen at hlt %" PRIu64 "\n", n_hlt);
            }
        }
        if (g.q_pos < g.q_len) {
            type_one();
            g.hold = false; /* the guest has work: hold again after its marker */
            return;
        }
        if (!g.hold || g.in_fd < 0) {
            return;
        }
        /* the guest waits for input, and so does its clock */
        if (debug) {
            fprintf(stderr, "gate: holding\n");
        }
        hold_wait();
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint8_t b;
        if (qemu_plugin_insn_size(insn) == 1 && roi_insn_bytes(insn, &b, 1) && b == 0xf4) { /* hlt */
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_hlt, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    char line[128];
    snprintf(line, sizeof(line), "gate: %" PRIu64 " bytes typed, %" PRIu64 " not taken at once\n", g.typed,
             g.stuck);
    qemu_plugin_outs(line);
    if (getenv("QSHELL_GATE_DEBUG")) {
        fputs(line, stderr);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    const char *in = NULL;
    uint64_t fd = 0;
    bool have_fd = false;

    for (int i = 0; i < argc; i++) {
        const char *val;
        if (plugin_arg_match(argv[i], "in", &val)) {
            in = val;
        } else if (plugin_arg_match(argv[i], "tx", &val)) {
            g.tx = val;
        } else if (plugin_arg_match(argv[i], "mon", &val)) {
            g.mon = val;
        } else if (plugin_arg_match(argv[i], "fd", &val)) {
            if (plugin_arg_u64("gate", "fd", val, 0, &fd) != 0) {
                return -1;
            }
            have_fd = true;
        } else if (plugin_arg_match(argv[i], "hold", &val)) {
            if (!qemu_plugin_bool_parse("hold", val, &g.hold)) {
                fprintf(stderr, "gate: bad value for hold: '%s' (want on or off)\n", val);
                return -1;
            }
        } else {
            return plugin_arg_unknown("gate", argv[i], "in, fd, tx, mon, hold");
        }
    }
    if (in == NULL || !have_fd || g.tx == NULL) {
        fprintf(stderr, "gate: in=, fd= and tx= are needed\n");
        return -1;
    }
    if (info->system_emulation && info->system.max_vcpus > 1) {
        fprintf(stderr, "gate: one vCPU only\n");
        return -1;
    }
    if (roi_setup("gate", info, NULL) != 0) {
        return -1;
    }
    g.con_fd = (int)fd;
    debug = getenv("QSHELL_GATE_DEBUG") != NULL;
    if (debug) {
        fprintf(stderr, "gate: hold=%d\n", g.hold);
    }
    g.in_fd = open(in, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (g.in_fd < 0) {
        fprintf(stderr, "gate: in=%s: %s\n", in, strerror(errno));
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
