package state

import (
	"context"
	"fmt"
	"net"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Routed networks (core.Network.HostBlockLen) give each host a block of the
// subnet: alloc/block/<tenant>/<network>/<block base> = host. Blocks outlive the
// host's lease (its endpoints keep their addresses while it reboots); only the
// routes to them follow the lease.
const blockPrefix = allocPrefix + "block/"

// BlockPrefix is where routed networks' blocks are, for tools and tests.
const BlockPrefix = blockPrefix

func blockKey(t, n, base string) string { return blockPrefix + t + "/" + n + "/" + base }
func blocksOf(t, n string) string       { return blockPrefix + t + "/" + n + "/" }

// HostBlock is one host's block of a routed network.
type HostBlock struct {
	Host  string
	Block *net.IPNet
}

// hostBlock returns host's block of a routed network. A host that has none yet
// is given the lowest free one, not written: newKey is its key, which the
// caller writes (value host, precondition free) in the transaction that uses
// the block, so that a refused request allocates nothing.
func (s *Store) hostBlock(ctx context.Context, n core.Network, host string) (block *net.IPNet, newKey string, err error) {
	blen, _ := n.HostBlockLen()
	if host == "" {
		return nil, "", fmt.Errorf("%w: network %s routes per host: the endpoint needs -host", core.ErrInvalid, n.Key())
	}
	r, err := s.get(ctx, blocksOf(n.Tenant, n.Name), clientv3.WithPrefix())
	if err != nil {
		return nil, "", err
	}
	used := map[string]bool{}
	for _, kv := range r.Kvs {
		base := lastSegment(string(kv.Key))
		if string(kv.Value) == host {
			return &net.IPNet{IP: net.ParseIP(base).To4(), Mask: net.CIDRMask(blen, 32)}, "", nil
		}
		used[base] = true
	}
	base := freeBlock(n, blen, used)
	if base == "" {
		return nil, "", fmt.Errorf("%w: network %s has no free /%d block left for host %s", core.ErrInUse, n.Key(), blen, host)
	}
	return &net.IPNet{IP: net.ParseIP(base).To4(), Mask: net.CIDRMask(blen, 32)}, blockKey(n.Tenant, n.Name, base), nil
}

// freeBlock returns the base of the lowest /blen block of n's subnet that is not
// used, or "" when every block is taken.
func freeBlock(n core.Network, blen int, used map[string]bool) string {
	lo, hi := core.SubnetBounds(mustCIDR(n.Subnet))
	step := uint32(1) << uint(32-blen)
	for b := lo; b <= hi && b >= lo; b += step {
		if ip := core.IPFromUint(b).String(); !used[ip] {
			return ip
		}
	}
	return ""
}
