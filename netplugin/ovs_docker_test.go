package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
	"github.com/netplugin/netplugin/internal/testenv"
)

// newOVSPluginEnv is newPluginEnv with the OVS driver next to linuxbridge,
// against a private OVS (userspace datapath) running in a namespace of its
// own. It returns the OVS instance and its namespace.
func newOVSPluginEnv(t *testing.T) (*pluginEnv, *ovstest.Instance, string) {
	nstest.RequireRoot(t)
	// OVS first and dockerd next: cleanups run in reverse, so the plugin
	// (stopped first) still answers Docker's deletes, and OVS outlives both.
	ovsNS := ovstest.NewNetns(t)
	inst := ovstest.Start(t, ovstest.WithVswitchd(), ovstest.InNetns(ovsNS))
	dk := testenv.StartDocker(t)
	e := startPluginEnv(t, dk, nstest.Prefix(), "--drivers", "ovs,linuxbridge", "--ovsdb", inst.Addr(),
		"--ovs-datapath", "netdev", "--ovs-netns", nstest.Path(ovsNS))
	return e, inst, ovsNS
}

// ovsNSLinks lists the links of namespace ns whose names start with prefix.
func ovsNSLinks(t *testing.T, ns, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip -n %s link: %v", ns, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if strings.HasPrefix(name, prefix) {
				names = append(names, name)
			}
		}
	}
	return names
}

// TestOVSDockerPlugin: Docker networks served by the OVS driver. Docker's Join
// gets a link prepared by the driver (host end an access port with the
// network's tag), containers on one network ping, a container on a network
// with another tag does not get through even with an on-link route, the agent
// leaves the handed-off endpoints alone, and docker rm -f plus docker network
// rm leave no link, OVS port or IP behind.
func TestOVSDockerPlugin(t *testing.T) {
	e, inst, ovsNS := newOVSPluginEnv(t)
	red, blue := e.name+"-red", e.name+"-blue"
	e.createNet(red, "10.84.0.0/24", "10.84.0.1", "driver=ovs", "tag=300")
	e.createNet(blue, "10.84.1.0/24", "10.84.1.1", "driver=ovs", "tag=301")

	r1, r2, b1 := e.name+"-r1", e.name+"-r2", e.name+"-b1"
	e.run(r1, red, "--ip", "10.84.0.10")
	e.run(r2, red)
	// NET_ADMIN for the on-link route below.
	e.run(b1, blue, "--cap-add", "NET_ADMIN")
	if !e.ping(r2, "10.84.0.10") {
		t.Fatal("two containers on one OVS network cannot ping")
	}
	// With an on-link route b1 ARPs for r1 straight on its own segment, so
	// only the VLANs keep them apart (not a missing route or gateway).
	e.mustDocker("exec", b1, "ip", "route", "add", "10.84.0.0/24", "dev", "eth0")
	if _, err := e.docker("exec", b1, "ping", "-c2", "-W1", "10.84.0.10"); err == nil {
		t.Fatal("a container on the network with tag 301 reaches one on tag 300")
	}

	// The containers' host ends are access ports with their network's tag.
	port := func(c, network string) string {
		eid := e.mustDocker("inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").EndpointID}}", c)
		return core.HostIfName(e.name + "/" + eid[:12])
	}
	for _, c := range []struct{ name, net, tag string }{{r1, red, "300"}, {r2, red, "300"}, {b1, blue, "301"}} {
		if tag := inst.Vsctl(t, "get", "Port", port(c.name, c.net), "tag"); tag != c.tag {
			t.Fatalf("port of %s has tag %s, want %s", c.name, tag, c.tag)
		}
	}

	// The agent observes the endpoints up and never rebuilds them: the host
	// end (ifindex in vswitchd's namespace) and eth0 stay the same over
	// several resyncs (1 s each).
	ifindexes := func() string {
		var s []string
		for _, c := range []struct{ name, net string }{{r1, red}, {r2, red}} {
			// ifindex and MAC from sysfs: `ip link show` also resolves the
			// peer's namespace, which fails now and then while other tests
			// add and delete namespaces.
			p := "/sys/class/net/" + port(c.name, c.net)
			s = append(s, nstest.Exec(t, ovsNS, "cat", p+"/ifindex", p+"/address"),
				e.mustDocker("exec", c.name, "cat", "/sys/class/net/eth0/ifindex", "/sys/class/net/eth0/address"))
		}
		return strings.Join(s, "\n")
	}
	e.d.waitUp(e.name, e.host, 3)
	before := ifindexes()
	time.Sleep(2500 * time.Millisecond)
	e.d.waitUp(e.name, e.host, 3)
	if after := ifindexes(); after != before {
		t.Fatalf("the agent rebuilt handed-off endpoints:\n%s\n---\n%s", before, after)
	}
	if !e.ping(r1, e.ipOf(r2, red)) {
		t.Fatal("no traffic after the agent's resyncs")
	}

	for _, c := range []string{r1, r2, b1} {
		e.mustDocker("rm", "-f", c)
	}
	e.mustDocker("network", "rm", red, blue)
	e.waitNoLeaks()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ports := inst.Vsctl(t, "--columns=name", "find", "Port", "external_ids:netplugin-owner=netplugin")
		links := ovsNSLinks(t, ovsNS, core.LinkPrefix)
		if ports == "" && len(links) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left in OVS: ports %q, links in %s: %v", ports, ovsNS, links)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
