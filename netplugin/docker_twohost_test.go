package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/testenv"
)

// TestDockerSecondHostJoins: `docker network create -d netplugin -o tenant=t
// --subnet S` on a second host joins the network the first host made — same
// tag, same subnet, one IP space — and the two hosts never hand out one address
// twice. Two agents share one etcd; each has a dockerd of its own.
func TestDockerSecondHostJoins(t *testing.T) {
	a := newPluginEnv(t)
	dkB := testenv.StartPrivateDocker(t, testenv.PrivateOptions{})
	pluginB := a.name + "b"
	dB := newDaemon(t, a.name+"-hostb", "--etcd-endpoints", a.d.etcdURL, "--docker-socket", dkB.Socket(), "--docker-plugin", pluginB)
	dB.start()
	b := &pluginEnv{t: t, dk: dkB, d: dB, name: pluginB, store: a.store, host: a.name + "-hostb"}

	net := a.name + "-net"
	// Both hosts name the same --aux-address: the network's, shared.
	a.mustDocker("network", "create", "-d", a.name, "--ipam-driver", a.name, "--subnet", "10.96.0.0/24", "--gateway", "10.96.0.1",
		"--aux-address", "router=10.96.0.250", "-o", "tenant="+a.name, "-o", "tag=400", net)
	t.Cleanup(func() { _, _ = a.docker("network", "rm", net) })
	b.mustDocker("network", "create", "-d", pluginB, "--ipam-driver", pluginB, "--subnet", "10.96.0.0/24",
		"--aux-address", "router=10.96.0.250", "--aux-address", "printer=10.96.0.251", "-o", "tenant="+a.name, net)
	t.Cleanup(func() { _, _ = b.docker("network", "rm", net) })

	// One logical network, under its Docker name, with the first host's tag.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(bins+"/netdcli", "-etcd-url", a.d.etcdURL, "-oper", "get", "-construct", "network", "-tenant", a.name, "-json").Output()
		var nets []core.Network
		if err == nil && json.Unmarshal(out, &nets) == nil && len(nets) == 1 && nets[0].Name == net &&
			nets[0].Tag == 400 && nets[0].Subnet == "10.96.0.0/24" && nets[0].Gateway == "10.96.0.1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want one network %s (tag 400, gateway 10.96.0.1) in tenant %s, got: %s %v", net, a.name, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	ips := map[string]string{}
	for i := 0; i < 3; i++ {
		for _, e := range []*pluginEnv{a, b} {
			c := fmt.Sprintf("%s-%s%d", a.name, e.host[len(e.host)-1:], i)
			e.run(c, net)
			ip := e.ipOf(c, net)
			if other, ok := ips[ip]; ok {
				t.Fatalf("IP %s given to %s and %s", ip, other, c)
			}
			ips[ip] = c
		}
	}
	if n := len(a.allocated()); n != 8 {
		t.Fatalf("%d addresses allocated for 6 containers and 2 aux addresses on two hosts: %v", n, a.allocated())
	}

	// The second host's network goes; the network stays for the first.
	for i := 0; i < 3; i++ {
		b.mustDocker("rm", "-f", fmt.Sprintf("%s-%s%d", a.name, b.host[len(b.host)-1:], i))
	}
	b.mustDocker("network", "rm", net)
	if out, err := exec.Command(bins+"/netdcli", "-etcd-url", a.d.etcdURL, "-oper", "get", "-construct", "network", "-tenant", a.name, net).CombinedOutput(); err != nil {
		t.Fatalf("network gone while host A still uses it: %s", out)
	}
	// Host A's three containers and the aux address A still names.
	want := a.ipKey(net, "10.96.0.250")
	deadline = time.Now().Add(10 * time.Second)
	for {
		got := a.allocated()
		if len(got) == 4 && strings.Contains(strings.Join(got, " "), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("allocations after host B left: %v, want host A's 3 containers and %s", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
