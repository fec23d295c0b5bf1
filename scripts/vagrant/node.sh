#!/usr/bin/env bash
# node.sh — one node of the Vagrant cluster, provisioned from inside it (the
# Vagrantfile runs it: a shell provisioner on VirtualBox and libvirt, docker
# exec on the docker provider), with the steps every netplugin host runs
# (scripts/provision): packages, this node's TLS files, an etcd member of the
# cluster, OVS (userspace datapath, VTEP address on br-phy), dockerd, the agent.
#
#   node.sh up --name NAME --ctl-ip IP --vtep-ip IP --trunk-ip IP --peers NAME=IP,... [--last]
#   node.sh restart-agent [--kill]    the agent stopped (SIGTERM, or SIGKILL) and started again
#   node.sh status
#
# --ctl-ip is the address of the control network (etcd, agents), --vtep-ip
# the one of the VXLAN underlay (moved from its interface to OVS's br-phy),
# --trunk-ip identifies the interface carrying VLAN networks (the OVS uplink).
# --peers names every node with its control address, this one included.
# Nodes are provisioned one after the other or all at once: an etcd member
# alone has no quorum, so an agent that cannot reach its member starts in the
# background as soon as it can (log STATE/agent-start.log); --last (the last
# node) waits for the whole etcd cluster and for every node's agent instead,
# and fails saying which node is missing. Every step is idempotent: `vagrant
# provision` or `vagrant up` again restarts only what is not running.
#
# Files: the repository at /netplugin (bin/ from `make build`, scripts/), this
# node's certificates at /netplugin-pki (scripts/vagrant/pki.sh made them on
# the Vagrant host), state under /var/lib/netplugin, settings for netdcli,
# etcdctl, ovs-vsctl and docker in /etc/netplugin/env (read by
# /etc/profile.d/netplugin.sh and by the netdcli wrapper, so that
# `docker exec NODE netdcli ...` and `vagrant ssh NODE -c 'netdcli ...'`
# need no flags).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
prov=$repo/scripts/provision
STEP=${STEP:-node}
# shellcheck source=../provision/lib.sh
source "$prov/lib.sh"

usage() {
	sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

S=/var/lib/netplugin
PKI=/etc/netplugin/pki
ENVFILE=/etc/netplugin/env
OVS_DIR=$S/ovs
# The docker provider puts an anonymous volume here: overlay2 does not work on
# the node's own overlay root.
DOCKER_DIR=/var/lib/netplugin-docker
SRC_PKI=${NP_NODE_PKI:-/netplugin-pki}

[ $# -ge 1 ] || usage
cmd=$1
shift
name= ctl= vtep= trunk= peers= last= kill=
while [ $# -gt 0 ]; do
	case $1 in
	--name) name=${2:?}; shift 2 ;;
	--ctl-ip) ctl=${2:?}; shift 2 ;;
	--vtep-ip) vtep=${2:?}; shift 2 ;;
	--trunk-ip) trunk=${2:?}; shift 2 ;;
	--peers) peers=${2:?}; shift 2 ;;
	--last) last=1; shift ;;
	--kill) kill=--kill; shift ;;
	*) usage ;;
	esac
done

# --- settings ------------------------------------------------------------------
# peer_names / endpoints / initial_cluster from --peers; this node first in
# the endpoints, so that its clients prefer the local member.
peer_list() { tr ',' '\n' <<<"$peers"; }
endpoints() {
	local out=https://$ctl:2379 p
	for p in $(peer_list); do [ "${p%%=*}" = "$name" ] || out+=,https://${p#*=}:2379; done
	echo "$out"
}
initial_cluster() {
	local out= p
	for p in $(peer_list); do out+=${out:+,}${p%%=*}=https://${p#*=}:2380; done
	echo "$out"
}
# iface_with IP: the interface holding IP, if any.
iface_with() { ip -o -4 addr show | awk -v ip="$1" '{split($4, a, "/")} a[1] == ip {print $2; exit}'; }

check_args() {
	[ -n "$name" ] && [ -n "$ctl" ] && [ -n "$vtep" ] && [ -n "$trunk" ] && [ -n "$peers" ] || usage
	[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "--name \"$name\": letters, digits, . _ - only"
	peer_list | grep -qx -- "$name=$ctl" || die "--peers must name this node: $name=$ctl"
}

# --- steps ---------------------------------------------------------------------
# The docker provider's nodes are containers with every capability but a
# read-only /sys and read-only cgroup mounts (what Docker gives a container
# that is not --privileged): the agent, OVS and the node's own dockerd need
# them writable. /.dockerenv tells a container.
prepare_container() {
	[ -e /.dockerenv ] || return 0
	if grep -qE '^\S+ /sys sysfs ro[, ]' /proc/mounts; then mount -o remount,rw /sys; fi
	local m
	for m in $(awk '$3 == "cgroup" && $4 ~ /^ro/ {print $2}' /proc/mounts); do
		mount -o remount,bind,rw "$m"
	done
	[ -c /dev/net/tun ] || die "/dev/net/tun missing: the node needs --device /dev/net/tun (OVS's userspace datapath)"
}

# On a VM the packages come with their services enabled; the node's daemons
# are the ones started here (etcd's packaged unit would take 127.0.0.1:2379,
# Docker's /run/docker.sock).
quiet_services() {
	[ -d /run/systemd/system ] || return 0
	local u
	for u in etcd.service docker.socket docker.service openvswitch-switch.service; do
		systemctl disable --now "$u" >/dev/null 2>&1 || true
		systemctl mask "$u" >/dev/null 2>&1 || true
	done
}

binaries() {
	local b
	for b in netplugin netdcli; do
		[ -x "$repo/bin/$b" ] || die "$repo/bin/$b missing: run make build on the Vagrant host first"
	done
	install -d /usr/local/lib/netplugin
	install -m 0755 "$repo/bin/netplugin" /usr/local/bin/netplugin
	install -m 0755 "$repo/bin/netdcli" /usr/local/lib/netplugin/netdcli
	# netdcli of this node: the cluster and this node's certificate unless
	# the caller says otherwise.
	cat >/usr/local/bin/netdcli <<EOF
#!/bin/sh
[ -r $ENVFILE ] && . $ENVFILE
exec /usr/local/lib/netplugin/netdcli "\$@"
EOF
	chmod 0755 /usr/local/bin/netdcli
}

# The certificates stay readable by root and by group netplugin (the VM's
# vagrant user is in it: `vagrant ssh -c netdcli` works without sudo).
tls() {
	local f
	for f in ca.pem server.pem server.key client.pem client.key; do
		[ -s "$SRC_PKI/$f" ] || die "$SRC_PKI/$f missing (scripts/vagrant/pki.sh makes it on the Vagrant host)"
	done
	getent group netplugin >/dev/null || groupadd --system netplugin
	if id vagrant >/dev/null 2>&1; then usermod -aG netplugin vagrant; fi
	install -d -m 0750 -g netplugin "$PKI"
	install -m 0644 "$SRC_PKI/ca.pem" "$PKI/ca.pem"
	install -m 0644 "$SRC_PKI/server.pem" "$SRC_PKI/client.pem" "$PKI/"
	install -m 0600 "$SRC_PKI/server.key" "$PKI/server.key"
	install -m 0640 -g netplugin "$SRC_PKI/client.key" "$PKI/client.key"
}

write_env() {
	install -d /etc/netplugin
	cat >"$ENVFILE.tmp" <<EOF
# Written by scripts/vagrant/node.sh: this node's view of the cluster.
export NETPLUGIN_ETCD=\${NETPLUGIN_ETCD:-$(endpoints)}
export NETPLUGIN_ETCD_CACERT=\${NETPLUGIN_ETCD_CACERT:-$PKI/ca.pem}
export NETPLUGIN_ETCD_CERT=\${NETPLUGIN_ETCD_CERT:-$PKI/client.pem}
export NETPLUGIN_ETCD_KEY=\${NETPLUGIN_ETCD_KEY:-$PKI/client.key}
export ETCDCTL_API=3
export ETCDCTL_ENDPOINTS=\${ETCDCTL_ENDPOINTS:-$(endpoints)}
export ETCDCTL_CACERT=\${ETCDCTL_CACERT:-$PKI/ca.pem}
export ETCDCTL_CERT=\${ETCDCTL_CERT:-$PKI/client.pem}
export ETCDCTL_KEY=\${ETCDCTL_KEY:-$PKI/client.key}
export OVS_RUNDIR=\${OVS_RUNDIR:-$OVS_DIR}
EOF
	mv "$ENVFILE.tmp" "$ENVFILE"
	printf '# netplugin node settings\n[ -r %s ] && . %s\n' "$ENVFILE" "$ENVFILE" >/etc/profile.d/netplugin.sh
}

start_etcd() {
	local st=new
	[ -d "$S/etcd/member" ] && st=existing
	"$prov/etcd.sh" start --name "$name" --ip "$ctl" --cluster "$(initial_cluster)" --tls "$PKI" \
		--data-dir "$S/etcd" --state "$st" --log "$S/etcd.log" --pidfile "$S/etcd.pid"
}

# The VTEP address moves from its interface to br-phy, which holds that
# interface: OVS's userspace datapath sends tunnel packets only out of such a
# bridge. The interface is remembered for the next run.
start_ovs() {
	local port
	port=$(cat "$S/vtep-port" 2>/dev/null || true)
	if [ -z "$port" ] || ! ip link show "$port" >/dev/null 2>&1; then
		port=$(iface_with "$vtep")
		[ -n "$port" ] || die "no interface has the VTEP address $vtep (is the node's second private network up?)"
		[ "$port" != br-phy ] || die "br-phy holds $vtep but $S/vtep-port is lost: vagrant destroy this node"
		echo "$port" >"$S/vtep-port"
	fi
	if [ "$(iface_with "$vtep")" = "$port" ]; then ip addr flush dev "$port"; fi
	"$prov/ovs.sh" start --dir "$OVS_DIR" --phy-port "$port" --phy-addr "$vtep/24"
}

start_docker() {
	"$prov/docker.sh" start --dir "$DOCKER_DIR"
	# Where docker, netdcli and the agent look by default.
	ln -sfn "$DOCKER_DIR/docker.sock" /run/docker.sock
}

etcdctl_local() {
	env -u ETCDCTL_ENDPOINTS -u ETCDCTL_CACERT -u ETCDCTL_CERT -u ETCDCTL_KEY ETCDCTL_API=3 \
		etcdctl --endpoints "https://$ctl:2379" --cacert "$PKI/ca.pem" --cert "$PKI/client.pem" --key "$PKI/client.key" \
		--dial-timeout 2s --command-timeout 3s "$@"
}
member_healthy() { etcdctl_local endpoint health >/dev/null 2>&1; }

agent_args() {
	local up
	up=$(iface_with "$trunk")
	[ -n "$up" ] || die "no interface has the trunk address $trunk (is the node's third private network up?)"
	printf '%s\n' start --host-label "$name" --etcd-endpoints "$(endpoints)" --tls "$PKI" \
		--state-dir "$S/agent" --vtep-ip "$vtep" --bin /usr/local/bin/netplugin -- \
		--drivers linuxbridge,ovs,macvlan,ipvlan,hostnic \
		--ovsdb "unix:$OVS_DIR/db.sock" --ovs-datapath netdev --ovs-uplink "$up"
}

# The agent's start-up arguments are kept in STATE/agent.args, so that the
# background start and restart-agent run exactly what up chose.
start_agent() {
	agent_args >"$S/agent.args"
	if [ -n "$last" ]; then
		member_healthy || say "waiting for the etcd cluster (every member)"
		wait_until "${NP_NODE_ETCD_WAIT:-300}" "$prov/etcd.sh" health --ip "$ctl" --tls "$PKI" ||
			die "etcd cluster not healthy after ${NP_NODE_ETCD_WAIT:-300} s: $("$prov/etcd.sh" health --ip "$ctl" --tls "$PKI" 2>&1 | tr '\n' ' ')"
		cmd_agent_saved
	elif wait_until 10 member_healthy; then
		cmd_agent_saved
	else
		# No quorum yet: the other members are still to come.
		say "etcd has no quorum yet: the agent starts once it has (log $S/agent-start.log)"
		setsid nohup "$here/node.sh" agent-when-quorum </dev/null >"$S/agent-start.log" 2>&1 &
	fi
}

# agent.sh start with the saved arguments.
cmd_agent_saved() {
	local args
	mapfile -t args <"$S/agent.args"
	"$prov/agent.sh" "${args[@]}"
}

# The background start: once this node's member serves (the cluster has a
# quorum), the agent.
cmd_agent_when_quorum() {
	ctl=$(sed -n '/^--etcd-endpoints$/{n;s#^https://\([^:]*\):.*#\1#p}' "$S/agent.args")
	wait_until "${NP_NODE_ETCD_WAIT:-600}" member_healthy || die "etcd member $ctl not healthy after ${NP_NODE_ETCD_WAIT:-600} s"
	cmd_agent_saved
}

# The last node: every node's agent registered (a leased key under
# /netplugin/v1/hosts/), or the ones that are not.
wait_agents() {
	local p missing= i
	for ((i = 0; i < ${NP_NODE_AGENT_WAIT:-300} * 2; i++)); do
		missing=
		local have
		have=$(etcdctl_local get --prefix --keys-only /netplugin/v1/hosts/ 2>/dev/null || true)
		for p in $(peer_list); do
			grep -qx -- "/netplugin/v1/hosts/${p%%=*}" <<<"$have" || missing+=" ${p%%=*}"
		done
		[ -n "$missing" ] || {
			say "every agent is registered: $(peer_list | cut -d= -f1 | tr '\n' ' ')"
			return 0
		}
		sleep 0.5
	done
	die "agents not registered after ${NP_NODE_AGENT_WAIT:-300} s:$missing (see $S/agent-start.log and $S/agent/netplugin.log on them)"
}

cmd_up() {
	check_args
	need_root
	install -d -m 0700 "$S"
	prepare_container
	"$prov/packages.sh"
	quiet_services
	binaries
	tls
	write_env
	start_etcd
	start_ovs
	start_docker
	start_agent
	[ -z "$last" ] || wait_agents
	say "$name provisioned"
}

cmd_restart_agent() {
	need_root
	[ -s "$S/agent.args" ] || die "no agent was started on this node (node.sh up first)"
	"$prov/agent.sh" stop --state-dir "$S/agent" $kill
	cmd_agent_saved
}

cmd_status() {
	local d f
	for d in etcd:$S/etcd.pid ovs-vswitchd:$OVS_DIR/ovs-vswitchd.pid dockerd:$DOCKER_DIR/docker.pid netplugin:$S/agent/netplugin.pid; do
		f=${d#*:}
		if [ -n "$(pid_of "$f" /)" ]; then echo "${d%%:*} up"; else echo "${d%%:*} down"; fi
	done
}

case $cmd in
up) cmd_up ;;
restart-agent) cmd_restart_agent ;;
agent-when-quorum) cmd_agent_when_quorum ;;
status) cmd_status ;;
*) usage ;;
esac
