package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/recdriver"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
)

// recAgent runs an agent of host with a recording driver on its own client
// (as on its own machine) and returns it with its driver.
func recAgent(t *testing.T, url, host, vtep string, cfg agent.Config) (*agent.Agent, *recdriver.Driver) {
	a, d, _ := recAgentStop(t, url, host, vtep, cfg)
	return a, d
}

// recAgentStop is recAgent that also returns how to stop the agent.
func recAgentStop(t *testing.T, url, host, vtep string, cfg agent.Config) (*agent.Agent, *recdriver.Driver, func()) {
	t.Helper()
	s, err := state.Connect(context.Background(), []string{url}, 5*time.Second, etcdtest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	d := recdriver.New()
	cfg.Host, cfg.VTEP, cfg.Store, cfg.Log = host, vtep, s, etcdtest.Log(t)
	cfg.Drivers = map[string]core.Driver{recdriver.Name: d}
	if cfg.Resync == 0 {
		cfg.Resync = 300 * time.Millisecond
	}
	a := agent.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return a, d, stop
}

// eventually polls cond until it holds or 15 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quiet waits until no agent has received a watch event for half a second
// and returns their counts.
func quiet(t *testing.T, agents ...*agent.Agent) []int64 {
	t.Helper()
	counts := func() []int64 {
		out := make([]int64, len(agents))
		for i, a := range agents {
			out[i] = a.WatchEvents()
		}
		return out
	}
	last, since := counts(), time.Now()
	for time.Since(since) < 500*time.Millisecond {
		time.Sleep(50 * time.Millisecond)
		if now := counts(); fmt.Sprint(now) != fmt.Sprint(last) {
			last, since = now, time.Now()
		}
	}
	return last
}

// TestAgentHearsOnlyItsNetworks: agents watch their own endpoints and the
// networks those are on. Twenty writes to a network only host C serves reach
// C and no other agent; one write to a network of A and B reaches B (its
// host) and each of the network's two hosts once: 1 + 2 events in all, and A
// learns the remote endpoint from it.
func TestAgentHearsOnlyItsNetworks(t *testing.T) {
	nstest.RequireRoot(t)
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	ns := nstest.NS(t, p+"c")
	for _, n := range []core.Network{{Name: p + "ab", Driver: recdriver.Name, Encap: core.EncapVXLAN, Subnet: "10.71.0.0/24"},
		{Name: p + "c", Driver: recdriver.Name, Encap: core.EncapVXLAN, Subnet: "10.71.1.0/24"}} {
		if _, err := s.CreateNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(net, name, host string) {
		t.Helper()
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: net, Name: name, Host: host, NetNS: ns}, 0); err != nil {
			t.Fatal(err)
		}
	}
	mk(p+"ab", p+"a1", p+"A")
	mk(p+"ab", p+"a2", p+"A")
	mk(p+"ab", p+"b1", p+"B")
	mk(p+"c", p+"c1", p+"C")
	a, da := recAgent(t, e.Endpoint(), p+"A", "192.0.2.1", agent.Config{})
	b, _ := recAgent(t, e.Endpoint(), p+"B", "192.0.2.2", agent.Config{})
	c, dc := recAgent(t, e.Endpoint(), p+"C", "192.0.2.3", agent.Config{})
	eventually(t, "A to know B's endpoint", func() bool {
		r, _ := da.Remotes("default/" + p + "ab")
		return len(r.Endpoints) == 1 && r.Endpoints[0].VTEP == "192.0.2.2"
	})
	waitStatus(t, s, p+"C", core.StateUp, "default/"+p+"c1")
	before := quiet(t, a, b, c)

	// Twenty writes on C's network: ten endpoints created, ten detached.
	for i := 0; i < 10; i++ {
		mk(p+"c", fmt.Sprintf("%sc-%d", p, i), p+"C")
	}
	for i := 0; i < 10; i++ {
		if _, err := s.Detach(ctx, "default", fmt.Sprintf("%sc-%d", p, i), ""); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "C to drop the detached endpoints", func() bool { return dc.Endpoints() == 1 })
	after := quiet(t, a, b, c)
	if after[0] != before[0] || after[1] != before[1] {
		t.Fatalf("writes to a network only C serves reached A (%d events) and B (%d events)", after[0]-before[0], after[1]-before[1])
	}
	if got := after[2] - before[2]; got < 20 {
		t.Fatalf("C received %d events for 20 writes of its own endpoints", got)
	}

	mk(p+"ab", p+"b2", p+"B")
	eventually(t, "A to know b2", func() bool {
		r, _ := da.Remotes("default/" + p + "ab")
		return len(r.Endpoints) == 2
	})
	last := quiet(t, a, b, c)
	gotA, gotB, gotC := last[0]-after[0], last[1]-after[1], last[2]-after[2]
	t.Logf("one write to a network of A and B: A %d, B %d, C %d events", gotA, gotB, gotC)
	if gotA != 1 || gotB != 2 || gotC != 0 {
		t.Fatalf("one endpoint write to a network on 2 hosts: A %d, B %d, C %d events; want 1, 2, 0", gotA, gotB, gotC)
	}
}

// TestBadKeysAreSkipped: one undecodable key and one of a layout this version
// does not know, among the host's endpoints and its network's members, while
// 20 endpoints reconcile: all 20 come up and pass traffic, the bad keys are
// counted, logged, and the endpoint the undecodable one stands for says why
// in its status.
func TestBadKeysAreSkipped(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Subnet: "10.72.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		state.IndexPrefix + "host/" + host + "/ep/default/" + p + "broken":   `{"tenant":"default","name":`,
		state.IndexPrefix + "host/" + host + "/ep/default/" + p + "x/future": `{}`,
		state.IndexPrefix + "net/default/" + p + "/" + p + "ghost":           `not json`,
		state.ConfigPrefix + "endpoints/default/" + p + "broken":             `{"tenant":"default","name":`,
	}
	put := func(keys map[string]string) {
		for k, v := range keys {
			if _, err := s.Client().Put(ctx, k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() {
		for k := range bad {
			_, _ = s.Client().Delete(context.Background(), k)
		}
	})
	m := agent.NewMetrics()
	var keys []string
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("%s%d", p, i)
		nsName := nstest.NS(t, name)
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: name, Host: host, NetNS: nsName}, 0); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, "default/"+name)
		switch i {
		case 5:
			_, _, _ = runAgent(t, s, host, agent.Config{LeaseFile: leaseFile(t, host), Metrics: m})
		case 10:
			put(bad) // while the agent reconciles the first ones
		}
	}
	waitStatus(t, s, host, core.StateUp, keys...)
	st := waitStatus(t, s, host, core.StateError, "default/"+p+"broken")
	if e := st["default/"+p+"broken"].Error; !strings.Contains(e, "undecodable record") {
		t.Fatalf("status of the undecodable endpoint: %q", e)
	}
	eventually(t, "three bad keys counted", func() bool { return gauge(t, m, "netplugin_mirror_bad_keys") == 3 })
	nstest.MustPing(t, p+"0", "10.72.0.20")
	nstest.MustPing(t, p+"19", "10.72.0.1")
}

func gauge(t *testing.T, m *agent.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestFailingSyncsBackOff: a sync that keeps failing waits, longer each time,
// instead of running again at every event.
func TestFailingSyncsBackOff(t *testing.T) {
	_, e := etcdtest.Store(t)
	a, d := recAgent(t, e.Endpoint(), nstest.Prefix()+"-host", "", agent.Config{Resync: 2 * time.Second})
	eventually(t, "the first sync", func() bool { return a.Syncs() > 0 })
	d.Fail(recdriver.ErrBroken)
	start := a.Syncs()
	for i := 0; i < 150; i++ { // events for three seconds
		a.Poke()
		time.Sleep(20 * time.Millisecond)
	}
	if n := a.Syncs() - start; n > 12 {
		t.Fatalf("%d syncs in 3 s of events with a failing driver: no backoff", n)
	}
	d.Fail(nil)
	eventually(t, "a healthy agent after the driver recovers", a.Healthy)
}

// slowDocker answers container lookups only after a while, as a Docker
// daemon under load does.
type slowDocker struct {
	entered chan struct{}
	once    sync.Once
}

func (d *slowDocker) NetNSPath(ctx context.Context, _ string) (string, error) {
	d.once.Do(func() { close(d.entered) })
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
	}
	return "", errors.New("no such container")
}

// TestExclusiveNotHeldBySlowDocker: while a sync waits for Docker to resolve
// a container, the Docker plugin's calls (Exclusive) do not wait for it.
func TestExclusiveNotHeldBySlowDocker(t *testing.T) {
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	host := p + "-host"
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Driver: recdriver.Name, Subnet: "10.73.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: p + "c", Host: host, ContainerName: "web", ContainerID: "web"}, 0); err != nil {
		t.Fatal(err)
	}
	dk := &slowDocker{entered: make(chan struct{})}
	a, _ := recAgent(t, e.Endpoint(), host, "", agent.Config{Containers: dk, Resync: time.Minute})
	select {
	case <-dk.entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the agent never asked Docker")
	}
	start := time.Now()
	if err := a.Exclusive(ctx, func(context.Context) (int64, error) { return 0, nil }); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Exclusive waited %v for a sync blocked on Docker", took)
	}
}

// TestRestartWithdrawsWhatItNoLongerServes: an agent that takes its
// predecessor's lease over (a restart) withdraws the networks it no longer
// serves: its endpoints there went while it was down, and nothing else would
// delete a key that lives as long as the lease.
func TestRestartWithdrawsWhatItNoLongerServes(t *testing.T) {
	nstest.RequireRoot(t)
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	host := p + "-host"
	ns := nstest.NS(t, p+"x")
	for i, n := range []string{p + "keep", p + "drop"} {
		if _, err := s.CreateNetwork(ctx, core.Network{Name: n, Driver: recdriver.Name, Subnet: fmt.Sprintf("10.75.%d.0/24", i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: n, Name: n + "-e", Host: host, NetNS: ns}, 0); err != nil {
			t.Fatal(err)
		}
	}
	published := func(n string) bool {
		r, err := s.Client().Get(ctx, state.Prefix+"nethosts/default/"+n+"/"+host)
		return err == nil && len(r.Kvs) == 1
	}
	lf := leaseFile(t, host)
	_, _, stop := recAgentStop(t, e.Endpoint(), host, "192.0.2.9", agent.Config{LeaseFile: lf})
	eventually(t, "both networks published", func() bool { return published(p+"keep") && published(p+"drop") })
	stop()
	if err := s.DeleteEndpoint(ctx, "default", p+"drop-e"); err != nil {
		t.Fatal(err)
	}
	recAgent(t, e.Endpoint(), host, "192.0.2.9", agent.Config{LeaseFile: lf})
	eventually(t, "the network no longer served withdrawn", func() bool { return !published(p + "drop") })
	if !published(p + "keep") {
		t.Fatal("the network still served was withdrawn")
	}
}

// TestRestartKeepsRemotes: the first passes after a restart run before the
// mirrors of the host's networks are loaded. They must leave the forwarding
// entries alone rather than hand the driver an empty set of remotes (the
// linuxbridge driver then flushed every FDB entry and OVS every tunnel for a
// moment, and the fleet's restart test lost echoes across hosts).
func TestRestartKeepsRemotes(t *testing.T) {
	nstest.RequireRoot(t)
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	ns := nstest.NS(t, p+"x")
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Driver: recdriver.Name, Encap: core.EncapVXLAN, Subnet: "10.76.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"A", "B"} {
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: p + h, Host: p + h, NetNS: ns}, 0); err != nil {
			t.Fatal(err)
		}
	}
	nk := "default/" + p
	knowsB := func(d *recdriver.Driver) func() bool {
		return func() bool { r, _ := d.Remotes(nk); return len(r.Endpoints) == 1 }
	}
	recAgent(t, e.Endpoint(), p+"B", "192.0.2.2", agent.Config{})
	lf := leaseFile(t, p+"A")
	_, d, stop := recAgentStop(t, e.Endpoint(), p+"A", "192.0.2.1", agent.Config{LeaseFile: lf})
	eventually(t, "A to know B's endpoint", knowsB(d))
	stop()
	_, d, _ = recAgentStop(t, e.Endpoint(), p+"A", "192.0.2.1", agent.Config{LeaseFile: lf})
	eventually(t, "A to know B's endpoint after its restart", knowsB(d))
	for i, c := range d.RemoteCalls() {
		if c[nk] != 1 {
			t.Fatalf("pass %d after the restart gave the driver %d remote endpoints of %s (%v); want B's one, or no call", i+1, c[nk], nk, c)
		}
	}
}
