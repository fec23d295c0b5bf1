#!/usr/bin/env bash
# agent.sh — the netplugin agent of one host, against an etcd cluster with TLS.
#
#   agent.sh start --host-label L --etcd-endpoints https://IP:2379,... --tls DIR --state-dir DIR
#                  [--vtep-ip IP] [--listen ADDR] [--bin PATH] [-- MORE NETPLUGIN FLAGS...]
#   agent.sh stop  --state-dir DIR [--kill]
#
# --tls DIR holds ca.pem and client.pem/.key (tls.sh host or client: CN = the
# host label). The agent keeps its state in --state-dir: data/ (--data-dir),
# run/ (--run-dir: driver records), netplugin.pid and netplugin.log. start
# returns once /healthz on --listen (default 127.0.0.1:9090) answers, i.e.
# the agent reached etcd and completed a sync (up to AGENT_WAIT seconds,
# default 60). Anything after -- goes to netplugin as it is (drivers, OVS,
# Docker socket and plugin directory...; see netplugin --help).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
	sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
label= endpoints= tls= state= vtep= listen=127.0.0.1:9090 bin= kill= extra=()
while [ $# -gt 0 ]; do
	case $1 in
	--host-label) label=${2:?}; shift 2 ;;
	--etcd-endpoints) endpoints=${2:?}; shift 2 ;;
	--tls) tls=${2:?}; shift 2 ;;
	--state-dir) state=${2:?}; shift 2 ;;
	--vtep-ip) vtep=${2:?}; shift 2 ;;
	--listen) listen=${2:?}; shift 2 ;;
	--bin) bin=${2:?}; shift 2 ;;
	--kill) kill=--kill; shift ;;
	--) shift; extra=("$@"); break ;;
	*) usage ;;
	esac
done
[ -n "$state" ] || usage
state=$(realpath -m -- "$state")
pidfile=$state/netplugin.pid

start() {
	need_root
	[ -n "$label" ] && [ -n "$endpoints" ] && [ -n "$tls" ] || usage
	bin=${bin:-$(command -v netplugin || true)}
	[ -x "$bin" ] || die "netplugin binary not found (make build, then --bin bin/netplugin)"
	local f
	for f in ca.pem client.pem client.key; do
		[ -s "$tls/$f" ] || die "$tls/$f missing (scripts/provision/tls.sh)"
	done
	if [ -n "$(pid_of "$pidfile" "$state/")" ]; then
		say "$label already running (pid $(cat "$pidfile"))"
		return 0
	fi
	mkdir -p "$state/data" "$state/run"
	chmod 700 "$state"
	local log=$state/netplugin.log
	setsid "$bin" --host-label "$label" --etcd-endpoints "$endpoints" \
		--etcd-cacert "$tls/ca.pem" --etcd-cert "$tls/client.pem" --etcd-key "$tls/client.key" \
		--data-dir "$state/data" --run-dir "$state/run" --listen "$listen" \
		${vtep:+--vtep-ip "$vtep"} "${extra[@]}" </dev/null >>"$log" 2>&1 &
	local pid=$!
	echo "$pid" >"$pidfile"
	local i
	for ((i = 0; i < ${AGENT_WAIT:-60} * 10; i++)); do
		alive "$pid" || {
			log_tail "$log"
			die "netplugin exited during start-up"
		}
		if curl -sf --max-time 1 "http://$listen/healthz" >/dev/null 2>&1; then
			say "$label healthy (pid $pid, log $log)"
			return 0
		fi
		sleep 0.1
	done
	log_tail "$log"
	die "netplugin $label not healthy on $listen after ${AGENT_WAIT:-60} s (still running, pid $pid)"
}

stop() {
	# The agent leaves the dataplane programmed when it stops; a restarted
	# agent adopts it. Its grace is short: it has nothing to flush.
	stop_pid netplugin "$(pid_of "$pidfile" "$state/")" 10 $kill
	rm -f "$pidfile"
}

case $cmd in
start) start ;;
stop) stop ;;
*) usage ;;
esac
