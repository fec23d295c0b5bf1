#!/usr/bin/env bash
# dockerd-down.sh DIR — stop the daemon scripts/dockerd-up.sh started in DIR
# and remove every trace of it: containers first (force: `sleep` as PID 1
# ignores SIGTERM, a graceful stop would take 10 s each), then dockerd, then
# containerd, then any leftover shim or container process, the mounts under
# DIR (overlay rootfs, netns bind mounts, the data-root bind mount), the
# cgroups, and DIR itself. Safe to run again, or on a half-started DIR.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH

say() { echo "dockerd-down: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
if [ ! -d "$1" ]; then
	say "$1 does not exist: nothing to stop"
	exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root"
DIR=$(cd "$1" && pwd -P)
[ "$DIR" != / ] || die "refusing DIR=/"
# Only ever delete what dockerd-up.sh made.
[ -e "$DIR/.np-dockerd" ] || die "$DIR has no .np-dockerd marker: not made by dockerd-up.sh, not touching it"
SOCK=$DIR/docker.sock

alive() { # pid: running and not a zombie (PID 1 here reaps orphans late)
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}
# The pid from a pid file, if that process is still one of ours.
our_pid() {
	local f=$1 pid
	[ -s "$f" ] || return 0
	pid=$(tr -dc 0-9 <"$f")
	alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" && echo "$pid"
	return 0
}
stop_pid() { # name pid grace-seconds
	local name=$1 pid=$2
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq $(($3 * 20))); do
		alive "$pid" || { say "$name stopped"; return 0; }
		sleep 0.05
	done
	say "$name (pid $pid) ignored SIGTERM for $3 s: killing"
	kill -KILL "$pid" 2>/dev/null || true
}

if docker -H "unix://$SOCK" version >/dev/null 2>&1; then
	ids=$(docker -H "unix://$SOCK" ps -aq --no-trunc)
	if [ -n "$ids" ]; then
		# shellcheck disable=SC2086 # one ID per word
		docker -H "unix://$SOCK" rm -f -v $ids >/dev/null
		say "removed $(echo "$ids" | wc -w) container(s)"
	fi
fi
stop_pid dockerd "$(our_pid "$DIR/docker.pid")" 30
stop_pid containerd "$(our_pid "$DIR/containerd.pid")" 15

# containerd 1.6 shims listen on /run/containerd/s/<sha256 of
# "<containerd address>/<namespace>/<container id>">, whatever the config
# says; a shim killed with SIGKILL leaves its socket there. Note the names
# now, while the task state they derive from still exists.
shim_socks=()
for t in "$DIR"/containerd/state/io.containerd.runtime.v2.task/*/*; do
	[ -e "$t" ] || continue
	ns=$(basename "$(dirname "$t")")
	shim_socks+=("/run/containerd/s/$(printf '%s' "$DIR/containerd/containerd.sock/$ns/$(basename "$t")" | sha256sum | cut -c1-64)")
done

# Whatever survived a crash: container processes (in our cgroups; they
# outlive their shim), then shims and daemons naming DIR in their arguments.
CGROUP=$(cat "$DIR/cgroup-parent" 2>/dev/null || true)
leftovers() {
	local p
	if [ -n "$CGROUP" ]; then
		find /sys/fs/cgroup -maxdepth 8 -path "*/$CGROUP/*" -name cgroup.procs -exec cat {} + 2>/dev/null || true
	fi
	for p in /proc/[0-9]*; do
		case "$(cat "$p/comm" 2>/dev/null)" in
		containerd* | dockerd | docker-proxy | runc | docker) ;;
		*) continue ;;
		esac
		tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$DIR/" && echo "${p#/proc/}"
	done
	return 0
}
for _ in $(seq 100); do
	pids=$(leftovers | sort -u | grep -vx "$$" || true)
	[ -n "$pids" ] || break
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	sleep 0.1
done
[ -z "$(leftovers)" ] || die "processes of $DIR survive SIGKILL: $(leftovers | tr '\n' ' ')"

[ ${#shim_socks[@]} -eq 0 ] || rm -f "${shim_socks[@]}"

# Mount points (field 5 of mountinfo) at or under DIR, deepest first; a
# stacked mount shows up again in the next round.
mounts() { awk -v d="$DIR" '$5 == d || index($5, d "/") == 1 { print length($5), $5 }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-; }
for _ in $(seq 10); do
	m=$(mounts)
	[ -n "$m" ] || break
	while IFS= read -r mp; do
		umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
	done <<<"$m"
done
[ -z "$(mounts)" ] || die "mounts left under $DIR: $(mounts | tr '\n' ' ')"

if [ -n "$CGROUP" ]; then
	# -depth: children before parents (a cgroup with children cannot go).
	find /sys/fs/cgroup -maxdepth 8 -depth -type d \( -name "$CGROUP" -o -path "*/$CGROUP/*" \) \
		-exec rmdir {} \; 2>/dev/null || true
fi
rm -rf "$DIR"
say "removed $DIR"
