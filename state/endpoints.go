package state

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// NewMAC returns a random locally administered unicast MAC. Every endpoint gets its
// own (the macvlan seed plugin gave all the same one).
func NewMAC() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the kernel's RNG does not fail
	}
	b[0] = (b[0] | 0x02) &^ 0x01
	return net.HardwareAddr(b).String()
}

// checkText refuses what would not survive a JSON round trip or a one-line
// error unchanged: invalid UTF-8, control characters, absurd lengths.
func checkText(what, v string) error {
	if !utf8.ValidString(v) || len(v) > 4096 || strings.IndexFunc(v, unicode.IsControl) >= 0 {
		return fmt.Errorf("%w: %s %q: want printable UTF-8 of at most 4096 bytes", core.ErrInvalid, what, v)
	}
	return nil
}

// checkAttachment validates where an endpoint is to be plugged in, and on
// which host (a host label is a name, as tenants are).
func checkAttachment(host, container, netns string) error {
	if host != "" {
		if err := core.ValidName("host", host); err != nil {
			return err
		}
	}
	if err := checkText("container", container); err != nil {
		return err
	}
	if netns != "" {
		if _, err := core.NetNSPath(netns); err != nil {
			return err
		}
	}
	return nil
}

// checkMAC returns mac in canonical form, or a new one when mac is empty.
func checkMAC(mac string) (string, error) {
	if mac == "" {
		return NewMAC(), nil
	}
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
		return "", fmt.Errorf("%w: MAC %q: want a unicast Ethernet address", core.ErrInvalid, mac)
	}
	return hw.String(), nil
}

// CreateEndpoint reserves an endpoint and its IP (ep.IP, or the lowest free one).
// tag, when not 0, is the seed grammar's `-tag` on endpoint create: it must match
// the network's tag, or re-tag a network whose tag was auto-assigned and that has
// no endpoints yet (in the same transaction).
func (s *Store) CreateEndpoint(ctx context.Context, ep core.Endpoint, tag int) (core.Endpoint, error) {
	if ep.Tenant == "" {
		ep.Tenant = core.DefaultTenant
	}
	if err := core.ValidName("endpoint", ep.Name); err != nil {
		return ep, err
	}
	if ep.Network == "" {
		return ep, fmt.Errorf("%w: endpoint %q needs -net-id", core.ErrInvalid, ep.Name)
	}
	if err := checkAttachment(ep.Host, ep.ContainerName+ep.ContainerID, ep.NetNS); err != nil {
		return ep, err
	}
	var err error
	if ep.MAC, err = checkMAC(ep.MAC); err != nil {
		return ep, err
	}
	for attempt := 0; attempt < maxRetries; attempt++ {
		n, netRev, hint, err := s.networkForAllocation(ctx, ep.Tenant, ep.Network)
		if err != nil {
			return ep, err
		}
		cmps := []clientv3.Cmp{unchanged(networkKey(n.Tenant, n.Name), netRev), free(endpointKey(ep.Tenant, ep.Name))}
		gcmps, err := s.endpointGroup(ctx, ep)
		if err != nil {
			return ep, err
		}
		cmps = append(cmps, gcmps...)
		var ops []clientv3.Op
		retag := tag != 0 && tag != n.Tag
		if retag {
			if tag < 1 || tag > core.MaxTag(n.Encap) {
				return ep, fmt.Errorf("%w: %s tag %d out of range 1-%d", core.ErrInvalid, n.Encap, tag, core.MaxTag(n.Encap))
			}
			if !n.TagAuto {
				return ep, fmt.Errorf("%w: -tag %d conflicts with tag %d of network %s", core.ErrInvalid, tag, n.Tag, n.Key())
			}
			old := n.Tag
			n.Tag, n.TagAuto = tag, false
			cmps = append(cmps, emptyPrefix(ipsOf(n.Tenant, n.Name)), free(tagKey(n.Encap, tag)))
			ops = append(ops, clientv3.OpDelete(tagKey(n.Encap, old)), clientv3.OpPut(tagKey(n.Encap, tag), n.Key()),
				clientv3.OpPut(networkKey(n.Tenant, n.Name), mustJSON(n)))
		}
		cand := ep
		c, err := s.candidate(ctx, n, hint, ep.Host, ep.IP, 0, 0, attempt > 0)
		if err != nil {
			return ep, err
		}
		cand.IP = c.ip
		cmps, ops = withBlock(n, c.newBlock, ep.Host, cmps, ops)
		cmps = append(cmps, free(ipKey(n.Tenant, n.Name, cand.IP)))
		ops = append(ops, endpointOps(nil, cand)...)
		ops = append(ops, setAddrOps(n.Tenant, n.Name, cand.IP, "", cand.Name)...)
		ops = append(ops, c.hint...)
		r, err := s.txn(ctx, cmps, ops...)
		if err != nil {
			return ep, err
		}
		if r.Succeeded {
			return cand, nil
		}
		if err := s.whyEndpointCreateFailed(ctx, cand, n, netRev, ep.IP != "", retag); err != nil {
			return ep, err
		}
		// Lost a race for an auto IP or the network changed: read again and retry.
	}
	return ep, fmt.Errorf("create endpoint %s: too much contention, try again", ep.Key())
}

// candidateIP is an address to try for an endpoint, with what its
// transaction must also write.
type candidateIP struct {
	ip string
	// newBlock is the key of the routed block to write with it when the host
	// has none yet (hostBlock).
	newBlock string
	// hint is the allocator's update of the network's full-blocks hint.
	hint []clientv3.Op
}

// candidate returns the address to try for an endpoint of n on host: ip,
// validated and in canonical form, or one the allocator picks in [lo, hi]
// (0, 0: the whole subnet) — on a routed network always within the host's
// block.
// hint is n's full-blocks hint when the caller read it with n (nil: read when needed).
func (s *Store) candidate(ctx context.Context, n core.Network, hint *hintState, host, ip string, lo, hi uint32, random bool, freed ...string) (candidateIP, error) {
	var c candidateIP
	where := n.Subnet
	if hi != 0 {
		where = "the range " + core.IPFromUint(lo).String() + "-" + core.IPFromUint(hi).String()
	}
	if _, routed := n.HostBlockLen(); routed {
		var block *net.IPNet
		var err error
		if block, c.newBlock, err = s.hostBlock(ctx, n, host); err != nil {
			return c, err
		}
		first, last := core.SubnetBounds(block)
		first, last = first+1, last-1 // keep the block's own base and top free, as a subnet's are
		if hi == 0 {
			lo, hi = first, last
		} else {
			lo, hi = max(lo, first), min(hi, last)
		}
		where = block.String() + " (block of host " + host + ")"
		if a := net.ParseIP(strings.TrimSpace(ip)); ip != "" && !block.Contains(a) {
			return c, fmt.Errorf("%w: IP %s is outside %s, the block of host %s on routed network %s", core.ErrInvalid, ip, block, host, n.Key())
		}
	}
	if ip == "" {
		var err error
		c.ip, c.hint, err = s.pickIP(ctx, n, hint, lo, hi, random, where, freed...)
		return c, err
	}
	if err := core.ValidateEndpointIP(n, ip); err != nil {
		return c, err
	}
	a, _ := core.ParseIPv4(ip)
	c.ip = a.String()
	return c, nil
}

// withBlock adds the write of a new host block (see hostBlock) to a transaction.
func withBlock(n core.Network, newBlock, host string, cmps []clientv3.Cmp, ops []clientv3.Op) ([]clientv3.Cmp, []clientv3.Op) {
	if newBlock == "" {
		return cmps, ops
	}
	return append(cmps, free(newBlock), exists(networkKey(n.Tenant, n.Name))), append(ops, clientv3.OpPut(newBlock, host))
}

// candidateWithBlock is candidate for a caller that writes the block on its
// own: a new block is allocated before the address is returned.
func (s *Store) candidateWithBlock(ctx context.Context, n core.Network, hint *hintState, host, ip string, lo, hi uint32, random bool) (candidateIP, error) {
	for attempt := 0; attempt < maxRetries; attempt++ {
		c, err := s.candidate(ctx, n, hint, host, ip, lo, hi, random)
		if err != nil || c.newBlock == "" {
			return c, err
		}
		cmps, ops := withBlock(n, c.newBlock, host, nil, nil)
		r, err := s.txn(ctx, cmps, ops...)
		if err != nil {
			return c, err
		}
		if r.Succeeded {
			c.newBlock = ""
			return c, nil
		}
		// Another host took that block: look again.
	}
	return candidateIP{}, fmt.Errorf("allocate a block of %s for %s: too much contention, try again", n.Key(), host)
}

// whyEndpointCreateFailed turns a failed transaction into the user's error, or
// nil when the failure was a lost race worth retrying. n is the network as the
// transaction would have written it (re-tagged when retag), netRev the revision
// it was read at.
func (s *Store) whyEndpointCreateFailed(ctx context.Context, ep core.Endpoint, n core.Network, netRev int64, userIP, retag bool) error {
	if ok, err := s.has(ctx, endpointKey(ep.Tenant, ep.Name)); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%w: endpoint %q in tenant %q", core.ErrExists, ep.Name, ep.Tenant)
	}
	if userIP {
		if ok, err := s.has(ctx, ipKey(n.Tenant, n.Name, ep.IP)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%w: IP %s is already used on network %s", core.ErrInUse, ep.IP, n.Key())
		}
	}
	if !retag {
		// The network's own tag is not contended: this was a lost IP race.
		return nil
	}
	// The re-tag's preconditions are explained only against the network we
	// read: if it changed (another create re-tagged it first), read again.
	if _, rev, err := s.GetNetwork(ctx, n.Tenant, n.Name); err != nil || rev != netRev {
		return err
	}
	r, err := s.get(ctx, tagKey(n.Encap, n.Tag))
	if err != nil {
		return err
	}
	if len(r.Kvs) > 0 && string(r.Kvs[0].Value) != n.Key() {
		return fmt.Errorf("%w: %s tag %d is taken by network %s", core.ErrInUse, n.Encap, n.Tag, r.Kvs[0].Value)
	}
	c, err := s.get(ctx, ipsOf(n.Tenant, n.Name), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if c.Count > 0 {
		return fmt.Errorf("%w: -tag %d: network %s already has endpoints, so its tag cannot change", core.ErrInUse, n.Tag, n.Key())
	}
	return nil
}

// GetEndpoint returns an endpoint and its revision.
func (s *Store) GetEndpoint(ctx context.Context, tenant, name string) (core.Endpoint, int64, error) {
	if tenant == "" {
		tenant = core.DefaultTenant
	}
	r, err := s.get(ctx, endpointKey(tenant, name))
	if err != nil {
		return core.Endpoint{}, 0, err
	}
	if len(r.Kvs) == 0 {
		if err := s.tenantExists(ctx, tenant); err != nil {
			return core.Endpoint{}, 0, err
		}
		return core.Endpoint{}, 0, fmt.Errorf("%w: unknown endpoint %q in tenant %q", core.ErrNotFound, name, tenant)
	}
	var ep core.Endpoint
	if err := json.Unmarshal(r.Kvs[0].Value, &ep); err != nil {
		return ep, 0, fmt.Errorf("decode endpoint %s/%s: %w", tenant, name, err)
	}
	return ep, r.Kvs[0].ModRevision, nil
}

// Endpoints lists the endpoints of a tenant (all tenants when ""), optionally
// of one network: then only that network's index is read.
func (s *Store) Endpoints(ctx context.Context, tenant, network string) ([]core.Endpoint, error) {
	if tenant != "" {
		if err := s.tenantExists(ctx, tenant); err != nil {
			return nil, err
		}
	}
	if network == "" {
		prefix := endpointPrefix
		if tenant != "" {
			prefix = endpointsOf(tenant)
		}
		return list[core.Endpoint](ctx, s, prefix)
	}
	tenants := []string{tenant}
	if tenant == "" {
		ts, err := s.Tenants(ctx)
		if err != nil {
			return nil, err
		}
		tenants = []string{core.DefaultTenant}
		for _, t := range ts {
			if t.Name != core.DefaultTenant {
				tenants = append(tenants, t.Name)
			}
		}
	}
	out := []core.Endpoint{}
	for _, t := range tenants {
		eps, err := list[core.Endpoint](ctx, s, netEndpointsOf(t, network))
		if err != nil {
			return nil, err
		}
		out = append(out, eps...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out, nil
}

// HostEndpoints lists the endpoints homed on host, from the host's index:
// what a periodic job of that host reads instead of the cluster's endpoints.
func (s *Store) HostEndpoints(ctx context.Context, host string) ([]core.Endpoint, error) {
	return list[core.Endpoint](ctx, s, hostEndpointsOf(host))
}

// DeleteEndpoint removes an endpoint and releases its IP in one transaction.
func (s *Store) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	ep, rev, err := s.GetEndpoint(ctx, tenant, name)
	if err != nil {
		return err
	}
	hint, err := s.releaseHint(ctx, ep.Tenant, ep.Network, ep.IP)
	if err != nil {
		return err
	}
	ops := append(deleteEndpointOps(ep), clientv3.OpDelete(ipKey(ep.Tenant, ep.Network, ep.IP)))
	r, err := s.txn(ctx, []clientv3.Cmp{unchanged(endpointKey(ep.Tenant, ep.Name), rev)}, append(ops, hint...)...)
	if err != nil {
		return err
	}
	if !r.Succeeded {
		return fmt.Errorf("endpoint %s changed concurrently; try again", ep.Key())
	}
	return nil
}

// Attachment says where to plug an endpoint in.
type Attachment struct {
	ContainerName string // as typed by the user
	ContainerID   string // resolved full ID, when known
	NetNS         string
	Host          string // empty: keep the endpoint's host
	// IP is the endpoint's address on a routed network it moves to another host
	// on; empty: the lowest free one of the new host's block.
	IP string
}

// Attach records that an endpoint should be plugged into a container or namespace.
// Attaching again to the same target is a no-op; to another target is an error.
// On a routed network an endpoint moved to another host takes an address of
// that host's block (a.IP, or the lowest free one) in the same transaction that
// frees its old address.
func (s *Store) Attach(ctx context.Context, tenant, name string, a Attachment) (core.Endpoint, error) {
	if a.ContainerID == "" {
		a.ContainerID = a.ContainerName
	}
	if err := checkAttachment(a.Host, a.ContainerName+a.ContainerID, a.NetNS); err != nil {
		return core.Endpoint{}, err
	}
	for attempt := 0; attempt < maxRetries; attempt++ {
		ep, rev, err := s.GetEndpoint(ctx, tenant, name)
		if err != nil {
			return ep, err
		}
		if a.ContainerID == "" && a.NetNS == "" {
			return ep, fmt.Errorf("%w: attach needs -container-id or -netns", core.ErrInvalid)
		}
		moving := a.Host != "" && a.Host != ep.Host
		if ep.Attached() {
			if ep.ContainerID == a.ContainerID && ep.NetNS == a.NetNS && !moving && (a.IP == "" || a.IP == ep.IP) {
				return ep, nil
			}
			return ep, fmt.Errorf("%w: endpoint %s is attached to %s; detach it first", core.ErrInUse, ep.Key(), target(ep))
		}
		upd := ep
		upd.ContainerName, upd.ContainerID, upd.NetNS = a.ContainerName, a.ContainerID, a.NetNS
		if a.Host != "" {
			upd.Host = a.Host
		}
		cmps := []clientv3.Cmp{unchanged(endpointKey(ep.Tenant, ep.Name), rev)}
		var ops []clientv3.Op
		routed := false
		if moving {
			n, _, err := s.GetNetwork(ctx, ep.Tenant, ep.Network)
			if err != nil {
				return ep, err
			}
			if _, routed = n.HostBlockLen(); routed {
				c, err := s.candidate(ctx, n, nil, upd.Host, a.IP, 0, 0, attempt > 0, ep.IP)
				if err != nil {
					return ep, err
				}
				upd.IP = c.ip
				hint := c.hint
				if a.IP != "" { // no allocation: the release's own hint
					if hint, err = s.releaseHint(ctx, ep.Tenant, ep.Network, ep.IP); err != nil {
						return ep, err
					}
				}
				cmps, ops = withBlock(n, c.newBlock, upd.Host, cmps, ops)
				cmps = append(cmps, free(ipKey(n.Tenant, n.Name, upd.IP)))
				ops = append(ops, clientv3.OpDelete(ipKey(ep.Tenant, ep.Network, ep.IP)),
					clientv3.OpPut(ipKey(n.Tenant, n.Name, upd.IP), ep.Name))
				ops = append(ops, hint...)
			}
		}
		if !routed && a.IP != "" && a.IP != ep.IP {
			return ep, fmt.Errorf("%w: endpoint %s has IP %s; an IP changes only with a move to another host on a routed network", core.ErrInvalid, ep.Key(), ep.IP)
		}
		ops = append(ops, endpointOps(&ep, upd)...)
		r, err := s.txn(ctx, cmps, ops...)
		if err != nil {
			return ep, err
		}
		if r.Succeeded {
			return upd, nil
		}
		if routed && a.IP != "" {
			if ok, err := s.has(ctx, ipKey(ep.Tenant, ep.Network, upd.IP)); err != nil {
				return ep, err
			} else if ok {
				return ep, fmt.Errorf("%w: IP %s is already used on network %s", core.ErrInUse, upd.IP, ep.NetworkKey())
			}
		}
		// The endpoint changed, or another endpoint took the address: read again.
	}
	return core.Endpoint{}, fmt.Errorf("attach endpoint %s/%s: too much contention, try again", tenant, name)
}

// Detach unplugs an endpoint and keeps its IP. containerOrNS, when given, must
// name what the endpoint is attached to.
func (s *Store) Detach(ctx context.Context, tenant, name, containerOrNS string) (core.Endpoint, error) {
	ep, rev, err := s.GetEndpoint(ctx, tenant, name)
	if err != nil {
		return ep, err
	}
	if !ep.Attached() {
		return ep, fmt.Errorf("%w: endpoint %s is not attached", core.ErrInvalid, ep.Key())
	}
	if containerOrNS != "" && containerOrNS != ep.ContainerID && containerOrNS != ep.ContainerName && containerOrNS != ep.NetNS {
		return ep, fmt.Errorf("%w: endpoint %s is attached to %s, not %s", core.ErrInvalid, ep.Key(), target(ep), containerOrNS)
	}
	old := ep
	ep.ContainerName, ep.ContainerID, ep.NetNS = "", "", ""
	return ep, s.putEndpoint(ctx, old, ep, rev)
}

func target(ep core.Endpoint) string {
	if ep.NetNS != "" {
		return "netns " + ep.NetNS
	}
	if ep.ContainerName != "" {
		return "container " + ep.ContainerName
	}
	return "container " + ep.ContainerID
}

// putEndpoint rewrites ep, stored as old at rev.
func (s *Store) putEndpoint(ctx context.Context, old, ep core.Endpoint, rev int64) error {
	r, err := s.txn(ctx, []clientv3.Cmp{unchanged(endpointKey(ep.Tenant, ep.Name), rev)}, endpointOps(&old, ep)...)
	if err != nil {
		return err
	}
	if !r.Succeeded {
		return fmt.Errorf("endpoint %s changed concurrently; try again", ep.Key())
	}
	return nil
}
