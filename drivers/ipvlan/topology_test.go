package ipvlan

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// A test underlay: one "switch" namespace holding a bridge, and per host a
// namespace whose up0 (a veth, the other end on the bridge) is the ipvlan
// parent, with underlay address 10.79.0.<n>. Each host has its own Driver and
// state dir, as each host has its own agent. Host 0's agent has a host label
// (qualified ownership marks), the others none.

const parentIf = "up0"

type testHost struct {
	label    string // Config.Host
	ns       string
	underlay string // plain IP on up0
	stateDir string
	d        *Driver
}

type underlay struct {
	t      *testing.T
	p      string // unique name prefix
	sw     string // switch namespace
	hosts  []*testHost
	tenant string
}

func newUnderlay(t *testing.T, nhosts int) *underlay {
	t.Helper()
	p := nstest.Prefix()
	// Registered first, so it runs last: after every namespace's own cleanup.
	t.Cleanup(func() {
		if left := netnsWithPrefix(p); len(left) > 0 {
			t.Errorf("leaked namespaces: %v", left)
		}
	})
	u := &underlay{t: t, p: p, sw: nstest.NS(t, p+"sw"), tenant: p}
	nstest.Exec(t, u.sw, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, u.sw, "ip", "link", "set", "br0", "up")
	for i := 0; i < nhosts; i++ {
		h := &testHost{ns: nstest.NS(t, fmt.Sprintf("%sh%d", p, i)), underlay: fmt.Sprintf("10.79.0.%d", i+1),
			stateDir: t.TempDir()}
		if i == 0 {
			h.label = "h0"
		}
		port := fmt.Sprintf("s%d", i)
		nstest.Exec(t, u.sw, "ip", "link", "add", port, "type", "veth", "peer", "name", parentIf, "netns", h.ns)
		nstest.Exec(t, u.sw, "ip", "link", "set", port, "master", "br0", "up")
		nstest.Exec(t, h.ns, "ip", "addr", "add", h.underlay+"/24", "dev", parentIf)
		nstest.Exec(t, h.ns, "ip", "link", "set", parentIf, "up")
		h.d = u.driver(h)
		u.hosts = append(u.hosts, h)
	}
	return u
}

// driver returns a fresh Driver for h, as a restarted agent would make.
func (u *underlay) driver(h *testHost) *Driver {
	return New(testLog(), Config{StateDir: h.stateDir, HostNetNS: nstest.Path(h.ns), Host: h.label})
}

func (u *underlay) network(name, subnet, gw, mode string) core.NetworkSpec {
	return core.NetworkSpec{Network: core.Network{Tenant: u.tenant, Name: name, Driver: Name, Encap: core.EncapVLAN, Tag: 1,
		Subnet: subnet, Gateway: gw, Options: map[string]string{OptParent: parentIf, OptMode: mode}}}
}

// endpoint makes the container namespace of a new endpoint. Its MAC is set on
// purpose: the driver must ignore it.
func (u *underlay) endpoint(name, ip string, n core.NetworkSpec) core.EndpointSpec {
	ns := nstest.NS(u.t, u.p+name)
	return core.EndpointSpec{
		Endpoint:  core.Endpoint{Tenant: u.tenant, Network: n.Name, Name: name, IP: ip, MAC: "02:42:0a:4f:00:01"},
		Net:       n,
		NetNSPath: nstest.Path(ns), NetNSID: nsID(u.t, nstest.Path(ns)),
	}
}

func (u *underlay) ns(ep core.EndpointSpec) string { return u.p + ep.Name }

func nsID(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// ensureAll ensures networks then endpoints, twice: the second round must be
// a no-op that keeps every ifindex.
func ensureAll(t *testing.T, h *testHost, nets []core.NetworkSpec, eps []core.EndpointSpec) map[string]core.ObservedEndpoint {
	t.Helper()
	ctx := context.Background()
	first := map[string]core.ObservedEndpoint{}
	for round := 0; round < 2; round++ {
		for _, n := range nets {
			if err := h.d.EnsureNetwork(ctx, n); err != nil {
				t.Fatalf("ensure network %s: %v", n.Key(), err)
			}
		}
		for _, e := range eps {
			o, err := h.d.EnsureEndpoint(ctx, e)
			if err != nil {
				t.Fatalf("ensure endpoint %s: %v", e.Key(), err)
			}
			if !o.Healthy || o.Fingerprint != e.Fingerprint() || o.IfIndex == 0 {
				t.Fatalf("ensure endpoint %s: %+v", e.Key(), o)
			}
			if round == 1 && o.IfIndex != first[e.Key()].IfIndex {
				t.Fatalf("second ensure of %s recreated it: ifindex %d -> %d", e.Key(), first[e.Key()].IfIndex, o.IfIndex)
			}
			first[e.Key()] = o
		}
	}
	return first
}

// mustObserve checks that d reports exactly eps, healthy, with the ifindexes of want.
func mustObserve(t *testing.T, d *Driver, eps []core.EndpointSpec, want map[string]core.ObservedEndpoint) {
	t.Helper()
	act, err := d.Observe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(act.Endpoints) != len(eps) {
		t.Fatalf("observed %d endpoints, want %d: %+v", len(act.Endpoints), len(eps), act.Endpoints)
	}
	for _, e := range eps {
		o := act.Endpoints[e.Key()]
		if !o.Healthy || o.Fingerprint != e.Fingerprint() || o.IfIndex != want[e.Key()].IfIndex {
			t.Fatalf("observe %s: %+v, want healthy with ifindex %d", e.Key(), o, want[e.Key()].IfIndex)
		}
	}
}

// removeAll removes endpoints and networks twice (the second time they are
// absent, which is success) and checks nothing of ours is left.
func removeAll(t *testing.T, h *testHost, nets []core.NetworkSpec, eps []core.EndpointSpec) {
	t.Helper()
	ctx := context.Background()
	for round := 0; round < 2; round++ {
		for _, e := range eps {
			if err := h.d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()}); err != nil {
				t.Fatalf("remove %s (round %d): %v", e.Key(), round, err)
			}
		}
		for _, n := range nets {
			if err := h.d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
				t.Fatalf("remove network %s (round %d): %v", n.Key(), round, err)
			}
		}
	}
	act, err := h.d.Observe(ctx)
	if err != nil || len(act.Endpoints)+len(act.Networks) != 0 {
		t.Fatalf("after removal observed %+v %v", act, err)
	}
}

// linksIn lists the link names of namespace ns.
func linksIn(t *testing.T, ns string) []string {
	t.Helper()
	var names []string
	for _, line := range strings.Split(nstest.Exec(t, ns, "ip", "-o", "link", "show"), "\n") {
		// Only "N: name: ..." lines are links: under load ip also prints
		// notes such as a peer-netns warning, whose first word is no index.
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		if _, err := strconv.Atoi(strings.TrimSuffix(f[0], ":")); err == nil {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			names = append(names, name)
		}
	}
	return names
}

// netnsWithPrefix lists the named namespaces starting with p.
func netnsWithPrefix(p string) []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], p) {
			left = append(left, f[0])
		}
	}
	return left
}
