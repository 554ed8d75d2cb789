#!/bin/bash
# Build qshell's default test guest from Debian packages, without root:
#   OUTDIR/vmlinuz       the current Debian cloud kernel (apt-get download + dpkg-deb -x)
#   OUTDIR/initrd.img    busybox initramfs: loads the disk modules, switch_root's to root=
#   OUTDIR/system.qcow2  MBR disk, one ext4 partition (sda1): busybox root, root password "qshell"
#   OUTDIR/guest.lua     `return {kernel=, initrd=, system=, append=, ...}` (names relative to OUTDIR)
#   OUTDIR/inputs.stamp  what the outputs were built from; unchanged inputs => no rebuild
#   OUTDIR/cache/        the downloaded kernel .deb
# Usage: build.sh [-f] OUTDIR      (-f: rebuild even when the stamp matches)
# Environment: GUEST_EXTRA_MODULES="mod ..." adds kernel modules (with their
# dependencies) to the initramfs and the root filesystem; BUSYBOX=path of a static busybox;
# QSHELL_ROI_HELPER=path of the static qshell-roi helper (installed as /usr/bin/qshell-roi;
# default: build/roi/qshell-roi of the source tree, or PREFIX/lib/qshell/qshell-roi).
set -euo pipefail

KERNEL_META=linux-image-cloud-amd64
MODULES="scsi_common scsi_mod libata ata_piix sd_mod
	virtio_pci_modern_dev virtio_pci_legacy_dev virtio_ring virtio virtio_pci virtio_blk"
EXTRA_MODULES=${GUEST_EXTRA_MODULES:-}
BUSYBOX=${BUSYBOX:-/bin/busybox}
ROOT_USER=root
ROOT_PASSWORD=qshell
ROOT_MIB=64                       # ext4 size; the partition starts at 1 MiB (sector 2048)
# The root by its filesystem label: the kernel names IDE disks in the order
# its (asynchronous) sd probes finish, so on a loaded host -hda can become
# sdb; the label finds it whatever it is called, on IDE or virtio alike.
ROOT_DEV=LABEL=qshell-root
APPEND="console=ttyS0 root=$ROOT_DEV panic=-1 nokaslr"

die() { echo "build.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found (apt-get install $2)"; }

force=0
while getopts f opt; do
	case $opt in
	f) force=1 ;;
	*) echo "usage: $0 [-f] OUTDIR" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-f] OUTDIR" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cache=$out/cache
mkdir -p "$cache"

need apt-get apt
need dpkg-deb dpkg
need mkfs.ext4 e2fsprogs
need qemu-img qemu-utils
need gzip gzip
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
if command -v ldd >/dev/null && ldd "$BUSYBOX" >/dev/null 2>&1; then
	die "$BUSYBOX is dynamically linked; the guest needs a static one (apt-get install busybox-static)"
fi
bb() { "$BUSYBOX" "$@"; }
ROI_HELPER=${QSHELL_ROI_HELPER:-}
if [ -z "$ROI_HELPER" ]; then
	for f in "$here/../../build/roi/qshell-roi" "$here/../../../lib/qshell/qshell-roi"; do
		[ -x "$f" ] && ROI_HELPER=$f && break
	done
fi
[ -n "$ROI_HELPER" ] && [ -x "$ROI_HELPER" ] ||
	die "no qshell-roi helper${ROI_HELPER:+ at $ROI_HELPER} (make builds build/roi/qshell-roi; or set QSHELL_ROI_HELPER)"

# One build at a time per OUTDIR.
if command -v flock >/dev/null; then
	exec 9>"$out/.lock"
	flock 9
fi

# --- Which kernel: the package the cloud metapackage depends on now. --------
# (One apt-cache call: without pkgcache.bin each costs ~0.6 s. The metapackage
# pins the exact version: "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".)
dep=$(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null | sed -n 's/^Depends: //p') || dep=
dep=$(echo "${dep%%$'\n'*}" | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\)\( *(= *\([^)]*\))\)\{0,1\}.*$/\1 \3/p')
pkg=${dep%% *}
ver=${dep#* }
ver=${ver%%$'\n'*}
if [ -n "$pkg" ] && [ -z "$ver" ]; then
	ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p') || ver=
	ver=${ver%%$'\n'*}
fi
if [ -z "$pkg" ] || [ -z "$ver" ]; then
	# No apt metadata (offline?): fall back to the newest cached kernel.
	deb=$(ls -t "$cache"/linux-image-*.deb 2>/dev/null | head -n 1) || true
	[ -n "$deb" ] || die "cannot resolve $KERNEL_META (apt-get update?) and no kernel in $cache"
	pkg=$(dpkg-deb -f "$deb" Package)
	ver=$(dpkg-deb -f "$deb" Version)
	echo "build.sh: warning: apt cannot resolve $KERNEL_META; using cached $pkg $ver" >&2
fi

# --- Inputs; unchanged inputs and present outputs => nothing to do. ---------
bb_pkgver=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) || bb_pkgver=unknown
inputs() {
	echo "format 1"
	echo "kernel $pkg $ver"
	echo "busybox $bb_pkgver $(sha256sum <"$BUSYBOX" | cut -d' ' -f1)"
	echo "modules" $MODULES $EXTRA_MODULES
	echo "roi-helper $(sha256sum <"$ROI_HELPER" | cut -d' ' -f1)"
	(cd "$here" && find build.sh initramfs rootfs \( -type f -o -type l \) -print | LC_ALL=C sort |
		while IFS= read -r f; do
			if [ -L "$f" ]; then echo "link $f -> $(readlink "$f")"; else
				echo "file $f $(stat -c %a "$f") $(sha256sum <"$f" | cut -d' ' -f1)"; fi
		done)
}
stamp=$(inputs)
outputs="vmlinuz initrd.img system.qcow2 guest.lua"
uptodate=1
for f in $outputs inputs.stamp; do [ -s "$out/$f" ] || uptodate=0; done
if [ $force = 0 ] && [ $uptodate = 1 ] && [ "$(cat "$out/inputs.stamp")" = "$stamp" ]; then
	echo "guest fixture up to date in $out ($pkg $ver); nothing to do"
	exit 0
fi

t0=$(date +%s.%N)
work=$out/.work
rm -rf "$work" "$out/inputs.stamp"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"

# --- Kernel package: download once into the cache, extract. ----------------
deb=
for f in "$cache/${pkg}_"*.deb; do
	[ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version 2>/dev/null)" = "$ver" ] && deb=$f && break
done
if [ -z "$deb" ]; then
	echo "downloading $pkg $ver ..."
	sandbox=()
	[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root) # _apt could not write here
	(cd "$cache" && apt-get download -q "${sandbox[@]}" "$pkg=$ver") || die "apt-get download $pkg=$ver failed"
	for f in "$cache/${pkg}_"*.deb; do
		[ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && deb=$f && break
	done
	[ -n "$deb" ] || die "apt-get download left no $pkg $ver .deb in $cache"
fi
for f in "$cache"/linux-image-*.deb; do # keep only the kernel in use
	[ "$f" = "$deb" ] || rm -f "$f"
done

dpkg-deb -x "$deb" "$work/kernel"
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-* 2>/dev/null) || die "no /boot/vmlinuz-* in $deb"
[ "$(echo "$vmlinuz" | wc -l)" = 1 ] || die "several kernels in $deb: $vmlinuz"
kver=${vmlinuz##*/vmlinuz-}
moddir=$work/kernel/lib/modules/$kver
[ -d "$moddir" ] || moddir=$work/kernel/usr/lib/modules/$kver
[ -d "$moddir" ] || die "no modules directory for $kver in $deb"

# --- Modules: copy (decompressed) with their dependencies, dependencies first.
# Debian 12 ships them uncompressed; later kernels use .ko.xz/.ko.zst, and
# busybox insmod (init_module) cannot rely on in-kernel decompression, so any
# compressed module is decompressed here.
declare -A modpath=() builtin=() seen=()
while IFS= read -r -d '' f; do
	n=${f##*/}
	n=${n%%.ko*}
	modpath[${n//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko*' -print0)
if [ -f "$moddir/modules.builtin" ]; then
	while IFS= read -r f; do
		n=${f##*/}
		n=${n%%.ko*}
		builtin[${n//-/_}]=1
	done <"$moddir/modules.builtin"
fi
stage=$work/modules
mkdir -p "$stage/lib/modules/$kver"
order=()
add_module() { # name wanted_by
	local name=${1//-/_} src rel dst deps d
	local -a list
	[ -z "${seen[$name]+x}" ] || return 0
	seen[$name]=1
	src=${modpath[$name]-}
	if [ -z "$src" ]; then
		if [ -n "${builtin[$name]+x}" ]; then
			echo "module $name: built into $kver"
		else
			echo "module $name: not in $kver, skipped${2:+ (needed by $2)}"
		fi
		return 0
	fi
	rel=${src#"$moddir"/}
	rel=${rel%%.ko*}.ko
	dst=$stage/lib/modules/$kver/$rel
	mkdir -p "${dst%/*}"
	case $src in
	*.ko) cp "$src" "$dst" ;;
	*.ko.xz) bb xzcat "$src" >"$dst" ;;
	*.ko.gz) bb zcat "$src" >"$dst" ;;
	*.ko.zst)
		command -v zstd >/dev/null || die "$src is zstd-compressed: apt-get install zstd"
		zstd -q -d -c "$src" >"$dst"
		;;
	*) die "unknown module format: $src" ;;
	esac
	deps=$(bb strings -a "$dst" | sed -n 's/^depends=//p')
	deps=${deps%%$'\n'*}
	IFS=, read -r -a list <<<"$deps"
	for d in "${list[@]}"; do
		[ -z "$d" ] || add_module "$d" "$name"
	done
	order+=("$rel")
}
for m in $MODULES $EXTRA_MODULES; do add_module "$m"; done
printf '%s\n' "# insmod order (dependencies first), written by guest/build.sh" "${order[@]}" \
	>"$stage/lib/modules/$kver/load.order"
for f in modules.builtin modules.builtin.modinfo modules.order; do
	[ ! -f "$moddir/$f" ] || cp "$moddir/$f" "$stage/lib/modules/$kver/"
done
bb depmod -b "$stage" "$kver" # modules.dep etc., so modprobe works in the guest

# --- Busybox trees. ---------------------------------------------------------
install_busybox() { # root [applets to leave out]
	local root=$1 a
	shift
	mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
	cp "$BUSYBOX" "$root/bin/busybox"
	chmod 755 "$root/bin/busybox"
	for a in $(bb --list-full); do
		case " bin/busybox linuxrc $* " in *" $a "*) continue ;; esac
		[ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
	done
}

# initramfs
ird=$work/initramfs
install_busybox "$ird"
mkdir -p "$ird"/{dev,proc,sys,newroot,root,tmp,etc}
cp -R "$here/initramfs/." "$ird/"
chmod 755 "$ird/init"
cp -R "$stage/lib" "$ird/"
(cd "$ird" && find . | LC_ALL=C sort |
	bb cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes 2>/dev/null) |
	gzip -n -9 >"$work/initrd.img"

# root filesystem
rfs=$work/rootfs
install_busybox "$rfs"
mkdir -p "$rfs"/{dev,proc,sys,tmp,root,mnt,run,home,var/log,var/tmp,etc/init.d}
ln -s ../run "$rfs/var/run"
cp -R "$here/rootfs/." "$rfs/"
cp -R "$stage/lib" "$rfs/"
install -m 755 "$ROI_HELPER" "$rfs/usr/bin/qshell-roi"
hash=$(bb mkpasswd -m sha512 "$ROOT_PASSWORD" 2>/dev/null) ||
	hash=$(openssl passwd -6 "$ROOT_PASSWORD") || die "cannot hash the root password"
case $hash in '$6$'*) ;; *) die "unexpected password hash: $hash" ;; esac
days=$(($(date +%s) / 86400))
{
	echo "root:$hash:$days:0:99999:7:::"
	echo "daemon:*:$days:0:99999:7:::"
	echo "nobody:*:$days:0:99999:7:::"
} >"$rfs/etc/shadow"
chmod 600 "$rfs/etc/shadow"
chmod 755 "$rfs/etc/init.d/rcS"
chmod 700 "$rfs/root"
chmod 1777 "$rfs/tmp" "$rfs/var/tmp"
guest_hostname=$(cat "$rfs/etc/hostname")

# --- The disk: MBR, one Linux partition at sector 2048, ext4 filled from rfs.
raw=$work/system.raw
truncate -s $(((ROOT_MIB + 1) * 1024 * 1024)) "$raw"
if command -v sfdisk >/dev/null; then
	printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$raw" >/dev/null
else
	printf 'o\nn\np\n1\n2048\n\nw\n' | bb fdisk "$raw" >/dev/null
fi
mkfs.ext4 -q -F -L qshell-root -E offset=1048576 -d "$rfs" "$raw" "$((ROOT_MIB * 1024))k"
if [ "$(id -u)" != 0 ]; then
	# mkfs -d copies the builder's uid/gid: make everything root's.
	need debugfs e2fsprogs
	(cd "$rfs" && find . -print) | sed 's|^\.||; s|^$|/|' |
		sed 's|.*|sif "&" uid 0\nsif "&" gid 0|' >"$work/chown.debugfs"
	debugfs -w -f "$work/chown.debugfs" "$raw?offset=1048576" >/dev/null 2>"$work/debugfs.err" ||
		die "debugfs failed: $(cat "$work/debugfs.err")"
fi
qemu-img convert -f raw -O qcow2 "$raw" "$work/system.qcow2"

cp "$vmlinuz" "$work/vmlinuz"

# --- guest.lua ---------------------------------------------------------------
lstr() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
{
	echo "-- Generated by guest/build.sh; file names are relative to this file's directory."
	echo "return {"
	echo "  kernel = \"vmlinuz\","
	echo "  initrd = \"initrd.img\","
	echo "  system = \"system.qcow2\",           -- first disk (-hda); a second disk (-hdb) is /dev/sdb"
	echo "  append = $(lstr "$APPEND"),"
	echo "  root = $(lstr "$ROOT_DEV"),"
	echo "  machine = \"pc\",                     -- IDE disks; the kernel has no AHCI driver (q35)"
	echo "  memory = \"256M\","
	echo "  user = $(lstr "$ROOT_USER"),"
	echo "  password = $(lstr "$ROOT_PASSWORD"),"
	echo "  hostname = $(lstr "$guest_hostname"),"
	echo "  login_prompt = $(lstr "$guest_hostname login: "),"
	echo "  password_prompt = \"Password: \","
	echo '  prompt = "# ",                      -- PS1 is '"'"'\u@\h:\w\$ '"'"': "root@'"$guest_hostname"':~# "'
	echo "  initramfs_prompt = \"(initramfs) # \", -- shell reached without root= (or when root fails)"
	echo "  kernel_version = $(lstr "$kver"),"
	echo "  kernel_package = $(lstr "$pkg"),"
	echo "  kernel_package_version = $(lstr "$ver"),"
	echo "  busybox_version = $(lstr "$bb_pkgver"),"
	printf '  modules = {'
	for m in "${order[@]}"; do m=${m##*/}; printf '%s, ' "$(lstr "${m%.ko}")"; done
	echo "},"
	echo "}"
} >"$work/guest.lua"

for f in $outputs; do mv -f "$work/$f" "$out/$f"; done
printf '%s\n' "$stamp" >"$out/inputs.stamp"
t1=$(date +%s.%N)
echo "guest fixture built in $out: kernel $kver ($pkg $ver), busybox $bb_pkgver," \
	"modules: ${#order[@]}, $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
