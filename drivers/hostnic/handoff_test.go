package hostnic

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// TestHandOff plays Docker: Join (PrepareHandOff) before the sandbox exists,
// the move of the NIC into the sandbox with its rename, Docker's MAC, address
// and route, then Leave, which gives the NIC back to the host under the
// hand-off name. The agent's view (Observe, EnsureEndpoint) must be healthy
// throughout and never move the NIC; RemoveEndpoint gives it back intact from
// the host (after Leave) or from inside the sandbox.
func TestHandOff(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.nic(t, "nic0", "w0", "10.88.0.100/24", hostSide()...)
	mac := macOf(t, r.host, "nic0")
	n := r.network("hn", map[string]string{OptNIC: "nic0"})
	d := r.driver(t)
	if err := d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	// The sandbox's path exists only once the test, as Docker, starts the container.
	spec := func(name string) core.EndpointSpec {
		path := nstest.Path(r.p + name)
		return core.EndpointSpec{Endpoint: core.Endpoint{Tenant: r.p, Network: n.Name, Name: name, IP: "10.88.0.2", MAC: "02:42:0a:58:00:02"},
			Net: n, NetNSPath: path, NetNSID: core.SandboxNetNSID(path)}
	}
	observe := func(d *Driver, ep core.EndpointSpec, ifName string, ifIndex int) {
		t.Helper()
		act, err := d.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p := core.Reconcile(core.Desired{Networks: []core.NetworkSpec{n}, Endpoints: []core.EndpointSpec{ep}}, act); !p.Empty() {
			t.Fatalf("the agent would change things: %+v\nobserved %+v", p, act.Endpoints)
		}
		if o := act.Endpoints[ep.Key()]; o.IfName != ifName || o.IfIndex != ifIndex {
			t.Fatalf("observed %+v, want %s with ifindex %d", o, ifName, ifIndex)
		}
	}
	handOff := func(ep core.EndpointSpec) (string, int) {
		t.Helper()
		name, err := d.PrepareHandOff(ctx, ep)
		if err != nil {
			t.Fatalf("PrepareHandOff %s: %v", ep.Key(), err)
		}
		if name != core.HandOffIfName(ep.Key()) {
			t.Fatalf("PrepareHandOff %s returned %q, want %q", ep.Key(), name, core.HandOffIfName(ep.Key()))
		}
		out := show(r.host, name)
		if show(r.host, "nic0") != "" || !strings.Contains(out, "link/ether "+mac) || !strings.Contains(out, "alias netplugin:hnic:") ||
			strings.Contains(out, ",UP") {
			t.Fatalf("nic0 should wait on the host, down and marked, as %s:\n%s", name, out)
		}
		l, err := d.host.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return name, l.Attrs().Index
	}
	dockerMove := func(name, sandbox string, ep core.EndpointSpec) {
		t.Helper()
		nstest.Exec(t, r.host, "ip", "link", "set", name, "netns", sandbox)
		// Moved, not configured yet: healthy, and the agent must not
		// configure it behind Docker's back.
		before := show(sandbox, name)
		observe(d, ep, name, index(t, sandbox, name))
		if o, err := d.EnsureEndpoint(ctx, ep); err != nil || !o.Healthy || o.IfName != name {
			t.Fatalf("ensure of a NIC just moved: %+v %v", o, err)
		}
		if out := show(sandbox, name); out != before {
			t.Fatalf("ensure configured a NIC Docker has yet to configure:\n%s", out)
		}
		nstest.Exec(t, sandbox, "ip", "link", "set", name, "name", "eth0")
		nstest.Exec(t, sandbox, "ip", "link", "set", "eth0", "address", ep.MAC)
		nstest.Exec(t, sandbox, "ip", "addr", "add", ep.IP+"/24", "dev", "eth0")
		nstest.Exec(t, sandbox, "ip", "link", "set", "eth0", "up")
		nstest.Exec(t, sandbox, "ip", "route", "add", "default", "via", n.Gateway)
	}

	// First container: Docker's Leave gives the NIC back before DeleteEndpoint.
	a := spec("sa")
	name, index := handOff(a)
	if again, idx := handOff(a); again != name || idx != index {
		t.Fatalf("repeated PrepareHandOff: %s/%d, then %s/%d", name, index, again, idx)
	}
	// Another agent on this kernel (its own state dir) must not take the
	// waiting NIC for a stray of its own and give it back.
	other, err := New(logrus.NewEntry(logrus.New()), Config{StateDir: t.TempDir(), NetNS: nstest.Path(r.host)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Observe(ctx); err != nil {
		t.Fatal(err)
	}
	observe(d, a, name, index)
	if o, err := d.EnsureEndpoint(ctx, a); err != nil || !o.Healthy || o.IfIndex != index || o.IfName != name {
		t.Fatalf("ensure of a waiting NIC: %+v %v", o, err)
	}
	sa := nstest.NS(t, r.p+"sa")
	dockerMove(name, sa, a)
	nstest.MustPing(t, sa, "10.88.0.100")
	observe(d, a, "eth0", index)
	if o, err := d.EnsureEndpoint(ctx, a); err != nil || !o.Healthy || o.IfIndex != index || o.IfName != "eth0" {
		t.Fatalf("ensure of the NIC in its sandbox: %+v %v", o, err)
	}
	observe(r.driver(t), a, "eth0", index) // a restarted agent
	nstest.Exec(t, sa, "ip", "link", "set", "eth0", "down")
	nstest.Exec(t, sa, "ip", "link", "set", "eth0", "name", name)
	nstest.Exec(t, sa, "ip", "link", "set", name, "netns", r.host)
	observe(r.driver(t), a, name, index) // not a stray: the endpoint's until DeleteEndpoint
	for i := 0; i < 2; i++ {
		if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: a.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	assertHome(t, r, mac)

	// Second container: removed while the NIC is still inside its sandbox.
	b := spec("sb")
	name, index = handOff(b)
	sb := nstest.NS(t, r.p+"sb")
	dockerMove(name, sb, b)
	nstest.MustPing(t, sb, "10.88.0.100")
	observe(d, b, "eth0", index)
	if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: b.Key()}); err != nil {
		t.Fatal(err)
	}
	assertHome(t, r, mac)
	for _, ns := range []string{sa, sb} {
		if out := ip(ns, "-o", "link", "show"); strings.Count(out, "\n") != 1 {
			t.Fatalf("sandbox %s still holds links:\n%s", ns, out)
		}
	}
	if err := d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
		t.Fatal(err)
	}
	if act, err := d.Observe(ctx); err != nil || len(act.Endpoints)+len(act.Networks) != 0 {
		t.Fatalf("after remove: %+v %v", act, err)
	}
}

func index(t *testing.T, ns, link string) int {
	t.Helper()
	f := strings.SplitN(ip(ns, "-o", "link", "show", "dev", link), ":", 2)
	i, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("ifindex of %s in %s: %q", link, ns, f)
	}
	return i
}
