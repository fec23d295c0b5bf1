package state_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
	"github.com/netplugin/netplugin/state/etcdserver"
)

// etcdServer is an embedded etcd that a test can stop and start again on the
// same data and ports, as a crashed and restarted member.
type etcdServer struct {
	t   *testing.T
	cfg etcdserver.Config
	e   *etcdserver.Server
}

func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	es := &etcdServer{t: t, cfg: etcdserver.Config{DataDir: t.TempDir(),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))}}
	es.start()
	t.Cleanup(es.stop)
	return es
}

func (es *etcdServer) start() {
	es.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A port just released by a stopped member can take a moment to bind.
	var err error
	for i := 0; i < 20; i++ {
		if es.e, err = etcdserver.Start(ctx, es.cfg); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	es.t.Fatalf("start etcd: %v", err)
}

func (es *etcdServer) stop() {
	if es.e != nil {
		es.e.Close()
		es.e = nil
	}
}

// connect is one netdcli process: its own client, a short timeout.
func (es *etcdServer) connect() *state.Store {
	es.t.Helper()
	s, err := state.Connect(context.Background(), []string{es.cfg.ClientURL}, 2*time.Second, etcdtest.Log(es.t))
	if err != nil {
		es.t.Fatal(err)
	}
	es.t.Cleanup(func() { _ = s.Close() })
	return s
}

// bigDocument has 2,001 objects: a tenant, 10 networks of 199 endpoints. The
// endpoints of n0 that the first document made stay, re-attached.
func bigDocument() string {
	var nets []string
	for n := 0; n < 10; n++ {
		var eps []string
		for e := 0; e < 199; e++ {
			ns := ""
			if n == 0 && e < 20 {
				ns = `,"netns":"moved"`
			}
			eps = append(eps, fmt.Sprintf(`{"name":"n%d-e%d"%s}`, n, e, ns))
		}
		nets = append(nets, fmt.Sprintf(`{"name":"n%d","subnet":"10.60.%d.0/24","endpoints":[%s]}`, n, n, strings.Join(eps, ",")))
	}
	return `{"tenants":[{"name":"big","networks":[` + strings.Join(nets, ",") + `]}]}`
}

// firstDocument is what the store holds before: a tenant the big document
// deletes, and 20 endpoints of n0 it keeps and re-attaches.
func firstDocument() string {
	var old, keep []string
	for e := 0; e < 50; e++ {
		old = append(old, fmt.Sprintf(`{"name":"o%d","netns":"x"}`, e))
	}
	for e := 0; e < 20; e++ {
		keep = append(keep, fmt.Sprintf(`{"name":"n0-e%d","netns":"before"}`, e))
	}
	return `{"tenants":[{"name":"old","networks":[{"name":"gone","tag":900,"endpoints":[` + strings.Join(old, ",") + `]}]},
	  {"name":"big","networks":[{"name":"n0","subnet":"10.60.0.0/24","endpoints":[` + strings.Join(keep, ",") + `]}]}]}`
}

// checkConsistent proves nothing is allocated twice or leaked: every endpoint
// holds exactly its address key, every network exactly its tag key.
func checkConsistent(t testing.TB, s *state.Store) (eps map[string]core.Endpoint) {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix, clientv3.WithPrefix())
	mustDo(t, err)
	eps = map[string]core.Endpoint{}
	nets := map[string]core.Network{}
	ips, tags := map[string]string{}, map[string]string{}
	for _, kv := range r.Kvs {
		k, v := strings.TrimPrefix(string(kv.Key), state.Prefix), string(kv.Value)
		switch {
		case strings.HasPrefix(k, "config/endpoints/"):
			var e core.Endpoint
			mustDo(t, json.Unmarshal(kv.Value, &e))
			eps[e.Key()] = e
		case strings.HasPrefix(k, "config/networks/"):
			var n core.Network
			mustDo(t, json.Unmarshal(kv.Value, &n))
			nets[n.Key()] = n
		case strings.HasPrefix(k, "alloc/ip/"):
			ips[strings.TrimPrefix(k, "alloc/ip/")] = v
		case strings.HasPrefix(k, "alloc/vlan/"), strings.HasPrefix(k, "alloc/vxlan/"):
			tags[k] = v
		case strings.HasPrefix(k, "apply/"):
			t.Fatalf("journal key %s left", k)
		}
	}
	for _, e := range eps {
		if ips[e.NetworkKey()+"/"+e.IP] != e.Name {
			t.Fatalf("endpoint %s has IP %s, allocated to %q", e.Key(), e.IP, ips[e.NetworkKey()+"/"+e.IP])
		}
		if _, ok := nets[e.NetworkKey()]; !ok {
			t.Fatalf("endpoint %s on missing network", e.Key())
		}
	}
	if len(ips) != len(eps) {
		t.Fatalf("%d address keys for %d endpoints", len(ips), len(eps))
	}
	for _, n := range nets {
		if tags["alloc/"+n.Encap+"/"+fmt.Sprint(n.Tag)] != n.Key() {
			t.Fatalf("network %s: tag %d not allocated to it", n.Key(), n.Tag)
		}
	}
	if len(tags) != len(nets) {
		t.Fatalf("%d tag keys for %d networks", len(tags), len(nets))
	}
	return eps
}

// TestApplyCutMidwayIsCompletedByTheNext cuts etcd (or the applier's client)
// at points of a 2,001-object apply. The store is then either as it was or
// holds the journal; the next writer completes the journal exactly as planned,
// and nothing is allocated twice or leaked.
func TestApplyCutMidwayIsCompletedByTheNext(t *testing.T) {
	for _, tc := range []struct {
		name, at string
		stopEtcd bool // else the applier's client is closed, as if it was killed
		next     string
	}{
		{"etcd stopped before the journal", "plan", true, "apply"},
		{"etcd stopped after batch 10", "batch 10", true, "apply"},
		{"applier killed after the journal", "journal", false, "create tenant"},
		{"applier killed after the last batch", "end", false, "apply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es := startEtcd(t)
			ctx := context.Background()
			first := es.connect()
			_, err := first.Apply(ctx, parse(t, firstDocument()), "h1")
			mustDo(t, err)
			before := etcdtest.Dump(t, first)
			big := parse(t, bigDocument())
			opts := state.ApplyOptions{DefaultHost: "h1", OwnerTTL: 2 * time.Second}
			plan, err := first.PlanApply(ctx, big, opts)
			mustDo(t, err)
			if plan.ApplySummary != (state.ApplySummary{Created: 1979, Updated: 20, Deleted: 52}) {
				t.Fatalf("plan %+v", plan.ApplySummary)
			}
			planned := map[string]string{} // endpoint -> the IP the plan gave it
			for _, c := range plan.Changes {
				if c.Action == "create" && c.Kind == "endpoint" {
					planned[c.Name] = strings.Split(c.Detail, ", ")[1]
				}
			}

			applier := es.connect()
			var steps []string
			cut := false
			hooked := state.WithStepHook(opts, func(step string) {
				steps = append(steps, step)
				if step == tc.at && !cut {
					cut = true
					if tc.stopEtcd {
						es.stop()
					} else {
						_ = applier.Close()
					}
				}
			})
			if _, err := applier.ApplyWith(ctx, big, hooked); err == nil {
				t.Fatalf("apply survived the cut at %q (steps %v)", tc.at, steps)
			}
			if !cut {
				t.Fatalf("never reached %q: steps %v", tc.at, steps)
			}
			if tc.stopEtcd {
				es.start()
			}
			next := es.connect()
			after := etcdtest.Dump(t, next)
			journaled := strings.Contains(after, state.Prefix+"apply/journal=")
			if tc.at == "plan" {
				if after != before {
					t.Fatal("cut before the journal, yet the store changed")
				}
			} else if !journaled {
				t.Fatalf("cut at %q left no journal", tc.at)
			} else {
				// A dry run tells of the unfinished apply and plans against
				// the store as completing it leaves it: nothing more to do.
				p, err := next.PlanApply(ctx, big, opts)
				mustDo(t, err)
				if !strings.Contains(p.Pending, "is not finished") || p.Created+p.Updated+p.Deleted != 0 {
					t.Fatalf("dry run with a journal pending: %q, %+v", p.Pending, p.ApplySummary)
				}
				if etcdtest.Dump(t, next) != after {
					t.Fatal("dry run changed the store")
				}
			}

			start := time.Now()
			switch tc.next {
			case "apply":
				_, err = next.ApplyWith(ctx, big, opts)
			case "create tenant":
				err = next.CreateTenant(ctx, "later")
			}
			mustDo(t, err)
			t.Logf("cut at %q; the next %s finished in %s", tc.at, tc.next, time.Since(start).Round(time.Millisecond))
			eps := checkConsistent(t, next)
			if len(eps) != 1990 {
				t.Fatalf("%d endpoints, want the big document's 1990", len(eps))
			}
			for name, ip := range planned {
				if eps[name].IP != ip {
					t.Fatalf("endpoint %s got %s; the plan before the cut gave it %s", name, eps[name].IP, ip)
				}
			}
			for e := 0; e < 20; e++ {
				if ep := eps[fmt.Sprintf("big/n0-e%d", e)]; ep.NetNS != "moved" {
					t.Fatalf("kept endpoint %+v not re-attached", ep)
				}
			}
			if strings.Contains(etcdtest.Dump(t, next), "config/tenants/old") {
				t.Fatal("tenant old survived")
			}
			// The journal is done: applying again changes nothing (but the
			// tenant made after it).
			want := state.ApplySummary{}
			if tc.next == "create tenant" {
				_, err := next.ApplyWith(ctx, big, opts)
				mustDo(t, err)
			}
			rev := revision(t, next)
			if sum, err := next.ApplyWith(ctx, big, opts); err != nil || sum != want {
				t.Fatalf("apply after completion: %+v %v", sum, err)
			}
			if revision(t, next) != rev {
				t.Fatal("apply after completion wrote")
			}
		})
	}
}

// TestApplyConflictRollsBack: a key changed behind the apply's back (a writer
// that ignores the journal) makes a batch fail; the batches done are undone,
// the store is as it was plus that write, and the apply is planned again.
func TestApplyConflictRollsBack(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	_, err := s.Apply(ctx, parse(t, firstDocument()), "h1")
	mustDo(t, err)
	var steps []string
	intruder := state.Prefix + "alloc/ip/big/n5/10.60.5.1"
	o := state.WithStepHook(state.ApplyOptions{DefaultHost: "h1"}, func(step string) {
		steps = append(steps, step)
		if step == "batch 3" && len(steps) < 10 {
			// Bypasses the fence, as an old netdcli would.
			if _, err := s.Client().Put(ctx, intruder, "intruder"); err != nil {
				t.Error(err)
			}
		}
	})
	sum, err := s.ApplyWith(ctx, parse(t, bigDocument()), o)
	mustDo(t, err)
	all := strings.Join(steps, ",")
	if !strings.Contains(all, "undo 0,end,done,plan,journal") {
		t.Fatalf("no roll back and new plan: %s", all)
	}
	if sum.Created != 1979 {
		t.Fatalf("summary %+v", sum)
	}
	r, err := s.Client().Get(ctx, intruder)
	mustDo(t, err)
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "intruder" {
		t.Fatal("the apply overwrote a key it did not plan against")
	}
	mustDo(t, func() error { _, err := s.Client().Delete(ctx, intruder); return err }())
	eps := checkConsistent(t, s)
	if e := eps["big/n5-e0"]; e.IP != "10.60.5.2" {
		t.Fatalf("n5-e0 = %s, want 10.60.5.2 (10.60.5.1 was taken)", e.IP)
	}
	checkStore(t, s)
}

// TestWritersWaitForALiveApply: while a journal is being written, other
// writers (here endpoint creates from other clients, as concurrent netdcli or
// the Docker plugin would be) wait, then succeed without taking an address
// the apply planned.
func TestWritersWaitForALiveApply(t *testing.T) {
	s, e := etcdtest.Store(t)
	ctx := context.Background()
	_, err := s.Apply(ctx, parse(t, firstDocument()), "h1")
	mustDo(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	o := state.WithStepHook(state.ApplyOptions{DefaultHost: "h1"}, func(step string) {
		if step != "batch 5" {
			return
		}
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := state.Connect(ctx, []string{e.Endpoint()}, 5*time.Second, etcdtest.Log(t))
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				_, err = c.CreateEndpoint(ctx, core.Endpoint{Tenant: "big", Network: "n9", Name: fmt.Sprintf("late%d", w)}, 0)
				errs <- err
			}()
		}
		time.Sleep(300 * time.Millisecond) // let them hit the fence
	})
	_, err = s.ApplyWith(ctx, parse(t, bigDocument()), o)
	mustDo(t, err)
	wg.Wait()
	close(errs)
	for err := range errs {
		mustDo(t, err)
	}
	eps := checkConsistent(t, s)
	if len(eps) != 1990+4 {
		t.Fatalf("%d endpoints, want the document's 1990 and 4 late ones", len(eps))
	}
	for w := 0; w < 4; w++ {
		ip := net.ParseIP(eps[fmt.Sprintf("big/late%d", w)].IP).To4()
		if ip == nil || ip[3] < 200 {
			t.Fatalf("late endpoint took %s, one of the apply's addresses", ip)
		}
	}
}
