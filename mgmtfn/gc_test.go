package mgmtfn

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// TestGarbageCollectionReadsOnlyItsHost: the periodic pass (this host's
// Docker endpoints, then its reservations) reads this host's index, not the
// network's or the tenant's keys: etcd sends it as much with 1,200 endpoints
// and 300 reservations of other hosts on the same network as without them.
func TestGarbageCollectionReadsOnlyItsHost(t *testing.T) {
	s, e := etcdtest.Store(t)
	p := New(Config{Name: "np", Host: testHost, Store: s, Drivers: map[string]core.Driver{"linuxbridge": &fakeDriver{}},
		Agent: &fakeAgent{}, Log: etcdtest.Log(t)})
	ctx := context.Background()
	dk := s.Docker()
	n, err := dk.Bind(ctx, state.DockerNetwork{Host: testHost, ID: dockerID('a')}, core.Network{Tenant: "t1", Name: "web", Subnet: "10.150.0.0/20"})
	if err != nil {
		t.Fatal(err)
	}
	add := func(host, name string, reserveOnly bool) {
		t.Helper()
		ip, owner, err := dk.ReserveIP(ctx, n.Tenant, n.Name, "", 0, 0, host)
		if err != nil {
			t.Fatal(err)
		}
		if reserveOnly {
			return
		}
		if _, err := dk.CreateEndpoint(ctx, core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: name, IP: ip, Host: host,
			NetNS: "/var/run/docker/netns/" + name, DockerEndpoint: strings.Repeat("e", 64)}, owner); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		add(testHost, fmt.Sprintf("mine%d", i), false)
	}
	add(testHost, "", true)
	known := map[string]bool{strings.Repeat("e", 64): true}
	pass := func() float64 {
		before := etcdtest.Metric(t, e.Endpoint(), "etcd_network_client_grpc_sent_bytes_total")
		dns, err := dk.Networks(ctx, testHost)
		if err != nil {
			t.Fatal(err)
		}
		eps, err := p.dockerEndpoints(ctx, dns)
		if err != nil || len(eps) != 3 {
			t.Fatalf("this host's Docker endpoints: %d, %v", len(eps), err)
		}
		p.collect(ctx, dns, eps, known)
		return etcdtest.Metric(t, e.Endpoint(), "etcd_network_client_grpc_sent_bytes_total") - before
	}
	alone := pass()
	for i := 0; i < 1200; i++ {
		add(fmt.Sprintf("h%d", 2+i%8), fmt.Sprintf("theirs%d", i), false)
	}
	for i := 0; i < 300; i++ {
		add(fmt.Sprintf("h%d", 2+i%8), "", true)
	}
	crowded := pass()
	t.Logf("etcd sent %.0f bytes for the pass alone, %.0f among 1,500 keys of other hosts", alone, crowded)
	if crowded > alone+1024 {
		t.Fatalf("the pass made etcd send %.0f bytes among other hosts' keys, %.0f without: it reads more than this host's", crowded, alone)
	}
}
