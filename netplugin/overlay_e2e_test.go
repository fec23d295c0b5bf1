package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/nstest"
)

// TestLinuxbridgeVXLANThreeHosts: three hosts, each its own agent; the cluster
// default tag type is vxlan, so plain networks span the hosts. Every endpoint
// of a network reaches every other across the hosts; a second tenant with the
// same subnet on another VNI works on its own and cannot reach the first.
// Forwarding entries are exactly one per remote endpoint plus one flood entry
// per remote host of the network, and a host without the network has neither
// a device for it nor an entry towards it. Containers get the underlay MTU
// less 50. A VLAN network with no --uplink says it is host-local. Deleting
// the endpoints removes every link and entry.
func TestLinuxbridgeVXLANThreeHosts(t *testing.T) {
	f := newFleet(t, fleetOpts{hosts: 3, net: "10.91.0", mtu: 1400})
	for _, h := range f.hosts {
		h.start()
	}
	h1, h2, h3 := f.hosts[0], f.hosts[1], f.hosts[2]
	before := map[string]int{}
	for _, h := range f.hosts {
		before[h.name] = len(h.ourLinks())
	}
	ta, tb := f.p+"a", f.p+"b"
	f.netdcli("-oper", "create", "-construct", "global", "-tag-type", "vxlan")
	for _, tn := range []string{ta, tb} {
		f.netdcli("-oper", "create", "-construct", "tenant", tn)
		out := f.netdcli("-oper", "create", "-construct", "network", "-tenant", tn, "-subnet", "10.92.0.0/24", "-gw", "10.92.0.254", "net")
		if !strings.Contains(out, " vxlan ") {
			t.Fatalf("plain network under the vxlan default:\n%s", out)
		}
	}
	a := []string{
		f.endpoint(ta, "net", "a1", "10.92.0.1", h1),
		f.endpoint(ta, "net", "a2", "10.92.0.2", h2),
		f.endpoint(ta, "net", "a3", "10.92.0.3", h3),
	}
	b := []string{
		f.endpoint(tb, "net", "b1", "10.92.0.11", h1),
		f.endpoint(tb, "net", "b2", "10.92.0.12", h2),
	}
	// A VLAN network on a cluster without --uplink stays on its host and says so.
	f.netdcli("-oper", "create", "-construct", "network", "-tenant", ta, "-tag-type", "vlan", "-subnet", "10.93.0.0/24", "loc")
	f.endpoint(ta, "loc", "l1", "10.93.0.1", h1)
	f.waitUp(ta, 4)
	f.waitUp(tb, 2)
	if out := f.netdcli("-oper", "get", "-construct", "endpoint", "-tenant", ta, "l1"); !strings.Contains(out, "(host-local: no --uplink on host "+h1.name+")") {
		t.Fatalf("status of an endpoint on a VLAN network without uplink:\n%s", out)
	}
	if out := f.netdcli("-oper", "get", "-construct", "endpoint", "-tenant", ta, "a1"); strings.Contains(out, "host-local") {
		t.Fatalf("a VXLAN endpoint says it is host-local:\n%s", out)
	}

	ipsA := []string{"10.92.0.1", "10.92.0.2", "10.92.0.3"}
	ovsWaitFor(t, 20*time.Second, "a1 reaches a3 across hosts", func() bool { return nstest.Ping(a[0], ipsA[2]) })
	pingAll(t, a, ipsA)
	pingAll(t, b, []string{"10.92.0.11", "10.92.0.12"})
	// Tenant b works on its own (above), so its silence is isolation.
	for _, ns := range a {
		nstest.MustNotPing(t, ns, "10.92.0.12")
		nstest.MustNotPing(t, ns, "10.92.0.11")
	}
	nstest.MustNotPing(t, b[1], "10.92.0.1")

	// Entries from etcd: per remote endpoint one MAC entry and one neighbour,
	// per remote host of the network one flood entry; h3 has no endpoint of
	// tenant b: no device, and no entry towards it on the others.
	devA := func(h *fleetHost) string { return linuxbridge.VXLANName(h.name, ta+"/net") }
	devB := func(h *fleetHost) string { return linuxbridge.VXLANName(h.name, tb+"/net") }
	for _, h := range f.hosts {
		if fdb, neigh := h.fdb(devA(h)), h.neighs(devA(h)); len(fdb) != 4 || len(neigh) != 2 ||
			strings.Count(strings.Join(fdb, "\n"), "00:00:00:00:00:00") != 2 {
			t.Errorf("%s: tenant a entries:\n%s\n%s", h.name, strings.Join(fdb, "\n"), strings.Join(neigh, "\n"))
		}
	}
	for _, h := range []*fleetHost{h1, h2} {
		fdb := h.fdb(devB(h))
		if len(fdb) != 2 || len(h.neighs(devB(h))) != 1 || strings.Contains(strings.Join(fdb, "\n"), "dst "+h3.vtep) {
			t.Errorf("%s: tenant b entries:\n%s", h.name, strings.Join(fdb, "\n"))
		}
	}
	if err := exec.Command("ip", "-n", h3.name, "link", "show", devB(h3)).Run(); err == nil {
		t.Errorf("%s has a device for tenant b's network, which has no endpoint there", h3.name)
	}

	// MTU: the underlay's 1400 less 50; the largest unfragmentable echo
	// crosses, one byte more is refused at the sender.
	if out := nstest.Exec(t, a[0], "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1350") {
		t.Fatalf("container MTU:\n%s", out)
	}
	if ok, out := dfPing(a[0], ipsA[2], 1350-28); !ok {
		t.Fatalf("largest DF ping across hosts failed:\n%s", out)
	}
	if ok, out := dfPing(a[0], ipsA[2], 1350-28+1); ok || !strings.Contains(out, "message too long") {
		t.Fatalf("oversized DF ping: %v\n%s", ok, out)
	}

	// One endpoint leaves: its entries go on every other host.
	f.netdcli("-oper", "delete", "-construct", "endpoint", "-tenant", ta, "a3")
	ovsWaitFor(t, 15*time.Second, "a3's entries removed", func() bool {
		return len(h1.fdb(devA(h1))) == 2 && len(h2.fdb(devA(h2))) == 2 && len(h1.neighs(devA(h1))) == 1
	})
	nstest.MustPing(t, a[0], ipsA[1])

	// Everything goes with the last endpoints.
	for tn, names := range map[string][]string{ta: {"a1", "a2", "l1"}, tb: {"b1", "b2"}} {
		for _, n := range names {
			f.netdcli("-oper", "delete", "-construct", "endpoint", "-tenant", tn, n)
		}
	}
	for _, h := range f.hosts {
		ovsWaitFor(t, 20*time.Second, "links of "+h.name+" removed", func() bool { return len(h.ourLinks()) == before[h.name] })
		if n := len(h.fdb(devA(h))) + len(h.fdb(devB(h))); n != 0 {
			t.Errorf("%s: %d forwarding entries left", h.name, n)
		}
	}
}

// TestHostGraceKeepsTraffic: a host's agent is killed with SIGKILL; its lease
// expires, but the other host keeps its forwarding entries for --host-grace,
// so a ping every 20 ms into a container on it loses nothing meanwhile; after
// the grace period the entries towards it go. Restarted, it is back.
func TestHostGraceKeepsTraffic(t *testing.T) {
	const grace = 15 * time.Second
	f := newFleet(t, fleetOpts{hosts: 2, net: "10.94.0", mtu: 1500, args: []string{"--host-grace", grace.String()}})
	for _, h := range f.hosts {
		h.start()
	}
	h1, h2 := f.hosts[0], f.hosts[1]
	tn := f.p
	f.netdcli("-oper", "create", "-construct", "tenant", tn)
	f.netdcli("-oper", "create", "-construct", "network", "-tenant", tn, "-tag-type", "vxlan", "-subnet", "10.95.0.0/24", "net")
	n1 := f.endpoint(tn, "net", "e1", "10.95.0.1", h1)
	f.endpoint(tn, "net", "e2", "10.95.0.2", h2)
	f.waitUp(tn, 2)
	ovsWaitFor(t, 20*time.Second, "e1 reaches e2", func() bool { return nstest.Ping(n1, "10.95.0.2") })
	dev := linuxbridge.VXLANName(h1.name, tn+"/net")
	if len(h1.fdb(dev)) != 2 {
		t.Fatalf("entries on %s: %v", h1.name, h1.fdb(dev))
	}

	// An echo every 20 ms for 14 s, longer than the 10 s lease and shorter
	// than lease + grace. Bounded by time, not count: on a loaded machine
	// ping sends late, and must still stop inside the grace period.
	ping := exec.Command("ip", "netns", "exec", n1, "ping", "-i", "0.02", "-w", "14", "-W", "1", "10.95.0.2")
	var pingOut bytes.Buffer
	ping.Stdout, ping.Stderr = &pingOut, &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ping.Process.Kill(); _ = ping.Wait() })
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	h2.stop(syscall.SIGKILL)
	// The lease's end shows as h2's status vanishing.
	leaseGone := ovsWaitFor(t, 14*time.Second, "h2's lease expires", func() bool {
		_, reported := f.endpoints(tn)["e2"].Status[h2.name]
		return !reported
	})
	err := ping.Wait()
	var sent, got int
	for _, l := range strings.Split(pingOut.String(), "\n") {
		if strings.Contains(l, "packets transmitted") {
			_, _ = fmt.Sscanf(l, "%d packets transmitted, %d received", &sent, &got)
		}
	}
	// The one echo in flight when the deadline stops ping is counted as
	// sent and never as received; any other loss fails.
	if err != nil || sent < 400 || got < sent-1 {
		t.Fatalf("ping across the lease expiry (lease gone %v after the kill): %v: %d sent, %d received\n%s",
			leaseGone.Round(100*time.Millisecond), err, sent, got, pingOut.String())
	}
	t.Logf("%d echoes 20 ms apart across the lease expiry, %d answered", sent, got)
	if time.Since(killed) < leaseGone {
		t.Fatal("the ping ended before the lease did")
	}
	if got := h1.fdb(dev); len(got) != 2 {
		t.Fatalf("entries towards h2 dropped inside the grace period: %v", got)
	}
	ovsWaitFor(t, grace+10*time.Second, "h1 drops h2's entries after the grace period", func() bool {
		return len(h1.fdb(dev)) == 0 && len(h1.neighs(dev)) == 0
	})
	after := time.Since(killed)
	t.Logf("lease gone %v after SIGKILL, entries dropped %v after it (grace %v)", leaseGone.Round(100*time.Millisecond),
		after.Round(100*time.Millisecond), grace)
	if after < leaseGone+grace-2*time.Second {
		t.Fatalf("entries dropped %v after the kill, before lease (%v) + grace (%v)", after, leaseGone, grace)
	}
	nstest.MustNotPing(t, n1, "10.95.0.2")

	h2.start()
	ovsWaitFor(t, 20*time.Second, "e1 reaches e2 again", func() bool { return nstest.Ping(n1, "10.95.0.2") })
	if got := h1.fdb(dev); len(got) != 2 {
		t.Fatalf("entries after h2 came back: %v", got)
	}
}

// ovsFlows lists the flows netplugin programmed on h's tunnel bridge (none
// when the bridge does not exist).
func (h *fleetHost) ovsFlows(t *testing.T) []string {
	t.Helper()
	out, err := h.ovs.Command(t.Context(), "ovs-ofctl", "dump-flows", "unix:"+h.ovs.Dir+"/np-tun.mgmt").CombinedOutput()
	if err != nil {
		return nil
	}
	var flows []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "cookie=0x6e70") {
			flows = append(flows, strings.TrimSpace(l))
		}
	}
	return flows
}

// echoesSeen counts the ICMP echo requests inside VXLAN packets that h's
// underlay port receives while during runs.
func (h *fleetHost) echoesSeen(t *testing.T, during func()) int {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", h.name, "tcpdump", "-l", "-n", "-i", "ul0", "udp", "port", "4789")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // tcpdump needs a moment to listen
	during()
	time.Sleep(300 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGINT)
	_ = cmd.Wait()
	return strings.Count(out.String(), "ICMP echo request")
}

// TestOVSVXLANThreeHosts: three hosts, each its own OVS and agent. Network x
// has endpoints on all three, network y (another tenant, same subnet) on h1
// and h2 only. Frames to a remote MAC go to the one VTEP holding it (h3 sees
// none of the traffic between h1 and h2), flooding and tunnels only reach the
// hosts of the network: h3 has no flow of y, and no flow of y points at it.
// The flows are counted exactly; MTU is the underlay's less 50; everything is
// removed with the last endpoints, and every row carries its host's label.
func TestOVSVXLANThreeHosts(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("needs tcpdump")
	}
	f := newFleet(t, fleetOpts{hosts: 3, net: "10.96.0", mtu: 1400, ovs: true})
	for _, h := range f.hosts {
		h.start()
	}
	h1, h2, h3 := f.hosts[0], f.hosts[1], f.hosts[2]
	tx, ty := f.p+"x", f.p+"y"
	for tn, tag := range map[string]string{tx: "7001", ty: "7002"} {
		f.netdcli("-oper", "create", "-construct", "tenant", tn)
		f.netdcli("-oper", "create", "-construct", "network", "-tenant", tn, "-driver", "ovs", "-tag-type", "vxlan", "-tag", tag,
			"-subnet", "10.97.0.0/24", "net")
	}
	x := []string{
		f.endpoint(tx, "net", "x1", "10.97.0.1", h1),
		f.endpoint(tx, "net", "x2", "10.97.0.2", h2),
		f.endpoint(tx, "net", "x3", "10.97.0.3", h3),
	}
	y := []string{
		f.endpoint(ty, "net", "y1", "10.97.0.11", h1),
		f.endpoint(ty, "net", "y2", "10.97.0.12", h2),
	}
	f.waitUp(tx, 3)
	f.waitUp(ty, 2)
	ipsX := []string{"10.97.0.1", "10.97.0.2", "10.97.0.3"}
	ovsWaitFor(t, 20*time.Second, "x1 reaches x3 across hosts", func() bool { return nstest.Ping(x[0], ipsX[2]) })
	pingAll(t, x, ipsX)
	pingAll(t, y, []string{"10.97.0.11", "10.97.0.12"})
	for _, ns := range x {
		nstest.MustNotPing(t, ns, "10.97.0.11")
		nstest.MustNotPing(t, ns, "10.97.0.12")
	}

	// 3 drops, 1 from the patch port, 1 per tunnel; per network 1 from each
	// remote host of it, 1 per remote MAC, 1 flooding to its hosts.
	want := map[*fleetHost]int{h1: 6 + 5 + 3, h2: 6 + 5 + 3, h3: 6 + 5}
	for h, n := range want {
		flows := h.ovsFlows(t)
		if len(flows) != n {
			t.Errorf("%s: %d flows, want %d:\n%s", h.name, len(flows), n, strings.Join(flows, "\n"))
		}
		for _, fl := range flows {
			if h == h3 && strings.Contains(fl, "7002") {
				t.Errorf("%s has a flow of network y, which has no endpoint there: %s", h.name, fl)
			}
		}
	}
	h3port := func(h *fleetHost) string {
		return strings.TrimSpace(h.ovs.Vsctl(t, "get", "Interface", fmt.Sprintf("npt%02x%02x%02x%02x", 10, 96, 0, 3), "ofport"))
	}
	for _, h := range []*fleetHost{h1, h2} {
		for _, fl := range h.ovsFlows(t) {
			if strings.Contains(fl, "7002") && (strings.Contains(fl, "output:"+h3port(h)+",") || strings.HasSuffix(fl, "output:"+h3port(h)) ||
				strings.Contains(fl, "in_port="+h3port(h)+",")) {
				t.Errorf("%s: a flow of network y involves h3's tunnel: %s", h.name, fl)
			}
		}
		if ext := h.ovs.Vsctl(t, "get", "Bridge", "np-int", "external_ids"); !strings.Contains(ext, `netplugin-host="`+h.name+`"`) &&
			!strings.Contains(ext, "netplugin-host="+h.name) {
			t.Errorf("%s: np-int not marked with its host label: %s", h.name, ext)
		}
	}

	// Unicast: x1 -> x2 goes to h2 alone; h3, a host of the network, sees
	// none of it, while it does see x1 -> x3 (so the capture works).
	nstest.MustPing(t, x[0], ipsX[1])
	burst := func(ip string) func() {
		return func() { nstest.Exec(t, x[0], "ping", "-c", "50", "-i", "0.02", "-W", "1", ip) }
	}
	if n := h3.echoesSeen(t, burst(ipsX[1])); n != 0 {
		t.Errorf("h3 received %d of the 50 echoes from x1 (h1) to x2 (h2)", n)
	}
	if n := h3.echoesSeen(t, burst(ipsX[2])); n < 50 {
		t.Errorf("h3 received %d of the 50 echoes from x1 to x3, its own endpoint", n)
	}

	// MTU: br-phy's 1400 less 50.
	if out := nstest.Exec(t, x[0], "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1350") {
		t.Fatalf("container MTU:\n%s", out)
	}
	if ok, out := dfPing(x[0], ipsX[2], 1350-28); !ok {
		t.Fatalf("largest DF ping across hosts failed:\n%s", out)
	}
	if ok, out := dfPing(x[0], ipsX[2], 1350-28+1); ok || !strings.Contains(out, "message too long") {
		t.Fatalf("oversized DF ping: %v\n%s", ok, out)
	}

	for tn, names := range map[string][]string{tx: {"x1", "x2", "x3"}, ty: {"y1", "y2"}} {
		for _, n := range names {
			f.netdcli("-oper", "delete", "-construct", "endpoint", "-tenant", tn, n)
		}
	}
	for _, h := range f.hosts {
		ovsWaitFor(t, 20*time.Second, "bridges of "+h.name+" removed", func() bool {
			return strings.TrimSpace(h.ovs.Vsctl(t, "list-br")) == "br-phy"
		})
		if out := h.ovs.Vsctl(t, "--columns=name", "find", "Port", "external_ids:netplugin-owner=netplugin"); out != "" {
			t.Errorf("%s: ports left: %s", h.name, out)
		}
		if flows := h.ovsFlows(t); len(flows) != 0 {
			t.Errorf("%s: flows left: %v", h.name, flows)
		}
		ovsWaitFor(t, 10*time.Second, "links of "+h.name+" removed", func() bool { return len(h.ourLinks()) == 0 })
	}
}
