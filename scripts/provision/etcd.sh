#!/usr/bin/env bash
# etcd.sh — one member of a static etcd cluster, TLS on client and peer
# listeners, client certificates required on both (Debian's etcd-server).
#
#   etcd.sh start --name NAME --ip IP --cluster NAME=https://IP:2380,... --tls DIR --data-dir DIR
#                 [--state new|existing] [--token TOKEN] [--log FILE] [--pidfile FILE]
#   etcd.sh stop  --pidfile FILE [--kill]
#   etcd.sh health --ip IP --tls DIR         every member of the cluster IP belongs to
#
# --tls DIR holds what `tls.sh host --name NAME` made: ca.pem, server.pem/.key
# (this member's listeners and its peer connections) and client.pem/.key
# (for `health`). The member listens on IP:2379 (clients) and IP:2380 (peers)
# and on 127.0.0.1:2379. Data, log and pid file default to
# /var/lib/etcd-NAME, DATA-DIR/etcd.log and DATA-DIR/etcd.pid.
# Environment: ETCD_HEARTBEAT_MS (default 100), ETCD_ELECTION_MS (default 1000).
# start returns once the process runs (a new cluster has no quorum until its
# other members start); use `health` to wait for the cluster. On a host with
# systemd, the same flags go into ETCD_* variables of /etc/default/etcd instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
name= ip= cluster= tls= data= state=new token=netplugin log= pidfile= kill=
while [ $# -gt 0 ]; do
	case $1 in
	--name) name=${2:?}; shift 2 ;;
	--ip) ip=${2:?}; shift 2 ;;
	--cluster) cluster=${2:?}; shift 2 ;;
	--tls) tls=${2:?}; shift 2 ;;
	--data-dir) data=${2:?}; shift 2 ;;
	--state) state=${2:?}; shift 2 ;;
	--token) token=${2:?}; shift 2 ;;
	--log) log=${2:?}; shift 2 ;;
	--pidfile) pidfile=${2:?}; shift 2 ;;
	--kill) kill=--kill; shift ;;
	*) usage ;;
	esac
done

start() {
	need_root
	need_cmd etcd etcd-server
	[ -n "$name" ] && [ -n "$ip" ] && [ -n "$cluster" ] && [ -n "$tls" ] || usage
	case $state in new | existing) ;; *) die "--state $state: new or existing" ;; esac
	local f
	for f in ca.pem server.pem server.key; do
		[ -s "$tls/$f" ] || die "$tls/$f missing (scripts/provision/tls.sh host --name $name ...)"
	done
	data=${data:-/var/lib/etcd-$name}
	log=${log:-$data.log}
	pidfile=${pidfile:-$data.pid}
	if [ -n "$(pid_of "$pidfile" "$data")" ]; then
		say "$name already running (pid $(cat "$pidfile"))"
		return 0
	fi
	mkdir -p "$data"
	chmod 700 "$data"
	# setsid: its own session, so that the terminal's ^C or hang-up never reaches it.
	setsid etcd --name "$name" --data-dir "$data" \
		--listen-client-urls "https://$ip:2379,https://127.0.0.1:2379" --advertise-client-urls "https://$ip:2379" \
		--listen-peer-urls "https://$ip:2380" --initial-advertise-peer-urls "https://$ip:2380" \
		--initial-cluster "$cluster" --initial-cluster-state "$state" --initial-cluster-token "$token" \
		--client-cert-auth --trusted-ca-file "$tls/ca.pem" --cert-file "$tls/server.pem" --key-file "$tls/server.key" \
		--peer-client-cert-auth --peer-trusted-ca-file "$tls/ca.pem" \
		--peer-cert-file "$tls/server.pem" --peer-key-file "$tls/server.key" \
		--heartbeat-interval "${ETCD_HEARTBEAT_MS:-100}" --election-timeout "${ETCD_ELECTION_MS:-1000}" \
		--logger zap --log-outputs stderr \
		</dev/null >>"$log" 2>&1 &
	echo $! >"$pidfile"
	sleep 0.1
	alive "$!" || {
		log_tail "$log"
		die "etcd $name exited at once"
	}
	say "$name started (pid $!, log $log)"
}

stop() {
	[ -n "$pidfile" ] || usage
	stop_pid etcd "$(pid_of "$pidfile" etcd)" 15 $kill
	rm -f "$pidfile"
}

health() {
	need_cmd etcdctl etcd-client
	[ -n "$ip" ] && [ -n "$tls" ] || usage
	# Flags only: etcdctl refuses a flag that an ETCDCTL_* variable also sets.
	env -u ETCDCTL_ENDPOINTS -u ETCDCTL_CACERT -u ETCDCTL_CERT -u ETCDCTL_KEY ETCDCTL_API=3 etcdctl --endpoints "https://$ip:2379" --cacert "$tls/ca.pem" --cert "$tls/client.pem" \
		--key "$tls/client.key" --dial-timeout 2s --command-timeout 3s endpoint health --cluster
}

case $cmd in
start) start ;;
stop) stop ;;
health) health ;;
*) usage ;;
esac
