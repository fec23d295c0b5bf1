package ovs

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// A restarted agent (a new Driver on the same OVS) adopts what is programmed:
// same fingerprints, same ofports and ifindexes, traffic never stops. Then
// drift made by hand is repaired: a deleted port, a changed tag, a deleted
// flow, and an ovsdb-server restart is survived.
func TestRestartAndDrift(t *testing.T) {
	ha, hb := vxlanPair(t)
	p := nstest.Prefix()
	vx := network(p, "vx", core.EncapVXLAN, 7001, "10.80.0.0/24")
	a := endpoint(t, p, "a", "10.80.0.1", vx, 1)
	b := endpoint(t, p, "b", "10.80.0.2", vx, 2)
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b}))
	mustSetRemotes(t, hb.drv, remotesOn(ha, []core.EndpointSpec{a}))
	mustEnsureNets(t, ha.drv, vx)
	mustEnsureNets(t, hb.drv, vx)
	obsA := mustEnsureEPs(t, ha.drv, a)[a.Key()]
	obsB := mustEnsureEPs(t, hb.drv, b)[b.Key()]
	waitHealthy(t, ha.drv, a.Key())
	waitHealthy(t, hb.drv, b.Key())
	nstest.MustPing(t, p+"a", "10.80.0.2")
	portA, portB := core.HostIfName(a.Key()), core.HostIfName(b.Key())
	ofA, ofB := ha.ofport(t, portA), hb.ofport(t, portB)

	// Ping throughout the restart: 40 echoes, 50 ms apart.
	ping := exec.Command("ip", "netns", "exec", p+"a", "ping", "-c", "40", "-i", "0.05", "-W", "1", "10.80.0.2")
	var pingOut strings.Builder
	ping.Stdout, ping.Stderr = &pingOut, &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ping.Process.Kill(); _ = ping.Wait() })
	time.Sleep(200 * time.Millisecond)

	for _, hx := range []struct {
		h, other *host
		ep, far  core.EndpointSpec
		obs      core.ObservedEndpoint
	}{{ha, hb, a, b, obsA}, {hb, ha, b, a, obsB}} {
		d := hx.h.newDriver(t)
		act, err := d.Observe(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		o := act.Endpoints[hx.ep.Key()]
		if !o.Healthy || o.Fingerprint != hx.ep.Fingerprint() || o.IfIndex != hx.obs.IfIndex {
			t.Fatalf("new driver observes %+v, want healthy %s ifindex %d", o, hx.ep.Fingerprint(), hx.obs.IfIndex)
		}
		if n := act.Networks[vx.Key()]; n.Fingerprint != vx.Fingerprint() {
			t.Fatalf("new driver observes network %+v", n)
		}
		// What the agent does on its first pass: networks, endpoints, remotes.
		mustEnsureNets(t, d, vx)
		if o := mustEnsureEPs(t, d, hx.ep)[hx.ep.Key()]; o.IfIndex != hx.obs.IfIndex {
			t.Fatalf("Ensure after restart recreated the link: %+v, was %+v", o, hx.obs)
		}
		mustSetRemotes(t, d, remotesOn(hx.other, []core.EndpointSpec{hx.far}))
		hx.h.drv = d
	}
	if got := ha.ofport(t, portA); got != ofA {
		t.Errorf("ofport of %s changed across restart: %d -> %d", portA, ofA, got)
	}
	if got := hb.ofport(t, portB); got != ofB {
		t.Errorf("ofport of %s changed across restart: %d -> %d", portB, ofB, got)
	}
	if err := ping.Wait(); err != nil || !strings.Contains(pingOut.String(), " 0% packet loss") {
		t.Fatalf("traffic stopped during restart (%v):\n%s", err, pingOut.String())
	}

	// ovsdb-server restarts: the driver reconnects on its next call.
	hb.inst.KillDBServer(t)
	hb.inst.RestartDBServer(t)
	waitHealthy(t, hb.drv, b.Key())

	// A port deleted by hand is unhealthy, and Ensure puts it back.
	hb.vsctl(t, "del-port", "np-int", portB)
	if act, err := hb.drv.Observe(testCtx(t)); err != nil || act.Endpoints[b.Key()].Healthy {
		t.Fatalf("deleted port observed as healthy: %+v %v", act.Endpoints[b.Key()], err)
	}
	nstest.MustNotPing(t, p+"a", "10.80.0.2")
	if o := mustEnsureEPs(t, hb.drv, b)[b.Key()]; o.IfIndex != obsB.IfIndex {
		t.Errorf("putting the port back recreated the link: %+v", o)
	}
	waitHealthy(t, hb.drv, b.Key())
	nstest.MustPing(t, p+"a", "10.80.0.2")

	// A tag changed by hand is repaired in place: same ofport.
	ofB = hb.ofport(t, portB)
	want := hb.vsctl(t, "get", "Port", portB, "tag")
	hb.vsctl(t, "set", "Port", portB, "tag=7")
	if act, _ := hb.drv.Observe(testCtx(t)); act.Endpoints[b.Key()].Healthy {
		t.Fatal("port with a wrong tag observed as healthy")
	}
	mustEnsureEPs(t, hb.drv, b)
	if got := hb.vsctl(t, "get", "Port", portB, "tag"); got != want {
		t.Errorf("tag = %s after repair, want %s", got, want)
	}
	if got := hb.ofport(t, portB); got != ofB {
		t.Errorf("repairing the tag changed the ofport: %d -> %d", ofB, got)
	}
	nstest.MustPing(t, p+"a", "10.80.0.2")

	// A flow deleted by hand comes back with the first SetRemotes (every
	// sync) after FlowRefresh.
	before := ourFlows(t, ha)
	ha.ofctl(t, "del-flows", "unix:"+ha.inst.Dir+"/np-tun.mgmt", "table=1,tun_id=7001")
	if len(ourFlows(t, ha)) != len(before)-1 {
		t.Fatal("flow not deleted by hand")
	}
	nstest.MustNotPing(t, p+"a", "10.80.0.2")
	ha.drv.cfg.FlowRefresh = time.Millisecond
	time.Sleep(2 * time.Millisecond)
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b}))
	if after := ourFlows(t, ha); len(after) != len(before) {
		t.Fatalf("flows not restored:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	nstest.MustPing(t, p+"a", "10.80.0.2")

	removeAll(t, ha.drv, []core.EndpointSpec{a}, []core.NetworkSpec{vx})
	removeAll(t, hb.drv, []core.EndpointSpec{b}, []core.NetworkSpec{vx})
	assertClean(t, ha)
	assertClean(t, hb)
}
