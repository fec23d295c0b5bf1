#!/usr/bin/env bash
# docker.sh — a private dockerd (and its own containerd) in one directory,
# with no network of its own (no docker0, no NAT), and the busybox test image.
#
#   docker.sh start --dir DIR          socket DIR/docker.sock
#   docker.sh stop  --dir DIR [--kill] everything in DIR goes: containers, mounts, DIR
#
# --kill stops dockerd with SIGKILL as a crash would and leaves the rest for
# the next start (which, finding the daemon dead, cleans up and starts afresh).
# This is scripts/dockerd-up.sh / dockerd-down.sh as a provisioning step; a
# real host uses its docker.service instead, and the agent's default plugin
# directory /run/docker/plugins, where that dockerd looks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
dir= kill=
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=${2:?}; shift 2 ;;
	--kill) kill=1; shift ;;
	*) usage ;;
	esac
done
[ -n "$dir" ] || usage

case $cmd in
start) "$here/../dockerd-up.sh" "$dir" >/dev/null ;;
stop)
	if [ -n "$kill" ]; then
		[ -d "$dir" ] || exit 0
		dir=$(cd "$dir" && pwd -P)
		stop_pid dockerd "$(pid_of "$dir/docker.pid" "$dir/")" 1 --kill
	else
		"$here/../dockerd-down.sh" "$dir"
	fi
	;;
*) usage ;;
esac
