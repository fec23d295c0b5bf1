#!/usr/bin/env bash
# demo.sh — `make demo`: one host, end to end. Starts a private dockerd and a
# netplugin agent (embedded etcd), makes a tenant and a network with netdcli,
# runs two containers with --network none, attaches an endpoint to each, shows
# them pinging each other, then detaches, deletes and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"

dir=$(mktemp -d /tmp/np-demo-XXXXXX)
sock=$dir/docker.sock
export NETPLUGIN_ETCD=https://127.0.0.1:23790 # not 2379: leave a real install alone
host=demo-host
np_pid=
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
dk() { docker -H "unix://$sock" "$@"; }
cleanup() {
	set +e
	dk rm -f myContainer1 myContainer2 >/dev/null 2>&1
	[ -n "$np_pid" ] && kill "$np_pid" 2>/dev/null && wait "$np_pid" 2>/dev/null
	scripts/dockerd-down.sh "$dir" >/dev/null 2>&1
	[ -n "${KEEP:-}" ] || rm -rf "$dir" /run/netplugin/*/"$host"
}
trap cleanup EXIT

scripts/install-deps.sh
step "start a private dockerd (no bridge, no NAT) and import the busybox test image"
scripts/dockerd-up.sh "$dir" >/dev/null

step "start the netplugin agent (embedded etcd)"
bin/netplugin --data-dir "$dir/data" --etcd-client-url "$NETPLUGIN_ETCD" --etcd-peer-url https://127.0.0.1:23800 \
	--host-label "$host" --docker-socket "$sock" --listen 127.0.0.1:23791 --resync 2s >"$dir/netplugin.log" 2>&1 &
np_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:23791/healthz >/dev/null 2>&1 && break; sleep 0.1; done

nd() { run bin/netdcli -host "$host" -docker-socket "$sock" "$@"; }
step "desired state, written with netdcli"
nd -oper create -construct tenant tenant1
nd -oper create -construct network -tenant tenant1 -subnet 10.11.1.0/24 -gw 10.11.1.254 tenant1-net1
run dk run -d --network none --name myContainer1 netplugin-test/busybox sleep 1d >/dev/null
run dk run -d --network none --name myContainer2 netplugin-test/busybox sleep 1d >/dev/null
nd -oper create -construct endpoint -net-id tenant1-net1 -tag 12 -ip-address=10.11.1.1 tenant1-net1-ep1
nd -oper create -construct endpoint -net-id tenant1-net1 -ip-address=10.11.1.2 tenant1-net1-ep2
nd -oper attach -construct endpoint -container-id myContainer1 tenant1-net1-ep1
nd -oper attach -construct endpoint -container-id myContainer2 tenant1-net1-ep2

step "the agent plugs them in"
for _ in $(seq 100); do
	[ "$(bin/netdcli -oper get -construct endpoint -tenant tenant1 | grep -c 'up@')" = 2 ] && break
	sleep 0.1
done
nd -oper get -construct endpoint -tenant tenant1
run dk exec myContainer1 ip addr show eth0
step "traffic: myContainer1 -> myContainer2"
run dk exec myContainer1 ping -c 3 -W 1 10.11.1.2

step "detach and delete"
nd -oper detach -construct endpoint -container-id myContainer1 tenant1-net1-ep1
nd -oper delete -construct endpoint tenant1-net1-ep1
nd -oper detach -construct endpoint -container-id myContainer2 tenant1-net1-ep2
nd -oper delete -construct endpoint tenant1-net1-ep2
nd -oper delete -construct network -tenant tenant1 tenant1-net1
if dk exec myContainer1 ping -c 1 -W 1 10.11.1.2 >/dev/null 2>&1; then
	echo "demo: containers still reach each other after detach" >&2
	exit 1
fi
echo "myContainer1 no longer reaches 10.11.1.2 — as it should."
step "demo finished; cleaning up"
