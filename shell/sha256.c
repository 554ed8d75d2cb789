/*
 * sha256.c - SHA-256 from libcrypto, opened with dlopen on first use (see
 * sha256.h).  The EVP declarations come from OpenSSL's header, so the
 * pointers below have the exact types of the functions they hold.
 */
#define _GNU_SOURCE

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "sha256.h"

#ifndef QS_LIBCRYPTO
#define QS_LIBCRYPTO "libcrypto.so.3"
#endif

static struct {
    __typeof__(EVP_MD_CTX_new) *ctx_new;
    __typeof__(EVP_MD_CTX_free) *ctx_free;
    __typeof__(EVP_DigestInit_ex) *init;
    __typeof__(EVP_DigestUpdate) *update;
    __typeof__(EVP_DigestFinal_ex) *final;
    __typeof__(EVP_Digest) *digest;
    const EVP_MD *md;
    int ok;
    char err[256];
} lib;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
    void *h = dlopen(QS_LIBCRYPTO, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        h = dlopen("libcrypto.so", RTLD_NOW | RTLD_LOCAL);
    }
    if (!h) {
        snprintf(lib.err, sizeof lib.err, "cannot load %s for SHA-256: %s", QS_LIBCRYPTO, dlerror());
        return;
    }
    __typeof__(EVP_sha256) *sha = (__typeof__(EVP_sha256) *)dlsym(h, "EVP_sha256");
    lib.ctx_new = (__typeof__(EVP_MD_CTX_new) *)dlsym(h, "EVP_MD_CTX_new");
    lib.ctx_free = (__typeof__(EVP_MD_CTX_free) *)dlsym(h, "EVP_MD_CTX_free");
    lib.init = (__typeof__(EVP_DigestInit_ex) *)dlsym(h, "EVP_DigestInit_ex");
    lib.update = (__typeof__(EVP_DigestUpdate) *)dlsym(h, "EVP_DigestUpdate");
    lib.final = (__typeof__(EVP_DigestFinal_ex) *)dlsym(h, "EVP_DigestFinal_ex");
    lib.digest = (__typeof__(EVP_Digest) *)dlsym(h, "EVP_Digest");
    if (!sha || !lib.ctx_new || !lib.ctx_free || !lib.init || !lib.update || !lib.final || !lib.digest) {
        snprintf(lib.err, sizeof lib.err, "%s lacks the EVP digest functions", QS_LIBCRYPTO);
        return;
    }
    lib.md = sha();
    lib.ok = lib.md != NULL;
    if (!lib.ok) {
        snprintf(lib.err, sizeof lib.err, "%s has no SHA-256", QS_LIBCRYPTO);
    }
}

int sha256_load(char *err, size_t n)
{
    pthread_once(&once, load);
    if (!lib.ok && err && n) {
        snprintf(err, n, "%s", lib.err);
    }
    return lib.ok ? 0 : -1;
}

struct sha256_ctx *sha256_new(void)
{
    if (sha256_load(NULL, 0) < 0) {
        return NULL;
    }
    EVP_MD_CTX *c = lib.ctx_new();
    if (c && lib.init(c, lib.md, NULL) != 1) {
        lib.ctx_free(c);
        c = NULL;
    }
    return (struct sha256_ctx *)c;
}

int sha256_update(struct sha256_ctx *c, const void *p, size_t n)
{
    return lib.update((EVP_MD_CTX *)c, p, n) == 1 ? 0 : -1;
}

int sha256_final(struct sha256_ctx *c, unsigned char md[32])
{
    unsigned int len = 0;
    int rc = lib.final((EVP_MD_CTX *)c, md, &len) == 1 && len == 32 ? 0 : -1;
    lib.ctx_free((EVP_MD_CTX *)c);
    return rc;
}

void sha256_free(struct sha256_ctx *c)
{
    if (c) {
        lib.ctx_free((EVP_MD_CTX *)c);
    }
}

int sha256_digest(const void *p, size_t n, unsigned char md[32])
{
    unsigned int len = 0;
    if (sha256_load(NULL, 0) < 0) {
        return -1;
    }
    return lib.digest(p, n, md, &len, lib.md, NULL) == 1 && len == 32 ? 0 : -1;
}
