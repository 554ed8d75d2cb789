-- A private Slurm cluster for a test file (tests/cluster/cluster.sh):
-- started in a fresh /tmp dir, stopped and removed when the tests end.
--
--   local c = require("slurm_cluster").start(3 [, "CLUSTER_MAX_ARRAY_SIZE=3"])
--   (the prefix goes to deps too: "CLUSTER_ACCOUNTING=1" installs slurmdbd)
--   c.dir, c.env (CLUSTER_SHARED, ...), c.ENV ("K=V ..." for a command line),
--   c.sh(cmd) (T.sh with the cluster's environment exported)
local T = require "t"

local M = {}

M.script = "tests/cluster/cluster.sh"

function M.start(nodes, prefix)
  local code, _, err = T.sh((prefix and prefix .. " " or "") .. M.script .. " deps")
  assert(code == 0, "cannot install slurm: " .. err)
  -- munged wants every directory above its socket to be searchable by all:
  -- the cluster lives in /tmp itself, not in the test run's 0700 dir.
  local _, cdir = T.sh('d=$(mktemp -d /tmp/qshell-cluster.XXXXXX) && chmod 755 "$d" && echo "$d"')
  cdir = assert(cdir:match("^(%S+)"), "mktemp failed")
  local envtext
  code, envtext, err = T.sh((prefix and prefix .. " " or "") .. M.script .. " start " .. cdir .. " " .. (nodes or 1))
  if code ~= 0 then
    T.sh(M.script .. " stop " .. cdir)
    os.execute("rm -rf " .. cdir)
    error("the cluster did not start: " .. err)
  end
  local c = { dir = cdir, env = {} }
  local envp = {}
  for k, v in envtext:gmatch("export ([%w_]+)=([^\n]+)") do
    c.env[k] = v
    envp[#envp + 1] = k .. "=" .. v
  end
  c.ENV = table.concat(envp, " ")
  function c.sh(cmd) return T.sh("export " .. c.ENV .. "; " .. cmd) end
  T.cleanup(function()
    T.sh(M.script .. " stop " .. cdir)
    os.execute("rm -rf " .. cdir)
  end)
  return c
end

return M
