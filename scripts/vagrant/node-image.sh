#!/usr/bin/env bash
# node-image.sh — the image of the Vagrant docker provider's nodes, built here
# from Debian packages (no registry is needed): debootstrap of Debian 12
# (bookworm, minbase), then the very package step every netplugin host runs
# (scripts/provision/packages.sh), then `docker import`.
#
#   node-image.sh [--tag-only]     prints the image's name (netplugin-vagrant-node:HASH)
#
# HASH covers what goes into the image: this script, the package step and
# the suite. The image is built only when the Docker daemon ($DOCKER_HOST)
# does not have it and no cached tarball of it exists: the root file system is
# kept as NP_VAGRANT_CACHE/node-HASH.tar (default /var/cache/netplugin-vagrant),
# so that a fresh Docker daemon imports it in seconds. Older tarballs are
# removed when a new one is made. Needs root (debootstrap, chroot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
STEP=node-image
# shellcheck source=../provision/lib.sh
source "$repo/scripts/provision/lib.sh"

SUITE=bookworm
MIRROR=${NP_VAGRANT_MIRROR:-http://deb.debian.org/debian}
SECURITY=${NP_VAGRANT_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE=${NP_VAGRANT_CACHE:-/var/cache/netplugin-vagrant}
REPO_NAME=netplugin-vagrant-node

hash=$(cat "$here/node-image.sh" "$repo/scripts/provision/packages.sh" "$repo/scripts/install-deps.sh" |
	{
		cat
		echo "$SUITE $MIRROR $SECURITY"
	} | sha256sum | cut -c1-12)
TAG=$REPO_NAME:$hash
if [ "${1:-}" = --tag-only ]; then
	echo "$TAG"
	exit 0
fi
[ $# -eq 0 ] || {
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

docker() { /usr/bin/docker "$@"; }
need_cmd /usr/bin/docker docker.io
if docker image inspect "$TAG" >/dev/null 2>&1; then
	say "$TAG present"
	echo "$TAG"
	exit 0
fi

tarball=$CACHE/node-$hash.tar
import() {
	# The node's PID 1 is the provider's choice (the Vagrantfile runs it
	# with --init and a sleep); the daemons are the provisioning's.
	docker import --change 'CMD ["sleep", "infinity"]' --change 'ENV LANG=C.UTF-8' \
		--message "netplugin Vagrant node, Debian $SUITE, inputs $hash" "$tarball" "$TAG" >/dev/null
	say "imported $TAG from $tarball"
	echo "$TAG"
}
if [ -s "$tarball" ]; then
	import
	exit 0
fi

need_root
need_cmd debootstrap debootstrap
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build-XXXXXX")
root=$work/rootfs
cleanup() {
	# A failed chroot step may leave its mounts: they go before the tree.
	local m
	m=$(awk -v d="$work" 'index($5, d "/") == 1 { print length($5), $5 }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
	[ -z "$m" ] || while IFS= read -r mp; do umount -l "$mp" 2>/dev/null || true; done <<<"$m"
	rm -rf "$work"
}
trap cleanup EXIT
t0=$(date +%s)
say "debootstrap $SUITE from $MIRROR (log $work/debootstrap.log)"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
	log_tail "$work/debootstrap.log"
	die "debootstrap failed"
}
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The package step, as on any host, from a copy of the scripts it needs.
mkdir -p "$root/tmp/np/scripts/provision"
cp "$repo/scripts/install-deps.sh" "$root/tmp/np/scripts/"
cp "$repo/scripts/provision/packages.sh" "$repo/scripts/provision/lib.sh" "$root/tmp/np/scripts/provision/"
say "packages (log $work/packages.log)"
# A private mount namespace: /proc, /sys and /dev of the chroot vanish with it.
unshare --mount --propagation private -- sh -ec '
	root=$1
	mount -t proc proc "$root/proc"
	mount -t sysfs sysfs "$root/sys"
	mount --rbind /dev "$root/dev"
	chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		/bin/bash /tmp/np/scripts/provision/packages.sh
	# What a node needs beyond a host: ps, for whoever looks inside.
	chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends procps
	chroot "$root" apt-get clean
' sh "$root" >"$work/packages.log" 2>&1 || {
	log_tail "$work/packages.log"
	die "package step failed in the chroot"
}
rm -rf "$root/tmp/np" "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/*.bin "$root/var/log"/*.log
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/hostname"
: >"$root/etc/resolv.conf"
# Kept for the next fresh daemon (make vagrant-test starts one per run).
tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
find "$CACHE" -maxdepth 1 -name 'node-*.tar' ! -name "node-$hash.tar" -delete
say "built $tarball ($(du -h "$tarball" | cut -f1)) in $(($(date +%s) - t0)) s"
import
