package state

// The policy objects of a -cfg document: policies (with their rules),
// netprofiles and groups per tenant, and endpoints' groups. As for networks,
// what the document does not name is deleted, and a document that does not
// hold together (a rule naming a group it lacks, a group whose policies tie,
// a policed group on a macvlan network, an endpoint in a group of another
// network, a group deleted under an endpoint Docker keeps) is refused whole.

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/netplugin/netplugin/core"
)

// PolicyDocument is one policy and its rules.
type PolicyDocument struct {
	Name  string      `json:"name"`
	Rules []core.Rule `json:"rules"`
}

// ProfileDocument is one netprofile.
type ProfileDocument struct {
	Name         string `json:"name"`
	BandwidthIn  string `json:"bandwidthIn,omitempty"`
	BandwidthOut string `json:"bandwidthOut,omitempty"`
	Burst        int64  `json:"burst,omitempty"`
	DSCP         *int   `json:"dscp,omitempty"`
}

// GroupDocument is one endpoint group.
type GroupDocument struct {
	Name     string   `json:"name"`
	Network  string   `json:"network"`
	Policies []string `json:"policies,omitempty"`
	Profile  string   `json:"netprofile,omitempty"`
}

// docPolicy is the policy part of a document, by object key.
type docPolicy struct {
	policies map[string]core.Policy
	profiles map[string]core.Profile
	groups   map[string]core.Group
}

// stored policy objects of a snapshot.
type storedPolicy struct {
	policies map[string]core.Policy
	profiles map[string]core.Profile
	groups   map[string]core.Group
}

// decodePolicyKey adds a stored policy object to sp; false: not one.
func (sp *storedPolicy) decode(k, val string) (bool, error) {
	var err error
	switch {
	case strings.HasPrefix(k, policyPrefix):
		var x core.Policy
		if err = json.Unmarshal([]byte(val), &x); err == nil && policyKey(x.Tenant, x.Name) == k {
			sp.policies[x.Key()] = x
		}
	case strings.HasPrefix(k, profilePrefix):
		var x core.Profile
		if err = json.Unmarshal([]byte(val), &x); err == nil && profileKey(x.Tenant, x.Name) == k {
			sp.profiles[x.Key()] = x
		}
	case strings.HasPrefix(k, groupPrefix):
		var x core.Group
		if err = json.Unmarshal([]byte(val), &x); err == nil && groupKey(x.Tenant, x.Name) == k {
			sp.groups[x.Key()] = x
		}
	default:
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("decode %s: %w", k, err)
	}
	return true, nil
}

// readPolicyDocument checks the names of a tenant's policy objects and adds them to dp.
func readPolicyDocument(dp *docPolicy, td TenantDocument) error {
	for _, pd := range td.Policies {
		pol := core.Policy{Tenant: td.Name, Name: pd.Name, Rules: pd.Rules}
		if pol.Rules == nil {
			pol.Rules = []core.Rule{}
		}
		if err := core.ValidatePolicy(pol); err != nil {
			return err
		}
		if _, dup := dp.policies[pol.Key()]; dup {
			return fmt.Errorf("%w: policy %s appears twice", core.ErrInvalid, pol.Key())
		}
		dp.policies[pol.Key()] = pol
	}
	for _, pd := range td.Profiles {
		pr := core.Profile{Tenant: td.Name, Name: pd.Name, BandwidthIn: pd.BandwidthIn, BandwidthOut: pd.BandwidthOut, Burst: pd.Burst, DSCP: pd.DSCP}
		if err := core.ValidateProfile(pr); err != nil {
			return err
		}
		if _, dup := dp.profiles[pr.Key()]; dup {
			return fmt.Errorf("%w: netprofile %s appears twice", core.ErrInvalid, pr.Key())
		}
		dp.profiles[pr.Key()] = pr
	}
	for _, gd := range td.Groups {
		g := core.Group{Tenant: td.Name, Name: gd.Name, Network: gd.Network, Policies: gd.Policies, Profile: gd.Profile}
		if err := core.ValidName("group", g.Name); err != nil {
			return err
		}
		if _, dup := dp.groups[g.Key()]; dup {
			return fmt.Errorf("%w: group %s appears twice", core.ErrInvalid, g.Key())
		}
		if hasDup(g.Policies) {
			return fmt.Errorf("%w: group %s names a policy twice", core.ErrInvalid, g.Key())
		}
		dp.groups[g.Key()] = g
	}
	return nil
}

// planPolicyDeletes deletes the stored policy objects the document does not
// name, with their references; kept are the stored endpoints that stay
// without the document naming them (Docker's).
func (p *planner) planPolicyDeletes(dp *docPolicy, kept []core.Endpoint) error {
	sp := p.v.pol
	for _, e := range kept {
		if e.Group != "" {
			if _, ok := dp.groups[e.Tenant+"/"+e.Group]; !ok {
				return fmt.Errorf("%w: group %s/%s is not in the document, but endpoint %s, created by Docker and kept, is in it", core.ErrInUse, e.Tenant, e.Group, e.Key())
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(sp.groups)) {
		if _, ok := dp.groups[k]; !ok {
			g := sp.groups[k]
			item := p.del(nil, groupKey(g.Tenant, g.Name))
			for _, r := range groupRefs(g) {
				item = p.del(item, usesKey(g.Tenant, r, kindGroup, g.Name))
			}
			p.add(item, Change{"delete", "group", k, ""})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(sp.policies)) {
		if _, ok := dp.policies[k]; !ok {
			pol := sp.policies[k]
			item := p.del(nil, policyKey(pol.Tenant, pol.Name))
			for _, r := range policyRefs(pol) {
				item = p.del(item, usesKey(pol.Tenant, r, kindPolicy, pol.Name))
			}
			p.add(item, Change{"delete", "policy", k, ""})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(sp.profiles)) {
		if _, ok := dp.profiles[k]; !ok {
			pr := sp.profiles[k]
			p.add(p.del(nil, profileKey(pr.Tenant, pr.Name)), Change{"delete", "netprofile", k, ""})
		}
	}
	return nil
}

// planPolicyPuts checks the document's policy objects against the networks
// the plan leaves (nets, by key) and writes what changed; eps are the
// document's endpoints.
func (p *planner) planPolicyPuts(dp *docPolicy, nets map[string]core.Network, eps []*docEP) error {
	for _, k := range slices.Sorted(maps.Keys(dp.groups)) {
		g := dp.groups[k]
		n, ok := nets[g.NetworkKey()]
		if !ok {
			return fmt.Errorf("%w: group %s names network %s, which the document does not have", core.ErrNotFound, k, g.Network)
		}
		if err := core.ValidateGroup(g, n); err != nil {
			return err
		}
		var pols []core.Policy
		for _, name := range g.Policies {
			pol, ok := dp.policies[g.Tenant+"/"+name]
			if !ok {
				return fmt.Errorf("%w: group %s names policy %s, which the document does not have", core.ErrNotFound, k, name)
			}
			pols = append(pols, pol)
		}
		if g.Profile != "" {
			if _, ok := dp.profiles[g.Tenant+"/"+g.Profile]; !ok {
				return fmt.Errorf("%w: group %s names netprofile %s, which the document does not have", core.ErrNotFound, k, g.Profile)
			}
		}
		if err := core.CheckTies("group "+k, pols); err != nil {
			return err
		}
	}
	for _, k := range slices.Sorted(maps.Keys(dp.policies)) {
		pol := dp.policies[k]
		for _, r := range policyRefs(pol) {
			_, okG := dp.groups[pol.Tenant+"/"+r.name]
			_, okN := nets[pol.Tenant+"/"+r.name]
			if (r.kind == kindGroup && !okG) || (r.kind == kindNetwork && !okN) {
				return fmt.Errorf("%w: policy %s names %s, which the document does not have", core.ErrNotFound, k, r)
			}
		}
	}
	for _, de := range eps {
		if de.doc.Group == "" {
			continue
		}
		g, ok := dp.groups[de.e.Tenant+"/"+de.doc.Group]
		if !ok {
			return fmt.Errorf("%w: endpoint %s names group %s, which the document does not have", core.ErrNotFound, de.e.Key(), de.doc.Group)
		}
		if g.Network != de.e.Network {
			return fmt.Errorf("%w: endpoint %s: group %s is in network %s, not %s", core.ErrInvalid, de.e.Key(), g.Key(), g.Network, de.e.Network)
		}
	}
	sp := p.v.pol
	for _, k := range slices.Sorted(maps.Keys(dp.profiles)) {
		pr := dp.profiles[k]
		cur, had := sp.profiles[k]
		if had && mustJSON(cur) == mustJSON(pr) {
			continue
		}
		p.add(p.put(nil, profileKey(pr.Tenant, pr.Name), mustJSON(pr)), Change{createOrUpdate(had), "netprofile", k, ""})
	}
	// Groups before the policies whose rules name them, as the store's
	// transactions would have them.
	for _, k := range slices.Sorted(maps.Keys(dp.groups)) {
		g := dp.groups[k]
		cur, had := sp.groups[k]
		if had && mustJSON(cur) == mustJSON(g) {
			continue
		}
		item := p.put(nil, groupKey(g.Tenant, g.Name), mustJSON(g))
		var old []ref
		if had {
			old = groupRefs(cur)
		}
		item = p.refItems(item, g.Tenant, kindGroup, g.Name, old, groupRefs(g))
		p.add(item, Change{createOrUpdate(had), "group", k, strings.Join(g.Policies, ",")})
	}
	for _, k := range slices.Sorted(maps.Keys(dp.policies)) {
		pol := dp.policies[k]
		cur, had := sp.policies[k]
		if had && mustJSON(cur) == mustJSON(pol) {
			continue
		}
		item := p.put(nil, policyKey(pol.Tenant, pol.Name), mustJSON(pol))
		var old []ref
		if had {
			old = policyRefs(cur)
		}
		item = p.refItems(item, pol.Tenant, kindPolicy, pol.Name, old, policyRefs(pol))
		p.add(item, Change{createOrUpdate(had), "policy", k, fmt.Sprintf("%d rules", len(pol.Rules))})
	}
	return nil
}

// refItems keeps the uses index of a user in step, as refOps does for the store.
func (p *planner) refItems(item []journalOp, t, ukind, u string, old, cur []ref) []journalOp {
	for _, r := range old {
		if !slices.Contains(cur, r) {
			item = p.del(item, usesKey(t, r, ukind, u))
		}
	}
	for _, r := range cur {
		if !slices.Contains(old, r) {
			item = p.put(item, usesKey(t, r, ukind, u), "")
		}
	}
	return item
}

func createOrUpdate(had bool) string {
	if had {
		return "update"
	}
	return "create"
}
