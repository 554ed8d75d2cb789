-- qshell as a Lua 5.4 host: what `lua5.4 script.lua` runs, `qshell run
-- script.lua` runs the same way.  Each case runs both binaries on the same
-- script and compares what a user sees (stdout, exit status, the error
-- line with the program name swapped); lua5.4 is the reference.
local T = require "t"

local QSHELL = os.getenv("QSHELL_BIN") or "./qshell"
local _, cwd = T.sh("pwd")
cwd = cwd:gsub("\n$", "")
local QABS = QSHELL:sub(1, 1) == "/" and QSHELL or (cwd .. "/" .. QSHELL:gsub("^%./", ""))
local tmp = T.tmpdir()

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function write(path, text)
  local f = assert(io.open(path, "w")); f:write(text); f:close()
  return path
end

local function mkdir(p) T.eq((T.sh("mkdir -p " .. q(p))), 0) end

-- Run `BIN SCRIPT ARGS` in dir with env (a string of VAR=value words).
local function both(dir, env, script, args)
  local base = "cd " .. q(dir) .. " && env -u LUA_PATH -u LUA_CPATH -u LUA_INIT -u LUA_PATH_5_4 " ..
               "-u LUA_CPATH_5_4 -u LUA_INIT_5_4 TMPDIR=" .. tmp .. " " .. (env or "") .. " "
  local qc, qo, qe = T.sh(base .. QABS .. " run " .. q(script) .. " " .. (args or ""))
  local lc, lo, le = T.sh(base .. "lua5.4 " .. q(script) .. " " .. (args or ""))
  return { code = qc, out = qo, err = qe }, { code = lc, out = lo, err = le }
end

local function same(qs, lua, what)
  T.eq(qs.code, lua.code, (what or "") .. " exit status")
  T.eq(qs.out, lua.out, (what or "") .. " stdout")
end

-- The first line of lua5.4's error, as qshell prints it.
local function first_line(s) return (s:match("^[^\n]*")) end

T.test("lua5.4 is there to compare with", function()
  local code, out = T.sh("lua5.4 -v")
  T.eq(code, 0)
  T.match(out, "^Lua 5%.4")
end)

T.test("a module beside the script is found from any cwd", function()
  local d = tmp .. "/proj"
  mkdir(d .. "/lib")
  write(d .. "/helper.lua", "return { name = 'helper beside the script' }\n")
  write(d .. "/lib/init.lua", "return { name = 'lib/init.lua beside the script' }\n")
  local s = write(d .. "/exp.lua", "print(require('helper').name)\nprint(require('lib').name)\n")
  mkdir(tmp .. "/elsewhere")
  local qs = both(tmp .. "/elsewhere", nil, s)
  T.eq(qs.code, 0, qs.err)
  T.eq(qs.out, "helper beside the script\nlib/init.lua beside the script\n")
  -- a relative script path: the same
  local code, out = T.sh("cd " .. q(tmp) .. " && TMPDIR=" .. tmp .. " " .. QABS .. " run proj/exp.lua")
  T.eq(code, 0)
  T.match(out, "^helper beside the script\n")
end)

T.test("a module in the current directory (./?.lua), as lua5.4 finds it", function()
  local d = tmp .. "/cwdmods"
  mkdir(d)
  write(d .. "/cwdmod.lua", "return 'from the cwd'\n")
  local s = write(tmp .. "/usecwd.lua", "print((require('cwdmod')))\n")
  local qs, lua = both(d, nil, s)
  T.eq(lua.out, "from the cwd\n")
  same(qs, lua)
end)

T.test("LUA_PATH and LUA_PATH_5_4, with ;; for the default", function()
  local d = tmp .. "/lp"
  mkdir(d .. "/a"); mkdir(d .. "/b")
  write(d .. "/a/lpmod.lua", "return 'a via LUA_PATH'\n")
  write(d .. "/b/lpmod.lua", "return 'b via LUA_PATH_5_4'\n")
  local s = write(tmp .. "/uselp.lua", "print((require('lpmod')))\nprint((package.path:find('/usr/share/lua/5.4/', 1, true)) ~= nil)\n")
  local qs, lua = both(tmp, "LUA_PATH=" .. q(d .. "/a/?.lua;;"), s)
  T.eq(lua.out, "a via LUA_PATH\ntrue\n")
  same(qs, lua, "LUA_PATH")
  qs, lua = both(tmp, "LUA_PATH=" .. q(d .. "/a/?.lua;;") .. " LUA_PATH_5_4=" .. q(d .. "/b/?.lua;;"), s)
  T.eq(lua.out, "b via LUA_PATH_5_4\ntrue\n")
  same(qs, lua, "LUA_PATH_5_4")
end)

T.test("a C module from the distribution (lua-lpeg) loads", function()
  local s = write(tmp .. "/uselpeg.lua", [[
local lpeg = require "lpeg"
print(lpeg.match(lpeg.R("09") ^ 1, "2026x"), package.searchpath("lpeg", package.cpath))
]])
  local qs, lua = both(tmp, nil, s)
  T.eq(lua.code, 0, "lua5.4 with lpeg: " .. lua.err .. " (apt-get install lua-lpeg)")
  T.match(lua.out, "^5\t/.*lpeg%.so\n$")
  same(qs, lua)
end)

T.test("LUA_CPATH is honoured", function()
  local s = write(tmp .. "/cpath.lua", "print(package.cpath)\nprint(pcall(require, 'lpeg'))\n")
  local qs, lua = both(tmp, "LUA_CPATH=" .. q(tmp .. "/none/?.so"), s)
  T.eq(first_line(lua.out), tmp .. "/none/?.so")
  T.match(lua.out, "\nfalse\t")
  T.eq(qs.code, lua.code)
  T.eq(first_line(qs.out), first_line(lua.out))
  T.match(qs.out, "\nfalse\t")
end)

T.test("arg, ... and arg[0]", function()
  local s = write(tmp .. "/args.lua", "print(select('#', ...), ...)\nprint(#arg, arg[0], arg[1], arg[2])\n")
  local qs, lua = both(tmp, nil, s, "one 'two words'")
  same(qs, lua)
  T.eq(lua.out, "2\tone\ttwo words\n2\t" .. s .. "\tone\ttwo words\n")
end)

T.test("os.exit codes: true, false, a number, with close", function()
  for _, case in ipairs { { "os.exit(true)", 0 }, { "os.exit(false)", 1 }, { "os.exit(7)", 7 },
                          { "os.exit(3, true)", 3 }, { "io.write('x') os.exit()", 0 } } do
    local s = write(tmp .. "/exit.lua", case[1] .. "\n")
    local qs, lua = both(tmp, nil, s)
    T.eq(lua.code, case[2], case[1])
    same(qs, lua, case[1])
  end
end)

T.test("errors: the same line as lua5.4, with qshell's name", function()
  local cases = {
    { "runtime.lua", "print('before')\nerror('boom')\n" },
    { "syntax.lua", "local = 1\n" },
    { "tableerr.lua", "error({})\n" },
    { "levelerr.lua", "local function f() error('deep', 2) end\nf()\n" },
  }
  for _, c in ipairs(cases) do
    local s = write(tmp .. "/" .. c[1], c[2])
    local qs, lua = both(tmp, nil, s)
    same(qs, lua, c[1])
    T.eq(first_line(qs.err), (first_line(lua.err):gsub("^lua5%.4: ", "qshell: ")), c[1])
  end
  local qs, lua = both(tmp, nil, tmp .. "/no-such-script.lua")
  T.eq(qs.code, lua.code)
  T.eq(first_line(qs.err), (first_line(lua.err):gsub("^lua5%.4: ", "qshell: ")))
end)

T.test("LUA_INIT and LUA_INIT_5_4 (@file) run before the script", function()
  local s = write(tmp .. "/init.lua", "print(INIT)\n")
  local f = write(tmp .. "/initfile.lua", "INIT = 'from a file'\n")
  local qs, lua = both(tmp, "LUA_INIT=" .. q("INIT = 'from LUA_INIT'"), s)
  T.eq(lua.out, "from LUA_INIT\n")
  same(qs, lua, "LUA_INIT")
  qs, lua = both(tmp, "LUA_INIT=" .. q("INIT = 'no'") .. " LUA_INIT_5_4=@" .. f, s)
  T.eq(lua.out, "from a file\n")
  same(qs, lua, "LUA_INIT_5_4")
  qs, lua = both(tmp, "LUA_INIT=" .. q("error('bad init')"), s)
  T.eq(qs.code, lua.code, "a failing LUA_INIT")
  T.eq(first_line(qs.err), (first_line(lua.err):gsub("^lua5%.4: ", "qshell: ")))
end)

T.run()
