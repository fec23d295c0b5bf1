package agent_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
)

// startAgent runs an agent until the returned stop is called (or the test ends).
func startAgent(t *testing.T, s *state.Store, host string) (stop func()) {
	t.Helper()
	nstest.RemoveMarkedAtCleanup(t, host)
	ctx, cancel := context.WithCancel(context.Background())
	log := etcdtest.Log(t)
	a := agent.New(agent.Config{Host: host, Store: s, Drivers: map[string]core.Driver{linuxbridge.Name: mustLinuxbridge(t, log, host)},
		Resync: 500 * time.Millisecond, Log: log, LeaseFile: leaseFile(t, host)})
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// leaseFile is where the agents of host record their lease: one path for the
// whole test, so that a restarted agent takes its predecessor's lease over.
func leaseFile(t *testing.T, host string) string {
	path := filepath.Join(os.TempDir(), "np-agent-test-"+host+".lease")
	t.Cleanup(func() { _ = os.Remove(path) })
	return path
}

// waitStatus polls until every named endpoint has the given state on host.
func waitStatus(t *testing.T, s *state.Store, host, want string, eps ...string) map[string]core.EndpointStatus {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		all, err := s.Statuses(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]core.EndpointStatus{}
		ok := true
		for _, e := range eps {
			st, found := all[e][host]
			if want == "" {
				ok = ok && !found
				continue
			}
			got[e] = st
			ok = ok && found && st.State == want
		}
		if ok {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints %v did not reach %q on %s: %v", eps, want, host, all)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cleanupStore(t *testing.T, s *state.Store) {
	t.Cleanup(func() { _, _ = s.Apply(context.Background(), state.Document{}, "") })
}

func TestAgentEndToEnd(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)

	if err := s.CreateTenant(ctx, p); err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"n1", "n2"} {
		if _, err := s.CreateNetwork(ctx, core.Network{Tenant: p, Name: n, Subnet: fmt.Sprintf("10.78.%d.0/24", i+1), Gateway: fmt.Sprintf("10.78.%d.254", i+1)}); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name, network, ip string) {
		ns := nstest.NS(t, p+name)
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: p, Network: network, Name: name, IP: ip, Host: host, NetNS: ns}, 0); err != nil {
			t.Fatal(err)
		}
	}
	mk("a", "n1", "10.78.1.1")
	mk("b", "n1", "10.78.1.2")
	mk("c", "n2", "10.78.2.1")
	stop := startAgent(t, s, host)
	st := waitStatus(t, s, host, core.StateUp, p+"/a", p+"/b", p+"/c")
	nstest.MustPing(t, p+"a", "10.78.1.2")
	nstest.MustPing(t, p+"c", "10.78.2.254") // c itself works: what follows is isolation
	nstest.MustNotPing(t, p+"a", "10.78.2.1")

	// Restart: the same links (same ifindex) stay, and status stays up: the
	// next agent takes the lease over.
	stop()
	waitStatus(t, s, host, core.StateUp, p+"/a")
	startAgent(t, s, host)
	st2 := waitStatus(t, s, host, core.StateUp, p+"/a", p+"/b", p+"/c")
	for k := range st {
		if st[k].IfIndex != st2[k].IfIndex || st[k].IfIndex == 0 {
			t.Fatalf("%s: ifindex %d before restart, %d after", k, st[k].IfIndex, st2[k].IfIndex)
		}
	}
	nstest.MustPing(t, p+"a", "10.78.1.2")

	// Detach unplugs and keeps the IP.
	if _, err := s.Detach(ctx, p, "b", ""); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, host, "", p+"/b")
	if nstest.Links(t)[core.HostIfName(p+"/b")] {
		t.Fatal("detached endpoint's link still there")
	}
	nstest.MustNotPing(t, p+"a", "10.78.1.2")
	if ep, _, _ := s.GetEndpoint(ctx, p, "b"); ep.IP != "10.78.1.2" {
		t.Fatalf("detach lost the IP: %+v", ep)
	}
	// Re-attach plugs it in again.
	if _, err := s.Attach(ctx, p, "b", state.Attachment{NetNS: p + "b"}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, host, core.StateUp, p+"/b")
	nstest.MustPing(t, p+"a", "10.78.1.2")

	// An endpoint whose namespace is missing reports an error, and the others stay up.
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: p, Network: "n1", Name: "ghost", Host: host, NetNS: p + "nosuchns"}, 0); err != nil {
		t.Fatal(err)
	}
	bad := waitStatus(t, s, host, core.StateError, p+"/ghost")
	if bad[p+"/ghost"].Error == "" {
		t.Fatal("error status without a message")
	}

	// Delete everything: links and bridges go, nothing else is touched.
	for _, e := range []string{"a", "b", "c", "ghost"} {
		if err := s.DeleteEndpoint(ctx, p, e); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus(t, s, host, "", p+"/a", p+"/b", p+"/c", p+"/ghost")
	deadline := time.Now().Add(10 * time.Second)
	for {
		leaked := nstest.MarkedLinks(t, host)
		if len(leaked) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaked links: %v", leaked)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestAgentRemovesWhatWasDeletedWhileDown(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Subnet: "10.79.1.0/24"}); err != nil {
		t.Fatal(err)
	}
	ns := nstest.NS(t, p+"a")
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: p + "a", Host: host, NetNS: ns}, 0); err != nil {
		t.Fatal(err)
	}
	stop := startAgent(t, s, host)
	waitStatus(t, s, host, core.StateUp, "default/"+p+"a")
	// A link that is not ours, named like ours, must survive everything.
	foreign := core.HostIfName("default/" + p + "foreign")
	if out, err := exec.Command("ip", "link", "add", foreign, "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "link", "del", foreign).Run()
	stop()
	if err := s.DeleteEndpoint(ctx, "default", p+"a"); err != nil {
		t.Fatal(err)
	}
	if !nstest.Links(t)[core.HostIfName("default/"+p+"a")] {
		t.Fatal("link vanished while the agent was down")
	}
	startAgent(t, s, host)
	deadline := time.Now().Add(10 * time.Second)
	for nstest.Links(t)[core.HostIfName("default/"+p+"a")] || nstest.Links(t)[linuxbridge.BridgeName(host, "default/"+p)] {
		if time.Now().After(deadline) {
			t.Fatal("endpoint deleted while the agent was down was not removed after restart")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !nstest.Links(t)[foreign] {
		t.Fatal("a link that is not netplugin's was removed")
	}
	// The status its predecessor wrote went with the lease the new agent
	// took over: the new agent deletes it, although it never wrote it.
	waitStatus(t, s, host, "", "default/"+p+"a")
}
