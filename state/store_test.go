package state_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// dump returns every key and value, to prove a rejected command changed nothing.

func TestNetworkAndEndpointLifecycle(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	if err := s.CreateTenant(ctx, "tenant1"); err != nil {
		t.Fatal(err)
	}
	n, err := s.CreateNetwork(ctx, core.Network{Tenant: "tenant1", Name: "net1", Subnet: "10.11.1.0/24", Gateway: "10.11.1.254"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Tag != 1 || !n.TagAuto || n.Driver != "linuxbridge" || n.Encap != "vlan" {
		t.Fatalf("defaults not applied: %+v", n)
	}
	// The seed: -tag 12 on the first endpoint re-tags an auto-tagged network.
	ep, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "tenant1", Network: "net1", Name: "ep1", IP: "10.11.1.1", Host: "h1"}, 12)
	if err != nil {
		t.Fatal(err)
	}
	n, _, _ = s.GetNetwork(ctx, "tenant1", "net1")
	if n.Tag != 12 || n.TagAuto {
		t.Fatalf("network not re-tagged: %+v", n)
	}
	if ep.MAC == "" || ep.MAC[1] != '2' && ep.MAC[1] != '6' && ep.MAC[1] != 'a' && ep.MAC[1] != 'e' {
		t.Fatalf("MAC not locally administered: %q", ep.MAC)
	}
	// The same tag again is fine; another is a conflict now.
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "tenant1", Network: "net1", Name: "ep2"}, 12); err != nil {
		t.Fatal(err)
	}
	ep2, _, _ := s.GetEndpoint(ctx, "tenant1", "ep2")
	if ep2.IP != "10.11.1.2" {
		t.Fatalf("auto IP = %s, want lowest free 10.11.1.2", ep2.IP)
	}
	if _, err := s.Attach(ctx, "tenant1", "ep1", state.Attachment{ContainerName: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(ctx, "tenant1", "ep1", state.Attachment{ContainerName: "c1"}); err != nil {
		t.Fatalf("attach again to the same container must be a no-op: %v", err)
	}
	if err := s.DeleteNetwork(ctx, "tenant1", "net1"); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("delete network with endpoints: %v", err)
	}
	if _, err := s.Detach(ctx, "tenant1", "ep1", "c1"); err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{"ep1", "ep2"} {
		if err := s.DeleteEndpoint(ctx, "tenant1", e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNetwork(ctx, "tenant1", "net1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTenant(ctx, "tenant1"); err != nil {
		t.Fatal(err)
	}
	if d := etcdtest.Dump(t, s); d != "" {
		t.Fatalf("store not empty after deleting everything:\n%s", d)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateTenant(ctx, "t1"))
	_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "n1", Subnet: "10.1.1.0/24", Gateway: "10.1.1.1", Tag: 100})
	must(err)
	_, err = s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "n2", Subnet: "10.1.2.0/24"})
	must(err)
	_, err = s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e1", IP: "10.1.1.5"}, 0)
	must(err)
	_, err = s.Attach(ctx, "t1", "e1", state.Attachment{ContainerName: "box"})
	must(err)
	before := etcdtest.Dump(t, s)

	cases := []struct {
		name string
		do   func() error
		want error
		msg  string
	}{
		{"invalid CIDR", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.3.0/33"})
			return err
		}, core.ErrInvalid, "invalid subnet"},
		{"host bits in CIDR", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.3.7/24"})
			return err
		}, core.ErrInvalid, "host bits"},
		{"gateway outside subnet", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.3.0/24", Gateway: "10.1.4.1"})
			return err
		}, core.ErrInvalid, "outside subnet"},
		{"tag out of range", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.3.0/24", Tag: 4095})
			return err
		}, core.ErrInvalid, "out of range"},
		{"vxlan tag out of range", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.3.0/24", Encap: "vxlan", Tag: 16777216})
			return err
		}, core.ErrInvalid, "out of range"},
		{"tag taken", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.3.0/24", Tag: 100})
			return err
		}, core.ErrInUse, "taken"},
		{"duplicate tenant", func() error { return s.CreateTenant(ctx, "t1") }, core.ErrExists, "tenant"},
		{"duplicate network", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "n1", Subnet: "10.1.9.0/24"})
			return err
		}, core.ErrExists, "network"},
		{"overlapping subnet", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "x", Subnet: "10.1.0.0/16"})
			return err
		}, core.ErrInUse, "overlaps"},
		{"duplicate endpoint", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e1"}, 0)
			return err
		}, core.ErrExists, "endpoint"},
		{"IP outside subnet", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e2", IP: "10.1.2.5"}, 0)
			return err
		}, core.ErrInvalid, "outside subnet"},
		{"IP in use", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e2", IP: "10.1.1.5"}, 0)
			return err
		}, core.ErrInUse, "already used"},
		{"IP is the gateway", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e2", IP: "10.1.1.1"}, 0)
			return err
		}, core.ErrInUse, "gateway"},
		{"endpoint tag conflicts", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e2"}, 7)
			return err
		}, core.ErrInvalid, "conflicts"},
		{"retag network with endpoints", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n2", Name: "e2"}, 100)
			return err
		}, core.ErrInUse, "taken"},
		{"unknown tenant", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "nope", Name: "x", Subnet: "10.1.3.0/24"})
			return err
		}, core.ErrNotFound, "unknown tenant"},
		{"unknown network", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "nope", Name: "e2"}, 0)
			return err
		}, core.ErrNotFound, "unknown network"},
		{"unknown endpoint", func() error { return s.DeleteEndpoint(ctx, "t1", "nope") }, core.ErrNotFound, "unknown endpoint"},
		{"bad name", func() error {
			_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "a/b", Subnet: "10.1.3.0/24"})
			return err
		}, core.ErrInvalid, "name"},
		{"delete network with endpoints", func() error { return s.DeleteNetwork(ctx, "t1", "n1") }, core.ErrInUse, "endpoints"},
		{"delete tenant with networks", func() error { return s.DeleteTenant(ctx, "t1") }, core.ErrInUse, "networks"},
		{"attach elsewhere while attached", func() error {
			_, err := s.Attach(ctx, "t1", "e1", state.Attachment{ContainerName: "other"})
			return err
		}, core.ErrInUse, "detach it first"},
		{"detach wrong container", func() error {
			_, err := s.Detach(ctx, "t1", "e1", "other")
			return err
		}, core.ErrInvalid, "not other"},
		{"bad global range", func() error {
			_, err := s.SetGlobal(ctx, core.Global{VLANs: "0-5000"})
			return err
		}, core.ErrInvalid, "range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.do()
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v containing %q", err, c.want, c.msg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if after := etcdtest.Dump(t, s); after != before {
				t.Fatalf("store changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func TestConcurrentIPAllocation(t *testing.T) {
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "n", Subnet: "10.2.0.0/22"}); err != nil {
		t.Fatal(err)
	}
	// Separate clients, as separate netdcli processes would have.
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := state.Connect(ctx, []string{e.Endpoint()}, 5*time.Second, etcdtest.Log(t))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for i := 0; i < 50; i++ {
				if _, err := c.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: fmt.Sprintf("w%d-e%d", w, i)}, 0); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if eps := distinctIPs(t, s, "default", "n"); len(eps) != 400 {
		t.Fatalf("%d distinct IPs, want 400", len(eps))
	}
}

func TestUnreachableEtcd(t *testing.T) {
	port := etcdtest.FreePort(t)
	start := time.Now()
	_, err := state.Connect(context.Background(), []string{fmt.Sprintf("127.0.0.1:%d", port)}, 2*time.Second, etcdtest.Log(t))
	if !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s to notice etcd is down", d)
	}
}

func TestApplyDocument(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	doc := func(js string) state.Document {
		d, err := state.ParseDocument(strings.NewReader(js))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d1 := doc(`{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24","gateway":"10.5.0.1","tag":50,
	  "endpoints":[{"name":"a","netns":"nsa"},{"name":"b","ip":"10.5.0.9"}]}]}]}`)
	sum, err := s.Apply(ctx, d1, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if sum.Created != 4 {
		t.Fatalf("created %d, want tenant+network+2 endpoints", sum.Created)
	}
	a, _, err := s.GetEndpoint(ctx, "blue", "a")
	if err != nil || a.IP != "10.5.0.2" || a.NetNS != "nsa" || a.Host != "h1" {
		t.Fatalf("endpoint a = %+v, %v", a, err)
	}
	// Re-applying the same document changes nothing.
	before := etcdtest.Dump(t, s)
	if sum, err := s.Apply(ctx, d1, "h1"); err != nil || sum != (state.ApplySummary{}) {
		t.Fatalf("re-apply: %+v %v", sum, err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("re-apply changed the store")
	}
	// Bad documents change nothing.
	for _, bad := range []string{
		`{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.6.0.0/24"}]}]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"web","endpoints":[{"name":"a"},{"name":"a"}]}]}]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"web","endpoints":[{"name":"c","ip":"10.9.9.9"}]}]}]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"web"},{"name":"x","tag":50}]}]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"web"},{"name":"x","subnet":"10.5.0.128/25"}]}]}`,
	} {
		if _, err := s.Apply(ctx, doc(bad), "h1"); err == nil {
			t.Fatalf("accepted %s", bad)
		}
		if etcdtest.Dump(t, s) != before {
			t.Fatalf("rejected document %s changed the store", bad)
		}
	}
	if _, err := state.ParseDocument(strings.NewReader(`{"tenant":[]}`)); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("unknown field accepted: %v", err)
	}
	// Objects absent from the document are deleted.
	if _, err := s.Apply(ctx, doc(`{"tenants":[]}`), "h1"); err != nil {
		t.Fatal(err)
	}
	if d := etcdtest.Dump(t, s); d != "" {
		t.Fatalf("left behind:\n%s", d)
	}
}
