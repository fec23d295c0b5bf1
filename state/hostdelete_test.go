package state_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// TestDeleteHost: a registered host cannot be deleted; once its lease is gone,
// deleting it frees its endpoints' addresses and its routed blocks and leaves
// every other host's objects alone. Running it again is a no-op.
func TestDeleteHost(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "flat", Subnet: "10.9.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "routed", Driver: "ipvlan", Subnet: "10.9.16.0/20",
		Options: map[string]string{"parent": "eth1", "mode": "l3"}}); err != nil {
		t.Fatal(err)
	}
	for i, e := range []core.Endpoint{{Network: "flat", Name: "g1", Host: "gone"}, {Network: "flat", Name: "k1", Host: "kept"},
		{Network: "routed", Name: "g2", Host: "gone", NetNS: "x"}, {Network: "routed", Name: "k2", Host: "kept"}} {
		if _, err := s.CreateEndpoint(ctx, e, 0); err != nil {
			t.Fatalf("endpoint %d: %v", i, err)
		}
	}
	sess, err := s.Register(ctx, core.HostInfo{Name: "gone"}, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	if _, err := s.DeleteHost(ctx, "gone"); !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), "registered") {
		t.Fatalf("delete of a live host: want a refusal, got %v", err)
	}
	if _, err := s.DeleteHost(ctx, "a/b"); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("bad label: %v", err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("a refused delete changed the store")
	}
	sess.Revoke(ctx)
	d, err := s.DeleteHost(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	if d.Endpoints != 2 || d.Blocks != 1 {
		t.Fatalf("deleted %+v, want 2 endpoints and 1 block", d)
	}
	eps, _ := s.Endpoints(ctx, "", "")
	if len(eps) != 2 {
		t.Fatalf("endpoints left: %v", eps)
	}
	for _, e := range eps {
		if e.Host != "kept" {
			t.Fatalf("endpoint of the deleted host left: %+v", e)
		}
	}
	ips, _ := s.Client().Get(ctx, state.Prefix+"alloc/ip/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	blocks, _ := s.Client().Get(ctx, state.BlockPrefix, clientv3.WithPrefix())
	if ips.Count != 2 || len(blocks.Kvs) != 1 || string(blocks.Kvs[0].Value) != "kept" {
		t.Fatalf("allocations left: %d IPs, blocks %v", ips.Count, blocks.Kvs)
	}
	again := etcdtest.Dump(t, s)
	if d, err := s.DeleteHost(ctx, "gone"); err != nil || d != (state.HostDeleted{}) {
		t.Fatalf("second delete: %+v %v", d, err)
	}
	if etcdtest.Dump(t, s) != again {
		t.Fatal("a second delete changed the store")
	}
}
