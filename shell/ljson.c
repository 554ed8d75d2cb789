/*
 * ljson.c - json-c <-> Lua, and the module "qshell.json" (encode, decode,
 * null, array, object).
 *
 * Owns the three registry entries that give JSON its Lua shape: the null
 * sentinel and the ARRAY/OBJECT marker metatables.  An unmarked table is an
 * array only when its keys are exactly 1..n; an empty unmarked table is an
 * object, since QMP arguments are objects.  Conversion to JSON never raises
 * (it returns a message), so no json-c reference is ever held across a Lua
 * error; conversion from JSON anchors its input in a box (lauxlib's newbox).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <lauxlib.h>
#include <lua.h>

#include "ljson.h"

#define NULL_KEY "qshell.json.null"
#define ARRAY_MT "qshell.json.ARRAY"
#define OBJECT_MT "qshell.json.OBJECT"
#define BOX_MT "qshell.json.box"

void ljson_push_null(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY);
}

/* ---- JSON -> Lua ---- */

static void push_value(lua_State *L, json_object *o, int depth)
{
    luaL_checkstack(L, 4, "JSON nested too deep");
    /* depth counts the arrays and objects around o: 64 levels of them at most. */
    json_type type = json_object_get_type(o);
    if ((type == json_type_array || type == json_type_object) && depth >= LJSON_MAX_DEPTH) {
        luaL_error(L, "JSON nested deeper than %d levels", LJSON_MAX_DEPTH);
    }
    switch (type) {
    case json_type_null:
        ljson_push_null(L);
        break;
    case json_type_boolean:
        lua_pushboolean(L, json_object_get_boolean(o));
        break;
    case json_type_double:
        lua_pushnumber(L, json_object_get_double(o));
        break;
    case json_type_int: {
        int64_t v = json_object_get_int64(o);
        if (v == INT64_MAX && json_object_get_uint64(o) > (uint64_t)INT64_MAX) {
            lua_pushnumber(L, (lua_Number)json_object_get_uint64(o));
        } else {
            lua_pushinteger(L, (lua_Integer)v);
        }
        break;
    }
    case json_type_string:
        lua_pushlstring(L, json_object_get_string(o), (size_t)json_object_get_string_len(o));
        break;
    case json_type_array: {
        size_t n = json_object_array_length(o);
        lua_createtable(L, n > INT32_MAX ? 0 : (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            push_value(L, json_object_array_get_idx(o, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        luaL_setmetatable(L, ARRAY_MT);
        break;
    }
    case json_type_object: {
        lua_createtable(L, 0, json_object_object_length(o));
        json_object_object_foreach(o, key, val)
        {
            lua_pushstring(L, key);
            push_value(L, val, depth + 1);
            lua_rawset(L, -3);
        }
        luaL_setmetatable(L, OBJECT_MT);
        break;
    }
    }
}

static int box_gc(lua_State *L)
{
    json_object **box = luaL_checkudata(L, 1, BOX_MT);
    if (*box) {
        json_object_put(*box);
        *box = NULL;
    }
    return 0;
}

void ljson_push_owned(lua_State *L, json_object *obj)
{
    /* If pushing raises, the box's __gc still drops obj. */
    json_object **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, BOX_MT);
    *box = obj;
    push_value(L, obj, 0);   // box value
    json_object_put(obj);
    *box = NULL;
    lua_remove(L, -2);       // value
}

/* ---- Lua -> JSON ---- */

struct enc {
    lua_State *L;
    char *err;
    size_t errlen;
    const void *path[LJSON_MAX_DEPTH + 1]; /* tables being encoded, for cycles */
    int depth;
};

static int enc_fail(struct enc *e, const char *fmt, const char *arg)
{
    snprintf(e->err, e->errlen, fmt, arg);
    return -1;
}

static int enc_value(struct enc *e, int idx, json_object **out);

static int has_metatable(lua_State *L, int idx, const char *name)
{
    if (!lua_getmetatable(L, idx)) {
        return 0;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, name);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

/* 1 if the table at idx has exactly the keys 1..n, n >= 1. */
static int is_sequence(lua_State *L, int idx)
{
    lua_Integer count = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1)) {
            lua_pop(L, 1);
            return 0;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1) {
            lua_pop(L, 1);
            return 0;
        }
        if (k > max) {
            max = k;
        }
        count++;
    }
    return count > 0 && count == max;
}

static int enc_array(struct enc *e, int idx, json_object **out)
{
    lua_State *L = e->L;
    lua_Unsigned n = lua_rawlen(L, idx);
    json_object *arr = json_object_new_array_ext(n > 1024 ? 1024 : (int)n);
    for (lua_Unsigned i = 1; i <= n; i++) {
        json_object *v;
        lua_rawgeti(L, idx, (lua_Integer)i);
        int rc = enc_value(e, lua_gettop(L), &v);
        lua_pop(L, 1);
        if (rc < 0) {
            json_object_put(arr);
            return -1;
        }
        json_object_array_add(arr, v);
    }
    *out = arr;
    return 0;
}

static int enc_object(struct enc *e, int idx, json_object **out)
{
    lua_State *L = e->L;
    json_object *obj = json_object_new_object();
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            char what[64];
            if (lua_type(L, -2) == LUA_TNUMBER) {
                /* lua_tostring on a key would confuse lua_next: format a copy. */
                lua_pushvalue(L, -2);
                snprintf(what, sizeof what, "number %s", lua_tostring(L, -1));
                lua_pop(L, 1);
            } else {
                snprintf(what, sizeof what, "%s", luaL_typename(L, -2));
            }
            lua_pop(L, 2);
            json_object_put(obj);
            return enc_fail(e, "cannot encode a table with a non-string key (%s) as a JSON "
                               "object",
                            what);
        }
        json_object *v;
        if (enc_value(e, lua_gettop(L), &v) < 0) {
            lua_pop(L, 2);
            json_object_put(obj);
            return -1;
        }
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen);
        if (strlen(k) != klen) {
            /* json-c keys are C strings: "a\0b" would silently become "a". */
            json_object_put(v);
            lua_pop(L, 2);
            json_object_put(obj);
            return enc_fail(e, "%s", "an object key contains a NUL byte");
        }
        json_object_object_add(obj, k, v);
        lua_pop(L, 1);
    }
    *out = obj;
    return 0;
}

static int enc_table(struct enc *e, int idx, json_object **out)
{
    lua_State *L = e->L;
    const void *self = lua_topointer(L, idx);

    for (int i = 0; i < e->depth; i++) {
        if (e->path[i] == self) {
            return enc_fail(e, "cannot encode a table that contains itself (a cycle)%s", "");
        }
    }
    if (e->depth >= LJSON_MAX_DEPTH) {
        return enc_fail(e, "table nested deeper than 64 levels%s", "");
    }
    if (!lua_checkstack(L, 6)) {
        return enc_fail(e, "out of Lua stack space%s", "");
    }
    e->path[e->depth++] = self;
    int rc;
    if (has_metatable(L, idx, ARRAY_MT)) {
        rc = enc_array(e, idx, out);
    } else if (has_metatable(L, idx, OBJECT_MT)) {
        rc = enc_object(e, idx, out);
    } else if (is_sequence(L, idx)) {
        rc = enc_array(e, idx, out);
    } else {
        rc = enc_object(e, idx, out);
    }
    e->depth--;
    return rc;
}

static int enc_value(struct enc *e, int idx, json_object **out)
{
    lua_State *L = e->L;
    *out = NULL;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 0;
    case LUA_TBOOLEAN:
        *out = json_object_new_boolean(lua_toboolean(L, idx));
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            *out = json_object_new_int64((int64_t)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) {
                return enc_fail(e, "cannot encode %s in JSON", isnan(d) ? "NaN" : "an infinity");
            }
            /*
             * A whole number that Lua holds as a float (1e9, 2^30, n/2)
             * goes out as an integer: QMP rejects 1073741824.0 where it
             * wants an int.
             */
            if (d == floor(d) && d >= -9.2233720368547758e18 && d < 9.2233720368547758e18) {
                *out = json_object_new_int64((int64_t)d);
            } else {
                *out = json_object_new_double(d);
            }
        }
        return 0;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        *out = json_object_new_string_len(s, (int)len);
        return 0;
    }
    case LUA_TTABLE:
        return enc_table(e, idx, out);
    case LUA_TUSERDATA: {
        lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY);
        int isnull = lua_rawequal(L, -1, idx);
        lua_pop(L, 1);
        if (isnull) {
            return 0;
        }
    }
        /* fall through */
    default:
        return enc_fail(e, "cannot encode a %s value in JSON", luaL_typename(L, idx));
    }
}

int ljson_from_lua(lua_State *L, int idx, json_object **out, char *err, size_t errlen)
{
    struct enc e = {.L = L, .err = err, .errlen = errlen};
    err[0] = '\0';
    return enc_value(&e, lua_absindex(L, idx), out);
}

/* ---- module qshell.json ---- */

/* json.encode(value [, {pretty=bool}]) -> string */
static int l_json_encode(lua_State *L)
{
    char err[160];
    int flags = JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE;
    json_object *obj;

    luaL_checkany(L, 1);
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            if (strcmp(k, "pretty") != 0) {
                return luaL_error(L, "json.encode: unknown option '%s'", k);
            }
            if (lua_toboolean(L, -1)) {
                flags = JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                        JSON_C_TO_STRING_NOSLASHESCAPE;
            }
            lua_pop(L, 1);
        }
    }
    /* Anchor the result so that a memory error while pushing cannot leak it. */
    json_object **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, BOX_MT);
    if (ljson_from_lua(L, 1, &obj, err, sizeof err) < 0) {
        return luaL_error(L, "json.encode: %s", err);
    }
    *box = obj;
    size_t len;
    const char *s = json_object_to_json_string_length(obj, flags, &len);
    lua_pushlstring(L, s, len);
    json_object_put(obj);
    *box = NULL;
    return 1;
}

/*
 * json-c clamps an integer literal that does not fit in 64 bits (to
 * INT64_MIN or UINT64_MAX) without a word, even in strict mode.  Find such
 * a literal (outside strings) first; returns its offset, or -1.
 */
static long find_big_integer(const char *s, size_t len)
{
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_str = 0;
            }
            continue;
        }
        if (c == '"') {
            in_str = 1;
            continue;
        }
        if (!((c >= '0' && c <= '9') || c == '-')) {
            continue;
        }
        size_t start = i, j = i + (c == '-');
        while (j < len && s[j] >= '0' && s[j] <= '9') {
            j++;
        }
        int integer = j == len || !strchr(".eE", s[j]);
        if (integer && j - start >= 19) {
            char buf[64];
            size_t n = j - start < sizeof buf - 1 ? j - start : sizeof buf - 1;
            memcpy(buf, s + start, n);
            buf[n] = '\0';
            errno = 0;
            if (buf[0] == '-') {
                (void)strtoll(buf, NULL, 10);
            } else {
                (void)strtoull(buf, NULL, 10);
            }
            if (errno == ERANGE || j - start >= sizeof buf - 1) {
                return (long)start;
            }
        }
        i = j > i ? j - 1 : i;
        while (i + 1 < len && ((s[i + 1] >= '0' && s[i + 1] <= '9') || strchr(".eE+-", s[i + 1]))) {
            i++; /* the rest of a number (fraction, exponent) */
        }
    }
    return -1;
}

/*
 * json.decode(string [, {depth=N}]) -> value; raises on malformed input.
 * depth (1..64, default 64) is the most arrays and objects nested in one
 * another that the text may have: a reader of files from elsewhere (a
 * checkpoint's manifest, a results line) asks for fewer, and the tokener
 * stops at the first level too deep, before it has built the rest.
 */
static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int depth = LJSON_MAX_DEPTH;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            if (strcmp(k, "depth") != 0) {
                return luaL_error(L, "json.decode: unknown option '%s'", k);
            }
            lua_Integer d = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
            if (d < 1 || d > LJSON_MAX_DEPTH) {
                return luaL_error(L, "json.decode: depth must be an integer 1..%d", LJSON_MAX_DEPTH);
            }
            depth = (int)d;
            lua_pop(L, 1);
        }
    }
    long big = find_big_integer(s, len);
    if (big >= 0) {
        return luaL_error(L, "json.decode: the integer at byte %d does not fit in 64 bits", (int)big + 1);
    }
    /* json-c counts depth from 0: +1 so that decode takes the depth levels
     * encode makes (64 by default; fuzz_qmpline checks the round trip). */
    json_tokener *tok = json_tokener_new_ex(depth + 1);
    /* Lua strings end in '\0': include it so a bare number can finish. */
    json_object *obj = json_tokener_parse_ex(tok, s, (int)len + 1);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (jerr == json_tokener_error_depth) {
        /* (json-c says "nesting too deep": say how deep is too deep) */
        return luaL_error(L, "json.decode: nested deeper than %d levels at byte %d", depth, (int)end + 1);
    }
    if (jerr != json_tokener_success) {
        return luaL_error(L, "json.decode: %s at byte %d", json_tokener_error_desc(jerr),
                          (int)end + 1);
    }
    while (end < len && strchr(" \t\r\n", s[end])) {
        end++;
    }
    if (end < len) {
        json_object_put(obj);
        return luaL_error(L, "json.decode: trailing data at byte %d", (int)end + 1);
    }
    ljson_push_owned(L, obj);
    return 1;
}

/* json.array(t) / json.object(t): mark t so that it encodes as that type. */
static int mark(lua_State *L, const char *mt)
{
    if (lua_isnoneornil(L, 1)) {
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    luaL_setmetatable(L, mt);
    return 1;
}

static int l_json_array(lua_State *L)
{
    return mark(L, ARRAY_MT);
}

static int l_json_object(lua_State *L)
{
    return mark(L, OBJECT_MT);
}

/* json.type(v) -> "array" | "object" | "null" | nil */
static int l_json_type(lua_State *L)
{
    luaL_checkany(L, 1);
    if (lua_istable(L, 1) && has_metatable(L, 1, ARRAY_MT)) {
        lua_pushliteral(L, "array");
    } else if (lua_istable(L, 1) && has_metatable(L, 1, OBJECT_MT)) {
        lua_pushliteral(L, "object");
    } else {
        ljson_push_null(L);
        if (lua_rawequal(L, -1, 1)) {
            lua_pushliteral(L, "null");
        } else {
            lua_pushnil(L);
        }
    }
    return 1;
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", l_json_encode}, {"decode", l_json_decode}, {"array", l_json_array},
    {"object", l_json_object}, {"type", l_json_type},     {NULL, NULL},
};

int luaopen_qshell_json(lua_State *L)
{
    luaL_newmetatable(L, ARRAY_MT);
    lua_pushliteral(L, "json.array");
    lua_setfield(L, -2, "__name");
    luaL_newmetatable(L, OBJECT_MT);
    lua_pushliteral(L, "json.object");
    lua_setfield(L, -2, "__name");
    luaL_newmetatable(L, BOX_MT);
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 3);

    lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newuserdatauv(L, 0, 0);
        luaL_newmetatable(L, "qshell.json.nullmt");
        lua_pushcfunction(L, null_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "json.null");
        lua_setfield(L, -2, "__name");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, NULL_KEY);
    }
    luaL_newlib(L, json_funcs);  // null lib
    lua_insert(L, -2);
    lua_setfield(L, -2, "null");
    return 1;
}
