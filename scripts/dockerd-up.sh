#!/usr/bin/env bash
# dockerd-up.sh DIR — start a private Docker daemon for `make demo` / `make bench`.
#
# Everything lives under DIR: the socket DIR/docker.sock, dockerd's data and
# exec roots, and a containerd of its own (started here, not by dockerd:
# dockerd would silently share a system containerd if
# /run/containerd/containerd.sock exists). The daemon gets no network of its
# own (--bridge=none --iptables=false --ip-masq=false): no docker0, no NAT
# towards eth0. Run containers with --network none.
# NP_DOCKERD_BRIDGE=1 keeps Docker's default bridge (docker0, still without
# NAT or iptables): Vagrant's docker provider connects its private networks to
# a container that starts on it; run such a dockerd in a network namespace of
# your own, where docker0 and its address stay.
#
# Installs docker.io / busybox-static with apt-get when their binaries are
# missing, imports the busybox test image as netplugin-test/busybox:latest
# (no registry is reachable), and prints how to use the daemon.
# Running it again on a live DIR only re-checks the image. Stop with
# scripts/dockerd-down.sh DIR. Same layout as internal/testenv.
set -euo pipefail

IMAGE=netplugin-test/busybox:latest
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables that would point the CLI elsewhere, or make dockerd talk to systemd.
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH NOTIFY_SOCKET

say() { echo "dockerd-up: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (dockerd needs it)"
here=$(cd "$(dirname "$0")" && pwd)

DIR=$(realpath -m -- "$1")
[ "$DIR" != / ] || die "DIR must not be /"
SOCK=$DIR/docker.sock
CTRD_SOCK=$DIR/containerd/containerd.sock
# sun_path holds 108 bytes with the NUL; containerd also listens on <sock>.ttrpc.
[ ${#CTRD_SOCK} -lt 102 ] || die "DIR too long for unix sockets (${#CTRD_SOCK}+6 bytes >= 108): pick a shorter DIR"
mkdir -p "$DIR"

cli() { /usr/bin/docker -H "unix://$SOCK" "$@"; }

# --- packages -----------------------------------------------------------
install_missing() {
	local pkgs=() b
	for b in dockerd docker containerd containerd-shim-runc-v2 runc; do
		command -v "$b" >/dev/null || { pkgs+=(docker.io); break; }
	done
	command -v busybox >/dev/null || pkgs+=(busybox-static)
	[ ${#pkgs[@]} -gt 0 ] || return 0
	command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them"
	say "installing ${pkgs[*]}"
	# docker.io's postinst starts the system dockerd (docker0 + NAT to eth0)
	# unless policy-rc.d forbids it; forbid it for the install if no policy exists.
	local policy=/usr/sbin/policy-rc.d made=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# dockerd-up.sh: no service starts during install\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made=1
	fi
	local rc=0
	{ DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "${pkgs[@]}"; } >&2 || rc=$?
	[ -z "$made" ] || rm -f "$policy"
	[ $rc -eq 0 ] || die "apt-get install ${pkgs[*]} failed"
}
install_missing
for b in dockerd docker containerd busybox; do
	command -v "$b" >/dev/null || die "$b still missing after install"
done
# The image has no libc: Debian's dynamic "busybox" would import fine and fail in every container.
if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
	die "$(command -v busybox) is not from busybox-static (needed: statically linked): apt-get install busybox-static"
fi

# --- image --------------------------------------------------------------
ensure_image() {
	if cli image inspect "$IMAGE" >/dev/null 2>&1; then
		say "image $IMAGE present"
		return
	fi
	local root=$DIR/rootfs.tmp a
	rm -rf "$root"
	mkdir -p "$root"/{bin,dev,etc,proc,root,run,sys,usr,var,tmp}
	chmod 1777 "$root/tmp"
	cp "$(command -v busybox)" "$root/bin/busybox"
	for a in $(busybox --list); do
		[ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
	done
	ln -s bin "$root/sbin"
	ln -s ../bin "$root/usr/bin"
	ln -s ../bin "$root/usr/sbin"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	tar --numeric-owner --owner=0 --group=0 -C "$root" -c . | cli import --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
	rm -rf "$root"
	say "imported $IMAGE"
}

usage_hint() {
	say "dockerd ready on $SOCK"
	echo "export NETPLUGIN_TEST_DOCKER_HOST=$SOCK"
	echo "# docker -H unix://$SOCK run -d --network none --name c1 $IMAGE sleep 1d"
	echo "# stop: $here/dockerd-down.sh $DIR"
}

if cli version >/dev/null 2>&1; then
	say "already running on $SOCK"
	ensure_image
	usage_hint
	exit 0
fi

# Leftovers of a daemon that died (or a half-finished start): clean first.
if [ -e "$DIR/.np-dockerd" ]; then
	say "cleaning up a previous daemon in $DIR"
	"$here/dockerd-down.sh" "$DIR"
	mkdir -p "$DIR"
elif [ -n "$(ls -A "$DIR")" ]; then
	die "$DIR is not empty and was not made by dockerd-up.sh; use an empty or new directory"
fi

# --- start --------------------------------------------------------------
mkdir -p "$DIR/containerd"
touch "$DIR/.np-dockerd" # marks DIR as ours: dockerd-down.sh refuses other directories
# Relative cgroup parent: containers nest under this shell's cgroup, in a
# subtree of their own that dockerd-down.sh removes.
CGROUP=np-dockerd-$(printf '%s' "$DIR" | sha256sum | cut -c1-12)
echo "$CGROUP" >"$DIR/cgroup-parent"

cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
# CRI would set up CNI and listen for kubelet; dockerd needs none of it.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$CTRD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  # default /opt/containerd
  path = "$DIR/containerd/opt"
EOF

# --config-file keeps a host /etc/docker/daemon.json out. dockerd < 23 writes
# /etc/docker/key.json unless this config key (not a flag) moves it; newer
# versions reject the key.
major=$(dockerd --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ -n "$major" ] && [ "$major" -lt 23 ]; then
	printf '{\n  "deprecated-key-path": "%s"\n}\n' "$DIR/key.json" >"$DIR/daemon.json"
else
	echo '{}' >"$DIR/daemon.json"
fi

alive() { # pid: running and not a zombie
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}
fail_start() {
	say "error: $1"
	say "last lines of $2:"
	tail -n 15 "$2" >&2 || true
	"$here/dockerd-down.sh" "$DIR" >&2 || true
	exit 1
}

bridge_none=1
[ "${NP_DOCKERD_BRIDGE:-}" != 1 ] || bridge_none=

start=$(date +%s%N)
# setsid: own session, so neither Ctrl-C in this terminal nor its closing
# reaches the daemons; they outlive this script by design.
setsid containerd --config "$DIR/containerd/config.toml" </dev/null >"$DIR/containerd.log" 2>&1 &
echo $! >"$DIR/containerd.pid"
for _ in $(seq 600); do
	[ -S "$CTRD_SOCK" ] && break
	alive "$(cat "$DIR/containerd.pid")" || fail_start "containerd exited" "$DIR/containerd.log"
	sleep 0.05
done
[ -S "$CTRD_SOCK" ] || fail_start "containerd socket did not appear in 30s" "$DIR/containerd.log"

setsid dockerd \
	--config-file "$DIR/daemon.json" \
	--containerd "$CTRD_SOCK" \
	--data-root "$DIR/data" \
	--exec-root "$DIR/exec" \
	--pidfile "$DIR/docker.pid" \
	-H "unix://$SOCK" \
	--iptables=false --ip-masq=false ${bridge_none:+--bridge=none} \
	--userland-proxy=false \
	--cgroup-parent "$CGROUP" \
	</dev/null >"$DIR/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1200); do
	cli version >/dev/null 2>&1 && break
	alive "$dockerd_pid" || fail_start "dockerd exited" "$DIR/dockerd.log"
	sleep 0.05
done
cli version >/dev/null 2>&1 || fail_start "dockerd did not answer in 60s" "$DIR/dockerd.log"
say "dockerd $(cli version --format '{{.Server.Version}}') up in $((($(date +%s%N) - start) / 1000000)) ms (logs: $DIR/dockerd.log)"

ensure_image
usage_hint
