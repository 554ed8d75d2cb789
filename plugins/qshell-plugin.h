/*
 * qshell-plugin.h - the part of QEMU's TCG plugin API that qshell's plugins
 * use.
 *
 * Written from QEMU's documented plugin API (include/qemu/qemu-plugin.h and
 * docs/devel/tcg-plugins.rst) as of QEMU 7.2, plugin API version 1 (QEMU
 * 7.2 reports min=0, cur=1), because Debian's QEMU ships no qemu-plugin.h.
 * Every function declared here was checked against the dynamic symbols of
 * Debian 12's qemu-system-x86_64 7.2 (`nm -D`); they are resolved at dlopen
 * time from the QEMU binary, so plugins link against nothing.
 *
 * It owns only declarations: names, signatures, enum values and the
 * qemu_info_t layout must match QEMU's exactly, which is why the names
 * (including the typedefs) are QEMU's and not qshell's style. Of the
 * memory, disassembly and register parts it declares what the lua plugin
 * uses; nothing of the syscall part.
 *
 * Two API generations, one .so.  QEMU 7.2 and 8.x take API version 1 (and
 * refuse 2); 9.0 and later take 2 to 4 (and refuse 1), removed the inline
 * ops on a fixed address and qemu_plugin_n_vcpus, and added scoreboards
 * (per-vCPU counters that inline ops add to).  So the functions of only one
 * generation are declared weak (NULL where this QEMU lacks them), and
 * QSHELL_PLUGIN_VERSION_DEFINE exports version 1, turned into 2 by a
 * constructor - which runs inside dlopen(), before QEMU reads the version -
 * when the QEMU that loads the plugin has scoreboards.  Checked against the
 * dynamic symbols of Debian's 7.2 and bookworm-backports' 10.0.2.
 */
#ifndef QSHELL_QSHELL_PLUGIN_H
#define QSHELL_QSHELL_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Plugins are built with -fvisibility=hidden; only the two symbols QEMU
 * looks up with dlsym (qemu_plugin_version, qemu_plugin_install) are
 * exported.
 */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

/* The API versions these declarations describe. */
#define QEMU_PLUGIN_VERSION 1
#define QSHELL_PLUGIN_VERSION_V2 2

/* A function of one API generation: NULL when the loading QEMU lacks it. */
#define QSHELL_WEAK __attribute__((weak, visibility("default")))

/* Opaque id QEMU gives a plugin at install time. */
typedef uint64_t qemu_plugin_id_t;

/*
 * What QEMU tells a plugin at install time. Only valid during
 * qemu_plugin_install(): copy what you keep. The union is anonymous in
 * QEMU's header, so its member is reached as info->system.smp_vcpus.
 */
typedef struct qemu_info_t {
    const char *target_name;       /* e.g. "x86_64" */
    struct {
        int min;                   /* oldest API version still supported */
        int cur;                   /* newest API version (1 in 7.2) */
    } version;
    bool system_emulation;         /* false for linux-user */
    union {
        struct {
            int smp_vcpus;         /* vCPUs at start */
            int max_vcpus;         /* vCPUs possible with hotplug */
        } system;
    };
} qemu_info_t;

/*
 * Every plugin defines these two. QEMU refuses a plugin without
 * qemu_plugin_version or with one outside [min, cur]; a non-zero return
 * from qemu_plugin_install makes QEMU exit 1. argv holds "name=value"
 * strings (",," already turned into ","), valid for the plugin's lifetime.
 */
extern QEMU_PLUGIN_EXPORT int qemu_plugin_version;
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv);

/* Callback types. */
typedef void (*qemu_plugin_simple_cb_t)(qemu_plugin_id_t id);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id,
                                             unsigned int vcpu_index);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index,
                                            void *userdata);

/* Opaque handles, valid only inside the translation callback. */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id,
                                               struct qemu_plugin_tb *tb);

/* Whether a callback touches guest registers (unused by QEMU 7.2). */
enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

/*
 * Inline operations: code QEMU emits into the translated block itself.
 * API version 1 has exactly one: add an immediate to a uint64_t at a fixed
 * address. The add is not atomic, and the address is fixed at translation
 * time, so it cannot address a per-vCPU slot (blocks are shared by vCPUs).
 */
enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64,
};

/* Lifecycle. */
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id,
                                       qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
                                    qemu_plugin_udata_cb_t cb,
                                    void *userdata);

/* Translation: called each time a block is translated (not executed). */
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *
qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
/* An instruction's length in bytes (its bytes: see plugin_roi.h). */
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);

/* Execution: registered from the translation callback. */
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb,
                                          qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags,
                                          void *userdata);
/* API 1 only (removed in 9.0). */
QSHELL_WEAK void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
                                                          enum qemu_plugin_op op,
                                                          void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags,
                                            void *userdata);
QSHELL_WEAK void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                            enum qemu_plugin_op op,
                                                            void *ptr, uint64_t imm);

/* Number of vCPUs (-1 in linux-user); API 1 only. */
QSHELL_WEAK int qemu_plugin_n_vcpus(void);
QSHELL_WEAK int qemu_plugin_n_max_vcpus(void);

/*
 * API 2 (QEMU 9.0+): scoreboards.  A scoreboard holds one element per vCPU
 * (grown by QEMU as vCPUs appear); a qemu_plugin_u64 names a uint64_t in
 * it.  An inline per-vCPU add is emitted into the translated block and adds
 * to the running vCPU's own element: exact and thread-safe with -smp > 1.
 */
struct qemu_plugin_scoreboard;
typedef struct {
    struct qemu_plugin_scoreboard *score;
    size_t offset;
} qemu_plugin_u64;

QSHELL_WEAK struct qemu_plugin_scoreboard *qemu_plugin_scoreboard_new(size_t element_size);
QSHELL_WEAK void qemu_plugin_scoreboard_free(struct qemu_plugin_scoreboard *score);
QSHELL_WEAK void *qemu_plugin_scoreboard_find(struct qemu_plugin_scoreboard *score,
                                              unsigned int vcpu_index);
QSHELL_WEAK void qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(struct qemu_plugin_tb *tb,
                                                                   enum qemu_plugin_op op,
                                                                   qemu_plugin_u64 entry,
                                                                   uint64_t imm);
QSHELL_WEAK void qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(struct qemu_plugin_insn *insn,
                                                                     enum qemu_plugin_op op,
                                                                     qemu_plugin_u64 entry,
                                                                     uint64_t imm);
QSHELL_WEAK uint64_t qemu_plugin_u64_get(qemu_plugin_u64 entry, unsigned int vcpu_index);
QSHELL_WEAK uint64_t qemu_plugin_u64_sum(qemu_plugin_u64 entry);
/* vCPUs started so far (API 2). */
QSHELL_WEAK int qemu_plugin_num_vcpus(void);

/* Does the QEMU that loaded this plugin speak API 2 (9.0+)? */
static inline bool qshell_plugin_api2(void)
{
    return qemu_plugin_scoreboard_new != NULL;
}

/*
 * Defines the exported qemu_plugin_version: 1, or 2 when the loading QEMU
 * has scoreboards (decided in a constructor, before QEMU reads it).
 */
#define QSHELL_PLUGIN_VERSION_DEFINE                                     \
    QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;    \
    __attribute__((constructor)) static void qshell_plugin_pick_api(void) \
    {                                                                    \
        if (qshell_plugin_api2()) {                                      \
            qemu_plugin_version = QSHELL_PLUGIN_VERSION_V2;              \
        }                                                                \
    }

/* An instruction's address, its text (malloc'd, the caller frees), and
 * the symbol it is in (NULL when unknown); all API generations. */
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *insn);
const char *qemu_plugin_insn_symbol(const struct qemu_plugin_insn *insn);

/* Memory accesses: a callback per access of an instruction. */
typedef uint32_t qemu_plugin_meminfo_t;
enum qemu_plugin_mem_rw {
    QEMU_PLUGIN_MEM_R = 1,
    QEMU_PLUGIN_MEM_W,
    QEMU_PLUGIN_MEM_RW,
};
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index,
                                          qemu_plugin_meminfo_t info,
                                          uint64_t vaddr, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn,
                                      qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw,
                                      void *userdata);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);

/*
 * API 2 (9.0+): registers, read from a vCPU callback registered with
 * QEMU_PLUGIN_CB_R_REGS.  The list and the buffer are glib's GArray and
 * GByteArray (glib is QEMU's, resolved like the rest); only their leading
 * fields are declared.
 */
struct qemu_plugin_register;
typedef struct {
    struct qemu_plugin_register *handle;
    const char *name;
    const char *feature;
} qemu_plugin_reg_descriptor;
typedef struct {
    char *data;
    unsigned int len;
} qshell_GArray;
typedef struct {
    uint8_t *data;
    unsigned int len;
} qshell_GByteArray;
QSHELL_WEAK qshell_GArray *qemu_plugin_get_registers(void);
QSHELL_WEAK int qemu_plugin_read_register(struct qemu_plugin_register *handle,
                                          qshell_GByteArray *buf);
QSHELL_WEAK qshell_GByteArray *g_byte_array_new(void);
QSHELL_WEAK qshell_GByteArray *g_byte_array_set_size(qshell_GByteArray *array,
                                                     unsigned int length);
QSHELL_WEAK char *g_array_free(qshell_GArray *array, int free_segment);

/* Text to QEMU's log; shown only with `-d plugin` (stderr or -D FILE). */
void qemu_plugin_outs(const char *string);

/*
 * Parses "on|yes|true|off|no|false" for argument name; true on success.
 * Present since QEMU 6.1 (exported by 7.2).
 */
bool qemu_plugin_bool_parse(const char *name, const char *val, bool *ret);

#endif
