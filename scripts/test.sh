#!/usr/bin/env bash
# test.sh — the whole test suite, as `make test` runs it: vet, then every package
# with one private dockerd shared by the packages that need Docker, stopped at
# the end whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"

scripts/install-deps.sh
go vet ./...

dir=$(mktemp -d /tmp/np-test-XXXXXX)
cleanup() { scripts/dockerd-down.sh "$dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT
scripts/dockerd-up.sh "$dir" >/dev/null
export NETPLUGIN_TEST_DOCKER_HOST="$dir/docker.sock"

# -p 2: the machine has two cores; packages run real daemons and namespaces.
go test -count=1 -p 2 -timeout 20m "$@" ./...

# What this kernel lacks runs under another kernel in qemu.
make --no-print-directory kernel-lab
