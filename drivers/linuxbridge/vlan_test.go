package linuxbridge

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/lab"
)

// Without --uplink a VLAN network, and without --vtep-ip a VXLAN network,
// stays on its host and the driver says so; with --uplink naming no
// interface, ensuring a VLAN network fails clearly and leaves nothing behind.
func TestHostLocalNotes(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	vlanNet := core.NetworkSpec{Network: core.Network{Tenant: p, Name: "v", Driver: Name, Encap: core.EncapVLAN, Tag: 10, Subnet: "10.89.0.0/24"}}
	vxNet := core.NetworkSpec{Network: core.Network{Tenant: p, Name: "x", Driver: Name, Encap: core.EncapVXLAN, Tag: 10, Subnet: "10.89.1.0/24"}}
	plain, err := New(testLog(), Config{Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := plain.NetworkNote(vlanNet); got != "host-local: no --uplink on host h1" {
		t.Errorf("note of a VLAN network without uplink: %q", got)
	}
	if got := plain.NetworkNote(vxNet); got != "host-local: no --vtep-ip on host h1" {
		t.Errorf("note of a VXLAN network without VTEP: %q", got)
	}
	spans, err := New(testLog(), Config{Host: "h1", VTEP: "10.89.9.1", Uplink: "eth9"})
	if err != nil {
		t.Fatal(err)
	}
	if n1, n2 := spans.NetworkNote(vlanNet), spans.NetworkNote(vxNet); n1 != "" || n2 != "" {
		t.Errorf("notes with uplink and VTEP: %q %q", n1, n2)
	}
	for _, bad := range []Config{{Host: "h", VTEP: "10.1.1"}, {Host: "h", MTU: 100}, {Host: "h", Uplink: "a/b"}} {
		if _, err := New(testLog(), bad); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("config %+v: %v", bad, err)
		}
	}

	ns := nstest.NS(t, p+"h")
	on(t, ns, func() {
		d, err := New(testLog(), Config{Host: p, Uplink: "nosuch0"})
		if err != nil {
			t.Fatal(err)
		}
		err = d.EnsureNetwork(context.Background(), vlanNet)
		if !errors.Is(err, core.ErrNotFound) || !strings.Contains(err.Error(), "uplink nosuch0 (--uplink) does not exist") {
			t.Fatalf("missing uplink: %v", err)
		}
		_ = d.RemoveNetwork(context.Background(), core.ObservedNetwork{Key: vlanNet.Key()})
		if left := nstest.MarkedLinks(t, p); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
}

// TestUplinkVLAN needs a kernel with 802.1Q: scripts/kernel-lab.sh ./drivers/linuxbridge/
// VLAN networks span hosts through their tag on --uplink; two networks with
// one subnet stay apart by tag; an operator's own subinterface is refused and
// left alone; the subinterface goes with the network.
func TestUplinkVLAN(t *testing.T) {
	nstest.RequireRoot(t)
	lab.RequireKernel(t, "CONFIG_VLAN_8021Q", lab.ProbeLink(context.Background(), "vlan", "id", "5"))
	p := nstest.Prefix()
	hs := underlay(t, p, 2, func(c *Config) { c.VTEP, c.Uplink = "", "ul0" })
	h1, h2 := hs[0], hs[1]
	net := func(tenant string, tag int) core.NetworkSpec {
		return core.NetworkSpec{Network: core.Network{Tenant: tenant, Name: "v", Driver: Name, Encap: core.EncapVLAN, Tag: tag, Subnet: "10.88.2.0/24"}}
	}
	v100, v200 := net(p, 100), net(p+"x", 200)
	mk := func(name, ip, mac string, n core.NetworkSpec) core.EndpointSpec {
		ns := nstest.NS(t, p+name)
		return core.EndpointSpec{Endpoint: core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: name, IP: ip, MAC: mac},
			Net: n, NetNSPath: nstest.Path(ns), NetNSID: nsID(t, nstest.Path(ns))}
	}
	a := mk("a", "10.88.2.1", "02:42:0a:58:02:01", v100) // h1
	b := mk("b", "10.88.2.2", "02:42:0a:58:02:02", v100) // h2
	c := mk("c", "10.88.2.3", "02:42:0a:58:02:03", v200) // h2
	d := mk("d", "10.88.2.4", "02:42:0a:58:02:04", v200) // h1
	for i := 0; i < 2; i++ {
		h1.ensure(t, []core.NetworkSpec{v100, v200}, []core.EndpointSpec{a, d})
		h2.ensure(t, []core.NetworkSpec{v100, v200}, []core.EndpointSpec{b, c})
	}
	if out := nstest.Exec(t, h1.ns, "ip", "-d", "link", "show", "ul0.100"); !strings.Contains(out, "vlan protocol 802.1Q id 100") ||
		!strings.Contains(out, "master "+BridgeName(h1.ns, v100.Key())) || !strings.Contains(out, "alias netplugin:lbvlan@"+h1.ns+":ul0:100:") {
		t.Fatalf("subinterface:\n%s", out)
	}
	if out := nstest.Exec(t, p+"a", "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") {
		t.Fatalf("container MTU is not the uplink's:\n%s", out)
	}
	nstest.MustPing(t, p+"a", "10.88.2.2")
	nstest.MustPing(t, p+"d", "10.88.2.3") // the other tag works on its own
	nstest.MustNotPing(t, p+"a", "10.88.2.3")
	nstest.MustNotPing(t, p+"c", "10.88.2.1")

	// An operator's own subinterface of the tag is neither used nor changed.
	v300 := net(p+"y", 300)
	nstest.Exec(t, h1.ns, "ip", "link", "add", "link", "ul0", "name", "ul0.300", "type", "vlan", "id", "300")
	on(t, h1.ns, func() {
		if err := h1.drv.EnsureNetwork(context.Background(), v300); !errors.Is(err, core.ErrInUse) {
			t.Fatalf("operator's subinterface: %v", err)
		}
		_ = h1.drv.RemoveNetwork(context.Background(), core.ObservedNetwork{Key: v300.Key()})
	})
	if out := nstest.Exec(t, h1.ns, "ip", "link", "show", "ul0.300"); strings.Contains(out, "master") || strings.Contains(out, "alias") {
		t.Fatalf("operator's subinterface changed:\n%s", out)
	}

	for _, x := range []struct {
		h   *lbHost
		eps []core.EndpointSpec
	}{{h1, []core.EndpointSpec{a, d}}, {h2, []core.EndpointSpec{b, c}}} {
		on(t, x.h.ns, func() {
			for _, e := range x.eps {
				if err := x.h.drv.RemoveEndpoint(context.Background(), core.ObservedEndpoint{Key: e.Key()}); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range []core.NetworkSpec{v100, v200} {
				if err := x.h.drv.RemoveNetwork(context.Background(), core.ObservedNetwork{Key: n.Key()}); err != nil {
					t.Fatal(err)
				}
			}
			if left := nstest.MarkedLinks(t, x.h.ns); len(left) > 0 {
				t.Errorf("%s: leaked links %v", x.h.ns, left)
			}
		})
	}
	if err := exec.Command("ip", "-n", h1.ns, "link", "show", "ul0.300").Run(); err != nil {
		t.Fatal("operator's subinterface removed")
	}
}
