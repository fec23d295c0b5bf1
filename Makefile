# netplugin — see README.md. Every target installs what it needs.
GO ?= go
export PATH := $(PATH):/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin

.PHONY: all build test e2e demo bench install clean kernel-lab vagrant-test

all: build

build:
	$(GO) build -o bin/ ./netplugin ./netdcli

test:
	scripts/test.sh

# The multi-host system tests (e2e/): each brings up its own fleet of
# namespace hosts with scripts/cluster, or shares one that it leaves as found.
E2E_FLAGS ?= -v
e2e:
	scripts/install-deps.sh
	NETPLUGIN_E2E=1 $(GO) test -count=1 -p 1 -timeout 30m $(E2E_FLAGS) ./e2e/

# What this machine's kernel lacks (ipvlan, 802.1Q, OVS datapath), tested under
# Debian's stock kernel in qemu; make test runs it too.
kernel-lab:
	scripts/kernel-lab.sh ./lab/ ./drivers/ipvlan/ ./drivers/macvlan/ ./drivers/linuxbridge/

# The fleet: three namespace hosts, containers talking across them, two
# tenants with one subnet kept apart; removed at the end.
demo:
	scripts/demo.sh

# The Vagrantfile's cluster with the docker provider, on a private dockerd in a
# namespace of its own: cross-node checks, then vagrant destroy (see
# scripts/vagrant/test.sh). The node image is cached in /var/cache/netplugin-vagrant.
vagrant-test:
	scripts/vagrant/test.sh

bench: build
	scripts/install-deps.sh
	$(GO) run ./bench

install: build
	install -m 0755 bin/netplugin bin/netdcli /usr/local/bin/
	install -D -m 0644 scripts/systemd/netplugin.service /etc/systemd/system/netplugin.service
	test -e /etc/default/netplugin || install -D -m 0644 scripts/systemd/netplugin.default /etc/default/netplugin
	install -D -m 0644 README.md /usr/local/share/doc/netplugin/README.md
	if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable netplugin.service; fi

clean:
	rm -rf bin bench/results.json
