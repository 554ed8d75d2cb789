#!/bin/bash
# Boot the guest fixture under QEMU (TCG) and check it by hand-rolled expect:
# login, uname -r, a second disk, the initramfs shell, virtio root, poweroff.
# Usage: smoke.sh OUTDIR   (OUTDIR built by build.sh; images are used with -snapshot)
# Ends with "N passed, N failed"; exit status 0 when all passed.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
dir=$(cd "$1" && pwd)
qemu=${QEMU:-qemu-system-x86_64}
tmp=$(mktemp -d)
qpid=
trap '[ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true; exec 3>&- || true; rm -rf "$tmp"' EXIT
passed=0 failed=0
kver=$(sed -n 's/^ *kernel_version = "\(.*\)",.*/\1/p' "$dir/guest.lua")
append=$(sed -n 's/^ *append = "\(.*\)",.*/\1/p' "$dir/guest.lua")
base=(-accel tcg -nodefaults -display none -m 256 -no-reboot
	-kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" -serial stdio)

now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.2f\", $(now) - $1}"; }

# start NAME QEMU-ARGS...: the console is QEMU's stdio (a FIFO in, a file out).
start() {
	name=$1
	shift
	log=$tmp/$name.log off=0
	rm -f "$tmp/in"
	mkfifo "$tmp/in"
	exec 3<>"$tmp/in"
	t0=$(now)
	"$qemu" "${base[@]}" "$@" <"$tmp/in" >"$log" 2>"$tmp/$name.err" &
	qpid=$!
}

send() { printf '%s\r' "$1" >&3; }

# expect TEXT [TIMEOUT] [-E]: wait for TEXT (fixed string, or ERE with -E)
# in the console output after the previous match.
expect() {
	local text=$1 deadline=$((SECONDS + ${2:-60})) mode=${3:--F} m p t
	while :; do
		m=$(tail -c +$((off + 1)) "$log" | grep -a -b -o "$mode" -- "$text" | head -n 1) || true
		if [ -n "$m" ]; then
			p=${m%%:*} t=${m#*:}
			off=$((off + p + ${#t}))
			return 0
		fi
		if [ $SECONDS -ge $deadline ] || ! kill -0 "$qpid" 2>/dev/null; then
			echo "  timeout waiting for '$text'; console tail:" >&2
			tail -c 600 "$log" | sed 's/^/  | /' >&2
			return 1
		fi
		sleep 0.05
	done
}

# sync: wait for the shell to run a command (the echo of the input cannot match).
sync_shell() { send 'echo @@$((40+2))END'; expect '@@42END' 30; }

# finish: QEMU must exit by itself (poweroff + -no-reboot) within 30 s.
finish() {
	local i
	for ((i = 0; i < 300; i++)); do
		kill -0 "$qpid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$qpid" 2>/dev/null; then
		echo "  QEMU still running 30 s after poweroff" >&2
		kill "$qpid"
		wait "$qpid" || true
		qpid=
		return 1
	fi
	wait "$qpid" || { echo "  QEMU exit status $?" >&2; qpid=; return 1; }
	qpid=
	exec 3>&-
}

login() {
	expect 'qshell-guest login: ' 120 || return 1
	echo "  login prompt after $(since "$t0") s"
	send root
	expect 'Password: ' 30 || return 1
	send qshell
	sync_shell
}

check() { # NAME FUNCTION
	local s
	s=$(now)
	echo "== $1"
	if "$2"; then
		echo "ok   $1 ($(since "$s") s)"
		passed=$((passed + 1))
	else
		echo "FAIL $1 (log: $log)"
		failed=$((failed + 1))
		[ -z "$qpid" ] || { kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null || true; qpid=; }
		cp "$log" "/tmp/qshell-guest-smoke-$name.log" 2>/dev/null && echo "  console saved in /tmp/qshell-guest-smoke-$name.log"
	fi
}

t_login() {
	start login -append "console=ttyS0 root=/dev/sda1 panic=-1" -hda "$dir/system.qcow2" -snapshot
	login || return 1
	send 'uname -r'
	expect "$kver" 10 || return 1
	send 'rmmod virtio_blk && modprobe virtio_blk && echo modprobe-$((1+1))-ok'
	expect 'modprobe-2-ok' 10 || return 1
	send poweroff
	finish
}

t_datadisk() {
	mkdir -p "$tmp/data/sub"
	echo "contents of the data disk: $((6 * 7))" >"$tmp/data/sub/hello.txt"
	mkfs.ext4 -q -F -L data -d "$tmp/data" "$tmp/data.raw" 16M >/dev/null
	qemu-img convert -O qcow2 "$tmp/data.raw" "$tmp/data.qcow2"
	start datadisk -append "$append" \
		-hda "$dir/system.qcow2" -hdb "$tmp/data.qcow2" -snapshot
	login || return 1
	send 'mount /dev/sdb /mnt && cat /mnt/sub/hello.txt'
	expect 'contents of the data disk: 42' 10 || return 1
	send 'findfs LABEL=data'
	expect '/dev/sdb' 10 || return 1
	sync_shell || return 1
	send poweroff
	finish
}

t_initramfs() {
	start initramfs -append "console=ttyS0 panic=-1" -hda "$dir/system.qcow2" -snapshot
	expect 'initramfs: no root= on the kernel command line' 120 || return 1
	expect '(initramfs) # ' 10 || return 1
	echo "  initramfs shell after $(since "$t0") s"
	sync_shell || return 1
	send 'ls /sys/class/block'
	expect 'sda1' 10 || return 1
	send poweroff
	finish
}

t_badroot() {
	start badroot -append "console=ttyS0 root=/dev/sdz1 rootdelay=1 panic=-1" \
		-hda "$dir/system.qcow2" -snapshot
	expect 'root device /dev/sdz1 did not appear within 1s' 120 || return 1
	expect '(initramfs) # ' 10 || return 1
	sync_shell || return 1
	send exit
	finish
}

t_virtio() {
	start virtio -append "console=ttyS0 root=/dev/vda1 panic=-1" \
		-drive "file=$dir/system.qcow2,if=virtio,format=qcow2" -snapshot
	login || return 1
	send 'echo root-on-vda1-$(grep -c "^/dev/vda1 / ext4 rw" /proc/mounts)-x'
	expect 'root-on-vda1-1-x' 10 || return 1
	send poweroff
	finish
}

check "boot to login, uname -r, poweroff" t_login
check "second disk (-hdb) is /dev/sdb and mounts" t_datadisk
check "no root=: initramfs shell" t_initramfs
check "missing root device: initramfs shell, exit stops the VM" t_badroot
check "virtio system disk (root=/dev/vda1)" t_virtio
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
