-- qemu.image.plan: the file edits of qemu.image.customize's debugfs
-- backend, each planned before the first change: the view of what the
-- image will hold, and the steps for delete=, symlinks=, hostname=,
-- root_password= and users=; and what disable_auto_upgrades= writes.

local errors = require "qemu.errors"
local password = require "qemu.image.password"
local dfs = require "qemu.image.debugfs"
local debugfs, debugfs_quote, dirname = dfs.run, dfs.quote, dfs.dirname
local lstat, cat, readlink, list_dir = dfs.lstat, dfs.cat, dfs.readlink, dfs.list_dir
local make_dirs, set_inode, put_file, put_link = dfs.make_dirs, dfs.set_inode, dfs.put_file, dfs.put_link

local M = {}

-- disable_auto_upgrades=: the apt setting written and the timers masked,
-- by either backend.
local APT_NO_UPGRADES = [[
// written by qshell: no automatic package list updates or upgrades
APT::Periodic::Enable "0";
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Download-Upgradeable-Packages "0";
APT::Periodic::Unattended-Upgrade "0";
]]
local APT_TIMERS = { "apt-daily.timer", "apt-daily-upgrade.timer" }

-- What the image will hold once the earlier steps ran: the planning of
-- each step sees the files write= adds and the paths delete= removes, so
-- that every refusal comes before the first change.
local function new_view(fs, opts, what)
  local view = { pending = opts.write or {}, gone = {} }
  for _, p in ipairs(opts.delete or {}) do view.gone[p] = true end
  function view.lstat(p)
    if view.pending[p] then return { type = "file", pending = true } end
    if view.gone[p] then return nil end
    return lstat(fs, p, what)
  end
  -- The contents of the file at p (links followed) and its real path; nil
  -- when there is none.
  function view.read(p)
    for _ = 1, 16 do
      if view.pending[p] then return view.pending[p], p end
      local st = view.lstat(p)
      if not st then return nil end
      if st.type == "file" then return cat(fs, p, what), p end
      if st.type ~= "link" then return nil end
      local target = readlink(fs, p, st, what)
      p = target:sub(1, 1) == "/" and target or (dirname(p):gsub("/$", "") .. "/" .. target)
    end
    return nil
  end
  return view
end

local function refuse(what, fmt, ...)
  errors.raise { class = "CustomizeFailed", command = what, desc = string.format(fmt, ...) .. "; nothing was changed" }
end

-- ---- customize: the steps ----
-- Each plan_* function reads the image (through the view), raises when the
-- step cannot be done, and returns the functions that make its changes.

local function plan_delete(fs, view, paths, what)
  local set, steps = {}, {}
  for _, p in ipairs(paths) do set[p] = true end
  -- the deepest first, so that a directory can go with what it holds
  local order = { table.unpack(paths) }
  table.sort(order, function(a, b)
    local da, db = select(2, a:gsub("/", "")), select(2, b:gsub("/", ""))
    if da ~= db then return da > db end
    return a < b
  end)
  for _, p in ipairs(order) do
    local st = lstat(fs, p, what)
    if not st then refuse(what, "delete: %s does not exist in the image", p) end
    local cmd = "rm "
    if st.type == "dir" then
      for _, e in ipairs(list_dir(fs, p, what)) do
        if not set[p .. "/" .. e.name] then
          refuse(what, "delete: the directory %s is not empty (it holds %s); only empty directories are deleted",
                 p, e.name)
        end
      end
      cmd = "rmdir "
    end
    steps[#steps + 1] = function() debugfs(fs, { cmd .. debugfs_quote(p) }, what) end
  end
  return steps
end

local function plan_symlinks(fs, view, links, what)
  local steps, paths = {}, {}
  for p in pairs(links) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    local st = view.lstat(p)
    if st and st.type ~= "link" then
      refuse(what, "symlinks: %s is a %s in the image%s; a link replaces only a link (delete={%q} removes it first)",
             p, st.type == "dir" and "directory" or st.type == "file" and "regular file" or st.type,
             st.pending and " (written by write=)" or "", p)
    end
    steps[#steps + 1] = function() put_link(fs, p, links[p], what) end
  end
  return steps
end

-- /etc/hosts with the 127.0.1.1 line naming host (the first such line
-- replaced, later ones dropped; one added after 127.0.0.1 when none).
local function hosts_with(text, host)
  local entry = "127.0.1.1\t" .. host .. (host:find("%.") and ("\t" .. host:match("^[^.]+")) or "") .. "\n"
  if not text then return "127.0.0.1\tlocalhost\n" .. entry end
  local out, done, localhost = {}, false, nil
  for line in text:gmatch("[^\n]*\n?") do
    if line ~= "" then
      if line:match("^%s*127%.0%.1%.1%f[%s]") then
        if not done then out[#out + 1] = entry end
        done = true
      else
        if not line:find("\n$") then line = line .. "\n" end
        out[#out + 1] = line
        if not localhost and line:match("^%s*127%.0%.0%.1%f[%s]") then localhost = #out end
      end
    end
  end
  if not done then table.insert(out, (localhost or 0) + 1, entry) end
  return table.concat(out)
end

local function plan_hostname(fs, view, host, what)
  return { function()
    put_file(fs, "/etc/hostname", host .. "\n", what)
    put_file(fs, "/etc/hosts", hosts_with(view.read("/etc/hosts"), host), what)
  end }
end

local function set_root_password(fs, pw, what)
  local hash = password.hash_password(pw)
  local shadow = cat(fs, "/etc/shadow", what)
  if shadow == "" then
    errors.raise { class = "CustomizeFailed", command = what, desc = "the image has no /etc/shadow (is this a Linux root filesystem?)" }
  end
  local lines, found = {}, false
  for line in shadow:gmatch("[^\n]*\n?") do
    if line ~= "" then
      local user, rest = line:match("^([^:]*):[^:]*(.*)$")
      if user == "root" then
        line = "root:" .. hash .. rest:gsub("\n$", "") .. "\n"
        found = true
      end
      lines[#lines + 1] = line
    end
  end
  if not found then
    errors.raise { class = "CustomizeFailed", command = what, desc = "/etc/shadow has no root entry" }
  end
  put_file(fs, "/etc/shadow", table.concat(lines), what, 0x8000 | 0x1a0) -- 0100640
end

-- The fields of a passwd/group-style file: {{name, f2, f3, ...}, ...}
local function colon_rows(text)
  local rows = {}
  for line in (text or ""):gmatch("[^\n]+") do
    local row = {}
    for field in (line .. ":"):gmatch("([^:]*):") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  return rows
end

-- text with user added to the members (4th field) of group's line; in a
-- group file and a gshadow file alike.
local function add_member(text, group, user)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local name, f2, f3, members = line:match("^([^:]*):([^:]*):([^:]*):?(.*)$")
    if name == group then
      local list = {}
      for m in members:gmatch("[^,]+") do list[#list + 1] = m end
      local has = false
      for _, m in ipairs(list) do has = has or m == user end
      if not has then list[#list + 1] = user end
      line = table.concat({ name, f2, f3, table.concat(list, ",") }, ":")
    end
    out[#out + 1] = line .. "\n"
  end
  return table.concat(out)
end

local function with_nl(text)
  if text ~= "" and not text:find("\n$") then return text .. "\n" end
  return text
end

-- Copy the tree at src (the image's /etc/skel) into dst, owned by uid:gid.
local function copy_tree(fs, src, dst, uid, gid, what)
  for _, e in ipairs(list_dir(fs, src, what)) do
    local s, d = src .. "/" .. e.name, dst .. "/" .. e.name
    local q = debugfs_quote(d)
    if e.type == "dir" then
      debugfs(fs, { "mkdir " .. q, set_inode(q, 0x4000 | e.mode, uid, gid) }, what)
      copy_tree(fs, s, d, uid, gid, what)
    elseif e.type == "file" then
      put_file(fs, d, cat(fs, s, what), what, 0x8000 | e.mode, { uid, gid })
    elseif e.type == "link" then
      local target = readlink(fs, s, lstat(fs, s, what), what)
      debugfs(fs, { "symlink " .. q .. " " .. debugfs_quote(target), "sif " .. q .. " uid " .. uid,
                    "sif " .. q .. " gid " .. gid }, what)
    end
  end
end

local function plan_users(fs, view, users, what)
  local passwd = view.read("/etc/passwd")
  local group = view.read("/etc/group")
  if not passwd or not group then refuse(what, "users: the image has no /etc/passwd or no /etc/group") end
  local uids, gids, user_names, group_names = {}, {}, {}, {}
  for _, r in ipairs(colon_rows(passwd)) do
    user_names[r[1]] = tonumber(r[3]) or true
    if tonumber(r[3]) then uids[tonumber(r[3])] = r[1] end
  end
  for _, r in ipairs(colon_rows(group)) do
    group_names[r[1]] = true
    if tonumber(r[3]) then gids[tonumber(r[3])] = r[1] end
  end
  local shadow = view.lstat("/etc/shadow") ~= nil
  local default_shell = view.lstat("/bin/bash") and "/bin/bash" or "/bin/sh"
  local plans = {}
  for _, u in ipairs(users) do
    if user_names[u.name] then
      refuse(what, "users: user %s already exists in the image's /etc/passwd%s", u.name,
             type(user_names[u.name]) == "number" and string.format(" (uid %d)", user_names[u.name]) or "")
    end
    if group_names[u.name] then
      refuse(what, "users: a group named %s already exists in the image's /etc/group (each new user gets a " ..
                   "group of its own name)", u.name)
    end
    for _, g in ipairs(u.groups or {}) do
      if not group_names[g] then
        refuse(what, "users: group %s (in the groups of %s) does not exist in the image's /etc/group", g, u.name)
      end
    end
    local id = u.uid
    if id then
      if uids[id] then refuse(what, "users: uid %d of %s is taken by user %s", id, u.name, uids[id]) end
      if gids[id] then
        refuse(what, "users: id %d of %s is taken by group %s (the user's own group gets its uid as gid)",
               id, u.name, gids[id])
      end
    else
      id = 1000
      while uids[id] or gids[id] do id = id + 1 end
      if id >= 60000 then refuse(what, "users: no free id from 1000 to 59999 for %s", u.name) end
    end
    uids[id], gids[id], user_names[u.name], group_names[u.name] = u.name, u.name, id, true
    plans[#plans + 1] = { name = u.name, id = id, groups = u.groups or {},
                          hash = u.password and password.hash_password(u.password) or "!",
                          shell = u.shell or default_shell, home = u.home or ("/home/" .. u.name) }
  end
  return { function()
    -- Read again here: root_password= and write= ran since the plan.
    local texts = { passwd = cat(fs, "/etc/passwd", what), group = cat(fs, "/etc/group", what) }
    texts.shadow = shadow and cat(fs, "/etc/shadow", what) or nil
    texts.gshadow = lstat(fs, "/etc/gshadow", what) and cat(fs, "/etc/gshadow", what) or nil
    for k, t in pairs(texts) do texts[k] = with_nl(t) end
    local day = os.time() // 86400
    for _, p in ipairs(plans) do
      texts.passwd = texts.passwd .. string.format("%s:%s:%d:%d::%s:%s\n", p.name, shadow and "x" or p.hash,
                                                   p.id, p.id, p.home, p.shell)
      texts.group = texts.group .. string.format("%s:x:%d:\n", p.name, p.id)
      if texts.shadow then
        texts.shadow = texts.shadow .. string.format("%s:%s:%d:0:99999:7:::\n", p.name, p.hash, day)
      end
      if texts.gshadow then texts.gshadow = texts.gshadow .. p.name .. ":!::\n" end
      for _, g in ipairs(p.groups) do
        texts.group = add_member(texts.group, g, p.name)
        if texts.gshadow then texts.gshadow = add_member(texts.gshadow, g, p.name) end
      end
    end
    put_file(fs, "/etc/passwd", texts.passwd, what)
    put_file(fs, "/etc/group", texts.group, what)
    if texts.shadow then put_file(fs, "/etc/shadow", texts.shadow, what, 0x8000 | 0x1a0) end
    if texts.gshadow then put_file(fs, "/etc/gshadow", texts.gshadow, what, 0x8000 | 0x1a0) end
    for _, p in ipairs(plans) do
      -- An existing home stays as it is (useradd -m does the same).
      if not lstat(fs, p.home, what) then
        make_dirs(fs, dirname(p.home), what)
        local q = debugfs_quote(p.home)
        debugfs(fs, { "mkdir " .. q, set_inode(q, 0x4000 | 0x1ed, p.id, p.id) }, what) -- 040755
        local skel = lstat(fs, "/etc/skel", what)
        if skel and skel.type == "dir" then copy_tree(fs, "/etc/skel", p.home, p.id, p.id, what) end
      end
    end
  end }
end

M.APT_NO_UPGRADES = APT_NO_UPGRADES
M.APT_TIMERS = APT_TIMERS
M.new_view = new_view
M.refuse = refuse
M.plan_delete = plan_delete
M.plan_symlinks = plan_symlinks
M.plan_hostname = plan_hostname
M.set_root_password = set_root_password
M.plan_users = plan_users

return M
