/*
 * fuzz_qmp.c - libFuzzer target for the QMP reader and client in shell/qmp.c.
 *
 * Owns: the oracles for one fuzz input.  Does not own: any QEMU or socket
 * peer beyond a socketpair whose far end holds the input bytes.
 *
 * The whole input is the byte stream QEMU would send; nothing is consumed as
 * a header, so a seed is a real QMP transcript and a crash file can be fed to
 * tests/unit/test_qmp.c as it is.  The split points come from the data (the
 * first and last bytes and the size seed a small PRNG), so a mutation of
 * either end moves them.  Each input runs four ways:
 *
 *  1. whole: one feed of the entire stream, as one large read() would;
 *  2. split: the same bytes in PRNG-sized chunks of 1..64 bytes;
 *  3. capped: split again into a reader whose message cap is small (derived
 *     from the first byte), so the oversize paths run on every input;
 *  4. conn: the stream written to a socketpair, read through qmp_open_fd,
 *     qmp_handshake, qmp_execute, qmp_next_event and qmp_pump, then freed.
 *
 * Every feed goes through an exact-size heap copy with nothing after it (as
 * test_qmp.c does), so a read past the caller's buffer is an ASan report.
 * Oracles, each an abort() with a message: feed returns 0 or -1 and -1 sets
 * a protocol error with a message; the bytes held for the current message
 * never exceed the cap (the reader's memory bound); everything the reader
 * queues is a JSON object; and when neither the whole nor the split run
 * reported any error, both produced the same messages (json_object_equal)
 * and agree on whether a message is left half-read (not checked when a
 * JSON comment may be involved: see has_comment; FUZZ_QMP_STRICT=1 checks
 * it there too).  Leaks are LSan's.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <json-c/json.h>

#include "qmp.h"
#include "util.h"

/* Messages compared per input; a longer stream is still fed and drained. */
#define MAX_KEEP 256
/* Longest chunk of the split runs. */
#define MAX_CHUNK 64
/* Longest stream the conn run writes into the socketpair at once. */
#define MAX_CONN_INPUT (64u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_qmp: invariant broken: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* FUZZ_QMP_STRICT=1: the known, tolerated discrepancies are failures too. */
static int strict = -1;

/*
 * json-c accepts C and C++ comments (QEMU never sends any), and after a
 * complete message it goes on eating whitespace and comments.  So where a
 * read ends decides the outcome: a message and an open comment in one read
 * hold the message back until the comment closes; "{...}/" and a new line
 * lose it to the "expected comment" error; a read that ends at the '}'
 * hands it over at once (known finding, tests/fuzz/crashes/qmp/).  The
 * whole/split comparison skips streams with a '/' outside a string unless
 * strict.  json-c also takes 'single-quoted' strings, whose '"' would fool
 * the scan: with a single quote about, any '/' counts.
 */
static int has_comment(const uint8_t *data, size_t size)
{
    int in_string = 0;
    if (memchr(data, '\'', size)) {
        return memchr(data, '/', size) != NULL;
    }
    for (size_t i = 0; i < size; i++) {
        if (in_string) {
            if (data[i] == '\\') {
                i++;
            } else if (data[i] == '"') {
                in_string = 0;
            }
        } else if (data[i] == '"') {
            in_string = 1;
        } else if (data[i] == '/') {
            return 1;
        }
    }
    return 0;
}

/* xorshift32, seeded from the data; never 0. */
static uint32_t prng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static uint32_t seed_of(const uint8_t *data, size_t size)
{
    uint32_t s = 0x9e3779b9u ^ (uint32_t)size;
    if (size > 0) {
        s ^= (uint32_t)data[0] << 8 | (uint32_t)data[size - 1] << 16;
    }
    return s ? s : 1;
}

/* A string field of a fixed buffer must be NUL-terminated within it. */
static void check_errstr(const char *errstr, size_t cap, const char *who)
{
    if (!memchr(errstr, '\0', cap)) {
        fail("errstr is not NUL-terminated", who);
    }
}

/* One feed through an exact-size heap copy, with the reader's invariants. */
static int feed(struct qmp_reader *r, const uint8_t *buf, size_t len)
{
    char *copy = xmalloc(len ? len : 1);
    memcpy(copy, buf, len);
    int rc = qmp_reader_feed(r, copy, len);
    free(copy);

    if (rc != 0 && rc != -1) {
        fail("qmp_reader_feed returned neither 0 nor -1", NULL);
    }
    check_errstr(r->errstr, sizeof r->errstr, "reader");
    if (rc == -1 && (r->err != QMP_ERR_PROTOCOL || r->errstr[0] == '\0')) {
        fail("a failed feed left no protocol error", r->errstr);
    }
    if (r->pending > r->max_msg) {
        fail("the reader holds more than max_msg bytes of one message", NULL);
    }
    if (qmp_reader_partial(r) != (r->pending > 0)) {
        fail("qmp_reader_partial disagrees with pending", NULL);
    }
    return rc;
}

/* Messages kept from one run, for the whole/split comparison. */
struct run {
    json_object *msg[MAX_KEEP];
    size_t n;       /* messages drained (kept or not) */
    int errors;     /* feeds that returned -1 */
    int partial;    /* half a message left at the end */
};

/* Pop every queued message; each must be an object.  Keeps the first few. */
static void drain(struct qmp_reader *r, struct run *out)
{
    json_object *m;
    while ((m = qmp_reader_get(r))) {
        if (!json_object_is_type(m, json_type_object)) {
            fail("the reader queued a message that is not an object",
                 json_object_to_json_string(m));
        }
        /* Walk it all, as the Lua side's push_value does. */
        size_t len;
        json_object_to_json_string_length(m, JSON_C_TO_STRING_PLAIN, &len);
        if (out && out->n < MAX_KEEP) {
            out->msg[out->n] = m;
        } else {
            json_object_put(m);
        }
        if (out) {
            out->n++;
        }
    }
}

static void run_free(struct run *run)
{
    size_t kept = run->n < MAX_KEEP ? run->n : MAX_KEEP;
    for (size_t i = 0; i < kept; i++) {
        json_object_put(run->msg[i]);
    }
}

/* Feed data in chunks of 1..MAX_CHUNK bytes (0 = all at once). */
static void run_reader(const uint8_t *data, size_t size, size_t max_msg, uint32_t seed,
                       int split, struct run *out)
{
    struct qmp_reader r;
    qmp_reader_init(&r, max_msg);
    size_t off = 0;
    do {
        size_t n = size - off;
        if (split) {
            size_t want = 1 + prng_next(&seed) % MAX_CHUNK;
            n = n < want ? n : want;
        }
        if (feed(&r, data + off, n) < 0 && out) {
            out->errors++;
        }
        off += n;
        /* Drain between feeds now and then, as the client does. */
        if (!split || (seed & 3) == 0) {
            drain(&r, out);
        }
    } while (off < size);
    drain(&r, out);
    if (out) {
        out->partial = qmp_reader_partial(&r);
    }
    qmp_reader_free(&r);
}

static void compare(struct run *whole, struct run *split, int has_comment)
{
    if (whole->errors || split->errors) {
        return; /* resynchronising after bad data depends on where reads end */
    }
    if (has_comment && !strict) {
        return;
    }
    if (whole->n != split->n) {
        char detail[96];
        snprintf(detail, sizeof detail, "%zu messages whole, %zu split", whole->n, split->n);
        fail("a split stream gave other messages than the whole one", detail);
    }
    size_t kept = whole->n < MAX_KEEP ? whole->n : MAX_KEEP;
    for (size_t i = 0; i < kept; i++) {
        if (!json_object_equal(whole->msg[i], split->msg[i])) {
            fail("a split stream gave another message than the whole one",
                 json_object_to_json_string(split->msg[i]));
        }
    }
    if (whole->partial != split->partial) {
        fail("split and whole runs disagree on a half-read message", NULL);
    }
}

static void check_conn(struct qmp_conn *c)
{
    check_errstr(c->errstr, sizeof c->errstr, "conn");
    if (c->err < QMP_OK || c->err > QMP_ERR_PROTOCOL) {
        fail("conn->err out of range", NULL);
    }
}

static void check_event(json_object *ev)
{
    if (!json_object_is_type(ev, json_type_object) ||
        !json_object_object_get_ex(ev, "event", NULL)) {
        fail("qmp_next_event returned something that is not an event",
             json_object_to_json_string(ev));
    }
}

static void check_reply(json_object *reply, int64_t id)
{
    json_object *v;
    if (!json_object_is_type(reply, json_type_object) ||
        !json_object_object_get_ex(reply, "id", &v) || !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) != id) {
        fail("qmp_execute returned a reply with another id", json_object_to_json_string(reply));
    }
}

/*
 * The client over a socketpair whose peer has written the whole input and
 * shut down its side: every wait ends at once, on data or on EOF.
 */
static void run_conn(const uint8_t *data, size_t size)
{
    int sv[2];
    if (size > MAX_CONN_INPUT) {
        return;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        perror("fuzz_qmp: socketpair");
        abort();
    }
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(sv[1], data + off, size - off);
        if (n <= 0) {
            perror("fuzz_qmp: write");
            abort();
        }
        off += (size_t)n;
    }
    shutdown(sv[1], SHUT_WR);

    struct qmp_conn *c = qmp_open_fd(sv[0]);
    check_conn(c);
    if (qmp_handshake(c, 5.0) == 0) {
        if (!c->greeting || !json_object_object_get_ex(c->greeting, "QMP", NULL)) {
            fail("a handshake succeeded without a greeting", NULL);
        }
        json_object *reply = NULL;
        if (qmp_execute(c, "query-status", NULL, 5.0, &reply) == 0) {
            check_reply(reply, 2);
            json_object_put(reply);
        } else if (reply) {
            fail("a failed qmp_execute returned a reply", NULL);
        }
    }
    check_conn(c);
    json_object *ev;
    while (qmp_next_event(c, 0, &ev) == 0) {
        check_event(ev);
        json_object_put(ev);
    }
    if (ev) {
        fail("a failed qmp_next_event returned an event", NULL);
    }
    check_conn(c);
    qmp_pump(c);
    check_conn(c);
    qmp_free(c);
    close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (strict < 0) {
        const char *e = getenv("FUZZ_QMP_STRICT");
        strict = !(e && strcmp(e, "0") == 0); /* strict unless =0 */
    }
    uint32_t seed = seed_of(data, size);
    struct run whole = {0}, split = {0};

    run_reader(data, size, 0, seed, 0, &whole);
    run_reader(data, size, 0, seed, 1, &split);
    compare(&whole, &split, has_comment(data, size));
    run_free(&whole);
    run_free(&split);

    /* A cap of 8..263 bytes: oversized messages on every other input. */
    size_t cap = 8 + (size ? data[0] : 0);
    run_reader(data, size, cap, seed ^ 0x5bd1e995u, 1, NULL);

    run_conn(data, size);
    return 0;
}
