package ipvlan

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// EnsureEndpoint plugs the endpoint in: an ipvlan child of the network's parent,
// created directly inside the endpoint's namespace. A child already there with
// the same fingerprint, mode and parent is repaired in place (address, up,
// route), never recreated, so a running container keeps its traffic.
func (d *Driver) EnsureEndpoint(ctx context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	fp := ep.Fingerprint()
	obs := core.ObservedEndpoint{Key: ep.Key(), Fingerprint: fp}
	if err := ctx.Err(); err != nil {
		return obs, err
	}
	want, o, err := wantRecord(ep)
	if err != nil {
		return obs, err
	}
	prefix := want.Prefix
	log := d.log.WithFields(logrus.Fields{"ep": ep.Key(), "netns": ep.NetNSPath, "parent": o.Parent, "mode": o.Mode})

	d.mu.Lock()
	defer d.mu.Unlock()
	h, done, err := d.host()
	if err != nil {
		return obs, err
	}
	defer done()
	parent, err := parentLink(h, ep.Net.Key(), o.Parent)
	if err != nil {
		return obs, err
	}
	if err := d.checkParentMode(ep.Net.Key(), o); err != nil {
		return obs, err
	}
	rec, had, err := d.recs.getEP(ep.Key())
	if err != nil {
		return obs, err
	}
	// The container got a new namespace (restart): take our child out of the old
	// one if that still exists, so one endpoint never holds two addresses.
	if had && (rec.NetNSPath != want.NetNSPath || rec.NetNSID != want.NetNSID) {
		if err := d.deleteChildren(h, rec); err != nil {
			return obs, fmt.Errorf("endpoint %s: leave old namespace: %w", ep.Key(), err)
		}
	}

	var ch *netlink.Handle
	var cns netns.NsHandle
	if core.IsSandboxNetNSID(ep.NetNSID) {
		// A sound child waiting in the host namespace, or moved into the
		// sandbox, is Docker's to configure; one is made in the host namespace
		// again while the sandbox is not bound (see handoff.go).
		found, err := d.findSandboxed(ctx, h, want, parent.Attrs().Index)
		if err != nil {
			return obs, err
		}
		if found.link == nil && !found.bound {
			if found.link, err = d.createHostChild(h, parent, want, had); err != nil {
				return obs, err
			}
			log.WithField("link", found.link.Attrs().Name).Info("child made again in the host namespace for Docker to move")
		}
		if found.link != nil {
			if found.bound {
				defer found.close()
			}
			if err := d.recordChild(want, rec, had, found.link); err != nil {
				return obs, err
			}
			obs.IfName, obs.IfIndex, obs.Healthy = found.link.Attrs().Name, found.link.Attrs().Index, true
			return obs, nil
		}
		ch, cns = found.ch, found.cns // bound, and no sound child: plug in as into any namespace
	} else {
		if ch, cns, err = nl.InNS(ep.NetNSPath); err != nil {
			return obs, err
		}
		if ep.NetNSID != "" {
			if id, err := fdNSID(cns); err != nil || id != ep.NetNSID {
				cns.Close()
				ch.Close()
				return obs, fmt.Errorf("endpoint %s: namespace at %s is not %s (it was replaced): %v", ep.Key(), ep.NetNSPath, ep.NetNSID, err)
			}
		}
	}
	defer cns.Close()
	defer ch.Close()

	// Keep the first sound child of ours, delete any other (an outdated
	// fingerprint, or a second child left by a crash in the middle of a rebuild).
	existing, err := d.ourChildren(ch, ep.Key())
	if err != nil {
		return obs, fmt.Errorf("list links in %s: %w", ep.NetNSPath, err)
	}
	var link netlink.Link
	for _, c := range existing {
		l := c.link
		if link == nil && reusable(c, fp, o.Mode, parent.Attrs().Index) {
			link = l
			continue
		}
		if err := ch.LinkDel(l); err != nil && !nl.IsNotFound(err) {
			return obs, fmt.Errorf("remove outdated %s in %s: %w", l.Attrs().Name, ep.NetNSPath, err)
		}
		log.WithField("ifname", l.Attrs().Name).Info("removed outdated ipvlan child")
	}

	created := false
	if link == nil {
		// The record goes first: should we crash right after creating the child,
		// the record still tells a new agent which namespace to look in.
		want.IfName, want.IfIndex = "", 0
		if err := d.recs.putEP(want); err != nil {
			return obs, fmt.Errorf("ensure endpoint %s: %w", ep.Key(), err)
		}
		alias := nl.Alias(d.kind, fp, ep.Key())
		if link, err = d.createChild(h, ch, cns, ep.NetNSPath, parent, ep.Key(), alias, o.Mode); err != nil {
			if !had {
				_ = d.recs.delEP(ep.Key())
			}
			return obs, err
		}
		created = true
	}
	if err := configure(ch, link, ep, o.Mode, prefix); err != nil {
		if created { // leave nothing half-made behind
			_ = ch.LinkDel(link)
		}
		return obs, fmt.Errorf("configure %s in %s: %w", link.Attrs().Name, ep.NetNSPath, err)
	}
	want.IfName, want.IfIndex = link.Attrs().Name, link.Attrs().Index
	if !had || rec != want { // no disk write for a no-op ensure
		if err := d.recs.putEP(want); err != nil {
			return obs, fmt.Errorf("ensure endpoint %s: %w", ep.Key(), err)
		}
	}
	obs.IfName, obs.IfIndex, obs.Healthy = want.IfName, want.IfIndex, true
	if created {
		log.WithFields(logrus.Fields{"ifname": want.IfName, "ip": ep.IP}).Info("endpoint plugged")
	} else {
		log.WithField("ifname", want.IfName).Debug("endpoint already plugged")
	}
	return obs, nil
}

// wantRecord is the record ep asks for, with its network's options.
func wantRecord(ep core.EndpointSpec) (epRecord, options, error) {
	o, err := parseOptions(ep.Net.Network)
	if err != nil {
		return epRecord{}, o, err
	}
	if err := core.ValidateEndpointIP(ep.Net.Network, ep.IP); err != nil {
		return epRecord{}, o, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	sn, _ := core.ParseCIDR(ep.Net.Subnet) // checked by parseOptions
	prefix, _ := sn.Mask.Size()
	return epRecord{Key: ep.Key(), Net: ep.Net.Key(), Fingerprint: ep.Fingerprint(), NetNSPath: ep.NetNSPath, NetNSID: ep.NetNSID,
		Parent: o.Parent, Mode: o.Mode, IP: ep.IP, Prefix: prefix}, o, nil
}

// reusable reports whether an existing child of ours can be kept for a spec
// with fingerprint fp, mode and a parent of index parentIndex.
func reusable(c child, fp, mode string, parentIndex int) bool {
	iv, ok := c.link.(*netlink.IPVlan)
	return ok && c.fp == fp && iv.Mode == netlinkMode(mode) && c.link.Attrs().ParentIndex == parentIndex
}

// createChild makes the ipvlan child of parent inside the namespace cns (at
// nsPath), under the lowest free ethN name there, marked with alias. No MAC is
// given: children share the parent's and the kernel refuses any other.
func (d *Driver) createChild(h, ch *netlink.Handle, cns netns.NsHandle, nsPath string, parent netlink.Link, key, alias, mode string) (netlink.Link, error) {
	var link netlink.Link
	_, err := d.names.AddNamed(nsPath, ch, "eth", func(name string) error {
		iv := &netlink.IPVlan{
			LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index,
				Namespace: netlink.NsFd(int(cns)), Alias: alias},
			Mode: netlinkMode(mode),
		}
		var err error
		link, err = addChild(h, ch, iv, parent, key, alias)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", key, err)
	}
	return link, nil
}

// addChild creates iv and marks it with alias: ch is a handle in the namespace
// the child lands in (h's own when iv names no other).
func addChild(h, ch *netlink.Handle, iv *netlink.IPVlan, parent netlink.Link, key, alias string) (netlink.Link, error) {
	name := iv.Name
	// Sent through the host handle: the parent's index means something only in
	// the host namespace; IFLA_NET_NS_FD puts the child in the container's.
	if err := h.LinkAdd(iv); err != nil {
		switch {
		case errors.Is(err, unix.EOPNOTSUPP):
			return nil, fmt.Errorf("create ipvlan child of %s for %s: this kernel has no ipvlan support (CONFIG_IPVLAN, module ipvlan): %w",
				parent.Attrs().Name, key, err)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("%w: create ipvlan child of %s for %s: parent busy (bridge port, bond slave or macvlan parent?): %w",
				core.ErrInUse, parent.Attrs().Name, key, err)
		}
		return nil, fmt.Errorf("create ipvlan child %s of %s for %s: %w", name, parent.Attrs().Name, key, err)
	}
	link, err := ch.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find new child %s: %w", name, err)
	}
	if link.Attrs().Alias != alias { // the kernel ignores IFLA_IFALIAS on create
		if err := ch.LinkSetAlias(link, alias); err != nil {
			_ = ch.LinkDel(link)
			return nil, fmt.Errorf("mark %s: %w", name, err)
		}
		link.Attrs().Alias = alias
	}
	return link, nil
}

// configure gives the child its address, brings it up and routes: via the
// gateway in l2 mode; in l3 mode a default route through the device itself,
// since an l3 child has no ARP and so cannot resolve a gateway. Either default
// route is added only when the namespace has none (it belongs to the
// container's first network).
func configure(ch *netlink.Handle, link netlink.Link, ep core.EndpointSpec, mode string, prefix int) error {
	gw := ""
	if mode == ModeL2 {
		gw = ep.Net.Gateway
	}
	if err := nl.ConfigureIf(ch, link, nl.ContainerIf{IP: ep.IP, Prefix: prefix, Gateway: gw}); err != nil {
		return err
	}
	if mode != ModeL3 {
		return nil
	}
	def := netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := ch.RouteAdd(&def); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("default route dev %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// RemoveEndpoint deletes the endpoint's child and its record. An endpoint with
// no record is absent: success.
func (d *Driver) RemoveEndpoint(ctx context.Context, o core.ObservedEndpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	rec, had, err := d.recs.getEP(o.Key)
	if err != nil || !had {
		return err
	}
	h, done, err := d.host()
	if err != nil {
		return err
	}
	defer done()
	if err := d.deleteChildren(h, rec); err != nil {
		return fmt.Errorf("remove endpoint %s: %w", o.Key, err)
	}
	if err := d.recs.delEP(o.Key); err != nil {
		return fmt.Errorf("remove endpoint %s: %w", o.Key, err)
	}
	d.log.WithFields(logrus.Fields{"ep": o.Key, "netns": rec.NetNSPath}).Info("endpoint removed")
	return nil
}

// deleteChildren deletes every child marked as rec's endpoint in rec's
// namespace. A namespace that is gone, or whose path now names another
// namespace, took the child with it (or is not ours to touch): success. For a
// Docker sandbox, a child in the host namespace h (waiting for Docker, or
// given back by its Leave) goes too.
func (d *Driver) deleteChildren(h *netlink.Handle, rec epRecord) error {
	if core.IsSandboxNetNSID(rec.NetNSID) {
		if err := d.deleteHostChildren(h, rec.Key); err != nil {
			return err
		}
		return d.deleteInSandbox(rec)
	}
	if !sameNS(rec.NetNSPath, rec.NetNSID) {
		return nil
	}
	ch, cns, err := nl.InNS(rec.NetNSPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer cns.Close()
	defer ch.Close()
	return d.deleteOurChildren(ch, rec)
}

// deleteOurChildren deletes the endpoint's children in the namespace of h.
func (d *Driver) deleteOurChildren(h *netlink.Handle, rec epRecord) error {
	kids, err := d.ourChildren(h, rec.Key)
	if err != nil {
		return fmt.Errorf("list links in %s: %w", rec.NetNSPath, err)
	}
	for _, c := range kids {
		if err := h.LinkDel(c.link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("delete %s in %s: %w", c.link.Attrs().Name, rec.NetNSPath, err)
		}
	}
	return nil
}

// sameNS reports whether path still names the namespace id ("dev:inode", as
// the agent computes it); with no id recorded, whether path exists at all.
func sameNS(path, id string) bool {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false
	}
	return id == "" || fmt.Sprintf("%d:%d", st.Dev, st.Ino) == id
}

// fdNSID is the "dev:inode" of an open namespace.
func fdNSID(ns netns.NsHandle) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}
