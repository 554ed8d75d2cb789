/*
 * ram.h - guest RAM files in plain C (no Lua): the memfd a launched VM's
 * RAM lives in, and RAM images copied and hashed on every core.
 *
 * A checkpoint keeps the guest's RAM as a file of its own (every page at
 * its guest-physical offset, zero pages left as holes), so that restores
 * map it copy-on-write instead of reading it.  ram_image copies such a
 * file (from the memfd of the VM being checkpointed, or from a checkpoint
 * into a memfd), hashing it as it goes: fixed chunks hashed on several
 * threads, the file's digest the SHA-256 of the chunk digests in order.
 * The digest is the content's: holes hash as the zeros they read as.
 */
#ifndef QSHELL_RAM_H
#define QSHELL_RAM_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>

/* The chunk the digest is made of (the manifest names it). */
#define RAM_CHUNK (4 << 20)
#define RAM_MAX_THREADS 16

struct ram_image {
    int src_fd;              /* read with pread: never owned here */
    int dst_fd;              /* written with pwrite, or -1 (hash only); not owned */
    off_t size;
    int nthreads;
    int started;             /* threads started and not joined */
    pthread_t th[RAM_MAX_THREADS];
    int done[2];             /* each thread writes one byte here as it ends */
    int ndone;
    long nchunks;
    atomic_long next;        /* the next chunk a thread takes */
    atomic_int cancel;
    unsigned char (*digests)[32];
    atomic_llong data;       /* bytes written (or, hash only, read as data) */
    pthread_mutex_t lock;    /* guards the first error */
    int inited;              /* lock initialised */
    int err;                 /* errno of the first failure, or 0 */
    const char *op;          /* "read" | "write" | "hash" | "cancelled" */
    char errstr[256];
};

/*
 * A memfd of size bytes (close-on-exec) for a VM's RAM: the
 * fd, or -1 with errno.  Its pages are allocated as the guest writes them.
 */
int ram_memfd(const char *name, off_t size);

/* Can fd be mapped private (the file system supports mmap)?  0, or -1
 * with errno. */
int ram_can_map(int fd);

/*
 * Start copying size bytes of src_fd to dst_fd (-1: hash only) on
 * nthreads threads (1..RAM_MAX_THREADS).  Only data is written: holes of
 * the source and zero pages stay holes of the destination (which is
 * extended to size first when shorter).  0, or -1 with errstr set.
 */
int ram_image_start(struct ram_image *im, int src_fd, int dst_fd, off_t size, int nthreads);
/*
 * Wait for the threads; 0 when done (check im->err), -1 on timeout
 * (timeout < 0: forever) or when *intr became non-zero (the threads are
 * cancelled and joined then).
 */
int ram_image_wait(struct ram_image *im, double timeout, const volatile sig_atomic_t *intr);
/* The file's digest, once ram_image_wait returned 0 with no error. */
void ram_image_digest(const struct ram_image *im, unsigned char out[32]);
/* Cancel and join the threads, free what start allocated.  Idempotent. */
void ram_image_release(struct ram_image *im);

#endif
