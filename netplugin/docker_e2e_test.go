package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/testenv"
)

// TestDockerContainers is the user story with a real dockerd: containers
// started with --network none get their endpoint through netdcli attach, talk
// within a network, not across networks, and get it back after a restart.
func TestDockerContainers(t *testing.T) {
	nstest.RequireRoot(t)
	dk := testenv.StartDocker(t)
	p := nstest.Prefix()
	host := p + "-host"
	d := newDaemon(t, host, "--docker-socket", dk.Socket())
	d.start()
	nd := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(bins, "netdcli"),
			append([]string{"-etcd-url", d.etcdURL, "-host", host, "-docker-socket", dk.Socket()}, args...)...).CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := nd(args...)
		if err != nil {
			t.Fatalf("netdcli %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return out
	}
	c1, c2, c3 := p+"-c1", p+"-c2", p+"-c3"
	for _, c := range []string{c1, c2, c3} {
		dk.RunContainer(t, c)
	}
	must("-oper", "create", "-construct", "tenant", p)
	must("-oper", "create", "-construct", "network", "-tenant", p, "-subnet", "10.81.1.0/24", "-gw", "10.81.1.254", "web")
	must("-oper", "create", "-construct", "network", "-tenant", p, "-subnet", "10.81.2.0/24", "-gw", "10.81.2.254", "db")
	must("-oper", "create", "-construct", "endpoint", "-tenant", p, "-net-id", "web", "-ip-address", "10.81.1.1", "ep1")
	must("-oper", "create", "-construct", "endpoint", "-tenant", p, "-net-id", "web", "-ip-address", "10.81.1.2", "-container-id", c2, "ep2")
	must("-oper", "create", "-construct", "endpoint", "-tenant", p, "-net-id", "db", "-ip-address", "10.81.2.1", "ep3")
	must("-oper", "attach", "-construct", "endpoint", "-tenant", p, "-container-id", c1, "ep1")
	must("-oper", "attach", "-construct", "endpoint", "-tenant", p, "-container-id", c3, "ep3")
	d.waitUp(p, host, 3)

	exec1 := func(c string, args ...string) error {
		_, err := dk.CLI(t, append([]string{"exec", c}, args...)...)
		return err
	}
	if out, _ := dk.CLI(t, "exec", c1, "ip", "addr", "show", "eth0"); !strings.Contains(out, "10.81.1.1/24") {
		t.Fatalf("container 1 has no eth0 with its IP:\n%s", out)
	}
	pingOK := func(from, ip string) bool {
		for i := 0; i < 5; i++ {
			if exec1(from, "ping", "-c1", "-W1", ip) == nil {
				return true
			}
			time.Sleep(200 * time.Millisecond)
		}
		return false
	}
	if !pingOK(c1, "10.81.1.2") {
		t.Fatal("containers on one network cannot ping")
	}
	if !pingOK(c3, "10.81.2.254") { // c3 itself works: what follows is isolation
		t.Fatal("container on the db network cannot reach its gateway")
	}
	if exec1(c1, "ping", "-c1", "-W1", "10.81.2.1") == nil || exec1(c3, "ping", "-c1", "-W1", "10.81.1.1") == nil {
		t.Fatal("containers on different networks reach each other")
	}

	// Bad attachments are refused and change nothing.
	before := must("-oper", "get", "-construct", "endpoint", "-tenant", p, "-json")
	must("-oper", "create", "-construct", "endpoint", "-tenant", p, "-net-id", "web", "ep4")
	if out, err := nd("-oper", "attach", "-construct", "endpoint", "-tenant", p, "-container-id", p+"-nosuch", "ep4"); err == nil || !strings.Contains(out, "No such container") {
		t.Fatalf("attach to a missing container: %v %s", err, out)
	}
	stopped := p + "-stopped"
	dk.RunContainer(t, stopped)
	if _, err := dk.CLI(t, "kill", stopped); err != nil {
		t.Fatal(err)
	}
	if out, err := nd("-oper", "attach", "-construct", "endpoint", "-tenant", p, "-container-id", stopped, "ep4"); err == nil || !strings.Contains(out, "not running") {
		t.Fatalf("attach to a stopped container: %v %s", err, out)
	}
	if out, err := nd("-oper", "detach", "-construct", "endpoint", "-tenant", p, "-container-id", c3, "ep1"); err == nil {
		t.Fatalf("detach with the wrong container accepted: %s", out)
	}
	must("-oper", "delete", "-construct", "endpoint", "-tenant", p, "ep4")
	if after := must("-oper", "get", "-construct", "endpoint", "-tenant", p, "-json"); after != before {
		t.Fatalf("rejected commands changed the endpoints:\n%s\n%s", before, after)
	}

	// A restarted container has a new namespace: the agent plugs it in again.
	if _, err := dk.CLI(t, "restart", "-t", "0", c2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !pingOK(c1, "10.81.1.2") {
		if time.Now().After(deadline) {
			t.Fatal("restarted container did not get its endpoint back")
		}
	}

	// Detach and delete: the container loses its interface, the links go.
	must("-oper", "detach", "-construct", "endpoint", "-tenant", p, "-container-id", c1, "ep1")
	deadline = time.Now().Add(20 * time.Second)
	for exec1(c1, "ip", "link", "show", "eth0") == nil {
		if time.Now().After(deadline) {
			t.Fatal("detached container still has eth0")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, ep := range []string{"ep1", "ep2", "ep3"} {
		must("-oper", "delete", "-construct", "endpoint", "-tenant", p, ep)
	}
	for _, n := range []string{"web", "db"} {
		must("-oper", "delete", "-construct", "network", "-tenant", p, n)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		left := []string{}
		links := nstest.Links(t)
		for _, k := range []string{core.HostIfName(p + "/ep1"), core.HostIfName(p + "/ep2"), core.HostIfName(p + "/ep3"),
			linuxbridge.BridgeName(host, p+"/web"), linuxbridge.BridgeName(host, p+"/db")} {
			if links[k] {
				left = append(left, k)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("links left: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
