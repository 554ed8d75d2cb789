/*
 * lua.c - liblua.so, a TCG plugin that runs a Lua 5.4 script inside QEMU:
 * instrumentation written in Lua (qemu.plugin.lua on the host side).
 *
 *   -plugin build/plugins/liblua.so,script=FILE,name=CHUNK,args=FILE,out=FILE,emit=FILE
 *
 * script=FILE  the Lua source, run once at install (its chunk is named
 *              CHUNK in messages: name=, default the file's path).
 * args=FILE    a Lua chunk returning the table the script sees as
 *              plugin.args (qshell writes it from qemu.plugin.lua's args).
 * out=FILE     at exit: {"plugin":"lua","result":R,"counters":{...},
 *              "error":null|"CHUNK:LINE: message"}; R is what the
 *              function given to plugin.on_exit returned.
 * emit=FILE    plugin.emit(t) appends t as a JSON line (vm:plugin_events).
 * events=PATH  ROI marker events, as insn writes them (vm:wait_roi).
 *
 * The script's API is the global `plugin` (README, "Instrumentation in
 * Lua"): on_translate(fn(tb)) with tb.vaddr, tb.n, tb:insn(i), tb:count,
 * tb:on_exec, and per instruction .vaddr .size .bytes .disas .symbol,
 * :count, :on_exec, :on_mem; counter(name [, vcpu]); on_roi(fn(id, event,
 * vcpu)); read_register(vcpu, name) (9.0+); emit(t); on_exit(fn); args.
 *
 * Counters cost no callback: tb:count and insn:count emit an inline add
 * into the translated code.  On 9.0+ each counter is a scoreboard (a slot
 * per vCPU, exact with any -smp); before 9.0 an inline add goes to one
 * fixed address, exact with one vCPU; with several, the add is an
 * execution callback doing an atomic add per vCPU slot instead.
 *
 * One Lua state, one lock: every entry into Lua (translation, execution
 * callbacks, memory callbacks, ROI markers, exit) holds it, so callbacks
 * of several vCPU threads (MTTCG) run one at a time, each seeing the
 * others' updates.
 *
 * Errors: a Lua error at install makes qemu_plugin_install fail (QEMU does
 * not start) after writing it to out=; one in a callback is written to
 * out= at once, every later callback is skipped, and QEMU is stopped as on
 * SIGTERM (kill(getpid()): QEMU's vCPU threads block signals, its main
 * thread takes it), so the host sees the VM end and reads why.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "plugin_roi.h"
#include "plugin_util.h"
#include "qshell-plugin.h"

QSHELL_PLUGIN_VERSION_DEFINE

#define LP_MAX_VCPUS_API1 256
#define LP_JSON_DEPTH 64
#define LP_TB_META "qshell.plugin.tb"
#define LP_INSN_META "qshell.plugin.insn"
#define LP_FNS "qshell.plugin.fns"

/* A named counter that inline adds (or, API 1 with several vCPUs, atomic
 * adds from a callback) feed. */
struct lp_counter {
    char *name;
    struct qemu_plugin_scoreboard *sb; /* API 2 */
    uint64_t *slots;                   /* API 1: one per possible vCPU */
};

/* A Lua function an execution or memory callback calls (a registry ref). */
struct lp_fn {
    int ref;
};

struct lp_state {
    lua_State *L;
    pthread_mutex_t lock;
    const char *out;
    const char *emit;
    int emit_fd;
    int ref_translate, ref_exit, ref_roi;
    bool failed;
    char *error;
    bool api2;
    unsigned int n_slots; /* vCPUs possible */
    unsigned int n_vcpus; /* highest initialised + 1 */
    struct lp_counter *counters;
    size_t n_counters, cap_counters;
    uint64_t translate_gen; /* handles of older translations are dead */
    bool in_translate;
    qshell_GByteArray *regbuf;
    /* per vCPU: its register descriptors (API 2) */
    qshell_GArray **regs;
};

static struct lp_state lp = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .emit_fd = -1,
    .ref_translate = LUA_NOREF,
    .ref_exit = LUA_NOREF,
    .ref_roi = LUA_NOREF,
};

/* The handle a script holds for a block or an instruction being translated. */
struct lp_handle {
    struct qemu_plugin_tb *tb;
    struct qemu_plugin_insn *insn;
    uint64_t gen;
};

/* ---- JSON out of Lua values ---- */

static void json_string(FILE *f, const char *s, size_t n)
{
    size_t i;

    fputc('"', f);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                fprintf(f, "\\u%04x", c);
            } else {
                fputc(c, f);
            }
        }
    }
    fputc('"', f);
}

/* Is the table at idx a list (keys 1..n, n > 0)?  *n gets n. */
static bool json_is_list(lua_State *L, int idx, lua_Integer *n)
{
    lua_Integer count = 0, max = 0;

    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            lua_Integer k = lua_tointeger(L, -1);

            count++;
            if (k > max) {
                max = k;
            }
        } else {
            lua_pop(L, 1);
            return false;
        }
    }
    *n = max;
    return count > 0 && count == max;
}

/* Write the value at idx as JSON; raises a Lua error for what JSON cannot carry. */
static void json_value(lua_State *L, FILE *f, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > LP_JSON_DEPTH) {
        luaL_error(L, "a value nested deeper than %d tables cannot be sent", LP_JSON_DEPTH);
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        fputs("null", f);
        break;
    case LUA_TBOOLEAN:
        fputs(lua_toboolean(L, idx) ? "true" : "false", f);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            fprintf(f, "%lld", (long long)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);

            if (isfinite(d)) {
                fprintf(f, "%.17g", d);
            } else {
                fputs("null", f);
            }
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);

        json_string(f, s, n);
        break;
    }
    case LUA_TTABLE: {
        lua_Integer n, i;
        bool first = true;

        luaL_checkstack(L, 4, "JSON");
        if (json_is_list(L, idx, &n)) {
            fputc('[', f);
            for (i = 1; i <= n; i++) {
                lua_rawgeti(L, idx, i);
                if (i > 1) {
                    fputc(',', f);
                }
                json_value(L, f, -1, depth + 1);
                lua_pop(L, 1);
            }
            fputc(']', f);
            break;
        }
        fputc('{', f);
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            size_t kn;
            const char *k;

            if (lua_type(L, -2) != LUA_TSTRING && lua_type(L, -2) != LUA_TNUMBER) {
                luaL_error(L, "a table key of type %s cannot be sent (keys are strings or numbers)",
                           luaL_typename(L, -2));
                return;
            }
            /* a copy of the key: tolstring on a number key would change
             * the key lua_next needs */
            lua_pushvalue(L, -2);
            k = lua_tolstring(L, -1, &kn);
            if (!first) {
                fputc(',', f);
            }
            json_string(f, k, kn);
            lua_pop(L, 1);
            fputc(':', f);
            json_value(L, f, -1, depth + 1);
            lua_pop(L, 1);
            first = false;
        }
        fputc('}', f);
        break;
    }
    default:
        luaL_error(L, "a %s cannot be sent (only nil, booleans, numbers, strings and tables)",
                   luaL_typename(L, idx));
    }
}

/* JSON of the value at idx into a malloc'd string (raises on bad values). */
struct json_buf {
    char *text;
    size_t len;
    FILE *f;
};

static int json_encode_k(lua_State *L)
{
    struct json_buf *b = lua_touserdata(L, 1);

    json_value(L, b->f, 2, 0);
    return 0;
}

/* 0 and *out set, or -1 with the Lua error message on the stack top. */
static int json_encode(lua_State *L, int idx, char **out, size_t *len)
{
    struct json_buf b = {0};
    int rc;

    idx = lua_absindex(L, idx);
    b.f = open_memstream(&b.text, &b.len);
    if (b.f == NULL) {
        abort();
    }
    lua_pushcfunction(L, json_encode_k);
    lua_pushlightuserdata(L, &b);
    lua_pushvalue(L, idx);
    rc = lua_pcall(L, 2, 0, 0);
    fclose(b.f);
    if (rc != LUA_OK) {
        free(b.text);
        return -1;
    }
    *out = b.text;
    *len = b.len;
    return 0;
}

/* ---- the result file and failures ---- */

static uint64_t counter_value(const struct lp_counter *c, int vcpu);

/* Write out= with result (JSON text or NULL). Caller holds lp.lock. */
static void write_result(const char *result)
{
    char *buf = NULL;
    size_t len = 0, i;
    FILE *f;

    if (lp.out == NULL) {
        return;
    }
    f = open_memstream(&buf, &len);
    if (f == NULL) {
        abort();
    }
    fprintf(f, "{\"plugin\":\"lua\",\"result\":%s,\"counters\":{", result ? result : "null");
    for (i = 0; i < lp.n_counters; i++) {
        const struct lp_counter *c = &lp.counters[i];

        if (i > 0) {
            fputc(',', f);
        }
        json_string(f, c->name, strlen(c->name));
        fprintf(f, ":%" PRIu64, counter_value(c, -1));
    }
    fputs("},\"error\":", f);
    if (lp.error != NULL) {
        json_string(f, lp.error, strlen(lp.error));
    } else {
        fputs("null", f);
    }
    fprintf(f, ",\"roi_events_dropped\":%" PRIu64 "}\n", roi.dropped);
    if (fclose(f) != 0) {
        abort();
    }
    plugin_write_file("lua", lp.out, buf, len);
    free(buf);
}

/*
 * A callback raised (message on the stack top): keep the first message,
 * write it out, and stop QEMU once.  Caller holds lp.lock.
 */
static void fail(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);

    if (!lp.failed) {
        lp.failed = true;
        lp.error = strdup(msg ? msg : "(an error that is not a string)");
        write_result(NULL);
        fprintf(stderr, "lua: %s; stopping QEMU\n", lp.error);
        kill(getpid(), SIGTERM);
    }
    lua_pop(L, 1);
}

/* Call the function under ref with nargs arguments pushed after it. */
static void call_ref(int ref, int nargs)
{
    lua_State *L = lp.L;

    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_insert(L, -nargs - 1);
    if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
        fail(L);
    }
}

/* ---- counters ---- */

static struct lp_counter *counter_find(const char *name)
{
    size_t i;

    for (i = 0; i < lp.n_counters; i++) {
        if (strcmp(lp.counters[i].name, name) == 0) {
            return &lp.counters[i];
        }
    }
    return NULL;
}

/* The counter name, made at first use (translation holds the lock). */
static struct lp_counter *counter_get(const char *name)
{
    struct lp_counter *c = counter_find(name);

    if (c != NULL) {
        return c;
    }
    if (lp.n_counters == lp.cap_counters) {
        size_t cap = lp.cap_counters ? lp.cap_counters * 2 : 16;
        /* counters are never moved once made: callbacks hold pointers */
        struct lp_counter *more = calloc(cap, sizeof(*more));

        if (more == NULL) {
            abort();
        }
        if (lp.n_counters > 0) {
            memcpy(more, lp.counters, lp.n_counters * sizeof(*more));
        }
        /* the old array stays allocated: a callback may be reading it */
        __atomic_store_n(&lp.counters, more, __ATOMIC_RELEASE);
        lp.cap_counters = cap;
    }
    c = &lp.counters[lp.n_counters];
    c->name = strdup(name);
    if (c->name == NULL) {
        abort();
    }
    if (lp.api2) {
        c->sb = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    } else {
        c->slots = calloc(lp.n_slots, sizeof(uint64_t));
        if (c->slots == NULL) {
            abort();
        }
    }
    lp.n_counters++;
    return c;
}

static uint64_t counter_value(const struct lp_counter *c, int vcpu)
{
    uint64_t total = 0;
    unsigned int v;

    if (lp.api2) {
        qemu_plugin_u64 e = {c->sb, 0};

        if (vcpu < 0) {
            return qemu_plugin_u64_sum(e);
        }
        /* (a scoreboard holds the vCPUs started so far) */
        return (unsigned int)vcpu < __atomic_load_n(&lp.n_vcpus, __ATOMIC_RELAXED)
               ? qemu_plugin_u64_get(e, (unsigned int)vcpu) : 0;
    }
    if (vcpu >= 0) {
        return (unsigned int)vcpu < lp.n_slots ? __atomic_load_n(&c->slots[vcpu], __ATOMIC_RELAXED) : 0;
    }
    for (v = 0; v < lp.n_slots; v++) {
        total += __atomic_load_n(&c->slots[v], __ATOMIC_RELAXED);
    }
    return total;
}

/* API 1, several vCPUs: udata packs the counter index (low 20 bits) and n. */
static void count_exec(unsigned int vcpu, void *udata)
{
    uintptr_t u = (uintptr_t)udata;
    /* (read without the lock: the counter array only grows, and a counter
     * registered for a block exists before the block runs) */
    struct lp_counter *c = &__atomic_load_n(&lp.counters, __ATOMIC_ACQUIRE)[u & 0xfffffu];

    __atomic_add_fetch(&c->slots[vcpu < lp.n_slots ? vcpu : lp.n_slots - 1], u >> 20,
                       __ATOMIC_RELAXED);
}

static void add_count(struct lp_handle *h, const char *name, uint64_t n)
{
    struct lp_counter *c = counter_get(name);
    size_t idx = (size_t)(c - lp.counters);

    if (lp.api2) {
        qemu_plugin_u64 e = {c->sb, 0};

        if (h->insn != NULL) {
            qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(h->insn, QEMU_PLUGIN_INLINE_ADD_U64, e, n);
        } else {
            qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(h->tb, QEMU_PLUGIN_INLINE_ADD_U64, e, n);
        }
    } else if (lp.n_slots == 1) {
        if (h->insn != NULL) {
            qemu_plugin_register_vcpu_insn_exec_inline(h->insn, QEMU_PLUGIN_INLINE_ADD_U64, &c->slots[0], n);
        } else {
            qemu_plugin_register_vcpu_tb_exec_inline(h->tb, QEMU_PLUGIN_INLINE_ADD_U64, &c->slots[0], n);
        }
    } else {
        uintptr_t u = (uintptr_t)n << 20 | idx;

        if (idx > 0xfffffu || n > (UINTPTR_MAX >> 20)) {
            luaL_error(lp.L, "too many counters or too large a count");
        }
        if (h->insn != NULL) {
            qemu_plugin_register_vcpu_insn_exec_cb(h->insn, count_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)u);
        } else {
            qemu_plugin_register_vcpu_tb_exec_cb(h->tb, count_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)u);
        }
    }
}

/* ---- execution and memory callbacks ---- */

static void exec_cb(unsigned int vcpu, void *udata)
{
    struct lp_fn *fn = udata;

    pthread_mutex_lock(&lp.lock);
    if (!lp.failed) {
        lua_pushinteger(lp.L, vcpu);
        call_ref(fn->ref, 1);
    }
    pthread_mutex_unlock(&lp.lock);
}

static void mem_cb(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    struct lp_fn *fn = udata;

    pthread_mutex_lock(&lp.lock);
    if (!lp.failed) {
        lua_State *L = lp.L;

        lua_pushinteger(L, vcpu);
        lua_pushinteger(L, (lua_Integer)vaddr);
        lua_pushboolean(L, qemu_plugin_mem_is_store(info));
        lua_pushinteger(L, 1 << qemu_plugin_mem_size_shift(info));
        call_ref(fn->ref, 4);
    }
    pthread_mutex_unlock(&lp.lock);
}

/*
 * A callback's function: a registry ref, kept for QEMU's lifetime.  One
 * function given for many blocks (a function defined once, outside
 * on_translate) is one ref: the registry's LP_FNS table maps it to its
 * lp_fn.  A closure made per translation is one per translation.
 */
static struct lp_fn *fn_ref(lua_State *L, int idx)
{
    struct lp_fn *fn;

    luaL_checktype(L, idx, LUA_TFUNCTION);
    idx = lua_absindex(L, idx);
    lua_getfield(L, LUA_REGISTRYINDEX, LP_FNS);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TLIGHTUSERDATA) {
        fn = lua_touserdata(L, -1);
        lua_pop(L, 2);
        return fn;
    }
    lua_pop(L, 1);
    fn = malloc(sizeof(*fn));
    if (fn == NULL) {
        abort();
    }
    lua_pushvalue(L, idx);
    fn->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, fn);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return fn;
}

/* ---- tb and insn handles ---- */

static struct lp_handle *handle_check(lua_State *L, int idx, const char *meta, const char *what)
{
    struct lp_handle *h = luaL_checkudata(L, idx, meta);

    if (!lp.in_translate || h->gen != lp.translate_gen) {
        luaL_error(L, "%s is only usable inside the on_translate call that gave it "
                   "(keep the values you need, e.g. its vaddr, instead)", what);
    }
    return h;
}

static struct lp_handle *handle_new(lua_State *L, const char *meta)
{
    struct lp_handle *h = lua_newuserdatauv(L, sizeof(*h), 0);

    memset(h, 0, sizeof(*h));
    h->gen = lp.translate_gen;
    luaL_setmetatable(L, meta);
    return h;
}

/* h:count(name [, n]) for a block or an instruction. */
static int handle_count(lua_State *L, const char *meta, const char *what)
{
    struct lp_handle *h = handle_check(L, 1, meta, what);
    const char *name = luaL_checkstring(L, 2);
    lua_Integer n = luaL_optinteger(L, 3, 1);

    luaL_argcheck(L, name[0] != '\0', 2, "a counter needs a name");
    luaL_argcheck(L, n >= 0, 3, "a count to add must be 0 or more");
    add_count(h, name, (uint64_t)n);
    return 0;
}

static int tb_count(lua_State *L) { return handle_count(L, LP_TB_META, "a tb"); }
static int insn_count(lua_State *L) { return handle_count(L, LP_INSN_META, "an insn"); }

static enum qemu_plugin_cb_flags cb_flags(void)
{
    /* registers are readable from callbacks on 9.0+ (read_register) */
    return lp.api2 ? QEMU_PLUGIN_CB_R_REGS : QEMU_PLUGIN_CB_NO_REGS;
}

static int tb_on_exec(lua_State *L)
{
    struct lp_handle *h = handle_check(L, 1, LP_TB_META, "a tb");

    qemu_plugin_register_vcpu_tb_exec_cb(h->tb, exec_cb, cb_flags(), fn_ref(L, 2));
    return 0;
}

static int insn_on_exec(lua_State *L)
{
    struct lp_handle *h = handle_check(L, 1, LP_INSN_META, "an insn");

    qemu_plugin_register_vcpu_insn_exec_cb(h->insn, exec_cb, cb_flags(), fn_ref(L, 2));
    return 0;
}

static int insn_on_mem(lua_State *L)
{
    struct lp_handle *h = handle_check(L, 1, LP_INSN_META, "an insn");

    qemu_plugin_register_vcpu_mem_cb(h->insn, mem_cb, cb_flags(), QEMU_PLUGIN_MEM_RW, fn_ref(L, 2));
    return 0;
}

static int tb_insn(lua_State *L)
{
    struct lp_handle *h = handle_check(L, 1, LP_TB_META, "a tb");
    lua_Integer i = luaL_checkinteger(L, 2);
    lua_Integer n = (lua_Integer)qemu_plugin_tb_n_insns(h->tb);
    struct lp_handle *ih;

    luaL_argcheck(L, i >= 1 && i <= n, 2, "an instruction index is 1 to tb.n");
    ih = handle_new(L, LP_INSN_META);
    ih->tb = h->tb;
    ih->insn = qemu_plugin_tb_get_insn(h->tb, (size_t)(i - 1));
    return 1;
}

static const luaL_Reg tb_methods[] = {
    {"insn", tb_insn},
    {"count", tb_count},
    {"on_exec", tb_on_exec},
    {NULL, NULL},
};

static const luaL_Reg insn_methods[] = {
    {"count", insn_count},
    {"on_exec", insn_on_exec},
    {"on_mem", insn_on_mem},
    {NULL, NULL},
};

/* tb.vaddr, tb.n, and the methods. */
static int tb_index(lua_State *L)
{
    const char *k = luaL_checkstring(L, 2);
    struct lp_handle *h = handle_check(L, 1, LP_TB_META, "a tb");

    if (strcmp(k, "vaddr") == 0) {
        lua_pushinteger(L, (lua_Integer)qemu_plugin_tb_vaddr(h->tb));
    } else if (strcmp(k, "n") == 0) {
        lua_pushinteger(L, (lua_Integer)qemu_plugin_tb_n_insns(h->tb));
    } else {
        lua_getfield(L, lua_upvalueindex(1), k);
    }
    return 1;
}

/* insn.vaddr .size .bytes .disas .symbol, and the methods. */
static int insn_index(lua_State *L)
{
    const char *k = luaL_checkstring(L, 2);
    struct lp_handle *h = handle_check(L, 1, LP_INSN_META, "an insn");

    if (strcmp(k, "vaddr") == 0) {
        lua_pushinteger(L, (lua_Integer)qemu_plugin_insn_vaddr(h->insn));
    } else if (strcmp(k, "size") == 0) {
        lua_pushinteger(L, (lua_Integer)qemu_plugin_insn_size(h->insn));
    } else if (strcmp(k, "bytes") == 0) {
        uint8_t b[32];
        size_t n = qemu_plugin_insn_size(h->insn);

        if (n > sizeof(b) || !roi_insn_bytes(h->insn, b, n)) {
            lua_pushnil(L);
        } else {
            lua_pushlstring(L, (const char *)b, n);
        }
    } else if (strcmp(k, "disas") == 0) {
        char *d = qemu_plugin_insn_disas(h->insn);

        lua_pushstring(L, d ? d : "");
        free(d);
    } else if (strcmp(k, "symbol") == 0) {
        const char *s = qemu_plugin_insn_symbol(h->insn);

        if (s != NULL && s[0] != '\0') {
            lua_pushstring(L, s);
        } else {
            lua_pushnil(L);
        }
    } else {
        lua_getfield(L, lua_upvalueindex(1), k);
    }
    return 1;
}

/* ---- the plugin table ---- */

static int set_ref(lua_State *L, int *ref)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    lua_pushvalue(L, 1);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static int p_on_translate(lua_State *L) { return set_ref(L, &lp.ref_translate); }
static int p_on_exit(lua_State *L) { return set_ref(L, &lp.ref_exit); }
static int p_on_roi(lua_State *L) { return set_ref(L, &lp.ref_roi); }

static int p_counter(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Integer vcpu = luaL_optinteger(L, 2, -1);
    const struct lp_counter *c = counter_find(name);

    luaL_argcheck(L, vcpu >= -1, 2, "a vCPU index is 0 or more");
    lua_pushinteger(L, c ? (lua_Integer)counter_value(c, (int)vcpu) : 0);
    return 1;
}

static int p_emit(lua_State *L)
{
    char *text;
    size_t len;

    luaL_checktype(L, 1, LUA_TTABLE);
    if (lp.emit_fd < 0) {
        return luaL_error(L, "plugin.emit: this plugin was loaded without emit= (qemu.plugin.lua gives it)");
    }
    if (json_encode(L, 1, &text, &len) != 0) {
        return luaL_error(L, "plugin.emit: %s", lua_tostring(L, -1));
    }
    text = realloc(text, len + 1);
    if (text == NULL) {
        abort();
    }
    text[len++] = '\n';
    if (write(lp.emit_fd, text, len) != (ssize_t)len) {
        int err = errno;

        free(text);
        return luaL_error(L, "plugin.emit: cannot write %s: %s", lp.emit, strerror(err));
    }
    free(text);
    return 0;
}

/* Each vCPU's registers, listed when it starts (API 2). */
static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu)
{
    (void)id;
    pthread_mutex_lock(&lp.lock);
    if (vcpu + 1 > lp.n_vcpus) {
        __atomic_store_n(&lp.n_vcpus, vcpu + 1, __ATOMIC_RELAXED);
    }
    if (lp.api2 && qemu_plugin_get_registers != NULL && vcpu < lp.n_slots) {
        lp.regs[vcpu] = qemu_plugin_get_registers();
    }
    pthread_mutex_unlock(&lp.lock);
}

static int p_read_register(lua_State *L)
{
    lua_Integer vcpu = luaL_checkinteger(L, 1);
    const char *name = luaL_checkstring(L, 2);
    qshell_GArray *regs;
    unsigned int i;

    if (!lp.api2 || qemu_plugin_read_register == NULL || g_byte_array_new == NULL) {
        return luaL_error(L, "plugin.read_register needs QEMU 9.0 or later (plugin API 2); "
                          "this QEMU's plugin API has no register access");
    }
    if (lp.in_translate) {
        return luaL_error(L, "plugin.read_register: registers are read in an execution callback "
                          "(on_exec, on_mem, on_roi), not while translating");
    }
    luaL_argcheck(L, vcpu >= 0 && (lua_Unsigned)vcpu < lp.n_slots && lp.regs[vcpu] != NULL, 1,
                  "no such vCPU");
    regs = lp.regs[vcpu];
    for (i = 0; i < regs->len; i++) {
        const qemu_plugin_reg_descriptor *d = &((qemu_plugin_reg_descriptor *)(void *)regs->data)[i];

        if (strcmp(d->name, name) == 0) {
            int n;

            if (lp.regbuf == NULL) {
                lp.regbuf = g_byte_array_new();
            }
            g_byte_array_set_size(lp.regbuf, 0);
            n = qemu_plugin_read_register(d->handle, lp.regbuf);
            if (n <= 0) {
                return luaL_error(L, "plugin.read_register: QEMU could not read %s", name);
            }
            if (n <= 8) {
                uint64_t v = 0;
                int b;

                for (b = n - 1; b >= 0; b--) { /* x86: little-endian */
                    v = v << 8 | lp.regbuf->data[b];
                }
                lua_pushinteger(L, (lua_Integer)v);
            } else {
                lua_pushlstring(L, (const char *)lp.regbuf->data, (size_t)n);
            }
            return 1;
        }
    }
    return luaL_error(L, "plugin.read_register: vCPU %d has no register named '%s'", (int)vcpu, name);
}

static const luaL_Reg plugin_funcs[] = {
    {"on_translate", p_on_translate},
    {"on_exit", p_on_exit},
    {"on_roi", p_on_roi},
    {"counter", p_counter},
    {"emit", p_emit},
    {"read_register", p_read_register},
    {NULL, NULL},
};

/* ---- QEMU's callbacks ---- */

static void roi_exec(unsigned int vcpu, void *udata)
{
    uintptr_t u = (uintptr_t)udata;
    unsigned int id = u & 0xffffu, op = (u >> 16) & 0xfu;

    pthread_mutex_lock(&lp.lock);
    if (op == ROI_OP_BEGIN ? roi_enter(id) : roi_leave(id)) {
        roi_event("\"roi\":%u,\"event\":\"%s\",\"vcpu\":%u", id, op == ROI_OP_BEGIN ? "begin" : "end", vcpu);
        if (!lp.failed && lp.ref_roi != LUA_NOREF) {
            lua_pushinteger(lp.L, id);
            lua_pushstring(lp.L, op == ROI_OP_BEGIN ? "begin" : "end");
            lua_pushinteger(lp.L, vcpu);
            call_ref(lp.ref_roi, 3);
        }
    }
    pthread_mutex_unlock(&lp.lock);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t i, n = qemu_plugin_tb_n_insns(tb);
    lua_State *L = lp.L;

    (void)id;
    pthread_mutex_lock(&lp.lock);
    /* markers first: their callbacks run before the script's of the same
     * instruction (QEMU runs them in the order registered) */
    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        unsigned int op, rid;

        if (roi_marker(insn, &op, &rid)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, roi_exec, cb_flags(),
                                                   (void *)((uintptr_t)op << 16 | rid));
        }
    }
    if (!lp.failed && lp.ref_translate != LUA_NOREF) {
        struct lp_handle *h;

        lp.translate_gen++;
        lp.in_translate = true;
        lua_rawgeti(L, LUA_REGISTRYINDEX, lp.ref_translate);
        h = handle_new(L, LP_TB_META);
        h->tb = tb;
        if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
            fail(L);
        }
        lp.in_translate = false;
        lp.translate_gen++;
    }
    pthread_mutex_unlock(&lp.lock);
}

static void at_exit(qemu_plugin_id_t id, void *udata)
{
    char *result = NULL;
    size_t len;
    lua_State *L = lp.L;

    (void)id;
    (void)udata;
    pthread_mutex_lock(&lp.lock);
    if (!lp.failed && lp.ref_exit != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, lp.ref_exit);
        if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
            lp.failed = true;
            lp.error = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
        } else if (json_encode(L, -1, &result, &len) != 0) {
            const char *m = lua_tostring(L, -1);
            size_t ml = strlen(m) + 64;

            lp.failed = true;
            lp.error = malloc(ml);
            if (lp.error == NULL) {
                abort();
            }
            snprintf(lp.error, ml, "plugin.on_exit's result: %s", m);
        }
        lua_settop(L, 0);
    }
    write_result(result);
    free(result);
    pthread_mutex_unlock(&lp.lock);
    /* (the state is not closed: a vCPU thread may still be in a callback) */
}

/* ---- install ---- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (f == NULL) {
        return NULL;
    }
    for (;;) {
        size_t got;

        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            if (buf == NULL) {
                abort();
            }
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            break;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* An install-time failure: message to stderr and out=, then -1. */
static int install_fail(const char *msg)
{
    lp.failed = true;
    lp.error = strdup(msg);
    write_result(NULL);
    fprintf(stderr, "lua: %s\n", msg);
    return -1;
}

static void new_meta(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction index)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_pushcclosure(L, index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *script = NULL, *name = NULL, *args = NULL, *events = NULL;
    char msg[512];
    char *src;
    size_t len;
    lua_State *L;
    int i;

    for (i = 0; i < argc; i++) {
        const char *val;

        if (plugin_arg_match(argv[i], "script", &val)) {
            script = val;
        } else if (plugin_arg_match(argv[i], "name", &val)) {
            name = val;
        } else if (plugin_arg_match(argv[i], "args", &val)) {
            args = val;
        } else if (plugin_arg_match(argv[i], "out", &val)) {
            if (plugin_out_check("lua", val) != 0) {
                return -1;
            }
            lp.out = val;
        } else if (plugin_arg_match(argv[i], "emit", &val)) {
            lp.emit = val;
        } else if (plugin_arg_match(argv[i], "events", &val)) {
            events = val;
        } else {
            return plugin_arg_unknown("lua", argv[i], "script, name, args, out, emit, events");
        }
    }
    if (script == NULL) {
        fprintf(stderr, "lua: script=FILE is needed (the Lua script to run)\n");
        return -1;
    }
    if (roi_setup("lua", info, events) != 0) {
        return -1;
    }
    lp.api2 = qshell_plugin_api2();
    lp.n_slots = LP_MAX_VCPUS_API1;
    if (info->system_emulation && info->system.max_vcpus > 0) {
        lp.n_slots = (unsigned int)info->system.max_vcpus;
    }
    lp.regs = calloc(lp.n_slots, sizeof(*lp.regs));
    if (lp.regs == NULL) {
        abort();
    }
    if (lp.emit != NULL) {
        lp.emit_fd = open(lp.emit, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (lp.emit_fd < 0) {
            fprintf(stderr, "lua: emit=%s: %s\n", lp.emit, strerror(errno));
            return -1;
        }
    }

    L = luaL_newstate();
    if (L == NULL) {
        abort();
    }
    lp.L = L;
    luaL_openlibs(L);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LP_FNS);
    new_meta(L, LP_TB_META, tb_methods, tb_index);
    new_meta(L, LP_INSN_META, insn_methods, insn_index);
    luaL_newlib(L, plugin_funcs);
    if (args != NULL) {
        if (luaL_loadfilex(L, args, "t") != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
            snprintf(msg, sizeof(msg), "args=%s: %s", args, lua_tostring(L, -1));
            return install_fail(msg);
        }
        if (!lua_istable(L, -1)) {
            return install_fail("args= did not give a table");
        }
    } else {
        lua_newtable(L);
    }
    lua_setfield(L, -2, "args");
    lua_pushinteger(L, (lua_Integer)lp.n_slots);
    lua_setfield(L, -2, "max_vcpus");
    lua_pushinteger(L, info->version.cur);
    lua_setfield(L, -2, "api");
    lua_setglobal(L, "plugin");

    src = slurp(script, &len);
    if (src == NULL) {
        snprintf(msg, sizeof(msg), "script=%s: %s", script, strerror(errno));
        return install_fail(msg);
    }
    {
        char chunk[512];

        snprintf(chunk, sizeof(chunk), "@%s", name ? name : script);
        if (luaL_loadbufferx(L, src, len, chunk, "t") != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
            free(src);
            snprintf(msg, sizeof(msg), "%s", lua_tostring(L, -1));
            return install_fail(msg);
        }
    }
    free(src);
    lua_settop(L, 0);

    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
