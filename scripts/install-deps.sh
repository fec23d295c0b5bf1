#!/usr/bin/env bash
# install-deps.sh — install the Debian packages netplugin's build, tests, demo,
# benchmarks and local cluster need, only those whose commands are missing.
# Services the packages would start (the system dockerd, OVS, etcd) are kept
# from starting: tests, the demo and scripts/cluster run private instances.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"

need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want ip iproute2
want curl curl
want ping iputils-ping
want dockerd docker.io
want busybox busybox-static
want ovsdb-server openvswitch-switch
want ovs-vsctl openvswitch-common
want etcd etcd-server
want etcdctl etcd-client
want openssl openssl
want nft nftables
want iperf3 iperf3
want nsenter util-linux
want conntrack conntrack
want ethtool ethtool
want tcpdump tcpdump
want tc iproute2

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "install-deps: need root to install ${need[*]}" >&2; exit 1; }
echo "install-deps: installing ${need[*]}" >&2
policy=/usr/sbin/policy-rc.d made=
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	made=1
fi
rc=0
{ DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q &&
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}"; } >&2 || rc=$?
[ -z "$made" ] || rm -f "$policy"
exit $rc
