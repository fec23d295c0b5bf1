package state

import (
	"bytes"
	"errors"
	"maps"
	"net"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
)

// The -cfg planner is a pure function of a document and a snapshot, so it is
// fuzzed without etcd: whatever the document, the planner never panics, a
// refusal is one line of a known kind, and an accepted plan, replayed key by
// key, only writes over the state it expects, stays within etcd's limits and
// leaves a consistent store that the same document no longer changes.

var seedDocs = []string{
	`{"tenants":[]}`,
	`{"global":{"vlans":"10-20","subnetPool":"10.200.0.0/16","subnetLen":26},"tenants":[{"name":"blue","networks":[{"name":"a","endpoints":[{"name":"x"},{"name":"y","ip":"10.200.0.9"}]}]}]}`,
	`{"tenants":[{"name":"default","networks":[{"name":"web","subnet":"10.5.0.0/24","gateway":"10.5.0.1","tag":50,"endpoints":[{"name":"a","netns":"nsa"},{"name":"b","ip":"10.5.0.9","mac":"02:00:00:00:00:01"}]}]}]}`,
	`{"tenants":[{"name":"default","networks":[{"name":"r","driver":"ipvlan","subnet":"10.8.0.0/24","options":{"mode":"l3","parent":"eth9"},"endpoints":[{"name":"m","host":"h2"},{"name":"n","host":"h1","ip":"10.8.0.5"}]}]}]}`,
	`{"tenants":[{"name":"default","networks":[{"name":"web","endpoints":[{"name":"a","container":"c1"},{"name":"a"}]}]}]}`,
	`{"tenants":[{"name":"t","networks":[{"name":"x","tagType":"vxlan","tag":16777215},{"name":"y","subnet":"10.5.0.128/25"}]}]}`,
	`{"tenants":[{"name":"default","networks":[{"name":"docker-d0c000000001","endpoints":[{"name":"c1"}]},{"name":"web","subnet":"10.5.0.0/24"}]}]}`,
	`{"tenants":[{"name":"default","networks":[{"name":"web","subnet":"10.5.0.0/24","endpoints":[{"name":"a","ip":"10.5.0.1 "},{"name":"b","ip":"10.5.0.255"}]}]}]}`,
	`{"tenants":[{"name":"default","networks":[{"name":"r","driver":"ipvlan","subnet":"10.8.0.0/24","options":{"mode":"l3","host-prefix":"30"},"endpoints":[{"name":"m","host":"h1"},{"name":"p","host":"h1"},{"name":"q","host":"h1"}]}]}]}`,
	`{"global":{"subnetLen":30},"tenants":[{"name":"a","networks":[{"name":"n","endpoints":[{"name":"e1"},{"name":"e2"},{"name":"e3"}]}]}]}`,
}

// fuzzBase is a store as a -cfg apply and Docker leave it: a document's
// objects, a Docker network with an endpoint and a pending IPAM reservation.
func fuzzBase(t testing.TB) *snapshot {
	snap := &snapshot{rev: 1, kvs: map[string]snapKV{}}
	d, err := ParseDocument(strings.NewReader(seedDocs[2]))
	if err != nil {
		t.Fatal(err)
	}
	p, err := planDocument(snap, d, ApplyOptions{DefaultHost: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	replay(snap, p.batches)
	r, err := ParseDocument(strings.NewReader(seedDocs[3]))
	if err != nil {
		t.Fatal(err)
	}
	d.Tenants[0].Networks = append(d.Tenants[0].Networks, r.Tenants[0].Networks...)
	if p, err = planDocument(snap, d, ApplyOptions{DefaultHost: "h1"}); err != nil {
		t.Fatal(err)
	}
	replay(snap, p.batches)
	dn := core.Network{Tenant: "default", Name: "docker-d0c000000001", Driver: "linuxbridge", Encap: "vlan", Tag: 7, TagAuto: true,
		Subnet: "10.20.0.0/24", Gateway: "10.20.0.1", CreatedBy: "docker"}
	de := core.Endpoint{Tenant: "default", Network: dn.Name, Name: "c1", IP: "10.20.0.2", MAC: "02:00:00:00:00:09", Host: "h1",
		NetNS: "/var/run/docker/netns/abc", DockerEndpoint: "e0"}
	held := heldValue("h1", "e9")
	for k, v := range map[string]string{
		networkKey(dn.Tenant, dn.Name):                    mustJSON(dn),
		tagKey("vlan", 7):                                 dn.Key(),
		endpointKey(de.Tenant, de.Name):                   mustJSON(de),
		ipKey(dn.Tenant, dn.Name, de.IP):                  de.Name,
		ipKey(dn.Tenant, dn.Name, "10.20.0.3"):            "pending:h1:1",
		dockerKey("h1", "d0c000000001"):                   mustJSON(DockerNetwork{Host: "h1", ID: "d0c000000001", Tenant: dn.Tenant, Network: dn.Name}),
		userKey(dn.Tenant, dn.Name, "h1", "d0c000000001"): mustJSON(networkUser{Aux: []string{"10.20.0.4"}}),
		ipKey(dn.Tenant, dn.Name, "10.20.0.4"):            auxValue,
		userKey("default", "web", "h1", "d0c000000002"):   "{}",
		ipKey("default", "web", "10.5.0.202"):             held,
		ipKey("default", "web", "10.5.0.200"):             "pending:h1:2",
		dockerKey("h1", "d0c000000002"):                   mustJSON(DockerNetwork{Host: "h1", ID: "d0c000000002", Tenant: "default", Network: "web"}),
		endpointKey("default", "dweb"):                    mustJSON(core.Endpoint{Tenant: "default", Network: "web", Name: "dweb", IP: "10.5.0.201", MAC: "02:00:00:00:00:0a", Host: "h1", DockerEndpoint: "e1"}),
		ipKey("default", "web", "10.5.0.201"):             "dweb",
		tenantKey("blue"):                                 mustJSON(core.Tenant{Name: "blue"}),
		networkKey("blue", "docker-d0c000000003"):         mustJSON(core.Network{Tenant: "blue", Name: "docker-d0c000000003", Driver: "linuxbridge", Encap: "vlan", Tag: 8, Subnet: "10.20.1.0/24", CreatedBy: "docker"}),
		tagKey("vlan", 8):                                 "blue/docker-d0c000000003",
		blockKey("default", "r", "10.8.0.32"):             "h3",
		ipKey("default", "r", "10.8.0.33"):                "pending:h3:1",
		// The index copies every writer keeps with the records above.
		netEndpointKey(de.Tenant, de.Network, de.Name):            mustJSON(de),
		hostEndpointKey(de.Host, de.Tenant, de.Name):              mustJSON(de),
		netEndpointKey("default", "web", "dweb"):                  mustJSON(core.Endpoint{Tenant: "default", Network: "web", Name: "dweb", IP: "10.5.0.201", MAC: "02:00:00:00:00:0a", Host: "h1", DockerEndpoint: "e1"}),
		hostEndpointKey("h1", "default", "dweb"):                  mustJSON(core.Endpoint{Tenant: "default", Network: "web", Name: "dweb", IP: "10.5.0.201", MAC: "02:00:00:00:00:0a", Host: "h1", DockerEndpoint: "e1"}),
		hostReservationKey("h1", dn.Tenant, dn.Name, "10.20.0.3"): "pending:h1:1",
		hostReservationKey("h1", "default", "web", "10.5.0.202"):  held,
		hostReservationKey("h1", "default", "web", "10.5.0.200"):  "pending:h1:2",
		hostReservationKey("h3", "default", "r", "10.8.0.33"):     "pending:h3:1",
		networkKey("default", "empty"):                            mustJSON(core.Network{Tenant: "default", Name: "empty", Driver: "macvlan", Encap: "vlan", Tag: 9, Subnet: "10.30.0.0/24", Options: map[string]string{"parent": "eth1"}}),
		tagKey("vlan", 9):                                         "default/empty",
	} {
		snap.kvs[k] = snapKV{val: v, rev: 2}
	}
	return snap
}

func FuzzPlanDocument(f *testing.F) {
	for _, d := range seedDocs {
		f.Add([]byte(d), false)
		f.Add([]byte(d), true)
	}
	bases := []*snapshot{{rev: 1, kvs: map[string]snapKV{}}, fuzzBase(f)}
	f.Fuzz(func(t *testing.T, b []byte, prune bool) {
		d, err := ParseDocument(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, core.ErrInvalid) {
				t.Fatalf("parse error of no kind: %v", err)
			}
			return
		}
		o := ApplyOptions{DefaultHost: "h1", PruneDocker: prune}
		for _, base := range bases {
			snap := &snapshot{rev: base.rev, kvs: maps.Clone(base.kvs)}
			p, err := planDocument(snap, d, o)
			if err != nil {
				if strings.Contains(err.Error(), "\n") || !isKnownRefusal(err) {
					t.Fatalf("refusal %q: want one line of a known kind", err)
				}
				continue
			}
			checkReplay(t, snap, p.batches)
			checkStore(t, snap)
			again, err := planDocument(snap, d, o)
			if err != nil {
				t.Fatalf("the document, applied, is refused against its own result: %v", err)
			}
			if len(again.batches) != 0 {
				t.Fatalf("applying the document twice changes %v", again.changes)
			}
		}
	})
}

func isKnownRefusal(err error) bool {
	for _, k := range []error{core.ErrInvalid, core.ErrInUse, core.ErrExists, core.ErrNotFound} {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

// checkReplay writes the batches into snap key by key, checking each op's
// precondition against what the keys hold at that point, as etcd would.
func checkReplay(t *testing.T, snap *snapshot, batches [][]journalOp) {
	t.Helper()
	for i, b := range batches {
		writes, cmps := 0, 0
		seen := map[string]bool{}
		for _, op := range b {
			cmps++
			kv, ok := snap.kvs[op.Key]
			switch {
			case !op.Had && ok, op.Had && !ok:
				t.Fatalf("batch %d: %s exists=%v, planned %v", i, op.Key, ok, op.Had)
			case op.Had && op.Rev > 0 && kv.rev != op.Rev, op.Had && op.Rev == 0 && kv.val != op.Old:
				t.Fatalf("batch %d: %s not as planned", i, op.Key)
			}
			if op.Guard {
				continue
			}
			writes++
			if seen[op.Key] {
				t.Fatalf("batch %d writes %s twice", i, op.Key)
			}
			seen[op.Key] = true
		}
		if writes+1 > maxTxnOps || cmps+1 > maxTxnOps {
			t.Fatalf("batch %d: %d writes, %d compares: over etcd's %d", i, writes, cmps, maxTxnOps)
		}
		snap.rev++
		for _, op := range b {
			switch {
			case op.Guard:
			case op.Del:
				delete(snap.kvs, op.Key)
			default:
				snap.kvs[op.Key] = snapKV{val: op.Val, rev: snap.rev}
			}
		}
	}
}

// checkStore checks that nothing is allocated twice or leaked, and that the
// index copies and the allocator's hint are as the records say.
func checkStore(t *testing.T, snap *snapshot) {
	t.Helper()
	kvs := map[string]string{}
	for k, kv := range snap.kvs {
		kvs[k] = kv.val
	}
	if p := storeProblems(kvs); len(p) > 0 {
		t.Fatalf("the plan left a store whose indexes disagree:\n%s", strings.Join(p, "\n"))
	}
	v, err := decodeSnapshot(snap)
	if err != nil {
		t.Fatalf("the plan left an undecodable store: %v", err)
	}
	for _, e := range v.eps {
		n, ok := v.nets[e.NetworkKey()]
		if !ok {
			t.Fatalf("endpoint %s on missing network", e.Key())
		}
		if !v.tenants[e.Tenant] {
			t.Fatalf("endpoint %s of missing tenant", e.Key())
		}
		if v.ips[e.NetworkKey()][e.IP] != e.Name {
			t.Fatalf("endpoint %s: IP %s allocated to %q", e.Key(), e.IP, v.ips[e.NetworkKey()][e.IP])
		}
		if err := core.ValidateEndpointIP(n, e.IP); err != nil {
			t.Fatalf("endpoint %s: %v", e.Key(), err)
		}
		if blen, routed := n.HostBlockLen(); routed {
			inside := false
			for base, h := range v.blocks[n.Key()] {
				blk := &net.IPNet{IP: net.ParseIP(base).To4(), Mask: net.CIDRMask(blen, 32)}
				inside = inside || (h == e.Host && blk.Contains(net.ParseIP(e.IP)))
			}
			if !inside {
				t.Fatalf("endpoint %s: %s is outside the block of its host %s", e.Key(), e.IP, e.Host)
			}
		}
		if _, err := net.ParseMAC(e.MAC); err != nil {
			t.Fatalf("endpoint %s: MAC %q", e.Key(), e.MAC)
		}
	}
	for nk, ips := range v.ips {
		if _, ok := v.nets[nk]; !ok {
			t.Fatalf("addresses of missing network %s: %v", nk, ips)
		}
		for ip, owner := range ips {
			tenant, network, _ := strings.Cut(nk, "/")
			if e, ok := v.eps[tenant+"/"+owner]; ok && e.Network == network && e.IP == ip {
				continue
			}
			if !strings.HasPrefix(owner, pendingPrefix) && !strings.HasPrefix(owner, heldPrefix) && !IsAux(owner) {
				t.Fatalf("address %s of %s held by %q, no endpoint", ip, nk, owner)
			}
		}
	}
	byTag := map[string]string{}
	for _, n := range v.nets {
		tk := tagKey(n.Encap, n.Tag)
		if v.tags[tk] != n.Key() {
			t.Fatalf("network %s: its tag key holds %q", n.Key(), v.tags[tk])
		}
		if other, ok := byTag[tk]; ok {
			t.Fatalf("networks %s and %s share %s", other, n.Key(), tk)
		}
		byTag[tk] = n.Key()
		if !v.tenants[n.Tenant] {
			t.Fatalf("network %s of missing tenant", n.Key())
		}
		if err := core.ValidateNetwork(n); err != nil {
			t.Fatalf("network %s: %v", n.Key(), err)
		}
		for _, o := range v.nets {
			if o.Key() != n.Key() && o.Tenant == n.Tenant && core.Overlaps(mustCIDR(o.Subnet), mustCIDR(n.Subnet)) {
				t.Fatalf("networks %s and %s overlap", n.Key(), o.Key())
			}
		}
	}
	if len(v.tags) != len(v.nets) {
		t.Fatalf("%d tag keys for %d networks", len(v.tags), len(v.nets))
	}
	for nk := range v.blocks {
		if _, ok := v.nets[nk]; !ok {
			t.Fatalf("blocks of missing network %s", nk)
		}
	}
}

// FuzzPlanFields fuzzes the values of a document rather than its syntax:
// names, subnets, tags, addresses and hosts of networks both new and already
// in the store (routed ones included, so that hosts move between blocks).
func FuzzPlanFields(f *testing.F) {
	f.Add("n1", "10.9.0.0/24", 0, "10.9.0.5", "h1", "10.9.0.0/25", 100, "10.8.0.5", "h2", uint8(0))
	f.Add("n1", "", 5, "", "h2", "", 0, "10.8.0.17", "h2", uint8(1))
	f.Add("r", "10.8.0.0/24", 0, "10.8.0.2", "h3", "10.5.0.0/24", 50, "10.5.0.9", "", uint8(7))
	f.Add("web", "10.5.0.0/24", 50, "10.5.0.200", "h1", "10.20.0.0/24", 7, "10.20.0.3", "h1", uint8(2))
	f.Add("x", "10.255.255.252/30", 4094, "10.255.255.253", "h1", "10.0.0.0/8", 1, "10.0.0.1", "h9", uint8(5))
	base := fuzzBase(f)
	f.Fuzz(func(t *testing.T, name1, subnet1 string, tag1 int, ip1, host1, subnet2 string, tag2 int, ip2, host2 string, mode uint8) {
		d := fieldsDoc(name1, subnet1, tag1, ip1, host1, subnet2, tag2, ip2, host2, mode)
		for _, prune := range []bool{false, true} {
			o := ApplyOptions{DefaultHost: "h1", PruneDocker: prune}
			snap := &snapshot{rev: base.rev, kvs: maps.Clone(base.kvs)}
			p, err := planDocument(snap, d, o)
			if err != nil {
				if strings.Contains(err.Error(), "\n") || !isKnownRefusal(err) {
					t.Fatalf("refusal %q: want one line of a known kind", err)
				}
				continue
			}
			checkReplay(t, snap, p.batches)
			checkStore(t, snap)
			again, err := planDocument(snap, d, o)
			if err != nil {
				t.Fatalf("the document, applied, is refused against its own result: %v", err)
			}
			if len(again.batches) != 0 {
				t.Fatalf("applying the document twice changes %v", again.changes)
			}
		}
	})
}

// fieldsDoc builds FuzzPlanFields' document from its values.
func fieldsDoc(name1, subnet1 string, tag1 int, ip1, host1, subnet2 string, tag2 int, ip2, host2 string, mode uint8) Document {
	n1 := NetworkDocument{Name: name1, Subnet: subnet1, Tag: tag1, Endpoints: []EndpointDocument{
		{Name: "e1", IP: ip1, Host: host1}, {Name: "e2", Host: host2}}}
	if mode&1 != 0 {
		n1.Driver, n1.Options = "ipvlan", map[string]string{"mode": "l3", "parent": "eth9"}
	}
	if mode&2 != 0 {
		n1.TagType = "vxlan"
	}
	n2 := NetworkDocument{Name: "n2", Subnet: subnet2, Tag: tag2, Endpoints: []EndpointDocument{{Name: "e3", IP: ip2, Host: host2}}}
	routed := NetworkDocument{Name: "r", Endpoints: []EndpointDocument{{Name: "m", Host: host2}, {Name: "n", Host: host1, IP: ip2}}}
	web := NetworkDocument{Name: "web", Endpoints: []EndpointDocument{{Name: "a", Host: host1, NetNS: "nsa"}, {Name: "b", IP: ip1}}}
	var d Document
	switch mode >> 2 % 4 {
	case 0:
		d.Tenants = []TenantDocument{{Name: "default", Networks: []NetworkDocument{n1, n2, routed, web}}}
	case 1:
		d.Tenants = []TenantDocument{{Name: "default", Networks: []NetworkDocument{routed}}, {Name: "t2", Networks: []NetworkDocument{n1, n2}}}
	case 2:
		d.Tenants = []TenantDocument{{Name: "default", Networks: []NetworkDocument{web, n1}}}
		d.Global = &core.Global{SubnetPool: subnet2, SubnetLen: tag2 % 40}
	default:
		d.Tenants = []TenantDocument{{Name: "blue", Networks: []NetworkDocument{n2, routed}}, {Name: "default", Networks: []NetworkDocument{n1}}}
	}
	return d
}
