package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Document is a whole desired state, as `netdcli -cfg FILE` applies it.
type Document struct {
	Global  *core.Global     `json:"global,omitempty"`
	Tenants []TenantDocument `json:"tenants"`
}

// TenantDocument is one tenant and its networks.
type TenantDocument struct {
	Name     string            `json:"name"`
	Networks []NetworkDocument `json:"networks"`
}

// NetworkDocument is one network and its endpoints; empty fields are allocated.
type NetworkDocument struct {
	Name      string             `json:"name"`
	Driver    string             `json:"driver,omitempty"`
	TagType   string             `json:"tagType,omitempty"`
	Tag       int                `json:"tag,omitempty"`
	Subnet    string             `json:"subnet,omitempty"`
	Gateway   string             `json:"gateway,omitempty"`
	Options   map[string]string  `json:"options,omitempty"`
	Endpoints []EndpointDocument `json:"endpoints"`
}

// EndpointDocument is one endpoint; Container or NetNS attaches it.
type EndpointDocument struct {
	Name      string `json:"name"`
	IP        string `json:"ip,omitempty"`
	MAC       string `json:"mac,omitempty"`
	Host      string `json:"host,omitempty"`
	Container string `json:"container,omitempty"`
	NetNS     string `json:"netns,omitempty"`
}

// ParseDocument reads a document, refusing unknown fields so that a misspelt key
// is an error rather than a silently ignored setting.
func ParseDocument(r io.Reader) (Document, error) {
	var d Document
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return d, fmt.Errorf("%w: config document: %w", core.ErrInvalid, err)
	}
	return d, nil
}

// ApplySummary counts what an apply changed.
type ApplySummary struct {
	Created, Updated, Deleted int
}

// Apply makes the store equal to the document: objects absent from it are
// deleted, new ones created, attachments updated. Everything is validated against
// the current store before the first write, so a bad document changes nothing.
// defaultHost is the host of endpoints that name none.
func (s *Store) Apply(ctx context.Context, d Document, defaultHost string) (ApplySummary, error) {
	var sum ApplySummary
	plan, err := s.planApply(ctx, d, defaultHost)
	if err != nil {
		return sum, err
	}
	if d.Global != nil {
		if _, err := s.SetGlobal(ctx, *d.Global); err != nil {
			return sum, err
		}
	}
	deleted, err := s.deleteEndpoints(ctx, plan.delEPs, plan.epRev)
	sum.Deleted += deleted
	if err != nil {
		return sum, err
	}
	for _, n := range plan.delNets {
		if err := s.DeleteNetwork(ctx, n.Tenant, n.Name); err != nil {
			return sum, err
		}
		sum.Deleted++
	}
	for _, t := range plan.delTenants {
		if err := s.DeleteTenant(ctx, t); err != nil {
			return sum, err
		}
		sum.Deleted++
	}
	for _, t := range plan.newTenants {
		if err := s.CreateTenant(ctx, t); err != nil {
			return sum, err
		}
		sum.Created++
	}
	for _, n := range plan.newNets {
		if _, err := s.CreateNetwork(ctx, n); err != nil {
			return sum, err
		}
		sum.Created++
	}
	created, err := s.createEndpoints(ctx, plan.newEPs)
	sum.Created += created
	if err != nil {
		return sum, err
	}
	for _, u := range plan.updEPs {
		if err := s.putEndpoint(ctx, u.ep, u.rev); err != nil {
			return sum, err
		}
		sum.Updated++
	}
	return sum, nil
}

type epUpdate struct {
	ep  core.Endpoint
	rev int64
}

type applyPlan struct {
	delEPs     []core.Endpoint
	epRev      map[string]int64 // mod revisions of the endpoints read
	delNets    []core.Network
	delTenants []string
	newTenants []string
	newNets    []core.Network
	newEPs     []core.Endpoint
	updEPs     []epUpdate
}

func (s *Store) planApply(ctx context.Context, d Document, defaultHost string) (applyPlan, error) {
	var p applyPlan
	g, _, err := s.Global(ctx)
	if err != nil {
		return p, err
	}
	if d.Global != nil {
		// The document's networks are created after its global is written,
		// so they are checked against the merged one (its default tag type).
		g = mergeGlobal(g, *d.Global)
		if err := core.ValidateGlobal(g); err != nil {
			return p, err
		}
	}
	tenants, err := s.Tenants(ctx)
	if err != nil {
		return p, err
	}
	nets, err := s.Networks(ctx, "")
	if err != nil {
		return p, err
	}
	r, err := s.get(ctx, endpointPrefix, clientv3.WithPrefix())
	if err != nil {
		return p, err
	}
	curEPs := map[string]core.Endpoint{}
	curRev := map[string]int64{}
	for _, kv := range r.Kvs {
		var e core.Endpoint
		if err := json.Unmarshal(kv.Value, &e); err != nil {
			return p, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		curEPs[e.Key()], curRev[e.Key()] = e, kv.ModRevision
	}
	curNets := map[string]core.Network{}
	for _, n := range nets {
		curNets[n.Key()] = n
	}
	curTenants := map[string]bool{core.DefaultTenant: true}
	for _, t := range tenants {
		curTenants[t.Name] = true
	}

	wantTenants := map[string]bool{core.DefaultTenant: true}
	wantNets := map[string]bool{}
	wantEPs := map[string]bool{}
	tags := map[string]string{} // encap/tag -> network key, for tags named in the document
	ips := map[string]string{}  // net/ip -> endpoint
	var keptNets []core.Network // networks that exist after the apply, for overlap checks
	for _, td := range d.Tenants {
		if err := core.ValidName("tenant", td.Name); err != nil {
			return p, err
		}
		if wantTenants[td.Name] && td.Name != core.DefaultTenant {
			return p, fmt.Errorf("%w: tenant %q appears twice", core.ErrInvalid, td.Name)
		}
		wantTenants[td.Name] = true
		if !curTenants[td.Name] {
			p.newTenants = append(p.newTenants, td.Name)
		}
		for _, nd := range td.Networks {
			n := core.Network{Tenant: td.Name, Name: nd.Name, Driver: nd.Driver, Encap: nd.TagType, Tag: nd.Tag,
				Subnet: nd.Subnet, Gateway: nd.Gateway, Options: nd.Options}
			if err := core.ValidName("network", n.Name); err != nil {
				return p, err
			}
			if wantNets[n.Key()] {
				return p, fmt.Errorf("%w: network %s appears twice", core.ErrInvalid, n.Key())
			}
			wantNets[n.Key()] = true
			full, err := completeForCheck(n, g)
			if err != nil {
				return p, fmt.Errorf("network %s: %w", n.Key(), err)
			}
			if cur, ok := curNets[n.Key()]; ok {
				if err := sameNetwork(cur, n); err != nil {
					return p, err
				}
				full = cur
			} else {
				p.newNets = append(p.newNets, n)
			}
			if n.Tag != 0 {
				tk := full.Encap + "/" + fmt.Sprint(n.Tag)
				if other, ok := tags[tk]; ok {
					return p, fmt.Errorf("%w: %s tag %d named by both %s and %s", core.ErrInUse, full.Encap, n.Tag, other, n.Key())
				}
				tags[tk] = n.Key()
			}
			if full.Subnet != "" {
				keptNets = append(keptNets, full)
			}
			for _, ed := range nd.Endpoints {
				e := core.Endpoint{Tenant: td.Name, Network: nd.Name, Name: ed.Name, IP: ed.IP, MAC: ed.MAC,
					Host: ed.Host, ContainerName: ed.Container, ContainerID: ed.Container, NetNS: ed.NetNS}
				if e.Host == "" {
					e.Host = defaultHost
				}
				if err := core.ValidName("endpoint", e.Name); err != nil {
					return p, err
				}
				if wantEPs[e.Key()] {
					return p, fmt.Errorf("%w: endpoint %s appears twice in tenant %s", core.ErrInvalid, e.Name, e.Tenant)
				}
				wantEPs[e.Key()] = true
				if e.IP != "" && full.Subnet != "" {
					if err := core.ValidateEndpointIP(full, e.IP); err != nil {
						return p, err
					}
					ik := n.Key() + "/" + net.ParseIP(e.IP).String()
					if other, ok := ips[ik]; ok {
						return p, fmt.Errorf("%w: IP %s named by both %s and %s", core.ErrInUse, e.IP, other, e.Name)
					}
					ips[ik] = e.Name
				}
				if cur, ok := curEPs[e.Key()]; ok {
					if cur.Network != e.Network || (e.IP != "" && e.IP != cur.IP) || (e.MAC != "" && e.MAC != cur.MAC) {
						return p, fmt.Errorf("%w: endpoint %s: network, IP and MAC cannot change; delete it first", core.ErrInvalid, e.Key())
					}
					if cur.ContainerID != e.ContainerID || cur.NetNS != e.NetNS || cur.Host != e.Host {
						upd := cur
						upd.ContainerName, upd.ContainerID, upd.NetNS, upd.Host = e.ContainerName, e.ContainerID, e.NetNS, e.Host
						p.updEPs = append(p.updEPs, epUpdate{upd, curRev[e.Key()]})
					}
					continue
				}
				p.newEPs = append(p.newEPs, e)
			}
		}
	}
	// IPs held by endpoints that stay but that the document names for a new endpoint.
	for k, e := range curEPs {
		if !wantEPs[k] {
			p.delEPs = append(p.delEPs, e)
			if p.epRev == nil {
				p.epRev = map[string]int64{}
			}
			p.epRev[k] = curRev[k]
			continue
		}
		if other, ok := ips[e.NetworkKey()+"/"+e.IP]; ok && other != e.Name {
			return p, fmt.Errorf("%w: IP %s is already used by endpoint %s", core.ErrInUse, e.IP, e.Name)
		}
	}
	for k, n := range curNets {
		if !wantNets[k] {
			p.delNets = append(p.delNets, n)
			continue
		}
		if other, ok := tags[n.Encap+"/"+fmt.Sprint(n.Tag)]; ok && other != k {
			return p, fmt.Errorf("%w: %s tag %d is taken by network %s", core.ErrInUse, n.Encap, n.Tag, k)
		}
	}
	for t := range curTenants {
		if !wantTenants[t] {
			p.delTenants = append(p.delTenants, t)
		}
	}
	for i := range keptNets {
		for j := i + 1; j < len(keptNets); j++ {
			a, b := keptNets[i], keptNets[j]
			if a.Tenant == b.Tenant && core.Overlaps(mustCIDR(a.Subnet), mustCIDR(b.Subnet)) {
				return p, fmt.Errorf("%w: subnet %s of %s overlaps %s of %s", core.ErrInUse, a.Subnet, a.Key(), b.Subnet, b.Key())
			}
		}
	}
	sort.Slice(p.delEPs, func(i, j int) bool { return p.delEPs[i].Key() < p.delEPs[j].Key() })
	sort.Slice(p.delNets, func(i, j int) bool { return p.delNets[i].Key() < p.delNets[j].Key() })
	sort.Strings(p.delTenants)
	return p, nil
}

func mergeGlobal(g, upd core.Global) core.Global {
	if upd.VLANs != "" {
		g.VLANs = upd.VLANs
	}
	if upd.VXLANs != "" {
		g.VXLANs = upd.VXLANs
	}
	if upd.DefaultDriver != "" {
		g.DefaultDriver = upd.DefaultDriver
	}
	if upd.DefaultTagType != "" {
		g.DefaultTagType = upd.DefaultTagType
	}
	if upd.SubnetPool != "" {
		g.SubnetPool = upd.SubnetPool
	}
	if upd.SubnetLen != 0 {
		g.SubnetLen = upd.SubnetLen
	}
	return g
}

// completeForCheck fills what validation needs (allocation happens at create).
func completeForCheck(n core.Network, g core.Global) (core.Network, error) {
	if n.Driver == "" {
		n.Driver = g.DefaultDriver
	}
	n.Encap = g.TagType(n.Encap)
	if n.Subnet == "" {
		if n.Gateway != "" {
			return n, fmt.Errorf("%w: gateway needs a subnet", core.ErrInvalid)
		}
		return n, nil // auto subnet: checked when allocated
	}
	tag := n.Tag
	if tag == 0 {
		n.Tag = 1 // placeholder so that ValidateNetwork checks the rest
	}
	if err := core.ValidateNetwork(n); err != nil {
		return n, err
	}
	n.Tag = tag
	sn, _ := core.ParseCIDR(n.Subnet)
	n.Subnet = sn.String()
	return n, nil
}

func sameNetwork(cur, want core.Network) error {
	bad := func(what string) error {
		return fmt.Errorf("%w: network %s: %s cannot change; delete the network first", core.ErrInvalid, cur.Key(), what)
	}
	switch {
	case want.Subnet != "" && mustCIDR(want.Subnet).String() != cur.Subnet:
		return bad("subnet")
	case want.Gateway != "" && want.Gateway != cur.Gateway:
		return bad("gateway")
	case want.Tag != 0 && want.Tag != cur.Tag:
		return bad("tag")
	case want.Encap != "" && want.Encap != cur.Encap:
		return bad("tag type")
	case want.Driver != "" && want.Driver != cur.Driver:
		return bad("driver")
	}
	return nil
}

// deleteEndpoints deletes endpoints and releases their IPs in as few
// transactions as etcd's limit allows, each endpoint only if it is unchanged
// since it was read; a batch that lost a race falls back to one by one.
func (s *Store) deleteEndpoints(ctx context.Context, eps []core.Endpoint, rev map[string]int64) (int, error) {
	deleted := 0
	const batch = maxTxnOps / 2 // two deletes per endpoint
	for start := 0; start < len(eps); start += batch {
		chunk := eps[start:min(start+batch, len(eps))]
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, e := range chunk {
			cmps = append(cmps, unchanged(endpointKey(e.Tenant, e.Name), rev[e.Key()]))
			ops = append(ops, clientv3.OpDelete(endpointKey(e.Tenant, e.Name)), clientv3.OpDelete(ipKey(e.Tenant, e.Network, e.IP)))
		}
		r, err := s.txn(ctx, cmps, ops...)
		if err != nil {
			return deleted, err
		}
		if r.Succeeded {
			deleted += len(chunk)
			continue
		}
		for _, e := range chunk {
			if err := s.DeleteEndpoint(ctx, e.Tenant, e.Name); err != nil && !errors.Is(err, core.ErrNotFound) {
				return deleted, err
			}
			deleted++
		}
	}
	return deleted, nil
}

// createEndpoints writes many new endpoints in as few transactions as etcd's
// limit allows, allocating auto IPs from one read of each network. A batch that
// loses a race falls back to one-by-one creation, which retries.
func (s *Store) createEndpoints(ctx context.Context, eps []core.Endpoint) (int, error) {
	byNet := map[string][]core.Endpoint{}
	var order []string
	for _, e := range eps {
		if _, ok := byNet[e.NetworkKey()]; !ok {
			order = append(order, e.NetworkKey())
		}
		byNet[e.NetworkKey()] = append(byNet[e.NetworkKey()], e)
	}
	created := 0
	for _, nk := range order {
		list := byNet[nk]
		n, rev, err := s.GetNetwork(ctx, list[0].Tenant, list[0].Network)
		if err != nil {
			return created, err
		}
		if _, routed := n.HostBlockLen(); routed {
			// Addresses come from each host's block: one by one.
			for _, e := range list {
				if _, err := s.CreateEndpoint(ctx, e, 0); err != nil {
					return created, err
				}
				created++
			}
			continue
		}
		used, err := s.usedIPs(ctx, n)
		if err != nil {
			return created, err
		}
		for _, e := range list {
			if e.IP != "" {
				used[core.IPToUint(net.ParseIP(e.IP))] = true
			}
		}
		lo, hi := core.SubnetBounds(mustCIDR(n.Subnet))
		next := lo + 1
		// Each endpoint costs two compares and two puts; keep both under maxTxnOps.
		const batch = (maxTxnOps - 1) / 2
		for start := 0; start < len(list); start += batch {
			chunk := append([]core.Endpoint(nil), list[start:min(start+batch, len(list))]...)
			cmps := []clientv3.Cmp{unchanged(networkKey(n.Tenant, n.Name), rev)}
			var ops []clientv3.Op
			for i := range chunk {
				e := &chunk[i]
				if e.MAC == "" {
					e.MAC = NewMAC()
				}
				if e.IP == "" {
					for next < hi && used[next] {
						next++
					}
					if next >= hi {
						return created, fmt.Errorf("%w: network %s has no free IP left in %s", core.ErrInUse, n.Key(), n.Subnet)
					}
					used[next] = true
					e.IP = core.IPFromUint(next).String()
				} else if err := core.ValidateEndpointIP(n, e.IP); err != nil {
					return created, err
				} else {
					e.IP = net.ParseIP(e.IP).To4().String()
				}
				cmps = append(cmps, free(endpointKey(e.Tenant, e.Name)), free(ipKey(n.Tenant, n.Name, e.IP)))
				ops = append(ops, clientv3.OpPut(endpointKey(e.Tenant, e.Name), mustJSON(e)),
					clientv3.OpPut(ipKey(n.Tenant, n.Name, e.IP), e.Name))
			}
			r, err := s.txn(ctx, cmps, ops...)
			if err != nil {
				return created, err
			}
			if r.Succeeded {
				created += len(chunk)
				continue
			}
			for _, e := range list[start:min(start+batch, len(list))] {
				if _, err := s.CreateEndpoint(ctx, e, 0); err != nil {
					return created, err
				}
				created++
			}
		}
	}
	return created, nil
}

func (s *Store) usedIPs(ctx context.Context, n core.Network) (map[uint32]bool, error) {
	r, err := s.get(ctx, ipsOf(n.Tenant, n.Name), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	used := map[uint32]bool{}
	for _, kv := range r.Kvs {
		if ip := net.ParseIP(lastSegment(string(kv.Key))); ip != nil {
			used[core.IPToUint(ip)] = true
		}
	}
	if n.Gateway != "" {
		used[core.IPToUint(net.ParseIP(n.Gateway))] = true
	}
	return used, nil
}
