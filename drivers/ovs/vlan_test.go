package ovs

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// One host: endpoints of one VLAN network reach each other, endpoints on
// another VLAN do not (same subnet, so only the tag separates them); every
// Ensure and Remove is idempotent; nothing is left afterwards.
func TestVLANSingleHost(t *testing.T) {
	h := newHost(t, nil)
	p := nstest.Prefix()
	ctx := testCtx(t)
	d := h.drv
	net1 := network(p, "n1", core.EncapVLAN, 10, "10.77.1.0/24")
	net2 := network(p, "n2", core.EncapVLAN, 11, "10.77.1.0/24")
	a := endpoint(t, p, "a", "10.77.1.1", net1, 1)
	b := endpoint(t, p, "b", "10.77.1.2", net1, 2)
	c := endpoint(t, p, "c", "10.77.1.3", net2, 3)
	eps, nets := []core.EndpointSpec{a, b, c}, []core.NetworkSpec{net1, net2}

	var first map[string]core.ObservedEndpoint
	for i := 0; i < 2; i++ { // the second round must be a no-op
		mustEnsureNets(t, d, nets...)
		got := mustEnsureEPs(t, d, eps...)
		if i == 0 {
			first = got
			waitHealthy(t, d, a.Key(), b.Key(), c.Key())
		}
		for k, o := range got {
			if o.IfIndex != first[k].IfIndex || o.IfName != core.HostIfName(k) {
				t.Fatalf("round %d changed %s: %+v, was %+v", i, k, o, first[k])
			}
		}
	}
	if out := nstest.Exec(t, p+"a", "ip", "-o", "link", "show"); !strings.Contains(out, "eth0@") ||
		strings.Contains(out, "eth1") || !strings.Contains(out, "02:42:0a:4e:00:01") {
		t.Fatalf("namespace a should hold exactly eth0 with the endpoint's MAC:\n%s", out)
	}
	nstest.MustPing(t, p+"a", "10.77.1.2")
	nstest.MustNotPing(t, p+"a", "10.77.1.3")
	nstest.MustNotPing(t, p+"c", "10.77.1.1")

	// The OVS side as an operator sees it.
	name := core.HostIfName(a.Key())
	if tag := h.vsctl(t, "get", "Port", name, "tag"); tag != "10" {
		t.Errorf("tag of %s = %s, want 10", name, tag)
	}
	for _, table := range []string{"Port", "Interface"} {
		ext := h.vsctl(t, "get", table, name, "external_ids")
		if !strings.Contains(ext, a.Key()) || !strings.Contains(ext, a.Fingerprint()) {
			t.Errorf("%s %s external_ids lack key/fingerprint: %s", table, name, ext)
		}
	}
	act := waitHealthy(t, d, a.Key(), b.Key(), c.Key())
	for _, e := range eps {
		if o := act.Endpoints[e.Key()]; o.Fingerprint != e.Fingerprint() {
			t.Errorf("observe %s: %+v", e.Key(), o)
		}
	}
	for _, n := range nets {
		if o := act.Networks[n.Key()]; o.Fingerprint != n.Fingerprint() {
			t.Errorf("observe network %s: %+v", n.Key(), o)
		}
	}
	// Bridge is a plain NORMAL switch: no flows of ours on it.
	if out := h.ofctl(t, "dump-flows", "unix:"+h.inst.Dir+"/np-int.mgmt"); strings.Contains(out, "cookie="+flowCookie) {
		t.Errorf("flows on the integration bridge:\n%s", out)
	}

	// A foreign link under an endpoint's name is never touched.
	foreign := core.HostIfName(p + "/foreign")
	h.sh(t, "ip", "link", "add", foreign, "type", "bridge")
	err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: p + "/foreign"})
	if !errors.Is(err, core.ErrInUse) {
		t.Fatalf("RemoveEndpoint of a foreign link: %v, want ErrInUse", err)
	}
	h.sh(t, "ip", "link", "show", foreign)
	h.sh(t, "ip", "link", "del", foreign)

	removeAll(t, d, eps, nets)
	// Removing what is not there succeeds.
	if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: p + "/never"}); err != nil {
		t.Errorf("RemoveEndpoint of an absent endpoint: %v", err)
	}
	if err := d.RemoveNetwork(ctx, core.ObservedNetwork{Key: p + "/never"}); err != nil {
		t.Errorf("RemoveNetwork of an absent network: %v", err)
	}
	act, err = d.Observe(ctx)
	if err != nil || len(act.Endpoints)+len(act.Networks) != 0 {
		t.Errorf("after removing everything Observe = %+v, %v", act, err)
	}
	assertClean(t, h)
	if err := exec.Command("ip", "netns", "exec", p+"a", "ip", "link", "show", "eth0").Run(); err == nil {
		t.Error("container end survived RemoveEndpoint")
	}
}

// Two hosts joined by a veth between their uplinks: a VLAN network spans
// both, another VLAN on the same wire stays apart.
func TestVLANTwoHostsUplink(t *testing.T) {
	nstest.RequireRoot(t)
	ha := newHost(t, func(c *Config) { c.Uplink = "upl0" })
	hb := newHost(t, func(c *Config) { c.Uplink = "upl0" })
	// The "wire": both ends are called upl0, each in its host.
	if out, err := exec.Command("ip", "-n", ha.ns, "link", "add", "upl0", "type", "veth", "peer", "name", "upl0", "netns", hb.ns).CombinedOutput(); err != nil {
		t.Fatalf("wire: %v: %s", err, out)
	}
	ha.sh(t, "ip", "link", "set", "upl0", "up")
	hb.sh(t, "ip", "link", "set", "upl0", "up")

	p := nstest.Prefix()
	net10 := network(p, "n10", core.EncapVLAN, 10, "10.78.0.0/24")
	net11 := network(p, "n11", core.EncapVLAN, 11, "10.78.0.0/24")
	a := endpoint(t, p, "a", "10.78.0.1", net10, 1)
	b := endpoint(t, p, "b", "10.78.0.2", net10, 2)
	c := endpoint(t, p, "c", "10.78.0.3", net11, 3)
	mustEnsureNets(t, ha.drv, net10, net11)
	mustEnsureNets(t, hb.drv, net10, net11)
	mustEnsureEPs(t, ha.drv, a)
	mustEnsureEPs(t, hb.drv, b, c)
	waitHealthy(t, ha.drv, a.Key())
	waitHealthy(t, hb.drv, b.Key(), c.Key())

	if tr := ha.vsctl(t, "get", "Port", "upl0", "trunks"); tr != "[10, 11]" {
		t.Errorf("uplink trunks = %s, want [10, 11]", tr)
	}
	nstest.MustPing(t, p+"a", "10.78.0.2")
	nstest.MustNotPing(t, p+"a", "10.78.0.3")
	nstest.MustNotPing(t, p+"c", "10.78.0.1")

	// Dropping network 11 on A takes VLAN 11 off A's trunk.
	if err := ha.drv.RemoveNetwork(testCtx(t), core.ObservedNetwork{Key: net11.Key()}); err != nil {
		t.Fatal(err)
	}
	if tr := ha.vsctl(t, "get", "Port", "upl0", "trunks"); tr != "[10]" {
		t.Errorf("uplink trunks = %s, want [10]", tr)
	}
	removeAll(t, ha.drv, []core.EndpointSpec{a}, []core.NetworkSpec{net10, net11})
	removeAll(t, hb.drv, []core.EndpointSpec{b, c}, []core.NetworkSpec{net10, net11})
	assertClean(t, ha)
	assertClean(t, hb)
	// The uplink went back to being a plain interface, still there.
	ha.sh(t, "ip", "link", "show", "upl0")
}
