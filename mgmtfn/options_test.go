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
	for _, c := range []struct {
		in   string
		want poolID
	}{
		{"netplugin|0123456789abcdef|10.1.0.0/16|10.1.2.0/24", poolID{"0123456789abcdef", "10.1.0.0/16", "10.1.2.0/24"}},
		{"netplugin|0123456789abcdef|10.1.0.0/16|", poolID{"0123456789abcdef", "10.1.0.0/16", ""}},
		{"10.1.0.0/16|10.1.2.0/24", poolID{"", "10.1.0.0/16", "10.1.2.0/24"}}, // an older version's
		{"10.1.0.0/16|", poolID{"", "10.1.0.0/16", ""}},
	} {
		got, err := parsePoolID(c.in)
		if err != nil || got != c.want || got.String() != c.in {
			t.Errorf("%q: %+v %v", c.in, got, err)
		}
	}
	for _, bad := range []string{"", "|", "10.1.0.1/16|", "10.1.0.0/16|10.2.0.0/24", "10.1.0.0/24|10.1.0.0/16",
		"netplugin|xyz|10.1.0.0/16|", "netplugin|0123456789abcdef|nonsense|", "a|b|c", "10.1.0.0/16"} {
		if id, err := parsePoolID(bad); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("%q accepted: %+v", bad, id)
		}
	}
	if id := (poolID{nonce: newNonce(), subnet: "10.1.0.0/16"}); !validNonce(id.nonce) {
		t.Fatalf("nonce %q", id.nonce)
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
