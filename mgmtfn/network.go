package mgmtfn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// Docker option keys (docker network create -o KEY=VALUE).
const (
	optTenant  = "tenant"
	optNetwork = "network"
	optTag     = "tag"
	optTagType = "tag-type"
	optDriver  = "driver"
	// optGroup puts every endpoint of the Docker network in a group (of the
	// network's tenant); `--driver-opt group=` on connect picks one per endpoint.
	optGroup = "group"
)

// driverOptions are the -o keys passed to the network's driver as its options.
func driverOptions() []string {
	return []string{"parent", "mode", "mac", "nic", "vlan", "force", "host-prefix"}
}

func (p *Plugin) networkRoutes(m *http.ServeMux) {
	m.HandleFunc("/NetworkDriver.GetCapabilities", handle(p, "GetCapabilities", func(context.Context, *empty) (*network.CapabilitiesResponse, error) {
		// Scope local: Docker 20.10 without a cluster store cannot keep global
		// networks; netplugin itself connects the hosts.
		return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.GlobalScope}, nil
	}))
	m.HandleFunc("/NetworkDriver.CreateNetwork", handle(p, "CreateNetwork", p.createNetwork))
	m.HandleFunc("/NetworkDriver.DeleteNetwork", handle(p, "DeleteNetwork", p.deleteNetwork))
	m.HandleFunc("/NetworkDriver.CreateEndpoint", handle(p, "CreateEndpoint", p.createEndpoint))
	m.HandleFunc("/NetworkDriver.DeleteEndpoint", handle(p, "DeleteEndpoint", p.deleteEndpoint))
	// Never an error: Docker fails the container start on one.
	m.HandleFunc("/NetworkDriver.EndpointOperInfo", handleOr(p, "EndpointOperInfo", p.endpointInfo,
		&network.InfoResponse{Value: map[string]string{}}))
	m.HandleFunc("/NetworkDriver.Join", handle(p, "Join", p.join))
	m.HandleFunc("/NetworkDriver.Leave", handle(p, "Leave", func(_ context.Context, req *network.LeaveRequest) (*empty, error) {
		// Docker moves the link back to the host after Leave; DeleteEndpoint removes it.
		return nil, validIDs(req.NetworkID, req.EndpointID)
	}))
	// The helpers' types have every call; these have nothing to do here but must
	// succeed (a registered path never gets Docker's 404-means-fine fallback).
	for _, path := range []string{"AllocateNetwork", "FreeNetwork", "DiscoverNew", "DiscoverDelete",
		"ProgramExternalConnectivity", "RevokeExternalConnectivity"} {
		m.HandleFunc("/NetworkDriver."+path, handle(p, path, func(context.Context, *map[string]any) (*empty, error) { return nil, nil }))
	}
}

// parseOptions reads `-o` values into the network Docker asks for.
func parseOptions(opts map[string]any) (core.Network, error) {
	var n core.Network
	if v, ok := opts["com.docker.network.enable_ipv6"].(bool); ok && v {
		return n, fmt.Errorf("%w: IPv6 is not supported", core.ErrInvalid)
	}
	generic, _ := opts["com.docker.network.generic"].(map[string]any)
	keys := make([]string, 0, len(generic))
	for k := range generic {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := fmt.Sprint(generic[k])
		switch k {
		case optTenant:
			n.Tenant = v
		case optNetwork:
			n.Name = v
		case optTag:
			tag, err := strconv.Atoi(v)
			if err != nil {
				return n, fmt.Errorf("%w: -o tag=%q: want a number", core.ErrInvalid, v)
			}
			n.Tag = tag
		case optTagType:
			n.Encap = v
		case optDriver:
			n.Driver = v
		case optGroup: // see groupOption
		default:
			if !contains(driverOptions(), k) {
				return n, fmt.Errorf("%w: unknown option -o %s (valid: tenant, network, tag, tag-type, driver, group, %s)", core.ErrInvalid, k, strings.Join(driverOptions(), ", "))
			}
			if n.Options == nil {
				n.Options = map[string]string{}
			}
			n.Options[k] = v
		}
	}
	return n, nil
}

// groupOption is the -o group= of a CreateNetwork (generic options) or the
// --driver-opt group= of a CreateEndpoint (top-level options); "" for none.
func groupOption(opts map[string]any, generic bool) string {
	if generic {
		opts, _ = opts["com.docker.network.generic"].(map[string]any)
	}
	if v, ok := opts[optGroup]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// plainIP strips the prefix length Docker puts on gateways and addresses.
func plainIP(cidr string) string {
	if ip, _, err := net.ParseCIDR(cidr); err == nil {
		return ip.String()
	}
	return cidr
}

func (p *Plugin) createNetwork(ctx context.Context, req *network.CreateNetworkRequest) (*empty, error) {
	if err := validID("network", req.NetworkID); err != nil {
		return nil, err
	}
	want, err := parseOptions(req.Options)
	if err != nil {
		return nil, err
	}
	if len(req.IPv4Data) != 1 || req.IPv4Data[0] == nil || req.IPv4Data[0].Pool == "" {
		return nil, fmt.Errorf("%w: give one IPv4 --subnet", core.ErrInvalid)
	}
	if len(req.IPv6Data) > 0 {
		return nil, fmt.Errorf("%w: IPv6 is not supported", core.ErrInvalid)
	}
	sn, err := core.ParseCIDR(req.IPv4Data[0].Pool)
	if err != nil {
		return nil, err
	}
	want.Subnet = sn.String()
	want.Gateway = plainIP(req.IPv4Data[0].Gateway)
	group := groupOption(req.Options, true)
	if group != "" {
		// The group names its network: -o network= may be left out.
		g, _, err := p.cfg.Store.GetGroup(ctx, want.Tenant, group)
		if err != nil {
			return nil, fmt.Errorf("-o group=%s: %w", group, err)
		}
		if want.Name == "" {
			want.Name = g.Network
		} else if want.Name != g.Network {
			return nil, fmt.Errorf("%w: -o group=%s is a group of network %s, not %s", core.ErrInvalid, group, g.Network, want.Name)
		}
	}
	if want.Driver == "" {
		g, _, err := p.cfg.Store.Global(ctx)
		if err != nil {
			return nil, err
		}
		want.Driver = g.DefaultDriver
	}
	drv, ok := p.cfg.Drivers[want.Driver]
	if _, handsOff := drv.(core.HandOff); !ok || !handsOff {
		return nil, fmt.Errorf("%w: driver %q cannot serve Docker networks on host %s (have: %s)", core.ErrInvalid, want.Driver, p.cfg.Host, p.handOffDrivers())
	}
	dn := state.DockerNetwork{Host: p.cfg.Host, ID: req.NetworkID, Created: time.Now().UTC(),
		ForeignIPAM: req.IPv4Data[0].AddressSpace != addressSpace, Group: group}
	for _, a := range req.IPv4Data[0].AuxAddresses {
		dn.Aux = append(dn.Aux, plainIP(fmt.Sprint(a)))
	}
	// The subnet's one pending pool is this network's: see poolID. A repeated
	// CreateNetwork finds the network bound already.
	pool, pending := p.pendingPoolOf(want.Subnet)
	if !dn.ForeignIPAM {
		if !pending {
			if _, err := p.dk.Network(ctx, p.cfg.Host, req.NetworkID); err != nil {
				return nil, fmt.Errorf("%w: no IPAM pool of subnet %s is pending on %s (netplugin restarted during docker network create?); try again", core.ErrNotFound, want.Subnet, p.cfg.Host)
			}
		}
		if pending {
			dn.PoolID = pool.String()
		}
	}
	n, err := p.dk.Bind(ctx, dn, want)
	if err != nil {
		return nil, err // Docker releases the pool (ReleasePool), which frees its subnet
	}
	if pending && !dn.ForeignIPAM {
		p.takePool(want.Subnet, &pool)
	}
	p.log.WithFields(map[string]any{"docker": req.NetworkID[:12], "net": n.Key(), "subnet": n.Subnet, "pool": dn.PoolID}).Info("Docker network bound")
	p.kickSoon()
	return nil, nil
}

func (p *Plugin) handOffDrivers() string {
	var names []string
	for n, d := range p.cfg.Drivers {
		if _, ok := d.(core.HandOff); ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func (p *Plugin) deleteNetwork(ctx context.Context, req *network.DeleteNetworkRequest) (*empty, error) {
	if err := validID("network", req.NetworkID); err != nil {
		return nil, err
	}
	return nil, p.dk.Unbind(ctx, p.cfg.Host, req.NetworkID)
}

func validIDs(networkID, endpointID string) error {
	if err := validID("network", networkID); err != nil {
		return err
	}
	return validID("endpoint", endpointID)
}

// endpointName names the endpoint of a Docker endpoint; 12 hex digits, as
// Docker abbreviates its IDs.
func endpointName(eid string) string { return eid[:min(12, len(eid))] }

func (p *Plugin) logical(ctx context.Context, dockerNet string) (core.Network, error) {
	_, n, err := p.mapping(ctx, dockerNet)
	return n, err
}

// mapping returns a Docker network's record and the network it stands for.
func (p *Plugin) mapping(ctx context.Context, dockerNet string) (state.DockerNetwork, core.Network, error) {
	dn, err := p.dk.Network(ctx, p.cfg.Host, dockerNet)
	if err != nil {
		return dn, core.Network{}, err
	}
	n, _, err := p.cfg.Store.GetNetwork(ctx, dn.Tenant, dn.Network)
	return dn, n, err
}

func (p *Plugin) createEndpoint(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := validIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		resp, n, err := p.createEndpointOnce(ctx, req)
		if err == nil || attempt == 2 || !p.renamed(ctx, req.NetworkID, n) {
			return resp, err
		}
	}
}

// renamed reports whether a Docker network's network is no longer n: renamed
// between our reads, so a failed call is worth one more try.
func (p *Plugin) renamed(ctx context.Context, dockerNet string, n core.Network) bool {
	dn, err := p.dk.Network(ctx, p.cfg.Host, dockerNet)
	return err == nil && n.Name != "" && dn.Network != n.Name
}

func (p *Plugin) createEndpointOnce(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, core.Network, error) {
	dn, n, err := p.mapping(ctx, req.NetworkID)
	if err != nil {
		return nil, n, err
	}
	if req.Interface == nil || req.Interface.Address == "" {
		return nil, n, fmt.Errorf("%w: endpoint %.12s has no IPv4 address", core.ErrInvalid, req.EndpointID)
	}
	ep := core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: endpointName(req.EndpointID), IP: plainIP(req.Interface.Address),
		MAC: req.Interface.MacAddress, Host: p.cfg.Host, DockerEndpoint: req.EndpointID, Group: dn.Group}
	if g := groupOption(req.Options, false); g != "" {
		ep.Group = g // the store refuses a group that is not of this network
	}
	resp := &network.CreateEndpointResponse{Interface: &network.EndpointInterface{}}
	ownMAC := hasOwnMAC(n)
	// For hostnic --mac-address is how the seed plugin chose the NIC: the NIC
	// has that MAC already, so Docker setting it changes nothing.
	if !ownMAC && ep.MAC != "" && n.Driver != "hostnic" {
		return nil, n, fmt.Errorf("%w: --mac-address: %s endpoints use their parent's MAC", core.ErrInvalid, n.Driver)
	}
	if ep.MAC == "" && ownMAC {
		// Only fields Docker left empty may be filled in; the MAC is ours to pick.
		ep.MAC = state.NewMAC()
		resp.Interface.MacAddress = ep.MAC
	}
	owner, err := p.dk.IPOwner(ctx, n.Tenant, n.Name, ep.IP)
	if err != nil {
		return nil, n, err
	}
	if state.IsPending(owner, p.cfg.Host) {
		ep, err = p.dk.CreateEndpoint(ctx, ep, owner)
	} else {
		// Docker's own IPAM gave the address: take it like netdcli would.
		ep, err = p.cfg.Store.CreateEndpoint(ctx, ep, 0)
	}
	if err != nil {
		return nil, n, err
	}
	if resp.Interface.MacAddress != "" {
		resp.Interface.MacAddress = ep.MAC // a repeated call answers with the stored MAC
	}
	return resp, n, nil
}

// hasOwnMAC reports whether the network's endpoints get a MAC of their own.
// Docker sets any MAC we return on the link it moves: ipvlan children and macvlan
// passthru share their parent's (the kernel refuses a change), and a host NIC
// keeps its own.
func hasOwnMAC(n core.Network) bool {
	switch n.Driver {
	case "ipvlan", "hostnic":
		return false
	case "macvlan":
		return n.Options["mode"] != "passthru"
	}
	return true
}

func (p *Plugin) endpointInfo(ctx context.Context, req *network.InfoRequest) (*network.InfoResponse, error) {
	// Never an error: Docker fails the container start on one.
	resp := &network.InfoResponse{Value: map[string]string{}}
	if validIDs(req.NetworkID, req.EndpointID) != nil {
		return resp, nil
	}
	n, err := p.logical(ctx, req.NetworkID)
	if err != nil {
		return resp, nil
	}
	if ep, _, err := p.cfg.Store.GetEndpoint(ctx, n.Tenant, endpointName(req.EndpointID)); err == nil {
		resp.Value["tenant"], resp.Value["network"], resp.Value["ip"], resp.Value["mac"] = ep.Tenant, ep.Network, ep.IP, ep.MAC
		resp.Value["host-link"] = core.HostIfName(ep.Key())
	}
	return resp, nil
}

func (p *Plugin) join(ctx context.Context, req *network.JoinRequest) (*network.JoinResponse, error) {
	if err := validIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	var (
		n   core.Network
		src string
	)
	err := p.cfg.Agent.Exclusive(ctx, func(ctx context.Context) (int64, error) {
		// The link handed to Docker is built from what we read; if the
		// endpoint changed before its sandbox is recorded (the network was
		// renamed), the link is not the one the agent would keep: build it again.
		for attempt := 0; ; attempt++ {
			var rev int64
			var err error
			n, src, rev, err = p.handOff(ctx, req)
			if !errors.Is(err, state.ErrConflict) || attempt == 4 {
				return rev, err
			}
		}
	})
	if err != nil {
		return nil, err
	}
	// DisableGatewayService: never let Docker add docker_gwbridge (NAT towards
	// the host's uplink); a network without a gateway simply has no default route.
	resp := &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: src, DstPrefix: "eth"},
		Gateway: n.Gateway, DisableGatewayService: true}
	if _, routed := n.HostBlockLen(); routed {
		// ipvlan l3 has no L2 neighbour to be a gateway: everything leaves
		// through the device (RouteType 1: connected, no next hop).
		resp.Gateway = ""
		resp.StaticRoutes = []*network.StaticRoute{{Destination: "0.0.0.0/0", RouteType: 1}}
	}
	return resp, nil
}

// handOff prepares the endpoint's link for Docker and records its sandbox.
func (p *Plugin) handOff(ctx context.Context, req *network.JoinRequest) (core.Network, string, int64, error) {
	n, err := p.logical(ctx, req.NetworkID)
	if err != nil {
		return n, "", 0, err
	}
	ep, epRev, err := p.cfg.Store.GetEndpoint(ctx, n.Tenant, endpointName(req.EndpointID))
	if err != nil {
		return n, "", 0, err
	}
	if ep.DockerEndpoint != req.EndpointID || ep.Host != p.cfg.Host {
		return n, "", 0, fmt.Errorf("%w: endpoint %s is not Docker endpoint %.12s of host %s", core.ErrNotFound, ep.Key(), req.EndpointID, p.cfg.Host)
	}
	if ep.Network != n.Name {
		return n, "", 0, fmt.Errorf("endpoint %s on %s, network %s: %w", ep.Key(), ep.Network, n.Name, state.ErrConflict)
	}
	drv, ok := p.cfg.Drivers[n.Driver].(core.HandOff)
	if !ok {
		return n, "", 0, fmt.Errorf("%w: driver %q cannot serve Docker networks", core.ErrInvalid, n.Driver)
	}
	spec := core.EndpointSpec{Endpoint: ep, Net: core.NetworkSpec{Network: n}, NetNSPath: req.SandboxKey,
		NetNSID: core.SandboxNetNSID(req.SandboxKey)}
	spec.NetNS = req.SandboxKey
	if err := p.cfg.Drivers[n.Driver].EnsureNetwork(ctx, spec.Net); err != nil {
		return n, "", 0, fmt.Errorf("network %s: %w", n.Key(), err)
	}
	src, err := drv.PrepareHandOff(ctx, spec)
	if err != nil {
		return n, "", 0, err
	}
	rev, err := p.dk.AttachNetNS(ctx, ep, epRev, req.SandboxKey)
	if err != nil {
		_ = p.cfg.Drivers[n.Driver].RemoveEndpoint(ctx, core.ObservedEndpoint{Key: ep.Key()})
		return n, "", 0, err
	}
	return n, src, rev, nil
}

func (p *Plugin) deleteEndpoint(ctx context.Context, req *network.DeleteEndpointRequest) (*empty, error) {
	if err := validIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	dn, n, err := p.mapping(ctx, req.NetworkID)
	if errors.Is(err, core.ErrNotFound) {
		return nil, nil // Docker retries deletes; gone is gone
	}
	if err != nil {
		return nil, err
	}
	return nil, p.removeEndpoint(ctx, dn, n, endpointName(req.EndpointID))
}

// removeEndpoint deletes a Docker endpoint's record and its link. The address
// stays held for Docker's ReleaseAddress, which follows DeleteEndpoint: freed
// now, it would go to the next container, and the late release would then take
// it from that one.
func (p *Plugin) removeEndpoint(ctx context.Context, dn state.DockerNetwork, n core.Network, name string) error {
	key := n.Tenant + "/" + name
	hold := !dn.ForeignIPAM && !p.releasedAlready(key)
	return p.cfg.Agent.Exclusive(ctx, func(ctx context.Context) (int64, error) {
		rev, err := p.dk.DeleteEndpoint(ctx, n.Tenant, name, p.cfg.Host, hold)
		if errors.Is(err, core.ErrNotFound) {
			err = nil
		}
		if err != nil {
			return 0, err
		}
		p.forgetReleased(key)
		if drv, ok := p.cfg.Drivers[n.Driver]; ok {
			if err := drv.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: key}); err != nil {
				return rev, err
			}
		}
		return rev, nil
	})
}

// markReleased notes that Docker released the address of an endpoint it never
// deleted through the driver (forced cleanup): when the endpoint goes, its
// address is freed rather than held for a release that already came.
func (p *Plugin) markReleased(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.released[key] = time.Now()
}

func (p *Plugin) releasedAlready(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.released[key]
	return ok
}

func (p *Plugin) forgetReleased(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.released, key)
}
