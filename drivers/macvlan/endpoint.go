package macvlan

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

// epRecord is what the driver remembers about an endpoint: enough to find its
// child again and to judge it, with nothing but the state dir after a crash.
type epRecord struct {
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
	Network     string `json:"network"`
	NetNSPath   string `json:"netnsPath"`
	NetNSID     string `json:"netnsId"`
	Lower       string `json:"lower"`
	Mode        string `json:"mode"`
	MAC         string `json:"mac,omitempty"` // "" in passthru mode: the child has the parent's MAC
	Addr        string `json:"addr"`          // IP/prefix
}

// target is what a spec asks of the kernel, checked against the host: the
// record to keep and what creating or judging the child needs.
type target struct {
	rec   epRecord
	mode  netlink.MacvlanMode
	mac   net.HardwareAddr // nil in passthru mode or without a MAC
	lower netlink.Link
	cif   nl.ContainerIf
}

// target validates ep and finds its lower device.
func (d *Driver) target(ep core.EndpointSpec) (target, error) {
	var t target
	o, err := parseOptions(ep.Net.Network)
	if err != nil {
		return t, fmt.Errorf("endpoint %s: network %s: %w", ep.Key(), ep.Net.Key(), err)
	}
	t.mode, _ = kernelMode(o.mode)
	if ep.MAC != "" && o.mode != ModePassthru {
		if t.mac, err = net.ParseMAC(ep.MAC); err != nil {
			return t, fmt.Errorf("endpoint %s: %w: MAC %q", ep.Key(), core.ErrInvalid, ep.MAC)
		}
	}
	_, sn, err := net.ParseCIDR(ep.Net.Subnet)
	if err != nil {
		return t, fmt.Errorf("endpoint %s: %w: subnet %q", ep.Key(), core.ErrInvalid, ep.Net.Subnet)
	}
	prefix, _ := sn.Mask.Size()
	t.lower, err = d.host.LinkByName(o.lower())
	if nl.IsNotFound(err) {
		return t, fmt.Errorf("endpoint %s: %w: parent %s of network %s does not exist on this host", ep.Key(), core.ErrNotFound, o.lower(), ep.Net.Key())
	}
	if err != nil {
		return t, fmt.Errorf("endpoint %s: look up %s: %w", ep.Key(), o.lower(), err)
	}
	t.cif = nl.ContainerIf{IP: ep.IP, Prefix: prefix, Gateway: ep.Net.Gateway}
	t.rec = epRecord{Key: ep.Key(), Fingerprint: ep.Fingerprint(), Network: ep.Net.Key(), NetNSPath: ep.NetNSPath,
		NetNSID: ep.NetNSID, Lower: o.lower(), Mode: o.mode, MAC: t.mac.String(), Addr: fmt.Sprintf("%s/%d", ep.IP, prefix)}
	return t, nil
}

// adopt makes rec the endpoint's record. A child left in another namespace by
// an older spec (the container was restarted into a new one) goes first: one
// endpoint, one child. The record is written before the child exists: a crash
// then leaves a record without a child (the next Ensure makes it), never a
// child nobody knows of.
func (d *Driver) adopt(rec epRecord) error {
	var old epRecord
	had, err := d.eps.Get(rec.Key, &old)
	if err != nil {
		return err
	}
	if had && (old.NetNSPath != rec.NetNSPath || old.NetNSID != rec.NetNSID) {
		if err := d.deleteChildren(old); err != nil {
			return err
		}
	}
	if had && old == rec {
		return nil
	}
	return d.eps.Put(rec.Key, rec)
}

// EnsureEndpoint plugs the endpoint in as a child of the network's lower device,
// created straight inside the container's namespace. A child already there with
// the same fingerprint, parent, mode and MAC is repaired in place (address, up,
// gateway), never recreated, so running containers keep their traffic. For a
// Docker sandbox see ensureSandboxed.
func (d *Driver) EnsureEndpoint(ctx context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	obs := core.ObservedEndpoint{Key: ep.Key(), Fingerprint: ep.Fingerprint()}
	t, err := d.target(ep)
	if err != nil {
		return obs, err
	}
	log := d.log.WithFields(logrus.Fields{"ep": ep.Key(), "lower": t.rec.Lower, "netns": ep.NetNSPath})
	if err := d.adopt(t.rec); err != nil {
		return obs, err
	}
	if core.IsSandboxNetNSID(ep.NetNSID) {
		return d.ensureSandboxed(ctx, t, obs, log)
	}
	h, ns, err := nl.InNS(ep.NetNSPath)
	if err != nil {
		return obs, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	defer ns.Close()
	defer h.Close()
	return d.ensureIn(h, ns, t, obs, log)
}

// ensureIn keeps or makes the endpoint's child inside the namespace of h (ns).
func (d *Driver) ensureIn(h *netlink.Handle, ns netns.NsHandle, t target, obs core.ObservedEndpoint, log *logrus.Entry) (core.ObservedEndpoint, error) {
	rec := t.rec
	children, _, err := listChildren(h, rec.Key, rec.MAC)
	if err != nil {
		return obs, fmt.Errorf("endpoint %s: netns %s: %w", rec.Key, rec.NetNSPath, err)
	}
	var keep netlink.Link
	for _, c := range children {
		if keep == nil && c.Fields[0] == rec.Fingerprint && sound(c.Link, t.lower.Attrs().Index, rec) {
			keep = c.Link
			continue
		}
		// Built from an older spec, or on a parent/mode/MAC the network no longer has.
		if err := h.LinkDel(c.Link); err != nil && !nl.IsNotFound(err) {
			return obs, fmt.Errorf("endpoint %s: remove outdated %s: %w", rec.Key, c.Link.Attrs().Name, err)
		}
		log.WithField("ifname", c.Link.Attrs().Name).Info("outdated macvlan child removed")
	}
	if keep != nil {
		if err := nl.ConfigureIf(h, keep, t.cif); err != nil {
			return obs, fmt.Errorf("endpoint %s: repair %s: %w", rec.Key, keep.Attrs().Name, err)
		}
		obs.IfName, obs.IfIndex, obs.Healthy = keep.Attrs().Name, keep.Attrs().Index, true
		return obs, nil
	}

	child, err := d.createChild(h, ns, t.lower, rec, t.mode, t.mac, nl.Alias(kindEP, rec.Fingerprint, rec.Key))
	if err != nil {
		// Nothing of this endpoint exists now; forget it so that a refused
		// endpoint leaves no trace.
		_ = d.eps.Del(rec.Key)
		return obs, fmt.Errorf("endpoint %s: %w", rec.Key, err)
	}
	if err := nl.ConfigureIf(h, child, t.cif); err != nil {
		_ = h.LinkDel(child) // leave nothing half-made behind
		_ = d.eps.Del(rec.Key)
		if errors.Is(err, unix.EADDRINUSE) {
			// The kernel checks a child's MAC against its siblings when it goes up.
			return obs, fmt.Errorf("endpoint %s: %w: MAC %s is already used on %s (every endpoint needs its own MAC)",
				rec.Key, core.ErrInUse, rec.MAC, rec.Lower)
		}
		return obs, fmt.Errorf("endpoint %s: configure %s in %s: %w", rec.Key, child.Attrs().Name, rec.NetNSPath, err)
	}
	obs.IfName, obs.IfIndex, obs.Healthy = child.Attrs().Name, child.Attrs().Index, true
	log.WithFields(logrus.Fields{"ifname": child.Attrs().Name, "ip": t.cif.IP, "mac": rec.MAC, "mode": rec.Mode}).Info("endpoint plugged")
	return obs, nil
}

// tmpChildName is a passthru child's name between its creation and its rename
// to ethN ("npm" + 10 hex): a passthru child has the parent's MAC, not one of its
// own, so only this name marks it as the endpoint's until its alias is set.
func tmpChildName(key string) string { return core.LinkPrefix + "m" + core.Short(key) }

// createChild makes the macvlan child inside the namespace of h (ns), named the
// lowest free ethN there (nl.Locks.AddNamed: two endpoints of one container
// never race for a name), and marks it with alias. The kernel ignores an alias
// given at creation; until it is set, the recorded MAC identifies the child.
func (d *Driver) createChild(h *netlink.Handle, ns netns.NsHandle, lower netlink.Link, rec epRecord,
	mode netlink.MacvlanMode, mac net.HardwareAddr, alias string) (netlink.Link, error) {
	mv := &netlink.Macvlan{Mode: mode, LinkAttrs: netlink.LinkAttrs{ParentIndex: lower.Attrs().Index,
		Namespace: netlink.NsFd(int(ns)), HardwareAddr: mac}}
	// The host handle resolves the parent in the host namespace; the kernel
	// creates the child directly in the container's (no move, no RCU wait).
	add := func(name string) error {
		mv.Name = name
		if err := d.host.LinkAdd(mv); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return err // the name is taken: try the next
			}
			return addError(err, rec)
		}
		return nil
	}
	if mac != nil {
		if _, err := d.names.AddNamed(rec.NetNSPath, h, "eth", add); err != nil {
			return nil, err
		}
	} else if err := add(tmpChildName(rec.Key)); err != nil {
		return nil, err
	}
	child, err := h.LinkByName(mv.Name)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", mv.Name, rec.NetNSPath, err)
	}
	if err := h.LinkSetAlias(child, alias); err != nil {
		_ = h.LinkDel(child)
		return nil, fmt.Errorf("mark %s: %w", mv.Name, err)
	}
	if mac != nil {
		return child, nil
	}
	name, err := d.names.AddNamed(rec.NetNSPath, h, "eth", func(name string) error { return h.LinkSetName(child, name) })
	if err != nil {
		_ = h.LinkDel(child)
		return nil, fmt.Errorf("name %s in %s: %w", mv.Name, rec.NetNSPath, err)
	}
	if child, err = h.LinkByName(name); err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, rec.NetNSPath, err)
	}
	return child, nil
}

// addError explains the kernel's refusal to create the record's child.
func addError(err error, rec epRecord) error {
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		return fmt.Errorf("%w: MAC %s is already used on %s (every endpoint needs its own MAC)", core.ErrInUse, rec.MAC, rec.Lower)
	case errors.Is(err, unix.EINVAL) && rec.Mode == ModePassthru:
		return fmt.Errorf("%w: %s has other macvlan children; passthru takes a parent with exactly one: %v", core.ErrInUse, rec.Lower, err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%w: macvlan child of %s refused by the kernel (parent in passthru use elsewhere?): %v", core.ErrInUse, rec.Lower, err)
	}
	return fmt.Errorf("create macvlan on %s for %s: %w", rec.Lower, rec.NetNSPath, err)
}

// RemoveEndpoint deletes the endpoint's child inside its namespace, then the
// record. A namespace that is gone took the child with it: success.
func (d *Driver) RemoveEndpoint(ctx context.Context, o core.ObservedEndpoint) error {
	var rec epRecord
	has, err := d.eps.Get(o.Key, &rec)
	if err != nil || !has {
		return err // no record: nothing of ours to find
	}
	if err := d.deleteChildren(rec); err != nil {
		return err
	}
	if err := d.eps.Del(o.Key); err != nil {
		return err
	}
	d.log.WithFields(logrus.Fields{"ep": o.Key, "netns": rec.NetNSPath}).Info("endpoint unplugged")
	// The last user of a subinterface of ours may have been this endpoint, its
	// network already gone (the agent removes endpoints first; a failed removal
	// retried later comes after).
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gcVLANs()
}

// deleteChildren deletes every child of the record's endpoint in the record's
// namespace (and, for a Docker sandbox, one waiting in or given back to the
// host namespace); only links whose alias names this endpoint are touched.
func (d *Driver) deleteChildren(rec epRecord) error {
	if core.IsSandboxNetNSID(rec.NetNSID) {
		if err := d.deleteHostChildren(rec.Key); err != nil {
			return err
		}
	}
	return d.deleteInNS(rec)
}

// inspect finds the record's child and judges it. lower is the host link the
// child must hang off (nil: missing, so the child cannot be healthy). waiting
// are the endpoint's children in the host namespace, where a child handed off
// to Docker waits to be moved into its sandbox (and comes back on Leave).
func (d *Driver) inspect(rec epRecord, lower netlink.Link, waiting []nl.OwnedLink) core.ObservedEndpoint {
	obs := core.ObservedEndpoint{Key: rec.Key, Fingerprint: rec.Fingerprint}
	if core.IsSandboxNetNSID(rec.NetNSID) && len(waiting) > 0 {
		// Not up and without an address: Docker does that once it moved it.
		c := waiting[0]
		attrs := c.Link.Attrs()
		obs.Fingerprint, obs.IfName, obs.IfIndex = c.Fields[0], attrs.Name, attrs.Index
		obs.Healthy = lower != nil && len(waiting) == 1 && c.Fields[0] != "" && sound(c.Link, lower.Attrs().Index, rec)
		return obs
	}
	h, ns, gone, err := openNS(rec)
	if gone || err != nil {
		if err != nil {
			d.log.WithError(err).WithField("ep", rec.Key).Warn("cannot look into the endpoint's namespace")
		}
		return obs
	}
	defer ns.Close()
	defer h.Close()
	children, err := childrenOf(h, rec.Key)
	if err != nil || len(children) == 0 {
		return obs
	}
	c := children[0]
	attrs := c.Link.Attrs()
	obs.Fingerprint, obs.IfName, obs.IfIndex = c.Fields[0], attrs.Name, attrs.Index
	if lower == nil || len(children) > 1 || !sound(c.Link, lower.Attrs().Index, rec) {
		return obs
	}
	if core.IsSandboxNetNSID(rec.NetNSID) {
		// Docker renames, addresses and brings up a handed-off child after
		// moving it in: judging (and so repairing) that would race Docker.
		obs.Healthy = true
		return obs
	}
	obs.Healthy = attrs.Flags&net.FlagUp != 0 && hasAddr(h, c.Link, rec.Addr)
	return obs
}

// sound reports whether link is a macvlan child of lowerIndex with the record's
// mode and MAC: what cannot be repaired in place.
func sound(link netlink.Link, lowerIndex int, rec epRecord) bool {
	mv, ok := link.(*netlink.Macvlan)
	if !ok || mv.ParentIndex != lowerIndex {
		return false
	}
	if mode, _ := kernelMode(rec.Mode); mv.Mode != mode {
		return false
	}
	return rec.MAC == "" || mv.HardwareAddr.String() == rec.MAC
}

func hasAddr(h *netlink.Handle, link netlink.Link, cidr string) bool {
	addrs, err := nl.AddrList(h, link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IPNet.String() == cidr {
			return true
		}
	}
	return false
}

// childrenOf lists the links in the namespace of h marked as the endpoint's.
// A child a crash left unmarked under its temporary name counts too (with no
// fingerprint, so that it is never kept).
func childrenOf(h *netlink.Handle, key string) ([]nl.OwnedLink, error) {
	owned, _, err := listChildren(h, key, "")
	return owned, err
}

// listChildren lists the endpoint's children in the namespace of h and the link
// names in use there. A child is the endpoint's when its alias says so, or —
// left by a crash between creation and marking — when it is an unmarked macvlan
// with the endpoint's temporary name or recorded MAC (MACs are unique per endpoint).
func listChildren(h *netlink.Handle, key, mac string) ([]nl.OwnedLink, map[string]bool, error) {
	links, err := nl.LinkList(h)
	if err != nil {
		return nil, nil, err
	}
	var out []nl.OwnedLink
	used := make(map[string]bool, len(links))
	for _, l := range links {
		used[l.Attrs().Name] = true
		f, ok := nl.ParseAlias(l.Attrs().Alias, kindEP, 2)
		_, mv := l.(*netlink.Macvlan)
		switch {
		case ok && f[1] == key:
			out = append(out, nl.OwnedLink{Link: l, Fields: f})
		case mv && !ok && l.Attrs().Alias == "" &&
			(l.Attrs().Name == tmpChildName(key) || (mac != "" && l.Attrs().HardwareAddr.String() == mac)):
			out = append(out, nl.OwnedLink{Link: l, Fields: []string{"", key}})
		}
	}
	return out, used, nil
}

// openNS opens the record's namespace. gone reports that it no longer exists, or
// that its path now holds another namespace (a restarted container): either way
// the children made in the recorded one died with it. A Docker sandbox is
// identified by its path alone (core.SandboxNetNSID), so nothing is compared;
// gone then also means "not bound yet" (Docker joins before the namespace
// exists), which the callers tell apart by a child waiting on the host.
func openNS(rec epRecord) (h *netlink.Handle, ns netns.NsHandle, gone bool, err error) {
	if !core.IsSandboxNetNSID(rec.NetNSID) {
		id, err := nl.NetNSID(rec.NetNSPath)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && rec.NetNSID != "" && id != rec.NetNSID) {
			return nil, 0, true, nil
		}
		if err != nil {
			return nil, 0, false, err
		}
	}
	h, ns, err = nl.InNS(rec.NetNSPath)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.EINVAL) {
		// Gone meanwhile, or a file that is no namespace (any more, or yet).
		return nil, 0, true, nil
	}
	return h, ns, false, err
}
