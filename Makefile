# netplugin — see README.md. Every target installs what it needs.
GO ?= go
export PATH := $(PATH):/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin

.PHONY: all build test demo bench install clean

all: build

build:
	$(GO) build -o bin/ ./netplugin ./netdcli

test:
	scripts/test.sh

demo: build
	scripts/demo.sh

bench: build
	scripts/install-deps.sh
	$(GO) run ./bench

install: build
	install -m 0755 bin/netplugin bin/netdcli /usr/local/bin/

clean:
	rm -rf bin bench/results.json
