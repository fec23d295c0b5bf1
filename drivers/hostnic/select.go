package hostnic

import (
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/recstore"
)

// boundTo returns the endpoint (other than except) whose binding holds the NIC
// sel names, or "". A bound NIC is inside a container, so the host cannot see
// it: the bindings are what tell "in use" from "not found".
func (d *Driver) boundTo(sel selector, except string) (string, error) {
	bs, bad, err := recstore.List[binding](d.eps)
	if err != nil {
		return "", err
	}
	d.logBad(bad)
	for _, b := range bs {
		if b.Key == except || !b.Detached.IsZero() {
			continue
		}
		if (sel.mac != "" && b.MAC == sel.mac) || (sel.name != "" && b.Orig.Name == sel.name) {
			return b.Key, nil
		}
	}
	return "", nil
}

// find returns the host link sel names.
func (d *Driver) find(sel selector) (netlink.Link, error) {
	links, err := nl.LinkList(d.host)
	if err != nil {
		return nil, err
	}
	var hits []netlink.Link
	var names []string
	for _, l := range links {
		a := l.Attrs()
		if (sel.name != "" && a.Name == sel.name) || (sel.mac != "" && a.HardwareAddr.String() == sel.mac) {
			hits = append(hits, l)
			names = append(names, a.Name)
		}
	}
	switch len(hits) {
	case 0:
		return nil, fmt.Errorf("%w: %s on this host", core.ErrNotFound, sel)
	case 1:
		return hits[0], nil
	}
	// VLAN subinterfaces and bond ports share their parent's MAC.
	return nil, fmt.Errorf("%w: several interfaces carry MAC %s (%s): choose one with -opt %s=NAME",
		core.ErrInvalid, sel.mac, strings.Join(names, ", "), OptNIC)
}

// mayTake refuses NICs the host still needs, unless the network forces it, and
// always refuses loopback and netplugin's own links.
func (d *Driver) mayTake(link netlink.Link, sel selector) error {
	a := link.Attrs()
	if a.Flags&net.FlagLoopback != 0 {
		return fmt.Errorf("%w: %s is the loopback interface", core.ErrInvalid, a.Name)
	}
	if strings.HasPrefix(a.Alias, nl.Mark) {
		return fmt.Errorf("%w: %s is netplugin's (alias %q); not touching it", core.ErrInUse, a.Name, a.Alias)
	}
	if sel.force {
		return nil
	}
	defaults, err := nl.DefaultRouteLinks(d.host)
	if err != nil {
		return fmt.Errorf("default routes: %w", err)
	}
	if defaults[a.Index] {
		return fmt.Errorf("%w: %s carries this host's default route; -opt %s=true takes it anyway", core.ErrInUse, a.Name, OptForce)
	}
	links, err := nl.LinkList(d.host)
	if err != nil {
		return err
	}
	for _, l := range links {
		la := l.Attrs()
		if la.Index == a.MasterIndex {
			return fmt.Errorf("%w: %s is a port of %s; -opt %s=true takes it anyway", core.ErrInUse, a.Name, la.Name, OptForce)
		}
		switch l.Type() {
		case "vlan", "macvlan", "macvtap", "ipvlan", "ipvtap":
			if la.ParentIndex == a.Index {
				return fmt.Errorf("%w: %s has %s on top; -opt %s=true takes it anyway", core.ErrInUse, a.Name, la.Name, OptForce)
			}
		}
	}
	return nil
}

// snapshot records what restore puts back. Addresses the kernel or a daemon
// manages (IPv6 link-local, SLAAC and other non-permanent ones) are not kept:
// they come back by themselves.
func (d *Driver) snapshot(link netlink.Link) (original, error) {
	a := link.Attrs()
	o := original{Name: a.Name, Up: a.Flags&net.FlagUp != 0, MTU: a.MTU, Alias: a.Alias}
	addrs, err := nl.AddrList(d.host, link, netlink.FAMILY_ALL)
	if err != nil {
		return o, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if ad.IP.To4() == nil && (ad.IP.IsLinkLocalUnicast() || ad.Flags&unix.IFA_F_PERMANENT == 0) {
			continue
		}
		o.Addrs = append(o.Addrs, ad.IPNet.String())
	}
	return o, nil
}
