-- qemu.image.cloud_init: NoCloud seed disks, read back without a guest
-- (mtools for vfat, xorriso for iso9660, PyYAML for the YAML when the host
-- has it).  Booting an image with a seed is tests/guest's.
local T = require "t"
local json = qemu.json

local tmp = T.tmpdir()

local function slurp(p)
  local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s
end

-- A file of a vfat seed.
local function fat_file(seed, name)
  local code, out, err = T.sh("mtype -i " .. seed .. " ::/" .. name)
  T.eq(code, 0, err)
  return out
end

-- YAML -> a Lua value, through PyYAML (nil when the host has none).
local has_yaml = T.sh("python3 -c 'import yaml'") == 0
local function parse_yaml(text)
  if not has_yaml then return nil end
  local p = tmp .. "/doc.yaml"
  local f = assert(io.open(p, "wb")); f:write(text); f:close()
  local code, out, err = T.sh("python3 -c 'import json, sys, yaml; " ..
                              "print(json.dumps(yaml.safe_load(open(sys.argv[1], \"rb\"))))' " .. p)
  T.eq(code, 0, err)
  return json.decode(out)
end

T.test("a vfat seed: label CIDATA, user-data and meta-data", function()
  local seed = qemu.image.cloud_init { out = tmp .. "/seed.img", password = "secret", hostname = "exp-1",
                                       ssh_authorized_keys = { "ssh-ed25519 AAAAC3Nza test@host" },
                                       runcmd = { "touch /root/ran", { "sh", "-c", "echo $HOME > /root/home" } },
                                       packages = { "htop", "strace" } }
  T.eq(seed, tmp .. "/seed.img")
  T.eq(select(2, T.sh("blkid -o value -s LABEL " .. seed)), "CIDATA\n")
  T.eq(select(2, T.sh("blkid -o value -s TYPE " .. seed)), "vfat\n")
  T.eq(qemu.disk.info(seed).format, "raw")
  local _, dir = T.sh("mdir -b -i " .. seed .. " ::/")
  T.match(dir, "user%-data")
  T.match(dir, "meta%-data")
  local ud = fat_file(seed, "user-data")
  T.match(ud, "^#cloud%-config\n")
  T.match(ud, '\npassword: "secret"\n')
  T.match(ud, "\nchpasswd:\n  expire: false\n")
  T.match(ud, "\nssh_pwauth: true\n")
  T.match(ud, '\nhostname: "exp%-1"\n')
  T.match(ud, '\nruncmd:\n  %- "touch /root/ran"\n  %- %["sh", "%-c", "echo %$HOME > /root/home"%]\n')
  T.match(ud, '\nuser:\n  lock_passwd: false\n  name: "debian"\n')
  local md = fat_file(seed, "meta-data")
  T.match(md, '^instance%-id: "iid%-qshell%-%x+"\nlocal%-hostname: "exp%-1"\n$')
  local doc = parse_yaml(ud)
  if doc then
    T.eq(doc.user.name, "debian")
    T.eq(doc.user.lock_passwd, false)
    T.eq(doc.password, "secret")
    T.eq(doc.chpasswd.expire, false)
    T.eq(doc.ssh_pwauth, true)
    T.eq(doc.ssh_authorized_keys[1], "ssh-ed25519 AAAAC3Nza test@host")
    T.eq(doc.packages[2], "strace")
    T.eq(doc.runcmd[1], "touch /root/ran")
    T.eq(doc.runcmd[2][3], "echo $HOME > /root/home")
    local meta = parse_yaml(md)
    T.match(meta["instance-id"], "^iid%-qshell%-")
    T.eq(meta["local-hostname"], "exp-1")
  end
  -- each seed is a new instance unless told
  local again = qemu.image.cloud_init { out = tmp .. "/seed2.img" }
  T.ok(fat_file(again, "meta-data") ~= md, "a fresh instance id")
  local fixed = qemu.image.cloud_init { out = tmp .. "/seed3.img", instance_id = "run-42" }
  T.eq(fat_file(fixed, "meta-data"), 'instance-id: "run-42"\n')
end)

T.test("tricky strings survive: quotes, colons, newlines, YAML words, unicode, binary files", function()
  local tricky = {
    'pa"ss: w\'ord #1 \\ back', "yes", "null", "~", "- dash", "{a: b}", "[x]", "&anchor", "*alias",
    "!tag", "%percent", "@at", "`tick", "  leading and trailing  ", "", "0o17", "1e3", "line1\nline2\r\n",
    "tab\there", "caf\xc3\xa9 \xe2\x9c\x93", "nel\xc2\x85ls\xe2\x80\xa8end", "ctl\1\27del\127",
  }
  local files = {
    { path = "/etc/motd", content = "hello: world\n# not a comment\n---\n...\n", permissions = "0644" },
    { path = "/opt/bin.dat", content = "\0\1\2\255\254", permissions = 493, owner = "root:root" },
  }
  local seed = qemu.image.cloud_init { out = tmp .. "/tricky.img", password = tricky[1], runcmd = tricky,
                                       write_files = files, user = "ops_user",
                                       config = { timezone = "UTC", ["on"] = "off", bootcmd = { { "a b", "c" } } } }
  local ud = fat_file(seed, "user-data")
  T.match(ud, "^#cloud%-config\n")
  -- the text alone: every string one double-quoted line
  T.match(ud, '\npassword: "pa\\"ss: w\'ord #1 \\\\ back"\n')
  T.match(ud, '\n  %- "line1\\nline2\\r\\n"\n')
  T.match(ud, '\n  %- "yes"\n')
  T.match(ud, '\n"on": "off"\n')
  T.match(ud, '\n  %- content: "AAEC/%/4="\n    encoding: "b64"\n')
  T.match(ud, '\n    permissions: "0755"\n')
  local doc = parse_yaml(ud)
  if not doc then return end
  T.eq(doc.password, tricky[1])
  T.eq(#doc.runcmd, #tricky)
  for i, s in ipairs(tricky) do T.eq(doc.runcmd[i], s, "runcmd[" .. i .. "]") end
  T.eq(doc.user.name, "ops_user")
  T.eq(doc.write_files[1].content, files[1].content)
  T.eq(doc.write_files[1].path, "/etc/motd")
  T.eq(doc.write_files[2].encoding, "b64")
  T.eq(doc.write_files[2].owner, "root:root")
  T.eq(doc.on, "off")
  T.eq(doc.timezone, "UTC")
  T.eq(doc.bootcmd[1][1], "a b")
  -- the map form of write_files
  local s2 = qemu.image.cloud_init { out = tmp .. "/map.img", write_files = { ["/etc/issue"] = "x: y\n" }, user = false }
  local d2 = parse_yaml(fat_file(s2, "user-data"))
  T.eq(d2.write_files[1].path, "/etc/issue")
  T.eq(d2.write_files[1].content, "x: y\n")
  T.eq(d2.user, nil, "user=false leaves the image's default user alone")
end)

T.test("an iso9660 seed: volume id cidata, the same files", function()
  local seed = qemu.image.cloud_init { out = tmp .. "/seed.iso", format = "iso9660", hostname = "iso-host",
                                       instance_id = "iso-1" }
  T.eq(select(2, T.sh("blkid -o value -s TYPE " .. seed)), "iso9660\n")
  T.eq(select(2, T.sh("blkid -o value -s LABEL " .. seed)), "cidata\n")
  local out = tmp .. "/iso-out"
  local code, _, err = T.sh("xorriso -osirrox on -indev " .. seed .. " -extract / " .. out)
  T.eq(code, 0, err)
  T.match(slurp(out .. "/user-data"), '^#cloud%-config\nuser:\n  name: "debian"\nhostname: "iso%-host"\n')
  T.eq(slurp(out .. "/meta-data"), 'instance-id: "iso-1"\nlocal-hostname: "iso-host"\n')
end)

T.test("bad options, existing files, missing tools", function()
  local ci = qemu.image.cloud_init
  local function bad(opts, pattern)
    T.raises(function() ci(opts) end, "BadArgument", pattern)
  end
  bad(nil, "out=")
  bad({}, "out= %(the seed's path%) is required")
  bad({ out = tmp .. "/b.img", pasword = "x" }, "did you mean 'password'")
  bad({ out = tmp .. "/b.img", password = "a\nb" }, "newline")
  bad({ out = tmp .. "/b.img", user = "Bad User" }, "user name")
  bad({ out = tmp .. "/b.img", hostname = "a_b" }, "host name")
  bad({ out = tmp .. "/b.img", runcmd = "reboot" }, "must be a list")
  bad({ out = tmp .. "/b.img", runcmd = { {} } }, "non%-empty")
  bad({ out = tmp .. "/b.img", runcmd = { { "ls", {} } } }, "must be a string")
  bad({ out = tmp .. "/b.img", packages = { 1 } }, "item 1")
  bad({ out = tmp .. "/b.img", write_files = { { path = "etc/x", content = "" } } }, "absolute")
  bad({ out = tmp .. "/b.img", write_files = { { path = "/x", contents = "" } } }, "did you mean 'content'")
  bad({ out = tmp .. "/b.img", write_files = { { path = "/x", permissions = "rw" } } }, "octal")
  bad({ out = tmp .. "/b.img", config = { password = "x" } }, "config.password is written by the option password=")
  bad({ out = tmp .. "/b.img", config = { x = { [true] = 1 } } }, "keys must be strings")
  bad({ out = tmp .. "/b.img", hostname = "h", config = { note = "caf\xff" } }, "not valid UTF%-8")
  bad({ out = tmp .. "/b.img", format = "ext4" }, '"vfat" or "iso9660"')
  T.ok(not T.exists(tmp .. "/b.img"), "nothing written")
  -- an existing file is kept unless force=true
  local p = tmp .. "/keep.img"
  local f = assert(io.open(p, "wb")); f:write("precious"); f:close()
  T.raises(function() ci { out = p } end, "FileExists", "already exists")
  T.eq(slurp(p), "precious")
  ci { out = p, force = true }
  T.eq(select(2, T.sh("blkid -o value -s LABEL " .. p)), "CIDATA\n")
  ci { out = p, force = true, format = "iso9660" }
  T.eq(select(2, T.sh("blkid -o value -s TYPE " .. p)), "iso9660\n")
  -- no ISO maker: MissingTool naming the package, nothing written
  local empty = tmp .. "/nopath"
  assert(T.sh("mkdir -p " .. empty) == 0)
  local code, out = T.sh("PATH=" .. empty .. " ./qshell -e '" ..
    "local ok, e = pcall(qemu.image.cloud_init, {out=\"" .. tmp .. "/noiso.iso\", format=\"iso9660\"}) " ..
    "print(e.class, e.desc, e.hint)'")
  T.eq(code, 0, out)
  T.match(out, "^MissingTool")
  T.match(out, "xorriso")
  T.ok(not T.exists(tmp .. "/noiso.iso"), "nothing written")
end)

T.run()
