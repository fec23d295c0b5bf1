package linuxbridge

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// on runs f with the calling goroutine's thread inside namespace ns: the
// driver programs the namespace of the thread that calls it, so each
// simulated host's driver is only ever called through on.
func on(t *testing.T, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // a thread left in the wrong namespace must not be reused
		}
	}()
	f()
}

// testLog is quiet unless the test runs with -v.
func testLog() *logrus.Entry {
	l := logrus.New()
	if !testing.Verbose() {
		l.SetLevel(logrus.WarnLevel)
	}
	return logrus.NewEntry(l)
}

// lbHost is a simulated host: a namespace whose underlay port ul0 (MTU 1400)
// is plugged into the switch namespace, and the driver of its agent.
type lbHost struct {
	ns, vtep string
	drv      *Driver
}

func underlay(t *testing.T, p string, n int, mod func(*Config)) []*lbHost {
	t.Helper()
	sw := nstest.NS(t, p+"sw")
	nstest.Exec(t, sw, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, sw, "ip", "link", "set", "br0", "up")
	var hs []*lbHost
	for i := 1; i <= n; i++ {
		h := &lbHost{ns: nstest.NS(t, fmt.Sprintf("%sh%d", p, i)), vtep: fmt.Sprintf("10.88.0.%d", i)}
		nstest.Exec(t, h.ns, "ip", "link", "add", "ul0", "mtu", "1400", "type", "veth", "peer", "name", fmt.Sprintf("ul%d", i), "mtu", "1400", "netns", sw)
		nstest.Exec(t, sw, "ip", "link", "set", fmt.Sprintf("ul%d", i), "master", "br0", "up")
		nstest.Exec(t, h.ns, "ip", "addr", "add", h.vtep+"/24", "dev", "ul0")
		nstest.Exec(t, h.ns, "ip", "link", "set", "ul0", "up")
		cfg := Config{Host: h.ns, VTEP: h.vtep}
		if mod != nil {
			mod(&cfg)
		}
		d, err := New(testLog(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		h.drv = d
		hs = append(hs, h)
	}
	return hs
}

func (h *lbHost) ensure(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec) {
	t.Helper()
	ctx := context.Background()
	on(t, h.ns, func() {
		for _, n := range nets {
			if err := h.drv.EnsureNetwork(ctx, n); err != nil {
				t.Fatalf("%s: EnsureNetwork %s: %v", h.ns, n.Key(), err)
			}
		}
		for _, e := range eps {
			if _, err := h.drv.EnsureEndpoint(ctx, e); err != nil {
				t.Fatalf("%s: EnsureEndpoint %s: %v", h.ns, e.Key(), err)
			}
		}
	})
}

func (h *lbHost) setRemotes(t *testing.T, r map[string]core.NetRemotes) {
	t.Helper()
	on(t, h.ns, func() {
		if err := h.drv.SetRemotes(context.Background(), r); err != nil {
			t.Fatalf("%s: SetRemotes: %v", h.ns, err)
		}
	})
}

func (h *lbHost) observe(t *testing.T) core.Actual {
	t.Helper()
	var a core.Actual
	on(t, h.ns, func() {
		var err error
		if a, err = h.drv.Observe(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	return a
}

// remotesAt lists eps as the remote endpoints of their networks, all on host h.
func remotesAt(h *lbHost, eps ...core.EndpointSpec) map[string]core.NetRemotes {
	out := map[string]core.NetRemotes{}
	for _, e := range eps {
		r := out[e.Net.Key()]
		r.Endpoints = append(r.Endpoints, core.Remote{MAC: e.MAC, IP: e.IP, Host: h.ns, VTEP: h.vtep})
		r.Hosts = []core.Peer{{Name: h.ns, VTEP: h.vtep}}
		out[e.Net.Key()] = r
	}
	return out
}

// entries counts a device's own forwarding entries (bridge fdb ... self) and
// its neighbour entries, as the shell shows them.
func entries(t *testing.T, ns, dev string) (fdb, neigh []string) {
	t.Helper()
	for _, l := range strings.Split(strings.TrimSpace(nstest.Exec(t, ns, "bridge", "fdb", "show", "dev", dev)), "\n") {
		if strings.Contains(l, " dst ") && strings.Contains(l, "self") {
			fdb = append(fdb, strings.TrimSpace(l))
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(nstest.Exec(t, ns, "ip", "neigh", "show", "dev", dev)), "\n") {
		if l != "" {
			neigh = append(neigh, strings.TrimSpace(l))
		}
	}
	return fdb, neigh
}

// Two hosts, two tenants whose VXLAN networks have the same subnet: each
// network spans the hosts through its own VXLAN device, the two stay apart;
// forwarding and ARP come from SetRemotes alone (learning off, ARP answered by
// the device), entries follow every change, a device deleted by hand is
// noticed and rebuilt with its entries, and only our devices are touched.
func TestVXLANAcrossHosts(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	hs := underlay(t, p, 2, nil)
	h1, h2 := hs[0], hs[1]
	vxA := core.NetworkSpec{Network: core.Network{Tenant: p, Name: "vx", Driver: Name, Encap: core.EncapVXLAN, Tag: 5101,
		Subnet: "10.88.1.0/24", Gateway: "10.88.1.254"}}
	vxB := core.NetworkSpec{Network: core.Network{Tenant: p + "x", Name: "vx", Driver: Name, Encap: core.EncapVXLAN, Tag: 5102,
		Subnet: "10.88.1.0/24", Gateway: "10.88.1.254"}}
	mk := func(name, ip string, n core.NetworkSpec, last int) core.EndpointSpec {
		ns := nstest.NS(t, p+name)
		return core.EndpointSpec{
			Endpoint:  core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: name, IP: ip, MAC: fmt.Sprintf("02:42:0a:58:01:%02x", last)},
			Net:       n,
			NetNSPath: nstest.Path(ns), NetNSID: nsID(t, nstest.Path(ns)),
		}
	}
	a := mk("a", "10.88.1.1", vxA, 1) // h1
	d := mk("d", "10.88.1.4", vxB, 4) // h1
	b := mk("b", "10.88.1.2", vxA, 2) // h2
	c := mk("c", "10.88.1.3", vxB, 3) // h2
	for i := 0; i < 2; i++ {          // the second round must be a no-op
		h1.ensure(t, []core.NetworkSpec{vxA, vxB}, []core.EndpointSpec{a, d})
		h2.ensure(t, []core.NetworkSpec{vxA, vxB}, []core.EndpointSpec{b, c})
		h1.setRemotes(t, remotesAt(h2, b, c))
		h2.setRemotes(t, remotesAt(h1, a, d))
	}
	dev := VXLANName(h1.ns, vxA.Key())
	if out := nstest.Exec(t, h1.ns, "ip", "-d", "link", "show", dev); !strings.Contains(out, "vxlan id 5101") ||
		!strings.Contains(out, "local 10.88.0.1") || !strings.Contains(out, "dstport 8472") ||
		!strings.Contains(out, "nolearning") || !strings.Contains(out, "proxy") || !strings.Contains(out, "mtu 1350") ||
		!strings.Contains(out, "master "+BridgeName(h1.ns, vxA.Key())) || !strings.Contains(out, "alias netplugin:lbvx@"+h1.ns+":") {
		t.Fatalf("VXLAN device:\n%s", out)
	}
	nstest.MustPing(t, p+"a", "10.88.1.2")
	nstest.MustPing(t, p+"b", "10.88.1.1")
	// The other tenant works on its own, so its silence towards the first
	// is isolation, not a broken network.
	nstest.MustPing(t, p+"d", "10.88.1.3")
	nstest.MustNotPing(t, p+"a", "10.88.1.3")
	nstest.MustNotPing(t, p+"c", "10.88.1.1")

	// Per remote endpoint one MAC entry and one neighbour, and one flood
	// entry for its host.
	fdb, neigh := entries(t, h1.ns, dev)
	if len(fdb) != 2 || len(neigh) != 1 || !strings.Contains(strings.Join(fdb, "\n"), "00:00:00:00:00:00 dst 10.88.0.2") ||
		!strings.Contains(strings.Join(fdb, "\n"), b.MAC+" dst 10.88.0.2") || !strings.Contains(neigh[0], "10.88.1.2 lladdr "+b.MAC+" PERMANENT") {
		t.Fatalf("entries of %s:\n%s\n%s", dev, strings.Join(fdb, "\n"), strings.Join(neigh, "\n"))
	}

	// The MTU is the underlay's less the encapsulation: the largest
	// unfragmentable ping crosses, one byte more is refused at the sender.
	if out := nstest.Exec(t, p+"a", "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1350") {
		t.Fatalf("container MTU:\n%s", out)
	}
	nstest.Exec(t, p+"a", "ping", "-c1", "-W2", "-M", "do", "-s", "1322", "10.88.1.2")
	if out, err := exec.Command("ip", "netns", "exec", p+"a", "ping", "-c1", "-W1", "-M", "do", "-s", "1323", "10.88.1.2").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "message too long") {
		t.Fatalf("oversized DF ping: %v\n%s", err, out)
	}

	// A link handed off to Docker has the MTU before Docker takes it.
	ho := mk("ho", "10.88.1.9", vxA, 9)
	on(t, h1.ns, func() {
		name, err := h1.drv.PrepareHandOff(context.Background(), ho)
		if err != nil {
			t.Fatal(err)
		}
		if out := nstest.Exec(t, h1.ns, "ip", "link", "show", name); !strings.Contains(out, "mtu 1350") {
			t.Errorf("handed-off link:\n%s", out)
		}
		if err := h1.drv.RemoveEndpoint(context.Background(), core.ObservedEndpoint{Key: ho.Key()}); err != nil {
			t.Fatal(err)
		}
	})

	// ARP is answered from SetRemotes, not by flooding: without b's entries
	// (its host still there) a, its cache flushed, cannot reach b.
	h1.setRemotes(t, map[string]core.NetRemotes{vxA.Key(): {Hosts: []core.Peer{{Name: h2.ns, VTEP: h2.vtep}}}, vxB.Key(): remotesAt(h2, c)[vxB.Key()]})
	if fdb, neigh := entries(t, h1.ns, dev); len(fdb) != 1 || len(neigh) != 0 {
		t.Fatalf("entries after b went:\n%v\n%v", fdb, neigh)
	}
	nstest.Exec(t, p+"a", "ip", "neigh", "flush", "all")
	nstest.MustNotPing(t, p+"a", "10.88.1.2")
	h1.setRemotes(t, remotesAt(h2, b, c))
	nstest.MustPing(t, p+"a", "10.88.1.2")

	// A foreign VXLAN device and its entry are never touched.
	nstest.Exec(t, h1.ns, "ip", "link", "add", "fx0", "type", "vxlan", "id", "77", "local", "10.88.0.1", "dstport", "4789", "nolearning")
	nstest.Exec(t, h1.ns, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "fx0", "dst", "10.88.0.9")
	h1.setRemotes(t, nil)
	if fdb, neigh := entries(t, h1.ns, dev); len(fdb)+len(neigh) != 0 {
		t.Fatalf("entries left with no remotes:\n%v\n%v", fdb, neigh)
	}
	if fdb, _ := entries(t, h1.ns, "fx0"); len(fdb) != 1 {
		t.Fatalf("foreign device's entries changed: %v", fdb)
	}
	h1.setRemotes(t, remotesAt(h2, b, c))

	// A device deleted by hand: the network is observed as drifted, and
	// ensuring it again rebuilds the device with its entries at once.
	if n := h1.observe(t).Networks[vxA.Key()]; n.Fingerprint != vxA.Fingerprint() {
		t.Fatalf("observed %+v, want fingerprint %s", n, vxA.Fingerprint())
	}
	nstest.Exec(t, h1.ns, "ip", "link", "del", dev)
	if n := h1.observe(t).Networks[vxA.Key()]; n.Fingerprint != "" {
		t.Fatalf("network without its VXLAN device observed as %+v", n)
	}
	h1.ensure(t, []core.NetworkSpec{vxA}, nil)
	if fdb, neigh := entries(t, h1.ns, dev); len(fdb) != 2 || len(neigh) != 1 {
		t.Fatalf("entries of the rebuilt device:\n%v\n%v", fdb, neigh)
	}
	nstest.MustPing(t, p+"a", "10.88.1.2")

	// Everything goes with the networks; the foreign device stays.
	for _, x := range []struct {
		h   *lbHost
		eps []core.EndpointSpec
	}{{h1, []core.EndpointSpec{a, d}}, {h2, []core.EndpointSpec{b, c}}} {
		on(t, x.h.ns, func() {
			for i := 0; i < 2; i++ {
				for _, e := range x.eps {
					if err := x.h.drv.RemoveEndpoint(context.Background(), core.ObservedEndpoint{Key: e.Key()}); err != nil {
						t.Fatal(err)
					}
				}
				for _, n := range []core.NetworkSpec{vxA, vxB} {
					if err := x.h.drv.RemoveNetwork(context.Background(), core.ObservedNetwork{Key: n.Key()}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if left := nstest.MarkedLinks(t, x.h.ns); len(left) > 0 {
				t.Errorf("%s: leaked links %v", x.h.ns, left)
			}
		})
	}
	if _, err := exec.Command("ip", "-n", h1.ns, "link", "show", "fx0").CombinedOutput(); err != nil {
		t.Fatal("foreign VXLAN device removed")
	}
}
