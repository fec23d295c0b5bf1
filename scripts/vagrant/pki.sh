#!/usr/bin/env bash
# pki.sh — the Vagrant cluster's certificates, made on the Vagrant host with
# scripts/provision/tls.sh (openssl) and handed to each node by its synced
# folder or volume. The Vagrantfile runs it before a node comes up and after
# it is destroyed, one call at a time.
#
#   pki.sh add    --dir DIR --name NODE --ip IP    DIR/ca.*, once; DIR/NODE/ (server + client), once
#   pki.sh remove --dir DIR --name NODE            DIR/NODE/; and the CA with the last node
#
# The CA key stays in DIR on the host; a node gets its own directory only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prov=$here/../provision
STEP=pki
# shellcheck source=../provision/lib.sh
source "$prov/lib.sh"

usage() {
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
dir= name= ip=
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=${2:?}; shift 2 ;;
	--name) name=${2:?}; shift 2 ;;
	--ip) ip=${2:?}; shift 2 ;;
	*) usage ;;
	esac
done
[ -n "$dir" ] && [ -n "$name" ] || usage
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "--name \"$name\": letters, digits, . _ - only"

case $cmd in
add)
	[ -n "$ip" ] || usage
	"$prov/tls.sh" ca --dir "$dir"
	if [ -s "$dir/$name/server.pem" ] && [ -s "$dir/$name/client.key" ] &&
		openssl x509 -noout -checkend 86400 -in "$dir/$name/server.pem" >/dev/null 2>&1 &&
		openssl verify -CAfile "$dir/ca.pem" "$dir/$name/server.pem" >/dev/null 2>&1 &&
		openssl x509 -noout -text -in "$dir/$name/server.pem" | grep -qF "IP Address:$ip"; then
		exit 0
	fi
	"$prov/tls.sh" host --dir "$dir" --name "$name" --ip "$ip"
	;;
remove)
	[ -d "$dir" ] || exit 0
	rm -rf "${dir:?}/$name"
	if [ -z "$(find "$dir" -mindepth 1 -maxdepth 1 -type d)" ]; then
		rm -f "$dir/ca.pem" "$dir/ca.key"
		rmdir "$dir" 2>/dev/null || true
	fi
	;;
*) usage ;;
esac
