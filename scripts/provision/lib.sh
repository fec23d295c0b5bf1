# lib.sh — helpers shared by the provisioning steps in this directory; sourced,
# never run. Each step is a script a real host runs as it is (the namespace
# hosts of scripts/cluster run the very same scripts inside their namespaces).
# shellcheck shell=bash

export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The step's name, for messages: "etcd: ...".
STEP=${STEP:-$(basename "$0" .sh)}

say() { echo "$STEP: $*" >&2; }
die() {
	say "error: $*"
	exit 1
}
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }
need_cmd() { # cmd package
	command -v "$1" >/dev/null 2>&1 || die "$1 not found (apt-get install $2, or scripts/provision/packages.sh)"
}

# alive PID: running and not a zombie (an init that reaps late keeps zombies).
alive() {
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

dead() { ! alive "$1"; }

# pid_of PIDFILE MARK: the pid in PIDFILE if that process is alive and its
# command line contains MARK, so that a pid reused by another program after a
# crash is never signalled.
pid_of() {
	local pid
	[ -s "$1" ] || return 0
	pid=$(tr -dc 0-9 <"$1")
	if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"; then
		echo "$pid"
	fi
	return 0
}

# stop_pid NAME PID GRACE [--kill]: SIGTERM (or SIGKILL with --kill), then
# SIGKILL once GRACE seconds have passed; returns when the process is gone.
stop_pid() {
	local name=$1 pid=$2 grace=$3 sig=TERM
	[ "${4:-}" = --kill ] && sig=KILL
	[ -n "$pid" ] || return 0
	kill -"$sig" "$pid" 2>/dev/null || true
	local i
	for ((i = 0; i < grace * 20; i++)); do
		alive "$pid" || {
			say "$name stopped (SIG$sig)"
			return 0
		}
		sleep 0.05
	done
	say "$name (pid $pid) still running after $grace s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		alive "$pid" || return 0
		sleep 0.05
	done
	die "$name (pid $pid) survives SIGKILL"
}

# wait_until SECONDS CMD...: poll CMD every 50 ms until it succeeds, for at
# most SECONDS of wall-clock time (a CMD that itself waits, such as etcdctl
# with its timeouts, must not stretch the deadline).
wait_until() {
	local end=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.05
	done
}

# log_tail FILE: the last lines of a log, for an error message.
log_tail() {
	[ -s "$1" ] || return 0
	say "last lines of $1:"
	tail -n 20 "$1" | sed 's/^/    /' >&2
}
