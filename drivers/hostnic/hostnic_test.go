package hostnic

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/nstest"
)

// rig is one test host: namespace <p>h, where veth ends stand in for NICs, their
// peers in namespace <p>w ("the wire").
type rig struct {
	p, host, wire string
	dir           string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	r := &rig{p: p, host: nstest.NS(t, p+"h"), wire: nstest.NS(t, p+"w"), dir: t.TempDir()}
	return r
}

// nic makes host NIC name, cabled to wire end peer (which gets peerAddr), with
// the host-side configuration a restore must bring back.
func (r *rig) nic(t *testing.T, name, peer, peerAddr string, hostCmds ...[]string) {
	t.Helper()
	nstest.Exec(t, r.wire, "ip", "link", "add", "name", peer, "type", "veth", "peer", "name", name, "netns", r.host)
	nstest.Exec(t, r.wire, "ip", "addr", "add", peerAddr, "dev", peer)
	nstest.Exec(t, r.wire, "ip", "link", "set", peer, "up")
	for _, c := range hostCmds {
		nstest.Exec(t, r.host, c...)
	}
}

func (r *rig) driver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(logrus.NewEntry(logrus.New()), Config{StateDir: r.dir, NetNS: nstest.Path(r.host), ReturnWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func (r *rig) network(name string, opts map[string]string) core.NetworkSpec {
	return core.NetworkSpec{Network: core.Network{Tenant: r.p, Name: name, Driver: Name, Encap: core.EncapVLAN, Tag: 1,
		Subnet: "10.88.0.0/24", Gateway: "10.88.0.1", Options: opts}}
}

func (r *rig) endpoint(t *testing.T, name, ip, mac string, n core.NetworkSpec) core.EndpointSpec {
	t.Helper()
	path := nstest.Path(nstest.NS(t, r.p+name))
	id, err := nl.NetNSID(path)
	if err != nil {
		t.Fatal(err)
	}
	return core.EndpointSpec{Endpoint: core.Endpoint{Tenant: r.p, Network: n.Name, Name: name, IP: ip, MAC: mac},
		Net: n, NetNSPath: path, NetNSID: id}
}

// ip runs ip in namespace ns and returns its stdout ("" on failure); stderr is
// dropped: ip may complain there about namespaces other tests delete meanwhile.
func ip(ns string, args ...string) string {
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// show is `ip -d addr show` of one link, or "" when it does not exist.
func show(ns, link string) string { return ip(ns, "-d", "addr", "show", "dev", link) }

func macOf(t *testing.T, ns, link string) string {
	t.Helper()
	f := strings.Fields(ip(ns, "-br", "link", "show", "dev", link))
	if len(f) < 3 {
		t.Fatalf("no MAC for %s in %s: %q", link, ns, f)
	}
	return f[2]
}

// hostSide is the host configuration of nic0 that must survive a binding.
func hostSide() [][]string {
	return [][]string{
		{"ip", "link", "set", "nic0", "mtu", "1400"},
		{"ip", "link", "set", "nic0", "alias", "rack 3 uplink"},
		{"ip", "addr", "add", "10.89.0.5/24", "dev", "nic0"},
		{"ip", "addr", "add", "fd00:89::5/64", "dev", "nic0", "nodad"},
		{"ip", "link", "set", "nic0", "up"},
	}
}

// assertHome checks that nic0 is back on the host as it was before.
func assertHome(t *testing.T, r *rig, mac string) {
	t.Helper()
	out := show(r.host, "nic0")
	for _, want := range []string{"mtu 1400", "link/ether " + mac, "inet 10.89.0.5/24", "inet6 fd00:89::5/64", "alias rack 3 uplink", ",UP"} {
		if !strings.Contains(out, want) {
			t.Fatalf("nic0 not given back intact: %q missing in\n%s", want, out)
		}
	}
}

func ensure(t *testing.T, d *Driver, e core.EndpointSpec) core.ObservedEndpoint {
	t.Helper()
	o, err := d.EnsureEndpoint(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Healthy || o.IfName != "eth0" || o.Fingerprint != e.Fingerprint() {
		t.Fatalf("ensure %s: %+v", e.Key(), o)
	}
	return o
}

func TestBindByMACGiveBackAndCrash(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.nic(t, "nic0", "w0", "10.88.0.1/24", hostSide()...)
	mac := macOf(t, r.host, "nic0")
	d := r.driver(t)
	n := r.network("hn", nil)
	// The endpoint's MAC selects the NIC, as docker run --mac-address did.
	c1 := r.endpoint(t, "c1", "10.88.0.2", mac, n)
	for i := 0; i < 2; i++ {
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	first := ensure(t, d, c1)
	if again := ensure(t, d, c1); again.IfIndex != first.IfIndex {
		t.Fatalf("second ensure moved the NIC: %+v, was %+v", again, first)
	}
	if show(r.host, "nic0") != "" {
		t.Fatal("nic0 still on the host")
	}
	if out := show(r.p+"c1", "eth0"); !strings.Contains(out, "link/ether "+mac) || !strings.Contains(out, "inet 10.88.0.2/24") {
		t.Fatalf("eth0 in the container:\n%s", out)
	}
	nstest.MustPing(t, r.wire, "10.88.0.2")
	nstest.MustPing(t, r.p+"c1", "10.88.0.1")

	// Crash: a new driver on the same state dir sees the binding healthy and
	// changes nothing; it can give the NIC back with only the observed key.
	d2 := r.driver(t)
	act, err := d2.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := act.Endpoints[c1.Key()]; !o.Healthy || o.IfIndex != first.IfIndex || o.Fingerprint != c1.Fingerprint() {
		t.Fatalf("after crash, observe: %+v", o)
	}
	if p := core.Reconcile(core.Desired{Networks: []core.NetworkSpec{n}, Endpoints: []core.EndpointSpec{c1}}, act); !p.Empty() {
		t.Fatalf("a restarted agent would change things: %+v", p)
	}
	if o := ensure(t, d2, c1); o.IfIndex != first.IfIndex {
		t.Fatalf("after crash, ensure moved the NIC: %+v", o)
	}
	for i := 0; i < 2; i++ {
		if err := d2.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: c1.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	assertHome(t, r, mac)
	if out := ip(r.p+"c1", "-o", "link", "show"); strings.Count(out, "\n") != 1 {
		t.Fatalf("container still holds links:\n%s", out)
	}
	if err := d2.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
		t.Fatal(err)
	}
	if act, err := d2.Observe(ctx); err != nil || len(act.Endpoints)+len(act.Networks) != 0 {
		t.Fatalf("after remove: %+v %v", act, err)
	}
}

// A NIC that comes back to the host under its in-container name (as a physical
// NIC does when its container's namespace is destroyed) is renamed back and gets
// its addresses again; the endpoint is unhealthy and Ensure binds it again.
func TestNICComesBackUnderContainerName(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.nic(t, "nic0", "w0", "10.88.0.1/24", hostSide()...)
	mac := macOf(t, r.host, "nic0")
	n := r.network("hn", map[string]string{OptNIC: "nic0"})
	c1 := r.endpoint(t, "c1", "10.88.0.2", "02:00:00:00:00:01", n) // ignored: nic= selects
	d := r.driver(t)
	if err := d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	first := ensure(t, d, c1)

	nstest.Exec(t, r.p+"c1", "ip", "link", "set", "eth0", "netns", r.host)
	if show(r.host, "eth0") == "" {
		t.Fatal("test setup: eth0 did not land on the host")
	}
	act, err := d.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := act.Endpoints[c1.Key()]; o.Healthy || o.Key == "" {
		t.Fatalf("a NIC out of its container must be observed unhealthy: %+v", o)
	}
	if show(r.host, "eth0") != "" {
		t.Fatal("eth0 not renamed back")
	}
	assertHome(t, r, mac)
	if o := ensure(t, d, c1); o.IfIndex != first.IfIndex {
		t.Logf("ifindex changed on the way back: %d -> %d", first.IfIndex, o.IfIndex)
	}
	nstest.MustPing(t, r.wire, "10.88.0.2")

	// The same after a crash, with Remove right away (no Observe first).
	nstest.Exec(t, r.p+"c1", "ip", "link", "set", "eth0", "netns", r.host)
	if err := r.driver(t).RemoveEndpoint(ctx, core.ObservedEndpoint{Key: c1.Key()}); err != nil {
		t.Fatal(err)
	}
	assertHome(t, r, mac)
}

// When the container's namespace is deleted, a veth stand-in dies with it: the
// endpoint is observed unhealthy, Remove succeeds after waiting for the NIC, and
// nothing is reported any more.
func TestNamespaceDeleted(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.nic(t, "nic0", "w0", "10.88.0.1/24", hostSide()...)
	mac := macOf(t, r.host, "nic0")
	n := r.network("hn", nil)
	c1 := r.endpoint(t, "c1", "10.88.0.2", mac, n)
	d := r.driver(t)
	ensure(t, d, c1)
	if out, err := exec.Command("ip", "netns", "del", r.p+"c1").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	act, err := d.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := act.Endpoints[c1.Key()]; o.Healthy || o.Key == "" {
		t.Fatalf("endpoint of a deleted namespace: %+v", o)
	}
	start := time.Now()
	if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: c1.Key()}); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("Remove did not wait for the NIC to come back")
	}
	if act, _ := d.Observe(ctx); len(act.Endpoints) != 0 {
		t.Fatalf("removed endpoint still observed: %+v", act.Endpoints)
	}
	if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: c1.Key()}); err != nil {
		t.Fatal(err)
	}
	// A detached binding does not hold the MAC: a new endpoint is told the NIC
	// is not here, not that it is in use.
	c2 := r.endpoint(t, "c2", "10.88.0.3", mac, n)
	if _, err := d.EnsureEndpoint(ctx, c2); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.nic(t, "nic0", "w0", "10.88.0.1/24", hostSide()...)
	r.nic(t, "nic1", "w1", "10.90.0.1/24",
		[]string{"ip", "addr", "add", "10.90.0.5/24", "dev", "nic1"},
		[]string{"ip", "link", "set", "nic1", "up"},
		[]string{"ip", "route", "add", "default", "via", "10.90.0.1"})
	r.nic(t, "nic2", "w2", "10.91.0.1/24",
		[]string{"ip", "link", "add", "br9", "type", "bridge"},
		[]string{"ip", "link", "set", "nic2", "master", "br9"})
	nstest.Exec(t, r.host, "ip", "link", "add", "npbforeign", "type", "bridge")
	nstest.Exec(t, r.host, "ip", "link", "set", "npbforeign", "alias", "netplugin:lbnet:0123456789:t/n")
	mac := macOf(t, r.host, "nic0")
	d := r.driver(t)
	// Names, MACs and IPv4 addresses (IPv6 link-local ones may still be
	// finishing DAD, so they are left out).
	hostView := func() string {
		// Without state and flags: carrier comes up asynchronously.
		var b strings.Builder
		for _, line := range strings.Split(ip(r.host, "-br", "link", "show"), "\n") {
			if f := strings.Fields(line); len(f) > 2 {
				b.WriteString(f[0] + " " + f[2] + "\n")
			}
		}
		for _, line := range strings.Split(ip(r.host, "-br", "-4", "addr", "show"), "\n") {
			if f := strings.Fields(line); len(f) > 2 {
				b.WriteString(f[0] + " " + strings.Join(f[2:], " ") + "\n")
			}
		}
		return b.String()
	}
	before := hostView()

	for _, opts := range []map[string]string{
		{"nics": "nic0"},
		{OptNIC: "nic0", OptMAC: mac},
		{OptNIC: "nic0", OptForce: "yes"},
		{OptMAC: "zz:00"},
	} {
		if err := d.EnsureNetwork(ctx, r.network("bad", opts)); !errors.Is(err, core.ErrInvalid) {
			t.Fatalf("options %v: want ErrInvalid, got %v", opts, err)
		}
	}
	cases := []struct {
		opts map[string]string
		mac  string
		want error
	}{
		{nil, "02:00:00:00:99:99", core.ErrNotFound}, // no NIC with that MAC
		{map[string]string{OptNIC: "nic9"}, "", core.ErrNotFound},
		{nil, "", core.ErrInvalid},                             // nothing selects a NIC
		{map[string]string{OptNIC: "nic1"}, "", core.ErrInUse}, // default route
		{map[string]string{OptNIC: "nic2"}, "", core.ErrInUse}, // bridge port
		{map[string]string{OptNIC: "lo", OptForce: "true"}, "", core.ErrInvalid},
		{map[string]string{OptNIC: "npbforeign", OptForce: "true"}, "", core.ErrInUse},
	}
	for i, c := range cases {
		n := r.network("bad", c.opts)
		e := r.endpoint(t, "e"+string(rune('a'+i)), "10.88.0.9", c.mac, n)
		if _, err := d.EnsureEndpoint(ctx, e); !errors.Is(err, c.want) {
			t.Fatalf("case %d %v: want %v, got %v", i, c.opts, c.want, err)
		}
		if c.opts != nil && c.opts[OptNIC] == "nic1" {
			if err := d.EnsureNetwork(ctx, n); !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), "default route") {
				t.Fatalf("network on the default-route NIC: %v", err)
			}
		}
	}
	if after := hostView(); after != before {
		t.Fatalf("refused requests changed the host:\n%s\n---\n%s", before, after)
	}
	if act, _ := d.Observe(ctx); len(act.Endpoints)+len(act.Networks) != 0 {
		t.Fatalf("refused requests recorded: %+v", act)
	}

	// A NIC bound to one endpoint is in use for another, by MAC or by name.
	n := r.network("hn", nil)
	ensure(t, d, r.endpoint(t, "c1", "10.88.0.2", mac, n))
	if _, err := d.EnsureEndpoint(ctx, r.endpoint(t, "c2", "10.88.0.3", mac, n)); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("NIC bound twice by MAC: %v", err)
	}
	byName := r.network("hn2", map[string]string{OptNIC: "nic0"})
	if _, err := d.EnsureEndpoint(ctx, r.endpoint(t, "c3", "10.88.0.4", "", byName)); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("NIC bound twice by name: %v", err)
	}

	// force=true takes the NIC with the default route, and gives it back.
	forced := r.network("hf", map[string]string{OptNIC: "nic1", OptForce: "true"})
	cf := r.endpoint(t, "cf", "10.88.0.5", "", forced)
	ensure(t, d, cf)
	if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: cf.Key()}); err != nil {
		t.Fatal(err)
	}
	if out := show(r.host, "nic1"); !strings.Contains(out, "inet 10.90.0.5/24") {
		t.Fatalf("nic1 not given back:\n%s", out)
	}
}
