package ipvlan

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

// TestKernel runs the driver against a real kernel: here it skips when the
// kernel has no ipvlan (this machine's 6.18 has none), in the kernel lab
// (scripts/kernel-lab.sh ./drivers/ipvlan/) it must run. The probe runs once,
// for all subtests.
func TestKernel(t *testing.T) {
	nstest.RequireRoot(t)
	probeErr := lab.ProbeLink(context.Background(), "ipvlan", "mode", "l2")
	if probeErr != nil && !lab.Active() {
		t.Run("without-ipvlan", testWithoutIPVlan)
	}
	lab.RequireKernel(t, "CONFIG_IPVLAN", probeErr)
	before := nstest.Links(t)
	t.Cleanup(func() {
		for l := range nstest.Links(t) {
			if !before[l] {
				t.Errorf("leaked link %s in the test's own namespace", l)
			}
		}
	})
	t.Run("l2", testL2)
	t.Run("l3", testL3)
	t.Run("mode-change", testModeChange)
	t.Run("handoff", testHandOff)
}

// testL2: endpoints on two hosts share the underlay segment; they reach each
// other within a host and across hosts, and the gateway on the segment.
func testL2(t *testing.T) {
	ctx := context.Background()
	u := newUnderlay(t, 2)
	hA, hB := u.hosts[0], u.hosts[1]
	nstest.Exec(t, u.sw, "ip", "addr", "add", "10.79.1.254/24", "dev", "br0") // the gateway, a router on the segment
	n := u.network("l2", "10.79.1.0/24", "10.79.1.254", ModeL2)
	a1, a2 := u.endpoint("a1", "10.79.1.1", n), u.endpoint("a2", "10.79.1.2", n)
	b1 := u.endpoint("b1", "10.79.1.3", n)
	nets := []core.NetworkSpec{n}
	epsA, epsB := []core.EndpointSpec{a1, a2}, []core.EndpointSpec{b1}

	// A link of someone else's in a container: never touched, and our child
	// must take the next free name.
	nstest.Exec(t, u.ns(a1), "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
	obsA := ensureAll(t, hA, nets, epsA)
	obsB := ensureAll(t, hB, nets, epsB)
	if obsA[a1.Key()].IfName != "eth1" || obsA[a2.Key()].IfName != "eth0" {
		t.Fatalf("interface names: a1 %s (want eth1, eth0 is taken), a2 %s", obsA[a1.Key()].IfName, obsA[a2.Key()].IfName)
	}

	// Children share the parent's MAC; the endpoint's MAC is ignored.
	parentMAC := strings.TrimSpace(nstest.Exec(t, hA.ns, "cat", "/sys/class/net/"+parentIf+"/address"))
	if got := strings.TrimSpace(nstest.Exec(t, u.ns(a2), "cat", "/sys/class/net/eth0/address")); got != parentMAC {
		t.Fatalf("child MAC %s, want the parent's %s", got, parentMAC)
	}
	if out := nstest.Exec(t, u.ns(a2), "ip", "-d", "link", "show", "eth0"); !strings.Contains(out, "ipvlan") ||
		!strings.Contains(out, "mode l2") {
		t.Fatalf("eth0 of a2 is not an l2 ipvlan child:\n%s", out)
	}
	for _, c := range []struct{ ns, mark string }{{u.ns(a2), "netplugin:ipep@h0:"}, {u.ns(b1), "netplugin:ipep:"}} {
		if out := nstest.Exec(t, c.ns, "ip", "link", "show", "eth0"); !strings.Contains(out, "alias "+c.mark) {
			t.Fatalf("eth0 in %s not marked %s:\n%s", c.ns, c.mark, out)
		}
	}
	if out := nstest.Exec(t, u.ns(a2), "ip", "route", "show", "default"); !strings.Contains(out, "via 10.79.1.254") {
		t.Fatalf("default route of a2: %q, want via the gateway", out)
	}
	nstest.MustPing(t, u.ns(a1), "10.79.1.2")   // same host
	nstest.MustPing(t, u.ns(a1), "10.79.1.3")   // across hosts
	nstest.MustPing(t, u.ns(b1), "10.79.1.2")   // and back
	nstest.MustPing(t, u.ns(a2), "10.79.1.254") // the gateway on the segment
	mustObserve(t, hA.d, epsA, obsA)
	mustObserve(t, hB.d, epsB, obsB)

	// Agent crash: a new Driver on the same state dir adopts everything, and
	// ensuring again changes nothing.
	hA.d = u.driver(hA)
	mustObserve(t, hA.d, epsA, obsA)
	again := ensureAll(t, hA, nets, epsA)
	for _, e := range epsA {
		if again[e.Key()].IfIndex != obsA[e.Key()].IfIndex {
			t.Fatalf("restarted driver recreated %s: ifindex %d -> %d", e.Key(), obsA[e.Key()].IfIndex, again[e.Key()].IfIndex)
		}
	}

	// A child set down is unhealthy and repaired in place (same ifindex).
	nstest.Exec(t, u.ns(a2), "ip", "link", "set", "eth0", "down")
	if act, _ := hA.d.Observe(ctx); act.Endpoints[a2.Key()].Healthy {
		t.Fatal("a child that is down was observed healthy")
	}
	if o, err := hA.d.EnsureEndpoint(ctx, a2); err != nil || o.IfIndex != obsA[a2.Key()].IfIndex {
		t.Fatalf("repair a2: %+v %v (ifindex was %d)", o, err, obsA[a2.Key()].IfIndex)
	}
	nstest.MustPing(t, u.ns(a2), "10.79.1.3")

	// A child deleted behind our back is still reported (unhealthy) and rebuilt.
	nstest.Exec(t, u.ns(b1), "ip", "link", "del", "eth0")
	act, err := hB.d.Observe(ctx)
	if o, ok := act.Endpoints[b1.Key()]; err != nil || !ok || o.Healthy {
		t.Fatalf("observe of a deleted child: %+v %v", o, err)
	}
	obsB = ensureAll(t, hB, nets, epsB)
	mustObserve(t, hB.d, epsB, obsB)
	nstest.MustPing(t, u.ns(b1), "10.79.1.1")

	removeAll(t, hA, nets, epsA)
	removeAll(t, hB, nets, epsB)
	if got := strings.Join(linksIn(t, u.ns(a1)), " "); got != "lo eth0 other0" && got != "lo other0 eth0" {
		t.Fatalf("a1 after removal holds %q, want only lo and the foreign veth", got)
	}
	for _, e := range []core.EndpointSpec{a2, b1} {
		if got := linksIn(t, u.ns(e)); len(got) != 1 {
			t.Fatalf("%s after removal holds %v, want only lo", e.Name, got)
		}
	}
}

// testL3: each host routes for its children; hosts reach each other's
// endpoints once each has a route to the other's endpoint subnet via the
// other's underlay IP (installed here by hand; in production the agents
// distribute them). Also: one parent cannot carry two modes.
func testL3(t *testing.T) {
	ctx := context.Background()
	u := newUnderlay(t, 2)
	hA, hB := u.hosts[0], u.hosts[1]
	n := u.network("l3", "10.79.8.0/21", "10.79.8.1", ModeL3)
	a1, a2 := u.endpoint("a1", "10.79.11.1", n), u.endpoint("a2", "10.79.11.2", n)
	b1 := u.endpoint("b1", "10.79.12.1", n)
	nets := []core.NetworkSpec{n}
	epsA, epsB := []core.EndpointSpec{a1, a2}, []core.EndpointSpec{b1}
	obsA := ensureAll(t, hA, nets, epsA)
	obsB := ensureAll(t, hB, nets, epsB)

	if out := nstest.Exec(t, u.ns(a1), "ip", "-d", "link", "show", "eth0"); !strings.Contains(out, "mode l3") {
		t.Fatalf("eth0 of a1 is not an l3 ipvlan child:\n%s", out)
	}
	out := nstest.Exec(t, u.ns(a1), "ip", "route", "show", "default")
	if !strings.Contains(out, "default dev eth0") || strings.Contains(out, "via") {
		t.Fatalf("default route of a1: %q, want through the device, no gateway", out)
	}
	nstest.MustPing(t, u.ns(a1), "10.79.11.2") // same host: the port delivers directly
	nstest.MustNotPing(t, u.ns(a1), "10.79.12.1")
	nstest.Exec(t, hA.ns, "ip", "route", "add", "10.79.12.0/24", "via", "10.79.0.2")
	nstest.Exec(t, hB.ns, "ip", "route", "add", "10.79.11.0/24", "via", "10.79.0.1")
	nstest.MustPing(t, u.ns(a1), "10.79.12.1")
	nstest.MustPing(t, u.ns(b1), "10.79.11.2")
	mustObserve(t, hA.d, epsA, obsA)
	mustObserve(t, hB.d, epsB, obsB)

	// Another network in l2 on the same parent would flip the port's mode
	// under the l3 children: refused, and nothing is created.
	other := u.network("other", "10.79.16.0/24", "", ModeL2)
	if err := hA.d.EnsureNetwork(ctx, other); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("l2 network on an l3 parent: %v, want ErrInUse", err)
	}
	c1 := u.endpoint("c1", "10.79.16.1", other)
	if _, err := hA.d.EnsureEndpoint(ctx, c1); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("l2 endpoint on an l3 parent: %v, want ErrInUse", err)
	}
	if got := linksIn(t, u.ns(c1)); len(got) != 1 {
		t.Fatalf("refused endpoint left links: %v", got)
	}
	// Bad input reaches no kernel object either.
	bad := u.network("bad", "10.79.17.0/24", "", "l4")
	if err := hA.d.EnsureNetwork(ctx, bad); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("bad mode: %v, want ErrInvalid", err)
	}
	gone := u.network("gone", "10.79.18.0/24", "", ModeL3)
	gone.Options[OptParent] = "up9"
	if err := hA.d.EnsureNetwork(ctx, gone); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("missing parent: %v, want ErrNotFound", err)
	}
	if _, err := hA.d.EnsureEndpoint(ctx, u.endpoint("g1", "10.79.18.1", gone)); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("endpoint on a missing parent: %v, want ErrNotFound", err)
	}

	// A container whose namespace is gone: its endpoint is reported unhealthy
	// (not dropped), and removing it removes its record.
	if err := exec.Command("ip", "netns", "del", u.ns(b1)).Run(); err != nil {
		t.Fatal(err)
	}
	act, err := hB.d.Observe(ctx)
	if o, ok := act.Endpoints[b1.Key()]; err != nil || !ok || o.Healthy {
		t.Fatalf("endpoint of a deleted namespace: %+v %v", o, err)
	}
	removeAll(t, hA, nets, epsA)
	removeAll(t, hB, nets, epsB)
}

// testModeChange: a network switched from l2 to l3 makes its endpoints
// unhealthy (their fingerprint does not cover network options), and ensuring
// them rebuilds the children in the new mode.
func testModeChange(t *testing.T) {
	ctx := context.Background()
	u := newUnderlay(t, 1)
	h := u.hosts[0]
	n := u.network("m", "10.79.24.0/24", "10.79.24.254", ModeL2)
	e := u.endpoint("m1", "10.79.24.1", n)
	ensureAll(t, h, []core.NetworkSpec{n}, []core.EndpointSpec{e})

	n.Options = map[string]string{OptParent: parentIf, OptMode: ModeL3}
	e.Net = n
	if err := h.d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	act, err := h.d.Observe(ctx)
	if err != nil || act.Endpoints[e.Key()].Healthy || act.Networks[n.Key()].Fingerprint != n.Fingerprint() {
		t.Fatalf("after the mode change: %+v %v", act, err)
	}
	if o, err := h.d.EnsureEndpoint(ctx, e); err != nil || !o.Healthy {
		t.Fatalf("rebuild: %+v %v", o, err)
	}
	if out := nstest.Exec(t, u.ns(e), "ip", "-d", "link", "show"); !strings.Contains(out, "mode l3") ||
		strings.Count(out, "ipvlan") != 1 {
		t.Fatalf("want exactly one l3 child:\n%s", out)
	}
	removeAll(t, h, []core.NetworkSpec{n}, []core.EndpointSpec{e})
}

// testWithoutIPVlan runs where the kernel lacks ipvlan (as this machine's
// does): Ensure says so by name and leaves nothing behind.
func testWithoutIPVlan(t *testing.T) {
	ctx := context.Background()
	u := newUnderlay(t, 1)
	h := u.hosts[0]
	n := u.network("none", "10.79.32.0/24", "", ModeL2)
	e := u.endpoint("x1", "10.79.32.1", n)
	if err := h.d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	_, err := h.d.EnsureEndpoint(ctx, e)
	if err == nil || !strings.Contains(err.Error(), "CONFIG_IPVLAN") {
		t.Fatalf("ensure without ipvlan: %v, want an error naming CONFIG_IPVLAN", err)
	}
	t.Logf("as expected: %v", err)
	// A Docker endpoint too: the child handed off in the host namespace.
	sb := e
	sb.NetNSPath = nstest.Path(u.p + "nosb")
	sb.NetNSID = core.SandboxNetNSID(sb.NetNSPath)
	if _, err := h.d.PrepareHandOff(ctx, sb); err == nil || !strings.Contains(err.Error(), "CONFIG_IPVLAN") {
		t.Fatalf("hand-off without ipvlan: %v, want an error naming CONFIG_IPVLAN", err)
	}
	if got := linksIn(t, h.ns); len(got) != 2 {
		t.Fatalf("a failed hand-off left links in the host namespace: %v", got)
	}
	act, err := h.d.Observe(ctx)
	if err != nil || len(act.Endpoints) != 0 {
		t.Fatalf("a failed ensure left a record: %+v %v", act.Endpoints, err)
	}
	if got := linksIn(t, u.ns(e)); len(got) != 1 {
		t.Fatalf("a failed ensure left links: %v", got)
	}
	removeAll(t, h, []core.NetworkSpec{n}, nil)
}
