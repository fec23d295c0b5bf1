package linuxbridge

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// TestParallelEndpointsOfOneNamespace: the agent programs endpoints in
// parallel; endpoints of one container must not pick the same lowest free
// ethN. All four come up at the first try, as eth0 to eth3.
func TestParallelEndpointsOfOneNamespace(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	ctx := context.Background()
	d, err := New(logrus.NewEntry(logrus.New()), Config{Host: p})
	if err != nil {
		t.Fatal(err)
	}
	n := core.NetworkSpec{Network: core.Network{Tenant: p, Name: "n", Driver: Name, Encap: "vlan", Tag: 12, Subnet: "10.148.0.0/24", Gateway: "10.148.0.254"}}
	if err := d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}) })
	for round := 0; round < 20; round++ {
		ns := nstest.NS(t, fmt.Sprintf("%s%d", p, round))
		var eps []core.EndpointSpec
		for i := 1; i <= 4; i++ {
			ep := core.EndpointSpec{Endpoint: core.Endpoint{Tenant: p, Network: n.Name, Name: fmt.Sprintf("r%de%d", round, i),
				IP: fmt.Sprintf("10.148.0.%d", 10*round+i), MAC: fmt.Sprintf("02:42:0a:94:%02x:%02x", round, i)},
				Net: n, NetNSPath: nstest.Path(ns), NetNSID: nsID(t, nstest.Path(ns))}
			eps = append(eps, ep)
			t.Cleanup(func() { _ = d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: ep.Key()}) })
		}
		errs := make([]error, len(eps))
		var wg sync.WaitGroup
		for i, ep := range eps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = d.EnsureEndpoint(ctx, ep)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: endpoint %d of the namespace: %v", round, i+1, err)
			}
		}
		out := nstest.Exec(t, ns, "ip", "-o", "link", "show")
		for i := range eps {
			if !strings.Contains(out, fmt.Sprintf("eth%d@", i)) {
				t.Fatalf("round %d: want eth0 to eth%d:\n%s", round, len(eps)-1, out)
			}
		}
	}
}
