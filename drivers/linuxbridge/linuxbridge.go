// Package linuxbridge is the driver with one Linux bridge per network and a veth
// pair per endpoint, the container end created straight inside the container's
// namespace (moving a link between namespaces waits for an RCU grace period,
// ~20 ms, against ~1.3 ms for creating it there).
//
// Across hosts (see uplink.go): a VXLAN network's bridge holds a kernel VXLAN
// device of the network's VNI sending from --vtep-ip, with learning off; its
// forwarding entries (remote MAC -> VTEP, and one all-zero entry per remote
// host of the network for broadcast and multicast) and its neighbour entries
// (remote IP -> MAC, answered locally: ARP suppression) come from etcd through
// SetRemotes, never from flooding. A VLAN network's bridge holds the 802.1Q
// subinterface of --uplink for its tag. Without --vtep-ip or --uplink such a
// network stays local to this host, and its endpoints' status says so.
package linuxbridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// arpRetrans is how often containers on VXLAN networks retry ARP.
const arpRetrans = 100 * time.Millisecond

// Name is the driver's name in network specs.
const Name = "linuxbridge"

// Config is the driver's host setup.
type Config struct {
	// Host is the agent's --host-label; it qualifies every ownership mark.
	Host string
	// VTEP is this host's underlay IPv4 address (--vtep-ip). VXLAN networks
	// get a VXLAN device sending from it; without it they stay on this host.
	VTEP string
	// MTU is the MTU of container interfaces on VXLAN networks (--mtu); 0:
	// the MTU of the interface holding VTEP minus the 50 bytes of VXLAN
	// encapsulation, so that no packet needs fragmenting on the underlay.
	MTU int
	// Uplink is the interface whose 802.1Q subinterfaces carry the VLAN
	// networks (--uplink). It must exist; it is never taken implicitly, and
	// the agent never changes the uplink itself.
	Uplink string
}

// Driver programs bridges, veths and the bridges' uplinks (VXLAN devices,
// 802.1Q subinterfaces) in the namespace it was created in.
type Driver struct {
	log *logrus.Entry
	cfg Config
	// vtep is cfg.VTEP parsed; nil without one.
	vtep net.IP
	// Alias kinds of the links this driver owns, qualified by the owning agent's
	// host label, so that agents sharing one kernel (tests, or a host renamed)
	// never take each other's links for stale ones:
	//   bridge:    netplugin:lbnet@<host>:<fingerprint>[+vx|+vlan]:<tenant/net>
	//              (the suffix says which uplink link the bridge must hold)
	//   host veth: netplugin:lbep@<host>:<fingerprint>:<bridge>:<tenant/ep>
	//   VXLAN:     netplugin:lbvx@<host>:<vni>:<tenant/net>
	//   802.1Q:    netplugin:lbvlan@<host>:<uplink>:<vlan>:<tenant/net>
	//   ifb:       netplugin:lbifb@<host>:<tenant/ep> (a profile's outbound shaper)
	kindNet, kindEP, kindVX, kindVLAN, kindIFB string
	host                                       string
	// sysctlRoot is /proc/sys; a field so that the isolation sysctl is visible in one place.
	sysctlRoot string
	// names serialises picking and creating an ethN per container namespace.
	names nl.Locks

	// mu guards remotes and mtus.
	mu sync.Mutex
	// remotes is what the agent last gave SetRemotes, so that a network
	// (re)created later gets its forwarding entries at once.
	remotes map[string]core.NetRemotes
	// mtus caches the container MTU of each network as its last
	// EnsureNetwork found it, so that EnsureEndpoint needs no address dump.
	mtus map[string]int

	// pol is the policy state (policy.go).
	pol *policyState
}

var (
	_ core.Driver    = (*Driver)(nil)
	_ core.HandOff   = (*Driver)(nil)
	_ core.Forwarder = (*Driver)(nil)
	_ core.Noter     = (*Driver)(nil)
)

// New returns the driver for the agent of cfg.Host. It fails only on a bad
// configuration; a VTEP or uplink missing on the host is an error per network.
func New(log *logrus.Entry, cfg Config) (*Driver, error) {
	owner := strings.ReplaceAll(cfg.Host, ":", "_")
	d := &Driver{log: log.WithField("driver", Name), cfg: cfg, sysctlRoot: "/proc/sys",
		kindNet: "lbnet@" + owner, kindEP: "lbep@" + owner, kindVX: "lbvx@" + owner, kindVLAN: "lbvlan@" + owner,
		kindIFB: "lbifb@" + owner, host: cfg.Host, mtus: map[string]int{}, pol: newPolicyState(cfg.Host)}
	if cfg.VTEP != "" {
		if d.vtep = net.ParseIP(cfg.VTEP).To4(); d.vtep == nil {
			return nil, fmt.Errorf("linuxbridge: %w: VTEP %q is not an IPv4 address", core.ErrInvalid, cfg.VTEP)
		}
	}
	if cfg.MTU != 0 && (cfg.MTU < 576 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("linuxbridge: %w: MTU %d outside 576-65535", core.ErrInvalid, cfg.MTU)
	}
	if len(cfg.Uplink) > 15 || strings.ContainsAny(cfg.Uplink, " /:") {
		return nil, fmt.Errorf("linuxbridge: %w: uplink %q is not an interface name", core.ErrInvalid, cfg.Uplink)
	}
	return d, nil
}

// BridgeName is the bridge of a network on the host of agent host: per host as
// well as per network, so that agents sharing one kernel (tests) never share a
// bridge; on a real host the name is just as stable.
func BridgeName(host, netKey string) string { return core.BridgeName(host + "|" + netKey) }

// VXLANName is the VXLAN device of a network on the host of agent host ("npx"
// + 10 hex = 13 bytes).
func VXLANName(host, netKey string) string {
	return core.LinkPrefix + "x" + core.Short(host+"|"+netKey)
}

// Name implements core.Driver.
func (d *Driver) Name() string { return Name }

// EnsureNetwork creates or fixes the network's bridge and its uplink link (a
// VXLAN device or an 802.1Q subinterface, see uplink.go).
func (d *Driver) EnsureNetwork(ctx context.Context, n core.NetworkSpec) error {
	name := BridgeName(d.host, n.Key())
	link, err := netlink.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s for %s: %w", name, n.Key(), err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("find bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("look up bridge %s: %w", name, err)
	default:
		if _, ok := nl.ParseAlias(link.Attrs().Alias, d.kindNet, 2); !ok {
			return fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, name)
		}
	}
	up, err := d.ensureUplink(n, link)
	if err != nil {
		return err
	}
	if err := d.setGateway(link, n); err != nil {
		return err
	}
	// Networks are isolated L2 segments: the host must not route between them, so
	// forwarding is off for packets arriving on the bridge (the gateway address is
	// for host<->container traffic only).
	if err := os.WriteFile(filepath.Join(d.sysctlRoot, "net/ipv4/conf", name, "forwarding"), []byte("0"), 0o644); err != nil {
		return fmt.Errorf("disable forwarding on %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	// The alias goes last: it records a fully programmed network.
	fp := n.Fingerprint()
	if up != "" {
		fp += "+" + up
	}
	if alias := nl.Alias(d.kindNet, fp, n.Key()); link.Attrs().Alias != alias {
		if err := netlink.LinkSetAlias(link, alias); err != nil {
			return fmt.Errorf("mark bridge %s: %w", name, err)
		}
	}
	d.log.WithFields(logrus.Fields{"net": n.Key(), "bridge": name, "uplink": up}).Debug("network ensured")
	return nil
}

// setGateway puts exactly the gateway address on the bridge.
func (d *Driver) setGateway(link netlink.Link, n core.NetworkSpec) error {
	addrs, err := nl.AddrList(nil, link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	var want *netlink.Addr
	if n.Gateway != "" {
		_, sn, err := net.ParseCIDR(n.Subnet)
		if err != nil {
			return fmt.Errorf("subnet of %s: %w", n.Key(), err)
		}
		want = &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(n.Gateway).To4(), Mask: sn.Mask}}
	}
	for _, a := range addrs {
		if want != nil && a.IPNet.String() == want.IPNet.String() {
			want = nil // already there
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	if want != nil {
		if err := netlink.AddrReplace(link, want); err != nil {
			return fmt.Errorf("add gateway %s to %s: %w", want.IPNet, link.Attrs().Name, err)
		}
	}
	return nil
}

// RemoveNetwork deletes the bridge and its uplink link if they are ours.
func (d *Driver) RemoveNetwork(ctx context.Context, o core.ObservedNetwork) error {
	if err := d.removeUplinks(o.Key, ""); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.mtus, o.Key)
	d.mu.Unlock()
	return deleteOurs(BridgeName(d.host, o.Key), d.kindNet, 2)
}

// EnsureEndpoint plugs the endpoint in. A link already there with the same
// fingerprint is repaired in place (up, on its bridge), never recreated, so
// running containers keep their traffic.
func (d *Driver) EnsureEndpoint(ctx context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	hostName := core.HostIfName(ep.Key())
	brName := BridgeName(d.host, ep.Net.Key())
	fp := ep.Fingerprint()
	obs := core.ObservedEndpoint{Key: ep.Key(), Fingerprint: fp, IfName: hostName}
	br, err := netlink.LinkByName(brName)
	if err != nil {
		return obs, fmt.Errorf("bridge %s of network %s: %w", brName, ep.Net.Key(), err)
	}
	if link, err := netlink.LinkByName(hostName); err == nil {
		f, ok := nl.ParseAlias(link.Attrs().Alias, d.kindEP, 3)
		if !ok {
			return obs, fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, hostName)
		}
		if f[0] == fp {
			if err := netlink.LinkSetMasterByIndex(link, br.Attrs().Index); err != nil {
				return obs, fmt.Errorf("attach %s to %s: %w", hostName, brName, err)
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return obs, fmt.Errorf("set %s up: %w", hostName, err)
			}
			obs.IfIndex, obs.Healthy = link.Attrs().Index, true
			return obs, nil
		}
		if err := netlink.LinkDel(link); err != nil && !nl.IsNotFound(err) {
			return obs, fmt.Errorf("remove outdated %s: %w", hostName, err)
		}
	} else if !nl.IsNotFound(err) {
		return obs, fmt.Errorf("look up %s: %w", hostName, err)
	}
	// A new link of a group passes nothing until its policy is in.
	if err := d.holdUntilPolicy(ctx, ep); err != nil {
		return obs, err
	}

	h, ns, err := nl.InNS(ep.NetNSPath)
	if err != nil {
		return obs, err
	}
	defer ns.Close()
	defer h.Close()
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return obs, fmt.Errorf("MAC of %s: %w", ep.Key(), err)
	}
	mtu, err := d.mtu(ep.Net)
	if err != nil {
		return obs, err
	}
	// Both ends get the network's MTU (netlink gives the peer the link's).
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index, Flags: net.FlagUp, MTU: mtu},
		PeerNamespace:    netlink.NsFd(int(ns)),
		PeerHardwareAddr: mac,
	}
	ifName, err := d.names.AddNamed(ep.NetNSPath, h, "eth", func(name string) error {
		veth.PeerName = name
		err := netlink.LinkAdd(veth)
		if errors.Is(err, unix.EEXIST) {
			if _, herr := netlink.LinkByName(hostName); herr == nil {
				err = fmt.Errorf("host end %s exists: %v", hostName, err) // not the ethN: no other name helps
			}
		}
		return err
	})
	if err != nil {
		return obs, fmt.Errorf("create veth %s/%s for %s: %w", hostName, veth.PeerName, ep.Key(), err)
	}
	ok := false
	defer func() {
		if !ok { // leave nothing half-made behind
			_ = netlink.LinkDel(veth)
		}
	}()
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return obs, fmt.Errorf("find %s: %w", hostName, err)
	}
	// The kernel ignores an alias given at creation: set it now.
	if err := netlink.LinkSetAlias(host, nl.Alias(d.kindEP, fp, brName, ep.Key())); err != nil {
		return obs, fmt.Errorf("mark %s: %w", hostName, err)
	}
	peer, err := h.LinkByName(ifName)
	if err != nil {
		return obs, fmt.Errorf("find %s in %s: %w", ifName, ep.NetNSPath, err)
	}
	_, sn, _ := net.ParseCIDR(ep.Net.Subnet)
	prefix, _ := sn.Mask.Size()
	if err := nl.ConfigureIf(h, peer, nl.ContainerIf{IP: ep.IP, Prefix: prefix, Gateway: ep.Net.Gateway}); err != nil {
		return obs, fmt.Errorf("configure %s in %s: %w", ifName, ep.NetNSPath, err)
	}
	if d.wantUplink(ep.Net.Encap) == d.kindVX {
		// The VXLAN device answers ARP itself from etcd's entries and drops
		// what it cannot answer, so a request never leaves the host: a peer
		// that started a moment ago, whose entry is still on its way, is
		// asked again after 100 ms instead of the kernel's 1 s.
		if err := nl.SetARPRetrans(ep.NetNSPath, ifName, arpRetrans); err != nil {
			return obs, fmt.Errorf("ARP retry of %s in %s: %w", ifName, ep.NetNSPath, err)
		}
	}
	if err := d.qosFor(ep.Key()); err != nil {
		return obs, err
	}
	ok = true
	obs.IfIndex, obs.Healthy = host.Attrs().Index, true
	d.log.WithFields(logrus.Fields{"ep": ep.Key(), "link": hostName, "ifname": ifName, "ip": ep.IP}).Debug("endpoint plugged")
	return obs, nil
}

// PrepareHandOff creates the endpoint's veth with both ends in the host
// namespace, the container end named core.HandOffIfName, for Docker to move into
// the sandbox. A repeated call for a link that is still in the host finds it.
func (d *Driver) PrepareHandOff(ctx context.Context, ep core.EndpointSpec) (string, error) {
	hostName, peerName := core.HostIfName(ep.Key()), core.HandOffIfName(ep.Key())
	brName := BridgeName(d.host, ep.Net.Key())
	fp := ep.Fingerprint()
	if link, err := netlink.LinkByName(hostName); err == nil {
		f, ok := nl.ParseAlias(link.Attrs().Alias, d.kindEP, 3)
		if !ok {
			return "", fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, hostName)
		}
		if _, perr := netlink.LinkByName(peerName); perr == nil && f[0] == fp {
			return peerName, nil
		}
		if err := netlink.LinkDel(link); err != nil && !nl.IsNotFound(err) {
			return "", fmt.Errorf("remove outdated %s: %w", hostName, err)
		}
	}
	br, err := netlink.LinkByName(brName)
	if err != nil {
		return "", fmt.Errorf("bridge %s of network %s: %w", brName, ep.Net.Key(), err)
	}
	if err := d.holdUntilPolicy(ctx, ep); err != nil {
		return "", err
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return "", fmt.Errorf("MAC of %s: %w", ep.Key(), err)
	}
	mtu, err := d.mtu(ep.Net)
	if err != nil {
		return "", err
	}
	// The MTU is set before the hand-off: Docker moves the link as it is.
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index, Flags: net.FlagUp, MTU: mtu},
		PeerName:         peerName,
		PeerHardwareAddr: mac,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return "", fmt.Errorf("create veth %s/%s for %s: %w", hostName, peerName, ep.Key(), err)
	}
	if err := netlink.LinkSetAlias(veth, nl.Alias(d.kindEP, fp, brName, ep.Key())); err != nil {
		_ = netlink.LinkDel(veth)
		return "", fmt.Errorf("mark %s: %w", hostName, err)
	}
	return peerName, nil
}

// RemoveEndpoint deletes the host end of the veth (the kernel removes the
// peer, and the link's qdiscs) and the ifb of its profile.
func (d *Driver) RemoveEndpoint(ctx context.Context, o core.ObservedEndpoint) error {
	if err := deleteOurs(core.HostIfName(o.Key), d.kindEP, 3); err != nil {
		return err
	}
	return deleteOurs(IFBName(d.host, o.Key), d.kindIFB, 1)
}

func deleteOurs(name, kind string, fields int) error {
	link, err := netlink.LinkByName(name)
	if nl.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if _, ok := nl.ParseAlias(link.Attrs().Alias, kind, fields); !ok {
		return fmt.Errorf("%w: link %s is not netplugin's; not touching it", core.ErrInUse, name)
	}
	if err := netlink.LinkDel(link); err != nil && !nl.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Observe lists this driver's bridges and veths by their alias. A bridge
// whose uplink link (VXLAN device or 802.1Q subinterface) is missing, down or
// off the bridge, or is not what this host's settings now call for, is
// reported with an empty fingerprint, so that the agent ensures it again.
func (d *Driver) Observe(ctx context.Context) (core.Actual, error) {
	links, err := nl.LinkList(nil)
	if err != nil {
		return core.Actual{}, err
	}
	a := core.Actual{Networks: map[string]core.ObservedNetwork{}, Endpoints: map[string]core.ObservedEndpoint{}}
	byName := map[string]netlink.Link{}
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	ups := d.uplinksByNet(links)
	for _, l := range links {
		attrs := l.Attrs()
		if f, ok := nl.ParseAlias(attrs.Alias, d.kindNet, 2); ok {
			fp, encap, _ := strings.Cut(f[0], "+")
			if !d.uplinkHealthy(encap, ups[f[1]], attrs.Index) {
				fp = ""
			}
			a.Networks[f[1]] = core.ObservedNetwork{Key: f[1], Fingerprint: fp}
			continue
		}
		f, ok := nl.ParseAlias(attrs.Alias, d.kindEP, 3)
		if !ok {
			continue
		}
		br, onBridge := byName[f[1]]
		healthy := attrs.Flags&net.FlagUp != 0 && onBridge && attrs.MasterIndex == br.Attrs().Index
		a.Endpoints[f[2]] = core.ObservedEndpoint{Key: f[2], Fingerprint: f[0], IfName: attrs.Name,
			IfIndex: attrs.Index, Healthy: healthy}
	}
	return a, nil
}
