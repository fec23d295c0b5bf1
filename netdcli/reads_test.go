package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// TestGetReadsOneObject: `get` of one endpoint or one network reads what
// that object needs (its record, its status, its network's count), not the
// cluster: etcd sends it about as much with 800 other endpoints and their
// status in the store as with none.
func TestGetReadsOneObject(t *testing.T) {
	s, e := etcdtest.Store(t)
	c := &runner{t: t, url: e.Endpoint()}
	ctx := context.Background()
	c.ok("-oper", "create", "-construct", "tenant", "blue")
	c.ok("-oper", "create", "-construct", "network", "-tenant", "blue", "-subnet", "10.61.0.0/20", "web")
	c.ok("-oper", "create", "-construct", "endpoint", "-net-id", "web", "-netns", "nsprobe", "probe")
	putStatus := func(epKey, host string) {
		if _, err := s.Client().Put(ctx, state.StatusPrefix+epKey+"/"+host, `{"host":"`+host+`","state":"up"}`); err != nil {
			t.Fatal(err)
		}
	}
	putStatus("blue/probe", "testhost")
	sent := func(args ...string) (float64, string) {
		before := etcdtest.Metric(t, e.Endpoint(), "etcd_network_client_grpc_sent_bytes_total")
		out := c.ok(args...)
		return etcdtest.Metric(t, e.Endpoint(), "etcd_network_client_grpc_sent_bytes_total") - before, out
	}
	getEP := []string{"-oper", "get", "-construct", "endpoint", "probe"}
	getNet := []string{"-oper", "get", "-construct", "network", "web"}
	ep0, out := sent(getEP...)
	if !strings.Contains(out, "up@testhost") {
		t.Fatalf("get endpoint:\n%s", out)
	}
	net0, _ := sent(getNet...)

	// 800 more endpoints in the same network, each with a status.
	doc := state.Document{Tenants: []state.TenantDocument{{Name: "blue", Networks: []state.NetworkDocument{{Name: "web"}}}}}
	doc.Tenants[0].Networks[0].Endpoints = append(doc.Tenants[0].Networks[0].Endpoints, state.EndpointDocument{Name: "probe", NetNS: "nsprobe"})
	for i := 0; i < 800; i++ {
		doc.Tenants[0].Networks[0].Endpoints = append(doc.Tenants[0].Networks[0].Endpoints,
			state.EndpointDocument{Name: fmt.Sprintf("filler-%d", i), NetNS: fmt.Sprintf("ns%d", i), Host: fmt.Sprintf("h%d", i%40)})
	}
	if _, err := s.Apply(ctx, doc, "testhost"); err != nil {
		t.Fatal(err)
	}
	ops := []clientv3.Op{}
	for i := 0; i < 800; i++ {
		ops = append(ops, clientv3.OpPut(state.StatusPrefix+fmt.Sprintf("blue/filler-%d/h%d", i, i%40), `{"state":"up"}`))
		if len(ops) == 100 {
			if _, err := s.Client().Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	time.Sleep(100 * time.Millisecond)
	ep1, out := sent(getEP...)
	if !strings.Contains(out, "up@testhost") {
		t.Fatalf("get endpoint:\n%s", out)
	}
	net1, out := sent(getNet...)
	if !strings.Contains(out, " 801") {
		t.Fatalf("get network does not count 801 endpoints:\n%s", out)
	}
	t.Logf("etcd sent %.0f then %.0f bytes for one endpoint, %.0f then %.0f for one network", ep0, ep1, net0, net1)
	for _, m := range []struct {
		what        string
		empty, full float64
	}{{"endpoint", ep0, ep1}, {"network", net0, net1}} {
		if m.full > m.empty+2048 {
			t.Errorf("get of one %s: etcd sent %.0f bytes with 800 other endpoints, %.0f without: it reads more than the object", m.what, m.full, m.empty)
		}
	}
}
