package ovs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// handOffChildEnv carries, as JSON, the namespaces a re-executed test binary
// works with (see TestHandOffOwnNamespace).
const handOffChildEnv = "NETPLUGIN_OVS_HANDOFF_CHILD"

type handOffChild struct {
	HostNS    string    // the namespace the child runs in, for ip -n
	Prefix    string    // tenant and name prefix
	Sandboxes [3]string // container namespaces, made by the parent
}

// Tests run vswitchd in a namespace of its own (HostNetNS set): the container
// end of a handed-off veth is made in the test's namespace, where dockerd
// would take it from, and the host end in vswitchd's.
func TestHandOffOVSNamespace(t *testing.T) {
	h := newHost(t, nil)
	p := nstest.Prefix()
	var sb [3]string
	for i, n := range []string{"a", "b", "c"} {
		sb[i] = nstest.NS(t, p+n)
	}
	handOffScenario(t, h, p, sb)
}

// In production vswitchd, dockerd and the agent share one namespace and
// HostNetNS is empty. The driver resolves that as its own process's
// namespace, so the test binary runs this test again inside a fresh namespace
// (ip netns exec), where the child starts its own OVS and drives it with an
// empty HostNetNS. The parent makes the container namespaces: ones created
// under ip netns exec would live in its private mount namespace.
func TestHandOffOwnNamespace(t *testing.T) {
	if env := os.Getenv(handOffChildEnv); env != "" {
		var c handOffChild
		if err := json.Unmarshal([]byte(env), &c); err != nil {
			t.Fatalf("%s: %v", handOffChildEnv, err)
		}
		inst := ovstest.Start(t, ovstest.WithVswitchd())
		h := &host{ns: c.HostNS, inst: inst, cfg: Config{OVSDB: inst.Addr(), RunDir: inst.Dir, DatapathType: "netdev"}}
		h.drv = h.newDriver(t)
		if h.drv.rt != h.drv.host {
			t.Fatal("with an empty HostNetNS the hand-off namespace must be the host namespace")
		}
		handOffScenario(t, h, c.Prefix, c.Sandboxes)
		return
	}
	nstest.RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := handOffChild{HostNS: ovstest.NewNetns(t), Prefix: nstest.Prefix()}
	for i, n := range []string{"a", "b", "c"} {
		c.Sandboxes[i] = nstest.NS(t, c.Prefix+n)
	}
	env, _ := json.Marshal(c)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", c.HostNS, exe,
		"-test.run", "^TestHandOffOwnNamespace$", "-test.count", "1", "-test.v")
	cmd.Env = append(os.Environ(), handOffChildEnv+"="+string(env))
	out, err := cmd.CombinedOutput()
	if m := regexp.MustCompile(`(?m)^\s+\S+\.go:\d+: (.*)\n--- SKIP`).FindSubmatch(out); m != nil {
		t.Skipf("%s", m[1])
	}
	if err != nil {
		t.Fatalf("test inside netns %s: %v\n%s", c.HostNS, err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestHandOffOwnNamespace") {
		t.Fatalf("test inside netns %s did not pass:\n%s", c.HostNS, out)
	}
}

// handOffScenario hands off two endpoints, moves their links into sandboxes
// as Docker does, and checks that they pass traffic, that the agent's view of
// them (Observe, EnsureEndpoint) is healthy and never rebuilds them, that
// drift is repaired without the container end, and that RemoveEndpoint takes
// everything away. sb are the namespaces of a, b (handed off) and c (plugged
// by EnsureEndpoint, on another VLAN).
func handOffScenario(t *testing.T, h *host, p string, sb [3]string) {
	d := h.drv
	ctx := testCtx(t)
	red := network(p, "red", core.EncapVLAN, 100, "10.77.0.0/24")
	blue := network(p, "blue", core.EncapVLAN, 101, "10.77.0.0/24")
	mustEnsureNets(t, d, red, blue)
	spec := func(name, ip string, n core.NetworkSpec, last int, ns string) core.EndpointSpec {
		path := nstest.Path(ns)
		return core.EndpointSpec{
			Endpoint:  core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: name, IP: ip, MAC: fmt.Sprintf("02:42:0a:4d:00:%02x", last)},
			Net:       n,
			NetNSPath: path, NetNSID: core.SandboxNetNSID(path),
		}
	}
	a := spec("a", "10.77.0.1", red, 1, sb[0])
	b := spec("b", "10.77.0.2", red, 2, sb[1])
	c := spec("c", "10.77.0.3", blue, 3, sb[2])
	c.NetNSID = nsID(t, c.NetNSPath)

	handOff := func(ep core.EndpointSpec) string {
		t.Helper()
		name, err := d.PrepareHandOff(ctx, ep)
		if err != nil {
			t.Fatalf("PrepareHandOff %s: %v", ep.Key(), err)
		}
		if want := core.HandOffIfName(ep.Key()); name != want {
			t.Fatalf("PrepareHandOff %s returned %q, want %q", ep.Key(), name, want)
		}
		return name
	}
	linkA := handOff(a)
	hostA, err := d.host.LinkByName(core.HostIfName(a.Key()))
	if err != nil {
		t.Fatalf("host end of a not in the OVS namespace: %v", err)
	}
	peer, err := d.rt.LinkByName(linkA)
	if err != nil {
		t.Fatalf("container end of a not in the agent's namespace: %v", err)
	}
	if got := peer.Attrs().HardwareAddr.String(); got != a.MAC {
		t.Fatalf("container end has MAC %s, want %s", got, a.MAC)
	}
	if d.rt != d.host {
		if _, err := d.host.LinkByName(linkA); err == nil {
			t.Fatal("container end created in the OVS namespace")
		}
		if _, err := d.rt.LinkByName(hostA.Attrs().Name); err == nil {
			t.Fatal("host end created in the agent's namespace")
		}
	}
	// Docker may call again before it moves the link: same link, same port.
	ofA := waitOfport(t, h, hostA.Attrs().Name)
	if again := handOff(a); again != linkA {
		t.Fatalf("repeated PrepareHandOff: %s, then %s", linkA, again)
	}
	if l, err := d.host.LinkByName(hostA.Attrs().Name); err != nil || l.Attrs().Index != hostA.Attrs().Index {
		t.Fatalf("repeated PrepareHandOff rebuilt the host end: %v", err)
	}
	if of := h.ofport(t, hostA.Attrs().Name); of != ofA {
		t.Fatalf("repeated PrepareHandOff changed the ofport %d -> %d", ofA, of)
	}
	if tag := h.vsctl(t, "get", "Port", hostA.Attrs().Name, "tag"); tag != "100" {
		t.Fatalf("port tag %s, want 100", tag)
	}
	if fp := h.vsctl(t, "get", "Port", hostA.Attrs().Name, "external_ids:"+extFP); strings.Trim(fp, `"`) != a.Fingerprint() {
		t.Fatalf("port fingerprint %s, want %s", fp, a.Fingerprint())
	}
	linkB := handOff(b)
	mustEnsureEPs(t, d, c)

	// What Docker does with the link after Join.
	dockerMove := func(link, ns, ip string) {
		t.Helper()
		if out, err := exec.Command("ip", "link", "set", link, "netns", ns).CombinedOutput(); err != nil {
			t.Fatalf("move %s to %s: %v: %s", link, ns, err, out)
		}
		nstest.Exec(t, ns, "ip", "link", "set", link, "name", "eth0")
		nstest.Exec(t, ns, "ip", "addr", "add", ip+"/24", "dev", "eth0")
		nstest.Exec(t, ns, "ip", "link", "set", "eth0", "up")
	}
	dockerMove(linkA, sb[0], a.IP)
	dockerMove(linkB, sb[1], b.IP)
	if out := nstest.Exec(t, sb[0], "ip", "link", "show", "eth0"); !strings.Contains(out, a.MAC) {
		t.Fatalf("eth0 in the sandbox has not the endpoint's MAC %s:\n%s", a.MAC, out)
	}
	nstest.MustPing(t, sb[0], b.IP)
	nstest.MustNotPing(t, sb[0], c.IP)
	nstest.MustNotPing(t, sb[2], a.IP)

	// The agent sees the endpoints as programmed from these very specs and
	// leaves them alone: EnsureEndpoint repairs in place, never rebuilds.
	act := waitHealthy(t, d, a.Key(), b.Key(), c.Key())
	for _, e := range []core.EndpointSpec{a, b} {
		if o := act.Endpoints[e.Key()]; o.Fingerprint != e.Fingerprint() {
			t.Fatalf("observed %s with fingerprint %s, want %s", e.Key(), o.Fingerprint, e.Fingerprint())
		}
	}
	eth0 := nstest.Exec(t, sb[0], "ip", "-o", "link", "show", "eth0")
	o, err := d.EnsureEndpoint(ctx, a)
	if err != nil || !o.Healthy || o.IfIndex != hostA.Attrs().Index {
		t.Fatalf("EnsureEndpoint of a handed-off endpoint: %+v, %v (host ifindex %d)", o, err, hostA.Attrs().Index)
	}
	if of := h.ofport(t, hostA.Attrs().Name); of != ofA {
		t.Fatalf("EnsureEndpoint changed the ofport %d -> %d", ofA, of)
	}
	if again := nstest.Exec(t, sb[0], "ip", "-o", "link", "show", "eth0"); again != eth0 {
		t.Fatalf("EnsureEndpoint touched the sandbox's eth0:\n%s\n%s", eth0, again)
	}

	// Drift on the host side is repaired although the container end is gone.
	h.vsctl(t, "del-port", hostA.Attrs().Name)
	if act, err := d.Observe(ctx); err != nil || act.Endpoints[a.Key()].Healthy {
		t.Fatalf("port deleted by hand, yet observed healthy: %+v %v", act.Endpoints[a.Key()], err)
	}
	if o, err := d.EnsureEndpoint(ctx, a); err != nil || o.IfIndex != hostA.Attrs().Index {
		t.Fatalf("EnsureEndpoint after drift: %+v, %v", o, err)
	}
	waitHealthy(t, d, a.Key())
	nstest.MustPing(t, sb[0], b.IP)

	// DeleteEndpoint: the port and both ends go.
	for _, e := range []core.EndpointSpec{a, b} {
		if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()}); err != nil {
			t.Fatalf("RemoveEndpoint %s: %v", e.Key(), err)
		}
	}
	for i, ns := range sb[:2] {
		if out, err := exec.Command("ip", "-n", ns, "link", "show", "eth0").CombinedOutput(); err == nil {
			t.Errorf("sandbox %d keeps eth0 after RemoveEndpoint:\n%s", i, out)
		}
	}
	for _, l := range []string{linkA, linkB} {
		if _, err := d.rt.LinkByName(l); err == nil {
			t.Errorf("%s left in the agent's namespace", l)
		}
	}
	removeAll(t, d, []core.EndpointSpec{a, b, c}, []core.NetworkSpec{red, blue})
	assertClean(t, h)
}

// waitOfport waits until vswitchd has attached port.
func waitOfport(t *testing.T, h *host, port string) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		// "[]" until vswitchd has opened the device.
		if of, err := strconv.Atoi(h.vsctl(t, "get", "Interface", port, "ofport")); err == nil && of > 0 {
			return of
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("port %s has no ofport", port)
	return 0
}
