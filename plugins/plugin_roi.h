/*
 * plugin_roi.h - regions of interest for qshell's plugins: finding the
 * markers of roi/qshell-roi.h when QEMU translates code, which ROIs are
 * open, and the event stream qshell reads (vm:wait_roi).
 *
 * Header-only like plugin_util.h (each plugin stays one .so).  A plugin
 * calls roi_setup() at install, roi_marker() on each instruction it is
 * translating (it returns the marker's op and id, or 0), and from the
 * marker's execution callback roi_enter()/roi_leave() and roi_event().
 *
 * Marker: `nopl DISP(%rax,%rax,1)`, bytes 0f 1f 84 00 + DISP (little
 * endian), DISP = 0x51500000 | op << 16 | id; op 1 begin, 2 end.
 *
 * The instruction bytes come from qemu_plugin_insn_data, whose signature
 * changed in plugin API 3 (QEMU 9.1): before, it returns a pointer to the
 * bytes; since, it copies them into a buffer.  The symbol is the same, so
 * it is declared here without a prototype and called through the type of
 * the API the loading QEMU reports (info->version.cur).
 *
 * Events: with events=PATH (a FIFO qshell made, or a file) each marker
 * writes one JSON line with one write() (atomic: shorter than PIPE_BUF):
 *   {"roi":3,"event":"begin","vcpu":0}
 *   {"roi":3,"event":"end","vcpu":0,"insns":N,"total":T}
 * The file is opened at the first event, non-blocking: qshell opens its
 * read end once QEMU answers on QMP, long before a workload's markers run.
 * An event finding no reader or a full pipe is dropped (and counted),
 * never the guest stalled.
 */
#ifndef QSHELL_PLUGIN_ROI_H
#define QSHELL_PLUGIN_ROI_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "qshell-plugin.h"

#define ROI_MAGIC 0x51500000u
#define ROI_OP_BEGIN 1u
#define ROI_OP_END 2u
#define ROI_IDS 65536u

/* Both forms of qemu_plugin_insn_data; see the comment above. */
void qemu_plugin_insn_data(void);
typedef const void *(*roi_insn_data_ptr_t)(const struct qemu_plugin_insn *insn);
typedef size_t (*roi_insn_data_copy_t)(const struct qemu_plugin_insn *insn,
                                       void *dest, size_t len);

struct roi_state {
    bool copy_api;             /* qemu_plugin_insn_data copies (API 3+) */
    const char *events;        /* events= path, or NULL */
    int events_fd;             /* -1: not open (yet) */
    uint64_t dropped;          /* events lost to a full pipe */
    unsigned int n_open;       /* ROIs open now */
    uint8_t open[ROI_IDS / 8]; /* bit per id */
};

static struct roi_state roi = {.events_fd = -1};

/* At install: which insn_data form, and the event file if asked. 0 or -1. */
static inline int roi_setup(const char *plugin, const qemu_info_t *info,
                            const char *events)
{
    roi.copy_api = info->version.cur >= 3;
    if (events != NULL && access(events, W_OK) != 0) {
        fprintf(stderr, "%s: events=%s: %s\n", plugin, events, strerror(errno));
        return -1;
    }
    roi.events = events;
    return 0;
}

/*
 * Copy the n bytes of insn (n its size) into b through the loading QEMU's
 * form of qemu_plugin_insn_data; false when they cannot be had.
 */
static inline bool roi_insn_bytes(const struct qemu_plugin_insn *insn, uint8_t *b, size_t n)
{
    if (roi.copy_api) {
        roi_insn_data_copy_t f = (roi_insn_data_copy_t)(void (*)(void))qemu_plugin_insn_data;

        return f(insn, b, n) == n;
    }
    roi_insn_data_ptr_t f = (roi_insn_data_ptr_t)(void (*)(void))qemu_plugin_insn_data;
    const void *p = f(insn);

    if (p == NULL) {
        return false;
    }
    memcpy(b, p, n);
    return true;
}

/*
 * If insn is a ROI marker, set *op and *id and return true.  Only 8-byte
 * instructions are looked at, so the cost falls on few instructions, and
 * only at translation time.
 */
static inline bool roi_marker(const struct qemu_plugin_insn *insn,
                              unsigned int *op, unsigned int *id)
{
    uint8_t b[8];
    uint32_t disp;

    if (qemu_plugin_insn_size(insn) != sizeof(b) || !roi_insn_bytes(insn, b, sizeof(b))) {
        return false;
    }
    if (b[0] != 0x0f || b[1] != 0x1f || b[2] != 0x84 || b[3] != 0x00) {
        return false;
    }
    disp = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 |
           (uint32_t)b[7] << 24;
    if ((disp & 0xfff00000u) != ROI_MAGIC) {
        return false;
    }
    *op = (disp >> 16) & 0xfu;
    *id = disp & 0xffffu;
    return *op == ROI_OP_BEGIN || *op == ROI_OP_END;
}

static inline bool roi_is_open(unsigned int id)
{
    return (roi.open[id / 8] >> (id % 8)) & 1;
}

/* Open id; false if it was open already (a begin without its end). */
static inline bool roi_enter(unsigned int id)
{
    if (roi_is_open(id)) {
        return false;
    }
    roi.open[id / 8] |= (uint8_t)(1u << (id % 8));
    __atomic_add_fetch(&roi.n_open, 1, __ATOMIC_RELAXED);
    return true;
}

/* Close id; false if it was not open (an end without its begin). */
static inline bool roi_leave(unsigned int id)
{
    if (!roi_is_open(id)) {
        return false;
    }
    roi.open[id / 8] &= (uint8_t)~(1u << (id % 8));
    __atomic_sub_fetch(&roi.n_open, 1, __ATOMIC_RELAXED);
    return true;
}

/* Is any ROI open?  (Read on the hot path without a lock.) */
static inline bool roi_any_open(void)
{
    return __atomic_load_n(&roi.n_open, __ATOMIC_RELAXED) != 0;
}

/* One event line, printf-style, without the braces. */
__attribute__((format(printf, 1, 2)))
static inline void roi_event(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int n;

    if (roi.events == NULL) {
        return;
    }
    if (roi.events_fd < 0) {
        roi.events_fd = open(roi.events, O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC);
        if (roi.events_fd < 0) {
            roi.dropped++;
            return;
        }
    }
    line[0] = '{';
    va_start(ap, fmt);
    n = vsnprintf(line + 1, sizeof(line) - 3, fmt, ap);
    va_end(ap);
    if (n < 0 || n > (int)sizeof(line) - 4) {
        return;
    }
    line[n + 1] = '}';
    line[n + 2] = '\n';
    if (write(roi.events_fd, line, (size_t)n + 3) != n + 3) {
        roi.dropped++;
    }
}

#endif
