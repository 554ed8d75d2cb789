-- syscalls.lua: the system calls a workload makes, seen by a Lua script
-- inside QEMU (scripts/plugins/syscalls.lua): each `syscall` instruction
-- in ROI 1, and on QEMU 9.0+ its number, read from rax.
--
--   qshell run scripts/syscalls.lua [CHECKPOINT_DIR]
local here = arg[0]:match("(.*)/") or "."
local ckpt = arg[1]
if not ckpt then
  ckpt = qemu.tmpdir() .. "/prompt.ckpt"
  local vm <close> = qemu.guest.launch {}
  vm:checkpoint(ckpt)
end

-- x86-64 Linux numbers of the calls a shell pipeline makes most
local NAMES = { [0] = "read", "write", "open", "close", "stat", "fstat", "lstat", "poll", "lseek", "mmap",
                "mprotect", "munmap", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "ioctl",
                [21] = "access", [22] = "pipe", [33] = "dup2", [39] = "getpid", [56] = "clone", [57] = "fork",
                [59] = "execve", [60] = "exit", [61] = "wait4", [63] = "uname", [72] = "fcntl", [79] = "getcwd",
                [89] = "readlink", [102] = "getuid", [110] = "getppid", [158] = "arch_prctl", [217] = "getdents64",
                [218] = "set_tid_address", [228] = "clock_gettime", [231] = "exit_group", [257] = "openat",
                [262] = "newfstatat", [273] = "set_robust_list", [293] = "pipe2", [302] = "prlimit64", [318] = "getrandom",
                [334] = "rseq" }

local vm <close> = qemu.launch { restore = ckpt, plugins = { qemu.plugin.lua(here .. "/plugins/syscalls.lua") } }
vm.console:run("qshell-roi begin 1; cat /etc/os-release | grep -c NAME; qshell-roi end 1")
vm:quit()

local r = vm:plugin_result("lua")
print(string.format("%d system calls in ROI 1", r.calls))
if r.no_regs then
  print("(no numbers: " .. r.no_regs .. ")")
else
  for _, c in ipairs(r.by_nr) do
    print(string.format("%5d  %-18s %6d", c.nr, NAMES[c.nr] or "?", c.calls))
  end
  local sum = 0
  for _, c in ipairs(r.by_nr) do sum = sum + c.calls end
  assert(sum == r.calls, "every syscall has its number")
end
assert(r.calls > 10, "a pipeline makes system calls")
