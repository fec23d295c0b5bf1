package state_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

func dscp(v int) *int { return &v }

// policyFixture: tenant t1 with networks n1 (linuxbridge) and mv (macvlan),
// policy db-in allowing web to db on 5432, profile gold, groups db (n1,
// db-in, gold) and web (n1), endpoint db1 in db.
func policyFixture(t *testing.T) (*state.Store, context.Context) {
	t.Helper()
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateTenant(ctx, "t1"))
	_, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "n1", Subnet: "10.70.1.0/24"})
	must(err)
	_, err = s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "mv", Driver: "macvlan", Subnet: "10.70.2.0/24"})
	must(err)
	_, err = s.CreatePolicy(ctx, core.Policy{Tenant: "t1", Name: "db-in"})
	must(err)
	_, err = s.CreateProfile(ctx, core.Profile{Tenant: "t1", Name: "gold", BandwidthIn: "10mbit", Burst: 64 << 10, DSCP: dscp(46)})
	must(err)
	_, err = s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "web", Network: "n1"})
	must(err)
	_, err = s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "web-to-db", Priority: 10, Direction: "in", FromGroup: "web", Protocol: "tcp", Port: "5432", Action: "allow"})
	must(err)
	_, err = s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "db", Network: "n1", Policies: []string{"db-in"}, Profile: "gold"})
	must(err)
	_, err = s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "db1", Group: "db", Host: "h1"}, 0)
	must(err)
	checkStore(t, s)
	return s, ctx
}

// TestPolicyObjects: the commands at store level work, membership is
// indexed, and every bad input is a one-line error that changes nothing.
func TestPolicyObjects(t *testing.T) {
	s, ctx := policyFixture(t)
	members, err := s.GroupMembers(ctx, "t1", "db")
	if err != nil || len(members) != 1 || members[0].Name != "db1" {
		t.Fatalf("members of db: %v %v", members, err)
	}
	// The same network holds a second policy with an overlapping rule of another priority: fine.
	if _, err := s.CreatePolicy(ctx, core.Policy{Tenant: "t1", Name: "deny-all", Rules: []core.Rule{{Name: "d", Priority: 5, Direction: "in", Action: "deny"}}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		do   func() error
		want string
	}{
		{"unknown from-group", func() error {
			_, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "r", Priority: 20, Direction: "in", FromGroup: "nope", Action: "allow"})
			return err
		}, "names group nope, which does not exist"},
		{"unknown from-network", func() error {
			_, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "r", Priority: 20, Direction: "in", FromNetwork: "nope", Action: "allow"})
			return err
		}, "names network nope, which does not exist"},
		{"port out of range", func() error {
			_, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "r", Priority: 20, Direction: "in", Protocol: "tcp", Port: "70000", Action: "allow"})
			return err
		}, "within 1-65535"},
		{"priority tie with a conflicting action", func() error {
			_, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "r", Priority: 10, Direction: "in", Protocol: "tcp", Action: "deny"})
			return err
		}, "give them different priorities"},
		{"duplicate rule", func() error {
			_, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "web-to-db", Priority: 30, Direction: "in", Action: "allow"})
			return err
		}, "already exists"},
		{"rule of an unknown policy", func() error {
			_, err := s.AddRule(ctx, "t1", "nope", core.Rule{Name: "r", Priority: 30, Direction: "in", Action: "allow"})
			return err
		}, "unknown policy"},
		{"delete an unknown rule", func() error { _, err := s.DeleteRule(ctx, "t1", "db-in", "nope"); return err }, "unknown rule"},
		{"policy of an unknown tenant", func() error { _, err := s.CreatePolicy(ctx, core.Policy{Tenant: "t9", Name: "p"}); return err }, "unknown tenant"},
		{"duplicate policy", func() error { _, err := s.CreatePolicy(ctx, core.Policy{Tenant: "t1", Name: "db-in"}); return err }, "already exists"},
		{"profile in bytes", func() error {
			_, err := s.CreateProfile(ctx, core.Profile{Tenant: "t1", Name: "p", BandwidthIn: "10mbps"})
			return err
		}, "bytes per second"},
		{"profile DSCP", func() error {
			_, err := s.CreateProfile(ctx, core.Profile{Tenant: "t1", Name: "p", DSCP: dscp(64)})
			return err
		}, "DSCP 64"},
		{"duplicate profile", func() error {
			_, err := s.CreateProfile(ctx, core.Profile{Tenant: "t1", Name: "gold", DSCP: dscp(1)})
			return err
		}, "already exists"},
		{"group of an unknown network", func() error {
			_, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g", Network: "nope"})
			return err
		}, "unknown network"},
		{"group of an unknown policy", func() error {
			_, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g", Network: "n1", Policies: []string{"nope"}})
			return err
		}, "names policy nope, which does not exist"},
		{"group of an unknown profile", func() error {
			_, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g", Network: "n1", Profile: "nope"})
			return err
		}, "names profile nope, which does not exist"},
		{"group whose policies tie", func() error {
			_, err := s.CreatePolicy(ctx, core.Policy{Tenant: "t1", Name: "allow5", Rules: []core.Rule{{Name: "a", Priority: 5, Direction: "in", Action: "allow"}}})
			if err != nil {
				return err
			}
			defer s.DeletePolicy(ctx, "t1", "allow5")
			before := etcdtest.Dump(t, s)
			_, err = s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g", Network: "n1", Policies: []string{"deny-all", "allow5"}})
			if after := etcdtest.Dump(t, s); after != before {
				t.Errorf("tie: the store changed")
			}
			return err
		}, "give them different priorities"},
		{"policy on macvlan", func() error {
			_, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g", Network: "mv", Policies: []string{"db-in"}})
			return err
		}, "uses driver macvlan"},
		{"profile on macvlan", func() error {
			_, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g", Network: "mv", Profile: "gold"})
			return err
		}, "uses driver macvlan"},
		{"duplicate group", func() error {
			_, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "web", Network: "n1"})
			return err
		}, "already exists"},
		{"endpoint of an unknown group", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "n1", Name: "e9", Group: "nope", Host: "h1"}, 0)
			return err
		}, "unknown group"},
		{"endpoint of a group of another network", func() error {
			_, err := s.CreateEndpoint(ctx, core.Endpoint{Tenant: "t1", Network: "mv", Name: "e9", Group: "web", Host: "h1"}, 0)
			return err
		}, "is in network n1, not mv"},
		{"delete a policy in use", func() error { return s.DeletePolicy(ctx, "t1", "db-in") }, "policy t1/db-in is used by group db"},
		{"delete a profile in use", func() error { return s.DeleteProfile(ctx, "t1", "gold") }, "profile t1/gold is used by group db"},
		{"delete a group with endpoints", func() error { return s.DeleteGroup(ctx, "t1", "db") }, "still has endpoint db1"},
		{"delete a group a rule names", func() error { return s.DeleteGroup(ctx, "t1", "web") }, "group t1/web is used by policy db-in"},
		{"delete a network a group is in", func() error {
			if _, err := s.CreateNetwork(ctx, core.Network{Tenant: "t1", Name: "n3", Subnet: "10.70.3.0/24"}); err != nil {
				return err
			}
			if _, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "g3", Network: "n3"}); err != nil {
				return err
			}
			defer func() { s.DeleteGroup(ctx, "t1", "g3"); s.DeleteNetwork(ctx, "t1", "n3") }()
			before := etcdtest.Dump(t, s)
			err := s.DeleteNetwork(ctx, "t1", "n3")
			if etcdtest.Dump(t, s) != before {
				t.Errorf("network delete: the store changed")
			}
			return err
		}, "network t1/n3 is used by group g3"},
		{"delete a tenant with policies", func() error {
			if err := s.CreateTenant(ctx, "t2"); err != nil {
				return err
			}
			if _, err := s.CreatePolicy(ctx, core.Policy{Tenant: "t2", Name: "p"}); err != nil {
				return err
			}
			defer func() { s.DeletePolicy(ctx, "t2", "p"); s.DeleteTenant(ctx, "t2") }()
			return s.DeleteTenant(ctx, "t2")
		}, "still has networks, policies or netprofiles"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := etcdtest.Dump(t, s)
			err := c.do()
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line with %q", err, c.want)
			}
			if after := etcdtest.Dump(t, s); after != before {
				t.Fatalf("a refused command changed the store")
			}
		})
	}
	checkStore(t, s)
}

// TestRuleTiesAcrossGroupPolicies: a rule that ties only with a rule of
// another policy of a group using its policy is refused; the group's
// membership index follows an endpoint's delete, and objects go once unused.
func TestRuleTiesAcrossGroupPolicies(t *testing.T) {
	s, ctx := policyFixture(t)
	if _, err := s.CreatePolicy(ctx, core.Policy{Tenant: "t1", Name: "extra", Rules: []core.Rule{{Name: "x", Priority: 40, Direction: "in", Action: "deny"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateGroup(ctx, core.Group{Tenant: "t1", Name: "both", Network: "n1", Policies: []string{"db-in", "extra"}}); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	_, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "y", Priority: 40, Direction: "in", Action: "allow"})
	if err == nil || !strings.Contains(err.Error(), "group t1/both") || !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("tie across a group's policies: %v", err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("refused rule changed the store")
	}
	rev, err := s.AddRule(ctx, "t1", "db-in", core.Rule{Name: "y", Priority: 41, Direction: "in", Action: "allow"})
	if err != nil || rev == 0 {
		t.Fatalf("rule at another priority: %v", err)
	}
	if _, err := s.DeleteRule(ctx, "t1", "db-in", "web-to-db"); err != nil {
		t.Fatal(err)
	}
	checkStore(t, s)
	// web is no longer named by a rule: it can go.
	if err := s.DeleteGroup(ctx, "t1", "web"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteEndpoint(ctx, "t1", "db1"); err != nil {
		t.Fatal(err)
	}
	for _, del := range []func() error{
		func() error { return s.DeleteGroup(ctx, "t1", "db") },
		func() error { return s.DeleteGroup(ctx, "t1", "both") },
		func() error { return s.DeletePolicy(ctx, "t1", "db-in") },
		func() error { return s.DeletePolicy(ctx, "t1", "extra") },
		func() error { return s.DeleteProfile(ctx, "t1", "gold") },
		func() error { return s.DeleteNetwork(ctx, "t1", "n1") },
	} {
		if err := del(); err != nil {
			t.Fatal(err)
		}
	}
	checkStore(t, s)
	if d := etcdtest.Dump(t, s); strings.Contains(d, "/index/uses/") || strings.Contains(d, "/index/group/") {
		t.Fatalf("index keys left over:\n%s", d)
	}
}
