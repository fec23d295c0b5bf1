package agent

import (
	"reflect"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
)

func TestHostMemoryGrace(t *testing.T) {
	const grace = 30 * time.Second
	t0 := time.Unix(1_000_000, 0)
	a := core.HostInfo{Name: "a", VTEP: "10.0.0.1"}
	b := core.HostInfo{Name: "b", VTEP: "10.0.0.2"}
	b2 := core.HostInfo{Name: "b", VTEP: "10.0.0.22"}
	var m hostMemory
	steps := []struct {
		name     string
		at       time.Duration
		grace    time.Duration
		live     []core.HostInfo
		want     []core.HostInfo
		wantNext time.Duration // from t0; -1: none
	}{
		{"both live", 0, grace, []core.HostInfo{b, a}, []core.HostInfo{a, b}, -1},
		{"b's lease gone: kept as last seen", 5 * time.Second, grace, []core.HostInfo{a}, []core.HostInfo{a, b}, 30 * time.Second},
		{"still in grace", 29 * time.Second, grace, []core.HostInfo{a}, []core.HostInfo{a, b}, 30 * time.Second},
		{"grace over: dropped", 30 * time.Second, grace, []core.HostInfo{a}, []core.HostInfo{a}, -1},
		{"b back with a new VTEP", 31 * time.Second, grace, []core.HostInfo{a, b2}, []core.HostInfo{a, b2}, -1},
		{"both gone: the earliest expiry is next", 40 * time.Second, grace, nil, []core.HostInfo{a, b2}, 61 * time.Second},
		{"no grace: gone at once", 41 * time.Second, 0, nil, nil, -1},
	}
	for _, s := range steps {
		got, next := m.update(s.live, t0.Add(s.at), s.grace)
		if !reflect.DeepEqual(got, s.want) {
			t.Errorf("%s: hosts %+v, want %+v", s.name, got, s.want)
		}
		wantNext := time.Time{}
		if s.wantNext >= 0 {
			wantNext = t0.Add(s.wantNext)
		}
		if !next.Equal(wantNext) {
			t.Errorf("%s: next expiry %v, want %v", s.name, next, wantNext)
		}
	}
}

func TestRemotesFor(t *testing.T) {
	nets := map[string]core.Network{
		"t/vx":  {Tenant: "t", Name: "vx", Driver: "linuxbridge", Encap: core.EncapVXLAN, Tag: 5001},
		"t/ovs": {Tenant: "t", Name: "ovs", Driver: "ovs", Encap: core.EncapVXLAN, Tag: 5002},
		"t/far": {Tenant: "t", Name: "far", Driver: "linuxbridge", Encap: core.EncapVXLAN, Tag: 5003},
	}
	ep := func(net, name, host, mac, ip string, attached bool) core.Endpoint {
		e := core.Endpoint{Tenant: "t", Network: net, Name: name, Host: host, MAC: mac, IP: ip}
		if attached {
			e.NetNS = "ns-" + name
		}
		return e
	}
	eps := []core.Endpoint{
		ep("vx", "a1", "a", "02:00:00:00:00:a1", "10.1.0.1", true),
		ep("vx", "c1", "c", "02:00:00:00:00:c1", "10.1.0.3", true),
		ep("vx", "b2", "b", "02:00:00:00:00:b2", "10.1.0.5", true),
		ep("vx", "b1", "b", "02:00:00:00:00:b1", "10.1.0.2", true),
		ep("vx", "b3", "b", "02:00:00:00:00:b3", "10.1.0.6", false), // reserved, not attached
		ep("vx", "d1", "d", "02:00:00:00:00:d1", "10.1.0.4", true),  // d runs ovs only
		ep("vx", "e1", "e", "02:00:00:00:00:e1", "10.1.0.7", true),  // e has no VTEP
		ep("vx", "x1", "x", "02:00:00:00:00:f1", "10.1.0.8", true),  // x is not connected
		ep("ovs", "a2", "a", "02:00:00:00:01:a2", "10.2.0.1", true),
		ep("far", "b9", "b", "02:00:00:00:02:b9", "10.3.0.1", true),  // no endpoint of far on a
		ep("gone", "a9", "a", "02:00:00:00:03:a9", "10.4.0.1", true), // unknown network
	}
	hosts := []core.HostInfo{
		{Name: "a", VTEP: "10.0.0.1", Drivers: []string{"linuxbridge", "ovs"}},
		{Name: "b", VTEP: "10.0.0.2", Drivers: []string{"linuxbridge"}},
		{Name: "c", VTEP: "10.0.0.3", Drivers: []string{"linuxbridge"}},
		{Name: "d", VTEP: "10.0.0.4", Drivers: []string{"ovs"}},
		{Name: "e", Drivers: []string{"linuxbridge"}},
	}
	members := map[string][]core.Endpoint{}
	for _, e := range eps {
		members[e.NetworkKey()] = append(members[e.NetworkKey()], e)
	}
	got := remotesFor("a", nets, members, hosts)
	want := map[string]map[string]core.NetRemotes{
		"linuxbridge": {"t/vx": {
			Endpoints: []core.Remote{
				{MAC: "02:00:00:00:00:b1", IP: "10.1.0.2", Host: "b", VTEP: "10.0.0.2"},
				{MAC: "02:00:00:00:00:b2", IP: "10.1.0.5", Host: "b", VTEP: "10.0.0.2"},
				{MAC: "02:00:00:00:00:c1", IP: "10.1.0.3", Host: "c", VTEP: "10.0.0.3"},
			},
			Hosts: []core.Peer{{Name: "b", VTEP: "10.0.0.2"}, {Name: "c", VTEP: "10.0.0.3"}},
		}},
		"ovs": {"t/ovs": {}}, // local endpoints only: present, with nothing remote
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("remotes:\n got %+v\nwant %+v", got, want)
	}
	if got := remotesFor("z", nets, members, hosts); len(got) != 0 {
		t.Fatalf("a host with no endpoints gets %+v", got)
	}
}
