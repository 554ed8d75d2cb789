/*
 * plugin_util.h - helpers shared by qshell's TCG plugins: argument parsing
 * and writing a result file atomically.
 *
 * Header-only (static inline) so each plugin stays one self-contained .so
 * with nothing exported but the two symbols QEMU looks up. It owns no state
 * and does not know any plugin's arguments: each plugin walks its own argv
 * and calls plugin_arg_match() per known name.
 *
 * Errors go to stderr, not qemu_plugin_outs(): the latter is visible only
 * with `-d plugin`, and an install error must be seen. QEMU itself then adds
 * "Could not load plugin ...: qemu_plugin_install returned error code -1"
 * and exits 1.
 */
#ifndef QSHELL_PLUGIN_UTIL_H
#define QSHELL_PLUGIN_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * If arg is "name=value", point *value at value and return 1; else 0.
 * QEMU hands plugins "name=value" strings with ",," already unescaped to ",",
 * and turns a bare word into "word=on", so every argument has an '='.
 */
static inline int plugin_arg_match(const char *arg, const char *name,
                                   const char **value)
{
    size_t n = strlen(name);

    if (strncmp(arg, name, n) != 0 || arg[n] != '=') {
        return 0;
    }
    *value = arg + n + 1;
    return 1;
}

/*
 * Report an argument no plugin_arg_match() claimed, e.g.
 * "insn: unknown argument 'foo' (known: out, limit)". Returns -1 so that
 * qemu_plugin_install can `return plugin_arg_unknown(...)`.
 */
static inline int plugin_arg_unknown(const char *plugin, const char *arg,
                                     const char *known)
{
    const char *eq = strchr(arg, '=');
    int len = eq ? (int)(eq - arg) : (int)strlen(arg);

    fprintf(stderr, "%s: unknown argument '%.*s' (known: %s)\n", plugin, len,
            arg, known);
    return -1;
}

/*
 * Parse a decimal integer >= min for argument name into *out: 0, or -1 after
 * printing why. strtoull alone would accept "-1", " 5" and "5x".
 */
static inline int plugin_arg_u64(const char *plugin, const char *name,
                                 const char *value, uint64_t min,
                                 uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    if (value[0] < '0' || value[0] > '9') {
        goto bad;
    }
    v = strtoull(value, &end, 10);
    if (errno != 0 || *end != '\0' || v < min) {
        goto bad;
    }
    *out = v;
    return 0;
bad:
    fprintf(stderr, "%s: bad value for %s: '%s' (want an integer >= %llu)\n",
            plugin, name, value, (unsigned long long)min);
    return -1;
}

/*
 * Check at install time that the result file can be written at exit: create
 * and remove "path.tmp". 0, or -1 after printing why, so a typo in out= fails
 * QEMU's start rather than losing the result at the end.
 */
static inline int plugin_out_check(const char *plugin, const char *path)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof(".tmp"));
    FILE *f;
    int err;

    if (tmp == NULL) {
        abort();
    }
    if (plen == 0) {
        fprintf(stderr, "%s: out= needs a file name\n", plugin);
        free(tmp);
        return -1;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", sizeof(".tmp"));
    f = fopen(tmp, "w");
    if (f == NULL) {
        err = errno;
        fprintf(stderr, "%s: cannot write %s: %s\n", plugin, path,
                strerror(err));
        free(tmp);
        return -1;
    }
    fclose(f);
    remove(tmp);
    free(tmp);
    return 0;
}

/*
 * Write len bytes of text to path by way of "path.tmp" and rename(2), so a
 * reader sees either no file, the previous one, or the whole new one, never
 * half of it. Returns 0, or -1 after printing why to stderr.
 */
static inline int plugin_write_file(const char *plugin, const char *path,
                                    const char *text, size_t len)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof(".tmp"));
    FILE *f = NULL;
    int ret = -1;
    int err;

    if (tmp == NULL) {
        abort();
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", sizeof(".tmp"));

    f = fopen(tmp, "w");
    if (f == NULL) {
        goto fail;
    }
    if (fwrite(text, 1, len, f) != len) {
        goto fail;
    }
    err = fclose(f);
    f = NULL;
    if (err != 0) {
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        goto fail;
    }
    ret = 0;
    goto out;
fail:
    err = errno;
    fprintf(stderr, "%s: cannot write %s: %s\n", plugin, path, strerror(err));
    if (f != NULL) {
        fclose(f);
    }
    remove(tmp);
out:
    free(tmp);
    return ret;
}

#endif
