#!/usr/bin/env bash
# kernel-lab.sh — run Go test packages under Debian's stock kernel in qemu, for
# what this machine's kernel lacks (ipvlan, 802.1Q, the OVS datapath).
#
#   scripts/kernel-lab.sh [go test packages...]     (default: ./drivers/ipvlan/)
#
# The kernel .deb is downloaded once with apt and kept, unpacked and depmod'ed,
# in the cache dir: later runs need no network. Each package's test binary is
# built statically (CGO_ENABLED=0 go test -c) and put, with busybox, iproute2's
# ip and the needed modules, into an initramfs whose /init (lab/init.sh) runs
# every binary with -test.v and powers off. The VM's serial console comes back
# on stdout; the run fails if any package fails, or on timeout.
#
# Environment:
#   KERNEL_LAB_CACHE     cache dir (default ${XDG_CACHE_HOME:-/var/cache}/netplugin-kernel-lab)
#   KERNEL_LAB_TIMEOUT   seconds the VM may run (default 600)
#   KERNEL_LAB_MEM       VM memory in MiB (default 1024)
#   KERNEL_LAB_CPUS      VM CPUs (default 2)
#   KERNEL_LAB_ACCEL     qemu accelerator (default tcg: nested KVM is unusably slow here)
#   KERNEL_LAB_KERNEL    kernel package (default: what linux-image-amd64 depends on)
#   KERNEL_LAB_MODULES   extra modules to load, space separated
#   KERNEL_LAB_BINS      host commands copied in with their libraries (default: ip bridge ping)
#   KERNEL_LAB_TESTFLAGS extra test binary flags, e.g. "-test.run TestKernel/l3"
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"

timeout_s=${KERNEL_LAB_TIMEOUT:-600}
mem=${KERNEL_LAB_MEM:-1024}
cpus=${KERNEL_LAB_CPUS:-2}
accel=${KERNEL_LAB_ACCEL:-tcg}
cache=${KERNEL_LAB_CACHE:-${XDG_CACHE_HOME:-/var/cache}/netplugin-kernel-lab}
# xfrm_user and nfnetlink: vishvananda/netlink's handles open XFRM and
# NETFILTER sockets too; a real host autoloads them, the lab has no modprobe.
modules="ipvlan 8021q macvlan veth bridge vxlan openvswitch xfrm_user nfnetlink ${KERNEL_LAB_MODULES:-}"
# iputils' ping: busybox's has no -M do, which the MTU tests need; bridge: FDB dumps.
bins=${KERNEL_LAB_BINS:-ip bridge ping}
# The test binaries time out a minute before the VM is killed, so that a hung
# test still prints its goroutine dump and the summary line.
testflags="-test.timeout $((timeout_s > 120 ? timeout_s - 60 : timeout_s))s ${KERNEL_LAB_TESTFLAGS:-}"
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(./drivers/ipvlan/)

log() { echo "kernel-lab: $*" >&2; }
die() { log "$*"; exit 1; }
t0=$(date +%s)

# --- host tools --------------------------------------------------------------
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want qemu-system-x86_64 qemu-system-x86
want cpio cpio
want modprobe kmod
want ip iproute2
# Only busybox-static's binary works alone in the initramfs.
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then need+=(busybox-static); fi
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "need root to install ${need[*]}"
	log "installing ${need[*]}"
	{ DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
			--no-install-recommends "${need[@]}"; } >&2
fi
command -v go >/dev/null || die "go not found"

work=$(mktemp -d /tmp/np-kernel-lab-XXXXXX)
qpid=
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null || true # timeout(1) passes it on to qemu
		wait "$qpid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- kernel ------------------------------------------------------------------
# kernel_dir prints a cached, unpacked, depmod'ed kernel tree, fetching the .deb
# when the wanted version is not cached yet. Offline, or when apt knows no
# kernel, the newest cached tree is used.
kernel_dir() {
	mkdir -p "$cache"
	# One run at a time fills the cache; the lock goes with this subshell.
	exec 9>"$cache/.lock"
	flock 9
	find "$cache" -mindepth 1 -maxdepth 1 -name '.unpack-*' -exec rm -rf {} + # a killed run's
	local pkg=${KERNEL_LAB_KERNEL:-} ver="" dir
	if [ -z "$pkg" ]; then
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
		if [ -z "$pkg" ] && [ -z "$(newest_cached)" ]; then
			# A fresh machine has no package lists yet.
			apt-get update -q >&2 || true
			pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
		fi
	fi
	[ -z "$pkg" ] || ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/{print $2; exit}' || true)
	if [ -n "$pkg" ] && [ -n "$ver" ] && [ "$ver" != "(none)" ]; then
		dir=$cache/${pkg}_$ver
		if [ -f "$dir/.ready" ]; then
			echo "$dir"
			return
		fi
		local dl=$work/deb
		mkdir -p "$dl"
		log "downloading $pkg $ver"
		# Sandbox user root: _apt may not write into our private temp dir.
		if (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) &&
			unpack_kernel "$dl"/*.deb "$dir"; then
			echo "$dir"
			return
		fi
		[ -z "${KERNEL_LAB_KERNEL:-}" ] || die "could not fetch $pkg $ver (KERNEL_LAB_KERNEL)"
		log "could not fetch $pkg $ver; using the newest cached kernel"
	fi
	dir=$(newest_cached)
	[ -n "$dir" ] || die "no kernel: apt knows no linux-image-amd64 and nothing is cached in $cache"
	echo "$dir"
}

newest_cached() {
	find "$cache" -mindepth 2 -maxdepth 2 -name .ready -path "$cache/linux-image-*" -printf '%h\n' 2>/dev/null |
		sort -V | tail -n 1
}

# unpack_kernel DEB DIR: unpack into DIR (atomically: a killed run leaves no
# half tree that looks ready) and build modules.dep for modprobe -d.
unpack_kernel() {
	local deb=$1 dir=$2 tmp
	tmp=$(mktemp -d "$cache/.unpack-XXXXXX")
	dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; return 1; }
	local kver
	kver=$(find "$tmp/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n 1)
	# Called in an `if`, where set -e is off: every step checks by hand.
	if ! depmod -b "$tmp" "$kver" || ! [ -f "$tmp/boot/vmlinuz-$kver" ]; then
		rm -rf "$tmp"
		return 1
	fi
	echo "$kver" >"$tmp/kver"
	touch "$tmp/.ready"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	# Keep one kernel: each unpacked tree is ~400 MiB, and an older one is
	# only needed while the new one cannot be fetched.
	find "$cache" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -path "$dir" -exec rm -rf {} +
}

kdir=$(kernel_dir)
kver=$(cat "$kdir/kver")
vmlinuz=$kdir/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "no $vmlinuz in $kdir"
log "kernel $kver from $kdir"

# --- initramfs ---------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,run,tmp,lab/bin,lab/pkg}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 lab/init.sh "$root/init"

# copy_bin CMD: the host's binary at /usr/sbin/CMD plus every shared library
# ldd names (busybox's own ip has no `ip netns`, which the tests need).
copy_bin() {
	local path lib
	path=$(command -v "$1") || die "host command $1 not found"
	cp -L "$path" "$root/usr/sbin/$1"
	for lib in $(ldd "$path" 2>/dev/null | grep -o '/[^ ]*' || true); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}
for b in $bins; do copy_bin "$b"; done

# Modules in load order: modprobe resolves dependencies on the unpacked tree
# and prints one "insmod PATH" per module; built-in ones print "builtin".
: >"$root/lab/modules"
for m in $modules; do
	modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' ||
		die "module $m not found in $kver"
done | awk '!seen[$0]++' | while read -r ko; do
	base=$(basename "$ko")
	cp "$ko" "$root/lib/modules/$base"
	echo "/lib/modules/$base" >>"$root/lab/modules"
done

echo "$testflags" >"$root/lab/testflags"
: >"$root/lab/tests"
for p in "${pkgs[@]}"; do
	name=$(echo "$p" | sed 's#^\./##; s#/$##; s#[^A-Za-z0-9_]#_#g').test
	log "building $p"
	CGO_ENABLED=0 go test -c -o "$root/lab/bin/$name" "$p" >&2
	[ -x "$root/lab/bin/$name" ] || die "$p has no tests"
	mkdir -p "$root/lab/pkg/$name"
	pdir=$(go list -f '{{.Dir}}' "$p")
	[ ! -d "$pdir/testdata" ] || cp -r "$pdir/testdata" "$root/lab/pkg/$name/"
	echo "$name $p" >>"$root/lab/tests"
done
# Uncompressed: under TCG the kernel would spend seconds inflating it.
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"
log "initramfs $(du -m "$work/initramfs.cpio" | cut -f1) MiB, ready after $(($(date +%s) - t0))s; booting (timeout ${timeout_s}s)"

# --- run ---------------------------------------------------------------------
out=$work/console.log
: >"$out" # before qemu starts: tail must find it
t1=$(date +%s)
# -no-reboot + panic=-1: if init dies the kernel panics, reboots, and qemu exits
# instead of hanging until the timeout.
timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel "$accel" -m "$mem" -smp "$cpus" \
	-nodefaults -nographic -monitor none -serial stdio -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/initramfs.cpio" \
	-append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
	</dev/null >>"$out" 2>&1 &
qpid=$!
# Live, minus carriage returns and the firmware's terminal escapes.
tail --pid="$qpid" -n +1 -f "$out" | sed -u 's/\r//g; s/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' || true

rc=0
wait "$qpid" || rc=$?
qpid=
secs=$(($(date +%s) - t1))

summary=$(tr -d '\r' <"$out" | grep -E '^kernel-lab: [0-9]+ passed, [0-9]+ failed$' | tail -n 1 || true)
npass=$(tr -d '\r' <"$out" | grep -cE '^kernel-lab: PASS ' || true)
nfail=$(tr -d '\r' <"$out" | grep -cE '^kernel-lab: FAIL ' || true)
echo
echo "kernel-lab: packages:"
tr -d '\r' <"$out" | grep -E '^kernel-lab: (PASS|FAIL) ' | sed 's/^kernel-lab: /  /' || true
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	echo "kernel-lab: VM timed out after ${timeout_s}s"
	nfail=$((${#pkgs[@]} - npass))
elif [ -z "$summary" ]; then
	echo "kernel-lab: VM ended (qemu exit $rc) without a summary"
	nfail=$((${#pkgs[@]} - npass))
fi
echo "kernel-lab: VM ran ${secs}s, whole run $(($(date +%s) - t0))s"
echo "kernel-lab: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ] && [ "$npass" -eq ${#pkgs[@]} ]
