-- qemu.image.password: SHA-512 crypt(3) hashes of passwords, for
-- /etc/shadow (qemu.image.customize) and chpasswd -e (qemu.image.build).

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"

local M = {}

local function random_salt()
  local f, err, err_code = io.open("/dev/urandom", "rb")
  if not f then errors.from_code("qemu.image", "cannot read " .. err, err_code) end
  local bytes = f:read(16)
  f:close()
  local alphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
  local out = {}
  for i = 1, 16 do
    local b = bytes:byte(i) % 64 + 1
    out[i] = alphabet:sub(b, b)
  end
  return table.concat(out)
end

---@api qemu.image.hash_password qemu.image.hash_password(password) -> hash
--- A SHA-512 crypt(3) hash of a password (`$6$salt$...`), as `/etc/shadow` and `chpasswd -e` take it.
---
--- The salt is random. The password goes to `busybox mkpasswd` (or, failing that, `openssl passwd -6`) on
--- stdin, never on a command line another user could read.
---
---     print(qemu.image.hash_password("secret"))   --> $6$...
---
---@param password string  the password: non-empty, without a newline
---@return string hash  the crypt hash
---@error BadArgument  an empty password, or one with a newline (it could never be typed at a login prompt)
---@error MissingTool  neither busybox nor openssl is installed
---@error CommandFailed  the hashing program failed or printed no hash
function M.hash_password(pw)
  local fname = "qemu.image.hash_password"
  check.arg(fname, 1, pw, "string")
  if pw:find("[\r\n]") then
    check.bad(fname, "the password contains a newline: it could never be typed at a login prompt")
  end
  if pw == "" then check.bad(fname, "the password is empty (use a real one)") end
  local pwfile = files.scratch_file("pw")
  files.write(pwfile, pw .. "\n", fname)
  local ok, out = pcall(run.check, { "busybox", "mkpasswd", "-m", "sha512", "-S", random_salt() },
                        { command = fname, stdin = pwfile })
  if not ok and run.which("openssl") then
    ok, out = pcall(run.check, { "openssl", "passwd", "-6", "-salt", random_salt(), "-stdin" },
                    { command = fname, stdin = pwfile })
  end
  os.remove(pwfile)
  if not ok then error(out, 0) end
  local hash = out:match("^(%$6%$[^%s]+)")
  if not hash then errors.raise { class = "CommandFailed", command = fname, desc = "cannot hash the password" } end
  return hash
end

return M
