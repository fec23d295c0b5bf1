package state_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
)

// TestHostViewHearsOnlyItsGroups: a host's view holds the groups of its
// endpoints, their policies and profile, and the members of the groups those
// policies name. Ten endpoints joining a group no local policy names deliver
// 0 events to it; one joining a named group delivers exactly 1, and the
// snapshot's model has it, at a generation at least the write's revision.
func TestHostViewHearsOnlyItsGroups(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.CreateNetwork(ctx, core.Network{Name: "na", Subnet: "10.73.0.0/24"})
	must(err)
	_, err = s.CreateNetwork(ctx, core.Network{Name: "nx", Subnet: "10.73.1.0/24"})
	must(err)
	_, err = s.CreateGroup(ctx, core.Group{Name: "gw", Network: "nx"})
	must(err)
	_, err = s.CreateGroup(ctx, core.Group{Name: "gx", Network: "nx"})
	must(err)
	_, err = s.CreatePolicy(ctx, core.Policy{Name: "pa", Rules: []core.Rule{{Name: "w", Priority: 10, Direction: "in", FromGroup: "gw", Protocol: "tcp", Port: "80", Action: "allow"}}})
	must(err)
	_, err = s.CreateProfile(ctx, core.Profile{Name: "gold", DSCP: dscp(46)})
	must(err)
	_, err = s.CreateGroup(ctx, core.Group{Name: "ga", Network: "na", Policies: []string{"pa"}, Profile: "gold"})
	must(err)
	_, err = s.CreateEndpoint(ctx, core.Endpoint{Network: "na", Name: "a1", Host: "hA", Group: "ga"}, 0)
	must(err)
	_, err = s.CreatePolicy(ctx, core.Policy{Name: "pp"})
	must(err)
	_, err = s.CreateGroup(ctx, core.Group{Name: "gp", Network: "na", Policies: []string{"pp"}})
	must(err)

	v := s.WatchHost("hA", func() {})
	go v.Run(ctx)
	<-v.Ready()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := v.Snapshot()
		if !st.Policy.Loading && len(st.Policy.Policies) == 1 && len(st.Policy.Profiles) == 1 && len(st.Policy.Groups) == 3 && len(st.Loading) == 0 {
			// ga in full, the peer gw without its policies, gp (on na, of
			// another host) too, and na policed by it.
			if fmt.Sprint(st.Policy.Groups) != "[{default ga na [pa] gold} {default gp na [] } {default gw nx [] }]" ||
				fmt.Sprint(st.Policy.Policed) != "[default/na]" {
				t.Fatalf("groups of the view: %v, policed %v", st.Policy.Groups, st.Policy.Policed)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("view never complete: %+v", st.Policy)
		}
		time.Sleep(20 * time.Millisecond)
	}
	quiet := func() int64 {
		last, since := v.Events(), time.Now()
		for time.Since(since) < 500*time.Millisecond {
			time.Sleep(50 * time.Millisecond)
			if now := v.Events(); now != last {
				last, since = now, time.Now()
			}
		}
		return last
	}
	before := quiet()
	for i := 0; i < 10; i++ {
		_, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "nx", Name: fmt.Sprintf("x%d", i), Host: "hZ", Group: "gx"}, 0)
		must(err)
	}
	after := quiet()
	if after != before {
		t.Fatalf("10 members joining a group no local policy names delivered %d events", after-before)
	}
	w, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "nx", Name: "w1", Host: "hZ", Group: "gw"}, 0)
	must(err)
	last := quiet()
	if last-after != 1 {
		t.Fatalf("one member joining a named group delivered %d events, want 1", last-after)
	}
	_, rev, err := s.GetEndpoint(ctx, "default", "w1")
	must(err)
	st := v.Snapshot()
	m := st.PolicyModel()
	if st.Policy.Generation < rev {
		t.Fatalf("generation %d below the member's write at %d", st.Policy.Generation, rev)
	}
	hp, errs := core.CompileHost(m, "hA", "linuxbridge")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if got := hp.Members["default/gw"]; len(got) != 1 || got[0] != w.IP {
		t.Fatalf("compiled members of gw: %v, want [%s]", got, w.IP)
	}
	if len(hp.Endpoints) != 1 || hp.Endpoints[0].QoS == nil || hp.Endpoints[0].QoS.DSCP != 46 {
		t.Fatalf("compiled endpoints: %+v", hp.Endpoints)
	}
	t.Logf("events: %d for 10 unrelated members, %d for one named member", after-before, last-after)
}
