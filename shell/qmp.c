/*
 * qmp.c - the QMP wire protocol: a push parser and a socket client.
 *
 * Owns: the byte stream from QEMU's monitor, the json-c tokener, the event
 * FIFO, command ids.  Does not own: the QEMU process (proc.c), what the
 * replies mean (stdlib/), Lua values (lqmp.c, ljson.c).
 *
 * The parser is fed whole read() buffers, not single bytes as libqmp.c
 * does: one persistent json_tokener resumes where the last buffer ended,
 * and json_tokener_get_parse_end() tells where one message stops so that
 * several messages in one read are split without copying.
 */
#define _GNU_SOURCE /* MSG_NOSIGNAL, SOCK_CLOEXEC */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "qmp.h"
#include "util.h"

/* Longest poll() slice, so a signal that lands just before poll() is seen. */
#define POLL_SLICE_MS 250

const char *qmp_errcode_name(int err)
{
    switch (err) {
    case QMP_OK:
        return "ok";
    case QMP_ERR_TIMEOUT:
        return "timeout";
    case QMP_ERR_CLOSED:
        return "closed";
    case QMP_ERR_INTERRUPTED:
        return "interrupted";
    case QMP_ERR_PROTOCOL:
        return "protocol";
    default:
        return "io";
    }
}

/* ---- message queues ---- */

static void queue_push(struct qmp_queue *q, json_object *obj)
{
    struct qmp_msg *m = xmalloc(sizeof *m);
    m->obj = obj;
    m->next = NULL;
    if (q->tail) {
        q->tail->next = m;
    } else {
        q->head = m;
    }
    q->tail = m;
    q->len++;
}

static json_object *queue_pop(struct qmp_queue *q)
{
    struct qmp_msg *m = q->head;
    if (!m) {
        return NULL;
    }
    q->head = m->next;
    if (!q->head) {
        q->tail = NULL;
    }
    q->len--;
    json_object *obj = m->obj;
    free(m);
    return obj;
}

static void queue_clear(struct qmp_queue *q)
{
    json_object *obj;
    while ((obj = queue_pop(q))) {
        json_object_put(obj);
    }
}

/* ---- the reader: bytes in, messages out, no I/O ---- */

void qmp_reader_init(struct qmp_reader *r, size_t max_msg)
{
    memset(r, 0, sizeof *r);
    /* QMP nests a few levels; query-qmp-schema is the deepest reply seen. */
    r->tok = json_tokener_new_ex(64);
    /*
     * Strict: the tokener stops at a message's last '}' whatever follows,
     * so a message is delivered the same however the reads split the
     * stream (the default mode eats comments after it and may hold the
     * message back, or lose it to a stray '/').  QEMU sends strict JSON.
     */
    if (!r->tok) {
        abort();
    }
    json_tokener_set_flags(r->tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
    r->max_msg = max_msg ? max_msg : QMP_MAX_MSG_DEFAULT;
}

static void reader_error(struct qmp_reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errstr, sizeof r->errstr, fmt, ap);
    va_end(ap);
    r->err = QMP_ERR_PROTOCOL;
    json_tokener_reset(r->tok);
    r->pending = 0;
    r->skip_line = 1;
}

int qmp_reader_feed(struct qmp_reader *r, const char *buf, size_t len)
{
    int rc = 0;
    size_t off = 0;

    while (off < len) {
        if (r->skip_line) {
            const char *nl = memchr(buf + off, '\n', len - off);
            if (!nl) {
                break;
            }
            off = (size_t)(nl - buf) + 1;
            r->skip_line = 0;
            continue;
        }
        if (r->pending == 0) {
            /* Between messages: QEMU ends each with "\r\n". */
            while (off < len && isspace((unsigned char)buf[off])) {
                off++;
            }
            if (off == len) {
                break;
            }
        }
        size_t chunk = len - off;
        if (chunk > INT_MAX) {
            chunk = INT_MAX;
        }
        json_object *obj = json_tokener_parse_ex(r->tok, buf + off, (int)chunk);
        enum json_tokener_error jerr = json_tokener_get_error(r->tok);
        if (jerr == json_tokener_continue) {
            r->pending += chunk;
            off += chunk;
            if (r->pending > r->max_msg) {
                reader_error(r, "QMP message larger than %zu bytes", r->max_msg);
                rc = -1;
            }
            continue;
        }
        size_t used = json_tokener_get_parse_end(r->tok);
        if (jerr != json_tokener_success) {
            /* buf is a read buffer, not a C string: bound the excerpt. */
            size_t left = len - off - used;
            reader_error(r, "malformed JSON from QEMU: %s near \"%.*s\"",
                         json_tokener_error_desc(jerr), (int)(left < 24 ? left : 24),
                         buf + off + used);
            off += used;
            rc = -1;
            continue;
        }
        off += used;
        size_t total = r->pending + used;
        r->pending = 0;
        json_tokener_reset(r->tok);
        if (total > r->max_msg) {
            json_object_put(obj);
            reader_error(r, "QMP message larger than %zu bytes", r->max_msg);
            r->skip_line = 0; /* the message is complete; nothing to skip */
            rc = -1;
        } else if (!json_object_is_type(obj, json_type_object)) {
            json_object_put(obj);
            reader_error(r, "QMP message is not a JSON object");
            r->skip_line = 0;
            rc = -1;
        } else {
            queue_push(&r->out, obj);
        }
    }
    return rc;
}

json_object *qmp_reader_get(struct qmp_reader *r)
{
    return queue_pop(&r->out);
}

int qmp_reader_partial(const struct qmp_reader *r)
{
    return r->pending > 0;
}

void qmp_reader_free(struct qmp_reader *r)
{
    queue_clear(&r->out);
    if (r->tok) {
        json_tokener_free(r->tok);
        r->tok = NULL;
    }
}

/* ---- the connection ---- */

/* util.h's qs_fail over this core's err and errstr */
#define fail(obj, code, ...) QS_FAIL(obj, code, __VA_ARGS__)

static struct qmp_conn *conn_new(int fd)
{
    struct qmp_conn *c = xcalloc(1, sizeof *c);
    c->fd = fd;
    c->next_id = 1;
    c->rcv_ms = -1;
    qmp_reader_init(&c->rd, 0);
    const char *log = getenv("QSHELL_LOG");
    c->log = log && *log && strcmp(log, "0") != 0;
    return c;
}

struct qmp_conn *qmp_open_fd(int fd)
{
    struct qmp_conn *c = conn_new(fd);
    if (set_blocking(fd) < 0 || set_cloexec(fd) < 0) {
        fail(c, QMP_ERR_IO, "fcntl: %s", strerror(errno));
    }
    return c;
}

struct qmp_conn *qmp_connect(const char *path, double timeout,
                             const volatile sig_atomic_t *intr)
{
    struct qmp_conn *c = conn_new(-1);
    c->intr = intr;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    double deadline = deadline_after(timeout);

    if (strlen(path) >= sizeof sa.sun_path) {
        fail(c, QMP_ERR_IO, "socket path too long (%zu bytes, at most %zu): %s", strlen(path),
             sizeof sa.sun_path - 1, path);
        return c;
    }
    strcpy(sa.sun_path, path);
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fail(c, QMP_ERR_IO, "socket: %s", strerror(errno));
            return c;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            c->fd = fd;
            return c;
        }
        int e = errno;
        close(fd);
        /* A QEMU that is still starting has no socket yet, or no listener. */
        int retry = (e == ENOENT || e == ECONNREFUSED) && deadline >= 0 && now_mono() < deadline;
        if (!retry) {
            fail(c, e == ENOENT || e == ECONNREFUSED ? QMP_ERR_CLOSED : QMP_ERR_IO,
                 "cannot connect to QMP socket %s: %s", path, strerror(e));
            return c;
        }
        if (c->intr && *c->intr) {
            fail(c, QMP_ERR_INTERRUPTED, "interrupted");
            return c;
        }
        usleep(10000);
    }
}

/* Wait until fd is ready for events, the deadline passes or Ctrl-C. */
static int wait_fd(struct qmp_conn *c, short events, double deadline)
{
    for (;;) {
        if (c->intr && *c->intr) {
            return fail(c, QMP_ERR_INTERRUPTED, "interrupted");
        }
        struct pollfd p = {.fd = c->fd, .events = events};
        int n = poll(&p, 1, deadline_ms(deadline, POLL_SLICE_MS));
        if (n > 0) {
            return 0;
        }
        if (n == 0) {
            if (deadline >= 0 && now_mono() >= deadline) {
                return fail(c, QMP_ERR_TIMEOUT, "timed out");
            }
        } else if (errno != EINTR) {
            return fail(c, QMP_ERR_IO, "poll: %s", strerror(errno));
        }
    }
}

static void log_traffic(const char *dir, const char *data, size_t len)
{
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r')) {
        len--;
    }
    fprintf(stderr, "qmp %s %.*s\n", dir, (int)len, data);
}

/*
 * Bound each blocking recv() to ms (SO_RCVTIMEO), set only when it changes:
 * with the default deadlines every wait uses the same slice, so a round
 * trip costs two system calls (send, recv), as a blocking client's does.
 */
static int set_rcv_timeout(struct qmp_conn *c, int ms)
{
    if (ms == c->rcv_ms) {
        return 0;
    }
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
        return -1;
    }
    c->rcv_ms = ms;
    return 0;
}

/*
 * One read into the parser.  `what` names the command in flight for the
 * "QEMU went away" message.  The socket is blocking: recv() waits at most
 * a slice (SO_RCVTIMEO, so Ctrl-C and the deadline are looked at between
 * slices; a signal interrupts it at once with EINTR, since socket timeouts
 * are never restarted); a deadline already past reads without waiting.
 */
static int read_some(struct qmp_conn *c, double deadline, const char *what)
{
    char buf[65536];

    if (c->fd < 0) {
        return fail(c, QMP_ERR_CLOSED, "the QMP connection is closed");
    }
    for (;;) {
        if (c->intr && *c->intr) {
            return fail(c, QMP_ERR_INTERRUPTED, "interrupted");
        }
        int flags = 0;
        if (deadline >= 0) {
            double left = deadline - now_mono();
            if (left <= 0) {
                flags = MSG_DONTWAIT;
            } else {
                int ms = left * 1000 < POLL_SLICE_MS ? (int)(left * 1000) + 1 : POLL_SLICE_MS;
                if (set_rcv_timeout(c, ms) < 0) {
                    return fail(c, QMP_ERR_IO, "setsockopt: %s", strerror(errno));
                }
            }
        } else if (set_rcv_timeout(c, POLL_SLICE_MS) < 0) {
            return fail(c, QMP_ERR_IO, "setsockopt: %s", strerror(errno));
        }
        ssize_t n = recv(c->fd, buf, sizeof buf, flags);
        if (n > 0) {
            if (c->log) {
                log_traffic("<-", buf, (size_t)n);
            }
            if (qmp_reader_feed(&c->rd, buf, (size_t)n) < 0) {
                return fail(c, QMP_ERR_PROTOCOL, "%s", c->rd.errstr);
            }
            return 0;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (deadline >= 0 && now_mono() >= deadline) {
                return fail(c, QMP_ERR_TIMEOUT, "timed out");
            }
            continue;
        }
        if (n == 0 || errno == ECONNRESET) {
            /* kill -9 of QEMU gives ECONNRESET rather than a clean EOF. */
            const char *mid = qmp_reader_partial(&c->rd) ? " in the middle of a message" : "";
            if (what) {
                return fail(c, QMP_ERR_CLOSED,
                            "QEMU closed the QMP connection%s while '%s' was in flight", mid, what);
            }
            return fail(c, QMP_ERR_CLOSED, "QEMU closed the QMP connection%s", mid);
        }
        return fail(c, QMP_ERR_IO, "recv: %s", strerror(errno));
    }
}

/*
 * Write all of data.  pass_fd >= 0 rides along with the first byte as
 * SCM_RIGHTS ancillary data: QEMU's getfd/add-fd take the fd that arrives
 * with the command.
 */
static int send_all(struct qmp_conn *c, const char *data, size_t len, double deadline,
                    const char *what, int pass_fd)
{
    if (c->fd < 0) {
        return fail(c, QMP_ERR_CLOSED, "the QMP connection is closed");
    }
    if (c->log) {
        log_traffic("->", data, len);
    }
    while (len > 0) {
        ssize_t n;
        if (pass_fd >= 0) {
            union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
            } ctl;
            struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                                 .msg_controllen = sizeof ctl.buf};
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
            n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                pass_fd = -1; /* sent with the first bytes */
            }
        } else {
            n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (wait_fd(c, POLLOUT, deadline) < 0) {
                return -1;
            }
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            return fail(c, QMP_ERR_CLOSED, "QEMU closed the QMP connection before '%s' was sent",
                        what);
        }
        return fail(c, QMP_ERR_IO, "send: %s", strerror(errno));
    }
    return 0;
}

static int is_event(json_object *m)
{
    return json_object_object_get_ex(m, "event", NULL);
}

static void queue_event(struct qmp_conn *c, json_object *ev)
{
    if (c->events.len >= QMP_MAX_EVENTS) {
        json_object_put(queue_pop(&c->events));
        c->events_dropped++;
    }
    queue_push(&c->events, ev);
}

/* Sort parsed messages: events to the FIFO; stray replies are dropped. */
static void drain_reader(struct qmp_conn *c)
{
    json_object *m;
    while ((m = qmp_reader_get(&c->rd))) {
        if (is_event(m)) {
            queue_event(c, m);
        } else {
            json_object_put(m);
        }
    }
}

int qmp_handshake(struct qmp_conn *c, double timeout)
{
    double deadline = deadline_after(timeout);
    c->err = QMP_OK;
    c->errstr[0] = '\0';

    while (!c->greeting) {
        json_object *m;
        while (!c->greeting && (m = qmp_reader_get(&c->rd))) {
            if (json_object_object_get_ex(m, "QMP", NULL)) {
                c->greeting = m;
            } else if (is_event(m)) {
                queue_event(c, m);
            } else {
                json_object_put(m);
            }
        }
        if (!c->greeting && read_some(c, deadline, "the QMP greeting") < 0) {
            return -1;
        }
    }
    /* One deadline for the whole handshake, not one per step. */
    double left = deadline < 0 ? -1.0 : deadline - now_mono();
    json_object *reply = NULL;
    if (qmp_execute(c, "qmp_capabilities", NULL, deadline < 0 ? -1.0 : (left > 0 ? left : 0),
                    &reply) < 0) {
        return -1;
    }
    json_object *e;
    int rc = 0;
    if (json_object_object_get_ex(reply, "error", &e)) {
        json_object *d = NULL;
        json_object_object_get_ex(e, "desc", &d);
        rc = fail(c, QMP_ERR_PROTOCOL, "qmp_capabilities failed: %s",
                  d ? json_object_get_string(d) : "?");
    }
    json_object_put(reply);
    return rc;
}

static int build_command(struct qmp_conn *c, const char *cmd, json_object *args, int64_t id,
                         size_t *len)
{
    json_object *msg = json_object_new_object();
    json_object_object_add(msg, "execute", json_object_new_string(cmd));
    if (args) {
        json_object_object_add(msg, "arguments", json_object_get(args));
    }
    json_object_object_add(msg, "id", json_object_new_int64(id));
    size_t n;
    const char *s = json_object_to_json_string_length(
        msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    if (n + 2 > c->wcap) {
        c->wcap = n + 2 > 4096 ? n + 2 : 4096;
        c->wbuf = xrealloc(c->wbuf, c->wcap);
    }
    memcpy(c->wbuf, s, n);
    /* The newline goes in the same write: a separate one costs ~35 us. */
    c->wbuf[n] = '\n';
    *len = n + 1;
    json_object_put(msg);
    return 0;
}

int qmp_execute(struct qmp_conn *c, const char *cmd, json_object *args, double timeout,
                json_object **reply)
{
    return qmp_execute_fd(c, cmd, args, -1, timeout, reply);
}

int qmp_execute_fd(struct qmp_conn *c, const char *cmd, json_object *args, int pass_fd,
                   double timeout, json_object **reply)
{
    double deadline = deadline_after(timeout);
    int64_t id = c->next_id++;
    size_t len;

    *reply = NULL;
    c->err = QMP_OK;
    c->errstr[0] = '\0';
    build_command(c, cmd, args, id, &len);
    if (send_all(c, c->wbuf, len, deadline, cmd, pass_fd) < 0) {
        return -1;
    }
    for (;;) {
        json_object *m, *v;
        while ((m = qmp_reader_get(&c->rd))) {
            if (is_event(m)) {
                queue_event(c, m);
            } else if (json_object_object_get_ex(m, "id", &v) &&
                       json_object_is_type(v, json_type_int) && json_object_get_int64(v) == id) {
                *reply = m;
                return 0;
            } else {
                /* The late reply of an interrupted or timed-out command. */
                json_object_put(m);
            }
        }
        if (read_some(c, deadline, cmd) < 0) {
            if (c->err == QMP_ERR_TIMEOUT) {
                fail(c, QMP_ERR_TIMEOUT, "no reply to '%s' within %g s", cmd, timeout);
            }
            return -1;
        }
    }
}

int qmp_next_event(struct qmp_conn *c, double timeout, json_object **event)
{
    double deadline = deadline_after(timeout);

    *event = NULL;
    c->err = QMP_OK;
    c->errstr[0] = '\0';
    for (;;) {
        drain_reader(c);
        if (c->events.head) {
            *event = queue_pop(&c->events);
            return 0;
        }
        if (read_some(c, deadline, NULL) < 0) {
            return -1;
        }
    }
}

int qmp_pump(struct qmp_conn *c)
{
    for (;;) {
        if (read_some(c, now_mono(), NULL) < 0) {
            drain_reader(c);
            if (c->err == QMP_ERR_TIMEOUT) {
                c->err = QMP_OK;
                c->errstr[0] = '\0';
                return 0;
            }
            return -1;
        }
    }
}

void qmp_close(struct qmp_conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

void qmp_free(struct qmp_conn *c)
{
    if (!c) {
        return;
    }
    qmp_close(c);
    qmp_reader_free(&c->rd);
    queue_clear(&c->events);
    if (c->greeting) {
        json_object_put(c->greeting);
    }
    free(c->wbuf);
    free(c);
}
