-- qemu.doc.cli: `qshell doc ...`: entries of the Lua reference, or the whole
-- of it as a man page, Markdown or LuaCATS annotations.
-- main(args) returns the exit status: 0, 1 (an error, printed), 2 (usage).

local M = {}

M.usage = [[
usage: qshell doc                 every name, with its summary
       qshell doc NAME...         the entries (qemu.launch, vm:quit, vm.console:run, qemu.disk)
       qshell doc --man           the man page qshell-lua(7), as roff
       qshell doc --markdown      the reference as Markdown (doc/reference.md)
       qshell doc --meta          LuaCATS annotations for lua-language-server
]]

function M.main(args)
  local render = require "qemu.doc.render"
  local help = require "qemu.doc.help"
  local a = args[1]
  if a == "--help" or a == "-h" then
    io.stdout:write(M.usage)
    return 0
  end
  if a == "--man" or a == "--markdown" or a == "--meta" then
    if #args > 1 then
      io.stderr:write("qshell doc: " .. a .. " takes no other argument\n" .. M.usage)
      return 2
    end
    local version = require("qshell.config").version
    if a == "--man" then io.stdout:write(render.man(version))
    elseif a == "--markdown" then io.stdout:write(render.markdown())
    else io.stdout:write(render.meta()) end
    return 0
  end
  if a and a:find("^%-") then
    io.stderr:write("qshell doc: unknown option '" .. a .. "'\n" .. M.usage)
    return 2
  end
  if #args == 0 then
    io.stdout:write(help.text(nil))
    return 0
  end
  local status = 0
  for i, name in ipairs(args) do
    local text, err = help.text(name)
    if text then
      io.stdout:write((i > 1 and "\n" or "") .. text)
    else
      io.stderr:write("qshell doc: " .. err .. "\n")
      status = 1
    end
  end
  return status
end

return M
