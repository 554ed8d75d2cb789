/*
 * hotblocks.c - libhotblocks.so, a TCG plugin that finds the most executed
 * translation blocks.
 *
 *   -plugin build/plugins/libhotblocks.so,out=FILE,top=N
 *
 * out=FILE   at exit, write {"plugin":"hotblocks","blocks":[{"pc":"0x...",
 *            "insns":I,"count":C},...],"total_blocks":K} to FILE (via
 *            FILE.tmp and rename): the top N blocks by execution count,
 *            hottest first (ties by pc), and K distinct block addresses seen.
 * top=N      how many blocks to list (default 20).
 * roi=on     count only while a region of interest is open (the markers of
 *            roi/qshell-roi.h; any id): a block counts when it starts with
 *            an ROI open. Each block then gets a callback (an atomic add
 *            behind a check), slower than the inline adds below.
 * events=PATH   ROI marker events, as the insn plugin writes them.
 * A one-line summary goes to qemu_plugin_outs() (shown with `-d plugin`).
 *
 * Blocks are keyed by their guest virtual start address alone. QEMU may
 * translate the same pc several times (after a TB flush, a page change, or
 * cut short); those executions all add to one entry, whose "insns" is the
 * largest instruction count among its translations. In system emulation
 * user-space blocks of different processes at one vaddr share an entry too;
 * kernel addresses are unambiguous.
 *
 * The table is a chained hash, touched only at translation time and at exit
 * under one mutex (translation runs on any vCPU thread under MTTCG). The hot
 * path never touches it: each translation is told to add 1 to its entry's
 * count on every execution. With one vCPU that is an inline add emitted into
 * the block (the cheapest form), which is not atomic; when several vCPUs may
 * run at once (-smp or maxcpus > 1, or linux-user) it is a callback doing an
 * atomic add instead, so no execution is lost.
 *
 * On QEMU 9.0+ (plugin API 2) inline adds to a fixed address are gone: each
 * entry gets a scoreboard (one counter per vCPU) that an inline per-vCPU add
 * counts into, exact with any number of vCPUs; the count is their sum.
 *
 * Entries are never freed or moved (the inline adds hold their address);
 * the process exit reclaims them. This file exports only
 * qemu_plugin_version and qemu_plugin_install.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_roi.h"
#include "plugin_util.h"
#include "qshell-plugin.h"

QSHELL_PLUGIN_VERSION_DEFINE

#define HB_TOP_DEFAULT 20
#define HB_INITIAL_BUCKETS 4096 /* a power of two */

struct hb_block {
    uint64_t count;          /* executions: inline add or atomic add (API 1) */
    struct qemu_plugin_scoreboard *sb; /* API 2: executions per vCPU */
    uint64_t pc;             /* guest virtual address of the first insn */
    size_t insns;            /* largest insn count of its translations */
    struct hb_block *next;   /* hash chain */
};

/* A block as seen at exit, with its count read once. */
struct hb_snap {
    uint64_t count;
    const struct hb_block *block;
};

struct hb_state {
    const char *out;         /* result path (points into argv), or NULL */
    uint64_t top;
    bool atomic;             /* count with atomic callbacks, not inline */
    bool roi_only;           /* roi=on: count only inside ROIs */
    pthread_mutex_t lock;    /* guards the table below */
    struct hb_block **buckets;
    size_t n_buckets;        /* a power of two */
    size_t n_blocks;
};

static struct hb_state st = {
    .top = HB_TOP_DEFAULT,
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

/* Fibonacci hashing: block addresses share their low bits' alignment. */
static size_t bucket_of(uint64_t pc, size_t n_buckets)
{
    return (size_t)((pc * UINT64_C(0x9e3779b97f4a7c15)) >> 32) &
           (n_buckets - 1);
}

static struct hb_block **new_buckets(size_t n)
{
    struct hb_block **b = calloc(n, sizeof(*b));

    if (b == NULL) {
        abort();
    }
    return b;
}

/* Double the bucket array once the chains average more than one entry. */
static void table_grow(void)
{
    size_t n = st.n_buckets * 2;
    struct hb_block **b = new_buckets(n);
    size_t i;

    for (i = 0; i < st.n_buckets; i++) {
        struct hb_block *e = st.buckets[i];

        while (e != NULL) {
            struct hb_block *next = e->next;
            size_t h = bucket_of(e->pc, n);

            e->next = b[h];
            b[h] = e;
            e = next;
        }
    }
    free(st.buckets);
    st.buckets = b;
    st.n_buckets = n;
}

/* The entry for pc, created if new. Caller holds st.lock. */
static struct hb_block *table_get(uint64_t pc, size_t insns)
{
    size_t h = bucket_of(pc, st.n_buckets);
    struct hb_block *e;

    for (e = st.buckets[h]; e != NULL; e = e->next) {
        if (e->pc == pc) {
            if (insns > e->insns) {
                e->insns = insns;
            }
            return e;
        }
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        abort();
    }
    e->pc = pc;
    e->insns = insns;
    e->next = st.buckets[h];
    st.buckets[h] = e;
    if (++st.n_blocks > st.n_buckets) {
        table_grow();
    }
    return e;
}

static void tb_exec_atomic(unsigned int vcpu, void *udata)
{
    struct hb_block *b = udata;

    (void)vcpu;
    __atomic_fetch_add(&b->count, 1, __ATOMIC_RELAXED);
}

/* roi=on: count the block only while an ROI is open. */
static void tb_exec_roi(unsigned int vcpu, void *udata)
{
    struct hb_block *b = udata;

    (void)vcpu;
    if (roi_any_open()) {
        __atomic_fetch_add(&b->count, 1, __ATOMIC_RELAXED);
    }
}

/* A marker executed: udata is op << 16 | id. */
static void roi_exec(unsigned int vcpu, void *udata)
{
    uintptr_t u = (uintptr_t)udata;
    unsigned int id = u & 0xffffu;
    bool begin = ((u >> 16) & 0xfu) == ROI_OP_BEGIN;

    pthread_mutex_lock(&st.lock);
    if (begin ? roi_enter(id) : roi_leave(id)) {
        roi_event("\"roi\":%u,\"event\":\"%s\",\"vcpu\":%u", id,
                  begin ? "begin" : "end", vcpu);
    }
    pthread_mutex_unlock(&st.lock);
}

static void tb_find_markers(struct qemu_plugin_tb *tb)
{
    size_t i, n = qemu_plugin_tb_n_insns(tb);

    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        unsigned int op, id;

        if (roi_marker(insn, &op, &id)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, roi_exec, QEMU_PLUGIN_CB_NO_REGS,
                                                   (void *)((uintptr_t)op << 16 | id));
        }
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    struct hb_block *b;

    (void)id;
    if (st.roi_only || roi.events != NULL) {
        tb_find_markers(tb);
    }
    pthread_mutex_lock(&st.lock);
    b = table_get(qemu_plugin_tb_vaddr(tb), qemu_plugin_tb_n_insns(tb));
    if (qshell_plugin_api2() && !st.roi_only && b->sb == NULL) {
        b->sb = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    }
    pthread_mutex_unlock(&st.lock);

    if (st.roi_only) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec_roi,
                                             QEMU_PLUGIN_CB_NO_REGS, b);
    } else if (b->sb != NULL) {
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
            tb, QEMU_PLUGIN_INLINE_ADD_U64, (qemu_plugin_u64){b->sb, 0}, 1);
    } else if (st.atomic) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec_atomic,
                                             QEMU_PLUGIN_CB_NO_REGS, b);
    } else {
        qemu_plugin_register_vcpu_tb_exec_inline(tb,
                                                 QEMU_PLUGIN_INLINE_ADD_U64,
                                                 &b->count, 1);
    }
}

/* Hottest first; equal counts by ascending pc, so the output is stable. */
static int snap_cmp(const void *pa, const void *pb)
{
    const struct hb_snap *a = pa;
    const struct hb_snap *b = pb;

    if (a->count != b->count) {
        return a->count > b->count ? -1 : 1;
    }
    if (a->block->pc != b->block->pc) {
        return a->block->pc < b->block->pc ? -1 : 1;
    }
    return 0;
}

/*
 * Runs from libc's atexit on QEMU's main thread after the main loop ended.
 * Counts are read once each into a snapshot so that sorting sees fixed
 * values even if a vCPU is still running.
 */
static void at_exit(qemu_plugin_id_t id, void *udata)
{
    struct hb_snap *snap;
    size_t n = 0, i, shown;
    char *json = NULL;
    size_t len;
    FILE *f;
    char line[160];

    (void)id;
    (void)udata;
    pthread_mutex_lock(&st.lock);
    snap = calloc(st.n_blocks ? st.n_blocks : 1, sizeof(*snap));
    if (snap == NULL) {
        abort();
    }
    for (i = 0; i < st.n_buckets; i++) {
        const struct hb_block *e;

        for (e = st.buckets[i]; e != NULL; e = e->next) {
            snap[n].count = e->sb != NULL
                                ? qemu_plugin_u64_sum((qemu_plugin_u64){e->sb, 0})
                                : __atomic_load_n(&e->count, __ATOMIC_RELAXED);
            snap[n].block = e;
            if (snap[n].count > 0 || !st.roi_only) {
                n++; /* with roi=on, blocks run only outside ROIs are left out */
            }
        }
    }
    qsort(snap, n, sizeof(*snap), snap_cmp);
    shown = n < st.top ? n : (size_t)st.top;

    f = open_memstream(&json, &len);
    if (f == NULL) {
        abort();
    }
    fprintf(f, "{\"plugin\":\"hotblocks\",\"blocks\":[");
    for (i = 0; i < shown; i++) {
        fprintf(f, "%s\n{\"pc\":\"0x%" PRIx64 "\",\"insns\":%zu,"
                "\"count\":%" PRIu64 "}", i ? "," : "", snap[i].block->pc,
                snap[i].block->insns, snap[i].count);
    }
    fprintf(f, "],\"total_blocks\":%zu,\"roi\":%s}\n", n,
            st.roi_only ? "true" : "false");
    if (fclose(f) != 0) {
        abort();
    }
    if (st.out != NULL) {
        plugin_write_file("hotblocks", st.out, json, len);
    }
    if (n > 0) {
        snprintf(line, sizeof(line),
                 "hotblocks: %zu blocks, hottest 0x%" PRIx64 " run %" PRIu64
                 " times\n", n, snap[0].block->pc, snap[0].count);
    } else {
        snprintf(line, sizeof(line), "hotblocks: no blocks\n");
    }
    pthread_mutex_unlock(&st.lock);
    qemu_plugin_outs(line);
    free(json);
    free(snap);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *events = NULL;
    int i;

    for (i = 0; i < argc; i++) {
        const char *val;

        if (plugin_arg_match(argv[i], "out", &val)) {
            if (plugin_out_check("hotblocks", val) != 0) {
                return -1;
            }
            st.out = val;
        } else if (plugin_arg_match(argv[i], "top", &val)) {
            if (plugin_arg_u64("hotblocks", "top", val, 1, &st.top) != 0) {
                return -1;
            }
        } else if (plugin_arg_match(argv[i], "roi", &val)) {
            if (!qemu_plugin_bool_parse("roi", val, &st.roi_only)) {
                fprintf(stderr, "hotblocks: bad value for roi: '%s' (want on or off)\n", val);
                return -1;
            }
        } else if (plugin_arg_match(argv[i], "events", &val)) {
            events = val;
        } else {
            return plugin_arg_unknown("hotblocks", argv[i], "out, top, roi, events");
        }
    }
    if (roi_setup("hotblocks", info, events) != 0) {
        return -1;
    }

    st.atomic = !info->system_emulation || info->system.max_vcpus > 1;
    st.n_buckets = HB_INITIAL_BUCKETS;
    st.buckets = new_buckets(st.n_buckets);

    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
