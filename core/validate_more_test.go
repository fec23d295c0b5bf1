package core

import (
	"errors"
	"testing"
)

func TestNetNSPath(t *testing.T) {
	good := map[string]string{
		"ns1":                 "/var/run/netns/ns1",
		"a.b-c_d":             "/var/run/netns/a.b-c_d",
		"/var/run/netns/x":    "/var/run/netns/x",
		"/proc/123/ns/net":    "/proc/123/ns/net",
		"/run/docker/netns/a": "/run/docker/netns/a",
	}
	for in, want := range good {
		got, err := NetNSPath(in)
		if err != nil || got != want {
			t.Errorf("NetNSPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "x/../../etc", "/var/run/netns/../../../proc/1/ns/net",
		"relative/path", "/a//b", "/a/./b", "/a/", "-x", "a b"} {
		if _, err := NetNSPath(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("NetNSPath(%q): want ErrInvalid, got %v", bad, err)
		}
	}
}

// TestDriverOptionsRefused: every built-in driver refuses options it does not
// know; linuxbridge and ovs have none.
func TestDriverOptionsRefused(t *testing.T) {
	base := Network{Tenant: "t", Name: "n", Encap: EncapVLAN, Tag: 10, Subnet: "10.1.0.0/24"}
	for drv, bad := range map[string]string{"linuxbridge": "parent", "ovs": "mode", "macvlan": "nic", "ipvlan": "vlan", "hostnic": "parent"} {
		n := base
		n.Driver, n.Options = drv, map[string]string{bad: "x"}
		if err := ValidateNetwork(n); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s with option %s: want ErrInvalid, got %v", drv, bad, err)
		}
	}
	n := base
	n.Driver, n.Options = "macvlan", map[string]string{"parent": "eth1", "mode": "bridge", "vlan": "5"}
	if err := ValidateNetwork(n); err != nil {
		t.Errorf("macvlan with its own options: %v", err)
	}
}
