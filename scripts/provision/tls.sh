#!/usr/bin/env bash
# tls.sh — the certificates of an etcd cluster with TLS everywhere, made with openssl.
#
#   tls.sh ca     --dir DIR                                   DIR/ca.pem, DIR/ca.key (kept if present)
#   tls.sh host   --dir DIR --name NAME --ip IP [--ip IP...] [--dns DNS...]
#   tls.sh client --dir DIR --name NAME
#
# `host` writes DIR/NAME/: ca.pem; server.pem + server.key, the etcd member's
# certificate for its client and peer listeners (serverAuth and clientAuth,
# because members dial each other with it), valid for the given addresses,
# NAME, 127.0.0.1 and localhost; client.pem + client.key with CN=NAME, the
# host's certificate for its agent and netdcli. `client` writes only the
# latter (an operator's workstation). Run it on one machine and copy DIR/NAME/
# to host NAME; DIR/ca.key stays where it is. Keys are P-256, readable by root only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
dir= name= ips=() dnss=()
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=${2:?}; shift 2 ;;
	--name) name=${2:?}; shift 2 ;;
	--ip) ips+=("${2:?}"); shift 2 ;;
	--dns) dnss+=("${2:?}"); shift 2 ;;
	*) usage ;;
	esac
done
[ -n "$dir" ] || usage
need_cmd openssl openssl
umask 077
days=${TLS_DAYS:-825}

ca() {
	mkdir -p "$dir"
	if [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ]; then
		return 0
	fi
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=netplugin etcd CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
		die "openssl could not make the CA in $dir"
	say "CA $dir/ca.pem"
}

# sign OUT CN EXT: a fresh key OUT.key and OUT.pem signed by the CA.
sign() {
	local out=$1 cn=$2 ext=$3
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$out.key" -out "$out.csr" -subj "/CN=$cn" 2>/dev/null || die "openssl req for $cn failed"
	openssl x509 -req -in "$out.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
		-days "$days" -out "$out.pem" -extfile <(printf '%s\n' "$ext") 2>/dev/null || die "openssl x509 for $cn failed"
	rm -f "$out.csr"
}

# The name becomes a directory, a certificate CN and (for agents) a host label.
check_name() {
	[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "--name \"$name\": letters, digits, . _ - only (at most 63)"
	[ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] || die "no CA in $dir: run tls.sh ca --dir $dir first"
	mkdir -p "$dir/$name"
	cp "$dir/ca.pem" "$dir/$name/ca.pem"
}

client() {
	check_name
	sign "$dir/$name/client" "$name" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
	say "client certificate $dir/$name/client.pem (CN=$name)"
}

host() {
	check_name
	[ ${#ips[@]} -gt 0 ] || die "host needs at least one --ip (the addresses etcd listens on)"
	local san="DNS:$name,DNS:localhost,IP:127.0.0.1" i
	for i in "${ips[@]}"; do san+=",IP:$i"; done
	for i in "${dnss[@]}"; do san+=",DNS:$i"; done
	sign "$dir/$name/server" "$name" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san"
	say "server/peer certificate $dir/$name/server.pem ($san)"
	client
}

case $cmd in
ca) ca ;;
host) host ;;
client) client ;;
*) usage ;;
esac
