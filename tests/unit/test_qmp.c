/*
 * test_qmp.c - unit tests of shell/qmp.c: the reader and the connection.
 *
 * Owns: a tiny harness (CHECK records file:line and goes on; tests are rows
 * of one table; the last line is "N passed, N failed"), and canned QMP
 * traffic.  Does not own: any QEMU; tests/unit/fakeqmp.c is the scripted
 * peer for the Lua layer, tests/integration/ talks to a real qemu.
 *
 * The reader tests do no I/O (hiredis's test_reply_reader): a stream
 * recorded from QEMU 7.2 is fed split at every byte boundary.  Every feed
 * goes through an exact-size heap copy with no NUL after it, so a read past
 * the end of the caller's buffer shows up under valgrind or ASan.
 *
 * The connection tests use real sockets: the test writes canned bytes to
 * the peer end before the call, or forks a peer when it must react to what
 * the client sent.  A forked peer reports what it read over a pipe and
 * leaves the checking to the parent.
 *
 *   build/test_qmp [substring]     run the tests whose name contains it
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "qmp.h"
#include "util.h"

#include "check.h"

/* ---- harness ---- */


/* ---- JSON helpers ---- */

/* The member at a dotted path ("return.status"), or NULL. */
static json_object *jpath(json_object *o, const char *path)
{
    char key[64];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof key) {
            return NULL;
        }
        memcpy(key, path, n);
        key[n] = '\0';
        if (!json_object_object_get_ex(o, key, &o)) {
            return NULL;
        }
        path += n + (path[n] == '.');
    }
    return o;
}

static const char *jstr(json_object *o, const char *path)
{
    json_object *v = jpath(o, path);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* The integer at path, or INT64_MIN + 1 when it is missing or not an int. */
#define JNONE (INT64_MIN + 1)
static int64_t jint(json_object *o, const char *path)
{
    json_object *v = jpath(o, path);
    return v && json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : JNONE;
}

/* ---- canned traffic, recorded from qemu-system-x86_64 7.2 ---- */

#define GREETING                                                                         \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "   \
    "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n"

/* greeting, qmp_capabilities' return, an event, a -mon pretty=on reply, an error. */
static const char *const exchange[] = {
    GREETING,
    "{\"return\": {}, \"id\": 1}\r\n",
    "{\"timestamp\": {\"seconds\": 1795535384, \"microseconds\": 290794}, "
    "\"event\": \"STOP\"}\r\n",
    "{\r\n    \"return\": {\r\n        \"status\": \"running\",\r\n"
    "        \"singlestep\": false,\r\n        \"running\": true\r\n    },\r\n"
    "    \"id\": 2\r\n}\r\n",
    "{\"id\": 4, \"error\": {\"class\": \"CommandNotFound\", "
    "\"desc\": \"The command no-such has not been found\"}}\r\n",
};
#define NEXCHANGE (sizeof exchange / sizeof exchange[0])

/* The whole exchange as one stream; caller frees. */
static char *exchange_stream(size_t *len)
{
    struct strbuf sb;
    sb_init(&sb);
    for (size_t i = 0; i < NEXCHANGE; i++) {
        sb_adds(&sb, exchange[i]);
    }
    *len = sb.len;
    return sb.buf;
}

/* Feed through an exact-size heap copy: no NUL, nothing readable after it. */
static int feed(struct qmp_reader *r, const char *data, size_t len)
{
    char *copy = xmalloc(len ? len : 1);
    memcpy(copy, data, len);
    int rc = qmp_reader_feed(r, copy, len);
    free(copy);
    return rc;
}

static int feeds(struct qmp_reader *r, const char *s)
{
    return feed(r, s, strlen(s));
}

/* Pop every queued message into out[] (at most max); returns the count. */
static size_t drain(struct qmp_reader *r, json_object **out, size_t max)
{
    size_t n = 0;
    json_object *m;
    while ((m = qmp_reader_get(r))) {
        if (n < max) {
            out[n++] = m;
        } else {
            json_object_put(m);
            n++;
        }
    }
    return n;
}

static void put_all(json_object **msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_object_put(msgs[i]);
        msgs[i] = NULL;
    }
}

/* The contents that must come out of the exchange, checked field by field. */
static void check_exchange_contents(json_object **m)
{
    CHECK_INT(jint(m[0], "QMP.version.qemu.major"), 7);
    CHECK_INT(jint(m[0], "QMP.version.qemu.minor"), 2);
    CHECK_INT(jint(m[0], "QMP.version.qemu.micro"), 22);
    CHECK_STR(jstr(m[0], "QMP.version.package"), "Debian 1:7.2+dfsg-7+deb12u18+b3");
    json_object *caps = jpath(m[0], "QMP.capabilities");
    CHECK(caps && json_object_is_type(caps, json_type_array) &&
          json_object_array_length(caps) == 1);
    CHECK_INT(jint(m[1], "id"), 1);
    json_object *ret = jpath(m[1], "return");
    CHECK(ret && json_object_is_type(ret, json_type_object) &&
          json_object_object_length(ret) == 0);
    CHECK_STR(jstr(m[2], "event"), "STOP");
    CHECK_INT(jint(m[2], "timestamp.seconds"), 1795535384);
    CHECK_INT(jint(m[2], "timestamp.microseconds"), 290794);
    CHECK_INT(jint(m[3], "id"), 2);
    CHECK_STR(jstr(m[3], "return.status"), "running");
    json_object *ss = jpath(m[3], "return.singlestep");
    CHECK(ss && json_object_is_type(ss, json_type_boolean) && !json_object_get_boolean(ss));
    CHECK_INT(jint(m[4], "id"), 4);
    CHECK_STR(jstr(m[4], "error.class"), "CommandNotFound");
    CHECK_STR(jstr(m[4], "error.desc"), "The command no-such has not been found");
}

/*
 * Compare what came out with the exchange; returns 1 when equal.  Silent,
 * so that the every-split loops report one failure, not hundreds.
 */
static int same_as_exchange(json_object **got, size_t n)
{
    if (n != NEXCHANGE) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *want = json_tokener_parse(exchange[i]);
        int eq = want && json_object_equal(got[i], want);
        json_object_put(want);
        if (!eq) {
            return 0;
        }
    }
    return 1;
}

/* ---- reader tests ---- */

static void test_exchange_whole(void)
{
    size_t len;
    char *s = exchange_stream(&len);
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    json_object *m[8] = {0};

    CHECK_INT(feed(&r, s, len), 0);
    CHECK(!qmp_reader_partial(&r));
    size_t n = drain(&r, m, 8);
    CHECK_INT(n, NEXCHANGE);
    if (n == NEXCHANGE) {
        CHECK(same_as_exchange(m, n));
        check_exchange_contents(m);
    }
    CHECK_INT(r.err, 0);
    put_all(m, n < 8 ? n : 8);
    qmp_reader_free(&r);
    free(s);
}

static void test_exchange_every_split(void)
{
    size_t len;
    char *s = exchange_stream(&len);
    int bad = 0;

    for (size_t k = 0; k <= len && !bad; k++) {
        struct qmp_reader r;
        qmp_reader_init(&r, 0);
        json_object *m[8] = {0};
        int rc1 = feed(&r, s, k);
        int rc2 = feed(&r, s + k, len - k);
        size_t n = drain(&r, m, 8);
        if (!CHECKF(rc1 == 0 && rc2 == 0, "split at %zu: feed returned %d, %d (%s)", k, rc1,
                    rc2, r.errstr) ||
            !CHECKF(same_as_exchange(m, n), "split at %zu: %zu messages, not the exchange", k,
                    n) ||
            !CHECKF(!qmp_reader_partial(&r), "split at %zu: partial after the last message",
                    k)) {
            bad = 1;
        }
        put_all(m, n < 8 ? n : 8);
        qmp_reader_free(&r);
    }
    free(s);
}

/*
 * One byte at a time: each message comes out exactly when its closing brace
 * is fed, and the reader is partial exactly from its first byte until then.
 */
static void test_exchange_byte_at_a_time(void)
{
    size_t len, start[NEXCHANGE], close_at[NEXCHANGE], off = 0;
    char *s = exchange_stream(&len);
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    json_object *m[8] = {0};
    size_t n = 0;

    for (size_t j = 0; j < NEXCHANGE; j++) {
        start[j] = off;
        close_at[j] = off + (size_t)(strrchr(exchange[j], '}') - exchange[j]);
        off += strlen(exchange[j]);
    }
    for (size_t i = 0; i < len; i++) {
        if (!CHECKF(feed(&r, s + i, 1) == 0, "byte %zu: %s", i, r.errstr)) {
            break;
        }
        size_t want_out = 0;
        int want_partial = 0;
        for (size_t j = 0; j < NEXCHANGE; j++) {
            want_out += i == close_at[j];
            want_partial |= i >= start[j] && i < close_at[j];
        }
        size_t got = drain(&r, m + n, 8 - n);
        n += got;
        if (!CHECKF(got == want_out, "byte %zu: %zu messages out, expected %zu", i, got,
                    want_out) ||
            !CHECKF(qmp_reader_partial(&r) == want_partial, "byte %zu: partial is %d", i,
                    qmp_reader_partial(&r))) {
            break;
        }
    }
    CHECK_INT(n, NEXCHANGE);
    if (n == NEXCHANGE) {
        CHECK(same_as_exchange(m, n));
        check_exchange_contents(m);
    }
    put_all(m, n < 8 ? n : 8);
    qmp_reader_free(&r);
    free(s);
}

static void test_several_per_feed(void)
{
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    json_object *m[4] = {0};

    CHECK_INT(feeds(&r, "{\"return\": {}, \"id\": 1}\r\n{\"return\": {}, \"id\": 2}\r\n"), 0);
    size_t n = drain(&r, m, 4);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_INT(jint(m[0], "id"), 1);
        CHECK_INT(jint(m[1], "id"), 2);
    }
    put_all(m, n);

    /* Three, no separator at all, then lots of whitespace. */
    CHECK_INT(feeds(&r, "{\"a\":1}{\"a\":2}  \r\n\t\n\r\n {\"a\":3}\r\n\r\n   \n"), 0);
    n = drain(&r, m, 4);
    CHECK_INT(n, 3);
    for (size_t i = 0; i < n && i < 3; i++) {
        CHECK_INT(jint(m[i], "a"), (int64_t)i + 1);
    }
    CHECK(!qmp_reader_partial(&r));
    put_all(m, n);

    /* Two whole messages and the start of a third. */
    CHECK_INT(feeds(&r, "{\"a\":1}\r\n{\"a\":2}\r\n{\"a\":"), 0);
    CHECK_INT(drain(&r, m, 4), 2);
    put_all(m, 2);
    CHECK(qmp_reader_partial(&r));
    CHECK_INT(feeds(&r, "3}\r\n"), 0);
    n = drain(&r, m, 4);
    CHECK_INT(n, 1);
    CHECK_INT(n ? jint(m[0], "a") : 0, 3);
    put_all(m, n);
    CHECK_INT(feeds(&r, ""), 0);
    CHECK_INT(feeds(&r, "\r\n"), 0);
    CHECK(qmp_reader_get(&r) == NULL);
    qmp_reader_free(&r);
}

/* An event that arrives between a command and its reply is just a message. */
static void test_event_between(void)
{
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    json_object *m[4] = {0};
    const char *s = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}"
                    "\r\n{\"return\": {}, \"id\": 3}\r\n";
    CHECK_INT(feed(&r, s, 40), 0);
    CHECK_INT(feed(&r, s + 40, strlen(s) - 40), 0);
    size_t n = drain(&r, m, 4);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(jstr(m[0], "event"), "STOP");
        CHECK_INT(jint(m[1], "id"), 3);
    }
    put_all(m, n);
    qmp_reader_free(&r);
}

/* A line of non-JSON: an error, and the messages around it survive. */
static void test_garbage_line(void)
{
    const char *s = "{\"a\": 1}\r\nthis is not JSON\r\n{\"return\": {}, \"id\": 7}\r\n";
    size_t len = strlen(s);
    int bad = 0;

    for (size_t k = 0; k <= len && !bad; k++) {
        struct qmp_reader r;
        qmp_reader_init(&r, 0);
        json_object *m[4] = {0};
        int rc1 = feed(&r, s, k);
        int rc2 = feed(&r, s + k, len - k);
        size_t n = drain(&r, m, 4);
        bad |= !CHECKF(rc1 < 0 || rc2 < 0, "split at %zu: garbage not reported", k);
        bad |= !CHECKF(r.err == QMP_ERR_PROTOCOL && r.errstr[0], "split at %zu: err %d \"%s\"",
                       k, r.err, r.errstr);
        bad |= !CHECKF(n == 2 && jint(m[0], "a") == 1 && jint(m[1], "id") == 7,
                       "split at %zu: %zu messages around the garbage", k, n);
        bad |= !CHECKF(!qmp_reader_partial(&r), "split at %zu: partial at the end", k);
        put_all(m, n < 4 ? n : 4);
        qmp_reader_free(&r);
    }

    /* The same one byte at a time. */
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    int errors = 0;
    for (size_t i = 0; i < len; i++) {
        errors += feed(&r, s + i, 1) < 0;
    }
    CHECK(errors >= 1);
    json_object *m[4] = {0};
    size_t n = drain(&r, m, 4);
    CHECK(n == 2 && jint(m[1], "id") == 7);
    put_all(m, n < 4 ? n : 4);
    qmp_reader_free(&r);
}

/*
 * The error text quotes the bad data; it must stop at the end of the fed
 * buffer, which is not NUL-terminated (a recv() buffer never is).
 */
static void test_garbage_errstr(void)
{
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    /* Only "xyz" is fed; what follows in memory is not the reader's. */
    static const char mem[] = "xyz-NOT-FED-TO-THE-READER";
    CHECK_INT(qmp_reader_feed(&r, mem, 3), -1);
    CHECK_INT(r.err, QMP_ERR_PROTOCOL);
    CHECK_HAS(r.errstr, "malformed JSON");
    CHECK_HAS(r.errstr, "xyz");
    CHECKF(!strstr(r.errstr, "NOT-FED"), "errstr \"%s\" quotes bytes past the buffer",
           r.errstr);
    qmp_reader_free(&r);

    /* The same from an exact-size heap copy, for valgrind and ASan. */
    qmp_reader_init(&r, 0);
    CHECK_INT(feeds(&r, "xyz"), -1);
    CHECK_HAS(r.errstr, "xyz");
    qmp_reader_free(&r);
}

static void test_not_an_object(void)
{
    static const char *const bad[] = {"[1,2]\r\n", "42\r\n", "\"str\"\r\n", "null\r\n",
                                      "true\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct qmp_reader r;
        qmp_reader_init(&r, 0);
        struct strbuf sb;
        sb_init(&sb);
        sb_adds(&sb, bad[i]);
        sb_adds(&sb, "{\"return\": {}, \"id\": 9}\r\n");
        int rc = feed(&r, sb.buf, sb.len);
        CHECKF(rc == -1 && r.err == QMP_ERR_PROTOCOL, "%.6s: rc %d err %d", bad[i], rc, r.err);
        CHECK_HAS(r.errstr, "not a JSON object");
        json_object *m[2] = {0};
        size_t n = drain(&r, m, 2);
        CHECKF(n == 1 && jint(m[0], "id") == 9, "%.6s: %zu messages after it", bad[i], n);
        put_all(m, n < 2 ? n : 2);
        sb_free(&sb);
        qmp_reader_free(&r);
    }
}

/* A message of exactly len bytes: {"return": "xxx...", "id": 1} */
static char *sized_message(size_t len)
{
    const char *head = "{\"return\": \"", *tail = "\", \"id\": 1}";
    size_t fixed = strlen(head) + strlen(tail);
    char *s = xmalloc(len + 1);
    strcpy(s, head);
    memset(s + strlen(head), 'x', len - fixed);
    strcpy(s + len - strlen(tail), tail);
    return s;
}

static void test_oversized(void)
{
    const char *next = "{\"return\": {}, \"id\": 2}\r\n";
    char *ok = sized_message(64), *big = sized_message(65), *huge = sized_message(1000);

    /* The cap is inclusive: 64 bytes pass, 65 do not, in one feed or in two. */
    struct qmp_reader r;
    qmp_reader_init(&r, 64);
    CHECK_INT(feeds(&r, ok), 0);
    json_object *m = qmp_reader_get(&r);
    CHECK(m && jint(m, "id") == 1);
    json_object_put(m);
    CHECK_INT(feeds(&r, big), -1);
    CHECK_INT(r.err, QMP_ERR_PROTOCOL);
    CHECK_HAS(r.errstr, "larger than 64 bytes");
    CHECK(qmp_reader_get(&r) == NULL);
    CHECK_INT(feeds(&r, "\r\n"), 0);
    CHECK_INT(feeds(&r, next), 0);
    m = qmp_reader_get(&r);
    CHECK(m && jint(m, "id") == 2);
    json_object_put(m);
    qmp_reader_free(&r);

    /* Every split of big + "\r\n" + next, and one byte at a time. */
    struct strbuf sb;
    sb_init(&sb);
    sb_adds(&sb, huge);
    sb_adds(&sb, "\r\n");
    sb_adds(&sb, next);
    int bad = 0;
    for (size_t k = 0; k <= sb.len && !bad; k++) {
        qmp_reader_init(&r, 64);
        int rc1 = feed(&r, sb.buf, k);
        int rc2 = feed(&r, sb.buf + k, sb.len - k);
        json_object *msgs[4] = {0};
        size_t n = drain(&r, msgs, 4);
        bad |= !CHECKF(rc1 < 0 || rc2 < 0, "split at %zu: oversized message accepted", k);
        bad |= !CHECKF(n == 1 && jint(msgs[0], "id") == 2, "split at %zu: %zu messages", k, n);
        put_all(msgs, n < 4 ? n : 4);
        qmp_reader_free(&r);
    }
    qmp_reader_init(&r, 64);
    int errs = 0;
    for (size_t i = 0; i < sb.len; i++) {
        errs += feed(&r, sb.buf + i, 1) < 0;
    }
    CHECK(errs >= 1);
    m = qmp_reader_get(&r);
    CHECK(m && jint(m, "id") == 2);
    json_object_put(m);
    CHECK(qmp_reader_get(&r) == NULL);
    qmp_reader_free(&r);

    /* The default cap is QMP_MAX_MSG_DEFAULT; 0 means the default. */
    qmp_reader_init(&r, 0);
    CHECK(r.max_msg == QMP_MAX_MSG_DEFAULT);
    qmp_reader_free(&r);

    sb_free(&sb);
    free(ok);
    free(big);
    free(huge);
}

static void test_partial(void)
{
    struct qmp_reader r;
    qmp_reader_init(&r, 0);
    CHECK(!qmp_reader_partial(&r));
    CHECK_INT(feeds(&r, "\r\n  "), 0);
    CHECK(!qmp_reader_partial(&r));
    CHECK_INT(feeds(&r, "{"), 0);
    CHECK(qmp_reader_partial(&r));
    CHECK_INT(feeds(&r, "\"return\": {\"a\": [1, 2"), 0);
    CHECK(qmp_reader_partial(&r));
    CHECK(qmp_reader_get(&r) == NULL);
    CHECK_INT(feeds(&r, "]}, \"id\": 5}"), 0);
    CHECK(!qmp_reader_partial(&r));
    json_object *m = qmp_reader_get(&r);
    CHECK(m && jint(m, "id") == 5);
    json_object_put(m);
    CHECK_INT(feeds(&r, "\r\n"), 0);
    CHECK(!qmp_reader_partial(&r));
    /* A message left unfinished is freed with the reader. */
    CHECK_INT(feeds(&r, "{\"return\": {\"a\": \"unfinished"), 0);
    CHECK(qmp_reader_partial(&r));
    qmp_reader_free(&r);
}

static void test_strings_and_numbers(void)
{
    const char *s = "{\"s\": \"tab\\there \\\"q\\\" back\\\\slash \\/ \\u00e9 nul\\u0000end\", "
                    "\"smile\": \"\\ud83d\\ude00\", "
                    "\"max\": 9223372036854775807, \"min\": -9223372036854775808, "
                    "\"umax\": 18446744073709551615, \"f\": 1.5e3}\r\n";
    const char want[] = "tab\there \"q\" back\\slash / \xc3\xa9 nul\0end";
    size_t len = strlen(s);
    int bad = 0;

    for (size_t k = 0; k <= len && !bad; k++) {
        struct qmp_reader r;
        qmp_reader_init(&r, 0);
        int rc = feed(&r, s, k);
        rc |= feed(&r, s + k, len - k);
        json_object *m = qmp_reader_get(&r);
        json_object *v = jpath(m, "s");
        bad |= !CHECKF(rc == 0 && m && v, "split at %zu: rc %d (%s)", k, rc, r.errstr);
        if (!bad) {
            bad |= !CHECKF(json_object_get_string_len(v) == (int)sizeof want - 1 &&
                               memcmp(json_object_get_string(v), want, sizeof want - 1) == 0,
                           "split at %zu: escaped string decoded wrong", k);
            bad |= !CHECKF(jstr(m, "smile") && strcmp(jstr(m, "smile"), "\xf0\x9f\x98\x80") == 0,
                           "split at %zu: surrogate pair decoded wrong", k);
            bad |= !CHECKF(jint(m, "max") == INT64_MAX, "split at %zu: int64 max", k);
            bad |= !CHECKF(jint(m, "min") == INT64_MIN, "split at %zu: int64 min", k);
            json_object *u = jpath(m, "umax");
            bad |= !CHECKF(u && json_object_get_uint64(u) == UINT64_MAX, "split at %zu: uint64", k);
            json_object *f = jpath(m, "f");
            bad |= !CHECKF(f && json_object_get_double(f) == 1500.0, "split at %zu: double", k);
        }
        json_object_put(m);
        qmp_reader_free(&r);
    }
}

/* ---- socket helpers ---- */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int pair(int type, int sv[2])
{
    if (socketpair(AF_UNIX, type, 0, sv) < 0) {
        perror("socketpair");
        abort();
    }
    return 0;
}

static void put(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n); /* SIGPIPE is ignored in main */
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void puts_fd(int fd, const char *s)
{
    put(fd, s, strlen(s));
}

/* Blocking read of one line (up to and including '\n'); returns its length. */
static size_t get_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) {
                continue;
            }
            break;
        }
        if (buf[n++] == '\n') {
            break;
        }
    }
    buf[n] = '\0';
    return n;
}

/* The "id" of a command line, by a plain scan; -1 when absent. */
static long long scan_id(const char *line)
{
    const char *p = strstr(line, "\"id\"");
    if (!p) {
        return -1;
    }
    p += 4;
    while (*p == ' ' || *p == ':') {
        p++;
    }
    return strtoll(p, NULL, 10);
}

/*
 * A peer in a child process: the child re-executes this binary as
 * "test_qmp --peer NAME [ARG]" with the peer end of the socket as fd 3 and
 * the write end of a report pipe as fd 4.  Exec, not a bare fork, so that
 * under valgrind the child neither inherits the parent's error count nor
 * reports the parent's heap as its own leaks.
 */
struct peer {
    pid_t pid;
    int report;
};

static const char *self_path;

static struct peer peer_start(int sv[2], const char *name, const char *arg)
{
    int p[2];
    struct peer pr = {-1, -1};
    fflush(NULL);
    if (pipe(p) < 0) {
        abort();
    }
    pr.pid = fork();
    if (pr.pid < 0) {
        abort();
    }
    if (pr.pid == 0) {
        if (dup2(sv[1], 3) < 0 || dup2(p[1], 4) < 0) {
            _exit(126);
        }
        for (int fd = 5; fd < 64; fd++) {
            close(fd);
        }
        execl(self_path, self_path, "--peer", name, arg, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    close(p[1]);
    pr.report = p[0];
    return pr;
}

/* Collect the report (NUL-terminated) and the child's exit status. */
static int peer_finish(struct peer *pr, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(pr->report, buf + n, cap - 1 - n)) != 0) {
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        n += (size_t)r;
    }
    buf[n] = '\0';
    close(pr->report);
    int st;
    while (waitpid(pr->pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- connection tests ---- */

/* Peer: greeting; report the first read() of the command; reply; wait for EOF. */
static int peer_handshake(int fd, int report, const char *arg)
{
    (void)arg;
    char first[4096], line[4096];
    puts_fd(fd, GREETING);
    ssize_t n = read(fd, first, sizeof first - 1);
    if (n <= 0) {
        return 2;
    }
    put(report, first, (size_t)n);
    memcpy(line, first, (size_t)n);
    line[n] = '\0';
    if (!memchr(first, '\n', (size_t)n)) {
        get_line(fd, line + n, sizeof line - (size_t)n);
    }
    char reply[128];
    snprintf(reply, sizeof reply, "{\"return\": {}, \"id\": %lld}\r\n", scan_id(line));
    puts_fd(fd, reply);
    while (read(fd, first, sizeof first) > 0) {
    }
    return 0;
}

static void test_handshake(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    CHECK_INT(c->err, 0);
    struct peer pr = peer_start(sv, "handshake", NULL);

    CHECKF(qmp_handshake(c, 5) == 0, "handshake: %s", c->errstr);
    CHECK(c->greeting && jint(c->greeting, "QMP.version.qemu.major") == 7);
    CHECK_INT(c->next_id, 2);
    qmp_close(c);
    char req[4096];
    CHECK_INT(peer_finish(&pr, req, sizeof req), 0);

    /* One line of JSON, in the peer's first read, ending in '\n'. */
    size_t len = strlen(req);
    CHECKF(len > 0 && req[len - 1] == '\n', "request \"%s\" does not end in a newline", req);
    CHECKF(strchr(req, '\n') == req + len - 1, "request \"%s\" is not one line", req);
    json_object *m = json_tokener_parse(req);
    CHECKF(m && json_object_is_type(m, json_type_object), "request \"%s\" is not JSON", req);
    CHECK_STR(jstr(m, "execute"), "qmp_capabilities");
    CHECK_INT(jint(m, "id"), 1);
    CHECK(jpath(m, "arguments") == NULL);
    json_object_put(m);
    qmp_free(c);
}

static void test_handshake_failures(void)
{
    /* No greeting within the timeout. */
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    double t0 = now_mono();
    CHECK_INT(qmp_handshake(c, 0.2), -1);
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    CHECK(now_mono() - t0 < 1.0);
    qmp_free(c);
    close(sv[1]);

    /* qmp_capabilities refused. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    puts_fd(sv[1], GREETING "{\"error\": {\"class\": \"CommandNotFound\", "
                            "\"desc\": \"nope\"}, \"id\": 1}\r\n");
    CHECK_INT(qmp_handshake(c, 1), -1);
    CHECK_INT(c->err, QMP_ERR_PROTOCOL);
    CHECK_HAS(c->errstr, "qmp_capabilities failed: nope");
    qmp_free(c);
    close(sv[1]);

    /* QEMU dies before the greeting. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    close(sv[1]);
    CHECK_INT(qmp_handshake(c, 1), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, "the QMP greeting");
    qmp_free(c);
}

static void test_execute_matching_id(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    json_object *r = NULL;

    /* A stray reply (another id), three events, the reply, one more event. */
    puts_fd(sv[1], "{\"return\": {\"x\": 0}, \"id\": 99}\r\n"
                   "{\"event\": \"E1\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\r\n"
                   "{\"event\": \"E2\", \"timestamp\": {\"seconds\": 2, \"microseconds\": 0}}\r\n"
                   "{\"return\": {\"x\": -1}}\r\n"
                   "{\"event\": \"E3\", \"timestamp\": {\"seconds\": 3, \"microseconds\": 0}}\r\n"
                   "{\"return\": {\"x\": 1}, \"id\": 1}\r\n"
                   "{\"event\": \"E4\", \"timestamp\": {\"seconds\": 4, \"microseconds\": 0}}\r\n");
    CHECKF(qmp_execute(c, "query-x", NULL, 1, &r) == 0, "execute: %s", c->errstr);
    CHECK_INT(jint(r, "id"), 1);
    CHECK_INT(jint(r, "return.x"), 1);
    json_object_put(r);

    static const char *const want[] = {"E1", "E2", "E3", "E4"};
    for (size_t i = 0; i < 4; i++) {
        json_object *ev = NULL;
        CHECKF(qmp_next_event(c, 0, &ev) == 0, "event %zu: %s", i, c->errstr);
        CHECK_STR(jstr(ev, "event"), want[i]);
        json_object_put(ev);
    }
    json_object *ev = (json_object *)1;
    CHECK_INT(qmp_next_event(c, 0, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    CHECK(ev == NULL);

    /* A late reply (id 1 again) is dropped; the error reply of id 2 returned. */
    puts_fd(sv[1], "{\"return\": {\"late\": true}, \"id\": 1}\r\n"
                   "{\"id\": 2, \"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n");
    CHECKF(qmp_execute(c, "query-y", NULL, 1, &r) == 0, "execute: %s", c->errstr);
    CHECK_INT(jint(r, "id"), 2);
    CHECK_STR(jstr(r, "error.class"), "GenericError");
    CHECK_INT(c->err, 0);
    json_object_put(r);
    qmp_free(c);
    close(sv[1]);
}

/* Requests: ids 1, 2, 3; arguments sent as given; the caller keeps args. */
static void test_ids_and_arguments(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    json_object *args = json_tokener_parse("{\"path\": \"/a/b\", \"n\": 3, \"e\": \"\\u00e9\"}");
    json_object *r = NULL;

    puts_fd(sv[1], "{\"return\": {}, \"id\": 1}\r\n{\"return\": {}, \"id\": 2}\r\n"
                   "{\"return\": {}, \"id\": 3}\r\n");
    for (int i = 0; i < 3; i++) {
        CHECKF(qmp_execute(c, "cmd", i == 1 ? args : NULL, 1, &r) == 0, "%s", c->errstr);
        CHECK_INT(jint(r, "id"), i + 1);
        json_object_put(r);
    }
    CHECK_INT(c->next_id, 4);
    CHECK_STR(jstr(args, "path"), "/a/b"); /* still ours, still intact */
    json_object_put(args);

    for (int i = 0; i < 3; i++) {
        char line[512];
        size_t n = get_line(sv[1], line, sizeof line);
        CHECKF(n > 0 && line[n - 1] == '\n', "request %d: \"%s\"", i + 1, line);
        json_object *m = json_tokener_parse(line);
        CHECK_STR(jstr(m, "execute"), "cmd");
        CHECK_INT(jint(m, "id"), i + 1);
        if (i == 1) {
            CHECK_STR(jstr(m, "arguments.path"), "/a/b");
            CHECK_INT(jint(m, "arguments.n"), 3);
            CHECK_STR(jstr(m, "arguments.e"), "\xc3\xa9");
            CHECK_HAS(line, "\"/a/b\""); /* no "\/" escapes */
        } else {
            CHECK(jpath(m, "arguments") == NULL);
        }
        json_object_put(m);
    }
    qmp_free(c);
    close(sv[1]);
}

/*
 * Each command goes out in one write.  A SOCK_SEQPACKET pair keeps write
 * boundaries, so the peer's one recv() is exactly one write of the client.
 */
static void test_one_write(void)
{
    int sv[2];
    pair(SOCK_SEQPACKET, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    json_object *args = json_tokener_parse("{\"command-line\": \"info status\"}");
    json_object *r = NULL;

    puts_fd(sv[1], "{\"return\": \"VM status: running\\r\\n\", \"id\": 1}\r\n");
    CHECKF(qmp_execute(c, "human-monitor-command", args, 1, &r) == 0, "%s", c->errstr);
    CHECK_STR(jstr(r, "return"), "VM status: running\r\n");
    json_object_put(r);
    json_object_put(args);

    char buf[4096];
    ssize_t n = recv(sv[1], buf, sizeof buf - 1, MSG_DONTWAIT);
    CHECK(n > 0);
    buf[n > 0 ? n : 0] = '\0';
    CHECKF(n > 0 && buf[n - 1] == '\n' && strchr(buf, '\n') == buf + n - 1,
           "first write \"%s\" is not the whole line", buf);
    json_object *m = json_tokener_parse(buf);
    CHECK_STR(jstr(m, "execute"), "human-monitor-command");
    CHECK_STR(jstr(m, "arguments.command-line"), "info status");
    json_object_put(m);
    n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
    CHECKF(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "a second write of %zd bytes", n);
    qmp_free(c);
    close(sv[1]);
}

/* Peer: a reply bigger than the client's 64 KiB read buffer, in pieces. */
static int peer_big_reply(int fd, int report, const char *arg)
{
    (void)arg;
    char line[512];
    (void)report;
    get_line(fd, line, sizeof line);
    long long id = scan_id(line);
    char head[64];
    snprintf(head, sizeof head, "{\"id\": %lld, \"return\": \"", id);
    puts_fd(fd, head);
    char chunk[1000];
    memset(chunk, 'y', sizeof chunk);
    for (int i = 0; i < 300; i++) {
        put(fd, chunk, sizeof chunk);
        if (i % 100 == 0) {
            sleep_ms(5);
        }
    }
    puts_fd(fd, "\"}\r\n");
    while (read(fd, line, sizeof line) > 0) {
    }
    return 0;
}

static void test_big_reply(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    struct peer pr = peer_start(sv, "big_reply", NULL);
    json_object *r = NULL;
    CHECKF(qmp_execute(c, "big", NULL, 5, &r) == 0, "%s", c->errstr);
    json_object *v = jpath(r, "return");
    CHECK(v && json_object_get_string_len(v) == 300000);
    json_object_put(r);
    qmp_close(c);
    char rep[16];
    CHECK_INT(peer_finish(&pr, rep, sizeof rep), 0);
    qmp_free(c);
}

static void test_timeouts(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    json_object *r = (json_object *)1, *ev = (json_object *)1;

    double t0 = now_mono();
    CHECK_INT(qmp_execute(c, "query-status", NULL, 0.2, &r), -1);
    double dt = now_mono() - t0;
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    CHECK_HAS(c->errstr, "query-status");
    CHECK(r == NULL);
    CHECKF(dt >= 0.19 && dt < 1.0, "timeout 0.2 took %.3f s", dt);

    t0 = now_mono();
    CHECK_INT(qmp_next_event(c, 0, &ev), -1);
    dt = now_mono() - t0;
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    CHECK(ev == NULL);
    CHECKF(dt < 0.05, "timeout 0 took %.3f s", dt);

    t0 = now_mono();
    CHECK_INT(qmp_next_event(c, 0.1, &ev), -1);
    dt = now_mono() - t0;
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    CHECKF(dt >= 0.09 && dt < 1.0, "timeout 0.1 took %.3f s", dt);

    /* An event already on the socket is found with timeout 0. */
    puts_fd(sv[1], "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}"
                   "\r\n");
    CHECKF(qmp_next_event(c, 0, &ev) == 0, "%s", c->errstr);
    CHECK_STR(jstr(ev, "event"), "RESUME");
    json_object_put(ev);

    /* The timed-out command's late reply does not answer the next one. */
    puts_fd(sv[1], "{\"return\": {\"status\": \"late\"}, \"id\": 1}\r\n"
                   "{\"return\": {\"status\": \"running\"}, \"id\": 2}\r\n");
    CHECKF(qmp_execute(c, "query-status", NULL, 1, &r) == 0, "%s", c->errstr);
    CHECK_STR(jstr(r, "return.status"), "running");
    json_object_put(r);
    qmp_free(c);
    close(sv[1]);
}

/* Peer: read the command, then close without a word. */
static int peer_read_then_close(int fd, int report, const char *arg)
{
    (void)arg;
    char line[512];
    (void)report;
    get_line(fd, line, sizeof line);
    return 0;
}

/* Peer: read the command, send half a reply, close. */
static int peer_half_reply(int fd, int report, const char *arg)
{
    (void)arg;
    char line[512];
    (void)report;
    get_line(fd, line, sizeof line);
    puts_fd(fd, "{\"return\": {\"status\": ");
    return 0;
}

/* Peer: close while the command is still unread (Linux: ECONNRESET). */
static int peer_close_unread(int fd, int report, const char *arg)
{
    (void)arg;
    char c;
    (void)report;
    recv(fd, &c, 1, MSG_PEEK);
    return 0;
}

static void test_closed(void)
{
    int sv[2];
    json_object *r = (json_object *)1;

    /* Mid-message, after the command was read. */
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    struct peer pr = peer_start(sv, "half_reply", NULL);
    CHECK_INT(qmp_execute(c, "query-status", NULL, 2, &r), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK(r == NULL);
    CHECK_HAS(c->errstr, "while 'query-status' was in flight");
    CHECK_HAS(c->errstr, "in the middle of a message");
    CHECK_STR(qmp_errcode_name(c->err), "closed");
    char rep[16];
    CHECK_INT(peer_finish(&pr, rep, sizeof rep), 0);
    qmp_free(c);

    /* Half a message, then EOF, all before the command: the send fails. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    puts_fd(sv[1], "{\"return\": {\"status\": ");
    close(sv[1]);
    CHECK_INT(qmp_execute(c, "query-status", NULL, 1, &r), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, "'query-status'");
    qmp_free(c);

    /* After reading the command, no reply. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    pr = peer_start(sv, "read_then_close", NULL);
    CHECK_INT(qmp_execute(c, "stop", NULL, 2, &r), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, "while 'stop' was in flight");
    CHECKF(!strstr(c->errstr, "middle"), "errstr \"%s\"", c->errstr);
    CHECK_INT(peer_finish(&pr, rep, sizeof rep), 0);
    qmp_free(c);

    /* Closed with the command unread. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    pr = peer_start(sv, "close_unread", NULL);
    CHECK_INT(qmp_execute(c, "cont", NULL, 2, &r), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, "'cont'");
    CHECK_INT(peer_finish(&pr, rep, sizeof rep), 0);
    qmp_free(c);

    /* Closed before the command is sent: no SIGPIPE, CLOSED. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    close(sv[1]);
    CHECK_INT(qmp_execute(c, "cont", NULL, 1, &r), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, "'cont'");

    /* The events that arrived first are still there; then EOF. */
    json_object *ev = NULL;
    CHECK_INT(qmp_next_event(c, 1, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);

    /* After qmp_close: CLOSED, and close is idempotent. */
    qmp_close(c);
    qmp_close(c);
    CHECK_INT(c->fd, -1);
    CHECK_INT(qmp_execute(c, "cont", NULL, 1, &r), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_INT(qmp_next_event(c, 0, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    qmp_free(c);
    qmp_free(NULL);
}

static void test_events_then_eof(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    puts_fd(sv[1], "{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, "
                   "\"reason\": \"host-qmp-quit\"}, \"timestamp\": {\"seconds\": 1, "
                   "\"microseconds\": 2}}\r\n{\"event\": \"X\"}\r\n");
    close(sv[1]);
    CHECKF(qmp_pump(c) == -1 && c->err == QMP_ERR_CLOSED, "pump: %d %s", c->err, c->errstr);
    CHECK_INT(c->events.len, 2);
    json_object *ev = NULL;
    CHECK_INT(qmp_next_event(c, 1, &ev), 0);
    CHECK_STR(jstr(ev, "event"), "SHUTDOWN");
    CHECK_STR(jstr(ev, "data.reason"), "host-qmp-quit");
    json_object_put(ev);
    CHECK_INT(qmp_next_event(c, 1, &ev), 0);
    CHECK_STR(jstr(ev, "event"), "X");
    json_object_put(ev);
    CHECK_INT(qmp_next_event(c, 1, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    qmp_free(c);

    /* qmp_pump with nothing there returns 0 at once. */
    pair(SOCK_STREAM, sv);
    c = qmp_open_fd(sv[0]);
    double t0 = now_mono();
    CHECK_INT(qmp_pump(c), 0);
    CHECK_INT(c->err, 0);
    CHECK(now_mono() - t0 < 0.05);
    qmp_free(c);
    close(sv[1]);
}

static void test_garbage_on_socket(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    json_object *r = (json_object *)1;

    puts_fd(sv[1], "Segmentation fault\r\n");
    CHECK_INT(qmp_execute(c, "query-status", NULL, 1, &r), -1);
    CHECK_INT(c->err, QMP_ERR_PROTOCOL);
    CHECK_HAS(c->errstr, "malformed JSON");
    CHECK(r == NULL);

    /* The connection goes on: the next command gets its reply. */
    puts_fd(sv[1], "{\"return\": {}, \"id\": 2}\r\n");
    CHECKF(qmp_execute(c, "cont", NULL, 1, &r) == 0, "%s", c->errstr);
    CHECK_INT(jint(r, "id"), 2);
    CHECK_INT(c->err, 0);
    json_object_put(r);
    qmp_free(c);
    close(sv[1]);
}

static void test_interrupted(void)
{
    static volatile sig_atomic_t flag;
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    json_object *r = (json_object *)1, *ev = (json_object *)1;

    c->intr = &flag;
    flag = 1;
    double t0 = now_mono();
    CHECK_INT(qmp_execute(c, "query-status", NULL, 5, &r), -1);
    CHECK_INT(c->err, QMP_ERR_INTERRUPTED);
    CHECK(r == NULL);
    CHECK_INT(qmp_next_event(c, -1, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_INTERRUPTED);
    CHECK_STR(qmp_errcode_name(c->err), "interrupted");
    CHECK(now_mono() - t0 < 0.5);

    /* Cleared, the connection works again (the stale id-1 reply is dropped). */
    flag = 0;
    puts_fd(sv[1], "{\"return\": {}, \"id\": 1}\r\n{\"return\": {\"ok\": 1}, \"id\": 2}\r\n");
    CHECKF(qmp_execute(c, "query-status", NULL, 1, &r) == 0, "%s", c->errstr);
    CHECK_INT(jint(r, "return.ok"), 1);
    json_object_put(r);
    qmp_free(c);
    close(sv[1]);
}

static int listen_at(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4) < 0) {
        perror(path);
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

/* Peer: the listener appears 150 ms late (QEMU still starting). */
static int peer_late_listener(int fd, int report, const char *path)
{
    (void)fd;
    (void)report;
    sleep_ms(150);
    int l = listen_at(path);
    if (l < 0) {
        return 2;
    }
    int a = accept(l, NULL, NULL);
    char buf[16];
    while (a >= 0 && read(a, buf, sizeof buf) > 0) {
    }
    return a >= 0 ? 0 : 3;
}

static void test_connect(void)
{
    char *dir = make_tmpdir("qshell-test-qmp");
    if (!CHECK(dir != NULL)) {
        return;
    }
    char *none = xasprintf("%s/none.sock", dir);
    char *sock = xasprintf("%s/qmp.sock", dir);

    /* No such path: CLOSED, naming the path, no waiting with timeout 0. */
    struct qmp_conn *c = qmp_connect(none, 0, NULL);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, none);
    CHECK_INT(c->fd, -1);
    qmp_free(c);

    /* With a timeout it retries until then. */
    double t0 = now_mono();
    c = qmp_connect(none, 0.2, NULL);
    double dt = now_mono() - t0;
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECKF(dt >= 0.19 && dt < 1.0, "retry for 0.2 s took %.3f s", dt);
    qmp_free(c);

    /* A socket file nobody listens on: ECONNREFUSED, CLOSED. */
    int l = listen_at(sock);
    CHECK(l >= 0);
    close(l);
    c = qmp_connect(sock, 0, NULL);
    CHECK_INT(c->err, QMP_ERR_CLOSED);
    CHECK_HAS(c->errstr, sock);
    qmp_free(c);
    unlink(sock);

    /* Longer than sun_path. */
    struct sockaddr_un sa;
    char *longp = xmalloc(sizeof sa.sun_path + 20);
    memset(longp, 'a', sizeof sa.sun_path + 19);
    longp[0] = '/';
    longp[sizeof sa.sun_path + 19] = '\0';
    c = qmp_connect(longp, 1, NULL);
    CHECK(c->err != 0);
    CHECK_HAS(c->errstr, "too long");
    CHECK_INT(c->fd, -1);
    qmp_free(c);
    free(longp);

    /* A real listener: connect, then a whole handshake over it. */
    l = listen_at(sock);
    CHECK(l >= 0);
    c = qmp_connect(sock, 1, NULL);
    CHECKF(c->err == 0 && c->fd >= 0, "connect: %s", c->errstr);
    int a = accept(l, NULL, NULL);
    CHECK(a >= 0);
    puts_fd(a, GREETING "{\"return\": {}, \"id\": 1}\r\n");
    CHECKF(qmp_handshake(c, 1) == 0, "handshake: %s", c->errstr);
    CHECK(fcntl(c->fd, F_GETFD) & FD_CLOEXEC);
    /* Blocking: a reply is one recv() (bounded by SO_RCVTIMEO), no poll(). */
    CHECK(!(fcntl(c->fd, F_GETFL) & O_NONBLOCK));
    qmp_free(c);
    close(a);
    close(l);
    unlink(sock);

    /* The listener appears while qmp_connect retries. */
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct peer pr = peer_start(sv, "late_listener", sock);
    c = qmp_connect(sock, 3, NULL);
    CHECKF(c->err == 0 && c->fd >= 0, "connect with retry: %s", c->errstr);
    qmp_free(c);
    close(sv[0]);
    char rep[16];
    CHECK_INT(peer_finish(&pr, rep, sizeof rep), 0);

    CHECK_INT(remove_tree(dir), 0);
    free(none);
    free(sock);
    free(dir);
}

static void test_open_fd(void)
{
    int sv[2];
    pair(SOCK_STREAM, sv);
    struct qmp_conn *c = qmp_open_fd(sv[0]);
    CHECK_INT(c->err, 0);
    CHECK_INT(c->fd, sv[0]);
    CHECK(!(fcntl(sv[0], F_GETFL) & O_NONBLOCK));
    CHECK(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
    CHECK(c->greeting == NULL);
    /* Nothing to read: pump and a zero timeout return at once, a short
     * timeout after about that long (not a whole slice). */
    double t0 = now_mono();
    CHECK_INT(qmp_pump(c), 0);
    json_object *ev = NULL;
    CHECK_INT(qmp_next_event(c, 0, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    CHECK(now_mono() - t0 < 0.05);
    t0 = now_mono();
    CHECK_INT(qmp_next_event(c, 0.03, &ev), -1);
    CHECK_INT(c->err, QMP_ERR_TIMEOUT);
    double dt = now_mono() - t0;
    CHECKF(dt >= 0.03 && dt < 0.2, "a 0.03 s wait took %.3f s", dt);
    qmp_free(c);
    /* qmp_free closed our end: the peer sees EOF. */
    char b;
    CHECK_INT(read(sv[1], &b, 1), 0);
    close(sv[1]);

    /* A bad fd: the object comes back with the reason in it. */
    c = qmp_open_fd(-1);
    CHECK_INT(c->err, QMP_ERR_IO);
    CHECK(c->errstr[0] != '\0');
    c->fd = -1;
    qmp_free(c);
}

/* ---- main ---- */

static const struct unit_test tests[] = {
    {"reader: recorded exchange, one feed", test_exchange_whole},
    {"reader: recorded exchange, every split", test_exchange_every_split},
    {"reader: recorded exchange, byte at a time", test_exchange_byte_at_a_time},
    {"reader: several messages per feed", test_several_per_feed},
    {"reader: event between command and reply", test_event_between},
    {"reader: garbage line, then a message", test_garbage_line},
    {"reader: garbage error text stays in the buffer", test_garbage_errstr},
    {"reader: JSON that is not an object", test_not_an_object},
    {"reader: oversized message", test_oversized},
    {"reader: partial state", test_partial},
    {"reader: escapes, unicode, NUL, big integers", test_strings_and_numbers},
    {"conn: open_fd", test_open_fd},
    {"conn: handshake", test_handshake},
    {"conn: handshake failures", test_handshake_failures},
    {"conn: execute matches ids, queues events", test_execute_matching_id},
    {"conn: ids increase, arguments", test_ids_and_arguments},
    {"conn: one write per command", test_one_write},
    {"conn: reply larger than a read", test_big_reply},
    {"conn: timeouts", test_timeouts},
    {"conn: peer closes", test_closed},
    {"conn: events, then EOF", test_events_then_eof},
    {"conn: garbage on the socket", test_garbage_on_socket},
    {"conn: interrupt flag", test_interrupted},
    {"conn: connect", test_connect},
};

static const struct peer_fn {
    const char *name;
    int (*fn)(int fd, int report, const char *arg);
} peers[] = {
    {"handshake", peer_handshake},
    {"big_reply", peer_big_reply},
    {"half_reply", peer_half_reply},
    {"read_then_close", peer_read_then_close},
    {"close_unread", peer_close_unread},
    {"late_listener", peer_late_listener},
};

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : getenv("QSHELL_TEST_FILTER");

    signal(SIGPIPE, SIG_IGN);
    if (argc > 2 && strcmp(argv[1], "--peer") == 0) {
        for (size_t i = 0; i < sizeof peers / sizeof peers[0]; i++) {
            if (strcmp(peers[i].name, argv[2]) == 0) {
                return peers[i].fn(3, 4, argv[3]);
            }
        }
        return 125;
    }
    self_path = argv[0];

    /* Under QSHELL_LOG=1 qmp.c echoes traffic; the tests want it quiet. */
    unsetenv("QSHELL_LOG");
    int rc = unit_run(tests, sizeof tests / sizeof tests[0], filter);
    return rc;
}
