package state

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// The IP allocator serves netdcli, the Docker IPAM and the -cfg planner alike
// (allocate is a pure function of what it is shown). Its cost does not depend
// on how many addresses are taken:
//
//   - The address keys (alloc/ip/<t>/<n>/<a.b.c.d>) stay the only record of
//     who owns what, each taken with CreateRevision == 0, so two hosts never
//     hold one address. Their dotted names make the keys of one /24-aligned
//     block one prefix (…/10.64.3.), so the taken addresses of a block are one
//     bounded read of at most 256 keys, whatever the subnet holds.
//   - A network larger than one block has a hint, alloc/ipfull/<t>/<n>: which
//     of its blocks are full. The allocator skips those and reads one block.
//     The hint is written alongside an allocation that fills a block and a
//     release that empties one, best effort (a nested transaction that commits
//     only if nobody rewrote it meanwhile): a stale hint costs a block read
//     and is repaired by the allocation that finds it out, and blocks it
//     calls full are verified before a network is declared exhausted.
//
// So an allocation is a read of the network and its hint, a read of one
// block, and one transaction, on an empty network as on a full one.

// blockBits is the size of an allocation block: a /24, the unit of one read.
const blockBits = 8

func blockOf(a uint32) uint32 { return a &^ (1<<blockBits - 1) }

// blockKeyPrefix is the prefix of the address keys of the block at base.
func blockKeyPrefix(t, n string, base uint32) string {
	ip := core.IPFromUint(base)
	return ipsOf(t, n) + fmt.Sprintf("%d.%d.%d.", ip[0], ip[1], ip[2])
}

// addrSpace is what the allocator is shown of a network's addresses.
type addrSpace interface {
	// taken tells the taken addresses of the block at base.
	taken(ctx context.Context, base uint32) (func(uint32) bool, error)
	// full reports whether the block at base is believed to have no free
	// address; it may be wrong, never harmfully.
	full(ctx context.Context, base uint32) (bool, error)
}

// allocation is an address the allocator chose and what it learnt about the
// blocks it looked at, for the hint.
type allocation struct {
	addr     uint32
	setFull  []uint32 // blocks now full (the address was the last, or a block was found full)
	markFree []uint32 // blocks believed full that are not
}

// reserved reports whether a is never handed out in n: the subnet's own
// network and broadcast addresses, and the gateway.
func reservedIn(first, last, gw uint32) func(uint32) bool {
	return func(a uint32) bool { return a <= first || a >= last || (gw != 0 && a == gw) }
}

func gatewayOf(n core.Network) uint32 {
	if gw := net.ParseIP(n.Gateway).To4(); gw != nil {
		return core.IPToUint(gw)
	}
	return 0
}

// allocate picks an address of n within [lo, hi] (0, 0: the whole subnet):
// the lowest free one, or with random a random free one of a random block (a
// creator that lost a race stops colliding with the others). where names the
// range in the error when none is left.
func allocate(ctx context.Context, n core.Network, lo, hi uint32, sp addrSpace, random bool, where string) (allocation, error) {
	first, last := core.SubnetBounds(mustCIDR(n.Subnet))
	if hi == 0 {
		lo, hi = first, last
	}
	lo, hi = max(lo, first+1), min(hi, last-1)
	reserved := reservedIn(first, last, gatewayOf(n))
	var blocks []uint32
	if lo <= hi {
		for b := blockOf(lo); ; b += 1 << blockBits {
			blocks = append(blocks, b)
			if b == blockOf(hi) {
				break
			}
		}
	}
	// Blocks believed to have room first, then the others, to verify them
	// before giving up.
	var open, closed []uint32
	for _, b := range blocks {
		isFull, err := sp.full(ctx, b)
		if err != nil {
			return allocation{}, err
		}
		if isFull {
			closed = append(closed, b)
		} else {
			open = append(open, b)
		}
	}
	if random && len(open) > 1 {
		k := rand.N(len(open))
		open = append(open[k:], open[:k]...)
	}
	var res allocation
	for i, b := range append(open, closed...) {
		believedFull := i >= len(open)
		taken, err := sp.taken(ctx, b)
		if err != nil {
			return allocation{}, err
		}
		var free []uint32
		left := 0 // free addresses of the whole block, inside or outside the range
		for off := uint32(0); off < 1<<blockBits; off++ {
			a := b + off
			if a < first || a > last || reserved(a) || taken(a) {
				continue
			}
			left++
			if a >= lo && a <= hi {
				free = append(free, a)
			}
		}
		if len(free) == 0 {
			if left == 0 && !believedFull {
				res.setFull = append(res.setFull, b)
			} else if left > 0 && believedFull {
				res.markFree = append(res.markFree, b)
			}
			continue
		}
		if believedFull {
			res.markFree = append(res.markFree, b)
		}
		res.addr = free[0]
		if random {
			res.addr = free[rand.N(len(free))]
		}
		if left == 1 {
			res.setFull = append(res.setFull, b)
		}
		return res, nil
	}
	return res, fmt.Errorf("%w: network %s has no free IP left in %s", core.ErrInUse, n.Key(), where)
}

// fullHint is the value of alloc/ipfull/<t>/<n>: bit i says the i-th /24
// block from the subnet's first is full.
type fullHint struct {
	Subnet string `json:"subnet"`
	Full   string `json:"full"` // hex
}

type hintState struct {
	subnet *net.IPNet
	bits   []byte
	rev    int64 // ModRevision, 0: absent
}

func decodeHint(v []byte, rev int64, subnet *net.IPNet) hintState {
	h := hintState{subnet: subnet, rev: rev}
	var fh fullHint
	if len(v) == 0 || json.Unmarshal(v, &fh) != nil {
		return h
	}
	if subnet == nil {
		_, sn, err := net.ParseCIDR(fh.Subnet)
		if err != nil {
			return h
		}
		h.subnet = sn
	} else if fh.Subnet != subnet.String() {
		return h // another network's of the same name: start afresh
	}
	h.bits, _ = hex.DecodeString(fh.Full)
	return h
}

func (h *hintState) index(b uint32) int {
	first, _ := core.SubnetBounds(h.subnet)
	return int((b - blockOf(first)) >> blockBits)
}

func (h *hintState) isFull(b uint32) bool {
	i := h.index(b)
	return i >= 0 && i/8 < len(h.bits) && h.bits[i/8]&(1<<(i%8)) != 0
}

// with returns the hint with blocks set full or marked free, and whether it changed.
func (h *hintState) with(setFull, markFree []uint32) (string, bool) {
	bits := append([]byte(nil), h.bits...)
	changed := false
	for _, b := range setFull {
		i := h.index(b)
		for len(bits) <= i/8 {
			bits = append(bits, 0)
		}
		changed = changed || bits[i/8]&(1<<(i%8)) == 0
		bits[i/8] |= 1 << (i % 8)
	}
	for _, b := range markFree {
		if i := h.index(b); i/8 < len(bits) && bits[i/8]&(1<<(i%8)) != 0 {
			bits[i/8] &^= 1 << (i % 8)
			changed = true
		}
	}
	for len(bits) > 0 && bits[len(bits)-1] == 0 {
		bits = bits[:len(bits)-1]
	}
	return mustJSON(fullHint{Subnet: h.subnet.String(), Full: hex.EncodeToString(bits)}), changed
}

// apply sets blocks full or marks them free in h itself, and reports whether
// that changed it.
func (h *hintState) apply(setFull, markFree []uint32) bool {
	v, changed := h.with(setFull, markFree)
	if changed {
		var fh fullHint
		_ = json.Unmarshal([]byte(v), &fh)
		h.bits, _ = hex.DecodeString(fh.Full)
	}
	return changed
}

// op is the best-effort write of the hint: nested, so that a hint rewritten
// meanwhile leaves the caller's transaction alone.
func (h *hintState) op(key string, setFull, markFree []uint32) (clientv3.Op, bool) {
	v, changed := h.with(setFull, markFree)
	if !changed {
		return clientv3.Op{}, false
	}
	return clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", h.rev)},
		[]clientv3.Op{clientv3.OpPut(key, v)}, nil), true
}

// multiBlock reports whether n's subnet spans more than one block, and so has a hint.
func multiBlock(n core.Network) bool {
	ones, _ := mustCIDR(n.Subnet).Mask.Size()
	return ones < 32-blockBits
}

// liveSpace shows the allocator a network as etcd holds it, reading each
// block it asks for once.
type liveSpace struct {
	s    *Store
	n    core.Network
	hint *hintState
}

func (sp *liveSpace) full(ctx context.Context, b uint32) (bool, error) {
	if !multiBlock(sp.n) {
		return false, nil
	}
	if sp.hint == nil {
		r, err := sp.s.get(ctx, ipFullKey(sp.n.Tenant, sp.n.Name))
		if err != nil {
			return false, err
		}
		h := hintState{subnet: mustCIDR(sp.n.Subnet)}
		if len(r.Kvs) == 1 {
			h = decodeHint(r.Kvs[0].Value, r.Kvs[0].ModRevision, mustCIDR(sp.n.Subnet))
		}
		sp.hint = &h
	}
	return sp.hint.isFull(b), nil
}

func (sp *liveSpace) taken(ctx context.Context, b uint32) (func(uint32) bool, error) {
	r, err := sp.s.get(ctx, blockKeyPrefix(sp.n.Tenant, sp.n.Name, b), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]bool, len(r.Kvs))
	for _, kv := range r.Kvs {
		if ip := net.ParseIP(lastSegment(string(kv.Key))).To4(); ip != nil {
			out[core.IPToUint(ip)] = true
		}
	}
	return func(a uint32) bool { return out[a] }, nil
}

// hintOp is the hint's update after an allocation, if any.
func (sp *liveSpace) hintOp(a allocation) []clientv3.Op {
	if sp.hint == nil || !multiBlock(sp.n) {
		return nil
	}
	if op, ok := sp.hint.op(ipFullKey(sp.n.Tenant, sp.n.Name), a.setFull, a.markFree); ok {
		return []clientv3.Op{op}
	}
	return nil
}

// pickIP allocates an address of n in [lo, hi] (0, 0: the subnet) and returns
// it with the hint's update to write in the same transaction, which also
// accounts for the addresses freed that the transaction releases.
func (s *Store) pickIP(ctx context.Context, n core.Network, hint *hintState, lo, hi uint32, random bool, where string, freed ...string) (string, []clientv3.Op, error) {
	sp := &liveSpace{s: s, n: n, hint: hint}
	a, err := allocate(ctx, n, lo, hi, sp, random, where)
	if err != nil {
		return "", nil, err
	}
	for _, ip := range freed {
		if v := net.ParseIP(ip).To4(); v != nil {
			b := blockOf(core.IPToUint(v))
			if isFull, err := sp.full(ctx, b); err != nil {
				return "", nil, err
			} else if isFull && b != blockOf(a.addr) {
				a.markFree = append(a.markFree, b)
			}
		}
	}
	return core.IPFromUint(a.addr).String(), sp.hintOp(a), nil
}

// networkForAllocation reads a network and its full-blocks hint in one
// request: what an allocation in it starts from.
func (s *Store) networkForAllocation(ctx context.Context, tenant, name string) (core.Network, int64, *hintState, error) {
	if tenant == "" {
		tenant = core.DefaultTenant
	}
	octx, cancel := s.op(ctx)
	r, err := s.cli.Txn(octx).Then(clientv3.OpGet(networkKey(tenant, name)), clientv3.OpGet(ipFullKey(tenant, name))).Commit()
	cancel()
	if err != nil {
		return core.Network{}, 0, nil, wrapErr(err)
	}
	nr, hr := r.Responses[0].GetResponseRange(), r.Responses[1].GetResponseRange()
	if len(nr.Kvs) == 0 {
		n, rev, err := s.GetNetwork(ctx, tenant, name) // says which of tenant and network is unknown
		return n, rev, nil, err
	}
	var n core.Network
	if err := json.Unmarshal(nr.Kvs[0].Value, &n); err != nil {
		return n, 0, nil, fmt.Errorf("decode network %s/%s: %w", tenant, name, err)
	}
	if _, err := core.ParseCIDR(n.Subnet); err != nil {
		return n, 0, nil, fmt.Errorf("decode network %s/%s: %w", tenant, name, err)
	}
	h := hintState{subnet: mustCIDR(n.Subnet)}
	if len(hr.Kvs) == 1 {
		h = decodeHint(hr.Kvs[0].Value, hr.Kvs[0].ModRevision, mustCIDR(n.Subnet))
	}
	return n, nr.Kvs[0].ModRevision, &h, nil
}

// releaseHint is the hint's update when the addresses ips of tenant/network
// are freed: their blocks are not full any more. It reads only the hint, which
// networks of one block do not have.
func (s *Store) releaseHint(ctx context.Context, tenant, network string, ips ...string) ([]clientv3.Op, error) {
	r, err := s.get(ctx, ipFullKey(tenant, network))
	if err != nil || len(r.Kvs) == 0 {
		return nil, err
	}
	h := decodeHint(r.Kvs[0].Value, r.Kvs[0].ModRevision, nil)
	if h.subnet == nil {
		return nil, nil
	}
	var freed []uint32
	for _, ip := range ips {
		if a := net.ParseIP(ip).To4(); a != nil && h.isFull(blockOf(core.IPToUint(a))) {
			freed = append(freed, blockOf(core.IPToUint(a)))
		}
	}
	if op, ok := h.op(ipFullKey(tenant, network), nil, freed); ok {
		return []clientv3.Op{op}, nil
	}
	return nil, nil
}
