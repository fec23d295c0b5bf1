package macvlan

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/recstore"
)

// ensureVLAN returns the network's 802.1Q subinterface of parent, creating it
// (marked as ours, up) when it does not exist. An operator's own subinterface
// with that name, parent and ID is used as it is: never changed, never deleted.
func (d *Driver) ensureVLAN(parent netlink.Link, o netOpts) (netlink.Link, error) {
	name := o.lower()
	alias := nl.Alias(kindVLAN, o.parent, strconv.Itoa(o.vlan))
	link, err := d.host.LinkByName(name)
	switch {
	case err == nil:
		v, ok := link.(*netlink.Vlan)
		if !ok || v.VlanId != o.vlan || v.ParentIndex != parent.Attrs().Index {
			return nil, fmt.Errorf("%w: link %s exists but is not VLAN %d on %s; not touching it", core.ErrInUse, name, o.vlan, o.parent)
		}
		if _, ours := nl.ParseAlias(link.Attrs().Alias, kindVLAN, 2); !ours {
			return link, nil
		}
	case nl.IsNotFound(err):
		if link, err = nl.CreateVLAN(d.host, parent, o.vlan, name, alias); err != nil {
			return nil, err
		}
		d.log.WithFields(logrus.Fields{"link": name, "parent": o.parent, "vlan": o.vlan}).Info("VLAN subinterface created")
	default:
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	// Ours: keep it up (the parent itself is the operator's business).
	if err := d.host.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	if link, err = d.host.LinkByName(name); err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	return link, nil
}

// gcVLANs deletes the subinterfaces of ours that no network or endpoint record
// uses any more. Deleting one takes its children with it, hence the endpoint
// records count too. Called with d.mu held.
func (d *Driver) gcVLANs() error {
	owned, err := nl.LinksOfKind(d.host, kindVLAN, 2)
	if err != nil || len(owned) == 0 {
		return err
	}
	nets, badNets, err := recstore.List[netRecord](d.nets)
	if err != nil {
		return err
	}
	eps, badEps, err := recstore.List[epRecord](d.eps)
	if err != nil {
		return err
	}
	if len(badNets)+len(badEps) > 0 {
		return fmt.Errorf("unreadable records: not deleting any subinterface: %w", errors.Join(append(badNets, badEps...)...))
	}
	used := map[string]bool{}
	for _, r := range nets {
		used[r.Lower] = true
	}
	for _, r := range eps {
		used[r.Lower] = true
	}
	for _, o := range owned {
		name := o.Link.Attrs().Name
		if used[name] {
			continue
		}
		if err := d.host.LinkDel(o.Link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("delete unused %s: %w", name, err)
		}
		d.log.WithField("link", name).Info("unused VLAN subinterface deleted")
	}
	return nil
}
