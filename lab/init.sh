#!/bin/sh
# init.sh — PID 1 of the kernel lab VM (copied to /init in the initramfs by
# scripts/kernel-lab.sh). It runs busybox's sh: the initramfs holds busybox, the
# modules listed in /lab/modules (in load order), iproute2's ip, and one static
# Go test binary per package listed in /lab/tests. Every line the host parses
# starts with "kernel-lab:"; everything else is the tests' own output.
# No `set -e`: a failing step must still reach the summary and the poweroff,
# otherwise the host only sees a timeout.

/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
export NETPLUGIN_KERNEL_LAB=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /var /root /etc
ln -sf /run /var/run
# Keep kernel messages (module loads, link state changes) off the console the
# host parses; they are still in dmesg, which is printed on failure.
echo 1 >/proc/sys/kernel/printk
ip link set lo up 2>/dev/null

echo "kernel-lab: kernel $(uname -r)"
while read -r ko; do
	[ -n "$ko" ] || continue
	if ! out=$(insmod "$ko" 2>&1); then
		case "$out" in
		*"File exists"*) ;; # already loaded as a dependency of an earlier one
		*"No such device"*) ;; # CPU-specific variant (crc32c-intel) the VM's CPU lacks
		*) echo "kernel-lab: module $ko failed to load: $out" ;;
		esac
	fi
done </lab/modules
echo "kernel-lab: modules $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"

flags=$(cat /lab/testflags)
passed=0 failed=0
# /lab/tests: "<binary> <package>" per line.
while read -r bin pkg; do
	[ -n "$bin" ] || continue
	dir=/lab/pkg/$bin
	mkdir -p "$dir"
	start=$(date +%s)
	echo "kernel-lab: RUN $pkg"
	# Run from the package's own directory copy, as `go test` does, so
	# relative testdata/ paths work. Stdin is closed: tests never read it.
	# shellcheck disable=SC2086 # flags are word-split on purpose
	(cd "$dir" && "/lab/bin/$bin" -test.v $flags </dev/null 2>&1)
	rc=$?
	secs=$(($(date +%s) - start))
	if [ "$rc" -eq 0 ]; then
		passed=$((passed + 1))
		echo "kernel-lab: PASS $pkg ${secs}s"
	else
		failed=$((failed + 1))
		echo "kernel-lab: FAIL $pkg ${secs}s (exit $rc)"
	fi
done </lab/tests

if [ "$failed" -ne 0 ]; then
	echo "kernel-lab: dmesg (last 40 lines)"
	dmesg | tail -n 40 | sed 's/^/kernel-lab: dmesg: /'
fi
echo "kernel-lab: $passed passed, $failed failed"
sync
poweroff -f
