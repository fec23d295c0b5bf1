package state

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/netplugin/netplugin/core"
)

// A document is applied in two steps: planDocument, a pure function of the
// store's content at one revision, validates the document and decides every
// key to write (allocations included); the journal then writes those keys.
// Keeping the planner pure lets a dry run show exactly what an apply does, and
// lets the fuzzer check it without etcd.

// snapshot is the desired state and the allocations (desiredPrefixes) at one
// revision.
type snapshot struct {
	rev int64
	kvs map[string]snapKV
}

type snapKV struct {
	val string
	rev int64 // ModRevision
}

// Change is one line of a plan.
type Change struct {
	Action string `json:"action"` // create, update, delete or keep
	Kind   string `json:"kind"`   // global, tenant, network, endpoint, policy, netprofile or group
	Name   string `json:"name"`
	Detail string `json:"detail,omitempty"`
}

func (c Change) String() string {
	s := c.Action + " " + c.Kind
	if c.Name != "" {
		s += " " + c.Name
	}
	if c.Detail != "" {
		s += ": " + c.Detail
	}
	return s
}

// journalOp is one key an apply writes, with what the key held before: the
// precondition that makes a batch commit only over the state it was planned
// against, and what a roll back restores.
type journalOp struct {
	Key string `json:"k"`
	Val string `json:"v,omitempty"`
	Del bool   `json:"d,omitempty"`
	// Guard: only a precondition, no write (the network an endpoint is added to).
	Guard bool `json:"g,omitempty"`
	// Had: the key existed; Rev is its ModRevision when no earlier op of the
	// apply wrote it, else the precondition is its value Old.
	Had bool   `json:"h,omitempty"`
	Rev int64  `json:"r,omitempty"`
	Old string `json:"o,omitempty"`
}

// plan is what an apply does: batches of keys, each written in one
// transaction, and the changes they make in words.
type plan struct {
	batches [][]journalOp
	changes []Change
}

func (p *plan) summary() ApplySummary {
	var s ApplySummary
	for _, c := range p.changes {
		switch c.Action {
		case "create":
			s.Created++
		case "update":
			s.Updated++
		case "delete":
			s.Deleted++
		case "keep":
			s.Kept++
		}
	}
	return s
}

// view is a snapshot decoded.
type view struct {
	global     core.Global
	tenants    map[string]bool
	nets       map[string]core.Network
	eps        map[string]core.Endpoint
	ips        map[string]map[string]string // network key -> IP -> owner
	tags       map[string]string            // tag key -> network key
	blocks     map[string]map[string]string // network key -> block base -> host
	dockerMaps map[string][]string          // network key -> docker/ and dockerusers/ keys naming it
	pol        storedPolicy
}

func decodeSnapshot(snap *snapshot) (*view, error) {
	v := &view{global: core.DefaultGlobal(), tenants: map[string]bool{core.DefaultTenant: true},
		nets: map[string]core.Network{}, eps: map[string]core.Endpoint{}, ips: map[string]map[string]string{},
		tags: map[string]string{}, blocks: map[string]map[string]string{}, dockerMaps: map[string][]string{},
		pol: storedPolicy{policies: map[string]core.Policy{}, profiles: map[string]core.Profile{}, groups: map[string]core.Group{}}}
	for k, kv := range snap.kvs {
		if ok, err := v.pol.decode(k, kv.val); ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		switch {
		case k == keyGlobal:
			if err := json.Unmarshal([]byte(kv.val), &v.global); err != nil {
				return nil, fmt.Errorf("decode %s: %w", k, err)
			}
		case strings.HasPrefix(k, tenantPrefix):
			v.tenants[strings.TrimPrefix(k, tenantPrefix)] = true
		case strings.HasPrefix(k, networkPrefix):
			var n core.Network
			if err := json.Unmarshal([]byte(kv.val), &n); err != nil {
				return nil, fmt.Errorf("decode %s: %w", k, err)
			}
			if _, err := core.ParseCIDR(n.Subnet); err != nil || networkKey(n.Tenant, n.Name) != k {
				return nil, fmt.Errorf("decode %s: not a valid network", k)
			}
			v.nets[n.Key()] = n
		case strings.HasPrefix(k, endpointPrefix):
			var e core.Endpoint
			if err := json.Unmarshal([]byte(kv.val), &e); err != nil {
				return nil, fmt.Errorf("decode %s: %w", k, err)
			}
			if endpointKey(e.Tenant, e.Name) != k {
				return nil, fmt.Errorf("decode %s: names endpoint %s", k, e.Key())
			}
			v.eps[e.Key()] = e
		case strings.HasPrefix(k, ipAllocPrefix):
			if nk, ip, ok := splitLast(strings.TrimPrefix(k, ipAllocPrefix)); ok {
				if v.ips[nk] == nil {
					v.ips[nk] = map[string]string{}
				}
				v.ips[nk][ip] = kv.val
			}
		case strings.HasPrefix(k, blockPrefix):
			if nk, base, ok := splitLast(strings.TrimPrefix(k, blockPrefix)); ok && net.ParseIP(base).To4() != nil {
				if v.blocks[nk] == nil {
					v.blocks[nk] = map[string]string{}
				}
				v.blocks[nk][base] = kv.val
			}
		case strings.HasPrefix(k, dockerPrefix):
			var dn DockerNetwork
			if json.Unmarshal([]byte(kv.val), &dn) == nil {
				nk := dn.Tenant + "/" + dn.Network
				v.dockerMaps[nk] = append(v.dockerMaps[nk], k)
			}
		case strings.HasPrefix(k, usersPrefix):
			// dockerusers/<tenant>/<network>/<host>/<id>, the index of the mappings.
			if parts := strings.SplitN(strings.TrimPrefix(k, usersPrefix), "/", 3); len(parts) == 3 {
				nk := parts[0] + "/" + parts[1]
				v.dockerMaps[nk] = append(v.dockerMaps[nk], k)
			}
		case strings.HasPrefix(k, ipFullPrefix):
			// the allocator's hint, read by planSpace
		case strings.HasPrefix(k, allocPrefix):
			v.tags[k] = kv.val
		}
	}
	if err := core.ValidateGlobal(v.global); err != nil {
		return nil, fmt.Errorf("stored global configuration: %w", err)
	}
	return v, nil
}

// splitLast splits "tenant/network/last" into "tenant/network" and "last".
func splitLast(s string) (string, string, bool) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 || strings.Count(s, "/") != 2 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// planner builds a plan: it tracks every key as the plan's writes leave it, so
// that each op records the state it expects.
type planner struct {
	snap    *snapshot
	v       *view
	opts    ApplyOptions
	g       core.Global
	sim     map[string]simKV
	items   [][]journalOp
	changes []Change

	// allocation state after the plan's deletions
	usedTags  map[string]string            // tag key -> owner
	usedIPs   map[string]map[uint32]bool   // network key -> addresses taken
	hints     map[string]*hintState        // network key -> the allocator's full-blocks hint
	hintMoved map[string]bool              // network keys whose hint the plan changes
	blocks    map[string]map[string]string // network key -> base -> host
	newBlocks map[string]bool              // block keys the plan creates
}

type simKV struct {
	exists  bool
	val     string
	rev     int64 // ModRevision while untouched by the plan, else 0
	touched bool
}

func (p *planner) state(key string) simKV {
	if st, ok := p.sim[key]; ok {
		return st
	}
	kv, ok := p.snap.kvs[key]
	return simKV{exists: ok, val: kv.val, rev: kv.rev}
}

func (p *planner) record(key string) journalOp {
	st := p.state(key)
	op := journalOp{Key: key, Had: st.exists}
	if st.exists {
		if st.touched {
			op.Old = st.val
		} else {
			op.Rev, op.Old = st.rev, st.val
		}
	}
	return op
}

func (p *planner) put(item []journalOp, key, val string) []journalOp {
	op := p.record(key)
	op.Val = val
	p.sim[key] = simKV{exists: true, val: val, touched: true}
	return append(item, op)
}

func (p *planner) del(item []journalOp, key string) []journalOp {
	if !p.state(key).exists {
		return item
	}
	op := p.record(key)
	op.Del = true
	p.sim[key] = simKV{touched: true}
	return append(item, op)
}

// guard makes the item commit only if key is unchanged since the snapshot;
// keys the plan itself writes need none.
func (p *planner) guard(item []journalOp, key string) []journalOp {
	st := p.state(key)
	if !st.exists || st.touched {
		return item
	}
	return append(item, journalOp{Key: key, Guard: true, Had: true, Rev: st.rev})
}

func (p *planner) add(item []journalOp, c Change) {
	if len(item) > 0 {
		p.items = append(p.items, item)
	}
	p.changes = append(p.changes, c)
}

// docNet and docEP are the document's objects with their resolved form.
type docNet struct {
	doc      NetworkDocument
	n        core.Network // complete after allocation
	existing bool
}

type docEP struct {
	doc    EndpointDocument
	e      core.Endpoint
	cur    core.Endpoint // when existing
	exists bool
	move   bool // to another host on a routed network: a new address
	change []string
}

// planDocument validates d against snap and returns the writes that make the
// store equal to it. It reads nothing but its arguments.
func planDocument(snap *snapshot, d Document, o ApplyOptions) (*plan, error) {
	v, err := decodeSnapshot(snap)
	if err != nil {
		return nil, err
	}
	p := &planner{snap: snap, v: v, opts: o, g: v.global, sim: map[string]simKV{},
		usedTags: map[string]string{}, usedIPs: map[string]map[uint32]bool{}, hints: map[string]*hintState{}, hintMoved: map[string]bool{},
		blocks: map[string]map[string]string{}, newBlocks: map[string]bool{}}
	if d.Global != nil {
		p.g = mergeGlobal(v.global, *d.Global)
		if err := core.ValidateGlobal(p.g); err != nil {
			return nil, err
		}
	}

	// The document's names, checked before anything is decided.
	wantTenants := map[string]bool{core.DefaultTenant: true}
	var nets []*docNet
	netByKey := map[string]*docNet{}
	var eps []*docEP
	epByKey := map[string]*docEP{}
	dp := &docPolicy{policies: map[string]core.Policy{}, profiles: map[string]core.Profile{}, groups: map[string]core.Group{}}
	for _, td := range d.Tenants {
		if err := core.ValidName("tenant", td.Name); err != nil {
			return nil, err
		}
		if wantTenants[td.Name] && td.Name != core.DefaultTenant {
			return nil, fmt.Errorf("%w: tenant %q appears twice", core.ErrInvalid, td.Name)
		}
		wantTenants[td.Name] = true
		if err := readPolicyDocument(dp, td); err != nil {
			return nil, err
		}
		for _, nd := range td.Networks {
			if err := core.ValidName("network", nd.Name); err != nil {
				return nil, err
			}
			dn := &docNet{doc: nd, n: core.Network{Tenant: td.Name, Name: nd.Name}}
			if netByKey[dn.n.Key()] != nil {
				return nil, fmt.Errorf("%w: network %s appears twice", core.ErrInvalid, dn.n.Key())
			}
			netByKey[dn.n.Key()] = dn
			nets = append(nets, dn)
			for _, ed := range nd.Endpoints {
				if err := core.ValidName("endpoint", ed.Name); err != nil {
					return nil, err
				}
				de := &docEP{doc: ed, e: core.Endpoint{Tenant: td.Name, Network: nd.Name, Name: ed.Name, Group: ed.Group}}
				if epByKey[de.e.Key()] != nil {
					return nil, fmt.Errorf("%w: endpoint %s appears twice in tenant %s", core.ErrInvalid, ed.Name, td.Name)
				}
				if ed.Container != "" && ed.NetNS != "" {
					return nil, fmt.Errorf("%w: endpoint %s: give container or netns, not both", core.ErrInvalid, de.e.Key())
				}
				if err := checkAttachment(ed.Host, ed.Container, ed.NetNS); err != nil {
					return nil, fmt.Errorf("endpoint %s: %w", de.e.Key(), err)
				}
				epByKey[de.e.Key()] = de
				eps = append(eps, de)
			}
		}
	}

	if d.Global != nil && p.g != v.global {
		item := p.put(nil, keyGlobal, mustJSON(p.g))
		p.add(item, Change{"update", "global", "", globalDiff(v.global, p.g)})
	}

	// What the document does not name is deleted, except what Docker made
	// (unless told to prune it too) and what still holds something kept.
	keptNet := map[string]string{} // network key -> why it is kept
	var delEPs []core.Endpoint
	for _, k := range slices.Sorted(maps.Keys(v.eps)) {
		e := v.eps[k]
		if epByKey[k] != nil {
			continue
		}
		if e.DockerEndpoint != "" && !o.PruneDocker {
			p.add(nil, Change{"keep", "endpoint", k, "created by Docker (-prune docker deletes it)"})
			if netByKey[e.NetworkKey()] == nil {
				keptNet[e.NetworkKey()] = "holds endpoints created by Docker"
			}
			continue
		}
		delEPs = append(delEPs, e)
	}
	deletedIP := map[string]bool{} // alloc keys the endpoint deletes release
	for _, e := range delEPs {
		if v.ips[e.NetworkKey()][e.IP] == e.Name {
			deletedIP[ipKey(e.Tenant, e.Network, e.IP)] = true
		}
	}
	var delNets []core.Network
	for _, k := range slices.Sorted(maps.Keys(v.nets)) {
		n := v.nets[k]
		if netByKey[k] != nil {
			continue
		}
		if why := keptNet[k]; why != "" && (o.PruneDocker || n.CreatedBy != "docker") {
			p.add(nil, Change{"keep", "network", k, why})
			continue
		}
		if !o.PruneDocker {
			why := ""
			switch {
			case n.CreatedBy == "docker":
				why = "created by Docker"
			case len(v.dockerMaps[k]) > 0:
				why = "in use by a Docker network"
			default:
				for ip := range v.ips[k] {
					if !deletedIP[ipKey(n.Tenant, n.Name, ip)] {
						why = "holds addresses reserved by Docker"
						break
					}
				}
			}
			if why != "" {
				keptNet[k] = why
				p.add(nil, Change{"keep", "network", k, why + " (-prune docker deletes it)"})
				continue
			}
		}
		delNets = append(delNets, n)
	}
	var delTenants []string
	for _, t := range slices.Sorted(maps.Keys(v.tenants)) {
		if wantTenants[t] {
			continue
		}
		kept := false
		for nk := range keptNet {
			if strings.HasPrefix(nk, t+"/") {
				kept = true
			}
		}
		if kept {
			p.add(nil, Change{"keep", "tenant", t, "holds networks that are kept"})
			continue
		}
		delTenants = append(delTenants, t)
	}

	// Deletions, in the order their keys depend on each other.
	for _, e := range delEPs {
		item := p.delEndpoint(nil, e)
		if deletedIP[ipKey(e.Tenant, e.Network, e.IP)] {
			item = p.del(item, ipKey(e.Tenant, e.Network, e.IP))
		}
		p.add(item, Change{"delete", "endpoint", e.Key(), fmt.Sprintf("network %s, %s, host %s", e.Network, e.IP, orNone(e.Host))})
	}
	var keptEPs []core.Endpoint
	deletedEP := map[string]bool{}
	for _, e := range delEPs {
		deletedEP[e.Key()] = true
	}
	for _, k := range slices.Sorted(maps.Keys(v.eps)) {
		if epByKey[k] == nil && !deletedEP[k] {
			keptEPs = append(keptEPs, v.eps[k])
		}
	}
	// Groups go before their networks, policies before tenants.
	if err := p.planPolicyDeletes(dp, keptEPs); err != nil {
		return nil, err
	}
	deletedNet := map[string]bool{}
	for _, n := range delNets {
		deletedNet[n.Key()] = true
		var item []journalOp
		// What else the network holds goes first, one key per item, so that
		// a network with many keys never needs one oversized transaction.
		var held []string
		for _, ip := range slices.Sorted(maps.Keys(v.ips[n.Key()])) {
			held = append(held, ipKey(n.Tenant, n.Name, ip))
			if h, ok := reservationHost(v.ips[n.Key()][ip]); ok {
				held = append(held, hostReservationKey(h, n.Tenant, n.Name, ip))
			}
		}
		held = append(held, ipFullKey(n.Tenant, n.Name))
		for _, base := range slices.Sorted(maps.Keys(v.blocks[n.Key()])) {
			held = append(held, blockKey(n.Tenant, n.Name, base))
		}
		held = append(held, sortedStrings(v.dockerMaps[n.Key()])...)
		for _, k := range held {
			if one := p.del(nil, k); len(one) > 0 {
				p.items = append(p.items, one)
			}
		}
		if v.tags[tagKey(n.Encap, n.Tag)] == n.Key() {
			item = p.del(item, tagKey(n.Encap, n.Tag))
		}
		item = p.del(item, networkKey(n.Tenant, n.Name))
		p.add(item, Change{"delete", "network", n.Key(), fmt.Sprintf("%s, %s %d, %s", n.Driver, n.Encap, n.Tag, n.Subnet)})
	}
	for _, t := range delTenants {
		p.add(p.del(nil, tenantKey(t)), Change{"delete", "tenant", t, ""})
	}

	// What stays allocated.
	for k, owner := range v.tags {
		if !deletedNet[owner] {
			p.usedTags[k] = owner
		}
	}
	var kept []core.Network
	for k, n := range v.nets {
		if !deletedNet[k] {
			kept = append(kept, n)
		}
	}
	for nk, ips := range v.ips {
		for ip := range ips {
			t, n, _ := strings.Cut(nk, "/")
			if deletedNet[nk] || deletedIP[ipKey(t, n, ip)] {
				continue
			}
			if a := net.ParseIP(ip).To4(); a != nil {
				p.used(nk)[core.IPToUint(a)] = true
			}
		}
	}
	for nk, bs := range v.blocks {
		if !deletedNet[nk] {
			p.blocks[nk] = maps.Clone(bs)
		}
	}

	if err := p.planNetworks(nets, kept); err != nil {
		return nil, err
	}
	for _, t := range slices.Sorted(maps.Keys(wantTenants)) {
		if !v.tenants[t] {
			p.add(p.put(nil, tenantKey(t), mustJSON(core.Tenant{Name: t})), Change{"create", "tenant", t, ""})
		}
	}
	for _, dn := range nets {
		if dn.existing {
			continue
		}
		n := dn.n
		var item []journalOp
		if n.Tenant != core.DefaultTenant {
			item = p.guard(item, tenantKey(n.Tenant))
		}
		item = p.put(item, networkKey(n.Tenant, n.Name), mustJSON(n))
		item = p.put(item, tagKey(n.Encap, n.Tag), n.Key())
		p.add(item, Change{"create", "network", n.Key(), netDetail(n)})
	}
	finalNets := map[string]core.Network{}
	for _, n := range kept {
		finalNets[n.Key()] = n
	}
	for k, dn := range netByKey {
		finalNets[k] = dn.n
	}
	if err := p.planPolicyPuts(dp, finalNets, eps); err != nil {
		return nil, err
	}
	if err := p.planEndpoints(eps, netByKey); err != nil {
		return nil, err
	}
	// Released addresses make their blocks free again, in the hint too.
	for _, e := range delEPs {
		if !deletedNet[e.NetworkKey()] && deletedIP[ipKey(e.Tenant, e.Network, e.IP)] {
			p.freed(v.nets[e.NetworkKey()], e.IP)
		}
	}
	for _, de := range eps {
		if de.move {
			p.freed(netByKey[de.e.NetworkKey()].n, de.cur.IP)
		}
	}
	for _, nk := range slices.Sorted(maps.Keys(p.hintMoved)) {
		n := v.nets[nk]
		if dn := netByKey[nk]; dn != nil {
			n = dn.n
		}
		if deletedNet[nk] {
			continue
		}
		val, _ := p.hints[nk].with(nil, nil)
		if item := p.put(nil, ipFullKey(n.Tenant, n.Name), val); len(item) > 0 {
			p.items = append(p.items, item)
		}
	}
	return &plan{batches: batch(p.items), changes: p.changes}, nil
}

func (p *planner) used(nk string) map[uint32]bool {
	if p.usedIPs[nk] == nil {
		p.usedIPs[nk] = map[uint32]bool{}
	}
	return p.usedIPs[nk]
}

// planNetworks completes the document's networks: existing ones must match,
// new ones get defaults, then user tags and subnets are reserved before any
// automatic one is chosen, so that an automatic pick never takes what a later
// network of the document names.
func (p *planner) planNetworks(nets []*docNet, kept []core.Network) error {
	var fresh []*docNet
	for _, dn := range nets {
		nd := dn.doc
		want := core.Network{Tenant: dn.n.Tenant, Name: nd.Name, Driver: nd.Driver, Encap: nd.TagType, Tag: nd.Tag,
			Subnet: nd.Subnet, Gateway: nd.Gateway, Options: nd.Options}
		if cur, ok := p.v.nets[want.Key()]; ok {
			if err := sameNetwork(cur, want); err != nil {
				return err
			}
			dn.n, dn.existing = cur, true
			continue
		}
		n, err := withDefaults(want, p.g)
		if err != nil {
			return fmt.Errorf("network %s: %w", want.Key(), err)
		}
		if n.Gateway != "" {
			gw, err := core.ParseIPv4(n.Gateway)
			if err != nil {
				return fmt.Errorf("%w: network %s: invalid gateway %q", core.ErrInvalid, n.Key(), n.Gateway)
			}
			n.Gateway = gw.String()
		}
		if len(n.Options) == 0 {
			n.Options = nil
		} else {
			n.Options = maps.Clone(n.Options)
		}
		dn.n = n
		fresh = append(fresh, dn)
	}
	for _, dn := range fresh {
		n := &dn.n
		if n.Tag == 0 {
			continue
		}
		tk := tagKey(n.Encap, n.Tag)
		if other, ok := p.usedTags[tk]; ok {
			return fmt.Errorf("%w: %s tag %d of %s is taken by network %s", core.ErrInUse, n.Encap, n.Tag, n.Key(), other)
		}
		p.usedTags[tk] = n.Key()
	}
	all := kept
	for _, dn := range fresh {
		n := dn.n
		if n.Subnet == "" {
			continue
		}
		for _, o := range all {
			if o.Tenant == n.Tenant && core.Overlaps(mustCIDR(n.Subnet), mustCIDR(o.Subnet)) {
				return fmt.Errorf("%w: subnet %s of %s overlaps %s of %s", core.ErrInUse, n.Subnet, n.Key(), o.Subnet, o.Key())
			}
		}
		all = append(all, n)
	}
	for _, dn := range fresh {
		n := &dn.n
		if n.Tag == 0 {
			spec := p.g.VLANs
			if n.Encap == core.EncapVXLAN {
				spec = p.g.VXLANs
			}
			ranges, err := core.ParseRanges(spec, core.MaxTag(n.Encap))
			if err != nil {
				return err
			}
			used := map[int]bool{}
			for tk := range p.usedTags {
				if strings.HasPrefix(tk, tagsOf(n.Encap)) {
					if t, err := strconv.Atoi(lastSegment(tk)); err == nil {
						used[t] = true
					}
				}
			}
			if n.Tag, err = freeTag(ranges, used, n.Encap, spec); err != nil {
				return fmt.Errorf("network %s: %w", n.Key(), err)
			}
			n.TagAuto = true
			p.usedTags[tagKey(n.Encap, n.Tag)] = n.Key()
		}
		if n.Subnet == "" {
			sn, err := pickSubnet(p.g, all)
			if err != nil {
				return fmt.Errorf("network %s: %w", n.Key(), err)
			}
			first, _ := core.SubnetBounds(mustCIDR(sn))
			n.Subnet, n.Gateway = sn, core.IPFromUint(first+1).String()
			all = append(all, *n)
		}
		if err := core.ValidateNetwork(*n); err != nil {
			return err
		}
		if n.Gateway != "" {
			p.used(n.Key())[core.IPToUint(net.ParseIP(n.Gateway))] = true
		}
	}
	for _, dn := range nets {
		if dn.existing && dn.n.Gateway != "" {
			if gw := net.ParseIP(dn.n.Gateway).To4(); gw != nil {
				p.used(dn.n.Key())[core.IPToUint(gw)] = true
			}
		}
	}
	return nil
}

// planEndpoints resolves the document's endpoints: explicit addresses are
// checked and reserved first, automatic ones picked after, lowest first.
func (p *planner) planEndpoints(eps []*docEP, nets map[string]*docNet) error {
	for _, de := range eps {
		ed := de.doc
		n := nets[de.e.NetworkKey()].n
		e := &de.e
		e.Host = ed.Host
		if e.Host == "" && p.opts.DefaultHost != "" {
			e.Host = p.opts.DefaultHost
			if err := core.ValidName("host", e.Host); err != nil {
				return fmt.Errorf("endpoint %s: default %w", e.Key(), err)
			}
		}
		e.NetNS, e.ContainerName, e.ContainerID = ed.NetNS, ed.Container, ed.Container
		if cur, ok := p.v.eps[e.Key()]; ok {
			if err := p.compareEndpoint(de, cur, n); err != nil {
				return err
			}
			continue
		}
		mac, err := checkMAC(ed.MAC)
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", e.Key(), err)
		}
		e.MAC = mac
		if ed.IP != "" {
			if e.IP, err = p.explicitIP(n, e.Host, ed.IP, e.Name); err != nil {
				return err
			}
		}
	}
	for _, de := range eps {
		if (de.exists && !de.move) || de.e.IP != "" {
			continue
		}
		n := nets[de.e.NetworkKey()].n
		ip, err := p.autoIP(n, de.e.Host)
		if err != nil {
			return err
		}
		de.e.IP = ip
		if de.move {
			de.change = append(de.change, fmt.Sprintf("ip %s -> %s", de.cur.IP, ip))
		}
	}
	for _, de := range eps {
		e := de.e
		n := nets[e.NetworkKey()].n
		if de.exists && len(de.change) == 0 {
			continue
		}
		var item []journalOp
		if _, routed := n.HostBlockLen(); routed {
			item = p.blockItem(item, n, e.Host)
		}
		if !de.exists {
			item = p.guard(item, networkKey(n.Tenant, n.Name))
			item = p.putEndpoint(item, nil, e)
			item = p.put(item, ipKey(n.Tenant, n.Name, e.IP), e.Name)
			p.add(item, Change{"create", "endpoint", e.Key(), epDetail(e)})
			continue
		}
		if de.move {
			item = p.del(item, ipKey(n.Tenant, n.Name, de.cur.IP))
			item = p.put(item, ipKey(n.Tenant, n.Name, e.IP), e.Name)
		}
		item = p.putEndpoint(item, &de.cur, e)
		p.add(item, Change{"update", "endpoint", e.Key(), strings.Join(de.change, ", ")})
	}
	return nil
}

// compareEndpoint decides what changes on an endpoint the store has: its
// attachment and host; on a routed network a new host means a new address.
func (p *planner) compareEndpoint(de *docEP, cur core.Endpoint, n core.Network) error {
	ed, e := de.doc, &de.e
	de.exists, de.cur = true, cur
	if cur.Network != e.Network {
		return fmt.Errorf("%w: endpoint %s is on network %s: its network cannot change; delete it first", core.ErrInvalid, e.Key(), cur.Network)
	}
	if ed.MAC != "" {
		if mac, err := checkMAC(ed.MAC); err != nil || mac != cur.MAC {
			return fmt.Errorf("%w: endpoint %s has MAC %s: its MAC cannot change; delete it first", core.ErrInvalid, e.Key(), cur.MAC)
		}
	}
	if cur.DockerEndpoint != "" {
		// Docker decides where its endpoints are plugged in; a document may
		// name them, but not move them.
		if (ed.Host != "" && ed.Host != cur.Host) || (ed.Container != "" && ed.Container != cur.ContainerID && ed.Container != cur.ContainerName) ||
			(ed.NetNS != "" && ed.NetNS != cur.NetNS) || (ed.IP != "" && !sameIP(ed.IP, cur.IP)) {
			return fmt.Errorf("%w: endpoint %s was created by Docker: its host, IP and attachment are Docker's", core.ErrInvalid, e.Key())
		}
		if ed.Group != "" && ed.Group != cur.Group {
			return fmt.Errorf("%w: endpoint %s was created by Docker: its group is Docker's (-o group=, --driver-opt group=)", core.ErrInvalid, e.Key())
		}
		*e = cur
		return nil
	}
	upd := cur
	if e.Host != cur.Host {
		de.change = append(de.change, fmt.Sprintf("host %s -> %s", orNone(cur.Host), e.Host))
		upd.Host = e.Host
		if _, routed := n.HostBlockLen(); routed {
			de.move = true
			upd.IP = ""
			if ed.IP != "" {
				ip, err := p.explicitIP(n, e.Host, ed.IP, e.Name)
				if err != nil {
					return err
				}
				upd.IP = ip
				if ip != cur.IP {
					de.change = append(de.change, fmt.Sprintf("ip %s -> %s", cur.IP, ip))
				}
			}
			// The old address is not handed to another endpoint of the same
			// apply: it is freed only in the move's own transaction.
		}
	}
	if !de.move && ed.IP != "" && !sameIP(ed.IP, cur.IP) {
		return fmt.Errorf("%w: endpoint %s has IP %s: its IP cannot change; delete it first", core.ErrInvalid, e.Key(), cur.IP)
	}
	// A container named as the user typed it matches the endpoint attached to
	// it, whose ID netdcli resolved: no rewrite on every apply.
	sameCtr := ed.Container == cur.ContainerName || ed.Container == cur.ContainerID
	if ed.Container == "" {
		sameCtr = cur.ContainerID == "" && cur.ContainerName == ""
	}
	if !sameCtr || ed.NetNS != cur.NetNS {
		de.change = append(de.change, fmt.Sprintf("attach %s -> %s", attachDesc(cur), attachDesc(*e)))
		upd.ContainerName, upd.ContainerID, upd.NetNS = e.ContainerName, e.ContainerID, e.NetNS
	}
	if e.Group != cur.Group {
		de.change = append(de.change, fmt.Sprintf("group %s -> %s", orNone(cur.Group), orNone(e.Group)))
		upd.Group = e.Group
	}
	*e = upd
	return nil
}

func sameIP(a, b string) bool {
	x, err := core.ParseIPv4(a)
	return err == nil && x.String() == b
}

// explicitIP checks an address the document gives and reserves it.
func (p *planner) explicitIP(n core.Network, host, ip, owner string) (string, error) {
	addr, err := core.ParseIPv4(ip)
	if err != nil {
		return "", fmt.Errorf("endpoint %s/%s: %w", n.Tenant, owner, err)
	}
	ip = addr.String()
	if err := core.ValidateEndpointIP(n, ip); err != nil {
		return "", err
	}
	if _, routed := n.HostBlockLen(); routed {
		block, err := p.hostBlock(n, host)
		if err != nil {
			return "", err
		}
		if !block.Contains(addr) {
			return "", fmt.Errorf("%w: IP %s is outside %s, the block of host %s on routed network %s", core.ErrInvalid, ip, block, host, n.Key())
		}
	}
	used := p.used(n.Key())
	if used[core.IPToUint(addr)] {
		return "", fmt.Errorf("%w: IP %s is already used on network %s", core.ErrInUse, ip, n.Key())
	}
	used[core.IPToUint(addr)] = true
	return ip, nil
}

// autoIP allocates an address of the subnet, or of the host's block on a
// routed network, with the allocator every other writer uses.
func (p *planner) autoIP(n core.Network, host string) (string, error) {
	var lo, hi uint32
	where := n.Subnet
	if _, routed := n.HostBlockLen(); routed {
		block, err := p.hostBlock(n, host)
		if err != nil {
			return "", err
		}
		first, last := core.SubnetBounds(block)
		lo, hi, where = first+1, last-1, block.String()+" (block of host "+host+")"
	}
	sp := planSpace{used: p.used(n.Key()), hint: p.hint(n)}
	a, err := allocate(context.Background(), n, lo, hi, sp, false, where)
	if err != nil {
		return "", err
	}
	sp.used[a.addr] = true
	if sp.hint != nil && sp.hint.apply(a.setFull, a.markFree) {
		p.hintMoved[n.Key()] = true
	}
	return core.IPFromUint(a.addr).String(), nil
}

// hint is the allocator's hint of n as the plan leaves it (nil: n has none).
func (p *planner) hint(n core.Network) *hintState {
	if !multiBlock(n) {
		return nil
	}
	if h := p.hints[n.Key()]; h != nil {
		return h
	}
	h := hintState{subnet: mustCIDR(n.Subnet)}
	if kv, ok := p.snap.kvs[ipFullKey(n.Tenant, n.Name)]; ok {
		h = decodeHint([]byte(kv.val), kv.rev, mustCIDR(n.Subnet))
	}
	p.hints[n.Key()] = &h
	return &h
}

// freed notes that the plan releases ip of n.
func (p *planner) freed(n core.Network, ip string) {
	a := net.ParseIP(ip).To4()
	h := p.hint(n)
	if a == nil || h == nil {
		return
	}
	if h.apply(nil, []uint32{blockOf(core.IPToUint(a))}) {
		p.hintMoved[n.Key()] = true
	}
}

// planSpace shows the allocator the planner's view of a network.
type planSpace struct {
	used map[uint32]bool
	hint *hintState
}

func (sp planSpace) taken(context.Context, uint32) (func(uint32) bool, error) {
	return func(a uint32) bool { return sp.used[a] }, nil
}

func (sp planSpace) full(_ context.Context, b uint32) (bool, error) {
	return sp.hint != nil && sp.hint.isFull(b), nil
}

// putEndpoint writes e and its index copies; cur is the stored endpoint (nil: e is new).
func (p *planner) putEndpoint(item []journalOp, cur *core.Endpoint, e core.Endpoint) []journalOp {
	v := mustJSON(e)
	item = p.put(item, endpointKey(e.Tenant, e.Name), v)
	item = p.put(item, netEndpointKey(e.Tenant, e.Network, e.Name), v)
	if e.Host != "" {
		item = p.put(item, hostEndpointKey(e.Host, e.Tenant, e.Name), v)
	}
	if cur != nil && cur.Host != "" && cur.Host != e.Host {
		item = p.del(item, hostEndpointKey(cur.Host, cur.Tenant, cur.Name))
	}
	if e.Group != "" {
		item = p.put(item, groupMemberKey(e.Tenant, e.Group, e.Name), v)
	}
	if cur != nil && cur.Group != "" && cur.Group != e.Group {
		item = p.del(item, groupMemberKey(cur.Tenant, cur.Group, cur.Name))
	}
	return item
}

// delEndpoint deletes e and its index copies.
func (p *planner) delEndpoint(item []journalOp, e core.Endpoint) []journalOp {
	item = p.del(item, endpointKey(e.Tenant, e.Name))
	item = p.del(item, netEndpointKey(e.Tenant, e.Network, e.Name))
	if e.Host != "" {
		item = p.del(item, hostEndpointKey(e.Host, e.Tenant, e.Name))
	}
	if e.Group != "" {
		item = p.del(item, groupMemberKey(e.Tenant, e.Group, e.Name))
	}
	return item
}

// hostBlock returns host's block of a routed network, choosing the lowest
// free one for a host that has none yet.
func (p *planner) hostBlock(n core.Network, host string) (*net.IPNet, error) {
	blen, _ := n.HostBlockLen()
	if host == "" {
		return nil, fmt.Errorf("%w: network %s routes per host: the endpoint needs a host", core.ErrInvalid, n.Key())
	}
	bs := p.blocks[n.Key()]
	if bs == nil {
		bs = map[string]string{}
		p.blocks[n.Key()] = bs
	}
	for _, base := range slices.Sorted(maps.Keys(bs)) {
		if bs[base] == host {
			return &net.IPNet{IP: net.ParseIP(base).To4(), Mask: net.CIDRMask(blen, 32)}, nil
		}
	}
	used := map[string]bool{}
	for base := range bs {
		used[base] = true
	}
	base := freeBlock(n, blen, used)
	if base == "" {
		return nil, fmt.Errorf("%w: network %s has no free /%d block left for host %s", core.ErrInUse, n.Key(), blen, host)
	}
	bs[base] = host
	p.newBlocks[blockKey(n.Tenant, n.Name, base)] = true
	return &net.IPNet{IP: net.ParseIP(base).To4(), Mask: net.CIDRMask(blen, 32)}, nil
}

// blockItem writes host's block with the first endpoint that needs it.
func (p *planner) blockItem(item []journalOp, n core.Network, host string) []journalOp {
	for base, h := range p.blocks[n.Key()] {
		k := blockKey(n.Tenant, n.Name, base)
		if h == host && p.newBlocks[k] {
			delete(p.newBlocks, k)
			return p.put(item, k, host)
		}
	}
	return item
}

// batch packs items, in order, into transactions within etcd's limits: an
// item's keys stay in one transaction, and no key appears twice in one.
func batch(items [][]journalOp) [][]journalOp {
	// One compare and one put of every batch track the journal's progress.
	const room = maxTxnOps - 1
	var out [][]journalOp
	var cur []journalOp
	keys := map[string]bool{}
	writes, cmps := 0, 0
	for _, item := range items {
		w, c, clash := 0, 0, false
		for _, op := range item {
			switch {
			case !op.Guard:
				w, c = w+1, c+1
				clash = clash || keys[op.Key]
			case !keys["guard:"+op.Key]:
				c++
			}
		}
		if len(cur) > 0 && (clash || writes+w > room || cmps+c > room) {
			out = append(out, cur)
			cur, keys, writes, cmps = nil, map[string]bool{}, 0, 0
		}
		for _, op := range item {
			if op.Guard && keys["guard:"+op.Key] {
				continue
			}
			if op.Guard {
				keys["guard:"+op.Key] = true
			} else {
				keys[op.Key] = true
				writes++
			}
			cmps++
			cur = append(cur, op)
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
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
	if upd.SubnetPool != "" {
		g.SubnetPool = upd.SubnetPool
	}
	if upd.SubnetLen != 0 {
		g.SubnetLen = upd.SubnetLen
	}
	if upd.DefaultTagType != "" {
		g.DefaultTagType = upd.DefaultTagType
	}
	return g
}

func sameNetwork(cur, want core.Network) error {
	bad := func(what string) error {
		return fmt.Errorf("%w: network %s: %s cannot change; delete the network first", core.ErrInvalid, cur.Key(), what)
	}
	if want.Subnet != "" {
		sn, err := core.ParseCIDR(want.Subnet)
		if err != nil {
			return fmt.Errorf("network %s: %w", cur.Key(), err)
		}
		if sn.String() != cur.Subnet {
			return bad("subnet")
		}
	}
	switch {
	case want.Gateway != "" && !sameIP(want.Gateway, cur.Gateway):
		return bad("gateway")
	case want.Tag != 0 && want.Tag != cur.Tag:
		return bad("tag")
	case want.Encap != "" && want.Encap != cur.Encap:
		return bad("tag type")
	case want.Driver != "" && want.Driver != cur.Driver:
		return bad("driver")
	case len(want.Options) > 0 && !maps.Equal(want.Options, cur.Options):
		return bad("options")
	}
	return nil
}

func globalDiff(a, b core.Global) string {
	var d []string
	add := func(what, x, y string) {
		if x != y {
			d = append(d, fmt.Sprintf("%s %s -> %s", what, x, y))
		}
	}
	add("vlans", a.VLANs, b.VLANs)
	add("vxlans", a.VXLANs, b.VXLANs)
	add("default driver", a.DefaultDriver, b.DefaultDriver)
	add("subnet pool", a.SubnetPool, b.SubnetPool)
	add("subnet length", strconv.Itoa(a.SubnetLen), strconv.Itoa(b.SubnetLen))
	return strings.Join(d, ", ")
}

func netDetail(n core.Network) string {
	s := fmt.Sprintf("%s, %s %d, %s", n.Driver, n.Encap, n.Tag, n.Subnet)
	if n.Gateway != "" {
		s += " gw " + n.Gateway
	}
	return s
}

func epDetail(e core.Endpoint) string {
	return fmt.Sprintf("network %s, %s, host %s, %s", e.Network, e.IP, orNone(e.Host), attachDesc(e))
}

func attachDesc(e core.Endpoint) string {
	switch {
	case e.NetNS != "":
		return "netns " + e.NetNS
	case e.ContainerName != "":
		return "container " + e.ContainerName
	case e.ContainerID != "":
		return "container " + e.ContainerID
	}
	return "not attached"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func sortedStrings(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
}
