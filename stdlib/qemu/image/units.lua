-- qemu.image.units: systemd units enabled, disabled and masked in an
-- image, as `systemctl --root` does offline: the planners of
-- qemu.image.customize's enable=, disable= and mask=.

local plan = require "qemu.image.plan"
local dfs = require "qemu.image.debugfs"
local debugfs, debugfs_quote = dfs.run, dfs.quote
local lstat, readlink, list_dir, put_link = dfs.lstat, dfs.readlink, dfs.list_dir, dfs.put_link
local refuse = plan.refuse

local M = {}

local ETC_UNITS = "/etc/systemd/system"
local UNIT_DIRS = { ETC_UNITS, "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system" }
-- [Install] keys that make links in X.wants/, X.requires/, X.upholds/
local INSTALL_DIRS = { WantedBy = ".wants", RequiredBy = ".requires", UpheldBy = ".upholds" }

-- The [Install] section of a unit file: {WantedBy={...}, RequiredBy=,
-- UpheldBy=, Alias=, Also=, DefaultInstance=}, or nil without one.
local function install_section(text)
  local section, install = nil, nil
  text = text:gsub("\\\n", " ")
  for line in text:gmatch("[^\n]+") do
    line = line:match("^%s*(.-)%s*$")
    local head = line:match("^%[(.-)%]$")
    if head then
      section = head
      if head == "Install" and not install then
        install = { WantedBy = {}, RequiredBy = {}, UpheldBy = {}, Alias = {}, Also = {} }
      end
    elseif section == "Install" and line ~= "" and not line:find("^[#;]") then
      local key, value = line:match("^([%w]+)%s*=%s*(.-)$")
      if key == "DefaultInstance" then
        install.DefaultInstance = value ~= "" and value or nil
      elseif key and install[key] then
        if value == "" then install[key] = {} end -- an empty assignment resets the list
        for word in value:gmatch("%S+") do table.insert(install[key], word) end
      end
    end
  end
  return install
end

-- The unit file systemd would load for unit (a template's for an
-- instance): its path where found, and the view's lstat of it; nil if none.
-- first: the index in UNIT_DIRS to start at (2: past /etc).
local function find_unit(view, unit, first)
  local names = { unit }
  local prefix, instance, kind = unit:match("^(.-)@(.*)%.(%a+)$")
  if prefix and instance ~= "" then names[2] = prefix .. "@." .. kind end
  for _, name in ipairs(names) do
    for i = first or 1, #UNIT_DIRS do
      local dir = UNIT_DIRS[i]
      local st = view.lstat(dir .. "/" .. name)
      if st then return dir .. "/" .. name, st end
    end
  end
end

local function is_masked(fs, path, st, what)
  return path:sub(1, #ETC_UNITS + 1) == ETC_UNITS .. "/" and st.type == "link" and not st.pending and
         readlink(fs, path, st, what) == "/dev/null"
end

-- The links enabling unit makes: {{link=, target=}, ...}, and the units
-- its Also= names.  Raises when the unit cannot be enabled.
local function unit_links(fs, view, unit, verb, what)
  local path, st = find_unit(view, unit)
  if not path then
    refuse(what, "%s: no unit file %s in the image (looked in %s)", verb, unit, table.concat(UNIT_DIRS, ", "))
  end
  if is_masked(fs, path, st, what) then
    if verb == "enable" then
      refuse(what, "enable: %s is masked (%s -> /dev/null); delete={%q} unmasks it", unit, path, path)
    end
    -- disabling a masked unit: what its own file says to remove
    path, st = find_unit(view, unit, 2)
    if not path then return {}, {} end
  end
  local text = view.read(path)
  if not text then refuse(what, "%s: %s (for %s) is not a readable unit file", verb, path, unit) end
  local install = install_section(text)
  if not install then
    if verb == "disable" then return {}, {} end
    refuse(what, "enable: %s has no [Install] section (%s): it is started by other units, not enabled", unit, path)
  end
  local name = unit
  if unit:find("@%.") then
    if not install.DefaultInstance then
      refuse(what, "%s: %s is a template with no DefaultInstance=: %s an instance (%s)", verb, unit, verb,
             (unit:gsub("@%.", "@NAME.")))
    end
    name = unit:gsub("@%.", "@" .. install.DefaultInstance .. ".")
  end
  local links = {}
  for key, suffix in pairs(INSTALL_DIRS) do
    for _, target in ipairs(install[key]) do
      links[#links + 1] = { link = ETC_UNITS .. "/" .. target .. suffix .. "/" .. name, target = path }
    end
  end
  for _, alias in ipairs(install.Alias) do
    links[#links + 1] = { link = ETC_UNITS .. "/" .. alias, target = path, alias = true }
  end
  if verb == "enable" and #links == 0 and #install.Also == 0 then
    refuse(what, "enable: the [Install] section of %s (%s) names no WantedBy=, RequiredBy=, UpheldBy=, Alias= " ..
                 "or Also=: there is nothing to enable", unit, path)
  end
  table.sort(links, function(a, b) return a.link < b.link end)
  return links, install.Also, name
end

-- Every unit, with the units their Also= names (once each).
local function with_also(fs, view, list, verb, what)
  local todo, seen, out = { table.unpack(list) }, {}, {}
  while #todo > 0 do
    local unit = table.remove(todo, 1)
    if not seen[unit] then
      seen[unit] = true
      local links, also, name = unit_links(fs, view, unit, verb, what)
      out[#out + 1] = { unit = unit, links = links, name = name or unit }
      for _, a in ipairs(also) do todo[#todo + 1] = a end
    end
  end
  return out
end

local function plan_enable(fs, view, list, what)
  local steps = {}
  for _, u in ipairs(with_also(fs, view, list, "enable", what)) do
    for _, l in ipairs(u.links) do
      local st = view.lstat(l.link)
      if st and st.type ~= "link" then
        refuse(what, "enable %s: %s exists and is not a link; delete={%q} removes it", u.unit, l.link, l.link)
      end
      steps[#steps + 1] = function()
        local cur = lstat(fs, l.link, what)
        if not (cur and readlink(fs, l.link, cur, what) == l.target) then put_link(fs, l.link, l.target, what) end
      end
    end
  end
  return steps
end

-- Disabling removes the links to a unit in /etc/systemd/system/*.wants,
-- *.requires and *.upholds, and its Alias= links (not a mask).
local function plan_disable(fs, view, list, what)
  local steps = {}
  local dirs = {}
  if lstat(fs, ETC_UNITS, what) then
    for _, e in ipairs(list_dir(fs, ETC_UNITS, what)) do
      if e.type == "dir" and (e.name:find("%.wants$") or e.name:find("%.requires$") or e.name:find("%.upholds$")) then
        dirs[#dirs + 1] = ETC_UNITS .. "/" .. e.name
      end
    end
  end
  for _, u in ipairs(with_also(fs, view, list, "disable", what)) do
    local gone = {}
    for _, d in ipairs(dirs) do
      for _, e in ipairs(list_dir(fs, d, what)) do
        if e.type == "link" and (e.name == u.unit or e.name == u.name) then gone[#gone + 1] = d .. "/" .. e.name end
      end
    end
    for _, l in ipairs(u.links) do
      local st = l.alias and lstat(fs, l.link, what)
      if st and st.type == "link" and readlink(fs, l.link, st, what) ~= "/dev/null" then gone[#gone + 1] = l.link end
    end
    for _, p in ipairs(gone) do
      steps[#steps + 1] = function() debugfs(fs, { "rm " .. debugfs_quote(p) }, what) end
    end
  end
  return steps
end

-- A unit linked to /dev/null in /etc/systemd/system is masked; a unit file
-- of that name there is refused, never replaced.
local function plan_mask(fs, view, list, what)
  local steps = {}
  for _, unit in ipairs(list) do
    local path = ETC_UNITS .. "/" .. unit
    local st = view.lstat(path)
    if st and st.type ~= "link" then
      refuse(what, "mask: %s is a %s in the image (a local unit file); masking would replace it: delete={%q} " ..
                   "first if that is meant", path, st.type == "file" and "regular file" or st.type, path)
    end
    steps[#steps + 1] = function()
      local cur = lstat(fs, path, what)
      if not (cur and readlink(fs, path, cur, what) == "/dev/null") then put_link(fs, path, "/dev/null", what) end
    end
  end
  return steps
end

M.plan_enable = plan_enable
M.plan_disable = plan_disable
M.plan_mask = plan_mask

return M
