#!/usr/bin/env bash
# demo.sh — `make demo`: the fleet on one machine. scripts/cluster brings up
# three hosts (each a network namespace with an etcd member, OVS, dockerd and a
# netplugin agent); Docker networks created on each host are one network
# across them, containers on h1 and h3 ping each other, and a second tenant
# with the very same subnet stays apart. Everything is removed at the end,
# also on failure or Ctrl-C. KEEP=1 leaves the cluster up (scripts/cluster down
# removes it; NP_CLUSTER_DIR names it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"

NP_CLUSTER_DIR=${NP_CLUSTER_DIR:-$(mktemp -d /tmp/np-demo-XXXXXX)}
export NP_CLUSTER_DIR
C=scripts/cluster
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() {
	printf '$ %s\n' "$*"
	"$@"
}
on() { # on HOST CMD...: as a user on that host would type it
	local h=$1
	shift
	printf '%s$ %s\n' "$h" "$*"
	"$C" exec "$h" -- "$@"
}
quiet() { "$C" exec "$@" >/dev/null; }
cleanup() {
	local rc=$?
	set +e
	# A second Ctrl-C must not stop the cleaning half-way (down inherits this).
	trap '' INT TERM
	if [ -n "${KEEP:-}" ] && [ $rc -eq 0 ]; then
		echo "KEEP: the cluster stays up in $NP_CLUSTER_DIR; NP_CLUSTER_DIR=$NP_CLUSTER_DIR scripts/cluster down removes it"
		return
	fi
	step "cleaning up"
	"$C" down
	[ $rc -eq 0 ] || echo "demo failed (exit $rc)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "three hosts: each a namespace with an etcd member (TLS), OVS, dockerd and a netplugin agent"
run "$C" up -n 3

step "one Docker network across the hosts (driver and IPAM: netplugin, tenant blue, VXLAN)"
for h in h1 h2 h3; do
	on "$h" docker network create -d netplugin --ipam-driver netplugin --subnet 10.50.0.0/24 \
		-o tenant=blue -o network=web -o tag-type=vxlan blue-web >/dev/null
done
# Addresses of our choosing, so that tenant red below can use others in the same subnet.
on h1 docker run -d --name web1 --network blue-web --ip 10.50.0.11 netplugin-test/busybox sleep 1d >/dev/null
on h3 docker run -d --name web3 --network blue-web --ip 10.50.0.13 netplugin-test/busybox sleep 1d >/dev/null
ip_of() { "$C" exec "$1" -- docker inspect -f "{{(index .NetworkSettings.Networks \"$3\").IPAddress}}" "$2"; }
web3=$(ip_of h3 web3 blue-web)
on h1 docker exec web1 ip -4 addr show eth0

step "traffic: web1 on h1 -> web3 on h3 ($web3), through a VXLAN tunnel"
for _ in $(seq 20); do quiet h1 docker exec web1 ping -c 1 -W 1 "$web3" && break; done
on h1 docker exec web1 ping -c 3 -W 1 "$web3"

step "tenant red: the same subnet, another VNI"
for h in h1 h3; do
	on "$h" docker network create -d netplugin --ipam-driver netplugin --subnet 10.50.0.0/24 \
		-o tenant=red -o network=web -o tag-type=vxlan red-web >/dev/null
done
on h1 docker run -d --name red1 --network red-web --ip 10.50.0.21 netplugin-test/busybox sleep 1d >/dev/null
on h3 docker run -d --name red3 --network red-web --ip 10.50.0.23 netplugin-test/busybox sleep 1d >/dev/null
red3=$(ip_of h3 red3 red-web)
for _ in $(seq 20); do quiet h1 docker exec red1 ping -c 1 -W 1 "$red3" && break; done
on h1 docker exec red1 ping -c 3 -W 1 "$red3"
echo "red1 reaches red3 ($red3). Now red1 -> web3 ($web3), blue's container in the same subnet:"
if "$C" exec h1 -- docker exec red1 ping -c 3 -W 1 "$web3"; then
	echo "demo: tenant red reaches tenant blue" >&2
	exit 1
fi
echo "no answer: the tenants stay apart."

step "what netplugin knows, from any host (here h2, which runs no container)"
on h2 netdcli -oper get -construct network
on h2 netdcli -oper get -construct endpoint -tenant blue
on h2 netdcli -oper get -construct endpoint -tenant red

step "the demo is over"
echo "try it yourself: scripts/cluster up, then scripts/cluster exec h1 -- bash (see scripts/cluster -h)"
