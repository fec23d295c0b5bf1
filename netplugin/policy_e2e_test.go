package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// policyModel reads tenant's networks, groups, policies, profiles and
// endpoints back through netdcli -json: the model the oracle judges by.
func (f *fleet) policyModel(tenant string) core.PolicyModel {
	f.t.Helper()
	var m core.PolicyModel
	get := func(construct string, v any) {
		f.t.Helper()
		out := f.netdcli("-oper", "get", "-construct", construct, "-tenant", tenant, "-json")
		if err := json.Unmarshal([]byte(out), v); err != nil {
			f.t.Fatalf("get %s: %v: %s", construct, err, out)
		}
	}
	get("network", &m.Networks)
	get("group", &m.Groups)
	get("policy", &m.Policies)
	get("netprofile", &m.Profiles)
	for _, e := range f.endpoints(tenant) {
		m.Endpoints = append(m.Endpoints, e.Endpoint)
	}
	return m
}

// policyGens returns the policy generation each host reports for group.
func (f *fleet) policyGens(tenant, group string) map[string]int64 {
	f.t.Helper()
	var views []struct {
		Hosts map[string]struct {
			Generation int64    `json:"generation"`
			Errors     []string `json:"errors"`
		} `json:"hosts"`
	}
	out := f.netdcli("-oper", "get", "-construct", "group", "-tenant", tenant, "-json", group)
	if err := json.Unmarshal([]byte(out), &views); err != nil || len(views) != 1 {
		f.t.Fatalf("get group: %v: %s", err, out)
	}
	gens := map[string]int64{}
	for h, st := range views[0].Hosts {
		if len(st.Errors) > 0 {
			f.t.Fatalf("host %s reports policy problems: %v", h, st.Errors)
		}
		gens[h] = st.Generation
	}
	return gens
}

// TestPolicyTwoHostsLinuxbridgeVXLAN and TestPolicyTwoHostsOVSVXLAN: two
// hosts, each its own agent, one VXLAN network of the driver across them, groups web and db with members on both hosts
// and an endpoint in no group. db's policy lets in only ICMP: the
// connectivity matrix (TCP 80 and 5432, ICMP, both ways, on one host and
// across) is the oracle's. A rule written through netdcli lets web reach db
// on 5432: both hosts report a newer policy generation and the matrix flips
// where the oracle says, on the same host and across hosts alike.
func TestPolicyTwoHostsLinuxbridgeVXLAN(t *testing.T) { testPolicyTwoHosts(t, false) }

func TestPolicyTwoHostsOVSVXLAN(t *testing.T) { testPolicyTwoHosts(t, true) }

func testPolicyTwoHosts(t *testing.T, ovs bool) {
	driver, underlay := "linuxbridge", "10.96.0"
	if ovs {
		driver, underlay = "ovs", "10.98.0"
	}
	f := newFleet(t, fleetOpts{hosts: 2, net: underlay, mtu: 1500, ovs: ovs})
	for _, h := range f.hosts {
		h.start()
	}
	h1, h2 := f.hosts[0], f.hosts[1]
	tn := f.p + "t"
	f.netdcli("-oper", "create", "-construct", "global", "-tag-type", "vxlan")
	f.netdcli("-oper", "create", "-construct", "tenant", tn)
	f.netdcli("-oper", "create", "-construct", "network", "-tenant", tn, "-driver", driver, "-subnet", "10.97.0.0/24", "n")
	f.netdcli("-oper", "create", "-construct", "policy", "-tenant", tn, "db-in")
	f.netdcli("-oper", "create", "-construct", "rule", "-tenant", tn, "-policy", "db-in", "-priority", "5", "-direction", "in",
		"-protocol", "icmp", "-action", "allow", "icmp-in")
	f.netdcli("-oper", "create", "-construct", "group", "-tenant", tn, "-net-id", "n", "web")
	f.netdcli("-oper", "create", "-construct", "group", "-tenant", tn, "-net-id", "n", "-policy", "db-in", "db")
	type ep struct {
		name, group, ip string
		h               *fleetHost
	}
	eps := []ep{{"w1", "web", "10.97.0.1", h1}, {"d1", "db", "10.97.0.2", h2}, {"d2", "db", "10.97.0.3", h1}, {"o1", "", "10.97.0.4", h2}}
	var peers []nstest.Peer
	for _, e := range eps {
		ns := nstest.NS(t, f.p+e.name)
		args := []string{"-oper", "create", "-construct", "endpoint", "-tenant", tn, "-net-id", "n", "-ip-address", e.ip,
			"-host", e.h.name, "-netns", ns}
		if e.group != "" {
			args = append(args, "-group", e.group)
		}
		f.netdcli(append(args, e.name)...)
		peers = append(peers, nstest.Peer{Name: e.name, NS: ns, IP: e.ip, Net: "n"})
	}
	f.waitUp(tn, len(eps))
	for _, p := range peers {
		nstest.ServeProbes(t, p.NS, nstest.MatrixProbes)
	}
	probes := []nstest.Probe{{Name: "tcp/80", Proto: 6, Port: 80}, {Name: "tcp/5432", Proto: 6, Port: 5432}, {Name: "icmp", Proto: 1}}
	byName := map[string]core.Endpoint{}
	oracle := func(m core.PolicyModel) func(src, dst nstest.Peer, p nstest.Probe) bool {
		for _, e := range m.Endpoints {
			byName[e.Name] = e
		}
		return func(src, dst nstest.Peer, p nstest.Probe) bool {
			return m.Verdict(byName[src.Name], byName[dst.Name], p.Proto, p.Port)
		}
	}
	var gens map[string]int64
	ovsWaitFor(t, 30*time.Second, "both hosts to report a policy generation", func() bool {
		gens = f.policyGens(tn, "db")
		return gens[h1.name] > 0 && gens[h2.name] > 0
	})
	// The oracle's first verdicts, checked by hand once: nothing reaches db on TCP.
	m := f.policyModel(tn)
	if w := oracle(m); w(peers[0], peers[1], probes[1]) || !w(peers[0], peers[1], probes[2]) || !w(peers[1], peers[0], probes[1]) {
		t.Fatalf("oracle before the rule: web->db tcp/5432 %v, icmp %v, db->web tcp/5432 %v",
			w(peers[0], peers[1], probes[1]), w(peers[0], peers[1], probes[2]), w(peers[1], peers[0], probes[1]))
	}
	nstest.Matrix(t, peers, probes, oracle(m))

	start := time.Now()
	f.netdcli("-oper", "create", "-construct", "rule", "-tenant", tn, "-policy", "db-in", "-priority", "10", "-direction", "in",
		"-from-group", "web", "-protocol", "tcp", "-port", "5432", "-action", "allow", "web-to-db")
	ovsWaitFor(t, 20*time.Second, "both hosts to report the rule's generation", func() bool {
		now := f.policyGens(tn, "db")
		return now[h1.name] > gens[h1.name] && now[h2.name] > gens[h2.name]
	})
	t.Logf("rule written to generation reported by both hosts: %v", time.Since(start).Round(time.Millisecond))
	out := f.netdcli("-oper", "get", "-construct", "group", "-tenant", tn, "db")
	if !strings.Contains(out, h1.name+": policy gen ") || !strings.Contains(out, h2.name+": policy gen ") {
		t.Fatalf("get group:\n%s", out)
	}
	m = f.policyModel(tn)
	if w := oracle(m); !w(peers[0], peers[1], probes[1]) || !w(peers[0], peers[2], probes[1]) || w(peers[3], peers[1], probes[1]) {
		t.Fatalf("oracle after the rule: web->db tcp/5432 across %v, on one host %v, none->db %v",
			w(peers[0], peers[1], probes[1]), w(peers[0], peers[2], probes[1]), w(peers[3], peers[1], probes[1]))
	}
	nstest.Matrix(t, peers, probes, oracle(m))
}
