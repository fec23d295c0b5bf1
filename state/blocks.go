package state

import (
	"context"
	"fmt"
	"net"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Routed networks (core.Network.HostBlockLen) give each host a block of the
// subnet: alloc/block/<tenant>/<network>/<block base> = host. Blocks outlive the
// host's lease (its endpoints keep their addresses while it reboots); only the
// routes to them follow the lease.
const blockPrefix = allocPrefix + "block/"

// BlockPrefix is watched by agents that install routes to other hosts' blocks.
const BlockPrefix = blockPrefix

func blockKey(t, n, base string) string { return blockPrefix + t + "/" + n + "/" + base }
func blocksOf(t, n string) string       { return blockPrefix + t + "/" + n + "/" }

// HostBlock is one host's block of a routed network.
type HostBlock struct {
	Tenant, Network, Host string
	Block                 *net.IPNet
}

// DecodeBlocks decodes a snapshot of BlockPrefix.
func DecodeBlocks(kvs map[string][]byte) []HostBlock {
	var out []HostBlock
	for k, v := range kvs {
		parts := strings.Split(strings.TrimPrefix(k, blockPrefix), "/")
		if len(parts) != 3 {
			continue
		}
		// The block's length is not in the key: it is the network's, and the
		// agent joins blocks with networks; keep the base as a /32 until then.
		ip := net.ParseIP(parts[2]).To4()
		if ip == nil {
			continue
		}
		out = append(out, HostBlock{Tenant: parts[0], Network: parts[1], Host: string(v), Block: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}})
	}
	return out
}

// blockOf returns host's block of a routed network. A host that has none yet
// is given the lowest free one, not written: newKey is its key, which the
// caller writes (value host, precondition free) in the transaction that uses
// the block, so that a refused request allocates nothing.
func (s *Store) blockOf(ctx context.Context, n core.Network, host string) (block *net.IPNet, newKey string, err error) {
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
