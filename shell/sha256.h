/*
 * sha256.h - SHA-256 through libcrypto (the CPU's SHA instructions where
 * it has them), loaded when first used.
 *
 * Linking libcrypto would map and relocate it at every start of qshell
 * (about 0.8 ms, more than all of Lua's start-up); most runs of qshell
 * never hash anything.  So it is opened with dlopen the first time a hash
 * is asked for.  Call sha256_load() on the main thread before threads
 * hash (it is idempotent and thread-safe, but reports errors there).
 */
#ifndef QSHELL_SHA256_H
#define QSHELL_SHA256_H

#include <stddef.h>

struct sha256_ctx;

/* Load libcrypto: 0, or -1 with the reason in err. */
int sha256_load(char *err, size_t n);
/* A new context (NULL when libcrypto is not loaded, or on OOM). */
struct sha256_ctx *sha256_new(void);
int sha256_update(struct sha256_ctx *c, const void *p, size_t n);
/* Write the digest and free the context. */
int sha256_final(struct sha256_ctx *c, unsigned char md[32]);
void sha256_free(struct sha256_ctx *c);
/* One-shot digest: 0 or -1. */
int sha256_digest(const void *p, size_t n, unsigned char md[32]);

#endif
