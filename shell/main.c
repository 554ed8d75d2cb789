/*
 * main.c - the command line: chooses script, -e, attach or interactive
 * mode, runs everything inside lua_pcall(pmain) (lua.c), and maps the
 * outcome to an exit status: 0 success, 1 script error, 2 usage error,
 * 128+N when ended by signal N.
 *
 * Whatever happens, main calls lua_close, which runs every __gc: each VM
 * the script launched is killed and reaped and its temp dir removed.  The
 * atexit hook covers exits that skip lua_close (os.exit without `close`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "luaenv.h"
#include "proc.h"
#include "repl.h"
#include "sig.h"

#ifndef QSHELL_VERSION
#define QSHELL_VERSION "unknown"
#endif

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: qshell [options]                      interactive shell\n"
    "       qshell [options] run SCRIPT [ARGS...] run a Lua script (also: qshell SCRIPT)\n"
    "       qshell [options] -e CODE [-e CODE...] run Lua code\n"
    "       qshell [options] sweep [--slurm] [--resume] SCRIPT [ARGS...]\n"
    "                                             run a script whose qemu.sweep calls go\n"
    "                                             to Slurm (a job array) or stay local;\n"
    "                                             --resume: do what earlier runs did not\n"
    "       qshell [options] sweep --status RESULTS|JOBDIR\n"
    "                                             a Slurm sweep's progress\n"
    "       qshell [options] sweep --rerun RESULTS ROW [--replay]\n"
    "                                             run one row of a sweep's results again\n"
    "                                             from what it records; say what differs\n"
    "       qshell [options] results FILE... [OPTIONS]\n"
    "                                             summary, comparison, figure or live view\n"
    "                                             of sweep results (qshell results --help)\n"
    "       qshell [options] doc [NAME...|--man|--markdown|--meta]\n"
    "                                             the Lua API reference: an entry, the man\n"
    "                                             page qshell-lua(7), Markdown, LuaCATS\n"
    "       qshell [options] attach SOCKET        shell on a QEMU started with\n"
    "                                             -qmp unix:SOCKET,server=on,wait=off\n"
    "options:\n"
    "  -e CODE     run CODE (several -e run in order, before any script)\n"
    "  -i          enter the interactive shell after the script or -e code\n"
    "  -v          print a traceback with errors\n"
    "  --version   print the version and exit\n"
    "  --help      print this help and exit\n"
    "A script sees its arguments in `arg` (arg[0] is the script) and in `...`.\n"
    "Environment: QSHELL_LOG=1 echoes QMP traffic, QSHELL_KEEP_TMP=1 keeps VM temp\n"
    "dirs, QSHELL_PATH adds Lua module paths, QSHELL_STDLIB=dir loads the stdlib\n"
    "from dir instead of the embedded copy.\n";

struct opts {
    const char *codes[64];
    int ncodes;
    int interactive;
    const char *mode;   /* "script", "attach", "repl", "cli" */
    const char *target; /* script path, socket, or the Lua module of a "cli" command */
    int script_index;   /* index of the script in argv */
    int argc;
    char **argv;
    int exit_code; /* what a "cli" command returned */
};

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "qshell: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage_text);
    return EXIT_USAGE;
}

/* Returns -1 to go on, or an exit status. */
static int parse_args(int argc, char **argv, struct opts *o, struct qs_state *st)
{
    int i = 1;
    o->mode = "repl";
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("qshell %s (%s)\n", QSHELL_VERSION, LUA_RELEASE);
            return 0;
        } else if (strcmp(a, "-v") == 0) {
            st->verbose = 1;
        } else if (strcmp(a, "-i") == 0) {
            o->interactive = 1;
        } else if (strcmp(a, "-e") == 0) {
            if (i + 1 >= argc) {
                return usage_error("'-e' needs an argument%s", "");
            }
            if (o->ncodes == (int)(sizeof o->codes / sizeof o->codes[0])) {
                return usage_error("too many -e options%s", "");
            }
            o->codes[o->ncodes++] = argv[++i];
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s'", a);
        } else {
            break;
        }
    }
    if (i < argc) {
        if (strcmp(argv[i], "run") == 0) {
            if (i + 1 >= argc) {
                return usage_error("'run' needs a script%s", "");
            }
            i++;
        } else if (strcmp(argv[i], "doc") == 0) {
            /* qshell doc [--man|--markdown|--meta] [NAME...]: the Lua reference */
            o->mode = "cli";
            o->target = "qemu.doc.cli";
            o->script_index = i;
            return -1;
        } else if (strcmp(argv[i], "results") == 0) {
            /* qshell results ...: a command written in Lua, given its args */
            o->mode = "cli";
            o->target = "qemu.results.cli";
            o->script_index = i;
            return -1;
        } else if (strcmp(argv[i], "sweep") == 0) {
            /* qshell sweep [--slurm|--local] [--resume] SCRIPT [ARGS]: the
             * script's qemu.sweep calls use that engine (and resume);
             * --rerun FILE ROW and --status PATH are commands of their own. */
            i++;
            for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
                if (strcmp(argv[i], "--slurm") == 0 || strcmp(argv[i], "--local") == 0) {
                    setenv("QSHELL_SWEEP_ENGINE", argv[i] + 2, 1);
                } else if (strcmp(argv[i], "--resume") == 0) {
                    setenv("QSHELL_SWEEP_RESUME", "1", 1);
                } else if (strcmp(argv[i], "--rerun") == 0 || strcmp(argv[i], "--status") == 0) {
                    int rerun = argv[i][2] == 'r';
                    /* --rerun FILE ROW [--replay] */
                    int replay = rerun && argc - i == 4 && strcmp(argv[argc - 1], "--replay") == 0;
                    if (argc - i != (rerun ? 3 + replay : 2)) {
                        return usage_error(rerun ? "'sweep --rerun' needs a results file and a row (and --replay)%s"
                                                 : "'sweep --status' needs a results file or a job dir%s",
                                           "");
                    }
                    o->mode = "cli";
                    o->target = rerun ? "qemu.sweep.rerun" : "qemu.sweep.slurm_jobs";
                    o->script_index = i;
                    return -1;
                } else {
                    return usage_error("unknown sweep option '%s'", argv[i]);
                }
            }
            if (i >= argc) {
                return usage_error("'sweep' needs a script%s", "");
            }
        } else if (strcmp(argv[i], "attach") == 0) {
            if (i + 1 >= argc) {
                return usage_error("'attach' needs a QMP socket path%s", "");
            }
            if (i + 2 < argc) {
                return usage_error("unexpected argument after the socket: '%s'", argv[i + 2]);
            }
            o->mode = "attach";
            o->target = argv[i + 1];
            return -1;
        }
        o->mode = "script";
        o->target = argv[i];
        o->script_index = i;
    } else if (o->ncodes > 0 && !o->interactive) {
        o->mode = "none";
    }
    return -1;
}

/* arg table as lua.c builds it: arg[0] = script, arg[1..] = its arguments. */
static int push_script_args(lua_State *L, struct opts *o)
{
    int first = o->script_index;
    lua_createtable(L, o->argc - first - 1, first + 1);
    for (int i = 0; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
        lua_rawseti(L, -2, i - first);
    }
    lua_setglobal(L, "arg");
    int n = o->argc - first - 1;
    luaL_checkstack(L, n, "too many script arguments");
    for (int i = first + 1; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
    }
    return n;
}

static int run_chunk(lua_State *L, int status, int nargs)
{
    if (status == LUA_OK) {
        status = qs_docall(L, nargs, 0); /* the chunk is below its arguments */
    } else if (nargs > 0) {
        lua_pop(L, nargs);
    }
    return qs_report(L, status);
}

/*
 * After a script ends normally, quit the VMs it left running gracefully
 * (QMP quit lets QEMU flush its images); lua_close would only kill them.
 */
static void shutdown_vms(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "qemu");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "_shutdown");
        if (lua_isfunction(L, -1)) {
            qs_report(L, qs_docall(L, 0, 0));
        } else {
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 3);
}

static int pmain(lua_State *L)
{
    struct opts *o = lua_touserdata(L, 1);
    struct qs_state *st = lua_touserdata(L, 2);

    lua_pushcfunction(L, luaenv_init);
    lua_pushlightuserdata(L, st);
    lua_call(L, 1, 0);
    sig_set_state(L);

    /* The one implicit global: qemu. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "qemu");
    if (qs_report(L, qs_docall(L, 1, 1)) != LUA_OK) {
        return 0;
    }
    lua_setglobal(L, "qemu");

    if (qs_report(L, luaenv_run_init(L)) != LUA_OK) {
        return 0;
    }
    for (int i = 0; i < o->ncodes; i++) {
        int s = luaL_loadbuffer(L, o->codes[i], strlen(o->codes[i]), "=(command line)");
        if (run_chunk(L, s, 0) != LUA_OK) {
            return 0;
        }
    }
    if (strcmp(o->mode, "cli") == 0) {
        /* require(module).main({args after the command}) -> exit status */
        static const char call[] = "local m, a = ...; return require(m).main(a)";
        int s = luaL_loadbuffer(L, call, sizeof call - 1, "=(qshell)");
        lua_pushstring(L, o->target);
        lua_createtable(L, o->argc - o->script_index - 1, 0);
        for (int i = o->script_index + 1; i < o->argc; i++) {
            lua_pushstring(L, o->argv[i]);
            lua_rawseti(L, -2, i - o->script_index);
        }
        if (s != LUA_OK) {
            lua_pop(L, 2);
            qs_report(L, s);
            return 0;
        }
        if (qs_report(L, qs_docall(L, 2, 1)) != LUA_OK) {
            return 0;
        }
        o->exit_code = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        shutdown_vms(L);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (strcmp(o->mode, "script") == 0) {
        const char *file = strcmp(o->target, "-") == 0 ? NULL : o->target;
        if (file) {
            luaenv_add_script_dir(L, file);
        }
        int s = luaL_loadfile(L, file);
        int nargs = push_script_args(L, o); /* pushed above the chunk */
        if (run_chunk(L, s, nargs) != LUA_OK) {
            return 0;
        }
        if (!o->interactive) {
            shutdown_vms(L);
            lua_pushboolean(L, 1);
            return 1;
        }
        o->mode = "repl";
    }
    if (strcmp(o->mode, "none") == 0) {
        shutdown_vms(L);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (repl_main(L, strcmp(o->mode, "attach") == 0 ? o->target : NULL) != 0) {
        return 0;
    }
    shutdown_vms(L);
    lua_pushboolean(L, 1);
    return 1;
}

int main(int argc, char **argv)
{
    struct qs_state st = {.progname = "qshell"};
    struct opts o = {.argc = argc, .argv = argv};

    int rc = parse_args(argc, argv, &o, &st);
    if (rc >= 0) {
        return rc;
    }
    atexit(proc_release_all);
    sig_init();

    lua_State *L = luaenv_open(&st);
    if (!L) {
        fprintf(stderr, "qshell: cannot create the Lua state: not enough memory\n");
        return 1;
    }
    lua_pushcfunction(L, pmain);
    lua_pushlightuserdata(L, &o);
    lua_pushlightuserdata(L, &st);
    int status = lua_pcall(L, 2, 1, 0);
    int ok = status == LUA_OK && lua_toboolean(L, -1);
    if (status != LUA_OK) {
        qs_report(L, status);
    }
    sig_set_state(NULL);
    lua_close(L);
    int sigst = sig_exit_status();
    if (sigst) {
        return sigst;
    }
    return ok ? o.exit_code : 1;
}
