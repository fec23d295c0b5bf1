package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
)

// runAgent starts an agent with cfg completed for host and returns it, a
// channel with Run's result, and stop.
func runAgent(t *testing.T, s *state.Store, host string, cfg agent.Config) (*agent.Agent, <-chan error, func()) {
	t.Helper()
	nstest.RemoveMarkedAtCleanup(t, host)
	log := etcdtest.Log(t)
	cfg.Host, cfg.Store, cfg.Log = host, s, log
	cfg.Drivers = map[string]core.Driver{linuxbridge.Name: mustLinuxbridge(t, log, host)}
	if cfg.Resync == 0 {
		cfg.Resync = 300 * time.Millisecond
	}
	a := agent.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	done := make(chan struct{})
	go func() { defer close(done); res <- a.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return a, res, stop
}

// oneEndpoint makes a network with one endpoint attached to a new namespace on host.
func oneEndpoint(t *testing.T, s *state.Store, p, host, subnet string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Subnet: subnet}); err != nil {
		t.Fatal(err)
	}
	ns := nstest.NS(t, p+"a")
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: p + "a", Host: host, NetNS: ns}, 0); err != nil {
		t.Fatal(err)
	}
	return "default/" + p + "a"
}

// teardown deletes what oneEndpoint made and waits until the running agent of
// host removed every link it marked.
func teardown(t *testing.T, s *state.Store, p, host string) {
	t.Helper()
	ctx := context.Background()
	_ = s.DeleteEndpoint(ctx, "default", p+"a")
	_ = s.DeleteNetwork(ctx, "default", p)
	waitNoLinks(t, host)
}

func waitNoLinks(t *testing.T, host string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(nstest.MarkedLinks(t, host)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("links left: %v", nstest.MarkedLinks(t, host))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRestartKeepsHostKeyAndStatus: an agent stopped and started again takes
// its lease over: the host record and the status keys are never deleted, so
// peers never see the host go; its lease is the same.
func TestRestartKeepsHostKeyAndStatus(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	ep := oneEndpoint(t, s, p, host, "10.79.2.0/24")
	lf := leaseFile(t, host)
	_, _, stop := runAgent(t, s, host, agent.Config{LeaseFile: lf, LeaseTTL: 5})
	waitStatus(t, s, host, core.StateUp, ep)
	before, err := s.Client().Get(context.Background(), state.HostPrefix+host)
	if err != nil || len(before.Kvs) != 1 {
		t.Fatalf("host key: %v %v", before, err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	var deletes []string
	var mu sync.Mutex
	watching := make(chan struct{})
	go func() {
		wch := s.Client().Watch(wctx, state.Prefix, clientv3.WithPrefix(), clientv3.WithRev(before.Header.Revision+1))
		close(watching)
		for r := range wch {
			for _, ev := range r.Events {
				if ev.Type == mvccpb.DELETE {
					mu.Lock()
					deletes = append(deletes, string(ev.Kv.Key))
					mu.Unlock()
				}
			}
		}
	}()
	<-watching
	stop()
	time.Sleep(time.Second)
	_, _, _ = runAgent(t, s, host, agent.Config{LeaseFile: lf, LeaseTTL: 5})
	waitStatus(t, s, host, core.StateUp, ep)
	time.Sleep(6 * time.Second) // longer than the TTL: the old lease would have expired by now
	after, err := s.Client().Get(context.Background(), state.HostPrefix+host)
	if err != nil || len(after.Kvs) != 1 {
		t.Fatalf("host key after restart: %v %v", after, err)
	}
	if after.Kvs[0].Lease != before.Kvs[0].Lease {
		t.Errorf("lease changed across a restart: %x -> %x", before.Kvs[0].Lease, after.Kvs[0].Lease)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range deletes {
		if strings.Contains(k, host) {
			t.Errorf("key deleted across a restart: %s", k)
		}
	}
	teardown(t, s, p, host)
}

// TestDuplicateHostLabelRefused: a second agent with the same label (from
// another machine: no shared lease record) refuses to start with a clear
// error, and the first keeps its key and its endpoint.
func TestDuplicateHostLabelRefused(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	ep := oneEndpoint(t, s, p, host, "10.79.3.0/24")
	_, first, _ := runAgent(t, s, host, agent.Config{LeaseFile: leaseFile(t, host)})
	waitStatus(t, s, host, core.StateUp, ep)
	before, _ := s.Client().Get(context.Background(), state.HostPrefix+host)
	_, second, _ := runAgent(t, s, host, agent.Config{LeaseFile: filepath.Join(t.TempDir(), "other.lease")})
	select {
	case err := <-second:
		if !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), "held by another agent") {
			t.Fatalf("second agent: want a refusal, got %v", err)
		}
		t.Logf("refused: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("second agent with the same label did not refuse to start")
	}
	select {
	case err := <-first:
		t.Fatalf("first agent stopped: %v", err)
	default:
	}
	after, _ := s.Client().Get(context.Background(), state.HostPrefix+host)
	if len(after.Kvs) != 1 || after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Fatal("the first agent's host key was touched")
	}
	waitStatus(t, s, host, core.StateUp, ep)
	teardown(t, s, p, host)
}

// TestForeignClusterChangesNothing: a host programmed from one store and
// started against another waits and says why, removing nothing; with
// AdoptCluster it takes the new store's state.
func TestForeignClusterChangesNothing(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	ep := oneEndpoint(t, s, p, host, "10.79.4.0/24")
	cf := filepath.Join(t.TempDir(), "cluster-id")
	_, _, stop := runAgent(t, s, host, agent.Config{LeaseFile: leaseFile(t, host), ClusterFile: cf})
	waitStatus(t, s, host, core.StateUp, ep)
	stop()
	link := core.HostIfName(ep)

	other, _ := etcdtest.Store(t) // another, empty cluster
	a, _, stop2 := runAgent(t, other, host, agent.Config{LeaseFile: leaseFile(t, host+"-o"), ClusterFile: cf})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.Problem(), "programmed from etcd cluster") {
		if time.Now().After(deadline) {
			t.Fatalf("no problem reported: %q", a.Problem())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if !nstest.Links(t)[link] {
		t.Fatal("the agent removed a link although the store is not the one it was programmed from")
	}
	if a.Healthy() {
		t.Error("healthy while holding back")
	}
	t.Logf("held back: %s", a.Problem())
	stop2()
	_, _, _ = runAgent(t, other, host, agent.Config{LeaseFile: leaseFile(t, host+"-o"), ClusterFile: cf, AdoptCluster: true})
	for nstest.Links(t)[link] {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("with --adopt-cluster the new store's (empty) state was not applied")
		}
		time.Sleep(100 * time.Millisecond)
	}
	id, err := other.ClusterID(context.Background())
	if b, _ := os.ReadFile(cf); err != nil || strings.TrimSpace(string(b)) != id {
		t.Fatalf("cluster file not rewritten to %s: %q %v", id, b, err)
	}
	waitNoLinks(t, host)
}

// TestEmptiedStoreNeverWipes: the store emptied under a running agent (a wipe,
// a restore from an empty backup) lists successfully with nothing in it; the
// agent keeps every link and says why.
func TestEmptiedStoreNeverWipes(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	ep := oneEndpoint(t, s, p, host, "10.79.5.0/24")
	a, _, _ := runAgent(t, s, host, agent.Config{LeaseFile: leaseFile(t, host)})
	waitStatus(t, s, host, core.StateUp, ep)
	id, err := s.Client().Get(context.Background(), state.ClusterKey)
	if err != nil || len(id.Kvs) != 1 {
		t.Fatalf("cluster key: %v %v", id, err)
	}
	// The desired state and its index copies go, as in an emptied store.
	for _, prefix := range []string{state.ConfigPrefix, state.IndexPrefix} {
		if _, err := s.Client().Delete(context.Background(), prefix, clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.Problem(), "no cluster ID") {
		if time.Now().After(deadline) {
			t.Fatalf("no problem reported: %q", a.Problem())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if !nstest.Links(t)[core.HostIfName(ep)] {
		t.Fatal("an emptied store wiped the host")
	}
	// With its cluster key back, the (empty) state is the store's again and applies.
	if _, err := s.Client().Put(context.Background(), state.ClusterKey, string(id.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	waitNoLinks(t, host)
}

// TestNetNSRefused: -netns naming the host's own namespace (the agent's, or
// PID 1's), a file that is not a namespace, or a path escaping /var/run/netns
// is refused for the endpoint, with its reason in status, and nothing is
// plugged into the host.
func TestNetNSRefused(t *testing.T) {
	nstest.RequireRoot(t)
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	p := nstest.Prefix()
	host := p + "-host"
	cleanupStore(t, s)
	if _, err := s.CreateNetwork(ctx, core.Network{Name: p, Subnet: "10.79.6.0/24"}); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"self":    "/proc/self/ns/net",
		"pid1":    "/proc/1/ns/net",
		"file":    "/etc/hostname",
		"escape":  "/var/run/netns/../../../proc/1/ns/net",
		"missing": p + "-nosuch",
	}
	want := map[string]string{"self": "host's own", "pid1": "host's own", "file": "not a network namespace",
		"escape": "invalid", "missing": "no such file"}
	var keys []string
	for name, ns := range cases {
		keys = append(keys, "default/"+p+name)
		if name == "escape" {
			// The store refuses such a path when it is written; the agent
			// must refuse it too, from a record written by hand or by an
			// older netdcli.
			ep := core.Endpoint{Tenant: "default", Network: p, Name: p + name, IP: "10.79.6.200", MAC: state.NewMAC(), Host: host, NetNS: ns}
			b, _ := json.Marshal(ep)
			for _, k := range []string{state.ConfigPrefix + "endpoints/default/" + ep.Name, state.IndexPrefix + "host/" + host + "/ep/default/" + ep.Name,
				state.IndexPrefix + "net/default/" + p + "/" + ep.Name} {
				if _, err := s.Client().Put(ctx, k, string(b)); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: p, Name: p + name, Host: host, NetNS: ns}, 0); err != nil {
			t.Fatal(err)
		}
	}
	before := nstest.Links(t)
	_, _, _ = runAgent(t, s, host, agent.Config{LeaseFile: leaseFile(t, host)})
	st := waitStatus(t, s, host, core.StateError, keys...)
	for name := range cases {
		e := st["default/"+p+name].Error
		if name == "pid1" && strings.Contains(e, "permission denied") {
			continue // this sandbox does not even let root open PID 1's namespace: refused all the same
		}
		if !strings.Contains(e, want[name]) {
			t.Errorf("%s: status error %q, want it to say %q", name, e, want[name])
		}
	}
	for l := range nstest.Links(t) {
		if !before[l] && strings.HasPrefix(l, "eth") {
			t.Errorf("a container interface %s appeared in the host namespace", l)
		}
	}
	if n := len(nstest.MarkedLinks(t, host)); n != 0 {
		t.Errorf("%d links made for refused endpoints: %v", n, nstest.MarkedLinks(t, host))
	}
}
