package mgmtfn

import (
	"errors"
	"testing"

	"github.com/netplugin/netplugin/core"
)

func TestParseOptions(t *testing.T) {
	n, err := parseOptions(map[string]any{
		"com.docker.network.enable_ipv6": false,
		"com.docker.network.generic": map[string]any{"tenant": "blue", "tag": "200", "tag-type": "vlan",
			"driver": "macvlan", "parent": "eth1", "network": "web"},
	})
	if err != nil || n.Tenant != "blue" || n.Tag != 200 || n.Driver != "macvlan" || n.Options["parent"] != "eth1" || n.Name != "web" {
		t.Fatalf("%+v %v", n, err)
	}
	for _, bad := range []map[string]any{
		{"com.docker.network.generic": map[string]any{"bogus": "1"}},
		{"com.docker.network.generic": map[string]any{"tag": "x"}},
		{"com.docker.network.enable_ipv6": true},
	} {
		if _, err := parseOptions(bad); !errors.Is(err, core.ErrInvalid) {
			t.Fatalf("%v accepted: %v", bad, err)
		}
	}
}

func TestPoolIDAndAddresses(t *testing.T) {
	pool, sub := parsePoolID(poolID("10.1.0.0/16", "10.1.2.0/24"))
	if pool != "10.1.0.0/16" || sub != "10.1.2.0/24" {
		t.Fatalf("%q %q", pool, sub)
	}
	if pool, sub := parsePoolID(poolID("10.1.0.0/16", "")); pool != "10.1.0.0/16" || sub != "" {
		t.Fatalf("%q %q", pool, sub)
	}
	// Docker hands gateways as CIDR; Join must answer a plain IP.
	if plainIP("10.1.0.1/16") != "10.1.0.1" || plainIP("10.1.0.1") != "10.1.0.1" {
		t.Fatal("plainIP")
	}
	if endpointName("0123456789abcdef0123") != "0123456789ab" {
		t.Fatal("endpointName")
	}
}

func TestHasOwnMAC(t *testing.T) {
	for _, c := range []struct {
		n    core.Network
		want bool
	}{
		{core.Network{Driver: "linuxbridge"}, true},
		{core.Network{Driver: "ovs"}, true},
		{core.Network{Driver: "macvlan"}, true},
		{core.Network{Driver: "macvlan", Options: map[string]string{"mode": "passthru"}}, false},
		{core.Network{Driver: "ipvlan"}, false},
		{core.Network{Driver: "hostnic"}, false},
	} {
		if got := hasOwnMAC(c.n); got != c.want {
			t.Errorf("%s %v: %v, want %v", c.n.Driver, c.n.Options, got, c.want)
		}
	}
}
