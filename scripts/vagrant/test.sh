#!/usr/bin/env bash
# test.sh — make vagrant-test: the Vagrantfile's cluster on this machine with
# the docker provider, proven by traffic between its nodes, then destroyed.
#
# A private dockerd runs inside a network namespace of this test's own, so
# every bridge and address Vagrant's private networks make lives there and
# nothing routes towards the machine's interfaces. The nodes (3, or
# NETPLUGIN_NODES) come from the image scripts/vagrant/node-image.sh builds
# (cached under NP_VAGRANT_CACHE), the binaries from `make build`. Checks:
# `vagrant validate` for every provider; the nodes up; the etcd cluster
# healthy over TLS and closed without a client certificate; every agent
# registered and healthy; an OVS VXLAN network with an endpoint on every node,
# each pinging every other; two tenants with one subnet kept apart (each first
# proven to work on its own); Docker inside the nodes (netplugin network and
# IPAM driver) across two nodes; no echo lost at 20 ms to a node whose agent
# restarts (SIGTERM, then SIGKILL); node2 reloaded, rejoining; the OVS
# networks deleted leaving nothing behind; the same mesh and tenant checks for
# linuxbridge VXLAN networks; `vagrant destroy -f` leaving
# no container, network, volume or image layer but the node image; the private
# dockerd and namespace gone at the end. Everything is removed on failure or
# Ctrl-C too, unless NP_VAGRANT_KEEP=1 (then it says how to remove it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
# Debian's docker CLI and Vagrant's commands before anything else on PATH.
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH:/usr/local/go/bin"
STEP=vagrant-test
# shellcheck source=../provision/lib.sh
source "$repo/scripts/provision/lib.sh"
need_root

NODES=${NETPLUGIN_NODES:-3}
[[ $NODES =~ ^[0-9]+$ ]] && [ "$NODES" -ge 2 ] || die "NETPLUGIN_NODES=$NODES: at least 2"

T0=$(date +%s)
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# --- what the test needs --------------------------------------------------------
need=()
command -v vagrant >/dev/null || need+=(vagrant)
command -v debootstrap >/dev/null || need+=(debootstrap)
# vagrant validate for libvirt needs the provider plugin, not libvirt itself.
[ "$(dpkg-query -W -f='${Status}' vagrant-libvirt 2>/dev/null || true)" = "install ok installed" ] || need+=(vagrant-libvirt)
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	{ DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}"; } >&2 ||
		die "apt-get install ${need[*]} failed"
fi
scripts/install-deps.sh
t=$(date +%s%N)
make --no-print-directory build >&2
T_BUILD=$(ms_since "$t")

# --- the private Docker daemon, in a namespace of its own -----------------------
ID=npv$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
NS=$ID
W=/tmp/$ID
DOCKER=$W/docker
export DOCKER_HOST=unix://$DOCKER/docker.sock
export VAGRANT_HOME=$W/vagrant.d VAGRANT_DOTFILE_PATH=$W/dot VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_DEFAULT_PROVIDER=docker NETPLUGIN_VAGRANT_PREFIX=$ID NETPLUGIN_NODES=$NODES
unset VAGRANT_CWD VAGRANT_VAGRANTFILE
docker() { /usr/bin/docker "$@"; }
on() { # on NODE CMD...: CMD inside node NODE
	local n=$1
	shift
	docker exec "$ID-$n" "$@"
}
# onl NODE SCRIPT: SCRIPT in a login shell of NODE (etcdctl, ovs-vsctl with the node's settings).
onl() { docker exec "$ID-$1" bash -lc "$2"; }
nodes() { seq -f 'node%g' 1 "$NODES"; }

teardown() {
	if [ -e "$W/.up" ] && docker version >/dev/null 2>&1; then
		vagrant destroy -f >"$W/destroy-cleanup.log" 2>&1 || say "vagrant destroy failed (log $W/destroy-cleanup.log)"
	fi
	if [ -d "$DOCKER" ]; then scripts/dockerd-down.sh "$DOCKER" >/dev/null 2>&1 || say "dockerd-down $DOCKER failed"; fi
	if [ -e "/run/netns/$NS" ]; then ip netns del "$NS" || say "could not delete namespace $NS"; fi
	rm -rf "$W"
}
on_exit() {
	local rc=$?
	trap '' INT TERM
	[ -n "${DONE:-}" ] && return 0
	if [ -n "${NP_VAGRANT_KEEP:-}" ]; then
		say "NP_VAGRANT_KEEP: left up. DOCKER_HOST=$DOCKER_HOST VAGRANT_HOME=$VAGRANT_HOME VAGRANT_DOTFILE_PATH=$VAGRANT_DOTFILE_PATH NETPLUGIN_VAGRANT_PREFIX=$ID vagrant destroy -f; scripts/dockerd-down.sh $DOCKER; ip netns del $NS"
		return 0
	fi
	say "cleaning up ($ID)"
	teardown
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

mkdir -p "$W"
ip netns add "$NS"
ip -n "$NS" link set lo up
# nsenter, not ip netns exec: that one mounts a fresh /sys without cgroups.
NP_DOCKERD_BRIDGE=1 nsenter --net="/run/netns/$NS" scripts/dockerd-up.sh "$DOCKER" >/dev/null
# Nothing is routed between the networks in there either.
ip netns exec "$NS" sysctl -qw net.ipv4.ip_forward=0

# --- checks ---------------------------------------------------------------------
passed=0 failed=0
results=()
# run_check FN ARGS...: FN in a subshell with errexit, its output shown
# indented; returns FN's status. Callers run it with errexit off, and not as
# a condition (errexit would not apply inside).
run_check() {
	local rc
	(
		set -e
		"$@"
	) >"$W/check.out" 2>&1
	rc=$?
	sed 's/^/    /' "$W/check.out"
	return $rc
}
# check NAME FN ARGS...
check() {
	local name=$1 t
	shift
	t=$(date +%s%N)
	local rc=0
	set +e
	run_check "$@"
	rc=$?
	set -e
	if [ $rc -eq 0 ]; then
		passed=$((passed + 1))
		results+=("PASS $name ($(ms_since "$t") ms)")
		echo "PASS $name ($(ms_since "$t") ms)"
	else
		failed=$((failed + 1))
		results+=("FAIL $name")
		echo "FAIL $name"
	fi
}
# times: what the checks measured (they run in subshells).
timed() { echo "$1 $2" >>"$W/times"; }
time_of() { awk -v k="$1" '$1 == k {print $2}' "$W/times" 2>/dev/null | tail -n 1; }
fail() {
	echo "$*" >&2
	return 1
}

# wait_for SECONDS WHAT CMD...: CMD until it succeeds, for at most SECONDS
# of wall-clock time (each try is a docker exec).
wait_for() {
	local secs=$1 what=$2 end
	shift 2
	end=$(($(date +%s) + secs))
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$end" ] || fail "$what: not within $secs s"
		sleep 0.2
	done
}

# ep NODE TENANT NET NAME IP: an endpoint in a namespace NAME of its own on NODE.
ep() {
	on "$1" ip netns add "$4"
	on "$1" netdcli -oper create -construct endpoint -tenant "$2" -net-id "$3" -ip-address "$5" -host "$1" -netns "$4" "$4" >/dev/null
}
# (Output captured before grep: with pipefail, grep -q closing the pipe early
# would fail the writer.)
ep_up() {
	local out
	out=$(on "$1" netdcli -oper get -construct endpoint -tenant "$2" "$3") && grep -q "up@$1" <<<"$out"
}
# ping_ok NODE NS IP: three echoes, all answered (after a first one within
# 20 s: ARP on both sides, the tunnel's neighbour). ping_none: three
# echoes, none answered.
ping1() { on "$1" ip netns exec "$2" ping -c 1 -W 1 "$3" >/dev/null 2>&1; }
ping_ok() {
	wait_for 20 "$2@$1 pings $3" ping1 "$@"
	local out
	# -W 3: on a loaded machine an answer may be late, which is not a loss.
	out=$(on "$1" ip netns exec "$2" ping -c 3 -i 0.2 -W 3 "$3" 2>&1 || true)
	grep -q ' 3 received' <<<"$out" || fail "$2@$1 -> $3: echoes lost: $out"
}
ping_none() {
	local out
	# -W 3: on a loaded machine an answer may be late, which is not a loss.
	out=$(on "$1" ip netns exec "$2" ping -c 3 -i 0.2 -W 3 "$3" 2>&1 || true)
	grep -q ' 0 received' <<<"$out" || fail "$2@$1 reaches $3, which must be isolated from it: $out"
}

t_validate() {
	local p out
	# VirtualBox cannot run here; its provider only asks VBoxManage for a
	# version before validating its settings, so a stub answers that (and
	# fails anything else, which validate never asks).
	mkdir -p "$W/vbox"
	printf '#!/bin/sh\n[ "$1" = --version ] && { echo 7.0.14r161095; exit 0; }\necho "VBoxManage stub: $*" >&2; exit 1\n' >"$W/vbox/VBoxManage"
	chmod 755 "$W/vbox/VBoxManage"
	for p in docker libvirt virtualbox; do
		out=$(PATH="$W/vbox:$PATH" VAGRANT_DEFAULT_PROVIDER=$p vagrant validate 2>&1) || fail "vagrant validate ($p): $out"
		echo "$p: $out"
	done
}

t_up() {
	touch "$W/.up"
	local t
	t=$(date +%s%N)
	# One node after the other, as VirtualBox and libvirt bring them up: the
	# first etcd member has no quorum alone, so its agent starts later, in
	# the background, and the last node waits for every agent.
	vagrant up --provider docker --no-parallel >"$W/up.log" 2>&1 || {
		tail -n 30 "$W/up.log"
		fail "vagrant up failed (log above)"
	}
	timed up "$(ms_since "$t")"
	echo "vagrant up (--no-parallel): $(time_of up) ms"
	[ "$(time_of up)" -lt 240000 ] || fail "vagrant up took $(time_of up) ms (over 4 minutes)"
	local n st
	for n in $(nodes); do
		st=$(docker inspect -f '{{.State.Running}}' "$ID-$n" 2>&1) || fail "$ID-$n: $st"
		[ "$st" = true ] || fail "$ID-$n not running"
	done
	st=$(on node1 cat /var/lib/netplugin/agent-start.log) || fail "node1's agent did not take the background start"
	echo "node1 (no quorum when provisioned): ${st}"
}

t_etcd() {
	local out n
	out=$(onl node1 'etcdctl endpoint health --cluster' 2>&1) || fail "etcd cluster not healthy: $out"
	echo "$out"
	[ "$(grep -c '^https://.* is healthy' <<<"$out")" -eq "$NODES" ] || fail "expected $NODES healthy https members"
	# Closed without a client certificate, and to plain HTTP.
	out=$(onl node1 'env -u ETCDCTL_CERT -u ETCDCTL_KEY etcdctl --dial-timeout 2s --command-timeout 3s get /netplugin/v1/hosts/node1' 2>&1) &&
		fail "etcd answered a client without a certificate: $out"
	echo "no client certificate: refused ($(tail -n 1 <<<"$out" | cut -c1-120))"
	onl node1 'u=${NETPLUGIN_ETCD%%,*}; curl -sf --max-time 3 "http://${u#https://}/version"' >/dev/null 2>&1 &&
		fail "etcd answered plain HTTP"
	echo "plain HTTP: refused"
	for n in $(nodes); do
		out=$(on "$n" /netplugin/scripts/vagrant/node.sh status)
		grep -qx 'etcd up' <<<"$out" || fail "$n: etcd not running: $out"
	done
}

t_agents() {
	local have n
	have=$(onl node1 'etcdctl get --prefix --keys-only /netplugin/v1/hosts/' | grep .) || fail "no host registered"
	for n in $(nodes); do
		grep -qx "/netplugin/v1/hosts/$n" <<<"$have" || fail "$n's agent is not registered: $have"
		on "$n" curl -sf --max-time 2 http://127.0.0.1:9090/healthz >/dev/null || fail "$n: /healthz not OK"
	done
	echo "registered and healthy: $(tr '\n' ' ' <<<"$have")"
	# What a user sees.
	have=$(on node1 netdcli -oper get -construct host) || fail "netdcli get host: $have"
	echo "$have"
	for n in $(nodes); do grep -qw "$n" <<<"$have" || fail "netdcli does not list $n"; done
}

# mesh NET_PREFIX DRIVER TENANT NETWORK SUBNET HOSTBYTE: a VXLAN network with
# an endpoint on every node (NET_PREFIX<node number>, address SUBNET.HOSTBYTE<n>),
# every endpoint pinging every other.
mesh() {
	local p=$1 driver=$2 tenant=$3 net=$4 subnet=$5 hb=$6 i j
	on node1 netdcli -oper create -construct tenant "$tenant" 2>/dev/null || true
	on node1 netdcli -oper create -construct network -tenant "$tenant" -driver "$driver" -tag-type vxlan \
		-subnet "$subnet.0/24" -gw "$subnet.254" "$net" >/dev/null
	for i in $(seq "$NODES"); do ep "node$i" "$tenant" "$net" "$p$i" "$subnet.$hb$i"; done
	for i in $(seq "$NODES"); do wait_for 30 "$p$i up on node$i" ep_up "node$i" "$tenant" "$p$i"; done
	# "up" is the endpoint's own host; the other hosts program their way to
	# it moments later, and while they do an echo between two others may be
	# lost: every pair answers once first, then every pair answers every echo.
	for i in $(seq "$NODES"); do
		for j in $(seq "$NODES"); do
			[ "$i" = "$j" ] || wait_for 20 "$p$i@node$i pings $subnet.$hb$j" ping1 "node$i" "$p$i" "$subnet.$hb$j" ||
				{ underlay_state "node$i" "node$j" >&2; return 1; }
		done
	done
	for i in $(seq "$NODES"); do
		for j in $(seq "$NODES"); do
			[ "$i" = "$j" ] || ping_ok "node$i" "$p$i" "$subnet.$hb$j"
		done
	done
	echo "$driver VXLAN $tenant/$net: $NODES endpoints, each pings every other"
}

# underlay_state NODE...: what each node's OVS knows of the underlay, for a
# failure to say why a tunnel carries nothing.
underlay_state() {
	local n
	for n in "$@"; do
		echo "--- $n: tunnel neighbours, tunnel ports, VTEP's ARP settings"
		onl "$n" 'ovs-appctl tnl/neigh/show; ovs-vsctl list-ports np-tun; ip -br link show br-phy;
			p=$(cat /var/lib/netplugin/vtep-port); ip -br link show "$p"; sysctl net.ipv4.conf."$p".arp_ignore net.ipv4.conf.all.rp_filter;
			ovs-appctl dpctl/dump-flows | grep "dst=4789" | sed "s/, packets.*actions:/ -> /"; nstat -az UdpNoPorts | tail -n 1' 2>&1 | sed 's/^/    /'
	done
}

# apart P1 P2 SUBNET HB1 HB2: the two tenants' meshes (already proven each on
# its own) do not reach each other, on the same node or across nodes.
apart() {
	local p1=$1 p2=$2 subnet=$3 hb1=$4 hb2=$5 j
	for j in $(seq "$NODES"); do
		ping_none node1 "${p1}1" "$subnet.$hb2$j"
		ping_none node1 "${p2}1" "$subnet.$hb1$j"
	done
	echo "tenants apart: ${p1}1 reaches none of $subnet.${hb2}x, ${p2}1 none of $subnet.${hb1}x"
}

t_ovs_mesh() { mesh oa ovs ta ov 10.61.0 1; }
t_ovs_tenants() {
	mesh ob ovs tb ov 10.61.0 2
	apart oa ob 10.61.0 1 2
}

t_docker() {
	local n ip out
	for n in node1 "node$NODES"; do
		on "$n" docker network create -d netplugin --ipam-driver netplugin --subnet 10.63.0.0/24 --gateway 10.63.0.254 \
			-o tenant=tc -o network=web -o driver=ovs -o tag-type=vxlan tc-web >/dev/null
	done
	on node1 docker run -d --name c1 --network tc-web netplugin-test/busybox sleep 1d >/dev/null
	on "node$NODES" docker run -d --name c2 --network tc-web netplugin-test/busybox sleep 1d >/dev/null
	ip=$(on "node$NODES" docker inspect -f '{{(index .NetworkSettings.Networks "tc-web").IPAddress}}' c2)
	[ -n "$ip" ] || fail "c2 has no address on tc-web"
	wait_for 20 "c1@node1 pings c2@node$NODES ($ip)" on node1 docker exec c1 ping -c 1 -W 1 "$ip"
	out=$(on node1 docker exec c1 ping -c 3 -W 3 "$ip" 2>&1 || true)
	grep -q ' 3 packets received' <<<"$out" || fail "c1 -> c2: echoes lost: $out"
	echo "docker run on node1 and node$NODES, network tc-web (netplugin driver and IPAM, OVS VXLAN): c1 pings c2 ($ip)"
	for n in node1 "node$NODES"; do
		on "$n" sh -c 'docker rm -f $(docker ps -aq) >/dev/null && docker network rm tc-web >/dev/null'
	done
}

# The nodes' echoes to node2 while its agent restarts: none lost.
t_restart() {
	local kill=${1:-} pids=() i f
	local count=600 # 12 s at 20 ms
	for i in 1 3; do
		[ "$i" -le "$NODES" ] || continue
		on "node$i" ip netns exec "oa$i" ping -n -q -i 0.02 -c "$count" -W 1 10.61.0.12 >"$W/ping-$i" 2>&1 &
		pids+=($!)
	done
	sleep 2
	local t
	t=$(date +%s%N)
	on node2 /netplugin/scripts/vagrant/node.sh restart-agent ${kill:+"$kill"}
	local dt
	dt=$(ms_since "$t")
	echo "node2's agent restarted${kill:+ after SIGKILL} and healthy in $dt ms"
	[ "$dt" -lt 9000 ] || fail "the restart took $dt ms: longer than the pings cover"
	local bad=
	for i in "${!pids[@]}"; do wait "${pids[$i]}" || true; done
	for f in "$W"/ping-*; do
		local m
		m=$(grep -o '[0-9]* packets transmitted, [0-9]* received' "$f") || fail "no ping statistics: $(cat "$f")"
		echo "from node${f##*-}: $m"
		read -r sent _ _ recv _ <<<"$m"
		[ "$sent" -eq "$count" ] && [ "$recv" -eq "$sent" ] || bad=1
	done
	rm -f "$W"/ping-*
	[ -z "$bad" ] || fail "echoes lost while node2's agent restarted"
}

# node_inventory NODE: the node's OVS bridges with their ports, and its links
# by name: equal before and after means nothing was left behind.
node_inventory() {
	onl "$1" 'for b in $(ovs-vsctl list-br | sort); do echo "ovs $b: $(ovs-vsctl list-ports "$b" | sort | tr "\n" " ")"; done
		ip -o link show | awk "{sub(/@.*/, \"\", \$2); print \"link \" \$2}" | sort'
}
t_baseline() {
	local n
	for n in $(nodes); do node_inventory "$n" >"$W/node-$n.before"; done
	cat "$W/node-node1.before"
}
same_inventory() { node_inventory "$1" | diff -q "$W/node-$1.before" - >/dev/null; }

# vagrant reload: node2 restarts (a new network namespace: its links, OVS
# ports and endpoint namespaces are gone), rejoins the etcd cluster as the
# member it was, and its agent plumbs its endpoint again once the endpoint's
# namespace exists again.
t_reload() {
	local t out n
	t=$(date +%s%N)
	vagrant reload node2 >"$W/reload.log" 2>&1 || {
		tail -n 20 "$W/reload.log"
		fail "vagrant reload node2 failed"
	}
	echo "vagrant reload node2: $(ms_since "$t") ms"
	out=$(onl node1 'etcdctl endpoint health --cluster' 2>&1) || fail "etcd cluster not healthy after the reload: $out"
	on node2 sh -c 'ip netns del oa2 2>/dev/null; ip netns del ob2 2>/dev/null; ip netns add oa2 && ip netns add ob2'
	for n in 1 3; do
		[ "$n" -le "$NODES" ] || continue
		ping_ok "node$n" "oa$n" 10.61.0.12
		ping_ok "node$n" "ob$n" 10.61.0.22
	done
	ping_ok node2 oa2 10.61.0.11
	echo "node2 rejoined: etcd healthy, its endpoints plumbed again, reached from the other nodes"
}

# Every endpoint and network deleted: each node as it was before the first.
t_ovs_delete() {
	local t p i n
	for t in ta:oa tb:ob; do
		p=${t#*:}
		for i in $(seq "$NODES"); do
			on "node$i" netdcli -oper delete -construct endpoint -tenant "${t%%:*}" "$p$i" >/dev/null
			on "node$i" ip netns del "$p$i"
		done
		on node1 netdcli -oper delete -construct network -tenant "${t%%:*}" ov >/dev/null
	done
	for n in $(nodes); do
		if ! wait_for 30 "$n back to its OVS bridges, ports and links before the first network" same_inventory "$n"; then
			node_inventory "$n" | diff "$W/node-$n.before" - || true
			return 1
		fi
	done
	echo "endpoints and networks deleted: every node has the OVS bridges, ports and links it had before them"
}

t_lb_mesh() { mesh la linuxbridge ta lbx 10.62.0 1; }
t_lb_tenants() {
	mesh lb linuxbridge tb lbx 10.62.0 2
	apart la lb 10.62.0 1 2
}

# What Docker holds, for the comparison before and after.
inventory() {
	echo "containers: $(docker ps -aq --no-trunc | sort | tr '\n' ' ')"
	echo "networks: $(docker network ls -q --no-trunc | sort | tr '\n' ' ')"
	echo "volumes: $(docker volume ls -q | sort | tr '\n' ' ')"
	echo "images: $(docker image ls -aq --no-trunc | sort | tr '\n' ' ')"
	echo "layers: $(find "$DOCKER/data/overlay2" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
}

t_destroy() {
	local t
	t=$(date +%s%N)
	vagrant destroy -f >"$W/destroy.log" 2>&1 || {
		tail -n 20 "$W/destroy.log"
		fail "vagrant destroy -f failed"
	}
	timed destroy "$(ms_since "$t")"
	rm -f "$W/.up"
	inventory >"$W/inventory.after"
	diff "$W/inventory.before" "$W/inventory.after" || fail "Docker holds more or less than before vagrant up (diff above)"
	[ ! -e "$VAGRANT_DOTFILE_PATH/netplugin/pki/node1" ] || fail "certificates of node1 left in $VAGRANT_DOTFILE_PATH"
	echo "vagrant destroy -f: $(time_of destroy) ms; Docker holds what it held before: $(grep -c . "$W/inventory.after") lists equal ($(grep layers "$W/inventory.after"))"
}

t_gone() {
	scripts/dockerd-down.sh "$DOCKER" >/dev/null
	ip netns del "$NS"
	[ ! -e "/run/netns/$NS" ] || fail "namespace $NS left"
	[ ! -e "$DOCKER" ] || fail "$DOCKER left"
	local p
	for p in /proc/[0-9]*; do
		if grep -qF -- "$W/" "$p/cmdline" 2>/dev/null; then
			fail "process ${p#/proc/} of the test left: $(tr '\0' ' ' <"$p/cmdline")"
		fi
	done
	echo "private dockerd stopped, $DOCKER and namespace $NS removed, no process left"
}

# --- run ---------------------------------------------------------------------------
say "cluster $ID: $NODES nodes, private dockerd in namespace $NS ($W)"
t=$(date +%s%N)
IMAGE=$(scripts/vagrant/node-image.sh)
T_IMAGE=$(ms_since "$t")
say "node image $IMAGE ready in $T_IMAGE ms"
inventory >"$W/inventory.before"

check "vagrant validate: docker, libvirt, virtualbox" t_validate
check "vagrant up --provider docker: $NODES nodes" t_up
if [ $failed -eq 0 ]; then
	check "etcd: $NODES members healthy over TLS, closed without a client certificate" t_etcd
	check "every agent registered and healthy" t_agents
	check "inventory of the nodes (OVS bridges and ports, links)" t_baseline
	check "OVS VXLAN network across the nodes: every endpoint pings every other" t_ovs_mesh
	check "OVS VXLAN: two tenants with one subnet stay apart" t_ovs_tenants
	check "Docker in the nodes: containers on two nodes ping over a netplugin network" t_docker
	check "node2's agent restarted (SIGTERM): no echo lost at 20 ms" t_restart
	check "node2's agent restarted (SIGKILL): no echo lost at 20 ms" t_restart --kill
	check "vagrant reload node2: it rejoins, its endpoints come back" t_reload
	check "OVS endpoints and networks deleted: nothing left on the nodes" t_ovs_delete
	check "linuxbridge VXLAN network across the nodes: every endpoint pings every other" t_lb_mesh
	check "linuxbridge VXLAN: two tenants with one subnet stay apart" t_lb_tenants
fi
check "vagrant destroy -f leaves Docker as it was (node image cached)" t_destroy
check "private dockerd and namespace gone" t_gone
times="build ${T_BUILD} ms, node image ${T_IMAGE} ms, vagrant up $(time_of up) ms, vagrant destroy $(time_of destroy) ms"
DONE=1
rm -rf "$W"

echo
printf '%s\n' "${results[@]}"
echo "times: $times, whole run $(($(date +%s) - T0)) s"
echo "vagrant-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
