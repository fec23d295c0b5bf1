package macvlan

import (
	"context"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// dockerMove does to a handed-off link what Docker does first after Join:
// move it from the host namespace into the sandbox.
func dockerMove(t *testing.T, host, link, sandbox string) {
	t.Helper()
	nstest.Exec(t, host, "ip", "link", "set", link, "netns", sandbox)
}

// dockerConfigure does what Docker does next: name the link eth0, set the
// MAC, the address, up and the default route.
func dockerConfigure(t *testing.T, link, sandbox string, ep core.EndpointSpec) {
	t.Helper()
	nstest.Exec(t, sandbox, "ip", "link", "set", link, "down")
	nstest.Exec(t, sandbox, "ip", "link", "set", link, "name", "eth0")
	nstest.Exec(t, sandbox, "ip", "link", "set", "eth0", "address", ep.MAC)
	nstest.Exec(t, sandbox, "ip", "addr", "add", ep.IP+"/24", "dev", "eth0")
	nstest.Exec(t, sandbox, "ip", "link", "set", "eth0", "up")
	nstest.Exec(t, sandbox, "ip", "route", "add", "default", "via", ep.Net.Gateway)
}

// dockerLeave does what Docker's Leave does: the link goes back to the host
// namespace under the name Join returned.
func dockerLeave(t *testing.T, sandbox, host, link string) {
	t.Helper()
	nstest.Exec(t, sandbox, "ip", "link", "set", "eth0", "down")
	nstest.Exec(t, sandbox, "ip", "link", "set", "eth0", "name", link)
	nstest.Exec(t, sandbox, "ip", "link", "set", link, "netns", host)
}

func TestHandOff(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	p := nstest.Prefix()
	underlay(t, p, "ha")
	dir := t.TempDir()
	d := newDriver(t, p, "ha", dir)
	host := p + "ha"
	n := network(p, "n1", "10.78.9.0/24", map[string]string{OptParent: "up0"})
	n.Gateway = "10.78.9.254"
	if err := d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	// Docker joins before the sandbox's namespace exists: the paths are made
	// only when the test plays Docker starting the containers.
	spec := func(name, ip, mac string) core.EndpointSpec {
		path := nstest.Path(p + name)
		return core.EndpointSpec{Endpoint: core.Endpoint{Tenant: p, Network: n.Name, Name: name, IP: ip, MAC: mac},
			Net: n, NetNSPath: path, NetNSID: core.SandboxNetNSID(path)}
	}
	a := spec("sa", "10.78.9.1", "02:00:0a:4e:09:01")
	b := spec("sb", "10.78.9.2", "02:00:0a:4e:09:02")
	handOff := func(ep core.EndpointSpec) (string, int) {
		t.Helper()
		name, err := d.PrepareHandOff(ctx, ep)
		if err != nil {
			t.Fatalf("PrepareHandOff %s: %v", ep.Key(), err)
		}
		if name != core.HandOffIfName(ep.Key()) {
			t.Fatalf("PrepareHandOff %s returned %q, want %q", ep.Key(), name, core.HandOffIfName(ep.Key()))
		}
		l, err := d.host.LinkByName(name)
		if err != nil {
			t.Fatalf("handed-off child %s not in the host namespace: %v", name, err)
		}
		if l.Attrs().HardwareAddr.String() != ep.MAC || !strings.HasPrefix(l.Attrs().Alias, "netplugin:"+kindEP+":") {
			t.Fatalf("handed-off child %s: MAC %s alias %q", name, l.Attrs().HardwareAddr, l.Attrs().Alias)
		}
		return name, l.Attrs().Index
	}
	observe := func(eps ...core.EndpointSpec) core.Actual {
		t.Helper()
		act, err := d.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p := core.Reconcile(core.Desired{Networks: []core.NetworkSpec{n}, Endpoints: eps}, act); !p.Empty() {
			t.Fatalf("the agent would change things: %+v\nobserved %+v", p, act.Endpoints)
		}
		return act
	}

	linkA, idxA := handOff(a)
	if again, idx := handOff(a); again != linkA || idx != idxA {
		t.Fatalf("repeated PrepareHandOff: %s/%d, then %s/%d", linkA, idxA, again, idx)
	}
	linkB, _ := handOff(b)
	// Waiting in the host, not up, no address: healthy, for Docker plugs it in.
	act := observe(a, b)
	if o := act.Endpoints[a.Key()]; o.IfName != linkA || o.IfIndex != idxA || o.Fingerprint != a.Fingerprint() {
		t.Fatalf("observed a waiting child as %+v", o)
	}
	if o, err := d.EnsureEndpoint(ctx, a); err != nil || !o.Healthy || o.IfIndex != idxA {
		t.Fatalf("ensure of a waiting child: %+v %v (ifindex was %d)", o, err, idxA)
	}
	// Deleted behind our back before Docker moved it: unhealthy, and made
	// again in the host namespace, not in a namespace that does not exist.
	nstest.Exec(t, host, "ip", "link", "del", linkB)
	if act, _ := d.Observe(ctx); act.Endpoints[b.Key()].Healthy {
		t.Fatal("a deleted waiting child observed healthy")
	}
	o, err := d.EnsureEndpoint(ctx, b)
	if err != nil || !o.Healthy || o.IfName != linkB {
		t.Fatalf("ensure of a deleted waiting child: %+v %v", o, err)
	}
	idxB := o.IfIndex

	// Docker starts the containers.
	sa, sb := nstest.NS(t, p+"sa"), nstest.NS(t, p+"sb")
	dockerMove(t, host, linkA, sa)
	dockerMove(t, host, linkB, sb)
	// Moved, not configured yet: healthy, and the agent must not configure
	// it behind Docker's back (Docker's own address add would then fail).
	act = observe(a, b)
	if o := act.Endpoints[a.Key()]; o.IfName != linkA || o.IfIndex != idxA {
		t.Fatalf("observed a child just moved into its sandbox as %+v", o)
	}
	if o, err := d.EnsureEndpoint(ctx, a); err != nil || !o.Healthy || o.IfIndex != idxA {
		t.Fatalf("ensure of a child just moved: %+v %v", o, err)
	}
	if out := nstest.Exec(t, sa, "ip", "addr", "show", linkA); strings.Contains(out, "inet ") || strings.Contains(out, ",UP") {
		t.Fatalf("ensure configured a child Docker has yet to configure:\n%s", out)
	}
	dockerConfigure(t, linkA, sa, a)
	dockerConfigure(t, linkB, sb, b)
	nstest.MustPing(t, sa, b.IP)
	act = observe(a, b)
	for _, c := range []struct {
		ep  core.EndpointSpec
		idx int
	}{{a, idxA}, {b, idxB}} {
		if o := act.Endpoints[c.ep.Key()]; o.IfName != "eth0" || o.IfIndex != c.idx {
			t.Fatalf("observed %s in its sandbox as %+v, want eth0 with ifindex %d", c.ep.Key(), o, c.idx)
		}
		if o, err := d.EnsureEndpoint(ctx, c.ep); err != nil || !o.Healthy || o.IfIndex != c.idx || o.IfName != "eth0" {
			t.Fatalf("ensure of %s in its sandbox: %+v %v", c.ep.Key(), o, err)
		}
	}
	// A restarted agent sees the same.
	d = newDriver(t, p, "ha", dir)
	observe(a, b)
	nstest.MustPing(t, sb, a.IP)

	// Leave gives a's child back to the host: still the endpoint's until
	// DeleteEndpoint removes it.
	dockerLeave(t, sa, host, linkA)
	observe(a, b)
	for i := 0; i < 2; i++ {
		for _, e := range []core.EndpointSpec{a, b} { // b is still inside its sandbox
			if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, ns := range []string{sa, sb} {
		if l := containerLinks(t, ns); len(l) != 0 {
			t.Fatalf("left in sandbox %s: %q", ns, l)
		}
	}
	if l := containerLinks(t, host); len(l) != 1 { // up0
		t.Fatalf("left in the host namespace: %q", l)
	}
	if err := d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
		t.Fatal(err)
	}
	if act, err := d.Observe(ctx); err != nil || len(act.Endpoints)+len(act.Networks) != 0 {
		t.Fatalf("after remove: %+v %v", act, err)
	}
}
