package mgmtfn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// Docker's marker for the gateway's address request.
const gatewayRequest = "com.docker.network.gateway"

// addressSpace is the address space this IPAM serves; CreateNetwork sees it in
// IPv4Data and so tells a network whose addresses come from another IPAM.
const addressSpace = "netplugin"

func (p *Plugin) ipamRoutes(m *http.ServeMux) {
	m.HandleFunc("/IpamDriver.GetCapabilities", handle(p, "IpamCapabilities", func(context.Context, *empty) (*ipam.CapabilitiesResponse, error) {
		// No MAC wanted: Docker would force a random one on the interface.
		return &ipam.CapabilitiesResponse{RequiresMACAddress: false}, nil
	}))
	m.HandleFunc("/IpamDriver.GetDefaultAddressSpaces", handle(p, "AddressSpaces", func(context.Context, *empty) (*ipam.AddressSpacesResponse, error) {
		return &ipam.AddressSpacesResponse{LocalDefaultAddressSpace: addressSpace, GlobalDefaultAddressSpace: addressSpace}, nil
	}))
	m.HandleFunc("/IpamDriver.RequestPool", handle(p, "RequestPool", p.requestPool))
	m.HandleFunc("/IpamDriver.ReleasePool", handle(p, "ReleasePool", p.releasePool))
	m.HandleFunc("/IpamDriver.RequestAddress", handle(p, "RequestAddress", p.requestAddress))
	m.HandleFunc("/IpamDriver.ReleaseAddress", handle(p, "ReleaseAddress", p.releaseAddress))
}

// IPAM calls name only a pool, never the network; CreateNetwork, which names
// the network, carries the pool's subnet and gateway but not its ID. So a pool
// ID is made unique by a nonce (two tenants' networks may share a subnet on one
// host), and RequestPool holds its subnet from then until CreateNetwork binds
// that pool to the Docker network (recorded in the network's mapping, where
// every later call finds it) or ReleasePool gives it up: no second pool of the
// subnet is handed out in between, so CreateNetwork binds the one pending pool
// of its subnet unambiguously, however many `docker network create` run at
// once.
//
// A pool ID is "netplugin|<nonce>|<subnet>|<ip range>"; older versions made
// "<subnet>|<ip range>" and their networks keep working by subnet.
const poolIDMark = "netplugin"

type poolID struct {
	nonce, subnet, subpool string
}

func (id poolID) String() string {
	if id.nonce == "" {
		return id.subnet + "|" + id.subpool
	}
	return strings.Join([]string{poolIDMark, id.nonce, id.subnet, id.subpool}, "|")
}

// parsePoolID reads a pool ID of either form; the subnet is canonical and the
// range inside it.
func parsePoolID(s string) (poolID, error) {
	f := strings.Split(s, "|")
	var id poolID
	switch {
	case len(f) == 4 && f[0] == poolIDMark && validNonce(f[1]):
		id = poolID{nonce: f[1], subnet: f[2], subpool: f[3]}
	case len(f) == 2:
		id = poolID{subnet: f[0], subpool: f[1]}
	default:
		return id, fmt.Errorf("%w: pool ID %.80q is not netplugin's", core.ErrInvalid, s)
	}
	sn, err := core.ParseCIDR(id.subnet)
	if err != nil || sn.String() != id.subnet {
		return id, fmt.Errorf("%w: pool ID %.80q: bad subnet", core.ErrInvalid, s)
	}
	if id.subpool != "" {
		if _, err := subRange(sn, id.subpool); err != nil {
			return id, err
		}
	}
	return id, nil
}

func validNonce(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// subRange checks an --ip-range against its subnet and returns it canonical.
func subRange(sn *net.IPNet, subpool string) (string, error) {
	_, sub, err := net.ParseCIDR(subpool)
	if err != nil || sub.IP.To4() == nil || !sn.Contains(sub.IP) || maskLen(sub) < maskLen(sn) {
		return "", fmt.Errorf("%w: --ip-range %.40s is not inside --subnet %s", core.ErrInvalid, subpool, sn)
	}
	return sub.String(), nil
}

func maskLen(n *net.IPNet) int { ones, _ := n.Mask.Size(); return ones }

// pendingPool is a pool RequestPool gave out that no CreateNetwork bound yet.
type pendingPool struct {
	id    poolID
	since time.Time
	done  chan struct{} // closed when bound or released
}

// poolWait bounds how long a second network of a subnet waits in RequestPool
// for the first one's CreateNetwork: Docker calls it within milliseconds unless
// it is stuck or died in between.
func (p *Plugin) poolWait() time.Duration { return p.cfg.Timeout / 2 }

// poolStale is when a pending pool counts as abandoned (dockerd died between
// RequestPool and CreateNetwork) and its subnet goes to the next network.
// Until then a second network is refused rather than given the subnet: the
// first one's late CreateNetwork would bind the second's pool.
const poolStale = 2 * time.Minute

func (p *Plugin) requestPool(ctx context.Context, req *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error) {
	if req.V6 {
		return nil, fmt.Errorf("%w: IPv6 is not supported", core.ErrInvalid)
	}
	if req.Pool == "" {
		// Docker would otherwise loop asking for non-overlapping pools.
		return nil, fmt.Errorf("%w: netplugin IPAM needs --subnet", core.ErrInvalid)
	}
	sn, err := core.ParseCIDR(req.Pool)
	if err != nil {
		return nil, err
	}
	id := poolID{nonce: newNonce(), subnet: sn.String()}
	if req.SubPool != "" {
		if id.subpool, err = subRange(sn, req.SubPool); err != nil {
			return nil, err
		}
	}
	resp := &ipam.RequestPoolResponse{PoolID: id.String(), Pool: sn.String(), Data: map[string]string{}}
	// A network that exists already (another host made it) keeps its gateway;
	// telling Docker stops it from picking another one.
	if gw := p.existingGateway(ctx, sn.String(), req.Options["tenant"]); gw != "" {
		resp.Data[gatewayRequest] = fmt.Sprintf("%s/%d", gw, maskLen(sn))
	}
	if err := p.holdPool(ctx, id); err != nil {
		return nil, err
	}
	return resp, nil
}

func newNonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand does not fail
	return hex.EncodeToString(b)
}

// holdPool makes id the pending pool of its subnet, waiting while another is.
func (p *Plugin) holdPool(ctx context.Context, id poolID) error {
	giveUp := time.After(p.poolWait())
	for {
		p.mu.Lock()
		cur := p.pools[id.subnet]
		if cur == nil || time.Since(cur.since) > poolStale {
			if cur != nil {
				close(cur.done)
				p.log.WithField("pool", cur.id.String()).Warn("Docker never created the network of this pool; giving its subnet to the next")
			}
			p.pools[id.subnet] = &pendingPool{id: id, since: time.Now(), done: make(chan struct{})}
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()
		busy := fmt.Errorf("%w: another docker network create with subnet %s is in progress on %s; try again", core.ErrUnavailable, id.subnet, p.cfg.Host)
		select {
		case <-cur.done:
		case <-time.After(time.Until(cur.since.Add(poolStale)) + time.Millisecond):
		case <-giveUp:
			return busy
		case <-ctx.Done():
			return busy
		}
	}
}

// takePool ends the pending pool of subnet and returns it (false: none).
func (p *Plugin) takePool(subnet string, id *poolID) (poolID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.pools[subnet]
	if cur == nil || (id != nil && cur.id != *id) {
		return poolID{}, false
	}
	delete(p.pools, subnet)
	close(cur.done)
	return cur.id, true
}

// pendingPoolOf returns the pending pool of a subnet.
func (p *Plugin) pendingPoolOf(subnet string) (poolID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur := p.pools[subnet]; cur != nil {
		return cur.id, true
	}
	return poolID{}, false
}

func (p *Plugin) releasePool(_ context.Context, req *ipam.ReleasePoolRequest) (*empty, error) {
	// A bound pool goes with its network (DeleteNetwork follows); a pending one
	// (CreateNetwork failed) frees its subnet for the next network.
	if id, err := parsePoolID(req.PoolID); err == nil {
		p.takePool(id.subnet, &id)
	}
	return nil, nil
}

// poolNetwork finds the network of a pool on this host, retrying across a
// rename (the mapping and the network move in one transaction).
func (p *Plugin) poolNetwork(ctx context.Context, id poolID) (state.DockerNetwork, core.Network, error) {
	legacy := ""
	if id.nonce == "" {
		legacy = id.subnet
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var dn state.DockerNetwork
		var n core.Network
		if dn, n, err = p.dk.NetworkOfPool(ctx, p.cfg.Host, id.String(), legacy); !errors.Is(err, core.ErrNotFound) {
			return dn, n, err
		}
	}
	return state.DockerNetwork{}, core.Network{}, err
}

func (p *Plugin) existingGateway(ctx context.Context, subnet, tenant string) string {
	nets, err := p.cfg.Store.Networks(ctx, tenant)
	if err != nil {
		return ""
	}
	gw, found := "", 0
	for _, n := range nets {
		if n.Subnet == subnet {
			gw = n.Gateway
			found++
		}
	}
	if found != 1 {
		return ""
	}
	return gw
}

func (p *Plugin) requestAddress(ctx context.Context, req *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error) {
	id, err := parsePoolID(req.PoolID)
	if err != nil {
		return nil, err
	}
	sn := mustCIDR(id.subnet)
	if req.Address != "" {
		ip, err := core.ParseIPv4(req.Address)
		if err != nil {
			return nil, err
		}
		req.Address = ip.String()
	}
	withLen := func(ip string) *ipam.RequestAddressResponse {
		return &ipam.RequestAddressResponse{Address: fmt.Sprintf("%s/%d", ip, maskLen(sn))}
	}
	if req.Options["RequestAddressType"] == gatewayRequest {
		if req.Address != "" {
			return withLen(req.Address), nil
		}
		first, _ := core.SubnetBounds(sn)
		return withLen(core.IPFromUint(first + 1).String()), nil
	}
	if pend, ok := p.pendingPoolOf(id.subnet); ok && pend == id {
		// Before CreateNetwork Docker asks only for --aux-address values; they
		// are reserved when the network is bound.
		if req.Address == "" {
			return nil, fmt.Errorf("%w: pool %s has no network yet", core.ErrNotFound, id.subnet)
		}
		return withLen(req.Address), nil
	}
	lo, hi, err := state.SubnetRange(id.subpool)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		_, n, err := p.poolNetwork(ctx, id)
		if err != nil {
			return nil, err
		}
		ip, _, err := p.dk.ReserveIP(ctx, n.Tenant, n.Name, req.Address, lo, hi, p.cfg.Host)
		if errors.Is(err, core.ErrNotFound) && attempt < 2 {
			continue // renamed between the two reads
		}
		if err != nil {
			return nil, err
		}
		return withLen(ip), nil
	}
}

func (p *Plugin) releaseAddress(ctx context.Context, req *ipam.ReleaseAddressRequest) (*empty, error) {
	id, err := parsePoolID(req.PoolID)
	if err != nil {
		return nil, err
	}
	ip, err := core.ParseIPv4(req.Address)
	if err != nil {
		return nil, err
	}
	addr := ip.String()
	_, n, err := p.poolNetwork(ctx, id)
	if errors.Is(err, core.ErrNotFound) {
		return nil, nil // the gateway or an aux address of a pending pool, or a network already gone
	}
	if err != nil {
		return nil, err
	}
	if addr == n.Gateway {
		return nil, nil
	}
	owner, err := p.dk.ReleaseIP(ctx, n.Tenant, n.Name, addr, p.cfg.Host)
	if err != nil || owner == "" || state.IsAux(owner) {
		return nil, err
	}
	// Still an endpoint's: Docker deleted it without telling the driver (forced
	// cleanup after a restart). Garbage collection removes it once Docker's view
	// confirms that; removing it here would trust a release that might be late,
	// and the address may belong to a newer endpoint by now.
	if ep, _, err := p.cfg.Store.GetEndpoint(ctx, n.Tenant, owner); err == nil && ep.DockerEndpoint != "" && ep.Host == p.cfg.Host && ep.IP == addr {
		p.markReleased(ep.Key())
	}
	return nil, nil
}

// mustCIDR parses a subnet parsePoolID validated.
func mustCIDR(s string) *net.IPNet {
	_, n, _ := net.ParseCIDR(s)
	return n
}
