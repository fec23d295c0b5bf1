package state_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// TestConcurrentCreatesWithTag runs the seed's `-tag N` on endpoint create from
// 8 clients at once: a lost race for an IP (or for the re-tag of an auto-tagged
// network) is retried, never reported as the tag being taken.
func TestConcurrentCreatesWithTag(t *testing.T) {
	for _, tc := range []struct {
		name string
		net  core.Network
	}{
		{"tag set by the user", core.Network{Name: "n", Subnet: "10.2.0.0/23", Tag: 77}},
		{"auto tag re-tagged by the first create", core.Network{Name: "n", Subnet: "10.2.0.0/23"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, e := etcdtest.Store(t)
			ctx := context.Background()
			if _, err := s.CreateNetwork(ctx, tc.net); err != nil {
				t.Fatal(err)
			}
			const workers, each = 8, 25
			var wg sync.WaitGroup
			errs := make(chan error, workers*each)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := state.Connect(ctx, []string{e.Endpoint()}, 10*time.Second, etcdtest.Log(t))
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					for i := 0; i < each; i++ {
						if _, err := c.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: fmt.Sprintf("w%d-e%d", w, i)}, 77); err != nil {
							errs <- err
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			n, _, err := s.GetNetwork(ctx, "default", "n")
			if err != nil || n.Tag != 77 || n.TagAuto {
				t.Fatalf("network %+v, %v: want tag 77 set by the user", n, err)
			}
			eps, err := s.Endpoints(ctx, "default", "n")
			if err != nil {
				t.Fatal(err)
			}
			ips := map[string]bool{}
			for _, ep := range eps {
				ips[ep.IP] = true
			}
			if len(eps) != workers*each || len(ips) != workers*each {
				t.Fatalf("%d endpoints with %d distinct IPs, want %d", len(eps), len(ips), workers*each)
			}
			checkStore(t, s)
		})
	}
}

// TestRetagRefusals: -tag on endpoint create explains which precondition of the
// re-tag failed, and changes nothing.
func TestRetagRefusals(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "a", Subnet: "10.2.0.0/24", Tag: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "b", Subnet: "10.2.1.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "b", Name: "b1"}, 0); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	for _, c := range []struct {
		tag  int
		want string
	}{
		{100, "vlan tag 100 is taken by network default/a"},
		{200, "network default/b already has endpoints, so its tag cannot change"},
	} {
		_, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "b", Name: "b2"}, c.tag)
		if !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("-tag %d: got %v, want %q", c.tag, err, c.want)
		}
		if etcdtest.Dump(t, s) != before {
			t.Fatalf("-tag %d changed the store", c.tag)
		}
	}
}

// allocIPs returns the allocation keys of a network and their owners.
// distinctIPs returns the endpoints of a network and fails the test if two
// of them hold one address.
func distinctIPs(t *testing.T, s *state.Store, tenant, network string) []core.Endpoint {
	t.Helper()
	eps, err := s.Endpoints(context.Background(), tenant, network)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, ep := range eps {
		if other, ok := seen[ep.IP]; ok {
			t.Fatalf("IP %s given to %s and %s", ep.IP, other, ep.Name)
		}
		seen[ep.IP] = ep.Name
	}
	return eps
}

func allocIPs(t *testing.T, s *state.Store, tenant, network string) map[string]string {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix+"alloc/ip/"+tenant+"/"+network+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range r.Kvs {
		k := string(kv.Key)
		out[k[strings.LastIndexByte(k, '/')+1:]] = string(kv.Value)
	}
	return out
}

func revision(t testing.TB, s *state.Store) int64 {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix+"nothing")
	if err != nil {
		t.Fatal(err)
	}
	return r.Header.Revision
}

// TestAttachMovesHostOnRoutedNetwork: on an ipvlan l3 network every host owns a
// block of the subnet, so an endpoint attached on another host takes an address
// of that host's block, in the transaction that frees its old one.
func TestAttachMovesHostOnRoutedNetwork(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	_, err := s.CreateNetwork(ctx, core.Network{Name: "r", Driver: "ipvlan", Subnet: "10.8.0.0/24", Options: map[string]string{"mode": "l3", "parent": "eth9"}})
	if err != nil {
		t.Fatal(err)
	}
	ep, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "r", Name: "mover", Host: "h1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ep.IP != "10.8.0.1" {
		t.Fatalf("first endpoint of h1 got %s, want 10.8.0.1 in h1's block 10.8.0.0/28", ep.IP)
	}
	// h2 gets its block with its first endpoint.
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "r", Name: "stay", Host: "h2"}, 0); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	// An explicit address outside h2's block is refused and changes nothing.
	_, err = s.Attach(ctx, "default", "mover", state.Attachment{NetNS: "ns1", Host: "h2", IP: "10.8.0.5"})
	if !errors.Is(err, core.ErrInvalid) || !strings.Contains(err.Error(), "outside 10.8.0.16/28, the block of host h2") {
		t.Fatalf("IP outside the new block: got %v", err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("refused attach changed the store")
	}
	rev := revision(t, s)
	moved, err := s.Attach(ctx, "default", "mover", state.Attachment{NetNS: "ns1", Host: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Host != "h2" || moved.IP != "10.8.0.18" {
		t.Fatalf("moved endpoint %+v: want host h2 and 10.8.0.18, the next free address of h2's block", moved)
	}
	if got := revision(t, s); got != rev+1 {
		t.Fatalf("the move took %d transactions, want 1", got-rev)
	}
	stored, _, _ := s.GetEndpoint(ctx, "default", "mover")
	if stored.IP != moved.IP || stored.Host != "h2" {
		t.Fatalf("stored %+v", stored)
	}
	if got := allocIPs(t, s, "default", "r"); len(got) != 2 || got["10.8.0.18"] != "mover" || got["10.8.0.17"] != "stay" {
		t.Fatalf("allocations after the move: %v (the old address must be free)", got)
	}
	// An explicit address inside the new block is taken as given.
	if _, err := s.Detach(ctx, "default", "mover", ""); err != nil {
		t.Fatal(err)
	}
	back, err := s.Attach(ctx, "default", "mover", state.Attachment{NetNS: "ns1", Host: "h1", IP: "10.8.0.9"})
	if err != nil || back.IP != "10.8.0.9" || back.Host != "h1" {
		t.Fatalf("move back with an explicit IP: %+v, %v", back, err)
	}
	if got := allocIPs(t, s, "default", "r"); len(got) != 2 || got["10.8.0.9"] != "mover" {
		t.Fatalf("allocations after moving back: %v", got)
	}
	checkStore(t, s)
}

// TestRoutedRefusalsAllocateNoBlock: an address outside the block a new host
// would get is refused before the block is written: the store is unchanged.
func TestRoutedRefusalsAllocateNoBlock(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	_, err := s.CreateNetwork(ctx, core.Network{Name: "r", Driver: "ipvlan", Subnet: "10.8.0.0/24", Options: map[string]string{"mode": "l3", "parent": "eth9"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "r", Name: "e1", Host: "h1"}, 0); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	_, err = s.CreateEndpoint(ctx, core.Endpoint{Network: "r", Name: "e2", Host: "h3", IP: "10.8.0.3"}, 0)
	if !errors.Is(err, core.ErrInvalid) || !strings.Contains(err.Error(), "outside 10.8.0.16/28, the block of host h3") {
		t.Fatalf("create: %v", err)
	}
	_, err = s.Attach(ctx, "default", "e1", state.Attachment{NetNS: "x", Host: "h3", IP: "10.8.0.3"})
	if !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("attach: %v", err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatalf("refusals changed the store:\n%s", etcdtest.Dump(t, s))
	}
	// The first endpoint of a host writes its block in its own transaction.
	rev := revision(t, s)
	e3, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "r", Name: "e3", Host: "h3"}, 0)
	if err != nil || e3.IP != "10.8.0.17" {
		t.Fatalf("e3 = %+v, %v", e3, err)
	}
	if got := revision(t, s) - rev; got != 1 {
		t.Fatalf("first endpoint of h3 took %d transactions, want 1", got)
	}
}

// TestRoutedBlockNeverLargerThanSubnet: the default block of a routed network
// is 4 bits longer than its subnet, at most /28 — but never larger than a
// subnet smaller than that (the fuzzer found a /30 given /28 blocks, whose
// addresses and routes reached past the subnet).
func TestRoutedBlockNeverLargerThanSubnet(t *testing.T) {
	for subnet, want := range map[string]int{"10.8.0.0/16": 20, "10.8.0.0/24": 28, "10.8.0.0/26": 28, "10.8.0.0/29": 29, "10.8.0.0/30": 30} {
		n := core.Network{Driver: "ipvlan", Subnet: subnet, Options: map[string]string{"mode": "l3"}}
		if got, routed := n.HostBlockLen(); !routed || got != want {
			t.Errorf("%s: blocks /%d, want /%d", subnet, got, want)
		}
	}
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	_, err := s.Apply(ctx, parse(t, `{"tenants":[{"name":"default","networks":[{"name":"tiny","driver":"ipvlan","subnet":"10.8.0.0/30",
	  "options":{"mode":"l3"},"endpoints":[{"name":"a","host":"h1"},{"name":"b","host":"h1"}]}]}]}`), "h1")
	if err != nil {
		t.Fatal(err)
	}
	got := allocIPs(t, s, "default", "tiny")
	if len(got) != 2 || got["10.8.0.1"] != "a" || got["10.8.0.2"] != "b" {
		t.Fatalf("addresses %v, want .1 and .2 of the /30", got)
	}
	_, err = s.Apply(ctx, parse(t, `{"tenants":[{"name":"default","networks":[{"name":"tiny","endpoints":[{"name":"a","host":"h1"},{"name":"b","host":"h1"},{"name":"c","host":"h1"}]}]}]}`), "h1")
	if !errors.Is(err, core.ErrInUse) {
		t.Fatalf("a third endpoint in a /30: %v", err)
	}
}

// TestAttachmentValidated: a netns path escaping /var/run/netns, a host label
// that is not a name, or a container reference JSON would rewrite is refused
// when written — by create, attach and a document alike — and changes nothing.
func TestAttachmentValidated(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "n", Subnet: "10.2.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: "e"}, 0); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	for _, a := range []state.Attachment{
		{NetNS: "/var/run/netns/../../../proc/1/ns/net"},
		{NetNS: "a/b"},
		{NetNS: "ns1", Host: "bad host"},
		{ContainerName: "web\x001"},
		{ContainerName: "web\xff"},
	} {
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: "x", NetNS: a.NetNS, Host: a.Host, ContainerName: a.ContainerName, ContainerID: a.ContainerName}, 0); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("create with %+v: %v", a, err)
		}
		if _, err := s.Attach(ctx, "default", "e", a); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("attach %+v: %v", a, err)
		}
		d := state.Document{Tenants: []state.TenantDocument{{Name: "default", Networks: []state.NetworkDocument{{Name: "n",
			Endpoints: []state.EndpointDocument{{Name: "e", NetNS: a.NetNS, Host: a.Host, Container: a.ContainerName}}}}}}}
		if _, err := s.Apply(ctx, d, "h1"); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("document with %+v: %v", a, err)
		}
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("refusals changed the store")
	}
}
