-- qemu.image.cloudinit: NoCloud seed disks for images that run cloud-init
-- (qemu.image.cloud_init delegates here).
--
--   seed{out=, user="debian", password=, ssh_authorized_keys={...}, hostname=,
--        runcmd={...}, packages={...}, write_files=, config={...},
--        instance_id=, format="vfat"|"iso9660", force=false} -> out
--
-- A seed is a small filesystem labelled "cidata" holding two files:
-- user-data (a #cloud-config YAML document) and meta-data (instance-id,
-- local-hostname).  cloud-init's NoCloud source finds it by that label on
-- any disk the guest sees.  vfat is built with qemu.disk.populate (mkfs.fat
-- and mtools: no root, no mount), iso9660 with xorriso or genisoimage.
--
-- Owns: the options, the YAML it writes (every string double-quoted and
-- escaped, so a quote, a colon or a newline in a value is data, never
-- syntax).  Does not own: the filesystem (qemu.disk.populate) or booting.

local errors = require "qemu.errors"
local files = require "qemu.util.fs"
local check = require "qemu.util.check"
local run = require "qemu.util.run"
local disk = require "qemu.disk"
local sys = require "qshell.os"

local M = {}

local FNAME = "qemu.image.cloud_init"

-- ---- a YAML emitter for strings, numbers, booleans, lists and maps ----

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

-- Code points a YAML double-quoted scalar must not hold as they are: C0
-- and C1 controls and DEL (not printable), NEL, LS and PS (YAML reads them
-- as line breaks), the BOM and the two non-characters.
local function needs_escape(cp)
  return cp < 0x20 or cp == 0x7f or (cp >= 0x80 and cp <= 0x9f) or cp == 0x2028 or cp == 0x2029
         or cp == 0xfeff or cp == 0xfffe or cp == 0xffff
end

local SHORT = { [0] = "\\0", [7] = "\\a", [8] = "\\b", [9] = "\\t", [10] = "\\n", [11] = "\\v",
                [12] = "\\f", [13] = "\\r", [27] = "\\e", [34] = '\\"', [92] = "\\\\" }

-- A string as a YAML double-quoted scalar; raises for text that is not UTF-8.
function M.quote(s, what)
  if not utf8.len(s) then
    check.bad(FNAME, "%s is not valid UTF-8 text", what or "a value")
  end
  local out = {}
  for _, cp in utf8.codes(s) do
    if SHORT[cp] then
      out[#out + 1] = SHORT[cp]
    elseif needs_escape(cp) then
      out[#out + 1] = cp <= 0xff and string.format("\\x%02x", cp) or string.format("\\u%04x", cp)
    else
      out[#out + 1] = utf8.char(cp)
    end
  end
  return '"' .. table.concat(out) .. '"'
end

-- Keys are written plain when that cannot be misread (YAML 1.1 takes
-- yes/no/on/off/... for booleans, even as keys), quoted otherwise.
local PLAIN_WORDS = { y = 1, n = 1, yes = 1, no = 1, on = 1, off = 1, ["true"] = 1, ["false"] = 1,
                      null = 1 }
local function key(k, what)
  if type(k) ~= "string" then check.bad(FNAME, "%s: map keys must be strings, got %s", what, type(k)) end
  if k:match("^[%a_][%w_%-]*$") and not PLAIN_WORDS[k:lower()] then return k end
  return M.quote(k, what)
end

local function scalar(v, what)
  local t = type(v)
  if t == "string" then return M.quote(v, what) end
  if t == "boolean" then return v and "true" or "false" end
  if math.type(v) == "integer" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then check.bad(FNAME, "%s: %s is not a number YAML keeps", what, v) end
    return string.format("%.17g", v)
  end
  check.bad(FNAME, "%s: a %s cannot be written to YAML", what, t)
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- Append the lines of `lead value` to out: lead is "key:" or "-" already
-- indented; ind is the indentation of the value's children.  Lists of
-- scalars inside a list go on one line (["ls", "-l"]); a map in a list
-- starts on the dash's line.
local function emit(out, lead, v, ind, what, depth)
  if depth > 32 then check.bad(FNAME, "%s is nested too deeply (a cycle?)", what) end
  if type(v) ~= "table" then
    out[#out + 1] = lead .. " " .. scalar(v, what)
    return
  end
  if next(v) == nil then
    out[#out + 1] = lead .. " []"
    return
  end
  if is_list(v) then
    local flat = lead:sub(-1) == "-"
    for _, item in ipairs(v) do
      if type(item) == "table" then flat = false end
    end
    if flat then
      local parts = {}
      for i, item in ipairs(v) do parts[i] = scalar(item, what) end
      out[#out + 1] = lead .. " [" .. table.concat(parts, ", ") .. "]"
      return
    end
    out[#out + 1] = lead
    for i, item in ipairs(v) do emit(out, ind .. "-", item, ind .. "  ", what .. "[" .. i .. "]", depth + 1) end
    return
  end
  local first = #out + 1
  out[#out + 1] = lead
  for _, k in ipairs(sorted_keys(v)) do
    emit(out, ind .. key(k, what) .. ":", v[k], ind .. "  ", what .. "." .. tostring(k), depth + 1)
  end
  if lead:sub(-1) == "-" then
    -- "- first: v" and the other keys under it
    out[first + 1] = lead .. " " .. out[first + 1]:sub(#ind + 1)
    table.remove(out, first)
  end
end

-- M.yaml(pairs) -> text: a document from an ordered list of {key, value}.
function M.yaml(list)
  local out = {}
  for _, kv in ipairs(list) do emit(out, key(kv[1], kv[1]) .. ":", kv[2], "  ", kv[1], 0) end
  return table.concat(out, "\n") .. "\n"
end

-- ---- options ----

local function list_of(what, kinds)
  return function(v)
    if type(v) ~= "table" or not is_list(v) then return false, "must be a list" end
    for i, item in ipairs(v) do
      if not kinds[type(item)] then
        return false, string.format("item %d must be a %s, got %s", i, table.concat(sorted_keys(kinds), " or "),
                                    type(item))
      end
      if what == "runcmd" and type(item) == "table" then
        if #item == 0 or not is_list(item) then return false, string.format("item %d: an argv is a non-empty list", i) end
        for j, w in ipairs(item) do
          if type(w) ~= "string" and type(w) ~= "number" then
            return false, string.format("item %d[%d] must be a string, got %s", i, j, type(w))
          end
        end
      end
    end
    return true
  end
end

local seed_opts = {
  out = "string", force = "boolean",
  user = function(v)
    if v == false then return true end
    if type(v) ~= "string" or not v:match("^[a-z_][a-z0-9_%-]*%$?$") or #v > 32 then
      return false, "must be a user name (lower case letters, digits, _ and -; at most 32) or false"
    end
    return true
  end,
  password = function(v)
    if type(v) ~= "string" or v == "" then return false, "must be a non-empty string" end
    if v:find("[\r\n]") then return false, "must not hold a newline" end
    return true
  end,
  ssh_authorized_keys = list_of("ssh_authorized_keys", { string = true }),
  hostname = function(v)
    if type(v) ~= "string" or #v > 253 or not v:match("^[%w][%w%-%.]*$") or v:find("%.%.") then
      return false, "must be a host name (letters, digits, - and .)"
    end
    for label in v:gmatch("[^.]+") do
      if #label > 63 then return false, "has a label longer than 63 characters" end
    end
    return true
  end,
  runcmd = list_of("runcmd", { string = true, table = true }),
  packages = list_of("packages", { string = true }),
  write_files = "table",
  config = "table",
  instance_id = function(v)
    if type(v) ~= "string" or v == "" or v:find("%c") then return false, "must be a non-empty single-line string" end
    return true
  end,
  format = function(v)
    if v == "vfat" or v == "iso9660" then return true end
    return false, 'must be "vfat" or "iso9660"'
  end,
}

local write_file_opts = { path = "string", content = "string", permissions = "string|number", owner = "string",
                          append = "boolean", defer = "boolean" }

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    local q = {}
    for j = 1, 4 do
      local idx = (n >> (6 * (4 - j))) & 63
      q[j] = B64:sub(idx + 1, idx + 1)
    end
    if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

-- write_files as cloud-init wants it: {path=, content=, ...} entries, or a
-- map {["/etc/motd"] = "text"}.  Content that is not UTF-8 text goes
-- base64 (encoding: b64), so any bytes arrive as they are.
local function write_files(v)
  local list = {}
  if is_list(v) then
    for i, e in ipairs(v) do
      if type(e) ~= "table" then check.bad(FNAME, "write_files[%d] must be a table {path=, content=}", i) end
      check.options(FNAME .. " write_files[" .. i .. "]", e, write_file_opts)
      list[i] = e
    end
  else
    for _, p in ipairs(sorted_keys(v)) do
      if type(p) ~= "string" or type(v[p]) ~= "string" then
        check.bad(FNAME, "write_files maps guest paths to text: {[\"/etc/motd\"] = \"hello\\n\"}")
      end
      list[#list + 1] = { path = p, content = v[p] }
    end
  end
  local out = {}
  for i, e in ipairs(list) do
    if type(e.path) ~= "string" or e.path:sub(1, 1) ~= "/" then
      check.bad(FNAME, "write_files[%d]: path must be an absolute guest path", i)
    end
    local w = { path = e.path, append = e.append, defer = e.defer, owner = e.owner }
    local content = e.content or ""
    if utf8.len(content) and not content:find("[%z\1-\8\11\12\14-\31\127]") then
      w.content = content
    else
      w.content = base64(content)
      w.encoding = "b64"
    end
    local perm = e.permissions
    if math.type(perm) == "integer" then perm = string.format("0%o", perm) end
    if perm ~= nil and not tostring(perm):match("^0?[0-7][0-7][0-7][0-7]?$") then
      check.bad(FNAME, "write_files[%d]: permissions %q is not an octal mode like \"0644\"", i, tostring(perm))
    end
    w.permissions = perm
    out[i] = w
  end
  return out
end

-- A fresh instance id: cloud-init runs its once-per-instance steps again
-- when it changes, so each seed gets its own unless asked.
local function random_id()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(8) or tostring(sys.now()) .. sys.getpid()
  if f then f:close() end
  return "iid-qshell-" .. (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end)):sub(1, 16)
end

-- The keys the seed's own options write: config= may not set them too.
local OWN = { user = "user", password = "password", chpasswd = "password", ssh_pwauth = "password",
              ssh_authorized_keys = "ssh_authorized_keys", hostname = "hostname", runcmd = "runcmd",
              packages = "packages", write_files = "write_files" }

-- M.user_data(opts) -> text, M.meta_data(opts, instance_id) -> text
function M.user_data(opts)
  local doc = {}
  local function put(k, v) doc[#doc + 1] = { k, v } end
  local user = opts.user
  if user == nil then user = "debian" end
  if user then
    -- The distribution's default user, renamed: its groups, sudo rights
    -- and shell stay what the image's cloud.cfg gives it.
    local u = { name = user }
    if opts.password then u.lock_passwd = false end
    put("user", u)
  end
  if opts.password then
    put("password", opts.password)
    put("chpasswd", { expire = false })
    put("ssh_pwauth", true)
  end
  if opts.ssh_authorized_keys and #opts.ssh_authorized_keys > 0 then
    put("ssh_authorized_keys", opts.ssh_authorized_keys)
  end
  if opts.hostname then put("hostname", opts.hostname) end
  if opts.packages and #opts.packages > 0 then put("packages", opts.packages) end
  if opts.write_files then
    local w = write_files(opts.write_files)
    if #w > 0 then put("write_files", w) end
  end
  if opts.runcmd and #opts.runcmd > 0 then
    -- an argv's words are strings to cloud-init
    local cmds = {}
    for i, c in ipairs(opts.runcmd) do
      if type(c) == "table" then
        local argv = {}
        for j, w in ipairs(c) do argv[j] = tostring(w) end
        c = argv
      end
      cmds[i] = c
    end
    put("runcmd", cmds)
  end
  if opts.config then
    if is_list(opts.config) and next(opts.config) ~= nil then
      check.bad(FNAME, "config= is a map of cloud-config keys, e.g. {timezone=\"UTC\"}")
    end
    for _, k in ipairs(sorted_keys(opts.config)) do
      if OWN[k] then
        check.bad(FNAME, "config.%s is written by the option %s=: give it there", tostring(k), OWN[k])
      end
      put(k, opts.config[k])
    end
  end
  return "#cloud-config\n" .. M.yaml(doc)
end

function M.meta_data(opts, iid)
  local doc = { { "instance-id", iid } }
  if opts.hostname then doc[2] = { "local-hostname", opts.hostname } end
  return M.yaml(doc)
end

-- The ISO 9660 maker on this machine, as an argv to finish with the
-- output and the directory: xorriso (as mkisofs) or genisoimage.
local function iso_argv()
  local x = run.which("xorriso")
  if x then return { x, "-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-output" } end
  local g = run.which("genisoimage") or run.which("mkisofs")
  if g then return { g, "-quiet", "-volid", "cidata", "-joliet", "-rock", "-output" } end
  errors.raise { class = "MissingTool", command = FNAME,
                 desc = 'format="iso9660" needs xorriso or genisoimage, and neither is installed',
                 hint = 'apt-get install xorriso (make deps installs it), or use format="vfat"' }
end

---@api qemu.image.cloud_init qemu.image.cloud_init(options) -> path
--- Make a NoCloud seed disk for an image that runs cloud-init (Debian's `generic` and `genericcloud` images, Ubuntu's
--- cloud images).
---
--- Attach it as a second disk; cloud-init finds it by its label and configures the system on its first
--- boot. The seed is a raw image holding two files: `user-data` (a `#cloud-config` document) and
--- `meta-data` (`instance-id`, `local-hostname`). Every option is checked, and both documents written,
--- before anything is written to disk. The YAML is written by qshell, not pasted together: every string is
--- double-quoted and escaped, so quotes, colons, `#`, newlines, YAML words (`yes`, `null`, `~`) and any
--- Unicode arrive as written; text that is not UTF-8 is refused. Images cannot be downloaded on machines
--- without internet access: bring a cloud image and check it with `qemu.image.check` first.
---
---     local seed = qemu.image.cloud_init {
---       out = "seed.img", password = "secret", hostname = "exp1",
---       packages = { "build-essential" },
---       write_files = { ["/etc/motd"] = "experiment 42\n" },
---       runcmd = { "systemctl disable --now unattended-upgrades", { "touch", "/root/ready" } },
---     }
---     local vm <close> = qemu.launch { disks = { qemu.disk.overlay("debian-12-generic-amd64.qcow2", "exp.qcow2"), seed },
---                                      memory = "2G", net = { forward = { { host = 2222, guest = 22 } } } }
---     vm.console:login { user = "debian", password = "secret", timeout = 300 }
---
---@param options table  `out=` is required, the other keys are optional:
---   `out=` string: the seed's path; an existing file is refused unless `force=true`;
---   `user=` string|false, default `"debian"`: the default user's name; the image's default user, renamed, keeps the
---   groups, sudo rights and shell its cloud.cfg gives it; false leaves the image's own default user (`debian`,
---   `ubuntu`, ...) as it is;
---   `password=` string: that user's password, in plain text (`password:`, `chpasswd: {expire: false}`,
---   `lock_passwd: false`, and `ssh_pwauth: true` so that ssh takes it too); the seed holds it readable;
---   `ssh_authorized_keys=` string[]: public keys for that user;
---   `hostname=` string: the guest's host name (`hostname:` in user-data, `local-hostname` in meta-data);
---   `runcmd=` table: commands run once at the end of the first boot: strings (run by `sh -c`) or argv lists
---   (`{"touch", "/root/ready"}`);
---   `packages=` string[]: packages installed on the first boot (the guest needs a network: `net=true`);
---   `write_files=` table: `{{path=, content=, permissions=, owner=, append=, defer=}, ...}` or a map
---   `{["/etc/motd"] = "text"}`; `permissions` an octal string (`"0644"`) or an integer (`tonumber("644", 8)`),
---   cloud-init's defaults (0644, root:root) otherwise; content that is not UTF-8 text is sent base64, so any
---   bytes arrive as they are;
---   `config=` table: other cloud-config keys, written as given (`{timezone="UTC", bootcmd={...}}`); a key one of the
---   options above writes is refused;
---   `instance_id=` string: default a fresh random `iid-qshell-...`, so that every new seed is a new instance and
---   cloud-init runs its first-boot steps again; give one to keep it;
---   `format=` string, default `"vfat"`: `"vfat"` (made with `qemu.disk.populate`, label `cidata`, stored as `CIDATA`,
---   no root) or `"iso9660"` (volume id `cidata`, made with xorriso, or genisoimage when that is what is installed);
---   `force=` boolean, default false: overwrite `out`.
---@return string path  `out`
---@error BadArgument  no options or no `out=`, an unknown option or a wrong type or value, a `config=` key an option
---   writes, text that is not UTF-8, a value YAML cannot hold
---@error FileExists  `out` exists and `force` is not true
---@error MissingTool  `format="iso9660"` without xorriso or genisoimage; `"vfat"` without dosfstools or mtools
---@error DiskError  making the file system failed
function M.seed(opts)
  if opts == nil then check.bad(FNAME, "give the options: {out=\"seed.img\", password=..., ...}") end
  opts = check.options(FNAME, opts, seed_opts, 1)
  if not opts.out then check.bad(FNAME, "out= (the seed's path) is required") end
  if opts.out == "" then check.bad(FNAME, "out= is empty") end
  if files.exists(opts.out) and not opts.force then
    errors.raise { class = "FileExists", command = FNAME,
                   desc = opts.out .. " already exists; nothing was changed",
                   hint = "pass {force=true} to overwrite it" }
  end
  local iid = opts.instance_id or random_id()
  -- Both documents first: a bad option fails before anything is written.
  local user_data = M.user_data(opts)
  local meta_data = M.meta_data(opts, iid)
  local format = opts.format or "vfat"
  local iso = format == "iso9660" and iso_argv() or nil
  local dir = files.scratch_file("cidata")
  files.mkdir_p(dir, FNAME)
  local ok, err = pcall(function()
    files.write(dir .. "/user-data", user_data, FNAME)
    files.write(dir .. "/meta-data", meta_data, FNAME)
    if iso then
      if opts.force then os.remove(opts.out) end
      iso[#iso + 1] = opts.out
      iso[#iso + 1] = dir
      local okr, rerr = pcall(run.check, iso, { command = FNAME, class = "DiskError" })
      if not okr then
        os.remove(opts.out)
        error(rerr, 0)
      end
    else
      -- A small FAT (FAT12 for the usual few KiB of YAML), sized to fit
      -- what write_files carries.
      local size = math.max(2 << 20, (#user_data + #meta_data) * 2 + (1 << 20))
      disk.populate(opts.out, { from = dir, fs = "vfat", label = "cidata", format = "raw",
                                size = size, force = opts.force })
    end
  end)
  os.remove(dir .. "/user-data")
  os.remove(dir .. "/meta-data")
  os.remove(dir)
  if not ok then error(err, 0) end
  return opts.out
end

return M
