/*
 * ram.c - guest RAM files: memfds for launched VMs, and RAM images copied
 * and hashed on several threads (see ram.h).
 *
 * The threads take chunks in turn from an atomic counter; each chunk is
 * looked up with SEEK_DATA first (a chunk that is all hole is neither read
 * nor written: its digest is the zero chunk's), read with pread, hashed,
 * and its non-zero pages written at the same offsets with pwrite.  pread
 * of a hole in a memfd returns zeros without allocating a page (a mapping
 * would allocate one), and pread/pwrite leave the shared file offset
 * alone, so the threads need no lock but for the first error.  The
 * threads run with every signal blocked: signals stay with the main
 * thread, which waits with poll() and gives up on Ctrl-C.
 */
#define _GNU_SOURCE /* memfd_create, SEEK_DATA */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ram.h"
#include "sha256.h"
#include "util.h"

#define PAGE 4096

int ram_memfd(const char *name, off_t size)
{
#ifdef __linux__
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    if (ftruncate(fd, size) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
#else
    QS_UNUSED(name);
    QS_UNUSED(size);
    errno = ENOSYS;
    return -1;
#endif
}

int ram_can_map(int fd)
{
    void *p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        return -1;
    }
    munmap(p, PAGE);
    return 0;
}

static void set_error(struct ram_image *im, int err, const char *op)
{
    pthread_mutex_lock(&im->lock);
    if (!im->op) {
        im->err = err;
        im->op = op;
    }
    pthread_mutex_unlock(&im->lock);
    atomic_store(&im->cancel, 1);
}

static int is_zero(const unsigned char *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < n / sizeof *w; i++) {
        if (w[i]) {
            return 0;
        }
    }
    return 1;
}

static int read_full(int fd, unsigned char *buf, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, buf, n, off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (r == 0) {
            memset(buf, 0, n); /* past the end: reads as zeros, as a hole */
            return 0;
        }
        buf += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

static int write_full(int fd, const unsigned char *buf, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, buf, n, off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        buf += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* Is [off, off + len) all hole in fd?  (No: also when SEEK_DATA is not
 * supported, and the chunk is then read.) */
static int all_hole(int fd, off_t off, off_t len)
{
    off_t d = lseek(fd, off, SEEK_DATA);
    if (d < 0) {
        return errno == ENXIO; /* no data from off to the end */
    }
    return d >= off + len;
}

/* One chunk: hash it, write its non-zero pages.  0 or -1 (error set). */
static int do_chunk(struct ram_image *im, long c, unsigned char *buf, const unsigned char *zero_md)
{
    off_t off = (off_t)c * RAM_CHUNK;
    size_t len = (size_t)(im->size - off < RAM_CHUNK ? im->size - off : RAM_CHUNK);
    if (all_hole(im->src_fd, off, (off_t)len)) {
        if (len == RAM_CHUNK) {
            memcpy(im->digests[c], zero_md, 32);
            return 0;
        }
        memset(buf, 0, len);
    } else if (read_full(im->src_fd, buf, len, off) < 0) {
        set_error(im, errno, "read");
        return -1;
    }
    if (sha256_digest(buf, len, im->digests[c]) < 0) {
        set_error(im, ENOMEM, "hash");
        return -1;
    }
    long long data = 0;
    for (size_t p = 0; p < len;) {
        size_t step = len - p < PAGE ? len - p : PAGE;
        if (is_zero(buf + p, step)) {
            p += step;
            continue;
        }
        size_t q = p + step;
        while (q < len) {
            size_t s = len - q < PAGE ? len - q : PAGE;
            if (is_zero(buf + q, s)) {
                break;
            }
            q += s;
        }
        if (im->dst_fd >= 0 && write_full(im->dst_fd, buf + p, q - p, off + (off_t)p) < 0) {
            set_error(im, errno, "write");
            return -1;
        }
        data += (long long)(q - p);
        p = q;
    }
    atomic_fetch_add(&im->data, data);
    return 0;
}

static void *image_thread(void *arg)
{
    struct ram_image *im = arg;
    unsigned char *buf = malloc(RAM_CHUNK);
    unsigned char zero_md[32];
    if (!buf) {
        set_error(im, ENOMEM, "read");
    } else {
        memset(buf, 0, RAM_CHUNK);
        if (sha256_digest(buf, RAM_CHUNK, zero_md) < 0) {
            set_error(im, ENOMEM, "hash");
        }
        while (!atomic_load(&im->cancel)) {
            long c = atomic_fetch_add(&im->next, 1);
            if (c >= im->nchunks || do_chunk(im, c, buf, zero_md) < 0) {
                break;
            }
        }
        free(buf);
    }
    if (write(im->done[1], "x", 1) < 0) {
        /* the pipe holds at most one byte per thread: cannot fill */
    }
    return NULL;
}

int ram_image_start(struct ram_image *im, int src_fd, int dst_fd, off_t size, int nthreads)
{
    memset(im, 0, sizeof *im);
    im->done[0] = im->done[1] = -1;
    im->src_fd = src_fd;
    im->dst_fd = dst_fd;
    im->size = size;
    pthread_mutex_init(&im->lock, NULL);
    im->inited = 1;
    if (nthreads < 1) {
        nthreads = 1;
    }
    if (nthreads > RAM_MAX_THREADS) {
        nthreads = RAM_MAX_THREADS;
    }
    im->nchunks = (long)((size + RAM_CHUNK - 1) / RAM_CHUNK);
    if (nthreads > im->nchunks) {
        nthreads = im->nchunks > 0 ? (int)im->nchunks : 1;
    }
    im->digests = xcalloc((size_t)(im->nchunks > 0 ? im->nchunks : 1), 32);
    if (sha256_load(im->errstr, sizeof im->errstr) < 0) {
        return -1;
    }
    struct stat st;
    if (dst_fd >= 0 && (fstat(dst_fd, &st) < 0 || (st.st_size < size && ftruncate(dst_fd, size) < 0))) {
        snprintf(im->errstr, sizeof im->errstr, "truncate: %s", strerror(errno));
        return -1;
    }
    if (pipe2(im->done, O_CLOEXEC) < 0) {
        snprintf(im->errstr, sizeof im->errstr, "pipe: %s", strerror(errno));
        return -1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < nthreads; i++) {
        int rc = pthread_create(&im->th[i], NULL, image_thread, im);
        if (rc != 0) {
            snprintf(im->errstr, sizeof im->errstr, "cannot start a thread: %s", strerror(rc));
            atomic_store(&im->cancel, 1);
            break;
        }
        im->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    im->started = im->nthreads > 0;
    return im->nthreads == nthreads ? 0 : -1;
}

static void join_all(struct ram_image *im)
{
    if (!im->started) {
        return;
    }
    for (int i = 0; i < im->nthreads; i++) {
        pthread_join(im->th[i], NULL);
    }
    im->started = 0;
}

int ram_image_wait(struct ram_image *im, double timeout, const volatile sig_atomic_t *intr)
{
    double deadline = deadline_after(timeout);
    while (im->started && im->ndone < im->nthreads) {
        if (intr && *intr) {
            atomic_store(&im->cancel, 1);
            join_all(im);
            errno = EINTR;
            return -1;
        }
        int ms = deadline_ms(deadline, 100);
        if (ms == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pf = {.fd = im->done[0], .events = POLLIN};
        if (poll(&pf, 1, ms) > 0) {
            char b[RAM_MAX_THREADS];
            ssize_t n = read(im->done[0], b, sizeof b);
            if (n > 0) {
                im->ndone += (int)n;
            }
        }
    }
    join_all(im);
    if (im->op) {
        snprintf(im->errstr, sizeof im->errstr, "%s: %s", im->op, strerror(im->err));
    }
    return 0;
}

void ram_image_digest(const struct ram_image *im, unsigned char out[32])
{
    struct sha256_ctx *ctx = sha256_new();
    if (!ctx) {
        abort(); /* loaded before the threads started; OOM */
    }
    for (long c = 0; c < im->nchunks; c++) {
        sha256_update(ctx, im->digests[c], 32);
    }
    sha256_final(ctx, out);
}

void ram_image_release(struct ram_image *im)
{
    atomic_store(&im->cancel, 1);
    join_all(im);
    for (int i = 0; i < 2; i++) {
        if (im->done[i] >= 0) {
            close(im->done[i]);
            im->done[i] = -1;
        }
    }
    free(im->digests);
    im->digests = NULL;
    if (im->inited) {
        pthread_mutex_destroy(&im->lock);
        im->inited = 0;
    }
    im->nthreads = 0;
    im->nchunks = 0;
}
