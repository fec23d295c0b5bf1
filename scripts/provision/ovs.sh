#!/usr/bin/env bash
# ovs.sh — a private Open vSwitch (ovsdb-server + ovs-vswitchd) whose
# database, sockets, pid files and logs all live in one directory.
#
#   ovs.sh start --dir DIR [--phy-port IF --phy-addr CIDR] [--mtu N]
#   ovs.sh stop  --dir DIR [--kill]
#
# The agent then takes --ovsdb unix:DIR/db.sock; `OVS_RUNDIR=DIR ovs-vsctl ...`
# reaches this instance. --phy-port/--phy-addr make the bridge br-phy (datapath
# netdev) holding the underlay port IF, with the VTEP address CIDR on br-phy:
# OVS's userspace datapath (hosts without the openvswitch kernel module)
# routes tunnel packets itself, and only out of such a bridge. With the kernel
# module, use Debian's openvswitch-switch service instead of this step and keep
# the VTEP address on the underlay interface. --mtu sets the MTU of IF and br-phy.
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
dir= phy= addr= mtu= kill=
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=${2:?}; shift 2 ;;
	--phy-port) phy=${2:?}; shift 2 ;;
	--phy-addr) addr=${2:?}; shift 2 ;;
	--mtu) mtu=${2:?}; shift 2 ;;
	--kill) kill=--kill; shift ;;
	*) usage ;;
	esac
done
[ -n "$dir" ] || usage
dir=$(realpath -m -- "$dir")
export OVS_RUNDIR=$dir OVS_LOGDIR=$dir OVS_DBDIR=$dir OVS_SYSCONFDIR=$dir
vsctl() { ovs-vsctl --db "unix:$dir/db.sock" --timeout 10 "$@"; }

start() {
	need_root
	need_cmd ovsdb-server openvswitch-switch
	need_cmd ovs-vswitchd openvswitch-switch
	[ -z "$phy" ] || [ -n "$addr" ] || die "--phy-port needs --phy-addr"
	mkdir -p "$dir"
	if [ ! -s "$dir/conf.db" ]; then
		local schema=/usr/share/openvswitch/vswitch.ovsschema
		[ -s "$schema" ] || die "$schema missing (apt-get install openvswitch-common)"
		ovsdb-tool create "$dir/conf.db" "$schema"
	fi
	# --detach returns once the daemon serves; every path names DIR, which
	# is how stop and scripts/cluster recognise the processes.
	if [ -z "$(pid_of "$dir/ovsdb-server.pid" "$dir/")" ]; then
		rm -f "$dir/db.sock"
		ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" \
			--remote=db:Open_vSwitch,Open_vSwitch,manager_options \
			--unixctl="$dir/ovsdb-server.ctl" --pidfile="$dir/ovsdb-server.pid" --overwrite-pidfile \
			--log-file="$dir/ovsdb-server.log" -vconsole:off --detach --no-chdir 2>>"$dir/ovsdb-server.stderr" ||
			{ log_tail "$dir/ovsdb-server.log"; die "ovsdb-server did not start"; }
		vsctl --no-wait init
	fi
	if [ -z "$(pid_of "$dir/ovs-vswitchd.pid" "$dir/")" ]; then
		ovs-vswitchd "unix:$dir/db.sock" --unixctl="$dir/ovs-vswitchd.ctl" \
			--pidfile="$dir/ovs-vswitchd.pid" --overwrite-pidfile \
			--log-file="$dir/ovs-vswitchd.log" -vconsole:off --detach --no-chdir 2>>"$dir/ovs-vswitchd.stderr" ||
			{ log_tail "$dir/ovs-vswitchd.log"; die "ovs-vswitchd did not start"; }
	fi
	# A command without --no-wait returns once vswitchd applied it: proof it works.
	vsctl set Open_vSwitch . external_ids:netplugin-provision=ready
	if [ -n "$phy" ]; then
		ip link show "$phy" >/dev/null 2>&1 || die "--phy-port $phy: no such interface"
		vsctl --may-exist add-br br-phy -- set Bridge br-phy datapath_type=netdev \
			-- --may-exist add-port br-phy "$phy"
		if [ -n "$mtu" ]; then
			ip link set "$phy" mtu "$mtu"
			vsctl set Interface br-phy mtu_request="$mtu"
		fi
		# The kernel still sees every frame of the port OVS took. Left as it
		# is, it answers ARP for br-phy's address on it too, with the port's
		# own MAC: a peer that learns that one sends its tunnel traffic where
		# no tunnel ends, and loses all of it until it asks again.
		sysctl -qw "net.ipv4.conf.$phy.arp_ignore=1"
		ip link set "$phy" up
		ip addr replace "$addr" dev br-phy
		ip link set br-phy up
	fi
	say "OVS up in $dir${phy:+ (br-phy on $phy, $addr)}"
}

stop() {
	local pid
	pid=$(pid_of "$dir/ovs-vswitchd.pid" "$dir/")
	if [ -n "$pid" ] && [ -z "$kill" ]; then
		# SIGTERM would leave the userspace datapath's tap devices behind
		# (OVS keeps datapaths across restarts); exit --cleanup removes them.
		ovs-appctl --timeout=5 -t "$dir/ovs-vswitchd.ctl" exit --cleanup >/dev/null 2>&1 || true
		wait_until 5 dead "$pid" || true
	fi
	stop_pid ovs-vswitchd "$(pid_of "$dir/ovs-vswitchd.pid" "$dir/")" 5 $kill
	stop_pid ovsdb-server "$(pid_of "$dir/ovsdb-server.pid" "$dir/")" 5 $kill
	rm -f "$dir/ovs-vswitchd.pid" "$dir/ovsdb-server.pid"
}

case $cmd in
start) start ;;
stop) stop ;;
*) usage ;;
esac
