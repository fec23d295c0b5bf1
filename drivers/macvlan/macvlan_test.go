package macvlan

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/nstest"
)

// underlay builds the test's "data centre": a bridge in namespace <p>w standing
// in for the switch, and per host a namespace <p><host> whose veth end "up0" is
// cabled to a port of that bridge. Everything lives in namespaces the test
// deletes, so nothing is left in the root namespace even on failure.
func underlay(t *testing.T, p string, hosts ...string) {
	t.Helper()
	w := nstest.NS(t, p+"w")
	nstest.Exec(t, w, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, w, "ip", "link", "set", "br0", "up")
	for i, h := range hosts {
		nstest.NS(t, p+h)
		port := fmt.Sprintf("p%d", i)
		nstest.Exec(t, w, "ip", "link", "add", "name", port, "type", "veth", "peer", "name", "up0", "netns", p+h)
		nstest.Exec(t, w, "ip", "link", "set", port, "master", "br0", "up")
		nstest.Exec(t, p+h, "ip", "link", "set", "up0", "up")
	}
}

// newDriver is the agent of host <p><host>, with its state in dir.
func newDriver(t *testing.T, p, host, dir string) *Driver {
	t.Helper()
	d, err := New(logrus.NewEntry(logrus.New()), Config{StateDir: dir, NetNS: nstest.Path(p + host)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func network(p, name, subnet string, opts map[string]string) core.NetworkSpec {
	return core.NetworkSpec{Network: core.Network{Tenant: p, Name: name, Driver: Name, Encap: core.EncapVLAN, Tag: 1,
		Subnet: subnet, Options: opts}}
}

// endpoint makes a container namespace <p><name> and the spec plugging it in.
func endpoint(t *testing.T, p, name, ip, mac string, n core.NetworkSpec) core.EndpointSpec {
	t.Helper()
	path := nstest.Path(nstest.NS(t, p+name))
	id, err := nl.NetNSID(path)
	if err != nil {
		t.Fatal(err)
	}
	return core.EndpointSpec{Endpoint: core.Endpoint{Tenant: p, Network: n.Name, Name: name, IP: ip, MAC: mac},
		Net: n, NetNSPath: path, NetNSID: id}
}

func mustEnsure(t *testing.T, d *Driver, eps ...core.EndpointSpec) map[string]core.ObservedEndpoint {
	t.Helper()
	out := map[string]core.ObservedEndpoint{}
	for _, e := range eps {
		o, err := d.EnsureEndpoint(context.Background(), e)
		if err != nil {
			t.Fatal(err)
		}
		if !o.Healthy || o.IfIndex == 0 || o.Fingerprint != e.Fingerprint() {
			t.Fatalf("ensure %s: %+v", e.Key(), o)
		}
		out[e.Key()] = o
	}
	return out
}

// containerLinks lists the links of a namespace other than lo. Only stdout
// counts: ip may complain on stderr about namespaces other tests delete meanwhile.
func containerLinks(t *testing.T, ns string) []string {
	t.Helper()
	b, err := exec.Command("ip", "-n", ns, "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip -n %s link: %v", ns, err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasSuffix(f[0], ":") && f[1] != "lo:" {
			out = append(out, line)
		}
	}
	return out
}

func TestCrossHostIdempotenceAndCrash(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	p := nstest.Prefix()
	before := nstest.Links(t)
	underlay(t, p, "ha", "hb")
	dirA := t.TempDir()
	dA, dB := newDriver(t, p, "ha", dirA), newDriver(t, p, "hb", t.TempDir())

	n := network(p, "n1", "10.78.1.0/24", map[string]string{OptParent: "up0"})
	n.Gateway = "10.78.1.254"
	a1 := endpoint(t, p, "a1", "10.78.1.1", "02:00:0a:4e:01:01", n)
	a2 := endpoint(t, p, "a2", "10.78.1.2", "02:00:0a:4e:01:02", n)
	b1 := endpoint(t, p, "b1", "10.78.1.3", "02:00:0a:4e:01:03", n)
	// A crash right after creating a2's child left it unmarked under its
	// temporary name: Ensure replaces it, leaving one child.
	nstest.Exec(t, p+"ha", "ip", "link", "add", "link", "up0", "name", tmpChildName(a2.Key()), "netns", p+"a2", "type", "macvlan")
	var first map[string]core.ObservedEndpoint
	for i := 0; i < 2; i++ { // the second round must be a no-op
		for _, d := range []*Driver{dA, dB} {
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		got := mustEnsure(t, dA, a1, a2)
		for k, v := range mustEnsure(t, dB, b1) {
			got[k] = v
		}
		if first == nil {
			first = got
			continue
		}
		for k, o := range got {
			if o.IfIndex != first[k].IfIndex || o.IfName != "eth0" {
				t.Fatalf("second ensure of %s changed the child: %+v, was %+v", k, o, first[k])
			}
		}
	}
	// Each endpoint has exactly one child, with its own MAC (the seed gave all
	// of them one), its address and the gateway route.
	for _, e := range []core.EndpointSpec{a1, a2, b1} {
		ns := p + e.Name
		links := containerLinks(t, ns)
		if len(links) != 1 || !strings.Contains(links[0], "eth0@") || !strings.Contains(links[0], e.MAC) {
			t.Fatalf("%s should hold one eth0 with MAC %s: %q", ns, e.MAC, links)
		}
		if out := nstest.Exec(t, ns, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, e.IP+"/24") {
			t.Fatalf("%s: address missing:\n%s", ns, out)
		}
		if out := nstest.Exec(t, ns, "ip", "route"); !strings.Contains(out, "default via 10.78.1.254 dev eth0") {
			t.Fatalf("%s: gateway route missing:\n%s", ns, out)
		}
	}
	nstest.MustPing(t, p+"a1", "10.78.1.2") // bridge mode: siblings on one parent
	nstest.MustPing(t, p+"a1", "10.78.1.3") // across hosts, through the underlay
	nstest.MustPing(t, p+"b1", "10.78.1.2")
	// By design the host cannot reach its own children through the parent.
	nstest.Exec(t, p+"ha", "ip", "addr", "add", "10.78.1.100/24", "dev", "up0")
	nstest.MustNotPing(t, p+"a1", "10.78.1.100")
	nstest.MustPing(t, p+"b1", "10.78.1.100") // ...while another host can

	act, err := dA.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(act.Endpoints) != 2 || len(act.Networks) != 1 || act.Networks[n.Key()].Fingerprint != n.Fingerprint() {
		t.Fatalf("observe: %+v", act)
	}
	for _, e := range []core.EndpointSpec{a1, a2} {
		if o := act.Endpoints[e.Key()]; !o.Healthy || o.Fingerprint != e.Fingerprint() || o.IfIndex != first[e.Key()].IfIndex {
			t.Fatalf("observe %s: %+v", e.Key(), o)
		}
	}

	// A child knocked down is observed unhealthy and repaired in place.
	nstest.Exec(t, p+"a1", "ip", "link", "set", "eth0", "down")
	if act, _ = dA.Observe(ctx); act.Endpoints[a1.Key()].Healthy {
		t.Fatal("a child that is down observed healthy")
	}
	if o := mustEnsure(t, dA, a1)[a1.Key()]; o.IfIndex != first[a1.Key()].IfIndex {
		t.Fatalf("repair recreated the child: %+v", o)
	}
	nstest.MustPing(t, p+"a1", "10.78.1.3")

	// Crash: a new driver on the same state dir sees the same children, healthy,
	// and Ensure keeps them.
	dA2 := newDriver(t, p, "ha", dirA)
	act, err = dA2.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []core.EndpointSpec{a1, a2} {
		if o := act.Endpoints[e.Key()]; !o.Healthy || o.IfIndex != first[e.Key()].IfIndex {
			t.Fatalf("after crash, observe %s: %+v", e.Key(), o)
		}
	}
	if act.Networks[n.Key()].Fingerprint != n.Fingerprint() {
		t.Fatalf("after crash, network: %+v", act.Networks)
	}
	if p := core.Reconcile(core.Desired{Networks: []core.NetworkSpec{n}, Endpoints: []core.EndpointSpec{a1, a2}}, act); !p.Empty() {
		t.Fatalf("a restarted agent would change things: %+v", p)
	}
	for k, o := range mustEnsure(t, dA2, a1, a2) {
		if o.IfIndex != first[k].IfIndex {
			t.Fatalf("after crash, ensure %s recreated the child: %+v", k, o)
		}
	}

	// Remove, twice, with only what Observe reported.
	for i := 0; i < 2; i++ {
		for _, e := range []core.EndpointSpec{a1, a2} {
			if err := dA2.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, e := range []core.EndpointSpec{a1, a2} {
		if l := containerLinks(t, p+e.Name); len(l) != 0 {
			t.Fatalf("child left behind in %s: %q", e.Name, l)
		}
	}
	// A container whose namespace is gone took its child along: success.
	if out, err := runIP("netns", "del", p+"b1"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if act, _ = dB.Observe(ctx); act.Endpoints[b1.Key()].Healthy {
		t.Fatal("endpoint of a deleted namespace observed healthy")
	}
	if err := dB.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: b1.Key()}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Driver{dA2, dB} {
		if err := d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
			t.Fatal(err)
		}
		if act, err := d.Observe(ctx); err != nil || len(act.Networks)+len(act.Endpoints) != 0 {
			t.Fatalf("after remove: %+v %v", act, err)
		}
	}
	if l := containerLinks(t, p+"ha"); len(l) != 1 { // only up0 is left, untouched
		t.Fatalf("host a: %q", l)
	}
	// Other packages' tests may add links to the root namespace meanwhile: only
	// names this test's objects could have count.
	ours := map[string]bool{"up0": true, "br0": true}
	for _, e := range []core.EndpointSpec{a1, a2, b1} {
		ours[tmpChildName(e.Key())] = true
	}
	for l := range nstest.Links(t) {
		if !before[l] && (ours[l] || strings.Contains(l, p)) {
			t.Errorf("leaked link %s in the root namespace", l)
		}
	}
}

func TestPrivateMode(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	p := nstest.Prefix()
	underlay(t, p, "ha", "hb")
	dA, dB := newDriver(t, p, "ha", t.TempDir()), newDriver(t, p, "hb", t.TempDir())
	// The network starts in bridge mode, then the user switches it to private:
	// the endpoints' fingerprints do not change, their health does, and Ensure
	// rebuilds the children in the new mode.
	n := network(p, "priv", "10.78.2.0/24", map[string]string{OptParent: "up0"})
	a1 := endpoint(t, p, "a1", "10.78.2.1", "02:00:0a:4e:02:01", n)
	a2 := endpoint(t, p, "a2", "10.78.2.2", "02:00:0a:4e:02:02", n)
	b1 := endpoint(t, p, "b1", "10.78.2.3", "02:00:0a:4e:02:03", n)
	for _, d := range []*Driver{dA, dB} {
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	before := mustEnsure(t, dA, a1, a2)
	mustEnsure(t, dB, b1)
	nstest.MustPing(t, p+"a1", "10.78.2.2")

	n.Options = map[string]string{OptParent: "up0", OptMode: ModePrivate}
	for _, e := range []*core.EndpointSpec{&a1, &a2, &b1} {
		e.Net = n
	}
	for _, d := range []*Driver{dA, dB} {
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	act, err := dA.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := act.Endpoints[a1.Key()]; o.Healthy || o.Fingerprint != a1.Fingerprint() {
		t.Fatalf("a child in the old mode must be observed unhealthy: %+v", o)
	}
	if o := mustEnsure(t, dA, a1, a2)[a1.Key()]; o.IfIndex == before[a1.Key()].IfIndex {
		t.Fatal("child not rebuilt in the new mode")
	}
	mustEnsure(t, dB, b1)
	if out := nstest.Exec(t, p+"a1", "ip", "-d", "link", "show", "eth0"); !strings.Contains(out, "macvlan mode private") {
		t.Fatalf("child not in private mode:\n%s", out)
	}
	// Private children of one parent never reach each other, even through a
	// switch that would hairpin; they do reach the rest of the segment.
	nstest.MustPing(t, p+"a1", "10.78.2.3")
	nstest.MustPing(t, p+"a2", "10.78.2.3")
	nstest.MustNotPing(t, p+"a1", "10.78.2.2")
	nstest.MustNotPing(t, p+"a2", "10.78.2.1")
}

func TestBadInputChangesNothing(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	p := nstest.Prefix()
	underlay(t, p, "ha", "hb")
	d := newDriver(t, p, "ha", t.TempDir())
	observe := func() core.Actual {
		t.Helper()
		a, err := d.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	missing := network(p, "nx", "10.78.3.0/24", map[string]string{OptParent: "nope0"})
	err := d.EnsureNetwork(ctx, missing)
	if !errors.Is(err, core.ErrNotFound) || !strings.Contains(err.Error(), "nope0") {
		t.Fatalf("missing parent: %v", err)
	}
	for _, opts := range []map[string]string{
		{OptParent: "up0", OptMode: "bridged"},
		{OptMode: ModeBridge},
		{OptParent: "up0", "parrent": "up0"},
		{OptParent: "up0", OptVLAN: "4095"},
	} {
		if err := d.EnsureNetwork(ctx, network(p, "nb", "10.78.3.0/24", opts)); !errors.Is(err, core.ErrInvalid) {
			t.Fatalf("options %v: want ErrInvalid, got %v", opts, err)
		}
	}

	bridge := network(p, "nbr", "10.78.4.0/24", map[string]string{OptParent: "up0"})
	if err := d.EnsureNetwork(ctx, bridge); err != nil {
		t.Fatal(err)
	}
	private := network(p, "npr", "10.78.5.0/24", map[string]string{OptParent: "up0", OptMode: ModePrivate})
	err = d.EnsureNetwork(ctx, private)
	if !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), "parent up0 already used by network "+bridge.Key()+" in mode bridge") {
		t.Fatalf("mode clash: %v", err)
	}
	pass := network(p, "npt", "10.78.6.0/24", map[string]string{OptParent: "up0", OptMode: ModePassthru})
	if err := d.EnsureNetwork(ctx, pass); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("passthru next to another network: %v", err)
	}
	same := network(p, "nbr2", "10.78.7.0/24", map[string]string{OptParent: "up0", OptMode: ModeBridge})
	if err := d.EnsureNetwork(ctx, same); err != nil {
		t.Fatalf("a second bridge-mode network on the parent is fine: %v", err)
	}
	if a := observe(); len(a.Networks) != 2 || a.Networks[private.Key()].Key != "" || a.Networks[missing.Key()].Key != "" {
		t.Fatalf("refused networks were recorded: %+v", a.Networks)
	}

	// Two endpoints with one MAC on one parent: the second is refused and leaves
	// neither a child nor a record.
	e1 := endpoint(t, p, "e1", "10.78.4.1", "02:00:0a:4e:04:01", bridge)
	e2 := endpoint(t, p, "e2", "10.78.4.2", "02:00:0a:4e:04:01", bridge)
	mustEnsure(t, d, e1)
	if _, err := d.EnsureEndpoint(ctx, e2); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("duplicate MAC: %v", err)
	}
	if l := containerLinks(t, p+"e2"); len(l) != 0 {
		t.Fatalf("refused endpoint left %q", l)
	}
	if a := observe(); len(a.Endpoints) != 1 {
		t.Fatalf("refused endpoint recorded: %+v", a.Endpoints)
	}
	// An endpoint of a network whose parent is missing.
	e3 := endpoint(t, p, "e3", "10.78.3.1", "02:00:0a:4e:03:01", missing)
	if _, err := d.EnsureEndpoint(ctx, e3); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("endpoint on missing parent: %v", err)
	}

	// Passthru on host b's parent: one endpoint with the parent's MAC, no second.
	dB := newDriver(t, p, "hb", t.TempDir())
	passB := network(p, "npt", "10.78.6.0/24", map[string]string{OptParent: "up0", OptMode: ModePassthru})
	if err := dB.EnsureNetwork(ctx, passB); err != nil {
		t.Fatal(err)
	}
	pt1 := endpoint(t, p, "pt1", "10.78.6.1", "02:00:0a:4e:06:01", passB)
	pt2 := endpoint(t, p, "pt2", "10.78.6.2", "02:00:0a:4e:06:02", passB)
	mustEnsure(t, dB, pt1)
	mustEnsure(t, dB, pt1)
	if _, err := dB.EnsureEndpoint(ctx, pt2); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("second passthru endpoint: %v", err)
	}
	parentMAC := strings.Fields(strings.SplitN(nstest.Exec(t, p+"hb", "ip", "-o", "link", "show", "up0"), "link/ether ", 2)[1])[0]
	if l := containerLinks(t, p+"pt1"); len(l) != 1 || !strings.Contains(l[0], parentMAC) {
		t.Fatalf("passthru child should carry the parent's MAC %s: %q", parentMAC, l)
	}

	// VLAN networks on a kernel without 802.1Q: a clear error, nothing created.
	if vlanSupported(t, p) {
		return
	}
	err = d.EnsureNetwork(ctx, network(p, "nv", "10.78.8.0/24", map[string]string{OptParent: "up0", OptVLAN: "100"}))
	if err == nil || !strings.Contains(err.Error(), "CONFIG_VLAN_8021Q") {
		t.Fatalf("vlan without 8021q: %v", err)
	}
	if a := observe(); len(a.Networks) != 2 {
		t.Fatalf("refused VLAN network recorded: %+v", a.Networks)
	}
}
