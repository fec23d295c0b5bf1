package state_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

const (
	dockerA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	dockerB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func value(t *testing.T, s *state.Store, key string) string {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix+key)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return ""
	}
	return string(r.Kvs[0].Value)
}

// TestDockerAuxAddressesShared: two hosts' Docker networks of one network name
// the same --aux-address; it is reserved once, stays while either uses it, and
// goes with its last user, as does the network Docker made.
func TestDockerAuxAddressesShared(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	want := core.Network{Tenant: "t1", Subnet: "10.141.0.0/24", Gateway: "10.141.0.1"}
	n, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h1", ID: dockerA, Aux: []string{"10.141.0.5"}}, want)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h2", ID: dockerB, Aux: []string{"10.141.0.5", "10.141.0.6"}}, want); err != nil {
		t.Fatalf("second host with the same aux address: %v", err)
	}
	aux := func(ip string) string { return value(t, s, "alloc/ip/t1/"+n.Name+"/"+ip) }
	if aux("10.141.0.5") == "" || aux("10.141.0.6") == "" {
		t.Fatalf("aux addresses not reserved: %q %q", aux("10.141.0.5"), aux("10.141.0.6"))
	}
	// An endpoint cannot take an aux address.
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: n.Name, Name: "ep1", IP: "10.141.0.6"}, 0); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("endpoint on an aux address: %v", err)
	}
	if err := s.Docker().Unbind(ctx, "h2", dockerB); err != nil {
		t.Fatal(err)
	}
	if aux("10.141.0.5") == "" {
		t.Fatal("the first host's aux address went with the second host's network")
	}
	if aux("10.141.0.6") != "" {
		t.Fatal("an aux address only the second host used outlived its network")
	}
	if _, _, err := s.GetNetwork(ctx, "t1", n.Name); err != nil {
		t.Fatalf("network gone while host h1 uses it: %v", err)
	}
	if err := s.Docker().Unbind(ctx, "h1", dockerA); err != nil {
		t.Fatal(err)
	}
	if d := etcdtest.Dump(t, s); strings.Contains(d, "/alloc/") || strings.Contains(d, "/config/networks/") {
		t.Fatalf("left behind after the last Docker network went:\n%s", d)
	}
	checkStore(t, s)
}

// TestDockerAddressHeldUntilReleased: Docker deletes an endpoint, then releases
// its address. Until the release the address is nobody else's, and the release
// frees exactly that hold: repeated, or arriving when a newer endpoint owns the
// address, it changes nothing.
func TestDockerAddressHeldUntilReleased(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	n, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h1", ID: dockerA},
		core.Network{Tenant: "t1", Subnet: "10.142.0.0/24", Gateway: "10.142.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	create := func(name string) core.Endpoint {
		t.Helper()
		ip, owner, err := s.Docker().ReserveIP(ctx, "t1", n.Name, "", 0, 0, "h1")
		if err != nil {
			t.Fatal(err)
		}
		ep, err := s.Docker().CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: n.Name, Name: name, IP: ip, Host: "h1",
			DockerEndpoint: strings.Repeat(name[len(name)-1:], 64)}, owner)
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	e1 := create("e1")
	if _, err := s.Docker().DeleteEndpoint(ctx, "t1", "e1", "h1", true); err != nil {
		t.Fatal(err)
	}
	e2 := create("e2")
	if e2.IP == e1.IP {
		t.Fatalf("the address of a deleted endpoint went to the next one before Docker released it")
	}
	if owner, err := s.Docker().ReleaseIP(ctx, "t1", n.Name, e1.IP, "h1"); err != nil || owner != "" {
		t.Fatalf("release of the held address: %q %v", owner, err)
	}
	e3 := create("e3")
	if e3.IP != e1.IP {
		t.Fatalf("released address not given out again: %s, want %s", e3.IP, e1.IP)
	}
	before := etcdtest.Dump(t, s)
	// A release again (late or repeated) finds an endpoint: it is not freed.
	if owner, err := s.Docker().ReleaseIP(ctx, "t1", n.Name, e1.IP, "h1"); err != nil || owner != "e3" {
		t.Fatalf("late release: %q %v", owner, err)
	}
	if owner, err := s.Docker().ReleaseIP(ctx, "t1", n.Name, e2.IP, "h2"); err != nil || owner != "e2" {
		t.Fatalf("another host's release: %q %v", owner, err)
	}
	if after := etcdtest.Dump(t, s); after != before {
		t.Fatalf("releases of owned addresses changed the store:\n%s\n%s", before, after)
	}
	// A hold Docker never releases is listed for garbage collection.
	if _, err := s.Docker().DeleteEndpoint(ctx, "t1", "e2", "h1", true); err != nil {
		t.Fatal(err)
	}
	res, err := s.Docker().HostReservations(ctx, "h1")
	if err != nil || len(res) != 1 || !res[0].Held || res[0].IP != e2.IP || time.Since(res[0].Since) > time.Minute {
		t.Fatalf("reservations: %+v %v", res, err)
	}
	if err := s.Docker().DropReservation(ctx, res[0]); err != nil {
		t.Fatal(err)
	}
	r, err := s.Client().Get(ctx, state.Prefix+"alloc/ip/t1/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 1 {
		t.Fatalf("%d addresses left, want e3's: %v", r.Count, err)
	}
	checkStore(t, s)
}

// TestRenameMovesEverything: the rename of a network Docker made moves its
// endpoints, addresses, host blocks (routed networks), Docker mappings and
// their index, and leaves nothing under the provisional name.
func TestRenameMovesEverything(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	n, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h1", ID: dockerA, Aux: []string{"10.143.0.250"}},
		core.Network{Tenant: "t1", Subnet: "10.143.0.0/24", Driver: "ipvlan", Options: map[string]string{"parent": "eth9", "mode": "l3"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h2", ID: dockerB}, core.Network{Tenant: "t1", Subnet: "10.143.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	ep, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: n.Name, Name: "ep1", Host: "h1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Docker().Rename(ctx, "t1", n.Name, "web"); err != nil {
		t.Fatal(err)
	}
	d := etcdtest.Dump(t, s)
	if strings.Contains(d, n.Name) {
		t.Fatalf("keys or values still name %s after the rename:\n%s", n.Name, d)
	}
	for _, k := range []string{"alloc/block/t1/web/10.143.0.0", "alloc/ip/t1/web/" + ep.IP, "alloc/ip/t1/web/10.143.0.250",
		"dockerusers/t1/web/h1/" + dockerA, "dockerusers/t1/web/h2/" + dockerB} {
		if value(t, s, k) == "" {
			t.Errorf("%s missing after the rename:\n%s", k, d)
		}
	}
	if got, _, err := s.GetEndpoint(ctx, "t1", "ep1"); err != nil || got.Network != "web" {
		t.Fatalf("endpoint after the rename: %+v %v", got, err)
	}
	for _, h := range []struct{ host, id string }{{"h1", dockerA}, {"h2", dockerB}} {
		if dn, err := s.Docker().Network(ctx, h.host, h.id); err != nil || dn.Network != "web" {
			t.Fatalf("mapping of %s after the rename: %+v %v", h.host, dn, err)
		}
	}
	checkStore(t, s)
}

// TestRenameLosesNoConcurrentWrite: endpoints created and joined while the
// rename runs are all found under the new name, none is lost or left under the
// old one.
func TestRenameLosesNoConcurrentWrite(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		id := strings.Repeat(string(rune('0'+round)), 64)
		n, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h1", ID: id}, core.Network{Tenant: "t1", Subnet: fmt.Sprintf("10.144.%d.0/24", round)})
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("net%d", round)
		stop := make(chan struct{})
		done := make(chan []string)
		go func() {
			var made []string
			for i := 0; ; i++ {
				select {
				case <-stop:
					done <- made
					return
				default:
				}
				if len(made) == 25 { // keep the rename within one transaction
					time.Sleep(time.Millisecond)
					continue
				}
				dn, err := s.Docker().Network(ctx, "h1", id)
				if err != nil {
					continue
				}
				epName := fmt.Sprintf("r%de%d", round, i)
				ip, owner, err := s.Docker().ReserveIP(ctx, "t1", dn.Network, "", 0, 0, "h1")
				if err != nil {
					continue // renamed under us: Docker's call fails, nothing is left
				}
				if _, err := s.Docker().CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: dn.Network, Name: epName, IP: ip, Host: "h1",
					DockerEndpoint: strings.Repeat("e", 64)}, owner); err != nil {
					_, _ = s.Docker().ReleaseIP(ctx, "t1", dn.Network, ip, "h1")
					_, _ = s.Docker().ReleaseIP(ctx, "t1", name, ip, "h1")
					continue
				}
				for {
					ep, rev, err := s.GetEndpoint(ctx, "t1", epName)
					if err != nil {
						t.Error(err)
						break
					}
					if _, err := s.Docker().AttachNetNS(ctx, ep, rev, "/var/run/docker/netns/"+epName); err == nil {
						break
					}
				}
				made = append(made, epName)
			}
		}()
		time.Sleep(5 * time.Millisecond)
		for {
			err := s.Docker().Rename(ctx, "t1", n.Name, name)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "try again") {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond)
		close(stop)
		made := <-done
		for _, e := range made {
			ep, _, err := s.GetEndpoint(ctx, "t1", e)
			if err != nil || ep.Network != name || ep.NetNS == "" {
				t.Fatalf("round %d: endpoint %s after the rename: %+v %v", round, e, ep, err)
			}
			if v := value(t, s, "alloc/ip/t1/"+name+"/"+ep.IP); v != e {
				t.Fatalf("round %d: address of %s is %q", round, e, v)
			}
		}
		if d := etcdtest.Dump(t, s); strings.Contains(d, n.Name) {
			t.Fatalf("round %d: keys left under %s:\n%s", round, n.Name, d)
		}
		checkStore(t, s)
	}
}

// TestUnbindDropsOrphanReservations: Docker removes a network only after its
// endpoints are gone and released; what the host still reserves there then
// (Docker died between DeleteEndpoint and ReleaseAddress) goes with the
// network instead of keeping it alive.
func TestUnbindDropsOrphanReservations(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	n, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h1", ID: dockerA}, core.Network{Tenant: "t1", Subnet: "10.156.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	ip, owner, err := s.Docker().ReserveIP(ctx, "t1", n.Name, "", 0, 0, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker().CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: n.Name, Name: "e1", IP: ip, Host: "h1",
		DockerEndpoint: strings.Repeat("1", 64)}, owner); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker().DeleteEndpoint(ctx, "t1", "e1", "h1", true); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Docker().ReserveIP(ctx, "t1", n.Name, "", 0, 0, "h1"); err != nil { // never taken
		t.Fatal(err)
	}
	// A netdcli endpoint on the network is not the plugin's to delete.
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: n.Name, Name: "manual", Host: "h1"}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker().DeleteEndpoint(ctx, "t1", "manual", "h1", true); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("DeleteDockerEndpoint of a netdcli endpoint: %v", err)
	}
	if err := s.DeleteEndpoint(ctx, "t1", "manual"); err != nil {
		t.Fatal(err)
	}
	if err := s.Docker().Unbind(ctx, "h1", dockerA); err != nil {
		t.Fatal(err)
	}
	if d := etcdtest.Dump(t, s); strings.Contains(d, "/alloc/") || strings.Contains(d, "/config/networks/") {
		t.Fatalf("left behind after the network went:\n%s", d)
	}
	checkStore(t, s)
}
