package main

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// ovsHost is a simulated machine: a namespace running its own OVS, its
// underlay port plugged into a shared switch namespace.
type ovsHost struct {
	ns   string
	inst *ovstest.Instance
	vtep string
}

// newOVSHost starts OVS in a fresh namespace and wires its underlay: the veth
// ul0 to the switch sw, held by a netdev bridge br-phy that carries the VTEP
// address, because the userspace datapath routes tunnel packets itself and
// only through such a bridge.
func newOVSHost(t *testing.T, sw string, i int, vtep string) *ovsHost {
	t.Helper()
	ns := ovstest.NewNetns(t)
	h := &ovsHost{ns: ns, inst: ovstest.Start(t, ovstest.WithVswitchd(), ovstest.InNetns(ns)), vtep: vtep}
	peer := fmt.Sprintf("ul%d", i)
	if out, err := exec.Command("ip", "-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", peer, "netns", sw).CombinedOutput(); err != nil {
		t.Fatalf("underlay of %s: %v: %s", ns, err, out)
	}
	nstest.Exec(t, sw, "ip", "link", "set", peer, "master", "br0", "up")
	h.inst.Vsctl(t, "add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev", "--", "add-port", "br-phy", "ul0")
	nstest.Exec(t, ns, "ip", "link", "set", "ul0", "up")
	// As scripts/provision/ovs.sh does: no ARP answer for br-phy's address
	// from the kernel's side of the port OVS holds.
	nstest.Exec(t, ns, "sysctl", "-qw", "net.ipv4.conf.ul0.arp_ignore=1")
	nstest.Exec(t, ns, "ip", "addr", "add", vtep+"/24", "dev", "br-phy")
	nstest.Exec(t, ns, "ip", "link", "set", "br-phy", "up")
	return h
}

// agentArgs are the netplugin flags of an agent driving h's OVS.
func (h *ovsHost) agentArgs() []string {
	return []string{"--drivers", "ovs", "--ovsdb", h.inst.Addr(), "--ovs-datapath", "netdev",
		"--ovs-netns", nstest.Path(h.ns), "--vtep-ip", h.vtep}
}

// tunnelTo reports whether h's OVS has a VXLAN port towards vtep.
func (h *ovsHost) tunnelTo(t *testing.T, vtep string) bool {
	t.Helper()
	return strings.Contains(h.inst.Vsctl(t, "--columns=options", "find", "Interface", "type=vxlan"), `remote_ip="`+vtep+`"`)
}

// newDaemonSharingEtcd is newDaemon for a second host: it uses the etcd embedded in
// first instead of its own, as every agent of a cluster shares one store.
func newDaemonSharingEtcd(t *testing.T, first *daemon, host string, extra ...string) *daemon {
	d := newDaemon(t, host, append([]string{"--etcd-endpoints", first.etcdURL}, extra...)...)
	d.etcdURL = first.etcdURL // for netdcli and endpoints()
	return d
}

// ovsWaitFor polls cond every 100 ms until it holds or timeout passes, and
// returns how long it took.
func ovsWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// TestOVSVXLANTwoAgents: two hosts, each its own OVS and agent sharing host
// A's etcd. A VXLAN network spans them; another VNI with the same subnet stays
// apart. When host B's agent dies its lease expires, and after the host grace
// A drops the tunnel to B (and with it the traffic); B restarted brings both back.
func TestOVSVXLANTwoAgents(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	sw := nstest.NS(t, p+"sw")
	nstest.Exec(t, sw, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, sw, "ip", "link", "set", "br0", "up")
	ha := newOVSHost(t, sw, 0, "10.98.0.1")
	hb := newOVSHost(t, sw, 1, "10.98.0.2")
	hostA, hostB := p+"-A", p+"-B"
	// A short host grace: the test waits for A to drop B.
	grace := []string{"--host-grace", "3s"}
	da := newDaemon(t, hostA, append(ha.agentArgs(), grace...)...)
	da.start()
	db := newDaemonSharingEtcd(t, da, hostB, append(hb.agentArgs(), grace...)...)
	db.start()

	other := p + "x" // a second tenant, so that its network may reuse the subnet
	for _, tn := range []string{p, other} {
		da.netdcli("-oper", "create", "-construct", "tenant", tn)
	}
	da.netdcli("-oper", "create", "-construct", "network", "-tenant", p, "-driver", "ovs", "-tag-type", "vxlan", "-tag", "6001",
		"-subnet", "10.85.0.0/24", "vx")
	da.netdcli("-oper", "create", "-construct", "network", "-tenant", other, "-driver", "ovs", "-tag-type", "vxlan", "-tag", "6002",
		"-subnet", "10.85.0.0/24", "vx")
	for _, ep := range []struct{ tenant, name, ip, host string }{
		{p, "a", "10.85.0.1", hostA}, {p, "b", "10.85.0.2", hostB}, {other, "c", "10.85.0.3", hostB},
	} {
		ns := nstest.NS(t, p+ep.name)
		da.netdcli("-oper", "create", "-construct", "endpoint", "-tenant", ep.tenant, "-net-id", "vx", "-ip-address", ep.ip,
			"-host", ep.host, "-netns", ns, ep.name)
	}
	da.waitUp(p, hostA, 1)
	da.waitUp(p, hostB, 1)
	da.waitUp(other, hostB, 1)
	ovsWaitFor(t, 15*time.Second, "tunnels between A and B", func() bool {
		return ha.tunnelTo(t, hb.vtep) && hb.tunnelTo(t, ha.vtep)
	})
	ovsWaitFor(t, 15*time.Second, "a pings b across hosts", func() bool { return nstest.Ping(p+"a", "10.85.0.2") })
	nstest.MustPing(t, p+"b", "10.85.0.1")
	nstest.MustNotPing(t, p+"a", "10.85.0.3") // other VNI, through the tunnel
	nstest.MustNotPing(t, p+"c", "10.85.0.1")
	nstest.MustNotPing(t, p+"c", "10.85.0.2") // other VNI, same host

	// B's agent dies and stays down: its lease (10 s) and A's grace for it
	// (3 s) run out, A drops B.
	db.stop(syscall.SIGKILL)
	took := ovsWaitFor(t, 25*time.Second, "A removes the tunnel to B after B's lease expired", func() bool {
		return !ha.tunnelTo(t, hb.vtep)
	})
	t.Logf("tunnel to B removed %v after B's agent was killed", took.Round(100*time.Millisecond))
	nstest.MustNotPing(t, p+"a", "10.85.0.2")

	// B back: it registers again, A adds the tunnel, traffic flows.
	restart := time.Now()
	db.start()
	ovsWaitFor(t, 15*time.Second, "A restores the tunnel to B", func() bool { return ha.tunnelTo(t, hb.vtep) })
	ovsWaitFor(t, 15*time.Second, "a pings b again", func() bool { return nstest.Ping(p+"a", "10.85.0.2") })
	t.Logf("traffic to B back %v after B's agent was started again", time.Since(restart).Round(100*time.Millisecond))
	nstest.MustNotPing(t, p+"a", "10.85.0.3")
}
