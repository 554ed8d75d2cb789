/*
 * repl.c - the interactive shell on a terminal (libedit), and the same line
 * handling without one.
 *
 * Owns: the terminal while a line is read, history, the chunk being typed.
 * Does not own: what a line means beyond Lua (stdlib/qemu/repl.lua handles
 * `:qmp`, `!hmp`, prompts, completion and event text; meta.c the
 * dot-commands).
 *
 * Lua chunks: a line is first tried as `return <line>;` (lua.c's
 * addreturn), then as statements; while the chunk is incomplete (a syntax
 * error at <eof>) more lines are read (lua.c's multiline).  Without a
 * terminal there is no prompt and the first error ends the run with status
 * 1 (`lua -`, SQLite's bail_on_error).
 *
 * Events at the prompt: libedit reads each key through rl_getc_function,
 * which here polls the terminal and every VM's monitor socket; when an event
 * arrives it is printed above the line being typed, which is then redrawn.
 */
#include <errno.h>
#include <locale.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>

#include "luaenv.h"
#include "meta.h"
#include "repl.h"
#include "sig.h"
#include "util.h"

#ifndef QSHELL_VERSION
#define QSHELL_VERSION "unknown"
#endif

#define EOFMARK "<eof>"
#define MARKLEN (sizeof(EOFMARK) / sizeof(char) - 1)
#define HISTORY_MAX 2000
#define MAX_WATCH 64

/*
 * libedit's callbacks (getc, completion) carry no user pointer, so the
 * shell they serve is reached through these statics: one shell per process.
 */
static lua_State *shell_L;
static int watch[MAX_WATCH];
static int nwatch;
static int fresh_line; /* no key read yet for this line */

/* 1 if the load failed only because the chunk is unfinished. */
static int incomplete(lua_State *L, int status)
{
    if (status == LUA_ERRSYNTAX) {
        size_t lmsg;
        const char *msg = lua_tolstring(L, -1, &lmsg);
        if (lmsg >= MARKLEN && strcmp(msg + lmsg - MARKLEN, EOFMARK) == 0) {
            lua_pop(L, 1);
            return 1;
        }
    }
    return 0;
}

/* Compile buf as "return buf;" (an expression) or as statements. */
static int load_chunk(lua_State *L, const char *buf, size_t len, const char *name)
{
    const char *ret = lua_pushfstring(L, "return %s;", buf);
    int status = luaL_loadbuffer(L, ret, strlen(ret), name);
    lua_remove(L, -2);
    if (status == LUA_OK) {
        return status;
    }
    lua_pop(L, 1);
    return luaL_loadbuffer(L, buf, len, name);
}

/* Push qemu.repl.<fn>, or return -1 (reported). */
static int push_repl_fn(lua_State *L, const char *fn)
{
    if (repl_module(L) != LUA_OK) {
        qs_report(L, LUA_ERRRUN);
        return -1;
    }
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    return 0;
}

/* Print the values a chunk left (above base) through qemu.repl.print. */
static void print_results(lua_State *L, int base)
{
    int n = lua_gettop(L) - base;
    if (n <= 0) {
        return;
    }
    if (push_repl_fn(L, "print") < 0) {
        lua_settop(L, base);
        return;
    }
    lua_insert(L, base + 1);
    qs_report(L, qs_docall(L, n, 0));
}

/* `:cmd ...` and `!line`: returns the Lua status. */
static int run_special(lua_State *L, const char *line)
{
    if (push_repl_fn(L, line[0] == ':' ? "qmp_line" : "hmp_line") < 0) {
        return LUA_ERRRUN;
    }
    lua_pushstring(L, line);
    return qs_report(L, qs_docall(L, 1, 0));
}

/*
 * Feed one line.  Returns 0 to go on, 1 after an error, 2 to quit; *more is
 * set while a Lua chunk is unfinished.
 */
static int feed_line(lua_State *L, struct strbuf *chunk, const char *line, const char *chunkname,
                     int *more)
{
    *more = 0;
    if (chunk->len == 0) {
        const char *p = line;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        if (*p == '\0') {
            return 0;
        }
        if (*p == '.') {
            int rc = meta_run(L, p);
            return rc == META_QUIT ? 2 : rc == META_ERROR ? 1 : 0;
        }
        if (*p == ':' || *p == '!') {
            return run_special(L, p) == LUA_OK ? 0 : 1;
        }
    }
    if (chunk->len) {
        sb_add(chunk, "\n", 1);
    }
    sb_adds(chunk, line);
    int base = lua_gettop(L);
    int status = load_chunk(L, chunk->buf, chunk->len, chunkname);
    if (incomplete(L, status)) {
        *more = 1;
        return 0;
    }
    if (status == LUA_OK) {
        status = qs_docall(L, 0, LUA_MULTRET);
    }
    if (status != LUA_OK) {
        qs_report(L, status);
        lua_settop(L, base);
        return 1;
    }
    print_results(L, base);
    lua_settop(L, base);
    return 0;
}

/* ---- without a terminal ---- */

static int run_pipe(lua_State *L)
{
    struct strbuf chunk;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0, more = 0;

    sb_init(&chunk);
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
            line[--n] = '\0';
        }
        int r = feed_line(L, &chunk, line, "=stdin", &more);
        if (!more) {
            sb_consume(&chunk, chunk.len);
        }
        if (r == 2) {
            break;
        }
        if (r == 1 || qs_terminating) {
            rc = 1;
            break;
        }
    }
    if (rc == 0 && more) {
        /* Input ended inside a chunk: report its syntax error. */
        int status = load_chunk(L, chunk.buf, chunk.len, "=stdin");
        qs_report(L, status);
        if (status == LUA_OK) {
            lua_pop(L, 1);
        }
        rc = 1;
    }
    free(line);
    sb_free(&chunk);
    return rc;
}

/* ---- on a terminal ---- */

static void refresh_watch(lua_State *L)
{
    nwatch = 0;
    if (push_repl_fn(L, "watch_fds") < 0) {
        return;
    }
    if (qs_docall(L, 0, 1) != LUA_OK) {
        lua_pop(L, 1);
        return;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n && nwatch < MAX_WATCH; i++) {
        lua_rawgeti(L, -1, i);
        watch[nwatch++] = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/*
 * Print what the VMs reported.  At the prompt (editing) the text goes above
 * the line being edited, which is then redrawn; between commands it is just
 * printed (events that came in while a command waited for its reply).
 */
static void show_events(lua_State *L, int editing)
{
    if (push_repl_fn(L, "on_events") < 0) {
        return;
    }
    if (qs_docall(L, 0, 1) != LUA_OK) {
        lua_pop(L, 1);
        return;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    if (n > 0) {
        if (editing) {
            fputs("\r\033[K", stdout);
        }
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            printf("%s\r\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        fflush(stdout);
        if (editing) {
            rl_forced_update_display();
        }
    }
    lua_pop(L, 1);
    refresh_watch(L);
}

/* libedit's key reader: the terminal, and the monitors for events. */
static int getc_events(FILE *f)
{
    (void)f;
    for (;;) {
        if (qs_interrupted) {
            /*
             * Ctrl-C (maybe before libedit took the terminal): libedit
             * ignores an EOF in the middle of a line, so empty the line and
             * end it; the caller sees the flag.
             */
            rl_replace_line("", 0);
            return '\r';
        }
        struct pollfd p[MAX_WATCH + 1];
        p[0].fd = STDIN_FILENO;
        p[0].events = POLLIN;
        for (int i = 0; i < nwatch; i++) {
            p[i + 1].fd = watch[i];
            p[i + 1].events = POLLIN;
        }
        int n = poll(p, (nfds_t)nwatch + 1, -1);
        if (n < 0) {
            if (errno == EINTR && !qs_interrupted) {
                continue;
            }
            if (qs_interrupted) {
                continue; /* handled at the top */
            }
            return EOF;
        }
        if (p[0].revents) {
            unsigned char c;
            ssize_t r = read(STDIN_FILENO, &c, 1);
            if (r == 1) {
                /*
                 * libedit prints the prompt before it leaves canonical mode:
                 * a Ctrl-D typed in that instant becomes an EOF marker that
                 * the terminal hands over as a NUL byte once raw.  As the
                 * first key of a line, take it for the Ctrl-D it was (a
                 * Ctrl-@ there would only set a mark in an empty line).
                 * rl_end cannot tell: libedit updates it lazily.
                 */
                if (c == 0 && fresh_line) {
                    c = 4;
                }
                fresh_line = 0;
                return c;
            }
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r == 0) {
                /*
                 * A Ctrl-D typed before libedit put the terminal in raw
                 * mode reaches us as a canonical-mode EOF; libedit ignores
                 * EOF from here, so hand it the key itself.
                 */
                return 4;
            }
            return EOF;
        }
        for (int i = 0; i < nwatch; i++) {
            if (p[i + 1].revents) {
                show_events(shell_L, 1);
                break;
            }
        }
    }
}

static char *no_completion(const char *text, int state)
{
    (void)text;
    (void)state;
    return NULL;
}

/* Longest common prefix of the candidates, as libedit wants in matches[0]. */
static char *common_prefix(char **m, int n)
{
    size_t len = strlen(m[0]);
    for (int i = 1; i < n; i++) {
        size_t j = 0;
        while (j < len && m[i][j] == m[0][j]) {
            j++;
        }
        len = j;
    }
    char *p = xmalloc(len + 1);
    memcpy(p, m[0], len);
    p[len] = '\0';
    return p;
}

static char **complete(const char *text, int start, int end)
{
    lua_State *L = shell_L;
    int top = lua_gettop(L);
    char **matches = NULL;

    (void)text;
    if (push_repl_fn(L, "complete") < 0) {
        return NULL;
    }
    lua_pushstring(L, rl_line_buffer);
    lua_pushinteger(L, start);
    lua_pushinteger(L, end);
    if (qs_docall(L, 3, 1) != LUA_OK) {
        lua_settop(L, top);
        return NULL;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        /* "files": a file name inside a string */
        lua_settop(L, top);
        rl_completion_append_character = '\0';
        return rl_completion_matches(text, rl_filename_completion_function);
    }
    int n = lua_istable(L, -1) ? (int)lua_rawlen(L, -1) : 0;
    if (n > 0) {
        matches = xcalloc((size_t)n + 2, sizeof *matches);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            matches[i] = xstrdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
            lua_pop(L, 1);
        }
        matches[0] = n == 1 ? xstrdup(matches[1]) : common_prefix(matches + 1, n);
        /* "name=" and "obj." go on without a space; a whole name gets one. */
        char last = matches[0][0] ? matches[0][strlen(matches[0]) - 1] : 0;
        rl_completion_append_character = (n == 1 && last != '=' && last != '.' && last != ':') ? ' ' : '\0';
    }
    lua_settop(L, top);
    return matches;
}

/* $QSHELL_HISTORY, else $XDG_STATE_HOME/qshell/history, else ~/.local/state/qshell/history */
static char *history_path(void)
{
    const char *env = getenv("QSHELL_HISTORY");
    if (env && *env) {
        return xstrdup(env);
    }
    const char *xdg = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");
    char *dir;
    if (xdg && *xdg) {
        dir = xasprintf("%s/qshell", xdg);
    } else if (home && *home) {
        dir = xasprintf("%s/.local/state/qshell", home);
    } else {
        return NULL;
    }
    /* mkdir -p, quietly: no history is not worth an error. */
    for (char *p = dir + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0700);
            *p = '/';
        }
    }
    mkdir(dir, 0700);
    char *path = xasprintf("%s/history", dir);
    free(dir);
    return path;
}

/* The prompt from qemu.repl.prompt()/prompt2(), copied out of Lua. */
static char *get_prompt(lua_State *L, int continuing)
{
    char *p = NULL;
    if (push_repl_fn(L, continuing ? "prompt2" : "prompt") == 0) {
        if (qs_docall(L, 0, 1) == LUA_OK && lua_isstring(L, -1)) {
            p = xstrdup(lua_tostring(L, -1));
        }
        lua_pop(L, 1);
    }
    return p ? p : xstrdup(continuing ? ">> " : "qshell> ");
}

/* Ctrl-D: leave, but ask once when this shell's VMs are still running. */
static int confirm_quit(lua_State *L)
{
    if (push_repl_fn(L, "owned_running") < 0) {
        return 1;
    }
    if (qs_docall(L, 0, 1) != LUA_OK) {
        lua_pop(L, 1);
        return 1;
    }
    int n = (int)lua_rawlen(L, -1);
    if (n == 0) {
        lua_pop(L, 1);
        return 1;
    }
    struct strbuf names;
    sb_init(&names);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (i > 1) {
            sb_adds(&names, ", ");
        }
        sb_adds(&names, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    char *q = xasprintf("\n%d VM%s running (%s): quit %s and leave? [y/N] ", n, n == 1 ? " is" : "s are",
                        names.buf, n == 1 ? "it" : "them");
    sb_free(&names);
    char *answer = readline(q);
    free(q);
    int yes = !answer || answer[0] == 'y' || answer[0] == 'Y';
    if (!answer) {
        putchar('\n');
    }
    free(answer);
    return yes;
}

static int run_tty(lua_State *L)
{
    struct strbuf chunk;
    int more = 0;
    char *hist = history_path();

    setlocale(LC_CTYPE, ""); /* libedit refuses non-ASCII input without it */
    shell_L = L;
    rl_readline_name = "qshell";
    rl_getc_function = getc_events;
    rl_attempted_completion_function = complete;
    rl_completion_entry_function = no_completion;
    rl_completer_word_break_characters = (char *)" \t\n\"'`@$><=;|&{(,[+-*/~^%#";
    rl_initialize();
    using_history();
    if (hist) {
        read_history(hist);
    }
    printf("qshell %s (%s). .help for help, Ctrl-D to leave.\n", QSHELL_VERSION, LUA_RELEASE);
    sb_init(&chunk);
    for (;;) {
        sig_clear(L);
        show_events(L, 0);
        char *prompt = get_prompt(L, more);
        fresh_line = 1;
        char *line = readline(prompt);
        free(prompt);
        if (line && qs_interrupted && !qs_terminating) {
            free(line);
            line = NULL;
        }
        if (!line) {
            if (qs_interrupted && !qs_terminating) {
                /* Ctrl-C at the prompt: drop the line (and any chunk). */
                sig_clear(L);
                sb_consume(&chunk, chunk.len);
                more = 0;
                fputs("^C\n", stdout);
                continue;
            }
            if (qs_terminating) {
                break;
            }
            if (confirm_quit(L)) {
                putchar('\n');
                break;
            }
            continue;
        }
        int r = feed_line(L, &chunk, line, "=stdin", &more);
        if (!more && chunk.len > 0) {
            add_history(chunk.buf);
        } else if (!more && line[0]) {
            add_history(line);
        }
        if (!more) {
            sb_consume(&chunk, chunk.len);
        }
        free(line);
        if (r == 2 || qs_terminating) {
            break;
        }
    }
    if (hist) {
        stifle_history(HISTORY_MAX);
        write_history(hist);
        free(hist);
    }
    sb_free(&chunk);
    shell_L = NULL;
    return 0;
}

int repl_main(lua_State *L, const char *attach_socket)
{
    if (attach_socket) {
        lua_getglobal(L, "qemu");
        lua_getfield(L, -1, "attach");
        lua_pushstring(L, attach_socket);
        if (qs_report(L, qs_docall(L, 1, 1)) != LUA_OK) {
            lua_pop(L, 1);
            return 1;
        }
        lua_setglobal(L, "vm");
        lua_pop(L, 1);
    }
    /* The shell's one global beyond qemu and vm: help(x) prints x's entry of
     * the Lua reference (qemu.doc.help), unless LUA_INIT made its own. */
    static const char help_def[] =
        "if help == nil then help = function(x) return require('qemu.doc.help').help(x) end end";
    if (luaL_loadbuffer(L, help_def, sizeof help_def - 1, "=(shell)") != LUA_OK ||
        qs_report(L, qs_docall(L, 0, 0)) != LUA_OK) {
        return 1;
    }
    if (!isatty(STDIN_FILENO)) {
        return run_pipe(L);
    }
    /* As lua.c: no program name before errors at the prompt. */
    struct qs_state *st = qs_state_get(L);
    if (st) {
        st->interactive = 1;
    }
    return run_tty(L);
}
