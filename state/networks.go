package state

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// maxRetries bounds optimistic transactions that lost a race.
const maxRetries = 64

// CreateNetwork adds a network. Empty Driver, Encap, Tag and Subnet are filled
// from the global configuration; the tag and the subnet are allocated in the
// same transaction that writes the network.
func (s *Store) CreateNetwork(ctx context.Context, n core.Network) (core.Network, error) {
	if n.Tenant == "" {
		n.Tenant = core.DefaultTenant
	}
	if err := core.ValidName("tenant", n.Tenant); err != nil {
		return n, err
	}
	if err := core.ValidName("network", n.Name); err != nil {
		return n, err
	}
	if err := s.tenantExists(ctx, n.Tenant); err != nil {
		return n, err
	}
	g, _, err := s.Global(ctx)
	if err != nil {
		return n, err
	}
	if n, err = withDefaults(n, g); err != nil {
		return n, err
	}
	var userNet *net.IPNet
	if n.Subnet != "" {
		userNet = mustCIDR(n.Subnet)
	}
	want := n
	for attempt := 0; attempt < maxRetries; attempt++ {
		n = want
		all, rev, err := s.allNetworks(ctx)
		if err != nil {
			return n, err
		}
		for _, o := range all {
			if o.Tenant == n.Tenant && o.Name == n.Name {
				return n, fmt.Errorf("%w: network %q in tenant %q", core.ErrExists, n.Name, n.Tenant)
			}
		}
		if n.Subnet == "" {
			if n.Subnet, err = pickSubnet(g, all); err != nil {
				return n, err
			}
			// The gateway of an auto subnet is its first address, as Docker does.
			first, _ := core.SubnetBounds(mustCIDR(n.Subnet))
			n.Gateway = core.IPFromUint(first + 1).String()
		} else {
			for _, o := range all {
				if o.Tenant == n.Tenant && core.Overlaps(userNet, mustCIDR(o.Subnet)) {
					return n, fmt.Errorf("%w: subnet %s overlaps %s of network %s", core.ErrInUse, n.Subnet, o.Subnet, o.Key())
				}
			}
		}
		if n.Tag == 0 {
			n.TagAuto = true
			if n.Tag, err = s.pickTag(ctx, g, n.Encap); err != nil {
				return n, err
			}
		}
		if err := core.ValidateNetwork(n); err != nil {
			return n, err
		}
		// The whole networks prefix unchanged since our read means no overlapping
		// subnet was added meanwhile; the tag key free means no one took the tag.
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(networkPrefix), "<", rev+1).WithPrefix(),
			free(networkKey(n.Tenant, n.Name)),
			free(tagKey(n.Encap, n.Tag)),
		}
		r, err := s.txn(ctx, cmps,
			clientv3.OpPut(networkKey(n.Tenant, n.Name), mustJSON(n)),
			clientv3.OpPut(tagKey(n.Encap, n.Tag), n.Key()))
		if err != nil {
			return n, err
		}
		if r.Succeeded {
			return n, nil
		}
		if !n.TagAuto {
			if taken, err := s.has(ctx, tagKey(n.Encap, n.Tag)); err != nil {
				return n, err
			} else if taken {
				return n, fmt.Errorf("%w: %s tag %d is taken by another network", core.ErrInUse, n.Encap, n.Tag)
			}
		}
	}
	return n, fmt.Errorf("create network %s: too much contention, try again", n.Key())
}

// withDefaults fills a new network's driver and tag type from g and checks what
// can be checked before its tag and subnet are allocated; the subnet comes back
// canonical.
func withDefaults(n core.Network, g core.Global) (core.Network, error) {
	if n.Driver == "" {
		n.Driver = g.DefaultDriver
	}
	if err := core.ValidName("driver", n.Driver); err != nil {
		return n, err
	}
	for k, v := range n.Options {
		if err := checkText("option "+k, v); err != nil {
			return n, err
		}
		if err := checkText("option name", k); err != nil || k == "" {
			return n, fmt.Errorf("%w: option name %q", core.ErrInvalid, k)
		}
	}
	n.Encap = g.TagType(n.Encap)
	if n.Encap != core.EncapVLAN && n.Encap != core.EncapVXLAN {
		return n, fmt.Errorf("%w: tag type %q: want vlan or vxlan", core.ErrInvalid, n.Encap)
	}
	if n.Tag != 0 && (n.Tag < 1 || n.Tag > core.MaxTag(n.Encap)) {
		return n, fmt.Errorf("%w: %s tag %d out of range 1-%d", core.ErrInvalid, n.Encap, n.Tag, core.MaxTag(n.Encap))
	}
	if n.Subnet != "" {
		sn, err := core.ParseCIDR(n.Subnet)
		if err != nil {
			return n, err
		}
		n.Subnet = sn.String()
	} else if n.Gateway != "" {
		return n, fmt.Errorf("%w: -gw needs -subnet", core.ErrInvalid)
	}
	return n, nil
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(fmt.Sprintf("stored subnet %q: %v", s, err)) // validated before it was stored
	}
	return n
}

func (s *Store) allNetworks(ctx context.Context) ([]core.Network, int64, error) {
	r, err := s.get(ctx, networkPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	out := make([]core.Network, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		var n core.Network
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return nil, 0, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, n)
	}
	return out, r.Header.Revision, nil
}

// pickSubnet returns the first subnet of the pool that overlaps no network of any
// tenant, so auto subnets never collide even where tenants could. A candidate
// that overlaps a larger network jumps past it: a pool of /30s under one big
// network is crossed in one step, not millions.
func pickSubnet(g core.Global, all []core.Network) (string, error) {
	pool := mustCIDR(g.SubnetPool)
	lo, hi := core.SubnetBounds(pool)
	step := uint64(1) << uint(32-g.SubnetLen)
	for base := uint64(lo); base <= uint64(hi); {
		cand := &net.IPNet{IP: core.IPFromUint(uint32(base)), Mask: net.CIDRMask(g.SubnetLen, 32)}
		next := base + step
		clash := false
		for _, o := range all {
			on := mustCIDR(o.Subnet)
			if core.Overlaps(cand, on) {
				clash = true
				_, end := core.SubnetBounds(on)
				next = max(next, uint64(end)+1) // aligned: o is at least as large as a step
			}
		}
		if !clash {
			return cand.String(), nil
		}
		base = next
	}
	return "", fmt.Errorf("%w: subnet pool %s has no free /%d left", core.ErrInUse, g.SubnetPool, g.SubnetLen)
}

func (s *Store) pickTag(ctx context.Context, g core.Global, encap string) (int, error) {
	spec := g.VLANs
	if encap == core.EncapVXLAN {
		spec = g.VXLANs
	}
	ranges, err := core.ParseRanges(spec, core.MaxTag(encap))
	if err != nil {
		return 0, err
	}
	r, err := s.get(ctx, tagsOf(encap), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, err
	}
	used := make(map[int]bool, len(r.Kvs))
	for _, kv := range r.Kvs {
		if t, err := strconv.Atoi(lastSegment(string(kv.Key))); err == nil {
			used[t] = true
		}
	}
	return freeTag(ranges, used, encap, spec)
}

// freeTag returns the lowest tag of ranges that is not used.
func freeTag(ranges []core.Range, used map[int]bool, encap, spec string) (int, error) {
	for _, rg := range ranges {
		for t := rg.Lo; t <= rg.Hi; t++ {
			if !used[t] {
				return t, nil
			}
		}
	}
	return 0, fmt.Errorf("%w: no free %s tag left in %s", core.ErrInUse, encap, spec)
}

// GetNetwork returns one network and its revision.
func (s *Store) GetNetwork(ctx context.Context, tenant, name string) (core.Network, int64, error) {
	if tenant == "" {
		tenant = core.DefaultTenant
	}
	r, err := s.get(ctx, networkKey(tenant, name))
	if err != nil {
		return core.Network{}, 0, err
	}
	if len(r.Kvs) == 0 {
		if err := s.tenantExists(ctx, tenant); err != nil {
			return core.Network{}, 0, err
		}
		return core.Network{}, 0, fmt.Errorf("%w: unknown network %q in tenant %q", core.ErrNotFound, name, tenant)
	}
	var n core.Network
	if err := json.Unmarshal(r.Kvs[0].Value, &n); err != nil {
		return n, 0, fmt.Errorf("decode network %s/%s: %w", tenant, name, err)
	}
	return n, r.Kvs[0].ModRevision, nil
}

// Networks lists the networks of a tenant, or of all tenants when tenant is "".
func (s *Store) Networks(ctx context.Context, tenant string) ([]core.Network, error) {
	if tenant == "" {
		return list[core.Network](ctx, s, networkPrefix)
	}
	if err := s.tenantExists(ctx, tenant); err != nil {
		return nil, err
	}
	return list[core.Network](ctx, s, networksOf(tenant))
}

// DeleteNetwork removes a network that has no endpoints, and frees its tag.
func (s *Store) DeleteNetwork(ctx context.Context, tenant, name string) error {
	n, rev, err := s.GetNetwork(ctx, tenant, name)
	if err != nil {
		return err
	}
	r, err := s.txn(ctx,
		[]clientv3.Cmp{unchanged(networkKey(n.Tenant, n.Name), rev), emptyPrefix(ipsOf(n.Tenant, n.Name)),
			emptyPrefix(usesOf(n.Tenant, kindNetwork, n.Name))},
		deleteNetworkOps(n)...)
	if err != nil {
		return err
	}
	if !r.Succeeded {
		if u, err := s.firstUser(ctx, n.Tenant, kindNetwork, n.Name); err != nil {
			return err
		} else if u != "" {
			return fmt.Errorf("%w: network %s is used by %s", core.ErrInUse, n.Key(), u)
		}
		return fmt.Errorf("%w: network %s still has endpoints; delete them first", core.ErrInUse, n.Key())
	}
	return nil
}

// deleteNetworkOps removes a network and what was allocated for it.
func deleteNetworkOps(n core.Network) []clientv3.Op {
	return []clientv3.Op{clientv3.OpDelete(networkKey(n.Tenant, n.Name)), clientv3.OpDelete(tagKey(n.Encap, n.Tag)),
		clientv3.OpDelete(blocksOf(n.Tenant, n.Name), clientv3.WithPrefix()), clientv3.OpDelete(ipFullKey(n.Tenant, n.Name))}
}
