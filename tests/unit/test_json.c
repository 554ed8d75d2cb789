/*
 * test_json.c - unit tests of shell/ljson.c: JSON (json-c) <-> Lua values
 * and the module qshell.json.
 *
 * Owns: the same small harness as test_qmp.c (CHECK records file:line and
 * goes on; tests are rows of one table; the last line is "N passed, N
 * failed"), and a bare lua_State with only the standard libraries and
 * qshell.json (as the global `json`).  Does not own: QMP or any QEMU; the
 * Lua-level behaviour of qemu.json inside the full shell is tested by
 * tests/integration/core.lua.
 *
 * Both directions are tested at the C API (ljson_from_lua, ljson_push_owned)
 * and through the module (json.encode, json.decode), since qmp.c uses the
 * first and scripts the second.  JSON texts are compared with
 * json_object_equal, which ignores member order (a Lua table has none) but
 * not int vs double.
 *
 *   build/test_json [substring]     run the tests whose name contains it
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ljson.h"

#include "check.h"

/* ---- harness ---- */


/* ---- Lua helpers ---- */

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    /* As luaenv.c registers it: package.loaded["qshell.json"]. */
    luaL_requiref(L, "qshell.json", luaopen_qshell_json, 0);
    lua_setglobal(L, "json");
    return L;
}

/*
 * Run chunk with the nargs values on top of the stack as its `...`.
 * Returns LUA_OK and leaves nres results, or an error status and leaves the
 * message.
 */
static int run(lua_State *L, const char *chunk, int nargs, int nres)
{
    int rc = luaL_loadstring(L, chunk);
    if (rc != LUA_OK) {
        lua_insert(L, -(nargs + 1));
        lua_pop(L, nargs);
        return rc;
    }
    lua_insert(L, -(nargs + 1));
    return lua_pcall(L, nargs, nres, 0);
}

/* Evaluate a Lua expression and push its value; a failure pushes nil. */
#define PUSH_EXPR(L, expr) push_expr((L), (expr), __FILE__, __LINE__)
static int push_expr(lua_State *L, const char *expr, const char *file, int line)
{
    char chunk[4096];
    snprintf(chunk, sizeof chunk, "return %s", expr);
    if (run(L, chunk, 0, 1) != LUA_OK) {
        check_fail(file, line, "evaluating %s raised: %s", expr, lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_pushnil(L);
        return 0;
    }
    return 1;
}

/* json.decode(text) pushed; on a raise, a failure and nil. */
#define PUSH_DECODED(L, text, len) push_decoded((L), (text), (len), __FILE__, __LINE__)
static int push_decoded(lua_State *L, const char *text, size_t len, const char *file, int line)
{
    lua_pushlstring(L, text, len);
    if (run(L, "return json.decode(...)", 1, 1) != LUA_OK) {
        check_fail(file, line, "json.decode(%s) raised: %s", text, lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_pushnil(L);
        return 0;
    }
    return 1;
}

/* The message json.decode(text) raises, or NULL if it did not raise (static). */
static const char *decode_error(lua_State *L, const char *text)
{
    static char msg[256];
    lua_pushstring(L, text);
    int rc = run(L, "return json.decode(...)", 1, 1);
    if (rc == LUA_OK) {
        lua_pop(L, 1);
        return NULL;
    }
    snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 1);
    return msg;
}

/* The string json.encode(<expr>) returns, or the error it raises (static). */
static const char *encode_result(lua_State *L, const char *expr, int *raised)
{
    static char out[4096];
    char chunk[4096];
    snprintf(chunk, sizeof chunk, "return json.encode(%s)", expr);
    int rc = run(L, chunk, 0, 1);
    *raised = rc != LUA_OK;
    size_t len = 0;
    const char *s = lua_tolstring(L, -1, &len);
    if (!s || len >= sizeof out) {
        snprintf(out, sizeof out, "(%s)", s ? "too long" : "not a string");
    } else {
        memcpy(out, s, len + 1);
    }
    lua_pop(L, 1);
    return out;
}

/* Push the value at a dotted path below the value at idx ("a.2.b"; digits
 * index arrays); nil when a step is missing. */
static void push_path(lua_State *L, int idx, const char *path)
{
    lua_pushvalue(L, idx);
    while (*path) {
        size_t n = strcspn(path, ".");
        if (!lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)n, path);
        char *end;
        long long i = strtoll(key, &end, 10);
        if (*key && !*end) {
            lua_rawgeti(L, -1, i);
        } else {
            lua_pushstring(L, key);
            lua_rawget(L, -2);
        }
        lua_remove(L, -2);
        path += n + (path[n] == '.');
    }
}

/* json.type(value at idx) as a static string: "array", "object", "null", "nil". */
static const char *json_type_of(lua_State *L, int idx)
{
    static char buf[16];
    lua_pushvalue(L, idx);
    if (run(L, "return json.type(...)", 1, 1) != LUA_OK) {
        lua_pop(L, 1);
        return "(raised)";
    }
    snprintf(buf, sizeof buf, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "nil");
    lua_pop(L, 1);
    return buf;
}

static int is_null(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    ljson_push_null(L);
    int eq = lua_rawequal(L, -1, idx);
    lua_pop(L, 1);
    return eq;
}

/* "integer", "float" or the Lua type name of the value at idx. */
static const char *num_kind(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TNUMBER) {
        return lua_typename(L, lua_type(L, idx));
    }
    return lua_isinteger(L, idx) ? "integer" : "float";
}

/* ---- ljson_from_lua, protected ---- */

static struct {
    json_object *out;
    int rc;
    int unbalanced;
    char err[160];
} fl;

static int from_lua_cfn(lua_State *L)
{
    int top = lua_gettop(L);
    fl.rc = ljson_from_lua(L, 1, &fl.out, fl.err, sizeof fl.err);
    fl.unbalanced = lua_gettop(L) != top;
    return 0;
}

/*
 * ljson_from_lua on the value on top of the stack (popped), inside a pcall
 * so that a raise (the header promises none) is a failure, not an abort.
 * Returns its rc; *out gets the object (the caller puts it).
 */
#define FROM_LUA(L, out, err) from_lua((L), (out), (err), __FILE__, __LINE__)
static int from_lua(lua_State *L, json_object **out, char *err, const char *file, int line)
{
    fl.out = NULL;
    fl.rc = -2;
    fl.unbalanced = 0;
    snprintf(fl.err, sizeof fl.err, "(unset)");
    lua_pushcfunction(L, from_lua_cfn);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        check_fail(file, line, "ljson_from_lua raised: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        *out = NULL;
        err[0] = '\0';
        return -2;
    }
    if (fl.unbalanced) {
        check_fail(file, line, "ljson_from_lua left the Lua stack unbalanced");
    }
    *out = fl.out;
    memcpy(err, fl.err, sizeof fl.err);
    return fl.rc;
}

/* JSON text of obj (NULL is null), plain, into a static buffer. */
static const char *text_of(json_object *obj)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s", json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN));
    return buf;
}

/*
 * CHECK_ENC(L, expr, want): ljson_from_lua of the Lua expression gives a
 * JSON value equal to the text want (member order aside, int vs double not).
 */
#define CHECK_ENC(L, expr, want) check_enc((L), (expr), (want), __FILE__, __LINE__)
static void check_enc(lua_State *L, const char *expr, const char *want, const char *file,
                      int line)
{
    json_object *obj, *w = json_tokener_parse(want);
    char err[160];
    if (!w && strcmp(want, "null") != 0) {
        check_fail(file, line, "bad expected JSON %s", want);
        return;
    }
    if (!push_expr(L, expr, file, line)) {
        json_object_put(w);
        return;
    }
    int rc = from_lua(L, &obj, err, file, line);
    if (rc != 0) {
        check_fail(file, line, "encoding %s failed (%d): %s", expr, rc, err);
    } else if (!json_object_equal(obj, w)) {
        check_fail(file, line, "%s encodes as %s, expected %s", expr, text_of(obj), want);
    } else if (err[0]) {
        check_fail(file, line, "encoding %s succeeded but left err \"%s\"", expr, err);
    }
    json_object_put(obj);
    json_object_put(w);
}

/*
 * CHECK_ENC_FAILS(L, expr, needle): both ljson_from_lua (-1, err) and
 * json.encode (a raise) refuse the value with a message containing needle.
 */
#define CHECK_ENC_FAILS(L, expr, needle) check_enc_fails((L), (expr), (needle), __FILE__, __LINE__)
static void check_enc_fails(lua_State *L, const char *expr, const char *needle,
                            const char *file, int line)
{
    json_object *obj;
    char err[160];
    if (!push_expr(L, expr, file, line)) {
        return;
    }
    int rc = from_lua(L, &obj, err, file, line);
    if (rc != -1) {
        check_fail(file, line, "ljson_from_lua(%s) returned %d (%s), expected -1", expr, rc,
                   rc == 0 ? text_of(obj) : err);
    } else if (!strstr(err, needle)) {
        check_fail(file, line, "ljson_from_lua(%s) error \"%s\" lacks \"%s\"", expr, err, needle);
    }
    if (rc == -1 && obj) {
        check_fail(file, line, "ljson_from_lua(%s) failed but set *out", expr);
    }
    json_object_put(rc == 0 ? obj : NULL);

    int raised;
    const char *msg = encode_result(L, expr, &raised);
    if (!raised) {
        check_fail(file, line, "json.encode(%s) returned %s, expected an error", expr, msg);
    } else if (!strstr(msg, "json.encode: ") || !strstr(msg, needle)) {
        check_fail(file, line, "json.encode(%s) raised \"%s\", expected \"json.encode: ...%s\"",
                   expr, msg, needle);
    }
}

/* JSON text -> json.decode -> json.encode is the same JSON value. */
#define CHECK_ROUND_TRIP(L, text) check_round_trip((L), (text), __FILE__, __LINE__)
static void check_round_trip(lua_State *L, const char *text, const char *file, int line)
{
    json_object *want = json_tokener_parse(text);
    if (!push_decoded(L, text, strlen(text), file, line)) {
        json_object_put(want);
        return;
    }
    if (run(L, "return json.encode(...)", 1, 1) != LUA_OK) {
        check_fail(file, line, "json.encode(json.decode(%s)) raised: %s", text,
                   lua_tostring(L, -1));
    } else {
        json_object *got = json_tokener_parse(lua_tostring(L, -1));
        if (!json_object_equal(got, want)) {
            check_fail(file, line, "%s came back as %s", text, lua_tostring(L, -1));
        }
        json_object_put(got);
    }
    lua_pop(L, 1);
    json_object_put(want);
}

/* A json-c value n arrays deep: [[...[]...]] (n >= 1). */
static json_object *nested_arrays(int n)
{
    json_object *o = json_object_new_array();
    for (int i = 1; i < n; i++) {
        json_object *outer = json_object_new_array();
        json_object_array_add(outer, o);
        o = outer;
    }
    return o;
}

/* ---- JSON -> Lua ---- */

static void test_decode_shape(void)
{
    lua_State *L = new_state();
    const char *text = "{\"name\": \"vm0\", \"n\": 3, \"ratio\": 0.25, \"on\": true, \"off\": false,"
                       " \"nothing\": null, \"list\": [1, \"two\", [3], {\"four\": 4}, null],"
                       " \"empty_obj\": {}, \"empty_arr\": [], \"neg\": -17, \"exp\": 1e3}";
    int top = lua_gettop(L);
    PUSH_DECODED(L, text, strlen(text));
    int v = lua_gettop(L);
    CHECK_STR(json_type_of(L, v), "object");

    push_path(L, v, "name");
    CHECK_STR(lua_tostring(L, -1), "vm0");
    push_path(L, v, "n");
    CHECK_STR(num_kind(L, -1), "integer");
    CHECK_INT(lua_tointeger(L, -1), 3);
    push_path(L, v, "ratio");
    CHECK_STR(num_kind(L, -1), "float");
    CHECK(lua_tonumber(L, -1) == 0.25);
    push_path(L, v, "on");
    CHECK(lua_isboolean(L, -1) && lua_toboolean(L, -1));
    push_path(L, v, "off");
    CHECK(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    push_path(L, v, "nothing");
    CHECK(is_null(L, -1));
    push_path(L, v, "neg");
    CHECK_INT(lua_tointeger(L, -1), -17);
    push_path(L, v, "exp");
    CHECK_STR(num_kind(L, -1), "float");
    CHECK(lua_tonumber(L, -1) == 1000.0);
    lua_settop(L, v);

    push_path(L, v, "list");
    CHECK_STR(json_type_of(L, -1), "array");
    CHECK_INT(lua_rawlen(L, -1), 5);
    push_path(L, v, "list.1");
    CHECK_INT(lua_tointeger(L, -1), 1);
    push_path(L, v, "list.2");
    CHECK_STR(lua_tostring(L, -1), "two");
    push_path(L, v, "list.3");
    CHECK_STR(json_type_of(L, -1), "array");
    push_path(L, v, "list.3.1");
    CHECK_INT(lua_tointeger(L, -1), 3);
    push_path(L, v, "list.4");
    CHECK_STR(json_type_of(L, -1), "object");
    push_path(L, v, "list.4.four");
    CHECK_INT(lua_tointeger(L, -1), 4);
    push_path(L, v, "list.5");
    CHECK(is_null(L, -1));
    lua_settop(L, v);

    push_path(L, v, "empty_obj");
    CHECK_STR(json_type_of(L, -1), "object");
    push_path(L, v, "empty_arr");
    CHECK_STR(json_type_of(L, -1), "array");
    lua_settop(L, top);

    /* Scalars at top level; whitespace around them is fine. */
    PUSH_DECODED(L, " 42 \n", 5);
    CHECK_STR(num_kind(L, -1), "integer");
    CHECK_INT(lua_tointeger(L, -1), 42);
    PUSH_DECODED(L, "\"s\"", 3);
    CHECK_STR(lua_tostring(L, -1), "s");
    PUSH_DECODED(L, "true", 4);
    CHECK(lua_isboolean(L, -1) && lua_toboolean(L, -1));
    lua_settop(L, top);
    lua_close(L);
}

static void test_decode_errors(void)
{
    lua_State *L = new_state();
    CHECK_HAS(decode_error(L, "{"), "json.decode");
    CHECK_HAS(decode_error(L, "{\"a\" 1}"), "json.decode");
    CHECK_HAS(decode_error(L, ""), "json.decode");
    CHECK_HAS(decode_error(L, "[1] [2]"), "trailing data at byte 5");
    CHECK_HAS(decode_error(L, "1 2"), "trailing data");
    CHECK(run(L, "return json.decode({})", 0, 1) != LUA_OK);
    lua_settop(L, 0);
    lua_close(L);
}

/* ---- round trips ---- */

static void test_round_trip_json(void)
{
    lua_State *L = new_state();
    CHECK_ROUND_TRIP(L, "{\"a\": {\"b\": {\"c\": [1, [2, [3, {\"d\": \"e\"}]]]}}}");
    CHECK_ROUND_TRIP(L, "[[], {}, [[]], [{}], {\"x\": []}, {\"y\": {}}]");
    CHECK_ROUND_TRIP(L, "{\"return\": [{\"name\": \"cpu\", \"type\": \"child<cpu>\"},"
                        " {\"name\": \"type\", \"type\": \"string\"}], \"id\": 7}");
    CHECK_ROUND_TRIP(L, "[null, 1, null, {\"k\": null}, [null]]");
    CHECK_ROUND_TRIP(L, "[true, false, 0, -1, 0.5, -2.25, 1.5e-7, \"\", \"x\\\"y\\\\z\\n\"]");
    CHECK_ROUND_TRIP(L, "{}");
    CHECK_ROUND_TRIP(L, "[]");
    CHECK_ROUND_TRIP(L, "null");
    CHECK_ROUND_TRIP(L, "{\"1\": \"string key that looks like an index\", \"2\": 2}");
    CHECK_ROUND_TRIP(L, "[9223372036854775807, -9223372036854775808, 9007199254740993]");
    lua_close(L);
}

static void test_round_trip_lua(void)
{
    lua_State *L = new_state();
    /* Lua -> JSON -> Lua: the decoded value has the same contents and types. */
    const char *src = "return {"
                      "  args = {path = '/tmp/x.qcow2', size = 1073741824, ratio = 0.5,"
                      "          flags = {'a', 'b', {c = true}}, none = json.null},"
                      "  empty_a = json.array(), empty_o = json.object(), plain = {},"
                      "  deep = {{{{'leaf'}}}},"
                      "}";
    CHECK(run(L, src, 0, 1) == LUA_OK);
    int v = lua_gettop(L);
    lua_pushvalue(L, v);
    CHECK(run(L, "return json.decode(json.encode(...))", 1, 1) == LUA_OK);
    int d = lua_gettop(L);

    push_path(L, d, "args.path");
    CHECK_STR(lua_tostring(L, -1), "/tmp/x.qcow2");
    push_path(L, d, "args.size");
    CHECK_STR(num_kind(L, -1), "integer");
    CHECK_INT(lua_tointeger(L, -1), 1073741824);
    push_path(L, d, "args.ratio");
    CHECK(lua_tonumber(L, -1) == 0.5);
    push_path(L, d, "args.flags");
    CHECK_STR(json_type_of(L, -1), "array");
    CHECK_INT(lua_rawlen(L, -1), 3);
    push_path(L, d, "args.flags.2");
    CHECK_STR(lua_tostring(L, -1), "b");
    push_path(L, d, "args.flags.3.c");
    CHECK(lua_toboolean(L, -1));
    push_path(L, d, "args.none");
    CHECK(is_null(L, -1));
    push_path(L, d, "empty_a");
    CHECK_STR(json_type_of(L, -1), "array");
    push_path(L, d, "empty_o");
    CHECK_STR(json_type_of(L, -1), "object");
    push_path(L, d, "plain");
    CHECK_STR(json_type_of(L, -1), "object");
    push_path(L, d, "deep.1.1.1.1");
    CHECK_STR(lua_tostring(L, -1), "leaf");
    lua_settop(L, d);

    /* And a second trip changes nothing. */
    lua_pushvalue(L, v);
    lua_pushvalue(L, d);
    CHECK(run(L, "local a, b = ... return json.encode(a), json.encode(b)", 2, 2) == LUA_OK);
    json_object *a = json_tokener_parse(lua_tostring(L, -2));
    json_object *b = json_tokener_parse(lua_tostring(L, -1));
    CHECKF(a && json_object_equal(a, b), "second trip: %s vs %s", lua_tostring(L, -2),
           lua_tostring(L, -1));
    json_object_put(a);
    json_object_put(b);
    lua_close(L);
}

/* ---- null ---- */

static void test_null(void)
{
    lua_State *L = new_state();
    int top = lua_gettop(L);

    /* JSON null decodes to the sentinel json.null, not nil. */
    PUSH_DECODED(L, "null", 4);
    CHECK(is_null(L, -1));
    CHECK(lua_type(L, -1) == LUA_TUSERDATA);
    PUSH_EXPR(L, "json.null");
    CHECK(is_null(L, -1));
    CHECK(lua_rawequal(L, -1, -2));
    CHECK_STR(json_type_of(L, -1), "null");
    CHECK(run(L, "return tostring(json.null)", 0, 1) == LUA_OK);
    CHECK_STR(lua_tostring(L, -1), "null");
    lua_settop(L, top);

    /* A null keeps its array position. */
    PUSH_DECODED(L, "[1, null, 3]", 12);
    CHECK_INT(lua_rawlen(L, -1), 3);
    push_path(L, -1, "2");
    CHECK(is_null(L, -1));
    lua_settop(L, top);

    /* The sentinel and nil go out as null. */
    CHECK_ENC(L, "json.null", "null");
    CHECK_ENC(L, "nil", "null");
    CHECK_ENC(L, "{1, json.null, 3}", "[1, null, 3]");
    CHECK_ENC(L, "{a = json.null}", "{\"a\": null}");
    CHECK_ENC(L, "json.decode('null')", "null");
    int raised;
    CHECK_STR(encode_result(L, "json.null", &raised), "null");
    CHECK(!raised);

    /* ljson_push_null pushes that same value; requiring the module again
     * (a second luaopen) does not make a second sentinel. */
    ljson_push_null(L);
    PUSH_EXPR(L, "json.null");
    CHECK(lua_rawequal(L, -1, -2));
    luaL_requiref(L, "qshell.json.again", luaopen_qshell_json, 0);
    lua_getfield(L, -1, "null");
    CHECK(lua_rawequal(L, -1, -3));
    CHECK(is_null(L, -1));
    lua_settop(L, top);

    /* Other userdata is not null. */
    CHECK_ENC_FAILS(L, "io.stdout", "cannot encode a userdata value");
    lua_close(L);
}

/* ---- tables: marks and shapes ---- */

static void test_marks(void)
{
    lua_State *L = new_state();
    int top = lua_gettop(L);

    /* json.array() / json.object() mark an empty table. */
    CHECK_ENC(L, "json.array()", "[]");
    CHECK_ENC(L, "json.object()", "{}");
    CHECK_ENC(L, "json.array({})", "[]");
    CHECK_ENC(L, "json.object({})", "{}");
    CHECK_ENC(L, "json.array({1, 'x'})", "[1, \"x\"]");
    CHECK_ENC(L, "json.object({k = 1})", "{\"k\": 1}");
    CHECK_ENC(L, "{json.array(), json.object(), {}}", "[[], {}, {}]");

    /* The mark is on the table itself (json.array returns its argument). */
    CHECK(run(L, "local t = {} return rawequal(json.array(t), t), json.type(t)", 0, 2) ==
          LUA_OK);
    CHECK(lua_toboolean(L, -2));
    CHECK_STR(lua_tostring(L, -1), "array");
    lua_settop(L, top);
    PUSH_EXPR(L, "{}");
    CHECK_STR(json_type_of(L, -1), "nil");
    PUSH_EXPR(L, "1");
    CHECK_STR(json_type_of(L, -1), "nil");
    lua_settop(L, top);

    /* Decoded [] and {} keep their type through a round trip, also after
     * being filled or emptied. */
    CHECK_ENC(L, "json.decode('[]')", "[]");
    CHECK_ENC(L, "json.decode('{}')", "{}");
    CHECK_ENC(L, "json.decode('{\"a\": [], \"b\": {}}')", "{\"a\": [], \"b\": {}}");
    CHECK_ENC(L, "(function() local t = json.decode('[]') t[1] = 5 return t end)()", "[5]");
    CHECK_ENC(L, "(function() local t = json.decode('{}') t.x = 1 return t end)()",
              "{\"x\": 1}");
    CHECK_ENC(L, "(function() local t = json.decode('[7]') t[1] = nil return t end)()", "[]");
    CHECK_ENC(L, "(function() local t = json.decode('{\"x\": 1}') t.x = nil return t end)()",
              "{}");

    /* A mark wins over the shape: an object with keys 1..n is refused. */
    CHECK_ENC_FAILS(L, "json.object({1, 2})", "non-string key");
    CHECK_ENC_FAILS(L, "(function() local t = json.decode('{}') t[1] = 1 return t end)()",
                    "non-string key");

    /* Marking something that is not a table raises. */
    CHECK(run(L, "return json.array(1)", 0, 1) != LUA_OK);
    CHECK(run(L, "return json.object('x')", 0, 1) != LUA_OK);
    lua_settop(L, top);
    lua_close(L);
}

static void test_unmarked_shapes(void)
{
    lua_State *L = new_state();
    /* Keys exactly 1..n: an array, in index order. */
    CHECK_ENC(L, "{1, 2, 3}", "[1, 2, 3]");
    CHECK_ENC(L, "{'only'}", "[\"only\"]");
    CHECK_ENC(L, "(function() local t = {} t[3] = 'c' t[1] = 'a' t[2] = 'b' return t end)()",
              "[\"a\", \"b\", \"c\"]");
    CHECK_ENC(L, "{[1] = 'x', [2] = 'y'}", "[\"x\", \"y\"]");
    CHECK_ENC(L, "{[1.0] = 'float key normalised'}", "[\"float key normalised\"]");
    /* Empty: an object, since QMP arguments are objects. */
    CHECK_ENC(L, "{}", "{}");
    CHECK_ENC(L, "{a = {}}", "{\"a\": {}}");
    /* String keys: an object, even digit strings. */
    CHECK_ENC(L, "{x = 1, y = 'z'}", "{\"x\": 1, \"y\": \"z\"}");
    CHECK_ENC(L, "{['1'] = 1, ['2'] = 2}", "{\"1\": 1, \"2\": 2}");
    /* Anything else is an object with a non-string key, which raises. */
    CHECK_ENC_FAILS(L, "{[1] = 'a', [3] = 'c'}", "non-string key (number");
    CHECK_ENC_FAILS(L, "{[0] = 'zero'}", "non-string key (number 0)");
    CHECK_ENC_FAILS(L, "{[-1] = 'neg'}", "non-string key (number -1)");
    CHECK_ENC_FAILS(L, "{1, 2, x = 3}", "non-string key (number");
    CHECK_ENC_FAILS(L, "{[2] = 'b'}", "non-string key (number 2)");
    lua_close(L);
}

static void test_bad_keys(void)
{
    lua_State *L = new_state();
    CHECK_ENC_FAILS(L, "{[true] = 1}", "non-string key (boolean)");
    CHECK_ENC_FAILS(L, "{[1.5] = 1}", "non-string key (number 1.5)");
    CHECK_ENC_FAILS(L, "{[{}] = 1}", "non-string key (table)");
    CHECK_ENC_FAILS(L, "{[print] = 1}", "non-string key (function)");
    CHECK_ENC_FAILS(L, "{[json.null] = 1}", "non-string key (userdata)");
    /* Deep inside, the same error comes out and nothing leaks (ASan). */
    CHECK_ENC_FAILS(L, "{a = {b = {1, 2, {c = {[false] = 0}}}}}", "non-string key (boolean)");
    CHECK_ENC_FAILS(L, "{ok = 'yes', bad = {[2.5] = 'x'}}", "non-string key (number 2.5)");
    lua_close(L);
}

/*
 * A key holding a NUL byte: json-c keys are C strings, so the key cannot be
 * kept.  Silently cutting it at the NUL (two keys collapsing into one) would
 * lose data; the encoder must refuse, as it does for other keys it cannot
 * represent.
 */
static void test_nul_in_key(void)
{
    lua_State *L = new_state();
    json_object *obj;
    char err[160];
    PUSH_EXPR(L, "{['a\\0b'] = 1, ['a\\0c'] = 2}");
    int rc = FROM_LUA(L, &obj, err);
    if (rc == 0) {
        int nkeys = 0, kept = 1;
        json_object_object_foreach(obj, key, val)
        {
            (void)val;
            nkeys++;
            kept &= strlen(key) == 3;
        }
        CHECKF(nkeys == 2 && kept,
               "{['a\\0b']=1, ['a\\0c']=2} encoded as %s: keys cut at the NUL, not refused",
               text_of(obj));
        json_object_put(obj);
    } else {
        CHECK_INT(rc, -1);
        CHECK(err[0] != '\0');
    }
    lua_close(L);
}

/* ---- cycles, depth, unencodable values ---- */

static void test_cycles(void)
{
    lua_State *L = new_state();
    CHECK_ENC_FAILS(L, "(function() local t = {} t.self = t return t end)()", "cycle");
    CHECK_ENC_FAILS(L, "(function() local t = {} t[1] = t return t end)()", "cycle");
    CHECK_ENC_FAILS(L, "(function() local a = {} a.b = {c = {d = a}} return a end)()", "cycle");
    CHECK_ENC_FAILS(L, "(function() local a = json.array() a[1] = {a} return a end)()", "cycle");
    CHECK_ENC_FAILS(L, "(function() local o = json.object() o.x = {y = o} return {o} end)()",
                    "cycle");
    /* The same table twice, not inside itself, is no cycle. */
    CHECK_ENC(L, "(function() local x = {1} return {a = x, b = x} end)()",
              "{\"a\": [1], \"b\": [1]}");
    CHECK_ENC(L, "(function() local x = {k = 'v'} return {x, x, {x}} end)()",
              "[{\"k\": \"v\"}, {\"k\": \"v\"}, [{\"k\": \"v\"}]]");
    lua_close(L);
}

static void test_depth(void)
{
    lua_State *L = new_state();
    const char *nest = "(function(n) local t = {} for i = 2, n do t = {t} end return t end)";
    char expr[256];
    int top = lua_gettop(L);

    /* Encoding: 64 nested tables are fine, 65 are an error. */
    snprintf(expr, sizeof expr, "%s(%d)", nest, LJSON_MAX_DEPTH);
    PUSH_EXPR(L, expr);
    json_object *obj;
    char err[160];
    CHECK_INT(FROM_LUA(L, &obj, err), 0);
    int depth = 0;
    for (json_object *o = obj; o; depth++) {
        o = json_object_is_type(o, json_type_array) && json_object_array_length(o)
                ? json_object_array_get_idx(o, 0)
                : NULL;
    }
    CHECK_INT(depth, LJSON_MAX_DEPTH);
    json_object_put(obj);
    snprintf(expr, sizeof expr, "%s(%d)", nest, LJSON_MAX_DEPTH + 1);
    CHECK_ENC_FAILS(L, expr, "nested deeper than 64");
    snprintf(expr, sizeof expr, "%s(%d)", nest, 100000);
    CHECK_ENC_FAILS(L, expr, "nested deeper than 64");
    /* Depth counts nesting, not size: a wide table is fine. */
    CHECK(run(L, "local t = {} for i = 1, 5000 do t[i] = {i} end return #json.encode(t)", 0,
              1) == LUA_OK);
    CHECK(lua_tointeger(L, -1) > 5000);
    lua_settop(L, top);

    /* Decoding: the same limit. */
    char text[2 * 100 + 1];
    for (int n = LJSON_MAX_DEPTH; n <= LJSON_MAX_DEPTH + 1; n++) {
        memset(text, '[', (size_t)n);
        memset(text + n, ']', (size_t)n);
        text[2 * n] = '\0';
        const char *e = decode_error(L, text);
        if (n <= LJSON_MAX_DEPTH) {
            CHECKF(!e, "%d nested arrays: %s", n, e);
        } else {
            CHECKF(e && strstr(e, "json.decode"), "%d nested arrays decoded", n);
        }
    }
    memset(text, '[', 100);
    text[100] = '\0';
    CHECK_HAS(decode_error(L, text), "json.decode");

    /* ljson_push_owned: a 64-deep json-c value converts (qmp.c's reader
     * allows 64); far deeper raises (test_push_owned). */
    obj = nested_arrays(LJSON_MAX_DEPTH);
    ljson_push_owned(L, obj);
    CHECK_INT(lua_rawlen(L, -1), 1);
    CHECK_STR(json_type_of(L, -1), "array");
    lua_settop(L, top);
    lua_close(L);
}

static json_object *owned_arg;

static int push_owned_cfn(lua_State *L)
{
    ljson_push_owned(L, owned_arg);
    return 1;
}

static void test_push_owned(void)
{
    lua_State *L = new_state();
    int top = lua_gettop(L);

    /* It takes over the caller's reference: with one extra reference held
     * here, the put below is the last one. */
    json_object *obj = json_tokener_parse("{\"a\": [1, 2, {\"b\": null}]}");
    json_object_get(obj);
    ljson_push_owned(L, obj);
    CHECK_INT(lua_gettop(L), top + 1);
    CHECK_STR(json_type_of(L, -1), "object");
    push_path(L, -1, "a.3.b");
    CHECK(is_null(L, -1));
    CHECK_INT(json_object_put(obj), 1);
    lua_settop(L, top);

    /* NULL is JSON null. */
    ljson_push_owned(L, NULL);
    CHECK(is_null(L, -1));
    lua_settop(L, top);

    /* Raising (too deep) still drops the reference, once the box is
     * collected. */
    owned_arg = nested_arrays(200);
    json_object_get(owned_arg);
    lua_pushcfunction(L, push_owned_cfn);
    int rc = lua_pcall(L, 0, 1, 0);
    CHECK(rc != LUA_OK);
    if (rc != LUA_OK) {
        CHECK_HAS(lua_tostring(L, -1), "JSON nested deeper than 64 levels");
    }
    lua_settop(L, top);
    lua_gc(L, LUA_GCCOLLECT, 0);
    CHECK_INT(json_object_put(owned_arg), 1);
    owned_arg = NULL;
    lua_close(L);
}

static void test_unencodable(void)
{
    lua_State *L = new_state();
    CHECK_ENC_FAILS(L, "print", "cannot encode a function value");
    CHECK_ENC_FAILS(L, "coroutine.create(print)", "cannot encode a thread value");
    CHECK_ENC_FAILS(L, "{f = print}", "cannot encode a function value");
    CHECK_ENC_FAILS(L, "0/0", "NaN");
    CHECK_ENC_FAILS(L, "math.huge", "infinity");
    CHECK_ENC_FAILS(L, "{-math.huge}", "infinity");
    lua_close(L);
}

/* ---- numbers ---- */

static void test_int64(void)
{
    lua_State *L = new_state();
    int top = lua_gettop(L);

    /* Lua integers go out exactly, also beyond 2^53. */
    CHECK_ENC(L, "math.maxinteger", "9223372036854775807");
    CHECK_ENC(L, "math.mininteger", "-9223372036854775808");
    CHECK_ENC(L, "(1 << 53) + 1", "9007199254740993");
    CHECK_ENC(L, "-(1 << 62) - 3", "-4611686018427387907");
    int raised;
    CHECK_STR(encode_result(L, "{math.maxinteger, math.mininteger}", &raised),
              "[9223372036854775807,-9223372036854775808]");

    /* And come back as the same integers. */
    static const struct {
        const char *text;
        long long want;
    } ints[] = {
        {"9223372036854775807", INT64_MAX},
        {"-9223372036854775808", INT64_MIN},
        {"9007199254740993", 9007199254740993LL},
        {"-9007199254740993", -9007199254740993LL},
        {"0", 0},
        {"-0", 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        PUSH_DECODED(L, ints[i].text, strlen(ints[i].text));
        CHECKF(lua_isinteger(L, -1) && lua_tointeger(L, -1) == ints[i].want,
               "%s decoded as %s %.17g", ints[i].text, num_kind(L, -1), lua_tonumber(L, -1));
        lua_settop(L, top);
    }
    CHECK(run(L, "return json.decode(json.encode(math.maxinteger)) == math.maxinteger and "
                 "json.decode(json.encode(math.mininteger)) == math.mininteger",
              0, 1) == LUA_OK);
    CHECK(lua_toboolean(L, -1));
    lua_settop(L, top);

    /* Between INT64_MAX and UINT64_MAX: a float of that value. */
    PUSH_DECODED(L, "9223372036854775808", 19);
    CHECK_STR(num_kind(L, -1), "float");
    CHECK(lua_tonumber(L, -1) == 9223372036854775808.0);
    PUSH_DECODED(L, "18446744073709551615", 20);
    CHECK_STR(num_kind(L, -1), "float");
    CHECK(lua_tonumber(L, -1) == 18446744073709551615.0);
    lua_settop(L, top);
    lua_close(L);
}

/*
 * Integers beyond the 64-bit range.  JSON sets no range; QMP never sends
 * these, but scripts decode other JSON.  Acceptable: a float near the value
 * (what Lua's own tonumber gives) or a decode error.  Not acceptable: a
 * different number, silently (json-c clamps to INT64_MIN / UINT64_MAX).
 */
static void test_beyond_int64(void)
{
    lua_State *L = new_state();
    static const struct {
        const char *text;
        double want;
    } big[] = {
        {"123456789012345678901234567890", 1.2345678901234568e29},
        {"-123456789012345678901234567890", -1.2345678901234568e29},
        {"100000000000000000000", 1e20},
        {"-100000000000000000000", -1e20},
        {"[1, 99999999999999999999999]", 99999999999999999999999.0},
        {"-9223372036854775809", -9223372036854775809.0},
    };
    int top = lua_gettop(L);
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        lua_pushstring(L, big[i].text);
        if (run(L, "return json.decode(...)", 1, 1) != LUA_OK) {
            CHECK_HAS(lua_tostring(L, -1), "json.decode");
            lua_settop(L, top);
            continue;
        }
        if (big[i].text[0] == '[') {
            push_path(L, -1, "2");
        }
        double got = lua_tonumber(L, -1), want = big[i].want;
        CHECKF(!lua_isinteger(L, -1) && fabs(got - want) <= fabs(want) * 1e-15,
               "%s decoded as %s %.17g, expected a float %.17g or an error", big[i].text,
               num_kind(L, -1), got, want);
        lua_settop(L, top);
    }
    lua_close(L);
}

static void test_whole_floats(void)
{
    lua_State *L = new_state();
    json_object *obj;
    char err[160];

    /* Whole floats go out as JSON integers (QMP rejects 1073741824.0). */
    static const struct {
        const char *expr;
        long long want;
    } whole[] = {
        {"2.0^30", 1073741824LL},
        {"1e9", 1000000000LL},
        {"6 / 2", 3},
        {"2.0^53", 9007199254740992LL},
        {"-2.0^63", INT64_MIN},
        {"-0.0", 0},
        {"-5.0", -5},
        {"2.0^62", 4611686018427387904LL},
        {"-(2.0^53 - 1)", -9007199254740991LL},
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        PUSH_EXPR(L, whole[i].expr);
        CHECK(!lua_isinteger(L, -1));
        if (FROM_LUA(L, &obj, err) == 0) {
            CHECKF(json_object_is_type(obj, json_type_int) &&
                       json_object_get_int64(obj) == whole[i].want,
                   "%s encoded as %s, expected %lld", whole[i].expr, text_of(obj),
                   whole[i].want);
            json_object_put(obj);
        } else {
            check_fail(__FILE__, __LINE__, "%s: %s", whole[i].expr, err);
        }
    }
    int raised;
    CHECK_STR(encode_result(L, "{size = 2.0^30}", &raised), "{\"size\":1073741824}");

    /* Fractions and whole floats outside int64 stay doubles, same value. */
    static const struct {
        const char *expr;
        double want;
    } frac[] = {
        {"0.5", 0.5},
        {"-2.25", -2.25},
        {"1/3", 1.0 / 3},
        {"2.0^63", 9223372036854775808.0},
        {"-2.0^64", -18446744073709551616.0},
        {"1e300", 1e300},
        {"2.0^-1074", 4.9406564584124654e-324},
    };
    for (size_t i = 0; i < sizeof frac / sizeof frac[0]; i++) {
        PUSH_EXPR(L, frac[i].expr);
        if (FROM_LUA(L, &obj, err) == 0) {
            CHECKF(json_object_is_type(obj, json_type_double) &&
                       json_object_get_double(obj) == frac[i].want,
                   "%s encoded as %s, expected %.17g", frac[i].expr, text_of(obj),
                   frac[i].want);
            json_object_put(obj);
        } else {
            check_fail(__FILE__, __LINE__, "%s: %s", frac[i].expr, err);
        }
        /* The text decodes to the same double. */
        char chunk[256];
        snprintf(chunk, sizeof chunk, "local v = %s return json.decode(json.encode(v)) == v",
                 frac[i].expr);
        CHECKF(run(L, chunk, 0, 1) == LUA_OK && lua_toboolean(L, -1), "%s: text round trip",
               frac[i].expr);
        lua_pop(L, 1);
    }
    lua_close(L);
}

/* ---- strings ---- */

static void test_strings(void)
{
    lua_State *L = new_state();
    int top = lua_gettop(L);

    /* Escapes, control characters, an embedded NUL: exact round trips. */
    CHECK(run(L, "local s = 'q\"b\\\\s/n\\nt\\tc\\1\\31nul\\0end' "
                 "local e = json.encode(s) "
                 "return json.decode(e) == s, #json.decode(e) == #s, e",
              0, 3) == LUA_OK);
    CHECK(lua_toboolean(L, -3));
    CHECK(lua_toboolean(L, -2));
    CHECK_HAS(lua_tostring(L, -1), "\\u0000");
    CHECK_HAS(lua_tostring(L, -1), "\\n");
    lua_settop(L, top);

    PUSH_DECODED(L, "\"a\\u0000b\"", 10);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    CHECK(len == 3 && memcmp(s, "a\0b", 3) == 0);
    lua_settop(L, top);

    /* Valid UTF-8 passes unescaped; \u escapes decode to UTF-8. */
    int raised;
    CHECK_STR(encode_result(L, "'h\\u{e9}llo \\u{20ac} \\u{1f600}'", &raised),
              "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"");
    PUSH_DECODED(L, "\"\\u00e9\\u20ac\\ud83d\\ude00\"", 26);
    CHECK_STR(lua_tostring(L, -1), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    lua_settop(L, top);
    lua_close(L);
}

/*
 * Invalid UTF-8.  Nothing documents it (README "qemu.json" is silent); what
 * ljson does is pass the bytes through unchanged both ways, like Lua
 * strings: json.encode emits them raw (so its output is not valid UTF-8
 * JSON) and json.decode keeps them as they were.  These checks pin that.
 */
static void test_invalid_utf8(void)
{
    lua_State *L = new_state();
    int top = lua_gettop(L);

    /* A lone continuation byte, a truncated sequence, an overlong '/',
     * a UTF-16 surrogate encoded in UTF-8, 0xff. */
    const char *bad = "a\x80" "b\xc3" "c\xc0\xaf" "d\xed\xa0\x80" "e\xff";
    char want[64];
    snprintf(want, sizeof want, "\"%s\"", bad);
    lua_pushstring(L, bad);
    CHECK(run(L, "return json.encode(...)", 1, 1) == LUA_OK);
    CHECK_STR(lua_tostring(L, -1), want);
    lua_settop(L, top);

    PUSH_DECODED(L, want, strlen(want));
    CHECK_STR(lua_tostring(L, -1), bad);
    lua_settop(L, top);

    lua_pushstring(L, bad);
    CHECK(run(L, "local s = ... return json.decode(json.encode({[s] = s}))[s] == s", 1, 1) ==
          LUA_OK);
    CHECK(lua_toboolean(L, -1));
    lua_settop(L, top);
    lua_close(L);
}

/* ---- the C API contract ---- */

static void test_from_lua_contract(void)
{
    lua_State *L = new_state();
    json_object *obj;
    char err[160];

    /* Relative and absolute indices, with other values above it. */
    PUSH_EXPR(L, "{k = 'v'}");
    lua_pushinteger(L, 1);
    lua_pushinteger(L, 2);
    obj = (json_object *)1;
    CHECK_INT(ljson_from_lua(L, -3, &obj, err, sizeof err), 0);
    CHECK_STR(err, "");
    CHECK_STR(text_of(obj), "{\"k\":\"v\"}");
    json_object_put(obj);
    CHECK_INT(lua_gettop(L), 3);
    CHECK_INT(ljson_from_lua(L, 1, &obj, err, sizeof err), 0);
    CHECK_STR(text_of(obj), "{\"k\":\"v\"}");
    json_object_put(obj);
    lua_settop(L, 0);

    /* nil -> *out NULL, rc 0 (JSON null). */
    lua_pushnil(L);
    obj = (json_object *)1;
    CHECK_INT(FROM_LUA(L, &obj, err), 0);
    CHECK(obj == NULL);

    /* A failure leaves *out NULL and a message, and the error message fits
     * a small buffer without overflowing it. */
    char small[16];
    memset(small, 'x', sizeof small);
    PUSH_EXPR(L, "{[true] = 1}");
    obj = (json_object *)1;
    CHECK_INT(ljson_from_lua(L, -1, &obj, small, sizeof small), -1);
    CHECK(obj == NULL);
    CHECK(memchr(small, '\0', sizeof small) != NULL);
    CHECK_INT(lua_gettop(L), 1);
    lua_settop(L, 0);

    /* json.encode's options. */
    int raised;
    const char *pretty = encode_result(L, "{a = {1, 2}}, {pretty = true}", &raised);
    CHECK(!raised && strchr(pretty, '\n'));
    CHECK_STR(encode_result(L, "'a/b', {pretty = false}", &raised), "\"a/b\"");
    CHECK_HAS(encode_result(L, "1, {indent = 2}", &raised), "unknown option 'indent'");
    CHECK(raised);
    lua_close(L);
}

/* ---- main ---- */

static const struct unit_test tests[] = {
    {"decode: types and nested shape", test_decode_shape},
    {"decode: malformed input raises", test_decode_errors},
    {"round trip: JSON -> Lua -> JSON", test_round_trip_json},
    {"round trip: Lua -> JSON -> Lua", test_round_trip_lua},
    {"null: the sentinel both ways", test_null},
    {"tables: ARRAY/OBJECT marks", test_marks},
    {"tables: unmarked 1..n is an array, empty an object", test_unmarked_shapes},
    {"tables: non-string keys raise", test_bad_keys},
    {"tables: a NUL in a key is refused, not cut", test_nul_in_key},
    {"tables: cycles raise, shared tables do not", test_cycles},
    {"depth: 64 levels, no more", test_depth},
    {"push_owned: reference handling", test_push_owned},
    {"values: functions, threads, NaN, infinities raise", test_unencodable},
    {"numbers: int64 range exact", test_int64},
    {"numbers: integers beyond 64 bits are not silently changed", test_beyond_int64},
    {"numbers: whole floats go out as integers", test_whole_floats},
    {"strings: escapes, NUL, UTF-8", test_strings},
    {"strings: invalid UTF-8 passes through as bytes", test_invalid_utf8},
    {"from_lua: C API contract, encode options", test_from_lua_contract},
};

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : getenv("QSHELL_TEST_FILTER");

    int rc = unit_run(tests, sizeof tests / sizeof tests[0], filter);
    return rc;
}
