package core

import (
	"reflect"
	"testing"
)

func spec(name, ip string) EndpointSpec {
	return EndpointSpec{Endpoint: Endpoint{Tenant: "t", Network: "n", Name: name, IP: ip, MAC: "02:00:00:00:00:01"},
		Net: NetworkSpec{Network{Tenant: "t", Name: "n", Subnet: "10.0.0.0/24", Driver: "linuxbridge"}}, NetNSID: "1:2"}
}

func keys(p Plan) [4][]string {
	var k [4][]string
	for _, n := range p.EnsureNets {
		k[0] = append(k[0], n.Key())
	}
	for _, e := range p.EnsureEPs {
		k[1] = append(k[1], e.Key())
	}
	for _, e := range p.RemoveEPs {
		k[2] = append(k[2], e.Key)
	}
	for _, n := range p.RemoveNets {
		k[3] = append(k[3], n.Key)
	}
	return k
}

func TestReconcile(t *testing.T) {
	a, b := spec("a", "10.0.0.2"), spec("b", "10.0.0.3")
	netw := a.Net
	obsNet := ObservedNetwork{Key: "t/n", Fingerprint: netw.Fingerprint()}
	obs := func(s EndpointSpec, healthy bool) ObservedEndpoint {
		return ObservedEndpoint{Key: s.Key(), Fingerprint: s.Fingerprint(), Healthy: healthy}
	}
	cases := []struct {
		name string
		d    Desired
		a    Actual
		want [4][]string // ensure nets, ensure eps, remove eps, remove nets
	}{
		{"empty", Desired{}, Actual{}, [4][]string{}},
		{"new network and endpoints", Desired{Networks: []NetworkSpec{netw}, Endpoints: []EndpointSpec{b, a}}, Actual{},
			[4][]string{{"t/n"}, {"t/a", "t/b"}, nil, nil}},
		{"all in place: nothing to do (restart adopts)", Desired{Networks: []NetworkSpec{netw}, Endpoints: []EndpointSpec{a}},
			Actual{Networks: map[string]ObservedNetwork{"t/n": obsNet}, Endpoints: map[string]ObservedEndpoint{"t/a": obs(a, true)}},
			[4][]string{}},
		{"unhealthy endpoint is ensured again, not removed", Desired{Networks: []NetworkSpec{netw}, Endpoints: []EndpointSpec{a}},
			Actual{Networks: map[string]ObservedNetwork{"t/n": obsNet}, Endpoints: map[string]ObservedEndpoint{"t/a": obs(a, false)}},
			[4][]string{nil, {"t/a"}, nil, nil}},
		{"changed endpoint is rebuilt", Desired{Networks: []NetworkSpec{netw}, Endpoints: []EndpointSpec{spec("a", "10.0.0.9")}},
			Actual{Networks: map[string]ObservedNetwork{"t/n": obsNet}, Endpoints: map[string]ObservedEndpoint{"t/a": obs(a, true)}},
			[4][]string{nil, {"t/a"}, {"t/a"}, nil}},
		{"stale endpoint and network removed", Desired{},
			Actual{Networks: map[string]ObservedNetwork{"t/n": obsNet}, Endpoints: map[string]ObservedEndpoint{"t/a": obs(a, true)}},
			[4][]string{nil, nil, {"t/a"}, {"t/n"}}},
		{"changed network re-ensured", Desired{Networks: []NetworkSpec{netw}},
			Actual{Networks: map[string]ObservedNetwork{"t/n": {Key: "t/n", Fingerprint: "old"}}},
			[4][]string{{"t/n"}, nil, nil, nil}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := keys(Reconcile(c.d, c.a))
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("plan %v, want %v", got, c.want)
			}
		})
	}
}

func TestNamesFitLinux(t *testing.T) {
	for _, n := range []string{HostIfName("tenant-with-a-very-long-name/endpoint-with-a-long-name"), BridgeName("t/n")} {
		if len(n) > 15 {
			t.Fatalf("%q is longer than IFNAMSIZ-1", n)
		}
	}
	if HostIfName("t/a") == HostIfName("t/b") || HostIfName("t/a") != HostIfName("t/a") {
		t.Fatal("names must be stable and distinct")
	}
}

func TestParseRanges(t *testing.T) {
	rs, err := ParseRanges("200-300, 10-100,150", MaxVLAN)
	if err != nil || len(rs) != 3 || rs[0] != (Range{10, 100}) || !InRanges(rs, 150) || InRanges(rs, 149) {
		t.Fatalf("%v %v", rs, err)
	}
	for _, bad := range []string{"", "0-10", "10-5", "1-5000", "x"} {
		if _, err := ParseRanges(bad, MaxVLAN); err == nil {
			t.Fatalf("accepted %q", bad)
		}
	}
}
