/*
 * insn.c - libinsn.so, a TCG plugin that counts guest instructions executed,
 * in total and per vCPU, and can stop QEMU after a given number.
 *
 *   -plugin build/plugins/libinsn.so,out=FILE,limit=N
 *
 * out=FILE   at exit, write {"plugin":"insn","total":T,"vcpus":[n0,...],
 *            "limit":N|null,"stopped":true|false} to FILE (via FILE.tmp and
 *            rename, so a reader never sees half a file).
 * limit=N    once N instructions have run, write the result (counts frozen
 *            at that moment) and end QEMU as if it got SIGTERM; see below.
 * limit_roi=ID  count the limit inside region of interest ID only (summed
 *            over its entries): stop after N instructions of the workload.
 * events=PATH   write a JSON line per ROI marker to PATH (plugin_roi.h).
 *
 * Regions of interest (roi/qshell-roi.h): between a begin and an end marker
 * of an id, every vCPU's instructions count for that id as well ("rois" in
 * the result: per id the instructions, per vCPU, how often it was entered,
 * whether it is still open).  The counts are taken as differences of the
 * running per-vCPU counts at the two markers, so ROIs cost nothing between
 * markers: only the marker instructions get a callback.  The marking vCPU's
 * count is exact to the instruction (the marker knows how many instructions
 * of its block come after it); another vCPU's is exact to its current
 * block.  The begin marker itself is outside the region, the end marker too:
 * an empty region counts 0.
 * A one-line summary goes to qemu_plugin_outs() (shown with `-d plugin`).
 *
 * Counting is per translation block: each block gets an execution callback
 * whose udata is its instruction count, and the callback adds that to the
 * running vCPU's own cache-line-sized slot (one writer per slot: no atomic
 * read-modify-write, no false sharing). The total is the sum of the slots.
 * It over-counts only when a block is left early (a fault in mid-block):
 * on the default guest (1 vCPU, boot to the login prompt, ~2.0e9
 * instructions) it was within 0.004% of exact per-instruction counting.
 * Measured QEMU CPU time for that boot (~3.7 s without plugins): this
 * callback +11-14%; a per-instruction inline add +22% (exact, but in API v1
 * an inline add targets one fixed address, so it cannot be per vCPU, and it
 * is not atomic, so MTTCG threads lose updates); a per-block inline add +7%
 * (same two faults, and it cannot check a limit).
 *
 * Stopping at the limit: API v1 has no call to pause or stop the VM, and
 * calling exit() on a vCPU thread would run QEMU's atexit handlers while the
 * main loop and the other vCPUs still run, with no SHUTDOWN event for the
 * QMP client. Instead the plugin sends SIGTERM to its own process (kill, not
 * raise: QEMU's vCPU threads block all signals, so the main thread takes
 * it). That is QEMU's ordinary host-signal shutdown, honoured even with
 * -no-shutdown: the QMP client sees a SHUTDOWN event with
 * {"guest":false,"reason":"host-signal"}, then the monitor socket closes;
 * QEMU prints "terminating on signal 15 from pid P" (P is QEMU's own pid)
 * and exits with status 0; the atexit callbacks, ours included, run.
 * The guest keeps running for the few milliseconds the main loop needs to
 * notice, so the reported counts are those frozen when the limit was hit:
 * total >= limit, overshooting by less than the one block that crossed it
 * (with several vCPUs each other vCPU may add up to one block more).
 *
 * With one vCPU (max_vcpus 1) and no limit= on API 1, those two faults
 * cannot happen, and the count is that inline add per block (+7%).
 *
 * On QEMU 9.0+ (plugin API 2) without limit=, the count is an inline
 * per-vCPU add into a scoreboard, emitted into each block: no callback at
 * all, exact per vCPU and thread-safe with -smp > 1.  With limit= both
 * generations use the callbacks above (the limit needs a check per block).
 * The result file is the same on both.
 *
 * This file does not parse guest state, and it exports only
 * qemu_plugin_version and qemu_plugin_install.
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin_roi.h"
#include "plugin_util.h"
#include "qshell-plugin.h"

QSHELL_PLUGIN_VERSION_DEFINE

#define INSN_CACHE_LINE 64
/*
 * linux-user has no vCPU bound (a vCPU per guest thread): indices past this
 * share the last slot, whose count may then lose updates.
 */
#define INSN_USER_SLOTS 256

/* One vCPU's counter, alone on its cache line. */
struct insn_slot {
    uint64_t insns;
    char pad[INSN_CACHE_LINE - sizeof(uint64_t)];
};

/* One region of interest: sums over its closed entries, and the open one. */
struct insn_roi {
    uint64_t *start;         /* n_slots counts at the begin marker */
    uint64_t *sum;           /* n_slots counts over closed entries */
    uint64_t entries;        /* begin markers that opened it */
    uint64_t unbalanced;     /* a begin while open, an end while closed */
};

struct insn_state {
    const char *out;         /* result path (points into argv), or NULL */
    uint64_t limit;          /* 0: no limit */
    bool exact;              /* exact=on: an inline add per instruction */
    int64_t limit_roi;       /* -1: the limit counts everything */
    uint64_t limit_at;       /* atomic: the count that hits the limit */
    struct insn_slot *slots; /* one per possible vCPU */
    unsigned int n_slots;
    unsigned int n_vcpus;    /* highest vCPU index initialised, plus one */
    uint64_t progress;       /* atomic running total, for the limit check */
    int stopping;            /* atomic: the limit was hit (set once) */
    /* Written under lock by limit_reached(), read under lock at exit. */
    pthread_mutex_t lock;
    bool frozen;
    uint64_t *frozen_vcpus;  /* n_slots counts as they were at the limit */
    struct insn_roi **rois;  /* ROI_IDS entries, made at first use (lock) */
    unsigned int n_rois;     /* ids used */
};

static struct insn_state st = {
    .limit_roi = -1,
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

/* API 2 without a limit: the per-vCPU counts live here (NULL otherwise). */
static struct qemu_plugin_scoreboard *sb;
static qemu_plugin_u64 sb_insns;

/* vcpu's count so far, wherever it is kept. */
static uint64_t count_of(unsigned int vcpu)
{
    if (sb != NULL) {
        return qemu_plugin_u64_get(sb_insns, vcpu);
    }
    return __atomic_load_n(&st.slots[vcpu].insns, __ATOMIC_RELAXED);
}

static struct insn_slot *slot_of(unsigned int vcpu)
{
    return &st.slots[vcpu < st.n_slots ? vcpu : st.n_slots - 1];
}

/*
 * Add n to vcpu's slot and return the new count. Only the vCPU's own thread
 * writes its slot, so a load and a store suffice (plain moves on x86); the
 * atomics only keep readers on other threads from seeing a torn value.
 */
static uint64_t slot_add(unsigned int vcpu, uint64_t n)
{
    struct insn_slot *s = slot_of(vcpu);
    uint64_t v = __atomic_load_n(&s->insns, __ATOMIC_RELAXED) + n;

    __atomic_store_n(&s->insns, v, __ATOMIC_RELAXED);
    return v;
}

static unsigned int vcpus_to_report(void)
{
    unsigned int n = __atomic_load_n(&st.n_vcpus, __ATOMIC_RELAXED);

    if (n == 0) {
        n = 1;
    }
    return n < st.n_slots ? n : st.n_slots;
}

/*
 * The "rois" list: per id used, its instructions (closed entries, plus the
 * open one up to counts[]), per vCPU. Caller holds st.lock.
 */
static void rois_json(FILE *f, const uint64_t *counts, unsigned int n)
{
    unsigned int id, v, k = 0;

    for (id = 0; st.n_rois > 0 && id < ROI_IDS; id++) {
        const struct insn_roi *r = st.rois[id];
        uint64_t total = 0;
        bool open = roi_is_open(id);

        if (r == NULL) {
            continue;
        }
        for (v = 0; v < n; v++) {
            total += r->sum[v] + (open ? counts[v] - r->start[v] : 0);
        }
        fprintf(f, "%s{\"id\":%u,\"insns\":%llu,\"vcpus\":[", k++ ? "," : "", id,
                (unsigned long long)total);
        for (v = 0; v < n; v++) {
            fprintf(f, "%s%llu", v ? "," : "",
                    (unsigned long long)(r->sum[v] + (open ? counts[v] - r->start[v] : 0)));
        }
        fprintf(f, "],\"entries\":%llu,\"open\":%s,\"unbalanced\":%llu}",
                (unsigned long long)r->entries, open ? "true" : "false",
                (unsigned long long)r->unbalanced);
    }
}

/*
 * Build the JSON result from counts[0..n) into a malloc'd string. Caller
 * holds st.lock.
 */
static char *result_json(const uint64_t *counts, unsigned int n,
                         uint64_t *total, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    unsigned int i;

    if (f == NULL) {
        abort();
    }
    *total = 0;
    for (i = 0; i < n; i++) {
        *total += counts[i];
    }
    fprintf(f, "{\"plugin\":\"insn\",\"total\":%llu,\"vcpus\":[",
            (unsigned long long)*total);
    for (i = 0; i < n; i++) {
        fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)counts[i]);
    }
    fprintf(f, "],\"limit\":");
    if (st.limit) {
        fprintf(f, "%llu", (unsigned long long)st.limit);
    } else {
        fprintf(f, "null");
    }
    fprintf(f, ",\"limit_roi\":");
    if (st.limit_roi >= 0) {
        fprintf(f, "%lld", (long long)st.limit_roi);
    } else {
        fprintf(f, "null");
    }
    fprintf(f, ",\"stopped\":%s,\"rois\":[", st.frozen ? "true" : "false");
    rois_json(f, counts, n);
    fprintf(f, "],\"roi_events_dropped\":%llu}\n", (unsigned long long)roi.dropped);
    if (fclose(f) != 0) {
        abort();
    }
    return buf;
}

/*
 * Write the result file (if out= was given) and return the total. Uses the
 * frozen counts once the limit was hit, else the live ones. Caller holds
 * st.lock.
 */
static uint64_t write_result(void)
{
    unsigned int n = vcpus_to_report();
    uint64_t *live = NULL;
    const uint64_t *counts = st.frozen_vcpus;
    uint64_t total;
    unsigned int i;
    size_t len;
    char *json;

    if (!st.frozen) {
        live = calloc(n, sizeof(*live));
        if (live == NULL) {
            abort();
        }
        for (i = 0; i < n; i++) {
            live[i] = count_of(i);
        }
        counts = live;
    }
    json = result_json(counts, n, &total, &len);
    if (st.out != NULL) {
        plugin_write_file("insn", st.out, json, len);
    }
    free(json);
    free(live);
    return total;
}

/*
 * Called once, on the vCPU thread whose block crossed the limit: freeze the
 * counts, write the result now (so it exists even if QEMU is later killed
 * hard), then ask QEMU to shut down as on SIGTERM.
 */
static void limit_reached(void)
{
    unsigned int i;
    uint64_t total;

    /* Blocks keep running until QEMU acts on the signal: stay cheap. */
    if (__atomic_load_n(&st.stopping, __ATOMIC_RELAXED) ||
        __atomic_exchange_n(&st.stopping, 1, __ATOMIC_ACQ_REL)) {
        return;
    }
    pthread_mutex_lock(&st.lock);
    for (i = 0; i < st.n_slots; i++) {
        st.frozen_vcpus[i] = __atomic_load_n(&st.slots[i].insns,
                                             __ATOMIC_RELAXED);
    }
    st.frozen = true;
    total = write_result();
    pthread_mutex_unlock(&st.lock);

    fprintf(stderr, "insn: limit of %llu instructions reached (%llu run); "
            "stopping QEMU with SIGTERM\n",
            (unsigned long long)st.limit, (unsigned long long)total);
    kill(getpid(), SIGTERM);
}

/* Block executed, no limit: the hot path is one add. */
static void tb_exec(unsigned int vcpu, void *udata)
{
    slot_add(vcpu, (uintptr_t)udata);
}

/* Block executed, one vCPU: its own slot is the total. */
static void tb_exec_limit_one(unsigned int vcpu, void *udata)
{
    if (slot_add(vcpu, (uintptr_t)udata) >=
        __atomic_load_n(&st.limit_at, __ATOMIC_RELAXED)) {
        limit_reached();
    }
}

/*
 * Block executed, several vCPUs: the total needs a shared atomic. ACQ_REL
 * (free on x86, where lock xadd is a full barrier) makes every slot add
 * that preceded an earlier progress add visible to the vCPU that crosses
 * the limit, so the frozen total is never below the limit.
 */
static void tb_exec_limit_many(unsigned int vcpu, void *udata)
{
    uint64_t n = (uintptr_t)udata;

    slot_add(vcpu, n);
    if (__atomic_add_fetch(&st.progress, n, __ATOMIC_ACQ_REL) >=
        __atomic_load_n(&st.limit_at, __ATOMIC_RELAXED)) {
        limit_reached();
    }
}

/* The ROI record for id, made at first use. Caller holds st.lock. */
static struct insn_roi *roi_get(unsigned int id)
{
    struct insn_roi *r = st.rois[id];

    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL || (r->start = calloc(st.n_slots, sizeof(uint64_t))) == NULL ||
            (r->sum = calloc(st.n_slots, sizeof(uint64_t))) == NULL) {
            abort();
        }
        st.rois[id] = r;
        st.n_rois++;
    }
    return r;
}

/*
 * A marker executed on vcpu. udata: the id (bits 0-15), the op (16-19) and
 * how many instructions of its block follow it (20-), which the block's
 * count, added when the block started, already includes.
 */
static void roi_exec(unsigned int vcpu, void *udata)
{
    uintptr_t u = (uintptr_t)udata;
    unsigned int id = u & 0xffffu, op = (u >> 16) & 0xfu;
    /* how much of the count is the marker and what follows it: per block,
     * the marker and the rest of its block (added when the block started);
     * exact=on, nothing (the marker's own add is registered after this
     * callback) */
    uint64_t ahead = st.exact ? 0 : (u >> 20) + 1;
    unsigned int n = vcpus_to_report(), v;
    struct insn_roi *r;
    uint64_t entry = 0, total = 0;

    pthread_mutex_lock(&st.lock);
    if (st.frozen) {
        pthread_mutex_unlock(&st.lock);
        return;
    }
    r = roi_get(id);
    if (op == ROI_OP_BEGIN) {
        if (!roi_enter(id)) {
            r->unbalanced++;
            pthread_mutex_unlock(&st.lock);
            return;
        }
        r->entries++;
        for (v = 0; v < st.n_slots; v++) {
            r->start[v] = v < n ? count_of(v) : 0;
        }
        if (vcpu < st.n_slots) {
            r->start[vcpu] += 1 - ahead; /* the count just after the marker */
        }
        if (st.limit_roi == (int64_t)id) {
            uint64_t done = 0, base;

            for (v = 0; v < st.n_slots; v++) {
                done += r->sum[v];
            }
            base = st.n_slots == 1 ? r->start[0]
                                   : __atomic_load_n(&st.progress, __ATOMIC_RELAXED) - (ahead - 1);
            __atomic_store_n(&st.limit_at, base + (st.limit > done ? st.limit - done : 1),
                             __ATOMIC_RELAXED);
        }
        roi_event("\"roi\":%u,\"event\":\"begin\",\"vcpu\":%u", id, vcpu);
    } else {
        if (!roi_leave(id)) {
            r->unbalanced++;
            pthread_mutex_unlock(&st.lock);
            return;
        }
        for (v = 0; v < n && v < st.n_slots; v++) {
            /* the count just before the marker */
            uint64_t now = count_of(v) - (v == vcpu ? ahead : 0);
            uint64_t d = now - r->start[v];

            r->sum[v] += d;
            entry += d;
        }
        for (v = 0; v < st.n_slots; v++) {
            total += r->sum[v];
        }
        if (st.limit_roi == (int64_t)id) {
            __atomic_store_n(&st.limit_at, UINT64_MAX, __ATOMIC_RELAXED);
        }
        roi_event("\"roi\":%u,\"event\":\"end\",\"vcpu\":%u,\"insns\":%llu,\"total\":%llu",
                  id, vcpu, (unsigned long long)entry, (unsigned long long)total);
    }
    pthread_mutex_unlock(&st.lock);
}

/* Give each ROI marker of the block its callback. */
static void tb_find_markers(struct qemu_plugin_tb *tb, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        unsigned int op, id;

        if (roi_marker(insn, &op, &id)) {
            uintptr_t u = (uintptr_t)(n - i - 1) << 20 | (uintptr_t)op << 16 | id;

            qemu_plugin_register_vcpu_insn_exec_cb(insn, roi_exec, QEMU_PLUGIN_CB_NO_REGS,
                                                   (void *)u);
        }
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_vcpu_udata_cb_t cb = tb_exec;

    (void)id;
    tb_find_markers(tb, n);
    if (st.exact) {
        /* after the markers' callbacks: a marker's callback sees the count
         * without the marker (QEMU runs an instruction's callbacks and
         * inline ops in the order they were registered) */
        uintptr_t i;

        for (i = 0; i < n; i++) {
            struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);

            if (sb != NULL) {
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                                    sb_insns, 1);
            } else {
                qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                           &st.slots[0].insns, 1);
            }
        }
        return;
    }
    if (sb != NULL) {
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                          sb_insns, n);
        return;
    }
    if (!st.limit && st.n_slots == 1 && qemu_plugin_register_vcpu_tb_exec_inline != NULL) {
        /* API 1, one vCPU: an inline add is exact (no other vCPU thread). */
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                 &st.slots[0].insns, n);
        return;
    }
    if (st.limit && st.n_slots == 1) {
        cb = tb_exec_limit_one;
    } else if (st.limit) {
        cb = tb_exec_limit_many;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, cb, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)n);
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu)
{
    unsigned int n = vcpu + 1;
    unsigned int cur = __atomic_load_n(&st.n_vcpus, __ATOMIC_RELAXED);

    (void)id;
    while (cur < n && !__atomic_compare_exchange_n(&st.n_vcpus, &cur, n,
                                                   false, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED)) {
        /* cur was reloaded by the failed exchange */
    }
}

/*
 * Runs from libc's atexit on QEMU's main thread, after the main loop ended
 * (guest poweroff, QMP quit, SIGTERM, our own limit). Nothing is freed: a
 * vCPU thread may in odd exit paths still be running blocks that call us.
 */
static void at_exit(qemu_plugin_id_t id, void *udata)
{
    char line[160];
    uint64_t total;

    (void)id;
    (void)udata;
    pthread_mutex_lock(&st.lock);
    total = write_result();
    if (st.limit) {
        snprintf(line, sizeof(line),
                 "insn: %llu instructions on %u vCPU(s), limit %llu%s\n",
                 (unsigned long long)total, vcpus_to_report(),
                 (unsigned long long)st.limit,
                 st.frozen ? " reached, stopped" : " not reached");
    } else {
        snprintf(line, sizeof(line),
                 "insn: %llu instructions on %u vCPU(s)\n",
                 (unsigned long long)total, vcpus_to_report());
    }
    pthread_mutex_unlock(&st.lock);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *events = NULL;
    void *mem;
    int i;

    for (i = 0; i < argc; i++) {
        const char *val;

        if (plugin_arg_match(argv[i], "out", &val)) {
            if (plugin_out_check("insn", val) != 0) {
                return -1;
            }
            st.out = val;
        } else if (plugin_arg_match(argv[i], "limit", &val)) {
            if (plugin_arg_u64("insn", "limit", val, 1, &st.limit) != 0) {
                return -1;
            }
        } else if (plugin_arg_match(argv[i], "limit_roi", &val)) {
            uint64_t r;

            if (plugin_arg_u64("insn", "limit_roi", val, 0, &r) != 0) {
                return -1;
            }
            if (r >= ROI_IDS) {
                fprintf(stderr, "insn: bad value for limit_roi: '%s' (an ROI id is 0 to %u)\n",
                        val, ROI_IDS - 1);
                return -1;
            }
            st.limit_roi = (int64_t)r;
        } else if (plugin_arg_match(argv[i], "events", &val)) {
            events = val;
        } else if (plugin_arg_match(argv[i], "exact", &val)) {
            if (!qemu_plugin_bool_parse("exact", val, &st.exact)) {
                fprintf(stderr, "insn: bad value for exact: '%s' (want on or off)\n", val);
                return -1;
            }
        } else {
            return plugin_arg_unknown("insn", argv[i], "out, limit, limit_roi, events, exact");
        }
    }
    if (st.limit_roi >= 0 && !st.limit) {
        fprintf(stderr, "insn: limit_roi=%lld needs limit=N (the instructions to run in it)\n",
                (long long)st.limit_roi);
        return -1;
    }
    st.limit_at = st.limit_roi >= 0 ? UINT64_MAX : st.limit;
    if (roi_setup("insn", info, events) != 0) {
        return -1;
    }
    st.rois = calloc(ROI_IDS, sizeof(*st.rois));
    if (st.rois == NULL) {
        abort();
    }

    st.n_slots = INSN_USER_SLOTS;
    if (info->system_emulation && info->system.max_vcpus > 0) {
        st.n_slots = info->system.max_vcpus;
    }
    if (posix_memalign(&mem, INSN_CACHE_LINE,
                       st.n_slots * sizeof(struct insn_slot)) != 0) {
        abort();
    }
    st.slots = memset(mem, 0, st.n_slots * sizeof(struct insn_slot));
    st.frozen_vcpus = calloc(st.n_slots, sizeof(uint64_t));
    if (st.frozen_vcpus == NULL) {
        abort();
    }

    if (st.exact && st.limit) {
        fprintf(stderr, "insn: exact=on and limit= cannot be combined (the limit is checked per block)\n");
        return -1;
    }
    if (st.exact && !qshell_plugin_api2() && st.n_slots != 1) {
        fprintf(stderr, "insn: exact=on on QEMU before 9.0 needs one vCPU (its inline add has one counter)\n");
        return -1;
    }
    if (qshell_plugin_api2() && !st.limit) {
        sb = qemu_plugin_scoreboard_new(sizeof(uint64_t));
        sb_insns = (qemu_plugin_u64){sb, 0};
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
