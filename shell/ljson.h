/*
 * ljson.h - JSON (json-c) <-> Lua values, and the Lua module "qshell.json".
 *
 * JSON null is the sentinel qshell.json.null; decoded arrays and objects
 * carry the marker metatables qshell.json.ARRAY / qshell.json.OBJECT so that
 * `{}` goes back out as the type it came in as (mpv's MAP/ARRAY).
 */
#ifndef QSHELL_LJSON_H
#define QSHELL_LJSON_H

#include <stddef.h>

#include <json-c/json.h>
#include <lua.h>

#define LJSON_MAX_DEPTH 64

/*
 * Push obj as a Lua value and drop the caller's reference to obj, even if
 * pushing raises (obj is anchored in a userdata box while converting).
 */
void ljson_push_owned(lua_State *L, json_object *obj);
/*
 * Convert the value at idx into *out (a nil or qshell.json.null becomes
 * JSON null, which json-c represents as NULL).  Never raises: returns 0, or
 * -1 with a message in err ("cycle in table", "non-string key", ...).
 */
int ljson_from_lua(lua_State *L, int idx, json_object **out, char *err, size_t errlen);
/* Push the null sentinel. */
void ljson_push_null(lua_State *L);
int luaopen_qshell_json(lua_State *L);

#endif
