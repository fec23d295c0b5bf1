package ovs

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// vxlanPair builds two hosts whose underlay ports hang off one Linux bridge in
// a third namespace. Each host's VTEP address sits on a netdev bridge br-phy
// holding its underlay port: the userspace datapath sends tunnel packets
// through it by itself.
func vxlanPair(t *testing.T) (ha, hb *host) {
	t.Helper()
	nstest.RequireRoot(t)
	sw := nstest.NS(t, nstest.Prefix()+"sw")
	nstest.Exec(t, sw, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, sw, "ip", "link", "set", "br0", "up")
	ha = newHost(t, func(c *Config) { c.VTEP = "10.99.0.1" })
	hb = newHost(t, func(c *Config) { c.VTEP = "10.99.0.2" })
	for i, h := range []*host{ha, hb} {
		peer := fmt.Sprintf("ul%d", i)
		if out, err := exec.Command("ip", "-n", h.ns, "link", "add", "ul0", "type", "veth", "peer", "name", peer, "netns", sw).CombinedOutput(); err != nil {
			t.Fatalf("underlay: %v: %s", err, out)
		}
		nstest.Exec(t, sw, "ip", "link", "set", peer, "master", "br0", "up")
		h.vsctl(t, "add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev", "--", "add-port", "br-phy", "ul0")
		h.sh(t, "ip", "link", "set", "ul0", "up")
		h.sh(t, "sysctl", "-qw", "net.ipv4.conf.ul0.arp_ignore=1") // as scripts/provision/ovs.sh
		h.sh(t, "ip", "addr", "add", h.cfg.VTEP+"/24", "dev", "br-phy")
		h.sh(t, "ip", "link", "set", "br-phy", "up")
	}
	return ha, hb
}

// remotesOn is what the agent of one host would pass SetRemotes: the
// endpoints eps, all on host peer, and peer as the one remote host of each
// of their networks; nets lists further networks peer has without endpoints
// given here.
func remotesOn(peer *host, eps []core.EndpointSpec, nets ...core.NetworkSpec) map[string]core.NetRemotes {
	out := map[string]core.NetRemotes{}
	hostOf := core.Peer{Name: peer.ns, VTEP: peer.cfg.VTEP}
	for _, n := range nets {
		out[n.Key()] = core.NetRemotes{Hosts: []core.Peer{hostOf}}
	}
	for _, e := range eps {
		r := out[e.Net.Key()]
		r.Hosts = []core.Peer{hostOf}
		r.Endpoints = append(r.Endpoints, core.Remote{MAC: e.MAC, IP: e.IP, Host: peer.ns, VTEP: peer.cfg.VTEP})
		out[e.Net.Key()] = r
	}
	return out
}

func mustSetRemotes(t *testing.T, d *Driver, remotes map[string]core.NetRemotes) {
	t.Helper()
	if err := d.SetRemotes(testCtx(t), remotes); err != nil {
		t.Fatalf("SetRemotes: %v", err)
	}
}

// ourFlows returns the tunnel bridge's flows carrying our cookie.
func ourFlows(t *testing.T, h *host) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(h.ofctl(t, "dump-flows", "unix:"+h.inst.Dir+"/np-tun.mgmt"), "\n") {
		if strings.Contains(l, "cookie="+flowCookie) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// VXLAN networks span two hosts; another VNI on the same tunnels stays apart.
func TestVXLANTwoHosts(t *testing.T) {
	ha, hb := vxlanPair(t)
	p := nstest.Prefix()
	vx1 := network(p, "vx1", core.EncapVXLAN, 5001, "10.79.0.0/24")
	vx2 := network(p, "vx2", core.EncapVXLAN, 5002, "10.79.0.0/24")
	a := endpoint(t, p, "a", "10.79.0.1", vx1, 1)
	b := endpoint(t, p, "b", "10.79.0.2", vx1, 2)
	c := endpoint(t, p, "c", "10.79.0.3", vx2, 3)

	for i := 0; i < 2; i++ {
		// Remotes before networks: remembered, then used when the bridges appear.
		mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b, c}))
		mustSetRemotes(t, hb.drv, remotesOn(ha, []core.EndpointSpec{a}, vx2))
		mustEnsureNets(t, ha.drv, vx1, vx2)
		mustEnsureNets(t, hb.drv, vx1, vx2)
		mustEnsureEPs(t, ha.drv, a)
		mustEnsureEPs(t, hb.drv, b, c)
	}
	waitHealthy(t, ha.drv, a.Key())
	waitHealthy(t, hb.drv, b.Key(), c.Key())
	tun := tunnelName(hb.cfg.VTEP)
	if typ := ha.vsctl(t, "get", "Interface", tun, "type"); typ != "vxlan" {
		t.Fatalf("tunnel port %s type %s", tun, typ)
	}
	if opts := ha.vsctl(t, "get", "Interface", tun, "options"); !strings.Contains(opts, `remote_ip="10.99.0.2"`) ||
		!strings.Contains(opts, `local_ip="10.99.0.1"`) || !strings.Contains(opts, "key=flow") {
		t.Fatalf("tunnel options: %s", opts)
	}
	// 3 drops, 1 from the patch port, 1 per tunnel; per network 1 from each
	// host of it, 1 per remote MAC, 1 flooding to the network's hosts.
	flows := strings.Join(ourFlows(t, ha), "\n")
	if n := len(ourFlows(t, ha)); n != 5+3+3 || !strings.Contains(flows, "dl_dst="+b.MAC) {
		t.Errorf("%d flows on A:\n%s", n, flows)
	}
	nstest.MustPing(t, p+"a", "10.79.0.2")
	nstest.MustNotPing(t, p+"a", "10.79.0.3")
	nstest.MustNotPing(t, p+"c", "10.79.0.1")

	// A peer that leaves takes its tunnel port with it.
	mustSetRemotes(t, ha.drv, nil)
	if out := ha.vsctl(t, "--columns=name", "find", "Interface", "type=vxlan"); out != "" {
		t.Errorf("tunnel left after its peer went: %s", out)
	}
	nstest.MustNotPing(t, p+"a", "10.79.0.2")
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b, c}))
	nstest.MustPing(t, p+"a", "10.79.0.2")

	removeAll(t, ha.drv, []core.EndpointSpec{a}, []core.NetworkSpec{vx1, vx2})
	removeAll(t, hb.drv, []core.EndpointSpec{b, c}, []core.NetworkSpec{vx1, vx2})
	mustSetRemotes(t, ha.drv, remotesOn(hb, []core.EndpointSpec{b, c})) // no network: must not bring bridges back
	assertClean(t, ha)
	assertClean(t, hb)
}
