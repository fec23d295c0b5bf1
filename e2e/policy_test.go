package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// removePolicies deletes a tenant's rules, groups, policies and netprofiles
// through netdcli on host h (its endpoints are gone): part of removeTenant.
// Rules go first, since a group a rule names cannot be deleted, nor a policy
// a group uses.
func (c *cluster) removePolicies(t testing.TB, h, tenant string) {
	t.Helper()
	list := func(construct string, v any) bool {
		out, err := c.tryExec(h, "netdcli", "-oper", "get", "-construct", construct, "-tenant", tenant, "-json")
		if err != nil || json.Unmarshal([]byte(out), v) != nil {
			t.Errorf("cleanup of tenant %s: list %s: %v %s", tenant, construct, err, out)
			return false
		}
		return true
	}
	del := func(args ...string) {
		if out, err := c.tryExec(h, append([]string{"netdcli", "-oper", "delete", "-tenant", tenant}, args...)...); err != nil {
			t.Errorf("cleanup of tenant %s: delete %v: %v %s", tenant, args, err, out)
		}
	}
	var pols []core.Policy
	var groups []core.Group
	var profiles []core.Profile
	if !list("policy", &pols) || !list("group", &groups) || !list("netprofile", &profiles) {
		return
	}
	for _, p := range pols {
		for _, r := range p.Rules {
			del("-construct", "rule", "-policy", p.Name, r.Name)
		}
	}
	for _, g := range groups {
		del("-construct", "group", g.Name)
	}
	for _, p := range pols {
		del("-construct", "policy", p.Name)
	}
	for _, p := range profiles {
		del("-construct", "netprofile", p.Name)
	}
}

// policyModel reads a tenant's objects back through netdcli -json on h1:
// the model the oracle judges traffic by.
func (c *cluster) policyModel(t testing.TB, tenant string) core.PolicyModel {
	t.Helper()
	var m core.PolicyModel
	for construct, v := range map[string]any{"network": &m.Networks, "group": &m.Groups, "policy": &m.Policies, "netprofile": &m.Profiles} {
		out := c.netdcli(t, "h1", "-oper", "get", "-construct", construct, "-tenant", tenant, "-json")
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("get %s: %v: %s", construct, err, out)
		}
	}
	for _, e := range c.endpoints(t, "h1", tenant) {
		m.Endpoints = append(m.Endpoints, e.Endpoint)
	}
	return m
}

// policyGens is the policy generation each host reports for group.
func (c *cluster) policyGens(t testing.TB, tenant, group string) map[string]int64 {
	t.Helper()
	var views []struct {
		Hosts map[string]struct {
			Generation int64    `json:"generation"`
			Errors     []string `json:"errors"`
		} `json:"hosts"`
	}
	out := c.netdcli(t, "h1", "-oper", "get", "-construct", "group", "-tenant", tenant, "-json", group)
	if err := json.Unmarshal([]byte(out), &views); err != nil || len(views) != 1 {
		t.Fatalf("get group: %v: %s", err, out)
	}
	gens := map[string]int64{}
	for h, st := range views[0].Hosts {
		if len(st.Errors) > 0 {
			t.Fatalf("%s reports policy problems: %v", h, st.Errors)
		}
		gens[h] = st.Generation
	}
	return gens
}

// TestPolicyMatrixAcrossHosts: on a linuxbridge VXLAN network across two
// hosts of the cluster, groups web, app and db (web may reach app on 8080,
// app may reach db on 5432, db lets ICMP in) with members on both hosts:
// every probe (TCP 5432 and 8080, ICMP) between every pair passes exactly
// where core's oracle says. A rule letting web reach db on 5432 is reported
// applied by both hosts and flips the matrix where the oracle says.
func TestPolicyMatrixAcrossHosts(t *testing.T) {
	c := sharedCluster(t)
	p := nstest.Prefix()
	tn := c.newTenant(t, "h1", p)
	c.netdcli(t, "h1", "-oper", "create", "-construct", "network", "-tenant", tn, "-driver", "linuxbridge", "-tag-type", "vxlan",
		"-subnet", "10.62.0.0/24", "net")
	create := func(construct string, args ...string) {
		c.netdcli(t, "h1", append([]string{"-oper", "create", "-construct", construct, "-tenant", tn}, args...)...)
	}
	for _, pol := range []string{"app-in", "db-in"} {
		create("policy", pol)
	}
	create("group", "-net-id", "net", "web")
	create("group", "-net-id", "net", "-policy", "app-in", "app")
	create("group", "-net-id", "net", "-policy", "db-in", "db")
	create("rule", "-policy", "app-in", "-priority", "10", "-direction", "in", "-from-group", "web", "-protocol", "tcp", "-port", "8080", "-action", "allow", "web-app")
	create("rule", "-policy", "db-in", "-priority", "10", "-direction", "in", "-from-group", "app", "-protocol", "tcp", "-port", "5432", "-action", "allow", "app-db")
	create("rule", "-policy", "db-in", "-priority", "5", "-direction", "in", "-protocol", "icmp", "-action", "allow", "ping")
	var eps []*ep
	for i, m := range []struct{ name, group, host string }{
		{"web1", "web", "h1"}, {"web2", "web", "h2"}, {"app1", "app", "h2"}, {"db1", "db", "h1"}, {"db2", "db", "h2"},
	} {
		e := &ep{tenant: tn, net: "net", name: m.name, host: m.host, ip: fmt.Sprintf("10.62.0.%d", i+1)}
		e.ns = nstest.NS(t, p+"-"+e.name)
		c.netdcli(t, e.host, "-oper", "create", "-construct", "endpoint", "-tenant", tn, "-net-id", "net", "-group", m.group,
			"-ip-address", e.ip, "-host", e.host, "-netns", e.ns, e.name)
		eps = append(eps, e)
	}
	c.waitUp(t, 60*time.Second, eps...)
	var peers []nstest.Peer
	for _, e := range eps {
		nstest.ServeProbes(t, e.ns, nstest.MatrixProbes)
		peers = append(peers, nstest.Peer{Name: e.name, NS: e.ns, IP: e.ip, Net: "net"})
	}
	probes := []nstest.Probe{{Name: "tcp/5432", Proto: 6, Port: 5432}, {Name: "tcp/8080", Proto: 6, Port: 8080}, {Name: "icmp", Proto: 1}}
	oracle := func(m core.PolicyModel) func(src, dst nstest.Peer, pr nstest.Probe) bool {
		byName := map[string]core.Endpoint{}
		for _, e := range m.Endpoints {
			byName[e.Name] = e
		}
		return func(src, dst nstest.Peer, pr nstest.Probe) bool {
			return m.Verdict(byName[src.Name], byName[dst.Name], pr.Proto, pr.Port)
		}
	}
	var gens map[string]int64
	waitFor(t, 30*time.Second, "h1 and h2 to report a policy generation for db", func() bool {
		gens = c.policyGens(t, tn, "db")
		return gens["h1"] > 0 && gens["h2"] > 0
	})
	// The first packets across hosts wait for ARP: let every pair meet once
	// on a probe the oracle allows before the matrix times probes.
	reachable(t, eps[0], eps[3])
	reachable(t, eps[1], eps[3])
	_, allowed := nstest.Matrix(t, peers, probes, oracle(c.policyModel(t, tn)))

	start := time.Now()
	create("rule", "-policy", "db-in", "-priority", "20", "-direction", "in", "-from-group", "web", "-protocol", "tcp", "-port", "5432", "-action", "allow", "web-db")
	waitFor(t, 20*time.Second, "h1 and h2 to report the rule's generation", func() bool {
		now := c.policyGens(t, tn, "db")
		return now["h1"] > gens["h1"] && now["h2"] > gens["h2"]
	})
	t.Logf("rule written to generation reported by both hosts: %v", time.Since(start).Round(time.Millisecond))
	_, after := nstest.Matrix(t, peers, probes, oracle(c.policyModel(t, tn)))
	if after != allowed+4 {
		t.Fatalf("the rule let %d more probes through, want 4 (web1 and web2 to db1 and db2 on 5432)", after-allowed)
	}
	for _, e := range eps {
		c.netdcli(t, e.host, "-oper", "delete", "-construct", "endpoint", "-tenant", tn, e.name)
	}
}
