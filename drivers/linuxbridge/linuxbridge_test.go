package linuxbridge

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

func nsID(t *testing.T, path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func TestTrafficIsolationAndIdempotence(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	ctx := context.Background()
	d, err := New(logrus.NewEntry(logrus.New()), Config{Host: p})
	if err != nil {
		t.Fatal(err)
	}

	net1 := core.NetworkSpec{Network: core.Network{Tenant: p, Name: "n1", Driver: Name, Encap: "vlan", Tag: 10, Subnet: "10.77.1.0/24", Gateway: "10.77.1.254"}}
	net2 := core.NetworkSpec{Network: core.Network{Tenant: p, Name: "n2", Driver: Name, Encap: "vlan", Tag: 11, Subnet: "10.77.2.0/24", Gateway: "10.77.2.254"}}
	mk := func(name, ip string, n core.NetworkSpec) core.EndpointSpec {
		ns := nstest.NS(t, p+name)
		return core.EndpointSpec{
			Endpoint:  core.Endpoint{Tenant: p, Network: n.Name, Name: name, IP: ip, MAC: "02:42:0a:4d:" + ip[len(ip)-1:] + "0:0" + string(n.Name[1])},
			Net:       n,
			NetNSPath: nstest.Path(ns), NetNSID: nsID(t, nstest.Path(ns)),
		}
	}
	a := mk("a", "10.77.1.1", net1)
	b := mk("b", "10.77.1.2", net1)
	c := mk("c", "10.77.2.1", net2)
	t.Cleanup(func() {
		for _, e := range []core.EndpointSpec{a, b, c} {
			_ = d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()})
		}
		for _, n := range []core.NetworkSpec{net1, net2} {
			_ = d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()})
		}
	})
	for i := 0; i < 2; i++ { // the second round must be a no-op
		for _, n := range []core.NetworkSpec{net1, net2} {
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		for _, e := range []core.EndpointSpec{a, b, c} {
			if _, err := d.EnsureEndpoint(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	out := nstest.Exec(t, p+"a", "ip", "-o", "link", "show")
	if !strings.Contains(out, "eth0@") || strings.Contains(out, "eth1") || !strings.Contains(out, "02:42:0a:4d:10:01") {
		t.Fatalf("namespace a should hold exactly one eth with the endpoint's MAC:\n%s", out)
	}
	nstest.MustPing(t, p+"a", "10.77.1.2")
	nstest.MustPing(t, p+"a", "10.77.1.254") // the gateway on the bridge
	// c works on its own network, so its silence towards a is isolation, not a
	// broken endpoint.
	nstest.MustPing(t, p+"c", "10.77.2.254")
	nstest.MustNotPing(t, p+"a", "10.77.2.1")
	nstest.MustNotPing(t, p+"c", "10.77.1.1")

	act, err := d.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []core.EndpointSpec{a, b, c} {
		o, ok := act.Endpoints[e.Key()]
		if !ok || !o.Healthy || o.Fingerprint != e.Fingerprint() {
			t.Fatalf("observe %s: %+v", e.Key(), o)
		}
	}
	if len(act.Networks) < 2 {
		t.Fatalf("observed networks: %+v", act.Networks)
	}
	// A link knocked off its bridge is repaired in place (same ifindex).
	obsA := act.Endpoints[a.Key()]
	if err := exec.Command("ip", "link", "set", obsA.IfName, "nomaster").Run(); err != nil {
		t.Fatal(err)
	}
	act, _ = d.Observe(ctx)
	if act.Endpoints[a.Key()].Healthy {
		t.Fatal("endpoint off its bridge observed as healthy")
	}
	o, err := d.EnsureEndpoint(ctx, a)
	if err != nil || o.IfIndex != obsA.IfIndex {
		t.Fatalf("repair: %+v %v (ifindex was %d)", o, err, obsA.IfIndex)
	}
	nstest.MustPing(t, p+"a", "10.77.1.2")

	// A foreign link with our name pattern is never touched.
	foreign := core.HostIfName(p + "/foreign")
	if out, err := exec.Command("ip", "link", "add", foreign, "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "link", "del", foreign).Run()
	if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: p + "/foreign"}); err == nil {
		t.Fatal("removed a link that is not ours")
	}
	if _, err := os.Stat("/sys/class/net/" + foreign); err != nil {
		t.Fatal("foreign link gone")
	}

	for _, e := range []core.EndpointSpec{a, b, c} {
		for i := 0; i < 2; i++ {
			if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range []core.NetworkSpec{net1, net2} {
		if err := d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	if left := nstest.MarkedLinks(t, p); len(left) > 0 {
		t.Errorf("leaked links %v", left)
	}
}
