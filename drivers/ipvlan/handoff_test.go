package ipvlan

import (
	"context"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// testHandOff plays Docker: Join (PrepareHandOff) before the sandbox exists,
// then the move of the child into the sandbox, its rename, address and route,
// and Leave, which gives the child back to the host. The agent's view
// (Observe, EnsureEndpoint) must be healthy throughout and never rebuild the
// child; RemoveEndpoint must find it wherever it is.
func testHandOff(t *testing.T) {
	ctx := context.Background()
	u := newUnderlay(t, 1)
	h := u.hosts[0]
	n := u.network("ho", "10.79.40.0/24", "10.79.40.254", ModeL2)
	if err := h.d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	// The sandboxes' paths exist only once the test, as Docker, starts the containers.
	spec := func(name, ip string) core.EndpointSpec {
		path := nstest.Path(u.p + name)
		return core.EndpointSpec{Endpoint: core.Endpoint{Tenant: u.tenant, Network: n.Name, Name: name, IP: ip, MAC: "02:42:0a:4f:28:01"},
			Net: n, NetNSPath: path, NetNSID: core.SandboxNetNSID(path)}
	}
	a, b := spec("sa", "10.79.40.1"), spec("sb", "10.79.40.2")
	eps := []core.EndpointSpec{a, b}
	handOff := func(ep core.EndpointSpec) string {
		t.Helper()
		name, err := h.d.PrepareHandOff(ctx, ep)
		if err != nil {
			t.Fatalf("PrepareHandOff %s: %v", ep.Key(), err)
		}
		if name != core.HandOffIfName(ep.Key()) {
			t.Fatalf("PrepareHandOff %s returned %q, want %q", ep.Key(), name, core.HandOffIfName(ep.Key()))
		}
		return name
	}
	observe := func(want map[string]core.ObservedEndpoint) map[string]core.ObservedEndpoint {
		t.Helper()
		act, err := h.d.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p := core.Reconcile(core.Desired{Networks: []core.NetworkSpec{n}, Endpoints: eps}, act); !p.Empty() {
			t.Fatalf("the agent would change things: %+v\nobserved %+v", p, act.Endpoints)
		}
		for k, o := range want {
			if act.Endpoints[k].IfIndex != o.IfIndex {
				t.Fatalf("observed %s as %+v, want ifindex %d", k, act.Endpoints[k], o.IfIndex)
			}
		}
		return act.Endpoints
	}

	linkA, linkB := handOff(a), handOff(b)
	parentMAC := strings.TrimSpace(nstest.Exec(t, h.ns, "cat", "/sys/class/net/"+parentIf+"/address"))
	out := nstest.Exec(t, h.ns, "ip", "-d", "link", "show", linkA)
	if !strings.Contains(out, "ipvlan") || !strings.Contains(out, "mode l2") || !strings.Contains(out, parentMAC) ||
		!strings.Contains(out, "alias netplugin:ipep@h0:") {
		t.Fatalf("handed-off child in the host namespace:\n%s", out)
	}
	first := observe(nil)
	if again := handOff(a); again != linkA {
		t.Fatalf("repeated PrepareHandOff: %s, then %s", linkA, again)
	}
	for _, e := range eps {
		if o, err := h.d.EnsureEndpoint(ctx, e); err != nil || !o.Healthy || o.IfIndex != first[e.Key()].IfIndex {
			t.Fatalf("ensure of waiting %s: %+v %v (ifindex was %d)", e.Key(), o, err, first[e.Key()].IfIndex)
		}
	}
	observe(first)

	// Docker starts the containers: move, then rename, address, up, route.
	sandboxes := map[string]string{}
	for _, c := range []struct {
		ep   core.EndpointSpec
		link string
	}{{a, linkA}, {b, linkB}} {
		sb := nstest.NS(t, u.p+c.ep.Name)
		sandboxes[c.ep.Key()] = sb
		nstest.Exec(t, h.ns, "ip", "link", "set", c.link, "netns", sb)
		// Moved, not configured yet: healthy, and the agent must not
		// configure it behind Docker's back.
		observe(first)
		if o, err := h.d.EnsureEndpoint(ctx, c.ep); err != nil || !o.Healthy || o.IfIndex != first[c.ep.Key()].IfIndex || o.IfName != c.link {
			t.Fatalf("ensure of %s just moved: %+v %v", c.ep.Key(), o, err)
		}
		if out := nstest.Exec(t, sb, "ip", "addr", "show", c.link); strings.Contains(out, "inet ") || strings.Contains(out, ",UP") {
			t.Fatalf("ensure configured a child Docker has yet to configure:\n%s", out)
		}
		nstest.Exec(t, sb, "ip", "link", "set", c.link, "name", "eth0")
		nstest.Exec(t, sb, "ip", "addr", "add", c.ep.IP+"/24", "dev", "eth0")
		nstest.Exec(t, sb, "ip", "link", "set", "eth0", "up")
		nstest.Exec(t, sb, "ip", "route", "add", "default", "via", n.Gateway)
	}
	nstest.MustPing(t, sandboxes[a.Key()], b.IP)
	moved := observe(first)
	for _, e := range eps {
		if moved[e.Key()].IfName != "eth0" {
			t.Fatalf("observed %s in its sandbox as %+v", e.Key(), moved[e.Key()])
		}
		if o, err := h.d.EnsureEndpoint(ctx, e); err != nil || !o.Healthy || o.IfIndex != first[e.Key()].IfIndex || o.IfName != "eth0" {
			t.Fatalf("ensure of %s in its sandbox: %+v %v", e.Key(), o, err)
		}
	}
	h.d = u.driver(h) // an agent restart changes nothing
	observe(first)

	// Leave gives a's child back to the host under its hand-off name.
	sa := sandboxes[a.Key()]
	nstest.Exec(t, sa, "ip", "link", "set", "eth0", "down")
	nstest.Exec(t, sa, "ip", "link", "set", "eth0", "name", linkA)
	nstest.Exec(t, sa, "ip", "link", "set", linkA, "netns", h.ns)
	observe(nil)
	removeAll(t, h, []core.NetworkSpec{n}, eps) // b is still inside its sandbox
	for _, sb := range sandboxes {
		if got := linksIn(t, sb); len(got) != 1 {
			t.Fatalf("%s after removal holds %v, want only lo", sb, got)
		}
	}
	if got := linksIn(t, h.ns); len(got) != 2 {
		t.Fatalf("host namespace after removal holds %v, want only lo and %s", got, parentIf)
	}
}
