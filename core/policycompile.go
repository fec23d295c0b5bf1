package core

// Compiling the policy model into what one host enforces (HostPolicy, the
// input of PolicyEnforcer.SetPolicy), and the oracle: the model's verdict for
// a connection, which the dataplane tests check traffic against.

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
)

// PolicyModel is what policy is computed from: groups, policies, profiles,
// the networks they name, and endpoints (at least those in groups, and on the
// host compiled for, every endpoint of the host).
type PolicyModel struct {
	// Generation identifies this state of the model (the store revision it
	// was read at); hosts report the generation they enforce.
	Generation int64
	Networks   []Network
	Groups     []Group
	Policies   []Policy
	Profiles   []Profile
	Endpoints  []Endpoint
	// Policed are networks (keys) that one of their groups polices although
	// the model lacks that group's policies: a host compiles only the
	// policies of its own endpoints' groups, yet must keep its endpoints of
	// such a network to their own addresses, or they could pose as members
	// the other hosts' rules let in.
	Policed []string
}

// HostPolicy is what one driver on one host must enforce: SetPolicy makes the
// dataplane equal to it in one atomic step.
type HostPolicy struct {
	Generation int64 `json:"generation"`
	// Networks are this driver's networks on the host that have endpoints
	// listed below. A policed network (one of its groups has rules) has
	// every local endpoint listed, sourced only from its own address, and
	// its traffic tracked; the others list only endpoints with a profile.
	Networks []PolicyNetwork `json:"networks,omitempty"`
	// Endpoints are the host's endpoints of those networks, sorted by key.
	Endpoints []PolicyEndpoint `json:"endpoints,omitempty"`
	// Groups are the rules of the groups of the listed endpoints that have
	// any; a group missing here is open in both directions.
	Groups map[string]GroupRules `json:"groups,omitempty"`
	// Members are the addresses of every endpoint (on any host) of each
	// group that a rule above names as its peer, sorted.
	Members map[string][]string `json:"members,omitempty"`
}

// PolicyNetwork is one network of a HostPolicy.
type PolicyNetwork struct {
	Key     string `json:"key"`
	Subnet  string `json:"subnet"`
	Policed bool   `json:"policed,omitempty"`
}

// PolicyEndpoint is one local endpoint of a HostPolicy.
type PolicyEndpoint struct {
	Key     string `json:"key"`     // tenant/name
	Network string `json:"network"` // tenant/name of its network
	IP      string `json:"ip"`
	MAC     string `json:"mac"`
	Group   string `json:"group,omitempty"` // tenant/name; "" for none
	QoS     *QoS   `json:"qos,omitempty"`   // nil: no profile
	// NetNSPath is where the endpoint's container end lives (the agent
	// resolves it, as for EndpointSpec): drivers that shape traffic out of
	// an endpoint inside its namespace need it.
	NetNSPath string `json:"netns,omitempty"`
}

// GroupRules are a group's compiled rules per direction, highest priority
// first. A direction with rules is isolated: what no rule allows is dropped.
type GroupRules struct {
	In  []CompiledRule `json:"in,omitempty"`
	Out []CompiledRule `json:"out,omitempty"`
}

// CompiledRule is a rule with its peer resolved. No peer group and no peer
// networks: any peer.
type CompiledRule struct {
	Priority  int       `json:"priority"`
	Allow     bool      `json:"allow"`
	PeerGroup string    `json:"peerGroup,omitempty"` // key of a group in Members
	PeerNets  []string  `json:"peerNets,omitempty"`  // CIDRs
	Proto     int       `json:"proto,omitempty"`     // 0: any
	Ports     PortRange `json:"ports"`               // destination ports; zero: any
	Origin    string    `json:"origin"`              // policy/rule, for messages
}

// PolicyEnforcer is implemented by drivers that enforce policy and QoS on
// the host. The agent calls SetPolicy after every sync of the driver's
// endpoints (and, so that new endpoints are never open, also before their
// EnsureEndpoint when it can).
type PolicyEnforcer interface {
	// SetPolicy makes the host's dataplane enforce p in one atomic step and
	// returns the generation in force afterwards: p.Generation on success,
	// the previous one if nothing could be applied.
	SetPolicy(ctx context.Context, p HostPolicy) (int64, error)
	// AppliedPolicy reads back from the dataplane the generation in force
	// (-1: none), so that a restarted agent reports what it found.
	AppliedPolicy(ctx context.Context) (int64, error)
}

// denyAll is what a group that cannot be compiled gets: closed both ways.
var denyAll = []CompiledRule{{Priority: 0, Allow: false, Origin: "(group cannot be compiled)"}}

// modelIndex holds a model's objects by key.
type modelIndex struct {
	nets     map[string]Network
	groups   map[string]Group
	policies map[string]Policy
	profiles map[string]Profile
}

func indexModel(m PolicyModel) modelIndex {
	x := modelIndex{nets: map[string]Network{}, groups: map[string]Group{}, policies: map[string]Policy{}, profiles: map[string]Profile{}}
	for _, n := range m.Networks {
		x.nets[n.Key()] = n
	}
	for _, g := range m.Groups {
		x.groups[g.Key()] = g
	}
	for _, p := range m.Policies {
		x.policies[p.Key()] = p
	}
	for _, p := range m.Profiles {
		x.profiles[p.Key()] = p
	}
	return x
}

// groupOf returns the key of the group of e ("" for none).
func groupOf(e Endpoint) string {
	if e.Group == "" {
		return ""
	}
	return e.Tenant + "/" + e.Group
}

// compileGroup resolves a group's policies into rules per direction.
func (x modelIndex) compileGroup(g Group) (GroupRules, error) {
	var out GroupRules
	n, ok := x.nets[g.NetworkKey()]
	if !ok {
		return out, fmt.Errorf("%w: group %s: network %s does not exist", ErrNotFound, g.Key(), g.NetworkKey())
	}
	if err := ValidateGroup(g, n); err != nil {
		return out, err
	}
	var pols []Policy
	for _, name := range g.Policies {
		p, ok := x.policies[g.Tenant+"/"+name]
		if !ok {
			return out, fmt.Errorf("%w: group %s: policy %s/%s does not exist", ErrNotFound, g.Key(), g.Tenant, name)
		}
		if err := ValidatePolicy(p); err != nil {
			return out, fmt.Errorf("group %s: %w", g.Key(), err)
		}
		pols = append(pols, p)
	}
	if err := CheckTies("group "+g.Key(), pols); err != nil {
		return out, err
	}
	for _, p := range pols {
		for _, r := range p.Rules {
			c, err := x.compileRule(g.Tenant, r)
			if err != nil {
				return GroupRules{}, fmt.Errorf("group %s: policy %s: %w", g.Key(), p.Name, err)
			}
			c.Origin = p.Name + "/" + r.Name
			if r.Direction == DirIn {
				out.In = append(out.In, c)
			} else {
				out.Out = append(out.Out, c)
			}
		}
	}
	order := func(a, b CompiledRule) int {
		return cmp.Or(cmp.Compare(b.Priority, a.Priority), cmp.Compare(a.Origin, b.Origin))
	}
	slices.SortFunc(out.In, order)
	slices.SortFunc(out.Out, order)
	return out, nil
}

func (x modelIndex) compileRule(tenant string, r Rule) (CompiledRule, error) {
	c := CompiledRule{Priority: r.Priority, Allow: r.Action == ActionAllow}
	c.Proto, _ = ParseProtocol(r.Protocol)
	c.Ports, _ = ParsePortRange(r.Port)
	group, network, ip, _ := r.peer()
	switch {
	case group != "":
		c.PeerGroup = tenant + "/" + group
		if _, ok := x.groups[c.PeerGroup]; !ok {
			return c, fmt.Errorf("%w: rule %s: group %s does not exist", ErrNotFound, r.Name, c.PeerGroup)
		}
	case network != "":
		n, ok := x.nets[tenant+"/"+network]
		if !ok {
			return c, fmt.Errorf("%w: rule %s: network %s/%s does not exist", ErrNotFound, r.Name, tenant, network)
		}
		c.PeerNets = []string{n.Subnet}
	case ip != "":
		sn, _ := ParsePeerIP(ip)
		c.PeerNets = []string{sn.String()}
	}
	return c, nil
}

// CompileHost computes what driver must enforce on host. A group that cannot
// be compiled (a policy or peer that does not exist, conflicting rules, a
// driver that cannot police) is closed in both directions, never opened, and
// reported among the errors, one per problem.
func CompileHost(m PolicyModel, host, driver string) (HostPolicy, []error) {
	x := indexModel(m)
	hp := HostPolicy{Generation: m.Generation, Groups: map[string]GroupRules{}, Members: map[string][]string{}}
	var errs []error
	compiled := map[string]GroupRules{}
	failed := map[string]bool{}
	rulesOf := func(key string) GroupRules {
		if r, ok := compiled[key]; ok || failed[key] {
			return r
		}
		g, ok := x.groups[key]
		var r GroupRules
		var err error
		if !ok {
			err = fmt.Errorf("%w: group %s does not exist", ErrNotFound, key)
		} else {
			r, err = x.compileGroup(g)
		}
		if err != nil {
			errs = append(errs, err)
			failed[key] = true
			r = GroupRules{In: denyAll, Out: denyAll}
		}
		compiled[key] = r
		return r
	}
	// Which of the driver's networks are policed: one of their groups has rules.
	policed := map[string]bool{}
	for _, g := range m.Groups {
		n, ok := x.nets[g.NetworkKey()]
		if !ok || n.Driver != driver {
			continue
		}
		if r := rulesOf(g.Key()); len(r.In)+len(r.Out) > 0 {
			policed[n.Key()] = true
		}
	}
	for _, k := range m.Policed {
		if n, ok := x.nets[k]; ok && n.Driver == driver {
			policed[k] = true
		}
	}
	nets := map[string]bool{}
	for _, e := range m.Endpoints {
		n, ok := x.nets[e.NetworkKey()]
		if e.Host != host || !ok || n.Driver != driver {
			continue
		}
		pe := PolicyEndpoint{Key: e.Key(), Network: n.Key(), IP: e.IP, MAC: e.MAC, Group: groupOf(e)}
		if pe.Group != "" {
			g, ok := x.groups[pe.Group]
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%w: endpoint %s: group %s does not exist", ErrNotFound, e.Key(), pe.Group))
				compiled[pe.Group], failed[pe.Group] = GroupRules{In: denyAll, Out: denyAll}, true
				policed[n.Key()] = true
			case g.NetworkKey() != n.Key():
				errs = append(errs, fmt.Errorf("%w: endpoint %s of network %s is in group %s of network %s", ErrInvalid, e.Key(), n.Key(), g.Key(), g.NetworkKey()))
				pe.Group = e.Tenant + "/" + e.Group + "@" + n.Key() // a closed group of its own
				compiled[pe.Group], failed[pe.Group] = GroupRules{In: denyAll, Out: denyAll}, true
				policed[n.Key()] = true
			case g.Profile != "":
				p, ok := x.profiles[g.Tenant+"/"+g.Profile]
				if !ok {
					errs = append(errs, fmt.Errorf("%w: group %s: profile %s/%s does not exist", ErrNotFound, g.Key(), g.Tenant, g.Profile))
					break
				}
				q, err := p.QoS()
				if err != nil {
					errs = append(errs, fmt.Errorf("group %s: %w", g.Key(), err))
					break
				}
				pe.QoS = &q
			}
		}
		if !policed[n.Key()] && pe.QoS == nil {
			continue
		}
		hp.Endpoints = append(hp.Endpoints, pe)
		nets[n.Key()] = true
	}
	for _, k := range slices.Sorted(maps.Keys(nets)) {
		hp.Networks = append(hp.Networks, PolicyNetwork{Key: k, Subnet: x.nets[k].Subnet, Policed: policed[k]})
	}
	sort.Slice(hp.Endpoints, func(i, j int) bool { return hp.Endpoints[i].Key < hp.Endpoints[j].Key })
	peers := map[string]bool{}
	for _, e := range hp.Endpoints {
		if e.Group == "" {
			continue
		}
		r := rulesOf(e.Group)
		if len(r.In)+len(r.Out) == 0 {
			continue
		}
		hp.Groups[e.Group] = r
		for _, c := range append(slices.Clone(r.In), r.Out...) {
			if c.PeerGroup != "" {
				peers[c.PeerGroup] = true
			}
		}
	}
	for _, e := range m.Endpoints {
		if g := groupOf(e); peers[g] {
			if ip, err := ParseIPv4(e.IP); err == nil {
				hp.Members[g] = append(hp.Members[g], ip.String())
			}
		}
	}
	for g := range peers {
		ips := hp.Members[g]
		slices.Sort(ips)
		hp.Members[g] = slices.Compact(ips)
	}
	return hp, errs
}

// Verdict is the model's answer for a new connection from endpoint src to
// endpoint dst with protocol proto and destination port (0 without ports):
// src's group must let it out and dst's group let it in. It reads the model
// directly, independently of CompileHost, so that tests can check a
// dataplane against it. A group that cannot be compiled denies everything.
func (m PolicyModel) Verdict(src, dst Endpoint, proto, port int) bool {
	x := indexModel(m)
	return x.verdictDir(src, dst, DirOut, proto, port) && x.verdictDir(dst, src, DirIn, proto, port)
}

// verdictDir evaluates the rules of self's group in direction dir against peer.
func (x modelIndex) verdictDir(self, peer Endpoint, dir string, proto, port int) bool {
	key := groupOf(self)
	if key == "" {
		return true
	}
	g, ok := x.groups[key]
	if !ok || g.NetworkKey() != self.NetworkKey() {
		return false
	}
	if _, err := x.compileGroup(g); err != nil {
		return false
	}
	var rules []Rule
	for _, name := range g.Policies {
		for _, r := range x.policies[g.Tenant+"/"+name].Rules {
			if r.Direction == dir {
				rules = append(rules, r)
			}
		}
	}
	if len(rules) == 0 {
		return true
	}
	sort.SliceStable(rules, func(i, j int) bool { return rules[i].Priority > rules[j].Priority })
	peerIP := net.ParseIP(peer.IP)
	for _, r := range rules {
		if p, _ := ParseProtocol(r.Protocol); p != 0 && p != proto {
			continue
		}
		if pr, _ := ParsePortRange(r.Port); !pr.Any() && (port < pr.Lo || port > pr.Hi) {
			continue
		}
		group, network, ip, _ := r.peer()
		switch {
		case group != "" && groupOf(peer) != g.Tenant+"/"+group:
			continue
		case network != "":
			_, sn, err := net.ParseCIDR(x.nets[g.Tenant+"/"+network].Subnet)
			if err != nil || !sn.Contains(peerIP) {
				continue
			}
		case ip != "":
			if sn, _ := ParsePeerIP(ip); !sn.Contains(peerIP) {
				continue
			}
		}
		return r.Action == ActionAllow
	}
	return false
}
