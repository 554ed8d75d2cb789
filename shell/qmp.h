/*
 * qmp.h - a QMP client in plain C (no Lua).
 *
 * Two layers, as hiredis splits redisReader from redisContext:
 *  - struct qmp_reader turns a byte stream into JSON messages with no I/O at
 *    all, so every split point can be unit-tested;
 *  - struct qmp_conn owns a socket: handshake, commands with increasing ids,
 *    an event FIFO, deadlines.
 * Calls return 0 / -1 (or NULL) with the reason in conn->err / conn->errstr;
 * nothing here prints (except the QSHELL_LOG echo) or exits.
 */
#ifndef QSHELL_QMP_H
#define QSHELL_QMP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

enum {
    QMP_OK = 0,
    QMP_ERR_IO,          /* a socket call failed */
    QMP_ERR_TIMEOUT,     /* the deadline passed */
    QMP_ERR_CLOSED,      /* EOF or ECONNRESET: QEMU went away */
    QMP_ERR_INTERRUPTED, /* the interrupt flag was set (Ctrl-C) */
    QMP_ERR_PROTOCOL,    /* malformed or oversized data, no greeting, ... */
};

/* Short stable names for the codes above ("timeout", "closed", ...). */
const char *qmp_errcode_name(int err);

#define QMP_MAX_MSG_DEFAULT (64u << 20)
#define QMP_MAX_EVENTS 100000

struct qmp_msg {
    json_object *obj;
    struct qmp_msg *next;
};

struct qmp_queue {
    struct qmp_msg *head, *tail;
    size_t len;
};

struct qmp_reader {
    json_tokener *tok;
    size_t pending;   /* bytes of the message being parsed, for the cap */
    size_t max_msg;
    int skip_line;    /* resynchronising after bad data: drop up to '\n' */
    struct qmp_queue out;
    int err;
    char errstr[160];
};

void qmp_reader_init(struct qmp_reader *r, size_t max_msg);
/*
 * Feed bytes; complete messages are queued.  Returns 0, or -1 when some of
 * the data was malformed or oversized (err/errstr set; the reader skips to
 * the next line and goes on, and messages around the bad data are kept).
 */
int qmp_reader_feed(struct qmp_reader *r, const char *buf, size_t len);
/* Pop the oldest complete message (caller owns it), or NULL. */
json_object *qmp_reader_get(struct qmp_reader *r);
/* True when part of a message has been fed but not completed. */
int qmp_reader_partial(const struct qmp_reader *r);
void qmp_reader_free(struct qmp_reader *r);

struct qmp_conn {
    int fd;
    int err;
    char errstr[256];
    struct qmp_reader rd;
    struct qmp_queue events;
    size_t events_dropped;
    json_object *greeting;
    int64_t next_id;
    int log;                               /* echo traffic to stderr */
    const volatile sig_atomic_t *intr;     /* set by SIGINT, may be NULL */
    char *wbuf;                            /* reused send buffer */
    size_t wcap;
    int rcv_ms;                            /* SO_RCVTIMEO now set, -1 unknown */
};

/* Take ownership of a connected stream socket (a socketpair end). */
struct qmp_conn *qmp_open_fd(int fd);
/*
 * Connect to a UNIX socket path, retrying a missing or refusing socket until
 * the timeout; intr (may be NULL) stops the retries.  Always returns a
 * conn: check ->err.
 */
struct qmp_conn *qmp_connect(const char *path, double timeout,
                             const volatile sig_atomic_t *intr);
/* Read the greeting and negotiate capabilities. */
int qmp_handshake(struct qmp_conn *c, double timeout);
/*
 * Run one command.  args may be NULL.  On success *reply is the whole
 * response object ({"return":..} or {"error":..}), owned by the caller.
 * Events that arrive meanwhile are queued.  timeout < 0 waits forever.
 */
int qmp_execute(struct qmp_conn *c, const char *cmd, json_object *args, double timeout,
                json_object **reply);
/* The same, passing pass_fd to QEMU with the command (SCM_RIGHTS), as
 * getfd and add-fd expect; the caller keeps its own copy of the fd. */
int qmp_execute_fd(struct qmp_conn *c, const char *cmd, json_object *args, int pass_fd,
                   double timeout, json_object **reply);
/*
 * Next event, from the FIFO first, else from the socket until the deadline.
 * timeout 0 only looks at what has already arrived.
 */
int qmp_next_event(struct qmp_conn *c, double timeout, json_object **event);
/* Read whatever has arrived without blocking, queueing events. */
int qmp_pump(struct qmp_conn *c);
void qmp_close(struct qmp_conn *c);
void qmp_free(struct qmp_conn *c);

#endif
