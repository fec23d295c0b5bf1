package state

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/netplugin/netplugin/core"
)

// The policy part of a HostView: the groups of the host's endpoints, their
// policies and profiles, and for every group or network those policies'
// rules name as a peer, its members (index/group/<t>/<g>/) or its record.
// Each is a range of its own, started when something the host needs names
// it and stopped when nothing does, so that a membership change of a group
// no local policy names never reaches the host.

// watched is one policy range of the view.
type watched[T any] struct {
	c      *Cache[T]
	cancel context.CancelFunc
}

// policyRanges are the view's policy ranges, by their key (or prefix).
type policyRanges struct {
	groups   map[string]*watched[core.Group]
	policies map[string]*watched[core.Policy]
	profiles map[string]*watched[core.Profile]
	members  map[string]*watched[core.Endpoint] // by groupMembersOf
	peerNets map[string]*watched[core.Network]  // by networkKey
	// netGroups are the groups of each served network (by usesOf), whose
	// records say whether another host polices the network.
	netGroups map[string]*watched[string]
}

func newPolicyRanges() *policyRanges {
	return &policyRanges{groups: map[string]*watched[core.Group]{}, policies: map[string]*watched[core.Policy]{},
		profiles: map[string]*watched[core.Profile]{}, members: map[string]*watched[core.Endpoint]{}, peerNets: map[string]*watched[core.Network]{},
		netGroups: map[string]*watched[string]{}}
}

func (p *policyRanges) stop() {
	stopAll(p.groups)
	stopAll(p.policies)
	stopAll(p.profiles)
	stopAll(p.members)
	stopAll(p.peerNets)
	stopAll(p.netGroups)
}

func stopAll[T any](m map[string]*watched[T]) {
	for k, w := range m {
		w.cancel()
		delete(m, k)
	}
}

// syncRanges makes the ranges of m those of want: new ones start, unwanted ones stop.
func syncRanges[T any](v *HostView, m map[string]*watched[T], want map[string]bool, mk func(key string) *Cache[T]) {
	for k, w := range m {
		if !want[k] {
			w.cancel()
			delete(m, k)
		}
	}
	for k := range want {
		if m[k] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(v.ctx)
		c := mk(k)
		m[k] = &watched[T]{c: c, cancel: cancel}
		go c.Run(ctx)
	}
}

func values[T any](m map[string]*watched[T], fn func(T)) {
	for _, w := range m {
		w.c.each(func(_ string, it Item[T]) {
			if it.Err == nil {
				fn(it.Value)
			}
		})
	}
}

// decodeRecord decodes a policy object's record and checks that key names it.
func decodeRecord[T interface{ Key() string }](prefix string) func(string, []byte) (T, error) {
	return func(k string, b []byte) (T, error) {
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			return v, err
		}
		if prefix+v.Key() != k {
			return v, fmt.Errorf("names %s", v.Key())
		}
		return v, nil
	}
}

// refreshPolicy starts and stops the policy ranges after a change of the
// host's endpoints or of a group or policy the view holds.
func (v *HostView) refreshPolicy() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ctx == nil || v.ctx.Err() != nil {
		return
	}
	p := v.pol
	wantNetGroups := map[string]bool{}
	for nk := range v.nets {
		t, n, _ := strings.Cut(nk, "/")
		wantNetGroups[usesOf(t, kindNetwork, n)] = true
	}
	syncRanges(v, p.netGroups, wantNetGroups, func(k string) *Cache[string] {
		return newCache(v.s.cli, k, prefixEnd(k), func(key string, _ []byte) (string, error) {
			g, _ := strings.CutPrefix(strings.TrimPrefix(key, k), kindGroup+"/")
			return g, nil // a policy naming the network as a peer: not "/"-free, skipped below
		}, v.refreshAndPoke, v.log, &v.events)
	})
	local := v.localGroups()
	wantGroups := map[string]bool{}
	for k := range local {
		wantGroups[k] = true
	}
	for k, w := range p.netGroups {
		t, _, _ := strings.Cut(strings.TrimPrefix(k, usesPrefix), "/")
		w.c.each(func(_ string, it Item[string]) {
			if it.Err == nil && core.ValidName("group", it.Value) == nil {
				wantGroups[groupKey(t, it.Value)] = true
			}
		})
	}
	values(p.policies, func(pol core.Policy) {
		for _, r := range policyRefs(pol) {
			if r.kind == kindGroup {
				wantGroups[groupKey(pol.Tenant, r.name)] = true
			}
		}
	})
	syncRanges(v, p.groups, wantGroups, func(k string) *Cache[core.Group] {
		return newCache(v.s.cli, k, exactEnd(k), decodeRecord[core.Group](groupPrefix), v.refreshAndPoke, v.log, &v.events)
	})
	wantPolicies, wantProfiles := map[string]bool{}, map[string]bool{}
	values(p.groups, func(g core.Group) {
		if !local[groupKey(g.Tenant, g.Name)] {
			return
		}
		for _, name := range g.Policies {
			wantPolicies[policyKey(g.Tenant, name)] = true
		}
		if g.Profile != "" {
			wantProfiles[profileKey(g.Tenant, g.Profile)] = true
		}
	})
	syncRanges(v, p.policies, wantPolicies, func(k string) *Cache[core.Policy] {
		return newCache(v.s.cli, k, exactEnd(k), decodeRecord[core.Policy](policyPrefix), v.refreshAndPoke, v.log, &v.events)
	})
	syncRanges(v, p.profiles, wantProfiles, func(k string) *Cache[core.Profile] {
		return newCache(v.s.cli, k, exactEnd(k), decodeRecord[core.Profile](profilePrefix), v.poke, v.log, &v.events)
	})
	wantMembers, wantNets := map[string]bool{}, map[string]bool{}
	values(p.policies, func(pol core.Policy) {
		for _, r := range policyRefs(pol) {
			if r.kind == kindGroup {
				wantMembers[groupMembersOf(pol.Tenant, r.name)] = true
			} else {
				wantNets[networkKey(pol.Tenant, r.name)] = true
			}
		}
	})
	syncRanges(v, p.members, wantMembers, func(k string) *Cache[core.Endpoint] {
		return newCache(v.s.cli, k, prefixEnd(k), func(key string, b []byte) (core.Endpoint, error) {
			return decodeIndexedEndpoint(key, b, k, "")
		}, v.poke, v.log, &v.events)
	})
	syncRanges(v, p.peerNets, wantNets, func(k string) *Cache[core.Network] {
		return newCache(v.s.cli, k, exactEnd(k), decodeNetwork, v.poke, v.log, &v.events)
	})
}

// localGroups are the keys of the groups of the host's endpoints.
func (v *HostView) localGroups() map[string]bool {
	out := map[string]bool{}
	v.local.each(func(_ string, it Item[core.Endpoint]) {
		if it.Err == nil && it.Value.Group != "" {
			out[groupKey(it.Value.Tenant, it.Value.Group)] = true
		}
	})
	return out
}

func (v *HostView) refreshAndPoke() {
	v.refreshPolicy()
	v.poke()
}

// PolicyState is the policy part of a HostState.
type PolicyState struct {
	Groups   []core.Group
	Policies []core.Policy
	Profiles []core.Profile
	// Members are the endpoints, on every host, of each group a policy
	// above names as a peer, by group key.
	Members map[string][]core.Endpoint
	// Networks are the records of the networks a policy names as a peer.
	Networks []core.Network
	// Policed are served networks a group of other hosts polices.
	Policed []string
	// Loading: a range is not listed yet; what the view holds may lack
	// objects that exist.
	Loading bool
	// Generation is the highest revision the view's ranges reflect: every
	// write up to it that the host needs is in the snapshot.
	Generation int64
}

// policySnapshot returns the policy part of the view; v.mu must not be held.
func (v *HostView) policySnapshot() PolicyState {
	v.mu.Lock()
	defer v.mu.Unlock()
	ps := PolicyState{Members: map[string][]core.Endpoint{}}
	p := v.pol
	gen := v.local.Rev()
	note := func(ready bool, rev int64) {
		ps.Loading = ps.Loading || !ready
		gen = max(gen, rev)
	}
	for _, w := range p.groups {
		note(w.c.isReady(), w.c.Rev())
	}
	for _, w := range p.policies {
		note(w.c.isReady(), w.c.Rev())
	}
	for _, w := range p.profiles {
		note(w.c.isReady(), w.c.Rev())
	}
	for _, w := range p.peerNets {
		note(w.c.isReady(), w.c.Rev())
	}
	for k, w := range p.members {
		note(w.c.isReady(), w.c.Rev())
		gk := strings.TrimSuffix(strings.TrimPrefix(k, groupIndexPrefix), "/")
		w.c.each(func(_ string, it Item[core.Endpoint]) {
			if it.Err == nil {
				ps.Members[gk] = append(ps.Members[gk], it.Value)
			}
		})
		sort.Slice(ps.Members[gk], func(i, j int) bool { return ps.Members[gk][i].Name < ps.Members[gk][j].Name })
	}
	for _, n := range v.nets {
		gen = max(gen, n.spec.Rev(), n.members.Rev())
	}
	for _, w := range p.netGroups {
		note(w.c.isReady(), w.c.Rev())
	}
	local := v.localGroups()
	policed := map[string]bool{}
	values(p.groups, func(g core.Group) {
		if local[groupKey(g.Tenant, g.Name)] {
			ps.Groups = append(ps.Groups, g)
			return
		}
		// Another host's group: its rules are that host's to enforce.
		if len(g.Policies) > 0 {
			policed[g.NetworkKey()] = true
		}
		ps.Groups = append(ps.Groups, core.Group{Tenant: g.Tenant, Name: g.Name, Network: g.Network})
	})
	ps.Policed = slices.Sorted(maps.Keys(policed))
	values(p.policies, func(x core.Policy) { ps.Policies = append(ps.Policies, x) })
	values(p.profiles, func(x core.Profile) { ps.Profiles = append(ps.Profiles, x) })
	values(p.peerNets, func(x core.Network) { ps.Networks = append(ps.Networks, x) })
	sort.Slice(ps.Groups, func(i, j int) bool { return ps.Groups[i].Key() < ps.Groups[j].Key() })
	sort.Slice(ps.Policies, func(i, j int) bool { return ps.Policies[i].Key() < ps.Policies[j].Key() })
	sort.Slice(ps.Profiles, func(i, j int) bool { return ps.Profiles[i].Key() < ps.Profiles[j].Key() })
	sort.Slice(ps.Networks, func(i, j int) bool { return ps.Networks[i].Key() < ps.Networks[j].Key() })
	ps.Generation = gen
	return ps
}

// PolicyModel is the model a host's policy is compiled from: the snapshot's
// served networks and endpoints with its policy part.
func (st HostState) PolicyModel() core.PolicyModel {
	m := core.PolicyModel{Generation: st.Policy.Generation, Groups: st.Policy.Groups, Policies: st.Policy.Policies,
		Profiles: st.Policy.Profiles, Policed: st.Policy.Policed}
	seen := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(st.Networks)) {
		m.Networks = append(m.Networks, st.Networks[k])
		seen[k] = true
	}
	for _, n := range st.Policy.Networks {
		if !seen[n.Key()] {
			m.Networks = append(m.Networks, n)
			seen[n.Key()] = true
		}
	}
	eps := map[string]bool{}
	add := func(e core.Endpoint) {
		if !eps[e.Key()] {
			eps[e.Key()] = true
			m.Endpoints = append(m.Endpoints, e)
		}
	}
	for _, e := range st.Local {
		add(e)
	}
	for _, g := range slices.Sorted(maps.Keys(st.Policy.Members)) {
		for _, e := range st.Policy.Members[g] {
			add(e)
		}
	}
	return m
}
