package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/testenv"
)

// newPrivatePluginEnv is newPluginEnv with a dockerd of its own, which the test
// may restart or kill.
func newPrivatePluginEnv(t *testing.T, liveRestore bool) *pluginEnv {
	nstest.RequireRoot(t)
	return startPluginEnv(t, testenv.StartPrivateDocker(t, testenv.PrivateOptions{LiveRestore: liveRestore}), nstest.Prefix())
}

// waitEndpoints waits until the plugin's tenant has exactly n endpoints and n
// allocated IPs: stale ones left by Docker's restart are collected.
func (e *pluginEnv) waitEndpoints(n int) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		eps, err := e.store.Endpoints(context.Background(), e.name, "")
		if err != nil {
			e.t.Fatal(err)
		}
		if len(eps) == n && len(e.allocated()) == n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d endpoints and allocations %v, want %d", len(eps), e.allocated(), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestDockerdRestartWithLiveRestore(t *testing.T) {
	e := newPrivatePluginEnv(t, true)
	net := e.name + "-net"
	e.createNet(net, "10.87.0.0/24", "10.87.0.1")
	a, b := e.name+"-a", e.name+"-b"
	e.run(a, net)
	e.run(b, net)
	ipB := e.ipOf(b, net)
	if !e.ping(a, ipB) {
		t.Fatal("no connectivity before the restart")
	}
	for _, restart := range []string{"graceful", "crash"} {
		if restart == "graceful" {
			e.dk.RestartDaemon(t)
		} else {
			e.dk.KillDaemon(t)
			e.dk.StartDaemon(t)
		}
		if !e.ping(a, ipB) {
			t.Fatalf("after a %s dockerd restart with live-restore the containers lost their network", restart)
		}
		c := fmt.Sprintf("%s-c%s", e.name, restart[:1])
		e.run(c, net)
		if !e.ping(c, ipB) {
			t.Fatalf("docker run after a %s dockerd restart: no connectivity", restart)
		}
	}
	e.waitEndpoints(4)
}

func TestDockerdRestartWithoutLiveRestore(t *testing.T) {
	e := newPrivatePluginEnv(t, false)
	net := e.name + "-net"
	e.createNet(net, "10.88.0.0/24", "10.88.0.1")
	a, b := e.name+"-a", e.name+"-b"
	e.run(a, net, "--restart=always")
	e.run(b, net, "--restart=always")
	if !e.ping(a, e.ipOf(b, net)) {
		t.Fatal("no connectivity before the restart")
	}
	for _, restart := range []string{"graceful", "crash"} {
		if restart == "graceful" {
			e.dk.RestartDaemon(t)
		} else {
			e.dk.KillDaemon(t)
			e.dk.StartDaemon(t)
		}
		// The containers come back (restart policy) with their network, and
		// what the old endpoints held is released: two endpoints, two IPs.
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, _ := e.docker("inspect", "-f", "{{.State.Running}}", a, b)
			if strings.Count(out, "true") == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("containers not running after a %s dockerd restart: %s", restart, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !e.ping(a, e.ipOf(b, net)) {
			t.Fatalf("after a %s dockerd restart the containers have no network", restart)
		}
		e.waitEndpoints(2)
	}
}
