package state_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

func parse(t *testing.T, js string) state.Document {
	t.Helper()
	d, err := state.ParseDocument(strings.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustDo(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dockerNetwork makes what `docker network create` and `docker run` make
// through the plugin: a network (or a binding to an existing one) and an
// endpoint whose address IPAM reserved first.
func dockerNetwork(t testing.TB, s *state.Store, id string, want core.Network, ep string) core.Network {
	t.Helper()
	ctx := context.Background()
	n, err := s.Docker().Bind(ctx, state.DockerNetwork{Host: "h1", ID: id, Created: time.Now()}, want)
	mustDo(t, err)
	ip, owner, err := s.Docker().ReserveIP(ctx, n.Tenant, n.Name, "", 0, 0, "h1")
	mustDo(t, err)
	_, err = s.Docker().CreateEndpoint(ctx, core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: ep, IP: ip, Host: "h1",
		DockerEndpoint: "dockerep-" + ep, NetNS: "/var/run/docker/netns/" + ep}, owner)
	mustDo(t, err)
	return n
}

func keys(t *testing.T, s *state.Store, prefix string) []string {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix+prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	mustDo(t, err)
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), state.Prefix))
	}
	return out
}

// TestApplyKeepsWhatDockerMade: a document deletes what it does not name, but
// not the networks and endpoints Docker created (nor the tenant and network
// that hold them), unless told to prune Docker's objects too.
func TestApplyKeepsWhatDockerMade(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	mustDo(t, s.CreateTenant(ctx, "red"))
	_, err := s.CreateNetwork(ctx, core.Network{Tenant: "red", Name: "r1", Subnet: "10.21.0.0/24"})
	mustDo(t, err)
	_, err = s.CreateEndpoint(ctx, core.Endpoint{Tenant: "red", Network: "r1", Name: "r1e"}, 0)
	mustDo(t, err)
	_, err = s.CreateNetwork(ctx, core.Network{Name: "web", Subnet: "10.22.0.0/24"})
	mustDo(t, err)
	_, err = s.CreateEndpoint(ctx, core.Endpoint{Network: "web", Name: "web-cli"}, 0)
	mustDo(t, err)
	// docker network create --subnet ... (no name given: provisional name), one
	// in tenant blue (-o tenant=blue), and one that joins the netdcli network web.
	dn := dockerNetwork(t, s, "d0c0000000000000000000000000000000000000000000000000000000000001", core.Network{Subnet: "10.20.0.0/24"}, "c1")
	blue := dockerNetwork(t, s, "d0c0000000000000000000000000000000000000000000000000000000000002", core.Network{Tenant: "blue", Subnet: "10.20.1.0/24"}, "c2")
	dockerNetwork(t, s, "d0c0000000000000000000000000000000000000000000000000000000000003", core.Network{Name: "web"}, "c3")

	plan, err := s.PlanApply(ctx, parse(t, `{"tenants":[]}`), state.ApplyOptions{DefaultHost: "h1"})
	mustDo(t, err)
	var lines []string
	for _, c := range plan.Changes {
		lines = append(lines, c.String())
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"keep endpoint blue/c2: created by Docker",
		"keep endpoint default/c1: created by Docker",
		"keep endpoint default/c3: created by Docker",
		"keep network blue/" + blue.Name + ": created by Docker (-prune docker deletes it)",
		"keep network default/" + dn.Name + ": created by Docker (-prune docker deletes it)",
		"keep network default/web: holds endpoints created by Docker",
		"keep tenant blue: holds networks that are kept",
		"delete endpoint default/web-cli",
		"delete endpoint red/r1e",
		"delete network red/r1",
		"delete tenant red",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("plan lacks %q:\n%s", want, got)
		}
	}
	sum, err := s.Apply(ctx, parse(t, `{"tenants":[]}`), "h1")
	mustDo(t, err)
	if sum != (state.ApplySummary{Deleted: 4, Kept: 7}) {
		t.Fatalf("summary %+v", sum)
	}
	eps, err := s.Endpoints(ctx, "", "")
	mustDo(t, err)
	if len(eps) != 3 {
		t.Fatalf("endpoints left: %+v, want Docker's c1, c2, c3", eps)
	}
	for _, e := range eps {
		if e.DockerEndpoint == "" {
			t.Fatalf("endpoint %s kept, not Docker's", e.Key())
		}
	}
	if ts, _ := s.Tenants(ctx); len(ts) != 1 || ts[0].Name != "blue" {
		t.Fatalf("tenants left %+v, want blue", ts)
	}
	if got := keys(t, s, "docker/"); len(got) != 3 {
		t.Fatalf("Docker network bindings left: %v", got)
	}

	// With -prune docker the same document leaves nothing.
	sum, err = s.ApplyWith(ctx, parse(t, `{"tenants":[]}`), state.ApplyOptions{DefaultHost: "h1", PruneDocker: true})
	mustDo(t, err)
	if sum.Deleted != 7 || sum.Kept != 0 {
		t.Fatalf("prune docker: %+v", sum)
	}
	if d := etcdtest.Dump(t, s); d != "" {
		t.Fatalf("left behind after -prune docker:\n%s", d)
	}
	checkStore(t, s)
}

// TestApplyTwiceChangesNothing: the second apply of a document writes nothing,
// including for an endpoint attached by container name, whose ID netdcli
// resolved, and for a global section equal to the stored one.
func TestApplyTwiceChangesNothing(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	d := parse(t, `{"global":{"vlans":"1-2000"},"tenants":[{"name":"blue","networks":[
	  {"name":"web","subnet":"10.5.0.0/24","gateway":"10.5.0.1","tag":50,"endpoints":[
	    {"name":"a","container":"web1"},{"name":"b","ip":"10.5.0.9","mac":"02:AA:BB:CC:DD:EE","netns":"nsb"},{"name":"c"}]},
	  {"name":"auto","driver":"macvlan","options":{"parent":"eth1","mode":"bridge"},"endpoints":[{"name":"d","host":"h2"}]}]}]}`)
	sum, err := s.Apply(ctx, d, "h1")
	mustDo(t, err)
	if sum != (state.ApplySummary{Created: 7, Updated: 1}) {
		t.Fatalf("first apply: %+v, want tenant, 2 networks, 4 endpoints and the global", sum)
	}
	// netdcli attach -container-id web1 stores the name and the resolved ID.
	full := strings.Repeat("ab", 32)
	_, err = s.Detach(ctx, "blue", "a", "")
	mustDo(t, err)
	_, err = s.Attach(ctx, "blue", "a", state.Attachment{ContainerName: "web1", ContainerID: full})
	mustDo(t, err)
	before, rev := etcdtest.Dump(t, s), revision(t, s)
	for i := 0; i < 2; i++ {
		sum, err := s.Apply(ctx, d, "h1")
		if err != nil || sum != (state.ApplySummary{}) {
			t.Fatalf("re-apply: %+v %v", sum, err)
		}
	}
	if got := revision(t, s); got != rev {
		t.Fatalf("re-applying the same document moved the revision from %d to %d:\n%s", rev, got, etcdtest.Dump(t, s))
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("re-apply changed the store")
	}
	a, _, err := s.GetEndpoint(ctx, "blue", "a")
	if err != nil || a.ContainerID != full {
		t.Fatalf("endpoint a = %+v, %v: the resolved container ID must stay", a, err)
	}
}

// TestApplyDryRunChangesNothing: the plan names every change, with the
// addresses and tags the apply would allocate, and writes nothing.
func TestApplyDryRunChangesNothing(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	mustDo(t, s.CreateTenant(ctx, "old"))
	_, err := s.Apply(ctx, parse(t, `{"tenants":[{"name":"old","networks":[{"name":"gone","subnet":"10.7.0.0/24","endpoints":[{"name":"x"}]}]},
	  {"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24","endpoints":[{"name":"a","netns":"ns1"}]}]}]}`), "h1")
	mustDo(t, err)
	before, rev := etcdtest.Dump(t, s), revision(t, s)
	d := parse(t, `{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24","endpoints":[
	  {"name":"a","netns":"ns2"},{"name":"b"}]},{"name":"db","tag":300,"endpoints":[{"name":"c","ip":"10.100.0.7"}]}]}]}`)
	p, err := s.PlanApply(ctx, d, state.ApplyOptions{DefaultHost: "h1"})
	mustDo(t, err)
	var lines []string
	for _, c := range p.Changes {
		lines = append(lines, c.String())
	}
	want := []string{
		"delete endpoint old/x: network gone, 10.7.0.1, host h1",
		"delete network old/gone: linuxbridge, vlan 1, 10.7.0.0/24",
		"delete tenant old",
		"create network blue/db: linuxbridge, vlan 300, 10.100.0.0/24 gw 10.100.0.1",
		"update endpoint blue/a: attach netns ns1 -> netns ns2",
		"create endpoint blue/b: network web, 10.5.0.2, host h1, not attached",
		"create endpoint blue/c: network db, 10.100.0.7, host h1, not attached",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("plan:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if p.ApplySummary != (state.ApplySummary{Created: 3, Updated: 1, Deleted: 3}) {
		t.Fatalf("summary %+v", p.ApplySummary)
	}
	if etcdtest.Dump(t, s) != before || revision(t, s) != rev {
		t.Fatal("dry run changed the store")
	}
	// The apply does what the plan said.
	mustDo(t, func() error { _, err := s.Apply(ctx, d, "h1"); return err }())
	b, _, err := s.GetEndpoint(ctx, "blue", "b")
	if err != nil || b.IP != "10.5.0.2" {
		t.Fatalf("b = %+v, %v", b, err)
	}
}

// TestApplyMovesHostOnRoutedNetwork: a document that changes an endpoint's host
// on an ipvlan l3 network gives it an address of the new host's block, in the
// transaction that frees its old one; an address outside that block is refused.
func TestApplyMovesHostOnRoutedNetwork(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	doc := func(host, ip string) state.Document {
		ipField := ""
		if ip != "" {
			ipField = fmt.Sprintf(`,"ip":%q`, ip)
		}
		return parse(t, fmt.Sprintf(`{"tenants":[{"name":"default","networks":[{"name":"r","driver":"ipvlan","subnet":"10.8.0.0/24",
		  "options":{"mode":"l3","parent":"eth9"},"endpoints":[{"name":"stay","host":"h1"},{"name":"m","host":%q%s}]}]}]}`, host, ipField))
	}
	_, err := s.Apply(ctx, doc("h1", ""), "h1")
	mustDo(t, err)
	m, _, _ := s.GetEndpoint(ctx, "default", "m")
	if m.IP != "10.8.0.2" {
		t.Fatalf("m = %s, want 10.8.0.2 in h1's block", m.IP)
	}
	before := etcdtest.Dump(t, s)
	_, err = s.Apply(ctx, doc("h2", "10.8.0.2"), "h1")
	if !errors.Is(err, core.ErrInvalid) || !strings.Contains(err.Error(), "IP 10.8.0.2 is outside 10.8.0.16/28, the block of host h2") {
		t.Fatalf("old IP kept on the new host: got %v", err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("refused document changed the store")
	}
	p, err := s.PlanApply(ctx, doc("h2", ""), state.ApplyOptions{DefaultHost: "h1"})
	mustDo(t, err)
	if len(p.Changes) != 1 || p.Changes[0].String() != "update endpoint default/m: host h1 -> h2, ip 10.8.0.2 -> 10.8.0.17" {
		t.Fatalf("plan %+v", p.Changes)
	}
	rev := revision(t, s)
	_, err = s.Apply(ctx, doc("h2", ""), "h1")
	mustDo(t, err)
	m, _, _ = s.GetEndpoint(ctx, "default", "m")
	if m.IP != "10.8.0.17" || m.Host != "h2" {
		t.Fatalf("moved m = %+v", m)
	}
	if got := allocIPs(t, s, "default", "r"); len(got) != 2 || got["10.8.0.17"] != "m" || got["10.8.0.1"] != "stay" {
		t.Fatalf("allocations %v: the old address must be free", got)
	}
	// Journal, one batch (block of h2, both addresses, the endpoint), done.
	if got := revision(t, s) - rev; got != 3 {
		t.Fatalf("the move took %d transactions, want 3 (journal, one batch, end)", got)
	}
	// Back with an explicit address inside h1's block.
	_, err = s.Apply(ctx, doc("h1", "10.8.0.9"), "h1")
	mustDo(t, err)
	if got := allocIPs(t, s, "default", "r"); len(got) != 2 || got["10.8.0.9"] != "m" {
		t.Fatalf("allocations after moving back %v", got)
	}
	checkStore(t, s)
}

// TestAutoSubnetPastABigNetwork: an automatic subnet is found in one step past
// a network that covers most of the pool (the fuzzer found a document whose
// plan took 83 s, trying every /30 under a /2).
func TestAutoSubnetPastABigNetwork(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	_, err := s.SetGlobal(ctx, core.Global{SubnetPool: "0.0.0.0/1", SubnetLen: 30})
	mustDo(t, err)
	start := time.Now()
	_, err = s.CreateNetwork(ctx, core.Network{Name: "big", Subnet: "0.0.0.0/2"})
	mustDo(t, err)
	n, err := s.CreateNetwork(ctx, core.Network{Name: "auto"})
	mustDo(t, err)
	if n.Subnet != "64.0.0.0/30" {
		t.Fatalf("auto subnet %s, want 64.0.0.0/30, the first past 0.0.0.0/2", n.Subnet)
	}
	_, err = s.Apply(ctx, parse(t, `{"tenants":[{"name":"default","networks":[{"name":"big"},{"name":"auto"},{"name":"auto2"}]}]}`), "h1")
	mustDo(t, err)
	a2, _, err := s.GetNetwork(ctx, "default", "auto2")
	if err != nil || a2.Subnet != "64.0.0.4/30" {
		t.Fatalf("auto2 = %+v, %v", a2, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s", d)
	}
}
