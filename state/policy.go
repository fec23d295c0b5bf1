package state

// Policy objects: policies (their rules inside the record, so that a rule
// write is one transaction on one key that re-checks ties against what it
// read), profiles and groups. References between objects are kept as index
// keys under index/uses/ written in the same transaction as the object that
// refers, so that deleting an object in use is one compare:
//
//	config/policies/<t>/<p>                       a policy and its rules
//	config/profiles/<t>/<p>                       a network profile
//	config/groups/<t>/<g>                         an endpoint group
//	index/group/<t>/<g>/<e>                       the endpoint, under its group (membership)
//	index/uses/<t>/<kind>/<name>/<ukind>/<user>   object <kind>/<name> is named by <ukind>/<user>
//
// kind is network, group, policy or profile; a group names its network,
// policies and profile, a policy the groups and networks its rules name as peers.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

const (
	policyPrefix     = configPrefix + "policies/"
	profilePrefix    = configPrefix + "profiles/"
	groupPrefix      = configPrefix + "groups/"
	groupIndexPrefix = indexPrefix + "group/"
	usesPrefix       = indexPrefix + "uses/"
)

// Kinds of objects that others refer to.
const (
	kindNetwork = "network"
	kindGroup   = "group"
	kindPolicy  = "policy"
	kindProfile = "profile"
)

func policyKey(t, p string) string         { return policyPrefix + t + "/" + p }
func policiesOf(t string) string           { return policyPrefix + t + "/" }
func profileKey(t, p string) string        { return profilePrefix + t + "/" + p }
func profilesOf(t string) string           { return profilePrefix + t + "/" }
func groupKey(t, g string) string          { return groupPrefix + t + "/" + g }
func groupsOf(t string) string             { return groupPrefix + t + "/" }
func groupMembersOf(t, g string) string    { return groupIndexPrefix + t + "/" + g + "/" }
func groupMemberKey(t, g, e string) string { return groupMembersOf(t, g) + e }
func usesOf(t, kind, name string) string   { return usesPrefix + t + "/" + kind + "/" + name + "/" }
func usesKey(t string, r ref, ukind, u string) string {
	return usesOf(t, r.kind, r.name) + ukind + "/" + u
}

// objectKey is the canonical key of an object a reference names.
func objectKey(t string, r ref) string {
	switch r.kind {
	case kindNetwork:
		return networkKey(t, r.name)
	case kindGroup:
		return groupKey(t, r.name)
	case kindPolicy:
		return policyKey(t, r.name)
	default:
		return profileKey(t, r.name)
	}
}

// ref is an object of the same tenant that another names.
type ref struct{ kind, name string }

func (r ref) String() string { return r.kind + " " + r.name }

// policyRefs are the groups and networks a policy's rules name as peers.
func policyRefs(p core.Policy) []ref {
	var out []ref
	for _, r := range p.Rules {
		for _, g := range []string{r.FromGroup, r.ToGroup} {
			if g != "" {
				out = append(out, ref{kindGroup, g})
			}
		}
		for _, n := range []string{r.FromNetwork, r.ToNetwork} {
			if n != "" {
				out = append(out, ref{kindNetwork, n})
			}
		}
	}
	return sortRefs(out)
}

// groupRefs are the network, policies and profile a group names.
func groupRefs(g core.Group) []ref {
	out := []ref{{kindNetwork, g.Network}}
	for _, p := range g.Policies {
		out = append(out, ref{kindPolicy, p})
	}
	if g.Profile != "" {
		out = append(out, ref{kindProfile, g.Profile})
	}
	return sortRefs(out)
}

func sortRefs(rs []ref) []ref {
	sort.Slice(rs, func(i, j int) bool { return rs[i].kind+"/"+rs[i].name < rs[j].kind+"/"+rs[j].name })
	return slices.Compact(rs)
}

// refOps keeps the uses index of user (ukind/u in tenant t) in step when its
// references change from old to cur.
func refOps(t, ukind, u string, old, cur []ref) []clientv3.Op {
	var ops []clientv3.Op
	for _, r := range old {
		if !slices.Contains(cur, r) {
			ops = append(ops, clientv3.OpDelete(usesKey(t, r, ukind, u)))
		}
	}
	for _, r := range cur {
		if !slices.Contains(old, r) {
			ops = append(ops, clientv3.OpPut(usesKey(t, r, ukind, u), ""))
		}
	}
	return ops
}

// checkRefs reads the objects refs name and returns compares that hold while
// each is as read; what does not exist is an error naming who names it.
func (s *Store) checkRefs(ctx context.Context, t, who string, refs []ref) ([]clientv3.Cmp, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	gets := make([]clientv3.Op, len(refs))
	for i, r := range refs {
		gets[i] = clientv3.OpGet(objectKey(t, r), clientv3.WithKeysOnly())
	}
	resp, err := s.readTxn(ctx, gets)
	if err != nil {
		return nil, err
	}
	var cmps []clientv3.Cmp
	for i, r := range refs {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil, fmt.Errorf("%w: %s names %s, which does not exist in tenant %s", core.ErrNotFound, who, r, t)
		}
		cmps = append(cmps, unchanged(objectKey(t, r), kvs[0].ModRevision))
	}
	return cmps, nil
}

// readTxn runs gets in one request.
func (s *Store) readTxn(ctx context.Context, gets []clientv3.Op) (*clientv3.TxnResponse, error) {
	octx, cancel := s.op(ctx)
	defer cancel()
	r, err := s.cli.Txn(octx).Then(gets...).Commit()
	return r, wrapErr(err)
}

// firstUser names one user of an object (ukind user), or "".
func (s *Store) firstUser(ctx context.Context, t, kind, name string) (string, error) {
	r, err := s.get(ctx, usesOf(t, kind, name), clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil || len(r.Kvs) == 0 {
		return "", err
	}
	rest := strings.TrimPrefix(string(r.Kvs[0].Key), usesOf(t, kind, name))
	return strings.Replace(rest, "/", " ", 1), nil
}

// getJSON reads one record into v; ok is false when it does not exist.
func (s *Store) getJSON(ctx context.Context, key string, v any) (rev int64, ok bool, err error) {
	r, err := s.get(ctx, key)
	if err != nil {
		return 0, false, err
	}
	if len(r.Kvs) == 0 {
		return 0, false, nil
	}
	if err := json.Unmarshal(r.Kvs[0].Value, v); err != nil {
		return 0, false, fmt.Errorf("decode %s: %w", key, err)
	}
	return r.Kvs[0].ModRevision, true, nil
}

func defaultTenant(t string) string {
	if t == "" {
		return core.DefaultTenant
	}
	return t
}

// GetPolicy returns a policy and its revision.
func (s *Store) GetPolicy(ctx context.Context, tenant, name string) (core.Policy, int64, error) {
	tenant = defaultTenant(tenant)
	var p core.Policy
	if err := core.ValidName("policy", name); err != nil {
		return p, 0, err
	}
	rev, ok, err := s.getJSON(ctx, policyKey(tenant, name), &p)
	if err == nil && !ok {
		if err := s.tenantExists(ctx, tenant); err != nil {
			return p, 0, err
		}
		err = fmt.Errorf("%w: unknown policy %q in tenant %q", core.ErrNotFound, name, tenant)
	}
	return p, rev, err
}

// Policies lists a tenant's policies.
func (s *Store) Policies(ctx context.Context, tenant string) ([]core.Policy, error) {
	tenant = defaultTenant(tenant)
	if err := s.tenantExists(ctx, tenant); err != nil {
		return nil, err
	}
	return list[core.Policy](ctx, s, policiesOf(tenant))
}

// CreatePolicy adds a policy, with the rules it carries.
func (s *Store) CreatePolicy(ctx context.Context, p core.Policy) (int64, error) {
	p.Tenant = defaultTenant(p.Tenant)
	if p.Rules == nil {
		p.Rules = []core.Rule{}
	}
	if err := core.ValidatePolicy(p); err != nil {
		return 0, err
	}
	if err := s.tenantExists(ctx, p.Tenant); err != nil {
		return 0, err
	}
	if ok, err := s.has(ctx, policyKey(p.Tenant, p.Name)); err != nil {
		return 0, err
	} else if ok {
		return 0, fmt.Errorf("%w: policy %q in tenant %q", core.ErrExists, p.Name, p.Tenant)
	}
	return s.putPolicy(ctx, nil, p, 0)
}

// AddRule adds a rule to a policy and returns the revision it was written at.
func (s *Store) AddRule(ctx context.Context, tenant, policy string, r core.Rule) (int64, error) {
	if err := core.ValidateRule(r); err != nil {
		return 0, err
	}
	p, rev, err := s.GetPolicy(ctx, tenant, policy)
	if err != nil {
		return 0, err
	}
	for _, o := range p.Rules {
		if o.Name == r.Name {
			return 0, fmt.Errorf("%w: rule %q in policy %s", core.ErrExists, r.Name, p.Key())
		}
	}
	old := p
	p.Rules = append(slices.Clone(p.Rules), r)
	return s.putPolicy(ctx, &old, p, rev)
}

// DeleteRule removes a rule of a policy and returns the revision it was written at.
func (s *Store) DeleteRule(ctx context.Context, tenant, policy, rule string) (int64, error) {
	p, rev, err := s.GetPolicy(ctx, tenant, policy)
	if err != nil {
		return 0, err
	}
	old := p
	p.Rules = slices.DeleteFunc(slices.Clone(p.Rules), func(r core.Rule) bool { return r.Name == rule })
	if len(p.Rules) == len(old.Rules) {
		return 0, fmt.Errorf("%w: unknown rule %q in policy %s", core.ErrNotFound, rule, p.Key())
	}
	return s.putPolicy(ctx, &old, p, rev)
}

// putPolicy writes p, stored as old at rev (nil, 0: new), in one transaction
// that holds only if the policy, the peers its rules name, the groups that
// use it and their other policies are all as read: the priority ties of
// every group that uses the policy are checked against exactly that.
func (s *Store) putPolicy(ctx context.Context, old *core.Policy, p core.Policy, rev int64) (int64, error) {
	if err := core.ValidatePolicy(p); err != nil {
		return 0, err
	}
	refs := policyRefs(p)
	cmps, err := s.checkRefs(ctx, p.Tenant, "policy "+p.Key(), refs)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		cmps = append(cmps, free(policyKey(p.Tenant, p.Name)))
	} else {
		cmps = append(cmps, unchanged(policyKey(p.Tenant, p.Name), rev))
		users, urev, err := s.usersOf(ctx, p.Tenant, kindPolicy, p.Name)
		if err != nil {
			return 0, err
		}
		// No group took the policy up since the read.
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(usesOf(p.Tenant, kindPolicy, p.Name)), "<", urev+1).WithPrefix())
		for _, u := range users {
			ukind, gname, _ := strings.Cut(u, "/")
			if ukind != kindGroup {
				continue
			}
			var g core.Group
			grev, ok, err := s.getJSON(ctx, groupKey(p.Tenant, gname), &g)
			if err != nil {
				return 0, err
			}
			if !ok {
				return 0, fmt.Errorf("policy %s changed concurrently; try again", p.Key())
			}
			cmps = append(cmps, unchanged(groupKey(p.Tenant, gname), grev))
			pols, pcmps, err := s.groupPolicies(ctx, g, p)
			if err != nil {
				return 0, err
			}
			cmps = append(cmps, pcmps...)
			if err := core.CheckTies("group "+g.Key(), pols); err != nil {
				return 0, err
			}
		}
	}
	var oldRefs []ref
	if old != nil {
		oldRefs = policyRefs(*old)
	}
	ops := append([]clientv3.Op{clientv3.OpPut(policyKey(p.Tenant, p.Name), mustJSON(p))}, refOps(p.Tenant, kindPolicy, p.Name, oldRefs, refs)...)
	r, err := s.txn(ctx, cmps, ops...)
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		return 0, fmt.Errorf("policy %s changed concurrently; try again", p.Key())
	}
	return r.Header.Revision, nil
}

// usersOf lists who names an object ("<ukind>/<name>"), and the revision read at.
func (s *Store) usersOf(ctx context.Context, t, kind, name string) ([]string, int64, error) {
	prefix := usesOf(t, kind, name)
	r, err := s.get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, 0, err
	}
	out := make([]string, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), prefix))
	}
	return out, r.Header.Revision, nil
}

// groupPolicies reads g's policies, with p (new, maybe not stored) in place
// of its stored version, and compares that hold while the others are as read.
func (s *Store) groupPolicies(ctx context.Context, g core.Group, p core.Policy) ([]core.Policy, []clientv3.Cmp, error) {
	var pols []core.Policy
	var cmps []clientv3.Cmp
	for _, name := range g.Policies {
		if name == p.Name {
			pols = append(pols, p)
			continue
		}
		var o core.Policy
		rev, ok, err := s.getJSON(ctx, policyKey(g.Tenant, name), &o)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			return nil, nil, fmt.Errorf("%w: group %s names policy %s, which does not exist in tenant %s", core.ErrNotFound, g.Key(), name, g.Tenant)
		}
		pols = append(pols, o)
		cmps = append(cmps, unchanged(policyKey(g.Tenant, name), rev))
	}
	return pols, cmps, nil
}

// deleteUnused deletes an object no other names, or says who does. members,
// when not "", is a prefix that must be empty too (a group's endpoints).
func (s *Store) deleteUnused(ctx context.Context, t, kind, name string, rev int64, members string, ops ...clientv3.Op) error {
	cmps := []clientv3.Cmp{unchanged(objectKey(t, ref{kind, name}), rev), emptyPrefix(usesOf(t, kind, name))}
	if members != "" {
		cmps = append(cmps, emptyPrefix(members))
	}
	r, err := s.txn(ctx, cmps, append([]clientv3.Op{clientv3.OpDelete(objectKey(t, ref{kind, name}))}, ops...)...)
	if err != nil {
		return err
	}
	if r.Succeeded {
		return nil
	}
	if u, err := s.firstUser(ctx, t, kind, name); err != nil {
		return err
	} else if u != "" {
		return fmt.Errorf("%w: %s %s/%s is used by %s", core.ErrInUse, kind, t, name, u)
	}
	if members != "" {
		r, err := s.get(ctx, members, clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		if len(r.Kvs) > 0 {
			return fmt.Errorf("%w: %s %s/%s still has endpoint %s; delete it first", core.ErrInUse, kind, t, name, lastSegment(string(r.Kvs[0].Key)))
		}
	}
	return fmt.Errorf("%s %s/%s changed concurrently; try again", kind, t, name)
}

// DeletePolicy removes a policy no group uses.
func (s *Store) DeletePolicy(ctx context.Context, tenant, name string) error {
	p, rev, err := s.GetPolicy(ctx, tenant, name)
	if err != nil {
		return err
	}
	return s.deleteUnused(ctx, p.Tenant, kindPolicy, p.Name, rev, "", refOps(p.Tenant, kindPolicy, p.Name, policyRefs(p), nil)...)
}

// GetProfile returns a profile and its revision.
func (s *Store) GetProfile(ctx context.Context, tenant, name string) (core.Profile, int64, error) {
	tenant = defaultTenant(tenant)
	var p core.Profile
	if err := core.ValidName("profile", name); err != nil {
		return p, 0, err
	}
	rev, ok, err := s.getJSON(ctx, profileKey(tenant, name), &p)
	if err == nil && !ok {
		if err := s.tenantExists(ctx, tenant); err != nil {
			return p, 0, err
		}
		err = fmt.Errorf("%w: unknown netprofile %q in tenant %q", core.ErrNotFound, name, tenant)
	}
	return p, rev, err
}

// Profiles lists a tenant's profiles.
func (s *Store) Profiles(ctx context.Context, tenant string) ([]core.Profile, error) {
	tenant = defaultTenant(tenant)
	if err := s.tenantExists(ctx, tenant); err != nil {
		return nil, err
	}
	return list[core.Profile](ctx, s, profilesOf(tenant))
}

// CreateProfile adds a network profile.
func (s *Store) CreateProfile(ctx context.Context, p core.Profile) (int64, error) {
	p.Tenant = defaultTenant(p.Tenant)
	if err := core.ValidateProfile(p); err != nil {
		return 0, err
	}
	if err := s.tenantExists(ctx, p.Tenant); err != nil {
		return 0, err
	}
	r, err := s.txn(ctx, []clientv3.Cmp{free(profileKey(p.Tenant, p.Name))}, clientv3.OpPut(profileKey(p.Tenant, p.Name), mustJSON(p)))
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		return 0, fmt.Errorf("%w: netprofile %q in tenant %q", core.ErrExists, p.Name, p.Tenant)
	}
	return r.Header.Revision, nil
}

// DeleteProfile removes a profile no group uses.
func (s *Store) DeleteProfile(ctx context.Context, tenant, name string) error {
	p, rev, err := s.GetProfile(ctx, tenant, name)
	if err != nil {
		return err
	}
	return s.deleteUnused(ctx, p.Tenant, kindProfile, p.Name, rev, "")
}

// GetGroup returns a group and its revision.
func (s *Store) GetGroup(ctx context.Context, tenant, name string) (core.Group, int64, error) {
	tenant = defaultTenant(tenant)
	var g core.Group
	if err := core.ValidName("group", name); err != nil {
		return g, 0, err
	}
	rev, ok, err := s.getJSON(ctx, groupKey(tenant, name), &g)
	if err == nil && !ok {
		if err := s.tenantExists(ctx, tenant); err != nil {
			return g, 0, err
		}
		err = fmt.Errorf("%w: unknown group %q in tenant %q", core.ErrNotFound, name, tenant)
	}
	return g, rev, err
}

// Groups lists a tenant's groups.
func (s *Store) Groups(ctx context.Context, tenant string) ([]core.Group, error) {
	tenant = defaultTenant(tenant)
	if err := s.tenantExists(ctx, tenant); err != nil {
		return nil, err
	}
	return list[core.Group](ctx, s, groupsOf(tenant))
}

// GroupMembers lists the endpoints of a group, on every host.
func (s *Store) GroupMembers(ctx context.Context, tenant, name string) ([]core.Endpoint, error) {
	return list[core.Endpoint](ctx, s, groupMembersOf(defaultTenant(tenant), name))
}

// CreateGroup adds a group. Its network, policies and profile must exist, the
// network's driver must be able to enforce them, and its policies' rules
// must not tie; all of that holds in the transaction that writes it.
func (s *Store) CreateGroup(ctx context.Context, g core.Group) (int64, error) {
	g.Tenant = defaultTenant(g.Tenant)
	if err := core.ValidName("group", g.Name); err != nil {
		return 0, err
	}
	if g.Network == "" {
		return 0, fmt.Errorf("%w: group %q needs -net-id", core.ErrInvalid, g.Name)
	}
	n, nrev, err := s.GetNetwork(ctx, g.Tenant, g.Network)
	if err != nil {
		return 0, fmt.Errorf("group %s: %w", g.Key(), err)
	}
	if err := core.ValidateGroup(g, n); err != nil {
		return 0, err
	}
	if hasDup(g.Policies) {
		return 0, fmt.Errorf("%w: group %s names a policy twice", core.ErrInvalid, g.Key())
	}
	cmps := []clientv3.Cmp{free(groupKey(g.Tenant, g.Name)), unchanged(networkKey(n.Tenant, n.Name), nrev)}
	var other []ref
	if g.Profile != "" {
		other = append(other, ref{kindProfile, g.Profile})
	}
	rc, err := s.checkRefs(ctx, g.Tenant, "group "+g.Key(), other)
	if err != nil {
		return 0, err
	}
	cmps = append(cmps, rc...)
	pols, pcmps, err := s.groupPolicies(ctx, g, core.Policy{})
	if err != nil {
		return 0, err
	}
	cmps = append(cmps, pcmps...)
	if err := core.CheckTies("group "+g.Key(), pols); err != nil {
		return 0, err
	}
	ops := append([]clientv3.Op{clientv3.OpPut(groupKey(g.Tenant, g.Name), mustJSON(g))}, refOps(g.Tenant, kindGroup, g.Name, nil, groupRefs(g))...)
	r, err := s.txn(ctx, cmps, ops...)
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		if ok, err := s.has(ctx, groupKey(g.Tenant, g.Name)); err != nil {
			return 0, err
		} else if ok {
			return 0, fmt.Errorf("%w: group %q in tenant %q", core.ErrExists, g.Name, g.Tenant)
		}
		return 0, fmt.Errorf("group %s: what it names changed concurrently; try again", g.Key())
	}
	return r.Header.Revision, nil
}

func hasDup(xs []string) bool {
	seen := map[string]bool{}
	for _, x := range xs {
		if seen[x] {
			return true
		}
		seen[x] = true
	}
	return false
}

// DeleteGroup removes a group that has no endpoints and that no rule names.
func (s *Store) DeleteGroup(ctx context.Context, tenant, name string) error {
	g, rev, err := s.GetGroup(ctx, tenant, name)
	if err != nil {
		return err
	}
	return s.deleteUnused(ctx, g.Tenant, kindGroup, g.Name, rev, groupMembersOf(g.Tenant, g.Name),
		refOps(g.Tenant, kindGroup, g.Name, groupRefs(g), nil)...)
}

// endpointGroup checks that ep's group exists in its tenant and network and
// returns the compare that holds while it is as read (nil: no group).
func (s *Store) endpointGroup(ctx context.Context, ep core.Endpoint) ([]clientv3.Cmp, error) {
	if ep.Group == "" {
		return nil, nil
	}
	g, rev, err := s.GetGroup(ctx, ep.Tenant, ep.Group)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	if g.Network != ep.Network {
		return nil, fmt.Errorf("%w: endpoint %s: group %s is in network %s, not %s", core.ErrInvalid, ep.Key(), g.Key(), g.Network, ep.Network)
	}
	return []clientv3.Cmp{unchanged(groupKey(g.Tenant, g.Name), rev)}, nil
}
