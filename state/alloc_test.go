package state_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// checkStore fails the test unless every index copy and the allocator's hint
// agree with the records they stand for.
func checkStore(t *testing.T, s *state.Store) {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string]string{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = string(kv.Value)
	}
	if p := state.StoreProblems(kvs); len(p) > 0 {
		t.Fatalf("the store's indexes disagree with its records:\n%s", strings.Join(p, "\n"))
	}
}

// TestAllocationAcrossThreeHosts: three hosts' stores (each its own client)
// allocate at once in one /22, through netdcli's call and through Docker's
// IPAM (reserve, then create): every address is given once, none is lost, the
// indexes agree, the network then fills to its last address and refuses the
// next, and an address freed in a full block is the next one given.
func TestAllocationAcrossThreeHosts(t *testing.T) {
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "n", Subnet: "10.66.0.0/22", Gateway: "10.66.0.1"}); err != nil {
		t.Fatal(err)
	}
	const each = 120
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for h := 1; h <= 3; h++ {
		c, err := state.Connect(ctx, []string{e.Endpoint()}, 10*time.Second, etcdtest.Log(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		host := fmt.Sprintf("h%d", h)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := c.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: fmt.Sprintf("%s-c%d", host, i), Host: host}, 0); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ip, owner, err := c.Docker().ReserveIP(ctx, "default", "n", "", 0, 0, host)
				if err != nil {
					errs <- err
					return
				}
				if _, err := c.Docker().CreateEndpoint(ctx, core.Endpoint{Tenant: "default", Network: "n", Name: fmt.Sprintf("%s-d%d", host, i),
					IP: ip, Host: host, DockerEndpoint: strings.Repeat("e", 64)}, owner); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eps := distinctIPs(t, s, "default", "n")
	if len(eps) != 6*each || len(allocIPs(t, s, "default", "n")) != 6*each {
		t.Fatalf("%d endpoints, %d addresses allocated, want %d", len(eps), len(allocIPs(t, s, "default", "n")), 6*each)
	}
	for h := 1; h <= 3; h++ {
		mine, err := s.HostEndpoints(ctx, fmt.Sprintf("h%d", h))
		if err != nil || len(mine) != 2*each {
			t.Fatalf("h%d's index holds %d endpoints (%v), want %d", h, len(mine), err, 2*each)
		}
	}
	checkStore(t, s)

	// Fill it: 1024 addresses, less the network, broadcast and gateway.
	added := 0
	for {
		_, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: fmt.Sprintf("fill%d", added), Host: "h1"}, 0)
		if errors.Is(err, core.ErrInUse) && strings.Contains(err.Error(), "no free IP left") {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		added++
	}
	if total := 6*each + added; total != 1021 {
		t.Fatalf("the /22 took %d endpoints before it was full, want 1021", total)
	}
	checkStore(t, s)
	// A freed address in a full block is found, and is the lowest free.
	victim := allocIPs(t, s, "default", "n")["10.66.0.77"]
	if err := s.DeleteEndpoint(ctx, "default", victim); err != nil {
		t.Fatal(err)
	}
	ep, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: "again", Host: "h2"}, 0)
	if err != nil || ep.IP != "10.66.0.77" {
		t.Fatalf("after freeing 10.66.0.77 in a full network: %+v %v", ep, err)
	}
	checkStore(t, s)
}

// sentBy returns how many bytes etcd sent its clients while fn ran.
func sentBy(t *testing.T, e string, fn func()) float64 {
	t.Helper()
	before := etcdtest.Metric(t, e, "etcd_network_client_grpc_sent_bytes_total")
	fn()
	return etcdtest.Metric(t, e, "etcd_network_client_grpc_sent_bytes_total") - before
}

// TestAllocationCostIsFlat: what an allocation reads does not grow with the
// addresses taken: a create in a /20 holding 3,000 endpoints makes etcd send
// at most one block's keys (256) more than for the first, not every key of
// the network.
func TestAllocationCostIsFlat(t *testing.T) {
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "big", Subnet: "10.67.0.0/20"}); err != nil {
		t.Fatal(err)
	}
	create := func(name string) func() {
		return func() {
			if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "big", Name: name, Host: "h1"}, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	first := sentBy(t, e.Endpoint(), create("first"))
	doc := state.Document{Tenants: []state.TenantDocument{{Name: "default", Networks: []state.NetworkDocument{{Name: "big"}}}}}
	nd := &doc.Tenants[0].Networks[0]
	nd.Endpoints = append(nd.Endpoints, state.EndpointDocument{Name: "first"})
	for i := 0; i < 3000; i++ {
		nd.Endpoints = append(nd.Endpoints, state.EndpointDocument{Name: fmt.Sprintf("e%d", i)})
	}
	if _, err := s.Apply(ctx, doc, "h1"); err != nil {
		t.Fatal(err)
	}
	checkStore(t, s)
	later := sentBy(t, e.Endpoint(), create("later"))
	t.Logf("etcd sent %.0f bytes for the first create, %.0f with 3,001 addresses taken", first, later)
	if later > first+16<<10 { // one block: at most 256 keys of about 55 bytes

		t.Fatalf("a create with 3,001 addresses taken made etcd send %.0f bytes, the first %.0f: it reads what is taken", later, first)
	}
	ep, _, err := s.GetEndpoint(ctx, "default", "later")
	if err != nil || net.ParseIP(ep.IP).To4()[2] != 11 {
		t.Fatalf("later endpoint %+v %v: want the lowest free address, in 10.67.11.0/24", ep, err)
	}
}

// TestListingPages: a listing reads etcd in pages at one revision, never in
// one unbounded request, and returns every object in order.
func TestListingPages(t *testing.T) {
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	doc := state.Document{Tenants: []state.TenantDocument{{Name: "default", Networks: []state.NetworkDocument{{Name: "n", Subnet: "10.68.0.0/21"}}}}}
	for i := 0; i < 1201; i++ {
		doc.Tenants[0].Networks[0].Endpoints = append(doc.Tenants[0].Networks[0].Endpoints, state.EndpointDocument{Name: fmt.Sprintf("e%04d", i)})
	}
	if _, err := s.Apply(ctx, doc, "h1"); err != nil {
		t.Fatal(err)
	}
	ranges := func() float64 {
		return etcdtest.Metric(t, e.Endpoint(), `grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}`)
	}
	before := ranges()
	eps, err := s.Endpoints(ctx, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := ranges() - before; got < 3 {
		t.Fatalf("1,201 endpoints listed in %.0f requests: not paged", got)
	}
	if len(eps) != 1201 || eps[0].Name != "e0000" || eps[1200].Name != "e1200" {
		t.Fatalf("listed %d endpoints, first %s", len(eps), eps[0].Name)
	}
	for i := 1; i < len(eps); i++ {
		if eps[i-1].Name >= eps[i].Name {
			t.Fatalf("out of order at %d: %s, %s", i, eps[i-1].Name, eps[i].Name)
		}
	}
}
