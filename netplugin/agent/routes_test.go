package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
)

// TestRoutedNetworkRouteDistribution: an ipvlan l3 network gives each host a
// block of its subnet; every other live host routes that block to the host's
// underlay address, and withdraws the route when the host's lease ends and
// the agent's host grace period after it. The
// routes are checked in three "host" namespaces on this kernel (the ipvlan
// dataplane itself runs in the kernel lab).
func TestRoutedNetworkRouteDistribution(t *testing.T) {
	nstest.RequireRoot(t)
	_, e := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	under := nstest.NS(t, p+"u")
	nstest.Exec(t, under, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, under, "ip", "link", "set", "br0", "up")
	hosts := []string{p + "h1", p + "h2", p + "h3"}
	// Host 1 keeps a host whose lease went for 3 s; the others drop it at once.
	grace := []time.Duration{3 * time.Second, 0, 0}
	stores := map[string]*state.Store{}
	stops := map[string]func(){}
	for i, h := range hosts {
		nstest.NS(t, h)
		nstest.Exec(t, h, "ip", "link", "add", "up0", "type", "veth", "peer", "name", fmt.Sprintf("p%d", i), "netns", under)
		nstest.Exec(t, h, "ip", "addr", "add", fmt.Sprintf("10.85.0.%d/24", i+1), "dev", "up0")
		nstest.Exec(t, h, "ip", "link", "set", "up0", "up")
		nstest.Exec(t, under, "ip", "link", "set", fmt.Sprintf("p%d", i), "master", "br0", "up")
		s, err := state.Connect(ctx, []string{e.Endpoint()}, 5*time.Second, etcdtest.Log(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		stores[h] = s
		actx, cancel := context.WithCancel(ctx)
		a := agent.New(agent.Config{Host: h, VTEP: fmt.Sprintf("10.85.0.%d", i+1), RouteNetNS: nstest.Path(h), Store: s,
			Drivers: map[string]core.Driver{linuxbridge.Name: mustLinuxbridge(t, etcdtest.Log(t), h)},
			Resync:  300 * time.Millisecond, LeaseTTL: 2, Log: etcdtest.Log(t), HostGrace: grace[i]})
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(actx) }()
		stops[h] = func() { cancel(); <-done }
		t.Cleanup(stops[h])
	}
	s := stores[hosts[0]]
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Driver: "ipvlan", Subnet: "10.86.0.0/24",
		Options: map[string]string{"parent": "up0", "mode": "l3"}}); err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	for i, h := range hosts {
		ep, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: fmt.Sprintf("%s-e%d", p, i), Host: h}, 0)
		if err != nil {
			t.Fatal(err)
		}
		blocks[h] = fmt.Sprintf("10.86.0.%d/28", i*16)
		if want := fmt.Sprintf("10.86.0.%d", i*16+1); ep.IP != want {
			t.Fatalf("endpoint on %s got %s, want %s from its block %s", h, ep.IP, want, blocks[h])
		}
	}
	// An IP outside the host's block is refused.
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: p + "-bad", Host: hosts[0], IP: "10.86.0.20"}, 0); err == nil {
		t.Fatal("IP outside the host's block accepted")
	}

	routesIn := func(h string) string {
		return nstest.Exec(t, h, "ip", "route", "show", "proto", "201")
	}
	waitRoutes := func(h string, want map[string]string, not []string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			out := routesIn(h)
			ok := true
			for dst, via := range want {
				ok = ok && strings.Contains(out, dst+" via "+via)
			}
			for _, dst := range not {
				ok = ok && !strings.Contains(out, dst)
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("routes in %s:\n%s\nwant %v, not %v", h, out, want, not)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitRoutes(hosts[0], map[string]string{blocks[hosts[1]]: "10.85.0.2", blocks[hosts[2]]: "10.85.0.3"}, []string{blocks[hosts[0]]})
	waitRoutes(hosts[1], map[string]string{blocks[hosts[0]]: "10.85.0.1", blocks[hosts[2]]: "10.85.0.3"}, []string{blocks[hosts[1]]})
	waitRoutes(hosts[2], map[string]string{blocks[hosts[0]]: "10.85.0.1", blocks[hosts[1]]: "10.85.0.2"}, []string{blocks[hosts[2]]})

	// Host 3 loses etcd (a crash, as far as the others can tell): when its lease
	// expires host 2 withdraws its route, host 1 only after its grace period.
	// Its block stays allocated.
	_ = stores[hosts[2]].Close()
	waitRoutes(hosts[1], map[string]string{blocks[hosts[0]]: "10.85.0.1"}, []string{blocks[hosts[2]]})
	gone := time.Now()
	if out := routesIn(hosts[0]); !strings.Contains(out, blocks[hosts[2]]+" via 10.85.0.3") {
		t.Fatalf("host 1 withdrew the route to host 3 inside its grace period:\n%s", out)
	}
	waitRoutes(hosts[0], map[string]string{blocks[hosts[1]]: "10.85.0.2"}, []string{blocks[hosts[2]]})
	if kept := time.Since(gone); kept < 2*time.Second {
		t.Fatalf("host 1 kept the route %v after the lease went, want about its 3 s grace", kept)
	}

	// Deleting the network removes every route.
	stops[hosts[2]]()
	for i := range hosts {
		if err := s.DeleteEndpoint(ctx, "default", fmt.Sprintf("%s-e%d", p, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNetwork(ctx, "default", p); err != nil {
		t.Fatal(err)
	}
	waitRoutes(hosts[0], nil, []string{"10.86.0."})
	waitRoutes(hosts[1], nil, []string{"10.86.0."})
}

// mustLinuxbridge is a host-local linuxbridge driver for the agent of host.
func mustLinuxbridge(t *testing.T, log *logrus.Entry, host string) *linuxbridge.Driver {
	t.Helper()
	d, err := linuxbridge.New(log, linuxbridge.Config{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	return d
}
