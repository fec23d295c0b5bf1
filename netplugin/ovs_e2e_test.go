package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// TestOVSAgent runs the agent with the OVS driver against a real ovsdb-server
// and ovs-vswitchd (userspace datapath, in a namespace of their own): VLAN
// networks pass traffic and isolate, an agent SIGKILL keeps every ofport and
// loses no packet, and OVSDB going away is reported in status, not a crash.
func TestOVSAgent(t *testing.T) {
	nstest.RequireRoot(t)
	ovsNS := ovstest.NewNetns(t)
	ovsInst := ovstest.Start(t, ovstest.WithVswitchd(), ovstest.InNetns(ovsNS))
	p := nstest.Prefix()
	host := p + "-host"
	d := newDaemon(t, host, "--drivers", "ovs", "--ovsdb", ovsInst.Addr(), "--ovs-datapath", "netdev",
		"--ovs-netns", nstest.Path(ovsNS))
	d.start()
	d.netdcli("-oper", "create", "-construct", "tenant", p)
	d.netdcli("-oper", "create", "-construct", "network", "-tenant", p, "-driver", "ovs", "-tag", "100", "-subnet", "10.89.1.0/24", "red")
	d.netdcli("-oper", "create", "-construct", "network", "-tenant", p, "-driver", "ovs", "-tag", "200", "-subnet", "10.89.2.0/24", "blue")
	for i, ep := range []struct{ name, net, ip string }{{"a", "red", "10.89.1.1"}, {"b", "red", "10.89.1.2"}, {"c", "blue", "10.89.2.1"}, {"e", "blue", "10.89.2.2"}} {
		ns := nstest.NS(t, fmt.Sprintf("%s%d", p, i))
		d.netdcli("-oper", "create", "-construct", "endpoint", "-tenant", p, "-net-id", ep.net, "-ip-address", ep.ip,
			"-host", host, "-netns", ns, ep.name)
	}
	t.Cleanup(func() {
		for _, e := range []string{"a", "b", "c", "d", "e"} {
			_, _ = exec.Command(bins+"/netdcli", "-etcd-url", d.etcdURL, "-oper", "delete", "-construct", "endpoint", "-tenant", p, e).CombinedOutput()
		}
	})
	d.waitUp(p, host, 4)
	nstest.MustPing(t, p+"0", "10.89.1.2")
	nstest.MustPing(t, p+"3", "10.89.2.1") // c works on its own VLAN: what follows is isolation
	nstest.MustNotPing(t, p+"0", "10.89.2.1")

	ofports := func() string {
		out := ovsInst.Vsctl(t, "--columns=name,ofport", "find", "Interface", "external_ids:netplugin-endpoint!=\"\"")
		return out
	}
	before := ofports()
	if strings.Count(before, "ofport") != 4 {
		t.Fatalf("want 4 netplugin interfaces:\n%s", before)
	}
	ping := exec.Command("ip", "netns", "exec", p+"0", "ping", "-c", "100", "-i", "0.03", "-W", "1", "10.89.1.2")
	var pingOut bytes.Buffer
	ping.Stdout = &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	d.stop(syscall.SIGKILL)
	d.start()
	d.waitUp(p, host, 4)
	if err := ping.Wait(); err != nil || !strings.Contains(pingOut.String(), " 0% packet loss") {
		t.Fatalf("ping across the agent restart: %v\n%s", err, pingOut.String())
	}
	if after := ofports(); after != before {
		t.Fatalf("ofports changed across the restart:\n%s\n%s", before, after)
	}

	// A port deleted behind our back comes back.
	port := core.HostIfName(p + "/b")
	ovsInst.Vsctl(t, "del-port", port)
	deadline := time.Now().Add(20 * time.Second)
	for !nstest.Ping(p+"0", "10.89.1.2") {
		if time.Now().After(deadline) {
			t.Fatal("a port deleted by hand was not put back")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// OVSDB down: the new endpoint reports why, the agent keeps running, and it
	// comes up once OVSDB is back.
	ovsInst.KillDBServer(t)
	ns := nstest.NS(t, p+"5")
	d.netdcli("-oper", "create", "-construct", "endpoint", "-tenant", p, "-net-id", "red", "-ip-address", "10.89.1.4", "-host", host, "-netns", ns, "d")
	deadline = time.Now().Add(30 * time.Second)
	for {
		st := d.endpoints(p)["d"].Status[host]
		if st.State == core.StateError && st.Error != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no error status while OVSDB is down: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if d.cmd.ProcessState != nil {
		t.Fatal("the agent exited when OVSDB went away")
	}
	ovsInst.RestartDBServer(t)
	d.waitUp(p, host, 5)
	nstest.MustPing(t, p+"5", "10.89.1.1")
}
