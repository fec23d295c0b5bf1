package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/testenv"
	"github.com/netplugin/netplugin/state"
)

// TestDockerMacvlanAndHostNIC: the seed's drivers behind `docker network
// create -d <plugin> -o driver=macvlan|hostnic`. Docker joins before the
// sandbox exists and moves the link itself, so these drivers hand off a
// macvlan child, or the NIC itself, in the host namespace. Two containers on
// a macvlan network reach each other; a container with a host NIC reaches
// what is cabled to it; removing containers and networks leaves no child, no
// record and no IP, and gives the NIC back under its own name and MAC.
func TestDockerMacvlanAndHostNIC(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	// The uplinks live in the root namespace, where the agent and dockerd are.
	// They are made before anything else, so that their clean-up runs last,
	// after the containers (which hold a macvlan child or the NIC) are gone.
	// Not named np*/nq*: those are netplugin's.
	suffix := p[len(p)-6:] // unique hex; the names must fit in 15 bytes
	parent, parentPeer := "sdm"+suffix+"a", "sdm"+suffix+"b"
	nic, nicPeer := "sdn"+suffix+"a", "sdn"+suffix+"b"
	wire := nstest.NS(t, p+"w") // the NIC's far end; deleting it deletes the pair wherever the NIC is
	mustIP(t, "link", "add", parent, "type", "veth", "peer", "name", parentPeer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", parent).Run() })
	mustIP(t, "link", "add", nic, "type", "veth", "peer", "name", nicPeer, "netns", wire)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", nic).Run() })
	for _, l := range []string{parent, parentPeer, nic} {
		mustIP(t, "link", "set", l, "up")
	}
	nstest.Exec(t, wire, "ip", "addr", "add", "10.97.1.100/24", "dev", nicPeer)
	nstest.Exec(t, wire, "ip", "link", "set", nicPeer, "up")
	nicLink, err := netlink.LinkByName(nic)
	if err != nil {
		t.Fatal(err)
	}
	nicMAC := nicLink.Attrs().HardwareAddr.String()
	parentLink, err := netlink.LinkByName(parent)
	if err != nil {
		t.Fatal(err)
	}

	// newDaemon's cleanup removes the drivers' records of this host label.
	e := startPluginEnv(t, testenv.StartDocker(t), p, "--drivers", "linuxbridge,macvlan,hostnic")

	// macvlan: two children of the parent, bridge mode, reach each other.
	mv := p + "-mv"
	e.createNet(mv, "10.97.0.0/24", "10.97.0.1", "driver=macvlan", "parent="+parent)
	waitNamed(e, mv)
	m1, m2 := p+"-m1", p+"-m2"
	e.run(m1, mv)
	e.run(m2, mv)
	if !e.ping(m1, e.ipOf(m2, mv)) || !e.ping(m2, e.ipOf(m1, mv)) {
		t.Fatal("two containers on a macvlan network cannot ping each other")
	}
	// The agent reports the links Docker moved in as they are: same ifindex
	// as eth0 in the container (a rebuilt child would have another).
	up := e.d.waitUp(p, e.host, 2)
	for _, c := range []string{m1, m2} {
		ep := e.mustDocker("inspect", "-f", "{{(index .NetworkSettings.Networks \""+mv+"\").EndpointID}}", c)
		idx, err := strconv.Atoi(e.mustDocker("exec", c, "cat", "/sys/class/net/eth0/ifindex"))
		if err != nil || len(ep) < 12 || up[ep[:12]] != idx {
			t.Fatalf("%s: eth0 has ifindex %d (%v), the agent reports %v", c, idx, err, up)
		}
		if out := e.mustDocker("exec", c, "ip", "link", "show", "eth0"); !strings.Contains(out, "eth0@") {
			t.Fatalf("%s: eth0 is not a macvlan child:\n%s", c, out)
		}
	}
	e.mustDocker("rm", "-f", m1, m2)
	e.mustDocker("network", "rm", mv)
	waitFor(t, "no macvlan child, record or IP left", func() string {
		var left []string
		links, err := netlink.LinkList()
		if err != nil {
			return err.Error()
		}
		for _, l := range links {
			if _, ok := l.(*netlink.Macvlan); ok && l.Attrs().ParentIndex == parentLink.Attrs().Index {
				left = append(left, "child "+l.Attrs().Name)
			}
		}
		left = append(left, records(stateDir(state.DefaultRunDir, "macvlan", e.host))...)
		return strings.Join(append(left, e.allocated()...), ", ")
	})

	// hostnic: the NIC itself goes into the container and comes back.
	hn := p + "-hn"
	e.createNet(hn, "10.97.1.0/24", "10.97.1.1", "driver=hostnic", "nic="+nic)
	waitNamed(e, hn)
	h1 := p + "-h1"
	e.run(h1, hn)
	if _, err := netlink.LinkByName(nic); err == nil {
		t.Fatalf("%s still on the host while %s runs", nic, h1)
	}
	if !e.ping(h1, "10.97.1.100") {
		t.Fatal("a container cannot reach the far end of its host NIC")
	}
	e.mustDocker("rm", "-f", h1)
	waitFor(t, nic+" back on the host as it was", func() string {
		l, err := netlink.LinkByName(nic)
		switch {
		case err != nil:
			return err.Error()
		case l.Attrs().HardwareAddr.String() != nicMAC:
			return "MAC " + l.Attrs().HardwareAddr.String() + ", want " + nicMAC
		case l.Attrs().Alias != "":
			return "alias " + l.Attrs().Alias
		}
		return strings.Join(records(stateDir(state.DefaultRunDir, "hostnic", e.host)), ", ")
	})
	e.mustDocker("network", "rm", hn)
	waitFor(t, "no IP left", func() string { return strings.Join(e.allocated(), ", ") })
}

// waitNamed waits until the plugin has named the network after its Docker
// network: IPAM requests in the meantime may not find it by its subnet.
func waitNamed(e *pluginEnv, name string) {
	e.t.Helper()
	waitFor(e.t, "network "+name+" named", func() string {
		if _, _, err := e.store.GetNetwork(context.Background(), e.name, name); err != nil {
			return err.Error()
		}
		return ""
	})
}

func mustIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// records lists the endpoint records in a driver's state dir.
func records(dir string) []string {
	names, _ := filepath.Glob(filepath.Join(dir, "endpoints", "*.json"))
	return names
}

// waitFor polls until left reports nothing left ("").
func waitFor(t *testing.T, what string, left func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := left()
		if l == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %s; still: %s", what, l)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
