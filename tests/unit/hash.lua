-- qshell.hash (SHA-256 in process and in threads) and qemu.run.start,
-- without QEMU: what a checkpoint is built from.
local T = require "t"

local sys = require "qshell.os"
local hash = require "qshell.hash"
local run = require "qemu.util.run"
local tmp = T.tmpdir()

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function sha256sum(path)
  local _, out = T.sh("sha256sum " .. path)
  return out:match("^(%x+)")
end

T.test("sha256: the standard vectors and a file larger than one read, as sha256sum says", function()
  write(tmp .. "/empty", "")
  T.eq(hash.sha256(tmp .. "/empty"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
  write(tmp .. "/abc", "abc")
  local sum, size = hash.sha256(tmp .. "/abc")
  T.eq(sum, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  T.eq(size, 3)
  T.eq((T.sh("head -c 3000000 /dev/urandom > " .. tmp .. "/big")), 0)
  sum, size = hash.sha256(tmp .. "/big")
  T.eq(sum, sha256sum(tmp .. "/big"))
  T.eq(size, 3000000)
  local nothing, msg, code = hash.sha256(tmp .. "/missing")
  T.eq(nothing, nil)
  T.match(msg, "missing: No such file")
  T.eq(code, "notfound")
end)

T.test("file and copy jobs run side by side; a copy never overwrites and is read-only", function()
  local a = hash.file(tmp .. "/big")
  local c = hash.copy(tmp .. "/big", tmp .. "/big.copy")
  local sa, na = a:wait()
  local sc, nc = c:wait()
  T.eq(sa, sha256sum(tmp .. "/big"))
  T.eq(sc, sa)
  T.eq(na, nc)
  T.eq(sha256sum(tmp .. "/big.copy"), sa)
  T.eq(sys.stat(tmp .. "/big.copy").mode, tonumber("444", 8))
  -- waiting again gives the same answer
  T.eq((c:wait()), sa)
  c:close()
  local nothing, msg, code = hash.copy(tmp .. "/abc", tmp .. "/big.copy")
  T.eq(nothing, nil)
  T.match(msg, "File exists")
  T.eq(code, "exists")
  T.eq(sha256sum(tmp .. "/big.copy"), sa, "the existing file is untouched")
  nothing, msg = hash.file(tmp .. "/missing")
  T.eq(nothing, nil)
  T.match(msg, "missing")
end)

T.test("follow: a file hashed while another process appends to it, to the writer's end", function()
  local path = tmp .. "/growing"
  write(path, "")
  local job = hash.follow(path)
  -- a writer appending in bursts, with pauses the thread must wait through
  local w = run.start({ "sh", "-c", "for i in 1 2 3 4 5; do head -c 700000 /dev/urandom >> " .. path ..
                        "; sleep 0.05; done" })
  w:check()
  job:close_input()
  local sum, size = job:wait(30)
  T.eq(size, 3500000)
  T.eq(sum, sha256sum(path))
end)

T.test("follow: cancel and close stop the thread; wait says so", function()
  write(tmp .. "/still", "x")
  local job = hash.follow(tmp .. "/still")
  local nothing, msg, code = job:wait(0.05)
  T.eq(nothing, nil)
  T.eq(code, "timeout", msg)
  job:cancel()
  nothing, msg, code = job:wait(5)
  T.eq(nothing, nil)
  T.eq(code, "cancelled", msg)
  -- closed without a wait (what an error path does): no thread is left
  local other = hash.follow(tmp .. "/still")
  other:close()
  other:close()
end)

T.test("run.start: programs side by side, collected like run.check", function()
  local t0 = sys.now()
  local a = run.start({ "sh", "-c", "sleep 0.3; echo a" })
  local b = run.start({ "sh", "-c", "sleep 0.3; echo b" })
  T.eq(a:check(), "a\n")
  T.eq(b:check(), "b\n")
  T.ok(sys.now() - t0 < 0.55, "they ran at the same time")
  local c = run.start({ "sh", "-c", "echo oops >&2; exit 3" }, { command = "test" })
  local e = T.raises(function() c:check() end, "CommandFailed")
  T.match(e.desc, "oops")
  local d = run.start({ "sleep", "30" })
  d:kill()
  d:kill()
  T.raises(function() run.start({ tmp .. "/no-such-program" }) end)
end)

T.run()
