package mgmtfn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

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
	m.HandleFunc("/IpamDriver.ReleasePool", handle(p, "ReleasePool", func(context.Context, *ipam.ReleasePoolRequest) (*empty, error) {
		return nil, nil // pools are the networks' subnets, released with them
	}))
	m.HandleFunc("/IpamDriver.RequestAddress", handle(p, "RequestAddress", p.requestAddress))
	m.HandleFunc("/IpamDriver.ReleaseAddress", handle(p, "ReleaseAddress", p.releaseAddress))
}

// A pool ID carries the subnet and the --ip-range: IPAM calls name only the pool,
// never the network.
func poolID(pool, sub string) string { return pool + "|" + sub }

func parsePoolID(id string) (string, string) {
	pool, sub, _ := strings.Cut(id, "|")
	return pool, sub
}

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
	if req.SubPool != "" {
		_, sub, err := net.ParseCIDR(req.SubPool)
		if err != nil || !sn.Contains(sub.IP) {
			return nil, fmt.Errorf("%w: --ip-range %s is not inside --subnet %s", core.ErrInvalid, req.SubPool, sn)
		}
	}
	resp := &ipam.RequestPoolResponse{PoolID: poolID(sn.String(), req.SubPool), Pool: sn.String(), Data: map[string]string{}}
	// A network that exists already (another host made it) keeps its gateway;
	// telling Docker stops it from picking another one.
	if gw := p.existingGateway(ctx, sn.String(), req.Options["tenant"]); gw != "" {
		ones, _ := sn.Mask.Size()
		resp.Data[gatewayRequest] = fmt.Sprintf("%s/%d", gw, ones)
	}
	return resp, nil
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
	pool, sub := parsePoolID(req.PoolID)
	sn, err := core.ParseCIDR(pool)
	if err != nil {
		return nil, err
	}
	ones, _ := sn.Mask.Size()
	withLen := func(ip string) *ipam.RequestAddressResponse {
		return &ipam.RequestAddressResponse{Address: fmt.Sprintf("%s/%d", ip, ones)}
	}
	if req.Options["RequestAddressType"] == gatewayRequest {
		if req.Address != "" {
			return withLen(req.Address), nil
		}
		first, _ := core.SubnetBounds(sn)
		return withLen(core.IPFromUint(first + 1).String()), nil
	}
	n, err := p.cfg.Store.NetworkOfSubnet(ctx, p.cfg.Host, sn.String())
	if errors.Is(err, core.ErrNotFound) {
		// Before CreateNetwork Docker asks only for --aux-address values; they are
		// reserved when the network is bound.
		if req.Address == "" {
			return nil, fmt.Errorf("%w: no netplugin network with subnet %s on %s", core.ErrNotFound, sn, p.cfg.Host)
		}
		return withLen(req.Address), nil
	}
	if err != nil {
		return nil, err
	}
	lo, hi, err := state.SubnetRange(sub)
	if err != nil {
		return nil, err
	}
	ip, _, err := p.cfg.Store.ReserveIP(ctx, n.Tenant, n.Name, req.Address, lo, hi, p.cfg.Host)
	if err != nil {
		return nil, err
	}
	return withLen(ip), nil
}

func (p *Plugin) releaseAddress(ctx context.Context, req *ipam.ReleaseAddressRequest) (*empty, error) {
	pool, _ := parsePoolID(req.PoolID)
	n, err := p.cfg.Store.NetworkOfSubnet(ctx, p.cfg.Host, pool)
	if errors.Is(err, core.ErrNotFound) {
		return nil, nil // the gateway, an aux address, or a network already gone
	}
	if err != nil {
		return nil, err
	}
	if req.Address == n.Gateway {
		return nil, nil
	}
	owner, err := p.cfg.Store.ReleaseDockerIP(ctx, n.Tenant, n.Name, req.Address, p.cfg.Host)
	if err != nil || owner == "" {
		return nil, err
	}
	// Still an endpoint's: Docker deleted it without telling the driver (forced
	// cleanup after a restart). Garbage collection removes it once Docker's view
	// confirms that; removing it here would trust a release that might be late,
	// and the address may belong to a newer endpoint by now.
	if ep, _, err := p.cfg.Store.GetEndpoint(ctx, n.Tenant, owner); err == nil && ep.DockerEndpoint != "" && ep.Host == p.cfg.Host && ep.IP == req.Address {
		p.markReleased(ep.Key())
	}
	return nil, nil
}
