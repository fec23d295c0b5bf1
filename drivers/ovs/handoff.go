package ovs

import (
	"context"
	"fmt"
	"net"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// PrepareHandOff implements core.HandOff for Docker's Join, which comes before
// the sandbox's namespace exists: Docker itself moves the link we name into
// the sandbox, renames and addresses it. So the veth is made with its
// container end, core.HandOffIfName, in this process's namespace (the one
// dockerd runs in and moves links from) and its host end in HostNetNS (where
// vswitchd opens it), created there directly rather than moved. The host end
// gets the same alias, and its port the same row, tag and external_ids, as
// EnsureEndpoint would give them for this spec, so that the agent observes the
// endpoint healthy once vswitchd attaches the port and never rebuilds it.
//
// A repeated call while the container end is still in our namespace returns
// the same name (repairing the port if needed); a host end left from another
// spec, or whose container end has gone, is replaced.
func (d *Driver) PrepareHandOff(ctx context.Context, ep core.EndpointSpec) (string, error) {
	key, name, peerName, fp := ep.Key(), core.HostIfName(ep.Key()), core.HandOffIfName(ep.Key()), ep.Fingerprint()
	if err := validateTag(ep.Net); err != nil {
		return "", err
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return "", fmt.Errorf("%w: MAC of %s: %v", core.ErrInvalid, key, err)
	}
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	if err := d.ready(ctx); err != nil {
		return "", err
	}
	vlan, err := d.localVLAN(ctx, ep.Net)
	if err != nil {
		return "", err
	}
	defer d.lockKey(key)()
	cur, err := d.readEndpoint(ctx, name)
	if err != nil {
		return "", err
	}
	if cur.port != nil && !d.ours(cur.port.ext) {
		return "", d.notOurs("OVS port "+name, cur.port.ext)
	}
	ext := d.marks(roleEndpoint, extEndpoint, key, extFP, fp, extNet, ep.Net.Key())
	obs := core.ObservedEndpoint{Key: key, Fingerprint: fp, IfName: name}

	link, err := d.host.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
	case err != nil:
		return "", fmt.Errorf("look up %s: %w", name, err)
	default:
		f, ok := nl.ParseAlias(link.Attrs().Alias, kindEP, 2)
		if !ok {
			return "", fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, name)
		}
		if f[0] == fp && d.peerHere(link, peerName) {
			if _, err := d.repair(ctx, obs, link, cur, vlan, ext); err != nil {
				return "", err
			}
			return peerName, nil
		}
		// Another spec, or the container end already taken into a sandbox:
		// a new Join needs a new pair (deleting one end deletes both).
		if err := d.host.LinkDel(link); err != nil && !nl.IsNotFound(err) {
			return "", fmt.Errorf("remove outdated %s: %w", name, err)
		}
	}

	alias := nl.Alias(kindEP, fp, key)
	mtu, err := d.containerMTU(ep.Net)
	if err != nil {
		return "", err
	}
	// The MTU is set before the hand-off: Docker moves the link as it is.
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: name, Flags: net.FlagUp, Alias: alias, MTU: mtu},
		PeerName:         peerName,
		PeerNamespace:    netlink.NsFd(int(d.rtNS)),
		PeerHardwareAddr: mac,
	}
	if err := d.host.LinkAdd(veth); err != nil {
		return "", fmt.Errorf("create veth %s/%s for %s: %w", name, peerName, key, err)
	}
	ok := false
	defer func() {
		if !ok { // leave nothing half-made behind; the next call starts afresh
			_ = d.host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}})
		}
	}()
	link, err = d.host.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("find %s: %w", name, err)
	}
	if link.Attrs().Alias == "" { // older kernels ignore IFLA_IFALIAS on create
		if err := d.host.LinkSetAlias(link, alias); err != nil {
			return "", fmt.Errorf("mark %s: %w", name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := d.host.LinkSetUp(link); err != nil {
			return "", fmt.Errorf("set %s up: %w", name, err)
		}
	}
	// As in EnsureEndpoint: a new port of a group passes nothing until its
	// policy is in, and vswitchd leaves its qdiscs to us.
	ofport, err := d.holdUntilPolicy(ctx, ep)
	if err != nil {
		return "", err
	}
	qos, err := d.noopQoS(ctx)
	if err != nil {
		return "", err
	}
	req := &portReq{name: name, insert: true, tag: vlan, ext: ext, ofport: ofport, qos: qos}
	if cur.port != nil {
		req.drop = cur.port.uuid // the row of the old link: replace it
	}
	if err := d.batch.do(ctx, req); err != nil {
		return "", fmt.Errorf("add port %s for %s: %w", name, key, err)
	}
	ok = true
	d.log.WithFields(logrus.Fields{"ep": key, "port": name, "link": peerName, "vlan": vlan, "ip": ep.IP}).Debug("endpoint prepared for hand-off")
	return peerName, nil
}

// peerHere reports whether the container end of host, named peerName, is
// still in this process's namespace, i.e. not yet taken by the runtime. The
// peer's IFLA_LINK must point back at host, so that a stranger of that name
// is never handed out.
func (d *Driver) peerHere(host netlink.Link, peerName string) bool {
	peer, err := d.rt.LinkByName(peerName)
	if err != nil {
		return false
	}
	_, isVeth := peer.(*netlink.Veth)
	return isVeth && peer.Attrs().ParentIndex == host.Attrs().Index && host.Attrs().ParentIndex == peer.Attrs().Index
}
