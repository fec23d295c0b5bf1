package ovs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// countingOfctl wraps ovs-ofctl in a script that counts its runs.
func countingOfctl(t *testing.T) (path string, runs func() int) {
	t.Helper()
	real, err := findBinary("ovs-ofctl")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	count := filepath.Join(dir, "runs")
	path = filepath.Join(dir, "ovs-ofctl")
	script := fmt.Sprintf("#!/bin/sh\necho run >> %s\nexec %s \"$@\"\n", count, real)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "run")
	}
}

// The tunnel flows cost one ovs-ofctl run per change and none while nothing
// changes (the agent calls SetRemotes on every sync): a remote endpoint added
// is one run with its unicast flow in it; a vswitchd whose tunnel bridge lost
// its flows (restarted) gets them again although the set did not change.
func TestFlowsOnlyWhenChanged(t *testing.T) {
	ofctl, runs := countingOfctl(t)
	nstest.RequireRoot(t)
	ha, hb := vxlanPair(t)
	ha.cfg.Ofctl = ofctl
	ha.drv = ha.newDriver(t)
	p := nstest.Prefix()
	vx := network(p, "vx", core.EncapVXLAN, 7101, "10.81.0.0/24")
	a := endpoint(t, p, "a", "10.81.0.1", vx, 1)
	b := endpoint(t, p, "b", "10.81.0.2", vx, 2)
	c := endpoint(t, p, "c", "10.81.0.3", vx, 3)
	mustEnsureNets(t, ha.drv, vx)
	mustEnsureNets(t, hb.drv, vx)
	mustEnsureEPs(t, ha.drv, a)
	mustEnsureEPs(t, hb.drv, b)
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b}))
	mustSetRemotes(t, hb.drv, remotesOn(ha, []core.EndpointSpec{a}))
	waitHealthy(t, ha.drv, a.Key())
	waitHealthy(t, hb.drv, b.Key())
	nstest.MustPing(t, p+"a", "10.81.0.2")

	// VXLAN containers get br-phy's MTU less 50, also a link handed off to
	// Docker, before Docker takes it.
	if out := nstest.Exec(t, p+"a", "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1450") {
		t.Errorf("container MTU:\n%s", out)
	}
	ho := endpoint(t, p, "ho", "10.81.0.9", vx, 9)
	name, err := ha.drv.PrepareHandOff(testCtx(t), ho)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "link", "show", name).CombinedOutput(); err != nil || !strings.Contains(string(out), "mtu 1450") {
		t.Errorf("handed-off link: %v\n%s", err, out)
	}
	if err := ha.drv.RemoveEndpoint(testCtx(t), core.ObservedEndpoint{Key: ho.Key()}); err != nil {
		t.Fatal(err)
	}

	first := runs()
	if first == 0 {
		t.Fatal("flows never written")
	}
	for i := 0; i < 5; i++ { // five syncs with nothing new
		mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b}))
		mustEnsureNets(t, ha.drv, vx)
	}
	if got := runs(); got != first {
		t.Fatalf("ovs-ofctl ran %d more times with nothing changed", got-first)
	}
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b, c}))
	if got := runs(); got != first+1 {
		t.Fatalf("ovs-ofctl ran %d times for one change", got-first)
	}
	if !strings.Contains(strings.Join(ourFlows(t, ha), "\n"), "dl_dst="+c.MAC) {
		t.Fatalf("no unicast flow for the new remote endpoint:\n%s", strings.Join(ourFlows(t, ha), "\n"))
	}

	// Flows lost with vswitchd (emptied here by hand, as a restarted vswitchd
	// has none, with the pid the driver recorded changed as a restart would):
	// put back although the wanted set did not change.
	ha.ofctl(t, "del-flows", "unix:"+ha.inst.Dir+"/np-tun.mgmt")
	ha.drv.applied.pid = "an earlier vswitchd"
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b, c}))
	if len(ourFlows(t, ha)) == 0 {
		t.Fatal("flows not written again for a restarted vswitchd")
	}
	nstest.MustPing(t, p+"a", "10.81.0.2")

	removeAll(t, ha.drv, []core.EndpointSpec{a}, []core.NetworkSpec{vx})
	removeAll(t, hb.drv, []core.EndpointSpec{b}, []core.NetworkSpec{vx})
	assertClean(t, ha)
	assertClean(t, hb)
}

// Rows carry the host label of the agent that made them. An agent with
// another label neither takes them over nor sweeps them away: it refuses the
// bridge with an error naming the owner, does not observe the endpoints, and
// its "last network gone" leaves them; the owner goes on as before.
func TestHostLabelOwnership(t *testing.T) {
	h := newHost(t, func(c *Config) { c.Host = "h1" })
	p := nstest.Prefix()
	n := network(p, "n", core.EncapVLAN, 20, "10.82.0.0/24")
	a := endpoint(t, p, "a", "10.82.0.1", n, 1)
	mustEnsureNets(t, h.drv, n)
	mustEnsureEPs(t, h.drv, a)
	waitHealthy(t, h.drv, a.Key())
	for _, row := range [][]string{{"Bridge", "np-int"}, {"Port", core.HostIfName(a.Key())}, {"Interface", core.HostIfName(a.Key())}} {
		if ext := h.vsctl(t, "get", row[0], row[1], "external_ids"); !strings.Contains(ext, "netplugin-host=h1") {
			t.Errorf("%s %s not marked with the host label: %s", row[0], row[1], ext)
		}
	}

	renamed := *h
	renamed.cfg.Host = "h2"
	other := renamed.newDriver(t)
	before := h.vsctl(t, "--columns=name,external_ids", "list", "Port")
	err := other.EnsureNetwork(testCtx(t), n)
	if !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), `host "h1"`) {
		t.Fatalf("another label's bridge: %v", err)
	}
	act, err := other.Observe(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(act.Endpoints)+len(act.Networks) != 0 {
		t.Fatalf("another label's rows observed as ours: %+v", act)
	}
	if err := other.RemoveNetwork(testCtx(t), core.ObservedNetwork{Key: n.Key()}); err != nil {
		t.Fatal(err)
	}
	if err := other.RemoveEndpoint(testCtx(t), core.ObservedEndpoint{Key: a.Key()}); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("removing another label's endpoint: %v", err)
	}
	if after := h.vsctl(t, "--columns=name,external_ids", "list", "Port"); after != before {
		t.Fatalf("another label's agent changed the rows:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	waitHealthy(t, h.drv, a.Key())
	removeAll(t, h.drv, []core.EndpointSpec{a}, []core.NetworkSpec{n})
	assertClean(t, h)
}
