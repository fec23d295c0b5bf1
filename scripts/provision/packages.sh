#!/usr/bin/env bash
# packages.sh — the Debian packages a netplugin host needs: iproute2, docker.io,
# openvswitch-switch, etcd-server and etcd-client, openssl, nftables, curl,
# busybox-static (the test image), iperf3. Installs only what is missing and keeps
# the packaged services from starting during the install (start them, or the
# other steps here, afterwards).
set -euo pipefail
exec "$(cd "$(dirname "$0")" && pwd)/../install-deps.sh"
